//! Config mirroring end to end: `tandem config set` on one daemon of a pair
//! replicates over QUIC to the other, which uses it without a restart;
//! `[mirror] config_except` keeps a node's own value; node-local keys are
//! refused.

mod common;
use common::{digest, free_udp_port, start_mirror, wait_until, Node, Raw};
use serde_json::Value;

const SECRET: &str = "correct horse battery staple";
const USER: &str = "u@example.org";

/// A and B mirroring each other, with USER on both; `b_more` goes into B's
/// config after its `[mirror]` section.
fn pair(b_more: &str) -> (tempfile::TempDir, Node, Node) {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = start_mirror(&dir.path().join("a"), "node-a", pa, &[pb], SECRET, "master", "");
    let b = start_mirror(&dir.path().join("b"), "node-b", pb, &[pa], SECRET, "slave", b_more);
    let (ok, _, err) = a.cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(
        wait_until(15, || b.cli(&["user", "list"], None).1.contains(USER)),
        "the user did not reach B"
    );
    (dir, a, b)
}

fn get(node: &Node, key: &str) -> Value {
    let (ok, out, err) = node.cli(&["config", "get", key, "--json"], None);
    assert!(ok, "config get {key}: {err}");
    serde_json::from_str(&out).unwrap()
}

fn set(node: &Node, key: &str, value: &str) -> String {
    let (ok, out, err) = node.cli(&["config", "set", key, value], None);
    assert!(ok, "config set {key} {value}: {err}");
    out
}

/// Wait until `node` shows `key` with this effective value and source.
fn shows(node: &Node, key: &str, effective: &str, source: &str) -> bool {
    wait_until(15, || {
        let e = get(node, key);
        e["effective"] == effective && e["source"] == source
    })
}

/// Deliver one message of about `size` bytes over LMTP; the reply to its
/// recipient after the data.
fn deliver(node: &Node, size: usize) -> String {
    let mut c = Raw::connect(&node.addr("lmtp"));
    assert!(c.reply().starts_with("220"));
    c.send(b"LHLO test\r\n");
    assert!(c.reply().starts_with("250"));
    c.send(format!("MAIL FROM:<s@example.org>\r\nRCPT TO:<{USER}>\r\nDATA\r\n").as_bytes());
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("354"));
    let mut body = format!("Subject: {size}\r\n\r\n");
    while body.len() < size {
        body.push_str("0123456789012345678901234567890123456789012345678901234567890123456789\r\n");
    }
    body.push_str(".\r\n");
    c.send(body.as_bytes());
    let r = c.reply();
    c.send(b"QUIT\r\n");
    r
}

/// Log in over plain IMAP on loopback; the tagged answer, and the
/// connection (kept open while the caller holds it).
fn login(node: &Node) -> (String, Raw) {
    let mut c = Raw::connect(&node.addr("imap"));
    assert!(c.line().starts_with("* OK"));
    c.send(format!("a1 LOGIN {USER} secret\r\n").as_bytes());
    for _ in 0..20 {
        let l = c.line();
        if l.starts_with("a1 ") {
            return (l, c);
        }
    }
    panic!("no answer to LOGIN");
}

#[test]
fn a_setting_made_on_either_node_reaches_the_other_and_takes_effect() {
    let (_dir, a, b) = pair("");
    // Before: B takes a 5 KB message (its default limit is 64 MiB).
    assert!(deliver(&b, 5000).starts_with("250"), "B refused before the setting");
    let e = get(&b, "lmtp.max_message_size");
    assert_eq!((e["effective"].as_str(), e["source"].as_str()), (Some("67108864"), Some("default")));

    // Set on A; B shows it and refuses the same delivery.
    let out = set(&a, "lmtp.max_message_size", "2000");
    assert!(out.contains("this node uses 2000 (replicated)"), "{out}");
    assert!(
        shows(&b, "lmtp.max_message_size", "2000", "replicated"),
        "{}",
        get(&b, "lmtp.max_message_size")
    );
    assert_eq!(get(&b, "lmtp.max_message_size")["replicated"], "2000");
    let r = deliver(&b, 5000);
    assert!(r.starts_with("552"), "B took a message above the replicated limit: {r}");
    assert!(deliver(&b, 300).starts_with("250"));

    // Set on B (the slave); A uses it: a second session of one user is refused.
    set(&b, "imap.max_connections_per_user", "1");
    assert!(shows(&a, "imap.max_connections_per_user", "1", "replicated"));
    let (first, _held) = login(&a);
    assert!(first.starts_with("a1 OK"), "{first}");
    let (second, _) = login(&a);
    assert!(second.starts_with("a1 NO") && second.contains("LIMIT"), "{second}");

    // Unset on A: both go back to their own values.
    let (ok, out, err) = a.cli(&["config", "unset", "lmtp.max_message_size"], None);
    assert!(ok && out.contains("unset"), "{out}{err}");
    assert!(shows(&b, "lmtp.max_message_size", "67108864", "default"));
    assert!(get(&b, "lmtp.max_message_size")["replicated"].is_null());
    assert!(deliver(&b, 5000).starts_with("250"));

    // `config list` shows every key with its source, in text and JSON.
    let (ok, out, _) = b.cli(&["config", "list"], None);
    assert!(ok);
    let row = out.lines().find(|l| l.starts_with("imap.max_connections_per_user")).unwrap();
    assert!(row.contains(" 1 ") && row.contains("replicated"), "{out}");
    let (ok, out, _) = a.cli(&["config", "list", "--json"], None);
    assert!(ok);
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(all.iter().any(|e| e["key"] == "lmtp.detail_folders" && e["source"] == "default"));
    assert!(all.len() >= 8);

    // The two nodes hold the same log and trees.
    assert!(wait_until(15, || digest(&a) == digest(&b)), "digests differ");
}

#[test]
fn an_excepted_key_is_logged_on_both_but_the_node_keeps_its_file_value() {
    let b_more = "config_except = [\"lmtp.max_message_size\"]\n\
                  [lmtp]\nlisten = \"127.0.0.1:0\"\nmax_message_size = 100000\n";
    let (_dir, a, b) = pair(b_more);
    assert_eq!(get(&b, "lmtp.max_message_size")["source"], "file");

    set(&a, "lmtp.max_message_size", "2000");
    // B logs and stores the event like any other ...
    assert!(wait_until(15, || get(&b, "lmtp.max_message_size")["replicated"] == "2000"));
    let (ok, tail, _) = b.cli(&["log", "tail", "-n", "50"], None);
    assert!(ok && tail.contains("config-set lmtp.max_message_size = \"2000\""), "{tail}");
    // ... but keeps its own value, and says so.
    let e = get(&b, "lmtp.max_message_size");
    assert_eq!(
        (e["effective"].as_str(), e["source"].as_str()),
        (Some("100000"), Some("excepted")),
        "{e}"
    );
    assert_eq!(e["excepted"], true);
    assert!(deliver(&b, 5000).starts_with("250"), "B used the excepted value");
    assert!(deliver(&a, 5000).starts_with("552"), "A did not use the replicated value");
    // Views and merkle trees still agree: except changes no stored byte.
    assert!(wait_until(15, || digest(&a) == digest(&b)), "digests differ");

    // Node-local keys and bad values are refused, naming the key and why;
    // nothing is logged for them.
    for (key, value, why) in [
        ("imap.listen", "127.0.0.1:1", "imap.listen is node-local"),
        ("mirror.secret", "another long secret value", "mirror.secret is node-local"),
        ("node.data_dir", "/tmp/x", "node.data_dir is node-local"),
        ("lmtp.max_message_size", "lots", "lmtp.max_message_size = \"lots\""),
        ("no.such_key", "1", "no.such_key: no such key"),
    ] {
        let (ok, _, err) = a.cli(&["config", "set", key, value], None);
        assert!(!ok && err.contains(why), "{key}: {err}");
    }
    let (ok, _, err) = b.cli(&["config", "get", "imap.listen"], None);
    assert!(!ok && err.contains("listener address"), "{err}");
    let (ok, tail, _) = a.cli(&["log", "tail", "-n", "200"], None);
    assert!(ok);
    let sets: Vec<&str> = tail.lines().filter(|l| l.contains("config-set")).collect();
    assert_eq!(sets.len(), 1, "a refused setting was logged: {sets:?}");
    assert_eq!(get(&a, "lmtp.max_message_size")["replicated"], "2000");
}

#[test]
fn a_node_that_was_down_takes_the_setting_when_it_catches_up() {
    let (dir, a, b) = pair("");
    assert!(b.stop(), "B did not stop cleanly");
    set(&a, "lmtp.max_message_size", "2000");
    set(&a, "lmtp.detail_folders", "true");
    let b = common::restart(&dir.path().join("b"));
    assert!(shows(&b, "lmtp.max_message_size", "2000", "replicated"));
    assert!(shows(&b, "lmtp.detail_folders", "true", "replicated"));
    assert!(deliver(&b, 5000).starts_with("552"));
    // And it keeps it across its own restart (the views hold it).
    assert!(b.stop());
    let b = common::restart(&dir.path().join("b"));
    let e = get(&b, "lmtp.max_message_size");
    assert_eq!(
        (e["effective"].as_str(), e["source"].as_str()),
        (Some("2000"), Some("replicated")),
        "{e}"
    );
    assert!(wait_until(15, || digest(&a) == digest(&b)), "digests differ");
}
