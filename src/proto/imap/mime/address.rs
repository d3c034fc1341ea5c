//! RFC 5322 address lists, as ENVELOPE sends them.

use super::*;

/// One entry of an IMAP address list. A group start has only `mailbox`. A group end has nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Address {
    pub(super) name: Option<Vec<u8>>,
    pub(super) adl: Option<Vec<u8>>,
    pub(super) mailbox: Option<Vec<u8>>,
    pub(super) host: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
    Atom(Vec<u8>),
    /// A quoted string's content, unescaped.
    Quoted(Vec<u8>),
    /// `[...]`, raw.
    DomainLiteral(Vec<u8>),
    /// A comment's content, unescaped.
    Comment(Vec<u8>),
    /// One of `< > : ; @ , .`
    Special(u8),
}

#[derive(Debug, Clone)]
pub(super) struct AddrToken {
    pub(super) tok: Tok,
    /// Whether whitespace or a comment came before this token.
    pub(super) space_before: bool,
}

pub(super) fn tokenize_address(v: &[u8]) -> Vec<AddrToken> {
    let mut out = Vec::new();
    let mut space = false;
    let mut i = 0;
    while i < v.len() {
        let c = v[i];
        let tok = match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                space = true;
                i += 1;
                continue;
            }
            b'(' => {
                let (next, content) = read_comment(v, i);
                i = next;
                out.push(AddrToken {
                    tok: Tok::Comment(content),
                    space_before: space,
                });
                space = true;
                continue;
            }
            b'"' => {
                let (next, content) = read_quoted(v, i);
                i = next;
                Tok::Quoted(content)
            }
            b'[' => {
                let mut j = i + 1;
                while j < v.len() && v[j] != b']' {
                    j += if v[j] == b'\\' { 2 } else { 1 };
                }
                let end = (j + 1).min(v.len());
                let literal = v[i..end].to_vec();
                i = end;
                Tok::DomainLiteral(literal)
            }
            b'<' | b'>' | b':' | b';' | b'@' | b',' | b'.' => {
                i += 1;
                Tok::Special(c)
            }
            _ => {
                let start = i;
                while i < v.len() && !b" \t\r\n(\"[<>:;@,.".contains(&v[i]) {
                    i += 1;
                }
                Tok::Atom(v[start..i].to_vec())
            }
        };
        out.push(AddrToken { tok, space_before: space });
        space = false;
    }
    out
}

pub(super) fn is_dot(t: &AddrToken) -> bool {
    t.tok == Tok::Special(b'.')
}

/// A lenient RFC 5322 address-list parser that produces IMAP address structures.
pub(super) struct AddrParser {
    pub(super) toks: Vec<AddrToken>,
    pub(super) i: usize,
    pub(super) out: Vec<Address>,
    pub(super) last_comment: Option<Vec<u8>>,
}

pub(super) fn parse_address_list(v: &[u8]) -> Vec<Address> {
    let mut p = AddrParser {
        toks: tokenize_address(v),
        i: 0,
        out: Vec::new(),
        last_comment: None,
    };
    while let Some(t) = p.toks.get(p.i) {
        if matches!(t.tok, Tok::Special(b',' | b';' | b'>')) {
            p.i += 1;
        } else {
            p.address(true);
        }
    }
    p.out
}

impl AddrParser {
    pub(super) fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.tok)
    }

    /// Parses one mailbox, or a group when `allow_group` is set. It always consumes at
    /// least one token, because it is never called at `,`, `;` or the end.
    pub(super) fn address(&mut self, allow_group: bool) {
        self.last_comment = None;
        let start = self.i;
        while let Some(t) = self.peek() {
            match t {
                Tok::Atom(_) | Tok::Quoted(_) | Tok::DomainLiteral(_) | Tok::Special(b'.') => {}
                Tok::Comment(c) => self.last_comment = Some(c.clone()),
                _ => break,
            }
            self.i += 1;
        }
        let words = start..self.i;
        match self.peek() {
            Some(Tok::Special(b':')) if allow_group => {
                self.i += 1;
                self.group(words);
            }
            Some(Tok::Special(b'<')) => {
                self.i += 1;
                self.angle_addr(words);
            }
            Some(Tok::Special(b'@')) => {
                self.i += 1;
                self.addr_spec(words);
            }
            next => {
                let stray = matches!(next, Some(Tok::Special(b':' | b'>' | b'<' | b'@')));
                self.bare(words);
                if stray {
                    self.i += 1;
                }
            }
        }
    }

    /// `phrase : [mailbox-list] ;`, after the colon.
    pub(super) fn group(&mut self, words: Range<usize>) {
        let name = self.phrase(words).unwrap_or_default();
        self.out.push(Address {
            name: None,
            adl: None,
            mailbox: Some(name),
            host: None,
        });
        loop {
            match self.peek() {
                None => break,
                Some(Tok::Special(b';')) => {
                    self.i += 1;
                    break;
                }
                Some(Tok::Special(b',')) => self.i += 1,
                Some(_) => self.address(false),
            }
        }
        self.out.push(Address {
            name: None,
            adl: None,
            mailbox: None,
            host: None,
        });
    }

    /// `[phrase] < [route :] local-part [@ domain] >`, after the `<`.
    pub(super) fn angle_addr(&mut self, words: Range<usize>) {
        let name = self.phrase(words);
        let mut routes: Vec<Vec<u8>> = Vec::new();
        if self.peek() == Some(&Tok::Special(b'@')) {
            loop {
                match self.peek() {
                    Some(Tok::Special(b'@')) => {
                        self.i += 1;
                        let mut route = b"@".to_vec();
                        route.extend(self.domain().unwrap_or_default());
                        routes.push(route);
                    }
                    Some(Tok::Special(b',')) => self.i += 1,
                    _ => break,
                }
            }
            if self.peek() == Some(&Tok::Special(b':')) {
                self.i += 1;
            }
        }
        let local = self.local_part();
        let host = if self.peek() == Some(&Tok::Special(b'@')) {
            self.i += 1;
            self.domain()
        } else {
            None
        };
        while let Some(t) = self.peek() {
            match t {
                Tok::Special(b'>') => {
                    self.i += 1;
                    break;
                }
                Tok::Special(b',' | b';' | b'<') => break,
                _ => self.i += 1,
            }
        }
        let adl = (!routes.is_empty()).then(|| routes.join(&b","[..]));
        self.push_mailbox(name, adl, local, host);
    }

    /// `local-part @ domain`, after the `@`. If words before the local part are separated
    /// by whitespace (`Name user@host`), those words are taken as a display name.
    pub(super) fn addr_spec(&mut self, words: Range<usize>) {
        let tokens: Vec<usize> = words.filter(|&k| !matches!(self.toks[k].tok, Tok::Comment(_))).collect();
        let mut split = tokens.len().saturating_sub(1);
        while split > 0 {
            let cur = &self.toks[tokens[split]];
            let prev = &self.toks[tokens[split - 1]];
            if cur.space_before && !is_dot(cur) && !is_dot(prev) {
                break;
            }
            split -= 1;
        }
        let name = self.phrase_of(&tokens[..split]);
        let local = self.local_of(&tokens[split..]);
        let host = self.domain();
        while let Some(Tok::Comment(c)) = self.peek() {
            self.last_comment = Some(c.clone());
            self.i += 1;
        }
        let name = name.or_else(|| self.last_comment.clone().filter(|c| !c.is_empty()));
        self.push_mailbox(name, None, local, host);
    }

    /// Words with no `@` or `<`, such as `root` or `root (Cron Daemon)`: a mailbox without a domain.
    pub(super) fn bare(&mut self, words: Range<usize>) {
        let tokens: Vec<usize> = words.filter(|&k| !matches!(self.toks[k].tok, Tok::Comment(_))).collect();
        if tokens.is_empty() {
            return;
        }
        let local = self.local_of(&tokens);
        let name = self.last_comment.clone().filter(|c| !c.is_empty());
        self.push_mailbox(name, None, local, None);
    }

    pub(super) fn push_mailbox(&mut self, name: Option<Vec<u8>>, adl: Option<Vec<u8>>, local: Option<Vec<u8>>, host: Option<Vec<u8>>) {
        self.out.push(Address {
            name,
            adl,
            mailbox: Some(local.unwrap_or_else(|| MISSING_MAILBOX.to_vec())),
            host: Some(host.unwrap_or_else(|| MISSING_DOMAIN.to_vec())),
        });
    }

    /// A display name from the word tokens in `words`. Quoted strings are unquoted, and
    /// words are joined by one space where the message had whitespace.
    pub(super) fn phrase(&self, words: Range<usize>) -> Option<Vec<u8>> {
        let tokens: Vec<usize> = words.filter(|&k| !matches!(self.toks[k].tok, Tok::Comment(_))).collect();
        self.phrase_of(&tokens)
    }

    pub(super) fn phrase_of(&self, tokens: &[usize]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for &k in tokens {
            let t = &self.toks[k];
            if t.space_before && !out.is_empty() {
                out.push(b' ');
            }
            match &t.tok {
                Tok::Atom(a) | Tok::Quoted(a) | Tok::DomainLiteral(a) => out.extend_from_slice(a),
                Tok::Special(c) => out.push(*c),
                Tok::Comment(_) => {}
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// A local part from word tokens. Quoted strings keep their quotes, so `mailbox@host` stays a valid address.
    pub(super) fn local_of(&self, tokens: &[usize]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for (n, &k) in tokens.iter().enumerate() {
            let t = &self.toks[k];
            if n > 0 && t.space_before && !is_dot(t) && !is_dot(&self.toks[tokens[n - 1]]) {
                out.push(b' ');
            }
            match &t.tok {
                Tok::Atom(a) | Tok::DomainLiteral(a) => out.extend_from_slice(a),
                Tok::Quoted(q) => push_quoted(&mut out, q),
                Tok::Special(c) => out.push(*c),
                Tok::Comment(_) => {}
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// A local part inside `<...>`: word tokens up to `@`, `>` or another special.
    pub(super) fn local_part(&mut self) -> Option<Vec<u8>> {
        let mut tokens = Vec::new();
        while let Some(t) = self.peek() {
            match t {
                Tok::Atom(_) | Tok::Quoted(_) | Tok::DomainLiteral(_) | Tok::Special(b'.') => tokens.push(self.i),
                Tok::Comment(_) => {}
                _ => break,
            }
            self.i += 1;
        }
        self.local_of(&tokens)
    }

    /// A domain: atoms, dots and domain literals. It stops at a word that whitespace separates from the domain.
    pub(super) fn domain(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut prev_dot = false;
        while let Some(t) = self.toks.get(self.i) {
            match &t.tok {
                Tok::Atom(a) | Tok::DomainLiteral(a) => {
                    if !out.is_empty() && t.space_before && !prev_dot {
                        break;
                    }
                    out.extend_from_slice(a);
                    prev_dot = false;
                }
                Tok::Special(b'.') => {
                    out.push(b'.');
                    prev_dot = true;
                }
                Tok::Comment(c) => self.last_comment = Some(c.clone()),
                _ => break,
            }
            self.i += 1;
        }
        (!out.is_empty()).then_some(out)
    }
}
