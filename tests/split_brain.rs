//! Split brain with real daemons: a master and a slave written to on both
//! sides of a cut (one node stopped while the other takes mail, then the
//! other way round; or both running with the network between them cut by
//! UDP relays), then healed. Every acknowledged message must be there
//! exactly once on each node over IMAP, no client of either node may ever
//! have been shown one UID for two messages, and the nodes must converge.

mod common;
mod split;
use common::{free_udp_port, restart, wait_until, Node};
use split::{conflicts, deliver, imap, imap_view, settled, Recorder, Seen, SECRET, USER};
use std::time::Instant;

fn start(dir: &std::path::Path, id: &str, port: u16, peers: &[u16], role: &str) -> Node {
    common::start_mirror(dir, id, port, peers, SECRET, role, "")
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
            "conflicts   kept aside 0   uid collisions pending 0 (0 reported to the master)   name conflicts pending 0   messages moved by the master {}",
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

/// Both daemons keep running while the network between them is cut: the
/// master and its slave both take deliveries, a folder of the same name
/// with a message, and different flags on one message, the master moves a
/// message, the slave expunges another, copies a third and renames a
/// folder; then the network heals. Every acknowledged message is on both
/// nodes exactly once, no client was shown one UID for two messages, and
/// the nodes converge (`split::cut_and_heal`).
#[test]
fn a_network_cut_while_both_nodes_run_heals_without_loss() {
    split::cut_and_heal(split::Cut {
        nodes: 2,
        master: 0,
        sides: &[0, 1],
        master_down: false,
    });
}
