//! The one function that changes the views: apply an event at its place in
//! this node's apply order. It is total and deterministic: given the same
//! events in the same order it writes the same bytes, whether live or in
//! replay. It never reads the clock or a random source.

use super::read::{TxnViews, ViewError, ViewRead};
use super::{enc, keys, MailboxRec, MessageRec, UserRec};
use crate::event::{BlobHash, Event, Id};
use wal::Appended;

fn bump_refcount(v: &mut TxnViews<'_, '_>, blob: &BlobHash, delta: i64) -> Result<(), ViewError> {
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

fn bump_content(v: &mut TxnViews<'_, '_>, mailbox: Id, blob: &BlobHash, delta: i64) -> Result<(), ViewError> {
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
fn remove_message(v: &mut TxnViews<'_, '_>, mailbox: Id, uid: u32, m: &MessageRec, modseq: Option<u64>) -> Result<(), ViewError> {
    bump_refcount(v, &m.blob, -1)?;
    bump_content(v, mailbox, &m.blob, -1)?;
    v.delete(&keys::message(mailbox, uid));
    v.delete(&keys::change(mailbox, m.modseq, uid));
    if let Some(modseq) = modseq {
        v.put(&keys::change(mailbox, modseq, uid), &[1]);
    }
    Ok(())
}

/// A message changed at `modseq` (it was at `old` before, if it existed).
fn note_change(v: &mut TxnViews<'_, '_>, mailbox: Id, uid: u32, old: Option<u64>, modseq: u64) {
    if let Some(old) = old {
        v.delete(&keys::change(mailbox, old, uid));
    }
    v.put(&keys::change(mailbox, modseq, uid), &[0]);
}

fn touch_mailbox(v: &mut TxnViews<'_, '_>, user: &str, mut mb: MailboxRec, modseq: u64) {
    mb.highestmodseq = mb.highestmodseq.max(modseq);
    v.put(&keys::mailbox(user, mb.id), &enc(&mb));
}

fn drop_messages(v: &mut TxnViews<'_, '_>, mailbox: Id) -> Result<(), ViewError> {
    for (uid, m) in v.messages(mailbox)? {
        remove_message(v, mailbox, uid, &m, None)?;
    }
    for (k, _) in v.vscan(&keys::changes_prefix(mailbox))? {
        v.delete(&k);
    }
    Ok(())
}

fn drop_mailbox(v: &mut TxnViews<'_, '_>, user: &str, mb: &MailboxRec) -> Result<(), ViewError> {
    drop_messages(v, mb.id)?;
    // Messages kept aside in this mailbox go with it.
    let mut prefix = keys::conflicts_prefix();
    prefix.extend_from_slice(&mb.id.0);
    for (k, b) in v.vscan(&prefix)? {
        let m: MessageRec = postcard::from_bytes(&b).map_err(|e| ViewError::Corrupt {
            key: hex::encode(&k),
            reason: e.to_string(),
        })?;
        bump_refcount(v, &m.blob, -1)?;
        v.delete(&k);
    }
    v.delete(&keys::mailbox(user, mb.id));
    if v.mailbox_id(user, &mb.name)? == Some(mb.id) {
        v.delete(&keys::name(user, &mb.name));
    }
    Ok(())
}

/// A message kept aside under (mailbox, uid, guid).
fn conflict(v: &TxnViews<'_, '_>, mailbox: Id, uid: u32, guid: Id) -> Result<Option<MessageRec>, ViewError> {
    let k = keys::conflict(mailbox, uid, guid);
    match v.vget(&k)? {
        Some(b) => Ok(Some(postcard::from_bytes(&b).map_err(|e| ViewError::Corrupt {
            key: hex::encode(&k),
            reason: e.to_string(),
        })?)),
        None => Ok(None),
    }
}

/// Apply `event`, which the log holds at `at`, to the views, and keep their
/// merkle summaries in step.
pub fn apply(v: &mut TxnViews<'_, '_>, at: &Appended, event: &Event) -> Result<(), ViewError> {
    apply_views(v, at, event)?;
    crate::merkle::update(v, event)
}

fn apply_views(v: &mut TxnViews<'_, '_>, at: &Appended, event: &Event) -> Result<(), ViewError> {
    let modseq = at.order;
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
            for mb in v.mailboxes(user)? {
                drop_mailbox(v, user, &mb)?;
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
            let mb = MailboxRec {
                id: *mailbox,
                name: name.clone(),
                uidvalidity: *uidvalidity,
                uidnext: 1,
                highestmodseq: modseq,
                special_use: *special_use,
            };
            v.put(&keys::mailbox(user, *mailbox), &enc(&mb));
            v.put(&keys::name(user, name), &mailbox.0);
            let last = v.last_uidvalidity(user)?;
            v.put(&keys::uidvalidity(user), &last.max(*uidvalidity).to_be_bytes());
        }
        Event::MailboxRenamed { user, mailbox, name } => {
            if let Some(mut mb) = v.mailbox(user, *mailbox)? {
                if v.mailbox_id(user, &mb.name)? == Some(mb.id) {
                    v.delete(&keys::name(user, &mb.name));
                }
                mb.name = name.clone();
                v.put(&keys::name(user, name), &mailbox.0);
                touch_mailbox(v, user, mb, modseq);
            }
        }
        Event::MailboxDeleted { user, mailbox } => {
            if let Some(mb) = v.mailbox(user, *mailbox)? {
                drop_mailbox(v, user, &mb)?;
            }
        }
        Event::Subscribed { user, name, subscribed } => {
            if *subscribed {
                v.put(&keys::subscription(user, name), &[]);
            } else {
                v.delete(&keys::subscription(user, name));
            }
        }
        Event::MessageAppended {
            user,
            mailbox,
            uid,
            guid,
            blob,
            size,
            internal_date,
            tz_minutes,
            flags,
        } => {
            let m = MessageRec {
                guid: *guid,
                blob: *blob,
                size: *size,
                internal_date: *internal_date,
                tz_minutes: *tz_minutes,
                flags: flags.clone(),
                modseq,
                clocks: Vec::new(),
                set_clock: (at.hlc, at.origin.0),
            };
            let Some(mut mb) = v.mailbox(user, *mailbox)? else {
                // Delivered into a mailbox deleted concurrently on another
                // node: kept aside, never dropped.
                tracing::warn!(user, uid, mailbox = ?mailbox, "message for a missing mailbox kept aside");
                v.put(&keys::conflict(*mailbox, *uid, *guid), &enc(&m));
                bump_refcount(v, blob, 1)?;
                return Ok(());
            };
            let held = v.message(*mailbox, *uid)?;
            if held.as_ref().is_some_and(|h| h.guid == *guid) {
                return Ok(());
            }
            // Two messages under one UID (written on two nodes during a
            // split), or a UID below UIDNEXT whose first message was already
            // expunged here: neither may be shown under that UID. The
            // message is kept aside with its body and reported, for the
            // master's renumbering to bring back under a fresh UID.
            if held.is_some() || *uid < mb.uidnext {
                tracing::warn!(user, uid, mailbox = ?mailbox, "uid collision: message kept aside");
                v.put(&keys::conflict(*mailbox, *uid, *guid), &enc(&m));
                bump_refcount(v, blob, 1)?;
                mb.uidnext = mb.uidnext.max(uid.saturating_add(1));
                touch_mailbox(v, user, mb, modseq);
                return Ok(());
            }
            v.put(&keys::message(*mailbox, *uid), &enc(&m));
            note_change(v, *mailbox, *uid, None, modseq);
            bump_refcount(v, blob, 1)?;
            bump_content(v, *mailbox, blob, 1)?;
            mb.uidnext = mb.uidnext.max(uid.saturating_add(1));
            touch_mailbox(v, user, mb, modseq);
        }
        Event::FlagsChanged {
            user,
            mailbox,
            messages,
            op,
            flags,
        } => {
            let Some(mb) = v.mailbox(user, *mailbox)? else {
                return Ok(());
            };
            let ts = (at.hlc, at.origin.0);
            let mut changed = false;
            for (uid, guid) in messages {
                // The message is named by GUID: under its UID, or kept aside.
                let (key, mut m) = match v.message(*mailbox, *uid)? {
                    Some(m) if m.guid == *guid => (keys::message(*mailbox, *uid), m),
                    _ => match conflict(v, *mailbox, *uid, *guid)? {
                        Some(m) => (keys::conflict(*mailbox, *uid, *guid), m),
                        // Expunged: an expunge beats a concurrent flag change.
                        None => continue,
                    },
                };
                if m.merge_flags(*op, flags, ts) {
                    if key == keys::message(*mailbox, *uid) {
                        note_change(v, *mailbox, *uid, Some(m.modseq), modseq);
                    }
                    m.modseq = modseq;
                    changed = true;
                }
                v.put(&key, &enc(&m));
            }
            if changed {
                touch_mailbox(v, user, mb, modseq);
            }
        }
        Event::Expunged { user, mailbox, messages } => {
            let Some(mb) = v.mailbox(user, *mailbox)? else {
                return Ok(());
            };
            for (uid, guid) in messages {
                match v.message(*mailbox, *uid)? {
                    Some(m) if m.guid == *guid => remove_message(v, *mailbox, *uid, &m, Some(modseq))?,
                    _ => {
                        if let Some(m) = conflict(v, *mailbox, *uid, *guid)? {
                            bump_refcount(v, &m.blob, -1)?;
                            v.delete(&keys::conflict(*mailbox, *uid, *guid));
                        }
                    }
                }
            }
            touch_mailbox(v, user, mb, modseq);
        }
        Event::ConfigSet { key, value } => {
            v.put(&keys::config(key), value.as_bytes());
        }
        Event::MessageRestored {
            user,
            mailbox,
            uid,
            guid,
            blob,
            size,
            internal_date,
            tz_minutes,
            flags,
        } => {
            let m = MessageRec {
                guid: *guid,
                blob: *blob,
                size: *size,
                internal_date: *internal_date,
                tz_minutes: *tz_minutes,
                flags: flags.clone(),
                modseq,
                clocks: Vec::new(),
                set_clock: (at.hlc, at.origin.0),
            };
            restore_message(v, user, *mailbox, *uid, m)?;
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

/// A message restored under its UID: a free UID takes it (whatever
/// UIDNEXT says), the same GUID there takes its fields, another GUID
/// there keeps it aside.
fn restore_message(v: &mut TxnViews<'_, '_>, user: &str, mailbox: Id, uid: u32, m: MessageRec) -> Result<(), ViewError> {
    let Some(mut mb) = v.mailbox(user, mailbox)? else {
        tracing::warn!(user, uid, mailbox = ?mailbox, "restored message for a missing mailbox kept aside");
        v.put(&keys::conflict(mailbox, uid, m.guid), &enc(&m));
        return bump_refcount(v, &m.blob, 1);
    };
    let modseq = m.modseq;
    match v.message(mailbox, uid)? {
        Some(h) if h.guid != m.guid => {
            tracing::warn!(user, uid, mailbox = ?mailbox, "restored message meets another under its uid: kept aside");
            v.put(&keys::conflict(mailbox, uid, m.guid), &enc(&m));
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
            v.put(&keys::message(mailbox, uid), &enc(&m));
        }
        None => {
            v.put(&keys::message(mailbox, uid), &enc(&m));
            note_change(v, mailbox, uid, None, modseq);
            bump_refcount(v, &m.blob, 1)?;
            bump_content(v, mailbox, &m.blob, 1)?;
        }
    }
    mb.uidnext = mb.uidnext.max(uid.saturating_add(1));
    touch_mailbox(v, user, mb, modseq);
    Ok(())
}
