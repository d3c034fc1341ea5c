//! Retention of a backup: bases, leases and prune.
//!
//! - A **base** is the node's whole store (its RocksDB files) as a restore
//!   of the backup left it after manifest `n`, with a descriptor naming
//!   every file's length and blake3 and the chain position it stands for.
//!   A restore or audit starts from the newest base at or before its
//!   point and applies the manifests after it; so once a base exists, the
//!   manifests, segments and bodies before it are needed by no restore
//!   point after it.
//! - A **lease** is an object a restore writes before it reads anything,
//!   renewed while it runs and released (a `.released` object) when it
//!   ends; it expires on its own if the restore dies. Restores need only
//!   the right to add objects.
//! - **Prune** (with credentials that may delete) writes the base for the
//!   newest manifest wholly older than the kept window, then deletes what
//!   only earlier restore points need. Packs are never rewritten: a pack
//!   of a manifest at or before the base is kept, whole, while any body in
//!   it is still needed (live in the base's store, or named by a kept
//!   manifest), and the base's descriptor carries its index from then on — unless a live lease exists, when
//!   it waits (bounded) or skips the deletions. A restore that took its
//!   lease after prune looked at the leases planned after the new base was
//!   durable, so it reads that base and nothing prune deletes, as long as
//!   its point lies inside the kept window.

use super::layout::{self, Head, Loaded};
use super::restore::{self, Plan, Stop};
use super::target::Target;
use super::BackupError;
use crate::store::{wal_options, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wal::Origin;

pub const BASE_DIR: &str = "bases";
/// Largest base descriptor read.
const MAX_BASE_LEN: u64 = 16 << 20;
/// Largest lease object read.
const MAX_LEASE_LEN: u64 = 4096;

/// One file of a base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseFile {
    pub name: String,
    pub len: u64,
    /// blake3 of the file (hex).
    pub blake3: String,
}

/// A base descriptor: the store after manifest `number`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub format: u32,
    pub node_id: String,
    pub number: u64,
    /// blake3 of manifest `number`'s file (hex): the next manifest names it.
    pub manifest_hash: String,
    /// Apply-order position and newest entry time the base holds.
    pub order: u64,
    pub time_ms: u64,
    pub heads: BTreeMap<String, Head>,
    pub files: Vec<BaseFile>,
    pub created_ms: u64,
    /// Packs of manifests up to `number` that prune keeps (they hold a
    /// body still needed), with their index: their manifests are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<layout::PackRef>,
}

pub fn base_name(number: u64) -> String {
    format!("{BASE_DIR}/{number:020}.base")
}

pub fn base_file_name(number: u64, file: &str) -> String {
    format!("{BASE_DIR}/{number:020}/{file}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn io_err(object: &str) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::io(object, e)
}

/// Numbers of the bases present (descriptors written), in order.
pub fn base_numbers(t: &dyn Target) -> Result<Vec<u64>, BackupError> {
    let mut out: Vec<u64> = t
        .list(BASE_DIR)
        .map_err(io_err(BASE_DIR))?
        .iter()
        .filter_map(|n| n.strip_suffix(".base").and_then(|s| s.parse().ok()))
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Read base descriptor `number`.
pub fn load_base(t: &dyn Target, number: u64) -> Result<Base, BackupError> {
    let object = base_name(number);
    let bytes = layout::read_object(t, &object, MAX_BASE_LEN)?;
    let b: Base = serde_json::from_slice(&bytes).map_err(|e| BackupError::Corrupt {
        object: object.clone(),
        reason: format!("not a base descriptor: {e}"),
    })?;
    if b.number != number || !(layout::OLDEST_FORMAT..=layout::LAYOUT_FORMAT).contains(&b.format) {
        return Err(BackupError::Corrupt {
            object,
            reason: format!("names itself number {} format {}", b.number, b.format),
        });
    }
    Ok(b)
}

/// Every origin's last seq and chain hash.
pub type Heads = BTreeMap<Origin, (u64, [u8; 32])>;

/// The chain state a base stands for: previous manifest hash, apply order
/// and heads, as [`layout::check_follows`] takes them.
pub fn base_state(b: &Base) -> Result<([u8; 32], u64, Heads), BackupError> {
    let object = base_name(b.number);
    let mut heads = BTreeMap::new();
    for (o, h) in &b.heads {
        heads.insert(
            layout::parse_origin(&object, o)?,
            (h.seq, layout::parse_hash(&object, "heads", &h.hash)?),
        );
    }
    Ok((layout::parse_hash(&object, "manifest_hash", &b.manifest_hash)?, b.order, heads))
}

/// Upload the closed store at `db` as the base after manifest `after`,
/// keeping `packs` (packs of manifests up to it still needed).
pub fn write_base(t: &dyn Target, db: &Path, after: &Loaded, packs: Vec<layout::PackRef>) -> Result<Base, BackupError> {
    let m = &after.manifest;
    let mut names: Vec<String> = Vec::new();
    for e in std::fs::read_dir(db).map_err(|e| BackupError::io(&db.display().to_string(), e))? {
        let e = e.map_err(|e| BackupError::io(&db.display().to_string(), e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        // The lock and RocksDB's own text logs are not state.
        if name == "LOCK" || name.starts_with("LOG") || !e.path().is_file() {
            continue;
        }
        names.push(name);
    }
    names.sort();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let object = base_file_name(m.number, &name);
        let path = db.join(&name);
        let mut h = blake3::Hasher::new();
        let mut len = 0u64;
        let written = t
            .put_new(&object, &mut |w| {
                h.reset();
                len = 0;
                let mut f = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    h.update(&buf[..n]);
                    len += n as u64;
                    w.write_all(&buf[..n])?;
                }
            })
            .map_err(io_err(&object))?;
        if !written {
            return Err(BackupError::Corrupt {
                object,
                reason: "exists already: another prune is writing this base".into(),
            });
        }
        files.push(BaseFile {
            name,
            len,
            blake3: h.finalize().to_hex().to_string(),
        });
    }
    let b = Base {
        format: layout::LAYOUT_FORMAT,
        node_id: m.node_id.clone(),
        number: m.number,
        manifest_hash: hex::encode(after.file_hash),
        order: m.order_to,
        time_ms: m.time_to_ms,
        heads: m.heads.clone(),
        files,
        created_ms: now_ms(),
        packs,
    };
    let object = base_name(m.number);
    let bytes = serde_json::to_vec_pretty(&b).expect("a base serialises");
    t.put_new(&object, &mut |w| w.write_all(&bytes)).map_err(io_err(&object))?;
    t.sync().map_err(io_err(&object))?;
    Ok(b)
}

/// Download base `b` into `db` (which must not exist), checking every
/// file against its length and blake3.
pub fn fetch_base(t: &dyn Target, b: &Base, db: &Path) -> Result<(), BackupError> {
    let tmp = db.with_extension("base-partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| BackupError::io(&tmp.display().to_string(), e))?;
    for f in &b.files {
        let object = base_file_name(b.number, &f.name);
        super::target::check_name(&f.name).map_err(io_err(&object))?;
        let mut r = t.open(&object).map_err(io_err(&object))?;
        let path = tmp.join(&f.name);
        let mut out = std::fs::File::create(&path).map_err(|e| BackupError::io(&path.display().to_string(), e))?;
        let mut h = blake3::Hasher::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).map_err(io_err(&object))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            if len > f.len {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| BackupError::io(&path.display().to_string(), e))?;
        }
        if len != f.len || h.finalize().to_hex().as_str() != f.blake3 {
            return Err(BackupError::Corrupt {
                object,
                reason: format!("does not match {} (length {len}, want {})", base_name(b.number), f.len),
            });
        }
        out.sync_all().map_err(|e| BackupError::io(&path.display().to_string(), e))?;
    }
    std::fs::rename(&tmp, db).map_err(|e| BackupError::io(&db.display().to_string(), e))?;
    if let Some(p) = db.parent() {
        let _ = std::fs::File::open(p).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Check that `store` holds base `b`'s history (every head, by hash).
pub fn check_holds_base(store: &Store, b: &Base) -> Result<(), BackupError> {
    let (_, _, heads) = base_state(b)?;
    for (o, (seq, hash)) in heads {
        match store.wal().entry(o, seq)? {
            Some(e) if e.hash == hash => {}
            _ => {
                return Err(BackupError::Corrupt {
                    object: base_name(b.number),
                    reason: format!("its store does not hold origin {o} seq {seq} with the hash the descriptor names"),
                })
            }
        }
    }
    Ok(())
}

/// One lease object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub renewal: u64,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// What holds it, for messages ("restore", "audit").
    pub purpose: String,
}

pub fn lease_name(id: &str, renewal: u64) -> String {
    format!("{}/{id}-{renewal:06}.lease", layout::LEASE_DIR)
}

pub fn release_name(id: &str) -> String {
    format!("{}/{id}.released", layout::LEASE_DIR)
}

/// How leases stand: the newest renewal of every lease not released, and
/// every lease object (for cleaning up).
pub struct Leases {
    pub live: Vec<Lease>,
    /// Objects of released or expired leases.
    pub dead: Vec<String>,
}

pub fn read_leases(t: &dyn Target, now_ms: u64) -> Result<Leases, BackupError> {
    let names = t.list(layout::LEASE_DIR).map_err(io_err(layout::LEASE_DIR))?;
    let released: HashSet<&str> = names.iter().filter_map(|n| n.strip_suffix(".released")).collect();
    let mut newest: BTreeMap<String, Lease> = BTreeMap::new();
    let mut objects: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &names {
        let Some(stem) = n.strip_suffix(".lease") else { continue };
        let Some((id, _)) = stem.rsplit_once('-') else { continue };
        let object = format!("{}/{n}", layout::LEASE_DIR);
        objects.entry(id.to_string()).or_default().push(object.clone());
        let l: Lease = match layout::read_object(t, &object, MAX_LEASE_LEN) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| BackupError::Corrupt {
                object: object.clone(),
                reason: format!("not a lease: {e}"),
            })?,
            // Removed since the listing: released and cleaned up.
            Err(BackupError::Missing { .. }) => continue,
            Err(e) => return Err(e),
        };
        if newest.get(id).is_none_or(|o| o.renewal < l.renewal) {
            newest.insert(id.to_string(), l);
        }
    }
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for (id, l) in newest {
        if released.contains(id.as_str()) || l.expires_ms <= now_ms {
            dead.extend(objects.remove(&id).unwrap_or_default());
            if released.contains(id.as_str()) {
                dead.push(release_name(&id));
            }
        } else {
            live.push(l);
        }
    }
    Ok(Leases { live, dead })
}

/// A lease held while a restore or audit reads the backup: renewed in the
/// background every third of its time to live, released on drop.
pub struct LeaseGuard {
    target: Arc<dyn Target>,
    id: String,
    stop: Arc<AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

fn write_lease(t: &dyn Target, id: &str, renewal: u64, ttl: Duration, purpose: &str) -> Result<(), BackupError> {
    let now = now_ms();
    let l = Lease {
        id: id.to_string(),
        renewal,
        created_ms: now,
        expires_ms: now + ttl.as_millis() as u64,
        purpose: purpose.to_string(),
    };
    let object = lease_name(id, renewal);
    let bytes = serde_json::to_vec(&l).expect("a lease serialises");
    t.put_new(&object, &mut |w| w.write_all(&bytes)).map_err(io_err(&object))?;
    t.sync().map_err(io_err(&object))
}

impl LeaseGuard {
    /// Take a lease on the backup at `t` (durable when this returns).
    pub fn take(t: Arc<dyn Target>, ttl: Duration, purpose: &str) -> Result<LeaseGuard, BackupError> {
        let id = hex::encode(rand::random::<[u8; 8]>());
        write_lease(t.as_ref(), &id, 0, ttl, purpose)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (t2, id2, stop2, purpose) = (t.clone(), id.clone(), stop.clone(), purpose.to_string());
        let renewer = std::thread::spawn(move || {
            let every = (ttl / 3).max(Duration::from_millis(50));
            let mut renewal = 0;
            let mut since = std::time::Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50).min(every));
                if since.elapsed() >= every {
                    renewal += 1;
                    if let Err(e) = write_lease(t2.as_ref(), &id2, renewal, ttl, &purpose) {
                        tracing::warn!(lease = %id2, error = %e, "renewing the backup lease failed");
                    }
                    since = std::time::Instant::now();
                }
            }
        });
        Ok(LeaseGuard {
            target: t,
            id,
            stop,
            renewer: Some(renewer),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.renewer.take() {
            let _ = r.join();
        }
        let object = release_name(&self.id);
        let _ = self.target.put_new(&object, &mut |w| w.write_all(b"released\n"));
        let _ = self.target.sync();
    }
}

/// What to keep, and how long to wait for leases.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Every restore point at or after `now_ms - keep_ms` stays restorable.
    pub keep_ms: u64,
    pub now_ms: u64,
    /// How long to wait for live leases before skipping the deletions.
    pub wait: Duration,
    /// Scratch directory for building a base.
    pub scratch: PathBuf,
}

/// What a prune did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PruneReport {
    /// The base restores now start from (0: the first manifest).
    pub base: u64,
    pub base_written: bool,
    /// Time of the oldest restore point left (ms; the base's or the first
    /// manifest's first entry).
    pub oldest_point_ms: u64,
    pub manifests_deleted: u64,
    pub segments_deleted: u64,
    /// Format-1 body objects deleted.
    pub bodies_deleted: u64,
    /// Packs deleted: every body in them was no longer needed.
    #[serde(default)]
    pub packs_deleted: u64,
    pub base_objects_deleted: u64,
    pub lease_objects_deleted: u64,
    /// Live leases that made this run skip its deletions.
    pub skipped_for_leases: Vec<String>,
}

/// Bodies that append entries of `manifests` name.
fn bodies_named(t: &dyn Target, manifests: &[Loaded]) -> Result<HashSet<[u8; 32]>, BackupError> {
    let mut out = HashSet::new();
    for l in manifests {
        for s in &l.manifest.segments {
            let mut sr = layout::open_segment(t, s, &l.object)?;
            while let Some(e) = sr.next_entry().map_err(|e| layout::segment_error(s, e))? {
                if let Ok(crate::event::Event::MessageAppended { blob, .. }) = crate::event::Event::decode(&e.payload) {
                    out.insert(blob.0);
                }
            }
        }
    }
    Ok(out)
}

/// The packs of `base` and of `upto` (the manifests up to a new base,
/// restored into `store`) that hold a body live in `store` or named by an
/// entry of `after` (the manifests kept).
fn needed_packs(
    t: &dyn Target,
    store: &Store,
    base: Option<&Base>,
    upto: &[Loaded],
    after: &[Loaded],
) -> Result<Vec<layout::PackRef>, BackupError> {
    let named = bodies_named(t, after)?;
    let candidates = base
        .iter()
        .flat_map(|b| b.packs.iter())
        .chain(upto.iter().flat_map(|l| l.manifest.packs.iter()));
    let mut keep = Vec::new();
    for p in candidates {
        for b in &p.bodies {
            let h = layout::parse_hash(&p.object, "pack body", &b.0)?;
            let live = || -> Result<bool, BackupError> {
                Ok(store
                    .body_refs(&crate::event::BlobHash(h))
                    .map_err(|e| BackupError::Usage(e.to_string()))?
                    > 0)
            };
            if named.contains(&h) || live()? {
                keep.push(p.clone());
                break;
            }
        }
    }
    Ok(keep)
}

/// Every format-1 body object in the backup.
fn list_bodies(t: &dyn Target) -> Result<Vec<String>, BackupError> {
    let mut out = Vec::new();
    for d in t.list(layout::BODY_DIR).map_err(io_err(layout::BODY_DIR))? {
        let dir = format!("bodies/{d}");
        for n in t.list(&dir).map_err(io_err(&dir))? {
            out.push(format!("{dir}/{n}"));
        }
    }
    Ok(out)
}

/// Prune the backup at `t` as `o` says (see the module documentation).
pub fn prune(t: &dyn Target, o: &PruneOptions) -> Result<PruneReport, BackupError> {
    let plan = restore::plan(t, Stop::Latest)?;
    let mut rep = PruneReport {
        base: plan.base.as_ref().map(|b| b.number).unwrap_or(0),
        ..PruneReport::default()
    };
    let window = o.now_ms.saturating_sub(o.keep_ms);
    // The newest manifest wholly before the window; never the last one
    // (the writer continues from it).
    let cut = plan
        .manifests
        .iter()
        .take(plan.manifests.len().saturating_sub(1))
        .rposition(|l| l.manifest.time_to_ms < window);
    let mut base = plan.base.clone();
    if let Some(i) = cut {
        let k = plan.manifests[i].manifest.number;
        let db = o.scratch.join("db");
        if let Some(b) = &base {
            fetch_base(t, b, &db)?;
        }
        let mut opts = wal_options(&plan.node_id);
        opts.sync = false;
        let store = Store::open(&db, &plan.node_id, opts)?;
        let sub = Plan {
            node_id: plan.node_id.clone(),
            manifests: plan.manifests[..=i].to_vec(),
            target_order: plan.manifests[i].manifest.order_to,
            base: base.clone(),
            bodies: plan.bodies.clone(),
        };
        let r = restore::apply(t, &sub, &store, Stop::Latest, &mut |_| {});
        // The packs up to the new base that hold a body still needed.
        let packs = match &r {
            Ok(_) => Some(needed_packs(
                t,
                &store,
                base.as_ref(),
                &plan.manifests[..=i],
                &plan.manifests[i + 1..],
            )),
            Err(_) => None,
        };
        store.close()?;
        r?;
        let packs = packs.expect("computed when the restore passed")?;
        base = Some(write_base(t, &db, &plan.manifests[i], packs)?);
        rep.base = k;
        rep.base_written = true;
    }
    let kept: Vec<Loaded> = plan
        .manifests
        .iter()
        .filter(|l| base.as_ref().is_none_or(|b| l.manifest.number > b.number))
        .cloned()
        .collect();
    rep.oldest_point_ms = base
        .as_ref()
        .map(|b| b.time_ms)
        .or_else(|| kept.first().map(|l| l.manifest.time_from_ms))
        .unwrap_or(0);
    let Some(base) = base else { return Ok(rep) };

    // The base is durable: a restore that takes its lease from now on
    // plans from it. Wait for those that took theirs before.
    let deadline = std::time::Instant::now() + o.wait;
    let leases = loop {
        let l = read_leases(t, now_ms())?;
        if l.live.is_empty() || std::time::Instant::now() >= deadline {
            break l;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for d in &leases.dead {
        t.delete(d).map_err(io_err(d))?;
        rep.lease_objects_deleted += 1;
    }
    if !leases.live.is_empty() {
        rep.skipped_for_leases = leases
            .live
            .iter()
            .map(|l| format!("{} ({}, expires at {} ms)", l.id, l.purpose, l.expires_ms))
            .collect();
        return Ok(rep);
    }

    // Manifests up to the base, newest first (a reader listing meanwhile
    // sees a chain that starts at the base, never a gap after it); a run
    // object the base keeps for its bodies stays whole.
    let kept_packs: HashSet<&str> = base.packs.iter().map(|p| p.object.as_str()).collect();
    for (n, object) in layout::manifest_list(t)?.into_iter().rev() {
        if n <= base.number && !kept_packs.contains(object.as_str()) {
            t.delete(&object).map_err(io_err(&object))?;
            rep.manifests_deleted += 1;
        }
    }
    // Segments wholly inside the base's history.
    let (_, _, heads) = base_state(&base)?;
    for od in t.list("segments").map_err(io_err("segments"))? {
        let dir = format!("segments/{od}");
        let Some(&(head, _)) = u64::from_str_radix(&od, 16).ok().and_then(|o| heads.get(&Origin(o))) else {
            continue;
        };
        for n in t.list(&dir).map_err(io_err(&dir))? {
            let last = n
                .strip_suffix(".seg")
                .and_then(|s| s.split_once('-'))
                .and_then(|(_, l)| l.parse::<u64>().ok());
            if last.is_some_and(|l| l <= head) {
                let object = format!("{dir}/{n}");
                t.delete(&object).map_err(io_err(&object))?;
                rep.segments_deleted += 1;
            }
        }
    }
    // Packs (format 2) up to the base that the base does not keep.
    for n in t.list(layout::PACK_DIR).map_err(io_err(layout::PACK_DIR))? {
        let object = format!("{}/{n}", layout::PACK_DIR);
        if layout::pack_number(&n).is_some_and(|num| num <= base.number) && !kept_packs.contains(object.as_str()) {
            t.delete(&object).map_err(io_err(&object))?;
            rep.packs_deleted += 1;
        }
    }
    // Format-1 body objects neither in the base's store nor named after it.
    let legacy = list_bodies(t)?;
    if !legacy.is_empty() {
        let named = bodies_named(t, &kept)?;
        let check_db = o.scratch.join("check");
        let _ = std::fs::remove_dir_all(&check_db);
        fetch_base(t, &base, &check_db)?;
        let mut opts = wal_options(&plan.node_id);
        opts.sync = false;
        let store = Store::open(&check_db, &plan.node_id, opts)?;
        let mut doomed = Vec::new();
        for object in legacy {
            let Some(hash) = object
                .rsplit('/')
                .next()
                .and_then(|h| hex::decode(h).ok())
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
            else {
                continue;
            };
            // A count of zero is a body of mail deleted before the base.
            let live = store
                .body_refs(&crate::event::BlobHash(hash))
                .map_err(|e| BackupError::Usage(e.to_string()))?
                > 0;
            if !live && !named.contains(&hash) {
                doomed.push(object);
            }
        }
        store.close()?;
        for object in doomed {
            t.delete(&object).map_err(io_err(&object))?;
            rep.bodies_deleted += 1;
        }
    }
    // Older bases.
    for n in base_numbers(t)? {
        if n < base.number {
            let b = load_base(t, n)?;
            let object = base_name(n);
            t.delete(&object).map_err(io_err(&object))?;
            rep.base_objects_deleted += 1;
            for f in &b.files {
                let object = base_file_name(n, &f.name);
                t.delete(&object).map_err(io_err(&object))?;
                rep.base_objects_deleted += 1;
            }
        }
    }
    Ok(rep)
}
