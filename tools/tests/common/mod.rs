//! Helpers of the tools' integration tests: a node configuration, a small
//! IMAP client and an LMTP delivery, all over loopback sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};
use tandem::config::Config;

pub fn config(data: &Path, backup: Option<&Path>) -> Config {
    config_as("orig", data, backup, "")
}

/// A configuration of node `id` with every listener on a free loopback
/// port, `backup` as `[backup] to` and `extra` appended.
pub fn config_as(id: &str, data: &Path, backup: Option<&Path>, extra: &str) -> Config {
    let mut text = format!(
        "[node]\nid = \"{id}\"\ndata_dir = \"{}\"\ndirect_io = false\n[imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n[lmtp]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        data.display()
    );
    if let Some(b) = backup {
        text.push_str(&format!("[backup]\nto = \"{}\"\ninterval_ms = 100\n", b.display()));
    }
    text.push_str(extra);
    Config::parse(&text, Path::new("test.toml")).unwrap()
}

/// A line-and-literal IMAP client, enough for the commands used here.
pub struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
    n: u32,
}

/// One untagged or tagged response: its text lines and literals.
pub type Resp = Vec<(String, Option<Vec<u8>>)>;

impl Imap {
    pub fn connect(addr: &str, user: &str, pass: &str) -> Imap {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Imap {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            n: 0,
        };
        let mut greeting = String::new();
        c.r.read_line(&mut greeting).unwrap();
        c.ok(&format!("LOGIN {user} {pass}"));
        c
    }

    pub fn cmd(&mut self, cmd: &str) -> (String, Resp) {
        self.n += 1;
        let tag = format!("t{}", self.n);
        write!(self.w, "{tag} {cmd}\r\n").unwrap();
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            assert!(self.r.read_line(&mut line).unwrap() > 0, "connection closed during {cmd}");
            let lit = line
                .trim_end()
                .strip_suffix('}')
                .and_then(|l| l.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok());
            if let Some(n) = lit {
                let mut b = vec![0; n];
                self.r.read_exact(&mut b).unwrap();
                out.push((line, Some(b)));
                continue;
            }
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                return (rest.trim_end().to_string(), out);
            }
            out.push((line, None));
        }
    }

    pub fn ok(&mut self, cmd: &str) -> Resp {
        let (status, r) = self.cmd(cmd);
        assert!(status.starts_with("OK"), "{cmd}: {status}");
        r
    }

    /// Every message of the selected folder: UID and body bytes.
    pub fn bodies(&mut self) -> Vec<(u32, Vec<u8>)> {
        let r = self.ok("UID FETCH 1:* (UID BODY.PEEK[])");
        r.into_iter()
            .filter_map(|(line, lit)| {
                let uid = line
                    .split("UID ")
                    .nth(1)?
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()?;
                Some((uid, lit?))
            })
            .collect()
    }
}

pub fn deliver(addr: &str, to: &str, body: &str) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    let mut read = |r: &mut BufReader<TcpStream>| -> String {
        // A reply: continuation lines "250-", then the last line.
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line.clone();
            }
        }
    };
    read(&mut r);
    write!(w, "LHLO test\r\n").unwrap();
    read(&mut r);
    write!(w, "MAIL FROM:<s@example.net>\r\n").unwrap();
    assert!(read(&mut r).starts_with("250"));
    write!(w, "RCPT TO:<{to}>\r\n").unwrap();
    assert!(read(&mut r).starts_with("250"));
    write!(w, "DATA\r\n").unwrap();
    assert!(read(&mut r).starts_with("354"));
    write!(w, "{body}.\r\n").unwrap();
    let done = read(&mut r);
    assert!(done.starts_with("250"), "delivery refused: {done}");
    write!(w, "QUIT\r\n").unwrap();
}

pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn rfc3339(ms: u64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms as i64).unwrap();
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A real S3-compatible server (moto's, installed by `.ci/setup`) on a
/// loopback port, its state in memory; stopped on drop.
pub struct S3Server {
    child: std::process::Child,
    pub port: u16,
}

/// The moto server binary: `TANDEM_MOTO_SERVER`, else where `.ci/setup`
/// puts it, else `moto_server` on the PATH.
fn moto_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("TANDEM_MOTO_SERVER") {
        return p.into();
    }
    let p = Path::new("/opt/tandem-s3/bin/moto_server");
    if p.exists() {
        return p.to_path_buf();
    }
    "moto_server".into()
}

#[path = "../../../tests/common/ports.rs"]
mod ports;
pub use ports::free_port;

/// One HTTP/1.1 request without a body; returns the status code.
pub fn http_status(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl S3Server {
    pub fn start(log_dir: &Path) -> S3Server {
        let port = free_port();
        let log = std::fs::File::create(log_dir.join(format!("moto-{port}.log"))).unwrap();
        let child = std::process::Command::new(moto_bin())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} (installed by .ci/setup): {e}", moto_bin().display()));
        let s = S3Server { child, port };
        assert!(
            wait_until(30, || http_status(port, "GET", "/").is_some()),
            "the S3 server did not answer on port {port}"
        );
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, name: &str) {
        assert_eq!(
            http_status(self.port, "PUT", &format!("/{name}")),
            Some(200),
            "creating bucket {name}"
        );
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file with S3 credentials (the server accepts any).
pub fn s3_credentials(dir: &Path) -> std::path::PathBuf {
    let f = dir.join("s3.key");
    std::fs::write(&f, "access_key_id = \"tandemtest\"\nsecret_access_key = \"tandem-test-secret\"\n").unwrap();
    f
}

/// A TCP relay on a loopback port to another one, which can be cut (the
/// port refuses connections and open ones are reset) and restored on the
/// same port: the network path to the S3 server failing, the server itself
/// untouched.
pub struct Relay {
    pub port: u16,
    upstream: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    pub fn start(port: u16, upstream: u16) -> Relay {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let (st, cs) = (stop.clone(), conns.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((a, _)) => {
                        a.set_nonblocking(false).unwrap();
                        let Ok(b) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let mut g = cs.lock().unwrap();
                        g.push(a.try_clone().unwrap());
                        g.push(b.try_clone().unwrap());
                        for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Write);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Relay {
            port,
            upstream,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    /// Cut the path: the port is closed and open connections are reset.
    pub fn cut(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Open the path again on the same port.
    pub fn restore(&mut self) {
        self.cut();
        *self = Relay::start(self.port, self.upstream);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Every body the backup at `bk` holds, by the indexes of its manifests:
/// (blake3 hex, run object or pack).
#[allow(dead_code)]
pub fn packed_bodies(bk: &Path) -> Vec<(String, String)> {
    use tandem::backup::layout;
    let t = tandem::backup::target::DirTarget::new(bk).unwrap();
    let mut out = Vec::new();
    for (n, object) in layout::manifest_list(&t).unwrap() {
        for p in layout::load_object(&t, n, &object).unwrap().manifest.packs {
            out.extend(p.bodies.iter().map(|b| (b.0.clone(), p.object.clone())));
        }
    }
    out
}

/// Rewrite the format-3 backup at `bk` as format `format` (2 or 1) wrote
/// it: every run object split into a segment object per origin, a pack
/// (format 2) or an object per body (format 1), and a manifest file naming
/// them, the chain of manifest hashes recomputed, the marker of that
/// format. The bytes of segments and bodies stay as they were.
#[allow(dead_code)]
pub fn to_older_format(bk: &Path, format: u32) {
    use tandem::backup::layout;
    assert!(format == 1 || format == 2);
    let t = tandem::backup::target::DirTarget::new(bk).unwrap();
    let node = layout::read_marker(&t).unwrap().unwrap();
    let mut prev = [0u8; 32];
    for (n, object) in layout::manifest_list(&t).unwrap() {
        assert!(object.starts_with("runs/"), "{object} is not a run object");
        let mut m = layout::load_object(&t, n, &object).unwrap().manifest;
        let run = std::fs::read(bk.join(&object)).unwrap();
        for s in &mut m.segments {
            let off = s.offset.take().unwrap() as usize;
            let origin = tandem::backup::layout::parse_origin("test", &s.origin).unwrap();
            s.object = layout::segment_name(origin, s.first, s.last);
            let path = bk.join(&s.object);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &run[off..off + s.len as usize]).unwrap();
        }
        if format == 2 {
            for p in &mut m.packs {
                let mut pack = layout::PACK_MAGIC.to_vec();
                pack.extend_from_slice(&run[layout::RUN_MAGIC.len()..p.len as usize]);
                p.object = layout::pack_name(n, 0);
                p.blake3 = blake3::hash(&pack).to_hex().to_string();
                let path = bk.join(&p.object);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, &pack).unwrap();
            }
        } else {
            for p in &m.packs {
                for b in &p.bodies {
                    let hash: [u8; 32] = layout::parse_hash("test", "body", &b.0).unwrap();
                    let path = bk.join(layout::body_name(&hash));
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(path, &run[b.1 as usize..(b.1 + b.2) as usize]).unwrap();
                }
            }
            m.packs.clear();
        }
        m.format = format;
        m.prev = prev.iter().map(|b| format!("{b:02x}")).collect();
        let bytes = layout::encode_manifest(&m);
        let path = bk.join(layout::manifest_name(n));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &bytes).unwrap();
        prev = *blake3::hash(&bytes).as_bytes();
        std::fs::remove_file(bk.join(&object)).unwrap();
    }
    std::fs::remove_dir_all(bk.join(layout::RUN_DIR)).unwrap();
    std::fs::write(bk.join(layout::MARKER), format!("tandem-backup {format}\nnode {node}\n")).unwrap();
}

/// Every file below `dir`, relative to it, sorted.
pub fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Copy the tree `from` into `to` (a backup, to damage the copy).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
