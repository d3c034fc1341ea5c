//! Collectors of what the daemon keeps outside the listeners' metric sets:
//! the log (statistics plus fsync and group-commit latency), the mirror's
//! links, and the node itself.

use super::{Collect, Encoder, Histogram, Kind, LATENCY};
use crate::store::Store;
use crate::views::ViewRead;
use std::sync::Arc;
use std::time::Instant;

/// The log: its statistics (read at scrape time) and the latency of its
/// group commits (fed by [`wal::Wal::on_group_timing`]).
pub struct WalMetrics {
    store: Store,
    fsync: Histogram,
    group: Histogram,
}

impl WalMetrics {
    /// Hook the histograms to `store`'s writer thread.
    pub fn attach(store: &Store) -> Arc<WalMetrics> {
        let m = Arc::new(WalMetrics {
            store: store.clone(),
            fsync: Histogram::new(LATENCY),
            group: Histogram::new(LATENCY),
        });
        let weak = Arc::downgrade(&m);
        store.wal().on_group_timing(move |t| {
            if let Some(m) = weak.upgrade() {
                m.fsync.observe(t.write);
                m.group.observe(t.total);
            }
        });
        m
    }
}

impl Collect for WalMetrics {
    fn collect(&self, e: &mut Encoder) {
        let s = self.store.wal().stats();
        e.counter(
            "tandem_log_entries_total",
            "Log entries appended (local and from peers).",
            s.entries,
        );
        e.counter("tandem_log_fsyncs_total", "Durable group writes (one fsync each).", s.groups);
        e.counter("tandem_log_transactions_total", "Transactions committed.", s.jobs);
        e.counter("tandem_log_bytes_total", "Bytes of log entries appended.", s.bytes);
        e.counter(
            "tandem_log_panics_total",
            "Transactions that panicked (a bug; their writes were discarded).",
            s.panics,
        );
        e.counter(
            "tandem_log_bulk_flushes_total",
            "Groups whose bodies went straight to blob files instead of RocksDB's WAL.",
            s.bulk_flushes,
        );
        e.counter("tandem_log_bulk_bytes_total", "Bytes of those bodies.", s.bulk_bytes);
        e.gauge(
            "tandem_log_max_group_transactions",
            "Most transactions one group commit has carried since start.",
            s.max_group_jobs as f64,
        );
        e.gauge(
            "tandem_log_poisoned",
            "1 when a durable write failed and the log refuses writes until reopened.",
            if self.store.wal().poisoned().is_some() { 1.0 } else { 0.0 },
        );
        e.family(
            "tandem_log_head_seq",
            Kind::Gauge,
            "Last sequence number held, per origin (hex id).",
        );
        for (o, seq) in self.store.wal().heads().0.iter() {
            e.sample("tandem_log_head_seq", &[("origin", &format!("{:016x}", o.0))], *seq as f64);
        }
        e.counter(
            "tandem_log_pruned_entries_total",
            "Log entries pruned since start (`[retention]`).",
            s.pruned,
        );
        e.family(
            "tandem_log_pruned_seq",
            Kind::Gauge,
            "Last pruned sequence number, per origin (hex id) whose log was pruned: the log is held after it.",
        );
        for (o, b) in self.store.wal().bases().iter() {
            e.sample("tandem_log_pruned_seq", &[("origin", &format!("{:016x}", o.0))], b.seq as f64);
        }
        e.histogram(
            "tandem_log_fsync_seconds",
            "Durable write of one group: RocksDB write with fsync (and the blob flush of a bulk group).",
            &self.fsync.snapshot(),
        );
        e.histogram(
            "tandem_log_group_commit_seconds",
            "One group commit: its transactions, the durable write and publishing the heads.",
            &self.group.snapshot(),
        );
    }
}

/// The mirror's links, with the queues of links that are down counted
/// from the log ([`crate::repl::MirrorStatus::count_from_log`]).
pub struct MirrorMetrics {
    pub mirror: Arc<crate::repl::Mirror>,
    pub store: Store,
}

impl Collect for MirrorMetrics {
    fn collect(&self, e: &mut Encoder) {
        let mut st = self.mirror.status(0);
        st.count_from_log(self.store.wal(), crate::repl::now_ms());
        e.counter(
            "tandem_mirror_auth_failures_total",
            "Peers refused for a wrong shared secret.",
            st.auth_failures,
        );
        e.counter(
            "tandem_mirror_bad_frames_total",
            "Mirror frames that did not decode.",
            st.bad_frames,
        );
        e.counter(
            "tandem_mirror_ack_timeouts_total",
            "ack = peer waits that ran out of time (acknowledged mail may exist on this node only).",
            st.ack_timeouts,
        );
        for (name, help, v) in [
            (
                "tandem_mirror_connections_refused_total",
                "Mirror connections refused before any TLS work (connection caps).",
                st.connections_refused,
            ),
            (
                "tandem_mirror_auth_timeouts_total",
                "Mirror connections closed for not authenticating within auth_timeout_ms.",
                st.auth_timeouts,
            ),
            (
                "tandem_mirror_own_origin_refused_total",
                "Batches refused for carrying entries of this node's own origin past its head.",
                st.own_origin_refused,
            ),
            (
                "tandem_mirror_oversized_batches_total",
                "Batches refused for holding more entries than a batch may.",
                st.oversized_batches,
            ),
            (
                "tandem_mirror_query_floods_total",
                "Links closed for sending more body queries than their budget.",
                st.query_floods,
            ),
            (
                "tandem_mirror_rollbacks_total",
                "Times a peer was found holding more of this node's origin than this node (its log went backwards).",
                st.rollbacks,
            ),
            (
                "tandem_mirror_forks_total",
                "Times a peer was found holding other entries at seqs this node holds.",
                st.forks,
            ),
        ] {
            e.counter(name, help, v);
        }
        // Outgoing links, labelled by the peer's address as configured.
        type Out = fn(&crate::repl::OutLink) -> f64;
        let out: [(&str, Kind, &str, Out); 9] = [
            (
                "tandem_mirror_out_up",
                Kind::Gauge,
                "1 while the outgoing link is connected.",
                |l| f64::from(u8::from(l.state == "connected")),
            ),
            (
                "tandem_mirror_out_sent_entries_total",
                Kind::Counter,
                "Entries sent on the link since start.",
                |l| l.sent as f64,
            ),
            (
                "tandem_mirror_out_sent_bytes_total",
                Kind::Counter,
                "Bytes of entries sent on the link since start.",
                |l| l.sent_bytes as f64,
            ),
            (
                "tandem_mirror_out_bodies_sent_total",
                Kind::Counter,
                "Message bodies sent on the link.",
                |l| l.bodies_sent as f64,
            ),
            (
                "tandem_mirror_out_body_bytes_sent_total",
                Kind::Counter,
                "Bytes of message bodies sent on the link.",
                |l| l.body_bytes_sent as f64,
            ),
            (
                "tandem_mirror_out_queue_entries",
                Kind::Gauge,
                "Entries held here that the peer has not acknowledged.",
                |l| l.queue as f64,
            ),
            (
                "tandem_mirror_out_unacked_bytes",
                Kind::Gauge,
                "Bytes sent and not yet acknowledged.",
                |l| l.unacked_bytes as f64,
            ),
            (
                "tandem_mirror_out_inflight_batches",
                Kind::Gauge,
                "Batches sent and not yet acknowledged.",
                |l| l.inflight_batches as f64,
            ),
            (
                "tandem_mirror_out_lag_seconds",
                Kind::Gauge,
                "Age of the oldest entry held here that the peer has not acknowledged, by its write time at its origin (0 when caught up).",
                |l| l.lag_secs,
            ),
        ];
        for (name, kind, help, f) in out {
            e.family(name, kind, help);
            for l in &st.outgoing {
                e.sample(name, &[("peer", &l.address)], f(l));
            }
        }
        // Incoming links, labelled by the peer's node id.
        type In = fn(&crate::repl::InLink) -> f64;
        let inc: [(&str, Kind, &str, In); 5] = [
            (
                "tandem_mirror_in_up",
                Kind::Gauge,
                "1 while the peer's link into this node is connected.",
                |l| f64::from(u8::from(l.connected)),
            ),
            (
                "tandem_mirror_in_batches_total",
                Kind::Counter,
                "Batches applied from the peer.",
                |l| l.batches as f64,
            ),
            (
                "tandem_mirror_in_entries_total",
                Kind::Counter,
                "Entries applied from the peer.",
                |l| l.applied.entries as f64,
            ),
            (
                "tandem_mirror_in_duplicates_total",
                Kind::Counter,
                "Entries from the peer already held here.",
                |l| l.applied.duplicates as f64,
            ),
            (
                "tandem_mirror_in_failed_total",
                Kind::Counter,
                "Batches from the peer that failed to apply.",
                |l| l.failed as f64,
            ),
        ];
        for (name, kind, help, f) in inc {
            e.family(name, kind, help);
            for (peer, l) in &st.incoming {
                e.sample(name, &[("peer", peer)], f(l));
            }
        }
        e.family(
            "tandem_mirror_lag_seconds",
            Kind::Histogram,
            "Per batch applied from the peer: seconds from its oldest entry's write at the origin to its durable apply here.",
        );
        for (peer, l) in &st.incoming {
            e.histogram_samples("tandem_mirror_lag_seconds", &[("peer", peer)], &l.lag);
        }
        super::Collect::collect(&self.mirror.repair, e);
        super::Collect::collect(&self.mirror.join, e);
    }
}

/// The node: identity, uptime, users.
pub struct NodeMetrics {
    pub store: Store,
    pub started: Instant,
    pub role: String,
}

impl Collect for NodeMetrics {
    fn collect(&self, e: &mut Encoder) {
        e.family(
            "tandem_build_info",
            Kind::Gauge,
            "Always 1; labels name the node, its role and the version.",
        );
        e.sample(
            "tandem_build_info",
            &[
                ("node", self.store.node_id()),
                ("role", &self.role),
                ("version", env!("CARGO_PKG_VERSION")),
            ],
            1.0,
        );
        e.gauge(
            "tandem_uptime_seconds",
            "Seconds since the daemon started.",
            self.started.elapsed().as_secs_f64(),
        );
        let users = self.store.views().users().map(|u| u.len() as f64).unwrap_or(f64::NAN);
        e.gauge("tandem_users", "User accounts (NaN when the views could not be read).", users);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Kind, Registry};

    /// Queue and lag come from the log against the peer's acknowledged
    /// vector, for links up and down; a link without acknowledgements is
    /// left alone.
    #[test]
    fn queue_and_lag_are_counted_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n", crate::store::wal_options("n")).unwrap();
        for u in ["a@example.org", "b@example.org"] {
            store
                .run_blocking(move |txn, cfs| crate::mutate::create_user(txn, cfs, u, "x".into(), 0))
                .unwrap();
        }
        let wal = store.wal();
        let origin = wal.local_origin();
        let head = wal.heads().get(origin);
        assert!(head >= 2, "{head}");
        let written = wal.entry(origin, 2).unwrap().unwrap().hlc >> 16;
        let link = |state: &str, acked: Option<u64>| crate::repl::OutLink {
            address: "p:1".into(),
            state: state.into(),
            queue: 99,
            lag_secs: 99.0,
            acked: acked.map(|s| [(format!("{:016x}", origin.0), s)].into()).unwrap_or_default(),
            ..Default::default()
        };
        let mut st = crate::repl::MirrorStatus {
            outgoing: vec![
                link("disconnected", Some(1)),
                link("connected", Some(head)),
                link("connecting", None),
            ],
            ..Default::default()
        };
        st.count_from_log(wal, written + 5_000);
        let o = &st.outgoing;
        assert_eq!((o[0].queue, o[0].lag_secs, o[0].local_added), (head - 1, 5.0, head));
        assert_eq!((o[1].queue, o[1].lag_secs), (0, 0.0));
        assert_eq!((o[2].queue, o[2].lag_secs, o[2].local_added), (99, 99.0, head));
    }

    /// Every family the daemon exposes is in the operations manual's table
    /// with its type, and the table names nothing the daemon lacks.
    #[test]
    fn every_metric_is_documented_with_its_type() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n", crate::store::wal_options("n")).unwrap();
        let mut r = Registry::default();
        r.register(Arc::new(NodeMetrics {
            store: store.clone(),
            started: Instant::now(),
            role: "master".into(),
        }));
        r.register(WalMetrics::attach(&store));
        r.register(Arc::new(crate::lmtp::Counters::default()));
        r.register(Arc::new(crate::imap::Counters::default()));
        r.register(Arc::new(crate::pop3::Counters::default()));
        r.register(Arc::new(MirrorMetrics {
            mirror: Arc::new(crate::repl::Mirror::default()),
            store: store.clone(),
        }));
        r.register(Arc::new(crate::watchdog::Metrics::default()));
        r.register(Arc::new(crate::sidefiles::SideFiles::default()));
        let families = r.encoder().families;
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
        let table: Vec<(String, String)> = docs
            .lines()
            .filter_map(|l| {
                let mut cells = l.strip_prefix("| `tandem_")?.split(" | ");
                let name = format!("tandem_{}", cells.next()?.strip_suffix('`')?);
                Some((name, cells.next()?.to_string()))
            })
            .collect();
        for (name, kind, _) in &families {
            let want = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert!(
                table.iter().any(|(n, k)| n == name && k == want),
                "{name} ({want}) is missing from docs/operations.md"
            );
        }
        for (n, _) in &table {
            assert!(
                families.iter().any(|(f, _, _)| f == n),
                "docs/operations.md names {n}, which is not exposed"
            );
        }
        let mut names: Vec<_> = families.iter().map(|f| &f.0).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a family is declared twice");
    }
}
