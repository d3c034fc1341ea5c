//! Grammar of the IMAP extensions that imap-codec 1.0 does not parse:
//! extended LIST (RFC 5258, with RFC 6154 SPECIAL-USE and RFC 5819
//! LIST-STATUS), MULTIAPPEND (RFC 3502) with the UTF8 data extension of
//! RFC 6855, SEARCH RETURN (RFC 4731 ESEARCH), SORT and THREAD (RFC 5256),
//! ENABLE (RFC 5161), the FETCH items of BINARY (RFC 3516), and the
//! rewriting of UTF-8 quoted strings (RFC 6855) into literals so that the
//! rest of a command can still be parsed by imap-codec.
//!
//! Input is one whole command as the framer hands it out (lines and
//! literals inline, ending with CRLF). Everything here is bounded by the
//! length of that input and by [`MAX_ITEMS`], and returns a
//! [`SyntaxError`] naming the octet where parsing failed; nothing panics.

use super::sort::{SortBy, SortKey, ThreadAlg};
use std::fmt;

/// Most elements of any parenthesised list (options, flags, messages).
pub const MAX_ITEMS: usize = 1024;

/// Most patterns of one LIST: each is matched against every name.
pub const MAX_PATTERNS: usize = 64;

/// Where and why a command failed to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Octet offset into the command.
    pub at: usize,
    pub what: &'static str,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at octet {}", self.what, self.at)
    }
}

impl std::error::Error for SyntaxError {}

type R<T> = Result<T, SyntaxError>;

/// One token of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token<'a> {
    /// A run of atom characters (wildcards, `\`, `[`, `]` included).
    Atom(&'a [u8]),
    /// A quoted string, unescaped.
    Quoted(Vec<u8>),
    /// A literal's data.
    Literal(&'a [u8]),
    /// A literal8 (`~{n}`) 's data.
    Literal8(&'a [u8]),
    Open,
    Close,
}

impl Token<'_> {
    /// The content of a string or atom (an astring), if it is one.
    pub fn astring(&self) -> Option<Vec<u8>> {
        match self {
            Token::Atom(a) => Some(a.to_vec()),
            Token::Quoted(q) => Some(q.clone()),
            Token::Literal(l) => Some(l.to_vec()),
            Token::Literal8(_) | Token::Open | Token::Close => None,
        }
    }

    pub(super) fn is_atom(&self, word: &str) -> bool {
        matches!(self, Token::Atom(a) if a.eq_ignore_ascii_case(word.as_bytes()))
    }
}

/// A tokenizer over one command.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
}

fn is_atom_byte(c: u8) -> bool {
    c > 0x20 && c != 0x7f && !b"()\"{".contains(&c)
}

impl<'a> Lexer<'a> {
    pub fn new(b: &'a [u8]) -> Lexer<'a> {
        Lexer { b, pos: 0 }
    }

    /// Offset of the next byte.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Continue from octet `pos` (one this lexer returned from [`Lexer::pos`]).
    pub(super) fn seek(&mut self, pos: usize) {
        self.pos = pos.min(self.b.len());
    }

    pub(super) fn err<T>(&self, what: &'static str) -> R<T> {
        Err(SyntaxError { at: self.pos, what })
    }

    pub(super) fn skip_space(&mut self) {
        while self.b.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
    }

    /// Only the line ending is left.
    pub fn at_end(&self) -> bool {
        let mut p = self.pos;
        while self.b.get(p) == Some(&b' ') {
            p += 1;
        }
        matches!(&self.b[p.min(self.b.len())..], b"" | b"\r\n" | b"\n")
    }

    /// The next token (`None` at the end of the command).
    pub fn next_token(&mut self) -> R<Option<Token<'a>>> {
        self.skip_space();
        let Some(&c) = self.b.get(self.pos) else { return Ok(None) };
        match c {
            b'\r' | b'\n' => Ok(None),
            b'(' => {
                self.pos += 1;
                Ok(Some(Token::Open))
            }
            b')' => {
                self.pos += 1;
                Ok(Some(Token::Close))
            }
            b'"' => self.quoted().map(|q| Some(Token::Quoted(q))),
            b'{' => self.literal().map(|l| Some(Token::Literal(l))),
            b'~' if self.b.get(self.pos + 1) == Some(&b'{') => {
                self.pos += 1;
                self.literal().map(|l| Some(Token::Literal8(l)))
            }
            _ => {
                let start = self.pos;
                while self.b.get(self.pos).is_some_and(|c| is_atom_byte(*c)) {
                    self.pos += 1;
                }
                if self.pos == start {
                    return self.err("unexpected character");
                }
                Ok(Some(Token::Atom(&self.b[start..self.pos])))
            }
        }
    }

    /// Look at the next token without taking it.
    pub fn peek(&self) -> R<Option<Token<'a>>> {
        self.clone().next_token()
    }

    fn quoted(&mut self) -> R<Vec<u8>> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.b.get(self.pos) {
                None | Some(b'\r') | Some(b'\n') | Some(0) => return self.err("unterminated quoted string"),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => match self.b.get(self.pos + 1) {
                    Some(c @ (b'\\' | b'"')) => {
                        out.push(*c);
                        self.pos += 2;
                    }
                    _ => return self.err("bad escape in quoted string"),
                },
                Some(c) => {
                    out.push(*c);
                    self.pos += 1;
                }
            }
        }
    }

    /// `{n}` or `{n+}`, CRLF, then n octets.
    fn literal(&mut self) -> R<&'a [u8]> {
        self.pos += 1;
        let start = self.pos;
        while self.b.get(self.pos).is_some_and(u8::is_ascii_digit) && self.pos - start < 20 {
            self.pos += 1;
        }
        let digits = &self.b[start..self.pos];
        let Some(n) = std::str::from_utf8(digits).ok().and_then(|d| d.parse::<usize>().ok()) else {
            return self.err("bad literal length");
        };
        if self.b.get(self.pos) == Some(&b'+') {
            self.pos += 1;
        }
        let rest = &self.b[self.pos.min(self.b.len())..];
        let skip = if rest.starts_with(b"}\r\n") {
            3
        } else if rest.starts_with(b"}\n") {
            2
        } else {
            return self.err("bad literal marker");
        };
        self.pos += skip;
        if self.b.len() - self.pos < n {
            return self.err("literal shorter than announced");
        }
        let data = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(data)
    }

    pub(super) fn expect(&mut self, want: &Token<'_>, what: &'static str) -> R<()> {
        self.skip_space();
        let at = self.pos;
        match self.next_token()? {
            Some(t) if &t == want => Ok(()),
            _ => Err(SyntaxError { at, what }),
        }
    }

    fn astring(&mut self, what: &'static str) -> R<Vec<u8>> {
        self.skip_space();
        let at = self.pos;
        match self.next_token()?.and_then(|t| t.astring()) {
            Some(s) => Ok(s),
            None => Err(SyntaxError { at, what }),
        }
    }

    /// `(` atom* `)`: the atoms, upper-cased (options, capability names).
    fn atom_list(&mut self) -> R<Vec<(usize, String)>> {
        self.expect(&Token::Open, "expected (")?;
        let mut out = Vec::new();
        loop {
            self.skip_space();
            let at = self.pos;
            match self.next_token()? {
                Some(Token::Close) => return Ok(out),
                Some(Token::Atom(a)) if out.len() < MAX_ITEMS => out.push((at, String::from_utf8_lossy(a).to_ascii_uppercase())),
                _ => {
                    return Err(SyntaxError {
                        at,
                        what: "expected an option or )",
                    })
                }
            }
        }
    }
}

/// The tag and upper-cased command word(s) of a command: (`tag`, `UID`
/// prefix present, command name, lexer after the name).
pub fn head(cmd: &[u8]) -> R<(String, bool, String, Lexer<'_>)> {
    let mut lx = Lexer::new(cmd);
    let tag = match lx.next_token()? {
        Some(Token::Atom(t)) => String::from_utf8_lossy(t).into_owned(),
        _ => return lx.err("expected a tag"),
    };
    // Command names are ASCII: the name's length is its length on the wire.
    let mut name = match lx.next_token()? {
        Some(Token::Atom(n)) if n.is_ascii() => String::from_utf8_lossy(n).to_ascii_uppercase(),
        _ => return lx.err("expected a command name"),
    };
    let uid = name == "UID";
    if uid {
        name = match lx.next_token()? {
            Some(Token::Atom(n)) if n.is_ascii() => String::from_utf8_lossy(n).to_ascii_uppercase(),
            _ => return lx.err("expected a command after UID"),
        };
    }
    Ok((tag, uid, name, lx))
}

/// Rewrite every quoted string that holds octets above 0x7f as a literal
/// (`{n}` CRLF data), leaving everything else as it is: after `ENABLE
/// UTF8=ACCEPT` quoted strings may carry UTF-8 (RFC 6855 section 3), which
/// a parser of RFC 3501's 7-bit quoted strings would refuse.
/// Returns `None` when there was nothing to rewrite.
pub fn utf8_quoted_as_literals(cmd: &[u8]) -> R<Option<Vec<u8>>> {
    if cmd.is_ascii() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(cmd.len() + 32);
    let mut lx = Lexer::new(cmd);
    let mut copied = 0;
    let mut changed = false;
    loop {
        lx.skip_space();
        let start = lx.pos;
        match lx.next_token() {
            Ok(Some(Token::Quoted(q))) if !q.is_ascii() => {
                if std::str::from_utf8(&q).is_err() {
                    return Err(SyntaxError {
                        at: start,
                        what: "quoted string is not UTF-8",
                    });
                }
                out.extend_from_slice(&cmd[copied..start]);
                out.extend_from_slice(format!("{{{}}}\r\n", q.len()).as_bytes());
                out.extend_from_slice(&q);
                copied = lx.pos;
                changed = true;
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            // Atom characters this lexer does not know (`[` runs of
            // FETCH sections, `\` flags...) are copied as they are.
            Err(_) => {
                lx.pos = start + 1;
            }
        }
    }
    out.extend_from_slice(&cmd[copied..]);
    Ok(changed.then_some(out))
}

/// `ENABLE cap...` (RFC 5161): the capability names, upper-cased.
pub fn enable(lx: &mut Lexer<'_>) -> R<Vec<String>> {
    let mut caps = Vec::new();
    while let Some(t) = lx.next_token()? {
        match t {
            Token::Atom(a) if caps.len() < MAX_ITEMS => caps.push(String::from_utf8_lossy(a).to_ascii_uppercase()),
            _ => return lx.err("expected a capability name"),
        }
    }
    if caps.is_empty() {
        return lx.err("ENABLE needs a capability");
    }
    Ok(caps)
}

/// A QUOTA command (RFC 9208).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaCommand {
    /// `GETQUOTA root`.
    Get(Vec<u8>),
    /// `GETQUOTAROOT mailbox`.
    Root(Vec<u8>),
    /// `SETQUOTA root (resource limit ...)`: parsed to be refused.
    Set(Vec<u8>),
}

/// The arguments of GETQUOTA, GETQUOTAROOT or SETQUOTA (`name`, upper-cased).
pub fn quota(name: &str, lx: &mut Lexer<'_>) -> R<QuotaCommand> {
    let what = if name == "GETQUOTAROOT" {
        "expected a mailbox"
    } else {
        "expected a quota root"
    };
    let arg = lx.astring(what)?;
    let cmd = match name {
        "GETQUOTA" => QuotaCommand::Get(arg),
        "GETQUOTAROOT" => QuotaCommand::Root(arg),
        "SETQUOTA" => {
            lx.expect(&Token::Open, "expected (")?;
            let mut n = 0;
            loop {
                lx.skip_space();
                let at = lx.pos;
                match lx.next_token()? {
                    Some(Token::Close) => break,
                    Some(Token::Atom(a)) if n < 2 * MAX_ITEMS => {
                        // Resource names and limits alternate.
                        if n % 2 == 1 && !a.iter().all(u8::is_ascii_digit) {
                            return Err(SyntaxError {
                                at,
                                what: "expected a limit",
                            });
                        }
                        n += 1;
                    }
                    _ => {
                        return Err(SyntaxError {
                            at,
                            what: "expected a resource, a limit or )",
                        })
                    }
                }
            }
            if n % 2 == 1 {
                return lx.err("a resource without a limit");
            }
            QuotaCommand::Set(arg)
        }
        _ => return lx.err("not a quota command"),
    };
    if !lx.at_end() {
        return lx.err("unexpected text after the arguments");
    }
    Ok(cmd)
}

/// A STATUS data item (RFC 3501, RFC 9051 for DELETED, RFC 8438 for SIZE,
/// RFC 7162 for HIGHESTMODSEQ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
    Deleted,
    DeletedStorage,
    /// RFC 7162 section 3.1.6.
    HighestModSeq,
    /// RFC 8438: the total size of the mailbox in octets.
    Size,
}

impl StatusItem {
    fn parse(word: &str) -> Option<StatusItem> {
        Some(match word {
            "MESSAGES" => StatusItem::Messages,
            "RECENT" => StatusItem::Recent,
            "UIDNEXT" => StatusItem::UidNext,
            "UIDVALIDITY" => StatusItem::UidValidity,
            "UNSEEN" => StatusItem::Unseen,
            "DELETED" => StatusItem::Deleted,
            "DELETED-STORAGE" => StatusItem::DeletedStorage,
            "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
            "SIZE" => StatusItem::Size,
            _ => return None,
        })
    }
}

/// A parenthesised, non-empty list of STATUS items (STATUS, and LIST's
/// `RETURN (STATUS (...))`).
fn status_items(lx: &mut Lexer<'_>) -> R<Vec<StatusItem>> {
    let mut items = Vec::new();
    for (at, w) in lx.atom_list()? {
        match StatusItem::parse(&w) {
            Some(i) => items.push(i),
            None => {
                return Err(SyntaxError {
                    at,
                    what: "unknown STATUS item",
                })
            }
        }
    }
    if items.is_empty() {
        return lx.err("STATUS needs an item");
    }
    Ok(items)
}

/// `STATUS mailbox (items)` after the command name: the mailbox name as
/// sent, and the items (for the items imap-codec 1.0 does not know, SIZE
/// of RFC 8438).
pub fn status(lx: &mut Lexer<'_>) -> R<(Vec<u8>, Vec<StatusItem>)> {
    let mailbox = lx.astring("expected a mailbox name")?;
    let items = status_items(lx)?;
    if !lx.at_end() {
        return lx.err("unexpected text after the STATUS items");
    }
    Ok((mailbox, items))
}

/// Selection options of an extended LIST (RFC 5258 section 3.1, RFC 6154).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListSelect {
    pub subscribed: bool,
    pub remote: bool,
    pub recursive_match: bool,
    pub special_use: bool,
}

/// Return options of an extended LIST (RFC 5258 section 3.2, RFC 6154,
/// RFC 5819).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListReturn {
    pub subscribed: bool,
    pub children: bool,
    pub special_use: bool,
    pub status: Option<Vec<StatusItem>>,
}

/// An extended LIST command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCommand {
    pub select: ListSelect,
    pub reference: Vec<u8>,
    pub patterns: Vec<Vec<u8>>,
    pub ret: ListReturn,
}

/// The arguments of `LIST` after the command name, in the extended form of
/// RFC 5258 (which includes RFC 3501's).
pub fn list(lx: &mut Lexer<'_>) -> R<ListCommand> {
    let mut select = ListSelect::default();
    if lx.peek()? == Some(Token::Open) {
        for (at, opt) in lx.atom_list()? {
            match opt.as_str() {
                "SUBSCRIBED" => select.subscribed = true,
                "REMOTE" => select.remote = true,
                "RECURSIVEMATCH" => select.recursive_match = true,
                "SPECIAL-USE" => select.special_use = true,
                _ => {
                    return Err(SyntaxError {
                        at,
                        what: "unknown LIST selection option",
                    })
                }
            }
        }
        // RFC 5258 section 3.1: RECURSIVEMATCH needs an option it modifies.
        if select.recursive_match && !select.subscribed && !select.special_use {
            return lx.err("RECURSIVEMATCH without another selection option");
        }
    }
    let reference = lx.astring("expected a reference name")?;
    let mut patterns = Vec::new();
    if lx.peek()? == Some(Token::Open) {
        lx.next_token()?;
        loop {
            lx.skip_space();
            let at = lx.pos;
            match lx.next_token()? {
                Some(Token::Close) if !patterns.is_empty() => break,
                Some(t) if patterns.len() < MAX_PATTERNS => match t.astring() {
                    Some(p) => patterns.push(p),
                    None => {
                        return Err(SyntaxError {
                            at,
                            what: "expected a pattern",
                        })
                    }
                },
                _ => {
                    return Err(SyntaxError {
                        at,
                        what: "expected a pattern",
                    })
                }
            }
        }
    } else {
        patterns.push(lx.astring("expected a mailbox pattern")?);
    }
    let mut ret = ListReturn::default();
    if !lx.at_end() {
        lx.skip_space();
        let at = lx.pos;
        if !lx.next_token()?.is_some_and(|t| t.is_atom("RETURN")) {
            return Err(SyntaxError {
                at,
                what: "expected RETURN",
            });
        }
        lx.expect(&Token::Open, "expected ( after RETURN")?;
        loop {
            lx.skip_space();
            let at = lx.pos;
            let word = match lx.next_token()? {
                Some(Token::Close) => break,
                Some(Token::Atom(a)) => String::from_utf8_lossy(a).to_ascii_uppercase(),
                _ => {
                    return Err(SyntaxError {
                        at,
                        what: "expected a return option",
                    })
                }
            };
            match word.as_str() {
                "SUBSCRIBED" => ret.subscribed = true,
                "CHILDREN" => ret.children = true,
                "SPECIAL-USE" => ret.special_use = true,
                "STATUS" if ret.status.is_none() => {
                    ret.status = Some(status_items(lx)?);
                }
                _ => {
                    return Err(SyntaxError {
                        at,
                        what: "unknown LIST return option",
                    })
                }
            }
        }
        if !lx.at_end() {
            return lx.err("unexpected text after the return options");
        }
    }
    Ok(ListCommand {
        select,
        reference,
        patterns,
        ret,
    })
}

/// One message of an APPEND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendMessage<'a> {
    pub flags: Vec<String>,
    /// Seconds since the epoch and the zone in minutes east of UTC.
    pub date: Option<(i64, i16)>,
    pub data: &'a [u8],
    /// Sent with RFC 6855's UTF8 data extension.
    pub utf8: bool,
}

/// An APPEND with one or more messages (RFC 3502).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendCommand<'a> {
    pub mailbox: Vec<u8>,
    pub messages: Vec<AppendMessage<'a>>,
}

const SYSTEM_FLAGS: [&str; 5] = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"];

/// The arguments of `APPEND` after the command name: a mailbox, then one or
/// more of `[flag-list] [date-time] (literal / literal8 / "UTF8" SP "(" literal8 ")")`
/// (RFC 3516 allows a literal8, RFC 6855 the UTF8 form).
pub fn append<'a>(lx: &mut Lexer<'a>) -> R<AppendCommand<'a>> {
    let mailbox = lx.astring("expected a mailbox name")?;
    let mut messages = Vec::new();
    while !lx.at_end() {
        if messages.len() >= MAX_ITEMS {
            return lx.err("too many messages in one APPEND");
        }
        let mut flags = Vec::new();
        let mut date = None;
        lx.skip_space();
        let mut at = lx.pos;
        let mut tok = lx.next_token()?;
        if tok == Some(Token::Open) {
            loop {
                lx.skip_space();
                let fat = lx.pos;
                match lx.next_token()? {
                    Some(Token::Close) => break,
                    Some(Token::Atom(a)) if flags.len() < MAX_ITEMS => flags.push(flag(a, fat)?),
                    _ => {
                        return Err(SyntaxError {
                            at: fat,
                            what: "expected a flag",
                        })
                    }
                }
            }
            lx.skip_space();
            at = lx.pos;
            tok = lx.next_token()?;
        }
        if let Some(Token::Quoted(q)) = &tok {
            date = Some(date_time(q).ok_or(SyntaxError { at, what: "bad date-time" })?);
            lx.skip_space();
            at = lx.pos;
            tok = lx.next_token()?;
        }
        let (data, utf8) = match tok {
            Some(Token::Literal(d)) => (d, false),
            Some(t) if t.is_atom("UTF8") => {
                lx.expect(&Token::Open, "expected ( after UTF8")?;
                lx.skip_space();
                let lat = lx.pos;
                let Some(Token::Literal8(d)) = lx.next_token()? else {
                    return Err(SyntaxError {
                        at: lat,
                        what: "expected a literal8 after UTF8 (",
                    });
                };
                lx.expect(&Token::Close, "expected ) after the UTF8 literal8")?;
                (d, true)
            }
            // RFC 3516 section 4.4: the octets are the message as given,
            // NUL included.
            Some(Token::Literal8(d)) => (d, false),
            _ => {
                return Err(SyntaxError {
                    at,
                    what: "expected a message literal",
                })
            }
        };
        messages.push(AppendMessage { flags, date, data, utf8 });
    }
    if messages.is_empty() {
        return lx.err("APPEND needs a message");
    }
    Ok(AppendCommand { mailbox, messages })
}

/// A flag of a flag list: system flags in their canonical spelling,
/// keywords as written.
fn flag(a: &[u8], at: usize) -> R<String> {
    let s = std::str::from_utf8(a).map_err(|_| SyntaxError {
        at,
        what: "flag is not ASCII",
    })?;
    if s.bytes().any(|c| b"%*]".contains(&c) || !c.is_ascii()) {
        return Err(SyntaxError { at, what: "bad flag" });
    }
    if let Some(name) = s.strip_prefix('\\') {
        if name.is_empty() || name.contains('\\') {
            return Err(SyntaxError { at, what: "bad flag" });
        }
        if let Some(f) = SYSTEM_FLAGS.iter().find(|f| f.eq_ignore_ascii_case(s)) {
            return Ok((*f).to_string());
        }
        if s.eq_ignore_ascii_case("\\Recent") {
            return Err(SyntaxError {
                at,
                what: "\\Recent cannot be stored",
            });
        }
    } else if s.contains('\\') {
        return Err(SyntaxError { at, what: "bad flag" });
    }
    Ok(s.to_string())
}

/// `dd-Mon-yyyy hh:mm:ss +zzzz` (RFC 3501 date-time; the day may be
/// space-padded) as seconds since the epoch and minutes east of UTC.
pub fn date_time(s: &[u8]) -> Option<(i64, i16)> {
    const MONTHS: [&[u8]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
    ];
    let s = if s.first() == Some(&b' ') { &s[1..] } else { s };
    let num = |b: &[u8]| -> Option<i64> {
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(b).ok()?.parse().ok()
    };
    let dash = s.iter().position(|c| *c == b'-')?;
    let day = num(&s[..dash]).filter(|_| (1..=2).contains(&dash))?;
    let rest = &s[dash + 1..];
    if rest.len() != 3 + 1 + 4 + 1 + 8 + 1 + 5 {
        return None;
    }
    let month = MONTHS.iter().position(|m| rest[..3].eq_ignore_ascii_case(m))? as i64 + 1;
    if rest[3] != b'-' || rest[8] != b' ' || rest[11] != b':' || rest[14] != b':' || rest[17] != b' ' {
        return None;
    }
    let year = num(&rest[4..8])?;
    let (h, mi, sec) = (num(&rest[9..11])?, num(&rest[12..14])?, num(&rest[15..17])?);
    let sign = match rest[18] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (zh, zm) = (num(&rest[19..21])?, num(&rest[21..23])?);
    let days_in = [
        31,
        if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) {
            29
        } else {
            28
        },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day > days_in[(month - 1) as usize] || h > 23 || mi > 59 || sec > 60 || zm > 59 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), 1970-01-01 = 0.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let offset = sign * (zh * 60 + zm);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset * 60;
    Some((secs, offset as i16))
}

/// Most part numbers in one BINARY section (deeper than the MIME parser goes).
pub const MAX_SECTION_PARTS: usize = 100;

/// A FETCH data item of RFC 3516.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryItem {
    /// `BINARY[part]<origin.length>` or `BINARY.PEEK[...]`: the section with
    /// its transfer encoding removed.
    Binary {
        part: Vec<u32>,
        peek: bool,
        /// Octet origin and length (non-zero) in the decoded data.
        partial: Option<(u32, u32)>,
    },
    /// `BINARY.SIZE[part]`: the length of that decoded data.
    Size { part: Vec<u32> },
}

impl BinaryItem {
    /// The part numbers of the section (empty: the whole message).
    pub fn part(&self) -> &[u32] {
        match self {
            BinaryItem::Binary { part, .. } | BinaryItem::Size { part } => part,
        }
    }
}

/// A `[UID] FETCH` with BINARY or MODSEQ items, split for the RFC 3501
/// parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitFetch {
    /// The BINARY items, in the order given.
    pub items: Vec<BinaryItem>,
    /// The MODSEQ item (RFC 7162 section 3.1.4.1) was asked for.
    pub modseq: bool,
    /// The command with every BINARY and MODSEQ item replaced by `UID`,
    /// for imap-codec.
    pub plain: Vec<u8>,
    /// `UID` was asked for as an item of its own.
    pub uid_item: bool,
}

/// `[UID] FETCH set items` where some items are RFC 3516's BINARY items or
/// RFC 7162's MODSEQ: those items, and the command with each replaced by
/// `UID` so that imap-codec parses the rest (sequence set, other items).
/// `Ok(None)` for any other command and a FETCH without such items. Section and partial syntax errors
/// name the octet; numbers are bounded (`u32`, [`MAX_SECTION_PARTS`],
/// [`MAX_ITEMS`]).
pub fn fetch_items(cmd: &[u8]) -> R<Option<SplitFetch>> {
    let (_, _, name, mut lx) = head(cmd)?;
    if name != "FETCH" {
        return Ok(None);
    }
    lx.skip_space();
    if !matches!(lx.next_token()?, Some(Token::Atom(_))) {
        return lx.err("expected a sequence set");
    }
    let mut items = Vec::new();
    let mut spans = Vec::new();
    let mut uid_item = false;
    let mut modseq = false;
    let mut depth = 0usize;
    let mut seen = 0usize;
    loop {
        lx.skip_space();
        let at = lx.pos;
        let Some(tok) = lx.next_token()? else { break };
        match tok {
            Token::Open => depth += 1,
            Token::Close if depth > 0 => depth -= 1,
            // Items are the tokens at the top of the list (or the one
            // item without a list); deeper ones are header field names.
            Token::Atom(a) if depth <= 1 => {
                seen += 1;
                if seen > MAX_ITEMS {
                    return Err(SyntaxError {
                        at,
                        what: "too many FETCH items",
                    });
                }
                if a.len() >= 6 && a[..6].eq_ignore_ascii_case(b"BINARY") {
                    items.push(binary_item(a, at)?);
                    spans.push(at..lx.pos);
                } else if a.eq_ignore_ascii_case(b"MODSEQ") {
                    modseq = true;
                    spans.push(at..lx.pos);
                } else if a.eq_ignore_ascii_case(b"UID") {
                    uid_item = true;
                }
            }
            _ => {}
        }
        if depth == 0 {
            break;
        }
    }
    if items.is_empty() && !modseq {
        return Ok(None);
    }
    let mut plain = Vec::with_capacity(cmd.len());
    let mut copied = 0;
    for span in spans {
        plain.extend_from_slice(&cmd[copied..span.start]);
        plain.extend_from_slice(b"UID");
        copied = span.end;
    }
    plain.extend_from_slice(&cmd[copied..]);
    Ok(Some(SplitFetch {
        items,
        modseq,
        plain,
        uid_item,
    }))
}

/// One `BINARY[.PEEK|.SIZE][section-binary][partial]` atom starting at
/// octet `at` (RFC 3516 section 6).
fn binary_item(a: &[u8], at: usize) -> R<BinaryItem> {
    let fail = |off: usize, what| Err(SyntaxError { at: at + off, what });
    let upper = a.to_ascii_uppercase();
    let (start, peek, size) = if upper.starts_with(b"BINARY.PEEK[") {
        (12, true, false)
    } else if upper.starts_with(b"BINARY.SIZE[") {
        (12, false, true)
    } else if upper.starts_with(b"BINARY[") {
        (7, false, false)
    } else {
        return fail(0, "expected BINARY[, BINARY.PEEK[ or BINARY.SIZE[");
    };
    let mut i = start;
    let mut part = Vec::new();
    // section-part: nz-number *("." nz-number), or nothing.
    if a.get(i) != Some(&b']') {
        loop {
            let n_at = i;
            while a.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            match number(&a[n_at..i]) {
                Some(n) if n > 0 && part.len() < MAX_SECTION_PARTS => part.push(n),
                Some(n) if n > 0 => return fail(n_at, "too many part numbers in a BINARY section"),
                _ => return fail(n_at, "BINARY sections are part numbers (non-zero, 32-bit) only"),
            }
            match a.get(i) {
                Some(b'.') => i += 1,
                Some(b']') => break,
                _ => return fail(i, "BINARY sections are part numbers only: expected . or ]"),
            }
        }
    }
    i += 1;
    let mut partial = None;
    if a.get(i) == Some(&b'<') {
        if size {
            return fail(i, "BINARY.SIZE takes no partial range");
        }
        i += 1;
        let o_at = i;
        while a.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let origin = number(&a[o_at..i]).ok_or(SyntaxError {
            at: at + o_at,
            what: "partial origin is not a 32-bit number",
        })?;
        if a.get(i) != Some(&b'.') {
            return fail(i, "expected . in the partial range");
        }
        i += 1;
        let l_at = i;
        while a.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let length = number(&a[l_at..i]).filter(|n| *n > 0).ok_or(SyntaxError {
            at: at + l_at,
            what: "partial length is not a non-zero 32-bit number",
        })?;
        if a.get(i) != Some(&b'>') {
            return fail(i, "expected > after the partial range");
        }
        i += 1;
        partial = Some((origin, length));
    }
    if i != a.len() {
        return fail(i, "unexpected text after a BINARY item");
    }
    Ok(if size {
        BinaryItem::Size { part }
    } else {
        BinaryItem::Binary { part, peek, partial }
    })
}

/// A decimal number of 1 to 10 digits that fits 32 bits.
fn number(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// What `SEARCH RETURN (...)` asks for (RFC 4731, and SAVE of RFC 5182).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
    /// Keep the result for `$` (RFC 5182 SEARCHRES).
    pub save: bool,
}

impl SearchReturn {
    /// Whether an ESEARCH response is due: not for SAVE alone (RFC 5182
    /// section 2.4; RFC 9051 section 6.4.4.1).
    pub fn answers(&self) -> bool {
        self.min || self.max || self.all || self.count
    }
}

/// `[UID] SEARCH RETURN (opts) criteria`: the options, and the command
/// rewritten without them for the RFC 3501 parser. `Ok(None)` when the
/// command is no SEARCH with RETURN.
pub fn search_return(cmd: &[u8]) -> R<Option<(SearchReturn, Vec<u8>)>> {
    search_return_with(cmd, true)
}

/// [`search_return`], with SAVE (RFC 5182) an unknown option unless `save`.
pub fn search_return_with(cmd: &[u8], save: bool) -> R<Option<(SearchReturn, Vec<u8>)>> {
    let (_, _, name, mut lx) = head(cmd)?;
    if name != "SEARCH" {
        return Ok(None);
    }
    let start = lx.pos;
    if !lx.next_token()?.is_some_and(|t| t.is_atom("RETURN")) {
        return Ok(None);
    }
    let mut ret = SearchReturn::default();
    for (at, opt) in lx.atom_list()? {
        match opt.as_str() {
            "MIN" => ret.min = true,
            "MAX" => ret.max = true,
            "ALL" => ret.all = true,
            "COUNT" => ret.count = true,
            "SAVE" if save => ret.save = true,
            _ => {
                return Err(SyntaxError {
                    at,
                    what: "unknown SEARCH return option",
                })
            }
        }
    }
    // RFC 4731 section 3.1: an empty list means ALL.
    if ret == SearchReturn::default() {
        ret.all = true;
    }
    let mut out = cmd[..start].to_vec();
    out.extend_from_slice(&cmd[lx.pos..]);
    Ok(Some((ret, out)))
}

/// The keyword [`search_sizes`] writes for a size key: `$TandemSize<i>`.
pub const SIZE_KEYWORD: &str = "$TandemSize";

/// A `LARGER n` (`true`) or `SMALLER n` (`false`) search key whose `n` is
/// above 2^32 − 1, which IMAP4rev2's number64 allows (RFC 9051 section
/// 9) and the RFC 3501 parser does not.
pub type SizeKey = (bool, u64);

/// `[UID] SEARCH|SORT|THREAD ... LARGER|SMALLER n ...` with an `n` of 33 to
/// 63 bits: those keys, in order, and the command with key `i` replaced by
/// `KEYWORD $TandemSize<i>` (which the RFC 3501 parser takes wherever a key
/// may stand). Keys with a 32-bit `n` are left for that parser. `Ok(None)`
/// when there is none. As with MODSEQ, an atom `LARGER` in argument
/// position (`SUBJECT LARGER`) is read as the key: quote it.
pub fn search_sizes(cmd: &[u8]) -> R<Option<(Vec<SizeKey>, Vec<u8>)>> {
    let (_, _, name, mut lx) = head(cmd)?;
    if !matches!(name.as_str(), "SEARCH" | "SORT" | "THREAD") {
        return Ok(None);
    }
    let mut keys = Vec::new();
    let mut spans = Vec::new();
    loop {
        lx.skip_space();
        let at = lx.pos;
        let Some(tok) = lx.next_token()? else { break };
        let larger = tok.is_atom("LARGER");
        if !larger && !tok.is_atom("SMALLER") {
            continue;
        }
        // Anything but a number64 above 32 bits is left for the parser
        // (which refuses what is no number, and numbers above 2^63 - 1).
        let n = match lx.peek()? {
            Some(Token::Atom(d)) if !d.is_empty() && d.len() <= 19 && d.iter().all(u8::is_ascii_digit) => {
                std::str::from_utf8(d).ok().and_then(|d| d.parse::<u64>().ok()).unwrap_or(u64::MAX)
            }
            _ => continue,
        };
        if n <= u64::from(u32::MAX) || n > i64::MAX as u64 {
            continue;
        }
        lx.next_token()?;
        if keys.len() >= MAX_ITEMS {
            return Err(SyntaxError {
                at,
                what: "too many size keys",
            });
        }
        keys.push((larger, n));
        spans.push(at..lx.pos);
    }
    if keys.is_empty() {
        return Ok(None);
    }
    let mut plain = Vec::with_capacity(cmd.len() + 16 * spans.len());
    let mut copied = 0;
    for (i, span) in spans.into_iter().enumerate() {
        plain.extend_from_slice(&cmd[copied..span.start]);
        plain.extend_from_slice(format!("KEYWORD {SIZE_KEYWORD}{i}").as_bytes());
        copied = span.end;
    }
    plain.extend_from_slice(&cmd[copied..]);
    Ok(Some((keys, plain)))
}

/// The index of the size key a keyword of [`search_sizes`] stands for.
pub fn size_key(keyword: &str) -> Option<usize> {
    keyword.strip_prefix(SIZE_KEYWORD)?.parse().ok()
}

/// How the messages a SEARCH program finds are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchAs {
    /// `* ESEARCH` (RFC 4731).
    Esearch(SearchReturn),
    /// `* SORT` in this order (RFC 5256).
    Sort(Vec<SortBy>),
    /// `* THREAD` by this algorithm (RFC 5256).
    Thread(ThreadAlg),
}

/// `[UID] SORT (criteria) charset program` or `[UID] THREAD algorithm
/// charset program` (RFC 5256): the order asked for, and the command
/// rewritten as the SEARCH it contains, for the RFC 3501 parser. The
/// charset is kept only when it is neither UTF-8 nor US-ASCII (the SEARCH
/// strings are UTF-8 either way). `Ok(None)` for other commands.
pub fn sort_or_thread(cmd: &[u8]) -> R<Option<(SearchAs, Vec<u8>)>> {
    let (_, _, name, mut lx) = head(cmd)?;
    let name_start = lx.pos - name.len();
    let how = match name.as_str() {
        "SORT" => {
            let mut keys = Vec::new();
            let mut reverse = false;
            for (at, word) in lx.atom_list()? {
                if word == "REVERSE" && !reverse {
                    reverse = true;
                    continue;
                }
                match SortKey::parse(&word) {
                    Some(key) => keys.push(SortBy { key, reverse }),
                    None => {
                        return Err(SyntaxError {
                            at,
                            what: "unknown SORT criterion",
                        })
                    }
                }
                reverse = false;
            }
            if keys.is_empty() || reverse {
                return lx.err("SORT needs criteria");
            }
            SearchAs::Sort(keys)
        }
        "THREAD" => {
            lx.skip_space();
            let at = lx.pos;
            match lx.next_token()? {
                Some(Token::Atom(a)) if a.eq_ignore_ascii_case(b"REFERENCES") => SearchAs::Thread(ThreadAlg::References),
                Some(Token::Atom(a)) if a.eq_ignore_ascii_case(b"ORDEREDSUBJECT") => SearchAs::Thread(ThreadAlg::OrderedSubject),
                _ => {
                    return Err(SyntaxError {
                        at,
                        what: "unknown THREAD algorithm",
                    })
                }
            }
        }
        _ => return Ok(None),
    };
    lx.skip_space();
    let cs_start = lx.pos;
    let charset = lx.astring("expected a charset")?;
    let cs_end = lx.pos;
    if lx.at_end() {
        return lx.err("expected search criteria");
    }
    let mut out = cmd[..name_start].to_vec();
    out.extend_from_slice(b"SEARCH");
    if !(charset.eq_ignore_ascii_case(b"UTF-8") || charset.eq_ignore_ascii_case(b"US-ASCII")) {
        out.extend_from_slice(b" CHARSET ");
        out.extend_from_slice(&cmd[cs_start..cs_end]);
    }
    out.extend_from_slice(&cmd[cs_end..]);
    Ok(Some((how, out)))
}

/// A set of numbers in the compact form of RFC 3501's sequence-set
/// (`1:3,7`), for ESEARCH ALL and APPENDUID. `nums` must be ascending.
pub fn compact_set(nums: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < nums.len() {
        let start = nums[i];
        let mut end = start;
        while i + 1 < nums.len() && nums[i + 1] == end.wrapping_add(1) && nums[i + 1] > end {
            i += 1;
            end = nums[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &[u8]) -> (String, Lexer<'_>) {
        let (_, _, name, lx) = head(cmd).unwrap();
        (name, lx)
    }

    #[test]
    fn quota_commands() {
        let parse = |c: &[u8]| {
            let (n, mut lx) = args(c);
            quota(&n, &mut lx)
        };
        assert_eq!(parse(b"a GETQUOTAROOT INBOX\r\n"), Ok(QuotaCommand::Root(b"INBOX".to_vec())));
        assert_eq!(parse(b"a getquotaroot {5}\r\nA b c\r\n"), Ok(QuotaCommand::Root(b"A b c".to_vec())));
        assert_eq!(parse(b"a GETQUOTA \"\"\r\n"), Ok(QuotaCommand::Get(Vec::new())));
        assert_eq!(
            parse(b"a SETQUOTA \"\" (STORAGE 512 MESSAGE 10)\r\n"),
            Ok(QuotaCommand::Set(Vec::new()))
        );
        assert_eq!(parse(b"a SETQUOTA \"\" ()\r\n"), Ok(QuotaCommand::Set(Vec::new())));
        // Hostile or malformed: an error naming the octet, never a panic.
        for bad in [
            &b"a GETQUOTA\r\n"[..],
            b"a GETQUOTAROOT\r\n",
            b"a GETQUOTAROOT INBOX extra\r\n",
            b"a GETQUOTA (\r\n",
            b"a GETQUOTAROOT \"unterminated\r\n",
            b"a GETQUOTAROOT {99}\r\nab\r\n",
            b"a GETQUOTAROOT {18446744073709551616}\r\n",
            b"a SETQUOTA \"\" (STORAGE)\r\n",
            b"a SETQUOTA \"\" (STORAGE x)\r\n",
            b"a SETQUOTA \"\" (STORAGE 1\r\n",
            b"a SETQUOTA \"\" STORAGE 1\r\n",
            b"a SETQUOTA \"\" ((\r\n",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.at <= bad.len(), "{e} in {:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"a SETQUOTA \"\" (".to_vec();
        for _ in 0..(3 * MAX_ITEMS) {
            long.extend_from_slice(b"S 1 ");
        }
        long.extend_from_slice(b")\r\n");
        assert!(parse(&long).is_err());
    }

    #[test]
    fn extended_list_forms() {
        let (n, mut lx) =
            args(b"a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (\"INBOX\" %/x {3}\r\nabc) RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n");
        assert_eq!(n, "LIST");
        let l = list(&mut lx).unwrap();
        assert!(l.select.subscribed && l.select.recursive_match);
        assert_eq!(l.patterns, vec![b"INBOX".to_vec(), b"%/x".to_vec(), b"abc".to_vec()]);
        assert!(l.ret.children);
        assert_eq!(l.ret.status, Some(vec![StatusItem::Messages, StatusItem::Unseen]));
        let (_, mut lx) = args(b"a LIST \"\" *\r\n");
        assert_eq!(list(&mut lx).unwrap().patterns, vec![b"*".to_vec()]);
        for bad in [
            &b"a LIST (RECURSIVEMATCH) \"\" *\r\n"[..],
            b"a LIST (BOGUS) \"\" *\r\n",
            b"a LIST \"\" * RETURN (BOGUS)\r\n",
            b"a LIST \"\" () \r\n",
            b"a LIST \"\" * RETURN (STATUS ())\r\n",
            b"a LIST \"\" * trailing\r\n",
            b"a LIST \"\" * RETURN (CHILDREN) x\r\n",
            b"a LIST \"\" \"unterminated\r\n",
        ] {
            let (_, mut lx) = args(bad);
            assert!(list(&mut lx).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn multiappend_and_utf8_data() {
        let cmd = b"a APPEND Sent (\\seen $Work) \" 3-Feb-2026 10:00:00 +0100\" {2}\r\nhi {3+}\r\nyou UTF8 (~{2}\r\n\xc3\xa9)\r\n";
        let (_, mut lx) = args(cmd);
        let a = append(&mut lx).unwrap();
        assert_eq!(a.mailbox, b"Sent");
        assert_eq!(a.messages.len(), 3);
        assert_eq!(a.messages[0].flags, vec!["\\Seen".to_string(), "$Work".to_string()]);
        assert_eq!(a.messages[0].date, Some((1_770_109_200, 60)));
        assert_eq!(a.messages[0].data, b"hi");
        assert_eq!(a.messages[1].data, b"you");
        assert!(a.messages[2].utf8 && a.messages[2].data == "é".as_bytes());
        for bad in [
            &b"a APPEND Sent\r\n"[..],
            b"a APPEND Sent {5}\r\nhi\r\n",
            b"a APPEND Sent (\\Recent) {2}\r\nhi\r\n",
            b"a APPEND Sent \"31-Feb-2026 10:00:00 +0100\" {2}\r\nhi\r\n",
            b"a APPEND Sent UTF8 ({2}\r\nhi)\r\n",
            b"a APPEND Sent {2}\r\nhi junk\r\n",
        ] {
            let (_, mut lx) = args(bad);
            assert!(append(&mut lx).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn append_takes_a_literal8_as_it_is() {
        let (_, mut lx) = args(b"a APPEND Sent (\\Seen) ~{4}\r\nh\x00\r\xff ~{2+}\r\nok\r\n");
        let a = append(&mut lx).unwrap();
        assert_eq!(a.messages.len(), 2);
        assert_eq!(a.messages[0].data, b"h\x00\r\xff");
        assert!(!a.messages[0].utf8);
        assert_eq!(a.messages[1].data, b"ok");
        for bad in [
            &b"a APPEND Sent ~{5}\r\nhi\r\n"[..],
            b"a APPEND Sent ~{x}\r\nhi\r\n",
            b"a APPEND Sent ~2\r\n",
        ] {
            let (_, mut lx) = args(bad);
            assert!(append(&mut lx).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn fetch_binary_items_are_split_off() {
        let f = fetch_items(
            b"t UID FETCH 1:* (FLAGS BINARY[2] BODY.PEEK[HEADER.FIELDS (BINARY[1] UID)] binary.peek[1.2]<0.10> BINARY.SIZE[])\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            f.items,
            vec![
                BinaryItem::Binary {
                    part: vec![2],
                    peek: false,
                    partial: None
                },
                BinaryItem::Binary {
                    part: vec![1, 2],
                    peek: true,
                    partial: Some((0, 10))
                },
                BinaryItem::Size { part: vec![] },
            ]
        );
        assert_eq!(
            f.plain,
            b"t UID FETCH 1:* (FLAGS UID BODY.PEEK[HEADER.FIELDS (BINARY[1] UID)] UID UID)\r\n".to_vec()
        );
        // Header field names are not items.
        assert!(!f.uid_item);
        let f = fetch_items(b"t FETCH 3 BINARY.SIZE[1]\r\n").unwrap().unwrap();
        assert_eq!(f.items, vec![BinaryItem::Size { part: vec![1] }]);
        assert_eq!(f.plain, b"t FETCH 3 UID\r\n".to_vec());
        assert!(!f.uid_item);
        let f = fetch_items(b"t FETCH 3 (uid BINARY[]<4294967295.4294967295>)\r\n")
            .unwrap()
            .unwrap();
        assert!(f.uid_item);
        assert_eq!(
            f.items,
            vec![BinaryItem::Binary {
                part: vec![],
                peek: false,
                partial: Some((u32::MAX, u32::MAX))
            }]
        );
        assert_eq!(fetch_items(b"t FETCH 1 (FLAGS BODY[])\r\n").unwrap(), None);
        // RFC 7162's MODSEQ item is split off the same way.
        let f = fetch_items(b"t FETCH 1:* (FLAGS modseq BODY.PEEK[HEADER.FIELDS (MODSEQ)])\r\n")
            .unwrap()
            .unwrap();
        assert!(f.modseq && f.items.is_empty() && !f.uid_item);
        assert_eq!(f.plain, b"t FETCH 1:* (FLAGS UID BODY.PEEK[HEADER.FIELDS (MODSEQ)])\r\n".to_vec());
        let f = fetch_items(b"t UID FETCH 1 MODSEQ\r\n").unwrap().unwrap();
        assert!(f.modseq);
        assert_eq!(f.plain, b"t UID FETCH 1 UID\r\n".to_vec());
        assert_eq!(fetch_items(b"t STORE 1 +FLAGS (BINARY[1])\r\n").unwrap(), None);
        // Each error says where it is.
        for (bad, at, what) in [
            (&b"t FETCH 1 BINARY[1.TEXT]\r\n"[..], 19, "BINARY sections are part numbers"),
            (b"t FETCH 1 BINARY[HEADER]\r\n", 17, "BINARY sections are part numbers"),
            (b"t FETCH 1 BINARY[1.MIME]\r\n", 19, "BINARY sections are part numbers"),
            (b"t FETCH 1 (FLAGS BINARY[0])\r\n", 24, "BINARY sections are part numbers"),
            (b"t FETCH 1 BINARY[1..2]\r\n", 19, "BINARY sections are part numbers"),
            (b"t FETCH 1 BINARY[4294967296]\r\n", 17, "BINARY sections are part numbers"),
            (b"t FETCH 1 BINARY[1]<0.0>\r\n", 22, "partial length"),
            (b"t FETCH 1 BINARY[1]<4294967296.1>\r\n", 20, "partial origin"),
            (b"t FETCH 1 BINARY[1]<1.99999999999>\r\n", 22, "partial length"),
            (b"t FETCH 1 BINARY[1]<1>\r\n", 21, "expected ."),
            (b"t FETCH 1 BINARY[1]<1.2\r\n", 23, "expected >"),
            (b"t FETCH 1 BINARY.SIZE[1]<0.1>\r\n", 24, "BINARY.SIZE takes no partial"),
            (b"t FETCH 1 BINARY[1]x\r\n", 19, "unexpected text"),
            (b"t FETCH 1 BINARY\r\n", 10, "expected BINARY["),
            (b"t FETCH 1 BINARY.PEAK[1]\r\n", 10, "expected BINARY["),
            (b"t FETCH 1 BINARY[1\r\n", 18, "expected . or ]"),
        ] {
            let e = fetch_items(bad).unwrap_err();
            assert_eq!(e.at, at, "{}: {e}", String::from_utf8_lossy(bad));
            assert!(e.what.contains(what), "{}: {e}", String::from_utf8_lossy(bad));
        }
        let deep = format!("t FETCH 1 BINARY[{}1]\r\n", "1.".repeat(MAX_SECTION_PARTS));
        assert!(fetch_items(deep.as_bytes()).unwrap_err().what.contains("too many part numbers"));
        let many = format!("t FETCH 1 ({} BINARY[1])\r\n", "FLAGS ".repeat(MAX_ITEMS));
        assert!(fetch_items(many.as_bytes()).unwrap_err().what.contains("too many FETCH items"));
        // Hostile input: never panics.
        for cmd in [
            &b"t FETCH"[..],
            b"t FETCH 1 (",
            b"t FETCH 1 (BINARY[",
            b"t FETCH 1 ~{",
            b"t FETCH 1 BINARY[1]<",
            b"t FETCH 1 BINARY.SIZE[",
        ] {
            let _ = fetch_items(cmd);
        }
    }

    #[test]
    fn dates() {
        assert_eq!(date_time(b"01-Jan-1970 00:00:00 +0000"), Some((0, 0)));
        assert_eq!(date_time(b" 1-Jan-1970 01:00:00 +0100"), Some((0, 60)));
        assert_eq!(date_time(b"29-Feb-2024 00:00:00 -0030"), Some((1_709_166_600, -30)));
        assert_eq!(date_time(b"29-Feb-2023 00:00:00 +0000"), None);
        assert_eq!(date_time(b"1-Jan-1970 24:00:00 +0000"), None);
        assert_eq!(date_time(b""), None);
    }

    #[test]
    fn search_return_is_split_off() {
        let (r, rest) = search_return(b"t UID SEARCH RETURN (MIN COUNT) UNSEEN\r\n").unwrap().unwrap();
        assert!(r.min && r.count && !r.max && !r.all);
        assert_eq!(rest, b"t UID SEARCH UNSEEN\r\n");
        let (r, _) = search_return(b"t SEARCH RETURN () ALL\r\n").unwrap().unwrap();
        assert!(r.all);
        assert_eq!(search_return(b"t SEARCH ALL\r\n").unwrap(), None);
        let (r, _) = search_return(b"t SEARCH RETURN (SAVE) ALL\r\n").unwrap().unwrap();
        assert!(r.save && !r.answers());
        let (r, _) = search_return(b"t SEARCH RETURN (SAVE COUNT) ALL\r\n").unwrap().unwrap();
        assert!(r.save && r.count && !r.all);
        assert!(search_return(b"t SEARCH RETURN (BOGUS) ALL\r\n").is_err());
        let e = search_return_with(b"t SEARCH RETURN (MIN SAVE) ALL\r\n", false).unwrap_err();
        assert_eq!((e.at, e.what), (21, "unknown SEARCH return option"));
        let (name, items) = status(&mut head(b"t STATUS \"a b\" (SIZE MESSAGES)\r\n").unwrap().3).unwrap();
        assert_eq!(
            (name.as_slice(), items),
            (&b"a b"[..], vec![StatusItem::Size, StatusItem::Messages])
        );
        for bad in [
            &b"t STATUS x ()\r\n"[..],
            b"t STATUS x (SIZE) y\r\n",
            b"t STATUS x (BOGUS)\r\n",
            b"t STATUS\r\n",
        ] {
            assert!(status(&mut head(bad).unwrap().3).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(compact_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(compact_set(&[]), "");
    }

    #[test]
    fn sizes_above_32_bits_become_keywords() {
        let (keys, plain) = search_sizes(b"t UID SEARCH LARGER 5000000000 SMALLER 10 OR SMALLER 9223372036854775807 ALL\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(keys, vec![(true, 5_000_000_000), (false, i64::MAX as u64)]);
        assert_eq!(
            plain,
            b"t UID SEARCH KEYWORD $TandemSize0 SMALLER 10 OR KEYWORD $TandemSize1 ALL\r\n"
        );
        assert_eq!(size_key("$TandemSize1"), Some(1));
        assert_eq!(size_key("$Junk"), None);
        assert_eq!(search_sizes(b"t SEARCH LARGER 4294967295\r\n").unwrap(), None);
        assert_eq!(search_sizes(b"t FETCH 1 LARGER\r\n").unwrap(), None);
        // What is no number64 above 32 bits is left as it is.
        for other in [
            &b"t SEARCH LARGER 9223372036854775808\r\n"[..],
            b"t SEARCH SUBJECT LARGER\r\n",
            b"t SEARCH LARGER\r\n",
        ] {
            assert_eq!(search_sizes(other).unwrap(), None, "{}", String::from_utf8_lossy(other));
        }
        assert!(search_sizes(b"t SEARCH LARGER 5000000000 \"\r\n").is_err());
    }

    #[test]
    fn sort_and_thread_become_searches() {
        let (how, plain) = sort_or_thread(b"t UID SORT (REVERSE DATE SUBJECT) UTF-8 UNSEEN FROM \"x\"\r\n")
            .unwrap()
            .unwrap();
        let by = |key, reverse| SortBy { key, reverse };
        assert_eq!(how, SearchAs::Sort(vec![by(SortKey::Date, true), by(SortKey::Subject, false)]));
        assert_eq!(plain, b"t UID SEARCH UNSEEN FROM \"x\"\r\n");
        let (how, plain) = sort_or_thread(b"t THREAD references \"iso-8859-1\" ALL\r\n").unwrap().unwrap();
        assert_eq!(how, SearchAs::Thread(ThreadAlg::References));
        assert_eq!(plain, b"t SEARCH CHARSET \"iso-8859-1\" ALL\r\n");
        assert_eq!(sort_or_thread(b"t SEARCH ALL\r\n").unwrap(), None);
        // A command name that is not ASCII (found by fuzzing: its lossy
        // decoding is longer than its bytes).
        assert!(sort_or_thread(b"t S\xffRT (DATE) UTF-8 ALL\r\n").is_err());
        assert!(head(b"t UID \xff\xff\r\n").is_err());
        for bad in [
            &b"t SORT () UTF-8 ALL\r\n"[..],
            b"t SORT (REVERSE) UTF-8 ALL\r\n",
            b"t SORT (DATE) UTF-8\r\n",
            b"t SORT (BOGUS) UTF-8 ALL\r\n",
            b"t THREAD X UTF-8 ALL\r\n",
            b"t SORT DATE UTF-8 ALL\r\n",
        ] {
            assert!(sort_or_thread(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn utf8_quoted_strings_become_literals() {
        let cmd = "a SELECT \"Entwürfe\"\r\n".as_bytes();
        let out = utf8_quoted_as_literals(cmd).unwrap().unwrap();
        assert_eq!(out, "a SELECT {9}\r\nEntwürfe\r\n".as_bytes());
        // Literals are skipped over, not searched for quotes.
        let cmd = "a APPEND x {4}\r\n\"é\" \"ü\"\r\n".as_bytes();
        let out = utf8_quoted_as_literals(cmd).unwrap().unwrap();
        assert_eq!(out, "a APPEND x {4}\r\n\"é\" {2}\r\nü\r\n".as_bytes());
        assert_eq!(utf8_quoted_as_literals(b"a NOOP\r\n").unwrap(), None);
        assert_eq!(utf8_quoted_as_literals("a APPEND x {2}\r\né\r\n".as_bytes()).unwrap(), None);
        assert!(utf8_quoted_as_literals(b"a SELECT \"\xff\"\r\n").is_err());
        // Hostile input: never panics.
        for cmd in [&b"\"\xc3"[..], b"{99}\r\n\xc3", b"~{", b"\xc3\"\\", b"x (\"\xc3\xa9\" {1+}\r\n"] {
            let _ = utf8_quoted_as_literals(cmd);
            let _ = head(cmd).map(|(_, _, _, mut lx)| (list(&mut lx.clone()).is_ok(), append(&mut lx).is_ok()));
        }
    }
}
