//! Split brain with real daemons: a master and a slave written to on both
//! sides of a cut (one node stopped while the other takes mail, then the
//! other way round; or both running with the network between them cut by
//! UDP relays), then healed. Every acknowledged message must be there
//! exactly once on each node over IMAP, no client of either node may ever
//! have been shown one UID for two messages, and the nodes must converge.

mod common;
use common::{digest, free_udp_port, python, restart, wait_until, Node};
use std::collections::BTreeMap;
use std::time::Instant;

const SECRET: &str = "correct horse battery staple";
const USER: &str = "u@example.org";

fn start(dir: &std::path::Path, id: &str, port: u16, peers: &[u16], role: &str) -> Node {
    common::start_mirror(dir, id, port, peers, SECRET, role, "")
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

fn settled(nodes: &[Node]) -> bool {
    let quiet = |n: &Node| {
        let c = conflicts(n);
        c["uid_collisions"] == 0 && c["name_conflicts"] == 0 && c["kept_aside"] == 0
    };
    let d: Vec<_> = nodes.iter().map(digest).collect();
    d.windows(2).all(|w| w[0] == w[1]) && nodes.iter().all(quiet)
}

fn imap(node: &Node, script: &str) {
    python(node, &format!("from imaptest import *\nc = connect('{USER}')\n{script}"));
}

/// `n` nodes in a full mesh, `master` the master. Every node is stopped;
/// each of `writers` in turn runs alone and takes mail (LMTP into INBOX,
/// CREATE Foo and an APPEND to it, a flag on UID 1), so each writes
/// without seeing the others. Then every node starts again.
fn split(n: usize, master: usize, writers: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..n).map(|i| dir.path().join(format!("n{i}"))).collect();
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| {
            let peers: Vec<u16> = (0..n).filter(|j| *j != i).map(|j| ports[j]).collect();
            let role = if i == master { "master" } else { "slave" };
            start(&dirs[i], &format!("node-{i}"), ports[i], &peers, role)
        })
        .collect();
    let (ok, _, err) = nodes[0].cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    deliver(&nodes[0], "before", 3);
    assert!(wait_until(20, || settled(&nodes)), "the nodes did not converge before the cut");
    let mut rec = Recorder::default();
    for (i, node) in nodes.iter().enumerate() {
        rec.look(&format!("node-{i}"), node);
    }

    for node in nodes.drain(..) {
        assert!(node.stop());
    }
    let flags = ["\\\\Flagged", "\\\\Seen", "$Label"];
    for (k, w) in writers.iter().enumerate() {
        let node = restart(&dirs[*w]);
        deliver(&node, &format!("on-{w}"), 6);
        imap(
            &node,
            &format!(
                "ok(c.create('Foo'))\nok(c.append('Foo', None, None, message('foo-on-{w}')))\n\
                 ok(c.select('INBOX'))\nok(c.uid('STORE', '1', '+FLAGS', '({})'))\n",
                flags[k]
            ),
        );
        rec.look(&format!("node-{w}"), &node);
        assert!(node.stop());
    }

    // Heal, looking at every node over IMAP while they converge.
    let healed = Instant::now();
    let nodes: Vec<Node> = dirs.iter().map(|d| restart(d)).collect();
    let mut converged = None;
    for _ in 0..200 {
        for (i, node) in nodes.iter().enumerate() {
            rec.look(&format!("node-{i}"), node);
        }
        if settled(&nodes) {
            converged = Some(healed.elapsed());
            break;
        }
    }
    let took = converged.expect("the nodes did not converge after the heal");
    eprintln!(
        "{n} nodes, master node-{master}: converged {:.2}s after the restart",
        took.as_secs_f64()
    );
    assert!(took.as_secs() < 20, "convergence took {took:?}");

    let mut want: Vec<String> = (0..3).map(|i| format!("before-{i}")).collect();
    for w in writers {
        want.extend((0..6).map(|i| format!("on-{w}-{i}")));
    }
    want.sort();
    let mut want_foo: Vec<String> = writers.iter().map(|w| format!("foo-on-{w}")).collect();
    want_foo.sort();
    let views: Vec<Seen> = nodes.iter().map(imap_view).collect();
    for (i, (msgs, names)) in views.iter().enumerate() {
        rec.look(&format!("node-{i}"), &nodes[i]);
        assert_eq!(names.iter().filter(|x| *x == "Foo").count(), 1, "node-{i}: LIST shows {names:?}");
        let mut inbox: Vec<String> = msgs.iter().filter(|(k, _)| k.0 == "INBOX").map(|(_, v)| v.0.clone()).collect();
        inbox.sort();
        assert_eq!(inbox, want, "node-{i}: INBOX does not hold every delivery exactly once");
        let mut in_foo: Vec<String> = msgs.iter().filter(|(k, _)| k.0 == "Foo").map(|(_, v)| v.0.clone()).collect();
        in_foo.sort();
        assert_eq!(in_foo, want_foo, "node-{i}: Foo does not hold every side's message");
        let first = msgs.values().find(|v| v.0 == "before-0").unwrap();
        for f in &flags[..writers.len()] {
            let f = f.replace("\\\\", "\\");
            assert!(first.1.contains(&f), "node-{i}: flags not merged: {} lacks {f}", first.1);
        }
    }
    // Every node shows the same UIDs for the same messages.
    assert!(views.windows(2).all(|w| w[0] == w[1]), "the nodes show different UIDs");
    // The master's record names what it moved and why.
    let (ok, out, err) = nodes[master].cli(&["conflicts", "--json"], None);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let moved = report["resolved"].as_array().unwrap();
    assert!(moved.len() > 6, "expected colliding deliveries and Foo's messages moved: {out}");
    assert!(moved.iter().all(|m| m["resolved_by"].as_str().unwrap().contains(':')));
    assert!(report["pending"].as_array().unwrap().is_empty());
    for node in &nodes {
        assert_eq!(conflicts(node)["resolved"], moved.len());
    }
    let (ok, text, err) = nodes[master].cli(&["conflicts"], None);
    assert!(ok, "{err}");
    assert!(text.starts_with("pending     0 uid collisions   0 name conflicts"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("resolved    ")).count(),
        moved.len(),
        "{text}"
    );
    let (ok, status, err) = nodes[master].cli(&["status"], None);
    assert!(ok, "{err}");
    assert!(
        status.contains(&format!(
            "conflicts   kept aside 0   uid collisions pending 0   name conflicts pending 0   messages moved by the master {}",
            moved.len()
        )),
        "{status}"
    );
}

#[test]
fn a_cut_between_two_nodes_heals_with_the_master_on_the_first_side() {
    split(2, 0, &[0, 1]);
}

#[test]
fn a_cut_between_two_nodes_heals_with_the_master_on_the_second_side() {
    split(2, 1, &[0, 1]);
}

#[test]
fn three_nodes_heal_after_a_split_the_master_missed() {
    split(3, 0, &[1, 2]);
}

/// No cut at all: both nodes take deliveries for one mailbox at once, as
/// behind two MX records. Once the slave's links are up the master gives
/// every UID (`tests/mirror_concurrent.rs` checks that nothing is
/// renumbered); deliveries before that are assigned locally and renumbered.
/// Either way nothing may stay hidden or be shown twice.
#[test]
fn concurrent_deliveries_with_the_link_up_all_end_visible_once() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = start(&dir.path().join("a"), "node-a", pa, &[pb], "master");
    let b = start(&dir.path().join("b"), "node-b", pb, &[pa], "slave");
    let (ok, _, err) = a.cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    let nodes = vec![a, b];
    assert!(wait_until(10, || settled(&nodes)));
    // A client stays in INBOX on the slave throughout: it must see the
    // renumbered messages expunged and arrive again, never a UID change
    // its meaning.
    let watcher = watch_inbox(&nodes[1], 200);
    std::thread::scope(|s| {
        s.spawn(|| deliver(&nodes[0], "at-a", 100));
        s.spawn(|| deliver(&nodes[1], "at-b", 100));
    });
    let healed = Instant::now();
    assert!(wait_until(30, || settled(&nodes)), "the nodes did not settle");
    eprintln!("settled {:.2}s after the last delivery", healed.elapsed().as_secs_f64());
    let mut want: Vec<String> = (0..100).flat_map(|i| [format!("at-a-{i}"), format!("at-b-{i}")]).collect();
    want.sort();
    let views: Vec<Seen> = nodes.iter().map(imap_view).collect();
    for (i, (msgs, _)) in views.iter().enumerate() {
        let mut inbox: Vec<String> = msgs.iter().filter(|(k, _)| k.0 == "INBOX").map(|(_, v)| v.0.clone()).collect();
        inbox.sort();
        assert_eq!(inbox, want, "node-{i}: INBOX does not hold every delivery exactly once");
    }
    assert_eq!(views[0], views[1], "the nodes show different UIDs");
    let report = common::admin_get(&nodes[0], "/v1/conflicts");
    let moved = report["resolved"].as_array().unwrap().len();
    eprintln!("{moved} messages renumbered");
    let (expunges, vanished) = watched(watcher);
    assert!(expunges >= vanished, "the client lost sight of {vanished} UIDs without EXPUNGE");
}

/// (EXPUNGEs the watching client got, UIDs it saw that are gone now).
fn watched(watcher: std::process::Child) -> (usize, usize) {
    let out = watcher.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the watching client failed:\n{text}");
    eprintln!("watching client: {}", text.trim());
    let line = text
        .lines()
        .find(|l| l.starts_with("EXPUNGES "))
        .unwrap_or_else(|| panic!("{text}"));
    let words: Vec<&str> = line.split(' ').collect();
    let field = |name: &str| -> usize {
        let i = words.iter().position(|w| *w == name).unwrap_or_else(|| panic!("{text}"));
        words[i + 1].parse().unwrap()
    };
    // Every UID the client saw and that is gone now must have come with an
    // EXPUNGE (a message moved between two polls is never seen at all).
    (field("EXPUNGES"), field("UIDS") - field("NOW"))
}

/// A client that has a message under a UID when the heal renumbers it sees
/// EXPUNGE, then the message arriving again under a new UID.
#[test]
fn a_connected_client_sees_its_colliding_message_expunged_and_arrive_again() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = start(&da, "node-a", pa, &[pb], "master");
    let b = start(&db, "node-b", pb, &[pa], "slave");
    let (ok, _, err) = a.cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    let nodes = vec![a, b];
    assert!(wait_until(10, || settled(&nodes)));
    let [a, b]: [Node; 2] = nodes.try_into().ok().unwrap();
    assert!(b.stop());
    deliver(&a, "on-a", 1);
    assert!(a.stop());
    let b = restart(&db);
    deliver(&b, "on-b", 1);
    // The client on B has UID 1 = on-b-0 when A comes back.
    let ready = dir.path().join("watcher-ready");
    let watcher = watch_inbox_ready(&b, 2, Some(&ready));
    assert!(wait_until(30, || ready.exists()), "the watching client never listed the mailbox");
    let a = restart(&da);
    let nodes = vec![a, b];
    assert!(wait_until(20, || settled(&nodes)), "the nodes did not settle");
    let (expunges, vanished) = watched(watcher);
    assert!(vanished >= 1, "the client never saw the colliding UID go");
    assert!(expunges >= vanished, "the client lost sight of {vanished} UIDs without EXPUNGE");
}

/// A Python IMAP client on `node` that stays in INBOX, polls with NOOP and
/// UID FETCH until it has seen `want` messages three times in a row, and
/// fails if a UID ever names two messages. Prints the EXPUNGEs it got.
fn watch_inbox(node: &Node, want: usize) -> std::process::Child {
    watch_inbox_ready(node, want, None)
}

/// [`watch_inbox`], touching `ready` once its first FETCH has listed the
/// mailbox (so a test can wait until the client has really seen it).
fn watch_inbox_ready(node: &Node, want: usize, ready: Option<&std::path::Path>) -> std::process::Child {
    let ready = ready.map(|p| p.display().to_string()).unwrap_or_default();
    let (host, port) = node
        .addr("imap")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    let script = format!(
        r#"
import re, time
from imaptest import *
c = connect('{USER}')
ok(c.select('INBOX'))
seen, expunges, stable, n = {{}}, 0, 0, 0
deadline = time.time() + 40
while time.time() < deadline and stable < 3:
    ok(c.noop())
    expunges += len(c.untagged_responses.pop('EXPUNGE', []))
    c.untagged_responses.pop('EXISTS', None)
    c.untagged_responses.pop('RECENT', None)
    typ, data = c.uid('FETCH', '1:*', '(BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
    n = 0
    for item in (data if typ == 'OK' else []):
        if not isinstance(item, tuple):
            continue
        uid = re.search(r'UID (\d+)', item[0].decode()).group(1)
        subj = item[1].decode().strip().split(':', 1)[1].strip()
        assert seen.setdefault(uid, subj) == subj, ('UID', uid, seen[uid], subj)
        n += 1
    if '{ready}' and n > 0:
        open('{ready}', 'w').close()
    stable = stable + 1 if n == {want} else 0
    time.sleep(0.05)
print('EXPUNGES', expunges, 'UIDS', len(seen), 'NOW', n)
assert n == {want}, n
"#
    );
    std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py"))
        .env("IMAP_HOST", host)
        .env("IMAP_PORT", port)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3")
}

/// A UDP relay standing in for the network between two nodes: it forwards
/// datagrams from the first client it hears to `upstream` and the answers
/// back, and drops everything while it is cut.
struct Relay {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn new(upstream: u16) -> Relay {
        use std::net::{SocketAddr, UdpSocket};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        for s in [&front, &back] {
            s.set_read_timeout(Some(std::time::Duration::from_millis(50))).unwrap();
        }
        let port = front.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let to: SocketAddr = format!("127.0.0.1:{upstream}").parse().unwrap();
        // Client to upstream.
        {
            let (front, back, open, stop, client) = (front.clone(), back.clone(), open.clone(), stop.clone(), client.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        *client.lock().unwrap() = Some(from);
                        if open.load(Ordering::Relaxed) {
                            let _ = back.send_to(&buf[..n], to);
                        }
                    }
                }
            });
        }
        // Upstream back to the client.
        {
            let (open, stop) = (open.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = back.recv_from(&mut buf) {
                        let c = *client.lock().unwrap();
                        if let (true, Some(c)) = (open.load(Ordering::Relaxed), c) {
                            let _ = front.send_to(&buf[..n], c);
                        }
                    }
                }
            });
        }
        Relay { port, open, stop }
    }

    fn cut(&self, cut: bool) {
        self.open.store(!cut, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Both daemons keep running while the network between them is cut: the
/// master and its slave both take deliveries, a folder of the same name
/// with a message, and different flags on one message, the master moves a
/// message, the slave expunges another, copies a third and renames a
/// folder; then the network
/// heals. Every acknowledged message is on both nodes exactly once, no
/// client was shown one UID for two messages, and the nodes converge.
#[test]
fn a_network_cut_while_both_nodes_run_heals_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    // A dials B through one relay, B dials A through the other.
    let (ab, ba) = (Relay::new(pb), Relay::new(pa));
    let conf = |sub: &str, id: &str, port: u16, peer: u16, role: &str| {
        common::start_mirror(&dir.path().join(sub), id, port, &[peer], SECRET, role, "idle_timeout_ms = 1000\n")
    };
    let a = conf("a", "node-a", pa, ab.port, "master");
    let b = conf("b", "node-b", pb, ba.port, "slave");
    let nodes = [a, b];
    let (ok, _, err) = nodes[0].cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    deliver(&nodes[0], "before", 3);
    assert!(wait_until(30, || settled(&nodes)), "the nodes did not converge before the cut");
    let mut rec = Recorder::default();
    let names = ["node-a", "node-b"];
    for (n, node) in names.iter().zip(&nodes) {
        rec.look(n, node);
    }

    ab.cut(true);
    ba.cut(true);
    let flags = ["\\\\Flagged", "\\\\Seen"];
    for (k, node) in nodes.iter().enumerate() {
        deliver(node, &format!("cut-{k}"), 8);
        imap(
            node,
            &format!(
                "ok(c.create('Foo'))\nok(c.append('Foo', None, None, message('foo-{k}')))\n\
                 ok(c.select('INBOX'))\nok(c.uid('STORE', '1', '+FLAGS', '({})'))\n{}",
                flags[k],
                // The master moves before-1 to Archive; the slave expunges before-2.
                if k == 0 {
                    "ok(c.uid('MOVE', '2', 'Archive'))\n"
                } else {
                    "ok(c.uid('STORE', '3', '+FLAGS', '(\\\\Deleted)'))\nok(c.expunge())\n\
                     ok(c.uid('COPY', '1', 'Junk'))\nok(c.rename('Drafts', 'Drafts2'))\n"
                }
            ),
        );
        rec.look(names[k], node);
    }
    // The cut is real: neither side sees the other's deliveries yet.
    for (k, node) in nodes.iter().enumerate() {
        let (msgs, _) = rec.look(names[k], node);
        let other = format!("cut-{}-", 1 - k);
        assert!(
            !msgs.values().any(|v| v.0.starts_with(&other)),
            "{}: saw the other side's mail during the cut",
            names[k]
        );
    }

    ab.cut(false);
    ba.cut(false);
    let healed = Instant::now();
    let mut converged = None;
    for _ in 0..300 {
        for (n, node) in names.iter().zip(&nodes) {
            rec.look(n, node);
        }
        if settled(&nodes) {
            converged = Some(healed.elapsed());
            break;
        }
    }
    let took = converged.expect("the nodes did not converge after the network healed");
    eprintln!("converged {:.2}s after the network healed", took.as_secs_f64());
    assert!(took.as_secs_f64() < 5.0, "convergence took {took:?}");

    let mut want: Vec<String> = vec!["before-0".to_string()];
    for k in 0..2 {
        want.extend((0..8).map(|i| format!("cut-{k}-{i}")));
    }
    want.sort();
    let views: Vec<Seen> = nodes.iter().map(imap_view).collect();
    for (i, (msgs, list)) in views.iter().enumerate() {
        rec.look(names[i], &nodes[i]);
        assert_eq!(list.iter().filter(|x| *x == "Foo").count(), 1, "{}: LIST shows {list:?}", names[i]);
        let mut inbox: Vec<String> = msgs.iter().filter(|(k, _)| k.0 == "INBOX").map(|(_, v)| v.0.clone()).collect();
        inbox.sort();
        assert_eq!(inbox, want, "{}: INBOX does not hold every delivery exactly once", names[i]);
        let mut foo: Vec<String> = msgs.iter().filter(|(k, _)| k.0 == "Foo").map(|(_, v)| v.0.clone()).collect();
        foo.sort();
        assert_eq!(foo, ["foo-0", "foo-1"], "{}: Foo does not hold both sides' messages", names[i]);
        let archive: Vec<&String> = msgs.iter().filter(|(k, _)| k.0 == "Archive").map(|(_, v)| &v.0).collect();
        assert_eq!(archive, ["before-1"], "{}: Archive does not hold the moved message once", names[i]);
        let junk: Vec<&String> = msgs.iter().filter(|(k, _)| k.0 == "Junk").map(|(_, v)| &v.0).collect();
        assert_eq!(junk, ["before-0"], "{}: Junk does not hold the copied message once", names[i]);
        assert!(
            list.iter().any(|x| x == "Drafts2") && !list.iter().any(|x| x == "Drafts"),
            "{}: the rename did not reach: {list:?}",
            names[i]
        );
        let first = msgs.values().find(|v| v.0 == "before-0").unwrap();
        for f in flags {
            let f = f.replace("\\\\", "\\");
            assert!(first.1.contains(&f), "{}: flags not merged: {} lacks {f}", names[i], first.1);
        }
    }
    assert!(views[0] == views[1], "the nodes show different UIDs");
}
