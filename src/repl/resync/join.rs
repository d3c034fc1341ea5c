//! Joining by trees on its own (`docs/replication.md` section 5.8).
//!
//! A peer whose log is pruned refuses a link towards this node when this
//! node holds less of an origin than the peer pruned: it cannot send what
//! would not chain here. The refusal only says that something is wrong;
//! what this node does about it is decided on data. Each refused incoming
//! link names a peer to check ([`Joins::suspect`]); one task
//! ([`run`]) takes them one at a time, reads the peer's log bases over a
//! resync exchange (which changes nothing on either side), and only when
//! some base of another origin lies past what this node holds runs the
//! join that `tandem resync --from-peer` runs ([`super::recorded_in_turn`]). A
//! peer that is not ahead (a refusal for a fork, a peer that pruned
//! nothing this node lacks) is left alone.
//!
//! One join at a time: this task runs them one after another, and each
//! check with its join holds the node's one turn among comparisons (a
//! scheduled repair, a command), so a join by command that ran first
//! leaves the check nothing to do. A failed join waits out a backoff (doubling from
//! [`RETRY_MIN`] up to [`RETRY_MAX`]) before the next check. The peer's
//! link into this node is refused while this node is behind, so nothing
//! else writes the entries of the origins the join takes; the join writes
//! its marks before it takes the bases (see [`super::exchange`]), so the
//! entries the link then brings are stored without being applied again.

use super::{peer_bases, recorded_in_turn, Dialer, Request, WireBase};
use crate::repl::{now_ms, Mirror};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// First wait after a failed check or join.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest wait after repeated failures.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// A peer found not ahead is not checked again for this long, however
/// often it refuses (a fork keeps a link refused on every reconnect).
pub const QUIET: Duration = Duration::from_secs(30);

/// Where this node holds an origin, and where a peer's log of it starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Behind {
    /// The last seq held here (0: none).
    pub held: u64,
    /// The peer's base: its last pruned seq.
    pub base: u64,
}

/// One join as `tandem status` reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinRun {
    pub peer: String,
    /// The peer's node id, from the refused link.
    pub node: String,
    /// Start, milliseconds since the epoch.
    pub started_ms: u64,
    pub seconds: f64,
    /// Per origin (16 hex digits): what this node held and the peer's base.
    pub behind: BTreeMap<String, Behind>,
    /// Differences the join repaired and messages it restored.
    pub repaired: u64,
    pub messages_restored: u64,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `join` block of the mirror's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinStatus {
    /// Joins start on their own (`mirror.auto_join`, and the mirror runs).
    pub auto: bool,
    /// `idle`, `checking` (reading a peer's bases), `joining`, or
    /// `waiting` (after a failure, until `retry_ms`).
    pub state: String,
    /// The peer being checked or joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Peers' bases read since start, joins started, and of those checks
    /// and joins, the ones that failed.
    pub checks: u64,
    pub joins: u64,
    pub failures: u64,
    /// When the next check may start after a failure (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ms: Option<u64>,
    /// The last check that found this node behind, and how its join went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<JoinRun>,
}

/// Joins by trees started by this node: what to check next, and status.
#[derive(Default)]
pub struct Joins {
    status: Mutex<JoinStatus>,
    /// Peers to check: mirror address -> node id.
    suspects: Mutex<BTreeMap<String, String>>,
    wake: tokio::sync::Notify,
}

impl Joins {
    pub fn status(&self) -> JoinStatus {
        self.status.lock().expect("join status lock").clone()
    }

    fn with(&self, f: impl FnOnce(&mut JoinStatus)) {
        f(&mut self.status.lock().expect("join status lock"));
    }

    /// The link from `node`, whose mirror endpoint is `addr`, was refused
    /// by that peer: check at the next chance whether it is ahead of this
    /// node's log (the same peer is checked once however often it refuses
    /// meanwhile).
    pub fn suspect(&self, addr: String, node: &str) {
        self.suspects.lock().expect("join lock").insert(addr, node.to_string());
        self.wake.notify_one();
    }
}

impl crate::metrics::Collect for Joins {
    fn collect(&self, e: &mut crate::metrics::Encoder) {
        let s = self.status();
        e.counter(
            "tandem_mirror_joins_total",
            "Joins by trees this node started on its own, finding a peer's log pruned past what it holds.",
            s.joins,
        );
        e.counter(
            "tandem_mirror_join_failures_total",
            "Of those joins, and of the reads of a peer's log bases before them, the ones that failed.",
            s.failures,
        );
        e.gauge(
            "tandem_mirror_joining",
            "1 while a join by trees started on its own runs.",
            f64::from(u8::from(s.state == "joining")),
        );
    }
}

/// The origins (other than `own`) whose base in `bases` lies past what
/// `heads` holds: a log that a peer can no longer bring up to date here.
pub fn behind(own: u64, heads: &wal::VersionVector, bases: &[WireBase]) -> BTreeMap<u64, Behind> {
    bases
        .iter()
        .filter(|(o, ..)| *o != own)
        .filter_map(|&(o, base, ..)| {
            let held = heads.get(wal::Origin(o));
            (held < base).then_some((o, Behind { held, base }))
        })
        .collect()
}

/// The joiner: waits for refused links, checks the peers they name, and
/// joins by trees the ones that are ahead. Returns at once unless
/// `mirror.auto_join` is set and the mirror runs.
pub async fn run(store: Store, mirror: Arc<Mirror>, cfg: crate::config::MirrorConfig, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let auto = cfg.auto_join && cfg.listen.is_some();
    mirror.join.with(|s| {
        s.auto = auto;
        s.state = "idle".into();
    });
    if !auto {
        return;
    }
    let mut delay = RETRY_MIN;
    let mut not_before: Option<Instant> = None;
    let mut not_ahead: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        if let Some(t) = not_before.take() {
            tokio::select! {
                _ = tokio::time::sleep_until(t.into()) => {}
                _ = crate::server::wait_shutdown(&mut shutdown) => return,
            }
        }
        tokio::select! {
            _ = mirror.join.wake.notified() => {}
            _ = crate::server::wait_shutdown(&mut shutdown) => return,
        }
        let suspects = std::mem::take(&mut *mirror.join.suspects.lock().expect("join lock"));
        let Some(dialer) = mirror.resync.get().cloned() else {
            continue;
        };
        not_ahead.retain(|_, t| t.elapsed() < QUIET);
        for (addr, node) in suspects {
            if not_ahead.contains_key(&addr) {
                continue;
            }
            let r = tokio::select! {
                r = check_and_join(&store, &mirror, &dialer, &addr, &node) => r,
                _ = crate::server::wait_shutdown(&mut shutdown) => return,
            };
            match r {
                Ok(joined) => {
                    if !joined {
                        not_ahead.insert(addr.clone(), Instant::now());
                    }
                    delay = RETRY_MIN;
                    mirror.join.with(|s| {
                        s.state = "idle".into();
                        s.peer = None;
                        s.retry_ms = None;
                    });
                }
                Err(e) => {
                    let wait = delay.mul_f64(0.75 + rand::random::<f64>() / 2.0);
                    tracing::warn!(peer = %addr, error = %format!("{e:#}"), retry_secs = wait.as_secs_f64(), "joining by trees failed");
                    mirror.join.with(|s| {
                        s.failures += 1;
                        s.state = "waiting".into();
                        s.retry_ms = Some(now_ms() + wait.as_millis() as u64);
                    });
                    delay = (delay * 2).min(RETRY_MAX);
                    not_before = Some(Instant::now() + wait);
                    // The peer refuses again after its own backoff, and is
                    // checked again once this wait is over.
                    break;
                }
            }
        }
    }
}

/// Read `addr`'s bases; if it is ahead of this node, join it by trees.
/// `Ok(true)`: joined; `Ok(false)`: not ahead (nothing done).
async fn check_and_join(store: &Store, mirror: &Arc<Mirror>, dialer: &Dialer, addr: &str, node: &str) -> anyhow::Result<bool> {
    use anyhow::Context;
    mirror.join.with(|s| {
        s.state = "checking".into();
        s.peer = Some(addr.to_string());
        s.checks += 1;
    });
    // The check and the join hold one turn among comparisons: a join by
    // command (or another) that ran meanwhile has taken the bases, and the
    // check then finds nothing to do.
    let _turn = mirror.repair.one_at_a_time.lock().await;
    let Some(bases) = peer_bases(store, mirror, dialer, addr)
        .await
        .with_context(|| format!("reading the log bases of {addr}"))?
    else {
        // A node that does not serve its bases is an older one: a join
        // could not take them either.
        tracing::info!(peer = %addr, "the peer does not serve its log bases; not joining by trees");
        return Ok(false);
    };
    let wal = store.wal();
    let found = behind(wal.local_origin().0, &wal.heads(), &bases);
    if found.is_empty() {
        tracing::debug!(peer = %addr, "the peer's log is not pruned past this node's: no join");
        return Ok(false);
    }
    let hex = |o: &u64| format!("{o:016x}");
    tracing::warn!(
        peer = %addr,
        node,
        origins = %found.iter().map(|(o, b)| format!("{} held to {} pruned to {}", hex(o), b.held, b.base)).collect::<Vec<_>>().join(", "),
        "this node lacks history the peer pruned: joining it by trees"
    );
    let started_ms = now_ms();
    let started = Instant::now();
    let mut run = JoinRun {
        peer: addr.to_string(),
        node: node.to_string(),
        started_ms,
        behind: found.iter().map(|(o, b)| (hex(o), *b)).collect(),
        ..Default::default()
    };
    mirror.join.with(|s| {
        s.state = "joining".into();
        s.joins += 1;
        s.last = Some(run.clone());
    });
    let req = Request {
        peer: addr.to_string(),
        repair: true,
        from_peer: true,
        ..Default::default()
    };
    let r = recorded_in_turn(store, mirror, dialer, &req, "join").await;
    let heads = wal.heads();
    let short: Vec<String> = found
        .iter()
        .filter(|(o, b)| heads.get(wal::Origin(**o)) < b.base)
        .map(|(o, b)| {
            format!(
                "origin {} ends here at seq {}, before the peer's base {}",
                hex(o),
                heads.get(wal::Origin(*o)),
                b.base
            )
        })
        .collect();
    let r = match r {
        Ok(rep) => {
            run.repaired = rep.repaired;
            run.messages_restored = rep.messages_restored;
            if short.is_empty() {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "the join repaired {} of {} differences and did not take the peer's bases: {}",
                    rep.repaired,
                    rep.differences,
                    short.join("; ")
                ))
            }
        }
        Err(e) => Err(e),
    };
    run.seconds = started.elapsed().as_secs_f64();
    run.error = r.as_ref().err().map(|e| format!("{e:#}"));
    mirror.join.with(|s| s.last = Some(run));
    r.map(|()| {
        tracing::info!(peer = %addr, "joined by trees");
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_other_origins_pruned_past_what_is_held_call_for_a_join() {
        let heads = wal::VersionVector(
            [(wal::Origin(1), 10), (wal::Origin(2), 50), (wal::Origin(3), 7)]
                .into_iter()
                .collect(),
        );
        let h = [0u8; 32];
        // Origin 1 is this node's own: never taken from a peer. Origin 2
        // is held past the peer's base, origin 3 at it: nothing missing.
        let none = behind(1, &heads, &[(1, 99, h, 0), (2, 40, h, 0), (3, 7, h, 0)]);
        assert!(none.is_empty(), "{none:?}");
        // Held below the base, or not at all.
        let some = behind(1, &heads, &[(2, 51, h, 0), (3, 7, h, 0), (9, 4, h, 0)]);
        assert_eq!(
            some.into_iter().collect::<Vec<_>>(),
            vec![(2, Behind { held: 50, base: 51 }), (9, Behind { held: 0, base: 4 })]
        );
    }

    #[tokio::test]
    async fn a_suspect_is_kept_once_and_wakes_the_joiner() {
        let j = Joins::default();
        j.suspect("127.0.0.1:1".into(), "a");
        j.suspect("127.0.0.1:1".into(), "a");
        j.suspect("127.0.0.1:2".into(), "b");
        tokio::time::timeout(Duration::from_secs(1), j.wake.notified())
            .await
            .expect("woken");
        assert_eq!(j.suspects.lock().unwrap().len(), 2);
    }
}
