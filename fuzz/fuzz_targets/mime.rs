//! MIME parsing of arbitrary messages, as IMAP4rev1 and as IMAP4rev2 read
//! them: ENVELOPE, BODYSTRUCTURE, every section and its BINARY form. No
//! panic; every section that is not transfer-decoded is a slice of the
//! input; the top-level header sections read from the kept header alone
//! (`top_header_section`) equal the whole message's.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tandem_fuzz::proto::imap::mime::{top_header_section, Parsed, SectionText, Transfer};

fuzz_target!(|data: &[u8]| {
    // Both readings: IMAP4rev1's, and IMAP4rev2's, where message/global
    // parts are encapsulated messages.
    for p in [Parsed::new(data), Parsed::with_global_messages(data)] {
        check(data, &p);
    }
    let whole = Parsed::new(data);
    let kept = whole.section(&[], SectionText::Header).unwrap_or_default();
    let names = vec!["DATE".to_string(), "FROM".to_string(), "X".to_string()];
    for what in [
        SectionText::Header,
        SectionText::HeaderFields(names.clone()),
        SectionText::HeaderFieldsNot(names),
    ] {
        assert_eq!(
            top_header_section(&kept, &what),
            whole.section(&[], what.clone()),
            "{what:?} from the kept header differs from the whole message's"
        );
    }
});

fn check(data: &[u8], p: &Parsed<'_>) {
    let _ = p.envelope();
    let _ = p.body_structure(true);
    let _ = p.body_structure(false);
    let _ = p.sent_date();
    let _ = p.header_values("subject");
    let _ = p.body_text();
    let mut parts: Vec<Vec<u32>> = vec![vec![]];
    for a in 1..=3 {
        parts.push(vec![a]);
        for b in 1..=2 {
            parts.push(vec![a, b]);
        }
    }
    for part in &parts {
        // RFC 3516 BINARY: with an identity transfer encoding it is the
        // section as stored (BODY[part], or the whole message).
        let _ = p.binary(part);
        if let Ok((bytes, Transfer::Identity)) = p.binary_section(part) {
            let body = if part.is_empty() {
                Some(data.to_vec())
            } else {
                p.section(part, SectionText::Full)
            };
            assert_eq!(Some(bytes.to_vec()), body, "BINARY[{part:?}] is not BODY[{part:?}]");
        }
        for what in [SectionText::Header, SectionText::Text, SectionText::Mime, SectionText::Full] {
            if let Some(bytes) = p.section(part, what.clone()) {
                if !bytes.is_empty() {
                    assert!(
                        data.windows(bytes.len()).any(|w| w == bytes.as_slice()),
                        "section {part:?} {what:?} is not a slice of the message"
                    );
                }
            }
        }
    }
}
