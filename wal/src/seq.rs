//! Origins, sequence numbers and version vectors.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A node's origin number: the first eight bytes (big-endian) of blake3 in
/// derive-key mode (context `tandem node origin v1`) over its configured node
/// id. Fixed width so log keys sort by (origin, seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Origin(pub u64);

impl Origin {
    /// Derive the origin number from a node id string.
    pub fn from_node_id(id: &str) -> Origin {
        let h = blake3::Hasher::new_derive_key("tandem node origin v1")
            .update(id.as_bytes())
            .finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        Origin(u64::from_be_bytes(b))
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Key of an entry in the `log` column family: origin then seq, both
/// big-endian so RocksDB's byte order is log order.
pub fn log_key(origin: Origin, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&origin.0.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Inverse of [`log_key`].
pub fn parse_log_key(k: &[u8]) -> Option<(Origin, u64)> {
    if k.len() != 16 {
        return None;
    }
    let o = u64::from_be_bytes(k[..8].try_into().ok()?);
    let s = u64::from_be_bytes(k[8..].try_into().ok()?);
    Some((Origin(o), s))
}

/// `{origin: last seq}` — how much of every origin's log a node holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<Origin, u64>);

impl VersionVector {
    pub fn get(&self, o: Origin) -> u64 {
        self.0.get(&o).copied().unwrap_or(0)
    }
    pub fn set(&mut self, o: Origin, seq: u64) {
        self.0.insert(o, seq);
    }
    /// True when `self` holds everything `other` holds.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(o, s)| self.get(*o) >= *s)
    }
}
