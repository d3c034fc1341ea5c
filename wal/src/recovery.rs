//! Checks at open: what a crash may leave (a torn tail, which RocksDB drops
//! and we report) against corruption in the middle (refused with its place).

use crate::error::{Place, WalError};
use crate::record::GENESIS;
use crate::seq::{Origin, VersionVector};
use crate::store::{
    iter_origins, last_order_key, meta_bases, meta_get, meta_heads, read_entry, read_range, RecoveryReport, Shared, META_DIRTY_KEY,
    META_FORMAT_KEY, META_ORDER_NEXT, STORE_FORMAT, STORE_FORMAT_V1,
};

pub(crate) fn recover(shared: &Shared) -> Result<RecoveryReport, WalError> {
    let mut upgraded_from = None;
    if let Some(v) = meta_get(shared, META_FORMAT_KEY)? {
        let got = <[u8; 4]>::try_from(v.as_slice())
            .map(u32::from_be_bytes)
            .map_err(|_| WalError::CorruptMeta {
                key: "format".into(),
                reason: "not 4 bytes".into(),
            })?;
        if got == STORE_FORMAT_V1 {
            // Format 1 has no base records; read as format 2 with every
            // log starting at seq 1. Open then records format 2.
            upgraded_from = Some(got);
        } else if got != STORE_FORMAT {
            return Err(WalError::CorruptMeta {
                key: "format".into(),
                reason: format!("store format {got}, this build reads {STORE_FORMAT}"),
            });
        }
    }
    let unclean_shutdown = meta_get(shared, META_DIRTY_KEY)?.is_some();
    let heads = meta_heads(shared)?;
    let bases = if upgraded_from.is_some() {
        Default::default()
    } else {
        meta_bases(shared)?
    };
    let stored = iter_origins(shared)?;
    // Every origin in the log must have a head and end exactly at it: the
    // head is written in the same batch as the entry.
    for (origin, first, last) in &stored {
        let base = bases.get(origin).copied().unwrap_or_default();
        if *first != base.seq + 1 {
            return Err(WalError::Corrupt {
                place: Place {
                    origin: *origin,
                    seq: base.seq + 1,
                },
                reason: format!(
                    "the log of this origin starts at seq {first}, its base record says after seq {}",
                    base.seq
                ),
            });
        }
        match heads.get(origin) {
            None => {
                return Err(WalError::Corrupt {
                    place: Place {
                        origin: *origin,
                        seq: *last,
                    },
                    reason: "entries stored for an origin with no head record".into(),
                })
            }
            Some((seq, _)) if seq <= &base.seq => {
                return Err(WalError::Corrupt {
                    place: Place {
                        origin: *origin,
                        seq: *seq,
                    },
                    reason: format!("head at seq {seq} is not past the base at seq {}", base.seq),
                })
            }
            Some((seq, _)) if seq != last => {
                return Err(WalError::Corrupt {
                    place: Place {
                        origin: *origin,
                        seq: *seq.max(last),
                    },
                    reason: format!("head record says seq {seq} but the log ends at seq {last}"),
                })
            }
            Some(_) => {}
        }
    }
    if let Some(o) = bases.keys().find(|o| !heads.contains_key(o)) {
        return Err(WalError::Corrupt {
            place: Place { origin: *o, seq: 0 },
            reason: "base record for an origin with no head record".into(),
        });
    }
    let mut verified = 0;
    for (origin, (seq, hash)) in &heads {
        let base = bases.get(origin).copied().unwrap_or_default();
        if base.seq > 0 && base.seq == *seq && !stored.iter().any(|(o, _, _)| o == origin) {
            // A base taken from a peer with nothing after it yet.
            if base.hash != *hash {
                return Err(WalError::Corrupt {
                    place: Place {
                        origin: *origin,
                        seq: *seq,
                    },
                    reason: "head record hash differs from the base record".into(),
                });
            }
            continue;
        }
        if !stored.iter().any(|(o, _, _)| o == origin) {
            return Err(WalError::Corrupt {
                place: Place {
                    origin: *origin,
                    seq: *seq,
                },
                reason: "head record names entries that are not stored".into(),
            });
        }
        let from = (seq.saturating_sub(shared.opts.verify_tail.max(1)) + 1).max(base.seq + 1);
        verified += verify_from(shared, *origin, from, *seq, (from == base.seq + 1).then_some(base.hash))?;
        let head = read_entry(shared, *origin, *seq)?.ok_or_else(|| WalError::Corrupt {
            place: Place {
                origin: *origin,
                seq: *seq,
            },
            reason: "head entry missing".into(),
        })?;
        if head.hash != *hash {
            return Err(WalError::Corrupt {
                place: Place {
                    origin: *origin,
                    seq: *seq,
                },
                reason: "head record hash differs from the stored entry".into(),
            });
        }
    }
    let last_order = last_order_key(shared)?;
    let order_next = match meta_get(shared, META_ORDER_NEXT)? {
        Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| WalError::CorruptMeta {
            key: "order_next".into(),
            reason: "not 8 bytes".into(),
        })?),
        None => 1,
    };
    // The last position may have gone only as a stale one (its entry was
    // dropped by a base taken from a peer, then its position by a prune).
    let stale_tail = bases.values().any(|b| b.adopted > 0);
    if order_next != last_order + 1 && !(stale_tail && last_order < order_next) {
        return Err(WalError::CorruptMeta {
            key: "order_next".into(),
            reason: format!("says {order_next} but the apply order ends at {last_order}"),
        });
    }
    // Every seq up to a head had a position here, but those taken with a
    // peer's base.
    let positions = order_next - 1;
    let total: u64 = heads.values().map(|(s, _)| *s).sum();
    let adopted: u64 = bases.values().map(|b| b.adopted).sum();
    if positions + adopted != total {
        return Err(WalError::CorruptMeta {
            key: "order".into(),
            reason: format!("apply order holds {positions} positions for {total} entries ({adopted} taken with a peer's base)"),
        });
    }
    Ok(RecoveryReport {
        unclean_shutdown,
        heads: VersionVector(heads.iter().map(|(o, (s, _))| (*o, *s)).collect()),
        verified,
        order_len: positions,
        bases,
        upgraded_from,
    })
}

/// Verify `origin`'s chain over `from..=to`, reading in chunks.
pub(crate) fn verify_range(shared: &Shared, origin: Origin, from: u64, to: u64) -> Result<u64, WalError> {
    let base = shared.base(origin);
    verify_from(shared, origin, from, to, (from == base.seq + 1).then_some(base.hash))
}

/// Verify `origin`'s chain over `from..=to`; `prev` is the hash entry
/// `from` must follow when known (the genesis or base hash), else it is
/// read from entry `from - 1`.
fn verify_from(shared: &Shared, origin: Origin, from: u64, to: u64, prev: Option<crate::record::Hash>) -> Result<u64, WalError> {
    if from > to {
        return Ok(0);
    }
    let mut prev = if let Some(p) = prev {
        p
    } else if from == 1 {
        GENESIS
    } else {
        read_entry(shared, origin, from - 1)?
            .ok_or_else(|| WalError::Corrupt {
                place: Place { origin, seq: from - 1 },
                reason: "entry missing".into(),
            })?
            .hash
    };
    let mut next = from;
    let mut n = 0;
    while next <= to {
        let chunk = read_range(shared, origin, next, to, 1024)?;
        if chunk.is_empty() {
            return Err(WalError::Corrupt {
                place: Place { origin, seq: next },
                reason: "entry missing".into(),
            });
        }
        for e in chunk {
            if !e.follows(&prev) {
                return Err(WalError::Corrupt {
                    place: Place { origin, seq: e.seq },
                    reason: "hash chain broken: entry does not match its hash or its predecessor".into(),
                });
            }
            prev = e.hash;
            next = e.seq + 1;
            n += 1;
        }
    }
    Ok(n)
}
