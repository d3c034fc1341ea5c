//! The master's signs of life (`Alive`, `replication.md` sections 4 and
//! 8b) and the acceptor's introduction (section 5.1) on the wire, against
//! a peer in this process that a real daemon dials: a peer that agrees on
//! version 7 (ALPN `tandem-mirror/7`) introduces itself and is known by its
//! node id, which it never could be by its address (it never dials back);
//! one of version 6 sends no introduction and the node does not wait for
//! one; both get signs of life every 500 ms with growing stamps; a peer
//! that offers only version 5 still connects and never gets a frame it
//! cannot decode.

mod common;
mod split;
use common::{free_udp_port, start_mirror};
use std::sync::Arc;
use std::time::Duration;
use tandem::repl::engine::handshake::{AcceptAuth, AuthStep, EXPORTER_LABEL};
use tandem::repl::frame::{Frame, ALPN, ALPN_V5, ALPN_V6, MAX_FRAME};

const SECRET: &str = "correct horse battery staple";

/// A QUIC server in this process that speaks `alpns`.
fn listener(alpns: &[&[u8]]) -> quinn::Endpoint {
    let ck = rcgen::generate_simple_self_signed(vec!["tandem".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    let sc = quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap()));
    quinn::Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// Accept the node's link as a peer would: prove the secret, take its
/// `Hello`, answer with an empty vector, then read for `window`. Returns
/// the ALPN agreed and every frame that arrived after the handshake.
async fn serve_link(ep: &quinn::Endpoint, window: Duration) -> (Option<Vec<u8>>, Vec<Frame>) {
    let conn = tokio::time::timeout(Duration::from_secs(10), async { ep.accept().await.unwrap().await.unwrap() })
        .await
        .expect("the node did not dial");
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let counters = tandem::repl::Mirror::default();
    let mut ekm = [0u8; 32];
    conn.export_keying_material(&mut ekm, EXPORTER_LABEL, b"").unwrap();
    let mut auth = AcceptAuth::new(SECRET.as_bytes(), ekm);
    loop {
        let f = tandem::repl::stream::read_frame(&mut recv, &counters, 4096).await.unwrap();
        match auth.frame(f) {
            Ok(AuthStep::Send(f)) => send.write_all(&f.encode()).await.unwrap(),
            Ok(AuthStep::Done(f)) => {
                if let Some(f) = f {
                    send.write_all(&f.encode()).await.unwrap();
                }
                break;
            }
            Err(_) => panic!("the node did not prove the secret"),
        }
    }
    let hello = tandem::repl::stream::read_frame(&mut recv, &counters, 4096).await.unwrap();
    assert_eq!(hello.kind(), "hello");
    if alpn.as_deref() == Some(ALPN) {
        let me = Frame::Hello {
            node_id: "node-x".into(),
            origin: 77,
            role: "slave".into(),
            epoch: 0,
        };
        send.write_all(&me.encode()).await.unwrap();
    }
    let vector = Frame::Vector {
        vector: Default::default(),
        hashes: vec![],
    };
    send.write_all(&vector.encode()).await.unwrap();
    let mut frames = Vec::new();
    let end = tokio::time::Instant::now() + window;
    while let Ok(f) = tokio::time::timeout_at(end, tandem::repl::stream::read_frame(&mut recv, &counters, MAX_FRAME)).await {
        frames.push(f.expect("a frame this build decodes"));
    }
    conn.close(0u32.into(), b"");
    (alpn, frames)
}

/// The `Alive` frames among `frames`: (node, epoch, stamp).
fn alives(frames: &[Frame]) -> Vec<(String, u64, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Alive { node, epoch, stamp, .. } => Some((node.clone(), *epoch, *stamp)),
            _ => None,
        })
        .collect()
}

/// Run a master node that dials a peer speaking `alpns`; what the peer
/// got, and whom the node says its outgoing link reached.
fn master_dials(alpns: &[&[u8]]) -> (Option<Vec<u8>>, Vec<Frame>, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = rt.block_on(async { listener(alpns) });
    let port = ep.local_addr().unwrap().port();
    let node = start_mirror(&dir.path().join("a"), "node-a", free_udp_port(), &[port], SECRET, "master", "");
    let window = Duration::from_millis(2_200);
    let (alpn, frames) = rt.block_on(serve_link(&ep, window));
    // The link is over; what it learnt of its peer stays.
    let peer = common::admin_get(&node, "/v1/status")["mirror"]["outgoing"][0]["peer"].clone();
    (alpn, frames, peer)
}

#[test]
fn a_peer_of_version_7_introduces_itself_and_is_known_by_its_node_id() {
    let (alpn, frames, peer) = master_dials(&[ALPN, ALPN_V6, ALPN_V5]);
    assert_eq!(alpn.as_deref(), Some(ALPN), "two nodes of this build agree on version 7");
    // Its address (a listener that never dials back) could not tell.
    assert_eq!(peer, "node-x");
    let seen = alives(&frames);
    assert!((4..=6).contains(&seen.len()), "{seen:?}");
}

#[test]
fn a_master_sends_signs_of_life_to_a_peer_of_version_6() {
    let (alpn, frames, peer) = master_dials(&[ALPN_V6, ALPN_V5]);
    assert_eq!(alpn.as_deref(), Some(ALPN_V6), "a node of version 6 is spoken to in 6");
    // No introduction: the node went on with the vector.
    assert_eq!(peer, serde_json::Value::Null);
    let seen = alives(&frames);
    // Every 500 ms over 2.2 s: four or five.
    assert!((4..=6).contains(&seen.len()), "{seen:?}");
    assert!(seen.iter().all(|(node, epoch, _)| node == "node-a" && *epoch == 0), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2), "stamps grow: {seen:?}");
}

#[test]
fn a_peer_of_version_5_connects_and_gets_no_alive() {
    let (alpn, frames, peer) = master_dials(&[ALPN_V5]);
    assert_eq!(peer, serde_json::Value::Null);
    assert_eq!(alpn.as_deref(), Some(ALPN_V5), "a node of version 5 is still spoken to");
    assert_eq!(alives(&frames), vec![], "a frame version 5 cannot decode");
    let kinds: Vec<&str> = frames.iter().map(|f| f.kind()).collect();
    assert!(kinds.iter().all(|k| ["batch", "query", "chunk"].contains(k)), "{kinds:?}");
}

/// Two real daemons whose links each run through a UDP relay, as through
/// NAT: no incoming link comes from an address either node dialled, so
/// only the introductions tell each whom its outgoing link reaches.
#[test]
fn nodes_behind_relays_know_whom_their_links_reach() {
    let mesh = split::Mesh::start(2, 0);
    for (i, other) in [(0, "node-b"), (1, "node-a")] {
        let mut last = serde_json::Value::Null;
        let known = common::wait_until(20, || {
            last = common::admin_get(mesh.node(i), "/v1/status")["mirror"]["outgoing"][0].clone();
            last["peer"] == other && last["state"] == "connected"
        });
        assert!(known, "node {i}'s outgoing link: {last}");
    }
}

/// Three real daemons, node-a master, whose a–c link is cut, so node-c
/// hears node-a only through node-b. node-a stops and starts again with
/// its wall clock ten minutes back (libfaketime): its signs of life still
/// rank above those it sent before (the stamps' ceiling is kept in its
/// data dir), so node-b passes them on and node-c hears node-a again as
/// soon as the links are up, not ten minutes later.
#[test]
fn a_master_restarted_with_its_clock_stepped_back_is_heard_through_a_relay() {
    let mut mesh = split::Mesh::start(3, 0);
    mesh.cut_link(0, 2);
    let alive_at_c = |mesh: &split::Mesh| common::admin_get(mesh.node(2), "/v1/status")["mirror"]["alive"]["node-a"].clone();
    let fresh = |a: &serde_json::Value| a["via"] == "node-b" && a["age_ms"].as_u64().is_some_and(|ms| ms < 1_000);
    let mut last = serde_json::Value::Null;
    assert!(
        common::wait_until(30, || {
            last = alive_at_c(&mesh);
            fresh(&last)
        }),
        "node-c never heard node-a through node-b: {last}"
    );
    mesh.stop(0);
    let before = alive_at_c(&mesh)["stamp"].as_u64().expect("a stamp");
    mesh.restart_env(0, &common::faketime_env("-600"));
    let heard = common::wait_until(30, || {
        last = alive_at_c(&mesh);
        fresh(&last) && last["stamp"].as_u64().is_some_and(|s| s > before)
    });
    assert!(
        heard,
        "node-c, after node-a came back with its clock stepped back (stamp before {before}): {last}"
    );
}
