//! Segments: a contiguous range of one origin's log as a self-verifying file
//! (backups, replication, restore). Layout, all integers big-endian:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "TNDMSEG\0"
//! 8       2     format version (1)
//! 10      8     origin
//! 18      8     first seq
//! 26      8     last seq (>= first seq)
//! 34      32    chain hash of the entry before first seq (zeros for seq 1)
//! 66      ...   (last - first + 1) entries, each:
//!                 4  length n of the stored value
//!                 n  stored value (see record.rs: version, hash, hlc, payload)
//! end-32  32    closing hash: blake3 of every byte before it
//! ```

use crate::error::SegmentError;
use crate::record::{Entry, Hash};
use crate::seq::Origin;

pub const SEGMENT_MAGIC: &[u8; 8] = b"TNDMSEG\0";
pub const SEGMENT_VERSION: u16 = 1;
const HEADER_LEN: usize = 66;
/// Upper bound for one entry inside a segment (guards allocations).
pub const MAX_ENTRY_LEN: u32 = 256 << 20;

/// A decoded and verified segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub origin: Origin,
    pub prev_hash: Hash,
    pub entries: Vec<Entry>,
}

impl Segment {
    pub fn first_seq(&self) -> u64 {
        self.entries.first().map(|e| e.seq).unwrap_or(0)
    }
    pub fn last_seq(&self) -> u64 {
        self.entries.last().map(|e| e.seq).unwrap_or(0)
    }
}

/// Encode consecutive entries of one origin. `prev_hash` is the chain hash
/// of the entry before the first. Panics if `entries` is empty, mixes
/// origins or skips a seq: those are caller bugs, not input.
pub fn encode(prev_hash: &Hash, entries: &[Entry]) -> Vec<u8> {
    assert!(!entries.is_empty(), "a segment holds at least one entry");
    let origin = entries[0].origin;
    let first = entries[0].seq;
    let last = entries[entries.len() - 1].seq;
    for (i, e) in entries.iter().enumerate() {
        assert!(
            e.origin == origin && e.seq == first + i as u64,
            "segment entries must be consecutive in one origin"
        );
    }
    let mut out = Vec::with_capacity(HEADER_LEN + 32 + entries.iter().map(|e| e.payload.len() + 45).sum::<usize>());
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&SEGMENT_VERSION.to_be_bytes());
    out.extend_from_slice(&origin.0.to_be_bytes());
    out.extend_from_slice(&first.to_be_bytes());
    out.extend_from_slice(&last.to_be_bytes());
    out.extend_from_slice(prev_hash);
    for e in entries {
        let v = e.encode_value();
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(&v);
    }
    let closing = blake3::hash(&out);
    out.extend_from_slice(closing.as_bytes());
    out
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Decode and verify a segment: header, every entry against the chain, and
/// the closing hash. Errors name origin, seq and byte offset.
pub fn decode(bytes: &[u8]) -> Result<Segment, SegmentError> {
    if bytes.len() < 8 || &bytes[..8] != SEGMENT_MAGIC {
        return Err(SegmentError::BadMagic);
    }
    if bytes.len() < HEADER_LEN {
        return Err(SegmentError::Header {
            offset: bytes.len() as u64,
            reason: format!("header needs {HEADER_LEN} bytes"),
        });
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != SEGMENT_VERSION {
        return Err(SegmentError::Version { version });
    }
    let origin = Origin(be_u64(bytes, 10));
    let first = be_u64(bytes, 18);
    let last = be_u64(bytes, 26);
    if first == 0 || last < first {
        return Err(SegmentError::Header {
            offset: 18,
            reason: format!("seq range {first}..={last} is empty or starts at 0"),
        });
    }
    let mut prev_hash = [0u8; 32];
    prev_hash.copy_from_slice(&bytes[34..66]);
    if first == 1 && prev_hash != crate::record::GENESIS {
        return Err(SegmentError::Header {
            offset: 34,
            reason: "a segment starting at seq 1 must name the genesis (zero) hash".into(),
        });
    }
    let count = last - first + 1;
    let mut entries = Vec::with_capacity(count.min(1 << 16) as usize);
    let mut pos = HEADER_LEN;
    let mut prev = prev_hash;
    for i in 0..count {
        let seq = first + i;
        let offset = pos as u64;
        if bytes.len() < pos + 4 {
            return Err(SegmentError::Truncated { origin, seq, offset });
        }
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes"));
        if len > MAX_ENTRY_LEN {
            return Err(SegmentError::Entry {
                origin,
                seq,
                offset,
                reason: format!("length {len} exceeds the {MAX_ENTRY_LEN}-byte limit"),
            });
        }
        let body = pos + 4;
        let end = body + len as usize;
        if bytes.len() < end {
            return Err(SegmentError::Truncated { origin, seq, offset });
        }
        let e = Entry::decode_value(origin, seq, &bytes[body..end]).map_err(|reason| SegmentError::Entry {
            origin,
            seq,
            offset,
            reason,
        })?;
        if !e.follows(&prev) {
            return Err(SegmentError::Entry {
                origin,
                seq,
                offset,
                reason: "hash chain broken".into(),
            });
        }
        prev = e.hash;
        entries.push(e);
        pos = end;
    }
    if bytes.len() < pos + 32 {
        return Err(SegmentError::Truncated {
            origin,
            seq: last + 1,
            offset: pos as u64,
        });
    }
    if blake3::hash(&bytes[..pos]).as_bytes() != &bytes[pos..pos + 32] {
        return Err(SegmentError::ClosingHash {
            origin,
            first,
            last,
            offset: pos as u64,
        });
    }
    if bytes.len() > pos + 32 {
        return Err(SegmentError::Trailing {
            offset: (pos + 32) as u64,
            extra: (bytes.len() - pos - 32) as u64,
        });
    }
    Ok(Segment {
        origin,
        prev_hash,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::GENESIS;

    fn chain(n: u64) -> Vec<Entry> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|s| {
                let e = Entry::new(&prev, Origin(3), s, s * 10, format!("payload {s}").into_bytes());
                prev = e.hash;
                e
            })
            .collect()
    }

    #[test]
    fn round_trip() {
        let es = chain(5);
        let bytes = encode(&GENESIS, &es);
        let seg = decode(&bytes).unwrap();
        assert_eq!(seg.entries, es);
        assert_eq!((seg.first_seq(), seg.last_seq()), (1, 5));
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let es = chain(3);
        let bytes = encode(&GENESIS, &es);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode(&b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = encode(&GENESIS, &chain(3));
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "truncation to {n} accepted");
        }
    }

    #[test]
    fn flipped_payload_names_origin_seq_offset() {
        let es = chain(3);
        let mut bytes = encode(&GENESIS, &es);
        // Second entry starts after the header and the first entry.
        let first_len = 4 + es[0].encode_value().len();
        let off = HEADER_LEN + first_len;
        bytes[off + 4 + 41] ^= 0xff; // first payload byte of seq 2
        match decode(&bytes) {
            Err(SegmentError::Entry { origin, seq, offset, .. }) => {
                assert_eq!((origin, seq, offset), (Origin(3), 2, off as u64));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
