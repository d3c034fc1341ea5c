//! The IMAP listener: accept, enforce connection limits, run one
//! [`session::Session`] per connection with its own tracing span.
//!
//! Command syntax is parsed by imap-codec after the bounded framer in
//! [`crate::proto::imap::fragment`] has split the input into whole commands;
//! the session applies commands to the store and turns committed changes
//! (from any session, LMTP or replication) into untagged responses.

mod conn;
mod fetch;
pub mod session;

use crate::config::ImapConfig;
use crate::store::Store;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

crate::metrics::metrics!(
    /// Metrics of the IMAP listeners (`tandem status` shows the counters).
    Counters, CountersSnapshot, "tandem_imap_" {
        counters {
            connections: "connections_total", "IMAP connections accepted (plain and implicit TLS).";
            refused_busy: "refused_busy_total", "IMAP connections refused because max_connections or max_connections_per_ip were open.";
            logins: "logins_total", "Successful LOGIN and AUTHENTICATE.";
            login_failures: "login_failures_total", "Failed LOGIN and AUTHENTICATE.";
            commands: "commands_total", "Commands received.";
            bad_commands: "bad_commands_total", "Commands answered BAD.";
            appends: "appends_total", "Messages stored by APPEND.";
            timeouts: "timeouts_total", "Connections closed for idling.";
        }
        gauges {
            in_flight: "connections_open", "IMAP connections open now.";
        }
        histograms {
            command_seconds: "command_seconds", "Time from a whole command read to its response flushed (IDLE counts its whole wait).", crate::metrics::LATENCY;
        }
    }
);

/// Add one to a counter.
pub(crate) fn bump(c: &crate::metrics::Counter) {
    c.inc();
}

/// Failed-login memory per IP address and per user: after a few failures
/// each further attempt waits longer (capped), which slows guessing without
/// locking anyone out.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Throttle {
    const FREE: u32 = 3;
    const FORGET: Duration = Duration::from_secs(15 * 60);

    /// How long to wait before answering a login attempt for these keys.
    pub fn delay(&self, keys: &[String]) -> Duration {
        let m = self.failures.lock().expect("throttle lock");
        let worst = keys
            .iter()
            .filter_map(|k| m.get(k))
            .filter(|(_, at)| at.elapsed() < Self::FORGET)
            .map(|(n, _)| *n)
            .max()
            .unwrap_or(0);
        if worst < Self::FREE {
            Duration::ZERO
        } else {
            Duration::from_millis((250u64 << (worst - Self::FREE).min(5)).min(8000))
        }
    }

    pub fn failed(&self, keys: &[String]) {
        let mut m = self.failures.lock().expect("throttle lock");
        if m.len() > 100_000 {
            m.retain(|_, (_, at)| at.elapsed() < Self::FORGET);
        }
        for k in keys {
            let e = m.entry(k.clone()).or_insert((0, Instant::now()));
            if e.1.elapsed() >= Self::FORGET {
                e.0 = 0;
            }
            e.0 += 1;
            e.1 = Instant::now();
        }
    }

    pub fn succeeded(&self, keys: &[String]) {
        let mut m = self.failures.lock().expect("throttle lock");
        for k in keys {
            m.remove(k);
        }
    }
}

/// Connections per key (IP address or user), bounded.
#[derive(Default)]
pub struct Slots {
    held: Mutex<HashMap<String, usize>>,
}

/// A held slot; released on drop.
pub struct SlotGuard {
    slots: Arc<Slots>,
    key: String,
}

impl Slots {
    pub fn take(self: &Arc<Self>, key: String, max: usize) -> Option<SlotGuard> {
        let mut m = self.held.lock().expect("slots lock");
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SlotGuard { slots: self.clone(), key })
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut m = self.slots.held.lock().expect("slots lock");
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Everything sessions share.
pub struct Shared {
    pub store: Store,
    pub cfg: ImapConfig,
    pub counters: Arc<Counters>,
    pub throttle: Throttle,
    pub per_ip: Arc<Slots>,
    pub per_user: Arc<Slots>,
    pub cache: fetch::Cache,
    /// TLS for STARTTLS and the implicit-TLS listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `ack = "peer"` for APPEND.
    pub durability: crate::repl::Durability,
}

impl Shared {
    pub fn new(
        store: Store,
        cfg: ImapConfig,
        counters: Arc<Counters>,
        tls: Option<Arc<rustls::ServerConfig>>,
        durability: crate::repl::Durability,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            store,
            cfg,
            counters,
            throttle: Throttle::default(),
            per_ip: Arc::new(Slots::default()),
            per_user: Arc::new(Slots::default()),
            cache: fetch::Cache::new(4096),
            tls,
            durability,
        })
    }
}

/// Accept connections until shutdown; then let sessions end (bounded).
/// With `implicit_tls`, every connection starts with a TLS handshake.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, implicit_tls: bool, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(shared.cfg.max_connections));
    loop {
        let Some((mut stream, peer)) = crate::server::accept_until_shutdown(&listener, &mut shutdown, "imap").await else {
            break;
        };
        bump(&shared.counters.connections);
        let ip_slot = shared.per_ip.take(peer.ip().to_string(), shared.cfg.max_connections_per_ip);
        let permit = slots.clone().try_acquire_owned().ok();
        let (Some(permit), Some(ip_slot)) = (permit, ip_slot) else {
            bump(&shared.counters.refused_busy);
            tokio::spawn(async move {
                let _ = stream.write_all(b"* BYE Too many connections, try again later\r\n").await;
            });
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("imap", %peer, user = tracing::field::Empty);
        tokio::spawn(
            async move {
                shared.counters.in_flight.inc();
                let _ = stream.set_nodelay(true);
                let conn = match (&shared.tls, implicit_tls) {
                    (Some(tls), true) => match tokio::time::timeout(
                        Duration::from_secs(shared.cfg.preauth_timeout_secs),
                        tokio_rustls::TlsAcceptor::from(tls.clone()).accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => Some(conn::Conn::Tls(Box::new(s))),
                        Ok(Err(e)) => {
                            tracing::info!(error = %e, "TLS handshake failed");
                            None
                        }
                        Err(_) => None,
                    },
                    _ => Some(conn::Conn::Plain(stream)),
                };
                if let Some(conn) = conn {
                    let mut s = session::Session::new(conn, peer, shared.clone(), shutdown);
                    if let Err(e) = s.run().await {
                        tracing::debug!(error = %e, "session ended with an error");
                    }
                }
                shared.counters.in_flight.dec();
                drop(ip_slot);
                drop(permit);
            }
            .instrument(span),
        );
    }
    let all = u32::try_from(shared.cfg.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all)).await;
}

/// Is plaintext authentication allowed for this peer?
pub fn plaintext_ok(cfg: &ImapConfig, peer: &SocketAddr, tls: bool) -> bool {
    use crate::config::PlaintextAuth;
    tls || match cfg.plaintext_auth {
        PlaintextAuth::Always => true,
        PlaintextAuth::Never => false,
        PlaintextAuth::Loopback => match peer.ip() {
            IpAddr::V4(a) => a.is_loopback(),
            IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
        },
    }
}
