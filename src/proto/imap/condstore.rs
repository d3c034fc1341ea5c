//! Grammar of RFC 7162 (CONDSTORE and QRESYNC) that imap-codec 1.0 does not
//! parse: the SELECT / EXAMINE parameters `(CONDSTORE)` and `(QRESYNC
//! (...))`, the FETCH modifiers `CHANGEDSINCE` and `VANISHED`, the STORE
//! modifier `UNCHANGEDSINCE` and the SEARCH key `MODSEQ`.
//!
//! Each function takes one whole command as the framer hands it out and,
//! as [`super::ext`] does for BINARY, splits off what is RFC 7162's and
//! returns the rest of the command for imap-codec, which parses the
//! mailbox, sequence set, items and flags. `Ok(None)` means the command
//! has none of this syntax. Errors name the octet where parsing failed;
//! mod-sequence values above 2^63 - 1 are refused there; nothing panics.

use super::ext::{head, Lexer, SyntaxError, Token, MAX_ITEMS};

type R<T> = Result<T, SyntaxError>;

/// The largest mod-sequence value: RFC 7162's `mod-sequence-value` is a
/// 63-bit unsigned number.
pub const MAX_MODSEQ: u64 = i64::MAX as u64;

/// A SEARCH `MODSEQ n` key becomes `KEYWORD` this prefix and the key's
/// index for imap-codec; the session reads such a keyword as the MODSEQ
/// test (see [`search_modseq`]).
pub const MODSEQ_KEYWORD: &str = "$TandemModseq";

/// Inclusive ranges of a sequence set, ascending within each range.
pub type Ranges = Vec<(u32, u32)>;

fn fail<T>(at: usize, what: &'static str) -> R<T> {
    Err(SyntaxError { at, what })
}

/// A mod-sequence value (`1*DIGIT`, at most [`MAX_MODSEQ`]) from the token
/// that started at octet `at`.
fn modseq_value(tok: Option<Token<'_>>, at: usize) -> R<u64> {
    let Some(Token::Atom(a)) = tok else {
        return fail(at, "expected a mod-sequence value");
    };
    if a.is_empty() || !a.iter().all(u8::is_ascii_digit) {
        return fail(at, "expected a mod-sequence value (digits)");
    }
    match std::str::from_utf8(a).ok().and_then(|d| d.parse::<u64>().ok()) {
        Some(n) if n <= MAX_MODSEQ => Ok(n),
        _ => fail(at, "mod-sequence value above 2^63-1"),
    }
}

/// A non-zero 32-bit number.
fn nz_number(a: &[u8]) -> Option<u32> {
    if a.is_empty() || a.len() > 10 || !a.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(a).ok()?.parse::<u32>().ok().filter(|n| *n > 0)
}

/// A sequence set without `*` (RFC 7162's known-uids and seq-match-data)
/// starting at octet `at`: inclusive ranges, each low to high.
pub fn seq_set(a: &[u8], at: usize) -> R<Ranges> {
    let mut out = Vec::new();
    let mut off = 0;
    for part in a.split(|c| *c == b',') {
        let here = at + off;
        off += part.len() + 1;
        let range = match part.iter().position(|c| *c == b':') {
            Some(colon) => (nz_number(&part[..colon]), nz_number(&part[colon + 1..])),
            None => (nz_number(part), nz_number(part)),
        };
        match range {
            (Some(x), Some(y)) => out.push((x.min(y), x.max(y))),
            _ => return fail(here, "expected a sequence set of non-zero 32-bit numbers (no *)"),
        }
    }
    Ok(out)
}

/// How many numbers a set of ranges covers (overlaps counted twice).
pub fn count(ranges: &[(u32, u32)]) -> u64 {
    ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum()
}

/// The parameters of a SELECT or EXAMINE (RFC 7162 sections 3.1.8, 3.2.5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectParams {
    pub condstore: bool,
    pub qresync: Option<Qresync>,
}

/// `QRESYNC (uidvalidity modseq [known-uids] [(known-seqs known-uids)])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qresync {
    pub uidvalidity: u32,
    pub modseq: u64,
    pub known_uids: Option<Ranges>,
    /// Message numbers and the UIDs they had, as the client remembers them.
    pub seq_match: Option<(Ranges, Ranges)>,
}

/// `SELECT|EXAMINE mailbox (params)`: the parameters, and the command
/// without them for imap-codec. `Ok(None)` for other commands and a
/// SELECT without parameters.
pub fn select_params(cmd: &[u8]) -> R<Option<(SelectParams, Vec<u8>)>> {
    let (_, uid, name, mut lx) = head(cmd)?;
    if uid || !(name == "SELECT" || name == "EXAMINE") {
        return Ok(None);
    }
    lx.skip_space();
    let at = lx.pos();
    if lx.next_token()?.is_none_or(|t| t.astring().is_none()) {
        return fail(at, "expected a mailbox name");
    }
    let mailbox_end = lx.pos();
    if lx.at_end() {
        return Ok(None);
    }
    lx.expect(&Token::Open, "expected ( before the SELECT parameters")?;
    let mut p = SelectParams::default();
    let mut n = 0;
    loop {
        lx.skip_space();
        let at = lx.pos();
        match lx.next_token()? {
            Some(Token::Close) if n > 0 => break,
            Some(Token::Atom(a)) if a.eq_ignore_ascii_case(b"CONDSTORE") && !p.condstore => p.condstore = true,
            Some(Token::Atom(a)) if a.eq_ignore_ascii_case(b"QRESYNC") && p.qresync.is_none() => p.qresync = Some(qresync(&mut lx)?),
            _ => return fail(at, "expected CONDSTORE or QRESYNC (each once)"),
        }
        n += 1;
    }
    if !lx.at_end() {
        lx.skip_space();
        return lx.err("unexpected text after the SELECT parameters");
    }
    let mut plain = cmd[..mailbox_end].to_vec();
    plain.extend_from_slice(b"\r\n");
    Ok(Some((p, plain)))
}

fn qresync(lx: &mut Lexer<'_>) -> R<Qresync> {
    lx.expect(&Token::Open, "expected ( after QRESYNC")?;
    lx.skip_space();
    let at = lx.pos();
    let uidvalidity = match lx.next_token()? {
        Some(Token::Atom(a)) => nz_number(a),
        _ => None,
    };
    let Some(uidvalidity) = uidvalidity else {
        return fail(at, "expected a UIDVALIDITY (non-zero 32-bit number)");
    };
    lx.skip_space();
    let at = lx.pos();
    let modseq = modseq_value(lx.next_token()?, at)?;
    let (mut known_uids, mut seq_match) = (None, None);
    lx.skip_space();
    let mut at = lx.pos();
    let mut tok = lx.next_token()?;
    if let Some(Token::Atom(a)) = tok {
        known_uids = Some(seq_set(a, at)?);
        lx.skip_space();
        at = lx.pos();
        tok = lx.next_token()?;
    }
    if tok == Some(Token::Open) {
        let mut sets = Vec::with_capacity(2);
        for what in [
            "expected the known message numbers",
            "expected the UIDs of the known message numbers",
        ] {
            lx.skip_space();
            let sat = lx.pos();
            match lx.next_token()? {
                Some(Token::Atom(a)) => sets.push(seq_set(a, sat)?),
                _ => return fail(sat, what),
            }
        }
        lx.expect(&Token::Close, "expected ) after the sequence match data")?;
        let (uids, seqs) = (sets.pop().unwrap_or_default(), sets.pop().unwrap_or_default());
        if count(&seqs) != count(&uids) {
            return fail(at, "sequence match data: the message numbers and UIDs differ in count");
        }
        seq_match = Some((seqs, uids));
        lx.skip_space();
        at = lx.pos();
        tok = lx.next_token()?;
    }
    match tok {
        Some(Token::Close) => Ok(Qresync {
            uidvalidity,
            modseq,
            known_uids,
            seq_match,
        }),
        _ => fail(at, "expected ) after the QRESYNC parameters"),
    }
}

/// The FETCH modifiers of RFC 7162 (sections 3.1.4.1, 3.2.6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchModifiers {
    pub changed_since: Option<u64>,
    pub vanished: bool,
}

/// `[UID] FETCH set items (CHANGEDSINCE n [VANISHED])`: the modifiers, and
/// the command without them. The modifier list is the last parenthesised
/// group of the command, after the items, beginning with CHANGEDSINCE or
/// VANISHED (a header field list of `BODY[HEADER.FIELDS (...)]` ends with
/// `]`, never with the command). `Ok(None)` for other commands and a FETCH
/// without modifiers.
pub fn fetch_modifiers(cmd: &[u8]) -> R<Option<(FetchModifiers, Vec<u8>)>> {
    let (_, uid, name, mut lx) = head(cmd)?;
    if name != "FETCH" {
        return Ok(None);
    }
    lx.skip_space();
    if !matches!(lx.next_token()?, Some(Token::Atom(_))) {
        return lx.err("expected a sequence set");
    }
    // The last top-level group: where it opens, and whether items precede it.
    let mut last: Option<(usize, bool)> = None;
    let mut ends_with_group = false;
    let mut top = 0usize;
    let mut depth = 0usize;
    loop {
        lx.skip_space();
        let at = lx.pos();
        let Some(tok) = lx.next_token()? else { break };
        match tok {
            Token::Open => {
                if depth == 0 {
                    last = Some((at, top > 0));
                    ends_with_group = false;
                    top += 1;
                }
                depth += 1;
            }
            Token::Close if depth > 0 => {
                depth -= 1;
                ends_with_group = depth == 0;
            }
            // Unbalanced: imap-codec says where.
            Token::Close => return Ok(None),
            _ if depth == 0 => {
                top += 1;
                ends_with_group = false;
            }
            _ => {}
        }
    }
    let Some((open, true)) = last else { return Ok(None) };
    if !ends_with_group || depth != 0 {
        return Ok(None);
    }
    lx.seek(open + 1);
    if !lx.peek()?.is_some_and(|t| t.is_atom("CHANGEDSINCE") || t.is_atom("VANISHED")) {
        return Ok(None);
    }
    let mut m = FetchModifiers::default();
    loop {
        lx.skip_space();
        let at = lx.pos();
        match lx.next_token()? {
            Some(Token::Close) => break,
            Some(t) if t.is_atom("CHANGEDSINCE") && m.changed_since.is_none() => {
                lx.skip_space();
                let vat = lx.pos();
                m.changed_since = Some(modseq_value(lx.next_token()?, vat)?);
            }
            Some(t) if t.is_atom("VANISHED") && !m.vanished => m.vanished = true,
            _ => return fail(at, "expected CHANGEDSINCE or VANISHED (each once) or )"),
        }
    }
    if m.vanished && m.changed_since.is_none() {
        return fail(open, "VANISHED needs CHANGEDSINCE");
    }
    if m.vanished && !uid {
        return fail(open, "VANISHED is for UID FETCH only");
    }
    let mut cut = open;
    while cut > 0 && cmd[cut - 1] == b' ' {
        cut -= 1;
    }
    let mut plain = cmd[..cut].to_vec();
    plain.extend_from_slice(b"\r\n");
    Ok(Some((m, plain)))
}

/// `[UID] STORE set (UNCHANGEDSINCE n) item flags` (RFC 7162 section
/// 3.1.3): the mod-sequence, and the command without the modifier list.
/// `Ok(None)` for other commands and a STORE without modifiers.
pub fn store_unchanged_since(cmd: &[u8]) -> R<Option<(u64, Vec<u8>)>> {
    let (_, _, name, mut lx) = head(cmd)?;
    if name != "STORE" {
        return Ok(None);
    }
    lx.skip_space();
    if !matches!(lx.next_token()?, Some(Token::Atom(_))) {
        return lx.err("expected a sequence set");
    }
    let set_end = lx.pos();
    if lx.peek()? != Some(Token::Open) {
        return Ok(None);
    }
    lx.skip_space();
    let open = lx.pos();
    lx.next_token()?;
    let mut since = None;
    loop {
        lx.skip_space();
        let at = lx.pos();
        match lx.next_token()? {
            Some(Token::Close) if since.is_some() => break,
            Some(t) if t.is_atom("UNCHANGEDSINCE") && since.is_none() => {
                lx.skip_space();
                let vat = lx.pos();
                since = Some(modseq_value(lx.next_token()?, vat)?);
            }
            _ => return fail(at.max(open), "expected UNCHANGEDSINCE (once) and )"),
        }
    }
    let mut plain = cmd[..set_end].to_vec();
    plain.extend_from_slice(&cmd[lx.pos()..]);
    Ok(Some((since.unwrap_or(0), plain)))
}

/// `[UID] SEARCH|SORT|THREAD ... MODSEQ [entry-name entry-type] n ...`
/// (RFC 7162 section 3.1.5): the value of each MODSEQ key, in order, and
/// the command with key `i` replaced by `KEYWORD $TandemModseq<i>`, which
/// imap-codec parses wherever a key may stand (under OR and NOT too).
/// Entry names are checked and then ignored: Tandem keeps one mod-sequence
/// per message, not per flag, which RFC 7162 allows. An atom `MODSEQ` in
/// argument position (`SUBJECT MODSEQ`) is read as the key: quote it.
pub fn search_modseq(cmd: &[u8]) -> R<Option<(Vec<u64>, Vec<u8>)>> {
    let (_, _, name, mut lx) = head(cmd)?;
    if !matches!(name.as_str(), "SEARCH" | "SORT" | "THREAD") {
        return Ok(None);
    }
    let mut values = Vec::new();
    let mut spans = Vec::new();
    loop {
        lx.skip_space();
        let at = lx.pos();
        let Some(tok) = lx.next_token()? else { break };
        if !tok.is_atom("MODSEQ") {
            continue;
        }
        if values.len() >= MAX_ITEMS {
            return fail(at, "too many MODSEQ keys");
        }
        lx.skip_space();
        let mut vat = lx.pos();
        let mut next = lx.next_token()?;
        if let Some(Token::Quoted(entry)) = &next {
            if entry.len() < 8 || !entry[..7].eq_ignore_ascii_case(b"/flags/") {
                return fail(vat, "expected an entry name \"/flags/...\"");
            }
            lx.skip_space();
            let tat = lx.pos();
            if !lx
                .next_token()?
                .is_some_and(|t| t.is_atom("priv") || t.is_atom("shared") || t.is_atom("all"))
            {
                return fail(tat, "expected an entry type: priv, shared or all");
            }
            lx.skip_space();
            vat = lx.pos();
            next = lx.next_token()?;
        }
        values.push(modseq_value(next, vat)?);
        spans.push(at..lx.pos());
    }
    if values.is_empty() {
        return Ok(None);
    }
    let mut plain = Vec::with_capacity(cmd.len() + 16 * spans.len());
    let mut copied = 0;
    for (i, span) in spans.into_iter().enumerate() {
        plain.extend_from_slice(&cmd[copied..span.start]);
        plain.extend_from_slice(format!("KEYWORD {MODSEQ_KEYWORD}{i}").as_bytes());
        copied = span.end;
    }
    plain.extend_from_slice(&cmd[copied..]);
    Ok(Some((values, plain)))
}

/// The index of the MODSEQ key a keyword of [`search_modseq`] stands for.
pub fn modseq_key(keyword: &str) -> Option<usize> {
    keyword.strip_prefix(MODSEQ_KEYWORD)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of<T: std::fmt::Debug>(r: R<T>) -> SyntaxError {
        r.unwrap_err()
    }

    #[test]
    fn select_parameters() {
        let (p, plain) = select_params(b"a SELECT INBOX (CONDSTORE)\r\n").unwrap().unwrap();
        assert!(p.condstore && p.qresync.is_none());
        assert_eq!(plain, b"a SELECT INBOX\r\n");
        let (p, plain) = select_params(b"a EXAMINE \"a b\" (QRESYNC (67890007 20050715194045000 41,43:211,214:541))\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(plain, b"a EXAMINE \"a b\"\r\n");
        let q = p.qresync.unwrap();
        assert_eq!((q.uidvalidity, q.modseq), (67890007, 20050715194045000));
        assert_eq!(q.known_uids, Some(vec![(41, 41), (43, 211), (214, 541)]));
        assert_eq!(q.seq_match, None);
        let (p, _) = select_params(b"a SELECT x (QRESYNC (1 0 1:9 (1:3,5 2,4:6)) CONDSTORE)\r\n")
            .unwrap()
            .unwrap();
        assert!(p.condstore);
        let q = p.qresync.unwrap();
        assert_eq!(q.seq_match, Some((vec![(1, 3), (5, 5)], vec![(2, 2), (4, 6)])));
        let (p, _) = select_params(b"a SELECT x (QRESYNC (1 5 (1 2)))\r\n").unwrap().unwrap();
        assert_eq!(p.qresync.unwrap().known_uids, None);
        // A literal mailbox name keeps its literal.
        let (_, plain) = select_params(b"a SELECT {3}\r\nabc (CONDSTORE)\r\n").unwrap().unwrap();
        assert_eq!(plain, b"a SELECT {3}\r\nabc\r\n");
        assert_eq!(select_params(b"a SELECT INBOX\r\n").unwrap(), None);
        assert_eq!(select_params(b"a FETCH 1 (FLAGS)\r\n").unwrap(), None);
        // Errors say where.
        for (bad, at, what) in [
            (&b"a SELECT x ()\r\n"[..], 12, "expected CONDSTORE"),
            (b"a SELECT x (BOGUS)\r\n", 12, "expected CONDSTORE"),
            (b"a SELECT x (CONDSTORE CONDSTORE)\r\n", 22, "each once"),
            (b"a SELECT x CONDSTORE\r\n", 11, "expected ("),
            (b"a SELECT x (QRESYNC (0 5))\r\n", 21, "UIDVALIDITY"),
            (b"a SELECT x (QRESYNC (1 9223372036854775808))\r\n", 23, "above 2^63-1"),
            (b"a SELECT x (QRESYNC (1 99999999999999999999999))\r\n", 23, "above 2^63-1"),
            (b"a SELECT x (QRESYNC (1 -1))\r\n", 23, "digits"),
            (b"a SELECT x (QRESYNC (1 5 1:*))\r\n", 25, "no *"),
            (b"a SELECT x (QRESYNC (1 5 1,0))\r\n", 27, "non-zero"),
            (b"a SELECT x (QRESYNC (1 5 1,,2))\r\n", 27, "non-zero"),
            (b"a SELECT x (QRESYNC (1 5 4294967296))\r\n", 25, "32-bit"),
            (b"a SELECT x (QRESYNC (1 5 1:9 (1:3 1:4)))\r\n", 29, "differ in count"),
            (b"a SELECT x (QRESYNC (1 5 1:9 (1:3)))\r\n", 33, "UIDs of the known"),
            (b"a SELECT x (QRESYNC (1 5 1:9 x))\r\n", 29, "expected ) after the QRESYNC"),
            (b"a SELECT x (QRESYNC (1 5) x\r\n", 26, "expected CONDSTORE"),
            (b"a SELECT x (CONDSTORE) junk\r\n", 23, "unexpected text"),
        ] {
            let e = err_of(select_params(bad));
            assert!(e.what.contains(what), "{}: {e}", String::from_utf8_lossy(bad));
            assert_eq!(e.at, at, "{}: {e}", String::from_utf8_lossy(bad));
        }
        // The largest value is taken.
        let (p, _) = select_params(b"a SELECT x (QRESYNC (4294967295 9223372036854775807 4294967295))\r\n")
            .unwrap()
            .unwrap();
        let q = p.qresync.unwrap();
        assert_eq!((q.uidvalidity, q.modseq), (u32::MAX, MAX_MODSEQ));
    }

    #[test]
    fn fetch_modifiers_are_split_off() {
        let (m, plain) = fetch_modifiers(b"t UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            m,
            FetchModifiers {
                changed_since: Some(12345),
                vanished: true
            }
        );
        assert_eq!(plain, b"t UID FETCH 1:* (FLAGS)\r\n");
        let (m, plain) = fetch_modifiers(b"t FETCH 1 FAST (changedsince 0)\r\n").unwrap().unwrap();
        assert_eq!(m.changed_since, Some(0));
        assert_eq!(plain, b"t FETCH 1 FAST\r\n");
        let (_, plain) = fetch_modifiers(b"t FETCH 1 BODY.PEEK[HEADER.FIELDS (CHANGEDSINCE)] (CHANGEDSINCE 4)\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(plain, b"t FETCH 1 BODY.PEEK[HEADER.FIELDS (CHANGEDSINCE)]\r\n");
        // A header field list is no modifier list.
        assert_eq!(
            fetch_modifiers(b"t FETCH 1 BODY[HEADER.FIELDS (CHANGEDSINCE 4)]\r\n").unwrap(),
            None
        );
        assert_eq!(
            fetch_modifiers(b"t FETCH 1 (FLAGS BODY[HEADER.FIELDS (CHANGEDSINCE)])\r\n").unwrap(),
            None
        );
        assert_eq!(fetch_modifiers(b"t FETCH 1 (CHANGEDSINCE 4)\r\n").unwrap(), None);
        assert_eq!(fetch_modifiers(b"t FETCH 1 (FLAGS)\r\n").unwrap(), None);
        assert_eq!(fetch_modifiers(b"t STORE 1 FLAGS (x)\r\n").unwrap(), None);
        for (bad, at, what) in [
            (&b"t FETCH 1 (FLAGS) (CHANGEDSINCE)\r\n"[..], 31, "expected a mod-sequence"),
            (b"t FETCH 1 (FLAGS) (CHANGEDSINCE 9223372036854775808)\r\n", 32, "above 2^63-1"),
            (b"t FETCH 1 (FLAGS) (CHANGEDSINCE 18446744073709551616)\r\n", 32, "above 2^63-1"),
            (b"t FETCH 1 (FLAGS) (CHANGEDSINCE 1 CHANGEDSINCE 2)\r\n", 34, "each once"),
            (b"t FETCH 1 (FLAGS) (CHANGEDSINCE 1 BOGUS)\r\n", 34, "each once"),
            (b"t UID FETCH 1 (FLAGS) (VANISHED)\r\n", 22, "VANISHED needs CHANGEDSINCE"),
            (b"t FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n", 18, "UID FETCH only"),
        ] {
            let e = err_of(fetch_modifiers(bad));
            assert!(e.what.contains(what), "{}: {e}", String::from_utf8_lossy(bad));
            assert_eq!(e.at, at, "{}: {e}", String::from_utf8_lossy(bad));
        }
        // The largest value is taken.
        let (m, _) = fetch_modifiers(b"t FETCH 1 (FLAGS) (CHANGEDSINCE 9223372036854775807)\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(m.changed_since, Some(MAX_MODSEQ));
    }

    #[test]
    fn store_modifier_is_split_off() {
        let (n, plain) = store_unchanged_since(b"t UID STORE 1:3 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(n, 320162338);
        assert_eq!(plain, b"t UID STORE 1:3 +FLAGS.SILENT (\\Deleted)\r\n");
        let (n, _) = store_unchanged_since(b"t STORE 1 (UNCHANGEDSINCE 0) FLAGS ()\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(store_unchanged_since(b"t STORE 1 +FLAGS (x)\r\n").unwrap(), None);
        for (bad, at, what) in [
            (&b"t STORE 1 () +FLAGS (x)\r\n"[..], 11, "expected UNCHANGEDSINCE"),
            (b"t STORE 1 (UNCHANGEDSINCE) +FLAGS (x)\r\n", 25, "expected a mod-sequence"),
            (b"t STORE 1 (UNCHANGEDSINCE 1 UNCHANGEDSINCE 2) +FLAGS (x)\r\n", 28, "once"),
            (b"t STORE 1 (UNCHANGEDSINCE 9999999999999999999) +FLAGS (x)\r\n", 26, "above 2^63-1"),
            (b"t STORE 1 (UNCHANGEDSINCE x) +FLAGS (x)\r\n", 26, "digits"),
        ] {
            let e = err_of(store_unchanged_since(bad));
            assert!(e.what.contains(what), "{}: {e}", String::from_utf8_lossy(bad));
            assert_eq!(e.at, at, "{}: {e}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn search_modseq_becomes_a_keyword() {
        let (v, plain) = search_modseq(b"t SEARCH MODSEQ \"/flags/\\\\draft\" all 620162338 OR NOT MODSEQ 5 SEEN\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(v, vec![620162338, 5]);
        assert_eq!(plain, b"t SEARCH KEYWORD $TandemModseq0 OR NOT KEYWORD $TandemModseq1 SEEN\r\n");
        assert_eq!(modseq_key("$TandemModseq1"), Some(1));
        assert_eq!(modseq_key("$Tandem"), None);
        let (v, plain) = search_modseq(b"t UID SORT (DATE) UTF-8 modseq 0\r\n").unwrap().unwrap();
        assert_eq!(v, vec![0]);
        assert_eq!(plain, b"t UID SORT (DATE) UTF-8 KEYWORD $TandemModseq0\r\n");
        // Quoted or in a literal it is a string.
        assert_eq!(search_modseq(b"t SEARCH SUBJECT \"MODSEQ\"\r\n").unwrap(), None);
        assert_eq!(search_modseq(b"t SEARCH SUBJECT {6}\r\nMODSEQ\r\n").unwrap(), None);
        assert_eq!(search_modseq(b"t FETCH 1 MODSEQ\r\n").unwrap(), None);
        for (bad, at, what) in [
            (&b"t SEARCH MODSEQ\r\n"[..], 15, "expected a mod-sequence"),
            (b"t SEARCH MODSEQ 9223372036854775808\r\n", 16, "above 2^63-1"),
            (b"t SEARCH MODSEQ \"/x\" all 5\r\n", 16, "entry name"),
            (b"t SEARCH MODSEQ \"/flags/\\\\seen\" mine 5\r\n", 32, "entry type"),
            (b"t SEARCH MODSEQ \"/flags/\\\\seen\" all\r\n", 35, "expected a mod-sequence"),
        ] {
            let e = err_of(search_modseq(bad));
            assert!(e.what.contains(what), "{}: {e}", String::from_utf8_lossy(bad));
            assert_eq!(e.at, at, "{}: {e}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        for cmd in [
            &b"t SELECT"[..],
            b"t SELECT x (",
            b"t SELECT x (QRESYNC",
            b"t SELECT x (QRESYNC (",
            b"t SELECT x (QRESYNC (1 1 (",
            b"t SELECT x (QRESYNC (1 1 1:4294967295 (1:4294967295 1:4294967295)))\r\n",
            b"t FETCH 1 (",
            b"t FETCH 1 ((((",
            b"t FETCH 1 ))) (CHANGEDSINCE 1)",
            b"t FETCH 1 (FLAGS) (CHANGEDSINCE",
            b"t UID FETCH 1 x (VANISHED",
            b"t STORE 1 (",
            b"t STORE 1 (UNCHANGEDSINCE",
            b"t SEARCH MODSEQ \"",
            b"t SEARCH MODSEQ \"/flags/x\"",
            b"t SEARCH MODSEQ {9}\r\n",
        ] {
            let _ = select_params(cmd);
            let _ = fetch_modifiers(cmd);
            let _ = store_unchanged_since(cmd);
            let _ = search_modseq(cmd);
        }
        let many = format!("t SEARCH {}\r\n", "MODSEQ 1 ".repeat(MAX_ITEMS + 1));
        assert!(err_of(search_modseq(many.as_bytes())).what.contains("too many"));
        assert_eq!(count(&[(1, u32::MAX), (1, u32::MAX)]), 2 * u64::from(u32::MAX));
    }
}
