//! TLS: implicit TLS and STARTTLS with Python's ssl against the generated
//! self-signed certificate; LOGINDISABLED without TLS when plaintext login
//! is not allowed.

mod common;
use common::{node_with_users, python};

#[test]
fn implicit_tls_and_starttls_with_the_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "tls", "", &["alice@example.org"]);
    let cert = dir.path().join("data/tls/cert.pem");
    assert!(cert.exists(), "self-signed certificate generated at first start");
    let imaps_port = node.addr("imaps").rsplit_once(':').unwrap().1.to_string();
    python(
        &node,
        &format!(
            r#"
from imaptest import *
import ssl
ctx = ssl.create_default_context(cafile="{cert}")
c = imaplib.IMAP4_SSL(HOST, {imaps_port}, ssl_context=ctx)
assert c.sock.version().startswith("TLS"), c.sock.version()
ok(c.login("alice@example.org", "secret"))
ok(c.select("INBOX"))
c.logout()
c = imaplib.IMAP4(HOST, PORT)
assert "STARTTLS" in c.capabilities, c.capabilities
ok(c.starttls(ssl_context=ctx))
assert "STARTTLS" not in c.capabilities, c.capabilities
ok(c.login("alice@example.org", "secret"))
c.logout()
"#,
            cert = cert.display()
        ),
    );
    // The certificate is reused on restart.
    let before = std::fs::read(&cert).unwrap();
    assert!(node.stop());
    let node = common::Node::start(dir.path(), Some(&dir.path().join("tandem.toml")));
    assert_eq!(std::fs::read(&cert).unwrap(), before);
    drop(node);
}

#[test]
fn plaintext_login_refused_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(
        dir.path(),
        "notls",
        "[imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nplaintext_auth = \"never\"\n",
        &["alice@example.org"],
    );
    let cert = dir.path().join("data/tls/cert.pem");
    python(
        &node,
        &format!(
            r#"
from imaptest import *
import ssl
c = imaplib.IMAP4(HOST, PORT)
assert "LOGINDISABLED" in c.capabilities and "AUTH=PLAIN" not in c.capabilities, c.capabilities
try:
    c.login("alice@example.org", "secret")
    raise SystemExit("plaintext login accepted")
except imaplib.IMAP4.error as e:
    assert "PRIVACYREQUIRED" in str(e), e
c = imaplib.IMAP4(HOST, PORT)
ok(c.starttls(ssl_context=ssl.create_default_context(cafile="{}")))
ok(c.login("alice@example.org", "secret"))
"#,
            cert.display()
        ),
    );
}

/// Large FETCH responses over TLS to a client that reads slowly: every byte
/// of every body and the tagged completion must arrive. The socket is full
/// when the server finishes writing a response, so whatever the TLS layer
/// still holds goes out only when the session flushes it; without that the
/// client waits forever a few KB before the end.
#[test]
fn slow_tls_reader_receives_every_large_fetch_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "tlsslow", "", &["alice@example.org"]);
    let cert = dir.path().join("data/tls/cert.pem");
    let imaps_port = node.addr("imaps").rsplit_once(':').unwrap().1.to_string();
    let started = std::time::Instant::now();
    let out = python(
        &node,
        &format!(
            r#"
from imaptest import *
import re, socket, ssl, time

# Four distinct bodies around 7 MB (sizes not multiples of a TLS record),
# appended once over plaintext and copied to twenty messages.
bodies = []
for k in range(4):
    head = message("big %d" % k)
    line = ("%d " % k).encode() + b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"\r\n"
    bodies.append(head + line * (7_000_000 // len(line) + 997 * k))
c = connect("alice@example.org")
for b in bodies:
    ok(c.append("INBOX", None, None, b))
ok(c.select("INBOX"))
for _ in range(4):
    ok(c.copy("1:4", "INBOX"))
c.logout()
expect = {{uid: bodies[(uid - 1) % 4] for uid in range(1, 21)}}

ctx = ssl.create_default_context(cafile="{cert}")

class Slow:
    """A TLS client with a small socket receive buffer (so the server's
    socket fills up and stays full while it writes) that reads in small
    pieces with pauses."""
    def __init__(self, port, starttls):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        raw.settimeout(10)
        raw.connect((HOST, port))
        self.sock, self.buf, self.reads = raw, bytearray(), 0
        if starttls:
            self.line()
            self.command(b"s STARTTLS")
            assert not self.buf
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        if not starttls:
            self.line()

    def fill(self, what):
        try:
            chunk = self.sock.recv(8192)
        except socket.timeout:
            raise SystemExit("%s: stalled after %d bytes; last bytes %r" % (what, len(self.buf), bytes(self.buf[-80:])))
        if not chunk:
            raise SystemExit("%s: connection closed after %d bytes" % (what, len(self.buf)))
        self.buf += chunk
        self.reads += 1
        time.sleep(0.02 if self.reads % 197 == 0 else 0.0002)

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill("line")
        i = self.buf.index(b"\r\n") + 2
        line = bytes(self.buf[:i])
        del self.buf[:i]
        return line

    def command(self, cmd):
        tag = cmd.split()[0]
        self.sock.sendall(cmd + b"\r\n")
        while True:
            line = self.line()
            if line.startswith(tag + b" "):
                assert line.startswith(tag + b" OK"), line
                return

    def fetch(self, tag, uid, want, length=None):
        """UID FETCH the body, or its first `length` octets (a response of
        another size, so its end falls elsewhere in the TLS records)."""
        part = b"" if length is None else b"<0.%d>" % length
        want = want if length is None else want[:length]
        self.sock.sendall(b"%s UID FETCH %d BODY.PEEK[]%s\r\n" % (tag, uid, part))
        head = self.line()
        m = re.match(rb"\* \d+ FETCH \(.*BODY\[\](?:<0>)? \{{(\d+)\}}\r\n$", head)
        assert m, head
        n = int(m.group(1))
        while len(self.buf) < n:
            self.fill("uid %d (body %d bytes)" % (uid, n))
        got = bytes(self.buf[:n])
        del self.buf[:n]
        assert got == want, "uid %d: body differs" % uid
        assert self.line() == b")\r\n"
        done = self.line()
        assert done.startswith(tag + b" OK"), done
        return n

total = 0
c = Slow({imaps_port}, False)
c.command(b"a LOGIN alice@example.org secret")
c.command(b"b SELECT INBOX")
for uid in range(1, 21):
    total += c.fetch(b"S%d" % uid, uid, expect[uid])
for uid in range(1, 21):
    total += c.fetch(b"P%d" % uid, uid, expect[uid], len(expect[uid]) - 1 - 4099 * uid)
c.command(b"z LOGOUT")

# The same after STARTTLS.
c = Slow(PORT, True)
c.command(b"a LOGIN alice@example.org secret")
c.command(b"b SELECT INBOX")
for uid in (1, 2, 3, 4):
    total += c.fetch(b"T%d" % uid, uid, expect[uid])
c.command(b"z LOGOUT")
print("received", total)
"#,
            cert = cert.display()
        ),
    );
    assert!(out.contains("received "), "{out}");
    eprintln!("slow TLS reader: {} in {:?}", out.trim(), started.elapsed());
}

/// The generated certificate names the configured host (CommonName and
/// subject alternative name); the log written to a file has no terminal
/// colour codes; a client that sends an IP address as SNI (RFC 6066 forbids
/// it, many do it) does not fill the log with rustls warnings.
#[test]
fn certificate_names_the_host_and_file_logs_are_plain() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(
        dir.path(),
        "tlsname",
        "[lmtp]\nlisten = \"127.0.0.1:0\"\nhostname = \"mail.example.test\"\n",
    );
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = common::tandem()
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("TANDEM_LOG")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut imaps = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while imaps.is_none() && std::time::Instant::now() < deadline {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
            break;
        }
        imaps = line.trim().strip_prefix("tandem: imaps listening on ").map(str::to_string);
    }
    let imaps = imaps.expect("imaps listener reported");
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));

    // A ClientHello whose SNI is the IP address 127.0.0.1, written out by
    // hand (TLS clients that follow RFC 6066 leave such an SNI out).
    let name = b"127.0.0.1";
    let mut sni = vec![0x00, 0x00]; // server_name
    let list_len = 3 + name.len();
    sni.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    sni.extend_from_slice(&(list_len as u16).to_be_bytes());
    sni.push(0x00); // host_name
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0x00, 0x02, 0xc0, 0x2f]); // ECDHE_RSA_WITH_AES_128_GCM_SHA256
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    hello.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    hello.extend_from_slice(&sni);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(&imaps).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        s.write_all(&record).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
    }

    // The certificate, as Python's ssl module decodes it.
    let cert = dir.path().join("data/tls/cert.pem");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import ssl, sys; c = ssl._ssl._test_decode_cert(sys.argv[1]); \
             print(dict(x[0] for x in c['subject'])['commonName']); print(sorted(v for _, v in c['subjectAltName']))",
        )
        .arg(&cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("mail.example.test"), "CommonName: {text}");
    assert!(lines.next().unwrap().contains("'mail.example.test'"), "subjectAltName: {text}");

    common::terminate(&child);
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("TLS handshake failed"), "the handshakes were logged: {log}");
    assert!(!log.contains('\x1b'), "no terminal escape codes in a log file: {log}");
    assert!(!log.contains("SNI"), "no SNI warnings: {log}");
}
