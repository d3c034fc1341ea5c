//! Errors of the log, one enum per concern so callers can branch on what happened.

use crate::seq::Origin;

/// Where a corrupt record was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub origin: Origin,
    pub seq: u64,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "origin {} seq {}", self.origin, self.seq)
    }
}

/// Errors of the log store.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// RocksDB reported an error. Its kind is kept so callers can tell
    /// Busy/TryAgain from I/O failures.
    #[cfg(feature = "store")]
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored record does not verify: wrong format version, broken hash
    /// chain, a gap, or an entry past its origin's head.
    #[error("corrupt log at {place}: {reason}")]
    Corrupt { place: Place, reason: String },
    /// A record in the meta column family cannot be decoded.
    #[error("corrupt log metadata (key {key}): {reason}")]
    CorruptMeta { key: String, reason: String },
    /// An earlier durable write failed. The handle refuses all later work
    /// until the log is reopened: a failed fsync is never retried silently.
    #[error("log is poisoned by an earlier failed write ({0}); reopen the store")]
    Poisoned(String),
    /// A remote entry does not follow its origin's chain.
    #[error("entry does not continue the chain at {place}: {reason}")]
    Discontinuous { place: Place, reason: String },
    /// An entry offered for a seq already held has a different hash: two
    /// histories of one origin (a node whose log went backwards and then
    /// appended again). Nothing of the offering batch is applied.
    #[error("history fork at {place}: the entry held here has hash {held}, the one offered has {offered}")]
    Fork { place: Place, held: String, offered: String },
    /// The store belongs to another node: its log was written as another
    /// origin. Opening it as this one would fork that origin's chain.
    #[error("this store was written by origin {stored}, not {given}; the node id must not change under a data directory")]
    WrongOrigin { stored: Origin, given: Origin },
    /// The entry asked for was pruned: this node's log of that origin
    /// starts after `base` (see `crate::prune`). Whoever needs it must be
    /// repaired by merkle trees instead.
    #[error("history pruned: {place} asked for, but this log holds that origin only after seq {base}")]
    Pruned { place: Place, base: u64 },
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// A column family the caller asked for was not declared at open.
    #[error("unknown column family {0}")]
    UnknownCf(String),
}

/// Result of a transaction submitted to the group-commit writer.
#[derive(Debug, thiserror::Error)]
pub enum AppendError<E> {
    /// The caller's closure refused the mutation; nothing was written.
    #[error("rejected: {0}")]
    Rejected(E),
    /// The log failed; the mutation is not durable.
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// Errors of segment files. Every variant says where decoding stopped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("segment: bad magic at byte offset 0")]
    BadMagic,
    #[error("segment: unsupported format version {version} at byte offset 8")]
    Version { version: u16 },
    #[error("segment: truncated at byte offset {offset} (origin {origin}, expecting seq {seq})")]
    Truncated { origin: Origin, seq: u64, offset: u64 },
    #[error("segment: header invalid at byte offset {offset}: {reason}")]
    Header { offset: u64, reason: String },
    #[error("segment: entry origin {origin} seq {seq} at byte offset {offset} is corrupt: {reason}")]
    Entry {
        origin: Origin,
        seq: u64,
        offset: u64,
        reason: String,
    },
    #[error("segment: closing hash missing at byte offset {offset} (origin {origin}, seqs {first}..={last})")]
    MissingClosingHash {
        origin: Origin,
        first: u64,
        last: u64,
        offset: u64,
    },
    #[error("segment: closing hash mismatch at byte offset {offset} (origin {origin}, seqs {first}..={last})")]
    ClosingHash {
        origin: Origin,
        first: u64,
        last: u64,
        offset: u64,
    },
    #[error("segment: {extra} unexpected bytes after the closing hash at byte offset {offset}")]
    Trailing { offset: u64, extra: u64 },
    /// Reading the segment failed (not its content).
    #[error("segment: read failed at byte offset {offset}: {reason}")]
    Io { offset: u64, reason: String },
}
