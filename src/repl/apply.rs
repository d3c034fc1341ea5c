//! Applying a batch from a peer: entries through the same atomic write as
//! local mutations (chain checked, views applied), bodies stored once.

use super::frame::{WireBlob, WireEntry};
use crate::event::{BlobHash, Event};
use crate::mutate::{Cfs, MutationError};
use crate::views::{apply, TxnViews};
use wal::{Entry, Origin, Txn};

/// What a batch changed, by kind (for the incoming counters).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub entries: u64,
    pub duplicates: u64,
    pub add: u64,
    pub delete: u64,
    pub rename: u64,
    pub flags: u64,
    pub other: u64,
}

/// Why a batch was refused (nothing of it was written).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Wal(#[from] wal::WalError),
    #[error("entry {origin:016x}:{seq} carries no valid event: {reason}")]
    Event { origin: u64, seq: u64, reason: String },
    #[error(transparent)]
    View(#[from] crate::views::ViewError),
}

impl From<ApplyError> for MutationError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Wal(w) => MutationError::from(w),
            ApplyError::View(v) => MutationError::View(v),
            ApplyError::Event { .. } => MutationError::NotAllowed("a peer sent an entry that is not a valid event"),
        }
    }
}

impl std::ops::AddAssign for Applied {
    fn add_assign(&mut self, o: Applied) {
        self.entries += o.entries;
        self.duplicates += o.duplicates;
        self.add += o.add;
        self.delete += o.delete;
        self.rename += o.rename;
        self.flags += o.flags;
        self.other += o.other;
    }
}

pub fn apply_batch(txn: &mut Txn<'_>, cfs: Cfs, entries: &[WireEntry], blobs: &[WireBlob]) -> Result<Applied, ApplyError> {
    for WireBlob { hash, body } in blobs {
        // A body is stored only under its own hash.
        if BlobHash::of(body).0 == *hash && txn.get(cfs.blobs, hash)?.is_none() {
            txn.put(cfs.blobs, hash, body);
        }
    }
    let mut n = Applied::default();
    for w in entries {
        let e = Entry {
            origin: Origin(w.origin),
            seq: w.seq,
            hlc: w.hlc,
            payload: w.payload.clone(),
            hash: w.hash,
        };
        let event = Event::decode(&e.payload).map_err(|err| ApplyError::Event {
            origin: w.origin,
            seq: w.seq,
            reason: err.to_string(),
        })?;
        let Some(at) = txn.append_remote(&e)? else {
            n.duplicates += 1;
            continue;
        };
        apply(&mut TxnViews { txn, cf: cfs.views }, &at, &event)?;
        n.entries += 1;
        match event {
            Event::MessageAppended { .. } => n.add += 1,
            Event::Expunged { .. } | Event::MailboxDeleted { .. } | Event::UserDeleted { .. } => n.delete += 1,
            Event::MailboxRenamed { .. } => n.rename += 1,
            Event::FlagsChanged { .. } => n.flags += 1,
            Event::UserCreated { .. }
            | Event::PasswordChanged { .. }
            | Event::MailboxCreated { .. }
            | Event::Subscribed { .. }
            | Event::ConfigSet { .. } => n.other += 1,
        }
    }
    Ok(n)
}
