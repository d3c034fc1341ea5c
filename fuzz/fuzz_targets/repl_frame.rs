//! Replication frames: the length check and the body decoder never panic,
//! and whatever decodes encodes back to a frame that decodes to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tandem_fuzz::frame::{Frame, MAX_FRAME, PREAUTH_FRAME};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let h = [data[0], data[1], data[2], data[3]];
        if let Ok(n) = Frame::length(h, PREAUTH_FRAME) {
            assert!(n <= PREAUTH_FRAME && Frame::length(h, MAX_FRAME) == Ok(n));
        }
    }
    if let Ok(f) = Frame::decode(data) {
        let wire = f.encode();
        let n = Frame::length([wire[0], wire[1], wire[2], wire[3]], MAX_FRAME).expect("an encoded frame has a valid length");
        assert_eq!(n as usize, wire.len() - 4);
        assert_eq!(Frame::decode(&wire[4..]).expect("re-decode"), f);
    }
});
