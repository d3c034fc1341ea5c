//! Side-file mirroring (`[mirror] sync_dirs`) between two real daemons over
//! QUIC on loopback: files created, changed and removed in a sync dir on
//! either node show up the same on the other, a file over the size limit
//! is refused and reported, and the receiving node logs no echo.

mod common;

use common::{admin_get, free_udp_port, wait_until, Node};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const SECRET: &str = "side-files-secret-0123";

/// The node's own origin head: how many entries it has logged itself.
fn own_head(node: &Node) -> u64 {
    let st = admin_get(node, "/v1/status");
    let origin = st["origin"].as_str().unwrap().to_string();
    st["log"]["heads"][&origin].as_u64().unwrap_or(0)
}

/// Put a file into `dir` the way certificate tools do: written beside the
/// directory, then renamed into it, so no scan sees half of it.
fn put(root: &Path, dir: &Path, name: &str, body: &[u8], mode: u32) {
    let tmp = root.join(format!("staging-{name}"));
    std::fs::write(&tmp, body).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Whether `path` holds `body` with `mode`.
fn holds(path: &Path, body: &[u8], mode: u32) -> bool {
    match (std::fs::read(path), std::fs::metadata(path)) {
        (Ok(b), Ok(m)) => b == body && m.permissions().mode() & 0o777 == mode,
        _ => false,
    }
}

/// `path` of the metrics listener of the node whose config is in `dir`.
fn scrape(dir: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    let bound: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("data/listen.json")).unwrap()).unwrap();
    let addr = bound["metrics"].as_str().unwrap().trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

struct Pair {
    root: tempfile::TempDir,
    a: Node,
    b: Node,
    da: PathBuf,
    db: PathBuf,
}

fn pair() -> Pair {
    let root = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let (da, db) = (root.path().join("a-certs"), root.path().join("b-certs"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    // Named dirs: on one host the two nodes keep "certs" in two places.
    let more = |d: &Path| {
        format!(
            "sync_dirs = {{ certs = \"{}\" }}\nsync_dirs_interval_ms = 200\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            d.display()
        )
    };
    let a = common::start_mirror(&root.path().join("a"), "node-a", pa, &[pb], SECRET, "master", &more(&da));
    let b = common::start_mirror(&root.path().join("b"), "node-b", pb, &[pa], SECRET, "slave", &more(&db));
    Pair { root, a, b, da, db }
}

/// Create, change, chmod and remove on `from`; `to` follows each step.
/// `from` logs one entry per step and `to` logs none.
fn round(p: &Pair, from_a: bool) {
    let (from, to, dfrom, dto) = if from_a {
        (&p.a, &p.b, &p.da, &p.db)
    } else {
        (&p.b, &p.a, &p.db, &p.da)
    };
    let name = if from_a { "a.pem" } else { "b.pem" };
    let (from0, to0) = (own_head(from), own_head(to));
    put(p.root.path(), dfrom, name, b"-----BEGIN CERTIFICATE-----\none\n", 0o640);
    assert!(
        wait_until(20, || holds(&dto.join(name), b"-----BEGIN CERTIFICATE-----\none\n", 0o640)),
        "{name} did not appear on the other node"
    );
    put(p.root.path(), dfrom, name, b"-----BEGIN CERTIFICATE-----\ntwo\n", 0o640);
    assert!(
        wait_until(20, || holds(&dto.join(name), b"-----BEGIN CERTIFICATE-----\ntwo\n", 0o640)),
        "the change of {name} did not reach the other node"
    );
    std::fs::set_permissions(dfrom.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        wait_until(20, || holds(&dto.join(name), b"-----BEGIN CERTIFICATE-----\ntwo\n", 0o600)),
        "the mode change of {name} did not reach the other node"
    );
    std::fs::remove_file(dfrom.join(name)).unwrap();
    assert!(
        wait_until(20, || !dto.join(name).exists()),
        "the removal of {name} did not reach the other node"
    );
    // A few more passes on both sides, then count what each logged.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert_eq!(own_head(from) - from0, 4, "the changing node logs one entry per change");
    assert_eq!(own_head(to), to0, "the receiving node logged an echo");
    // The file never came back on the changing node.
    assert!(!dfrom.join(name).exists());
}

#[test]
fn files_follow_both_ways_without_echo_and_big_files_are_refused() {
    let p = pair();
    round(&p, true);
    round(&p, false);

    // Two files in step: the status of both nodes counts them.
    put(p.root.path(), &p.da, "ca.pem", b"ca", 0o644);
    put(p.root.path(), &p.db, "key.pem", b"key", 0o600);
    assert!(wait_until(20, || holds(&p.db.join("ca.pem"), b"ca", 0o644)
        && holds(&p.da.join("key.pem"), b"key", 0o600)));
    assert!(wait_until(10, || {
        [&p.a, &p.b].iter().all(|n| {
            let s = &admin_get(n, "/v1/status")["sidefiles"];
            s["files"] == 2 && s["last_sync_ms"].as_u64().unwrap_or(0) > 0
        })
    }));

    // Over the limit: refused, reported, not replicated, not logged.
    let head = own_head(&p.a);
    let big = vec![b'x'; (16 << 20) + 1];
    put(p.root.path(), &p.da, "huge.bin", &big, 0o644);
    assert!(
        wait_until(20, || {
            let s = &admin_get(&p.a, "/v1/status")["sidefiles"];
            s["refused"].as_u64().unwrap_or(0) >= 1 && s["last_error"].as_str().is_some_and(|e| e.contains("huge.bin"))
        }),
        "the big file was not reported: {}",
        admin_get(&p.a, "/v1/status")["sidefiles"]
    );
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert!(!p.db.join("huge.bin").exists(), "a file over the limit reached the peer");
    assert_eq!(own_head(&p.a), head, "a file over the limit was logged");
    assert_eq!(
        std::fs::metadata(p.da.join("huge.bin")).unwrap().len(),
        big.len() as u64,
        "the big file was touched"
    );

    // The same file changed on both nodes at once: both end with the same
    // one of the two versions (the larger (HLC, origin) wins everywhere).
    put(p.root.path(), &p.da, "both.txt", b"version of a", 0o644);
    put(p.root.path(), &p.db, "both.txt", b"version of b", 0o644);
    let same = || {
        let (x, y) = (std::fs::read(p.da.join("both.txt")), std::fs::read(p.db.join("both.txt")));
        matches!((&x, &y), (Ok(x), Ok(y)) if x == y)
    };
    assert!(wait_until(20, same), "the nodes did not agree on a file changed on both");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert!(same(), "the nodes disagree after agreeing");
    let kept = std::fs::read(p.da.join("both.txt")).unwrap();
    assert!(kept == b"version of a" || kept == b"version of b", "{kept:?}");

    // The changes are entries of the log, on the node that did not make them
    // too.
    let (ok, out, err) = p.b.cli(&["log", "tail", "-n", "100"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("side-file-set certs/\"a.pem\"") && out.contains("side-file-removed certs/\"a.pem\""),
        "{out}"
    );

    // The metrics listener exposes the counters.
    let m = scrape(&p.root.path().join("a"), "/metrics");
    assert!(m.lines().any(|l| l == "tandem_sidefiles_files 3"), "{m}");
    assert!(m.lines().any(|l| l == "tandem_sidefiles_refused_total 1"), "{m}");
    assert!(m.lines().any(|l| l.starts_with("tandem_sidefiles_logged_total ")), "{m}");

    // So does the status page.
    let page = scrape(&p.root.path().join("a"), "/status");
    assert!(page.contains("Side files") && page.contains("3 in 1 directories"), "{page}");

    // `tandem status` shows the side files in text too.
    let (ok, out, err) = p.a.cli(&["status"], None);
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("sidefiles"))
        .unwrap_or_else(|| panic!("no sidefiles line:\n{out}"));
    assert!(line.contains("3 files in 1 dirs") && line.contains("huge.bin"), "{line}");
    assert!(out.contains(&format!("dir       {} (certs)", p.da.display())), "{out}");
}

/// A node that was down takes the changes made meanwhile on its peer, and
/// logs the changes made to its own directory while it was down.
#[test]
fn a_node_that_was_down_catches_up_and_publishes_its_own_changes() {
    let root = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let (da, db) = (root.path().join("a-certs"), root.path().join("b-certs"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let more = |d: &Path| format!("sync_dirs = {{ certs = \"{}\" }}\nsync_dirs_interval_ms = 200\n", d.display());
    let a = common::start_mirror(&root.path().join("a"), "node-a", pa, &[pb], SECRET, "master", &more(&da));
    let b = common::start_mirror(&root.path().join("b"), "node-b", pb, &[pa], SECRET, "slave", &more(&db));
    let (a0, b0) = (own_head(&a), own_head(&b));
    put(root.path(), &da, "x.pem", b"x one", 0o644);
    assert!(wait_until(20, || holds(&db.join("x.pem"), b"x one", 0o644)));
    assert!(b.stop(), "node b did not stop cleanly");
    put(root.path(), &da, "x.pem", b"x two", 0o644);
    put(root.path(), &db, "y.pem", b"y made while b was down", 0o644);
    assert!(wait_until(10, || own_head(&a) == a0 + 2));
    let b = common::restart(&root.path().join("b"));
    assert!(
        wait_until(20, || holds(&db.join("x.pem"), b"x two", 0o644)),
        "b did not take the change made while it was down"
    );
    assert!(
        wait_until(20, || holds(&da.join("y.pem"), b"y made while b was down", 0o644)),
        "b did not publish the file made while it was down"
    );
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert_eq!(own_head(&a), a0 + 2, "a logged more than its two changes");
    assert_eq!(own_head(&b), b0 + 1, "b logged more than the one file made here");
    drop(a);
}
