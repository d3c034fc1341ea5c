//! Remembered successful logins: a second LOGIN with the same password
//! succeeds, and a changed password or a deleted user is not let in by
//! what was remembered.

mod common;
use common::{node_with_users, Node, Raw};

/// LOGIN over a fresh IMAP connection; the tagged answer.
fn login(node: &Node, user: &str, pw: &str) -> String {
    let mut c = Raw::connect(&node.addr("imap"));
    let greeting = c.line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    c.send(format!("a LOGIN {user} \"{pw}\"\r\n").as_bytes());
    for _ in 0..20 {
        let l = c.line();
        if l.starts_with("a ") {
            return l;
        }
    }
    panic!("no tagged answer to LOGIN");
}

#[test]
fn a_changed_password_or_deleted_user_is_not_let_in_by_a_remembered_login() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "login-cache", "", &["alice@example.org", "bob@example.org"]);
    for _ in 0..3 {
        let r = login(&node, "alice@example.org", "secret");
        assert!(r.starts_with("a OK"), "{r}");
    }
    let r = login(&node, "bob@example.org", "secret");
    assert!(r.starts_with("a OK"), "{r}");
    let r = login(&node, "alice@example.org", "secreT");
    assert!(r.starts_with("a NO"), "a wrong password after a remembered success: {r}");

    let (ok, out, err) = node.cli(&["user", "passwd", "alice@example.org", "--password-stdin"], Some("fresh one\n"));
    assert!(ok, "{out} {err}");
    let r = login(&node, "alice@example.org", "secret");
    assert!(r.starts_with("a NO"), "the old password still works after passwd: {r}");
    let r = login(&node, "alice@example.org", "fresh one");
    assert!(r.starts_with("a OK"), "{r}");
    let r = login(&node, "alice@example.org", "fresh one");
    assert!(r.starts_with("a OK"), "{r}");

    let (ok, out, err) = node.cli(&["user", "del", "bob@example.org"], None);
    assert!(ok, "{out} {err}");
    let r = login(&node, "bob@example.org", "secret");
    assert!(r.starts_with("a NO"), "a deleted user still logs in: {r}");
    assert!(node.stop());
}
