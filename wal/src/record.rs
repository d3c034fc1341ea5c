//! Log entries, their stored encoding and the per-origin hash chain.
//!
//! Stored value of one entry in the `log` column family (all integers
//! big-endian; see `docs/format.md`):
//!
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       32    chain hash of this entry
//! 33      8     hybrid logical clock of the entry
//! 41      n     payload (opaque to the log; the daemon stores a postcard event)
//! ```

use crate::seq::Origin;

/// Version byte of a stored entry.
pub const ENTRY_FORMAT: u8 = 1;
/// Bytes before the payload in a stored entry.
pub const ENTRY_HEADER_LEN: usize = 1 + 32 + 8;
/// The previous hash of seq 1 in every origin.
pub const GENESIS: Hash = [0u8; 32];

pub type Hash = [u8; 32];

/// One entry of one origin's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub origin: Origin,
    pub seq: u64,
    /// Hybrid logical clock: milliseconds since the epoch << 16 | counter.
    pub hlc: u64,
    pub payload: Vec<u8>,
    /// Chain hash: commits to the previous entry's hash and to this entry.
    pub hash: Hash,
}

/// The chain hash of an entry given the hash of its predecessor.
pub fn chain_hash(prev: &Hash, origin: Origin, seq: u64, hlc: u64, payload: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("tandem wal entry v1");
    h.update(prev);
    h.update(&origin.0.to_be_bytes());
    h.update(&seq.to_be_bytes());
    h.update(&hlc.to_be_bytes());
    h.update(&(payload.len() as u64).to_be_bytes());
    h.update(payload);
    *h.finalize().as_bytes()
}

impl Entry {
    /// Where this entry stands once applied at `order` of this node's
    /// apply order: what the views are given for an entry read back from
    /// the log (a replay, a point-in-time restore).
    #[cfg(feature = "store")]
    pub fn at(&self, order: u64) -> crate::Appended {
        crate::Appended {
            origin: self.origin,
            seq: self.seq,
            order,
            hlc: self.hlc,
            hash: self.hash,
        }
    }

    /// Build the entry that follows `prev` in `origin`'s chain.
    pub fn new(prev: &Hash, origin: Origin, seq: u64, hlc: u64, payload: Vec<u8>) -> Entry {
        let hash = chain_hash(prev, origin, seq, hlc, &payload);
        Entry {
            origin,
            seq,
            hlc,
            payload,
            hash,
        }
    }

    /// Does this entry follow `prev`?
    pub fn follows(&self, prev: &Hash) -> bool {
        chain_hash(prev, self.origin, self.seq, self.hlc, &self.payload) == self.hash
    }

    /// Encode as stored in the `log` column family.
    pub fn encode_value(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(ENTRY_HEADER_LEN + self.payload.len());
        v.push(ENTRY_FORMAT);
        v.extend_from_slice(&self.hash);
        v.extend_from_slice(&self.hlc.to_be_bytes());
        v.extend_from_slice(&self.payload);
        v
    }

    /// Decode a stored value. The chain is not checked here.
    pub fn decode_value(origin: Origin, seq: u64, v: &[u8]) -> Result<Entry, String> {
        if v.len() < ENTRY_HEADER_LEN {
            return Err(format!(
                "value is {} bytes, shorter than the {ENTRY_HEADER_LEN}-byte header",
                v.len()
            ));
        }
        if v[0] != ENTRY_FORMAT {
            return Err(format!("unknown entry format version {}", v[0]));
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&v[1..33]);
        let mut hlc = [0u8; 8];
        hlc.copy_from_slice(&v[33..41]);
        Ok(Entry {
            origin,
            seq,
            hlc: u64::from_be_bytes(hlc),
            payload: v[41..].to_vec(),
            hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trip() {
        let e = Entry::new(&GENESIS, Origin(7), 1, 99, b"hello".to_vec());
        let v = e.encode_value();
        assert_eq!(Entry::decode_value(Origin(7), 1, &v).unwrap(), e);
        assert!(e.follows(&GENESIS));
    }

    #[test]
    fn flipped_byte_breaks_chain() {
        let e = Entry::new(&GENESIS, Origin(7), 1, 99, b"hello".to_vec());
        let mut v = e.encode_value();
        for i in 1..v.len() {
            v[i] ^= 0x20;
            let d = Entry::decode_value(Origin(7), 1, &v).unwrap();
            assert!(!d.follows(&GENESIS), "flip at {i} not detected");
            v[i] ^= 0x20;
        }
        v[0] = 9;
        assert!(Entry::decode_value(Origin(7), 1, &v).is_err());
    }
}
