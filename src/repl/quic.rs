//! The quinn driver of the mirror: endpoint and certificates, the shared
//! secret proof, one outgoing link per peer (with reconnects), and the
//! incoming links that apply what peers push.

use super::apply::{apply_batch, verify_blobs, Applied};
use super::engine::{Command, Item, Sender, Window};
use super::frame::{Frame, WireBlob, WireEntry};
use super::{now_ms, Mirror, OutLink};
use crate::config::MirrorConfig;
use crate::event::Event;
use crate::store::Store;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

const ALPN: &[u8] = b"tandem-mirror/1";
const EXPORTER_LABEL: &[u8] = b"EXPORTER-tandem-mirror-auth";

/// Keyed blake3 over this connection's TLS exporter and the side: a relay
/// cannot reuse it on another connection, and a reflected MAC does not fit.
fn mac(secret: &[u8], conn: &quinn::Connection, side: &[u8]) -> anyhow::Result<[u8; 32]> {
    let mut ekm = [0u8; 32];
    conn.export_keying_material(&mut ekm, EXPORTER_LABEL, b"")
        .map_err(|_| anyhow::anyhow!("TLS exporter unavailable"))?;
    let key = blake3::derive_key("tandem mirror secret v1", secret);
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(side);
    h.update(&ekm);
    Ok(*h.finalize().as_bytes())
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    crate::auth::constant_time_eq(a, b)
}

async fn write_frame(send: &mut quinn::SendStream, f: &Frame) -> anyhow::Result<()> {
    send.write_all(&f.encode()).await.context("writing a frame")?;
    Ok(())
}

async fn read_frame(recv: &mut quinn::RecvStream, mirror: &Mirror) -> anyhow::Result<Frame> {
    let mut hdr = [0u8; 4];
    recv.read_exact(&mut hdr).await.context("reading a frame header")?;
    let n = Frame::length(hdr).inspect_err(|_| {
        mirror.bad_frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })?;
    let mut body = vec![0u8; n as usize];
    recv.read_exact(&mut body).await.context("reading a frame body")?;
    Frame::decode(&body)
        .inspect_err(|_| {
            mirror.bad_frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .context("decoding a frame")
}

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

fn endpoint(listen: SocketAddr, data_dir: &Path) -> anyhow::Result<quinn::Endpoint> {
    crate::tls::install_provider();
    let (cert, key) = (data_dir.join("mirror/cert.pem"), data_dir.join("mirror/key.pem"));
    crate::tls::ensure_self_signed(&cert, &key, vec!["tandem".into()])?;
    let (certs, key) = crate::tls::load_pem(&cert, &key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("30 s fits")));
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    // Windows sized for a WAN: a link moving ~330 MB/s over a 100 ms round
    // trip has ~33 MB in flight, so the stream window is 64 MiB (at 32 MiB
    // the delayed path ran at 78 % of loopback, at 64 MiB at 84-87 %; the
    // defaults allow ~12 MB/s). Buffers grow only as data is in flight.
    transport.stream_receive_window(quinn::VarInt::from_u32(64 << 20));
    transport.receive_window(quinn::VarInt::from_u32(128 << 20));
    transport.send_window(128 << 20);
    let transport = Arc::new(transport);
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(server)?));
    sc.transport_config(transport.clone());
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerCert(provider)))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
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
    let ep = endpoint(listen, data_dir)?;
    let local_addr = ep.local_addr()?;
    *mirror.listen.lock().expect("mirror lock") = Some(local_addr.to_string());
    *mirror.role.lock().expect("mirror lock") = format!("{:?}", cfg.mode).to_lowercase();
    let secret = Arc::new(secret);
    let window = Window {
        batches: cfg.window_batches,
        entries: cfg.batch_entries,
        bytes: cfg.batch_bytes,
    };
    let mut tasks = Vec::new();
    {
        let (ep, store, mirror, secret, shutdown) = (ep.clone(), store.clone(), mirror.clone(), secret.clone(), shutdown.clone());
        tasks.push(tokio::spawn(accept_loop(ep, store, mirror, secret, shutdown)));
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
            dial_loop(ep, *peer, i, store, mirror, secret, window, backoff, shutdown).instrument(span),
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
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = min;
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
            r = link(&ep, peer, i, &store, &mirror, &secret, window) => r,
            _ = wait_shutdown(&mut shutdown) => return,
        };
        if let Err(e) = r {
            let msg = format!("{e:#}");
            let refused = msg.contains("refused");
            if !refused || last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(error = %msg, "mirror link to {peer} failed");
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
        if started.elapsed() > Duration::from_secs(10) {
            delay = min;
        }
        // Exponential backoff with jitter.
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        let wait = delay.mul_f64(jitter);
        delay = (delay * 2).min(max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wait_shutdown(&mut shutdown) => return,
        }
    }
}

fn to_vec(v: &wal::VersionVector) -> Vec<(u64, u64)> {
    v.0.iter().map(|(o, s)| (o.0, *s)).collect()
}

/// One outgoing link, until it fails.
async fn link(
    ep: &quinn::Endpoint,
    peer: SocketAddr,
    i: usize,
    store: &Store,
    mirror: &Arc<Mirror>,
    secret: &[u8],
    window: Window,
) -> anyhow::Result<()> {
    // A peer that does not answer is retried after the backoff, not after
    // the 30 s idle timeout.
    let conn = tokio::time::timeout(Duration::from_secs(5), ep.connect(peer, "tandem")?)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from the peer within 5 s"))?
        .context("connecting")?;
    let (mut send, mut recv) = conn.open_bi().await.context("opening the stream")?;
    write_frame(
        &mut send,
        &Frame::Auth {
            mac: mac(secret, &conn, b"client")?,
        },
    )
    .await?;
    match read_frame(&mut recv, mirror).await? {
        Frame::Auth { mac: theirs } if ct_eq(&theirs, &mac(secret, &conn, b"server")?) => {}
        Frame::Refused { reason } => bail!("refused by the peer: {reason}"),
        Frame::Auth { .. } => bail!("refused: the peer does not know the shared secret"),
        other => bail!("unexpected frame before authentication: {other:?}"),
    }
    let wal = store.wal().clone();
    let role = mirror.role.lock().expect("mirror lock").clone();
    write_frame(
        &mut send,
        &Frame::Hello {
            node_id: store.node_id().to_string(),
            origin: wal.local_origin().0,
            role,
            epoch: 0,
        },
    )
    .await?;
    let Frame::Vector { vector } = read_frame(&mut recv, mirror).await? else {
        bail!("expected the peer's vector")
    };
    let mut engine = Sender::new(window);
    engine.start(&vector, wal.last_order());
    mirror.update_out(i, |l| {
        l.state = "connected".into();
        l.since_ms = now_ms();
        l.caught_up_ms = now_ms();
    });
    tracing::info!("mirror link up");
    // Frames from the peer arrive on their own task (reads are not
    // cancel-safe). Answers to body queries go straight to the batch
    // builder waiting for them; everything else to this loop.
    type Answers = Arc<std::sync::Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Vec<bool>>>>>;
    let answers: Answers = Default::default();
    // Room for an acknowledgement of every batch in flight and then some:
    // this loop may wait on the batch writer, whose builder may wait on a
    // query answer that only this reader can pass on, so the reader must
    // never wait on this loop.
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<Frame>>(window.batches + 64);
    let m2 = mirror.clone();
    let a2 = answers.clone();
    let reader = tokio::spawn(async move {
        loop {
            let f = read_frame(&mut recv, &m2).await;
            if let Ok(Frame::Held { id, held }) = f {
                if let Some(w) = a2.lock().expect("answers lock").remove(&id) {
                    let _ = w.send(held);
                }
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
    type Built = anyhow::Result<(Vec<u8>, u64)>;
    let (wtx, mut wrx) = mpsc::channel::<tokio::task::JoinHandle<Built>>(4);
    let (qtx, mut qrx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (werr_tx, mut werr) = mpsc::channel::<anyhow::Error>(1);
    let m3 = mirror.clone();
    let writer = tokio::spawn(async move {
        let r: anyhow::Result<()> = async {
            let mut current: Option<tokio::task::JoinHandle<Built>> = None;
            loop {
                let built = match current.as_mut() {
                    None => tokio::select! {
                        Some(q) = qrx.recv() => {
                            send.write_all(&q).await.context("sending a query")?;
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
                            send.write_all(&q).await.context("sending a query")?;
                            continue;
                        }
                        r = h => r,
                    },
                };
                current = None;
                let (bytes, n) = built.context("building a batch")??;
                send.write_all(&bytes).await.context("sending a batch")?;
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
    // Bodies sent on this link so far: a body several entries reference
    // (one delivery to many users, a copy) travels once.
    let mut sent_blobs: std::collections::HashSet<[u8; 32]> = Default::default();
    let mut next_query = 1u64;
    let mut commits = store.commits();
    let result: anyhow::Result<()> = async {
        loop {
            while let Some(cmd) = engine.poll() {
                let Command::Read { from, max } = cmd else { continue };
                let w = wal.clone();
                let entries = tokio::task::spawn_blocking(move || w.read_order(from, max)).await??;
                // Each entry is decoded once: the body it references (if any)
                // counts towards its batch's size and travels with it.
                let bodies: HashMap<u64, (crate::event::BlobHash, u64)> = entries
                    .iter()
                    .filter_map(|(o, e)| match Event::decode(&e.payload) {
                        Ok(Event::MessageAppended { blob, size, .. } | Event::MessageRestored { blob, size, .. }) => {
                            Some((*o, (blob, size)))
                        }
                        _ => None,
                    })
                    .collect();
                let items: Vec<Item> = entries
                    .iter()
                    .map(|(o, e)| Item {
                        order: *o,
                        origin: e.origin.0,
                        seq: e.seq,
                        bytes: e.payload.len() as u64 + 64 + bodies.get(o).map_or(0, |b| b.1),
                    })
                    .collect();
                let by_order: HashMap<u64, &wal::Entry> = entries.iter().map(|(o, e)| (*o, e)).collect();
                for c in engine.read(&items) {
                    let Command::Send { id, orders } = c else { continue };
                    // The batch is built (bodies read, frame encoded) in the
                    // blocking pool and written by the writer task, while
                    // this loop reads on.
                    let mut wire = Vec::with_capacity(orders.len());
                    // Bodies to send, with how many entries of this batch
                    // reference each.
                    let mut want: Vec<(crate::event::BlobHash, u64)> = Vec::new();
                    let mut already = 0;
                    for o in orders {
                        let e = by_order[&o];
                        if let Some((blob, _)) = bodies.get(&o) {
                            if sent_blobs.len() >= 1 << 20 {
                                sent_blobs.clear(); // bounded memory; at worst a body travels again
                            }
                            if sent_blobs.insert(blob.0) {
                                want.push((*blob, 1));
                            } else if let Some(w) = want.iter_mut().find(|w| w.0 == *blob) {
                                w.1 += 1;
                                already += 1;
                            } else {
                                already += 1;
                            }
                        }
                        wire.push(WireEntry {
                            origin: e.origin.0,
                            seq: e.seq,
                            hlc: e.hlc,
                            hash: e.hash,
                            payload: e.payload.clone(),
                        });
                    }
                    let qid = next_query;
                    next_query += 1;
                    let build = tokio::spawn(build_batch(
                        store.clone(),
                        mirror.clone(),
                        i,
                        id,
                        wire,
                        want,
                        already,
                        qid,
                        qtx.clone(),
                        answers.clone(),
                    ));
                    if wtx.send(build).await.is_err() {
                        break;
                    }
                }
            }
            let heads = wal.heads();
            let queue: u64 = heads
                .0
                .iter()
                .map(|(o, s)| s.saturating_sub(engine.acked().get(&o.0).copied().unwrap_or(0)))
                .sum();
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
                l.acked = engine.acked().iter().map(|(o, s)| (format!("{o:016x}"), *s)).collect();
            });
            mirror.acked.notify_waiters();
            tokio::select! {
                r = commits.changed() => {
                    r.context("store closed")?;
                    engine.local_commit(*commits.borrow_and_update());
                }
                e = werr.recv() => return Err(e.unwrap_or_else(|| anyhow::anyhow!("the batch writer stopped"))),
                f = rx.recv() => match f {
                    Some(Ok(Frame::Ack { id, vector })) => engine.ack(id, &vector),
                    Some(Ok(Frame::Refused { reason })) => bail!("refused by the peer: {reason}"),
                    Some(Ok(other)) => bail!("unexpected frame from the receiver: {other:?}"),
                    Some(Err(e)) => return Err(e),
                    None => bail!("link closed"),
                },
            }
        }
    }
    .await;
    reader.abort();
    writer.abort();
    conn.close(0u32.into(), b"bye");
    result
}

/// How long a batch builder waits for the peer to answer a body query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Build one batch: decide which bodies travel, read them, encode. A body
/// this node holds references to outside this batch may already be at the
/// peer, so the peer is asked first; a body referenced only by entries of
/// this batch (one delivery, or one delivery to several users) travels
/// unasked.
#[allow(clippy::too_many_arguments)]
async fn build_batch(
    store: Store,
    mirror: Arc<Mirror>,
    i: usize,
    id: u64,
    wire: Vec<WireEntry>,
    want: Vec<(crate::event::BlobHash, u64)>,
    already: u64,
    qid: u64,
    queries: mpsc::UnboundedSender<Vec<u8>>,
    answers: Arc<std::sync::Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Vec<bool>>>>>,
) -> anyhow::Result<(Vec<u8>, u64)> {
    let st = store.clone();
    let (mut send, ask) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let (mut send, mut ask) = (Vec::new(), Vec::new());
        for (b, in_batch) in want {
            if st.body_refs(&b)? > in_batch {
                ask.push(b);
            } else {
                send.push(b);
            }
        }
        Ok((send, ask))
    })
    .await??;
    let mut held_by_peer = 0;
    if !ask.is_empty() {
        let (wtx, wrx) = tokio::sync::oneshot::channel();
        answers.lock().expect("answers lock").insert(qid, wtx);
        let q = Frame::Query {
            id: qid,
            hashes: ask.iter().map(|b| b.0).collect(),
        };
        queries.send(q.encode()).map_err(|_| anyhow::anyhow!("link closed"))?;
        mirror.update_out(i, |l| l.body_queries += 1);
        // A peer that never answers must not hold the link up for ever:
        // the link fails and reconnects.
        let held = tokio::time::timeout(QUERY_TIMEOUT, wrx)
            .await
            .map_err(|_| anyhow::anyhow!("query {qid} unanswered after {} s", QUERY_TIMEOUT.as_secs()))?
            .map_err(|_| anyhow::anyhow!("link closed before query {qid} was answered"))?;
        if held.len() != ask.len() {
            bail!("query {qid}: {} answers for {} bodies", held.len(), ask.len());
        }
        for (b, h) in ask.into_iter().zip(held) {
            if h {
                held_by_peer += 1;
            } else {
                send.push(b);
            }
        }
    }
    tokio::task::spawn_blocking(move || {
        let mut blobs = Vec::with_capacity(send.len());
        let mut bytes = 0;
        for blob in send.drain(..) {
            if let Some(b) = store.blob(&blob)? {
                bytes += b.len() as u64;
                blobs.push(WireBlob { hash: blob.0, body: b });
            }
        }
        let (n, nb) = (wire.len() as u64, blobs.len() as u64);
        mirror.update_out(i, |l| {
            l.bodies_sent += nb;
            l.body_bytes_sent += bytes;
            l.bodies_held_by_peer += held_by_peer;
            l.bodies_already_sent += already;
        });
        Ok((Frame::Batch { id, entries: wire, blobs }.encode(), n))
    })
    .await?
}

async fn accept_loop(ep: quinn::Endpoint, store: Store, mirror: Arc<Mirror>, secret: Arc<Vec<u8>>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = ep.accept() => match i { Some(i) => i, None => return },
            _ = wait_shutdown(&mut shutdown) => {
                ep.close(0u32.into(), b"shutting down");
                return;
            }
        };
        let (store, mirror, secret) = (store.clone(), mirror.clone(), secret.clone());
        let remote = incoming.remote_address();
        let span = tracing::info_span!("mirror-in", peer = %remote);
        tokio::spawn(
            async move {
                if let Err(e) = receive(incoming, &store, &mirror, &secret).await {
                    tracing::info!(error = %format!("{e:#}"), "incoming mirror link ended");
                }
            }
            .instrument(span),
        );
    }
}

/// One incoming link: authenticate, tell the sender where to start, apply
/// batches, acknowledge each once durable.
async fn receive(incoming: quinn::Incoming, store: &Store, mirror: &Arc<Mirror>, secret: &[u8]) -> anyhow::Result<()> {
    let conn = incoming.await.context("accepting")?;
    let (mut send, mut recv) = conn.accept_bi().await.context("accepting the stream")?;
    let theirs = match read_frame(&mut recv, mirror).await? {
        Frame::Auth { mac } => mac,
        other => bail!("unexpected frame before authentication: {other:?}"),
    };
    if !ct_eq(&theirs, &mac(secret, &conn, b"client")?) {
        mirror.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = write_frame(
            &mut send,
            &Frame::Refused {
                reason: "wrong shared secret".into(),
            },
        )
        .await;
        let _ = send.finish();
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.close(1u32.into(), b"wrong secret");
        bail!("refused a peer with a wrong shared secret");
    }
    write_frame(
        &mut send,
        &Frame::Auth {
            mac: mac(secret, &conn, b"server")?,
        },
    )
    .await?;
    let first = read_frame(&mut recv, mirror).await?;
    if let Frame::ResyncHello { node_id } = &first {
        tracing::info!(peer = %node_id, "resync exchange");
        return super::resync::serve(store, mirror, send, recv).await;
    }
    let Frame::Hello { node_id, origin, .. } = first else {
        bail!("expected hello")
    };
    if origin == store.wal().local_origin().0 {
        bail!("a peer claims this node's own origin");
    }
    tracing::Span::current().record("peer", node_id.as_str());
    mirror.update_in(&node_id, |l| {
        l.connected = true;
        l.since_ms = now_ms();
    });
    write_frame(
        &mut send,
        &Frame::Vector {
            vector: to_vec(&store.wal().heads()),
        },
    )
    .await?;
    // Frames are read, decoded and their bodies hashed on their own task,
    // while earlier batches are being applied: up to APPLY_AHEAD batches
    // are queued at the writer at once (they may share one fsync), and
    // each is acknowledged, in order, once durable.
    const APPLY_AHEAD: usize = 4;
    // A batch with many bodies has them written once, straight to blob
    // files, here (while the writer commits earlier batches); its entries
    // follow through the writer.
    enum Ready {
        /// A batch: id, entries, bodies still to write, bodies already durable.
        Batch(u64, Vec<WireEntry>, Vec<WireBlob>, Vec<[u8; 32]>),
        /// Which of these bodies are held here?
        Query(u64, Vec<[u8; 32]>),
    }
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<Ready>>(APPLY_AHEAD);
    let m2 = mirror.clone();
    let st = store.clone();
    // Several batches are prepared at once (their bodies hashed and, when
    // large, written and flushed), so one batch's disk flush overlaps the
    // next one's work; results are passed on in arrival order.
    const PREPARE_AHEAD: usize = 3;
    let (htx, mut hrx) = mpsc::channel::<tokio::task::JoinHandle<anyhow::Result<Ready>>>(PREPARE_AHEAD);
    let reader = tokio::spawn(async move {
        loop {
            let st = st.clone();
            let f = read_frame(&mut recv, &m2).await;
            let stop = !matches!(f, Ok(Frame::Batch { .. } | Frame::Query { .. }));
            let h = match f {
                Ok(Frame::Batch { id, entries, blobs }) => tokio::task::spawn_blocking(move || {
                    verify_blobs(&blobs).map_err(|e| anyhow::anyhow!("batch {id} refused: {e}"))?;
                    let bytes: u64 = blobs.iter().map(|b| b.body.len() as u64).sum();
                    let bulk = st.wal().bulk_bytes();
                    if bulk > 0 && bytes >= bulk {
                        let items: Vec<(&[u8], &[u8])> = blobs.iter().map(|b| (&b.hash[..], &b.body[..])).collect();
                        st.put_bodies_flushed(&items).context("storing bodies")?;
                        let stored = blobs.iter().map(|b| b.hash).collect();
                        return Ok(Ready::Batch(id, entries, Vec::new(), stored));
                    }
                    Ok(Ready::Batch(id, entries, blobs, Vec::new()))
                }),
                Ok(Frame::Query { id, hashes }) => tokio::spawn(async move { Ok(Ready::Query(id, hashes)) }),
                Ok(other) => {
                    let kind = other.kind();
                    tokio::spawn(async move { Err(anyhow::anyhow!("expected a batch, got {kind}")) })
                }
                Err(e) => tokio::spawn(async move { Err(e) }),
            };
            if htx.send(h).await.is_err() || stop {
                break;
            }
        }
    });
    let forward = tokio::spawn(async move {
        while let Some(h) = hrx.recv().await {
            let r = h.await.unwrap_or_else(|e| Err(anyhow::anyhow!("preparing a batch: {e}")));
            let stop = r.is_err();
            if tx.send(r).await.is_err() || stop {
                break;
            }
        }
    });
    type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Applied, crate::store::StoreError>> + Send>>;
    let mut pending: std::collections::VecDeque<(u64, Pending)> = Default::default();
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                biased;
                r = async { (&mut pending.front_mut().expect("guarded").1).await }, if !pending.is_empty() => {
                    let (id, _) = pending.pop_front().expect("guarded");
                    match r {
                        Ok(n) => {
                            mirror.update_in(&node_id, |l| l.applied_batch(n, now_ms()));
                            write_frame(
                                &mut send,
                                &Frame::Ack {
                                    id,
                                    vector: to_vec(&store.wal().heads()),
                                },
                            )
                            .await?;
                        }
                        Err(e) => bail!("batch {id} refused: {e}"),
                    }
                }
                f = rx.recv(), if pending.len() < APPLY_AHEAD => {
                    let (id, entries, blobs, stored) = match f {
                        Some(Ok(Ready::Batch(id, entries, blobs, stored))) => (id, entries, blobs, stored),
                        Some(Ok(Ready::Query(qid, hashes))) => {
                            // Answered from what is durable here; a body on
                            // its way in a batch of this link is never asked.
                            let st = store.clone();
                            let held = tokio::task::spawn_blocking(move || {
                                hashes
                                    .iter()
                                    .map(|h| st.holds_body(&crate::event::BlobHash(*h)))
                                    .collect::<Result<Vec<bool>, _>>()
                            })
                            .await??;
                            write_frame(&mut send, &Frame::Held { id: qid, held }).await?;
                            continue;
                        }
                        Some(Err(e)) => return Err(e),
                        None => bail!("link closed"),
                    };
                    let fut = store.submit(move |t, c| apply_batch(t, c, &entries, &blobs, &stored).map_err(Into::into));
                    pending.push_back((id, Box::pin(fut)));
                }
            }
        }
    }
    .await;
    reader.abort();
    forward.abort();
    if let Err(e) = &result {
        let msg = format!("{e:#}");
        if msg.contains("refused") {
            mirror.update_in(&node_id, |l| {
                l.failed += 1;
                l.last_error = Some(msg.clone());
            });
            let _ = write_frame(&mut send, &Frame::Refused { reason: msg }).await;
        }
    }
    mirror.update_in(&node_id, |l| l.connected = false);
    result
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
    let ep = endpoint(local, data_dir)?;
    let conn = tokio::time::timeout(Duration::from_secs(5), ep.connect(peer, "tandem")?)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from the peer {peer} within 5 s"))?
        .with_context(|| format!("connecting to {peer}"))?;
    let (mut send, mut recv) = conn.open_bi().await.context("opening the stream")?;
    write_frame(
        &mut send,
        &Frame::Auth {
            mac: mac(secret, &conn, b"client")?,
        },
    )
    .await?;
    match read_frame(&mut recv, mirror).await? {
        Frame::Auth { mac: theirs } if ct_eq(&theirs, &mac(secret, &conn, b"server")?) => {}
        Frame::Refused { reason } => bail!("refused by the peer: {reason}"),
        Frame::Auth { .. } => bail!("refused: the peer does not know the shared secret"),
        other => bail!("unexpected frame before authentication: {}", other.kind()),
    }
    Ok((ep, conn, send, recv))
}
