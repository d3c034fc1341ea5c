//! The accepting side of a link: every decision about what the peer sent,
//! with no socket, task or store.
//!
//! It has two halves, as the driver reads frames on one task while it
//! applies on another. The reader hands each decoded frame to
//! [`Intake::arrive`], which refuses on arrival what must never be worked on (a batch over the
//! bounds, entries of this node's own origin it cannot hold, a flood of
//! queries, chunks that do not make up a body) and otherwise returns the
//! batch or query to prepare (bodies hashed, large ones written ahead).
//! Prepared work comes back through [`Receiver::prepared`] in arrival
//! order; [`Receiver::poll`] says what to do next — hand a batch to the
//! store's writer (at most [`APPLY_AHEAD`] at once, a batch applied in
//! parts alone), answer a query — and [`Receiver::applied`] turns the
//! writer's result into the acknowledgement, in batch order, or into the
//! refusal that ends the link.

use crate::repl::error::LinkError;
use crate::repl::frame::{Frame, WireBlob, WireEntry, MAX_BATCH_ENTRIES, MAX_BODY};
use std::collections::VecDeque;

/// How many `Query` frames a link may send ahead of the batches they are
/// for. A sender asks at most once per batch, before that batch, and
/// builds only a few batches ahead, so it stays far below this; each
/// `Batch` gives one back, up to this.
pub const QUERY_BUDGET: u32 = 64;

/// Batches queued at the store's writer at once (they may share one
/// fsync); each is acknowledged, in order, once durable.
pub const APPLY_AHEAD: usize = 4;

/// Most entries applied in one transaction. A larger batch is applied in
/// consecutive transactions of at most this many entries, so it holds the
/// single writer, and local writes behind it, for one part at a time.
pub const APPLY_PART: usize = 512;

/// Bodies arriving in `Chunk` frames ahead of the batch that needs them.
#[derive(Debug, Default)]
pub struct Chunks {
    /// The body being put together: hash, announced size, bytes so far.
    current: Option<([u8; 32], u64, Vec<u8>)>,
    /// Complete bodies, for the next batch.
    done: Vec<WireBlob>,
    /// Bytes held here, complete or not.
    bytes: u64,
}

impl Chunks {
    pub fn add(&mut self, hash: [u8; 32], total: u64, bytes: Vec<u8>) -> Result<(), LinkError> {
        if total > MAX_BODY || self.bytes + bytes.len() as u64 > MAX_BODY {
            return Err(LinkError::BadChunk("bodies in chunks beyond the 1 GiB limit"));
        }
        let (h, t, body) = self.current.get_or_insert_with(|| (hash, total, Vec::new()));
        if *h != hash || *t != total {
            return Err(LinkError::BadChunk("a chunk of another body before the last one was complete"));
        }
        if body.len() as u64 + bytes.len() as u64 > total {
            return Err(LinkError::BadChunk("chunks longer than the body they announce"));
        }
        body.extend_from_slice(&bytes);
        self.bytes += bytes.len() as u64;
        if body.len() as u64 == total {
            let (hash, _, body) = self.current.take().expect("just set");
            self.done.push(WireBlob { hash, body });
        }
        Ok(())
    }

    /// The complete bodies, when a batch arrives.
    pub fn take(&mut self) -> Result<Vec<WireBlob>, LinkError> {
        if self.current.is_some() {
            return Err(LinkError::BadChunk("a batch before the last chunk of a body"));
        }
        self.bytes = 0;
        Ok(std::mem::take(&mut self.done))
    }
}

/// What the checks on arrival refuse in a batch, before any work on it.
pub fn check_batch(id: u64, entries: &[WireEntry], own_origin: u64, own_head: impl FnOnce() -> u64, behind: bool) -> Result<(), LinkError> {
    if entries.len() > MAX_BATCH_ENTRIES {
        return Err(LinkError::BatchTooLarge {
            id,
            entries: entries.len(),
            limit: MAX_BATCH_ENTRIES,
        });
    }
    // This node is the only writer of its own origin. A peer may send back
    // entries of it that this node holds (each is compared by hash: a copy
    // is a duplicate, anything else a fork), but entries beyond this node's
    // head exist only if this node's log went backwards, which its own
    // links detect first (`behind`: a peer's vector held more of this
    // origin than this node). Otherwise they are forged: refused.
    // The head is read only for a batch that carries this origin at all.
    let own_max = entries.iter().filter(|e| e.origin == own_origin).map(|e| e.seq).max();
    if let Some(max) = own_max {
        if !behind && max > own_head() {
            return Err(LinkError::OwnOrigin { id });
        }
    }
    Ok(())
}

/// A frame that passed the checks on arrival: work to prepare.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// A batch with its bodies (those that came in chunks included).
    Batch {
        id: u64,
        entries: Vec<WireEntry>,
        blobs: Vec<WireBlob>,
    },
    /// Which of these bodies does this node hold?
    Query { id: u64, hashes: Vec<[u8; 32]> },
    /// A master's sign of life (a `Frame::Alive`), for the node's
    /// [`super::authority::Liveness`]; nothing to apply or answer.
    Alive(Frame),
}

/// Prepared work, handed back in arrival order.
#[derive(Debug, PartialEq, Eq)]
pub enum Prepared {
    /// A batch: its entries, the bodies still to write with them, and the
    /// bodies already made durable while it was prepared.
    Batch {
        id: u64,
        entries: Vec<WireEntry>,
        blobs: Vec<WireBlob>,
        stored: Vec<[u8; 32]>,
    },
    Query {
        id: u64,
        hashes: Vec<[u8; 32]>,
    },
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Hand batch `id` to the store's writer; `parts`: in consecutive
    /// transactions of at most [`APPLY_PART`] entries.
    Apply {
        id: u64,
        entries: Vec<WireEntry>,
        blobs: Vec<WireBlob>,
        stored: Vec<[u8; 32]>,
        parts: bool,
    },
    /// Answer query `id` from what is durable here (`Held`).
    Answer { id: u64, hashes: Vec<[u8; 32]> },
}

/// The frames of one incoming link as they arrive, after its handshake.
#[derive(Debug)]
pub struct Intake {
    own_origin: u64,
    query_budget: u32,
    chunks: Chunks,
}

impl Intake {
    pub fn new(own_origin: u64) -> Intake {
        Intake {
            own_origin,
            query_budget: QUERY_BUDGET,
            chunks: Chunks::default(),
        }
    }

    /// A frame arrived. `own_head` reads this node's head of its own
    /// origin (only called for a batch that carries it); `behind`: a
    /// peer's vector showed this node's log went backwards.
    /// `Ok(None)`: nothing to do yet (a chunk was kept).
    pub fn arrive(&mut self, frame: Frame, own_head: impl FnOnce() -> u64, behind: bool) -> Result<Option<Arrival>, LinkError> {
        match frame {
            Frame::Chunk { hash, total, bytes } => self.chunks.add(hash, total, bytes).map(|()| None),
            Frame::Batch { id, entries, mut blobs } => {
                self.query_budget = (self.query_budget + 1).min(QUERY_BUDGET);
                check_batch(id, &entries, self.own_origin, own_head, behind)?;
                blobs.extend(self.chunks.take()?);
                Ok(Some(Arrival::Batch { id, entries, blobs }))
            }
            Frame::Query { id, hashes } if hashes.len() > MAX_BATCH_ENTRIES => Err(LinkError::QueryFlood {
                id,
                why: "more hashes than a batch may have entries",
            }),
            Frame::Query { id, .. } if self.query_budget == 0 => Err(LinkError::QueryFlood {
                id,
                why: "more queries than the batches they could be for",
            }),
            Frame::Query { id, hashes } => {
                self.query_budget -= 1;
                Ok(Some(Arrival::Query { id, hashes }))
            }
            alive @ Frame::Alive { .. } => Ok(Some(Arrival::Alive(alive))),
            other => Err(LinkError::Unexpected {
                expected: "batch or query",
                got: other.kind(),
            }),
        }
    }
}

/// The batches of one incoming link on their way to the store's writer
/// and back as acknowledgements.
#[derive(Debug, Default)]
pub struct Receiver {
    /// Prepared work not yet handed on, in arrival order.
    ready: VecDeque<Prepared>,
    /// Batches at the writer, in order: (id, applied in parts).
    applying: VecDeque<(u64, bool)>,
}

impl Receiver {
    pub fn new() -> Receiver {
        Receiver::default()
    }

    /// Whether the driver may hand over the next prepared work: fewer than
    /// [`APPLY_AHEAD`] batches at the writer, and none applied in parts
    /// (its later parts must reach the writer before the next batch).
    pub fn room(&self) -> bool {
        self.ready.is_empty() && self.applying.len() < APPLY_AHEAD && !self.applying.iter().any(|a| a.1)
    }

    /// Prepared work, in arrival order.
    pub fn prepared(&mut self, p: Prepared) {
        self.ready.push_back(p);
    }

    /// The next thing to do, if anything.
    pub fn poll(&mut self) -> Option<Step> {
        if self.applying.len() >= APPLY_AHEAD || self.applying.iter().any(|a| a.1) {
            return None;
        }
        Some(match self.ready.pop_front()? {
            Prepared::Query { id, hashes } => Step::Answer { id, hashes },
            Prepared::Batch {
                id,
                entries,
                blobs,
                stored,
            } => {
                let parts = entries.len() > APPLY_PART;
                self.applying.push_back((id, parts));
                Step::Apply {
                    id,
                    entries,
                    blobs,
                    stored,
                    parts,
                }
            }
        })
    }

    /// Batches at the writer.
    pub fn applying(&self) -> usize {
        self.applying.len()
    }

    /// The oldest batch at the writer, whose result comes next.
    pub fn front(&self) -> Option<u64> {
        self.applying.front().map(|a| a.0)
    }

    /// The writer's result for the oldest batch at it: `Ok(id)`, batch
    /// `id` is durable and its `Ack` (with this node's heads) goes out now;
    /// or the refusal that ends the link (`reason`: why the store refused).
    pub fn applied(&mut self, id: u64, result: Result<(), String>) -> Result<u64, LinkError> {
        match self.applying.pop_front() {
            Some((front, _)) if front == id => {}
            other => {
                return Err(LinkError::Local(anyhow::anyhow!(
                    "the writer answered batch {id}, but the oldest batch at it is {:?}",
                    other.map(|o| o.0)
                )))
            }
        }
        match result {
            Ok(()) => Ok(id),
            Err(reason) => Err(LinkError::BatchRefused { id, reason }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(origin: u64, seq: u64) -> WireEntry {
        WireEntry {
            origin,
            seq,
            hlc: seq,
            hash: [seq as u8; 32],
            payload: vec![1, 2, 3],
        }
    }

    fn batch(id: u64, n: usize) -> Frame {
        Frame::Batch {
            id,
            entries: (1..=n as u64).map(|s| entry(7, s)).collect(),
            blobs: Vec::new(),
        }
    }

    fn prepare(a: Arrival) -> Prepared {
        match a {
            Arrival::Batch { id, entries, blobs } => Prepared::Batch {
                id,
                entries,
                blobs,
                stored: Vec::new(),
            },
            Arrival::Query { id, hashes } => Prepared::Query { id, hashes },
            Arrival::Alive(f) => panic!("nothing to prepare for {}", f.kind()),
        }
    }

    #[test]
    fn a_sign_of_life_arrives_between_batches_and_changes_nothing_else() {
        let mut i = Intake::new(1);
        let alive = Frame::Alive {
            node: "m".into(),
            epoch: 1,
            stamp: 9,
            holds: Default::default(),
        };
        assert_eq!(i.arrive(alive.clone(), || 0, false).unwrap(), Some(Arrival::Alive(alive)));
        assert!(matches!(
            i.arrive(batch(1, 2), || 0, false).unwrap(),
            Some(Arrival::Batch { id: 1, .. })
        ));
    }

    #[test]
    fn batches_reach_the_writer_in_order_under_the_bound_and_are_acknowledged_in_order() {
        let (mut i, mut r) = (Intake::new(1), Receiver::new());
        let mut applied = Vec::new();
        for id in 1..=10 {
            let a = i.arrive(batch(id, 3), || 0, false).unwrap().unwrap();
            // The driver hands work on only while there is room.
            while !r.room() {
                let front = r.front().unwrap();
                assert_eq!(r.applied(front, Ok(())).unwrap(), front);
                applied.push(front);
            }
            r.prepared(prepare(a));
            match r.poll() {
                Some(Step::Apply { id: got, parts, .. }) => assert!(got == id && !parts),
                other => panic!("expected apply, got {other:?}"),
            }
            assert!(r.applying() <= APPLY_AHEAD);
        }
        while let Some(front) = r.front() {
            r.applied(front, Ok(())).unwrap();
            applied.push(front);
        }
        assert_eq!(applied, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn a_batch_applied_in_parts_goes_alone() {
        let (mut i, mut r) = (Intake::new(1), Receiver::new());
        let a = i.arrive(batch(1, APPLY_PART + 1), || 0, false).unwrap().unwrap();
        r.prepared(prepare(a));
        assert!(matches!(r.poll(), Some(Step::Apply { parts: true, .. })));
        assert!(!r.room(), "nothing may follow a batch applied in parts");
        let b = i.arrive(batch(2, 1), || 0, false).unwrap().unwrap();
        r.prepared(prepare(b));
        assert_eq!(r.poll(), None);
        assert_eq!(r.applied(1, Ok(())).unwrap(), 1);
        assert!(matches!(r.poll(), Some(Step::Apply { id: 2, parts: false, .. })));
    }

    #[test]
    fn a_refused_batch_ends_the_link_and_answers_out_of_order_are_local_faults() {
        let (mut i, mut r) = (Intake::new(1), Receiver::new());
        for id in 1..=2 {
            let a = i.arrive(batch(id, 1), || 0, false).unwrap().unwrap();
            r.prepared(prepare(a));
            r.poll().unwrap();
        }
        assert_eq!(r.applied(2, Ok(())).unwrap_err().kind(), "local");
        let mut r = Receiver::new();
        let a = i.arrive(batch(5, 1), || 0, false).unwrap().unwrap();
        r.prepared(prepare(a));
        r.poll().unwrap();
        let e = r.applied(5, Err("chain broken".into())).unwrap_err();
        assert!(matches!(e, LinkError::BatchRefused { id: 5, .. }) && e.refuses_peer(), "{e}");
    }

    #[test]
    fn refusals_on_arrival() {
        let mut r = Intake::new(7);
        // Entries of this node's own origin beyond its head are forged...
        assert!(matches!(r.arrive(batch(1, 3), || 2, false), Err(LinkError::OwnOrigin { id: 1 })));
        // ...unless this node's log went backwards; at or below the head they are copies.
        assert!(r.arrive(batch(2, 3), || 2, true).unwrap().is_some());
        assert!(r.arrive(batch(3, 3), || 3, false).unwrap().is_some());
        // Another origin never reads the head.
        let mut r = Intake::new(9);
        assert!(r.arrive(batch(1, 3), || panic!("head read"), false).unwrap().is_some());
        assert!(matches!(
            r.arrive(batch(2, MAX_BATCH_ENTRIES + 1), || 0, false),
            Err(LinkError::BatchTooLarge { id: 2, .. })
        ));
        // Frames of the dialer's side do not fit here.
        let e = r
            .arrive(
                Frame::Ack {
                    id: 1,
                    vector: Default::default(),
                },
                || 0,
                false,
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "expected batch or query, got ack");
    }

    #[test]
    fn queries_are_bounded_by_the_batches_they_could_be_for() {
        let mut r = Intake::new(1);
        let q = |id| Frame::Query { id, hashes: vec![[0; 32]] };
        for id in 0..QUERY_BUDGET as u64 {
            assert!(matches!(r.arrive(q(id), || 0, false), Ok(Some(Arrival::Query { .. }))));
        }
        assert!(matches!(r.arrive(q(99), || 0, false), Err(LinkError::QueryFlood { id: 99, .. })));
        // A batch gives one back.
        r.arrive(batch(1, 1), || 0, false).unwrap();
        assert!(r.arrive(q(100), || 0, false).is_ok());
        let big = Frame::Query {
            id: 101,
            hashes: vec![[0; 32]; MAX_BATCH_ENTRIES + 1],
        };
        assert!(matches!(r.arrive(big, || 0, false), Err(LinkError::QueryFlood { id: 101, .. })));
        // A query is answered once it comes up in arrival order.
        let mut r = Receiver::new();
        r.prepared(Prepared::Query {
            id: 4,
            hashes: vec![[1; 32]],
        });
        assert_eq!(
            r.poll(),
            Some(Step::Answer {
                id: 4,
                hashes: vec![[1; 32]]
            })
        );
    }

    #[test]
    fn chunks_make_up_bodies_before_their_batch() {
        let mut r = Intake::new(1);
        let chunk = |hash: u8, total, bytes: &[u8]| Frame::Chunk {
            hash: [hash; 32],
            total,
            bytes: bytes.to_vec(),
        };
        assert_eq!(r.arrive(chunk(1, 6, b"abc"), || 0, false).unwrap(), None);
        // A batch before the body is complete is refused...
        let mut r2 = Intake::new(1);
        r2.arrive(chunk(1, 6, b"abc"), || 0, false).unwrap();
        assert!(matches!(r2.arrive(batch(1, 1), || 0, false), Err(LinkError::BadChunk(_))));
        // ...as is a chunk of another body, or more bytes than announced.
        assert!(matches!(r.arrive(chunk(2, 6, b"x"), || 0, false), Err(LinkError::BadChunk(_))));
        let mut r3 = Intake::new(1);
        assert!(matches!(r3.arrive(chunk(1, 2, b"abc"), || 0, false), Err(LinkError::BadChunk(_))));
        assert!(matches!(
            r3.arrive(chunk(1, MAX_BODY + 1, b"a"), || 0, false),
            Err(LinkError::BadChunk(_))
        ));
        // The complete body travels with the next batch.
        let mut r = Intake::new(1);
        r.arrive(chunk(1, 6, b"abc"), || 0, false).unwrap();
        r.arrive(chunk(1, 6, b"def"), || 0, false).unwrap();
        match r.arrive(batch(1, 1), || 0, false).unwrap() {
            Some(Arrival::Batch { blobs, .. }) => assert_eq!(
                blobs,
                vec![WireBlob {
                    hash: [1; 32],
                    body: b"abcdef".to_vec()
                }]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chunks_make_up_whole_bodies_or_are_refused() {
        let mut c = Chunks::default();
        c.add([1; 32], 6, b"abc".to_vec()).unwrap();
        assert!(matches!(c.take(), Err(LinkError::BadChunk(_))), "a batch before the last piece");
        c.add([1; 32], 6, b"def".to_vec()).unwrap();
        let done = c.take().unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].hash, &done[0].body[..]), ([1; 32], &b"abcdef"[..]));
        assert!(c.take().unwrap().is_empty());

        let mut c = Chunks::default();
        c.add([1; 32], 6, b"abc".to_vec()).unwrap();
        assert!(
            matches!(c.add([2; 32], 6, b"def".to_vec()), Err(LinkError::BadChunk(_))),
            "another body"
        );
        let mut c = Chunks::default();
        c.add([1; 32], 6, b"abc".to_vec()).unwrap();
        assert!(
            matches!(c.add([1; 32], 7, b"def".to_vec()), Err(LinkError::BadChunk(_))),
            "another total"
        );
        let mut c = Chunks::default();
        assert!(
            matches!(c.add([1; 32], 2, b"abc".to_vec()), Err(LinkError::BadChunk(_))),
            "too long"
        );
        assert!(
            matches!(c.add([1; 32], MAX_BODY + 1, b"a".to_vec()), Err(LinkError::BadChunk(_))),
            "too large"
        );
    }
}
