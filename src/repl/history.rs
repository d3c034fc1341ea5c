//! Whether two nodes hold the same history: what a receiver tells a sender
//! it holds (seqs and the chain hash at each), and the sender's check of it.
//!
//! A receiver tells the truth about other origins; for its own origin it
//! says only what a peer was last seen to hold of it with the same hashes
//! ([`wal::Wal::confirmed`]), so that a node whose own log went backwards
//! (restored from an older copy) is sent its missing tail, and, if it
//! appended again meanwhile, the peer's entries for those seqs, which it
//! then finds to be a fork (see [`super::apply`]).
//!
//! A sender refuses a link whose receiver claims more of the sender's own
//! origin than the sender holds (the sender's log went backwards), or a
//! hash other than its own at a held seq (a fork). Neither link state is
//! ever used to confirm `ack = "peer"`.

use wal::{Origin, Wal, WalError};

/// What a receiver holds: `{origin: seq}` and the chain hash at each seq.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub vector: super::engine::Vector,
    pub hashes: Vec<(u64, [u8; 32])>,
}

/// What the receiver of a link advertises.
pub fn advertised(wal: &Wal) -> Result<Held, WalError> {
    let own = wal.local_origin();
    let confirmed = wal.confirmed()?;
    let mut held = Held::default();
    for (o, s) in wal.heads().0 {
        let s = if o == own { s.min(confirmed) } else { s };
        held.vector.raise(o.0, s);
        if s > 0 {
            let base = wal.base(o);
            let hash = if s == base.seq {
                // A base taken from a peer: the head has no entry here.
                base.hash
            } else {
                wal.entry(o, s)?
                    .ok_or_else(|| WalError::Corrupt {
                        place: wal::Place { origin: o, seq: s },
                        reason: "entry missing below the head".into(),
                    })?
                    .hash
            };
            held.hashes.push((o.0, hash));
        }
    }
    Ok(held)
}

/// Why a sender refuses what its receiver holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Divergence {
    /// The peer holds more of this node's own origin than this node: this
    /// node's log went backwards.
    #[error("the peer holds this node's origin {origin} up to seq {theirs}, this node only up to {ours}: this node's log went backwards")]
    Rollback { origin: Origin, ours: u64, theirs: u64 },
    /// The peer holds another entry than this node at a seq both hold.
    #[error("history fork at origin {origin} seq {seq}: the peer holds another entry there")]
    Fork { origin: Origin, seq: u64 },
}

/// Check a receiver's vector and hashes against this node's log.
pub fn check(wal: &Wal, held: &Held) -> Result<Result<(), Divergence>, WalError> {
    let own = wal.local_origin();
    let heads = wal.heads();
    for (o, theirs) in held.vector.iter() {
        let origin = Origin(o);
        let ours = heads.get(origin);
        if origin == own && theirs > ours {
            return Ok(Err(Divergence::Rollback { origin, ours, theirs }));
        }
        if theirs == 0 || theirs > ours {
            continue;
        }
        let Some((_, hash)) = held.hashes.iter().find(|(h, _)| *h == o) else {
            continue;
        };
        let base = wal.base(origin);
        if theirs < base.seq {
            // Pruned here: nothing to compare (see [`behind_pruned`]).
            continue;
        }
        let held = if theirs == base.seq {
            Some(base.hash)
        } else {
            wal.entry(origin, theirs)?.map(|e| e.hash)
        };
        if held != Some(*hash) {
            return Ok(Err(Divergence::Fork { origin, seq: theirs }));
        }
    }
    Ok(Ok(()))
}

/// A receiver that holds less of an origin than this node pruned: the
/// entries it lacks are gone here, so it cannot be caught up from this
/// log and must be joined by trees (`replication.md` section 5.8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the peer holds origin {origin} up to seq {theirs}, but this node's log of it is pruned up to seq {base}: \
     it cannot catch up from this log; join it by trees (`tandem resync --from-peer` on the peer)"
)]
pub struct BehindPruned {
    pub origin: Origin,
    pub theirs: u64,
    pub base: u64,
}

/// The first origin the receiver holds less of than this node pruned.
pub fn behind_pruned(wal: &Wal, vector: &super::engine::Vector) -> Option<BehindPruned> {
    wal.bases().into_iter().find_map(|(origin, b)| {
        let theirs = vector.get(origin.0);
        (theirs < b.seq).then_some(BehindPruned {
            origin,
            theirs,
            base: b.seq,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wal::WalOptions;

    fn open(dir: &std::path::Path, node: &str) -> Wal {
        Wal::open(dir, WalOptions::new(Origin::from_node_id(node))).unwrap()
    }

    #[test]
    fn a_vector_above_the_own_head_or_with_another_hash_is_refused() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(da.path(), "a"), open(db.path(), "b"));
        for i in 0..3u8 {
            a.append(vec![i]).unwrap();
        }
        let oa = a.local_origin();
        let entries = a.read_range(oa, 1, 3, 10).unwrap();
        b.transact(move |t| {
            for e in &entries {
                t.append_remote(e)?;
            }
            Ok::<_, WalError>(())
        })
        .unwrap();
        // B advertises what it holds of A; A has confirmed nothing of it yet.
        let held = advertised(&b).unwrap();
        assert_eq!(held.vector, super::super::engine::Vector::from([(oa.0, 3)]));
        assert_eq!(check(&a, &held).unwrap(), Ok(()));
        // A's own origin as B advertises it to A: capped by A's confirmed mark.
        assert_eq!(advertised(&a).unwrap().vector, super::super::engine::Vector::from([(oa.0, 0)]));
        a.confirm(2).unwrap();
        let own = advertised(&a).unwrap();
        assert_eq!(own.vector, super::super::engine::Vector::from([(oa.0, 2)]));
        assert_eq!(own.hashes, vec![(oa.0, a.entry(oa, 2).unwrap().unwrap().hash)]);
        // More of A's origin than A holds: A's log went backwards.
        let more = Held {
            vector: super::super::engine::Vector::from([(oa.0, 5)]),
            hashes: vec![(oa.0, [7; 32])],
        };
        assert_eq!(
            check(&a, &more).unwrap(),
            Err(Divergence::Rollback {
                origin: oa,
                ours: 3,
                theirs: 5
            })
        );
        // Another hash at a seq A holds: a fork, for any origin.
        let other = Held {
            vector: super::super::engine::Vector::from([(oa.0, 2)]),
            hashes: vec![(oa.0, [7; 32])],
        };
        assert_eq!(check(&a, &other).unwrap(), Err(Divergence::Fork { origin: oa, seq: 2 }));
        assert_eq!(check(&b, &other).unwrap(), Err(Divergence::Fork { origin: oa, seq: 2 }));
    }
}
