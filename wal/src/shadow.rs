//! A caller column family held in memory while it is rebuilt from nothing.
//!
//! A rebuild clears a column family (the views) and writes all of it again
//! through ordinary transactions. Each transaction reads what the earlier
//! ones wrote: through RocksDB, that is a memtable or table lookup per read
//! and a memtable insert, flush and compaction per write, which was most of
//! a rebuild's time. While a shadow is on ([`crate::Wal::shadow_begin`]),
//! committed writes to that column family go to a sorted map instead, and
//! reads that miss the transaction's own writes are answered from the map
//! alone: the column family was empty when the shadow began, so a key the
//! map lacks is a key the column family lacks. [`crate::Wal::shadow_end`]
//! writes the map out as sorted table files of at most [`TABLE_BYTES`]
//! each (one ~300 MB table made later reads several times slower: every
//! lookup decompressed parts of its one huge index), ingested together,
//! and flushes, so the column family is durable when it returns.
//!
//! Memory is bounded: when the map grows past its budget it is written out
//! the same way, and the shadow ends early; the rest of the rebuild reads
//! and writes through RocksDB as before, and is still correct.
//!
//! Nothing else may read the column family while a shadow is on (it looks
//! empty from outside the writer until the end): shadows are for offline
//! rebuilds of a stopped node.
//!
//! A rebuild that writes nothing but the column family can also hold the
//! shadow itself ([`crate::Wal::shadow_detached`]) and read and write it
//! directly, without transactions: each write then goes once into the
//! one map (not into a transaction's map first, then this one), and the
//! caller checks [`Shadow::over_budget`] and writes the map out with
//! [`crate::Wal::shadow_write`].
//!
//! Keys that are only ever read by key, never scanned (the caller names
//! them by their first byte, [`Shadow::hash_tags`]), are held in a hash
//! map instead of the ordered one: a rebuild looks up such keys at random
//! places of a map of hundreds of thousands (a body's reference count by
//! its hash, a message by its GUID), and each search of the ordered map
//! was a walk through several cold tree nodes. They are sorted once, when
//! the map is written out. A scan that does reach them is still answered,
//! by a filter over them (slow, and never made by the views' own code).

use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A key as the maps hold it: inline up to 56 bytes (every view key but
/// those that carry a long user or mailbox name), so a search compares
/// bytes inside the tree's node instead of following a pointer per key.
type Key = SmallVec<[u8; 56]>;
/// A value as the maps hold it: inline up to 24 bytes (counts, UIDs, ids),
/// so most writes and the map's drop allocate and free nothing.
type Value = SmallVec<[u8; 24]>;

/// Bytes of keys and values per table file written at the end.
pub(crate) const TABLE_BYTES: usize = 64 << 20;

/// A map of more keys and values than this is written out as several
/// tables at once.
const SPLIT_BYTES: usize = 4 << 20;

/// Bytes a map entry costs beyond its key and value (its inline key and
/// value and its share of a tree node or hash table), for the budget.
const ENTRY_OVERHEAD: usize = 100;

pub struct Shadow {
    pub(crate) cf: u8,
    /// Keys whose first byte is not in `hashed`, in key order.
    map: BTreeMap<Key, Value>,
    /// Keys whose first byte is in `hashed`.
    points: FxHashMap<Key, Value>,
    hashed: [bool; 256],
    bytes: usize,
    budget: usize,
}

impl Shadow {
    pub(crate) fn new(cf: u8, budget: usize) -> Shadow {
        Shadow {
            cf,
            map: BTreeMap::new(),
            points: FxHashMap::default(),
            hashed: [false; 256],
            bytes: 0,
            budget,
        }
    }

    /// Hold keys that start with one of `tags` in a hash map: keys the
    /// caller reads only by key, never by a scan of a prefix. Set before
    /// the first write.
    pub fn hash_tags(&mut self, tags: &[u8]) {
        assert!(self.is_empty(), "tags are chosen before the first write");
        for t in tags {
            self.hashed[usize::from(*t)] = true;
        }
    }

    /// Make room in the hash map for `n` keys at once (at most as many
    /// as the budget could hold), so it is not grown step by step: each
    /// step moved every key into a table twice the size, a sixth of a
    /// rebuild's applying.
    pub fn reserve_points(&mut self, n: usize) {
        let room = self.budget / (std::mem::size_of::<(Key, Value)>() + ENTRY_OVERHEAD);
        self.points.reserve(n.min(room).saturating_sub(self.points.len()));
    }

    fn is_point(&self, key: &[u8]) -> bool {
        key.first().is_some_and(|t| self.hashed[usize::from(*t)])
    }

    /// The committed value of `key`, authoritative: `None` means absent.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let v = if self.is_point(key) {
            self.points.get(key)
        } else {
            self.map.get(key)
        };
        v.map(|v| v.to_vec())
    }

    /// Every committed key starting with `prefix`, in key order.
    pub fn scan<'a>(&'a self, prefix: &'a [u8]) -> Vec<(&'a [u8], &'a [u8])> {
        let ordered = self
            .map
            .range::<[u8], _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .map(|(k, v)| (&k[..], &v[..]))
            .take_while(move |(k, _)| k.starts_with(prefix));
        let reaches_points = match prefix.first() {
            Some(t) => self.hashed[usize::from(*t)],
            None => !self.points.is_empty(),
        };
        if !reaches_points {
            return ordered.collect();
        }
        let points = sorted(self.points.iter().filter(|(k, _)| k.starts_with(prefix)));
        merged(ordered, points.into_iter()).collect()
    }

    /// Write `key` (one search of the map; a value already held keeps its
    /// buffer).
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        use std::collections::{btree_map, hash_map};
        let old = if self.is_point(key) {
            match self.points.entry(Key::from_slice(key)) {
                hash_map::Entry::Occupied(mut o) => Some(replace(o.get_mut(), value)),
                hash_map::Entry::Vacant(e) => {
                    e.insert(Value::from_slice(value));
                    None
                }
            }
        } else {
            match self.map.entry(Key::from_slice(key)) {
                btree_map::Entry::Occupied(mut o) => Some(replace(o.get_mut(), value)),
                btree_map::Entry::Vacant(e) => {
                    e.insert(Value::from_slice(value));
                    None
                }
            }
        };
        self.count_write(key.len(), old, value.len());
    }

    /// Count a write of a `vlen`-byte value under a `klen`-byte key that
    /// replaced a value of `old` bytes, or added the key (`None`).
    fn count_write(&mut self, klen: usize, old: Option<usize>, vlen: usize) {
        match old {
            Some(old) => self.bytes = self.bytes - old + vlen,
            None => self.bytes += klen + vlen + ENTRY_OVERHEAD,
        }
    }

    /// Write `key`, both moved in.
    pub fn put_owned(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.write_owned(key, Some(value));
    }

    /// Delete `key`.
    pub fn delete(&mut self, key: &[u8]) {
        let old = if self.is_point(key) {
            self.points.remove(key)
        } else {
            self.map.remove(key)
        };
        if let Some(old) = old {
            self.bytes -= key.len() + old.len() + ENTRY_OVERHEAD;
        }
    }

    /// Take one committed write (`None`: a delete).
    #[cfg(test)]
    pub(crate) fn write(&mut self, key: &[u8], value: Option<&Vec<u8>>) {
        self.write_owned(key.to_vec(), value.cloned());
    }

    /// Take a group's committed writes, keys and values moved in.
    pub(crate) fn write_all(&mut self, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
        for (k, v) in writes {
            self.write_owned(k, v);
        }
    }

    /// One write, with one search of the map (not a lookup, then an
    /// insert); a key or value longer than its inline room is moved in,
    /// not copied.
    fn write_owned(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let Some(v) = value else {
            self.delete(&key);
            return;
        };
        let (klen, vlen) = (key.len(), v.len());
        let old = if self.is_point(&key) {
            self.points.insert(Key::from_vec(key), Value::from_vec(v))
        } else {
            self.map.insert(Key::from_vec(key), Value::from_vec(v))
        };
        self.count_write(klen, old.map(|v| v.len()), vlen);
    }

    /// Whether the map holds more than its budget (keys, values and an
    /// estimate of the map's own cost).
    pub fn over_budget(&self) -> bool {
        self.bytes > self.budget
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty() && self.points.is_empty()
    }

    /// Every entry, in key order: the ordered map's merged with the hash
    /// map's, sorted.
    fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let points = sorted(self.points.iter());
        merged(self.map.iter().map(|(k, v)| (&k[..], &v[..])), points.into_iter())
    }

    /// Write the whole map as sorted table files in `dir`, named
    /// `{stem}-N.sst`, each holding at most `bound` bytes of keys and
    /// values (and at least one entry), compressed like the views' own
    /// tables; their key ranges do not overlap, so they are ingested
    /// together. Returns their paths, in key order. A map of more than
    /// [`SPLIT_BYTES`] is cut into at least as many files as the machine
    /// has cores (up to four), written at once: writing the tables
    /// (compression included) took a third of a rebuild on one core. Such
    /// a map is cut first into groups whose key ranges cannot overlap (the
    /// ordered map between the hashed tags, and each hashed tag's keys),
    /// so the hashed keys are sorted group by group by the threads that
    /// write them, while others write the ordered map's tables: sorting
    /// them all first was a tenth of a rebuild, on one core.
    pub(crate) fn write_tables(&self, dir: &Path, stem: &str, bound: usize) -> Result<Vec<PathBuf>, rocksdb::Error> {
        let entries = self.map.len() + self.points.len();
        let total = self.bytes - entries * ENTRY_OVERHEAD;
        let writers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
        let target = bound.min((total / writers + 1).max(SPLIT_BYTES));
        if total <= SPLIT_BYTES {
            let all: Vec<(&[u8], &[u8])> = self.entries().collect();
            let runs = runs(&all, target);
            let paths: Vec<PathBuf> = (0..runs.len()).map(|i| dir.join(format!("{stem}-{i}.sst"))).collect();
            for (run, path) in runs.iter().zip(&paths) {
                write_table(run, path)?;
            }
            return Ok(paths);
        }
        // Groups whose key ranges cannot overlap, numbered in key order:
        // the ordered map's keys below the first hashed tag (0), that tag's
        // keys (1), the ordered keys up to the next tag (2), ...
        let tags: Vec<u8> = (0..=255u8).filter(|t| self.hashed[usize::from(*t)]).collect();
        let mut ordered: Vec<Vec<(&[u8], &[u8])>> = vec![Vec::new(); tags.len() + 1];
        let mut hashed: Vec<Vec<(&Key, &Value)>> = vec![Vec::new(); tags.len()];
        for (k, v) in &self.map {
            let first = k.first().copied().unwrap_or(0);
            ordered[tags.iter().take_while(|t| **t < first).count()].push((&k[..], &v[..]));
        }
        for (k, v) in &self.points {
            hashed[tags.binary_search(&k[0]).expect("a hashed key starts with a hashed tag")].push((k, v));
        }
        // Tasks, the largest first, taken by whichever writer is free: each
        // run of an ordered group, and each hashed group (sorted, then cut
        // into runs, by the thread that takes it).
        let mut tasks: Vec<(usize, Task<'_, '_>)> = Vec::new();
        for (i, group) in ordered.iter().enumerate() {
            for (r, run) in runs(group, target).into_iter().enumerate() {
                tasks.push((run.iter().map(|(k, v)| k.len() + v.len()).sum(), Task::Run(2 * i, r, run)));
            }
        }
        for (i, group) in hashed.iter().enumerate().filter(|(_, g)| !g.is_empty()) {
            tasks.push((group.iter().map(|(k, v)| k.len() + v.len()).sum(), Task::Sort(2 * i + 1, group)));
        }
        tasks.sort_by_key(|t| std::cmp::Reverse(t.0));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let written: std::sync::Mutex<Vec<((usize, usize), PathBuf)>> = std::sync::Mutex::new(Vec::new());
        let write = |g: usize, r: usize, run: &[(&[u8], &[u8])]| -> Result<(), rocksdb::Error> {
            let path = dir.join(format!("{stem}-{g}-{r}.sst"));
            write_table(run, &path)?;
            written.lock().expect("table list lock").push(((g, r), path));
            Ok(())
        };
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..writers.min(tasks.len()))
                .map(|_| {
                    let (tasks, next, write) = (&tasks, &next, &write);
                    s.spawn(move || -> Result<(), rocksdb::Error> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            match tasks.get(i).map(|t| &t.1) {
                                None => return Ok(()),
                                Some(Task::Run(g, r, run)) => write(*g, *r, run)?,
                                Some(Task::Sort(g, entries)) => {
                                    let sorted = sorted(entries.iter().copied());
                                    for (r, run) in runs(&sorted, target).into_iter().enumerate() {
                                        write(*g, r, run)?;
                                    }
                                }
                            }
                        }
                    })
                })
                .collect();
            threads
                .into_iter()
                .try_for_each(|t| t.join().expect("a thread writing a table panicked"))
        })?;
        let mut written = written.into_inner().expect("table list lock");
        written.sort_by_key(|w| w.0);
        Ok(written.into_iter().map(|(_, p)| p).collect())
    }
}

/// One piece of a map's write-out ([`Shadow::write_tables`]), with the
/// number of its group (groups in key order).
enum Task<'e, 'a> {
    /// Write run `.1` of an ordered group.
    Run(usize, usize, &'e Run<'a>),
    /// Sort a hashed group's entries, then write its runs.
    Sort(usize, &'e [(&'a Key, &'a Value)]),
}

/// Entries in key order, written as one table.
type Run<'a> = [(&'a [u8], &'a [u8])];

/// `entries` cut into runs of at most `target` bytes of keys and values
/// (at least one entry each).
fn runs<'e, 'a>(entries: &'e Run<'a>, target: usize) -> Vec<&'e Run<'a>> {
    let mut out = Vec::new();
    let (mut start, mut in_run) = (0, 0);
    for (i, (k, v)) in entries.iter().enumerate() {
        let size = k.len() + v.len();
        if i > start && in_run + size > target {
            out.push(&entries[start..i]);
            (start, in_run) = (i, 0);
        }
        in_run += size;
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

/// One table file of `run` (in key order) at `path`, compressed like the
/// views' own tables.
fn write_table(run: &[(&[u8], &[u8])], path: &Path) -> Result<(), rocksdb::Error> {
    let mut o = rocksdb::Options::default();
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut w = rocksdb::SstFileWriter::create(&o);
    w.open(path)?;
    for (k, v) in run {
        w.put(k, v)?;
    }
    w.finish()
}

/// Replace a held value in its buffer; the old length.
fn replace(held: &mut Value, value: &[u8]) -> usize {
    let old = held.len();
    held.clear();
    held.extend_from_slice(value);
    old
}

/// The hash map's entries in key order. Sorted by their first 32 bytes
/// read as two big-endian integers (zero-padded: that order never
/// contradicts the bytes' order), and by the whole key only where those
/// are equal: sorting by the keys themselves spent most of its time
/// following a pointer per comparison.
fn sorted<'a>(entries: impl Iterator<Item = (&'a Key, &'a Value)>) -> Vec<(&'a [u8], &'a [u8])> {
    fn word(k: &[u8], at: usize) -> u128 {
        let mut b = [0u8; 16];
        let part = k.get(at..).unwrap_or(&[]);
        let n = part.len().min(16);
        b[..n].copy_from_slice(&part[..n]);
        u128::from_be_bytes(b)
    }
    let mut v: Vec<(u128, u128, &[u8], &[u8])> = entries.map(|(k, v)| (word(k, 0), word(k, 16), &k[..], &v[..])).collect();
    v.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| a.2.cmp(b.2)));
    v.into_iter().map(|(_, _, k, v)| (k, v)).collect()
}

/// The ordered map's entries and the hash map's (each in key order),
/// merged in key order. The two hold keys of different first bytes, so
/// the first bytes decide; whole keys are compared only if they are equal
/// (never, while the maps are kept apart).
fn merged<'a>(
    a: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    b: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) => {
            let first = x.0.first().cmp(&y.0.first()).then_with(|| x.0.cmp(y.0));
            if first.is_le() {
                a.next()
            } else {
                b.next()
            }
        }
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key and value of a new database in `dir` after ingesting
    /// `paths` together.
    fn ingested(dir: &Path, paths: Vec<PathBuf>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        let db = rocksdb::DB::open(&o, dir.join("db")).unwrap();
        db.ingest_external_file(paths).unwrap();
        db.iterator(rocksdb::IteratorMode::Start)
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.into_vec(), v.into_vec())
            })
            .collect()
    }

    #[test]
    fn the_budget_counts_what_is_held_and_frees_what_is_deleted() {
        let mut s = Shadow::new(5, 1000);
        s.write(b"a", Some(&vec![0; 100]));
        s.write(b"a", Some(&vec![0; 10]));
        s.write(b"b", Some(&vec![0; 10]));
        assert_eq!(s.bytes, 2 * (1 + 10 + ENTRY_OVERHEAD));
        s.write(b"a", None);
        s.write(b"zz", None);
        assert_eq!(s.bytes, 1 + 10 + ENTRY_OVERHEAD);
        assert_eq!(s.get(b"a"), None);
        assert_eq!(s.get(b"b"), Some(vec![0; 10]));
        s.write(b"c", Some(&vec![0; 1000]));
        assert!(s.over_budget());
    }

    #[test]
    fn put_and_delete_keep_the_same_count_as_committed_writes() {
        let mut a = Shadow::new(5, 1000);
        let mut b = Shadow::new(5, 1000);
        for (k, v) in [
            (&b"a"[..], Some(&vec![1; 100])),
            (b"a", Some(&vec![2; 10])),
            (b"b", Some(&vec![3; 7])),
            (b"a", None),
            (b"zz", None),
        ] {
            a.write(k, v);
            match v {
                Some(v) => b.put(k, v),
                None => b.delete(k),
            }
        }
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.map, b.map);
        assert_eq!(a.points, b.points);
        b.put(b"b", &[9; 3]);
        assert_eq!(b.get(b"b"), Some(vec![9; 3]));
        assert_eq!(b.bytes, 1 + 3 + ENTRY_OVERHEAD);
    }

    #[test]
    fn a_scan_stops_at_the_end_of_its_prefix() {
        let mut s = Shadow::new(5, 1 << 20);
        for k in [&b"a1"[..], b"b1", b"b2", b"b\xff", b"c"] {
            s.write(k, Some(&k.to_vec()));
        }
        let got: Vec<&[u8]> = s.scan(b"b").into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, vec![&b"b1"[..], b"b2", b"b\xff"]);
    }

    #[test]
    fn a_map_larger_than_the_bound_is_written_as_several_tables_that_read_back() {
        let mut s = Shadow::new(5, usize::MAX);
        let key = |i: u32| format!("k{i:06}").into_bytes();
        for i in 0..3000u32 {
            s.write(&key(i), Some(&vec![(i % 251) as u8; 100]));
        }
        let dir = tempfile::tempdir().unwrap();
        // 3,000 entries of 107 bytes, at most 64 KiB per file: 5 files.
        let paths = s.write_tables(dir.path(), "shadow", 64 << 10).unwrap();
        assert_eq!(paths.len(), 5);
        for p in &paths {
            assert!(std::fs::metadata(p).unwrap().len() > 0);
        }
        let got = ingested(dir.path(), paths);
        let want: Vec<(Vec<u8>, Vec<u8>)> = s.entries().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(got, want);
    }

    /// Reserving room for the hash map takes what is asked within the
    /// budget, and no more than the budget could hold.
    #[test]
    fn reserved_room_is_bounded_by_the_budget() {
        let mut s = Shadow::new(5, 1 << 20);
        s.hash_tags(b"R");
        s.reserve_points(1000);
        assert!(s.points.capacity() >= 1000);
        let room = (1 << 20) / (std::mem::size_of::<(Key, Value)>() + ENTRY_OVERHEAD);
        let mut t = Shadow::new(5, 1 << 20);
        t.hash_tags(b"R");
        t.reserve_points(usize::MAX);
        assert!(
            t.points.capacity() >= room && t.points.capacity() < 4 * room,
            "{}",
            t.points.capacity()
        );
        for i in 0..1000u32 {
            s.put(&[&b"R"[..], &i.to_be_bytes()].concat(), b"v");
        }
        assert_eq!(s.get(&[&b"R"[..], &7u32.to_be_bytes()].concat()), Some(b"v".to_vec()));
    }

    #[test]
    fn an_empty_map_writes_no_table() {
        let s = Shadow::new(5, 1 << 20);
        let dir = tempfile::tempdir().unwrap();
        assert!(s.write_tables(dir.path(), "shadow", 1 << 10).unwrap().is_empty());
    }

    /// A shadow holding keys of tags `R` and `H` in its hash map, with
    /// writes of every kind to both maps.
    fn mixed() -> (Shadow, BTreeMap<Vec<u8>, Vec<u8>>) {
        let mut s = Shadow::new(5, usize::MAX);
        s.hash_tags(b"RH");
        let mut model = BTreeMap::new();
        for i in 0..500u32 {
            // Keys spread over both maps, long ones (past the inline room)
            // among them; values short and long.
            let tag = [b'A', b'H', b'R', b'm', b'z'][(i % 5) as usize];
            let mut k = vec![tag];
            k.extend_from_slice(&(i.wrapping_mul(2_654_435_761)).to_be_bytes());
            if i % 7 == 0 {
                k.extend_from_slice(&[b'x'; 60]);
            }
            let v = vec![(i % 251) as u8; if i % 3 == 0 { 40 } else { 4 }];
            if i % 2 == 0 {
                s.put(&k, &v);
            } else {
                s.put_owned(k.clone(), v.clone());
            }
            model.insert(k, v);
        }
        // Overwrites and deletes, through each path.
        let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
        for (n, k) in keys.iter().enumerate() {
            match n % 6 {
                0 => {
                    s.delete(k);
                    model.remove(k);
                }
                1 => {
                    s.write(k, None);
                    model.remove(k);
                }
                2 => {
                    s.put(k, b"again");
                    model.insert(k.clone(), b"again".to_vec());
                }
                _ => {}
            }
        }
        (s, model)
    }

    #[test]
    fn hashed_keys_read_back_and_scan_and_write_out_in_key_order() {
        let (s, model) = mixed();
        assert!(!s.points.is_empty() && !s.map.is_empty());
        assert!(s.points.keys().all(|k| k[0] == b'R' || k[0] == b'H'));
        for (k, v) in &model {
            assert_eq!(s.get(k).as_ref(), Some(v));
        }
        assert_eq!(s.get(b"Rnothing"), None);
        let all: Vec<(Vec<u8>, Vec<u8>)> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let scanned = |p: &[u8]| -> Vec<(Vec<u8>, Vec<u8>)> { s.scan(p).into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect() };
        // A scan reaching the hash map (all keys, or one hashed tag) is
        // answered in key order like any other.
        assert_eq!(scanned(b""), all);
        let of = |t: u8| -> Vec<(Vec<u8>, Vec<u8>)> { all.iter().filter(|(k, _)| k[0] == t).cloned().collect() };
        assert_eq!(scanned(b"R"), of(b'R'));
        assert_eq!(scanned(b"m"), of(b'm'));
        let dir = tempfile::tempdir().unwrap();
        let paths = s.write_tables(dir.path(), "shadow", 4 << 10).unwrap();
        assert!(paths.len() > 1);
        let got = ingested(dir.path(), paths);
        assert_eq!(got, all);
    }

    #[test]
    fn hashed_keys_count_in_the_budget_like_ordered_ones() {
        let (s, model) = mixed();
        let want: usize = model.iter().map(|(k, v)| k.len() + v.len() + ENTRY_OVERHEAD).sum();
        assert_eq!(s.bytes, want);
    }

    #[test]
    fn hashed_keys_sort_like_their_bytes() {
        // Short keys, keys that share 32 bytes and differ after, and keys
        // that are prefixes of others (zero bytes included).
        let raw: Vec<Vec<u8>> = vec![
            b"R".to_vec(),
            b"R\0".to_vec(),
            b"R\0\0".to_vec(),
            [&b"R"[..], &[7; 40]].concat(),
            [&b"R"[..], &[7; 31], &[0]].concat(),
            [&b"R"[..], &[7; 31]].concat(),
            [&b"R"[..], &[7; 40], &[1]].concat(),
            [&b"R"[..], &[7; 39], &[8]].concat(),
            b"Ra".to_vec(),
            [&b"R"[..], &[255; 20]].concat(),
        ];
        let keys: Vec<Key> = raw.iter().map(|k| Key::from_slice(k)).collect();
        let value = Value::new();
        let got: Vec<&[u8]> = sorted(keys.iter().rev().map(|k| (k, &value))).into_iter().map(|(k, _)| k).collect();
        let mut want: Vec<&[u8]> = raw.iter().map(|k| &k[..]).collect();
        want.sort();
        assert_eq!(got, want);
    }

    /// A map past the split size with hashed tags between ordered ones
    /// (keys below, between and above them, and none between two adjacent
    /// tags): written group by group, it reads back whole and in key order.
    #[test]
    fn a_large_map_with_hashed_tags_among_ordered_ones_reads_back_in_key_order() {
        let mut s = Shadow::new(5, usize::MAX);
        s.hash_tags(b"HIR");
        let mut model = BTreeMap::new();
        for i in 0..60_000u32 {
            let tag = [b'A', b'H', b'I', b'K', b'R', b'm', b'z'][(i % 7) as usize];
            let k = [&[tag][..], &i.wrapping_mul(2_654_435_761).to_be_bytes()].concat();
            let v = vec![(i % 251) as u8; 100];
            s.put(&k, &v);
            model.insert(k, v);
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = s.write_tables(dir.path(), "shadow", usize::MAX).unwrap();
        assert!(paths.len() >= 6, "one table per group at least: {}", paths.len());
        let got = ingested(dir.path(), paths);
        let want: Vec<(Vec<u8>, Vec<u8>)> = model.into_iter().collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_large_map_is_written_as_several_tables_at_once() {
        let mut s = Shadow::new(5, usize::MAX);
        s.hash_tags(b"R");
        for i in 0..100_000u32 {
            let tag = if i % 2 == 0 { b'R' } else { b'm' };
            s.put(&[&[tag][..], &i.to_be_bytes()].concat(), &[(i % 251) as u8; 96]);
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = s.write_tables(dir.path(), "shadow", usize::MAX).unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(paths.len() >= cores.min(2), "{} tables on {cores} cores", paths.len());
        let got = ingested(dir.path(), paths);
        assert_eq!(got.len(), 100_000);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "in key order, each key once");
        for (k, v) in &got {
            assert_eq!(s.get(k).as_ref(), Some(v));
        }
    }
}
