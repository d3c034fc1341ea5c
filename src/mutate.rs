//! Mutations: each runs inside one log transaction on the writer thread. It
//! checks the request against the views (seeing earlier transactions of the
//! same group), decides what the origin decides (UIDs, ids, UIDVALIDITY),
//! appends the resulting events and applies them to the views — all in the
//! batch that makes the entry durable.

use crate::event::{BlobHash, Event, FlagOp, Flags, Id, SpecialUse};
use crate::views::{apply, read::TxnViews, read::ViewError, MailboxRec, ViewRead};
use wal::{Appended, Cf, Txn};

/// Column families the daemon keeps beside the log.
#[derive(Debug, Clone, Copy)]
pub struct Cfs {
    pub views: Cf,
    pub blobs: Cf,
    /// Derived, rebuildable data; not part of the views.
    pub cache: Cf,
}

/// Why a mutation was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum MutationError {
    #[error("no such user {0}")]
    NoSuchUser(String),
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("no such mailbox {0}")]
    NoSuchMailbox(String),
    #[error("mailbox {0} already exists")]
    MailboxExists(String),
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{0}")]
    NotAllowed(&'static str),
    /// The user's quota (RFC 9208) has no room for this: `whole` when the
    /// message alone is larger than the limit (no expunge makes room).
    #[error("over quota")]
    OverQuota { whole: bool },
    /// Data from a peer that cannot be applied; says which and why.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    View(#[from] ViewError),
}

impl From<wal::WalError> for MutationError {
    fn from(e: wal::WalError) -> Self {
        MutationError::View(ViewError::Wal(e))
    }
}

type R<T> = Result<T, MutationError>;

/// Append `event` to the local log and apply it to the views.
pub fn emit(txn: &mut Txn<'_>, cfs: Cfs, event: Event) -> R<Appended> {
    let at = txn.append(event.encode());
    apply(&mut TxnViews { txn, cf: cfs.views }, &at, &event)?;
    Ok(at)
}

/// Append and apply messages added to one mailbox, each
/// `MessageAppended` of `user` into `mailbox` under a UID (not pending),
/// updating the merkle tree once for all of them instead of once each: for
/// bulk copies (a point-in-time restore). Any other event is refused
/// before anything is appended.
pub fn emit_appends(txn: &mut Txn<'_>, cfs: Cfs, user: &str, mailbox: Id, events: Vec<Event>) -> R<Vec<Appended>> {
    let mut uids = Vec::with_capacity(events.len());
    for e in &events {
        match e {
            Event::MessageAppended {
                user: u, mailbox: m, uid, ..
            } if u == user && *m == mailbox && *uid != 0 => uids.push(*uid),
            _ => return Err(MutationError::NotAllowed("a batch of appends holds another event")),
        }
    }
    let mut out = Vec::with_capacity(events.len());
    for event in &events {
        let at = txn.append(event.encode());
        crate::views::apply_without_tree(&mut TxnViews { txn, cf: cfs.views }, &at, event)?;
        out.push(at);
    }
    crate::merkle::refresh_messages_of(&mut TxnViews { txn, cf: cfs.views }, user, mailbox, uids)?;
    Ok(out)
}

/// Normalise a user name: trimmed, lower-cased, no spaces or controls.
pub fn normalize_user(user: &str) -> R<String> {
    let u = user.trim().to_lowercase();
    if u.is_empty() || u.len() > 255 || u.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(MutationError::InvalidName {
            name: user.to_string(),
            reason: "user names are 1-255 printable characters without spaces",
        });
    }
    Ok(u)
}

/// Normalise a mailbox name: `INBOX` is case-insensitive (also as the first
/// level of a hierarchy), `/` separates levels, empty levels are refused.
pub fn normalize_mailbox(name: &str) -> R<String> {
    let bad = |reason| {
        Err(MutationError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 1024 {
        return bad("mailbox names are 1-1024 bytes");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("control characters are not allowed");
    }
    if name.split('/').any(|l| l.is_empty()) {
        return bad("empty hierarchy level");
    }
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    if first.eq_ignore_ascii_case("INBOX") {
        return Ok(match rest {
            Some(r) => format!("INBOX/{r}"),
            None => "INBOX".to_string(),
        });
    }
    Ok(name.to_string())
}

fn views<'t, 'a>(txn: &'t mut Txn<'a>, cfs: Cfs) -> TxnViews<'t, 'a> {
    TxnViews { txn, cf: cfs.views }
}

fn require_user(txn: &mut Txn<'_>, cfs: Cfs, user: &str) -> R<()> {
    if views(txn, cfs).user(user)?.is_none() {
        return Err(MutationError::NoSuchUser(user.to_string()));
    }
    Ok(())
}

fn next_uidvalidity(txn: &mut Txn<'_>, cfs: Cfs, user: &str, now_secs: i64) -> R<u32> {
    let last = views(txn, cfs).last_uidvalidity(user)?;
    let now = u32::try_from(now_secs.max(1)).unwrap_or(u32::MAX - 1);
    Ok(now.max(last.saturating_add(1)))
}

/// Create a user with INBOX and the special-use folders, all subscribed.
pub fn create_user(txn: &mut Txn<'_>, cfs: Cfs, user: &str, password_hash: String, now_secs: i64) -> R<()> {
    let user = normalize_user(user)?;
    if views(txn, cfs).user(&user)?.is_some() {
        return Err(MutationError::UserExists(user));
    }
    emit(
        txn,
        cfs,
        Event::UserCreated {
            user: user.clone(),
            password_hash,
        },
    )?;
    let mut folders: Vec<(&str, Option<SpecialUse>)> = vec![("INBOX", None)];
    folders.extend(SpecialUse::DEFAULTS.iter().map(|(n, s)| (*n, Some(*s))));
    for (name, special_use) in folders {
        let uidvalidity = next_uidvalidity(txn, cfs, &user, now_secs)?;
        emit(
            txn,
            cfs,
            Event::MailboxCreated {
                user: user.clone(),
                mailbox: Id::random(),
                name: name.into(),
                uidvalidity,
                special_use,
            },
        )?;
        emit(
            txn,
            cfs,
            Event::Subscribed {
                user: user.clone(),
                name: name.into(),
                subscribed: true,
            },
        )?;
    }
    Ok(())
}

pub fn set_password(txn: &mut Txn<'_>, cfs: Cfs, user: &str, password_hash: String) -> R<()> {
    let user = normalize_user(user)?;
    require_user(txn, cfs, &user)?;
    emit(txn, cfs, Event::PasswordChanged { user, password_hash })?;
    Ok(())
}

pub fn delete_user(txn: &mut Txn<'_>, cfs: Cfs, user: &str) -> R<()> {
    let user = normalize_user(user)?;
    require_user(txn, cfs, &user)?;
    emit(txn, cfs, Event::UserDeleted { user })?;
    Ok(())
}

/// Create a mailbox; missing parents are created too (as IMAP allows).
pub fn create_mailbox(
    txn: &mut Txn<'_>,
    cfs: Cfs,
    user: &str,
    name: &str,
    special_use: Option<SpecialUse>,
    now_secs: i64,
) -> R<MailboxRec> {
    let name = normalize_mailbox(name)?;
    require_user(txn, cfs, user)?;
    if views(txn, cfs).mailbox_id(user, &name)?.is_some() {
        return Err(MutationError::MailboxExists(name));
    }
    let levels: Vec<&str> = name.split('/').collect();
    for i in 1..levels.len() {
        let parent = levels[..i].join("/");
        if views(txn, cfs).mailbox_id(user, &parent)?.is_none() {
            let uidvalidity = next_uidvalidity(txn, cfs, user, now_secs)?;
            emit(
                txn,
                cfs,
                Event::MailboxCreated {
                    user: user.into(),
                    mailbox: Id::random(),
                    name: parent,
                    uidvalidity,
                    special_use: None,
                },
            )?;
        }
    }
    let id = Id::random();
    let uidvalidity = next_uidvalidity(txn, cfs, user, now_secs)?;
    emit(
        txn,
        cfs,
        Event::MailboxCreated {
            user: user.into(),
            mailbox: id,
            name,
            uidvalidity,
            special_use,
        },
    )?;
    views(txn, cfs)
        .mailbox(user, id)?
        .ok_or(MutationError::NotAllowed("mailbox vanished while being created"))
}

/// Rename a mailbox and every mailbox below it.
pub fn rename_mailbox(txn: &mut Txn<'_>, cfs: Cfs, user: &str, from: &str, to: &str) -> R<()> {
    let from = normalize_mailbox(from)?;
    let to = normalize_mailbox(to)?;
    require_user(txn, cfs, user)?;
    if from == "INBOX" {
        return Err(MutationError::NotAllowed(
            "renaming INBOX moves its messages; use the IMAP RENAME of INBOX",
        ));
    }
    let Some(id) = views(txn, cfs).mailbox_id(user, &from)? else {
        return Err(MutationError::NoSuchMailbox(from));
    };
    if views(txn, cfs).mailbox_id(user, &to)?.is_some() {
        return Err(MutationError::MailboxExists(to));
    }
    if to.starts_with(&format!("{from}/")) {
        return Err(MutationError::NotAllowed("cannot rename a mailbox into itself"));
    }
    let prefix = format!("{from}/");
    let children: Vec<MailboxRec> = views(txn, cfs)
        .mailboxes(user)?
        .into_iter()
        .filter(|m| m.name.starts_with(&prefix))
        .collect();
    emit(
        txn,
        cfs,
        Event::MailboxRenamed {
            user: user.into(),
            mailbox: id,
            name: to.clone(),
        },
    )?;
    for c in children {
        let new = format!("{to}/{}", &c.name[prefix.len()..]);
        emit(
            txn,
            cfs,
            Event::MailboxRenamed {
                user: user.into(),
                mailbox: c.id,
                name: new,
            },
        )?;
    }
    Ok(())
}

/// Messages named per `Expunged` event when a mailbox is deleted, so one
/// entry stays well below a batch.
const EXPUNGE_CHUNK: usize = 4096;

pub fn delete_mailbox(txn: &mut Txn<'_>, cfs: Cfs, user: &str, name: &str) -> R<()> {
    let name = normalize_mailbox(name)?;
    require_user(txn, cfs, user)?;
    if name == "INBOX" {
        return Err(MutationError::NotAllowed("INBOX cannot be deleted"));
    }
    let Some(id) = views(txn, cfs).mailbox_id(user, &name)? else {
        return Err(MutationError::NoSuchMailbox(name));
    };
    // What this node shows is expunged first, by (UID, GUID): a message
    // another node delivered into the mailbox meanwhile is not named here,
    // so the deletion keeps it aside for the master to bring back rather
    // than dropping it (`MailboxRemoved`).
    let shown: Vec<(u32, Id)> = views(txn, cfs).messages(id)?.into_iter().map(|(u, m)| (u, m.guid)).collect();
    for chunk in shown.chunks(EXPUNGE_CHUNK) {
        emit(
            txn,
            cfs,
            Event::Expunged {
                user: user.into(),
                mailbox: id,
                messages: chunk.to_vec(),
            },
        )?;
    }
    emit(
        txn,
        cfs,
        Event::MailboxRemoved {
            user: user.into(),
            mailbox: id,
        },
    )?;
    Ok(())
}

pub fn subscribe(txn: &mut Txn<'_>, cfs: Cfs, user: &str, name: &str, subscribed: bool) -> R<()> {
    let name = normalize_mailbox(name)?;
    require_user(txn, cfs, user)?;
    emit(
        txn,
        cfs,
        Event::Subscribed {
            user: user.into(),
            name,
            subscribed,
        },
    )?;
    Ok(())
}

/// A message to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub body: std::sync::Arc<Vec<u8>>,
    pub blob: BlobHash,
    pub flags: Flags,
    pub internal_date: i64,
    pub tz_minutes: i16,
    /// Keep the GUID of a message that already exists elsewhere (MOVE,
    /// import); otherwise a fresh one.
    pub guid: Option<Id>,
    /// Append it pending, for the master to give it its UID (a slave whose
    /// link to the master is up; `replication.md` section 8b).
    pub pending: bool,
}

impl NewMessage {
    pub fn new(body: Vec<u8>, flags: Flags, internal_date: i64) -> NewMessage {
        let blob = BlobHash::of(&body);
        NewMessage {
            body: std::sync::Arc::new(body),
            blob,
            flags,
            internal_date,
            tz_minutes: 0,
            guid: None,
            pending: false,
        }
    }
}

/// Where an appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub mailbox: Id,
    pub uidvalidity: u32,
    /// 0 while the message is pending (awaiting the master's placement).
    pub uid: u32,
    pub guid: Id,
}

fn store_blob(txn: &mut Txn<'_>, cfs: Cfs, blob: &BlobHash, body: &[u8]) -> R<()> {
    if txn.get(cfs.blobs, &blob.0)?.is_none() {
        txn.put(cfs.blobs, &blob.0, body);
    }
    Ok(())
}

/// Append a message to a mailbox by id. The body is stored once per hash.
pub fn append_to(txn: &mut Txn<'_>, cfs: Cfs, user: &str, mailbox: Id, msg: &NewMessage) -> R<Placed> {
    let Some(mb) = views(txn, cfs).mailbox(user, mailbox)? else {
        return Err(MutationError::NoSuchMailbox(mailbox.to_hex()));
    };
    if mb.uidnext == u32::MAX {
        return Err(MutationError::NotAllowed("mailbox has used every UID"));
    }
    store_blob(txn, cfs, &msg.blob, &msg.body)?;
    let guid = msg.guid.unwrap_or_else(Id::random);
    let uid = if msg.pending { 0 } else { mb.uidnext };
    emit(
        txn,
        cfs,
        Event::MessageAppended {
            user: user.into(),
            mailbox,
            uid,
            guid,
            blob: msg.blob,
            size: msg.body.len() as u64,
            internal_date: msg.internal_date,
            tz_minutes: msg.tz_minutes,
            flags: msg.flags.clone(),
        },
    )?;
    Ok(Placed {
        mailbox,
        uidvalidity: mb.uidvalidity,
        uid,
        guid,
    })
}

/// The UID a pending message of `mailbox` gets here: the UID the mailbox
/// already shows its GUID under (two MOVEs of one message), else UIDNEXT.
pub fn placement_uid(v: &impl ViewRead, mb: &MailboxRec, guid: Id) -> R<Option<u32>> {
    if let Some(uid) = v.uid_of_guid(mb.id, guid)? {
        if v.message(mb.id, uid)?.is_some_and(|m| m.guid == guid) {
            return Ok(Some(uid));
        }
    }
    Ok((mb.uidnext < u32::MAX).then_some(mb.uidnext))
}

/// Place a pending message of `mailbox` here (the master's placement, or
/// a slave's own when the master did not answer in time). Where it is
/// placed already, returns that place and writes nothing; `None` when it
/// is neither pending nor placed (its mailbox went, or its user).
pub fn place_pending(txn: &mut Txn<'_>, cfs: Cfs, user: &str, mailbox: Id, guid: Id) -> R<Option<Placed>> {
    let v = views(txn, cfs);
    let Some(mb) = v.mailbox(user, mailbox)? else {
        return Ok(None);
    };
    if let Some((at, uid)) = v.placed(mailbox, guid)? {
        let uidvalidity = v.mailbox(user, at)?.map_or(mb.uidvalidity, |m| m.uidvalidity);
        return Ok(Some(Placed {
            mailbox: at,
            uidvalidity,
            uid,
            guid,
        }));
    }
    if v.vget(&crate::views::keys::pending(mailbox, guid))?.is_none() {
        return Ok(None);
    }
    let Some(uid) = placement_uid(&v, &mb, guid)? else {
        return Err(MutationError::NotAllowed("mailbox has used every UID"));
    };
    // The placement carries the highest epoch this node holds: the
    // master's under which it is master, a slave's (its own placement when
    // the master did not answer) the one it last heard of.
    let epoch = crate::repl::role::highest(&v)?.map_or(0, |m| m.epoch);
    emit(txn, cfs, Event::placed(epoch, user.into(), mailbox, guid, uid))?;
    Ok(Some(Placed {
        mailbox,
        uidvalidity: mb.uidvalidity,
        uid,
        guid,
    }))
}

/// Refuse to add `bytes` in `count` messages to what `user` holds when
/// that goes past the user's quota. Quota is checked against this node's
/// views: nodes cut off from each other may each accept up to the limit.
pub fn check_quota(v: &impl ViewRead, user: &str, bytes: u64, count: u64) -> R<()> {
    let Some(q) = v.quota(user)? else { return Ok(()) };
    let limit_bytes = q.storage_kib.map(|k| k.saturating_mul(1024));
    if limit_bytes.is_some_and(|l| bytes > l) || q.messages.is_some_and(|l| count > l) {
        return Err(MutationError::OverQuota { whole: true });
    }
    let (used_bytes, used_count) = v.usage(user)?;
    if limit_bytes.is_some_and(|l| used_bytes.saturating_add(bytes) > l) || q.messages.is_some_and(|l| used_count.saturating_add(count) > l)
    {
        return Err(MutationError::OverQuota { whole: false });
    }
    Ok(())
}

/// Append a message to a mailbox by name, within the user's quota.
pub fn append(txn: &mut Txn<'_>, cfs: Cfs, user: &str, mailbox: &str, msg: &NewMessage) -> R<Placed> {
    let name = normalize_mailbox(mailbox)?;
    require_user(txn, cfs, user)?;
    let Some(id) = views(txn, cfs).mailbox_id(user, &name)? else {
        return Err(MutationError::NoSuchMailbox(name));
    };
    check_quota(&views(txn, cfs), user, msg.body.len() as u64, 1)?;
    append_to(txn, cfs, user, id, msg)
}

/// Change flags of the given UIDs (missing UIDs are ignored). Returns the
/// UIDs whose flags changed.
pub fn store_flags(txn: &mut Txn<'_>, cfs: Cfs, user: &str, mailbox: Id, uids: &[u32], op: FlagOp, flags: &Flags) -> R<Vec<u32>> {
    let mut changed = Vec::new();
    {
        let v = views(txn, cfs);
        for uid in uids {
            if let Some(m) = v.message(mailbox, *uid)? {
                if m.flags.apply(op, flags) != m.flags {
                    changed.push((*uid, m.guid));
                }
            }
        }
    }
    if !changed.is_empty() {
        emit(
            txn,
            cfs,
            Event::FlagsChanged {
                user: user.into(),
                mailbox,
                messages: changed.clone(),
                op,
                flags: flags.clone(),
            },
        )?;
    }
    Ok(changed.into_iter().map(|(u, _)| u).collect())
}

/// Expunge the given UIDs (missing ones are ignored). Returns those removed.
pub fn expunge(txn: &mut Txn<'_>, cfs: Cfs, user: &str, mailbox: Id, uids: &[u32]) -> R<Vec<u32>> {
    let mut gone = Vec::new();
    {
        let v = views(txn, cfs);
        for uid in uids {
            if let Some(m) = v.message(mailbox, *uid)? {
                gone.push((*uid, m.guid));
            }
        }
    }
    if !gone.is_empty() {
        emit(
            txn,
            cfs,
            Event::Expunged {
                user: user.into(),
                mailbox,
                messages: gone.clone(),
            },
        )?;
    }
    Ok(gone.into_iter().map(|(u, _)| u).collect())
}

/// A COPY or MOVE's result: the target's UIDVALIDITY and per message
/// (source uid, new uid, GUID of the copy); new uids are 0 when the copies
/// were appended pending.
pub type Copied = (u32, Vec<(u32, u32, Id)>);

/// A copy of message `m` appended to `mailbox` under `uid` with `guid`:
/// the same body (by reference), size, internal date and flags.
pub fn copy_of(m: &crate::views::MessageRec, user: &str, mailbox: Id, uid: u32, guid: Id) -> Event {
    Event::MessageAppended {
        user: user.into(),
        mailbox,
        uid,
        guid,
        blob: m.blob,
        size: m.size,
        internal_date: m.internal_date,
        tz_minutes: m.tz_minutes,
        flags: m.flags.clone(),
    }
}

/// Copy messages to another mailbox (new GUIDs, same blobs and flags).
/// With `remove`, it is a MOVE: the copies keep their GUIDs and the sources
/// are expunged in the same transaction. With `pending`, the copies await
/// the master's placement (UID 0).
#[allow(clippy::too_many_arguments)]
pub fn copy(txn: &mut Txn<'_>, cfs: Cfs, user: &str, from: Id, uids: &[u32], to: Id, remove: bool, pending: bool) -> R<Copied> {
    let Some(dst) = views(txn, cfs).mailbox(user, to)? else {
        return Err(MutationError::NoSuchMailbox(to.to_hex()));
    };
    if !remove {
        // A copy adds to what the user holds (a move does not).
        let (mut bytes, mut count) = (0u64, 0u64);
        for m in views(txn, cfs).messages_at(from, uids)?.into_iter().flatten() {
            bytes = bytes.saturating_add(m.size);
            count += 1;
        }
        if count > 0 {
            check_quota(&views(txn, cfs), user, bytes, count)?;
        }
    }
    let mut pairs = Vec::new();
    let mut sources = Vec::new();
    for uid in uids {
        let Some(m) = views(txn, cfs).message(from, *uid)? else { continue };
        let Some(mb) = views(txn, cfs).mailbox(user, to)? else { break };
        if mb.uidnext == u32::MAX {
            return Err(MutationError::NotAllowed("mailbox has used every UID"));
        }
        let new_uid = if pending { 0 } else { mb.uidnext };
        let guid = if remove { m.guid } else { Id::random() };
        emit(txn, cfs, copy_of(&m, user, to, new_uid, guid))?;
        pairs.push((*uid, new_uid, guid));
        sources.push((*uid, m.guid));
    }
    if remove && !sources.is_empty() {
        emit(
            txn,
            cfs,
            Event::Expunged {
                user: user.into(),
                mailbox: from,
                messages: sources,
            },
        )?;
    }
    Ok((dst.uidvalidity, pairs))
}

/// Set (or, with `None`, lift) a user's quota limits.
pub fn set_quota(txn: &mut Txn<'_>, cfs: Cfs, user: &str, storage_kib: Option<u64>, messages: Option<u64>) -> R<()> {
    require_user(txn, cfs, user)?;
    emit(
        txn,
        cfs,
        Event::QuotaSet {
            user: user.into(),
            storage_kib,
            messages,
        },
    )?;
    Ok(())
}

pub fn set_config(txn: &mut Txn<'_>, cfs: Cfs, key: &str, value: &str) -> R<()> {
    emit(
        txn,
        cfs,
        Event::ConfigSet {
            key: key.into(),
            value: value.into(),
        },
    )?;
    Ok(())
}

/// Import messages into a folder (created if missing). A message whose body
/// the folder already holds is skipped, so importing the same source twice
/// adds nothing. Returns (added, skipped).
pub fn import(txn: &mut Txn<'_>, cfs: Cfs, user: &str, folder: &str, msgs: &[NewMessage], now_secs: i64) -> R<(u64, u64)> {
    let name = normalize_mailbox(folder)?;
    require_user(txn, cfs, user)?;
    let id = match views(txn, cfs).mailbox_id(user, &name)? {
        Some(id) => id,
        None => {
            let special_use = SpecialUse::DEFAULTS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
            let mb = create_mailbox(txn, cfs, user, &name, special_use, now_secs)?;
            emit(
                txn,
                cfs,
                Event::Subscribed {
                    user: user.into(),
                    name: name.clone(),
                    subscribed: true,
                },
            )?;
            mb.id
        }
    };
    let (mut added, mut skipped) = (0, 0);
    for m in msgs {
        if views(txn, cfs).content_count(id, &m.blob)? > 0 {
            skipped += 1;
            continue;
        }
        append_to(txn, cfs, user, id, m)?;
        added += 1;
    }
    Ok((added, skipped))
}
