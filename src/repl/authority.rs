//! The master as UID authority while the link is up: the driver of
//! [`super::engine::authority`]. It reads the links (the mirror status) and
//! the views, and carries out what the pure decisions say: whether a new
//! message is appended pending, how long an IMAP command waits for the
//! master's placement, and when a slave places its own pending messages.
//! The master places pending messages in its resolver pass
//! (`resolve::resolve`).

use super::engine::authority::{self as decide, Incoming, Pending, Role};
use super::{mono_ms, now_ms, Mirror};
use crate::event::Id;
use crate::mutate::{self, Placed};
use crate::store::{Store, StoreError};
use crate::views::ViewRead;
use std::time::Duration;
use tokio::sync::watch;

/// Tell the liveness state what this node's own origin holds now (the
/// entries the master must have received for a slave to wait through a
/// relay, `engine::authority::Liveness`).
pub fn note_written(mirror: &Mirror, store: &Store) {
    let wal = store.wal();
    let head = wal.heads().get(wal.local_origin());
    mirror.liveness.lock().expect("mirror lock").wrote(head, mono_ms());
}

/// The master this node can wait for now, if it is a slave that reaches it:
/// over direct links both ways, or else through other nodes, as the
/// master's relayed signs of life show (`Alive`, `replication.md` section
/// 8b).
pub fn reachable_master(mirror: &Mirror, store: &Store) -> Option<String> {
    let seed = *mirror.seed.lock().expect("mirror lock");
    let role = match super::role::current(&store.views(), store.node_id(), seed) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the role; assigning UIDs locally");
            return None;
        }
    };
    let outgoing_up = mirror.out.lock().expect("mirror lock").iter().any(|l| l.state == "connected");
    // Read under the lock, without copying the links' counters and
    // histograms: this runs for every delivery on a slave.
    let incoming = mirror.incoming.lock().expect("mirror lock");
    let links: Vec<Incoming<'_>> = incoming
        .iter()
        .map(|(node, l)| Incoming {
            node,
            connected: l.connected,
            peer_role: l.peer_role.as_deref(),
        })
        .collect();
    let role = Role {
        master: role.master,
        master_node: role.master_node.as_deref(),
        epoch: role.epoch,
    };
    if let Some(m) = decide::reachable_master(role, &links, outgoing_up) {
        return Some(m.to_string());
    }
    drop(links);
    drop(incoming);
    if role.master {
        return None;
    }
    let wal = store.wal();
    let (own, now) = (wal.local_origin(), mono_ms());
    let head = wal.heads().get(own);
    let mut liveness = mirror.liveness.lock().expect("mirror lock");
    liveness.wrote(head, now);
    liveness.relayed(role, own.0, now).map(str::to_string)
}

/// Whether a new message is appended pending on this node now.
pub fn append_pending(mirror: &Mirror, store: &Store) -> bool {
    // `reachable_master` is `None` on the master itself.
    let reachable = reachable_master(mirror, store).is_some();
    decide::append_pending(
        Role {
            master: false,
            master_node: None,
            epoch: 0,
        },
        reachable,
    )
}

/// The place of a message appended pending: the master's placement once it
/// arrives; if it does not within [`decide::WAIT_BOUND_MS`], or the master
/// goes out of reach, this node places it itself. `None` when the message
/// is neither pending nor placed (its mailbox was deleted meanwhile).
pub async fn await_placement(mirror: &Mirror, store: &Store, user: &str, mailbox: Id, guid: Id) -> Result<Option<Placed>, StoreError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(decide::WAIT_BOUND_MS);
    let mut commits = store.commits();
    loop {
        let views = store.views();
        if let Some((at, uid)) = views.placed(mailbox, guid).map_err(mutate::MutationError::from)? {
            let uidvalidity = views
                .mailbox(user, at)
                .map_err(mutate::MutationError::from)?
                .map_or(0, |m| m.uidvalidity);
            return Ok(Some(Placed {
                mailbox: at,
                uidvalidity,
                uid,
                guid,
            }));
        }
        if reachable_master(mirror, store).is_none() {
            break;
        }
        // Links are polled: a commit wakes the wait at once, a link that
        // drops within 50 ms.
        tokio::select! {
            r = commits.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    tracing::info!(user, mailbox = ?mailbox, guid = ?guid, "no placement from the master in time: placing here");
    let u = user.to_string();
    store.run(move |t, c| mutate::place_pending(t, c, &u, mailbox, guid)).await
}

/// One pass of a slave over its own pending messages: those whose master
/// is out of reach, or that waited past [`decide::PENDING_BOUND_MS`], are
/// placed here. Returns how many, and the earliest time to look again.
pub fn sweep(mirror: &Mirror, store: &Store, started_ms: u64) -> Result<(usize, Option<u64>), StoreError> {
    let own = store.wal().local_origin().0;
    let pendings = store.views().pendings().map_err(mutate::MutationError::from)?;
    let mine: Vec<_> = pendings.into_iter().filter(|(_, _, r)| r.since.1 == own).collect();
    if mine.is_empty() {
        return Ok((0, None));
    }
    let seed = *mirror.seed.lock().expect("mirror lock");
    if super::role::is_master(&store.views(), store.node_id(), seed).map_err(mutate::MutationError::from)? {
        // The master's resolver places them.
        return Ok((0, None));
    }
    let now = now_ms();
    let reachable = decide::counts_as_reachable(reachable_master(mirror, store).is_some(), started_ms, now);
    let mut due = Vec::new();
    let mut next: Option<u64> = None;
    for (mailbox, guid, rec) in mine {
        match decide::decide(rec.since.0 >> 16, now, reachable, decide::PENDING_BOUND_MS) {
            Pending::PlaceHere => due.push((rec.user, mailbox, guid)),
            Pending::Wait { until_ms } => next = Some(next.map_or(until_ms, |n| n.min(until_ms))),
        }
    }
    let n = due.len();
    if n > 0 {
        tracing::info!(
            messages = n,
            reachable,
            "placing pending messages here: the master did not place them"
        );
        store.run_blocking(move |t, c| {
            for (user, mailbox, guid) in &due {
                match mutate::place_pending(t, c, user, *mailbox, *guid) {
                    Ok(_) => {}
                    // Refused before anything was written: the others still go.
                    Err(mutate::MutationError::NotAllowed(why)) => {
                        tracing::warn!(user, mailbox = ?mailbox, why, "cannot place a pending message");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?;
    }
    Ok((n, next))
}

/// The slave's job: sweep its pending messages at start, after commits and
/// on a short tick (links drop without a commit), until shutdown.
pub async fn run(store: Store, mirror: std::sync::Arc<Mirror>, mut shutdown: watch::Receiver<bool>) {
    let mut commits = store.commits();
    let started = now_ms();
    loop {
        let (st, m) = (store.clone(), mirror.clone());
        match tokio::task::spawn_blocking(move || {
            note_written(&m, &st);
            sweep(&m, &st, started)
        })
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "placing pending messages failed; retrying"),
            Err(e) => {
                tracing::error!(error = %e, "placing pending messages panicked");
                return;
            }
        }
        tokio::select! {
            r = commits.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
