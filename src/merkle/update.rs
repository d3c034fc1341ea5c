//! Keeping the tree in step with the views, inside the transaction that
//! applies an event: what the event touched is summed up again from the
//! views as they now are, and the change climbs to the node root. Nothing
//! here reads more than the touched messages and one node per level.

use super::{
    account_hash, bucket_of, config_hash, group_of, keys, kind, level_key, mailbox_hash, mailbox_key, message_hash, node_index,
    stored_summary, subscription_hash, subscription_key, Node, Summary, ROOT_LEVEL,
};
use crate::event::{Event, Id};
use crate::views::{TxnViews, ViewError, ViewRead};
use std::collections::BTreeMap;

/// Entry changes of one node: (entry key, new summary or none).
type Changes = Vec<(Vec<u8>, Option<Summary>)>;

/// Read a node and its stored summary (`None`: not stored, empty).
fn load(v: &TxnViews<'_, '_>, key: &[u8]) -> Result<(Node, Option<Summary>), ViewError> {
    match v.vget(key)? {
        Some(b) => Ok((Node::decode(key, &b)?, Some(stored_summary(key, &b)?))),
        None => Ok((Node::default(), None)),
    }
}

/// Apply entry changes to one node; `Some(new summary)` if it changed
/// (`Some(None)`: it became empty and was deleted). The node is encoded
/// and hashed once.
fn change(
    v: &mut TxnViews<'_, '_>,
    key: &[u8],
    kind: u8,
    changes: &[(Vec<u8>, Option<Summary>)],
) -> Result<Option<Option<Summary>>, ViewError> {
    let (mut node, before) = load(v, key)?;
    for (k, s) in changes {
        node.set(k, *s);
    }
    if node.entries.is_empty() {
        if before.is_none() {
            return Ok(None);
        }
        v.delete(key);
        return Ok(Some(None));
    }
    let value = node.encode(kind);
    let after = stored_summary(key, &value)?;
    if Some(after) == before {
        return Ok(None);
    }
    v.put(key, &value);
    Ok(Some(Some(after)))
}

/// Sum up again the messages `uids` of `mailbox`, level by level.
fn refresh_messages(v: &mut TxnViews<'_, '_>, mailbox: Id, uids: impl IntoIterator<Item = u32>) -> Result<(), ViewError> {
    // Entry changes of the current level, by entry key.
    let mut pending: BTreeMap<u32, Option<Summary>> = BTreeMap::new();
    for uid in uids {
        let s = v.message(mailbox, uid)?.map(|m| (message_hash(&m), 1));
        pending.insert(level_key(0, uid), s);
    }
    for level in 0..=ROOT_LEVEL {
        let mut by_node: BTreeMap<u32, Changes> = BTreeMap::new();
        for (k, s) in pending {
            by_node.entry(node_index(level, k)).or_default().push((k.to_be_bytes().to_vec(), s));
        }
        pending = BTreeMap::new();
        for (index, changes) in by_node {
            if let Some(s) = change(v, &keys::mailbox_node(mailbox, level, index), level, &changes)? {
                pending.insert(index, s);
            }
        }
        if pending.is_empty() {
            break;
        }
    }
    Ok(())
}

/// The summary of a mailbox's messages (an empty mailbox has the empty
/// root).
pub(super) fn messages_root(v: &impl ViewRead, mailbox: Id) -> Result<Summary, ViewError> {
    let k = keys::mailbox_node(mailbox, ROOT_LEVEL, 0);
    match v.vget(&k)? {
        Some(b) => stored_summary(&k, &b),
        None => Ok(super::empty(ROOT_LEVEL)),
    }
}

/// Set entries of a user's node and carry the change up to the users' root.
fn change_user(v: &mut TxnViews<'_, '_>, user: &str, changes: &[(Vec<u8>, Option<Summary>)]) -> Result<(), ViewError> {
    let Some(s) = change(v, &keys::user(user), kind::USER, changes)? else {
        return Ok(());
    };
    change_users(v, user, s)
}

fn change_users(v: &mut TxnViews<'_, '_>, user: &str, s: Option<Summary>) -> Result<(), ViewError> {
    let bucket = bucket_of(user);
    let group = group_of(bucket);
    let Some(s) = change(v, &keys::bucket(bucket), kind::BUCKET, &[(user.as_bytes().to_vec(), s)])? else {
        return Ok(());
    };
    let Some(s) = change(v, &keys::group(group), kind::GROUP, &[(bucket.to_be_bytes().to_vec(), s)])? else {
        return Ok(());
    };
    change(v, &keys::users_root(), kind::USERS, &[(vec![group], s)])?;
    Ok(())
}

/// Drop every node of a mailbox's trie.
fn drop_trie(v: &mut TxnViews<'_, '_>, mailbox: Id) -> Result<(), ViewError> {
    for (k, _) in v.vscan(&keys::mailbox_prefix(mailbox))? {
        v.delete(&k);
    }
    Ok(())
}

/// Sum up again a mailbox's entry in its user's node.
fn refresh_mailbox(v: &mut TxnViews<'_, '_>, user: &str, mailbox: Id) -> Result<(), ViewError> {
    let key = mailbox_key(mailbox);
    let s = match v.mailbox(user, mailbox)? {
        Some(mb) => {
            let root = messages_root(v, mailbox)?;
            Some((mailbox_hash(&mb, root), root.1))
        }
        None => {
            // Gone: its trie goes with it, but only if it was this user's.
            let (node, _) = load(v, &keys::user(user))?;
            if node.get(&key).is_none() {
                return Ok(());
            }
            drop_trie(v, mailbox)?;
            None
        }
    };
    change_user(v, user, &[(key, s)])
}

/// Sum up again every mailbox of `user` from the views: for events whose
/// touched messages the event alone does not name (the master's moves,
/// which follow a message wherever earlier moves put it; a removal of a
/// mailbox; a flag change or expunge forwarded past a move). They are rare
/// (a split's resolution), so the cost of one user's messages is paid once
/// per such entry.
fn refresh_user(v: &mut TxnViews<'_, '_>, user: &str) -> Result<(), ViewError> {
    let (node, _) = load(v, &keys::user(user))?;
    let mut ids: std::collections::BTreeSet<Id> = node
        .entries
        .iter()
        .filter_map(|e| e.key.strip_prefix(b"m").and_then(|id| <[u8; 16]>::try_from(id).ok()).map(Id))
        .collect();
    ids.extend(v.mailboxes(user)?.into_iter().map(|m| m.id));
    for id in ids {
        drop_trie(v, id)?;
        let uids: Vec<u32> = v.messages(id)?.into_iter().map(|(u, _)| u).collect();
        refresh_messages(v, id, uids)?;
        refresh_mailbox(v, user, id)?;
    }
    Ok(())
}

/// Whether a flag change or expunge named a message that a move had taken
/// elsewhere (the change followed it there).
fn forwarded(v: &TxnViews<'_, '_>, mailbox: Id, messages: &[(u32, Id)]) -> Result<bool, ViewError> {
    for (uid, guid) in messages {
        if v.moved_to(mailbox, *uid, *guid)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Sum up again one message place (mailbox, uid) and its mailbox: where a
/// second placement of a pending message took it from.
pub fn refresh_place(v: &mut TxnViews<'_, '_>, user: &str, mailbox: Id, uid: u32) -> Result<(), ViewError> {
    refresh_messages(v, mailbox, [uid])?;
    refresh_mailbox(v, user, mailbox)
}

/// Sum up again the messages `uids` of `user`'s `mailbox` and the
/// mailbox itself, once for all of them: for a writer that applied many
/// appends to one mailbox without the tree, in the same transaction
/// (`crate::mutate::emit_appends`). The result is what [`update`] after
/// each would have left, for one climb of the tree instead of one each.
pub fn refresh_messages_of(
    v: &mut TxnViews<'_, '_>,
    user: &str,
    mailbox: Id,
    uids: impl IntoIterator<Item = u32>,
) -> Result<(), ViewError> {
    refresh_messages(v, mailbox, uids)?;
    refresh_mailbox(v, user, mailbox)
}

/// Sum up again what `event` touched. Called by `views::apply` after the
/// event changed the views, in the same transaction.
pub fn update(v: &mut TxnViews<'_, '_>, event: &Event) -> Result<(), ViewError> {
    if cfg!(feature = "bench-skip-merkle") {
        return Ok(());
    }
    match event {
        Event::MessagesMoved { user, .. } | Event::MessagesMovedInEpoch { user, .. } | Event::MailboxRemoved { user, .. } => {
            refresh_user(v, user)?
        }
        Event::FlagsChanged {
            user, mailbox, messages, ..
        }
        | Event::Expunged { user, mailbox, messages }
            if forwarded(v, *mailbox, messages)? =>
        {
            refresh_user(v, user)?
        }
        // Which node is master is not state the nodes compare; side files
        // converge through the log alone (`crate::sidefiles`), as quotas do;
        // a conflict report only marks UIDs (marks are not in the tree).
        Event::ConflictsReported { .. }
        | Event::RoleChanged { .. }
        | Event::SideFileSet { .. }
        | Event::SideFileRemoved { .. }
        | Event::QuotaSet { .. } => {}
        Event::UserCreated { user, .. } | Event::PasswordChanged { user, .. } => {
            let s = v.user(user)?.map(|u| (account_hash(&u.password_hash), 0));
            change_user(v, user, &[(super::account_key(), s)])?;
        }
        Event::UserDeleted { user } => {
            let (node, stored) = load(v, &keys::user(user))?;
            for e in &node.entries {
                if let Some(id) = e.key.strip_prefix(b"m").and_then(|id| <[u8; 16]>::try_from(id).ok()) {
                    drop_trie(v, Id(id))?;
                }
            }
            if stored.is_some() {
                v.delete(&keys::user(user));
                change_users(v, user, None)?;
            }
        }
        Event::MailboxCreated { user, mailbox, .. }
        | Event::MailboxRenamed { user, mailbox, .. }
        | Event::MailboxDeleted { user, mailbox }
        | Event::MailboxRestored { user, mailbox, .. } => {
            refresh_mailbox(v, user, *mailbox)?;
        }
        Event::Subscribed { user, name, .. } => {
            let held = v.vget(&crate::views::keys::subscription(user, name))?.is_some();
            change_user(v, user, &[(subscription_key(name), held.then(|| (subscription_hash(name), 0)))])?;
        }
        Event::MessageAppended { user, mailbox, uid, .. }
        | Event::MessageRestored { user, mailbox, uid, .. }
        | Event::MessagePlaced { user, mailbox, uid, .. }
        | Event::MessagePlacedInEpoch { user, mailbox, uid, .. } => {
            refresh_messages(v, *mailbox, [*uid])?;
            refresh_mailbox(v, user, *mailbox)?;
        }
        Event::FlagsChanged {
            user, mailbox, messages, ..
        }
        | Event::Expunged { user, mailbox, messages } => {
            refresh_messages(v, *mailbox, messages.iter().map(|m| m.0))?;
            refresh_mailbox(v, user, *mailbox)?;
        }
        Event::ConfigSet { key, .. } => {
            let s = v.vget(&crate::views::keys::config(key))?.map(|val| (config_hash(&val), 0));
            change(v, &keys::config(), kind::CONFIG, &[(key.as_bytes().to_vec(), s)])?;
        }
    }
    Ok(())
}
