//! FETCH: rendering message data items, with a bounded cache of the costly
//! parts (ENVELOPE, BODY, BODYSTRUCTURE) keyed by the body's blake3 hash, so
//! a large mailbox's envelopes are parsed once.

use crate::event::BlobHash;
use crate::proto::imap::ext::BinaryItem;
use crate::proto::imap::mime::{BinaryError, Parsed, SectionText};
use crate::views::MessageRec;
use imap_codec::imap_types::fetch::{MessageDataItemName, Section};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// The parsed forms of one body that FETCH asks for again and again.
/// (`serde_bytes` keeps postcard's encoding of a byte vector, a length and
/// the bytes, and reads it in one copy instead of byte by byte: the
/// element-wise read was the largest cost of a summary read from the
/// cache column family.)
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Summary {
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub bodystructure: Vec<u8>,
}

impl Summary {
    /// The summary of the message `raw`; with `global`, `message/global`
    /// parts are encapsulated messages, as IMAP4rev2 reads them
    /// ([`Parsed::with_global_messages`]).
    pub fn of(raw: &[u8], global: bool) -> Summary {
        let p = if global {
            Parsed::with_global_messages(raw)
        } else {
            Parsed::new(raw)
        };
        Summary {
            envelope: p.envelope(),
            body: p.body_structure(false),
            bodystructure: p.body_structure(true),
        }
    }

    /// Whether the message has a `message/global` part (an IMAP4rev2
    /// session reads it differently from what is kept, which is the
    /// IMAP4rev1 reading). The test is on the BODYSTRUCTURE text, where such
    /// a part shows its subtype as a string; a parameter value `global`
    /// matches too, which costs one parse more and changes nothing.
    pub fn has_global(&self) -> bool {
        self.bodystructure.windows(8).any(|w| w.eq_ignore_ascii_case(b"\"global\""))
    }
}

type Entries = (HashMap<BlobHash, Arc<Summary>>, VecDeque<BlobHash>);

/// A bounded FIFO cache of [`Summary`] by blob hash.
pub struct Cache {
    max: usize,
    inner: Mutex<Entries>,
}

impl Cache {
    pub fn new(max: usize) -> Cache {
        Cache {
            max,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// Whether a FETCH of `n` messages is a sweep: one that would push
    /// out most of what the cache holds (a client's first FETCH 1:* of a
    /// large mailbox) and so reads summaries without keeping them, leaving
    /// every session's working set in place.
    pub fn is_sweep(&self, n: usize) -> bool {
        n > self.max / 2
    }

    /// The summary of a body: from memory, else from the store's cache
    /// column family, else parsed from the body (which `load` fetches) and
    /// kept in the column family. What is read or parsed is kept in memory
    /// too with `keep` (not during a sweep, [`Cache::is_sweep`]).
    pub fn get_or<'b>(
        &self,
        store: &crate::store::Store,
        hash: &BlobHash,
        keep: bool,
        load: impl FnOnce() -> Option<Cow<'b, [u8]>>,
    ) -> Option<Arc<Summary>> {
        if let Some(s) = self.inner.lock().expect("cache lock").0.get(hash) {
            return Some(s.clone());
        }
        let cf = store.cfs().cache;
        let key = cache_key(hash);
        let s = match store
            .wal()
            .get(cf, &key)
            .ok()
            .flatten()
            .and_then(|v| postcard::from_bytes::<Summary>(&v).ok())
        {
            Some(s) => Arc::new(s),
            None => {
                let bytes = load()?;
                let s = Summary::of(&bytes, false);
                if let Ok(v) = postcard::to_allocvec(&s) {
                    if let Err(e) = store.wal().put_derived(cf, &key, &v) {
                        tracing::debug!(error = %e, "could not keep a MIME summary");
                    }
                }
                Arc::new(s)
            }
        };
        if keep {
            self.keep(*hash, s.clone());
        }
        Some(s)
    }

    /// The summaries of `hashes`: those in memory, and the others read
    /// from the cache column family in one batched lookup, so that a FETCH
    /// of many messages pays one RocksDB lookup per batch instead of one
    /// per message. What is read is kept in memory only with `keep`.
    /// Summaries found in neither are left to [`Cache::get_or`] to
    /// parse.
    pub fn prefetch(&self, store: &crate::store::Store, hashes: &[BlobHash], keep: bool) -> HashMap<BlobHash, Arc<Summary>> {
        let mut found = HashMap::with_capacity(hashes.len());
        let mut missing: Vec<BlobHash> = {
            let g = self.inner.lock().expect("cache lock");
            hashes
                .iter()
                .filter(|h| match g.0.get(*h) {
                    Some(s) => {
                        found.insert(**h, s.clone());
                        false
                    }
                    None => true,
                })
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return found;
        }
        missing.sort_unstable_by_key(|h| h.0);
        missing.dedup();
        let keys: Vec<Vec<u8>> = missing.iter().map(cache_key).collect();
        let Ok(values) = store.wal().multi_get(store.cfs().cache, &keys, true) else {
            return found;
        };
        for (h, v) in missing.into_iter().zip(values) {
            if let Some(s) = v.and_then(|v| postcard::from_bytes::<Summary>(&v).ok()) {
                let s = Arc::new(s);
                if keep {
                    self.keep(h, s.clone());
                }
                found.insert(h, s);
            }
        }
        found
    }

    fn keep(&self, hash: BlobHash, s: Arc<Summary>) {
        let mut g = self.inner.lock().expect("cache lock");
        if g.0.len() >= self.max {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
        if g.0.insert(hash, s).is_none() {
            g.1.push_back(hash);
        }
    }
}

impl Cache {
    /// The top-level header sections of `hashes` kept in the cache column
    /// family ([`header_of`]), in one batched lookup; those not kept are
    /// left to [`Cache::keep_header`].
    pub fn headers(&self, store: &crate::store::Store, hashes: &[BlobHash]) -> HashMap<BlobHash, Vec<u8>> {
        let mut hashes = hashes.to_vec();
        hashes.sort_unstable_by_key(|h| h.0);
        hashes.dedup();
        let keys: Vec<Vec<u8>> = hashes.iter().map(header_key).collect();
        let Ok(values) = store.wal().multi_get(store.cfs().cache, &keys, true) else {
            return HashMap::new();
        };
        hashes.into_iter().zip(values).filter_map(|(h, v)| v.map(|v| (h, v))).collect()
    }

    /// The top-level header section of a body that [`Cache::headers`]
    /// found no kept section for: cut from the body (which `load` fetches)
    /// and kept, without looking it up again.
    pub fn keep_header(&self, store: &crate::store::Store, hash: &BlobHash, load: impl FnOnce() -> Option<Vec<u8>>) -> Option<Vec<u8>> {
        let header = header_of(&load()?);
        if let Err(e) = store.wal().put_derived(store.cfs().cache, &header_key(hash), &header) {
            tracing::debug!(error = %e, "could not keep a header section");
        }
        Some(header)
    }
}

/// The top-level header section of the message `raw` (`BODY[HEADER]`, up
/// to and including the empty line). A FETCH whose items need no more of
/// the message ([`needs_header_only`]) renders the same from these bytes
/// as from the whole message.
pub fn header_of(raw: &[u8]) -> Vec<u8> {
    Parsed::new(raw).section(&[], SectionText::Header).unwrap_or_default()
}

/// Key of a header section in the cache column family.
fn header_key(hash: &BlobHash) -> Vec<u8> {
    let mut k = b"head1:".to_vec();
    k.extend_from_slice(&hash.0);
    k
}

/// Do the items that need the message's bytes need only its top-level
/// header section (`RFC822.HEADER`, `BODY[HEADER]`, `BODY[HEADER.FIELDS
/// (…)]`, `BODY[HEADER.FIELDS.NOT (…)]`, partial or not), and at least one
/// does? Such a FETCH (without BINARY items) is served from the kept header
/// sections: the request mail clients make for new messages.
pub fn needs_header_only(items: &[MessageDataItemName<'_>]) -> bool {
    let mut any = false;
    for i in items {
        match i {
            MessageDataItemName::Rfc822Header
            | MessageDataItemName::BodyExt {
                section: Some(Section::Header(None) | Section::HeaderFields(None, _) | Section::HeaderFieldsNot(None, _)),
                ..
            } => any = true,
            MessageDataItemName::BodyExt { .. } | MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => return false,
            _ => {}
        }
    }
    any
}

/// Key of a summary in the cache column family (versioned: a new parser
/// writes new keys).
fn cache_key(hash: &BlobHash) -> Vec<u8> {
    let mut k = b"mime1:".to_vec();
    k.extend_from_slice(&hash.0);
    k
}

/// Does fetching these items need the raw message (not only its summary)?
pub fn needs_raw(items: &[MessageDataItemName<'_>]) -> bool {
    items.iter().any(|i| {
        matches!(
            i,
            MessageDataItemName::BodyExt { .. }
                | MessageDataItemName::Rfc822
                | MessageDataItemName::Rfc822Header
                | MessageDataItemName::Rfc822Text
        )
    })
}

/// Does fetching these items (and these BINARY items) set \Seen?
pub fn sets_seen(items: &[MessageDataItemName<'_>], binary: &[BinaryItem]) -> bool {
    items.iter().any(|i| match i {
        MessageDataItemName::BodyExt { peek, .. } => !peek,
        MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
        _ => false,
    }) || binary.iter().any(|b| matches!(b, BinaryItem::Binary { peek: false, .. }))
}

/// A FETCH that must fail as a whole: RFC 3516 section 4.2 says a BINARY
/// item of a part whose Content-Transfer-Encoding cannot be removed is
/// answered `NO [UNKNOWN-CTE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCte {
    /// The part, as `2.1`.
    pub part: String,
    /// The encoding named in its header.
    pub encoding: String,
}

impl std::fmt::Display for UnknownCte {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "part {} has transfer encoding {:?}, which this server cannot decode",
            self.part, self.encoding
        )
    }
}

fn dotted(part: &[u32]) -> String {
    part.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(".")
}

/// Can every BINARY item be answered for the message `raw`? (Checked
/// before FETCH changes \Seen, so that a refused FETCH changes nothing.)
/// `global`: `message/global` parts are encapsulated messages (IMAP4rev2).
pub fn check_binary(raw: &[u8], binary: &[BinaryItem], global: bool) -> Result<(), UnknownCte> {
    if binary.is_empty() {
        return Ok(());
    }
    let parsed = if global {
        Parsed::with_global_messages(raw)
    } else {
        Parsed::new(raw)
    };
    for item in binary {
        if let Err(BinaryError::UnknownTransfer(name)) = parsed.binary_section(item.part()) {
            return Err(UnknownCte {
                part: dotted(item.part()),
                encoding: String::from_utf8_lossy(&name).into_owned(),
            });
        }
    }
    Ok(())
}

pub fn flags_list(flags: &crate::event::Flags) -> String {
    let v: Vec<&str> = flags.iter().collect();
    format!("({})", v.join(" "))
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `dd-Mon-yyyy hh:mm:ss +zzzz` in the message's own zone.
pub fn internal_date(secs: i64, tz_minutes: i16) -> String {
    let local = secs + tz_minutes as i64 * 60;
    let days = local.div_euclid(86400);
    let rem = local.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    let sign = if tz_minutes < 0 { '-' } else { '+' };
    let tz = (tz_minutes as i32).abs();
    format!(
        "{:02}-{}-{:04} {:02}:{:02}:{:02} {}{:02}{:02}",
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        sign,
        tz / 60,
        tz % 60
    )
}

/// (year, month, day) of days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn part_numbers(p: &imap_codec::imap_types::fetch::Part) -> Vec<u32> {
    p.0.as_ref().iter().map(|n| n.get()).collect()
}

fn part_prefix(p: &Option<imap_codec::imap_types::fetch::Part>) -> String {
    match p {
        Some(p) => format!("{}.", part_numbers(p).iter().map(|n| n.to_string()).collect::<Vec<_>>().join(".")),
        None => String::new(),
    }
}

fn field_names(v: &imap_codec::imap_types::core::NonEmptyVec<imap_codec::imap_types::core::AString<'_>>) -> Vec<String> {
    v.as_ref()
        .iter()
        .map(|a| String::from_utf8_lossy(a.as_ref()).to_uppercase())
        .collect()
}

/// The section spec as echoed in the response, and what to extract.
fn section_spec(section: &Option<Section<'_>>) -> (String, Vec<u32>, SectionText) {
    match section {
        None => (String::new(), vec![], SectionText::Full),
        Some(Section::Part(p)) => {
            let n = part_numbers(p);
            (n.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("."), n, SectionText::Full)
        }
        Some(Section::Header(p)) => (
            format!("{}HEADER", part_prefix(p)),
            p.as_ref().map(part_numbers).unwrap_or_default(),
            SectionText::Header,
        ),
        Some(Section::HeaderFields(p, f)) => {
            let names = field_names(f);
            (
                format!("{}HEADER.FIELDS ({})", part_prefix(p), names.join(" ")),
                p.as_ref().map(part_numbers).unwrap_or_default(),
                SectionText::HeaderFields(names),
            )
        }
        Some(Section::HeaderFieldsNot(p, f)) => {
            let names = field_names(f);
            (
                format!("{}HEADER.FIELDS.NOT ({})", part_prefix(p), names.join(" ")),
                p.as_ref().map(part_numbers).unwrap_or_default(),
                SectionText::HeaderFieldsNot(names),
            )
        }
        Some(Section::Text(p)) => (
            format!("{}TEXT", part_prefix(p)),
            p.as_ref().map(part_numbers).unwrap_or_default(),
            SectionText::Text,
        ),
        Some(Section::Mime(p)) => {
            let n = part_numbers(p);
            (
                format!("{}.MIME", n.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(".")),
                n,
                SectionText::Mime,
            )
        }
    }
}

/// Literal data at least this long is sent from the body itself rather
/// than copied into the response buffer.
pub const BORROW_FROM: usize = 16 * 1024;

/// One message's FETCH response: bytes rendered here, and slices of the
/// stored body that are written as they are (a body asked for five times
/// is not copied five times).
#[derive(Default)]
pub struct Response<'a> {
    pub parts: Vec<Part<'a>>,
}

pub enum Part<'a> {
    Bytes(Vec<u8>),
    Body(&'a [u8]),
}

impl<'a> Response<'a> {
    fn bytes(&mut self) -> &mut Vec<u8> {
        if !matches!(self.parts.last(), Some(Part::Bytes(_))) {
            self.parts.push(Part::Bytes(Vec::with_capacity(256)));
        }
        match self.parts.last_mut() {
            Some(Part::Bytes(b)) => b,
            _ => unreachable!("a bytes part was just pushed"),
        }
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.bytes().extend_from_slice(bytes);
    }

    fn literal(&mut self, data: Cow<'a, [u8]>) {
        self.literal_as(data, false);
    }

    /// A literal8 (`~{n}`, RFC 3516) when `data` holds a NUL, which a
    /// literal may not; else a literal.
    fn literal8(&mut self, data: Cow<'a, [u8]>) {
        let nul = data.contains(&0);
        self.literal_as(data, nul);
    }

    fn literal_as(&mut self, data: Cow<'a, [u8]>, eight: bool) {
        let head = format!("{}{{{}}}\r\n", if eight { "~" } else { "" }, data.len());
        self.extend(head.as_bytes());
        match data {
            Cow::Borrowed(b) if b.len() >= BORROW_FROM => self.parts.push(Part::Body(b)),
            d => self.extend(&d),
        }
    }

    /// The whole response as one byte string.
    #[cfg(test)]
    pub fn concat(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for p in &self.parts {
            match p {
                Part::Bytes(b) => v.extend_from_slice(b),
                Part::Body(b) => v.extend_from_slice(b),
            }
        }
        v
    }
}

/// What a FETCH response is made from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// The whole message.
    Message(&'a [u8]),
    /// Only its top-level header section ([`header_of`]), for items that
    /// need no more ([`needs_header_only`]).
    Header(&'a [u8]),
}

/// Render `* seq FETCH (...)` for one message. `body` is the message bytes
/// when [`needs_raw`] said so (or BINARY items are asked for); `summary`
/// its parsed forms when ENVELOPE, BODY or BODYSTRUCTURE are asked for.
/// BINARY items (RFC 3516) follow the others; a part whose transfer
/// encoding cannot be removed refuses the whole response.
#[allow(clippy::too_many_arguments)]
pub fn render<'a>(
    seq: u32,
    uid: u32,
    m: &MessageRec,
    body: Option<Source<'a>>,
    summary: Option<&Summary>,
    items: &[MessageDataItemName<'_>],
    binary: &[BinaryItem],
    force_uid: bool,
    force_flags: bool,
    modseq: Option<u64>,
    global: bool,
) -> Result<Response<'a>, UnknownCte> {
    let mut r = Response::default();
    let out = &mut r;
    out.extend(format!("* {seq} FETCH (").as_bytes());
    let mut first = true;
    let mut sep = |out: &mut Response<'a>| {
        if !first {
            out.extend(b" ");
        }
        first = false;
    };
    let has_uid = items.iter().any(|i| matches!(i, MessageDataItemName::Uid));
    let has_flags = items.iter().any(|i| matches!(i, MessageDataItemName::Flags));
    if force_uid && !has_uid {
        sep(out);
        out.extend(format!("UID {uid}").as_bytes());
    }
    let (raw, kept_header): (&'a [u8], bool) = match body {
        Some(Source::Message(b)) => (b, false),
        Some(Source::Header(h)) => (h, true),
        None => (&[], false),
    };
    let parsed = std::cell::OnceCell::new();
    let parsed = || {
        parsed.get_or_init(|| {
            if global {
                Parsed::with_global_messages(raw)
            } else {
                Parsed::new(raw)
            }
        })
    };
    // A top-level header section, read from the kept section by its own
    // lines, without parsing a MIME tree.
    let top_header = |what: SectionText| -> Vec<u8> {
        if kept_header {
            crate::proto::imap::mime::top_header_section(raw, &what).unwrap_or_default()
        } else {
            parsed().section(&[], what).unwrap_or_default()
        }
    };
    for item in items {
        sep(out);
        match item {
            MessageDataItemName::Uid => out.extend(format!("UID {uid}").as_bytes()),
            MessageDataItemName::Flags => out.extend(format!("FLAGS {}", flags_list(&m.flags)).as_bytes()),
            MessageDataItemName::InternalDate => {
                out.extend(format!("INTERNALDATE \"{}\"", internal_date(m.internal_date, m.tz_minutes)).as_bytes())
            }
            MessageDataItemName::Rfc822Size => out.extend(format!("RFC822.SIZE {}", m.size).as_bytes()),
            MessageDataItemName::Envelope => {
                out.extend(b"ENVELOPE ");
                out.extend(summary.map(|s| s.envelope.as_slice()).unwrap_or(b"NIL"));
            }
            MessageDataItemName::Body => {
                out.extend(b"BODY ");
                out.extend(summary.map(|s| s.body.as_slice()).unwrap_or(b"NIL"));
            }
            MessageDataItemName::BodyStructure => {
                out.extend(b"BODYSTRUCTURE ");
                out.extend(summary.map(|s| s.bodystructure.as_slice()).unwrap_or(b"NIL"));
            }
            MessageDataItemName::Rfc822 => {
                out.extend(b"RFC822 ");
                out.literal(Cow::Borrowed(raw));
            }
            MessageDataItemName::Rfc822Header => {
                out.extend(b"RFC822.HEADER ");
                let h = top_header(SectionText::Header);
                out.literal(Cow::Owned(h));
            }
            MessageDataItemName::Rfc822Text => {
                out.extend(b"RFC822.TEXT ");
                let t = parsed().section(&[], SectionText::Text).unwrap_or_default();
                out.literal(Cow::Owned(t));
            }
            MessageDataItemName::BodyExt { section, partial, peek: _ } => {
                let (spec, part, what) = section_spec(section);
                let data: Cow<'a, [u8]> = if part.is_empty() && matches!(what, SectionText::Full) {
                    Cow::Borrowed(raw)
                } else if part.is_empty()
                    && matches!(
                        what,
                        SectionText::Header | SectionText::HeaderFields(_) | SectionText::HeaderFieldsNot(_)
                    )
                {
                    Cow::Owned(top_header(what))
                } else {
                    Cow::Owned(parsed().section(&part, what).unwrap_or_default())
                };
                match partial {
                    Some((origin, len)) => {
                        let start = (*origin as usize).min(data.len());
                        let end = start.saturating_add(len.get() as usize).min(data.len());
                        out.extend(format!("BODY[{spec}]<{origin}> ").as_bytes());
                        let slice = match data {
                            Cow::Borrowed(b) => Cow::Borrowed(&b[start..end]),
                            Cow::Owned(v) => Cow::Owned(v[start..end].to_vec()),
                        };
                        out.literal(slice);
                    }
                    None => {
                        out.extend(format!("BODY[{spec}] ").as_bytes());
                        out.literal(data);
                    }
                }
            }
        }
    }
    for item in binary {
        sep(out);
        let part = item.part();
        let data = match parsed().binary(part) {
            Ok(d) => Some(d),
            Err(BinaryError::NoSuchPart) => None,
            Err(BinaryError::UnknownTransfer(name)) => {
                return Err(UnknownCte {
                    part: dotted(part),
                    encoding: String::from_utf8_lossy(&name).into_owned(),
                })
            }
        };
        match item {
            BinaryItem::Size { .. } => {
                out.extend(format!("BINARY.SIZE[{}] {}", dotted(part), data.map_or(0, |d| d.len())).as_bytes());
            }
            BinaryItem::Binary { partial, .. } => {
                let origin = partial.map(|(o, _)| format!("<{o}>")).unwrap_or_default();
                out.extend(format!("BINARY[{}]{origin} ", dotted(part)).as_bytes());
                let Some(data) = data else {
                    out.extend(b"NIL");
                    continue;
                };
                let data = match partial {
                    Some((origin, len)) => {
                        let start = (*origin as usize).min(data.len());
                        let end = start.saturating_add(*len as usize).min(data.len());
                        match data {
                            Cow::Borrowed(b) => Cow::Borrowed(&b[start..end]),
                            Cow::Owned(v) => Cow::Owned(v[start..end].to_vec()),
                        }
                    }
                    None => data,
                };
                out.literal8(data);
            }
        }
    }
    if force_flags && !has_flags {
        sep(out);
        out.extend(format!("FLAGS {}", flags_list(&m.flags)).as_bytes());
    }
    // RFC 7162 section 3.1.4: MODSEQ when asked for, with CHANGEDSINCE,
    // and once CONDSTORE is on with every FLAGS a FETCH changed.
    if let Some(n) = modseq {
        sep(out);
        out.extend(format!("MODSEQ ({n})").as_bytes());
    }
    out.extend(b")\r\n");
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batched read of summaries from the cache column family gives each
    /// body its own summary (the keys are sorted for the lookup), keeps
    /// them in memory, and leaves a body without one to be parsed.
    /// A store and `n` small distinct messages.
    fn store_and_bodies(n: usize) -> (tempfile::TempDir, crate::store::Store, Vec<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), "n", crate::store::wal_options("n")).unwrap();
        let bodies = (0..n)
            .map(|i| format!("Subject: message {i}\r\nFrom: a{i}@b\r\n\r\nbody {i}\r\n").into_bytes())
            .collect();
        (dir, store, bodies)
    }

    fn hash(b: &[u8]) -> BlobHash {
        BlobHash(*blake3::hash(b).as_bytes())
    }

    #[test]
    fn prefetched_summaries_belong_to_their_bodies() {
        let (_dir, store, bodies) = store_and_bodies(40);
        // Every summary is in the column family; memory is empty again.
        let writer = Cache::new(100);
        for b in &bodies {
            writer.get_or(&store, &hash(b), true, || Some(Cow::Borrowed(b.as_slice()))).unwrap();
        }
        let unknown = hash(b"never seen");
        let c = Cache::new(100);
        let mut hashes: Vec<BlobHash> = bodies.iter().map(|b| hash(b)).collect();
        hashes.push(unknown);
        hashes.push(hashes[3]);
        let got = c.prefetch(&store, &hashes, true);
        assert_eq!(got.len(), 40, "the unknown body has no summary to read");
        assert_eq!(c.inner.lock().unwrap().0.len(), 40);
        for b in &bodies {
            assert_eq!(got[&hash(b)].envelope, Summary::of(b, false).envelope);
            let s = c.get_or(&store, &hash(b), true, || panic!("read from memory, not parsed")).unwrap();
            assert_eq!(s.envelope, Summary::of(b, false).envelope);
        }
        assert!(c.get_or(&store, &unknown, true, || None).is_none());
    }

    /// A sweep (a FETCH of more than half the cache) reads summaries
    /// without pushing out what the cache holds.
    #[test]
    fn a_sweep_leaves_the_working_set_in_memory() {
        let (_dir, store, bodies) = store_and_bodies(30);
        let c = Cache::new(10);
        assert!(!c.is_sweep(5) && c.is_sweep(6));
        // The working set: the first five, parsed and kept.
        for b in &bodies[..5] {
            c.get_or(&store, &hash(b), true, || Some(Cow::Borrowed(b.as_slice()))).unwrap();
        }
        // A sweep of all 30: parsed (first time) or read back, not kept.
        for b in &bodies {
            c.get_or(&store, &hash(b), false, || Some(Cow::Borrowed(b.as_slice()))).unwrap();
        }
        let hashes: Vec<BlobHash> = bodies.iter().map(|b| hash(b)).collect();
        let got = c.prefetch(&store, &hashes, false);
        assert_eq!(got.len(), 30, "every summary is in the column family now");
        let held = c.inner.lock().unwrap().0.keys().copied().collect::<std::collections::HashSet<_>>();
        assert_eq!(held, hashes[..5].iter().copied().collect());
    }

    /// Summaries kept in the cache column family by earlier builds (plain
    /// byte vectors) read the same, and new ones are written the same.
    #[test]
    fn summaries_keep_their_encoding() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Plain {
            envelope: Vec<u8>,
            body: Vec<u8>,
            bodystructure: Vec<u8>,
        }
        let raw = b"Subject: hi\r\nFrom: a@b\r\nContent-Type: text/plain\r\n\r\nbody\r\n";
        let s = Summary::of(raw, false);
        let plain = Plain {
            envelope: s.envelope.clone(),
            body: s.body.clone(),
            bodystructure: s.bodystructure.clone(),
        };
        let old = postcard::to_allocvec(&plain).unwrap();
        assert_eq!(postcard::to_allocvec(&s).unwrap(), old);
        let back: Summary = postcard::from_bytes(&old).unwrap();
        assert_eq!(
            (back.envelope, back.body, back.bodystructure),
            (s.envelope, s.body, s.bodystructure)
        );
    }

    #[test]
    fn repeated_bodies_are_borrowed_not_copied() {
        let body: Vec<u8> = b"Subject: x\r\n\r\n"
            .iter()
            .copied()
            .chain(std::iter::repeat_n(b'y', 100_000))
            .collect();
        let m = rec(body.len());
        let item = MessageDataItemName::BodyExt {
            section: None,
            partial: None,
            peek: true,
        };
        let items = vec![item.clone(), item.clone(), item, MessageDataItemName::Flags];
        let r = render(7, 9, &m, Some(Source::Message(&body)), None, &items, &[], true, false, None, false).unwrap();
        let borrowed: Vec<&[u8]> = r
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::Body(b) => Some(*b),
                Part::Bytes(_) => None,
            })
            .collect();
        assert_eq!(borrowed.len(), 3);
        assert!(borrowed.iter().all(|b| b.as_ptr() == body.as_ptr() && b.len() == body.len()));
        let copied: usize = r
            .parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len(),
                Part::Body(_) => 0,
            })
            .sum();
        assert!(copied < 200, "{copied} bytes copied");
        let all = r.concat();
        let lit = format!("{{{}}}\r\n", body.len());
        let mut want = format!("* 7 FETCH (UID 9 BODY[] {lit}").into_bytes();
        want.extend_from_slice(&body);
        for _ in 0..2 {
            want.extend_from_slice(format!(" BODY[] {lit}").as_bytes());
            want.extend_from_slice(&body);
        }
        want.extend_from_slice(b" FLAGS (\\Seen))\r\n");
        assert_eq!(all, want);
    }

    /// The items of `A1 FETCH 1 <items>` (a parenthesised list).
    fn items_of(items: &str) -> Vec<MessageDataItemName<'static>> {
        use imap_codec::decode::Decoder;
        use imap_codec::imap_types::command::CommandBody;
        use imap_codec::imap_types::fetch::MacroOrMessageDataItemNames;
        let line = format!("A1 FETCH 1 {items}\r\n");
        let (_, command) = imap_codec::CommandCodec::default().decode_static(line.as_bytes()).unwrap();
        match command.body {
            CommandBody::Fetch {
                macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(names),
                ..
            } => names,
            other => panic!("not a FETCH of items: {other:?}"),
        }
    }

    /// Every header-only item renders byte for byte the same from the kept
    /// header section as from the whole message, for messages with CRLF
    /// and bare LF line ends, folded fields, repeated fields, no body, no
    /// empty line at all, an empty message, multiparts and stray bytes;
    /// and `needs_header_only` says which item lists may be served so.
    #[test]
    fn header_items_render_the_same_from_the_kept_header() {
        let mut messages: Vec<Vec<u8>> = vec![
            b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: a@b\r\nSubject: hi\r\n\r\nbody\r\n".to_vec(),
            b"Date: x\nFrom: a@b\nSubject: lf only\n\nbody\n".to_vec(),
            b"Subject: folded\r\n  on two lines\r\nDATE: late\r\ndate: twice\r\n\r\n".to_vec(),
            b"Subject: no body at all\r\nDate: d\r\n".to_vec(),
            b"Subject: no line end".to_vec(),
            Vec::new(),
            b"\r\nbody after an empty header\r\n".to_vec(),
            b"Content-Type: multipart/mixed; boundary=b\r\nDate: m\r\n\r\n--b\r\nContent-Type: text/plain\r\nDate: inner\r\n\r\npart\r\n--b--\r\n".to_vec(),
            b"Content-Type: message/rfc822\r\n\r\nDate: inner\r\nSubject: s\r\n\r\ninner body\r\n".to_vec(),
            b"Bad line without colon\r\nDate: d\r\n\r\nx".to_vec(),
        ];
        // Stray bytes: CR and LF in every mix, colons, spaces, NUL, 8-bit.
        let mut rng = crate::testrng::XorShift(0x04ea_de25);
        for _ in 0..300 {
            let alphabet = b"\r\n: \tDaSubjectdte\0\xff-=";
            messages.push((0..rng.below(120)).map(|_| alphabet[rng.below(alphabet.len())]).collect());
        }
        let lists = [
            "(BODY.PEEK[HEADER.FIELDS (DATE FROM SUBJECT)])",
            "(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (Date Subject)] BODY[HEADER.FIELDS.NOT (DATE)])",
            "(RFC822.HEADER)",
            "(BODY.PEEK[HEADER] BODY.PEEK[HEADER]<2.7> BODY.PEEK[HEADER.FIELDS (DATE)]<0.5>)",
        ];
        for list in lists {
            let items = items_of(list);
            assert!(needs_header_only(&items), "{list}");
            for raw in &messages {
                let m = rec(raw.len());
                let head = header_of(raw);
                let full = render(1, 1, &m, Some(Source::Message(raw)), None, &items, &[], true, false, None, false)
                    .unwrap()
                    .concat();
                let kept = render(1, 1, &m, Some(Source::Header(&head)), None, &items, &[], true, false, None, false)
                    .unwrap()
                    .concat();
                assert_eq!(
                    String::from_utf8_lossy(&kept),
                    String::from_utf8_lossy(&full),
                    "{list} of {:?}",
                    String::from_utf8_lossy(raw)
                );
            }
        }
        for list in [
            "(FLAGS UID)",
            "(BODY.PEEK[HEADER] BODY.PEEK[TEXT])",
            "(BODY[])",
            "(BODY.PEEK[1.HEADER])",
            "(BODY.PEEK[HEADER] RFC822)",
            "(RFC822.TEXT)",
            "(BODY.PEEK[1])",
        ] {
            assert!(!needs_header_only(&items_of(list)), "{list}");
        }
    }

    /// Header sections are kept in the cache column family: read back in
    /// a batch and one by one, without loading the body again.
    #[test]
    fn header_sections_are_kept_and_read_back() {
        let (_dir, store, bodies) = store_and_bodies(10);
        let c = Cache::new(100);
        for b in &bodies[..6] {
            assert_eq!(c.keep_header(&store, &hash(b), || Some(b.clone())).unwrap(), header_of(b));
        }
        let hashes: Vec<BlobHash> = bodies.iter().map(|b| hash(b)).collect();
        let got = c.headers(&store, &hashes);
        assert_eq!(got.len(), 6, "only the kept ones");
        for b in &bodies[..6] {
            assert_eq!(got[&hash(b)], header_of(b));
        }
        assert!(c.keep_header(&store, &hash(b"unknown"), || None).is_none());
    }

    fn rec(size: usize) -> MessageRec {
        MessageRec {
            guid: crate::event::Id([0; 16]),
            blob: BlobHash([0; 32]),
            size: size as u64,
            internal_date: 0,
            tz_minutes: 0,
            flags: crate::event::Flags::new(["\\Seen"]),
            modseq: 1,
            clocks: Vec::new(),
            set_clock: (0, 0),
        }
    }

    #[test]
    fn binary_items_are_decoded_and_sent_as_literal8_only_with_nul() {
        let body: &[u8] = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\nna=C3=AFve text\r\n--b\r\n\
Content-Transfer-Encoding: base64\r\n\r\nAAEAAg==\r\n--b\r\n\
Content-Transfer-Encoding: x-unknown\r\n\r\n??\r\n--b--\r\n";
        let m = rec(body.len());
        let bin = |part: &[u32], partial| BinaryItem::Binary {
            part: part.to_vec(),
            peek: true,
            partial,
        };
        let items = [
            bin(&[1], None),
            bin(&[2], None),
            BinaryItem::Size { part: vec![2] },
            bin(&[1], Some((2, 4))),
            bin(&[1], Some((100, 4))),
            bin(&[9], None),
            BinaryItem::Size { part: vec![9] },
        ];
        let r = render(3, 5, &m, Some(Source::Message(body)), None, &[], &items, false, false, None, false).unwrap();
        let want: &[u8] = "* 3 FETCH (BINARY[1] {11}\r\nnaïve text BINARY[2] ~{4}\r\n\x00\x01\x00\x02 BINARY.SIZE[2] 4 \
BINARY[1]<2> {4}\r\nïve BINARY[1]<100> {0}\r\n BINARY[9] NIL BINARY.SIZE[9] 0)\r\n"
            .as_bytes();
        assert_eq!(r.concat(), want, "{}", String::from_utf8_lossy(&r.concat()));
        // The whole message is sent as stored, header included.
        let r = render(
            3,
            5,
            &m,
            Some(Source::Message(body)),
            None,
            &[],
            &[bin(&[], None)],
            true,
            false,
            Some(42),
            false,
        )
        .unwrap();
        assert!(r
            .concat()
            .starts_with(format!("* 3 FETCH (UID 5 BINARY[] {{{}}}\r\nContent-Type", body.len()).as_bytes()));
        // MODSEQ goes last (RFC 7162 section 3.1.4).
        assert!(r.concat().ends_with(b" MODSEQ (42))\r\n"));
        let e = render(
            3,
            5,
            &m,
            Some(Source::Message(body)),
            None,
            &[],
            &items[..1].iter().cloned().chain([bin(&[3], None)]).collect::<Vec<_>>(),
            false,
            false,
            None,
            false,
        )
        .err()
        .unwrap();
        assert_eq!(
            e,
            UnknownCte {
                part: "3".into(),
                encoding: "x-unknown".into()
            }
        );
        assert_eq!(check_binary(body, &[BinaryItem::Size { part: vec![3] }], false), Err(e));
        assert_eq!(check_binary(body, &items, false), Ok(()));
        assert!(sets_seen(
            &[],
            &[BinaryItem::Binary {
                part: vec![],
                peek: false,
                partial: None
            }]
        ));
        assert!(!sets_seen(&[], &items));
    }

    #[test]
    fn dates() {
        assert_eq!(internal_date(0, 0), "01-Jan-1970 00:00:00 +0000");
        assert_eq!(internal_date(1_700_000_000, 60), "14-Nov-2023 23:13:20 +0100");
        assert_eq!(internal_date(1_700_000_000, -330), "14-Nov-2023 16:43:20 -0530");
        for d in [-1000i64, 0, 59, 11017, 19000, 30000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(crate::mailfile::days_from_civil(y as i32, m, dd), d);
        }
    }
}
