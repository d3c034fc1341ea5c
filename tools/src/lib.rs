//! # tandem-tools — replay, audit, rebuild and restore outside a running node
//!
//! - [`audit`]: verify every origin's hash chain of a stopped node, check
//!   every body against its hash, and check that the views equal a replay
//!   of the log (into a scratch store), reporting the first problem with
//!   its place.
//! - [`audit_backup`]: the same for a backup directory: the manifest chain,
//!   every segment and body (in run objects, format-2 packs or format-1
//!   body objects), and a replay of all of it.
//! - [`rebuild`]: throw the views away and materialise them again from the
//!   log, in the node's own apply order.
//! - [`restore`]: a whole node from a backup into a new data directory, to
//!   the latest state or to any single event, resumable.
//!
//! `tandem-replay` is the command line over all of them (`tandem-audit`
//! and `tandem-rebuild` remain as short names for two of its commands).
//! The node's store is opened directly, so the node must be stopped
//! (RocksDB admits one process).

use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use tandem::backup::layout;
use tandem::backup::restore::{self as brestore, RestoreReport, Stop};
use tandem::backup::retention::{self, LeaseGuard, PruneOptions, PruneReport};
use tandem::backup::s3::S3Settings;
use tandem::backup::target::{Faulty, Retrying, Target};
use tandem::event::{BlobHash, Event};
use tandem::replay::{rebuild_views_verified, replay_into, views_digest};
use tandem::store::{wal_options, Store};
use wal::Origin;

/// What an audit found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditReport {
    pub node_id: String,
    /// What was audited: "data-dir" or "backup".
    pub kind: String,
    /// `{origin: last seq}`.
    pub heads: std::collections::BTreeMap<String, u64>,
    /// Entries whose chain link was checked.
    pub entries_verified: u64,
    /// Entries replayed into the scratch store.
    pub entries_replayed: u64,
    /// Bodies checked against their hash.
    pub bodies_verified: u64,
    pub views_digest: String,
    pub replay_digest: String,
    /// True when chains verify and views equal the replay.
    pub ok: bool,
    pub problems: Vec<String>,
    /// Origins whose log was pruned: `{origin: base seq}`. Their chains
    /// are verified from the base; the views are not compared with a
    /// replay (a pruned log no longer explains them).
    pub pruned: std::collections::BTreeMap<String, u64>,
}

fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let p = data_dir.join("node-id");
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("reading {} (is this a Tandem data directory?)", p.display()))?
        .trim()
        .to_string())
}

fn open(data_dir: &Path) -> anyhow::Result<(String, Store)> {
    let id = node_id(data_dir)?;
    let db = data_dir.join("db");
    let store = Store::open(&db, &id, wal_options(&id)).with_context(|| format!("opening {} (is the node stopped?)", db.display()))?;
    Ok((id, store))
}

/// Time to live of the lease a restore or audit holds (renewed every
/// third of it while it runs).
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(120);

/// Prune the backup at `from`: keep every restore point of the last
/// `keep_ms`, delete what only older ones need (see
/// `tandem::backup::retention`). Run with credentials that may delete.
pub fn prune(from: &Path, keep_ms: u64, wait: std::time::Duration, s3: &S3Settings) -> anyhow::Result<PruneReport> {
    if !is_backup(from) {
        anyhow::bail!("{} holds no Tandem backup (no {} file)", from.display(), layout::MARKER);
    }
    let t = open_backup(from, s3)?;
    let scratch = tempfile::tempdir()?;
    let o = PruneOptions {
        keep_ms,
        now_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64,
        wait,
        scratch: scratch.path().to_path_buf(),
    };
    Ok(retention::prune(&t, &o)?)
}

/// Parse a duration: a number and a unit (`ms`, `s`, `m`, `h`, `d`).
pub fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    let i = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..i]
        .parse()
        .with_context(|| format!("{s:?} is not a duration like 90s, 36h or 30d"))?;
    let ms = match &s[i..] {
        "ms" => 1,
        "s" | "" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => anyhow::bail!("{s:?}: unknown unit {u:?} (ms, s, m, h, d)"),
    };
    Ok(std::time::Duration::from_millis(n.saturating_mul(ms)))
}

/// Attempts per read of a backup object before a restore gives up.
pub const READ_ATTEMPTS: u32 = 8;

/// The backup (a directory, or `s3://bucket/prefix` reached with `s3`) as
/// restores and audits read it: every read retried (transient failures of
/// a network file system or object store), and, when the environment sets
/// `TANDEM_BACKUP_READ_FAULTS` to a rate in 0..1, that share of reads
/// failing on purpose (fault-injection drills and tests).
pub fn open_backup(dir: &Path, s3: &S3Settings) -> anyhow::Result<Retrying> {
    let t = tandem::backup::open_target(dir, s3).with_context(|| format!("opening the backup {}", dir.display()))?;
    let t: Arc<dyn Target> = match std::env::var("TANDEM_BACKUP_READ_FAULTS") {
        Ok(r) => {
            let rate: f64 = r
                .parse()
                .with_context(|| format!("TANDEM_BACKUP_READ_FAULTS={r:?} is not a number"))?;
            Arc::new(Faulty::new(t, rate))
        }
        Err(_) => t,
    };
    Ok(Retrying::new(t, READ_ATTEMPTS))
}

/// Whether `path` names a backup (an S3 target, or a directory with the
/// marker) rather than a node's data directory.
pub fn is_backup(path: &Path) -> bool {
    tandem::backup::is_s3(path) || path.join(layout::MARKER).is_file()
}

/// Audit a stopped node's data directory or a backup (directory or S3).
pub fn audit_path(path: &Path, scratch: &Path, s3: &S3Settings) -> anyhow::Result<AuditReport> {
    if is_backup(path) {
        audit_backup(path, scratch, s3)
    } else {
        audit(path, scratch)
    }
}

/// The first key where two stores' views differ, readable.
fn first_view_difference(a: &Store, b: &Store) -> anyhow::Result<Option<String>> {
    let va = a.wal().scan_all(a.cfs().views)?;
    let vb = b.wal().scan_all(b.cfs().views)?;
    let show = |k: &[u8]| String::from_utf8_lossy(k).escape_debug().to_string();
    for i in 0..va.len().max(vb.len()) {
        match (va.get(i), vb.get(i)) {
            (Some((ka, x)), Some((kb, y))) if ka == kb && x == y => {}
            (Some((ka, _)), Some((kb, _))) if ka == kb => return Ok(Some(format!("view key {} has a different value", show(ka)))),
            (Some((ka, _)), Some((kb, _))) if ka < kb => return Ok(Some(format!("view key {} is not in the replay", show(ka)))),
            (_, Some((kb, _))) => return Ok(Some(format!("view key {} of the replay is missing", show(kb)))),
            (Some((ka, _)), None) => return Ok(Some(format!("view key {} is not in the replay", show(ka)))),
            (None, None) => break,
        }
    }
    Ok(None)
}

/// Check every body a message-appended entry names: held, and matching
/// its hash. Returns the bodies checked; problems name origin and seq.
fn audit_bodies(store: &Store, problems: &mut Vec<String>) -> anyhow::Result<u64> {
    let wal = store.wal();
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    let mut from = 1;
    loop {
        let chunk = wal.read_order(from, 1024)?;
        let Some((last, _)) = chunk.last() else { break };
        from = last + 1;
        for (_, e) in chunk {
            let Ok(Event::MessageAppended { blob, .. }) = Event::decode(&e.payload) else {
                continue;
            };
            if !seen.insert(blob.0) {
                continue;
            }
            n += 1;
            match store.blob(&blob)? {
                None => problems.push(format!(
                    "body {} named at origin {} seq {} is missing",
                    hex(&blob.0),
                    e.origin,
                    e.seq
                )),
                Some(b) if BlobHash::of(&b) != blob => problems.push(format!(
                    "body {} named at origin {} seq {} does not match its hash",
                    hex(&blob.0),
                    e.origin,
                    e.seq
                )),
                Some(_) => {}
            }
            if problems.len() > 100 {
                return Ok(n);
            }
        }
    }
    Ok(n)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Audit a stopped node. `scratch` is an empty directory for the replay.
pub fn audit(data_dir: &Path, scratch: &Path) -> anyhow::Result<AuditReport> {
    let (id, store) = open(data_dir)?;
    let heads = store.wal().heads().0.iter().map(|(o, s)| (o.to_string(), *s)).collect();
    let mut problems = Vec::new();
    let entries_verified = match store.wal().verify_all() {
        Ok(n) => n,
        Err(e) => {
            problems.push(format!("chain: {e}"));
            0
        }
    };
    let bodies_verified = audit_bodies(&store, &mut problems)?;
    let views = views_digest(&store)?;
    let pruned: std::collections::BTreeMap<String, u64> = store.wal().bases().iter().map(|(o, b)| (o.to_string(), b.seq)).collect();
    if !pruned.is_empty() {
        store.close()?;
        return Ok(AuditReport {
            node_id: id,
            kind: "data-dir".into(),
            heads,
            entries_verified,
            entries_replayed: 0,
            bodies_verified,
            views_digest: views,
            replay_digest: String::new(),
            ok: problems.is_empty(),
            problems,
            pruned,
        });
    }
    let mut o = wal_options("audit-replay");
    o.sync = false;
    let replica = Store::open(scratch, "audit-replay", o).context("opening the scratch store")?;
    let (entries_replayed, replay) = match replay_into(&store, &replica) {
        Ok(n) => (n, views_digest(&replica)?),
        Err(e) => {
            problems.push(format!("replay: {e}"));
            (0, String::new())
        }
    };
    if problems.is_empty() && replay != views {
        let at = first_view_difference(&store, &replica)?.unwrap_or_default();
        problems.push(format!(
            "views differ from a replay of the log: {at} (run `tandem-replay rebuild` to materialise them again)"
        ));
    }
    replica.close()?;
    store.close()?;
    Ok(AuditReport {
        node_id: id,
        kind: "data-dir".into(),
        heads,
        entries_verified,
        entries_replayed,
        bodies_verified,
        ok: problems.is_empty(),
        views_digest: views,
        replay_digest: replay,
        problems,
        pruned: Default::default(),
    })
}

/// Audit a backup directory: the manifest chain, then every segment and
/// every body it references, replayed into a scratch store at `scratch`.
pub fn audit_backup(dir: &Path, scratch: &Path, s3: &S3Settings) -> anyhow::Result<AuditReport> {
    let t: Arc<Retrying> = Arc::new(open_backup(dir, s3)?);
    let _lease = LeaseGuard::take(t.clone(), LEASE_TTL, "audit").context("taking a lease on the backup")?;
    let t = t.as_ref();
    let mut problems = Vec::new();
    let plan = match brestore::plan(t, Stop::Latest) {
        Ok(p) => p,
        Err(e) => {
            return Ok(AuditReport {
                node_id: layout::read_marker(t).ok().flatten().unwrap_or_default(),
                kind: "backup".into(),
                heads: Default::default(),
                entries_verified: 0,
                entries_replayed: 0,
                bodies_verified: 0,
                views_digest: String::new(),
                replay_digest: String::new(),
                ok: false,
                problems: vec![e.to_string()],
                pruned: Default::default(),
            })
        }
    };
    let heads = plan
        .manifests
        .last()
        .map(|l| l.manifest.heads.iter().map(|(o, h)| (o.clone(), h.seq)).collect())
        .unwrap_or_default();
    let mut o = wal_options(&plan.node_id);
    o.sync = false;
    let mut replica_db = scratch.to_path_buf();
    if let Some(b) = &plan.base {
        // The base's store: every file by its hash, then audited as a
        // node's data directory (chains, bodies, views against a replay).
        let base_dir = scratch.join("base");
        std::fs::create_dir_all(&base_dir)?;
        std::fs::write(base_dir.join(tandem::server::NODE_ID_FILE), &plan.node_id)?;
        replica_db = base_dir.join("db");
        if let Err(e) = retention::fetch_base(t, b, &replica_db) {
            problems.push(e.to_string());
            return Ok(AuditReport {
                node_id: plan.node_id,
                kind: "backup".into(),
                heads,
                entries_verified: 0,
                entries_replayed: 0,
                bodies_verified: 0,
                views_digest: String::new(),
                replay_digest: String::new(),
                ok: false,
                problems,
                pruned: Default::default(),
            });
        }
        let a = audit(&base_dir, &scratch.join("base-replay"))?;
        problems.extend(a.problems.iter().map(|p| format!("{}: {p}", retention::base_name(b.number))));
    }
    let replica = Store::open(&replica_db, &plan.node_id, o).context("opening the scratch store")?;
    if let Some(b) = &plan.base {
        if let Err(e) = retention::check_holds_base(&replica, b) {
            problems.push(e.to_string());
        }
    }
    let rep = match brestore::apply(t, &plan, &replica, Stop::Latest, &mut |_| {}) {
        Ok(r) => r,
        Err(e) => {
            problems.push(e.to_string());
            RestoreReport::default()
        }
    };
    let replay = views_digest(&replica)?;
    replica.close()?;
    Ok(AuditReport {
        node_id: plan.node_id,
        kind: "backup".into(),
        heads,
        entries_verified: rep.entries_verified,
        entries_replayed: rep.entries_applied,
        bodies_verified: rep.bodies_fetched,
        views_digest: replay.clone(),
        replay_digest: replay,
        ok: problems.is_empty(),
        problems,
        pruned: Default::default(),
    })
}

/// The glibc tunable that backs malloc's heap with transparent huge pages
/// (madvise), read by the C library when a process starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HUGE_PAGES: &str = "glibc.malloc.hugetlb";

/// Before a [`rebuild`]: start this process again with [`HUGE_PAGES`] set,
/// unless `GLIBC_TUNABLES` names it already (`glibc.malloc.hugetlb=0`
/// keeps 4 KiB pages). A rebuild grows its in-memory views to hundreds of
/// megabytes at random places, and faulting that in 4 KiB at a time took a
/// tenth of its time: with huge pages a rebuild of 100,130 entries ran in
/// 0.46-0.58 s against 0.54-0.63 s (ten alternating runs each,
/// `benches/README.md`). Returns only if the new start could not be made
/// (saying so on stderr as `tool`), and the rebuild goes on as is.
pub fn start_again_with_huge_pages(tool: &str) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if tunables.contains(HUGE_PAGES) {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
        let value = if tunables.is_empty() {
            format!("{HUGE_PAGES}=1")
        } else {
            format!("{tunables}:{HUGE_PAGES}=1")
        };
        let err = std::process::Command::new(&exe)
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", value)
            .exec();
        eprintln!("{tool}: could not start again with huge pages ({err}); going on without");
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = tool;
}

/// Rebuild the views of a stopped node from its log. Returns entries applied.
pub fn rebuild(data_dir: &Path) -> anyhow::Result<u64> {
    let (_, store) = open(data_dir)?;
    let n = rebuild_views_verified(&store)?;
    store.close()?;
    Ok(n)
}

/// Parse `ORIGIN:SEQ`, ORIGIN being 16 hex digits or a node id.
pub fn parse_seq(s: &str) -> anyhow::Result<(Origin, u64)> {
    let (o, seq) = s.rsplit_once(':').context("expected ORIGIN:SEQ")?;
    let seq: u64 = seq.parse().with_context(|| format!("seq {seq:?} is not a number"))?;
    let origin = if o.len() == 16 && o.bytes().all(|b| b.is_ascii_hexdigit()) {
        Origin(u64::from_str_radix(o, 16)?)
    } else {
        Origin::from_node_id(o)
    };
    Ok((origin, seq))
}

/// Parse an RFC 3339 time into milliseconds since the epoch.
pub fn parse_time(s: &str) -> anyhow::Result<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(s).with_context(|| format!("{s:?} is not an RFC 3339 time"))?;
    u64::try_from(t.timestamp_millis()).context("times before 1970 hold no mail")
}

/// Restore a whole node from the backup in `from` into `data_dir` (new, or
/// holding an interrupted restore of the same backup, which continues).
/// Up to `fetchers` body reads run at once. `progress(position,
/// target)` is called as entries are applied.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    stop: Stop,
    s3: &S3Settings,
    fetchers: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<RestoreReport> {
    if !is_backup(from) {
        anyhow::bail!("{} holds no Tandem backup (no {} file)", from.display(), layout::MARKER);
    }
    let t: Arc<Retrying> = Arc::new(open_backup(from, s3)?);
    // Before anything is read: prune leaves what this restore uses alone.
    let _lease = LeaseGuard::take(t.clone(), LEASE_TTL, "restore").context("taking a lease on the backup")?;
    let plan = brestore::plan(t.as_ref(), stop)?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let id_file = data_dir.join(tandem::server::NODE_ID_FILE);
    match std::fs::read_to_string(&id_file) {
        Ok(s) if s.trim() == plan.node_id => {}
        Ok(s) => anyhow::bail!(
            "{} belongs to node {:?}, the backup to {:?}; restore into a new data directory",
            data_dir.display(),
            s.trim(),
            plan.node_id
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&id_file, &plan.node_id)?;
            std::fs::File::open(&id_file)?.sync_all()?;
            std::fs::File::open(data_dir)?.sync_all()?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", id_file.display())),
    }
    let db = data_dir.join("db");
    if let Some(b) = &plan.base {
        if !db.exists() {
            retention::fetch_base(t.as_ref(), b, &db)?;
        }
    }
    // The restore writes gigabytes once and reads little of it back:
    // flushes (bodies to blob files, tables) bypass the page cache, which
    // would otherwise be filled with them, written back and reclaimed.
    // (The daemon writes through the page cache by default, `[node]
    // direct_io`; for the restore the two measured the same: 100,000
    // messages in 12.3-15.0 s through the page cache, 13.3-24.9 s with
    // O_DIRECT, four runs each.) Audits and rebuilds keep the page cache:
    // they read what they write.
    let mut opts = wal_options(&plan.node_id);
    opts.direct_flush = true;
    let store = Store::open(&db, &plan.node_id, opts).with_context(|| format!("opening {}", db.display()))?;
    if let Some(b) = &plan.base {
        if store.wal().last_order() < b.order {
            store.close()?;
            anyhow::bail!(
                "{} holds an interrupted restore from before {} was pruned; restore into a new data directory",
                data_dir.display(),
                retention::base_name(b.number)
            );
        }
        if let Err(e) = retention::check_holds_base(&store, b) {
            store.close()?;
            return Err(e.into());
        }
    }
    let target = plan.target_order;
    let r = brestore::apply_with(t.as_ref(), &plan, &store, stop, fetchers, &mut |p| progress(p, target));
    store.close()?;
    let mut r = r?;
    r.read_retries = t.retries();
    Ok(r)
}

/// Print an audit report as text or JSON.
pub fn print_audit(r: &AuditReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "{} of node {}: {} entries verified, {} replayed, {} bodies checked",
        r.kind, r.node_id, r.entries_verified, r.entries_replayed, r.bodies_verified
    );
    for (o, s) in &r.heads {
        match r.pruned.get(o) {
            Some(base) => println!("  origin {o} seq {s} (pruned: held from seq {}, verified from the base)", base + 1),
            None => println!("  origin {o} seq {s}"),
        }
    }
    if r.pruned.is_empty() {
        println!("views  {}\nreplay {}", r.views_digest, r.replay_digest);
    } else {
        println!(
            "views  {}\nreplay skipped: the log is pruned, so it no longer explains the views (restore from a backup to rebuild them)",
            r.views_digest
        );
    }
    for p in &r.problems {
        println!("PROBLEM {p}");
    }
    println!("{}", if r.ok { "ok" } else { "FAILED" });
    Ok(())
}
