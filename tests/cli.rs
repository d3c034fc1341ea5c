//! The `tandem` binary end to end: serve from a fresh directory with no
//! config, manage users through the admin endpoint, restart, bad configs.

mod common;
use common::{cli, write_config, Node};

#[test]
fn serve_without_config_then_user_add_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), None);
    assert!(dir.path().join("tandem-data/db").is_dir(), "default data dir is ./tandem-data");
    for (name, addr) in &node.listeners {
        assert!(addr.contains("127.0.0.1:"), "{name} listens on {addr}, not loopback");
    }
    let (ok, out, err) = node.cli(&["user", "add", "Alice@Example.org", "--password-stdin"], Some("correct horse\n"));
    assert!(ok, "user add failed: {out} {err}");
    let (ok, _, err) = node.cli(&["user", "add", "alice@example.org", "--password-stdin"], Some("again\n"));
    assert!(!ok && err.contains("already exists"), "duplicate user accepted: {err}");
    let (ok, out, _) = node.cli(&["user", "list"], None);
    assert!(ok);
    assert_eq!(out.trim(), "alice@example.org");
    let (ok, out, _) = node.cli(&["log", "tail", "-n", "50"], None);
    assert!(ok);
    assert!(out.contains("user-created alice@example.org"), "{out}");
    assert!(out.contains("mailbox-created alice@example.org \"INBOX\""), "{out}");
    assert!(out.contains("\\Trash"), "special-use folders are created: {out}");
    assert!(!out.contains("argon2"), "password hashes never show in the log tail");
    let (ok, out, _) = node.cli(&["status", "--json"], None);
    assert!(ok);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["users"], 1);
    assert!(st["log"]["apply_order"].as_u64().unwrap() >= 13);
    assert!(node.stop(), "clean exit on SIGTERM");

    let node = Node::start(dir.path(), None);
    assert!(node.lines.iter().any(|l| l.contains("node node-")), "{:?}", node.lines);
    let (ok, out, _) = node.cli(&["user", "list"], None);
    assert!(ok);
    assert_eq!(out.trim(), "alice@example.org", "user lost across restart");
    let (ok, out, _) = node.cli(&["status"], None);
    assert!(ok);
    assert!(out.contains("users       1") && !out.contains("unclean"), "{out}");
    let (ok, _, _) = node.cli(&["user", "passwd", "alice@example.org", "--password-stdin"], Some("new one\n"));
    assert!(ok);
    let (ok, _, _) = node.cli(&["user", "del", "alice@example.org"], None);
    assert!(ok);
    let (ok, out, _) = node.cli(&["user", "list"], None);
    assert!(ok && out.trim().is_empty());
    assert!(node.stop());
}

#[test]
fn wrong_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "tok", "");
    let node = Node::start(dir.path(), Some(&cfg));
    std::fs::write(dir.path().join("data/admin.token"), "0".repeat(64)).unwrap();
    let (ok, _, err) = node.cli(&["user", "list"], None);
    assert!(!ok && err.contains("token"), "{err}");
    drop(node);
}

#[test]
fn bad_config_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[node]\nid = \"x\"\n[lmtp]\nlisten = \"127.0.0.1:0\"\nmax_mesage_size = 5\n").unwrap();
    let (ok, _, err) = cli(dir.path(), Some(&p), &["serve"], None);
    assert!(!ok);
    assert!(err.contains("max_mesage_size") && err.contains("line 5"), "{err}");
    std::fs::write(&p, "[mirror]\nack = \"eventually\"\n").unwrap();
    let (ok, _, err) = cli(dir.path(), Some(&p), &["status"], None);
    assert!(!ok && err.contains("line 2") && err.contains("eventually"), "{err}");
}

#[test]
fn node_id_cannot_change_under_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "first", "");
    let node = Node::start(dir.path(), Some(&cfg));
    assert!(node.stop());
    let cfg = write_config(dir.path(), "second", "");
    let (ok, _, err) = cli(dir.path(), Some(&cfg), &["serve"], None);
    assert!(!ok && err.contains("first") && err.contains("cannot change"), "{err}");
}
