//! IMAP client input through the framer, then each whole command through
//! the command parser, as the session does. Neither may panic; the framer
//! must keep its buffer bounded and hand out only whole commands. The
//! extension grammar (`proto::imap::ext`) sees every command too, the
//! BINARY items of FETCH (RFC 3516) and literal8 APPEND included, and so
//! does the search for SEARCHRES's `$` (RFC 5182).
#![no_main]
use imap_codec::decode::Decoder;
use imap_codec::CommandCodec;
use libfuzzer_sys::fuzz_target;
use tandem_fuzz::proto::imap::fragment::{tag_of, Frame, Framer};
use tandem_fuzz::proto::imap::mutf7;
use tandem_fuzz::proto::imap::{condstore, ext, searchres};

const MAX_LINE: usize = 2048;
const MAX_LITERAL: u64 = 8192;

fuzz_target!(|data: &[u8]| {
    let mut f = Framer::new(MAX_LINE, MAX_LITERAL);
    let mut rest = data;
    while !rest.is_empty() {
        let n = 1 + (rest[0] as usize % 61);
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        f.feed(chunk);
        while let Some(frame) = f.next_frame() {
            match frame {
                Frame::Command(cmd) => {
                    assert!(cmd.ends_with(b"\n"), "a command that does not end a line");
                    let _ = tag_of(&cmd);
                    if let Ok((_, c)) = CommandCodec::default().decode(&cmd) {
                        // Mailbox names the session would decode.
                        let s = format!("{:?}", c.body);
                        let _ = mutf7::decode(&s);
                    }
                    // The extension grammar the session tries when
                    // imap-codec refuses a command.
                    let rewritten = ext::utf8_quoted_as_literals(&cmd).ok().flatten();
                    let cmd = rewritten.as_deref().unwrap_or(&cmd);
                    if let Ok((_, _, name, lx)) = ext::head(cmd) {
                        match name.as_str() {
                            "LIST" => {
                                let _ = ext::list(&mut lx.clone());
                            }
                            "APPEND" => {
                                let _ = ext::append(&mut lx.clone());
                            }
                            "ENABLE" => {
                                let _ = ext::enable(&mut lx.clone());
                            }
                            _ => {}
                        }
                    }
                    // SEARCHRES: every `$` found is a `$` of the command,
                    // in order, and writing sets over them changes nothing
                    // else.
                    if let Ok(found) = searchres::dollars(cmd) {
                        assert!(found.len() <= ext::MAX_ITEMS + 1);
                        assert!(found.windows(2).all(|w| w[0].at < w[1].at), "$ out of order");
                        assert!(found.iter().all(|d| cmd.get(d.at) == Some(&b'$')), "not a $");
                        let out = searchres::substitute(cmd, &found, "1:2", "3");
                        let seq_sets = found.iter().filter(|d| !d.uid).count();
                        assert_eq!(out.len(), cmd.len() + 2 * seq_sets, "substitution changed more than the $");
                        let _ = CommandCodec::default().decode(&out);
                    }
                    // IMAP4rev2's 64-bit LARGER / SMALLER: each becomes a
                    // KEYWORD of bounded length, above 32 bits only.
                    if let Ok(Some((keys, plain))) = ext::search_sizes(cmd) {
                        assert!(!keys.is_empty() && keys.len() <= ext::MAX_ITEMS);
                        assert!(keys.iter().all(|(_, n)| *n > u64::from(u32::MAX) && *n <= i64::MAX as u64));
                        assert!(plain.len() <= cmd.len() + 32 * keys.len(), "size key rewrite grew");
                        let _ = CommandCodec::default().decode(&plain);
                    }
                    if let Ok(Some((_, plain))) = ext::search_return(cmd) {
                        assert!(plain.len() <= cmd.len(), "SEARCH RETURN rewrite grew");
                    }
                    if let Ok(Some((_, plain))) = ext::sort_or_thread(cmd) {
                        assert!(plain.len() <= cmd.len() + 16, "SORT rewrite grew");
                    }
                    // FETCH with RFC 3516 BINARY items or RFC 7162's MODSEQ:
                    // each becomes `UID` for imap-codec, which parses the rest.
                    if let Ok(Some(bf)) = ext::fetch_items(cmd) {
                        assert!((bf.modseq || !bf.items.is_empty()) && bf.items.len() <= ext::MAX_ITEMS);
                        assert!(bf.plain.len() + 5 * bf.items.len() <= cmd.len(), "BINARY rewrite grew");
                        assert!(bf.items.iter().all(|i| i.part().len() <= ext::MAX_SECTION_PARTS));
                        let _ = CommandCodec::default().decode(&bf.plain);
                    }
                    // RFC 7162: each split leaves a command for imap-codec
                    // no longer than it was (SEARCH MODSEQ grows by a
                    // bounded keyword per key), values within 63 bits.
                    if let Ok(Some((p, plain))) = condstore::select_params(cmd) {
                        assert!(plain.len() <= cmd.len());
                        assert!(p.qresync.is_none_or(|q| q.modseq <= condstore::MAX_MODSEQ));
                    }
                    if let Ok(Some((m, plain))) = condstore::fetch_modifiers(cmd) {
                        assert!(plain.len() <= cmd.len());
                        assert!(m.changed_since.is_some_and(|n| n <= condstore::MAX_MODSEQ));
                        let _ = ext::fetch_items(&plain);
                    }
                    if let Ok(Some((n, plain))) = condstore::store_unchanged_since(cmd) {
                        assert!(plain.len() < cmd.len() && n <= condstore::MAX_MODSEQ);
                        let _ = CommandCodec::default().decode(&plain);
                    }
                    if let Ok(Some((values, plain))) = condstore::search_modseq(cmd) {
                        assert!(!values.is_empty() && values.len() <= ext::MAX_ITEMS);
                        assert!(plain.len() <= cmd.len() + 32 * values.len(), "SEARCH MODSEQ rewrite grew");
                        let _ = ext::search_return(&plain);
                    }
                }
                Frame::Continue { length } => assert!(u64::from(length) <= MAX_LITERAL),
                Frame::LineTooLong { .. } | Frame::LiteralTooLarge { .. } => {}
            }
        }
        assert!(
            f.buffered() as u64 <= MAX_LITERAL + 64 * 1024 + MAX_LINE as u64 + 128,
            "framer buffered {}",
            f.buffered()
        );
    }
    // mutf7 round trip on arbitrary text.
    if let Ok(s) = std::str::from_utf8(data) {
        let wire = mutf7::encode(s);
        assert_eq!(mutf7::decode(&wire).as_deref(), Ok(s), "mutf7 round trip");
    }
});
