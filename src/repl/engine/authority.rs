//! The master as UID authority, as pure decisions: no socket, no clock, no
//! store. The driver (`repl::authority`) reads the links and the views,
//! asks these functions, and carries out the answer.
//!
//! While a slave's links to the master are up it appends new messages
//! *pending* (UID 0, invisible, durable) and the master places them at its
//! own UIDNEXT, so only one node gives out UIDs and none are renumbered.
//! When the master cannot be reached, or does not answer within a bound,
//! the slave places its pending messages itself (local assignment, the
//! path of a cut; the master renumbers any collision after the heal).
//!
//! With three nodes or more a slave may reach its master only through
//! another node (one link cut). [`Liveness`] keeps the master's relayed
//! signs of life (`Alive` frames, `replication.md` section 8b) and says
//! whether they show a master that is alive and holds this node's entries;
//! [`Relay`] decides which of them each outgoing link passes on. Time is
//! passed in (milliseconds of a clock that only goes forward), so the
//! simulation runs them on a virtual clock.

use super::vector::Vector;
use crate::repl::frame::Frame;
use std::collections::{BTreeMap, VecDeque};

/// How long IMAP APPEND, COPY and MOVE on a slave wait for the master's
/// placement before placing the message themselves (their OK names the
/// UID).
pub const WAIT_BOUND_MS: u64 = 2_000;

/// How long a pending message (an LMTP delivery, which does not wait) may
/// wait for the master while the links are up before its slave places it
/// itself. Longer than [`WAIT_BOUND_MS`]: nobody waits on it, and placing
/// it here while the master may still place it is what makes a collision.
pub const PENDING_BOUND_MS: u64 = 10_000;

/// This node's role, as its views say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role<'a> {
    pub master: bool,
    /// The master's node id, once a role event named one (epoch > 0).
    pub master_node: Option<&'a str>,
    /// The highest epoch the views hold (0: no role event yet).
    pub epoch: u64,
}

/// One incoming link (the peer pushes its entries here), as the mirror
/// status holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming<'a> {
    pub node: &'a str,
    pub connected: bool,
    /// The role the peer announced in its hello.
    pub peer_role: Option<&'a str>,
}

/// The master whose placements this node can wait for: a slave with an
/// incoming link from the master (its placements arrive) and an outgoing
/// link up (its pending messages leave). The master is the node the
/// highest role event names; at epoch 0, the peer that announced itself
/// master. `None` on the master itself and when the master is out of reach.
pub fn reachable_master<'a>(role: Role<'_>, incoming: &[Incoming<'a>], outgoing_up: bool) -> Option<&'a str> {
    if role.master || !outgoing_up {
        return None;
    }
    incoming
        .iter()
        .find(|l| {
            l.connected
                && match role.master_node {
                    Some(m) => l.node == m,
                    None => l.peer_role == Some("master"),
                }
        })
        .map(|l| l.node)
}

/// How often the master sends `Alive` on each of its outgoing links, and
/// how often every node passes the newest one it holds on to its own.
pub const ALIVE_EVERY_MS: u64 = 500;

/// How recent the master's last sign of progress must be for a slave to
/// count it as reachable through another node, and how old the entries of
/// this node are that it must hold by then.
pub const ALIVE_WITHIN_MS: u64 = 2_000;

/// How far above the stamps it sent a master's kept ceiling runs
/// ([`Stamps`]): 60 s in the HLC form (ms shifted by 16 bits), so the
/// ceiling is written about once a minute.
pub const STAMP_LEASE: u64 = 60_000 << 16;

/// The stamps of this node's own signs of life. Each is above every stamp
/// the node sent before, in this process and in any earlier one whose data
/// dir it runs on, however its clock moved: no stamp is sent above a
/// ceiling kept beforehand (the caller writes it durably), and a node
/// resumes above the ceiling it kept. Without that, a master restarted
/// with its clock stepped back sends stamps lower than those its relays
/// hold, and nodes that hear it only through a relay count it as gone
/// until its clock passes the old stamps.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stamps {
    last: u64,
    ceiling: u64,
}

impl Stamps {
    /// Resume under the ceiling kept by an earlier process (0: none).
    pub fn resume(kept: u64) -> Stamps {
        Stamps { last: kept, ceiling: kept }
    }

    /// The stamp to send at `now` (HLC form). When it would pass the
    /// ceiling, a new one is kept first with `keep`; if that fails, no
    /// stamp is given and nothing changes.
    pub fn next<E>(&mut self, now: u64, keep: impl FnOnce(u64) -> Result<(), E>) -> Result<u64, E> {
        let stamp = now.max(self.last.saturating_add(1));
        if stamp > self.ceiling {
            let ceiling = stamp.saturating_add(STAMP_LEASE);
            keep(ceiling)?;
            self.ceiling = ceiling;
        }
        self.last = stamp;
        Ok(stamp)
    }
}

/// Masters whose signs of life a node keeps at most (the newest of each);
/// more are not taken (only nodes that proved the secret send them).
const MAX_HEARD: usize = 16;

/// The newest `Alive` heard of one master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub node: String,
    pub epoch: u64,
    /// The master's clock when it sent it (its HLC): only larger ones
    /// count as progress.
    pub stamp: u64,
    /// The master's version vector when it sent it.
    pub holds: Vector,
    /// When it arrived here (the caller's clock).
    pub at_ms: u64,
    /// The node whose link brought it here: when that link goes down the
    /// sign of life goes with it ([`Liveness::link_lost`]).
    pub via: String,
}

impl Heard {
    /// The frame that passes it on.
    pub fn frame(&self) -> Frame {
        Frame::Alive {
            node: self.node.clone(),
            epoch: self.epoch,
            stamp: self.stamp,
            holds: self.holds.clone(),
        }
    }
}

/// What a node knows of its masters' signs of life, and of its own writes
/// over the last [`ALIVE_WITHIN_MS`]: enough to say whether the master is
/// alive and receives this node's entries, through whichever node.
#[derive(Debug, Default, Clone)]
pub struct Liveness {
    heard: BTreeMap<String, Heard>,
    /// This node's own head as it grew: (when first seen, seq), oldest
    /// first; the newest one at least [`ALIVE_WITHIN_MS`] old is kept.
    written: VecDeque<(u64, u64)>,
}

impl Liveness {
    /// An `Alive` arrived at `now_ms`. It is kept if it is newer (a larger
    /// (epoch, stamp)) than what this node holds of that master, or if it
    /// differs from a held one that is more than [`ALIVE_WITHIN_MS`] old
    /// (no longer evidence: a master whose stamps went back, its data dir
    /// restored from an older copy, is heard again after that long rather
    /// than only once its clock passes the old stamps); returns whether it
    /// was kept, that is whether it is worth passing on. This node's own
    /// signs of life (a loop) are dropped. `via` is the node whose link
    /// brought it.
    pub fn heard(&mut self, own_node: &str, via: &str, alive: Frame, now_ms: u64) -> bool {
        let Frame::Alive { node, epoch, stamp, holds } = alive else {
            return false;
        };
        if node == own_node {
            return false;
        }
        match self.heard.get(&node) {
            Some(h)
                if (epoch, stamp) <= (h.epoch, h.stamp)
                    && ((epoch, stamp) == (h.epoch, h.stamp) || now_ms.saturating_sub(h.at_ms) <= ALIVE_WITHIN_MS) =>
            {
                return false
            }
            None if self.heard.len() >= MAX_HEARD => return false,
            _ => {}
        }
        self.heard.insert(
            node.clone(),
            Heard {
                node,
                epoch,
                stamp,
                holds,
                at_ms: now_ms,
                via: via.to_string(),
            },
        );
        true
    }

    /// A link to or from `peer` went down: the signs of life it brought
    /// are no longer evidence. Without this, a master that stops counts as
    /// reachable for [`ALIVE_WITHIN_MS`] after its direct link is seen
    /// down, and deliveries meanwhile wait for it instead of being shown
    /// at once. A master still alive through another node is heard again
    /// within [`ALIVE_EVERY_MS`] per hop.
    pub fn link_lost(&mut self, peer: &str) {
        self.heard.retain(|_, h| h.via != peer);
    }

    /// This node's own origin holds `own_head` at `now_ms`.
    pub fn wrote(&mut self, own_head: u64, now_ms: u64) {
        if self.written.back().is_none_or(|w| own_head > w.1) {
            self.written.push_back((now_ms, own_head));
        }
        let old = now_ms.saturating_sub(ALIVE_WITHIN_MS);
        while self.written.len() >= 2 && self.written[1].0 <= old {
            self.written.pop_front();
        }
    }

    /// What this node's own origin held [`ALIVE_WITHIN_MS`] before
    /// `now_ms`, as far as [`Liveness::wrote`] was told (0 before that).
    pub fn written_before(&self, now_ms: u64) -> u64 {
        let Some(old) = now_ms.checked_sub(ALIVE_WITHIN_MS) else {
            return 0;
        };
        self.written.iter().take_while(|w| w.0 <= old).last().map_or(0, |w| w.1)
    }

    /// The master of `role` as its relayed signs of life show it: one of
    /// the views' epoch (at epoch 0, any node that says it is master),
    /// whose stamp grew within the last [`ALIVE_WITHIN_MS`], and whose
    /// vector holds this node's own origin (`own_origin`) up to what it
    /// held [`ALIVE_WITHIN_MS`] ago. `None` on the master itself.
    pub fn relayed(&self, role: Role<'_>, own_origin: u64, now_ms: u64) -> Option<&str> {
        if role.master {
            return None;
        }
        let need = self.written_before(now_ms);
        self.heard
            .values()
            .find(|h| {
                h.epoch == role.epoch
                    && role.master_node.is_none_or(|m| m == h.node)
                    && now_ms.saturating_sub(h.at_ms) <= ALIVE_WITHIN_MS
                    && h.holds.get(own_origin) >= need
            })
            .map(|h| h.node.as_str())
    }

    /// The newest signs of life held, one per master.
    pub fn newest(&self) -> impl Iterator<Item = &Heard> {
        self.heard.values()
    }
}

/// Which `Alive` frames one outgoing link sends, every
/// [`ALIVE_EVERY_MS`]: the master's own, and the newest one held of each
/// master that this link has not sent yet. A sign of life thus crosses
/// each link once, and one that comes back round a loop is not newer
/// than what the node holds, so it goes no further.
#[derive(Debug, Default, Clone)]
pub struct Relay {
    /// Per master, the (epoch, stamp) this link last sent. Another one is
    /// sent when the node holds a different one (a newer one, or a lower
    /// one that replaced a stale one, see [`Liveness::heard`]).
    sent: BTreeMap<String, (u64, u64)>,
}

impl Relay {
    /// The frames of this round: `own` (this node's sign of life, when it
    /// is master) and what `liveness` holds newer than this link sent.
    /// Signs of life older than [`ALIVE_WITHIN_MS`] are not passed on: a
    /// master that went quiet stays quiet.
    pub fn round(&mut self, own: Option<Frame>, liveness: &Liveness, now_ms: u64) -> Vec<Frame> {
        let mut out: Vec<Frame> = own.into_iter().collect();
        for h in liveness.newest() {
            if now_ms.saturating_sub(h.at_ms) > ALIVE_WITHIN_MS {
                continue;
            }
            let last = self.sent.get(&h.node);
            if last.is_none_or(|l| (h.epoch, h.stamp) != *l) {
                self.sent.insert(h.node.clone(), (h.epoch, h.stamp));
                out.push(h.frame());
            }
        }
        out
    }
}

/// What to do with one of this node's own pending messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Keep waiting for the master; look again by this time (unix ms).
    Wait { until_ms: u64 },
    /// Place it here now, at this node's UIDNEXT.
    PlaceHere,
}

/// A pending message written at `since_ms` (its entry's HLC): wait while
/// the master is reachable and the bound has not passed; else place it.
/// A time ahead of `now_ms` (the clock stepped back) counts as now, so the
/// wait never exceeds the bound.
pub fn decide(since_ms: u64, now_ms: u64, master_reachable: bool, bound_ms: u64) -> Pending {
    let until_ms = since_ms.min(now_ms).saturating_add(bound_ms);
    if master_reachable && now_ms < until_ms {
        Pending::Wait { until_ms }
    } else {
        Pending::PlaceHere
    }
}

/// Whether a slave treats its master as reachable for its pending
/// messages: while the links are up, and for [`WAIT_BOUND_MS`] after this
/// node started (its links take a moment to come up, and the master may
/// have placed its pending messages while it was down: placing them here
/// at once would place them twice).
pub fn counts_as_reachable(link_up: bool, started_ms: u64, now_ms: u64) -> bool {
    link_up || now_ms < started_ms.saturating_add(WAIT_BOUND_MS)
}

/// Whether a new message is appended pending: on a slave whose master is
/// reachable. Everything else assigns its UID locally.
pub fn append_pending(role: Role<'_>, master_reachable: bool) -> bool {
    !role.master && master_reachable
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLAVE: Role<'static> = Role {
        master: false,
        master_node: None,
        epoch: 0,
    };

    fn link(node: &'static str, connected: bool, role: &'static str) -> Incoming<'static> {
        Incoming {
            node,
            connected,
            peer_role: Some(role),
        }
    }

    #[test]
    fn a_slave_reaches_the_master_only_with_both_directions_up() {
        let links = [link("a", true, "master")];
        assert_eq!(reachable_master(SLAVE, &links, true), Some("a"));
        assert_eq!(reachable_master(SLAVE, &links, false), None, "pending messages could not leave");
        assert_eq!(
            reachable_master(SLAVE, &[link("a", false, "master")], true),
            None,
            "placements could not arrive"
        );
        assert_eq!(
            reachable_master(SLAVE, &[link("c", true, "slave")], true),
            None,
            "a slave peer is no authority"
        );
        let master = Role {
            master: true,
            master_node: None,
            epoch: 0,
        };
        assert_eq!(reachable_master(master, &links, true), None, "the master assigns itself");
    }

    #[test]
    fn the_role_event_names_the_master_not_a_stale_hello() {
        // B was promoted (epoch 1) after A's link started: A's hello still
        // says master, but the views name B.
        let role = Role {
            master: false,
            master_node: Some("b"),
            epoch: 1,
        };
        let links = [link("a", true, "master"), link("b", true, "slave")];
        assert_eq!(reachable_master(role, &links, true), Some("b"));
        assert_eq!(reachable_master(role, &links[..1], true), None);
    }

    #[test]
    fn a_pending_message_waits_for_the_bound_or_until_the_link_drops() {
        assert_eq!(decide(1_000, 1_500, true, 2_000), Pending::Wait { until_ms: 3_000 });
        assert_eq!(decide(1_000, 3_000, true, 2_000), Pending::PlaceHere, "the bound passed");
        assert_eq!(decide(1_000, 1_001, false, 2_000), Pending::PlaceHere, "the master is out of reach");
        // A clock that stepped back never makes it wait longer than the bound.
        assert_eq!(decide(5_000, 4_000, true, 2_000), Pending::Wait { until_ms: 6_000 });
        assert_eq!(decide(u64::MAX, 0, true, 2_000), Pending::Wait { until_ms: 2_000 });
    }

    #[test]
    fn a_node_that_just_started_gives_its_links_time_to_come_up() {
        assert!(counts_as_reachable(false, 10_000, 11_000));
        assert!(!counts_as_reachable(false, 10_000, 12_000));
        assert!(counts_as_reachable(true, 10_000, 50_000));
    }

    #[test]
    fn only_a_slave_that_reaches_its_master_appends_pending() {
        assert!(append_pending(SLAVE, true));
        assert!(!append_pending(SLAVE, false));
        let master = Role {
            master: true,
            master_node: Some("a"),
            epoch: 1,
        };
        assert!(!append_pending(master, true));
    }

    fn alive(node: &str, epoch: u64, stamp: u64, holds: Vector) -> Frame {
        Frame::Alive {
            node: node.into(),
            epoch,
            stamp,
            holds,
        }
    }

    const B: Role<'static> = Role {
        master: false,
        master_node: Some("a"),
        epoch: 1,
    };

    /// Origin of the slave "b" in these tests.
    const OWN: u64 = 0xb;

    #[test]
    fn a_relayed_master_counts_while_its_stamp_grows() {
        let mut l = Liveness::default();
        l.wrote(0, 0);
        assert_eq!(l.relayed(B, OWN, 0), None, "nothing heard yet");
        assert!(l.heard("b", "r", alive("a", 1, 100, Vector::default()), 1_000));
        assert_eq!(l.relayed(B, OWN, 1_000), Some("a"));
        assert_eq!(l.relayed(B, OWN, 3_000), Some("a"), "2 s after the last progress");
        assert_eq!(l.relayed(B, OWN, 3_001), None, "no progress for more than 2 s");
        // The same stamp again (a loop, or a node that relays a stale
        // one) is no progress.
        assert!(!l.heard("b", "r", alive("a", 1, 100, Vector::default()), 2_900));
        assert_eq!(l.relayed(B, OWN, 3_001), None);
        assert!(!l.heard("b", "r", alive("a", 1, 90, Vector::default()), 2_950), "older");
        assert!(l.heard("b", "r", alive("a", 1, 101, Vector::default()), 3_100));
        assert_eq!(l.relayed(B, OWN, 3_100), Some("a"));
        // The master itself never waits for anyone.
        let master = Role {
            master: true,
            master_node: Some("a"),
            epoch: 1,
        };
        assert_eq!(l.relayed(master, OWN, 3_100), None);
        // Its own signs of life coming back round a loop are dropped.
        let mut a = Liveness::default();
        assert!(!a.heard("a", "r", alive("a", 1, 500, Vector::default()), 0));
        assert_eq!(a.newest().count(), 0);
    }

    #[test]
    fn stamps_rise_across_restarts_and_a_clock_that_steps_back() {
        let mut kept = 0;
        let mut s = Stamps::resume(kept);
        let keep = |k: &mut u64, c: u64| -> Result<(), ()> {
            *k = c;
            Ok(())
        };
        let first = s.next(1_000 << 16, |c| keep(&mut kept, c)).unwrap();
        assert_eq!(first, 1_000 << 16);
        assert_eq!(kept, first + STAMP_LEASE, "the ceiling is kept before the first stamp goes");
        let second = s.next(1_500 << 16, |_| Err(())).unwrap();
        assert_eq!(second, 1_500 << 16, "under the ceiling: nothing to keep");
        // The clock steps back within the process: still rising.
        assert_eq!(s.next(10 << 16, |_| Err(())).unwrap(), second + 1);
        // A restart with the clock ten minutes back resumes above the
        // ceiling, so above every stamp sent before.
        let mut r = Stamps::resume(kept);
        let after = r.next(0, |c| keep(&mut kept, c)).unwrap();
        assert!(after > second && after > first + STAMP_LEASE);
        assert_eq!(kept, after + STAMP_LEASE);
        // A ceiling that cannot be kept gives no stamp and changes nothing.
        let mut f = Stamps::resume(kept);
        let held = f;
        assert_eq!(f.next(0, |_| Err("disk")), Err("disk"));
        assert_eq!(f, held);
    }

    #[test]
    fn a_stale_sign_of_life_gives_way_to_a_lower_stamp() {
        let mut l = Liveness::default();
        l.wrote(0, 0);
        assert!(l.heard("c", "b", alive("a", 1, 900, Vector::default()), 1_000));
        // A lower stamp (the master's stamps went back) is refused while
        // the held one is evidence, and the same stamp always is.
        assert!(!l.heard("c", "b", alive("a", 1, 100, Vector::default()), 3_000));
        assert!(!l.heard("c", "b", alive("a", 1, 900, Vector::default()), 3_001));
        assert_eq!(l.relayed(B, OWN, 3_001), None);
        // Past that, it is taken, and relayed on a link that sent the
        // higher one before.
        let mut relay = Relay::default();
        assert_eq!(relay.round(None, &l, 2_000), vec![alive("a", 1, 900, Vector::default())]);
        assert!(l.heard("c", "b", alive("a", 1, 100, Vector::default()), 3_001));
        assert_eq!(l.relayed(B, OWN, 3_001), Some("a"));
        assert_eq!(relay.round(None, &l, 3_100), vec![alive("a", 1, 100, Vector::default())]);
        assert!(relay.round(None, &l, 3_600).is_empty(), "each stamp once");
        assert!(l.heard("c", "b", alive("a", 1, 101, Vector::default()), 3_500));
        assert_eq!(relay.round(None, &l, 3_600), vec![alive("a", 1, 101, Vector::default())]);
    }

    #[test]
    fn a_lost_link_takes_the_signs_of_life_it_brought_with_it() {
        let mut l = Liveness::default();
        l.wrote(0, 0);
        // Straight from the master, and one of another master through c.
        assert!(l.heard("b", "a", alive("a", 1, 100, Vector::default()), 1_000));
        assert!(l.heard("b", "c", alive("x", 1, 7, Vector::default()), 1_000));
        assert_eq!(l.relayed(B, OWN, 1_100), Some("a"));
        l.link_lost("c");
        assert_eq!(l.relayed(B, OWN, 1_100), Some("a"), "a link that did not bring it");
        assert_eq!(l.newest().count(), 1);
        // The master stops: its link is seen down well before 2 s pass.
        l.link_lost("a");
        assert_eq!(l.relayed(B, OWN, 1_100), None, "counted as reachable after its link went down");
        // Still alive through c: heard again, and counts again.
        assert!(l.heard("b", "c", alive("a", 1, 101, Vector::default()), 1_500));
        assert_eq!(l.relayed(B, OWN, 1_500), Some("a"));
    }

    #[test]
    fn only_the_master_of_the_views_epoch_counts() {
        let mut l = Liveness::default();
        l.wrote(0, 0);
        assert!(l.heard("b", "r", alive("c", 1, 100, Vector::default()), 0), "kept and relayed");
        assert_eq!(l.relayed(B, OWN, 10), None, "c is not the master the views name");
        assert!(l.heard("b", "r", alive("a", 0, 100, Vector::default()), 0));
        assert_eq!(l.relayed(B, OWN, 10), None, "a stale epoch");
        assert!(
            l.heard("b", "r", alive("a", 2, 50, Vector::default()), 0),
            "a higher epoch is newer"
        );
        assert_eq!(l.relayed(B, OWN, 10), None, "the views do not know epoch 2 yet");
        let later = Role { epoch: 2, ..B };
        assert_eq!(l.relayed(later, OWN, 10), Some("a"));
        // At epoch 0 any node that says it is master counts.
        let seed = Role {
            master: false,
            master_node: None,
            epoch: 0,
        };
        let mut l = Liveness::default();
        assert!(l.heard("b", "r", alive("x", 0, 7, Vector::default()), 0));
        assert_eq!(l.relayed(seed, OWN, 10), Some("x"));
    }

    #[test]
    fn a_relayed_master_counts_only_once_it_holds_what_this_node_wrote_2_s_before() {
        let mut l = Liveness::default();
        l.wrote(10, 0);
        l.wrote(12, 500);
        l.wrote(12, 900);
        l.wrote(15, 1_000);
        assert_eq!(l.written_before(1_999), 0, "nothing was written 2 s before");
        assert_eq!(l.written_before(2_000), 10);
        assert_eq!(l.written_before(2_999), 12);
        assert_eq!(l.written_before(3_000), 15);
        let holds = |seq| Vector::from([(OWN, seq), (0xa, 40)]);
        assert!(l.heard("b", "r", alive("a", 1, 1, holds(12)), 2_800));
        assert_eq!(l.relayed(B, OWN, 2_800), Some("a"), "holds seq 12, written by 800 ms");
        assert_eq!(l.relayed(B, OWN, 3_000), None, "seq 15 was written 2 s ago and has not reached it");
        assert!(l.heard("b", "r", alive("a", 1, 2, holds(15)), 3_100));
        assert_eq!(l.relayed(B, OWN, 3_100), Some("a"));
        // Old samples go, the baseline stays.
        l.wrote(15, 10_000);
        assert_eq!(l.written_before(10_000), 15);
        assert!(l.written.len() <= 2, "{:?}", l.written);
    }

    #[test]
    fn each_link_passes_each_sign_of_life_on_once() {
        let mut l = Liveness::default();
        let mut link = Relay::default();
        let own = || Some(alive("b", 0, 1, Vector::default()));
        assert_eq!(link.round(None, &l, 0), vec![]);
        assert_eq!(
            link.round(own(), &l, 0),
            own().into_iter().collect::<Vec<_>>(),
            "the master's own goes every round"
        );
        assert!(l.heard("b", "r", alive("a", 1, 100, Vector::from([(1, 2)])), 0));
        assert_eq!(link.round(None, &l, 500), vec![alive("a", 1, 100, Vector::from([(1, 2)]))]);
        assert_eq!(link.round(None, &l, 1_000), vec![], "already sent on this link");
        let mut other = Relay::default();
        assert_eq!(other.round(None, &l, 1_000).len(), 1, "each link sends it once");
        assert!(l.heard("b", "r", alive("a", 1, 101, Vector::default()), 1_200));
        assert_eq!(link.round(None, &l, 1_500).len(), 1, "a newer one goes");
        // A sign of life older than the window is not passed on.
        assert!(l.heard("b", "r", alive("c", 0, 5, Vector::default()), 1_500));
        let mut late = Relay::default();
        assert_eq!(late.round(None, &l, 4_000), vec![]);
    }

    #[test]
    fn a_loop_of_three_relays_dies_out() {
        // a (master) -> b -> c -> b -> ...: b and c relay every round; a
        // stamp crosses each link once, and nothing circulates once a
        // stops.
        let (mut lb, mut lc) = (Liveness::default(), Liveness::default());
        let (mut b_to_c, mut c_to_b) = (Relay::default(), Relay::default());
        let mut frames = 0;
        for round in 0..10u64 {
            let now = round * ALIVE_EVERY_MS;
            if round < 3 {
                lb.heard("b", "a", alive("a", 1, round + 1, Vector::default()), now);
            }
            for f in b_to_c.round(None, &lb, now) {
                frames += 1;
                lc.heard("c", "b", f, now);
            }
            for f in c_to_b.round(None, &lc, now) {
                frames += 1;
                lb.heard("b", "c", f, now);
            }
        }
        assert_eq!(frames, 6, "three stamps, each over each of two links once");
    }
}
