//! Run objects: a run writes one object (its new bodies, its segment and
//! its manifest), a body the backup holds (in an earlier run object, a
//! format-2 pack or a format-1 body object) is never written again, also
//! by a writer that restarted, and a run with nothing new writes nothing.
//! Backups in the format-1 layout (one object per body) and the format-2
//! layout (a pack, segments and a manifest per run) still restore and
//! audit, and a format-3 writer continues them.

mod common;
use common::{copy_dir, files, to_older_format};

use std::path::{Path, PathBuf};
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

#[test]
fn one_object_per_run_and_no_body_twice() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let store = store_with_user(dir.path());
    for i in 0..30 {
        append(&store, &format!("Subject: {i}\r\n\r\nbody {i}\r\n"));
    }
    let backups = Backups::default();
    let r = one(backups.run(&store, &bk, false).unwrap());
    assert_eq!((r.objects, r.packs, r.segments, r.bodies_written), (1, 0, 1, 30), "{r:?}");
    // The run object (and the marker of a new backup), nothing else.
    assert_eq!(
        files(&bk),
        vec![PathBuf::from(layout::run_name(1)), PathBuf::from(layout::MARKER)],
        "{:?}",
        files(&bk)
    );
    let t = DirTarget::new(&bk).unwrap();
    let m = layout::load_manifest(&t, 1).unwrap().manifest;
    assert_eq!(m.format, 3);
    assert_eq!((m.packs.len(), m.packs[0].object.as_str()), (1, layout::run_name(1).as_str()));
    assert_eq!(m.segments[0].object, layout::run_name(1));
    // The layout as docs/format.md gives it: magic, bodies from byte 16 on,
    // the segment right after them, the manifest, the footer naming it.
    let run = std::fs::read(bk.join(layout::run_name(1))).unwrap();
    assert_eq!(&run[..16], layout::RUN_MAGIC);
    assert_eq!(m.packs[0].bodies[0].1, 16);
    assert_eq!(m.segments[0].offset, Some(m.packs[0].len));
    let moff = m.segments[0].offset.unwrap() + m.segments[0].len;
    assert_eq!(&run[run.len() - 8..], layout::RUN_FOOTER_MAGIC);
    assert_eq!(u64::from_be_bytes(run[run.len() - 16..run.len() - 8].try_into().unwrap()), moff);
    assert_eq!(layout::decode_manifest("run", &run[moff as usize..run.len() - 16]).unwrap(), m);
    let seg = &run[m.segments[0].offset.unwrap() as usize..moff as usize];
    assert_eq!(wal::segment::decode(seg).unwrap().entries.len() as u64, r.entries);

    // Nothing new: nothing written.
    let before = files(&bk);
    assert!(backups.run(&store, &bk, false).unwrap().is_empty());
    assert_eq!(files(&bk), before);

    // Entries without new bodies (a second copy of a body already held):
    // one run object with no body section.
    append(&store, "Subject: 3\r\n\r\nbody 3\r\n");
    let r = one(backups.run(&store, &bk, false).unwrap());
    assert_eq!((r.objects, r.bodies_written), (1, 0), "{r:?}");
    assert_eq!(files(&bk).len(), before.len() + 1);
    assert!(layout::load_manifest(&t, r.manifest).unwrap().manifest.packs.is_empty());

    // A writer that starts afresh (a restarted daemon) learns which bodies
    // the backup holds from the manifests: the old body is not written
    // again, the new one is, in its run's object.
    let fresh = Backups::default();
    append(&store, "Subject: 7\r\n\r\nbody 7\r\n");
    append(&store, "Subject: new\r\n\r\nnew\r\n");
    let r = one(fresh.run(&store, &bk, false).unwrap());
    assert_eq!((r.objects, r.bodies_written), (1, 1), "{r:?}");
    let m = layout::load_manifest(&t, r.manifest).unwrap().manifest;
    assert_eq!(m.packs[0].object, layout::run_name(r.manifest));
    assert_eq!(m.bodies_referenced, 2);

    // A temporary file left by a writer that died mid-object is not an
    // object: the next run writes its name as usual.
    std::fs::create_dir_all(bk.join("tmp")).unwrap();
    let dead_tmp = bk.join("tmp").join(format!("runs_{:020}.run.1.0", r.manifest + 1));
    std::fs::write(&dead_tmp, b"left by a dead writer").unwrap();
    // A name taken by another writer is never overwritten: the run fails,
    // naming the object.
    let taken = bk.join(layout::run_name(r.manifest + 1));
    std::fs::write(&taken, b"another writer's").unwrap();
    append(&store, "Subject: after\r\n\r\nafter the crash\r\n");
    let e = fresh.run(&store, &bk, false).unwrap_err().to_string();
    assert!(e.contains(&layout::run_name(r.manifest + 1)) && e.contains("exists already"), "{e}");
    assert_eq!(std::fs::read(&taken).unwrap(), b"another writer's");
    std::fs::remove_file(&taken).unwrap();
    let r2 = one(fresh.run(&store, &bk, false).unwrap());
    assert_eq!((r2.manifest, r2.objects), (r.manifest + 1, 1), "{r2:?}");

    let digest = views_digest(&store).unwrap();
    store.close().unwrap();
    assert_eq!(restore_and_audit(&bk, &dir.path().join("restored")), digest);
}

/// A run whose new bodies pass the size limit ends there; the rest goes
/// into the next run, so one object stays bounded.
#[test]
fn a_run_object_is_bounded_by_its_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let store = store_with_user(dir.path());
    let big = "b".repeat(1000);
    let limit = 20_000;
    for i in 0..50u64 {
        append(&store, &format!("Subject: {i}\r\n\r\n{i:03} {big}\r\n"));
    }
    let runs = Backups::default().with_run_max_body_bytes(limit).run(&store, &bk, false).unwrap();
    assert_eq!(runs.len(), 3, "{runs:?}");
    for r in &runs[..2] {
        assert!(r.body_bytes >= limit && r.body_bytes < limit + 1100, "{runs:?}");
    }
    assert_eq!(runs.iter().map(|r| r.bodies_written).sum::<u64>(), 50);
    let digest = views_digest(&store).unwrap();
    store.close().unwrap();
    assert_eq!(restore_and_audit(&bk, &dir.path().join("restored")), digest);
}

/// The continuous job's run stays open until its deadline and takes what
/// is applied meanwhile, bodies included, into its one object; a stop
/// closes it early; a run that reached its byte bound says so; and the
/// backup restores to the node's state.
#[test]
fn a_streamed_run_takes_what_is_applied_while_it_is_open() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let store = store_with_user(dir.path());
    for i in 0..5 {
        append(&store, &format!("Subject: {i}\r\n\r\nbefore {i}\r\n"));
    }
    let before = store.wal().last_order();
    let backups = Backups::default();
    let stop = AtomicBool::new(false);
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..10 {
                std::thread::sleep(Duration::from_millis(20));
                append(&store, &format!("Subject: {i}\r\n\r\nduring {i}\r\n"));
            }
        })
    };
    let t0 = Instant::now();
    let (r, full) = backups
        .run_stream(&store, &bk, t0 + Duration::from_millis(1500), &stop)
        .unwrap()
        .expect("something to back up");
    writer.join().unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(1500), "the run closed before its deadline");
    assert!(!full, "{r:?}");
    assert_eq!(r.objects, 1, "{r:?}");
    assert_eq!(r.order_from, 1, "{r:?}");
    assert_eq!(
        r.order_to,
        before + 10,
        "the entries applied while the run was open are in it: {r:?}"
    );
    assert_eq!(r.bodies_written, 15, "{r:?}");
    assert_eq!(backups.durable_position(&bk), Some(before + 10));
    // Nothing new: no run, no object.
    let t1 = Instant::now();
    assert!(backups
        .run_stream(&store, &bk, t1 + Duration::from_secs(30), &stop)
        .unwrap()
        .is_none());
    assert!(t1.elapsed() < Duration::from_secs(5));
    // A stop closes an open run long before its deadline.
    append(&store, "Subject: last\r\n\r\nlast\r\n");
    let t2 = Instant::now();
    let (r, _) = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            stop.store(true, Ordering::Relaxed);
        });
        backups
            .run_stream(&store, &bk, t2 + Duration::from_secs(60), &stop)
            .unwrap()
            .expect("one entry")
    });
    assert!(t2.elapsed() < Duration::from_secs(10), "a stop did not close the run");
    assert_eq!((r.entries, r.bodies_written), (1, 1), "{r:?}");
    let runs: Vec<_> = files(&bk).into_iter().filter(|p| p.to_string_lossy().ends_with(".run")).collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    // A run at its byte bound says so, and the next takes the rest.
    let small = Backups::default().with_run_max_body_bytes(200);
    let bk2 = dir.path().join("bk2");
    let unstopped = AtomicBool::new(false);
    let (r, full) = small.run_stream(&store, &bk2, Instant::now(), &unstopped).unwrap().unwrap();
    assert!(full, "{r:?}");
    let mut n = 1;
    while let Some((_, full)) = small.run_stream(&store, &bk2, Instant::now(), &unstopped).unwrap() {
        n += 1;
        if !full {
            break;
        }
    }
    assert!(n >= 2, "{n} runs");
    assert_eq!(small.durable_position(&bk2), Some(store.wal().last_order()));
    let digest = views_digest(&store).unwrap();
    store.close().unwrap();
    assert_eq!(restore_and_audit(&bk, &dir.path().join("restored")), digest);
    assert_eq!(restore_and_audit(&bk2, &dir.path().join("restored2")), digest);
}

/// A backup written in an older layout (`format` 1: an object per body;
/// 2: a pack, a segment and a manifest per run) restores and audits as it
/// is, damage in it is refused by name, and a format-3 writer continues
/// it with run objects; the mixed backup restores to the node's state.
fn older_format_is_read_and_continued(format: u32) {
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
    to_older_format(&bk, format);
    assert!(files(&bk).iter().all(|f| !f.starts_with(layout::RUN_DIR)));
    assert_eq!(files(&bk.join("manifests")).len(), 3);
    assert_eq!(files(&bk.join("segments")).len(), 3);
    if format == 1 {
        assert_eq!(files(&bk.join("bodies")).len(), 24);
    } else {
        assert_eq!(files(&bk.join("packs")).len(), 3);
    }

    // Read as it is: restore and audit.
    assert_eq!(restore_and_audit(&bk, &dir.path().join("old")), digest_old);
    // A damaged body is still refused by name.
    let case = dir.path().join("damaged");
    copy_dir(&bk, &case);
    let sub = if format == 1 { "bodies" } else { "packs" };
    let rel = files(&bk.join(sub))[1].clone();
    let victim = case.join(sub).join(&rel);
    let mut b = std::fs::read(&victim).unwrap();
    let at = b.len() - 3;
    b[at] ^= 1;
    std::fs::write(&victim, &b).unwrap();
    let (ok, out) = run(replay().arg("audit").arg(&case));
    let name = format!("{sub}/{}", rel.display());
    assert!(!ok && out.contains(&name) && out.contains("blake3"), "{out}");

    // A newer writer continues it: bodies held in the old layout are not
    // written again, new ones go into the run object.
    let fresh = Backups::default();
    append(&store, &format!("Subject: 2\r\n\r\nold layout 2 {}\r\n", "z".repeat(80)));
    append(&store, "Subject: new\r\n\r\nin a run object\r\n");
    let r = one(fresh.run(&store, &bk, false).unwrap());
    assert_eq!((r.objects, r.bodies_written), (1, 1), "{r:?}");
    assert_eq!(r.manifest, 4);
    assert!(bk.join(layout::run_name(4)).is_file());
    let t = DirTarget::new(&bk).unwrap();
    let m = layout::load_manifest(&t, r.manifest).unwrap().manifest;
    assert_eq!((m.format, m.bodies_referenced), (layout::LAYOUT_FORMAT, 2));
    assert_eq!(
        std::fs::read_to_string(bk.join(layout::MARKER)).unwrap(),
        format!("tandem-backup {format}\nnode {NODE}\n"),
        "the marker is never rewritten"
    );
    let digest = views_digest(&store).unwrap();
    store.close().unwrap();
    // The mixed backup: the old layout's manifests, then run objects.
    assert_eq!(restore_and_audit(&bk, &dir.path().join("mixed")), digest);

    // A writer of the old format continuing it would not see the run
    // objects and would write manifest 4 again: readers refuse the fork.
    let case = dir.path().join("forked");
    copy_dir(&bk, &case);
    std::fs::copy(case.join(layout::manifest_name(3)), case.join(layout::manifest_name(4))).unwrap();
    let (ok, out) = run(replay().arg("audit").arg(&case));
    assert!(!ok && out.contains(&layout::run_name(4)) && out.contains("two writers"), "{out}");
}

#[test]
fn a_format_2_backup_restores_audits_and_is_continued() {
    older_format_is_read_and_continued(2);
}

#[test]
fn a_format_1_backup_restores_audits_and_is_continued() {
    older_format_is_read_and_continued(1);
}

/// Prune deletes a run object whose bodies are all gone; a writer that knew
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
    assert_eq!((first.objects, first.bodies_written), (1, 1));
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
    assert_eq!((r["base"].as_u64(), r["manifests_deleted"].as_u64()), (Some(2), Some(2)), "{r}");
    assert!(!bk.join(layout::run_name(first.manifest)).exists());

    // The same bytes delivered again: packed again, by the same writer.
    append(&store, doomed);
    let again = one(backups.run(&store, &bk, false).unwrap());
    assert_eq!((again.objects, again.bodies_written), (1, 1), "{again:?}");
    let digest = views_digest(&store).unwrap();
    store.close().unwrap();
    assert_eq!(restore_and_audit(&bk, &dir.path().join("restored")), digest);
}
