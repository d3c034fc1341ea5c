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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bytes of keys and values per table file written at the end.
pub(crate) const TABLE_BYTES: usize = 64 << 20;

/// Bytes a map entry costs beyond its key and value (tree node share and
/// two vector headers), for the budget.
const ENTRY_OVERHEAD: usize = 80;

pub struct Shadow {
    pub(crate) cf: u8,
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
    budget: usize,
}

impl Shadow {
    pub(crate) fn new(cf: u8, budget: usize) -> Shadow {
        Shadow {
            cf,
            map: BTreeMap::new(),
            bytes: 0,
            budget,
        }
    }

    /// The committed value of `key`, authoritative: `None` means absent.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.get(key).cloned()
    }

    /// Every committed key starting with `prefix`, in key order.
    pub fn scan<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> + 'a {
        self.map
            .range::<[u8], _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Write `key` (one search of the map; a value already held keeps its
    /// buffer).
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        use std::collections::btree_map::Entry;
        match self.map.entry(key.to_vec()) {
            Entry::Occupied(mut o) => {
                let held = o.get_mut();
                self.bytes = self.bytes - held.len() + value.len();
                held.clear();
                held.extend_from_slice(value);
            }
            Entry::Vacant(e) => {
                self.bytes += key.len() + value.len() + ENTRY_OVERHEAD;
                e.insert(value.to_vec());
            }
        }
    }

    /// Write `key`, both moved in.
    pub fn put_owned(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.write_owned(key, Some(value));
    }

    /// Delete `key`.
    pub fn delete(&mut self, key: &[u8]) {
        if let Some(old) = self.map.remove(key) {
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
    /// insert) and no copy of the key or value.
    fn write_owned(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        use std::collections::btree_map::Entry;
        match value {
            Some(v) => match self.map.entry(key) {
                Entry::Occupied(mut o) => {
                    self.bytes = self.bytes - o.get().len() + v.len();
                    o.insert(v);
                }
                Entry::Vacant(e) => {
                    self.bytes += e.key().len() + v.len() + ENTRY_OVERHEAD;
                    e.insert(v);
                }
            },
            None => {
                if let Some(old) = self.map.remove(&key) {
                    self.bytes -= key.len() + old.len() + ENTRY_OVERHEAD;
                }
            }
        }
    }

    /// Whether the map holds more than its budget (keys, values and an
    /// estimate of the map's own cost).
    pub fn over_budget(&self) -> bool {
        self.bytes > self.budget
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Write the whole map as sorted table files in `dir`, named
    /// `{stem}-N.sst`, each holding at most `bound` bytes of keys and
    /// values (and at least one entry), compressed like the views' own
    /// tables; their key ranges do not overlap, so they are ingested
    /// together. Returns their paths, in key order.
    pub(crate) fn write_tables(&self, dir: &Path, stem: &str, bound: usize) -> Result<Vec<PathBuf>, rocksdb::Error> {
        let mut o = rocksdb::Options::default();
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut paths = Vec::new();
        let mut w: Option<rocksdb::SstFileWriter> = None;
        let mut in_file = 0;
        for (k, v) in &self.map {
            let size = k.len() + v.len();
            if w.is_some() && in_file + size > bound {
                w.take().expect("open").finish()?;
            }
            if w.is_none() {
                let path = dir.join(format!("{stem}-{}.sst", paths.len()));
                let f = rocksdb::SstFileWriter::create(&o);
                f.open(&path)?;
                paths.push(path);
                w = Some(f);
                in_file = 0;
            }
            w.as_mut().expect("open").put(k, v)?;
            in_file += size;
        }
        if let Some(mut f) = w {
            f.finish()?;
        }
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let got: Vec<&[u8]> = s.scan(b"b").map(|(k, _)| &k[..]).collect();
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
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        let db = rocksdb::DB::open(&o, dir.path().join("db")).unwrap();
        db.ingest_external_file(paths).unwrap();
        let got: Vec<(Vec<u8>, Vec<u8>)> = db
            .iterator(rocksdb::IteratorMode::Start)
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.into_vec(), v.into_vec())
            })
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = s.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(got, want);
        assert_eq!(db.get(key(2999)).unwrap(), Some(vec![(2999 % 251) as u8; 100]));
    }

    #[test]
    fn an_empty_map_writes_no_table() {
        let s = Shadow::new(5, 1 << 20);
        let dir = tempfile::tempdir().unwrap();
        assert!(s.write_tables(dir.path(), "shadow", 1 << 10).unwrap().is_empty());
    }
}
