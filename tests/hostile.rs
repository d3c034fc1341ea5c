//! Hostile clients against the real daemon: patterns that make matchers
//! backtrack, literals that would fill memory before login, byte strings
//! that split a UTF-8 character, mailbox names that would leave an export
//! directory, guessing passwords in parallel, slow readers and stalled TLS
//! handshakes. Each attack is bounded, refused or answered correctly, and
//! the node keeps serving others and stops on SIGTERM.

mod common;
use common::{node_with_users, Node};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const U: &str = "alice@example.org";
const M: &str = "mallory@example.org";

/// A raw IMAP client: bytes out, responses (literals included) in.
struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Imap {
    fn connect(addr: &str) -> Imap {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Imap {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let greeting = c.line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        c
    }

    fn login(addr: &str, user: &str) -> Imap {
        let mut c = Imap::connect(addr);
        let r = c.cmd("l", &format!("LOGIN {user} secret"));
        assert!(r.last().unwrap().starts_with("l OK"), "{r:?}");
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// One line (without CRLF); empty at end of input.
    fn line(&mut self) -> String {
        let mut l = Vec::new();
        self.r.read_until(b'\n', &mut l).unwrap();
        String::from_utf8_lossy(&l).trim_end().to_string()
    }

    /// Lines up to and including the tagged one; literals are read whole
    /// and appended to their line.
    fn until_tagged(&mut self, tag: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let mut l = self.line();
            assert!(!l.is_empty(), "connection closed before {tag}: {out:?}");
            while let Some(n) = literal_len(&l) {
                let mut data = vec![0u8; n];
                self.r.read_exact(&mut data).unwrap();
                l.push_str(&String::from_utf8_lossy(&data));
                l.push_str(&self.line());
            }
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                return out;
            }
        }
    }

    fn cmd(&mut self, tag: &str, text: &str) -> Vec<String> {
        self.send(format!("{tag} {text}\r\n").as_bytes());
        self.until_tagged(tag)
    }
}

fn literal_len(line: &str) -> Option<usize> {
    let l = line.strip_suffix('}')?;
    let open = l.rfind('{')?;
    l[open + 1..].parse().ok()
}

fn ok(r: &[String]) -> bool {
    r.last().is_some_and(|l| l.split(' ').nth(1) == Some("OK"))
}

fn node(name: &str, extra: &str) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), name, extra, &[U, M]);
    (dir, node)
}

/// A mailbox pattern of `n` wildcards that cannot be collapsed into fewer
/// positions, followed by a letter no name ends with.
fn hostile_pattern(n: usize) -> String {
    let mut p = "*a".repeat(n / 2);
    p.push('b');
    p
}

#[test]
fn list_with_a_thousand_wildcards_answers_at_once() {
    let (_d, node) = node("list", "");
    let imap = node.addr("imap");
    let mut c = Imap::login(&imap, U);
    let long = "a".repeat(40);
    for name in [long.as_str(), "Work", "Work/Old"] {
        assert!(ok(&c.cmd("c", &format!("CREATE \"{name}\""))));
    }
    let all = c.cmd("all", "LIST \"\" \"*\"").len() - 1;
    assert!(all >= 4);
    // The shape that took 30 s of CPU with ten wildcards, then a thousand
    // wildcards both collapsible and not.
    let patterns = [
        format!("{}b", "*".repeat(10)),
        format!("{}b", "*".repeat(1000)),
        format!("{}b", "%".repeat(1000)),
        hostile_pattern(1000),
        "*%".repeat(500),
    ];
    for (i, p) in patterns.iter().enumerate() {
        let t = Instant::now();
        let r = c.cmd("p", &format!("LIST \"\" \"{p}\""));
        let took = t.elapsed();
        println!("LIST pattern {i} ({} bytes): {took:?}", p.len());
        assert!(ok(&r), "{r:?}");
        // 100 ms in a release build; a debug build on a loaded machine gets
        // more room, never the minutes a backtracking matcher needs.
        assert!(took < Duration::from_secs(2), "pattern {i} took {took:?}");
        let listed = r.len() - 1;
        let want = if i == 4 { all } else { 0 };
        assert_eq!(listed, want, "pattern {i}: {r:?}");
    }
    // A pattern too long to mean anything is refused, not run.
    let r = c.cmd("q", &format!("LIST \"\" \"{}\"", "a*".repeat(1000)));
    assert!(r.last().unwrap().starts_with("q BAD"), "{r:?}");
    assert!(ok(&c.cmd("n", "NOOP")));
}

#[test]
fn a_literal_ending_inside_a_utf8_character_does_not_kill_the_session() {
    let (_d, node) = node("utf8", "");
    let mut c = Imap::login(&node.addr("imap"), U);
    c.send(b"a LIST \"\" {6+}\r\nabcd\xC3\xA9\r\n");
    let r = c.until_tagged("a");
    assert!(
        r.last().unwrap().starts_with("a OK") || r.last().unwrap().starts_with("a BAD"),
        "{r:?}"
    );
    // The reference, and names starting with INBOX, too.
    c.send(b"b LIST {6+}\r\nInb\xC3\xA9x \"*\"\r\n");
    let r = c.until_tagged("b");
    assert!(
        r.last().unwrap().starts_with("b OK") || r.last().unwrap().starts_with("b BAD"),
        "{r:?}"
    );
    c.send(b"d LSUB \"\" {5+}\r\nInbo\xC3\r\n");
    let r = c.until_tagged("d");
    assert!(
        r.last().unwrap().starts_with("d OK") || r.last().unwrap().starts_with("d BAD"),
        "{r:?}"
    );
    // The same session and the node live on.
    assert!(ok(&c.cmd("e", "SELECT INBOX")));
    assert!(ok(&Imap::login(&node.addr("imap"), M).cmd("f", "NOOP")));
}

/// A connection from a given loopback address (all of 127/8 is loopback).
fn connect_from(src: [u8; 4], addr: &str) -> Imap {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from((src, 0)).into()).unwrap();
    s.connect(&addr.parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut c = Imap {
        r: BufReader::new(s.try_clone().unwrap()),
        w: s,
    };
    assert!(c.line().starts_with("* OK"));
    c
}

#[test]
fn parallel_guessing_cannot_exceed_the_login_budget() {
    let cfg = "[imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nlogin_attempts_per_ip = 5\nlogin_attempts_per_user = 8\nlogin_lockout_secs = 3600\n";
    let (_d, node) = node("throttle", cfg);
    let imap = node.addr("imap");
    // Honest parallel logins beyond the budget wait for each other's
    // tokens to come back, and all get in.
    let honest: Vec<bool> = (0..20)
        .map(|_| {
            let imap = imap.clone();
            std::thread::spawn(move || ok(&connect_from([127, 0, 0, 3], &imap).cmd("l", &format!("LOGIN {M} secret"))))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(honest.iter().all(|x| *x), "{honest:?}");
    // 40 connections from one address guess at once.
    let answers: Vec<String> = (0..40)
        .map(|_| {
            let imap = imap.clone();
            std::thread::spawn(move || {
                let mut c = connect_from([127, 0, 0, 1], &imap);
                c.cmd("l", &format!("LOGIN {U} guess")).pop().unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let checked = answers.iter().filter(|a| a.contains("[AUTHENTICATIONFAILED]")).count();
    let refused = answers.iter().filter(|a| a.contains("[UNAVAILABLE]")).count();
    println!("one address, 40 parallel guesses: {checked} checked, {refused} refused");
    assert_eq!((checked, refused), (5, 35), "{answers:?}");
    // The address is locked out, even with the right password; another
    // user from another address is not.
    let r = connect_from([127, 0, 0, 1], &imap).cmd("l", &format!("LOGIN {U} secret"));
    assert!(r.last().unwrap().contains("[UNAVAILABLE]"), "{r:?}");
    assert!(ok(&connect_from([127, 0, 0, 2], &imap).cmd("l", &format!("LOGIN {M} secret"))));
    // Guesses for the same user from many addresses share the user's budget.
    let answers: Vec<String> = (10..30u8)
        .map(|i| {
            let imap = imap.clone();
            std::thread::spawn(move || {
                connect_from([127, 0, 0, i], &imap)
                    .cmd("l", &format!("LOGIN {U} guess"))
                    .pop()
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let checked2 = answers.iter().filter(|a| a.contains("[AUTHENTICATIONFAILED]")).count();
    println!("20 addresses, one user: {checked2} more checked");
    assert_eq!(checked2, 3, "{answers:?}");
    let st = common::admin_get(&node, "/v1/status");
    assert_eq!(st["imap"]["login_failures"], 8, "{st}");
    assert_eq!(st["imap"]["login_throttled"].as_u64().unwrap(), 35 + 1 + 17, "{st}");
}
