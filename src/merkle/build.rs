//! Reading the tree, and building it from the views alone (for a store
//! that has none yet, and to check the incremental one).

use super::update::messages_root;
use super::{
    account_hash, account_key, bucket_of, combine_root, config_hash, group_of, keys, kind, leaf_range, mailbox_hash, mailbox_key,
    message_hash, node_index, stored_summary, subscription_hash, subscription_key, Node, Summary, ROOT_LEVEL,
};
use crate::event::Id;
use crate::views::{MailboxRec, UserRec, ViewError, ViewRead};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn corrupt(key: &[u8], reason: &str) -> ViewError {
    ViewError::Corrupt {
        key: hex::encode(key),
        reason: reason.into(),
    }
}

fn dec<T: serde::de::DeserializeOwned>(key: &[u8], b: &[u8]) -> Result<T, ViewError> {
    postcard::from_bytes(b).map_err(|e| corrupt(key, &e.to_string()))
}

/// `tag user 00 rest` → (user, rest).
fn split_user_key(key: &[u8]) -> Result<(String, &[u8]), ViewError> {
    let body = &key[1..];
    let nul = body
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| corrupt(key, "user key without NUL"))?;
    Ok((String::from_utf8_lossy(&body[..nul]).into_owned(), &body[nul + 1..]))
}

/// A mailbox's trie built from its messages; every node goes to `out`.
fn build_trie(v: &impl ViewRead, mailbox: Id, out: &mut BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Summary, ViewError> {
    let mut level_entries: BTreeMap<u32, Summary> = BTreeMap::new();
    v.messages_each(mailbox, &mut |uid, m| {
        level_entries.insert(uid, (message_hash(&m), 1));
    })?;
    if level_entries.is_empty() {
        return Ok(super::empty(ROOT_LEVEL));
    }
    for level in 0..=ROOT_LEVEL {
        let mut nodes: BTreeMap<u32, Node> = BTreeMap::new();
        for (k, s) in level_entries {
            nodes.entry(node_index(level, k)).or_default().set(&k.to_be_bytes(), Some(s));
        }
        level_entries = BTreeMap::new();
        for (index, node) in nodes {
            out.insert(keys::mailbox_node(mailbox, level, index), node.encode(level));
            level_entries.insert(index, node.summary(level));
        }
    }
    Ok(level_entries.remove(&0).expect("the root level has one node"))
}

/// Every key and value of the tree, computed from the views alone.
pub fn build(v: &impl ViewRead) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, ViewError> {
    let mut out = BTreeMap::new();
    let mut users: BTreeMap<String, Node> = BTreeMap::new();
    for (user, mb) in mailboxes(v)? {
        let root = build_trie(v, mb.id, &mut out)?;
        users
            .entry(user)
            .or_default()
            .set(&mailbox_key(mb.id), Some((mailbox_hash(&mb, root), root.1)));
    }
    build_upper(v, users, &mut out)?;
    Ok(out)
}

/// Every mailbox record with its user, in key order.
fn mailboxes(v: &impl ViewRead) -> Result<Vec<(String, MailboxRec)>, ViewError> {
    v.vscan(b"M")?
        .into_iter()
        .map(|(k, b)| Ok((split_user_key(&k)?.0, dec(&k, &b)?)))
        .collect()
}

/// The levels above the mailboxes' tries: accounts, subscriptions and the
/// mailbox summaries in `users` go into user nodes, then buckets, groups,
/// the users' root and the configuration node.
fn build_upper(v: &impl ViewRead, mut users: BTreeMap<String, Node>, out: &mut BTreeMap<Vec<u8>, Vec<u8>>) -> Result<(), ViewError> {
    use crate::views::keys as vk;
    for (k, b) in v.vscan(&vk::users_prefix())? {
        let rec: UserRec = dec(&k, &b)?;
        let user = String::from_utf8_lossy(&k[1..]).into_owned();
        users
            .entry(user)
            .or_default()
            .set(&account_key(), Some((account_hash(&rec.password_hash), 0)));
    }
    for (k, _) in v.vscan(b"S")? {
        let (user, name) = split_user_key(&k)?;
        let name = String::from_utf8_lossy(name).into_owned();
        users
            .entry(user)
            .or_default()
            .set(&subscription_key(&name), Some((subscription_hash(&name), 0)));
    }
    let mut buckets: BTreeMap<u16, Node> = BTreeMap::new();
    for (user, node) in users {
        out.insert(keys::user(&user), node.encode(kind::USER));
        buckets
            .entry(bucket_of(&user))
            .or_default()
            .set(user.as_bytes(), Some(node.summary(kind::USER)));
    }
    let mut groups: BTreeMap<u8, Node> = BTreeMap::new();
    for (bucket, node) in buckets {
        out.insert(keys::bucket(bucket), node.encode(kind::BUCKET));
        groups
            .entry(group_of(bucket))
            .or_default()
            .set(&bucket.to_be_bytes(), Some(node.summary(kind::BUCKET)));
    }
    let mut root = Node::default();
    for (group, node) in groups {
        out.insert(keys::group(group), node.encode(kind::GROUP));
        root.set(&[group], Some(node.summary(kind::GROUP)));
    }
    if !root.entries.is_empty() {
        out.insert(keys::users_root(), root.encode(kind::USERS));
    }
    let mut config = Node::default();
    for (k, b) in v.vscan(&vk::configs_prefix())? {
        config.set(&k[1..], Some((config_hash(&b), 0)));
    }
    if !config.entries.is_empty() {
        out.insert(keys::config(), config.encode(kind::CONFIG));
    }
    Ok(())
}

/// Messages whose tries one transaction of [`build_stored`] writes.
const BUILD_BATCH_MESSAGES: usize = 50_000;

/// Replace the store's tree with one built from its views, as [`build`]
/// computes it, but a batch of mailboxes' tries per transaction: memory
/// stays bounded by the largest mailbox and the user nodes, whatever the
/// size of the store. For a store whose views were written without their
/// tree (a rebuild from the log), where one pass at the end costs less than
/// keeping the tree up to date entry by entry.
pub fn build_stored(store: &crate::store::Store) -> Result<(), crate::store::StoreError> {
    build_stored_in_batches(store, BUILD_BATCH_MESSAGES)
}

fn build_stored_in_batches(store: &crate::store::Store, batch_messages: usize) -> Result<(), crate::store::StoreError> {
    use crate::views::TxnViews;
    store.run_blocking(|txn, cfs| {
        let mut v = TxnViews { txn, cf: cfs.views };
        for (k, _) in v.vscan(&keys::all())? {
            v.delete(&k);
        }
        Ok(())
    })?;
    let all = store.run_blocking(|txn, cfs| Ok(mailboxes(&TxnViews { txn, cf: cfs.views })?))?;
    let mut users: BTreeMap<String, Node> = BTreeMap::new();
    let mut rest = all.as_slice();
    while !rest.is_empty() {
        // Take mailboxes until their messages (at most UIDNEXT - 1 each)
        // fill a batch, at least one.
        let mut take = 0;
        let mut messages = 0;
        while take < rest.len() {
            let n = rest[take].1.uidnext.saturating_sub(1) as usize;
            if take > 0 && messages + n > batch_messages {
                break;
            }
            messages += n;
            take += 1;
        }
        let batch: Vec<(String, MailboxRec)> = rest[..take].to_vec();
        rest = &rest[take..];
        let summaries = store.run_blocking(move |txn, cfs| {
            let mut v = TxnViews { txn, cf: cfs.views };
            let mut out = BTreeMap::new();
            let mut summaries = Vec::with_capacity(batch.len());
            for (user, mb) in batch {
                let root = build_trie(&v, mb.id, &mut out)?;
                summaries.push((user, mb.id, (mailbox_hash(&mb, root), root.1)));
            }
            for (k, b) in out {
                v.put(&k, &b);
            }
            Ok(summaries)
        })?;
        for (user, id, summary) in summaries {
            users.entry(user).or_default().set(&mailbox_key(id), Some(summary));
        }
    }
    store.run_blocking(move |txn, cfs| {
        let mut v = TxnViews { txn, cf: cfs.views };
        let mut out = BTreeMap::new();
        build_upper(&v, users, &mut out)?;
        for (k, b) in out {
            v.put(&k, &b);
        }
        Ok(())
    })
}

/// A stored node, if any.
pub fn read_node(v: &impl ViewRead, key: &[u8]) -> Result<Option<Node>, ViewError> {
    v.vget(key)?.map(|b| Node::decode(key, &b)).transpose()
}

fn stored(v: &impl ViewRead, key: &[u8]) -> Result<Option<Summary>, ViewError> {
    v.vget(key)?.map(|b| stored_summary(key, &b)).transpose()
}

/// The node root and the number of messages below it.
pub fn node_root(v: &impl ViewRead) -> Result<Summary, ViewError> {
    Ok(combine_root(stored(v, &keys::config())?, stored(v, &keys::users_root())?))
}

/// What `tandem digest` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestReport {
    /// The node root (hex).
    pub root: String,
    pub messages: u64,
    pub users: u64,
    /// The user asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserDigest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDigest {
    pub user: String,
    pub root: String,
    pub messages: u64,
    pub subscriptions: u64,
    pub mailboxes: Vec<MailboxDigest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxDigest {
    pub name: String,
    pub id: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    /// The mailbox's entry in its user's node (metadata and messages).
    pub summary: String,
    /// The root of its messages.
    pub root: String,
    pub messages: u64,
    /// Leaves, for a mailbox asked for by name: (first uid, last uid,
    /// hash, messages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaves: Vec<LeafDigest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafDigest {
    pub first_uid: u32,
    pub last_uid: u32,
    pub hash: String,
    pub messages: u64,
}

/// The digest of the node, and of one user (and one of their mailboxes,
/// with its leaves) if asked.
pub fn report(v: &impl ViewRead, user: Option<&str>, folder: Option<&str>) -> Result<DigestReport, ViewError> {
    let (root, messages) = node_root(v)?;
    let user = match user {
        None => None,
        Some(u) => {
            let node = read_node(v, &keys::user(u))?.unwrap_or_default();
            let mut mailboxes = Vec::new();
            for mb in v.mailboxes(u)? {
                if folder.is_some_and(|f| f != mb.name) {
                    continue;
                }
                let mroot = messages_root(v, mb.id)?;
                let mut leaves = Vec::new();
                if folder.is_some() {
                    let mut prefix = keys::mailbox_prefix(mb.id);
                    prefix.push(0);
                    for (k, b) in v.vscan(&prefix)? {
                        let index = k
                            .get(prefix.len()..)
                            .and_then(|i| <[u8; 4]>::try_from(i).ok())
                            .map(u32::from_be_bytes)
                            .ok_or_else(|| corrupt(&k, "leaf key without a 4-byte index"))?;
                        let (h, n) = stored_summary(&k, &b)?;
                        let (first_uid, last_uid) = leaf_range(index);
                        leaves.push(LeafDigest {
                            first_uid,
                            last_uid,
                            hash: hex::encode(h),
                            messages: n,
                        });
                    }
                }
                mailboxes.push(MailboxDigest {
                    summary: hex::encode(mailbox_hash(&mb, mroot)),
                    root: hex::encode(mroot.0),
                    messages: mroot.1,
                    id: mb.id.to_hex(),
                    name: mb.name,
                    uidvalidity: mb.uidvalidity,
                    uidnext: mb.uidnext,
                    leaves,
                });
            }
            let (uroot, umessages) = node.summary(kind::USER);
            Some(UserDigest {
                user: u.to_string(),
                root: hex::encode(uroot),
                messages: umessages,
                subscriptions: node.entries.iter().filter(|e| e.key.first() == Some(&b's')).count() as u64,
                mailboxes,
            })
        }
    };
    Ok(DigestReport {
        root: hex::encode(root),
        messages,
        users: v.users()?.len() as u64,
        user,
    })
}

/// Version of the tree's layout, stored in the `cache` column family under
/// [`FORMAT_KEY`] once the tree has been built or checked.
pub const FORMAT: u8 = 1;
/// Where [`FORMAT`] is kept (`cache` family: derived data; without it the
/// tree is built again, which is always safe).
pub const FORMAT_KEY: &[u8] = b"merkle-format";

/// Build the tree from the views if this store has not been marked as
/// holding a tree of this layout (a store written before the tree existed,
/// or a copy made by replay). Rebuilding the views from the log rebuilds
/// the tree with them, so the mark stays true. Returns whether it built.
pub fn ensure(store: &crate::store::Store) -> Result<bool, crate::store::StoreError> {
    let cache = store.cfs().cache;
    if store.wal().get(cache, FORMAT_KEY)?.as_deref() == Some(&[FORMAT][..]) {
        return Ok(false);
    }
    build_stored(store)?;
    store.wal().put_derived(cache, FORMAT_KEY, &[FORMAT])?;
    Ok(true)
}

/// Mark the store as not holding a tree of this layout, durably (a
/// synced commit), so that [`ensure`] builds it again: for a writer about
/// to change the views without their tree (a restore), so that a crash or
/// an interruption before the tree is built leaves no stale tree marked
/// as current.
pub fn invalidate(store: &crate::store::Store) -> Result<(), crate::store::StoreError> {
    if store.wal().get(store.cfs().cache, FORMAT_KEY)?.is_none() {
        return Ok(());
    }
    store.run_blocking(|txn, cfs| {
        txn.delete(cfs.cache, FORMAT_KEY);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Flags;
    use crate::mutate::{self, NewMessage};
    use crate::store::{wal_options, Store};

    /// The tree written a few mailboxes per transaction is the one `build`
    /// computes in memory, and the one kept up to date event by event.
    #[test]
    fn a_tree_built_in_batches_equals_the_incremental_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n", wal_options("n")).unwrap();
        for u in 0..3 {
            let user = format!("user{u}");
            let u2 = user.clone();
            store
                .run_blocking(move |t, c| mutate::create_user(t, c, &u2, "hash".into(), 1_700_000_000))
                .unwrap();
            for (f, folder) in ["INBOX", "Archive", "Work"].iter().enumerate() {
                for i in 0..(3 + f * 2) {
                    let m = NewMessage::new(
                        format!("Subject: {i}\r\n\r\n{user} {folder} {i}\r\n").into_bytes(),
                        Flags::default(),
                        1_700_000_000,
                    );
                    let (user, folder) = (user.clone(), folder.to_string());
                    store
                        .run_blocking(move |t, c| mutate::import(t, c, &user, &folder, &[m], 1_700_000_000).map(|_| ()))
                        .unwrap();
                }
            }
        }
        let tree = |store: &Store| store.wal().scan_prefix(store.cfs().views, &keys::all()).unwrap();
        let incremental = tree(&store);
        assert!(incremental.len() > 10, "the store holds a tree worth comparing");
        let in_memory: Vec<(Vec<u8>, Vec<u8>)> = build(&store.views()).unwrap().into_iter().collect();
        assert_eq!(
            in_memory,
            incremental.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect::<Vec<_>>()
        );
        // A stale node that must go: a batch build starts from nothing.
        store
            .run_blocking(|t, c| {
                t.put(c.views, &keys::mailbox_node(crate::event::Id([7; 16]), 0, 0), b"stale");
                Ok(())
            })
            .unwrap();
        // Batches of one mailbox (the limit is below every mailbox's size).
        build_stored_in_batches(&store, 1).unwrap();
        assert_eq!(tree(&store), incremental);
    }
}
