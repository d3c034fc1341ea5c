//! The master as UID authority with real daemons: a healthy pair takes
//! deliveries for one mailbox on both nodes at once, flat out. The slave's
//! messages wait (invisible, durable) for the master's placement, so no UID
//! is ever given twice and nothing is renumbered. And when the master is
//! silent or gone, the slave places its mail itself and everything
//! converges once the master is back.

mod common;
use common::{admin_get, digest, free_udp_port, python, restart, wait_until, Node};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SECRET: &str = "correct horse battery staple";
const USER: &str = "u@example.org";

fn start(dir: &std::path::Path, id: &str, port: u16, peers: &[u16], role: &str) -> Node {
    common::start_mirror(dir, id, port, peers, SECRET, role, "")
}

/// A master and a slave with the user, links up both ways, the slave
/// knowing its peer as the master.
fn pair(dir: &std::path::Path) -> (Node, Node) {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = start(&dir.join("a"), "node-a", pa, &[pb], "master");
    let b = start(&dir.join("b"), "node-b", pb, &[pa], "slave");
    let (ok, _, err) = a.cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(wait_until(20, || linked(&b) && settled(&[&a, &b])), "the pair never linked up");
    (a, b)
}

/// The slave's links to the master are up in both directions.
fn linked(slave: &Node) -> bool {
    let m = &admin_get(slave, "/v1/status")["mirror"];
    let out = m["outgoing"]
        .as_array()
        .is_some_and(|o| o.iter().any(|l| l["state"] == "connected"));
    let inc = m["incoming"]
        .as_object()
        .is_some_and(|i| i.values().any(|l| l["connected"] == true && l["peer_role"] == "master"));
    out && inc
}

fn conflicts(node: &Node) -> serde_json::Value {
    admin_get(node, "/v1/status")["conflicts"].clone()
}

/// Same digest, nothing kept aside, pending or marked anywhere.
fn settled(nodes: &[&Node]) -> bool {
    let quiet = |n: &Node| {
        let c = conflicts(n);
        c["uid_collisions"] == 0 && c["name_conflicts"] == 0 && c["kept_aside"] == 0 && c["awaiting_master"] == 0
    };
    let d: Vec<_> = nodes.iter().map(|n| digest(n)).collect();
    d.windows(2).all(|w| w[0] == w[1]) && nodes.iter().all(|n| quiet(n))
}

/// Deliver messages `range` tagged `tag` over one LMTP connection; every one
/// must get its 250.
fn deliver(node: &Node, tag: &str, range: std::ops::Range<usize>) {
    common::deliver_range(node, USER, tag, range);
}

/// INBOX as an IMAP client of `node` sees it: UID -> Message-ID, in UID order.
fn inbox(node: &Node) -> Vec<(u32, String)> {
    folder(node, "INBOX")
}

/// A folder as an IMAP client of `node` sees it: UID -> Message-ID, in UID order.
fn folder(node: &Node, name: &str) -> Vec<(u32, String)> {
    let out = python(
        node,
        &format!(
            r#"
import re
from imaptest import *
c = connect('{USER}')
n = int(ok(c.select('{name}'))[0])
if n:
    typ, data = c.uid('FETCH', '1:*', '(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])')
    assert typ == 'OK'
    for item in data:
        if isinstance(item, tuple):
            uid = re.search(r'UID (\d+)', item[0].decode()).group(1)
            mid = item[1].decode().strip().split(':', 1)[1].strip()
            print('MSG', uid, mid)
"#
        ),
    );
    let mut v: Vec<(u32, String)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("MSG "))
        .map(|l| {
            let (u, m) = l.split_once(' ').unwrap();
            (u.parse().unwrap(), m.to_string())
        })
        .collect();
    v.sort();
    v
}

/// Every `want` Message-ID exactly once, UIDs strictly ascending, and the
/// same UIDs on every node.
fn check_same(nodes: &[&Node], want: &[String]) -> Vec<(u32, String)> {
    let first = inbox(nodes[0]);
    for n in nodes {
        let got = inbox(n);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "UIDs not strictly ascending");
        let mut ids: Vec<String> = got.iter().map(|m| m.1.clone()).collect();
        ids.sort();
        let mut w = want.to_vec();
        w.sort();
        assert_eq!(ids, w, "INBOX does not hold every delivery exactly once");
        assert_eq!(got, first, "the nodes show different UIDs");
    }
    first
}

/// IMAP APPEND on `node` (logged in first): (time the APPEND took,
/// UIDVALIDITY, UID) from APPENDUID.
fn append(node: &Node, mid: &str) -> (Duration, u32, u32) {
    let out = python(
        node,
        &format!(
            r#"
import re, time
from imaptest import *
c = connect('{USER}')
t = time.monotonic()
typ, data = c.append('INBOX', None, None, b'Subject: appended\r\nMessage-ID: {mid}\r\n\r\nhi\r\n')
took = time.monotonic() - t
assert typ == 'OK', data
m = re.search(rb'APPENDUID (\d+) (\d+)', data[0])
print('APPENDUID', m.group(1).decode(), m.group(2).decode(), int(took * 1e6))
"#
        ),
    );
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("APPENDUID "))
        .unwrap_or_else(|| panic!("{out}"));
    let f: Vec<u64> = line.split(' ').map(|w| w.parse().unwrap()).collect();
    (Duration::from_micros(f[2]), f[0] as u32, f[1] as u32)
}

fn resolved(node: &Node) -> usize {
    admin_get(node, "/v1/conflicts")["resolved"].as_array().unwrap().len()
}

/// No cut at all: 200 deliveries on each node at the same time, two LMTP
/// connections per node. All 400 end visible exactly once, under the same
/// strictly ascending UIDs on both nodes, and the master renumbered
/// nothing. An APPEND on the slave names in APPENDUID the UID the message
/// has on both nodes.
#[test]
fn both_nodes_deliver_flat_out_and_nothing_is_renumbered() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path());
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| deliver(&a, "at-a", 0..100));
        s.spawn(|| deliver(&a, "at-a", 100..200));
        s.spawn(|| deliver(&b, "at-b", 0..100));
        s.spawn(|| deliver(&b, "at-b", 100..200));
    });
    eprintln!("400 deliveries in {:.2}s", started.elapsed().as_secs_f64());
    let done = Instant::now();
    assert!(wait_until(30, || settled(&[&a, &b])), "the nodes did not settle");
    eprintln!("settled {:.2}s after the last delivery", done.elapsed().as_secs_f64());
    let want: Vec<String> = (0..200).flat_map(|i| [format!("<{i}@at-a>"), format!("<{i}@at-b>")]).collect();
    let shown = check_same(&[&a, &b], &want);
    assert_eq!(shown.last().map(|m| m.0), Some(400), "UIDs have gaps: something was renumbered");
    for n in [&a, &b] {
        assert_eq!(resolved(n), 0, "messages were renumbered");
        assert_eq!(conflicts(n)["resolved"], 0);
    }
    let (took, uv, uid) = append(&b, "<appended@b>");
    eprintln!("APPEND on the slave answered in {:.1} ms", took.as_secs_f64() * 1000.0);
    assert_eq!(uid, 401, "the APPENDUID is not the master's next UID");
    assert!(wait_until(10, || settled(&[&a, &b])));
    let uidvalidity = |n: &Node| -> u32 {
        python(
            n,
            &format!(
                "from imaptest import *\nc = connect('{USER}')\nok(c.select('INBOX'))\nprint(c.response('UIDVALIDITY')[1][0].decode())"
            ),
        )
        .trim()
        .parse()
        .unwrap()
    };
    for n in [&a, &b] {
        let got = inbox(n);
        assert_eq!(
            got.last(),
            Some(&(uid, "<appended@b>".to_string())),
            "APPENDUID names another message"
        );
        assert_eq!(uidvalidity(n), uv);
    }
    // COPY and MOVE on the slave: COPYUID names the UIDs the master gave.
    let out = python(
        &b,
        &format!(
            r#"
import re
from imaptest import *
c = connect('{USER}')
ok(c.select('INBOX'))
typ, data = c.uid('COPY', '1', 'Archive')
assert typ == 'OK', data
print('COPY', c.response('COPYUID')[1][0].split()[2].decode())
typ, data = c.uid('MOVE', '2', 'Archive')
assert typ == 'OK', data
print('MOVE', c.response('COPYUID')[1][0].split()[2].decode())
"#
        ),
    );
    let field = |w: &str| -> u32 {
        out.lines()
            .find_map(|l| l.strip_prefix(w))
            .unwrap_or_else(|| panic!("{out}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (copied, moved) = (field("COPY "), field("MOVE "));
    assert_eq!((copied, moved), (1, 2), "COPYUID does not name the master's next UIDs in Archive");
    assert!(wait_until(10, || settled(&[&a, &b])));
    let archive = folder(&a, "Archive");
    assert_eq!(
        archive,
        vec![(1, shown[0].1.clone()), (2, shown[1].1.clone())],
        "Archive on the master"
    );
    assert_eq!(folder(&b, "Archive"), archive, "Archive on the slave");
    assert!(!inbox(&a).iter().any(|m| m.0 == 2), "the moved message is still in INBOX");
    for n in [&a, &b] {
        assert_eq!(resolved(n), 0, "messages were renumbered");
    }
    // Every message the slave took (200 deliveries, the APPEND, the COPY and
    // the MOVE) was appended pending and placed by the master, once.
    let tail = admin_get(&b, "/v1/log/tail?n=5000");
    let events: Vec<&str> = tail.as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    let pending = events
        .iter()
        .filter(|e| e.starts_with("message-appended") && e.contains(" uid=0 "))
        .count();
    let placed = events.iter().filter(|e| e.starts_with("message-placed")).count();
    assert_eq!((pending, placed), (203, 203), "pending appends and placements in the slave's log");
    assert!(a.stop() && b.stop());
}

/// The master falls silent (SIGSTOP: its links still look up) and then
/// goes away (stopped): the slave's mail stays visible and nothing is lost.
/// Silent: an APPEND waits for the bound, then takes a local UID; LMTP
/// deliveries are placed locally once their bound passes. Gone: deliveries
/// are shown at once. When the master is back, both nodes converge on one
/// copy of every message under the same UIDs.
#[test]
fn a_slave_whose_master_is_silent_or_gone_still_shows_its_mail() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path());
    deliver(&a, "before", 0..2);
    a.signal("-STOP");
    deliver(&b, "silent", 0..2);
    let (took, _, uid) = append(&b, "<appended@silent>");
    a.signal("-CONT");
    eprintln!("APPEND with a silent master answered in {:.2}s with UID {uid}", took.as_secs_f64());
    assert!(took >= Duration::from_millis(1500), "the APPEND did not wait for the master");
    assert!(took < Duration::from_secs(8), "the APPEND waited past its bound");
    assert!(
        wait_until(30, || settled(&[&a, &b])),
        "the nodes did not settle after the master woke"
    );
    let mut want: Vec<String> = vec!["<0@before>".into(), "<1@before>".into(), "<0@silent>".into(), "<1@silent>".into()];
    want.push("<appended@silent>".into());
    check_same(&[&a, &b], &want);

    // Gone: the slave assigns locally and shows the mail at once.
    let da = a.dir.clone();
    assert!(a.stop());
    assert!(wait_until(10, || !linked(&b)), "the slave never noticed the master leave");
    deliver(&b, "gone", 0..2);
    let shown = inbox(&b);
    assert!(
        shown.iter().any(|m| m.1 == "<1@gone>"),
        "a delivery with the master gone is not shown at once: {shown:?}"
    );
    let a = restart(&da);
    deliver(&a, "back", 0..1);
    assert!(
        wait_until(30, || settled(&[&a, &b])),
        "the nodes did not settle after the master came back"
    );
    want.extend(["<0@gone>", "<1@gone>", "<0@back>"].map(String::from));
    let both = check_same(&[&a, &b], &want);
    let by_id: BTreeMap<String, u32> = both.into_iter().map(|(u, m)| (m, u)).collect();
    assert_eq!(by_id.len(), want.len());
    assert!(a.stop() && b.stop());
}
