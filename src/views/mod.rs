//! Mailbox views materialised from the log.
//!
//! The views are a pure function of the events in this node's apply order:
//! [`apply`] is the only writer of the `views` column family, used both by
//! live mutations (in the same write batch as the entry) and by replay.
//!
//! Keys of the `views` column family (`user` and `name` are UTF-8 and never
//! contain a NUL byte; ids are 16 bytes, uids 4 bytes big-endian):
//!
//! ```text
//! U user                      -> UserRec
//! M user 00 mailbox-id        -> MailboxRec
//! N user 00 name              -> mailbox-id
//! S user 00 name              -> (empty)   subscription
//! V user                      -> last UIDVALIDITY given to this user (u32 BE)
//! m mailbox-id uid            -> MessageRec
//! H mailbox-id blob-hash      -> messages in the mailbox with this body (u32 BE)
//! R blob-hash                 -> reference count (u64 BE)
//! C key                       -> config value (UTF-8; empty: unset)
//! c key                       -> (hlc, origin) of the `ConfigSet` that wrote
//!                                `C key`: the latest writer wins, so nodes
//!                                applying concurrent sets in different
//!                                orders keep the same value
//! E                           -> highest (epoch, master node id) applied
//! X mailbox-id uid guid       -> MessageRec of a message whose UID another
//!                                message already holds (kept, reported)
//! Y mailbox-id uid            -> CollisionRec: this UID was given to two
//!                                messages; the master moves every message
//!                                under it to a fresh UID
//! W mailbox-id uid guid       -> (mailbox-id, uid, (hlc, origin)[, epoch]):
//!                                where the message was moved to, and the
//!                                rank of the resolution that counts
//!                                (`Rank`; the epoch only when above 0)
//! K user 00 mailbox-id        -> (hlc, origin) of the mailbox's current name
//! L user 00 mailbox-id        -> (empty) the mailbox lost its name to
//!                                another of that name; the master merges
//!                                it into that one
//! Z mailbox-id                -> mailbox-id a deleted mailbox was merged into
//! O order(u64 BE) index(u32)  -> ResolutionRec: one message moved by the
//!                                master, for `tandem conflicts`
//! P mailbox-id guid           -> PendingRec: a message appended pending
//!                                (UID 0, kept aside as `X mailbox-id 0
//!                                guid`) that awaits the master's placement
//! G mailbox-id guid           -> uid (u32 BE) the message with this GUID is
//!                                shown under in the mailbox
//! F dir 00 name              -> SideFileRec: a side file as the log says
//!                                it is (or its removal), with its clock
//! B dir 00 name              -> the side file's bytes (absent once removed)
//! A user                      -> QuotaRec: the user's quota (RFC 9208) and
//!                                the (hlc, origin) of the `QuotaSet` that
//!                                wrote it; the latest writer wins
//! T ...                       -> merkle tree nodes (see `crate::merkle::keys`)
//! J origin(u64 BE)           -> seq (u64 BE): that origin's entries up to
//!                                seq are in these views by a join by trees
//!                                (`crate::repl::resync::joined`); written
//!                                by the join, not derived from the log
//!                                (a replay carries it over: `crate::replay`)
//! ```

mod apply;
pub mod read;

pub use apply::{apply, apply_without_tree};
pub use read::{TxnViews, ViewError, ViewRead, ViewWrite, Views};

use crate::event::{BlobHash, Flags, Id, SpecialUse};
use serde::{Deserialize, Serialize};

/// A user's account record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRec {
    pub password_hash: String,
}

/// One mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxRec {
    pub id: Id,
    pub name: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    /// Per node: the apply-order position of the last change in this mailbox.
    pub highestmodseq: u64,
    pub special_use: Option<SpecialUse>,
}

/// One message in one mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRec {
    pub guid: Id,
    pub blob: BlobHash,
    pub size: u64,
    pub internal_date: i64,
    pub tz_minutes: i16,
    pub flags: Flags,
    /// Per node: apply-order position of the last change to this message.
    pub modseq: u64,
    /// Last writer of each flag ever touched: (flag, hlc, origin).
    pub clocks: Vec<(String, u64, u64)>,
    /// Last writer of a whole-set replacement (the baseline of every flag
    /// without a clock of its own), starting with the append itself.
    pub set_clock: (u64, u64),
}

impl MessageRec {
    /// The record's bytes: exactly postcard's encoding of the struct, made
    /// with the GUID and blob hash copied whole (serde visits an array one
    /// byte at a time, a tenth of a rebuild's applying).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(&self.guid.0);
        out.extend_from_slice(&self.blob.0);
        postcard::to_extend(
            &(
                self.size,
                self.internal_date,
                self.tz_minutes,
                &self.flags,
                self.modseq,
                &self.clocks,
                self.set_clock,
            ),
            out,
        )
        .expect("a Vec takes any length")
    }

    /// A record from its bytes ([`MessageRec::encode`], or postcard's
    /// encoding of the struct: the same bytes), reading the two arrays
    /// whole. Bytes after the record are ignored, as postcard does.
    pub fn decode(b: &[u8]) -> Result<MessageRec, postcard::Error> {
        let (guid, blob, rest) = Self::split_arrays(b)?;
        type Rest = (u64, i64, i16, Flags, u64, Vec<(String, u64, u64)>, (u64, u64));
        let ((size, internal_date, tz_minutes, flags, modseq, clocks, set_clock), _): (Rest, _) = postcard::take_from_bytes(rest)?;
        Ok(MessageRec {
            guid,
            blob,
            size,
            internal_date,
            tz_minutes,
            flags,
            modseq,
            clocks,
            set_clock,
        })
    }

    /// The flags of a record's bytes, and the rest left unread (what
    /// SELECT needs: the flag clocks after them are a string per flag ever
    /// touched).
    pub fn decode_flags(b: &[u8]) -> Result<Flags, postcard::Error> {
        let (_, _, rest) = Self::split_arrays(b)?;
        let ((_size, _date, _tz, flags), _): ((u64, i64, i16, Flags), _) = postcard::take_from_bytes(rest)?;
        Ok(flags)
    }

    /// The GUID and the blob hash at the front of a record's bytes (postcard
    /// writes arrays byte after byte, with no length), and what follows.
    fn split_arrays(b: &[u8]) -> Result<(Id, BlobHash, &[u8]), postcard::Error> {
        let (Some(guid), Some(blob), Some(rest)) = (b.get(..16), b.get(16..48), b.get(48..)) else {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        };
        let guid = Id(guid.try_into().expect("16 bytes"));
        Ok((guid, BlobHash(blob.try_into().expect("32 bytes")), rest))
    }

    /// The last writer of `flag`.
    pub fn clock(&self, flag: &str) -> (u64, u64) {
        self.clocks
            .iter()
            .find(|c| c.0 == flag)
            .map(|c| (c.1, c.2))
            .unwrap_or(self.set_clock)
    }

    /// Merge a flag change written at `ts` = (hlc, origin): per flag, the
    /// latest writer wins, so nodes applying concurrent changes in
    /// different orders end with the same flags.
    pub fn merge_flags(&mut self, op: crate::event::FlagOp, flags: &Flags, ts: (u64, u64)) -> bool {
        use crate::event::FlagOp;
        let before = self.flags.clone();
        let mut present: Vec<String> = self.flags.iter().map(String::from).collect();
        let mut touch = |f: &str, on: bool, clocks: &mut Vec<(String, u64, u64)>, baseline: (u64, u64)| {
            let cur = clocks.iter().find(|c| c.0 == f).map(|c| (c.1, c.2)).unwrap_or(baseline);
            if ts <= cur {
                return;
            }
            clocks.retain(|c| c.0 != f);
            clocks.push((f.to_string(), ts.0, ts.1));
            present.retain(|p| p != f);
            if on {
                present.push(f.to_string());
            }
        };
        match op {
            FlagOp::Add | FlagOp::Remove => {
                for f in flags.iter() {
                    touch(f, op == FlagOp::Add, &mut self.clocks, self.set_clock);
                }
            }
            FlagOp::Set => {
                let baseline = self.set_clock;
                let mut all: Vec<String> = self.flags.iter().chain(flags.iter()).map(String::from).collect();
                all.extend(self.clocks.iter().map(|c| c.0.clone()));
                all.sort();
                all.dedup();
                for f in &all {
                    touch(f, flags.contains(f), &mut self.clocks, baseline);
                }
                if ts > self.set_clock {
                    self.set_clock = ts;
                    // Clocks older than the new baseline say nothing more.
                    let b = self.set_clock;
                    self.clocks.retain(|c| (c.1, c.2) > b);
                }
            }
        }
        self.clocks.sort();
        self.flags = Flags::new(present);
        self.flags != before
    }
}

/// A UID given to two messages (or to a message below UIDNEXT), waiting
/// for the master's renumbering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollisionRec {
    pub user: String,
    /// The entries that put a message aside under this UID:
    /// (GUID, origin, seq).
    pub causes: Vec<(Id, u64, u64)>,
}

/// One message the master moved, as `tandem conflicts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolutionRec {
    pub user: String,
    pub from: Id,
    pub old_uid: u32,
    pub guid: Id,
    pub to: Id,
    pub new_uid: u32,
    /// The entry that moved it: (origin, seq).
    pub by: (u64, u64),
    /// The entry that had put it aside, when it was kept aside: (origin, seq).
    pub cause: Option<(u64, u64)>,
}

/// The rank of a resolution (a move or a placement) of one message: the
/// epoch its author was master under, then its entry's (HLC, origin). Of
/// two resolutions of one message the one that [`Rank::beats`] the other
/// counts on every node, whatever order they were applied in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rank {
    pub epoch: u64,
    pub hlc: u64,
    pub origin: u64,
}

impl Rank {
    /// The higher epoch wins; within one epoch the smaller (HLC, origin),
    /// the rule two masters of one epoch have always converged by. So a
    /// master of a later epoch overrides a stale one, and a stale one can
    /// never override it.
    pub fn beats(&self, other: &Rank) -> bool {
        (self.epoch, std::cmp::Reverse((self.hlc, self.origin))) > (other.epoch, std::cmp::Reverse((other.hlc, other.origin)))
    }
}

/// `W` record: where a message was moved to, and the rank of the
/// resolution that counts. Postcard `(Id, u32, (u64, u64))` (mailbox, UID,
/// (HLC, origin)), followed by the epoch as a postcard varint only when it
/// is above 0: records of epoch 0 keep the bytes written before epochs
/// were ranked, and those still decode (as epoch 0).
pub(crate) fn enc_moved(mailbox: Id, uid: u32, by: Rank) -> Vec<u8> {
    let mut b = enc(&(mailbox, uid, (by.hlc, by.origin)));
    if by.epoch > 0 {
        b.extend_from_slice(&enc(&by.epoch));
    }
    b
}

/// Decode a `W` record (see [`enc_moved`]).
pub(crate) fn dec_moved(b: &[u8]) -> Result<(Id, u32, Rank), String> {
    type Head = (Id, u32, (u64, u64));
    let ((mailbox, uid, (hlc, origin)), rest) = postcard::take_from_bytes::<Head>(b).map_err(|e| e.to_string())?;
    let epoch = match rest {
        [] => 0,
        _ => match postcard::take_from_bytes::<u64>(rest).map_err(|e| e.to_string())? {
            (e, []) if e > 0 => e,
            (0, []) => return Err("epoch 0 written out".into()),
            (_, more) => return Err(format!("{} unexpected bytes after the epoch", more.len())),
        },
    };
    Ok((mailbox, uid, Rank { epoch, hlc, origin }))
}

/// A message appended pending, awaiting its UID from the master
/// (`replication.md` section 8b).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRec {
    pub user: String,
    /// (HLC, origin) of the pending append.
    pub since: (u64, u64),
}

/// A user's quota: `None` is no limit. Usage is not stored: it is the sum
/// over the user's mailboxes (see [`read::ViewRead::usage`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRec {
    pub storage_kib: Option<u64>,
    pub messages: Option<u64>,
    /// (hlc, origin) of the `QuotaSet` that wrote it.
    pub clock: (u64, u64),
}

pub(crate) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("view records always serialise")
}

pub mod keys {
    use crate::event::{BlobHash, Id};

    /// The tags of keys that are only ever read by key, never by a scan
    /// of a prefix: a body's reference count (`R`), a body's count in a
    /// mailbox (`H`) and the UID a GUID is shown under (`G`). A rebuild
    /// holds them in a hash map (`wal::Shadow::hash_tags`).
    pub const POINT_TAGS: &[u8] = b"RHG";

    fn user_key(tag: u8, user: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(user.len() + 2);
        k.push(tag);
        k.extend_from_slice(user.as_bytes());
        k
    }
    fn user_sub(tag: u8, user: &str, rest: &[u8]) -> Vec<u8> {
        let mut k = user_key(tag, user);
        k.push(0);
        k.extend_from_slice(rest);
        k
    }
    pub fn user(user: &str) -> Vec<u8> {
        user_key(b'U', user)
    }
    pub fn users_prefix() -> Vec<u8> {
        vec![b'U']
    }
    pub fn mailbox(user: &str, id: Id) -> Vec<u8> {
        user_sub(b'M', user, &id.0)
    }
    pub fn mailboxes_prefix(user: &str) -> Vec<u8> {
        user_sub(b'M', user, &[])
    }
    pub fn name(user: &str, name: &str) -> Vec<u8> {
        user_sub(b'N', user, name.as_bytes())
    }
    pub fn names_prefix(user: &str) -> Vec<u8> {
        user_sub(b'N', user, &[])
    }
    /// `k user 0 name 0 uidvalidity`: every mailbox id created under that
    /// name with that UIDVALIDITY (two when the name was created on both
    /// sides of a split in the same second). Never deleted: a name whose
    /// (name, UIDVALIDITY) was given to two mailboxes is bound to neither
    /// (`format.md` section 8.5).
    pub fn created(user: &str, name: &str, uidvalidity: u32) -> Vec<u8> {
        let mut k = user_sub(b'k', user, name.as_bytes());
        k.push(0);
        k.extend_from_slice(&uidvalidity.to_be_bytes());
        k
    }
    /// `v user 0 mailbox`: the UIDVALIDITY a deleted mailbox had, so a
    /// rename of it that arrives after its deletion is still recorded
    /// under its new name (`format.md` section 8.5). Never deleted.
    pub fn gone(user: &str, mailbox: Id) -> Vec<u8> {
        user_sub(b'v', user, &mailbox.0)
    }
    pub fn subscription(user: &str, name: &str) -> Vec<u8> {
        user_sub(b'S', user, name.as_bytes())
    }
    pub fn subscriptions_prefix(user: &str) -> Vec<u8> {
        user_sub(b'S', user, &[])
    }
    pub fn uidvalidity(user: &str) -> Vec<u8> {
        user_key(b'V', user)
    }
    pub fn message(mailbox: Id, uid: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(21);
        k.push(b'm');
        k.extend_from_slice(&mailbox.0);
        k.extend_from_slice(&uid.to_be_bytes());
        k
    }
    pub fn messages_prefix(mailbox: Id) -> Vec<u8> {
        let mut k = Vec::with_capacity(17);
        k.push(b'm');
        k.extend_from_slice(&mailbox.0);
        k
    }
    /// Change index: `Q | mailbox | modseq | uid` for the last change of
    /// every message (value `[0]`) and for every expunge (`[1]`), so a
    /// session catches up by reading what changed after its MODSEQ instead
    /// of the whole mailbox.
    pub fn change(mailbox: Id, modseq: u64, uid: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(29);
        k.push(b'Q');
        k.extend_from_slice(&mailbox.0);
        k.extend_from_slice(&modseq.to_be_bytes());
        k.extend_from_slice(&uid.to_be_bytes());
        k
    }
    pub fn changes_prefix(mailbox: Id) -> Vec<u8> {
        let mut k = Vec::with_capacity(17);
        k.push(b'Q');
        k.extend_from_slice(&mailbox.0);
        k
    }
    /// (modseq, uid) of a change key.
    pub fn change_of(key: &[u8]) -> Option<(u64, u32)> {
        let m = key.get(17..25)?.try_into().ok().map(u64::from_be_bytes)?;
        let u = key.get(25..29)?.try_into().ok().map(u32::from_be_bytes)?;
        Some((m, u))
    }
    pub fn uid_of(message_key: &[u8]) -> Option<u32> {
        message_key.get(17..21).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes)
    }
    pub fn content(mailbox: Id, blob: &BlobHash) -> Vec<u8> {
        let mut k = Vec::with_capacity(49);
        k.push(b'H');
        k.extend_from_slice(&mailbox.0);
        k.extend_from_slice(&blob.0);
        k
    }
    pub fn refcount(blob: &BlobHash) -> Vec<u8> {
        let mut k = Vec::with_capacity(33);
        k.push(b'R');
        k.extend_from_slice(&blob.0);
        k
    }
    pub fn conflict(mailbox: Id, uid: u32, guid: Id) -> Vec<u8> {
        let mut k = Vec::with_capacity(37);
        k.push(b'X');
        k.extend_from_slice(&mailbox.0);
        k.extend_from_slice(&uid.to_be_bytes());
        k.extend_from_slice(&guid.0);
        k
    }
    pub fn conflicts_prefix() -> Vec<u8> {
        vec![b'X']
    }
    pub fn collision(mailbox: Id, uid: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(21);
        k.push(b'Y');
        k.extend_from_slice(&mailbox.0);
        k.extend_from_slice(&uid.to_be_bytes());
        k
    }
    pub fn collisions_prefix() -> Vec<u8> {
        vec![b'Y']
    }
    /// `y mailbox uid`: the collision mark `Y mailbox uid` was reported to
    /// the master (`Event::ConflictsReported`); it goes with the mark.
    pub fn reported(mailbox: Id, uid: u32) -> Vec<u8> {
        let mut k = collision(mailbox, uid);
        k[0] = b'y';
        k
    }
    pub fn reported_prefix() -> Vec<u8> {
        vec![b'y']
    }
    /// (mailbox, uid) of a collision key.
    pub fn collision_of(key: &[u8]) -> Option<(Id, u32)> {
        let id: [u8; 16] = key.get(1..17)?.try_into().ok()?;
        let uid = key.get(17..21)?.try_into().ok().map(u32::from_be_bytes)?;
        Some((Id(id), uid))
    }
    /// (uid, guid) of a conflict key.
    pub fn conflict_of(key: &[u8]) -> Option<(Id, u32, Id)> {
        let id: [u8; 16] = key.get(1..17)?.try_into().ok()?;
        let uid = key.get(17..21)?.try_into().ok().map(u32::from_be_bytes)?;
        let guid: [u8; 16] = key.get(21..37)?.try_into().ok()?;
        Some((Id(id), uid, Id(guid)))
    }
    pub fn conflicts_at(mailbox: Id, uid: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(21);
        k.push(b'X');
        k.extend_from_slice(&mailbox.0);
        k.extend_from_slice(&uid.to_be_bytes());
        k
    }
    pub fn conflicts_in(mailbox: Id) -> Vec<u8> {
        let mut k = Vec::with_capacity(17);
        k.push(b'X');
        k.extend_from_slice(&mailbox.0);
        k
    }
    pub fn moved(mailbox: Id, uid: u32, guid: Id) -> Vec<u8> {
        let mut k = conflict(mailbox, uid, guid);
        k[0] = b'W';
        k
    }
    /// `P mailbox guid`: a pending message (33 bytes).
    pub fn pending(mailbox: Id, guid: Id) -> Vec<u8> {
        let mut k = Vec::with_capacity(33);
        k.push(b'P');
        k.extend_from_slice(&mailbox.0);
        k.extend_from_slice(&guid.0);
        k
    }
    pub fn pendings_prefix() -> Vec<u8> {
        vec![b'P']
    }
    /// (mailbox, guid) of a `P` or `G` key.
    pub fn mailbox_guid_of(key: &[u8]) -> Option<(Id, Id)> {
        let mb = <[u8; 16]>::try_from(key.get(1..17)?).ok()?;
        let g = <[u8; 16]>::try_from(key.get(17..33)?).ok()?;
        (key.len() == 33).then_some((Id(mb), Id(g)))
    }
    /// `G mailbox guid`: the UID the GUID is shown under (33 bytes).
    pub fn guid(mailbox: Id, guid: Id) -> Vec<u8> {
        let mut k = pending(mailbox, guid);
        k[0] = b'G';
        k
    }
    pub fn name_clock(user: &str, mailbox: Id) -> Vec<u8> {
        user_sub(b'K', user, &mailbox.0)
    }
    pub fn loser(user: &str, mailbox: Id) -> Vec<u8> {
        user_sub(b'L', user, &mailbox.0)
    }
    pub fn losers_prefix() -> Vec<u8> {
        vec![b'L']
    }
    pub fn merged(mailbox: Id) -> Vec<u8> {
        let mut k = Vec::with_capacity(17);
        k.push(b'Z');
        k.extend_from_slice(&mailbox.0);
        k
    }
    pub fn resolution(order: u64, index: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(13);
        k.push(b'O');
        k.extend_from_slice(&order.to_be_bytes());
        k.extend_from_slice(&index.to_be_bytes());
        k
    }
    pub fn resolutions_prefix() -> Vec<u8> {
        vec![b'O']
    }
    /// `A user`: the user's [`super::QuotaRec`].
    pub fn quota(user: &str) -> Vec<u8> {
        user_key(b'A', user)
    }
    pub fn config(key: &str) -> Vec<u8> {
        user_key(b'C', key)
    }
    pub fn configs_prefix() -> Vec<u8> {
        vec![b'C']
    }
    pub fn config_clock(key: &str) -> Vec<u8> {
        user_key(b'c', key)
    }
    /// `F dir 00 name`: a side file's record (see `crate::sidefiles`).
    pub fn side_file(dir: &str, name: &str) -> Vec<u8> {
        user_sub(b'F', dir, name.as_bytes())
    }
    /// Every side-file record of `dir`.
    pub fn side_files_prefix(dir: &str) -> Vec<u8> {
        user_sub(b'F', dir, &[])
    }
    /// `B dir 00 name`: a side file's bytes.
    pub fn side_body(dir: &str, name: &str) -> Vec<u8> {
        user_sub(b'B', dir, name.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FlagOp;
    use proptest::prelude::*;

    fn rec() -> MessageRec {
        MessageRec {
            guid: Id([1; 16]),
            blob: BlobHash([2; 32]),
            size: 1,
            internal_date: 0,
            tz_minutes: 0,
            flags: Flags::new(["\\Seen"]),
            modseq: 1,
            clocks: Vec::new(),
            set_clock: (10, 1),
        }
    }

    proptest! {
        /// The record codec writes exactly postcard's bytes of the struct,
        /// reads them back, and refuses every truncation that postcard
        /// refuses.
        #[test]
        fn the_record_codec_is_postcard_s_encoding(
            guid in any::<[u8; 16]>(),
            blob in any::<[u8; 32]>(),
            size in any::<u64>(),
            internal_date in any::<i64>(),
            tz_minutes in any::<i16>(),
            flags in proptest::collection::vec("[\\\\$]?[A-Za-z]{0,12}", 0..6),
            modseq in any::<u64>(),
            clocks in proptest::collection::vec(("[A-Za-z$\\\\]{0,20}", any::<u64>(), any::<u64>()), 0..5),
            set_clock in any::<(u64, u64)>(),
        ) {
            let m = MessageRec {
                guid: Id(guid),
                blob: BlobHash(blob),
                size,
                internal_date,
                tz_minutes,
                flags: Flags::new(flags.iter().map(String::as_str)),
                modseq,
                clocks,
                set_clock,
            };
            let serde = postcard::to_allocvec(&m).unwrap();
            prop_assert_eq!(&m.encode(), &serde);
            prop_assert_eq!(MessageRec::decode(&serde).unwrap(), m);
            for cut in 0..serde.len() {
                let ours = MessageRec::decode(&serde[..cut]).is_err();
                let theirs = postcard::from_bytes::<MessageRec>(&serde[..cut]).is_err();
                prop_assert_eq!(ours, theirs, "cut at {}", cut);
            }
        }
    }

    fn op() -> impl Strategy<Value = (FlagOp, Flags, (u64, u64))> {
        let flags = proptest::sample::subsequence(vec!["\\Seen", "\\Flagged", "$A", "\\Deleted"], 0..=3).prop_map(Flags::new);
        (
            prop_oneof![Just(FlagOp::Add), Just(FlagOp::Remove), Just(FlagOp::Set)],
            flags,
            (1u64..40, 1u64..4),
        )
    }

    proptest! {
        /// Concurrent flag changes applied in any order converge.
        #[test]
        fn flag_merge_commutes(mut ops in proptest::collection::vec(op(), 1..12), seed in any::<u64>()) {
            // Timestamps are unique per write, as (hlc, origin) is.
            ops.sort_by_key(|o| o.2);
            ops.dedup_by_key(|o| o.2);
            let mut a = rec();
            for (op, f, ts) in &ops {
                a.merge_flags(*op, f, *ts);
            }
            let mut shuffled = ops.clone();
            let mut rng = crate::testrng::XorShift(seed | 1);
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.below(i + 1));
            }
            let mut b = rec();
            for (op, f, ts) in &shuffled {
                b.merge_flags(*op, f, *ts);
            }
            prop_assert_eq!(a.flags, b.flags);
        }
    }

    #[test]
    fn later_writer_wins_per_flag() {
        let mut m = rec();
        m.merge_flags(FlagOp::Remove, &Flags::new(["\\Seen"]), (20, 1));
        m.merge_flags(FlagOp::Add, &Flags::new(["\\Seen"]), (15, 2)); // older: ignored
        assert!(!m.flags.contains("\\Seen"));
        m.merge_flags(FlagOp::Add, &Flags::new(["\\Flagged"]), (30, 2));
        m.merge_flags(FlagOp::Set, &Flags::new(["$A"]), (25, 1)); // older than the \Flagged add
        assert_eq!(m.flags.iter().collect::<Vec<_>>(), vec!["$A", "\\Flagged"]);
    }
}
