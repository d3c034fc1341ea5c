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
        };
        assert!(!append_pending(master, true));
    }
}
