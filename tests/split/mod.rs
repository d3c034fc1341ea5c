//! What the split-brain tests with real daemons share: LMTP deliveries, the
//! view an IMAP client gets, a recorder of every UID a client was shown,
//! UDP relays standing in for the network between nodes, a mesh of nodes
//! whose every link runs through its own relay, and the network-cut
//! scenario run on two or three nodes (`tests/split_brain.rs`,
//! `tests/split_three.rs`).
#![allow(dead_code)]

use crate::common::{self, digest, free_udp_port, python, Node};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const SECRET: &str = "correct horse battery staple";
pub const USER: &str = "u@example.org";

/// Deliver `n` messages over LMTP; every one must get its 250.
pub fn deliver(node: &Node, tag: &str, n: usize) {
    common::deliver_range(node, USER, tag, 0..n);
}

/// What an IMAP client of `node` sees: (mailbox, UIDVALIDITY, UID) ->
/// (subject, flags), for every mailbox LIST shows; and the LIST names.
pub type Seen = (BTreeMap<(String, u32, u32), (String, String)>, Vec<String>);

pub fn imap_view(node: &Node) -> Seen {
    let out = python(
        node,
        &format!(
            r#"
import re
from imaptest import *
c = connect('{USER}')
names = []
for line in ok(c.list()):
    names.append(line.decode().rsplit(' "/" ', 1)[1].strip('"'))
print('LIST', ' '.join(sorted(names)))
for n in names:
    typ, data = c.select(n)
    if typ != 'OK':
        # Renamed or deleted by an event that arrived after the LIST: a
        # name still listed must open.
        again = [l.decode().rsplit(' "/" ', 1)[1].strip('"') for l in ok(c.list())]
        assert n not in again, (n, typ, data)
        print('GONE', n)
        continue
    exists = int(data[0])
    uv = c.response('UIDVALIDITY')[1][0].decode()
    if exists == 0:
        continue
    typ, data = c.uid('FETCH', '1:*', '(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
    assert typ == 'OK'
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta = item[0].decode()
        uid = re.search(r'UID (\d+)', meta).group(1)
        flags = re.search(r'FLAGS \(([^)]*)\)', meta).group(1)
        subj = item[1].decode().strip().split(':', 1)[1].strip()
        print('MSG', n, uv, uid, subj, '|' + flags)
"#
        ),
    );
    let mut msgs = BTreeMap::new();
    let mut names = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("LIST ") {
            names = rest.split(' ').map(String::from).collect();
        } else if let Some(gone) = line.strip_prefix("GONE ") {
            names.retain(|n| n != gone);
        } else if let Some(rest) = line.strip_prefix("MSG ") {
            let (head, flags) = rest.split_once(" |").unwrap();
            let f: Vec<&str> = head.splitn(4, ' ').collect();
            msgs.insert(
                (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap()),
                (f[3].to_string(), flags.to_string()),
            );
        }
    }
    (msgs, names)
}

/// The sorted subjects a view shows in `mailbox`.
pub fn subjects(seen: &Seen, mailbox: &str) -> Vec<String> {
    let mut v: Vec<String> = seen.0.iter().filter(|(k, _)| k.0 == mailbox).map(|(_, v)| v.0.clone()).collect();
    v.sort();
    v
}

/// Every (node, mailbox, UIDVALIDITY, UID) a client was shown, with the
/// message; a second message under one of them fails the test.
#[derive(Default)]
pub struct Recorder(BTreeMap<(String, String, u32, u32), String>);

impl Recorder {
    pub fn look(&mut self, name: &str, node: &Node) -> Seen {
        let seen = imap_view(node);
        for ((mb, uv, uid), (subject, _)) in &seen.0 {
            let prev = self.0.entry((name.to_string(), mb.clone(), *uv, *uid)).or_insert(subject.clone());
            assert_eq!(prev, subject, "{name}: {mb} UIDVALIDITY {uv} UID {uid} named two messages");
        }
        seen
    }
}

pub fn conflicts(node: &Node) -> serde_json::Value {
    common::admin_get(node, "/v1/status")["conflicts"].clone()
}

/// The nodes hold the same digest and nothing is kept aside, marked or
/// waiting for the master on any of them.
pub fn settled<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> bool {
    let nodes: Vec<&Node> = nodes.into_iter().collect();
    let quiet = |n: &Node| {
        let c = conflicts(n);
        c["uid_collisions"] == 0 && c["name_conflicts"] == 0 && c["kept_aside"] == 0 && c["awaiting_master"] == 0
    };
    let d: Vec<_> = nodes.iter().map(|n| digest(n)).collect();
    d.windows(2).all(|w| w[0] == w[1]) && nodes.iter().all(|n| quiet(n))
}

/// Run `script` with `c` an IMAP client logged in as [`USER`].
pub fn imap(node: &Node, script: &str) {
    python(node, &format!("from imaptest import *\nc = connect('{USER}')\n{script}"));
}

/// A UDP relay standing in for the network between two nodes: it forwards
/// datagrams from the first client it hears to `upstream` and the answers
/// back, and drops everything while it is cut.
pub struct Relay {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub fn new(upstream: u16) -> Relay {
        use std::net::{SocketAddr, UdpSocket};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let port = front.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let to: SocketAddr = format!("127.0.0.1:{upstream}").parse().unwrap();
        // Client to upstream.
        {
            let (front, back, open, stop, client) = (front.clone(), back.clone(), open.clone(), stop.clone(), client.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        *client.lock().unwrap() = Some(from);
                        if open.load(Ordering::Relaxed) {
                            let _ = back.send_to(&buf[..n], to);
                        }
                    }
                }
            });
        }
        // Upstream back to the client.
        {
            let (open, stop) = (open.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = back.recv_from(&mut buf) {
                        let c = *client.lock().unwrap();
                        if let (true, Some(c)) = (open.load(Ordering::Relaxed), c) {
                            let _ = front.send_to(&buf[..n], c);
                        }
                    }
                }
            });
        }
        Relay { port, open, stop }
    }

    pub fn cut(&self, cut: bool) {
        self.open.store(!cut, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `n` mirror nodes, each listing every other, where node `i` dials node
/// `j` through a relay of its own, so any set of links can be cut.
pub struct Mesh {
    pub names: Vec<String>,
    pub dirs: Vec<PathBuf>,
    nodes: Vec<Option<Node>>,
    relays: BTreeMap<(usize, usize), Relay>,
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// Start the nodes, `master` configured master and the others slaves,
    /// with a 1 s idle timeout so a cut link is noticed soon.
    pub fn start(n: usize, master: usize) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
        let mut relays = BTreeMap::new();
        for i in 0..n {
            for j in (0..n).filter(|j| *j != i) {
                relays.insert((i, j), Relay::new(ports[j]));
            }
        }
        let names: Vec<String> = (0..n).map(|i| format!("node-{}", (b'a' + i as u8) as char)).collect();
        let dirs: Vec<PathBuf> = names.iter().map(|name| dir.path().join(name)).collect();
        let nodes = (0..n)
            .map(|i| {
                let peers: Vec<u16> = (0..n).filter(|j| *j != i).map(|j| relays[&(i, j)].port).collect();
                let role = if i == master { "master" } else { "slave" };
                Some(common::start_mirror(
                    &dirs[i],
                    &names[i],
                    ports[i],
                    &peers,
                    SECRET,
                    role,
                    "idle_timeout_ms = 1000\n",
                ))
            })
            .collect();
        Mesh {
            names,
            dirs,
            nodes,
            relays,
            _dir: dir,
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("the node is running")
    }

    /// The running nodes, by index.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()).collect()
    }

    pub fn stop(&mut self, i: usize) {
        assert!(self.nodes[i].take().expect("the node is running").stop());
    }

    pub fn restart(&mut self, i: usize) {
        self.restart_env(i, &[]);
    }

    /// Start node `i` again with extra environment variables.
    pub fn restart_env(&mut self, i: usize, env: &[(String, String)]) {
        assert!(self.nodes[i].is_none());
        self.nodes[i] = Some(common::restart_env(&self.dirs[i], env));
    }

    /// Cut every link between nodes on different sides (`side[i]` is node
    /// `i`'s), in both directions; links within a side stay up.
    pub fn cut(&self, side: &[usize]) {
        for ((i, j), r) in &self.relays {
            r.cut(side[*i] != side[*j]);
        }
    }

    /// Cut the link between `i` and `j` in both directions, and nothing else.
    pub fn cut_link(&self, i: usize, j: usize) {
        self.relays[&(i, j)].cut(true);
        self.relays[&(j, i)].cut(true);
    }

    pub fn heal(&self) {
        for r in self.relays.values() {
            r.cut(false);
        }
    }

    /// Look at every running node over IMAP.
    pub fn look(&self, rec: &mut Recorder) {
        for i in self.running() {
            rec.look(&self.names[i], self.node(i));
        }
    }

    pub fn settled(&self) -> bool {
        settled(self.running().into_iter().map(|i| self.node(i)))
    }
}

/// A network cut among `nodes` real daemons, and its heal.
pub struct Cut<'a> {
    pub nodes: usize,
    pub master: usize,
    /// Each node's side of the cut.
    pub sides: &'a [usize],
    /// The master is stopped before the cut and started again only after
    /// the other nodes healed among themselves.
    pub master_down: bool,
}

/// Serialises the scenarios of one test binary: each runs up to three
/// daemons and times their convergence on a 2-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Hold while running a scenario of one test binary (see [`ONE_AT_A_TIME`]).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every running node takes deliveries into INBOX, creates Foo (unless it
/// already sees it) and appends to it, and sets its own flag on UID 1
/// during the cut; one node (the master, or the first writer while the
/// master is down) moves UID 2 to Archive, and the first writer on the
/// other side of it expunges UID 3, copies UID 1 to Junk and renames
/// Drafts. Then the network heals (and the master returns). Every
/// acknowledged message is on every node exactly once, no client was
/// shown one UID for two messages, flags merged, trees equal, converged
/// within 5 s of the heal (or of the master's start).
pub fn cut_and_heal(plan: Cut<'_>) {
    let _one = one_at_a_time();
    let Cut {
        nodes: n,
        master,
        sides,
        master_down,
    } = plan;
    assert_eq!(sides.len(), n);
    let mut mesh = Mesh::start(n, master);
    let (ok, _, err) = mesh.node(master).cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    deliver(mesh.node(master), "before", 3);
    assert!(
        common::wait_until(30, || mesh.settled()),
        "the nodes did not converge before the cut"
    );
    let mut rec = Recorder::default();
    mesh.look(&mut rec);

    if master_down {
        mesh.stop(master);
    }
    mesh.cut(sides);
    let writers = mesh.running();
    let mover = if master_down { writers[0] } else { master };
    let expunger = *writers.iter().find(|w| sides[**w] != sides[mover]).expect("a writer on each side");
    let flags = ["\\\\Flagged", "\\\\Seen", "$Label"];
    for &w in &writers {
        let node = mesh.node(w);
        deliver(node, &format!("cut-{w}"), 8);
        let mut script = format!(
            "typ, data = c.create('Foo')\nassert typ == 'OK' or b'ALREADYEXISTS' in data[0], data\n\
             ok(c.append('Foo', None, None, message('foo-{w}')))\n\
             ok(c.select('INBOX'))\nok(c.uid('STORE', '1', '+FLAGS', '({})'))\n",
            flags[w]
        );
        if w == mover {
            script.push_str("ok(c.uid('MOVE', '2', 'Archive'))\n");
        }
        if w == expunger {
            script.push_str(
                "ok(c.uid('STORE', '3', '+FLAGS', '(\\\\Deleted)'))\nok(c.expunge())\n\
                 ok(c.uid('COPY', '1', 'Junk'))\nok(c.rename('Drafts', 'Drafts2'))\n",
            );
        }
        imap(node, &script);
        rec.look(&mesh.names[w], node);
    }
    // The cut is real: no node sees the deliveries of the other side.
    for &w in &writers {
        let (msgs, _) = rec.look(&mesh.names[w], mesh.node(w));
        for &v in writers.iter().filter(|v| sides[**v] != sides[w]) {
            let other = format!("cut-{v}-");
            assert!(
                !msgs.values().any(|m| m.0.starts_with(&other)),
                "{}: saw {}'s mail during the cut",
                mesh.names[w],
                mesh.names[v]
            );
        }
    }

    mesh.heal();
    let mut healed = Instant::now();
    if master_down {
        // The nodes exchange their logs without the master: collisions
        // stay marked, and nothing a client saw may change its meaning.
        let heads = |m: &Mesh| {
            let h: Vec<_> = m.running().into_iter().map(|i| digest(m.node(i)).1).collect();
            h.windows(2).all(|w| w[0] == w[1])
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !heads(&mesh) {
            assert!(
                Instant::now() < deadline,
                "the nodes did not exchange their logs without the master"
            );
            mesh.look(&mut rec);
        }
        mesh.look(&mut rec);
        // Only the master renumbers: the collisions wait for it.
        let marked: u64 = mesh
            .running()
            .into_iter()
            .map(|i| conflicts(mesh.node(i))["uid_collisions"].as_u64().unwrap())
            .sum();
        assert!(marked > 0, "no collision is left for the master");
        healed = Instant::now();
        mesh.restart(master);
        eprintln!(
            "the master's listeners were up {:.2}s after its start",
            healed.elapsed().as_secs_f64()
        );
    }
    let mut converged = None;
    for _ in 0..300 {
        mesh.look(&mut rec);
        if mesh.settled() {
            converged = Some(healed.elapsed());
            break;
        }
    }
    let took = converged.expect("the nodes did not converge after the heal");
    eprintln!(
        "{n} nodes, master {}{}: converged {:.2}s after the {}",
        mesh.names[master],
        if master_down { " down during the split" } else { "" },
        took.as_secs_f64(),
        if master_down { "master's start" } else { "heal" }
    );
    assert!(took.as_secs_f64() < 5.0, "convergence took {took:?}");

    let mut want: Vec<String> = vec!["before-0".to_string()];
    for w in &writers {
        want.extend((0..8).map(|i| format!("cut-{w}-{i}")));
    }
    want.sort();
    let want_foo: Vec<String> = writers.iter().map(|w| format!("foo-{w}")).collect();
    let all: Vec<usize> = (0..n).collect();
    let views: Vec<Seen> = all.iter().map(|i| imap_view(mesh.node(*i))).collect();
    for (i, view) in views.iter().enumerate() {
        let name = &mesh.names[i];
        rec.look(name, mesh.node(i));
        let list = &view.1;
        assert_eq!(list.iter().filter(|x| *x == "Foo").count(), 1, "{name}: LIST shows {list:?}");
        assert_eq!(
            subjects(view, "INBOX"),
            want,
            "{name}: INBOX does not hold every delivery exactly once"
        );
        assert_eq!(subjects(view, "Foo"), want_foo, "{name}: Foo does not hold every side's message");
        assert_eq!(
            subjects(view, "Archive"),
            ["before-1"],
            "{name}: Archive does not hold the moved message once"
        );
        assert_eq!(
            subjects(view, "Junk"),
            ["before-0"],
            "{name}: Junk does not hold the copied message once"
        );
        assert!(
            list.iter().any(|x| x == "Drafts2") && !list.iter().any(|x| x == "Drafts"),
            "{name}: the rename did not reach: {list:?}"
        );
        let first = view.0.iter().find(|(k, v)| k.0 == "INBOX" && v.0 == "before-0").unwrap().1;
        for w in &writers {
            let f = flags[*w].replace("\\\\", "\\");
            assert!(first.1.contains(&f), "{name}: flags not merged: {} lacks {f}", first.1);
        }
    }
    assert!(views.windows(2).all(|w| w[0] == w[1]), "the nodes show different UIDs");
    // The master resolved the collisions, and every node holds its record.
    let report = common::admin_get(mesh.node(master), "/v1/conflicts");
    let moved = report["resolved"].as_array().unwrap();
    assert!(!moved.is_empty(), "no collision was renumbered: {report}");
    eprintln!("the master moved {} messages", moved.len());
    assert!(report["pending"].as_array().unwrap().is_empty(), "{report}");
    for i in all {
        assert_eq!(conflicts(mesh.node(i))["resolved"], moved.len(), "{}", mesh.names[i]);
    }
}
