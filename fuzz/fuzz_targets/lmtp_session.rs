//! The LMTP session core fed arbitrary client input in arbitrary chunks,
//! with the driver's answers taken from the input too. It must never panic,
//! must keep its buffer bounded, and every reply must be a well-formed
//! SMTP reply line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tandem_fuzz::proto::lmtp::{Action, DeliveryOutcome, Limits, RcptOutcome, Reply, Session};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else { return };
    let limits = Limits {
        max_line: 512 + (ctl as usize & 0x0f) * 64,
        max_message: 4096,
        max_recipients: 1 + (ctl as usize >> 4),
        max_errors: 5,
    };
    let mut s = Session::new("fuzz.example", limits.clone());
    // Chunk sizes come from the input, so splits land everywhere.
    let mut rest = input;
    let mut step = 0usize;
    while !rest.is_empty() && !s.is_closed() {
        let n = 1 + (rest[0] as usize % 97);
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        s.feed(chunk);
        while let Some(action) = s.poll() {
            step += 1;
            match action {
                Action::Reply(bytes) => check_replies(&bytes),
                Action::CheckRecipient(_) => s.rcpt_result(if step % 3 == 0 {
                    RcptOutcome::Reject(Reply::new(550, "5.1.1", "unknown user"))
                } else {
                    RcptOutcome::Accept
                }),
                Action::Deliver(d) => {
                    assert!(d.body.len() as u64 <= limits.max_message, "a delivery larger than the limit");
                    let out = d
                        .recipients
                        .iter()
                        .enumerate()
                        .map(|(i, _)| {
                            if (i + step) % 4 == 0 {
                                DeliveryOutcome::Temporary("try later".into())
                            } else {
                                DeliveryOutcome::Ok
                            }
                        })
                        .collect();
                    s.delivery_result(out);
                }
                Action::Close => break,
            }
        }
        // Input beyond the limits is cut off rather than buffered.
        assert!(
            s.buffered() <= limits.max_message as usize + limits.max_line + 128 * 1024,
            "buffer grew to {}",
            s.buffered()
        );
    }
    s.input_closed();
    while let Some(a) = s.poll() {
        if let Action::Reply(bytes) = a {
            check_replies(&bytes)
        }
    }
});

fn check_replies(bytes: &[u8]) {
    assert!(bytes.ends_with(b"\r\n"), "reply does not end in CRLF");
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        assert!(
            line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit),
            "malformed reply line {line:?}"
        );
        assert!(
            line[3] == b' ' || line[3] == b'-' || line[3] == b'\r',
            "malformed reply line {line:?}"
        );
    }
}
