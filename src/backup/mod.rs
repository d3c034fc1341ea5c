//! Backups: the node's log exported into a write-once [`target::Target`],
//! one run object per backup run holding the run's new bodies
//! (content-addressed: each written once, ever), a sealed, self-verifying
//! segment per origin, and the run's manifest with the bodies' index.
//!
//! # Layout
//! - [`target`]: write-once object stores (a directory), retries and
//!   fault injection.
//! - [`s3`]: an S3-compatible bucket as a target.
//! - [`layout`]: object names, marker, run objects and manifests; the
//!   manifest chain check.
//! - [`export`]: one backup run (one run object, streamed from the log).
//! - [`restore`]: read a backup back, verifying as it goes, into a store.
//! - [`retention`]: bases, leases and prune.
//! - [`pitr`]: a user's or a folder's past state back into new folders of
//!   the running node, from its own log.
//! - [`Backups`]: the daemon's backup jobs (`[backup] to`, `tandem backup`)
//!   and their status.
//!
//! The byte layout is in `docs/format.md` ("Backups").

pub mod export;
pub mod layout;
pub mod pitr;
pub mod restore;
pub mod retention;
pub mod s3;
pub mod target;

use export::{Position, RunReport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use target::{DirTarget, Target};

/// Whether `to` names an S3 target (`s3://bucket/prefix`) rather than a
/// directory.
pub fn is_s3(to: &Path) -> bool {
    to.to_str().is_some_and(|s| s.starts_with("s3://"))
}

/// The target `to` names: `s3://bucket/prefix` (reached with `s3`), else a
/// directory.
pub fn open_target(to: &Path, s3: &s3::S3Settings) -> std::io::Result<Arc<dyn Target>> {
    if is_s3(to) {
        Ok(Arc::new(s3::S3Target::new(to.to_str().expect("checked by is_s3"), s3)?))
    } else {
        Ok(Arc::new(DirTarget::new(to)?))
    }
}
use wal::{Place, SegmentError, WalError};

/// Why a backup or a restore failed. Every variant names the object.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup object {object}: {source}")]
    Io { object: String, source: std::io::Error },
    #[error("backup object {object} is corrupt: {reason}")]
    Corrupt { object: String, reason: String },
    #[error("backup object {object} is missing: {what}")]
    Missing { object: String, what: String },
    #[error("backup object {object}: {source}")]
    Segment { object: String, source: SegmentError },
    #[error("body object {object} (referenced by {place}): {reason}")]
    Body { object: String, place: Place, reason: String },
    #[error("pack {object}: body {hash} at byte offset {offset} ({len} bytes, referenced by {place}): {reason}")]
    PackBody {
        object: String,
        hash: String,
        offset: u64,
        len: u64,
        place: Place,
        reason: String,
    },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("applying the entry at {place}: {reason}")]
    Apply { place: Place, reason: String },
    #[error("{0}")]
    Usage(String),
}

impl BackupError {
    pub fn io(object: &str, source: std::io::Error) -> BackupError {
        if source.kind() == std::io::ErrorKind::NotFound {
            return BackupError::Missing {
                object: object.to_string(),
                what: source.to_string(),
            };
        }
        BackupError::Io {
            object: object.to_string(),
            source,
        }
    }
}

/// Most apply-order positions in one manifest.
pub const MAX_RUN_ENTRIES: u64 = 65_536;

/// How one backup target stands, for `tandem status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupStatus {
    pub target: String,
    /// Runs inside the daemon (`[backup] to`) rather than on request.
    pub continuous: bool,
    /// Last manifest written (0: none).
    pub manifest: u64,
    /// Last apply-order position that is durable in the backup.
    pub position: u64,
    /// The node's apply order now.
    pub apply_order: u64,
    /// Entries applied here and not yet in the backup.
    pub lag_entries: u64,
    /// Age of the oldest entry not yet in the backup (0 when caught up).
    pub lag_secs: f64,
    pub runs: u64,
    pub entries: u64,
    pub segments: u64,
    pub segment_bytes: u64,
    /// Bodies written (into run objects) and their bytes.
    pub bodies: u64,
    pub body_bytes: u64,
    /// Pack objects written (format 2 only; format 3 writes none).
    #[serde(default)]
    pub packs: u64,
    /// Objects written into the target (format 3: one per run).
    #[serde(default)]
    pub objects: u64,
    /// When the last run finished (ms since the epoch).
    pub last_run_ms: u64,
    pub failures: u64,
    /// Requests to the target that failed and were tried again.
    #[serde(default)]
    pub retries: u64,
    pub last_error: Option<String>,
}

struct Job {
    target: Arc<dyn Target>,
    /// Loaded on first use; kept across runs.
    pos: Mutex<Option<Position>>,
    status: Mutex<BackupStatus>,
    /// One-shot runs waiting for `pos`: an open streamed run closes at
    /// once for them instead of at its deadline.
    wanted: std::sync::atomic::AtomicUsize,
}

/// The daemon's backup jobs, one per target.
#[derive(Default)]
pub struct Backups {
    jobs: Mutex<BTreeMap<PathBuf, Arc<Job>>>,
    /// How S3 targets are reached (`[backup]` endpoint, region, credentials).
    s3: s3::S3Settings,
    /// A run ends once its new bodies reach this many bytes (0: the
    /// default, [`export::RUN_MAX_BODY_BYTES`]).
    run_max_body_bytes: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Backups {
    /// Jobs reaching S3 targets with `s3`.
    pub fn new(s3: s3::S3Settings) -> Backups {
        Backups {
            jobs: Mutex::default(),
            s3,
            run_max_body_bytes: 0,
        }
    }

    /// End each run once its new bodies reach `bytes` (smaller run
    /// objects; tests use it to reach the limit with little mail).
    pub fn with_run_max_body_bytes(mut self, bytes: u64) -> Backups {
        self.run_max_body_bytes = bytes;
        self
    }

    fn job(&self, dir: &Path, continuous: bool) -> Result<Arc<Job>, BackupError> {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        if let Some(j) = jobs.get(dir) {
            if continuous {
                j.status.lock().expect("status lock").continuous = true;
            }
            return Ok(j.clone());
        }
        let t = open_target(dir, &self.s3).map_err(|e| BackupError::io(&dir.display().to_string(), e))?;
        let j = Arc::new(Job {
            target: t,
            pos: Mutex::new(None),
            wanted: std::sync::atomic::AtomicUsize::new(0),
            status: Mutex::new(BackupStatus {
                target: dir.display().to_string(),
                continuous,
                ..BackupStatus::default()
            }),
        });
        jobs.insert(dir.to_path_buf(), j.clone());
        Ok(j)
    }

    /// Back up everything applied so far into `dir` (a directory, or
    /// `s3://bucket/prefix`; blocking). Returns the runs written; none when
    /// the backup was already current.
    pub fn run(&self, store: &crate::store::Store, dir: &Path, continuous: bool) -> Result<Vec<RunReport>, BackupError> {
        let job = self.job(dir, continuous)?;
        let max_body = match self.run_max_body_bytes {
            0 => export::RUN_MAX_BODY_BYTES,
            n => n,
        };
        job.wanted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = run_job(store, &job, max_body);
        job.wanted.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        job.ended(r.as_ref().err());
        r
    }

    /// One run of the continuous job into `dir` (see
    /// [`export::run_streaming`]): the run object stays open until
    /// `deadline`, taking entries as they are applied. Returns the run
    /// written (none when nothing was applied since the last one) and
    /// whether it stopped at its bounds, so that more waits right behind it.
    pub fn run_stream(
        &self,
        store: &crate::store::Store,
        dir: &Path,
        deadline: std::time::Instant,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<Option<(RunReport, bool)>, BackupError> {
        let job = self.job(dir, true)?;
        let max_body = match self.run_max_body_bytes {
            0 => export::RUN_MAX_BODY_BYTES,
            n => n,
        };
        let r = (|| {
            let mut guard = job.position(store)?;
            let pos = guard.as_mut().expect("loaded above");
            let stream = export::Stream {
                deadline,
                stop,
                wanted: &job.wanted,
            };
            match export::run_streaming(store, job.target.as_ref(), pos, MAX_RUN_ENTRIES, max_body, stream) {
                Ok(r) => {
                    if let Some(r) = &r {
                        job.record(pos, r);
                    }
                    Ok(r.map(|r| {
                        let full = export::run_was_full(&r, MAX_RUN_ENTRIES);
                        (r, full)
                    }))
                }
                Err(e) => {
                    // Reload from the target next time: it is the truth.
                    *guard = None;
                    Err(e)
                }
            }
        })();
        job.ended(r.as_ref().err());
        r
    }

    /// The last apply-order position durable in the backup at `dir`, once
    /// a run has read it from the target (`None` before: unknown).
    pub fn durable_position(&self, dir: &Path) -> Option<u64> {
        let job = self.jobs.lock().expect("jobs lock").get(dir).cloned()?;
        let st = job.status.lock().expect("status lock");
        (st.runs > 0 || st.position > 0 || st.manifest > 0).then_some(st.position)
    }

    /// Status of every target used since start.
    pub fn status(&self, store: &crate::store::Store) -> Vec<BackupStatus> {
        let jobs: Vec<Arc<Job>> = self.jobs.lock().expect("jobs lock").values().cloned().collect();
        let apply_order = store.wal().last_order();
        jobs.iter()
            .map(|j| {
                let mut st = j.status.lock().expect("status lock").clone();
                st.apply_order = apply_order;
                st.retries = j.target.retries();
                st.lag_entries = apply_order.saturating_sub(st.position);
                st.lag_secs = if st.lag_entries == 0 {
                    0.0
                } else {
                    match store.wal().read_order(st.position + 1, 1) {
                        Ok(v) if !v.is_empty() => (now_ms().saturating_sub(v[0].1.hlc >> 16)) as f64 / 1000.0,
                        _ => 0.0,
                    }
                };
                st
            })
            .collect()
    }
}

impl Job {
    /// Note a run's end in the status: when, and its error if it failed.
    fn ended(&self, err: Option<&BackupError>) {
        let mut st = self.status.lock().expect("status lock");
        st.last_run_ms = now_ms();
        match err {
            None => st.last_error = None,
            Some(e) => {
                st.failures += 1;
                st.last_error = Some(e.to_string());
            }
        }
    }

    /// The job's position, locked (one run at a time per target), read
    /// from the target when not known yet (after a start or a failed run).
    fn position(&self, store: &crate::store::Store) -> Result<std::sync::MutexGuard<'_, Option<Position>>, BackupError> {
        let mut guard = self.pos.lock().expect("position lock");
        if guard.is_none() {
            let p = export::open(self.target.as_ref(), store.node_id())?;
            let mut st = self.status.lock().expect("status lock");
            st.manifest = p.number;
            st.position = p.order;
            *guard = Some(p);
        }
        Ok(guard)
    }

    /// Count a run that is durable in the target.
    fn record(&self, pos: &Position, r: &RunReport) {
        let mut st = self.status.lock().expect("status lock");
        st.manifest = pos.number;
        st.position = pos.order;
        st.runs += 1;
        st.entries += r.entries;
        st.segments += r.segments;
        st.segment_bytes += r.segment_bytes;
        st.bodies += r.bodies_written;
        st.body_bytes += r.body_bytes;
        st.packs += r.packs;
        st.objects += r.objects;
    }
}

fn run_job(store: &crate::store::Store, job: &Job, max_body_bytes: u64) -> Result<Vec<RunReport>, BackupError> {
    // One run at a time per target: the position lock is held throughout.
    let mut guard = job.position(store)?;
    let pos = guard.as_mut().expect("loaded above");
    let upto = store.wal().last_order();
    let mut out = Vec::new();
    loop {
        let r = export::run_once(store, job.target.as_ref(), pos, upto, MAX_RUN_ENTRIES, max_body_bytes);
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                // Reload from the target next time: it is the truth.
                *guard = None;
                return Err(e);
            }
        };
        let Some(r) = r else { break };
        job.record(pos, &r);
        out.push(r);
    }
    Ok(out)
}

/// The continuous backup job. A run opens as soon as something is applied
/// and stays open, writing the new bodies of entries as they are applied,
/// until one `interval` after the previous run stopped taking entries; so
/// runs close at most once per interval in steady state, and an entry
/// waits at most one interval plus the closing of one run (its segments,
/// manifest and sync). A run that stopped at its bounds (a backlog) is
/// followed at once by the next. Failures are logged and retried with
/// backoff.
pub async fn run_continuous(
    backups: Arc<Backups>,
    store: crate::store::Store,
    dir: PathBuf,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut commits = store.commits();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut backoff = interval;
    // When the previous run stopped taking entries (none: take at once).
    let mut closed: Option<std::time::Instant> = None;
    // The last position backed up (none: not known yet, run at once).
    let mut done: Option<u64> = None;
    'jobs: loop {
        // Wait until something is applied that the backup lacks.
        loop {
            commits.borrow_and_update();
            match done {
                Some(d) if store.wal().last_order() <= d => {}
                _ => break,
            }
            tokio::select! {
                _ = crate::server::wait_shutdown(&mut shutdown) => break 'jobs,
                r = commits.changed() => if r.is_err() { break 'jobs },
            }
        }
        let started = std::time::Instant::now();
        let deadline = closed.map(|c| c + interval).unwrap_or(started).max(started);
        let (b, s, d, st) = (backups.clone(), store.clone(), dir.clone(), stop.clone());
        let mut run = tokio::task::spawn_blocking(move || b.run_stream(&s, &d, deadline, &st));
        let r = tokio::select! {
            r = &mut run => r,
            _ = crate::server::wait_shutdown(&mut shutdown) => {
                // Close the open run now; the last run below takes the rest.
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = run.await;
                break 'jobs;
            }
        };
        let wait = match r {
            Ok(Ok(r)) => {
                backoff = interval;
                done = Some(backups.durable_position(&dir).unwrap_or(0));
                if let Some((_, full)) = r {
                    // Closed early (a one-shot run wanted the target):
                    // the next interval counts from the close.
                    closed = (!full).then_some(deadline.min(std::time::Instant::now()));
                }
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(target = %dir.display(), error = %e, "backup run failed; retrying");
                closed = None;
                done = None;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                Some(backoff)
            }
            Err(e) => {
                tracing::error!(error = %e, "backup run panicked");
                closed = None;
                done = None;
                Some(backoff)
            }
        };
        if let Some(wait) = wait {
            tokio::select! {
                _ = crate::server::wait_shutdown(&mut shutdown) => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
    // A last run on shutdown, so a clean stop leaves the backup current.
    let (b, s, d) = (backups.clone(), store.clone(), dir.clone());
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || b.run(&s, &d, true)).await {
        tracing::warn!(target = %dir.display(), error = %e, "final backup run failed");
    }
}
