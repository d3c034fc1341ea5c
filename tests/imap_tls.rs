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
        time.sleep(0.02 if self.reads % 97 == 0 else 0.0003)

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

    def fetch(self, tag, uid, want):
        self.sock.sendall(b"%s UID FETCH %d BODY.PEEK[]\r\n" % (tag, uid))
        head = self.line()
        m = re.match(rb"\* \d+ FETCH \(.*BODY\[\] \{{(\d+)\}}\r\n$", head)
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
