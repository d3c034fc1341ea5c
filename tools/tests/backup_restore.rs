//! Backups and restores end to end: a real node (the daemon's own start-up
//! code, real RocksDB, LMTP and IMAP on loopback) backs up continuously and
//! on request; `tandem-replay` restores it, whole and to points in time,
//! and refuses damaged backups.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tandem::replay::views_digest;
use tandem::store::{wal_options, Store};

fn replay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem-replay"))
}

fn digest_of(data_dir: &Path) -> String {
    let store = Store::open(&data_dir.join("db"), "orig", wal_options("orig")).unwrap();
    let d = views_digest(&store).unwrap();
    store.close().unwrap();
    d
}

fn restore(from: &Path, to: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = replay()
        .args(["restore", "--from"])
        .arg(from)
        .arg("--data-dir")
        .arg(to)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// State recorded at one instant of the original node's life.
struct Instant0 {
    at_ms: u64,
    seq: u64,
    digest: String,
}

#[test]
fn backup_destroy_restore_and_points_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bk = dir.path().join("backup");
    let bk2 = dir.path().join("backup-once");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = config(&data, Some(&bk));
    let node = rt.block_on(tandem::server::start(&cfg)).unwrap();
    let store = node.store.clone();
    let phc = tandem::auth::hash_password(&tandem::auth::Secret::new("pw")).unwrap();
    store
        .run_blocking(move |t, c| tandem::mutate::create_user(t, c, "u@example.org", phc, 1_700_000_000))
        .unwrap();
    let imap_addr = node.listeners["imap"].clone();
    let lmtp_addr = node.listeners["lmtp"].clone();
    let origin = store.wal().local_origin();
    let mut instants: Vec<Instant0> = Vec::new();
    let mark = |instants: &mut Vec<Instant0>| {
        // Entries of the next phase carry later times than this instant.
        std::thread::sleep(Duration::from_millis(15));
        instants.push(Instant0 {
            at_ms: now_ms(),
            seq: store.wal().heads().0[&origin],
            digest: views_digest(&store).unwrap(),
        });
        std::thread::sleep(Duration::from_millis(15));
    };

    for i in 0..8 {
        deliver(
            &lmtp_addr,
            "u@example.org",
            &format!("Subject: m{i}\r\n\r\nbody {i}\r\n{}\r\n", "x".repeat(i * 300)),
        );
    }
    mark(&mut instants);
    let mut c = Imap::connect(&imap_addr, "u@example.org", "pw");
    c.ok("CREATE Work");
    c.ok("SELECT INBOX");
    c.ok("UID COPY 1:4 Work");
    c.ok("UID STORE 1:3 +FLAGS (\\Seen \\Flagged)");
    mark(&mut instants);
    c.ok("UID STORE 2 +FLAGS (\\Deleted)");
    c.ok("UID STORE 3 -FLAGS (\\Flagged)");
    c.ok("EXPUNGE");
    mark(&mut instants);
    c.ok("DELETE Work");
    // A second message with a body already held (a delivery would not do:
    // its Received: header makes every delivery's bytes its own) is stored
    // once in the backup.
    c.ok("UID COPY 1 INBOX");
    mark(&mut instants);
    c.ok("SELECT INBOX");
    let original_bodies = c.bodies();
    c.ok("LOGOUT");
    assert_eq!(original_bodies.len(), 8, "7 left in INBOX after the expunge, plus one");

    // The continuous job catches up within a few intervals.
    let last = store.wal().last_order();
    let caught_up = wait_until(20, || {
        let t = tandem::backup::target::DirTarget::new(&bk).unwrap();
        tandem::backup::layout::manifest_numbers(&t)
            .unwrap()
            .last()
            .map(|n| tandem::backup::layout::load_manifest(&t, *n).unwrap().manifest.order_to == last)
            .unwrap_or(false)
    });
    assert!(caught_up, "the continuous backup did not reach apply order {last}");
    // And a one-shot backup through the admin endpoint, as `tandem backup --to` sends it.
    let admin = tandem::cli::Admin::new(&cfg).unwrap();
    let r: serde_json::Value = rt
        .block_on(admin.send(reqwest_post(), "/v1/backup", serde_json::json!({ "to": bk2 })))
        .unwrap();
    assert_eq!(r["status"]["position"], last, "{r}");
    // Running it again writes nothing new.
    let r: serde_json::Value = rt
        .block_on(admin.send(reqwest_post(), "/v1/backup", serde_json::json!({ "to": bk2 })))
        .unwrap();
    assert_eq!(r["runs"].as_array().unwrap().len(), 0, "{r}");
    let status: serde_json::Value = rt.block_on(admin.get("/v1/status")).unwrap();
    let b = status["backup"].as_array().unwrap();
    assert_eq!(b.len(), 2, "{status}");
    assert!(b.iter().all(|b| b["lag_entries"] == 0), "{status}");
    let final_digest = views_digest(&store).unwrap();
    drop(store);
    rt.block_on(node.stop()).unwrap();
    assert_eq!(digest_of(&data), final_digest);

    // Bodies: each distinct body written once, ever, in the run objects
    // the chain names; no per-body objects, packs or segment objects.
    let packed = packed_bodies(&bk);
    let distinct: std::collections::BTreeSet<&String> = packed.iter().map(|(h, _)| h).collect();
    assert_eq!(
        (packed.len(), distinct.len()),
        (8, 8),
        "8 distinct bodies were delivered: {packed:?}"
    );
    assert!(
        packed.iter().all(|(_, p)| bk.join(p).is_file() && p.starts_with("runs/")),
        "{packed:?}"
    );
    assert!(!bk.join("bodies").exists() && !bk.join("packs").exists() && !bk.join("segments").exists());
    // The one-shot backup wrote everything in one run: one run object.
    assert_eq!(files(&bk2.join("runs")).len(), 1);
    assert_eq!(packed_bodies(&bk2).len(), 8);

    // Destroy the node; restore it from each backup.
    std::fs::remove_dir_all(&data).unwrap();
    for (i, b) in [&bk, &bk2].iter().enumerate() {
        let audit = replay().arg("audit").arg(b).output().unwrap();
        assert!(audit.status.success(), "{}", String::from_utf8_lossy(&audit.stdout));
        let to = dir.path().join(format!("restored{i}"));
        let (ok, out, err) = restore(b, &to, &[]);
        assert!(ok, "{out}{err}");
        assert_eq!(digest_of(&to), final_digest, "restored from {}", b.display());
        let audit = replay().arg("audit").arg(&to).output().unwrap();
        assert!(audit.status.success(), "{}", String::from_utf8_lossy(&audit.stdout));
    }

    // The restored node serves every acknowledged message byte for byte.
    let restored = dir.path().join("restored0");
    let cfg2 = config(&restored, None);
    let node = rt.block_on(tandem::server::start(&cfg2)).unwrap();
    let mut c = Imap::connect(&node.listeners["imap"], "u@example.org", "pw");
    c.ok("SELECT INBOX");
    assert_eq!(c.bodies(), original_bodies);
    c.ok("LOGOUT");
    rt.block_on(node.stop()).unwrap();

    // Points in time: by time and by entry, each exactly that state.
    for (i, at) in instants.iter().enumerate() {
        let to = dir.path().join(format!("pitr-time-{i}"));
        let (ok, out, err) = restore(&bk, &to, &["--until", &rfc3339(at.at_ms)]);
        assert!(ok, "{out}{err}");
        assert_eq!(digest_of(&to), at.digest, "state at instant {i} ({})", rfc3339(at.at_ms));
        let to = dir.path().join(format!("pitr-seq-{i}"));
        let (ok, out, err) = restore(&bk, &to, &["--seq", &format!("orig:{}", at.seq)]);
        assert!(ok, "{out}{err}");
        assert_eq!(digest_of(&to), at.digest, "state after seq {}", at.seq);
    }
    // Different instants are different states.
    assert_ne!(instants[0].digest, instants[1].digest);
    assert_ne!(instants[2].digest, instants[3].digest);
}

#[test]
fn folder_deleted_by_mistake_comes_back_on_the_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = config(&data, None);
    let node = rt.block_on(tandem::server::start(&cfg)).unwrap();
    let phc = tandem::auth::hash_password(&tandem::auth::Secret::new("pw")).unwrap();
    node.store
        .run_blocking(move |t, c| tandem::mutate::create_user(t, c, "u@example.org", phc, 1_700_000_000))
        .unwrap();
    for i in 0..6 {
        deliver(
            &node.listeners["lmtp"],
            "u@example.org",
            &format!("Subject: p{i}\r\n\r\nproject {i}\r\n"),
        );
    }
    let mut c = Imap::connect(&node.listeners["imap"], "u@example.org", "pw");
    c.ok("CREATE Projects");
    c.ok("SELECT INBOX");
    c.ok("UID MOVE 1:5 Projects");
    c.ok("SELECT Projects");
    c.ok("UID STORE 1:2 +FLAGS (\\Flagged)");
    let before = c.bodies();
    let flags_before = c.ok("UID FETCH 1:* (UID FLAGS)");
    assert_eq!(before.len(), 5);
    c.ok("UNSELECT");
    std::thread::sleep(Duration::from_millis(20));
    let at = rfc3339(now_ms());
    std::thread::sleep(Duration::from_millis(20));
    c.ok("DELETE Projects");
    // Later mail is not part of the restored state.
    deliver(&node.listeners["lmtp"], "u@example.org", "Subject: later\r\n\r\nlater\r\n");

    let admin = tandem::cli::Admin::new(&cfg).unwrap();
    let r: serde_json::Value = rt
        .block_on(admin.send(
            reqwest_post(),
            "/v1/restore",
            serde_json::json!({ "user": "u@example.org", "folder": "Projects", "at": at }),
        ))
        .unwrap();
    let folders = r["folders"].as_array().unwrap();
    assert_eq!(folders.len(), 1, "{r}");
    let name = folders[0]["to"].as_str().unwrap().to_string();
    assert!(name.starts_with("Restored/Projects 20"), "{name}");
    assert_eq!(folders[0]["messages"], 5);
    c.ok(&format!("SELECT \"{name}\""));
    assert_eq!(c.bodies(), before, "the restored folder holds exactly the messages of that instant");
    let flags_after = c.ok("UID FETCH 1:* (UID FLAGS)");
    let flags = |r: &Resp| -> Vec<String> { r.iter().map(|(l, _)| l.split("FLAGS ").nth(1).unwrap_or("").to_string()).collect() };
    assert_eq!(flags(&flags_after), flags(&flags_before));
    // The copies were applied with one climb of the tree per batch: the
    // tree kept is the one the views call for.
    {
        use tandem::views::ViewRead;
        let v = node.store.views();
        let kept: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = v.vscan(&tandem::merkle::keys::all()).unwrap().into_iter().collect();
        assert_eq!(kept, tandem::merkle::build(&v).unwrap());
    }
    // Restoring a folder the user never had is refused with a reason.
    let e = rt
        .block_on(admin.send::<serde_json::Value>(
            reqwest_post(),
            "/v1/restore",
            serde_json::json!({ "user": "u@example.org", "folder": "Nowhere", "at": at }),
        ))
        .unwrap_err();
    assert!(format!("{e:#}").contains("no folder Nowhere"), "{e:#}");
    c.ok("LOGOUT");
    rt.block_on(node.stop()).unwrap();
}

fn reqwest_post() -> reqwest::Method {
    reqwest::Method::POST
}
