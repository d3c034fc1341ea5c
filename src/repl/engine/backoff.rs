//! When an outgoing link tries again after it failed: exponential backoff
//! with jitter, reset by a link that lasted, or by the peer coming back
//! (it authenticated an incoming link here), with no clock of its own.

use std::time::Duration;

/// A link that stayed up this long before it failed starts the backoff
/// over: it was not failing at once.
pub const LASTED: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    delay: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, delay: min }
    }

    /// A link attempt that ran for `lasted` ended: how long to wait before
    /// the next, given a `jitter` in [0, 1) (the driver's random draw). The
    /// wait is the current delay times 0.75 to 1.25; the delay doubles, up
    /// to the maximum.
    pub fn failed(&mut self, lasted: Duration, jitter: f64) -> Duration {
        if lasted > LASTED {
            self.delay = self.min;
        }
        let wait = self.delay.mul_f64(jitter.clamp(0.0, 1.0) * 0.5 + 0.75);
        self.delay = (self.delay * 2).min(self.max);
        wait
    }

    /// The peer is back: the next failure waits the minimum again.
    pub fn peer_back(&mut self) {
        self.delay = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_maximum_with_jitter_and_resets() {
        let ms = Duration::from_millis;
        let r = |d: Duration| (d.as_secs_f64() * 1000.0).round() as u64;
        let mut b = Backoff::new(ms(100), ms(1000));
        let quick = ms(5);
        assert_eq!(r(b.failed(quick, 0.5)), 100);
        assert_eq!(r(b.failed(quick, 0.5)), 200);
        assert_eq!(r(b.failed(quick, 0.0)), 300); // 400 × 0.75
        assert_eq!(r(b.failed(quick, 1.0)), 1000); // 800 × 1.25
        assert_eq!(r(b.failed(quick, 0.5)), 1000);
        assert_eq!(r(b.failed(quick, 0.5)), 1000, "capped");
        // A link that lasted starts over.
        assert_eq!(r(b.failed(Duration::from_secs(11), 0.5)), 100);
        b.failed(quick, 0.5);
        b.peer_back();
        assert_eq!(r(b.failed(quick, 0.5)), 100);
        // A draw out of range cannot stretch the wait past 1.25 times.
        assert_eq!(r(Backoff::new(ms(100), ms(100)).failed(quick, 7.0)), 125);
    }
}
