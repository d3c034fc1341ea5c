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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
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
    // A name as long as the matcher's pattern, so that the automaton runs
    // rather than a length check refusing it.
    let (long, longer) = ("a".repeat(40), "a".repeat(700));
    for name in [long.as_str(), longer.as_str(), "Work", "Work/Old"] {
        assert!(ok(&c.cmd("c", &format!("CREATE \"{name}\""))));
    }
    let all = c.cmd("all", "LIST \"\" \"*\"").len() - 1;
    assert!(all >= 5);
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

/// One hostile pre-login connection: a large literal announced, and as
/// much of it sent as the node will take within `budget`.
fn prelogin_flood(addr: &str, sync: bool, len: usize, budget: Duration) -> String {
    let mut c = Imap::connect(addr);
    c.w.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    c.r.get_ref().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let plus = if sync { "" } else { "+" };
    c.send(format!("a LOGIN {{{len}{plus}}}\r\n").as_bytes());
    let answer = if sync { c.line() } else { String::new() };
    // Send the data whatever the answer was: a hostile client does.
    let chunk = vec![b'x'; 64 * 1024];
    let t = Instant::now();
    let mut sent = 0;
    while sent < len && t.elapsed() < budget {
        match c.w.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    if !sync {
        // The refusal may be lost to the reset the unread data causes.
        let l = c.line();
        return if l.is_empty() { "closed".into() } else { l };
    }
    answer
}

#[test]
fn prelogin_literals_are_refused_and_memory_stays_bounded() {
    let (_d, node) = node(
        "prelogin",
        "[imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nmax_connections_per_ip = 200\n",
    );
    let pid = node.child.id();
    let imap = node.addr("imap");
    let before = rss_kib(pid);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(v) = s.lines().find_map(|l| l.strip_prefix("VmRSS:")) {
                        let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // Before the limit, each of these buffered what it sent: 100 x 4 MiB.
    let len = 60_000_000;
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let imap = imap.clone();
            std::thread::spawn(move || prelogin_flood(&imap, i % 2 == 0, len, Duration::from_millis(1500)))
        })
        .collect();
    let answers: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let after = rss_kib(pid);
    println!("RSS before {before} KiB, peak {peak} KiB, after {after} KiB");
    for (i, a) in answers.iter().enumerate() {
        if i % 2 == 0 {
            // Synchronising: refused without a continuation.
            assert!(a.starts_with("a NO [TOOBIG]") && a.contains("4096"), "connection {i}: {a}");
        } else {
            assert!(
                a == "closed" || a.starts_with("a BAD [TOOBIG]") || a.starts_with("* BYE"),
                "connection {i}: {a}"
            );
        }
    }
    // The bound: 100 connections together may not add 64 MiB (each one is
    // bounded by a few read buffers; without the limit they add 400 MiB).
    assert!(peak < before + 64 * 1024, "RSS grew from {before} KiB to {peak} KiB");
    // A literal within the limit still logs in.
    let mut c = Imap::connect(&imap);
    c.send(format!("x LOGIN {{{}}}\r\n", U.len()).as_bytes());
    assert!(c.line().starts_with('+'));
    c.send(format!("{U} secret\r\n").as_bytes());
    assert!(ok(&c.until_tagged("x")));
    let st = common::admin_get(&node, "/v1/status");
    assert!(st["imap"]["bad_commands"].as_u64().unwrap() >= 100, "{st}");
}

#[test]
fn export_refuses_names_that_leave_the_target() {
    let (d, node) = node("export", "");
    let mut c = Imap::login(&node.addr("imap"), U);
    for name in [".", "..", ".hidden", "a.b"] {
        let r = c.cmd("c", &format!("CREATE \"{name}\""));
        assert!(ok(&r), "CREATE {name}: {r:?}");
        let msg = "Subject: x\r\n\r\nbody\r\n";
        c.send(format!("a APPEND \"{name}\" {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes());
        assert!(ok(&c.until_tagged("a")));
    }
    let parent = d.path().join("x");
    std::fs::create_dir(&parent).unwrap();
    let out = parent.join("out");
    let (okay, stdout, stderr) = node.cli(&["export", "maildir", "--user", U, out.to_str().unwrap()], None);
    assert!(!okay, "export of \".\" succeeded: {stdout}");
    for name in ["\".\"", "\"..\"", "\".hidden\"", "\"a.b\""] {
        assert!(stderr.contains(name), "{name} not named: {stderr}");
    }
    // Nothing was written, inside the target or above it.
    let above: Vec<_> = std::fs::read_dir(&parent).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(above.is_empty() || (above.len() == 1 && above[0] == "out"), "{above:?}");
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
    // Renamed, they export.
    for (i, name) in [".", "..", ".hidden", "a.b"].iter().enumerate() {
        assert!(ok(&c.cmd("r", &format!("RENAME \"{name}\" \"renamed{i}\""))));
    }
    let (okay, stdout, stderr) = node.cli(&["export", "maildir", "--user", U, out.to_str().unwrap()], None);
    assert!(okay, "{stdout} {stderr}");
    assert!(out.join(".renamed0/cur").is_dir() && out.join("cur").is_dir());
    let above: Vec<_> = std::fs::read_dir(&parent).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(above, vec![std::ffi::OsString::from("out")]);
}

/// How long until the server closes `s` (reads and discards until end of
/// input or an error), bounded by `limit`.
fn time_to_close(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 4096];
    while t.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(t.elapsed()),
        }
    }
    None
}

#[test]
fn stalled_tls_handshakes_are_cut_off() {
    let cfg = "[imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nhandshake_timeout_secs = 1\n";
    let (_d, node) = node("handshake", cfg);
    // Implicit TLS: nothing at all, then half a ClientHello.
    for first in [&b""[..], &b"\x16\x03\x01\x02\x00\x01"[..]] {
        let mut s = TcpStream::connect(node.addr("imaps")).unwrap();
        s.write_all(first).unwrap();
        let took = time_to_close(&mut s, Duration::from_secs(10));
        println!("implicit TLS, {} bytes sent: closed after {took:?}", first.len());
        assert!(took.is_some_and(|t| t < Duration::from_secs(5)), "{took:?}");
    }
    // STARTTLS, then silence.
    let mut c = Imap::connect(&node.addr("imap"));
    let r = c.cmd("s", "STARTTLS");
    assert!(ok(&r), "{r:?}");
    let took = time_to_close(&mut c.w, Duration::from_secs(10));
    println!("STARTTLS: closed after {took:?}");
    assert!(took.is_some_and(|t| t < Duration::from_secs(5)), "{took:?}");
    let st = common::admin_get(&node, "/v1/status");
    assert!(st["imap"]["timeouts"].as_u64().unwrap() >= 3, "{st}");
    assert!(ok(&Imap::login(&node.addr("imap"), U).cmd("n", "NOOP")));
}

#[test]
fn slow_readers_and_slow_logins_lose_their_connection() {
    let cfg = "[imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nwrite_timeout_secs = 1\nlogin_timeout_secs = 2\nmax_connections_per_user = 1\n";
    let (_d, node) = node("slow", cfg);
    let imap = node.addr("imap");
    let mut a = Imap::login(&imap, U);
    let body = format!("Subject: big\r\n\r\n{}", "0123456789abcdef\r\n".repeat(4 << 20 >> 4));
    a.send(format!("a APPEND INBOX {{{}+}}\r\n", body.len()).as_bytes());
    a.send(body.as_bytes());
    a.send(b"\r\n");
    assert!(ok(&a.until_tagged("a")));
    assert!(ok(&a.cmd("s", "SELECT INBOX")));
    // 40 MiB asked for, nothing read: more than the socket buffers hold.
    a.send(format!("f FETCH 1 ({})\r\n", ["BODY.PEEK[]"; 10].join(" ")).as_bytes());
    let t = Instant::now();
    // The session holds alice's only slot until the node gives up on it.
    let mut got_in = None;
    while t.elapsed() < Duration::from_secs(20) {
        let mut b = Imap::connect(&imap);
        let r = b.cmd("l", &format!("LOGIN {U} secret"));
        if ok(&r) {
            got_in = Some(t.elapsed());
            break;
        }
        assert!(r.last().unwrap().contains("[LIMIT]"), "{r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("slot freed after {got_in:?}");
    assert!(got_in.is_some(), "a client that does not read held its slot for 20 s");
    drop(a);
    // Before login, activity does not extend the deadline.
    let mut c = Imap::connect(&imap);
    let t = Instant::now();
    let mut closed = false;
    while t.elapsed() < Duration::from_secs(10) {
        c.send(b"n NOOP\r\n");
        let l = c.line();
        if l.is_empty() || l.starts_with("* BYE") {
            closed = true;
            break;
        }
        if l.starts_with("n OK") {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("busy client without login closed after {:?}", t.elapsed());
    assert!(closed && t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    let st = common::admin_get(&node, "/v1/status");
    assert!(st["imap"]["timeouts"].as_u64().unwrap() >= 2, "{st}");
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

#[test]
fn data_dir_and_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "modes", "", &[U]);
    // Some mail, so the store has written files of every kind.
    let mut c = Imap::login(&node.addr("imap"), U);
    c.send(b"a APPEND INBOX {18+}\r\nSubject: x\r\n\r\nbody\r\n");
    assert!(ok(&c.until_tagged("a")));
    use std::os::unix::fs::PermissionsExt;
    let data = dir.path().join("data");
    let mode = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let mut stack = vec![data];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = mode(&p);
            if p.is_dir() {
                assert_eq!(m, 0o700, "{}", p.display());
                stack.push(p);
            } else {
                assert_eq!(m & 0o077, 0, "{} is {m:o}", p.display());
            }
            seen += 1;
        }
    }
    assert!(seen > 10, "only {seen} entries");
}

#[test]
fn import_refuses_messages_over_the_limit() {
    let cfg = "[lmtp]\nlisten = \"127.0.0.1:0\"\nmax_message_size = 1000\n";
    let (d, node) = node("importcap", cfg);
    let maildir = d.path().join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::fs::write(maildir.join("cur/1.small:2,S"), "Subject: small\n\nhello\n").unwrap();
    std::fs::write(maildir.join("cur/2.big:2,S"), format!("Subject: big\n\n{}", "x".repeat(2000))).unwrap();
    // 991 bytes on disk, 1482 once every line ends in CRLF.
    std::fs::write(maildir.join("cur/3.lf:2,S"), format!("Subject: lf\n\n{}", "y\n".repeat(489))).unwrap();
    let (okay, out, err) = node.cli(&["import", "maildir", maildir.to_str().unwrap(), "--user", U], None);
    assert!(!okay, "{out}");
    assert!(
        err.contains("2.big") && err.contains("3.lf") && err.contains("lmtp.max_message_size"),
        "{err}"
    );
    assert_eq!(common::messages(&node, U, "INBOX").len(), 1);
}

#[test]
fn attacked_node_serves_others_and_stops_on_sigterm() {
    let cfg = "[imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nmax_connections_per_ip = 1000\nmax_connections = 2000\n";
    let (_d, node) = node("attacked", cfg);
    let imap = node.addr("imap");
    {
        let mut m = Imap::login(&imap, M);
        for i in 0..30 {
            assert!(ok(&m.cmd("c", &format!("CREATE \"{}{i}\"", "a".repeat(700)))));
        }
    }
    // The same work unattacked, for comparison.
    let login_select = || {
        let t = Instant::now();
        let mut c = Imap::login(&imap, U);
        let r = c.cmd("s", "SELECT INBOX");
        assert!(ok(&r), "{r:?}");
        t.elapsed()
    };
    let quiet = (0..3).map(|_| login_select()).max().unwrap();
    println!("unattacked, LOGIN + SELECT: {quiet:?} (slowest of 3)");
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    // Every attacker tolerates errors: the node may close on it at any time.
    // Logged-in attackers keep their session and repeat their command as
    // fast as the node answers; the others reconnect.
    for kind in 0..8 {
        let (imap, stop) = (imap.clone(), stop.clone());
        attackers.push(std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(s) = TcpStream::connect(&imap) else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut line = String::new();
                let mut until = |r: &mut BufReader<TcpStream>, tag: &str| loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => return false,
                        Ok(_) if line.starts_with(tag) => return true,
                        Ok(_) => {}
                    }
                };
                let repeat: Vec<u8> = match kind {
                    // Backtracking bait, logged in.
                    0..=3 => format!(
                        "p LIST \"\" \"{}\"\r\nq LIST \"\" \"{}b\"\r\n",
                        hostile_pattern(1000),
                        "*".repeat(12)
                    )
                    .into_bytes(),
                    // A literal that ends inside a character.
                    4 => b"p LIST \"\" {6+}\r\nabcd\xC3\xA9\r\nq NOOP\r\n".to_vec(),
                    // Large literals before login.
                    5 => format!("a LOGIN {{60000000+}}\r\n{}", "x".repeat(1 << 20)).into_bytes(),
                    6 => format!("a LOGIN {{60000000}}\r\n{}", "x".repeat(1 << 20)).into_bytes(),
                    // Nothing at all: holds a slot until a deadline.
                    _ => Vec::new(),
                };
                if kind <= 4 {
                    if w.write_all(format!("l LOGIN {M} secret\r\n").as_bytes()).is_err() || !until(&mut r, "l ") {
                        continue;
                    }
                    while !stop.load(Ordering::Relaxed) && w.write_all(&repeat).is_ok() && until(&mut r, "q ") {
                        rounds += 1;
                    }
                } else {
                    rounds += 1;
                    let _ = w.write_all(&repeat);
                    let mut sink = Vec::new();
                    let _ = r.read_to_end(&mut sink);
                }
            }
            rounds
        }));
    }
    // Many idle pre-login connections on top.
    let idle: Vec<TcpStream> = (0..200).filter_map(|_| TcpStream::connect(&imap).ok()).collect();
    std::thread::sleep(Duration::from_secs(2));
    let mut times = Vec::new();
    for i in 0..5 {
        let took = login_select();
        println!("under attack, LOGIN + SELECT {i}: {took:?}");
        times.push(took);
        std::thread::sleep(Duration::from_millis(300));
    }
    times.sort();
    let (median, worst) = (times[2], times[4]);
    // 1 s, unless the machine is so loaded (a debug build among other
    // builds) that the unattacked login alone takes a third of that; and
    // no single one more than twice that.
    let bound = Duration::from_secs(1).max(quiet * 3);
    assert!(
        median < bound && worst < bound * 2,
        "LOGIN + SELECT took {times:?} under attack ({quiet:?} without)"
    );
    // SIGTERM while the attacks go on.
    let mut node = node;
    let t = Instant::now();
    common::terminate(&node.child);
    let mut status = None;
    while t.elapsed() < Duration::from_secs(10) {
        if let Some(st) = node.child.try_wait().unwrap() {
            status = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t.elapsed();
    println!("SIGTERM under attack: stopped after {took:?} ({status:?})");
    stop.store(true, Ordering::Relaxed);
    drop(idle);
    let rounds: u64 = attackers.into_iter().map(|a| a.join().unwrap()).sum();
    println!("attack rounds: {rounds}");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
}

#[test]
fn password_checks_leave_no_memory_behind() {
    // Failed logins are never cached: each one is a full argon2id check of
    // 19 MiB. Before the allocator's threshold was fixed (src/alloc.rs),
    // each blocking thread's heap arena kept its last check's memory:
    // 16 concurrent checks left 200-300 MiB behind.
    let (_d, node) = node(
        "argon-memory",
        "[imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nlogin_attempts_per_ip = 0\nlogin_attempts_per_user = 0\n",
    );
    let pid = node.child.id();
    let imap = node.addr("imap");
    let before = rss_kib(pid);
    for round in 0..3 {
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let imap = imap.clone();
                std::thread::spawn(move || {
                    let mut c = Imap::connect(&imap);
                    let r = c.cmd("a", &format!("LOGIN {U} wrong{round}x{i}"));
                    assert!(r.last().unwrap().starts_with("a NO"), "{r:?}");
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(pid);
    println!("RSS before {before} KiB, after 48 failed password checks {after} KiB");
    assert!(after < before + 48 * 1024, "RSS grew from {before} KiB to {after} KiB");
    // The right password still logs in.
    let mut c = Imap::login(&imap, U);
    assert!(ok(&c.cmd("b", "NOOP")));
}

#[test]
fn clients_idling_on_a_large_mailbox_cost_little_memory_each() {
    // What a mail client does all day: SELECT INBOX, then IDLE. Before a
    // selected session stopped keeping every message's flags, each of
    // these cost ~60 bytes per message in the mailbox (120 KiB here).
    let (d, node) = node(
        "idle-memory",
        "[imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nmax_connections_per_ip = 500\nmax_connections_per_user = 500\n",
    );
    let n = 2000;
    let mut mbox = String::new();
    for i in 0..n {
        mbox.push_str(&format!(
            "From sender@example.net Thu Jan  1 00:00:00 2026\nSubject: m{i}\nMessage-ID: <{i}@x>\n\nbody {i}\n\n"
        ));
    }
    let path = d.path().join("in.mbox");
    std::fs::write(&path, mbox).unwrap();
    let (done, out, err) = node.cli(&["import", "mbox", path.to_str().unwrap(), "--user", U], None);
    assert!(done, "import: {out} {err}");
    let imap = node.addr("imap");
    let pid = node.child.id();
    // The first SELECT warms what every later one shares (block cache).
    let mut first = Imap::login(&imap, U);
    let r = first.cmd("s", "SELECT INBOX");
    assert!(r.iter().any(|l| l == &format!("* {n} EXISTS")), "{r:?}");
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let conns: Vec<Imap> = (0..200)
        .map(|_| {
            let mut c = Imap::login(&imap, U);
            assert!(ok(&c.cmd("s", "SELECT INBOX")));
            c.send(b"i IDLE\r\n");
            assert!(c.line().starts_with('+'));
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) * 1024 / conns.len() as u64;
    println!(
        "RSS before {before} KiB, with {} clients in IDLE {after} KiB: {per} bytes each",
        conns.len()
    );
    assert!(per < 48 * 1024, "{per} bytes per idling client on a {n}-message mailbox");
    // They are live: a delivery reaches one of them.
    let mut c = conns.into_iter().next().unwrap();
    first.send(b"a APPEND INBOX {20+}\r\nSubject: new\r\n\r\nhi\r\n\r\n");
    assert!(ok(&first.until_tagged("a")));
    let l = c.line();
    assert_eq!(l, format!("* {} EXISTS", n + 1));
}
