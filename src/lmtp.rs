//! The LMTP listener: a thin tokio driver around the sans-io session in
//! [`crate::proto::lmtp`]. It owns the socket, the timeouts and the store
//! calls; the session owns the protocol.
//!
//! Delivery: one transaction per message for all its recipients. The body
//! (with `Return-Path:`, and `Delivered-To:` when there is one recipient, as
//! Dovecot writes them) is stored once; each recipient gets its own append
//! event. Replies go out only after that transaction is durable.

use crate::config::LmtpConfig;
use crate::event::Flags;
use crate::mutate::{self, MutationError, NewMessage};
use crate::proto::lmtp::{Action, Delivery, DeliveryOutcome, Limits, RcptOutcome, Recipient, Reply, Session};
use crate::store::Store;
use crate::views::ViewRead;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

crate::counters::counters!(
    /// Counters of the LMTP listener (shown by `tandem status`).
    Counters,
    CountersSnapshot {
        connections,
        in_flight,
        refused_busy,
        messages,
        delivered,
        bytes,
        rejected_unknown_user,
        rejected_oversize,
        rejected_no_mailbox,
        rejected_syntax,
        temp_failures,
        timeouts,
        aborted_in_data,
        retries_already_stored,
    }
);

use crate::server::wait_shutdown;

use crate::counters::bump;

/// Accept connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    cfg: Arc<LmtpConfig>,
    counters: Arc<Counters>,
    durability: crate::repl::Durability,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let tempfailed = Arc::new(Tempfailed::default());
    let hostname = Arc::new(cfg.hostname());
    loop {
        let Some((stream, peer)) = crate::server::accept_until_shutdown(&listener, &mut shutdown, "lmtp").await else {
            break;
        };
        bump(&counters.connections, 1);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            bump(&counters.refused_busy, 1);
            tokio::spawn(async move {
                let mut s = stream;
                let _ = s.write_all(b"421 4.3.2 Too many connections, try again later\r\n").await;
            });
            continue;
        };
        let (store, cfg, counters, hostname, shutdown) = (store.clone(), cfg.clone(), counters.clone(), hostname.clone(), shutdown.clone());
        let durability = durability.clone();
        let tempfailed = tempfailed.clone();
        let span = tracing::info_span!("lmtp", %peer);
        tokio::spawn(
            async move {
                bump(&counters.in_flight, 1);
                if let Err(e) = connection(stream, peer, &store, &cfg, &counters, &hostname, &durability, &tempfailed, shutdown).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            }
            .instrument(span),
        );
    }
    // Connections finish the message they are receiving (bounded by the idle
    // timeout); the log closes only after they are done.
    let all = u32::try_from(cfg.max_connections).unwrap_or(u32::MAX);
    let drain = Duration::from_secs(cfg.idle_timeout_secs.clamp(1, 30) + 5);
    if tokio::time::timeout(drain, slots.acquire_many(all)).await.is_err() {
        tracing::warn!(
            in_flight = counters.in_flight.load(Ordering::Relaxed),
            "lmtp connections still open at shutdown"
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    store: &Store,
    cfg: &LmtpConfig,
    counters: &Counters,
    hostname: &str,
    durability: &crate::repl::Durability,
    tempfailed: &Tempfailed,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let limits = Limits {
        max_message: cfg.max_message_size,
        ..Limits::default()
    };
    let mut session = Session::new(hostname, limits);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let idle = Duration::from_secs(cfg.idle_timeout_secs.max(1));
    let deadline = Instant::now() + Duration::from_secs(cfg.max_session_secs.max(1));
    let mut seen = (0, 0);
    loop {
        while let Some(action) = session.poll() {
            match action {
                Action::Reply(bytes) => out.extend_from_slice(&bytes),
                Action::CheckRecipient(r) => {
                    let outcome = check_recipient(store, &r, counters);
                    session.rcpt_result(outcome);
                }
                Action::Deliver(d) => {
                    // Everything said so far goes out before the (possibly
                    // slow) durable write.
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                        out.clear();
                    }
                    let outcomes = deliver(store, cfg, counters, durability, tempfailed, d, peer).await;
                    session.delivery_result(outcomes);
                }
                Action::Close => {
                    stream.write_all(&out).await?;
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
            }
        }
        fold_counters(&session, counters, &mut seen);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if session.is_closed() {
            return Ok(());
        }
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        let n = tokio::select! {
            r = tokio::time::timeout(wait, stream.read(&mut buf)) => match r {
                Ok(r) => r?,
                Err(_) => {
                    bump(&counters.timeouts, 1);
                    let msg: &[u8] = if Instant::now() >= deadline {
                        b"421 4.4.2 Session time limit reached, closing connection\r\n"
                    } else {
                        b"421 4.4.2 Idle timeout, closing connection\r\n"
                    };
                    let _ = stream.write_all(msg).await;
                    if session.in_message() {
                        bump(&counters.aborted_in_data, 1);
                    }
                    return Ok(());
                }
            },
            _ = wait_shutdown(&mut shutdown) => {
                if !session.in_message() {
                    let _ = stream.write_all(b"421 4.3.2 Server shutting down\r\n").await;
                    return Ok(());
                }
                // Mid-message: let the client finish within the idle timeout.
                match tokio::time::timeout(idle, stream.read(&mut buf)).await {
                    Ok(r) => r?,
                    Err(_) => return Ok(()),
                }
            }
        };
        if n == 0 {
            if session.in_message() {
                bump(&counters.aborted_in_data, 1);
                tracing::info!("client closed the connection in the middle of a message; nothing stored");
            }
            session.input_closed();
            // Commands received in full before the end still run.
            while let Some(action) = session.poll() {
                if let Action::Reply(bytes) = action {
                    let _ = stream.write_all(&bytes).await;
                } else if let Action::CheckRecipient(_) = action {
                    session.rcpt_result(RcptOutcome::Reject(Reply::new(451, "4.4.2", "Connection closed")));
                } else if let Action::Deliver(d) = action {
                    let outcomes = deliver(store, cfg, counters, durability, tempfailed, d, peer).await;
                    session.delivery_result(outcomes);
                } else {
                    break;
                }
            }
            return Ok(());
        }
        session.feed(&buf[..n]);
    }
}

/// Add what the session counted since the last call to the listener's counters.
fn fold_counters(session: &Session, counters: &Counters, seen: &mut (u64, u64)) {
    let c = session.counters();
    let r = &c.rejected;
    let syntax = r.unknown_command + r.wrong_greeting + r.syntax + r.sequence + r.line_too_long + r.parameters;
    bump(&counters.rejected_syntax, syntax.saturating_sub(seen.0));
    bump(&counters.rejected_oversize, c.oversize.saturating_sub(seen.1));
    *seen = (syntax, c.oversize);
}

/// The account a recipient address names: the full address if such a user
/// exists, else its local part (Dovecot's `%Ln`).
pub fn resolve_user(store: &Store, r: &Recipient) -> Result<Option<String>, crate::views::ViewError> {
    let v = store.views();
    let full = format!("{}@{}", r.local, r.domain);
    for cand in [full.as_str(), r.local.as_str()] {
        if !cand.is_empty() && v.user(cand)?.is_some() {
            return Ok(Some(cand.to_string()));
        }
    }
    Ok(None)
}

fn check_recipient(store: &Store, r: &Recipient, counters: &Counters) -> RcptOutcome {
    match resolve_user(store, r) {
        Ok(Some(_)) => RcptOutcome::Accept,
        Ok(None) => {
            bump(&counters.rejected_unknown_user, 1);
            RcptOutcome::Reject(Reply::new(550, "5.1.1", format!("<{}> User doesn't exist", r.address)))
        }
        Err(e) => {
            bump(&counters.temp_failures, 1);
            tracing::error!(error = %e, "store unavailable during RCPT");
            RcptOutcome::Reject(Reply::new(451, "4.3.0", "Temporary failure: mail store unavailable"))
        }
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Trace headers in front of the body, as Dovecot's LMTP writes them:
/// `Return-Path` always, `Delivered-To` only for a single recipient so the
/// stored body is the same for all recipients (single-instance).
fn with_trace_headers(d: &Delivery) -> Vec<u8> {
    let mut b = Vec::with_capacity(d.body.len() + 128);
    b.extend_from_slice(format!("Return-Path: <{}>\r\n", d.mail_from).as_bytes());
    if d.recipients.len() == 1 {
        b.extend_from_slice(format!("Delivered-To: {}\r\n", d.recipients[0].address).as_bytes());
    }
    b.extend_from_slice(&d.body);
    b
}

/// Deliveries answered `451 4.4.3` under `ack = "peer"`: stored here, but
/// not yet confirmed by the mirror. The MTA will retry them; a retry of the
/// same body for the same envelope recipient, while the copy stored the
/// first time still exists, is answered for that copy instead of storing a
/// second one.
///
/// Kept in memory and bounded ([`TEMPFAILED_MAX`] deliveries, the oldest
/// forgotten first): a retry after a restart of this node, or after more
/// than that many other tempfailed deliveries, stores a second copy (the
/// behaviour without this table), never loses one.
#[derive(Default)]
pub struct Tempfailed(std::sync::Mutex<TempfailedInner>);

/// Deliveries [`Tempfailed`] remembers at most.
pub const TEMPFAILED_MAX: usize = 10_000;

#[derive(Default)]
struct TempfailedInner {
    map: std::collections::HashMap<RetryKey, StoredCopy>,
    order: std::collections::VecDeque<RetryKey>,
}

/// (envelope recipient, lower-cased; blake3 of the stored body).
type RetryKey = (String, [u8; 32]);

/// Where the first copy went.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredCopy {
    user: String,
    uidvalidity: u32,
    uid: u32,
    guid: crate::event::Id,
}

impl Tempfailed {
    fn get(&self, key: &RetryKey) -> Option<StoredCopy> {
        self.0.lock().expect("tempfailed lock").map.get(key).cloned()
    }

    fn remember(&self, key: RetryKey, copy: StoredCopy) {
        let mut t = self.0.lock().expect("tempfailed lock");
        if t.map.insert(key.clone(), copy).is_none() {
            t.order.push_back(key);
        }
        while t.order.len() > TEMPFAILED_MAX {
            if let Some(old) = t.order.pop_front() {
                t.map.remove(&old);
            }
        }
    }

    fn forget(&self, key: &RetryKey) {
        let mut t = self.0.lock().expect("tempfailed lock");
        if t.map.remove(key).is_some() {
            t.order.retain(|k| k != key);
        }
    }
}

/// Whether the copy stored by an earlier, tempfailed delivery still exists.
fn still_stored(views: &impl ViewRead, c: &StoredCopy) -> Result<bool, crate::views::ViewError> {
    for mb in views.mailboxes(&c.user)? {
        if mb.uidvalidity == c.uidvalidity {
            return Ok(views.message(mb.id, c.uid)?.is_some_and(|m| m.guid == c.guid));
        }
    }
    Ok(false)
}

/// Why one recipient of an accepted message was not delivered.
enum Rejected {
    UnknownUser,
    NoInbox,
}

async fn deliver(
    store: &Store,
    cfg: &LmtpConfig,
    counters: &Counters,
    durability: &crate::repl::Durability,
    tempfailed: &Tempfailed,
    d: Delivery,
    peer: SocketAddr,
) -> Vec<DeliveryOutcome> {
    let body = with_trace_headers(&d);
    let size = body.len() as u64;
    let msg = NewMessage::new(body, Flags::default(), now());
    // Resolve accounts and folders outside the writer; the transaction
    // re-checks them against the views it sees.
    let targets: Vec<Option<(String, Option<String>)>> = d
        .recipients
        .iter()
        .map(|r| {
            resolve_user(store, r)
                .ok()
                .flatten()
                .map(|u| (u, if cfg.detail_folders { r.detail.clone() } else { None }))
        })
        .collect();
    let n = targets.len();
    // A retry of a tempfailed delivery: the copy stored then, if it exists.
    let keys: Vec<RetryKey> = d.recipients.iter().map(|r| (r.address.to_lowercase(), msg.blob.0)).collect();
    let earlier: Vec<Option<StoredCopy>> = keys.iter().map(|k| tempfailed.get(k)).collect();
    let result = store
        .run(move |txn, cfs| {
            let mut outcomes = Vec::with_capacity(n);
            for (t, earlier) in targets.iter().zip(earlier) {
                let Some((user, detail)) = t else {
                    outcomes.push(Err(Rejected::UnknownUser));
                    continue;
                };
                if let Some(c) = earlier.filter(|c| &c.user == user) {
                    if still_stored(&crate::views::TxnViews { txn, cf: cfs.views }, &c)? {
                        outcomes.push(Ok((c, true)));
                        continue;
                    }
                }
                let mut placed = None;
                if let Some(folder) = detail {
                    match mutate::append(txn, cfs, user, folder, &msg) {
                        Ok(p) => placed = Some(p),
                        Err(MutationError::NoSuchMailbox(_) | MutationError::InvalidName { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                let placed = match placed {
                    Some(p) => Ok(p),
                    None => match mutate::append(txn, cfs, user, "INBOX", &msg) {
                        Ok(p) => Ok(p),
                        Err(MutationError::NoSuchUser(_)) => Err(Rejected::UnknownUser),
                        Err(MutationError::NoSuchMailbox(_)) => Err(Rejected::NoInbox),
                        Err(e) => return Err(e),
                    },
                };
                outcomes.push(placed.map(|p| {
                    let c = StoredCopy {
                        user: user.clone(),
                        uidvalidity: p.uidvalidity,
                        uid: p.uid,
                        guid: p.guid,
                    };
                    (c, false)
                }));
            }
            Ok(outcomes)
        })
        .await;
    match result {
        Ok(outcomes) => {
            bump(&counters.messages, 1);
            bump(&counters.bytes, size);
            // ack = "peer": the reply waits until the peers hold it too;
            // past the bound, "tempfail" turns the successes (only) into 451.
            let unreplicated = durability.settle(store).await.is_err();
            outcomes
                .into_iter()
                .zip(keys)
                .map(|(o, key)| match o {
                    Ok((copy, again)) => {
                        if again {
                            bump(&counters.retries_already_stored, 1);
                        }
                        if unreplicated {
                            bump(&counters.temp_failures, 1);
                            tempfailed.remember(key, copy);
                            DeliveryOutcome::Reply(Reply::new(451, "4.4.3", "Stored here but not yet on the mirror; try again"))
                        } else {
                            tempfailed.forget(&key);
                            bump(&counters.delivered, 1);
                            DeliveryOutcome::Ok
                        }
                    }
                    Err(Rejected::UnknownUser) => {
                        bump(&counters.rejected_unknown_user, 1);
                        DeliveryOutcome::Reply(Reply::new(550, "5.1.1", "User doesn't exist"))
                    }
                    Err(Rejected::NoInbox) => {
                        bump(&counters.rejected_no_mailbox, 1);
                        DeliveryOutcome::Reply(Reply::new(550, "5.2.1", "Mailbox unavailable"))
                    }
                })
                .collect()
        }
        Err(e) => {
            bump(&counters.temp_failures, n as u64);
            tracing::error!(error = %e, %peer, "delivery failed; answering with a temporary error");
            (0..n)
                .map(|_| DeliveryOutcome::Reply(Reply::new(451, "4.3.0", "Temporary failure: mail store unavailable")))
                .collect()
        }
    }
}
