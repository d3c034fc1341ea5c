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
//! writes the map out as one sorted table file, ingested whole, and
//! flushes, so the column family is durable when it returns.
//!
//! Memory is bounded: when the map grows past its budget it is written out
//! the same way, and the shadow ends early; the rest of the rebuild reads
//! and writes through RocksDB as before, and is still correct.
//!
//! Nothing else may read the column family while a shadow is on (it looks
//! empty from outside the writer until the end): shadows are for offline
//! rebuilds of a stopped node.

use std::collections::BTreeMap;
use std::path::Path;

/// Bytes a map entry costs beyond its key and value (tree node share and
/// two vector headers), for the budget.
const ENTRY_OVERHEAD: usize = 80;

pub(crate) struct Shadow {
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
    pub(crate) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.get(key).cloned()
    }

    /// Every committed key starting with `prefix`, in key order.
    pub(crate) fn scan<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> + 'a {
        self.map.range(prefix.to_vec()..).take_while(move |(k, _)| k.starts_with(prefix))
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

    pub(crate) fn over_budget(&self) -> bool {
        self.bytes > self.budget
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Write the whole map as one sorted table file at `path` (compressed
    /// like the views' own tables), for ingestion.
    pub(crate) fn write_table(&self, path: &Path) -> Result<(), rocksdb::Error> {
        let mut o = rocksdb::Options::default();
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut w = rocksdb::SstFileWriter::create(&o);
        w.open(path)?;
        for (k, v) in &self.map {
            w.put(k, v)?;
        }
        w.finish()
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
    fn a_scan_stops_at_the_end_of_its_prefix() {
        let mut s = Shadow::new(5, 1 << 20);
        for k in [&b"a1"[..], b"b1", b"b2", b"b\xff", b"c"] {
            s.write(k, Some(&k.to_vec()));
        }
        let got: Vec<&[u8]> = s.scan(b"b").map(|(k, _)| &k[..]).collect();
        assert_eq!(got, vec![&b"b1"[..], b"b2", b"b\xff"]);
    }
}
