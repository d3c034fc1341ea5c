//! MIME parsing for the IMAP4rev1 (RFC 3501) FETCH and SEARCH data that needs it.
//! This file holds the MIME tree and its IMAP output; `header.rs` the header
//! values (Content-Type, RFC 2231 parameters), `address.rs` RFC 5322 address
//! lists, `transfer.rs` the transfer decodings, `quote.rs` IMAP string
//! encoding.
//!
//! [`Parsed::new`] splits one stored RFC 5322 message into its MIME tree once. The
//! accessors then serialize `ENVELOPE`, `BODY` and `BODYSTRUCTURE` in IMAP syntax,
//! cut `BODY[section]` data out of the stored bytes, and provide decoded header and
//! body text for SEARCH. Nothing here does I/O, reads a clock or panics on any input.
//!
//! # How the MIME tree is found
//!
//! The tree comes from this module's own boundary scanner, not from mail-parser's part
//! list: every section must be an exact slice of the stored bytes, and the scanner
//! follows the rules that Dovecot uses, so clients see the structure they expect:
//!
//! * A header block ends at the first empty line (`CRLF` or bare `LF`). The block
//!   includes that empty line. If there is no empty line, everything up to the end of
//!   the entity is header and the body is empty.
//! * A line that starts with `--` followed by the boundary of an enclosing multipart is
//!   a delimiter line. The boundary only has to match as a prefix. If several
//!   boundaries match, the longest one wins, and the innermost one wins a tie.
//!   `--boundary--` closes that multipart, and what follows is its epilogue.
//! * The line break before a delimiter line belongs to the delimiter. So `BODY[1]` of a
//!   multipart is the part body between the delimiters, without that `CRLF`. This also holds
//!   right after a close delimiter. In `--inner--CRLF--outer`, that CRLF belongs to
//!   `--outer`, so the inner multipart (and a `message/rfc822` part around it) ends at
//!   `--inner--`. That is RFC 2046's grammar. Dovecot counts that CRLF into the inner
//!   multipart instead, so its sizes can be 2 octets larger in this one case.
//! * The same goes for a header block: an empty line directly followed by a delimiter
//!   line is that delimiter's line break. Then the header has no empty line (`BODY[1.MIME]`
//!   ends with the last field's line break) and the body is empty, as in Dovecot.
//! * A delimiter of an enclosing multipart also ends every entity nested inside it,
//!   including a truncated header block.
//! * With no `Content-Type`, or one that does not parse, the type is `text/plain`
//!   (`message/rfc822` directly inside a `multipart/digest`).
//! * A multipart with no usable boundary, or whose delimiter never appears, has no
//!   parts. It is reported as Dovecot does: as a multipart holding one empty
//!   `text/plain` part, whose section does not exist.
//! * `message/rfc822` is always parsed as an encapsulated message, whatever its
//!   transfer encoding. `message/global` is an ordinary leaf in IMAP4rev1, and an
//!   encapsulated message in IMAP4rev2 ([`Parsed::with_global_messages`]).
//! * Nesting deeper than `MAX_DEPTH` (100) levels is not parsed further: such a
//!   multipart or message is reported as an `application/octet-stream` leaf.
//!
//! mail-parser is used for what it does well, on the bytes that this module finds:
//! RFC 2047 decoding (`header_values`), date parsing (`sent_date`) and charset
//! conversion (`body_text`).
//!
//! # Output conventions (the same as Dovecot's)
//!
//! * Media types, subtypes, parameter names and parameter values are sent as the
//!   message spells them, as strings. A `text/*` part without a `charset` parameter gets
//!   `"charset" "us-ascii"`. RFC 2231 continuations (`name*0`, `name*1*`, ...) are
//!   joined into one `name` parameter, or into one `name*` parameter when the first
//!   segment is extended. Extended values (`charset'lang'%XX`) are not decoded.
//! * Body sizes are raw octets of the stored message. Line counts are the number of LF
//!   bytes in the body.
//! * The transfer encoding is `"7bit"` when the header is missing or is not a valid
//!   token. Content-Language is always sent as a parenthesized list.
//! * In an ENVELOPE, date, subject, in-reply-to and message-id are the raw header values,
//!   unfolded and trimmed. A header that is present but empty is `""`, and a missing one
//!   is `NIL`. Display names keep their RFC 2047 encoded-words, because clients decode
//!   them. An addr-spec with no display name takes its comment as the name
//!   (`user@host (Real Name)`). A missing local part or domain is sent as
//!   `"MISSING_MAILBOX"` or `"MISSING_DOMAIN"`, because a `NIL` host would mean group
//!   syntax. When an address field (From, Sender, Reply-To, To, Cc, Bcc) appears more
//!   than once, the address lists of all its occurrences are joined in message order, as
//!   Dovecot does. For date, subject, in-reply-to and message-id, the first occurrence is used.

mod address;
mod header;
mod quote;
#[cfg(test)]
mod tests;
mod transfer;

use address::*;
use header::*;
use quote::*;
use transfer::*;

pub use quote::{astring_quoted, nstring, string};
pub use transfer::decode_base64;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::parsers::MessageStream;
use mail_parser::{DateTime, HeaderValue};

/// Deepest nesting of multiparts and encapsulated messages that is parsed as such.
const MAX_DEPTH: usize = 100;

/// Longest string that [`nstring`] sends as a quoted string. Longer strings go as literals.
pub const MAX_QUOTED_LEN: usize = 1024;

/// Written for a multipart that has no parts (not allowed in IMAP), as `BODY`.
const EMPTY_BODY: &[u8] = b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)";
/// Written for a multipart that has no parts (not allowed in IMAP), as `BODYSTRUCTURE`.
const EMPTY_BODYSTRUCTURE: &[u8] = b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0 NIL NIL NIL NIL)";

const MISSING_MAILBOX: &[u8] = b"MISSING_MAILBOX";
const MISSING_DOMAIN: &[u8] = b"MISSING_DOMAIN";

/// Which text of a section `BODY[...]` returns. The part path is passed separately to [`Parsed::section`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    /// The whole section: `BODY[]` is the full message, and `BODY[1.2]` is the body of
    /// part 1.2 without its MIME header. For a `message/rfc822` part it is the whole
    /// encapsulated message.
    Full,
    /// `HEADER`: the header of the message or encapsulated message, including the
    /// empty line that ends it.
    Header,
    /// `HEADER.FIELDS (...)`: only the named fields. Names match case-insensitively.
    /// The fields come in message order, with their folding kept, followed by an empty line.
    HeaderFields(Vec<String>),
    /// `HEADER.FIELDS.NOT (...)`: all fields except the named ones, in the same format as `HeaderFields`.
    HeaderFieldsNot(Vec<String>),
    /// `TEXT`: the body of the message or encapsulated message, without its header.
    Text,
    /// `MIME`: the part's own MIME header, including the empty line that ends it. It needs a part path.
    Mime,
}

/// A Content-Transfer-Encoding this module can remove (RFC 2045 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// `7bit`, `8bit` or `binary` (or no valid header at all): the bytes are the content.
    Identity,
    Base64,
    QuotedPrintable,
}

impl Transfer {
    /// The encoding a header value names; `Err` with the value when it is none of
    /// RFC 2045's five (names are case-insensitive).
    pub fn from_name(name: &[u8]) -> Result<Transfer, Vec<u8>> {
        Ok(match name.to_ascii_lowercase().as_slice() {
            b"7bit" | b"8bit" | b"binary" => Transfer::Identity,
            b"base64" => Transfer::Base64,
            b"quoted-printable" => Transfer::QuotedPrintable,
            _ => return Err(name.to_vec()),
        })
    }

    /// `bytes` with this encoding removed, leniently: base64 skips characters outside its
    /// alphabet, quoted-printable keeps a stray `=`. Identity borrows.
    pub fn decode<'b>(&self, bytes: &'b [u8]) -> Cow<'b, [u8]> {
        match self {
            Transfer::Identity => Cow::Borrowed(bytes),
            Transfer::Base64 => Cow::Owned(decode_base64(bytes)),
            Transfer::QuotedPrintable => Cow::Owned(decode_quoted_printable(bytes)),
        }
    }
}

/// Why `BINARY[part]` (RFC 3516) cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryError {
    /// The part does not exist.
    NoSuchPart,
    /// The part's Content-Transfer-Encoding is not one that can be removed.
    UnknownTransfer(Vec<u8>),
}

/// One stored message, parsed into its MIME tree. It borrows the raw bytes.
///
/// Parsing happens once, in [`Parsed::new`]. Every accessor works from the tree, so
/// calling several of them, or one of them many times, is cheap.
#[derive(Debug)]
pub struct Parsed<'a> {
    raw: &'a [u8],
    root: Entity,
}

/// A MIME entity: the top-level message, a part of a multipart, or an encapsulated message.
#[derive(Debug)]
struct Entity {
    /// The header block, including the empty line that ends it (when there is one).
    header: Range<usize>,
    /// The body. For a multipart this includes the preamble, the delimiters and the epilogue.
    body: Range<usize>,
    /// The header fields, in order.
    fields: Vec<Field>,
    /// The effective content type, with defaults applied.
    ctype: ContentType,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Leaf,
    /// The parts of a multipart. This is empty when the multipart had no boundary or no delimiter.
    Multipart(Vec<Entity>),
    /// A `message/rfc822` part. It holds the encapsulated message, whose header and body fill this part's body.
    Message(Box<Entity>),
}

/// One header field, as ranges of the raw message.
#[derive(Debug, Clone)]
struct Field {
    /// The field name, without trailing whitespace before the colon.
    name: Range<usize>,
    /// The value after the colon, up to but not including the final line break. Folding line breaks are included.
    value: Range<usize>,
    /// The whole field, including its final line break.
    full: Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ContentType {
    ty: Vec<u8>,
    subtype: Vec<u8>,
    params: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ContentType {
    fn new(ty: &[u8], subtype: &[u8]) -> ContentType {
        ContentType {
            ty: ty.to_vec(),
            subtype: subtype.to_vec(),
            params: Vec::new(),
        }
    }

    fn default_for(in_digest: bool) -> ContentType {
        if in_digest {
            ContentType::new(b"message", b"rfc822")
        } else {
            let mut ct = ContentType::new(b"text", b"plain");
            ct.params.push((b"charset".to_vec(), b"us-ascii".to_vec()));
            ct
        }
    }

    fn param(&self, name: &str) -> Option<&[u8]> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }

    fn is(&self, ty: &str) -> bool {
        self.ty.eq_ignore_ascii_case(ty.as_bytes())
    }

    fn is_rfc822(&self) -> bool {
        self.is("message") && self.subtype.eq_ignore_ascii_case(b"rfc822")
    }

    fn is_global(&self) -> bool {
        self.is("message") && self.subtype.eq_ignore_ascii_case(b"global")
    }
}

impl<'a> Parsed<'a> {
    /// Parses `raw`, which is one whole message as stored. It never panics and accepts any bytes.
    pub fn new(raw: &'a [u8]) -> Parsed<'a> {
        Self::parse(raw, false)
    }

    /// Parses `raw` as [`Parsed::new`] does, but reads a `message/global` part (RFC 6532)
    /// as an encapsulated message, as `message/rfc822` is: IMAP4rev2 (RFC 9051 sections
    /// 6.4.5 and 7.5.2) numbers its parts and describes it in BODYSTRUCTURE that way.
    pub fn with_global_messages(raw: &'a [u8]) -> Parsed<'a> {
        Self::parse(raw, true)
    }

    fn parse(raw: &'a [u8], global: bool) -> Parsed<'a> {
        let mut parser = TreeParser {
            raw,
            boundaries: Vec::new(),
            global,
        };
        let (root, _) = parser.entity(0, 0, false);
        Parsed { raw, root }
    }

    /// The raw message bytes, which are also `BODY[]`.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The `ENVELOPE` of the top-level message, serialized with its surrounding parentheses:
    ///
    /// ```text
    /// ("date" "subject" (("name" NIL "mbox" "host")) ((sender)) ((reply-to)) ((to)) ((cc)) ((bcc)) "in-reply-to" "message-id")
    /// ```
    ///
    /// Sender and reply-to fall back to from when missing or empty (RFC 3501). An address
    /// list with no addresses is `NIL`. A group is written as a start marker
    /// `(NIL NIL "group" NIL)`, its members, and an end marker `(NIL NIL NIL NIL)`.
    pub fn envelope(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_envelope(&mut out, &self.root);
        out
    }

    /// `BODY` when `extensible` is false, or `BODYSTRUCTURE` when it is true, serialized
    /// as one parenthesized list.
    ///
    /// With `extensible`, each non-multipart part also has body MD5, disposition, language
    /// and location. Each multipart also has parameters, disposition, language and location.
    pub fn body_structure(&self, extensible: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_body(&mut out, &self.root, extensible);
        out
    }

    /// The bytes of `BODY[part.what]`, or `None` if that section does not exist.
    ///
    /// `part` holds the part numbers, each 1 or more. An empty `part` means the whole
    /// message. A non-multipart message has exactly one part, number 1, which is its body.
    /// Likewise a part that is neither multipart nor `message/rfc822` has exactly one
    /// sub-part, number 1, which is the part itself: `[2, 1]` and `[2, 1, 1]` address the
    /// same section as `[2]` (RFC 3501 6.4.5).
    /// Inside a `message/rfc822` part, numbers address the parts of the encapsulated
    /// message. `Header`, `Text`, `HeaderFields` and `HeaderFieldsNot` exist only for the
    /// top level (empty `part`) and for `message/rfc822` parts. `Mime` exists only for a
    /// non-empty `part`.
    ///
    /// Every section except `HeaderFields`/`HeaderFieldsNot` is an exact slice of the raw
    /// message. Those two are built from the raw fields plus an empty line.
    pub fn section(&self, part: &[u32], what: SectionText) -> Option<Vec<u8>> {
        let raw = self.raw;
        if part.is_empty() {
            return match what {
                SectionText::Full => Some(raw.to_vec()),
                SectionText::Mime => None,
                other => self.message_text(&self.root, &other),
            };
        }
        let entity = self.resolve(part)?;
        match what {
            SectionText::Full => Some(raw[entity.body.clone()].to_vec()),
            SectionText::Mime => Some(raw[entity.header.clone()].to_vec()),
            other => match &entity.kind {
                Kind::Message(inner) => self.message_text(inner, &other),
                _ => None,
            },
        }
    }

    /// The data of `BINARY[part]` (RFC 3516) before its transfer encoding is removed,
    /// and that encoding: the section `BODY[part]` addresses, with the
    /// Content-Transfer-Encoding of that part. An empty `part` is the whole message
    /// as stored (its header is not encoded). A missing or malformed header means
    /// `7bit` (RFC 2045 section 6.1), as in BODYSTRUCTURE; a well-formed name that is
    /// not one of RFC 2045's is [`BinaryError::UnknownTransfer`]. Multiparts and
    /// `message/rfc822` parts carry their own header's encoding too (RFC 2045 allows
    /// them only the identity ones).
    pub fn binary_section(&self, part: &[u32]) -> Result<(&'a [u8], Transfer), BinaryError> {
        if part.is_empty() {
            return Ok((self.raw, Transfer::Identity));
        }
        let entity = self.resolve(part).ok_or(BinaryError::NoSuchPart)?;
        let transfer = match self.transfer_encoding(entity) {
            None => Transfer::Identity,
            Some(name) => Transfer::from_name(&name).map_err(BinaryError::UnknownTransfer)?,
        };
        Ok((&self.raw[entity.body.clone()], transfer))
    }

    /// `BINARY[part]` (RFC 3516): [`Parsed::binary_section`] with its transfer
    /// encoding removed.
    pub fn binary(&self, part: &[u32]) -> Result<Cow<'a, [u8]>, BinaryError> {
        let (bytes, transfer) = self.binary_section(part)?;
        Ok(transfer.decode(bytes))
    }

    /// All values of the top-level header field `name` (case-insensitive), in message
    /// order. Each value is unfolded, RFC 2047-decoded and converted to UTF-8. Bytes that
    /// are not valid UTF-8 are replaced. Whitespace may come out normalized: folding turns into
    /// one space, and decoded encoded-words can gain a space on each side. That is good for
    /// substring search, but the result is not a byte-exact rendering.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let raw = self.raw;
        self.root
            .fields
            .iter()
            .filter(|f| raw[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| decode_header_text(&raw[f.value.clone()]))
            .collect()
    }

    /// The addresses of every top-level field `name`, each as `display name <mailbox@host>`
    /// (the name RFC 2047-decoded), and each group's name: what SEARCH FROM, TO, CC and BCC
    /// match besides the field's text, so an address is found however the field spells it
    /// (comments or folding between its parts, quoted local parts).
    pub fn address_texts(&self, name: &str) -> Vec<String> {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.addresses(&self.root, name)
            .iter()
            .filter_map(|a| match (&a.mailbox, &a.host) {
                (Some(m), Some(h)) => {
                    let display = a.name.as_deref().map(decode_header_text).unwrap_or_default();
                    Some(format!("{display} <{}@{}>", lossy(m), lossy(h)))
                }
                (Some(group), None) => Some(lossy(group)),
                _ => None,
            })
            .collect()
    }

    /// The mailbox (local part) of the first address of the top-level field `name`,
    /// ASCII lower-cased: RFC 5256's SORT key for FROM, TO and CC.
    pub fn first_mailbox(&self, name: &str) -> Option<String> {
        self.addresses(&self.root, name)
            .into_iter()
            .find(|a| a.host.is_some())
            .and_then(|a| a.mailbox)
            .map(|m| String::from_utf8_lossy(&m).to_ascii_lowercase())
    }

    /// The text of every `text/*` leaf part, including those inside encapsulated messages.
    /// Each is transfer-decoded (base64 or quoted-printable) and converted from its charset
    /// to UTF-8. Parts are joined with line breaks. This is for SEARCH BODY. For SEARCH TEXT,
    /// also search `section(&[], SectionText::Header)`.
    pub fn body_text(&self) -> String {
        let mut out = String::new();
        self.collect_text(&self.root, &mut out);
        out
    }

    /// The top-level `Date:` header as seconds since the Unix epoch (UTC), if it parses as
    /// an RFC 5322 date. This is for SEARCH SENTBEFORE, SENTON and SENTSINCE.
    pub fn sent_date(&self) -> Option<i64> {
        self.sent_date_zoned().map(|(secs, _)| secs)
    }

    /// The top-level `Date:` header as seconds since the Unix epoch (UTC) and the header's
    /// own zone offset in minutes east of UTC: SENTON and its kin compare the date as written,
    /// in that zone (RFC 3501 6.4.4).
    pub fn sent_date_zoned(&self) -> Option<(i64, i16)> {
        let value = self.header_text(&self.root, "Date")?;
        let dt = DateTime::parse_rfc822(&String::from_utf8_lossy(&value))?;
        let offset = i16::from(dt.tz_hour) * 60 + i16::from(dt.tz_minute);
        dt.is_valid()
            .then(|| (dt.to_timestamp(), if dt.tz_before_gmt { -offset } else { offset }))
    }

    /// Finds the entity for a non-empty part path.
    fn resolve(&self, part: &[u32]) -> Option<&Entity> {
        let mut cur = &self.root;
        for (i, &n) in part.iter().enumerate() {
            // The first number addresses the parts of the top-level message. After that,
            // `cur` is a part that the numbers reached, and the numbers below a
            // `message/rfc822` part address the parts of its encapsulated message.
            if i > 0 {
                if let Kind::Message(inner) = &cur.kind {
                    cur = inner;
                }
            }
            let index = usize::try_from(n).ok()?.checked_sub(1)?;
            match &cur.kind {
                Kind::Multipart(children) => cur = children.get(index)?,
                // The single part of a non-multipart message is the message's own body, and
                // the only sub-part of a non-multipart part is that part itself (RFC 3501
                // 6.4.5: such an entity only has a part 1).
                _ if index == 0 => {}
                _ => return None,
            }
        }
        Some(cur)
    }

    /// HEADER, TEXT and HEADER.FIELDS[.NOT] of a message entity.
    fn message_text(&self, msg: &Entity, what: &SectionText) -> Option<Vec<u8>> {
        let raw = self.raw;
        match what {
            SectionText::Header => Some(raw[msg.header.clone()].to_vec()),
            SectionText::Text => Some(raw[msg.body.clone()].to_vec()),
            SectionText::HeaderFields(names) => Some(self.header_fields(msg, names, true)),
            SectionText::HeaderFieldsNot(names) => Some(self.header_fields(msg, names, false)),
            SectionText::Full => Some(raw[msg.header.start..msg.body.end].to_vec()),
            SectionText::Mime => None,
        }
    }

    fn header_fields(&self, msg: &Entity, names: &[String], keep_named: bool) -> Vec<u8> {
        select_fields(self.raw, msg.header.clone(), &msg.fields, names, keep_named)
    }

    /// The unfolded, trimmed value of the first field called `name`, which may be empty.
    fn header_text(&self, entity: &Entity, name: &str) -> Option<Vec<u8>> {
        let raw = self.raw;
        let field = entity
            .fields
            .iter()
            .find(|f| raw[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()))?;
        Some(unfold(&raw[field.value.clone()]))
    }

    /// Like [`Parsed::header_text`], but `None` for an empty value too.
    fn nonempty_header_text(&self, entity: &Entity, name: &str) -> Option<Vec<u8>> {
        self.header_text(entity, name).filter(|v| !v.is_empty())
    }

    /// The addresses of every field called `name`, in message order. Repeated fields are
    /// joined as if they were one comma-separated list, as Dovecot does.
    fn addresses(&self, entity: &Entity, name: &str) -> Vec<Address> {
        let raw = self.raw;
        entity
            .fields
            .iter()
            .filter(|f| raw[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .flat_map(|f| parse_address_list(&unfold(&raw[f.value.clone()])))
            .collect()
    }

    fn transfer_encoding(&self, entity: &Entity) -> Option<Vec<u8>> {
        let value = self.header_text(entity, "Content-Transfer-Encoding")?;
        let mut lx = Lexer::new(&value);
        lx.skip_cfws();
        let token = lx.token().to_vec();
        lx.skip_cfws();
        (!token.is_empty() && lx.at_end()).then_some(token)
    }

    fn write_envelope(&self, out: &mut Vec<u8>, msg: &Entity) {
        let from = self.addresses(msg, "From");
        let sender = self.addresses(msg, "Sender");
        let reply_to = self.addresses(msg, "Reply-To");
        out.push(b'(');
        push_nstring(out, self.header_text(msg, "Date").as_deref());
        out.push(b' ');
        push_nstring(out, self.header_text(msg, "Subject").as_deref());
        out.push(b' ');
        write_addresses(out, &from);
        out.push(b' ');
        write_addresses(out, if sender.is_empty() { &from } else { &sender });
        out.push(b' ');
        write_addresses(out, if reply_to.is_empty() { &from } else { &reply_to });
        for name in ["To", "Cc", "Bcc"] {
            out.push(b' ');
            write_addresses(out, &self.addresses(msg, name));
        }
        out.push(b' ');
        push_nstring(out, self.header_text(msg, "In-Reply-To").as_deref());
        out.push(b' ');
        push_nstring(out, self.header_text(msg, "Message-ID").as_deref());
        out.push(b')');
    }

    fn write_body(&self, out: &mut Vec<u8>, entity: &Entity, ext: bool) {
        out.push(b'(');
        match &entity.kind {
            Kind::Multipart(children) => {
                if children.is_empty() {
                    out.extend_from_slice(if ext { EMPTY_BODYSTRUCTURE } else { EMPTY_BODY });
                }
                for child in children {
                    self.write_body(out, child, ext);
                }
                out.push(b' ');
                push_string(out, &entity.ctype.subtype);
                if ext {
                    out.push(b' ');
                    push_params(out, &entity.ctype.params, false);
                    self.write_common_ext(out, entity);
                }
            }
            kind => {
                let body = &self.raw[entity.body.clone()];
                let is_text = matches!(kind, Kind::Leaf) && entity.ctype.is("text");
                push_string(out, &entity.ctype.ty);
                out.push(b' ');
                push_string(out, &entity.ctype.subtype);
                out.push(b' ');
                push_params(out, &entity.ctype.params, is_text);
                out.push(b' ');
                push_nstring(out, self.nonempty_header_text(entity, "Content-ID").as_deref());
                out.push(b' ');
                push_nstring(out, self.nonempty_header_text(entity, "Content-Description").as_deref());
                out.push(b' ');
                push_string(out, self.transfer_encoding(entity).as_deref().unwrap_or(b"7bit"));
                out.push(b' ');
                push_num(out, body.len());
                if is_text {
                    out.push(b' ');
                    push_num(out, count_lines(body));
                }
                if let Kind::Message(inner) = kind {
                    out.push(b' ');
                    self.write_envelope(out, inner);
                    out.push(b' ');
                    self.write_body(out, inner, ext);
                    out.push(b' ');
                    push_num(out, count_lines(body));
                }
                if ext {
                    out.push(b' ');
                    push_nstring(out, self.nonempty_header_text(entity, "Content-MD5").as_deref());
                    self.write_common_ext(out, entity);
                }
            }
        }
        out.push(b')');
    }

    /// Writes ` disposition language location`, the extension data shared by both kinds of body.
    fn write_common_ext(&self, out: &mut Vec<u8>, entity: &Entity) {
        out.push(b' ');
        match self.header_text(entity, "Content-Disposition") {
            Some(value) => {
                let mut lx = Lexer::new(&value);
                lx.skip_cfws();
                let disposition = lx.token().to_vec();
                if disposition.is_empty() {
                    out.extend_from_slice(b"NIL");
                } else {
                    out.push(b'(');
                    push_string(out, &disposition);
                    out.push(b' ');
                    push_params(out, &parse_params(&mut lx), false);
                    out.push(b')');
                }
            }
            None => out.extend_from_slice(b"NIL"),
        }
        out.push(b' ');
        let languages = self
            .header_text(entity, "Content-Language")
            .map(|v| parse_language_list(&v))
            .unwrap_or_default();
        if languages.is_empty() {
            out.extend_from_slice(b"NIL");
        } else {
            out.push(b'(');
            for (i, lang) in languages.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                push_string(out, lang);
            }
            out.push(b')');
        }
        out.push(b' ');
        push_nstring(out, self.nonempty_header_text(entity, "Content-Location").as_deref());
    }

    fn collect_text(&self, entity: &Entity, out: &mut String) {
        match &entity.kind {
            Kind::Multipart(children) => children.iter().for_each(|c| self.collect_text(c, out)),
            Kind::Message(inner) => self.collect_text(inner, out),
            Kind::Leaf if entity.ctype.is("text") => {
                let body = &self.raw[entity.body.clone()];
                // An encoding that cannot be removed is searched as it is.
                let decoded = self
                    .transfer_encoding(entity)
                    .and_then(|name| Transfer::from_name(&name).ok())
                    .unwrap_or(Transfer::Identity)
                    .decode(body);
                let text = match entity.ctype.param("charset").and_then(charset_decoder) {
                    Some(decode) => decode(&decoded),
                    None => String::from_utf8_lossy(&decoded).into_owned(),
                };
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(&text);
            }
            Kind::Leaf => {}
        }
    }
}

/// Why the scan of an entity stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// The end of the message.
    Eof,
    /// A delimiter line at offset `line`, for the boundary at `level` of the boundary stack.
    Boundary { line: usize, level: usize, close: bool },
}

/// What an entity's body holds, decided from its content type.
enum Shape {
    Leaf,
    Multipart(Option<Vec<u8>>),
    Message,
}

/// The fields of a header (`header`, a range of `raw`, holding `fields`)
/// named in `names` (`keep_named`) or not named there, each with its line
/// break, and an empty line: `HEADER.FIELDS` and `HEADER.FIELDS.NOT`.
fn select_fields(raw: &[u8], header: Range<usize>, fields: &[Field], names: &[String], keep_named: bool) -> Vec<u8> {
    let header = &raw[header];
    // Use the message's own line-break style for the line breaks that are added.
    let eol: &[u8] = if header.ends_with(b"\n") && !header.ends_with(b"\r\n") {
        b"\n"
    } else {
        b"\r\n"
    };
    let mut out = Vec::new();
    for field in fields {
        let name = &raw[field.name.clone()];
        let named = names.iter().any(|n| n.as_bytes().eq_ignore_ascii_case(name));
        if named == keep_named {
            let bytes = &raw[field.full.clone()];
            out.extend_from_slice(bytes);
            if !bytes.ends_with(b"\n") {
                out.extend_from_slice(eol);
            }
        }
    }
    out.extend_from_slice(eol);
    out
}

/// `BODY[HEADER]`, `BODY[HEADER.FIELDS (…)]` or `BODY[HEADER.FIELDS.NOT (…)]`
/// of a message's top level, from `header`: that message's header section
/// alone, as [`Parsed::section`] gives it for `HEADER` (what a FETCH of header
/// fields keeps). Only the header's own lines are read; `None` for other
/// sections. Equal to [`Parsed::section`] of the whole message.
pub fn top_header_section(header: &[u8], what: &SectionText) -> Option<Vec<u8>> {
    let parser = TreeParser {
        raw: header,
        boundaries: Vec::new(),
        global: false,
    };
    let (fields, end, _, _) = parser.header(0);
    match what {
        SectionText::Header => Some(header[..end].to_vec()),
        SectionText::HeaderFields(names) => Some(select_fields(header, 0..end, &fields, names, true)),
        SectionText::HeaderFieldsNot(names) => Some(select_fields(header, 0..end, &fields, names, false)),
        _ => None,
    }
}

/// Builds the entity tree in one forward pass over the message.
struct TreeParser<'a> {
    raw: &'a [u8],
    /// The boundaries of the enclosing multiparts, outermost first.
    boundaries: Vec<Vec<u8>>,
    /// `message/global` parts are encapsulated messages ([`Parsed::with_global_messages`]).
    global: bool,
}

impl TreeParser<'_> {
    /// The offset just past the line that starts at `pos` (after its LF, or at the end of input).
    fn line_end(&self, pos: usize) -> usize {
        match self.raw.get(pos..).and_then(|rest| rest.iter().position(|&b| b == b'\n')) {
            Some(i) => pos + i + 1,
            None => self.raw.len(),
        }
    }

    /// If a delimiter line of an enclosing multipart starts at `pos`, gives its stack level
    /// and whether it is a close delimiter.
    fn boundary_at(&self, pos: usize) -> Option<(usize, bool)> {
        if self.boundaries.is_empty() {
            return None;
        }
        let rest = self.raw.get(pos..)?.strip_prefix(b"--")?;
        let mut best: Option<usize> = None;
        for (level, boundary) in self.boundaries.iter().enumerate().rev() {
            if rest.starts_with(boundary) && best.is_none_or(|b| self.boundaries[b].len() < boundary.len()) {
                best = Some(level);
            }
        }
        let level = best?;
        let close = rest[self.boundaries[level].len()..].starts_with(b"--");
        Some((level, close))
    }

    /// Where content that a delimiter line at `line` follows ends. The line break before
    /// the delimiter belongs to the delimiter. The result is never below `floor`.
    fn end_before(&self, line: usize, floor: usize) -> usize {
        let mut end = line;
        if end > floor && self.raw[end - 1] == b'\n' {
            end -= 1;
            if end > floor && self.raw[end - 1] == b'\r' {
                end -= 1;
            }
        }
        end
    }

    /// If a delimiter line of an enclosing multipart starts at `pos`, the stop that it makes.
    /// `own` is the boundary of a multipart whose body starts at `pos`. Where that boundary
    /// wins the match (as in [`TreeParser::boundary_at`]), the line is the multipart's own
    /// delimiter, not an enclosing one.
    fn enclosing_delimiter_at(&mut self, pos: usize, own: Option<&[u8]>) -> Option<Stop> {
        if self.boundaries.is_empty() {
            return None;
        }
        let outer = self.boundaries.len();
        if let Some(boundary) = own {
            self.boundaries.push(boundary.to_vec());
        }
        let found = self.boundary_at(pos);
        self.boundaries.truncate(outer);
        let (level, close) = found.filter(|&(level, _)| level < outer)?;
        Some(Stop::Boundary { line: pos, level, close })
    }

    /// Scans lines from `from` (a line start) up to the next delimiter line of any enclosing multipart.
    fn scan(&self, from: usize) -> (usize, Stop) {
        if self.boundaries.is_empty() {
            return (self.raw.len(), Stop::Eof);
        }
        let mut pos = from;
        while pos < self.raw.len() {
            if let Some((level, close)) = self.boundary_at(pos) {
                return (self.end_before(pos, from), Stop::Boundary { line: pos, level, close });
            }
            pos = self.line_end(pos);
        }
        (self.raw.len(), Stop::Eof)
    }

    /// The header fields of the entity that starts at `start`, where its header ends, what
    /// stopped it (the end of input or a delimiter of an enclosing multipart; `None`: an empty
    /// line), and where that empty line starts.
    fn header(&self, start: usize) -> (Vec<Field>, usize, Option<Stop>, Option<usize>) {
        let raw = self.raw;
        let mut fields: Vec<Field> = Vec::new();
        let mut pos = start;
        // Where the empty line that ends the header starts, when there is one.
        let mut blank = None;
        let (header_end, header_stop) = loop {
            if pos >= raw.len() {
                break (raw.len(), Some(Stop::Eof));
            }
            if let Some((level, close)) = self.boundary_at(pos) {
                break (self.end_before(pos, start), Some(Stop::Boundary { line: pos, level, close }));
            }
            let line_end = self.line_end(pos);
            let content_end = self.end_before(line_end, pos);
            if content_end == pos {
                // The empty line that ends the header.
                blank = Some(pos);
                break (line_end, None);
            }
            match fields.last_mut() {
                Some(last) if matches!(raw[pos], b' ' | b'\t') => {
                    last.value.end = content_end;
                    last.full.end = line_end;
                }
                _ => fields.push(match raw[pos..content_end].iter().position(|&b| b == b':') {
                    Some(colon) => {
                        let mut name_end = pos + colon;
                        while name_end > pos && matches!(raw[name_end - 1], b' ' | b'\t') {
                            name_end -= 1;
                        }
                        Field {
                            name: pos..name_end,
                            value: pos + colon + 1..content_end,
                            full: pos..line_end,
                        }
                    }
                    None => Field {
                        name: pos..content_end,
                        value: content_end..content_end,
                        full: pos..line_end,
                    },
                }),
            }
            pos = line_end;
        };
        // A delimiter cut the header short: its last line break belongs to the delimiter.
        for field in &mut fields {
            field.full.end = field.full.end.min(header_end);
            field.value.end = field.value.end.min(header_end);
            field.value.start = field.value.start.min(field.value.end);
        }

        (fields, header_end, header_stop, blank)
    }

    /// Parses the entity that starts at `start` (a line start).
    fn entity(&mut self, start: usize, depth: usize, in_digest: bool) -> (Entity, Stop) {
        let raw = self.raw;
        let (fields, header_end, header_stop, blank) = self.header(start);
        let parsed_type = fields
            .iter()
            .find(|f| raw[f.name.clone()].eq_ignore_ascii_case(b"Content-Type"))
            .and_then(|f| parse_content_type(&unfold(&raw[f.value.clone()])));
        let mut ctype = parsed_type.unwrap_or_else(|| ContentType::default_for(in_digest));
        let is_multipart = ctype.is("multipart");
        let encapsulated = ctype.is_rfc822() || (self.global && ctype.is_global());
        let shape = if (is_multipart || encapsulated) && depth >= MAX_DEPTH {
            ctype = ContentType::new(b"application", b"octet-stream");
            Shape::Leaf
        } else if is_multipart {
            Shape::Multipart(ctype.param("boundary").filter(|b| !b.is_empty()).map(<[u8]>::to_vec))
        } else if encapsulated {
            Shape::Message
        } else {
            Shape::Leaf
        };
        let is_digest = is_multipart && ctype.subtype.eq_ignore_ascii_case(b"digest");
        // An empty line right before a delimiter line of an enclosing multipart is that
        // delimiter's line break. Then the header has no empty line and the body is empty.
        let (header_end, header_stop) = match (header_stop, blank) {
            (None, Some(blank)) => {
                let own = match &shape {
                    Shape::Multipart(Some(boundary)) => Some(boundary.as_slice()),
                    _ => None,
                };
                match self.enclosing_delimiter_at(header_end, own) {
                    Some(stop) => (blank, Some(stop)),
                    None => (header_end, None),
                }
            }
            other => (header_end, other.0),
        };
        let header = start..header_end;

        if let Some(stop) = header_stop {
            let kind = match shape {
                Shape::Leaf => Kind::Leaf,
                Shape::Multipart(_) => Kind::Multipart(Vec::new()),
                Shape::Message => Kind::Message(Box::new(Entity {
                    header: header_end..header_end,
                    body: header_end..header_end,
                    fields: Vec::new(),
                    ctype: ContentType::default_for(false),
                    kind: Kind::Leaf,
                })),
            };
            return (
                Entity {
                    header,
                    body: header_end..header_end,
                    fields,
                    ctype,
                    kind,
                },
                stop,
            );
        }

        let body_start = header_end;
        let (kind, end, stop) = match shape {
            Shape::Multipart(Some(boundary)) => {
                let (children, end, stop) = self.multipart(body_start, boundary, depth, is_digest);
                (Kind::Multipart(children), end, stop)
            }
            Shape::Multipart(None) => {
                let (end, stop) = self.scan(body_start);
                (Kind::Multipart(Vec::new()), end, stop)
            }
            Shape::Message => {
                let (inner, stop) = self.entity(body_start, depth + 1, false);
                let end = inner.body.end;
                (Kind::Message(Box::new(inner)), end, stop)
            }
            Shape::Leaf => {
                let (end, stop) = self.scan(body_start);
                (Kind::Leaf, end, stop)
            }
        };
        (
            Entity {
                header,
                body: body_start..end,
                fields,
                ctype,
                kind,
            },
            stop,
        )
    }

    /// Parses a multipart body that starts at `body_start`. Returns its parts, where its body
    /// ends, and what stopped it: the end of input, or a delimiter of an enclosing multipart.
    fn multipart(&mut self, body_start: usize, boundary: Vec<u8>, depth: usize, is_digest: bool) -> (Vec<Entity>, usize, Stop) {
        self.boundaries.push(boundary);
        let level = self.boundaries.len() - 1;
        let mut children = Vec::new();
        let (_, mut stop) = self.scan(body_start);
        loop {
            match stop {
                Stop::Boundary { line, level: found, close } if found == level => {
                    let next = self.line_end(line);
                    if close {
                        // The epilogue runs to the next delimiter of an enclosing multipart. As
                        // RFC 2046 has it, the line break before that delimiter is the
                        // delimiter's, even when it is the close delimiter's own line break
                        // (empty epilogue).
                        self.boundaries.pop();
                        let (_, epilogue_stop) = self.scan(next);
                        let end = match epilogue_stop {
                            Stop::Boundary { line: outer, .. } => self.end_before(outer, line),
                            Stop::Eof => self.raw.len(),
                        };
                        return (children, end, epilogue_stop);
                    }
                    let (child, child_stop) = self.entity(next, depth + 1, is_digest);
                    children.push(child);
                    stop = child_stop;
                }
                Stop::Boundary { line, .. } => {
                    // An enclosing multipart's delimiter ends this one too. The last part may
                    // end at that line (an empty body right after its header's empty line),
                    // and a multipart never ends before its last part.
                    self.boundaries.pop();
                    let floor = children.last().map_or(body_start, |c| c.body.end);
                    return (children, self.end_before(line, floor), stop);
                }
                Stop::Eof => {
                    self.boundaries.pop();
                    return (children, self.raw.len(), stop);
                }
            }
        }
    }
}
