//! Group-commit benchmark: durable deliveries (27 KB bodies, fsync on) from
//! 1, 16 and 64 concurrent appenders through the daemon's store (log entry +
//! view updates + single-instance blob in one batch).
//!
//! Run: `cargo bench --bench wal_append` (optionally `-- --secs 10`).
//! Prints, per concurrency: deliveries/s, appends per fsync, latency p50/p99.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem::event::Flags;
use tandem::mutate::{self, NewMessage};
use tandem::store::{wal_options, Store};

fn body(t: usize, i: u64) -> Vec<u8> {
    let mut b = format!("From: a@example.org\r\nSubject: {t}/{i}\r\n\r\n").into_bytes();
    let mut x = ((t as u64) << 32 | i) | 1;
    while b.len() < 27 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.push(b' ' + (x % 90) as u8);
    }
    b
}

fn run(concurrency: usize, secs: f64, max_per_thread: u64) -> (f64, f64, f64, f64, u64) {
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string())).unwrap();
    let store = Store::open(dir.path(), "bench", wal_options("bench")).unwrap();
    let users = 16.min(concurrency);
    for u in 0..users {
        store
            .run_blocking(move |t, c| mutate::create_user(t, c, &format!("u{u}@example.org"), "x".into(), 1_700_000_000))
            .unwrap();
    }
    let before = store.wal().stats();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for t in 0..concurrency {
            let store = store.clone();
            let lat = lat.clone();
            s.spawn(move || {
                let mut mine = Vec::new();
                for i in 0..max_per_thread {
                    if Instant::now() > deadline {
                        break;
                    }
                    let msg = NewMessage::new(body(t, i), Flags::default(), 1_700_000_000);
                    let user = format!("u{}@example.org", t % users);
                    let t0 = Instant::now();
                    store
                        .run_blocking(move |txn, c| mutate::append(txn, c, &user, "INBOX", &msg))
                        .unwrap();
                    mine.push(t0.elapsed());
                }
                lat.lock().unwrap().extend(mine);
            });
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let st = store.wal().stats();
    let appends = st.entries - before.entries;
    let fsyncs = st.groups - before.groups;
    let mut lat = Arc::try_unwrap(lat).unwrap().into_inner().unwrap();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    store.close().unwrap();
    (
        appends as f64 / elapsed,
        appends as f64 / fsyncs.max(1) as f64,
        pct(0.5),
        pct(0.99),
        appends,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs benches with `--bench` absent: do one quick pass.
    let quick = !args.iter().any(|a| a == "--bench");
    let secs = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.3 } else { 8.0 });
    println!("durable deliveries, 27 KB bodies, fsync on, {secs} s per row");
    println!(
        "{:>11} {:>12} {:>15} {:>9} {:>9} {:>9}",
        "appenders", "appends/s", "appends/fsync", "p50 ms", "p99 ms", "appends"
    );
    for c in [1usize, 16, 64] {
        let (rate, per_fsync, p50, p99, n) = run(c, secs, 100_000);
        println!("{c:>11} {rate:>12.0} {per_fsync:>15.2} {p50:>9.2} {p99:>9.2} {n:>9}");
    }
}
