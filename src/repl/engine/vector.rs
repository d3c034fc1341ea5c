//! The one version vector of the link: for each origin, the highest seq
//! held (or acknowledged, or sent). Frames carry it as they always did, a
//! varint count and (origin, seq) pairs in origin order: postcard encodes
//! a map and a list of pairs alike. The log's own version vector type
//! converts into it at the driver (`super::super::vector_of`). The fuzz
//! crate compiles this file on its own beside `frame.rs`: serde and std
//! only.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Vector(pub BTreeMap<u64, u64>);

impl Vector {
    /// The seq held of `origin` (0: none).
    pub fn get(&self, origin: u64) -> u64 {
        self.0.get(&origin).copied().unwrap_or(0)
    }

    /// Raise `origin` to `seq` if that is higher.
    pub fn raise(&mut self, origin: u64, seq: u64) {
        let s = self.0.entry(origin).or_insert(0);
        *s = (*s).max(seq);
    }

    /// Raise every origin to `other`'s seq where that is higher.
    pub fn merge(&mut self, other: &Vector) {
        for (o, s) in other.iter() {
            self.raise(o, s);
        }
    }

    /// Whether this vector holds at least all of `other`.
    pub fn covers(&self, other: &Vector) -> bool {
        other.iter().all(|(o, s)| self.get(o) >= s)
    }

    /// Entries of `heads` beyond this vector.
    pub fn behind(&self, heads: &Vector) -> u64 {
        heads.iter().map(|(o, s)| s.saturating_sub(self.get(o))).sum()
    }

    /// (origin, seq) pairs in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(o, s)| (*o, *s))
    }
}

impl FromIterator<(u64, u64)> for Vector {
    /// Pairs naming one origin twice keep the higher seq.
    fn from_iter<I: IntoIterator<Item = (u64, u64)>>(pairs: I) -> Vector {
        let mut v = Vector::default();
        for (o, s) in pairs {
            v.raise(o, s);
        }
        v
    }
}

impl<const N: usize> From<[(u64, u64); N]> for Vector {
    fn from(pairs: [(u64, u64); N]) -> Vector {
        pairs.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_the_pairs_frames_always_carried() {
        let v = Vector::from([(0xd10b15518d68c2c6, 14), (0xac189b62e6ccedb7, 3)]);
        let pairs: Vec<(u64, u64)> = vec![(0xac189b62e6ccedb7, 3), (0xd10b15518d68c2c6, 14)];
        assert_eq!(postcard::to_allocvec(&v).unwrap(), postcard::to_allocvec(&pairs).unwrap());
        assert_eq!(postcard::from_bytes::<Vector>(&postcard::to_allocvec(&pairs).unwrap()).unwrap(), v);
    }

    #[test]
    fn covers_merges_and_counts() {
        let mut a = Vector::from([(1, 5), (2, 3)]);
        let b = Vector::from([(1, 4), (3, 2)]);
        assert!(!a.covers(&b) && a.covers(&Vector::from([(1, 5), (2, 0)])));
        assert_eq!(a.behind(&b), 2);
        a.merge(&b);
        assert_eq!(a, Vector::from([(1, 5), (2, 3), (3, 2)]));
        assert!(a.covers(&b) && a.covers(&Vector::default()));
        assert_eq!(Vector::from([(1, 2), (1, 7), (1, 3)]).get(1), 7);
    }
}
