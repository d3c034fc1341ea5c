//! Side files: the regular files of the directories named by `[mirror]
//! sync_dirs` (TLS certificates, spam training data) replicated between
//! the nodes of a mirror as logged events, so each change travels with the
//! log, is in backups and replays like any other.
//!
//! # Model
//! - **Events.** A created or changed file is an [`Event::SideFileSet`]
//!   carrying the whole file (at most [`MAX_FILE`] bytes; a larger file is
//!   refused and reported, never truncated); a removed file is an
//!   [`Event::SideFileRemoved`]. The body travels inline in the event, not
//!   as a blob: the entry then reaches peers, backups and replays through
//!   the paths every entry takes, with no reference counting or body
//!   shipping of its own.
//! - **Directories** are named across nodes ([`SyncDirs`]) by their
//!   absolute path, the same on every node (as SurgeMail's `resync_folder`
//!   does), or by a name in a `name = "path"` table, so each node may keep
//!   the directory elsewhere. An event for a directory a node does not
//!   list is kept in its views but written nowhere until the node lists
//!   it: the views never depend on the configuration.
//! - **Names** are plain file names ([`check_name`]): no `/`, no `.` or
//!   `..`, no control characters, not this module's temporary prefix.
//!   Subdirectories, symbolic links and other non-regular entries are not
//!   replicated, and nothing here follows a symbolic link.
//! - **Views.** [`apply`] (called by `views::apply`, the single writer)
//!   keeps per file a [`SideFileRec`] and its bytes: what the log says the
//!   file is, with the (HLC, origin) of the change that said it. A change
//!   applies only when its (HLC, origin) is larger than the one held
//!   ([`wins`]), so concurrent changes of one file on two nodes end with
//!   the same file on every node whatever the order they arrive in; a
//!   removal is kept as a tombstone so an older change arriving late
//!   cannot bring the file back.
//! - **The scanner** ([`run`]) polls each directory every
//!   `sync_dirs_interval_ms` and after every commit, and compares three
//!   states per file: on disk now, on disk when this node last looked
//!   (kept in `data_dir/sidefiles.json`), and in the views. A file that
//!   changed on disk since the last look, to something the views do not
//!   hold, is a local change and is logged. Otherwise, where the views
//!   differ from the disk, the views' file is written (temporary file in
//!   the same directory, fsync, rename, fsync of the directory) or
//!   removed. A file written from a peer's event equals the views, so it
//!   is never logged again (no echo).
//!
//!   A file in a directory the node never looked at yields to the log
//!   where the log has a version of it, and is logged where it has none.
//!
//! Polling rather than file-system notification: a poll is needed at start
//! anyway, it sees changes made on network file systems and while the
//! event queue of inotify would have overflowed, and for a few small
//! directories with a stat cache it costs a `readdir` and a `stat` per file.

use crate::event::{BlobHash, Event};
use crate::metrics::{Collect, Counter, Encoder};
use crate::store::Store;
use crate::views::{keys, TxnViews, ViewError, ViewRead, ViewWrite};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest side file replicated: 16 MiB. Larger files are refused and
/// reported (status, `tandem_sidefiles_refused_total`), never truncated.
pub const MAX_FILE: u64 = 16 << 20;

/// Prefix of the temporary files the scanner writes before renaming them
/// into place; such names are never replicated.
pub const TMP_PREFIX: &str = ".tandem-tmp-";

/// Node-local file in the data directory: what each side file was on disk
/// when this node last looked.
pub const STATE_FILE: &str = "sidefiles.json";

/// Most directories `sync_dirs` may name.
pub const MAX_DIRS: usize = 64;

/// Why `name` may not be a side file's name.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("a side file's name is 1-255 bytes");
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are not file names");
    }
    if name.contains('/') || name.contains('\\') {
        return Err("a side file's name has no path separator (subdirectories are not replicated)");
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("control characters are not allowed in a side file's name");
    }
    if name.starts_with(TMP_PREFIX) {
        return Err("names starting with .tandem-tmp- are the scanner's temporary files");
    }
    Ok(())
}

/// Why `dir` may not be a `sync_dirs` entry: it must be absolute, spelled
/// without `.`, `..`, doubled or trailing slashes (so it names a directory
/// the same way on every node), and not `/`.
pub fn check_dir(dir: &str) -> Result<(), String> {
    let p = Path::new(dir);
    if !p.is_absolute() {
        return Err(format!("{dir:?} is not an absolute path"));
    }
    if dir.len() > 4096 || dir.chars().any(|c| c.is_control()) {
        return Err(format!("{dir:?}: at most 4096 bytes, no control characters"));
    }
    let mut normal = 0;
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(_) => normal += 1,
            _ => return Err(format!("{dir:?}: no \".\" or \"..\" components")),
        }
    }
    if normal == 0 {
        return Err(format!("{dir:?}: the root directory cannot be a sync dir"));
    }
    if dir.ends_with('/') || dir.contains("//") || dir.contains("/./") {
        return Err(format!("{dir:?}: write it without doubled or trailing slashes"));
    }
    Ok(())
}

/// `[mirror] sync_dirs`: either a list of absolute paths, each directory
/// named across nodes by its path (the same path on every node, as
/// SurgeMail does), or a table `name = "path"`, each directory named
/// across nodes by its name so the nodes may keep it in different places
/// (and two nodes on one host can be tested).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, expecting = "a list of absolute paths, or a table of name = \"absolute path\"")]
pub enum SyncDirs {
    Paths(Vec<String>),
    Named(BTreeMap<String, String>),
}

impl Default for SyncDirs {
    fn default() -> Self {
        SyncDirs::Paths(Vec::new())
    }
}

impl SyncDirs {
    /// (name across nodes, path here) of every directory.
    pub fn dirs(&self) -> Vec<(String, PathBuf)> {
        match self {
            SyncDirs::Paths(p) => p.iter().map(|d| (d.clone(), PathBuf::from(d))).collect(),
            SyncDirs::Named(m) => m.iter().map(|(n, d)| (n.clone(), PathBuf::from(d))).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            SyncDirs::Paths(p) => p.is_empty(),
            SyncDirs::Named(m) => m.is_empty(),
        }
    }

    /// Every problem of the setting (for `Config::validate`).
    pub fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        let paths: Vec<&String> = match self {
            SyncDirs::Paths(v) => v.iter().collect(),
            SyncDirs::Named(m) => {
                for n in m.keys() {
                    if let Err(e) = check_dir_id(n) {
                        p.push(format!("mirror.sync_dirs: {e}"));
                    }
                }
                m.values().collect()
            }
        };
        p.extend(
            paths
                .iter()
                .filter_map(|d| check_dir(d).err())
                .map(|e| format!("mirror.sync_dirs: {e}")),
        );
        let distinct: BTreeSet<&&String> = paths.iter().collect();
        if distinct.len() != paths.len() {
            p.push("mirror.sync_dirs: a directory is named twice".into());
        }
        if paths.len() > MAX_DIRS {
            p.push(format!("mirror.sync_dirs: at most {MAX_DIRS} directories"));
        }
        p
    }
}

/// Why `id` cannot name a sync dir across nodes: an absolute path as
/// [`check_dir`] wants it, or a name of 1-64 characters of A-Z a-z 0-9
/// `-` `_` `.` that is not `.` or `..`.
pub fn check_dir_id(id: &str) -> Result<(), String> {
    if id.starts_with('/') {
        return check_dir(id);
    }
    let ok = !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!("{id:?}: name a sync dir with 1-64 characters of A-Z a-z 0-9 - _ ."))
    }
}

/// A side file as the log says it is, in the views (`F dir 00 name`); its
/// bytes are under `B dir 00 name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideFileRec {
    pub hash: BlobHash,
    /// Permission bits (`0o777` at most).
    pub mode: u32,
    pub size: u64,
    /// (HLC, origin) of the change that wrote this record.
    pub clock: (u64, u64),
    /// The file was removed (a tombstone: hash, mode and size are zero).
    pub removed: bool,
}

/// Whether a change written at `new` replaces the record written at
/// `held`: the larger (HLC, origin) wins, on every node alike.
pub fn wins(new: (u64, u64), held: Option<(u64, u64)>) -> bool {
    held.is_none_or(|h| new > h)
}

/// Only permission bits replicate (no set-id or sticky bits).
pub fn mode_bits(mode: u32) -> u32 {
    mode & 0o777
}

/// Apply a side-file event written at `ts` = (HLC, origin) to the views.
/// A name or directory no node would have logged, or a body that is not
/// what its hash says or is over [`MAX_FILE`], changes nothing (logged as
/// a warning): the views stay a function of the log.
pub fn apply(v: &mut impl ViewWrite, ts: (u64, u64), event: &Event) -> Result<(), ViewError> {
    let (dir, name) = match event {
        Event::SideFileSet { dir, name, .. } | Event::SideFileRemoved { dir, name } => (dir, name),
        _ => return Ok(()),
    };
    if let Err(why) = check_dir_id(dir).and_then(|_| check_name(name).map_err(String::from)) {
        tracing::warn!(dir, name, "side-file event ignored: {why}");
        return Ok(());
    }
    if let Event::SideFileSet { hash, body, .. } = event {
        if body.len() as u64 > MAX_FILE || BlobHash::of(body) != *hash {
            tracing::warn!(
                dir,
                name,
                len = body.len(),
                "side-file event ignored: body over the limit or not what its hash says"
            );
            return Ok(());
        }
    }
    let k = keys::side_file(dir, name);
    if let Some(held) = record_at(v, &k)? {
        if !wins(ts, Some(held.clock)) {
            return Ok(());
        }
    }
    match event {
        Event::SideFileSet { hash, mode, body, .. } => {
            let rec = SideFileRec {
                hash: *hash,
                mode: mode_bits(*mode),
                size: body.len() as u64,
                clock: ts,
                removed: false,
            };
            v.put(&k, &crate::views::enc(&rec));
            v.put(&keys::side_body(dir, name), body);
        }
        _ => {
            let rec = SideFileRec {
                hash: BlobHash([0; 32]),
                mode: 0,
                size: 0,
                clock: ts,
                removed: true,
            };
            v.put(&k, &crate::views::enc(&rec));
            v.delete(&keys::side_body(dir, name));
        }
    }
    Ok(())
}

fn record_at(v: &impl ViewRead, k: &[u8]) -> Result<Option<SideFileRec>, ViewError> {
    match v.vget(k)? {
        Some(b) => postcard::from_bytes(&b).map(Some).map_err(|e| ViewError::Corrupt {
            key: String::from_utf8_lossy(k).into_owned(),
            reason: e.to_string(),
        }),
        None => Ok(None),
    }
}

/// Every record of `dir`, by name (tombstones included).
pub fn records(v: &impl ViewRead, dir: &str) -> Result<BTreeMap<String, SideFileRec>, ViewError> {
    let prefix = keys::side_files_prefix(dir);
    let mut out = BTreeMap::new();
    for (k, b) in v.vscan(&prefix)? {
        let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        let rec = postcard::from_bytes(&b).map_err(|e| ViewError::Corrupt {
            key: String::from_utf8_lossy(&k).into_owned(),
            reason: e.to_string(),
        })?;
        out.insert(name, rec);
    }
    Ok(out)
}

/// A file's content and mode, as compared between disk, memory and views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub hash: BlobHash,
    pub mode: u32,
}

impl SideFileRec {
    /// What the record says is on disk: `None` for a removal.
    pub fn seen(&self) -> Option<Seen> {
        (!self.removed).then_some(Seen {
            hash: self.hash,
            mode: self.mode,
        })
    }
}

/// What one pass does with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// A local change: log the file as it is on disk (`None`: removed).
    Log(Option<Seen>),
    /// The log moved on: write its file here.
    Write(Seen),
    /// The log says the file was removed: remove it here.
    Remove,
}

/// Decide what to do with one file, from what is on disk now (`disk`),
/// what was on disk when this node last looked (`known`; `None` when it
/// never looked at the directory) and what the log says (`log`; `None` without a record,
/// `Some(None)` for a removal).
///
/// A file the node never looked at counts as unchanged where the log has
/// a record of it (the log wins over a stale copy, as on a node added to
/// a mirror), and as new where it has none (so the first node to list a
/// directory logs what is in it). A file the log has no record of is never
/// removed.
pub fn decide(disk: Option<Seen>, known: Option<Option<Seen>>, log: Option<Option<Seen>>) -> Action {
    let k = match known {
        Some(k) => k,
        None if log.is_some() => disk,
        None => None,
    };
    let want = log.flatten();
    if disk != k {
        if disk != want {
            return Action::Log(disk);
        }
        return Action::Nothing;
    }
    match (log, want) {
        (None, _) if disk.is_some() => Action::Log(disk),
        (None, _) => Action::Nothing,
        (Some(_), Some(w)) if Some(w) != disk => Action::Write(w),
        (Some(_), None) if disk.is_some() => Action::Remove,
        _ => Action::Nothing,
    }
}

/// What `tandem status` shows of one sync dir.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirStatus {
    /// Its name across nodes (its path, or its name in the table).
    pub name: String,
    /// Its path on this node.
    pub path: String,
    /// Files the log holds for it.
    pub files: u64,
    /// The problem of its last pass, if it had one.
    pub error: Option<String>,
}

/// What `tandem status` shows of side files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub dirs: Vec<DirStatus>,
    /// Files in all sync dirs, as the log holds them.
    pub files: u64,
    /// Unix milliseconds at which the last pass found every directory in
    /// step with the log (0: not since start).
    pub last_sync_ms: u64,
    /// Unix milliseconds of the last change logged or written here.
    pub last_change_ms: u64,
    /// Changes of files here logged as events.
    pub logged: u64,
    /// Files written or removed here from the log.
    pub applied: u64,
    /// Files refused: over [`MAX_FILE`] or with a name that cannot
    /// replicate (counted once per change of the file).
    pub refused: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Counters and the last results, shared by the scanner, the admin
/// endpoint and the metrics listener.
#[derive(Debug, Default)]
pub struct SideFiles {
    logged: Counter,
    applied: Counter,
    refused: Counter,
    errors: Counter,
    last_sync_ms: AtomicU64,
    last_change_ms: AtomicU64,
    dirs: Mutex<Vec<DirStatus>>,
    last_error: Mutex<Option<String>>,
}

impl SideFiles {
    pub fn status(&self) -> Status {
        let dirs = self.dirs.lock().expect("side-file status lock").clone();
        Status {
            files: dirs.iter().map(|d| d.files).sum(),
            dirs,
            last_sync_ms: self.last_sync_ms.load(Ordering::Relaxed),
            last_change_ms: self.last_change_ms.load(Ordering::Relaxed),
            logged: self.logged.get(),
            applied: self.applied.get(),
            refused: self.refused.get(),
            errors: self.errors.get(),
            last_error: self.last_error.lock().expect("side-file status lock").clone(),
        }
    }

    fn error(&self, text: String) {
        tracing::warn!("side files: {text}");
        self.errors.inc();
        *self.last_error.lock().expect("side-file status lock") = Some(text);
    }

    fn refuse(&self, text: String) {
        tracing::warn!("side files: {text}");
        self.refused.inc();
        *self.last_error.lock().expect("side-file status lock") = Some(text);
    }
}

impl Collect for SideFiles {
    fn collect(&self, e: &mut Encoder) {
        let s = self.status();
        e.gauge(
            "tandem_sidefiles_files",
            "Files in the sync dirs (mirror.sync_dirs), as the log holds them.",
            s.files as f64,
        );
        e.counter(
            "tandem_sidefiles_logged_total",
            "Side-file changes made on this node and logged as events.",
            s.logged,
        );
        e.counter(
            "tandem_sidefiles_applied_total",
            "Side files written or removed on this node from the log.",
            s.applied,
        );
        e.counter(
            "tandem_sidefiles_refused_total",
            "Side files not replicated: over the size limit or with an unsafe name.",
            s.refused,
        );
        e.counter(
            "tandem_sidefiles_errors_total",
            "Side-file passes or file operations that failed (unreadable directory, failed write).",
            s.errors,
        );
        e.gauge(
            "tandem_sidefiles_last_sync_timestamp_seconds",
            "Unix time of the last pass that found every sync dir in step with the log (0: none since start).",
            s.last_sync_ms as f64 / 1000.0,
        );
    }
}

/// The side-file lines of `tandem status`.
pub fn print_status(s: &Status) {
    let when = |ms: u64| {
        if ms == 0 {
            "never".to_string()
        } else {
            crate::metrics::status::utc(ms)
        }
    };
    println!(
        "sidefiles   {} files in {} dirs   last sync {}   last change {}   logged {}   applied {}   refused {}   errors {}{}",
        s.files,
        s.dirs.len(),
        when(s.last_sync_ms),
        when(s.last_change_ms),
        s.logged,
        s.applied,
        s.refused,
        s.errors,
        s.last_error.as_deref().map(|e| format!("   last error: {e}")).unwrap_or_default()
    );
    for d in &s.dirs {
        println!(
            "  dir       {}{}   {} files{}",
            d.path,
            if d.name == d.path {
                String::new()
            } else {
                format!(" ({})", d.name)
            },
            d.files,
            d.error.as_deref().map(|e| format!("   error: {e}")).unwrap_or_default()
        );
    }
}

/// What a file looked like at the last `stat`, to hash it again only when
/// it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    mode: u32,
}

#[cfg(unix)]
fn stat_of(md: &std::fs::Metadata) -> Stat {
    use std::os::unix::fs::MetadataExt;
    Stat {
        len: md.len(),
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
        ino: md.ino(),
        mode: mode_bits(md.mode()),
    }
}

/// Open a file for reading without following a symbolic link.
fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// A file's bytes, at most [`MAX_FILE`] (`None`: it is larger).
fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let f = open_nofollow(path)?;
    let mut body = Vec::new();
    f.take(MAX_FILE + 1).read_to_end(&mut body)?;
    Ok((body.len() as u64 <= MAX_FILE).then_some(body))
}

/// One directory entry as a pass sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDisk {
    File(Seen),
    /// Over [`MAX_FILE`]: neither logged nor overwritten while it is.
    TooLarge(u64),
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Write `body` as `dir/name` with `mode`: a temporary file in the same
/// directory, fsync, rename over the name, fsync of the directory. The
/// rename replaces a symbolic link at the name rather than following it.
pub fn write_atomic(dir: &Path, name: &str, body: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    check_name(name).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tmp = dir.join(format!("{TMP_PREFIX}{}", hex::encode(rand::random::<[u8; 8]>())));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)?;
        f.write_all(body)?;
        // Set after creation: the umask would strip bits from `mode`.
        f.set_permissions(std::fs::Permissions::from_mode(mode_bits(mode)))?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r?;
    sync_dir(dir)
}

/// Remove the regular file `dir/name` (a symbolic link or directory of
/// that name is left alone and reported), then fsync the directory.
pub fn remove_file(dir: &Path, name: &str) -> std::io::Result<()> {
    let p = dir.join(name);
    match std::fs::symlink_metadata(&p) {
        Ok(md) if md.file_type().is_file() => {
            std::fs::remove_file(&p)?;
            sync_dir(dir)
        }
        Ok(_) => Err(std::io::Error::other("not a regular file; left alone")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The on-disk state file: dir -> name -> (hash hex, mode).
type Known = BTreeMap<String, BTreeMap<String, (String, u32)>>;

/// The scanner's state between passes.
struct Scanner {
    store: Store,
    /// (name across nodes, path here).
    dirs: Vec<(String, PathBuf)>,
    state_path: PathBuf,
    /// What each file was on disk at the last look (`None`: absent).
    known: HashMap<(String, String), Option<Seen>>,
    /// Dirs this node has looked at before (in this process or, by the
    /// state file, an earlier one): a name without a `known` entry there
    /// was absent at the last look.
    looked: BTreeSet<String>,
    /// Stat and hash of each file at the last look.
    stats: HashMap<(String, String), (Stat, BlobHash)>,
    /// Files refused, and the size they were refused at (reported once).
    refused: HashMap<(String, String), u64>,
    shared: Arc<SideFiles>,
    first: bool,
}

fn hash_of_hex(h: &str) -> Option<BlobHash> {
    let b = hex::decode(h).ok()?;
    Some(BlobHash(b.try_into().ok()?))
}

impl Scanner {
    fn new(store: Store, dirs: Vec<(String, PathBuf)>, data_dir: &Path, shared: Arc<SideFiles>) -> Scanner {
        let state_path = data_dir.join(STATE_FILE);
        let mut known = HashMap::new();
        let mut looked = BTreeSet::new();
        match std::fs::read(&state_path) {
            Ok(b) => match serde_json::from_slice::<Known>(&b) {
                Ok(k) => {
                    for (dir, files) in k {
                        looked.insert(dir.clone());
                        for (name, (h, mode)) in files {
                            let seen = if h.is_empty() {
                                None
                            } else {
                                hash_of_hex(&h).map(|hash| Seen { hash, mode })
                            };
                            known.insert((dir.clone(), name), seen);
                        }
                    }
                }
                Err(e) => tracing::warn!(path = %state_path.display(), error = %e, "side-file state unreadable; starting without it"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %state_path.display(), error = %e, "side-file state unreadable; starting without it"),
        }
        Scanner {
            store,
            dirs,
            state_path,
            known,
            looked,
            stats: HashMap::new(),
            refused: HashMap::new(),
            shared,
            first: true,
        }
    }

    fn save_known(&self) -> std::io::Result<()> {
        let mut k: Known = self.looked.iter().map(|d| (d.clone(), BTreeMap::new())).collect();
        for ((dir, name), seen) in &self.known {
            let v = match seen {
                Some(s) => (hex::encode(s.hash.0), s.mode),
                None => (String::new(), 0),
            };
            k.entry(dir.clone()).or_default().insert(name.clone(), v);
        }
        let body = serde_json::to_vec(&k).map_err(std::io::Error::other)?;
        let dir = self.state_path.parent().unwrap_or(Path::new("."));
        let name = self.state_path.file_name().and_then(|n| n.to_str()).unwrap_or(STATE_FILE);
        write_atomic(dir, name, &body, 0o600)
    }

    /// Read the directory `dir` (at `path`): its regular files with valid
    /// names, hashed when their stat changed.
    fn scan(&mut self, dir: &str, path: &Path) -> std::io::Result<BTreeMap<String, OnDisk>> {
        let mut out = BTreeMap::new();
        let at = path.display();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                let key = (dir.to_string(), entry.file_name().to_string_lossy().into_owned());
                if self.refused.insert(key, 0).is_none() {
                    self.shared
                        .refuse(format!("{at}/{:?}: the name is not UTF-8; not replicated", entry.file_name()));
                }
                continue;
            };
            // `DirEntry::file_type` does not follow symbolic links.
            let ft = entry.file_type()?;
            if name.starts_with(TMP_PREFIX) {
                // Left by a pass that did not finish (a crash): never ours
                // to keep once a new scanner runs.
                if self.first && ft.is_file() {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            if !ft.is_file() {
                continue;
            }
            let key = (dir.to_string(), name.clone());
            if let Err(why) = check_name(&name) {
                if self.refused.insert(key, 0).is_none() {
                    self.shared.refuse(format!("{at}/{name:?}: {why}; not replicated"));
                }
                continue;
            }
            let md = match entry.metadata() {
                Ok(md) => md,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let st = stat_of(&md);
            if st.len > MAX_FILE {
                if self.refused.insert(key, st.len) != Some(st.len) {
                    self.shared.refuse(format!(
                        "{dir}/{name}: {} bytes is over the {MAX_FILE}-byte side-file limit; not replicated",
                        st.len
                    ));
                }
                out.insert(name, OnDisk::TooLarge(st.len));
                continue;
            }
            self.refused.remove(&key);
            let hash = match self.stats.get(&key) {
                Some((s, h)) if *s == st => *h,
                _ => {
                    let body = match read_bounded(&entry.path()) {
                        Ok(Some(b)) => b,
                        // Grew past the limit since the stat: the next pass
                        // sees and reports it.
                        Ok(None) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(std::io::Error::new(e.kind(), format!("{name}: {e}"))),
                    };
                    let h = BlobHash::of(&body);
                    self.stats.insert(key, (st, h));
                    h
                }
            };
            out.insert(name, OnDisk::File(Seen { hash, mode: st.mode }));
        }
        Ok(out)
    }

    /// Log a local change of `dir/name` (in `path`); `what` is the file as
    /// scanned (`None`: removed). The file is read again so the body logged
    /// is the one its hash names. Returns what was logged.
    fn log(&self, dir: &str, path: &Path, name: &str, what: Option<Seen>) -> anyhow::Result<Option<Option<Seen>>> {
        let event = match what {
            Some(seen) => {
                let Some(body) = read_bounded(&path.join(name))? else {
                    return Ok(None);
                };
                let hash = BlobHash::of(&body);
                Event::SideFileSet {
                    dir: dir.to_string(),
                    name: name.to_string(),
                    hash,
                    mode: seen.mode,
                    body,
                }
            }
            None => Event::SideFileRemoved {
                dir: dir.to_string(),
                name: name.to_string(),
            },
        };
        let logged = match &event {
            Event::SideFileSet { hash, mode, .. } => Some(Seen { hash: *hash, mode: *mode }),
            _ => None,
        };
        let (d, n) = (dir.to_string(), name.to_string());
        self.store.run_blocking(move |txn, cfs| {
            // Logged only if the views do not already say so.
            let held = record_at(&TxnViews { txn, cf: cfs.views }, &keys::side_file(&d, &n))?;
            if held.as_ref().map(|r| r.seen()) != Some(logged) {
                crate::mutate::emit(txn, cfs, event)?;
            }
            Ok(())
        })?;
        Ok(Some(logged))
    }

    /// One pass over every directory. Returns whether every directory was
    /// read and brought in step.
    fn pass(&mut self) -> bool {
        let mut all_ok = true;
        let mut statuses = Vec::new();
        let mut changed_known = false;
        for (dir, path) in self.dirs.clone() {
            let (ok, changed) = match self.pass_dir(&dir, &path) {
                Ok((files, changed, problems)) => {
                    let ok = problems.is_empty();
                    statuses.push(DirStatus {
                        name: dir.clone(),
                        path: path.display().to_string(),
                        files,
                        error: problems.last().cloned(),
                    });
                    for p in problems {
                        self.shared.error(p);
                    }
                    (ok, changed)
                }
                Err(e) => {
                    let text = format!("{}: {e:#}", path.display());
                    self.shared.error(text.clone());
                    let files = records(&self.store.views(), &dir)
                        .map(|r| r.values().filter(|r| !r.removed).count() as u64)
                        .unwrap_or(0);
                    statuses.push(DirStatus {
                        name: dir.clone(),
                        path: path.display().to_string(),
                        files,
                        error: Some(text),
                    });
                    (false, false)
                }
            };
            all_ok &= ok;
            changed_known |= changed;
        }
        if changed_known || self.first {
            if let Err(e) = self.save_known() {
                self.shared.error(format!("writing {}: {e}", self.state_path.display()));
                all_ok = false;
            }
        }
        self.first = false;
        *self.shared.dirs.lock().expect("side-file status lock") = statuses;
        if all_ok {
            self.shared.last_sync_ms.store(crate::repl::now_ms(), Ordering::Relaxed);
        }
        all_ok
    }

    /// One pass over `dir`: (files the log holds, whether `known` changed,
    /// problems with single files).
    fn pass_dir(&mut self, dir: &str, path: &Path) -> anyhow::Result<(u64, bool, Vec<String>)> {
        let disk = self.scan(dir, path)?;
        let at = path.display();
        let log = records(&self.store.views(), dir)?;
        let names: BTreeSet<String> = disk
            .keys()
            .chain(log.keys())
            .cloned()
            .chain(self.known.keys().filter(|(d, _)| d == dir).map(|(_, n)| n.clone()))
            .collect();
        let mut changed = false;
        let mut problems = Vec::new();
        for name in names {
            let key = (dir.to_string(), name.clone());
            let on_disk = match disk.get(&name) {
                Some(OnDisk::TooLarge(_)) => continue,
                Some(OnDisk::File(s)) => Some(*s),
                None => None,
            };
            let known = match self.known.get(&key) {
                Some(k) => Some(*k),
                None if self.looked.contains(dir) => Some(None),
                None => None,
            };
            let rec = log.get(&name);
            let action = decide(on_disk, known, rec.map(|r| r.seen()));
            let now_known = match action {
                Action::Nothing => on_disk,
                Action::Log(what) => match self.log(dir, path, &name, what) {
                    Ok(Some(logged)) => {
                        self.shared.logged.inc();
                        self.shared.last_change_ms.store(crate::repl::now_ms(), Ordering::Relaxed);
                        tracing::info!(dir, name, removed = logged.is_none(), "side file changed here: logged");
                        logged
                    }
                    // Grew past the limit meanwhile: the next pass reports it.
                    Ok(None) => continue,
                    Err(e) => {
                        problems.push(format!("{at}/{name}: logging the change failed: {e:#}"));
                        continue;
                    }
                },
                Action::Write(want) => {
                    let body = self.store.views().vget(&keys::side_body(dir, &name))?;
                    let r = match body {
                        Some(b) if BlobHash::of(&b) == want.hash => {
                            write_atomic(path, &name, &b, want.mode).map_err(|e| format!("writing: {e}"))
                        }
                        _ => Err("the views hold no body for it".to_string()),
                    };
                    match r {
                        Ok(()) => {
                            self.shared.applied.inc();
                            self.shared.last_change_ms.store(crate::repl::now_ms(), Ordering::Relaxed);
                            tracing::info!(dir, name, "side file written from the log");
                            Some(want)
                        }
                        Err(e) => {
                            problems.push(format!("{at}/{name}: {e}"));
                            continue;
                        }
                    }
                }
                Action::Remove => match remove_file(path, &name) {
                    Ok(()) => {
                        self.shared.applied.inc();
                        self.shared.last_change_ms.store(crate::repl::now_ms(), Ordering::Relaxed);
                        tracing::info!(dir, name, "side file removed from the log");
                        self.stats.remove(&key);
                        None
                    }
                    Err(e) => {
                        problems.push(format!("{at}/{name}: removing: {e}"));
                        continue;
                    }
                },
            };
            if known != Some(now_known) {
                changed = true;
                self.known.insert(key, now_known);
            }
        }
        if self.looked.insert(dir.to_string()) {
            changed = true;
        }
        let files = records(&self.store.views(), dir)?.values().filter(|r| !r.removed).count() as u64;
        Ok((files, changed, problems))
    }
}

/// Shortest time between two passes woken by commits.
const MIN_GAP: Duration = Duration::from_millis(200);

/// The scanner of one node: a pass every `interval` and after commits (a
/// peer's change applied), until shutdown. Nothing to do without dirs.
pub async fn run(
    store: Store,
    dirs: Vec<(String, PathBuf)>,
    interval: Duration,
    data_dir: PathBuf,
    shared: Arc<SideFiles>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if dirs.is_empty() {
        return;
    }
    *shared.dirs.lock().expect("side-file status lock") = dirs
        .iter()
        .map(|(n, p)| DirStatus {
            name: n.clone(),
            path: p.display().to_string(),
            ..Default::default()
        })
        .collect();
    let mut commits = store.commits();
    let mut scanner = Some(Scanner::new(store, dirs, &data_dir, shared.clone()));
    loop {
        let Some(mut s) = scanner.take() else { return };
        match tokio::task::spawn_blocking(move || {
            s.pass();
            s
        })
        .await
        {
            Ok(s) => scanner = Some(s),
            Err(e) => {
                shared.error(format!("the side-file scanner failed: {e}"));
                return;
            }
        }
        tokio::time::sleep(MIN_GAP.min(interval)).await;
        tokio::select! {
            _ = tokio::time::sleep(interval.saturating_sub(MIN_GAP)) => {}
            r = commits.changed() => if r.is_err() { return },
            _ = crate::server::wait_shutdown(&mut shutdown) => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["cert.pem", "a", "bayes_toks", ".hidden", "x..y", "ünï"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "/etc",
            "a\\b",
            "a\nb",
            "a\0b",
            ".tandem-tmp-1",
            long.as_str(),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn dirs_are_checked() {
        assert_eq!(check_dir("/etc/tandem/certs"), Ok(()));
        for bad in ["etc/x", "/", "/etc/../x", "/etc/./x", "/etc/x/", "//etc", "/etc//x", "/a\nb", ""] {
            assert!(check_dir(bad).is_err(), "{bad:?} accepted");
        }
        let twice = SyncDirs::Paths(vec!["/a".to_string(), "/a".to_string()]);
        assert!(twice.check().iter().any(|p| p.contains("twice")));
        let named = SyncDirs::Named([("certs".to_string(), "/a".to_string()), ("../x".to_string(), "b".to_string())].into());
        let p = named.check();
        assert_eq!(p.len(), 2, "{p:?}");
        for ok in ["certs", "spam-train", "a.b_c"] {
            assert_eq!(check_dir_id(ok), Ok(()));
        }
        for bad in ["", ".", "..", "a/b", "a b", "x\0"] {
            assert!(check_dir_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sync_dirs_parse_as_a_list_or_a_table() {
        use crate::config::Config;
        let t = Path::new("t.toml");
        let c = Config::parse("[mirror]\nsync_dirs = [\"/etc/tandem/certs\"]\n", t).unwrap();
        assert_eq!(
            c.mirror.sync_dirs.dirs(),
            vec![("/etc/tandem/certs".to_string(), PathBuf::from("/etc/tandem/certs"))]
        );
        let c = Config::parse("[mirror]\nsync_dirs = { certs = \"/srv/c\" }\nsync_dirs_interval_ms = 500\n", t).unwrap();
        assert_eq!(c.mirror.sync_dirs.dirs(), vec![("certs".to_string(), PathBuf::from("/srv/c"))]);
        assert_eq!(c.mirror.sync_dirs_interval_ms, 500);
        assert!(Config::default().mirror.sync_dirs.is_empty());
        let e = Config::parse("[mirror]\nsync_dirs = [\"etc/x\", \"/a/../b\"]\nsync_dirs_interval_ms = 5\n", t)
            .unwrap_err()
            .to_string();
        for want in [
            "not an absolute path",
            "no \".\" or \"..\"",
            "sync_dirs_interval_ms must be at least 100",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = Config::parse("[mirror]\nsync_dirs = \"/etc/x\"\n", t).unwrap_err().to_string();
        assert!(e.contains("a list of absolute paths, or a table"), "{e}");
    }

    fn seen(n: u8) -> Option<Seen> {
        Some(Seen {
            hash: BlobHash([n; 32]),
            mode: 0o644,
        })
    }

    #[test]
    fn decisions() {
        use Action::*;
        // In step: nothing.
        assert_eq!(decide(seen(1), Some(seen(1)), Some(seen(1))), Nothing);
        // Changed here: logged.
        assert_eq!(decide(seen(2), Some(seen(1)), Some(seen(1))), Log(seen(2)));
        assert_eq!(decide(None, Some(seen(1)), Some(seen(1))), Log(None));
        // Changed by a peer: written, or removed.
        assert_eq!(decide(seen(1), Some(seen(1)), Some(seen(2))), Write(seen(2).unwrap()));
        assert_eq!(decide(seen(1), Some(seen(1)), Some(None)), Remove);
        assert_eq!(decide(None, Some(None), Some(seen(2))), Write(seen(2).unwrap()));
        // Written from the log already (the pass that wrote it crashed
        // before it noted so): no echo.
        assert_eq!(decide(seen(2), Some(seen(1)), Some(seen(2))), Nothing);
        // A mode change alone is a change.
        let m = Some(Seen {
            hash: BlobHash([1; 32]),
            mode: 0o600,
        });
        assert_eq!(decide(m, Some(seen(1)), Some(seen(1))), Log(m));
        // Never looked at: the log wins where it has a record ...
        assert_eq!(decide(seen(1), None, Some(seen(2))), Write(seen(2).unwrap()));
        assert_eq!(decide(seen(1), None, Some(None)), Remove);
        // ... and a file it knows nothing of is logged, never removed.
        assert_eq!(decide(seen(1), None, None), Log(seen(1)));
        assert_eq!(decide(seen(1), Some(seen(1)), None), Log(seen(1)));
        assert_eq!(decide(None, Some(seen(1)), None), Nothing);
    }

    #[test]
    fn the_larger_clock_wins() {
        assert!(wins((5, 1), None));
        assert!(wins((5, 2), Some((5, 1))));
        assert!(!wins((5, 1), Some((5, 2))));
        assert!(wins((6, 1), Some((5, 2))));
        assert!(!wins((5, 1), Some((5, 1))));
    }

    fn set(body: &[u8], mode: u32) -> Event {
        Event::SideFileSet {
            dir: "/srv/certs".into(),
            name: "a.pem".into(),
            hash: BlobHash::of(body),
            mode,
            body: body.to_vec(),
        }
    }

    fn removed() -> Event {
        Event::SideFileRemoved {
            dir: "/srv/certs".into(),
            name: "a.pem".into(),
        }
    }

    /// Apply `events` (with their clocks) in order to a fresh store; the
    /// record and body the views end with.
    fn after(events: Vec<((u64, u64), Event)>) -> (Option<SideFileRec>, Option<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n", crate::store::wal_options("n")).unwrap();
        store
            .run_blocking(move |txn, cfs| {
                for (ts, e) in &events {
                    apply(&mut TxnViews { txn, cf: cfs.views }, *ts, e)?;
                }
                Ok(())
            })
            .unwrap();
        let v = store.views();
        let rec = record_at(&v, &keys::side_file("/srv/certs", "a.pem")).unwrap();
        let body = v.vget(&keys::side_body("/srv/certs", "a.pem")).unwrap();
        (rec, body)
    }

    /// Concurrent changes of one file end the same whatever the order:
    /// the larger (HLC, origin) wins, a removal included.
    #[test]
    fn concurrent_changes_converge() {
        let a = ((100, 1), set(b"from a", 0o644));
        let b = ((100, 2), set(b"from b", 0o600));
        let r = ((99, 3), removed());
        let orders = [
            vec![a.clone(), b.clone(), r.clone()],
            vec![b.clone(), a.clone(), r.clone()],
            vec![r.clone(), a.clone(), b.clone()],
            vec![r.clone(), b.clone(), a.clone()],
        ];
        for o in orders {
            let (rec, body) = after(o);
            let rec = rec.unwrap();
            assert_eq!((rec.clock, rec.mode, rec.removed), ((100, 2), 0o600, false));
            assert_eq!(body.as_deref(), Some(&b"from b"[..]));
        }
        // A later removal wins over both, and an older change arriving
        // after it does not bring the file back.
        let late = ((101, 1), removed());
        for o in [vec![a.clone(), late.clone(), b.clone()], vec![late.clone(), b.clone(), a.clone()]] {
            let (rec, body) = after(o);
            assert!(rec.unwrap().removed);
            assert_eq!(body, None);
        }
    }

    /// Events no node would log change nothing.
    #[test]
    fn unsafe_events_are_ignored() {
        let mut bad_hash = set(b"x", 0o644);
        if let Event::SideFileSet { hash, .. } = &mut bad_hash {
            *hash = BlobHash::of(b"y");
        }
        let dotdot = Event::SideFileSet {
            dir: "/srv/certs".into(),
            name: "..".into(),
            hash: BlobHash::of(b"x"),
            mode: 0o644,
            body: b"x".to_vec(),
        };
        let relative = Event::SideFileRemoved {
            dir: "srv".into(),
            name: "a.pem".into(),
        };
        let (rec, body) = after(vec![((1, 1), bad_hash), ((2, 1), dotdot), ((3, 1), relative)]);
        assert_eq!((rec, body), (None, None));
        // Set-id bits do not replicate.
        let (rec, _) = after(vec![((1, 1), set(b"x", 0o4755))]);
        assert_eq!(rec.unwrap().mode, 0o755);
    }

    /// The scanner on a real store and directory: a local change is logged
    /// once, a change from the log is written and not logged back (also
    /// when the pass that wrote it did not get to note it), removals go
    /// both ways, and links, subdirectories and big files stay out.
    #[test]
    fn scanner_logs_local_changes_once_and_never_echoes() {
        let dir = tempfile::tempdir().unwrap();
        let (db, data, sync) = (dir.path().join("db"), dir.path().join("data"), dir.path().join("certs"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&sync).unwrap();
        let store = Store::open(&db, "n", crate::store::wal_options("n")).unwrap();
        let origin = store.wal().local_origin();
        let head = || store.wal().heads().get(origin);
        let shared = Arc::new(SideFiles::default());
        let new_scanner = || Scanner::new(store.clone(), vec![("certs".into(), sync.clone())], &data, shared.clone());
        let mut sc = new_scanner();
        std::fs::write(sync.join("a.pem"), b"local").unwrap();
        std::fs::create_dir(sync.join("sub")).unwrap();
        std::fs::write(sync.join("sub/x"), b"x").unwrap();
        std::os::unix::fs::symlink(sync.join("a.pem"), sync.join("link")).unwrap();
        assert!(sc.pass());
        assert_eq!(head(), 1, "one file, one entry; the link and the subdirectory stay out");
        assert!(sc.pass());
        assert_eq!(head(), 1, "logged twice");

        // A peer's change, applied to the views: written here, not logged.
        let body = b"from the peer".to_vec();
        let e = Event::SideFileSet {
            dir: "certs".into(),
            name: "a.pem".into(),
            hash: BlobHash::of(&body),
            mode: 0o600,
            body: body.clone(),
        };
        let peer = |e: Event| {
            store
                .run_blocking(move |t, c| {
                    let ts = (t.peek_hlc() + 1000, u64::MAX);
                    apply(&mut TxnViews { txn: t, cf: c.views }, ts, &e)?;
                    Ok(())
                })
                .unwrap()
        };
        peer(e);
        assert!(sc.pass());
        assert_eq!(std::fs::read(sync.join("a.pem")).unwrap(), body);
        assert!(sc.pass());
        assert_eq!(head(), 1, "the peer's change was logged back");
        assert_eq!(shared.status().applied, 1);

        // A new scanner whose state file still has the old content (the
        // pass that wrote the file stopped before saving): no echo either.
        let mut known: Known = BTreeMap::new();
        known
            .entry("certs".into())
            .or_default()
            .insert("a.pem".into(), (hex::encode(BlobHash::of(b"local").0), 0o644));
        std::fs::write(data.join(STATE_FILE), serde_json::to_vec(&known).unwrap()).unwrap();
        let mut sc = new_scanner();
        assert!(sc.pass());
        assert_eq!(head(), 1, "a file written from the log was logged after a restart");

        // Removed here: logged; removed by a peer: removed here.
        std::fs::remove_file(sync.join("a.pem")).unwrap();
        assert!(sc.pass());
        assert_eq!(head(), 2);
        std::fs::write(sync.join("b.pem"), b"b").unwrap();
        assert!(sc.pass());
        assert_eq!(head(), 3);
        peer(Event::SideFileRemoved {
            dir: "certs".into(),
            name: "b.pem".into(),
        });
        assert!(sc.pass());
        assert!(!sync.join("b.pem").exists());
        assert!(sc.pass());
        assert_eq!(head(), 3, "the peer's removal was logged back");
        assert!(std::fs::symlink_metadata(sync.join("link")).is_ok() && sync.join("sub/x").exists());

        // Too big: refused once, reported, not logged.
        std::fs::write(sync.join("big"), vec![0u8; MAX_FILE as usize + 1]).unwrap();
        assert!(sc.pass());
        assert!(sc.pass());
        assert_eq!(head(), 3);
        let st = shared.status();
        assert_eq!(st.refused, 1);
        assert!(st.last_error.unwrap().contains("big"));
        assert_eq!(st.files, 0);
    }

    #[test]
    fn atomic_write_and_remove_leave_links_alone() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), "f", b"one", 0o640).unwrap();
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"one");
        let mode = std::fs::metadata(d.path().join("f")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // A link at the name is replaced, its target untouched.
        let target = d.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("l")).unwrap();
        write_atomic(d.path(), "l", b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(d.path().join("l")).unwrap().file_type().is_file());
        // Removing a link is refused.
        std::os::unix::fs::symlink(&target, d.path().join("l2")).unwrap();
        assert!(remove_file(d.path(), "l2").is_err());
        assert!(target.exists());
        remove_file(d.path(), "f").unwrap();
        assert!(!d.path().join("f").exists());
        assert!(write_atomic(d.path(), "../escape", b"x", 0o644).is_err());
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(TMP_PREFIX))
            .collect();
        assert!(left.is_empty());
    }
}
