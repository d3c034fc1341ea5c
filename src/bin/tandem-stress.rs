//! `tandem-stress`: drive concurrent durable deliveries into a data directory
//! without the network, printing one line per acknowledged message. Crash
//! tests kill it at random points and check that every acknowledged message
//! survived; operators can use it to measure a disk's group-commit rate.
//!
//! Output, one line per acknowledged delivery:
//! `ack <thread> <index> <uid> <blob-hash-hex>`

use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem::event::Flags;
use tandem::mutate::{self, NewMessage};
use tandem::store::{self, Store};
use tandem::views::ViewRead;

#[derive(Parser, Debug)]
#[command(about = "Concurrent durable deliveries into a Tandem data directory")]
struct Args {
    /// RocksDB directory (created if missing).
    #[arg(long)]
    db: PathBuf,
    /// Node id to append as.
    #[arg(long, default_value = "stress")]
    node: String,
    /// Concurrent writers, one user each (`stress<N>@example.org`).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Messages per writer.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 27 * 1024)]
    size: usize,
    /// Stop after this many seconds whatever the count.
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
    /// Print an `ack` line per message.
    #[arg(long)]
    print_acks: bool,
    /// Groups with at least this many body bytes write them to blob files
    /// without RocksDB's WAL (the store's default when not given).
    #[arg(long)]
    bulk_bytes: Option<u64>,
}

/// The body of message `i` of writer `t`: unique, deterministic.
fn body(t: usize, i: u64, size: usize) -> Vec<u8> {
    let head =
        format!("From: stress{t}@example.org\r\nTo: stress{t}@example.org\r\nSubject: message {i}\r\nMessage-ID: <{t}.{i}@stress>\r\n\r\n");
    let mut b = head.into_bytes();
    let mut x: u64 = (t as u64) << 32 | i;
    while b.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.push(b'a' + (x % 26) as u8);
        if b.len() % 76 == 74 {
            b.extend_from_slice(b"\r\n");
        }
    }
    b
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut opts = store::wal_options(&a.node);
    if let Some(b) = a.bulk_bytes {
        opts.bulk_bytes = b;
    }
    let store = Store::open(&a.db, &a.node, opts)?;
    for t in 0..a.threads {
        let user = format!("stress{t}@example.org");
        if store.views().user(&user)?.is_none() {
            let u = user.clone();
            store.run_blocking(move |txn, cfs| mutate::create_user(txn, cfs, &u, "$argon2id$unused".into(), 1_700_000_000))?;
        }
    }
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let deadline = Instant::now() + Duration::from_secs(a.max_secs);
    let start = Instant::now();
    let mut lat: Vec<Duration> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.threads)
            .map(|t| {
                let store = store.clone();
                let out = out.clone();
                let a = &a;
                s.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let user = format!("stress{t}@example.org");
                    let mut lat = Vec::with_capacity(a.count as usize);
                    for i in 0..a.count {
                        if Instant::now() > deadline {
                            break;
                        }
                        let msg = NewMessage::new(body(t, i, a.size), Flags::default(), 1_700_000_000 + i as i64);
                        let blob = msg.blob;
                        let u = user.clone();
                        let t0 = Instant::now();
                        let placed = store.run_blocking(move |txn, cfs| mutate::append(txn, cfs, &u, "INBOX", &msg))?;
                        lat.push(t0.elapsed());
                        if a.print_acks {
                            let mut o = out.lock().expect("stdout lock");
                            writeln!(o, "ack {t} {i} {} {}", placed.uid, hex::encode(blob.0))?;
                            o.flush()?;
                        }
                    }
                    Ok(lat)
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(Ok(l)) => lat.extend(l),
                Ok(Err(e)) => eprintln!("tandem-stress: writer failed: {e:#}"),
                Err(_) => eprintln!("tandem-stress: writer panicked"),
            }
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let st = store.wal().stats();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0)
    };
    eprintln!(
        "tandem-stress: {} messages in {secs:.2}s = {:.0} msg/s; {} fsyncs, {:.2} appends/fsync; latency p50 {:.2} ms p99 {:.2} ms",
        lat.len(),
        lat.len() as f64 / secs,
        st.groups,
        st.entries as f64 / st.groups.max(1) as f64,
        pct(0.5),
        pct(0.99)
    );
    store.close()?;
    Ok(())
}
