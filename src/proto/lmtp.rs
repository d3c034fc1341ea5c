//! A sans-io LMTP (RFC 2033) server session.
//!
//! [`Session`] holds the whole protocol state of one LMTP connection and does
//! no I/O of its own: the driver hands it the bytes the client sent
//! ([`Session::feed`]), then calls [`Session::poll`] until it returns `None`,
//! carrying out each [`Action`] in turn:
//!
//! - [`Action::Reply`]: write the bytes to the client (replies are coalesced,
//!   so one action may carry several pipelined replies, always in order);
//! - [`Action::CheckRecipient`]: look the recipient up and answer with
//!   [`Session::rcpt_result`];
//! - [`Action::Deliver`]: store the message once for all its recipients and
//!   answer with [`Session::delivery_result`];
//! - [`Action::Close`]: flush what was written and close the connection.
//!
//! While a `CheckRecipient` or `Deliver` is unanswered, the session reads no
//! further input: whatever the client pipelined behind the command stays
//! buffered, and `poll` returns `None` until the answer arrives. When the
//! client closes its side, call [`Session::input_closed`]: complete commands
//! already buffered are still carried out, an incomplete message is dropped
//! (never delivered) and the session ends with `Close`.
//!
//! # State machine
//!
//! ```text
//!            greeting (220)
//!                 |
//!                 v
//!   +-------> Command <----------------------------------------+
//!   |          |  |  |  \                                      |
//!   |  line too|  |  |   `-- RCPT --> (await rcpt_result) -----+
//!   |     long |  |  |
//!   |          v  |  `-- DATA (354) --> Data --- CRLF.CRLF --+
//!   +--- LongLine |                                          |
//!    (500 at LF)  `-- BDAT n [LAST] --> Chunk -- n octets ---+
//!                                                            v
//!               per-recipient replies <-- (await delivery_result) <-- Deliver
//!
//!   QUIT, too many errors, input overflow, end of input --> Closing --> Closed
//! ```
//!
//! Across those reading modes runs the mail transaction: none before `MAIL`,
//! open after a successful `MAIL FROM`, collecting recipients through `RCPT
//! TO`, and handed over whole in [`Action::Deliver`] when the body is
//! complete. `RSET`, `LHLO` and the end of a message reset it.
//!
//! # Replies
//!
//! Every reply but the greeting, the `LHLO` capability list and `354` carries
//! an RFC 3463 enhanced status code (RFC 2034). After the body of a message
//! (`DATA` or the `BDAT ... LAST` chunk) the session sends one reply per
//! recipient accepted by `RCPT`, in `RCPT` order, duplicates included, as
//! RFC 2033 section 4.2 requires.
//!
//! # Bounds
//!
//! Nothing the client sends makes the session panic or allocate without
//! bound. Once `poll` has returned `None` with no answer outstanding, at most
//! one partial line (shorter than the line limit) stays buffered. A message
//! body is never held beyond [`Limits::max_message`]: past it the rest is
//! read and thrown away, and the message is refused with `552 5.3.4` for each
//! recipient. While an answer is outstanding, input is buffered as fed; the
//! driver should stop reading while [`Session::wants_input`] is false, and a
//! driver that keeps feeding regardless is cut off with `421` once the buffer
//! passes `max_message` plus a line and a pipelining window.

use std::fmt;

/// The smallest effective command line limit: RFC 5321 section 4.5.3.1.4
/// requires servers to accept command lines of 512 octets.
const MIN_LINE: usize = 512;

/// How much pipelined input beyond one line the session wants buffered while
/// an answer is outstanding (see [`Session::wants_input`]).
const PIPELINE_WINDOW: usize = 64 * 1024;

/// `poll` stops processing input and hands out the replies gathered so far
/// once they reach this size.
const OUT_BATCH: usize = 64 * 1024;

/// Longest client name (from `LHLO`) kept for [`Session::client_name`].
const MAX_CLIENT_NAME: usize = 255;

/// Limits of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest command line, terminator included (default 4096; never less
    /// than 512, which RFC 5321 requires). Longer lines get `500 5.5.2`.
    /// Message lines are not limited by it.
    pub max_line: usize,
    /// Largest message body in octets, advertised as `SIZE` (default 64 MiB).
    pub max_message: u64,
    /// Most recipients accepted in one transaction (default 1000); further
    /// `RCPT` commands get `452 4.5.3`.
    pub max_recipients: usize,
    /// Bad commands (unknown, malformed, out of sequence, too long) after
    /// which the session answers `421 4.7.0` and closes (default 20; `0`
    /// disables the limit).
    pub max_errors: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_line: 4096,
            max_message: 64 * 1024 * 1024,
            max_recipients: 1000,
            max_errors: 20,
        }
    }
}

/// One SMTP reply line: code, optional enhanced status code and text.
///
/// ```text
/// Reply::new(550, "5.1.1", "unknown user")  =>  "550 5.1.1 unknown user\r\n"
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code (RFC 3463), such as `"5.1.1"`.
    pub enhanced: Option<String>,
    /// Free text; control characters and non-ASCII are replaced when written.
    pub text: String,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, enhanced: impl Into<String>, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced.into()),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code.
    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: text.into(),
        }
    }

    /// The reply as sent on the wire, ending in CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_line(&mut out, self.code, b' ', self.enhanced.as_deref(), &self.text);
        out
    }

    /// The same reply with a code in `allowed` (else `fallback` whole) and an
    /// enhanced code that is well formed and of the same class as the code
    /// (else `class.0.0`). Used on replies that come from the driver.
    fn normalized(self, allowed: std::ops::RangeInclusive<u16>, fallback: Reply) -> Reply {
        if !allowed.contains(&self.code) {
            return fallback;
        }
        let class = self.code / 100;
        let enhanced = match self.enhanced {
            Some(e) if enhanced_is_valid(&e, class) => e,
            _ => format!("{class}.0.0"),
        };
        Reply {
            code: self.code,
            enhanced: Some(enhanced),
            text: self.text,
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        // Written replies are ASCII by construction.
        f.write_str(String::from_utf8_lossy(&bytes).trim_end_matches("\r\n"))
    }
}

/// Whether `e` looks like `class.subject.detail` (RFC 3463 section 2).
fn enhanced_is_valid(e: &str, class: u16) -> bool {
    let mut parts = e.split('.');
    let ok_part = |p: Option<&str>| matches!(p, Some(p) if (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    let first = parts.next();
    let class_ok = first == Some(class.to_string().as_str());
    class_ok && ok_part(parts.next()) && ok_part(parts.next()) && parts.next().is_none()
}

/// Write one reply line: `code`, `sep` (`' '` or `'-'`), the enhanced code if
/// any, the text with anything outside printable ASCII replaced, and CRLF.
fn write_line(out: &mut Vec<u8>, code: u16, sep: u8, enhanced: Option<&str>, text: &str) {
    let code = code.clamp(100, 999);
    out.extend_from_slice(code.to_string().as_bytes());
    out.push(sep);
    if let Some(e) = enhanced {
        out.extend(e.bytes().map(printable));
        out.push(b' ');
    }
    // Text may come from the driver: never let it break the line structure.
    out.extend(text.chars().map(|c| if c.is_ascii() { printable(c as u8) } else { b'?' }));
    out.extend_from_slice(b"\r\n");
}

fn printable(b: u8) -> u8 {
    if (0x20..0x7f).contains(&b) {
        b
    } else {
        b' '
    }
}

/// Why an address is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("empty address")]
    Empty,
    #[error("quoted local parts are not supported")]
    Quoted,
    #[error("address has no domain")]
    NoDomain,
    #[error("invalid local part")]
    LocalPart,
    #[error("invalid domain")]
    Domain,
    #[error("invalid source route")]
    Route,
}

/// A recipient address, split for lookup.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Recipient {
    /// The address as the client gave it, without `<>` (nor a source route).
    pub address: String,
    /// The local part before the first `+`, lower-cased.
    pub local: String,
    /// The part of the local part after the first `+` (RFC 5233 "detail"),
    /// lower-cased; `None` when there is no `+`.
    pub detail: Option<String>,
    /// The domain, lower-cased; empty only for the bare `<Postmaster>` that
    /// RFC 5321 section 4.5.1 requires servers to accept.
    pub domain: String,
}

impl Recipient {
    /// Parse a mailbox (`local@domain`, no angle brackets). Local parts are
    /// dot-atom characters (quoted strings are refused); domains are names of
    /// letters, digits, `-`, `_` and `.`, or an address literal in brackets.
    /// Non-ASCII characters are allowed in both (RFC 6531 `UTF8-non-ascii`
    /// and U-labels); the session accepts such addresses only in a
    /// transaction that declared `SMTPUTF8`.
    /// A leading source route (`@a,@b:`) is dropped, as RFC 5321 allows.
    ///
    /// # Errors
    ///
    /// [`AddressError`] says what is wrong with the address.
    pub fn parse(address: &str) -> Result<Recipient, AddressError> {
        let address = strip_route(address)?;
        if address.is_empty() {
            return Err(AddressError::Empty);
        }
        if address.contains('"') {
            return Err(AddressError::Quoted);
        }
        let Some((local, domain)) = address.rsplit_once('@') else {
            if address.eq_ignore_ascii_case("postmaster") {
                return Ok(Recipient {
                    address: address.to_string(),
                    local: "postmaster".into(),
                    detail: None,
                    domain: String::new(),
                });
            }
            return Err(AddressError::NoDomain);
        };
        if local.is_empty()
            || !local
                .chars()
                .all(|c| if c.is_ascii() { is_local_char(c as u8) } else { is_utf8_char(c) })
        {
            return Err(AddressError::LocalPart);
        }
        if !domain_is_valid(domain) {
            return Err(AddressError::Domain);
        }
        // The user part compares case-insensitively; the detail names a
        // folder and keeps its case.
        let (local, detail) = match local.split_once('+') {
            Some((user, detail)) => (user.to_lowercase(), Some(detail.to_string())),
            None => (local.to_lowercase(), None),
        };
        Ok(Recipient {
            address: address.to_string(),
            local,
            detail,
            domain: domain.to_lowercase(),
        })
    }
}

/// Drop an RFC 5321 source route (`@a.example,@b.example:`) from a path.
fn strip_route(path: &str) -> Result<&str, AddressError> {
    if !path.starts_with('@') {
        return Ok(path);
    }
    let (route, rest) = path.split_once(':').ok_or(AddressError::Route)?;
    let hops_ok = route.split(',').all(|hop| hop.strip_prefix('@').is_some_and(domain_is_valid));
    if hops_ok {
        Ok(rest)
    } else {
        Err(AddressError::Route)
    }
}

/// RFC 5322 `atext` plus `.` (dot placement is not checked: real mail has
/// `a..b@` local parts).
fn is_local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b)
}

/// A non-ASCII character allowed in an address (RFC 6531 `UTF8-non-ascii`):
/// anything but controls and white space.
fn is_utf8_char(c: char) -> bool {
    !c.is_ascii() && !c.is_control() && !c.is_whitespace()
}

fn domain_is_valid(d: &str) -> bool {
    if let Some(literal) = d.strip_prefix('[') {
        return match literal.strip_suffix(']') {
            Some(inner) => !inner.is_empty() && inner.bytes().all(|b| (0x21..0x7f).contains(&b) && !b"[]\\".contains(&b)),
            None => false,
        };
    }
    !d.is_empty()
        && !d.starts_with('.')
        && !d.contains("..")
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || is_utf8_char(c))
}

/// A complete message, to be stored once for all its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The reverse path as given (without `<>`), `""` for the null sender.
    pub mail_from: String,
    /// The accepted recipients in `RCPT` order, duplicates included.
    pub recipients: Vec<Recipient>,
    /// The message: dot-unstuffed (for `DATA`), every line ending in CRLF
    /// (bare LF converted), without the terminating `.` line.
    pub body: Vec<u8>,
    /// The client declared `BODY=8BITMIME`, or the body has octets above 127.
    pub body_8bit: bool,
    /// The transaction declared `SMTPUTF8` (RFC 6531).
    pub utf8: bool,
}

/// The driver's answer to [`Action::CheckRecipient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The recipient exists: `250 2.1.5`.
    Accept,
    /// Refuse with this reply, which must be 4xx or 5xx (anything else is
    /// replaced by `451 4.3.0`), e.g. `Reply::new(550, "5.1.1", "unknown user")`.
    Reject(Reply),
}

/// The driver's answer to [`Action::Deliver`], for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Stored: `250 2.0.0 <address> Ok: delivered`.
    Ok,
    /// Not stored, try later: `451 4.3.0 <address> <text>`.
    Temporary(String),
    /// Not stored, never will be: `550 5.3.0 <address> <text>`.
    Permanent(String),
    /// Answer with this reply (2xx, 4xx or 5xx; anything else becomes
    /// `451 4.3.0`), e.g. `Reply::new(552, "5.2.2", "mailbox full")`. The
    /// address is put in front of the text.
    Reply(Reply),
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the client.
    Reply(Vec<u8>),
    /// Look up this recipient; answer with [`Session::rcpt_result`].
    /// The session processes no further input until it is answered.
    CheckRecipient(Recipient),
    /// A complete message: store it durably once for all recipients, then
    /// answer with [`Session::delivery_result`] (one result per recipient, in order).
    Deliver(Delivery),
    /// Close the connection (after writing any replies already emitted).
    Close,
}

/// Refusals by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejections {
    /// Unknown commands and empty lines (`500 5.5.2`).
    pub unknown_command: u64,
    /// `HELO` or `EHLO` on this LMTP port (`500 5.5.1`).
    pub wrong_greeting: u64,
    /// Malformed arguments (`501`).
    pub syntax: u64,
    /// Commands out of sequence (`503 5.5.1`).
    pub sequence: u64,
    /// Command lines over [`Limits::max_line`] (`500 5.5.2`).
    pub line_too_long: u64,
    /// Unsupported `MAIL`/`RCPT` parameters (`555 5.5.4`).
    pub parameters: u64,
    /// `MAIL ... SIZE=` over the limit (`552 5.3.4`).
    pub size: u64,
    /// `RCPT` beyond [`Limits::max_recipients`] (`452 4.5.3`).
    pub too_many_recipients: u64,
    /// Recipients refused by the driver's lookup.
    pub recipient: u64,
    /// `DATA` or `BDAT` after every `RCPT` was refused (`503 5.5.1`): the
    /// normal end of a pipelined transaction whose recipients all failed,
    /// so not a bad command.
    pub data_without_recipients: u64,
    /// Sessions closed for too many errors or input overflow (`421`).
    pub closed: u64,
}

/// Per-session counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Command lines received (message content excluded).
    pub commands: u64,
    /// Bad commands: unknown, wrong greeting, malformed, out of sequence, too
    /// long, unsupported parameters. These count towards [`Limits::max_errors`].
    pub bad_commands: u64,
    /// Recipients accepted by the lookup.
    pub recipients_accepted: u64,
    /// Recipients refused (by the lookup or for being too many).
    pub recipients_rejected: u64,
    /// Messages handed over in [`Action::Deliver`].
    pub messages: u64,
    /// Body octets handed over in [`Action::Deliver`].
    pub bytes: u64,
    /// Messages refused for exceeding [`Limits::max_message`] while reading.
    pub oversize: u64,
    /// Messages cut short by the end of input.
    pub aborted: u64,
    /// Per-recipient delivery replies that were successes.
    pub deliveries_ok: u64,
    /// Per-recipient delivery replies that were failures.
    pub deliveries_failed: u64,
    /// Octets fed to the session.
    pub input_bytes: u64,
    /// Refusals by reason.
    pub rejected: Rejections,
}

/// Which refusal counter a bad command bumps.
#[derive(Debug, Clone, Copy)]
enum Bad {
    Unknown,
    Greeting,
    Syntax,
    Sequence,
    LineTooLong,
    Parameters,
}

/// What the session is reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Command lines.
    Command,
    /// The rest of an over-long command line, thrown away up to its LF.
    LongLine,
    /// A `DATA` body, up to the `.` line.
    Data,
    /// The octets of a `BDAT` chunk. `discard`: the chunk belongs to no valid
    /// transaction and was already answered.
    Chunk {
        remaining: u64,
        size: u64,
        last: bool,
        discard: bool,
    },
    /// `Close` is queued.
    Closing,
    /// `Close` was handed out: nothing more happens.
    Closed,
}

/// The answer the session waits for.
#[derive(Debug)]
enum Wait {
    Nothing,
    Rcpt(Recipient),
    /// The accepted recipients' addresses of the message being delivered.
    Delivery(Vec<String>),
}

/// The open mail transaction.
#[derive(Debug, Default)]
struct Txn {
    mail_from: String,
    declared_8bit: bool,
    recipients: Vec<Recipient>,
    /// The body so far; emptied when the message turns out too big.
    body: Vec<u8>,
    /// Body octets seen, including those thrown away.
    size: u64,
    oversize: bool,
    saw_8bit: bool,
    /// DATA: the next octet starts a line.
    at_line_start: bool,
    /// A BDAT chunk was accepted: the body comes in chunks.
    chunking: bool,
    /// Some `RCPT` of this transaction was refused.
    refused_rcpt: bool,
    /// `MAIL FROM:<...> SMTPUTF8` (RFC 6531): addresses may be UTF-8.
    utf8: bool,
    /// BDAT: the last octet seen was CR (bare LF conversion across chunks).
    prev_cr: bool,
}

impl Txn {
    fn new(mail_from: String, declared_8bit: bool, utf8: bool) -> Txn {
        Txn {
            mail_from,
            declared_8bit,
            utf8,
            ..Txn::default()
        }
    }

    /// Add octets to the body, keeping it within `max`. Returns true when
    /// this call found the message too big.
    fn append(&mut self, bytes: &[u8], max: u64) -> bool {
        if bytes.is_empty() {
            return false;
        }
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.oversize {
            return false;
        }
        if self.size > max {
            self.oversize = true;
            self.body = Vec::new();
            return true;
        }
        if !self.saw_8bit && bytes.iter().any(|&b| b >= 0x80) {
            self.saw_8bit = true;
        }
        // Grow by doubling but never past the limit (len + bytes <= size <= max).
        let need = self.body.len() + bytes.len();
        if need > self.body.capacity() {
            let cap_max = usize::try_from(max).unwrap_or(usize::MAX);
            let want = self.body.capacity().saturating_mul(2).max(4096).min(cap_max).max(need);
            self.body.reserve_exact(want - self.body.len());
        }
        self.body.extend_from_slice(bytes);
        false
    }

    /// Add raw BDAT octets, converting bare LF to CRLF. Returns true when
    /// this call found the message too big.
    fn append_chunk(&mut self, bytes: &[u8], max: u64) -> bool {
        if self.oversize {
            self.size = self.size.saturating_add(bytes.len() as u64);
            self.prev_cr = bytes.last().map_or(self.prev_cr, |&b| b == b'\r');
            return false;
        }
        let mut normal = Vec::with_capacity(bytes.len() + 16);
        for &b in bytes {
            if b == b'\n' && !self.prev_cr {
                normal.push(b'\r');
            }
            normal.push(b);
            self.prev_cr = b == b'\r';
        }
        self.append(&normal, max)
    }
}

/// The protocol state of one LMTP connection. See the [module docs](self).
#[derive(Debug)]
pub struct Session {
    host: String,
    limits: Limits,
    /// Effective command line limit (at least [`MIN_LINE`]).
    max_line: usize,
    /// Input; `input[start..]` is not processed yet.
    input: Vec<u8>,
    start: usize,
    /// Reply bytes not yet handed out.
    out: Vec<u8>,
    /// A non-reply action to hand out once `out` is empty.
    pending: Option<Action>,
    wait: Wait,
    mode: Mode,
    /// The name given in `LHLO`; `None` before it.
    client: Option<String>,
    txn: Option<Txn>,
    /// The client closed its side.
    eof: bool,
    counters: Counters,
}

impl Session {
    /// A new session; the first `poll` yields the `220` greeting. `hostname`
    /// is used in the greeting, `LHLO` and `QUIT` replies.
    pub fn new(hostname: &str, limits: Limits) -> Session {
        let host: String = hostname.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
        let host = if host.is_empty() { "localhost".to_string() } else { host };
        let mut out = Vec::new();
        write_line(&mut out, 220, b' ', None, &format!("{host} LMTP Tandem ready"));
        Session {
            host,
            max_line: limits.max_line.max(MIN_LINE),
            limits,
            input: Vec::new(),
            start: 0,
            out,
            pending: None,
            wait: Wait::Nothing,
            mode: Mode::Command,
            client: None,
            txn: None,
            eof: false,
            counters: Counters::default(),
        }
    }

    /// Append bytes received from the client. Never panics, whatever the
    /// bytes; ignored after `input_closed` or once the session is closing.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.counters.input_bytes = self.counters.input_bytes.saturating_add(bytes.len() as u64);
        if self.eof || matches!(self.mode, Mode::Closing | Mode::Closed) || bytes.is_empty() {
            return;
        }
        if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        if self.input.len().saturating_add(bytes.len()) > self.input_cap() {
            // Only a driver that ignores `wants_input` gets here.
            self.input = Vec::new();
            self.counters.rejected.closed += 1;
            self.reply(421, "4.7.0", &format!("{} input buffer overflow, closing connection", self.host));
            self.close();
            return;
        }
        self.input.extend_from_slice(bytes);
    }

    /// The next thing to do, or `None` when the session needs more input or
    /// an answer (or is closed).
    pub fn poll(&mut self) -> Option<Action> {
        while self.out.len() < OUT_BATCH && self.pending.is_none() && self.runnable() {
            if !self.step() {
                break;
            }
        }
        if self.start == self.input.len() {
            // All consumed: keep the allocation small between bursts.
            self.input.clear();
            self.start = 0;
            if self.input.capacity() > self.max_line + PIPELINE_WINDOW {
                self.input.shrink_to(self.max_line);
            }
        }
        if !self.out.is_empty() {
            return Some(Action::Reply(std::mem::take(&mut self.out)));
        }
        let action = self.pending.take()?;
        if action == Action::Close {
            self.mode = Mode::Closed;
            self.input = Vec::new();
            self.start = 0;
        }
        Some(action)
    }

    /// Answer the outstanding [`Action::CheckRecipient`]. Ignored when none
    /// is outstanding.
    pub fn rcpt_result(&mut self, outcome: RcptOutcome) {
        if !matches!(self.wait, Wait::Rcpt(_)) {
            return;
        }
        let Wait::Rcpt(recipient) = std::mem::replace(&mut self.wait, Wait::Nothing) else {
            return;
        };
        if matches!(self.pending, Some(Action::CheckRecipient(_))) {
            self.pending = None;
        }
        match outcome {
            RcptOutcome::Accept => {
                self.counters.recipients_accepted += 1;
                if let Some(txn) = self.txn.as_mut() {
                    txn.recipients.push(recipient);
                }
                self.reply(250, "2.1.5", "Ok");
            }
            RcptOutcome::Reject(reply) => {
                self.counters.recipients_rejected += 1;
                self.counters.rejected.recipient += 1;
                if let Some(txn) = self.txn.as_mut() {
                    txn.refused_rcpt = true;
                }
                let reply = reply.normalized(400..=599, Reply::new(451, "4.3.0", "recipient lookup failed"));
                write_line(&mut self.out, reply.code, b' ', reply.enhanced.as_deref(), &reply.text);
            }
        }
    }

    /// Answer the outstanding [`Action::Deliver`] with one outcome per
    /// recipient, in order; the session then replies once per recipient.
    /// Missing outcomes count as temporary failures, extra ones are ignored.
    /// Ignored when no delivery is outstanding.
    pub fn delivery_result(&mut self, outcomes: Vec<DeliveryOutcome>) {
        if !matches!(self.wait, Wait::Delivery(_)) {
            return;
        }
        let Wait::Delivery(addresses) = std::mem::replace(&mut self.wait, Wait::Nothing) else {
            return;
        };
        if matches!(self.pending, Some(Action::Deliver(_))) {
            self.pending = None;
        }
        let mut outcomes = outcomes.into_iter();
        for address in &addresses {
            let reply = match outcomes.next() {
                Some(DeliveryOutcome::Ok) => Reply::new(250, "2.0.0", "Ok: delivered"),
                Some(DeliveryOutcome::Temporary(text)) => Reply::new(451, "4.3.0", or_default(text, "temporary failure, try again later")),
                Some(DeliveryOutcome::Permanent(text)) => Reply::new(550, "5.3.0", or_default(text, "delivery failed")),
                Some(DeliveryOutcome::Reply(r)) => r.normalized(200..=599, Reply::new(451, "4.3.0", "delivery failed, try again later")),
                None => Reply::new(451, "4.3.0", "no delivery result, try again later"),
            };
            if reply.code < 300 {
                self.counters.deliveries_ok += 1;
            } else {
                self.counters.deliveries_failed += 1;
            }
            write_line(
                &mut self.out,
                reply.code,
                b' ',
                reply.enhanced.as_deref(),
                &format!("<{address}> {}", reply.text),
            );
        }
    }

    /// The client closed its side. Complete commands already fed are still
    /// carried out; an incomplete message is discarded (never delivered);
    /// then `poll` yields [`Action::Close`].
    pub fn input_closed(&mut self) {
        self.eof = true;
    }

    /// Per-session counts.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The limits the session was made with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the driver should read more input: false once closed, and
    /// while an outstanding answer has let a pipelining window pile up.
    pub fn wants_input(&self) -> bool {
        !self.eof && !matches!(self.mode, Mode::Closing | Mode::Closed) && self.input.len() - self.start < self.max_line + PIPELINE_WINDOW
    }

    /// Whether a message body is being received (DATA or a BDAT sequence):
    /// closing the connection now would discard it.
    pub fn in_message(&self) -> bool {
        match self.mode {
            Mode::Data => true,
            Mode::Chunk { discard, .. } => !discard,
            _ => self.txn.as_ref().is_some_and(|t| t.chunking),
        }
    }

    /// Whether a `CheckRecipient` or `Deliver` awaits its answer.
    pub fn awaiting_answer(&self) -> bool {
        !matches!(self.wait, Wait::Nothing)
    }

    /// Whether `Close` was handed out.
    pub fn is_closed(&self) -> bool {
        self.mode == Mode::Closed
    }

    /// Octets held: unprocessed input plus the message body being read.
    pub fn buffered(&self) -> usize {
        self.input.len() - self.start + self.txn.as_ref().map_or(0, |t| t.body.len())
    }

    /// The name the client gave in `LHLO`.
    pub fn client_name(&self) -> Option<&str> {
        self.client.as_deref()
    }

    // ----- processing -----

    /// Hard bound on buffered input (see the module docs).
    fn input_cap(&self) -> usize {
        usize::try_from(self.limits.max_message)
            .unwrap_or(usize::MAX)
            .saturating_add(self.max_line)
            .saturating_add(PIPELINE_WINDOW)
    }

    fn runnable(&self) -> bool {
        matches!(self.wait, Wait::Nothing) && !matches!(self.mode, Mode::Closing | Mode::Closed)
    }

    /// Process one unit of input. Returns false when more input is needed.
    fn step(&mut self) -> bool {
        match self.mode {
            Mode::Command => self.step_command(),
            Mode::LongLine => self.step_long_line(),
            Mode::Data => self.step_data(),
            Mode::Chunk { .. } => self.step_chunk(),
            Mode::Closing | Mode::Closed => false,
        }
    }

    /// No complete unit is buffered: at the end of input, wind up.
    fn starved(&mut self) -> bool {
        if !self.eof {
            return false;
        }
        let mid_message = match self.mode {
            Mode::Data => true,
            Mode::Chunk { discard, .. } => !discard,
            _ => self.txn.as_ref().is_some_and(|t| t.chunking),
        };
        if mid_message {
            self.counters.aborted += 1;
        }
        self.txn = None;
        self.close();
        true
    }

    fn step_command(&mut self) -> bool {
        let avail = &self.input[self.start..];
        let window = &avail[..avail.len().min(self.max_line)];
        if let Some(i) = find_lf(window) {
            let line = trim_line(&window[..i]).to_vec();
            self.start += i + 1;
            self.command(&line);
            true
        } else if avail.len() >= self.max_line {
            // Throw away what cannot be a command; the rest of the line goes
            // in LongLine mode.
            self.start += window.len();
            self.mode = Mode::LongLine;
            true
        } else {
            self.starved()
        }
    }

    fn step_long_line(&mut self) -> bool {
        let avail = &self.input[self.start..];
        if let Some(i) = find_lf(avail) {
            self.start += i + 1;
            self.mode = Mode::Command;
            self.counters.commands += 1;
            self.bad(Bad::LineTooLong, 500, "5.5.2", "line too long");
            true
        } else if !avail.is_empty() {
            self.start += avail.len();
            true
        } else {
            self.starved()
        }
    }

    fn step_data(&mut self) -> bool {
        let max = self.limits.max_message;
        let Some(txn) = self.txn.as_mut() else {
            self.mode = Mode::Command;
            return true;
        };
        let avail = &self.input[self.start..];
        let mut found_oversize = false;
        if let Some(i) = find_lf(avail) {
            let line = &avail[..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if txn.at_line_start && line == b"." {
                self.start += i + 1;
                self.finish_message();
                return true;
            }
            let content = if txn.at_line_start {
                line.strip_prefix(b".").unwrap_or(line)
            } else {
                line
            };
            found_oversize |= txn.append(content, max);
            found_oversize |= txn.append(b"\r\n", max);
            txn.at_line_start = true;
            self.start += i + 1;
        } else if avail.len() >= self.max_line {
            // A long line: take what is here, holding back a final CR that
            // may belong to the line's CRLF. It cannot be the "." line.
            let take = if avail.ends_with(b"\r") { avail.len() - 1 } else { avail.len() };
            let part = &avail[..take];
            let content = if txn.at_line_start {
                part.strip_prefix(b".").unwrap_or(part)
            } else {
                part
            };
            found_oversize |= txn.append(content, max);
            txn.at_line_start = false;
            self.start += take;
        } else {
            return self.starved();
        }
        if found_oversize {
            self.counters.oversize += 1;
        }
        true
    }

    fn step_chunk(&mut self) -> bool {
        let Mode::Chunk {
            remaining,
            size,
            last,
            discard,
        } = self.mode
        else {
            return false;
        };
        if remaining == 0 {
            self.mode = Mode::Command;
            self.end_chunk(size, last, discard);
            return true;
        }
        let avail = &self.input[self.start..];
        if avail.is_empty() {
            return self.starved();
        }
        let n = remaining.min(avail.len() as u64) as usize;
        if !discard {
            if let Some(txn) = self.txn.as_mut() {
                if txn.append_chunk(&avail[..n], self.limits.max_message) {
                    self.counters.oversize += 1;
                }
            }
        }
        self.start += n;
        self.mode = Mode::Chunk {
            remaining: remaining - n as u64,
            size,
            last,
            discard,
        };
        true
    }

    /// A BDAT chunk's octets are all in.
    fn end_chunk(&mut self, size: u64, last: bool, discard: bool) {
        if discard {
            return;
        }
        if last {
            self.finish_message();
        } else if self.txn.as_ref().is_some_and(|t| t.oversize) {
            self.reply(552, "5.3.4", "message too big");
        } else {
            self.reply(250, "2.0.0", &format!("{size} octets received"));
        }
    }

    /// The body is complete: refuse it if too big, else hand it over.
    fn finish_message(&mut self) {
        self.mode = Mode::Command;
        let Some(mut txn) = self.txn.take() else {
            return;
        };
        if txn.oversize {
            for r in &txn.recipients {
                write_line(&mut self.out, 552, b' ', Some("5.3.4"), &format!("<{}> message too big", r.address));
            }
            return;
        }
        if txn.chunking && !txn.body.is_empty() && !txn.body.ends_with(b"\r\n") {
            // BDAT bodies may stop mid-line; every stored line ends in CRLF.
            let tail: &[u8] = if txn.body.ends_with(b"\r") { b"\n" } else { b"\r\n" };
            txn.body.extend_from_slice(tail);
        }
        let addresses = txn.recipients.iter().map(|r| r.address.clone()).collect();
        self.counters.messages += 1;
        self.counters.bytes += txn.body.len() as u64;
        let delivery = Delivery {
            mail_from: txn.mail_from,
            recipients: txn.recipients,
            body: txn.body,
            body_8bit: txn.declared_8bit || txn.saw_8bit,
            utf8: txn.utf8,
        };
        self.pending = Some(Action::Deliver(delivery));
        self.wait = Wait::Delivery(addresses);
    }

    fn close(&mut self) {
        self.mode = Mode::Closing;
        self.pending = Some(Action::Close);
        self.wait = Wait::Nothing;
        self.txn = None;
    }

    fn reply(&mut self, code: u16, enhanced: &str, text: &str) {
        write_line(&mut self.out, code, b' ', Some(enhanced), text);
    }

    /// Refuse a bad command, closing the session at the error limit.
    fn bad(&mut self, kind: Bad, code: u16, enhanced: &str, text: &str) {
        self.reply(code, enhanced, text);
        self.counters.bad_commands += 1;
        let r = &mut self.counters.rejected;
        *match kind {
            Bad::Unknown => &mut r.unknown_command,
            Bad::Greeting => &mut r.wrong_greeting,
            Bad::Syntax => &mut r.syntax,
            Bad::Sequence => &mut r.sequence,
            Bad::LineTooLong => &mut r.line_too_long,
            Bad::Parameters => &mut r.parameters,
        } += 1;
        let max = u64::from(self.limits.max_errors);
        if max > 0 && self.counters.bad_commands >= max {
            self.counters.rejected.closed += 1;
            self.reply(421, "4.7.0", "too many errors");
            self.close();
        }
    }

    /// Carry out one command line (terminator and trailing blanks removed).
    fn command(&mut self, line: &[u8]) {
        self.counters.commands += 1;
        let split = line.iter().position(|&b| b == b' ' || b == b'\t').unwrap_or(line.len());
        let (verb, args) = line.split_at(split);
        let verb = if verb.len() <= 4 && verb.iter().all(u8::is_ascii_alphabetic) {
            verb.to_ascii_uppercase()
        } else {
            Vec::new()
        };
        let known = matches!(
            &verb[..],
            b"LHLO" | b"HELO" | b"EHLO" | b"MAIL" | b"RCPT" | b"DATA" | b"BDAT" | b"RSET" | b"NOOP" | b"QUIT" | b"VRFY" | b"HELP"
        );
        if !known {
            let text = if line.is_empty() {
                "empty command"
            } else {
                "command not recognized"
            };
            return self.bad(Bad::Unknown, 500, "5.5.2", text);
        }
        // UTF-8 only where addresses go (RFC 6531); MAIL and RCPT decide
        // whether the transaction allows it.
        let utf8_ok = matches!(&verb[..], b"MAIL" | b"RCPT");
        let args = match std::str::from_utf8(args) {
            Ok(a)
                if a.chars()
                    .all(|c| (' '..='~').contains(&c) || c == '\t' || utf8_ok && is_utf8_char(c)) =>
            {
                a.trim_matches([' ', '\t'])
            }
            _ => return self.bad(Bad::Syntax, 501, "5.5.4", "invalid characters in command"),
        };
        match &verb[..] {
            b"LHLO" => self.lhlo(args),
            b"HELO" | b"EHLO" => self.bad(Bad::Greeting, 500, "5.5.1", "this is LMTP: use LHLO"),
            b"MAIL" => self.mail(args),
            b"RCPT" => self.rcpt(args),
            b"DATA" => self.data(args),
            b"BDAT" => self.bdat(args),
            b"RSET" if !args.is_empty() => self.bad(Bad::Syntax, 501, "5.5.4", "syntax: RSET"),
            b"RSET" => {
                self.txn = None;
                self.reply(250, "2.0.0", "Ok");
            }
            b"NOOP" => self.reply(250, "2.0.0", "Ok"),
            b"QUIT" if !args.is_empty() => self.bad(Bad::Syntax, 501, "5.5.4", "syntax: QUIT"),
            b"QUIT" => {
                let text = format!("{} closing connection", self.host);
                self.reply(221, "2.0.0", &text);
                self.txn = None;
                self.close();
            }
            b"VRFY" if args.is_empty() => self.bad(Bad::Syntax, 501, "5.5.4", "syntax: VRFY address"),
            b"VRFY" => self.reply(252, "2.5.2", "cannot VRFY user; try RCPT to attempt delivery"),
            _ => self.reply(214, "2.0.0", "commands: LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"),
        }
    }

    fn lhlo(&mut self, args: &str) {
        if args.is_empty() {
            return self.bad(Bad::Syntax, 501, "5.5.4", "syntax: LHLO hostname");
        }
        self.txn = None;
        self.client = Some(args.chars().take(MAX_CLIENT_NAME).collect());
        let size = format!("SIZE {}", self.limits.max_message);
        let lines = [
            self.host.as_str(),
            "PIPELINING",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            size.as_str(),
            "CHUNKING",
            "SMTPUTF8",
        ];
        for (i, text) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { b' ' } else { b'-' };
            write_line(&mut self.out, 250, sep, None, text);
        }
    }

    fn mail(&mut self, args: &str) {
        if self.client.is_none() {
            return self.bad(Bad::Sequence, 503, "5.5.1", "send LHLO first");
        }
        if self.txn.is_some() {
            return self.bad(Bad::Sequence, 503, "5.5.1", "sender already specified");
        }
        let Some((path, params)) = strip_prefix_ci(args, "FROM:").and_then(split_path) else {
            return self.bad(Bad::Syntax, 501, "5.5.4", "syntax: MAIL FROM:<address> [parameters]");
        };
        // RFC 6531: `SMTPUTF8` (no value) allows UTF-8 in this transaction's addresses.
        let utf8 = params.split_ascii_whitespace().any(|p| p.eq_ignore_ascii_case("SMTPUTF8"));
        if !utf8 && !path.is_ascii() {
            return self.bad(Bad::Syntax, 553, "5.6.7", "non-ASCII sender address needs SMTPUTF8");
        }
        let mail_from = match path {
            "" => String::new(),
            path => match Recipient::parse(path) {
                Ok(r) => r.address,
                Err(e) => return self.bad(Bad::Syntax, 501, "5.1.7", &format!("bad sender address: {e}")),
            },
        };
        let mut size: Option<u64> = None;
        let mut body: Option<bool> = None;
        for param in params.split_ascii_whitespace() {
            let (key, value) = match param.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (param, None),
            };
            if key.eq_ignore_ascii_case("SIZE") {
                match value {
                    Some(v) if size.is_none() && (1..=20).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) => {
                        // 20 digits may not fit: such a size is over any limit.
                        size = Some(v.parse().unwrap_or(u64::MAX));
                    }
                    _ => return self.bad(Bad::Syntax, 501, "5.5.4", "bad SIZE parameter"),
                }
            } else if key.eq_ignore_ascii_case("SMTPUTF8") {
                if value.is_some() {
                    return self.bad(Bad::Syntax, 501, "5.5.4", "bad SMTPUTF8 parameter");
                }
            } else if key.eq_ignore_ascii_case("BODY") {
                match value {
                    Some(v) if body.is_none() && v.eq_ignore_ascii_case("7BIT") => body = Some(false),
                    Some(v) if body.is_none() && v.eq_ignore_ascii_case("8BITMIME") => body = Some(true),
                    _ => return self.bad(Bad::Syntax, 501, "5.5.4", "bad BODY parameter"),
                }
            } else {
                let key: String = key.chars().take(32).collect();
                return self.bad(Bad::Parameters, 555, "5.5.4", &format!("unsupported parameter {key}"));
            }
        }
        if size.is_some_and(|s| s > self.limits.max_message) {
            self.counters.rejected.size += 1;
            return self.reply(552, "5.3.4", "message size exceeds fixed maximum message size");
        }
        self.txn = Some(Txn::new(mail_from, body.unwrap_or(false), utf8));
        self.reply(250, "2.1.0", "Ok");
    }

    fn rcpt(&mut self, args: &str) {
        let Some(txn) = self.txn.as_ref() else {
            return self.bad(Bad::Sequence, 503, "5.5.1", "need MAIL command");
        };
        if txn.chunking {
            return self.bad(Bad::Sequence, 503, "5.5.1", "RCPT not allowed during BDAT transfer");
        }
        let accepted = txn.recipients.len();
        let Some((path, params)) = strip_prefix_ci(args, "TO:").and_then(split_path) else {
            return self.bad(Bad::Syntax, 501, "5.5.4", "syntax: RCPT TO:<address>");
        };
        if let Some(param) = params.split_ascii_whitespace().next() {
            let key: String = param.split('=').next().unwrap_or(param).chars().take(32).collect();
            return self.bad(Bad::Parameters, 555, "5.5.4", &format!("unsupported parameter {key}"));
        }
        if !txn.utf8 && !path.is_ascii() {
            return self.bad(Bad::Syntax, 553, "5.6.7", "non-ASCII recipient address needs SMTPUTF8");
        }
        let recipient = match Recipient::parse(path) {
            Ok(r) => r,
            Err(e) => return self.bad(Bad::Syntax, 501, "5.1.3", &format!("bad recipient address: {e}")),
        };
        if accepted >= self.limits.max_recipients {
            if let Some(txn) = self.txn.as_mut() {
                txn.refused_rcpt = true;
            }
            self.counters.recipients_rejected += 1;
            self.counters.rejected.too_many_recipients += 1;
            return self.reply(452, "4.5.3", "too many recipients");
        }
        self.pending = Some(Action::CheckRecipient(recipient.clone()));
        self.wait = Wait::Rcpt(recipient);
    }

    fn data(&mut self, args: &str) {
        if !args.is_empty() {
            return self.bad(Bad::Syntax, 501, "5.5.4", "syntax: DATA");
        }
        let Some(txn) = self.txn.as_mut() else {
            return self.bad(Bad::Sequence, 503, "5.5.1", "need MAIL command");
        };
        if txn.chunking {
            return self.bad(Bad::Sequence, 503, "5.5.1", "DATA not allowed after BDAT");
        }
        if txn.recipients.is_empty() {
            if txn.refused_rcpt {
                self.counters.rejected.data_without_recipients += 1;
                return self.reply(503, "5.5.1", "no valid recipients");
            }
            return self.bad(Bad::Sequence, 503, "5.5.1", "no valid recipients");
        }
        txn.at_line_start = true;
        self.mode = Mode::Data;
        write_line(&mut self.out, 354, b' ', None, "start mail input; end with <CRLF>.<CRLF>");
    }

    fn bdat(&mut self, args: &str) {
        let mut words = args.split_ascii_whitespace();
        let size = words
            .next()
            .filter(|w| (1..=20).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|w| w.parse::<u64>().ok());
        let last = match words.next() {
            None => false,
            Some(w) if w.eq_ignore_ascii_case("LAST") => true,
            Some(_) => return self.bad(Bad::Syntax, 501, "5.5.4", "syntax: BDAT size [LAST]"),
        };
        let (Some(size), None) = (size, words.next()) else {
            return self.bad(Bad::Syntax, 501, "5.5.4", "syntax: BDAT size [LAST]");
        };
        // From here on the chunk's octets follow on the wire and are consumed
        // whatever the verdict (RFC 3030 section 3).
        let max = self.limits.max_message;
        let verdict = match self.txn.as_mut() {
            None => Err(("need MAIL command", false)),
            Some(t) if t.recipients.is_empty() => Err(("no valid recipients", t.refused_rcpt)),
            Some(t) => {
                t.chunking = true;
                if !t.oversize && t.size.saturating_add(size) > max {
                    t.oversize = true;
                    t.size = t.size.saturating_add(size);
                    t.body = Vec::new();
                    // The octets are counted now; the chunk only discards them.
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
        };
        let discard = match verdict {
            Err((text, true)) => {
                self.counters.rejected.data_without_recipients += 1;
                self.reply(503, "5.5.1", text);
                true
            }
            Err((text, false)) => {
                self.bad(Bad::Sequence, 503, "5.5.1", text);
                true
            }
            Ok(newly_oversize) => {
                if newly_oversize {
                    self.counters.oversize += 1;
                }
                false
            }
        };
        if self.mode == Mode::Closing {
            return;
        }
        self.mode = Mode::Chunk {
            remaining: size,
            size,
            last,
            discard,
        };
    }
}

fn or_default(text: String, default: &str) -> String {
    if text.trim().is_empty() {
        default.to_string()
    } else {
        text
    }
}

fn find_lf(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// A command line without its CR and trailing blanks.
fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    if end > 0 && line[end - 1] == b'\r' {
        end -= 1;
    }
    while end > 0 && (line[end - 1] == b' ' || line[end - 1] == b'\t') {
        end -= 1;
    }
    &line[..end]
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// Split `<path> params` (or `path params` without brackets) after `FROM:`
/// or `TO:`. An unbracketed path must not be empty; `<>` gives `""`.
fn split_path(rest: &str) -> Option<(&str, &str)> {
    let rest = rest.trim_start_matches([' ', '\t']);
    if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        let params = &inner[end + 1..];
        if !params.is_empty() && !params.starts_with([' ', '\t']) {
            return None;
        }
        Some((&inner[..end], params))
    } else {
        let end = rest.find([' ', '\t']).unwrap_or(rest.len());
        let path = &rest[..end];
        if path.is_empty() || path.contains(['<', '>']) {
            return None;
        }
        Some((path, &rest[end..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a session like a server would, with a fixed policy: recipients
    /// whose local part starts with "nobody" are unknown; deliveries to local
    /// parts starting with "temp"/"perm" fail that way.
    struct Driver {
        s: Session,
        out: Vec<u8>,
        deliveries: Vec<Delivery>,
        checked: Vec<Recipient>,
        closed: bool,
    }

    impl Driver {
        fn new() -> Driver {
            Driver::with(Limits::default())
        }

        fn with(limits: Limits) -> Driver {
            let mut d = Driver {
                s: Session::new("mx.example", limits),
                out: Vec::new(),
                deliveries: Vec::new(),
                checked: Vec::new(),
                closed: false,
            };
            d.run();
            d
        }

        fn run(&mut self) {
            while let Some(action) = self.s.poll() {
                assert!(!self.closed, "action after Close: {action:?}");
                match action {
                    Action::Reply(bytes) => self.out.extend_from_slice(&bytes),
                    Action::CheckRecipient(r) => {
                        let outcome = if r.local.starts_with("nobody") {
                            RcptOutcome::Reject(Reply::new(550, "5.1.1", "unknown user"))
                        } else {
                            RcptOutcome::Accept
                        };
                        self.checked.push(r);
                        self.s.rcpt_result(outcome);
                    }
                    Action::Deliver(d) => {
                        let outcomes = d
                            .recipients
                            .iter()
                            .map(|r| {
                                if r.local.starts_with("temp") {
                                    DeliveryOutcome::Temporary("disk busy".into())
                                } else if r.local.starts_with("perm") {
                                    DeliveryOutcome::Permanent("mailbox disabled".into())
                                } else {
                                    DeliveryOutcome::Ok
                                }
                            })
                            .collect();
                        self.deliveries.push(d);
                        self.s.delivery_result(outcomes);
                    }
                    Action::Close => self.closed = true,
                }
            }
        }

        /// Feed bytes, run, return the replies they produced.
        fn send(&mut self, bytes: &[u8]) -> String {
            let before = self.out.len();
            self.s.feed(bytes);
            self.run();
            String::from_utf8(self.out[before..].to_vec()).unwrap()
        }

        fn close_input(&mut self) -> String {
            let before = self.out.len();
            self.s.input_closed();
            self.run();
            String::from_utf8(self.out[before..].to_vec()).unwrap()
        }

        /// LHLO and discard its reply.
        fn greeted() -> Driver {
            let mut d = Driver::new();
            d.send(b"LHLO client.example\r\n");
            d
        }
    }

    const GREETING: &str = "220 mx.example LMTP Tandem ready\r\n";
    const LHLO_REPLY: &str =
        "250-mx.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE 67108864\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n";

    #[test]
    fn session_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Session>();
        send_sync::<Action>();
    }

    #[test]
    fn greeting_comes_first() {
        let mut s = Session::new("mx.example", Limits::default());
        assert_eq!(s.poll(), Some(Action::Reply(GREETING.as_bytes().to_vec())));
        assert_eq!(s.poll(), None);
    }

    #[test]
    fn hostname_is_sanitised() {
        let mut s = Session::new("evil\r\n250 x", Limits::default());
        assert_eq!(s.poll(), Some(Action::Reply(b"220 evil250x LMTP Tandem ready\r\n".to_vec())));
        let mut s = Session::new("", Limits::default());
        assert_eq!(s.poll(), Some(Action::Reply(b"220 localhost LMTP Tandem ready\r\n".to_vec())));
    }

    #[test]
    fn lhlo_lists_capabilities() {
        let mut d = Driver::new();
        assert_eq!(String::from_utf8(d.out.clone()).unwrap(), GREETING);
        assert_eq!(d.send(b"LHLO client.example\r\n"), LHLO_REPLY);
        assert_eq!(d.s.client_name(), Some("client.example"));
        assert_eq!(d.send(b"lhlo other\r\n"), LHLO_REPLY, "verbs are case-insensitive");
        assert_eq!(d.send(b"LHLO\r\n"), "501 5.5.4 syntax: LHLO hostname\r\n");
    }

    #[test]
    fn lhlo_advertises_configured_size() {
        let mut d = Driver::with(Limits {
            max_message: 1234,
            ..Limits::default()
        });
        assert!(d.send(b"LHLO c\r\n").contains("250-SIZE 1234\r\n"));
    }

    #[test]
    fn helo_and_ehlo_are_refused() {
        let mut d = Driver::new();
        assert_eq!(
            d.send(b"HELO c\r\nEHLO c\r\n"),
            "500 5.5.1 this is LMTP: use LHLO\r\n500 5.5.1 this is LMTP: use LHLO\r\n"
        );
        assert_eq!(d.s.counters().rejected.wrong_greeting, 2);
        assert_eq!(d.s.counters().bad_commands, 2);
    }

    #[test]
    fn mail_requires_lhlo() {
        let mut d = Driver::new();
        assert_eq!(d.send(b"MAIL FROM:<a@b.example>\r\n"), "503 5.5.1 send LHLO first\r\n");
        assert_eq!(d.s.counters().rejected.sequence, 1);
    }

    #[test]
    fn full_transaction_single_recipient() {
        let mut d = Driver::greeted();
        assert_eq!(d.send(b"MAIL FROM:<Sender@Example.org>\r\n"), "250 2.1.0 Ok\r\n");
        assert_eq!(d.send(b"RCPT TO:<Alice+Lists@Example.COM>\r\n"), "250 2.1.5 Ok\r\n");
        assert_eq!(d.send(b"DATA\r\n"), "354 start mail input; end with <CRLF>.<CRLF>\r\n");
        assert_eq!(d.send(b"Subject: hi\r\n\r\nhello\r\n"), "");
        assert!(d.deliveries.is_empty());
        assert_eq!(d.send(b".\r\n"), "250 2.0.0 <Alice+Lists@Example.COM> Ok: delivered\r\n");
        assert_eq!(d.send(b"QUIT\r\n"), "221 2.0.0 mx.example closing connection\r\n");
        assert!(d.closed);
        assert_eq!(
            d.deliveries,
            vec![Delivery {
                mail_from: "Sender@Example.org".into(),
                recipients: vec![Recipient {
                    address: "Alice+Lists@Example.COM".into(),
                    local: "alice".into(),
                    detail: Some("Lists".into()),
                    domain: "example.com".into()
                }],
                body: b"Subject: hi\r\n\r\nhello\r\n".to_vec(),
                body_8bit: false,
                utf8: false,
            }]
        );
        let c = d.s.counters();
        assert_eq!((c.commands, c.bad_commands, c.messages, c.bytes), (5, 0, 1, 22));
        assert_eq!((c.recipients_accepted, c.deliveries_ok), (1, 1));
    }

    #[test]
    fn multi_recipient_with_one_rejected() {
        let mut d = Driver::greeted();
        let replies = d.send(b"MAIL FROM:<>\r\nRCPT TO:<a@x.example>\r\nRCPT TO:<nobody@x.example>\r\nRCPT TO:<temp@x.example>\r\nRCPT TO:<perm@x.example>\r\nRCPT TO:<a@x.example>\r\nDATA\r\n");
        assert_eq!(
            replies,
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 unknown user\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 start mail input; end with <CRLF>.<CRLF>\r\n"
        );
        assert_eq!(
            d.send(b"body\r\n.\r\n"),
            "250 2.0.0 <a@x.example> Ok: delivered\r\n\
             451 4.3.0 <temp@x.example> disk busy\r\n\
             550 5.3.0 <perm@x.example> mailbox disabled\r\n\
             250 2.0.0 <a@x.example> Ok: delivered\r\n"
        );
        let del = &d.deliveries[0];
        assert_eq!(del.mail_from, "");
        let addrs: Vec<_> = del.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(
            addrs,
            ["a@x.example", "temp@x.example", "perm@x.example", "a@x.example"],
            "duplicates are kept (RFC 2033 4.2)"
        );
        let c = d.s.counters();
        assert_eq!((c.recipients_accepted, c.recipients_rejected, c.rejected.recipient), (4, 1, 1));
        assert_eq!((c.deliveries_ok, c.deliveries_failed), (2, 2));
    }

    const PIPELINED: &[u8] = b"LHLO client\r\nMAIL FROM:<s@example.org> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<u@example.com>\r\n\
RCPT TO:<nobody@example.com>\r\nRCPT TO:<v@example.com>\r\nDATA\r\nline 1\r\n..dot\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n";

    fn pipelined_expected() -> String {
        format!(
            "{GREETING}{LHLO_REPLY}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 unknown user\r\n250 2.1.5 Ok\r\n\
354 start mail input; end with <CRLF>.<CRLF>\r\n250 2.0.0 <u@example.com> Ok: delivered\r\n250 2.0.0 <v@example.com> Ok: delivered\r\n\
250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n221 2.0.0 mx.example closing connection\r\n"
        )
    }

    #[test]
    fn pipelining_whole_transaction_in_one_feed() {
        let mut d = Driver::new();
        d.send(PIPELINED);
        assert_eq!(String::from_utf8(d.out.clone()).unwrap(), pipelined_expected());
        assert!(d.closed);
        assert_eq!(d.deliveries.len(), 1);
        assert_eq!(d.deliveries[0].body, b"line 1\r\n.dot\r\n");
        assert!(d.deliveries[0].body_8bit);
    }

    #[test]
    fn pipelining_byte_by_byte_gives_the_same_bytes() {
        let mut d = Driver::new();
        for b in PIPELINED {
            d.send(std::slice::from_ref(b));
        }
        assert_eq!(String::from_utf8(d.out.clone()).unwrap(), pipelined_expected());
        assert_eq!(d.deliveries[0].body, b"line 1\r\n.dot\r\n");
    }

    #[test]
    fn input_waits_while_a_recipient_is_checked() {
        let mut s = Session::new("mx.example", Limits::default());
        s.poll();
        s.feed(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nRCPT TO:<z@y.example>\r\nNOOP\r\n");
        let Some(Action::Reply(r)) = s.poll() else { panic!() };
        assert!(r.ends_with(b"250 2.1.0 Ok\r\n"));
        let Some(Action::CheckRecipient(r)) = s.poll() else { panic!() };
        assert_eq!(r.address, "x@y.example");
        assert!(s.awaiting_answer());
        assert_eq!(s.poll(), None, "nothing happens until the answer");
        s.feed(b"NOOP\r\n");
        assert_eq!(s.poll(), None);
        // Answers to nothing outstanding are ignored.
        s.delivery_result(vec![DeliveryOutcome::Ok]);
        s.rcpt_result(RcptOutcome::Reject(Reply::new(450, "4.2.1", "try later")));
        assert_eq!(s.poll(), Some(Action::Reply(b"450 4.2.1 try later\r\n".to_vec())));
        let Some(Action::CheckRecipient(r)) = s.poll() else { panic!() };
        assert_eq!(r.address, "z@y.example");
        s.rcpt_result(RcptOutcome::Accept);
        s.rcpt_result(RcptOutcome::Accept); // ignored
        assert_eq!(
            s.poll(),
            Some(Action::Reply(b"250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n".to_vec()))
        );
        assert_eq!(s.poll(), None);
        assert_eq!(s.counters().recipients_accepted, 1);
    }

    #[test]
    fn input_waits_while_a_message_is_delivered() {
        let mut s = Session::new("mx.example", Limits::default());
        s.feed(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\n");
        while let Some(a) = s.poll() {
            if let Action::CheckRecipient(_) = a {
                s.rcpt_result(RcptOutcome::Accept);
            }
        }
        s.feed(b"DATA\r\nhi\r\n.\r\nNOOP\r\n");
        assert!(matches!(s.poll(), Some(Action::Reply(_))));
        let Some(Action::Deliver(del)) = s.poll() else { panic!() };
        assert_eq!(del.body, b"hi\r\n");
        assert_eq!(s.poll(), None);
        s.delivery_result(vec![DeliveryOutcome::Reply(Reply::new(552, "5.2.2", "mailbox full"))]);
        assert_eq!(
            s.poll(),
            Some(Action::Reply(b"552 5.2.2 <x@y.example> mailbox full\r\n250 2.0.0 Ok\r\n".to_vec()))
        );
    }

    #[test]
    fn dot_unstuffing() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\n");
        d.send(b"..foo\r\n...\r\n..\r\nmid.dle.\r\n. \r\n.\r\n");
        assert_eq!(d.deliveries[0].body, b".foo\r\n..\r\n.\r\nmid.dle.\r\n \r\n");
    }

    #[test]
    fn empty_message() {
        let mut d = Driver::greeted();
        let r = d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\n.\r\n");
        assert!(r.ends_with("250 2.0.0 <u@x.example> Ok: delivered\r\n"));
        assert_eq!(d.deliveries[0].body, b"");
    }

    #[test]
    fn bare_lf_becomes_crlf() {
        let mut d = Driver::greeted();
        let r = d.send(b"MAIL FROM:<a@b.example>\nRCPT TO:<u@x.example>\nDATA\nline1\nline2\r\n..x\n\n.\nNOOP\n");
        assert!(r.ends_with("250 2.0.0 <u@x.example> Ok: delivered\r\n250 2.0.0 Ok\r\n"), "{r}");
        assert_eq!(d.deliveries[0].body, b"line1\r\nline2\r\n.x\r\n\r\n");
    }

    #[test]
    fn bare_cr_inside_a_line_is_kept() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\na\rb\r\n.\r\r\n.\r\n");
        // ".\r\r\n" is not the end: one CR belongs to the CRLF, the dot is stuffing.
        assert_eq!(d.deliveries[0].body, b"a\rb\r\n\r\r\n");
    }

    #[test]
    fn long_data_lines_are_accepted_across_feeds() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\n");
        let mut line = vec![b'.'];
        line.extend(std::iter::repeat_n(b'x', 10_000));
        // Split so that a feed ends between CR and LF, and in the middle.
        d.send(&line[..5000]);
        assert!(d.s.buffered() <= 5000 + 4096);
        d.send(&line[5000..]);
        d.send(b"\r");
        d.send(b"\n.");
        d.send(b"\r\n");
        let mut expected = line[1..].to_vec();
        expected.extend_from_slice(b"\r\n");
        assert_eq!(d.deliveries[0].body, expected);
    }

    #[test]
    fn long_line_of_dots_is_not_a_terminator() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\n");
        let dots = vec![b'.'; 700];
        d.send(&dots);
        d.send(b"\r\n.\r\n");
        assert_eq!(d.deliveries[0].body.len(), 699 + 2);
    }

    #[test]
    fn eight_bit_body_is_detected() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example> BODY=7BIT\r\nRCPT TO:<u@x.example>\r\nDATA\r\nplain\r\n.\r\n");
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\nh\xc3\xa9\r\n.\r\n");
        d.send(b"MAIL FROM:<a@b.example> body=8bitmime\r\nRCPT TO:<u@x.example>\r\nDATA\r\nplain\r\n.\r\n");
        let flags: Vec<bool> = d.deliveries.iter().map(|d| d.body_8bit).collect();
        assert_eq!(flags, [false, true, true]);
    }

    #[test]
    fn oversize_declared_with_size() {
        let mut d = Driver::with(Limits {
            max_message: 1000,
            ..Limits::default()
        });
        d.send(b"LHLO c\r\n");
        assert_eq!(
            d.send(b"MAIL FROM:<a@b.example> SIZE=1001\r\n"),
            "552 5.3.4 message size exceeds fixed maximum message size\r\n"
        );
        assert_eq!(d.send(b"RCPT TO:<u@x.example>\r\n"), "503 5.5.1 need MAIL command\r\n");
        assert_eq!(
            d.send(b"MAIL FROM:<a@b.example> SIZE=99999999999999999999\r\n"),
            "552 5.3.4 message size exceeds fixed maximum message size\r\n"
        );
        assert_eq!(d.send(b"MAIL FROM:<a@b.example> SIZE=1000\r\n"), "250 2.1.0 Ok\r\n");
        assert_eq!(d.s.counters().rejected.size, 2);
        assert_eq!(d.s.counters().bad_commands, 1, "only the RCPT was a bad command");
    }

    #[test]
    fn oversize_discovered_during_data() {
        let mut d = Driver::with(Limits {
            max_message: 100,
            ..Limits::default()
        });
        d.send(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nRCPT TO:<v@x.example>\r\nDATA\r\n");
        for _ in 0..50 {
            assert_eq!(d.send(b"0123456789012345678901234567890123456789\r\n"), "");
            assert!(d.s.buffered() <= 100 + 4096);
        }
        assert_eq!(
            d.send(b".\r\n"),
            "552 5.3.4 <u@x.example> message too big\r\n552 5.3.4 <v@x.example> message too big\r\n"
        );
        assert!(d.deliveries.is_empty());
        assert_eq!(d.s.counters().oversize, 1);
        // The transaction is over; the session goes on.
        assert_eq!(d.send(b"RCPT TO:<u@x.example>\r\n"), "503 5.5.1 need MAIL command\r\n");
        let r = d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\nsmall\r\n.\r\n");
        assert!(r.ends_with("250 2.0.0 <u@x.example> Ok: delivered\r\n"));
        assert_eq!(d.deliveries[0].body, b"small\r\n");
    }

    #[test]
    fn pipelined_commands_after_an_oversize_message() {
        let mut d = Driver::with(Limits {
            max_message: 20,
            ..Limits::default()
        });
        let r = d.send(
            b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\n0123456789\r\n0123456789\r\n.\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\n",
        );
        assert!(r.ends_with("354 start mail input; end with <CRLF>.<CRLF>\r\n552 5.3.4 <u@x.example> message too big\r\n250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n"), "{r}");
    }

    #[test]
    fn large_message_in_small_feeds() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\n");
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for i in 0..2000 {
            let line = format!("{}line {i:05} {}\r\n", if i % 7 == 0 { "." } else { "" }, "x".repeat(i % 1500));
            expected.extend_from_slice(line.as_bytes());
            if i % 7 == 0 {
                wire.push(b'.'); // stuffed
            }
            wire.extend_from_slice(line.as_bytes());
        }
        wire.extend_from_slice(b".\r\n");
        for piece in wire.chunks(8191) {
            d.send(piece);
            assert!(d.s.input.len() - d.s.start < 4096);
        }
        assert_eq!(d.deliveries.len(), 1);
        assert!(d.deliveries[0].body == expected, "body differs");
        assert_eq!(d.s.counters().bytes, expected.len() as u64);
    }

    #[test]
    fn message_exactly_at_the_limit_is_accepted() {
        let mut d = Driver::with(Limits {
            max_message: 10,
            ..Limits::default()
        });
        d.send(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\n12345678\r\n.\r\n");
        assert_eq!(d.deliveries[0].body, b"12345678\r\n");
        let r = d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\n123456789\r\n.\r\n");
        assert!(r.ends_with("552 5.3.4 <u@x.example> message too big\r\n"));
    }

    #[test]
    fn smtputf8_allows_utf8_addresses_in_its_transaction_only() {
        let mut d = Driver::greeted();
        // RFC 6531 3.4: without the parameter a UTF-8 address is refused.
        assert_eq!(
            d.send("MAIL FROM:<jörg@bücher.example>\r\n".as_bytes()),
            "553 5.6.7 non-ASCII sender address needs SMTPUTF8\r\n"
        );
        assert_eq!(
            d.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<ü@x.example>\r\nRSET\r\n".as_bytes()),
            "250 2.1.0 Ok\r\n553 5.6.7 non-ASCII recipient address needs SMTPUTF8\r\n250 2.0.0 Ok\r\n"
        );
        assert_eq!(
            d.send(b"MAIL FROM:<a@b.example> SMTPUTF8=yes\r\n"),
            "501 5.5.4 bad SMTPUTF8 parameter\r\n"
        );
        // Declared: UTF-8 local parts and U-label domains, with other parameters.
        let r = d.send("MAIL FROM:<jörg@bücher.example> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<Ünïcode+Ordner@Bücher.example>\r\nDATA\r\nSubject: Grüße\r\n\r\nhi\r\n.\r\n".as_bytes());
        assert_eq!(
            r,
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 start mail input; end with <CRLF>.<CRLF>\r\n250 2.0.0 <?n?code+Ordner@B?cher.example> Ok: delivered\r\n"
        );
        let del = &d.deliveries[0];
        assert_eq!(del.mail_from, "jörg@bücher.example");
        assert!(del.utf8);
        let rcpt = &del.recipients[0];
        assert_eq!(
            (rcpt.local.as_str(), rcpt.detail.as_deref(), rcpt.domain.as_str()),
            ("ünïcode", Some("Ordner"), "bücher.example")
        );
        assert_eq!(del.body, "Subject: Grüße\r\n\r\nhi\r\n".as_bytes());
        // Controls and spaces stay out, UTF-8 or not; other commands stay ASCII.
        d.send(b"MAIL FROM:<> SMTPUTF8\r\n");
        assert_eq!(
            d.send("RCPT TO:<a\u{85}b@x.example>\r\n".as_bytes()),
            "501 5.5.4 invalid characters in command\r\n"
        );
        assert_eq!(
            d.send("RCPT TO:<a\u{3000}b@x.example>\r\n".as_bytes()),
            "501 5.5.4 invalid characters in command\r\n"
        );
        assert_eq!(d.send("VRFY jörg\r\n".as_bytes()), "501 5.5.4 invalid characters in command\r\n");
        assert_eq!(d.s.counters().rejected.parameters, 0);
    }

    #[test]
    fn pipelined_data_after_refused_recipients_is_not_a_bad_command() {
        let mut d = Driver::greeted();
        // What Postfix pipelines: every recipient refused, DATA already sent.
        let r = d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<nobody@x.example>\r\nRCPT TO:<nobody2@x.example>\r\nDATA\r\nRSET\r\n");
        assert_eq!(
            r,
            "250 2.1.0 Ok\r\n550 5.1.1 unknown user\r\n550 5.1.1 unknown user\r\n503 5.5.1 no valid recipients\r\n250 2.0.0 Ok\r\n"
        );
        let c = d.s.counters();
        assert_eq!((c.bad_commands, c.rejected.sequence, c.rejected.data_without_recipients), (0, 0, 1));
        // DATA with no RCPT at all is still out of sequence.
        d.send(b"MAIL FROM:<a@b.example>\r\nDATA\r\n");
        let c = d.s.counters();
        assert_eq!((c.bad_commands, c.rejected.sequence, c.rejected.data_without_recipients), (1, 1, 1));
        // BDAT alike.
        d.send(b"RSET\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<nobody@x.example>\r\n");
        assert_eq!(d.send(b"BDAT 4 LAST\r\nDATA"), "503 5.5.1 no valid recipients\r\n");
        assert_eq!(d.s.counters().rejected.data_without_recipients, 2);
        assert_eq!(d.s.counters().bad_commands, 1);
    }

    #[test]
    fn data_sequence_errors() {
        let mut d = Driver::greeted();
        assert_eq!(d.send(b"DATA\r\n"), "503 5.5.1 need MAIL command\r\n");
        d.send(b"MAIL FROM:<a@b.example>\r\n");
        assert_eq!(d.send(b"DATA\r\n"), "503 5.5.1 no valid recipients\r\n");
        assert_eq!(
            d.send(b"RCPT TO:<nobody@x.example>\r\nDATA\r\n"),
            "550 5.1.1 unknown user\r\n503 5.5.1 no valid recipients\r\n"
        );
        // What the client sends as body is then read as commands.
        assert_eq!(
            d.send(b"hello\r\n.\r\n"),
            "500 5.5.2 command not recognized\r\n500 5.5.2 command not recognized\r\n"
        );
        assert_eq!(d.send(b"DATA now\r\n"), "501 5.5.4 syntax: DATA\r\n");
        assert!(d.deliveries.is_empty());
    }

    #[test]
    fn rcpt_and_mail_sequence_errors() {
        let mut d = Driver::greeted();
        assert_eq!(d.send(b"RCPT TO:<u@x.example>\r\n"), "503 5.5.1 need MAIL command\r\n");
        d.send(b"MAIL FROM:<a@b.example>\r\n");
        assert_eq!(d.send(b"MAIL FROM:<a@b.example>\r\n"), "503 5.5.1 sender already specified\r\n");
    }

    #[test]
    fn bdat_chunks() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nRCPT TO:<v@x.example>\r\n");
        assert_eq!(d.send(b"BDAT 9\r\n..foo\r\n"), "");
        assert_eq!(d.send(b"\r\n"), "250 2.0.0 9 octets received\r\n");
        assert_eq!(d.send(b"BDAT 6 LAST\r\nbar\nb"), "");
        assert_eq!(
            d.send(b"z"),
            "250 2.0.0 <u@x.example> Ok: delivered\r\n250 2.0.0 <v@x.example> Ok: delivered\r\n"
        );
        // Raw octets: no unstuffing; bare LF converted; a final CRLF added.
        assert_eq!(d.deliveries[0].body, b"..foo\r\n\r\nbar\r\nbz\r\n");
        // The transaction is over.
        assert_eq!(d.send(b"BDAT 1 LAST\r\nx"), "503 5.5.1 need MAIL command\r\n");
        assert_eq!(d.send(b"NOOP\r\n"), "250 2.0.0 Ok\r\n");
    }

    #[test]
    fn bdat_pipelined_with_crlf_split_across_chunks() {
        let mut d = Driver::greeted();
        let r = d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nBDAT 3\r\nab\rBDAT 3\r\n\ncdBDAT 0 LAST\r\nQUIT\r\n");
        assert_eq!(
            r,
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 3 octets received\r\n250 2.0.0 3 octets received\r\n\
250 2.0.0 <u@x.example> Ok: delivered\r\n221 2.0.0 mx.example closing connection\r\n"
        );
        assert_eq!(d.deliveries[0].body, b"ab\r\ncd\r\n");
    }

    #[test]
    fn bdat_zero_last_delivers_empty_body() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nBDAT 0 LAST\r\n");
        assert_eq!(d.deliveries[0].body, b"");
    }

    #[test]
    fn bdat_without_transaction_consumes_the_chunk() {
        let mut d = Driver::greeted();
        assert_eq!(d.send(b"BDAT 12\r\nRSET\r\nQUIT\r\n"), "503 5.5.1 need MAIL command\r\n");
        assert_eq!(d.send(b"NOOP\r\n"), "250 2.0.0 Ok\r\n");
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<nobody@x.example>\r\n");
        assert_eq!(d.send(b"BDAT 4 LAST\r\nDATA"), "503 5.5.1 no valid recipients\r\n");
        assert!(!d.closed);
        assert!(d.deliveries.is_empty());
    }

    #[test]
    fn bdat_syntax_errors() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\n");
        for cmd in [
            "BDAT\r\n",
            "BDAT x\r\n",
            "BDAT -1\r\n",
            "BDAT 5 FIRST\r\n",
            "BDAT 5 LAST x\r\n",
            "BDAT 123456789012345678901\r\n",
        ] {
            assert_eq!(d.send(cmd.as_bytes()), "501 5.5.4 syntax: BDAT size [LAST]\r\n", "{cmd}");
        }
        // A huge (but valid) size is discarded as it comes, never buffered.
        assert_eq!(d.send(b"BDAT 18446744073709551615\r\n"), "");
        for _ in 0..10 {
            d.send(&[b'x'; 10_000]);
            assert!(d.s.buffered() < 10_000);
        }
        assert_eq!(d.s.counters().oversize, 1);
    }

    #[test]
    fn data_after_bdat_is_refused() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nBDAT 2\r\nab");
        assert_eq!(d.send(b"DATA\r\n"), "503 5.5.1 DATA not allowed after BDAT\r\n");
        assert_eq!(
            d.send(b"RCPT TO:<v@x.example>\r\n"),
            "503 5.5.1 RCPT not allowed during BDAT transfer\r\n"
        );
        assert_eq!(d.send(b"BDAT 1 LAST\r\nc"), "250 2.0.0 <u@x.example> Ok: delivered\r\n");
        assert_eq!(d.deliveries[0].body, b"abc\r\n");
    }

    #[test]
    fn bdat_oversize() {
        let mut d = Driver::with(Limits {
            max_message: 10,
            ..Limits::default()
        });
        d.send(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nRCPT TO:<v@x.example>\r\n");
        assert_eq!(d.send(b"BDAT 6\r\n123456"), "250 2.0.0 6 octets received\r\n");
        assert_eq!(d.send(b"BDAT 6\r\n123456"), "552 5.3.4 message too big\r\n");
        assert_eq!(d.send(b"BDAT 1\r\n1"), "552 5.3.4 message too big\r\n");
        assert_eq!(
            d.send(b"BDAT 1 LAST\r\n1"),
            "552 5.3.4 <u@x.example> message too big\r\n552 5.3.4 <v@x.example> message too big\r\n"
        );
        assert!(d.deliveries.is_empty());
        assert_eq!(d.s.counters().oversize, 1);
        // Bare LF conversion can push a chunk that fits over the limit.
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\n");
        assert_eq!(
            d.send(b"BDAT 10 LAST\r\n\n\n\n\n\n\n\n\n\n\n"),
            "552 5.3.4 <u@x.example> message too big\r\n"
        );
        assert_eq!(d.s.counters().oversize, 2);
    }

    #[test]
    fn input_closed_mid_data_delivers_nothing() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\npartial message\r\n");
        assert_eq!(d.close_input(), "");
        assert!(d.closed);
        assert!(d.deliveries.is_empty());
        assert_eq!(d.s.counters().aborted, 1);
        assert!(d.s.is_closed());
        assert!(!d.s.wants_input());
        assert_eq!(d.send(b".\r\n"), "");
        assert!(d.deliveries.is_empty());
    }

    #[test]
    fn input_closed_mid_bdat_delivers_nothing() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nBDAT 2\r\nab");
        d.close_input();
        assert!(d.closed && d.deliveries.is_empty());
        assert_eq!(d.s.counters().aborted, 1);

        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nBDAT 5 LAST\r\nab");
        d.close_input();
        assert!(d.closed && d.deliveries.is_empty());
    }

    #[test]
    fn input_closed_after_complete_commands_still_runs_them() {
        let mut s = Session::new("mx.example", Limits::default());
        s.feed(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\nx\r\n.\r\nNOOP\r\nNOO");
        s.input_closed();
        s.feed(b"P\r\n"); // ignored after the end of input
        let mut d = Driver {
            s,
            out: Vec::new(),
            deliveries: Vec::new(),
            checked: Vec::new(),
            closed: false,
        };
        d.run();
        assert_eq!(d.deliveries.len(), 1);
        assert!(String::from_utf8(d.out.clone())
            .unwrap()
            .ends_with("250 2.0.0 <u@x.example> Ok: delivered\r\n250 2.0.0 Ok\r\n"));
        assert!(d.closed);
        assert_eq!(d.s.counters().aborted, 0);
    }

    #[test]
    fn rset_clears_the_transaction() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\n");
        assert_eq!(d.send(b"RSET\r\n"), "250 2.0.0 Ok\r\n");
        assert_eq!(d.send(b"DATA\r\n"), "503 5.5.1 need MAIL command\r\n");
        assert_eq!(d.send(b"MAIL FROM:<c@d.example>\r\n"), "250 2.1.0 Ok\r\n");
        assert_eq!(d.send(b"DATA\r\n"), "503 5.5.1 no valid recipients\r\n");
        assert_eq!(d.send(b"RSET x\r\n"), "501 5.5.4 syntax: RSET\r\n");
        // LHLO resets too.
        d.send(b"RCPT TO:<u@x.example>\r\nLHLO again\r\n");
        assert_eq!(d.send(b"DATA\r\n"), "503 5.5.1 need MAIL command\r\n");
    }

    #[test]
    fn noop_vrfy_help_and_unknown() {
        let mut d = Driver::new();
        assert_eq!(d.send(b"NOOP\r\n"), "250 2.0.0 Ok\r\n");
        assert_eq!(d.send(b"noop anything\r\n"), "250 2.0.0 Ok\r\n");
        assert_eq!(
            d.send(b"VRFY root\r\n"),
            "252 2.5.2 cannot VRFY user; try RCPT to attempt delivery\r\n"
        );
        assert_eq!(d.send(b"VRFY\r\n"), "501 5.5.4 syntax: VRFY address\r\n");
        assert_eq!(
            d.send(b"HELP\r\n"),
            "214 2.0.0 commands: LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n"
        );
        assert_eq!(d.send(b"EXPN list\r\n"), "500 5.5.2 command not recognized\r\n");
        assert_eq!(d.send(b"STARTTLS\r\n"), "500 5.5.2 command not recognized\r\n");
        assert_eq!(d.send(b"\r\n"), "500 5.5.2 empty command\r\n");
        assert_eq!(d.send(b"NOOP \x00\xff\r\n"), "501 5.5.4 invalid characters in command\r\n");
        assert_eq!(d.send(b"QUIT now\r\n"), "501 5.5.4 syntax: QUIT\r\n");
        assert_eq!(d.s.counters().commands, 10);
        assert_eq!(d.s.counters().bad_commands, 6);
    }

    #[test]
    fn quit_closes_and_later_input_is_ignored() {
        let mut d = Driver::greeted();
        assert_eq!(d.send(b"QUIT\r\nNOOP\r\n"), "221 2.0.0 mx.example closing connection\r\n");
        assert!(d.closed);
        assert_eq!(d.send(b"NOOP\r\n"), "");
        assert!(!d.s.wants_input());
        assert_eq!(d.s.buffered(), 0);
    }

    #[test]
    fn too_many_errors_closes() {
        let mut d = Driver::with(Limits {
            max_errors: 3,
            ..Limits::default()
        });
        assert_eq!(
            d.send(b"FOO\r\nBAR\r\n"),
            "500 5.5.2 command not recognized\r\n500 5.5.2 command not recognized\r\n"
        );
        assert!(!d.closed);
        assert_eq!(
            d.send(b"NOOP\r\nBAZ\r\nNOOP\r\n"),
            "250 2.0.0 Ok\r\n500 5.5.2 command not recognized\r\n421 4.7.0 too many errors\r\n"
        );
        assert!(d.closed);
        assert_eq!(d.s.counters().rejected.closed, 1);
        assert_eq!(d.send(b"NOOP\r\n"), "");
    }

    #[test]
    fn default_error_limit_is_twenty() {
        let mut d = Driver::new();
        let r = d.send(&b"x\r\n".repeat(25));
        assert_eq!(r.matches("500 5.5.2").count(), 20);
        assert!(r.ends_with("421 4.7.0 too many errors\r\n"));
        assert!(d.closed);
    }

    #[test]
    fn zero_error_limit_never_closes() {
        let mut d = Driver::with(Limits {
            max_errors: 0,
            ..Limits::default()
        });
        d.send(&b"x\r\n".repeat(100));
        assert!(!d.closed);
        assert_eq!(d.s.counters().bad_commands, 100);
    }

    #[test]
    fn command_too_long() {
        let mut d = Driver::greeted();
        let mut line = b"NOOP ".to_vec();
        line.extend(std::iter::repeat_n(b'a', 5000));
        line.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(d.send(&line), "500 5.5.2 line too long\r\n250 2.0.0 Ok\r\n");
        assert_eq!(d.s.counters().rejected.line_too_long, 1);
        // Fed in pieces, the overlong line is never buffered whole.
        d.send(b"MAIL FROM:<");
        for _ in 0..20 {
            assert_eq!(d.send(&[b'a'; 1000]), "");
            assert!(d.s.buffered() <= 4096);
        }
        assert_eq!(d.send(b"@x>\r\n"), "500 5.5.2 line too long\r\n");
        // Exactly max_line octets, CRLF included, is fine.
        let mut line = b"NOOP ".to_vec();
        line.resize(4094, b'b');
        line.extend_from_slice(b"\r\n");
        assert_eq!(d.send(&line), "250 2.0.0 Ok\r\n");
        line.insert(5, b'b');
        assert_eq!(d.send(&line), "500 5.5.2 line too long\r\n");
    }

    #[test]
    fn line_limit_is_at_least_512() {
        let mut d = Driver::with(Limits {
            max_line: 0,
            ..Limits::default()
        });
        let mut line = b"NOOP ".to_vec();
        line.resize(510, b'c');
        line.extend_from_slice(b"\r\n");
        assert_eq!(d.send(&line), "250 2.0.0 Ok\r\n");
    }

    #[test]
    fn mail_parameters() {
        let mut d = Driver::greeted();
        assert_eq!(
            d.send(b"MAIL FROM:<a@b.example> AUTH=<>\r\n"),
            "555 5.5.4 unsupported parameter AUTH\r\n"
        );
        assert_eq!(
            d.send(b"MAIL FROM:<a@b.example> RET=FULL\r\n"),
            "555 5.5.4 unsupported parameter RET\r\n"
        );
        assert_eq!(
            d.send(b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n"),
            "501 5.5.4 bad BODY parameter\r\n"
        );
        assert_eq!(d.send(b"MAIL FROM:<a@b.example> SIZE=12k\r\n"), "501 5.5.4 bad SIZE parameter\r\n");
        assert_eq!(d.send(b"MAIL FROM:<a@b.example> SIZE\r\n"), "501 5.5.4 bad SIZE parameter\r\n");
        assert_eq!(
            d.send(b"MAIL FROM:<a@b.example> SIZE=1 SIZE=2\r\n"),
            "501 5.5.4 bad SIZE parameter\r\n"
        );
        assert_eq!(
            d.send(b"MAIL FROM:<a@b.example>SIZE=1\r\n"),
            "501 5.5.4 syntax: MAIL FROM:<address> [parameters]\r\n"
        );
        assert_eq!(
            d.send(b"MAIL TO:<a@b.example>\r\n"),
            "501 5.5.4 syntax: MAIL FROM:<address> [parameters]\r\n"
        );
        assert_eq!(d.send(b"MAIL FROM:\r\n"), "501 5.5.4 syntax: MAIL FROM:<address> [parameters]\r\n");
        assert_eq!(
            d.send(b"MAIL FROM:<a@b.example\r\n"),
            "501 5.5.4 syntax: MAIL FROM:<address> [parameters]\r\n"
        );
        assert_eq!(
            d.send(b"MAIL FROM:<not an address>\r\n"),
            "501 5.1.7 bad sender address: address has no domain\r\n"
        );
        assert_eq!(d.s.counters().rejected.parameters, 2);
        assert_eq!(d.send(b"mail from: <a@b.example>  size=10   body=7bit  \r\n"), "250 2.1.0 Ok\r\n");
    }

    #[test]
    fn rcpt_addresses() {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@b.example>\r\n");
        assert_eq!(d.send(b"RCPT TO:<>\r\n"), "501 5.1.3 bad recipient address: empty address\r\n");
        assert_eq!(
            d.send(b"RCPT TO:<\"john doe\"@x.example>\r\n"),
            "501 5.1.3 bad recipient address: quoted local parts are not supported\r\n"
        );
        assert_eq!(
            d.send(b"RCPT TO:<user@>\r\n"),
            "501 5.1.3 bad recipient address: invalid domain\r\n"
        );
        assert_eq!(
            d.send(b"RCPT TO:<@x.example>\r\n"),
            "501 5.1.3 bad recipient address: invalid source route\r\n"
        );
        assert_eq!(
            d.send(b"RCPT TO:<u@x.example> NOTIFY=NEVER\r\n"),
            "555 5.5.4 unsupported parameter NOTIFY\r\n"
        );
        assert_eq!(d.send(b"RCPT TO:u@x.example\r\n"), "250 2.1.5 Ok\r\n");
        assert_eq!(d.send(b"rcpt to: <U.Ser+A+B@X.Example>   \r\n"), "250 2.1.5 Ok\r\n");
        assert_eq!(d.send(b"RCPT TO:<Postmaster>\r\n"), "250 2.1.5 Ok\r\n");
        assert_eq!(d.send(b"RCPT TO:<@relay.example,@r2.example:v@x.example>\r\n"), "250 2.1.5 Ok\r\n");
        let got: Vec<_> = d
            .checked
            .iter()
            .map(|r| (r.address.as_str(), r.local.as_str(), r.detail.as_deref(), r.domain.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("u@x.example", "u", None, "x.example"),
                ("U.Ser+A+B@X.Example", "u.ser", Some("A+B"), "x.example"),
                ("Postmaster", "postmaster", None, ""),
                ("v@x.example", "v", None, "x.example"),
            ]
        );
    }

    #[test]
    fn address_parser() {
        assert_eq!(Recipient::parse("a@[192.0.2.1]").unwrap().domain, "[192.0.2.1]");
        assert_eq!(Recipient::parse("a@[]"), Err(AddressError::Domain));
        assert_eq!(Recipient::parse("a@b..c"), Err(AddressError::Domain));
        assert_eq!(Recipient::parse("a b@c"), Err(AddressError::LocalPart));
        assert_eq!(Recipient::parse("@c"), Err(AddressError::Route));
        assert_eq!(Recipient::parse(".@c").unwrap().local, ".");
        assert_eq!(Recipient::parse("a@b@c"), Err(AddressError::LocalPart));
        assert_eq!(Recipient::parse("user"), Err(AddressError::NoDomain));
        assert_eq!(Recipient::parse(""), Err(AddressError::Empty));
        assert_eq!(Recipient::parse("@a:"), Err(AddressError::Empty));
        let r = Recipient::parse("+tag@d").unwrap();
        assert_eq!((r.local.as_str(), r.detail.as_deref()), ("", Some("tag")));
    }

    #[test]
    fn too_many_recipients() {
        let mut d = Driver::with(Limits {
            max_recipients: 2,
            ..Limits::default()
        });
        d.send(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\n");
        let r = d.send(b"RCPT TO:<nobody@x.example>\r\nRCPT TO:<u@x.example>\r\nRCPT TO:<v@x.example>\r\nRCPT TO:<w@x.example>\r\n");
        assert_eq!(
            r,
            "550 5.1.1 unknown user\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 too many recipients\r\n"
        );
        assert_eq!(d.checked.len(), 3, "the fourth was never looked up");
        assert_eq!(d.s.counters().rejected.too_many_recipients, 1);
    }

    #[test]
    fn driver_replies_are_normalised() {
        let mut s = Session::new("h", Limits::default());
        s.feed(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nRCPT TO:<v@x.example>\r\nRCPT TO:<w@x.example>\r\n");
        let mut rejects = vec![
            Reply::new(250, "2.0.0", "sneaky"),
            Reply::new(550, "4.1.1", "wrong class\r\n250 injected"),
            Reply::plain(450, "no enhanced"),
        ];
        let mut out = Vec::new();
        while let Some(a) = s.poll() {
            match a {
                Action::Reply(b) => out.extend(b),
                Action::CheckRecipient(_) => s.rcpt_result(RcptOutcome::Reject(rejects.remove(0))),
                other => panic!("{other:?}"),
            }
        }
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.ends_with("451 4.3.0 recipient lookup failed\r\n550 5.0.0 wrong class  250 injected\r\n450 4.0.0 no enhanced\r\n"),
            "{out}"
        );
    }

    #[test]
    fn delivery_results_of_the_wrong_length() {
        let mut s = Session::new("h", Limits::default());
        s.feed(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nRCPT TO:<v@x.example>\r\nDATA\r\nx\r\n.\r\n");
        let mut out = Vec::new();
        while let Some(a) = s.poll() {
            match a {
                Action::Reply(b) => out.extend(b),
                Action::CheckRecipient(_) => s.rcpt_result(RcptOutcome::Accept),
                Action::Deliver(_) => s.delivery_result(vec![DeliveryOutcome::Temporary(String::new())]),
                Action::Close => panic!(),
            }
        }
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.ends_with("451 4.3.0 <u@x.example> temporary failure, try again later\r\n451 4.3.0 <v@x.example> no delivery result, try again later\r\n"),
            "{out}"
        );
        // Extra results are ignored.
        s.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nDATA\r\nx\r\n.\r\n");
        let mut out = Vec::new();
        while let Some(a) = s.poll() {
            match a {
                Action::Reply(b) => out.extend(b),
                Action::CheckRecipient(_) => s.rcpt_result(RcptOutcome::Accept),
                Action::Deliver(_) => s.delivery_result(vec![DeliveryOutcome::Permanent(String::new()), DeliveryOutcome::Ok]),
                Action::Close => panic!(),
            }
        }
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("550 5.3.0 <u@x.example> delivery failed\r\n"));
    }

    #[test]
    fn reply_formatting() {
        assert_eq!(Reply::new(250, "2.1.5", "Ok").to_bytes(), b"250 2.1.5 Ok\r\n");
        assert_eq!(Reply::plain(354, "go ahead").to_bytes(), b"354 go ahead\r\n");
        assert_eq!(Reply::new(550, "5.1.1", "b\u{e9}d\nuser").to_string(), "550 5.1.1 b?d user");
        assert!(enhanced_is_valid("5.1.1", 5));
        assert!(enhanced_is_valid("4.123.999", 4));
        assert!(!enhanced_is_valid("5.1", 5));
        assert!(!enhanced_is_valid("5.1.1.1", 5));
        assert!(!enhanced_is_valid("5.a.1", 5));
        assert!(!enhanced_is_valid("4.1.1", 5));
    }

    #[test]
    fn backpressure_while_waiting() {
        let mut s = Session::new("h", Limits::default());
        s.feed(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\n");
        while let Some(a) = s.poll() {
            assert!(!matches!(a, Action::Close));
        }
        assert!(s.awaiting_answer());
        let noops = b"NOOP\r\n".repeat(20_000);
        s.feed(&noops);
        assert!(!s.wants_input(), "a pipelining window is buffered");
        s.rcpt_result(RcptOutcome::Accept);
        let mut replies = 0;
        while let Some(a) = s.poll() {
            if let Action::Reply(b) = a {
                assert!(b.len() <= OUT_BATCH + 1024);
                replies += b.windows(2).filter(|w| w == b"\r\n").count();
            }
        }
        assert_eq!(replies, 20_001);
        assert!(s.wants_input());
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn feeding_past_the_hard_cap_closes() {
        let limits = Limits {
            max_message: 1000,
            ..Limits::default()
        };
        let mut s = Session::new("h", limits);
        s.feed(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\n");
        while s.poll().is_some() {}
        assert!(s.awaiting_answer());
        s.feed(&vec![b'x'; 1000 + 4096 + PIPELINE_WINDOW + 1]);
        assert_eq!(
            s.poll(),
            Some(Action::Reply(b"421 4.7.0 h input buffer overflow, closing connection\r\n".to_vec()))
        );
        assert_eq!(s.poll(), Some(Action::Close));
        assert_eq!(s.poll(), None);
        s.rcpt_result(RcptOutcome::Accept);
        assert_eq!(s.poll(), None);
        assert_eq!(s.buffered(), 0);
    }

    const TOKENS: &[&[u8]] = &[
        b"LHLO c\r\n",
        b"MAIL FROM:<a@b.example>\r\n",
        b"MAIL FROM:<> SIZE=500 BODY=8BITMIME\r\n",
        b"RCPT TO:<u@x.example>\r\n",
        b"RCPT TO:<nobody@x.example>\r\n",
        b"RCPT TO:<temp+x@x.example>\r\n",
        b"DATA\r\n",
        b"BDAT 7\r\n",
        b"BDAT 3 LAST\r\n",
        b"BDAT 0 LAST\r\n",
        b".\r\n",
        b"\n.\n",
        b"..\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"VRFY x\r\n",
        b"QUIT\r\n",
        b"\r\n",
        b"\r",
        b"\n",
        b".",
        b"\x00\xff\xfe",
        b"line of text\r\n",
    ];

    /// Every reply line is `ddd` + SP or `-` + printable ASCII + CRLF.
    fn assert_well_formed(replies: &[u8]) {
        assert!(replies.ends_with(b"\r\n"));
        for line in replies.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").expect("CRLF");
            assert!(
                line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit) && (line[3] == b' ' || line[3] == b'-'),
                "{line:?}"
            );
            assert!(line.iter().all(|&b| (0x20..0x7f).contains(&b)), "{line:?}");
        }
    }

    #[test]
    fn fuzz_never_panics_and_stays_bounded() {
        let mut rng = crate::testrng::XorShift(0x9E37_79B9_7F4A_7C15);
        let mut total = Counters::default();
        for iteration in 0..2000 {
            let limits = Limits {
                max_line: 512,
                max_message: 1 + rng.below(3000) as u64,
                max_recipients: 1 + rng.below(4),
                max_errors: rng.below(40) as u32,
            };
            let max_message = limits.max_message as usize;
            let mut s = Session::new("fuzz.example", limits);
            let mut closed = false;
            for round in 0..rng.below(40) {
                let mut chunk = Vec::new();
                if round == 0 && rng.below(4) != 0 {
                    chunk.extend_from_slice(b"LHLO c\r\n");
                }
                for _ in 0..1 + rng.below(8) {
                    match rng.below(20) {
                        0..=11 => chunk.extend_from_slice(TOKENS[rng.below(TOKENS.len())]),
                        12..=14 => {
                            chunk.extend_from_slice(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@x.example>\r\nRCPT TO:<v@x.example>\r\n")
                        }
                        15 | 16 => chunk.extend((0..rng.below(64)).map(|_| rng.next_u64() as u8)),
                        17 | 18 => {
                            chunk.extend((0..rng.below(100)).map(|_| b' ' + rng.below(95) as u8));
                            chunk.extend_from_slice(b"\r\n");
                        }
                        _ => chunk.extend(std::iter::repeat_n(b'a' + rng.below(26) as u8, rng.below(1500))),
                    }
                }
                // Feed in random slices.
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    let n = 1 + rng.below(rest.len());
                    s.feed(&rest[..n]);
                    rest = &rest[n..];
                    if rng.below(3) == 0 {
                        continue; // several feeds before polling
                    }
                    while let Some(action) = s.poll() {
                        assert!(!closed, "iteration {iteration}: action after Close");
                        match action {
                            Action::Reply(bytes) => assert_well_formed(&bytes),
                            Action::CheckRecipient(r) => {
                                assert!(!r.address.is_empty());
                                let outcome = if rng.below(2) == 0 {
                                    RcptOutcome::Accept
                                } else {
                                    RcptOutcome::Reject(Reply::new(rng.below(700) as u16, "5.1.1", "no"))
                                };
                                s.rcpt_result(outcome);
                            }
                            Action::Deliver(d) => {
                                assert!(!d.recipients.is_empty());
                                assert!(d.body.len() <= max_message + 2, "iteration {iteration}");
                                assert!(d.body.is_empty() || d.body.ends_with(b"\r\n"));
                                let bare_lf = d
                                    .body
                                    .iter()
                                    .enumerate()
                                    .any(|(i, &b)| b == b'\n' && (i == 0 || d.body[i - 1] != b'\r'));
                                assert!(!bare_lf, "iteration {iteration}: bare LF in body");
                                let n = match rng.below(3) {
                                    0 => d.recipients.len(),
                                    1 => rng.below(4),
                                    _ => d.recipients.len() + 1,
                                };
                                s.delivery_result(
                                    (0..n)
                                        .map(|i| {
                                            if i % 2 == 0 {
                                                DeliveryOutcome::Ok
                                            } else {
                                                DeliveryOutcome::Temporary("x".into())
                                            }
                                        })
                                        .collect(),
                                );
                            }
                            Action::Close => closed = true,
                        }
                    }
                    if !s.awaiting_answer() && !closed {
                        let pending = s.input.len() - s.start;
                        assert!(pending < 512, "iteration {iteration}: {pending} octets left unprocessed");
                        assert!(s.wants_input());
                    }
                    let body = s.txn.as_ref().map_or(0, |t| t.body.len());
                    assert!(body <= max_message, "iteration {iteration}: body {body} over {max_message}");
                    assert!(s.out.is_empty() || s.awaiting_answer() || closed);
                }
            }
            s.input_closed();
            while let Some(action) = s.poll() {
                match action {
                    Action::Reply(bytes) => assert_well_formed(&bytes),
                    Action::CheckRecipient(_) => s.rcpt_result(RcptOutcome::Accept),
                    Action::Deliver(d) => s.delivery_result(vec![DeliveryOutcome::Ok; d.recipients.len()]),
                    Action::Close => closed = true,
                }
            }
            assert!(closed, "iteration {iteration}: end of input must close");
            assert!(s.is_closed());
            assert_eq!(s.poll(), None);
            let c = s.counters();
            total.commands += c.commands;
            total.bad_commands += c.bad_commands;
            total.recipients_accepted += c.recipients_accepted;
            total.messages += c.messages;
            total.oversize += c.oversize;
            total.aborted += c.aborted;
            total.rejected.closed += c.rejected.closed;
            total.rejected.line_too_long += c.rejected.line_too_long;
        }
        eprintln!("fuzz totals: {total:?}");
        // The loop must reach the deep states, not just bounce off the parser.
        assert!(total.messages >= 300 && total.recipients_accepted >= 1000, "{total:?}");
        assert!(
            total.oversize >= 30 && total.aborted >= 15 && total.rejected.closed >= 100,
            "{total:?}"
        );
        assert!(total.rejected.line_too_long >= 10, "{total:?}");
    }
}
