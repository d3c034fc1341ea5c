//! Splitting IMAP client input into whole commands before parsing them.
//!
//! A command is one or more lines joined by literals (`{n}` / `{n+}` at the
//! end of a line announces `n` octets of literal data, then the command
//! continues). The framer hands out each complete command as one byte
//! string, tells the driver when a synchronising literal needs a `+`
//! continuation, and bounds everything: a line longer than `max_line` or a
//! literal larger than `max_literal` is refused at a known boundary so that
//! literal data is never read as a command.

/// What the framer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole command: its lines and literals, ending with CRLF.
    Command(Vec<u8>),
    /// The client announced a synchronising literal of this many octets and
    /// waits for `+ ...` before sending it.
    Continue { length: u32 },
    /// A line exceeded the limit; its bytes up to the next LF were dropped.
    /// `tag` is the tag of the command, if one could be read.
    LineTooLong { tag: Option<String> },
    /// A literal exceeded the limit. For a synchronising literal the client
    /// sends nothing more for this command; a non-synchronising one
    /// (`non_sync`) is skipped. Either way the command is gone.
    LiteralTooLarge { tag: Option<String>, length: u64, non_sync: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a line of the current command.
    Line,
    /// Reading `remaining` octets of literal data of the current command.
    Literal { remaining: u64 },
    /// Dropping the rest of an over-long line.
    SkipLine,
    /// Dropping a refused non-synchronising literal, then the rest of its line.
    SkipLiteral { remaining: u64 },
}

/// Room reserved for a read of a command line, and the most reserved for
/// a read of a literal (`Framer::read_buffer`).
const READ_MIN: usize = 4 * 1024;
const READ_MAX: usize = 64 * 1024;
/// Past this, the buffer left after a command is shrunk: one large APPEND
/// must not stay allocated for the rest of the session.
const KEEP_CAPACITY: usize = 256 * 1024;

/// The framer.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned for the current command.
    scanned: usize,
    /// Start of the current line in `buf`.
    line_start: usize,
    state: State,
    max_line: usize,
    max_literal: u64,
    /// Total size bound of one command (lines and literals).
    max_command: u64,
}

fn parse_literal_marker(line: &[u8]) -> Option<(u64, bool)> {
    // `line` excludes the line ending.
    let l = line.strip_suffix(b"}")?;
    let open = l.iter().rposition(|b| *b == b'{')?;
    let inner = &l[open + 1..];
    let (digits, plus) = match inner.strip_suffix(b"+") {
        Some(d) => (d, true),
        None => (inner, false),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((n, plus))
}

/// The tag at the start of a command, if it looks like one.
pub fn tag_of(bytes: &[u8]) -> Option<String> {
    let end = bytes
        .iter()
        .position(|b| *b == b' ' || *b == b'\r' || *b == b'\n')
        .unwrap_or(bytes.len());
    let t = &bytes[..end.min(64)];
    if t.is_empty() || !t.iter().all(|b| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(b)) {
        return None;
    }
    Some(String::from_utf8_lossy(t).into_owned())
}

impl Framer {
    pub fn new(max_line: usize, max_literal: u64) -> Framer {
        let mut f = Framer {
            buf: Vec::new(),
            scanned: 0,
            line_start: 0,
            state: State::Line,
            max_line: 0,
            max_literal: 0,
            max_command: 0,
        };
        f.set_limits(max_line, max_literal);
        f
    }

    /// Change the limits (at login: the limits before authentication are
    /// much smaller). They apply from the next line or literal announced.
    pub fn set_limits(&mut self, max_line: usize, max_literal: u64) {
        self.max_line = max_line.max(1024);
        self.max_literal = max_literal;
        self.max_command = max_literal.saturating_add(64 * 1024);
    }

    /// The largest literal accepted now.
    pub fn max_literal(&self) -> u64 {
        self.max_literal
    }

    /// Add input.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer the next read appends to, with room for it: 4 KiB for
    /// a command line, up to 64 KiB while a literal is coming. Received
    /// bytes may only be appended. Reading straight into it keeps an idle
    /// connection at one small buffer instead of a read buffer of its own
    /// beside this one.
    pub fn read_buffer(&mut self) -> &mut Vec<u8> {
        let want = match self.state {
            State::Literal { remaining } | State::SkipLiteral { remaining } => {
                usize::try_from(remaining).unwrap_or(usize::MAX).clamp(READ_MIN, READ_MAX)
            }
            State::Line | State::SkipLine => READ_MIN,
        };
        self.buf.reserve(want);
        &mut self.buf
    }

    /// Octets buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether a command is partly received (a literal or line in progress).
    pub fn in_command(&self) -> bool {
        !self.buf.is_empty() || !matches!(self.state, State::Line)
    }

    fn reset_command(&mut self, consumed: usize) {
        self.buf.drain(..consumed);
        self.scanned = 0;
        self.line_start = 0;
    }

    /// Everything received after the last command handed out (call it
    /// right after that command's frame): when the stream changes its
    /// encoding (COMPRESS), those bytes are already in the new one.
    pub fn take_unread(&mut self) -> Vec<u8> {
        self.scanned = 0;
        self.line_start = 0;
        self.state = State::Line;
        std::mem::take(&mut self.buf)
    }

    /// The next frame, or `None` when more input is needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match self.state {
                State::SkipLine => {
                    let pos = self.buf.iter().position(|b| *b == b'\n');
                    match pos {
                        Some(p) => {
                            self.buf.drain(..=p);
                            self.state = State::Line;
                            self.scanned = 0;
                            self.line_start = 0;
                        }
                        None => {
                            self.buf.clear();
                            return None;
                        }
                    }
                }
                State::SkipLiteral { remaining } => {
                    let n = (remaining as usize).min(self.buf.len());
                    self.buf.drain(..n);
                    let left = remaining - n as u64;
                    if left > 0 {
                        self.state = State::SkipLiteral { remaining: left };
                        return None;
                    }
                    self.state = State::SkipLine;
                }
                State::Literal { remaining } => {
                    let have = (self.buf.len() - self.scanned) as u64;
                    if have < remaining {
                        self.scanned = self.buf.len();
                        self.state = State::Literal {
                            remaining: remaining - have,
                        };
                        return None;
                    }
                    self.scanned += remaining as usize;
                    self.line_start = self.scanned;
                    self.state = State::Line;
                }
                State::Line => {
                    let from = self.scanned;
                    let Some(rel) = self.buf[from..].iter().position(|b| *b == b'\n') else {
                        self.scanned = self.buf.len();
                        if self.buf.len() - self.line_start > self.max_line {
                            let tag = tag_of(&self.buf);
                            self.buf.clear();
                            self.scanned = 0;
                            self.line_start = 0;
                            self.state = State::SkipLine;
                            return Some(Frame::LineTooLong { tag });
                        }
                        return None;
                    };
                    let lf = from + rel;
                    if lf - self.line_start > self.max_line {
                        let tag = tag_of(&self.buf);
                        self.reset_command(lf + 1);
                        return Some(Frame::LineTooLong { tag });
                    }
                    let line_end = if lf > self.line_start && self.buf[lf - 1] == b'\r' {
                        lf - 1
                    } else {
                        lf
                    };
                    let line = &self.buf[self.line_start..line_end];
                    if let Some((n, plus)) = parse_literal_marker(line) {
                        let total = (lf + 1) as u64 + n;
                        if n > self.max_literal || total > self.max_command {
                            let tag = tag_of(&self.buf);
                            self.reset_command(lf + 1);
                            if plus {
                                self.state = State::SkipLiteral { remaining: n };
                            }
                            return Some(Frame::LiteralTooLarge {
                                tag,
                                length: n,
                                non_sync: plus,
                            });
                        }
                        self.scanned = lf + 1;
                        self.line_start = self.scanned;
                        self.state = State::Literal { remaining: n };
                        if !plus {
                            return Some(Frame::Continue { length: n as u32 });
                        }
                        continue;
                    }
                    // End of the command: the whole buffer when nothing
                    // follows it (no copy of a large literal, and its
                    // memory goes with the command), else a copy.
                    let mut cmd: Vec<u8> = if lf + 1 == self.buf.len() {
                        std::mem::take(&mut self.buf)
                    } else {
                        let cmd = self.buf.drain(..=lf).collect();
                        if self.buf.capacity() > KEEP_CAPACITY {
                            self.buf.shrink_to(READ_MIN.max(self.buf.len()));
                        }
                        cmd
                    };
                    if !cmd.ends_with(b"\r\n") {
                        // Bare LF: repair so the parser sees CRLF.
                        cmd.pop();
                        cmd.extend_from_slice(b"\r\n");
                    }
                    self.scanned = 0;
                    self.line_start = 0;
                    return Some(Frame::Command(cmd));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &mut Framer) -> Vec<Frame> {
        std::iter::from_fn(|| f.next_frame()).collect()
    }

    #[test]
    fn a_large_literal_does_not_stay_allocated() {
        let big = 1 << 20;
        let mut f = Framer::new(1024, 4 << 20);
        // Reads go straight into the framer's buffer, sized by what comes.
        let b = f.read_buffer();
        assert!(b.capacity() - b.len() >= READ_MIN && b.capacity() < READ_MAX);
        b.extend_from_slice(format!("a APPEND INBOX {{{big}+}}\r\n").as_bytes());
        assert!(f.next_frame().is_none());
        let b = f.read_buffer();
        assert!(b.capacity() - b.len() >= READ_MAX, "room for a literal");
        b.resize(b.len() + big, b'x');
        b.extend_from_slice(b"\r\n");
        // Alone in the buffer: the command takes the allocation with it.
        match f.next_frame() {
            Some(Frame::Command(c)) => assert_eq!(c.len(), "a APPEND INBOX {1048576+}\r\n".len() + big + 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.buf.capacity(), 0);
        // With a pipelined command behind it, the rest is kept in a
        // buffer of its own size.
        let mut wire = format!("b APPEND INBOX {{{big}+}}\r\n").into_bytes();
        wire.resize(wire.len() + big, b'y');
        wire.extend_from_slice(b"\r\nc NOOP\r\n");
        f.feed(&wire);
        assert!(matches!(f.next_frame(), Some(Frame::Command(_))));
        assert!(f.buf.capacity() <= KEEP_CAPACITY, "{}", f.buf.capacity());
        match f.next_frame() {
            Some(Frame::Command(c)) => assert_eq!(c, b"c NOOP\r\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unread_bytes_after_a_command_are_handed_back() {
        let mut f = Framer::new(1024, 1024);
        f.feed(b"a COMPRESS DEFLATE\r\n\x01\x02\xff");
        assert_eq!(f.next_frame(), Some(Frame::Command(b"a COMPRESS DEFLATE\r\n".to_vec())));
        assert_eq!(f.take_unread(), b"\x01\x02\xff");
        assert_eq!(f.buffered(), 0);
        assert_eq!(f.next_frame(), None);
    }

    #[test]
    fn plain_commands_split() {
        let mut f = Framer::new(1024, 1000);
        f.feed(b"a1 NOOP\r\na2 CAPABILITY\r\na3 LOG");
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::Command(b"a1 NOOP\r\n".to_vec()),
                Frame::Command(b"a2 CAPABILITY\r\n".to_vec())
            ]
        );
        f.feed(b"OUT\n");
        assert_eq!(frames(&mut f), vec![Frame::Command(b"a3 LOGOUT\r\n".to_vec())]);
    }

    #[test]
    fn sync_literal_asks_for_continuation_and_keeps_data_opaque() {
        let mut f = Framer::new(1024, 1000);
        f.feed(b"a APPEND INBOX {12}\r\n");
        assert_eq!(frames(&mut f), vec![Frame::Continue { length: 12 }]);
        f.feed(b"a2 NOOP\r\n"); // literal data that looks like a command
        assert_eq!(frames(&mut f), vec![]);
        f.feed(b"xyz\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::Command(b"a APPEND INBOX {12}\r\na2 NOOP\r\nxyz\r\n".to_vec())]
        );
    }

    #[test]
    fn literal_plus_needs_no_continuation() {
        let mut f = Framer::new(1024, 1000);
        f.feed(b"a LOGIN {5+}\r\nalice {3+}\r\npw!\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::Command(b"a LOGIN {5+}\r\nalice {3+}\r\npw!\r\n".to_vec())]
        );
    }

    #[test]
    fn oversized_literal_is_refused_and_skipped() {
        let mut f = Framer::new(1024, 10);
        f.feed(b"t1 APPEND INBOX {11+}\r\n0123456789A\r\nt2 NOOP\r\n");
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::LiteralTooLarge {
                    tag: Some("t1".into()),
                    length: 11,
                    non_sync: true
                },
                Frame::Command(b"t2 NOOP\r\n".to_vec())
            ]
        );
        f.feed(b"t3 APPEND INBOX {50}\r\nt4 NOOP\r\n");
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::LiteralTooLarge {
                    tag: Some("t3".into()),
                    length: 50,
                    non_sync: false
                },
                Frame::Command(b"t4 NOOP\r\n".to_vec())
            ]
        );
    }

    #[test]
    fn limits_change_at_login() {
        let mut f = Framer::new(1024, 4096);
        f.feed(b"a LOGIN {4097}\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::LiteralTooLarge {
                tag: Some("a".into()),
                length: 4097,
                non_sync: false
            }]
        );
        f.set_limits(1024, 1 << 20);
        assert_eq!(f.max_literal(), 1 << 20);
        f.feed(b"b APPEND INBOX {4097}\r\n");
        assert_eq!(frames(&mut f), vec![Frame::Continue { length: 4097 }]);
    }

    #[test]
    fn long_line_is_dropped_to_its_end() {
        let mut f = Framer::new(1024, 10);
        let mut long = b"x1 SEARCH ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 3000));
        f.feed(&long);
        assert_eq!(frames(&mut f), vec![Frame::LineTooLong { tag: Some("x1".into()) }]);
        f.feed(b"aaaa\r\nx2 NOOP\r\n");
        assert_eq!(frames(&mut f), vec![Frame::Command(b"x2 NOOP\r\n".to_vec())]);
    }

    #[test]
    fn random_input_never_panics_and_stays_bounded() {
        let mut rng = crate::testrng::XorShift(0x1234_5678_9abc_def1);
        let mut f = Framer::new(1024, 4096);
        for _ in 0..20_000 {
            let x = rng.next_u64();
            let n = (x % 64) as usize;
            let chunk: Vec<u8> = (0..n)
                .map(|i| {
                    let r = (x >> (i % 56)) as u8;
                    match r % 11 {
                        0 => b'\n',
                        1 => b'{',
                        2 => b'}',
                        3 => b'+',
                        4 => b'\r',
                        5..=7 => b'0' + r % 10,
                        _ => r,
                    }
                })
                .collect();
            f.feed(&chunk);
            while f.next_frame().is_some() {}
            assert!(f.buffered() <= 4096 + 64 * 1024 + 64 + 1024, "buffer grew to {}", f.buffered());
        }
    }
}
