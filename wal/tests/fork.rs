//! Forks and rollbacks: an entry for a seq already held is compared by
//! hash, and a node whose own log went backwards moves what it appended
//! since to a successor origin instead of reusing seqs.

use wal::{AppendError, Entry, Origin, Wal, WalError, WalOptions};

fn opts(node: &str) -> WalOptions {
    let mut o = WalOptions::new(Origin::from_node_id(node));
    o.user_cfs = vec!["views".into()];
    o
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn ship(to: &Wal, entries: Vec<Entry>) -> Result<usize, AppendError<WalError>> {
    to.transact(move |t| {
        let mut n = 0;
        for e in &entries {
            if t.append_remote(e)?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    })
}

#[test]
fn a_held_seq_with_another_hash_is_a_fork_and_nothing_of_the_batch_applies() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Wal::open(da.path(), opts("a")).unwrap();
    let b = Wal::open(db.path(), opts("b")).unwrap();
    for i in 0..4u8 {
        a.append(vec![i]).unwrap();
    }
    let oa = a.local_origin();
    let real = a.read_range(oa, 1, 4, 10).unwrap();
    assert_eq!(ship(&b, real.clone()).unwrap(), 4);
    // The same entries again are duplicates (same hashes): nothing applied.
    assert_eq!(ship(&b, real.clone()).unwrap(), 0);
    // Another history of the same origin: seq 3 onwards differ.
    let mut other = real[..2].to_vec();
    let mut prev = real[1].hash;
    for s in 3..=5u64 {
        let e = Entry::new(&prev, oa, s, 99, format!("other {s}").into_bytes());
        prev = e.hash;
        other.push(e);
    }
    let before = b.last_order();
    match ship(&b, other) {
        Err(AppendError::Rejected(WalError::Fork { place, held, offered })) => {
            assert_eq!((place.origin, place.seq), (oa, 3));
            assert_ne!(held, offered);
        }
        r => panic!("a fork was not refused: {r:?}"),
    }
    assert_eq!(b.last_order(), before, "part of a forked batch was applied");
    assert_eq!(b.heads().get(oa), 4);
    assert_eq!(b.head_hash(oa), a.head_hash(oa));
}

#[test]
fn a_rolled_back_node_takes_its_missing_tail_back_or_moves_its_new_entries_to_a_successor_origin() {
    let root = tempfile::tempdir().unwrap();
    let (pa, copy, pb) = (root.path().join("a"), root.path().join("a-old"), root.path().join("b"));
    let b = Wal::open(&pb, opts("b")).unwrap();
    let oa = Origin::from_node_id("a");
    {
        let a = Wal::open(&pa, opts("a")).unwrap();
        for i in 0..3u8 {
            a.append(vec![i]).unwrap();
        }
        a.close().unwrap();
        drop(a);
        copy_dir(&pa, &copy);
        let a = Wal::open(&pa, opts("a")).unwrap();
        for i in 3..6u8 {
            a.append(vec![i]).unwrap();
        }
        ship(&b, a.read_range(oa, 1, 6, 10).unwrap()).unwrap();
        a.close().unwrap();
    }
    // A comes back from the old copy (seq 3), then appends twice before it
    // hears from B: seqs 4 and 5 now name other entries than at B.
    std::fs::remove_dir_all(&pa).unwrap();
    copy_dir(&copy, &pa);
    let a = Wal::open(&pa, opts("a")).unwrap();
    assert_eq!(a.heads().get(oa), 3);
    a.append(b"after restore 1".to_vec()).unwrap();
    a.append(b"after restore 2".to_vec()).unwrap();
    let order_before = a.last_order();
    // B's history of origin A arrives: 1..3 are the same, 4 is a fork.
    let from_b = b.read_range(oa, 1, 6, 10).unwrap();
    let fb = from_b.clone();
    let r = a
        .transact(move |t| {
            let mut moved = None;
            for e in &fb {
                match t.append_remote(e) {
                    Ok(_) => {}
                    Err(WalError::Fork { place, .. }) if place.origin == t.local_origin() => {
                        moved = Some(t.rehome(place.seq)?);
                        t.append_remote(e)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            // A local append in the same transaction goes to the new origin.
            let n = t.append(b"after detection".to_vec());
            Ok((moved, n))
        })
        .unwrap();
    let (moved, n) = r;
    let moved = moved.expect("the fork was not found");
    assert_eq!((moved.old, moved.from, moved.moved), (oa, 4, 2));
    assert_ne!(moved.new, oa);
    assert_eq!((n.origin, n.seq), (moved.new, 3));
    assert_eq!(a.local_origin(), moved.new);
    // Origin A now equals B's history; the moved entries live on, in their
    // place in the apply order, under the new origin.
    assert_eq!(a.heads().get(oa), 6);
    assert_eq!(a.head_hash(oa), b.head_hash(oa));
    let moved_entries = a.read_range(moved.new, 1, 3, 10).unwrap();
    let payloads: Vec<&[u8]> = moved_entries.iter().map(|e| e.payload.as_slice()).collect();
    assert_eq!(payloads, vec![&b"after restore 1"[..], b"after restore 2", b"after detection"]);
    let order = a.read_order(1, 100).unwrap();
    assert_eq!(order.len() as u64, order_before + 3 + 1);
    assert_eq!((order[3].1.origin, order[3].1.seq), (moved.new, 1));
    assert_eq!((order[4].1.origin, order[4].1.seq), (moved.new, 2));
    assert_eq!(a.verify_all().unwrap(), 9);
    // The successor origin survives a reopen (the store remembers the
    // configured origin as its base), and so does everything else.
    a.close().unwrap();
    drop(a);
    let a = Wal::open(&pa, opts("a")).unwrap();
    assert_eq!(a.local_origin(), moved.new);
    assert_eq!(a.base_origin(), oa);
    assert_eq!(a.append(b"later".to_vec()).unwrap().seq, 4);
    assert_eq!(a.verify_all().unwrap(), 10);
    // B takes the successor origin's entries as new ones: nothing reused.
    let succ = a.read_range(moved.new, 1, 4, 10).unwrap();
    assert_eq!(ship(&b, succ).unwrap(), 4);
    // Another node's id still cannot open this store.
    drop(a);
    assert!(matches!(Wal::open(&pa, opts("c")), Err(WalError::WrongOrigin { .. })));
}

#[test]
fn a_rolled_back_node_without_new_entries_takes_its_tail_back() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = Wal::open(db.path(), opts("a")).unwrap();
    for i in 0..5u8 {
        src.append(vec![i]).unwrap();
    }
    let oa = src.local_origin();
    let all = src.read_range(oa, 1, 5, 10).unwrap();
    let a = Wal::open(da.path(), opts("a")).unwrap();
    // A holds the first two of its own entries only (as after a restore).
    ship(&a, all[..2].to_vec()).unwrap();
    assert_eq!(ship(&a, all.clone()).unwrap(), 3);
    assert_eq!(a.local_origin(), oa);
    assert_eq!(a.append(b"next".to_vec()).unwrap().seq, 6);
    // The confirmed mark only rises, and never past the head.
    assert_eq!(a.confirmed().unwrap(), 0);
    a.confirm(4).unwrap();
    a.confirm(2).unwrap();
    assert_eq!(a.confirmed().unwrap(), 4);
    a.confirm(100).unwrap();
    assert_eq!(a.confirmed().unwrap(), 6);
}
