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

/// `promtool check metrics` on an exposition (.ci/setup installs it).
fn promtool(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed: .ci/setup installs it");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}\n{text}");
}

/// GET /metrics from the watchdog's listener: (status code, body).
fn scrape(addr: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET /metrics HTTP/1.0\r\n{auth}\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
}

/// The value of the sample line starting with `series ` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_repeating_watchdog_serves_its_last_result_as_metrics() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), Some(&write_config(dir.path(), "wd-m", "")));
    let (ok, _, err) = node.cli(&["user", "add", USER, "--password-stdin"], Some("probe-pw\n"));
    assert!(ok, "{err}");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "probe-pw\n").unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "wd-token-0123456789\n").unwrap();
    let mut wd = tandem()
        .args([
            "watchdog",
            "--lmtp",
            &node.addr("lmtp"),
            "--imap",
            &node.addr("imap"),
            "--user",
            USER,
        ])
        .arg("--password-file")
        .arg(&pw)
        .args([
            "--timeout",
            "2",
            "--every",
            "1s",
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-token-file",
        ])
        .arg(&token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(wd.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("tandem watchdog: metrics listening on http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no listener line: {line:?}"))
        .to_string();
    std::thread::spawn(move || for _ in stderr.lines() {});
    assert_eq!(scrape(&addr, None).0, 401, "no token");
    let get = || {
        let (code, body) = scrape(&addr, Some("wd-token-0123456789"));
        assert_eq!(code, 200, "{body}");
        body
    };
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    // The node up: OK checks, the last success recent, the probe quick.
    assert!(
        wait_until(20, || sample(&get(), "tandem_watchdog_checks_total{status=\"ok\"}").unwrap_or(0.0)
            >= 2.0),
        "{}",
        get()
    );
    let text = get();
    promtool(&text);
    assert_eq!(sample(&text, "tandem_watchdog_last_status"), Some(0.0), "{text}");
    let success = sample(&text, "tandem_watchdog_last_success_timestamp_seconds").unwrap();
    assert!(success >= started && success < started + 30.0, "{text}");
    let took = sample(&text, "tandem_watchdog_last_duration_seconds").unwrap();
    assert!(took > 0.0 && took < 2.0, "{text}");

    // The node stopped: CRITICAL, and the last success stays where it was.
    assert!(node.stop());
    assert!(
        wait_until(20, || sample(&get(), "tandem_watchdog_last_status") == Some(2.0)),
        "{}",
        get()
    );
    let text = get();
    promtool(&text);
    assert!(sample(&text, "tandem_watchdog_checks_total{status=\"critical\"}").unwrap() >= 1.0);
    let last_success = sample(&text, "tandem_watchdog_last_success_timestamp_seconds").unwrap();
    let last_run = sample(&text, "tandem_watchdog_last_run_timestamp_seconds").unwrap();
    assert!(last_success >= success && last_run > last_success, "{text}");
    let _ = wd.kill();
    let _ = wd.wait();
}
