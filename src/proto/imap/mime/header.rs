//! Header values: unfolding, RFC 2047 text, comments and quoted strings,
//! the `Content-Type` lexer, parameters with RFC 2231 continuations, and
//! `Content-Language` lists.

use super::*;

pub(super) fn is_wsp(b: u8) -> bool {
    matches!(b, b' ' | b'\t')
}

/// Unfolds a raw header value (drops CR and LF) and trims surrounding blanks.
pub(super) fn unfold(v: &[u8]) -> Vec<u8> {
    let joined: Vec<u8> = v.iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
    let start = joined.iter().position(|&b| !is_wsp(b)).unwrap_or(joined.len());
    let end = joined.iter().rposition(|&b| !is_wsp(b)).map_or(start, |i| i + 1);
    joined[start..end].to_vec()
}

pub(super) fn count_lines(body: &[u8]) -> usize {
    body.iter().filter(|&&b| b == b'\n').count()
}

/// Unfolds and RFC 2047-decodes a raw header value into UTF-8 (lossily for raw 8-bit bytes).
pub(super) fn decode_header_text(value: &[u8]) -> String {
    let mut buf = Vec::with_capacity(value.len() + 1);
    buf.extend_from_slice(value);
    // mail-parser's unstructured parser ends a value at a line break that is not folding.
    buf.push(b'\n');
    match MessageStream::new(&buf).parse_unstructured() {
        HeaderValue::Text(text) => text.into_owned(),
        _ => String::new(),
    }
}

/// Skips a comment that starts at `v[pos] == b'('`, nested comments included. Returns the
/// offset after it and its content, with backslash escapes resolved.
pub(super) fn read_comment(v: &[u8], pos: usize) -> (usize, Vec<u8>) {
    let mut depth = 0usize;
    let mut content = Vec::new();
    let mut i = pos;
    while i < v.len() {
        let c = v[i];
        match c {
            b'\\' => {
                if let Some(&next) = v.get(i + 1) {
                    content.push(next);
                }
                i += 2;
                continue;
            }
            b'(' => {
                depth += 1;
                if depth > 1 {
                    content.push(c);
                }
            }
            b')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return (i + 1, content);
                }
                content.push(c);
            }
            _ => content.push(c),
        }
        i += 1;
    }
    (v.len(), content)
}

/// Reads a quoted string that starts at `v[pos] == b'"'`. Returns the offset after it and
/// its content, with backslash escapes resolved. An unterminated string runs to the end of `v`.
pub(super) fn read_quoted(v: &[u8], pos: usize) -> (usize, Vec<u8>) {
    let mut content = Vec::new();
    let mut i = pos + 1;
    while i < v.len() {
        match v[i] {
            b'\\' => {
                if let Some(&next) = v.get(i + 1) {
                    content.push(next);
                }
                i += 2;
            }
            b'"' => return (i + 1, content),
            c => {
                content.push(c);
                i += 1;
            }
        }
    }
    (v.len(), content)
}

/// A small lexer for MIME structured header values (RFC 2045 tokens, quoted strings, comments).
pub(super) struct Lexer<'v> {
    pub(super) v: &'v [u8],
    pub(super) pos: usize,
}

impl<'v> Lexer<'v> {
    pub(super) fn new(v: &'v [u8]) -> Lexer<'v> {
        Lexer { v, pos: 0 }
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.v.len()
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.v.get(self.pos).copied()
    }

    pub(super) fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub(super) fn skip_cfws(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\r' | b'\n' => self.pos += 1,
                b'(' => self.pos = read_comment(self.v, self.pos).0,
                _ => break,
            }
        }
    }

    /// An RFC 2045 token. 8-bit bytes are accepted as token characters.
    pub(super) fn token(&mut self) -> &'v [u8] {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c <= b' ' || c == 0x7f || b"()<>@,;:\\\"/[]?=".contains(&c) {
                break;
            }
            self.pos += 1;
        }
        &self.v[start..self.pos]
    }

    /// A parameter value: a quoted string, or a run of bytes up to `;`, whitespace or a
    /// comment. Unquoted values may contain tspecials, as many real messages have them (`boundary=--=_x`).
    pub(super) fn value(&mut self) -> Vec<u8> {
        if self.peek() == Some(b'"') {
            let (next, content) = read_quoted(self.v, self.pos);
            self.pos = next;
            return content;
        }
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == b';' || c == b'(' || c.is_ascii_whitespace() {
                break;
            }
            self.pos += 1;
        }
        self.v[start..self.pos].to_vec()
    }
}

/// Parses `type/subtype *(; attribute=value)`. Gives `None` when there is no type or subtype.
pub(super) fn parse_content_type(v: &[u8]) -> Option<ContentType> {
    let mut lx = Lexer::new(v);
    lx.skip_cfws();
    let ty = lx.token().to_vec();
    lx.skip_cfws();
    if ty.is_empty() || !lx.eat(b'/') {
        return None;
    }
    lx.skip_cfws();
    let subtype = lx.token().to_vec();
    if subtype.is_empty() {
        return None;
    }
    let params = parse_params(&mut lx);
    Some(ContentType { ty, subtype, params })
}

/// Parses `*(; attribute=value)` up to the end of the lexer's input, leniently: a missing `;`
/// is tolerated, junk is skipped, and attributes without a value are dropped.
pub(super) fn parse_params(lx: &mut Lexer<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut params = Vec::new();
    loop {
        lx.skip_cfws();
        if lx.at_end() {
            break;
        }
        if lx.eat(b';') {
            continue;
        }
        let attribute = lx.token().to_vec();
        if attribute.is_empty() {
            lx.pos += 1; // junk byte
            continue;
        }
        lx.skip_cfws();
        if !lx.eat(b'=') {
            continue;
        }
        lx.skip_cfws();
        let value = lx.value();
        params.push((attribute, value));
    }
    merge_rfc2231(params)
}

/// Joins RFC 2231 continuations (`name*0`, `name*1*`, ...) into one parameter: `name` when
/// the first segment is plain, or `name*` when it is extended (`charset'lang'value`). The
/// joined parameter takes the place of its first segment.
pub(super) fn merge_rfc2231(params: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    enum Slot {
        Plain(Vec<u8>, Vec<u8>),
        /// Base name and segments: (number, extended, value).
        Joined(Vec<u8>, Vec<(u32, bool, Vec<u8>)>),
    }
    let mut slots: Vec<Slot> = Vec::new();
    // Lowercased base name -> index of its `Slot::Joined` in `slots`.
    let mut joined: HashMap<Vec<u8>, usize> = HashMap::new();
    for (name, value) in params {
        let section = name.iter().position(|&b| b == b'*').and_then(|star| {
            let rest = &name[star + 1..];
            let (digits, extended) = match rest.strip_suffix(b"*") {
                Some(d) => (d, true),
                None => (rest, false),
            };
            if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let number = std::str::from_utf8(digits).ok()?.parse::<u32>().ok()?;
            Some((name[..star].to_vec(), number, extended))
        });
        match section {
            Some((base, number, extended)) => match joined.get(&base.to_ascii_lowercase()) {
                Some(&index) => {
                    if let Slot::Joined(_, segments) = &mut slots[index] {
                        segments.push((number, extended, value));
                    }
                }
                None => {
                    joined.insert(base.to_ascii_lowercase(), slots.len());
                    slots.push(Slot::Joined(base, vec![(number, extended, value)]));
                }
            },
            None => slots.push(Slot::Plain(name, value)),
        }
    }
    slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Plain(name, value) => (name, value),
            Slot::Joined(mut base, mut segments) => {
                segments.sort_by_key(|s| s.0);
                if segments[0].1 {
                    base.push(b'*');
                }
                (base, segments.into_iter().flat_map(|s| s.2).collect())
            }
        })
        .collect()
}

/// Parses a Content-Language value: language tags separated by commas, with comments skipped.
pub(super) fn parse_language_list(v: &[u8]) -> Vec<Vec<u8>> {
    let mut lx = Lexer::new(v);
    let mut out = Vec::new();
    loop {
        lx.skip_cfws();
        if lx.at_end() {
            break;
        }
        if lx.eat(b',') {
            continue;
        }
        let start = lx.pos;
        while let Some(c) = lx.peek() {
            if c == b',' || c == b'(' || c.is_ascii_whitespace() {
                break;
            }
            lx.pos += 1;
        }
        out.push(v[start..lx.pos].to_vec());
    }
    out
}
