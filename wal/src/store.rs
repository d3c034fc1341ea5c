//! The RocksDB store behind the log: column families, open and recovery,
//! reads, verification and the tail notification.

use crate::error::{AppendError, Place, WalError};
use crate::prune::{self, Base, Kept, PruneLimits, PruneReport};
use crate::record::{Entry, Hash, GENESIS};
use crate::seq::{log_key, parse_log_key, Origin, VersionVector};
use crate::shadow::Shadow;
use crate::writer::{self, Job, Txn};
use rocksdb::{ColumnFamilyDescriptor, DBRecoveryMode, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Keys and values in key order, as scans return them.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// Version of the store layout, kept in the meta column family. Format 2
/// added the per-origin base records of pruning (`crate::prune`); a
/// format-1 store (no base record: every log starts at seq 1) is read as
/// is and marked format 2 at open.
pub const STORE_FORMAT: u32 = 2;
/// The previous layout, still opened (and upgraded in place).
pub const STORE_FORMAT_V1: u32 = 1;

pub(crate) const CF_LOG: u8 = 0;
pub(crate) const CF_ORDER: u8 = 1;
pub(crate) const CF_META: u8 = 2;
pub(crate) const FIRST_USER_CF: u8 = 3;
const INTERNAL_CFS: [&str; 3] = ["log", "order", "meta"];

pub(crate) const META_ORDER_NEXT: &[u8] = b"order_next";
/// A RocksDB write batch's header: its sequence number and record count.
const BATCH_HEADER: usize = 12;
/// At most what one batch record adds beside its key and value: a tag, a
/// column family id and two length varints.
const BATCH_RECORD_OVERHEAD: usize = 1 + 5 + 5 + 5;
const META_FORMAT: &[u8] = b"format";
const META_DIRTY: &[u8] = b"dirty";
pub(crate) const META_ORIGIN: &[u8] = b"origin";
/// The origin derived from the node id, kept once the node appends under a
/// successor origin (see [`crate::Txn::rehome`]).
pub(crate) const META_ORIGIN_BASE: &[u8] = b"origin_base";
/// (origin, seq): a lower bound of what a peer was seen to hold of this
/// node's own origin with the same hashes (see [`Wal::confirm`]).
const META_CONFIRMED: &[u8] = b"confirmed";
/// Key prefix of a peer's acknowledged vector: `peer_acked` + the peer's
/// address (UTF-8) -> (origin u64 BE, seq u64 BE)* (see
/// [`Wal::record_peer_ack`]).
const META_PEER_ACKED: &[u8] = b"peer_acked";

pub(crate) fn meta_head_key(origin: Origin) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(b"head");
    k[4..].copy_from_slice(&origin.0.to_be_bytes());
    k
}

/// A column family handle: an index into the families declared at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cf(pub(crate) u8);

/// How to treat what a crash left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// A torn tail of RocksDB's write-ahead log (a batch that was being
    /// written when the process died, hence never acknowledged) is dropped
    /// and reported. Corruption anywhere else is refused.
    #[default]
    TolerateTornTail,
    /// Any damage, even a torn tail, refuses to open.
    Strict,
}

/// Options of [`Wal::open`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// This node's origin.
    pub local_origin: Origin,
    /// fsync every group. Only tests that measure nothing durable turn it off.
    pub sync: bool,
    pub recovery: RecoveryMode,
    /// Entries per origin whose chain is verified at open (the tail).
    pub verify_tail: u64,
    /// Most transactions in one group commit.
    pub max_group: usize,
    /// Caller column families (views and the like).
    pub user_cfs: Vec<String>,
    /// Caller column families holding large values (RocksDB blob files).
    pub blob_cfs: Vec<String>,
    /// A group putting at least this many bytes into blob column families
    /// writes them once, to blob files, instead of twice (RocksDB's WAL,
    /// then blob files at flush): they are written without the WAL and
    /// the column family is flushed (files fsynced) before the group's
    /// logged batch, which references them, is written. 0 turns it off.
    pub bulk_bytes: u64,
    /// Write flush and compaction output with O_DIRECT: no copy through
    /// the page cache (a bulk load is bound by that copy and by page
    /// reclaim), at the price of cold reads of freshly flushed files.
    /// Ignored, with a warning, where the file system refuses O_DIRECT.
    pub direct_flush: bool,
    /// The memory budget of RocksDB, shared by all column families (see
    /// [`MemoryBudget`]).
    pub memory: MemoryBudget,
}

/// What RocksDB may hold in memory, whatever the size of the store.
///
/// Without a budget every column family gets its own block cache, index
/// and filter blocks of every table file stay in memory outside any cache
/// (they grow with the store), memtables are bounded only per column
/// family, and RocksDB's own WAL files are kept until the least written
/// column family flushes, which pinned gigabytes of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// One LRU block cache for all column families; index and filter
    /// blocks are charged to it too.
    pub block_cache_bytes: usize,
    /// All memtables together (a write buffer manager): past it, the
    /// largest memtable is flushed. Not charged to the block cache, so
    /// the two add up to the budget.
    pub write_buffer_bytes: usize,
    /// RocksDB's WAL files together: past it, the column families holding
    /// the oldest one are flushed so it can go.
    pub max_wal_bytes: u64,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 256 << 20,
            max_wal_bytes: 256 << 20,
        }
    }
}

/// Memory RocksDB holds now, against its [`MemoryBudget`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemorySnapshot {
    pub block_cache_bytes: u64,
    pub block_cache_capacity: u64,
    /// Pinned in the cache (index and filter blocks of open tables among them).
    pub block_cache_pinned_bytes: u64,
    pub memtable_bytes: u64,
    pub write_buffer_budget: u64,
    /// Bytes of RocksDB's WAL files on disk, and their bound.
    pub wal_files_bytes: u64,
    pub max_wal_bytes: u64,
}

/// What the store takes on disk, by column family.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskUsage {
    pub column_families: Vec<CfDisk>,
    /// RocksDB's WAL files (entries not yet flushed to tables).
    pub wal_files_bytes: u64,
}

/// One column family's files: table files (`rocksdb.total-sst-files-size`,
/// which counts tables a compaction has replaced but a reader still
/// holds) and blob files (`rocksdb.total-blob-file-size`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CfDisk {
    pub name: String,
    pub table_bytes: u64,
    pub blob_bytes: u64,
}

impl DiskUsage {
    /// Everything together.
    pub fn total(&self) -> u64 {
        self.wal_files_bytes + self.column_families.iter().map(|c| c.table_bytes + c.blob_bytes).sum::<u64>()
    }
}

impl WalOptions {
    pub fn new(local_origin: Origin) -> WalOptions {
        WalOptions {
            local_origin,
            sync: true,
            recovery: RecoveryMode::default(),
            verify_tail: 4096,
            max_group: 4096,
            user_cfs: Vec::new(),
            blob_cfs: Vec::new(),
            bulk_bytes: 4 << 20,
            direct_flush: false,
            memory: MemoryBudget::default(),
        }
    }
}

/// What open found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// The previous process did not close the log; any batch it had not
    /// acknowledged may have been dropped as a torn tail.
    pub unclean_shutdown: bool,
    /// Heads per origin after recovery.
    pub heads: VersionVector,
    /// Entries whose chain was checked.
    pub verified: u64,
    /// Length of the apply order.
    pub order_len: u64,
    /// Per origin with pruned history: where its held log starts.
    pub bases: BTreeMap<Origin, Base>,
    /// The store format found on disk, when open upgraded it.
    pub upgraded_from: Option<u32>,
}

/// Counters of the log.
#[derive(Debug, Default)]
pub struct Stats {
    pub entries: AtomicU64,
    pub groups: AtomicU64,
    pub jobs: AtomicU64,
    pub bytes: AtomicU64,
    pub max_group_jobs: AtomicU64,
    pub panics: AtomicU64,
    pub bulk_flushes: AtomicU64,
    pub bulk_bytes: AtomicU64,
    pub pruned: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    /// Entries appended (local and remote).
    pub entries: u64,
    /// Durable writes (one fsync each).
    pub groups: u64,
    /// Transactions committed.
    pub jobs: u64,
    pub bytes: u64,
    pub max_group_jobs: u64,
    /// Transactions that panicked (their writes were discarded).
    pub panics: u64,
    /// Groups whose large values were flushed to blob files instead of
    /// going through RocksDB's WAL, and the bytes they held.
    #[serde(default)]
    pub bulk_flushes: u64,
    #[serde(default)]
    pub bulk_bytes: u64,
    /// Entries pruned since open.
    #[serde(default)]
    pub pruned: u64,
}

type Hook = Box<dyn Fn(u64) + Send + Sync>;
type TimingHook = Box<dyn Fn(&GroupTiming) + Send + Sync>;

/// How long one group commit took, for callers that keep latency
/// histograms ([`Wal::on_group_timing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupTiming {
    /// The durable write alone: RocksDB write with fsync (plus the blob
    /// flush of a bulk group).
    pub write: std::time::Duration,
    /// The whole group: running its transactions, the durable write and
    /// publishing the new heads.
    pub total: std::time::Duration,
    /// Transactions in the group.
    pub jobs: u64,
}

struct Committed {
    heads: BTreeMap<Origin, (u64, Hash)>,
    order_next: u64,
    hlc_last: u64,
}

pub(crate) struct Shared {
    db: DB,
    cf_names: Vec<String>,
    /// Per column family id: whether it holds large values in blob files.
    blob_cf: Vec<bool>,
    /// The origin this node appends as: the configured one, or a successor
    /// after [`crate::Txn::rehome`].
    local_origin: AtomicU64,
    pub(crate) opts: WalOptions,
    state: Mutex<Committed>,
    /// Per origin with pruned history, its base (see `crate::prune`). Raised
    /// before the batch that drops the entries is written, so a reader that
    /// finds an entry gone always finds the base past it.
    bases: Mutex<BTreeMap<Origin, Base>>,
    /// One prune at a time.
    prune_lock: Mutex<()>,
    tail: Condvar,
    poison: Mutex<Option<String>>,
    hooks: Mutex<Vec<Hook>>,
    timing_hooks: Mutex<Vec<TimingHook>>,
    stats: Stats,
    #[cfg(feature = "failpoints")]
    pub(crate) fail_writes: AtomicBool,
    /// While true, the writer waits after a group's durable write and
    /// before publishing it ([`Wal::hold_publish`]).
    #[cfg(feature = "failpoints")]
    pub(crate) publish_held: (Mutex<bool>, Condvar),
    closed: AtomicBool,
    cache: rocksdb::Cache,
    write_buffers: rocksdb::WriteBufferManager,
    /// A caller column family being rebuilt in memory ([`Wal::shadow_begin`]).
    shadow: Mutex<Option<Shadow>>,
    /// Whether `shadow` holds one: read without the lock on every view
    /// read, which mostly finds none.
    shadow_on: AtomicBool,
}

impl Shared {
    pub(crate) fn local_origin(&self) -> Origin {
        Origin(self.local_origin.load(Ordering::SeqCst))
    }

    fn is_blob_cf(&self, cf: u8) -> bool {
        self.blob_cf[cf as usize]
    }

    fn handle(&self, cf: u8) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(&self.cf_names[cf as usize]).expect("declared column family")
    }

    pub(crate) fn get_raw(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, WalError> {
        Ok(self.db.get_cf(self.handle(cf.0), key)?)
    }

    pub(crate) fn multi_get_raw(&self, cf: Cf, keys: &[Vec<u8>], sorted: bool) -> Result<Vec<Option<Vec<u8>>>, WalError> {
        self.db
            .batched_multi_get_cf(self.handle(cf.0), keys, sorted)
            .into_iter()
            .map(|r| Ok(r?.map(|v| v.to_vec())))
            .collect()
    }

    /// `Some(value or None)` when `cf` is held in a shadow: its answer is
    /// the whole truth. `None` when it is not: ask RocksDB.
    pub(crate) fn shadow_get(&self, cf: Cf, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if !self.shadow_on.load(Ordering::Acquire) {
            return None;
        }
        let s = self.shadow.lock().expect("shadow lock");
        s.as_ref().filter(|s| s.cf == cf.0).map(|s| s.get(key))
    }

    /// The committed keys of `cf` starting with `prefix`, when `cf` is
    /// held in a shadow.
    pub(crate) fn shadow_scan(&self, cf: Cf, prefix: &[u8]) -> Option<KeyValues> {
        if !self.shadow_on.load(Ordering::Acquire) {
            return None;
        }
        let s = self.shadow.lock().expect("shadow lock");
        s.as_ref()
            .filter(|s| s.cf == cf.0)
            .map(|s| s.scan(prefix).into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect())
    }

    /// Write a shadow's map into its column family as ingested tables
    /// (of bounded size), then flush the column family: durable when this returns.
    fn write_shadow(&self, shadow: &Shadow) -> Result<(), WalError> {
        if !shadow.is_empty() {
            let stem = format!("shadow-{}", std::process::id());
            let written = shadow.write_tables(self.db.path(), &stem, crate::shadow::TABLE_BYTES);
            let r = written.and_then(|paths| {
                let mut io = rocksdb::IngestExternalFileOptions::default();
                io.set_move_files(true);
                let r = self
                    .db
                    .ingest_external_file_cf_opts(self.handle(shadow.cf), &io, paths.iter().collect());
                for p in &paths {
                    let _ = std::fs::remove_file(p);
                }
                r
            });
            r?;
        }
        let mut fo = rocksdb::FlushOptions::default();
        fo.set_wait(true);
        self.db.flush_cf_opt(self.handle(shadow.cf), &fo)?;
        Ok(())
    }

    pub(crate) fn scan_prefix_raw(&self, cf: Cf, prefix: &[u8]) -> Result<KeyValues, WalError> {
        self.scan_from_raw(cf, prefix, prefix)
    }

    pub(crate) fn scan_from_raw(&self, cf: Cf, prefix: &[u8], start: &[u8]) -> Result<KeyValues, WalError> {
        let mut out = Vec::new();
        self.scan_each(cf, prefix, start, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }

    /// Committed keys with `prefix` from `start` on, in key order, handed
    /// to `f` as RocksDB holds them (no copy) until it returns false.
    pub(crate) fn scan_each(&self, cf: Cf, prefix: &[u8], start: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), WalError> {
        let mut it = self.db.raw_iterator_cf(self.handle(cf.0));
        it.seek(start);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix) || !f(k, v) {
                return Ok(());
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// Walk the committed apply order from its end backwards, calling
    /// `f(position, log key)` until it returns false.
    pub(crate) fn scan_order_back(&self, f: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<(), WalError> {
        for item in self.db.iterator_cf(self.handle(CF_ORDER), IteratorMode::End) {
            let (k, v) = item?;
            let Ok(b) = <[u8; 8]>::try_from(k.as_ref()) else {
                return Err(WalError::CorruptMeta {
                    key: "order".into(),
                    reason: "key is not 8 bytes".into(),
                });
            };
            if !f(u64::from_be_bytes(b), &v) {
                break;
            }
        }
        Ok(())
    }

    /// Where `origin`'s held log starts (the default base when nothing of
    /// it was pruned).
    pub(crate) fn base(&self, origin: Origin) -> Base {
        self.bases.lock().expect("bases lock").get(&origin).copied().unwrap_or_default()
    }

    pub(crate) fn committed_head(&self, origin: Origin) -> Option<(u64, Hash)> {
        self.state.lock().expect("state lock").heads.get(&origin).copied()
    }

    pub(crate) fn group_start(&self) -> (u64, u64) {
        let s = self.state.lock().expect("state lock");
        (s.order_next, s.hlc_last)
    }

    pub(crate) fn count_panic(&self) {
        self.stats.panics.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn report_timing(&self, t: &GroupTiming) {
        for h in self.timing_hooks.lock().expect("hooks lock").iter() {
            h(t);
        }
    }

    pub(crate) fn poisoned(&self) -> Option<String> {
        self.poison.lock().expect("poison lock").clone()
    }

    pub(crate) fn poison(&self, msg: String) {
        *self.poison.lock().expect("poison lock") = Some(msg);
    }

    /// Write `batch` without the WAL and flush `cfs` (blob files and
    /// tables fsynced): durable once this returns.
    fn write_flushed(&self, batch: WriteBatch, cfs: &[u8], bytes: u64) -> Result<(), WalError> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(batch, &wo)?;
        let mut fo = rocksdb::FlushOptions::default();
        fo.set_wait(true);
        for cf in cfs {
            self.db.flush_cf_opt(self.handle(*cf), &fo)?;
        }
        self.stats.bulk_flushes.fetch_add(1, Ordering::Relaxed);
        self.stats.bulk_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn write_group(&self, overlay: writer::Overlay, order_next: u64) -> Result<(), WalError> {
        #[cfg(feature = "failpoints")]
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(WalError::Poisoned("injected write failure".into()));
        }
        let mut shadow = self.shadow.lock().expect("shadow lock");
        let shadow_cf = shadow.as_ref().map(|s| s.cf);
        // One pass over the group for both sizes: the bodies' bytes (which
        // decide the bulk path) and the batch's records. The batch's buffer
        // is sized once from them: grown by doubling, it was copied and
        // reallocated (fresh mappings, page faults) several times per group
        // of 27 KB deliveries; sized, LMTP ingest at 16 connections ran
        // 1.12x faster (benches/README.md).
        let (mut blob_bytes, mut blob_records, mut other_records) = (0u64, 0usize, 0usize);
        for (cf, k, v) in overlay.iter() {
            let record = k.len() + v.as_ref().map_or(0, Vec::len) + BATCH_RECORD_OVERHEAD;
            match v {
                Some(v) if self.is_blob_cf(cf) => {
                    blob_bytes += v.len() as u64;
                    blob_records += record;
                }
                _ if Some(cf) == shadow_cf => {}
                _ => other_records += record,
            }
        }
        // Large values bound for blob column families, when there are
        // enough of them, skip the WAL and are made durable by a flush
        // first: written once instead of twice. A crash before the logged
        // batch leaves only unreferenced bodies behind.
        let bulk = self.opts.sync && self.opts.bulk_bytes > 0 && blob_bytes >= self.opts.bulk_bytes;
        let logged = other_records + if bulk { 0 } else { blob_records };
        let meta = META_ORDER_NEXT.len() + 8 + BATCH_RECORD_OVERHEAD;
        let mut batch = WriteBatch::with_capacity_bytes(BATCH_HEADER + logged + meta);
        let mut unlogged = WriteBatch::default();
        let mut flush: Vec<u8> = Vec::new();
        for (cf, writes) in overlay.into_families() {
            if writes.is_empty() {
                continue;
            }
            if let Some(s) = shadow.as_mut().filter(|s| s.cf == cf) {
                // Keys and values move into the shadow, not copied.
                s.write_all(writes);
                continue;
            }
            let h = self.handle(cf);
            for (k, v) in &writes {
                match v {
                    Some(v) if bulk && self.is_blob_cf(cf) => {
                        unlogged.put_cf(h, k, v);
                        if !flush.contains(&cf) {
                            flush.push(cf);
                        }
                    }
                    Some(v) => batch.put_cf(h, k, v),
                    None => batch.delete_cf(h, k),
                }
            }
        }
        if shadow.as_ref().is_some_and(Shadow::over_budget) {
            // Out of memory budget: the column family goes to RocksDB now
            // and is read and written there from here on.
            let s = shadow.take().expect("checked above");
            self.shadow_on.store(false, Ordering::Release);
            self.write_shadow(&s)?;
        }
        drop(shadow);
        if !flush.is_empty() {
            self.write_flushed(unlogged, &flush, blob_bytes)?;
        }
        batch.put_cf(self.handle(CF_META), META_ORDER_NEXT, order_next.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(self.opts.sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// Wait while a test holds publication ([`Wal::hold_publish`]).
    #[cfg(feature = "failpoints")]
    pub(crate) fn wait_publish(&self) {
        let (held, cv) = &self.publish_held;
        let mut h = held.lock().expect("publish lock");
        while *h {
            h = cv.wait(h).expect("publish lock");
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn committed(
        &self,
        origin: Option<Origin>,
        heads: BTreeMap<Origin, (u64, Hash)>,
        order_next: u64,
        hlc_last: u64,
        entries: u64,
        bytes: u64,
        jobs: u64,
    ) {
        let last_order;
        {
            let mut s = self.state.lock().expect("state lock");
            if let Some(o) = origin {
                self.local_origin.store(o.0, Ordering::SeqCst);
            }
            s.heads.extend(heads);
            s.order_next = order_next;
            s.hlc_last = hlc_last;
            last_order = order_next - 1;
        }
        self.stats.entries.fetch_add(entries, Ordering::Relaxed);
        self.stats.groups.fetch_add(1, Ordering::Relaxed);
        self.stats.jobs.fetch_add(jobs, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.stats.max_group_jobs.fetch_max(jobs, Ordering::Relaxed);
        self.tail.notify_all();
        if entries > 0 {
            for h in self.hooks.lock().expect("hooks lock").iter() {
                h(last_order);
            }
        }
    }
}

/// The event log: per-origin hash chains plus the caller's views, in one
/// RocksDB database, written by one group-commit thread.
pub struct Wal {
    shared: Arc<Shared>,
    tx: Mutex<Option<Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
    report: RecoveryReport,
}

/// Whether files in `dir` can be opened with O_DIRECT (tmpfs, for one,
/// refuses it, and RocksDB would then fail every flush).
fn direct_io_works(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if std::fs::create_dir_all(dir).is_err() {
            return false;
        }
        // Open, write one aligned block and sync it, as a flush would: some
        // file systems accept the flag at open and refuse the writes.
        let probe = dir.join("direct-io-probe");
        let ok = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_DIRECT)
                .open(&probe)?;
            /// One block, aligned as O_DIRECT wants it.
            #[repr(C, align(4096))]
            struct Block([u8; 4096]);
            let block = Box::new(Block([0; 4096]));
            f.write_all(&block.0)?;
            f.sync_all()
        })()
        .is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

fn cf_options(name: &str, blob: bool, cache: &rocksdb::Cache) -> Options {
    let mut o = Options::default();
    let mut t = rocksdb::BlockBasedOptions::default();
    t.set_block_cache(cache);
    // Index and filter blocks live in the shared cache (bounded) rather
    // than beside it (growing with every table file); level 0's stay
    // pinned there, as they are read on every lookup.
    t.set_cache_index_and_filter_blocks(true);
    t.set_cache_index_and_filter_blocks_with_high_priority(true);
    t.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // A two-level index: a table's index is cut into 4 KiB partitions
    // read through the cache like data blocks, under a small top level
    // pinned there. A whole index is about 1.7 MB for a 100 MB table of
    // views (4 KiB blocks), so with indexes larger than the cache a point
    // read of a cold key reloaded and decompressed one whole (a fresh
    // mapping and its page faults each time): at 40 M messages a merkle
    // comparison's reads spent most of their time doing so.
    t.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    t.set_metadata_block_size(4096);
    t.set_pin_top_level_index_and_filter(true);
    o.set_block_based_table_factory(&t);
    // The log is kept uncompressed: entries are small events, and a damaged
    // byte should be findable by its offset. Views compress well.
    o.set_compression_type(if name == "log" || blob {
        rocksdb::DBCompressionType::None
    } else {
        rocksdb::DBCompressionType::Lz4
    });
    if blob {
        o.set_enable_blob_files(true);
        // Every value goes to blob files, leaving the tables only keys and
        // blob references. Keys are blake3 hashes, so each table compaction
        // rewrites the whole key range; with small bodies kept inline
        // (the 4 KB default), a bulk load rewrote 2.4 GB of them.
        o.set_min_blob_size(0);
        // Blob GC relocates every live value of the oldest blob files in
        // each compaction: for write-once bodies that is a second (and
        // third) copy of all mail during a bulk load, and it reclaims
        // nothing while bodies are never deleted. Off until body
        // collection exists; a forced-threshold GC fits then.
        o.set_enable_blob_gc(false);
        // Fewer, larger flushes (and blob files) during bulk loads.
        o.set_write_buffer_size(128 << 20);
    }
    o
}

impl Wal {
    /// Open (or create) the store at `path`, check what a crash may have
    /// left, and start the writer thread.
    pub fn open(path: impl AsRef<Path>, opts: WalOptions) -> Result<Wal, WalError> {
        let path = path.as_ref().to_path_buf();
        let mut dbo = Options::default();
        dbo.create_if_missing(true);
        dbo.create_missing_column_families(true);
        dbo.set_wal_recovery_mode(match opts.recovery {
            RecoveryMode::TolerateTornTail => DBRecoveryMode::TolerateCorruptedTailRecords,
            RecoveryMode::Strict => DBRecoveryMode::AbsoluteConsistency,
        });
        // Bulk receivers flush bodies themselves: a quarter of the
        // background jobs are flush threads, so two flushes may run at
        // once (one fsyncing while the next writes) beside compaction.
        dbo.set_max_background_jobs(8);
        // Flushes and compactions write their files out a megabyte at a
        // time (sync_file_range) rather than leaving a whole memtable's
        // worth of dirty pages for their final fsync, in front of which
        // the next group's WAL fsync would queue on the same disk.
        dbo.set_bytes_per_sync(1 << 20);
        if opts.direct_flush {
            if direct_io_works(&path) {
                dbo.set_use_direct_io_for_flush_and_compaction(true);
            } else {
                tracing::warn!(dir = %path.display(), "the file system refuses O_DIRECT; flushes go through the page cache");
            }
        }
        dbo.set_paranoid_checks(true);
        let cache = rocksdb::Cache::new_lru_cache(opts.memory.block_cache_bytes);
        let write_buffers = rocksdb::WriteBufferManager::new_write_buffer_manager(opts.memory.write_buffer_bytes, false);
        dbo.set_write_buffer_manager(&write_buffers);
        dbo.set_max_total_wal_size(opts.memory.max_wal_bytes);
        let mut names: Vec<String> = INTERNAL_CFS.iter().map(|s| s.to_string()).collect();
        names.extend(opts.user_cfs.iter().cloned());
        names.extend(opts.blob_cfs.iter().cloned());
        let descs: Vec<ColumnFamilyDescriptor> = names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, cf_options(n, opts.blob_cfs.contains(n), &cache)))
            .collect();
        let db = DB::open_cf_descriptors(&dbo, &path, descs)?;
        let blob_cf = names.iter().map(|n| opts.blob_cfs.contains(n)).collect();
        let shared = Shared {
            db,
            cf_names: names,
            blob_cf,
            local_origin: AtomicU64::new(opts.local_origin.0),
            opts: opts.clone(),
            state: Mutex::new(Committed {
                heads: BTreeMap::new(),
                order_next: 1,
                hlc_last: 0,
            }),
            bases: Mutex::new(BTreeMap::new()),
            prune_lock: Mutex::new(()),
            tail: Condvar::new(),
            poison: Mutex::new(None),
            hooks: Mutex::new(Vec::new()),
            timing_hooks: Mutex::new(Vec::new()),
            stats: Stats::default(),
            #[cfg(feature = "failpoints")]
            fail_writes: AtomicBool::new(false),
            #[cfg(feature = "failpoints")]
            publish_held: (Mutex::new(false), Condvar::new()),
            closed: AtomicBool::new(false),
            cache,
            write_buffers,
            shadow: Mutex::new(None),
            shadow_on: AtomicBool::new(false),
        };
        if let Some(v) = meta_get(&shared, META_ORIGIN)? {
            let stored = <[u8; 8]>::try_from(v.as_slice())
                .map(|b| Origin(u64::from_be_bytes(b)))
                .map_err(|_| WalError::CorruptMeta {
                    key: "origin".into(),
                    reason: "not 8 bytes".into(),
                })?;
            if stored != opts.local_origin {
                // A node that found its own log behind its peers' appends
                // under a successor origin; the store remembers the base.
                let base = meta_get(&shared, META_ORIGIN_BASE)?.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok());
                if base.map(u64::from_be_bytes) != Some(opts.local_origin.0) {
                    return Err(WalError::WrongOrigin {
                        stored,
                        given: opts.local_origin,
                    });
                }
                shared.local_origin.store(stored.0, Ordering::SeqCst);
            }
        }
        let report = crate::recovery::recover(&shared)?;
        *shared.bases.lock().expect("bases lock") = report.bases.clone();
        if let Some(old) = report.upgraded_from {
            tracing::info!(from = old, to = STORE_FORMAT, "store format upgraded in place");
        }
        {
            let mut s = shared.state.lock().expect("state lock");
            s.heads = report.heads.0.keys().map(|o| (*o, (0, GENESIS))).collect();
            for (o, seq) in &report.heads.0 {
                let base = report.bases.get(o).copied().unwrap_or_default();
                if base.seq == *seq && base.seq > 0 {
                    // A base taken from a peer, nothing after it yet.
                    s.heads.insert(*o, (*seq, base.hash));
                    s.hlc_last = s.hlc_last.max(base.hlc);
                    continue;
                }
                let e = read_entry(&shared, *o, *seq)?.ok_or_else(|| WalError::Corrupt {
                    place: Place { origin: *o, seq: *seq },
                    reason: "head entry missing".into(),
                })?;
                s.heads.insert(*o, (*seq, e.hash));
                s.hlc_last = s.hlc_last.max(e.hlc);
            }
            s.order_next = report.order_len + 1;
        }
        // Mark the store open; a clean close removes the mark.
        let mut wo = WriteOptions::default();
        wo.set_sync(opts.sync);
        let mut b = WriteBatch::default();
        b.put_cf(shared.handle(CF_META), META_FORMAT, STORE_FORMAT.to_be_bytes());
        b.put_cf(shared.handle(CF_META), META_DIRTY, [1u8]);
        b.put_cf(shared.handle(CF_META), META_ORIGIN, shared.local_origin().0.to_be_bytes());
        shared.db.write_opt(b, &wo)?;
        let shared = Arc::new(shared);
        let (tx, rx) = mpsc::channel::<Job>();
        let s2 = shared.clone();
        let writer = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer::run(s2, rx))
            .expect("spawn writer thread");
        if report.unclean_shutdown {
            tracing::warn!(heads = ?report.heads, "log was not closed cleanly; recovered to the last durable group");
        }
        Ok(Wal {
            shared,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            path,
            report,
        })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What open found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The origin this node appends as.
    pub fn local_origin(&self) -> Origin {
        self.shared.local_origin()
    }

    /// The origin derived from the node id (equal to [`Wal::local_origin`]
    /// unless the node moved to a successor origin).
    pub fn base_origin(&self) -> Origin {
        self.shared.opts.local_origin
    }

    /// The highest seq of this node's own origin that a peer was seen to
    /// hold with the same hashes, as last recorded (0 if none). A lower
    /// bound: it is written without fsync and a restored data directory
    /// holds an older value, never a higher one.
    pub fn confirmed(&self) -> Result<u64, WalError> {
        let origin = self.local_origin();
        Ok(match meta_get(&self.shared, META_CONFIRMED)? {
            Some(v) if v.len() == 16 && v[..8] == origin.0.to_be_bytes() => u64::from_be_bytes(v[8..].try_into().expect("8 bytes")),
            _ => 0,
        })
    }

    /// Record that a peer holds this node's own origin up to `seq` with the
    /// hashes held here (never above the head; only ever raised).
    pub fn confirm(&self, seq: u64) -> Result<(), WalError> {
        let origin = self.local_origin();
        let seq = seq.min(self.heads().get(origin));
        if seq <= self.confirmed()? {
            return Ok(());
        }
        let mut v = origin.0.to_be_bytes().to_vec();
        v.extend_from_slice(&seq.to_be_bytes());
        self.shared.db.put_cf(self.shared.handle(CF_META), META_CONFIRMED, v)?;
        Ok(())
    }

    /// What each peer acknowledged, as last recorded by
    /// [`Wal::record_peer_ack`]: peer address -> vector. A lower bound of
    /// what the peer holds durably (see there).
    pub fn peer_acks(&self) -> Result<BTreeMap<String, VersionVector>, WalError> {
        let mut out = BTreeMap::new();
        for (k, v) in self.shared.scan_prefix_raw(Cf(CF_META), META_PEER_ACKED)? {
            let peer = String::from_utf8_lossy(&k[META_PEER_ACKED.len()..]).into_owned();
            out.insert(peer.clone(), decode_peer_ack(&peer, &v)?);
        }
        Ok(out)
    }

    /// Record that `peer` acknowledged `acked`: it said it held that much
    /// durably (an acknowledgement, or the vector of a handshake). What is
    /// recorded is never more than the peer said: a raise is written
    /// without fsync (a crash loses it, leaving an older, lower vector); a
    /// vector lower than the recorded one anywhere (the peer holds less
    /// than before: restored from an older copy) is written with fsync
    /// before this returns, so the higher one never comes back. Nothing is
    /// written when the vector is unchanged.
    pub fn record_peer_ack(&self, peer: &str, acked: &VersionVector) -> Result<(), WalError> {
        let key = peer_ack_key(peer);
        let held = match meta_get(&self.shared, &key)? {
            Some(v) => Some(decode_peer_ack(peer, &v)?),
            None => None,
        };
        if held.as_ref() == Some(acked) {
            return Ok(());
        }
        let lowered = held.is_some_and(|h| !acked.dominates(&h));
        let mut v = Vec::with_capacity(acked.0.len() * 16);
        for (o, s) in &acked.0 {
            v.extend_from_slice(&o.0.to_be_bytes());
            v.extend_from_slice(&s.to_be_bytes());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(lowered && self.shared.opts.sync);
        let mut b = WriteBatch::default();
        b.put_cf(self.shared.handle(CF_META), key, v);
        self.shared.db.write_opt(b, &wo)?;
        Ok(())
    }

    /// Lower what is recorded for `peer` to at most `holds` per origin
    /// (with fsync, if anything changes): the peer said at a handshake
    /// that it holds this much. Nothing is recorded when nothing was.
    pub fn lower_peer_ack(&self, peer: &str, holds: &VersionVector) -> Result<(), WalError> {
        let Some(v) = meta_get(&self.shared, &peer_ack_key(peer))? else {
            return Ok(());
        };
        let held = decode_peer_ack(peer, &v)?;
        let lowered = VersionVector(held.0.iter().map(|(o, s)| (*o, (*s).min(holds.get(*o)))).collect());
        self.record_peer_ack(peer, &lowered)
    }

    /// A value the application keeps beside the log, outside any entry
    /// (not replicated, not in segments or backups): `key` lives under a
    /// prefix of its own, apart from the log's meta keys.
    pub fn app_meta(&self, key: &str) -> Result<Option<Vec<u8>>, WalError> {
        meta_get(&self.shared, &app_meta_key(key))
    }

    /// Set an application value ([`Wal::app_meta`]), with fsync (when the
    /// log syncs) before this returns.
    pub fn set_app_meta(&self, key: &str, value: &[u8]) -> Result<(), WalError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.shared.opts.sync);
        let mut b = WriteBatch::default();
        b.put_cf(self.shared.handle(CF_META), app_meta_key(key), value);
        self.shared.db.write_opt(b, &wo)?;
        Ok(())
    }

    /// Forget what `peer` acknowledged (with fsync): its history and this
    /// node's diverged, or it is no longer a peer.
    pub fn forget_peer_ack(&self, peer: &str) -> Result<(), WalError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.shared.opts.sync);
        let mut b = WriteBatch::default();
        b.delete_cf(self.shared.handle(CF_META), peer_ack_key(peer));
        self.shared.db.write_opt(b, &wo)?;
        Ok(())
    }

    /// Handle of a caller column family declared at open.
    pub fn cf(&self, name: &str) -> Result<Cf, WalError> {
        self.shared
            .cf_names
            .iter()
            .position(|n| n == name)
            .filter(|i| *i >= FIRST_USER_CF as usize)
            .map(|i| Cf(i as u8))
            .ok_or_else(|| WalError::UnknownCf(name.to_string()))
    }

    /// Submit a transaction; `done` is called on the writer thread once the
    /// group holding it is durable (or failed). It must not block.
    pub fn submit<R, E, F, D>(&self, f: F, done: D)
    where
        R: Send + 'static,
        E: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<R, E> + Send + 'static,
        D: FnOnce(Result<R, AppendError<E>>) + Send + 'static,
    {
        let job = writer::make_job(f, done);
        let tx = self.tx.lock().expect("tx lock");
        match tx.as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError(job)) = tx.send(job) {
                    fail_job(&self.shared, job, WalError::Closed);
                }
            }
            None => fail_job(&self.shared, job, WalError::Closed),
        }
    }

    /// Run a transaction and wait until it is durable.
    pub fn transact<R, E, F>(&self, f: F) -> Result<R, AppendError<E>>
    where
        R: Send + 'static,
        E: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<R, E> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(f, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(AppendError::Wal(WalError::Closed)))
    }

    /// Append one payload to the local origin and wait until durable.
    pub fn append(&self, payload: Vec<u8>) -> Result<crate::Appended, WalError> {
        self.transact(move |t| Ok::<_, ()>(t.append(payload))).map_err(|e| match e {
            AppendError::Wal(w) => w,
            AppendError::Rejected(()) => unreachable!("the closure never rejects"),
        })
    }

    /// Read a caller key as committed.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, WalError> {
        self.shared.get_raw(cf, key)
    }

    /// Several committed keys at once, in the order given (one batched
    /// lookup: cheaper than a `get` each). `sorted`: the keys ascend.
    pub fn multi_get(&self, cf: Cf, keys: &[Vec<u8>], sorted: bool) -> Result<Vec<Option<Vec<u8>>>, WalError> {
        self.shared.multi_get_raw(cf, keys, sorted)
    }

    /// All committed keys with `prefix`, in key order.
    pub fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<KeyValues, WalError> {
        self.shared.scan_prefix_raw(cf, prefix)
    }

    /// All committed keys with `prefix`, in key order, handed to `f`
    /// without copying them out of RocksDB, until `f` returns false.
    pub fn scan_prefix_each(&self, cf: Cf, prefix: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), WalError> {
        self.shared.scan_each(cf, prefix, prefix, f)
    }

    /// Committed keys with `prefix` from `start` on (`start` begins with
    /// `prefix`), in key order, handed to `f` without a copy until it
    /// returns false.
    pub fn scan_from_each(&self, cf: Cf, prefix: &[u8], start: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), WalError> {
        debug_assert!(start.starts_with(prefix));
        self.shared.scan_each(cf, prefix, start, f)
    }

    /// Committed keys with `prefix` from `start` on (`start` begins with
    /// `prefix`), in key order.
    pub fn scan_from(&self, cf: Cf, prefix: &[u8], start: &[u8]) -> Result<KeyValues, WalError> {
        debug_assert!(start.starts_with(prefix));
        self.shared.scan_from_raw(cf, prefix, start)
    }

    /// Every key of a column family, in key order (audits, digests).
    pub fn scan_all(&self, cf: Cf) -> Result<KeyValues, WalError> {
        self.shared.scan_prefix_raw(cf, &[])
    }

    /// Write a key outside the log and the group commit, without fsync.
    /// Only for derived data that can always be computed again (caches);
    /// never for views, which must change only with their entry.
    pub fn put_derived(&self, cf: Cf, key: &[u8], value: &[u8]) -> Result<(), WalError> {
        assert!(cf.0 >= FIRST_USER_CF);
        self.shared.db.put_cf(self.shared.handle(cf.0), key, value)?;
        Ok(())
    }

    /// Make large values of a blob column family durable outside the group
    /// commit, written once (no WAL; the column family is flushed before
    /// this returns). For content-addressed values whose references are
    /// committed afterwards: it lets a bulk receiver write the next bodies
    /// while the writer commits earlier entries. A failure poisons the
    /// handle like a failed group write.
    pub fn put_flushed(&self, cf: Cf, items: &[(&[u8], &[u8])]) -> Result<(), WalError> {
        assert!(
            cf.0 >= FIRST_USER_CF && self.shared.is_blob_cf(cf.0),
            "put_flushed is for blob column families"
        );
        if let Some(p) = self.shared.poisoned() {
            return Err(WalError::Poisoned(p));
        }
        if items.is_empty() {
            return Ok(());
        }
        // Room for every record up front: appended into a growing buffer,
        // megabytes of bodies would be copied again at each doubling.
        let room: usize = items.iter().map(|(k, v)| k.len() + v.len() + 16).sum();
        let mut b = WriteBatch::with_capacity_bytes(room + 16);
        let mut bytes = 0;
        for (k, v) in items {
            b.put_cf(self.shared.handle(cf.0), k, v);
            bytes += v.len() as u64;
        }
        let r = if self.shared.opts.sync {
            self.shared.write_flushed(b, &[cf.0], bytes)
        } else {
            self.shared.db.write(b).map_err(WalError::from)
        };
        if let Err(e) = &r {
            let msg = e.to_string();
            self.shared.poison(msg.clone());
            tracing::error!(error = %msg, "durable body write failed; the log is poisoned until reopened");
        }
        r
    }

    /// The group size from which bodies bypass RocksDB's WAL.
    pub fn bulk_bytes(&self) -> u64 {
        self.shared.opts.bulk_bytes
    }

    /// Delete every key of the given caller column families (rebuild).
    pub fn clear(&self, cfs: &[Cf]) -> Result<(), WalError> {
        let mut b = WriteBatch::default();
        let mut ranges = Vec::new();
        for cf in cfs {
            assert!(cf.0 >= FIRST_USER_CF);
            let h = self.shared.handle(cf.0);
            let mut it = self.shared.db.raw_iterator_cf(h);
            it.seek_to_first();
            let first = it.key().map(<[u8]>::to_vec);
            it.seek_to_last();
            let last = it.key().map(<[u8]>::to_vec);
            it.status()?;
            // One range deletion from the first key to just past the last,
            // instead of a deletion per key.
            if let (Some(first), Some(mut end)) = (first, last) {
                end.push(0);
                b.delete_range_cf(h, &first, &end);
                ranges.push((cf.0, first, end));
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.shared.opts.sync);
        self.shared.db.write_opt(b, &wo)?;
        // Table files wholly inside the deleted range are dropped as they
        // are (below level 0), so the compaction below does not read the
        // old views key by key only to drop them (8 % of a rebuild's
        // instructions did).
        for (cf, first, end) in &ranges {
            self.shared.db.delete_file_in_range_cf(self.shared.handle(*cf), first, end)?;
        }
        // Compact the deletions away: otherwise every later seek and scan
        // of these column families steps over the deleted keys (a rebuild
        // ran at under 1,000 entries/s doing so).
        for cf in cfs {
            let h = self.shared.handle(cf.0);
            self.shared.db.flush_cf(h)?;
            self.shared.db.compact_range_cf(h, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Hold the caller column family `cf`, which must be empty, in memory
    /// until [`Wal::shadow_end`] (see `shadow.rs`): transactions read and
    /// write it there, up to `budget` bytes, after which it is written out
    /// and used through RocksDB again. For an offline rebuild only: nothing
    /// outside transactions sees the column family's content until the end.
    pub fn shadow_begin(&self, cf: Cf, budget: usize) -> Result<(), WalError> {
        self.check_shadowable(cf)?;
        self.hold_shadow(Shadow::new(cf.0, budget));
        Ok(())
    }

    fn hold_shadow(&self, s: Shadow) {
        *self.shared.shadow.lock().expect("shadow lock") = Some(s);
        self.shared.shadow_on.store(true, Ordering::Release);
    }

    /// [`Wal::shadow_begin`] over a column family that is not empty, for
    /// a store written in parts that do not share keys (a generator's
    /// users, say): the keys under `shared` (the parts' common keys) are
    /// read into the shadow first. The caller promises the rest: outside
    /// `shared`, what its transactions read or write is not in the column
    /// family (a key the shadow lacks is taken to be absent), and nothing
    /// it deletes is there either (a delete only leaves the shadow).
    pub fn shadow_begin_over(&self, cf: Cf, budget: usize, shared: &[&[u8]]) -> Result<(), WalError> {
        self.assert_shadowable(cf);
        let mut s = Shadow::new(cf.0, budget);
        for prefix in shared {
            for (k, v) in self.scan_prefix(cf, prefix)? {
                s.put_owned(k, v);
            }
        }
        self.hold_shadow(s);
        Ok(())
    }

    /// A shadow for the caller to hold, read and write itself (see
    /// `shadow.rs`): the content of the caller column family `cf` computed
    /// from nothing, written out with [`Wal::shadow_write`] once `cf` was
    /// cleared ([`Wal::clear`]). For an offline rebuild that writes nothing
    /// but `cf`; transactions do not see it, and it reads nothing of `cf`,
    /// so it may be filled before or while `cf` is cleared.
    pub fn shadow_detached(&self, cf: Cf, budget: usize) -> Shadow {
        self.assert_shadowable(cf);
        Shadow::new(cf.0, budget)
    }

    /// Write a shadow from [`Wal::shadow_detached`] into its column family
    /// as sorted tables of bounded size, and flush: durable when this
    /// returns. Keys the shadow holds replace those of the column family
    /// (which the caller cleared first).
    pub fn shadow_write(&self, shadow: &Shadow) -> Result<(), WalError> {
        self.shared.write_shadow(shadow)
    }

    fn assert_shadowable(&self, cf: Cf) {
        assert!(
            cf.0 >= FIRST_USER_CF && !self.shared.is_blob_cf(cf.0),
            "shadows hold small caller values"
        );
    }

    fn check_shadowable(&self, cf: Cf) -> Result<(), WalError> {
        self.assert_shadowable(cf);
        if let Some(item) = self.shared.db.iterator_cf(self.shared.handle(cf.0), IteratorMode::Start).next() {
            let (k, _) = item?;
            return Err(WalError::CorruptMeta {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "a shadow needs an empty column family".into(),
            });
        }
        Ok(())
    }

    /// End a shadow: its content is written into the column family as
    /// sorted tables of bounded size and flushed, durable when this returns. Call it when no
    /// transaction runs. Nothing to do if the shadow already ended because
    /// it outgrew its budget.
    pub fn shadow_end(&self) -> Result<(), WalError> {
        let s = self.shared.shadow.lock().expect("shadow lock").take();
        self.shared.shadow_on.store(false, Ordering::Release);
        match s {
            Some(s) => self.shared.write_shadow(&s),
            None => Ok(()),
        }
    }

    /// One entry, if held.
    pub fn entry(&self, origin: Origin, seq: u64) -> Result<Option<Entry>, WalError> {
        read_entry(&self.shared, origin, seq)
    }

    /// Entries `from..=to` of `origin` (at most `max`), in seq order.
    pub fn read_range(&self, origin: Origin, from: u64, to: u64, max: usize) -> Result<Vec<Entry>, WalError> {
        read_range(&self.shared, origin, from, to, max)
    }

    /// Entries in this node's apply order from position `from` (at most `max`),
    /// up to the last committed position: a group the writer has written but
    /// not yet published (its heads not raised) is not read, so nothing read
    /// here is ahead of [`Wal::heads`]. A peer that got an entry of this node's
    /// origin before this node's heads held it would send it back as a copy
    /// that looks forged (`OwnOrigin` on the mirror link).
    pub fn read_order(&self, from: u64, max: usize) -> Result<Vec<(u64, Entry)>, WalError> {
        let last = self.last_order();
        // The positions first, then their entries in one batched read
        // (cheaper than a lookup per entry on long walks: rebuilds, a new
        // peer's first pass).
        let mut named = Vec::new();
        let h = self.shared.handle(CF_ORDER);
        for item in self
            .shared
            .db
            .iterator_cf(h, IteratorMode::From(&from.max(1).to_be_bytes(), Direction::Forward))
        {
            if named.len() >= max {
                break;
            }
            let (k, v) = item?;
            let n = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| WalError::CorruptMeta {
                key: "order".into(),
                reason: "key is not 8 bytes".into(),
            })?);
            if n > last {
                break;
            }
            let (o, s) = parse_log_key(&v).ok_or_else(|| WalError::CorruptMeta {
                key: format!("order {n}"),
                reason: "value is not a log key".into(),
            })?;
            named.push((n, o, s));
        }
        // Each origin's entries come in seq order in the apply order, so
        // each is read with one forward iterator over its log, stepped to
        // the next key, instead of a lookup per entry (a rebuild spent a
        // tenth of its time in batched point reads).
        let mut walks: Vec<(Origin, rocksdb::DBRawIterator<'_>)> = Vec::new();
        let mut out = Vec::with_capacity(named.len());
        for (n, o, s) in named {
            let place = || Place { origin: o, seq: s };
            let key = log_key(o, s);
            let i = match walks.iter().position(|(w, _)| *w == o) {
                Some(i) => i,
                None => {
                    let mut it = self.shared.db.raw_iterator_cf(self.shared.handle(CF_LOG));
                    it.seek(key);
                    walks.push((o, it));
                    walks.len() - 1
                }
            };
            let it = &mut walks[i].1;
            // Step once (the usual case); else seek, also when the walk ran
            // off the end or stands past the key (a pruned entry skipped).
            if !(it.valid() && it.key() == Some(&key[..])) {
                if it.valid() {
                    it.next();
                }
                if !(it.valid() && it.key() == Some(&key[..])) {
                    it.seek(key);
                }
            }
            if let Err(e) = it.status() {
                if e.kind() == rocksdb::ErrorKind::Corruption {
                    return Err(WalError::Corrupt {
                        place: place(),
                        reason: e.to_string(),
                    });
                }
                return Err(e.into());
            }
            let v = it.key().filter(|k| *k == &key[..]).and(it.value());
            let Some(v) = v else {
                // Pruned after this walk began (its position goes with it).
                if s <= self.shared.base(o).seq {
                    continue;
                }
                return Err(WalError::Corrupt {
                    place: place(),
                    reason: format!("apply order position {n} names a missing entry"),
                });
            };
            let e = Entry::decode_value(o, s, v).map_err(|reason| WalError::Corrupt { place: place(), reason })?;
            out.push((n, e));
        }
        Ok(out)
    }

    /// `{origin: last seq}` of what this node holds.
    pub fn heads(&self) -> VersionVector {
        let s = self.shared.state.lock().expect("state lock");
        VersionVector(s.heads.iter().map(|(o, (seq, _))| (*o, *seq)).collect())
    }

    /// The chain hash at the head of `origin`.
    pub fn head_hash(&self, origin: Origin) -> Option<(u64, Hash)> {
        self.shared.committed_head(origin)
    }

    /// Position of the last applied entry in this node's apply order.
    pub fn last_order(&self) -> u64 {
        self.shared.state.lock().expect("state lock").order_next - 1
    }

    /// Block until the apply order passes `order` or `timeout` elapses.
    /// Returns the last order position.
    pub fn wait_for_order(&self, order: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.state.lock().expect("state lock");
        while s.order_next - 1 < order {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = self.shared.tail.wait_timeout(s, deadline - now).expect("state lock").0;
        }
        s.order_next - 1
    }

    /// Call `hook` on the writer thread with the timing of every durable
    /// group (one fsync). It must not block: it runs before the next group.
    pub fn on_group_timing(&self, hook: impl Fn(&GroupTiming) + Send + Sync + 'static) {
        self.shared.timing_hooks.lock().expect("hooks lock").push(Box::new(hook));
    }

    /// Call `hook(last_order)` on the writer thread after every durable group
    /// that appended entries. It must not block.
    pub fn on_commit(&self, hook: impl Fn(u64) + Send + Sync + 'static) {
        self.shared.hooks.lock().expect("hooks lock").push(Box::new(hook));
    }

    /// Verify the chain of `origin` over `from..=to` (clamped to the head).
    /// Returns the number of entries checked. Asking for pruned history is
    /// [`WalError::Pruned`]; [`Wal::verify_all`] starts at each base.
    pub fn verify(&self, origin: Origin, from: u64, to: u64) -> Result<u64, WalError> {
        let base = self.shared.base(origin);
        if from <= base.seq && to > 0 {
            return Err(prune::pruned(origin, from.max(1), base.seq));
        }
        crate::recovery::verify_range(&self.shared, origin, from.max(1), to)
    }

    /// Verify every origin's whole held chain: from its base (the genesis
    /// hash, or the hash of the last pruned entry) to its head.
    pub fn verify_all(&self) -> Result<u64, WalError> {
        let mut n = 0;
        for (o, s) in self.heads().0 {
            n += self.verify(o, self.shared.base(o).seq + 1, s)?;
        }
        Ok(n)
    }

    /// Where `origin`'s held log starts: the last pruned entry (seq 0 and
    /// the genesis hash when nothing was pruned).
    pub fn base(&self, origin: Origin) -> Base {
        self.shared.base(origin)
    }

    /// Every origin with pruned history and its base.
    pub fn bases(&self) -> BTreeMap<Origin, Base> {
        self.shared.bases.lock().expect("bases lock").clone()
    }

    /// `{origin: base seq}` for every origin with pruned history: a peer
    /// holding less of an origin than this cannot be caught up from here.
    pub fn pruned_vector(&self) -> VersionVector {
        VersionVector(self.bases().iter().map(|(o, b)| (*o, b.seq)).collect())
    }

    /// Drop the oldest entries that `limits` allow, walking the apply order
    /// from its start (see `crate::prune`): at most `limits.max_entries`,
    /// in one synced batch with the new base records. Views and bodies are
    /// not touched.
    pub fn prune(&self, limits: &PruneLimits) -> Result<PruneReport, WalError> {
        if let Some(p) = self.shared.poisoned() {
            return Err(WalError::Poisoned(p));
        }
        let _one = self.shared.prune_lock.lock().expect("prune lock");
        let heads: BTreeMap<Origin, u64> = self.heads().0;
        let mut report = PruneReport::default();
        let mut drops: Vec<prune::Drop> = Vec::new();
        let mut stale: Vec<u64> = Vec::new();
        let mut next_seq: BTreeMap<Origin, u64> = BTreeMap::new();
        let sh = &self.shared;
        // Origins with an entry held (one whose head is a base taken from a
        // peer has none, and no position to find).
        let held = heads.iter().filter(|(o, s)| **s > sh.base(**o).seq).count();
        for item in sh.db.iterator_cf(sh.handle(CF_ORDER), IteratorMode::Start) {
            if report.kept.len() >= held {
                break;
            }
            let (k, v) = item?;
            let pos = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| WalError::CorruptMeta {
                key: "order".into(),
                reason: "key is not 8 bytes".into(),
            })?);
            let (o, s) = prune::order_value(pos, &v)?;
            if report.kept.contains_key(&o) {
                continue;
            }
            let base = sh.base(o);
            let expect = *next_seq.entry(o).or_insert(base.seq + 1);
            if s < expect {
                // A position left behind by an earlier prune.
                stale.push(pos);
                continue;
            }
            if s != expect {
                return Err(WalError::Corrupt {
                    place: Place { origin: o, seq: expect },
                    reason: format!("apply order position {pos} names seq {s} before seq {expect}"),
                });
            }
            let head = heads.get(&o).copied().unwrap_or(0);
            if drops.len() >= limits.max_entries.max(1) {
                report.kept.insert(o, (s, Kept::Batch));
                break;
            }
            let e = read_entry(sh, o, s)?.ok_or_else(|| WalError::Corrupt {
                place: Place { origin: o, seq: s },
                reason: format!("apply order position {pos} names a missing entry"),
            })?;
            if let Some(why) = prune::keeps(limits, pos, s, e.hlc, head, o) {
                report.kept.insert(o, (s, why));
                continue;
            }
            next_seq.insert(o, s + 1);
            drops.push(prune::Drop {
                pos,
                origin: o,
                seq: s,
                hash: e.hash,
                hlc: e.hlc,
            });
        }
        let mut new_bases: BTreeMap<Origin, Base> = BTreeMap::new();
        for d in &drops {
            new_bases.insert(
                d.origin,
                Base {
                    seq: d.seq,
                    hash: d.hash,
                    hlc: d.hlc,
                    adopted: sh.base(d.origin).adopted,
                },
            );
        }
        if drops.is_empty() && stale.is_empty() {
            report.bases = self.bases();
            return Ok(report);
        }
        let mut b = WriteBatch::default();
        for d in &drops {
            b.delete_cf(sh.handle(CF_LOG), log_key(d.origin, d.seq));
            b.delete_cf(sh.handle(CF_ORDER), d.pos.to_be_bytes());
        }
        for pos in &stale {
            b.delete_cf(sh.handle(CF_ORDER), pos.to_be_bytes());
        }
        for (o, base) in &new_bases {
            b.put_cf(sh.handle(CF_META), prune::meta_base_key(*o), base.encode());
        }
        // Readers that find an entry gone must find the base past it.
        sh.bases.lock().expect("bases lock").extend(new_bases.iter().map(|(o, b)| (*o, *b)));
        let mut wo = WriteOptions::default();
        wo.set_sync(sh.opts.sync);
        if let Err(e) = sh.db.write_opt(b, &wo) {
            let msg = e.to_string();
            sh.poison(msg.clone());
            tracing::error!(error = %msg, "prune write failed; the log is poisoned until reopened");
            return Err(WalError::Poisoned(msg));
        }
        sh.stats.pruned.fetch_add(drops.len() as u64, Ordering::Relaxed);
        // Compact the dropped front away, so later walks and seeks do not
        // step over its tombstones.
        if let Some(last) = drops.iter().map(|d| d.pos).chain(stale.iter().copied()).max() {
            sh.db
                .compact_range_cf(sh.handle(CF_ORDER), None::<&[u8]>, Some(&(last + 1).to_be_bytes()[..]));
        }
        for (o, base) in &new_bases {
            sh.db
                .compact_range_cf(sh.handle(CF_LOG), Some(&log_key(*o, 0)[..]), Some(&prune::first_key(*o, base)[..]));
        }
        report.pruned = drops.len() as u64;
        report.stale_positions = stale.len() as u64;
        report.bases = self.bases();
        Ok(report)
    }

    /// Take a peer's base record for `origin` as this log's start: for a
    /// node joined by trees (its views already hold the state the peer's
    /// pruned entries made) whose log of `origin` is behind the peer's base,
    /// so that the peer's entries after the base chain here. The entries
    /// held of `origin` are dropped (their apply-order positions are left
    /// and skipped); its head becomes the base. Returns false, changing
    /// nothing, when this log already holds `origin` up to the base.
    /// Refused for this node's own origin.
    pub fn adopt_base(&self, origin: Origin, base: Base) -> Result<bool, WalError> {
        if origin == self.local_origin() {
            return Err(WalError::Discontinuous {
                place: Place { origin, seq: base.seq },
                reason: "a node never takes a base of its own origin from a peer".into(),
            });
        }
        let _one = self.shared.prune_lock.lock().expect("prune lock");
        let held = self.shared.base(origin);
        if self.heads().get(origin) >= base.seq {
            return Ok(false);
        }
        // Raised first, as a prune does: a reader that finds the held
        // entries gone finds the base past them.
        let raised = Base {
            adopted: held.adopted,
            ..base
        };
        self.shared.bases.lock().expect("bases lock").insert(origin, raised);
        let r = self.transact(move |t| t.adopt_base(origin, held, base)).map_err(|e| match e {
            AppendError::Wal(w) | AppendError::Rejected(w) => w,
        });
        let mut bases = self.shared.bases.lock().expect("bases lock");
        match &r {
            Ok(Some(b)) => {
                bases.insert(origin, *b);
            }
            _ if held.seq == 0 => {
                bases.remove(&origin);
            }
            _ => {
                bases.insert(origin, held);
            }
        }
        Ok(r?.is_some())
    }

    /// Write the store's format record as `format` (compatibility tests:
    /// a format-1 store is one without base records and this record at 1).
    #[cfg(feature = "failpoints")]
    pub fn set_format_for_test(&self, format: u32) -> Result<(), WalError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let mut b = WriteBatch::default();
        b.put_cf(self.shared.handle(CF_META), META_FORMAT, format.to_be_bytes());
        self.shared.db.write_opt(b, &wo)?;
        Ok(())
    }

    /// The store format recorded on disk.
    pub fn stored_format(&self) -> Result<Option<u32>, WalError> {
        Ok(meta_get(&self.shared, META_FORMAT)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map(u32::from_be_bytes))
    }

    /// Counters.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.shared.stats;
        StatsSnapshot {
            entries: s.entries.load(Ordering::Relaxed),
            groups: s.groups.load(Ordering::Relaxed),
            jobs: s.jobs.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            max_group_jobs: s.max_group_jobs.load(Ordering::Relaxed),
            panics: s.panics.load(Ordering::Relaxed),
            bulk_flushes: s.bulk_flushes.load(Ordering::Relaxed),
            bulk_bytes: s.bulk_bytes.load(Ordering::Relaxed),
            pruned: s.pruned.load(Ordering::Relaxed),
        }
    }

    /// Bytes of RocksDB's WAL files.
    fn wal_files_bytes(&self) -> u64 {
        std::fs::read_dir(&self.path)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// What the store takes on disk now, by column family.
    pub fn disk(&self) -> DiskUsage {
        let s = &self.shared;
        let prop = |cf: &rocksdb::ColumnFamily, name: &str| s.db.property_int_value_cf(cf, name).ok().flatten().unwrap_or(0);
        let column_families = s
            .cf_names
            .iter()
            .filter_map(|n| {
                let cf = s.db.cf_handle(n)?;
                Some(CfDisk {
                    name: n.clone(),
                    table_bytes: prop(cf, "rocksdb.total-sst-files-size"),
                    blob_bytes: prop(cf, "rocksdb.total-blob-file-size"),
                })
            })
            .collect();
        DiskUsage {
            column_families,
            wal_files_bytes: self.wal_files_bytes(),
        }
    }

    /// Memory RocksDB holds now (block cache, memtables) and the size of
    /// its WAL files, against the budget it was opened with.
    pub fn memory(&self) -> MemorySnapshot {
        let s = &self.shared;
        let wal_files_bytes = self.wal_files_bytes();
        MemorySnapshot {
            block_cache_bytes: s.cache.get_usage() as u64,
            block_cache_capacity: s.opts.memory.block_cache_bytes as u64,
            block_cache_pinned_bytes: s.cache.get_pinned_usage() as u64,
            memtable_bytes: s.write_buffers.get_usage() as u64,
            write_buffer_budget: s.opts.memory.write_buffer_bytes as u64,
            wal_files_bytes,
            max_wal_bytes: s.opts.memory.max_wal_bytes,
        }
    }

    /// The reason the log refuses writes, if an earlier write failed.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poisoned()
    }

    /// While `on`, hold the writer between a group's durable write and its
    /// publication (heads and apply order raised, callers answered), so a
    /// test can read the store in that window. Turning it off lets the
    /// writer go on.
    #[cfg(feature = "failpoints")]
    pub fn hold_publish(&self, on: bool) {
        let (held, cv) = &self.shared.publish_held;
        *held.lock().expect("publish lock") = on;
        cv.notify_all();
    }

    /// Make every later durable write fail, as a failed fsync would.
    #[cfg(feature = "failpoints")]
    pub fn inject_write_failure(&self, on: bool) {
        self.shared.fail_writes.store(on, Ordering::SeqCst);
    }

    /// Overwrite a stored entry's bytes (corruption tests only).
    #[cfg(feature = "failpoints")]
    pub fn put_raw_entry(&self, origin: Origin, seq: u64, value: &[u8]) -> Result<(), WalError> {
        self.shared.db.put_cf(self.shared.handle(CF_LOG), log_key(origin, seq), value)?;
        Ok(())
    }

    /// The stored bytes of an entry.
    pub fn raw_entry(&self, origin: Origin, seq: u64) -> Result<Option<Vec<u8>>, WalError> {
        Ok(self.shared.db.get_cf(self.shared.handle(CF_LOG), log_key(origin, seq))?)
    }

    /// Flush every column family's memtable to SST files.
    pub fn flush_all(&self) -> Result<(), WalError> {
        for n in &self.shared.cf_names {
            if let Some(h) = self.shared.db.cf_handle(n) {
                self.shared.db.flush_cf(h)?;
            }
        }
        Ok(())
    }

    /// Flush, then compact every column family's whole key range into the
    /// last level, rewriting every table file with the current table
    /// options (offline maintenance and benchmarks: it reads and writes
    /// the whole store).
    pub fn compact_all(&self) -> Result<(), WalError> {
        self.flush_all()?;
        let mut o = rocksdb::CompactOptions::default();
        o.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        for n in &self.shared.cf_names {
            if let Some(h) = self.shared.db.cf_handle(n) {
                self.shared.db.compact_range_cf_opt(h, None::<&[u8]>, None::<&[u8]>, &o);
            }
        }
        Ok(())
    }

    /// Stop the writer after the jobs already submitted, mark the store
    /// closed cleanly and flush every memtable to table files. Later
    /// submissions fail with `Closed`.
    pub fn close(&self) -> Result<(), WalError> {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        drop(self.tx.lock().expect("tx lock").take());
        if let Some(w) = self.writer.lock().expect("writer lock").take() {
            let _ = w.join();
        }
        if self.shared.poisoned().is_some() {
            return Ok(());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let mut b = WriteBatch::default();
        b.delete_cf(self.shared.handle(CF_META), META_DIRTY);
        self.shared.db.write_opt(b, &wo)?;
        // The memtables go to table files now, so the next open replays no
        // RocksDB write-ahead log (a restart after a busy run took 0.2 s
        // more for that) and no log file outlives a clean stop.
        self.flush_all()?;
        self.shared.db.flush_wal(true)?;
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "closing the log failed");
        }
    }
}

fn fail_job(shared: &Shared, job: Job, err: WalError) {
    let (order_next, hlc_last) = shared.group_start();
    let mut group = crate::writer::Group::empty(order_next, hlc_last);
    let mut txn = Txn::detached(shared, &mut group);
    let (_, fin) = job(&mut txn);
    fin(Err(err));
}

pub(crate) fn read_entry(shared: &Shared, origin: Origin, seq: u64) -> Result<Option<Entry>, WalError> {
    match shared.db.get_cf(shared.handle(CF_LOG), log_key(origin, seq)) {
        Ok(Some(v)) => Entry::decode_value(origin, seq, &v).map(Some).map_err(|reason| WalError::Corrupt {
            place: Place { origin, seq },
            reason,
        }),
        Ok(None) => Ok(None),
        Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => Err(WalError::Corrupt {
            place: Place { origin, seq },
            reason: e.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

// `expect` is the seq the next key must have, not a mere counter.
#[allow(clippy::explicit_counter_loop)]
pub(crate) fn read_range(shared: &Shared, origin: Origin, from: u64, to: u64, max: usize) -> Result<Vec<Entry>, WalError> {
    let mut out = Vec::new();
    if from > to {
        return Ok(out);
    }
    let base = shared.base(origin).seq;
    if from <= base {
        return Err(prune::pruned(origin, from, base));
    }
    let start = log_key(origin, from);
    let mut expect = from;
    for item in shared
        .db
        .iterator_cf(shared.handle(CF_LOG), IteratorMode::From(&start, Direction::Forward))
    {
        if out.len() >= max || expect > to {
            break;
        }
        let (k, v) = match item {
            Ok(kv) => kv,
            Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => {
                return Err(WalError::Corrupt {
                    place: Place { origin, seq: expect },
                    reason: e.to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let Some((o, s)) = parse_log_key(&k) else {
            return Err(WalError::Corrupt {
                place: Place { origin, seq: expect },
                reason: "malformed log key".into(),
            });
        };
        if o != origin {
            break;
        }
        if s != expect {
            // Pruned while this read ran (the base is raised first).
            let base = shared.base(origin).seq;
            if expect <= base {
                return Err(prune::pruned(origin, expect, base));
            }
            return Err(WalError::Corrupt {
                place: Place { origin, seq: expect },
                reason: format!("gap: next stored seq is {s}"),
            });
        }
        let e = Entry::decode_value(o, s, &v).map_err(|reason| WalError::Corrupt {
            place: Place { origin, seq: s },
            reason,
        })?;
        out.push(e);
        expect += 1;
    }
    Ok(out)
}

pub(crate) fn iter_origins(shared: &Shared) -> Result<Vec<(Origin, u64, u64)>, WalError> {
    // (origin, first stored seq, last stored seq) for every origin present
    // in the log CF.
    let mut out = Vec::new();
    let h = shared.handle(CF_LOG);
    let mut next: Option<u64> = Some(0);
    while let Some(o) = next {
        let start = log_key(Origin(o), 0);
        let mut it = shared.db.iterator_cf(h, IteratorMode::From(&start, Direction::Forward));
        let Some(item) = it.next() else { break };
        let (k, _) = item?;
        let Some((origin, first)) = parse_log_key(&k) else {
            return Err(WalError::CorruptMeta {
                key: "log".into(),
                reason: "malformed log key".into(),
            });
        };
        let end = log_key(origin, u64::MAX);
        let mut rit = shared.db.iterator_cf(h, IteratorMode::From(&end, Direction::Reverse));
        let last = match rit.next() {
            Some(item) => {
                let (k, _) = item?;
                parse_log_key(&k).map(|(_, s)| s).unwrap_or(0)
            }
            None => 0,
        };
        out.push((origin, first, last));
        next = origin.0.checked_add(1);
    }
    Ok(out)
}

fn peer_ack_key(peer: &str) -> Vec<u8> {
    let mut k = META_PEER_ACKED.to_vec();
    k.extend_from_slice(peer.as_bytes());
    k
}

fn decode_peer_ack(peer: &str, v: &[u8]) -> Result<VersionVector, WalError> {
    if !v.len().is_multiple_of(16) {
        return Err(WalError::CorruptMeta {
            key: format!("peer_acked {peer}"),
            reason: format!("value is {} bytes, not a multiple of 16", v.len()),
        });
    }
    Ok(VersionVector(
        v.chunks_exact(16)
            .map(|c| {
                (
                    Origin(u64::from_be_bytes(c[..8].try_into().expect("8 bytes"))),
                    u64::from_be_bytes(c[8..].try_into().expect("8 bytes")),
                )
            })
            .collect(),
    ))
}

/// Key prefix of the application's values ([`Wal::app_meta`]).
const META_APP: &[u8] = b"app/";

fn app_meta_key(key: &str) -> Vec<u8> {
    [META_APP, key.as_bytes()].concat()
}

pub(crate) fn meta_get(shared: &Shared, key: &[u8]) -> Result<Option<Vec<u8>>, WalError> {
    Ok(shared.db.get_cf(shared.handle(CF_META), key)?)
}

pub(crate) fn meta_bases(shared: &Shared) -> Result<BTreeMap<Origin, Base>, WalError> {
    let mut out = BTreeMap::new();
    for (k, v) in shared.scan_prefix_raw(Cf(CF_META), prune::META_BASE_PREFIX)? {
        if k.len() != 12 {
            return Err(WalError::CorruptMeta {
                key: format!("{:?}", k),
                reason: "base record key has the wrong length".into(),
            });
        }
        let o = Origin(u64::from_be_bytes(k[4..12].try_into().expect("8 bytes")));
        out.insert(o, Base::decode(o, &v)?);
    }
    Ok(out)
}

pub(crate) fn meta_heads(shared: &Shared) -> Result<BTreeMap<Origin, (u64, Hash)>, WalError> {
    let mut out = BTreeMap::new();
    for (k, v) in shared.scan_prefix_raw(Cf(CF_META), b"head")? {
        if k.len() != 12 || v.len() != 40 {
            return Err(WalError::CorruptMeta {
                key: format!("{:?}", k),
                reason: "head record has the wrong length".into(),
            });
        }
        let o = Origin(u64::from_be_bytes(k[4..12].try_into().expect("8 bytes")));
        let s = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
        let mut h = [0u8; 32];
        h.copy_from_slice(&v[8..]);
        out.insert(o, (s, h));
    }
    Ok(out)
}

pub(crate) fn last_order_key(shared: &Shared) -> Result<u64, WalError> {
    let h = shared.handle(CF_ORDER);
    let mut it = shared.db.iterator_cf(h, IteratorMode::End);
    match it.next() {
        Some(item) => {
            let (k, _) = item?;
            Ok(u64::from_be_bytes(k.as_ref().try_into().map_err(|_| WalError::CorruptMeta {
                key: "order".into(),
                reason: "key is not 8 bytes".into(),
            })?))
        }
        None => Ok(0),
    }
}

pub(crate) const META_DIRTY_KEY: &[u8] = META_DIRTY;
pub(crate) const META_FORMAT_KEY: &[u8] = META_FORMAT;
