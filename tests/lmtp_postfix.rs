//! A real MTA in front of Tandem: a private Postfix instance (its own
//! configuration, queue and data directories under a temporary directory,
//! SMTP on a loopback port) delivers over LMTP to a Tandem node. Postfix
//! enables SMTPUTF8 by default and bounces internationalised mail with
//! `dsn=5.6.7 ... SMTPUTF8 is required, but was not offered` when the LMTP
//! server does not offer it; an internationalised message (UTF-8 sender
//! address, raw UTF-8 headers and body, `SMTPUTF8` on MAIL FROM) for an
//! ASCII and a UTF-8 recipient, and a plain one must all arrive, read back
//! over IMAP (the UTF-8 user logs in with AUTHENTICATE PLAIN) with their
//! bodies byte for byte.
//!
//! Postfix's master must start as root (CI runs as root); anywhere else the
//! test fails and says why.

mod common;
use common::{free_port, node_with_users, python, Node};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running private Postfix instance; stopped (and its master waited for)
/// on drop, so no Postfix process outlives the test.
struct Postfix {
    config: PathBuf,
    queue: PathBuf,
    log: PathBuf,
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (postfix is installed by .ci/setup)"));
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

impl Postfix {
    /// Configure and start Postfix in `dir`: SMTP on 127.0.0.1:`smtp_port`,
    /// mail for example.org's listed users to LMTP at `lmtp`.
    fn start(dir: &Path, smtp_port: u16, lmtp: &str, users: &[&str]) -> Postfix {
        require_root();
        // Postfix's daemons drop to the `postfix` user: they must reach the
        // queue through every parent directory (a temporary directory is
        // private to its owner).
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        for d in [dir, dir.parent().unwrap()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config = dir.join("etc");
        let queue = dir.join("queue");
        let data = dir.join("data");
        let log = dir.join("postfix.log");
        for d in [&config, &queue, &data] {
            std::fs::create_dir_all(d).unwrap();
        }
        let (ok, out) = run(Command::new("chown").arg("postfix").arg(&data));
        assert!(ok, "chown postfix {}: {out}", data.display());
        std::fs::copy("/etc/postfix/master.cf", config.join("master.cf")).expect("Debian's /etc/postfix/master.cf (package postfix)");
        let mailboxes: Vec<String> = users.iter().map(|u| format!("{{{u}=ok}}")).collect();
        let main = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             maillog_file = {log}\n\
             maillog_file_prefixes = {dir}\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = mx.postfix.test\n\
             mydestination =\n\
             mynetworks = 127.0.0.0/8\n\
             alias_maps =\n\
             alias_database =\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
             virtual_mailbox_domains = example.org\n\
             virtual_mailbox_maps = inline:{{ {maps} }}\n\
             virtual_transport = lmtp:inet:{lmtp}\n\
             smtputf8_enable = yes\n",
            queue = queue.display(),
            data = data.display(),
            log = log.display(),
            dir = dir.display(),
            maps = mailboxes.join(", "),
        );
        std::fs::write(config.join("main.cf"), main).unwrap();
        // No chroot (it would need copies of /etc files in the queue), and
        // SMTP on the test's port instead of 25.
        for args in [
            vec!["-F".to_string(), "*/*/chroot = n".to_string()],
            vec!["-M#".to_string(), "smtp/inet".to_string()],
            vec![
                "-M".to_string(),
                format!("127.0.0.1:{smtp_port}/inet = 127.0.0.1:{smtp_port} inet n - n - - smtpd"),
            ],
        ] {
            let (ok, out) = run(Command::new("postconf").arg("-c").arg(&config).args(&args));
            assert!(ok, "postconf {args:?}: {out}");
        }
        let pf = Postfix { config, queue, log };
        let (ok, out) = run(Command::new("postfix").arg("-c").arg(&pf.config).arg("start"));
        assert!(ok, "postfix start failed: {out}\nlog:\n{}", pf.log_text());
        let up = common::wait_until(20, || std::net::TcpStream::connect(("127.0.0.1", smtp_port)).is_ok());
        assert!(up, "postfix did not listen on 127.0.0.1:{smtp_port}; log:\n{}", pf.log_text());
        pf
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.queue.join("pid/master.pid")).ok()?.trim().parse().ok()
    }
}

/// Postfix's master must start as root: anywhere else fail, saying so.
fn require_root() {
    let (_, uid) = run(Command::new("id").arg("-u"));
    assert_eq!(
        uid.trim(),
        "0",
        "tests/lmtp_postfix.rs starts a private Postfix, whose master must run as root; run this test as root (CI does)"
    );
}

/// A process that exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let pid = self.master_pid();
        let _ = Command::new("postfix").arg("-c").arg(&self.config).arg("stop").output();
        if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(15);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                // The master's children exit when it goes.
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        }
    }
}

/// The part of a message after its header.
fn body(msg: &[u8]) -> &[u8] {
    let at = msg.windows(4).position(|w| w == b"\r\n\r\n").expect("a header/body separator");
    &msg[at + 4..]
}

fn header(msg: &[u8]) -> &[u8] {
    let at = msg.windows(4).position(|w| w == b"\r\n\r\n").expect("a header/body separator");
    &msg[..at + 2]
}

#[test]
fn postfix_relays_smtputf8_and_plain_mail_over_lmtp() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tandem")).unwrap();
    let node: Node = node_with_users(
        &dir.path().join("tandem"),
        "postfix",
        "",
        &["alice@example.org", "jürgen@example.org"],
    );
    let smtp_port = free_port();
    let pf = Postfix::start(
        &dir.path().join("postfix"),
        smtp_port,
        &node.addr("lmtp"),
        &["alice@example.org", "jürgen@example.org"],
    );

    let intl: &[u8] = "From: Jürgen Müller <jürgen@müller.example>\r\n\
        To: alice@example.org\r\n\
        Subject: Grüße aus Köln — 日本語の件名\r\n\
        Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
        Message-ID: <intl.1@müller.example>\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: 8bit\r\n\
        \r\n\
        Grüße, Alice!\r\n\
        Ein Absatz mit Umlauten: äöü ÄÖÜ ß, und Kanji: 漢字.\r\n\
        .a line that starts with a dot\r\n"
        .as_bytes();
    let plain: &[u8] = b"From: Bob <bob@example.net>\r\n\
        To: alice@example.org\r\n\
        Subject: plain ascii\r\n\
        Date: Tue, 14 Nov 2023 22:14:20 +0000\r\n\
        Message-ID: <plain.1@example.net>\r\n\
        \r\n\
        Just ASCII.\r\n\
        \r\n\
        Second paragraph.\r\n";
    let out = dir.path().join("got");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(dir.path().join("intl.eml"), intl).unwrap();
    std::fs::write(dir.path().join("plain.eml"), plain).unwrap();
    python(
        &node,
        &format!(
            r#"
import smtplib, time, imaplib
from imaptest import *
d = {d:?}
intl = open(d + "/intl.eml", "rb").read()
plain = open(d + "/plain.eml", "rb").read()
s = smtplib.SMTP("127.0.0.1", {smtp_port}, timeout=20)
s.ehlo("client.example")
assert s.has_extn("smtputf8"), s.esmtp_features
refused = s.sendmail("jürgen@müller.example", ["alice@example.org", "jürgen@example.org"], intl, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
assert not refused, refused
refused = s.sendmail("bob@example.net", ["alice@example.org"], plain)
assert not refused, refused
s.quit()
c = connect("alice@example.org")
# Wait for both (at most 30 s), or until Postfix logs a bounce.
deadline = time.monotonic() + 30
while True:
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK", data
    if int(data[0]) >= 2 or time.monotonic() > deadline:
        break
    try:
        if "status=bounced" in open({log:?}).read():
            break
    except FileNotFoundError:
        pass
    time.sleep(0.1)
msgs = []
if int(data[0]) > 0:
    typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
    assert typ == "OK", data
    msgs = [x[1] for x in data if isinstance(x, tuple)]
for i, m in enumerate(msgs):
    open("%s/got/%d.eml" % (d, i), "wb").write(m)
# The UTF-8 recipient logs in with AUTHENTICATE PLAIN (UTF-8 user name).
j = imaplib.IMAP4(HOST, PORT)
typ, data = j.authenticate("PLAIN", lambda _: "\0jürgen@example.org\0secret".encode())
assert typ == "OK", data
typ, data = j.select("INBOX", readonly=True)
assert typ == "OK", data
if int(data[0]) > 0:
    typ, data = j.uid("FETCH", "1:*", "(BODY.PEEK[])")
    assert typ == "OK", data
    for i, m in enumerate(x[1] for x in data if isinstance(x, tuple)):
        open("%s/got/j%d.eml" % (d, i), "wb").write(m)
"#,
            d = dir.path().display().to_string(),
            log = pf.log.display().to_string(),
        ),
    );
    let got: Vec<Vec<u8>> = (0..3).filter_map(|i| std::fs::read(out.join(format!("{i}.eml"))).ok()).collect();
    assert_eq!(
        got.len(),
        2,
        "INBOX holds {} messages, not 2; the Postfix log:\n{}",
        got.len(),
        pf.log_text()
    );
    let find = |subject: &[u8]| {
        got.iter()
            .find(|m| header(m).windows(subject.len()).any(|w| w == subject))
            .unwrap_or_else(|| panic!("no message with {:?}", String::from_utf8_lossy(subject)))
    };
    let got_intl = find("Subject: Grüße aus Köln — 日本語の件名\r\n".as_bytes());
    let got_plain = find(b"Subject: plain ascii\r\n");
    let got_j: Vec<Vec<u8>> = (0..2).filter_map(|i| std::fs::read(out.join(format!("j{i}.eml"))).ok()).collect();
    assert_eq!(
        got_j.len(),
        1,
        "jürgen's INBOX holds {} messages, not 1; the Postfix log:\n{}",
        got_j.len(),
        pf.log_text()
    );
    assert_eq!(
        body(&got_j[0]),
        body(intl),
        "internationalised body changed on the way to the UTF-8 recipient"
    );
    let hj = String::from_utf8_lossy(header(&got_j[0])).into_owned();
    assert!(
        hj.contains("Subject: Grüße aus Köln — 日本語の件名\r\n") && hj.contains("with UTF8LMTP"),
        "{hj}"
    );
    assert_eq!(
        String::from_utf8_lossy(body(got_intl)),
        String::from_utf8_lossy(body(intl)),
        "internationalised body changed on the way"
    );
    assert_eq!(body(got_intl), body(intl));
    assert_eq!(body(got_plain), body(plain), "plain body changed on the way");
    // The UTF-8 header lines arrive as they were written, and Tandem's
    // trace says the LMTP transaction was an SMTPUTF8 one.
    let h = String::from_utf8_lossy(header(got_intl)).into_owned();
    assert!(h.contains("From: Jürgen Müller <jürgen@müller.example>\r\n"), "{h}");
    assert!(h.contains("Message-ID: <intl.1@müller.example>\r\n"), "{h}");
    assert!(h.contains("with UTF8LMTP"), "LMTP transaction not marked SMTPUTF8:\n{h}");
    assert!(h.contains("by mx.postfix.test"), "not relayed through Postfix:\n{h}");
    assert!(String::from_utf8_lossy(header(got_plain)).contains("by mx.postfix.test"));

    // Postfix's own account: three deliveries over LMTP (one per recipient),
    // no bounce.
    let delivered = |log: &str| {
        log.lines()
            .filter(|l| l.contains("relay=127.0.0.1[") && l.contains("status=sent"))
            .count()
    };
    let settled = common::wait_until(10, || delivered(&pf.log_text()) >= 3);
    let log = pf.log_text();
    assert!(settled, "Postfix did not log three LMTP deliveries:\n{log}");
    for bad in [
        "status=bounced",
        "status=deferred",
        "5.6.7",
        "SMTPUTF8 is required",
        "warning:",
        "fatal:",
        "panic:",
    ] {
        assert!(!log.contains(bad), "Postfix log has {bad:?}:\n{log}");
    }
    drop(pf);
    assert!(node.stop());
}
