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
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

crate::metrics::metrics!(
    /// Metrics of the LMTP listener (`tandem status` shows the counters).
    Counters, CountersSnapshot, "tandem_lmtp_" {
        counters {
            connections: "connections_total", "LMTP connections accepted.";
            refused_busy: "refused_busy_total", "LMTP connections refused with 421 because max_connections were open.";
            messages: "messages_total", "Messages stored (one per DATA, whatever the number of recipients).";
            delivered: "delivered_total", "Recipients a message was delivered to (answered 250).";
            bytes: "bytes_total", "Bytes of stored messages, trace headers included.";
            rejected_unknown_user: "rejected_unknown_user_total", "Recipients refused because no such user exists.";
            rejected_oversize: "rejected_oversize_total", "Messages refused for exceeding lmtp.max_message_size.";
            rejected_no_mailbox: "rejected_no_mailbox_total", "Recipients refused because their INBOX is missing.";
            rejected_syntax: "rejected_syntax_total", "Commands refused as unknown, malformed, out of sequence or too long.";
            temp_failures: "temp_failures_total", "Recipients answered with a temporary failure (store unavailable, or ack = peer not met).";
            timeouts: "timeouts_total", "Connections closed for idling or exceeding max_session_secs.";
            aborted_in_data: "aborted_in_data_total", "Connections that ended in the middle of DATA.";
        }
        gauges {
            in_flight: "connections_open", "LMTP connections open now.";
        }
        histograms {
            transaction_seconds: "transaction_seconds", "Time from the end of DATA to the replies: store, fsync and (ack = peer) the peers' acknowledgement.", crate::metrics::LATENCY;
        }
    }
);

use crate::server::wait_shutdown;

use crate::metrics::bump;

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
        let span = tracing::info_span!("lmtp", %peer);
        tokio::spawn(
            async move {
                counters.in_flight.inc();
                if let Err(e) = connection(stream, peer, &store, &cfg, &counters, &hostname, &durability, shutdown).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                counters.in_flight.dec();
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
        tracing::warn!(in_flight = counters.in_flight.get(), "lmtp connections still open at shutdown");
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
                    let outcomes = deliver(store, cfg, counters, durability, d, peer).await;
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
                    let outcomes = deliver(store, cfg, counters, durability, d, peer).await;
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
    d: Delivery,
    peer: SocketAddr,
) -> Vec<DeliveryOutcome> {
    let _timer = counters.transaction_seconds.start_timer();
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
    let result = store
        .run(move |txn, cfs| {
            let mut outcomes = Vec::with_capacity(n);
            for t in &targets {
                let Some((user, detail)) = t else {
                    outcomes.push(Err(Rejected::UnknownUser));
                    continue;
                };
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
                outcomes.push(placed.map(|p| p.uid));
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
                .map(|o| match o {
                    Ok(_) if unreplicated => {
                        bump(&counters.temp_failures, 1);
                        DeliveryOutcome::Reply(Reply::new(451, "4.4.3", "Stored here but not yet on the mirror; try again"))
                    }
                    Ok(_) => {
                        bump(&counters.delivered, 1);
                        DeliveryOutcome::Ok
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
