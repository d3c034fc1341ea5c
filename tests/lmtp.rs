//! LMTP delivery end to end with real clients on loopback: Python's
//! smtplib.LMTP, swaks, and a raw socket for the byte-level cases.

mod common;
use common::{blob, messages, node_with_users, Node, Raw};
use std::process::Command;

fn lmtp(node: &Node) -> Raw {
    let mut c = Raw::connect(&node.addr("lmtp"));
    assert!(c.reply().starts_with("220 "));
    c
}

fn lhlo(c: &mut Raw) -> String {
    c.send(b"LHLO client.example\r\n");
    c.reply()
}

#[test]
fn python_smtplib_lmtp_single_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "py", "", &["alice@example.org"]);
    let (host, port) = node
        .addr("lmtp")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    let script = format!(
        r#"
import smtplib
s = smtplib.LMTP()
s.connect("{host}", {port})
s.ehlo_or_helo_if_needed() if False else s.docmd("LHLO", "py.example")
r = s.sendmail("bob@example.net", ["alice@example.org"], b"From: bob@example.net\r\nSubject: hello\r\n\r\nHi Alice\r\n")
assert r == {{}}, r
s.quit()
print("sent")
"#
    );
    let out = Command::new("python3").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let msgs = messages(&node, "alice@example.org", "INBOX");
    assert_eq!(msgs.len(), 1);
    let body = blob(&node, msgs[0]["blob"].as_str().unwrap());
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.starts_with("Return-Path: <bob@example.net>\r\nDelivered-To: alice@example.org\r\n"),
        "{text}"
    );
    assert!(text.ends_with("Subject: hello\r\n\r\nHi Alice\r\n"), "{text}");
}

#[test]
fn three_recipients_one_blob_three_inboxes_one_reply_each() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "multi", "", &["a@example.org", "b@example.org", "c@example.org"]);
    let mut c = lmtp(&node);
    let caps = lhlo(&mut c);
    for cap in ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE", "CHUNKING"] {
        assert!(caps.contains(cap), "{cap} missing from {caps}");
    }
    c.send(b"MAIL FROM:<s@example.net>\r\n");
    assert!(c.reply().starts_with("250"));
    for r in ["a@example.org", "nobody@example.org", "b@example.org", "c@example.org"] {
        c.send(format!("RCPT TO:<{r}>\r\n").as_bytes());
        let rep = c.reply();
        if r.starts_with("nobody") {
            assert!(rep.starts_with("550 5.1.1"), "{rep}");
        } else {
            assert!(rep.starts_with("250"), "{rep}");
        }
    }
    c.send(b"DATA\r\n");
    assert!(c.reply().starts_with("354"));
    c.send(b"Subject: to three\r\n\r\nshared body\r\n.\r\n");
    // RFC 2033: one reply per accepted recipient, in RCPT order.
    for r in ["a@example.org", "b@example.org", "c@example.org"] {
        let rep = c.reply();
        assert!(rep.starts_with("250") && rep.contains(r), "{rep}");
    }
    c.send(b"QUIT\r\n");
    assert!(c.reply().starts_with("221"));
    let mut blobs = std::collections::BTreeSet::new();
    for u in ["a@example.org", "b@example.org", "c@example.org"] {
        let m = messages(&node, u, "INBOX");
        assert_eq!(m.len(), 1, "{u}");
        blobs.insert(m[0]["blob"].as_str().unwrap().to_string());
    }
    assert_eq!(blobs.len(), 1, "the body is stored once for all recipients");
    let body = blob(&node, blobs.iter().next().unwrap());
    assert!(
        !String::from_utf8_lossy(&body).contains("Delivered-To"),
        "no per-recipient header in a shared body"
    );
    let st = common::admin_get(&node, "/v1/status");
    assert_eq!(st["lmtp"]["delivered"], 3);
    assert_eq!(st["lmtp"]["rejected_unknown_user"], 1);
    // Stored once: stop the node and count the blobs in the store itself.
    assert!(node.stop());
    let store = tandem::store::Store::open(&dir.path().join("data/db"), "multi", tandem::store::wal_options("multi")).unwrap();
    let n = store.wal().scan_all(store.cfs().blobs).unwrap().len();
    assert_eq!(n, 1, "blob count");
}

#[test]
fn pipelined_transaction_in_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "pipe", "", &["a@example.org", "b@example.org"]);
    let mut c = lmtp(&node);
    c.send(
        b"LHLO p\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: p\r\n\r\nx\r\n.\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nSubject: q\r\n\r\ny\r\n.\r\nQUIT\r\n",
    );
    let lh = c.reply();
    assert!(lh.starts_with("250-"));
    let expect = ["250", "250", "250", "354", "250", "250", "250", "250", "354", "250", "221"];
    for (i, code) in expect.iter().enumerate() {
        let r = c.reply();
        assert!(r.starts_with(code), "reply {i}: {r}");
    }
    assert_eq!(messages(&node, "a@example.org", "INBOX").len(), 2);
    assert_eq!(messages(&node, "b@example.org", "INBOX").len(), 1);
}

#[test]
fn dot_stuffing_and_bare_lf() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "dots", "", &["a@example.org"]);
    let mut c = lmtp(&node);
    lhlo(&mut c);
    c.send(b"MAIL FROM:<>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n");
    for _ in 0..3 {
        c.reply();
    }
    c.send(b"Subject: dots\n\n..leading dot\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let m = messages(&node, "a@example.org", "INBOX");
    let body = blob(&node, m[0]["blob"].as_str().unwrap());
    assert!(
        body.ends_with(b"Subject: dots\r\n\r\n.leading dot\r\n"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).starts_with("Return-Path: <>\r\n"));
}

#[test]
fn oversize_is_refused_by_size_and_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(
        dir.path(),
        "big",
        "[lmtp]\nlisten = \"127.0.0.1:0\"\nmax_message_size = 10000\n",
        &["a@example.org"],
    );
    let mut c = lmtp(&node);
    let caps = lhlo(&mut c);
    assert!(caps.contains("SIZE 10000"), "{caps}");
    c.send(b"MAIL FROM:<s@x> SIZE=20000\r\n");
    assert!(c.reply().starts_with("552"));
    c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n");
    for _ in 0..3 {
        c.reply();
    }
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b"0123456789abcdef0123456789abcdef0123456789\r\n".to_vec(), 400).flatten());
    big.extend_from_slice(b".\r\n");
    c.send(&big);
    assert!(c.reply().starts_with("552"));
    // The connection survives and the next message goes through.
    c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nSubject: small\r\n\r\nok\r\n.\r\n");
    for code in ["250", "250", "354", "250"] {
        assert!(c.reply().starts_with(code));
    }
    assert_eq!(messages(&node, "a@example.org", "INBOX").len(), 1);
    let st = common::admin_get(&node, "/v1/status");
    assert!(st["lmtp"]["rejected_oversize"].as_u64().unwrap() >= 1, "{st}");
}

#[test]
fn dropped_mid_data_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "drop", "", &["a@example.org"]);
    {
        let mut c = lmtp(&node);
        lhlo(&mut c);
        c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n");
        for _ in 0..3 {
            c.reply();
        }
        c.send(b"Subject: cut\r\n\r\nhalf a message");
        // Dropped here.
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(messages(&node, "a@example.org", "INBOX").len(), 0);
    let st = common::admin_get(&node, "/v1/status");
    assert_eq!(st["lmtp"]["aborted_in_data"], 1, "{st}");
    assert_eq!(st["lmtp"]["messages"], 0);
}

fn deliver_to(node: &Node, rcpts: &[&str]) {
    let mut c = lmtp(node);
    lhlo(&mut c);
    for rcpt in rcpts {
        c.send(format!("MAIL FROM:<s@x>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\nSubject: {rcpt}\r\n\r\nx\r\n.\r\n").as_bytes());
        for code in ["250", "250", "354", "250"] {
            let r = c.reply();
            assert!(r.starts_with(code), "{rcpt}: {r}");
        }
    }
}

#[test]
fn plus_detail_delivers_into_existing_folder_else_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[lmtp]\nlisten = \"127.0.0.1:0\"\ndetail_folders = true\n";
    let node = node_with_users(dir.path(), "detail", cfg, &["a@example.org"]);
    common::python(
        &node,
        "from imaptest import *\nc = connect('a@example.org')\nok(c.create('Lists'))\nc.logout()\n",
    );
    // A folder with a special use (Drafts, Sent, Trash, Junk, Archive) is
    // never a detail folder: no sender may file mail there.
    deliver_to(
        &node,
        &[
            "a+Lists@example.org",
            "a+nosuch@example.org",
            "a+Drafts@example.org",
            "a+Sent@example.org",
        ],
    );
    assert_eq!(messages(&node, "a@example.org", "Lists").len(), 1);
    assert_eq!(messages(&node, "a@example.org", "INBOX").len(), 3);
    assert_eq!(messages(&node, "a@example.org", "Drafts").len(), 0);
    assert_eq!(messages(&node, "a@example.org", "Sent").len(), 0);
}

#[test]
fn plus_detail_is_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "nodetail", "", &["a@example.org"]);
    common::python(
        &node,
        "from imaptest import *\nc = connect('a@example.org')\nok(c.create('Lists'))\nc.logout()\n",
    );
    deliver_to(&node, &["a+Lists@example.org"]);
    assert_eq!(messages(&node, "a@example.org", "Lists").len(), 0);
    assert_eq!(messages(&node, "a@example.org", "INBOX").len(), 1);
}

#[test]
fn local_part_matches_user_without_domain() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "local", "", &["user1"]);
    let mut c = lmtp(&node);
    lhlo(&mut c);
    c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<User1@anything.example>\r\nDATA\r\nSubject: s\r\n\r\nx\r\n.\r\n");
    for code in ["250", "250", "354", "250"] {
        assert!(c.reply().starts_with(code));
    }
    assert_eq!(messages(&node, "user1", "INBOX").len(), 1);
}

#[test]
fn swaks_delivers_over_lmtp() {
    if Command::new("swaks").arg("--version").output().is_err() {
        panic!("swaks is not installed; .ci/setup installs it");
    }
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "swaks", "", &["alice@example.org"]);
    let (host, port) = node
        .addr("lmtp")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    let out = Command::new("swaks")
        .args([
            "--protocol",
            "LMTP",
            "--server",
            &host,
            "--port",
            &port,
            "--to",
            "alice@example.org",
            "--from",
            "swaks@example.net",
        ])
        .args(["--header", "Subject: from swaks", "--body", "swaks body", "--helo", "swaks.example"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let m = messages(&node, "alice@example.org", "INBOX");
    assert_eq!(m.len(), 1);
    let body = String::from_utf8(blob(&node, m[0]["blob"].as_str().unwrap())).unwrap();
    assert!(body.contains("Subject: from swaks") && body.contains("swaks body"), "{body}");
}

#[test]
fn sigterm_lets_a_message_in_progress_finish() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "term", "", &["a@example.org"]);
    let mut c = lmtp(&node);
    lhlo(&mut c);
    c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n");
    for _ in 0..3 {
        c.reply();
    }
    c.send(b"Subject: in flight\r\n\r\nfirst half\r\n");
    common::terminate(&node.child);
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.send(b"second half\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("250"), "the message in progress was not accepted: {r}");
    drop(c);
    let mut node = node;
    let st = node.child.wait().unwrap();
    assert!(st.success());
    // The acknowledged message is in the store after the clean stop.
    let store = tandem::store::Store::open(&dir.path().join("data/db"), "term", tandem::store::wal_options("term")).unwrap();
    assert!(!store.wal().recovery_report().unclean_shutdown);
    let v = store.views();
    use tandem::views::ViewRead;
    let inbox = v.mailbox_by_name("a@example.org", "INBOX").unwrap().unwrap();
    assert_eq!(v.messages(inbox.id).unwrap().len(), 1);
}

/// RFC 6531 over LMTP: `SMTPUTF8` is offered, a transaction that declares it
/// may use UTF-8 addresses (and UTF-8 headers), one that does not gets
/// `553 5.6.7`. What Postfix sends by default for internationalised mail.
/// The stored body carries a `Received:` trace line (RFC 5321 section 4.4).
#[test]
fn smtputf8_addresses_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "utf8", "", &["alice@example.org", "jörg@example.org"]);
    let mut c = lmtp(&node);
    let caps = lhlo(&mut c);
    assert!(caps.lines().any(|l| &l[4..] == "SMTPUTF8"), "{caps}");
    // Without the parameter a UTF-8 address is refused.
    c.send("MAIL FROM:<müller@bücher.example>\r\n".as_bytes());
    assert!(c.reply().starts_with("553 5.6.7"));
    c.send(
        "MAIL FROM:<müller@bücher.example> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<Jörg@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
            .as_bytes(),
    );
    for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"] {
        let r = c.reply();
        assert!(r.starts_with(want), "{want}: {r}");
    }
    c.send("From: Müller <müller@bücher.example>\r\nSubject: Grüße\r\n\r\nHallo\r\n.\r\n".as_bytes());
    for _ in 0..2 {
        let r = c.reply();
        assert!(r.starts_with("250 2.0.0"), "{r}");
    }
    c.send(b"QUIT\r\n");
    assert!(c.reply().starts_with("221"));
    for user in ["j%C3%B6rg@example.org", "alice@example.org"] {
        let m = messages(&node, user, "INBOX");
        assert_eq!(m.len(), 1, "{user}");
        let body = String::from_utf8(blob(&node, m[0]["blob"].as_str().unwrap())).unwrap();
        assert!(
            body.starts_with("Return-Path: <müller@bücher.example>\r\nReceived: from client.example ([127.0.0.1])\r\n\tby "),
            "{body}"
        );
        assert!(body.contains(" (Tandem) with UTF8LMTP;\r\n\t"), "{body}");
        assert!(
            body.ends_with("\r\nFrom: Müller <müller@bücher.example>\r\nSubject: Grüße\r\n\r\nHallo\r\n"),
            "{body}"
        );
    }
}

/// Postfix pipelines DATA behind its RCPTs; when every recipient is refused
/// the DATA gets 503, which is the protocol working, not a syntax error.
#[test]
fn pipelined_data_after_refused_recipients_is_not_counted_as_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "refused", "", &["alice@example.org"]);
    let mut c = lmtp(&node);
    c.send(b"LHLO postfix.example\r\nMAIL FROM:<s@example.net>\r\nRCPT TO:<nobody@example.org>\r\nDATA\r\nRSET\r\nQUIT\r\n");
    assert!(c.reply().starts_with("250-"));
    for want in ["250 2.1.0", "550 5.1.1", "503 5.5.1", "250 2.0.0", "221"] {
        let r = c.reply();
        assert!(r.starts_with(want), "{want}: {r}");
    }
    // A real syntax error still counts.
    let mut c = lmtp(&node);
    c.send(b"LHLO x\r\nMAIL FROM:nobody\r\nQUIT\r\n");
    assert!(c.reply().starts_with("250-"));
    assert!(c.reply().starts_with("501"));
    assert!(c.reply().starts_with("221"));
    let st = common::admin_get(&node, "/v1/status");
    assert!(
        common::wait_until(5, || common::admin_get(&node, "/v1/status")["lmtp"]["rejected_syntax"] == 1),
        "{}",
        st["lmtp"]
    );
    assert_eq!(common::admin_get(&node, "/v1/status")["lmtp"]["rejected_unknown_user"], 1);
}
