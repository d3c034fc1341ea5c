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
//!
//! [`SegmentWriter`] streams a segment to any `io::Write` (an entry at a
//! time, never the whole segment in memory) and [`SegmentReader`] reads one
//! back from any `io::Read`, verifying every entry against the chain as it
//! goes: an entry is handed out only once it is verified, so a caller that
//! applies entries as they come never applies one past the first fault.
//! [`encode`] and [`decode`] are the in-memory forms of both.

use crate::error::SegmentError;
use crate::record::{Entry, Hash};
use crate::seq::Origin;
use std::io::{self, Read, Write};

pub const SEGMENT_MAGIC: &[u8; 8] = b"TNDMSEG\0";
pub const SEGMENT_VERSION: u16 = 1;
/// Bytes of the header, before the first entry.
pub const HEADER_LEN: usize = 66;
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

/// What a finished segment is: enough to name it in a manifest and to check
/// the next segment of the same origin against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    pub origin: Origin,
    pub first: u64,
    pub last: u64,
    /// Chain hash of the entry before `first`.
    pub prev_hash: Hash,
    /// Chain hash of entry `last`.
    pub last_hash: Hash,
    /// The closing hash (blake3 of every byte before it).
    pub closing: Hash,
    /// Length of the whole segment in bytes.
    pub len: u64,
}

/// Streams one segment to `w`: the header at creation, each entry as it is
/// pushed, the closing hash at [`SegmentWriter::finish`]. The seq range is
/// fixed up front (it is in the header), so the caller knows it before the
/// first entry.
pub struct SegmentWriter<W: Write> {
    w: W,
    hasher: blake3::Hasher,
    origin: Origin,
    first: u64,
    last: u64,
    next: u64,
    prev_hash: Hash,
    chain: Hash,
    len: u64,
}

impl<W: Write> SegmentWriter<W> {
    /// Start a segment of `origin` over `first..=last` whose first entry
    /// follows `prev_hash`. Panics on an empty range or a range starting at
    /// 0: caller bugs, not input.
    pub fn new(w: W, origin: Origin, first: u64, last: u64, prev_hash: &Hash) -> io::Result<SegmentWriter<W>> {
        assert!(first >= 1 && last >= first, "a segment holds at least one entry, from seq 1 on");
        let mut s = SegmentWriter {
            w,
            hasher: blake3::Hasher::new(),
            origin,
            first,
            last,
            next: first,
            prev_hash: *prev_hash,
            chain: *prev_hash,
            len: 0,
        };
        let mut head = Vec::with_capacity(HEADER_LEN);
        head.extend_from_slice(SEGMENT_MAGIC);
        head.extend_from_slice(&SEGMENT_VERSION.to_be_bytes());
        head.extend_from_slice(&origin.0.to_be_bytes());
        head.extend_from_slice(&first.to_be_bytes());
        head.extend_from_slice(&last.to_be_bytes());
        head.extend_from_slice(prev_hash);
        s.put(&head)?;
        Ok(s)
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.hasher.update(b);
        self.w.write_all(b)?;
        self.len += b.len() as u64;
        Ok(())
    }

    /// The next seq this writer expects.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Chain hash of the last entry pushed (the previous hash before any).
    pub fn chain_hash(&self) -> &Hash {
        &self.chain
    }

    /// Append the next entry. Panics when it is not the next seq of this
    /// origin or does not follow the chain (caller bugs).
    pub fn push(&mut self, e: &Entry) -> io::Result<()> {
        assert!(
            e.origin == self.origin && e.seq == self.next && self.next <= self.last,
            "segment entries must be consecutive in one origin, within the declared range"
        );
        assert!(e.follows(&self.chain), "segment entries must follow the chain");
        let v = e.encode_value();
        self.put(&(v.len() as u32).to_be_bytes())?;
        self.put(&v)?;
        self.chain = e.hash;
        self.next += 1;
        Ok(())
    }

    /// Write the closing hash and hand back the writer. Panics when fewer
    /// entries than declared were pushed.
    pub fn finish(mut self) -> io::Result<(W, Sealed)> {
        assert!(self.next == self.last + 1, "segment closed before its last entry");
        let closing = *self.hasher.finalize().as_bytes();
        self.w.write_all(&closing)?;
        self.len += 32;
        Ok((
            self.w,
            Sealed {
                origin: self.origin,
                first: self.first,
                last: self.last,
                prev_hash: self.prev_hash,
                last_hash: self.chain,
                closing,
                len: self.len,
            },
        ))
    }
}

/// Encode consecutive entries of one origin. `prev_hash` is the chain hash
/// of the entry before the first. Panics if `entries` is empty, mixes
/// origins, skips a seq or breaks the chain: those are caller bugs, not input.
pub fn encode(prev_hash: &Hash, entries: &[Entry]) -> Vec<u8> {
    assert!(!entries.is_empty(), "a segment holds at least one entry");
    let first = entries[0].seq;
    let last = entries[entries.len() - 1].seq;
    let cap = HEADER_LEN + 32 + entries.iter().map(|e| e.payload.len() + 45).sum::<usize>();
    let mut w = SegmentWriter::new(Vec::with_capacity(cap), entries[0].origin, first, last, prev_hash).expect("writing to memory");
    for e in entries {
        w.push(e).expect("writing to memory");
    }
    w.finish().expect("writing to memory").0
}

/// Reads a segment from `r`, verifying as it goes. [`SegmentReader::open`]
/// checks the header; each [`SegmentReader::next_entry`] hands out the next
/// entry only once its chain link verifies, and after the last entry checks
/// the closing hash and that nothing follows it. Errors name origin, seq and
/// byte offset.
pub struct SegmentReader<R: Read> {
    r: R,
    hasher: blake3::Hasher,
    origin: Origin,
    first: u64,
    last: u64,
    prev_hash: Hash,
    next: u64,
    chain: Hash,
    offset: u64,
    /// The closing hash, once checked.
    closing: Option<Hash>,
}

/// Read exactly `buf.len()` bytes; `Ok(false)` when the input ends first.
fn fill<R: Read>(r: &mut R, buf: &mut [u8], offset: u64) -> Result<bool, SegmentError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(SegmentError::Io {
                    offset: offset + got as u64,
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(true)
}

impl<R: Read> SegmentReader<R> {
    /// Read and check the header.
    pub fn open(mut r: R) -> Result<SegmentReader<R>, SegmentError> {
        let mut head = [0u8; HEADER_LEN];
        if !fill(&mut r, &mut head[..8], 0)? || &head[..8] != SEGMENT_MAGIC {
            return Err(SegmentError::BadMagic);
        }
        if !fill(&mut r, &mut head[8..], 8)? {
            return Err(SegmentError::Header {
                offset: 8,
                reason: format!("input ends inside the {HEADER_LEN}-byte header"),
            });
        }
        let version = u16::from_be_bytes([head[8], head[9]]);
        if version != SEGMENT_VERSION {
            return Err(SegmentError::Version { version });
        }
        let origin = Origin(be_u64(&head, 10));
        let first = be_u64(&head, 18);
        let last = be_u64(&head, 26);
        if first == 0 || last < first {
            return Err(SegmentError::Header {
                offset: 18,
                reason: format!("seq range {first}..={last} is empty or starts at 0"),
            });
        }
        let mut prev_hash = [0u8; 32];
        prev_hash.copy_from_slice(&head[34..66]);
        if first == 1 && prev_hash != crate::record::GENESIS {
            return Err(SegmentError::Header {
                offset: 34,
                reason: "a segment starting at seq 1 must name the genesis (zero) hash".into(),
            });
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&head);
        Ok(SegmentReader {
            r,
            hasher,
            origin,
            first,
            last,
            prev_hash,
            next: first,
            chain: prev_hash,
            offset: HEADER_LEN as u64,
            closing: None,
        })
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }
    pub fn first_seq(&self) -> u64 {
        self.first
    }
    pub fn last_seq(&self) -> u64 {
        self.last
    }
    /// Chain hash of the entry before the first, as the header says.
    pub fn prev_hash(&self) -> &Hash {
        &self.prev_hash
    }
    /// Chain hash of the last entry handed out (the header's previous hash
    /// before any).
    pub fn chain_hash(&self) -> &Hash {
        &self.chain
    }
    /// Byte offset of the next entry.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next verified entry, or `None` once the closing hash has been
    /// checked and the input is known to end there.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, SegmentError> {
        if self.closing.is_some() {
            return Ok(None);
        }
        let (origin, seq, offset) = (self.origin, self.next, self.offset);
        if seq > self.last {
            return self.close().map(|()| None);
        }
        let mut lb = [0u8; 4];
        if !fill(&mut self.r, &mut lb, offset)? {
            return Err(SegmentError::Truncated { origin, seq, offset });
        }
        let len = u32::from_be_bytes(lb);
        if len > MAX_ENTRY_LEN {
            return Err(SegmentError::Entry {
                origin,
                seq,
                offset,
                reason: format!("length {len} exceeds the {MAX_ENTRY_LEN}-byte limit"),
            });
        }
        let mut v = Vec::new();
        let got = (&mut self.r).take(len as u64).read_to_end(&mut v).map_err(|e| SegmentError::Io {
            offset: offset + 4,
            reason: e.to_string(),
        })?;
        if got < len as usize {
            return Err(SegmentError::Truncated { origin, seq, offset });
        }
        let e = Entry::decode_value(origin, seq, &v).map_err(|reason| SegmentError::Entry {
            origin,
            seq,
            offset,
            reason,
        })?;
        if !e.follows(&self.chain) {
            return Err(SegmentError::Entry {
                origin,
                seq,
                offset,
                reason: "hash chain broken".into(),
            });
        }
        self.hasher.update(&lb);
        self.hasher.update(&v);
        self.offset += 4 + len as u64;
        self.chain = e.hash;
        self.next += 1;
        Ok(Some(e))
    }

    /// Check the closing hash and that the input ends right after it.
    fn close(&mut self) -> Result<(), SegmentError> {
        let offset = self.offset;
        let mut closing = [0u8; 32];
        if !fill(&mut self.r, &mut closing, offset)? {
            return Err(SegmentError::Truncated {
                origin: self.origin,
                seq: self.last + 1,
                offset,
            });
        }
        if self.hasher.finalize().as_bytes() != &closing {
            return Err(SegmentError::ClosingHash {
                origin: self.origin,
                first: self.first,
                last: self.last,
                offset,
            });
        }
        let extra = io::copy(&mut (&mut self.r).take(1 << 30), &mut io::sink()).map_err(|e| SegmentError::Io {
            offset: offset + 32,
            reason: e.to_string(),
        })?;
        if extra > 0 {
            return Err(SegmentError::Trailing {
                offset: offset + 32,
                extra,
            });
        }
        self.closing = Some(closing);
        Ok(())
    }

    /// What the segment is, once it has been read and verified to its end.
    pub fn sealed(&self) -> Option<Sealed> {
        self.closing.map(|closing| Sealed {
            origin: self.origin,
            first: self.first,
            last: self.last,
            prev_hash: self.prev_hash,
            last_hash: self.chain,
            closing,
            len: self.offset + 32,
        })
    }

    /// Read and verify the rest of the segment, entries included.
    pub fn verify_rest(&mut self) -> Result<(), SegmentError> {
        while self.next_entry()?.is_some() {}
        Ok(())
    }
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Decode and verify a segment: header, every entry against the chain, and
/// the closing hash. Errors name origin, seq and byte offset.
pub fn decode(bytes: &[u8]) -> Result<Segment, SegmentError> {
    let mut r = SegmentReader::open(bytes)?;
    let mut entries = Vec::with_capacity((r.last_seq() - r.first_seq() + 1).min(1 << 16) as usize);
    while let Some(e) = r.next_entry()? {
        entries.push(e);
    }
    Ok(Segment {
        origin: r.origin(),
        prev_hash: *r.prev_hash(),
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

    /// Hands out at most one byte per read, as a slow network would.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }

    #[test]
    fn streamed_writer_matches_and_reader_reads_a_trickle() {
        let es = chain(7);
        let mut w = SegmentWriter::new(Vec::new(), Origin(3), 1, 7, &GENESIS).unwrap();
        for e in &es {
            w.push(e).unwrap();
        }
        let (bytes, sealed) = w.finish().unwrap();
        assert_eq!(bytes, encode(&GENESIS, &es));
        assert_eq!(sealed.len, bytes.len() as u64);
        assert_eq!(sealed.last_hash, es[6].hash);
        assert_eq!(&sealed.closing[..], &bytes[bytes.len() - 32..]);
        let mut r = SegmentReader::open(Trickle(&bytes)).unwrap();
        let mut got = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            got.push(e);
        }
        assert_eq!(got, es);
        assert_eq!(r.chain_hash(), &es[6].hash);
    }

    #[test]
    fn segment_in_the_middle_of_a_chain() {
        let es = chain(9);
        let bytes = encode(&es[3].hash, &es[4..]);
        let seg = decode(&bytes).unwrap();
        assert_eq!((seg.first_seq(), seg.last_seq(), seg.prev_hash), (5, 9, es[3].hash));
    }

    #[test]
    fn truncated_stream_hands_out_only_verified_entries() {
        let es = chain(4);
        let bytes = encode(&GENESIS, &es);
        // Cut inside the third entry.
        let cut = HEADER_LEN + 2 * (4 + es[0].encode_value().len()) + 10;
        let mut r = SegmentReader::open(&bytes[..cut]).unwrap();
        assert_eq!(r.next_entry().unwrap().unwrap().seq, 1);
        assert_eq!(r.next_entry().unwrap().unwrap().seq, 2);
        let off = (HEADER_LEN + 2 * (4 + es[0].encode_value().len())) as u64;
        assert_eq!(
            r.next_entry().unwrap_err(),
            SegmentError::Truncated {
                origin: Origin(3),
                seq: 3,
                offset: off
            }
        );
    }
}
