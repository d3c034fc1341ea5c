//! Evaluation of IMAP `SEARCH` programs (RFC 3501 section 6.4.4) against one message at a time.
//!
//! The parsed program is an [`imap_codec::imap_types::search::SearchKey`]; the message is anything
//! implementing [`SearchMessage`]. The module is pure: no I/O, no clock, no async.
//!
//! # Laziness
//!
//! The accessors of [`SearchMessage`] fall into cost tiers:
//!
//! 1. cheap: `seq`, `uid`, `has_flag`, `is_recent`, `internal_date`, `size`;
//! 2. header: `header`, `sent_date`;
//! 3. body: `body_text`;
//! 4. text: `full_text`.
//!
//! Within an AND (the imap-types `And` variant, i.e. keys written one after another or grouped in
//! parentheses; nested groups are flattened) the keys are evaluated tier by tier, cheapest first,
//! and evaluation stops at the first key that fails. Of the two operands of an `OR` the cheaper one
//! is evaluated first and the other only when the first fails. A costly accessor is called only when
//! a key that needs it is actually evaluated, and at most once per [`matches()`] call (its result is
//! cached for the rest of that evaluation, per header field name for `header`). Empty `BODY ""` and
//! `TEXT ""` match every message without fetching any text.
//!
//! # String matching
//!
//! String keys are case-insensitive substring matches. Both sides are folded with per-character
//! Unicode lowercasing (plus Greek final sigma `ς` → `σ`), so `KÖLN` finds `Köln`. This is simple
//! lowercase mapping, not full case folding: `STRASSE` does not find `Straße`. Search strings that are
//! not valid UTF-8 are decoded lossily (each invalid byte sequence becomes U+FFFD); validate the
//! charset first with [`check_charset`].

use std::cell::{OnceCell, RefCell};

use chrono::Datelike;
use imap_codec::imap_types::{
    core::AString,
    datetime::NaiveDate,
    search::SearchKey,
    sequence::{SeqOrUid, Sequence, SequenceSet},
};

/// What the evaluator needs to know about one message.
///
/// Methods that are costly (`header`, `body_text`, `full_text`, `sent_date`) are only called when a
/// key needs them, and each at most once (per field name for `header`) per [`matches()`] call.
pub trait SearchMessage {
    /// The message sequence number (1-based).
    fn seq(&self) -> u32;
    /// The message UID.
    fn uid(&self) -> u32;
    /// Is the flag set on the message?
    ///
    /// The evaluator asks for system flags spelled `\Seen`, `\Answered`, `\Flagged`, `\Deleted`,
    /// `\Draft`, and for keywords exactly as the client wrote them (`KEYWORD`/`UNKEYWORD`).
    /// Implementations compare case-insensitively, system flags and keywords alike.
    fn has_flag(&self, flag: &str) -> bool;
    /// Does the message carry the `\Recent` flag in this session?
    fn is_recent(&self) -> bool;
    /// INTERNALDATE as seconds since the epoch plus the zone offset in minutes east of UTC.
    fn internal_date(&self) -> (i64, i16);
    /// RFC822.SIZE of the message in octets.
    fn size(&self) -> u64;
    /// Decoded (RFC 2047, unfolded) values of a header field of the message; empty when absent.
    ///
    /// The field name is passed as the client spelled it (`HEADER`) or as `From`, `To`, `Cc`, `Bcc`,
    /// `Subject`; implementations match it case-insensitively. One element per occurrence of the field.
    fn header(&self, name: &str) -> Vec<String>;
    /// The Date: header as (seconds since epoch, zone offset minutes), if it parses.
    fn sent_date(&self) -> Option<(i64, i16)>;
    /// Decoded text of the body (for BODY).
    fn body_text(&self) -> String;
    /// Header block as text plus decoded body (for TEXT).
    fn full_text(&self) -> String;
}

/// Context for sequence-set keys: the largest sequence number and UID in the mailbox, which is what
/// `*` stands for.
///
/// `max_uid` is the UID of the last message currently in the mailbox (not UIDNEXT - 1), so that
/// `UID 559:*` always includes the last message, as RFC 3501 section 6.4.8 requires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Context {
    /// Number of messages in the mailbox (the sequence number of the last one).
    pub max_seq: u32,
    /// UID of the last message in the mailbox.
    pub max_uid: u32,
}

/// The charsets [`check_charset`] accepts, in the form of the `BADCHARSET` response code list.
pub const SUPPORTED_CHARSETS: [&str; 2] = ["US-ASCII", "UTF-8"];

/// Is the key usable with CHARSET `charset`?
///
/// Accepts no charset (RFC 3501 default, US-ASCII), `US-ASCII` and `UTF-8`, case-insensitively.
/// Anything else gives `Err(reason)`; the server then answers
/// `NO [BADCHARSET (US-ASCII UTF-8)] reason` (see [`SUPPORTED_CHARSETS`]).
pub fn check_charset(charset: Option<&str>) -> Result<(), String> {
    match charset {
        None => Ok(()),
        Some(name) if SUPPORTED_CHARSETS.iter().any(|ok| ok.eq_ignore_ascii_case(name)) => Ok(()),
        Some(name) => Err(format!("unsupported charset {name}")),
    }
}

/// Does `msg` match the search program `key`?
///
/// `ctx` resolves `*` in sequence sets. Evaluation is lazy as described in the [module docs](self).
pub fn matches(key: &SearchKey<'_>, msg: &dyn SearchMessage, ctx: &Context) -> bool {
    Evaluator::new(msg, ctx).eval(key)
}

/// Cost tiers of keys, cheapest first; `And`/`Or` evaluate cheaper operands before costlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cost {
    /// Flags, sequence numbers, UIDs, size, INTERNALDATE.
    Cheap,
    /// One header field or the parsed Date: header.
    Header,
    /// The decoded body.
    Body,
    /// The whole message text.
    Text,
}

const TIERS: [Cost; 4] = [Cost::Cheap, Cost::Header, Cost::Body, Cost::Text];

/// The most costly accessor evaluating `key` may need.
fn cost(key: &SearchKey<'_>) -> Cost {
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().map(cost).max().unwrap_or(Cost::Cheap),
        SearchKey::Or(left, right) => cost(left).max(cost(right)),
        SearchKey::Not(inner) => cost(inner),
        SearchKey::SequenceSet(_)
        | SearchKey::Uid(_)
        | SearchKey::All
        | SearchKey::Answered
        | SearchKey::Deleted
        | SearchKey::Draft
        | SearchKey::Flagged
        | SearchKey::Seen
        | SearchKey::Recent
        | SearchKey::New
        | SearchKey::Old
        | SearchKey::Unanswered
        | SearchKey::Undeleted
        | SearchKey::Undraft
        | SearchKey::Unflagged
        | SearchKey::Unseen
        | SearchKey::Keyword(_)
        | SearchKey::Unkeyword(_)
        | SearchKey::Larger(_)
        | SearchKey::Smaller(_)
        | SearchKey::Before(_)
        | SearchKey::On(_)
        | SearchKey::Since(_) => Cost::Cheap,
        SearchKey::Bcc(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::To(_)
        | SearchKey::Subject(_)
        | SearchKey::Header(_, _)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_) => Cost::Header,
        SearchKey::Body(_) => Cost::Body,
        SearchKey::Text(_) => Cost::Text,
    }
}

/// Per-message evaluation state: the message, the context and caches of the costly accessors.
struct Evaluator<'m> {
    msg: &'m dyn SearchMessage,
    ctx: &'m Context,
    /// Folded values of the header fields fetched so far, keyed by ASCII-lowercased field name.
    headers: RefCell<Vec<(String, Vec<String>)>>,
    /// Day number (days since 1970-01-01) of the Date: header in its own zone.
    sent_day: OnceCell<Option<i64>>,
    /// Folded `body_text`.
    body: OnceCell<String>,
    /// Folded `full_text`.
    text: OnceCell<String>,
}

impl<'m> Evaluator<'m> {
    fn new(msg: &'m dyn SearchMessage, ctx: &'m Context) -> Self {
        Evaluator {
            msg,
            ctx,
            headers: RefCell::new(Vec::new()),
            sent_day: OnceCell::new(),
            body: OnceCell::new(),
            text: OnceCell::new(),
        }
    }

    fn eval(&self, key: &SearchKey<'_>) -> bool {
        let msg = self.msg;
        match key {
            SearchKey::And(keys) => TIERS.iter().all(|&tier| self.eval_and_tier(keys.as_ref(), tier)),
            SearchKey::Or(left, right) => {
                let (first, second) = if cost(right) < cost(left) { (right, left) } else { (left, right) };
                self.eval(first) || self.eval(second)
            }
            SearchKey::Not(inner) => !self.eval(inner),
            SearchKey::All => true,

            SearchKey::SequenceSet(set) => in_set(set, msg.seq(), self.ctx.max_seq),
            SearchKey::Uid(set) => in_set(set, msg.uid(), self.ctx.max_uid),

            SearchKey::Answered => msg.has_flag("\\Answered"),
            SearchKey::Deleted => msg.has_flag("\\Deleted"),
            SearchKey::Draft => msg.has_flag("\\Draft"),
            SearchKey::Flagged => msg.has_flag("\\Flagged"),
            SearchKey::Seen => msg.has_flag("\\Seen"),
            SearchKey::Unanswered => !msg.has_flag("\\Answered"),
            SearchKey::Undeleted => !msg.has_flag("\\Deleted"),
            SearchKey::Undraft => !msg.has_flag("\\Draft"),
            SearchKey::Unflagged => !msg.has_flag("\\Flagged"),
            SearchKey::Unseen => !msg.has_flag("\\Seen"),
            SearchKey::Keyword(keyword) => msg.has_flag(keyword.inner()),
            SearchKey::Unkeyword(keyword) => !msg.has_flag(keyword.inner()),
            SearchKey::Recent => msg.is_recent(),
            SearchKey::New => msg.is_recent() && !msg.has_flag("\\Seen"),
            SearchKey::Old => !msg.is_recent(),

            SearchKey::Larger(n) => msg.size() > u64::from(*n),
            SearchKey::Smaller(n) => msg.size() < u64::from(*n),

            SearchKey::Before(date) => local_day(msg.internal_date()) < day_number(date),
            SearchKey::On(date) => local_day(msg.internal_date()) == day_number(date),
            SearchKey::Since(date) => local_day(msg.internal_date()) >= day_number(date),
            SearchKey::SentBefore(date) => self.sent_day().is_some_and(|day| day < day_number(date)),
            SearchKey::SentOn(date) => self.sent_day().is_some_and(|day| day == day_number(date)),
            SearchKey::SentSince(date) => self.sent_day().is_some_and(|day| day >= day_number(date)),

            SearchKey::Bcc(needle) => self.header_contains("Bcc", needle),
            SearchKey::Cc(needle) => self.header_contains("Cc", needle),
            SearchKey::From(needle) => self.header_contains("From", needle),
            SearchKey::To(needle) => self.header_contains("To", needle),
            SearchKey::Subject(needle) => self.header_contains("Subject", needle),
            SearchKey::Header(name, needle) => self.header_contains(&String::from_utf8_lossy(name.as_ref()), needle),

            SearchKey::Body(needle) => {
                let needle = fold_astring(needle);
                needle.is_empty() || self.body.get_or_init(|| fold(&msg.body_text())).contains(&needle)
            }
            SearchKey::Text(needle) => {
                let needle = fold_astring(needle);
                needle.is_empty() || self.text.get_or_init(|| fold(&msg.full_text())).contains(&needle)
            }
        }
    }

    /// Do all keys of cost `tier` in the conjunction `keys` hold? Nested `And`s are flattened (AND is
    /// associative), so a cheap key inside a parenthesized group is evaluated before a costly key
    /// outside it.
    fn eval_and_tier(&self, keys: &[SearchKey<'_>], tier: Cost) -> bool {
        keys.iter().all(|key| {
            if let SearchKey::And(inner) = key {
                self.eval_and_tier(inner.as_ref(), tier)
            } else {
                cost(key) != tier || self.eval(key)
            }
        })
    }

    /// Day number of the Date: header in its own zone, fetched once.
    fn sent_day(&self) -> Option<i64> {
        *self.sent_day.get_or_init(|| self.msg.sent_date().map(local_day))
    }

    /// Does some occurrence of header field `name` contain `needle`? With an empty needle: is the
    /// field present at all (RFC 3501 `HEADER field ""`; applied to FROM/TO/CC/BCC/SUBJECT alike).
    fn header_contains(&self, name: &str, needle: &AString<'_>) -> bool {
        let needle = fold_astring(needle);
        let key = name.to_ascii_lowercase();
        let mut cache = self.headers.borrow_mut();
        let index = match cache.iter().position(|(cached, _)| *cached == key) {
            Some(index) => index,
            None => {
                let values = self.msg.header(name).iter().map(|value| fold(value)).collect();
                cache.push((key, values));
                cache.len() - 1
            }
        };
        cache[index].1.iter().any(|value| value.contains(&needle))
    }
}

/// Is `value` in the sequence set, `*` standing for `max`? Ranges may be given in either order.
fn in_set(set: &SequenceSet, value: u32, max: u32) -> bool {
    let resolve = |item: &SeqOrUid| match item {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => max,
    };
    set.0.as_ref().iter().any(|sequence| match sequence {
        Sequence::Single(item) => resolve(item) == value,
        Sequence::Range(from, to) => {
            let (a, b) = (resolve(from), resolve(to));
            (a.min(b)..=a.max(b)).contains(&value)
        }
    })
}

/// chrono's `num_days_from_ce` of 1970-01-01 (0001-01-01 being day 1).
const UNIX_EPOCH_DAYS_FROM_CE: i64 = 719_163;

/// Days since 1970-01-01 of a search date.
fn day_number(date: &NaiveDate) -> i64 {
    i64::from(date.as_ref().num_days_from_ce()) - UNIX_EPOCH_DAYS_FROM_CE
}

/// Days since 1970-01-01 of a timestamp's calendar date in its own zone (time and zone disregarded).
fn local_day((seconds, offset_minutes): (i64, i16)) -> i64 {
    seconds.saturating_add(i64::from(offset_minutes) * 60).div_euclid(86_400)
}

/// Folds a search string for case-insensitive comparison (see [`fold`]).
fn fold_astring(value: &AString<'_>) -> String {
    fold(&String::from_utf8_lossy(value.as_ref()))
}

/// Case-insensitive comparison form: per-character Unicode lowercase, final sigma as sigma.
fn fold(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    text.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c == 'ς' { 'σ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::cell::Cell;

    use imap_codec::{
        decode::Decoder,
        imap_types::{
            command::CommandBody,
            core::{IString, Literal},
        },
        CommandCodec,
    };

    /// A message with call counters for the costly accessors.
    struct Msg {
        seq: u32,
        uid: u32,
        flags: Vec<&'static str>,
        recent: bool,
        internal: (i64, i16),
        size: u64,
        headers: Vec<(&'static str, &'static str)>,
        date: Option<(i64, i16)>,
        body: &'static str,
        header_calls: Cell<u32>,
        sent_calls: Cell<u32>,
        body_calls: Cell<u32>,
        text_calls: Cell<u32>,
    }

    impl Msg {
        /// Message 4 of 10 (UID 500), \Seen \Flagged $Work, 2 KiB, 1-Feb-2024 02:00 +0900.
        fn sample() -> Msg {
            Msg {
                seq: 4,
                uid: 500,
                flags: vec!["\\Seen", "\\Flagged", "$Work"],
                recent: false,
                internal: at(2024, 2, 1, 2, 0, 9 * 60),
                size: 2048,
                headers: vec![
                    ("From", "Alice Example <alice@example.org>"),
                    ("To", "Bob <bob@example.net>"),
                    ("To", "Carol <carol@example.net>"),
                    ("Cc", "dave@example.com"),
                    ("Subject", "Quarterly Report"),
                    ("X-Empty", ""),
                    ("Date", "Wed, 31 Jan 2024 23:30:00 -0500"),
                ],
                date: Some(at(2024, 1, 31, 23, 30, -5 * 60)),
                body: "Hello Bob,\r\nplease find the NUMBERS attached.\r\n",
                header_calls: Cell::new(0),
                sent_calls: Cell::new(0),
                body_calls: Cell::new(0),
                text_calls: Cell::new(0),
            }
        }

        fn costly_calls(&self) -> u32 {
            self.header_calls.get() + self.sent_calls.get() + self.body_calls.get() + self.text_calls.get()
        }
    }

    impl SearchMessage for Msg {
        fn seq(&self) -> u32 {
            self.seq
        }
        fn uid(&self) -> u32 {
            self.uid
        }
        fn has_flag(&self, flag: &str) -> bool {
            self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
        }
        fn is_recent(&self) -> bool {
            self.recent
        }
        fn internal_date(&self) -> (i64, i16) {
            self.internal
        }
        fn size(&self) -> u64 {
            self.size
        }
        fn header(&self, name: &str) -> Vec<String> {
            self.header_calls.set(self.header_calls.get() + 1);
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_string())
                .collect()
        }
        fn sent_date(&self) -> Option<(i64, i16)> {
            self.sent_calls.set(self.sent_calls.get() + 1);
            self.date
        }
        fn body_text(&self) -> String {
            self.body_calls.set(self.body_calls.get() + 1);
            self.body.to_string()
        }
        fn full_text(&self) -> String {
            self.text_calls.set(self.text_calls.get() + 1);
            let mut text: String = self.headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
            text.push_str("\r\n");
            text.push_str(self.body);
            text
        }
    }

    const CTX: Context = Context { max_seq: 10, max_uid: 600 };

    /// Local wall-clock time in a zone `offset` minutes east of UTC, as (epoch seconds, offset).
    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, offset: i16) -> (i64, i16) {
        let local = chrono::NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap()
            .and_utc()
            .timestamp();
        (local - i64::from(offset) * 60, offset)
    }

    /// Decodes `A1 SEARCH <args>` with imap-codec, returning the charset and the program.
    fn parse_full(args: &str) -> (Option<String>, SearchKey<'static>) {
        let line = format!("A1 SEARCH {args}\r\n");
        let (rest, command) = CommandCodec::default()
            .decode_static(line.as_bytes())
            .unwrap_or_else(|e| panic!("{line:?}: {e:?}"));
        assert!(rest.is_empty(), "trailing input after {line:?}");
        match command.body {
            CommandBody::Search { charset, criteria, uid } => {
                assert!(!uid);
                (charset.map(|c| c.as_ref().to_string()), criteria)
            }
            other => panic!("not a SEARCH: {other:?}"),
        }
    }

    fn parse(args: &str) -> SearchKey<'static> {
        parse_full(args).1
    }

    fn eval(args: &str, msg: &Msg) -> bool {
        matches(&parse(args), msg, &CTX)
    }

    fn check_all(msg: &Msg, cases: &[(&str, bool)]) {
        for (args, expected) in cases {
            assert_eq!(eval(args, msg), *expected, "SEARCH {args}");
        }
    }

    fn literal(text: &str) -> AString<'static> {
        AString::String(IString::Literal(Literal::try_from(text.to_string()).unwrap()))
    }

    #[test]
    fn flag_keys() {
        check_all(
            &Msg::sample(),
            &[
                ("ALL", true),
                ("SEEN", true),
                ("UNSEEN", false),
                ("FLAGGED", true),
                ("UNFLAGGED", false),
                ("ANSWERED", false),
                ("UNANSWERED", true),
                ("DELETED", false),
                ("UNDELETED", true),
                ("DRAFT", false),
                ("UNDRAFT", true),
                ("KEYWORD $Work", true),
                ("KEYWORD $work", true),
                ("KEYWORD $Junk", false),
                ("UNKEYWORD $Work", false),
                ("UNKEYWORD $Junk", true),
                ("RECENT", false),
                ("OLD", true),
                ("NEW", false),
            ],
        );
        let mut msg = Msg::sample();
        msg.flags = vec!["\\Answered", "\\Deleted", "\\Draft"];
        msg.recent = true;
        check_all(
            &msg,
            &[
                ("SEEN", false),
                ("UNSEEN", true),
                ("FLAGGED", false),
                ("UNFLAGGED", true),
                ("ANSWERED", true),
                ("UNANSWERED", false),
                ("DELETED", true),
                ("UNDELETED", false),
                ("DRAFT", true),
                ("UNDRAFT", false),
                ("RECENT", true),
                ("OLD", false),
                ("NEW", true),
            ],
        );
        // Recent but seen: not NEW, not OLD.
        msg.flags = vec!["\\SEEN"];
        check_all(&msg, &[("NEW", false), ("OLD", false), ("RECENT", true), ("SEEN", true)]);
        assert_eq!(msg.costly_calls(), 0);
    }

    #[test]
    fn size_keys_are_strict() {
        check_all(
            &Msg::sample(),
            &[
                ("LARGER 2047", true),
                ("LARGER 2048", false),
                ("SMALLER 2049", true),
                ("SMALLER 2048", false),
                ("LARGER 0", true),
                ("SMALLER 0", false),
            ],
        );
    }

    #[test]
    fn sequence_sets() {
        // Message 4 of 10.
        check_all(
            &Msg::sample(),
            &[
                ("4", true),
                ("3", false),
                ("*", false),
                ("1:3", false),
                ("3:5", true),
                ("5:3", true),
                ("*:4", true),
                ("4:*", true),
                ("*:5", false),
                ("1,2,4", true),
                ("1,2,5:6", false),
                ("1:*", true),
                ("NOT 4", false),
            ],
        );
        let mut last = Msg::sample();
        last.seq = 10;
        check_all(
            &last,
            &[
                ("*", true),
                ("10", true),
                ("9", false),
                ("12:*", true),
                ("*:12", true),
                ("11:12", false),
            ],
        );
    }

    #[test]
    fn uid_sets() {
        // UID 500; the mailbox's largest UID is 600.
        check_all(
            &Msg::sample(),
            &[
                ("UID 500", true),
                ("UID 501", false),
                ("UID *", false),
                ("UID 400:*", true),
                ("UID *:400", true),
                ("UID 501:*", false),
                ("UID 600:500", true),
                ("UID 1:499,501:*", false),
                ("UID 1,500,7", true),
                ("NOT UID 500", false),
            ],
        );
        // RFC 3501 6.4.8: 559:* includes the last message even when 559 is beyond its UID.
        let mut last = Msg::sample();
        last.uid = 600;
        check_all(
            &last,
            &[("UID 559:*", true), ("UID 700:*", true), ("UID *", true), ("UID 601:700", false)],
        );
    }

    #[test]
    fn internal_date_uses_its_own_zone() {
        // 1-Feb-2024 02:00 +0900 is 31-Jan-2024 17:00 UTC: the date part in its own zone is 1 Feb.
        check_all(
            &Msg::sample(),
            &[
                ("ON 1-Feb-2024", true),
                ("ON 31-Jan-2024", false),
                ("ON 2-Feb-2024", false),
                ("SINCE 1-Feb-2024", true),
                ("SINCE 2-Feb-2024", false),
                ("SINCE 31-Jan-2024", true),
                ("BEFORE 1-Feb-2024", false),
                ("BEFORE 2-Feb-2024", true),
                ("BEFORE 31-Jan-2024", false),
            ],
        );
        // The same instant stored in UTC is 31 Jan.
        let mut utc = Msg::sample();
        utc.internal = (utc.internal.0, 0);
        check_all(
            &utc,
            &[
                ("ON 31-Jan-2024", true),
                ("ON 1-Feb-2024", false),
                ("BEFORE 1-Feb-2024", true),
                ("SINCE 1-Feb-2024", false),
            ],
        );
        // West of UTC: 31-Jan-2024 23:59 -0500 is already 1 Feb in UTC but 31 Jan locally.
        let mut west = Msg::sample();
        west.internal = at(2024, 1, 31, 23, 59, -5 * 60);
        check_all(&west, &[("ON 31-Jan-2024", true), ("ON 1-Feb-2024", false)]);
        // Exactly midnight local time belongs to the new day.
        let mut midnight = Msg::sample();
        midnight.internal = at(2024, 3, 1, 0, 0, 9 * 60);
        check_all(
            &midnight,
            &[("ON 1-Mar-2024", true), ("ON 29-Feb-2024", false), ("BEFORE 1-Mar-2024", false)],
        );
        // Before the epoch (negative seconds) rounds towards the earlier day.
        let mut old = Msg::sample();
        old.internal = (-3600, 0);
        check_all(
            &old,
            &[("ON 31-Dec-1969", true), ("ON 1-Jan-1970", false), ("BEFORE 1-Jan-1970", true)],
        );
        assert_eq!(old.costly_calls(), 0);
    }

    #[test]
    fn sent_dates_use_the_date_header_zone() {
        // Date: Wed, 31 Jan 2024 23:30:00 -0500 (1 Feb in UTC).
        let msg = Msg::sample();
        check_all(
            &msg,
            &[
                ("SENTON 31-Jan-2024", true),
                ("SENTON 1-Feb-2024", false),
                ("SENTSINCE 31-Jan-2024", true),
                ("SENTSINCE 1-Feb-2024", false),
                ("SENTBEFORE 1-Feb-2024", true),
                ("SENTBEFORE 31-Jan-2024", false),
            ],
        );
        assert_eq!(msg.body_calls.get() + msg.text_calls.get() + msg.header_calls.get(), 0);
        // No parsable Date: header matches none of the SENT* keys (but NOT does).
        let mut undated = Msg::sample();
        undated.date = None;
        check_all(
            &undated,
            &[
                ("SENTON 31-Jan-2024", false),
                ("SENTSINCE 1-Jan-1970", false),
                ("SENTBEFORE 1-Jan-2100", false),
                ("NOT SENTBEFORE 1-Jan-2100", true),
            ],
        );
    }

    #[test]
    fn address_and_subject_keys() {
        check_all(
            &Msg::sample(),
            &[
                ("FROM alice", true),
                ("FROM \"ALICE EXAMPLE\"", true),
                ("FROM bob", false),
                ("TO bob", true),
                ("TO carol@EXAMPLE.net", true),
                ("TO dave", false),
                ("CC dave@example.com", true),
                ("CC alice", false),
                ("BCC alice", false),
                ("BCC \"\"", false),
                ("SUBJECT report", true),
                ("SUBJECT \"quarterly rep\"", true),
                ("SUBJECT annual", false),
                ("SUBJECT \"\"", true),
            ],
        );
        let mut bcc = Msg::sample();
        bcc.headers.push(("BCC", "Eve <eve@example.org>"));
        check_all(
            &bcc,
            &[
                ("BCC eve", true),
                ("BCC EXAMPLE.ORG", true),
                ("BCC mallory", false),
                ("BCC \"\"", true),
                ("NOT BCC eve", false),
            ],
        );
    }

    #[test]
    fn header_key() {
        check_all(
            &Msg::sample(),
            &[
                ("HEADER Subject Quarterly", true),
                ("HEADER subject QUARTERLY", true),
                ("HEADER Subject Annual", false),
                ("HEADER X-Empty \"\"", true),
                ("HEADER x-empty \"\"", true),
                ("HEADER X-Missing \"\"", false),
                ("HEADER X-Empty x", false),
                ("HEADER Date \"31 Jan 2024\"", true),
                ("HEADER To carol", true),
                ("NOT HEADER X-Missing \"\"", true),
            ],
        );
    }

    #[test]
    fn body_and_text_keys() {
        let msg = Msg::sample();
        check_all(
            &msg,
            &[
                ("BODY numbers", true),
                ("BODY \"hello bob\"", true),
                ("BODY alice", false),
                ("BODY \"\"", true),
                ("TEXT numbers", true),
                ("TEXT alice", true),
                ("TEXT \"subject: quarterly\"", true),
                ("TEXT zebra", false),
                ("TEXT \"\"", true),
            ],
        );
        // A body key is not a header search: the From address is only in the header block.
        assert!(!eval("BODY alice@example.org", &msg));
    }

    #[test]
    fn empty_body_and_text_need_no_fetch() {
        let msg = Msg::sample();
        assert!(eval("BODY \"\"", &msg));
        assert!(eval("TEXT \"\"", &msg));
        assert_eq!(msg.costly_calls(), 0);
    }

    #[test]
    fn logic_keys() {
        check_all(
            &Msg::sample(),
            &[
                ("NOT SEEN", false),
                ("NOT NOT SEEN", true),
                ("NOT NOT NOT SEEN", false),
                ("OR SEEN DRAFT", true),
                ("OR DRAFT SEEN", true),
                ("OR DRAFT DELETED", false),
                ("NOT OR DRAFT DELETED", true),
                ("OR NOT SEEN NOT FLAGGED", false),
                ("OR NOT SEEN OR DRAFT NOT FLAGGED", false),
                ("OR NOT SEEN OR DRAFT FLAGGED", true),
                ("SEEN FLAGGED", true),
                ("SEEN DRAFT", false),
                ("(SEEN FLAGGED)", true),
                ("(SEEN (FLAGGED (DRAFT)))", false),
                ("NOT (SEEN DRAFT)", true),
                ("OR (DRAFT SEEN) (FLAGGED LARGER 100)", true),
                ("OR (DRAFT SEEN) (FLAGGED LARGER 100000)", false),
                ("OR FROM alice NOT SEEN SINCE 1-Feb-2024", true),
                ("OR FROM bob NOT SEEN SINCE 1-Feb-2024", false),
                ("OR FROM alice NOT SEEN SINCE 2-Feb-2024", false),
                ("NOT OR FROM bob BODY zebra", true),
                ("OR (NOT (FROM bob)) (BODY zebra)", true),
                ("4 UID 500 FROM alice SUBJECT report BODY numbers TEXT attached", true),
                ("4 UID 500 FROM alice SUBJECT report BODY numbers TEXT zebra", false),
            ],
        );
    }

    #[test]
    fn concatenated_keys_decode_to_and() {
        assert!(matches!(parse("SEEN FLAGGED"), SearchKey::And(ref keys) if keys.as_ref().len() == 2));
        assert!(matches!(parse("OR FROM \"alice\" NOT SEEN SINCE 1-Feb-2024"), SearchKey::And(_)));
        assert!(matches!(parse("SEEN"), SearchKey::Seen));
        assert!(eval("(SEEN)", &Msg::sample()));
        assert!(!eval("(UNSEEN)", &Msg::sample()));
    }

    #[test]
    fn cheap_only_searches_never_fetch_costly_data() {
        let msg = Msg::sample();
        for args in [
            "SEEN",
            "UNSEEN",
            "ALL",
            "1:*",
            "UID 1:*",
            "LARGER 1 SMALLER 100000",
            "OR NEW OLD",
            "NOT ON 1-Feb-2024",
            "KEYWORD $Work",
        ] {
            eval(args, &msg);
        }
        assert_eq!(msg.costly_calls(), 0);
    }

    #[test]
    fn and_evaluates_cheap_keys_first() {
        // The costly keys come first in the text, but the failing cheap key decides.
        let msg = Msg::sample();
        assert!(!eval("TEXT numbers BODY numbers SENTON 31-Jan-2024 FROM alice UNSEEN", &msg));
        assert_eq!(msg.costly_calls(), 0);

        // Headers before body before text: a failing header key saves both text fetches.
        let msg = Msg::sample();
        assert!(!eval("TEXT numbers BODY numbers FROM bob", &msg));
        assert_eq!((msg.header_calls.get(), msg.body_calls.get(), msg.text_calls.get()), (1, 0, 0));

        // A failing BODY saves the full text.
        let msg = Msg::sample();
        assert!(!eval("TEXT numbers BODY zebra FROM alice", &msg));
        assert_eq!((msg.header_calls.get(), msg.body_calls.get(), msg.text_calls.get()), (1, 1, 0));

        // Nested ANDs are ordered too.
        let msg = Msg::sample();
        assert!(!eval("(BODY numbers (TEXT numbers DRAFT))", &msg));
        assert_eq!(msg.costly_calls(), 0);
    }

    #[test]
    fn or_short_circuits_on_cheaper_operand() {
        let msg = Msg::sample();
        assert!(eval("OR BODY zebra SEEN", &msg));
        assert!(eval("OR SEEN BODY zebra", &msg));
        assert!(eval("OR TEXT zebra (FROM alice)", &msg));
        assert_eq!(msg.body_calls.get() + msg.text_calls.get(), 0);

        // When the cheap side fails the costly side is consulted.
        let msg = Msg::sample();
        assert!(eval("OR BODY numbers DRAFT", &msg));
        assert_eq!(msg.body_calls.get(), 1);

        // NOT around a cheap key stays cheap.
        let msg = Msg::sample();
        assert!(!eval("NOT SEEN BODY numbers", &msg));
        assert_eq!(msg.costly_calls(), 0);
    }

    #[test]
    fn costly_accessors_are_called_at_most_once() {
        let msg = Msg::sample();
        assert!(eval(
            "BODY hello BODY numbers NOT BODY zebra TEXT alice TEXT numbers FROM alice NOT FROM bob HEADER FROM example \
             SENTSINCE 1-Jan-2024 SENTBEFORE 1-Jan-2025 SUBJECT report",
            &msg
        ));
        assert_eq!(msg.body_calls.get(), 1);
        assert_eq!(msg.text_calls.get(), 1);
        assert_eq!(msg.sent_calls.get(), 1);
        // One fetch for "From" (FROM and HEADER FROM share it) and one for "Subject".
        assert_eq!(msg.header_calls.get(), 2);
    }

    #[test]
    fn utf8_search_strings() {
        let mut msg = Msg::sample();
        msg.headers.push(("Subject", "Grüße aus KÖLN"));
        msg.headers[0] = ("From", "Ærøskøbing Ferry <ferry@example.dk>");
        msg.body = "ΟΔΥΣΣΕΥΣ came home. Ünïcödé text.";
        let ctx = CTX;
        let eval_key = |key: SearchKey<'_>| matches(&key, &msg, &ctx);

        assert!(eval_key(SearchKey::Subject(literal("köln"))));
        assert!(eval_key(SearchKey::Subject(literal("GRÜßE aus köln"))));
        assert!(!eval_key(SearchKey::Subject(literal("münchen"))));
        // Simple lowercase mapping, not full case folding: SS does not match ß.
        assert!(!eval_key(SearchKey::Subject(literal("GRÜSSE"))));
        assert!(eval_key(SearchKey::From(literal("ÆRØSKØBING"))));
        assert!(!eval_key(SearchKey::From(literal("ærøskøbingx"))));
        assert!(eval_key(SearchKey::Body(literal("ünïcödé"))));
        assert!(eval_key(SearchKey::Body(literal("ÜNÏCÖDÉ TEXT"))));
        assert!(!eval_key(SearchKey::Body(literal("ünïcode"))));
        // Greek final sigma folds like medial sigma on both sides.
        assert!(eval_key(SearchKey::Body(literal("οδυσσευς"))));
        assert!(eval_key(SearchKey::Body(literal("ΟΔΥΣΣΕΥΣ CAME"))));
        assert!(eval_key(SearchKey::Text(literal("grüße"))));
        assert!(eval_key(SearchKey::Header(AString::try_from("subject").unwrap(), literal("KÖLN"))));
        assert!(!eval_key(SearchKey::Not(Box::new(SearchKey::Text(literal("ærøskøbing"))))));
    }

    #[test]
    fn utf8_literal_decoded_from_command_text() {
        let needle = "KÖLN";
        let (charset, key) = parse_full(&format!("CHARSET UTF-8 SUBJECT {{{}}}\r\n{needle}", needle.len()));
        assert_eq!(charset.as_deref(), Some("UTF-8"));
        assert_eq!(check_charset(charset.as_deref()), Ok(()));
        let mut msg = Msg::sample();
        assert!(!matches(&key, &msg, &CTX));
        msg.headers.push(("Subject", "Grüße aus Köln"));
        assert!(matches(&key, &msg, &CTX));
    }

    #[test]
    fn charset_check() {
        for ok in [
            None,
            Some("US-ASCII"),
            Some("us-ascii"),
            Some("UTF-8"),
            Some("utf-8"),
            Some("Utf-8"),
        ] {
            assert_eq!(check_charset(ok), Ok(()), "{ok:?}");
        }
        for bad in ["ISO-8859-1", "UTF8", "utf-16", "", "KOI8-R", "UTF-8 "] {
            let err = check_charset(Some(bad)).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        let (charset, _) = parse_full("CHARSET ISO-8859-1 ALL");
        assert!(check_charset(charset.as_deref()).is_err());
        let (charset, _) = parse_full("CHARSET \"us-ascii\" ALL");
        assert!(check_charset(charset.as_deref()).is_ok());
        let (charset, _) = parse_full("ALL");
        assert_eq!(charset, None);
    }

    #[test]
    fn cost_tiers() {
        assert_eq!(cost(&parse("SEEN UID 1 LARGER 3 ON 1-Jan-2024")), Cost::Cheap);
        assert_eq!(cost(&parse("SEEN FROM x")), Cost::Header);
        assert_eq!(cost(&parse("SENTON 1-Jan-2024")), Cost::Header);
        assert_eq!(cost(&parse("OR BODY x SEEN")), Cost::Body);
        assert_eq!(cost(&parse("NOT TEXT x")), Cost::Text);
    }

    #[test]
    fn day_numbers() {
        let date = |y, m, d| NaiveDate::try_from(chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap()).unwrap();
        assert_eq!(day_number(&date(1970, 1, 1)), 0);
        assert_eq!(day_number(&date(1969, 12, 31)), -1);
        assert_eq!(day_number(&date(2024, 2, 1)), 19754);
        assert_eq!(local_day((0, 0)), 0);
        assert_eq!(local_day((-1, 0)), -1);
        assert_eq!(local_day((86_399, 0)), 0);
        assert_eq!(local_day((86_399, 1)), 1);
        assert_eq!(local_day((i64::MAX, i16::MAX)), i64::MAX / 86_400);
    }

    #[test]
    fn fold_is_unicode_lowercase() {
        assert_eq!(fold("Hello WORLD"), "hello world");
        assert_eq!(fold("ÄÖÜ ΣΑΣ"), "äöü σασ");
        assert_eq!(fold("ς"), "σ");
    }
}
