//! The one function that changes the views: apply an event at its place in
//! this node's apply order. It is total and deterministic: given the same
//! events in the same order it writes the same bytes, whether live or in
//! replay. It never reads the clock or a random source.

use super::read::{TxnViews, ViewError, ViewRead, ViewWrite};
use super::{enc, enc_moved, keys, CollisionRec, MailboxRec, MessageRec, PendingRec, Rank, ResolutionRec, UserRec};
use crate::event::{BlobHash, Event, Id, Moves, Placement};
use wal::Appended;

fn bump_refcount(v: &mut impl ViewWrite, blob: &BlobHash, delta: i64) -> Result<(), ViewError> {
    let n = v.refcount(blob)? as i64 + delta;
    let k = keys::refcount(blob);
    if n <= 0 {
        // A zero count stays visible to the collector: the blob may still be
        // needed to replay the log, so collection is a separate job.
        v.put(&k, &0u64.to_be_bytes());
    } else {
        v.put(&k, &(n as u64).to_be_bytes());
    }
    Ok(())
}

fn bump_content(v: &mut impl ViewWrite, mailbox: Id, blob: &BlobHash, delta: i64) -> Result<(), ViewError> {
    let n = v.content_count(mailbox, blob)? as i64 + delta;
    let k = keys::content(mailbox, blob);
    if n <= 0 {
        v.delete(&k);
    } else {
        v.put(&k, &(n as u32).to_be_bytes());
    }
    Ok(())
}

/// Remove one message and its references; an expunge at `modseq` is left
/// in the change index (a dropped mailbox leaves none).
fn remove_message(v: &mut impl ViewWrite, mailbox: Id, uid: u32, m: &MessageRec, modseq: Option<u64>) -> Result<(), ViewError> {
    bump_refcount(v, &m.blob, -1)?;
    bump_content(v, mailbox, &m.blob, -1)?;
    v.delete(&keys::message(mailbox, uid));
    if v.uid_of_guid(mailbox, m.guid)? == Some(uid) {
        v.delete(&keys::guid(mailbox, m.guid));
    }
    v.delete(&keys::change(mailbox, m.modseq, uid));
    if let Some(modseq) = modseq {
        v.put(&keys::change(mailbox, modseq, uid), &[1]);
    }
    Ok(())
}

/// A message changed at `modseq` (it was at `old` before, if it existed).
fn note_change(v: &mut impl ViewWrite, mailbox: Id, uid: u32, old: Option<u64>, modseq: u64) {
    if let Some(old) = old {
        v.delete(&keys::change(mailbox, old, uid));
    }
    v.put(&keys::change(mailbox, modseq, uid), &[0]);
}

fn touch_mailbox(v: &mut impl ViewWrite, user: &str, mut mb: MailboxRec, modseq: u64) {
    mb.highestmodseq = mb.highestmodseq.max(modseq);
    v.put(&keys::mailbox(user, mb.id), &enc(&mb));
}

fn drop_messages(v: &mut impl ViewWrite, mailbox: Id) -> Result<(), ViewError> {
    for (uid, m) in v.messages(mailbox)? {
        remove_message(v, mailbox, uid, &m, None)?;
    }
    for (k, _) in v.vscan(&keys::changes_prefix(mailbox))? {
        v.delete(&k);
    }
    Ok(())
}

fn corrupt(k: &[u8], e: impl std::fmt::Display) -> ViewError {
    ViewError::Corrupt {
        key: hex::encode(k),
        reason: e.to_string(),
    }
}

/// Remove a mailbox record and its name. Messages still shown in it (a
/// delivery the deleting node had not seen: a node deletes what it shows
/// by expunging it first) are kept aside, never dropped, for the master to
/// bring back. With `drop_all` (a deleted user, or a `MailboxDeleted` of an
/// older build) they are dropped, with those kept aside.
fn drop_mailbox(v: &mut impl ViewWrite, user: &str, mb: &MailboxRec, at: &Appended, drop_all: bool) -> Result<(), ViewError> {
    if drop_all {
        drop_messages(v, mb.id)?;
        for (k, b) in v.vscan(&keys::conflicts_in(mb.id))? {
            let m = MessageRec::decode(&b).map_err(|e| corrupt(&k, e))?;
            bump_refcount(v, &m.blob, -1)?;
            v.delete(&k);
        }
        for (k, _) in v.vscan(&collisions_in(mb.id))? {
            v.delete(&k);
        }
        for (k, _) in v.vscan(&reported_in(mb.id))? {
            v.delete(&k);
        }
        for (k, _) in v.vscan(&pendings_in(mb.id))? {
            v.delete(&k);
        }
    } else {
        for (uid, m) in v.messages(mb.id)? {
            remove_message(v, mb.id, uid, &m, None)?;
            keep_aside(v, user, mb.id, uid, m, at)?;
        }
        for (k, _) in v.vscan(&keys::changes_prefix(mb.id))? {
            v.delete(&k);
        }
        // Every message kept aside in it waits for the master.
        for (k, _) in v.vscan(&keys::conflicts_in(mb.id))? {
            if let Some((_, uid, _)) = keys::conflict_of(&k) {
                if v.collision(mb.id, uid)?.is_none() {
                    let rec = CollisionRec {
                        user: user.to_string(),
                        causes: Vec::new(),
                    };
                    v.put(&keys::collision(mb.id, uid), &enc(&rec));
                }
            }
        }
    }
    v.delete(&keys::mailbox(user, mb.id));
    v.put(&keys::gone(user, mb.id), &mb.uidvalidity.to_be_bytes());
    v.delete(&keys::name_clock(user, mb.id));
    v.delete(&keys::loser(user, mb.id));
    rebind(v, user, &mb.name)
}

fn pendings_in(mailbox: Id) -> Vec<u8> {
    let mut k = keys::pendings_prefix();
    k.extend_from_slice(&mailbox.0);
    k
}

fn collisions_in(mailbox: Id) -> Vec<u8> {
    let mut k = keys::collisions_prefix();
    k.extend_from_slice(&mailbox.0);
    k
}

fn reported_in(mailbox: Id) -> Vec<u8> {
    let mut k = keys::reported_prefix();
    k.extend_from_slice(&mailbox.0);
    k
}

/// Record that `mailbox` was created, or renamed, as (name, uidvalidity).
fn record_creation(v: &mut impl ViewWrite, user: &str, name: &str, uidvalidity: u32, mailbox: Id) -> Result<(), ViewError> {
    let mut ids = v.created_as(user, name, uidvalidity)?;
    if let Err(at) = ids.binary_search(&mailbox) {
        ids.insert(at, mailbox);
        v.put(&keys::created(user, name, uidvalidity), &enc(&ids));
    }
    Ok(())
}

/// Bind `name` among the mailboxes of that name (two arise when a name is
/// created, or renamed onto, on both sides of a split): the highest
/// UIDVALIDITY wins, so the binding is the same on every node and a client
/// that saw the other one sees a new UIDVALIDITY, never other messages
/// under UIDs it knows. A mailbox is not bound at all while another was
/// created under the same name with the same UIDVALIDITY (both sides of a
/// split creating the name in the same second): a node may have shown
/// either under that pair, so showing the other there later would show
/// other messages under UIDs its clients know. That record of creations is
/// the same on every node whatever the apply order, so the binding is too;
/// the master merges such twins into a fresh mailbox of a higher
/// UIDVALIDITY, which takes the name. (Views written before the record
/// have none: between equal UIDVALIDITYs the mailbox bound now keeps the
/// name, as those builds did.) The others are marked for the master.
fn rebind(v: &mut impl ViewWrite, user: &str, name: &str) -> Result<(), ViewError> {
    let same: Vec<MailboxRec> = v.all_mailboxes(user)?.into_iter().filter(|m| m.name == name).collect();
    let mut eligible = Vec::with_capacity(same.len());
    for m in &same {
        if v.created_as(user, name, m.uidvalidity)?.iter().all(|id| *id == m.id) {
            eligible.push(m);
        }
    }
    let winner = match eligible.iter().map(|m| m.uidvalidity).max() {
        None => {
            v.delete(&keys::name(user, name));
            None
        }
        Some(top) => {
            let current = v.mailbox_id(user, name)?;
            let winner = eligible
                .iter()
                .filter(|m| m.uidvalidity == top)
                .map(|m| m.id)
                .find(|id| Some(*id) == current)
                .or_else(|| eligible.iter().filter(|m| m.uidvalidity == top).map(|m| m.id).min())
                .expect("one mailbox has the top UIDVALIDITY");
            v.put(&keys::name(user, name), &winner.0);
            Some(winner)
        }
    };
    for m in &same {
        if Some(m.id) == winner {
            v.delete(&keys::loser(user, m.id));
        } else {
            v.put(&keys::loser(user, m.id), &[]);
        }
    }
    Ok(())
}

/// Keep a message aside under (mailbox, uid) and mark the UID for the
/// master's renumbering.
fn keep_aside(v: &mut impl ViewWrite, user: &str, mailbox: Id, uid: u32, m: MessageRec, at: &Appended) -> Result<(), ViewError> {
    // The same message appended twice to one UID (two nodes moving it
    // alike) stays one record, with the flags it has.
    let held = conflict(v, mailbox, uid, m.guid)?.is_some();
    if !held {
        bump_refcount(v, &m.blob, 1)?;
    }
    let mut rec = v.collision(mailbox, uid)?.unwrap_or(CollisionRec {
        user: user.to_string(),
        causes: Vec::new(),
    });
    rec.causes.retain(|c| c.0 != m.guid);
    rec.causes.push((m.guid, at.origin.0, at.seq));
    v.put(&keys::collision(mailbox, uid), &enc(&rec));
    if !held {
        v.put(&keys::conflict(mailbox, uid, m.guid), &m.encode());
    }
    Ok(())
}

/// Show a message under (mailbox, uid), or keep it aside when that UID
/// already names another message or was used before here, or when the
/// mailbox is gone. Never overwrites, never drops.
fn place(v: &mut impl ViewWrite, user: &str, mailbox: Id, uid: u32, m: MessageRec, at: &Appended) -> Result<(), ViewError> {
    let modseq = at.order;
    let Some(mut mb) = v.mailbox(user, mailbox)? else {
        // Delivered into a mailbox deleted concurrently on another node:
        // kept aside, never dropped; the master brings it back.
        tracing::warn!(user, uid, mailbox = ?mailbox, "message for a missing mailbox kept aside");
        return keep_aside(v, user, mailbox, uid, m, at);
    };
    // Every message shown in a mailbox has a UID below its UIDNEXT (each
    // place that shows one raises UIDNEXT past it), so a UID at or above
    // UIDNEXT, what every new delivery takes, names nothing: no lookup.
    let held = if uid < mb.uidnext { v.message(mailbox, uid)? } else { None };
    if held.as_ref().is_some_and(|h| h.guid == m.guid) {
        return Ok(());
    }
    // Two messages under one UID (written on two nodes during a split), or
    // a UID below UIDNEXT whose first message was already expunged or moved
    // here: neither may be shown under that UID. The message is kept aside
    // with its body for the master's renumbering.
    if held.is_some() || uid < mb.uidnext {
        tracing::warn!(user, uid, mailbox = ?mailbox, "uid collision: message kept aside");
        keep_aside(v, user, mailbox, uid, m, at)?;
        mb.uidnext = mb.uidnext.max(uid.saturating_add(1));
        touch_mailbox(v, user, mb, modseq);
        return Ok(());
    }
    bump_refcount(v, &m.blob, 1)?;
    bump_content(v, mailbox, &m.blob, 1)?;
    show_guid(v, mailbox, uid, m.guid)?;
    v.put(&keys::message(mailbox, uid), &m.encode());
    note_change(v, mailbox, uid, None, modseq);
    mb.uidnext = mb.uidnext.max(uid.saturating_add(1));
    touch_mailbox(v, user, mb, modseq);
    Ok(())
}

/// Index a message shown under (mailbox, uid) by its GUID; the newest
/// place wins. A GUID still shown under another UID of the mailbox (a MOVE
/// within the mailbox appends before it expunges the old UID; two MOVEs of
/// one message written on both sides of a cut) is logged at debug level.
/// Placements never make one: a pending message whose GUID the mailbox
/// shows is placed under that UID.
fn show_guid(v: &mut impl ViewWrite, mailbox: Id, uid: u32, guid: Id) -> Result<(), ViewError> {
    if let Some(other) = v.uid_of_guid(mailbox, guid)? {
        if other != uid && v.message(mailbox, other)?.is_some_and(|m| m.guid == guid) {
            tracing::debug!(mailbox = ?mailbox, uid, other, guid = ?guid, "one GUID shown under two UIDs of a mailbox");
        }
    }
    v.put(&keys::guid(mailbox, guid), &uid.to_be_bytes());
    Ok(())
}

/// A message appended pending (UID 0): kept aside under UID 0, invisible
/// and never lost, and marked as awaiting the master's placement rather
/// than as a collision. Into a missing mailbox it is kept aside like any
/// other delivery there, for the master to bring back.
fn keep_pending(v: &mut impl ViewWrite, user: &str, mailbox: Id, m: MessageRec, at: &Appended) -> Result<(), ViewError> {
    if v.mailbox(user, mailbox)?.is_none() {
        tracing::warn!(user, mailbox = ?mailbox, "pending message for a missing mailbox kept aside");
        return keep_aside(v, user, mailbox, 0, m, at);
    }
    if conflict(v, mailbox, 0, m.guid)?.is_some() || v.moved_to(mailbox, 0, m.guid)?.is_some() {
        return Ok(());
    }
    bump_refcount(v, &m.blob, 1)?;
    v.put(
        &keys::pending(mailbox, m.guid),
        &enc(&PendingRec {
            user: user.to_string(),
            since: (at.hlc, at.origin.0),
        }),
    );
    v.put(&keys::conflict(mailbox, 0, m.guid), &m.encode());
    Ok(())
}

/// The rank of a resolution written under `epoch` at `at`.
fn rank(at: &Appended, epoch: u64) -> Rank {
    Rank {
        epoch,
        hlc: at.hlc,
        origin: at.origin.0,
    }
}

/// `MessagePlaced`: the pending message (mailbox, 0, guid) goes under
/// `uid`, a new arrival for clients. Placed twice (the master, and its
/// slave that stopped waiting; or two nodes acting as master), the
/// placement of the higher [`Rank`] (epoch, then the smaller (HLC,
/// origin)) wins on every node whatever the order, as two moves of one
/// message do; the other UID forwards to it.
fn place_pending(v: &mut impl ViewWrite, p: Placement<'_>, at: &Appended) -> Result<(), ViewError> {
    let Placement {
        epoch,
        user,
        mailbox,
        guid,
        uid,
    } = p;
    let modseq = at.order;
    let by = rank(at, epoch);
    let here = enc_moved(mailbox, uid, by);
    v.delete(&keys::pending(mailbox, guid));
    let found = match conflict(v, mailbox, 0, guid)? {
        Some(m) => Some((Spot::Aside, m, (mailbox, 0))),
        None => match v.moved_to(mailbox, 0, guid)? {
            // Both placed it under the same UID: it is wherever later
            // moves took it from there; only the rank that counts changes.
            Some((mb, u, other)) if by.beats(&other) && (mb, u) == (mailbox, uid) => {
                v.put(&keys::moved(mailbox, 0, guid), &here);
                None
            }
            Some((mb, u, other)) if by.beats(&other) => match follow(v, mb, u, guid, by)? {
                Follow::Here(mb2, u2, spot, m) => {
                    v.put(&keys::moved(mb, u, guid), &here);
                    Some((spot, m, (mb2, u2)))
                }
                Follow::Beaten(winner) => {
                    v.put(&keys::moved(mailbox, 0, guid), &here);
                    v.put(&keys::moved(mailbox, uid, guid), &enc_moved(winner.0, winner.1, winner.2));
                    mark_if_shown_elsewhere(v, user, mailbox, uid, guid)?;
                    None
                }
                Follow::Gone => {
                    mark_if_shown_elsewhere(v, user, mailbox, uid, guid)?;
                    None
                }
            },
            Some(winner) => {
                if (winner.0, winner.1) != (mailbox, uid) {
                    v.put(&keys::moved(mailbox, uid, guid), &enc_moved(winner.0, winner.1, winner.2));
                    // The placing node showed the message under `uid`: a
                    // message shown here under it may not stay there. The
                    // mark sends it to the master's renumbering, as the
                    // placing node's own mark does.
                    mark_if_shown_elsewhere(v, user, mailbox, uid, guid)?;
                }
                None
            }
            // Taken elsewhere (its mailbox was deleted and the master
            // moved it), or gone with its user. Where this placement came
            // first, its node showed the message under `uid`: another
            // message shown here under it may not stay, and the mark is
            // for the master.
            None => {
                mark_if_shown_elsewhere(v, user, mailbox, uid, guid)?;
                None
            }
        },
    };
    if let Some((spot, mut m, from)) = found {
        v.put(&keys::moved(mailbox, 0, guid), &here);
        if !(spot == Spot::Shown && from == (mailbox, uid)) {
            take(v, from.0, from.1, spot, &m, modseq)?;
            if from.1 != 0 {
                v.put(&keys::moved(from.0, from.1, guid), &here);
            }
            m.modseq = modseq;
            place(v, user, mailbox, uid, m, at)?;
        }
    }
    // The UID counts as given on every node, placed here or not.
    if let Some(mut mb) = v.mailbox(user, mailbox)? {
        mb.uidnext = mb.uidnext.max(uid.saturating_add(1));
        touch_mailbox(v, user, mb, modseq);
    }
    Ok(())
}

/// Mark (mailbox, uid) for the master's renumbering if a message other
/// than `guid` is shown under it here: a losing resolution put `guid`
/// there on the nodes that applied it first.
fn mark_if_shown_elsewhere(v: &mut impl ViewWrite, user: &str, mailbox: Id, uid: u32, guid: Id) -> Result<(), ViewError> {
    if v.message(mailbox, uid)?.is_some_and(|h| h.guid != guid) {
        mark(v, user, mailbox, uid)?;
    }
    Ok(())
}

/// Mark (mailbox, uid) for the master's renumbering, if it is not.
fn mark(v: &mut impl ViewWrite, user: &str, mailbox: Id, uid: u32) -> Result<(), ViewError> {
    if v.collision(mailbox, uid)?.is_none() {
        let rec = CollisionRec {
            user: user.to_string(),
            causes: Vec::new(),
        };
        v.put(&keys::collision(mailbox, uid), &enc(&rec));
    }
    Ok(())
}

/// Clear the mark of (mailbox, uid) and its record of having been
/// reported to the master.
fn unmark(v: &mut impl ViewWrite, mailbox: Id, uid: u32) {
    v.delete(&keys::collision(mailbox, uid));
    v.delete(&keys::reported(mailbox, uid));
}

/// A node's report of its marks (`Event::ConflictsReported`): each UID
/// under which this node shows or keeps aside a message is marked, if it
/// is not, and every mark it names is recorded as reported, so no node
/// reports it again. On the master the mark goes to the renumbering, which
/// moves every message under the UID; a UID with nothing under it here
/// (moved or expunged meanwhile) is left alone.
fn apply_report(v: &mut impl ViewWrite, user: &str, mailbox: Id, uids: &[u32]) -> Result<(), ViewError> {
    for uid in uids {
        let held =
            v.collision(mailbox, *uid)?.is_some() || v.message(mailbox, *uid)?.is_some() || !v.conflicts_at(mailbox, *uid)?.is_empty();
        if held {
            mark(v, user, mailbox, *uid)?;
            v.put(&keys::reported(mailbox, *uid), &[]);
        }
    }
    Ok(())
}

/// A message kept aside under (mailbox, uid, guid).
fn conflict(v: &impl ViewRead, mailbox: Id, uid: u32, guid: Id) -> Result<Option<MessageRec>, ViewError> {
    let k = keys::conflict(mailbox, uid, guid);
    match v.vget(&k)? {
        Some(b) => Ok(Some(postcard::from_bytes(&b).map_err(|e| corrupt(&k, e))?)),
        None => Ok(None),
    }
}

/// Where a message named by (uid, guid) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spot {
    Shown,
    Aside,
}

/// The message (mailbox, uid, guid) exactly there: shown or kept aside.
fn find(v: &impl ViewRead, mailbox: Id, uid: u32, guid: Id) -> Result<Option<(Spot, MessageRec)>, ViewError> {
    if let Some(m) = v.message(mailbox, uid)? {
        if m.guid == guid {
            return Ok(Some((Spot::Shown, m)));
        }
    }
    Ok(conflict(v, mailbox, uid, guid)?.map(|m| (Spot::Aside, m)))
}

/// The message (mailbox, uid, guid), following the master's moves: an
/// event written before a move still reaches the message.
fn locate(v: &impl ViewRead, mut mailbox: Id, mut uid: u32, guid: Id) -> Result<Option<(Id, u32, Spot, MessageRec)>, ViewError> {
    // Each move goes to a fresh UID, so a chain is as long as the number of
    // times one message was renumbered; the bound only guards bad data.
    for _ in 0..256 {
        if let Some((spot, m)) = find(v, mailbox, uid, guid)? {
            return Ok(Some((mailbox, uid, spot, m)));
        }
        match v.moved_to(mailbox, uid, guid)? {
            Some((mb, u, _)) => (mailbox, uid) = (mb, u),
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// Where a resolution of rank `by`, which beat the one that put the
/// message under (mailbox, uid), finds it.
enum Follow {
    /// There: take it from this place.
    Here(Id, u32, Spot, MessageRec),
    /// A later move took it on from there, and ranks above `by`: the
    /// message stays where it is now, and this is where (with that rank).
    Beaten((Id, u32, Rank)),
    /// Gone (expunged meanwhile).
    Gone,
}

/// Follow the message from (mailbox, uid) through the moves after it, as
/// long as `by` beats each: a move after the one `by` beat was made from
/// a place only that one gave, and whichever of them ranks higher decides,
/// whatever the order they were applied in here.
fn follow(v: &impl ViewRead, mut mailbox: Id, mut uid: u32, guid: Id, by: Rank) -> Result<Follow, ViewError> {
    for _ in 0..256 {
        if let Some((spot, m)) = find(v, mailbox, uid, guid)? {
            return Ok(Follow::Here(mailbox, uid, spot, m));
        }
        match v.moved_to(mailbox, uid, guid)? {
            Some((mb, u, r)) if r.beats(&by) => {
                return Ok(match locate(v, mb, u, guid)? {
                    Some((mb2, u2, _, _)) => Follow::Beaten((mb2, u2, r)),
                    None => Follow::Gone,
                });
            }
            Some((mb, u, _)) => (mailbox, uid) = (mb, u),
            None => return Ok(Follow::Gone),
        }
    }
    Ok(Follow::Gone)
}

/// Take a found message out of its place (an expunge at `modseq` when it
/// was shown).
fn take(v: &mut impl ViewWrite, mailbox: Id, uid: u32, spot: Spot, m: &MessageRec, modseq: u64) -> Result<(), ViewError> {
    match spot {
        Spot::Shown => remove_message(v, mailbox, uid, m, Some(modseq))?,
        Spot::Aside => {
            bump_refcount(v, &m.blob, -1)?;
            v.delete(&keys::conflict(mailbox, uid, m.guid));
            if uid == 0 {
                v.delete(&keys::pending(mailbox, m.guid));
            }
        }
    }
    // A UID with nothing left under it here, shown or aside, has nothing
    // for the master to move: its mark goes, whichever of its messages
    // went last. (While a message is shown under it the mark stays: that
    // message may be kept aside on another node.)
    if let Some(rec) = v.collision(mailbox, uid)? {
        let shown = v.mailbox(&rec.user, mailbox)?.is_some() && v.message(mailbox, uid)?.is_some();
        if !shown && v.conflicts_at(mailbox, uid)?.is_empty() {
            unmark(v, mailbox, uid);
        }
    }
    Ok(())
}

fn touch_if_exists(v: &mut impl ViewWrite, user: &str, mailbox: Id, modseq: u64) -> Result<(), ViewError> {
    if let Some(mb) = v.mailbox(user, mailbox)? {
        touch_mailbox(v, user, mb, modseq);
    }
    Ok(())
}

/// The record a delivered (`MessageAppended`) or restored
/// (`MessageRestored`) message starts with, at `modseq`, its flags set at
/// `ts`; `None` for any other event.
fn fresh_record(event: &Event, modseq: u64, ts: (u64, u64)) -> Option<MessageRec> {
    match event {
        Event::MessageAppended {
            guid,
            blob,
            size,
            internal_date,
            tz_minutes,
            flags,
            ..
        }
        | Event::MessageRestored {
            guid,
            blob,
            size,
            internal_date,
            tz_minutes,
            flags,
            ..
        } => Some(MessageRec {
            guid: *guid,
            blob: *blob,
            size: *size,
            internal_date: *internal_date,
            tz_minutes: *tz_minutes,
            flags: flags.clone(),
            modseq,
            clocks: Vec::new(),
            set_clock: ts,
        }),
        _ => None,
    }
}

/// Apply `event`, which the log holds at `at`, to the views, and keep their
/// merkle summaries in step.
pub fn apply(v: &mut TxnViews<'_, '_>, at: &Appended, event: &Event) -> Result<(), ViewError> {
    // A second placement of one message may take it from where the first
    // put it: that place changes too.
    let placement = event.as_placement();
    let earlier = match placement {
        Some(p) => v.moved_to(p.mailbox, 0, p.guid)?,
        None => None,
    };
    apply_views(v, at, event)?;
    if let (Some((mb, uid, _)), Some(p)) = (earlier, placement) {
        crate::merkle::refresh_place(v, p.user, mb, uid)?;
    }
    crate::merkle::update(v, event)
}

/// Apply an event to the views but not to the merkle tree, for a writer
/// that builds the whole tree afterwards ([`crate::merkle::build_stored`]):
/// the rebuild of views from the log. The tree is stale until then.
pub fn apply_without_tree(v: &mut impl ViewWrite, at: &Appended, event: &Event) -> Result<(), ViewError> {
    apply_views(v, at, event)
}

fn apply_views(v: &mut impl ViewWrite, at: &Appended, event: &Event) -> Result<(), ViewError> {
    let modseq = at.order;
    let ts = (at.hlc, at.origin.0);
    match event {
        Event::UserCreated { user, password_hash } | Event::PasswordChanged { user, password_hash } => {
            v.put(
                &keys::user(user),
                &enc(&UserRec {
                    password_hash: password_hash.clone(),
                }),
            );
        }
        Event::UserDeleted { user } => {
            for mb in v.all_mailboxes(user)? {
                drop_mailbox(v, user, &mb, at, true)?;
            }
            // Messages kept aside for mailboxes already gone go too.
            for (mailbox, uid, rec) in v.collisions()? {
                if rec.user == *user {
                    for (guid, m) in v.conflicts_at(mailbox, uid)? {
                        bump_refcount(v, &m.blob, -1)?;
                        v.delete(&keys::conflict(mailbox, uid, guid));
                        // A pending message of a mailbox deleted before
                        // its user: its pending mark goes with it.
                        if uid == 0 {
                            v.delete(&keys::pending(mailbox, guid));
                        }
                    }
                    unmark(v, mailbox, uid);
                }
            }
            for name in v.subscriptions(user)? {
                v.delete(&keys::subscription(user, &name));
            }
            // The UIDVALIDITY counter stays so a re-created user never sees
            // an old (name, UIDVALIDITY) pair again.
            v.delete(&keys::user(user));
        }
        Event::MailboxCreated {
            user,
            mailbox,
            name,
            uidvalidity,
            special_use,
        } => {
            record_creation(v, user, name, *uidvalidity, *mailbox)?;
            // Created twice (two nodes merging the same pair of mailboxes):
            // the first stays.
            if v.mailbox(user, *mailbox)?.is_some() {
                return Ok(());
            }
            let mb = MailboxRec {
                id: *mailbox,
                name: name.clone(),
                uidvalidity: *uidvalidity,
                uidnext: 1,
                highestmodseq: modseq,
                special_use: *special_use,
            };
            v.put(&keys::mailbox(user, *mailbox), &enc(&mb));
            v.put(&keys::name_clock(user, *mailbox), &enc(&ts));
            rebind(v, user, name)?;
            let last = v.last_uidvalidity(user)?;
            v.put(&keys::uidvalidity(user), &last.max(*uidvalidity).to_be_bytes());
        }
        Event::MailboxRenamed { user, mailbox, name } => {
            // Recorded under its new name like a creation, whether the
            // rename wins here or not, and also when the mailbox is gone:
            // some node may have shown it as (name, UIDVALIDITY), so that
            // pair may not name another mailbox there, and the record is
            // the same on every node whatever the order (format.md 8.5).
            let held = v.mailbox(user, *mailbox)?;
            let uidvalidity = match &held {
                Some(mb) => Some(mb.uidvalidity),
                None => v.gone_uidvalidity(user, *mailbox)?,
            };
            if let Some(u) = uidvalidity {
                record_creation(v, user, name, u, *mailbox)?;
            }
            match held {
                // Concurrent renames of one mailbox: the latest by (HLC,
                // origin) names it on every node, whatever the order.
                Some(mut mb) if ts > v.name_clock(user, *mailbox)? => {
                    let old = std::mem::replace(&mut mb.name, name.clone());
                    v.put(&keys::name_clock(user, *mailbox), &enc(&ts));
                    touch_mailbox(v, user, mb, modseq);
                    rebind(v, user, &old)?;
                    rebind(v, user, name)?;
                }
                _ if uidvalidity.is_some() => rebind(v, user, name)?,
                _ => {}
            }
        }
        Event::MailboxDeleted { user, mailbox } => {
            // Written by builds that deleted without expunging first: what
            // the mailbox holds goes with it.
            if let Some(mb) = v.mailbox(user, *mailbox)? {
                drop_mailbox(v, user, &mb, at, true)?;
            }
        }
        Event::MailboxRemoved { user, mailbox } => {
            if let Some(mb) = v.mailbox(user, *mailbox)? {
                drop_mailbox(v, user, &mb, at, false)?;
            }
        }
        Event::Subscribed { user, name, subscribed } => {
            if *subscribed {
                v.put(&keys::subscription(user, name), &[]);
            } else {
                v.delete(&keys::subscription(user, name));
            }
        }
        Event::MessageAppended { user, mailbox, uid, .. } => {
            if let Some(m) = fresh_record(event, modseq, ts) {
                if *uid == 0 {
                    keep_pending(v, user, *mailbox, m, at)?;
                } else {
                    place(v, user, *mailbox, *uid, m, at)?;
                }
            }
        }
        Event::ConflictsReported { user, mailbox, uids } => apply_report(v, user, *mailbox, uids)?,
        Event::MessagePlaced { .. } | Event::MessagePlacedInEpoch { .. } => {
            let p = event.as_placement().expect("a placement");
            if p.uid == 0 {
                return Err(ViewError::Corrupt {
                    key: format!("entry {:016x}:{}", at.origin.0, at.seq),
                    reason: "a message placed under UID 0".into(),
                });
            }
            place_pending(v, p, at)?;
        }
        Event::FlagsChanged {
            user,
            mailbox,
            messages,
            op,
            flags,
        } => {
            // Mailboxes whose HIGHESTMODSEQ rises (usually just this one).
            let mut touched: Vec<Id> = Vec::new();
            for (uid, guid) in messages {
                // The message is named by GUID: under its UID, kept aside,
                // or wherever the master moved it since. Not found: it was
                // expunged, and an expunge beats a concurrent flag change.
                let Some((mb, uid, spot, mut m)) = locate(v, *mailbox, *uid, *guid)? else {
                    continue;
                };
                if m.merge_flags(*op, flags, ts) {
                    if spot == Spot::Shown {
                        note_change(v, mb, uid, Some(m.modseq), modseq);
                    }
                    m.modseq = modseq;
                    if !touched.contains(&mb) {
                        touched.push(mb);
                    }
                }
                match spot {
                    Spot::Shown => v.put(&keys::message(mb, uid), &m.encode()),
                    Spot::Aside => v.put(&keys::conflict(mb, uid, *guid), &m.encode()),
                }
            }
            for mb in touched {
                touch_if_exists(v, user, mb, modseq)?;
            }
        }
        Event::Expunged { user, mailbox, messages } => {
            let mut touched = vec![*mailbox];
            for (uid, guid) in messages {
                if let Some((mb, uid, spot, m)) = locate(v, *mailbox, *uid, *guid)? {
                    take(v, mb, uid, spot, &m, modseq)?;
                    if !touched.contains(&mb) {
                        touched.push(mb);
                    }
                }
            }
            for mb in touched {
                touch_if_exists(v, user, mb, modseq)?;
            }
        }
        Event::ConfigSet { key, value } => {
            // The latest writer by (hlc, origin) wins: two nodes that set a
            // key at once end with the same value whatever order they
            // apply the two events in.
            let ts = (at.hlc, at.origin.0);
            if v.config_clock(key)?.is_none_or(|c| ts > c) {
                v.put(&keys::config(key), value.as_bytes());
                v.put(&keys::config_clock(key), &enc(&ts));
            }
        }
        Event::QuotaSet {
            user,
            storage_kib,
            messages,
        } => {
            // As `ConfigSet`: the latest (hlc, origin) wins on every node.
            let ts = (at.hlc, at.origin.0);
            if v.quota(user)?.is_none_or(|q| ts > q.clock) {
                let rec = super::QuotaRec {
                    storage_kib: *storage_kib,
                    messages: *messages,
                    clock: ts,
                };
                v.put(&keys::quota(user), &enc(&rec));
            }
        }
        Event::MessagesMoved { .. } | Event::MessagesMovedInEpoch { .. } => {
            apply_moves(v, at, event.as_moves().expect("a renumbering"))?;
        }
        Event::RoleChanged { node, epoch } => crate::repl::role::apply(v, node, *epoch)?,
        Event::SideFileSet { .. } | Event::SideFileRemoved { .. } => crate::sidefiles::apply(v, ts, event)?,
        Event::MessageRestored { user, mailbox, uid, .. } => {
            if let Some(m) = fresh_record(event, modseq, ts) {
                restore_message(v, user, *mailbox, *uid, m)?;
            }
        }
        Event::MailboxRestored {
            user,
            mailbox,
            name,
            uidvalidity,
            uidnext,
            special_use,
        } => {
            let mb = match v.mailbox(user, *mailbox)? {
                Some(mut mb) => {
                    if mb.name != *name {
                        if v.mailbox_id(user, &mb.name)? == Some(mb.id) {
                            v.delete(&keys::name(user, &mb.name));
                        }
                        mb.name = name.clone();
                    }
                    mb.uidnext = mb.uidnext.max(*uidnext);
                    mb.special_use = *special_use;
                    mb
                }
                None => {
                    let last = v.last_uidvalidity(user)?;
                    v.put(&keys::uidvalidity(user), &last.max(*uidvalidity).to_be_bytes());
                    MailboxRec {
                        id: *mailbox,
                        name: name.clone(),
                        uidvalidity: *uidvalidity,
                        uidnext: (*uidnext).max(1),
                        highestmodseq: modseq,
                        special_use: *special_use,
                    }
                }
            };
            v.put(&keys::name(user, name), &mailbox.0);
            touch_mailbox(v, user, mb, modseq);
        }
    }
    Ok(())
}

/// `MessagesMoved`: every message named by `m.moves` leaves its old place
/// (shown or kept aside) for its new UID. Of two resolutions of one
/// message (two nodes acting as master, or a stale master and the master
/// of a later epoch) the one of the higher [`Rank`] wins on every node,
/// whatever the order.
fn apply_moves(v: &mut impl ViewWrite, at: &Appended, m: Moves<'_>) -> Result<(), ViewError> {
    let Moves {
        epoch,
        user,
        from,
        to,
        resolves,
        moves,
    } = m;
    let modseq = at.order;
    let by = rank(at, epoch);
    let mut causes = Vec::new();
    for uid in resolves {
        if let Some(rec) = v.collision(from, *uid)? {
            causes.extend(rec.causes.into_iter().map(|c| (*uid, c)));
        }
        unmark(v, from, *uid);
    }
    for (index, (old, guid, new)) in moves.iter().enumerate() {
        let here = enc_moved(to, *new, by);
        let (spot, mut m, at_spot) = match find(v, from, *old, *guid)? {
            Some((spot, m)) => (spot, m, (from, *old)),
            None => match v.moved_to(from, *old, *guid)? {
                // Moved already by another resolution (two nodes acting
                // as master): the higher rank wins on every node,
                // whatever the order. If both moved it to the same UID,
                // it is wherever later moves took it from there, and only
                // the rank that counts for its old place changes.
                Some((mb, u, other)) if by.beats(&other) && (mb, u) == (to, *new) => {
                    v.put(&keys::moved(from, *old, *guid), &here);
                    continue;
                }
                Some((mb, u, other)) if by.beats(&other) => match follow(v, mb, u, *guid, by)? {
                    Follow::Here(mb2, u2, spot, m) => {
                        v.put(&keys::moved(mb, u, *guid), &here);
                        (spot, m, (mb2, u2))
                    }
                    Follow::Beaten(winner) => {
                        v.put(&keys::moved(from, *old, *guid), &here);
                        v.put(&keys::moved(to, *new, *guid), &enc_moved(winner.0, winner.1, winner.2));
                        mark_if_shown_elsewhere(v, user, to, *new, *guid)?;
                        continue;
                    }
                    Follow::Gone => {
                        mark_if_shown_elsewhere(v, user, to, *new, *guid)?;
                        continue;
                    }
                },
                Some(winner) => {
                    if (winner.0, winner.1) != (to, *new) {
                        v.put(&keys::moved(to, *new, *guid), &enc_moved(winner.0, winner.1, winner.2));
                        // Where this move was applied first, its node showed
                        // the message under `new`: another message shown
                        // here under it may not stay there, and the mark
                        // sends it to the master's renumbering (as a losing
                        // placement does). A stale master may no longer
                        // resolve its own marks; this one reaches the master.
                        mark_if_shown_elsewhere(v, user, to, *new, *guid)?;
                    }
                    continue;
                }
                // Only where the master saw it: a message expunged here
                // meanwhile stays expunged. Where the move came first, its
                // node showed the message under `new`: another message
                // shown here under it may not stay, and the mark is for
                // the master.
                None => {
                    mark_if_shown_elsewhere(v, user, to, *new, *guid)?;
                    continue;
                }
            },
        };
        v.put(&keys::moved(from, *old, *guid), &here);
        if at_spot == (to, *new) {
            // A later move put it where this one does: it stays.
            continue;
        }
        if at_spot != (from, *old) {
            v.put(&keys::moved(at_spot.0, at_spot.1, *guid), &here);
        }
        take(v, at_spot.0, at_spot.1, spot, &m, modseq)?;
        m.modseq = modseq;
        place(v, user, to, *new, m, at)?;
        let cause = causes.iter().find(|(u, c)| u == old && c.0 == *guid).map(|(_, c)| (c.1, c.2));
        v.put(
            &keys::resolution(modseq, index as u32),
            &enc(&ResolutionRec {
                user: user.to_string(),
                from,
                old_uid: *old,
                guid: *guid,
                to,
                new_uid: *new,
                by: (at.origin.0, at.seq),
                cause,
            }),
        );
    }
    // A message still under a resolved UID, shown or kept aside, is one
    // this resolution did not name (it reached this node before its
    // author saw it): the mark stays for the master, whichever node that
    // is when it sees the message, since on the nodes that applied it
    // after this resolution it is kept aside and marked.
    for uid in resolves {
        if v.message(from, *uid)?.is_some() || !v.conflicts_at(from, *uid)?.is_empty() {
            mark(v, user, from, *uid)?;
        }
    }
    // Every new UID counts as given, also where its message was expunged
    // here meanwhile, so UIDNEXT agrees on every node.
    if let (Some(mut mb), Some(top)) = (v.mailbox(user, to)?, moves.iter().map(|m| m.2).max()) {
        mb.uidnext = mb.uidnext.max(top.saturating_add(1));
        touch_mailbox(v, user, mb, modseq);
    }
    if from != to {
        v.put(&keys::merged(from), &enc(&to));
    }
    touch_if_exists(v, user, from, modseq)
}

/// A message restored under its UID: a free UID takes it (whatever
/// UIDNEXT says), the same GUID there takes its fields, another GUID
/// there keeps it aside.
fn restore_message(v: &mut impl ViewWrite, user: &str, mailbox: Id, uid: u32, m: MessageRec) -> Result<(), ViewError> {
    let Some(mut mb) = v.mailbox(user, mailbox)? else {
        tracing::warn!(user, uid, mailbox = ?mailbox, "restored message for a missing mailbox kept aside");
        v.put(&keys::conflict(mailbox, uid, m.guid), &m.encode());
        return bump_refcount(v, &m.blob, 1);
    };
    let modseq = m.modseq;
    match v.message(mailbox, uid)? {
        Some(h) if h.guid != m.guid => {
            tracing::warn!(user, uid, mailbox = ?mailbox, "restored message meets another under its uid: kept aside");
            v.put(&keys::conflict(mailbox, uid, m.guid), &m.encode());
            bump_refcount(v, &m.blob, 1)?;
        }
        Some(h) => {
            if (h.blob, h.size, h.internal_date, h.tz_minutes, &h.flags) == (m.blob, m.size, m.internal_date, m.tz_minutes, &m.flags) {
                return Ok(());
            }
            if h.blob != m.blob {
                bump_refcount(v, &h.blob, -1)?;
                bump_content(v, mailbox, &h.blob, -1)?;
                bump_refcount(v, &m.blob, 1)?;
                bump_content(v, mailbox, &m.blob, 1)?;
            }
            note_change(v, mailbox, uid, Some(h.modseq), modseq);
            v.put(&keys::message(mailbox, uid), &m.encode());
        }
        None => {
            show_guid(v, mailbox, uid, m.guid)?;
            v.put(&keys::message(mailbox, uid), &m.encode());
            note_change(v, mailbox, uid, None, modseq);
            bump_refcount(v, &m.blob, 1)?;
            bump_content(v, mailbox, &m.blob, 1)?;
        }
    }
    mb.uidnext = mb.uidnext.max(uid.saturating_add(1));
    touch_mailbox(v, user, mb, modseq);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Flags;
    use crate::store::{wal_options, Store};
    use crate::views::ViewRead;

    const STALE: u64 = 0xa; // the old master, still at epoch 0
    const PROMOTED: u64 = 0xb; // promoted to epoch 1
    const SLAVE: u64 = 0xc;

    /// Apply `events` as entries (origin, hlc) in this order, each at the
    /// next position of the store's apply order.
    fn apply_in_order(store: &Store, events: &[(u64, u64, Event)]) {
        let events = events.to_vec();
        store
            .run_blocking(move |txn, cfs| {
                let mut order = TxnViews { txn, cf: cfs.views }
                    .vget(b"test-order")?
                    .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
                for (origin, hlc, e) in &events {
                    order += 1;
                    let at = Appended {
                        origin: wal::Origin(*origin),
                        seq: order,
                        order,
                        hlc: *hlc,
                        hash: [0; 32],
                    };
                    let mut v = TxnViews { txn, cf: cfs.views };
                    apply(&mut v, &at, e)?;
                }
                TxnViews { txn, cf: cfs.views }.put(b"test-order", &order.to_be_bytes());
                Ok(())
            })
            .unwrap();
    }

    fn append(mailbox: Id, uid: u32, guid: Id) -> Event {
        let body = format!("Subject: {guid:?}\r\n\r\nx\r\n");
        Event::MessageAppended {
            user: "u".into(),
            mailbox,
            uid,
            guid,
            blob: BlobHash::of(body.as_bytes()),
            size: body.len() as u64,
            internal_date: 1,
            tz_minutes: 0,
            flags: Flags::default(),
        }
    }

    /// What must agree between nodes: every message shown (uid, guid),
    /// UIDNEXT, the forwarding records with their ranks, what is still
    /// aside, marked or pending, and the merkle root.
    fn state(store: &Store, mailbox: Id) -> impl PartialEq + std::fmt::Debug {
        let v = store.views();
        let mb = v.mailbox("u", mailbox).unwrap().unwrap();
        let shown: Vec<(u32, Id)> = v.messages(mailbox).unwrap().into_iter().map(|(u, m)| (u, m.guid)).collect();
        let w: Vec<(Vec<u8>, (Id, u32, Rank))> = v
            .vscan(b"W")
            .unwrap()
            .into_iter()
            .map(|(k, b)| (k, super::super::dec_moved(&b).unwrap()))
            .collect();
        let left: Vec<usize> = [b"X", b"Y", b"P"].iter().map(|p| v.vscan(*p).unwrap().len()).collect();
        let root = crate::merkle::node_root(&v).unwrap();
        (
            shown,
            mb.uidnext,
            w.into_iter()
                .map(|(k, (m, u, r))| (k, m, u, r.epoch, r.hlc, r.origin))
                .collect::<Vec<_>>(),
            left,
            root,
        )
    }

    /// A stale master (epoch 0) and the master promoted to epoch 1 both
    /// renumber one collision and both place one pending message. The
    /// stale resolutions have the smaller HLC, so by (HLC, origin) alone
    /// they would win; with the epoch they lose, in both apply orders, and
    /// both orders end in the same views.
    #[test]
    fn a_resolution_of_a_higher_epoch_wins_in_either_apply_order() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, g1, g2, g3) = (Id([1; 16]), Id([2; 16]), Id([3; 16]), Id([4; 16]));
        let base = vec![
            (
                STALE,
                1,
                Event::UserCreated {
                    user: "u".into(),
                    password_hash: "x".into(),
                },
            ),
            (
                STALE,
                2,
                Event::MailboxCreated {
                    user: "u".into(),
                    mailbox: inbox,
                    name: "INBOX".into(),
                    uidvalidity: 1,
                    special_use: None,
                },
            ),
            // UID 1 given twice during a cut; a pending message of the slave.
            (STALE, 10, append(inbox, 1, g1)),
            (PROMOTED, 11, append(inbox, 1, g2)),
            (SLAVE, 12, append(inbox, 0, g3)),
            (
                PROMOTED,
                20,
                Event::RoleChanged {
                    node: "b".into(),
                    epoch: 1,
                },
            ),
        ];
        let stale = vec![
            (
                STALE,
                30,
                Event::moved(0, "u".into(), inbox, inbox, vec![1], vec![(1, g1, 2), (1, g2, 3)]),
            ),
            (STALE, 31, Event::placed(0, "u".into(), inbox, g3, 4)),
        ];
        let promoted = vec![
            (
                PROMOTED,
                40,
                Event::moved(1, "u".into(), inbox, inbox, vec![1], vec![(1, g1, 5), (1, g2, 6)]),
            ),
            (PROMOTED, 41, Event::placed(1, "u".into(), inbox, g3, 7)),
        ];
        assert!(matches!(stale[0].2, Event::MessagesMoved { .. }), "epoch 0 keeps the old variant");
        assert!(matches!(promoted[0].2, Event::MessagesMovedInEpoch { epoch: 1, .. }));
        assert!(matches!(promoted[1].2, Event::MessagePlacedInEpoch { epoch: 1, .. }));
        let mut ends = Vec::new();
        for (name, first, second) in [("stale first", &stale, &promoted), ("promoted first", &promoted, &stale)] {
            let store = Store::open(&dir.path().join(name.replace(' ', "-")), "n", wal_options("n")).unwrap();
            apply_in_order(&store, &base);
            apply_in_order(&store, first);
            apply_in_order(&store, second);
            let v = store.views();
            let shown: Vec<(u32, Id)> = v.messages(inbox).unwrap().into_iter().map(|(u, m)| (u, m.guid)).collect();
            assert_eq!(shown, vec![(5, g1), (6, g2), (7, g3)], "{name}: the epoch-1 resolutions win");
            // Flag changes and expunges naming the stale UIDs reach the
            // message where the winner put it.
            for (uid, guid, want) in [(2, g1, 5), (3, g2, 6), (4, g3, 7)] {
                let (mb, u, by) = v.moved_to(inbox, uid, guid).unwrap().expect("the losing UID forwards");
                assert_eq!((mb, u, by.epoch), (inbox, want, 1), "{name}: UID {uid}");
            }
            ends.push(state(&store, inbox));
        }
        assert_eq!(ends[0], ends[1], "the two apply orders end in different views");
    }

    /// A stale placement (epoch 0) put a message under UID 2, a move of a
    /// later epoch made from there took it on to UID 6, and a placement of
    /// an epoch between them beat the stale one and put it under UID 3.
    /// The move ranks above that placement, so UID 6 holds the message in
    /// every apply order the links allow (the move always after the
    /// placement it moved from). (When the placement ranks above the move,
    /// the nodes that applied the move first keep the message aside under
    /// UID 3, below their UIDNEXT, until their report reaches the master:
    /// the next test.)
    #[test]
    fn a_move_made_from_a_beaten_placement_is_ranked_against_the_winner() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, g) = (Id([1; 16]), Id([4; 16]));
        let base = vec![
            (
                STALE,
                1,
                Event::UserCreated {
                    user: "u".into(),
                    password_hash: "x".into(),
                },
            ),
            (
                STALE,
                2,
                Event::MailboxCreated {
                    user: "u".into(),
                    mailbox: inbox,
                    name: "INBOX".into(),
                    uidvalidity: 1,
                    special_use: None,
                },
            ),
            (SLAVE, 12, append(inbox, 0, g)),
        ];
        let old = (STALE, 30, Event::placed(0, "u".into(), inbox, g, 2));
        let new = (PROMOTED, 40, Event::placed(1, "u".into(), inbox, g, 3));
        let (case, move_epoch, want) = ("the move ranks higher", 2, 6);
        {
            let mv = (
                STALE,
                50,
                Event::moved(move_epoch, "u".into(), inbox, inbox, vec![2], vec![(2, g, 6)]),
            );
            let orders = [
                vec![new.clone(), old.clone(), mv.clone()],
                vec![old.clone(), new.clone(), mv.clone()],
                vec![old.clone(), mv.clone(), new.clone()],
            ];
            let mut ends = Vec::new();
            for (k, order) in orders.iter().enumerate() {
                let store = Store::open(&dir.path().join(format!("{move_epoch}-{k}")), "n", wal_options("n")).unwrap();
                apply_in_order(&store, &base);
                apply_in_order(&store, order);
                let v = store.views();
                let shown: Vec<(u32, Id)> = v.messages(inbox).unwrap().into_iter().map(|(u, m)| (u, m.guid)).collect();
                assert_eq!(shown, vec![(want, g)], "{case}, order {k}");
                let left: Vec<usize> = [b"X", b"Y", b"P"].iter().map(|p| v.vscan(*p).unwrap().len()).collect();
                let uidnext = v.mailbox("u", inbox).unwrap().unwrap().uidnext;
                ends.push((shown, uidnext, left, crate::merkle::node_root(&v).unwrap()));
            }
            assert!(ends.windows(2).all(|w| w[0] == w[1]), "{case}: {ends:?}");
        }
    }

    /// The entries `store` wrote itself from `from` on (its resolver's),
    /// as (origin, hlc, event).
    fn written_since(store: &Store, from: u64) -> Vec<(u64, u64, Event)> {
        store
            .wal()
            .read_order(from, 1000)
            .unwrap()
            .into_iter()
            .map(|(_, e)| (e.origin.0, e.hlc, Event::decode(&e.payload).unwrap()))
            .collect()
    }

    /// As above, but the placement of epoch 1 ranks above the move made
    /// from the stale UID. A node that applied the stale placement and the
    /// move before the winner keeps the message aside under UID 3, below
    /// its UIDNEXT, and marks it; the nodes that applied the winner first
    /// show it there and hold no mark, the master among them. The marked
    /// node reports its mark (`ConflictsReported`), the master marks the
    /// UID it shows from the report and renumbers it, and every node ends
    /// alike with nothing left aside, marked or recorded as reported.
    /// Without the report the master never learns of the mark.
    #[test]
    fn a_mark_only_a_slave_holds_reaches_the_master_by_its_report() {
        use crate::config::Role;
        use crate::repl::resolve;
        let dir = tempfile::tempdir().unwrap();
        let (inbox, g) = (Id([1; 16]), Id([4; 16]));
        let base = vec![
            (
                STALE,
                1,
                Event::UserCreated {
                    user: "u".into(),
                    password_hash: "x".into(),
                },
            ),
            (
                STALE,
                2,
                Event::MailboxCreated {
                    user: "u".into(),
                    mailbox: inbox,
                    name: "INBOX".into(),
                    uidvalidity: 1,
                    special_use: None,
                },
            ),
            (SLAVE, 12, append(inbox, 0, g)),
            // Node "m" was promoted; the stale master has not learnt it.
            (
                PROMOTED,
                20,
                Event::RoleChanged {
                    node: "m".into(),
                    epoch: 1,
                },
            ),
        ];
        let old = (STALE, 30, Event::placed(0, "u".into(), inbox, g, 2));
        let new = (PROMOTED, 40, Event::placed(1, "u".into(), inbox, g, 3));
        let mv = (STALE, 50, Event::moved(0, "u".into(), inbox, inbox, vec![2], vec![(2, g, 6)]));
        let orders = [
            vec![new.clone(), old.clone(), mv.clone()],
            vec![old.clone(), new.clone(), mv.clone()],
            vec![old.clone(), mv.clone(), new.clone()],
        ];
        let stores: Vec<Store> = ["m", "s1", "s2"]
            .into_iter()
            .map(|id| Store::open(&dir.path().join(id), id, wal_options(id)).unwrap())
            .collect();
        for (store, order) in stores.iter().zip(&orders) {
            apply_in_order(store, &base);
            apply_in_order(store, order);
        }
        let (master, marked) = (&stores[0], &stores[2]);
        assert!(marked.views().collision(inbox, 3).unwrap().is_some(), "the case this test is about");
        assert!(master.views().collision(inbox, 3).unwrap().is_none());
        assert_eq!(master.views().message(inbox, 3).unwrap().map(|m| m.guid), Some(g));
        // The master has nothing to resolve by itself.
        assert!(resolve::run_once(master, Role::Master).unwrap().is_empty());

        // The marked node (not master) reports, once.
        let from = marked.wal().last_order() + 1;
        assert_eq!(resolve::run_once(marked, Role::Slave).unwrap().reported, 1);
        assert_eq!(resolve::run_once(marked, Role::Slave).unwrap().reported, 0, "reported twice");
        let report = written_since(marked, from);
        let reported: Vec<&Event> = report.iter().map(|e| &e.2).collect();
        assert_eq!(
            reported,
            vec![&Event::ConflictsReported {
                user: "u".into(),
                mailbox: inbox,
                uids: vec![3],
            }]
        );
        for store in &stores[..2] {
            apply_in_order(store, &report);
        }
        // The master renumbers the UID the report marked there.
        let from = master.wal().last_order() + 1;
        let r = resolve::run_once(master, Role::Master).unwrap();
        assert_eq!((r.collisions, r.moved), (1, 1));
        let resolution = written_since(master, from);
        for store in &stores[1..] {
            apply_in_order(store, &resolution);
        }
        let ends: Vec<_> = stores.iter().map(|s| state(s, inbox)).collect();
        assert!(ends.windows(2).all(|w| w[0] == w[1]), "{ends:?}");
        for store in &stores {
            let v = store.views();
            assert_eq!(
                v.messages(inbox).unwrap().into_iter().map(|(u, m)| (u, m.guid)).collect::<Vec<_>>(),
                vec![(7, g)]
            );
            assert!(
                v.vscan(&keys::reported_prefix()).unwrap().is_empty(),
                "a report record outlived its mark"
            );
        }
    }

    /// One name created on both sides of a split in the same second: two
    /// mailboxes with one (name, UIDVALIDITY), each with a message under
    /// UID 1. Whatever the order a node applies the two creations and the
    /// removal of the first in, the name is never bound to the second (its
    /// clients may have seen the first under that pair), and the master
    /// merges what is left into a fresh mailbox of a higher UIDVALIDITY,
    /// the same on every node.
    /// User `u` and its INBOX, written by the old master.
    fn user_u_with_inbox(inbox: Id) -> Vec<(u64, u64, Event)> {
        vec![
            (
                STALE,
                1,
                Event::UserCreated {
                    user: "u".into(),
                    password_hash: "x".into(),
                },
            ),
            (
                STALE,
                2,
                Event::MailboxCreated {
                    user: "u".into(),
                    mailbox: inbox,
                    name: "INBOX".into(),
                    uidvalidity: 1,
                    special_use: None,
                },
            ),
        ]
    }

    /// `stores[0]`, as master, merges the one twin of `C` (UIDVALIDITY 6)
    /// left unbound into a fresh mailbox; every store applies the merge
    /// and ends with the same mailbox `C` (UIDVALIDITY 7, none of `twins`)
    /// showing the message `guid` under UID 1, no mailbox marked, and the
    /// same merkle root.
    fn master_merges_twins_alike(stores: &[Store], twins: &[Id], guid: Id) {
        use crate::config::Role;
        use crate::repl::resolve;
        let master = &stores[0];
        let from = master.wal().last_order() + 1;
        let r = resolve::run_once(master, Role::Master).unwrap();
        assert_eq!((r.merged, r.moved), (1, 1));
        let merge = written_since(master, from);
        let mut ends = Vec::new();
        for (i, store) in stores.iter().enumerate() {
            if i > 0 {
                apply_in_order(store, &merge);
            }
            let v = store.views();
            let mb = v.mailbox_by_name("u", "C").unwrap().expect("the name is bound again");
            assert!(!twins.contains(&mb.id) && mb.uidvalidity == 7);
            let shown: Vec<(u32, Id)> = v.messages(mb.id).unwrap().into_iter().map(|(u, m)| (u, m.guid)).collect();
            assert_eq!(shown, vec![(1, guid)]);
            assert!(v.losers().unwrap().is_empty());
            ends.push((mb, shown, crate::merkle::node_root(&v).unwrap()));
        }
        assert!(
            ends.windows(2)
                .all(|w| w[0].0.id == w[1].0.id && w[0].1 == w[1].1 && w[0].2 == w[1].2),
            "{ends:?}"
        );
    }

    #[test]
    fn a_name_is_never_bound_to_the_twin_of_a_mailbox_clients_saw() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, a, c) = (Id([1; 16]), Id([0xa; 16]), Id([0xc; 16]));
        let create = |id: Id| Event::MailboxCreated {
            user: "u".into(),
            mailbox: id,
            name: "C".into(),
            uidvalidity: 6,
            special_use: None,
        };
        let base = user_u_with_inbox(inbox);
        let a_side = vec![(STALE, 10, create(a)), (STALE, 11, append(a, 1, Id([0x1a; 16])))];
        let c_side = vec![(SLAVE, 10, create(c)), (SLAVE, 11, append(c, 1, Id([0x1c; 16])))];
        // A deletion expunges what the deleting node shows, then removes.
        let remove_a = vec![
            (
                STALE,
                20,
                Event::Expunged {
                    user: "u".into(),
                    mailbox: a,
                    messages: vec![(1, Id([0x1a; 16]))],
                },
            ),
            (
                STALE,
                21,
                Event::MailboxRemoved {
                    user: "u".into(),
                    mailbox: a,
                },
            ),
        ];
        // Both sides, then the removal; one side, its removal, the other.
        let orders = [
            [a_side.clone(), c_side.clone(), remove_a.clone()].concat(),
            [c_side.clone(), a_side.clone(), remove_a.clone()].concat(),
            [a_side.clone(), remove_a.clone(), c_side.clone()].concat(),
        ];
        let stores: Vec<Store> = ["m", "s1", "s2"]
            .into_iter()
            .map(|id| Store::open(&dir.path().join(id), id, wal_options(id)).unwrap())
            .collect();
        for (k, (store, order)) in stores.iter().zip(&orders).enumerate() {
            apply_in_order(store, &base);
            for e in order {
                apply_in_order(store, std::slice::from_ref(e));
                let v = store.views();
                if let Some(id) = v.mailbox_id("u", "C").unwrap() {
                    // Bound to `c` only while `a`'s creation is unknown here.
                    assert!(id == a || v.created_as("u", "C", 6).unwrap() == vec![c], "order {k}: twin bound");
                }
            }
            assert_eq!(store.views().mailbox_id("u", "C").unwrap(), None, "order {k}");
        }
        // The master merges the twin left into a fresh mailbox.
        master_merges_twins_alike(&stores, &[a, c], Id([0x1c; 16]));
    }

    /// A mailbox renamed onto a name under which another mailbox of the
    /// same UIDVALIDITY was created on the other side of a split, in any
    /// order, also after the renamed one was deleted by a third node: no
    /// node ever binds (name, UIDVALIDITY) to a second mailbox, every node
    /// ends with the name bound to neither, and the master's merge gives
    /// every node the same fresh mailbox.
    #[test]
    fn a_rename_onto_a_twin_name_binds_neither_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, a, c) = (Id([1; 16]), Id([0xa; 16]), Id([0xc; 16]));
        let created = |id: Id, name: &str| Event::MailboxCreated {
            user: "u".into(),
            mailbox: id,
            name: name.into(),
            uidvalidity: 6,
            special_use: None,
        };
        let base = user_u_with_inbox(inbox);
        let a_side = vec![(STALE, 10, created(a, "C")), (STALE, 11, append(a, 1, Id([0x1a; 16])))];
        let c_made = vec![(SLAVE, 10, created(c, "D")), (SLAVE, 11, append(c, 1, Id([0x1c; 16])))];
        let c_renamed = vec![(
            SLAVE,
            12,
            Event::MailboxRenamed {
                user: "u".into(),
                mailbox: c,
                name: "C".into(),
            },
        )];
        // A third node, on the slave's side, deletes `c` (still `D` there).
        let c_deleted = vec![
            (
                PROMOTED,
                20,
                Event::Expunged {
                    user: "u".into(),
                    mailbox: c,
                    messages: vec![(1, Id([0x1c; 16]))],
                },
            ),
            (
                PROMOTED,
                21,
                Event::MailboxRemoved {
                    user: "u".into(),
                    mailbox: c,
                },
            ),
        ];
        let orders = [
            [a_side.clone(), c_made.clone(), c_renamed.clone(), c_deleted.clone()].concat(),
            [c_made.clone(), c_renamed.clone(), a_side.clone(), c_deleted.clone()].concat(),
            [c_made.clone(), c_deleted.clone(), c_renamed.clone(), a_side.clone()].concat(),
            [c_made.clone(), c_renamed.clone(), c_deleted.clone(), a_side.clone()].concat(),
            [a_side.clone(), c_made.clone(), c_deleted.clone(), c_renamed.clone()].concat(),
        ];
        let stores: Vec<Store> = ["m", "s1", "s2", "s3", "s4"]
            .into_iter()
            .map(|id| Store::open(&dir.path().join(id), id, wal_options(id)).unwrap())
            .collect();
        for (k, (store, order)) in stores.iter().zip(&orders).enumerate() {
            apply_in_order(store, &base);
            let mut shown = None;
            for e in order {
                apply_in_order(store, std::slice::from_ref(e));
                if let Some(id) = store.views().mailbox_id("u", "C").unwrap() {
                    assert!(shown.is_none_or(|s| s == id), "order {k}: (C, 6) named {shown:?}, then {id:?}");
                    shown = Some(id);
                }
            }
            assert_eq!(store.views().mailbox_id("u", "C").unwrap(), None, "order {k}");
            assert_eq!(store.views().created_as("u", "C", 6).unwrap(), vec![a, c], "order {k}");
        }
        master_merges_twins_alike(&stores, &[a, c], Id([0x1a; 16]));
    }

    /// Of two resolutions in one epoch the smaller (HLC, origin) wins, as
    /// before epochs were ranked; a higher epoch wins whatever its clock.
    #[test]
    fn rank_orders_by_epoch_then_the_earlier_clock() {
        let r = |epoch, hlc, origin| Rank { epoch, hlc, origin };
        assert!(r(0, 1, 1).beats(&r(0, 2, 1)));
        assert!(r(0, 1, 1).beats(&r(0, 1, 2)));
        assert!(!r(0, 2, 1).beats(&r(0, 1, 1)));
        assert!(r(1, 9, 9).beats(&r(0, 1, 1)));
        assert!(!r(0, 1, 1).beats(&r(1, 9, 9)));
        assert!(!r(3, 5, 5).beats(&r(3, 5, 5)));
    }

    /// `W` records written before epochs were ranked (and every record of
    /// epoch 0) keep their bytes and decode as epoch 0; records of a later
    /// epoch carry it after them.
    #[test]
    fn forwarding_records_of_the_old_layout_read_as_epoch_0() {
        let old = postcard::to_allocvec(&(Id([5; 16]), 9u32, (77u64, 3u64))).unwrap();
        let r0 = Rank {
            epoch: 0,
            hlc: 77,
            origin: 3,
        };
        assert_eq!(enc_moved(Id([5; 16]), 9, r0), old);
        assert_eq!(super::super::dec_moved(&old).unwrap(), (Id([5; 16]), 9, r0));
        let r2 = Rank { epoch: 2, ..r0 };
        let new = enc_moved(Id([5; 16]), 9, r2);
        assert_eq!(new.len(), old.len() + 1);
        assert_eq!(super::super::dec_moved(&new).unwrap(), (Id([5; 16]), 9, r2));
        let mut bad = new.clone();
        bad.push(0);
        assert!(super::super::dec_moved(&bad).is_err());
        let mut zero = old.clone();
        zero.push(0);
        assert!(super::super::dec_moved(&zero).is_err());
    }
}
