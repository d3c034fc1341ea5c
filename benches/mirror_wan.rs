//! Mirror throughput over a long round trip: a fresh node B catches up from
//! a node A holding N messages (27 KB each), first directly on loopback,
//! then through an in-process UDP relay that delays every datagram by 50 ms
//! each way (100 ms round trip; `tc netem` is not available here), and
//! through the same relay with no delay (what the harness itself costs: it
//! shares the cores with both nodes). Prints whole catch-up times and the
//! steady rate (20 % to 80 % held), and the ratios (target: >= 90 %).
//!
//! Run: `cargo bench --bench mirror_wan` (N=8000 by default; `-- --n 20000`;
//! `MIRROR_WAN_NO_RELAY0=1` skips the no-delay relay run).
//! Under `cargo test --benches` it runs a tiny smoke pass.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A UDP relay: datagrams from clients go to `target` after `delay`, and
/// the target's answers go back to each client after `delay`. Each direction
/// is one FIFO line (a receiving thread and a sending thread), so datagrams
/// keep their order: a timer per datagram would reorder bursts, which QUIC
/// rightly reads as loss. The harness shares the cores with both nodes, so
/// it is kept cheap: plain threads, blocking sockets, and quinn-udp's
/// receive and send offloads (GRO/GSO), which move a run of datagrams per
/// system call as the nodes themselves do. It stops when `stop` is set.
fn relay(listen: std::net::UdpSocket, target: SocketAddr, delay: Duration, stop: Arc<std::sync::atomic::AtomicBool>) {
    use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
    use std::io::IoSliceMut;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;
    /// A run of datagrams: due time, bytes, datagram size within them.
    type Run = (Instant, Vec<u8>, usize);
    /// Receive one run (several datagrams with GRO); None on timeout.
    fn recv(sock: &std::net::UdpSocket, state: &UdpSocketState, buf: &mut [u8]) -> Option<(SocketAddr, usize, usize)> {
        let mut meta = [RecvMeta::default()];
        let n = state.recv(sock.into(), &mut [IoSliceMut::new(buf)], &mut meta).ok()?;
        (n == 1).then(|| (meta[0].addr, meta[0].len, meta[0].stride.max(1)))
    }
    /// One direction's sending half: forward each run at its due time
    /// (within 0.2 ms), in order.
    fn line(sock: Arc<std::net::UdpSocket>, state: Arc<UdpSocketState>, to: SocketAddr) -> mpsc::Sender<Run> {
        let (tx, rx) = mpsc::channel::<Run>();
        std::thread::spawn(move || {
            while let Ok((due, data, stride)) = rx.recv() {
                let now = Instant::now();
                if due > now + Duration::from_micros(200) {
                    std::thread::sleep(due - now);
                }
                // One send carries at most 64 KB (and the GSO segment limit).
                let per = stride * state.max_gso_segments().max(1).min((65_000 / stride).max(1));
                for chunk in data.chunks(per) {
                    let t = Transmit {
                        destination: to,
                        ecn: None,
                        contents: chunk,
                        segment_size: (chunk.len() > stride).then_some(stride),
                        src_ip: None,
                    };
                    // quinn-udp reports only WouldBlock (a blocking socket
                    // has none); other errors it logs and drops, as a
                    // network would.
                    let _ = state.send((&*sock).into(), &t);
                }
            }
        });
        tx
    }
    /// quinn-udp's state for a socket, which it makes non-blocking: made
    /// blocking again (with a timeout, to look at `stop`) for these threads.
    fn offloads(sock: &std::net::UdpSocket) -> Arc<UdpSocketState> {
        let state = UdpSocketState::new(sock.into()).unwrap();
        sock.set_nonblocking(false).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Arc::new(state)
    }
    let listen = Arc::new(listen);
    let state = offloads(&listen);
    std::thread::spawn(move || {
        let mut uplinks: std::collections::HashMap<SocketAddr, mpsc::Sender<Run>> = Default::default();
        let mut buf = vec![0u8; 1 << 17];
        while !stop.load(Ordering::Relaxed) {
            // Timeout: look at `stop`.
            let Some((client, n, stride)) = recv(&listen, &state, &mut buf) else {
                continue;
            };
            let up = uplinks.entry(client).or_insert_with(|| {
                let u = Arc::new(relay_socket("127.0.0.1:0"));
                let ust = offloads(&u);
                let back = line(listen.clone(), state.clone(), client);
                let (u2, st, stop2) = (u.clone(), ust.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut b = vec![0u8; 1 << 17];
                    while !stop2.load(Ordering::Relaxed) {
                        // Timeout, or nothing listening there yet (ICMP port
                        // unreachable): keep relaying.
                        let Some((from, n, stride)) = recv(&u2, &st, &mut b) else {
                            continue;
                        };
                        if from == target && back.send((Instant::now() + delay, b[..n].to_vec(), stride)).is_err() {
                            return;
                        }
                    }
                });
                line(u, ust, target)
            });
            let _ = up.send((Instant::now() + delay, buf[..n].to_vec(), stride));
        }
    });
}

/// A relay socket with buffers like the nodes' own (8 MB), so the harness
/// does not drop what the nodes would not.
fn relay_socket(addr: &str) -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind(addr).unwrap();
    let r = socket2::SockRef::from(&s);
    let _ = r.set_recv_buffer_size(8 << 20);
    let _ = r.set_send_buffer_size(8 << 20);
    s
}

fn free_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(dir: &Path, id: &str, mirror: u16, peer: u16) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("tandem.toml");
    std::fs::write(
        &p,
        format!(
            "[node]\nid = \"{id}\"\ndata_dir = \"{}\"\n[imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n[lmtp]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [mirror]\nlisten = \"127.0.0.1:{mirror}\"\npeers = [\"127.0.0.1:{peer}\"]\nsecret = \"benchmark shared secret\"\nreconnect_min_ms = 20\nreconnect_max_ms = 200\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    p
}

fn serve(cfg: &Path) -> Child {
    let log = std::fs::File::create(cfg.with_file_name("serve.log")).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--config")
        .arg(cfg)
        .arg("serve")
        .env("TANDEM_LOG", std::env::var("TANDEM_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    // Wait for the listeners line.
    use std::io::BufRead;
    let out = c.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    for l in lines.by_ref() {
        if l.unwrap().contains("lmtp listening") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    c
}

fn heads(rt: &tokio::runtime::Runtime, cfg: &Path) -> serde_json::Value {
    let c = tandem::config::Config::load(Some(cfg)).unwrap();
    let admin = tandem::cli::Admin::new(&c).unwrap();
    let v: serde_json::Value = rt.block_on(admin.get("/v1/digest")).unwrap();
    v["heads"].clone()
}

/// How a catch-up went: the whole time, the entries, and the steady rate
/// (entries per second while B went from 20 % to 80 % of them, which
/// leaves out connection set-up and the congestion window's ramp).
struct CatchUp {
    secs: f64,
    entries: u64,
    steady: f64,
}

/// A fresh B catching up everything A holds, over `delay` each way.
fn catch_up(rt: &tokio::runtime::Runtime, n: u64, delay: Duration) -> CatchUp {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os("MIRROR_WAN_PROGRESS").is_some() {
        eprintln!("    work dir {}", dir.path().display());
    }
    let (pa, pb) = (free_udp(), free_udp());
    // Relays: B reaches A through ra, A reaches B through rb.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ra, rb) = if delay.is_zero() {
        (pa, pb)
    } else {
        let (ra, rb) = (free_udp(), free_udp());
        let a_target: SocketAddr = format!("127.0.0.1:{pa}").parse().unwrap();
        let b_target: SocketAddr = format!("127.0.0.1:{pb}").parse().unwrap();
        relay(relay_socket(&format!("127.0.0.1:{ra}")), a_target, delay, stop.clone());
        relay(relay_socket(&format!("127.0.0.1:{rb}")), b_target, delay, stop.clone());
        (ra, rb)
    };
    let cfg_a = config(&dir.path().join("a"), "node-a", pa, rb);
    let cfg_b = config(&dir.path().join("b"), "node-b", pb, ra);
    // Fill A's store directly, before A serves.
    std::fs::create_dir_all(dir.path().join("a/data")).unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_tandem-stress"))
        .args([
            "--db",
            dir.path().join("a/data/db").to_str().unwrap(),
            "--node",
            "node-a",
            "--threads",
            "4",
        ])
        .args(["--count", &(n / 4).to_string(), "--size", "27648", "--max-secs", "600"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let mut a = serve(&cfg_a);
    let want = heads(rt, &cfg_a);
    let entries: u64 = want.as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    let t0 = Instant::now();
    let mut b = serve(&cfg_b);
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut last_report = Instant::now();
    let mut at20: Option<(f64, u64)> = None;
    let mut at80: Option<(f64, u64)> = None;
    loop {
        let h = heads(rt, &cfg_b);
        let held: u64 = h.as_object().map(|o| o.values().filter_map(|v| v.as_u64()).sum()).unwrap_or(0);
        let t = t0.elapsed().as_secs_f64();
        if at20.is_none() && held * 5 >= entries {
            at20 = Some((t, held));
        }
        if at80.is_none() && held * 5 >= entries * 4 {
            at80 = Some((t, held));
        }
        if h == want {
            break;
        }
        if std::env::var_os("MIRROR_WAN_PROGRESS").is_some() && last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("    {:>6.1} s: B holds {held} of {entries} entries", t0.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        assert!(Instant::now() < deadline, "B did not catch up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t0.elapsed().as_secs_f64();
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();
    if std::env::var_os("MIRROR_WAN_KEEP").is_some() {
        let _ = dir.keep();
    }
    let steady = match (at20, at80) {
        (Some((t1, h1)), Some((t2, h2))) if t2 > t1 => (h2 - h1) as f64 / (t2 - t1),
        _ => entries as f64 / secs,
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    CatchUp { secs, entries, steady }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = !args.iter().any(|a| a == "--bench");
    let n: u64 = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 200 } else { 8000 });
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("fresh peer catching up {n} messages of 27 KB");
    let report = |name: &str, c: &CatchUp| {
        println!(
            "  {name:<22} {:>7.2} s  {:>6.0} msg/s overall  {:>6.0} entries/s steady (20-80 %)  {:>6.1} MB/s steady",
            c.secs,
            n as f64 / c.secs,
            c.steady,
            c.steady * 27.0 / 1024.0 * n as f64 / c.entries as f64
        );
    };
    let direct = catch_up(&rt, n, Duration::ZERO);
    report("loopback", &direct);
    let mut relay0 = None;
    if !quick && std::env::var_os("MIRROR_WAN_NO_RELAY0").is_none() {
        // The relay path with no delay: what the harness alone costs.
        let c = catch_up(&rt, n, Duration::from_micros(1));
        report("relay, no delay", &c);
        relay0 = Some(c);
    }
    let wan = catch_up(&rt, n, Duration::from_millis(50));
    report("relay, 100 ms RTT", &wan);
    println!(
        "  steady rate at 100 ms RTT: {:.1} % of loopback{}",
        100.0 * wan.steady / direct.steady,
        relay0.map_or(String::new(), |r| format!(
            ", {:.1} % of the relay with no delay",
            100.0 * wan.steady / r.steady
        ))
    );
    println!(
        "  whole catch-up at 100 ms RTT: {:.1} % of loopback's rate",
        100.0 * direct.secs / wan.secs
    );
}
