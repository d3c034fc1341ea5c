//! The backup layout: object names, the marker and the manifests (see
//! `docs/format.md`, "Backups").
//!
//! ```text
//! tandem-backup                         marker: format and node id
//! runs/<n>.run                          format 3: everything run n wrote, in
//!                                       one object (n: 20 digits): its new
//!                                       bodies, a segment per origin, its
//!                                       manifest, and a footer locating it
//! segments/<origin>/<first>-<last>.seg  formats 1-2: wal segments (origin
//!                                       16 hex digits, seqs 20 decimal digits)
//! packs/<n>-<k>.pack                    format 2: the bodies run n wrote (n:
//!                                       20 digits, k: 3), indexed by manifest n
//! bodies/<hh>/<hash>                    format 1: one object per body, by
//!                                       blake3
//! manifests/<n>.man                     formats 1-2: one per backup run
//! leases/<name>.lease                   restores in progress (prune keeps
//!                                       what they use)
//! ```
//!
//! Formats 1 and 2 are read, never written now.

use super::target::Target;
use super::BackupError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use wal::segment::SegmentReader;
use wal::{Hash, Origin, SegmentError};

/// Version of the layout written, in the marker and every manifest: 3
/// writes one run object per run (bodies, segments and manifest together);
/// 2 wrote a pack, a segment per origin and a manifest per run; 1 one
/// object per body. Readers take all three, also mixed in one backup (an
/// older backup that a newer writer continues).
pub const LAYOUT_FORMAT: u32 = 3;
/// Oldest layout still read.
pub const OLDEST_FORMAT: u32 = 1;
pub const MARKER: &str = "tandem-backup";
pub const MANIFEST_DIR: &str = "manifests";
/// Format 3's run objects.
pub const RUN_DIR: &str = "runs";
/// The first bytes of every run object; its new bodies follow back to back.
pub const RUN_MAGIC: &[u8; 16] = b"tandem-run 3\n\0\0\0";
/// The last 8 bytes of every run object, after the manifest's byte offset
/// (u64 big-endian).
pub const RUN_FOOTER_MAGIC: &[u8; 8] = b"TNDMRUN3";
/// Length of a run object's footer.
pub const RUN_FOOTER_LEN: u64 = 16;
/// Bytes read from a run object's end at once: the footer and, mostly,
/// the whole manifest in one ranged read.
pub const RUN_TAIL_READ: u64 = 64 << 10;
pub const PACK_DIR: &str = "packs";
/// Format 1's body objects.
pub const BODY_DIR: &str = "bodies";
/// The first bytes of every pack; bodies follow back to back.
pub const PACK_MAGIC: &[u8; 16] = b"tandem-pack 2\n\0\0";
pub const LEASE_DIR: &str = "leases";
/// Largest manifest read (guards allocations).
pub const MAX_MANIFEST_LEN: u64 = 64 << 20;

pub fn segment_name(origin: Origin, first: u64, last: u64) -> String {
    format!("segments/{origin}/{first:020}-{last:020}.seg")
}

pub fn body_name(hash: &[u8; 32]) -> String {
    let h = hex::encode(hash);
    format!("bodies/{}/{h}", &h[..2])
}

/// Pack `k` of run (manifest) `number`.
pub fn pack_name(number: u64, k: u32) -> String {
    format!("{PACK_DIR}/{number:020}-{k:03}.pack")
}

/// The run number a pack object's name (below `packs/`) carries.
pub fn pack_number(file: &str) -> Option<u64> {
    let (n, k) = file.strip_suffix(".pack")?.split_once('-')?;
    (n.len() == 20 && k.len() == 3 && k.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// Run object of run (manifest) `number` (format 3).
pub fn run_name(number: u64) -> String {
    format!("{RUN_DIR}/{number:020}.run")
}

/// The run number a run object's name (below `runs/`) carries.
pub fn run_number(file: &str) -> Option<u64> {
    let n = file.strip_suffix(".run")?;
    (n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// The run a body-holding object belongs to: a pack (`packs/N-K.pack`,
/// format 2) or a run object (`runs/N.run`, format 3).
pub fn body_object_number(object: &str) -> Option<u64> {
    if let Some(f) = object.strip_prefix("packs/") {
        pack_number(f)
    } else {
        run_number(object.strip_prefix("runs/")?)
    }
}

pub fn manifest_name(number: u64) -> String {
    format!("{MANIFEST_DIR}/{number:020}.man")
}

/// The marker's bytes for `node_id`.
pub fn marker(node_id: &str) -> String {
    format!("tandem-backup {LAYOUT_FORMAT}\nnode {node_id}\n")
}

/// The node id a marker names.
pub fn parse_marker(text: &str) -> Result<String, BackupError> {
    let mut lines = text.lines();
    let bad = |reason: &str| BackupError::Corrupt {
        object: MARKER.into(),
        reason: reason.into(),
    };
    let format = lines
        .next()
        .and_then(|l| l.strip_prefix("tandem-backup "))
        .and_then(|v| v.parse::<u32>().ok());
    if !format.is_some_and(|f| (OLDEST_FORMAT..=LAYOUT_FORMAT).contains(&f)) {
        return Err(bad(&format!(
            "first line is not `tandem-backup {OLDEST_FORMAT}` to `tandem-backup {LAYOUT_FORMAT}` (not a Tandem backup, or a newer format)"
        )));
    }
    match lines.next().and_then(|l| l.strip_prefix("node ")) {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(bad("second line does not name the node")),
    }
}

/// A run of consecutive entries of one origin in the node's apply order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub origin: String,
    pub first: u64,
    pub last: u64,
}

/// A segment object as a manifest names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    pub object: String,
    pub origin: String,
    pub first: u64,
    pub last: u64,
    /// Chain hash before `first` and of `last` (hex).
    pub prev_hash: String,
    pub last_hash: String,
    /// The segment's closing hash (hex) and length in bytes.
    pub closing: String,
    pub len: u64,
    /// Format 3: the segment's byte offset inside the run object `object`
    /// (absent in formats 1-2, where the segment is an object of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl SegmentRef {
    /// The segment as error messages name it: its object, and where in
    /// the object it starts when it shares a run object.
    pub fn describe(&self) -> String {
        match self.offset {
            Some(off) => format!("{} (the segment of origin {} at byte offset {off})", self.object, self.origin),
            None => self.object.clone(),
        }
    }
}

/// One body in a pack: blake3 (hex), byte offset in the pack, length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedBody(pub String, pub u64, pub u64);

/// A pack object as a manifest (or a base) names it, with its index. In
/// format 3 the "pack" is the body section of a run object: `object` is
/// the run object, `len` where its bodies end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    pub object: String,
    /// Length of the whole object and its blake3 (hex).
    pub len: u64,
    pub blake3: String,
    /// Every body in the pack, in the order written.
    pub bodies: Vec<PackedBody>,
}

impl PackRef {
    /// Check the index against itself: a pack or run object name, bodies
    /// after the 16-byte magic, in order, back to back, ending at `len`,
    /// hashes that parse. `owner` names the manifest or base it came from.
    pub fn check(&self, owner: &str) -> Result<(), BackupError> {
        let bad = |reason: String| BackupError::Corrupt {
            object: owner.to_string(),
            reason,
        };
        if body_object_number(&self.object).is_none() {
            return Err(bad(format!("{:?} is not a pack or run object name", self.object)));
        }
        let mut end = PACK_MAGIC.len() as u64;
        for b in &self.bodies {
            parse_hash(owner, "pack body", &b.0)?;
            if b.1 != end || b.1.checked_add(b.2).is_none_or(|e| e > self.len) {
                return Err(bad(format!(
                    "pack {}: body {} at byte offset {} ({} bytes) does not follow byte offset {end} inside {} bytes",
                    self.object, b.0, b.1, b.2, self.len
                )));
            }
            end = b.1 + b.2;
        }
        if end != self.len {
            return Err(bad(format!(
                "pack {}: bodies end at byte offset {end}, the pack at {}",
                self.object, self.len
            )));
        }
        Ok(())
    }
}

/// Head of one origin after a manifest: last seq and its chain hash (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// One backup run: the entries at apply-order positions
/// `order_from..=order_to`, in `runs`, stored in `segments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub node_id: String,
    /// 1, 2, 3, … without gaps.
    pub number: u64,
    /// blake3 of the previous manifest's whole file (hex; zeros for 1).
    pub prev: String,
    pub created_ms: u64,
    pub order_from: u64,
    pub order_to: u64,
    /// Smallest and largest entry time (HLC milliseconds) of the run.
    pub time_from_ms: u64,
    pub time_to_ms: u64,
    pub runs: Vec<Run>,
    pub segments: Vec<SegmentRef>,
    /// Every origin's head once this manifest is applied.
    pub heads: BTreeMap<String, Head>,
    /// Bodies the run referenced, and those it had to write (the others
    /// were in the backup already).
    pub bodies_referenced: u64,
    pub bodies_written: u64,
    pub body_bytes_written: u64,
    /// Format 2: the packs holding the bodies written (absent in format 1,
    /// where each body was an object of its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<PackRef>,
}

/// A manifest file: the JSON document, a newline, then
/// `blake3 <64 hex digits>\n` over every byte before that line.
pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut out = serde_json::to_vec(m).expect("manifests serialise");
    out.push(b'\n');
    let h = blake3::hash(&out);
    out.extend_from_slice(format!("blake3 {}\n", h.to_hex()).as_bytes());
    out
}

/// Parse and check a manifest file's bytes.
pub fn decode_manifest(object: &str, bytes: &[u8]) -> Result<Manifest, BackupError> {
    let bad = |reason: String| BackupError::Corrupt {
        object: object.to_string(),
        reason,
    };
    let tail = 7 + 64 + 1;
    if bytes.len() < tail + 2 {
        return Err(bad(format!("{} bytes is too short for a manifest", bytes.len())));
    }
    let (doc, line) = bytes.split_at(bytes.len() - tail);
    if !line.starts_with(b"blake3 ") || !line.ends_with(b"\n") || !doc.ends_with(b"\n") {
        return Err(bad(format!("no checksum line at byte offset {}", doc.len())));
    }
    let want = std::str::from_utf8(&line[7..71]).unwrap_or("");
    if blake3::hash(doc).to_hex().as_str() != want {
        return Err(bad(format!("checksum mismatch (checksum line at byte offset {})", doc.len())));
    }
    let m: Manifest = serde_json::from_slice(doc).map_err(|e| bad(format!("does not parse: {e}")))?;
    if !(OLDEST_FORMAT..=LAYOUT_FORMAT).contains(&m.format) {
        return Err(bad(format!("unsupported format {}", m.format)));
    }
    if m.format == 1 && !m.packs.is_empty() {
        return Err(bad("format 1 names packs".into()));
    }
    for p in &m.packs {
        p.check(object)?;
        let own = if m.format >= 3 {
            p.object == run_name(m.number)
        } else {
            pack_number(p.object.strip_prefix("packs/").unwrap_or("")) == Some(m.number)
        };
        if !own {
            return Err(bad(format!("names pack {} of another run", p.object)));
        }
    }
    if m.format >= 3 && m.packs.len() > 1 {
        return Err(bad(format!("a run object has one body section, not {}", m.packs.len())));
    }
    for sref in &m.segments {
        let own = if m.format >= 3 {
            sref.object == run_name(m.number) && sref.offset.is_some()
        } else {
            sref.offset.is_none()
        };
        if !own {
            return Err(bad(format!(
                "segment {} is not where format {} keeps it",
                sref.describe(),
                m.format
            )));
        }
    }
    Ok(m)
}

pub fn parse_hash(object: &str, field: &str, hex_str: &str) -> Result<Hash, BackupError> {
    // Decoded in place: a restore parses one per body of the backup.
    let mut h = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut h).map_err(|_| BackupError::Corrupt {
        object: object.to_string(),
        reason: format!("{field} is not 64 hex digits"),
    })?;
    Ok(h)
}

pub fn parse_origin(object: &str, s: &str) -> Result<Origin, BackupError> {
    u64::from_str_radix(s, 16).map(Origin).map_err(|_| BackupError::Corrupt {
        object: object.to_string(),
        reason: format!("origin {s:?} is not 16 hex digits"),
    })
}

/// Read a whole object, at most `max` bytes.
pub fn read_object(t: &dyn Target, name: &str, max: u64) -> Result<Vec<u8>, BackupError> {
    let mut r = t.open(name).map_err(|source| BackupError::io(name, source))?;
    let mut v = Vec::new();
    (&mut r)
        .take(max + 1)
        .read_to_end(&mut v)
        .map_err(|source| BackupError::io(name, source))?;
    if v.len() as u64 > max {
        return Err(BackupError::Corrupt {
            object: name.into(),
            reason: format!("larger than {max} bytes"),
        });
    }
    Ok(v)
}

/// The node id of the backup at `t`, or `None` when it holds no backup yet.
pub fn read_marker(t: &dyn Target) -> Result<Option<String>, BackupError> {
    if !t.exists(MARKER).map_err(|e| BackupError::io(MARKER, e))? {
        return Ok(None);
    }
    let b = read_object(t, MARKER, 4096)?;
    parse_marker(&String::from_utf8_lossy(&b)).map(Some)
}

/// A verified manifest and the blake3 of its file.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub object: String,
    pub manifest: Manifest,
    pub file_hash: Hash,
}

/// The manifests present, in order: number and object (a manifest file of
/// formats 1-2, or a run object of format 3). A number held by both is
/// refused: two writers (an older one that does not know run objects)
/// continued the backup.
pub fn manifest_list(t: &dyn Target) -> Result<Vec<(u64, String)>, BackupError> {
    let mut out = BTreeMap::new();
    for n in t.list(MANIFEST_DIR).map_err(|e| BackupError::io(MANIFEST_DIR, e))? {
        if let Some(num) = n.strip_suffix(".man").and_then(|s| s.parse::<u64>().ok()) {
            out.insert(num, manifest_name(num));
        }
    }
    for n in t.list(RUN_DIR).map_err(|e| BackupError::io(RUN_DIR, e))? {
        if let Some(num) = run_number(&n) {
            if out.insert(num, run_name(num)).is_some() {
                return Err(BackupError::Corrupt {
                    object: run_name(num),
                    reason: format!(
                        "{} holds number {num} as well: two writers continued this backup (a writer of format 2 or older does not see run objects)",
                        manifest_name(num)
                    ),
                });
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// Numbers of the manifests present (files and run objects), in order.
pub fn manifest_numbers(t: &dyn Target) -> Result<Vec<u64>, BackupError> {
    Ok(manifest_list(t)?.into_iter().map(|(n, _)| n).collect())
}

/// Read manifest `number` (a run object, else a manifest file) and check
/// it on its own.
pub fn load_manifest(t: &dyn Target, number: u64) -> Result<Loaded, BackupError> {
    let run = run_name(number);
    if t.exists(&run).map_err(|e| BackupError::io(&run, e))? {
        load_object(t, number, &run)
    } else {
        load_object(t, number, &manifest_name(number))
    }
}

/// Read manifest `number` from `object` (as [`manifest_list`] names it)
/// and check it on its own.
pub fn load_object(t: &dyn Target, number: u64, object: &str) -> Result<Loaded, BackupError> {
    let (manifest, file_hash) = if object.starts_with("runs/") {
        load_run(t, object)?
    } else {
        let bytes = read_object(t, object, MAX_MANIFEST_LEN)?;
        let m = decode_manifest(object, &bytes)?;
        if m.format >= 3 {
            return Err(BackupError::Corrupt {
                object: object.into(),
                reason: format!("a manifest file of format {} (format 3 keeps manifests in run objects)", m.format),
            });
        }
        (m, *blake3::hash(&bytes).as_bytes())
    };
    if manifest.number != number {
        return Err(BackupError::Corrupt {
            object: object.into(),
            reason: format!("names itself number {}", manifest.number),
        });
    }
    Ok(Loaded {
        object: object.into(),
        manifest,
        file_hash,
    })
}

/// A run object's manifest, found by its footer (one ranged read of the
/// object's tail, two when the manifest is longer than that), checked on
/// its own and against the object's layout: bodies from byte 16, the
/// segments back to back after them, the manifest after the segments.
/// The hash returned is the blake3 of the manifest's bytes (the next
/// manifest's `prev`).
fn load_run(t: &dyn Target, object: &str) -> Result<(Manifest, Hash), BackupError> {
    let bad = |reason: String| BackupError::Corrupt {
        object: object.to_string(),
        reason,
    };
    let (size, tail) = t.read_tail(object, RUN_TAIL_READ).map_err(|e| BackupError::io(object, e))?;
    let fl = RUN_FOOTER_LEN as usize;
    if size < RUN_MAGIC.len() as u64 + RUN_FOOTER_LEN || tail.len() < fl {
        return Err(bad(format!("{size} bytes is too short for a run object")));
    }
    let footer = &tail[tail.len() - fl..];
    if &footer[8..] != RUN_FOOTER_MAGIC {
        return Err(bad(format!("no run footer at byte offset {}", size - RUN_FOOTER_LEN)));
    }
    let moff = u64::from_be_bytes(footer[..8].try_into().expect("8 bytes"));
    let mend = size - RUN_FOOTER_LEN;
    if moff < RUN_MAGIC.len() as u64 || moff > mend || mend - moff > MAX_MANIFEST_LEN {
        return Err(bad(format!(
            "the footer at byte offset {mend} places the manifest at byte offset {moff}, outside the object"
        )));
    }
    let tail_start = size - tail.len() as u64;
    let bytes = if moff >= tail_start {
        tail[(moff - tail_start) as usize..tail.len() - fl].to_vec()
    } else {
        t.read_range(object, moff, mend - moff).map_err(|e| BackupError::io(object, e))?
    };
    let m = decode_manifest(object, &bytes).map_err(|e| match e {
        BackupError::Corrupt { object, reason } => BackupError::Corrupt {
            object,
            reason: format!("the manifest at byte offset {moff}: {reason}"),
        },
        e => e,
    })?;
    if m.format < 3 {
        return Err(bad(format!("holds a manifest of format {}", m.format)));
    }
    let mut at = m.packs.first().map(|p| p.len).unwrap_or(RUN_MAGIC.len() as u64);
    for s in &m.segments {
        if s.offset != Some(at) {
            return Err(bad(format!(
                "the manifest places segment of origin {} at byte offset {:?}, the layout at {at}",
                s.origin, s.offset
            )));
        }
        at = at.checked_add(s.len).ok_or_else(|| bad("segment lengths overflow".into()))?;
    }
    if at != moff {
        return Err(bad(format!("its segments end at byte offset {at}, its manifest starts at {moff}")));
    }
    Ok((m, *blake3::hash(&bytes).as_bytes()))
}

/// Open the segment `s` for reading: its own object (formats 1-2), or
/// its bytes inside a run object (format 3, a ranged read). Errors name
/// the segment as [`SegmentRef::describe`] does.
pub fn open_segment(t: &dyn Target, s: &SegmentRef, named_by: &str) -> Result<SegmentReader<Box<dyn Read + Send>>, BackupError> {
    let r: Box<dyn Read + Send> = match s.offset {
        None => t.open(&s.object),
        Some(off) => t.open_at(&s.object, off).map(|r| Box::new(r.take(s.len)) as Box<dyn Read + Send>),
    }
    .map_err(|e| match BackupError::io(&s.object, e) {
        BackupError::Missing { object, .. } => BackupError::Missing {
            object,
            what: format!("segment of origin {} seqs {}..={} named by {named_by}", s.origin, s.first, s.last),
        },
        other => other,
    })?;
    SegmentReader::open(r).map_err(|e| segment_error(s, e))
}

/// A segment error of `s` as a backup error: the segment named as
/// [`SegmentRef::describe`] does, and, inside a run object, every byte
/// offset counted from the start of the object.
pub fn segment_error(s: &SegmentRef, e: SegmentError) -> BackupError {
    let by = s.offset.unwrap_or(0);
    let source = if by == 0 {
        e
    } else {
        match e {
            SegmentError::BadMagic => SegmentError::Header {
                offset: by,
                reason: "bad magic".into(),
            },
            SegmentError::Version { version } => SegmentError::Header {
                offset: by + 8,
                reason: format!("unsupported format version {version}"),
            },
            SegmentError::Truncated { origin, seq, offset } => SegmentError::Truncated {
                origin,
                seq,
                offset: offset + by,
            },
            SegmentError::Header { offset, reason } => SegmentError::Header {
                offset: offset + by,
                reason,
            },
            SegmentError::Entry {
                origin,
                seq,
                offset,
                reason,
            } => SegmentError::Entry {
                origin,
                seq,
                offset: offset + by,
                reason,
            },
            SegmentError::MissingClosingHash {
                origin,
                first,
                last,
                offset,
            } => SegmentError::MissingClosingHash {
                origin,
                first,
                last,
                offset: offset + by,
            },
            SegmentError::ClosingHash {
                origin,
                first,
                last,
                offset,
            } => SegmentError::ClosingHash {
                origin,
                first,
                last,
                offset: offset + by,
            },
            SegmentError::Trailing { offset, extra } => SegmentError::Trailing {
                offset: offset + by,
                extra,
            },
            SegmentError::Io { offset, reason } => SegmentError::Io {
                offset: offset + by,
                reason,
            },
        }
    };
    BackupError::Segment {
        object: s.describe(),
        source,
    }
}

/// Read every manifest and check that they form one chain: numbers 1..=n
/// without gaps, each naming its predecessor's hash, apply-order ranges
/// that follow each other, segments that continue each origin's chain, and
/// runs that the segments cover.
pub fn load_chain(t: &dyn Target, node_id: &str) -> Result<Vec<Loaded>, BackupError> {
    load_chain_after(t, node_id, 0, [0u8; 32], 0, BTreeMap::new())
}

/// [`load_chain`] from the state after manifest `after` (a base): the
/// manifests numbered after it, the first naming `prev_hash` and starting
/// after apply order `order` with `heads`.
pub fn load_chain_after(
    t: &dyn Target,
    node_id: &str,
    after: u64,
    mut prev_hash: Hash,
    mut order: u64,
    mut heads: BTreeMap<Origin, (u64, Hash)>,
) -> Result<Vec<Loaded>, BackupError> {
    let numbers: Vec<(u64, String)> = manifest_list(t)?.into_iter().filter(|(n, _)| *n > after).collect();
    let mut out: Vec<Loaded> = Vec::with_capacity(numbers.len());
    for (i, (n, object)) in numbers.iter().enumerate() {
        let want = after + i as u64 + 1;
        if *n != want {
            return Err(BackupError::Missing {
                object: run_name(want),
                what: format!("manifest {want} (the backup holds {} next)", n),
            });
        }
        let l = load_object(t, *n, object)?;
        check_follows(&l, node_id, &prev_hash, order, &mut heads)?;
        prev_hash = l.file_hash;
        order = l.manifest.order_to;
        out.push(l);
    }
    Ok(out)
}

/// Check manifest `l` against the state the manifests before it left.
pub fn check_follows(
    l: &Loaded,
    node_id: &str,
    prev_hash: &Hash,
    order: u64,
    heads: &mut BTreeMap<Origin, (u64, Hash)>,
) -> Result<(), BackupError> {
    let m = &l.manifest;
    let bad = |reason: String| BackupError::Corrupt {
        object: l.object.clone(),
        reason,
    };
    if m.node_id != node_id {
        return Err(bad(format!("belongs to node {:?}, not {node_id:?}", m.node_id)));
    }
    if parse_hash(&l.object, "prev", &m.prev)? != *prev_hash {
        return Err(bad("does not name the previous manifest's hash".into()));
    }
    if m.order_from != order + 1 || m.order_to < m.order_from {
        return Err(bad(format!(
            "covers apply order {}..={} but the previous manifest ends at {order}",
            m.order_from, m.order_to
        )));
    }
    let mut count = 0u64;
    let mut seen: BTreeMap<Origin, u64> = BTreeMap::new();
    for r in &m.runs {
        let o = parse_origin(&l.object, &r.origin)?;
        let expect = seen.get(&o).copied().unwrap_or_else(|| heads.get(&o).map(|h| h.0).unwrap_or(0)) + 1;
        if r.first != expect || r.last < r.first {
            return Err(bad(format!(
                "run {}:{}..={} does not continue origin {} at seq {expect}",
                r.origin, r.first, r.last, r.origin
            )));
        }
        seen.insert(o, r.last);
        count += r.last - r.first + 1;
    }
    if count != m.order_to - m.order_from + 1 {
        return Err(bad(format!(
            "runs hold {count} entries but the apply order range holds {}",
            m.order_to - m.order_from + 1
        )));
    }
    if m.segments.len() != seen.len() {
        return Err(bad(format!("{} segments for {} origins", m.segments.len(), seen.len())));
    }
    for s in &m.segments {
        let o = parse_origin(&l.object, &s.origin)?;
        let (hseq, hhash) = heads.get(&o).copied().unwrap_or((0, [0u8; 32]));
        let named = if m.format >= 3 {
            s.object == run_name(m.number)
        } else {
            s.object == segment_name(o, s.first, s.last)
        };
        if s.first != hseq + 1 || seen.get(&o) != Some(&s.last) || !named {
            return Err(bad(format!("segment {} does not match the runs", s.object)));
        }
        if parse_hash(&l.object, "prev_hash", &s.prev_hash)? != hhash {
            return Err(bad(format!(
                "segment {} does not continue origin {} (chain hash before seq {} differs)",
                s.object, s.origin, s.first
            )));
        }
        heads.insert(o, (s.last, parse_hash(&l.object, "last_hash", &s.last_hash)?));
    }
    for (o, (seq, hash)) in heads.iter() {
        match m.heads.get(&o.to_string()) {
            Some(h) if h.seq == *seq && parse_hash(&l.object, "heads", &h.hash)? == *hash => {}
            _ => return Err(bad(format!("heads disagree with the segments for origin {o}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip_and_every_flip_refused() {
        let m = Manifest {
            format: LAYOUT_FORMAT,
            node_id: "n1".into(),
            number: 1,
            prev: hex::encode([0u8; 32]),
            created_ms: 5,
            order_from: 1,
            order_to: 2,
            time_from_ms: 1,
            time_to_ms: 2,
            runs: vec![],
            segments: vec![],
            heads: BTreeMap::new(),
            bodies_referenced: 0,
            bodies_written: 0,
            body_bytes_written: 0,
            packs: vec![PackRef {
                object: run_name(1),
                len: RUN_MAGIC.len() as u64 + 3,
                blake3: hex::encode([1u8; 32]),
                bodies: vec![PackedBody(hex::encode([2u8; 32]), RUN_MAGIC.len() as u64, 3)],
            }],
        };
        let b = encode_manifest(&m);
        assert_eq!(decode_manifest("m", &b).unwrap(), m);
        // Each format keeps bodies where it writes them: a format-3
        // manifest naming a pack, or a format-2 one naming a run object,
        // is refused.
        let mut other = m.clone();
        other.packs[0].object = pack_name(1, 0);
        assert!(decode_manifest("m", &encode_manifest(&other)).is_err());
        other.format = 2;
        assert!(decode_manifest("m", &encode_manifest(&other)).is_ok());
        other.packs[0].object = run_name(1);
        assert!(decode_manifest("m", &encode_manifest(&other)).is_err());
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x04;
            assert!(decode_manifest("m", &c).is_err(), "flip at {i} accepted");
        }
        for n in 0..b.len() {
            assert!(decode_manifest("m", &b[..n]).is_err(), "truncation to {n} accepted");
        }
    }

    #[test]
    fn marker_round_trip() {
        assert_eq!(parse_marker(&marker("node-a")).unwrap(), "node-a");
        assert_eq!(parse_marker("tandem-backup 1\nnode a\n").unwrap(), "a", "format 1 is still read");
        assert_eq!(parse_marker("tandem-backup 2\nnode a\n").unwrap(), "a", "format 2 is still read");
        assert!(parse_marker("tandem-backup 9\nnode a\n").is_err());
    }

    /// A manifest exactly as format 1 wrote it (no `packs`) still decodes.
    #[test]
    fn format_1_manifest_is_read() {
        let doc = format!(
            concat!(
                r#"{{"format":1,"node_id":"n1","number":1,"prev":"{}","created_ms":5,"order_from":1,"order_to":1,"#,
                r#""time_from_ms":1,"time_to_ms":1,"runs":[],"segments":[],"heads":{{}},"bodies_referenced":1,"#,
                r#""bodies_written":1,"body_bytes_written":10}}"#,
                "\n"
            ),
            hex::encode([0u8; 32])
        );
        let mut b = doc.into_bytes();
        let h = blake3::hash(&b);
        b.extend_from_slice(format!("blake3 {}\n", h.to_hex()).as_bytes());
        let m = decode_manifest("m", &b).unwrap();
        assert_eq!((m.format, m.bodies_written, m.packs.len()), (1, 1, 0));
        // Format 1 written again gives the same bytes (no `packs` field).
        assert_eq!(encode_manifest(&m), b);
    }

    #[test]
    fn pack_index_is_checked() {
        let mut p = PackRef {
            object: pack_name(7, 0),
            len: PACK_MAGIC.len() as u64 + 10,
            blake3: hex::encode([0u8; 32]),
            bodies: vec![
                PackedBody(hex::encode([1u8; 32]), PACK_MAGIC.len() as u64, 4),
                PackedBody(hex::encode([2u8; 32]), PACK_MAGIC.len() as u64 + 4, 6),
            ],
        };
        p.check("m").unwrap();
        assert_eq!(pack_number("00000000000000000007-000.pack"), Some(7));
        assert_eq!(run_number("00000000000000000007.run"), Some(7));
        assert_eq!(body_object_number(&run_name(7)), Some(7));
        assert_eq!(body_object_number(&pack_name(7, 2)), Some(7));
        assert_eq!(body_object_number("runs/7.run"), None);
        p.bodies[1].1 += 1;
        assert!(p.check("m").is_err(), "a gap");
        p.bodies[1].1 -= 2;
        assert!(p.check("m").is_err(), "an overlap");
        p.bodies[1].1 += 1;
        p.len += 1;
        assert!(p.check("m").is_err(), "bytes after the last body");
        p.len -= 2;
        assert!(p.check("m").unwrap_err().to_string().contains("byte offset"), "a body past the end");
        p.object = "bodies/aa/x".into();
        assert!(p.check("m").is_err());
    }
}
