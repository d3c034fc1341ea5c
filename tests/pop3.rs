//! POP3 end to end with real clients on loopback: Python's poplib (plain,
//! STLS and POP3S), fetchmail and getmail; and UIDL stability across the two
//! nodes of a mirror, so a client moved by a failover downloads nothing again.

mod common;
use common::{blob, free_udp_port, messages, mirror_section, wait_until, write_config, Node, Raw};
use std::path::Path;
use std::process::Command;

const SECRET: &str = "correct horse battery staple";

fn pop3_section() -> &'static str {
    "[pop3]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n"
}

fn add_user(node: &Node, user: &str) {
    let (ok, out, err) = node.cli(&["user", "add", user, "--password-stdin"], Some("secret\n"));
    assert!(ok, "user add {user}: {out} {err}");
}

/// Deliver `n` messages over LMTP, the i-th with subject `{tag} i`.
fn deliver(node: &Node, rcpt: &str, tag: &str, n: usize) {
    let mut c = Raw::connect(&node.addr("lmtp"));
    assert!(c.reply().starts_with("220 "));
    c.send(b"LHLO t.example\r\n");
    c.reply();
    for i in 0..n {
        c.send(format!("MAIL FROM:<s@example.net>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes());
        assert!(c.reply().starts_with("250"));
        assert!(c.reply().starts_with("250"));
        assert!(c.reply().starts_with("354"));
        // A line starting with a dot checks the stuffing both ways.
        c.send(format!("Subject: {tag} {i}\r\n\r\nline one\r\n..dot line\r\nlast\r\n.\r\n").as_bytes());
        assert!(c.reply().starts_with("250"), "delivery {i}");
    }
    c.send(b"QUIT\r\n");
}

/// Where a node's ports are recorded.
trait Ports {
    fn dir(&self) -> &Path;
}
impl Ports for Node {
    fn dir(&self) -> &Path {
        &self.dir
    }
}
/// The ports a stopped node had.
struct NodePorts(std::path::PathBuf);
impl Ports for NodePorts {
    fn dir(&self) -> &Path {
        &self.0
    }
}

/// The port of a listener, from the `listen.json` the node writes (the
/// harness reads only the listeners every node has), or a copy of it kept
/// for a stopped node.
fn port(node: &impl Ports, name: &str) -> String {
    let live = node.dir().join("data/listen.json");
    let kept = node.dir().join("listen.json.kept");
    if let Ok(t) = std::fs::read_to_string(&live) {
        std::fs::write(&kept, &t).unwrap();
    }
    let text = std::fs::read_to_string(&kept).unwrap();
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    let addr = all[name].as_str().unwrap_or_else(|| panic!("no {name} listener in {text}"));
    addr.rsplit_once(':').unwrap().1.to_string()
}

fn python(script: &str, env: &[(&str, String)]) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python3");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python failed:\n{text}");
    text
}

#[test]
fn poplib_plain_stls_and_pop3s_read_delete_and_lock() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "pop", pop3_section());
    let node = Node::start(dir.path(), Some(&cfg));
    add_user(&node, "alice@example.org");
    deliver(&node, "alice@example.org", "pop", 3);
    let stored: Vec<Vec<u8>> = messages(&node, "alice@example.org", "INBOX")
        .iter()
        .map(|m| blob(&node, m["blob"].as_str().unwrap()))
        .collect();
    let guids: Vec<String> = messages(&node, "alice@example.org", "INBOX")
        .iter()
        .map(|m| m["guid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored.len(), 3);
    let expected = stored
        .iter()
        .map(|b| format!("{:?}", b.iter().map(|x| *x as u32).collect::<Vec<_>>()))
        .collect::<Vec<_>>()
        .join(",");
    let script = r#"
import os, poplib, ssl
host, port, tls_port = "127.0.0.1", int(os.environ["PORT"]), int(os.environ["TLS_PORT"])
expected = [bytes(x) for x in [EXPECTED]]
guids = os.environ["GUIDS"].split(",")
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

p = poplib.POP3(host, port, timeout=20)
caps = p.capa()
assert "STLS" in caps and "UIDL" in caps and "TOP" in caps and "SASL" in caps, caps
p.stls(ctx)
assert "STLS" not in p.capa()
p.user("alice@example.org")
p.pass_("secret")
n, size = p.stat()
assert n == 3 and size == sum(len(e) for e in expected), (n, size, [len(e) for e in expected])
resp, listing, _ = p.uidl()
assert [l.decode().split()[1] for l in listing] == guids, (listing, guids)
for i in range(3):
    resp, lines, octets = p.retr(i + 1)
    got = b"\r\n".join(lines) + b"\r\n"
    assert got == expected[i], (i, got, expected[i])
resp, lines, _ = p.top(1, 1)
assert lines[-1] == b"line one" and b"" in lines, lines
# A second session is refused while this one holds the maildrop.
q = poplib.POP3_SSL(host, tls_port, context=ctx, timeout=20)
q.user("alice@example.org")
try:
    q.pass_("secret")
    raise SystemExit("second session got the maildrop")
except poplib.error_proto as e:
    assert b"IN-USE" in e.args[0], e
q.quit()
p.dele(2)
try:
    p.retr(2)
    raise SystemExit("deleted message was retrievable")
except poplib.error_proto:
    pass
p.quit()

# POP3S, after the first session's QUIT removed message 2.
q = poplib.POP3_SSL(host, tls_port, context=ctx, timeout=20)
q.user("alice@example.org")
q.pass_("secret")
assert q.stat()[0] == 2
assert [l.decode().split()[1] for l in q.uidl()[1]] == [guids[0], guids[2]]
q.quit()
# A wrong password.
r = poplib.POP3(host, port, timeout=20)
r.user("alice@example.org")
try:
    r.pass_("wrong")
    raise SystemExit("wrong password accepted")
except poplib.error_proto as e:
    assert b"[AUTH]" in e.args[0], e
r.quit()
print("ok")
"#
    .replace("EXPECTED", &expected);
    let out = python(
        &script,
        &[
            ("PORT", port(&node, "pop3")),
            ("TLS_PORT", port(&node, "pop3s")),
            ("GUIDS", guids.join(",")),
        ],
    );
    assert!(out.contains("ok"), "{out}");
    let left = messages(&node, "alice@example.org", "INBOX");
    assert_eq!(left.len(), 2, "DELE + QUIT removed one message");
    assert!(left.iter().all(|m| m["guid"] != guids[1].as_str()));
    let status = common::admin_get(&node, "/v1/status");
    assert_eq!(status["pop3"]["deleted"], 1, "{status}");
    assert!(status["pop3"]["maildrop_in_use"].as_u64().unwrap() >= 1, "{status}");
    assert!(status["pop3"]["login_failures"].as_u64().unwrap() >= 1, "{status}");
    assert!(node.stop());
}

fn fetchmail(dir: &Path, name: &str, port: &str) -> (i32, String) {
    let rc = dir.join(format!("{name}.fetchmailrc"));
    let out = dir.join("fetched");
    std::fs::write(
        &rc,
        format!(
            "set no syslog\npoll tandem via 127.0.0.1 port {port} proto POP3 uidl\n  user \"alice@example.org\" there with password \"secret\" is \"x\" here\n  keep\n  sslproto ''\n  mda \"/bin/sh -c 'cat >> {} && echo ==END== >> {}'\"\n",
            out.display(),
            out.display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let o = Command::new("fetchmail")
        .arg("-f")
        .arg(&rc)
        .arg("-i")
        .arg(dir.join("fetchids"))
        .env("HOME", dir)
        .env("FETCHMAILHOME", dir)
        .output()
        .expect("fetchmail (installed by .ci/setup)");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.code().unwrap_or(-1), text)
}

fn fetched(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("fetched"))
        .map(|s| s.matches("==END==").count())
        .unwrap_or(0)
}

#[test]
fn fetchmail_and_getmail_keep_their_place_across_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let ca = write_config(&da, "pop-a", &format!("{}{}", pop3_section(), mirror_section(pa, &[pb], SECRET)));
    let cb = write_config(&db, "pop-b", &format!("{}{}", pop3_section(), mirror_section(pb, &[pa], SECRET)));
    let a = Node::start(&da, Some(&ca));
    let b = Node::start(&db, Some(&cb));
    add_user(&a, "alice@example.org");
    deliver(&a, "alice@example.org", "first", 4);
    assert!(
        wait_until(30, || {
            let (_, users, _) = b.cli(&["user", "list"], None);
            users.contains("alice@example.org") && messages(&b, "alice@example.org", "INBOX").len() == 4
        }),
        "the peer did not receive the mail"
    );

    // UIDL is the same on both nodes.
    let uidl = r#"
import os, poplib
p = poplib.POP3("127.0.0.1", int(os.environ["PORT"]), timeout=20)
p.user("alice@example.org"); p.pass_("secret")
print(" ".join(l.decode().split()[1] for l in p.uidl()[1]))
p.quit()
"#;
    let ua = python(uidl, &[("PORT", port(&a, "pop3"))]);
    let ub = python(uidl, &[("PORT", port(&b, "pop3"))]);
    assert_eq!(ua.trim(), ub.trim());
    assert_eq!(ua.split_whitespace().count(), 4);

    // fetchmail on node A takes the four messages, leaving them on the server.
    let client = dir.path().join("fetchmail");
    std::fs::create_dir_all(&client).unwrap();
    let (code, text) = fetchmail(&client, "a", &port(&a, "pop3"));
    assert_eq!(code, 0, "{text}");
    assert_eq!(fetched(&client), 4, "{text}");
    // getmail on node A, through a delivery command, only new messages.
    let gdir = dir.path().join("getmail");
    std::fs::create_dir_all(gdir.join("out")).unwrap();
    let getmail = |node: &Node| {
        std::fs::write(
            gdir.join("getmailrc"),
            format!(
                "[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\nport = {}\nusername = alice@example.org\npassword = secret\n\n[destination]\ntype = MDA_external\npath = /bin/sh\narguments = (\"-c\", \"cat > {}/out/$(date +%s%N)\",)\n# CI runs as root; the command writes only into the test's directory.\nallow_root_commands = true\n\n[options]\nread_all = false\ndelete = false\nverbose = 1\n",
                port(node, "pop3"),
                gdir.display()
            ),
        )
        .unwrap();
        let o = Command::new("getmail")
            .arg(format!("--getmaildir={}", gdir.display()))
            .arg("--rcfile=getmailrc")
            .output()
            .expect("getmail (installed by .ci/setup)");
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "getmail: {text}");
        std::fs::read_dir(gdir.join("out")).unwrap().count()
    };
    assert_eq!(getmail(&a), 4);

    // Node A dies; the clients are pointed at node B: nothing is fetched again.
    let a_ports = NodePorts(a.dir.clone());
    assert!(a.stop());
    let (code, text) = fetchmail(&client, "b", &port(&b, "pop3"));
    assert_eq!(code, 1, "fetchmail found new mail on the other node: {text}");
    assert_eq!(fetched(&client), 4, "{text}");
    // getmail keeps what it has seen per server address and port; behind a
    // failover address that stays the same, so its state file is carried over.
    let (from, to) = (port(&a_ports, "pop3"), port(&b, "pop3"));
    for e in std::fs::read_dir(&gdir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.starts_with("oldmail-") && name.contains(&format!("-{from}-")) {
            std::fs::rename(gdir.join(&name), gdir.join(name.replace(&format!("-{from}-"), &format!("-{to}-")))).unwrap();
        }
    }
    assert_eq!(getmail(&b), 4, "getmail fetched again on the other node");
    // New mail on B is fetched once.
    deliver(&b, "alice@example.org", "second", 2);
    let (code, text) = fetchmail(&client, "b", &port(&b, "pop3"));
    assert_eq!(code, 0, "{text}");
    assert_eq!(fetched(&client), 6, "{text}");
    assert_eq!(getmail(&b), 6);
    assert!(b.stop());
}
