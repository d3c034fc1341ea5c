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

/// Remove one message and its references.
fn remove_message(v: &mut TxnViews<'_, '_>, mailbox: Id, uid: u32, m: &MessageRec) -> Result<(), ViewError> {
    bump_refcount(v, &m.blob, -1)?;
    bump_content(v, mailbox, &m.blob, -1)?;
    v.delete(&keys::message(mailbox, uid));
    Ok(())
}

fn touch_mailbox(v: &mut TxnViews<'_, '_>, user: &str, mut mb: MailboxRec, modseq: u64) {
    mb.highestmodseq = mb.highestmodseq.max(modseq);
    v.put(&keys::mailbox(user, mb.id), &enc(&mb));
}

fn drop_messages(v: &mut TxnViews<'_, '_>, mailbox: Id) -> Result<(), ViewError> {
    for (uid, m) in v.messages(mailbox)? {
        remove_message(v, mailbox, uid, &m)?;
    }
    Ok(())
}

fn drop_mailbox(v: &mut TxnViews<'_, '_>, user: &str, mb: &MailboxRec) -> Result<(), ViewError> {
    drop_messages(v, mb.id)?;
    v.delete(&keys::mailbox(user, mb.id));
    if v.mailbox_id(user, &mb.name)? == Some(mb.id) {
        v.delete(&keys::name(user, &mb.name));
    }
    Ok(())
}

/// Apply `event`, which the log holds at `at`, to the views.
pub fn apply(v: &mut TxnViews<'_, '_>, at: &Appended, event: &Event) -> Result<(), ViewError> {
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
            let Some(mut mb) = v.mailbox(user, *mailbox)? else {
                return Ok(());
            };
            let m = MessageRec {
                guid: *guid,
                blob: *blob,
                size: *size,
                internal_date: *internal_date,
                tz_minutes: *tz_minutes,
                flags: flags.clone(),
                modseq,
            };
            if let Some(old) = v.message(*mailbox, *uid)? {
                if old.guid == *guid {
                    return Ok(());
                }
                // Two messages under one UID (written on two nodes during a
                // split). Neither is overwritten: the one held stays visible,
                // the other is kept aside with its body and reported, for the
                // master's renumbering to bring back under a fresh UID.
                tracing::warn!(user, uid, mailbox = ?mailbox, "uid collision: message kept aside");
                v.put(&keys::conflict(*mailbox, *uid, *guid), &enc(&m));
                bump_refcount(v, blob, 1)?;
                return Ok(());
            }
            v.put(&keys::message(*mailbox, *uid), &enc(&m));
            bump_refcount(v, blob, 1)?;
            bump_content(v, *mailbox, blob, 1)?;
            mb.uidnext = mb.uidnext.max(uid.saturating_add(1));
            touch_mailbox(v, user, mb, modseq);
        }
        Event::FlagsChanged {
            user,
            mailbox,
            uids,
            op,
            flags,
        } => {
            let Some(mb) = v.mailbox(user, *mailbox)? else {
                return Ok(());
            };
            let mut changed = false;
            for uid in uids {
                if let Some(mut m) = v.message(*mailbox, *uid)? {
                    let new = m.flags.apply(*op, flags);
                    if new != m.flags {
                        m.flags = new;
                        m.modseq = modseq;
                        v.put(&keys::message(*mailbox, *uid), &enc(&m));
                        changed = true;
                    }
                }
            }
            if changed {
                touch_mailbox(v, user, mb, modseq);
            }
        }
        Event::Expunged { user, mailbox, uids } => {
            let Some(mb) = v.mailbox(user, *mailbox)? else {
                return Ok(());
            };
            for uid in uids {
                if let Some(m) = v.message(*mailbox, *uid)? {
                    remove_message(v, *mailbox, *uid, &m)?;
                }
            }
            touch_mailbox(v, user, mb, modseq);
        }
        Event::ConfigSet { key, value } => {
            v.put(&keys::config(key), value.as_bytes());
        }
    }
    Ok(())
}
