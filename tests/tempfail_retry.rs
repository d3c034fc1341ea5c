//! `ack = "peer"` with `ack_fallback = "tempfail"`: a delivery answered
//! `451 4.4.3` is stored already, so the MTA's retry must not store it
//! again. Real daemons on loopback.

mod common;
use common::{admin_get, digest, free_udp_port, messages, mirror_section, wait_until, write_config, Node};

const SECRET: &str = "correct horse battery staple";

/// One LMTP transaction; the reply to its DATA.
fn deliver(node: &Node, rcpt: &str, body: &str) -> String {
    let mut c = common::Raw::connect(&node.addr("lmtp"));
    c.reply();
    c.send(format!("LHLO mta\r\nMAIL FROM:<s@x>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n{body}.\r\n").as_bytes());
    // LHLO, MAIL, RCPT, DATA, then the answer for the message.
    let replies: Vec<String> = (0..5).map(|_| c.reply()).collect();
    assert!(replies[3].starts_with("354"), "{replies:?}");
    replies[4].clone()
}

#[test]
fn a_retry_of_a_tempfailed_delivery_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let extra = format!(
        "{}ack = \"peer\"\nack_timeout_ms = 1000\nack_fallback = \"tempfail\"\n",
        mirror_section(pa, &[pb], SECRET)
    );
    let a = Node::start(&da, Some(&write_config(&da, "node-a", &extra)));
    let cfg_b = write_config(&db, "node-b", &mirror_section(pb, &[pa], SECRET));
    let b = Node::start(&db, Some(&cfg_b));
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(wait_until(10, || digest(&a) == digest(&b)));

    // Peer down: stored here, answered 451.
    assert!(b.stop());
    let body = "Subject: retried\r\nMessage-ID: <r1@x>\r\n\r\nonce only\r\n";
    let r = deliver(&a, "u@example.org", body);
    assert!(r.starts_with("451 4.4.3"), "{r}");
    // The MTA retries while the peer is still down: 451 again, no second copy.
    let r = deliver(&a, "u@example.org", body);
    assert!(r.starts_with("451 4.4.3"), "{r}");
    assert_eq!(messages(&a, "u@example.org", "INBOX").len(), 1);
    // Another message to the same recipient is not taken for a retry.
    let r = deliver(&a, "u@example.org", "Subject: other\r\n\r\nanother body\r\n");
    assert!(r.starts_with("451 4.4.3"), "{r}");
    assert_eq!(messages(&a, "u@example.org", "INBOX").len(), 2);

    // Peer back: the retry is acknowledged, without a second copy.
    let b = Node::start(&db, Some(&cfg_b));
    assert!(wait_until(15, || digest(&a) == digest(&b)));
    let r = deliver(&a, "u@example.org", body);
    assert!(r.starts_with("250"), "{r}");
    assert!(wait_until(10, || digest(&a) == digest(&b)));
    for n in [&a, &b] {
        let msgs = messages(n, "u@example.org", "INBOX");
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        let blobs: std::collections::BTreeSet<&str> = msgs.iter().map(|m| m["blob"].as_str().unwrap()).collect();
        assert_eq!(blobs.len(), 2, "one message stored twice: {msgs:?}");
    }
    let st = admin_get(&a, "/v1/status");
    assert_eq!(st["lmtp"]["retries_already_stored"], 2, "{st}");
    // Once acknowledged, the same body again is a new message (a new
    // delivery, not a retry).
    let r = deliver(&a, "u@example.org", body);
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(messages(&a, "u@example.org", "INBOX").len(), 3);
}
