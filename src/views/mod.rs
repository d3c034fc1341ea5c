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
//! C key                       -> config value (UTF-8)
//! X mailbox-id uid guid       -> MessageRec of a message whose UID another
//!                                message already holds (kept, reported)
//! ```

mod apply;
pub mod read;

pub use apply::apply;
pub use read::{TxnViews, ViewError, ViewRead, Views};

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
}

pub(crate) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("view records always serialise")
}

pub mod keys {
    use crate::event::{BlobHash, Id};

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
    pub fn config(key: &str) -> Vec<u8> {
        user_key(b'C', key)
    }
    pub fn configs_prefix() -> Vec<u8> {
        vec![b'C']
    }
}
