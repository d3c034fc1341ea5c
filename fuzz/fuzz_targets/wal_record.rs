//! Stored log values: decode never panics; a decoded entry encodes to the
//! same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wal::{Entry, Origin};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let origin = Origin(u64::from_be_bytes(data[..8].try_into().unwrap()));
    let seq = u64::from_be_bytes(data[8..16].try_into().unwrap());
    if let Ok(e) = Entry::decode_value(origin, seq, &data[16..]) {
        assert_eq!(e.encode_value(), &data[16..]);
        let _ = e.follows(&wal::GENESIS);
    }
});
