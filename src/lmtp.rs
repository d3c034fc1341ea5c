//! The LMTP listener: a thin tokio driver around the sans-io session in
//! [`crate::proto::lmtp`]. It owns the socket, the timeouts and the store
//! calls; the session owns the protocol.
//!
//! Delivery: one transaction per message for all its recipients. The body
//! (with `Return-Path:`, `Delivered-To:` when there is one recipient, and a
//! `Received:` trace line, as Dovecot writes them) is stored once; each
//! recipient gets its own append event. Replies go out only after that
//! transaction is durable.

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
            retries_already_stored: "retries_already_stored_total", "Retries of deliveries answered 451 4.4.3 whose first copy was kept instead of storing a second.";
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
    settings: Arc<crate::settings::Settings>,
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
        // The replicated settings as they are now hold for the whole
        // connection.
        let cfg = Arc::new(effective(&cfg, &settings));
        let (store, counters, hostname, shutdown) = (store.clone(), counters.clone(), hostname.clone(), shutdown.clone());
        let durability = durability.clone();
        let tempfailed = tempfailed.clone();
        let span = tracing::info_span!("lmtp", %peer);
        tokio::spawn(
            async move {
                counters.in_flight.inc();
                if let Err(e) = connection(stream, peer, &store, &cfg, &counters, &hostname, &durability, &tempfailed, shutdown).await {
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

/// The `[lmtp]` section with the replicated settings in force.
fn effective(file: &LmtpConfig, settings: &crate::settings::Settings) -> LmtpConfig {
    use crate::settings::Key;
    LmtpConfig {
        max_message_size: settings.get(Key::LmtpMaxMessageSize),
        detail_folders: settings.flag(Key::LmtpDetailFolders),
        idle_timeout_secs: settings.get(Key::LmtpIdleTimeoutSecs),
        max_session_secs: settings.get(Key::LmtpMaxSessionSecs),
        ..file.clone()
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
                        send(&mut stream, &out, idle).await?;
                        out.clear();
                    }
                    let trace = Trace::new(hostname, session.client_name(), peer);
                    let outcomes = deliver(store, cfg, counters, durability, tempfailed, d, &trace).await;
                    session.delivery_result(outcomes);
                }
                Action::Close => {
                    // What the last commands counted (QUIT pipelined behind them).
                    fold_counters(&session, counters, &mut seen);
                    send(&mut stream, &out, idle).await?;
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
            }
        }
        fold_counters(&session, counters, &mut seen);
        if !out.is_empty() {
            send(&mut stream, &out, idle).await?;
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
                    let trace = Trace::new(hostname, session.client_name(), peer);
                    let outcomes = deliver(store, cfg, counters, durability, tempfailed, d, &trace).await;
                    session.delivery_result(outcomes);
                } else {
                    break;
                }
            }
            fold_counters(&session, counters, &mut seen);
            return Ok(());
        }
        session.feed(&buf[..n]);
    }
}

/// Write replies; a client that does not take them within `limit` (the
/// idle timeout) loses the connection rather than holding it.
async fn send(stream: &mut TcpStream, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(limit, stream.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client did not read its replies in time",
        )),
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
        // A user already at the quota is refused at once (452, so the
        // sender retries); whether the message fits is known after DATA.
        Ok(Some(user)) => match mutate::check_quota(&store.views(), &user, 1, 1) {
            Ok(()) => RcptOutcome::Accept,
            Err(MutationError::OverQuota { whole: false }) => RcptOutcome::Reject(Reply::new(452, "4.2.2", "Mailbox full")),
            Err(MutationError::OverQuota { whole: true }) => {
                RcptOutcome::Reject(Reply::new(552, "5.2.2", "Message larger than the mailbox quota"))
            }
            Err(e) => {
                bump(&counters.temp_failures, 1);
                tracing::error!(error = %e, "store unavailable during RCPT");
                RcptOutcome::Reject(Reply::new(451, "4.3.0", "Temporary failure: mail store unavailable"))
            }
        },
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

/// Where a delivery came from and where it arrived, for its `Received:` line.
struct Trace {
    /// This server's name (`lmtp.hostname`).
    host: String,
    /// The name the client gave in LHLO, reduced to domain characters.
    client: String,
    peer: SocketAddr,
}

impl Trace {
    fn new(host: &str, client: Option<&str>, peer: SocketAddr) -> Trace {
        // The LHLO argument is the client's free text: only characters of a
        // domain or an address literal go into the header.
        let clean = |s: &str| -> String {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(*c))
                .take(255)
                .collect()
        };
        let client = clean(client.and_then(|c| c.split_whitespace().next()).unwrap_or_default());
        Trace {
            host: clean(host),
            client: if client.is_empty() { "unknown".into() } else { client },
            peer,
        }
    }
}

/// Trace headers in front of the body, as Dovecot's LMTP writes them:
/// `Return-Path` always, `Delivered-To` only for a single recipient so the
/// stored body is the same for all recipients (single-instance), and a
/// `Received:` line (RFC 5321 section 4.4) naming the client, this server,
/// the protocol and the time; `for <address>` only for a single recipient.
fn with_trace_headers(d: &Delivery, trace: &Trace, now: i64) -> Vec<u8> {
    let mut b = Vec::with_capacity(d.body.len() + 256);
    b.extend_from_slice(format!("Return-Path: <{}>\r\n", d.mail_from).as_bytes());
    if d.recipients.len() == 1 {
        b.extend_from_slice(format!("Delivered-To: {}\r\n", d.recipients[0].address).as_bytes());
    }
    let literal = match trace.peer.ip() {
        std::net::IpAddr::V4(a) => format!("[{a}]"),
        std::net::IpAddr::V6(a) => format!("[IPv6:{a}]"),
    };
    // RFC 6531 section 3.7.3: UTF8LMTP when the transaction used SMTPUTF8.
    let with = if d.utf8 { "UTF8LMTP" } else { "LMTP" };
    let for_clause = match d.recipients.as_slice() {
        [one] => format!("\r\n\tfor <{}>", one.address),
        _ => String::new(),
    };
    let date = mail_parser::DateTime::from_timestamp(now).to_rfc822();
    b.extend_from_slice(
        format!(
            "Received: from {} ({literal})\r\n\tby {} (Tandem) with {with}{for_clause};\r\n\t{date}\r\n",
            trace.client, trace.host
        )
        .as_bytes(),
    );
    b.extend_from_slice(&d.body);
    b
}

/// With `detail_folders`, `user+detail` files into folder `detail` only if
/// it exists and has no special use: no sender may put mail into someone's
/// Drafts, Sent or Trash.
fn detail_folder_allowed(store: &Store, user: &str, folder: &str) -> bool {
    matches!(store.views().mailbox_by_name(user, folder), Ok(Some(mb)) if mb.special_use.is_none())
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

/// (envelope recipient, lower-cased; blake3 of the message as the client
/// sent it, before the trace headers, which differ on every attempt).
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
            if c.uid == 0 {
                // Stored pending: awaiting the master, or placed since.
                return Ok(views.vget(&crate::views::keys::pending(mb.id, c.guid))?.is_some() || views.placed(mb.id, c.guid)?.is_some());
            }
            return Ok(views.message(mb.id, c.uid)?.is_some_and(|m| m.guid == c.guid));
        }
    }
    Ok(false)
}

/// Why one recipient of an accepted message was not delivered.
enum Rejected {
    UnknownUser,
    NoInbox,
    /// Over the user's quota; `whole`: larger than the quota itself.
    OverQuota {
        whole: bool,
    },
}

async fn deliver(
    store: &Store,
    cfg: &LmtpConfig,
    counters: &Counters,
    durability: &crate::repl::Durability,
    tempfailed: &Tempfailed,
    d: Delivery,
    trace: &Trace,
) -> Vec<DeliveryOutcome> {
    let _timer = counters.transaction_seconds.start_timer();
    let peer = trace.peer;
    let at = now();
    let body = with_trace_headers(&d, trace, at);
    let size = body.len() as u64;
    let mut msg = NewMessage::new(body, Flags::default(), at);
    // A slave that reaches its master stores the message pending: durable
    // now (the 250 may go), shown once the master gives it its UID.
    msg.pending = durability.append_pending(store);
    // Resolve accounts and folders outside the writer; the transaction
    // re-checks them against the views it sees.
    let targets: Vec<Option<(String, Option<String>)>> = d
        .recipients
        .iter()
        .map(|r| {
            resolve_user(store, r).ok().flatten().map(|u| {
                let detail = r
                    .detail
                    .clone()
                    .filter(|d| cfg.detail_folders && detail_folder_allowed(store, &u, d));
                (u, detail)
            })
        })
        .collect();
    let n = targets.len();
    // A retry of a tempfailed delivery: the copy stored then, if it exists.
    let sent = *blake3::hash(&d.body).as_bytes();
    let keys: Vec<RetryKey> = d.recipients.iter().map(|r| (r.address.to_lowercase(), sent)).collect();
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
                        Ok(p) => placed = Some(Ok(p)),
                        Err(MutationError::NoSuchMailbox(_) | MutationError::InvalidName { .. }) => {}
                        Err(MutationError::OverQuota { whole }) => placed = Some(Err(Rejected::OverQuota { whole })),
                        Err(e) => return Err(e),
                    }
                }
                let placed = match placed {
                    Some(p) => p,
                    None => match mutate::append(txn, cfs, user, "INBOX", &msg) {
                        Ok(p) => Ok(p),
                        Err(MutationError::NoSuchUser(_)) => Err(Rejected::UnknownUser),
                        Err(MutationError::NoSuchMailbox(_)) => Err(Rejected::NoInbox),
                        Err(MutationError::OverQuota { whole }) => Err(Rejected::OverQuota { whole }),
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
                    // RFC 3463: 4.2.2 while expunging can make room, 5.2.2
                    // when the message alone is larger than the quota.
                    Err(Rejected::OverQuota { whole: false }) => DeliveryOutcome::Reply(Reply::new(452, "4.2.2", "Mailbox full")),
                    Err(Rejected::OverQuota { whole: true }) => {
                        DeliveryOutcome::Reply(Reply::new(552, "5.2.2", "Message larger than the mailbox quota"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::lmtp::Recipient;

    fn delivery(recipients: &[&str], utf8: bool) -> Delivery {
        Delivery {
            mail_from: "s@example.net".into(),
            recipients: recipients.iter().map(|r| Recipient::parse(r).unwrap()).collect(),
            body: b"Subject: hi\r\n\r\nbody\r\n".to_vec(),
            body_8bit: false,
            utf8,
        }
    }

    #[test]
    fn trace_headers_with_received_line() {
        let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        // The LHLO name is free text: only domain characters are kept.
        let trace = Trace::new("mail.example.org", Some("mx1.example.net (evil)\r\nX-Injected: 1"), peer);
        let one = with_trace_headers(&delivery(&["a@example.org"], false), &trace, 1_700_000_000);
        assert_eq!(
            String::from_utf8(one.clone()).unwrap(),
            "Return-Path: <s@example.net>\r\nDelivered-To: a@example.org\r\n\
             Received: from mx1.example.net ([192.0.2.7])\r\n\tby mail.example.org (Tandem) with LMTP\r\n\
             \tfor <a@example.org>;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n\
             Subject: hi\r\n\r\nbody\r\n"
        );
        let parsed = crate::proto::imap::mime::Parsed::new(&one);
        assert_eq!(parsed.header_values("Subject"), ["hi"]);
        assert_eq!(parsed.header_values("Received").len(), 1);
        // Several recipients: nothing per recipient, so one body serves all.
        let v6: SocketAddr = "[::1]:40000".parse().unwrap();
        let many = with_trace_headers(
            &delivery(&["a@example.org", "b@example.org"], true),
            &Trace::new("mail.example.org", None, v6),
            1_700_000_000,
        );
        assert_eq!(
            String::from_utf8(many).unwrap(),
            "Return-Path: <s@example.net>\r\n\
             Received: from unknown ([IPv6:::1])\r\n\tby mail.example.org (Tandem) with UTF8LMTP;\r\n\
             \tTue, 14 Nov 2023 22:13:20 +0000\r\n\
             Subject: hi\r\n\r\nbody\r\n"
        );
    }
}
