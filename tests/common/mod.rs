//! Helpers for tests that run the real `tandem` binary on loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn tandem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
}

/// A `tandem serve` child process.
pub struct Node {
    pub child: Child,
    pub dir: PathBuf,
    pub config: Option<PathBuf>,
    pub listeners: std::collections::BTreeMap<String, String>,
    pub lines: Vec<String>,
}

impl Node {
    /// Start `tandem serve` in `cwd` (with `config` if given) and wait until
    /// it prints its listeners.
    pub fn start(cwd: &Path, config: Option<&Path>) -> Node {
        Node::start_env(cwd, config, &[])
    }

    /// [`Node::start`] with extra environment variables for the daemon.
    pub fn start_env(cwd: &Path, config: Option<&Path>, env: &[(String, String)]) -> Node {
        let mut cmd = tandem();
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .arg("serve")
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tandem serve");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let mut listeners = std::collections::BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !["admin", "imap", "imaps", "lmtp"].iter().all(|k| listeners.contains_key(*k)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("tandem serve did not report its listeners: {lines:?}"));
            if let Some(rest) = line.strip_prefix("tandem: ") {
                if let Some((name, addr)) = rest.split_once(" listening on ") {
                    listeners.insert(name.to_string(), addr.to_string());
                }
            }
            lines.push(line);
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Node {
            child,
            dir: cwd.to_path_buf(),
            config: config.map(Path::to_path_buf),
            listeners,
            lines,
        }
    }

    /// Run a CLI command against this node.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        cli(&self.dir, self.config.as_deref(), args, stdin)
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(mut self) -> bool {
        terminate(&self.child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tandem serve did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send the daemon a signal (`"-STOP"`, `"-CONT"`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let r = std::process::Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(r.success(), "kill {sig} failed");
    }

    pub fn addr(&self, name: &str) -> String {
        self.listeners[name].trim_start_matches("http://").to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn terminate(child: &Child) {
    let r = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(r.success());
}

pub fn cli(cwd: &Path, config: Option<&Path>, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = tandem();
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut si = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            si.write_all(s.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config with every listener on an ephemeral loopback port.
pub fn write_config(dir: &Path, node_id: &str, extra: &str) -> PathBuf {
    let p = dir.join("tandem.toml");
    let data = dir.join("data");
    let mut text = format!("[node]\nid = \"{node_id}\"\ndata_dir = \"{}\"\n", data.display());
    // Sections the caller writes itself must say `listen = "127.0.0.1:0"`.
    for section in ["imap", "lmtp", "admin"] {
        if !extra.contains(&format!("[{section}]")) {
            text.push_str(&format!("[{section}]\nlisten = \"127.0.0.1:0\"\n"));
            if section == "imap" {
                text.push_str("tls_listen = \"127.0.0.1:0\"\n");
            }
        }
    }
    text.push_str(extra);
    std::fs::write(&p, text).unwrap();
    p
}

/// GET a JSON document from the node's admin endpoint with a raw HTTP/1.0
/// request (no client library between the test and the wire).
pub fn admin_get(node: &Node, path: &str) -> serde_json::Value {
    use std::io::Read;
    let data = node
        .config
        .as_ref()
        .map(|_| node.dir.join("data"))
        .unwrap_or_else(|| node.dir.join("tandem-data"));
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let mut s = std::net::TcpStream::connect(node.addr("admin")).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n", token.trim()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{path}: {head}\n{body}"
    );
    serde_json::from_str(body).unwrap()
}

/// A node with a config on ephemeral ports and the given users (password
/// "secret").
pub fn node_with_users(dir: &Path, id: &str, extra: &str, users: &[&str]) -> Node {
    let cfg = write_config(dir, id, extra);
    let node = Node::start(dir, Some(&cfg));
    for u in users {
        let (ok, out, err) = node.cli(&["user", "add", u, "--password-stdin"], Some("secret\n"));
        assert!(ok, "user add {u}: {out} {err}");
    }
    node
}

/// Messages of a folder as the admin endpoint lists them.
pub fn messages(node: &Node, user: &str, folder: &str) -> Vec<serde_json::Value> {
    admin_get(node, &format!("/v1/messages?user={user}&folder={folder}"))
        .as_array()
        .unwrap()
        .clone()
}

/// The stored bytes of a blob.
pub fn blob(node: &Node, hash: &str) -> Vec<u8> {
    use std::io::Read;
    let token = std::fs::read_to_string(node.dir.join("data/admin.token")).unwrap();
    let mut s = std::net::TcpStream::connect(node.addr("admin")).unwrap();
    write!(s, "GET /v1/blobs/{hash} HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n", token.trim()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let pos = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    resp[pos + 4..].to_vec()
}

/// A line-oriented raw LMTP client.
pub struct Raw {
    pub r: BufReader<std::net::TcpStream>,
    pub w: std::net::TcpStream,
}

impl Raw {
    pub fn connect(addr: &str) -> Raw {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }
    pub fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }
    /// One reply line.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }
    /// A whole (possibly multi-line) reply.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let l = self.line();
            let last = l.len() < 4 || l.as_bytes()[3] != b'-';
            all.push_str(&l);
            all.push('\n');
            if last {
                return all;
            }
        }
    }
}

/// A node with alice@example.org holding three messages in INBOX and one
/// `\Seen` message in `Work`, for the tests of sync clients (mbsync,
/// offlineimap); returns it with its IMAP host and port.
pub fn node_for_sync_client(dir: &Path, id: &str) -> (Node, String, String) {
    let node: Node = node_with_users(dir, id, "", &["alice@example.org"]);
    python(
        &node,
        r#"
from imaptest import *
for i in range(3):
    lmtp_deliver("alice@example.org", message("inbox %d" % i))
c = connect("alice@example.org")
ok(c.create("Work"))
ok(c.append("Work", "(\\Seen)", None, message("work item")))
"#,
    );
    let (host, port) = node
        .addr("imap")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    (node, host, port)
}

/// Run a Python script (with tests/py on its path) against a node; the
/// script gets IMAP_HOST, IMAP_PORT, LMTP_PORT in its environment. Panics
/// with the script's output if it fails.
pub fn python(node: &Node, script: &str) -> String {
    let (host, port) = node
        .addr("imap")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    let lmtp_port = node.addr("lmtp").rsplit_once(':').unwrap().1.to_string();
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py");
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", py)
        .env("IMAP_HOST", host)
        .env("IMAP_PORT", port)
        .env("LMTP_PORT", lmtp_port)
        .output()
        .expect("python3");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python failed:\n{text}");
    text
}

/// A free UDP port on loopback (for mirror listeners, which peers must know
/// before they start).
/// Deliver messages `range` to `user` over one LMTP connection, each with
/// `Subject: TAG-i` and `Message-ID: <i@TAG>`; every one must get its 250.
pub fn deliver_range(node: &Node, user: &str, tag: &str, range: std::ops::Range<usize>) {
    let mut c = Raw::connect(&node.addr("lmtp"));
    c.reply();
    c.send(b"LHLO t\r\n");
    c.reply();
    for i in range {
        c.send(format!("MAIL FROM:<s@x>\r\nRCPT TO:<{user}>\r\nDATA\r\n").as_bytes());
        for _ in 0..3 {
            let r = c.reply();
            assert!(r.starts_with('2') || r.starts_with('3'), "{r}");
        }
        c.send(format!("Subject: {tag}-{i}\r\nMessage-ID: <{i}@{tag}>\r\n\r\nbody {i}\r\n.\r\n").as_bytes());
        let r = c.reply();
        assert!(r.starts_with("250"), "delivery {tag}-{i}: {r}");
    }
}

#[path = "ports.rs"]
mod ports;
pub use ports::free_port;

/// A mirror (QUIC) port: see [`free_port`].
pub fn free_udp_port() -> u16 {
    free_port()
}

/// The `[mirror]` section of a node listening on `port` with `peers`.
pub fn mirror_section(port: u16, peers: &[u16], secret: &str) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "[mirror]\nlisten = \"127.0.0.1:{port}\"\npeers = [{}]\nsecret = \"{secret}\"\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n",
        peers.join(", ")
    )
}

/// Start a mirror node in `dir` as `role` (`master` or `slave`), listening
/// on `port` and dialling `peers`, with `secret`; `more` goes at the end of
/// its `[mirror]` section.
pub fn start_mirror(dir: &Path, id: &str, port: u16, peers: &[u16], secret: &str, role: &str, more: &str) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let extra = format!("{}mode = \"{role}\"\n{more}", mirror_section(port, peers, secret));
    let cfg = write_config(dir, id, &extra);
    Node::start(dir, Some(&cfg))
}

/// Start again the node whose config `write_config` put in `dir`.
pub fn restart(dir: &Path) -> Node {
    restart_env(dir, &[])
}

/// [`restart`] with extra environment variables for the daemon.
pub fn restart_env(dir: &Path, env: &[(String, String)]) -> Node {
    Node::start_env(dir, Some(&dir.join("tandem.toml")), env)
}

/// The environment that runs a process with its wall clock moved by
/// `offset` (e.g. `"-600"`: ten minutes back) through libfaketime (Debian's
/// `faketime`, installed by `.ci/setup`); its monotonic clock is left alone.
pub fn faketime_env(offset: &str) -> Vec<(String, String)> {
    let lib = std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|p| p.exists())
        .expect("libfaketime (Debian package faketime): run .ci/setup");
    vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
    ]
}

/// Poll `f` until it returns true or `secs` pass.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The mirror digest and heads of a node.
pub fn digest(node: &Node) -> (String, serde_json::Value) {
    let d = admin_get(node, "/v1/digest");
    (d["digest"].as_str().unwrap().to_string(), d["heads"].clone())
}

/// The deterministic corpus generator of the shared tools: in
/// `$TANDEM_SHARED` when set (`.ci/run` sets it), else in `../shared` beside
/// the checkout.
#[allow(dead_code)]
pub fn gen_corpus() -> PathBuf {
    let shared = std::env::var_os("TANDEM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let gen = shared.join("tools/corpus/gen_corpus.py");
    assert!(
        gen.is_file(),
        "corpus generator missing: {} (set TANDEM_SHARED to the shared tools directory)",
        gen.display()
    );
    gen
}
