//! The sender's side of a replication link as a deterministic state
//! machine: no socket, no clock, no store. The driver feeds it what
//! happened (the peer's vector, acknowledgements, local commits, entries it
//! read) and carries out the commands it returns.
//!
//! The sender walks its own apply order, so everything that happened before
//! an entry on this node reaches the peer before it (a mailbox before the
//! messages delivered into it), for every origin: a three-way mirror relays.
//! Batches are pipelined under a window, never stop-and-wait.

use super::vector::Vector;
use std::collections::VecDeque;

/// An entry as the engine sees it: its place in the sender's apply order,
/// its origin and seq, and its size on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub order: u64,
    pub origin: u64,
    pub seq: u64,
    pub bytes: u64,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Read entries of the apply order starting at `from` (at most `max`)
    /// and hand them to [`Sender::read`].
    Read { from: u64, max: usize },
    /// Send these entries (by apply order) as batch `id`.
    Send { id: u64, orders: Vec<u64> },
}

/// The byte bound of a link's first batch (see `Sender::batch_bytes`).
pub const FIRST_BATCH_BYTES: u64 = 1 << 20;

/// Limits of a link.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Batches in flight before waiting for an acknowledgement.
    pub batches: usize,
    /// Entries per batch.
    pub entries: usize,
    /// Bytes per batch (a single larger entry still goes alone).
    pub bytes: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            batches: 32,
            entries: 512,
            bytes: 8 << 20,
        }
    }
}

/// Where a link to a peer may start reading the apply order: every entry
/// before `order` is one the peer held by `vector`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub order: u64,
    pub vector: Vector,
}

impl Resume {
    /// Whether a peer that now announces `peer` still holds all of it: a
    /// peer restored from an older copy does not, and is read for from
    /// the beginning.
    pub fn fits(&self, peer: &Vector) -> bool {
        peer.covers(&self.vector)
    }
}

/// Sender state of one link.
#[derive(Debug)]
pub struct Sender {
    window: Window,
    /// What the peer holds durably, per origin.
    acked: Vector,
    /// What has been sent (acked or not), per origin.
    sent: Vector,
    /// Next apply-order position to look at.
    next_order: u64,
    /// Last position of this node's apply order known to exist.
    local_last: u64,
    /// A read is outstanding.
    reading: bool,
    /// Batches in flight: (id, entries, bytes, apply-order position of
    /// the first entry).
    inflight: VecDeque<(u64, u64, u64, u64)>,
    next_id: u64,
    started: bool,
}

impl Sender {
    pub fn new(window: Window) -> Sender {
        Sender {
            window,
            acked: Vector::default(),
            sent: Vector::default(),
            next_order: 1,
            local_last: 0,
            reading: false,
            inflight: VecDeque::new(),
            next_id: 1,
            started: false,
        }
    }

    /// The peer's durable vector at the start of the link.
    pub fn start(&mut self, peer: &Vector, local_last: u64) {
        self.start_at(peer, local_last, None);
    }

    /// The same, resuming where an earlier link to this peer left off if
    /// the peer still holds what it held then ([`Resume::fits`]); else
    /// from the beginning of the apply order.
    pub fn start_at(&mut self, peer: &Vector, local_last: u64, resume: Option<&Resume>) {
        self.acked = peer.clone();
        self.sent = self.acked.clone();
        self.local_last = local_last;
        self.next_order = resume.filter(|r| r.fits(peer)).map_or(1, |r| r.order.max(1));
        self.started = true;
    }

    /// Where a later link to the same peer may start: the peer holds
    /// every entry before the first batch still in flight (or before the
    /// next position to read, with none in flight), by the vector it
    /// acknowledged. Entries the sender skipped were held by the peer at
    /// the start (each origin's entries lie in the apply order in chain
    /// order, so none is skipped for a later entry of a batch in flight).
    pub fn resume(&self) -> Resume {
        Resume {
            order: self.inflight.front().map_or(self.next_order, |b| b.3),
            vector: self.acked.clone(),
        }
    }

    /// The next apply-order position to look at.
    pub fn next_order(&self) -> u64 {
        self.next_order
    }

    /// This node committed up to apply-order position `last`.
    pub fn local_commit(&mut self, last: u64) {
        self.local_last = self.local_last.max(last);
    }

    /// The peer acknowledged batch `id` with its vector.
    pub fn ack(&mut self, id: u64, vector: &Vector) {
        self.inflight.retain(|b| b.0 != id);
        self.acked.merge(vector);
    }

    /// Entries the driver read from the apply order (in order). Returns the
    /// batch to send, if any.
    pub fn read(&mut self, items: &[Item]) -> Vec<Command> {
        self.reading = false;
        let mut out = Vec::new();
        let mut batch: Vec<u64> = Vec::new();
        let mut bytes = 0;
        for it in items {
            if it.order < self.next_order {
                continue;
            }
            self.next_order = it.order + 1;
            let have = self.sent.get(it.origin);
            if it.seq <= have {
                continue; // the peer has it (or it is on its way)
            }
            if !batch.is_empty() && (batch.len() >= self.window.entries || bytes + it.bytes > self.batch_bytes()) {
                out.push(self.batch(std::mem::take(&mut batch), bytes));
                bytes = 0;
            }
            self.sent.raise(it.origin, it.seq);
            batch.push(it.order);
            bytes += it.bytes;
        }
        if items.is_empty() {
            // Nothing more exists yet.
            self.next_order = self.next_order.max(self.local_last + 1);
        }
        if !batch.is_empty() {
            out.push(self.batch(batch, bytes));
        }
        out
    }

    /// The byte bound of the next batch: the link's first batches are
    /// smaller (`FIRST_BATCH_BYTES`, doubling up to the window's bound),
    /// so the peer has the first entries to apply while the later, larger
    /// batches are still being built and sent.
    fn batch_bytes(&self) -> u64 {
        let made = (self.next_id - 1).min(32) as u32;
        FIRST_BATCH_BYTES.saturating_mul(1 << made).min(self.window.bytes)
    }

    fn batch(&mut self, orders: Vec<u64>, bytes: u64) -> Command {
        let id = self.next_id;
        self.next_id += 1;
        let first = orders.first().copied().unwrap_or(self.next_order);
        self.inflight.push_back((id, orders.len() as u64, bytes, first));
        Command::Send { id, orders }
    }

    /// The next thing to do, if anything.
    pub fn poll(&mut self) -> Option<Command> {
        if !self.started || self.reading || self.inflight.len() >= self.window.batches || self.next_order > self.local_last {
            return None;
        }
        self.reading = true;
        Some(Command::Read {
            from: self.next_order,
            max: self.window.entries,
        })
    }

    /// Entries sent but not acknowledged.
    pub fn unacked(&self) -> u64 {
        self.inflight.iter().map(|b| b.1).sum()
    }

    /// Bytes sent but not acknowledged (bodies included).
    pub fn unacked_bytes(&self) -> u64 {
        self.inflight.iter().map(|b| b.2).sum()
    }

    /// The peer's acknowledged vector.
    pub fn acked(&self) -> &Vector {
        &self.acked
    }

    pub fn inflight_batches(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Entries `from..from + max` of a log of (origin, seq) in apply
    /// order, as the driver would read them, each `bytes` long.
    fn items(log: &[(u64, u64)], from: u64, max: usize, bytes: u64) -> Vec<Item> {
        log.iter()
            .enumerate()
            .skip((from - 1) as usize)
            .take(max)
            .map(|(i, (o, q))| Item {
                order: i as u64 + 1,
                origin: *o,
                seq: *q,
                bytes,
            })
            .collect()
    }

    /// A log of (origin, seq) in apply order, and a simulated peer that
    /// applies batches and acknowledges after a delay, possibly dropping
    /// the link (the engine then restarts from the peer's vector).
    fn simulate(log: &[(u64, u64)], peer_start: &[(u64, u64)], window: Window, seed: u64, drop_every: u64) -> BTreeMap<u64, u64> {
        let mut peer: BTreeMap<u64, u64> = peer_start.iter().copied().collect();
        let mut s = Sender::new(window);
        s.start(&peer.iter().map(|(a, b)| (*a, *b)).collect::<Vector>(), log.len() as u64);
        let mut rng = crate::testrng::XorShift(seed | 1);
        let mut pending: VecDeque<(u64, Vec<u64>)> = VecDeque::new();
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 100_000, "no progress");
            while let Some(cmd) = s.poll() {
                match cmd {
                    Command::Read { from, max } => {
                        let items = items(log, from, max, 100);
                        for c in s.read(&items) {
                            if let Command::Send { id, orders } = c {
                                pending.push_back((id, orders));
                            }
                        }
                    }
                    Command::Send { .. } => unreachable!("sends come from read"),
                }
            }
            if drop_every > 0 && rng.next_u64().is_multiple_of(drop_every) {
                // Link lost: unacked batches vanish; reconnect from the
                // peer's vector, resuming where the last link left off.
                pending.clear();
                let resume = s.resume();
                s = Sender::new(window);
                s.start_at(
                    &peer.iter().map(|(a, b)| (*a, *b)).collect::<Vector>(),
                    log.len() as u64,
                    Some(&resume),
                );
                continue;
            }
            let Some((id, orders)) = pending.pop_front() else {
                if s.poll().is_none() && s.inflight_batches() == 0 {
                    break;
                }
                continue;
            };
            for o in orders {
                let (origin, seq) = log[(o - 1) as usize];
                let h = peer.entry(origin).or_insert(0);
                // The receiver refuses gaps; the engine must never cause one.
                assert!(seq <= *h + 1, "gap: origin {origin} seq {seq} after {h}");
                *h = (*h).max(seq);
            }
            let v: Vec<(u64, u64)> = peer.iter().map(|(a, b)| (*a, *b)).collect();
            s.ack(id, &v.iter().copied().collect());
        }
        peer
    }

    fn heads(log: &[(u64, u64)]) -> BTreeMap<u64, u64> {
        let mut h = BTreeMap::new();
        for (o, s) in log {
            h.insert(*o, *s);
        }
        h
    }

    fn interleaved(n: u64, origins: u64) -> Vec<(u64, u64)> {
        let mut next = vec![0u64; origins as usize];
        (0..n)
            .map(|i| {
                let o = (i * 7 + i / 3) % origins;
                next[o as usize] += 1;
                (o + 1, next[o as usize])
            })
            .collect()
    }

    #[test]
    fn empty_peer_gets_everything_in_order() {
        let log = interleaved(5000, 3);
        let got = simulate(
            &log,
            &[],
            Window {
                batches: 4,
                entries: 100,
                bytes: 1 << 20,
            },
            1,
            0,
        );
        assert_eq!(got, heads(&log));
    }

    #[test]
    fn partial_peer_gets_the_rest() {
        let log = interleaved(3000, 3);
        let got = simulate(&log, &[(1, 500), (2, 10), (3, 999)], Window::default(), 2, 0);
        assert_eq!(got, heads(&log));
    }

    #[test]
    fn converges_across_seeded_link_losses() {
        for seed in 1..40 {
            let log = interleaved(2000, 3);
            let got = simulate(
                &log,
                &[],
                Window {
                    batches: 3,
                    entries: 37,
                    bytes: 1 << 20,
                },
                seed,
                5,
            );
            assert_eq!(got, heads(&log), "seed {seed}");
        }
    }

    #[test]
    fn a_new_link_resumes_behind_the_oldest_batch_in_flight_unless_the_peer_lost_entries() {
        let log = interleaved(100, 2);
        let mut s = Sender::new(Window {
            batches: 2,
            entries: 10,
            bytes: 1 << 20,
        });
        s.start(&Vector::default(), 100);
        let mut ids = Vec::new();
        while let Some(Command::Read { from, max }) = s.poll() {
            let items = items(&log, from, max, 1);
            for c in s.read(&items) {
                if let Command::Send { id, .. } = c {
                    ids.push(id);
                }
            }
        }
        // Batches 1 (orders 1-10) and 2 (11-20) in flight: nothing yet.
        assert_eq!(s.resume().order, 1);
        let held_after = |n: usize| {
            let mut h: BTreeMap<u64, u64> = BTreeMap::new();
            for (o, q) in &log[..n] {
                h.insert(*o, *q);
            }
            h.into_iter().collect::<Vector>()
        };
        s.ack(ids[0], &held_after(10));
        let r = s.resume();
        assert_eq!(r.order, 11, "behind batch 2, still in flight");
        // The peer holds what it acknowledged: a new link starts at 11 and
        // sends exactly the rest.
        let mut again = Sender::new(Window::default());
        again.start_at(&held_after(10), 100, Some(&r));
        assert_eq!(again.poll(), Some(Command::Read { from: 11, max: 512 }));
        // A peer restored from an older copy holds less: from the start.
        let mut back = Sender::new(Window::default());
        back.start_at(&held_after(4), 100, Some(&r));
        assert_eq!(back.poll(), Some(Command::Read { from: 1, max: 512 }));
        assert!(r.fits(&held_after(50)) && !r.fits(&held_after(9)) && !r.fits(&Vector::default()));
    }

    #[test]
    fn window_bounds_batches_in_flight() {
        let log = interleaved(1000, 1);
        let mut s = Sender::new(Window {
            batches: 2,
            entries: 10,
            bytes: 1 << 20,
        });
        s.start(&Vector::default(), 1000);
        let mut sends = 0;
        while let Some(Command::Read { from, max }) = s.poll() {
            let items = items(&log, from, max, 1);
            sends += s.read(&items).len();
        }
        assert_eq!(sends, 2, "a third batch went out before an acknowledgement");
        s.ack(1, &[(1, 10)].into());
        assert!(s.poll().is_some());
    }

    /// A link's first batches are smaller: 1 MiB, then twice as large each
    /// time up to the window's bound, so the peer applies its first entries
    /// while the large batches are still being built and sent.
    #[test]
    fn a_link_starts_with_small_batches() {
        let log = interleaved(2000, 1);
        let window = Window {
            batches: 64,
            entries: 512,
            bytes: 8 << 20,
        };
        let bytes = 100 << 10; // 100 KiB entries
        let mut s = Sender::new(window);
        s.start(&Vector::default(), log.len() as u64);
        let mut sizes = Vec::new();
        while let Some(Command::Read { from, max }) = s.poll() {
            for c in s.read(&items(&log, from, max, bytes)) {
                if let Command::Send { orders, .. } = c {
                    sizes.push(orders.len() as u64 * bytes);
                }
            }
        }
        let bounds: Vec<u64> = (0..6).map(|k| (FIRST_BATCH_BYTES << k).min(window.bytes)).collect();
        for (k, (size, bound)) in sizes.iter().zip(&bounds).enumerate() {
            assert!(size <= bound, "batch {k}: {size} bytes over {bound}");
            assert!(size + bytes > *bound, "batch {k}: {size} bytes, room for more under {bound}");
        }
        // After the ramp, batches are cut by the window's bound (or where a
        // read of the apply order ends).
        assert!(sizes.iter().all(|&b| b <= window.bytes), "{sizes:?}");
        assert!(
            sizes[4..].iter().filter(|&&b| b + bytes > window.bytes).count() >= sizes.len() / 2,
            "{sizes:?}"
        );
        // A new link (a reconnect) starts small again.
        let mut s = Sender::new(window);
        s.start(&Vector::default(), log.len() as u64);
        let Some(Command::Read { from, max }) = s.poll() else {
            panic!("nothing to read")
        };
        let Some(Command::Send { orders, .. }) = s.read(&items(&log, from, max, bytes)).into_iter().next() else {
            panic!("no batch")
        };
        assert_eq!(orders.len() as u64 * bytes, 10 * bytes, "the first batch of a new link");
    }

    /// Three nodes writing concurrently, links that deliver in random
    /// interleavings (a receiver gets the same entry over two links, in any
    /// order between links), and partitions that cut and restore links.
    /// Every node ends holding every entry exactly once, and no receiver ever
    /// sees a gap in an origin's chain.
    #[test]
    fn three_nodes_converge_under_interleaving_duplication_and_partitions() {
        #[derive(Default)]
        struct Node {
            log: Vec<(u64, u64)>,
            heads: BTreeMap<u64, u64>,
        }
        struct Link {
            from: usize,
            to: usize,
            sender: Option<Sender>,
            queue: VecDeque<(u64, Vec<(u64, u64)>)>,
        }
        /// Let a link's sender read its node's log and queue what it sends.
        fn pump(link: &mut Link, log: &[(u64, u64)]) {
            let Link { sender, queue, .. } = link;
            let snd = sender.as_mut().expect("connected");
            snd.local_commit(log.len() as u64);
            while let Some(Command::Read { from: at, max }) = snd.poll() {
                let items = items(log, at, max, 10);
                for c in snd.read(&items) {
                    if let Command::Send { id, orders } = c {
                        queue.push_back((id, orders.iter().map(|o| log[(*o - 1) as usize]).collect()));
                    }
                }
            }
        }
        let mut duplicates = 0u64;
        let mut total = 0u64;
        for seed in 1..25u64 {
            let mut rng = crate::testrng::XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut next = |n: u64| rng.next_u64() % n;
            let mut nodes: Vec<Node> = (0..3).map(|_| Node::default()).collect();
            // A full mesh; some seeds cut A-C for good (relay through B).
            let cut_ac = seed % 3 == 0;
            let mut links: Vec<Link> = Vec::new();
            for from in 0..3 {
                for to in 0..3 {
                    if from != to && !(cut_ac && (from + to == 2) && from != 1) {
                        links.push(Link {
                            from,
                            to,
                            sender: None,
                            queue: VecDeque::new(),
                        });
                    }
                }
            }
            let window = Window {
                batches: 1 + next(4) as usize,
                entries: 1 + next(20) as usize,
                bytes: 1 << 20,
            };
            let vector = |n: &Node| n.heads.iter().map(|(a, b)| (*a, *b)).collect::<Vector>();
            let mut rejected = 0;
            for step in 0..6000u32 {
                let writing = step < 4000;
                match next(10) {
                    0 | 1 if writing => {
                        let i = next(3) as usize;
                        let o = i as u64 + 1;
                        let s = nodes[i].heads.get(&o).copied().unwrap_or(0) + 1;
                        nodes[i].heads.insert(o, s);
                        nodes[i].log.push((o, s));
                    }
                    2 if writing => {
                        // Cut a random link: what it had in flight is lost.
                        let l = next(links.len() as u64) as usize;
                        links[l].sender = None;
                        links[l].queue.clear();
                    }
                    3..=5 => {
                        // Let a link's sender work.
                        let l = next(links.len() as u64) as usize;
                        let (from, to) = (links[l].from, links[l].to);
                        if links[l].sender.is_none() {
                            let mut snd = Sender::new(window);
                            snd.start(&vector(&nodes[to]), nodes[from].log.len() as u64);
                            links[l].sender = Some(snd);
                        }
                        pump(&mut links[l], &nodes[from].log);
                    }
                    _ => {
                        // Deliver the oldest batch of a random link (links
                        // interleave in any order; each link is FIFO).
                        let l = next(links.len() as u64) as usize;
                        let to = links[l].to;
                        let Some((id, entries)) = links[l].queue.pop_front() else {
                            continue;
                        };
                        let mut heads = nodes[to].heads.clone();
                        let mut fresh = Vec::new();
                        let mut gap = false;
                        for (o, q) in &entries {
                            let h = heads.get(o).copied().unwrap_or(0);
                            if *q <= h {
                                duplicates += 1; // already held: it came over another link
                                continue;
                            }
                            if *q != h + 1 {
                                gap = true;
                                break;
                            }
                            heads.insert(*o, *q);
                            fresh.push((*o, *q));
                        }
                        if gap {
                            // The batch is refused whole and the link drops.
                            rejected += 1;
                            links[l].sender = None;
                            links[l].queue.clear();
                            continue;
                        }
                        nodes[to].heads = heads;
                        nodes[to].log.extend(fresh);
                        let v = vector(&nodes[to]);
                        if let Some(snd) = links[l].sender.as_mut() {
                            snd.ack(id, &v);
                        }
                    }
                }
            }
            // Heal: every link up, run to quiescence.
            for _ in 0..200 {
                for link in links.iter_mut() {
                    let (from, to) = (link.from, link.to);
                    if link.sender.is_none() {
                        let mut snd = Sender::new(window);
                        snd.start(&vector(&nodes[to]), nodes[from].log.len() as u64);
                        link.sender = Some(snd);
                    }
                    pump(link, &nodes[from].log);
                    while let Some((id, entries)) = link.queue.pop_front() {
                        for (o, q) in entries {
                            let h = nodes[to].heads.get(&o).copied().unwrap_or(0);
                            if q == h + 1 {
                                nodes[to].heads.insert(o, q);
                                nodes[to].log.push((o, q));
                            } else {
                                assert!(q <= h, "seed {seed}: gap while healing");
                            }
                        }
                        let v = vector(&nodes[to]);
                        link.sender.as_mut().expect("connected").ack(id, &v);
                    }
                }
            }
            assert_eq!(rejected, 0, "seed {seed}: a sender caused a gap");
            for n in &nodes[1..] {
                assert_eq!(n.heads, nodes[0].heads, "seed {seed}: vectors differ");
            }
            for n in &nodes {
                let mut seen = std::collections::BTreeSet::new();
                for e in &n.log {
                    assert!(seen.insert(*e), "seed {seed}: entry held twice");
                }
                assert_eq!(seen.len() as u64, n.heads.values().sum::<u64>(), "seed {seed}: entries missing");
            }
            total += nodes[0].log.len() as u64;
        }
        // The simulation did exercise what it claims to.
        assert!(total > 24 * 300, "too few writes: {total}");
        assert!(duplicates > 100, "links never overlapped: {duplicates} duplicates");
    }
}
