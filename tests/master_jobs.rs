//! The master-only job (split-brain conflict resolution) runs where the
//! role in the log says master, and moves with `tandem promote` without a
//! restart: a slave that sees a UID collision keeps it pending while the
//! master cannot see it, and resolves it itself once promoted.

mod common;
use common::{free_udp_port, mirror_section, wait_until, write_config, Node};

const SECRET: &str = "correct horse battery staple";
const USER: &str = "u@example.org";

fn deliver(node: &Node, tag: &str) {
    let mut c = common::Raw::connect(&node.addr("lmtp"));
    c.reply();
    c.send(b"LHLO t\r\n");
    c.reply();
    c.send(format!("MAIL FROM:<s@x>\r\nRCPT TO:<{USER}>\r\nDATA\r\n").as_bytes());
    for _ in 0..3 {
        let r = c.reply();
        assert!(r.starts_with('2') || r.starts_with('3'), "{r}");
    }
    c.send(format!("Subject: {tag}\r\nMessage-ID: <{tag}@t>\r\n\r\nbody\r\n.\r\n").as_bytes());
    let r = c.reply();
    assert!(r.starts_with("250"), "delivery {tag}: {r}");
}

fn conflicts(node: &Node) -> serde_json::Value {
    common::admin_get(node, "/v1/status")["conflicts"].clone()
}

#[test]
fn a_collision_waits_on_a_slave_and_its_promotion_resolves_it() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let cfg_a = write_config(&da, "node-a", &mirror_section(pa, &[pb], SECRET));
    let slave = |peers: &[u16]| format!("{}mode = \"slave\"\n", mirror_section(pb, peers, SECRET));
    let cfg_b = write_config(&db, "node-b", &slave(&[pa]));
    let a = Node::start(&da, Some(&cfg_a));
    let b = Node::start(&db, Some(&cfg_b));
    let (ok, _, err) = a.cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    deliver(&a, "before");
    assert!(
        wait_until(20, || common::digest(&a) == common::digest(&b)),
        "the pair did not converge"
    );

    // A cut: each side takes a message as UID 2 without the other.
    assert!(a.stop());
    deliver(&b, "on-b");
    assert!(b.stop());
    let a = Node::start(&da, Some(&cfg_a));
    deliver(&a, "on-a");

    // B comes back dialling nobody: A's link brings A's UID 2 to B, but
    // B's UID 2 never reaches A, so only B sees the collision, and B is a
    // slave.
    let cfg_b = write_config(&db, "node-b", &slave(&[]));
    let b = Node::start(&db, Some(&cfg_b));
    assert!(
        wait_until(20, || conflicts(&b)["uid_collisions"].as_u64().unwrap_or(0) > 0),
        "B did not see the collision: {}",
        conflicts(&b)
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let c = conflicts(&b);
    assert!(c["uid_collisions"].as_u64().unwrap() > 0, "a slave resolved a collision: {c}");
    assert_eq!(c["resolved"], 0, "{c}");
    assert_eq!(conflicts(&a)["uid_collisions"], 0, "A never saw B's message");

    // Promoted, B runs the job at once, without a restart.
    let (ok, out, err) = b.cli(&["promote"], None);
    assert!(ok && out.contains("promoted: master under epoch 1"), "{out} {err}");
    assert!(
        wait_until(20, || {
            let c = conflicts(&b);
            c["uid_collisions"] == 0 && c["kept_aside"] == 0 && c["resolved"].as_u64().unwrap_or(0) > 0
        }),
        "the promoted node did not resolve the collision: {}",
        conflicts(&b)
    );
    let (ok, out, err) = b.cli(&["conflicts", "--json"], None);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let origin_b = common::admin_get(&b, "/v1/status")["origin"].as_str().unwrap().to_string();
    let moved = report["resolved"].as_array().unwrap();
    assert!(!moved.is_empty(), "{out}");
    for m in moved {
        let by = m["resolved_by"].as_str().unwrap();
        assert!(by.starts_with(&format!("{origin_b}:")), "resolved by {by}, not by B ({origin_b})");
    }
    // Both messages are in B's INBOX, each once.
    let subjects: Vec<String> = common::messages(&b, USER, "INBOX")
        .iter()
        .map(|m| {
            let raw = String::from_utf8_lossy(&common::blob(&b, m["blob"].as_str().unwrap())).into_owned();
            raw.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for want in ["before", "on-a", "on-b"] {
        assert_eq!(subjects.iter().filter(|s| *s == want).count(), 1, "{want} in {subjects:?}");
    }
    assert!(a.stop() && b.stop());
}
