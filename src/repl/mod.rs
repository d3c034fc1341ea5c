//! The mirror: continuous replication of every origin's log between two or
//! three nodes over QUIC.
//!
//! - [`frame`]: the wire frames (sans-io).
//! - [`engine`]: the sender's window and position as a pure state machine.
//! - [`apply`]: a received batch through the same atomic write as local work.
//! - [`error`]: why a link ended, as a type.
//! - [`quic`]: the quinn driver: authentication, links, reconnects.
//! - [`resolve`]: the master's resolution of split-brain conflicts.
//! - [`authority`]: the master as UID authority while the link is up.
//! - [`resync`]: merkle comparison with a peer, and repair by events.
//!
//! Each node dials each configured peer and pushes what that peer lacks;
//! each node accepts its peers' links and applies what they push. So every
//! pair has one link per direction, and a link carries entries of every
//! origin (three-way mirrors relay).

pub mod apply;
pub mod authority;
pub mod engine;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod history;
pub mod quic;
pub mod resolve;
pub mod resync;
pub mod role;
pub mod stream;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A log entry as a batch carries it.
pub fn wire_entry(e: &wal::Entry) -> frame::WireEntry {
    frame::WireEntry {
        origin: e.origin.0,
        seq: e.seq,
        hlc: e.hlc,
        hash: e.hash,
        payload: e.payload.clone(),
    }
}

/// The link's vector of the log's heads (or any of its vectors).
pub fn vector_of(v: &wal::VersionVector) -> engine::Vector {
    v.0.iter().map(|(o, s)| (o.0, *s)).collect()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds of a clock that only goes forward (since the first call):
/// the time the master's relayed signs of life are judged by
/// (`engine::authority::Liveness`), which a wall clock stepping back must
/// not stretch.
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// One outgoing link as `tandem status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OutLink {
    pub address: String,
    /// Node id of the peer, once known.
    pub peer: Option<String>,
    /// "connecting", "connected", "disconnected", "refused".
    pub state: String,
    /// Unix milliseconds of the last state change.
    pub since_ms: u64,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// Entries sent on this link since start.
    pub sent: u64,
    pub sent_bytes: u64,
    /// Position of this node's apply order the current link began reading
    /// at: past what the peer was known to hold when an earlier link (or
    /// an earlier run of this node) ended, else 1.
    #[serde(default)]
    pub read_from: u64,
    /// Entries of this node's own origin (added locally), for comparing
    /// with what the peer acknowledged of them.
    #[serde(default)]
    pub local_added: u64,
    /// Bodies sent, and their bytes.
    #[serde(default)]
    pub bodies_sent: u64,
    #[serde(default)]
    pub body_bytes_sent: u64,
    /// Bodies not sent because the peer said it held them, or because
    /// this link had sent them already.
    #[serde(default)]
    pub bodies_held_by_peer: u64,
    #[serde(default)]
    pub bodies_already_sent: u64,
    /// Body queries asked of the peer (one per batch that needed one).
    #[serde(default)]
    pub body_queries: u64,
    /// Entries this node holds that the peer has not acknowledged.
    pub queue: u64,
    /// Batches sent and not yet acknowledged.
    pub inflight_batches: u64,
    /// Bytes sent and not yet acknowledged (bodies included).
    pub unacked_bytes: u64,
    /// Entries sent per second, over the last few seconds.
    pub send_rate: f64,
    #[serde(skip)]
    pub send_window: RateWindow,
    /// Seconds since the peer last caught up completely (0 when caught up).
    pub lag_secs: f64,
    /// Unix milliseconds when the queue last was empty.
    #[serde(skip)]
    pub caught_up_ms: u64,
    /// The peer's acknowledged vector (origin hex -> seq).
    pub acked: BTreeMap<String, u64>,
    /// Set while the peer lacks history this node pruned: it cannot catch
    /// up from this log and must be joined by trees (the reason, with the
    /// origin and seqs).
    #[serde(default)]
    pub behind_pruned: Option<String>,
}

/// What arrived from one peer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InLink {
    pub connected: bool,
    pub since_ms: u64,
    pub batches: u64,
    /// What the applied batches held, by kind.
    #[serde(flatten)]
    pub applied: apply::Applied,
    pub failed: u64,
    pub last_error: Option<String>,
    /// The role and epoch the peer announced in its hello.
    #[serde(default)]
    pub peer_role: Option<String>,
    #[serde(default)]
    pub peer_epoch: u64,
    /// Entries applied per second, over the last few seconds.
    #[serde(default)]
    pub apply_rate: f64,
    #[serde(skip)]
    pub apply_window: RateWindow,
    /// Per applied batch: seconds from its oldest entry's write at the
    /// origin to its durable apply here (clocks of the two nodes differ by
    /// their skew; a negative difference counts as 0).
    #[serde(skip)]
    pub lag: crate::metrics::HistogramSnapshot,
    /// Which incoming link from the peer is the current one (see
    /// [`Mirror::in_link_up`]).
    #[serde(skip)]
    pub link: u64,
}

/// A per-second rate of a growing count, measured over windows of at least
/// two seconds: (unix ms, count) at the start of the current window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateWindow(u64, u64);

impl RateWindow {
    /// The count is `count` at `now`: the rate of the window that just
    /// closed, if one did.
    pub fn update(&mut self, now: u64, count: u64) -> Option<f64> {
        let RateWindow(since, then) = *self;
        if since == 0 {
            *self = RateWindow(now, count);
            None
        } else if now.saturating_sub(since) >= 2000 {
            *self = RateWindow(now, count);
            Some(count.saturating_sub(then) as f64 * 1000.0 / (now - since) as f64)
        } else {
            None
        }
    }
}

impl InLink {
    /// Count an applied batch and refresh the rate.
    pub fn applied_batch(&mut self, n: apply::Applied, now: u64) {
        self.batches += 1;
        if n.oldest_ms > 0 {
            self.lag.observe(now.saturating_sub(n.oldest_ms) as f64 / 1000.0);
        }
        self.applied += n;
        if let Some(r) = self.apply_window.update(now, self.applied.entries) {
            self.apply_rate = r;
        }
    }
}

/// Mirror status for `tandem status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MirrorStatus {
    pub enabled: bool,
    pub listen: Option<String>,
    pub role: String,
    pub outgoing: Vec<OutLink>,
    pub incoming: BTreeMap<String, InLink>,
    pub auth_failures: u64,
    pub bad_frames: u64,
    /// Incoming connections refused at `mirror.max_connections` or
    /// `mirror.max_unauthenticated`.
    #[serde(default)]
    pub connections_refused: u64,
    /// Incoming connections closed for not authenticating within
    /// `mirror.auth_timeout_ms`.
    #[serde(default)]
    pub auth_timeouts: u64,
    /// Batches refused because they carried this node's own origin.
    #[serde(default)]
    pub own_origin_refused: u64,
    /// Batches refused for holding more entries than a batch may.
    #[serde(default)]
    pub oversized_batches: u64,
    /// Links closed for sending more `Query` frames than their budget.
    #[serde(default)]
    pub query_floods: u64,
    /// `ack = "peer"` waits that ran out of time (an alarm: acknowledged
    /// mail may exist on this node only).
    pub ack_timeouts: u64,
    /// Messages kept aside because another message holds their UID.
    pub uid_conflicts: u64,
    /// Links refused because a peer held more of this node's own origin
    /// than this node (its log went backwards).
    #[serde(default)]
    pub rollbacks: u64,
    /// Forks found: a peer offered or held another entry for a seq held
    /// here (batches refused, links refused, own entries moved).
    #[serde(default)]
    pub forks: u64,
    /// The last rollback or fork, with origin and seq.
    #[serde(default)]
    pub last_divergence: Option<String>,
    /// Joins by trees started on their own (`replication.md` section 5.8).
    #[serde(default)]
    pub join: resync::join::JoinStatus,
    /// The newest sign of life (`Alive`) heard of each master, by node id
    /// (`replication.md` section 8b).
    #[serde(default)]
    pub alive: BTreeMap<String, AliveHeard>,
}

/// A master's newest sign of life as `tandem status --json` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AliveHeard {
    pub epoch: u64,
    pub stamp: u64,
    /// Milliseconds since it arrived.
    pub age_ms: u64,
    /// This node's own origin as its vector holds it.
    pub holds_own: u64,
    /// The peer whose link brought it: the master itself (heard directly)
    /// or the node relaying it.
    #[serde(default)]
    pub via: String,
    /// Heard on the master's own link rather than through a relay.
    #[serde(default)]
    pub direct: bool,
}

impl MirrorStatus {
    /// Queue and lag of the outgoing links, counted from the log against
    /// what each peer last acknowledged: the queue is every entry held here
    /// past the peer's acknowledged vector, the lag the age of the oldest
    /// of them (by the time it was written at its origin; 0 when the queue
    /// is empty). A link that is down updates nothing itself, so without
    /// this its numbers would stay as they were when it went down; and the
    /// link's own lag counts from the last time it ran with an empty
    /// queue, which after an idle hour is an hour ago. Links that never got
    /// an acknowledgement since start are left as they are (what the peer
    /// holds is unknown until it says; `acked` is empty).
    pub fn count_from_log(&mut self, wal: &wal::Wal, now: u64) {
        let heads = wal.heads();
        for o in &mut self.outgoing {
            if o.state != "connected" {
                o.local_added = heads.get(wal.local_origin());
                o.inflight_batches = 0;
                o.unacked_bytes = 0;
                o.send_rate = 0.0;
            }
            if o.acked.is_empty() {
                continue;
            }
            let acked = |origin: wal::Origin| o.acked.get(&format!("{:016x}", origin.0)).copied().unwrap_or(0);
            let behind: Vec<(wal::Origin, u64)> = heads
                .0
                .iter()
                .filter(|(origin, seq)| **seq > acked(**origin))
                .map(|(origin, _)| (*origin, acked(*origin) + 1))
                .collect();
            o.queue = heads.0.iter().map(|(origin, seq)| seq.saturating_sub(acked(*origin))).sum();
            // One entry read per origin behind (a pair has two or three).
            let oldest_ms = behind
                .iter()
                .filter_map(|(origin, seq)| wal.entry(*origin, *seq).ok().flatten())
                .map(|e| e.hlc >> 16)
                .min();
            o.lag_secs = match oldest_ms {
                Some(t) => now.saturating_sub(t) as f64 / 1000.0,
                None => 0.0,
            };
        }
    }
}

/// What a front end (LMTP, IMAP) needs to honour `ack = "peer"`.
#[derive(Clone)]
pub struct Durability {
    pub mirror: std::sync::Arc<Mirror>,
    pub cfg: std::sync::Arc<crate::config::MirrorConfig>,
}

impl Durability {
    /// Whether a new message is appended pending (see [`authority`]).
    pub fn append_pending(&self, store: &crate::store::Store) -> bool {
        authority::append_pending(&self.mirror, store)
    }

    /// See [`authority::await_placement`].
    pub async fn await_placement(
        &self,
        store: &crate::store::Store,
        user: &str,
        mailbox: crate::event::Id,
        guid: crate::event::Id,
    ) -> Result<Option<crate::mutate::Placed>, crate::store::StoreError> {
        authority::await_placement(&self.mirror, store, user, mailbox, guid).await
    }

    /// See [`Mirror::settle`].
    pub async fn settle(&self, store: &crate::store::Store) -> Result<(), ()> {
        self.mirror.settle(&self.cfg, store).await
    }
}

/// Shared, updated by the links.
#[derive(Default)]
pub struct Mirror {
    pub out: Mutex<Vec<OutLink>>,
    pub incoming: Mutex<BTreeMap<String, InLink>>,
    /// Incoming links authenticated since start (numbers them).
    in_links: AtomicU64,
    pub auth_failures: AtomicU64,
    pub bad_frames: AtomicU64,
    pub connections_refused: AtomicU64,
    pub auth_timeouts: AtomicU64,
    pub own_origin_refused: AtomicU64,
    pub oversized_batches: AtomicU64,
    pub query_floods: AtomicU64,
    pub listen: Mutex<Option<String>>,
    pub role: Mutex<String>,
    /// The configured `mirror.mode`: the role until a node is promoted
    /// (see [`role`]).
    pub seed: Mutex<crate::config::Role>,
    /// Woken on every acknowledgement from a peer.
    pub acked: tokio::sync::Notify,
    /// `ack = "peer"` waits that ran out of time.
    pub ack_timeouts: AtomicU64,
    pub rollbacks: AtomicU64,
    pub forks: AtomicU64,
    pub last_divergence: Mutex<Option<String>>,
    /// How to dial a peer for a resync (set when the mirror runs).
    pub resync: std::sync::OnceLock<resync::Dialer>,
    /// Merkle comparisons run by this node: progress and results.
    pub repair: resync::Schedule,
    /// Joins by trees this node starts on its own.
    pub join: resync::join::Joins,
    /// The masters' signs of life heard (`Alive`), and this node's own
    /// writes of the last seconds (`engine::authority::Liveness`).
    pub liveness: Mutex<engine::authority::Liveness>,
    /// The stamps of this node's `Alive` as master, once the first was
    /// sent (`engine::authority::Stamps`; the ceiling is kept in the log's
    /// application values under [`ALIVE_CEILING`]).
    pub alive_stamps: Mutex<Option<engine::authority::Stamps>>,
    /// This node's own origin, once the mirror started (for status).
    pub own_origin: std::sync::OnceLock<u64>,
}

/// The log's application value that keeps the ceiling of this node's
/// `Alive` stamps (u64 BE).
pub const ALIVE_CEILING: &str = "alive_ceiling";

impl Mirror {
    /// The stamp of a new `Alive`: the clock in the log's HLC form (unix
    /// ms shifted by 16 bits), above every stamp this node sent before, in
    /// this process or an earlier one on the same data dir.
    pub fn next_alive_stamp(&self, wal: &wal::Wal) -> Result<u64, wal::WalError> {
        let mut held = self.alive_stamps.lock().expect("mirror lock");
        let stamps = match held.as_mut() {
            Some(s) => s,
            None => {
                let kept = wal
                    .app_meta(ALIVE_CEILING)?
                    .and_then(|v| <[u8; 8]>::try_from(v).ok())
                    .map_or(0, u64::from_be_bytes);
                held.insert(engine::authority::Stamps::resume(kept))
            }
        };
        stamps.next(now_ms() << 16, |ceiling| wal.set_app_meta(ALIVE_CEILING, &ceiling.to_be_bytes()))
    }

    pub fn status(&self, uid_conflicts: u64) -> MirrorStatus {
        let now = now_ms();
        let mut outgoing = self.out.lock().expect("mirror lock").clone();
        for o in &mut outgoing {
            o.lag_secs = if o.queue == 0 {
                0.0
            } else {
                now.saturating_sub(o.caught_up_ms) as f64 / 1000.0
            };
        }
        let listen = self.listen.lock().expect("mirror lock").clone();
        MirrorStatus {
            enabled: listen.is_some() || !outgoing.is_empty(),
            listen,
            role: self.role.lock().expect("mirror lock").clone(),
            outgoing,
            incoming: self.incoming.lock().expect("mirror lock").clone(),
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            ack_timeouts: self.ack_timeouts.load(Ordering::Relaxed),
            bad_frames: self.bad_frames.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            auth_timeouts: self.auth_timeouts.load(Ordering::Relaxed),
            own_origin_refused: self.own_origin_refused.load(Ordering::Relaxed),
            oversized_batches: self.oversized_batches.load(Ordering::Relaxed),
            query_floods: self.query_floods.load(Ordering::Relaxed),
            uid_conflicts,
            rollbacks: self.rollbacks.load(Ordering::Relaxed),
            forks: self.forks.load(Ordering::Relaxed),
            last_divergence: self.last_divergence.lock().expect("mirror lock").clone(),
            join: self.join.status(),
            alive: self.alive_heard(),
        }
    }

    /// The newest `Alive` of each master, with its age now.
    fn alive_heard(&self) -> BTreeMap<String, AliveHeard> {
        let own = *self.own_origin.get().unwrap_or(&0);
        let now = mono_ms();
        self.liveness
            .lock()
            .expect("mirror lock")
            .newest()
            .map(|h| {
                (
                    h.node.clone(),
                    AliveHeard {
                        epoch: h.epoch,
                        stamp: h.stamp,
                        age_ms: now.saturating_sub(h.at_ms),
                        holds_own: h.holds.get(own),
                        via: h.via.clone(),
                        direct: h.via == h.node,
                    },
                )
            })
            .collect()
    }

    /// Count and log a rollback or fork.
    pub(crate) fn diverged(&self, rollback: bool, what: String) {
        let c = if rollback { &self.rollbacks } else { &self.forks };
        c.fetch_add(1, Ordering::Relaxed);
        tracing::error!(what = %what, "histories diverge");
        *self.last_divergence.lock().expect("mirror lock") = Some(format!("{} {what}", now_ms()));
    }

    /// Whether every outgoing link's peer holds `origin` up to `seq`.
    fn peers_hold(&self, origin: &str, seq: u64) -> bool {
        self.out
            .lock()
            .expect("mirror lock")
            .iter()
            .all(|l| l.acked.get(origin).copied().unwrap_or(0) >= seq)
    }

    /// Wait until every peer holds `origin` up to `seq` durably, or `timeout`.
    pub async fn wait_peers(&self, origin: &str, seq: u64, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.acked.notified();
            if self.peers_hold(origin, seq) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.peers_hold(origin, seq);
            }
        }
    }

    /// After a local commit, honour `ack = "peer"`: `Ok` when the reply may
    /// go out, `Err` when it must be a temporary failure.
    pub async fn settle(&self, cfg: &crate::config::MirrorConfig, store: &crate::store::Store) -> Result<(), ()> {
        use crate::config::{AckFallback, AckMode};
        if cfg.ack != AckMode::Peer || self.out.lock().expect("mirror lock").is_empty() {
            return Ok(());
        }
        let origin = store.wal().local_origin();
        let seq = store.wal().heads().get(origin);
        if self
            .wait_peers(
                &format!("{:016x}", origin.0),
                seq,
                std::time::Duration::from_millis(cfg.ack_timeout_ms),
            )
            .await
        {
            return Ok(());
        }
        self.ack_timeouts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(seq, "a peer did not acknowledge in time");
        match cfg.ack_fallback {
            AckFallback::Local => Ok(()),
            AckFallback::Tempfail => Err(()),
        }
    }

    pub(crate) fn update_out(&self, i: usize, f: impl FnOnce(&mut OutLink)) {
        if let Some(l) = self.out.lock().expect("mirror lock").get_mut(i) {
            f(l)
        }
    }

    /// A link to or from `peer` ended: the master's signs of life it
    /// brought stop counting (`engine::authority::Liveness::link_lost`).
    /// Called before the link is shown down, so that no delivery sees the
    /// link down and the master still alive through it.
    pub(crate) fn link_lost(&self, peer: &str) {
        self.liveness.lock().expect("mirror lock").link_lost(peer);
    }

    /// A peer proved itself on an incoming link from `remote`: its links
    /// come from its mirror endpoint, so an outgoing link dialled at that
    /// address reaches the same node, which is how the dialer learns whom
    /// it reaches (shown in the status, and whose signs of life to drop
    /// when its link ends). Addresses given as host names are not matched.
    pub(crate) fn learn_peer(&self, remote: std::net::SocketAddr, node: &str) {
        for l in self.out.lock().expect("mirror lock").iter_mut() {
            if l.address.parse::<std::net::SocketAddr>().is_ok_and(|a| a == remote) {
                l.peer = Some(node.to_string());
            }
        }
    }

    /// An incoming link from `peer` authenticated: it is the peer's current
    /// link from now on. Returns its number, for [`Mirror::in_link_ended`].
    pub(crate) fn in_link_up(&self, peer: &str, f: impl FnOnce(&mut InLink)) -> u64 {
        let link = self.in_links.fetch_add(1, Ordering::Relaxed) + 1;
        self.update_in(peer, |l| {
            l.connected = true;
            l.link = link;
            f(l)
        });
        link
    }

    /// Incoming link `link` from `peer` ended. Only when it is still the
    /// peer's current link is the peer shown disconnected and its signs of
    /// life dropped: a peer that came back on a new link before the old
    /// one was torn down (it reconnects within its backoff, while the old
    /// link still waits for a refusal to leave) stays connected.
    pub(crate) fn in_link_ended(&self, peer: &str, link: u64) {
        let current = {
            let mut incoming = self.incoming.lock().expect("mirror lock");
            let l = incoming.entry(peer.to_string()).or_default();
            let current = l.link == link;
            if current {
                l.connected = false;
            }
            current
        };
        if current {
            self.link_lost(peer);
        }
    }

    pub(crate) fn update_in(&self, peer: &str, f: impl FnOnce(&mut InLink)) {
        f(self.incoming.lock().expect("mirror lock").entry(peer.to_string()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_rate_is_entries_over_a_window_of_two_seconds_or_more() {
        let mut l = InLink::default();
        let batch = |n| apply::Applied {
            entries: n,
            ..Default::default()
        };
        l.applied_batch(batch(10), 1_000);
        l.applied_batch(batch(30), 2_000);
        assert_eq!(l.apply_rate, 0.0, "no full window yet");
        l.applied_batch(batch(50), 3_500);
        // 80 entries in the 2.5 s after the first mark.
        assert!((l.apply_rate - 32.0).abs() < 1e-9, "{}", l.apply_rate);
        assert_eq!(l.batches, 3);
        assert_eq!(l.applied.entries, 90);
        // No entry carried a time: no lag observed.
        assert_eq!(l.lag.count, 0);
    }

    #[test]
    fn each_batch_observes_the_lag_of_its_oldest_entry() {
        let mut l = InLink::default();
        let mut a = apply::Applied {
            entries: 2,
            oldest_ms: 10_000,
            ..Default::default()
        };
        a += apply::Applied {
            entries: 1,
            oldest_ms: 9_990,
            ..Default::default()
        };
        l.applied_batch(a, 10_040);
        // A peer whose clock runs ahead: counts as no lag, not as negative.
        l.applied_batch(
            apply::Applied {
                entries: 1,
                oldest_ms: 20_000,
                ..Default::default()
            },
            19_000,
        );
        assert_eq!(l.lag.count, 2);
        assert!((l.lag.sum_secs - 0.05).abs() < 1e-9, "{:?}", l.lag);
        // 0 s in the first bucket, 50 ms in the 50 ms bucket.
        assert_eq!(l.lag.buckets[0], 1);
        let i = crate::metrics::LAG.iter().position(|b| *b == 0.05).unwrap();
        assert_eq!(l.lag.buckets[i], 1);
    }
}
