//! One IMAP connection: its states (not authenticated, authenticated,
//! selected, logout), reading and framing commands, dispatch, IDLE and the
//! capability list. The handlers are grouped by RFC area in the submodules:
//!
//! - `auth`: the not authenticated state, LOGIN, AUTHENTICATE, STARTTLS,
//!   COMPRESS;
//! - `select`: SELECT and EXAMINE, and keeping a selected mailbox in step
//!   with the views (untagged EXISTS / EXPUNGE / VANISHED / FETCH);
//! - `messages`: FETCH, STORE, COPY and MOVE, EXPUNGE, SEARCH;
//! - `mailboxes`: RENAME, SUBSCRIBE, LIST and LSUB, STATUS;
//! - `extended`: the extensions whose grammar is in `proto::imap::ext`
//!   (ENABLE, LIST-EXTENDED, MULTIAPPEND, ESEARCH, SORT, THREAD, BINARY,
//!   the CONDSTORE and QRESYNC forms).

mod auth;
mod extended;
mod mailboxes;
mod messages;
mod select;

use messages::{in_ranges, merge_ranges, missing, parse_uid_set, ranges_text};

use super::conn::Conn;
use super::modseq::Scale;
use super::{bump, fetch, plaintext_ok, Credentials, Shared, SlotGuard};
use crate::auth::Secret;
use crate::event::{FlagOp, Flags, Id, SpecialUse};
use crate::mutate::{self, MutationError, NewMessage};
use crate::proto::imap::condstore::{self, SelectParams};
use crate::proto::imap::ext;
use crate::proto::imap::fragment::{tag_of, Frame, Framer};
use crate::proto::imap::mutf7;
use crate::proto::imap::search::{self, SearchMessage};
use crate::proto::imap::searchres;
use crate::store::StoreError;
use crate::views::{MailboxRec, MessageRec, ViewRead};
use imap_codec::decode::{CommandDecodeError, Decoder};
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::AString;
use imap_codec::imap_types::fetch::{Macro, MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::CommandCodec;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";

/// A selected mailbox as this session has told the client about it.
struct Selected {
    id: Id,
    name: String,
    readonly: bool,
    /// Sequence number - 1 -> UID.
    uids: Vec<u32>,
    /// Messages whose flags this session reported (FETCH, STORE, a sync)
    /// at a MODSEQ above `modseq`, with that MODSEQ: the next sync does not
    /// report them again. A message at or below `modseq` was reported or
    /// predates the SELECT, so a selected mailbox costs its UID list and
    /// this handful of entries, not a copy of every message's flags.
    told: HashMap<u32, u64>,
    /// Keywords announced in FLAGS; a keyword is announced before the
    /// first FETCH that shows it (RFC 3501 §7.2.6).
    keywords: BTreeSet<String>,
    /// The mailbox's HIGHESTMODSEQ when last compared.
    modseq: u64,
    /// Expunges seen but not yet announced (not allowed during FETCH,
    /// STORE and SEARCH by sequence number).
    expunge_pending: bool,
    /// While expunges are held back: the MODSEQ position the session had
    /// reached before the first of them, which is below all of them.
    expunge_floor: u64,
}

/// What a sync found to tell the client: untagged lines (EXPUNGE, FETCH),
/// whether messages were added (an EXISTS follows), and whether expunges
/// are still held back.
struct Found {
    lines: Vec<String>,
    added: bool,
    pending: bool,
}

impl Selected {
    /// The client now knows the flags of `uid` as of `modseq`.
    fn tell(&mut self, uid: u32, modseq: u64) {
        if modseq > self.modseq {
            self.told.insert(uid, modseq);
        }
    }

    /// Whether the flags of `uid` at `modseq` are news to the client.
    fn untold(&self, uid: u32, modseq: u64) -> bool {
        modseq > self.modseq && self.told.get(&uid) != Some(&modseq)
    }

    /// Note the keywords of `flags`; when some are new, the untagged FLAGS
    /// and PERMANENTFLAGS that announce them (to go out before the FETCH
    /// that shows them).
    fn announce(&mut self, flags: &Flags) -> Option<[String; 2]> {
        let mut new = false;
        for f in flags.iter().filter(|f| !f.starts_with('\\')) {
            if !self.keywords.contains(f) {
                self.keywords.insert(f.to_string());
                new = true;
            }
        }
        new.then(|| flag_lines(&self.keywords))
    }
}

/// `* FLAGS` and `* OK [PERMANENTFLAGS]` for a mailbox with these keywords.
fn flag_lines(keywords: &BTreeSet<String>) -> [String; 2] {
    let kw: String = keywords.iter().map(|k| format!(" {k}")).collect();
    [
        format!("* FLAGS ({SYSTEM_FLAGS}{kw})"),
        format!("* OK [PERMANENTFLAGS ({SYSTEM_FLAGS}{kw} \\*)] Flags permitted"),
    ]
}

/// How a session reports changes: with MODSEQ in every FETCH it sends
/// unasked once CONDSTORE is enabled (RFC 7162 section 3.1.4), with
/// VANISHED instead of EXPUNGE once QRESYNC is (section 3.2.10).
#[derive(Debug, Clone, Copy)]
struct Report {
    modseq: Option<Scale>,
    vanished: bool,
}

impl Report {
    /// `* seq FETCH (UID u FLAGS (...) [MODSEQ (n)])` of a flag change.
    fn flags(self, seq: usize, uid: u32, m: &MessageRec) -> String {
        match self.modseq {
            Some(s) => format!(
                "* {seq} FETCH (UID {uid} FLAGS {} MODSEQ ({}))",
                fetch::flags_list(&m.flags),
                s.wire(m.modseq)
            ),
            None => format!("* {seq} FETCH (UID {uid} FLAGS {})", fetch::flags_list(&m.flags)),
        }
    }
}

/// What the extension grammar split off a command before imap-codec
/// parsed the rest of it.
#[derive(Debug, Default)]
struct Extras {
    /// How to answer a SEARCH that was an ESEARCH, SORT or THREAD.
    search_as: Option<ext::SearchAs>,
    /// The values of the SEARCH MODSEQ keys (RFC 7162 section 3.1.5).
    modseq_keys: Vec<u64>,
    /// LARGER and SMALLER keys above 32 bits (IMAP4rev2, [`ext::search_sizes`]).
    size_keys: Vec<ext::SizeKey>,
    /// STORE (UNCHANGEDSINCE n) (section 3.1.3).
    unchanged_since: Option<u64>,
    /// SELECT / EXAMINE parameters (sections 3.1.8, 3.2.5).
    select: Option<SelectParams>,
    /// FETCH: the MODSEQ item and the modifiers (sections 3.1.4, 3.2.6).
    fetch: CondFetch,
}

/// The RFC 7162 parts of a FETCH.
#[derive(Debug, Default, Clone, Copy)]
struct CondFetch {
    /// The MODSEQ item.
    modseq: bool,
    /// CHANGEDSINCE, as the client sent it.
    changed_since: Option<u64>,
    /// VANISHED (UID FETCH with CHANGEDSINCE only).
    vanished: bool,
}

impl CondFetch {
    fn any(&self) -> bool {
        self.modseq || self.changed_since.is_some()
    }
}

/// The items a FETCH names, its macros expanded.
fn fetch_items(m: MacroOrMessageDataItemNames<'_>) -> Vec<MessageDataItemName<'_>> {
    let fast = [
        MessageDataItemName::Flags,
        MessageDataItemName::InternalDate,
        MessageDataItemName::Rfc822Size,
    ];
    match m {
        MacroOrMessageDataItemNames::Macro(m) => match m {
            Macro::All => fast.into_iter().chain([MessageDataItemName::Envelope]).collect(),
            Macro::Full => fast
                .into_iter()
                .chain([MessageDataItemName::Envelope, MessageDataItemName::Body])
                .collect(),
            // `Macro` is non-exhaustive; a macro this build does not know reads as FAST.
            _ => fast.to_vec(),
        },
        MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
    }
}

enum Auth {
    None,
    User { name: String, _slot: SlotGuard },
}

/// What a command handler tells the loop.
enum Flow {
    Continue,
    Logout,
}

pub struct Session {
    stream: Conn,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    framer: Framer,
    /// Until when the client may log in.
    login_deadline: std::time::Instant,
    out: Vec<u8>,
    auth: Auth,
    selected: Option<Selected>,
    bad: u32,
    commits: watch::Receiver<u64>,
    /// `ENABLE UTF8=ACCEPT` was given (RFC 6855): names and quoted strings
    /// are UTF-8 in both directions.
    utf8: bool,
    /// A CONDSTORE enabling command was given (RFC 7162 section 3.1).
    condstore: bool,
    /// `ENABLE QRESYNC` was given (RFC 7162 section 3.2.3).
    qresync: bool,
    /// `ENABLE IMAP4rev2` was given (RFC 9051 section 6.3.1): the session
    /// follows RFC 9051 where it differs from RFC 3501 (`docs/operations.md`,
    /// "Extensions").
    rev2: bool,
    /// The UIDs the last `SEARCH RETURN (SAVE)` kept for `$` (RFC 5182,
    /// IMAP4rev2 only), ascending; emptied by SELECT, EXAMINE, CLOSE,
    /// UNSELECT and a SEARCH with SAVE answered NO. Expunged messages drop
    /// out when `$` is read.
    saved: Vec<u32>,
    /// How this node's MODSEQs go on the wire.
    scale: Scale,
}

type R<T> = std::io::Result<T>;

/// The most response buffer a session keeps between commands.
const OUT_KEEP: usize = 16 * 1024;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Quote a string for a response, or send it as a literal when it must be.
fn astring(s: &str) -> String {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) && s.len() < 1024 {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        format!("{{{}}}\r\n{}", s.len(), s)
    }
}

fn flag_name(f: &Flag<'_>) -> String {
    f.to_string()
}

fn to_flags(v: &[Flag<'_>]) -> Flags {
    Flags::new(v.iter().map(flag_name))
}

/// Whether a search program uses RECENT, NEW or OLD (none of which
/// IMAP4rev2 has).
fn has_recent_key(k: &imap_codec::imap_types::search::SearchKey<'_>) -> bool {
    use imap_codec::imap_types::search::SearchKey as K;
    match k {
        K::Recent | K::New | K::Old => true,
        K::And(v) => v.as_ref().iter().any(has_recent_key),
        K::Not(k) => has_recent_key(k),
        K::Or(a, b) => has_recent_key(a) || has_recent_key(b),
        _ => false,
    }
}

/// A mailbox name from the wire: modified UTF-7 decoded (UTF-8 as it is
/// after `ENABLE UTF8=ACCEPT`, RFC 6855 section 3), INBOX folded.
/// A name that cannot be decoded is an error for a NO, not a BAD: it is
/// syntactically a valid astring.
fn mailbox_name(m: &Mailbox<'_>, utf8: bool) -> Result<String, String> {
    wire_name(m, false, utf8)
}

/// The name CREATE creates: a trailing hierarchy separator only declares
/// that names will be created under it (RFC 3501 §6.3.3), and is dropped.
fn create_name(m: &Mailbox<'_>, utf8: bool) -> Result<String, String> {
    wire_name(m, true, utf8)
}

fn wire_name(m: &Mailbox<'_>, trailing_separator: bool, utf8: bool) -> Result<String, String> {
    match m {
        Mailbox::Inbox => Ok("INBOX".into()),
        Mailbox::Other(o) => raw_name(o.as_ref(), trailing_separator, utf8),
    }
}

/// [`wire_name`] of the bytes of a name.
fn raw_name(raw: &[u8], trailing_separator: bool, utf8: bool) -> Result<String, String> {
    let raw = std::str::from_utf8(raw).map_err(|_| "mailbox name is not UTF-8".to_string())?;
    let name = if utf8 {
        raw.to_string()
    } else {
        mutf7::decode(raw).map_err(|e| format!("mailbox name is not valid modified UTF-7: {e}"))?
    };
    let name = match name.strip_suffix('/') {
        Some(stem) if trailing_separator && !stem.is_empty() => stem,
        _ => name.as_str(),
    };
    mutate::normalize_mailbox(name).map_err(|e| e.to_string())
}

fn astr(a: &AString<'_>) -> String {
    String::from_utf8_lossy(a.as_ref()).into_owned()
}

impl Session {
    pub fn new(stream: Conn, peer: SocketAddr, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) -> Session {
        let framer = super::preauth_framer(&shared);
        let commits = shared.store.commits();
        let scale = Scale::of_origin(shared.store.wal().local_origin().0);
        Session {
            login_deadline: std::time::Instant::now() + Duration::from_secs(shared.cfg.login_timeout_secs),
            stream,
            peer,
            shared,
            shutdown,
            framer,
            out: Vec::new(),
            auth: Auth::None,
            selected: None,
            bad: 0,
            scale,
            commits,
            utf8: false,
            condstore: false,
            qresync: false,
            rev2: false,
            saved: Vec::new(),
        }
    }

    fn user(&self) -> Option<&str> {
        match &self.auth {
            Auth::User { name, .. } => Some(name),
            Auth::None => None,
        }
    }

    /// Mailbox names and quoted strings are UTF-8 on the wire: after `ENABLE
    /// UTF8=ACCEPT` (RFC 6855 section 3) or `ENABLE IMAP4rev2` (RFC 9051
    /// section 5.1), modified UTF-7 and 7-bit before.
    fn utf8_names(&self) -> bool {
        self.utf8 || self.rev2
    }

    fn capabilities(&self) -> String {
        let mut caps = vec![
            "IMAP4rev1",
            "IMAP4rev2",
            "LITERAL+",
            "SASL-IR",
            "IDLE",
            "NAMESPACE",
            "UIDPLUS",
            "MOVE",
            "SPECIAL-USE",
            "CHILDREN",
            "UNSELECT",
            "ENABLE",
            "ID",
            "UTF8=ACCEPT",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "MULTIAPPEND",
            "ESEARCH",
            "SORT",
            "THREAD=ORDEREDSUBJECT",
            "THREAD=REFERENCES",
            "BINARY",
            "CONDSTORE",
            "QRESYNC",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "QUOTA=RES-MESSAGE",
            "STATUS=SIZE",
        ];
        if self.user().is_some() && !self.stream.is_compressed() {
            caps.push("COMPRESS=DEFLATE");
        }
        if self.user().is_none() {
            if !self.stream.is_tls() && self.shared.tls.is_some() {
                caps.push("STARTTLS");
            }
            if plaintext_ok(&self.shared.cfg, &self.peer, self.stream.is_tls()) {
                caps.push("AUTH=PLAIN");
            } else {
                caps.push("LOGINDISABLED");
            }
        }
        caps.join(" ")
    }

    fn line(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Send what is buffered. `flush` matters for TLS: `write_all` may leave
    /// the last records queued inside the TLS stream when the socket was
    /// full, and they would wait there until the client sent something.
    async fn flush(&mut self) -> R<()> {
        // Always through write_out, which flushes under the write deadline
        // even when nothing new is buffered.
        let out = std::mem::take(&mut self.out);
        let r = self.write_out(&out).await;
        // The buffer is kept for the next response unless a large one
        // (a FETCH of many messages) grew it: an idle session holds little.
        if out.capacity() <= OUT_KEEP {
            self.out = out;
            self.out.clear();
        }
        r
    }

    /// Write to the client, which must take each 64 KiB within
    /// `write_timeout_secs`: a client that stops reading loses its
    /// connection instead of holding it (and what it asked for) forever.
    async fn write_out(&mut self, bytes: &[u8]) -> R<()> {
        let limit = Duration::from_secs(self.shared.cfg.write_timeout_secs.max(1));
        for chunk in bytes.chunks(64 * 1024) {
            if tokio::time::timeout(limit, self.stream.write_all(chunk)).await.is_err() {
                bump(&self.shared.counters.timeouts);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client did not read its responses in time",
                ));
            }
        }
        match tokio::time::timeout(limit, self.stream.flush()).await {
            Ok(r) => r,
            Err(_) => {
                bump(&self.shared.counters.timeouts);
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client did not read its responses in time",
                ))
            }
        }
    }

    /// Read more input; `false` on end of input or timeout (the session ends).
    async fn read_more(&mut self) -> R<bool> {
        let mut timeout = Duration::from_secs(if self.user().is_some() {
            self.shared.cfg.idle_timeout_secs
        } else {
            self.shared.cfg.preauth_timeout_secs
        });
        if self.user().is_none() {
            // However busy, a client that has not logged in by the deadline
            // goes.
            let left = self.login_deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                bump(&self.shared.counters.timeouts);
                self.line("* BYE Autologout; log in sooner");
                self.flush().await?;
                return Ok(false);
            }
            timeout = timeout.min(left);
        }
        let mut shutdown = self.shutdown.clone();
        let buf = self.framer.read_buffer();
        tokio::select! {
            r = tokio::time::timeout(timeout, self.stream.read_buf(buf)) => match r {
                Ok(Ok(0)) => Ok(false),
                Ok(Ok(_)) => Ok(true),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    bump(&self.shared.counters.timeouts);
                    self.line("* BYE Autologout; idle for too long");
                    self.flush().await?;
                    Ok(false)
                }
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                self.line("* BYE Server shutting down");
                self.flush().await?;
                Ok(false)
            }
        }
    }

    /// The next whole command from the client (`None`: the session ends).
    async fn next_command(&mut self) -> R<Option<Vec<u8>>> {
        loop {
            while let Some(frame) = self.framer.next_frame() {
                match frame {
                    Frame::Command(bytes) => return Ok(Some(bytes)),
                    Frame::Continue { .. } => {
                        self.line("+ Ready for literal data");
                        self.flush().await?;
                    }
                    Frame::LineTooLong { tag } => {
                        let t = tag.unwrap_or_else(|| "*".into());
                        self.line(&format!("{t} BAD Command line too long"));
                        if self.count_bad() {
                            return Ok(None);
                        }
                    }
                    Frame::LiteralTooLarge { tag, length, non_sync } => {
                        let t = tag.unwrap_or_else(|| "*".into());
                        let limit = self.framer.max_literal();
                        let when = if self.user().is_none() { " before login" } else { "" };
                        if non_sync && self.user().is_none() {
                            // RFC 7888 LITERAL- rules before login: the data
                            // is on its way and is not worth reading.
                            bump(&self.shared.counters.bad_commands);
                            self.line(&format!(
                                "{t} BAD [TOOBIG] Literal of {length} octets exceeds the limit of {limit}{when}"
                            ));
                            self.line("* BYE Literal too large");
                            return Ok(None);
                        }
                        self.line(&format!(
                            "{t} NO [TOOBIG] Literal of {length} octets exceeds the limit of {limit}{when}"
                        ));
                        if self.count_bad() {
                            return Ok(None);
                        }
                    }
                }
            }
            self.flush().await?;
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// Count a bad command; true when the budget is spent (connection closes).
    fn count_bad(&mut self) -> bool {
        bump(&self.shared.counters.bad_commands);
        self.bad += 1;
        if self.bad >= self.shared.settings.count(crate::settings::Key::ImapMaxBadCommands) {
            self.line("* BYE Too many invalid commands");
            return true;
        }
        false
    }

    pub async fn run(&mut self) -> R<()> {
        let caps = self.capabilities();
        self.line(&format!("* OK [CAPABILITY {caps}] Tandem ready"));
        self.flush().await?;
        while let Some(bytes) = self.next_command().await? {
            bump(&self.shared.counters.commands);
            let t0 = std::time::Instant::now();
            match self.dispatch(&bytes).await? {
                Flow::Continue => {}
                Flow::Logout => break,
            }
            self.flush().await?;
            self.shared.counters.command_seconds.since(t0);
            // One command at a time: a client that pipelines without end
            // takes turns with every other connection, and stops at
            // shutdown with the command it was given.
            tokio::task::yield_now().await;
            if *self.shutdown.borrow() {
                self.line("* BYE Server shutting down");
                break;
            }
        }
        self.flush().await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Commands imap-codec 1.0 does not know: NAMESPACE, ID, UID EXPUNGE,
    /// and ENABLE of capabilities it has no name for.
    fn extension_command(bytes: &[u8]) -> Option<(String, String, String)> {
        let text = std::str::from_utf8(bytes).ok()?.trim_end();
        let mut it = text.splitn(3, ' ');
        let tag = it.next()?.to_string();
        let cmd = it.next()?.to_ascii_uppercase();
        let rest = it.next().unwrap_or("").to_string();
        match cmd.as_str() {
            "NAMESPACE" | "ID" | "ENABLE" => Some((tag, cmd, rest)),
            "UID" if rest.to_ascii_uppercase().starts_with("EXPUNGE ") => Some((tag, "UID EXPUNGE".into(), rest[8..].trim().to_string())),
            _ => None,
        }
    }

    async fn dispatch(&mut self, bytes: &[u8]) -> R<Flow> {
        // RFC 6855: quoted strings carry UTF-8 after ENABLE UTF8=ACCEPT,
        // and only then; they reach imap-codec as literals.
        let rewritten = match ext::utf8_quoted_as_literals(bytes) {
            Ok(r) => r,
            Err(e) => return Ok(self.syntax_error(bytes, &format!("Syntax error: {e}"))),
        };
        let bytes = match &rewritten {
            Some(_) if !self.utf8_names() => {
                return Ok(self.syntax_error(bytes, "8-bit characters in a quoted string need ENABLE UTF8=ACCEPT"));
            }
            Some(r) => r.as_slice(),
            None => bytes,
        };
        // SEARCHRES (RFC 5182): `$` becomes the saved set.
        let substituted = if self.rev2 && self.selected.is_some() {
            match searchres::dollars(bytes) {
                Ok(found) if !found.is_empty() => Some(self.saved_sets(bytes, &found)),
                // A command this lexer cannot read goes to the parser as
                // it is, which answers it.
                Ok(_) | Err(_) => None,
            }
        } else {
            None
        };
        let bytes = substituted.as_deref().unwrap_or(bytes);
        if let Some((tag, cmd, rest)) = Self::extension_command(bytes) {
            return self.extension(&tag, &cmd, &rest).await;
        }
        match CommandCodec::default().decode(bytes) {
            Ok((_, cmd)) => self.command(cmd, Extras::default()).await,
            Err(CommandDecodeError::Failed) | Err(CommandDecodeError::Incomplete) | Err(CommandDecodeError::LiteralFound { .. }) => {
                self.extended(bytes).await
            }
        }
    }

    /// `cmd` with each `$` of `found` written as the messages the last
    /// `SEARCH RETURN (SAVE)` kept that are still in the session's view:
    /// their sequence numbers or UIDs. An empty set is written as a number
    /// no message of the view has, so that it matches nothing (RFC 5182
    /// section 2.1: `$` may be empty, and the command then acts on no
    /// message).
    fn saved_sets(&self, cmd: &[u8], found: &[searchres::Dollar]) -> Vec<u8> {
        let uids = self.selected.as_ref().map(|s| s.uids.as_slice()).unwrap_or_default();
        let mut seqs = Vec::new();
        let mut present = Vec::new();
        for u in &self.saved {
            if let Ok(pos) = uids.binary_search(u) {
                seqs.push(pos as u32 + 1);
                present.push(*u);
            }
        }
        let (seq_text, uid_text) = if present.is_empty() {
            let absent_uid = (1..=u32::MAX)
                .rev()
                .take(uids.len() + 1)
                .find(|u| uids.binary_search(u).is_err())
                .unwrap_or(u32::MAX);
            let absent_seq = u32::try_from(uids.len()).unwrap_or(u32::MAX - 1).saturating_add(1);
            (absent_seq.to_string(), absent_uid.to_string())
        } else {
            (ext::compact_set(&seqs), ext::compact_set(&present))
        };
        searchres::substitute(cmd, found, &seq_text, &uid_text)
    }

    /// Answer a command that could not be parsed with BAD; the flow after
    /// counting it.
    fn syntax_error(&mut self, bytes: &[u8], text: &str) -> Flow {
        let tag = tag_of(bytes).unwrap_or_else(|| "*".into());
        self.line(&format!("{tag} BAD {text}"));
        if self.count_bad() {
            Flow::Logout
        } else {
            Flow::Continue
        }
    }

    async fn extension(&mut self, tag: &str, cmd: &str, rest: &str) -> R<Flow> {
        match cmd {
            "ENABLE" => self.enable(tag, rest),
            "ID" => {
                self.line("* ID (\"name\" \"Tandem\" \"vendor\" \"Tandem\")");
                self.line(&format!("{tag} OK ID completed"));
            }
            "NAMESPACE" => {
                if self.user().is_none() {
                    self.line(&format!("{tag} BAD Log in first"));
                } else {
                    self.line("* NAMESPACE ((\"\" \"/\")) NIL NIL");
                    self.line(&format!("{tag} OK NAMESPACE completed"));
                }
            }
            "UID EXPUNGE" => {
                if self.selected.is_none() {
                    self.line(&format!("{tag} BAD No mailbox selected"));
                    return Ok(Flow::Continue);
                }
                let set = match parse_uid_set(rest) {
                    Some(s) => s,
                    None => {
                        self.line(&format!("{tag} BAD Invalid UID set"));
                        return Ok(Flow::Continue);
                    }
                };
                self.expunge(tag, Some(set)).await;
            }
            _ => self.line(&format!("{tag} BAD Unknown command")),
        }
        Ok(Flow::Continue)
    }

    fn no(&mut self, tag: &str, text: &str) {
        self.line(&format!("{tag} NO {text}"));
    }

    fn store_error(&mut self, tag: &str, e: StoreError) {
        match &e {
            StoreError::Mutation(MutationError::NoSuchMailbox(_)) => self.no(tag, "[NONEXISTENT] No such mailbox"),
            StoreError::Mutation(MutationError::MailboxExists(_)) => self.no(tag, "[ALREADYEXISTS] Mailbox already exists"),
            StoreError::Mutation(MutationError::OverQuota { .. }) => self.no(tag, "[OVERQUOTA] Quota exceeded"),
            StoreError::Mutation(m) if e.is_refusal() => self.no(tag, &format!("[CANNOT] {m}")),
            _ => {
                tracing::error!(error = %e, "store failure");
                self.no(tag, "[SERVERBUG] Internal error; try again later");
            }
        }
    }

    /// Run a parsed command; `extras`: what was split off it before
    /// imap-codec parsed the rest (the parts RFC 3501 does not know).
    async fn command(&mut self, cmd: Command<'_>, extras: Extras) -> R<Flow> {
        let tag = cmd.tag.inner().to_string();
        let tag = tag.as_str();
        // Any state.
        match &cmd.body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.line(&format!("* CAPABILITY {caps}"));
                self.line(&format!("{tag} OK CAPABILITY completed"));
                return Ok(Flow::Continue);
            }
            CommandBody::Noop => {
                self.sync(true);
                self.line(&format!("{tag} OK NOOP completed"));
                return Ok(Flow::Continue);
            }
            CommandBody::Logout => {
                self.line("* BYE Logging out");
                self.line(&format!("{tag} OK LOGOUT completed"));
                return Ok(Flow::Logout);
            }
            _ => {}
        }
        if self.user().is_none() {
            return self.unauthenticated(tag, cmd.body).await;
        }
        let user = self.user().expect("authenticated").to_string();
        match cmd.body {
            CommandBody::StartTLS => self.line(&format!("{tag} BAD STARTTLS is not offered on this listener")),
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } => self.line(&format!("{tag} BAD Already authenticated")),
            CommandBody::Select { mailbox } => self.select(tag, &user, &mailbox, false, extras.select),
            CommandBody::Examine { mailbox } => self.select(tag, &user, &mailbox, true, extras.select),
            CommandBody::Create { mailbox } => match create_name(&mailbox, self.utf8_names()) {
                Ok(name) => {
                    let u = user.clone();
                    let now = now_secs();
                    let su = SpecialUse::DEFAULTS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
                    match self
                        .shared
                        .store
                        .run(move |t, c| mutate::create_mailbox(t, c, &u, &name, su, now))
                        .await
                    {
                        Ok(_) => self.line(&format!("{tag} OK CREATE completed")),
                        Err(e) => self.store_error(tag, e),
                    }
                }
                Err(e) => self.no(tag, &format!("[CANNOT] {e}")),
            },
            CommandBody::Delete { mailbox } => match mailbox_name(&mailbox, self.utf8_names()) {
                Ok(name) => {
                    if self.selected.as_ref().is_some_and(|s| s.name == name) {
                        self.selected = None;
                    }
                    let u = user.clone();
                    match self.shared.store.run(move |t, c| mutate::delete_mailbox(t, c, &u, &name)).await {
                        Ok(()) => self.line(&format!("{tag} OK DELETE completed")),
                        Err(e) => self.store_error(tag, e),
                    }
                }
                Err(e) => self.no(tag, &format!("[CANNOT] {e}")),
            },
            CommandBody::Rename { from, to } => match (mailbox_name(&from, self.utf8_names()), mailbox_name(&to, self.utf8_names())) {
                (Ok(from), Ok(to)) => self.rename(tag, &user, from, to).await,
                (Err(e), _) | (_, Err(e)) => self.no(tag, &format!("[CANNOT] {e}")),
            },
            CommandBody::Subscribe { mailbox } => self.subscribe(tag, &user, &mailbox, true).await,
            CommandBody::Unsubscribe { mailbox } => self.subscribe(tag, &user, &mailbox, false).await,
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(tag, &user, &reference, &mailbox_wildcard, false).await,
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(tag, &user, &reference, &mailbox_wildcard, true).await,
            CommandBody::Status { mailbox, item_names } => self.status(tag, &user, &mailbox, item_names.as_ref()),
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let name = match mailbox_name(&mailbox, self.utf8_names()) {
                    Ok(n) => n,
                    Err(e) => {
                        self.no(tag, &format!("[CANNOT] {e}"));
                        return Ok(Flow::Continue);
                    }
                };
                let (secs, tz) = match date {
                    Some(d) => {
                        let dt = d.as_ref();
                        (dt.timestamp(), (dt.offset().local_minus_utc() / 60) as i16)
                    }
                    None => (now_secs(), 0),
                };
                let mut msg = NewMessage::new(message.data().to_vec(), to_flags(&flags), secs);
                msg.tz_minutes = tz;
                self.append_messages(tag, &user, name, vec![msg]).await;
            }
            CommandBody::Idle => return self.idle(tag).await,
            // ENABLE is answered before imap-codec sees it.
            CommandBody::Enable { .. } => self.enable(tag, ""),
            CommandBody::Check => {
                self.sync(true);
                self.line(&format!("{tag} OK CHECK completed"));
            }
            CommandBody::Close | CommandBody::Unselect => {
                let close = matches!(cmd.body, CommandBody::Close);
                self.saved.clear();
                match self.selected.take() {
                    None => self.line(&format!("{tag} BAD No mailbox selected")),
                    Some(sel) => {
                        if close && !sel.readonly {
                            let v = self.shared.store.views();
                            let doomed: Vec<u32> = v
                                .messages(sel.id)
                                .map(|ms| {
                                    ms.into_iter()
                                        .filter(|(_, m)| m.flags.contains("\\Deleted"))
                                        .map(|(u, _)| u)
                                        .collect()
                                })
                                .unwrap_or_default();
                            if !doomed.is_empty() {
                                let (u, id) = (user.clone(), sel.id);
                                if let Err(e) = self.shared.store.run(move |t, c| mutate::expunge(t, c, &u, id, &doomed)).await {
                                    self.store_error(tag, e);
                                    return Ok(Flow::Continue);
                                }
                            }
                        }
                        self.line(&format!("{tag} OK {} completed", if close { "CLOSE" } else { "UNSELECT" }));
                    }
                }
            }
            CommandBody::Expunge => {
                if self.selected.is_none() {
                    self.line(&format!("{tag} BAD No mailbox selected"));
                } else {
                    self.expunge(tag, None).await;
                }
            }
            CommandBody::Search { charset, criteria, uid } => {
                if self.selected.is_none() {
                    self.line(&format!("{tag} BAD No mailbox selected"));
                    return Ok(Flow::Continue);
                }
                let cs = charset.map(|c| match c {
                    imap_codec::imap_types::core::Charset::Atom(a) => a.inner().to_string(),
                    imap_codec::imap_types::core::Charset::Quoted(q) => q.inner().to_string(),
                });
                if cs.is_some() && self.utf8 {
                    // RFC 6855 section 3.
                    self.line(&format!("{tag} BAD No CHARSET in SEARCH after ENABLE UTF8=ACCEPT"));
                    return Ok(Flow::Continue);
                }
                if self.rev2 && has_recent_key(&criteria) {
                    // RFC 9051 has no \Recent: its search-key grammar has
                    // no RECENT, NEW or OLD.
                    self.line(&format!("{tag} BAD RECENT, NEW and OLD are not search keys in IMAP4rev2"));
                    return Ok(Flow::Continue);
                }
                if let Err(e) = search::check_charset(cs.as_deref()) {
                    if matches!(&extras.search_as, Some(ext::SearchAs::Esearch(r)) if r.save) {
                        // RFC 5182 section 2.1: a SEARCH with SAVE answered
                        // NO leaves `$` empty (one answered BAD leaves it).
                        self.saved.clear();
                    }
                    self.no(tag, &format!("[BADCHARSET (US-ASCII UTF-8)] {e}"));
                    return Ok(Flow::Continue);
                }
                self.search(tag, &criteria, uid, extras.search_as, &extras.modseq_keys, &extras.size_keys)
                    .await;
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
            } => {
                if self.selected.is_none() {
                    self.line(&format!("{tag} BAD No mailbox selected"));
                    return Ok(Flow::Continue);
                }
                let items = fetch_items(macro_or_item_names);
                self.fetch(tag, &user, &sequence_set, &items, &[], uid, extras.fetch).await?;
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
            } => {
                self.store_flags(tag, &user, &sequence_set, kind, response, &flags, uid, extras.unchanged_since)
                    .await;
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(tag, &user, &sequence_set, &mailbox, uid, false).await,
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(tag, &user, &sequence_set, &mailbox, uid, true).await,
            CommandBody::Compress { .. } => return self.compress(tag).await,
            CommandBody::GetQuota { root } => self.quota(tag, &user, ext::QuotaCommand::Get(root.as_ref().to_vec())),
            CommandBody::GetQuotaRoot { mailbox } => {
                let raw = match &mailbox {
                    Mailbox::Inbox => b"INBOX".to_vec(),
                    Mailbox::Other(o) => o.as_ref().to_vec(),
                };
                self.quota(tag, &user, ext::QuotaCommand::Root(raw))
            }
            CommandBody::SetQuota { root, .. } => self.quota(tag, &user, ext::QuotaCommand::Set(root.as_ref().to_vec())),
            CommandBody::Capability | CommandBody::Noop | CommandBody::Logout => unreachable!("handled above"),
        }
        Ok(Flow::Continue)
    }

    /// IDLE: report changes as they are committed until the client says DONE.
    async fn idle(&mut self, tag: &str) -> R<Flow> {
        self.line("+ idling");
        self.sync(true);
        self.flush().await?;
        let mut commits = self.commits.clone();
        commits.borrow_and_update();
        let timeout = Duration::from_secs(self.shared.cfg.idle_timeout_secs);
        let mut shutdown = self.shutdown.clone();
        loop {
            // A DONE may already be buffered.
            if let Some(frame) = self.framer.next_frame() {
                match frame {
                    Frame::Command(b) if b.trim_ascii().eq_ignore_ascii_case(b"DONE") => {
                        self.sync(true);
                        self.line(&format!("{tag} OK IDLE terminated"));
                        return Ok(Flow::Continue);
                    }
                    _ => {
                        self.line(&format!("{tag} BAD Expected DONE"));
                        return Ok(Flow::Continue);
                    }
                }
            }
            let buf = self.framer.read_buffer();
            tokio::select! {
                r = tokio::time::timeout(timeout, self.stream.read_buf(buf)) => match r {
                    Ok(Ok(0)) | Ok(Err(_)) => return Ok(Flow::Logout),
                    Ok(Ok(_)) => {}
                    Err(_) => {
                        self.line("* BYE Idle for too long");
                        return Ok(Flow::Logout);
                    }
                },
                r = commits.changed() => {
                    if r.is_err() {
                        return Ok(Flow::Logout);
                    }
                    self.sync(true);
                    self.flush().await?;
                }
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                    self.line("* BYE Server shutting down");
                    return Ok(Flow::Logout);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::auth::base64_decode;
    use super::*;

    #[test]
    fn uid_sets_and_base64() {
        assert_eq!(parse_uid_set("1:3,7,9:*"), Some(vec![(1, 3), (7, 7), (9, u32::MAX)]));
        assert_eq!(parse_uid_set("5:2"), Some(vec![(2, 5)]));
        assert_eq!(parse_uid_set("0"), None);
        assert_eq!(parse_uid_set("x"), None);
        assert_eq!(base64_decode("AGFsaWNlAHB3").unwrap(), b"\0alice\0pw");
        assert_eq!(base64_decode("!!"), None);
    }

    #[test]
    fn uid_ranges() {
        let r = merge_ranges(vec![(7, 9), (1, 3), (4, 4), (20, 30), (25, 26)]);
        assert_eq!(r, vec![(1, 4), (7, 9), (20, 30)]);
        assert!(in_ranges(&r, 4) && in_ranges(&r, 7) && in_ranges(&r, 30));
        assert!(!in_ranges(&r, 5) && !in_ranges(&r, 31) && !in_ranges(&r, 0));
        assert_eq!(missing(&r, &[2, 3, 8, 20, 30]), vec![(1, 1), (4, 4), (7, 7), (9, 9), (21, 29)]);
        assert_eq!(missing(&[(1, u32::MAX)], &[u32::MAX]), vec![(1, u32::MAX - 1)]);
        assert_eq!(missing(&[(1, 3)], &[]), vec![(1, 3)]);
        assert_eq!(ranges_text(&[(1, 1), (4, 9)]), "1,4:9");
        assert_eq!(merge_ranges(vec![(1, u32::MAX), (u32::MAX, u32::MAX)]), vec![(1, u32::MAX)]);
    }
}
