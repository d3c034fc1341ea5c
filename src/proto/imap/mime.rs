//! MIME parsing for the IMAP4rev1 (RFC 3501) FETCH and SEARCH data that needs it.
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
//!   transfer encoding. `message/global` is an ordinary leaf in IMAP4rev1.
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
}

impl<'a> Parsed<'a> {
    /// Parses `raw`, which is one whole message as stored. It never panics and accepts any bytes.
    pub fn new(raw: &'a [u8]) -> Parsed<'a> {
        let mut parser = TreeParser {
            raw,
            boundaries: Vec::new(),
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
        let raw = self.raw;
        let header = &raw[msg.header.clone()];
        // Use the message's own line-break style for the line breaks that are added.
        let eol: &[u8] = if header.ends_with(b"\n") && !header.ends_with(b"\r\n") {
            b"\n"
        } else {
            b"\r\n"
        };
        let mut out = Vec::new();
        for field in &msg.fields {
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

/// Builds the entity tree in one forward pass over the message.
struct TreeParser<'a> {
    raw: &'a [u8],
    /// The boundaries of the enclosing multiparts, outermost first.
    boundaries: Vec<Vec<u8>>,
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

    /// Parses the entity that starts at `start` (a line start).
    fn entity(&mut self, start: usize, depth: usize, in_digest: bool) -> (Entity, Stop) {
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

        let parsed_type = fields
            .iter()
            .find(|f| raw[f.name.clone()].eq_ignore_ascii_case(b"Content-Type"))
            .and_then(|f| parse_content_type(&unfold(&raw[f.value.clone()])));
        let mut ctype = parsed_type.unwrap_or_else(|| ContentType::default_for(in_digest));
        let is_multipart = ctype.is("multipart");
        let shape = if (is_multipart || ctype.is_rfc822()) && depth >= MAX_DEPTH {
            ctype = ContentType::new(b"application", b"octet-stream");
            Shape::Leaf
        } else if is_multipart {
            Shape::Multipart(ctype.param("boundary").filter(|b| !b.is_empty()).map(<[u8]>::to_vec))
        } else if ctype.is_rfc822() {
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

// ---------------------------------------------------------------------------------------
// IMAP string encoding
// ---------------------------------------------------------------------------------------

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

fn quotable(v: &[u8]) -> bool {
    v.iter().all(|&b| b != 0 && b != b'\r' && b != b'\n' && b < 0x80)
}

fn push_nstring(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => push_string(out, v),
        None => out.extend_from_slice(b"NIL"),
    }
}

fn push_string(out: &mut Vec<u8>, v: &[u8]) {
    if v.len() <= MAX_QUOTED_LEN && quotable(v) {
        push_quoted(out, v);
    } else {
        push_literal(out, v);
    }
}

fn push_quoted(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    for &b in v {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

fn push_literal(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'{');
    push_num(out, v.len());
    out.extend_from_slice(b"}\r\n");
    out.extend(v.iter().map(|&b| if b == 0 { 0x80 } else { b }));
}

fn push_num(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(n.to_string().as_bytes());
}

/// Writes `body-fld-param`: `NIL` or `("name" "value" ...)`. With `default_charset`,
/// `"charset" "us-ascii"` is added when no charset parameter is present.
fn push_params(out: &mut Vec<u8>, params: &[(Vec<u8>, Vec<u8>)], default_charset: bool) {
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

fn write_addresses(out: &mut Vec<u8>, list: &[Address]) {
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

// ---------------------------------------------------------------------------------------
// Header value helpers
// ---------------------------------------------------------------------------------------

fn is_wsp(b: u8) -> bool {
    matches!(b, b' ' | b'\t')
}

/// Unfolds a raw header value (drops CR and LF) and trims surrounding blanks.
fn unfold(v: &[u8]) -> Vec<u8> {
    let joined: Vec<u8> = v.iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
    let start = joined.iter().position(|&b| !is_wsp(b)).unwrap_or(joined.len());
    let end = joined.iter().rposition(|&b| !is_wsp(b)).map_or(start, |i| i + 1);
    joined[start..end].to_vec()
}

fn count_lines(body: &[u8]) -> usize {
    body.iter().filter(|&&b| b == b'\n').count()
}

/// Unfolds and RFC 2047-decodes a raw header value into UTF-8 (lossily for raw 8-bit bytes).
fn decode_header_text(value: &[u8]) -> String {
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
fn read_comment(v: &[u8], pos: usize) -> (usize, Vec<u8>) {
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
fn read_quoted(v: &[u8], pos: usize) -> (usize, Vec<u8>) {
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
struct Lexer<'v> {
    v: &'v [u8],
    pos: usize,
}

impl<'v> Lexer<'v> {
    fn new(v: &'v [u8]) -> Lexer<'v> {
        Lexer { v, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.v.len()
    }

    fn peek(&self) -> Option<u8> {
        self.v.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_cfws(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\r' | b'\n' => self.pos += 1,
                b'(' => self.pos = read_comment(self.v, self.pos).0,
                _ => break,
            }
        }
    }

    /// An RFC 2045 token. 8-bit bytes are accepted as token characters.
    fn token(&mut self) -> &'v [u8] {
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
    fn value(&mut self) -> Vec<u8> {
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
fn parse_content_type(v: &[u8]) -> Option<ContentType> {
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
fn parse_params(lx: &mut Lexer<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
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
fn merge_rfc2231(params: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
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
fn parse_language_list(v: &[u8]) -> Vec<Vec<u8>> {
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

// ---------------------------------------------------------------------------------------
// Body decoding for SEARCH and BINARY
// ---------------------------------------------------------------------------------------

/// Lenient base64: characters outside the alphabet (line breaks, padding, junk) are skipped.
pub fn decode_base64(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &c in input {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Lenient quoted-printable: `=XX` and soft line breaks are decoded, and any other `=` is kept as is.
fn decode_quoted_printable(input: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        if c != b'=' {
            out.push(c);
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < input.len() && is_wsp(input[j]) {
            j += 1;
        }
        if j >= input.len() {
            i = j;
        } else if input[j] == b'\n' {
            i = j + 1;
        } else if input[j] == b'\r' && input.get(j + 1) == Some(&b'\n') {
            i = j + 2;
        } else if let (Some(hi), Some(lo)) = (input.get(i + 1).and_then(|&b| hex(b)), input.get(i + 2).and_then(|&b| hex(b))) {
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(b'=');
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// RFC 5322 address lists
// ---------------------------------------------------------------------------------------

/// One entry of an IMAP address list. A group start has only `mailbox`. A group end has nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Address {
    name: Option<Vec<u8>>,
    adl: Option<Vec<u8>>,
    mailbox: Option<Vec<u8>>,
    host: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
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
struct AddrToken {
    tok: Tok,
    /// Whether whitespace or a comment came before this token.
    space_before: bool,
}

fn tokenize_address(v: &[u8]) -> Vec<AddrToken> {
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

fn is_dot(t: &AddrToken) -> bool {
    t.tok == Tok::Special(b'.')
}

/// A lenient RFC 5322 address-list parser that produces IMAP address structures.
struct AddrParser {
    toks: Vec<AddrToken>,
    i: usize,
    out: Vec<Address>,
    last_comment: Option<Vec<u8>>,
}

fn parse_address_list(v: &[u8]) -> Vec<Address> {
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
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.tok)
    }

    /// Parses one mailbox, or a group when `allow_group` is set. It always consumes at
    /// least one token, because it is never called at `,`, `;` or the end.
    fn address(&mut self, allow_group: bool) {
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
    fn group(&mut self, words: Range<usize>) {
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
    fn angle_addr(&mut self, words: Range<usize>) {
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
    fn addr_spec(&mut self, words: Range<usize>) {
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
    fn bare(&mut self, words: Range<usize>) {
        let tokens: Vec<usize> = words.filter(|&k| !matches!(self.toks[k].tok, Tok::Comment(_))).collect();
        if tokens.is_empty() {
            return;
        }
        let local = self.local_of(&tokens);
        let name = self.last_comment.clone().filter(|c| !c.is_empty());
        self.push_mailbox(name, None, local, None);
    }

    fn push_mailbox(&mut self, name: Option<Vec<u8>>, adl: Option<Vec<u8>>, local: Option<Vec<u8>>, host: Option<Vec<u8>>) {
        self.out.push(Address {
            name,
            adl,
            mailbox: Some(local.unwrap_or_else(|| MISSING_MAILBOX.to_vec())),
            host: Some(host.unwrap_or_else(|| MISSING_DOMAIN.to_vec())),
        });
    }

    /// A display name from the word tokens in `words`. Quoted strings are unquoted, and
    /// words are joined by one space where the message had whitespace.
    fn phrase(&self, words: Range<usize>) -> Option<Vec<u8>> {
        let tokens: Vec<usize> = words.filter(|&k| !matches!(self.toks[k].tok, Tok::Comment(_))).collect();
        self.phrase_of(&tokens)
    }

    fn phrase_of(&self, tokens: &[usize]) -> Option<Vec<u8>> {
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
    fn local_of(&self, tokens: &[usize]) -> Option<Vec<u8>> {
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
    fn local_part(&mut self) -> Option<Vec<u8>> {
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
    fn domain(&mut self) -> Option<Vec<u8>> {
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

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
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
        let raw = crlf(
            "Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: one\n\nfirst\n--d\nContent-Type: text/plain\n\nplain\n--d--\n",
        );
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
}
