//! Body packs: a run writes the bodies it needs into one pack, a body the
//! backup holds (packed earlier, or a format-1 body object) is never
//! written again, also by a writer that restarted, and a run with nothing
//! new writes nothing. A backup in the format-1 layout (one object per
//! body) still restores and audits, and a newer writer continues it.

mod common;
use common::{copy_dir, files};

use std::path::Path;
use std::process::Command;
use tandem::backup::export::RunReport;
use tandem::backup::layout;
use tandem::backup::target::DirTarget;
use tandem::backup::Backups;
use tandem::event::Flags;
use tandem::mutate::{self, NewMessage};
use tandem::replay::views_digest;
use tandem::store::{wal_options, Store};

const NODE: &str = "packed";
const USER: &str = "u@example.org";

fn replay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem-replay"))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn append(store: &Store, body: &str) {
    let m = NewMessage::new(body.as_bytes().to_vec(), Flags::default(), 1_700_000_000);
    store
        .run_blocking(move |t, c| mutate::append(t, c, USER, "INBOX", &m).map(|_| ()))
        .unwrap();
}

/// A store in `dir/db` holding the test user.
fn store_with_user(dir: &Path) -> Store {
    let store = Store::open(&dir.join("db"), NODE, wal_options(NODE)).unwrap();
    store
        .run_blocking(|t, c| mutate::create_user(t, c, USER, "x".into(), 1_700_000_000))
        .unwrap();
    store
}

fn one(r: Vec<RunReport>) -> RunReport {
    assert_eq!(r.len(), 1, "{r:?}");
    r.into_iter().next().unwrap()
}

/// Restore `bk` into a new data dir and audit both; returns the digest.
fn restore_and_audit(bk: &Path, to: &Path) -> String {
    let (ok, out) = run(replay().arg("audit").arg(bk));
    assert!(ok, "audit of {}: {out}", bk.display());
    let (ok, out) = run(replay().args(["restore", "--json", "--from"]).arg(bk).arg("--data-dir").arg(to));
    assert!(ok, "restore of {}: {out}", bk.display());
    let s = Store::open(&to.join("db"), NODE, wal_options(NODE)).unwrap();
    let d = views_digest(&s).unwrap();
    s.close().unwrap();
    d
}

/// Rewrite the backup at `bk` as format 1 wrote it: every packed body as
/// an object of its own (`bodies/<hh>/<hash>`), manifests of format 1
/// without a pack index (the chain of manifest hashes recomputed), the
/// format-1 marker, no packs.
fn to_format_1(bk: &Path) {
    let t = DirTarget::new(bk).unwrap();
    let mut prev = [0u8; 32];
    for n in layout::manifest_numbers(&t).unwrap() {
        let mut m = layout::load_manifest(&t, n).unwrap().manifest;
        for p in &m.packs {
            let bytes = std::fs::read(bk.join(&p.object)).unwrap();
            for b in &p.bodies {
                let hash: [u8; 32] = layout::parse_hash("test", "body", &b.0).unwrap();
                let path = bk.join(layout::body_name(&hash));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, &bytes[b.1 as usize..(b.1 + b.2) as usize]).unwrap();
            }
        }
        m.packs.clear();
        m.format = 1;
        m.prev = prev.iter().map(|b| format!("{b:02x}")).collect();
        let bytes = layout::encode_manifest(&m);
        assert!(!String::from_utf8_lossy(&bytes).contains("packs"), "format 1 has no pack index");
        std::fs::write(bk.join(layout::manifest_name(n)), &bytes).unwrap();
        prev = *blake3::hash(&bytes).as_bytes();
    }
    std::fs::remove_dir_all(bk.join(layout::PACK_DIR)).unwrap();
    std::fs::write(bk.join(layout::MARKER), format!("tandem-backup 1\nnode {NODE}\n")).unwrap();
}

#[test]
fn one_pack_per_run_and_no_body_twice() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let store = store_with_user(dir.path());
    for i in 0..30 {
        append(&store, &format!("Subject: {i}\r\n\r\nbody {i}\r\n"));
    }
    let backups = Backups::default();
    let r = one(backups.run(&store, &bk, false).unwrap());
    assert_eq!((r.packs, r.segments, r.bodies_written), (1, 1, 30), "{r:?}");
    // Segment, pack, manifest (and the marker of a new backup).
    assert_eq!(files(&bk).len(), 4, "{:?}", files(&bk));

    // Nothing new: nothing written.
    let before = files(&bk);
    assert!(backups.run(&store, &bk, false).unwrap().is_empty());
    assert_eq!(files(&bk), before);

    // Entries without new bodies (a flag change, a second copy of a body
    // already packed): a segment and a manifest, no pack.
    append(&store, "Subject: 3\r\n\r\nbody 3\r\n");
    let r = one(backups.run(&store, &bk, false).unwrap());
    assert_eq!((r.packs, r.bodies_written), (0, 0), "{r:?}");
    assert_eq!(files(&bk).len(), before.len() + 2);

    // A writer that starts afresh (a restarted daemon) learns what is
    // packed from the manifests: the old body is not written again, the
    // new one is, in a pack of its own run.
    let fresh = Backups::default();
    append(&store, "Subject: 7\r\n\r\nbody 7\r\n");
    append(&store, "Subject: new\r\n\r\nnew\r\n");
    let r = one(fresh.run(&store, &bk, false).unwrap());
    assert_eq!((r.packs, r.bodies_written), (1, 1), "{r:?}");
    let t = DirTarget::new(&bk).unwrap();
    let m = layout::load_manifest(&t, r.manifest).unwrap().manifest;
    assert_eq!(m.packs[0].object, layout::pack_name(r.manifest, 0));
    assert_eq!(m.bodies_referenced, 2);

    // A pack name left by a run that died before its manifest is skipped,
    // never overwritten: the run writes the next name.
    let next = r.manifest + 1;
    std::fs::write(bk.join(layout::pack_name(next, 0)), b"left by a dead run").unwrap();
    append(&store, "Subject: after\r\n\r\nafter the crash\r\n");
    let r = one(fresh.run(&store, &bk, false).unwrap());
    assert_eq!((r.manifest, r.packs), (next, 1), "{r:?}");
    let m = layout::load_manifest(&t, next).unwrap().manifest;
    assert_eq!(m.packs[0].object, layout::pack_name(next, 1));
    assert_eq!(std::fs::read(bk.join(layout::pack_name(next, 0))).unwrap(), b"left by a dead run");

    let digest = views_digest(&store).unwrap();
    store.close().unwrap();
    assert_eq!(restore_and_audit(&bk, &dir.path().join("restored")), digest);
}

#[test]
fn a_format_1_backup_restores_audits_and_is_continued() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let store = store_with_user(dir.path());
    let backups = Backups::default();
    for i in 0..24 {
        append(&store, &format!("Subject: {i}\r\n\r\nold layout {i} {}\r\n", "z".repeat(i * 40)));
        if i % 8 == 7 {
            backups.run(&store, &bk, false).unwrap();
        }
    }
    let digest_old = views_digest(&store).unwrap();
    to_format_1(&bk);
    assert!(files(&bk).iter().all(|f| !f.starts_with("packs")));
    assert_eq!(files(&bk.join("bodies")).len(), 24);

    // Read as it is: restore and audit.
    assert_eq!(restore_and_audit(&bk, &dir.path().join("old")), digest_old);
    // A damaged body object is still refused by name.
    let case = dir.path().join("damaged");
    copy_dir(&bk, &case);
    let rel = files(&bk.join("bodies"))[5].clone();
    let victim = case.join("bodies").join(&rel);
    let mut b = std::fs::read(&victim).unwrap();
    b[4] ^= 1;
    std::fs::write(&victim, &b).unwrap();
    let (ok, out) = run(replay().arg("audit").arg(&case));
    let name = format!("bodies/{}", rel.display());
    assert!(!ok && out.contains(&name) && out.contains("blake3"), "{out}");

    // A newer writer continues it: bodies held as format-1 objects are not
    // written again, new ones go into a pack.
    let fresh = Backups::default();
    append(&store, &format!("Subject: 2\r\n\r\nold layout 2 {}\r\n", "z".repeat(80)));
    append(&store, "Subject: new\r\n\r\npacked\r\n");
    let r = one(fresh.run(&store, &bk, false).unwrap());
    assert_eq!((r.packs, r.bodies_written), (1, 1), "{r:?}");
    let t = DirTarget::new(&bk).unwrap();
    let m = layout::load_manifest(&t, r.manifest).unwrap().manifest;
    assert_eq!((m.format, m.bodies_referenced), (layout::LAYOUT_FORMAT, 2));
    assert_eq!(
        std::fs::read_to_string(bk.join(layout::MARKER)).unwrap(),
        format!("tandem-backup 1\nnode {NODE}\n")
    );
    let digest = views_digest(&store).unwrap();
    store.close().unwrap();
    // The mixed backup: format-1 manifests and body objects, then packs.
    assert_eq!(restore_and_audit(&bk, &dir.path().join("mixed")), digest);
}

/// Prune deletes a pack whose bodies are all gone; a writer that knew
/// them (it ran before the prune) learns of the new base at its next run
/// and packs such a body again when mail names it anew.
#[test]
fn a_writer_relearns_what_prune_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let store = store_with_user(dir.path());
    let backups = Backups::default();
    let doomed = "Subject: doomed\r\n\r\ndeleted before the window\r\n";
    let m = NewMessage::new(doomed.as_bytes().to_vec(), Flags::default(), 1_700_000_000);
    let placed = store.run_blocking(move |t, c| mutate::append(t, c, USER, "INBOX", &m)).unwrap();
    let first = one(backups.run(&store, &bk, false).unwrap());
    assert_eq!(first.packs, 1);
    store
        .run_blocking(move |t, c| mutate::expunge(t, c, USER, placed.mailbox, &[placed.uid]).map(|_| ()))
        .unwrap();
    one(backups.run(&store, &bk, false).unwrap());
    append(&store, "Subject: kept\r\n\r\nkept\r\n");
    one(backups.run(&store, &bk, false).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(20));

    let (ok, out) = run(replay().arg("prune").arg(&bk).args(["--keep-within", "1ms", "--json"]));
    assert!(ok, "{out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((r["base"].as_u64(), r["packs_deleted"].as_u64()), (Some(2), Some(1)), "{r}");
    assert!(!bk.join(layout::pack_name(first.manifest, 0)).exists());

    // The same bytes delivered again: packed again, by the same writer.
    append(&store, doomed);
    let again = one(backups.run(&store, &bk, false).unwrap());
    assert_eq!((again.packs, again.bodies_written), (1, 1), "{again:?}");
    let digest = views_digest(&store).unwrap();
    store.close().unwrap();
    assert_eq!(restore_and_audit(&bk, &dir.path().join("restored")), digest);
}
