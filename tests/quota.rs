//! Storage quotas (RFC 9208) end to end with the real daemon: `tandem quota`
//! sets them, IMAP GETQUOTAROOT/GETQUOTA show them, APPEND and COPY over
//! quota get `NO [OVERQUOTA]`, LMTP answers 452 4.2.2 (mailbox full) or
//! 552 5.2.2 (larger than the quota), an expunge makes room again, and a
//! quota set on one node of a mirrored pair holds on the other.

mod common;
use common::{node_with_users, start_mirror, wait_until, Node, Raw};

const USER: &str = "q@example.org";
/// A second user without a quota.
const OTHER: &str = "r@example.org";
const SECRET: &str = "correct horse battery staple";

/// An IMAP connection speaking raw lines.
struct Imap {
    c: Raw,
    n: u32,
}

impl Imap {
    fn login(node: &Node) -> Imap {
        let mut c = Raw::connect(&node.addr("imap"));
        assert!(c.line().starts_with("* OK"));
        let mut i = Imap { c, n: 0 };
        let r = i.cmd(&format!("LOGIN {USER} secret"));
        assert!(r.last().unwrap().contains(" OK"), "{r:?}");
        i
    }

    /// Send one command (CRLF added); every line up to the tagged answer.
    fn cmd(&mut self, text: &str) -> Vec<String> {
        self.n += 1;
        let tag = format!("t{}", self.n);
        self.c.send(format!("{tag} {text}\r\n").as_bytes());
        let mut lines = Vec::new();
        for _ in 0..1000 {
            let l = self.c.line();
            let done = l.starts_with(&format!("{tag} "));
            lines.push(l);
            if done {
                return lines;
            }
        }
        panic!("no tagged answer to {text}: {lines:?}");
    }

    /// APPEND a message of exactly `size` bytes (a LITERAL+).
    fn append(&mut self, mailbox: &str, size: usize) -> String {
        let body = message(size);
        let r = self.cmd(&format!("APPEND {mailbox} {{{}+}}\r\n{body}", body.len()));
        r.last().unwrap().clone()
    }
}

/// A message of exactly `size` bytes (at least about 40).
fn message(size: usize) -> String {
    let mut m = String::from("Subject: quota\r\n\r\n");
    while m.len() + 2 < size {
        m.push('x');
    }
    m.push_str("\r\n");
    m
}

/// Deliver one message of `size` bytes to USER over LMTP; the reply to the
/// recipient after the data, or `RCPT ` and the reply to RCPT when that
/// refused it.
fn deliver(node: &Node, size: usize) -> String {
    let mut c = Raw::connect(&node.addr("lmtp"));
    assert!(c.reply().starts_with("220"));
    c.send(b"LHLO test\r\n");
    assert!(c.reply().starts_with("250"));
    c.send(b"MAIL FROM:<s@example.org>\r\n");
    assert!(c.reply().starts_with("250"));
    c.send(format!("RCPT TO:<{USER}>\r\n").as_bytes());
    let r = c.reply();
    if !r.starts_with("250") {
        return format!("RCPT {r}");
    }
    c.send(b"DATA\r\n");
    assert!(c.reply().starts_with("354"));
    c.send(format!("{}.\r\n", message(size)).as_bytes());
    let r = c.reply();
    c.send(b"QUIT\r\n");
    r
}

fn quota_json(node: &Node) -> serde_json::Value {
    common::admin_get(node, &format!("/v1/users/{USER}/quota"))
}

#[test]
fn quota_is_shown_and_enforced_on_append_copy_and_lmtp() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "q1", "", &[USER, OTHER]);

    // No quota yet: the root has no limits, and GETQUOTA finds none.
    let (ok, out, err) = node.cli(&["quota", "get", USER], None);
    assert!(ok && out.contains("storage  0 KiB of unlimited"), "{out}{err}");
    let mut i = Imap::login(&node);
    let caps = i.cmd("CAPABILITY");
    assert!(caps[0].contains(" QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE"), "{caps:?}");
    let r = i.cmd("GETQUOTAROOT INBOX");
    assert_eq!(r[0], "* QUOTAROOT \"INBOX\"");
    assert!(r[1].contains(" OK "), "{r:?}");
    assert!(i.cmd("GETQUOTA \"\"")[0].contains(" NO [NONEXISTENT]"));

    // 8 KiB, 4 messages.
    let (ok, out, err) = node.cli(&["quota", "set", USER, "--storage", "8K", "--messages", "4"], None);
    assert!(
        ok && out.contains("storage  0 KiB of 8") && out.contains("messages 0 of 4"),
        "{out}{err}"
    );
    let r = i.cmd("GETQUOTAROOT INBOX");
    assert_eq!(r[0], "* QUOTAROOT \"INBOX\" \"\"");
    assert_eq!(r[1], "* QUOTA \"\" (STORAGE 0 8 MESSAGE 0 4)");

    // 3000 bytes: 3 KiB used (rounded up), one message.
    assert!(i.append("INBOX", 3000).contains(" OK [APPENDUID"));
    let r = i.cmd("GETQUOTA \"\"");
    assert_eq!(r[0], "* QUOTA \"\" (STORAGE 3 8 MESSAGE 1 4)");
    // Every mailbox of the user has the one root.
    let r = i.cmd("GETQUOTAROOT Sent");
    assert_eq!(r[..2], ["* QUOTAROOT \"Sent\" \"\"", "* QUOTA \"\" (STORAGE 3 8 MESSAGE 1 4)"]);

    // LMTP takes 3000 more bytes (its trace headers add a few hundred).
    let r = deliver(&node, 3000);
    assert!(r.starts_with("250"), "{r}");
    let q = quota_json(&node);
    let used = q["used_bytes"].as_u64().unwrap();
    assert!(used > 6000 && used < 7000, "{q}");
    assert_eq!(q["used_messages"], 2);

    // No room for another 3000: 452 4.2.2 over LMTP, OVERQUOTA over IMAP,
    // for APPEND and COPY alike; nothing was stored.
    let r = deliver(&node, 3000);
    assert!(r.starts_with("452 4.2.2"), "{r}");
    // Per recipient: the other recipient of the same message gets it.
    let mut c = Raw::connect(&node.addr("lmtp"));
    c.reply();
    c.send(format!("LHLO t\r\nMAIL FROM:<s@x>\r\nRCPT TO:<{USER}>\r\nRCPT TO:<{OTHER}>\r\nDATA\r\n").as_bytes());
    for want in ["250", "250", "250", "250", "354"] {
        let r = c.reply();
        assert!(r.starts_with(want), "{r}");
    }
    c.send(format!("{}.\r\n", message(3000)).as_bytes());
    let (first, second) = (c.reply(), c.reply());
    assert!(first.starts_with("452 4.2.2") && second.starts_with("250"), "{first}{second}");
    assert!(i.append("INBOX", 3000).contains(" NO [OVERQUOTA]"));
    i.cmd("SELECT INBOX");
    let r = i.cmd("COPY 1 Archive");
    assert!(r.last().unwrap().contains(" NO [OVERQUOTA]"), "{r:?}");
    // A MOVE adds nothing: allowed.
    let r = i.cmd("MOVE 1 Archive");
    assert!(r.last().unwrap().contains(" OK"), "{r:?}");
    assert_eq!(quota_json(&node)["used_bytes"].as_u64().unwrap(), used);

    // Larger than the whole quota: 552 5.2.2, and OVERQUOTA for APPEND.
    let r = deliver(&node, 9000);
    assert!(r.starts_with("552 5.2.2"), "{r}");
    assert!(i.append("INBOX", 9000).contains(" NO [OVERQUOTA]"));

    // Expunging makes room again.
    i.cmd("SELECT Archive");
    assert!(i.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)").last().unwrap().contains(" OK"));
    // What an expunge frees (RFC 9208 STATUS DELETED-STORAGE, in octets).
    let r = i.cmd("STATUS Archive (DELETED DELETED-STORAGE)");
    assert!(r[0].contains("(DELETED 1 DELETED-STORAGE 3000)"), "{r:?}");
    assert!(i.cmd("EXPUNGE").last().unwrap().contains(" OK"));
    assert_eq!(quota_json(&node)["used_messages"], 1);
    assert!(deliver(&node, 3000).starts_with("250"));

    // The message count limit holds on its own.
    let (ok, _, err) = node.cli(&["quota", "set", USER, "--messages", "2"], None);
    assert!(ok, "{err}");
    let r = i.cmd("GETQUOTA \"\"");
    assert_eq!(r[0], "* QUOTA \"\" (MESSAGE 2 2)");
    assert!(i.append("Drafts", 100).contains(" NO [OVERQUOTA]"));
    // Already full: refused at RCPT.
    let r = deliver(&node, 100);
    assert!(r.starts_with("RCPT 452 4.2.2"), "{r}");
    // Lifting every limit lets it in.
    let (ok, out, _) = node.cli(&["quota", "set", USER], None);
    assert!(ok && out.contains("messages 2 of unlimited"), "{out}");
    assert!(i.append("Drafts", 100).contains(" OK"));

    // A MULTIAPPEND is all or nothing: two messages where one fits.
    assert_eq!(quota_json(&node)["used_messages"], 3);
    let (ok, _, err) = node.cli(&["quota", "set", USER, "--messages", "4"], None);
    assert!(ok, "{err}");
    let m = message(100);
    let r = i.cmd(&format!("APPEND Drafts {{{0}+}}\r\n{m} {{{0}+}}\r\n{m}", m.len()));
    assert!(r.last().unwrap().contains(" NO [OVERQUOTA]"), "{r:?}");
    assert_eq!(quota_json(&node)["used_messages"], 3);
    assert!(i.append("Drafts", 100).contains(" OK"));

    // Quotas are the operator's; unknown roots and mailboxes are NO;
    // malformed commands are BAD with the place; the session goes on.
    assert!(i.cmd("SETQUOTA \"\" (STORAGE 100000)").last().unwrap().contains(" NO [NOPERM]"));
    assert!(i.cmd("GETQUOTAROOT Nowhere").last().unwrap().contains(" NO [NONEXISTENT]"));
    assert!(i.cmd("GETQUOTA \"other\"").last().unwrap().contains(" NO [NONEXISTENT]"));
    for bad in [
        "GETQUOTAROOT",
        "GETQUOTA",
        "GETQUOTAROOT INBOX extra",
        "SETQUOTA \"\" (STORAGE x)",
        "SETQUOTA \"\" ((",
    ] {
        let r = i.cmd(bad);
        assert!(
            r.last().unwrap().contains(" BAD ") && r.last().unwrap().contains("octet"),
            "{bad}: {r:?}"
        );
    }
    assert!(i.cmd("NOOP").last().unwrap().contains(" OK"));

    // The CLI refuses bad sizes and unknown users.
    let (ok, _, err) = node.cli(&["quota", "set", USER, "--storage", "12X"], None);
    assert!(!ok && err.contains("not a size"), "{err}");
    let (ok, _, err) = node.cli(&["quota", "get", "nobody@example.org"], None);
    assert!(!ok && err.contains("no such user"), "{err}");
}

#[test]
fn a_quota_set_on_one_node_is_enforced_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (common::free_udp_port(), common::free_udp_port());
    let a = start_mirror(&dir.path().join("a"), "node-a", pa, &[pb], SECRET, "master", "");
    let b = start_mirror(&dir.path().join("b"), "node-b", pb, &[pa], SECRET, "slave", "");
    let (ok, _, err) = a.cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(
        wait_until(15, || b.cli(&["user", "list"], None).1.contains(USER)),
        "the user did not reach B"
    );

    // Set on A (the master), seen and enforced by B (the slave).
    let (ok, _, err) = a.cli(&["quota", "set", USER, "--messages", "1", "--storage", "1M"], None);
    assert!(ok, "{err}");
    assert!(
        wait_until(15, || quota_json(&b)["messages"] == 1),
        "the quota did not reach B: {}",
        quota_json(&b)
    );
    assert_eq!(quota_json(&b)["storage_kib"], 1024);
    let r = deliver(&b, 500);
    assert!(r.starts_with("250"), "{r}");
    let r = deliver(&b, 500);
    assert!(r.starts_with("RCPT 452 4.2.2"), "{r}");
    // A sees the same usage once the delivery arrives, and refuses too.
    assert!(wait_until(15, || quota_json(&a)["used_messages"] == 1), "{}", quota_json(&a));
    let r = deliver(&a, 500);
    assert!(r.starts_with("RCPT 452 4.2.2"), "{r}");

    // Set on B, lifted on A's side too: the later set wins on both.
    let (ok, _, err) = b.cli(&["quota", "set", USER, "--messages", "5"], None);
    assert!(ok, "{err}");
    assert!(wait_until(15, || quota_json(&a)["messages"] == 5), "{}", quota_json(&a));
    assert!(quota_json(&a)["storage_kib"].is_null());
    assert!(deliver(&a, 500).starts_with("250"));
    assert!(wait_until(15, || quota_json(&a)["used_bytes"] == quota_json(&b)["used_bytes"]));
}
