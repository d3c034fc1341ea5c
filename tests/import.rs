//! Import and export end to end: a generated Maildir corpus is imported
//! through the running node, compared message by message (blake3 of the
//! CRLF form, flags, folder, internal date), imported again (adds nothing),
//! exported and imported into another user (round trip). Also mbox.

mod common;
use common::{messages, node_with_users, Node};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use tandem::mailfile;

use common::gen_corpus;

/// folder -> sorted list of (blake3 hex, sorted flags, internal date)
type Summary = BTreeMap<String, Vec<(String, Vec<String>, i64)>>;

fn summarize_maildir(root: &Path) -> Summary {
    let mut s = Summary::new();
    for f in mailfile::scan_maildir(root).unwrap() {
        let bytes = std::fs::read(&f.path).unwrap();
        let hash = blake3::hash(&mailfile::to_crlf(&bytes)).to_hex().to_string();
        let mtime = std::fs::metadata(&f.path)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut flags = f.flags.clone();
        flags.sort();
        s.entry(f.folder).or_default().push((hash, flags, mtime));
    }
    for v in s.values_mut() {
        v.sort();
    }
    s
}

fn summarize_node(node: &Node, user: &str) -> Summary {
    let mut s = Summary::new();
    for mb in common::admin_get(node, &format!("/v1/mailboxes?user={user}")).as_array().unwrap() {
        let name = mb["name"].as_str().unwrap().to_string();
        let mut v: Vec<(String, Vec<String>, i64)> = messages(node, user, &name)
            .iter()
            .map(|m| {
                let mut flags: Vec<String> = m["flags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect();
                flags.sort();
                (m["blob"].as_str().unwrap().to_string(), flags, m["internal_date"].as_i64().unwrap())
            })
            .collect();
        if v.is_empty() {
            continue;
        }
        v.sort();
        s.insert(name, v);
    }
    s
}

fn import(node: &Node, kind: &str, path: &Path, user: &str) -> String {
    let (ok, out, err) = node.cli(&["import", kind, path.to_str().unwrap(), "--user", user], None);
    assert!(ok, "import failed: {out} {err}");
    out
}

#[test]
fn maildir_import_is_exact_idempotent_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    let st = Command::new("python3")
        .arg(gen_corpus())
        .args([
            "maildir",
            "--out",
            corpus.to_str().unwrap(),
            "--users",
            "2",
            "--messages",
            "2000",
            "--seed",
            "7",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    std::env::set_var("TANDEM_NO_PROGRESS", "1");
    let node = node_with_users(dir.path(), "imp", "", &["user1", "user2", "user3"]);
    for u in ["user1", "user2"] {
        let md = corpus.join(u).join("Maildir");
        let out = import(&node, "maildir", &md, u);
        let want = summarize_maildir(&md);
        let total: usize = want.values().map(|v| v.len()).sum();
        assert_eq!(total, 2000);
        assert!(out.contains(&format!("imported {total} messages")), "{out}");
        assert!(want.len() >= 3, "corpus has several folders: {:?}", want.keys());
        let got = summarize_node(&node, u);
        assert_eq!(got, want, "{u}: imported mail differs from the Maildir");
        // Second import: nothing new.
        let out = import(&node, "maildir", &md, u);
        assert!(
            out.contains("imported 0 messages") && out.contains(&format!("({total} already present)")),
            "{out}"
        );
        assert_eq!(summarize_node(&node, u), want);
    }
    // Export user1 and import the export as user3: the same mail.
    let exported = dir.path().join("export");
    let (ok, out, err) = node.cli(&["export", "maildir", "--user", "user1", exported.to_str().unwrap()], None);
    assert!(ok, "{out} {err}");
    assert!(out.contains("exported 2000 messages"), "{out}");
    assert_eq!(
        summarize_maildir(&exported),
        summarize_node(&node, "user1"),
        "export differs from the store"
    );
    import(&node, "maildir", &exported, "user3");
    assert_eq!(
        summarize_node(&node, "user3"),
        summarize_node(&node, "user1"),
        "export + import does not round-trip"
    );
}

#[test]
fn mbox_import_keeps_messages_flags_and_dates() {
    let dir = tempfile::tempdir().unwrap();
    let mbox = dir.path().join("mail.mbox");
    let st = Command::new("python3")
        .arg(gen_corpus())
        .args(["mbox", "--out", mbox.to_str().unwrap(), "--messages", "300"])
        .status()
        .unwrap();
    assert!(st.success());
    std::env::set_var("TANDEM_NO_PROGRESS", "1");
    let node = node_with_users(dir.path(), "mbox", "", &["user1"]);
    let data = std::fs::read(&mbox).unwrap();
    let want = mailfile::split_mbox(&data);
    assert_eq!(want.len(), 300);
    let out = import(&node, "mbox", &mbox, "user1");
    assert!(out.contains("imported 300 messages"), "{out}");
    let got = messages(&node, "user1", "INBOX");
    assert_eq!(got.len(), 300);
    let mut want_set: Vec<(String, Option<i64>)> = want.iter().map(|m| (blake3::hash(&m.body).to_hex().to_string(), m.date)).collect();
    let mut got_set: Vec<(String, Option<i64>)> = got
        .iter()
        .map(|m| (m["blob"].as_str().unwrap().to_string(), Some(m["internal_date"].as_i64().unwrap())))
        .collect();
    want_set.sort();
    got_set.sort();
    assert_eq!(got_set, want_set);
    let out = import(&node, "mbox", &mbox, "user1");
    assert!(out.contains("imported 0 messages"), "{out}");
}
