//! Roles and epochs: which node is the master (the UID authority, the
//! runner of singleton jobs).
//!
//! The role is not configuration but history: `tandem promote` appends
//! [`Event::RoleChanged`] naming this node master under an epoch one above
//! the highest the node has seen, and every node's views keep the highest
//! (epoch, node) they applied. So a node is master exactly when the highest
//! role event it holds names it; an old master that receives a higher
//! epoch is a slave from that commit on, on its own, and two nodes that
//! hold the same events agree on the master. The configured `mirror.mode`
//! only seeds epoch 0, before any node was promoted.

use crate::config::Role;
use crate::event::Event;
use crate::mutate::{self, Cfs, MutationError};
use crate::views::{TxnViews, ViewError, ViewRead, ViewWrite};
use serde::{Deserialize, Serialize};
use wal::Txn;

/// Views key of the highest role event applied (see `src/views/mod.rs`).
pub const KEY: &[u8] = b"E";

/// The highest role event a node applied: `node` is master from `epoch` on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Master {
    pub epoch: u64,
    pub node: String,
}

/// A node's role as its views say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleState {
    pub master: bool,
    /// 0 until some node was promoted.
    pub epoch: u64,
    /// The master's node id, when a role event named one.
    pub master_node: Option<String>,
}

impl RoleState {
    pub fn name(&self) -> &'static str {
        if self.master {
            "master"
        } else {
            "slave"
        }
    }
}

/// The highest role event in the views, if any.
pub fn highest(v: &impl ViewRead) -> Result<Option<Master>, ViewError> {
    match v.vget(KEY)? {
        None => Ok(None),
        Some(b) => postcard::from_bytes(&b).map(Some).map_err(|e| ViewError::Corrupt {
            key: "E (role)".into(),
            reason: e.to_string(),
        }),
    }
}

/// Apply a role event: kept if above the highest so far. Equal epochs
/// (two nodes promoted during a cut) are ordered by node id, so every
/// node that holds both events picks the same master.
pub fn apply(v: &mut impl ViewWrite, node: &str, epoch: u64) -> Result<(), ViewError> {
    let new = Master {
        epoch,
        node: node.to_string(),
    };
    if highest(&*v)?.is_none_or(|old| new > old) {
        v.put(KEY, &postcard::to_allocvec(&new).expect("serialises"));
    }
    Ok(())
}

/// This node's role, from the views; `seed` (the configured `mirror.mode`)
/// decides only while no role event exists.
pub fn current(v: &impl ViewRead, node_id: &str, seed: Role) -> Result<RoleState, ViewError> {
    Ok(match highest(v)? {
        Some(m) => RoleState {
            master: m.node == node_id,
            epoch: m.epoch,
            master_node: Some(m.node),
        },
        None => RoleState {
            master: seed == Role::Master,
            epoch: 0,
            master_node: None,
        },
    })
}

/// Whether this node is the master (UID authority, singleton jobs) now.
pub fn is_master(v: &impl ViewRead, node_id: &str, seed: Role) -> Result<bool, ViewError> {
    Ok(current(v, node_id, seed)?.master)
}

/// What `promote` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    pub epoch: u64,
    /// False when this node already was master under an epoch of its own.
    pub changed: bool,
}

/// Make this node master under an epoch above every epoch it has seen (a
/// logged event, replicated like any other). A node already master by a
/// role event of its own stays as it is.
pub fn promote(txn: &mut Txn<'_>, cfs: Cfs, node_id: &str) -> Result<Promoted, MutationError> {
    let v = TxnViews { txn, cf: cfs.views };
    let top = highest(&v)?;
    if let Some(m) = &top {
        if m.node == node_id {
            return Ok(Promoted {
                epoch: m.epoch,
                changed: false,
            });
        }
    }
    let epoch = top.map_or(0, |m| m.epoch) + 1;
    mutate::emit(
        txn,
        cfs,
        Event::RoleChanged {
            node: node_id.to_string(),
            epoch,
        },
    )?;
    Ok(Promoted { epoch, changed: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{wal_options, Store};

    #[test]
    fn the_highest_epoch_names_the_master_and_config_only_seeds_epoch_0() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Store::open(da.path(), "a", wal_options("a")).unwrap();
        let b = Store::open(db.path(), "b", wal_options("b")).unwrap();
        assert!(is_master(&a.views(), "a", Role::Master).unwrap());
        assert!(!is_master(&b.views(), "b", Role::Slave).unwrap());
        // B is promoted: epoch 1.
        let p = b.run_blocking(|t, c| promote(t, c, "b")).unwrap();
        assert_eq!(p, Promoted { epoch: 1, changed: true });
        assert!(is_master(&b.views(), "b", Role::Slave).unwrap());
        // A applies B's event and is a slave, whatever its config says.
        let entries: Vec<_> = b.wal().read_order(1, 10).unwrap().into_iter().map(|(_, e)| e).collect();
        a.run_blocking(move |t, c| {
            for e in &entries {
                let at = t.append_remote(e)?.expect("new");
                crate::views::apply(&mut TxnViews { txn: t, cf: c.views }, &at, &Event::decode(&e.payload).unwrap())?;
            }
            Ok(())
        })
        .unwrap();
        let ra = current(&a.views(), "a", Role::Master).unwrap();
        assert_eq!((ra.master, ra.epoch, ra.master_node.as_deref()), (false, 1, Some("b")));
        // Promoting B again changes nothing; promoting A takes epoch 2.
        assert!(!b.run_blocking(|t, c| promote(t, c, "b")).unwrap().changed);
        assert_eq!(a.run_blocking(|t, c| promote(t, c, "a")).unwrap().epoch, 2);
        assert!(is_master(&a.views(), "a", Role::Slave).unwrap());
        // An older event arriving late does not win.
        a.run_blocking(|t, c| {
            apply(&mut TxnViews { txn: t, cf: c.views }, "b", 1)?;
            Ok(())
        })
        .unwrap();
        assert!(is_master(&a.views(), "a", Role::Slave).unwrap());
    }
}
