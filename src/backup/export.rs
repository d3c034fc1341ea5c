//! One backup run: everything the node applied since the last manifest, as
//! segments per origin (streamed from the log), the bodies the backup does
//! not hold yet, and a manifest written last, once the rest is durable.

use super::layout::{self, Head, Loaded, Manifest, Run, SegmentRef};
use super::target::Target;
use super::BackupError;
use crate::event::Event;
use crate::store::Store;
use std::collections::{BTreeMap, HashSet};
use wal::segment::{Sealed, SegmentReader, SegmentWriter};
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
    };
    // The writer trusts its own last manifest (checked on its own); the
    // whole chain is what `audit` and `restore` verify.
    if let Some(&n) = layout::manifest_numbers(t)?.last() {
        let Loaded {
            object,
            manifest: m,
            file_hash,
        } = layout::load_manifest(t, n)?;
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
    Ok(pos)
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
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Back up the apply order after `pos` up to `upto` (at most `max_entries`
/// of it) as one manifest. Returns `None` when there was nothing to do.
/// `pos` moves only once the manifest is durable.
pub fn run_once(store: &Store, t: &dyn Target, pos: &mut Position, upto: u64, max_entries: u64) -> Result<Option<RunReport>, BackupError> {
    let wal = store.wal();
    let to = upto.min(wal.last_order()).min(pos.order.saturating_add(max_entries.max(1)));
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
    // Pass 1: the runs of the apply order, each origin's range and the
    // bodies referenced (payloads are dropped as they are read).
    let mut runs: Vec<(Origin, u64, u64)> = Vec::new();
    let mut ranges: BTreeMap<Origin, (u64, u64)> = BTreeMap::new();
    let mut bodies: Vec<([u8; 32], Place)> = Vec::new();
    let mut seen_bodies = HashSet::new();
    let (mut tmin, mut tmax) = (u64::MAX, 0u64);
    let mut next = from;
    while next <= to {
        let chunk = wal.read_order(next, ((to - next + 1) as usize).min(1024))?;
        if chunk.is_empty() {
            return Err(BackupError::Corrupt {
                object: "log".into(),
                reason: format!("apply order position {next} is missing"),
            });
        }
        for (n, e) in chunk {
            if n != next {
                return Err(BackupError::Corrupt {
                    object: "log".into(),
                    reason: format!("apply order jumps from {next} to {n}"),
                });
            }
            next += 1;
            let t_ms = e.hlc >> 16;
            tmin = tmin.min(t_ms);
            tmax = tmax.max(t_ms);
            match runs.last_mut() {
                Some((o, _, last)) if *o == e.origin && *last + 1 == e.seq => *last = e.seq,
                _ => runs.push((e.origin, e.seq, e.seq)),
            }
            let held = pos.heads.get(&e.origin).map(|h| h.0).unwrap_or(0);
            let r = ranges.entry(e.origin).or_insert((e.seq, e.seq));
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
            if let Ok(Event::MessageAppended { blob, .. }) = Event::decode(&e.payload) {
                if seen_bodies.insert(blob.0) {
                    bodies.push((
                        blob.0,
                        Place {
                            origin: e.origin,
                            seq: e.seq,
                        },
                    ));
                }
            }
        }
    }
    let mut report = RunReport {
        order_from: from,
        order_to: to,
        entries: to - from + 1,
        ..RunReport::default()
    };
    // Bodies: each written once, ever. Each object is fsynced on its own,
    // so several are written at once: the file system commits concurrent
    // fsyncs together.
    let (written, bytes) = write_bodies(store, t, &bodies)?;
    report.bodies_written = written;
    report.body_bytes = bytes;
    // Segments, streamed from the log.
    let mut segments = Vec::new();
    let mut heads = pos.heads.clone();
    for (origin, (first, last)) in &ranges {
        let (origin, first, last) = (*origin, *first, *last);
        let prev = heads.get(&origin).map(|h| h.1).unwrap_or([0u8; 32]);
        let name = layout::segment_name(origin, first, last);
        let mut sealed = None;
        let mut fail: Option<BackupError> = None;
        let put = t.put_new(&name, &mut |w| {
            let mut sw = SegmentWriter::new(w, origin, first, last, &prev)?;
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
            sealed = Some(seal);
            Ok(())
        });
        let written = put.map_err(|e| fail.take().unwrap_or_else(|| BackupError::io(&name, e)))?;
        let seal = match sealed {
            Some(s) => s,
            // The name was taken by an earlier run that died before its
            // manifest: same range, same bytes. Read its seal back.
            None if !written => seal_of(t, &name, origin, first, last, &prev)?,
            None => unreachable!("a written segment is sealed"),
        };
        heads.insert(origin, (last, seal.last_hash));
        report.segments += 1;
        report.segment_bytes += if written { seal.len } else { 0 };
        segments.push(SegmentRef {
            object: name,
            origin: origin.to_string(),
            first,
            last,
            prev_hash: hex::encode(seal.prev_hash),
            last_hash: hex::encode(seal.last_hash),
            closing: hex::encode(seal.closing),
            len: seal.len,
        });
    }
    t.sync().map_err(|e| BackupError::io("segments and bodies", e))?;
    // The manifest, last: only now is the run backed up.
    let number = pos.number + 1;
    let m = Manifest {
        format: layout::LAYOUT_FORMAT,
        node_id: pos.node_id.clone(),
        number,
        prev: hex::encode(pos.manifest_hash),
        created_ms: now_ms(),
        order_from: from,
        order_to: to,
        time_from_ms: tmin,
        time_to_ms: tmax,
        runs: runs
            .iter()
            .map(|(o, f, l)| Run {
                origin: o.to_string(),
                first: *f,
                last: *l,
            })
            .collect(),
        segments,
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
        bodies_referenced: bodies.len() as u64,
        bodies_written: report.bodies_written,
        body_bytes_written: report.body_bytes,
    };
    let bytes = layout::encode_manifest(&m);
    let name = layout::manifest_name(number);
    if !t
        .put_new(&name, &mut |w| w.write_all(&bytes))
        .map_err(|e| BackupError::io(&name, e))?
    {
        return Err(BackupError::Corrupt {
            object: name,
            reason: "exists already: another writer is backing up into this target".into(),
        });
    }
    t.sync().map_err(|e| BackupError::io(&name, e))?;
    pos.number = number;
    pos.manifest_hash = *blake3::hash(&bytes).as_bytes();
    pos.order = to;
    pos.heads = heads;
    pos.time_ms = pos.time_ms.max(tmax);
    report.manifest = number;
    Ok(Some(report))
}

/// Verify a segment object already in the target and describe it.
fn seal_of(t: &dyn Target, name: &str, origin: Origin, first: u64, last: u64, prev: &Hash) -> Result<Sealed, BackupError> {
    let r = t.open(name).map_err(|e| BackupError::io(name, e))?;
    let mut sr = SegmentReader::open(r).map_err(|source| BackupError::Segment {
        object: name.to_string(),
        source,
    })?;
    if sr.origin() != origin || sr.first_seq() != first || sr.last_seq() != last || sr.prev_hash() != prev {
        return Err(BackupError::Corrupt {
            object: name.to_string(),
            reason: "its header does not match its name or the chain before it".into(),
        });
    }
    sr.verify_rest().map_err(|source| BackupError::Segment {
        object: name.to_string(),
        source,
    })?;
    Ok(sr.sealed().expect("verified to the end"))
}

/// Threads writing body objects at once.
const BODY_WRITERS: usize = 16;

/// Write the bodies the target lacks. Returns objects and bytes written.
fn write_bodies(store: &Store, t: &dyn Target, bodies: &[([u8; 32], Place)]) -> Result<(u64, u64), BackupError> {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let (written, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let one = |i: usize| -> Result<(), BackupError> {
        let (hash, place) = &bodies[i];
        let name = layout::body_name(hash);
        if t.exists(&name).map_err(|e| BackupError::io(&name, e))? {
            return Ok(());
        }
        let body = store.blob(&crate::event::BlobHash(*hash))?.ok_or_else(|| BackupError::Body {
            object: name.clone(),
            place: place.clone(),
            reason: "the node does not hold this body".into(),
        })?;
        if t.put_new(&name, &mut |w| w.write_all(&body))
            .map_err(|e| BackupError::io(&name, e))?
        {
            written.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    };
    let workers = BODY_WRITERS.min(bodies.len());
    let failed: Vec<BackupError> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= bodies.len() {
                            return None;
                        }
                        if let Err(e) = one(i) {
                            // Stop the others at their next body.
                            next.store(bodies.len(), Ordering::Relaxed);
                            return Some(e);
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("body writer panicked"))
            .collect()
    });
    if let Some(e) = failed.into_iter().next() {
        return Err(e);
    }
    Ok((written.into_inner(), bytes.into_inner()))
}
