//! Damaged backups: audit and restore refuse them, naming the object, the
//! origin, the seq and the byte offset (for a pack: the body's blake3 and
//! its byte offset in the pack), and a restore applies nothing past the
//! last entry it verified. Interrupted restores continue.

mod common;
use common::copy_dir;

use std::path::{Path, PathBuf};
use std::process::Command;
use tandem::backup::Backups;
use tandem::event::Flags;
use tandem::mutate::{self, NewMessage};
use tandem::replay::views_digest;
use tandem::store::{wal_options, Store};
use wal::Origin;

const NODE: &str = "tampered";

fn replay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem-replay"))
}

/// A node with `n` messages, backed up in two runs into `bk`. Returns the
/// views digest of the node.
fn backed_up(dir: &Path, bk: &Path, n: u32) -> String {
    let store = Store::open(&dir.join("db"), NODE, wal_options(NODE)).unwrap();
    store
        .run_blocking(|t, c| mutate::create_user(t, c, "u@example.org", "x".into(), 1_700_000_000))
        .unwrap();
    let backups = Backups::default();
    for i in 0..n {
        let m = NewMessage::new(
            format!("Subject: {i}\r\n\r\nbody {i} {}\r\n", "y".repeat(i as usize % 50)).into_bytes(),
            Flags::default(),
            1_700_000_000,
        );
        store
            .run_blocking(move |t, c| mutate::append(t, c, "u@example.org", "INBOX", &m).map(|_| ()))
            .unwrap();
        if i == n / 2 {
            backups.run(&store, bk, false).unwrap();
        }
    }
    backups.run(&store, bk, false).unwrap();
    let d = views_digest(&store).unwrap();
    store.close().unwrap();
    d
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn segments(bk: &Path) -> Vec<PathBuf> {
    let origin = Origin::from_node_id(NODE);
    let d = bk.join("segments").join(origin.to_string());
    let mut v: Vec<PathBuf> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Head of the node's origin in a restored data dir (0 if nothing).
fn restored_head(data: &Path) -> u64 {
    if !data.join("db").exists() {
        return 0;
    }
    let s = Store::open(&data.join("db"), NODE, wal_options(NODE)).unwrap();
    let h = s.wal().heads().0.get(&Origin::from_node_id(NODE)).copied().unwrap_or(0);
    s.close().unwrap();
    h
}

/// Audit and restore both refuse `bk`; every message names all of `needles`.
/// Returns the head the refused restore left behind.
fn refused(bk: &Path, scratch: &Path, needles: &[&str]) -> u64 {
    let (ok, out) = run(replay().arg("audit").arg(bk));
    assert!(!ok, "audit accepted a damaged backup: {out}");
    for n in needles {
        assert!(out.contains(n), "audit does not name {n:?}: {out}");
    }
    let to = scratch.join("restored");
    let (ok, out) = run(replay().args(["restore", "--from"]).arg(bk).arg("--data-dir").arg(&to));
    assert!(!ok, "restore accepted a damaged backup: {out}");
    for n in needles {
        assert!(out.contains(n), "restore does not name {n:?}: {out}");
    }
    restored_head(&to)
}

#[test]
fn flipped_missing_and_truncated_objects_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    backed_up(&dir.path().join("node"), &bk, 40);
    let origin = Origin::from_node_id(NODE).to_string();
    let segs = segments(&bk);
    assert_eq!(segs.len(), 2, "two runs, one origin: {segs:?}");
    let seg2 = segs[1].strip_prefix(&bk).unwrap().to_string_lossy().into_owned();
    let first2: u64 = seg2.rsplit('/').next().unwrap()[..20].parse().unwrap();

    // A flipped byte inside the third entry of the second segment.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    let bytes = std::fs::read(b.join(&seg2)).unwrap();
    let r = wal::segment::SegmentReader::open(&bytes[..]).unwrap();
    let mut r = r;
    r.next_entry().unwrap();
    r.next_entry().unwrap();
    let off = r.offset();
    let mut damaged = bytes.clone();
    damaged[off as usize + 4 + 45] ^= 0x10;
    std::fs::write(b.join(&seg2), &damaged).unwrap();
    let seq = first2 + 2;
    let head = refused(
        &b,
        case.path(),
        &[&seg2, &origin, &format!("seq {seq}"), &format!("byte offset {off}")],
    );
    assert!(head < seq, "restore applied seq {head}, past the damaged seq {seq}");

    // A missing segment.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    std::fs::remove_file(b.join(&seg2)).unwrap();
    let head = refused(&b, case.path(), &[&seg2, "missing", &origin]);
    assert!(head < first2);

    // A truncated segment.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    std::fs::write(b.join(&seg2), &bytes[..bytes.len() - 100]).unwrap();
    let head = refused(&b, case.path(), &[&seg2, "truncated", &origin, "byte offset"]);
    assert!(head < first2 + (bytes.len() as u64 / 60), "a truncated segment applied everything");

    // Packs: the second run's pack and its index, from manifest 2.
    let t = tandem::backup::target::DirTarget::new(&bk).unwrap();
    let m2 = tandem::backup::layout::load_manifest(&t, 2).unwrap().manifest;
    assert_eq!(m2.packs.len(), 1, "one pack per run");
    let pack = m2.packs[0].clone();
    assert!(pack.bodies.len() >= 10, "{pack:?}");
    assert!(!bk.join("bodies").exists(), "no per-body objects are written");
    let pack_bytes = std::fs::read(bk.join(&pack.object)).unwrap();
    assert_eq!(pack_bytes.len() as u64, pack.len);
    assert_eq!(blake3::hash(&pack_bytes).to_hex().as_str(), pack.blake3);
    // The seq of the entry naming a body, from the place a refusal names.
    let seq_named = |out: &str| -> u64 {
        let at = out.find(&format!("origin {origin} seq ")).expect("the refusal names the entry");
        out[at + format!("origin {origin} seq ").len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };

    // A flipped byte inside the fourth body of the pack.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    let victim = &pack.bodies[3];
    let mut damaged = pack_bytes.clone();
    damaged[(victim.1 + victim.2 / 2) as usize] ^= 0x20;
    std::fs::write(b.join(&pack.object), &damaged).unwrap();
    let (ok, out) = run(replay().arg("audit").arg(&b));
    assert!(!ok, "{out}");
    let needles = [
        pack.object.as_str(),
        victim.0.as_str(),
        &format!("byte offset {}", victim.1),
        "does not match its blake3",
    ];
    let head = refused(&b, case.path(), &needles);
    let seq = seq_named(&out);
    assert!(head < seq, "restore applied seq {head}, past seq {seq} whose body is damaged");

    // A truncated pack: cut inside its sixth body.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    let victim = &pack.bodies[5];
    std::fs::write(b.join(&pack.object), &pack_bytes[..(victim.1 + 3) as usize]).unwrap();
    let (_, out) = run(replay().arg("audit").arg(&b));
    let head = refused(
        &b,
        case.path(),
        &[
            pack.object.as_str(),
            victim.0.as_str(),
            &format!("byte offset {}", victim.1),
            "truncated",
        ],
    );
    assert!(head < seq_named(&out), "a truncated pack applied the entry whose body it lost");

    // A missing pack.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    std::fs::remove_file(b.join(&pack.object)).unwrap();
    refused(&b, case.path(), &[pack.object.as_str(), pack.bodies[0].0.as_str(), "missing"]);

    // A flipped byte in a manifest.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    let m = b.join("manifests").join(format!("{:020}.man", 2));
    let mut mb = std::fs::read(&m).unwrap();
    mb[20] ^= 0x01;
    std::fs::write(&m, &mb).unwrap();
    refused(&b, case.path(), &["manifests/00000000000000000002.man", "checksum"]);
}

#[test]
fn interrupted_restore_continues_without_reapplying() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let digest = backed_up(&dir.path().join("node"), &bk, 1200);
    let to = dir.path().join("restored");
    // First run stops at an entry in the middle of the second segment.
    let (ok, out) = run(replay()
        .args(["restore", "--json", "--seq", &format!("{NODE}:900"), "--from"])
        .arg(&bk)
        .arg("--data-dir")
        .arg(&to));
    assert!(ok, "{out}");
    assert_eq!(restored_head(&to), 900);
    // The second continues from there.
    let (ok, out) = run(replay().args(["restore", "--json", "--from"]).arg(&bk).arg("--data-dir").arg(&to));
    assert!(ok, "{out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(r["resumed_at"].as_u64().unwrap() >= 900, "{r}");
    assert_eq!(
        r["entries_applied"].as_u64().unwrap(),
        r["order"].as_u64().unwrap() - r["resumed_at"].as_u64().unwrap()
    );
    let s = Store::open(&to.join("db"), NODE, wal_options(NODE)).unwrap();
    assert_eq!(views_digest(&s).unwrap(), digest);
    s.close().unwrap();

    // Killed at a random point, then run again: the same state.
    let to = dir.path().join("killed");
    let mut child = replay()
        .args(["restore", "--from"])
        .arg(&bk)
        .arg("--data-dir")
        .arg(&to)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let _ = child.kill();
    let _ = child.wait();
    let (ok, out) = run(replay().args(["restore", "--json", "--from"]).arg(&bk).arg("--data-dir").arg(&to));
    assert!(ok, "{out}");
    let s = Store::open(&to.join("db"), NODE, wal_options(NODE)).unwrap();
    assert_eq!(views_digest(&s).unwrap(), digest);
    s.close().unwrap();
    // A data dir of another node is refused.
    std::fs::write(to.join("node-id"), "someone-else").unwrap();
    let (ok, out) = run(replay().args(["restore", "--from"]).arg(&bk).arg("--data-dir").arg(&to));
    assert!(!ok && out.contains("someone-else"), "{out}");

    // One read in a hundred fails: the restore retries and finishes.
    let to = dir.path().join("flaky");
    let (ok, out) = run(replay()
        .env("TANDEM_BACKUP_READ_FAULTS", "0.01")
        .args(["restore", "--json", "--from"])
        .arg(&bk)
        .arg("--data-dir")
        .arg(&to));
    assert!(ok, "{out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(r["read_retries"].as_u64().unwrap() > 0, "no fault was injected: {r}");
    let s = Store::open(&to.join("db"), NODE, wal_options(NODE)).unwrap();
    assert_eq!(views_digest(&s).unwrap(), digest);
    s.close().unwrap();
}
