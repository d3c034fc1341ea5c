//! Stores for `benches/resync.sh`: a metadata-heavy store of USERS × MSGS
//! small messages written straight into node A's data dir (through the
//! same mutations LMTP uses, so log, views and merkle trees are what a
//! live node would hold), node B's from A's log as the mirror would bring
//! it, and the same mail as a Maildir tree for rsync. `damage` changes B's
//! views (and a Maildir copy) behind the log's back, like the test hook of
//! `tests/resync.rs`.
//!
//!     gen_store build OUT USERS MSGS SIZE
//!     gen_store bulk OUT USERS MSGS   # metadata only: no Maildir copy, shared bodies
//!     gen_store damage OUT N       # N differences on B, half expunges, half flags
//!     gen_store compact OUT        # both stores compacted whole (tables rewritten with current options)
//!
//! `bulk` is for stores of tens of millions of messages: every message's
//! body is one of [`SHARED_BODIES`] small bodies (stored once each, bodies
//! being content-addressed), so the store is its metadata: log, views and
//! merkle trees. A's views are held in a shadow (`wal::Wal::shadow_begin`)
//! of GEN_SHADOW_MB megabytes (default 2048; 0: none) while they are
//! written. With GEN_CHUNK_MSGS=N the shadow is written out after about N
//! messages and begun again over what the users share (bodies' reference
//! counts, the users' part of the tree, the configuration: see
//! [`SHARED_KEYS`]), so a store larger than memory is written at the
//! shadow's speed. GEN_B=copy makes node B a copy of A's finished store
//! (its tables hard-linked, its origin set to B's): what a mirror brings
//! B to, without replaying A's log, for stores where that replay takes
//! longer than A's writing. GEN_CACHE_MB sets each store's block cache (default 1024; the
//! daemon's is 64); GEN_TXN_USERS users go in one transaction (default 50), and a
//! progress line comes every GEN_PROGRESS users (default USERS/20).
//!
//! OUT/a/data/db and OUT/b/data/db are opened with node ids node-a and
//! node-b; OUT/maildir-a holds userN/Maildir/cur/UID:2,FLAGS files.

use std::path::Path;
use tandem::event::{BlobHash, Event, FlagOp, Flags};
use tandem::mutate::{self, NewMessage};
use tandem::store::{wal_options, Store};
use tandem::views::ViewRead;

/// A new store for node A: empty, so its (empty) merkle tree is marked as
/// current at once; every write after keeps the tree in the same
/// transaction (`views::apply`), so the mark stays true and the daemon
/// does not build the tree again from the views when it first opens it.
fn create(dir: &Path, node: &str) -> Store {
    let s = open(dir, node);
    assert!(s.views().users().unwrap().is_empty(), "{} is not a new store", dir.display());
    tandem::merkle::ensure(&s).unwrap();
    s
}

fn open(dir: &Path, node: &str) -> Store {
    std::fs::create_dir_all(dir).unwrap();
    let mut o = wal_options(node);
    o.sync = false;
    // Writing a store reads what it wrote (mostly keys not there yet, each
    // a table block read without a filter): past the daemon's 64 MB cache,
    // block decompression took three quarters of a replay's time.
    // (The views of 4 M messages are about 0.6 GB compressed.)
    o.memory.block_cache_bytes = env_num("GEN_CACHE_MB", 1024) << 20;
    Store::open(dir, node, o).unwrap()
}

fn body(u: usize, i: usize, size: usize) -> Vec<u8> {
    let mut b = format!(
        "From: sender{i}@example.net\r\nTo: user{u}@example.org\r\nSubject: message {i} of user {u}\r\nMessage-ID: <{u}.{i}@gen>\r\n\r\n"
    )
    .into_bytes();
    while b.len() < size {
        b.extend_from_slice(format!("line {} of message {i} for user {u}\r\n", b.len()).as_bytes());
    }
    b
}

fn build(out: &Path, users: usize, msgs: usize, size: usize) {
    let t0 = std::time::Instant::now();
    let a = create(&out.join("a/data/db"), "node-a");
    let maildir = out.join("maildir-a");
    // Users in transactions of 250 (one commit each).
    let all: Vec<usize> = (1..=users).collect();
    for chunk in all.chunks(250) {
        let mut batch = Vec::new();
        for &u in chunk {
            let user = format!("user{u}");
            let bodies: Vec<NewMessage> = (1..=msgs)
                .map(|i| {
                    let flags = if i % 3 == 0 { Flags::new(["\\Seen"]) } else { Flags::default() };
                    NewMessage::new(body(u, i, size), flags, 1_700_000_000 + i as i64)
                })
                .collect();
            let dir = maildir.join(&user).join("Maildir");
            for sub in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(dir.join(sub)).unwrap();
            }
            for (i, m) in bodies.iter().enumerate() {
                let flags = if m.flags.is_empty() { "" } else { "S" };
                std::fs::write(dir.join("cur").join(format!("{}:2,{flags}", i + 1)), m.body.as_slice()).unwrap();
            }
            batch.push((user, bodies));
        }
        a.run_blocking(move |t, c| {
            for (user, bodies) in &batch {
                mutate::create_user(t, c, user, "$argon2id$bench".into(), 1_700_000_000)?;
                for m in bodies {
                    mutate::append(t, c, user, "INBOX", m)?;
                }
            }
            Ok(())
        })
        .unwrap();
        let done = chunk[chunk.len() - 1];
        if done % 5000 == 0 || done == users {
            eprintln!("A: {done} users in {:.1}s", t0.elapsed().as_secs_f64());
        }
    }
    mirror_b(out, a, t0);
}

/// Node B from A's log (as the mirror would bring it) and A's bodies;
/// checks that both digests agree and closes both.
fn mirror_b(out: &Path, a: Store, t0: std::time::Instant) {
    let b = open(&out.join("b/data/db"), "node-b");
    let n = tandem::replay::replay_into(&a, &b).unwrap();
    eprintln!("B: {n} entries replayed in {:.1}s", t0.elapsed().as_secs_f64());
    let keys = a.wal().scan_prefix(a.cfs().views, b"R").unwrap();
    for chunk in keys.chunks(4096) {
        let hashes: Vec<BlobHash> = chunk.iter().map(|(k, _)| BlobHash(k[1..].try_into().unwrap())).collect();
        let bodies: Vec<(BlobHash, Vec<u8>)> = hashes.into_iter().map(|h| (h, a.blob(&h).unwrap().unwrap())).collect();
        b.run_blocking(move |t, c| {
            for (h, body) in &bodies {
                t.put(c.blobs, &h.0, body);
            }
            Ok(())
        })
        .unwrap();
    }
    let (ra, rb) = (
        tandem::replay::mirror_digest(&a).unwrap(),
        tandem::replay::mirror_digest(&b).unwrap(),
    );
    assert_eq!(ra, rb, "the two stores differ after the replay");
    a.wal().close().unwrap();
    b.wal().close().unwrap();
    eprintln!("built in {:.1}s, root {ra}", t0.elapsed().as_secs_f64());
}

/// Distinct bodies of a `bulk` store.
const SHARED_BODIES: usize = 8;

/// Views keys that later users of a `bulk` store read or change after
/// earlier users wrote them: the shared bodies' reference counts, the
/// users' buckets, groups and root of the tree, and the configuration
/// (its records and its tree node). Every other key a user's writes touch
/// is that user's own, or under one of its mailboxes.
const SHARED_KEYS: &[&[u8]] = &[b"R", b"Tn", b"Tc", b"C"];

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A metadata-only store of USERS x MSGS messages (see the module doc).
fn bulk(out: &Path, users: usize, msgs: usize) {
    let t0 = std::time::Instant::now();
    let a = create(&out.join("a/data/db"), "node-a");
    let shadow_mb = env_num("GEN_SHADOW_MB", 2048);
    let txn_users = env_num("GEN_TXN_USERS", 50).max(1);
    let progress = env_num("GEN_PROGRESS", (users / 20).max(1)).max(1);
    let chunk_msgs = env_num("GEN_CHUNK_MSGS", 0);
    let mut in_shadow = 0;
    if shadow_mb > 0 {
        a.wal().shadow_begin(a.cfs().views, shadow_mb << 20).unwrap();
    }
    let bodies: Vec<NewMessage> = (0..SHARED_BODIES)
        .map(|k| {
            let b = format!("From: sender{k}@example.net\r\nTo: users@example.org\r\nSubject: shared body {k}\r\n\r\nbody {k}\r\n");
            NewMessage::new(b.into_bytes(), Flags::default(), 0)
        })
        .collect();
    let seen = Flags::new(["\\Seen"]);
    let all: Vec<usize> = (1..=users).collect();
    let mut next_report = progress;
    for chunk in all.chunks(txn_users) {
        let chunk = chunk.to_vec();
        let last = chunk[chunk.len() - 1];
        let (bodies, seen) = (bodies.clone(), seen.clone());
        a.run_blocking(move |t, c| {
            for &u in &chunk {
                let user = format!("user{u}");
                mutate::create_user(t, c, &user, "$argon2id$bench".into(), 1_700_000_000)?;
                let v = tandem::views::TxnViews { txn: t, cf: c.views };
                let mb = v.mailbox_by_name(&user, "INBOX")?.expect("INBOX").id;
                for i in 1..=msgs {
                    let mut m = bodies[(u + i) % SHARED_BODIES].clone();
                    if i % 3 == 0 {
                        m.flags = seen.clone();
                    }
                    m.internal_date = 1_700_000_000 + i as i64;
                    mutate::append_to(t, c, &user, mb, &m)?;
                }
            }
            Ok(())
        })
        .unwrap();
        in_shadow += txn_users * msgs;
        if shadow_mb > 0 && chunk_msgs > 0 && in_shadow >= chunk_msgs && last < users {
            let views = a.cfs().views;
            a.wal().shadow_end().unwrap();
            a.wal().shadow_begin_over(views, shadow_mb << 20, SHARED_KEYS).unwrap();
            in_shadow = 0;
        }
        if last >= next_report || last == users {
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "A: {last} of {users} users ({} messages) in {secs:.1}s, {:.0} messages/s",
                last * msgs,
                (last * msgs) as f64 / secs
            );
            next_report = (last / progress + 1) * progress;
        }
    }
    if shadow_mb > 0 {
        a.wal().shadow_end().unwrap();
    }
    eprintln!("A: {} messages in {:.1}s", users * msgs, t0.elapsed().as_secs_f64());
    if std::env::var("GEN_B").is_ok_and(|v| v == "copy") {
        copy_b(out, a, t0);
    } else {
        mirror_b(out, a, t0);
    }
}

/// Node B as a copy of A's closed store: table files hard-linked (RocksDB
/// never changes one), the rest copied, and B's origin written where the
/// store keeps its own. A mirror that caught B up would leave it with the
/// same log (A's entries), the same apply order and so the same views.
fn copy_b(out: &Path, a: Store, t0: std::time::Instant) {
    let root = tandem::replay::mirror_digest(&a).unwrap();
    a.wal().close().unwrap();
    drop(a);
    let (from, to) = (out.join("a/data/db"), out.join("b/data/db"));
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name.to_string_lossy().ends_with(".sst") {
            std::fs::hard_link(e.path(), to.join(&name)).unwrap();
        } else if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
    {
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &to).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &to, &cfs).unwrap();
        let meta = db.cf_handle("meta").expect("a meta column family");
        let origin = wal::Origin::from_node_id("node-b");
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        db.put_cf_opt(&meta, b"origin", origin.0.to_be_bytes(), &wo).unwrap();
    }
    let b = open(&to, "node-b");
    let rb = tandem::replay::mirror_digest(&b).unwrap();
    assert_eq!(root, rb, "the copy differs from A");
    b.wal().close().unwrap();
    eprintln!("B: a copy of A, built in {:.1}s, root {rb}", t0.elapsed().as_secs_f64());
}

/// N differences on B without log entries: every other one an expunge,
/// the others a flag set, spread over the users (one per user while N is
/// at most the number of users, else several per user at spread UIDs);
/// the same on `maildir-b` when there is one.
fn damage(out: &Path, n: usize) {
    let b = open(&out.join("b/data/db"), "node-b");
    let v = b.views();
    let users = v.users().unwrap();
    let per = n.div_ceil(users.len().max(1)).max(1);
    let step = (users.len() / n.div_ceil(per).max(1)).max(1);
    let maildir = out.join("maildir-b");
    let with_maildir = maildir.exists();
    let mut events = Vec::new();
    // What a repair has to bring: the changed messages' records (key and
    // value) as A holds them.
    let mut record_bytes = 0;
    'users: for user in users.iter().step_by(step) {
        let mb = v.mailbox_by_name(user, "INBOX").unwrap().unwrap();
        let msgs = v.messages(mb.id).unwrap();
        for j in 0..per.min(msgs.len()) {
            if events.len() == n {
                break 'users;
            }
            let (uid, m) = &msgs[msgs.len() * (2 * j + 1) / (2 * per.min(msgs.len()))];
            let cur = maildir.join(user).join("Maildir/cur");
            let file = |flags: &str| cur.join(format!("{uid}:2,{flags}"));
            let old = if m.flags.is_empty() { file("") } else { file("S") };
            let k = tandem::views::keys::message(mb.id, *uid);
            record_bytes += k.len() + v.vget(&k).unwrap().map_or(0, |r| r.len());
            if events.len() % 2 == 0 {
                events.push(Event::Expunged {
                    user: user.clone(),
                    mailbox: mb.id,
                    messages: vec![(*uid, m.guid)],
                });
                if with_maildir {
                    std::fs::remove_file(&old).unwrap();
                }
            } else {
                events.push(Event::FlagsChanged {
                    user: user.clone(),
                    mailbox: mb.id,
                    messages: vec![(*uid, m.guid)],
                    op: FlagOp::Set,
                    flags: Flags::new(["\\Flagged"]),
                });
                if with_maildir {
                    std::fs::rename(&old, file("F")).unwrap();
                }
            }
        }
    }
    drop(v);
    let made = events.len();
    b.apply_unlogged(events).unwrap();
    b.wal().close().unwrap();
    eprintln!("{made} differences made on B ({per} per user at most)");
    eprintln!("true difference: {record_bytes} bytes (the changed messages' view records, key and value)");
}

/// Compact both nodes' stores whole, rewriting every table file with the
/// current table options (a store made by an older build, brought to the
/// shape a fresh generation would have).
fn compact(out: &Path) {
    for (dir, id) in [("a", "node-a"), ("b", "node-b")] {
        let t = std::time::Instant::now();
        let s = open(&out.join(dir).join("data/db"), id);
        s.wal().compact_all().unwrap();
        s.wal().close().unwrap();
        eprintln!("node {dir}: compacted in {:.1} s", t.elapsed().as_secs_f64());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<usize>().ok()).expect("a number");
    match args.get(1).map(String::as_str) {
        Some("build") => build(Path::new(&args[2]), num(3), num(4), num(5)),
        Some("bulk") => bulk(Path::new(&args[2]), num(3), num(4)),
        Some("damage") => damage(Path::new(&args[2]), num(3)),
        Some("compact") => compact(Path::new(&args[2])),
        _ => {
            eprintln!("usage: gen_store build OUT USERS MSGS SIZE | gen_store bulk OUT USERS MSGS | gen_store damage OUT N | gen_store compact OUT");
            std::process::exit(2);
        }
    }
}
