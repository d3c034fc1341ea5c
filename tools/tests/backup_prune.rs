//! Backup retention: `tandem-replay prune` keeps every restore point of the
//! kept window restorable (audit passes, restores give exactly those
//! states), removes what only older points need (manifests, segments,
//! packs holding only bodies of mail deleted before the window; a pack
//! with one body still needed stays whole), and leaves the backup alone
//! while a restore holds a lease: it skips, or waits until the lease is
//! released.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem::backup::layout;
use tandem::backup::restore::{self, Stop};
use tandem::backup::retention::{self, LeaseGuard};
use tandem::backup::target::{DirTarget, Target};
use tandem::replay::views_digest;
use tandem::store::{wal_options, Store};

fn replay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem-replay"))
}

fn run(c: &mut Command) -> (bool, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn digest_of(data_dir: &Path) -> String {
    let store = Store::open(&data_dir.join("db"), "orig", wal_options("orig")).unwrap();
    let d = views_digest(&store).unwrap();
    store.close().unwrap();
    d
}

fn prune(bk: &Path, keep_ms: u64, wait: &str) -> serde_json::Value {
    let (ok, out) = run(replay()
        .arg("prune")
        .arg(bk)
        .args(["--keep-within", &format!("{keep_ms}ms"), "--wait", wait, "--json"]));
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn caught_up(bk: &Path, order: u64) -> bool {
    wait_until(20, || {
        let t = DirTarget::new(bk).unwrap();
        layout::manifest_numbers(&t)
            .unwrap()
            .last()
            .is_some_and(|n| layout::load_manifest(&t, *n).unwrap().manifest.order_to == order)
    })
}

#[test]
fn prune_keeps_the_window_removes_the_rest_and_honours_leases() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bk = dir.path().join("backup");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = config(&data, Some(&bk));
    let node = rt.block_on(tandem::server::start(&cfg)).unwrap();
    let store = node.store.clone();
    let phc = tandem::auth::hash_password(&tandem::auth::Secret::new("pw")).unwrap();
    store
        .run_blocking(move |t, c| tandem::mutate::create_user(t, c, "u@example.org", phc, 1_700_000_000))
        .unwrap();
    let lmtp = node.listeners["lmtp"].clone();
    let mut c = Imap::connect(&node.listeners["imap"], "u@example.org", "pw");

    // Phase A: five messages; three of them are deleted in phase B, before
    // the window starts.
    // The three go into run objects of their own: the backup catches up
    // first.
    for i in 0..5 {
        deliver(&lmtp, "u@example.org", &format!("Subject: a{i}\r\n\r\nold {i}\r\n"));
        if i == 2 {
            assert!(caught_up(&bk, store.wal().last_order()));
        }
    }
    c.ok("SELECT INBOX");
    let old_bodies = c.bodies();
    assert!(caught_up(&bk, store.wal().last_order()));
    std::thread::sleep(Duration::from_millis(30));
    let at_a = now_ms();
    std::thread::sleep(Duration::from_millis(30));
    // Phase B.
    c.ok("UID STORE 1:3 +FLAGS (\\Deleted)");
    c.ok("EXPUNGE");
    deliver(&lmtp, "u@example.org", "Subject: b\r\n\r\nphase b\r\n");
    assert!(caught_up(&bk, store.wal().last_order()));
    std::thread::sleep(Duration::from_millis(300));
    let window = now_ms();
    std::thread::sleep(Duration::from_millis(300));
    // Phase C, inside the window: two points to keep.
    deliver(&lmtp, "u@example.org", "Subject: c1\r\n\r\nphase c1\r\n");
    assert!(caught_up(&bk, store.wal().last_order()));
    std::thread::sleep(Duration::from_millis(30));
    let at_c = now_ms();
    let digest_c = views_digest(&store).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    c.ok("SELECT INBOX");
    c.ok("UID STORE 4 +FLAGS (\\Flagged)");
    deliver(&lmtp, "u@example.org", "Subject: c2\r\n\r\nphase c2\r\n");
    assert!(caught_up(&bk, store.wal().last_order()));
    c.ok("LOGOUT");
    let final_digest = views_digest(&store).unwrap();
    drop(store);
    rt.block_on(node.stop()).unwrap();

    let t: Arc<dyn Target> = Arc::new(DirTarget::new(&bk).unwrap());
    let manifests_before = layout::manifest_numbers(t.as_ref()).unwrap();
    // Where each body of phase A is packed.
    let pack_of = |b: &[u8]| {
        let h: String = tandem::event::BlobHash::of(b).0.iter().map(|x| format!("{x:02x}")).collect();
        packed_bodies(&bk)
            .into_iter()
            .find(|(x, _)| *x == h)
            .expect("every body is packed")
            .1
    };
    let old_packs: Vec<String> = old_bodies.iter().map(|(_, b)| pack_of(b)).collect();
    assert!(
        old_packs[..3].iter().all(|p| !old_packs[3..].contains(p)),
        "the deleted mail's bodies share no run object with the kept mail: {old_packs:?}"
    );
    let runs_before = t.list(layout::RUN_DIR).unwrap().len();
    assert!(manifests_before.len() >= 4, "{manifests_before:?}");

    // A restore in progress: it holds its lease and planned from the
    // whole chain. Prune writes its base but deletes nothing.
    let lease = LeaseGuard::take(t.clone(), Duration::from_secs(60), "restore").unwrap();
    let old_plan = restore::plan(t.as_ref(), Stop::Latest).unwrap();
    assert!(old_plan.base.is_none());
    let keep = now_ms() - window;
    let r = prune(&bk, keep, "0s");
    assert_eq!(r["base_written"], true, "{r}");
    assert_eq!(r["manifests_deleted"], 0, "{r}");
    assert_eq!(r["bodies_deleted"], 0, "{r}");
    assert_eq!(r["packs_deleted"], 0, "{r}");
    assert_eq!(t.list(layout::RUN_DIR).unwrap().len(), runs_before);
    assert_eq!(r["skipped_for_leases"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(layout::manifest_numbers(t.as_ref()).unwrap(), manifests_before);
    let base = r["base"].as_u64().unwrap();
    assert!(base >= 1 && base < *manifests_before.last().unwrap(), "{r}");
    // ... and the restore finishes from what it planned.
    let scratch = dir.path().join("in-progress");
    let s = Store::open(&scratch, "orig", wal_options("orig")).unwrap();
    restore::apply(t.as_ref(), &old_plan, &s, Stop::Latest, &mut |_| {}).unwrap();
    assert_eq!(views_digest(&s).unwrap(), final_digest);
    s.close().unwrap();

    // A format-2 pack left by a run that died before its manifest (no
    // manifest names it): gone once a base passes its run.
    let orphan = layout::pack_name(1, 999);
    assert!(t.put_new(&orphan, &mut |w| w.write_all(b"orphan")).unwrap());

    // Prune again while the lease is held; it is released a second later:
    // prune waits for it, then deletes.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        drop(lease);
    });
    let started = Instant::now();
    let keep = now_ms() - window;
    let r = prune(&bk, keep, "30s");
    releaser.join().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900), "prune did not wait for the lease");
    assert_eq!(r["base"].as_u64().unwrap(), base, "{r}");
    assert!(r["skipped_for_leases"].as_array().unwrap().is_empty(), "{r}");
    let kept_base = retention::load_base(t.as_ref(), base).unwrap();
    // Run objects up to the base are deleted, but for those holding a
    // body still needed: the base keeps them whole and names them.
    let kept_runs = kept_base.packs.len() as u64;
    assert_eq!(r["manifests_deleted"].as_u64().unwrap(), base - kept_runs, "{r}");
    assert!(r["lease_objects_deleted"].as_u64().unwrap() >= 2, "{r}");
    // The run objects holding only the three bodies deleted before the
    // window are gone; those of the others stay, and the base names those
    // of them at or before it.
    assert_eq!(r["bodies_deleted"], 0, "no per-body objects: {r}");
    assert_eq!(r["packs_deleted"].as_u64().unwrap(), 1, "the orphan pack: {r}");
    assert!(!t.exists(&orphan).unwrap());
    for (i, p) in old_packs.iter().enumerate() {
        assert_eq!(t.exists(p).unwrap(), i >= 3, "run object {p} of message {}", i + 1);
    }
    for p in &old_packs[3..] {
        let n = layout::body_object_number(p).unwrap();
        assert_eq!(
            kept_base.packs.iter().any(|k| k.object == *p),
            n <= base,
            "run object {p}, base {base}"
        );
    }
    let left = layout::manifest_numbers(t.as_ref()).unwrap();
    assert!(
        left.iter()
            .all(|n| *n > base || kept_base.packs.iter().any(|k| layout::body_object_number(&k.object) == Some(*n))),
        "{left:?}"
    );
    assert_eq!(left.last(), manifests_before.last());
    assert!(retention::base_numbers(t.as_ref()).unwrap() == vec![base]);

    // Every point in the window is restorable, exactly; the backup audits.
    let (ok, out) = run(replay().arg("audit").arg(&bk));
    assert!(ok, "{out}");
    let whole = dir.path().join("whole");
    let (ok, out) = run(replay().args(["restore", "--from"]).arg(&bk).arg("--data-dir").arg(&whole));
    assert!(ok, "{out}");
    assert_eq!(digest_of(&whole), final_digest);
    let pc = dir.path().join("pitr-c");
    let (ok, out) = run(replay()
        .args(["restore", "--until", &rfc3339(at_c), "--from"])
        .arg(&bk)
        .arg("--data-dir")
        .arg(&pc));
    assert!(ok, "{out}");
    assert_eq!(digest_of(&pc), digest_c);
    // The restore took a lease and released it.
    let leases = t.list(layout::LEASE_DIR).unwrap();
    assert!(leases.iter().any(|n| n.ends_with(".released")), "{leases:?}");
    // A point before the window is gone, and says so.
    let (ok, out) = run(replay()
        .args(["restore", "--until", &rfc3339(at_a), "--from"])
        .arg(&bk)
        .arg("--data-dir")
        .arg(dir.path().join("pitr-a")));
    assert!(!ok && out.contains("pruned"), "{out}");
    // The restored node serves the kept mail.
    let node = rt.block_on(tandem::server::start(&config(&whole, None))).unwrap();
    let mut c = Imap::connect(&node.listeners["imap"], "u@example.org", "pw");
    c.ok("SELECT INBOX");
    assert_eq!(c.bodies().len(), 5);
    c.ok("LOGOUT");
    rt.block_on(node.stop()).unwrap();
}
