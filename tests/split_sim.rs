//! Split-brain simulation on real stores: three nodes (RocksDB in temporary
//! directories) in one process exchange entries through the link's own
//! state machines (`repl::engine`: the dialer reads the sender's apply
//! order and cuts batches under a window, asks about bodies, the receiver
//! checks each frame on arrival, hands batches to `apply_batch` in order
//! and acknowledges them), every frame encoded and decoded as on the wire,
//! under seeded random partitions, links that drop with batches in flight,
//! entries that reach a node twice over two links, writes on every side
//! and restarts. The master
//! runs the conflict resolver as the daemon does (after every batch it
//! applies and at start). After healing, the nodes must hold the same
//! views, nothing kept aside, every message that was not expunged, one copy
//! of every message appended once, and no node may ever have shown one UID
//! for two messages.
//!
//! A slave whose links to the master are up appends pending, as the daemon
//! does, and the master places those messages; a slave that stops waiting
//! (its link dropped, or the bound passed) places its own.
//!
//! Time is virtual: the link's deadlines (a body query's answer, the
//! opening's authentication) are the engine's own timers, which the
//! simulation fires by advancing its clock, so a peer that never answers
//! ends the link after 30 virtual seconds in a few milliseconds.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tandem::config::Role;
use tandem::event::{Event, FlagOp, Flags, Id};
use tandem::mutate::{self, NewMessage};
use tandem::repl::apply::{apply_batch, verify_blobs};
use tandem::repl::engine::dialer::{self, Dialer, Queries, ReadEntry};
use tandem::repl::engine::handshake::{self as opening, AcceptAuth, AuthStep, Deadline, DialAuth, Side};
use tandem::repl::engine::receiver::{Arrival, Intake, Prepared, Receiver, Step};
use tandem::repl::engine::{Resume, Window};
use tandem::repl::frame::{Frame, WireBlob};
use tandem::repl::{resolve, role};
use tandem::store::{wal_options, Store};
use tandem::views::{keys, ViewRead};

const NAMES: [&str; 5] = ["A", "B", "A/x", "C", "INBOX"];
const NODES: usize = 3;

struct Node {
    dir: PathBuf,
    id: String,
    store: Option<Store>,
    /// (mailbox, uidvalidity, uid) -> GUID of everything this node showed.
    shown: HashMap<(Id, u32, u32), Id>,
    /// The same as a client addresses it: (user, name, uidvalidity, uid).
    by_name: HashMap<(String, String, u32, u32), Id>,
}

/// Restarts here are clean closes, so nothing depends on fsync: it is off,
/// which keeps hundreds of rounds within seconds.
fn options(id: &str) -> wal::WalOptions {
    let mut o = wal_options(id);
    o.sync = false;
    o
}

impl Node {
    fn open(dir: PathBuf, id: &str) -> Node {
        let store = Store::open(&dir, id, options(id)).unwrap();
        Node {
            dir,
            id: id.into(),
            store: Some(store),
            shown: HashMap::new(),
            by_name: HashMap::new(),
        }
    }
    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }
    fn restart(&mut self) {
        let s = self.store.take().unwrap();
        s.close().unwrap();
        drop(s);
        self.store = Some(Store::open(&self.dir, &self.id, options(&self.id)).unwrap());
    }
    /// Record what a client of this node can see now; a UID that names a
    /// second message is a failure.
    fn record(&mut self, user: &str, ctx: &str) {
        let v = self.store().views();
        for mb in v.all_mailboxes(user).unwrap() {
            for (uid, m) in v.messages(mb.id).unwrap() {
                let prev = self.shown.entry((mb.id, mb.uidvalidity, uid)).or_insert(m.guid);
                assert_eq!(
                    *prev, m.guid,
                    "{ctx}: node {} showed UID {uid} of {} (uidvalidity {}) as two messages",
                    self.id, mb.name, mb.uidvalidity
                );
            }
        }
        for mb in v.mailboxes(user).unwrap() {
            for (uid, m) in v.messages(mb.id).unwrap() {
                let key = (user.to_string(), mb.name.clone(), mb.uidvalidity, uid);
                let prev = self.by_name.entry(key).or_insert(m.guid);
                if *prev != m.guid {
                    dump(self.store.as_ref().unwrap(), user);
                }
                assert_eq!(
                    *prev, m.guid,
                    "{ctx}: node {} showed {} UIDVALIDITY {} UID {uid} as two messages",
                    self.id, mb.name, mb.uidvalidity
                );
            }
        }
    }
}

/// With `SPLIT_SIM_DUMP` set, print the entries of `user` in `store`'s
/// apply order (for a failing seed).
fn dump(store: &Store, user: &str) {
    if std::env::var("SPLIT_SIM_DUMP").is_err() {
        return;
    }
    for (o, e) in store.wal().read_order(1, 100_000).unwrap() {
        let ev = Event::decode(&e.payload).unwrap();
        if ev.user() == Some(user) || matches!(ev, Event::RoleChanged { .. }) {
            eprintln!("  {o} {:016x}:{} hlc={} {}", e.origin.0, e.seq, e.hlc, ev.describe());
        }
    }
}

/// One direction of a link, from node `j` to node `i`: the dialer's
/// machine at `j`, the receiver's at `i`. Dropped when the link is cut or
/// either node restarts; what was in flight is lost with it.
struct Link {
    dialer: Dialer,
    intake: Intake,
    receiver: Receiver,
    /// The dialer's body queries waiting for an answer, on the virtual
    /// clock.
    queries: Queries,
}

/// How one pull runs.
#[derive(Clone, Copy)]
struct Pull {
    window: Window,
    /// The link drops after that many batches were sent, the rest lost.
    drop_after: Option<usize>,
    /// The virtual time now.
    now: Instant,
    /// Whether the receiving node answers body queries (a peer that does
    /// not leaves the batch waiting until the query's deadline).
    answer: bool,
}

/// A frame as the peer gets it: encoded, then decoded from its bytes.
fn wire(f: &Frame) -> Frame {
    let bytes = f.encode();
    Frame::decode(&bytes[4..]).unwrap()
}

fn heads(store: &Store) -> tandem::repl::engine::Vector {
    tandem::repl::vector_of(&store.wal().heads())
}

/// Node `i` applies what `j` holds that `i` lacks, over the link `j` → `i`
/// (opened from `i`'s vector when down). `resume`: where `j`'s last link
/// to `i` left off, as the daemon's dialer keeps it across reconnects
/// (lost when `j` restarts). Returns the entries `i` applied. A link whose
/// batch waits for a query's answer moves no further.
fn pull(nodes: &mut [Node], link: &mut Option<Link>, resume: &mut Option<Resume>, i: usize, j: usize, how: Pull) -> usize {
    let Pull {
        window,
        drop_after,
        now,
        answer,
    } = how;
    let (src, dst) = (nodes[j].store(), nodes[i].store());
    let l = link.get_or_insert_with(|| Link {
        dialer: Dialer::new(
            window,
            src.wal().local_origin().0,
            &heads(dst),
            src.wal().last_order(),
            resume.as_ref(),
        ),
        intake: Intake::new(dst.wal().local_origin().0),
        receiver: Receiver::new(),
        queries: Queries::new(dialer::QUERY_TIMEOUT),
    });
    if l.queries.waiting() > 0 {
        return 0;
    }
    l.dialer.local_commit(src.wal().last_order());
    let (mut applied, mut sent) = (0, 0);
    while let Some((from, max)) = l.dialer.poll() {
        let read = src.wal().read_order(from, max).unwrap();
        let entries: Vec<ReadEntry> = read
            .iter()
            .map(|(o, e)| ReadEntry::new(*o, e.origin.0, e.seq, &e.payload))
            .collect();
        let by_order: BTreeMap<u64, &wal::Entry> = read.iter().map(|(o, e)| (*o, e)).collect();
        for b in l.dialer.read(&entries) {
            if drop_after == Some(sent) {
                *link = None;
                return applied;
            }
            sent += 1;
            // Bodies: unasked when only this batch references them, else
            // asked about first, as the driver does.
            let (mut send, ask) = dialer::choose_bodies(b.want, |h| src.body_refs(&tandem::event::BlobHash(*h))).unwrap();
            if !ask.is_empty() {
                let q = Frame::Query {
                    id: b.query,
                    hashes: ask.clone(),
                };
                l.queries.asked(b.query, now);
                if !answer {
                    // The query is lost on its way, or the peer is wedged:
                    // the batch waits, and the link with it.
                    return applied;
                }
                let Some(Arrival::Query { id, hashes }) = l.intake.arrive(wire(&q), || 0, false).unwrap() else {
                    panic!("a query arrives as a query")
                };
                l.receiver.prepared(Prepared::Query { id, hashes });
                let Some(Step::Answer { id, hashes }) = l.receiver.poll() else {
                    panic!("a query is answered in turn")
                };
                let held = hashes
                    .iter()
                    .map(|h| dst.holds_body(&tandem::event::BlobHash(*h)).unwrap())
                    .collect();
                let Frame::Held { id, held } = wire(&Frame::Held { id, held }) else {
                    unreachable!()
                };
                assert!(l.queries.answered(id), "query {id} was waited for");
                let (more, _) = dialer::answered(id, ask, held).unwrap();
                send.extend(more);
            }
            let batch = Frame::Batch {
                id: b.id,
                entries: b.orders.iter().map(|o| tandem::repl::wire_entry(by_order[o])).collect(),
                blobs: send
                    .iter()
                    .map(|h| WireBlob {
                        hash: *h,
                        body: src.blob(&tandem::event::BlobHash(*h)).unwrap().unwrap(),
                    })
                    .collect(),
            };
            let own_head = || dst.wal().heads().get(wal::Origin(dst.wal().local_origin().0));
            let Some(Arrival::Batch { id, entries, blobs }) = l.intake.arrive(wire(&batch), own_head, false).unwrap() else {
                panic!("a batch arrives as a batch")
            };
            verify_blobs(&blobs).unwrap();
            assert!(l.receiver.room(), "the receiver has room: every batch before was acknowledged");
            l.receiver.prepared(Prepared::Batch {
                id,
                entries,
                blobs,
                stored: Vec::new(),
            });
            let Some(Step::Apply {
                id,
                entries,
                blobs,
                stored,
                ..
            }) = l.receiver.poll()
            else {
                panic!("the batch goes to the writer")
            };
            let n = dst
                .run_blocking(move |t, c| apply_batch(t, c, &entries, &blobs, &stored).map_err(Into::into))
                .unwrap();
            applied += n.entries as usize;
            let id = l.receiver.applied(id, Ok(())).unwrap();
            let ack = wire(&Frame::Ack { id, vector: heads(dst) });
            l.dialer.frame(ack).unwrap();
            *resume = Some(l.dialer.resume());
        }
    }
    applied
}

struct Sim {
    rng: StdRng,
    nodes: Vec<Node>,
    /// Each round has its own user, master and seed; the stores live on.
    user: String,
    master: usize,
    /// A second node configured as master too (a misconfiguration the
    /// resolution must survive: the earlier of two moves wins).
    second_master: Option<usize>,
    link: [[bool; NODES]; NODES],
    /// The link machines of each direction `j` → `i` that is up.
    links: Vec<Option<Link>>,
    /// Where each direction's dialer resumes after a reconnect.
    resume: Vec<Option<Resume>>,
    window: Window,
    /// Chance that a pull drops its link with batches in flight (the
    /// seeded rounds; the hand-written scenarios keep links whole).
    drops: f64,
    body_no: u64,
    /// The virtual clock: only the simulation moves it.
    now: Instant,
    /// Whether receivers answer body queries.
    answer_queries: bool,
    /// Chance that a step promotes a node (`tandem promote`).
    promotions: f64,
    promoted: usize,
    _tmp: tempfile::TempDir,
}

impl Sim {
    fn new() -> Sim {
        let tmp = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (0..NODES)
            .map(|i| Node::open(tmp.path().join(format!("n{i}")), &format!("node-{i}")))
            .collect();
        Sim {
            rng: StdRng::seed_from_u64(0),
            nodes,
            user: String::new(),
            master: 0,
            second_master: None,
            link: [[true; NODES]; NODES],
            links: (0..NODES * NODES).map(|_| None).collect(),
            resume: vec![None; NODES * NODES],
            window: Window::default(),
            drops: 0.0,
            body_no: 0,
            now: Instant::now(),
            answer_queries: true,
            promotions: 0.0,
            promoted: 0,
            _tmp: tmp,
        }
    }

    /// Node `i` pulls from `j` over their link; now and then the link
    /// drops with batches in flight.
    fn pull(&mut self, i: usize, j: usize) -> usize {
        let drop_after = self.rng.gen_bool(self.drops).then(|| self.rng.gen_range(0..3));
        self.pull_dropping(i, j, drop_after)
    }

    fn pull_dropping(&mut self, i: usize, j: usize, drop_after: Option<usize>) -> usize {
        let how = Pull {
            window: self.window,
            drop_after,
            now: self.now,
            answer: self.answer_queries,
        };
        pull(
            &mut self.nodes,
            &mut self.links[i * NODES + j],
            &mut self.resume[i * NODES + j],
            i,
            j,
            how,
        )
    }

    /// Advance the virtual clock by `by` and fire the links' timers: a
    /// link whose query deadline passed ends, losing what it had in
    /// flight. Returns the errors of the links that ended, (i, j, error).
    fn advance(&mut self, by: Duration) -> Vec<(usize, usize, tandem::repl::error::LinkError)> {
        self.now += by;
        let mut ended = Vec::new();
        for (k, link) in self.links.iter_mut().enumerate() {
            let Some(l) = link else { continue };
            if l.queries.poll_timeout().is_some_and(|t| t <= self.now) {
                if let Err(e) = l.queries.handle_timeout(self.now) {
                    ended.push((k / NODES, k % NODES, e));
                    *link = None;
                }
            }
        }
        ended
    }

    /// Cut or restore the link between `i` and `j`; a cut loses what its
    /// two directions had in flight.
    fn set_link(&mut self, i: usize, j: usize, up: bool) {
        self.link[i][j] = up;
        self.link[j][i] = up;
        if !up {
            self.links[i * NODES + j] = None;
            self.links[j * NODES + i] = None;
        }
    }

    /// Node `i`'s configured `mirror.mode`: the round's master (and the
    /// second master some rounds misconfigure) are `master`.
    fn seed(&self, i: usize) -> Role {
        if i == self.master || Some(i) == self.second_master {
            Role::Master
        } else {
            Role::Slave
        }
    }

    /// Node `i`'s role as its views say (a promotion it applied names the
    /// master; before any, its configured mode decides) and the master it
    /// waits for.
    fn role(&self, i: usize) -> (bool, usize) {
        let r = role::current(&self.nodes[i].store().views(), &self.nodes[i].id, self.seed(i)).unwrap();
        let master = r
            .master_node
            .and_then(|m| self.nodes.iter().position(|n| n.id == m))
            .unwrap_or(self.master);
        (r.master, master)
    }

    /// Node `i` resolves if its views name it master, as the daemon's
    /// resolver decides inside its transaction.
    fn resolve_if_master(&mut self, i: usize) {
        resolve::run_once(self.nodes[i].store(), self.seed(i)).unwrap();
    }

    /// Whether node `i` appends pending now: a slave that reaches the
    /// master its views name.
    fn pending_for(&self, i: usize) -> bool {
        let (master, m) = self.role(i);
        !master && self.link[i][m] && self.link[m][i]
    }

    /// Node `i` places its own pending messages (the master did not answer).
    fn place_own(&mut self, i: usize) -> usize {
        let store = self.nodes[i].store().clone();
        let own = store.wal().local_origin().0;
        let mine: Vec<_> = store
            .views()
            .pendings()
            .unwrap()
            .into_iter()
            .filter(|p| p.2.since.1 == own)
            .collect();
        let n = mine.len();
        store
            .run_blocking(move |t, c| {
                for (mb, guid, rec) in &mine {
                    mutate::place_pending(t, c, &rec.user, *mb, *guid)?;
                }
                Ok(())
            })
            .unwrap();
        n
    }

    /// One exchange over every link that is up; the master resolves after
    /// applying, as the daemon's resolver does after each commit.
    fn exchange(&mut self) -> usize {
        let mut moved = 0;
        for i in 0..NODES {
            for j in 0..NODES {
                if i != j && self.link[i][j] {
                    moved += self.pull(i, j);
                    self.resolve_if_master(i);
                }
            }
        }
        moved
    }

    /// Node `i` applies what `j` holds, with no resolver pass.
    fn pull_one(&mut self, i: usize, j: usize) -> usize {
        self.pull_dropping(i, j, None)
    }

    fn record(&mut self, ctx: &str) {
        for n in &mut self.nodes {
            n.record(&self.user, ctx);
        }
    }

    /// A random client write on node `i` (refusals are normal: the name
    /// may be taken or gone).
    fn write(&mut self, i: usize) {
        let store = self.nodes[i].store().clone();
        let v = store.views();
        let user = self.user.clone();
        let boxes = v.mailboxes(&user).unwrap();
        let pick = |rng: &mut StdRng| boxes[rng.gen_range(0..boxes.len())].clone();
        let op = self.rng.gen_range(0..100);
        let name = NAMES[self.rng.gen_range(0..NAMES.len())].to_string();
        let pending = self.pending_for(i);
        let r = match op {
            0..=39 => {
                self.body_no += 1;
                let body = format!("Subject: m{}\r\n\r\nbody {}\r\n", self.body_no, self.body_no).into_bytes();
                let target = if self.rng.gen_bool(0.6) { "INBOX".to_string() } else { name };
                let mut msg = NewMessage::new(body, Flags::default(), 1_700_000_000);
                msg.pending = pending;
                store.run_blocking(move |t, c| mutate::append(t, c, &user, &target, &msg).map(|_| ()))
            }
            40..=54 => {
                let mb = pick(&mut self.rng);
                let msgs = v.messages(mb.id).unwrap();
                if msgs.is_empty() {
                    return;
                }
                let uid = msgs[self.rng.gen_range(0..msgs.len())].0;
                let op = [FlagOp::Add, FlagOp::Remove, FlagOp::Set][self.rng.gen_range(0..3)];
                let flags = Flags::new([["\\Seen", "\\Flagged", "$A"][self.rng.gen_range(0..3)]]);
                store.run_blocking(move |t, c| mutate::store_flags(t, c, &user, mb.id, &[uid], op, &flags).map(|_| ()))
            }
            55..=64 => {
                let mb = pick(&mut self.rng);
                let msgs = v.messages(mb.id).unwrap();
                if msgs.is_empty() {
                    return;
                }
                let uid = msgs[self.rng.gen_range(0..msgs.len())].0;
                store.run_blocking(move |t, c| mutate::expunge(t, c, &user, mb.id, &[uid]).map(|_| ()))
            }
            65..=76 => {
                let (from, to) = (pick(&mut self.rng), pick(&mut self.rng));
                let msgs = v.messages(from.id).unwrap();
                if msgs.is_empty() || from.id == to.id {
                    return;
                }
                let uids: Vec<u32> = msgs.iter().filter(|_| self.rng.gen_bool(0.4)).map(|m| m.0).collect();
                let remove = self.rng.gen_bool(0.5);
                store.run_blocking(move |t, c| mutate::copy(t, c, &user, from.id, &uids, to.id, remove, pending).map(|_| ()))
            }
            77..=86 => store.run_blocking(move |t, c| mutate::create_mailbox(t, c, &user, &name, None, 1_700_000_000).map(|_| ())),
            87..=93 => {
                let from = pick(&mut self.rng).name;
                store.run_blocking(move |t, c| mutate::rename_mailbox(t, c, &user, &from, &name))
            }
            _ => {
                let victim = pick(&mut self.rng).name;
                store.run_blocking(move |t, c| mutate::delete_mailbox(t, c, &user, &victim))
            }
        };
        if let Err(e) = r {
            assert!(e.is_refusal(), "node {i}: a write failed: {e}");
        }
    }

    fn step(&mut self, ctx: &str) {
        if self.promotions > 0.0 && self.rng.gen_bool(self.promotions) {
            // `tandem promote` on a node, whatever it can reach: the
            // others learn of the new epoch as its entries travel, and
            // until then a master of an older epoch resolves on.
            let i = self.rng.gen_range(0..NODES);
            let id = self.nodes[i].id.clone();
            self.nodes[i].store().run_blocking(move |t, c| role::promote(t, c, &id)).unwrap();
            self.promoted += 1;
            self.record(ctx);
            return;
        }
        match self.rng.gen_range(0..100) {
            0..=9 => {
                for i in 0..NODES {
                    for j in 0..i {
                        let up = self.rng.gen_bool(0.5);
                        self.set_link(i, j, up);
                    }
                }
            }
            10 => {
                let i = self.rng.gen_range(0..NODES);
                for j in 0..NODES {
                    self.links[i * NODES + j] = None;
                    self.links[j * NODES + i] = None;
                    // The restarted dialer forgot where it was.
                    self.resume[j * NODES + i] = None;
                }
                self.nodes[i].restart();
                self.resolve_if_master(i);
            }
            11..=14 => {
                // A slave stops waiting for the master: its link dropped
                // (a cut), or the bound passed while the master's
                // placement was on its way.
                let i = self.rng.gen_range(0..NODES);
                if !self.role(i).0 {
                    self.place_own(i);
                }
            }
            15..=34 => {
                self.exchange();
            }
            _ => {
                let i = self.rng.gen_range(0..NODES);
                self.write(i);
            }
        }
        self.record(ctx);
    }

    /// Every link up until nothing moves and nothing is pending.
    fn heal(&mut self, ctx: &str) {
        self.link = [[true; NODES]; NODES];
        // Links stay whole while healing, so a pass that moves nothing
        // means there is nothing left to move.
        let drops = std::mem::replace(&mut self.drops, 0.0);
        for round in 0..50 {
            let moved = self.exchange();
            self.record(ctx);
            let pending = self.nodes.iter().any(|n| resolve::pending(&n.store().views()).unwrap());
            if moved == 0 && !pending {
                self.drops = drops;
                return;
            }
            if round == 49 {
                for n in &self.nodes {
                    let r = resolve::report(&n.store().views()).unwrap();
                    eprintln!("{} pending {:?} names {:?}", n.id, r.pending, r.name_conflicts);
                    dump(n.store(), &self.user);
                }
                panic!("{ctx}: no quiescence after 50 exchanges (moved {moved})");
            }
        }
    }

    fn check(&self, from_order: u64, ctx: &str) {
        let user = self.user.as_str();
        let snapshot = |n: &Node| {
            let v = n.store().views();
            let mut out = Vec::new();
            for mb in v.mailboxes(user).unwrap() {
                let msgs: Vec<(u32, Id, Vec<String>)> = v
                    .messages(mb.id)
                    .unwrap()
                    .into_iter()
                    .map(|(u, m)| (u, m.guid, m.flags.iter().map(String::from).collect()))
                    .collect();
                out.push((mb.name.clone(), mb.id, mb.uidvalidity, mb.uidnext, msgs));
            }
            out
        };
        // The merkle tree each node kept through the split and its
        // resolution is the tree its views give, and every node has the
        // same root.
        for n in &self.nodes {
            let v = n.store().views();
            let kept: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = v.vscan(&tandem::merkle::keys::all()).unwrap().into_iter().collect();
            let built = tandem::merkle::build(&v).unwrap();
            assert!(kept == built, "{ctx}: {} kept a merkle tree that differs from its views", n.id);
        }
        let roots: Vec<_> = self
            .nodes
            .iter()
            .map(|n| tandem::merkle::node_root(&n.store().views()).unwrap())
            .collect();
        assert!(roots.windows(2).all(|w| w[0] == w[1]), "{ctx}: merkle roots differ: {roots:?}");
        let first = snapshot(&self.nodes[0]);
        for n in &self.nodes[1..] {
            assert_eq!(snapshot(n), first, "{ctx}: node {} differs from node-0", n.id);
        }
        let mut appended: HashMap<Id, usize> = HashMap::new();
        let mut expunged: BTreeSet<Id> = BTreeSet::new();
        for (_, e) in self.nodes[0].store().wal().read_order(from_order, 1_000_000).unwrap() {
            match Event::decode(&e.payload).unwrap() {
                Event::MessageAppended { guid, user: u, .. } if u == user => *appended.entry(guid).or_default() += 1,
                Event::Expunged { messages, user: u, .. } if u == user => expunged.extend(messages.iter().map(|m| m.1)),
                _ => {}
            }
        }
        for n in &self.nodes {
            let v = n.store().views();
            for prefix in [
                keys::conflicts_prefix(),
                keys::collisions_prefix(),
                keys::losers_prefix(),
                keys::pendings_prefix(),
            ] {
                let left = v.vscan(&prefix).unwrap();
                assert!(
                    left.is_empty(),
                    "{ctx}: node {} still holds {} {:?} records",
                    n.id,
                    left.len(),
                    prefix[0] as char
                );
            }
            let mut present: BTreeMap<Id, usize> = BTreeMap::new();
            for mb in v.mailboxes(user).unwrap() {
                for (_, m) in v.messages(mb.id).unwrap() {
                    *present.entry(m.guid).or_default() += 1;
                }
            }
            for (g, times) in &appended {
                let here = present.get(g).copied().unwrap_or(0);
                if !expunged.contains(g) {
                    assert!(here >= 1, "{ctx}: node {} lost message {g:?}", n.id);
                }
                if *times == 1 {
                    assert!(here <= 1, "{ctx}: node {} shows message {g:?} {here} times", n.id);
                }
            }
        }
    }
}

/// One round: a fresh user in the long-lived stores, a master chosen by
/// the seed, `steps` random steps, then heal and check. Returns (messages
/// the master moved, entries written).
fn round(sim: &mut Sim, seed: u64, steps: usize) -> (usize, usize) {
    sim.rng = StdRng::seed_from_u64(seed);
    sim.master = sim.rng.gen_range(0..NODES);
    sim.second_master = sim.rng.gen_bool(0.25).then_some((sim.master + 1) % NODES);
    sim.user = format!("u{seed}@example.org");
    // Small windows and batches, so links cut batches and drop some.
    sim.window = Window {
        batches: sim.rng.gen_range(1..4),
        entries: sim.rng.gen_range(1..40),
        bytes: 1 << 20,
    };
    sim.drops = 0.1;
    let ctx = format!("seed {seed}, master node-{}, second master {:?}", sim.master, sim.second_master);
    let first = sim.rng.gen_range(0..NODES);
    let from_order = sim.nodes[0].store().wal().last_order() + 1;
    let moved_before = sim.nodes[sim.master].store().views().resolutions().unwrap().len();
    let user = sim.user.clone();
    sim.nodes[first]
        .store()
        .run_blocking(move |t, c| mutate::create_user(t, c, &user, "x".into(), 1_700_000_000))
        .unwrap();
    sim.heal(&ctx);
    for _ in 0..steps {
        sim.step(&ctx);
    }
    sim.heal(&ctx);
    sim.check(from_order, &ctx);
    let moved = sim.nodes[sim.master].store().views().resolutions().unwrap().len() - moved_before;
    (moved, (sim.nodes[0].store().wal().last_order() + 1 - from_order) as usize)
}

#[test]
fn seeded_partitions_converge_without_hiding_or_reusing_uids() {
    let base: u64 = std::env::var("SPLIT_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let rounds: u64 = std::env::var("SPLIT_SIM_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let started = std::time::Instant::now();
    let mut sim = Sim::new();
    let (mut moved, mut entries) = (0, 0);
    for r in 0..rounds {
        let (m, e) = round(&mut sim, base + r, 60);
        moved += m;
        entries += e;
    }
    eprintln!(
        "{rounds} rounds, {entries} entries, {moved} messages renumbered or merged, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // The rounds must exercise the resolution, not only quiet merges.
    assert!(moved > rounds as usize, "only {moved} messages were moved in {rounds} rounds");
}

/// As above, with promotions: now and then a node is promoted during a
/// cut, so a master of an older epoch (or a configured master of epoch 0)
/// goes on resolving until the new epoch reaches it, and its resolutions
/// compete with the new master's. The nodes still converge, nothing is
/// lost, and no node shows one UID for two messages.
#[test]
fn seeded_promotions_during_partitions_converge() {
    let base: u64 = std::env::var("SPLIT_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xe90c);
    let rounds: u64 = std::env::var("SPLIT_SIM_PROMOTE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut sim = Sim::new();
    sim.promotions = 0.03;
    let mut moved = 0;
    for r in 0..rounds {
        moved += round(&mut sim, base + r, 60).0;
    }
    let epoch = role::current(&sim.nodes[0].store().views(), "node-0", Role::Slave).unwrap().epoch;
    eprintln!(
        "{rounds} rounds, {} promotions (epoch {epoch}), {moved} messages moved",
        sim.promoted
    );
    assert!(
        sim.promoted as u64 > rounds / 2,
        "only {} promotions in {rounds} rounds",
        sim.promoted
    );
    assert!(epoch >= 2);
}

/// A two-node cut written by hand: node-0 is master, node-1 slave.
fn pair(user: &str) -> Sim {
    let mut sim = Sim::new();
    sim.user = user.into();
    sim.master = 0;
    let u = user.to_string();
    sim.nodes[0]
        .store()
        .run_blocking(move |t, c| {
            mutate::create_user(t, c, &u, "x".into(), 1_700_000_000)?;
            mutate::create_mailbox(t, c, &u, "Foo", None, 1_700_000_000).map(|_| ())
        })
        .unwrap();
    sim.heal("setup");
    sim.link = [[false; NODES]; NODES];
    sim
}

fn deliver(sim: &Sim, node: usize, folder: &str, subject: &str) -> Id {
    let (u, f) = (sim.user.clone(), folder.to_string());
    let body = format!("Subject: {subject}\r\n\r\nx\r\n").into_bytes();
    sim.nodes[node]
        .store()
        .run_blocking(move |t, c| mutate::append(t, c, &u, &f, &NewMessage::new(body, Flags::default(), 1)).map(|p| p.guid))
        .unwrap()
}

/// (uid, guid, flags) of a folder on a node.
fn folder(sim: &Sim, node: usize, name: &str) -> Option<Vec<(u32, Id, Vec<String>)>> {
    let v = sim.nodes[node].store().views();
    let mb = v.mailbox_by_name(&sim.user, name).unwrap()?;
    Some(
        v.messages(mb.id)
            .unwrap()
            .into_iter()
            .map(|(u, m)| (u, m.guid, m.flags.iter().map(String::from).collect()))
            .collect(),
    )
}

#[test]
fn a_delivery_into_a_mailbox_deleted_meanwhile_lands_in_inbox() {
    let mut sim = pair("del@example.org");
    let u = sim.user.clone();
    sim.nodes[0]
        .store()
        .run_blocking(move |t, c| mutate::delete_mailbox(t, c, &u, "Foo"))
        .unwrap();
    let g = deliver(&sim, 1, "Foo", "into Foo");
    sim.record("cut");
    sim.heal("heal");
    for n in 0..2 {
        assert_eq!(folder(&sim, n, "Foo"), None, "node-{n}: Foo came back");
        let inbox = folder(&sim, n, "INBOX").unwrap();
        assert_eq!(inbox.iter().map(|m| m.1).collect::<Vec<_>>(), vec![g], "node-{n}");
    }
    sim.check(1, "heal");
}

#[test]
fn a_uid_the_slave_used_and_expunged_is_never_shown_again() {
    let mut sim = pair("exp@example.org");
    // The slave gives UID 1 to a message and expunges it; the master gives
    // UID 1 to another. The master sees no message under UID 1 kept aside
    // once the expunge arrived, yet must move its own: the slave may not
    // show UID 1 again.
    let gone = deliver(&sim, 1, "INBOX", "slave");
    let u = sim.user.clone();
    let inbox = sim.nodes[1].store().views().mailbox_by_name(&u, "INBOX").unwrap().unwrap().id;
    sim.nodes[1]
        .store()
        .run_blocking(move |t, c| mutate::expunge(t, c, &u, inbox, &[1]))
        .unwrap();
    let kept = deliver(&sim, 0, "INBOX", "master");
    // Flags set on the master before it learns of the collision follow the
    // message to its new UID.
    let u = sim.user.clone();
    sim.nodes[0]
        .store()
        .run_blocking(move |t, c| mutate::store_flags(t, c, &u, inbox, &[1], FlagOp::Add, &Flags::new(["\\Flagged"])))
        .unwrap();
    sim.record("cut");
    sim.heal("heal");
    for n in 0..2 {
        let inbox = folder(&sim, n, "INBOX").unwrap();
        assert_eq!(inbox, vec![(2, kept, vec!["\\Flagged".to_string()])], "node-{n}");
        assert!(!inbox.iter().any(|m| m.1 == gone));
    }
    sim.check(1, "heal");
}

#[test]
fn a_uid_whose_messages_were_all_expunged_leaves_no_collision_behind() {
    let mut sim = pair("gone@example.org");
    let u = sim.user.clone();
    let inbox = sim.nodes[1].store().views().mailbox_by_name(&u, "INBOX").unwrap().unwrap().id;
    let expunge = |sim: &Sim, n: usize| {
        let u = sim.user.clone();
        sim.nodes[n]
            .store()
            .run_blocking(move |t, c| mutate::expunge(t, c, &u, inbox, &[1]))
            .unwrap();
    };
    // Both nodes give UID 1 to a message during a cut; the slave's is
    // expunged there.
    deliver(&sim, 0, "INBOX", "master");
    deliver(&sim, 1, "INBOX", "slave");
    expunge(&sim, 1);
    // The master hears of the slave's message (kept aside under UID 1,
    // its own still shown) and of its expunge (the one aside goes) before
    // it expunges its own: the shown message goes last.
    sim.pull_one(0, 1);
    expunge(&sim, 0);
    let report = resolve::report(&sim.nodes[0].store().views()).unwrap();
    assert!(report.pending.is_empty(), "a mark with nothing under it: {:?}", report.pending);
    sim.heal("heal");
    for n in 0..2 {
        assert_eq!(folder(&sim, n, "INBOX").unwrap(), vec![], "node-{n}");
    }
    sim.check(1, "heal");
}

#[test]
fn a_flag_change_written_before_the_move_follows_the_message() {
    let mut sim = pair("flags@example.org");
    let a = deliver(&sim, 0, "INBOX", "on master");
    let b = deliver(&sim, 1, "INBOX", "on slave");
    // Let the master learn of the collision and resolve it while the slave
    // does not hear back, then flag on the slave under the old UID.
    sim.link[0][1] = true;
    sim.exchange();
    sim.link[0][1] = false;
    let u = sim.user.clone();
    let inbox = sim.nodes[1].store().views().mailbox_by_name(&u, "INBOX").unwrap().unwrap().id;
    sim.nodes[1]
        .store()
        .run_blocking(move |t, c| mutate::store_flags(t, c, &u, inbox, &[1], FlagOp::Add, &Flags::new(["\\Seen"])))
        .unwrap();
    sim.record("cut");
    sim.heal("heal");
    for n in 0..2 {
        let inbox = folder(&sim, n, "INBOX").unwrap();
        let mut guids: Vec<Id> = inbox.iter().map(|m| m.1).collect();
        guids.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(guids, want, "node-{n}");
        assert!(inbox.iter().all(|m| m.0 > 1), "node-{n}: UID 1 still shown: {inbox:?}");
        let seen = inbox.iter().find(|m| m.1 == b).unwrap();
        assert_eq!(seen.2, vec!["\\Seen".to_string()], "node-{n}: the slave's flag was lost");
    }
    sim.check(1, "heal");
}

/// Every message of a folder on a node: (uid, guid).
fn uids(sim: &Sim, node: usize, name: &str) -> Vec<(u32, Id)> {
    folder(sim, node, name).unwrap().into_iter().map(|m| (m.0, m.1)).collect()
}

fn deliver_pending(sim: &Sim, node: usize, folder: &str, subject: &str) -> Id {
    let (u, f) = (sim.user.clone(), folder.to_string());
    let mut msg = NewMessage::new(format!("Subject: {subject}\r\n\r\nx\r\n").into_bytes(), Flags::default(), 1);
    msg.pending = sim.pending_for(node);
    sim.nodes[node]
        .store()
        .run_blocking(move |t, c| mutate::append(t, c, &u, &f, &msg).map(|p| p.guid))
        .unwrap()
}

/// With the link up, both nodes deliver into one mailbox between
/// exchanges: the slave's messages are pending until the master places
/// them, so no UID is given twice, nothing is renumbered, and every node
/// shows the same strictly ascending UIDs.
#[test]
fn with_the_link_up_the_master_gives_every_uid_and_nothing_is_renumbered() {
    let mut sim = pair("up@example.org");
    sim.link = [[true; NODES]; NODES];
    let mut want = Vec::new();
    for round in 0..20 {
        for k in 0..3 {
            want.push(deliver_pending(&sim, 0, "INBOX", &format!("m{round}-{k}")));
            want.push(deliver_pending(&sim, 1, "INBOX", &format!("s{round}-{k}")));
        }
        // The slave's own messages stay invisible until placed.
        let v = sim.nodes[1].store().views();
        assert!(!v.pendings().unwrap().is_empty(), "the slave appended nothing pending");
        sim.exchange();
        sim.record("link up");
    }
    sim.heal("link up");
    want.sort();
    let first = uids(&sim, 0, "INBOX");
    assert!(first.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(first.first().map(|m| m.0), Some(1));
    assert_eq!(
        first.last().map(|m| m.0),
        Some(want.len() as u32),
        "UIDs have gaps: something was renumbered"
    );
    let mut got: Vec<Id> = first.iter().map(|m| m.1).collect();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(uids(&sim, 1, "INBOX"), first, "the nodes show different UIDs");
    for n in 0..2 {
        let v = sim.nodes[n].store().views();
        assert!(
            v.resolutions().unwrap().is_empty(),
            "node-{n} renumbered: {:?}",
            v.resolutions().unwrap()
        );
    }
    sim.check(1, "link up");
}

/// A slave that placed its pending message itself (the link dropped right
/// after the append) and a master that placed it too, whatever order the
/// placements arrive in: one UID on every node, the earlier placement's.
#[test]
fn a_message_placed_by_both_the_slave_and_the_master_ends_under_one_uid() {
    for slave_first in [true, false] {
        let mut sim = pair(&format!("twice-{slave_first}@example.org"));
        sim.link = [[true; NODES]; NODES];
        let g = deliver_pending(&sim, 1, "INBOX", "pending");
        assert!(uids(&sim, 1, "INBOX").is_empty(), "a pending message is shown");
        let (placer_a, placer_b) = if slave_first { (1, 0) } else { (0, 1) };
        // Both place it before hearing from each other.
        sim.pull_one(0, 1);
        if placer_a == 1 {
            sim.place_own(1);
            resolve::run_once(sim.nodes[0].store(), Role::Master).unwrap();
        } else {
            resolve::run_once(sim.nodes[0].store(), Role::Master).unwrap();
            sim.place_own(1);
        }
        let _ = placer_b;
        sim.record("placed twice");
        sim.heal("placed twice");
        let a = uids(&sim, 0, "INBOX");
        assert_eq!(a.len(), 1, "one GUID under two UIDs: {a:?}");
        assert_eq!(a[0].1, g);
        assert_eq!(uids(&sim, 1, "INBOX"), a);
        sim.check(1, "placed twice");
    }
}

/// Both nodes MOVE one message into the same mailbox at the same moment,
/// the link up: the slave's copy is pending, and the master places it under
/// the UID its own MOVE gave (the GUID index), so the message ends once,
/// under one UID, on every node, with nothing renumbered.
#[test]
fn concurrent_moves_of_one_message_with_the_link_up_leave_one_copy() {
    for master_first in [true, false] {
        let mut sim = pair(&format!("mv-{master_first}@example.org"));
        sim.link = [[true; NODES]; NODES];
        let g = deliver(&sim, 0, "INBOX", "to move");
        sim.heal("delivered");
        let u = sim.user.clone();
        let v = sim.nodes[0].store().views();
        let (inbox, foo) = (
            v.mailbox_by_name(&u, "INBOX").unwrap().unwrap().id,
            v.mailbox_by_name(&u, "Foo").unwrap().unwrap().id,
        );
        let mv = |sim: &Sim, node: usize| {
            let (u, pending) = (sim.user.clone(), sim.pending_for(node));
            sim.nodes[node]
                .store()
                .run_blocking(move |t, c| mutate::copy(t, c, &u, inbox, &[1], foo, true, pending).map(|_| ()))
                .unwrap();
        };
        mv(&sim, 0);
        mv(&sim, 1);
        if master_first {
            sim.pull_one(1, 0);
        } else {
            sim.pull_one(0, 1);
            resolve::run_once(sim.nodes[0].store(), Role::Master).unwrap();
        }
        sim.record("moved twice");
        sim.heal("moved twice");
        for n in 0..2 {
            assert_eq!(uids(&sim, n, "INBOX"), vec![], "node-{n}");
            assert_eq!(uids(&sim, n, "Foo"), vec![(1, g)], "node-{n}: one GUID, one UID");
            assert!(
                sim.nodes[n].store().views().resolutions().unwrap().is_empty(),
                "node-{n} renumbered"
            );
        }
        sim.check(1, "moved twice");
    }
}

/// The resolutions (renumberings and placements) a node authored:
/// (epoch, HLC) of each, from its own log.
fn resolutions_by(sim: &Sim, node: usize) -> Vec<(u64, u64)> {
    let store = sim.nodes[node].store();
    let own = store.wal().local_origin().0;
    store
        .wal()
        .read_order(1, 1_000_000)
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.origin.0 == own)
        .filter_map(|(_, e)| {
            let ev = Event::decode(&e.payload).unwrap();
            let epoch = ev.as_moves().map(|m| m.epoch).or(ev.as_placement().map(|p| p.epoch))?;
            Some((epoch, e.hlc))
        })
        .collect()
}

/// Two masters across a cut: node-1 is promoted (epoch 1) while node-0,
/// the configured master, cannot hear of it. Through node-2, each learns
/// of the other's delivery under UID 1 and renumbers the collision, node-0
/// first (the smaller HLC, which alone used to win). The epoch-1
/// renumbering wins on every node; node-0 authors nothing more once it has
/// applied the promotion; the stale move's UIDs, which node-0's clients
/// saw, are not shown for other messages anywhere; and all three nodes end
/// alike.
#[test]
fn a_promoted_masters_resolution_beats_a_stale_masters_across_a_cut() {
    let mut sim = pair("epoch@example.org");
    let a = deliver(&sim, 0, "INBOX", "A on the old master");
    let b = deliver(&sim, 1, "INBOX", "B on the promoted node");
    // node-2 holds both, and marks the collision (it resolves nothing).
    sim.pull_one(2, 1);
    sim.pull_one(2, 0);
    sim.nodes[1]
        .store()
        .run_blocking(|t, c| tandem::repl::role::promote(t, c, "node-1"))
        .unwrap();
    let c = deliver(&sim, 1, "INBOX", "C after the promotion");
    let d = deliver(&sim, 1, "INBOX", "D after the promotion");
    // node-0 hears of B, not of the promotion, and resolves as master of
    // epoch 0; node-1 hears of A, not of node-0's move, and resolves under
    // epoch 1.
    sim.pull_one(0, 2);
    resolve::run_once(sim.nodes[0].store(), Role::Master).unwrap();
    // The HLC's physical part is the wall clock's millisecond: two
    // resolutions in one millisecond can carry the same HLC, and this
    // test needs node-0's to be the smaller one (the order that alone
    // used to decide), so node-1 resolves in a later millisecond.
    std::thread::sleep(std::time::Duration::from_millis(3));
    sim.pull_one(1, 2);
    resolve::run_once(sim.nodes[1].store(), Role::Slave).unwrap();
    let (stale, promoted) = (resolutions_by(&sim, 0), resolutions_by(&sim, 1));
    assert_eq!(stale.len(), 1, "node-0 renumbered once: {stale:?}");
    assert_eq!(promoted.len(), 1, "node-1 renumbered once: {promoted:?}");
    assert_eq!((stale[0].0, promoted[0].0), (0, 1));
    assert!(stale[0].1 < promoted[0].1, "the stale move must have the smaller HLC");
    let mut moved_by_stale: Vec<(u32, Id)> = uids(&sim, 0, "INBOX");
    moved_by_stale.sort();
    assert_eq!(
        moved_by_stale.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![2, 3],
        "node-0's clients see its move"
    );
    sim.record("cut");
    // node-0 is still configured master: it resolves until it applies the
    // promotion, and then never again.
    sim.master = 1;
    sim.second_master = Some(0);
    sim.heal("heal");
    assert_eq!(resolutions_by(&sim, 0), stale, "node-0 resolved after it applied epoch 1");
    let first = uids(&sim, 0, "INBOX");
    for n in 0..NODES {
        let inbox = uids(&sim, n, "INBOX");
        assert_eq!(inbox, first, "node-{n} differs from node-0");
        let uid_of = |g: Id| inbox.iter().find(|m| m.1 == g).map(|m| m.0);
        let mut ab = vec![uid_of(a).unwrap(), uid_of(b).unwrap()];
        ab.sort();
        assert_eq!(ab, vec![4, 5], "node-{n}: the epoch-1 renumbering wins: {inbox:?}");
        // UIDs 2 and 3 named A and B on node-0: nothing else is shown there.
        assert!(inbox.iter().all(|m| m.0 > 3), "node-{n} shows a UID the stale move used: {inbox:?}");
        assert!(uid_of(c).is_some() && uid_of(d).is_some(), "node-{n} lost a message: {inbox:?}");
    }
    sim.check(1, "heal");
}

/// A peer that never answers a body query: the batch waits, the link with
/// it, until the query's deadline (the engine's, 30 s) passes on the
/// virtual clock; not a second before. The next link gets its answer, the
/// body travels or not, and the nodes converge.
#[test]
fn a_query_never_answered_ends_the_link_in_virtual_time() {
    let mut sim = pair("query@example.org");
    sim.link = [[true; NODES]; NODES];
    deliver(&sim, 0, "INBOX", "asked about");
    sim.heal("delivered");
    // A fresh link, and a copy on node-0: its body has another reference
    // there, so the link asks node-1 whether it holds it.
    sim.set_link(0, 1, false);
    sim.set_link(0, 1, true);
    let u = sim.user.clone();
    let v = sim.nodes[0].store().views();
    let (inbox, foo) = (
        v.mailbox_by_name(&u, "INBOX").unwrap().unwrap().id,
        v.mailbox_by_name(&u, "Foo").unwrap().unwrap().id,
    );
    sim.nodes[0]
        .store()
        .run_blocking(move |t, c| mutate::copy(t, c, &u, inbox, &[1], foo, false, false).map(|_| ()))
        .unwrap();
    sim.answer_queries = false;
    let asked_at = sim.now;
    assert_eq!(sim.pull_one(1, 0), 0, "the batch waits for its answer");
    assert_eq!(sim.links[NODES].as_ref().map(|l| l.queries.waiting()), Some(1), "one query waits");
    assert!(sim.advance(Duration::from_secs(29)).is_empty(), "a link ended before the deadline");
    assert_eq!(sim.pull_one(1, 0), 0, "the waiting link moves no further");
    let ended = sim.advance(Duration::from_secs(1));
    assert_eq!(ended.len(), 1, "{:?}", ended.iter().map(|e| e.2.to_string()).collect::<Vec<_>>());
    let (i, j, e) = &ended[0];
    assert_eq!((*i, *j, e.kind()), (1, 0, "timeout"));
    assert!(e.to_string().ends_with("unanswered after 30 s"), "{e}");
    assert_eq!(sim.now - asked_at, Duration::from_secs(30));
    assert!(sim.links[NODES].is_none(), "the link ended");
    assert!(uids(&sim, 1, "Foo").is_empty(), "the copy arrived without an answer");
    sim.answer_queries = true;
    sim.heal("answered");
    assert_eq!(uids(&sim, 1, "Foo").len(), 1);
    assert_eq!(uids(&sim, 1, "Foo"), uids(&sim, 0, "Foo"));
    sim.check(1, "answered");
}

/// How one side of an opening ended: `None` when it was done in time.
type Ended = Option<(tandem::repl::error::LinkError, Duration)>;

/// Node `j` dials node `i` on the virtual clock: the proof of the secret
/// and `Hello` (every frame over the wire) under both sides' deadlines
/// (the engine's, `mirror.auth_timeout_ms` of 5000 ms). The dialer sends
/// `sends` frames at most, then nothing (a peer that never finishes);
/// then the clock runs in steps of 250 ms until both deadlines fired.
/// Returns each side's end: `None` for an opening done, else the error
/// and the virtual time it took.
fn open_link(sim: &mut Sim, i: usize, j: usize, sends: usize) -> (Ended, Ended) {
    let timeout = Duration::from_millis(5000);
    let started = sim.now;
    let mut acceptor = Deadline::start(Side::Acceptor, sim.now, timeout);
    let mut dialing = Deadline::start(Side::Dialer, sim.now, timeout);
    let ekm = [7u8; 32];
    let (mut d, first) = DialAuth::start(b"s3cret", ekm);
    let mut a = AcceptAuth::new(b"s3cret", ekm);
    let mut left = sends;
    let mut send = |f: Frame| {
        left = left.checked_sub(1)?;
        Some(wire(&f))
    };
    'opening: {
        let Some(f) = send(first) else { break 'opening };
        let Ok(AuthStep::Send(pake)) = a.frame(f) else {
            panic!("the acceptor answers")
        };
        let AuthStep::Send(proof) = d.frame(wire(&pake)).unwrap() else {
            panic!("the dialer proves")
        };
        let Some(f) = send(proof) else { break 'opening };
        let Ok(AuthStep::Done(Some(back))) = a.frame(f) else {
            panic!("the proof holds")
        };
        assert_eq!(d.frame(wire(&back)).unwrap(), AuthStep::Done(None));
        let (dst, src) = (sim.nodes[i].store(), sim.nodes[j].store());
        let hello = Frame::Hello {
            node_id: sim.nodes[j].id.clone(),
            origin: src.wal().local_origin().0,
            role: "slave".into(),
            epoch: 0,
        };
        let Some(f) = send(hello) else { break 'opening };
        let opened = opening::opening(f, dst.wal().local_origin().0).unwrap();
        assert!(matches!(opened, opening::Opening::Link { .. }));
        acceptor.opened();
        opening::vector(wire(&Frame::Vector {
            vector: heads(dst),
            hashes: vec![],
        }))
        .unwrap();
        dialing.opened();
    }
    let (mut acc, mut dial): (Ended, Ended) = (None, None);
    for _ in 0..100 {
        if acceptor.poll_timeout().is_none() && dialing.poll_timeout().is_none() {
            break;
        }
        sim.now += Duration::from_millis(250);
        if let Err(e) = acceptor.handle_timeout(sim.now) {
            acc = Some((e, sim.now - started));
        }
        if let Err(e) = dialing.handle_timeout(sim.now) {
            dial = Some((e, sim.now - started));
        }
    }
    (acc, dial)
}

/// A dialer that stops after its first frame (it never proves the
/// secret), and one that proves it but never sends `Hello`: both sides'
/// deadlines end the opening after 5 virtual seconds. A dialer that
/// finishes in time opens the link, and the nodes catch up over it.
#[test]
fn a_peer_that_never_authenticates_ends_the_link_in_virtual_time() {
    let mut sim = pair("auth@example.org");
    let five = Duration::from_secs(5);
    for sends in [1, 2] {
        let (acc, dial) = open_link(&mut sim, 1, 0, sends);
        let (acc, dial) = (
            acc.expect("the acceptor's deadline fired"),
            dial.expect("the dialer's deadline fired"),
        );
        assert_eq!(
            (acc.0.kind(), acc.0.to_string().as_str(), acc.1),
            ("timeout", "no authentication within 5000 ms", five)
        );
        assert_eq!(
            (dial.0.kind(), dial.0.to_string().as_str(), dial.1),
            ("timeout", "no handshake within 5000 ms", five)
        );
    }
    deliver(&sim, 0, "INBOX", "after the opening");
    let before = sim.now;
    let (acc, dial) = open_link(&mut sim, 1, 0, 3);
    assert!(acc.is_none() && dial.is_none(), "an opening done in time expired");
    assert_eq!(sim.now, before, "an opening done asks for no timer");
    sim.link[1][0] = true;
    assert_eq!(sim.pull_one(1, 0), 1);
    sim.heal("opened");
    assert_eq!(uids(&sim, 1, "INBOX"), uids(&sim, 0, "INBOX"));
    sim.check(1, "opened");
}

/// The masters' signs of life on the virtual clock (`Alive`,
/// `replication.md` section 8b): each node's `Liveness`, and per direction
/// `j` → `i` the `Relay` of `j`'s outgoing link and the intake at `i`.
struct Signs {
    liveness: Vec<authority::Liveness>,
    relay: Vec<authority::Relay>,
    intake: Vec<Intake>,
}

use tandem::repl::engine::authority;

impl Signs {
    fn new(sim: &Sim) -> Signs {
        Signs {
            liveness: vec![authority::Liveness::default(); NODES],
            relay: vec![authority::Relay::default(); NODES * NODES],
            intake: (0..NODES * NODES)
                .map(|k| Intake::new(sim.nodes[k / NODES].store().wal().local_origin().0))
                .collect(),
        }
    }

    /// One round at `t` ms: every node notes its own head, the master
    /// sends its sign of life on every link that is up, and every node
    /// passes on what it holds, each frame over the wire.
    fn round(&mut self, sim: &Sim, t: u64) {
        // A link down either way takes the signs of life it brought, as
        // the daemon's link tasks do when they end.
        for i in 0..NODES {
            for j in (0..NODES).filter(|j| *j != i && !(sim.link[i][*j] && sim.link[*j][i])) {
                self.liveness[i].link_lost(&sim.nodes[j].id);
            }
        }
        for j in 0..NODES {
            let store = sim.nodes[j].store();
            let own = store.wal().local_origin();
            self.liveness[j].wrote(store.wal().heads().get(own), t);
        }
        for j in 0..NODES {
            let r = role::current(&sim.nodes[j].store().views(), &sim.nodes[j].id, sim.seed(j)).unwrap();
            for i in (0..NODES).filter(|i| *i != j && sim.link[j][*i]) {
                let own = r.master.then(|| Frame::Alive {
                    node: sim.nodes[j].id.clone(),
                    epoch: r.epoch,
                    stamp: t + 1,
                    holds: heads(sim.nodes[j].store()),
                });
                for f in self.relay[i * NODES + j].round(own, &self.liveness[j], t) {
                    let Some(Arrival::Alive(f)) = self.intake[i * NODES + j].arrive(wire(&f), || 0, false).unwrap() else {
                        panic!("a sign of life arrives as one")
                    };
                    self.liveness[i].heard(&sim.nodes[i].id, &sim.nodes[j].id, f, t);
                }
            }
        }
    }

    /// Whether node `i` waits for its master at `t`: over direct links both
    /// ways, as the daemon decides, or through the relayed signs of life.
    fn reaches_master(&self, sim: &Sim, i: usize, t: u64) -> bool {
        let r = role::current(&sim.nodes[i].store().views(), &sim.nodes[i].id, sim.seed(i)).unwrap();
        let role = authority::Role {
            master: r.master,
            master_node: r.master_node.as_deref(),
            epoch: r.epoch,
        };
        let own = sim.nodes[i].store().wal().local_origin().0;
        !r.master && (sim.pending_for(i) || self.liveness[i].relayed(role, own, t).is_some())
    }
}

/// Three nodes, one link cut: node-0 (master) and node-2 hear each other
/// only through node-1. node-2 still counts the master as reachable through
/// node-1's relay of its signs of life: it appends pending, node-1 carries
/// its entries to the master, the master places them and the placements
/// come back the same way, all within the bounds, so nothing is placed
/// locally, no UID is given twice and nothing is renumbered. Once node-1
/// is cut from the master as well, node-2 stops waiting 2 s after the last
/// sign of life came through.
#[test]
fn a_slave_cut_off_from_the_master_waits_through_the_relay() {
    let mut sim = Sim::new();
    sim.user = "relay@example.org".into();
    sim.master = 0;
    let u = sim.user.clone();
    sim.nodes[0]
        .store()
        .run_blocking(move |t, c| mutate::create_user(t, c, &u, "x".into(), 1_700_000_000))
        .unwrap();
    sim.heal("setup");
    sim.set_link(0, 2, false);
    let mut signs = Signs::new(&sim);
    let (mut t, mut want) = (0u64, Vec::new());
    // When each of node-2's pending messages was appended (virtual ms).
    let mut since: HashMap<Id, u64> = HashMap::new();
    for round in 0..24 {
        signs.round(&sim, t);
        if round >= 1 {
            assert!(signs.reaches_master(&sim, 2, t), "round {round}: node-2 lost its master");
        }
        for node in 0..NODES {
            let pending = node != 0 && signs.reaches_master(&sim, node, t);
            let (u, subject) = (sim.user.clone(), format!("n{node}-{round}"));
            let mut msg = NewMessage::new(format!("Subject: {subject}\r\n\r\nx\r\n").into_bytes(), Flags::default(), 1);
            msg.pending = pending;
            let g = sim.nodes[node]
                .store()
                .run_blocking(move |t, c| mutate::append(t, c, &u, "INBOX", &msg).map(|p| p.guid))
                .unwrap();
            if node == 2 {
                assert!(pending, "round {round}: node-2 gave a UID itself");
                since.insert(g, t);
            }
            want.push(g);
        }
        sim.exchange();
        sim.record("one link cut");
        // node-2's sweep: every message still pending waits, none is past
        // the bound or without a master.
        let reach = signs.reaches_master(&sim, 2, t);
        let own = sim.nodes[2].store().wal().local_origin().0;
        for (_, g, _) in sim.nodes[2]
            .store()
            .views()
            .pendings()
            .unwrap()
            .into_iter()
            .filter(|p| p.2.since.1 == own)
        {
            let d = authority::decide(since[&g], t, reach, authority::PENDING_BOUND_MS);
            assert!(matches!(d, authority::Pending::Wait { .. }), "round {round}: {d:?}");
        }
        t += authority::ALIVE_EVERY_MS;
    }
    // Whatever was still pending is placed by the master through node-1.
    for _ in 0..6 {
        signs.round(&sim, t);
        sim.exchange();
        t += authority::ALIVE_EVERY_MS;
    }
    assert!(sim.nodes[2].store().views().pendings().unwrap().is_empty(), "node-2 still waits");
    sim.record("one link cut");
    want.sort();
    let first = uids(&sim, 0, "INBOX");
    assert_eq!(
        first.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=want.len() as u32).collect::<Vec<_>>(),
        "the master gave every UID, without gaps"
    );
    let mut got: Vec<Id> = first.iter().map(|m| m.1).collect();
    got.sort();
    assert_eq!(got, want);
    for n in 0..NODES {
        assert_eq!(uids(&sim, n, "INBOX"), first, "node-{n} shows other UIDs");
        let v = sim.nodes[n].store().views();
        assert!(
            v.resolutions().unwrap().is_empty(),
            "node-{n} renumbered: {:?}",
            v.resolutions().unwrap()
        );
    }
    // The relay goes too: node-2 stops waiting once the last sign of life
    // is 2 s old, not before.
    sim.set_link(0, 1, false);
    let last = t - authority::ALIVE_EVERY_MS;
    while t <= last + authority::ALIVE_WITHIN_MS {
        signs.round(&sim, t);
        assert!(signs.reaches_master(&sim, 2, t), "{} ms after the last sign of life", t - last);
        t += authority::ALIVE_EVERY_MS / 5;
    }
    signs.round(&sim, t);
    assert!(!signs.reaches_master(&sim, 2, t), "node-2 still waits for a master it cannot reach");
    sim.heal("healed");
    sim.check(1, "healed");
}
