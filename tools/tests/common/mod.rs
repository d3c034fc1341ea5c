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
