//! One backup run: everything the node applied since the last manifest, as
//! one write-once run object holding the bodies the backup does not hold
//! yet, a segment per origin (streamed from the log) and the manifest with
//! the bodies' index, located by a footer at the object's end.

use super::layout::{self, Head, Loaded, Manifest, PackRef, PackedBody, Run, SegmentRef};
use super::target::Target;
use super::BackupError;
use crate::event::Event;
use crate::store::Store;
use std::collections::{BTreeMap, HashSet};
use wal::segment::SegmentWriter;
use wal::{Hash, Origin, Place, WalError};

/// Where a backup stands: what its last manifest covers.
#[derive(Debug, Clone)]
pub struct Position {
    pub node_id: String,
    /// Number of the last manifest (0: none yet).
    pub number: u64,
    /// blake3 of the last manifest's file.
    pub manifest_hash: Hash,
    /// Last apply-order position backed up.
    pub order: u64,
    pub heads: BTreeMap<Origin, (u64, Hash)>,
    /// Time of the newest entry backed up (HLC milliseconds).
    pub time_ms: u64,
    /// Bodies the backup holds in packs: the indexes of the newest base
    /// and of the manifests after it. A body in it is never written again.
    pub packed: HashSet<[u8; 32]>,
    /// The backup holds format-1 body objects (`bodies/`): a body not in
    /// `packed` may be one of them, and is looked for before it is packed.
    pub legacy_bodies: bool,
    /// The newest base when `packed` was read (0: none): a newer one means
    /// prune ran, and may have deleted packs, so `packed` is read again.
    pub base: u64,
}

/// Open the backup at `t` for `node_id`: write the marker into an empty
/// target, refuse another node's backup, and find the last manifest.
pub fn open(t: &dyn Target, node_id: &str) -> Result<Position, BackupError> {
    match layout::read_marker(t)? {
        Some(id) if id == node_id => {}
        Some(id) => {
            return Err(BackupError::Corrupt {
                object: layout::MARKER.into(),
                reason: format!("this backup belongs to node {id:?}, not {node_id:?}"),
            })
        }
        None => {
            let text = layout::marker(node_id);
            t.put_new(layout::MARKER, &mut |w| w.write_all(text.as_bytes()))
                .map_err(|e| BackupError::io(layout::MARKER, e))?;
            t.sync().map_err(|e| BackupError::io(layout::MARKER, e))?;
            // Another writer may have won the race with another id.
            return open_existing(t, node_id);
        }
    }
    open_existing(t, node_id)
}

fn open_existing(t: &dyn Target, node_id: &str) -> Result<Position, BackupError> {
    if let Some(id) = layout::read_marker(t)? {
        if id != node_id {
            return Err(BackupError::Corrupt {
                object: layout::MARKER.into(),
                reason: format!("this backup belongs to node {id:?}, not {node_id:?}"),
            });
        }
    }
    let mut pos = Position {
        node_id: node_id.to_string(),
        number: 0,
        manifest_hash: [0u8; 32],
        order: 0,
        heads: BTreeMap::new(),
        time_ms: 0,
        packed: HashSet::new(),
        legacy_bodies: false,
        base: 0,
    };
    // The writer trusts its own last manifest (checked on its own); the
    // whole chain is what `audit` and `restore` verify.
    if let Some((n, object)) = layout::manifest_list(t)?.pop() {
        let Loaded {
            object,
            manifest: m,
            file_hash,
        } = layout::load_object(t, n, &object)?;
        if m.node_id != node_id {
            return Err(BackupError::Corrupt {
                object,
                reason: format!("belongs to node {:?}", m.node_id),
            });
        }
        for (o, h) in &m.heads {
            pos.heads.insert(
                layout::parse_origin(&object, o)?,
                (h.seq, layout::parse_hash(&object, "heads", &h.hash)?),
            );
        }
        pos.number = n;
        pos.manifest_hash = file_hash;
        pos.order = m.order_to;
        pos.time_ms = m.time_to_ms;
    }
    read_packed(t, &mut pos)?;
    Ok(pos)
}

/// Learn which bodies the backup holds: the pack indexes of the newest
/// base and of every manifest after it (manifests at or before the base
/// are being pruned: their packs count only through the base), and
/// whether format-1 body objects exist.
fn read_packed(t: &dyn Target, pos: &mut Position) -> Result<(), BackupError> {
    let mut packed = HashSet::new();
    let base = super::retention::base_numbers(t)?.last().copied().unwrap_or(0);
    let mut add = |object: &str, packs: &[PackRef]| -> Result<(), BackupError> {
        for p in packs {
            for b in &p.bodies {
                packed.insert(layout::parse_hash(object, "pack body", &b.0)?);
            }
        }
        Ok(())
    };
    if base > 0 {
        let b = super::retention::load_base(t, base)?;
        add(&super::retention::base_name(base), &b.packs)?;
    }
    for (n, object) in layout::manifest_list(t)? {
        if n > base {
            let l = layout::load_object(t, n, &object)?;
            add(&l.object, &l.manifest.packs)?;
        }
    }
    pos.packed = packed;
    pos.base = base;
    pos.legacy_bodies = !t
        .list(layout::BODY_DIR)
        .map_err(|e| BackupError::io(layout::BODY_DIR, e))?
        .is_empty();
    Ok(())
}

/// What one run wrote.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RunReport {
    pub manifest: u64,
    pub order_from: u64,
    pub order_to: u64,
    pub entries: u64,
    pub segments: u64,
    pub segment_bytes: u64,
    pub bodies_written: u64,
    pub body_bytes: u64,
    /// Pack objects written (format 2; a format-3 run writes none: its
    /// bodies are in its run object).
    #[serde(default)]
    pub packs: u64,
    /// Objects written: 1 (the run object).
    #[serde(default)]
    pub objects: u64,
    /// The run stopped at its byte bound: more may wait behind it.
    #[serde(default)]
    pub full: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A run stops taking entries once the new bodies it would write reach
/// this many bytes, so one run object stays below about this size plus
/// its segments (a body is never split: one larger than this is a run of
/// its own).
pub const RUN_MAX_BODY_BYTES: u64 = 256 << 20;

/// What a run object holds, once written: its manifest's bytes, the heads
/// after it, its segments and the bytes of its bodies.
struct Written {
    manifest: Vec<u8>,
    heads: BTreeMap<Origin, (u64, Hash)>,
    segments: Vec<SegmentRef>,
    body_bytes: u64,
}

/// Counts the bytes written through it (the offsets inside a run object).
struct Counting<'a> {
    w: &'a mut dyn std::io::Write,
    n: u64,
}

impl std::io::Write for Counting<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.w.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// What a run has taken from the apply order so far: its runs, each
/// origin's range, and the bodies it references, the new ones among them
/// (payloads are dropped as they are read).
struct Taken {
    from: u64,
    /// The next apply-order position to read.
    next: u64,
    runs: Vec<(Origin, u64, u64)>,
    ranges: BTreeMap<Origin, (u64, u64)>,
    referenced: u64,
    seen_bodies: HashSet<[u8; 32]>,
    new_bodies: Vec<([u8; 32], Place)>,
    new_bytes: u64,
    tmin: u64,
    tmax: u64,
    /// The new bodies reached the run's byte bound: it takes no more.
    full: bool,
}

impl Taken {
    fn new(from: u64) -> Taken {
        Taken {
            from,
            next: from,
            runs: Vec::new(),
            ranges: BTreeMap::new(),
            referenced: 0,
            seen_bodies: HashSet::new(),
            new_bodies: Vec::new(),
            new_bytes: 0,
            tmin: u64::MAX,
            tmax: 0,
            full: false,
        }
    }

    /// The last position taken.
    fn to(&self) -> u64 {
        self.next - 1
    }

    /// Take the apply order from `next` up to `to`, stopping after the
    /// entry whose new body reaches `max_body_bytes`.
    fn read(&mut self, store: &Store, t: &dyn Target, pos: &Position, to: u64, max_body_bytes: u64) -> Result<(), BackupError> {
        let wal = store.wal();
        while self.next <= to && !self.full {
            let chunk = wal.read_order(self.next, ((to - self.next + 1) as usize).min(1024))?;
            if chunk.is_empty() {
                return Err(BackupError::Corrupt {
                    object: "log".into(),
                    reason: format!("apply order position {} is missing", self.next),
                });
            }
            for (n, e) in chunk {
                if n != self.next {
                    return Err(BackupError::Corrupt {
                        object: "log".into(),
                        reason: format!("apply order jumps from {} to {n}", self.next),
                    });
                }
                self.next += 1;
                let t_ms = e.hlc >> 16;
                self.tmin = self.tmin.min(t_ms);
                self.tmax = self.tmax.max(t_ms);
                match self.runs.last_mut() {
                    Some((o, _, last)) if *o == e.origin && *last + 1 == e.seq => *last = e.seq,
                    _ => self.runs.push((e.origin, e.seq, e.seq)),
                }
                let held = pos.heads.get(&e.origin).map(|h| h.0).unwrap_or(0);
                let r = self.ranges.entry(e.origin).or_insert((e.seq, e.seq));
                if r.1 + 1 != e.seq && r.0 != e.seq {
                    return Err(BackupError::Corrupt {
                        object: "log".into(),
                        reason: format!("origin {} seq {} follows seq {} in the apply order", e.origin, e.seq, r.1),
                    });
                }
                r.1 = e.seq;
                if r.0 != held + 1 {
                    return Err(BackupError::Corrupt {
                        object: "log".into(),
                        reason: format!(
                            "origin {} starts at seq {} here but the backup holds up to seq {held}",
                            e.origin, r.0
                        ),
                    });
                }
                if let Ok(Event::MessageAppended { blob, size, .. }) = Event::decode(&e.payload) {
                    if self.seen_bodies.insert(blob.0) {
                        self.referenced += 1;
                        if !pos.packed.contains(&blob.0) && !legacy_holds(t, pos, &blob.0)? {
                            self.new_bodies.push((
                                blob.0,
                                Place {
                                    origin: e.origin,
                                    seq: e.seq,
                                },
                            ));
                            self.new_bytes += size;
                        }
                    }
                }
                if self.new_bytes >= max_body_bytes {
                    // The rest goes into the next run.
                    self.full = true;
                    break;
                }
            }
        }
        Ok(())
    }
}

/// How long a run may stay open taking entries, for the continuous job.
pub struct Stream<'a> {
    /// Close the run (take no more entries) at this instant.
    pub deadline: std::time::Instant,
    /// Close the run now (the daemon is stopping).
    pub stop: &'a std::sync::atomic::AtomicBool,
    /// Close the run now when non-zero (other runs wait for the target).
    pub wanted: &'a std::sync::atomic::AtomicUsize,
}

/// How often an open run looks for newly applied entries.
const STREAM_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// How often an open run flushes what it wrote (in a directory: makes it
/// durable), so that the sync closing the object is short.
const STREAM_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

/// The last flush of an open run comes this close to its deadline.
const STREAM_TAIL: std::time::Duration = std::time::Duration::from_millis(15);

/// Back up the apply order after `pos` up to `upto` (at most `max_entries`
/// of it, fewer once the new bodies reach `max_body_bytes`) as one
/// run object (`docs/format.md`, "Backups"): the bodies the backup does
/// not hold yet, one segment per origin streamed from the log, and the
/// manifest, written as one write-once object. Returns `None` when there
/// was nothing to do. `pos` moves only once the object is durable.
pub fn run_once(
    store: &Store,
    t: &dyn Target,
    pos: &mut Position,
    upto: u64,
    max_entries: u64,
    max_body_bytes: u64,
) -> Result<Option<RunReport>, BackupError> {
    run(store, t, pos, upto, max_entries, max_body_bytes, None)
}

/// One run of the continuous job: like [`run_once`] up to what is applied
/// now, but the run object stays open until `stream.deadline`, taking
/// entries (and writing their new bodies into it) as they are applied, so
/// that closing it costs only the segments, the manifest and the sync.
/// An entry applied while the object is closed goes into the next run.
/// Returns `None` when nothing was applied since `pos`.
pub fn run_streaming(
    store: &Store,
    t: &dyn Target,
    pos: &mut Position,
    max_entries: u64,
    max_body_bytes: u64,
    stream: Stream<'_>,
) -> Result<Option<RunReport>, BackupError> {
    let upto = store.wal().last_order();
    run(store, t, pos, upto, max_entries, max_body_bytes, Some(stream))
}

/// Whether a run's report says it stopped at its bounds (entries or
/// bytes), so more may wait right behind it.
pub fn run_was_full(r: &RunReport, max_entries: u64) -> bool {
    r.entries >= max_entries || r.full
}

fn run(
    store: &Store,
    t: &dyn Target,
    pos: &mut Position,
    upto: u64,
    max_entries: u64,
    max_body_bytes: u64,
    stream: Option<Stream<'_>>,
) -> Result<Option<RunReport>, BackupError> {
    let wal = store.wal();
    let limit = pos.order.saturating_add(max_entries.max(1));
    let to = upto.min(wal.last_order()).min(limit);
    if to <= pos.order {
        return Ok(None);
    }
    let from = pos.order + 1;
    // A backup holding less of an origin than this node pruned cannot be
    // continued from this log: its next segment could not chain.
    for (origin, base) in wal.bases() {
        let held = pos.heads.get(&origin).map(|h| h.0).unwrap_or(0);
        if held < base.seq {
            return Err(BackupError::Usage(format!(
                "this backup holds origin {origin} up to seq {held}, but the log here is pruned up to seq {}: \
                 the entries it lacks are gone, so it cannot be continued from this log (a backup of a pruned log must have run \
                 while the log was pruned: `[backup] to` makes pruning wait for it) ({})",
                base.seq,
                WalError::Pruned {
                    place: Place { origin, seq: held + 1 },
                    base: base.seq
                }
            )));
        }
    }
    // A newer base means prune ran: what it deleted is not in the backup
    // any more.
    if super::retention::base_numbers(t)?.last().copied().unwrap_or(0) != pos.base {
        read_packed(t, pos)?;
    }
    let mut taken = Taken::new(from);
    taken.read(store, t, pos, to, max_body_bytes)?;
    let number = pos.number + 1;
    let name = layout::run_name(number);
    // The run object, streamed: magic, bodies, segments, manifest, footer.
    let mut fail: Option<BackupError> = None;
    let mut written: Option<Written> = None;
    let put = t.put_new(&name, &mut |w| {
        let mut w = Counting { w, n: 0 };
        let mut hasher = blake3::Hasher::new();
        std::io::Write::write_all(&mut w, layout::RUN_MAGIC)?;
        hasher.update(layout::RUN_MAGIC);
        let mut index = Vec::with_capacity(taken.new_bodies.len());
        // What an open run has written but not yet flushed, and when it
        // last flushed (a target's flush may make the bytes durable).
        let (mut flushed, mut flushed_at) = (w.n, std::time::Instant::now());
        loop {
            // The new bodies taken since the last pass.
            for (hash, place) in &taken.new_bodies[index.len()..] {
                let body = match store.blob(&crate::event::BlobHash(*hash)) {
                    Ok(Some(b)) => b,
                    Ok(None) => {
                        fail = Some(BackupError::Body {
                            object: layout::body_name(hash),
                            place: place.clone(),
                            reason: "the node does not hold this body".into(),
                        });
                        return Err(std::io::Error::other("a body is missing"));
                    }
                    Err(e) => {
                        fail = Some(e.into());
                        return Err(std::io::Error::other("reading a body failed"));
                    }
                };
                let off = w.n;
                std::io::Write::write_all(&mut w, &body)?;
                hasher.update(&body);
                index.push(PackedBody(hex::encode(hash), off, body.len() as u64));
            }
            let Some(s) = &stream else { break };
            let stopping = s.stop.load(std::sync::atomic::Ordering::Relaxed) || s.wanted.load(std::sync::atomic::Ordering::Relaxed) > 0;
            let now = std::time::Instant::now();
            if taken.full || taken.to() >= limit || stopping || now >= s.deadline {
                break;
            }
            let since = now - flushed_at;
            if w.n > flushed && (since >= STREAM_FLUSH || (s.deadline - now <= STREAM_TAIL && since >= STREAM_TAIL)) {
                // Once more just before the deadline: then the sync that
                // ends the object has only the last few bodies and the
                // segments.
                std::io::Write::flush(&mut w)?;
                (flushed, flushed_at) = (w.n, now);
            }
            std::thread::sleep(STREAM_POLL.min(s.deadline.saturating_duration_since(std::time::Instant::now())));
            // Take what was applied meanwhile (up to the run's entry bound).
            let upto = wal.last_order().min(limit);
            if upto >= taken.next {
                if let Err(e) = taken.read(store, t, pos, upto, max_body_bytes) {
                    fail = Some(e);
                    return Err(std::io::Error::other("reading the log failed"));
                }
            }
        }
        let packs = if index.is_empty() {
            Vec::new()
        } else {
            vec![PackRef {
                object: name.clone(),
                len: w.n,
                blake3: hasher.finalize().to_hex().to_string(),
                bodies: index,
            }]
        };
        let body_bytes = w.n - layout::RUN_MAGIC.len() as u64;
        // Segments, streamed from the log.
        let mut segments = Vec::new();
        let mut heads = pos.heads.clone();
        for (origin, (first, last)) in &taken.ranges {
            let (origin, first, last) = (*origin, *first, *last);
            let prev = heads.get(&origin).map(|h| h.1).unwrap_or([0u8; 32]);
            let offset = w.n;
            let mut sw = SegmentWriter::new(&mut w, origin, first, last, &prev)?;
            let mut s = first;
            while s <= last {
                let es = match wal.read_range(origin, s, last, 1024) {
                    Ok(es) if !es.is_empty() => es,
                    Ok(_) => {
                        fail = Some(BackupError::Corrupt {
                            object: "log".into(),
                            reason: format!("origin {origin} seq {s} is missing"),
                        });
                        return Err(std::io::Error::other("log read failed"));
                    }
                    Err(e) => {
                        fail = Some(e.into());
                        return Err(std::io::Error::other("log read failed"));
                    }
                };
                for e in &es {
                    if e.seq != sw.next_seq() || !e.follows(sw.chain_hash()) {
                        fail = Some(BackupError::Corrupt {
                            object: "log".into(),
                            reason: format!("origin {origin} seq {} does not follow the chain", e.seq),
                        });
                        return Err(std::io::Error::other("the log does not verify"));
                    }
                    sw.push(e)?;
                }
                s += es.len() as u64;
            }
            let (_, seal) = sw.finish()?;
            heads.insert(origin, (last, seal.last_hash));
            segments.push(SegmentRef {
                object: name.clone(),
                origin: origin.to_string(),
                first,
                last,
                prev_hash: hex::encode(seal.prev_hash),
                last_hash: hex::encode(seal.last_hash),
                closing: hex::encode(seal.closing),
                len: seal.len,
                offset: Some(offset),
            });
        }
        // The manifest, then the footer that locates it.
        let m = Manifest {
            format: layout::LAYOUT_FORMAT,
            node_id: pos.node_id.clone(),
            number,
            prev: hex::encode(pos.manifest_hash),
            created_ms: now_ms(),
            order_from: taken.from,
            order_to: taken.to(),
            time_from_ms: taken.tmin,
            time_to_ms: taken.tmax,
            runs: taken
                .runs
                .iter()
                .map(|(o, f, l)| Run {
                    origin: o.to_string(),
                    first: *f,
                    last: *l,
                })
                .collect(),
            segments: segments.clone(),
            heads: heads
                .iter()
                .map(|(o, (s, h))| {
                    (
                        o.to_string(),
                        Head {
                            seq: *s,
                            hash: hex::encode(h),
                        },
                    )
                })
                .collect(),
            bodies_referenced: taken.referenced,
            bodies_written: taken.new_bodies.len() as u64,
            body_bytes_written: body_bytes,
            packs,
        };
        let bytes = layout::encode_manifest(&m);
        let moff = w.n;
        std::io::Write::write_all(&mut w, &bytes)?;
        std::io::Write::write_all(&mut w, &moff.to_be_bytes())?;
        std::io::Write::write_all(&mut w, layout::RUN_FOOTER_MAGIC)?;
        written = Some(Written {
            manifest: bytes,
            heads,
            segments,
            body_bytes,
        });
        Ok(())
    });
    let put = put.map_err(|e| fail.take().unwrap_or_else(|| BackupError::io(&name, e)))?;
    if !put {
        return Err(BackupError::Corrupt {
            object: name,
            reason: "exists already: another writer is backing up into this target".into(),
        });
    }
    t.sync().map_err(|e| BackupError::io(&name, e))?;
    let Written {
        manifest: bytes,
        heads,
        segments,
        body_bytes,
    } = written.expect("a written run object was produced");
    let to = taken.to();
    let report = RunReport {
        manifest: number,
        order_from: from,
        order_to: to,
        entries: to - from + 1,
        segments: segments.len() as u64,
        segment_bytes: segments.iter().map(|s| s.len).sum(),
        bodies_written: taken.new_bodies.len() as u64,
        body_bytes,
        packs: 0,
        objects: 1,
        full: taken.full,
    };
    pos.number = number;
    pos.manifest_hash = *blake3::hash(&bytes).as_bytes();
    pos.order = to;
    pos.heads = heads;
    pos.time_ms = pos.time_ms.max(taken.tmax);
    pos.packed.extend(taken.new_bodies.iter().map(|(h, _)| *h));
    Ok(Some(report))
}

/// Whether a format-1 body object holds `hash` (only looked for in a
/// backup that holds such objects).
fn legacy_holds(t: &dyn Target, pos: &Position, hash: &[u8; 32]) -> Result<bool, BackupError> {
    if !pos.legacy_bodies {
        return Ok(false);
    }
    let name = layout::body_name(hash);
    t.exists(&name).map_err(|e| BackupError::io(&name, e))
}
