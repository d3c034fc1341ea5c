//! Behaviour of the log store: appends, reads, heads, group commit, remote
//! entries, poisoning, reopen.

use std::sync::Arc;
use wal::{segment, AppendError, Entry, Origin, Wal, WalError, WalOptions, GENESIS};

fn opts() -> WalOptions {
    let mut o = WalOptions::new(Origin::from_node_id("a"));
    o.user_cfs = vec!["views".into()];
    o
}

#[test]
fn append_read_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::from_node_id("a");
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        for i in 1..=10u64 {
            let a = wal.append(format!("e{i}").into_bytes()).unwrap();
            assert_eq!((a.seq, a.order), (i, i));
        }
        assert_eq!(wal.heads().get(origin), 10);
        let r = wal.read_range(origin, 3, 5, 100).unwrap();
        assert_eq!(r.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(r[0].payload, b"e3");
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert!(!wal.recovery_report().unclean_shutdown);
    assert_eq!(wal.recovery_report().verified, 10);
    assert_eq!(wal.heads().get(origin), 10);
    assert_eq!(wal.verify_all().unwrap(), 10);
    let a = wal.append(b"e11".to_vec()).unwrap();
    assert_eq!(a.seq, 11);
    let order = wal.read_order(9, 10).unwrap();
    assert_eq!(
        order.iter().map(|(n, e)| (*n, e.seq)).collect::<Vec<_>>(),
        vec![(9, 9), (10, 10), (11, 11)]
    );
}

/// A group the writer has made durable but not yet published is not read
/// by `read_order`: nothing read there is ahead of the heads, so a peer
/// never gets an entry of this node's origin before this node holds it.
#[test]
fn the_apply_order_is_read_only_up_to_what_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::from_node_id("a");
    let wal = Arc::new(Wal::open(dir.path(), opts()).unwrap());
    wal.append(b"e1".to_vec()).unwrap();
    wal.hold_publish(true);
    let w = wal.clone();
    let appender = std::thread::spawn(move || w.append(b"e2".to_vec()).unwrap());
    // Written (durably, in the store) but held before publication.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while wal.raw_entry(origin, 2).unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the second entry was never written");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(wal.heads().get(origin), 1);
    assert_eq!(wal.last_order(), 1);
    let read = wal.read_order(1, 10).unwrap();
    assert_eq!(read.iter().map(|(n, e)| (*n, e.seq)).collect::<Vec<_>>(), vec![(1, 1)]);
    assert!(wal.read_order(2, 10).unwrap().is_empty());
    wal.hold_publish(false);
    assert_eq!(appender.join().unwrap().seq, 2);
    assert_eq!(wal.heads().get(origin), 2);
    let read = wal.read_order(1, 10).unwrap();
    assert_eq!(read.iter().map(|(n, e)| (*n, e.seq)).collect::<Vec<_>>(), vec![(1, 1), (2, 2)]);
}

/// The application's values survive a reopen and stay apart from the
/// log: a key named like one of the log's own meta keys changes nothing
/// of the log.
#[test]
fn application_values_survive_a_reopen_apart_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        assert_eq!(wal.app_meta("ceiling").unwrap(), None);
        wal.append(b"e1".to_vec()).unwrap();
        wal.set_app_meta("ceiling", &7u64.to_be_bytes()).unwrap();
        wal.set_app_meta("order_next", b"not the log's").unwrap();
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert_eq!(wal.app_meta("ceiling").unwrap(), Some(7u64.to_be_bytes().to_vec()));
    assert_eq!(wal.app_meta("order_next").unwrap(), Some(b"not the log's".to_vec()));
    assert_eq!(wal.append(b"e2".to_vec()).unwrap().order, 2);
    assert_eq!(wal.verify_all().unwrap(), 2);
}

#[test]
fn views_land_with_their_entry_and_rejections_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let cf = wal.cf("views").unwrap();
    wal.transact(move |t| {
        t.append(b"x".to_vec());
        t.put(cf, b"k", b"v1");
        Ok::<_, ()>(())
    })
    .unwrap();
    assert_eq!(wal.get(cf, b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    let r = wal.transact(move |t| {
        t.append(b"y".to_vec());
        t.put(cf, b"k", b"v2");
        Err::<(), _>("refused")
    });
    assert!(matches!(r, Err(AppendError::Rejected("refused"))));
    assert_eq!(wal.get(cf, b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(wal.heads().get(wal.local_origin()), 1);
    assert!(wal.cf("log").is_err(), "the log's own families are not handed out");
}

#[test]
fn concurrent_appenders_share_fsyncs_and_keep_dense_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), opts()).unwrap());
    let cf = wal.cf("views").unwrap();
    let threads = 16;
    let per = 50;
    std::thread::scope(|s| {
        for t in 0..threads {
            let wal = wal.clone();
            s.spawn(move || {
                for i in 0..per {
                    wal.transact(move |txn| {
                        // Read-modify-write through the group overlay: a
                        // counter that only stays exact if every transaction
                        // sees the ones before it in its group.
                        let n = txn
                            .get(cf, b"count")
                            .unwrap()
                            .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
                            .unwrap_or(0);
                        txn.put(cf, b"count", &(n + 1).to_be_bytes());
                        txn.append(format!("{t}:{i}").into_bytes());
                        Ok::<_, ()>(())
                    })
                    .unwrap();
                }
            });
        }
    });
    let total = (threads * per) as u64;
    let st = wal.stats();
    assert_eq!(st.entries, total);
    assert!(
        st.groups < total,
        "no group commit happened: {} fsyncs for {} appends",
        st.groups,
        total
    );
    assert_eq!(wal.get(cf, b"count").unwrap().unwrap(), total.to_be_bytes().to_vec());
    assert_eq!(wal.verify_all().unwrap(), total);
    let seqs: Vec<u64> = wal
        .read_range(wal.local_origin(), 1, total, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
}

#[test]
fn remote_entries_must_continue_the_chain() {
    let src_dir = tempfile::tempdir().unwrap();
    let dst_dir = tempfile::tempdir().unwrap();
    let src = Wal::open(src_dir.path(), opts()).unwrap();
    for i in 0..5 {
        src.append(vec![i]).unwrap();
    }
    let entries = src.read_range(src.local_origin(), 1, 5, 10).unwrap();
    let mut o = opts();
    o.local_origin = Origin::from_node_id("b");
    let dst = Wal::open(dst_dir.path(), o).unwrap();
    // A gap is refused with its place.
    let e3 = entries[2].clone();
    let r = dst.transact(move |t| t.append_remote(&e3).map(|_| ()));
    match r {
        Err(AppendError::Rejected(WalError::Discontinuous { place, .. })) => assert_eq!(place.seq, 3),
        other => panic!("gap accepted: {other:?}"),
    }
    // A forged entry is refused.
    let mut forged = entries[0].clone();
    forged.payload = b"forged".to_vec();
    let r = dst.transact(move |t| t.append_remote(&forged).map(|_| ()));
    assert!(matches!(r, Err(AppendError::Rejected(WalError::Discontinuous { .. }))));
    // The real chain applies; replays are ignored.
    let es = entries.clone();
    let applied = dst
        .transact(move |t| {
            let mut n = 0;
            for e in es.iter().chain(es.iter()) {
                if t.append_remote(e)?.is_some() {
                    n += 1;
                }
            }
            Ok::<_, WalError>(n)
        })
        .unwrap();
    assert_eq!(applied, 5);
    assert_eq!(dst.heads().get(src.local_origin()), 5);
    assert_eq!(dst.head_hash(src.local_origin()), src.head_hash(src.local_origin()));
}

#[test]
fn failed_write_poisons_the_handle() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    wal.append(b"ok".to_vec()).unwrap();
    wal.inject_write_failure(true);
    assert!(matches!(wal.append(b"lost".to_vec()), Err(WalError::Poisoned(_))));
    // Even with the fault gone, nothing is retried or accepted.
    wal.inject_write_failure(false);
    assert!(matches!(wal.append(b"later".to_vec()), Err(WalError::Poisoned(_))));
    assert!(wal.poisoned().is_some());
    drop(wal);
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert_eq!(wal.heads().get(wal.local_origin()), 1);
    assert!(
        wal.recovery_report().unclean_shutdown,
        "a poisoned handle does not mark a clean close"
    );
}

#[test]
fn tail_notification_wakes_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), opts()).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    wal.on_commit(move |n| {
        let _ = tx.send(n);
    });
    let w2 = wal.clone();
    let waiter = std::thread::spawn(move || w2.wait_for_order(3, std::time::Duration::from_secs(10)));
    for i in 0..3 {
        wal.append(vec![i]).unwrap();
    }
    assert_eq!(waiter.join().unwrap(), 3);
    let seen: Vec<u64> = rx.try_iter().collect();
    assert_eq!(seen, vec![1, 2, 3]);
    assert_eq!(wal.wait_for_order(10, std::time::Duration::from_millis(20)), 3);
}

#[test]
fn segment_from_store_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    for i in 0..20u8 {
        wal.append(vec![i; 100]).unwrap();
    }
    let o = wal.local_origin();
    let prev = wal.entry(o, 10).unwrap().unwrap().hash;
    let es: Vec<Entry> = wal.read_range(o, 11, 20, 100).unwrap();
    let bytes = segment::encode(&prev, &es);
    let seg = segment::decode(&bytes).unwrap();
    assert_eq!(seg.entries, es);
    assert_eq!((seg.first_seq(), seg.last_seq()), (11, 20));
    // From seq 1 the previous hash is the genesis.
    let all = wal.read_range(o, 1, 20, 100).unwrap();
    assert_eq!(segment::decode(&segment::encode(&GENESIS, &all)).unwrap().entries.len(), 20);
}

#[test]
fn a_store_refuses_another_origin() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        wal.append(b"a".to_vec()).unwrap();
    }
    let mut o = opts();
    o.local_origin = Origin::from_node_id("someone-else");
    match Wal::open(dir.path(), o) {
        Err(WalError::WrongOrigin { stored, given }) => {
            assert_eq!(stored, Origin::from_node_id("a"));
            assert_eq!(given, Origin::from_node_id("someone-else"));
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened another node's store"),
    }
}

#[test]
fn a_panicking_transaction_leaves_no_trace_and_the_writer_survives() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let cf = wal.cf("views").unwrap();
    let r = wal.transact(move |t| -> Result<(), ()> {
        t.append(b"doomed".to_vec());
        t.put(cf, b"k", b"doomed");
        panic!("bug in a mutation");
    });
    assert!(matches!(r, Err(AppendError::Wal(WalError::Closed))), "{r:?}");
    // The caller learns of the failure while the writer is still unwinding;
    // the counter follows a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while wal.stats().panics == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(wal.stats().panics, 1);
    assert_eq!(wal.get(cf, b"k").unwrap(), None);
    let a = wal.append(b"after".to_vec()).unwrap();
    assert_eq!(a.seq, 1, "the panicked append took no seq");
}

#[test]
fn large_groups_write_bodies_once_and_keep_them_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.blob_cfs = vec!["blobs".into()];
    o.bulk_bytes = 64 * 1024;
    let body = |i: u32| -> Vec<u8> { (0..20_000u32).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect() };
    {
        let wal = Wal::open(dir.path(), o.clone()).unwrap();
        let blobs = wal.cf("blobs").unwrap();
        // One small group (logged as usual), then one large group.
        wal.transact(move |t| {
            t.put(blobs, b"small", &body(0));
            t.append(b"small".to_vec());
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(wal.stats().bulk_flushes, 0);
        wal.transact(move |t| {
            for i in 1..=8u32 {
                t.put(blobs, &i.to_be_bytes(), &body(i));
                t.append(i.to_be_bytes().to_vec());
            }
            Ok::<_, ()>(())
        })
        .unwrap();
        let s = wal.stats();
        assert_eq!(s.bulk_flushes, 1, "the large group did not take the bulk path");
        assert_eq!(s.bulk_bytes, 8 * 20_000);
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), o).unwrap();
    let blobs = wal.cf("blobs").unwrap();
    assert_eq!(wal.get(blobs, b"small").unwrap().unwrap(), body(0));
    for i in 1..=8u32 {
        assert_eq!(wal.get(blobs, &i.to_be_bytes()).unwrap().unwrap(), body(i), "body {i}");
    }
    assert_eq!(wal.heads().get(Origin::from_node_id("a")), 9);
}

/// Flushes written with O_DIRECT keep every body across reopen, on disk and
/// on tmpfs. (A file system that refuses O_DIRECT makes the store fall back
/// to the page cache; kernels from 6.6 accept it on tmpfs, so this machine
/// has no such file system to show it on.)
#[test]
fn direct_io_flushes_keep_bodies() {
    let disk = tempfile::tempdir().unwrap();
    let shm = std::path::Path::new("/dev/shm");
    let shm_dir = shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap());
    let mut dirs = vec![disk.path().to_path_buf()];
    dirs.extend(shm_dir.as_ref().map(|d| d.path().to_path_buf()));
    for dir in dirs {
        let mut o = opts();
        o.blob_cfs = vec!["blobs".into()];
        o.bulk_bytes = 64 * 1024;
        o.direct_flush = true;
        let body = |i: u32| -> Vec<u8> { (0..30_000u32).map(|j| (i.wrapping_mul(7) ^ j) as u8).collect() };
        {
            let wal = Wal::open(&dir, o.clone()).unwrap();
            let blobs = wal.cf("blobs").unwrap();
            for round in 0..3u32 {
                wal.transact(move |t| {
                    for i in 0..4u32 {
                        let k = round * 4 + i;
                        t.put(blobs, &k.to_be_bytes(), &body(k));
                        t.append(k.to_be_bytes().to_vec());
                    }
                    Ok::<_, ()>(())
                })
                .unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()));
            }
            assert_eq!(wal.stats().bulk_flushes, 3, "{}", dir.display());
            assert!(wal.poisoned().is_none());
            wal.close().unwrap();
        }
        let wal = Wal::open(&dir, o).unwrap();
        let blobs = wal.cf("blobs").unwrap();
        for k in 0..12u32 {
            assert_eq!(
                wal.get(blobs, &k.to_be_bytes()).unwrap().unwrap(),
                body(k),
                "{} body {k}",
                dir.display()
            );
        }
    }
}

#[test]
fn every_durable_group_reports_its_timing() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    wal.on_group_timing(move |t| {
        let _ = tx.send(*t);
    });
    for i in 0..4u8 {
        wal.append(vec![i]).unwrap();
    }
    // The timing goes out after the callers are answered, but before the
    // writer takes the next group: the first three are in.
    let seen: Vec<wal::GroupTiming> = rx.try_iter().collect();
    assert!((3..=4).contains(&seen.len()), "{seen:?}");
    for t in &seen {
        assert_eq!(t.jobs, 1);
        assert!(t.write > std::time::Duration::ZERO && t.write <= t.total, "{t:?}");
    }
}

#[test]
fn the_memory_budget_bounds_rocksdb_wal_files_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.memory = wal::MemoryBudget {
        block_cache_bytes: 8 << 20,
        write_buffer_bytes: 8 << 20,
        max_wal_bytes: 2 << 20,
    };
    let wal = Wal::open(dir.path(), o).unwrap();
    // One write to a column family that is then left alone: without the
    // bound, the WAL file holding it (and every later one) is kept until
    // that column family flushes (RocksDB's default bound is 4 times all
    // write buffers: gigabytes). The budget's write buffer manager and
    // WAL bound together keep them to a few MiB here.
    let cf = wal.cf("views").unwrap();
    wal.transact(move |t| {
        t.append(b"first".to_vec());
        t.put(cf, b"k", b"v");
        Ok::<_, ()>(())
    })
    .unwrap();
    for i in 0..512u32 {
        let mut e = vec![0u8; 64 << 10];
        e[..4].copy_from_slice(&i.to_be_bytes());
        wal.append(e).unwrap();
    }
    let m = wal.memory();
    assert_eq!(
        (m.block_cache_capacity, m.write_buffer_budget, m.max_wal_bytes),
        (8 << 20, 8 << 20, 2 << 20)
    );
    assert!(m.wal_files_bytes > 0, "{m:?}");
    assert!(m.wal_files_bytes <= 14 << 20, "32 MiB written, WAL files not bounded: {m:?}");
    assert!(m.memtable_bytes <= 16 << 20, "memtables past the budget: {m:?}");
    assert_eq!(wal.get(cf, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    // What is on disk, by column family: the flushed log's tables and
    // RocksDB's WAL files add up to what the directory holds.
    wal.flush_all().unwrap();
    let d = wal.disk();
    let log = d.column_families.iter().find(|c| c.name == "log").unwrap();
    assert!(log.table_bytes >= 512 * (64 << 10), "{d:?}");
    let views = d.column_families.iter().find(|c| c.name == "views").unwrap();
    assert!(views.table_bytes > 0, "{d:?}");
    let files: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".sst") || n.ends_with(".blob") || n.ends_with(".log")
        })
        .map(|e| e.metadata().unwrap().len())
        .sum();
    // (A compaction may replace tables between the two readings.)
    assert!(
        d.total().abs_diff(files) <= files / 4,
        "{} vs {files} in the directory: {d:?}",
        d.total()
    );
    wal.close().unwrap();
}
