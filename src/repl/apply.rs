//! Applying a batch from a peer: entries through the same atomic write as
//! local mutations (chain checked, views applied), bodies stored once.

use super::frame::{WireBlob, WireEntry};
use crate::event::{BlobHash, Event};
use crate::mutate::{Cfs, MutationError};
use crate::views::{apply, apply_without_tree, TxnViews};
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
    /// Entries this node had appended after its own log went backwards,
    /// moved to a successor origin when the peer's history of its origin
    /// arrived (see [`wal::Txn::rehome`]).
    #[serde(default)]
    pub rehomed: u64,
    /// The move itself, when this batch made one.
    #[serde(skip)]
    pub moved: Option<wal::Rehomed>,
    /// Unix milliseconds at which the oldest entry applied was written at
    /// its origin (0: none), for the lag histogram.
    #[serde(skip)]
    pub oldest_ms: u64,
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
    #[error("body {hash} ({len} bytes) does not match its hash")]
    BadBlob { hash: String, len: usize },
    #[error("entry {origin:016x}:{seq} references body {hash}, which is neither held nor in the batch")]
    MissingBlob { origin: u64, seq: u64, hash: String },
}

impl From<ApplyError> for MutationError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Wal(w) => MutationError::from(w),
            ApplyError::View(v) => MutationError::View(v),
            other => MutationError::Refused(other.to_string()),
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
        self.rehomed += o.rehomed;
        self.moved = o.moved.or(self.moved);
        self.oldest_ms = match (self.oldest_ms, o.oldest_ms) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
    }
}

/// Check that each body is the one its hash names. Done by the receiver
/// before the batch reaches the single writer thread.
pub fn verify_blobs(blobs: &[WireBlob]) -> Result<(), ApplyError> {
    for b in blobs {
        if BlobHash::of(&b.body).0 != b.hash {
            return Err(ApplyError::BadBlob {
                hash: hex::encode(b.hash),
                len: b.body.len(),
            });
        }
    }
    Ok(())
}

/// Whether this node holds a body, as the transaction sees it.
fn holds_blob(txn: &mut Txn<'_>, cfs: Cfs, hash: &BlobHash) -> Result<bool, ApplyError> {
    use crate::views::ViewRead;
    Ok(TxnViews { txn, cf: cfs.views }.holds_body(hash)?)
}

/// Apply a batch whose bodies passed [`verify_blobs`]. A body already held
/// is not written again; `stored` names bodies of this batch already made
/// durable ahead of it. An entry whose body is neither held, stored nor in
/// the batch refuses the batch (nothing of it is written).
pub fn apply_batch(
    txn: &mut Txn<'_>,
    cfs: Cfs,
    entries: &[WireEntry],
    blobs: &[WireBlob],
    stored: &[[u8; 32]],
) -> Result<Applied, ApplyError> {
    apply_batch_in(txn, cfs, entries, blobs, stored, Tree::Update)
}

/// [`apply_batch`], but the views' merkle tree is left as it was: for a
/// writer that builds the whole tree once afterwards (a restore, see
/// `crate::backup::restore`), where keeping it up to date entry by entry
/// costs more than one pass at the end. Until that pass the tree is stale,
/// so the caller must first have marked it so ([`crate::merkle::invalidate`]).
pub fn apply_batch_without_tree(
    txn: &mut Txn<'_>,
    cfs: Cfs,
    entries: &[WireEntry],
    blobs: &[WireBlob],
    stored: &[[u8; 32]],
) -> Result<Applied, ApplyError> {
    apply_batch_in(txn, cfs, entries, blobs, stored, Tree::Leave)
}

/// Whether a batch keeps the merkle tree in step with the views.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tree {
    Update,
    Leave,
}

fn apply_batch_in(
    txn: &mut Txn<'_>,
    cfs: Cfs,
    entries: &[WireEntry],
    blobs: &[WireBlob],
    stored: &[[u8; 32]],
    tree: Tree,
) -> Result<Applied, ApplyError> {
    let mut in_batch: std::collections::HashSet<[u8; 32]> = stored.iter().copied().collect();
    for WireBlob { hash, body } in blobs {
        if in_batch.insert(*hash) && !holds_blob(txn, cfs, &BlobHash(*hash))? {
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
        let appended = match txn.append_remote(&e) {
            // This node's own origin, and a peer holds other entries for
            // seqs it holds: its log went backwards (restored from an older
            // copy) and it appended again before it heard from the peer.
            // Its entries from the fork on move to a successor origin (their
            // effects stay in the views and reach the peers as new entries);
            // the peer's entries take their seqs.
            Err(wal::WalError::Fork { place, .. }) if place.origin == txn.local_origin() => {
                let r = txn.rehome(place.seq)?;
                n.rehomed += r.moved;
                n.moved = Some(r);
                txn.append_remote(&e)?
            }
            r => r?,
        };
        let Some(at) = appended else {
            n.duplicates += 1;
            continue;
        };
        // Already in the views by a join by trees (`super::resync::joined`).
        if super::resync::joined(&TxnViews { txn, cf: cfs.views }, w.origin, w.seq, &event)? {
            n.duplicates += 1;
            continue;
        }
        if let Event::MessageAppended { blob, .. } | Event::MessageRestored { blob, .. } = &event {
            if !in_batch.contains(&blob.0) && !holds_blob(txn, cfs, blob)? {
                return Err(ApplyError::MissingBlob {
                    origin: w.origin,
                    seq: w.seq,
                    hash: hex::encode(blob.0),
                });
            }
        }
        let mut v = TxnViews { txn, cf: cfs.views };
        match tree {
            Tree::Update => apply(&mut v, &at, &event)?,
            Tree::Leave => apply_without_tree(&mut v, &at, &event)?,
        }
        n.entries += 1;
        let written_ms = w.hlc >> 16;
        if n.oldest_ms == 0 || written_ms < n.oldest_ms {
            n.oldest_ms = written_ms;
        }
        match event {
            Event::MessageAppended { .. } | Event::MessageRestored { .. } => n.add += 1,
            Event::Expunged { .. } | Event::MailboxDeleted { .. } | Event::MailboxRemoved { .. } | Event::UserDeleted { .. } => {
                n.delete += 1
            }
            Event::MailboxRenamed { .. } => n.rename += 1,
            Event::FlagsChanged { .. } => n.flags += 1,
            Event::UserCreated { .. }
            | Event::PasswordChanged { .. }
            | Event::MailboxCreated { .. }
            | Event::Subscribed { .. }
            | Event::ConfigSet { .. }
            | Event::MessagesMoved { .. }
            | Event::MessagePlaced { .. }
            | Event::MessagesMovedInEpoch { .. }
            | Event::MessagePlacedInEpoch { .. }
            | Event::ConflictsReported { .. }
            | Event::RoleChanged { .. }
            | Event::SideFileSet { .. }
            | Event::SideFileRemoved { .. }
            | Event::QuotaSet { .. }
            | Event::MailboxRestored { .. } => n.other += 1,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutate::{self, NewMessage};
    use crate::store::{wal_options, Store};

    fn open(dir: &std::path::Path, node: &str) -> Store {
        Store::open(dir, node, wal_options(node)).unwrap()
    }

    /// Everything `store` holds in its apply order, from `from`, as shipped.
    fn shipped(store: &Store, from: u64) -> Vec<WireEntry> {
        store
            .wal()
            .read_order(from, 1000)
            .unwrap()
            .into_iter()
            .map(|(_, e)| WireEntry {
                origin: e.origin.0,
                seq: e.seq,
                hlc: e.hlc,
                hash: e.hash,
                payload: e.payload,
            })
            .collect()
    }

    fn run(store: &Store, entries: Vec<WireEntry>, blobs: Vec<WireBlob>) -> Result<Applied, crate::store::StoreError> {
        store.run_blocking(move |t, c| apply_batch(t, c, &entries, &blobs, &[]).map_err(Into::into))
    }

    #[test]
    fn bodies_are_checked_and_an_entry_needs_its_body_held_or_sent() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(da.path(), "a"), open(db.path(), "b"));
        let body = b"Subject: x\r\n\r\nthe body\r\n".to_vec();
        let hash = BlobHash::of(&body);
        a.run_blocking(move |t, c| {
            mutate::create_user(t, c, "u@x", "h".into(), 1)?;
            mutate::append(t, c, "u@x", "INBOX", &NewMessage::new(body, Default::default(), 1))?;
            Ok(())
        })
        .unwrap();
        let first = shipped(&a, 1);
        // A body that is not what its hash names is refused before apply.
        let bad = vec![WireBlob {
            hash: hash.0,
            body: b"something else".to_vec(),
        }];
        assert!(matches!(verify_blobs(&bad), Err(ApplyError::BadBlob { .. })));
        // The delivery without its body is refused, and nothing is written.
        let err = run(&b, first.clone(), vec![]).unwrap_err().to_string();
        assert!(err.contains("neither held nor in the batch"), "{err}");
        assert_eq!(b.wal().last_order(), 0, "a refused batch left entries behind");
        // With its body it applies, and the body is held.
        let good = vec![WireBlob {
            hash: hash.0,
            body: a.blob(&hash).unwrap().unwrap(),
        }];
        verify_blobs(&good).unwrap();
        let n = run(&b, first, good).unwrap();
        assert_eq!(n.add, 1);
        assert!(b.holds_body(&hash).unwrap());
        // A copy of it on A needs no body: B holds it.
        let from = a.wal().last_order() + 1;
        a.run_blocking(|t, c| {
            let inbox = crate::views::ViewRead::mailbox_id(&TxnViews { txn: t, cf: c.views }, "u@x", "INBOX")?.unwrap();
            let kept = mutate::create_mailbox(t, c, "u@x", "Kept", None, 1)?.id;
            mutate::copy(t, c, "u@x", inbox, &[1], kept, false, false)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(a.body_refs(&hash).unwrap(), 2);
        let n = run(&b, shipped(&a, from), vec![]).unwrap();
        assert_eq!(n.add, 1);
        assert_eq!(b.body_refs(&hash).unwrap(), 2);
    }
}
