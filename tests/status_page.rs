//! The HTML status page of real daemons, rendered by headless Chromium: a
//! pair mirrors some mail, one node stops, and the other's page (after its
//! script has polled `/status.json`) shows the link down with its last
//! error and the numbers the node holds. Also `tandem status --watch`, and
//! the bearer token guarding the page like `/metrics`.

mod common;
use common::{free_udp_port, mirror_section, wait_until, write_config, Node, Raw};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "correct horse battery staple";
const TOKEN: &str = "page-token-0123456789abcdef";

fn start(dir: &Path, id: &str, port: u16, peer: u16, token: bool, metrics_port: u16, more_metrics: &str) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let mut metrics = format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n{more_metrics}");
    if token {
        let f = dir.join("metrics.token");
        std::fs::write(&f, TOKEN).unwrap();
        metrics.push_str(&format!("bearer_token_file = \"{}\"\n", f.display()));
    }
    let cfg = write_config(dir, id, &format!("{metrics}{}", mirror_section(port, &[peer], SECRET)));
    let mut node = Node::start(dir, Some(&cfg));
    let bound: BTreeMap<String, String> = serde_json::from_str(&std::fs::read_to_string(dir.join("data/listen.json")).unwrap()).unwrap();
    node.listeners.insert("metrics".into(), bound["metrics"].clone());
    node
}

/// A raw HTTP/1.0 GET on the metrics listener: (status code, head, body).
fn get(node: &Node, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(node.addr("metrics")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\n{auth}\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), head.to_string(), body.to_string())
}

fn deliver(node: &Node, rcpt: &str, n: usize, tag: &str) {
    let mut c = Raw::connect(&node.addr("lmtp"));
    c.reply();
    c.send(b"LHLO page\r\n");
    c.reply();
    for i in 0..n {
        c.send(
            format!(
                "MAIL FROM:<s@x>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\nSubject: {tag} {i}\r\nMessage-ID: <{i}@{tag}>\r\n\r\nbody {i}\r\n.\r\n"
            )
            .as_bytes(),
        );
        for _ in 0..4 {
            let r = c.reply();
            assert!(r.starts_with('2') || r.starts_with('3'), "{r}");
        }
    }
    c.send(b"QUIT\r\n");
    c.reply();
}

/// Run Chromium headless with `args` then `url`, bounded in time; its
/// stdout.
fn chromium(tmp: &Path, args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir_in(tmp).unwrap();
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .env("HOME", profile.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!("cannot run `chromium` ({e}): .ci/setup installs it (Debian package chromium)"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "chromium ran for more than 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Text as it appears inside an element of Chromium's serialised DOM.
fn dom_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

/// The text of the element carrying `data-k="key"` in `dom`.
fn field<'a>(dom: &'a str, key: &str) -> &'a str {
    let at = dom
        .find(&format!("data-k=\"{key}\""))
        .unwrap_or_else(|| panic!("no data-k={key} in the page:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap() + start;
    &rest[start..end]
}

#[test]
fn chromium_shows_a_down_link_with_its_last_error_and_the_numbers() {
    assert!(
        Command::new("chromium").arg("--version").output().is_ok_and(|o| o.status.success()),
        "`chromium` is not installed or does not run: .ci/setup installs it (Debian package chromium)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    // Each page shows the other node too (B's fetched with B's token); A's
    // metrics port is chosen first so that B can name it.
    let a_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let a_url = format!("http://127.0.0.1:{a_port}");
    let b = start(
        &dir.path().join("b"),
        "node-b",
        pb,
        pa,
        true,
        0,
        &format!("peer_status = [\"{a_url}\"]\n"),
    );
    let b_url = format!("http://{}", b.addr("metrics"));
    let peer = format!(
        "peer_status = [\"{b_url}\"]\npeer_token_file = \"{}\"\n",
        dir.path().join("b/metrics.token").display()
    );
    let a = start(&dir.path().join("a"), "node-a", pa, pb, false, a_port, &peer);
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(
        wait_until(15, || b.cli(&["user", "list"], None).1.contains("u@example.org")),
        "the user did not reach B"
    );
    deliver(&a, "u@example.org", 5, "on-a");
    deliver(&b, "u@example.org", 2, "on-b");
    let out_a = |key: &str| common::admin_get(&a, "/v1/status")["mirror"]["outgoing"][0][key].clone();
    assert!(wait_until(20, || out_a("queue") == 0), "B did not acknowledge A's mail");
    assert!(
        wait_until(20, || common::admin_get(&a, "/v1/status")["mirror"]["incoming"]["node-b"]["add"]
            == 2),
        "A did not apply B's two deliveries"
    );

    // A's page carries B's own view of its link to A.
    let a_live = || -> serde_json::Value { serde_json::from_str(&get(&a, "/status.json", None).2).unwrap() };
    // B's link drains once A has acknowledged what B wrote after its two
    // deliveries (the master's moves of colliding UIDs among them).
    let drained = |live: &serde_json::Value| {
        live["fields"]["peer.0.out.0.up"] == "up"
            && live["fields"]["peer.0.out.0.queue"]
                .as_str()
                .is_some_and(|q| q.starts_with("0 entries"))
    };
    assert!(wait_until(10, || drained(&a_live())), "{}", a_live());
    let live = a_live();
    assert_eq!(live["fields"]["peer.0.reached"], "yes");
    assert!(live["fields"]["peer.0.node.role"].as_str().unwrap().contains("epoch 0"), "{live}");
    // Two nodes that list each other do not wait on each other: each asks
    // the other for its own status only.
    let (code, _, body) = get(&b, "/status.json", Some(TOKEN));
    assert_eq!(code, 200);
    let b_live: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(b_live["fields"]["peer.0.reached"], "yes", "{b_live}");
    assert_eq!(b_live["fields"]["peer.0.out.0.up"], "up", "{b_live}");
    assert!(b_live["fields"].get("peer.0.peer.0.reached").is_none(), "{b_live}");

    // The token guards the page as it guards /metrics (B has one).
    for path in ["/status", "/status.json"] {
        assert_eq!(get(&b, path, None).0, 401, "{path} without a token");
        assert_eq!(get(&b, path, Some("wrong")).0, 401, "{path} with a wrong token");
        assert_eq!(get(&b, path, Some(TOKEN)).0, 200, "{path} with the token");
    }

    // B goes away; A's link to it goes down with an error, and mail
    // delivered on A meanwhile queues.
    assert!(b.stop());
    assert!(
        wait_until(30, || out_a("state") != "connected" && !out_a("last_error").is_null()),
        "A's link did not go down with an error: {}",
        common::admin_get(&a, "/v1/status")["mirror"]
    );
    deliver(&a, "u@example.org", 3, "while-down");
    assert!(wait_until(10, || out_a("queue").as_u64().unwrap_or(0) >= 3), "nothing queued");

    let url = format!("http://{}/status", a.addr("metrics"));
    let (code, head, _) = get(&a, "/status", None);
    assert_eq!(code, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/html"), "{head}");
    let dom = chromium(dir.path(), &["--dump-dom", "--virtual-time-budget=3000"], &url);
    let st = common::admin_get(&a, "/v1/status");
    let link = &st["mirror"]["outgoing"][0];
    std::fs::write(dir.path().join("status.html"), &dom).unwrap();

    // The script ran and fetched /status.json (its text replaces the
    // server's "rendered ..." line).
    assert!(dom.contains("live: refreshed "), "the page's script did not refresh:\n{dom}");
    assert!(dom.contains(&format!("<h2>Mirror to 127.0.0.1:{pb}")), "{dom}");
    assert_eq!(field(&dom, "out.0.up"), "down");
    assert!(dom.contains("class=\"down\" data-k=\"out.0.up\"") || dom.contains("data-k=\"out.0.up\" class=\"down\""));
    let error = link["last_error"].as_str().unwrap();
    let info = field(&dom, "out.0.error");
    assert!(info.contains(&dom_text(error)), "last error {error:?} not in {info:?}");
    assert!(info.contains(" UTC ("), "the error's time is missing: {info:?}");
    assert!(
        field(&dom, "out.0.state").starts_with(link["state"].as_str().unwrap()),
        "{}",
        field(&dom, "out.0.state")
    );
    // The numbers: added here, sent, queued (as A's own status says), and
    // the eight deliveries A took and the two it applied from B.
    assert_eq!(field(&dom, "out.0.added"), format!("{} entries added here", link["local_added"]));
    assert!(link["local_added"].as_u64().unwrap() >= 9, "{link}");
    assert!(field(&dom, "out.0.sent").starts_with(&format!("{} entries (", link["sent"])));
    let queue = link["queue"].as_u64().unwrap();
    assert!(queue >= 3);
    assert!(
        field(&dom, "out.0.queue").starts_with(&format!("{queue} entries not acknowledged")),
        "{}",
        field(&dom, "out.0.queue")
    );
    let lag: f64 = field(&dom, "out.0.lag").trim_end_matches(" s").parse().unwrap();
    assert!(lag > 0.0, "a link with a queue lags");
    assert_eq!(
        field(&dom, "node.lmtp"),
        "8 messages to 8 recipients (".to_string() + field(&dom, "node.lmtp").split_once('(').unwrap().1
    );
    assert!(field(&dom, "node.role").starts_with("master") || field(&dom, "node.role").starts_with("slave"));
    // What came from B: two deliveries, and the link from it is down too.
    assert!(dom.contains("Mirror from node-b"), "{dom}");
    assert!(field(&dom, "in.0.in").starts_with("add=2 "), "{}", field(&dom, "in.0.in"));
    assert_eq!(field(&dom, "in.0.up"), "down");
    // Lag and queue over the hour: the sampler's first point (taken at
    // start) and the live one, so a line of at least two points.
    for key in ["out.0.lag_h", "out.0.queue_h"] {
        let at = dom.find(&format!("data-s=\"{key}\"")).unwrap_or_else(|| panic!("no {key}"));
        let pts = dom[at..].split("points=\"").nth(1).unwrap().split('"').next().unwrap();
        assert!(pts.split(' ').count() >= 2, "{key}: {pts:?}");
    }
    assert_eq!(field(&dom, "out.0.queue_h.max"), format!("max {queue} entries"));
    // B's section says it cannot be reached, and where.
    let reached = field(&dom, "peer.0.reached");
    assert!(
        reached.starts_with("no: ") && reached.contains(b_url.trim_start_matches("http://")),
        "{reached}"
    );

    // A screenshot of the same page.
    let png = dir.path().join("status.png");
    chromium(
        dir.path(),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1100,1400",
            "--virtual-time-budget=3000",
            "--hide-scrollbars",
        ],
        &url,
    );
    let bytes = std::fs::read(&png).expect("chromium wrote no screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 10_000, "a {} byte screenshot is too small for the page", bytes.len());

    // The page's JSON carries the same keys.
    let (code, _, body) = get(&a, "/status.json", None);
    assert_eq!(code, 200);
    let live: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(live["fields"]["out.0.up"], "down");
    assert_eq!(live["shape"], format!("out:127.0.0.1:{pb} in:node-b peer:{b_url}[unreachable]"));

    // `tandem status --watch 1` prints the status again every second.
    let mut watch = common::tandem()
        .args(["--config", a.config.as_ref().unwrap().to_str().unwrap(), "status", "--watch", "1"])
        .current_dir(&a.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2600));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let shown = text.matches("\n--- ").count() + usize::from(text.starts_with("--- "));
    assert!((2..=4).contains(&shown), "{shown} refreshes in 2.6 s:\n{text}");
    assert!(text.contains("node        node-a"), "{text}");
    assert!(text.contains(&format!("to 127.0.0.1:{pb}")), "{text}");
    assert!(a.stop());
}
