//! Reading a backup back: the manifest chain, then every segment entry
//! verified against its origin's chain before it is applied, bodies read
//! by ranged reads from their run objects or packs (neighbours coalesced
//! into one read) or, in format-1 backups, from their own objects, and
//! checked against their blake3, all applied through the same path a
//! mirror's batch takes. Three stages overlap: the next batch is read
//! while a body writer makes the bodies of the one before durable and an
//! applier commits the entries of the one before that. A restore that is
//! interrupted continues where the store stands.

use super::layout::{self, Loaded, PackRef};
use super::retention::{self, Base};
use super::target::Target;
use super::BackupError;
use crate::event::{BlobHash, Event};
use crate::repl::apply::apply_batch_without_tree;
use crate::repl::frame::{WireBlob, WireEntry};
use crate::store::Store;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use wal::{Origin, Place};

/// Where a restore stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Everything the backup holds.
    Latest,
    /// The longest prefix of the apply order whose entries are all at or
    /// before this time (ms since the epoch, compared with entry HLC times).
    Until { ms: u64 },
    /// The apply order up to and including this entry.
    Seq { origin: Origin, seq: u64 },
}

/// Largest body read (guards allocations).
pub const MAX_BODY_LEN: u64 = 1 << 30;
/// A batch is applied once it holds this many entries, bytes or bodies to
/// fetch. Large enough that its bodies usually pass the store's bulk
/// threshold (written once, straight to blob files, instead of through
/// RocksDB's WAL and again at flush) and that a restore syncs a few dozen
/// times, not once per few dozen messages.
const BATCH_ENTRIES: usize = 4096;
const BATCH_BYTES: usize = 24 << 20;

/// Where a body lies in a pack.
#[derive(Debug, Clone)]
pub struct Packed {
    pub pack: Arc<str>,
    pub offset: u64,
    pub len: u64,
}

/// Every body in the packs of a backup (of its base and its manifests).
/// A body not in it is looked for as a format-1 body object.
#[derive(Debug, Clone, Default)]
pub struct BodyIndex(HashMap<[u8; 32], Packed>);

impl BodyIndex {
    /// The packs of `base` and `manifests`.
    pub fn of(base: Option<&Base>, manifests: &[Loaded]) -> Result<BodyIndex, BackupError> {
        let mut ix = BodyIndex::default();
        if let Some(b) = base {
            ix.add(&retention::base_name(b.number), &b.packs)?;
        }
        for l in manifests {
            ix.add(&l.object, &l.manifest.packs)?;
        }
        Ok(ix)
    }

    /// Add the bodies of `packs`, named by `owner` (a manifest or base).
    pub fn add(&mut self, owner: &str, packs: &[PackRef]) -> Result<(), BackupError> {
        for p in packs {
            p.check(owner)?;
            let pack: Arc<str> = Arc::from(p.object.as_str());
            for b in &p.bodies {
                let h = layout::parse_hash(owner, "pack body", &b.0)?;
                // The first pack holding a body is the one read.
                self.0.entry(h).or_insert_with(|| Packed {
                    pack: pack.clone(),
                    offset: b.1,
                    len: b.2,
                });
            }
        }
        Ok(())
    }

    pub fn get(&self, hash: &[u8; 32]) -> Option<&Packed> {
        self.0.get(hash)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A verified backup, ready to restore from.
pub struct Plan {
    pub node_id: String,
    /// The base the restore starts from (its store is fetched first);
    /// `None`: from the first manifest.
    pub base: Option<super::retention::Base>,
    /// The manifests after the base (or all of them).
    pub manifests: Vec<Loaded>,
    /// The apply-order position the restore ends at (for `Until`, an
    /// upper bound: the exact point is found while applying).
    pub target_order: u64,
    /// Where the packed bodies are.
    pub bodies: BodyIndex,
}

/// Where a restore to `stop` starts: the newest base at or before it, or
/// the first manifest when it is still there.
fn choose_base(t: &dyn Target, node_id: &str, stop: Stop) -> Result<Option<Base>, BackupError> {
    let numbers = retention::base_numbers(t)?;
    let mut oldest = None;
    for n in numbers.into_iter().rev() {
        let b = retention::load_base(t, n)?;
        if b.node_id != node_id {
            return Err(BackupError::Corrupt {
                object: retention::base_name(n),
                reason: format!("belongs to node {:?}, not {node_id:?}", b.node_id),
            });
        }
        let before = match stop {
            Stop::Latest => true,
            Stop::Until { ms } => b.time_ms <= ms,
            Stop::Seq { origin, seq } => b.heads.get(&origin.to_string()).is_none_or(|h| h.seq < seq),
        };
        if before {
            return Ok(Some(b));
        }
        oldest = Some(b);
    }
    match oldest {
        // Earlier than every base: only the whole chain from manifest 1
        // can serve it (run objects prune keeps for their bodies do not
        // make a chain).
        Some(b) if !(1..=b.number).eq(layout::manifest_numbers(t)?.into_iter().take_while(|n| *n <= b.number)) => Err(BackupError::Usage(format!(
            "that point is older than the oldest restore point the backup keeps (base {}, time {} ms, apply order {}): earlier ones were pruned",
            b.number, b.time_ms, b.order
        ))),
        _ => Ok(None),
    }
}

/// Read the marker and the manifest chain (from the base the restore
/// starts at), and find where `stop` is.
pub fn plan(t: &dyn Target, stop: Stop) -> Result<Plan, BackupError> {
    let node_id = layout::read_marker(t)?.ok_or_else(|| BackupError::Missing {
        object: layout::MARKER.into(),
        what: format!("{} holds no Tandem backup", t.describe()),
    })?;
    let base = choose_base(t, &node_id, stop)?;
    let manifests = match &base {
        None => layout::load_chain(t, &node_id)?,
        Some(b) => {
            let (prev, order, heads) = retention::base_state(b)?;
            layout::load_chain_after(t, &node_id, b.number, prev, order, heads)?
        }
    };
    let floor = base.as_ref().map(|b| b.order).unwrap_or(0);
    let last = manifests.last().map(|l| l.manifest.order_to).unwrap_or(floor);
    let target_order = match stop {
        Stop::Latest => last,
        Stop::Until { ms } => manifests
            .iter()
            .filter(|l| l.manifest.time_from_ms <= ms)
            .map(|l| l.manifest.order_to)
            .max()
            .unwrap_or(floor),
        Stop::Seq { origin, seq } => {
            let o = origin.to_string();
            let mut found = None;
            'm: for l in &manifests {
                let mut pos = l.manifest.order_from;
                for r in &l.manifest.runs {
                    if r.origin == o && (r.first..=r.last).contains(&seq) {
                        found = Some(pos + (seq - r.first));
                        break 'm;
                    }
                    pos += r.last - r.first + 1;
                }
            }
            found.ok_or_else(|| BackupError::Usage(format!("the backup holds no entry {origin}:{seq}")))?
        }
    };
    let bodies = BodyIndex::of(base.as_ref(), &manifests)?;
    Ok(Plan {
        node_id,
        base,
        manifests,
        target_order,
        bodies,
    })
}

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RestoreReport {
    pub node_id: String,
    pub manifests: u64,
    /// Apply-order position already in the store when this run began.
    pub resumed_at: u64,
    /// Apply-order position the store holds now.
    pub order: u64,
    pub entries_applied: u64,
    pub entries_verified: u64,
    pub bodies_fetched: u64,
    pub body_bytes: u64,
    /// The last entry applied: origin, seq, time (HLC ms).
    pub last: Option<(String, u64, u64)>,
    /// Reads of the backup that failed and were retried.
    pub read_retries: u64,
}

/// Body objects fetched at once by default while restoring.
pub const DEFAULT_FETCHERS: usize = 8;
/// Most bodies waiting to be fetched in one batch.
const BATCH_BODIES: usize = 1024;

struct Batch {
    entries: Vec<WireEntry>,
    /// Bodies the entries need that the store lacks, by the entry that
    /// first named them; fetched together, in parallel, at the flush.
    pending: Vec<([u8; 32], Place)>,
    bytes: usize,
    /// Apply-order position of the last entry.
    pos: u64,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            entries: Vec::new(),
            pending: Vec::new(),
            bytes: 0,
            pos: 0,
        }
    }
}

/// A batch ready to apply: verified entries and their checked bodies.
struct Ready {
    entries: Vec<WireEntry>,
    blobs: Vec<WireBlob>,
    pos: u64,
}

/// The reading side of a restore: it verifies entries and fetches bodies
/// while the body writer and the applier store the batches before.
struct Pipeline<'a> {
    store: &'a Store,
    t: &'a dyn Target,
    index: &'a BodyIndex,
    fetchers: usize,
    tx: std::sync::mpsc::SyncSender<Ready>,
}

/// The applier stopped (on an error of its own, which is the one
/// reported).
struct ApplierGone;

/// Ranged reads of neighbouring bodies in one pack are joined when the
/// gap between them is at most this many bytes...
const COALESCE_GAP: u64 = 64 << 10;
/// ...and the joined read stays within this many.
const COALESCE_MAX: u64 = 8 << 20;

/// One read: some bodies of one pack (indexes into the pending list), or
/// one format-1 body object.
enum Read {
    Pack { pack: Arc<str>, members: Vec<usize> },
    Object(usize),
}

/// Plan the reads for `pending`: packed bodies sorted by pack and offset,
/// neighbours joined.
fn plan_reads(index: &BodyIndex, pending: &[([u8; 32], Place)]) -> Vec<Read> {
    let mut packed: Vec<(usize, &Packed)> = Vec::new();
    let mut reads = Vec::new();
    for (i, (h, _)) in pending.iter().enumerate() {
        match index.get(h) {
            Some(p) => packed.push((i, p)),
            None => reads.push(Read::Object(i)),
        }
    }
    packed.sort_by(|a, b| (&a.1.pack, a.1.offset).cmp(&(&b.1.pack, b.1.offset)));
    let mut cur: Option<(Arc<str>, u64, u64, Vec<usize>)> = None;
    for (i, p) in packed {
        if let Some((pack, start, end, members)) = &mut cur {
            let end_new = p.offset.saturating_add(p.len).max(*end);
            if **pack == *p.pack && p.offset >= *end && p.offset - *end <= COALESCE_GAP && end_new - *start <= COALESCE_MAX {
                *end = end_new;
                members.push(i);
                continue;
            }
        }
        if let Some((pack, _, _, members)) = cur.take() {
            reads.push(Read::Pack { pack, members });
        }
        cur = Some((p.pack.clone(), p.offset, p.offset.saturating_add(p.len), vec![i]));
    }
    if let Some((pack, _, _, members)) = cur {
        reads.push(Read::Pack { pack, members });
    }
    reads
}

/// Read one packed body from `bytes` (the pack's bytes from `at`) and
/// check it against its hash.
fn check_packed(hash: &[u8; 32], place: &Place, p: &Packed, bytes: &[u8], at: u64) -> Result<Vec<u8>, BackupError> {
    let from = (p.offset - at) as usize;
    let body = &bytes[from..from + p.len as usize];
    if &BlobHash::of(body).0 != hash {
        return Err(pack_error(hash, place, p, "content does not match its blake3 hash".into()));
    }
    Ok(body.to_vec())
}

fn pack_error(hash: &[u8; 32], place: &Place, p: &Packed, reason: String) -> BackupError {
    BackupError::PackBody {
        object: p.pack.to_string(),
        hash: hex::encode(hash),
        offset: p.offset,
        len: p.len,
        place: place.clone(),
        reason,
    }
}

/// Fetch and check one packed body on its own.
pub fn fetch_packed(t: &dyn Target, hash: &[u8; 32], place: &Place, p: &Packed) -> Result<Vec<u8>, BackupError> {
    if p.len > MAX_BODY_LEN {
        return Err(pack_error(hash, place, p, format!("larger than {MAX_BODY_LEN} bytes")));
    }
    match t.read_range(&p.pack, p.offset, p.len) {
        Ok(b) => check_packed(hash, place, p, &b, p.offset),
        Err(e) => Err(pack_error(
            hash,
            place,
            p,
            match e.kind() {
                std::io::ErrorKind::NotFound => "the pack is missing".into(),
                std::io::ErrorKind::UnexpectedEof => format!("the pack is truncated: {e}"),
                _ => e.to_string(),
            },
        )),
    }
}

/// Do one read; every member gets its own result. A joined read that
/// fails is read again body by body, so the failure names the body.
fn do_read(t: &dyn Target, index: &BodyIndex, pending: &[([u8; 32], Place)], r: &Read) -> Vec<(usize, Result<Vec<u8>, BackupError>)> {
    match r {
        Read::Object(i) => vec![(*i, fetch_body(t, &pending[*i].0, &pending[*i].1))],
        Read::Pack { pack, members } => {
            let loc = |i: usize| index.get(&pending[i].0).expect("planned from the index");
            let start = loc(members[0]).offset;
            let end = members.iter().map(|&i| loc(i).offset + loc(i).len).max().unwrap_or(start);
            if members.len() > 1 {
                if let Ok(bytes) = t.read_range(pack, start, end - start) {
                    return members
                        .iter()
                        .map(|&i| (i, check_packed(&pending[i].0, &pending[i].1, loc(i), &bytes, start)))
                        .collect();
                }
            }
            members
                .iter()
                .map(|&i| (i, fetch_packed(t, &pending[i].0, &pending[i].1, loc(i))))
                .collect()
        }
    }
}

/// Fetch and check `pending` with up to `fetchers` reads at once. The
/// first failure in entry order is the one reported.
fn fetch_all(t: &dyn Target, index: &BodyIndex, pending: &[([u8; 32], Place)], fetchers: usize) -> Result<Vec<WireBlob>, BackupError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let reads = plan_reads(index, pending);
    let workers = fetchers.max(1).min(reads.len());
    let next = AtomicUsize::new(0);
    type Slot = Mutex<Option<Result<Vec<u8>, BackupError>>>;
    let results: Vec<Slot> = pending.iter().map(|_| Mutex::new(None)).collect();
    let work = || loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= reads.len() {
            return;
        }
        let mut failed = false;
        for (i, r) in do_read(t, index, pending, &reads[k]) {
            failed |= r.is_err();
            *results[i].lock().expect("result lock") = Some(r);
        }
        if failed {
            // The others stop at their next read.
            next.store(reads.len(), Ordering::Relaxed);
        }
    };
    if workers <= 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(work);
            }
        });
    }
    let mut out = Vec::with_capacity(pending.len());
    let mut unread = None;
    for (i, r) in results.into_iter().enumerate() {
        match r.into_inner().expect("result lock") {
            Some(Ok(body)) => out.push(WireBlob { hash: pending[i].0, body }),
            Some(Err(e)) => return Err(e),
            // Left unread after a failure, which a later slot holds.
            None => unread = unread.or(Some(i)),
        }
    }
    match unread {
        None => Ok(out),
        Some(i) => Err(BackupError::Body {
            object: layout::body_name(&pending[i].0),
            place: pending[i].1.clone(),
            reason: "not read".into(),
        }),
    }
}

/// Fetch and check the batch's bodies and hand the batch to the applier.
/// Errors name the entry; `Ok(Err(ApplierGone))`: the applier stopped,
/// and its error is the one to report.
fn flush(p: &Pipeline<'_>, rep: &mut RestoreReport, b: &mut Batch) -> Result<Result<(), ApplierGone>, BackupError> {
    if b.entries.is_empty() {
        return Ok(Ok(()));
    }
    let blobs = fetch_all(p.t, p.index, &b.pending, p.fetchers)?;
    rep.bodies_fetched += blobs.len() as u64;
    rep.body_bytes += blobs.iter().map(|w| w.body.len() as u64).sum::<u64>();
    let ready = Ready {
        entries: std::mem::take(&mut b.entries),
        blobs,
        pos: b.pos,
    };
    b.pending.clear();
    b.bytes = 0;
    Ok(p.tx.send(ready).map_err(|_| ApplierGone))
}

/// A batch on its way to the applier: its entries, with the bodies that
/// are still to be written with them (`blobs`) or that are already
/// durable (`stored`).
struct Stored {
    entries: Vec<WireEntry>,
    blobs: Vec<WireBlob>,
    stored: Vec<[u8; 32]>,
    pos: u64,
}

/// The first entry of a batch, which names it in errors.
fn first_place(entries: &[WireEntry]) -> Place {
    Place {
        origin: Origin(entries[0].origin),
        seq: entries[0].seq,
    }
}

/// Write the bodies of batches as they come, in order, and hand each on
/// to the applier; stops at the first failure. A batch with many bodies
/// has them written once, straight to blob files and flushed
/// (`wal::Wal::put_flushed`, as the mirror's receiver does): durable
/// before its entries, which reference them, are handed on. This runs
/// while the applier commits the batch before, so body writes and their
/// flush overlap entry commits. Returns `Ok` when the applier stopped
/// (its error is the one reported).
fn body_writer(store: &Store, rx: std::sync::mpsc::Receiver<Ready>, tx: std::sync::mpsc::SyncSender<Stored>) -> Result<(), BackupError> {
    let bulk = store.wal().bulk_bytes();
    for r in rx {
        let bytes: u64 = r.blobs.iter().map(|w| w.body.len() as u64).sum();
        let (blobs, stored) = if bulk > 0 && bytes >= bulk {
            let items: Vec<(&[u8], &[u8])> = r.blobs.iter().map(|w| (&w.hash[..], &w.body[..])).collect();
            store.put_bodies_flushed(&items).map_err(|e| BackupError::Apply {
                place: first_place(&r.entries),
                reason: format!("storing the batch's bodies: {e}"),
            })?;
            (Vec::new(), r.blobs.iter().map(|w| w.hash).collect())
        } else {
            (r.blobs, Vec::new())
        };
        let s = Stored {
            entries: r.entries,
            blobs,
            stored,
            pos: r.pos,
        };
        if tx.send(s).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Apply batches as they come, in order; stops at the first failure.
/// `applied` follows the apply-order position reached.
fn applier(store: &Store, rx: std::sync::mpsc::Receiver<Stored>, applied: &std::sync::atomic::AtomicU64) -> Result<(), BackupError> {
    for s in rx {
        let first = first_place(&s.entries);
        let Stored {
            entries,
            blobs,
            stored,
            pos,
        } = s;
        store
            .run_blocking(move |t, c| apply_batch_without_tree(t, c, &entries, &blobs, &stored).map_err(Into::into))
            .map_err(|e| BackupError::Apply {
                place: first,
                reason: e.to_string(),
            })?;
        applied.store(pos, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

fn tree_error(e: crate::store::StoreError) -> BackupError {
    match e {
        crate::store::StoreError::Wal(w) => BackupError::Wal(w),
        other => BackupError::Usage(format!("building the merkle tree of the restored views: {other}")),
    }
}

/// Fetch and check a format-1 body object.
pub fn fetch_body(t: &dyn Target, hash: &[u8; 32], place: &Place) -> Result<Vec<u8>, BackupError> {
    let object = layout::body_name(hash);
    let body = match layout::read_object(t, &object, MAX_BODY_LEN) {
        Ok(b) => b,
        Err(BackupError::Missing { .. }) => {
            return Err(BackupError::Body {
                object,
                place: place.clone(),
                reason: "missing".into(),
            })
        }
        Err(e) => return Err(e),
    };
    if &BlobHash::of(&body).0 != hash {
        return Err(BackupError::Body {
            object,
            place: place.clone(),
            reason: format!("content ({} bytes) does not match its blake3 name", body.len()),
        });
    }
    Ok(body)
}

/// Apply the backup in `plan` to `store` (empty, or holding an earlier,
/// interrupted restore of the same backup) up to `stop`. `progress` is
/// called with the apply-order position reached.
pub fn apply(t: &dyn Target, plan: &Plan, store: &Store, stop: Stop, progress: &mut dyn FnMut(u64)) -> Result<RestoreReport, BackupError> {
    apply_with(t, plan, store, stop, DEFAULT_FETCHERS, progress)
}

/// [`apply`], with up to `fetchers` body reads at once (1: one after
/// the other).
pub fn apply_with(
    t: &dyn Target,
    plan: &Plan,
    store: &Store,
    stop: Stop,
    fetchers: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<RestoreReport, BackupError> {
    let wal = store.wal();
    let resumed_at = wal.last_order();
    let mut rep = RestoreReport {
        node_id: plan.node_id.clone(),
        manifests: plan.manifests.len() as u64,
        resumed_at,
        ..RestoreReport::default()
    };
    // Entries are applied without the merkle tree, which is built once at
    // the end: cheaper than keeping it up to date entry by entry. Until
    // then the store is durably marked as lacking it, so a restore cut
    // short here leaves no stale tree marked current: resuming it (or
    // starting the node) builds the tree from the views.
    crate::merkle::invalidate(store).map_err(tree_error)?;
    // Three stages, one batch apart at most: reading (segments verified,
    // bodies fetched and checked) runs here while the body writer makes
    // the batch before's bodies durable and the applier commits the
    // entries of the one before that.
    let applied = std::sync::atomic::AtomicU64::new(resumed_at);
    let (read, written, applied_result) = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Ready>(1);
        let (stored_tx, stored_rx) = std::sync::mpsc::sync_channel::<Stored>(1);
        let applied = &applied;
        let writer = s.spawn(move || body_writer(store, rx, stored_tx));
        let applier = s.spawn(move || applier(store, stored_rx, applied));
        let p = Pipeline {
            store,
            t,
            index: &plan.bodies,
            fetchers,
            tx,
        };
        let read = read_batches(&p, plan, stop, resumed_at, &mut rep, &mut |_| {
            progress(applied.load(std::sync::atomic::Ordering::Relaxed))
        });
        drop(p);
        (read, writer.join(), applier.join())
    });
    // The first failure in apply order is the one reported: the applier's
    // batch comes before the body writer's, which comes before the
    // reader's.
    for r in [applied_result, written] {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    // Both ran to the end, so the reader was not cut short by them.
    read?.map_err(|ApplierGone| BackupError::Usage("the applier stopped without an error".into()))?;
    crate::merkle::ensure(store).map_err(tree_error)?;
    rep.order = wal.last_order();
    progress(rep.order);
    Ok(rep)
}

/// The reading side of [`apply_with`]: every manifest's entries from
/// `resumed_at` on, in batches handed to the applier.
fn read_batches(
    p: &Pipeline<'_>,
    plan: &Plan,
    stop: Stop,
    resumed_at: u64,
    rep: &mut RestoreReport,
    progress: &mut dyn FnMut(u64),
) -> Result<Result<(), ApplierGone>, BackupError> {
    let (t, store) = (p.t, p.store);
    let wal = store.wal();
    let mut batch = Batch::new();
    // Bodies already handed on in this run (the store learns of a body
    // only once its entry is applied).
    let mut queued: HashSet<[u8; 32]> = HashSet::new();
    let mut done = matches!(stop, Stop::Seq { .. }) && resumed_at >= plan.target_order;
    // An empty store holds no body: the only bodies a lookup could find
    // are those of earlier batches of this run, which `queued` names.
    let fresh = resumed_at == 0;
    for l in &plan.manifests {
        if done {
            break;
        }
        let m = &l.manifest;
        if m.order_to <= resumed_at {
            // Applied by an earlier run: the store must hold this very history.
            {
                for (o, h) in &m.heads {
                    let origin = layout::parse_origin(&l.object, o)?;
                    let want = layout::parse_hash(&l.object, "heads", &h.hash)?;
                    match wal.entry(origin, h.seq)? {
                        Some(e) if e.hash == want => {}
                        _ => {
                            return Err(BackupError::Usage(format!(
                                "the target store does not hold this backup's history (origin {o} seq {} differs); restore into an empty data directory",
                                h.seq
                            )))
                        }
                    }
                }
            }
            continue;
        }
        let mut readers = BTreeMap::new();
        for s in &m.segments {
            let origin = layout::parse_origin(&l.object, &s.origin)?;
            let sr = layout::open_segment(t, s, &l.object)?;
            let prev = layout::parse_hash(&l.object, "prev_hash", &s.prev_hash)?;
            if sr.origin() != origin || sr.first_seq() != s.first || sr.last_seq() != s.last || sr.prev_hash() != &prev {
                return Err(BackupError::Corrupt {
                    object: s.describe(),
                    reason: format!(
                        "header does not match {} (origin {}, seqs {}..={})",
                        l.object, s.origin, s.first, s.last
                    ),
                });
            }
            readers.insert(origin, (s, sr));
        }
        let mut pos = m.order_from;
        'runs: for r in &m.runs {
            let origin = layout::parse_origin(&l.object, &r.origin)?;
            let (sref, sr) = readers.get_mut(&origin).expect("the chain check matched runs to segments");
            for seq in r.first..=r.last {
                let e = sr
                    .next_entry()
                    .map_err(|e| layout::segment_error(sref, e))?
                    .ok_or_else(|| BackupError::Corrupt {
                        object: sref.describe(),
                        reason: format!("ends before origin {origin} seq {seq}"),
                    })?;
                rep.entries_verified += 1;
                let place = Place { origin, seq };
                if pos <= resumed_at {
                    match wal.entry(origin, seq)? {
                        Some(held) if held.hash == e.hash => {}
                        _ => {
                            return Err(BackupError::Usage(format!(
                                "the target store does not hold this backup's history at {place}; restore into an empty data directory"
                            )))
                        }
                    }
                    pos += 1;
                    continue;
                }
                if let Stop::Until { ms } = stop {
                    if e.hlc >> 16 > ms {
                        done = true;
                        break 'runs;
                    }
                }
                let event = Event::decode(&e.payload).map_err(|err| BackupError::Apply {
                    place: place.clone(),
                    reason: err.to_string(),
                })?;
                if let Event::MessageAppended { blob, size, .. } = &event {
                    if !queued.contains(&blob.0)
                        && (fresh
                            || !store.holds_body(blob).map_err(|err| BackupError::Apply {
                                place: place.clone(),
                                reason: err.to_string(),
                            })?)
                    {
                        // The entry's size bounds the batch before the body
                        // is fetched (the fetched length is what counts).
                        batch.bytes += (*size).min(MAX_BODY_LEN) as usize;
                        queued.insert(blob.0);
                        batch.pending.push((blob.0, place.clone()));
                    }
                }
                rep.last = Some((origin.to_string(), seq, e.hlc >> 16));
                batch.bytes += e.payload.len();
                batch.entries.push(WireEntry {
                    origin: origin.0,
                    seq,
                    hlc: e.hlc,
                    hash: e.hash,
                    payload: e.payload,
                });
                batch.pos = pos;
                rep.entries_applied += 1;
                if batch.entries.len() >= BATCH_ENTRIES || batch.bytes >= BATCH_BYTES || batch.pending.len() >= BATCH_BODIES {
                    if let Err(gone) = flush(p, rep, &mut batch)? {
                        return Ok(Err(gone));
                    }
                    progress(pos);
                }
                if matches!(stop, Stop::Seq { .. }) && pos >= plan.target_order {
                    done = true;
                    break 'runs;
                }
                pos += 1;
            }
        }
        if !done {
            // Every segment read to its closing hash and its end.
            for (sref, sr) in readers.values_mut() {
                sr.verify_rest().map_err(|e| layout::segment_error(sref, e))?;
            }
        }
    }
    flush(p, rep, &mut batch)
}
