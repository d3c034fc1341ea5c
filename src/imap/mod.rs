//! The IMAP listener: accept, enforce connection limits, run one
//! [`session::Session`] per connection with its own tracing span.
//!
//! Command syntax is parsed by imap-codec after the bounded framer in
//! [`crate::proto::imap::fragment`] has split the input into whole commands;
//! the session applies commands to the store and turns committed changes
//! (from any session, LMTP or replication) into untagged responses.

pub(crate) mod conn;
pub mod counts;
mod deflate;
mod fetch;
mod modseq;
pub mod pattern;
pub mod session;

use crate::config::ImapConfig;
use crate::settings::{Key, Settings};
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
            login_throttled: "login_throttled_total", "LOGIN and AUTHENTICATE refused unchecked because the address's or the user's login budget was spent.";
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

/// The largest literal before login: RFC 7888's LITERAL- limit. A larger
/// synchronising literal is refused without a continuation; a larger
/// non-synchronising one closes the connection.
pub const PREAUTH_MAX_LITERAL: u64 = 4096;
/// The longest command line before login.
pub const PREAUTH_MAX_LINE: usize = 8192;

/// The framer of a connection that has not logged in.
fn preauth_framer(shared: &Shared) -> crate::proto::imap::fragment::Framer {
    crate::proto::imap::fragment::Framer::new(
        shared.cfg.max_line.min(PREAUTH_MAX_LINE),
        shared.settings.get(Key::ImapMaxLiteral).min(PREAUTH_MAX_LITERAL),
    )
}

/// Add one to a counter.
pub(crate) fn bump(c: &crate::metrics::Counter) {
    c.inc();
}

/// Login budgets per IP address and per user: token buckets of
/// `login_attempts_per_ip` / `login_attempts_per_user` attempts that refill
/// completely over `login_lockout_secs`. Every attempt takes one token from
/// both buckets before the password is checked, so parallel connections
/// share one budget; a successful login gives its tokens back. An attempt
/// that finds a bucket empty waits while attempts that may give tokens back
/// are still being checked (many honest connections logging in at once),
/// and is refused otherwise, without checking anything.
pub struct Throttle {
    buckets: Mutex<HashMap<String, Bucket>>,
    /// The budgets and the refill time, read at each attempt (replicated
    /// settings change them while the node runs).
    settings: Arc<Settings>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    cap: u32,
    /// Attempts that took a token and are being checked.
    in_flight: u32,
}

impl Bucket {
    fn level(&self, now: Instant, refill: Duration) -> f64 {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() / refill.as_secs_f64() * f64::from(self.cap);
        (self.tokens + gained).min(f64::from(self.cap))
    }
}

/// What [`Throttle::attempt`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A token was taken from each budget: check the password, then call
    /// [`Throttle::done`].
    Go,
    /// A budget is empty but attempts in flight may give tokens back: ask
    /// again shortly.
    Wait,
    /// A budget is spent.
    Refused,
}

/// The key of a client address: IPv6 clients usually hold a whole /64.
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("ip:{a}"),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = a.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl Throttle {
    const MAX_KEYS: usize = 100_000;

    pub fn new(settings: Arc<Settings>) -> Throttle {
        Throttle {
            buckets: Mutex::new(HashMap::new()),
            settings,
        }
    }

    fn refill(&self) -> Duration {
        self.settings.secs(Key::ImapLoginLockoutSecs).max(Duration::from_secs(1))
    }

    fn keys(&self, ip: IpAddr, user: &str) -> [(String, u32); 2] {
        [
            (ip_key(ip), self.settings.count(Key::ImapLoginAttemptsPerIp)),
            (format!("user:{user}"), self.settings.count(Key::ImapLoginAttemptsPerUser)),
        ]
    }

    /// Take one attempt from the budgets of `ip` and `user` (all or nothing).
    pub fn attempt(&self, ip: IpAddr, user: &str) -> Attempt {
        let keys = self.keys(ip, user);
        let refill = self.refill();
        let now = Instant::now();
        let mut m = self.buckets.lock().expect("throttle lock");
        let mut verdict = Attempt::Go;
        for (k, cap) in &keys {
            if *cap == 0 {
                continue;
            }
            if let Some(b) = m.get_mut(k) {
                if b.cap != *cap {
                    // The budget was changed (a replicated setting): a
                    // larger one adds the difference at once, a smaller
                    // one caps what the bucket holds.
                    let level = b.level(now, refill);
                    b.tokens = if *cap > b.cap {
                        level + f64::from(*cap - b.cap)
                    } else {
                        level.min(f64::from(*cap))
                    };
                    b.at = now;
                    b.cap = *cap;
                }
                if b.level(now, refill) < 1.0 {
                    verdict = match (verdict, b.in_flight) {
                        (Attempt::Refused, _) | (_, 0) => Attempt::Refused,
                        _ => Attempt::Wait,
                    };
                }
            }
        }
        if verdict != Attempt::Go {
            return verdict;
        }
        if m.len() >= Self::MAX_KEYS {
            // Full buckets with nothing in flight carry no memory.
            m.retain(|_, b| b.in_flight > 0 || b.level(now, refill) < f64::from(b.cap));
        }
        for (k, cap) in keys {
            if cap == 0 {
                continue;
            }
            let b = m.entry(k).or_insert(Bucket {
                tokens: f64::from(cap),
                at: now,
                cap,
                in_flight: 0,
            });
            b.tokens = b.level(now, refill) - 1.0;
            b.at = now;
            b.in_flight += 1;
        }
        Attempt::Go
    }

    /// An attempt that got [`Attempt::Go`] is decided; a correct password
    /// gives its tokens back.
    pub fn done(&self, ip: IpAddr, user: &str, correct: bool) {
        let now = Instant::now();
        let refill = self.refill();
        let mut m = self.buckets.lock().expect("throttle lock");
        for (k, _) in self.keys(ip, user) {
            if let Some(b) = m.get_mut(&k) {
                b.in_flight = b.in_flight.saturating_sub(1);
                if correct {
                    b.tokens = (b.level(now, refill) + 1.0).min(f64::from(b.cap));
                    b.at = now;
                }
            }
        }
    }
}

/// What [`check_credentials`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    Ok,
    /// Wrong user or password (counted as a failed login).
    Wrong,
    /// The address's or the user's login budget is spent; nothing was checked.
    Throttled,
}

/// A PHC string to verify against when the user does not exist, so that a
/// missing user costs the same as a wrong password.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Zxw3KcNbY8+KyS7cV0nBKaP3WA2lxn6sGDD3x7E0kN8";

/// Check a user's password (already normalised) under the login budgets
/// of [`Throttle`], off the async workers. Shared by IMAP and POP3, so one
/// budget covers both ports.
/// An attempt that finds a budget empty while attempts in flight may give
/// tokens back waits for them, until `deadline` (the login deadline).
pub async fn check_credentials(shared: &Shared, ip: IpAddr, user: &str, pw: crate::auth::Secret, deadline: Instant) -> Credentials {
    use crate::auth::verify_password;
    use crate::views::ViewRead;
    loop {
        match shared.throttle.attempt(ip, user) {
            Attempt::Go => break,
            Attempt::Wait if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Attempt::Wait | Attempt::Refused => {
                bump(&shared.counters.login_throttled);
                tracing::info!(user = %user, "login refused: too many attempts");
                return Credentials::Throttled;
            }
        }
    }
    let rec = shared.store.views().user(user).ok().flatten();
    let ok = match rec {
        // A recent success with this password and this stored hash: the
        // attempt was counted above all the same.
        Some(rec)
            if shared
                .auth_cache
                .hit(user, &pw, &rec.password_hash, shared.settings.secs(Key::ImapAuthCacheSecs)) =>
        {
            true
        }
        Some(rec) => {
            let checked = tokio::task::spawn_blocking(move || {
                let ok = verify_password(&pw, &rec.password_hash);
                (ok, pw, rec.password_hash)
            })
            .await;
            match checked {
                Ok((true, pw, phc)) => {
                    shared
                        .auth_cache
                        .insert(user, &pw, &phc, shared.settings.secs(Key::ImapAuthCacheSecs));
                    true
                }
                _ => false,
            }
        }
        None => {
            let _ = tokio::task::spawn_blocking(move || verify_password(&pw, DUMMY_HASH)).await;
            false
        }
    };
    shared.throttle.done(ip, user, ok);
    if ok {
        Credentials::Ok
    } else {
        bump(&shared.counters.login_failures);
        tracing::info!(user = %user, "login failed");
        Credentials::Wrong
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

/// How many successful password checks are remembered at most (for
/// `imap.auth_cache_secs`).
pub const AUTH_CACHE_MAX: usize = 100_000;

/// Everything sessions share.
pub struct Shared {
    pub store: Store,
    pub cfg: ImapConfig,
    /// Replicated settings; the keys they cover are read here, not in `cfg`.
    pub settings: Arc<Settings>,
    pub counters: Arc<Counters>,
    pub throttle: Throttle,
    pub per_ip: Arc<Slots>,
    pub per_user: Arc<Slots>,
    pub cache: fetch::Cache,
    /// STATUS counts of large mailboxes ([`counts`]).
    pub counts: counts::StatusCounts,
    /// Recent successful password checks (see [`crate::auth::AuthCache`]).
    pub auth_cache: crate::auth::AuthCache,
    /// TLS for STARTTLS and the implicit-TLS listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `ack = "peer"` for APPEND.
    pub durability: crate::repl::Durability,
}

impl Shared {
    pub fn new(
        store: Store,
        cfg: ImapConfig,
        settings: Arc<Settings>,
        counters: Arc<Counters>,
        tls: Option<Arc<rustls::ServerConfig>>,
        durability: crate::repl::Durability,
    ) -> Arc<Shared> {
        let throttle = Throttle::new(settings.clone());
        let auth_cache = crate::auth::AuthCache::new(AUTH_CACHE_MAX);
        Arc::new(Shared {
            store,
            cfg,
            settings,
            counters,
            throttle,
            per_ip: Arc::new(Slots::default()),
            per_user: Arc::new(Slots::default()),
            cache: fetch::Cache::new(4096),
            counts: counts::StatusCounts::default(),
            auth_cache,
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
        let ip_slot = shared
            .per_ip
            .take(peer.ip().to_string(), shared.settings.get(Key::ImapMaxConnectionsPerIp) as usize);
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
                        Duration::from_secs(shared.cfg.handshake_timeout_secs),
                        tokio_rustls::TlsAcceptor::from(tls.clone()).accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => Some(conn::Conn::Tls(Box::new(s))),
                        Ok(Err(e)) => {
                            tracing::info!(error = %e, "TLS handshake failed");
                            None
                        }
                        Err(_) => {
                            bump(&shared.counters.timeouts);
                            tracing::info!("TLS handshake timed out");
                            None
                        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(per_ip: u32, per_user: u32) -> Throttle {
        let cfg = crate::config::Config {
            imap: ImapConfig {
                login_attempts_per_ip: per_ip,
                login_attempts_per_user: per_user,
                login_lockout_secs: 3600,
                ..ImapConfig::default()
            },
            ..Default::default()
        };
        Throttle::new(Arc::new(Settings::new(&cfg)))
    }

    #[test]
    fn a_replicated_budget_applies_to_the_next_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n", crate::store::wal_options("n")).unwrap();
        let settings = Arc::new(Settings::new(&crate::config::Config::default()));
        let t = Throttle::new(settings.clone());
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let set = |v: &str| {
            let v = v.to_string();
            store
                .run_blocking(move |txn, cfs| crate::mutate::set_config(txn, cfs, "imap.login_attempts_per_ip", &v))
                .unwrap();
            settings.refresh(&store.views()).unwrap();
        };
        set("2");
        for _ in 0..2 {
            assert_eq!(t.attempt(ip, "u"), Attempt::Go);
            t.done(ip, "u", false);
        }
        assert_eq!(t.attempt(ip, "u"), Attempt::Refused);
        // Raised: the difference is there at once.
        set("4");
        for _ in 0..2 {
            assert_eq!(t.attempt(ip, "u"), Attempt::Go);
            t.done(ip, "u", false);
        }
        assert_eq!(t.attempt(ip, "u"), Attempt::Refused);
        // 0: no per-address budget at all.
        set("0");
        assert_eq!(t.attempt(ip, "u"), Attempt::Go);
    }

    #[test]
    fn budgets_are_taken_before_checking_and_given_back_on_success() {
        let t = throttle(3, 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // Three in flight at once: the fourth waits for them.
        for _ in 0..3 {
            assert_eq!(t.attempt(ip, "u"), Attempt::Go);
        }
        assert_eq!(t.attempt(ip, "u"), Attempt::Wait);
        // One succeeds (its token comes back), two fail.
        t.done(ip, "u", true);
        assert_eq!(t.attempt(ip, "u"), Attempt::Go);
        t.done(ip, "u", false);
        t.done(ip, "u", false);
        t.done(ip, "u", false);
        // Nothing in flight, nothing left: refused outright.
        assert_eq!(t.attempt(ip, "u"), Attempt::Refused);
        assert_eq!(t.attempt(ip, "v"), Attempt::Refused);
        // Another address is not affected.
        assert_eq!(t.attempt("192.0.2.2".parse().unwrap(), "u"), Attempt::Go);
    }

    #[test]
    fn user_budget_spans_addresses_and_zero_means_none() {
        let t = throttle(0, 2);
        for i in 1..=2 {
            let ip: IpAddr = format!("192.0.2.{i}").parse().unwrap();
            assert_eq!(t.attempt(ip, "u"), Attempt::Go);
            t.done(ip, "u", false);
        }
        assert_eq!(t.attempt("192.0.2.9".parse().unwrap(), "u"), Attempt::Refused);
        assert_eq!(t.attempt("192.0.2.9".parse().unwrap(), "w"), Attempt::Go);
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(
            ip_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            ip_key("2001:db8:1:2:bbbb::2".parse().unwrap())
        );
        assert_ne!(
            ip_key("2001:db8:1:2::1".parse().unwrap()),
            ip_key("2001:db8:1:3::1".parse().unwrap())
        );
        assert_eq!(ip_key("::ffff:192.0.2.1".parse().unwrap()), "ip:192.0.2.1");
    }
}
