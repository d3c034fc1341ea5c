//! Pruning and store format 2: base records, what survives a prune, reads
//! of pruned history, remote entries over a pruned origin, and opening a
//! format-1 store.

use wal::{Entry, Kept, Origin, PruneLimits, VersionVector, Wal, WalError, WalOptions, GENESIS};

fn opts(id: &str) -> WalOptions {
    let mut o = WalOptions::new(Origin::from_node_id(id));
    o.user_cfs = vec!["views".into()];
    o
}

/// Limits that allow everything but the head.
fn all(upto: &[(Origin, u64)]) -> PruneLimits {
    PruneLimits {
        upto: VersionVector(upto.iter().copied().collect()),
        max_order: u64::MAX,
        before_hlc: u64::MAX,
        keep_entries: 1,
        max_entries: 100_000,
    }
}

#[test]
fn prune_keeps_a_verifiable_chain_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::from_node_id("a");
    let views;
    {
        let wal = Wal::open(dir.path(), opts("a")).unwrap();
        views = wal.cf("views").unwrap();
        for i in 1..=20u64 {
            wal.transact(move |t| {
                t.append(format!("e{i}").into_bytes());
                t.put(views, format!("k{i}").as_bytes(), b"v");
                Ok::<_, ()>(())
            })
            .unwrap();
        }
        let e12 = wal.entry(a, 12).unwrap().unwrap();
        let r = wal.prune(&all(&[(a, 12)])).unwrap();
        assert_eq!(r.pruned, 12);
        assert_eq!(wal.stats().pruned, 12);
        assert_eq!(r.kept.get(&a), Some(&(13, Kept::Acknowledged)));
        let base = wal.base(a);
        assert_eq!((base.seq, base.hash, base.hlc), (12, e12.hash, e12.hlc));
        // Pruned history is refused by name, the rest reads and verifies.
        match wal.read_range(a, 5, 20, 100) {
            Err(WalError::Pruned { place, base }) => assert_eq!((place.seq, base), (5, 12)),
            other => panic!("expected Pruned, got {other:?}"),
        }
        assert!(matches!(wal.verify(a, 1, 20), Err(WalError::Pruned { .. })));
        assert_eq!(wal.read_range(a, 13, 20, 100).unwrap().len(), 8);
        assert_eq!(wal.verify_all().unwrap(), 8);
        assert!(wal.entry(a, 12).unwrap().is_none());
        // The apply order keeps only held entries.
        let order = wal.read_order(1, 100).unwrap();
        assert_eq!(order.first().map(|(n, e)| (*n, e.seq)), Some((13, 13)));
        // Views are untouched.
        assert_eq!(wal.scan_all(views).unwrap().len(), 20);
        wal.append(b"e21".to_vec()).unwrap();
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), opts("a")).unwrap();
    assert_eq!(wal.base(a).seq, 12);
    assert_eq!(wal.recovery_report().bases.get(&a).map(|b| b.seq), Some(12));
    assert_eq!(wal.heads().get(a), 21);
    assert_eq!(wal.verify_all().unwrap(), 9);
    assert_eq!(wal.stored_format().unwrap(), Some(wal::store::STORE_FORMAT));
}

#[test]
fn every_limit_holds_its_part_and_the_head_always_stays() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::from_node_id("a");
    let wal = Wal::open(dir.path(), opts("a")).unwrap();
    let mut hlcs = Vec::new();
    for i in 1..=10u64 {
        hlcs.push(wal.append(format!("e{i}").into_bytes()).unwrap().hlc);
    }
    // Nothing acknowledged: nothing goes.
    let mut l = all(&[]);
    let r = wal.prune(&l).unwrap();
    assert_eq!((r.pruned, r.kept.get(&a)), (0, Some(&(1, Kept::Acknowledged))));
    // A backup at order position 3.
    l.upto.set(a, 10);
    l.max_order = 3;
    let r = wal.prune(&l).unwrap();
    assert_eq!((r.pruned, r.kept.get(&a)), (3, Some(&(4, Kept::Backup))));
    // A window: entries from the 6th on are too young.
    l.max_order = u64::MAX;
    l.before_hlc = hlcs[5];
    let r = wal.prune(&l).unwrap();
    assert_eq!((r.pruned, r.kept.get(&a)), (2, Some(&(6, Kept::Window))));
    // A batch of one.
    l.before_hlc = u64::MAX;
    l.max_entries = 1;
    let r = wal.prune(&l).unwrap();
    assert_eq!((r.pruned, r.kept.get(&a)), (1, Some(&(7, Kept::Batch))));
    // The newest three are kept.
    l.max_entries = 1000;
    l.keep_entries = 3;
    let r = wal.prune(&l).unwrap();
    assert_eq!((r.pruned, r.kept.get(&a)), (1, Some(&(8, Kept::Count))));
    // Everything acknowledged, no count: the head still stays.
    l.keep_entries = 0;
    let r = wal.prune(&l).unwrap();
    assert_eq!((r.pruned, r.kept.get(&a)), (2, Some(&(10, Kept::Count))));
    assert_eq!(wal.base(a).seq, 9);
    assert_eq!(wal.verify_all().unwrap(), 1);
}

#[test]
fn origins_are_pruned_each_by_its_own_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Origin::from_node_id("a"), Origin::from_node_id("b"));
    let wal = Wal::open(dir.path(), opts("a")).unwrap();
    let mut prev = GENESIS;
    for i in 1..=6u64 {
        wal.append(format!("a{i}").into_bytes()).unwrap();
        let e = Entry::new(&prev, b, i, i, format!("b{i}").into_bytes());
        prev = e.hash;
        wal.transact(move |t| t.append_remote(&e).map(|_| ())).unwrap();
    }
    // b is not acknowledged at all: its first entry holds b, a goes on.
    let r = wal.prune(&all(&[(a, 4)])).unwrap();
    assert_eq!(r.pruned, 4);
    assert_eq!(r.kept.get(&b), Some(&(1, Kept::Acknowledged)));
    assert_eq!((wal.base(a).seq, wal.base(b).seq), (4, 0));
    let r = wal.prune(&all(&[(a, 4), (b, 3)])).unwrap();
    assert_eq!(r.pruned, 3);
    assert_eq!(wal.pruned_vector(), VersionVector([(a, 4), (b, 3)].into_iter().collect()));
    assert_eq!(wal.verify_all().unwrap(), 2 + 3);
    // A peer offering pruned entries again: the base hash is compared.
    let b3 = Entry::new(&GENESIS, b, 3, 3, b"other".to_vec());
    let r = wal.transact(move |t| t.append_remote(&b3).map(|_| ()));
    assert!(matches!(r, Err(wal::AppendError::Rejected(WalError::Fork { .. }))), "{r:?}");
    let mut p = GENESIS;
    let mut b2 = None;
    for i in 1..=3u64 {
        let e = Entry::new(&p, b, i, i, format!("b{i}").into_bytes());
        p = e.hash;
        if i == 2 {
            b2 = Some(e.clone());
        }
        let r = wal.transact(move |t| t.append_remote(&e));
        assert!(matches!(r, Ok(None)), "seq {i}: {r:?}");
    }
    assert!(b2.is_some());
    // The next entry of b still chains from the base.
    let e7 = Entry::new(&wal.entry(b, 6).unwrap().unwrap().hash, b, 7, 7, b"b7".to_vec());
    wal.transact(move |t| t.append_remote(&e7).map(|_| ())).unwrap();
    wal.close().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), opts("a")).unwrap();
    assert_eq!(wal.verify_all().unwrap(), 2 + 4);
}

#[test]
fn a_format_1_store_opens_verifies_and_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::from_node_id("a");
    {
        let wal = Wal::open(dir.path(), opts("a")).unwrap();
        for i in 1..=5u64 {
            wal.append(format!("e{i}").into_bytes()).unwrap();
        }
        // What the format-1 build left: the format record at 1, no base
        // record (the store layout is otherwise the same).
        wal.set_format_for_test(wal::store::STORE_FORMAT_V1).unwrap();
        assert_eq!(wal.stored_format().unwrap(), Some(1));
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), opts("a")).unwrap();
    assert_eq!(wal.recovery_report().upgraded_from, Some(1));
    assert_eq!(wal.stored_format().unwrap(), Some(2));
    assert_eq!(wal.heads().get(a), 5);
    assert_eq!(wal.base(a).seq, 0);
    assert_eq!(wal.read_range(a, 1, 5, 10).unwrap().len(), 5);
    assert_eq!(wal.verify_all().unwrap(), 5);
    // It prunes like any format-2 store.
    assert_eq!(wal.prune(&all(&[(a, 2)])).unwrap().pruned, 2);
    wal.close().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), opts("a")).unwrap();
    assert_eq!(wal.recovery_report().upgraded_from, None);
    assert_eq!(wal.verify_all().unwrap(), 3);
}

#[test]
fn an_unknown_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), opts("a")).unwrap();
        wal.append(b"x".to_vec()).unwrap();
        wal.set_format_for_test(3).unwrap();
        wal.close().unwrap();
    }
    match Wal::open(dir.path(), opts("a")) {
        Err(WalError::CorruptMeta { key, reason }) => {
            assert_eq!(key, "format");
            assert!(reason.contains("store format 3"), "{reason}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("format 3 opened"),
    }
}

#[test]
fn a_peer_base_is_adopted_and_the_peer_entries_after_it_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Origin::from_node_id("a"), Origin::from_node_id("b"));
    // b's chain as its author holds it.
    let mut chain = Vec::new();
    let mut prev = GENESIS;
    for i in 1..=10u64 {
        let e = Entry::new(&prev, b, i, i << 16, format!("b{i}").into_bytes());
        prev = e.hash;
        chain.push(e);
    }
    {
        let wal = Wal::open(dir.path(), opts("a")).unwrap();
        wal.append(b"a1".to_vec()).unwrap();
        for e in chain.clone().into_iter().take(3) {
            wal.transact(move |t| t.append_remote(&e).map(|_| ())).unwrap();
        }
        wal.append(b"a2".to_vec()).unwrap();
        let base8 = wal::Base {
            seq: 8,
            hash: chain[7].hash,
            hlc: chain[7].hlc,
            adopted: 0,
        };
        assert!(matches!(wal.adopt_base(a, base8), Err(WalError::Discontinuous { .. })));
        assert!(wal.adopt_base(b, base8).unwrap());
        assert!(!wal.adopt_base(b, base8).unwrap(), "already there");
        assert_eq!(wal.heads().get(b), 8);
        assert_eq!(wal.head_hash(b), Some((8, chain[7].hash)));
        assert_eq!(wal.base(b).adopted, 5);
        assert!(matches!(wal.read_range(b, 1, 8, 10), Err(WalError::Pruned { .. })));
        // The stale positions of b's dropped entries are skipped.
        let order: Vec<_> = wal
            .read_order(1, 100)
            .unwrap()
            .into_iter()
            .map(|(_, e)| (e.origin, e.seq))
            .collect();
        assert_eq!(order, vec![(a, 1), (a, 2)]);
        // Entries at or below the base are held; the next one chains.
        for e in chain.clone().into_iter().take(9) {
            let r = wal.transact(move |t| t.append_remote(&e));
            assert!(matches!(r, Ok(None) | Ok(Some(_))), "{r:?}");
        }
        assert_eq!(wal.heads().get(b), 9);
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), opts("a")).unwrap();
    assert_eq!((wal.heads().get(b), wal.base(b).seq), (9, 8));
    assert_eq!(wal.verify_all().unwrap(), 2 + 1);
    let a3 = wal.append(b"a3".to_vec()).unwrap();
    assert_eq!(a3.order, 7, "positions go on after the stale ones");
    // A prune drops the stale positions too, and the store still opens.
    let r = wal.prune(&all(&[(a, 3), (b, 9)])).unwrap();
    assert_eq!((r.pruned, r.stale_positions), (2, 3));
    wal.close().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), opts("a")).unwrap();
    assert_eq!(wal.verify_all().unwrap(), 2);
    assert_eq!(wal.append(b"a4".to_vec()).unwrap().order, 8);
}

#[test]
fn an_adopted_base_with_nothing_after_it_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let b = Origin::from_node_id("b");
    let base = wal::Base {
        seq: 40,
        hash: [7u8; 32],
        hlc: 99 << 16,
        adopted: 0,
    };
    {
        let wal = Wal::open(dir.path(), opts("a")).unwrap();
        assert!(wal.adopt_base(b, base).unwrap());
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), opts("a")).unwrap();
    assert_eq!(wal.head_hash(b), Some((40, [7u8; 32])));
    assert_eq!(wal.base(b).adopted, 40);
    assert_eq!(wal.verify_all().unwrap(), 0);
    let next = Entry::new(&[7u8; 32], b, 41, 100 << 16, b"b41".to_vec());
    assert!(wal.transact(move |t| t.append_remote(&next)).unwrap().is_some());
}

#[test]
fn peer_acknowledgements_survive_reopen_and_only_go_down_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (Origin(7), Origin(9));
    let v = |a: u64, b: u64| VersionVector([(x, a), (y, b)].into_iter().collect());
    {
        let wal = Wal::open(dir.path(), opts("a")).unwrap();
        assert!(wal.peer_acks().unwrap().is_empty());
        // Nothing recorded: a handshake lowers nothing into existence.
        wal.lower_peer_ack("127.0.0.1:1", &v(1, 1)).unwrap();
        assert!(wal.peer_acks().unwrap().is_empty());
        wal.record_peer_ack("127.0.0.1:1", &v(10, 4)).unwrap();
        wal.record_peer_ack("127.0.0.1:1", &v(12, 4)).unwrap();
        wal.record_peer_ack("127.0.0.1:2", &v(3, 3)).unwrap();
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), opts("a")).unwrap();
    let acks = wal.peer_acks().unwrap();
    assert_eq!(acks.len(), 2);
    assert_eq!(acks["127.0.0.1:1"], v(12, 4));
    assert_eq!(acks["127.0.0.1:2"], v(3, 3));
    // A handshake where the peer holds less of one origin: lowered there
    // only (never raised by it).
    wal.lower_peer_ack("127.0.0.1:1", &v(20, 2)).unwrap();
    assert_eq!(wal.peer_acks().unwrap()["127.0.0.1:1"], v(12, 2));
    wal.forget_peer_ack("127.0.0.1:2").unwrap();
    assert_eq!(wal.peer_acks().unwrap().keys().collect::<Vec<_>>(), vec!["127.0.0.1:1"]);
    // The records do not disturb the checks at open.
    wal.close().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), opts("a")).unwrap();
    assert_eq!(wal.peer_acks().unwrap()["127.0.0.1:1"], v(12, 2));
}
