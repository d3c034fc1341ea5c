//! The `$` of SEARCHRES (RFC 5182, part of IMAP4rev2, RFC 9051 section
//! 6.4.4.1): a sequence set that stands for the messages the last
//! `SEARCH RETURN (SAVE)` found.
//!
//! [`dollars`] finds every `$` of a command that is in the place of a
//! sequence set: the first argument of FETCH, STORE, COPY, MOVE and UID
//! EXPUNGE, and the search keys of SEARCH, SORT and THREAD (a bare `$` is
//! a set of sequence numbers there, `UID $` one of UIDs). A `$` anywhere
//! else (a keyword, a mailbox name, the argument of SUBJECT) is left
//! alone. [`substitute`] then writes the saved set in their place, so that
//! the RFC 3501 parser sees an ordinary command.

use super::ext::{head, Lexer, SyntaxError, Token, MAX_ITEMS};

type R<T> = Result<T, SyntaxError>;

/// One `$` in the place of a sequence set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dollar {
    /// Octet offset of the `$` in the command.
    pub at: usize,
    /// A set of UIDs (a UID command's set, or the argument of the UID
    /// search key); otherwise of sequence numbers.
    pub uid: bool,
}

/// How many arguments a search key takes after its name (`MODSEQ` is
/// counted by [`dollars`] itself: one argument or three).
fn key_arity(key: &[u8]) -> usize {
    const ONE: [&str; 20] = [
        "BCC",
        "BEFORE",
        "BODY",
        "CC",
        "FROM",
        "KEYWORD",
        "ON",
        "SINCE",
        "SUBJECT",
        "TEXT",
        "TO",
        "UNKEYWORD",
        "LARGER",
        "SMALLER",
        "SENTBEFORE",
        "SENTON",
        "SENTSINCE",
        "OLDER",
        "YOUNGER",
        "FILTER",
    ];
    if key.eq_ignore_ascii_case(b"HEADER") {
        2
    } else if ONE.iter().any(|k| key.eq_ignore_ascii_case(k.as_bytes())) {
        1
    } else {
        0
    }
}

/// The `$` of `cmd` that stand for sequence sets, in order.
pub fn dollars(cmd: &[u8]) -> R<Vec<Dollar>> {
    // Cheap: most commands have no `$` at all.
    if !cmd.contains(&b'$') {
        return Ok(Vec::new());
    }
    let (_, uid, name, mut lx) = head(cmd)?;
    match name.as_str() {
        "FETCH" | "STORE" | "COPY" | "MOVE" | "EXPUNGE" => {
            lx.skip_space();
            let at = lx.pos();
            Ok(match lx.next_token()? {
                Some(Token::Atom(b"$")) if name != "EXPUNGE" || uid => vec![Dollar { at, uid }],
                _ => Vec::new(),
            })
        }
        "SEARCH" => {
            if lx.peek()?.is_some_and(|t| t.is_atom("RETURN")) {
                lx.next_token()?;
                skip_list(&mut lx)?;
            }
            if lx.peek()?.is_some_and(|t| t.is_atom("CHARSET")) {
                lx.next_token()?;
                lx.next_token()?;
            }
            keys(&mut lx)
        }
        "SORT" => {
            skip_list(&mut lx)?;
            lx.next_token()?;
            keys(&mut lx)
        }
        "THREAD" => {
            lx.next_token()?;
            lx.next_token()?;
            keys(&mut lx)
        }
        _ => Ok(Vec::new()),
    }
}

/// Skip one parenthesised list (of atoms: RETURN options, SORT criteria).
fn skip_list(lx: &mut Lexer<'_>) -> R<()> {
    lx.expect(&Token::Open, "expected (")?;
    for _ in 0..=MAX_ITEMS {
        match lx.next_token()? {
            Some(Token::Close) => return Ok(()),
            Some(Token::Atom(_)) => {}
            _ => return lx.err("expected an option or )"),
        }
    }
    lx.err("too many options")
}

/// The `$` among search keys up to the end of the command.
fn keys(lx: &mut Lexer<'_>) -> R<Vec<Dollar>> {
    let mut out = Vec::new();
    loop {
        lx.skip_space();
        let at = lx.pos();
        let Some(tok) = lx.next_token()? else { return Ok(out) };
        let Token::Atom(word) = tok else { continue };
        if word == b"$" {
            out.push(Dollar { at, uid: false });
        } else if word.eq_ignore_ascii_case(b"UID") {
            lx.skip_space();
            let at = lx.pos();
            if let Some(Token::Atom(b"$")) = lx.next_token()? {
                out.push(Dollar { at, uid: true });
            }
        } else if word.eq_ignore_ascii_case(b"MODSEQ") {
            // `MODSEQ [entry-name entry-type] value` (RFC 7162 section 3.1.5).
            let n = if matches!(lx.peek()?, Some(Token::Quoted(_) | Token::Literal(_))) {
                3
            } else {
                1
            };
            for _ in 0..n {
                lx.next_token()?;
            }
        } else {
            for _ in 0..key_arity(word) {
                lx.next_token()?;
            }
        }
        if out.len() > MAX_ITEMS {
            return lx.err("too many $ in one command");
        }
    }
}

/// `cmd` with each `$` of `found` replaced by `seqs` or `uids` (its kind of
/// set in the sequence-set syntax).
pub fn substitute(cmd: &[u8], found: &[Dollar], seqs: &str, uids: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(cmd.len() + found.len() * seqs.len().max(uids.len()));
    let mut copied = 0;
    for d in found {
        if d.at < copied || cmd.get(d.at) != Some(&b'$') {
            continue;
        }
        out.extend_from_slice(&cmd[copied..d.at]);
        out.extend_from_slice(if d.uid { uids } else { seqs }.as_bytes());
        copied = d.at + 1;
    }
    out.extend_from_slice(&cmd[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(cmd: &str) -> Vec<(usize, bool)> {
        dollars(cmd.as_bytes()).unwrap().into_iter().map(|d| (d.at, d.uid)).collect()
    }

    #[test]
    fn dollar_as_the_set_of_message_commands() {
        assert_eq!(found("a FETCH $ (FLAGS)\r\n"), vec![(8, false)]);
        assert_eq!(found("a UID FETCH $ (FLAGS)\r\n"), vec![(12, true)]);
        assert_eq!(found("a uid store $ +FLAGS ($Junk)\r\n"), vec![(12, true)]);
        assert_eq!(found("a COPY $ \"$\"\r\n"), vec![(7, false)]);
        assert_eq!(found("a UID MOVE $ $\r\n"), vec![(11, true)]);
        assert_eq!(found("a UID EXPUNGE $\r\n"), vec![(14, true)]);
        // Not a set: EXPUNGE takes none, keywords and names are atoms.
        assert_eq!(found("a EXPUNGE $\r\n"), vec![]);
        assert_eq!(found("a STORE 1 +FLAGS ($)\r\n"), vec![]);
        assert_eq!(found("a SELECT $\r\n"), vec![]);
        assert_eq!(found("a FETCH $1 FLAGS\r\n"), vec![]);
        assert_eq!(found("a NOOP\r\n"), vec![]);
    }

    #[test]
    fn dollar_among_search_keys() {
        assert_eq!(found("a SEARCH $\r\n"), vec![(9, false)]);
        assert_eq!(found("a UID SEARCH $ UNSEEN\r\n"), vec![(13, false)]);
        assert_eq!(found("a UID SEARCH UID $\r\n"), vec![(17, true)]);
        assert_eq!(
            found("a SEARCH RETURN (SAVE MIN) CHARSET UTF-8 OR $ (NOT $)\r\n"),
            vec![(44, false), (51, false)]
        );
        // Arguments of keys are strings, not sets.
        assert_eq!(found("a SEARCH SUBJECT $ HEADER $ $ KEYWORD $ SMALLER 5\r\n"), vec![]);
        assert_eq!(found("a SEARCH MODSEQ \"/flags/$x\" all 5 $\r\n"), vec![(34, false)]);
        assert_eq!(found("a SEARCH BODY {1}\r\n$ $\r\n"), vec![(21, false)]);
        assert_eq!(found("a UID SORT (DATE) UTF-8 $\r\n"), vec![(24, false)]);
        assert_eq!(found("a THREAD REFERENCES UTF-8 UID $\r\n"), vec![(30, true)]);
    }

    #[test]
    fn substitution_writes_the_saved_set() {
        let cmd = b"a UID SEARCH RETURN (ALL) $ UID $\r\n";
        let d = dollars(cmd).unwrap();
        assert_eq!(substitute(cmd, &d, "1:3", "7,9"), b"a UID SEARCH RETURN (ALL) 1:3 UID 7,9\r\n");
        let cmd = b"a UID FETCH $ (UID)\r\n";
        let d = dollars(cmd).unwrap();
        assert_eq!(substitute(cmd, &d, "1", "4:5"), b"a UID FETCH 4:5 (UID)\r\n");
        // Offsets that are not a `$` are not written over.
        let bogus = [Dollar { at: 0, uid: false }, Dollar { at: 99, uid: true }];
        assert_eq!(substitute(b"a NOOP\r\n", &bogus, "1", "2"), b"a NOOP\r\n");
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for cmd in [
            &b"$"[..],
            b"a SEARCH $ {9}\r\n$",
            b"a SEARCH RETURN ($\r\n",
            b"a SORT $\r\n",
            b"a THREAD\r\n$",
            b"a SEARCH HEADER\r\n$",
            b"a SEARCH MODSEQ \"x\r\n$",
            b"\xff FETCH $\r\n",
        ] {
            let _ = dollars(cmd);
        }
        assert!(dollars(b"a SEARCH RETURN $ ALL\r\n").is_err());
    }
}
