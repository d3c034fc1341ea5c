//! Backups into a real S3-compatible server (moto's server, a separate
//! process speaking the S3 HTTP API on a loopback port): a running node
//! backs up continuously into a bucket; `tandem-replay` restores it from
//! the bucket, whole and to a point in time, audits it, and refuses it once
//! an object was changed; a network path to the server that fails
//! mid-backup is retried, and nothing is reported backed up before the
//! server stored it.

mod common;

use common::*;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tandem::backup::layout;
use tandem::backup::s3::{S3Settings, S3Target};
use tandem::backup::target::Target;
use tandem::replay::views_digest;
use tandem::store::{wal_options, Store};

const BUCKET: &str = "tandem-backups";
const URL: &str = "s3://tandem-backups/mx1";

fn replay(endpoint: &str, creds: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tandem-replay"));
    c.args(["--s3-endpoint", endpoint, "--s3-credentials"]).arg(creds);
    c
}

fn digest_of(data_dir: &Path) -> String {
    let store = Store::open(&data_dir.join("db"), "orig", wal_options("orig")).unwrap();
    let d = views_digest(&store).unwrap();
    store.close().unwrap();
    d
}

fn run(c: &mut Command) -> (bool, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn s3_config(data: &Path, endpoint: &str, creds: &Path) -> tandem::config::Config {
    config_as(
        "orig",
        data,
        None,
        &format!(
            "[backup]\nto = \"{URL}\"\ninterval_ms = 100\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\ncredentials_file = \"{}\"\n",
            creds.display()
        ),
    )
}

/// The bucket seen directly (not through the node).
fn direct(endpoint: &str, creds: &Path) -> S3Target {
    S3Target::new(
        URL,
        &S3Settings {
            endpoint: Some(endpoint.to_string()),
            region: None,
            credentials_file: Some(creds.to_path_buf()),
        },
    )
    .unwrap()
}

/// The apply order the newest manifest in the bucket covers (0: none).
fn stored_order(t: &dyn Target) -> u64 {
    layout::manifest_numbers(t)
        .unwrap()
        .last()
        .map(|n| layout::load_manifest(t, *n).unwrap().manifest.order_to)
        .unwrap_or(0)
}

fn backup_status(rt: &tokio::runtime::Runtime, admin: &tandem::cli::Admin) -> serde_json::Value {
    let st: serde_json::Value = rt.block_on(admin.get("/v1/status")).unwrap();
    st["backup"][0].clone()
}

fn create_user(store: &Store) {
    let phc = tandem::auth::hash_password(&tandem::auth::Secret::new("pw")).unwrap();
    store
        .run_blocking(move |t, c| tandem::mutate::create_user(t, c, "u@example.org", phc, 1_700_000_000))
        .unwrap();
}

#[test]
fn backup_to_s3_restore_point_in_time_audit_and_tamper() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(dir.path());
    s3.create_bucket(BUCKET);
    let creds = s3_credentials(dir.path());
    let ep = s3.endpoint();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = s3_config(&data, &ep, &creds);
    let node = rt.block_on(tandem::server::start(&cfg)).unwrap();
    let store = node.store.clone();
    create_user(&store);
    let lmtp = node.listeners["lmtp"].clone();
    for i in 0..6 {
        deliver(&lmtp, "u@example.org", &format!("Subject: m{i}\r\n\r\nbody {i}\r\n"));
    }
    // One body larger than a part: it goes up as a multipart upload.
    let big: String = (0..(9 << 20) / 64).map(|i| format!("{i:062}\r\n")).collect();
    deliver(&lmtp, "u@example.org", &format!("Subject: big\r\n\r\n{big}"));
    std::thread::sleep(Duration::from_millis(15));
    let at = now_ms();
    let digest_at = views_digest(&store).unwrap();
    std::thread::sleep(Duration::from_millis(15));
    let mut c = Imap::connect(&node.listeners["imap"], "u@example.org", "pw");
    c.ok("SELECT INBOX");
    c.ok("UID STORE 1:3 +FLAGS (\\Seen \\Deleted)");
    c.ok("EXPUNGE");
    deliver(&lmtp, "u@example.org", "Subject: later\r\n\r\nlater\r\n");
    c.ok("SELECT INBOX");
    let bodies = c.bodies();
    c.ok("LOGOUT");

    let t = direct(&ep, &creds);
    let last = store.wal().last_order();
    assert!(
        wait_until(30, || stored_order(&t) == last),
        "the continuous backup did not reach apply order {last}"
    );
    let admin = tandem::cli::Admin::new(&cfg).unwrap();
    let st = backup_status(&rt, &admin);
    assert_eq!(st["target"], URL, "{st}");
    assert_eq!(st["position"], last, "{st}");
    let final_digest = views_digest(&store).unwrap();
    drop(store);
    rt.block_on(node.stop()).unwrap();

    // Write once: a taken name is refused and keeps its bytes.
    let first = layout::run_name(1);
    let mut before = Vec::new();
    t.open(&first).unwrap().read_to_end(&mut before).unwrap();
    assert!(!t.put_new(&first, &mut |w| w.write_all(b"replaced")).unwrap());
    let mut after = Vec::new();
    t.open(&first).unwrap().read_to_end(&mut after).unwrap();
    assert_eq!(before, after);
    // The big body lies in a run object (uploaded in parts), and comes back
    // whole by a ranged read of its bytes only.
    let index = tandem::backup::restore::plan(&t, tandem::backup::restore::Stop::Latest)
        .unwrap()
        .bodies;
    let big = bodies
        .iter()
        .map(|(_, b)| b)
        .find(|b| b.len() > 9 << 20)
        .expect("the big message is served");
    let loc = index
        .get(&tandem::event::BlobHash::of(big).0)
        .expect("the big body is packed")
        .clone();
    assert!(loc.pack.starts_with("runs/"), "{loc:?}");
    assert_eq!(&t.read_range(&loc.pack, loc.offset, loc.len).unwrap(), big);
    let mut tail = Vec::new();
    t.open_at(&loc.pack, loc.offset + (9 << 20))
        .unwrap()
        .read_to_end(&mut tail)
        .unwrap();
    assert_eq!(&tail[..big.len() - (9 << 20)], &big[9 << 20..]);
    assert!(!t.exists(&layout::body_name(&tandem::event::BlobHash::of(big).0)).unwrap());

    // Audit, whole restore and a point in time, all read from the bucket.
    let (ok, out) = run(replay(&ep, &creds).args(["audit", URL]));
    assert!(ok && out.contains("ok"), "{out}");
    let whole = dir.path().join("restored");
    let (ok, out) = run(replay(&ep, &creds).args(["restore", "--from", URL, "--data-dir"]).arg(&whole));
    assert!(ok, "{out}");
    assert_eq!(digest_of(&whole), final_digest);
    // One body after the other gives the same node.
    let serial = dir.path().join("restored-serial");
    let (ok, out) = run(replay(&ep, &creds)
        .args(["restore", "--fetchers", "1", "--from", URL, "--data-dir"])
        .arg(&serial));
    assert!(ok, "{out}");
    assert_eq!(digest_of(&serial), final_digest);
    let pitr = dir.path().join("pitr");
    let (ok, out) = run(replay(&ep, &creds)
        .args(["restore", "--from", URL, "--until", &rfc3339(at), "--data-dir"])
        .arg(&pitr));
    assert!(ok, "{out}");
    assert_eq!(digest_of(&pitr), digest_at, "the state at {}", rfc3339(at));
    assert_ne!(digest_at, final_digest);
    // The restored node serves every message byte for byte.
    let node = rt.block_on(tandem::server::start(&config(&whole, None))).unwrap();
    let mut c = Imap::connect(&node.listeners["imap"], "u@example.org", "pw");
    c.ok("SELECT INBOX");
    assert_eq!(c.bodies(), bodies);
    c.ok("LOGOUT");
    rt.block_on(node.stop()).unwrap();

    // Tamper with one body in its run object in the bucket (as someone
    // holding delete rights could): audit and restore refuse, naming the
    // object, the body and its byte offset.
    let small = bodies.iter().map(|(_, b)| b).find(|b| b.len() < 1000).unwrap();
    let hash = tandem::event::BlobHash::of(small).0;
    let loc = index.get(&hash).unwrap().clone();
    let mut pack = Vec::new();
    t.open(&loc.pack).unwrap().read_to_end(&mut pack).unwrap();
    pack[loc.offset as usize + 10] ^= 1;
    t.delete(&loc.pack).unwrap();
    assert!(t.put_new(&loc.pack, &mut |w| w.write_all(&pack)).unwrap());
    let hash_hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let offset = format!("byte offset {}", loc.offset);
    let (ok, out) = run(replay(&ep, &creds).args(["audit", URL]));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&*loc.pack) && out.contains(&hash_hex) && out.contains(&offset) && out.contains("FAILED"),
        "{out}"
    );
    let (ok, out) = run(replay(&ep, &creds)
        .args(["restore", "--from", URL, "--data-dir"])
        .arg(dir.path().join("refused")));
    assert!(!ok && out.contains(&*loc.pack) && out.contains(&hash_hex), "{out}");
    // A bucket that is not there is an error naming it, not an empty backup.
    let (ok, out) = run(replay(&ep, &creds).args(["audit", "s3://no-such-bucket/mx1"]));
    assert!(!ok && out.contains("no-such-bucket"), "{out}");
}

#[test]
fn s3_outage_mid_backup_is_retried_and_nothing_is_claimed_early() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(dir.path());
    s3.create_bucket(BUCKET);
    let creds = s3_credentials(dir.path());
    // The node reaches the server through a relay that can be cut.
    let mut relay = Relay::start(0, s3.port);
    let via_relay = format!("http://127.0.0.1:{}", relay.port);
    let data = dir.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = s3_config(&data, &via_relay, &creds);
    let node = rt.block_on(tandem::server::start(&cfg)).unwrap();
    let store = node.store.clone();
    let admin = tandem::cli::Admin::new(&cfg).unwrap();
    create_user(&store);
    let lmtp = node.listeners["lmtp"].clone();
    for i in 0..5 {
        deliver(&lmtp, "u@example.org", &format!("Subject: a{i}\r\n\r\nbefore {i}\r\n"));
    }
    let t = direct(&s3.endpoint(), &creds);
    let before = store.wal().last_order();
    assert!(wait_until(30, || backup_status(&rt, &admin)["position"] == before));

    // Cut the path mid-backup: deliveries go on (acknowledged by the node's
    // own durable log), the backup cannot store them.
    relay.cut();
    for i in 0..5 {
        deliver(&lmtp, "u@example.org", &format!("Subject: b{i}\r\n\r\nduring {i}\r\n"));
    }
    let during = store.wal().last_order();
    assert!(during > before);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut polls = 0;
    while std::time::Instant::now() < deadline {
        // Read the node's claim first, then the bucket: what the node
        // reports backed up must already be there.
        let claimed = backup_status(&rt, &admin)["position"].as_u64().unwrap();
        let stored = stored_order(&t);
        assert!(claimed <= stored, "the node reports position {claimed}, the bucket holds {stored}");
        assert_eq!(claimed, before, "nothing new can be stored while the path is cut");
        polls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(polls >= 10);
    let st = backup_status(&rt, &admin);
    assert!(
        st["retries"].as_u64().unwrap() > 0 || st["failures"].as_u64().unwrap() > 0,
        "the cut was noticed: {st}"
    );
    assert!(st["lag_entries"].as_u64().unwrap() >= during - before, "{st}");

    // The path comes back: the job catches up by itself.
    relay.restore();
    assert!(
        wait_until(45, || backup_status(&rt, &admin)["position"] == during),
        "no catch-up after the outage: {}",
        backup_status(&rt, &admin)
    );
    assert_eq!(stored_order(&t), during);
    let st = backup_status(&rt, &admin);
    assert_eq!(st["lag_entries"], 0, "{st}");
    let final_digest = views_digest(&store).unwrap();
    drop(store);
    rt.block_on(node.stop()).unwrap();

    let ep = s3.endpoint();
    let (ok, out) = run(replay(&ep, &creds).args(["audit", URL]));
    assert!(ok, "{out}");
    let to = dir.path().join("restored");
    let (ok, out) = run(replay(&ep, &creds).args(["restore", "--from", URL, "--data-dir"]).arg(&to));
    assert!(ok, "{out}");
    assert_eq!(digest_of(&to), final_digest);

    // Retention in the bucket: keep nothing older than now; the base goes
    // up as objects, the manifests before it are deleted, and the latest
    // state still restores and audits from the bucket.
    let manifests = layout::manifest_numbers(&t).unwrap();
    let (ok, out) = run(replay(&ep, &creds).args(["prune", URL, "--keep-within", "0s", "--json"]));
    assert!(ok, "{out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["base_written"], true, "{r}");
    assert_eq!(r["base"].as_u64().unwrap(), manifests.last().unwrap() - 1, "{r}");
    // Left: the last run, and the run objects before the base that hold
    // a body still needed, which the base names.
    let base = tandem::backup::retention::load_base(&t, r["base"].as_u64().unwrap()).unwrap();
    let mut left: Vec<u64> = base.packs.iter().filter_map(|p| layout::body_object_number(&p.object)).collect();
    assert!(!left.is_empty(), "the mail delivered is still there: its run objects stay");
    left.push(*manifests.last().unwrap());
    assert_eq!(layout::manifest_numbers(&t).unwrap(), left);
    let (ok, out) = run(replay(&ep, &creds).args(["audit", URL]));
    assert!(ok, "{out}");
    let to = dir.path().join("restored-after-prune");
    let (ok, out) = run(replay(&ep, &creds).args(["restore", "--from", URL, "--data-dir"]).arg(&to));
    assert!(ok, "{out}");
    assert_eq!(digest_of(&to), final_digest);
}
