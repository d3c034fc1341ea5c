//! Retention of this node's own log: which entries may be pruned, and the
//! daemon task that prunes them (`[retention]`, `docs/operations.md`, "Log
//! retention"). The mechanism is [`wal::Wal::prune`].
//!
//! An entry goes only when all of these hold:
//! - every configured peer acknowledged it (the acknowledged vector each
//!   outgoing link keeps; a peer that is down holds pruning at what it
//!   last acknowledged: a long-down peer blocks pruning for as long as it
//!   stays down, so it can always catch up from the log when it returns).
//!   Each run records every peer's vector in the store
//!   ([`wal::Wal::record_peer_ack`]) before it prunes, so after a restart a
//!   peer whose link has not acknowledged anything yet holds pruning at
//!   what it acknowledged before, not at nothing; a peer with nothing
//!   recorded holds everything;
//! - when `[backup] to` is set, the backup's durable position passed it
//!   (unknown until the first backup run of this process: nothing goes);
//! - it is older than `keep`, and is not among the newest `keep_entries`
//!   of its origin (the head is never pruned).
//!
//! `keep` unset (the default) turns pruning off: a node never configured
//! for it keeps its whole history. Views, bodies and merkle trees are never
//! touched: they hold the live mailboxes; only log history goes.

use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use wal::{Kept, Origin, PruneLimits, VersionVector, Wal};

/// Entries dropped by one prune call (one synced batch).
const BATCH: usize = 10_000;
/// Batches in one run at most (a run picks up the rest next time).
const MAX_BATCHES: usize = 100;

/// What `tandem status` shows of retention.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RetentionStatus {
    /// `[retention] keep` is set.
    pub enabled: bool,
    pub keep_secs: u64,
    pub keep_entries: u64,
    /// Runs since start, and entries they pruned.
    pub runs: u64,
    pub pruned: u64,
    /// When the last run finished (ms since the epoch; 0: none yet).
    pub last_run_ms: u64,
    pub last_error: Option<String>,
    /// Per origin (hex): the last pruned seq (its log is held after it).
    pub pruned_up_to: BTreeMap<String, u64>,
    /// Per origin (hex): what holds its oldest held entry back.
    pub held_back: BTreeMap<String, String>,
    /// Per configured peer: the acknowledged vector recorded in the store
    /// (origin hex -> seq), what holds pruning after a restart until the
    /// peer's link acknowledges again.
    #[serde(default)]
    pub recorded_acks: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The daemon's retention state.
#[derive(Default)]
pub struct Retention {
    status: Mutex<RetentionStatus>,
}

/// What a peer acknowledged, for the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAck {
    pub address: String,
    /// `None`: nothing acknowledged since this node started, and nothing
    /// recorded before.
    pub acked: Option<BTreeMap<Origin, u64>>,
    /// `acked` is what the store recorded before this node started (the
    /// peer's link has acknowledged nothing since).
    pub recorded: bool,
}

/// The limits of one prune, and the reason each one holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub limits: PruneLimits,
    /// Per origin: the peer that acknowledged least of it, how much, and
    /// whether that is the vector recorded before this node started.
    pub least_acked: BTreeMap<Origin, (String, Option<u64>, bool)>,
    /// The backup's target and durable position, when one is configured.
    pub backup: Option<(String, Option<u64>)>,
}

/// The limits that `cfg` and what peers and the backup hold allow now.
pub fn plan(cfg: &Config, heads: &VersionVector, peers: &[PeerAck], backup: Option<(String, Option<u64>)>, now_ms: u64) -> Plan {
    let mut upto = VersionVector::default();
    let mut least_acked = BTreeMap::new();
    for (o, head) in &heads.0 {
        let mut min = *head;
        let mut who: Option<(String, Option<u64>, bool)> = None;
        for p in peers {
            let a = p.acked.as_ref().map(|v| v.get(o).copied().unwrap_or(0));
            let n = a.unwrap_or(0);
            if who.is_none() || n < min {
                min = min.min(n);
                who = Some((p.address.clone(), a, p.recorded));
            }
        }
        upto.set(*o, min);
        if let Some(w) = who {
            least_acked.insert(*o, w);
        }
    }
    let keep_ms = cfg.retention.keep.as_millis().min(u64::MAX as u128) as u64;
    let before_hlc = if cfg.retention.keep.is_zero() {
        0
    } else {
        now_ms.saturating_sub(keep_ms) << 16
    };
    Plan {
        limits: PruneLimits {
            upto,
            max_order: match &backup {
                Some((_, pos)) => pos.unwrap_or(0),
                None => u64::MAX,
            },
            before_hlc,
            keep_entries: cfg.retention.keep_entries.max(1),
            max_entries: BATCH,
        },
        least_acked,
        backup,
    }
}

/// A sentence for an origin's oldest held entry `seq`, kept by `why`.
pub fn reason(cfg: &Config, plan: &Plan, origin: Origin, seq: u64, why: Kept) -> String {
    match why {
        Kept::Acknowledged => match plan.least_acked.get(&origin) {
            Some((peer, Some(a), false)) => format!("seq {seq}: peer {peer} acknowledged only up to seq {a}"),
            Some((peer, Some(a), true)) => format!(
                "seq {seq}: peer {peer} acknowledged only up to seq {a} (recorded before this node started; its link has acknowledged nothing since)"
            ),
            Some((peer, None, _)) => {
                format!("seq {seq}: peer {peer} has acknowledged nothing since this node started (down or not yet connected)")
            }
            None => format!("seq {seq}: not acknowledged"),
        },
        Kept::Backup => match &plan.backup {
            Some((t, Some(p))) => format!("seq {seq}: past the backup's durable position (apply order {p}) at {t}"),
            Some((t, None)) => format!("seq {seq}: the backup at {t} has not reported its position yet"),
            None => format!("seq {seq}: past the backup's position"),
        },
        Kept::Window => format!("seq {seq}: younger than keep ({}s)", cfg.retention.keep.as_secs()),
        Kept::Count => format!("seq {seq}: among the newest {} entries kept", cfg.retention.keep_entries.max(1)),
        Kept::Batch => format!("seq {seq}: the run's batch limit was reached; the next run goes on"),
    }
}

impl Retention {
    pub fn status(&self, wal: &Wal) -> RetentionStatus {
        let mut st = self.status.lock().expect("retention lock").clone();
        st.pruned_up_to = wal.bases().iter().map(|(o, b)| (format!("{:016x}", o.0), b.seq)).collect();
        st.recorded_acks = wal
            .peer_acks()
            .unwrap_or_default()
            .into_iter()
            .map(|(p, v)| (p, v.0.iter().map(|(o, s)| (format!("{:016x}", o.0), *s)).collect()))
            .collect();
        st
    }

    /// Prune what `plan` allows, in batches; record the outcome.
    pub fn run_once(&self, cfg: &Config, wal: &Wal, plan: &Plan) -> Result<u64, wal::WalError> {
        let mut total = 0;
        let mut held = BTreeMap::new();
        let mut result = Ok(());
        for _ in 0..MAX_BATCHES {
            match wal.prune(&plan.limits) {
                Ok(r) => {
                    total += r.pruned;
                    held = r.kept;
                    if !held.values().any(|(_, k)| *k == Kept::Batch) {
                        break;
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let mut st = self.status.lock().expect("retention lock");
        st.enabled = true;
        st.keep_secs = cfg.retention.keep.as_secs();
        st.keep_entries = cfg.retention.keep_entries;
        st.runs += 1;
        st.pruned += total;
        st.last_run_ms = crate::repl::now_ms();
        st.held_back = held
            .iter()
            .map(|(o, (seq, why))| (format!("{:016x}", o.0), reason(cfg, plan, *o, *seq, *why)))
            .collect();
        st.last_error = result.as_ref().err().map(|e| e.to_string());
        result.map(|()| total)
    }
}

/// The `retention` lines of `tandem status`.
pub fn print_status(r: &RetentionStatus) {
    if !r.enabled {
        if !r.pruned_up_to.is_empty() {
            println!("retention   off   (the log was pruned before: {})", bases_line(&r.pruned_up_to));
        }
        return;
    }
    println!(
        "retention   keep {}s and the newest {} entries per origin   runs {}   pruned {}{}",
        r.keep_secs,
        r.keep_entries,
        r.runs,
        r.pruned,
        r.last_error.as_deref().map(|e| format!("   last error: {e}")).unwrap_or_default()
    );
    if !r.pruned_up_to.is_empty() {
        println!("  pruned up to   {}", bases_line(&r.pruned_up_to));
    }
    for (o, why) in &r.held_back {
        println!("  held back      origin {o} at {why}");
    }
}

fn bases_line(b: &BTreeMap<String, u64>) -> String {
    b.iter().map(|(o, s)| format!("origin {o} seq {s}")).collect::<Vec<_>>().join(", ")
}

/// What every configured peer acknowledged, from the mirror's links
/// (`recorded: false`; `None` for a link that acknowledged nothing since
/// this node started).
pub fn peer_acks(cfg: &Config, mirror: &crate::repl::Mirror) -> Vec<PeerAck> {
    let out = mirror.out.lock().expect("mirror lock");
    cfg.mirror
        .peers
        .iter()
        .map(|p| {
            let address = p.to_string();
            let acked = out.iter().find(|l| l.address == address).filter(|l| !l.acked.is_empty()).map(|l| {
                l.acked
                    .iter()
                    .filter_map(|(o, s)| Some((Origin(u64::from_str_radix(o, 16).ok()?), *s)))
                    .collect()
            });
            PeerAck {
                address,
                acked,
                recorded: false,
            }
        })
        .collect()
}

/// Keep the store's record of what each peer acknowledged in step with
/// `live` (the links' vectors), and fill in the recorded vector for a peer
/// whose link has acknowledged nothing since this node started. Records of
/// addresses no longer in `live` (taken out of `mirror.peers`) go.
///
/// A recorded vector is only ever what the peer said it holds durably
/// ([`wal::Wal::record_peer_ack`]): written here before the prune that
/// uses it, lowered at once (with fsync) when a handshake shows the peer
/// holding less (`repl::quic`), and forgotten when its history diverged.
pub fn with_recorded(wal: &Wal, live: Vec<PeerAck>) -> Result<Vec<PeerAck>, wal::WalError> {
    let recorded = wal.peer_acks()?;
    for gone in recorded.keys().filter(|k| !live.iter().any(|p| &p.address == *k)) {
        wal.forget_peer_ack(gone)?;
    }
    live.into_iter()
        .map(|mut p| {
            match &p.acked {
                Some(v) => {
                    let v = VersionVector(v.clone());
                    if recorded.get(&p.address) != Some(&v) {
                        wal.record_peer_ack(&p.address, &v)?;
                    }
                }
                None => {
                    if let Some(v) = recorded.get(&p.address) {
                        p.acked = Some(v.0.clone());
                        p.recorded = true;
                    }
                }
            }
            Ok(p)
        })
        .collect()
}

/// The pruner: every `[retention] interval`, prune what the limits allow.
pub async fn run(
    cfg: Arc<Config>,
    store: crate::store::Store,
    mirror: Arc<crate::repl::Mirror>,
    backups: Arc<crate::backup::Backups>,
    retention: Arc<Retention>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if cfg.retention.keep.is_zero() {
        return;
    }
    {
        let mut st = retention.status.lock().expect("retention lock");
        st.enabled = true;
        st.keep_secs = cfg.retention.keep.as_secs();
        st.keep_entries = cfg.retention.keep_entries;
    }
    let backup_dir: Option<PathBuf> = cfg.backup.to.clone();
    loop {
        tokio::select! {
            _ = crate::server::wait_shutdown(&mut shutdown) => break,
            _ = tokio::time::sleep(cfg.retention.interval) => {}
        }
        let backup = backup_dir.as_ref().map(|d| (d.display().to_string(), backups.durable_position(d)));
        let live = peer_acks(&cfg, &mirror);
        let (c, s, r) = (cfg.clone(), store.clone(), retention.clone());
        let job = move || {
            // Recorded before the prune that uses it (and made durable by
            // the prune's synced batch at the latest).
            let peers = with_recorded(s.wal(), live)?;
            let p = plan(&c, &s.wal().heads(), &peers, backup, crate::repl::now_ms());
            r.run_once(&c, s.wal(), &p)
        };
        match tokio::task::spawn_blocking(job).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(entries = n, "pruned the log"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning the log failed"),
            Err(e) => tracing::error!(error = %e, "the pruner panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn o(n: u64) -> Origin {
        Origin(n)
    }

    #[test]
    fn the_least_acknowledging_peer_and_an_unknown_one_bound_each_origin() {
        let mut cfg = Config::default();
        cfg.retention.keep = Duration::from_secs(60);
        let heads = VersionVector([(o(1), 100), (o(2), 50)].into_iter().collect());
        let peers = vec![
            PeerAck {
                address: "p1".into(),
                acked: Some([(o(1), 80), (o(2), 50)].into_iter().collect()),
                recorded: false,
            },
            PeerAck {
                address: "p2".into(),
                acked: Some([(o(1), 90)].into_iter().collect()),
                recorded: false,
            },
        ];
        let p = plan(&cfg, &heads, &peers, None, 1_000_000);
        assert_eq!(p.limits.upto, VersionVector([(o(1), 80), (o(2), 0)].into_iter().collect()));
        assert_eq!(p.least_acked[&o(1)], ("p1".to_string(), Some(80), false));
        assert_eq!(p.least_acked[&o(2)], ("p2".to_string(), Some(0), false));
        assert_eq!(p.limits.max_order, u64::MAX);
        assert_eq!(p.limits.before_hlc, (1_000_000 - 60_000) << 16);
        // A peer that acknowledged nothing since start holds everything.
        let down = vec![PeerAck {
            address: "p3".into(),
            acked: None,
            recorded: false,
        }];
        let p = plan(&cfg, &heads, &down, Some(("/b".into(), None)), 1_000_000);
        assert_eq!(p.limits.upto, VersionVector([(o(1), 0), (o(2), 0)].into_iter().collect()));
        assert_eq!(p.limits.max_order, 0);
        let why = reason(&cfg, &p, o(1), 1, Kept::Acknowledged);
        assert!(why.contains("p3") && why.contains("acknowledged nothing"), "{why}");
        assert!(reason(&cfg, &p, o(1), 1, Kept::Backup).contains("not reported"));
        // No peers: the heads bound nothing; the window still does.
        let p = plan(&cfg, &heads, &[], Some(("/b".into(), Some(7))), 1_000_000);
        assert_eq!(p.limits.upto, heads);
        assert_eq!(p.limits.max_order, 7);
    }

    #[test]
    fn pruning_is_off_unless_keep_is_set() {
        let cfg = Config::default();
        let p = plan(&cfg, &VersionVector::default(), &[], None, 1_000_000);
        assert_eq!(p.limits.before_hlc, 0, "nothing is older than 'never'");
    }

    #[test]
    fn recorded_acknowledgements_stand_in_for_a_peer_not_heard_from_since_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), "n", crate::store::wal_options("n")).unwrap();
        let wal = store.wal();
        let live = |a: Option<u64>| PeerAck {
            address: "127.0.0.1:1".into(),
            acked: a.map(|n| [(o(1), n)].into_iter().collect()),
            recorded: false,
        };
        // Nothing recorded, nothing heard: the peer holds everything.
        let p = with_recorded(wal, vec![live(None)]).unwrap();
        assert_eq!(p[0].acked, None);
        // Heard: recorded as heard.
        let p = with_recorded(wal, vec![live(Some(40))]).unwrap();
        assert_eq!(
            (p[0].acked.clone(), p[0].recorded),
            (Some([(o(1), 40)].into_iter().collect()), false)
        );
        assert_eq!(wal.peer_acks().unwrap()["127.0.0.1:1"].get(o(1)), 40);
        // Not heard since (a restart): the record stands in, marked so.
        let p = with_recorded(wal, vec![live(None)]).unwrap();
        assert_eq!(
            (p[0].acked.clone(), p[0].recorded),
            (Some([(o(1), 40)].into_iter().collect()), true)
        );
        let mut cfg = Config::default();
        cfg.retention.keep = Duration::from_secs(60);
        let heads = VersionVector([(o(1), 100)].into_iter().collect());
        let pl = plan(&cfg, &heads, &p, None, 1_000_000);
        assert_eq!(pl.limits.upto.get(o(1)), 40, "never past what the peer acknowledged");
        assert!(reason(&cfg, &pl, o(1), 41, Kept::Acknowledged).contains("recorded before this node started"));
        // A peer that now holds less (restored from an older copy) is
        // recorded lower.
        with_recorded(wal, vec![live(Some(30))]).unwrap();
        assert_eq!(wal.peer_acks().unwrap()["127.0.0.1:1"].get(o(1)), 30);
        // Taken out of mirror.peers: its record goes.
        with_recorded(wal, vec![]).unwrap();
        assert!(wal.peer_acks().unwrap().is_empty());
    }
}
