//! The `/metrics` listener of real daemons: Prometheus text that
//! `promtool check metrics` accepts, the numbers a pair under load must
//! show, and the 404/401 answers.

mod common;
use common::{free_udp_port, mirror_section, wait_until, write_config, Node, Raw};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

const SECRET: &str = "correct horse battery staple";
const TOKEN: &str = "scrape-token-0123456789";

/// A `[metrics]` section on an ephemeral port with a token file in `dir`.
fn metrics_section(dir: &std::path::Path) -> String {
    let f = dir.join("metrics.token");
    std::fs::write(&f, format!("  {TOKEN}\n")).unwrap();
    format!("[metrics]\nlisten = \"127.0.0.1:0\"\nbearer_token_file = \"{}\"\n", f.display())
}

fn start(dir: &std::path::Path, id: &str, extra: &str) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = write_config(dir, id, &format!("{}{extra}", metrics_section(dir)));
    let mut node = Node::start(dir, Some(&cfg));
    // The listeners the node bound, as it wrote them down.
    let bound: BTreeMap<String, String> = serde_json::from_str(&std::fs::read_to_string(dir.join("data/listen.json")).unwrap()).unwrap();
    let m = bound.get("metrics").unwrap_or_else(|| panic!("no metrics listener: {bound:?}"));
    node.listeners.insert("metrics".into(), m.clone());
    node
}

/// A raw HTTP/1.0 GET: (status code, head, body).
fn get(node: &Node, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(node.addr("metrics")).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\n{auth}\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_string(), body.to_string())
}

fn scrape(node: &Node) -> String {
    let (code, head, body) = get(node, "/metrics", Some(TOKEN));
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// `promtool check metrics` on the exposition (Debian's prometheus package;
/// .ci/setup installs it).
fn promtool(text: &str) {
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
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{said}\n--- exposition:\n{text}"
    );
    // promtool exits 0 on lint warnings too; there must be none.
    assert!(said.trim().is_empty(), "promtool: {said}");
}

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A strict reading of the text format: every sample belongs to a family
/// declared once by HELP then TYPE before it, label values are properly
/// quoted, histogram buckets are cumulative and end in `+Inf` = `_count`.
fn parse(text: &str) -> Vec<Sample> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(!helped.contains(&name), "HELP twice for {name}");
            helped.push(name);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert_eq!(
                helped.last().map(String::as_str),
                Some(name),
                "TYPE without HELP just before: {line}"
            );
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "TYPE twice: {line}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && name.starts_with("tandem_"),
            "{line}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (k, after) = r.split_once("=\"").unwrap_or_else(|| panic!("label in {line}"));
                let mut v = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => v.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => v.push(c),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => v.push(c),
                        None => panic!("unterminated label value in {line}"),
                    }
                };
                labels.insert(k.to_string(), v);
                r = &after[end + 1..];
                r = r.strip_prefix(',').unwrap_or(r);
            }
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            .unwrap_or(name);
        let kind = types.get(family).unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
        if kind == "counter" {
            assert!(name.ends_with("_total") && value >= 0.0, "{line}");
        }
        out.push((name.to_string(), labels, value));
    }
    // Histograms: per label set, cumulative buckets ending in +Inf = count.
    for (fam, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let bucket = format!("{fam}_bucket");
        let mut series: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        for (n, l, v) in &out {
            if *n == bucket {
                let mut key = l.clone();
                let le = key.remove("le").expect("bucket without le");
                series.entry(format!("{key:?}")).or_default().push((le, *v));
            }
        }
        for (key, b) in series {
            assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "{fam}{key}: buckets not cumulative {b:?}");
            assert_eq!(b.last().unwrap().0, "+Inf", "{fam}{key}");
            let count = out
                .iter()
                .find(|(n, l, _)| *n == format!("{fam}_count") && format!("{l:?}") == key)
                .unwrap_or_else(|| panic!("{fam}{key}: no _count"))
                .2;
            assert_eq!(b.last().unwrap().1, count, "{fam}{key}: +Inf bucket is not the count");
        }
    }
    out
}

/// The value of `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.2)
}

fn deliver(node: &Node, rcpt: &str, n: usize, tag: &str) {
    let mut c = Raw::connect(&node.addr("lmtp"));
    c.reply();
    c.send(b"LHLO metrics\r\n");
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
    c.send(b"QUIT\r\n");
    c.reply();
}

/// A few IMAP commands: LOGIN, SELECT, NOOP, LOGOUT.
fn imap_session(node: &Node, user: &str) {
    let mut c = Raw::connect(&node.addr("imap"));
    c.line();
    for (tag, cmd) in [
        ("a", format!("LOGIN {user} secret")),
        ("b", "SELECT INBOX".into()),
        ("c", "NOOP".into()),
        ("d", "LOGOUT".into()),
    ] {
        c.send(format!("{tag} {cmd}\r\n").as_bytes());
        loop {
            let l = c.line();
            assert!(!l.is_empty(), "connection closed during {cmd}");
            if l.starts_with(&format!("{tag} ")) {
                assert!(l.starts_with(&format!("{tag} OK")), "{cmd}: {l}");
                break;
            }
        }
    }
}

#[test]
fn a_live_node_exposes_metrics_promtool_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), "node-m", "");
    let (ok, _, err) = node.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    deliver(&node, "u@example.org", 3, "m");
    {
        let mut c = Raw::connect(&node.addr("lmtp"));
        c.reply();
        c.send(b"LHLO metrics\r\nMAIL FROM:<s@x>\r\nRCPT TO:<nobody@example.org>\r\nQUIT\r\n");
        let r = format!("{}{}{}", c.reply(), c.reply(), c.reply());
        assert!(r.contains("550"), "{r}");
    }
    imap_session(&node, "u@example.org");

    let text = scrape(&node);
    promtool(&text);
    let s = parse(&text);
    assert_eq!(value(&s, "tandem_lmtp_delivered_total", &[]), Some(3.0), "{text}");
    assert_eq!(value(&s, "tandem_lmtp_rejected_unknown_user_total", &[]), Some(1.0));
    assert_eq!(value(&s, "tandem_lmtp_transaction_seconds_count", &[]), Some(3.0), "{text}");
    // The scrape is on another listener: no LMTP connection is open now,
    // and it is a gauge, not a counter.
    assert_eq!(value(&s, "tandem_lmtp_connections_open", &[]), Some(0.0));
    assert!(text.contains("# TYPE tandem_lmtp_connections_open gauge\n"));
    assert!(value(&s, "tandem_imap_command_seconds_count", &[]).unwrap() >= 3.0, "{text}");
    assert_eq!(value(&s, "tandem_imap_logins_total", &[]), Some(1.0));
    let fsyncs = value(&s, "tandem_log_fsyncs_total", &[]).unwrap();
    assert!(fsyncs >= 4.0, "user add and three deliveries: {fsyncs}");
    // Every durable group before the scrape is timed (the last one may be
    // reported just after its caller was answered).
    let timed = value(&s, "tandem_log_fsync_seconds_count", &[]).unwrap();
    assert!(timed >= fsyncs - 1.0 && timed <= fsyncs, "{timed} of {fsyncs}");
    assert_eq!(value(&s, "tandem_log_group_commit_seconds_count", &[]), Some(timed));
    assert_eq!(value(&s, "tandem_users", &[]), Some(1.0));
    assert_eq!(value(&s, "tandem_build_info", &[("node", "node-m")]), Some(1.0));

    // `tandem status --json` keeps its fields.
    let st = common::admin_get(&node, "/v1/status");
    assert_eq!(st["lmtp"]["delivered"], 3, "{st}");
    assert_eq!(st["lmtp"]["in_flight"], 0, "{st}");
    assert_eq!(st["imap"]["logins"], 1, "{st}");
    // The text shows each LMTP refusal on the LMTP lines, none under IMAP.
    let (ok, out, err) = node.cli(&["status"], None);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("lmtp ")).expect("lmtp line");
    assert!(
        lines[at + 1].starts_with("  rejected  unknown user 1   no mailbox 0   oversize 0"),
        "{out}"
    );
    let imap = lines.iter().position(|l| l.starts_with("imap ")).expect("imap line");
    assert!(lines.get(imap + 1).is_none_or(|l| !l.starts_with("  rejected")), "{out}");
    assert!(node.stop());
}

#[test]
fn unknown_paths_get_404_and_bad_tokens_401() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), "node-t", "");
    assert_eq!(get(&node, "/metrics", None).0, 401);
    assert_eq!(get(&node, "/metrics", Some("scrape-token-012345678")).0, 401);
    assert_eq!(get(&node, "/metrics", Some(&format!("{TOKEN}x"))).0, 401);
    let (code, head, _) = get(&node, "/metrics", None);
    assert_eq!(code, 401);
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    for path in ["/", "/v1/status", "/metrics/x", "/metricsx", "/v1/users"] {
        assert_eq!(get(&node, path, Some(TOKEN)).0, 404, "{path}");
        assert_eq!(get(&node, path, None).0, 404, "{path}");
    }
    assert_eq!(get(&node, "/metrics", Some(TOKEN)).0, 200);
    assert!(node.stop());
}

#[test]
fn a_mirrored_pair_under_load_shows_lag_histograms_and_link_counters() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = start(&dir.path().join("a"), "node-a", &mirror_section(pa, &[pb], SECRET));
    let b = start(&dir.path().join("b"), "node-b", &mirror_section(pb, &[pa], SECRET));
    for u in ["u@example.org", "v@example.org"] {
        let (ok, _, err) = a.cli(&["user", "add", u, "--password-stdin"], Some("secret\n"));
        assert!(ok, "{err}");
    }
    let user_on_b = || {
        let st = common::admin_get(&b, "/v1/users");
        st.as_array().unwrap().iter().any(|u| u == "v@example.org")
    };
    assert!(wait_until(15, user_on_b), "the user did not reach B");
    // Load on both sides at once (each into its own account): each node
    // sends and applies.
    std::thread::scope(|s| {
        s.spawn(|| deliver(&a, "u@example.org", 150, "on-a"));
        s.spawn(|| deliver(&b, "v@example.org", 150, "on-b"));
    });
    let port_a = format!("127.0.0.1:{pa}");
    let port_b = format!("127.0.0.1:{pb}");
    // Both sides applied the other's 150 deliveries (plus the users on B).
    let applied = |n: &Node, peer: &str, want: f64| {
        wait_until(30, || {
            let s = parse(&scrape(n));
            value(&s, "tandem_mirror_in_entries_total", &[("peer", peer)]).unwrap_or(0.0) >= want
        })
    };
    assert!(applied(&b, "node-a", 152.0), "{}", scrape(&b));
    assert!(applied(&a, "node-b", 150.0), "{}", scrape(&a));
    assert!(wait_until(30, || {
        let s = parse(&scrape(&a));
        value(&s, "tandem_mirror_out_queue_entries", &[("peer", &port_b)]) == Some(0.0)
    }));

    for (node, peer_id, peer_addr, sent) in [(&a, "node-b", &port_b, 152.0), (&b, "node-a", &port_a, 150.0)] {
        let text = scrape(node);
        promtool(&text);
        let s = parse(&text);
        let lag_count = value(&s, "tandem_mirror_lag_seconds_count", &[("peer", peer_id)]).unwrap_or(0.0);
        assert!(lag_count > 0.0, "no lag observations from {peer_id}:\n{text}");
        let inf = value(&s, "tandem_mirror_lag_seconds_bucket", &[("peer", peer_id), ("le", "+Inf")]);
        assert_eq!(inf, Some(lag_count));
        // On loopback every batch lands within ten seconds of its write.
        let ten = value(&s, "tandem_mirror_lag_seconds_bucket", &[("peer", peer_id), ("le", "10")]);
        assert_eq!(ten, Some(lag_count), "{text}");
        assert!(
            value(&s, "tandem_mirror_lag_seconds_sum", &[("peer", peer_id)]).unwrap() > 0.0,
            "{text}"
        );
        assert!(value(&s, "tandem_mirror_in_batches_total", &[("peer", peer_id)]).unwrap() >= lag_count);
        assert_eq!(value(&s, "tandem_mirror_in_up", &[("peer", peer_id)]), Some(1.0), "{text}");
        assert_eq!(value(&s, "tandem_mirror_out_up", &[("peer", peer_addr)]), Some(1.0), "{text}");
        let out = value(&s, "tandem_mirror_out_sent_entries_total", &[("peer", peer_addr)]).unwrap();
        assert!(out >= sent, "{peer_addr}: sent {out} < {sent}\n{text}");
        assert!(value(&s, "tandem_mirror_out_sent_bytes_total", &[("peer", peer_addr)]).unwrap() > 0.0);
        assert!(
            value(&s, "tandem_mirror_out_bodies_sent_total", &[("peer", peer_addr)]).unwrap() >= 150.0,
            "{text}"
        );
        assert_eq!(value(&s, "tandem_mirror_auth_failures_total", &[]), Some(0.0));
    }
    assert!(a.stop() && b.stop());
}
