//! Running under systemd: `dist/tandem.service` passes `systemd-analyze
//! verify`, and the daemon started with a `NOTIFY_SOCKET` this test binds
//! sends `READY=1` only once every listener accepts connections (and
//! serves), then `STOPPING=1` on SIGTERM; with `JOURNAL_STREAM` set its
//! log lines carry no timestamp of their own.

mod common;
use common::{free_udp_port, mirror_section, write_config};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

const UNIT: &str = include_str!("../dist/tandem.service");
const WATCHDOG_UNIT: &str = include_str!("../dist/tandem-watchdog.service");

/// `systemd-analyze verify` says nothing about `unit` (named `name`).
fn verify(name: &str, unit: &str) {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart names an executable: this build's.
    let unit = unit.replace("/usr/local/bin/tandem", env!("CARGO_BIN_EXE_tandem"));
    let path = dir.path().join(name);
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed: .ci/setup installs it");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {name}:\n{said}"
    );
}

#[test]
fn the_units_verify_clean_and_are_hardened() {
    verify("tandem.service", UNIT);
    verify("tandem-watchdog.service", WATCHDOG_UNIT);
    for want in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
    ] {
        assert!(
            WATCHDOG_UNIT.lines().any(|l| l == want),
            "{want} missing from dist/tandem-watchdog.service"
        );
    }
    // The watchdog unit's command line is one the binary accepts.
    let exec: String = WATCHDOG_UNIT
        .split("ExecStart=")
        .nth(1)
        .unwrap()
        .lines()
        .map(|l| l.trim().trim_end_matches('\\').to_string())
        .take_while(|l| !l.contains('='))
        .collect::<Vec<_>>()
        .join(" ");
    let args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|a| a.replace("${CREDENTIALS_DIRECTORY}", "/nonexistent"))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{exec}: {}", String::from_utf8_lossy(&out.stderr));
    let keys: Vec<&str> = UNIT.lines().filter(|l| !l.starts_with('#')).collect();
    for want in [
        "Type=notify",
        "NotifyAccess=main",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/tandem",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "StandardError=journal",
        "KillSignal=SIGTERM",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    ] {
        assert!(keys.contains(&want), "{want} missing from dist/tandem.service");
    }
}

fn http_status(addr: &str, path: &str, token: Option<&str>) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr} refused at READY=1: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\n{auth}\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.lines().next().unwrap_or("").to_string()
}

fn greeting(addr: &str) -> String {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr} refused at READY=1: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut l = String::new();
    BufReader::new(s).read_line(&mut l).unwrap();
    l
}

#[test]
fn ready_arrives_once_every_listener_serves_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mirror = free_udp_port();
    let cfg = write_config(
        dir.path(),
        "sd-1",
        &format!(
            "[pop3]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
            mirror_section(mirror, &[], "correct horse battery staple")
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("JOURNAL_STREAM", "8:12345")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("no READY=1 within 60 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(msg, "READY=1\nSTATUS=serving node sd-1");

    // At READY=1 every listener is bound and answering.
    let bound: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("data/listen.json")).expect("listen.json at READY=1")).unwrap();
    let names: Vec<&str> = bound.keys().map(String::as_str).collect();
    assert_eq!(names, ["admin", "imap", "imaps", "lmtp", "metrics", "mirror", "pop3"]);
    let token = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap();
    let admin = bound["admin"].trim_start_matches("http://");
    assert!(http_status(admin, "/v1/status", Some(token.trim())).contains(" 200 "));
    let metrics = bound["metrics"].trim_start_matches("http://");
    assert!(http_status(metrics, "/metrics", None).contains(" 200 "));
    assert!(greeting(&bound["lmtp"]).starts_with("220 "));
    assert!(greeting(&bound["imap"]).starts_with("* OK"));
    assert!(greeting(&bound["pop3"]).starts_with("+OK"));
    TcpStream::connect(&bound["imaps"]).expect("imaps refused at READY=1");
    assert_eq!(bound["mirror"], format!("quic://127.0.0.1:{mirror}"));
    let taken = std::net::UdpSocket::bind(("127.0.0.1", mirror)).unwrap_err();
    assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse, "the mirror's port is not bound");

    // Exactly one READY: nothing more until the stop.
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(sock.recv(&mut buf).is_err(), "a second datagram before SIGTERM");
    common::terminate(&child);
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let n = sock.recv(&mut buf).expect("no STOPPING=1 after SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    // With JOURNAL_STREAM set the journal stamps the lines: none of ours.
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    let open = log.lines().find(|l| l.contains("store open")).unwrap_or_else(|| panic!("{log}"));
    assert!(open.starts_with(" INFO ") || open.starts_with("INFO "), "{open}");
}
