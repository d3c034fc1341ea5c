//! Event payloads from the log or a peer: decode never panics; a decoded
//! event encodes back to one that decodes equal (flags are canonicalised on
//! decode, so the comparison is after one round); reading only its user
//! (`Event::user_of`) never panics and agrees with the whole decode.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tandem_fuzz::event::Event;

fuzz_target!(|data: &[u8]| {
    let head = Event::user_of(data);
    if let Ok(e) = Event::decode(data) {
        assert_eq!(head, Ok(e.user()), "the user read alone differs from the decoded event's");
        let _ = e.describe();
        let once = e.encode();
        let again = Event::decode(&once).expect("an encoded event decodes");
        assert_eq!(again, e);
        assert_eq!(again.encode(), once, "encoding is not stable");
    }
});
