//! Roles and epochs with real daemons: `tandem promote`, an old master
//! that steps down on its own, roles swapped while both nodes run.

mod common;
use common::{admin_get, digest, free_udp_port, messages, mirror_section, wait_until, write_config, Node};

const SECRET: &str = "correct horse battery staple";

fn deliver(node: &Node, rcpt: &str, n: usize, tag: &str) {
    let mut c = common::Raw::connect(&node.addr("lmtp"));
    c.reply();
    c.send(b"LHLO t\r\n");
    c.reply();
    for i in 0..n {
        c.send(format!("MAIL FROM:<s@x>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\nSubject: {tag} {i}\r\n\r\n{tag} {i}\r\n.\r\n").as_bytes());
        let r: Vec<String> = (0..4).map(|_| c.reply()).collect();
        assert!(r[3].starts_with("250"), "{r:?}");
    }
}

/// (role, epoch, master) as `tandem status` reports them.
fn role(node: &Node) -> (String, u64, Option<String>) {
    let st = admin_get(node, "/v1/status");
    assert_eq!(st["role"], st["mirror"]["role"], "{st}");
    (
        st["role"].as_str().unwrap().to_string(),
        st["epoch"].as_u64().unwrap(),
        st["master"].as_str().map(String::from),
    )
}

fn promote(node: &Node) -> String {
    let (ok, out, err) = node.cli(&["promote"], None);
    assert!(ok, "{out} {err}");
    out
}

fn converged(a: &Node, b: &Node) -> bool {
    wait_until(20, || digest(a) == digest(b))
}

#[test]
fn promote_a_slave_and_the_old_master_steps_down_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    // The configs are never edited below: A is configured master, B slave.
    let cfg_a = write_config(&da, "node-a", &mirror_section(pa, &[pb], SECRET));
    let cfg_b = write_config(&db, "node-b", &format!("{}mode = \"slave\"\n", mirror_section(pb, &[pa], SECRET)));
    let a = Node::start(&da, Some(&cfg_a));
    let b = Node::start(&db, Some(&cfg_b));
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    deliver(&a, "u@example.org", 2, "first");
    assert!(converged(&a, &b));
    assert_eq!(role(&a), ("master".into(), 0, None));
    assert_eq!(role(&b), ("slave".into(), 0, None));

    // The master goes down; the slave is promoted and takes mail.
    assert!(a.stop());
    assert!(promote(&b).contains("epoch 1"));
    assert_eq!(role(&b), ("master".into(), 1, Some("node-b".into())));
    assert!(promote(&b).contains("already master under epoch 1"));
    deliver(&b, "u@example.org", 3, "on-b");
    // The old master returns: a slave on its own, and it catches up.
    let a = Node::start(&da, Some(&cfg_a));
    assert!(converged(&a, &b));
    assert_eq!(role(&a), ("slave".into(), 1, Some("node-b".into())));
    assert_eq!(messages(&a, "u@example.org", "INBOX").len(), 5);
    let (_, text, _) = a.cli(&["status"], None);
    assert!(text.contains("slave epoch 1"), "{text}");

    // Back the same way: B down, A promoted, B returns as a slave.
    assert!(b.stop());
    assert!(promote(&a).contains("epoch 2"));
    deliver(&a, "u@example.org", 1, "on-a");
    let b = Node::start(&db, Some(&cfg_b));
    assert!(converged(&a, &b));
    assert_eq!(role(&a), ("master".into(), 2, Some("node-a".into())));
    assert_eq!(role(&b), ("slave".into(), 2, Some("node-a".into())));

    // And with both running: promoting B makes A step down within moments.
    assert!(promote(&b).contains("epoch 3"));
    assert!(
        wait_until(10, || role(&a) == ("slave".into(), 3, Some("node-b".into()))),
        "{:?}",
        role(&a)
    );
    assert_eq!(role(&b).0, "master");
    // The handshake carries the epoch (B's last hello came with 1 or 2).
    let st = admin_get(&a, "/v1/status");
    assert!(st["mirror"]["incoming"]["node-b"]["peer_epoch"].as_u64().unwrap() >= 1, "{st}");
    // A, now a slave, stores it pending until B (the master) places it: the
    // logs can agree a moment before the placement arrives.
    deliver(&a, "u@example.org", 1, "after-swap");
    assert!(converged(&a, &b));
    for n in [&a, &b] {
        assert!(
            wait_until(15, || messages(n, "u@example.org", "INBOX").len() == 7),
            "{}",
            messages(n, "u@example.org", "INBOX").len()
        );
    }
}
