//! # wal — Tandem's event log
//!
//! Every mailbox mutation in Tandem is an entry in a per-origin log. This
//! crate stores those logs in RocksDB and nothing else: it is synchronous,
//! knows no network and no async runtime, and treats payloads as opaque bytes.
//!
//! # Layout
//! - [`seq`]: origins, `(origin, seq)` keys, version vectors.
//! - [`record`]: the stored entry encoding and the blake3 hash chain.
//! - [`store`]: [`Wal`] — open and recovery, reads, verification, tail.
//! - [`writer`]: group commit; [`Txn`] lets a caller put its view updates
//!   into the batch of the entry that causes them.
//! - [`segment`]: self-verifying files of a contiguous range of one origin.
//! - `recovery`: what open checks (torn tail vs corruption).
//! - `shadow`: a column family rebuilt in memory ([`Wal::shadow_begin`]).
//! - [`prune`]: dropping the oldest entries of each origin behind a base
//!   record, so the rest still verifies ([`Wal::prune`]).
//!
//! The byte-level format is in `docs/format.md`.

pub mod error;
#[cfg(feature = "store")]
pub mod prune;
pub mod record;
#[cfg(feature = "store")]
mod recovery;
pub mod segment;
pub mod seq;
#[cfg(feature = "store")]
mod shadow;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "store")]
pub mod writer;

pub use error::{AppendError, Place, SegmentError, WalError};
#[cfg(feature = "store")]
pub use prune::{Base, Kept, PruneLimits, PruneReport};
pub use record::{Entry, Hash, GENESIS};
pub use seq::{Origin, VersionVector};
#[cfg(feature = "store")]
pub use shadow::Shadow;
#[cfg(feature = "store")]
pub use store::{
    Cf, CfDisk, DiskUsage, GroupTiming, KeyValues, MemoryBudget, MemorySnapshot, RecoveryMode, RecoveryReport, StatsSnapshot, Wal,
    WalOptions,
};
#[cfg(feature = "store")]
pub use writer::{Appended, Rehomed, Txn};
