//! # tandem-tools — work on a stopped node's data directory
//!
//! - [`audit`]: verify every origin's hash chain and check that the views
//!   equal a replay of the log (into a scratch store), reporting the first
//!   problem with its place.
//! - [`rebuild`]: throw the views away and materialise them again from the
//!   log, in the node's own apply order.
//!
//! Both open the RocksDB store directly, so the node must be stopped
//! (RocksDB admits one process).

use anyhow::Context;
use std::path::Path;
use tandem::replay::{rebuild_views, replay_into, views_digest};
use tandem::store::{wal_options, Store};

/// What an audit found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditReport {
    pub node_id: String,
    /// `{origin: last seq}`.
    pub heads: std::collections::BTreeMap<String, u64>,
    /// Entries whose chain link was checked.
    pub entries_verified: u64,
    /// Entries replayed into the scratch store.
    pub entries_replayed: u64,
    pub views_digest: String,
    pub replay_digest: String,
    /// True when chains verify and views equal the replay.
    pub ok: bool,
    pub problems: Vec<String>,
}

fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let p = data_dir.join("node-id");
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("reading {} (is this a Tandem data directory?)", p.display()))?
        .trim()
        .to_string())
}

fn open(data_dir: &Path) -> anyhow::Result<(String, Store)> {
    let id = node_id(data_dir)?;
    let db = data_dir.join("db");
    let store = Store::open(&db, &id, wal_options(&id)).with_context(|| format!("opening {} (is the node stopped?)", db.display()))?;
    Ok((id, store))
}

/// Audit a stopped node. `scratch` is an empty directory for the replay.
pub fn audit(data_dir: &Path, scratch: &Path) -> anyhow::Result<AuditReport> {
    let (id, store) = open(data_dir)?;
    let heads = store.wal().heads().0.iter().map(|(o, s)| (o.to_string(), *s)).collect();
    let mut problems = Vec::new();
    let entries_verified = match store.wal().verify_all() {
        Ok(n) => n,
        Err(e) => {
            problems.push(format!("chain: {e}"));
            0
        }
    };
    let views = views_digest(&store)?;
    let mut o = wal_options("audit-replay");
    o.sync = false;
    let replica = Store::open(scratch, "audit-replay", o).context("opening the scratch store")?;
    let (entries_replayed, replay) = match replay_into(store.wal(), &replica) {
        Ok(n) => (n, views_digest(&replica)?),
        Err(e) => {
            problems.push(format!("replay: {e}"));
            (0, String::new())
        }
    };
    if problems.is_empty() && replay != views {
        problems.push("views differ from a replay of the log (run `tandem-rebuild` to materialise them again)".into());
    }
    replica.close()?;
    store.close()?;
    Ok(AuditReport {
        node_id: id,
        heads,
        entries_verified,
        entries_replayed,
        ok: problems.is_empty(),
        views_digest: views,
        replay_digest: replay,
        problems,
    })
}

/// Rebuild the views of a stopped node from its log. Returns entries applied.
pub fn rebuild(data_dir: &Path) -> anyhow::Result<u64> {
    let (_, store) = open(data_dir)?;
    store
        .wal()
        .verify_all()
        .context("the log does not verify; not rebuilding from it")?;
    let n = rebuild_views(&store)?;
    store.close()?;
    Ok(n)
}
