//! The mirror end to end: real daemons on loopback replicating over QUIC.

mod common;
use common::{digest, free_udp_port, messages, mirror_section, python, wait_until, write_config, Node};

const SECRET: &str = "correct horse battery staple";

fn start(dir: &std::path::Path, id: &str, port: u16, peers: &[u16], secret: &str) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    // Deliveries to u+Folder go into Folder (off by default).
    let lmtp = "[lmtp]\nlisten = \"127.0.0.1:0\"\ndetail_folders = true\n";
    let cfg = write_config(dir, id, &format!("{lmtp}{}", mirror_section(port, peers, secret)));
    Node::start(dir, Some(&cfg))
}

/// Nodes A and B mirroring each other, with user u@example.org on both.
fn converged_pair() -> (tempfile::TempDir, Node, Node) {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = start(&dir.path().join("a"), "node-a", pa, &[pb], SECRET);
    let b = start(&dir.path().join("b"), "node-b", pb, &[pa], SECRET);
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(converged(&[&a, &b], 10));
    (dir, a, b)
}

fn converged(nodes: &[&Node], secs: u64) -> bool {
    wait_until(secs, || {
        let d: Vec<_> = nodes.iter().map(|n| digest(n)).collect();
        d.windows(2).all(|w| w[0] == w[1])
    })
}

fn lmtp_burst(node: &Node, rcpt: &str, n: usize) {
    lmtp_burst_tagged(node, rcpt, n, "burst")
}

fn lmtp_burst_tagged(node: &Node, rcpt: &str, n: usize, tag: &str) {
    let mut c = common::Raw::connect(&node.addr("lmtp"));
    c.reply();
    c.send(b"LHLO burst\r\n");
    c.reply();
    let mut wire = Vec::new();
    for i in 0..n {
        wire.extend_from_slice(
            format!(
                "MAIL FROM:<s@x>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\nSubject: {tag} {i}\r\nMessage-ID: <{i}@{tag}>\r\n\r\nbody {i}\r\n.\r\n"
            )
            .as_bytes(),
        );
    }
    c.send(&wire);
    for _ in 0..n * 4 {
        let r = c.reply();
        assert!(r.starts_with('2') || r.starts_with('3'), "{r}");
    }
}

#[test]
fn pair_replicates_both_ways_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = start(&dir.path().join("a"), "node-a", pa, &[pb], SECRET);
    let b = start(&dir.path().join("b"), "node-b", pb, &[pa], SECRET);
    let (ok, _, err) = a.cli(&["user", "add", "alice@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(
        wait_until(10, || b.cli(&["user", "list"], None).1.contains("alice@example.org")),
        "user did not reach B"
    );
    // Delivered on A, read over IMAP on B.
    python(&a, "from imaptest import *\nlmtp_deliver('alice@example.org', message('from a'))\n");
    assert!(
        wait_until(10, || messages(&b, "alice@example.org", "INBOX").len() == 1),
        "delivery did not reach B"
    );
    python(
        &b,
        r#"
from imaptest import *
c = connect("alice@example.org")
ok(c.select("INBOX"))
r = ok(c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
assert b"from a" in r[0][1], r
ok(c.store("1", "+FLAGS", "(\\Flagged)"))
ok(c.append("INBOX", None, None, message("from b")))
ok(c.store("2", "+FLAGS", "(\\Deleted)"))
ok(c.expunge())
ok(c.create("Projects"))
ok(c.create("Tmp"))
ok(c.rename("Tmp", "Renamed"))
ok(c.delete("Junk"))
"#,
    );
    assert!(
        converged(&[&a, &b], 15),
        "A and B did not converge: {:?} vs {:?}",
        digest(&a),
        digest(&b)
    );
    // B's changes are visible to an IMAP client on A.
    python(
        &a,
        r#"
from imaptest import *
c = connect("alice@example.org")
ok(c.select("INBOX"))
r = ok(c.fetch("1:*", "(FLAGS)"))
assert len([x for x in r if x]) == 1 and b"\\Flagged" in r[0], r
names = b" ".join(ok(c.list('""', "*"))).decode()
assert "Projects" in names and "Renamed" in names and "Tmp" not in names and "Junk" not in names, names
"#,
    );
    let st = common::admin_get(&a, "/v1/status");
    let out = &st["mirror"]["outgoing"][0];
    assert_eq!(out["state"], "connected", "{st}");
    assert_eq!(out["queue"], 0);
    // The dialer learnt whom it reaches from B's incoming link.
    assert_eq!(out["peer"], "node-b", "{st}");
    assert!(st["mirror"]["incoming"]["node-b"]["add"].as_u64().unwrap() >= 1, "{st}");
}

#[test]
fn a_stopped_peer_catches_up_without_gaps_or_duplicates() {
    let (dir, a, b) = converged_pair();
    assert!(b.stop());
    lmtp_burst(&a, "u@example.org", 1000);
    assert_eq!(messages(&a, "u@example.org", "INBOX").len(), 1000);
    let b = Node::start(&dir.path().join("b"), Some(&dir.path().join("b/tandem.toml")));
    assert!(converged(&[&a, &b], 30), "B did not catch up");
    let msgs = messages(&b, "u@example.org", "INBOX");
    assert_eq!(msgs.len(), 1000);
    let uids: Vec<u64> = msgs.iter().map(|m| m["uid"].as_u64().unwrap()).collect();
    assert_eq!(uids, (1..=1000).collect::<Vec<_>>(), "gaps or duplicates in B's UIDs");
    assert_eq!(digest(&a).1, digest(&b).1, "version vectors differ");
}

#[test]
fn sender_killed_mid_stream_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = start(&dir.path().join("a"), "node-a", pa, &[pb], SECRET);
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    lmtp_burst(&a, "u@example.org", 3000);
    let b = start(&dir.path().join("b"), "node-b", pb, &[pa], SECRET);
    // Kill A while B is receiving.
    let count = |n: &Node| common::admin_get(n, "/v1/status")["log"]["apply_order"].as_u64().unwrap();
    assert!(wait_until(20, || count(&b) > 100), "B received nothing");
    let seen_before_kill = count(&b);
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(a);
    let a = Node::start(&dir.path().join("a"), Some(&dir.path().join("a/tandem.toml")));
    assert!(converged(&[&a, &b], 30), "did not converge after A was killed");
    assert_eq!(messages(&b, "u@example.org", "INBOX").len(), 3000);
    eprintln!("B held {seen_before_kill} entries when A was killed");
}

#[test]
fn wrong_secret_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = start(&dir.path().join("a"), "node-a", pa, &[pb], SECRET);
    let b = start(&dir.path().join("b"), "node-b", pb, &[pa], "a different secret entirely");
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(
        wait_until(10, || common::admin_get(&b, "/v1/status")["mirror"]["auth_failures"]
            .as_u64()
            .unwrap()
            >= 1),
        "B did not count A's attempt"
    );
    assert!(wait_until(10, || common::admin_get(&a, "/v1/status")["mirror"]["outgoing"][0]
        ["state"]
        == "refused"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        b.cli(&["user", "list"], None).1.trim().is_empty(),
        "data flowed despite a wrong secret"
    );
}

#[test]
fn three_nodes_converge_and_relay_around_a_cut_link() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, pc) = (free_udp_port(), free_udp_port(), free_udp_port());
    // A-C is cut: A and C only talk to B.
    let a = start(&dir.path().join("a"), "node-a", pa, &[pb], SECRET);
    let b = start(&dir.path().join("b"), "node-b", pb, &[pa, pc], SECRET);
    let c = start(&dir.path().join("c"), "node-c", pc, &[pb], SECRET);
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(
        wait_until(10, || c.cli(&["user", "list"], None).1.contains("u@example.org")),
        "A's user did not reach C through B"
    );
    // Each node creates its own folder and takes deliveries into it; B
    // also flags mail that A took. (Concurrent deliveries into one mailbox
    // on several nodes collide on UIDs: that is the conflict resolution's
    // test, tests/split_brain.rs, not this one.)
    for (n, name) in [(&a, "FromA"), (&b, "FromB"), (&c, "FromC")] {
        python(
            n,
            &format!("from imaptest import *\nc = connect('u@example.org')\nok(c.create('{name}'))\n"),
        );
    }
    assert!(converged(&[&a, &b, &c], 20), "folders did not converge");
    lmtp_burst(&a, "u+FromA@example.org", 20);
    lmtp_burst(&b, "u+FromB@example.org", 20);
    lmtp_burst(&c, "u+FromC@example.org", 20);
    assert!(
        wait_until(20, || messages(&b, "u@example.org", "FromA").len() == 20),
        "A's mail did not reach B"
    );
    python(
        &b,
        "from imaptest import *\nc = connect('u@example.org')\nok(c.select('FromA'))\nok(c.store('1:5', '+FLAGS', '(\\\\Flagged)'))\n",
    );
    assert!(converged(&[&a, &b, &c], 20), "three nodes did not converge");
    for n in [&a, &b, &c] {
        for f in ["FromA", "FromB", "FromC"] {
            assert_eq!(messages(n, "u@example.org", f).len(), 20, "{f}");
        }
        let flagged = messages(n, "u@example.org", "FromA")
            .iter()
            .filter(|m| m["flags"].as_array().unwrap().iter().any(|f| f == "\\Flagged"))
            .count();
        assert_eq!(flagged, 5);
        assert_eq!(common::admin_get(n, "/v1/status")["mirror"]["uid_conflicts"], 0);
    }
    assert_eq!(digest(&a).1, digest(&c).1, "version vectors differ");
}

#[test]
fn ack_peer_waits_for_the_mirror_and_fails_temporarily_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    let extra = format!(
        "{}ack = \"peer\"\nack_timeout_ms = 1500\nack_fallback = \"tempfail\"\n",
        mirror_section(pa, &[pb], SECRET)
    );
    let cfg = write_config(&dir.path().join("a"), "node-a", &extra);
    let a = Node::start(&dir.path().join("a"), Some(&cfg));
    let b = start(&dir.path().join("b"), "node-b", pb, &[pa], SECRET);
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(converged(&[&a, &b], 10));
    // With the peer up, the 250 means B holds the message already.
    for i in 0..5 {
        lmtp_burst_tagged(&a, "u@example.org", 1, &format!("acked-{i}"));
        assert_eq!(
            messages(&b, "u@example.org", "INBOX").len(),
            i + 1,
            "250 before the peer held the message"
        );
    }
    // Without the peer: a temporary failure after the timeout, and the alarm.
    assert!(b.stop());
    let mut c = common::Raw::connect(&a.addr("lmtp"));
    c.reply();
    c.send(b"LHLO t\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@example.org>\r\nDATA\r\nSubject: lonely\r\n\r\nx\r\n.\r\n");
    let replies: Vec<String> = (0..5).map(|_| c.reply()).collect();
    assert!(replies[4].starts_with("451 4.4.3"), "{replies:?}");
    let st = common::admin_get(&a, "/v1/status");
    assert!(st["mirror"]["ack_timeouts"].as_u64().unwrap() >= 1, "{st}");
}

/// A body travels once per link however many entries reference it, and
/// not at all to a peer that already holds it (it is asked first when
/// this node holds other references to it).
#[test]
fn bodies_travel_once_and_never_to_a_peer_that_holds_them() {
    let (dir, a, b) = converged_pair();
    for u in ["v@example.org", "w@example.org"] {
        let (ok, _, err) = a.cli(&["user", "add", u, "--password-stdin"], Some("secret\n"));
        assert!(ok, "{err}");
    }
    // One delivery to three users: three entries, one body.
    let mut c = common::Raw::connect(&a.addr("lmtp"));
    c.reply();
    c.send(b"LHLO t\r\n");
    c.reply();
    c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<u@example.org>\r\nRCPT TO:<v@example.org>\r\nRCPT TO:<w@example.org>\r\nDATA\r\n");
    for _ in 0..5 {
        assert!(c.reply().starts_with(['2', '3']));
    }
    c.send(b"Subject: to three\r\n\r\none body, three mailboxes\r\n.\r\n");
    for _ in 0..3 {
        assert!(c.reply().starts_with('2'));
    }
    assert!(converged(&[&a, &b], 15), "the delivery did not reach B");
    let out = |n: &Node| common::admin_get(n, "/v1/status")["mirror"]["outgoing"][0].clone();
    let o = out(&a);
    assert_eq!(o["bodies_sent"], 1, "{o}");
    assert_eq!(o["bodies_already_sent"], 2, "{o}");
    // All three references are in one batch: nothing to ask the peer.
    assert_eq!(o["body_queries"], 0, "{o}");
    let body = messages(&b, "w@example.org", "INBOX")[0]["blob"].as_str().unwrap().to_string();
    assert!(common::blob(&b, &body).ends_with(b"one body, three mailboxes\r\n"));

    // A restarts (a new link, which has sent nothing yet) and copies the
    // message: B holds the body, so only the entry travels.
    assert!(a.stop());
    let a = Node::start(&dir.path().join("a"), Some(&dir.path().join("a/tandem.toml")));
    python(
        &a,
        r#"
from imaptest import *
c = connect("u@example.org")
ok(c.create("Kept"))
ok(c.select("INBOX"))
ok(c.copy("1", "Kept"))
"#,
    );
    assert!(converged(&[&a, &b], 15), "the copy did not reach B");
    let o = out(&a);
    assert_eq!(o["bodies_sent"], 0, "a body the peer holds was sent: {o}");
    assert_eq!(o["bodies_held_by_peer"], 1, "{o}");
    assert_eq!(o["body_queries"], 1, "{o}");
    let copy = messages(&b, "u@example.org", "Kept");
    assert_eq!(copy.len(), 1);
    assert_eq!(copy[0]["blob"].as_str().unwrap(), body);
    python(
        &b,
        r#"
from imaptest import *
c = connect("u@example.org")
ok(c.select("Kept"))
r = ok(c.fetch("1", "(BODY.PEEK[TEXT])"))
assert r[0][1] == b"one body, three mailboxes\r\n", r
"#,
    );
    // A new body is sent without asking.
    lmtp_burst_tagged(&a, "v@example.org", 1, "fresh");
    assert!(converged(&[&a, &b], 15));
    let o = out(&a);
    assert_eq!(o["bodies_sent"], 1, "{o}");
    assert_eq!(o["bodies_held_by_peer"], 1, "{o}");
}

/// A peer catching up on large batches takes the bulk path: bodies are
/// written straight to blob files ahead of their entries, and every body
/// arrives intact.
#[test]
fn catch_up_writes_large_batches_of_bodies_once() {
    let (dir, a, b) = converged_pair();
    assert!(b.stop());
    // 400 messages of about 43 KB (17 MB): after a link's first batches
    // (1, 2 and 4 MiB, replication.md section 5.3), batches of 8 MiB, over
    // the 4 MiB bulk bound.
    let mut c = common::Raw::connect(&a.addr("lmtp"));
    c.reply();
    c.send(b"LHLO bulk\r\n");
    c.reply();
    let line = "x".repeat(76);
    for i in 0..400 {
        let mut m = format!("MAIL FROM:<s@x>\r\nRCPT TO:<u@example.org>\r\nDATA\r\nSubject: bulk {i}\r\n\r\n");
        for j in 0..520 {
            m.push_str(&format!("{i:04}{j:04}{line}\r\n"));
        }
        m.push_str(".\r\n");
        c.send(m.as_bytes());
        for _ in 0..4 {
            let r = c.reply();
            assert!(r.starts_with('2') || r.starts_with('3'), "{r}");
        }
    }
    let b = Node::start(&dir.path().join("b"), Some(&dir.path().join("b/tandem.toml")));
    assert!(converged(&[&a, &b], 60), "B did not catch up");
    let log = &common::admin_get(&b, "/v1/status")["log"];
    assert!(log["bulk_flushes"].as_u64().unwrap() > 0, "no batch took the bulk path: {log}");
    assert!(log["bulk_bytes"].as_u64().unwrap() > 4 << 20, "{log}");
    let msgs = messages(&b, "u@example.org", "INBOX");
    assert_eq!(msgs.len(), 400);
    for m in msgs.iter().step_by(37) {
        let hash = m["blob"].as_str().unwrap();
        assert_eq!(common::blob(&b, hash), common::blob(&a, hash), "body {hash} differs");
    }
}
