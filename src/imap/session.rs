//! One IMAP connection: states (not authenticated, authenticated, selected,
//! logout), command dispatch, and the synchronisation of a selected mailbox
//! with the views (untagged EXISTS / EXPUNGE / FETCH FLAGS at the points RFC
//! 3501 allows).

mod extended;

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
    /// Flags as last told to the client.
    flags: HashMap<u32, Flags>,
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

/// Bring `sel` up to date from the change index entries after its MODSEQ.
fn changed_since(sel: &mut Selected, v: &crate::views::Views, changes: Vec<(u32, bool)>, expunges: bool, report: Report) -> Found {
    let mut lines = Vec::new();
    let mut pending = sel.expunge_pending;
    let (mut gone, mut changed): (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());
    for (uid, expunged) in changes {
        if expunged {
            gone.push(uid);
        } else {
            changed.push(uid);
        }
    }
    gone.sort_unstable();
    changed.sort_unstable();
    let mut vanished = Vec::new();
    for uid in gone {
        if let Ok(pos) = sel.uids.binary_search(&uid) {
            if expunges {
                if report.vanished {
                    vanished.push(uid);
                } else {
                    lines.push(format!("* {} EXPUNGE", pos + 1));
                }
                sel.uids.remove(pos);
                sel.flags.remove(&uid);
            } else {
                pending = true;
            }
        }
    }
    if !vanished.is_empty() {
        lines.push(format!("* VANISHED {}", ext::compact_set(&vanished)));
    }
    let last = sel.uids.last().copied().unwrap_or(0);
    let mut added = false;
    for uid in changed {
        // Gone since the index was read: the next sync sees it.
        let Ok(Some(m)) = v.message(sel.id, uid) else { continue };
        if uid > last {
            lines.extend(sel.announce(&m.flags).into_iter().flatten());
            sel.uids.push(uid);
            sel.flags.insert(uid, m.flags);
            added = true;
        } else if let Ok(pos) = sel.uids.binary_search(&uid) {
            if sel.flags.get(&uid) != Some(&m.flags) {
                lines.extend(sel.announce(&m.flags).into_iter().flatten());
                lines.push(report.flags(pos + 1, uid, &m));
                sel.flags.insert(uid, m.flags);
            }
        }
    }
    Found { lines, added, pending }
}

/// Bring `sel` up to date by comparing the whole mailbox with it.
fn compare_whole(sel: &mut Selected, v: &crate::views::Views, expunges: bool, report: Report) -> Option<Found> {
    let msgs = v.messages(sel.id).ok()?;
    let current: HashMap<u32, &MessageRec> = msgs.iter().map(|(u, m)| (*u, m)).collect();
    let mut lines = Vec::new();
    let mut pending = false;
    if expunges {
        let mut seq = 0usize;
        let mut kept = Vec::with_capacity(sel.uids.len());
        let mut vanished = Vec::new();
        for uid in &sel.uids {
            seq += 1;
            if current.contains_key(uid) {
                kept.push(*uid);
            } else {
                if report.vanished {
                    vanished.push(*uid);
                } else {
                    lines.push(format!("* {seq} EXPUNGE"));
                }
                sel.flags.remove(uid);
                seq -= 1;
            }
        }
        sel.uids = kept;
        if !vanished.is_empty() {
            lines.push(format!("* VANISHED {}", ext::compact_set(&vanished)));
        }
    } else {
        pending = sel.uids.iter().any(|u| !current.contains_key(u));
    }
    for i in 0..sel.uids.len() {
        let uid = sel.uids[i];
        if let Some(m) = current.get(&uid) {
            if sel.flags.get(&uid) != Some(&m.flags) {
                lines.extend(sel.announce(&m.flags).into_iter().flatten());
                lines.push(report.flags(i + 1, uid, m));
                sel.flags.insert(uid, m.flags.clone());
            }
        }
    }
    let last = sel.uids.last().copied().unwrap_or(0);
    let mut added = false;
    for (uid, m) in &msgs {
        if *uid > last {
            lines.extend(sel.announce(&m.flags).into_iter().flatten());
            sel.uids.push(*uid);
            sel.flags.insert(*uid, m.flags.clone());
            added = true;
        }
    }
    Some(Found { lines, added, pending })
}

/// What the extension grammar split off a command before imap-codec
/// parsed the rest of it.
#[derive(Debug, Default)]
struct Extras {
    /// How to answer a SEARCH that was an ESEARCH, SORT or THREAD.
    search_as: Option<ext::SearchAs>,
    /// The values of the SEARCH MODSEQ keys (RFC 7162 section 3.1.5).
    modseq_keys: Vec<u64>,
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
    /// How this node's MODSEQs go on the wire.
    scale: Scale,
}

type R<T> = std::io::Result<T>;

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
            out: Vec::with_capacity(8192),
            auth: Auth::None,
            selected: None,
            bad: 0,
            scale,
            commits,
            utf8: false,
            condstore: false,
            qresync: false,
        }
    }

    fn user(&self) -> Option<&str> {
        match &self.auth {
            Auth::User { name, .. } => Some(name),
            Auth::None => None,
        }
    }

    fn capabilities(&self) -> String {
        let mut caps = vec![
            "IMAP4rev1",
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
        self.out = out;
        self.out.clear();
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
        let mut buf = [0u8; 16 * 1024];
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            r = tokio::time::timeout(timeout, self.stream.read(&mut buf)) => match r {
                Ok(Ok(0)) => Ok(false),
                Ok(Ok(n)) => {
                    self.framer.feed(&buf[..n]);
                    Ok(true)
                }
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
            Some(_) if !self.utf8 => {
                return Ok(self.syntax_error(bytes, "8-bit characters in a quoted string need ENABLE UTF8=ACCEPT"));
            }
            Some(r) => r.as_slice(),
            None => bytes,
        };
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
            CommandBody::Create { mailbox } => match create_name(&mailbox, self.utf8) {
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
            CommandBody::Delete { mailbox } => match mailbox_name(&mailbox, self.utf8) {
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
            CommandBody::Rename { from, to } => match (mailbox_name(&from, self.utf8), mailbox_name(&to, self.utf8)) {
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
                let name = match mailbox_name(&mailbox, self.utf8) {
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
                if let Err(e) = search::check_charset(cs.as_deref()) {
                    self.no(tag, &format!("[BADCHARSET (US-ASCII UTF-8)] {e}"));
                    return Ok(Flow::Continue);
                }
                self.search(tag, &criteria, uid, extras.search_as, &extras.modseq_keys).await;
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
            CommandBody::GetQuota { .. } | CommandBody::GetQuotaRoot { .. } | CommandBody::SetQuota { .. } => {
                self.line(&format!("{tag} BAD Command not supported"))
            }
            CommandBody::Capability | CommandBody::Noop | CommandBody::Logout => unreachable!("handled above"),
        }
        Ok(Flow::Continue)
    }

    async fn unauthenticated(&mut self, tag: &str, body: CommandBody<'_>) -> R<Flow> {
        match body {
            CommandBody::Login { username, password } => {
                let user = astr(&username);
                let pw = Secret::new(String::from_utf8_lossy(password.declassify().as_ref()).into_owned());
                self.login(tag, &user, pw).await?;
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                if !matches!(mechanism, imap_codec::imap_types::auth::AuthMechanism::Plain) {
                    self.no(tag, "[CANNOT] Only AUTHENTICATE PLAIN is supported");
                    return Ok(Flow::Continue);
                }
                let data = match initial_response {
                    Some(r) => r.declassify().to_vec(),
                    None => {
                        self.line("+ ");
                        self.flush().await?;
                        let Some(line) = self.next_command().await? else {
                            return Ok(Flow::Logout);
                        };
                        let text = String::from_utf8_lossy(&line).trim().to_string();
                        if text == "*" {
                            self.line(&format!("{tag} BAD Authentication cancelled"));
                            return Ok(Flow::Continue);
                        }
                        match base64_decode(&text) {
                            Some(d) => d,
                            None => {
                                self.line(&format!("{tag} BAD Invalid base64"));
                                return Ok(Flow::Continue);
                            }
                        }
                    }
                };
                // authzid NUL authcid NUL password
                let parts: Vec<&[u8]> = data.split(|b| *b == 0).collect();
                if parts.len() != 3 {
                    self.line(&format!("{tag} BAD Malformed PLAIN response"));
                    return Ok(Flow::Continue);
                }
                let authz = String::from_utf8_lossy(parts[0]).to_lowercase();
                let user = String::from_utf8_lossy(parts[1]).into_owned();
                if !authz.is_empty() && authz != user.to_lowercase() {
                    self.no(tag, "[AUTHORIZATIONFAILED] Cannot act as another user");
                    return Ok(Flow::Continue);
                }
                let pw = Secret::new(String::from_utf8_lossy(parts[2]).into_owned());
                self.login(tag, &user, pw).await?;
            }
            CommandBody::StartTLS => return self.starttls(tag).await,
            _ => {
                self.line(&format!("{tag} BAD Log in first"));
                if self.count_bad() {
                    return Ok(Flow::Logout);
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// COMPRESS DEFLATE (RFC 4978): the tagged OK is the last thing sent
    /// uncompressed; from then on both directions are DEFLATE streams.
    async fn compress(&mut self, tag: &str) -> R<Flow> {
        if self.stream.is_compressed() {
            self.no(tag, "[COMPRESSIONACTIVE] DEFLATE is already active");
            return Ok(Flow::Continue);
        }
        self.line(&format!("{tag} OK DEFLATE active"));
        self.flush().await?;
        // What the client sent after COMPRESS is compressed already.
        let received = self.framer.take_unread();
        let plain = std::mem::replace(&mut self.stream, Conn::Swapping);
        self.stream = Conn::Deflate(Box::new(super::deflate::Deflate::new(plain, received)));
        Ok(Flow::Continue)
    }

    async fn starttls(&mut self, tag: &str) -> R<Flow> {
        let Some(tls) = self.shared.tls.clone() else {
            self.line(&format!("{tag} BAD STARTTLS is not available"));
            return Ok(Flow::Continue);
        };
        if self.stream.is_tls() {
            self.line(&format!("{tag} BAD TLS is already active"));
            return Ok(Flow::Continue);
        }
        self.line(&format!("{tag} OK Begin TLS negotiation now"));
        self.flush().await?;
        // Anything the client pipelined after STARTTLS was sent in the clear
        // and must not be executed inside the TLS session.
        self.framer = super::preauth_framer(&self.shared);
        let Conn::Plain(tcp) = std::mem::replace(&mut self.stream, Conn::Swapping) else {
            return Ok(Flow::Logout);
        };
        let limit = Duration::from_secs(self.shared.cfg.handshake_timeout_secs);
        match tokio::time::timeout(limit, tokio_rustls::TlsAcceptor::from(tls).accept(tcp)).await {
            Ok(Ok(s)) => {
                self.stream = Conn::Tls(Box::new(s));
                Ok(Flow::Continue)
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "STARTTLS handshake failed");
                Ok(Flow::Logout)
            }
            Err(_) => {
                bump(&self.shared.counters.timeouts);
                tracing::info!("STARTTLS handshake timed out");
                Ok(Flow::Logout)
            }
        }
    }

    async fn login(&mut self, tag: &str, user: &str, pw: Secret) -> R<()> {
        if !plaintext_ok(&self.shared.cfg, &self.peer, self.stream.is_tls()) {
            self.no(tag, "[PRIVACYREQUIRED] Plaintext authentication is disabled");
            return Ok(());
        }
        let user = match mutate::normalize_user(user) {
            Ok(u) => u,
            Err(_) => {
                self.no(tag, "[AUTHENTICATIONFAILED] Authentication failed");
                return Ok(());
            }
        };
        match crate::imap::check_credentials(&self.shared, self.peer.ip(), &user, pw, self.login_deadline).await {
            Credentials::Ok => {}
            Credentials::Throttled => {
                self.no(tag, "[UNAVAILABLE] Too many login attempts; try again later");
                return Ok(());
            }
            Credentials::Wrong => {
                self.no(tag, "[AUTHENTICATIONFAILED] Authentication failed");
                return Ok(());
            }
        }
        let per_user = self.shared.settings.get(crate::settings::Key::ImapMaxConnectionsPerUser) as usize;
        let Some(slot) = self.shared.per_user.take(user.clone(), per_user) else {
            self.no(tag, "[LIMIT] Too many connections for this user");
            return Ok(());
        };
        self.framer.set_limits(
            self.shared.cfg.max_line,
            self.shared.settings.get(crate::settings::Key::ImapMaxLiteral),
        );
        bump(&self.shared.counters.logins);
        tracing::Span::current().record("user", user.as_str());
        tracing::info!("logged in");
        self.auth = Auth::User { name: user, _slot: slot };
        let caps = self.capabilities();
        self.line(&format!("{tag} OK [CAPABILITY {caps}] Logged in"));
        Ok(())
    }

    /// The mailbox a command names, or the tagged BAD / NO already said.
    fn existing_mailbox(&mut self, tag: &str, user: &str, mailbox: &Mailbox<'_>) -> Option<(String, MailboxRec)> {
        let name = match mailbox_name(mailbox, self.utf8) {
            Ok(n) => n,
            Err(e) => {
                self.no(tag, &format!("[CANNOT] {e}"));
                return None;
            }
        };
        match self.shared.store.views().mailbox_by_name(user, &name) {
            Ok(Some(mb)) => Some((name, mb)),
            _ => {
                self.no(tag, "[NONEXISTENT] No such mailbox");
                None
            }
        }
    }

    fn select(&mut self, tag: &str, user: &str, mailbox: &Mailbox<'_>, readonly: bool, params: Option<SelectParams>) {
        let params = params.unwrap_or_default();
        if params.qresync.is_some() && !self.qresync {
            // RFC 7162 section 3.2.5.
            self.line(&format!("{tag} BAD The QRESYNC parameter needs ENABLE QRESYNC first"));
            return;
        }
        if params.condstore {
            self.condstore = true;
        }
        if self.selected.take().is_some() && self.qresync {
            // RFC 7162 section 3.2.11: the client learns where the old
            // mailbox's responses end.
            self.line("* OK [CLOSED] Previous mailbox closed");
        }
        let Some((name, mb)) = self.existing_mailbox(tag, user, mailbox) else {
            return;
        };
        let v = self.shared.store.views();
        let msgs = match v.message_flags(mb.id) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "reading mailbox");
                self.no(tag, "[SERVERBUG] Cannot read mailbox");
                return;
            }
        };
        let mut keywords = BTreeSet::new();
        let mut first_unseen = None;
        for (i, (_, flags)) in msgs.iter().enumerate() {
            for f in flags.iter() {
                if !f.starts_with('\\') {
                    keywords.insert(f.to_string());
                }
            }
            if first_unseen.is_none() && !flags.contains("\\Seen") {
                first_unseen = Some(i + 1);
            }
        }
        for l in flag_lines(&keywords) {
            self.line(&l);
        }
        self.line(&format!("* {} EXISTS", msgs.len()));
        self.line("* 0 RECENT");
        if let Some(u) = first_unseen {
            self.line(&format!("* OK [UNSEEN {u}] First unseen"));
        }
        self.line(&format!("* OK [UIDVALIDITY {}] UIDs valid", mb.uidvalidity));
        self.line(&format!("* OK [UIDNEXT {}] Predicted next UID", mb.uidnext));
        if self.condstore {
            self.line(&format!("* OK [HIGHESTMODSEQ {}] Highest", self.scale.wire(mb.highestmodseq)));
        }
        let uids = msgs.iter().map(|(u, _)| *u).collect();
        self.selected = Some(Selected {
            id: mb.id,
            name,
            readonly,
            flags: msgs.into_iter().collect(),
            keywords,
            uids,
            modseq: mb.highestmodseq,
            expunge_pending: false,
            expunge_floor: 0,
        });
        if let Some(q) = params.qresync.filter(|q| q.uidvalidity == mb.uidvalidity) {
            self.qresync_select(&mb, &q);
        }
        self.line(&format!(
            "{tag} OK [{}] {} completed",
            if readonly { "READ-ONLY" } else { "READ-WRITE" },
            if readonly { "EXAMINE" } else { "SELECT" }
        ));
    }

    /// Turn CONDSTORE on (RFC 7162 section 3.1); the first time, with a
    /// mailbox selected, the client learns its HIGHESTMODSEQ.
    fn enable_condstore(&mut self) {
        if self.condstore {
            return;
        }
        self.condstore = true;
        if let Some(sel) = &self.selected {
            let line = format!("* OK [HIGHESTMODSEQ {}] Highest", self.scale.wire(sel.modseq));
            self.line(&line);
        }
    }

    /// The highest MODSEQ position of the selected mailbox now (0 when it
    /// cannot be read: nothing the client sends is then comparable).
    fn highest_now(&self) -> u64 {
        let (Some(user), Some(sel)) = (self.user(), self.selected.as_ref()) else {
            return 0;
        };
        match self.shared.store.views().mailbox(user, sel.id) {
            Ok(Some(mb)) => mb.highestmodseq,
            _ => 0,
        }
    }

    /// SELECT's QRESYNC parameter (RFC 7162 section 3.2.5.1): `VANISHED
    /// (EARLIER)` for the known UIDs expunged since the client's MODSEQ,
    /// then a FETCH of each known message changed since then. A MODSEQ this
    /// node cannot compare ([`Scale::since`]) gets everything: every known
    /// UID not here is reported vanished and every message is sent. The
    /// sequence match data only helps servers that forget expunges; the
    /// change index does not, so it is checked and not used.
    fn qresync_select(&mut self, mb: &MailboxRec, q: &condstore::Qresync) {
        let v = self.shared.store.views();
        let Some(sel) = self.selected.as_ref() else { return };
        let known: Vec<(u32, u32)> = match &q.known_uids {
            Some(k) => merge_ranges(k.clone()),
            None => vec![(1, mb.uidnext.saturating_sub(1).max(1))],
        };
        let since = self.scale.since(q.modseq, mb.highestmodseq);
        let indexed = if since > 0 { v.changes_since(mb.id, since).ok() } else { None };
        let (vanished, changed): (Vec<(u32, u32)>, Vec<u32>) = match indexed {
            Some(changes) => {
                let (mut gone, mut changed) = (Vec::new(), Vec::new());
                for (u, expunged) in changes {
                    if !in_ranges(&known, u) {
                        continue;
                    }
                    if !expunged {
                        changed.push(u);
                    } else if sel.uids.binary_search(&u).is_err() {
                        gone.push(u);
                    }
                }
                gone.sort_unstable();
                gone.dedup();
                changed.sort_unstable();
                changed.dedup();
                (gone.into_iter().map(|u| (u, u)).collect(), changed)
            }
            None => {
                let below_next: Vec<(u32, u32)> = known
                    .iter()
                    .filter(|(a, _)| *a < mb.uidnext)
                    .map(|(a, b)| (*a, (*b).min(mb.uidnext.saturating_sub(1))))
                    .collect();
                let changed = sel.uids.iter().copied().filter(|u| in_ranges(&known, *u)).collect();
                (missing(&below_next, &sel.uids), changed)
            }
        };
        if !vanished.is_empty() {
            self.line(&format!("* VANISHED (EARLIER) {}", ranges_text(&vanished)));
        }
        let id = mb.id;
        for chunk in changed.chunks(256) {
            let recs = v.messages_at(id, chunk).unwrap_or_default();
            for (u, m) in chunk.iter().zip(recs) {
                let Some(m) = m else { continue };
                let Some(sel) = self.selected.as_mut() else { return };
                let Ok(pos) = sel.uids.binary_search(u) else { continue };
                let announce = sel.announce(&m.flags);
                sel.flags.insert(*u, m.flags.clone());
                for l in announce.into_iter().flatten() {
                    self.line(&l);
                }
                let line = format!(
                    "* {} FETCH (UID {u} FLAGS {} MODSEQ ({}))",
                    pos + 1,
                    fetch::flags_list(&m.flags),
                    self.scale.wire(m.modseq)
                );
                self.line(&line);
            }
        }
    }

    /// Bring the selected mailbox up to date with the views, announcing what
    /// changed. Expunges are held back when `expunges` is false.
    fn sync(&mut self, expunges: bool) {
        self.sync_changes(expunges);
        // RFC 7162 section 3.2: MODSEQ values above an expunge the client
        // has not been told of (held back during this command) must be
        // followed by a HIGHESTMODSEQ below that expunge, so that a client
        // that resynchronises from what it saw still learns of it.
        if let Some(sel) = self.selected.as_ref().filter(|s| s.expunge_pending && self.condstore) {
            let line = format!("* OK [HIGHESTMODSEQ {}] Expunges pending", self.scale.wire(sel.expunge_floor));
            self.line(&line);
        }
    }

    /// [`Session::sync`] without the note on held-back expunges.
    fn sync_changes(&mut self, expunges: bool) {
        let Some(user) = self.user().map(String::from) else { return };
        let Some(sel) = self.selected.as_mut() else { return };
        let v = self.shared.store.views();
        let mb = match v.mailbox(&user, sel.id) {
            Ok(Some(mb)) => mb,
            Ok(None) => {
                // Deleted or renamed away under us.
                if expunges {
                    if self.qresync && !sel.uids.is_empty() {
                        self.out
                            .extend_from_slice(format!("* VANISHED {}\r\n", ext::compact_set(&sel.uids)).as_bytes());
                    } else {
                        for seq in (1..=sel.uids.len()).rev() {
                            self.out.extend_from_slice(format!("* {seq} EXPUNGE\r\n").as_bytes());
                        }
                    }
                    sel.uids.clear();
                    sel.flags.clear();
                }
                return;
            }
            Err(_) => return,
        };
        if mb.highestmodseq == sel.modseq && !(expunges && sel.expunge_pending) {
            return;
        }
        // What changed since the session last looked comes from the change
        // index: the work follows the changes, not the mailbox size. Only
        // expunges held back earlier (during FETCH, STORE, SEARCH) need the
        // whole mailbox compared with what the client was told.
        let changes = if expunges && sel.expunge_pending {
            None
        } else {
            v.changes_since(sel.id, sel.modseq).ok()
        };
        let report = Report {
            modseq: self.condstore.then_some(self.scale),
            vanished: self.qresync,
        };
        let found = match changes {
            Some(c) => Some(changed_since(sel, &v, c, expunges, report)),
            None => compare_whole(sel, &v, expunges, report),
        };
        let Some(Found { mut lines, added, pending }) = found else { return };
        if added {
            lines.push(format!("* {} EXISTS", sel.uids.len()));
        }
        if pending && !sel.expunge_pending {
            sel.expunge_floor = sel.modseq;
        }
        sel.modseq = mb.highestmodseq;
        sel.expunge_pending = pending;
        for l in lines {
            self.line(&l);
        }
    }

    /// Resolve a sequence or UID set against the session's view: (seq, uid)
    /// pairs in ascending order.
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<(u32, u32)> {
        let Some(sel) = self.selected.as_ref() else { return vec![] };
        let n = sel.uids.len() as u32;
        let max_uid = sel.uids.last().copied().unwrap_or(0);
        let val = |s: &SeqOrUid, star: u32| match s {
            SeqOrUid::Value(v) => v.get(),
            SeqOrUid::Asterisk => star,
        };
        let mut out = BTreeSet::new();
        for seq in set.0.as_ref() {
            let (a, b) = match seq {
                Sequence::Single(s) => {
                    let x = val(s, if uid { max_uid } else { n });
                    (x, x)
                }
                Sequence::Range(a, b) => {
                    let star = if uid { max_uid } else { n };
                    let (x, y) = (val(a, star), val(b, star));
                    (x.min(y), x.max(y))
                }
            };
            if uid {
                let lo = sel.uids.partition_point(|u| *u < a);
                let hi = sel.uids.partition_point(|u| *u <= b);
                for i in lo..hi {
                    out.insert(((i + 1) as u32, sel.uids[i]));
                }
            } else {
                for s in a.max(1)..=b.min(n) {
                    out.insert((s, sel.uids[(s - 1) as usize]));
                }
            }
        }
        out.into_iter().collect()
    }

    /// FETCH: `items` as imap-codec parsed them, the BINARY items of RFC
    /// 3516 ([`ext::fetch_items`]), which are answered after them, and the
    /// MODSEQ item and modifiers of RFC 7162 (`cond`).
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &mut self,
        tag: &str,
        user: &str,
        set: &SequenceSet,
        items: &[MessageDataItemName<'_>],
        binary: &[ext::BinaryItem],
        uid: bool,
        cond: CondFetch,
    ) -> R<()> {
        if cond.vanished && !self.qresync {
            // RFC 7162 section 3.2.6.
            self.line(&format!("{tag} BAD VANISHED needs ENABLE QRESYNC first"));
            return Ok(());
        }
        if cond.any() {
            self.enable_condstore();
        }
        // CHANGEDSINCE: only messages changed after this position (0: all,
        // for a value this node cannot compare).
        let since = cond.changed_since.map(|n| self.scale.since(n, self.highest_now()));
        let targets = self.resolve(set, uid);
        if let (true, Some(since)) = (cond.vanished, since) {
            self.vanished_earlier(set, since);
        }
        let Some(sel) = self.selected.as_ref() else { return Ok(()) };
        let (id, readonly) = (sel.id, sel.readonly);
        let mut seen_now = Vec::new();
        if !readonly && fetch::sets_seen(items, binary) {
            let v = self.shared.store.views();
            for (_, u) in &targets {
                if let Ok(Some(m)) = v.message(id, *u) {
                    if since.is_some_and(|s| m.modseq <= s) {
                        continue;
                    }
                    if !m.flags.contains("\\Seen") {
                        // A FETCH refused for a transfer encoding sets no flag.
                        let raw = if binary.is_empty() {
                            None
                        } else {
                            self.shared.store.blob(&m.blob).ok().flatten()
                        };
                        if let Err(e) = raw.map_or(Ok(()), |raw| fetch::check_binary(&raw, binary)) {
                            self.no(tag, &format!("[UNKNOWN-CTE] {e}"));
                            return Ok(());
                        }
                        seen_now.push(*u);
                    }
                }
            }
            if !seen_now.is_empty() {
                let (us, ids) = (user.to_string(), seen_now.clone());
                if let Err(e) = self
                    .shared
                    .store
                    .run(move |t, c| mutate::store_flags(t, c, &us, id, &ids, FlagOp::Add, &Flags::new(["\\Seen"])))
                    .await
                {
                    self.store_error(tag, e);
                    return Ok(());
                }
            }
        }
        let need_raw = fetch::needs_raw(items) || !binary.is_empty();
        let need_summary = items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::Envelope | MessageDataItemName::Body | MessageDataItemName::BodyStructure
            )
        });
        let v = self.shared.store.views();
        let store = self.shared.store.clone();
        // Records are read 64 at a time in one batched lookup; other
        // sessions get the thread between the batches.
        let mut records: std::vec::IntoIter<Option<crate::views::MessageRec>> = Vec::new().into_iter();
        for (i, (seq, u)) in targets.iter().copied().enumerate() {
            if i % 64 == 0 {
                if i > 0 {
                    tokio::task::yield_now().await;
                }
                let uids: Vec<u32> = targets[i..].iter().take(64).map(|(_, u)| *u).collect();
                records = match v.messages_at(id, &uids) {
                    Ok(r) => r.into_iter(),
                    Err(e) => {
                        tracing::error!(error = %e, "reading messages");
                        vec![None; uids.len()].into_iter()
                    }
                };
            }
            let Some(Some(m)) = records.next() else { continue };
            if since.is_some_and(|s| m.modseq <= s) {
                continue;
            }
            let body = if need_raw { store.blob(&m.blob).ok().flatten() } else { None };
            let summary = if need_summary {
                self.shared.cache.get_or(&store, &m.blob, || {
                    body.as_deref()
                        .map(std::borrow::Cow::Borrowed)
                        .or_else(|| store.blob(&m.blob).ok().flatten().map(std::borrow::Cow::Owned))
                })
            } else {
                None
            };
            let force_flags = seen_now.contains(&u);
            if let Some(lines) = self.selected.as_mut().and_then(|sel| sel.announce(&m.flags)) {
                for l in lines {
                    self.line(&l);
                }
            }
            // RFC 7162 section 3.1.4: MODSEQ when asked for (CHANGEDSINCE
            // asks), and with UID in a FETCH that set \Seen once CONDSTORE
            // is on.
            let seen_report = force_flags && self.condstore;
            let modseq = (cond.any() || seen_report).then(|| self.scale.wire(m.modseq));
            let response = match fetch::render(
                seq,
                u,
                &m,
                body.as_deref(),
                summary.as_deref(),
                items,
                binary,
                uid || seen_report,
                force_flags,
                modseq,
            ) {
                Ok(r) => r,
                Err(e) => {
                    // RFC 3516 section 4.2: the request fails. Responses
                    // already sent for earlier messages stand.
                    self.no(tag, &format!("[UNKNOWN-CTE] {e}"));
                    return Ok(());
                }
            };
            // Each message's response goes out as it is made (the client's
            // reading paces the command), large bodies straight from the
            // stored copy.
            for part in &response.parts {
                match part {
                    fetch::Part::Bytes(b) => self.out.extend_from_slice(b),
                    fetch::Part::Body(b) => {
                        self.flush().await?;
                        self.write_out(b).await?;
                    }
                }
            }
            if self.out.len() >= 64 * 1024 {
                self.flush().await?;
            }
            if let Some(sel) = self.selected.as_mut() {
                sel.flags.insert(u, m.flags.clone());
            }
        }
        // No expunges during FETCH by sequence number.
        self.sync(uid);
        self.line(&format!("{tag} OK {}FETCH completed", if uid { "UID " } else { "" }));
        Ok(())
    }

    /// `* VANISHED (EARLIER)` of a UID FETCH with CHANGEDSINCE and VANISHED
    /// (RFC 7162 section 3.2.6): the UIDs of `set` expunged after position
    /// `since`; for `since` 0 (a MODSEQ not comparable here), every UID of
    /// `set` below UIDNEXT that is not in the mailbox. `*` is the highest
    /// UID ever given here, so an expunged last message is reported too.
    fn vanished_earlier(&mut self, set: &SequenceSet, since: u64) {
        let (Some(user), Some(sel)) = (self.user(), self.selected.as_ref()) else {
            return;
        };
        let v = self.shared.store.views();
        let Ok(Some(mb)) = v.mailbox(user, sel.id) else { return };
        let top = mb.uidnext.saturating_sub(1).max(1);
        let asked = merge_ranges(
            set.0
                .as_ref()
                .iter()
                .map(|s| {
                    let val = |x: &SeqOrUid| match x {
                        SeqOrUid::Value(n) => n.get(),
                        SeqOrUid::Asterisk => top,
                    };
                    match s {
                        Sequence::Single(x) => (val(x), val(x)),
                        Sequence::Range(a, b) => (val(a).min(val(b)), val(a).max(val(b))),
                    }
                })
                .collect(),
        );
        let gone: Vec<(u32, u32)> = if since > 0 {
            let Ok(changes) = v.changes_since(sel.id, since) else { return };
            let mut uids: Vec<u32> = changes
                .into_iter()
                .filter(|(u, expunged)| *expunged && in_ranges(&asked, *u))
                .map(|(u, _)| u)
                .collect();
            uids.sort_unstable();
            uids.dedup();
            let present = v.messages_at(sel.id, &uids).unwrap_or_default();
            uids.iter()
                .zip(present.iter().chain(std::iter::repeat(&None)))
                .filter(|(_, m)| m.is_none())
                .map(|(u, _)| (*u, *u))
                .collect()
        } else {
            let below: Vec<(u32, u32)> = asked.iter().filter(|(a, _)| *a <= top).map(|(a, b)| (*a, (*b).min(top))).collect();
            let present: Vec<u32> = v.message_flags(sel.id).unwrap_or_default().into_iter().map(|(u, _)| u).collect();
            missing(&below, &present)
        };
        if !gone.is_empty() {
            self.line(&format!("* VANISHED (EARLIER) {}", ranges_text(&gone)));
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_flags(
        &mut self,
        tag: &str,
        user: &str,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
        unchanged_since: Option<u64>,
    ) {
        let Some(sel) = self.selected.as_ref() else {
            self.line(&format!("{tag} BAD No mailbox selected"));
            return;
        };
        if sel.readonly {
            self.no(tag, "[READ-ONLY] Mailbox is read-only");
            return;
        }
        let id = sel.id;
        if unchanged_since.is_some() {
            self.enable_condstore();
        }
        // UNCHANGEDSINCE (RFC 7162 section 3.1.3): a message passes when its
        // MODSEQ is at most this position. A value this node cannot compare
        // (and 0) passes none: each is reported MODIFIED.
        let limit = unchanged_since.map(|n| self.scale.position(n, self.highest_now()).filter(|_| n > 0));
        let targets = self.resolve(set, uid);
        let uids: Vec<u32> = targets.iter().map(|(_, u)| *u).collect();
        let op = match kind {
            StoreType::Add => FlagOp::Add,
            StoreType::Remove => FlagOp::Remove,
            StoreType::Replace => FlagOp::Set,
        };
        let fl = to_flags(flags);
        let us = user.to_string();
        // The test and the change are one transaction: nothing changes a
        // message between its test and its store.
        let stored = self
            .shared
            .store
            .run(move |t, c| {
                let mut modified = Vec::new();
                let passed = match limit {
                    None => uids,
                    Some(limit) => {
                        let v = crate::views::TxnViews { txn: t, cf: c.views };
                        let mut passed = Vec::with_capacity(uids.len());
                        for u in uids {
                            match v.message(id, u)? {
                                Some(m) if limit.is_some_and(|p| m.modseq <= p) => passed.push(u),
                                Some(_) => modified.push(u),
                                None => {}
                            }
                        }
                        passed
                    }
                };
                if !passed.is_empty() {
                    mutate::store_flags(t, c, &us, id, &passed, op, &fl)?;
                }
                Ok((passed, modified))
            })
            .await;
        let (passed, modified) = match stored {
            Ok(r) => r,
            Err(e) => {
                self.store_error(tag, e);
                return;
            }
        };
        let passed: BTreeSet<u32> = passed.into_iter().collect();
        let modified: BTreeSet<u32> = modified.into_iter().collect();
        let silent = !matches!(response, StoreResponse::Answer);
        let v = self.shared.store.views();
        let mut failed = Vec::new();
        for (seq, u) in targets {
            if modified.contains(&u) {
                failed.push(if uid { u } else { seq });
            }
            if !passed.contains(&u) {
                continue;
            }
            let Ok(Some(m)) = v.message(id, u) else { continue };
            if let Some(lines) = self.selected.as_mut().and_then(|sel| sel.announce(&m.flags)) {
                for l in lines {
                    self.line(&l);
                }
            }
            if self.condstore {
                // RFC 7162 section 3.1.3: UID and MODSEQ of every message
                // stored, FLAGS unless .SILENT.
                let flags = if silent {
                    String::new()
                } else {
                    format!(" FLAGS {}", fetch::flags_list(&m.flags))
                };
                self.line(&format!("* {seq} FETCH (UID {u}{flags} MODSEQ ({}))", self.scale.wire(m.modseq)));
            } else if !silent {
                let uid_part = if uid { format!("UID {u} ") } else { String::new() };
                self.line(&format!("* {seq} FETCH ({uid_part}FLAGS {})", fetch::flags_list(&m.flags)));
            }
            if let Some(sel) = self.selected.as_mut() {
                sel.flags.insert(u, m.flags.clone());
            }
        }
        self.sync(uid);
        let verb = if uid { "UID STORE" } else { "STORE" };
        if failed.is_empty() {
            self.line(&format!("{tag} OK {verb} completed"));
        } else {
            failed.sort_unstable();
            self.line(&format!(
                "{tag} OK [MODIFIED {}] Conditional {verb} failed for some messages",
                ext::compact_set(&failed)
            ));
        }
    }

    async fn copy(&mut self, tag: &str, user: &str, set: &SequenceSet, mailbox: &Mailbox<'_>, uid: bool, remove: bool) {
        let Some(sel) = self.selected.as_ref() else {
            self.line(&format!("{tag} BAD No mailbox selected"));
            return;
        };
        if remove && sel.readonly {
            self.no(tag, "[READ-ONLY] Mailbox is read-only");
            return;
        }
        let from = sel.id;
        let name = match mailbox_name(mailbox, self.utf8) {
            Ok(n) => n,
            Err(e) => {
                self.no(tag, &format!("[CANNOT] {e}"));
                return;
            }
        };
        let Ok(Some(to)) = self.shared.store.views().mailbox_id(user, &name) else {
            self.no(tag, "[TRYCREATE] No such mailbox");
            return;
        };
        let targets = self.resolve(set, uid);
        let uids: Vec<u32> = targets.iter().map(|(_, u)| *u).collect();
        let us = user.to_string();
        let cmd = if remove { "MOVE" } else { "COPY" };
        let pending = self.shared.durability.append_pending(&self.shared.store);
        let copied = match self
            .shared
            .store
            .run(move |t, c| mutate::copy(t, c, &us, from, &uids, to, remove, pending))
            .await
        {
            // Pending copies: COPYUID names the UIDs the master gives them.
            Ok((validity, pairs)) if pending => {
                let mut placed = Vec::with_capacity(pairs.len());
                let mut failed = None;
                for (src, _, guid) in pairs {
                    match self.shared.durability.await_placement(&self.shared.store, user, to, guid).await {
                        Ok(Some(p)) => placed.push((src, p.uid, guid)),
                        Ok(None) => {}
                        Err(e) => failed = Some(e),
                    }
                }
                match failed {
                    Some(e) => Err(e),
                    None => Ok((validity, placed)),
                }
            }
            r => r,
        };
        match copied {
            Ok((validity, pairs)) => {
                let code = if pairs.is_empty() {
                    String::new()
                } else {
                    let src: Vec<String> = pairs.iter().map(|p| p.0.to_string()).collect();
                    let dst: Vec<String> = pairs.iter().map(|p| p.1.to_string()).collect();
                    format!("[COPYUID {validity} {} {}] ", src.join(","), dst.join(","))
                };
                if remove {
                    if !code.is_empty() {
                        self.line(&format!("* OK {code}Moved"));
                    }
                    // The moved messages leave this mailbox now.
                    self.sync(true);
                    self.line(&format!("{tag} OK {cmd} completed"));
                } else {
                    self.sync(uid);
                    self.line(&format!("{tag} OK {code}{cmd} completed"));
                }
            }
            Err(e) => self.store_error(tag, e),
        }
    }

    async fn expunge(&mut self, tag: &str, only: Option<Vec<(u32, u32)>>) {
        let user = self.user().expect("authenticated").to_string();
        let Some(sel) = self.selected.as_ref() else { return };
        if sel.readonly {
            self.no(tag, "[READ-ONLY] Mailbox is read-only");
            return;
        }
        let id = sel.id;
        let v = self.shared.store.views();
        let candidates: Vec<u32> = match &only {
            None => sel.uids.clone(),
            Some(ranges) => sel
                .uids
                .iter()
                .copied()
                .filter(|u| ranges.iter().any(|(a, b)| u >= a && u <= b))
                .collect(),
        };
        let doomed: Vec<u32> = candidates
            .into_iter()
            .filter(|u| v.message(id, *u).ok().flatten().is_some_and(|m| m.flags.contains("\\Deleted")))
            .collect();
        if !doomed.is_empty() {
            let us = user.clone();
            if let Err(e) = self.shared.store.run(move |t, c| mutate::expunge(t, c, &us, id, &doomed)).await {
                self.store_error(tag, e);
                return;
            }
        }
        self.sync(true);
        self.line(&format!("{tag} OK {}EXPUNGE completed", if only.is_some() { "UID " } else { "" }));
    }

    async fn search(
        &mut self,
        tag: &str,
        criteria: &imap_codec::imap_types::search::SearchKey<'_>,
        uid: bool,
        search_as: Option<ext::SearchAs>,
        modseq_keys: &[u64],
    ) {
        if !modseq_keys.is_empty() {
            self.enable_condstore();
        }
        // MODSEQ n keys (RFC 7162 section 3.1.5): MODSEQ >= this position;
        // 0 (every message) for a value this node cannot compare.
        let highest = if modseq_keys.is_empty() { 0 } else { self.highest_now() };
        let modseq_min: Vec<u64> = modseq_keys.iter().map(|n| self.scale.since(*n, highest)).collect();
        let mut top_modseq = 0;
        let Some(sel) = self.selected.as_ref() else { return };
        let v = self.shared.store.views();
        let ctx = search::Context {
            max_seq: sel.uids.len() as u32,
            max_uid: sel.uids.last().copied().unwrap_or(0),
        };
        let mut hits = Vec::new();
        let mut stopped = false;
        // A search that parses bodies shares the runtime's threads with
        // other sessions (a turn after every 64 messages, or after any
        // message whose body was read), and ends at shutdown.
        let mut work = 0usize;
        for (i, u) in sel.uids.iter().enumerate() {
            if work >= 64 {
                work = 0;
                tokio::task::yield_now().await;
                if *self.shutdown.borrow() {
                    stopped = true;
                    break;
                }
            }
            work += 1;
            let Ok(Some(m)) = v.message(sel.id, *u) else { continue };
            let msg = LazyMessage {
                seq: i as u32 + 1,
                uid: *u,
                rec: &m,
                store: &self.shared.store,
                parsed: Default::default(),
                modseq_min: &modseq_min,
            };
            if search::matches(criteria, &msg, &ctx) {
                hits.push(if uid { *u } else { i as u32 + 1 });
                top_modseq = top_modseq.max(m.modseq);
            }
            if msg.parsed.get().is_some() {
                work = 64;
            }
        }
        if stopped {
            self.no(tag, "[UNAVAILABLE] Server shutting down");
            return;
        }
        // RFC 7162 section 3.1.5: with a MODSEQ key, the highest MODSEQ of
        // the messages found (none when nothing was found).
        let top = (!modseq_keys.is_empty() && !hits.is_empty()).then(|| self.scale.wire(top_modseq));
        let verb = match search_as {
            Some(ext::SearchAs::Esearch(ret)) => {
                let mut line = Self::esearch_line(tag, uid, &ret, &hits);
                if let Some(n) = top {
                    line.push_str(&format!(" MODSEQ {n}"));
                }
                self.line(&line);
                "SEARCH"
            }
            Some(how @ (ext::SearchAs::Sort(_) | ext::SearchAs::Thread(_))) => {
                let Some(mut line) = self.sort_or_thread(&how, &hits, uid).await else {
                    self.no(tag, "[UNAVAILABLE] Server shutting down");
                    return;
                };
                if let (Some(n), ext::SearchAs::Sort(_)) = (top, &how) {
                    line.push_str(&format!(" (MODSEQ {n})"));
                }
                self.line(&line);
                if matches!(how, ext::SearchAs::Sort(_)) {
                    "SORT"
                } else {
                    "THREAD"
                }
            }
            None => {
                let list: String = hits.iter().map(|h| format!(" {h}")).collect();
                let modseq = top.map(|n| format!(" (MODSEQ {n})")).unwrap_or_default();
                self.line(&format!("* SEARCH{list}{modseq}"));
                "SEARCH"
            }
        };
        self.sync(uid);
        self.line(&format!("{tag} OK {}{verb} completed", if uid { "UID " } else { "" }));
    }

    async fn rename(&mut self, tag: &str, user: &str, from: String, to: String) {
        let u = user.to_string();
        let now = now_secs();
        let result = if from == "INBOX" {
            // RFC 3501: renaming INBOX moves its messages to a new mailbox
            // and leaves INBOX empty.
            self.shared
                .store
                .run(move |t, c| {
                    let dst = mutate::create_mailbox(t, c, &u, &to, None, now)?;
                    let v = crate::views::TxnViews { txn: t, cf: c.views };
                    let inbox = v.mailbox_id(&u, "INBOX")?.ok_or(MutationError::NoSuchMailbox("INBOX".into()))?;
                    let uids: Vec<u32> = v.messages(inbox)?.into_iter().map(|(uid, _)| uid).collect();
                    mutate::copy(t, c, &u, inbox, &uids, dst.id, true, false)?;
                    Ok(())
                })
                .await
        } else {
            self.shared
                .store
                .run(move |t, c| mutate::rename_mailbox(t, c, &u, &from, &to))
                .await
        };
        match result {
            Ok(()) => {
                self.sync(true);
                self.line(&format!("{tag} OK RENAME completed"));
            }
            Err(e) => self.store_error(tag, e),
        }
    }

    async fn subscribe(&mut self, tag: &str, user: &str, mailbox: &Mailbox<'_>, on: bool) {
        let cmd = if on { "SUBSCRIBE" } else { "UNSUBSCRIBE" };
        match mailbox_name(mailbox, self.utf8) {
            Ok(name) => {
                let u = user.to_string();
                match self.shared.store.run(move |t, c| mutate::subscribe(t, c, &u, &name, on)).await {
                    Ok(()) => self.line(&format!("{tag} OK {cmd} completed")),
                    Err(e) => self.store_error(tag, e),
                }
            }
            Err(e) => self.no(tag, &format!("[CANNOT] {e}")),
        }
    }

    async fn list(&mut self, tag: &str, user: &str, reference: &Mailbox<'_>, pattern: &ListMailbox<'_>, lsub: bool) {
        let reference = match reference {
            Mailbox::Inbox => b"INBOX".to_vec(),
            Mailbox::Other(o) => o.as_ref().to_vec(),
        };
        let pattern = match pattern {
            ListMailbox::Token(t) => t.as_ref().to_vec(),
            ListMailbox::String(s) => s.as_ref().to_vec(),
        };
        let cmd = ext::ListCommand {
            select: ext::ListSelect::default(),
            reference,
            patterns: vec![pattern],
            ret: ext::ListReturn::default(),
        };
        self.list_extended(tag, user, cmd, lsub).await;
    }

    fn status(&mut self, tag: &str, user: &str, mailbox: &Mailbox<'_>, items: &[StatusDataItemName]) {
        let Some((name, mb)) = self.existing_mailbox(tag, user, mailbox) else {
            return;
        };
        let items: Vec<ext::StatusItem> = items
            .iter()
            .map(|i| match i {
                StatusDataItemName::Messages => ext::StatusItem::Messages,
                StatusDataItemName::Recent => ext::StatusItem::Recent,
                StatusDataItemName::UidNext => ext::StatusItem::UidNext,
                StatusDataItemName::UidValidity => ext::StatusItem::UidValidity,
                StatusDataItemName::Unseen => ext::StatusItem::Unseen,
                StatusDataItemName::Deleted => ext::StatusItem::Deleted,
                StatusDataItemName::DeletedStorage => ext::StatusItem::DeletedStorage,
                StatusDataItemName::HighestModSeq => ext::StatusItem::HighestModSeq,
            })
            .collect();
        if items.contains(&ext::StatusItem::HighestModSeq) {
            // A CONDSTORE enabling command (RFC 7162 section 3.1).
            self.enable_condstore();
        }
        let line = self.status_line(&name, &mb, &items);
        self.line(&line);
        self.line(&format!("{tag} OK STATUS completed"));
    }

    /// IDLE: report changes as they are committed until the client says DONE.
    async fn idle(&mut self, tag: &str) -> R<Flow> {
        self.line("+ idling");
        self.sync(true);
        self.flush().await?;
        let mut commits = self.commits.clone();
        commits.borrow_and_update();
        let mut buf = [0u8; 4096];
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
            tokio::select! {
                r = tokio::time::timeout(timeout, self.stream.read(&mut buf)) => match r {
                    Ok(Ok(0)) | Ok(Err(_)) => return Ok(Flow::Logout),
                    Ok(Ok(n)) => self.framer.feed(&buf[..n]),
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

/// Strict base64 (an AUTHENTICATE response): only the alphabet and final
/// padding are allowed; the decoding itself is the MIME module's.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let body = s.trim_end_matches('=');
    if !body.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/') {
        return None;
    }
    Some(crate::proto::imap::mime::decode_base64(body.as_bytes()))
}

/// `1:5,7,9:*` -> inclusive ranges (`*` = u32::MAX).
fn parse_uid_set(s: &str) -> Option<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    for part in s.trim().split(',') {
        let num = |x: &str| {
            if x == "*" {
                Some(u32::MAX)
            } else {
                x.parse::<u32>().ok().filter(|n| *n > 0)
            }
        };
        match part.split_once(':') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                out.push((a.min(b), a.max(b)));
            }
            None => {
                let a = num(part)?;
                out.push((a, a));
            }
        }
    }
    Some(out)
}

/// Inclusive ranges sorted and merged (adjacent ones joined).
fn merge_ranges(mut r: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    r.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Whether merged `ranges` hold `n`.
fn in_ranges(ranges: &[(u32, u32)], n: u32) -> bool {
    let i = ranges.partition_point(|(_, b)| *b < n);
    ranges.get(i).is_some_and(|(a, _)| *a <= n)
}

/// The numbers of merged `ranges` not in ascending `present`, as ranges.
fn missing(ranges: &[(u32, u32)], present: &[u32]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for &(a, b) in ranges {
        let mut next = a;
        let lo = present.partition_point(|u| *u < a);
        let hi = present.partition_point(|u| *u <= b);
        for &u in &present[lo..hi] {
            if u > next {
                out.push((next, u - 1));
            }
            next = u.saturating_add(1);
        }
        if next <= b && (hi == 0 || present[hi - 1] < u32::MAX) {
            out.push((next, b));
        }
    }
    out
}

/// Ranges as a sequence set (`1:3,7`).
fn ranges_text(ranges: &[(u32, u32)]) -> String {
    ranges
        .iter()
        .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}:{b}") })
        .collect::<Vec<_>>()
        .join(",")
}

/// A message for SEARCH that loads and parses its body only if a key needs it.
struct LazyMessage<'a> {
    seq: u32,
    uid: u32,
    rec: &'a MessageRec,
    store: &'a crate::store::Store,
    parsed: std::cell::OnceCell<Vec<u8>>,
    /// The positions of the SEARCH MODSEQ keys, by index
    /// ([`condstore::search_modseq`]).
    modseq_min: &'a [u64],
}

impl LazyMessage<'_> {
    fn bytes(&self) -> &[u8] {
        self.parsed
            .get_or_init(|| self.store.blob(&self.rec.blob).ok().flatten().unwrap_or_default())
    }
}

impl SearchMessage for LazyMessage<'_> {
    fn seq(&self) -> u32 {
        self.seq
    }
    fn uid(&self) -> u32 {
        self.uid
    }
    fn has_flag(&self, flag: &str) -> bool {
        if !self.modseq_min.is_empty() {
            if let Some(i) = condstore::modseq_key(flag) {
                return self.modseq_min.get(i).is_some_and(|p| self.rec.modseq >= *p);
            }
        }
        self.rec.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }
    fn is_recent(&self) -> bool {
        false
    }
    fn internal_date(&self) -> (i64, i16) {
        (self.rec.internal_date, self.rec.tz_minutes)
    }
    fn size(&self) -> u64 {
        self.rec.size
    }
    fn header(&self, name: &str) -> Vec<String> {
        let parsed = crate::proto::imap::mime::Parsed::new(self.bytes());
        let mut values = parsed.header_values(name);
        if ["From", "To", "Cc", "Bcc"].iter().any(|f| f.eq_ignore_ascii_case(name)) {
            values.extend(parsed.address_texts(name));
        }
        values
    }
    fn sent_date(&self) -> Option<(i64, i16)> {
        crate::proto::imap::mime::Parsed::new(self.bytes()).sent_date_zoned()
    }
    fn body_text(&self) -> String {
        crate::proto::imap::mime::Parsed::new(self.bytes()).body_text()
    }
    fn full_text(&self) -> String {
        let p = crate::proto::imap::mime::Parsed::new(self.bytes());
        let header = p.section(&[], crate::proto::imap::mime::SectionText::Header).unwrap_or_default();
        format!("{}{}", String::from_utf8_lossy(&header), p.body_text())
    }
}

#[cfg(test)]
mod tests {
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
