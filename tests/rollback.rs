//! A node whose data directory goes back to an older copy while its peer
//! runs on: real daemons on loopback.

mod common;
use common::{admin_get, digest, free_udp_port, messages, mirror_section, wait_until, write_config, Node};
use std::collections::BTreeSet;
use std::path::Path;

const SECRET: &str = "correct horse battery staple";
const USERS: [&str; 4] = ["early@example.org", "lost@example.org", "forked@example.org", "onb@example.org"];

fn deliver(node: &Node, rcpt: &str, n: usize, tag: &str) {
    let mut c = common::Raw::connect(&node.addr("lmtp"));
    c.reply();
    c.send(b"LHLO t\r\n");
    c.reply();
    for i in 0..n {
        c.send(format!("MAIL FROM:<s@x>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\nSubject: {tag} {i}\r\n\r\nbody {tag} {i}\r\n.\r\n").as_bytes());
        for _ in 0..3 {
            assert!(c.reply().starts_with(['2', '3']));
        }
        let r = c.reply();
        assert!(r.starts_with("250"), "{tag} {i}: {r}");
    }
}

fn converged(a: &Node, b: &Node, secs: u64) -> bool {
    wait_until(secs, || digest(a) == digest(b))
}

/// Every entry of the apply order as (origin, seq, clock, event).
fn log(node: &Node) -> BTreeSet<(String, u64, u64, String)> {
    admin_get(node, "/v1/log/tail?n=10000")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["origin"].as_str().unwrap().to_string(),
                e["seq"].as_u64().unwrap(),
                e["time_ms"].as_u64().unwrap(),
                e["event"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn subjects(node: &Node, user: &str) -> Vec<String> {
    let mut s: Vec<String> = messages(node, user, "INBOX")
        .iter()
        .map(|m| {
            let blob = common::blob(node, m["blob"].as_str().unwrap());
            let text = String::from_utf8_lossy(&blob).into_owned();
            text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap().to_string()
        })
        .collect();
    s.sort();
    s
}

fn cp(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success());
}

#[test]
fn a_node_restored_from_an_older_copy_never_reuses_a_seq_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let cfg_a = write_config(&da, "node-a", &mirror_section(pa, &[pb], SECRET));
    let cfg_b = write_config(&db, "node-b", &mirror_section(pb, &[pa], SECRET));
    let a = Node::start(&da, Some(&cfg_a));
    let b = Node::start(&db, Some(&cfg_b));
    for u in USERS {
        let (ok, _, err) = a.cli(&["user", "add", u, "--password-stdin"], Some("secret\n"));
        assert!(ok, "{err}");
    }
    deliver(&a, USERS[0], 3, "early");
    assert!(converged(&a, &b, 15));
    let origin_a = admin_get(&a, "/v1/status")["origin"].as_str().unwrap().to_string();

    // The copy an operator will restore later.
    assert!(a.stop());
    cp(&da.join("data"), &dir.path().join("a-data-copy"));
    let a = Node::start(&da, Some(&cfg_a));
    deliver(&a, USERS[1], 4, "lost");
    assert!(converged(&a, &b, 15));
    assert_eq!(subjects(&b, USERS[1]).len(), 4);
    assert!(a.stop());

    // A's data goes back to the copy while B runs on. A takes two
    // deliveries before it can hear from B (the mirror port is elsewhere):
    // their seqs name other entries at B.
    cp(&dir.path().join("a-data-copy"), &da.join("data"));
    let isolated = write_config(&da, "node-a", &mirror_section(free_udp_port(), &[], SECRET));
    let a = Node::start(&da, Some(&isolated));
    assert!(subjects(&a, USERS[1]).is_empty(), "the copy is not older");
    deliver(&a, USERS[2], 2, "forked");
    assert!(a.stop());
    let cfg_a = write_config(&da, "node-a", &mirror_section(pa, &[pb], SECRET));
    let a = Node::start(&da, Some(&cfg_a));
    // Then writes on both sides.
    deliver(&a, USERS[2], 2, "after");
    deliver(&b, USERS[3], 3, "on-b");

    assert!(converged(&a, &b, 30), "did not converge: {:?} vs {:?}", digest(&a), digest(&b));
    // Detected and reported.
    let st = admin_get(&a, "/v1/status");
    let m = &st["mirror"];
    assert!(m["rollbacks"].as_u64().unwrap() + m["forks"].as_u64().unwrap() >= 1, "{st}");
    assert!(m["last_divergence"].as_str().unwrap().contains(&origin_a), "{st}");
    // The two deliveries made while isolated moved, and the two made right
    // after the restart too if they came before B's history.
    let moved = m["incoming"]["node-b"]["rehomed"].as_u64().unwrap();
    assert!((2..=4).contains(&moved), "{st}");
    let (_, text, _) = a.cli(&["status"], None);
    assert!(text.contains("DIVERGED"), "{text}");
    // A refused B's link for the rollback: B read A's log bases, found
    // nothing pruned that it lacks, and did not join by trees.
    let join = &admin_get(&b, "/v1/status")["mirror"]["join"];
    assert!(join["checks"].as_u64().unwrap() >= 1, "{join}");
    assert_eq!(join["joins"], 0, "{join}");
    // A appends under a new origin now; B holds both.
    let new_origin = st["origin"].as_str().unwrap().to_string();
    assert_ne!(new_origin, origin_a);
    let heads = digest(&b).1;
    assert!(
        heads.to_string().contains(&origin_a) && heads.to_string().contains(&new_origin),
        "{heads}"
    );
    // Nothing lost, nothing twice, on either node.
    for n in [&a, &b] {
        assert_eq!(subjects(n, USERS[0]), ["early 0", "early 1", "early 2"]);
        assert_eq!(subjects(n, USERS[1]), ["lost 0", "lost 1", "lost 2", "lost 3"]);
        assert_eq!(subjects(n, USERS[2]), ["after 0", "after 1", "forked 0", "forked 1"]);
        assert_eq!(subjects(n, USERS[3]), ["on-b 0", "on-b 1", "on-b 2"]);
    }
    // No (origin, seq) names two entries: both logs hold the same entries.
    let (la, lb) = (log(&a), log(&b));
    assert_eq!(la, lb);
    let places: BTreeSet<(String, u64)> = la.iter().map(|(o, s, _, _)| (o.clone(), *s)).collect();
    assert_eq!(places.len(), la.len(), "a seq names two entries");
    // A restarts on its successor origin.
    assert!(a.stop());
    let a = Node::start(&da, Some(&cfg_a));
    assert_eq!(admin_get(&a, "/v1/status")["origin"], new_origin.as_str());
    deliver(&a, USERS[0], 1, "late");
    assert!(converged(&a, &b, 15));
    assert_eq!(subjects(&b, USERS[0]).len(), 4);
}

/// With `ack = "peer"`, a node whose log went backwards gets no
/// confirmation from a peer that holds more of its origin than it does: the
/// peer's vector is refused, so a delivery is answered 451, not 250 (the
/// peer's vector covers the new seq, but for other entries).
#[test]
fn ack_peer_never_confirms_on_a_link_whose_peer_holds_more_of_our_origin() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let ack = "ack = \"peer\"\nack_timeout_ms = 1000\nack_fallback = \"tempfail\"\n";
    let cfg_a = write_config(&da, "node-a", &format!("{}{ack}", mirror_section(pa, &[pb], SECRET)));
    let b = Node::start(&db, Some(&write_config(&db, "node-b", &mirror_section(pb, &[pa], SECRET))));
    let a = Node::start(&da, Some(&cfg_a));
    let (ok, _, err) = a.cli(&["user", "add", USERS[0], "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(converged(&a, &b, 15));
    assert!(a.stop());
    cp(&da.join("data"), &dir.path().join("a-data-copy"));
    let a = Node::start(&da, Some(&cfg_a));
    deliver(&a, USERS[0], 3, "lost");
    assert!(converged(&a, &b, 15));
    assert!(a.stop());
    cp(&dir.path().join("a-data-copy"), &da.join("data"));
    // A dials B, but B cannot reach A (A listens elsewhere), so A cannot
    // take its lost entries back: its link stays refused.
    let cfg_a = write_config(&da, "node-a", &format!("{}{ack}", mirror_section(free_udp_port(), &[pb], SECRET)));
    let a = Node::start(&da, Some(&cfg_a));
    assert!(wait_until(10, || admin_get(&a, "/v1/status")["mirror"]["rollbacks"]
        .as_u64()
        .unwrap()
        >= 1));
    let mut c = common::Raw::connect(&a.addr("lmtp"));
    c.reply();
    c.send(
        format!(
            "LHLO t\r\nMAIL FROM:<s@x>\r\nRCPT TO:<{}>\r\nDATA\r\nSubject: alone\r\n\r\nx\r\n.\r\n",
            USERS[0]
        )
        .as_bytes(),
    );
    let replies: Vec<String> = (0..5).map(|_| c.reply()).collect();
    assert!(
        replies[4].starts_with("451 4.4.3"),
        "confirmed by a peer that holds other entries: {replies:?}"
    );
    let st = admin_get(&a, "/v1/status");
    let out = &st["mirror"]["outgoing"][0];
    // Refused, and dialling again after the backoff.
    assert!(["refused", "connecting"].contains(&out["state"].as_str().unwrap()), "{st}");
    assert!(out["last_error"].as_str().unwrap().contains("went backwards"), "{st}");
}
