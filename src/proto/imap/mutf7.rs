//! Modified UTF-7 mailbox names (RFC 3501 section 5.1.3).

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// Encode a UTF-8 name for the wire.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        out.push('&');
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            let chars = match chunk.len() {
                1 => 2,
                2 => 3,
                _ => 4,
            };
            for i in 0..chars {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out.push('-');
        pending.clear();
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Decode a wire name to UTF-8. Invalid encodings are refused.
pub fn decode(wire: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(wire.len());
    let mut it = wire.chars().peekable();
    while let Some(c) = it.next() {
        if c != '&' {
            if !(' '..='~').contains(&c) {
                // Raw UTF-8 from clients that send it: accept as is.
                out.push(c);
                continue;
            }
            out.push(c);
            continue;
        }
        let mut b64 = Vec::new();
        loop {
            match it.next() {
                Some('-') => break,
                Some(ch) => {
                    let v = B64
                        .iter()
                        .position(|b| *b as char == ch)
                        .ok_or("bad character in modified base64")?;
                    b64.push(v as u32);
                }
                None => return Err("unterminated modified base64"),
            }
        }
        if b64.is_empty() {
            out.push('&');
            continue;
        }
        let mut bytes = Vec::new();
        let mut acc = 0u32;
        let mut bits = 0;
        for v in b64 {
            acc = acc << 6 | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                bytes.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        if bytes.len() % 2 != 0 {
            return Err("odd number of octets in modified base64");
        }
        let units: Vec<u16> = bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        out.push_str(&String::from_utf16(&units).map_err(|_| "invalid UTF-16 in modified base64")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(encode("INBOX"), "INBOX");
        assert_eq!(encode("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(encode("~peter/mail/台北/日本語"), "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
        assert_eq!(encode("a&b"), "a&-b");
        assert_eq!(decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-").unwrap(), "~peter/mail/台北/日本語");
        assert_eq!(decode("a&-b").unwrap(), "a&b");
        assert!(decode("&Jjo").is_err());
        for s in ["Gelöschte Elemente", "😀 emoji", "x&y&z", "Ünïcödé/Sub"] {
            assert_eq!(decode(&encode(s)).unwrap(), s);
        }
    }
}
