//! A column family rebuilt in memory (`Wal::shadow_begin`): transactions
//! read what earlier ones wrote, scans merge pending and committed writes,
//! and what ends up in RocksDB (and survives a reopen) is exactly what the
//! same transactions leave without a shadow, whether the shadow lasts to
//! the end or outgrows its budget half-way.

use proptest::prelude::*;
use wal::{Origin, Wal, WalError, WalOptions};

fn opts() -> WalOptions {
    let mut o = WalOptions::new(Origin::from_node_id("a"));
    o.user_cfs = vec!["views".into()];
    o
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    /// Read a key and write what was read (plus one) under another: the
    /// result depends on every earlier write being seen.
    Carry(u8, u8),
    /// Count the keys of a prefix and write the count.
    Count(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..40, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        (0u8..40).prop_map(Op::Delete),
        (0u8..40, 0u8..40).prop_map(|(a, b)| Op::Carry(a, b)),
        (0u8..4, 0u8..40).prop_map(|(p, k)| Op::Count(p, k)),
    ]
}

fn key(k: u8) -> Vec<u8> {
    // Ten keys per prefix digit, so prefix scans see several.
    format!("k{}{}", k / 10, k % 10).into_bytes()
}

/// Run `txns` (each a list of ops, in one transaction) on a new store, with
/// a shadow of `budget` bytes or none; return the column family's content
/// after a reopen.
fn run(txns: &[Vec<Op>], budget: Option<usize>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        let views = wal.cf("views").unwrap();
        if let Some(b) = budget {
            wal.shadow_begin(views, b).unwrap();
        }
        for ops in txns {
            let ops = ops.clone();
            wal.transact(move |t| {
                t.append(b"e".to_vec());
                for op in ops {
                    match op {
                        Op::Put(k, v) => t.put(views, &key(k), &[v]),
                        Op::Delete(k) => t.delete(views, &key(k)),
                        Op::Carry(a, b) => {
                            let v = t.get(views, &key(a))?.map(|v| v[0].wrapping_add(1)).unwrap_or(0);
                            t.put(views, &key(b), &[v]);
                        }
                        Op::Count(p, k) => {
                            let n = t.scan_prefix(views, format!("k{p}").as_bytes())?.len();
                            t.put(views, &key(k), &[n as u8]);
                        }
                    }
                }
                Ok::<_, WalError>(())
            })
            .unwrap();
        }
        if budget.is_some() {
            wal.shadow_end().unwrap();
        }
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let views = wal.cf("views").unwrap();
    wal.scan_prefix(views, b"").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn a_shadow_leaves_what_rocksdb_alone_leaves(txns in proptest::collection::vec(proptest::collection::vec(op(), 1..8), 1..30)) {
        let plain = run(&txns, None);
        // Large enough to last; small enough to be written out half-way.
        prop_assert_eq!(&run(&txns, Some(1 << 20)), &plain);
        prop_assert_eq!(&run(&txns, Some(600)), &plain);
    }
}

#[test]
fn a_shadow_needs_an_empty_column_family() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let views = wal.cf("views").unwrap();
    wal.transact(move |t| {
        t.put(views, b"x", b"1");
        Ok::<_, WalError>(())
    })
    .unwrap();
    let err = wal.shadow_begin(views, 1 << 20).unwrap_err();
    assert!(err.to_string().contains("empty column family"), "{err}");
}

#[test]
fn a_cleared_column_family_is_empty_takes_a_shadow_and_keeps_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let views = wal.cf("views").unwrap();
    wal.transact(move |t| {
        for k in [&b"a"[..], b"m\x00", b"m\xff\xff", b"z"] {
            t.put(views, k, b"old");
        }
        Ok::<_, WalError>(())
    })
    .unwrap();
    wal.clear(&[views]).unwrap();
    assert!(wal.scan_prefix(views, b"").unwrap().is_empty());
    wal.shadow_begin(views, 1 << 20).unwrap();
    wal.transact(move |t| {
        assert_eq!(t.get(views, b"z")?, None);
        t.put(views, b"z", b"new");
        Ok::<_, WalError>(())
    })
    .unwrap();
    // Outside transactions nothing shows until the shadow ends.
    assert!(wal.scan_prefix(views, b"").unwrap().is_empty());
    wal.shadow_end().unwrap();
    assert_eq!(wal.scan_prefix(views, b"").unwrap(), vec![(b"z".to_vec(), b"new".to_vec())]);
}

/// A shadow begun again over a column family written in parts: the shared
/// keys are read in first, so a later part reads and changes them, and its
/// own keys join the earlier parts' when it ends.
#[test]
fn a_shadow_over_earlier_parts_reads_their_shared_keys() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let views = wal.cf("views").unwrap();
    wal.shadow_begin(views, 1 << 20).unwrap();
    wal.transact(move |t| {
        t.put(views, b"count", b"1");
        t.put(views, b"user1", b"a");
        Ok::<_, WalError>(())
    })
    .unwrap();
    wal.shadow_end().unwrap();
    wal.shadow_begin_over(views, 1 << 20, &[b"count"]).unwrap();
    wal.transact(move |t| {
        // A shared key reads as the earlier part left it.
        assert_eq!(t.get(views, b"count")?, Some(b"1".to_vec()));
        t.put(views, b"count", b"2");
        t.put(views, b"user2", b"b");
        Ok::<_, WalError>(())
    })
    .unwrap();
    wal.shadow_end().unwrap();
    assert_eq!(
        wal.scan_prefix(views, b"").unwrap(),
        vec![
            (b"count".to_vec(), b"2".to_vec()),
            (b"user1".to_vec(), b"a".to_vec()),
            (b"user2".to_vec(), b"b".to_vec()),
        ]
    );
}
