//! The dialing side of a link around the [`Sender`]: the peer's vector at
//! the start, its acknowledgements and what they confirm of this node's
//! own origin, the frames it may send, and which bodies travel with a
//! batch — with no socket, task or store.
//!
//! The driver reads what [`Dialer::poll`] asks for and hands the entries
//! to [`Dialer::read`], which returns the batches to build: their entries,
//! the bodies they reference (each body once per link) and a query id. A
//! body referenced only inside its batch travels unasked; one referenced
//! elsewhere may already be at the peer, so it is asked about first
//! ([`choose_bodies`], [`answered`]).

use super::sender::{Command, Item, Resume, Sender, Window};
use super::vector::Vector;
use crate::repl::error::LinkError;
use crate::repl::frame::Frame;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Bodies remembered as sent on one link; past this the set starts over
/// (bounded memory; at worst a body travels again).
pub const SENT_BODIES: usize = 1 << 20;

/// An entry of the apply order as the dialer needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadEntry {
    pub order: u64,
    pub origin: u64,
    pub seq: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// The body the entry references (an append or a restore): hash, size.
    pub body: Option<([u8; 32], u64)>,
}

impl ReadEntry {
    /// An entry at apply-order position `order` whose event is `payload`
    /// (decoded once here to find the body it references).
    pub fn new(order: u64, origin: u64, seq: u64, payload: &[u8]) -> ReadEntry {
        use crate::event::Event;
        ReadEntry {
            order,
            origin,
            seq,
            bytes: payload.len() as u64,
            body: match Event::decode(payload) {
                Ok(Event::MessageAppended { blob, size, .. } | Event::MessageRestored { blob, size, .. }) => Some((blob.0, size)),
                _ => None,
            },
        }
    }
}

/// A batch to build and send, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub id: u64,
    /// The entries, by apply order.
    pub orders: Vec<u64>,
    /// Bodies not yet sent on this link, with how many entries of this
    /// batch reference each.
    pub want: Vec<([u8; 32], u64)>,
    /// References to bodies already sent on this link (or earlier in
    /// this batch).
    pub already: u64,
    /// Bytes of the bodies the batch references (its memory budget).
    pub body_bytes: u64,
    /// The id of the body query this batch may need.
    pub query: u64,
}

/// State of one outgoing link after the peer's vector arrived.
#[derive(Debug)]
pub struct Dialer {
    sender: Sender,
    own_origin: u64,
    /// How much of this node's own origin the peer holds durably.
    confirmed: u64,
    sent_bodies: HashSet<[u8; 32]>,
    next_query: u64,
}

impl Dialer {
    /// The link starts from the peer's `vector` (checked against this
    /// node's history by the driver), this node's apply order ending at
    /// `local_last`, reading it where the last link to this peer left off
    /// (`resume`) if the peer still holds what it held then.
    pub fn new(window: Window, own_origin: u64, vector: &Vector, local_last: u64, resume: Option<&Resume>) -> Dialer {
        let mut sender = Sender::new(window);
        sender.start_at(vector, local_last, resume);
        Dialer {
            sender,
            own_origin,
            confirmed: vector.get(own_origin),
            sent_bodies: HashSet::new(),
            next_query: 1,
        }
    }

    /// How much of this node's own origin the peer holds durably: what
    /// `ack = "peer"` may confirm.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// The next read of the apply order to make, if any: (from, at most).
    pub fn poll(&mut self) -> Option<(u64, usize)> {
        match self.sender.poll()? {
            Command::Read { from, max } => Some((from, max)),
            Command::Send { .. } => unreachable!("the sender emits sends only from read"),
        }
    }

    /// This node committed up to apply-order position `last`.
    pub fn local_commit(&mut self, last: u64) {
        self.sender.local_commit(last);
    }

    /// Entries the driver read, in apply order: the batches to build.
    pub fn read(&mut self, entries: &[ReadEntry]) -> Vec<Build> {
        let items: Vec<Item> = entries
            .iter()
            .map(|e| Item {
                order: e.order,
                origin: e.origin,
                seq: e.seq,
                bytes: e.bytes + 64 + e.body.map_or(0, |b| b.1),
            })
            .collect();
        let by_order: BTreeMap<u64, &ReadEntry> = entries.iter().map(|e| (e.order, e)).collect();
        let mut out = Vec::new();
        for c in self.sender.read(&items) {
            let Command::Send { id, orders } = c else { continue };
            let mut want: Vec<([u8; 32], u64)> = Vec::new();
            let (mut already, mut body_bytes) = (0, 0);
            for o in &orders {
                let Some((hash, size)) = by_order[o].body else { continue };
                body_bytes += size;
                if self.sent_bodies.len() >= SENT_BODIES {
                    self.sent_bodies.clear();
                }
                if self.sent_bodies.insert(hash) {
                    want.push((hash, 1));
                } else {
                    if let Some(w) = want.iter_mut().find(|w| w.0 == hash) {
                        w.1 += 1;
                    }
                    already += 1;
                }
            }
            let query = self.next_query;
            self.next_query += 1;
            out.push(Build {
                id,
                orders,
                want,
                already,
                body_bytes,
                query,
            });
        }
        out
    }

    /// A frame from the peer (answers to queries are routed by the driver
    /// before they get here; a stray one is ignored). `Ok(Some(seq))`: the
    /// peer now holds this node's own origin up to `seq`, durably.
    pub fn frame(&mut self, frame: Frame) -> Result<Option<u64>, LinkError> {
        match frame {
            Frame::Ack { id, vector } => {
                self.sender.ack(id, &vector);
                let s = vector.get(self.own_origin);
                if s > self.confirmed {
                    self.confirmed = s;
                    Ok(Some(s))
                } else {
                    Ok(None)
                }
            }
            Frame::Held { .. } => Ok(None),
            Frame::Refused { reason } => Err(LinkError::refused_by_peer(&reason)),
            other => Err(LinkError::Unexpected {
                expected: "ack, refused or held",
                got: other.kind(),
            }),
        }
    }

    /// The position of the apply order this link reads next.
    pub fn next_order(&self) -> u64 {
        self.sender.next_order()
    }

    /// Where the next link to this peer may start reading.
    pub fn resume(&self) -> Resume {
        self.sender.resume()
    }

    /// Entries the peer lacks, by this node's `heads`.
    pub fn queue(&self, heads: &Vector) -> u64 {
        self.sender.acked().behind(heads)
    }

    pub fn acked(&self) -> &Vector {
        self.sender.acked()
    }

    pub fn inflight_batches(&self) -> usize {
        self.sender.inflight_batches()
    }

    pub fn unacked_bytes(&self) -> u64 {
        self.sender.unacked_bytes()
    }
}

/// How long a batch waits for the peer's answer to its body query: a peer
/// that never answers must not hold the link up for ever.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The body queries of one link that wait for their answers, and the
/// deadline of each, with no clock of its own: the driver says when a
/// query left ([`Queries::asked`]) and when its answer came
/// ([`Queries::answered`]), sets a timer for [`Queries::poll_timeout`],
/// and ends the link with the error [`Queries::handle_timeout`] returns.
/// Answers do not pass through the link's loop on their way to the batch
/// waiting for them (the loop may itself wait for that batch's writer);
/// only their arrival is noted here.
#[derive(Debug, Clone)]
pub struct Queries {
    timeout: Duration,
    /// Query id -> when it was asked.
    open: BTreeMap<u64, Instant>,
}

impl Queries {
    pub fn new(timeout: Duration) -> Queries {
        Queries {
            timeout,
            open: BTreeMap::new(),
        }
    }

    /// Query `id` was handed to the writer at `now`.
    pub fn asked(&mut self, id: u64, now: Instant) {
        self.open.insert(id, now);
    }

    /// The answer to query `id` arrived: whether it was one this link
    /// waits for (a stray or repeated answer is not).
    pub fn answered(&mut self, id: u64) -> bool {
        self.open.remove(&id).is_some()
    }

    /// Queries still waiting.
    pub fn waiting(&self) -> usize {
        self.open.len()
    }

    /// When the oldest waiting query runs out, if any waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.open.values().min().map(|t| *t + self.timeout)
    }

    /// The timer fired at `now`: a query waiting since `timeout` or longer
    /// ends the link (`query N unanswered after 30 s`).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), LinkError> {
        let late = self
            .open
            .iter()
            .filter(|(_, t)| now >= **t + self.timeout)
            .min_by_key(|(_, t)| **t)
            .map(|(id, _)| *id);
        match late {
            Some(id) => {
                self.open.remove(&id);
                Err(LinkError::Timeout(format!(
                    "query {id} unanswered after {} s",
                    self.timeout.as_secs()
                )))
            }
            None => Ok(()),
        }
    }
}

/// Bodies to send unasked, and bodies to ask the peer about.
pub type Chosen = (Vec<[u8; 32]>, Vec<[u8; 32]>);

/// Which of a batch's bodies travel unasked and which are asked about:
/// `refs(hash)` counts this node's references to a body; a body with no
/// reference outside the batch cannot be at the peer yet.
pub fn choose_bodies<E>(want: Vec<([u8; 32], u64)>, mut refs: impl FnMut(&[u8; 32]) -> Result<u64, E>) -> Result<Chosen, E> {
    let (mut send, mut ask) = (Vec::new(), Vec::new());
    for (b, in_batch) in want {
        if refs(&b)? > in_batch {
            ask.push(b);
        } else {
            send.push(b);
        }
    }
    Ok((send, ask))
}

/// The peer's answer `held` to query `id` about `ask`: the bodies to send
/// after all, and how many the peer already holds.
pub fn answered(id: u64, ask: Vec<[u8; 32]>, held: Vec<bool>) -> Result<(Vec<[u8; 32]>, u64), LinkError> {
    if held.len() != ask.len() {
        return Err(LinkError::Local(anyhow::anyhow!(
            "query {id}: {} answers for {} bodies",
            held.len(),
            ask.len()
        )));
    }
    let mut send = Vec::new();
    let mut at_peer = 0;
    for (b, h) in ask.into_iter().zip(held) {
        if h {
            at_peer += 1;
        } else {
            send.push(b);
        }
    }
    Ok((send, at_peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(order: u64, origin: u64, seq: u64, body: Option<u8>) -> ReadEntry {
        ReadEntry {
            order,
            origin,
            seq,
            bytes: 10,
            body: body.map(|b| ([b; 32], 1000)),
        }
    }

    #[test]
    fn a_body_travels_once_per_link_and_its_references_are_counted() {
        let mut d = Dialer::new(Window::default(), 1, &Vector::default(), 4, None);
        assert_eq!(d.poll(), Some((1, Window::default().entries)));
        // One delivery to three users: one body, three references.
        let builds = d.read(&[e(1, 1, 1, Some(7)), e(2, 1, 2, Some(7)), e(3, 1, 3, Some(7)), e(4, 1, 4, None)]);
        assert_eq!(builds.len(), 1);
        let b = &builds[0];
        assert_eq!(
            (b.id, b.orders.clone(), b.want.clone(), b.already),
            (1, vec![1, 2, 3, 4], vec![([7; 32], 3)], 2)
        );
        assert_eq!(b.body_bytes, 3000);
        // A later copy of the same body on this link does not send it again.
        d.local_commit(5);
        assert_eq!(d.poll(), Some((5, Window::default().entries)));
        let later = d.read(&[e(5, 1, 5, Some(7))]);
        assert_eq!((later[0].want.clone(), later[0].already, later[0].query), (vec![], 1, 2));
    }

    #[test]
    fn acknowledgements_confirm_only_the_own_origin_and_only_forward() {
        let mut d = Dialer::new(Window::default(), 5, &Vector::from([(5, 3), (6, 10)]), 0, None);
        assert_eq!(d.confirmed(), 3);
        assert_eq!(
            d.frame(Frame::Ack {
                id: 1,
                vector: [(6, 20)].into()
            })
            .unwrap(),
            None
        );
        assert_eq!(
            d.frame(Frame::Ack {
                id: 2,
                vector: [(5, 9)].into()
            })
            .unwrap(),
            Some(9)
        );
        assert_eq!(
            d.frame(Frame::Ack {
                id: 3,
                vector: [(5, 4)].into()
            })
            .unwrap(),
            None
        );
        assert_eq!(d.confirmed(), 9);
        assert_eq!(d.queue(&[(5, 12), (6, 20), (8, 2)].into()), 5);
        assert_eq!(d.frame(Frame::Held { id: 9, held: vec![] }).unwrap(), None);
        let e = d.frame(Frame::Refused { reason: "no\nway".into() }).unwrap_err();
        assert!(e.is_refusal() && e.to_string() == "refused by the peer: no way", "{e}");
        let e = d
            .frame(Frame::Vector {
                vector: Vector::default(),
                hashes: vec![],
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "expected ack, refused or held, got vector");
    }

    #[test]
    fn a_query_left_unanswered_ends_the_link_at_its_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut q = Queries::new(QUERY_TIMEOUT);
        assert_eq!(q.poll_timeout(), None, "no query, no timer");
        q.asked(3, t0);
        q.asked(4, t0 + s(10));
        assert_eq!(q.poll_timeout(), Some(t0 + s(30)));
        // Answered in time: the timer moves to the next query's deadline.
        assert!(q.answered(3));
        assert!(!q.answered(3), "a repeated answer is not waited for");
        assert!(!q.answered(99), "nor a stray one");
        assert_eq!(q.poll_timeout(), Some(t0 + s(40)));
        assert!(q.handle_timeout(t0 + s(39)).is_ok());
        let e = q.handle_timeout(t0 + s(40)).unwrap_err();
        assert_eq!((e.kind(), e.to_string().as_str()), ("timeout", "query 4 unanswered after 30 s"));
        assert_eq!((q.waiting(), q.poll_timeout()), (0, None));
        // The oldest late query is the one named, whatever its id.
        q.asked(9, t0 + s(1));
        q.asked(7, t0 + s(2));
        assert_eq!(
            q.handle_timeout(t0 + s(60)).unwrap_err().to_string(),
            "query 9 unanswered after 30 s"
        );
    }

    #[test]
    fn bodies_referenced_elsewhere_are_asked_about_first() {
        let refs: BTreeMap<[u8; 32], u64> = [([1; 32], 1), ([2; 32], 5), ([3; 32], 2)].into_iter().collect();
        let (send, ask) = choose_bodies::<()>(vec![([1; 32], 1), ([2; 32], 1), ([3; 32], 2)], |h| Ok(refs[h])).unwrap();
        assert_eq!((send, ask.clone()), (vec![[1; 32], [3; 32]], vec![[2; 32]]));
        assert_eq!(answered(4, ask.clone(), vec![true]).unwrap(), (vec![], 1));
        assert_eq!(answered(4, ask.clone(), vec![false]).unwrap(), (vec![[2; 32]], 0));
        assert_eq!(answered(4, ask, vec![]).unwrap_err().kind(), "local");
    }
}
