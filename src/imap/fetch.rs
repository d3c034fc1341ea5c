//! FETCH: rendering message data items, with a bounded cache of the costly
//! parts (ENVELOPE, BODY, BODYSTRUCTURE) keyed by the body's blake3 hash, so
//! a large mailbox's envelopes are parsed once.

use crate::event::BlobHash;
use crate::proto::imap::mime::{Parsed, SectionText};
use crate::views::MessageRec;
use imap_codec::imap_types::fetch::{MessageDataItemName, Section};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// The parsed forms of one body that FETCH asks for again and again.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub envelope: Vec<u8>,
    pub body: Vec<u8>,
    pub bodystructure: Vec<u8>,
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

    /// The summary of a body: from memory, else from the store's cache
    /// column family, else parsed from the body (which `load` fetches) and
    /// kept in both.
    pub fn get_or(&self, store: &crate::store::Store, hash: &BlobHash, load: impl FnOnce() -> Option<Vec<u8>>) -> Option<Arc<Summary>> {
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
                let p = Parsed::new(&bytes);
                let s = Summary {
                    envelope: p.envelope(),
                    body: p.body_structure(false),
                    bodystructure: p.body_structure(true),
                };
                if let Ok(v) = postcard::to_allocvec(&s) {
                    if let Err(e) = store.wal().put_derived(cf, &key, &v) {
                        tracing::debug!(error = %e, "could not keep a MIME summary");
                    }
                }
                Arc::new(s)
            }
        };
        let mut g = self.inner.lock().expect("cache lock");
        if g.0.len() >= self.max {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
        if g.0.insert(*hash, s.clone()).is_none() {
            g.1.push_back(*hash);
        }
        Some(s)
    }
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

/// Does fetching these items set \Seen?
pub fn sets_seen(items: &[MessageDataItemName<'_>]) -> bool {
    items.iter().any(|i| match i {
        MessageDataItemName::BodyExt { peek, .. } => !peek,
        MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
        _ => false,
    })
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

fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
}

/// Render `* seq FETCH (...)` for one message. `body` is the message bytes
/// when [`needs_raw`] said so; `summary` its parsed forms when ENVELOPE,
/// BODY or BODYSTRUCTURE are asked for.
#[allow(clippy::too_many_arguments)]
pub fn render(
    out: &mut Vec<u8>,
    seq: u32,
    uid: u32,
    m: &MessageRec,
    body: Option<&[u8]>,
    summary: Option<&Summary>,
    items: &[MessageDataItemName<'_>],
    force_uid: bool,
    force_flags: bool,
) {
    out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b' ');
        }
        first = false;
    };
    let has_uid = items.iter().any(|i| matches!(i, MessageDataItemName::Uid));
    let has_flags = items.iter().any(|i| matches!(i, MessageDataItemName::Flags));
    if force_uid && !has_uid {
        sep(out);
        out.extend_from_slice(format!("UID {uid}").as_bytes());
    }
    let empty: &[u8] = &[];
    let raw = body.unwrap_or(empty);
    let parsed = std::cell::OnceCell::new();
    let parsed = || parsed.get_or_init(|| Parsed::new(raw));
    for item in items {
        sep(out);
        match item {
            MessageDataItemName::Uid => out.extend_from_slice(format!("UID {uid}").as_bytes()),
            MessageDataItemName::Flags => out.extend_from_slice(format!("FLAGS {}", flags_list(&m.flags)).as_bytes()),
            MessageDataItemName::InternalDate => {
                out.extend_from_slice(format!("INTERNALDATE \"{}\"", internal_date(m.internal_date, m.tz_minutes)).as_bytes())
            }
            MessageDataItemName::Rfc822Size => out.extend_from_slice(format!("RFC822.SIZE {}", m.size).as_bytes()),
            MessageDataItemName::Envelope => {
                out.extend_from_slice(b"ENVELOPE ");
                out.extend_from_slice(summary.map(|s| s.envelope.as_slice()).unwrap_or(b"NIL"));
            }
            MessageDataItemName::Body => {
                out.extend_from_slice(b"BODY ");
                out.extend_from_slice(summary.map(|s| s.body.as_slice()).unwrap_or(b"NIL"));
            }
            MessageDataItemName::BodyStructure => {
                out.extend_from_slice(b"BODYSTRUCTURE ");
                out.extend_from_slice(summary.map(|s| s.bodystructure.as_slice()).unwrap_or(b"NIL"));
            }
            MessageDataItemName::Rfc822 => {
                out.extend_from_slice(b"RFC822 ");
                literal(out, raw);
            }
            MessageDataItemName::Rfc822Header => {
                out.extend_from_slice(b"RFC822.HEADER ");
                let h = parsed().section(&[], SectionText::Header).unwrap_or_default();
                literal(out, &h);
            }
            MessageDataItemName::Rfc822Text => {
                out.extend_from_slice(b"RFC822.TEXT ");
                let t = parsed().section(&[], SectionText::Text).unwrap_or_default();
                literal(out, &t);
            }
            MessageDataItemName::BodyExt { section, partial, peek: _ } => {
                let (spec, part, what) = section_spec(section);
                let data: Option<Vec<u8>> = if part.is_empty() && matches!(what, SectionText::Full) {
                    Some(raw.to_vec())
                } else {
                    parsed().section(&part, what)
                };
                let data = data.unwrap_or_default();
                match partial {
                    Some((origin, len)) => {
                        let start = (*origin as usize).min(data.len());
                        let end = start.saturating_add(len.get() as usize).min(data.len());
                        out.extend_from_slice(format!("BODY[{spec}]<{origin}> ").as_bytes());
                        literal(out, &data[start..end]);
                    }
                    None => {
                        out.extend_from_slice(format!("BODY[{spec}] ").as_bytes());
                        literal(out, &data);
                    }
                }
            }
        }
    }
    if force_flags && !has_flags {
        sep(out);
        out.extend_from_slice(format!("FLAGS {}", flags_list(&m.flags)).as_bytes());
    }
    out.extend_from_slice(b")\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

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
