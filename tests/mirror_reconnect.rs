//! A peer that comes back is dialled at once: its own authenticated link
//! wakes the other node's dialer out of a long reconnect backoff, or out of
//! a connection attempt whose first packets it missed.

mod common;
use common::{digest, free_udp_port, wait_until, write_config, Node};

const SECRET: &str = "correct horse battery staple";

/// A node whose dialer, once failed, would wait 30-60 s before dialling again.
fn start(dir: &std::path::Path, id: &str, port: u16, peer: u16) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let mirror = format!(
        "[mirror]\nlisten = \"127.0.0.1:{port}\"\npeers = [\"127.0.0.1:{peer}\"]\nsecret = \"{SECRET}\"\nreconnect_min_ms = 30000\nreconnect_max_ms = 60000\n"
    );
    let cfg = write_config(dir, id, &mirror);
    Node::start(dir, Some(&cfg))
}

fn converged(a: &Node, b: &Node, secs: u64) -> bool {
    wait_until(secs, || digest(a) == digest(b))
}

#[test]
fn a_returning_peer_gets_the_changes_without_waiting_out_the_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    // A starts alone: its first dial to B fails and it backs off.
    let a = start(&dir.path().join("a"), "node-a", pa, pb);
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    // The dial to the silent port fails after its 5 s answer timeout.
    assert!(
        wait_until(15, || a.cli(&["status"], None).1.contains("disconnected")),
        "A never gave up on B"
    );
    let b = start(&dir.path().join("b"), "node-b", pb, pa);
    // Well inside the 22.5 s that the shortest backoff would wait.
    assert!(converged(&a, &b, 15), "B did not get A's user while A backed off");

    // B goes away; A's link fails and A backs off again.
    assert!(b.stop());
    let mut c = common::Raw::connect(&a.addr("lmtp"));
    c.reply();
    c.send(b"LHLO t\r\n");
    c.reply();
    for i in 0..5 {
        c.send(format!("MAIL FROM:<s@x>\r\nRCPT TO:<u@example.org>\r\nDATA\r\nSubject: while away {i}\r\n\r\nbody\r\n.\r\n").as_bytes());
        for _ in 0..4 {
            let r = c.reply();
            assert!(r.starts_with('2') || r.starts_with('3'), "{r}");
        }
    }
    let b = start(&dir.path().join("b"), "node-b", pb, pa);
    assert!(converged(&a, &b, 15), "the restarted B did not catch up while A backed off");
    assert!(b.stop());
    assert!(a.stop());
}

#[test]
fn a_peer_that_starts_during_a_connection_attempt_is_dialled_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    // B's port holds a socket that reads nothing: A's first packets to it,
    // and QUIC's probes about 1 s and 3 s later, are lost, and its next
    // probe would come after the attempt's 5 s answer timeout.
    let silent = std::net::UdpSocket::bind(("127.0.0.1", pb)).unwrap();
    let a = start(&dir.path().join("a"), "node-a", pa, pb);
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    std::thread::sleep(std::time::Duration::from_millis(3300));
    drop(silent);
    // B comes up while A's attempt waits for an answer. Without a fresh
    // dial that attempt would time out and A would wait out its backoff
    // (at least 22.5 s); B's authenticated link makes A dial again at once.
    // (Should B take longer than the attempt to start, A is in its backoff
    // and is woken from it, as in the test above.)
    let b = start(&dir.path().join("b"), "node-b", pb, pa);
    assert!(converged(&a, &b, 15), "B did not get A's user: A kept waiting on its first attempt");
    assert!(b.stop());
    assert!(a.stop());
}

fn out_link(n: &Node) -> serde_json::Value {
    common::admin_get(n, "/v1/status")["mirror"]["outgoing"][0].clone()
}

/// Master A and slave B in `da` and `db`, converged on 20 messages of one
/// user: A's mirror port, A and B.
fn pair_with_20_messages(da: &std::path::Path, db: &std::path::Path) -> (u16, Node, Node) {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = common::start_mirror(da, "node-a", pa, &[pb], SECRET, "master", "");
    let b = common::start_mirror(db, "node-b", pb, &[pa], SECRET, "slave", "");
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    common::deliver_range(&a, "u@example.org", "before", 0..20);
    assert!(converged(&a, &b, 20), "B did not catch up");
    (pa, a, b)
}

/// A node that restarts starts its link where the peer was known to hold
/// everything (kept in its store), not at the start of its apply order,
/// which at tens of millions of entries took minutes to read through; a
/// peer that comes back holding less than that (its data wiped) is read
/// for from the start.
#[test]
fn a_restarted_node_resumes_its_link_where_the_peer_was() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let (_, a, b) = pair_with_20_messages(&da, &db);
    assert_eq!(out_link(&a)["read_from"], 1);
    let order = common::admin_get(&a, "/v1/status")["log"]["apply_order"].as_u64().unwrap();
    assert!(order > 20);

    assert!(a.stop());
    let a = common::restart(&da);
    assert!(wait_until(15, || out_link(&a)["state"] == "connected"), "{}", out_link(&a));
    assert_eq!(out_link(&a)["read_from"], order + 1, "{}", out_link(&a));
    common::deliver_range(&a, "u@example.org", "after", 0..3);
    assert!(converged(&a, &b, 20), "B did not get what A took after its restart");

    // B comes back empty: it holds less than A's link knew, so it gets all.
    assert!(b.stop());
    std::fs::remove_dir_all(db.join("data")).unwrap();
    let b = common::restart(&db);
    assert!(converged(&a, &b, 30), "the wiped B did not get everything again");
    assert_eq!(out_link(&a)["read_from"], 1, "{}", out_link(&a));
    assert_eq!(common::messages(&b, "u@example.org", "INBOX").len(), 23);
    assert!(a.stop() && b.stop());
}

/// A peer that holds everything this node holds needs none of its apply
/// order, though no resume point was kept for its address (it moved to a
/// new port): the link starts past the apply order at once instead of
/// reading it all, and carries what comes after.
#[test]
fn a_peer_at_a_new_address_that_holds_everything_is_not_read_for() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let (pa, a, b) = pair_with_20_messages(&da, &db);
    let order = common::admin_get(&a, "/v1/status")["log"]["apply_order"].as_u64().unwrap();
    assert!(order > 20);

    assert!(a.stop() && b.stop());
    let pb2 = free_udp_port();
    let a = common::start_mirror(&da, "node-a", pa, &[pb2], SECRET, "master", "");
    let b = common::start_mirror(&db, "node-b", pb2, &[pa], SECRET, "slave", "");
    assert!(wait_until(15, || out_link(&a)["state"] == "connected"), "{}", out_link(&a));
    assert_eq!(out_link(&a)["read_from"], order + 1, "{}", out_link(&a));
    common::deliver_range(&a, "u@example.org", "after", 0..3);
    assert!(converged(&a, &b, 20), "B did not get what A took at its new address");
    assert_eq!(common::messages(&b, "u@example.org", "INBOX").len(), 23);
    assert!(a.stop() && b.stop());
}
