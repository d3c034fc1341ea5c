//! Segment files (backups, restore): decoding arbitrary bytes never panics
//! and never allocates beyond the input; a segment that verifies encodes
//! back to exactly its bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wal::segment;

fuzz_target!(|data: &[u8]| {
    match segment::decode(data) {
        Ok(s) => {
            assert_eq!(
                segment::encode(&s.prev_hash, &s.entries),
                data,
                "a verified segment re-encodes differently"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
