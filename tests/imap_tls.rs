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
