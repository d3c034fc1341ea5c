//! POP3 (RFC 1939) with CAPA and response codes (RFC 2449), STLS (RFC 2595)
//! and AUTH PLAIN (RFC 5034), as a sans-io state machine.
//!
//! The driver feeds client bytes with [`Session::feed`] and carries out the
//! [`Action`]s that [`Session::poll`] returns: it writes replies, checks
//! credentials, upgrades the stream to TLS, reads message bodies and, on
//! `QUIT`, removes the messages marked deleted. The session never touches a
//! socket, a clock or the store, so every exchange is tested with bytes.
//!
//! Messages are numbered from 1 in the order the driver listed them at
//! login; the listing does not change during the session (a message removed
//! meanwhile by another client reads as gone). `UIDL` is the driver's stable
//! id — in Tandem the message GUID, the same on every node of a mirror, so a
//! client moved to the other node by a failover downloads nothing again.

use std::collections::VecDeque;

/// Limits of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest command line, CRLF included. RFC 2449 allows 255 octets; a
    /// SASL initial response may be longer, so the default is 2048.
    pub max_line: usize,
    /// Bad commands after which the session says `-ERR` and closes (0: no limit).
    pub max_errors: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_line: 2048,
            max_errors: 10,
        }
    }
}

/// One message of the maildrop as the driver listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// Size in octets as it will be sent (before dot-stuffing).
    pub size: u64,
    /// Unique id: 1 to 70 characters in 0x21..=0x7E (RFC 1939 section 7).
    pub uidl: String,
}

/// The driver's answer to [`Action::Authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The credentials are right; this is the maildrop.
    Ok(Vec<MessageInfo>),
    /// Wrong user or password: `-ERR [AUTH] ...`.
    Failed,
    /// Refused for now (too many attempts, maildrop in use, a store error),
    /// with the RFC 2449 code to give (`IN-USE`, `LOGIN-DELAY`, `SYS/TEMP`).
    Unavailable { code: &'static str, text: String },
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the client.
    Reply(Vec<u8>),
    /// Check these credentials (the password never appears in `Debug`
    /// output of the session); answer with [`Session::login_result`].
    Authenticate { user: String, password: Password },
    /// Write the replies already returned, then run the TLS handshake on the
    /// stream and call [`Session::tls_started`] (or close on failure).
    StartTls,
    /// Read message `index` (0-based, in listing order); answer with
    /// [`Session::retrieved`]. `lines` is `Some(n)` for `TOP`.
    Retrieve { index: usize, lines: Option<u32> },
    /// `QUIT` in the transaction state: remove these messages (0-based
    /// indexes) durably, then answer with [`Session::update_result`].
    Update { deleted: Vec<usize> },
    /// Close the connection (after writing any replies already returned).
    Close,
}

/// A password that redacts itself in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before login; `user` after a `USER` command.
    Authorization {
        user: Option<String>,
    },
    /// `AUTH PLAIN` sent without an initial response; the next line is it.
    SaslPlain,
    Transaction,
    Closed,
}

/// What the session waits for from the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Nothing,
    Login,
    Tls,
    Body { index: usize, lines: Option<u32> },
    Update,
}

/// Per-session counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub commands: u64,
    pub bad_commands: u64,
    pub logins: u64,
    pub login_failures: u64,
    pub retrieved: u64,
    pub deleted: u64,
}

/// One POP3 session.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    buf: Vec<u8>,
    /// Dropping the rest of an over-long line.
    skipping: bool,
    state: State,
    awaiting: Awaiting,
    out: VecDeque<Action>,
    maildrop: Vec<MessageInfo>,
    deleted: Vec<bool>,
    tls: bool,
    tls_available: bool,
    plaintext_allowed: bool,
    errors: u32,
    counters: Counters,
}

fn ok(text: &str) -> Action {
    Action::Reply(format!("+OK {text}\r\n").into_bytes())
}

fn err(text: &str) -> Action {
    Action::Reply(format!("-ERR {text}\r\n").into_bytes())
}

/// The message as a multi-line response body: dot-stuffed, CRLF-terminated,
/// ended by `.`. With `lines`, only the header, the empty line after it and
/// the first `lines` lines of the body (RFC 1939 `TOP`).
pub fn multiline(message: &[u8], lines: Option<u32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    let mut in_header = true;
    let mut body_lines = 0u32;
    for line in message.split_inclusive(|b| *b == b'\n') {
        if !in_header {
            if let Some(n) = lines {
                if body_lines >= n {
                    break;
                }
            }
            body_lines += 1;
        }
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if in_header && content.is_empty() {
            in_header = false;
        }
        if content.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Decode base64 (RFC 4648, padding required as SASL sends it).
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, chunk) in s.chunks(4).enumerate() {
        let last = i == s.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for c in &chunk[..4 - pad] {
            n = (n << 6) | val(*c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// `authzid NUL authcid NUL password` (RFC 4616); the authorisation id must
/// be empty or equal to the authentication id.
fn sasl_plain(b64: &[u8]) -> Option<(String, String)> {
    let raw = base64_decode(b64)?;
    let mut parts = raw.split(|b| *b == 0);
    let (authz, authc, pw) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || authc.is_empty() {
        return None;
    }
    if !authz.is_empty() && authz != authc {
        return None;
    }
    Some((String::from_utf8(authc.to_vec()).ok()?, String::from_utf8(pw.to_vec()).ok()?))
}

impl Session {
    /// A new session; its greeting is the first thing [`Session::poll`]
    /// returns. `tls` says the stream is already TLS (port 995);
    /// `tls_available` whether `STLS` can be offered; `plaintext_allowed`
    /// whether passwords may be sent before TLS.
    pub fn new(limits: Limits, tls: bool, tls_available: bool, plaintext_allowed: bool) -> Session {
        let mut out = VecDeque::new();
        out.push_back(ok("Tandem POP3 ready"));
        Session {
            limits,
            buf: Vec::new(),
            skipping: false,
            state: State::Authorization { user: None },
            awaiting: Awaiting::Nothing,
            out,
            maildrop: Vec::new(),
            deleted: Vec::new(),
            tls,
            tls_available,
            plaintext_allowed: plaintext_allowed || tls,
            errors: 0,
            counters: Counters::default(),
        }
    }

    /// Add client input.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.state != State::Closed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Whether the session wants more input (it buffers at most one line
    /// while the driver works on an answer).
    pub fn wants_input(&self) -> bool {
        self.state != State::Closed && (self.awaiting == Awaiting::Nothing || self.buf.len() < self.limits.max_line)
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed && self.out.is_empty()
    }

    /// Whether the user is logged in.
    pub fn authenticated(&self) -> bool {
        self.state == State::Transaction
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Octets of input buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next action, if any.
    pub fn poll(&mut self) -> Option<Action> {
        loop {
            if let Some(a) = self.out.pop_front() {
                return Some(a);
            }
            if self.awaiting != Awaiting::Nothing || self.state == State::Closed {
                return None;
            }
            let line = self.next_line()?;
            self.command(line);
        }
    }

    /// The client closed its side.
    pub fn input_closed(&mut self) {
        if self.awaiting == Awaiting::Nothing {
            self.state = State::Closed;
        }
    }

    fn next_line(&mut self) -> Option<Result<Vec<u8>, ()>> {
        let Some(p) = self.buf.iter().position(|b| *b == b'\n') else {
            if self.buf.len() > self.limits.max_line {
                self.buf.clear();
                self.skipping = true;
            }
            return None;
        };
        let mut line: Vec<u8> = self.buf.drain(..=p).collect();
        if std::mem::take(&mut self.skipping) || line.len() > self.limits.max_line {
            return Some(Err(()));
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(Ok(line))
    }

    fn bad(&mut self, text: &str) {
        self.counters.bad_commands += 1;
        self.errors += 1;
        self.out.push_back(err(text));
        if self.limits.max_errors > 0 && self.errors >= self.limits.max_errors {
            self.out.push_back(err("Too many bad commands, closing"));
            self.close();
        }
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.out.push_back(Action::Close);
    }

    fn capabilities(&self) -> Vec<u8> {
        let mut c = String::from("+OK Capability list follows\r\n");
        c.push_str("TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
        if matches!(self.state, State::Authorization { .. }) {
            if self.plaintext_allowed {
                c.push_str("USER\r\nSASL PLAIN\r\n");
            }
            if self.tls_available && !self.tls {
                c.push_str("STLS\r\n");
            }
        }
        c.push_str("IMPLEMENTATION Tandem\r\n.\r\n");
        c.into_bytes()
    }

    /// A message number argument: 1-based, listed, not deleted.
    fn message(&mut self, arg: Option<&str>) -> Option<usize> {
        let Some(n) = arg.and_then(|a| a.parse::<usize>().ok()) else {
            self.bad("Message number required");
            return None;
        };
        if n == 0 || n > self.maildrop.len() {
            self.out.push_back(err(&format!("No message {n}")));
            return None;
        }
        if self.deleted[n - 1] {
            self.out.push_back(err(&format!("Message {n} already deleted")));
            return None;
        }
        Some(n - 1)
    }

    fn command(&mut self, line: Result<Vec<u8>, ()>) {
        let Ok(line) = line else {
            self.bad("Line too long");
            return;
        };
        self.counters.commands += 1;
        if self.state == State::SaslPlain {
            self.state = State::Authorization { user: None };
            if line == b"*" {
                self.out.push_back(err("Authentication cancelled"));
                return;
            }
            self.plain_response(&line);
            return;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let mut words = text.split(' ');
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let args: Vec<&str> = words.filter(|w| !w.is_empty()).collect();
        let arg = |i: usize| args.get(i).copied();
        match (&self.state, verb.as_str()) {
            (_, "QUIT") => {
                if self.state == State::Transaction {
                    let deleted: Vec<usize> = (0..self.deleted.len()).filter(|i| self.deleted[*i]).collect();
                    if !deleted.is_empty() {
                        self.awaiting = Awaiting::Update;
                        self.out.push_back(Action::Update { deleted });
                        return;
                    }
                }
                self.out.push_back(ok("Tandem POP3 signing off"));
                self.close();
            }
            (_, "CAPA") => {
                let c = self.capabilities();
                self.out.push_back(Action::Reply(c));
            }
            (_, "NOOP") if self.state == State::Transaction => self.out.push_back(ok("")),
            (State::Authorization { .. }, "STLS") => {
                if self.tls || !self.tls_available {
                    self.bad("STLS not available");
                } else if !self.buf.is_empty() {
                    // Bytes pipelined after STLS would cross the TLS boundary.
                    self.bad("Nothing may follow STLS before the handshake");
                    self.close();
                } else {
                    self.out.push_back(ok("Begin TLS negotiation"));
                    self.out.push_back(Action::StartTls);
                    self.awaiting = Awaiting::Tls;
                }
            }
            (State::Authorization { .. }, "USER") => {
                if !self.plaintext_allowed {
                    self.out
                        .push_back(err("[AUTH] Plaintext authentication is disabled; use STLS first"));
                    return;
                }
                match arg(0) {
                    Some(u) if args.len() == 1 => {
                        let u = u.to_string();
                        self.state = State::Authorization { user: Some(u) };
                        self.out.push_back(ok("Send the password"));
                    }
                    _ => self.bad("USER needs one argument"),
                }
            }
            (State::Authorization { user }, "PASS") => {
                let Some(user) = user.clone() else {
                    self.bad("USER first");
                    return;
                };
                // The password is the rest of the line: it may hold spaces.
                let pw = text.get(5..).unwrap_or("").to_string();
                self.state = State::Authorization { user: None };
                self.authenticate(user, pw);
            }
            (State::Authorization { .. }, "AUTH") => match arg(0).map(|m| m.to_ascii_uppercase()) {
                None => {
                    // RFC 5034: a bare AUTH lists the mechanisms.
                    let list = if self.plaintext_allowed { "PLAIN\r\n" } else { "" };
                    self.out.push_back(Action::Reply(format!("+OK\r\n{list}.\r\n").into_bytes()));
                }
                Some(m) if m == "PLAIN" => {
                    if !self.plaintext_allowed {
                        self.out
                            .push_back(err("[AUTH] Plaintext authentication is disabled; use STLS first"));
                    } else if let Some(ir) = arg(1) {
                        if ir == "=" {
                            self.plain_response(b"");
                        } else {
                            self.plain_response(ir.as_bytes());
                        }
                    } else {
                        self.state = State::SaslPlain;
                        self.out.push_back(Action::Reply(b"+ \r\n".to_vec()));
                    }
                }
                Some(_) => self.out.push_back(err("Unsupported authentication mechanism")),
            },
            (State::Authorization { .. }, "APOP") => self.out.push_back(err("APOP is not supported")),
            (State::Transaction, "STAT") => {
                let (n, size) = self.live().fold((0u64, 0u64), |(n, s), (_, m)| (n + 1, s + m.size));
                self.out.push_back(ok(&format!("{n} {size}")));
            }
            (State::Transaction, "LIST") | (State::Transaction, "UIDL") => {
                let uidl = verb == "UIDL";
                let show = |i: usize, m: &MessageInfo| {
                    if uidl {
                        format!("{} {}", i + 1, m.uidl)
                    } else {
                        format!("{} {}", i + 1, m.size)
                    }
                };
                if args.is_empty() {
                    let mut r = String::from("+OK\r\n");
                    for (i, m) in self.live() {
                        r.push_str(&show(i, m));
                        r.push_str("\r\n");
                    }
                    r.push_str(".\r\n");
                    self.out.push_back(Action::Reply(r.into_bytes()));
                } else if let Some(i) = self.message(arg(0)) {
                    let line = show(i, &self.maildrop[i]);
                    self.out.push_back(ok(&line));
                }
            }
            (State::Transaction, "RETR") => {
                if let Some(index) = self.message(arg(0)) {
                    self.awaiting = Awaiting::Body { index, lines: None };
                    self.out.push_back(Action::Retrieve { index, lines: None });
                }
            }
            (State::Transaction, "TOP") => {
                let Some(n) = arg(1).and_then(|a| a.parse::<u32>().ok()) else {
                    self.bad("TOP needs a message number and a line count");
                    return;
                };
                if let Some(index) = self.message(arg(0)) {
                    self.awaiting = Awaiting::Body { index, lines: Some(n) };
                    self.out.push_back(Action::Retrieve { index, lines: Some(n) });
                }
            }
            (State::Transaction, "DELE") => {
                if let Some(i) = self.message(arg(0)) {
                    self.deleted[i] = true;
                    self.out.push_back(ok(&format!("Message {} deleted", i + 1)));
                }
            }
            (State::Transaction, "RSET") => {
                self.deleted.iter_mut().for_each(|d| *d = false);
                let n = self.maildrop.len();
                self.out.push_back(ok(&format!("Maildrop has {n} messages")));
            }
            (State::Transaction, "USER" | "PASS" | "AUTH" | "STLS" | "APOP") => self.bad("Already authenticated"),
            (State::Authorization { .. }, "STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "DELE" | "RSET" | "NOOP") => {
                self.bad("Not authenticated")
            }
            _ => self.bad("Unknown command"),
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &MessageInfo)> {
        self.maildrop.iter().enumerate().filter(|(i, _)| !self.deleted[*i])
    }

    fn plain_response(&mut self, b64: &[u8]) {
        match sasl_plain(b64) {
            Some((user, pw)) => self.authenticate(user, pw),
            None => self.bad("Malformed PLAIN response"),
        }
    }

    fn authenticate(&mut self, user: String, password: String) {
        self.awaiting = Awaiting::Login;
        self.out.push_back(Action::Authenticate {
            user,
            password: Password(password),
        });
    }

    /// The answer to [`Action::Authenticate`].
    pub fn login_result(&mut self, outcome: LoginOutcome) {
        if self.awaiting != Awaiting::Login {
            return;
        }
        self.awaiting = Awaiting::Nothing;
        match outcome {
            LoginOutcome::Ok(maildrop) => {
                self.counters.logins += 1;
                let (n, size) = (maildrop.len(), maildrop.iter().map(|m| m.size).sum::<u64>());
                self.deleted = vec![false; n];
                self.maildrop = maildrop;
                self.state = State::Transaction;
                self.out.push_back(ok(&format!("Logged in, {n} messages ({size} octets)")));
            }
            LoginOutcome::Failed => {
                self.counters.login_failures += 1;
                self.errors += 1;
                self.out.push_back(err("[AUTH] Authentication failed"));
                if self.limits.max_errors > 0 && self.errors >= self.limits.max_errors {
                    self.close();
                }
            }
            LoginOutcome::Unavailable { code, text } => {
                self.out.push_back(err(&format!("[{code}] {text}")));
            }
        }
    }

    /// The TLS handshake after `STLS` succeeded: everything said before is
    /// forgotten (RFC 2595 section 4).
    pub fn tls_started(&mut self) {
        if self.awaiting != Awaiting::Tls {
            return;
        }
        self.awaiting = Awaiting::Nothing;
        self.tls = true;
        self.plaintext_allowed = true;
        self.buf.clear();
        self.state = State::Authorization { user: None };
    }

    /// The answer to [`Action::Retrieve`]: the message, or `None` when it
    /// is gone (removed by another client since the listing).
    pub fn retrieved(&mut self, message: Option<&[u8]>) {
        let Awaiting::Body { index, lines } = self.awaiting else {
            return;
        };
        self.awaiting = Awaiting::Nothing;
        match message {
            Some(m) => {
                self.counters.retrieved += 1;
                let mut r = match lines {
                    None => format!("+OK {} octets\r\n", self.maildrop[index].size).into_bytes(),
                    Some(_) => b"+OK\r\n".to_vec(),
                };
                r.extend_from_slice(&multiline(m, lines));
                self.out.push_back(Action::Reply(r));
            }
            None => self
                .out
                .push_back(err(&format!("Message {} was removed by another client", index + 1))),
        }
    }

    /// The answer to [`Action::Update`].
    pub fn update_result(&mut self, removed: Result<usize, String>) {
        if self.awaiting != Awaiting::Update {
            return;
        }
        self.awaiting = Awaiting::Nothing;
        match removed {
            Ok(n) => {
                self.counters.deleted += n as u64;
                self.out.push_back(ok(&format!("Tandem POP3 signing off ({n} messages deleted)")));
            }
            Err(e) => self
                .out
                .push_back(err(&format!("[SYS/TEMP] Some deleted messages not removed: {e}"))),
        }
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input`, answering the driver's requests from the given
    /// maildrop bodies; returns everything written and whether it closed.
    fn run(s: &mut Session, input: &[u8], bodies: &[&[u8]], password: &str) -> (String, Vec<Vec<usize>>) {
        s.feed(input);
        let mut out = Vec::new();
        let mut updates = Vec::new();
        while let Some(a) = s.poll() {
            match a {
                Action::Reply(b) => out.extend_from_slice(&b),
                Action::Authenticate { user, password: p } => s.login_result(if user == "alice" && p.0 == password {
                    LoginOutcome::Ok(
                        bodies
                            .iter()
                            .enumerate()
                            .map(|(i, b)| MessageInfo {
                                size: b.len() as u64,
                                uidl: format!("guid{i}"),
                            })
                            .collect(),
                    )
                } else {
                    LoginOutcome::Failed
                }),
                Action::StartTls => s.tls_started(),
                Action::Retrieve { index, .. } => s.retrieved(bodies.get(index).copied()),
                Action::Update { deleted } => {
                    let n = deleted.len();
                    updates.push(deleted);
                    s.update_result(Ok(n));
                }
                Action::Close => out.extend_from_slice(b"<close>"),
            }
        }
        (String::from_utf8(out).unwrap(), updates)
    }

    const M1: &[u8] = b"Subject: one\r\n\r\nline 1\r\n.dot line\r\nline 3\r\n";
    const M2: &[u8] = b"Subject: two\r\nX: y\r\n\r\nbody\r\n";

    #[test]
    fn a_whole_session_with_user_pass() {
        let mut s = Session::new(Limits::default(), false, true, true);
        let (out, updates) = run(
            &mut s,
            b"CAPA\r\nUSER alice\r\nPASS pass word\r\nSTAT\r\nLIST\r\nUIDL 2\r\nRETR 1\r\nTOP 2 0\r\nDELE 1\r\nRETR 1\r\nSTAT\r\nQUIT\r\n",
            &[M1, M2],
            "pass word",
        );
        let want = [
            "+OK Tandem POP3 ready\r\n",
            "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nUSER\r\nSASL PLAIN\r\nSTLS\r\nIMPLEMENTATION Tandem\r\n.\r\n",
            "+OK Send the password\r\n",
            "+OK Logged in, 2 messages (71 octets)\r\n",
            "+OK 2 71\r\n",
            "+OK\r\n1 43\r\n2 28\r\n.\r\n",
            "+OK 2 guid1\r\n",
            "+OK 43 octets\r\nSubject: one\r\n\r\nline 1\r\n..dot line\r\nline 3\r\n.\r\n",
            "+OK\r\nSubject: two\r\nX: y\r\n\r\n.\r\n",
            "+OK Message 1 deleted\r\n",
            "-ERR Message 1 already deleted\r\n",
            "+OK 1 28\r\n",
            "+OK Tandem POP3 signing off (1 messages deleted)\r\n<close>",
        ]
        .concat();
        assert_eq!(out, want);
        assert_eq!(updates, vec![vec![0]]);
        assert!(s.is_closed());
    }

    #[test]
    fn rset_undeletes_and_quit_without_deletions_removes_nothing() {
        let mut s = Session::new(Limits::default(), true, true, false);
        let (out, updates) = run(&mut s, b"USER alice\r\nPASS pw\r\nDELE 2\r\nRSET\r\nQUIT\r\n", &[M1, M2], "pw");
        assert!(
            out.ends_with("+OK Maildrop has 2 messages\r\n+OK Tandem POP3 signing off\r\n<close>"),
            "{out}"
        );
        assert!(updates.is_empty());
    }

    #[test]
    fn auth_plain_with_and_without_initial_response() {
        // "\0alice\0pw"
        let mut s = Session::new(Limits::default(), true, false, false);
        let (out, _) = run(&mut s, b"AUTH PLAIN AGFsaWNlAHB3\r\nSTAT\r\n", &[M1], "pw");
        assert!(out.contains("+OK Logged in, 1 messages"), "{out}");
        let mut s = Session::new(Limits::default(), true, false, false);
        let (out, _) = run(&mut s, b"AUTH PLAIN\r\nAGFsaWNlAHB3\r\nSTAT\r\n", &[M1], "pw");
        assert!(out.contains("+ \r\n+OK Logged in"), "{out}");
        let mut s = Session::new(Limits::default(), true, false, false);
        let (out, _) = run(
            &mut s,
            b"AUTH PLAIN\r\n*\r\nAUTH PLAIN !!!!\r\nAUTH PLAIN AGFsaWNlAHd4\r\n",
            &[M1],
            "pw",
        );
        assert!(out.contains("-ERR Authentication cancelled"), "{out}");
        assert!(out.contains("-ERR Malformed PLAIN response"), "{out}");
        assert!(out.contains("-ERR [AUTH] Authentication failed"), "{out}");
        // An authorisation id that differs from the user is refused.
        assert_eq!(sasl_plain(b"Ym9iAGFsaWNlAHB3"), None);
        assert_eq!(sasl_plain(b"YWxpY2UAYWxpY2UAcHc="), Some(("alice".into(), "pw".into())));
    }

    #[test]
    fn plaintext_needs_tls_when_so_configured_and_stls_resets_the_session() {
        let mut s = Session::new(Limits::default(), false, true, false);
        let (out, _) = run(&mut s, b"CAPA\r\nUSER alice\r\nAUTH PLAIN AGFsaWNlAHB3\r\n", &[M1], "pw");
        assert!(!out.contains("\r\nUSER\r\n") && out.contains("STLS\r\n"), "{out}");
        assert_eq!(out.matches("-ERR [AUTH] Plaintext authentication is disabled").count(), 2, "{out}");
        let (out, _) = run(&mut s, b"STLS\r\n", &[M1], "pw");
        assert_eq!(out, "+OK Begin TLS negotiation\r\n");
        let (out, _) = run(&mut s, b"CAPA\r\nUSER alice\r\nPASS pw\r\n", &[M1], "pw");
        assert!(out.contains("USER\r\n") && !out.contains("STLS"), "{out}");
        assert!(out.ends_with("+OK Logged in, 1 messages (43 octets)\r\n"), "{out}");
    }

    #[test]
    fn stls_with_pipelined_bytes_is_refused() {
        let mut s = Session::new(Limits::default(), false, true, true);
        let (out, _) = run(&mut s, b"STLS\r\nUSER alice\r\n", &[], "pw");
        assert!(
            out.ends_with("-ERR Nothing may follow STLS before the handshake\r\n<close>"),
            "{out}"
        );
    }

    #[test]
    fn bad_input_is_bounded_and_closes_after_too_many_errors() {
        let mut s = Session::new(
            Limits {
                max_line: 64,
                max_errors: 3,
            },
            false,
            false,
            true,
        );
        let (out, _) = run(&mut s, &[b'x'; 500], &[], "pw");
        assert!(s.buffered() <= 64, "buffered {}", s.buffered());
        assert_eq!(out, "+OK Tandem POP3 ready\r\n");
        let (out, _) = run(&mut s, b"\r\nSTAT\r\nFOO\r\nNOOP\r\n", &[], "pw");
        assert_eq!(
            out,
            "-ERR Line too long\r\n-ERR Not authenticated\r\n-ERR Unknown command\r\n-ERR Too many bad commands, closing\r\n<close>"
        );
        assert!(s.is_closed());
    }

    #[test]
    fn message_numbers_are_checked() {
        let mut s = Session::new(Limits::default(), true, false, true);
        let (out, _) = run(
            &mut s,
            b"USER alice\r\nPASS pw\r\nRETR 0\r\nRETR 3\r\nRETR x\r\nTOP 1\r\nLIST 9\r\n",
            &[M1, M2],
            "pw",
        );
        for want in [
            "-ERR No message 0\r\n",
            "-ERR No message 3\r\n",
            "-ERR Message number required\r\n",
            "-ERR TOP needs a message number and a line count\r\n",
            "-ERR No message 9\r\n",
        ] {
            assert!(out.contains(want), "{want} missing in {out}");
        }
    }

    #[test]
    fn multiline_stuffs_dots_fixes_line_ends_and_cuts_top() {
        assert_eq!(multiline(b"a\n.b\r\n..c", None), b"a\r\n..b\r\n...c\r\n.\r\n");
        let m = b"H: 1\r\n\r\nl1\r\nl2\r\nl3\r\n";
        assert_eq!(multiline(m, Some(2)), b"H: 1\r\n\r\nl1\r\nl2\r\n.\r\n");
        assert_eq!(multiline(m, Some(0)), b"H: 1\r\n\r\n.\r\n");
        assert_eq!(multiline(b"", None), b".\r\n");
    }

    #[test]
    fn random_input_never_panics_and_stays_bounded() {
        let mut rng = crate::testrng::XorShift(0x005e_ed0f_90f3);
        let words: [&[u8]; 16] = [
            b"USER alice\r\n",
            b"PASS pw\r\n",
            b"STAT\r\n",
            b"LIST\r\n",
            b"RETR 1\r\n",
            b"TOP 2 1\r\n",
            b"DELE 1\r\n",
            b"RSET\r\n",
            b"UIDL\r\n",
            b"AUTH PLAIN\r\n",
            b"STLS\r\n",
            b"CAPA\r\n",
            b"\xff\xfe\r\n",
            b"QUIT\r\n",
            b"NOOP\r\n",
            b"\n",
        ];
        for _ in 0..2000 {
            let mut s = Session::new(Limits::default(), rng.below(2) == 0, true, true);
            let mut input = Vec::new();
            for _ in 0..rng.below(20) {
                input.extend_from_slice(words[rng.below(16)]);
                if rng.below(7) == 0 {
                    input.push(rng.below(256) as u8);
                }
            }
            let _ = run(&mut s, &input, &[M1, M2], "pw");
            assert!(s.buffered() <= Limits::default().max_line + 1);
        }
    }
}
