//! The audit and rebuild tools on a real store.

use tandem::event::Flags;
use tandem::mutate::{self, NewMessage};
use tandem::store::{wal_options, Store};

fn node(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("node-id"), "audited").unwrap();
    let store = Store::open(&dir.join("db"), "audited", wal_options("audited")).unwrap();
    store
        .run_blocking(|t, c| mutate::create_user(t, c, "u@example.org", "x".into(), 1_700_000_000))
        .unwrap();
    for i in 0..20 {
        let m = NewMessage::new(
            format!("Subject: {i}\r\n\r\nbody\r\n").into_bytes(),
            Flags::default(),
            1_700_000_000,
        );
        store
            .run_blocking(move |t, c| mutate::append(t, c, "u@example.org", "INBOX", &m))
            .unwrap();
    }
    store.close().unwrap();
}

#[test]
fn sound_node_passes() {
    let dir = tempfile::tempdir().unwrap();
    node(&dir.path().join("n"));
    let scratch = tempfile::tempdir().unwrap();
    let r = tandem_tools::audit(&dir.path().join("n"), scratch.path()).unwrap();
    assert!(r.ok, "{:?}", r.problems);
    assert_eq!(r.entries_verified, r.entries_replayed);
    assert!(r.entries_verified >= 32);
    assert_eq!(r.views_digest, r.replay_digest);
}

#[test]
fn damaged_views_are_found_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let n = dir.path().join("n");
    node(&n);
    // Damage a view record behind the log's back.
    {
        let store = Store::open(&n.join("db"), "audited", wal_options("audited")).unwrap();
        let cf = store.cfs().views;
        store.wal().put_derived(cf, b"Zbogus", b"not from the log").unwrap();
        store.close().unwrap();
    }
    let scratch = tempfile::tempdir().unwrap();
    let r = tandem_tools::audit(&n, scratch.path()).unwrap();
    assert!(!r.ok);
    assert!(r.problems[0].contains("views differ"), "{:?}", r.problems);
    let applied = tandem_tools::rebuild(&n).unwrap();
    assert!(applied >= 32);
    let scratch = tempfile::tempdir().unwrap();
    let r = tandem_tools::audit(&n, scratch.path()).unwrap();
    assert!(r.ok, "{:?}", r.problems);
}

/// The rebuild commands themselves (`tandem-rebuild`, `tandem-replay
/// rebuild`), as an operator runs them: each starts itself again with huge
/// pages (its arguments carried over), or not when told so, and either way
/// the damaged views come back as the log says.
#[test]
fn the_rebuild_command_repairs_views_with_and_without_huge_pages() {
    let commands: [(&str, &[&str]); 2] = [
        (env!("CARGO_BIN_EXE_tandem-rebuild"), &[]),
        (env!("CARGO_BIN_EXE_tandem-replay"), &["rebuild"]),
    ];
    for ((exe, sub), tunables) in commands.into_iter().flat_map(|c| [(c, None), (c, Some("glibc.malloc.hugetlb=0"))]) {
        let dir = tempfile::tempdir().unwrap();
        let n = dir.path().join("n");
        node(&n);
        {
            let store = Store::open(&n.join("db"), "audited", wal_options("audited")).unwrap();
            store.wal().put_derived(store.cfs().views, b"Zbogus", b"not from the log").unwrap();
            store.close().unwrap();
        }
        let mut cmd = std::process::Command::new(exe);
        cmd.args(sub).arg(&n).env_remove("GLIBC_TUNABLES");
        if let Some(t) = tunables {
            cmd.env("GLIBC_TUNABLES", t);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{tunables:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with("rebuilt the views from "), "{stdout}");
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
        let scratch = tempfile::tempdir().unwrap();
        let r = tandem_tools::audit(&n, scratch.path()).unwrap();
        assert!(r.ok, "{exe} {tunables:?}: {:?}", r.problems);
    }
}

/// Open the node's store checking only the tail of its log at open (the
/// damage the tests make is deeper).
fn open_tail_checked(n: &std::path::Path) -> Store {
    let mut o = wal_options("audited");
    o.verify_tail = 1;
    Store::open(&n.join("db"), "audited", o).unwrap()
}

/// Flip the last byte of the node's own entry `seq` as stored.
fn flip_last_byte(store: &Store, seq: u64) {
    let origin = wal::Origin::from_node_id("audited");
    let mut v = store.wal().raw_entry(origin, seq).unwrap().unwrap();
    let last = v.len() - 1;
    v[last] ^= 1;
    store.wal().put_raw_entry(origin, seq, &v).unwrap();
}

#[test]
fn a_rebuild_refuses_a_broken_chain_and_leaves_the_views_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let n = dir.path().join("n");
    node(&n);
    let store = open_tail_checked(&n);
    let before = tandem::replay::views_digest(&store).unwrap();
    flip_last_byte(&store, 10);
    // The chain is verified beside applying the log, before the views are
    // cleared: a broken one leaves them untouched.
    let err = tandem::replay::rebuild_views_verified(&store).unwrap_err();
    assert!(matches!(err, tandem::replay::ReplayError::Unverified(_)), "{err}");
    assert_eq!(tandem::replay::views_digest(&store).unwrap(), before);
    store.close().unwrap();
}

#[test]
fn broken_chain_is_reported_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let n = dir.path().join("n");
    node(&n);
    let origin = wal::Origin::from_node_id("audited");
    {
        let store = open_tail_checked(&n);
        flip_last_byte(&store, 10);
        store.close().unwrap();
    }
    let scratch = tempfile::tempdir().unwrap();
    // The default open verifies a long tail and refuses the store outright.
    let err = tandem_tools::audit(&n, scratch.path()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&origin.to_string()) && msg.contains("seq 10"), "{msg}");
}

#[test]
fn a_pruned_store_audits_from_its_base_and_refuses_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let n = dir.path().join("n");
    node(&n);
    let origin = wal::Origin::from_node_id("audited");
    let (head, views_before) = {
        let store = Store::open(&n.join("db"), "audited", wal_options("audited")).unwrap();
        let head = store.wal().heads().get(origin);
        let limits = wal::PruneLimits {
            upto: wal::VersionVector([(origin, head)].into_iter().collect()),
            max_order: u64::MAX,
            before_hlc: u64::MAX,
            keep_entries: 5,
            max_entries: 10_000,
        };
        let r = store.wal().prune(&limits).unwrap();
        assert_eq!(r.pruned, head - 5);
        let views = tandem::replay::views_digest(&store).unwrap();
        store.close().unwrap();
        (head, views)
    };
    let scratch = tempfile::tempdir().unwrap();
    let r = tandem_tools::audit(&n, scratch.path()).unwrap();
    assert!(r.ok, "{:?}", r.problems);
    assert_eq!(r.entries_verified, 5, "the held chain is verified from the base");
    assert_eq!(r.pruned.get(&origin.to_string()), Some(&(head - 5)));
    assert_eq!(r.views_digest, views_before);
    // A rebuild from a pruned log is refused before the views are touched.
    let err = tandem_tools::rebuild(&n).unwrap_err();
    assert!(format!("{err:#}").contains("the log is pruned"), "{err:#}");
    {
        let store = Store::open(&n.join("db"), "audited", wal_options("audited")).unwrap();
        assert_eq!(tandem::replay::views_digest(&store).unwrap(), views_before);
        // Damage to the first held entry is still found: it must follow the base.
        flip_last_byte(&store, head - 4);
        store.close().unwrap();
    }
    let mut o = wal_options("audited");
    o.verify_tail = 1;
    let store = Store::open(&n.join("db"), "audited", o).unwrap();
    let err = store.wal().verify_all().unwrap_err().to_string();
    assert!(err.contains(&format!("seq {}", head - 4)), "{err}");
}
