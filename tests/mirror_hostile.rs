//! The mirror port under hostile clients: a real daemon on loopback,
//! attacked over QUIC by a quinn client in this process that speaks the
//! mirror's ALPN. Each attack must be bounded, refused and counted in
//! `tandem status --json`, with nothing applied.

mod common;
use common::{free_udp_port, mirror_section, wait_until, write_config, Node};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem::repl::frame::ALPN;

const SECRET: &str = "correct horse battery staple";

/// Accepts any server certificate, as an attacker would.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A QUIC client endpoint speaking the mirror's ALPN.
fn attacker() -> quinn::Endpoint {
    attacker_from("127.0.0.1")
}

/// The same, from another loopback address.
fn attacker_from(ip: &str) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into().unwrap()));
    let mut cc = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    cc.transport_config(Arc::new(transport));
    let mut ep = quinn::Endpoint::client(format!("{ip}:0").parse().unwrap()).unwrap();
    ep.set_default_client_config(cc);
    ep
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A node with the mirror on `port` and no peers of its own.
fn target(dir: &std::path::Path, port: u16, extra: &str) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = write_config(dir, "target", &format!("{}{extra}", mirror_section(port, &[], SECRET)));
    Node::start(dir, Some(&cfg))
}

/// `tandem status --json`.
fn status(n: &Node) -> serde_json::Value {
    let (ok, out, err) = n.cli(&["status", "--json"], None);
    assert!(ok, "tandem status --json: {err}");
    serde_json::from_str(&out).unwrap()
}

fn mirror_status(n: &Node) -> serde_json::Value {
    status(n)["mirror"].clone()
}

fn counter(n: &Node, name: &str) -> u64 {
    mirror_status(n)[name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

/// A size from /proc/PID/status (`VmRSS:`, `VmHWM:` for the peak), bytes.
fn proc_status_bytes(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn a_large_frame_before_authentication_is_refused_on_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let node = target(&dir.path().join("t"), port, "");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let before = rss(node.child.id());
    let rt = runtime();
    let (sent, closed_in) = rt.block_on(async {
        let ep = attacker();
        let conn = ep.connect(addr, "tandem").unwrap().await.unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        // A frame header announcing 90 MiB, then as much of it as the node
        // will take.
        let started = Instant::now();
        let mut sent = 0usize;
        send.write_all(&(90u32 << 20).to_be_bytes()).await.unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        let pushing = async {
            while sent < 90 << 20 {
                if send.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), pushing).await;
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        assert!(closed.is_ok(), "the node kept the connection open");
        (sent, started.elapsed())
    });
    assert!(sent < 8 << 20, "the node took {sent} bytes of an unauthenticated frame");
    assert!(closed_in < Duration::from_secs(5), "closed after {closed_in:?}");
    assert!(wait_until(5, || counter(&node, "bad_frames") == 1), "{}", mirror_status(&node));
    let st = status(&node);
    assert_eq!(st["log"]["apply_order"], 0, "something was applied: {st}");
    assert_eq!(st["mirror"]["auth_failures"], 0);
    let after = rss(node.child.id());
    assert!(
        after < before + (16 << 20),
        "RSS grew from {before} to {after} bytes for one refused frame"
    );
    eprintln!("90 MiB frame: attacker wrote {sent} bytes, closed in {closed_in:?}, RSS {before} -> {after}");
}

#[test]
fn a_thousand_idle_connections_are_capped_and_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let node = target(&dir.path().join("t"), port, "auth_timeout_ms = 2000\n");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let before = rss(node.child.id());
    let rt = runtime();
    let started = Instant::now();
    let (accepted, refused) = rt.block_on(async {
        let ep = attacker();
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let ep = ep.clone();
            tasks.push(tokio::spawn(async move {
                let c = ep.connect(addr, "tandem").unwrap();
                match tokio::time::timeout(Duration::from_secs(20), c).await {
                    // Accepted: stay idle until the node closes it; it must
                    // do so at its authentication deadline.
                    Ok(Ok(conn)) => {
                        let t = Instant::now();
                        let r = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
                        Some(r.map(|_| t.elapsed()).ok())
                    }
                    Ok(Err(_)) => None,
                    Err(_) => panic!("a connection attempt got no answer in 20 s"),
                }
            }));
        }
        let (mut accepted, mut refused) = (Vec::new(), 0);
        for t in tasks {
            match t.await.unwrap() {
                Some(closed) => accepted.push(closed),
                None => refused += 1,
            }
        }
        (accepted, refused)
    });
    let took = started.elapsed();
    assert_eq!(accepted.len() + refused, 1000);
    assert!(
        accepted.iter().all(|c| c.is_some_and(|d| d < Duration::from_secs(4))),
        "an idle connection outlived the 2 s deadline: {accepted:?}"
    );
    let st = mirror_status(&node);
    // Every refused attempt is counted (a client's first packet sent again
    // before the refusal reached it counts again).
    assert!(st["connections_refused"].as_u64().unwrap() >= refused as u64, "{st}");
    assert!(refused >= 900, "only {refused} of 1000 refused: {st}");
    assert!(
        wait_until(5, || counter(&node, "auth_timeouts") == accepted.len() as u64),
        "{}",
        mirror_status(&node)
    );
    let after = rss(node.child.id());
    assert!(after < before + (64 << 20), "RSS grew from {before} to {after} bytes");
    // The port still serves a real peer afterwards.
    let pb = free_udp_port();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let cfg = write_config(&dir.path().join("b"), "node-b", &mirror_section(pb, &[port], SECRET));
    let b = Node::start(&dir.path().join("b"), Some(&cfg));
    assert!(
        wait_until(15, || mirror_status(&b)["outgoing"][0]["state"] == "connected"),
        "a real peer could not link after the flood: {}",
        mirror_status(&b)
    );
    eprintln!(
        "1000 idle connections: {} accepted and timed out, {refused} refused, in {took:?}; RSS {before} -> {after}",
        accepted.len()
    );
}

use tandem::repl::frame::{Frame, WireEntry, MAX_FRAME};

/// A peer that knows the secret and misbehaves after authenticating: the
/// connection's stream after `Hello { node_id: "intruder", origin }`.
struct Intruder {
    _ep: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    counters: tandem::repl::Mirror,
}

impl Intruder {
    async fn connect(addr: SocketAddr, origin: u64) -> Intruder {
        let ep = attacker();
        let conn = ep.connect(addr, "tandem").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let counters = tandem::repl::Mirror::default();
        tandem::repl::handshake::dial(&conn, &mut send, &mut recv, SECRET.as_bytes(), &counters)
            .await
            .unwrap();
        let mut me = Intruder {
            _ep: ep,
            conn,
            send,
            recv,
            counters,
        };
        me.write(&Frame::Hello {
            node_id: "intruder".into(),
            origin,
            role: "master".into(),
            epoch: 0,
        })
        .await;
        // On a link of version 7 the node introduces itself, then sends
        // its vector.
        match me.read().await {
            Some(Frame::Hello { node_id, .. }) => assert_eq!(node_id, "target"),
            other => panic!("expected the node's hello, got {other:?}"),
        }
        match me.read().await {
            Some(Frame::Vector { .. }) => me,
            other => panic!("expected the vector, got {other:?}"),
        }
    }

    async fn write(&mut self, f: &Frame) {
        self.send.write_all(&f.encode()).await.unwrap();
    }

    /// The next frame, or `None` once the node closed the link.
    async fn read(&mut self) -> Option<Frame> {
        let f = tandem::repl::stream::read_frame(&mut self.recv, &self.counters, MAX_FRAME);
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("the node went silent")
            .ok()
    }
}

/// An entry that chains onto the start of `origin`'s log: creating `user`.
fn first_entry(origin: u64, user: &str) -> WireEntry {
    let payload = tandem::event::Event::UserCreated {
        user: user.into(),
        password_hash: "x".into(),
    }
    .encode();
    let e = wal::Entry::new(&wal::GENESIS, wal::Origin(origin), 1, 1 << 16, payload);
    WireEntry {
        origin,
        seq: 1,
        hlc: e.hlc,
        hash: e.hash,
        payload: e.payload,
    }
}

fn own_origin(node: &Node) -> u64 {
    u64::from_str_radix(status(node)["origin"].as_str().unwrap(), 16).unwrap()
}

/// A node with no peers of its own, for an intruder that knows the secret.
struct Alone {
    _dir: tempfile::TempDir,
    node: Node,
    /// Its mirror address.
    addr: SocketAddr,
    /// Its own origin, and another for the intruder.
    own: u64,
    theirs: u64,
    rt: tokio::runtime::Runtime,
}

fn alone() -> Alone {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let node = target(&dir.path().join("t"), port, "");
    let own = own_origin(&node);
    Alone {
        _dir: dir,
        node,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        own,
        theirs: own ^ 0x5555,
        rt: runtime(),
    }
}

#[test]
fn a_batch_for_the_receivers_own_origin_is_refused_and_nothing_applies() {
    let Alone {
        _dir,
        node,
        addr,
        own,
        theirs,
        rt,
    } = alone();
    // An entry of the intruder's own origin, and one that chains onto this
    // node's empty log of its own origin: both would apply on their own.
    let refused = rt.block_on(async {
        let mut i = Intruder::connect(addr, theirs).await;
        i.write(&Frame::Batch {
            id: 1,
            entries: vec![first_entry(theirs, "a@example.org"), first_entry(own, "b@example.org")],
            blobs: vec![],
        })
        .await;
        let mut answers = Vec::new();
        while let Some(f) = i.read().await {
            answers.push(f);
        }
        answers
    });
    assert!(
        matches!(&refused[..], [Frame::Refused { reason }] if reason.contains("own origin")),
        "{refused:?}"
    );
    let st = status(&node);
    assert_eq!(st["log"]["apply_order"], 0, "something was applied: {st}");
    assert_eq!(st["mirror"]["own_origin_refused"], 1, "{st}");
    assert_eq!(st["mirror"]["incoming"]["intruder"]["failed"], 1, "{st}");
    assert!(
        st["mirror"]["incoming"]["intruder"]["last_error"]
            .as_str()
            .unwrap()
            .contains("own origin"),
        "{st}"
    );
    // The same link without the forged entry applies: the refusal was for
    // the origin, not for a malformed batch.
    let acked = rt.block_on(async {
        let mut i = Intruder::connect(addr, theirs).await;
        i.write(&Frame::Batch {
            id: 1,
            entries: vec![first_entry(theirs, "a@example.org")],
            blobs: vec![],
        })
        .await;
        i.read().await
    });
    assert!(matches!(acked, Some(Frame::Ack { id: 1, .. })), "{acked:?}");
    assert_eq!(status(&node)["log"]["apply_order"], 1);
    assert!(node.cli(&["user", "list"], None).1.contains("a@example.org"));
    assert!(!node.cli(&["user", "list"], None).1.contains("b@example.org"));
}

/// A peer refused on one link and back on a new one before the old link
/// is torn down (the refusal is given time to leave) is shown connected:
/// the old link's end does not mark the new one down.
#[test]
fn a_peer_back_on_a_new_link_stays_connected_when_its_refused_link_ends() {
    let Alone {
        _dir,
        node,
        addr,
        own,
        theirs,
        rt,
    } = alone();
    let (refused, mut second) = rt.block_on(async {
        let mut first = Intruder::connect(addr, theirs).await;
        first
            .write(&Frame::Batch {
                id: 1,
                entries: vec![first_entry(own, "b@example.org")],
                blobs: vec![],
            })
            .await;
        let refused = first.read().await;
        // Back at once, as a dialer with a short backoff would be, while
        // the first link still lets its refusal leave.
        let second = Intruder::connect(addr, theirs).await;
        assert!(first.read().await.is_none(), "the refused link stayed open");
        // The node closes the connection once it has torn the link down.
        tokio::time::timeout(Duration::from_secs(10), first.conn.closed())
            .await
            .expect("the refused link's connection stayed open");
        (refused, second)
    });
    assert!(
        matches!(&refused, Some(Frame::Refused { reason }) if reason.contains("own origin")),
        "{refused:?}"
    );
    // The old link is gone (closed by the node) and the new one is up.
    let st = status(&node);
    assert_eq!(st["mirror"]["incoming"]["intruder"]["failed"], 1, "{st}");
    assert_eq!(st["mirror"]["incoming"]["intruder"]["connected"], true, "{st}");
    // And it works: a batch on it is applied and acknowledged.
    let acked = rt.block_on(async {
        second
            .write(&Frame::Batch {
                id: 1,
                entries: vec![first_entry(theirs, "a@example.org")],
                blobs: vec![],
            })
            .await;
        second.read().await
    });
    assert!(matches!(acked, Some(Frame::Ack { id: 1, .. })), "{acked:?}");
    assert_eq!(status(&node)["mirror"]["incoming"]["intruder"]["connected"], true);
    drop(second);
}

/// A batch already at the writer when a later one is refused is applied
/// all the same, and counted as applied from the peer.
#[test]
fn a_batch_applied_as_its_link_is_refused_is_counted() {
    let Alone {
        _dir,
        node,
        addr,
        own,
        theirs,
        rt,
    } = alone();
    let answers = rt.block_on(async {
        let mut i = Intruder::connect(addr, theirs).await;
        // Back to back: the first is on its way to the writer when the
        // second is refused on arrival.
        let mut both = Frame::Batch {
            id: 1,
            entries: vec![first_entry(theirs, "a@example.org")],
            blobs: vec![],
        }
        .encode();
        both.extend(
            Frame::Batch {
                id: 2,
                entries: vec![first_entry(own, "b@example.org")],
                blobs: vec![],
            }
            .encode(),
        );
        i.send.write_all(&both).await.unwrap();
        let mut answers = Vec::new();
        while let Some(f) = i.read().await {
            answers.push(f);
        }
        tokio::time::timeout(Duration::from_secs(10), i.conn.closed())
            .await
            .expect("the refused link's connection stayed open");
        answers
    });
    assert!(
        answers
            .iter()
            .any(|f| matches!(f, Frame::Refused { reason } if reason.contains("own origin"))),
        "{answers:?}"
    );
    let st = status(&node);
    assert_eq!(st["log"]["apply_order"], 1, "{st}");
    let link = &st["mirror"]["incoming"]["intruder"];
    assert_eq!(link["entries"], 1, "the applied batch was not counted: {st}");
    assert_eq!(link["batches"], 1, "{st}");
    assert_eq!(link["failed"], 1, "{st}");
}

#[test]
fn a_flood_of_queries_is_refused_counted_and_closes_the_link() {
    let Alone {
        _dir,
        node,
        addr,
        theirs,
        rt,
        ..
    } = alone();
    let started = Instant::now();
    let (held, last, wrote) = rt.block_on(async {
        let Intruder {
            _ep,
            conn: _conn,
            mut send,
            mut recv,
            counters,
        } = Intruder::connect(addr, theirs).await;
        // 100,000 queries without a batch, written while the node answers.
        let writer = tokio::spawn(async move {
            let mut wrote = 0u64;
            for id in 0..100_000u64 {
                let q = Frame::Query {
                    id,
                    hashes: vec![[id as u8; 32]],
                };
                if send.write_all(&q.encode()).await.is_err() {
                    break;
                }
                wrote += 1;
            }
            wrote
        });
        let (mut held, mut last) = (0, None);
        loop {
            let f = tandem::repl::stream::read_frame(&mut recv, &counters, MAX_FRAME);
            match tokio::time::timeout(Duration::from_secs(10), f)
                .await
                .expect("the node went silent")
            {
                Ok(Frame::Held { .. }) => held += 1,
                Ok(other) => last = Some(other),
                Err(_) => break,
            }
        }
        let wrote = tokio::time::timeout(Duration::from_secs(10), writer).await.unwrap().unwrap();
        (held, last, wrote)
    });
    let took = started.elapsed();
    assert!(held <= 64, "{held} queries answered past the budget");
    assert!(
        matches!(&last, Some(Frame::Refused { reason }) if reason.contains("query")),
        "{last:?}"
    );
    let st = status(&node);
    assert_eq!(st["mirror"]["query_floods"], 1, "{st}");
    let text = node.cli(&["status"], None).1;
    assert!(text.contains("query floods 1"), "{text}");
    assert_eq!(st["mirror"]["incoming"]["intruder"]["failed"], 1, "{st}");
    assert_eq!(st["log"]["apply_order"], 0, "{st}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    eprintln!("query flood: {held} answered, {wrote} written before the close, in {took:?}");
}

async fn read_small(recv: &mut quinn::RecvStream, counters: &tandem::repl::Mirror) -> Frame {
    tandem::repl::stream::read_frame(recv, counters, 4096).await.unwrap()
}

/// What an impostor at a peer's address gets from a dialing node: a
/// SPAKE2 message (nothing keyed by the secret) first, and a MAC only after
/// answering with a SPAKE2 message of its own, which lets it check the one
/// guess it made and nothing else: not even the right secret, tried
/// offline afterwards, matches that MAC.
#[test]
fn an_impostor_at_a_peers_address_gets_nothing_to_guess_against() {
    use spake2::{Ed25519Group, Identity, Password, Spake2};
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    // The impostor: a QUIC server with a certificate of its own.
    let (ep, port) = rt.block_on(async {
        let ck = rcgen::generate_simple_self_signed(vec!["tandem".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let sc = quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap()));
        let ep = quinn::Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).unwrap();
        let port = ep.local_addr().unwrap().port();
        (ep, port)
    });
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    let cfg = write_config(&dir.path().join("a"), "node-a", &mirror_section(free_udp_port(), &[port], SECRET));
    let a = Node::start(&dir.path().join("a"), Some(&cfg));
    // One connection per guess: a wrong one, then the right one.
    let outcomes: Vec<(bool, bool)> = rt.block_on(async {
        let mut out = Vec::new();
        for guess in ["a wrong guess of the secret", SECRET] {
            let conn = tokio::time::timeout(Duration::from_secs(10), async { ep.accept().await.unwrap().await.unwrap() })
                .await
                .expect("the node did not dial");
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let counters = tandem::repl::Mirror::default();
            let Frame::Pake { msg: theirs } = read_small(&mut recv, &counters).await else {
                panic!("the dialer's first frame is not a SPAKE2 message")
            };
            assert_eq!(theirs.len(), 33);
            let mut ekm = [0u8; 32];
            conn.export_keying_material(&mut ekm, b"EXPORTER-tandem-mirror-auth", b"").unwrap();
            let id = |role: &str| Identity::new(&[format!("tandem mirror {role} ").as_bytes(), &ekm].concat());
            let pw = Password::new(blake3::derive_key("tandem mirror secret v3", guess.as_bytes()));
            let (state, msg) = Spake2::<Ed25519Group>::start_b(&pw, &id("dialer"), &id("acceptor"));
            send.write_all(&Frame::Pake { msg }.encode()).await.unwrap();
            let Frame::Auth { mac } = read_small(&mut recv, &counters).await else {
                panic!("no proof after the exchange")
            };
            // The online check of this connection's one guess.
            let k = state.finish(&theirs).unwrap();
            let mut h = blake3::Hasher::new_keyed(&blake3::derive_key("tandem mirror confirm v3", &k));
            h.update(b"client");
            h.update(&ekm);
            let online = h.finalize().as_bytes() == &mac;
            // Offline, with the right secret: the old MAC over the exporter
            // keyed by the secret, which an impostor could test guesses
            // against, is not what was sent.
            let mut old = blake3::Hasher::new_keyed(&blake3::derive_key("tandem mirror secret v1", SECRET.as_bytes()));
            old.update(b"client");
            old.update(&ekm);
            let offline = old.finalize().as_bytes() == &mac;
            conn.close(0u32.into(), b"");
            out.push((online, offline));
        }
        out
    });
    assert_eq!(
        outcomes,
        vec![(false, false), (true, false)],
        "(online check, offline check) per guess"
    );
    let st = mirror_status(&a);
    assert_ne!(st["outgoing"][0]["state"], "connected", "{st}");
}

/// A message larger than a frame (96 MiB) travels in chunks: 100 MiB
/// delivered over LMTP and 100 MiB APPENDed over IMAP both reach the peer,
/// byte for byte.
#[test]
fn hundred_megabyte_messages_over_lmtp_and_imap_reach_the_peer() {
    const SIZE: usize = 100 << 20;
    assert!(SIZE > tandem::repl::frame::MAX_FRAME as usize);
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let limits = "[imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nmax_literal = 120000000\n\
                  [lmtp]\nlisten = \"127.0.0.1:0\"\nmax_message_size = 120000000\n";
    let start = |name: &str, id: &str, port: u16, peer: u16| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let cfg = write_config(&d, id, &format!("{limits}{}", mirror_section(port, &[peer], SECRET)));
        Node::start(&d, Some(&cfg))
    };
    let a = start("a", "node-a", pa, pb);
    let b = start("b", "node-b", pb, pa);
    let (ok, _, err) = a.cli(&["user", "add", "u@example.org", "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(wait_until(15, || b.cli(&["user", "list"], None).1.contains("u@example.org")));
    let started = Instant::now();
    // Over LMTP: lines of 80 bytes.
    let mut msg = Vec::with_capacity(SIZE + 100);
    msg.extend_from_slice(b"Subject: large over lmtp\r\n\r\n");
    let mut i = 0u64;
    while msg.len() + 80 <= SIZE {
        msg.extend_from_slice(format!("{i:010} {}\r\n", "l".repeat(67)).as_bytes());
        i += 1;
    }
    let mut c = common::Raw::connect(&a.addr("lmtp"));
    c.reply();
    c.send(b"LHLO big\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n");
    for _ in 0..4 {
        let r = c.reply();
        assert!(r.starts_with('2') || r.starts_with('3'), "{r}");
    }
    c.send(&msg);
    c.send(b".\r\n");
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");
    drop(msg);
    // Over IMAP: one APPEND literal.
    common::python(
        &a,
        &format!(
            r#"
from imaptest import *
c = connect("u@example.org")
body = b"Subject: large over imap\r\n\r\n" + b"".join(b"%010d %s\r\n" % (i, b"m" * 67) for i in range({n}))
ok(c.append("INBOX", None, None, body))
"#,
            n = SIZE / 80
        ),
    );
    let stored = started.elapsed();
    let on_a = common::messages(&a, "u@example.org", "INBOX");
    assert_eq!(on_a.len(), 2);
    assert!(on_a.iter().all(|m| m["size"].as_u64().unwrap() >= SIZE as u64 - 100), "{on_a:?}");
    assert!(
        wait_until(180, || common::messages(&b, "u@example.org", "INBOX").len() == 2),
        "the large messages did not reach B: {}",
        mirror_status(&a)
    );
    let replicated = started.elapsed();
    let on_b = common::messages(&b, "u@example.org", "INBOX");
    for (x, y) in on_a.iter().zip(&on_b) {
        assert_eq!(x["blob"], y["blob"]);
        assert_eq!(x["size"], y["size"]);
        let hash = y["blob"].as_str().unwrap();
        let body = common::blob(&b, hash);
        assert_eq!(body.len() as u64, y["size"].as_u64().unwrap());
        assert_eq!(blake3::hash(&body).to_hex().as_str(), hash, "B's copy differs");
    }
    let out = &mirror_status(&a)["outgoing"][0];
    assert!(out["body_bytes_sent"].as_u64().unwrap() >= 2 * SIZE as u64 - 200, "{out}");
    let (peak_a, peak_b) = (proc_status_bytes(a.child.id(), "VmHWM:"), proc_status_bytes(b.child.id(), "VmHWM:"));
    eprintln!("two 100 MiB messages: stored on A after {stored:?}, on B after {replicated:?}; peak RSS A {peak_a}, B {peak_b}");
    // Each side holds a message a few times over (read, chunks, write),
    // never the whole backlog at once.
    assert!(peak_a < 1 << 30 && peak_b < 1 << 30, "peak RSS A {peak_a}, B {peak_b}");
}

/// `n` entries of `origin` from seq 1, each creating a user, chained.
fn chain_of_users(origin: u64, n: u64) -> Vec<WireEntry> {
    let mut prev = wal::GENESIS;
    (1..=n)
        .map(|seq| {
            let payload = tandem::event::Event::UserCreated {
                user: format!("u{seq}@example.org"),
                password_hash: "x".into(),
            }
            .encode();
            let e = wal::Entry::new(&prev, wal::Origin(origin), seq, (1 << 16) + seq, payload);
            prev = e.hash;
            WireEntry {
                origin,
                seq,
                hlc: e.hlc,
                hash: e.hash,
                payload: e.payload,
            }
        })
        .collect()
}

/// A batch of more entries than a batch may hold is refused before any
/// work and counted; the largest allowed batch applies in transactions of
/// at most 512 entries.
#[test]
fn batches_are_bounded_in_entries() {
    let Alone {
        _dir,
        node,
        addr,
        theirs,
        rt,
        ..
    } = alone();
    let max = tandem::repl::frame::MAX_BATCH_ENTRIES as u64;
    let refused = rt.block_on(async {
        let mut i = Intruder::connect(addr, theirs).await;
        i.write(&Frame::Batch {
            id: 1,
            entries: chain_of_users(theirs, max + 1),
            blobs: vec![],
        })
        .await;
        i.read().await
    });
    assert!(
        matches!(&refused, Some(Frame::Refused { reason }) if reason.contains("4097 entries")),
        "{refused:?}"
    );
    let st = status(&node);
    assert_eq!(st["mirror"]["oversized_batches"], 1, "{st}");
    assert_eq!(st["log"]["apply_order"], 0, "{st}");
    let transactions = |n: &Node| status(n)["log"]["transactions"].as_u64().unwrap();
    let before = transactions(&node);
    let (acked, took) = rt.block_on(async {
        let mut i = Intruder::connect(addr, theirs).await;
        let t = Instant::now();
        i.write(&Frame::Batch {
            id: 1,
            entries: chain_of_users(theirs, max),
            blobs: vec![],
        })
        .await;
        (i.read().await, t.elapsed())
    });
    assert!(matches!(acked, Some(Frame::Ack { id: 1, .. })), "{acked:?}");
    assert_eq!(status(&node)["log"]["apply_order"], max);
    // Applied as transactions of at most 512 entries, so local writes get
    // the writer between them.
    assert_eq!(transactions(&node) - before, max / 512, "{}", status(&node)["log"]);
    eprintln!(
        "a batch of {max} entries was applied in {} transactions and acknowledged in {took:?}",
        max / 512
    );
}

/// One address holding every unauthenticated slot it may leaves room for a
/// peer on another address: it gets at most `max_unauthenticated_per_ip`
/// (4) of the 8.
#[test]
fn a_flood_from_one_address_leaves_room_for_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let node = target(&dir.path().join("t"), port, "auth_timeout_ms = 8000\n");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rt = runtime();
    let ep = rt.block_on(async { attacker_from("127.0.0.2") });
    let held: Vec<quinn::Connection> = rt.block_on(async {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let c = ep.connect(addr, "tandem").unwrap();
                tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(10), c).await.ok().and_then(|r| r.ok()) })
            })
            .collect();
        let mut held = Vec::new();
        for t in tasks {
            held.extend(t.await.unwrap());
        }
        held
    });
    assert_eq!(held.len(), 4, "one address got {} unauthenticated connections", held.len());
    let started = Instant::now();
    let pb = free_udp_port();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let cfg = write_config(&dir.path().join("b"), "node-b", &mirror_section(pb, &[port], SECRET));
    let b = Node::start(&dir.path().join("b"), Some(&cfg));
    assert!(
        wait_until(6, || mirror_status(&b)["outgoing"][0]["state"] == "connected"),
        "the peer could not link beside the held connections: {}",
        mirror_status(&node)
    );
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "the held connections had timed out already"
    );
    assert!(
        held.iter().all(|c| c.close_reason().is_none()),
        "the held connections were closed early"
    );
    assert!(counter(&node, "connections_refused") >= 46);
}

/// Before authentication, a frame of the wrong kind (here a `Batch` of a
/// few bytes, under the size limit) is refused and counted, and nothing of
/// it applies.
#[test]
fn a_batch_before_authentication_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let node = target(&dir.path().join("t"), port, "");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let own = own_origin(&node);
    let rt = runtime();
    let answer = rt.block_on(async {
        let ep = attacker();
        let conn = ep.connect(addr, "tandem").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let batch = Frame::Batch {
            id: 1,
            entries: vec![first_entry(own ^ 1, "a@example.org")],
            blobs: vec![],
        };
        send.write_all(&batch.encode()).await.unwrap();
        let counters = tandem::repl::Mirror::default();
        let r = tokio::time::timeout(Duration::from_secs(5), tandem::repl::stream::read_frame(&mut recv, &counters, 4096))
            .await
            .expect("the node kept the connection open");
        r.is_err()
    });
    assert!(answer, "the node answered a batch before authentication");
    let st = status(&node);
    assert_eq!(st["mirror"]["auth_failures"], 1, "{st}");
    assert_eq!(st["log"]["apply_order"], 0, "{st}");
}
