//! Log retention with real daemons: pruning waits for every peer's
//! acknowledgement and for the backup's durable position, keeps the views,
//! and a peer that lacks pruned history is refused with a clear reason
//! until it joins by trees: on its own, or by command when
//! `mirror.auto_join` is off.

mod common;
use common::{admin_get, deliver_range, digest, free_udp_port, messages, mirror_section, restart, wait_until, write_config, Node};

const SECRET: &str = "correct horse battery staple";
/// Prune everything acknowledged that is older than a second, keeping only
/// the head, checked five times a second.
const RETENTION: &str = "[retention]\nkeep = \"1s\"\nkeep_entries = 1\ninterval = \"200ms\"\n";

fn origin_of(node: &Node) -> String {
    admin_get(node, "/v1/status")["origin"].as_str().unwrap().to_string()
}

fn pruned_up_to(node: &Node, origin: &str) -> u64 {
    admin_get(node, "/v1/status")["retention"]["pruned_up_to"][origin]
        .as_u64()
        .unwrap_or(0)
}

fn head(node: &Node, origin: &str) -> u64 {
    admin_get(node, "/v1/status")["log"]["heads"][origin].as_u64().unwrap()
}

/// A raw HTTP/1.0 GET on the node's metrics listener: the body.
fn metrics_get(node: &Node, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(node.addr("metrics")).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{path}: {head}");
    body.to_string()
}

/// Mirror ports and data dirs for nodes A and B under `dir`.
fn pair(dir: &std::path::Path) -> (u16, u16, std::path::PathBuf, std::path::PathBuf) {
    let (da, db) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    (free_udp_port(), free_udp_port(), da, db)
}

/// Start A (its mirror section followed by `a_extra`) and B mirroring
/// each other, with the user u@example.org added on A.
fn start_pair((da, pa): (&std::path::Path, u16), (db, pb): (&std::path::Path, u16), a_extra: &str) -> (Node, Node) {
    let ca = write_config(da, "node-a", &format!("{}{a_extra}", mirror_section(pa, &[pb], SECRET)));
    let cb = write_config(db, "node-b", &mirror_section(pb, &[pa], SECRET));
    let a = Node::start(da, Some(&ca));
    let b = Node::start(db, Some(&cb));
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    (a, b)
}

fn converged(a: &Node, b: &Node, secs: u64) -> bool {
    wait_until(secs, || digest(a) == digest(b))
}

#[test]
fn pruning_waits_for_a_stopped_peer_which_then_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, da, db) = pair(dir.path());
    let (a, b) = start_pair((&da, pa), (&db, pb), RETENTION);
    deliver_range(&a, "u@example.org", "early", 0..10);
    assert!(converged(&a, &b, 20));
    let origin = origin_of(&a);
    let acked_before_stop = head(&a, &origin);
    assert!(wait_until(20, || admin_get(&a, "/v1/status")["mirror"]["outgoing"][0]["acked"]
        [&origin]
        .as_u64()
        == Some(acked_before_stop)));
    assert!(b.stop());

    // B is down: what it acknowledged may go (once older than a second),
    // nothing after it.
    deliver_range(&a, "u@example.org", "late", 0..10);
    let head_a = head(&a, &origin);
    assert!(head_a > acked_before_stop);
    assert!(
        wait_until(20, || pruned_up_to(&a, &origin) >= acked_before_stop - 1),
        "A never pruned what B acknowledged: {}",
        admin_get(&a, "/v1/status")["retention"]
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let st = admin_get(&a, "/v1/status");
    let acked = st["mirror"]["outgoing"][0]["acked"][&origin].as_u64().unwrap();
    assert_eq!(acked, acked_before_stop);
    let pruned = st["retention"]["pruned_up_to"][&origin].as_u64().unwrap();
    assert!(pruned <= acked, "pruned up to {pruned}, past B's acknowledgement {acked}");
    let why = st["retention"]["held_back"][&origin].as_str().unwrap().to_string();
    assert!(
        why.contains(&format!("127.0.0.1:{pb}")) && why.contains("acknowledged only up to"),
        "{why}"
    );
    // The views keep every message; `tandem status` says what holds pruning.
    assert_eq!(messages(&a, "u@example.org", "INBOX").len(), 20);
    let (ok, out, err) = a.cli(&["status"], None);
    assert!(ok, "{err}");
    assert!(out.contains("pruned up to") && out.contains("held back"), "{out}");

    // B comes back: it catches up from the log, and pruning moves on.
    let b = restart(&db);
    assert!(converged(&a, &b, 30));
    assert_eq!(messages(&b, "u@example.org", "INBOX").len(), 20);
    assert!(
        wait_until(20, || pruned_up_to(&a, &origin) == head_a - 1),
        "pruning did not move on: {}",
        admin_get(&a, "/v1/status")["retention"]
    );
    let m = messages(&a, "u@example.org", "INBOX");
    assert_eq!(m.len(), 20);
    assert!(a.stop());
    assert!(b.stop());
}

#[test]
fn pruning_waits_for_the_backup_position() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup");
    // A backup every ten minutes: after the run at start, nothing more is
    // backed up until asked.
    let cfg = write_config(
        dir.path(),
        "node-b",
        &format!(
            "[backup]\nto = \"{}\"\ninterval_ms = 600000\n[metrics]\nlisten = \"127.0.0.1:0\"\n{RETENTION}",
            backup.display()
        ),
    );
    let mut node = Node::start(dir.path(), Some(&cfg));
    let bound: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("data/listen.json")).unwrap()).unwrap();
    node.listeners
        .insert("metrics".into(), bound["metrics"].as_str().unwrap().to_string());
    let (ok, _, err) = node.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    deliver_range(&node, "u@example.org", "m", 0..8);
    let origin = origin_of(&node);
    let head = head(&node, &origin);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let st = admin_get(&node, "/v1/status");
    let position = st["backup"][0]["position"].as_u64().unwrap();
    assert!(position < head, "the backup ran after the deliveries: {}", st["backup"]);
    // One origin: its seqs are its apply-order positions.
    let pruned = st["retention"]["pruned_up_to"][&origin].as_u64().unwrap_or(0);
    assert!(pruned <= position, "pruned up to {pruned}, past the backup's position {position}");
    let why = st["retention"]["held_back"][&origin].as_str().unwrap().to_string();
    assert!(why.contains("backup"), "{why}");

    // Once the backup has it, it may go. The continuous job's run is open
    // (until ten minutes after the last one closed): a one-shot run to the
    // same target closes it at once instead of waiting for it.
    let asked = std::time::Instant::now();
    let (ok, out, err) = node.cli(&["backup", "--to", backup.to_str().unwrap()], None);
    assert!(ok, "{out} {err}");
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(60),
        "the one-shot backup waited {:?} for the open run",
        asked.elapsed()
    );
    assert!(
        wait_until(20, || pruned_up_to(&node, &origin) == head - 1),
        "{}",
        admin_get(&node, "/v1/status")["retention"]
    );
    assert_eq!(messages(&node, "u@example.org", "INBOX").len(), 8);
    // Metrics and the status page say the same.
    // (The base is raised before the batch is written, the counter after.)
    assert!(wait_until(10, || metrics_get(&node, "/metrics")
        .contains(&format!("tandem_log_pruned_entries_total {}", head - 1))));
    let m = metrics_get(&node, "/metrics");
    assert!(
        m.contains(&format!("tandem_log_pruned_seq{{origin=\"{origin}\"}} {}", head - 1)),
        "{m}"
    );
    assert!(
        m.contains(&format!("tandem_log_pruned_entries_total {}", head - 1)),
        "{m}\n{}",
        admin_get(&node, "/v1/status")["retention"]
    );
    let page = metrics_get(&node, "/status");
    assert!(
        page.contains("Log retention") && page.contains(&format!("pruned up to seq {}", head - 1)),
        "{page}"
    );
    // Bodies stay: every message still reads.
    for m in messages(&node, "u@example.org", "INBOX") {
        let hash = m["blob"].as_str().unwrap_or_else(|| panic!("no blob in {m}"));
        assert!(String::from_utf8_lossy(&common::blob(&node, hash)).contains("body"), "{m}");
    }
    // A point-in-time restore needs the whole log: refused, saying why.
    let (ok, out, err) = node.cli(&["restore", "--user", "u@example.org", "--at", "2030-01-01T00:00:00Z"], None);
    assert!(!ok, "{out}");
    assert!(err.contains("pruned"), "{err}");
    // The backup keeps going from the pruned log.
    deliver_range(&node, "u@example.org", "n", 0..2);
    let (ok, out, err) = node.cli(&["backup", "--to", backup.to_str().unwrap()], None);
    assert!(ok, "{out} {err}");
    let st = admin_get(&node, "/v1/status");
    assert_eq!(
        st["backup"][0]["position"].as_u64().unwrap(),
        st["log"]["apply_order"].as_u64().unwrap()
    );
    // A new backup of the pruned log cannot start (it would need a
    // snapshot of the views at the base, which backups do not have): it
    // says why, where, and what avoids it, and writes no manifest.
    let fresh = dir.path().join("fresh");
    let (ok, out, err) = node.cli(&["backup", "--to", fresh.to_str().unwrap()], None);
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!("holds origin {origin} up to seq 0, but the log here is pruned up to seq"))
            && err.contains("cannot be continued from this log")
            && err.contains("`[backup] to` makes pruning wait for it"),
        "{err}"
    );
    let manifests = std::fs::read_dir(fresh.join("manifests"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".man"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(manifests, 0, "a refused backup wrote a manifest");
    assert!(node.stop());
}

#[test]
fn a_peer_behind_the_pruned_point_is_refused_then_joins_by_trees() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, da, db) = pair(dir.path());
    // A alone at first: nothing but the window holds its pruning.
    let ca = write_config(&da, "node-a", RETENTION);
    let a = Node::start(&da, Some(&ca));
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    deliver_range(&a, "u@example.org", "m", 0..5);
    let origin = origin_of(&a);
    let head_a = head(&a, &origin);
    assert!(wait_until(20, || pruned_up_to(&a, &origin) == head_a - 1));
    assert!(a.stop());

    // Then mirrored with an empty B, which lacks the pruned entries.
    write_config(&da, "node-a", &format!("{}{RETENTION}", mirror_section(pa, &[pb], SECRET)));
    let a = restart(&da);
    // B joins only by command here.
    let cb = write_config(&db, "node-b", &format!("{}auto_join = false\n", mirror_section(pb, &[pa], SECRET)));
    let b = Node::start(&db, Some(&cb));
    assert!(
        wait_until(20, || {
            let l = &admin_get(&a, "/v1/status")["mirror"]["outgoing"][0];
            l["state"] == "refused" && l["behind_pruned"].is_string()
        }),
        "{}",
        admin_get(&a, "/v1/status")["mirror"]
    );
    let l = admin_get(&a, "/v1/status")["mirror"]["outgoing"][0].clone();
    let reason = l["behind_pruned"].as_str().unwrap();
    assert!(
        reason.contains(&format!("origin {origin}")) && reason.contains("pruned up to seq") && reason.contains("join it by trees"),
        "{reason}"
    );
    assert!(l["last_error"].as_str().unwrap().contains("join it by trees"), "{l}");
    let (ok, out, _) = a.cli(&["status"], None);
    assert!(ok && out.contains("NEEDS JOIN BY TREES"), "{out}");
    // Nothing was sent that B could not chain: it holds nothing of A, and
    // its link from A never failed on a batch.
    let sb = admin_get(&b, "/v1/status");
    assert!(sb["log"]["heads"].get(&origin).is_none(), "{}", sb["log"]);
    assert_eq!(sb["mirror"]["incoming"]["node-a"]["failed"].as_u64().unwrap_or(0), 0);

    // B joins by trees: it takes A's state, and A's base as the start of
    // its log of A's origin; A's link then comes up and carries on.
    let (ok, out, err) = b.cli(&["resync", "--from-peer", "--json", "--peer", &format!("127.0.0.1:{pa}")], None);
    assert!(ok, "{out} {err}");
    let sb = admin_get(&b, "/v1/status");
    assert_eq!(
        sb["retention"]["pruned_up_to"][&origin].as_u64(),
        Some(head_a - 1),
        "{}",
        sb["retention"]
    );
    assert!(
        wait_until(30, || {
            let l = &admin_get(&a, "/v1/status")["mirror"]["outgoing"][0];
            l["state"] == "connected" && l["behind_pruned"].is_null()
        }),
        "{}",
        admin_get(&a, "/v1/status")["mirror"]
    );
    assert!(converged(&a, &b, 30));
    assert_eq!(messages(&b, "u@example.org", "INBOX").len(), 5);
    deliver_range(&a, "u@example.org", "after", 0..2);
    assert!(wait_until(30, || messages(&b, "u@example.org", "INBOX").len() == 7));
    assert!(converged(&a, &b, 30));
    let sb = admin_get(&b, "/v1/status");
    assert_eq!(sb["log"]["heads"][&origin].as_u64(), Some(head(&a, &origin)));
    assert_eq!(sb["conflicts"]["kept_aside"], 0, "{}", sb["conflicts"]);
    assert!(a.stop());
    assert!(b.stop());
    // B's log, starting at A's base, opens and verifies.
    let b = restart(&db);
    assert_eq!(messages(&b, "u@example.org", "INBOX").len(), 7);
    assert!(b.stop());
}

/// A pruned log, its peer's log with a data dir of its own: A.
fn pruned_node_a(da: &std::path::Path, pa: u16, pb: u16) -> (Node, String, u64) {
    // A alone at first: nothing but the window holds its pruning.
    let ca = write_config(da, "node-a", RETENTION);
    let a = Node::start(da, Some(&ca));
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    deliver_range(&a, "u@example.org", "m", 0..6);
    let origin = origin_of(&a);
    let head_a = head(&a, &origin);
    assert!(wait_until(20, || pruned_up_to(&a, &origin) == head_a - 1));
    assert!(a.stop());
    // Then mirrored with B, which lacks the pruned entries.
    write_config(da, "node-a", &format!("{}{RETENTION}", mirror_section(pa, &[pb], SECRET)));
    (restart(da), origin, head_a)
}

#[test]
fn an_empty_peer_behind_the_pruned_point_joins_by_trees_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, da, db) = pair(dir.path());
    let (a, origin, head_a) = pruned_node_a(&da, pa, pb);
    // B: an empty data dir, default settings (auto_join on). Nobody runs
    // a command: A refuses B's link, B reads A's bases, finds A pruned
    // past what it holds, joins by trees and takes the base.
    let cb = write_config(&db, "node-b", &mirror_section(pb, &[pa], SECRET));
    let b = Node::start(&db, Some(&cb));
    assert!(
        wait_until(60, || {
            let l = &admin_get(&a, "/v1/status")["mirror"]["outgoing"][0];
            l["state"] == "connected" && l["behind_pruned"].is_null() && digest(&a) == digest(&b)
        }),
        "A: {}\nB: {}",
        admin_get(&a, "/v1/status")["mirror"],
        admin_get(&b, "/v1/status")["mirror"]
    );
    let sb = admin_get(&b, "/v1/status");
    let join = &sb["mirror"]["join"];
    assert_eq!(join["auto"], true, "{join}");
    assert_eq!(join["joins"], 1, "{join}");
    assert_eq!(join["failures"], 0, "{join}");
    let last = &join["last"];
    assert!(last["error"].is_null(), "{join}");
    assert_eq!(last["node"], "node-a", "{join}");
    assert_eq!(last["behind"][&origin]["held"], 0, "{join}");
    assert_eq!(last["behind"][&origin]["base"], head_a - 1, "{join}");
    assert_eq!(sb["resync"]["last"]["trigger"], "join", "{}", sb["resync"]);
    // B's log of A's origin starts at A's base.
    assert_eq!(
        sb["retention"]["pruned_up_to"][&origin].as_u64(),
        Some(head_a - 1),
        "{}",
        sb["retention"]
    );
    // A was refused nothing and is ahead of nobody: it checked no one.
    assert_eq!(admin_get(&a, "/v1/status")["mirror"]["join"]["checks"], 0);
    // Every message is on B and readable.
    let mb = messages(&b, "u@example.org", "INBOX");
    assert_eq!(mb.len(), 6);
    for m in &mb {
        let hash = m["blob"].as_str().unwrap_or_else(|| panic!("no blob in {m}"));
        assert!(String::from_utf8_lossy(&common::blob(&b, hash)).contains("body"), "{m}");
    }
    let (ok, out, err) = b.cli(&["status"], None);
    assert!(ok && out.contains("join by trees") && out.contains("joined"), "{out}{err}");

    // The mirror carries on both ways from there.
    deliver_range(&a, "u@example.org", "after-a", 0..2);
    deliver_range(&b, "u@example.org", "after-b", 0..2);
    assert!(wait_until(30, || messages(&a, "u@example.org", "INBOX").len() == 10
        && messages(&b, "u@example.org", "INBOX").len() == 10
        && digest(&a) == digest(&b)));
    let sb = admin_get(&b, "/v1/status");
    assert_eq!(sb["log"]["heads"][&origin].as_u64(), Some(head(&a, &origin)));
    assert_eq!(sb["conflicts"]["kept_aside"], 0, "{}", sb["conflicts"]);
    assert_eq!(sb["mirror"]["join"]["joins"], 1, "joined once only: {}", sb["mirror"]["join"]);
    assert!(a.stop());
    assert!(b.stop());
}

#[test]
fn a_restarted_node_prunes_what_a_stopped_peer_acknowledged_before_and_no_further() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, da, db) = pair(dir.path());
    // A keeps everything younger than an hour at first: it prunes nothing,
    // but records what B acknowledges.
    let keep_all = "[retention]\nkeep = \"1h\"\nkeep_entries = 1\ninterval = \"200ms\"\n";
    let (a, b) = start_pair((&da, pa), (&db, pb), keep_all);
    deliver_range(&a, "u@example.org", "early", 0..8);
    assert!(converged(&a, &b, 20));
    let origin = origin_of(&a);
    let acked = head(&a, &origin);
    let peer = format!("127.0.0.1:{pb}");
    assert!(
        wait_until(20, || admin_get(&a, "/v1/status")["retention"]["recorded_acks"][&peer][&origin]
            .as_u64()
            == Some(acked)),
        "{}",
        admin_get(&a, "/v1/status")["retention"]
    );
    assert_eq!(pruned_up_to(&a, &origin), 0);
    assert!(b.stop());
    assert!(a.stop());

    // A restarts with a window of a second while B stays down: it prunes
    // what B acknowledged before, without waiting for B, and nothing after.
    write_config(&da, "node-a", &format!("{}{RETENTION}", mirror_section(pa, &[pb], SECRET)));
    let a = restart(&da);
    deliver_range(&a, "u@example.org", "late", 0..6);
    assert!(head(&a, &origin) > acked + 1);
    assert!(
        wait_until(20, || pruned_up_to(&a, &origin) == acked),
        "A did not prune what B acknowledged before the restart: {}",
        admin_get(&a, "/v1/status")["retention"]
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let st = admin_get(&a, "/v1/status");
    assert_eq!(
        st["retention"]["pruned_up_to"][&origin].as_u64(),
        Some(acked),
        "{}",
        st["retention"]
    );
    assert!(
        st["mirror"]["outgoing"][0]["acked"].as_object().is_none_or(|m| m.is_empty()),
        "{}",
        st["mirror"]
    );
    let why = st["retention"]["held_back"][&origin].as_str().unwrap().to_string();
    assert!(
        why.contains(&peer) && why.contains(&format!("up to seq {acked}")) && why.contains("recorded before this node started"),
        "{why}"
    );

    // B comes back and catches up from the log; pruning moves on.
    let b = restart(&db);
    assert!(converged(&a, &b, 30));
    assert_eq!(messages(&b, "u@example.org", "INBOX").len(), 14);
    let head_a = head(&a, &origin);
    assert!(
        wait_until(20, || pruned_up_to(&a, &origin) == head_a - 1),
        "{}",
        admin_get(&a, "/v1/status")["retention"]
    );
    assert_eq!(admin_get(&a, "/v1/status")["mirror"]["join"]["joins"], 0);
    assert_eq!(admin_get(&b, "/v1/status")["mirror"]["join"]["joins"], 0);
    assert!(a.stop());
    assert!(b.stop());
}

#[test]
fn a_returning_peer_left_behind_the_pruned_point_joins_on_its_own_and_keeps_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, da, db) = pair(dir.path());
    let (a, b) = start_pair((&da, pa), (&db, pb), RETENTION);
    deliver_range(&a, "u@example.org", "early", 0..4);
    deliver_range(&b, "u@example.org", "from-b", 0..2);
    assert!(converged(&a, &b, 20));
    let origin_a = origin_of(&a);
    let origin_b = origin_of(&b);
    let held_by_b = head(&b, &origin_a);
    assert!(b.stop());
    assert!(a.stop());

    // B is taken out of A's peers while it is away: A prunes past it.
    write_config(&da, "node-a", &format!("{}{RETENTION}", mirror_section(pa, &[], SECRET)));
    let a = restart(&da);
    deliver_range(&a, "u@example.org", "late", 0..4);
    let head_a = head(&a, &origin_a);
    assert!(wait_until(20, || pruned_up_to(&a, &origin_a) == head_a - 1));
    assert!(head_a - 1 > held_by_b);
    assert!(a.stop());

    // Both back, B in A's peers again: A refuses B, B joins on its own,
    // taking A's base over the part of A's log it held.
    write_config(&da, "node-a", &format!("{}{RETENTION}", mirror_section(pa, &[pb], SECRET)));
    let a = restart(&da);
    let b = restart(&db);
    assert!(
        wait_until(60, || {
            let l = &admin_get(&a, "/v1/status")["mirror"]["outgoing"][0];
            l["state"] == "connected" && digest(&a) == digest(&b)
        }),
        "A: {}\nB: {}",
        admin_get(&a, "/v1/status")["mirror"],
        admin_get(&b, "/v1/status")["mirror"]
    );
    let sb = admin_get(&b, "/v1/status");
    let join = &sb["mirror"]["join"];
    assert_eq!(join["joins"], 1, "{join}");
    assert_eq!(join["last"]["behind"][&origin_a]["held"], held_by_b, "{join}");
    assert!(join["last"]["error"].is_null(), "{join}");
    assert_eq!(
        sb["retention"]["pruned_up_to"][&origin_a].as_u64(),
        Some(head_a - 1),
        "{}",
        sb["retention"]
    );
    // B's own history is whole, and A still holds it.
    assert!(sb["retention"]["pruned_up_to"].get(&origin_b).is_none(), "{}", sb["retention"]);
    assert_eq!(messages(&a, "u@example.org", "INBOX").len(), 10);
    assert_eq!(messages(&b, "u@example.org", "INBOX").len(), 10);
    assert_eq!(sb["conflicts"]["kept_aside"], 0, "{}", sb["conflicts"]);
    assert!(a.stop());
    assert!(b.stop());
    // B's log, held from A's base on, opens and verifies.
    let b = restart(&db);
    assert_eq!(messages(&b, "u@example.org", "INBOX").len(), 10);
    assert!(b.stop());
}
