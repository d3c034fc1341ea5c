//! Replay equals views: random mutation sequences applied live, then the log
//! replayed into an empty store (and rebuilt in place) give identical views.
//! The merkle tree kept incrementally equals the tree built from scratch.

use proptest::prelude::*;
use tandem::event::{Event, FlagOp, Flags};
use tandem::mutate::{self, NewMessage};
use tandem::replay::{rebuild_views, rebuild_views_within, replay_into, views_digest};
use tandem::store::{wal_options, Store};
use tandem::views::ViewRead;

#[derive(Debug, Clone)]
enum Op {
    CreateUser(u8),
    DeleteUser(u8),
    Password(u8),
    CreateMailbox(u8, u8),
    Rename(u8, u8, u8),
    DeleteMailbox(u8, u8),
    Subscribe(u8, u8, bool),
    Append(u8, u8, u8, u8),
    Copy(u8, u8, u8, u8),
    Move(u8, u8, u8, u8),
    Flag(u8, u8, u8, u8, u8),
    Expunge(u8, u8, u8),
    Config(u8, u8),
    /// A resync's repair: the message at an index of one mailbox restored
    /// under a small UID of another (free, held by itself, or by another).
    RestoreMessage(u8, u8, u8, u8, u8),
    /// A resync's repair: a mailbox restored with a higher UIDNEXT.
    RestoreMailbox(u8, u8, u8),
    /// An append written pending (a slave whose master is reachable).
    AppendPending(u8, u8, u8, u8),
    /// Every pending message of a user placed (by the master, or by the
    /// slave itself once it stopped waiting).
    Place(u8),
    /// A side file of a sync dir changed (content k) or removed (k = 0).
    SideFile(u8, u8),
    /// A user's quota set (storage, messages; 0 lifts the limit): small
    /// limits make later appends and copies be refused.
    Quota(u8, u8, u8),
}

const FOLDERS: [&str; 6] = ["INBOX", "Work", "Work/Old", "Lists", "Trash", "inbox/sub"];
const FLAGS: [&str; 5] = ["\\Seen", "\\Flagged", "\\Deleted", "$Junk", "\\Answered"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..3).prop_map(Op::CreateUser),
        1 => (0u8..3).prop_map(Op::DeleteUser),
        1 => (0u8..3).prop_map(Op::Password),
        2 => (0u8..3, 0u8..6).prop_map(|(u, m)| Op::CreateMailbox(u, m)),
        1 => (0u8..3, 0u8..6, 0u8..6).prop_map(|(u, a, b)| Op::Rename(u, a, b)),
        1 => (0u8..3, 0u8..6).prop_map(|(u, m)| Op::DeleteMailbox(u, m)),
        1 => (0u8..3, 0u8..6, any::<bool>()).prop_map(|(u, m, s)| Op::Subscribe(u, m, s)),
        6 => (0u8..3, 0u8..6, 0u8..8, any::<u8>()).prop_map(|(u, m, b, f)| Op::Append(u, m, b, f)),
        2 => (0u8..3, 0u8..6, 0u8..6, any::<u8>()).prop_map(|(u, a, b, i)| Op::Copy(u, a, b, i)),
        2 => (0u8..3, 0u8..6, 0u8..6, any::<u8>()).prop_map(|(u, a, b, i)| Op::Move(u, a, b, i)),
        4 => (0u8..3, 0u8..6, any::<u8>(), 0u8..3, any::<u8>()).prop_map(|(u, m, i, o, f)| Op::Flag(u, m, i, o, f)),
        2 => (0u8..3, 0u8..6, any::<u8>()).prop_map(|(u, m, i)| Op::Expunge(u, m, i)),
        1 => (0u8..3, 0u8..3).prop_map(|(k, v)| Op::Config(k, v)),
        2 => (0u8..3, 0u8..6, any::<u8>(), 0u8..6, 1u8..8).prop_map(|(u, a, i, b, uid)| Op::RestoreMessage(u, a, i, b, uid)),
        1 => (0u8..3, 0u8..6, 0u8..4).prop_map(|(u, m, k)| Op::RestoreMailbox(u, m, k)),
        3 => (0u8..3, 0u8..6, 0u8..8, any::<u8>()).prop_map(|(u, m, b, f)| Op::AppendPending(u, m, b, f)),
        2 => (0u8..3).prop_map(Op::Place),
        1 => (0u8..3, 0u8..4).prop_map(|(n, k)| Op::SideFile(n, k)),
        1 => (0u8..3, 0u8..4, 0u8..4).prop_map(|(u, s, n)| Op::Quota(u, s, n)),
    ]
}

fn user(u: u8) -> String {
    format!("user{u}@example.org")
}

fn flags(bits: u8) -> Flags {
    Flags::new(FLAGS.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, f)| *f))
}

/// The uid at index `i` (mod count) of a mailbox, if it has messages.
fn pick_uid(store: &Store, u: &str, mailbox: &str, i: u8) -> Option<(tandem::event::Id, u32)> {
    let v = store.views();
    let mb = v.mailbox_by_name(u, mailbox).ok()??;
    let msgs = v.messages(mb.id).ok()?;
    if msgs.is_empty() {
        return None;
    }
    Some((mb.id, msgs[i as usize % msgs.len()].0))
}

fn run(store: &Store, op: &Op) {
    // Refused mutations are part of the test: they must leave no trace.
    let _ = match op.clone() {
        Op::CreateUser(u) => store.run_blocking(move |t, c| mutate::create_user(t, c, &user(u), format!("hash-{u}"), 1_700_000_000)),
        Op::DeleteUser(u) => store.run_blocking(move |t, c| mutate::delete_user(t, c, &user(u))),
        Op::Password(u) => store.run_blocking(move |t, c| mutate::set_password(t, c, &user(u), "new".into())),
        Op::CreateMailbox(u, m) => {
            store.run_blocking(move |t, c| mutate::create_mailbox(t, c, &user(u), FOLDERS[m as usize], None, 1_700_000_100).map(|_| ()))
        }
        Op::Rename(u, a, b) => {
            store.run_blocking(move |t, c| mutate::rename_mailbox(t, c, &user(u), FOLDERS[a as usize], FOLDERS[b as usize]))
        }
        Op::DeleteMailbox(u, m) => store.run_blocking(move |t, c| mutate::delete_mailbox(t, c, &user(u), FOLDERS[m as usize])),
        Op::Subscribe(u, m, s) => store.run_blocking(move |t, c| mutate::subscribe(t, c, &user(u), FOLDERS[m as usize], s)),
        Op::Append(u, m, b, f) | Op::AppendPending(u, m, b, f) => {
            let mut msg = NewMessage::new(
                format!("Subject: {b}\r\n\r\nbody {b}\r\n").into_bytes(),
                flags(f),
                1_700_000_000 + b as i64,
            );
            msg.pending = matches!(op, Op::AppendPending(..));
            store.run_blocking(move |t, c| mutate::append(t, c, &user(u), FOLDERS[m as usize], &msg).map(|_| ()))
        }
        Op::Quota(u, s, n) => {
            let storage = [None, Some(0), Some(1), Some(1000)][s as usize];
            let messages = [None, Some(1), Some(3), Some(100)][n as usize];
            store.run_blocking(move |t, c| mutate::set_quota(t, c, &user(u), storage, messages))
        }
        Op::SideFile(n, k) => store.run_blocking(move |t, c| {
            let (dir, name) = ("certs".to_string(), format!("f{n}.pem"));
            let event = if k == 0 {
                Event::SideFileRemoved { dir, name }
            } else {
                let body = vec![b'a' + k; 10 * k as usize];
                Event::SideFileSet {
                    dir,
                    name,
                    hash: tandem::event::BlobHash::of(&body),
                    mode: 0o600,
                    body,
                }
            };
            mutate::emit(t, c, event).map(|_| ())
        }),
        Op::Place(u) => {
            let mine: Vec<_> = store
                .views()
                .pendings()
                .unwrap()
                .into_iter()
                .filter(|p| p.2.user == user(u))
                .collect();
            store.run_blocking(move |t, c| {
                for (mb, guid, rec) in &mine {
                    mutate::place_pending(t, c, &rec.user, *mb, *guid)?;
                }
                Ok(())
            })
        }
        Op::Copy(u, a, b, i) | Op::Move(u, a, b, i) => {
            let remove = matches!(op, Op::Move(..));
            let Some((from, uid)) = pick_uid(store, &user(u), FOLDERS[a as usize], i) else {
                return;
            };
            let Some(to) = store
                .views()
                .mailbox_id(&user(u), &mutate::normalize_mailbox(FOLDERS[b as usize]).unwrap())
                .unwrap()
            else {
                return;
            };
            store.run_blocking(move |t, c| mutate::copy(t, c, &user(u), from, &[uid], to, remove, false).map(|_| ()))
        }
        Op::Flag(u, m, i, o, f) => {
            let Some((mb, uid)) = pick_uid(store, &user(u), FOLDERS[m as usize], i) else {
                return;
            };
            let op = [FlagOp::Add, FlagOp::Remove, FlagOp::Set][o as usize];
            store.run_blocking(move |t, c| mutate::store_flags(t, c, &user(u), mb, &[uid, uid + 1], op, &flags(f)).map(|_| ()))
        }
        Op::Expunge(u, m, i) => {
            let Some((mb, uid)) = pick_uid(store, &user(u), FOLDERS[m as usize], i) else {
                return;
            };
            store.run_blocking(move |t, c| mutate::expunge(t, c, &user(u), mb, &[uid]).map(|_| ()))
        }
        Op::Config(k, v) => store.run_blocking(move |t, c| mutate::set_config(t, c, &format!("key{k}"), &format!("value{v}"))),
        Op::RestoreMessage(u, a, i, b, uid) => {
            let Some((from, picked)) = pick_uid(store, &user(u), FOLDERS[a as usize], i) else {
                return;
            };
            let v = store.views();
            let m = v.message(from, picked).unwrap().unwrap();
            let Some(to) = v
                .mailbox_by_name(&user(u), &mutate::normalize_mailbox(FOLDERS[b as usize]).unwrap())
                .unwrap()
            else {
                return;
            };
            let e = Event::MessageRestored {
                user: user(u),
                mailbox: to.id,
                uid: uid as u32,
                guid: m.guid,
                blob: m.blob,
                size: m.size,
                internal_date: m.internal_date,
                tz_minutes: m.tz_minutes,
                flags: flags(uid),
            };
            store.run_blocking(move |t, c| mutate::emit(t, c, e).map(|_| ()))
        }
        Op::RestoreMailbox(u, m, k) => {
            let Some(mb) = store
                .views()
                .mailbox_by_name(&user(u), &mutate::normalize_mailbox(FOLDERS[m as usize]).unwrap())
                .unwrap()
            else {
                return;
            };
            let e = Event::MailboxRestored {
                user: user(u),
                mailbox: mb.id,
                name: mb.name,
                uidvalidity: mb.uidvalidity,
                uidnext: mb.uidnext + k as u32,
                special_use: mb.special_use,
            };
            store.run_blocking(move |t, c| mutate::emit(t, c, e).map(|_| ()))
        }
    };
}

fn open(dir: &std::path::Path, node: &str) -> Store {
    let mut o = wal_options(node);
    // Replay equality does not depend on durability; skip fsync for speed.
    o.sync = false;
    Store::open(dir, node, o).unwrap()
}

/// Invariants the views must hold whatever the history.
fn check_invariants(store: &Store) {
    let v = store.views();
    let mut refs: std::collections::BTreeMap<[u8; 32], u64> = Default::default();
    for u in v.users().unwrap() {
        let mut seen_validity = std::collections::BTreeSet::new();
        for mb in v.mailboxes(&u).unwrap() {
            assert!(
                seen_validity.insert(mb.uidvalidity),
                "two mailboxes of {u} share UIDVALIDITY {}",
                mb.uidvalidity
            );
            assert_eq!(v.mailbox_id(&u, &mb.name).unwrap(), Some(mb.id), "name index of {}", mb.name);
            let msgs = v.messages(mb.id).unwrap();
            for (uid, m) in &msgs {
                let uid = *uid;
                assert!(uid < mb.uidnext, "uid {uid} >= uidnext {} in {}", mb.uidnext, mb.name);
                // The GUID index names the UID of a GUID shown once.
                if msgs.iter().filter(|x| x.1.guid == m.guid).count() == 1 {
                    assert_eq!(
                        v.uid_of_guid(mb.id, m.guid).unwrap(),
                        Some(uid),
                        "GUID index of {} uid {uid}",
                        mb.name
                    );
                }
                assert!(m.modseq <= mb.highestmodseq);
                *refs.entry(m.blob.0).or_default() += 1;
                assert!(store.blob(&m.blob).unwrap().is_some(), "blob of {} uid {uid} missing", mb.name);
            }
            // The change index names every live message once, at its own
            // MODSEQ, and otherwise only expunged UIDs.
            let all = v.changes_since(mb.id, 0).unwrap();
            let live: std::collections::BTreeSet<u32> = all.iter().filter(|c| !c.1).map(|c| c.0).collect();
            assert_eq!(
                live.len(),
                all.iter().filter(|c| !c.1).count(),
                "a message listed twice in the change index"
            );
            assert_eq!(live, msgs.iter().map(|m| m.0).collect(), "change index of {}", mb.name);
            for (uid, gone) in &all {
                if *gone {
                    assert!(!live.contains(uid), "uid {uid} both live and expunged in the change index");
                }
            }
            for (uid, m) in &msgs {
                let since = v.changes_since(mb.id, m.modseq - 1).unwrap();
                assert!(since.contains(&(*uid, false)), "uid {uid} not indexed at its modseq {}", m.modseq);
                if m.modseq > 0 {
                    assert!(
                        !v.changes_since(mb.id, m.modseq).unwrap().contains(&(*uid, false)),
                        "uid {uid} indexed above its modseq"
                    );
                }
            }
        }
    }
    // Every pending message is kept aside under UID 0.
    for (mb, guid, _) in v.pendings().unwrap() {
        assert!(
            v.vget(&tandem::views::keys::conflict(mb, 0, guid)).unwrap().is_some(),
            "pending without its message"
        );
    }
    // Kept-aside messages (pending ones here) hold their bodies too.
    for (_, _, _, m) in v.all_conflicts().unwrap() {
        *refs.entry(m.blob.0).or_default() += 1;
    }
    for (blob, n) in refs {
        assert_eq!(v.refcount(&tandem::event::BlobHash(blob)).unwrap(), n, "refcount");
    }
}

/// The tree the views keep equals the tree built from the views alone.
fn check_tree(store: &Store) -> Result<(), TestCaseError> {
    let v = store.views();
    let kept: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = v.vscan(&tandem::merkle::keys::all()).unwrap().into_iter().collect();
    let built = tandem::merkle::build(&v).unwrap();
    let diff: std::collections::BTreeSet<String> = kept
        .keys()
        .chain(built.keys())
        .filter(|k| kept.get(*k) != built.get(*k))
        .map(hex::encode)
        .collect();
    prop_assert!(diff.is_empty(), "incremental tree differs from the built one at {diff:?}");
    // And the node root covers every message.
    let msgs: u64 = v
        .users()
        .unwrap()
        .iter()
        .flat_map(|u| v.mailboxes(u).unwrap())
        .map(|mb| v.messages(mb.id).unwrap().len() as u64)
        .sum();
    prop_assert_eq!(tandem::merkle::node_root(&v).unwrap().1, msgs);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 200, .. ProptestConfig::default() })]

    #[test]
    fn replay_reproduces_views(ops in proptest::collection::vec(op(), 1..60)) {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = open(a_dir.path(), "a");
        for op in &ops {
            run(&a, op);
        }
        check_invariants(&a);
        check_tree(&a)?;
        let live = views_digest(&a).unwrap();

        let b = open(b_dir.path(), "b");
        let n = replay_into(&a, &b).unwrap();
        prop_assert_eq!(n, a.wal().last_order());
        prop_assert_eq!(views_digest(&b).unwrap(), live.clone(), "replay into an empty store differs");

        let rebuilt = rebuild_views(&a).unwrap();
        prop_assert_eq!(rebuilt, n);
        prop_assert_eq!(views_digest(&a).unwrap(), live.clone(), "rebuild in place differs");
        check_tree(&a)?;

        // Out of memory after the first few entries: the rest goes through
        // transactions of a few entries each, the tree built from RocksDB.
        let rebuilt = rebuild_views_within(&a, true, 0, 3).unwrap();
        prop_assert_eq!(rebuilt, n);
        prop_assert_eq!(views_digest(&a).unwrap(), live, "rebuild past the memory budget differs");
        check_tree(&a)?;
    }
}
