//! Reading the views, the same way from a committed store and from inside a
//! transaction (which also sees the writes pending in its group).

use super::{keys, CollisionRec, MailboxRec, MessageRec, ResolutionRec, UserRec};
use crate::event::{BlobHash, Id};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use wal::{Cf, KeyValues, Txn, Wal, WalError};

/// Errors reading views.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("view record {key} does not decode: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A record of `key` whose bytes do not decode.
fn undecodable(key: &[u8], e: postcard::Error) -> ViewError {
    ViewError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    }
}

fn dec<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, ViewError> {
    postcard::from_bytes(v).map_err(|e| undecodable(key, e))
}

/// A message record ([`MessageRec::decode`]).
fn dec_msg(key: &[u8], v: &[u8]) -> Result<MessageRec, ViewError> {
    MessageRec::decode(v).map_err(|e| undecodable(key, e))
}

/// The UID of a message key.
fn message_uid(k: &[u8]) -> Result<u32, ViewError> {
    keys::uid_of(k).ok_or_else(|| ViewError::Corrupt {
        key: hex::encode(k),
        reason: "message key too short".into(),
    })
}

/// Read access to the views.
pub trait ViewRead {
    fn vget(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WalError>;
    fn vscan(&self, prefix: &[u8]) -> Result<KeyValues, WalError>;
    /// Every key with `prefix`, in key order, handed to `f` until it
    /// returns false.
    fn vscan_each(&self, prefix: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), WalError> {
        self.vscan_from_each(prefix, prefix, f)
    }
    /// Keys with `prefix` from `start` on (`start` begins with `prefix`),
    /// in key order, handed to `f` until it returns false; readers that
    /// can avoid copying each key and value out do.
    fn vscan_from_each(&self, prefix: &[u8], start: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), WalError> {
        for (k, v) in self.vscan(prefix)? {
            if k.as_slice() >= start && !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }
    /// Several keys at once, in the order given; `sorted`: they ascend.
    fn vget_many(&self, keys: &[Vec<u8>], _sorted: bool) -> Result<Vec<Option<Vec<u8>>>, WalError> {
        keys.iter().map(|k| self.vget(k)).collect()
    }

    fn user(&self, user: &str) -> Result<Option<UserRec>, ViewError> {
        let k = keys::user(user);
        self.vget(&k)?.map(|v| dec(&k, &v)).transpose()
    }

    fn users(&self) -> Result<Vec<String>, ViewError> {
        Ok(self
            .vscan(&keys::users_prefix())?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k[1..]).into_owned())
            .collect())
    }

    fn mailbox(&self, user: &str, id: Id) -> Result<Option<MailboxRec>, ViewError> {
        let k = keys::mailbox(user, id);
        self.vget(&k)?.map(|v| dec(&k, &v)).transpose()
    }

    fn mailbox_id(&self, user: &str, name: &str) -> Result<Option<Id>, ViewError> {
        let k = keys::name(user, name);
        match self.vget(&k)? {
            Some(v) => {
                let id: [u8; 16] = v.as_slice().try_into().map_err(|_| ViewError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "mailbox id is not 16 bytes".into(),
                })?;
                Ok(Some(Id(id)))
            }
            None => Ok(None),
        }
    }

    fn mailbox_by_name(&self, user: &str, name: &str) -> Result<Option<MailboxRec>, ViewError> {
        match self.mailbox_id(user, name)? {
            Some(id) => self.mailbox(user, id),
            None => Ok(None),
        }
    }

    /// A user's mailboxes as clients see them, sorted by name: a mailbox
    /// that lost its name to another of that name (both created during a
    /// split) is left out until the master merges it into that one.
    fn mailboxes(&self, user: &str) -> Result<Vec<MailboxRec>, ViewError> {
        let mut v = self.all_mailboxes(user)?;
        let mut keep = Vec::with_capacity(v.len());
        for mb in v.drain(..) {
            if self.mailbox_id(user, &mb.name)? == Some(mb.id) {
                keep.push(mb);
            }
        }
        Ok(keep)
    }

    /// Every mailbox record of a user, those hidden by a name conflict
    /// included, sorted by name then id.
    fn all_mailboxes(&self, user: &str) -> Result<Vec<MailboxRec>, ViewError> {
        let mut v: Vec<MailboxRec> = self
            .vscan(&keys::mailboxes_prefix(user))?
            .into_iter()
            .map(|(k, v)| dec(&k, &v))
            .collect::<Result<_, _>>()?;
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    /// Messages kept aside under (mailbox, uid), by GUID.
    fn conflicts_at(&self, mailbox: Id, uid: u32) -> Result<Vec<(Id, MessageRec)>, ViewError> {
        self.vscan(&keys::conflicts_at(mailbox, uid))?
            .into_iter()
            .map(|(k, v)| {
                let (_, _, guid) = keys::conflict_of(&k).ok_or_else(|| ViewError::Corrupt {
                    key: hex::encode(&k),
                    reason: "conflict key too short".into(),
                })?;
                Ok((guid, dec_msg(&k, &v)?))
            })
            .collect()
    }

    /// (uid, guid) of every message kept aside in one mailbox.
    fn conflicts_in(&self, mailbox: Id) -> Result<Vec<(u32, Id)>, ViewError> {
        self.vscan(&keys::conflicts_in(mailbox))?
            .into_iter()
            .map(|(k, _)| {
                let (_, uid, guid) = keys::conflict_of(&k).ok_or_else(|| ViewError::Corrupt {
                    key: hex::encode(&k),
                    reason: "conflict key too short".into(),
                })?;
                Ok((uid, guid))
            })
            .collect()
    }

    /// Every message kept aside: (mailbox, uid, guid, record).
    fn all_conflicts(&self) -> Result<Vec<(Id, u32, Id, MessageRec)>, ViewError> {
        self.vscan(&keys::conflicts_prefix())?
            .into_iter()
            .map(|(k, v)| {
                let (mb, uid, guid) = keys::conflict_of(&k).ok_or_else(|| ViewError::Corrupt {
                    key: hex::encode(&k),
                    reason: "conflict key too short".into(),
                })?;
                Ok((mb, uid, guid, dec_msg(&k, &v)?))
            })
            .collect()
    }

    fn collision(&self, mailbox: Id, uid: u32) -> Result<Option<CollisionRec>, ViewError> {
        let k = keys::collision(mailbox, uid);
        self.vget(&k)?.map(|v| dec(&k, &v)).transpose()
    }

    /// UID collisions waiting for the master: (mailbox, uid, record).
    fn collisions(&self) -> Result<Vec<(Id, u32, CollisionRec)>, ViewError> {
        self.vscan(&keys::collisions_prefix())?
            .into_iter()
            .map(|(k, v)| {
                let (mb, uid) = keys::collision_of(&k).ok_or_else(|| ViewError::Corrupt {
                    key: hex::encode(&k),
                    reason: "collision key too short".into(),
                })?;
                Ok((mb, uid, dec(&k, &v)?))
            })
            .collect()
    }

    /// Where the master moved the message (mailbox, uid, guid), if it did,
    /// and the rank of the resolution that counts.
    fn moved_to(&self, mailbox: Id, uid: u32, guid: Id) -> Result<Option<(Id, u32, super::Rank)>, ViewError> {
        let k = keys::moved(mailbox, uid, guid);
        self.vget(&k)?
            .map(|v| {
                super::dec_moved(&v).map_err(|reason| ViewError::Corrupt {
                    key: hex::encode(&k),
                    reason,
                })
            })
            .transpose()
    }

    /// Messages appended pending, awaiting the master: (mailbox, guid,
    /// record), in the order they were appended ((HLC, origin) of the
    /// append), so that the master gives several waiting messages UIDs in
    /// the order they arrived, not in the order of their GUIDs.
    fn pendings(&self) -> Result<Vec<(Id, Id, super::PendingRec)>, ViewError> {
        let mut out = self
            .vscan(&keys::pendings_prefix())?
            .into_iter()
            .map(|(k, v)| {
                let (mb, guid) = keys::mailbox_guid_of(&k).ok_or_else(|| ViewError::Corrupt {
                    key: hex::encode(&k),
                    reason: "pending key is not 33 bytes".into(),
                })?;
                Ok((mb, guid, dec::<super::PendingRec>(&k, &v)?))
            })
            .collect::<Result<Vec<_>, ViewError>>()?;
        out.sort_by_key(|(mb, guid, rec)| (rec.since, *mb, *guid));
        Ok(out)
    }

    /// The UID the message `guid` is shown under in `mailbox`, if it is.
    fn uid_of_guid(&self, mailbox: Id, guid: Id) -> Result<Option<u32>, ViewError> {
        let k = keys::guid(mailbox, guid);
        match self.vget(&k)? {
            None => Ok(None),
            Some(b) => <[u8; 4]>::try_from(b.as_slice())
                .map(|b| Some(u32::from_be_bytes(b)))
                .map_err(|_| ViewError::Corrupt {
                    key: hex::encode(&k),
                    reason: "GUID index value is not 4 bytes".into(),
                }),
        }
    }

    /// Where a message appended pending to `mailbox` is shown now, once
    /// placed: (mailbox, uid), following moves.
    fn placed(&self, mailbox: Id, guid: Id) -> Result<Option<(Id, u32)>, ViewError> {
        let (mut mb, mut uid) = (mailbox, 0u32);
        for _ in 0..256 {
            match self.moved_to(mb, uid, guid)? {
                Some((m, u, _)) => (mb, uid) = (m, u),
                None => break,
            }
        }
        if uid != 0 && self.message(mb, uid)?.is_some_and(|m| m.guid == guid) {
            return Ok(Some((mb, uid)));
        }
        Ok(None)
    }

    /// The mailbox a merged (and deleted) mailbox went into.
    fn merged_into(&self, mailbox: Id) -> Result<Option<Id>, ViewError> {
        let k = keys::merged(mailbox);
        self.vget(&k)?.map(|v| dec(&k, &v)).transpose()
    }

    /// (hlc, origin) of the event that gave a mailbox its current name.
    fn name_clock(&self, user: &str, mailbox: Id) -> Result<(u64, u64), ViewError> {
        let k = keys::name_clock(user, mailbox);
        Ok(self.vget(&k)?.map(|v| dec(&k, &v)).transpose()?.unwrap_or((0, 0)))
    }

    /// Mailboxes hidden by a name conflict: (user, mailbox).
    fn losers(&self) -> Result<Vec<(String, Id)>, ViewError> {
        let mut out = Vec::new();
        for (k, _) in self.vscan(&keys::losers_prefix())? {
            // L user 00 id
            if k.len() < 18 {
                return Err(ViewError::Corrupt {
                    key: hex::encode(&k),
                    reason: "name conflict key too short".into(),
                });
            }
            let (u, id) = k.split_at(k.len() - 16);
            let user = String::from_utf8_lossy(&u[1..u.len() - 1]).into_owned();
            out.push((user, Id(id.try_into().expect("16 bytes"))));
        }
        Ok(out)
    }

    /// Messages the master moved, oldest first.
    fn resolutions(&self) -> Result<Vec<ResolutionRec>, ViewError> {
        self.vscan(&keys::resolutions_prefix())?
            .into_iter()
            .map(|(k, v)| dec(&k, &v))
            .collect()
    }

    /// A mailbox's messages in UID order.
    fn messages(&self, mailbox: Id) -> Result<Vec<(u32, MessageRec)>, ViewError> {
        self.vscan(&keys::messages_prefix(mailbox))?
            .into_iter()
            .map(|(k, v)| Ok((message_uid(&k)?, dec_msg(&k, &v)?)))
            .collect()
    }

    /// A mailbox's messages in UID order, each handed to `f` as it is
    /// decoded (readers that can walk without copying each record out
    /// do).
    fn messages_each(&self, mailbox: Id, f: &mut dyn FnMut(u32, MessageRec)) -> Result<(), ViewError> {
        let mut bad = None;
        self.vscan_each(
            &keys::messages_prefix(mailbox),
            &mut |k, v| match message_uid(k).and_then(|uid| Ok((uid, dec_msg(k, v)?))) {
                Ok((uid, m)) => {
                    f(uid, m);
                    true
                }
                Err(e) => {
                    bad = Some(e);
                    false
                }
            },
        )?;
        bad.map_or(Ok(()), Err)
    }

    /// A mailbox's messages in UID order, with their flags only: what
    /// SELECT needs, without decoding the rest of each record (its flag
    /// clocks are a string per flag ever touched).
    fn message_flags(&self, mailbox: Id) -> Result<Vec<(u32, crate::event::Flags)>, ViewError> {
        let mut out = Vec::new();
        let mut bad = None;
        self.vscan_each(&keys::messages_prefix(mailbox), &mut |k, v| {
            let head = message_uid(k).and_then(|uid| {
                let flags = MessageRec::decode_flags(v).map_err(|e| ViewError::Corrupt {
                    key: hex::encode(k),
                    reason: e.to_string(),
                })?;
                Ok((uid, flags))
            });
            match head {
                Ok(h) => {
                    out.push(h);
                    true
                }
                Err(e) => {
                    bad = Some(e);
                    false
                }
            }
        })?;
        match bad {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// The messages at `uids` of a mailbox (`None` where there is none), in
    /// one batched lookup.
    fn messages_at(&self, mailbox: Id, uids: &[u32]) -> Result<Vec<Option<MessageRec>>, ViewError> {
        let keys: Vec<Vec<u8>> = uids.iter().map(|u| keys::message(mailbox, *u)).collect();
        let sorted = uids.windows(2).all(|w| w[0] < w[1]);
        self.vget_many(&keys, sorted)?
            .into_iter()
            .zip(&keys)
            .map(|(v, k)| v.map(|v| dec_msg(k, &v)).transpose())
            .collect()
    }

    /// The messages at `uids` (ascending) of a mailbox, like
    /// [`ViewRead::messages_at`]; UIDs that lie close together (as a
    /// SEARCH over a whole mailbox reads them) are read with one walk over
    /// their range instead of a lookup each.
    fn messages_in(&self, mailbox: Id, uids: &[u32]) -> Result<Vec<Option<MessageRec>>, ViewError> {
        let (Some(first), Some(last)) = (uids.first(), uids.last()) else {
            return Ok(Vec::new());
        };
        let dense = uids.windows(2).all(|w| w[0] < w[1]) && ((last - first) as usize) < uids.len().saturating_mul(2);
        if !dense {
            return self.messages_at(mailbox, uids);
        }
        let mut out: Vec<Option<MessageRec>> = Vec::with_capacity(uids.len());
        let mut want = uids.iter().peekable();
        let mut bad = None;
        self.vscan_from_each(&keys::messages_prefix(mailbox), &keys::message(mailbox, *first), &mut |k, v| {
            let uid = match message_uid(k) {
                Ok(u) => u,
                Err(e) => {
                    bad = Some(e);
                    return false;
                }
            };
            while want.next_if(|w| **w < uid).is_some() {
                out.push(None);
            }
            if want.next_if(|w| **w == uid).is_some() {
                match dec_msg(k, v) {
                    Ok(m) => out.push(Some(m)),
                    Err(e) => {
                        bad = Some(e);
                        return false;
                    }
                }
            }
            want.peek().is_some()
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        out.resize_with(uids.len(), || None);
        Ok(out)
    }

    fn message(&self, mailbox: Id, uid: u32) -> Result<Option<MessageRec>, ViewError> {
        let k = keys::message(mailbox, uid);
        self.vget(&k)?.map(|v| dec_msg(&k, &v)).transpose()
    }

    fn subscriptions(&self, user: &str) -> Result<Vec<String>, ViewError> {
        let p = keys::subscriptions_prefix(user);
        Ok(self
            .vscan(&p)?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k[p.len()..]).into_owned())
            .collect())
    }

    /// Whether this node holds a body. The refcount key is written in the
    /// same batch as a body's first reference and stays (at zero) while
    /// the body does, so this answers without reading the body itself.
    fn holds_body(&self, blob: &BlobHash) -> Result<bool, ViewError> {
        Ok(self.vget(&keys::refcount(blob))?.is_some())
    }

    fn refcount(&self, blob: &BlobHash) -> Result<u64, ViewError> {
        let k = keys::refcount(blob);
        match self.vget(&k)? {
            Some(v) => Ok(u64::from_be_bytes(v.as_slice().try_into().map_err(|_| ViewError::Corrupt {
                key: hex::encode(&k),
                reason: "refcount is not 8 bytes".into(),
            })?)),
            None => Ok(0),
        }
    }

    /// How many messages of `mailbox` have this body.
    fn content_count(&self, mailbox: Id, blob: &BlobHash) -> Result<u32, ViewError> {
        Ok(self
            .vget(&keys::content(mailbox, blob))?
            .and_then(|v| v.as_slice().try_into().ok())
            .map(u32::from_be_bytes)
            .unwrap_or(0))
    }

    /// Every mailbox id created as (name, uidvalidity), sorted (see
    /// [`keys::created`]).
    fn created_as(&self, user: &str, name: &str, uidvalidity: u32) -> Result<Vec<Id>, ViewError> {
        let k = keys::created(user, name, uidvalidity);
        match self.vget(&k)? {
            Some(b) => postcard::from_bytes(&b).map_err(|e| ViewError::Corrupt {
                key: hex::encode(&k),
                reason: format!("creation record does not decode: {e}"),
            }),
            None => Ok(Vec::new()),
        }
    }

    /// The UIDVALIDITY `mailbox` had when it was deleted, if it was (see
    /// [`keys::gone`]).
    fn gone_uidvalidity(&self, user: &str, mailbox: Id) -> Result<Option<u32>, ViewError> {
        let k = keys::gone(user, mailbox);
        match self.vget(&k)? {
            Some(b) => <[u8; 4]>::try_from(b.as_slice())
                .map(|b| Some(u32::from_be_bytes(b)))
                .map_err(|_| ViewError::Corrupt {
                    key: hex::encode(&k),
                    reason: format!("a deleted mailbox's UIDVALIDITY has {} bytes, not 4", b.len()),
                }),
            None => Ok(None),
        }
    }

    fn last_uidvalidity(&self, user: &str) -> Result<u32, ViewError> {
        match self.vget(&keys::uidvalidity(user))? {
            Some(v) => Ok(v.as_slice().try_into().map(u32::from_be_bytes).unwrap_or(0)),
            None => Ok(0),
        }
    }

    fn config(&self, key: &str) -> Result<Option<String>, ViewError> {
        Ok(self.vget(&keys::config(key))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The user's quota, if one was ever set.
    fn quota(&self, user: &str) -> Result<Option<super::QuotaRec>, ViewError> {
        let k = keys::quota(user);
        self.vget(&k)?.map(|v| dec(&k, &v)).transpose()
    }

    /// What counts against the user's quota: (bytes, messages) over every
    /// mailbox of the user, the messages shown and those kept aside in it
    /// (pending placement or a UID collision) alike. A pure function of the
    /// views, so equal on every node whose views are equal.
    fn usage(&self, user: &str) -> Result<(u64, u64), ViewError> {
        let (mut bytes, mut count) = (0u64, 0u64);
        for mb in self.all_mailboxes(user)? {
            for prefix in [keys::messages_prefix(mb.id), keys::conflicts_in(mb.id)] {
                for (k, v) in self.vscan(&prefix)? {
                    // The record's first fields only: guid, blob, size.
                    let (_, _, size) = postcard::take_from_bytes::<(Id, BlobHash, u64)>(&v)
                        .map(|(head, _)| head)
                        .map_err(|e| ViewError::Corrupt {
                            key: hex::encode(&k),
                            reason: e.to_string(),
                        })?;
                    bytes = bytes.saturating_add(size);
                    count += 1;
                }
            }
        }
        Ok((bytes, count))
    }

    /// (hlc, origin) of the `ConfigSet` that wrote a key's value, if any.
    fn config_clock(&self, key: &str) -> Result<Option<(u64, u64)>, ViewError> {
        let k = keys::config_clock(key);
        self.vget(&k)?.map(|v| dec(&k, &v)).transpose()
    }
}

/// The committed views of a store.
#[derive(Clone)]
pub struct Views {
    pub wal: Arc<Wal>,
    pub cf: Cf,
    pub blobs: Cf,
}

impl Views {
    /// (uid, expunged) of every message of `mailbox` changed after
    /// `modseq`, in change order.
    pub fn changes_since(&self, mailbox: Id, modseq: u64) -> Result<Vec<(u32, bool)>, ViewError> {
        let prefix = keys::changes_prefix(mailbox);
        let start = keys::change(mailbox, modseq.saturating_add(1), 0);
        self.wal
            .scan_from(self.cf, &prefix, &start)?
            .into_iter()
            .map(|(k, v)| {
                let (_, uid) = keys::change_of(&k).ok_or_else(|| ViewError::Corrupt {
                    key: hex::encode(&k),
                    reason: "change key too short".into(),
                })?;
                Ok((uid, v.first() == Some(&1)))
            })
            .collect()
    }
}

impl ViewRead for Views {
    fn vget(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WalError> {
        self.wal.get(self.cf, key)
    }
    fn vget_many(&self, keys: &[Vec<u8>], sorted: bool) -> Result<Vec<Option<Vec<u8>>>, WalError> {
        self.wal.multi_get(self.cf, keys, sorted)
    }
    fn vscan(&self, prefix: &[u8]) -> Result<KeyValues, WalError> {
        self.wal.scan_prefix(self.cf, prefix)
    }
    fn vscan_from_each(&self, prefix: &[u8], start: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), WalError> {
        self.wal.scan_from_each(self.cf, prefix, start, f)
    }
}

/// The views as seen from inside a transaction.
pub struct TxnViews<'t, 'a> {
    pub txn: &'t mut Txn<'a>,
    pub cf: Cf,
}

impl ViewRead for TxnViews<'_, '_> {
    fn vget(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WalError> {
        self.txn.get(self.cf, key)
    }
    fn vscan(&self, prefix: &[u8]) -> Result<KeyValues, WalError> {
        self.txn.scan_prefix(self.cf, prefix)
    }
}

impl TxnViews<'_, '_> {
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.txn.put(self.cf, key, value)
    }
    pub fn delete(&mut self, key: &[u8]) {
        self.txn.delete(self.cf, key)
    }
}

/// Write access to the views, for the single writer `views::apply`: a
/// transaction's views ([`TxnViews`]), or a rebuild's views held in memory
/// (`crate::replay`).
pub trait ViewWrite: ViewRead {
    fn put(&mut self, key: &[u8], value: &[u8]);
    fn delete(&mut self, key: &[u8]);
}

impl ViewWrite for TxnViews<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        TxnViews::put(self, key, value)
    }
    fn delete(&mut self, key: &[u8]) {
        TxnViews::delete(self, key)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{FlagOp, Flags};
    use crate::mutate::{self, NewMessage};
    use crate::store::{wal_options, Store};

    /// The head read past its arrays gives the flags serde decodes, whatever the
    /// varints' widths, and refuses a record cut before its flags end.
    #[test]
    fn head_flags_read_what_serde_decodes() {
        let flagsets = [
            vec![],
            vec!["\\Seen".to_string()],
            vec!["\\Answered".into(), "$Label1".into(), "Ünïcode".into(), "x".repeat(300)],
        ];
        for (i, f) in flagsets.iter().enumerate() {
            for (size, date, tz) in [(0u64, 0i64, 0i16), (u64::MAX, i64::MIN, i16::MIN), (1 << 40, -5, 120)] {
                let rec = MessageRec {
                    guid: Id([i as u8; 16]),
                    blob: BlobHash([0xff; 32]),
                    size,
                    internal_date: date,
                    tz_minutes: tz,
                    flags: Flags::new(f.clone()),
                    modseq: 7,
                    clocks: vec![("\\Seen".into(), 1, 2)],
                    set_clock: (3, 4),
                };
                let v = postcard::to_allocvec(&rec).unwrap();
                assert_eq!(MessageRec::decode_flags(&v).unwrap(), rec.flags);
                let end = postcard::to_allocvec(&(rec.guid, rec.blob, size, date, tz, &rec.flags))
                    .unwrap()
                    .len();
                for cut in 0..end {
                    assert!(MessageRec::decode_flags(&v[..cut]).is_err(), "cut at {cut} of {end}");
                }
            }
        }
        // A flag that is not UTF-8.
        let mut v = postcard::to_allocvec(&(Id([0; 16]), BlobHash([0; 32]), 1u64, 2i64, 3i16, vec![vec![0xffu8]])).unwrap();
        assert!(MessageRec::decode_flags(&v).is_err());
        // A count far beyond the bytes left.
        v.truncate(16 + 32 + 3);
        v.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(MessageRec::decode_flags(&v).is_err());
    }

    /// `message_flags` reads the same flags as `messages`, for records with
    /// flag clocks after their flags (what it leaves undecoded).
    #[test]
    fn message_flags_equal_the_full_records_flags() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n", wal_options("n")).unwrap();
        store.run_blocking(|t, c| mutate::create_user(t, c, "u", "h".into(), 1)).unwrap();
        for i in 0..5 {
            let flags = if i % 2 == 0 {
                Flags::new(["\\Seen", "$Work"])
            } else {
                Flags::default()
            };
            let m = NewMessage::new(format!("Subject: {i}\r\n\r\nx\r\n").into_bytes(), flags, 1);
            store
                .run_blocking(move |t, c| mutate::append(t, c, "u", "INBOX", &m).map(|_| ()))
                .unwrap();
        }
        let v = store.views();
        let mb = v.mailbox_by_name("u", "INBOX").unwrap().unwrap();
        store
            .run_blocking(move |t, c| {
                mutate::store_flags(t, c, "u", mb.id, &[2, 3], FlagOp::Add, &Flags::new(["\\Flagged", "$Later"])).map(|_| ())
            })
            .unwrap();
        let full: Vec<(u32, Flags)> = v.messages(mb.id).unwrap().into_iter().map(|(u, m)| (u, m.flags)).collect();
        assert!(
            v.messages(mb.id).unwrap().iter().any(|(_, m)| !m.clocks.is_empty()),
            "records carry clocks"
        );
        assert_eq!(v.message_flags(mb.id).unwrap(), full);
        assert_eq!(full.len(), 5);
        // A batched lookup, in order, in any order, and with a UID that
        // names nothing, equals one `message` each.
        for uids in [vec![1, 2, 3, 4, 5], vec![5, 9, 1, 3]] {
            let one: Vec<Option<MessageRec>> = uids.iter().map(|u| v.message(mb.id, *u).unwrap()).collect();
            assert_eq!(v.messages_at(mb.id, &uids).unwrap(), one);
        }
        assert!(v.messages_at(mb.id, &[9]).unwrap()[0].is_none());
        // A walk over a range equals the lookups too: dense, with UIDs
        // that name nothing before, between and after (the walk stops
        // early or runs out), and sparse (read by lookups).
        store
            .run_blocking(move |t, c| mutate::expunge(t, c, "u", mb.id, &[3]).map(|_| ()))
            .unwrap();
        for uids in [
            vec![1, 2, 3, 4, 5],
            vec![2, 3, 4],
            vec![4, 5, 6, 7],
            vec![0, 1, 3],
            vec![1, 5],
            vec![3],
            vec![],
        ] {
            let one: Vec<Option<MessageRec>> = uids.iter().map(|u| v.message(mb.id, *u).unwrap()).collect();
            assert_eq!(v.messages_in(mb.id, &uids).unwrap(), one, "{uids:?}");
            let txn_side = store
                .run_blocking({
                    let uids = uids.clone();
                    move |t, c| Ok::<_, crate::mutate::MutationError>(TxnViews { txn: t, cf: c.views }.messages_in(mb.id, &uids)?)
                })
                .unwrap();
            assert_eq!(txn_side, one, "in a transaction, {uids:?}");
        }
    }

    /// Apply `events` to a store's views as entries of the given
    /// (hlc, origin) would be, in that order (tests of convergence).
    pub(crate) fn apply_at(store: &Store, events: Vec<((u64, u64), crate::event::Event)>) {
        store
            .run_blocking(move |txn, cfs| {
                for ((hlc, origin), e) in &events {
                    let at = wal::Appended {
                        origin: wal::Origin(*origin),
                        seq: 1,
                        order: 1,
                        hlc: *hlc,
                        hash: [0; 32],
                    };
                    crate::views::apply(&mut TxnViews { txn, cf: cfs.views }, &at, e)?;
                }
                Ok(())
            })
            .unwrap();
    }

    fn quota_set(storage_kib: Option<u64>, messages: Option<u64>) -> crate::event::Event {
        crate::event::Event::QuotaSet {
            user: "u".into(),
            storage_kib,
            messages,
        }
    }

    /// Concurrent quota sets end alike whatever the apply order; usage
    /// counts shown and pending (kept-aside) messages; `check_quota`
    /// tells "full" from "larger than the quota".
    #[test]
    fn quotas_converge_and_usage_counts_every_message() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a"), "a", wal_options("a")).unwrap();
        let b = Store::open(&dir.path().join("b"), "b", wal_options("b")).unwrap();
        let one = ((10, 1), quota_set(Some(1), None));
        let two = ((20, 2), quota_set(None, Some(2)));
        apply_at(&a, vec![one.clone(), two.clone()]);
        apply_at(&b, vec![two, one]);
        let (qa, qb) = (a.views().quota("u").unwrap().unwrap(), b.views().quota("u").unwrap().unwrap());
        assert_eq!(qa, qb);
        assert_eq!((qa.storage_kib, qa.messages, qa.clock), (None, Some(2), (20, 2)));
        // Equal clocks: the origin decides.
        apply_at(&a, vec![((30, 1), quota_set(Some(5), None)), ((30, 2), quota_set(Some(6), None))]);
        apply_at(&b, vec![((30, 2), quota_set(Some(6), None)), ((30, 1), quota_set(Some(5), None))]);
        assert_eq!(a.views().quota("u").unwrap(), b.views().quota("u").unwrap());
        assert_eq!(a.views().quota("u").unwrap().unwrap().storage_kib, Some(6));

        // Usage: two messages shown, one pending; nothing for another user.
        a.run_blocking(|t, c| mutate::create_user(t, c, "u", "h".into(), 1)).unwrap();
        for (i, pending) in [(0, false), (1, false), (2, true)] {
            let mut m = NewMessage::new(
                format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(1000)).into_bytes(),
                Flags::default(),
                1,
            );
            m.pending = pending;
            a.run_blocking(move |t, c| mutate::append(t, c, "u", "Archive", &m).map(|_| ()))
                .unwrap();
        }
        let v = a.views();
        let (bytes, count) = v.usage("u").unwrap();
        assert_eq!(count, 3);
        assert_eq!(bytes, 3 * (1000 + 16));
        assert_eq!(v.usage("nobody").unwrap(), (0, 0));
        // 6 KiB: 3048 bytes used, 3000 more fit, 3200 do not, 7000 never.
        assert!(mutate::check_quota(&v, "u", 3000, 1).is_ok());
        assert!(matches!(
            mutate::check_quota(&v, "u", 3200, 1),
            Err(mutate::MutationError::OverQuota { whole: false })
        ));
        assert!(matches!(
            mutate::check_quota(&v, "u", 7000, 1),
            Err(mutate::MutationError::OverQuota { whole: true })
        ));
        // A refused append writes nothing.
        let big = NewMessage::new(vec![b'x'; 7000], Flags::default(), 1);
        let r = a.run_blocking(move |t, c| mutate::append(t, c, "u", "INBOX", &big).map(|_| ()));
        assert!(r.is_err());
        assert_eq!(a.views().usage("u").unwrap(), (bytes, 3));
    }
}
