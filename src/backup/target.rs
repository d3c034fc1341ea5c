//! Where backups go. A target stores named objects that are written once
//! and never changed: [`Target::put_new`] writes an object only when the
//! name is free, so the writer needs no right to delete or overwrite, and a
//! write-once bucket serves as well as a directory.

use std::collections::BTreeSet;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A store of write-once objects named by `/`-separated relative paths.
pub trait Target: Send + Sync {
    /// Write an object under `name` unless one exists: `write` produces its
    /// bytes. Returns whether it was written (false: the name was taken and
    /// nothing was changed). The object is complete under its name or not
    /// there at all; it is durable once [`Target::sync`] returns.
    fn put_new(&self, name: &str, write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<bool>;
    /// Read an object.
    fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>>;
    /// Read an object from byte `offset` on (a ranged read: nothing before
    /// it is fetched).
    fn open_at(&self, name: &str, offset: u64) -> io::Result<Box<dyn Read + Send>>;
    /// Read `len` bytes of an object from byte `offset` (a ranged read:
    /// only those bytes are fetched). An object that ends before
    /// `offset + len` gives an `UnexpectedEof` error.
    fn read_range(&self, name: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut r = self.open_at(name, offset)?;
        let mut v = Vec::new();
        (&mut r).take(len).read_to_end(&mut v)?;
        if (v.len() as u64) < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the object ends at byte offset {}, before {}",
                    offset + v.len() as u64,
                    offset + len
                ),
            ));
        }
        Ok(v)
    }
    /// The object's length and its last `max` bytes (all of it when
    /// shorter): one ranged read of the tail, as a run object's footer
    /// and manifest are found.
    fn read_tail(&self, name: &str, max: u64) -> io::Result<(u64, Vec<u8>)>;
    /// Whether an object exists.
    fn exists(&self, name: &str) -> io::Result<bool>;
    /// Names of the objects directly below `dir` (not recursive), sorted.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Make every object written so far durable.
    fn sync(&self) -> io::Result<()>;
    /// Remove an object (absent is no error). Only retention (`prune`)
    /// calls it, with credentials of its own: a backup writer never does.
    fn delete(&self, name: &str) -> io::Result<()>;
    /// Where the target is, for messages.
    fn describe(&self) -> String;
    /// Failed requests that were tried again so far.
    fn retries(&self) -> u64 {
        0
    }
}

/// A directory on a local or network file system.
pub struct DirTarget {
    root: PathBuf,
    /// Directories that gained an entry since the last sync.
    dirty: Mutex<BTreeSet<PathBuf>>,
    seq: AtomicU64,
}

/// Subdirectory for objects being written (never read as objects).
const TMP_DIR: &str = "tmp";

pub(crate) fn check_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad object name {name:?}")))
    }
}

impl DirTarget {
    /// A target rooted at `root`. Nothing is created until the first write
    /// (a reader needs no write access).
    pub fn new(root: &Path) -> io::Result<DirTarget> {
        Ok(DirTarget {
            root: root.to_path_buf(),
            dirty: Mutex::new(BTreeSet::new()),
            seq: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of an object.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn mark_dirty(&self, dir: &Path) {
        self.dirty.lock().expect("dirty lock").insert(dir.to_path_buf());
    }
}

/// The writer of a new object in a directory. `flush` makes what was
/// written so far durable (`sync_data`): a writer that keeps an object
/// open for a while (the continuous backup's run) flushes as it goes, so
/// little is left for the sync that ends the object.
struct DirWriter(BufWriter<std::fs::File>);

impl Write for DirWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.0.write_all(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.0.get_ref().sync_data()
    }
}

impl Target for DirTarget {
    fn put_new(&self, name: &str, write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<bool> {
        check_name(name)?;
        let dest = self.root.join(name);
        if dest.exists() {
            return Ok(false);
        }
        let parent = dest.parent().expect("object names are relative").to_path_buf();
        if !parent.exists() {
            if !self.root.exists() {
                std::fs::create_dir_all(&self.root)?;
                if let Some(up) = self.root.parent() {
                    self.mark_dirty(up);
                }
            }
            std::fs::create_dir_all(&parent)?;
            // The new directory's own entry must reach the disk too.
            let mut d = parent.as_path();
            while let Some(up) = d.parent() {
                self.mark_dirty(up);
                if up == self.root {
                    break;
                }
                d = up;
            }
        }
        std::fs::create_dir_all(self.root.join(TMP_DIR))?;
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}.{}.{}",
            name.replace('/', "_"),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let r = (|| -> io::Result<bool> {
            let f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            let mut w = DirWriter(BufWriter::with_capacity(1 << 20, f));
            write(&mut w)?;
            let f = w.0.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            drop(f);
            // A hard link fails when the name is taken: rename-if-absent.
            match std::fs::hard_link(&tmp, &dest) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })();
        let _ = std::fs::remove_file(&tmp);
        if let Ok(true) = r {
            self.mark_dirty(&parent);
        }
        r
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        self.open_at(name, 0)
    }

    fn open_at(&self, name: &str, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        use std::io::{Seek, SeekFrom};
        check_name(name)?;
        let mut f = std::fs::File::open(self.root.join(name))?;
        if offset > 0 {
            f.seek(SeekFrom::Start(offset))?;
        }
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
    }

    fn read_range(&self, name: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        check_name(name)?;
        let f = std::fs::File::open(self.root.join(name))?;
        let size = f.metadata()?.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the object ends at byte offset {size}, before {}", offset.saturating_add(len)),
            ));
        }
        let mut v = vec![0u8; len as usize];
        f.read_exact_at(&mut v, offset)?;
        Ok(v)
    }

    fn read_tail(&self, name: &str, max: u64) -> io::Result<(u64, Vec<u8>)> {
        use std::os::unix::fs::FileExt;
        check_name(name)?;
        let f = std::fs::File::open(self.root.join(name))?;
        let size = f.metadata()?.len();
        let n = size.min(max);
        let mut v = vec![0u8; n as usize];
        f.read_exact_at(&mut v, size - n)?;
        Ok((size, v))
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        check_name(name)?;
        Ok(self.root.join(name).exists())
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        check_name(dir)?;
        let mut out = Vec::new();
        match std::fs::read_dir(self.root.join(dir)) {
            Ok(rd) => {
                for e in rd {
                    let e = e?;
                    if let Some(n) = e.file_name().to_str() {
                        out.push(n.to_string());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        out.sort();
        Ok(out)
    }

    fn sync(&self) -> io::Result<()> {
        let dirs = std::mem::take(&mut *self.dirty.lock().expect("dirty lock"));
        // Deepest first: a directory's entries, then its entry in its parent.
        for d in dirs.iter().rev() {
            if let Err(e) = std::fs::File::open(d).and_then(|f| f.sync_all()) {
                self.dirty.lock().expect("dirty lock").extend(dirs.iter().cloned());
                return Err(e);
            }
        }
        Ok(())
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        match std::fs::remove_file(self.root.join(name)) {
            Ok(()) => {
                if let Some(p) = self.root.join(name).parent() {
                    self.mark_dirty(p);
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// Reads through another target with retries: a failed open, listing or
/// read is tried again (at most `attempts` times in a row, pausing 10 ms,
/// doubling up to 1 s), reopening the object and skipping to where the last
/// good read ended, so a reader never sees a transient failure. A missing
/// object is not retried. Writes pass through unchanged.
pub struct Retrying {
    inner: Arc<dyn Target>,
    attempts: u32,
    retries: Arc<AtomicU64>,
}

impl Retrying {
    pub fn new(inner: Arc<dyn Target>, attempts: u32) -> Retrying {
        Retrying {
            inner,
            attempts: attempts.max(1),
            retries: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Failed attempts that were retried so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

fn pause(attempt: u32) {
    std::thread::sleep(Duration::from_millis((10u64 << attempt.min(7)).min(1000)));
}

fn with_retries<R>(attempts: u32, retries: &AtomicU64, mut f: impl FnMut() -> io::Result<R>) -> io::Result<R> {
    let mut attempt = 0;
    loop {
        match f() {
            Ok(r) => return Ok(r),
            Err(e) if e.kind() != io::ErrorKind::NotFound && attempt + 1 < attempts => {
                retries.fetch_add(1, Ordering::Relaxed);
                pause(attempt);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

struct RetryReader {
    target: Arc<dyn Target>,
    name: String,
    cur: Option<Box<dyn Read + Send>>,
    offset: u64,
    attempts: u32,
    retries: Arc<AtomicU64>,
}

impl Read for RetryReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut attempt = 0;
        loop {
            let r = (|| {
                if self.cur.is_none() {
                    self.cur = Some(self.target.open_at(&self.name, self.offset)?);
                }
                self.cur.as_mut().expect("opened above").read(buf)
            })();
            match r {
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() != io::ErrorKind::NotFound && attempt + 1 < self.attempts => {
                    self.cur = None;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    pause(attempt);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Target for Retrying {
    fn retries(&self) -> u64 {
        self.retries() + self.inner.retries()
    }
    fn put_new(&self, name: &str, write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<bool> {
        self.inner.put_new(name, write)
    }
    fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        self.open_at(name, 0)
    }
    fn open_at(&self, name: &str, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let first = with_retries(self.attempts, &self.retries, || self.inner.open_at(name, offset))?;
        Ok(Box::new(RetryReader {
            target: self.inner.clone(),
            name: name.to_string(),
            cur: Some(first),
            offset,
            attempts: self.attempts,
            retries: self.retries.clone(),
        }))
    }
    fn read_range(&self, name: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        // A short object is what it is: not retried.
        let mut attempt = 0;
        loop {
            match self.inner.read_range(name, offset, len) {
                Ok(v) => return Ok(v),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if !matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof) && attempt + 1 < self.attempts => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    pause(attempt);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
    fn read_tail(&self, name: &str, max: u64) -> io::Result<(u64, Vec<u8>)> {
        with_retries(self.attempts, &self.retries, || self.inner.read_tail(name, max))
    }
    fn exists(&self, name: &str) -> io::Result<bool> {
        with_retries(self.attempts, &self.retries, || self.inner.exists(name))
    }
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        with_retries(self.attempts, &self.retries, || self.inner.list(dir))
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn delete(&self, name: &str) -> io::Result<()> {
        self.inner.delete(name)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Fault injection for tests and drills: every open, listing and read of
/// the wrapped target fails with probability `rate` (an I/O error, as a
/// flaky network file system or object store gives). `tandem-replay` wraps
/// its target in one when `TANDEM_BACKUP_READ_FAULTS` is set to a rate.
pub struct Faulty {
    inner: Arc<dyn Target>,
    rate: f64,
    injected: Arc<AtomicU64>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn Target>, rate: f64) -> Faulty {
        Faulty {
            inner,
            rate,
            injected: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }
}

fn maybe_fail(rate: f64, injected: &AtomicU64) -> io::Result<()> {
    if rand::random::<f64>() < rate {
        injected.fetch_add(1, Ordering::Relaxed);
        return Err(io::Error::other("injected read fault"));
    }
    Ok(())
}

struct FaultyReader {
    inner: Box<dyn Read + Send>,
    rate: f64,
    injected: Arc<AtomicU64>,
}

impl Read for FaultyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        maybe_fail(self.rate, &self.injected)?;
        self.inner.read(buf)
    }
}

impl Target for Faulty {
    fn put_new(&self, name: &str, write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<bool> {
        self.inner.put_new(name, write)
    }
    fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        self.open_at(name, 0)
    }
    fn open_at(&self, name: &str, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        maybe_fail(self.rate, &self.injected)?;
        Ok(Box::new(FaultyReader {
            inner: self.inner.open_at(name, offset)?,
            rate: self.rate,
            injected: self.injected.clone(),
        }))
    }
    fn read_range(&self, name: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        maybe_fail(self.rate, &self.injected)?;
        let v = self.inner.read_range(name, offset, len)?;
        // A fault in the middle of the transfer.
        maybe_fail(self.rate, &self.injected)?;
        Ok(v)
    }
    fn read_tail(&self, name: &str, max: u64) -> io::Result<(u64, Vec<u8>)> {
        maybe_fail(self.rate, &self.injected)?;
        let v = self.inner.read_tail(name, max)?;
        maybe_fail(self.rate, &self.injected)?;
        Ok(v)
    }
    fn exists(&self, name: &str) -> io::Result<bool> {
        maybe_fail(self.rate, &self.injected)?;
        self.inner.exists(name)
    }
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        maybe_fail(self.rate, &self.injected)?;
        self.inner.list(dir)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn delete(&self, name: &str) -> io::Result<()> {
        self.inner.delete(name)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_new_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let t = DirTarget::new(d.path()).unwrap();
        assert!(t.put_new("a/b/c", &mut |w| w.write_all(b"one")).unwrap());
        assert!(!t.put_new("a/b/c", &mut |w| w.write_all(b"two")).unwrap());
        t.sync().unwrap();
        let mut s = String::new();
        t.open("a/b/c").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "one");
        assert_eq!(t.list("a/b").unwrap(), vec!["c".to_string()]);
        assert!(t.list(TMP_DIR).unwrap().is_empty(), "temporary files are removed");
        // A failed write leaves nothing under the name.
        let e = t.put_new("x", &mut |_| Err(io::Error::other("source failed"))).unwrap_err();
        assert_eq!(e.to_string(), "source failed");
        assert!(!t.exists("x").unwrap());
        assert!(t.put_new("../escape", &mut |w| w.write_all(b"x")).is_err());
    }

    #[test]
    fn retries_hide_injected_faults() {
        let d = tempfile::tempdir().unwrap();
        let t = Arc::new(DirTarget::new(d.path()).unwrap());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert!(t.put_new("obj", &mut |w| w.write_all(&data)).unwrap());
        let faulty = Arc::new(Faulty::new(t, 0.2));
        let r = Retrying::new(faulty.clone(), 50);
        for _ in 0..2 {
            let mut got = Vec::new();
            // Small reads: many chances to fail mid-object.
            let mut rd = r.open("obj").unwrap();
            let mut buf = [0u8; 977];
            loop {
                let n = rd.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, data);
        }
        assert!(faulty.injected() > 0 && r.retries() == faulty.injected());
        assert_eq!(r.open("absent").err().map(|e| e.kind()), Some(io::ErrorKind::NotFound));
    }
}
