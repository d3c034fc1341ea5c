//! Damage is found and named: a flipped byte in a stored entry, in an SST
//! file, and in a segment file; a torn tail is tolerated only when asked.

use wal::{segment, Origin, SegmentError, Wal, WalError, WalOptions, GENESIS};

fn opts() -> WalOptions {
    WalOptions::new(Origin::from_node_id("a"))
}

fn filled(dir: &std::path::Path, n: u64) -> Origin {
    let wal = Wal::open(dir, opts()).unwrap();
    for i in 1..=n {
        wal.append(format!("PAYLOAD-MARKER-{i:04}-{}", "x".repeat(200)).into_bytes())
            .unwrap();
    }
    let o = wal.local_origin();
    wal.close().unwrap();
    o
}

#[test]
fn flipped_byte_in_stored_entry_names_origin_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    let origin = filled(dir.path(), 10);
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        let mut v = wal.raw_entry(origin, 5).unwrap().unwrap();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        wal.put_raw_entry(origin, 5, &v).unwrap();
        match wal.verify_all() {
            Err(WalError::Corrupt { place, .. }) => assert_eq!((place.origin, place.seq), (origin, 5)),
            other => panic!("not detected: {other:?}"),
        }
    }
    // Opening checks the tail of every chain, so the damage refuses the open.
    match Wal::open(dir.path(), opts()) {
        Err(WalError::Corrupt { place, .. }) => assert_eq!((place.origin, place.seq), (origin, 5)),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a corrupt log"),
    }
    let msg = match Wal::open(dir.path(), opts()) {
        Err(e) => e.to_string(),
        Ok(_) => unreachable!(),
    };
    assert!(msg.contains(&origin.to_string()) && msg.contains("seq 5"), "{msg}");
}

#[test]
fn flipped_byte_in_sst_file_is_refused_with_origin() {
    let dir = tempfile::tempdir().unwrap();
    let origin = filled(dir.path(), 50);
    // Force the entries into an SST file.
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        wal.flush_all().unwrap();
        wal.close().unwrap();
    }
    let marker = b"PAYLOAD-MARKER-0025";
    let mut hit = false;
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("sst") {
            continue;
        }
        let mut b = std::fs::read(&p).unwrap();
        if let Some(pos) = b.windows(marker.len()).position(|w| w == marker) {
            b[pos + 20] ^= 0x01;
            std::fs::write(&p, &b).unwrap();
            hit = true;
        }
    }
    assert!(hit, "marker not found in any SST file");
    let mut o = opts();
    o.verify_tail = u64::MAX;
    match Wal::open(dir.path(), o) {
        Err(WalError::Corrupt { place, reason }) => {
            assert_eq!(place.origin, origin);
            assert!((1..=50).contains(&place.seq), "{place} {reason}");
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a log with a damaged SST"),
    }
}

#[test]
fn damaged_segment_names_origin_seq_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let origin = filled(dir.path(), 8);
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let es = wal.read_range(origin, 1, 8, 100).unwrap();
    let bytes = segment::encode(&GENESIS, &es);
    let path = dir.path().join("seg.tseg");
    std::fs::write(&path, &bytes).unwrap();
    // Flip one payload byte of seq 4.
    let mut b = std::fs::read(&path).unwrap();
    let mut off = 66usize;
    for e in &es[..3] {
        off += 4 + e.encode_value().len();
    }
    b[off + 4 + 41 + 3] ^= 0x40;
    std::fs::write(&path, &b).unwrap();
    match segment::decode(&std::fs::read(&path).unwrap()) {
        Err(SegmentError::Entry {
            origin: o, seq, offset, ..
        }) => assert_eq!((o, seq, offset), (origin, 4, off as u64)),
        other => panic!("not detected: {other:?}"),
    }
    // Truncated in the middle of seq 6.
    let mut off6 = 66usize;
    for e in &es[..5] {
        off6 += 4 + e.encode_value().len();
    }
    match segment::decode(&bytes[..off6 + 10]) {
        Err(SegmentError::Truncated { origin: o, seq, offset }) => assert_eq!((o, seq, offset), (origin, 6, off6 as u64)),
        other => panic!("not detected: {other:?}"),
    }
    let msg = segment::decode(&bytes[..off6 + 10]).unwrap_err().to_string();
    assert!(msg.contains("seq 6") && msg.contains(&format!("offset {off6}")), "{msg}");
}
