//! Crash safety: a writer process is killed with SIGKILL at random points;
//! every delivery it had acknowledged must be there after reopening, the
//! chains must verify and the views must equal a replay of the log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem::replay::{replay_into, views_digest};
use tandem::store::{wal_options, Store};
use tandem::views::ViewRead;
use wal::RecoveryMode;

struct Ack {
    thread: usize,
    uid: u32,
    blob: String,
}

/// Run the stress writer, kill it after `ms`, return what it acknowledged.
fn run_and_kill(db: &Path, ms: u64) -> Vec<Ack> {
    run_and_kill_with(db, ms, &[])
}

fn run_and_kill_with(db: &Path, ms: u64, extra: &[&str]) -> Vec<Ack> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-stress"))
        .args(extra)
        .args([
            "--db",
            db.to_str().unwrap(),
            "--threads",
            "4",
            "--count",
            "1000000",
            "--size",
            "3000",
            "--max-secs",
            "30",
            "--print-acks",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tandem-stress");
    let out = child.stdout.take().unwrap();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let a2 = acks.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() == 5 && f[0] == "ack" {
                a2.lock().unwrap().push(Ack {
                    thread: f[1].parse().unwrap(),
                    uid: f[3].parse().unwrap(),
                    blob: f[4].to_string(),
                });
            }
        }
    });
    std::thread::sleep(Duration::from_millis(ms));
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    reader.join().unwrap();
    Arc::try_unwrap(acks).ok().unwrap().into_inner().unwrap()
}

fn check_store(db: &Path, acks: &[Ack], scratch: &Path) -> u64 {
    let store = Store::open(db, "stress", wal_options("stress")).expect("reopen after SIGKILL");
    let v = store.views();
    for a in acks {
        let user = format!("stress{}@example.org", a.thread);
        let inbox = v
            .mailbox_by_name(&user, "INBOX")
            .unwrap()
            .expect("INBOX of an acknowledged delivery");
        let m = v
            .message(inbox.id, a.uid)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged uid {} of {user} lost", a.uid));
        assert_eq!(hex::encode(m.blob.0), a.blob, "uid {} of {user} holds another message", a.uid);
    }
    // Nothing half-present: every message's body is there.
    for t in 0..4 {
        let user = format!("stress{t}@example.org");
        if let Some(inbox) = v.mailbox_by_name(&user, "INBOX").unwrap() {
            for (uid, m) in v.messages(inbox.id).unwrap() {
                let body = store
                    .blob(&m.blob)
                    .unwrap()
                    .unwrap_or_else(|| panic!("uid {uid} of {user} has no body"));
                assert_eq!(body.len() as u64, m.size);
            }
        }
    }
    let n = store.wal().verify_all().expect("chains verify");
    let replica_dir = tempfile::tempdir_in(scratch).unwrap();
    let mut o = wal_options("replay");
    o.sync = false;
    let replica = Store::open(replica_dir.path(), "replay", o).unwrap();
    replay_into(&store, &replica).unwrap();
    assert_eq!(
        views_digest(&replica).unwrap(),
        views_digest(&store).unwrap(),
        "views differ from a replay of the log"
    );
    store.close().unwrap();
    n
}

#[test]
fn sigkill_never_loses_an_acknowledged_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut total_acks = 0;
    let mut entries = 0;
    for round in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let ms = 150 + seed % 400;
        let acks = run_and_kill(&db, ms);
        total_acks += acks.len();
        entries = check_store(&db, &acks, dir.path());
        eprintln!(
            "round {round}: killed after {ms} ms, {} acknowledged, {entries} entries verified",
            acks.len()
        );
    }
    assert!(
        total_acks > 100,
        "the writer barely ran ({total_acks} acks): the test proves nothing"
    );
    assert!(entries > 0);
}

/// Every group takes the bulk path (bodies written without RocksDB's WAL,
/// flushed before the logged batch): a SIGKILL anywhere in it still keeps
/// every acknowledged body.
#[test]
fn sigkill_with_bodies_flushed_outside_the_wal_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut total_acks = 0;
    for (round, ms) in [180u64, 260, 340, 420, 300, 220].into_iter().enumerate() {
        let acks = run_and_kill_with(&db, ms, &["--bulk-bytes", "1"]);
        total_acks += acks.len();
        let entries = check_store(&db, &acks, dir.path());
        eprintln!(
            "bulk round {round}: killed after {ms} ms, {} acknowledged, {entries} entries verified",
            acks.len()
        );
    }
    assert!(
        total_acks > 50,
        "the writer barely ran ({total_acks} acks): the test proves nothing"
    );
}

#[test]
fn torn_tail_is_tolerated_by_default_and_refused_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let acks = run_and_kill(&db, 600);
    assert!(!acks.is_empty());
    // Cut the end off RocksDB's newest write-ahead log, as a crash in the
    // middle of a write would.
    let newest = std::fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a write-ahead log file");
    let len = std::fs::metadata(&newest).unwrap().len();
    assert!(len > 1000);
    let f = std::fs::OpenOptions::new().write(true).open(&newest).unwrap();
    f.set_len(len - 77).unwrap();
    drop(f);

    let mut strict = wal_options("stress");
    strict.recovery = RecoveryMode::Strict;
    assert!(Store::open(&db, "stress", strict).is_err(), "strict recovery accepted a torn tail");

    let store = Store::open(&db, "stress", wal_options("stress")).expect("torn tail tolerated");
    let rep = store.wal().recovery_report().clone();
    assert!(rep.unclean_shutdown, "the torn tail is reported");
    assert!(rep.order_len > 0);
    store.wal().verify_all().unwrap();
    drop(store);
}
