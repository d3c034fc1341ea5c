//! Split brain with real daemons: a master and a slave written to on both
//! sides of a cut (one node stopped while the other takes mail, then the
//! other way round), then healed. Every acknowledged message must be there
//! exactly once on each node over IMAP, no client of either node may ever
//! have been shown one UID for two messages, and the nodes must converge.

mod common;
use common::{digest, free_udp_port, mirror_section, python, wait_until, write_config, Node};
use std::collections::BTreeMap;
use std::time::Instant;

const SECRET: &str = "correct horse battery staple";
const USER: &str = "u@example.org";

fn start(dir: &std::path::Path, id: &str, port: u16, peers: &[u16], role: &str) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let extra = format!("{}mode = \"{role}\"\n", mirror_section(port, peers, SECRET));
    let cfg = write_config(dir, id, &extra);
    Node::start(dir, Some(&cfg))
}

fn restart(dir: &std::path::Path) -> Node {
    Node::start(dir, Some(&dir.join("tandem.toml")))
}

/// Deliver `n` messages over LMTP; every one must get its 250.
fn deliver(node: &Node, tag: &str, n: usize) {
    let mut c = common::Raw::connect(&node.addr("lmtp"));
    c.reply();
    c.send(b"LHLO t\r\n");
    c.reply();
    for i in 0..n {
        c.send(format!("MAIL FROM:<s@x>\r\nRCPT TO:<{USER}>\r\nDATA\r\n").as_bytes());
        for _ in 0..3 {
            let r = c.reply();
            assert!(r.starts_with('2') || r.starts_with('3'), "{r}");
        }
        c.send(format!("Subject: {tag}-{i}\r\nMessage-ID: <{i}@{tag}>\r\n\r\nbody {i}\r\n.\r\n").as_bytes());
        let r = c.reply();
        assert!(r.starts_with("250"), "delivery {tag}-{i}: {r}");
    }
}

/// What an IMAP client of `node` sees: (mailbox, UIDVALIDITY, UID) ->
/// (subject, flags), for every mailbox LIST shows; and the LIST names.
type Seen = (BTreeMap<(String, u32, u32), (String, String)>, Vec<String>);

fn imap_view(node: &Node) -> Seen {
    let out = python(
        node,
        &format!(
            r#"
import re
from imaptest import *
c = connect('{USER}')
names = []
for line in ok(c.list()):
    names.append(line.decode().rsplit(' "/" ', 1)[1].strip('"'))
print('LIST', ' '.join(sorted(names)))
for n in names:
    exists = int(ok(c.select(n), n)[0])
    uv = c.response('UIDVALIDITY')[1][0].decode()
    if exists == 0:
        continue
    typ, data = c.uid('FETCH', '1:*', '(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
    assert typ == 'OK'
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta = item[0].decode()
        uid = re.search(r'UID (\d+)', meta).group(1)
        flags = re.search(r'FLAGS \(([^)]*)\)', meta).group(1)
        subj = item[1].decode().strip().split(':', 1)[1].strip()
        print('MSG', n, uv, uid, subj, '|' + flags)
"#
        ),
    );
    let mut msgs = BTreeMap::new();
    let mut names = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("LIST ") {
            names = rest.split(' ').map(String::from).collect();
        } else if let Some(rest) = line.strip_prefix("MSG ") {
            let (head, flags) = rest.split_once(" |").unwrap();
            let f: Vec<&str> = head.splitn(4, ' ').collect();
            msgs.insert(
                (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap()),
                (f[3].to_string(), flags.to_string()),
            );
        }
    }
    (msgs, names)
}

/// Every (node, mailbox, UIDVALIDITY, UID) a client was shown, with the
/// message; a second message under one of them fails the test.
#[derive(Default)]
struct Recorder(BTreeMap<(String, String, u32, u32), String>);

impl Recorder {
    fn look(&mut self, name: &str, node: &Node) -> Seen {
        let seen = imap_view(node);
        for ((mb, uv, uid), (subject, _)) in &seen.0 {
            let prev = self.0.entry((name.to_string(), mb.clone(), *uv, *uid)).or_insert(subject.clone());
            assert_eq!(prev, subject, "{name}: {mb} UIDVALIDITY {uv} UID {uid} named two messages");
        }
        seen
    }
}

fn conflicts(node: &Node) -> serde_json::Value {
    common::admin_get(node, "/v1/status")["conflicts"].clone()
}

fn settled(a: &Node, b: &Node) -> bool {
    let quiet = |n: &Node| {
        let c = conflicts(n);
        c["uid_collisions"] == 0 && c["name_conflicts"] == 0 && c["kept_aside"] == 0
    };
    digest(a) == digest(b) && quiet(a) && quiet(b)
}

fn imap(node: &Node, script: &str) {
    python(node, &format!("from imaptest import *\nc = connect('{USER}')\n{script}"));
}

#[test]
fn writes_on_both_sides_of_a_cut_end_once_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = start(&da, "node-a", pa, &[pb], "master");
    let b = start(&db, "node-b", pb, &[pa], "slave");
    let (ok, _, err) = a.cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    deliver(&a, "before", 3);
    assert!(
        wait_until(10, || digest(&a) == digest(&b)),
        "the pair did not converge before the cut"
    );
    let mut rec = Recorder::default();
    rec.look("a", &a);
    rec.look("b", &b);

    // The cut: B is down while A takes mail, then A is down while B does.
    assert!(b.stop());
    deliver(&a, "on-a", 6);
    imap(
        &a,
        "ok(c.create('Foo'))\nok(c.append('Foo', None, None, message('foo-on-a')))\n\
         ok(c.select('INBOX'))\nok(c.uid('STORE', '1', '+FLAGS', '(\\\\Flagged)'))\n",
    );
    rec.look("a", &a);
    assert!(a.stop());
    let b = restart(&db);
    deliver(&b, "on-b", 6);
    imap(
        &b,
        "ok(c.create('Foo'))\nok(c.append('Foo', None, None, message('foo-on-b')))\n\
         ok(c.select('INBOX'))\nok(c.uid('STORE', '1', '+FLAGS', '(\\\\Seen)'))\n",
    );
    rec.look("b", &b);

    // Heal, looking at both nodes over IMAP while they converge.
    let healed = Instant::now();
    let a = restart(&da);
    let mut converged = None;
    for _ in 0..200 {
        rec.look("a", &a);
        rec.look("b", &b);
        if settled(&a, &b) {
            converged = Some(healed.elapsed());
            break;
        }
    }
    let took = converged.expect("the nodes did not converge after the heal");
    eprintln!("converged {:.2}s after the old master restarted", took.as_secs_f64());
    assert!(took.as_secs() < 15, "convergence took {took:?}");

    let mut want: Vec<String> = (0..3).map(|i| format!("before-{i}")).collect();
    want.extend((0..6).map(|i| format!("on-a-{i}")));
    want.extend((0..6).map(|i| format!("on-b-{i}")));
    want.sort();
    for (name, n) in [("a", &a), ("b", &b)] {
        let (msgs, names) = rec.look(name, n);
        assert_eq!(names.iter().filter(|x| *x == "Foo").count(), 1, "{name}: LIST shows {names:?}");
        let mut inbox: Vec<String> = msgs.iter().filter(|(k, _)| k.0 == "INBOX").map(|(_, v)| v.0.clone()).collect();
        inbox.sort();
        assert_eq!(inbox, want, "{name}: INBOX does not hold every delivery exactly once");
        let mut foo: Vec<String> = msgs.iter().filter(|(k, _)| k.0 == "Foo").map(|(_, v)| v.0.clone()).collect();
        foo.sort();
        assert_eq!(foo, vec!["foo-on-a", "foo-on-b"], "{name}: Foo does not hold both sides' messages");
        let first = msgs.values().find(|v| v.0 == "before-0").unwrap();
        assert!(
            first.1.contains("\\Flagged") && first.1.contains("\\Seen"),
            "{name}: flags not merged: {}",
            first.1
        );
    }
    // Both nodes show the same UIDs for the same messages.
    assert_eq!(imap_view(&a), imap_view(&b));
    // The master's record names what it moved and why.
    let (ok, out, err) = a.cli(&["conflicts", "--json"], None);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let moved = report["resolved"].as_array().unwrap();
    assert!(
        moved.len() >= 6 + 1,
        "expected the colliding deliveries and Foo's message moved: {out}"
    );
    assert!(moved.iter().all(|m| m["resolved_by"].as_str().unwrap().contains(':')));
    assert!(report["pending"].as_array().unwrap().is_empty());
    assert!(conflicts(&b)["resolved"].as_u64().unwrap() >= 7);
}
