//! The master's conflict resolution, with ordinary log events.
//!
//! Two kinds of conflict arise when nodes write while they cannot reach
//! each other, and every node marks them in its views as it applies the
//! entries (`views::apply`):
//!
//! - **UID collisions** (`Y` keys): one UID of a mailbox given to two
//!   messages, or to a message below UIDNEXT. The message that could not be
//!   shown is kept aside (`X`). The master moves *every* message under that
//!   UID — shown or kept aside — to fresh UIDs above UIDNEXT
//!   ([`Event::MessagesMoved`], same mailbox): clients see EXPUNGE then
//!   EXISTS, UIDVALIDITY stays, and no UID ever names a second message.
//!   Messages kept aside for a mailbox that no longer exists go into the
//!   mailbox it was merged into, or INBOX.
//! - **Name conflicts** (`L` keys): two mailboxes created under one name.
//!   The one with the higher UIDVALIDITY holds the name on every node; the
//!   master moves the other's messages into it and deletes it (both go into
//!   a fresh mailbox when their UIDVALIDITYs are equal).
//!
//! A slave only marks; the resolution reaches it as entries. The resolver
//! runs after every commit that may have brought a conflict (remote batches
//! included) and once at start, in its own transaction through the writer.

use crate::config::{MirrorConfig, Role};
use crate::event::{Event, Id};
use crate::mutate::{emit, Cfs, MutationError};
use crate::store::{Store, StoreError};
use crate::views::{MailboxRec, TxnViews, ViewRead};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use wal::Txn;

/// What one pass emitted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Pending messages given their UID (not a conflict: the master as UID
    /// authority, `replication.md` section 8b).
    pub placed: u64,
    /// UID collisions settled (one per mailbox and UID).
    pub collisions: u64,
    /// Messages given a new UID (or mailbox).
    pub moved: u64,
    /// Mailboxes merged into the one holding their name.
    pub merged: u64,
    /// Collision marks this node (not master) reported to the master.
    pub reported: u64,
}

impl Resolved {
    pub fn is_empty(&self) -> bool {
        *self == Resolved::default()
    }
}

/// Longest chain of merged mailboxes followed to find a live one.
const MAX_MERGE_CHAIN: usize = 64;

/// Emit the resolution of every pending conflict in this transaction, if
/// the views, read in this same transaction, name this node (`node_id`;
/// `seed` is its configured `mirror.mode`) master under the highest epoch
/// they hold; else emit nothing. Every resolution carries that epoch
/// ([`Event::moved`], [`Event::placed`]), so a resolution of a later
/// master beats it on every node (`replication.md` section 8a).
pub fn resolve(txn: &mut Txn<'_>, cfs: Cfs, node_id: &str, seed: Role) -> Result<Resolved, MutationError> {
    let mut done = Resolved::default();
    let role = crate::repl::role::current(&views(txn, cfs), node_id, seed)?;
    if !role.master {
        if role.epoch > 0 {
            report_marks(txn, cfs, &mut done)?;
        }
        return Ok(done);
    }
    place_pendings(txn, cfs, &mut done)?;
    merge_losers(txn, cfs, role.epoch, &mut done)?;
    renumber(txn, cfs, role.epoch, &mut done)?;
    Ok(done)
}

fn views<'t, 'a>(txn: &'t mut Txn<'a>, cfs: Cfs) -> TxnViews<'t, 'a> {
    TxnViews { txn, cf: cfs.views }
}

/// New UIDs `first..` for `n` messages, if the mailbox has that many left.
fn fresh_uids(mb: &MailboxRec, n: usize) -> Option<u32> {
    let n = u32::try_from(n).ok()?;
    let last = mb.uidnext.checked_add(n)?;
    (last < u32::MAX).then_some(mb.uidnext)
}

/// Every message of `mailbox`, shown and kept aside: (uid, guid).
fn all_messages(v: &TxnViews<'_, '_>, mailbox: Id) -> Result<Vec<(u32, Id)>, MutationError> {
    let mut msgs: Vec<(u32, Id)> = v.messages(mailbox)?.into_iter().map(|(u, m)| (u, m.guid)).collect();
    msgs.extend(v.conflicts_in(mailbox)?);
    Ok(msgs)
}

/// Where a merge goes: the mailbox, its first fresh UID.
struct MergeTarget<'a> {
    to: &'a MailboxRec,
    first: u32,
}

/// Move every message of `from` into `into.to` (fresh UIDs from
/// `into.first`) and delete `from`, under `epoch`. Returns the next free
/// UID, or `None` if the target has not enough UIDs left (nothing is
/// emitted then).
fn merge_into(
    txn: &mut Txn<'_>,
    cfs: Cfs,
    epoch: u64,
    user: &str,
    from: &MailboxRec,
    into: MergeTarget<'_>,
    done: &mut Resolved,
) -> Result<Option<u32>, MutationError> {
    let MergeTarget { to, first } = into;
    let v = views(txn, cfs);
    let msgs = all_messages(&v, from.id)?;
    let resolves: Vec<u32> = v.collisions()?.into_iter().filter(|c| c.0 == from.id).map(|c| c.1).collect();
    let n = u32::try_from(msgs.len()).ok();
    let Some(next) = n.and_then(|n| first.checked_add(n)).filter(|n| *n < u32::MAX) else {
        tracing::warn!(user, mailbox = %to.name, "cannot merge a mailbox: the target has used its UIDs");
        return Ok(None);
    };
    let moves: Vec<(u32, Id, u32)> = msgs.iter().zip(first..).map(|((u, g), n)| (*u, *g, n)).collect();
    tracing::info!(user, mailbox = %from.name, from = ?from.id, into = ?to.id, messages = moves.len(), "merging a mailbox created twice");
    done.moved += moves.len() as u64;
    done.merged += 1;
    emit(txn, cfs, Event::moved(epoch, user.into(), from.id, to.id, resolves, moves))?;
    emit(
        txn,
        cfs,
        Event::MailboxRemoved {
            user: user.into(),
            mailbox: from.id,
        },
    )?;
    Ok(Some(next))
}

/// The id of the mailbox that mailboxes created as (name, uidvalidity)
/// more than once are merged into: the same on every node that resolves
/// them, however many of the twins it holds.
fn twins_id(user: &str, name: &str, uidvalidity: u32) -> Id {
    let mut h = blake3::Hasher::new_derive_key("tandem merged twins v1");
    h.update(&(user.len() as u64).to_be_bytes());
    h.update(user.as_bytes());
    h.update(&(name.len() as u64).to_be_bytes());
    h.update(name.as_bytes());
    h.update(&uidvalidity.to_be_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Id(id)
}

/// Mailboxes that lost their name to another: their messages (shown and
/// kept aside) move into the one holding the name, and they are deleted.
/// A mailbox not bound because another was created under the same name
/// and UIDVALIDITY (`views::apply`, `rebind`; clients of some node may
/// have seen either under that pair) goes with the mailbox holding the
/// name, if any, into a fresh mailbox of that name with a higher
/// UIDVALIDITY, which takes the name everywhere.
fn merge_losers(txn: &mut Txn<'_>, cfs: Cfs, epoch: u64, done: &mut Resolved) -> Result<(), MutationError> {
    for (user, loser) in views(txn, cfs).losers()? {
        let v = views(txn, cfs);
        let Some(l) = v.mailbox(&user, loser)? else { continue };
        let w = v.mailbox_by_name(&user, &l.name)?;
        if w.as_ref().is_some_and(|w| w.id == l.id) {
            continue;
        }
        if let Some(w) = w.as_ref().filter(|w| l.uidvalidity < w.uidvalidity) {
            let into = MergeTarget { to: w, first: w.uidnext };
            merge_into(txn, cfs, epoch, &user, &l, into, done)?;
            continue;
        }
        // Derived from the name and UIDVALIDITY, so two nodes that both
        // act as master create the same mailbox instead of a new pair of
        // twins, and every twin of the pair goes into it.
        let top = w.as_ref().map_or(l.uidvalidity, |w| w.uidvalidity.max(l.uidvalidity));
        let fresh = twins_id(&user, &l.name, top);
        if v.mailbox(&user, fresh)?.is_none() {
            let uidvalidity = top.saturating_add(1);
            tracing::info!(user, mailbox = %l.name, uidvalidity, "one name and UIDVALIDITY given to two mailboxes: merging them into a fresh one");
            emit(
                txn,
                cfs,
                Event::MailboxCreated {
                    user: user.clone(),
                    mailbox: fresh,
                    name: l.name.clone(),
                    uidvalidity,
                    special_use: l.special_use,
                },
            )?;
        }
        let Some(f) = views(txn, cfs).mailbox(&user, fresh)? else {
            continue;
        };
        let first = f.uidnext;
        let Some(next) = merge_into(txn, cfs, epoch, &user, &l, MergeTarget { to: &f, first }, done)? else {
            continue;
        };
        if let Some(w) = w.filter(|w| w.id != f.id) {
            let f = views(txn, cfs).mailbox(&user, fresh)?.unwrap_or(f);
            merge_into(txn, cfs, epoch, &user, &w, MergeTarget { to: &f, first: next }, done)?;
        }
    }
    Ok(())
}

/// Where messages kept aside for `mailbox` go: the mailbox itself while it
/// exists, else the mailbox it was merged into, else INBOX.
fn target(v: &TxnViews<'_, '_>, user: &str, mailbox: Id) -> Result<Option<MailboxRec>, MutationError> {
    let mut id = mailbox;
    for _ in 0..MAX_MERGE_CHAIN {
        if let Some(mb) = v.mailbox(user, id)? {
            return Ok(Some(mb));
        }
        match v.merged_into(id)? {
            Some(next) => id = next,
            None => break,
        }
    }
    Ok(v.mailbox_by_name(user, "INBOX")?)
}

/// Every pending message of a live mailbox gets its UID: one
/// `MessagePlaced` each, at UIDNEXT (or where the mailbox shows its GUID
/// already). Pending messages of a deleted mailbox are kept aside with a
/// mark and go with the renumbering below.
fn place_pendings(txn: &mut Txn<'_>, cfs: Cfs, done: &mut Resolved) -> Result<(), MutationError> {
    let pendings = views(txn, cfs).pendings()?;
    for (mailbox, guid, rec) in pendings {
        match crate::mutate::place_pending(txn, cfs, &rec.user, mailbox, guid) {
            Ok(Some(_)) => done.placed += 1,
            Ok(None) => {}
            // Refused before anything was written: the others still go.
            Err(MutationError::NotAllowed(why)) => {
                tracing::warn!(user = rec.user, mailbox = ?mailbox, why, "cannot place a pending message");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Every marked UID: all its messages to fresh UIDs.
fn renumber(txn: &mut Txn<'_>, cfs: Cfs, epoch: u64, done: &mut Resolved) -> Result<(), MutationError> {
    let mut by_mailbox: BTreeMap<(String, Id), Vec<u32>> = BTreeMap::new();
    for (mb, uid, rec) in views(txn, cfs).collisions()? {
        by_mailbox.entry((rec.user, mb)).or_default().push(uid);
    }
    for ((user, from), uids) in by_mailbox {
        let v = views(txn, cfs);
        if v.user(&user)?.is_none() {
            continue;
        }
        if let Some(mb) = v.mailbox(&user, from)? {
            if v.mailbox_id(&user, &mb.name)? != Some(from) {
                // Hidden by a name conflict: its merge moves everything.
                continue;
            }
        }
        let Some(to) = target(&v, &user, from)? else {
            tracing::warn!(user, mailbox = ?from, "messages kept aside have no mailbox to go to (no INBOX)");
            continue;
        };
        let mut msgs: Vec<(u32, Id)> = Vec::new();
        for uid in &uids {
            let mut here: Vec<Id> = v.conflicts_at(from, *uid)?.into_iter().map(|(g, _)| g).collect();
            if let Some(m) = v.message(from, *uid)? {
                here.push(m.guid);
            }
            here.sort();
            msgs.extend(here.into_iter().map(|g| (*uid, g)));
        }
        let Some(first) = fresh_uids(&to, msgs.len()) else {
            tracing::warn!(user, mailbox = %to.name, "cannot renumber: the mailbox has used its UIDs");
            continue;
        };
        let moves: Vec<(u32, Id, u32)> = msgs.iter().zip(first..).map(|((u, g), n)| (*u, *g, n)).collect();
        // The UIDs by count and range: one round can hold thousands
        // (`tandem conflicts` lists each).
        tracing::info!(
            user,
            mailbox = %to.name,
            uids = uids.len(),
            lowest = ?uids.iter().min(),
            highest = ?uids.iter().max(),
            messages = moves.len(),
            "renumbering colliding UIDs"
        );
        done.collisions += uids.len() as u64;
        done.moved += moves.len() as u64;
        emit(txn, cfs, Event::moved(epoch, user, from, to.id, uids, moves))?;
    }
    Ok(())
}

/// Most UIDs one report names.
const MAX_REPORT: usize = 1024;

/// A node that is not master reports every collision mark it holds and has
/// not reported ([`Event::ConflictsReported`], one per mailbox and at most
/// [`MAX_REPORT`] UIDs): the master renumbers what it marks from it. This
/// reaches the master with a mark only a slave holds: a message a
/// resolution put under a UID below this node's UIDNEXT, kept aside here
/// while the master shows it, because competing resolutions (of a stale
/// master and a promoted one) reached the nodes in different orders
/// (`replication.md` section 8a). Only above epoch 0: a mirror that was
/// never promoted has one resolver, and writes no event older builds
/// cannot read (`format.md` section 16).
fn report_marks(txn: &mut Txn<'_>, cfs: Cfs, done: &mut Resolved) -> Result<(), MutationError> {
    let v = views(txn, cfs);
    let mut by_mailbox: BTreeMap<(String, Id), Vec<u32>> = BTreeMap::new();
    for (mb, uid, rec) in v.collisions()? {
        // UID 0 holds pending messages of a deleted mailbox: the master
        // marks those itself when it applies the deletion.
        if uid != 0 && v.vget(&crate::views::keys::reported(mb, uid))?.is_none() {
            by_mailbox.entry((rec.user, mb)).or_default().push(uid);
        }
    }
    for ((user, mailbox), uids) in by_mailbox {
        for part in uids.chunks(MAX_REPORT) {
            done.reported += part.len() as u64;
            tracing::info!(user, mailbox = ?mailbox, uids = part.len(), "reporting collision marks to the master");
            emit(
                txn,
                cfs,
                Event::ConflictsReported {
                    user: user.clone(),
                    mailbox,
                    uids: part.to_vec(),
                },
            )?;
        }
    }
    Ok(())
}

/// Whether this node holds a collision mark it has not reported (cheap
/// while there are none: one prefix seek).
pub fn unreported(v: &impl ViewRead) -> Result<bool, crate::views::ViewError> {
    use crate::views::keys;
    for (k, _) in v.vscan(&keys::collisions_prefix())? {
        if let Some((mb, uid)) = keys::collision_of(&k) {
            if uid != 0 && v.vget(&keys::reported(mb, uid))?.is_none() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether anything waits for the master (cheap: two prefix seeks).
pub fn pending(v: &impl ViewRead) -> Result<bool, crate::views::ViewError> {
    Ok(!v.vscan(&crate::views::keys::collisions_prefix())?.is_empty()
        || !v.vscan(&crate::views::keys::losers_prefix())?.is_empty()
        || !v.vscan(&crate::views::keys::pendings_prefix())?.is_empty())
}

/// One pass through the writer, if anything is pending: on the master its
/// resolutions, on another node its report of unreported marks; `seed` is
/// the node's configured `mirror.mode` (see [`resolve`]).
pub fn run_once(store: &Store, seed: Role) -> Result<Resolved, StoreError> {
    let node_id = store.node_id().to_string();
    let v = store.views();
    let role = crate::repl::role::current(&v, &node_id, seed).map_err(MutationError::from)?;
    let due = match (role.master, role.epoch) {
        (true, _) => pending(&v),
        (false, 0) => Ok(false),
        (false, _) => unreported(&v),
    };
    if !due.map_err(MutationError::from)? {
        return Ok(Resolved::default());
    }
    store.run_blocking(move |t, c| resolve(t, c, &node_id, seed))
}

/// The resolver job: a pass at start and after every commit, until
/// shutdown: the master resolves, another node reports its marks. Errors
/// are logged and retried.
pub async fn run(store: Store, cfg: MirrorConfig, mut shutdown: watch::Receiver<bool>) {
    let mut commits = store.commits();
    let mut backoff = Duration::from_millis(100);
    loop {
        {
            let (st, seed) = (store.clone(), cfg.mode);
            match tokio::task::spawn_blocking(move || run_once(&st, seed)).await {
                Ok(Ok(r)) => {
                    backoff = Duration::from_millis(100);
                    if r.collisions + r.moved + r.merged > 0 {
                        tracing::info!(collisions = r.collisions, moved = r.moved, merged = r.merged, "conflicts resolved");
                    }
                    if r.placed > 0 {
                        tracing::debug!(placed = r.placed, "pending messages placed");
                    }
                    if r.reported > 0 {
                        tracing::info!(reported = r.reported, "collision marks reported to the master");
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "conflict resolution failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "conflict resolution panicked");
                    return;
                }
            }
        }
        tokio::select! {
            r = commits.changed() => if r.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Conflict counts for `tandem status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Messages kept aside (not shown under their UID), pending ones
    /// included.
    pub kept_aside: u64,
    /// Messages appended pending that await the master's placement.
    #[serde(default)]
    pub awaiting_master: u64,
    /// UIDs given to two messages, waiting for the master.
    pub uid_collisions: u64,
    /// Of those, the ones a node that is not master reported to it
    /// (`ConflictsReported`).
    #[serde(default)]
    pub reported: u64,
    /// Mailboxes hidden by a name conflict, waiting for the master.
    pub name_conflicts: u64,
    /// Messages the master moved (renumbered or merged), as applied here.
    pub resolved: u64,
}

/// Count what is pending and what was resolved.
pub fn counts(v: &impl ViewRead) -> Result<Counts, crate::views::ViewError> {
    use crate::views::keys;
    Ok(Counts {
        kept_aside: v.vscan(&keys::conflicts_prefix())?.len() as u64,
        awaiting_master: v.vscan(&keys::pendings_prefix())?.len() as u64,
        uid_collisions: v.vscan(&keys::collisions_prefix())?.len() as u64,
        reported: v.vscan(&keys::reported_prefix())?.len() as u64,
        name_conflicts: v.vscan(&keys::losers_prefix())?.len() as u64,
        resolved: v.vscan(&keys::resolutions_prefix())?.len() as u64,
    })
}

/// One message under a collided UID.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CollidedMessage {
    pub guid: String,
    /// Shown under the UID here (else kept aside).
    pub shown: bool,
    /// The entry that put it aside here (`origin:seq`), if it is aside.
    pub cause: Option<String>,
}

/// A UID waiting for the master.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingCollision {
    pub user: String,
    /// The mailbox's name, or `None` when it was deleted.
    pub mailbox: Option<String>,
    pub mailbox_id: String,
    pub uid: u32,
    pub messages: Vec<CollidedMessage>,
}

/// A mailbox hidden because another of the same name holds the name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NameConflict {
    pub user: String,
    pub name: String,
    pub mailbox_id: String,
    pub winner_id: Option<String>,
    pub messages: u64,
}

/// One message the master moved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResolvedMove {
    pub user: String,
    pub from: Option<String>,
    pub from_id: String,
    pub old_uid: u32,
    pub to: Option<String>,
    pub to_id: String,
    pub new_uid: u32,
    pub guid: String,
    /// The entry that had put it aside here, if it was kept aside here.
    pub cause: Option<String>,
    /// The master's entry that moved it.
    pub resolved_by: String,
}

/// What `tandem conflicts` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub pending: Vec<PendingCollision>,
    pub name_conflicts: Vec<NameConflict>,
    pub resolved: Vec<ResolvedMove>,
}

fn entry_name((origin, seq): (u64, u64)) -> String {
    format!("{origin:016x}:{seq}")
}

/// Every pending conflict and every resolution this node applied.
pub fn report(v: &impl ViewRead) -> Result<Report, crate::views::ViewError> {
    let name = |user: &str, id: Id| -> Result<Option<String>, crate::views::ViewError> { Ok(v.mailbox(user, id)?.map(|m| m.name)) };
    let mut out = Report::default();
    for (mb, uid, rec) in v.collisions()? {
        let mut messages = Vec::new();
        if let Some(m) = v.message(mb, uid)? {
            messages.push(CollidedMessage {
                guid: m.guid.to_hex(),
                shown: true,
                cause: None,
            });
        }
        for (guid, _) in v.conflicts_at(mb, uid)? {
            messages.push(CollidedMessage {
                guid: guid.to_hex(),
                shown: false,
                cause: rec.causes.iter().find(|c| c.0 == guid).map(|c| entry_name((c.1, c.2))),
            });
        }
        out.pending.push(PendingCollision {
            mailbox: name(&rec.user, mb)?,
            user: rec.user,
            mailbox_id: mb.to_hex(),
            uid,
            messages,
        });
    }
    for (user, id) in v.losers()? {
        let Some(mb) = v.mailbox(&user, id)? else { continue };
        out.name_conflicts.push(NameConflict {
            winner_id: v.mailbox_id(&user, &mb.name)?.map(|w| w.to_hex()),
            messages: v.messages(id)?.len() as u64,
            name: mb.name,
            mailbox_id: id.to_hex(),
            user,
        });
    }
    for r in v.resolutions()? {
        out.resolved.push(ResolvedMove {
            from: name(&r.user, r.from)?,
            to: name(&r.user, r.to)?,
            user: r.user,
            from_id: r.from.to_hex(),
            old_uid: r.old_uid,
            to_id: r.to.to_hex(),
            new_uid: r.new_uid,
            guid: r.guid.to_hex(),
            cause: r.cause.map(entry_name),
            resolved_by: entry_name(r.by),
        });
    }
    Ok(out)
}
