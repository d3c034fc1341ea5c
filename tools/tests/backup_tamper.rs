//! Damaged backups: audit and restore refuse them, naming the object, the
//! origin, the seq and the byte offset (for a body: its blake3 and its byte
//! offset in the run object), and a restore applies nothing past the last
//! entry it verified. Interrupted restores continue.

mod common;
use common::copy_dir;

use std::path::Path;
use std::process::Command;
use tandem::backup::layout;
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
    let t = tandem::backup::target::DirTarget::new(&bk).unwrap();
    assert_eq!(layout::manifest_numbers(&t).unwrap(), vec![1, 2], "two runs");
    let run2 = layout::run_name(2);
    let m2 = layout::load_manifest(&t, 2).unwrap().manifest;
    assert_eq!(m2.segments.len(), 1, "one origin");
    let seg = m2.segments[0].clone();
    let seg_at = seg.offset.unwrap();
    let bytes = std::fs::read(bk.join(&run2)).unwrap();

    // A flipped byte inside the third entry of the second run's segment:
    // named by the run object, the origin, the seq and the byte offset of
    // the entry in the object.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    let mut r = wal::segment::SegmentReader::open(&bytes[seg_at as usize..(seg_at + seg.len) as usize]).unwrap();
    r.next_entry().unwrap();
    r.next_entry().unwrap();
    let off = seg_at + r.offset();
    let mut damaged = bytes.clone();
    damaged[off as usize + 4 + 45] ^= 0x10;
    std::fs::write(b.join(&run2), &damaged).unwrap();
    let seq = seg.first + 2;
    let head = refused(
        &b,
        case.path(),
        &[&run2, &origin, &format!("seq {seq}"), &format!("byte offset {off}")],
    );
    assert!(head < seq, "restore applied seq {head}, past the damaged seq {seq}");

    // A missing run object: the chain names the gap.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    std::fs::remove_file(b.join(layout::run_name(1))).unwrap();
    let head = refused(&b, case.path(), &[&layout::run_name(1), "missing"]);
    assert_eq!(head, 0);

    // A truncated run object: its footer is gone.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    std::fs::write(b.join(&run2), &bytes[..bytes.len() - 100]).unwrap();
    let head = refused(&b, case.path(), &[&run2, "footer", "byte offset"]);
    assert!(head < seg.first, "a truncated run object applied entries");

    // A footer pointing elsewhere.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    let mut damaged = bytes.clone();
    let at = damaged.len() - 12;
    damaged[at] ^= 0x01;
    std::fs::write(b.join(&run2), &damaged).unwrap();
    refused(&b, case.path(), &[&run2, "footer", "byte offset"]);

    // Bodies: the second run's body section and its index, from its manifest.
    assert_eq!(m2.packs.len(), 1, "one body section per run");
    let pack = m2.packs[0].clone();
    assert_eq!(pack.object, run2);
    assert!(pack.bodies.len() >= 10, "{pack:?}");
    assert!(!bk.join("bodies").exists() && !bk.join("packs").exists() && !bk.join("segments").exists());
    assert_eq!(blake3::hash(&bytes[..pack.len as usize]).to_hex().as_str(), pack.blake3);
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

    // A flipped byte inside the fourth body.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    let victim = &pack.bodies[3];
    let mut damaged = bytes.clone();
    damaged[(victim.1 + victim.2 / 2) as usize] ^= 0x20;
    std::fs::write(b.join(&run2), &damaged).unwrap();
    let (ok, out) = run(replay().arg("audit").arg(&b));
    assert!(!ok, "{out}");
    let needles = [
        run2.as_str(),
        victim.0.as_str(),
        &format!("byte offset {}", victim.1),
        "does not match its blake3",
    ];
    let head = refused(&b, case.path(), &needles);
    let seq = seq_named(&out);
    assert!(head < seq, "restore applied seq {head}, past seq {seq} whose body is damaged");

    // A flipped byte in the manifest.
    let case = tempfile::tempdir().unwrap();
    let b = case.path().join("bk");
    copy_dir(&bk, &b);
    let moff = seg_at + seg.len;
    let mut damaged = bytes.clone();
    damaged[moff as usize + 20] ^= 0x01;
    std::fs::write(b.join(&run2), &damaged).unwrap();
    refused(&b, case.path(), &[&run2, "checksum", &format!("byte offset {moff}")]);
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

/// A restore cut short after it applied some batches (entries applied
/// without their merkle tree, which a restore builds once at the end)
/// leaves no stale tree marked current: run again, it ends with the views
/// and the tree of the original node.
#[test]
fn a_restore_cut_short_before_its_tree_was_built_ends_with_the_right_tree() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    // More bodies than one batch takes (1,024), so the first batch is
    // applied before the damaged body of the last is read.
    let digest = backed_up(&dir.path().join("node"), &bk, 1500);
    let t = tandem::backup::target::DirTarget::new(&bk).unwrap();
    let run2 = layout::run_name(2);
    let pack = layout::load_manifest(&t, 2).unwrap().manifest.packs[0].clone();
    let victim = pack.bodies.last().unwrap().clone();
    let b = dir.path().join("damaged");
    copy_dir(&bk, &b);
    let mut bytes = std::fs::read(b.join(&run2)).unwrap();
    bytes[(victim.1 + victim.2 / 2) as usize] ^= 0x20;
    std::fs::write(b.join(&run2), &bytes).unwrap();

    let to = dir.path().join("restored");
    let (ok, out) = run(replay().args(["restore", "--from"]).arg(&b).arg("--data-dir").arg(&to));
    assert!(!ok && out.contains("does not match its blake3"), "{out}");
    let cut = restored_head(&to);
    assert!(cut > 0 && cut < 1500, "the first batch, and only it, was applied: head {cut}");
    // What it left: views without their tree, not marked as holding one.
    let s = Store::open(&to.join("db"), NODE, wal_options(NODE)).unwrap();
    let built = tandem::merkle::build(&s.views()).unwrap();
    assert!(
        s.wal()
            .scan_prefix(s.cfs().views, &tandem::merkle::keys::all())
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .ne(built.into_iter()),
        "the cut restore's tree is already complete: the test tests nothing"
    );
    s.close().unwrap();
    drop(s);

    // Run again from the intact backup: it continues, and builds the tree.
    let (ok, out) = run(replay().args(["restore", "--json", "--from"]).arg(&bk).arg("--data-dir").arg(&to));
    assert!(ok, "{out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["resumed_at"].as_u64().unwrap(), cut, "{r}");
    let s = Store::open(&to.join("db"), NODE, wal_options(NODE)).unwrap();
    assert_eq!(views_digest(&s).unwrap(), digest, "views and tree as the original's");
    // The tree is marked current: a node starting on it builds nothing.
    assert!(!tandem::merkle::ensure(&s).unwrap());
    s.close().unwrap();
}
