//! The quinn driver of the mirror: endpoint and certificates, the shared
//! secret proof, one outgoing link per peer (with reconnects), and the
//! incoming links that apply what peers push.

use super::apply::{apply_batch, verify_blobs, Applied};
use super::engine::dialer::{self, Dialer, Queries, ReadEntry};
use super::engine::handshake::{Deadline, Opening, Side};
use super::engine::receiver::{self, Arrival, Intake, Prepared, Receiver, Step};
use super::engine::{self, Window};
use super::error::LinkError;
use super::frame::{self, Frame, WireBlob, WireEntry, ALPNS, CHUNK_BYTES, MAX_FRAME, PREAUTH_FRAME};
use super::handshake;
use super::stream::{read_frame, write_frame};
use super::{mono_ms, now_ms, Mirror, OutLink};
use crate::config::MirrorConfig;
use crate::store::Store;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// Connection-level receive window before authentication: the handshake
/// needs a few hundred bytes, so an unauthenticated peer cannot make this
/// node buffer more than this per connection.
const PREAUTH_WINDOW: u32 = 64 << 10;
/// Connection-level receive window once the peer has authenticated.
const LINK_WINDOW: u32 = 128 << 20;

/// Accepts any server certificate: peers are authenticated by the shared
/// secret bound to the connection, not by a PKI. The handshake signature is
/// still checked against the presented certificate.
#[derive(Debug)]
struct PeerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for PeerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn endpoint(listen: SocketAddr, data_dir: &Path, idle: Duration) -> anyhow::Result<quinn::Endpoint> {
    crate::tls::install_provider();
    let (cert, key) = (data_dir.join("mirror/cert.pem"), data_dir.join("mirror/key.pem"));
    crate::tls::ensure_self_signed(&cert, &key, vec!["tandem".into()])?;
    let (certs, key) = crate::tls::load_pem(&cert, &key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // Version 6 first, then 5: a node of either version connects, and
    // only a link that agreed on 6 carries `Alive` (`frame::alive_allowed`).
    server.alpn_protocols = ALPNS.iter().map(|a| a.to_vec()).collect();
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(idle.try_into().context("mirror.idle_timeout_ms is too large")?));
    transport.keep_alive_interval(Some((idle / 3).min(Duration::from_secs(5))));
    // Windows sized for a WAN: a link moving ~330 MB/s over a 100 ms round
    // trip has ~33 MB in flight, so the stream window is 64 MiB (at 32 MiB
    // the delayed path ran at 78 % of loopback, at 64 MiB at 84-87 %; the
    // defaults allow ~12 MB/s). Buffers grow only as data is in flight.
    // The connection's window starts at PREAUTH_WINDOW and is raised to
    // LINK_WINDOW once the peer has proved the secret.
    transport.stream_receive_window(quinn::VarInt::from_u32(64 << 20));
    transport.receive_window(quinn::VarInt::from_u32(PREAUTH_WINDOW));
    transport.send_window(128 << 20);
    // One bidirectional stream per link, opened by the dialer; nothing else.
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    let transport = Arc::new(transport);
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(server)?));
    sc.transport_config(transport.clone());
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerCert(provider)))
        .with_no_client_auth();
    client.alpn_protocols = ALPNS.iter().map(|a| a.to_vec()).collect();
    let mut cc = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(client)?));
    cc.transport_config(transport);
    let socket = udp_socket(listen)?;
    let runtime = quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime for the mirror"))?;
    let mut ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(sc), socket, runtime)
        .with_context(|| format!("starting the mirror endpoint on {listen}"))?;
    ep.set_default_client_config(cc);
    Ok(ep)
}

/// Socket buffers asked for the mirror's UDP socket. The kernel's default
/// (about 200 KB) overflows under a bulk transfer: each overflow is a lost
/// datagram that the congestion controller reads as congestion.
const UDP_BUFFER: usize = 8 << 20;

fn udp_socket(listen: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(listen).with_context(|| format!("binding mirror.listen {listen} (UDP)"))?;
    let s = socket2::SockRef::from(&socket);
    // The kernel caps these at net.core.rmem_max / wmem_max.
    let _ = s.set_recv_buffer_size(UDP_BUFFER);
    let _ = s.set_send_buffer_size(UDP_BUFFER);
    let (r, w) = (s.recv_buffer_size().unwrap_or(0), s.send_buffer_size().unwrap_or(0));
    // Linux reports twice the usable size.
    if r < UDP_BUFFER || w < UDP_BUFFER {
        tracing::info!(
            recv = r,
            send = w,
            "mirror UDP socket buffers are below {} bytes; raise net.core.rmem_max and wmem_max for bulk transfers",
            UDP_BUFFER
        );
    }
    Ok(socket)
}

/// The running mirror.
pub struct Running {
    pub local_addr: SocketAddr,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Start the mirror if `[mirror]` has a listen address.
pub fn start(
    cfg: &MirrorConfig,
    store: &Store,
    data_dir: &Path,
    mirror: Arc<Mirror>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<Running>> {
    let Some(listen) = cfg.listen else {
        if !cfg.peers.is_empty() {
            bail!("mirror.peers is set but mirror.listen is not");
        }
        return Ok(None);
    };
    let secret = cfg
        .secret_bytes()?
        .ok_or_else(|| anyhow::anyhow!("the mirror needs mirror.secret or mirror.secret_file"))?;
    let ep = endpoint(listen, data_dir, Duration::from_millis(cfg.idle_timeout_ms))?;
    let local_addr = ep.local_addr()?;
    *mirror.listen.lock().expect("mirror lock") = Some(local_addr.to_string());
    *mirror.role.lock().expect("mirror lock") = format!("{:?}", cfg.mode).to_lowercase();
    *mirror.seed.lock().expect("mirror lock") = cfg.mode;
    let _ = mirror.own_origin.set(store.wal().local_origin().0);
    let secret = Arc::new(secret);
    let window = Window {
        batches: cfg.window_batches,
        entries: cfg.batch_entries,
        bytes: cfg.batch_bytes,
    };
    let auth_timeout = Duration::from_millis(cfg.auth_timeout_ms);
    let limits = Limits {
        connections: Arc::new(Semaphore::new(cfg.max_connections)),
        unauthenticated: Arc::new(Semaphore::new(cfg.max_unauthenticated)),
        per_ip: Arc::new(PerIp {
            held: Default::default(),
            max: cfg.max_unauthenticated_per_ip,
        }),
        auth_timeout,
    };
    let mut tasks = Vec::new();
    // A peer that authenticated an incoming link is back: dialers waiting
    // out their backoff dial at once instead.
    let peer_back = Arc::new(tokio::sync::Notify::new());
    {
        let (ep, store, mirror, secret, shutdown) = (ep.clone(), store.clone(), mirror.clone(), secret.clone(), shutdown.clone());
        tasks.push(tokio::spawn(accept_loop(
            ep,
            store,
            mirror,
            secret,
            limits,
            peer_back.clone(),
            shutdown,
        )));
    }
    for (i, peer) in cfg.peers.iter().enumerate() {
        mirror.out.lock().expect("mirror lock").push(OutLink {
            address: peer.to_string(),
            state: "connecting".into(),
            since_ms: now_ms(),
            ..Default::default()
        });
        let (ep, store, mirror, secret, shutdown) = (ep.clone(), store.clone(), mirror.clone(), secret.clone(), shutdown.clone());
        let backoff = (
            Duration::from_millis(cfg.reconnect_min_ms),
            Duration::from_millis(cfg.reconnect_max_ms),
        );
        let span = tracing::info_span!("mirror-out", peer = %peer);
        tasks.push(tokio::spawn(
            dial_loop(
                ep,
                *peer,
                i,
                store,
                mirror,
                secret,
                window,
                backoff,
                auth_timeout,
                peer_back.clone(),
                shutdown,
            )
            .instrument(span),
        ));
    }
    Ok(Some(Running { local_addr, tasks }))
}

use crate::server::wait_shutdown;

#[allow(clippy::too_many_arguments)]
async fn dial_loop(
    ep: quinn::Endpoint,
    peer: SocketAddr,
    i: usize,
    store: Store,
    mirror: Arc<Mirror>,
    secret: Arc<Vec<u8>>,
    window: Window,
    (min, max): (Duration, Duration),
    auth_timeout: Duration,
    peer_back: Arc<tokio::sync::Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = engine::backoff::Backoff::new(min, max);
    // Where the next link to this peer may start reading the apply order
    // (kept across reconnects, lost with the process).
    let mut resume: Option<engine::Resume> = load_resume(store.wal(), peer);
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        mirror.update_out(i, |l| {
            if l.state != "connecting" {
                l.state = "connecting".into();
                l.since_ms = now_ms();
            }
        });
        let started = Instant::now();
        let r = tokio::select! {
            r = link(&ep, peer, i, &store, &mirror, &secret, window, auth_timeout, &peer_back, &mut resume) => r,
            _ = wait_shutdown(&mut shutdown) => {
                // The link (dropped by now) left where the next may start.
                if resume.is_some() {
                    save_resume(&store, peer, resume.as_ref()).await;
                }
                return;
            }
        };
        let known = mirror.out.lock().expect("mirror lock").get(i).and_then(|l| l.peer.clone());
        if let Some(p) = known {
            mirror.link_lost(&p);
        }
        if let Err(e) = r {
            let msg = format!("{e:#}");
            let refused = e.is_refusal();
            if !refused || last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(kind = e.kind(), error = %msg, "mirror link to {peer} failed");
                if refused {
                    last_refusal_log = Some(Instant::now());
                }
            }
            mirror.update_out(i, |l| {
                l.state = if refused { "refused".into() } else { "disconnected".into() };
                l.since_ms = now_ms();
                l.last_error = Some(msg);
                l.last_error_ms = Some(now_ms());
            });
        }
        let wait = backoff.failed(started.elapsed(), rand::random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = peer_back.notified() => backoff.peer_back(),
            _ = wait_shutdown(&mut shutdown) => return,
        }
    }
}

fn to_vec(v: &wal::VersionVector) -> engine::Vector {
    super::vector_of(v)
}

/// Fresh starts of one connection attempt that a peer's authenticated
/// link may cause ([`connect`]); bounded, so that links of other peers
/// coming and going cannot keep an attempt from ever finishing.
const FRESH_DIALS: u32 = 3;

/// Open the QUIC connection to `peer`. A peer that does not answer is
/// retried after the backoff, not after the 30 s idle timeout: the attempt
/// gives up after 5 s.
///
/// The first packets of an attempt made while the peer was not listening
/// yet are lost, and QUIC sends them again only after its probe timeout
/// (about 1 s, then 2 s and 4 s later): a fresh peer would wait up to that
/// long for the entries it lacks. Once a peer has authenticated an
/// incoming link here (`peer_back`), it is listening, so an attempt still
/// waiting for its first answer starts afresh at once. Only the wait for
/// the QUIC handshake is cut short, never a link that has one.
async fn connect(ep: &quinn::Endpoint, peer: SocketAddr, peer_back: &tokio::sync::Notify) -> Result<quinn::Connection, LinkError> {
    let mut fresh = 0;
    loop {
        let back = peer_back.notified();
        let connecting = ep.connect(peer, "tandem").map_err(|e| LinkError::transport("connecting", e))?;
        tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(5), connecting) => {
                return r
                    .map_err(|_| LinkError::Timeout("no answer from the peer within 5 s".into()))?
                    .map_err(|e| LinkError::transport("connecting", e));
            }
            _ = back, if fresh < FRESH_DIALS => {
                fresh += 1;
                tracing::debug!(fresh, "a peer is back: dialling {peer} afresh");
            }
        }
    }
}

/// Send `Refused` and end the stream, waiting (at most 1 s) for the peer
/// to have it before the connection closes: the refusal is what sends the
/// peer to check whether to join by trees (`resync::join`).
async fn refuse(send: &mut quinn::SendStream, reason: String) {
    let _ = write_frame(send, &Frame::Refused { reason }).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
}

/// One outgoing link, until it fails.
#[allow(clippy::too_many_arguments)]
async fn link(
    ep: &quinn::Endpoint,
    peer: SocketAddr,
    i: usize,
    store: &Store,
    mirror: &Arc<Mirror>,
    secret: &[u8],
    window: Window,
    auth_timeout: Duration,
    peer_back: &tokio::sync::Notify,
    resume: &mut Option<engine::Resume>,
) -> Result<(), LinkError> {
    let conn = connect(ep, peer, peer_back).await?;
    let agreed = alpn(&conn);
    // Whether the peer decodes `Alive`: it agreed on version 6 or later.
    let alive_ok = frame::alive_allowed(agreed.as_deref());
    // Whether the peer answers `Hello` with its own: version 7.
    let introduces = frame::acceptor_introduces(agreed.as_deref());
    let wal = store.wal().clone();
    let seed = *mirror.seed.lock().expect("mirror lock");
    let role = super::role::current(&store.views(), store.node_id(), seed).map_err(|e| LinkError::Local(e.into()))?;
    let handshake = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| LinkError::transport("opening the stream", e))?;
        handshake::dial(&conn, &mut send, &mut recv, secret, mirror).await?;
        conn.set_receive_window(quinn::VarInt::from_u32(LINK_WINDOW));
        write_frame(&mut send, &own_hello(store, &role)).await?;
        let introduced = if introduces {
            let f = read_frame(&mut recv, mirror, PREAUTH_FRAME).await?;
            Some(engine::handshake::introduction(f, wal.local_origin().0)?)
        } else {
            None
        };
        let (vector, hashes) = engine::handshake::vector(read_frame(&mut recv, mirror, MAX_FRAME).await?)?;
        Ok::<_, LinkError>((send, recv, vector, hashes, introduced))
    };
    let mut deadline = Deadline::start(Side::Dialer, clock(), auth_timeout);
    let (mut send, mut recv, vector, hashes, introduced) = within(&mut deadline, handshake).await??;
    deadline.opened();
    // Whom this link reaches, as it said itself: known whatever address
    // was dialled (a relay, NAT), so its signs of life stop counting as
    // soon as this link ends. Peers of versions 5 and 6 are learnt from
    // their incoming link's address instead (`Mirror::learn_peer`).
    if let Some(intro) = introduced {
        if intro.epoch > role.epoch {
            tracing::info!(peer = %intro.node_id, peer_role = %intro.role, epoch = intro.epoch, ours = role.epoch, "the peer holds a higher epoch");
        }
        mirror.update_out(i, |l| l.peer = Some(intro.node_id));
    }
    // Never trust a vector that claims more of this node's own origin than
    // it holds, or other entries at held seqs: nothing is sent, and the
    // link never confirms `ack = "peer"`.
    let held = super::history::Held { vector, hashes };
    let own = wal.local_origin();
    if let Err(d) = super::history::check(&wal, &held).map_err(|e| LinkError::Local(e.into()))? {
        mirror.diverged(matches!(d, super::history::Divergence::Rollback { .. }), d.to_string());
        // Whatever this link's peer acknowledged before no longer counts,
        // nor what the store recorded of it (`crate::retention`).
        mirror.update_out(i, |l| l.acked.clear());
        if let Err(e) = wal.forget_peer_ack(&peer.to_string()) {
            tracing::warn!(error = %e, "forgetting what the peer acknowledged failed");
        }
        *resume = None;
        save_resume(store, peer, None).await;
        let reason = format!("diverged: {d}");
        refuse(&mut send, reason.clone()).await;
        return Err(LinkError::Diverged(reason));
    }
    // A peer that lacks history pruned here is never sent what follows it
    // (it could not chain it): refused, and told to join by trees.
    if let Some(b) = super::history::behind_pruned(&wal, &held.vector) {
        mirror.update_out(i, |l| l.behind_pruned = Some(b.to_string()));
        refuse(&mut send, b.to_string()).await;
        return Err(b.into());
    }
    // What the peer holds now, not what it acknowledged on an earlier link
    // (a peer restored from an older copy holds less): pruning reads it,
    // and what the store recorded of the peer for pruning after a restart
    // (`crate::retention`) comes down to it at once.
    let holds = wal::VersionVector(held.vector.iter().map(|(o, s)| (wal::Origin(o), s)).collect());
    if let Err(e) = wal.lower_peer_ack(&peer.to_string(), &holds) {
        // An unreadable record is dropped: pruning then waits for what the
        // peer acknowledges on this link.
        tracing::warn!(error = %e, "the record of what the peer acknowledged does not read; dropping it");
        if let Err(e) = wal.forget_peer_ack(&peer.to_string()) {
            tracing::warn!(error = %e, "forgetting what the peer acknowledged failed");
        }
    }
    mirror.update_out(i, |l| {
        l.behind_pruned = None;
        l.acked = held.vector.iter().map(|(o, s)| (format!("{o:016x}"), s)).collect();
    });
    // A peer that holds all this node holds needs nothing of its apply
    // order so far, whatever link came before (none kept a resume point,
    // or the peer has a new address): the link starts past it instead of
    // reading it all (about a minute of a core at 40 M entries). The
    // position is read before the heads, so every entry up to it is in them.
    let last = wal.last_order();
    let caught_up = engine::Resume {
        order: last + 1,
        vector: wal.heads().0.iter().map(|(o, s)| (o.0, *s)).collect(),
    };
    let start = if held.vector.covers(&caught_up.vector) {
        Some(&caught_up)
    } else {
        resume.as_ref()
    };
    let mut engine = Dialer::new(window, own.0, &held.vector, last, start);
    wal.confirm(engine.confirmed()).map_err(|e| LinkError::Local(e.into()))?;
    let read_from = engine.next_order();
    mirror.update_out(i, |l| {
        l.read_from = read_from;
        l.state = "connected".into();
        l.since_ms = now_ms();
        l.caught_up_ms = now_ms();
    });
    tracing::info!("mirror link up");
    // Frames from the peer arrive on their own task (reads are not
    // cancel-safe). Answers to body queries go straight to the batch
    // builder waiting for them; everything else to this loop. The
    // queries' deadlines are the engine's (`dialer::Queries`), run by
    // this loop.
    let answers = Arc::new(Answers::new());
    // Room for an acknowledgement of every batch in flight and then some:
    // this loop may wait on the batch writer, whose builder may wait on a
    // query answer that only this reader can pass on, so the reader must
    // never wait on this loop.
    let (tx, mut rx) = mpsc::channel::<Result<Frame, LinkError>>(window.batches + 64);
    let m2 = mirror.clone();
    let a2 = answers.clone();
    let reader = tokio::spawn(async move {
        loop {
            let f = read_frame(&mut recv, &m2, MAX_FRAME).await;
            if let Ok(Frame::Held { id, held }) = f {
                a2.answer(id, held);
                continue;
            }
            let stop = f.is_err();
            if tx.send(f).await.is_err() || stop {
                break;
            }
        }
    });
    // Batches leave in order through one writer task; a few are built
    // ahead of it. Queries (small) go out as soon as a builder asks, even
    // while the writer waits for that builder's batch.
    type Built = Result<(Vec<u8>, u64, OwnedSemaphorePermit), LinkError>;
    let (wtx, mut wrx) = mpsc::channel::<tokio::task::JoinHandle<Built>>(4);
    let (qtx, mut qrx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (werr_tx, mut werr) = mpsc::channel::<LinkError>(1);
    let m3 = mirror.clone();
    let writer = tokio::spawn(async move {
        let r: Result<(), LinkError> = async {
            let mut current: Option<tokio::task::JoinHandle<Built>> = None;
            loop {
                let built = match current.as_mut() {
                    None => tokio::select! {
                        Some(q) = qrx.recv() => {
                            send.write_all(&q).await.map_err(|e| LinkError::transport("sending a query", e))?;
                            continue;
                        }
                        h = wrx.recv() => match h {
                            Some(h) => {
                                current = Some(h);
                                continue;
                            }
                            None => return Ok(()),
                        },
                    },
                    Some(h) => tokio::select! {
                        Some(q) = qrx.recv() => {
                            send.write_all(&q).await.map_err(|e| LinkError::transport("sending a query", e))?;
                            continue;
                        }
                        r = h => r,
                    },
                };
                current = None;
                let (bytes, n, budget) = built.context("building a batch")??;
                send.write_all(&bytes)
                    .await
                    .map_err(|e| LinkError::transport("sending a batch", e))?;
                drop(budget);
                m3.update_out(i, |l| {
                    l.sent += n;
                    l.sent_bytes += bytes.len() as u64;
                });
            }
        }
        .await;
        if let Err(e) = r {
            let _ = werr_tx.send(e).await;
        }
    });
    let budget = Arc::new(Semaphore::new(BUILD_BUDGET_MIB as usize));
    let builders = Arc::new(Semaphore::new(BUILDS_AT_ONCE));
    let mut commits = store.commits();
    // Signs of life: the master's own and the newest of each master heard,
    // every ALIVE_EVERY_MS, through the writer like queries (small, and
    // never behind a batch still being built).
    let mut alive = tokio::time::interval(Duration::from_millis(engine::authority::ALIVE_EVERY_MS));
    alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut relay = engine::authority::Relay::default();
    // Where a later link may start is kept in the store now and then, so a
    // restart of this node does not read its whole apply order again.
    let mut keep = tokio::time::interval(RESUME_KEEP_EVERY);
    keep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keep.tick().await;
    let mut kept = resume.clone();
    let result: Result<(), LinkError> = async {
        loop {
            while let Some((from, max)) = engine.poll() {
                let w = wal.clone();
                let entries = tokio::task::spawn_blocking(move || w.read_order(from, max))
                    .await
                    .context("reading the apply order")?
                    .context("reading the apply order")?;
                // Each entry is decoded once: the body it references (if any)
                // counts towards its batch's size and travels with it.
                let read: Vec<ReadEntry> = entries
                    .iter()
                    .map(|(o, e)| ReadEntry::new(*o, e.origin.0, e.seq, &e.payload))
                    .collect();
                let by_order: HashMap<u64, &wal::Entry> = entries.iter().map(|(o, e)| (*o, e)).collect();
                for b in engine.read(&read) {
                    // Memory for the bodies of batches built and not yet
                    // written is bounded: taken here, in batch order, and
                    // given back once the writer has written the batch.
                    let units = b.body_bytes.div_ceil(1 << 20).clamp(1, BUILD_BUDGET_MIB as u64) as u32;
                    // Waits (here and for the writer below) may last while
                    // a batch waits for a query's answer: the queries'
                    // deadlines still run.
                    let permit = answers
                        .or_timeout(budget.clone().acquire_many_owned(units))
                        .await?
                        .context("the build budget")?;
                    // The batch is built (bodies read, frame encoded) in the
                    // blocking pool and written by the writer task, while
                    // this loop reads on.
                    let wire = b.orders.iter().map(|o| super::wire_entry(by_order[o])).collect();
                    let build = build_batch(store.clone(), mirror.clone(), i, b, wire, qtx.clone(), answers.clone());
                    let builders = builders.clone();
                    let build = tokio::spawn(async move {
                        // At most BUILDS_AT_ONCE batches are built at once:
                        // all at once (six at a link's start) the first took
                        // about 90 ms instead of 30 on two cores, and its
                        // sending waited for CPU.
                        let _turn = builders.acquire_owned().await.map_err(|_| LinkError::Closed)?;
                        build.await.map(|(bytes, n)| (bytes, n, permit))
                    });
                    if answers.or_timeout(wtx.send(build)).await?.is_err() {
                        break;
                    }
                }
            }
            // Where a later link may start, should this one be dropped.
            *resume = Some(engine.resume());
            let heads = wal.heads();
            let queue = engine.queue(&to_vec(&heads));
            let inflight = engine.inflight_batches() as u64;
            let unacked_bytes = engine.unacked_bytes();
            let local_added = heads.get(wal.local_origin());
            mirror.update_out(i, |l| {
                l.local_added = local_added;
                l.queue = queue;
                l.inflight_batches = inflight;
                l.unacked_bytes = unacked_bytes;
                if let Some(r) = l.send_window.update(now_ms(), l.sent) {
                    l.send_rate = r;
                }
                if queue == 0 {
                    l.caught_up_ms = now_ms();
                }
                l.acked = engine.acked().iter().map(|(o, s)| (format!("{o:016x}"), s)).collect();
            });
            mirror.acked.notify_waiters();
            tokio::select! {
                r = commits.changed() => {
                    r.context("store closed")?;
                    engine.local_commit(*commits.borrow_and_update());
                }
                e = werr.recv() => return Err(e.unwrap_or_else(|| anyhow::anyhow!("the batch writer stopped").into())),
                _ = until(answers.poll_timeout()) => answers.handle_timeout()?,
                _ = answers.asked.notified() => {}
                _ = keep.tick() => keep_resume(store, peer, &mut kept, engine.resume()).await,
                _ = alive.tick(), if alive_ok => {
                    let own = own_alive(store, mirror, seed)?;
                    let frames = relay.round(own, &mirror.liveness.lock().expect("mirror lock"), mono_ms());
                    for f in frames {
                        qtx.send(f.encode()).map_err(|_| LinkError::Closed)?;
                    }
                }
                f = rx.recv() => match f {
                    Some(Ok(f)) => {
                        if let Some(confirmed) = engine.frame(f)? {
                            wal.confirm(confirmed).map_err(|e| LinkError::Local(e.into()))?;
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(LinkError::Closed),
                },
            }
        }
    }
    .await;
    // Where the next link to this peer starts: taken once, as the link ends.
    keep_resume(store, peer, &mut kept, engine.resume()).await;
    *resume = kept;
    // Builders still waiting for an answer learn that none will come.
    answers.close();
    reader.abort();
    writer.abort();
    conn.close(0u32.into(), b"bye");
    result
}

/// How often a link keeps where a later link to its peer may start.
const RESUME_KEEP_EVERY: Duration = Duration::from_secs(5);

/// The application meta key of where a link to `peer` may start.
fn resume_key(peer: SocketAddr) -> String {
    format!("mirror-resume {peer}")
}

/// Where a link to `peer` may start reading the apply order, as an earlier
/// link kept it (in this run or an earlier one): postcard of `(position,
/// [(origin, seq)])`, the peer's acknowledged vector then. Absent or
/// unreadable: none, and the link reads from the start. A peer that now
/// holds less than that vector (restored from an older copy) is read for
/// from the start anyway (`Resume::fits`).
fn load_resume(wal: &wal::Wal, peer: SocketAddr) -> Option<engine::Resume> {
    let b = wal.app_meta(&resume_key(peer)).ok()??;
    let (order, vector): (u64, Vec<(u64, u64)>) = postcard::from_bytes(&b).ok()?;
    Some(engine::Resume {
        order,
        vector: engine::Vector(vector.into_iter().collect()),
    })
}

/// Keep `now` as where a link to `peer` may start, unless it is what was
/// `kept` last.
async fn keep_resume(store: &Store, peer: SocketAddr, kept: &mut Option<engine::Resume>, now: engine::Resume) {
    if kept.as_ref() != Some(&now) {
        save_resume(store, peer, Some(&now)).await;
        *kept = Some(now);
    }
}

/// Keep (or, with `None`, drop) where a link to `peer` may start. A failed
/// write is only logged: the next link then starts earlier, never later.
async fn save_resume(store: &Store, peer: SocketAddr, r: Option<&engine::Resume>) {
    let value = r.map_or_else(Vec::new, |r| {
        postcard::to_allocvec(&(r.order, r.vector.iter().collect::<Vec<_>>())).expect("encoding to memory")
    });
    let st = store.clone();
    let error = match tokio::task::spawn_blocking(move || st.wal().set_app_meta(&resume_key(peer), &value)).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!(error, "keeping where the next link to {peer} may start failed");
}

/// The application protocol a connection agreed on (ALPN).
fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// This node's `Hello`: its node id, origin, and `role` as its views say.
fn own_hello(store: &Store, role: &super::role::RoleState) -> Frame {
    Frame::Hello {
        node_id: store.node_id().to_string(),
        origin: store.wal().local_origin().0,
        role: role.name().to_string(),
        epoch: role.epoch,
    }
}

/// This node's own sign of life, when its views name it master: its node
/// id and epoch, a new stamp, and its version vector.
fn own_alive(store: &Store, mirror: &Mirror, seed: crate::config::Role) -> Result<Option<Frame>, LinkError> {
    let role = super::role::current(&store.views(), store.node_id(), seed).map_err(|e| LinkError::Local(e.into()))?;
    if !role.master {
        return Ok(None);
    }
    Ok(Some(Frame::Alive {
        node: store.node_id().to_string(),
        epoch: role.epoch,
        stamp: mirror
            .next_alive_stamp(store.wal())
            .map_err(|e| LinkError::Local(anyhow::Error::new(e).context("keeping the ceiling of the Alive stamps")))?,
        holds: to_vec(&store.wal().heads()),
    }))
}

/// The place of a fork that refused a batch, if that was why.
fn fork_of(e: &crate::store::StoreError) -> Option<&wal::Place> {
    use crate::mutate::MutationError;
    use crate::store::StoreError;
    use crate::views::ViewError;
    match e {
        StoreError::Wal(wal::WalError::Fork { place, .. })
        | StoreError::Mutation(MutationError::View(ViewError::Wal(wal::WalError::Fork { place, .. }))) => Some(place),
        _ => None,
    }
}

/// MiB of bodies that the batches built and not yet written on one link may
/// hold (a larger body still goes, alone). Without it a run of large
/// messages would have several copies in memory at once.
const BUILD_BUDGET_MIB: u32 = 256;

/// Batches of one link being built at once.
const BUILDS_AT_ONCE: usize = 2;

/// The driver's clock for the engine's timers: tokio's (so that paused
/// time in tests holds), as the `Instant` the engine speaks.
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleep until an engine timer, or for ever when the engine asks for none.
async fn until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// Run `fut` within an opening's deadline: `Err` when the deadline passes
/// first (`Deadline::handle_timeout`'s error), else what `fut` gave.
async fn within<F: std::future::IntoFuture>(deadline: &mut Deadline, fut: F) -> Result<F::Output, LinkError> {
    let fut = fut.into_future();
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return Ok(r),
            _ = until(deadline.poll_timeout()) => deadline.handle_timeout(clock())?,
        }
    }
}

/// A batch builder waiting for the answer to its body query.
type Waiting = tokio::sync::oneshot::Sender<Vec<bool>>;

/// The body queries of one outgoing link: their deadlines (the engine's
/// `dialer::Queries`) and the builders waiting for their answers. The
/// reader task hands each answer straight to its builder, never through
/// the link's loop, which may be waiting for that builder's batch.
struct Answers {
    /// The deadlines, and per query the builder waiting for its answer.
    state: std::sync::Mutex<(Queries, HashMap<u64, Waiting>)>,
    /// Wakes the link's loop when a query starts waiting: its deadline
    /// may be the earliest.
    asked: tokio::sync::Notify,
}

impl Answers {
    fn new() -> Answers {
        Answers {
            state: std::sync::Mutex::new((Queries::new(dialer::QUERY_TIMEOUT), HashMap::new())),
            asked: tokio::sync::Notify::new(),
        }
    }

    /// Query `id` leaves now; its answer comes through the receiver.
    fn ask(&self, id: u64) -> tokio::sync::oneshot::Receiver<Vec<bool>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut st = self.state.lock().expect("answers lock");
        st.0.asked(id, clock());
        st.1.insert(id, tx);
        drop(st);
        self.asked.notify_one();
        rx
    }

    /// The peer answered query `id` (a stray answer is dropped).
    fn answer(&self, id: u64, held: Vec<bool>) {
        let mut st = self.state.lock().expect("answers lock");
        if st.0.answered(id) {
            if let Some(w) = st.1.remove(&id) {
                let _ = w.send(held);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.state.lock().expect("answers lock").0.poll_timeout()
    }

    fn handle_timeout(&self) -> Result<(), LinkError> {
        self.state.lock().expect("answers lock").0.handle_timeout(clock())
    }

    /// Wait for `fut`, ending the link if a query's deadline passes first.
    async fn or_timeout<F: std::future::Future>(&self, fut: F) -> Result<F::Output, LinkError> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                r = &mut fut => return Ok(r),
                _ = until(self.poll_timeout()) => self.handle_timeout()?,
                _ = self.asked.notified() => {}
            }
        }
    }

    /// The link ended: no answer will come.
    fn close(&self) {
        self.state.lock().expect("answers lock").1.clear();
    }
}

/// Build one batch: decide which bodies travel, read them, encode. A body
/// this node holds references to outside this batch may already be at the
/// peer, so the peer is asked first; a body referenced only by entries of
/// this batch (one delivery, or one delivery to several users) travels
/// unasked.
async fn build_batch(
    store: Store,
    mirror: Arc<Mirror>,
    i: usize,
    b: dialer::Build,
    wire: Vec<WireEntry>,
    queries: mpsc::UnboundedSender<Vec<u8>>,
    answers: Arc<Answers>,
) -> Result<(Vec<u8>, u64), LinkError> {
    let (id, already, qid) = (b.id, b.already, b.query);
    let st = store.clone();
    let want = b.want;
    let (mut send, ask) = tokio::task::spawn_blocking(move || {
        dialer::choose_bodies(want, |h| st.body_refs(&crate::event::BlobHash(*h)).map_err(anyhow::Error::from))
    })
    .await
    .context("choosing bodies")??;
    let mut held_by_peer = 0;
    if !ask.is_empty() {
        let wrx = answers.ask(qid);
        let q = Frame::Query {
            id: qid,
            hashes: ask.clone(),
        };
        queries.send(q.encode()).map_err(|_| LinkError::Closed)?;
        mirror.update_out(i, |l| l.body_queries += 1);
        // A peer that never answers must not hold the link up for ever:
        // its deadline ends the link (`Answers`), and then this wait.
        let held = wrx.await.map_err(|_| LinkError::Closed)?;
        let (more, at_peer) = dialer::answered(qid, ask, held)?;
        send.extend(more);
        held_by_peer = at_peer;
    }
    let built = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<u8>, u64)> {
        let mut blobs = Vec::with_capacity(send.len());
        let mut bytes = 0;
        for blob in send.drain(..) {
            if let Some(b) = store.blob(&crate::event::BlobHash(blob))? {
                bytes += b.len() as u64;
                blobs.push(WireBlob { hash: blob, body: b });
            }
        }
        let (n, nb) = (wire.len() as u64, blobs.len() as u64);
        mirror.update_out(i, |l| {
            l.bodies_sent += nb;
            l.body_bytes_sent += bytes;
            l.bodies_held_by_peer += held_by_peer;
            l.bodies_already_sent += already;
        });
        // A body larger than a chunk travels in Chunk frames just before
        // its batch, so no frame limit bounds the size of a message.
        let mut out = Vec::new();
        let (large, blobs): (Vec<WireBlob>, Vec<WireBlob>) = blobs.into_iter().partition(|b| b.body.len() > CHUNK_BYTES);
        for b in large {
            for piece in b.body.chunks(CHUNK_BYTES) {
                let chunk = Frame::Chunk {
                    hash: b.hash,
                    total: b.body.len() as u64,
                    bytes: piece.to_vec(),
                };
                chunk.encode_into(&mut out);
            }
        }
        Frame::Batch { id, entries: wire, blobs }.encode_into(&mut out);
        Ok((out, n))
    })
    .await
    .context("reading bodies")??;
    Ok(built)
}

/// Unauthenticated incoming connections per remote IP address.
struct PerIp {
    held: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
    max: usize,
}

impl PerIp {
    fn take(this: &Arc<PerIp>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut held = this.held.lock().expect("per-ip lock");
        let n = held.entry(ip).or_insert(0);
        if *n >= this.max {
            return None;
        }
        *n += 1;
        Some(IpSlot(this.clone(), ip))
    }
}

/// One unauthenticated connection of an address; given back on drop.
struct IpSlot(Arc<PerIp>, std::net::IpAddr);

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut held = self.0.held.lock().expect("per-ip lock");
        if let Some(n) = held.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.1);
            }
        }
    }
}

/// What an incoming connection holds until it has authenticated (given
/// back when dropped).
struct PreAuth {
    _all: OwnedSemaphorePermit,
    _ip: IpSlot,
}

/// Bounds on the incoming side of the mirror port.
struct Limits {
    /// One permit per incoming connection, authenticated or not.
    connections: Arc<Semaphore>,
    /// One permit per incoming connection until it has authenticated.
    unauthenticated: Arc<Semaphore>,
    /// The same, per remote IP address, so that one address cannot take
    /// every unauthenticated slot.
    per_ip: Arc<PerIp>,
    /// Time from the first packet to a proven secret and a `Hello`.
    auth_timeout: Duration,
}

async fn accept_loop(
    ep: quinn::Endpoint,
    store: Store,
    mirror: Arc<Mirror>,
    secret: Arc<Vec<u8>>,
    limits: Limits,
    peer_back: Arc<tokio::sync::Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_cap_log: Option<Instant> = None;
    loop {
        let incoming = tokio::select! {
            i = ep.accept() => match i { Some(i) => i, None => return },
            _ = wait_shutdown(&mut shutdown) => {
                ep.close(0u32.into(), b"shutting down");
                // The port is free again only once every connection has
                // drained, attempts abandoned by a fresh dial included:
                // a restart in the same process binds it at once.
                let _ = tokio::time::timeout(Duration::from_secs(5), ep.wait_idle()).await;
                return;
            }
        };
        let remote = incoming.remote_address();
        // An address must first show that it receives what is sent to it
        // (a QUIC Retry, one round trip), so that packets with forged
        // source addresses cannot take the slots below.
        if !incoming.remote_address_validated() {
            let _ = incoming.retry();
            continue;
        }
        // Over any cap the attempt is refused at once (a QUIC
        // CONNECTION_REFUSED), before any TLS work.
        let permits = limits.connections.clone().try_acquire_owned().ok().and_then(|c| {
            let all = limits.unauthenticated.clone().try_acquire_owned().ok()?;
            let ip = PerIp::take(&limits.per_ip, remote.ip())?;
            Some((c, PreAuth { _all: all, _ip: ip }))
        });
        let Some((connection, unauthenticated)) = permits else {
            incoming.refuse();
            let n = mirror.connections_refused.fetch_add(1, Ordering::Relaxed) + 1;
            if last_cap_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                last_cap_log = Some(Instant::now());
                tracing::warn!(
                    remote = %remote,
                    refused = n,
                    "mirror connection refused: mirror.max_connections, max_unauthenticated or max_unauthenticated_per_ip reached"
                );
            }
            continue;
        };
        let (store, mirror, secret, peer_back) = (store.clone(), mirror.clone(), secret.clone(), peer_back.clone());
        let auth_timeout = limits.auth_timeout;
        let span = tracing::info_span!("mirror-in", peer = %remote);
        tokio::spawn(
            async move {
                let _connection = connection;
                if let Err(e) = receive(incoming, &store, &mirror, &secret, auth_timeout, unauthenticated, &peer_back).await {
                    tracing::info!(kind = e.kind(), error = %e, "incoming mirror link ended");
                }
            }
            .instrument(span),
        );
    }
}

/// Whether a node id from a `Hello` has the shape of one (`node.id`).
/// Accept the stream, authenticate, and read the dialer's `Hello`: the
/// node id it gave.
async fn authenticate(conn: &quinn::Connection, store: &Store, mirror: &Mirror, secret: &[u8]) -> Result<Opened, LinkError> {
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| LinkError::transport("accepting the stream", e))?;
    handshake::accept(conn, &mut send, &mut recv, secret, mirror).await?;
    let first = read_frame(&mut recv, mirror, PREAUTH_FRAME).await?;
    match engine::handshake::opening(first, store.wal().local_origin().0) {
        Ok(Opening::Resync { node_id }) => Ok(Opened::Resync(send, recv, node_id)),
        Ok(Opening::Link(h)) => Ok(Opened::Link(send, recv, h.node_id, h.role, h.epoch)),
        Err(e) if e.refuses_peer() => {
            let _ = write_frame(&mut send, &Frame::Refused { reason: e.to_string() }).await;
            let _ = send.finish();
            // Give the refusal time to leave before the connection closes.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// What an authenticated peer opened: a mirror link (its stream, node id,
/// role and epoch), or a merkle resync exchange (`super::resync`).
enum Opened {
    Link(quinn::SendStream, quinn::RecvStream, String, String, u64),
    Resync(quinn::SendStream, quinn::RecvStream, String),
}

/// One incoming link: authenticate within the deadline, tell the sender
/// where to start, apply batches, acknowledge each once durable.
async fn receive(
    incoming: quinn::Incoming,
    store: &Store,
    mirror: &Arc<Mirror>,
    secret: &[u8],
    auth_timeout: Duration,
    unauthenticated: PreAuth,
    peer_back: &tokio::sync::Notify,
) -> Result<(), LinkError> {
    let mut deadline = Deadline::start(Side::Acceptor, clock(), auth_timeout);
    let timed_out = |e: LinkError| {
        mirror.auth_timeouts.fetch_add(1, Ordering::Relaxed);
        e
    };
    let conn = match within(&mut deadline, incoming).await {
        Ok(c) => c.map_err(|e| LinkError::transport("accepting", e))?,
        Err(e) => return Err(timed_out(e)),
    };
    let opened = within(&mut deadline, authenticate(&conn, store, mirror, secret)).await;
    deadline.opened();
    let (send, recv, node_id, role, epoch) = match opened {
        Ok(Ok(Opened::Link(send, recv, node_id, role, epoch))) => (send, recv, node_id, role, epoch),
        Ok(Ok(Opened::Resync(send, recv, node_id))) => {
            // Not bound by the authentication deadline: the exchange only
            // reads, and the peer proved the secret.
            drop(unauthenticated);
            conn.set_receive_window(quinn::VarInt::from_u32(LINK_WINDOW));
            tracing::info!(peer = %node_id, "resync exchange");
            let r = super::resync::serve(store, mirror, send, recv).await;
            conn.close(0u32.into(), b"bye");
            return r.map_err(LinkError::Local);
        }
        Ok(Err(e)) => {
            conn.close(1u32.into(), e.kind().as_bytes());
            return Err(e);
        }
        Err(e) => {
            conn.close(2u32.into(), b"authentication timeout");
            return Err(timed_out(e));
        }
    };
    drop(unauthenticated);
    peer_back.notify_waiters();
    conn.set_receive_window(quinn::VarInt::from_u32(LINK_WINDOW));
    tracing::Span::current().record("peer", node_id.as_str());
    let ours = super::role::current(&store.views(), store.node_id(), *mirror.seed.lock().expect("mirror lock"))
        .map_err(|e| LinkError::Local(e.into()))?;
    if epoch > ours.epoch {
        tracing::info!(peer_role = %role, epoch, ours = ours.epoch, "the peer holds a higher epoch; its role event follows on this link");
    }
    let mut send = send;
    // A dialer of version 7 learns whom it reached from this node's own
    // `Hello`, before the vector (`replication.md` section 5.1).
    if frame::acceptor_introduces(alpn(&conn).as_deref()) {
        write_frame(&mut send, &own_hello(store, &ours)).await?;
    }
    mirror.learn_peer(conn.remote_address(), &node_id);
    let link = mirror.in_link_up(&node_id, |l| {
        l.since_ms = now_ms();
        l.peer_role = Some(role);
        l.peer_epoch = epoch;
    });
    let result = serve(send, recv, store, mirror, &node_id, link).await;
    mirror.in_link_ended(&node_id, link);
    // The peer refused to send to this node (it pruned what this node
    // lacks, or the histories diverge): whether to join it by trees is
    // decided on its log bases, by `resync::join`. Its link comes from
    // its mirror endpoint, so the remote address is where it listens.
    if matches!(result, Err(LinkError::RefusedByPeer(_))) {
        mirror.join.suspect(conn.remote_address().to_string(), &node_id);
    }
    conn.close(0u32.into(), b"bye");
    result
}

/// Apply a batch of more than [`receiver::APPLY_PART`] entries in parts, in order.
/// Each entry stays atomic with its views; the bodies go with the first
/// part, and later parts count them as stored. A failed part leaves the
/// parts before it applied (the sender resends the rest after the
/// refusal, and what is already held is skipped as duplicates).
async fn apply_in_parts(
    store: Store,
    mut entries: Vec<WireEntry>,
    blobs: Vec<WireBlob>,
    mut stored: Vec<[u8; 32]>,
) -> Result<Applied, crate::store::StoreError> {
    let mut total = Applied::default();
    let mut blobs = Some(blobs);
    while !entries.is_empty() {
        let rest = entries.split_off(entries.len().min(receiver::APPLY_PART));
        let part = std::mem::replace(&mut entries, rest);
        let bodies = blobs.take().unwrap_or_default();
        let held = stored.clone();
        stored.extend(bodies.iter().map(|b| b.hash));
        total += store
            .submit(move |t, c| apply_batch(t, c, &part, &bodies, &held).map_err(Into::into))
            .await?;
    }
    Ok(total)
}

/// The authenticated part of an incoming link.
async fn serve(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    store: &Store,
    mirror: &Arc<Mirror>,
    node_id: &str,
    link: u64,
) -> Result<(), LinkError> {
    let held = super::history::advertised(store.wal()).map_err(|e| LinkError::Local(e.into()))?;
    write_frame(
        &mut send,
        &Frame::Vector {
            vector: held.vector,
            hashes: held.hashes,
        },
    )
    .await?;
    // Frames are read, decoded and their bodies hashed on their own task,
    // while earlier batches are being applied: up to
    // `receiver::APPLY_AHEAD` batches are queued at the writer at once
    // (they may share one fsync), and each is acknowledged, in order, once
    // durable (`engine::receiver`).
    let (tx, mut rx) = mpsc::channel::<Result<Prepared, LinkError>>(receiver::APPLY_AHEAD);
    let m2 = mirror.clone();
    let st = store.clone();
    let own_origin = store.wal().local_origin().0;
    let own_node = store.node_id().to_string();
    let peer_node = node_id.to_string();
    // Several batches are prepared at once (their bodies hashed and, when
    // large, written and flushed), so one batch's disk flush overlaps the
    // next one's work; results are passed on in arrival order.
    const PREPARE_AHEAD: usize = 3;
    let (htx, mut hrx) = mpsc::channel::<tokio::task::JoinHandle<Result<Prepared, LinkError>>>(PREPARE_AHEAD);
    let reader = tokio::spawn(async move {
        let mut intake = Intake::new(own_origin);
        loop {
            let st = st.clone();
            // Refusals decided on arrival, before any work on the frame.
            let arrival = match read_frame(&mut recv, &m2, MAX_FRAME).await {
                Ok(Frame::Refused { reason }) => Err(LinkError::refused_by_peer(&reason)),
                Ok(f) => {
                    let own_head = || st.wal().heads().get(wal::Origin(own_origin));
                    let behind = m2.rollbacks.load(Ordering::Relaxed) > 0;
                    match intake.arrive(f, own_head, behind) {
                        Ok(None) => continue,
                        Ok(Some(Arrival::Alive(f))) => {
                            m2.liveness.lock().expect("mirror lock").heard(&own_node, &peer_node, f, mono_ms());
                            continue;
                        }
                        Ok(Some(a)) => Ok(a),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let stop = arrival.is_err();
            // A batch with many bodies has them written once, straight to
            // blob files, here (while the writer commits earlier batches);
            // its entries follow through the writer.
            let h = match arrival {
                Ok(Arrival::Batch { id, entries, blobs }) => tokio::task::spawn_blocking(move || {
                    verify_blobs(&blobs).map_err(|e| LinkError::BatchRefused { id, reason: e.to_string() })?;
                    let bytes: u64 = blobs.iter().map(|b| b.body.len() as u64).sum();
                    let bulk = st.wal().bulk_bytes();
                    if bulk > 0 && bytes >= bulk {
                        let items: Vec<(&[u8], &[u8])> = blobs.iter().map(|b| (&b.hash[..], &b.body[..])).collect();
                        st.put_bodies_flushed(&items).context("storing bodies")?;
                        let stored = blobs.iter().map(|b| b.hash).collect();
                        return Ok(Prepared::Batch {
                            id,
                            entries,
                            blobs: Vec::new(),
                            stored,
                        });
                    }
                    Ok(Prepared::Batch {
                        id,
                        entries,
                        blobs,
                        stored: Vec::new(),
                    })
                }),
                Ok(Arrival::Query { id, hashes }) => tokio::spawn(async move { Ok(Prepared::Query { id, hashes }) }),
                Ok(Arrival::Alive(_)) => unreachable!("taken on arrival"),
                Err(e) => tokio::spawn(async move { Err(e) }),
            };
            if htx.send(h).await.is_err() || stop {
                break;
            }
        }
    });
    let forward = tokio::spawn(async move {
        while let Some(h) = hrx.recv().await {
            let r = h.await.unwrap_or_else(|e| Err(anyhow::anyhow!("preparing a batch: {e}").into()));
            let stop = r.is_err();
            if tx.send(r).await.is_err() || stop {
                break;
            }
        }
    });
    type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Applied, crate::store::StoreError>> + Send>>;
    // The writer's futures, in the engine's order of batches at the writer.
    let mut engine = Receiver::new();
    let mut pending: std::collections::VecDeque<Pending> = Default::default();
    let result: Result<(), LinkError> = async {
        loop {
            while let Some(step) = engine.poll() {
                match step {
                    Step::Apply {
                        entries,
                        blobs,
                        stored,
                        parts: true,
                        ..
                    } => pending.push_back(Box::pin(apply_in_parts(store.clone(), entries, blobs, stored))),
                    Step::Apply {
                        entries, blobs, stored, ..
                    } => {
                        pending.push_back(Box::pin(
                            store.submit(move |t, c| apply_batch(t, c, &entries, &blobs, &stored).map_err(Into::into)),
                        ));
                    }
                    Step::Answer { id, hashes } => {
                        // Answered from what is durable here; a body on
                        // its way in a batch of this link is never asked.
                        let st = store.clone();
                        let held = tokio::task::spawn_blocking(move || {
                            hashes
                                .iter()
                                .map(|h| st.holds_body(&crate::event::BlobHash(*h)))
                                .collect::<Result<Vec<bool>, _>>()
                        })
                        .await
                        .context("answering a query")?
                        .context("answering a query")?;
                        write_frame(&mut send, &Frame::Held { id, held }).await?;
                    }
                }
            }
            tokio::select! {
                biased;
                r = async { pending.front_mut().expect("guarded").await }, if !pending.is_empty() => {
                    pending.pop_front();
                    let id = engine.front().expect("a batch at the writer");
                    let n = match r {
                        Ok(n) => n,
                        Err(e) => {
                            if let Some(place) = fork_of(&e) {
                                mirror.diverged(false, format!("batch {id} from {node_id} refused: history fork at {place}"));
                            }
                            return Err(engine.applied(id, Err(e.to_string())).expect_err("a refused batch ends the link"));
                        }
                    };
                    let id = engine.applied(id, Ok(()))?;
                    count_applied(mirror, node_id, n);
                    write_frame(
                        &mut send,
                        &Frame::Ack {
                            id,
                            vector: to_vec(&store.wal().heads()),
                        },
                    )
                    .await?;
                }
                f = rx.recv(), if engine.room() => match f {
                    Some(Ok(p)) => engine.prepared(p),
                    Some(Err(e)) => return Err(e),
                    None => return Err(LinkError::Closed),
                },
            }
        }
    }
    .await;
    reader.abort();
    forward.abort();
    // Batches already handed to the writer are written whether or not the
    // link goes on: what they applied is counted (they are not
    // acknowledged, so the peer sends them again, and they are then
    // duplicates here).
    while let Some(p) = pending.pop_front() {
        if let Ok(n) = p.await {
            count_applied(mirror, node_id, n);
        }
    }
    if let Err(e) = &result {
        match e {
            LinkError::OwnOrigin { .. } => mirror.own_origin_refused.fetch_add(1, Ordering::Relaxed),
            LinkError::BatchTooLarge { .. } => mirror.oversized_batches.fetch_add(1, Ordering::Relaxed),
            LinkError::QueryFlood { .. } => mirror.query_floods.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        if e.refuses_peer() {
            mirror.update_in(node_id, |l| {
                l.failed += 1;
                l.last_error = Some(e.to_string());
            });
            mirror.in_link_ended(node_id, link);
            let _ = write_frame(&mut send, &Frame::Refused { reason: e.to_string() }).await;
            let _ = send.finish();
            // Give the refusal time to leave before the connection closes.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    result
}

/// Count a batch applied from `node_id` on its incoming link, and report
/// the move of this node's entries to a successor origin if it made one.
fn count_applied(mirror: &Mirror, node_id: &str, n: Applied) {
    if let Some(r) = n.moved {
        mirror.diverged(
            false,
            format!(
                "history fork at origin {} seq {}: this node's log went backwards; its {} entries from there moved to the new origin {}",
                r.old, r.from, r.moved, r.new
            ),
        );
    }
    mirror.update_in(node_id, |l| l.applied_batch(n, now_ms()));
}

/// Dial `peer` from a fresh endpoint and prove the shared secret both
/// ways: the start of a merkle resync exchange (`super::resync`).
pub(super) async fn dial_resync(
    peer: SocketAddr,
    data_dir: &Path,
    secret: &[u8],
    mirror: &Mirror,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let local: SocketAddr = if peer.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let ep = endpoint(local, data_dir, Duration::from_secs(30))?;
    let conn = tokio::time::timeout(Duration::from_secs(5), ep.connect(peer, "tandem")?)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from the peer {peer} within 5 s"))?
        .with_context(|| format!("connecting to {peer}"))?;
    let (mut send, mut recv) = conn.open_bi().await.context("opening the stream")?;
    handshake::dial(&conn, &mut send, &mut recv, secret, mirror).await?;
    conn.set_receive_window(quinn::VarInt::from_u32(LINK_WINDOW));
    Ok((ep, conn, send, recv))
}
