//! Pruning: dropping the oldest entries of each origin's log while the
//! rest still verifies.
//!
//! Each origin has a base record (store format 2, `docs/format.md`): the
//! seq, chain hash and clock of the last entry pruned from it (seq 0 and
//! the genesis hash when nothing was). Its log is held from `base + 1` to
//! the head, and the chain is verified from the base hash as it was from
//! the genesis hash. The head entry of an origin is never pruned.
//!
//! [`crate::Wal::prune`] walks the apply order from its start and drops
//! every entry the caller's [`PruneLimits`] allow, origin by origin: the
//! first entry of an origin that must stay holds all later entries of that
//! origin (an origin's entries are in the apply order in seq order), so
//! what goes is always a prefix of each origin's log. Entries and their
//! apply-order positions go in one synced batch with the new base records.
//! Caller column families (views, bodies) are never touched.

use crate::error::{Place, WalError};
use crate::record::{Hash, GENESIS};
use crate::seq::{log_key, parse_log_key, Origin, VersionVector};
use std::collections::BTreeMap;

/// Key prefix of a base record in the meta column family:
/// `base` + origin (u64 BE) -> seq (u64 BE), hash (32), hlc (u64 BE),
/// adopted (u64 BE).
pub(crate) const META_BASE_PREFIX: &[u8] = b"base";
/// Length of a base record's value.
pub(crate) const BASE_VALUE_LEN: usize = 8 + 32 + 8 + 8;

/// Where an origin's held log starts: the last pruned entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Base {
    /// Seq of the last pruned entry (0: nothing pruned).
    pub seq: u64,
    /// Its chain hash (the genesis hash when nothing was pruned): the
    /// previous hash of entry `seq + 1`.
    pub hash: Hash,
    /// Its hybrid logical clock (0 when nothing was pruned).
    pub hlc: u64,
    /// Seqs up to the base that this node never stored (it took a peer's
    /// base after a join by trees, [`crate::Wal::adopt_base`]): they have
    /// no apply-order position here.
    pub adopted: u64,
}

impl Default for Base {
    fn default() -> Self {
        Base {
            seq: 0,
            hash: GENESIS,
            hlc: 0,
            adopted: 0,
        }
    }
}

impl Base {
    pub(crate) fn encode(&self) -> [u8; BASE_VALUE_LEN] {
        let mut v = [0u8; BASE_VALUE_LEN];
        v[..8].copy_from_slice(&self.seq.to_be_bytes());
        v[8..40].copy_from_slice(&self.hash);
        v[40..48].copy_from_slice(&self.hlc.to_be_bytes());
        v[48..].copy_from_slice(&self.adopted.to_be_bytes());
        v
    }

    pub(crate) fn decode(origin: Origin, v: &[u8]) -> Result<Base, WalError> {
        if v.len() != BASE_VALUE_LEN {
            return Err(WalError::CorruptMeta {
                key: format!("base {origin}"),
                reason: format!("value is {} bytes, not {BASE_VALUE_LEN}", v.len()),
            });
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&v[8..40]);
        Ok(Base {
            seq: u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
            hash,
            hlc: u64::from_be_bytes(v[40..48].try_into().expect("8 bytes")),
            adopted: u64::from_be_bytes(v[48..].try_into().expect("8 bytes")),
        })
    }
}

pub(crate) fn meta_base_key(origin: Origin) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(META_BASE_PREFIX);
    k[4..].copy_from_slice(&origin.0.to_be_bytes());
    k
}

/// What a prune may drop. An entry goes only if every limit allows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneLimits {
    /// Per origin, the highest seq that may go (an origin absent here
    /// keeps everything): what every peer acknowledged.
    pub upto: VersionVector,
    /// Only entries at or below this apply-order position (a backup's
    /// durable position; `u64::MAX` when no backup is configured).
    pub max_order: u64,
    /// Only entries whose hybrid logical clock is below this (the window).
    pub before_hlc: u64,
    /// The newest entries of each origin always kept (at least one: the
    /// head is never pruned).
    pub keep_entries: u64,
    /// Most entries dropped by one call (one batch).
    pub max_entries: usize,
}

/// Which limit kept an origin's oldest held entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kept {
    /// Not acknowledged by every peer ([`PruneLimits::upto`]).
    Acknowledged,
    /// Past the backup's position ([`PruneLimits::max_order`]).
    Backup,
    /// Inside the window ([`PruneLimits::before_hlc`]).
    Window,
    /// Among the newest entries kept ([`PruneLimits::keep_entries`]).
    Count,
    /// The batch was full; the next call goes on.
    Batch,
}

/// What one prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Entries dropped.
    pub pruned: u64,
    /// Apply-order positions dropped whose entry was already gone.
    pub stale_positions: u64,
    /// Per origin: its base after the prune.
    pub bases: BTreeMap<Origin, Base>,
    /// Per origin whose oldest held entry was looked at: that seq and
    /// which limit kept it.
    pub kept: BTreeMap<Origin, (u64, Kept)>,
}

/// Decide whether the entry at `(origin, seq)` with clock `hlc` at apply
/// order position `pos` may go, given the origin's head.
pub(crate) fn keeps(limits: &PruneLimits, pos: u64, seq: u64, hlc: u64, head: u64, origin: Origin) -> Option<Kept> {
    if seq + limits.keep_entries.max(1) > head {
        Some(Kept::Count)
    } else if seq > limits.upto.get(origin) {
        Some(Kept::Acknowledged)
    } else if pos > limits.max_order {
        Some(Kept::Backup)
    } else if hlc >= limits.before_hlc {
        Some(Kept::Window)
    } else {
        None
    }
}

/// An entry that the walk decided to drop.
pub(crate) struct Drop {
    pub pos: u64,
    pub origin: Origin,
    pub seq: u64,
    pub hash: Hash,
    pub hlc: u64,
}

/// Parse an apply-order value, naming the position on failure.
pub(crate) fn order_value(pos: u64, v: &[u8]) -> Result<(Origin, u64), WalError> {
    parse_log_key(v).ok_or_else(|| WalError::CorruptMeta {
        key: format!("order {pos}"),
        reason: "value is not a log key".into(),
    })
}

/// The key of the first entry an origin still holds.
pub(crate) fn first_key(origin: Origin, base: &Base) -> [u8; 16] {
    log_key(origin, base.seq + 1)
}

/// The error for a read of pruned history.
pub(crate) fn pruned(origin: Origin, seq: u64, base: u64) -> WalError {
    WalError::Pruned {
        place: Place { origin, seq },
        base,
    }
}
