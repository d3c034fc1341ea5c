//! MODSEQ as IMAP clients see it (RFC 7162).
//!
//! The views keep, per message and mailbox, this node's apply-order
//! position of the last change (`MessageRec::modseq`,
//! `MailboxRec::highestmodseq`). Positions are per node: a mirror applies
//! the same entries in another order, so position 500 on one node says
//! nothing about what the other node had applied at its position 500. A
//! client that fails over with a value from the other node must not be
//! told "nothing changed" by comparing numbers from two different scales.
//!
//! So the value on the wire carries the scale it belongs to: a 16-bit tag
//! derived from the origin this node appends as, above 47 bits of
//! position (`tag << 47 | position`, at most 2^63 - 1 as RFC 7162
//! requires). A value whose tag is not this node's, or whose position is
//! above the mailbox's highest one here (a value from before this node's
//! log went back), is not comparable: CHANGEDSINCE and QRESYNC then answer
//! with everything (a full resynchronisation, which RFC 7162 always
//! allows), SEARCH MODSEQ matches every message, and UNCHANGEDSINCE fails
//! for every message (the client is told MODIFIED and reads the current
//! values). Two nodes whose origins hash to the same tag (one chance in
//! 65,535 per pair) compare each other's values as if they were one
//! scale, which is the unsafe comparison this avoids.

/// Bits of the apply-order position in a wire MODSEQ (2^47 entries: four
/// centuries at 10,000 entries a second).
const POSITION_BITS: u32 = 47;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;

/// The MODSEQ scale of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// 1..=65535.
    tag: u64,
}

impl Scale {
    /// The scale of the node that appends as `origin`.
    pub fn of_origin(origin: u64) -> Scale {
        let h = blake3::hash(&origin.to_be_bytes());
        let tag = u16::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1]]).max(1);
        Scale { tag: u64::from(tag) }
    }

    /// The wire MODSEQ of a position.
    pub fn wire(self, position: u64) -> u64 {
        (self.tag << POSITION_BITS) | position.min(POSITION_MASK)
    }

    /// The position a client's value names, when it is comparable: of
    /// this scale and at most `highest` (the mailbox's highest position).
    pub fn position(self, wire: u64, highest: u64) -> Option<u64> {
        let p = wire & POSITION_MASK;
        (wire >> POSITION_BITS == self.tag && p <= highest).then_some(p)
    }

    /// The position after which changes are reported for a client's
    /// CHANGEDSINCE / QRESYNC / SEARCH MODSEQ value: 0 (everything) when
    /// the value is not comparable.
    pub fn since(self, wire: u64, highest: u64) -> u64 {
        self.position(wire, highest).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_carry_their_scale() {
        let a = Scale::of_origin(0xd10b_1551_8d68_c2c6);
        let b = Scale::of_origin(0xac18_9b62_e6cc_edb7);
        assert_ne!(a, b);
        for s in [a, b] {
            assert!(s.tag >= 1 && s.tag <= 0xffff);
            assert!(s.wire(POSITION_MASK) <= i64::MAX as u64);
            assert!(s.wire(1) < s.wire(2));
            assert_eq!(s.position(s.wire(7), 7), Some(7));
            // Above the highest position here: not comparable.
            assert_eq!(s.position(s.wire(8), 7), None);
            assert_eq!(s.since(s.wire(8), 7), 0);
            assert_eq!(s.since(0, 7), 0);
        }
        // The other node's value is never read on this scale.
        assert_eq!(a.position(b.wire(5), u64::MAX), None);
        assert_eq!(a.since(b.wire(5), u64::MAX), 0);
        assert_eq!(Scale::of_origin(1), Scale::of_origin(1));
    }
}
