//! IMAP string encoding: `nstring`, `string`, quoted strings and
//! literals, body parameter lists and address lists in IMAP syntax.

use super::*;

/// Encodes an IMAP `nstring`: `NIL` for `None`, otherwise [`string`].
pub fn nstring(v: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.map_or(3, |v| v.len() + 2));
    push_nstring(&mut out, v);
    out
}

/// Encodes an IMAP `string`. It is a quoted string (with `\` and `"` escaped) when `v`
/// has no NUL, CR, LF or 8-bit bytes and is at most [`MAX_QUOTED_LEN`] bytes long.
/// Otherwise it is a literal `{n}\r\n...`. IMAP4rev1 allows NUL nowhere, so a NUL in a
/// literal is sent as byte 0x80, as Dovecot does.
pub fn string(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + 2);
    push_string(&mut out, v);
    out
}

/// Encodes `s` for a place where the grammar allows an `astring`, such as a mailbox name.
/// It is always a quoted string, of any length, unless `s` has a CR, LF, NUL or non-ASCII
/// character. Then it is a literal (see [`string`]).
pub fn astring_quoted(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    if quotable(s.as_bytes()) {
        push_quoted(&mut out, s.as_bytes());
    } else {
        push_literal(&mut out, s.as_bytes());
    }
    out
}

pub(super) fn quotable(v: &[u8]) -> bool {
    v.iter().all(|&b| b != 0 && b != b'\r' && b != b'\n' && b < 0x80)
}

pub(super) fn push_nstring(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => push_string(out, v),
        None => out.extend_from_slice(b"NIL"),
    }
}

pub(super) fn push_string(out: &mut Vec<u8>, v: &[u8]) {
    if v.len() <= MAX_QUOTED_LEN && quotable(v) {
        push_quoted(out, v);
    } else {
        push_literal(out, v);
    }
}

pub(super) fn push_quoted(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    for &b in v {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

pub(super) fn push_literal(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'{');
    push_num(out, v.len());
    out.extend_from_slice(b"}\r\n");
    out.extend(v.iter().map(|&b| if b == 0 { 0x80 } else { b }));
}

pub(super) fn push_num(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(n.to_string().as_bytes());
}

/// Writes `body-fld-param`: `NIL` or `("name" "value" ...)`. With `default_charset`,
/// `"charset" "us-ascii"` is added when no charset parameter is present.
pub(super) fn push_params(out: &mut Vec<u8>, params: &[(Vec<u8>, Vec<u8>)], default_charset: bool) {
    let add_charset = default_charset && !params.iter().any(|(k, _)| k.eq_ignore_ascii_case(b"charset"));
    if params.is_empty() && !add_charset {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        push_string(out, name);
        out.push(b' ');
        push_string(out, value);
    }
    if add_charset {
        if !params.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(b"\"charset\" \"us-ascii\"");
    }
    out.push(b')');
}

pub(super) fn write_addresses(out: &mut Vec<u8>, list: &[Address]) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        push_nstring(out, a.name.as_deref());
        out.push(b' ');
        push_nstring(out, a.adl.as_deref());
        out.push(b' ');
        push_nstring(out, a.mailbox.as_deref());
        out.push(b' ');
        push_nstring(out, a.host.as_deref());
        out.push(b')');
    }
    out.push(b')');
}
