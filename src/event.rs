//! Events: what the log says happened. Every mailbox mutation is one of these,
//! appended to the origin's log and applied to the views.
//!
//! Events name messages by a stable GUID and their content by its blake3
//! hash; the UID the origin assigned travels with the append. Payload layout:
//! one format byte ([`EVENT_FORMAT`]) then the postcard encoding of [`Event`].

use serde::{Deserialize, Serialize};

/// Format byte in front of every event payload.
pub const EVENT_FORMAT: u8 = 1;

/// 16-byte stable identifier (mailbox id, message GUID).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Id(pub [u8; 16]);

impl Id {
    pub fn random() -> Id {
        Id(rand::random())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

/// blake3 hash of a message body.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    pub fn of(bytes: &[u8]) -> BlobHash {
        BlobHash(*blake3::hash(bytes).as_bytes())
    }
}

impl std::fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(&self.0[..8]))
    }
}

/// RFC 6154 special-use attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecialUse {
    Sent,
    Drafts,
    Trash,
    Junk,
    Archive,
}

impl SpecialUse {
    pub fn attribute(&self) -> &'static str {
        match self {
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Archive => "\\Archive",
        }
    }
    /// Folders every new user gets, with their attribute.
    pub const DEFAULTS: [(&'static str, SpecialUse); 5] = [
        ("Sent", SpecialUse::Sent),
        ("Drafts", SpecialUse::Drafts),
        ("Trash", SpecialUse::Trash),
        ("Junk", SpecialUse::Junk),
        ("Archive", SpecialUse::Archive),
    ];
}

/// A set of IMAP flags, kept sorted and without duplicates. System flags are
/// spelled with their backslash (`\Seen`); keywords as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<String>")]
pub struct Flags(Vec<String>);

impl From<Vec<String>> for Flags {
    /// Decoded flags are canonicalised again: a peer's bytes are input.
    fn from(v: Vec<String>) -> Flags {
        Flags::new(v)
    }
}

impl Flags {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(it: I) -> Flags {
        let mut v: Vec<String> = it.into_iter().map(|s| canonical_flag(s.into())).collect();
        v.sort();
        v.dedup();
        Flags(v)
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| s.as_str())
    }
    pub fn contains(&self, f: &str) -> bool {
        let f = canonical_flag(f.to_string());
        self.0.binary_search(&f).is_ok()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Apply a flag operation; returns the new set.
    pub fn apply(&self, op: FlagOp, flags: &Flags) -> Flags {
        match op {
            FlagOp::Set => flags.clone(),
            FlagOp::Add => Flags::new(self.0.iter().chain(flags.0.iter()).cloned()),
            FlagOp::Remove => Flags(self.0.iter().filter(|f| !flags.0.contains(f)).cloned().collect()),
        }
    }
}

/// System flags compare case-insensitively; store them in one spelling.
fn canonical_flag(f: String) -> String {
    const SYSTEM: [&str; 6] = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent"];
    for s in SYSTEM {
        if f.eq_ignore_ascii_case(s) {
            return s.to_string();
        }
    }
    f
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlagOp {
    Add,
    Remove,
    Set,
}

/// One mutation. Users are full addresses, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    UserCreated {
        user: String,
        password_hash: String,
    },
    PasswordChanged {
        user: String,
        password_hash: String,
    },
    UserDeleted {
        user: String,
    },
    MailboxCreated {
        user: String,
        mailbox: Id,
        name: String,
        uidvalidity: u32,
        special_use: Option<SpecialUse>,
    },
    MailboxRenamed {
        user: String,
        mailbox: Id,
        name: String,
    },
    MailboxDeleted {
        user: String,
        mailbox: Id,
    },
    Subscribed {
        user: String,
        name: String,
        subscribed: bool,
    },
    MessageAppended {
        user: String,
        mailbox: Id,
        uid: u32,
        guid: Id,
        blob: BlobHash,
        size: u64,
        /// Seconds since the epoch.
        internal_date: i64,
        /// Offset of the internal date's zone, in minutes east of UTC.
        tz_minutes: i16,
        flags: Flags,
    },
    /// Flags of messages named by (UID, GUID): the GUID makes the change
    /// land on the right message even where two nodes gave one UID to two
    /// messages. Merged per flag, last writer by (HLC, origin) wins.
    FlagsChanged {
        user: String,
        mailbox: Id,
        messages: Vec<(u32, Id)>,
        op: FlagOp,
        flags: Flags,
    },
    /// Messages removed, named by (UID, GUID).
    Expunged {
        user: String,
        mailbox: Id,
        messages: Vec<(u32, Id)>,
    },
    ConfigSet {
        key: String,
        value: String,
    },
    /// Messages placed again under new UIDs by the master: each
    /// (old UID, GUID, new UID) leaves `from` (shown or kept aside there)
    /// and lands in `to` (the same mailbox when a UID collision is
    /// resolved; another when two mailboxes of one name are merged or a
    /// delivery into a deleted mailbox is brought back). Flags with their
    /// clocks, size and internal date go with the message. `resolves` names
    /// the UIDs of `from` whose collision this settles.
    MessagesMoved {
        user: String,
        from: Id,
        to: Id,
        resolves: Vec<u32>,
        moves: Vec<(u32, Id, u32)>,
    },
    /// A mailbox deleted after the same transaction expunged every message
    /// the deleting node showed in it: whatever is still in it where this
    /// applies was delivered concurrently on another node and is kept
    /// aside for the master to bring back, never dropped. (`MailboxDeleted`,
    /// written by older builds, drops what the mailbox holds.)
    MailboxRemoved {
        user: String,
        mailbox: Id,
    },
    /// `node` is master from `epoch` on (`tandem promote`); the highest
    /// (epoch, node) a node holds names the master (see `repl::role`).
    RoleChanged {
        node: String,
        epoch: u64,
    },
    /// A message restored by a merkle resync under its UID (the log could
    /// not explain why a node lacked it, or held it otherwise): put under
    /// its UID if that is free, whatever UIDNEXT says; a message held
    /// there under the same GUID takes these fields.
    MessageRestored {
        user: String,
        mailbox: Id,
        uid: u32,
        guid: Id,
        blob: BlobHash,
        size: u64,
        internal_date: i64,
        tz_minutes: i16,
        flags: Flags,
    },
    /// A mailbox restored by a merkle resync: created with this id if
    /// missing, else given this name and special use; UIDNEXT only rises.
    MailboxRestored {
        user: String,
        mailbox: Id,
        name: String,
        uidvalidity: u32,
        uidnext: u32,
        special_use: Option<SpecialUse>,
    },
    /// The master places a message that was appended **pending** (a
    /// `MessageAppended` with UID 0, written by a slave while its link to
    /// the master was up) under `uid` of `mailbox`: one UID authority while
    /// the link is up, so no two nodes give one UID to two messages. A
    /// slave whose master did not answer in time places its own pending
    /// message the same way (`replication.md` section 8b).
    MessagePlaced {
        user: String,
        mailbox: Id,
        guid: Id,
        uid: u32,
    },
    /// A side file (`[mirror] sync_dirs`, see [`crate::sidefiles`]) was
    /// created or changed: `dir` is the directory's absolute path, the same
    /// on every node; `name` a plain file name in it; `mode` its permission
    /// bits; `body` the whole file (at most
    /// [`crate::sidefiles::MAX_FILE`] bytes), `hash` its blake3 hash. Of
    /// concurrent changes of one file the larger (HLC, origin) wins.
    SideFileSet {
        dir: String,
        name: String,
        hash: BlobHash,
        mode: u32,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// A side file was removed (see [`Event::SideFileSet`]).
    SideFileRemoved {
        dir: String,
        name: String,
    },
    /// A user's quota (`tandem quota set`, RFC 9208): `None` is no limit.
    /// Of concurrent sets for one user the larger (HLC, origin) wins.
    QuotaSet {
        user: String,
        storage_kib: Option<u64>,
        messages: Option<u64>,
    },
    /// [`Event::MessagesMoved`] by a master under `epoch` (above 0): the
    /// epoch of the role event that named its author master when it wrote
    /// it. Of two resolutions of one message the higher epoch wins on every
    /// node, then the smaller (HLC, origin); a `MessagesMoved` counts as
    /// epoch 0 (`replication.md` section 8a). Build it with
    /// [`Event::moved`], which writes the old variant at epoch 0.
    MessagesMovedInEpoch {
        epoch: u64,
        user: String,
        from: Id,
        to: Id,
        resolves: Vec<u32>,
        moves: Vec<(u32, Id, u32)>,
    },
    /// [`Event::MessagePlaced`] under `epoch` (above 0), ordered against
    /// other resolutions of the message as [`Event::MessagesMovedInEpoch`]
    /// is. Build it with [`Event::placed`].
    MessagePlacedInEpoch {
        epoch: u64,
        user: String,
        mailbox: Id,
        guid: Id,
        uid: u32,
    },
    /// A node that is not master reports UIDs of `mailbox` it holds a
    /// collision mark for, so the master renumbers them even where the
    /// master itself shows one message under the UID and holds no mark (a
    /// resolution that reached the nodes in different orders). Every node
    /// that applies it marks each UID under which it shows or keeps aside
    /// a message, and records each as reported (`replication.md` section
    /// 8a). Renumbering a UID is always safe; the report only asks for it.
    ConflictsReported {
        user: String,
        mailbox: Id,
        uids: Vec<u32>,
    },
}

/// A renumbering or merge ([`Event::MessagesMoved`] or
/// [`Event::MessagesMovedInEpoch`]) with the epoch it was written under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moves<'a> {
    pub epoch: u64,
    pub user: &'a str,
    pub from: Id,
    pub to: Id,
    pub resolves: &'a [u32],
    pub moves: &'a [(u32, Id, u32)],
}

/// A placement ([`Event::MessagePlaced`] or
/// [`Event::MessagePlacedInEpoch`]) with the epoch it was written under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement<'a> {
    pub epoch: u64,
    pub user: &'a str,
    pub mailbox: Id,
    pub guid: Id,
    pub uid: u32,
}

/// The first fields of each [`Event`] variant, in its order (postcard
/// names a variant by its index and writes fields in order, so a prefix
/// of the fields decodes from the start of the event): enough to find
/// whose event it is ([`Event::user_of`]). The test
/// `user_of_reads_every_variant` keeps the two enums in step.
#[derive(Deserialize)]
enum Head<'a> {
    UserCreated(&'a str),
    PasswordChanged(&'a str),
    UserDeleted(&'a str),
    MailboxCreated(&'a str),
    MailboxRenamed(&'a str),
    MailboxDeleted(&'a str),
    Subscribed(&'a str),
    MessageAppended(&'a str),
    FlagsChanged(&'a str),
    Expunged(&'a str),
    ConfigSet,
    MessagesMoved(&'a str),
    MailboxRemoved(&'a str),
    RoleChanged,
    MessageRestored(&'a str),
    MailboxRestored(&'a str),
    MessagePlaced(&'a str),
    SideFileSet,
    SideFileRemoved,
    QuotaSet(&'a str),
    // The epoch comes first, read past.
    #[allow(dead_code)]
    MessagesMovedInEpoch(u64, &'a str),
    #[allow(dead_code)]
    MessagePlacedInEpoch(u64, &'a str),
    ConflictsReported(&'a str),
}

impl<'a> Head<'a> {
    fn user(self) -> Option<&'a str> {
        use Head::*;
        match self {
            UserCreated(u)
            | PasswordChanged(u)
            | UserDeleted(u)
            | MailboxCreated(u)
            | MailboxRenamed(u)
            | MailboxDeleted(u)
            | Subscribed(u)
            | MessageAppended(u)
            | FlagsChanged(u)
            | Expunged(u)
            | MessagesMoved(u)
            | MailboxRemoved(u)
            | MessageRestored(u)
            | MailboxRestored(u)
            | MessagePlaced(u)
            | QuotaSet(u)
            | MessagesMovedInEpoch(_, u)
            | MessagePlacedInEpoch(_, u)
            | ConflictsReported(u) => Some(u),
            ConfigSet | RoleChanged | SideFileSet | SideFileRemoved => None,
        }
    }
}

/// Why a payload is not an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventDecodeError {
    #[error("empty event payload")]
    Empty,
    #[error("unknown event format {0}")]
    Format(u8),
    #[error("event body does not decode: {0}")]
    Body(String),
}

impl Event {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![EVENT_FORMAT];
        v.extend_from_slice(&postcard::to_allocvec(self).expect("events always serialise"));
        v
    }

    pub fn decode(payload: &[u8]) -> Result<Event, EventDecodeError> {
        match payload.first() {
            None => Err(EventDecodeError::Empty),
            Some(&EVENT_FORMAT) => match postcard::take_from_bytes(&payload[1..]) {
                Ok((e, [])) => Ok(e),
                Ok((_, rest)) => Err(EventDecodeError::Body(format!("{} unexpected bytes after the event", rest.len()))),
                Err(e) => Err(EventDecodeError::Body(e.to_string())),
            },
            Some(&f) => Err(EventDecodeError::Format(f)),
        }
    }

    /// The user an encoded event names (as [`Event::user`]), read without
    /// decoding the rest of it: for scans that look for one user's entries
    /// among many (a point-in-time restore). An error where the payload is
    /// not an event as far as its user.
    pub fn user_of(payload: &[u8]) -> Result<Option<&str>, EventDecodeError> {
        match payload.first() {
            None => Err(EventDecodeError::Empty),
            Some(&EVENT_FORMAT) => match postcard::take_from_bytes::<Head<'_>>(&payload[1..]) {
                Ok((h, _)) => Ok(h.user()),
                Err(e) => Err(EventDecodeError::Body(e.to_string())),
            },
            Some(&f) => Err(EventDecodeError::Format(f)),
        }
    }

    /// A renumbering written under `epoch`: the variant of epoch 0 (which
    /// every build decodes) at epoch 0, the one that carries it above.
    pub fn moved(epoch: u64, user: String, from: Id, to: Id, resolves: Vec<u32>, moves: Vec<(u32, Id, u32)>) -> Event {
        if epoch == 0 {
            Event::MessagesMoved {
                user,
                from,
                to,
                resolves,
                moves,
            }
        } else {
            Event::MessagesMovedInEpoch {
                epoch,
                user,
                from,
                to,
                resolves,
                moves,
            }
        }
    }

    /// A placement written under `epoch`, as [`Event::moved`] chooses.
    pub fn placed(epoch: u64, user: String, mailbox: Id, guid: Id, uid: u32) -> Event {
        if epoch == 0 {
            Event::MessagePlaced { user, mailbox, guid, uid }
        } else {
            Event::MessagePlacedInEpoch {
                epoch,
                user,
                mailbox,
                guid,
                uid,
            }
        }
    }

    /// The renumbering this event is, of either variant.
    pub fn as_moves(&self) -> Option<Moves<'_>> {
        match self {
            Event::MessagesMoved {
                user,
                from,
                to,
                resolves,
                moves,
            } => Some(Moves {
                epoch: 0,
                user,
                from: *from,
                to: *to,
                resolves,
                moves,
            }),
            Event::MessagesMovedInEpoch {
                epoch,
                user,
                from,
                to,
                resolves,
                moves,
            } => Some(Moves {
                epoch: *epoch,
                user,
                from: *from,
                to: *to,
                resolves,
                moves,
            }),
            _ => None,
        }
    }

    /// The placement this event is, of either variant.
    pub fn as_placement(&self) -> Option<Placement<'_>> {
        match self {
            Event::MessagePlaced { user, mailbox, guid, uid } => Some(Placement {
                epoch: 0,
                user,
                mailbox: *mailbox,
                guid: *guid,
                uid: *uid,
            }),
            Event::MessagePlacedInEpoch {
                epoch,
                user,
                mailbox,
                guid,
                uid,
            } => Some(Placement {
                epoch: *epoch,
                user,
                mailbox: *mailbox,
                guid: *guid,
                uid: *uid,
            }),
            _ => None,
        }
    }

    /// The user an event belongs to, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Event::UserCreated { user, .. }
            | Event::PasswordChanged { user, .. }
            | Event::UserDeleted { user }
            | Event::MailboxCreated { user, .. }
            | Event::MailboxRenamed { user, .. }
            | Event::MailboxDeleted { user, .. }
            | Event::Subscribed { user, .. }
            | Event::MessageAppended { user, .. }
            | Event::FlagsChanged { user, .. }
            | Event::Expunged { user, .. }
            | Event::MessagesMoved { user, .. }
            | Event::MailboxRemoved { user, .. }
            | Event::MessageRestored { user, .. }
            | Event::MessagePlaced { user, .. }
            | Event::MessagesMovedInEpoch { user, .. }
            | Event::MessagePlacedInEpoch { user, .. }
            | Event::ConflictsReported { user, .. }
            | Event::MailboxRestored { user, .. }
            | Event::QuotaSet { user, .. } => Some(user),
            Event::ConfigSet { .. } | Event::RoleChanged { .. } | Event::SideFileSet { .. } | Event::SideFileRemoved { .. } => None,
        }
    }

    /// One line for `tandem log tail`; never shows password hashes.
    pub fn describe(&self) -> String {
        match self {
            Event::UserCreated { user, .. } => format!("user-created {user}"),
            Event::PasswordChanged { user, .. } => format!("password-changed {user}"),
            Event::UserDeleted { user } => format!("user-deleted {user}"),
            Event::MailboxCreated {
                user,
                mailbox,
                name,
                uidvalidity,
                special_use,
            } => {
                let su = special_use.map(|s| format!(" {}", s.attribute())).unwrap_or_default();
                format!("mailbox-created {user} {name:?} id={mailbox:?} uidvalidity={uidvalidity}{su}")
            }
            Event::MailboxRenamed { user, mailbox, name } => format!("mailbox-renamed {user} id={mailbox:?} -> {name:?}"),
            Event::MailboxDeleted { user, mailbox } => format!("mailbox-deleted {user} id={mailbox:?}"),
            Event::MailboxRemoved { user, mailbox } => format!("mailbox-removed {user} id={mailbox:?}"),
            Event::Subscribed { user, name, subscribed } => {
                format!("{} {user} {name:?}", if *subscribed { "subscribed" } else { "unsubscribed" })
            }
            Event::MessageAppended {
                user,
                mailbox,
                uid,
                guid,
                blob,
                size,
                flags,
                ..
            } => format!(
                "message-appended {user} mailbox={mailbox:?} uid={uid} guid={guid:?} blob={blob:?} size={size} flags=[{}]",
                flags.iter().collect::<Vec<_>>().join(" ")
            ),
            Event::FlagsChanged {
                user,
                mailbox,
                messages,
                op,
                flags,
            } => format!(
                "flags-{} {user} mailbox={mailbox:?} uids={:?} [{}]",
                match op {
                    FlagOp::Add => "added",
                    FlagOp::Remove => "removed",
                    FlagOp::Set => "set",
                },
                messages.iter().map(|m| m.0).collect::<Vec<_>>(),
                flags.iter().collect::<Vec<_>>().join(" ")
            ),
            Event::Expunged { user, mailbox, messages } => {
                format!(
                    "expunged {user} mailbox={mailbox:?} uids={:?}",
                    messages.iter().map(|m| m.0).collect::<Vec<_>>()
                )
            }
            Event::ConfigSet { key, value } => format!("config-set {key} = {value:?}"),
            Event::MessagesMoved { .. } | Event::MessagesMovedInEpoch { .. } => {
                let m = self.as_moves().expect("a renumbering");
                let epoch = if m.epoch > 0 {
                    format!(" epoch={}", m.epoch)
                } else {
                    String::new()
                };
                format!(
                    "messages-moved {} from={:?} to={:?} resolves={:?} moves=[{}]{epoch}",
                    m.user,
                    m.from,
                    m.to,
                    m.resolves,
                    m.moves
                        .iter()
                        .map(|(o, g, n)| format!("{o}:{g:?}->{n}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
            Event::RoleChanged { node, epoch } => format!("role-changed master={node} epoch={epoch}"),
            Event::MessageRestored {
                user,
                mailbox,
                uid,
                guid,
                blob,
                flags,
                ..
            } => format!(
                "message-restored {user} mailbox={mailbox:?} uid={uid} guid={guid:?} blob={blob:?} flags=[{}]",
                flags.iter().collect::<Vec<_>>().join(" ")
            ),
            Event::MailboxRestored {
                user,
                mailbox,
                name,
                uidvalidity,
                uidnext,
                ..
            } => format!("mailbox-restored {user} {name:?} id={mailbox:?} uidvalidity={uidvalidity} uidnext={uidnext}"),
            Event::MessagePlaced { user, mailbox, guid, uid } => {
                format!("message-placed {user} mailbox={mailbox:?} guid={guid:?} uid={uid}")
            }
            Event::MessagePlacedInEpoch {
                epoch,
                user,
                mailbox,
                guid,
                uid,
            } => format!("message-placed {user} mailbox={mailbox:?} guid={guid:?} uid={uid} epoch={epoch}"),
            Event::ConflictsReported { user, mailbox, uids } => {
                format!("conflicts-reported {user} mailbox={mailbox:?} uids={uids:?}")
            }
            Event::SideFileSet {
                dir,
                name,
                hash,
                mode,
                body,
            } => format!("side-file-set {dir}/{name:?} hash={hash:?} mode={mode:o} size={}", body.len()),
            Event::SideFileRemoved { dir, name } => format!("side-file-removed {dir}/{name:?}"),
            Event::QuotaSet {
                user,
                storage_kib,
                messages,
            } => {
                let show = |l: &Option<u64>| l.map_or("none".to_string(), |n| n.to_string());
                format!("quota-set {user} storage-kib={} messages={}", show(storage_kib), show(messages))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event of every variant (the match has no wildcard, so a new
    /// variant must be added here, and to `Head`).
    fn one_of_each() -> Vec<Event> {
        let (u, id, b) = ("who@example.org".to_string(), Id([7; 16]), BlobHash([9; 32]));
        let all = vec![
            Event::UserCreated {
                user: u.clone(),
                password_hash: "h".into(),
            },
            Event::PasswordChanged {
                user: u.clone(),
                password_hash: "h".into(),
            },
            Event::UserDeleted { user: u.clone() },
            Event::MailboxCreated {
                user: u.clone(),
                mailbox: id,
                name: "A".into(),
                uidvalidity: 1,
                special_use: None,
            },
            Event::MailboxRenamed {
                user: u.clone(),
                mailbox: id,
                name: "B".into(),
            },
            Event::MailboxDeleted {
                user: u.clone(),
                mailbox: id,
            },
            Event::Subscribed {
                user: u.clone(),
                name: "A".into(),
                subscribed: true,
            },
            Event::MessageAppended {
                user: u.clone(),
                mailbox: id,
                uid: 3,
                guid: id,
                blob: b,
                size: 10,
                internal_date: 1,
                tz_minutes: 0,
                flags: Flags::new(["\\Seen"]),
            },
            Event::FlagsChanged {
                user: u.clone(),
                mailbox: id,
                messages: vec![(3, id)],
                op: FlagOp::Add,
                flags: Flags::default(),
            },
            Event::Expunged {
                user: u.clone(),
                mailbox: id,
                messages: vec![(3, id)],
            },
            Event::ConfigSet {
                key: "k".into(),
                value: "v".into(),
            },
            Event::moved(0, u.clone(), id, id, vec![3], vec![(3, id, 4)]),
            Event::MailboxRemoved {
                user: u.clone(),
                mailbox: id,
            },
            Event::RoleChanged {
                node: "n".into(),
                epoch: 2,
            },
            Event::MessageRestored {
                user: u.clone(),
                mailbox: id,
                uid: 3,
                guid: id,
                blob: b,
                size: 10,
                internal_date: 1,
                tz_minutes: 0,
                flags: Flags::default(),
            },
            Event::MailboxRestored {
                user: u.clone(),
                mailbox: id,
                name: "A".into(),
                uidvalidity: 1,
                uidnext: 5,
                special_use: None,
            },
            Event::placed(0, u.clone(), id, id, 4),
            Event::SideFileSet {
                dir: "/d".into(),
                name: "f".into(),
                hash: b,
                mode: 0o644,
                body: vec![1],
            },
            Event::SideFileRemoved {
                dir: "/d".into(),
                name: "f".into(),
            },
            Event::QuotaSet {
                user: u.clone(),
                storage_kib: Some(1),
                messages: None,
            },
            Event::moved(5, u.clone(), id, id, vec![3], vec![(3, id, 4)]),
            Event::placed(5, u.clone(), id, id, 4),
            Event::ConflictsReported {
                user: u.clone(),
                mailbox: id,
                uids: vec![3],
            },
        ];
        let mut seen = std::collections::BTreeSet::new();
        for e in &all {
            let i = match e {
                Event::UserCreated { .. } => 0,
                Event::PasswordChanged { .. } => 1,
                Event::UserDeleted { .. } => 2,
                Event::MailboxCreated { .. } => 3,
                Event::MailboxRenamed { .. } => 4,
                Event::MailboxDeleted { .. } => 5,
                Event::Subscribed { .. } => 6,
                Event::MessageAppended { .. } => 7,
                Event::FlagsChanged { .. } => 8,
                Event::Expunged { .. } => 9,
                Event::ConfigSet { .. } => 10,
                Event::MessagesMoved { .. } => 11,
                Event::MailboxRemoved { .. } => 12,
                Event::RoleChanged { .. } => 13,
                Event::MessageRestored { .. } => 14,
                Event::MailboxRestored { .. } => 15,
                Event::MessagePlaced { .. } => 16,
                Event::SideFileSet { .. } => 17,
                Event::SideFileRemoved { .. } => 18,
                Event::QuotaSet { .. } => 19,
                Event::MessagesMovedInEpoch { .. } => 20,
                Event::MessagePlacedInEpoch { .. } => 21,
                Event::ConflictsReported { .. } => 22,
            };
            seen.insert(i);
        }
        assert_eq!(seen.len(), 23, "one event of every variant");
        all
    }

    #[test]
    fn user_of_reads_every_variant() {
        for e in one_of_each() {
            let p = e.encode();
            assert_eq!(Event::user_of(&p).unwrap(), e.user(), "{e:?}");
            // Cut inside the user: an error, not a wrong answer.
            if let Some(u) = e.user() {
                let at = p.windows(u.len()).position(|w| w == u.as_bytes()).unwrap();
                assert!(Event::user_of(&p[..at + 3]).is_err(), "{e:?}");
            }
        }
        assert_eq!(Event::user_of(&[]), Err(EventDecodeError::Empty));
        assert!(matches!(Event::user_of(&[0xEE, 0]), Err(EventDecodeError::Format(0xEE))));
    }

    #[test]
    fn round_trip_and_bad_format() {
        let e = Event::Subscribed {
            user: "a@b".into(),
            name: "INBOX".into(),
            subscribed: true,
        };
        let p = e.encode();
        assert_eq!(Event::decode(&p).unwrap(), e);
        assert_eq!(Event::decode(&[]), Err(EventDecodeError::Empty));
        assert_eq!(Event::decode(&[9, 1]), Err(EventDecodeError::Format(9)));
        assert!(matches!(Event::decode(&[1, 250, 250, 250]), Err(EventDecodeError::Body(_))));
        let mut trailing = p.clone();
        trailing.push(0);
        assert!(matches!(Event::decode(&trailing), Err(EventDecodeError::Body(_))));
    }

    /// Side-file events carry the tags docs/format.md gives them.
    #[test]
    fn side_file_events_have_tags_17_and_18() {
        let set = Event::SideFileSet {
            dir: "/etc/x".into(),
            name: "a.pem".into(),
            hash: BlobHash::of(b"x"),
            mode: 0o600,
            body: b"x".to_vec(),
        };
        let removed = Event::SideFileRemoved {
            dir: "/etc/x".into(),
            name: "a.pem".into(),
        };
        assert_eq!(set.encode()[1], 17);
        assert_eq!(removed.encode()[1], 18);
        assert_eq!(Event::decode(&set.encode()).unwrap(), set);
        assert_eq!(Event::decode(&removed.encode()).unwrap(), removed);
    }

    /// The quota event carries the tag docs/format.md gives it.
    #[test]
    fn quota_event_has_tag_19() {
        let e = Event::QuotaSet {
            user: "a@b".into(),
            storage_kib: Some(1024),
            messages: None,
        };
        assert_eq!(e.encode()[1], 19);
        assert_eq!(Event::decode(&e.encode()).unwrap(), e);
        // The bytes of docs/format.md (and of fuzz/corpus/event/seed-10).
        let seed = Event::QuotaSet {
            user: "a@example.org".into(),
            storage_kib: Some(1024),
            messages: None,
        };
        let mut want = vec![1, 19, 13];
        want.extend_from_slice(b"a@example.org");
        want.extend_from_slice(&[1, 0x80, 0x08, 0]);
        assert_eq!(seed.encode(), want);
    }

    /// Resolutions of a later epoch carry it under tags 20 and 21; at
    /// epoch 0 the old variants (tags 11 and 16) are written, with the bytes
    /// this build wrote before, and they read as epoch 0.
    #[test]
    fn resolutions_carry_their_epoch_and_old_ones_read_as_epoch_0() {
        let moves = vec![(1, Id([2; 16]), 5)];
        let old = Event::MessagesMoved {
            user: "a@b".into(),
            from: Id([1; 16]),
            to: Id([1; 16]),
            resolves: vec![1],
            moves: moves.clone(),
        };
        let at0 = Event::moved(0, "a@b".into(), Id([1; 16]), Id([1; 16]), vec![1], moves.clone());
        assert_eq!(at0.encode(), old.encode());
        assert_eq!(old.encode()[1], 11);
        let read = Event::decode(&old.encode()).unwrap();
        assert_eq!(read.as_moves().map(|m| (m.epoch, m.user, m.moves)), Some((0, "a@b", &moves[..])));
        let at3 = Event::moved(3, "a@b".into(), Id([1; 16]), Id([1; 16]), vec![1], moves.clone());
        // Tag, epoch, then the fields of `MessagesMoved`.
        let mut want = vec![1, 20, 3];
        want.extend_from_slice(&old.encode()[2..]);
        assert_eq!(at3.encode(), want);
        assert_eq!(Event::decode(&want).unwrap().as_moves().map(|m| m.epoch), Some(3));

        let placed = Event::MessagePlaced {
            user: "a@b".into(),
            mailbox: Id([1; 16]),
            guid: Id([2; 16]),
            uid: 7,
        };
        assert_eq!(Event::placed(0, "a@b".into(), Id([1; 16]), Id([2; 16]), 7), placed);
        assert_eq!(placed.encode()[1], 16);
        assert_eq!(Event::decode(&placed.encode()).unwrap().as_placement().map(|p| p.epoch), Some(0));
        let p2 = Event::placed(2, "a@b".into(), Id([1; 16]), Id([2; 16]), 7);
        let mut want = vec![1, 21, 2];
        want.extend_from_slice(&placed.encode()[2..]);
        assert_eq!(p2.encode(), want);
        let back = Event::decode(&want).unwrap();
        assert_eq!(back, p2);
        assert_eq!(back.as_placement().map(|p| (p.epoch, p.uid, p.guid)), Some((2, 7, Id([2; 16]))));
        assert_eq!(back.user(), Some("a@b"));
        assert!(back.describe().ends_with("uid=7 epoch=2"));
    }

    /// A conflict report carries tag 22 and the bytes docs/format.md gives.
    #[test]
    fn conflict_report_has_tag_22() {
        let e = Event::ConflictsReported {
            user: "a@b".into(),
            mailbox: Id([1; 16]),
            uids: vec![3, 300],
        };
        let mut want = vec![1, 22, 3];
        want.extend_from_slice(b"a@b");
        want.extend_from_slice(&[1; 16]);
        want.extend_from_slice(&[2, 3, 0xac, 0x02]);
        assert_eq!(e.encode(), want);
        assert_eq!(Event::decode(&want).unwrap(), e);
        assert_eq!(e.user(), Some("a@b"));
    }

    #[test]
    fn decoded_flags_are_canonicalised() {
        let raw = postcard::to_allocvec(&vec!["\\seen".to_string(), "$a".into(), "$a".into()]).unwrap();
        let f: Flags = postcard::from_bytes(&raw).unwrap();
        assert_eq!(f.iter().collect::<Vec<_>>(), vec!["$a", "\\Seen"]);
        assert!(f.contains("\\Seen"));
    }

    #[test]
    fn flags_are_canonical() {
        let f = Flags::new(["\\seen", "$Junk", "\\SEEN", "\\Flagged"]);
        assert_eq!(f.iter().collect::<Vec<_>>(), vec!["$Junk", "\\Flagged", "\\Seen"]);
        assert!(f.contains("\\SEEN"));
        let g = f.apply(FlagOp::Remove, &Flags::new(["\\Seen"]));
        assert_eq!(g.iter().collect::<Vec<_>>(), vec!["$Junk", "\\Flagged"]);
    }
}
