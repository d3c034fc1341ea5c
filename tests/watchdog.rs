//! `tandem watchdog` against a real mirrored pair: a probe delivered over
//! LMTP to one node is read over IMAP on the other, quickly, and removed;
//! with the reading node stopped, or the link between the nodes cut, it
//! fails with CRITICAL within its timeout.

mod common;
use common::{free_udp_port, messages, mirror_section, tandem, wait_until, write_config, Node};
use std::time::Instant;

const SECRET: &str = "correct horse battery staple";
const USER: &str = "watch@example.org";

fn watchdog(lmtp: &str, imap: &str, pw: &std::path::Path, timeout: u64) -> (i32, String, f64) {
    let started = Instant::now();
    let out = tandem()
        .args(["watchdog", "--lmtp", lmtp, "--imap", imap, "--user", USER, "--password-file"])
        .arg(pw)
        .args(["--timeout", &timeout.to_string()])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text, started.elapsed().as_secs_f64())
}

#[test]
fn a_probe_crosses_the_pair_and_a_stopped_peer_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = Node::start(&da, Some(&write_config(&da, "wd-a", &mirror_section(pa, &[pb], SECRET))));
    let b = Node::start(&db, Some(&write_config(&db, "wd-b", &mirror_section(pb, &[pa], SECRET))));
    let (ok, _, err) = a.cli(&["user", "add", USER, "--password-stdin"], Some("probe-pw\n"));
    assert!(ok, "{err}");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "probe-pw\n").unwrap();
    assert!(
        wait_until(30, || b.cli(&["user", "list"], None).1.contains(USER)),
        "the user did not reach B"
    );

    // Healthy: OK, in well under a second, and the probe is gone again.
    let (code, text, _) = watchdog(&a.addr("lmtp"), &b.addr("imap"), &pw, 10);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("OK - "), "{text}");
    let secs: f64 = text.split(" in ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(secs < 1.0, "the probe took {secs} s: {text}");
    eprintln!("healthy pair: {}", text.trim());
    assert!(text.contains("| time="), "no performance data: {text}");
    assert!(
        wait_until(10, || messages(&a, USER, "INBOX").is_empty()
            && messages(&b, USER, "INBOX").is_empty()),
        "the probe was not removed"
    );

    // A wrong password: CRITICAL, naming IMAP.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "nope\n").unwrap();
    let (code, text, _) = watchdog(&a.addr("lmtp"), &b.addr("imap"), &bad, 5);
    assert_eq!(code, 2, "{text}");
    assert!(text.starts_with("CRITICAL - IMAP"), "{text}");
    // No password file: UNKNOWN.
    let (code, text, _) = watchdog(&a.addr("lmtp"), &b.addr("imap"), &dir.path().join("missing"), 5);
    assert_eq!(code, 3, "{text}");

    // B stopped: the probe cannot be read there; CRITICAL within the timeout.
    let b_imap = b.addr("imap");
    assert!(b.stop());
    let (code, text, took) = watchdog(&a.addr("lmtp"), &b_imap, &pw, 3);
    assert_eq!(code, 2, "{text}");
    assert!(text.starts_with("CRITICAL - IMAP"), "{text}");
    assert!(took < 3.0 + 5.0, "took {took} s");

    // A's own IMAP sees the probe, but a node whose link is gone does not:
    // reading on A what is delivered on a third, unlinked node times out.
    let dc = dir.path().join("c");
    std::fs::create_dir_all(&dc).unwrap();
    let c = Node::start(&dc, Some(&write_config(&dc, "wd-c", "")));
    let (ok, _, err) = c.cli(&["user", "add", USER, "--password-stdin"], Some("probe-pw\n"));
    assert!(ok, "{err}");
    let (code, text, took) = watchdog(&c.addr("lmtp"), &a.addr("imap"), &pw, 2);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("did not show up over IMAP") && text.contains("within 2 s"), "{text}");
    assert!((2.0..2.0 + 5.0).contains(&took), "took {took} s");
    assert!(a.stop());
    assert!(c.stop());
}
