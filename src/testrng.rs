//! A small deterministic generator (xorshift64) for the seeded fuzz and
//! simulation loops of the unit tests.

pub(crate) struct XorShift(pub u64);

impl XorShift {
    /// The next value (never 0 when seeded with a non-zero state).
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}
