//! A mirrored node backed up with both origins in its log, destroyed,
//! restored from the backup, and started again: it equals what it was, then
//! rejoins its peer and catches up on what it missed.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use tandem::replay::{mirror_digest, views_digest};
use tandem::store::{wal_options, Store};

fn mirror(port: u16, peer: u16) -> String {
    format!(
        "[mirror]\nlisten = \"127.0.0.1:{port}\"\npeers = [\"127.0.0.1:{peer}\"]\nsecret = \"a-test-secret-of-the-pair\"\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n"
    )
}

fn up_to_date(a: &Store, b: &Store) -> bool {
    a.wal().heads() == b.wal().heads() && mirror_digest(a).unwrap() == mirror_digest(b).unwrap()
}

fn backed_up_to(bk: &Path, order: u64) -> bool {
    let t = tandem::backup::target::DirTarget::new(bk).unwrap();
    let Some(n) = tandem::backup::layout::manifest_numbers(&t).unwrap().last().copied() else {
        return false;
    };
    tandem::backup::layout::load_manifest(&t, n).unwrap().manifest.order_to == order
}

#[test]
fn restored_node_equals_the_original_and_rejoins_its_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let bk = dir.path().join("backup");
    let cfg_a = config_as("node-a", &da, Some(&bk), &mirror(pa, pb));
    let cfg_b = config_as("node-b", &db, None, &mirror(pb, pa));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(tandem::server::start(&cfg_a)).unwrap();
    let b = rt.block_on(tandem::server::start(&cfg_b)).unwrap();
    let phc = tandem::auth::hash_password(&tandem::auth::Secret::new("pw")).unwrap();
    a.store
        .run_blocking(move |t, c| tandem::mutate::create_user(t, c, "u@example.org", phc, 1_700_000_000))
        .unwrap();
    assert!(wait_until(30, || up_to_date(&a.store, &b.store)), "the user did not reach b");
    for i in 0..5 {
        deliver(
            &a.listeners["lmtp"],
            "u@example.org",
            &format!("Subject: a{i}\r\n\r\nfrom a {i}\r\n"),
        );
        deliver(
            &b.listeners["lmtp"],
            "u@example.org",
            &format!("Subject: b{i}\r\n\r\nfrom b {i}\r\n"),
        );
    }
    let mut c = Imap::connect(&b.listeners["imap"], "u@example.org", "pw");
    c.ok("SELECT INBOX");
    c.ok("UID STORE 1:* +FLAGS (\\Seen)");
    c.ok("LOGOUT");
    assert!(wait_until(30, || up_to_date(&a.store, &b.store)), "a and b did not converge");
    assert_eq!(a.store.wal().heads().0.len(), 2, "a's log holds both origins");
    let order = a.store.wal().last_order();
    assert!(wait_until(30, || backed_up_to(&bk, order)), "the backup did not reach {order}");
    let digest_a = views_digest(&a.store).unwrap();
    rt.block_on(a.stop()).unwrap();

    // a's disk dies; b takes mail meanwhile.
    std::fs::remove_dir_all(&da).unwrap();
    for i in 0..3 {
        deliver(
            &b.listeners["lmtp"],
            "u@example.org",
            &format!("Subject: late{i}\r\n\r\nwhile a was away {i}\r\n"),
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-replay"))
        .args(["restore", "--from"])
        .arg(&bk)
        .arg("--data-dir")
        .arg(&da)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    {
        let s = Store::open(&da.join("db"), "node-a", wal_options("node-a")).unwrap();
        assert_eq!(views_digest(&s).unwrap(), digest_a, "the restored views equal the original's");
        s.close().unwrap();
    }
    let a = rt.block_on(tandem::server::start(&cfg_a)).unwrap();
    assert!(
        wait_until(60, || up_to_date(&a.store, &b.store)),
        "the restored node did not catch up with its peer"
    );
    let mut c = Imap::connect(&a.listeners["imap"], "u@example.org", "pw");
    c.ok("SELECT INBOX");
    assert_eq!(c.bodies().len(), 13);
    c.ok("LOGOUT");
    rt.block_on(a.stop()).unwrap();
    rt.block_on(b.stop()).unwrap();
}
