//! Transfer decodings for SEARCH and BINARY: base64 and quoted-printable.

use super::*;

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
pub(super) fn decode_quoted_printable(input: &[u8]) -> Vec<u8> {
    pub(super) fn hex(b: u8) -> Option<u8> {
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
