//! The POP3 listener: the driver of [`crate::proto::pop3::Session`] over
//! plain TCP (with STLS) or implicit TLS, on the same views as IMAP.
//!
//! The maildrop is the user's INBOX as it was at login, in UID order. `UIDL`
//! is the message GUID, which every node of a mirror shares, so a POP3 client
//! sent to the other node by a failover sees the same ids and downloads
//! nothing again. Logins go through the IMAP listener's budgets
//! ([`crate::imap::check_credentials`]) and its plaintext policy
//! (`imap.plaintext_auth`), so POP3 is not a side door for guessing. One POP3
//! session per user holds the maildrop at a time (RFC 1939 section 8); IMAP
//! sessions run beside it, and a message they remove meanwhile reads as gone.

use crate::config::Pop3Config;
use crate::event::{BlobHash, Id};
use crate::imap::conn::Conn;
use crate::imap::{check_credentials, plaintext_ok, Credentials, Shared};
use crate::mutate;
use crate::proto::pop3::{Action, Limits, LoginOutcome, MessageInfo, Session};
use crate::views::ViewRead;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

crate::metrics::metrics!(
    /// Metrics of the POP3 listeners (`tandem status` shows the counters).
    Counters, CountersSnapshot, "tandem_pop3_" {
        counters {
            connections: "connections_total", "POP3 connections accepted (plain and implicit TLS).";
            refused_busy: "refused_busy_total", "POP3 connections refused because pop3.max_connections or imap.max_connections_per_ip were open.";
            logins: "logins_total", "Successful USER/PASS and AUTH PLAIN.";
            login_failures: "login_failures_total", "Failed USER/PASS and AUTH PLAIN.";
            maildrop_in_use: "maildrop_in_use_total", "Logins refused because another POP3 session held the maildrop.";
            commands: "commands_total", "Commands received.";
            bad_commands: "bad_commands_total", "Commands answered -ERR as unknown, malformed or out of place.";
            retrieved: "retrieved_total", "Messages sent by RETR and TOP.";
            deleted: "deleted_total", "Messages removed at QUIT after DELE.";
            timeouts: "timeouts_total", "Connections closed for idling, slow reading or a stalled TLS handshake.";
        }
        gauges {
            in_flight: "connections_open", "POP3 connections open now.";
        }
        histograms {
        }
    }
);

/// What the POP3 listeners share.
pub struct Pop3 {
    pub imap: Arc<Shared>,
    pub cfg: Pop3Config,
    pub counters: Arc<Counters>,
    /// Users whose maildrop a POP3 session holds.
    locked: Mutex<HashSet<String>>,
}

impl Pop3 {
    pub fn new(imap: Arc<Shared>, cfg: Pop3Config, counters: Arc<Counters>) -> Arc<Pop3> {
        Arc::new(Pop3 {
            imap,
            cfg,
            counters,
            locked: Mutex::new(HashSet::new()),
        })
    }
}

/// The hold on one user's maildrop; released on drop.
struct MaildropLock {
    pop3: Arc<Pop3>,
    user: String,
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        self.pop3.locked.lock().expect("pop3 lock").remove(&self.user);
    }
}

/// One listed message: where it was and what it was.
struct Listed {
    uid: u32,
    guid: Id,
    blob: BlobHash,
}

/// A logged-in session's maildrop.
struct Maildrop {
    user: String,
    mailbox: Id,
    messages: Vec<Listed>,
    _lock: MaildropLock,
}

/// Accept connections until shutdown; then let sessions end (bounded).
pub async fn serve(listener: TcpListener, pop3: Arc<Pop3>, implicit_tls: bool, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(pop3.cfg.max_connections));
    loop {
        let Some((mut stream, peer)) = crate::server::accept_until_shutdown(&listener, &mut shutdown, "pop3").await else {
            break;
        };
        pop3.counters.connections.inc();
        let per_ip = pop3.imap.settings.get(crate::settings::Key::ImapMaxConnectionsPerIp) as usize;
        let ip_slot = pop3.imap.per_ip.take(peer.ip().to_string(), per_ip);
        let permit = slots.clone().try_acquire_owned().ok();
        let (Some(permit), Some(ip_slot)) = (permit, ip_slot) else {
            pop3.counters.refused_busy.inc();
            if !implicit_tls {
                tokio::spawn(async move {
                    let _ = stream.write_all(b"-ERR [SYS/TEMP] Too many connections, try again later\r\n").await;
                });
            }
            continue;
        };
        let pop3 = pop3.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("pop3", %peer, user = tracing::field::Empty);
        tokio::spawn(
            async move {
                pop3.counters.in_flight.inc();
                let _ = stream.set_nodelay(true);
                let conn = if implicit_tls {
                    handshake(&pop3, Conn::Plain(stream)).await
                } else {
                    Some(Conn::Plain(stream))
                };
                if let Some(conn) = conn {
                    if let Err(e) = session(&pop3, conn, peer, implicit_tls, shutdown).await {
                        tracing::debug!(error = %e, "pop3 session ended with an error");
                    }
                }
                pop3.counters.in_flight.dec();
                drop(ip_slot);
                drop(permit);
            }
            .instrument(span),
        );
    }
    let all = u32::try_from(pop3.cfg.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all)).await;
}

/// The TLS handshake on a plain stream, under the handshake deadline.
async fn handshake(pop3: &Pop3, conn: Conn) -> Option<Conn> {
    let (Some(tls), Conn::Plain(stream)) = (&pop3.imap.tls, conn) else {
        return None;
    };
    let limit = Duration::from_secs(pop3.imap.cfg.handshake_timeout_secs.max(1));
    match tokio::time::timeout(limit, tokio_rustls::TlsAcceptor::from(tls.clone()).accept(stream)).await {
        Ok(Ok(s)) => Some(Conn::Tls(Box::new(s))),
        Ok(Err(e)) => {
            tracing::info!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            pop3.counters.timeouts.inc();
            tracing::info!("TLS handshake timed out");
            None
        }
    }
}

/// Write `bytes` under the write deadline, then flush (TLS keeps the last
/// records until flushed).
async fn send(pop3: &Pop3, conn: &mut Conn, bytes: &[u8]) -> std::io::Result<()> {
    let limit = Duration::from_secs(pop3.imap.cfg.write_timeout_secs.max(1));
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "the client did not read its responses in time");
    for chunk in bytes.chunks(64 * 1024) {
        if tokio::time::timeout(limit, conn.write_all(chunk)).await.is_err() {
            pop3.counters.timeouts.inc();
            return Err(timed_out());
        }
    }
    match tokio::time::timeout(limit, conn.flush()).await {
        Ok(r) => r,
        Err(_) => {
            pop3.counters.timeouts.inc();
            Err(timed_out())
        }
    }
}

/// Log in: budgets, password, the maildrop lock, the listing.
async fn login(
    pop3: &Arc<Pop3>,
    peer: SocketAddr,
    user: &str,
    password: String,
    deadline: std::time::Instant,
) -> (LoginOutcome, Option<Maildrop>) {
    let Ok(user) = mutate::normalize_user(user) else {
        pop3.counters.login_failures.inc();
        return (LoginOutcome::Failed, None);
    };
    match check_credentials(&pop3.imap, peer.ip(), &user, crate::auth::Secret::new(password), deadline).await {
        Credentials::Ok => {}
        Credentials::Wrong => {
            pop3.counters.login_failures.inc();
            return (LoginOutcome::Failed, None);
        }
        Credentials::Throttled => {
            return (
                LoginOutcome::Unavailable {
                    code: "LOGIN-DELAY",
                    text: "Too many login attempts; try again later".into(),
                },
                None,
            )
        }
    }
    if !pop3.locked.lock().expect("pop3 lock").insert(user.clone()) {
        pop3.counters.maildrop_in_use.inc();
        return (
            LoginOutcome::Unavailable {
                code: "IN-USE",
                text: "Another POP3 session holds this maildrop".into(),
            },
            None,
        );
    }
    let lock = MaildropLock {
        pop3: pop3.clone(),
        user: user.clone(),
    };
    let views = pop3.imap.store.views();
    let listing = views
        .mailbox_by_name(&user, "INBOX")
        .map(|mb| mb.map(|mb| (mb.id, views.messages(mb.id))));
    let (mailbox, messages) = match listing {
        Ok(Some((id, Ok(m)))) => (id, m),
        Ok(None) => {
            return (
                LoginOutcome::Unavailable {
                    code: "SYS/PERM",
                    text: "This user has no INBOX".into(),
                },
                None,
            )
        }
        Ok(Some((_, Err(e)))) | Err(e) => {
            tracing::error!(error = %e, "reading the maildrop");
            return (
                LoginOutcome::Unavailable {
                    code: "SYS/TEMP",
                    text: "The maildrop cannot be read now".into(),
                },
                None,
            );
        }
    };
    pop3.counters.logins.inc();
    tracing::Span::current().record("user", user.as_str());
    let infos = messages
        .iter()
        .map(|(_, m)| MessageInfo {
            size: m.size,
            uidl: m.guid.to_hex(),
        })
        .collect();
    let listed = messages
        .into_iter()
        .map(|(uid, m)| Listed {
            uid,
            guid: m.guid,
            blob: m.blob,
        })
        .collect();
    (
        LoginOutcome::Ok(infos),
        Some(Maildrop {
            user,
            mailbox,
            messages: listed,
            _lock: lock,
        }),
    )
}

/// The body of listed message `index`, if it is still in the INBOX.
fn read_message(pop3: &Pop3, drop: &Maildrop, index: usize) -> Option<Vec<u8>> {
    let l = drop.messages.get(index)?;
    let views = pop3.imap.store.views();
    match views.message(drop.mailbox, l.uid) {
        Ok(Some(m)) if m.guid == l.guid => {}
        _ => return None,
    }
    match pop3.imap.store.blob(&l.blob) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "reading a message body");
            None
        }
    }
}

/// Remove the messages marked deleted that are still where they were listed.
async fn update(pop3: &Pop3, drop: &Maildrop, deleted: &[usize]) -> Result<usize, String> {
    let views = pop3.imap.store.views();
    let uids: Vec<u32> = deleted
        .iter()
        .filter_map(|i| drop.messages.get(*i))
        .filter(|l| matches!(views.message(drop.mailbox, l.uid), Ok(Some(m)) if m.guid == l.guid))
        .map(|l| l.uid)
        .collect();
    if uids.is_empty() {
        return Ok(0);
    }
    let (user, mailbox) = (drop.user.clone(), drop.mailbox);
    match pop3.imap.store.run(move |t, c| mutate::expunge(t, c, &user, mailbox, &uids)).await {
        Ok(gone) => Ok(gone.len()),
        Err(e) => {
            tracing::error!(error = %e, "removing deleted messages");
            Err("the store refused the change".into())
        }
    }
}

async fn session(
    pop3: &Arc<Pop3>,
    mut conn: Conn,
    peer: SocketAddr,
    implicit_tls: bool,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let limits = Limits {
        max_line: 2048,
        max_errors: pop3.imap.settings.count(crate::settings::Key::Pop3MaxBadCommands),
    };
    let plaintext = plaintext_ok(&pop3.imap.cfg, &peer, implicit_tls);
    let mut s = Session::new(limits, implicit_tls, pop3.imap.tls.is_some(), plaintext);
    let mut maildrop: Option<Maildrop> = None;
    let mut out: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let result = 'session: loop {
        while let Some(action) = s.poll() {
            match action {
                Action::Reply(b) => out.extend_from_slice(&b),
                Action::Authenticate { user, password } => {
                    let deadline = std::time::Instant::now() + Duration::from_secs(pop3.imap.cfg.login_timeout_secs.max(1));
                    let (outcome, drop) = login(pop3, peer, &user, password.0, deadline).await;
                    maildrop = drop;
                    s.login_result(outcome);
                }
                Action::StartTls => {
                    send(pop3, &mut conn, &out).await?;
                    out.clear();
                    match handshake(pop3, conn).await {
                        Some(c) => {
                            conn = c;
                            s.tls_started();
                        }
                        None => break 'session Ok(()),
                    }
                }
                Action::Retrieve { index, .. } => {
                    let body = maildrop.as_ref().and_then(|d| read_message(pop3, d, index));
                    s.retrieved(body.as_deref());
                }
                Action::Update { deleted } => {
                    let r = match maildrop.as_ref() {
                        Some(d) => update(pop3, d, &deleted).await,
                        None => Ok(0),
                    };
                    s.update_result(r);
                }
                Action::Close => {
                    let _ = send(pop3, &mut conn, &out).await;
                    let _ = conn.shutdown().await;
                    break 'session Ok(());
                }
            }
            if out.len() >= 256 * 1024 {
                send(pop3, &mut conn, &out).await?;
                out.clear();
            }
        }
        if s.is_closed() {
            break Ok(());
        }
        if !out.is_empty() {
            send(pop3, &mut conn, &out).await?;
            out.clear();
        }
        let idle = Duration::from_secs(if s.authenticated() {
            pop3.cfg.idle_timeout_secs
        } else {
            pop3.imap.cfg.login_timeout_secs
        });
        tokio::select! {
            r = tokio::time::timeout(idle, conn.read(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => break Ok(()),
                Ok(Ok(n)) => s.feed(&buf[..n]),
                Err(_) => {
                    pop3.counters.timeouts.inc();
                    let _ = send(pop3, &mut conn, b"-ERR Idle for too long, closing\r\n").await;
                    break Ok(());
                }
            },
            _ = crate::server::wait_shutdown(&mut shutdown) => {
                let _ = send(pop3, &mut conn, b"-ERR [SYS/TEMP] Server shutting down\r\n").await;
                break Ok(());
            }
        }
    };
    let c = s.counters();
    pop3.counters.commands.add(c.commands);
    pop3.counters.bad_commands.add(c.bad_commands);
    pop3.counters.retrieved.add(c.retrieved);
    pop3.counters.deleted.add(c.deleted);
    result
}
