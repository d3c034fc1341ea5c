//! Merkle resync end to end: real daemons mirroring over QUIC, `tandem
//! digest`, `tandem verify` and `tandem resync`. Damage the log cannot
//! explain is made by stopping a node and changing its views without a log
//! entry (as a restored filesystem copy or a bug would), then starting it.

mod common;
use common::{admin_get, blob, digest, free_udp_port, messages, mirror_section, python, wait_until, write_config, Node};
use std::path::PathBuf;
use tandem::event::{Event, FlagOp, Flags};
use tandem::store::{wal_options, Store};
use tandem::views::ViewRead;

const SECRET: &str = "resync test secret";
const USER: &str = "u@example.org";

struct Pair {
    _dir: tempfile::TempDir,
    a: Node,
    b: Node,
    a_dir: PathBuf,
    ports: (u16, u16),
    b_dir: PathBuf,
    b_cfg: PathBuf,
    a_mirror: String,
    b_mirror: String,
}

fn start_pair() -> Pair {
    start_pair_with("", "")
}

/// A pair whose `[mirror]` sections end with `a_extra` and `b_extra`.
fn start_pair_with(a_extra: &str, b_extra: &str) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let a_cfg = write_config(&a_dir, "node-a", &(mirror_section(pa, &[pb], SECRET) + a_extra));
    let b_cfg = write_config(&b_dir, "node-b", &(mirror_section(pb, &[pa], SECRET) + b_extra));
    let a = Node::start(&a_dir, Some(&a_cfg));
    let b = Node::start(&b_dir, Some(&b_cfg));
    let (ok, _, err) = a.cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    Pair {
        _dir: dir,
        a,
        b,
        a_dir,
        ports: (pa, pb),
        b_dir,
        b_cfg,
        a_mirror: format!("127.0.0.1:{pa}"),
        b_mirror: format!("127.0.0.1:{pb}"),
    }
}

fn converged(a: &Node, b: &Node, secs: u64) -> bool {
    wait_until(secs, || digest(a) == digest(b))
}

fn deliver(node: &Node, n: usize) {
    let mut c = common::Raw::connect(&node.addr("lmtp"));
    c.reply();
    c.send(b"LHLO resync\r\n");
    c.reply();
    for i in 0..n {
        c.send(
            format!(
                "MAIL FROM:<s@x>\r\nRCPT TO:<{USER}>\r\nDATA\r\nSubject: m {i}\r\nMessage-ID: <{i}@resync>\r\n\r\nbody number {i}\r\n.\r\n"
            )
            .as_bytes(),
        );
        for _ in 0..4 {
            let r = c.reply();
            assert!(r.starts_with('2') || r.starts_with('3'), "{r}");
        }
    }
}

fn json_cli(node: &Node, args: &[&str]) -> (bool, serde_json::Value, String) {
    let (ok, out, err) = node.cli(args, None);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out} {err}"));
    (ok, v, err)
}

/// Apply `events` to the views of a stopped node's store without
/// appending them to its log: state its log cannot explain.
fn damage(store: &Store, events: Vec<Event>) {
    store.apply_unlogged(events).unwrap();
}

#[test]
fn equal_nodes_show_no_difference() {
    let p = start_pair();
    deliver(&p.a, 20);
    assert!(converged(&p.a, &p.b, 20), "the pair did not converge");

    let (ok, out, err) = p.a.cli(&["verify", "--peer", &p.b_mirror], None);
    assert!(ok, "verify of equal nodes failed: {out} {err}");
    assert!(out.contains("0 difference(s)"), "{out}");

    let (ok, r, err) = json_cli(&p.a, &["resync", "--fast", "--json", "--peer", &p.b_mirror]);
    assert!(ok, "{err}");
    assert_eq!(r["differences"], 0, "{r}");
    assert_eq!(r["repaired"], 0, "{r}");
    assert_eq!(r["compared"], 20, "{r}");
    assert_eq!(r["logs_in_step"], true, "{r}");
    // One user: the node root's level answers it in one round trip.
    assert!(r["bytes_sent"].as_u64().unwrap() < 1000, "{r}");
    assert!(r["seconds"].as_f64().is_some(), "{r}");

    let (_, da, _) = json_cli(&p.a, &["digest", "--json", "--user", USER]);
    let (_, db, _) = json_cli(&p.b, &["digest", "--json", "--user", USER]);
    assert_eq!(da["root"], db["root"]);
    assert_eq!(da["user"], db["user"]);
    assert_eq!(da["messages"], 20);
    let (ok, text, _) = p.b.cli(&["digest", "--user", USER, "--folder", "INBOX"], None);
    assert!(ok);
    assert!(text.contains(da["root"].as_str().unwrap()), "{text}");
    assert!(text.contains("uids 0..=63"), "{text}");
}

/// The connection of one exchange is kept for the next with the same
/// peer (no handshakes: the greeting is not sent again), and a kept
/// connection that ended with the peer's process is dialed again.
#[test]
fn a_connection_is_kept_for_the_next_exchange_and_redialed_after_the_peer_restarts() {
    let Pair {
        _dir,
        a,
        b,
        b_dir,
        b_mirror,
        ..
    } = start_pair();
    deliver(&a, 5);
    assert!(converged(&a, &b, 20), "the pair did not converge");
    let verify = || {
        let (ok, r, err) = json_cli(&a, &["verify", "--json", "--peer", &b_mirror]);
        assert!(ok, "{r} {err}");
        assert_eq!(r["differences"], 0, "{r}");
        r
    };
    let first = verify();
    assert_eq!(first["connection_kept"], false, "{first}");
    let again = verify();
    assert_eq!(again["connection_kept"], true, "{again}");
    // Without the greeting, the same reads cost fewer bytes.
    assert!(
        again["bytes_sent"].as_u64().unwrap() < first["bytes_sent"].as_u64().unwrap(),
        "{first} {again}"
    );
    // The peer's summaries come with its heads: one round trip, not two.
    assert_eq!(first["round_trips"], 2, "{first}");
    assert_eq!(again["round_trips"], 1, "{again}");

    assert!(b.stop());
    let b = common::restart(&b_dir);
    assert!(converged(&a, &b, 20), "the pair did not converge after the restart");
    let after = verify();
    assert_eq!(after["connection_kept"], false, "{after}");
    assert_eq!(verify()["connection_kept"], true);
}

/// Without a terminal, `tandem resync` names its phase and counts on
/// standard error while the node runs it, and keeps standard output for
/// the report. The peer is frozen for a while so the run outlasts a few
/// of the command's status polls.
#[test]
fn a_running_resync_shows_its_progress() {
    let p = start_pair();
    deliver(&p.a, 6);
    assert!(converged(&p.a, &p.b, 20), "the pair did not converge");
    p.b.signal("-STOP");
    let (ok, out, err) = std::thread::scope(|s| {
        let run = s.spawn(|| p.a.cli(&["resync", "--peer", &p.b_mirror], None));
        // The run is under way (and shown in status) before the peer answers.
        let running = wait_until(10, || !admin_get(&p.a, "/v1/status")["resync"]["running"].is_null());
        std::thread::sleep(std::time::Duration::from_millis(1200));
        p.b.signal("-CONT");
        assert!(running, "status never showed the resync running");
        run.join().unwrap()
    });
    assert!(ok, "{out} {err}");
    let line = format!("comparing {}: folders ", p.b_mirror);
    assert!(
        err.lines().any(|l| l.starts_with(&line) && l.contains(", messages ")),
        "no progress line {line:?} in {err:?}"
    );
    assert!(!out.contains("comparing "), "progress went to standard output: {out}");
    assert!(out.contains("compared 6 messages"), "{out}");
    assert!(
        admin_get(&p.a, "/v1/status")["resync"]["running"].is_null(),
        "the finished run still shows as running"
    );
}

#[test]
fn damage_is_named_repaired_and_scrubbed() {
    let p = start_pair();
    deliver(&p.a, 6);
    assert!(converged(&p.a, &p.b, 20), "the pair did not converge");
    let inbox = messages(&p.a, USER, "INBOX");
    assert_eq!(inbox.len(), 6);
    let body4 = inbox[3]["blob"].as_str().unwrap().to_string();
    let body5 = inbox[4]["blob"].as_str().unwrap().to_string();

    // Stop B and change its views behind its log's back.
    let Pair {
        _dir,
        a,
        b,
        b_dir,
        b_cfg,
        a_mirror,
        b_mirror,
        ..
    } = p;
    assert!(b.stop());
    let db = b_dir.join("data").join("db");
    {
        let store = Store::open(&db, "node-b", wal_options("node-b")).unwrap();
        let v = store.views();
        let mb = v.mailbox_by_name(USER, "INBOX").unwrap().unwrap();
        let archive = v.mailbox_by_name(USER, "Archive").unwrap().unwrap();
        let msgs = v.messages(mb.id).unwrap();
        let guid = |uid: u32| msgs.iter().find(|m| m.0 == uid).unwrap().1.guid;
        let (g2, g3) = (guid(2), guid(3));
        // Bodies: one dropped, one whose bytes no longer match its hash.
        let h4: [u8; 32] = hex::decode(&body4).unwrap().try_into().unwrap();
        let h5: [u8; 32] = hex::decode(&body5).unwrap().try_into().unwrap();
        store
            .run_blocking(move |txn, cfs| {
                txn.delete(cfs.blobs, &h4);
                txn.put(cfs.blobs, &h5, b"rotten bytes");
                Ok(())
            })
            .unwrap();
        damage(
            &store,
            vec![
                Event::Expunged {
                    user: USER.into(),
                    mailbox: mb.id,
                    messages: vec![(2, g2)],
                },
                Event::FlagsChanged {
                    user: USER.into(),
                    mailbox: mb.id,
                    messages: vec![(3, g3)],
                    op: FlagOp::Set,
                    flags: Flags::new(["\\Flagged"]),
                },
                Event::MailboxRenamed {
                    user: USER.into(),
                    mailbox: archive.id,
                    name: "Attic".into(),
                },
            ],
        );
        drop(v);
        store.wal().close().unwrap();
    }
    let b = Node::start(&b_dir, Some(&b_cfg));
    assert_ne!(digest(&a).0, digest(&b).0, "the damage does not show in the digest");

    // verify names exactly what differs, and exits non-zero.
    let (ok, r, _) = json_cli(&a, &["verify", "--json", "--peer", &b_mirror]);
    assert!(!ok, "verify exited 0 with differences: {r}");
    assert_eq!(r["differences"], 3, "{r}");
    assert_eq!(r["repaired"], 0, "{r}");
    let items = r["items"].as_array().unwrap();
    let find = |kind: &str| {
        items
            .iter()
            .find(|i| i["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {r}"))
    };
    assert_eq!(find("message")["uid"], 2);
    assert_eq!(find("message")["mailbox"], "INBOX");
    assert!(find("message")["detail"].as_str().unwrap().contains("missing on the peer"), "{r}");
    assert_eq!(find("flags")["uid"], 3);
    assert!(find("flags")["detail"].as_str().unwrap().contains("\\Flagged"), "{r}");
    assert!(find("mailbox")["detail"].as_str().unwrap().contains("\"Attic\""), "{r}");
    let (ok, text, _) = a.cli(&["verify", "--peer", &b_mirror], None);
    assert!(!ok);
    assert!(text.contains("uid 2") && text.contains("uid 3") && text.contains("Attic"), "{text}");

    // A dry run repairs nothing.
    let (ok, r, _) = json_cli(&a, &["resync", "--dry-run", "--json", "--peer", &b_mirror]);
    assert!(ok);
    assert_eq!(r["differences"], 3, "{r}");
    assert_eq!(r["repaired"], 0, "{r}");

    // resync repairs exactly that, through the log and the mirror.
    let (ok, r, err) = json_cli(&a, &["resync", "--json", "--peer", &b_mirror]);
    assert!(ok, "{r} {err}");
    assert_eq!(r["differences"], 3, "{r}");
    assert_eq!(r["repaired"], 3, "{r}");
    assert!(converged(&a, &b, 20), "the repair did not reach the peer");
    let (ok, r, _) = json_cli(&a, &["resync", "--json", "--peer", &b_mirror]);
    assert!(ok);
    assert_eq!(r["differences"], 0, "second resync: {r}");
    let (ok, _, _) = a.cli(&["verify", "--peer", &b_mirror], None);
    assert!(ok);
    let on_b = messages(&b, USER, "INBOX");
    assert_eq!(on_b.len(), 6);
    assert_eq!(on_b[1]["uid"], 2);
    assert!(on_b[2]["flags"].as_array().unwrap().is_empty(), "{on_b:?}");

    // The trees cannot see bodies: --full re-hashes them and restores the
    // dropped one and the rotten one from the peer.
    let (ok, r, err) = json_cli(&b, &["resync", "--full", "--json", "--peer", &a_mirror]);
    assert!(ok, "{r} {err}");
    assert_eq!(r["bodies_bad"], 2, "{r}");
    assert_eq!(r["differences"], 2, "{r}");
    assert_eq!(r["repaired"], 2, "{r}");
    assert_eq!(blob(&b, &body4), blob(&a, &body4));
    assert_eq!(blob(&b, &body5), blob(&a, &body5));
    let (ok, r, _) = json_cli(&b, &["resync", "--full", "--json", "--peer", &a_mirror]);
    assert!(ok);
    assert_eq!(r["bodies_bad"], 0, "{r}");
    assert_eq!(r["differences"], 0, "{r}");
    // Every body held was re-read: their count and their bytes.
    let held: std::collections::BTreeSet<String> = messages(&b, USER, "INBOX")
        .iter()
        .map(|m| m["blob"].as_str().unwrap().to_string())
        .collect();
    let bytes: usize = held.iter().map(|h| blob(&b, h).len()).sum();
    assert_eq!(r["bodies_checked"], held.len() as u64, "{r}");
    assert_eq!(r["body_bytes_checked"], bytes as u64, "{r}");
}

/// Stop `node`, change its views behind its log's back (one message
/// expunged, one message's flags, one mailbox renamed), start it again.
fn damage_stopped(node: Node, dir: &std::path::Path, cfg: &std::path::Path, id: &str) -> Node {
    damage_stopped_at(node, dir, cfg, id, 2, 3, true)
}

/// Stop `node`, expunge UID `expunge` and flag UID `flag` of its INBOX
/// behind its log's back (and rename Archive to Attic with `rename`), and
/// start it again.
fn damage_stopped_at(node: Node, dir: &std::path::Path, cfg: &std::path::Path, id: &str, expunge: u32, flag: u32, rename: bool) -> Node {
    assert!(node.stop());
    let db = dir.join("data").join("db");
    {
        let store = Store::open(&db, id, wal_options(id)).unwrap();
        let v = store.views();
        let mb = v.mailbox_by_name(USER, "INBOX").unwrap().unwrap();
        let msgs = v.messages(mb.id).unwrap();
        let guid = |uid: u32| msgs.iter().find(|m| m.0 == uid).unwrap().1.guid;
        let mut events = vec![
            Event::Expunged {
                user: USER.into(),
                mailbox: mb.id,
                messages: vec![(expunge, guid(expunge))],
            },
            Event::FlagsChanged {
                user: USER.into(),
                mailbox: mb.id,
                messages: vec![(flag, guid(flag))],
                op: FlagOp::Set,
                flags: Flags::new(["\\Flagged"]),
            },
        ];
        if rename {
            events.push(Event::MailboxRenamed {
                user: USER.into(),
                mailbox: v.mailbox_by_name(USER, "Archive").unwrap().unwrap().id,
                name: "Attic".into(),
            });
        }
        drop(v);
        damage(&store, events);
        store.wal().close().unwrap();
    }
    Node::start(dir, Some(cfg))
}

#[test]
fn the_master_repairs_on_schedule_and_status_reports_it() {
    // A is master (the default mode) and repairs every second; B is a
    // slave with the same interval, which it must not act on.
    let p = start_pair_with("repair_interval = \"1s\"\n", "mode = \"slave\"\nrepair_interval = \"1s\"\n");
    deliver(&p.a, 6);
    assert!(converged(&p.a, &p.b, 20), "the pair did not converge");
    let Pair {
        _dir,
        a,
        b,
        b_dir,
        b_cfg,
        b_mirror,
        ..
    } = p;
    // The damage B's log cannot explain.
    let b = damage_stopped(b, &b_dir, &b_cfg, "node-b");
    assert_ne!(digest(&a).0, digest(&b).0, "the damage does not show in the digest");

    // Nobody runs a command: the master's schedule finds and repairs it.
    let repaired = wait_until(45, || admin_get(&a, "/v1/status")["resync"]["repaired"].as_u64() == Some(3));
    let st = admin_get(&a, "/v1/status")["resync"].clone();
    assert!(repaired, "no scheduled repair in 45 s: {st}");
    assert!(converged(&a, &b, 20), "the repair did not reach the slave");

    // Exactly the damage: one message restored, one flag set, one mailbox
    // renamed back, in two folders; and nothing repaired twice, once the
    // next scheduled run (a second after the first) has compared again.
    let again = wait_until(10, || admin_get(&a, "/v1/status")["resync"]["runs"].as_u64() >= Some(2));
    let st = admin_get(&a, "/v1/status")["resync"].clone();
    assert!(again, "no second scheduled run in 10 s: {st}");
    assert_eq!(st["interval_secs"], 1, "{st}");
    assert_eq!(st["scheduled_here"], true, "{st}");
    assert_eq!(st["differences"], 3, "{st}");
    assert_eq!(st["repaired"], 3, "{st}");
    assert_eq!(st["messages_restored"], 1, "{st}");
    assert_eq!(st["folders_repaired"], 2, "{st}");
    assert!(st["runs"].as_u64().unwrap() >= 2, "{st}");
    let last = &st["last"];
    assert_eq!(last["trigger"], "scheduled", "{st}");
    assert_eq!(last["repair"], true, "{st}");
    assert!(last["started_ms"].as_u64().unwrap() > 1_600_000_000_000, "{st}");
    assert!(last["seconds"].as_f64().is_some(), "{st}");
    let (ok, text, _) = a.cli(&["status"], None);
    assert!(ok);
    let line = text.lines().find(|l| l.starts_with("resync")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("every 1s") && line.contains("repaired 3 in 2 folders") && line.contains("messages restored 1"),
        "{line}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("  last      ") && l.contains("scheduled repair")),
        "{text}"
    );

    // The nodes agree now, message by message.
    let (ok, out, err) = a.cli(&["verify", "--peer", &b_mirror], None);
    assert!(ok, "{out} {err}");
    let on_b = messages(&b, USER, "INBOX");
    assert_eq!(on_b.len(), 6);
    assert!(on_b[2]["flags"].as_array().unwrap().is_empty(), "{on_b:?}");
    let st = admin_get(&a, "/v1/status")["resync"].clone();
    assert_eq!(st["last"]["trigger"], "command", "{st}");
    assert_eq!(st["repaired"], 3, "a later run repaired again: {st}");

    // The slave never ran one.
    let sb = admin_get(&b, "/v1/status")["resync"].clone();
    assert_eq!(sb["runs"], 0, "{sb}");
    assert_eq!(sb["scheduled_here"], false, "{sb}");
    let (_, text, _) = b.cli(&["status"], None);
    assert!(text.contains("every 1s on the master"), "{text}");
}

/// A message record as the admin endpoint lists it, and its body.
type Stored = (serde_json::Value, Vec<u8>);

/// Every folder of `USER` on `node` (name, UIDVALIDITY, UIDNEXT, special
/// use, subscription), and per message its record (UID, GUID, flags, body
/// hash, size, date) and the body's bytes.
fn all_mail(node: &Node) -> Vec<(serde_json::Value, Vec<Stored>)> {
    let mut folders = admin_get(node, &format!("/v1/mailboxes?user={USER}")).as_array().unwrap().clone();
    folders.sort_by_key(|m| m["name"].as_str().unwrap().to_string());
    folders
        .into_iter()
        .map(|f| {
            let msgs = messages(node, USER, f["name"].as_str().unwrap())
                .into_iter()
                .map(|m| {
                    let body = blob(node, m["blob"].as_str().unwrap());
                    (m, body)
                })
                .collect();
            (f, msgs)
        })
        .collect()
}

#[test]
fn a_wiped_node_joins_by_trees_then_both_sides_converge() {
    let p = start_pair_with("", "mode = \"slave\"\n");
    deliver(&p.a, 8);
    // History a replay would walk through: an expunge, flags, a new
    // mailbox with copies, an empty subscribed mailbox.
    python(
        &p.a,
        r#"
import imaplib, os
c = imaplib.IMAP4(os.environ['IMAP_HOST'], int(os.environ['IMAP_PORT']))
c.login('u@example.org', 'secret')
c.create('Projects'); c.create('Empty'); c.subscribe('Empty')
c.select('INBOX')
c.uid('STORE', '3', '+FLAGS', '(\\Flagged \\Seen)')
c.uid('STORE', '2', '+FLAGS', '(\\Deleted)')
c.expunge()
c.uid('COPY', '4:5', 'Projects')
c.logout()
"#,
    );
    assert!(converged(&p.a, &p.b, 20), "the pair did not converge");
    let Pair {
        _dir,
        a,
        b,
        a_dir,
        b_dir,
        b_cfg,
        a_mirror,
        b_mirror,
        ports: (pa, pb),
    } = p;
    let before = all_mail(&a);
    assert_eq!(before.iter().map(|f| f.1.len()).sum::<usize>(), 9, "{before:?}");

    // B loses its disk. A's log is kept from it (A does not push to B), as
    // if the history B needs were gone: B must join by trees.
    assert!(b.stop());
    assert!(a.stop());
    std::fs::remove_dir_all(b_dir.join("data")).unwrap();
    let a_cfg = write_config(&a_dir, "node-a", &mirror_section(pa, &[], SECRET));
    let a = Node::start(&a_dir, Some(&a_cfg));
    let b = Node::start(&b_dir, Some(&b_cfg));
    assert_eq!(admin_get(&b, "/v1/status")["users"], 0);

    let (ok, r, err) = json_cli(&b, &["resync", "--from-peer", "--json", "--peer", &a_mirror]);
    assert!(ok, "{r} {err}");
    assert!(r["differences"].as_u64().unwrap() > 9, "{r}");
    assert_eq!(r["repaired"], r["differences"], "{r}");
    assert_eq!(r["messages_restored"], 9, "{r}");
    assert_eq!(r["logs_in_step"], false, "{r}");

    // Every message, flag, body and mailbox is equal, and so are the roots.
    assert_eq!(all_mail(&b), before);
    assert_eq!(digest(&a).0, digest(&b).0);
    let (_, da, _) = json_cli(&a, &["digest", "--json", "--user", USER]);
    let (_, db, _) = json_cli(&b, &["digest", "--json", "--user", USER]);
    // The user's root covers the account, mailboxes and subscriptions.
    assert_eq!(da["user"], db["user"]);
    let (ok, text, _) = b.cli(&["verify", "--peer", &a_mirror], None);
    assert!(ok, "{text}");
    assert!(text.contains("0 difference(s)"), "{text}");

    // A pushes to B again: its whole log lands on the joined state, and
    // writes on either side reach the other.
    assert!(a.stop());
    let a_cfg = write_config(&a_dir, "node-a", &mirror_section(pa, &[pb], SECRET));
    let a = Node::start(&a_dir, Some(&a_cfg));
    deliver(&a, 2);
    assert!(
        wait_until(30, || messages(&b, USER, "INBOX").len() == 9 && digest(&a).0 == digest(&b).0),
        "A's deliveries did not reach B: {:?}",
        all_mail(&b)
    );
    python(
        &b,
        r#"
import imaplib, os
c = imaplib.IMAP4(os.environ['IMAP_HOST'], int(os.environ['IMAP_PORT']))
c.login('u@example.org', 'secret')
c.select('Projects')
c.uid('STORE', '1', '+FLAGS', '(\\Answered)')
c.logout()
"#,
    );
    assert!(converged(&a, &b, 30), "B's write did not reach A");
    assert_eq!(all_mail(&a), all_mail(&b));
    let (ok, r, _) = json_cli(&a, &["verify", "--json", "--peer", &b_mirror]);
    assert!(ok, "{r}");
    assert_eq!(r["differences"], 0, "{r}");
    let c = admin_get(&b, "/v1/status")["conflicts"].clone();
    assert_eq!(
        c["kept_aside"], 0,
        "replaying A's log over the joined state kept messages aside: {c}"
    );
    assert_eq!(c["uid_collisions"], 0, "{c}");

    // A rebuild of B's views from its log gives the same views: the
    // entries the join reflects are skipped as they were when they came.
    let mail = all_mail(&b);
    assert!(b.stop());
    {
        let store = Store::open(&b_dir.join("data").join("db"), "node-b", wal_options("node-b")).unwrap();
        let live = tandem::replay::views_digest(&store).unwrap();
        tandem::replay::rebuild_views(&store).unwrap();
        assert_eq!(
            tandem::replay::views_digest(&store).unwrap(),
            live,
            "the rebuilt views of the joined node differ"
        );
        store.wal().close().unwrap();
    }
    let b = Node::start(&b_dir, Some(&b_cfg));
    assert_eq!(all_mail(&b), mail);
    assert!(converged(&a, &b, 30), "the rebuilt node does not agree with its peer");
}

/// A mailbox of 100 messages, whose leaves are wide: the comparison reads
/// them over the real link by eighths (a summary, then the eighth that
/// differs) and still names exactly the two differences, repairs them,
/// and finds nothing after.
#[test]
fn a_wide_mailbox_is_compared_by_eighths() {
    let p = start_pair();
    deliver(&p.a, 100);
    assert!(converged(&p.a, &p.b, 30), "the pair did not converge");
    let Pair {
        _dir,
        a,
        b,
        b_dir,
        b_cfg,
        b_mirror,
        ..
    } = p;
    // UID 40 in the first leaf (UIDs 0-63), UID 90 in the second.
    let b = damage_stopped_at(b, &b_dir, &b_cfg, "node-b", 90, 40, false);
    let (ok, r, _) = json_cli(&a, &["verify", "--json", "--peer", &b_mirror]);
    assert!(!ok, "verify exited 0 with differences: {r}");
    let mut uids: Vec<u64> = r["items"].as_array().unwrap().iter().map(|i| i["uid"].as_u64().unwrap()).collect();
    uids.sort();
    assert_eq!(uids, [40, 90], "{r}");
    // Two leaves of 63 and 37 messages: read by whole digests the verify
    // receives about 2,070 B, by eighths about 1,030 B.
    let received = r["bytes_received"].as_u64().unwrap();
    eprintln!("verify: {received} B received in {} round trips", r["round_trips"]);
    assert!(received < 1_500, "{r}");
    let (ok, r, err) = json_cli(&a, &["resync", "--json", "--peer", &b_mirror]);
    assert!(ok, "{err} {r}");
    assert_eq!(r["repaired"], 2, "{r}");
    assert!(converged(&a, &b, 20), "the repair did not reach B");
    let (ok, out, err) = a.cli(&["verify", "--peer", &b_mirror], None);
    assert!(ok, "verify after the repair: {out} {err}");
    assert!(out.contains("0 difference(s)"), "{out}");
}
