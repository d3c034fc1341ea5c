//! Kill -9 during an LMTP delivery burst: every message that got its 250 is
//! in the store after restart, nothing is half-present, the chains verify
//! and the views equal a replay of the log.

mod common;
use common::{Node, Raw};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem::replay::{replay_into, views_digest};
use tandem::store::{wal_options, Store};
use tandem::views::ViewRead;

/// Deliver until the connection breaks; returns the blob hashes acknowledged.
fn burst(addr: String, user: String, thread: usize, acked: Arc<Mutex<Vec<(String, String)>>>) {
    let Ok(s) = std::net::TcpStream::connect(&addr) else { return };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c = Raw {
        r: std::io::BufReader::new(s.try_clone().unwrap()),
        w: s,
    };
    let mut ok = || -> Option<()> {
        let greet = c.reply();
        greet.starts_with("220").then_some(())?;
        c.w_send(b"LHLO burst\r\n")?;
        c.reply();
        for i in 0..100_000u32 {
            let body = format!(
                "Subject: burst {thread}/{i}\r\nMessage-ID: <{thread}.{i}@burst>\r\n\r\n{}\r\n",
                "x".repeat(2000 + (i as usize % 500))
            );
            let wire = format!("MAIL FROM:<s@x.example>\r\nRCPT TO:<{user}>\r\nDATA\r\n{body}.\r\n");
            c.w_send(wire.as_bytes())?;
            // MAIL, RCPT, DATA (354), then the delivery's own reply.
            for want in ["250", "250", "354", "250"] {
                let r = c.try_reply()?;
                if !r.starts_with(want) {
                    return None;
                }
            }
            // Stored behind the trace headers, whose Received: line carries
            // the time of delivery.
            acked.lock().unwrap().push((user.clone(), body));
        }
        Some(())
    };
    let _ = ok();
}

trait RawExt {
    fn w_send(&mut self, b: &[u8]) -> Option<()>;
    fn try_reply(&mut self) -> Option<String>;
}

impl RawExt for Raw {
    fn w_send(&mut self, b: &[u8]) -> Option<()> {
        use std::io::Write;
        self.w.write_all(b).ok()
    }
    fn try_reply(&mut self) -> Option<String> {
        use std::io::BufRead;
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(n) if n > 0 => Some(l),
            _ => None,
        }
    }
}

#[test]
fn kill_9_during_delivery_burst_keeps_every_250() {
    let dir = tempfile::tempdir().unwrap();
    let users = ["u1@x.example", "u2@x.example", "u3@x.example", "u4@x.example"];
    let cfg = common::write_config(dir.path(), "burst", "");
    let mut total = 0;
    for round in 0..3 {
        let node = Node::start(dir.path(), Some(&cfg));
        if round == 0 {
            for u in users {
                let (ok, _, err) = node.cli(&["user", "add", u, "--password-stdin"], Some("pw\n"));
                assert!(ok, "{err}");
            }
        }
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = users
            .iter()
            .enumerate()
            .map(|(t, u)| {
                let (addr, user, acked) = (node.addr("lmtp"), u.to_string(), acked.clone());
                std::thread::spawn(move || burst(addr, user, t + round * 10, acked))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(800 + round as u64 * 300));
        let mut node = node;
        node.child.kill().unwrap();
        node.child.wait().unwrap();
        for t in threads {
            t.join().unwrap();
        }
        drop(node);
        let acked = Arc::try_unwrap(acked).unwrap().into_inner().unwrap();
        assert!(acked.len() > 20, "round {round}: the burst barely ran ({} acks)", acked.len());
        total += acked.len();

        let store = Store::open(&dir.path().join("data/db"), "burst", wal_options("burst")).unwrap();
        let v = store.views();
        let mut held = std::collections::BTreeSet::new();
        for u in users {
            let inbox = v.mailbox_by_name(u, "INBOX").unwrap().unwrap();
            for (uid, m) in v.messages(inbox.id).unwrap() {
                let body = store
                    .blob(&m.blob)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{u} uid {uid}: message without its body"));
                assert_eq!(body.len() as u64, m.size);
                assert_eq!(
                    blake3::hash(&body).as_bytes(),
                    &m.blob.0,
                    "{u} uid {uid}: body does not match its hash"
                );
                let text = String::from_utf8(body).unwrap();
                let prefix = format!("Return-Path: <s@x.example>\r\nDelivered-To: {u}\r\nReceived: from ");
                assert!(text.starts_with(&prefix), "{u} uid {uid}: trace headers: {text:.200}");
                let start = text
                    .find("\r\nSubject: burst ")
                    .expect("the delivered header follows the trace headers")
                    + 2;
                held.insert((u.to_string(), text[start..].to_string()));
            }
        }
        for a in &acked {
            assert!(held.contains(a), "round {round}: acknowledged delivery to {} lost", a.0);
        }
        store.wal().verify_all().unwrap();
        let replica_dir = tempfile::tempdir().unwrap();
        let mut o = wal_options("replica");
        o.sync = false;
        let replica = Store::open(replica_dir.path(), "replica", o).unwrap();
        replay_into(&store, &replica).unwrap();
        assert_eq!(views_digest(&replica).unwrap(), views_digest(&store).unwrap());
        store.close().unwrap();
        eprintln!("round {round}: {} deliveries acknowledged before SIGKILL, all present", acked.len());
    }
    assert!(total > 60);
}
