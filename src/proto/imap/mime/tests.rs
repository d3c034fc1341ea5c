//! Tests of the MIME parser and its IMAP output.

use super::*;

/// Turns bare LF line endings into CRLF, as messages are stored.
fn crlf(s: &str) -> Vec<u8> {
    s.replace("\r\n", "\n").replace('\n', "\r\n").into_bytes()
}

fn s(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

fn sec(p: &Parsed<'_>, part: &[u32], what: SectionText) -> Option<String> {
    p.section(part, what).map(|v| s(&v))
}

// --- A strict reader for the IMAP data that this module writes, used to check its shape. ---

#[derive(Debug, Clone, PartialEq)]
enum Sx {
    Nil,
    Num(u64),
    Str(Vec<u8>),
    List(Vec<Sx>),
}

fn parse_sx(input: &[u8]) -> Result<Sx, String> {
    let mut pos = 0;
    let v = parse_item(input, &mut pos)?;
    if pos != input.len() {
        return Err(format!("trailing data at {pos}"));
    }
    Ok(v)
}

fn parse_item(s: &[u8], pos: &mut usize) -> Result<Sx, String> {
    match s.get(*pos) {
        Some(b'(') => {
            *pos += 1;
            let mut items: Vec<Sx> = Vec::new();
            loop {
                match s.get(*pos) {
                    Some(b')') => {
                        *pos += 1;
                        return Ok(Sx::List(items));
                    }
                    None => return Err("unterminated list".into()),
                    Some(b' ') if !items.is_empty() => {
                        *pos += 1;
                        if matches!(s.get(*pos), Some(b' ' | b')')) {
                            return Err(format!("bad spacing at {pos}"));
                        }
                    }
                    Some(b'(') if matches!(items.last(), Some(Sx::List(_))) => items.push(parse_item(s, pos)?),
                    Some(_) if items.is_empty() => items.push(parse_item(s, pos)?),
                    Some(_) if s[*pos - 1] == b' ' => items.push(parse_item(s, pos)?),
                    Some(_) => return Err(format!("missing space at {pos}")),
                }
            }
        }
        Some(b'"') => {
            *pos += 1;
            let mut out = Vec::new();
            loop {
                match s.get(*pos) {
                    None => return Err("unterminated quoted string".into()),
                    Some(b'"') => {
                        *pos += 1;
                        return Ok(Sx::Str(out));
                    }
                    Some(b'\\') => match s.get(*pos + 1) {
                        Some(&c @ (b'"' | b'\\')) => {
                            out.push(c);
                            *pos += 2;
                        }
                        _ => return Err("bad escape".into()),
                    },
                    Some(&c) if c == 0 || c == b'\r' || c == b'\n' || c >= 0x80 => return Err(format!("byte {c:#x} in quoted string")),
                    Some(&c) => {
                        out.push(c);
                        *pos += 1;
                    }
                }
            }
        }
        Some(b'{') => {
            let close = s[*pos..].iter().position(|&b| b == b'}').ok_or("bad literal")? + *pos;
            let n: usize = std::str::from_utf8(&s[*pos + 1..close])
                .map_err(|e| e.to_string())?
                .parse()
                .map_err(|_| "bad literal length")?;
            if s.get(close + 1..close + 3) != Some(b"\r\n") {
                return Err("literal without CRLF".into());
            }
            let data = s.get(close + 3..close + 3 + n).ok_or("short literal")?;
            if data.contains(&0) {
                return Err("NUL in literal".into());
            }
            *pos = close + 3 + n;
            Ok(Sx::Str(data.to_vec()))
        }
        Some(b'N') if s[*pos..].starts_with(b"NIL") => {
            *pos += 3;
            Ok(Sx::Nil)
        }
        Some(c) if c.is_ascii_digit() => {
            let start = *pos;
            while s.get(*pos).is_some_and(u8::is_ascii_digit) {
                *pos += 1;
            }
            Ok(Sx::Num(
                std::str::from_utf8(&s[start..*pos]).unwrap().parse().map_err(|_| "bad number")?,
            ))
        }
        other => Err(format!("unexpected {other:?} at {pos}")),
    }
}

/// The plain check from the brief: parentheses balance outside quoted strings and literals.
fn balanced(s: &[u8]) -> bool {
    let mut depth = 0i64;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => {
                i += 1;
                while i < s.len() && s[i] != b'"' {
                    i += if s[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' => {
                let Some(close) = s[i..].iter().position(|&b| b == b'}') else {
                    return false;
                };
                let Ok(n) = std::str::from_utf8(&s[i + 1..i + close]).unwrap_or("x").parse::<usize>() else {
                    return false;
                };
                i += close + 2 + n; // '}' CR LF, then n bytes; the loop's += 1 covers the last byte of CRLF
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    depth == 0
}

fn is_nstring(x: &Sx) -> bool {
    matches!(x, Sx::Nil | Sx::Str(_))
}

fn check_addresses(x: &Sx) -> Result<(), String> {
    match x {
        Sx::Nil => Ok(()),
        Sx::List(list) if !list.is_empty() => {
            for a in list {
                match a {
                    Sx::List(f) if f.len() == 4 && f.iter().all(is_nstring) => {}
                    other => return Err(format!("bad address {other:?}")),
                }
            }
            Ok(())
        }
        other => Err(format!("bad address list {other:?}")),
    }
}

fn check_envelope(x: &Sx) -> Result<(), String> {
    let Sx::List(f) = x else {
        return Err("envelope is not a list".into());
    };
    if f.len() != 10 {
        return Err(format!("envelope has {} fields", f.len()));
    }
    for (i, field) in f.iter().enumerate() {
        if (2..8).contains(&i) {
            check_addresses(field)?;
        } else if !is_nstring(field) {
            return Err(format!("envelope field {i} is {field:?}"));
        }
    }
    Ok(())
}

fn check_params(x: &Sx) -> Result<(), String> {
    match x {
        Sx::Nil => Ok(()),
        Sx::List(p) if !p.is_empty() && p.len() % 2 == 0 && p.iter().all(|v| matches!(v, Sx::Str(_))) => Ok(()),
        other => Err(format!("bad params {other:?}")),
    }
}

fn check_ext(f: &[Sx]) -> Result<(), String> {
    // disposition, language, location
    match &f[0] {
        Sx::Nil => {}
        Sx::List(d) if d.len() == 2 && matches!(d[0], Sx::Str(_)) => check_params(&d[1])?,
        other => return Err(format!("bad disposition {other:?}")),
    }
    match &f[1] {
        Sx::Nil | Sx::Str(_) => {}
        Sx::List(l) if !l.is_empty() && l.iter().all(|v| matches!(v, Sx::Str(_))) => {}
        other => return Err(format!("bad language {other:?}")),
    }
    if !is_nstring(&f[2]) {
        return Err(format!("bad location {:?}", f[2]));
    }
    Ok(())
}

/// Checks a BODY/BODYSTRUCTURE against the RFC 3501 grammar.
fn check_body(x: &Sx, ext: bool) -> Result<(), String> {
    let Sx::List(f) = x else {
        return Err(format!("body is not a list: {x:?}"));
    };
    if f.is_empty() {
        return Err("empty body".into());
    }
    if matches!(f[0], Sx::List(_)) {
        let n = f.iter().take_while(|v| matches!(v, Sx::List(_))).count();
        for part in &f[..n] {
            check_body(part, ext)?;
        }
        let rest = &f[n..];
        if !matches!(rest.first(), Some(Sx::Str(_))) {
            return Err(format!("multipart without subtype: {rest:?}"));
        }
        if ext {
            if rest.len() != 5 {
                return Err(format!("multipart extension has {} items", rest.len() - 1));
            }
            check_params(&rest[1])?;
            check_ext(&rest[2..])?;
        } else if rest.len() != 1 {
            return Err("BODY multipart with extension data".into());
        }
        return Ok(());
    }
    if f.len() < 7 {
        return Err(format!("basic body with {} fields", f.len()));
    }
    let (Sx::Str(ty), Sx::Str(sub)) = (&f[0], &f[1]) else {
        return Err("type/subtype not strings".into());
    };
    check_params(&f[2])?;
    if !is_nstring(&f[3]) || !is_nstring(&f[4]) || !matches!(f[5], Sx::Str(_)) || !matches!(f[6], Sx::Num(_)) {
        return Err(format!("bad body fields {f:?}"));
    }
    let mut i = 7;
    if ty.eq_ignore_ascii_case(b"message") && sub.eq_ignore_ascii_case(b"rfc822") {
        check_envelope(f.get(7).ok_or("no envelope")?)?;
        check_body(f.get(8).ok_or("no body")?, ext)?;
        if !matches!(f.get(9), Some(Sx::Num(_))) {
            return Err("message/rfc822 without line count".into());
        }
        i = 10;
    } else if ty.eq_ignore_ascii_case(b"text") {
        if !matches!(f.get(7), Some(Sx::Num(_))) {
            return Err("text without line count".into());
        }
        i = 8;
    }
    let rest = &f[i..];
    if ext {
        if rest.len() != 4 || !is_nstring(&rest[0]) {
            return Err(format!("bad single-part extension {rest:?}"));
        }
        check_ext(&rest[1..])?;
    } else if !rest.is_empty() {
        return Err(format!("BODY with extension data {rest:?}"));
    }
    Ok(())
}

/// Checks that the tree's ranges nest and stay inside the message.
fn check_tree(e: &Entity, outer: Range<usize>) {
    assert!(outer.start <= e.header.start, "{e:?} outside {outer:?}");
    assert!(e.header.start <= e.header.end && e.header.end <= e.body.start, "{e:?}");
    assert!(e.body.start <= e.body.end && e.body.end <= outer.end, "{e:?} outside {outer:?}");
    for f in &e.fields {
        assert!(e.header.start <= f.full.start && f.full.end <= e.header.end, "{f:?} in {e:?}");
        assert!(f.value.start <= f.value.end && f.value.end <= f.full.end, "{f:?}");
    }
    match &e.kind {
        Kind::Leaf => {}
        Kind::Multipart(children) => {
            let mut last = e.body.start;
            for c in children {
                assert!(c.header.start >= last, "parts out of order");
                check_tree(c, e.body.clone());
                last = c.body.end;
            }
        }
        Kind::Message(inner) => {
            assert_eq!(inner.header.start, e.body.start);
            assert_eq!(inner.body.end, e.body.end);
            check_tree(inner, e.body.clone());
        }
    }
}

/// Runs every accessor on `raw` and checks the invariants that hold for any input.
fn exercise(raw: &[u8]) {
    let p = Parsed::new(raw);
    check_tree(&p.root, 0..raw.len());
    assert_eq!(p.section(&[], SectionText::Full).as_deref(), Some(raw));
    for ext in [false, true] {
        let bs = p.body_structure(ext);
        assert!(balanced(&bs), "unbalanced: {}", s(&bs));
        let sx = parse_sx(&bs).unwrap_or_else(|e| panic!("{e}: {}", s(&bs)));
        check_body(&sx, ext).unwrap_or_else(|e| panic!("{e}: {}", s(&bs)));
    }
    let env = p.envelope();
    assert!(balanced(&env), "unbalanced envelope: {}", s(&env));
    check_envelope(&parse_sx(&env).unwrap_or_else(|e| panic!("{e}: {}", s(&env)))).unwrap();
    let header = p.section(&[], SectionText::Header).unwrap();
    let text = p.section(&[], SectionText::Text).unwrap();
    assert!(raw.starts_with(&header) && raw.ends_with(&text) && header.len() + text.len() <= raw.len());
    for part in [&[1][..], &[2], &[1, 1], &[2, 1], &[2, 2], &[3, 1, 2], &[1, 1, 1, 1]] {
        // Sections are exact slices of the input: the ranges that check_tree validated.
        match p.resolve(part) {
            Some(e) => {
                assert_eq!(p.section(part, SectionText::Full).as_deref(), Some(&raw[e.body.clone()]));
                assert_eq!(p.section(part, SectionText::Mime).as_deref(), Some(&raw[e.header.clone()]));
            }
            None => assert_eq!(p.section(part, SectionText::Full), None),
        }
        for what in [SectionText::Header, SectionText::Text] {
            let _ = p.section(part, what);
        }
        let _ = p.section(part, SectionText::HeaderFields(vec!["subject".into(), "from".into()]));
        let _ = p.section(part, SectionText::HeaderFieldsNot(vec!["subject".into()]));
    }
    let _ = p.header_values("subject");
    let _ = p.header_values("from");
    let _ = p.body_text();
    let _ = p.sent_date();
}

const SIMPLE: &str = "Return-Path: <a@example.org>\n\
From: Alice Example <alice@example.org>\n\
To: bob@example.net\n\
Subject: Hello\n\
\x20 world\n\
Date: Thu, 15 Feb 2007 01:02:03 +0200\n\
Message-ID: <m1@example.org>\n\
\n\
Hi Bob,\n\
second line\n";

#[test]
fn single_part_message() {
    let raw = crlf(SIMPLE);
    let p = Parsed::new(&raw);
    let body = "Hi Bob,\r\nsecond line\r\n";
    assert_eq!(sec(&p, &[], SectionText::Full).unwrap(), s(&raw));
    assert_eq!(sec(&p, &[1], SectionText::Full).unwrap(), body);
    assert_eq!(sec(&p, &[], SectionText::Text).unwrap(), body);
    let header = sec(&p, &[], SectionText::Header).unwrap();
    assert!(header.starts_with("Return-Path:") && header.ends_with("<m1@example.org>\r\n\r\n"));
    assert_eq!(header.len() + body.len(), raw.len());
    // Part 1 of a single-part message is its body; its only sub-part is itself, and it has no HEADER.
    assert_eq!(sec(&p, &[2], SectionText::Full), None);
    assert_eq!(sec(&p, &[1, 1], SectionText::Full), sec(&p, &[1], SectionText::Full));
    assert_eq!(sec(&p, &[1, 2], SectionText::Full), None);
    assert_eq!(sec(&p, &[1], SectionText::Header), None);
    assert_eq!(sec(&p, &[0], SectionText::Full), None);
    assert_eq!(sec(&p, &[], SectionText::Mime), None);
    assert_eq!(
        s(&p.body_structure(false)),
        r#"("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 22 2)"#
    );
    assert_eq!(
        s(&p.body_structure(true)),
        r#"("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 22 2 NIL NIL NIL NIL)"#
    );
    assert_eq!(
        s(&p.envelope()),
        r#"("Thu, 15 Feb 2007 01:02:03 +0200" "Hello  world" (("Alice Example" NIL "alice" "example.org")) (("Alice Example" NIL "alice" "example.org")) (("Alice Example" NIL "alice" "example.org")) ((NIL NIL "bob" "example.net")) NIL NIL NIL "<m1@example.org>")"#
    );
    assert_eq!(p.header_values("SUBJECT"), vec!["Hello world".to_string()]);
    assert_eq!(p.sent_date(), Some(1_171_494_123));
    assert_eq!(p.body_text(), body);
}

const ALTERNATIVE: &str = "From: a@example.org\n\
Subject: alt\n\
MIME-Version: 1.0\n\
Content-Type: multipart/alternative; boundary=\"=_alt\"\n\
\n\
This is a MIME preamble.\n\
--=_alt\n\
Content-Type: text/plain; charset=utf-8\n\
Content-Transfer-Encoding: quoted-printable\n\
\n\
Caf=C3=A9 au lait\n\
--=_alt\n\
Content-Type: text/html; charset=utf-8\n\
\n\
<p>Caf\u{e9}</p>\n\
\n\
--=_alt--\n\
epilogue\n";

#[test]
fn multipart_alternative() {
    let raw = crlf(ALTERNATIVE);
    let p = Parsed::new(&raw);
    assert_eq!(sec(&p, &[1], SectionText::Full).unwrap(), "Caf=C3=A9 au lait");
    assert_eq!(sec(&p, &[2], SectionText::Full).unwrap(), "<p>Caf\u{e9}</p>\r\n");
    assert_eq!(
        sec(&p, &[1], SectionText::Mime).unwrap(),
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    );
    assert_eq!(
        sec(&p, &[2], SectionText::Mime).unwrap(),
        "Content-Type: text/html; charset=utf-8\r\n\r\n"
    );
    assert_eq!(sec(&p, &[3], SectionText::Full), None);
    assert_eq!(sec(&p, &[1, 1], SectionText::Full).unwrap(), "Caf=C3=A9 au lait");
    assert_eq!(sec(&p, &[1, 2], SectionText::Full), None);
    assert_eq!(sec(&p, &[2], SectionText::Text), None);
    let text = sec(&p, &[], SectionText::Text).unwrap();
    assert!(text.starts_with("This is a MIME preamble.\r\n--=_alt\r\n") && text.ends_with("--=_alt--\r\nepilogue\r\n"));
    assert_eq!(
        s(&p.body_structure(false)),
        r#"(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 17 0)("text" "html" ("charset" "utf-8") NIL NIL "7bit" 14 1) "alternative")"#
    );
    assert_eq!(
        s(&p.body_structure(true)),
        r#"(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 17 0 NIL NIL NIL NIL)("text" "html" ("charset" "utf-8") NIL NIL "7bit" 14 1 NIL NIL NIL NIL) "alternative" ("boundary" "=_alt") NIL NIL NIL)"#
    );
    assert_eq!(p.body_text(), "Caf\u{e9} au lait\n<p>Caf\u{e9}</p>\r\n");
}

const MIXED: &str = "From: \"Doe, John\" <john@example.com>\n\
To: Mary <mary@example.com>, jane@example.com\n\
Cc: undisclosed-recipients:;\n\
Subject: report\n\
Content-Type: multipart/mixed; boundary=outer\n\
\n\
--outer\n\
Content-Type: multipart/alternative; boundary=inner\n\
\n\
--inner\n\
Content-Type: text/plain\n\
\n\
plain text\n\
--inner\n\
Content-Type: text/html\n\
\n\
<b>html</b>\n\
--inner--\n\
\n\
--outer\n\
Content-Type: application/pdf; name=\"report.pdf\"\n\
Content-Transfer-Encoding: base64\n\
Content-Disposition: attachment; filename=\"report.pdf\"\n\
Content-ID: <pdf@x>\n\
Content-Description: The report\n\
Content-Language: en\n\
Content-Location: http://example.com/r.pdf\n\
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n\
\n\
JVBERi0xLjQK\n\
--outer--\n";

#[test]
fn multipart_mixed_with_nested_alternative_and_attachment() {
    let raw = crlf(MIXED);
    let p = Parsed::new(&raw);
    assert_eq!(sec(&p, &[1, 1], SectionText::Full).unwrap(), "plain text");
    assert_eq!(sec(&p, &[1, 2], SectionText::Full).unwrap(), "<b>html</b>");
    assert_eq!(sec(&p, &[1, 2], SectionText::Mime).unwrap(), "Content-Type: text/html\r\n\r\n");
    assert_eq!(
        sec(&p, &[1], SectionText::Full).unwrap(),
        "--inner\r\nContent-Type: text/plain\r\n\r\nplain text\r\n--inner\r\nContent-Type: text/html\r\n\r\n<b>html</b>\r\n--inner--\r\n"
    );
    assert_eq!(
        sec(&p, &[1], SectionText::Mime).unwrap(),
        "Content-Type: multipart/alternative; boundary=inner\r\n\r\n"
    );
    assert_eq!(sec(&p, &[2], SectionText::Full).unwrap(), "JVBERi0xLjQK");
    assert_eq!(sec(&p, &[1, 3], SectionText::Full), None);
    assert_eq!(sec(&p, &[2, 1], SectionText::Full).unwrap(), "JVBERi0xLjQK");
    assert_eq!(sec(&p, &[2, 2], SectionText::Full), None);
    assert_eq!(sec(&p, &[3], SectionText::Full), None);
    assert_eq!(
        s(&p.body_structure(true)),
        concat!(
            r#"((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL NIL NIL NIL)"#,
            r#"("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 11 0 NIL NIL NIL NIL) "alternative" ("boundary" "inner") NIL NIL NIL)"#,
            r#"("application" "pdf" ("name" "report.pdf") "<pdf@x>" "The report" "base64" 12 "Q2hlY2sgSW50ZWdyaXR5IQ==" ("attachment" ("filename" "report.pdf")) ("en") "http://example.com/r.pdf")"#,
            r#" "mixed" ("boundary" "outer") NIL NIL NIL)"#
        )
    );
    assert_eq!(
        s(&p.envelope()),
        concat!(
            r#"(NIL "report" (("Doe, John" NIL "john" "example.com")) (("Doe, John" NIL "john" "example.com")) (("Doe, John" NIL "john" "example.com")) "#,
            r#"(("Mary" NIL "mary" "example.com")(NIL NIL "jane" "example.com")) ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) NIL NIL NIL)"#
        )
    );
    // The attachment is not text, so SEARCH BODY does not see it.
    assert_eq!(p.body_text(), "plain text\n<b>html</b>");
}

const RFC822: &str = "From: outer@example.org\n\
Subject: fwd\n\
Content-Type: multipart/mixed; boundary=\"b1\"\n\
\n\
--b1\n\
Content-Type: text/plain\n\
\n\
See attached.\n\
--b1\n\
Content-Type: message/rfc822\n\
Content-Disposition: inline\n\
\n\
From: Inner Sender <inner@example.net>\n\
To: grp: a@x.org, \"B\" <b@y.org>;, c@z.org\n\
Subject: inner subject\n\
Date: Sun, 12 Aug 2012 12:34:56 +0300\n\
Message-ID: <inner@id>\n\
In-Reply-To: <prev@id>\n\
Content-Type: multipart/alternative; boundary=\"b2\"\n\
\n\
--b2\n\
Content-Type: text/plain; charset=iso-8859-1\n\
Content-Transfer-Encoding: quoted-printable\n\
\n\
Gr=FC=DFe\n\
--b2\n\
Content-Type: text/html\n\
\n\
<i>hi</i>\n\
--b2--\n\
--b1--\n";

#[test]
fn message_rfc822_attachment() {
    let raw = crlf(RFC822);
    let p = Parsed::new(&raw);
    let inner_header = "From: Inner Sender <inner@example.net>\r\nTo: grp: a@x.org, \"B\" <b@y.org>;, c@z.org\r\nSubject: inner subject\r\nDate: Sun, 12 Aug 2012 12:34:56 +0300\r\nMessage-ID: <inner@id>\r\nIn-Reply-To: <prev@id>\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n";
    let inner_text = "--b2\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe\r\n--b2\r\nContent-Type: text/html\r\n\r\n<i>hi</i>\r\n--b2--";
    assert_eq!(sec(&p, &[2], SectionText::Full).unwrap(), format!("{inner_header}{inner_text}"));
    assert_eq!(sec(&p, &[2], SectionText::Header).unwrap(), inner_header);
    assert_eq!(sec(&p, &[2], SectionText::Text).unwrap(), inner_text);
    assert_eq!(
        sec(&p, &[2], SectionText::Mime).unwrap(),
        "Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"
    );
    assert_eq!(sec(&p, &[2, 1], SectionText::Full).unwrap(), "Gr=FC=DFe");
    assert_eq!(
        sec(&p, &[2, 1], SectionText::Mime).unwrap(),
        "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    );
    assert_eq!(sec(&p, &[2, 2], SectionText::Full).unwrap(), "<i>hi</i>");
    assert_eq!(sec(&p, &[2, 3], SectionText::Full), None);
    assert_eq!(sec(&p, &[2, 1, 1], SectionText::Full).unwrap(), "Gr=FC=DFe");
    assert_eq!(sec(&p, &[2, 1, 2], SectionText::Full), None);
    assert_eq!(sec(&p, &[2, 1], SectionText::Header), None);
    assert_eq!(
        sec(&p, &[2], SectionText::HeaderFields(vec!["subject".into(), "DATE".into()])).unwrap(),
        "Subject: inner subject\r\nDate: Sun, 12 Aug 2012 12:34:56 +0300\r\n\r\n"
    );
    let inner_env = concat!(
        r#"("Sun, 12 Aug 2012 12:34:56 +0300" "inner subject" (("Inner Sender" NIL "inner" "example.net")) (("Inner Sender" NIL "inner" "example.net")) "#,
        r#"(("Inner Sender" NIL "inner" "example.net")) ((NIL NIL "grp" NIL)(NIL NIL "a" "x.org")("B" NIL "b" "y.org")(NIL NIL NIL NIL)(NIL NIL "c" "z.org")) "#,
        r#"NIL NIL "<prev@id>" "<inner@id>")"#
    );
    let size = inner_header.len() + inner_text.len();
    let lines = format!("{inner_header}{inner_text}").matches('\n').count();
    assert_eq!(
        s(&p.body_structure(false)),
        format!(
            r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 0)("message" "rfc822" NIL NIL NIL "7bit" {size} {inner_env} (("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 9 0)("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 9 0) "alternative") {lines}) "mixed")"#
        )
    );
    let bs = s(&p.body_structure(true));
    assert!(
        bs.contains(&format!(
            r#""alternative" ("boundary" "b2") NIL NIL NIL) {lines} NIL ("inline" NIL) NIL NIL)"#
        )),
        "{bs}"
    );
    assert_eq!(p.body_text(), "See attached.\nGr\u{fc}\u{df}e\n<i>hi</i>");
    // The top-level envelope is the outer message's.
    assert!(s(&p.envelope()).starts_with(r#"(NIL "fwd" ((NIL NIL "outer" "example.org"))"#));
}

#[test]
fn rfc822_with_single_part_body_and_top_level_rfc822() {
    let raw = crlf("Content-Type: message/rfc822\n\nSubject: in\n\nbody\n");
    let p = Parsed::new(&raw);
    assert_eq!(sec(&p, &[1], SectionText::Full).unwrap(), "Subject: in\r\n\r\nbody\r\n");
    assert_eq!(sec(&p, &[1], SectionText::Header).unwrap(), "Subject: in\r\n\r\n");
    assert_eq!(sec(&p, &[1], SectionText::Text).unwrap(), "body\r\n");
    assert_eq!(sec(&p, &[1, 1], SectionText::Full).unwrap(), "body\r\n");
    assert_eq!(sec(&p, &[1, 2], SectionText::Full), None);
    assert_eq!(
        s(&p.body_structure(false)),
        r#"("message" "rfc822" NIL NIL NIL "7bit" 21 (NIL "in" NIL NIL NIL NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1) 3)"#
    );
}

#[test]
fn header_fields_and_not() {
    let raw = crlf("From: a@b.c\nX-Long: one\n\ttwo\nsubject: s\nTo: d@e.f\n\nbody\n");
    let p = Parsed::new(&raw);
    assert_eq!(
        sec(&p, &[], SectionText::HeaderFields(vec!["X-LONG".into(), "Subject".into()])).unwrap(),
        "X-Long: one\r\n\ttwo\r\nsubject: s\r\n\r\n"
    );
    assert_eq!(
        sec(&p, &[], SectionText::HeaderFieldsNot(vec!["x-long".into(), "SUBJECT".into()])).unwrap(),
        "From: a@b.c\r\nTo: d@e.f\r\n\r\n"
    );
    assert_eq!(sec(&p, &[], SectionText::HeaderFields(vec!["Cc".into()])).unwrap(), "\r\n");
    assert_eq!(p.header_values("x-long"), vec!["one two".to_string()]);
    // A header that ends at the end of the input without a line break.
    let raw = b"Subject: cut".to_vec();
    let p = Parsed::new(&raw);
    assert_eq!(
        sec(&p, &[], SectionText::HeaderFields(vec!["subject".into()])).unwrap(),
        "Subject: cut\r\n\r\n"
    );
    assert_eq!(sec(&p, &[], SectionText::Header).unwrap(), "Subject: cut");
    assert_eq!(sec(&p, &[], SectionText::Text).unwrap(), "");
}

#[test]
fn nonexistent_sections() {
    let raw = crlf(RFC822);
    let p = Parsed::new(&raw);
    for part in [
        &[0][..],
        &[3],
        &[1, 2],
        &[1, 1, 0],
        &[2, 0],
        &[2, 3],
        &[2, 1, 2],
        &[2, 2, 1, 2],
        &[u32::MAX],
    ] {
        assert_eq!(p.section(part, SectionText::Full), None, "{part:?}");
        assert_eq!(p.section(part, SectionText::Mime), None, "{part:?}");
    }
    // HEADER/TEXT only apply to message/rfc822 parts and the top level.
    assert_eq!(p.section(&[1], SectionText::Header), None);
    assert_eq!(p.section(&[1], SectionText::Text), None);
    assert_eq!(p.section(&[1], SectionText::HeaderFields(vec!["x".into()])), None);
    assert_eq!(p.section(&[2, 2], SectionText::HeaderFieldsNot(vec![])), None);
}

/// Repeated address fields are joined, as Dovecot does (CPython's msg_20.txt has
/// `Cc:`, `CC:` and `cc:`, msg_25.txt two `To:`). Other fields keep the first occurrence.
#[test]
fn envelope_joins_repeated_address_fields() {
    let raw = crlf(
        "From: a@x.org\n\
To: t1@x.org\n\
Cc: c1@x.org\n\
Subject: first\n\
CC: c2@x.org, c3@x.org\n\
To: grp: t2@x.org;\n\
cc: \"C Four\" <c4@x.org>\n\
Subject: second\n\
Reply-To:\n\
Reply-To: r1@x.org\n\
Bcc: b@x.org\n\
From: A2 <a2@x.org>\n\
\n\
body\n",
    );
    let p = Parsed::new(&raw);
    assert_eq!(
        s(&p.envelope()),
        "(NIL \"first\" \
((NIL NIL \"a\" \"x.org\")(\"A2\" NIL \"a2\" \"x.org\")) \
((NIL NIL \"a\" \"x.org\")(\"A2\" NIL \"a2\" \"x.org\")) \
((NIL NIL \"r1\" \"x.org\")) \
((NIL NIL \"t1\" \"x.org\")(NIL NIL \"grp\" NIL)(NIL NIL \"t2\" \"x.org\")(NIL NIL NIL NIL)) \
((NIL NIL \"c1\" \"x.org\")(NIL NIL \"c2\" \"x.org\")(NIL NIL \"c3\" \"x.org\")(\"C Four\" NIL \"c4\" \"x.org\")) \
((NIL NIL \"b\" \"x.org\")) NIL NIL)"
    );
    // The same inside a message/rfc822 part, in BODYSTRUCTURE.
    let raw = crlf(
        "Content-Type: message/rfc822\n\
\n\
To: t1@x.org\n\
To: t2@x.org\n\
\n\
hi\n",
    );
    let p = Parsed::new(&raw);
    let bs = s(&p.body_structure(false));
    assert!(
        bs.contains("NIL NIL NIL NIL NIL ((NIL NIL \"t1\" \"x.org\")(NIL NIL \"t2\" \"x.org\")) NIL NIL NIL NIL)"),
        "{bs}"
    );
}

/// The line break before a delimiter is the delimiter's, also when it is the empty
/// line that would end a part's header (CPython's msg_47.txt `BODY[1.MIME]` and
/// msg_12.txt `BODY[3.2.MIME]`): `.MIME` ends with the last field's line break.
#[test]
fn mime_header_before_delimiter_has_no_empty_line() {
    let raw = crlf(
        "Content-Type: multipart/mixed; boundary=foo\n\
\n\
--foo\n\
Content-Type: text/plain\n\
bar\n\
\n\
--foo\n\
Content-Type: text/plain\n\
\n\
\n\
--foo\n\
Content-Type: multipart/mixed; boundary=foobar\n\
\n\
--foobar\n\
Content-Type: text/plain; charset=\"iso-8859-3\"\n\
\n\
--foobar--\n\
\n\
--foo\n\
Content-Type: message/rfc822\n\
\n\
Subject: inner\n\
\n\
--foo--\n",
    );
    let p = Parsed::new(&raw);
    assert_eq!(sec(&p, &[1], SectionText::Mime).unwrap(), "Content-Type: text/plain\r\nbar\r\n");
    assert_eq!(sec(&p, &[1], SectionText::Full).unwrap(), "");
    // An empty line before an empty line before the delimiter still ends the header.
    assert_eq!(sec(&p, &[2], SectionText::Mime).unwrap(), "Content-Type: text/plain\r\n\r\n");
    assert_eq!(sec(&p, &[2], SectionText::Full).unwrap(), "");
    // The multipart's own delimiter right after its header is not an enclosing one,
    // even where the enclosing boundary is a prefix of it.
    assert_eq!(
        sec(&p, &[3], SectionText::Mime).unwrap(),
        "Content-Type: multipart/mixed; boundary=foobar\r\n\r\n"
    );
    assert_eq!(
        sec(&p, &[3, 1], SectionText::Mime).unwrap(),
        "Content-Type: text/plain; charset=\"iso-8859-3\"\r\n"
    );
    assert_eq!(sec(&p, &[3, 1], SectionText::Full).unwrap(), "");
    // The header of an encapsulated message follows the same rule.
    assert_eq!(sec(&p, &[4], SectionText::Mime).unwrap(), "Content-Type: message/rfc822\r\n\r\n");
    assert_eq!(sec(&p, &[4], SectionText::Full).unwrap(), "Subject: inner\r\n");
    assert_eq!(sec(&p, &[4], SectionText::Header).unwrap(), "Subject: inner\r\n");
    assert_eq!(sec(&p, &[4], SectionText::Text).unwrap(), "");
    assert_eq!(
        s(&p.body_structure(false)),
        "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)\
(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)\
((\"text\" \"plain\" (\"charset\" \"iso-8859-3\") NIL NIL \"7bit\" 0 0) \"mixed\")\
(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 16 (NIL \"inner\" NIL NIL NIL NIL NIL NIL NIL NIL) \
(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0) 1) \"mixed\")"
    );
    exercise(&raw);
}

/// A part that is neither multipart nor message/rfc822 has one sub-part, number 1: the
/// part itself (RFC 3501 6.4.5). Dovecot answers `BODY[1.1]` and `BODY[1.1.MIME]` so.
#[test]
fn non_multipart_part_is_its_own_part_one() {
    let raw = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\
\n\
--b\n\
Content-Type: text/plain\n\
\n\
one\n\
--b\n\
Content-Type: multipart/alternative; boundary=c\n\
\n\
--c\n\
Content-Type: text/html\n\
\n\
<b>two</b>\n\
--c--\n\
--b--\n",
    );
    let p = Parsed::new(&raw);
    for part in [&[1, 1][..], &[1, 1, 1], &[2, 1, 1], &[2, 1, 1, 1]] {
        let same = &part[..part.len() - 1];
        assert_eq!(p.section(part, SectionText::Full), p.section(same, SectionText::Full), "{part:?}");
        assert_eq!(p.section(part, SectionText::Mime), p.section(same, SectionText::Mime), "{part:?}");
    }
    assert_eq!(sec(&p, &[1, 1], SectionText::Full).unwrap(), "one");
    assert_eq!(sec(&p, &[1, 1, 1], SectionText::Mime).unwrap(), "Content-Type: text/plain\r\n\r\n");
    assert_eq!(sec(&p, &[2, 1, 1], SectionText::Full).unwrap(), "<b>two</b>");
    assert_eq!(sec(&p, &[2, 1, 1], SectionText::Mime).unwrap(), "Content-Type: text/html\r\n\r\n");
    // Only part 1 exists below a non-multipart part, and it has no HEADER or TEXT.
    for part in [&[1, 2][..], &[1, 1, 2], &[1, 0], &[2, 2], &[2, 1, 2]] {
        assert_eq!(p.section(part, SectionText::Full), None, "{part:?}");
        assert_eq!(p.section(part, SectionText::Mime), None, "{part:?}");
    }
    assert_eq!(p.section(&[1, 1], SectionText::Header), None);
    assert_eq!(p.section(&[1, 1], SectionText::Text), None);
}

#[test]
fn envelope_groups_comments_and_routes() {
    let raw = crlf(
        "Date: Thu, 15 Feb 2007 01:02:03 +0200\n\
From: user@domain (Real Name)\n\
Sender: \n\
To: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\n\
Cc: group:;, group2: (foo) ;\n\
Bcc: <@route1,@route2:user@domain>, \"Q. \\\"Quote\\\" Person\" <\"odd local\"@x.org>\n\
\n\
body\n",
    );
    let p = Parsed::new(&raw);
    assert_eq!(
        s(&p.envelope()),
        concat!(
            r#"("Thu, 15 Feb 2007 01:02:03 +0200" NIL (("Real Name" NIL "user" "domain")) (("Real Name" NIL "user" "domain")) (("Real Name" NIL "user" "domain")) "#,
            r#"((NIL NIL "group" NIL)(NIL NIL "g1" "d1.org")(NIL NIL "g2" "d2.org")(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL "g3" "d3.org")(NIL NIL NIL NIL)) "#,
            r#"((NIL NIL "group" NIL)(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL NIL NIL)) "#,
            r#"((NIL "@route1,@route2" "user" "domain")("Q. \"Quote\" Person" NIL "\"odd local\"" "x.org")) NIL NIL)"#
        )
    );
}

#[test]
fn envelope_with_missing_and_broken_headers() {
    let p = Parsed::new(b"X-Other: 1\r\n\r\nbody");
    assert_eq!(s(&p.envelope()), "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
    assert_eq!(p.sent_date(), None);
    let raw = crlf("From: root\nTo: , ,\nCc: <>\nSubject:\nDate: not a date\nReply-To: Mary Smith <mary@x.org\n\n");
    let p = Parsed::new(&raw);
    assert_eq!(
        s(&p.envelope()),
        concat!(
            r#"("not a date" "" ((NIL NIL "root" "MISSING_DOMAIN")) ((NIL NIL "root" "MISSING_DOMAIN")) (("Mary Smith" NIL "mary" "x.org")) "#,
            r#"NIL ((NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")) NIL NIL NIL)"#
        )
    );
    assert_eq!(p.sent_date(), None);
    // A name before a bare addr-spec, and a missing comma between addresses.
    let p = Parsed::new(b"To: John john@x.org bob@y.org\r\n\r\n");
    assert!(
        s(&p.envelope()).contains(r#"(("John" NIL "john" "x.org")(NIL NIL "bob" "y.org"))"#),
        "{}",
        s(&p.envelope())
    );
}

#[test]
fn rfc2047_names_stay_encoded_in_envelope_and_decode_for_search() {
    let raw = crlf(
        "From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jm@example.de>\n\
To: \"=?ISO-8859-1?Q?Andr=E9?=\" <andre@example.fr>\n\
Subject: =?utf-8?b?w6l0w6k=?= report\n\
\n\
x\n",
    );
    let p = Parsed::new(&raw);
    assert_eq!(
        s(&p.envelope()),
        concat!(
            r#"(NIL "=?utf-8?b?w6l0w6k=?= report" (("=?utf-8?q?J=C3=B6rg_M=C3=BCller?=" NIL "jm" "example.de")) "#,
            r#"(("=?utf-8?q?J=C3=B6rg_M=C3=BCller?=" NIL "jm" "example.de")) (("=?utf-8?q?J=C3=B6rg_M=C3=BCller?=" NIL "jm" "example.de")) "#,
            r#"(("=?ISO-8859-1?Q?Andr=E9?=" NIL "andre" "example.fr")) NIL NIL NIL NIL)"#
        )
    );
    assert_eq!(p.header_values("from"), vec!["J\u{f6}rg M\u{fc}ller <jm@example.de>".to_string()]);
    assert_eq!(p.header_values("Subject"), vec!["\u{e9}t\u{e9} report".to_string()]);
    // mail-parser decodes encoded-words inside quoted strings too (padding them with spaces).
    assert!(p.header_values("to")[0].contains("Andr\u{e9}"), "{:?}", p.header_values("to"));
    assert!(p.header_values("cc").is_empty());
    // Raw 8-bit header bytes go out as a literal.
    let p = Parsed::new("Subject: caf\u{e9}\r\n\r\n".as_bytes());
    assert_eq!(s(&p.envelope()), "(NIL {5}\r\ncaf\u{e9} NIL NIL NIL NIL NIL NIL NIL NIL)");
    assert_eq!(p.header_values("subject"), vec!["caf\u{e9}".to_string()]);
}

#[test]
fn bare_lf_input() {
    let raw = ALTERNATIVE.as_bytes();
    let p = Parsed::new(raw);
    assert_eq!(sec(&p, &[1], SectionText::Full).unwrap(), "Caf=C3=A9 au lait");
    assert_eq!(
        sec(&p, &[2], SectionText::Mime).unwrap(),
        "Content-Type: text/html; charset=utf-8\n\n"
    );
    assert_eq!(
        sec(&p, &[], SectionText::HeaderFields(vec!["subject".into()])).unwrap(),
        "Subject: alt\n\n"
    );
    assert_eq!(
        s(&p.body_structure(false)),
        r#"(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 17 0)("text" "html" ("charset" "utf-8") NIL NIL "7bit" 13 1) "alternative")"#
    );
    let raw = RFC822.as_bytes();
    let p = Parsed::new(raw);
    assert_eq!(sec(&p, &[2, 2], SectionText::Full).unwrap(), "<i>hi</i>");
    assert_eq!(
        sec(&p, &[2], SectionText::Header).unwrap().lines().next(),
        Some("From: Inner Sender <inner@example.net>")
    );
    exercise(raw);
    exercise(MIXED.as_bytes());
    exercise(SIMPLE.as_bytes());
}

#[test]
fn empty_message() {
    let p = Parsed::new(b"");
    assert_eq!(p.section(&[], SectionText::Full), Some(Vec::new()));
    assert_eq!(p.section(&[], SectionText::Header), Some(Vec::new()));
    assert_eq!(p.section(&[], SectionText::Text), Some(Vec::new()));
    assert_eq!(p.section(&[1], SectionText::Full), Some(Vec::new()));
    assert_eq!(sec(&p, &[], SectionText::HeaderFields(vec!["a".into()])).unwrap(), "\r\n");
    assert_eq!(
        s(&p.body_structure(false)),
        r#"("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)"#
    );
    assert_eq!(s(&p.envelope()), "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
    assert_eq!(p.body_text(), "");
    assert!(p.header_values("subject").is_empty());
    // Only the empty line: no header fields, empty body.
    let p = Parsed::new(b"\r\n");
    assert_eq!(sec(&p, &[], SectionText::Header).unwrap(), "\r\n");
    assert_eq!(sec(&p, &[], SectionText::Text).unwrap(), "");
    exercise(b"");
    exercise(b"\r\n");
    exercise(b"\n\n\n");
}

#[test]
fn garbage_bytes() {
    let mut rng = crate::testrng::XorShift(0x9e37_79b9_7f4a_7c15);
    for len in [1usize, 2, 3, 17, 100, 1000, 5000] {
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        exercise(&bytes);
    }
    exercise(b"\0\0\0\r\n\r\n\0");
    exercise(b"--\r\n--\r\n");
    exercise(b":::\r\n:\r\n\r\n");
    exercise(b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n--\r\n");
    exercise(b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n--a\r\n--a--\r\n--a\r\n");
    exercise(b"Content-Type: message/rfc822\r\n");
    exercise(b"\r\n\r\n\r\n");
    exercise(b"From: (((\r\nTo: \"\r\nCc: [\r\nBcc: <<<@@@>>>;;;:::,,,\r\n\r\n");
}

#[test]
fn multipart_without_boundary_or_delimiters() {
    let raw = crlf("Content-Type: multipart/mixed\n\nno boundary here\n");
    let p = Parsed::new(&raw);
    assert_eq!(s(&p.body_structure(false)), format!("({} \"mixed\")", s(EMPTY_BODY)));
    assert_eq!(
        s(&p.body_structure(true)),
        format!("({} \"mixed\" NIL NIL NIL NIL)", s(EMPTY_BODYSTRUCTURE))
    );
    assert_eq!(p.section(&[1], SectionText::Full), None);
    assert_eq!(sec(&p, &[], SectionText::Text).unwrap(), "no boundary here\r\n");
    let raw = crlf("Content-Type: multipart/mixed; boundary=zz\n\nthe delimiter never comes\n");
    let p = Parsed::new(&raw);
    assert_eq!(s(&p.body_structure(false)), format!("({} \"mixed\")", s(EMPTY_BODY)));
    exercise(&raw);
}

#[test]
fn truncated_and_odd_multiparts() {
    // The last part has no close delimiter: it runs to the end of the message.
    let raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\nfirst\n--b\nContent-Type: text/plain\n\nsecond\n");
    let p = Parsed::new(&raw);
    assert_eq!(sec(&p, &[1], SectionText::Full).unwrap(), "first");
    assert_eq!(sec(&p, &[1], SectionText::Mime).unwrap(), "\r\n");
    assert_eq!(sec(&p, &[2], SectionText::Full).unwrap(), "second\r\n");
    // Empty parts, a part whose header a delimiter cuts short, and transport padding after a delimiter.
    let raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n--b  \nContent-Type: text/html\n--b\nX: y\n\nz\n--b--  \n");
    let p = Parsed::new(&raw);
    assert_eq!(sec(&p, &[1], SectionText::Full).unwrap(), "");
    assert_eq!(sec(&p, &[1], SectionText::Mime).unwrap(), "");
    assert_eq!(sec(&p, &[2], SectionText::Mime).unwrap(), "Content-Type: text/html");
    assert_eq!(sec(&p, &[2], SectionText::Full).unwrap(), "");
    assert_eq!(sec(&p, &[3], SectionText::Full).unwrap(), "z");
    assert_eq!(sec(&p, &[4], SectionText::Full), None);
    assert!(s(&p.body_structure(false)).starts_with(r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)("text" "html""#));
    exercise(&raw);
    // An outer delimiter ends an inner multipart that was never closed.
    let raw = crlf("Content-Type: multipart/mixed; boundary=outer\n\n--outer\nContent-Type: multipart/alternative; boundary=inner\n\n--inner\n\na\n--outer\n\nb\n--outer--\n");
    let p = Parsed::new(&raw);
    assert_eq!(sec(&p, &[1, 1], SectionText::Full).unwrap(), "a");
    assert_eq!(sec(&p, &[1], SectionText::Full).unwrap(), "--inner\r\n\r\na");
    assert_eq!(sec(&p, &[2], SectionText::Full).unwrap(), "b");
    // When one boundary is a prefix of another, the longer match wins.
    let raw = crlf("Content-Type: multipart/mixed; boundary=ab\n\n--ab\nContent-Type: multipart/mixed; boundary=abc\n\n--abc\n\nx\n--abc--\n--ab\n\ny\n--ab--\n");
    let p = Parsed::new(&raw);
    assert_eq!(sec(&p, &[1, 1], SectionText::Full).unwrap(), "x");
    assert_eq!(sec(&p, &[2], SectionText::Full).unwrap(), "y");
}

#[test]
fn multipart_digest_defaults_to_rfc822() {
    let raw =
        crlf("Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: one\n\nfirst\n--d\nContent-Type: text/plain\n\nplain\n--d--\n");
    let p = Parsed::new(&raw);
    assert_eq!(sec(&p, &[1], SectionText::Header).unwrap(), "Subject: one\r\n\r\n");
    assert_eq!(sec(&p, &[1, 1], SectionText::Full).unwrap(), "first");
    assert_eq!(sec(&p, &[2], SectionText::Full).unwrap(), "plain");
    assert_eq!(
        s(&p.body_structure(false)),
        r#"(("message" "rfc822" NIL NIL NIL "7bit" 21 (NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0) 2)("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0) "digest")"#
    );
}

#[test]
fn content_type_parameters() {
    let raw = crlf(
        "Content-Type: Application/X-Thing; NAME*0*=utf-8''%E2%82%AC; name*1*=%20rate.txt; title*1=\" world\"; title*0=hello;\n\
\x20charset=\"a\\\"b\" (comment); broken; =junk; format=flowed\n\
Content-Transfer-Encoding: ?invalid\n\
Content-Language: en-GB, (comment) fr\n\
Content-Disposition: ATTACHMENT; filename=\"x y.txt\"; size=10\n\
\n\
data",
    );
    let p = Parsed::new(&raw);
    assert_eq!(
        s(&p.body_structure(true)),
        r#"("Application" "X-Thing" ("NAME*" "utf-8''%E2%82%AC%20rate.txt" "title" "hello world" "charset" "a\"b" "format" "flowed") NIL NIL "7bit" 4 NIL ("ATTACHMENT" ("filename" "x y.txt" "size" "10")) ("en-GB" "fr") NIL)"#
    );
    // An unparsable Content-Type falls back to text/plain.
    let p = Parsed::new(b"Content-Type: garbage\r\n\r\nx");
    assert_eq!(
        s(&p.body_structure(false)),
        r#"("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0)"#
    );
    let p = Parsed::new(b"Content-Type: text/plain; charset=\"\xc3\xa9\"\r\n\r\nx");
    assert_eq!(
        s(&p.body_structure(false)),
        "(\"text\" \"plain\" (\"charset\" {2}\r\n\u{e9}) NIL NIL \"7bit\" 1 0)"
    );
}

/// RFC 3516 BINARY sections: each part with its own transfer encoding removed.
#[test]
fn binary_sections_remove_the_transfer_encoding() {
    let raw: &[u8] = b"Subject: b\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\
Content-Type: text/plain\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\ncaf=C3=A9 =3D soft=\r\nbreak\r\n--x\r\n\
Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC/wBoaQ==\r\n--x\r\n\
Content-Transfer-Encoding: 8bit\r\n\r\nraw \xff\r\n--x\r\n\
Content-Transfer-Encoding: x-unknown\r\n\r\nzz\r\n--x\r\n\
Content-Transfer-Encoding: (comment only)\r\n\r\nplain\r\n--x--\r\n";
    let p = Parsed::new(raw);
    assert_eq!(p.binary(&[1]).unwrap().as_ref(), "café = softbreak".as_bytes());
    assert_eq!(p.binary(&[2]).unwrap().as_ref(), b"\x00\x01\x02\xff\x00hi");
    assert_eq!(p.binary(&[2, 1]).unwrap().as_ref(), b"\x00\x01\x02\xff\x00hi");
    // Identity encodings borrow the stored bytes.
    assert!(matches!(p.binary(&[3]).unwrap(), Cow::Borrowed(b"raw \xff")));
    assert_eq!(p.binary(&[4]), Err(BinaryError::UnknownTransfer(b"x-unknown".to_vec())));
    // No token at all reads as 7bit, as BODYSTRUCTURE says.
    assert_eq!(p.binary(&[5]).unwrap().as_ref(), b"plain");
    assert_eq!(p.binary(&[6]), Err(BinaryError::NoSuchPart));
    assert_eq!(p.binary(&[0]), Err(BinaryError::NoSuchPart));
    assert_eq!(p.binary(&[]).unwrap().as_ref(), raw);
    // A single-part message: part 1 is its body, with the message's encoding.
    let p = Parsed::new(b"Content-Transfer-Encoding: BASE64\n\naGVs\nbG8=\n");
    assert_eq!(p.binary(&[1]).unwrap().as_ref(), b"hello");
    assert_eq!(p.binary(&[2]), Err(BinaryError::NoSuchPart));
    assert_eq!(Transfer::from_name(b"BINARY"), Ok(Transfer::Identity));
    assert_eq!(Transfer::from_name(b"x-uuencode"), Err(b"x-uuencode".to_vec()));
}

#[test]
fn body_text_decodes_transfer_encoding_and_charset() {
    let raw = crlf(
        "Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n\
w6lsw6hi\nYW50\n--x\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n\
na=EFve =3D soft=\nbreak = stray\n--x\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo=\n--x--\n",
    );
    let p = Parsed::new(&raw);
    assert_eq!(p.body_text(), "\u{e9}l\u{e8}bant\nna\u{ef}ve = softbreak = stray");
}

#[test]
fn rfc5322_appendix_a_addresses() {
    let raw = crlf(
        "From: Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>\n\
To:A Group(Some people)\n\
\x20    :Chris Jones <c@(Chris's host.)public.example>,\n\
\x20        joe@example.org,\n\
\x20 John <jdoe@one.test> (my dear friend); (the end of the group)\n\
Cc:(Empty list)(start)Hidden recipients  :(nobody(that I know))  ;\n\
Bcc: Joe Q. Public <john.q.public@example.com>, Who? <one@y.test>, \"Giant; \\\"Big\\\" Box\" <sysservices@example.net>\n\
\n",
    );
    let p = Parsed::new(&raw);
    assert_eq!(
        s(&p.envelope()),
        concat!(
            r#"(NIL NIL (("Pete" NIL "pete" "silly.test")) (("Pete" NIL "pete" "silly.test")) (("Pete" NIL "pete" "silly.test")) "#,
            r#"((NIL NIL "A Group" NIL)("Chris Jones" NIL "c" "public.example")(NIL NIL "joe" "example.org")("John" NIL "jdoe" "one.test")(NIL NIL NIL NIL)) "#,
            r#"((NIL NIL "Hidden recipients" NIL)(NIL NIL NIL NIL)) "#,
            r#"(("Joe Q. Public" NIL "john.q.public" "example.com")("Who?" NIL "one" "y.test")("Giant; \"Big\" Box" NIL "sysservices" "example.net")) NIL NIL)"#
        )
    );
}

/// The details where servers differ, written the way Dovecot writes them: a folded
/// quoted boundary, a preamble and an epilogue inside an encapsulated message, an invalid
/// transfer encoding, an escaped quote in a parameter, and a language list.
#[test]
fn dovecot_compatible_details() {
    let raw = crlf(
        "From: someone@example.org\n\
Content-Type: multipart/mixed; boundary=\"outer\n\
\x20edge\"\n\
\n\
prologue\n\
\n\
--outer edge\n\
Content-Type: text/x-note; charset=us-ascii; note=\"say \\\"hi\\\"\"\n\
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n\
Content-Disposition: inline; size=5\n\
Content-Language: de, nl\n\
\n\
hello\n\
\n\
--outer edge\n\
Content-Type: message/rfc822\n\
\n\
From: inner@example.org\n\
Subject: inside\n\
Content-Type: multipart/alternative; boundary=in\n\
\n\
inner prologue\n\
--in\n\
Content-Type: text/plain\n\
Content-Transfer-Encoding: ?bogus\n\
\n\
text\n\
\n\
--in--\n\
inner epilogue\n\
\n\
--outer edge--\n\
outer epilogue\n",
    );
    let p = Parsed::new(&raw);
    let inner = p.section(&[2], SectionText::Full).unwrap();
    assert!(inner.starts_with(b"From: inner@example.org") && inner.ends_with(b"inner epilogue\r\n"));
    let lines = inner.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(
        s(&p.body_structure(true)),
        format!(
            concat!(
                r#"(("text" "x-note" ("charset" "us-ascii" "note" "say \"hi\"") NIL NIL "7bit" 7 1 "Q2hlY2sgSW50ZWdyaXR5IQ==" ("inline" ("size" "5")) ("de" "nl") NIL)"#,
                r#"("message" "rfc822" NIL NIL NIL "7bit" {} (NIL "inside" ((NIL NIL "inner" "example.org")) ((NIL NIL "inner" "example.org")) ((NIL NIL "inner" "example.org")) NIL NIL NIL NIL NIL) "#,
                r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1 NIL NIL NIL NIL) "alternative" ("boundary" "in") NIL NIL NIL) {} NIL NIL NIL NIL)"#,
                r#" "mixed" ("boundary" "outer edge") NIL NIL NIL)"#
            ),
            inner.len(),
            lines
        )
    );
    assert_eq!(sec(&p, &[1], SectionText::Full).unwrap(), "hello\r\n");
    assert_eq!(sec(&p, &[2, 1], SectionText::Full).unwrap(), "text\r\n");
}

#[test]
fn many_rfc2231_parameters_stay_linear() {
    let mut header = String::from("Content-Type: text/plain");
    for i in 0..20_000 {
        header.push_str(&format!("; p{i}*0=a; p{i}*1=b"));
    }
    header.push_str("\r\n\r\nx");
    let p = Parsed::new(header.as_bytes());
    let bs = p.body_structure(false);
    assert!(s(&bs).contains(r#""p19999" "ab""#));
    assert!(balanced(&bs));
}

#[test]
fn imap_strings() {
    assert_eq!(nstring(None), b"NIL");
    assert_eq!(nstring(Some(b"")), b"\"\"");
    assert_eq!(nstring(Some(b"a \"b\" \\c")), b"\"a \\\"b\\\" \\\\c\"");
    assert_eq!(nstring(Some(b"two\r\nlines")), b"{10}\r\ntwo\r\nlines");
    assert_eq!(nstring(Some("\u{e9}".as_bytes())), b"{2}\r\n\xc3\xa9");
    assert_eq!(nstring(Some(b"a\0b")), b"{3}\r\na\x80b");
    let long = vec![b'x'; MAX_QUOTED_LEN + 1];
    assert!(nstring(Some(&long)).starts_with(format!("{{{}}}\r\n", long.len()).as_bytes()));
    assert_eq!(nstring(Some(&long[1..])).len(), MAX_QUOTED_LEN + 2);
    assert_eq!(string(b"NIL"), b"\"NIL\"");
    assert_eq!(astring_quoted("INBOX"), b"\"INBOX\"");
    assert_eq!(astring_quoted("a\"b"), b"\"a\\\"b\"");
    assert_eq!(astring_quoted("Entw\u{fc}rfe"), "{9}\r\nEntw\u{fc}rfe".as_bytes());
    assert_eq!(astring_quoted(&"y".repeat(5000)).len(), 5002);
}

#[test]
fn address_texts_join_the_parts_of_each_address() {
    let p = Parsed::new(
        b"From: <user-from (comment)@ (comment) domain.org>\r\n\
          To: \"Real To\" <to@example.org>, g: a@example.org, b@example.org;\r\n\
          Cc: =?UTF-8?Q?J=C3=B6rg?= <jorg@example.org>\r\n\r\n",
    );
    assert_eq!(p.address_texts("from"), [" <user-from@domain.org>"]);
    assert_eq!(
        p.address_texts("To"),
        ["Real To <to@example.org>", "g", " <a@example.org>", " <b@example.org>"]
    );
    assert_eq!(p.address_texts("Cc"), ["Jörg <jorg@example.org>"]);
    assert!(p.address_texts("Bcc").is_empty());
}

#[test]
fn sent_date_parses_rfc5322_dates() {
    let p = Parsed::new(b"Date: 15 Feb 2007 01:02:03 GMT\r\n\r\n");
    assert_eq!(p.sent_date(), Some(1_171_501_323));
    let p = Parsed::new(b"Date: Thu,\r\n 15 Feb 2007 01:02:03 -0100 (XYZ)\r\n\r\n");
    assert_eq!(p.sent_date(), Some(1_171_501_323 + 3600));
    let p = Parsed::new(b"Date: yesterday\r\n\r\n");
    assert_eq!(p.sent_date(), None);
    // The zone is kept: 23:30 at -0500 is the next day in UTC but this day as written.
    let p = Parsed::new(b"Date: Tue, 14 Nov 2023 23:30:00 -0500\r\n\r\n");
    assert_eq!(p.sent_date_zoned(), Some((1_700_022_600, -300)));
    let p = Parsed::new(b"Date: Wed, 15 Nov 2023 00:15:00 +0130\r\n\r\n");
    assert_eq!(p.sent_date_zoned(), Some((1_700_001_900, 90)));
}

#[test]
fn deep_nesting_does_not_overflow() {
    let depth = 300;
    let mut msg = String::new();
    for i in 0..depth {
        msg.push_str(&format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"));
    }
    msg.push_str("\r\nleaf\r\n");
    for i in (0..depth).rev() {
        msg.push_str(&format!("--b{i}--\r\n"));
    }
    exercise(msg.as_bytes());
    let p = Parsed::new(msg.as_bytes());
    let path = vec![1u32; MAX_DEPTH];
    assert!(p.section(&path, SectionText::Full).is_some());
    assert!(s(&p.body_structure(false)).contains("\"application\" \"octet-stream\""));
    let mut msg = String::new();
    for _ in 0..depth {
        msg.push_str("Content-Type: message/rfc822\r\n\r\n");
    }
    msg.push_str("Subject: bottom\r\n\r\nx");
    exercise(msg.as_bytes());
}

#[test]
fn sexp_checker_rejects_bad_output() {
    assert!(parse_sx(b"(\"a\" NIL 1 (\"b\"))").is_ok());
    assert!(parse_sx(b"(\"a\" NIL").is_err());
    assert!(parse_sx(b"(\"a\"  NIL)").is_err());
    assert!(parse_sx(b"(\"a\"NIL)").is_err());
    assert!(parse_sx(b"(\"\xc3\xa9\")").is_err());
    assert!(parse_sx(b"({2}\r\n\xc3\xa9)").is_ok());
    assert!(balanced(b"(\"(\" {1}\r\n) ())"));
    assert!(!balanced(b"(\")\" ))"));
    assert!(check_body(&parse_sx(br#"("text" "plain" NIL NIL NIL "7bit" 1)"#).unwrap(), false).is_err());
}

/// Every file in CPython's email test data: no panic, BODY[] is the input, and the
/// output is well-formed. The directory is found through `python3`, or through
/// `IMAP_MIME_CPYTHON_EMAIL_DATA`.
#[test]
fn cpython_email_test_data() {
    let dir = std::env::var_os("IMAP_MIME_CPYTHON_EMAIL_DATA")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let out = std::process::Command::new("python3")
                .args(["-c", "import test, os; print(os.path.dirname(test.__file__))"])
                .output()
                .ok()?;
            out.status.success().then(|| {
                std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
                    .join("test_email")
                    .join("data")
            })
        });
    let Some(dir) = dir.filter(|d| d.is_dir()) else {
        println!("SKIPPED cpython_email_test_data: CPython's test_email/data directory was not found");
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    for path in &files {
        let raw = std::fs::read(path).unwrap();
        let result = std::panic::catch_unwind(|| exercise(&raw));
        assert!(result.is_ok(), "failed on {}", path.display());
        // The same message stored with CRLF line endings.
        let stored = crlf(&String::from_utf8_lossy(&raw));
        assert!(
            std::panic::catch_unwind(|| exercise(&stored)).is_ok(),
            "failed on {} (CRLF)",
            path.display()
        );
    }
    println!("checked {} files from {}", files.len(), dir.display());
}

#[test]
fn fuzz_mutated_multipart() {
    const DICT: &[&[u8]] = &[
        b"--",
        b"\r\n",
        b"\n",
        b"\r\n\r\n",
        b"--b1",
        b"--b1--",
        b"--b2",
        b"--b2--",
        b"\r\n--b1\r\n",
        b"Content-Type: multipart/mixed; boundary=b1\r\n",
        b"Content-Type: multipart/digest; boundary=\"b2\"\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"; name*0*=utf-8''%E2; name*1=x",
        b"boundary=",
        b"\"",
        b"\\",
        b"(",
        b")",
        b";",
        b":",
        b"<",
        b">",
        b"@",
        b",",
        b"=?utf-8?q?=C3=A9?=",
        b"=?x?b?",
        b"=",
        b"\0",
        b"\xff\xfe",
        b" ",
        b"\t",
        b"From: a:b,c;d <e@f> (g\r\n",
    ];
    let base = crlf(RFC822);
    let mut rng = crate::testrng::XorShift(0x2545_f491_4f6c_dd1d);
    let mut current = base.clone();
    for iteration in 0..2000 {
        if rng.below(4) != 0 {
            current = base.clone();
        }
        for _ in 0..1 + rng.below(4) {
            let len = current.len();
            match rng.below(7) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    current[i] = rng.next_u64() as u8;
                }
                1 => {
                    let word = DICT[rng.below(DICT.len())];
                    let at = rng.below(len + 1);
                    current.splice(at..at, word.iter().copied());
                }
                2 if len > 0 => {
                    let at = rng.below(len);
                    let end = (at + 1 + rng.below(64)).min(len);
                    current.drain(at..end);
                }
                3 if len > 0 => {
                    let at = rng.below(len);
                    let end = (at + 1 + rng.below(200)).min(len);
                    let chunk = current[at..end].to_vec();
                    let to = rng.below(len + 1);
                    current.splice(to..to, chunk);
                }
                4 => current.truncate(rng.below(len + 1)),
                5 => {
                    // Turn one CRLF into a bare LF.
                    let from = rng.below(len);
                    if let Some(i) = current[from..].windows(2).position(|w| w == b"\r\n") {
                        current.remove(from + i);
                    }
                }
                _ => {
                    let word = DICT[rng.below(DICT.len())];
                    let at = rng.below(len + 1);
                    let end = (at + word.len()).min(len);
                    current.splice(at..end, word.iter().copied());
                }
            }
        }
        let sample = current.clone();
        let result = std::panic::catch_unwind(|| exercise(&sample));
        assert!(result.is_ok(), "iteration {iteration} failed on input {:?}", s(&sample));
    }
}
