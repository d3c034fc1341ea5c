//! `tandem watchdog`: the end-to-end check of a mirror. A probe message is
//! delivered over LMTP to one node and looked for over IMAP on the other;
//! the time from the delivery's 250 to the probe showing up is the figure,
//! and the probe is removed again. Output and exit codes follow the
//! Nagios plugin conventions, so cron and monitoring systems can run it:
//! `OK` (0), `CRITICAL` (2: the probe was refused, or did not arrive in
//! time), `UNKNOWN` (3: the check itself could not run, such as an
//! unreadable password file).
//!
//! The IMAP side logs in with LOGIN over the plain port, so the node must
//! allow plaintext logins from where the watchdog runs (`imap.plaintext_auth`;
//! loopback by default): run it on a node, or allow the monitoring host.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `tandem watchdog` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// LMTP listener of the node that takes the probe (HOST:PORT).
    #[arg(long)]
    pub lmtp: String,
    /// IMAP listener (plain) of the node that must show it (HOST:PORT).
    #[arg(long)]
    pub imap: String,
    /// The account that receives the probes.
    #[arg(long)]
    pub user: String,
    /// File holding that account's password (first line).
    #[arg(long)]
    pub password_file: PathBuf,
    /// Seconds the probe may take to show up.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Run again every DURATION (e.g. 30s, 5m, 1h) and print one line a
    /// run, instead of once.
    #[arg(long)]
    pub every: Option<String>,
    /// With --every: serve the last result as Prometheus metrics
    /// (`tandem_watchdog_*`) at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR", requires = "every")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A file holding the token scrapers of --metrics-listen must send as
    /// `Authorization: Bearer TOKEN`.
    #[arg(long, value_name = "FILE", requires = "metrics_listen")]
    pub metrics_token_file: Option<PathBuf>,
}

/// The last result of a repeating watchdog, for `--metrics-listen`.
#[derive(Debug, Default)]
pub struct Metrics {
    checks: [crate::metrics::Counter; 3],
    last: std::sync::Mutex<Option<Last>>,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    /// Unix seconds when the last check ended.
    at: f64,
    /// Its plugin exit code.
    status: u8,
    /// OK: the probe's time from the LMTP 250 to showing up over IMAP;
    /// otherwise the time the check took until it failed.
    secs: f64,
    /// Unix seconds when the last OK check ended (0: none since start).
    success_at: f64,
}

const STATUS_NAMES: [&str; 3] = ["ok", "critical", "unknown"];

impl Metrics {
    /// Record one check that took `took` and ended at `at_unix` seconds.
    pub fn record(&self, o: &Outcome, took: Duration, at_unix: f64) {
        let (i, secs) = match o {
            Outcome::Ok(d) => (0, d.as_secs_f64()),
            Outcome::Critical(_) => (1, took.as_secs_f64()),
            Outcome::Unknown(_) => (2, took.as_secs_f64()),
        };
        self.checks[i].inc();
        let mut last = self.last.lock().expect("watchdog metrics lock");
        let success_at = if i == 0 { at_unix } else { last.map_or(0.0, |l| l.success_at) };
        *last = Some(Last {
            at: at_unix,
            status: o.exit_code(),
            secs,
            success_at,
        });
    }
}

impl crate::metrics::Collect for Metrics {
    fn collect(&self, e: &mut crate::metrics::Encoder) {
        use crate::metrics::Kind;
        e.family(
            "tandem_watchdog_checks_total",
            Kind::Counter,
            "Checks run since the watchdog started, by result (ok, critical, unknown).",
        );
        for (name, c) in STATUS_NAMES.iter().zip(&self.checks) {
            e.sample("tandem_watchdog_checks_total", &[("status", name)], c.get() as f64);
        }
        // Before the first check ends the gauges have no sample.
        let last = *self.last.lock().expect("watchdog metrics lock");
        type Field = fn(&Last) -> f64;
        let gauges: [(&str, &str, Field); 4] = [
            (
                "tandem_watchdog_last_status",
                "Exit code of the last check: 0 OK, 2 CRITICAL, 3 UNKNOWN.",
                |l| f64::from(l.status),
            ),
            (
                "tandem_watchdog_last_run_timestamp_seconds",
                "Unix time the last check ended.",
                |l| l.at,
            ),
            (
                "tandem_watchdog_last_success_timestamp_seconds",
                "Unix time the last OK check ended (0: none since the watchdog started).",
                |l| l.success_at,
            ),
            (
                "tandem_watchdog_last_duration_seconds",
                "Last check: when OK, seconds from the LMTP 250 to the probe showing up over IMAP; otherwise seconds until it failed.",
                |l| l.secs,
            ),
        ];
        for (name, help, f) in gauges {
            e.family(name, Kind::Gauge, help);
            if let Some(l) = &last {
                e.sample(name, &[], f(l));
            }
        }
    }
}

/// Bind `--metrics-listen` and serve `m` on a thread of its own until the
/// process ends: the bound address.
fn serve_metrics(a: &Args, m: std::sync::Arc<Metrics>) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let Some(addr) = a.metrics_listen else {
        return Ok(None);
    };
    let cfg = crate::config::MetricsConfig {
        listen: Some(addr),
        bearer_token_file: a.metrics_token_file.clone(),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let bound = rt.block_on(crate::metrics::http::bind(&cfg))?.expect("listen is set");
    let local = bound.addr;
    let mut registry = crate::metrics::Registry::default();
    registry.register(m);
    std::thread::Builder::new().name("watchdog-metrics".into()).spawn(move || {
        // The sender lives as long as the thread: the listener never sees
        // a shutdown and ends with the process.
        let (_keep, rx) = tokio::sync::watch::channel(false);
        rt.block_on(async move {
            let _ = crate::metrics::http::serve(bound, registry, None, rx).await;
        });
    })?;
    Ok(Some(local))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The probe showed up after this long.
    Ok(Duration),
    /// The mirror failed the check.
    Critical(String),
    /// The check could not be made.
    Unknown(String),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Ok(_) => 0,
            Outcome::Critical(_) => 2,
            Outcome::Unknown(_) => 3,
        }
    }

    /// One line in the plugin format, with the time as performance data.
    pub fn line(&self, a: &Args) -> String {
        match self {
            Outcome::Ok(d) => format!(
                "OK - probe delivered over LMTP {} read over IMAP {} in {:.3} s | time={:.6}s;;{}",
                a.lmtp,
                a.imap,
                d.as_secs_f64(),
                d.as_secs_f64(),
                a.timeout
            ),
            Outcome::Critical(m) => format!("CRITICAL - {m}"),
            Outcome::Unknown(m) => format!("UNKNOWN - {m}"),
        }
    }
}

/// `30s`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Run the check (once, or every `--every`); the exit code of the last run.
pub fn main(a: &Args) -> u8 {
    let every = match a.every.as_deref().map(parse_duration) {
        None => None,
        Some(Some(d)) => Some(d),
        Some(None) => {
            println!("UNKNOWN - --every wants a duration such as 30s, 5m or 1h");
            return 3;
        }
    };
    let metrics = std::sync::Arc::new(Metrics::default());
    match serve_metrics(a, metrics.clone()) {
        Ok(Some(addr)) => eprintln!("tandem watchdog: metrics listening on http://{addr}/metrics"),
        Ok(None) => {}
        Err(e) => {
            println!("UNKNOWN - --metrics-listen: {e:#}");
            return 3;
        }
    }
    loop {
        let started = Instant::now();
        let outcome = check(a);
        metrics.record(&outcome, started.elapsed(), unix_now());
        println!("{}", outcome.line(a));
        let _ = std::io::stdout().flush();
        match every {
            None => return outcome.exit_code(),
            Some(d) => std::thread::sleep(d.saturating_sub(started.elapsed())),
        }
    }
}

/// One check.
pub fn check(a: &Args) -> Outcome {
    let password = match std::fs::read_to_string(&a.password_file) {
        Ok(s) => s.lines().next().unwrap_or("").to_string(),
        Err(e) => return Outcome::Unknown(format!("cannot read {}: {e}", a.password_file.display())),
    };
    let timeout = Duration::from_secs(a.timeout.max(1));
    let probe = format!("tandem-watchdog-{}", hex::encode(rand::random::<[u8; 8]>()));
    if let Err(e) = deliver(&a.lmtp, &a.user, &probe, timeout) {
        return Outcome::Critical(format!("delivery over LMTP {} failed: {e}", a.lmtp));
    }
    let delivered = Instant::now();
    match find_and_remove(&a.imap, &a.user, &password, &probe, delivered + timeout) {
        Ok(Some(d)) => Outcome::Ok(d.saturating_duration_since(delivered)),
        Ok(None) => Outcome::Critical(format!(
            "the probe delivered over LMTP {} did not show up over IMAP {} within {} s",
            a.lmtp, a.imap, a.timeout
        )),
        Err(e) => Outcome::Critical(format!("IMAP {}: {e}", a.imap)),
    }
}

fn connect(addr: &str, timeout: Duration) -> Result<(BufReader<TcpStream>, TcpStream), String> {
    use std::net::ToSocketAddrs;
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))?;
    let s = TcpStream::connect_timeout(&sa, timeout).map_err(|e| format!("cannot connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    Ok((r, s))
}

fn read_line(r: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut l = String::new();
    match r.read_line(&mut l) {
        Ok(0) => Err("the server closed the connection".into()),
        Ok(_) => Ok(l.trim_end().to_string()),
        Err(e) => Err(format!("reading: {e}")),
    }
}

/// An SMTP reply (multi-line replies folded); fails unless it starts with `want`.
fn reply(r: &mut BufReader<TcpStream>, want: &str) -> Result<(), String> {
    loop {
        let l = read_line(r)?;
        if l.len() >= 4 && l.as_bytes()[3] == b'-' {
            continue;
        }
        return if l.starts_with(want) {
            Ok(())
        } else {
            Err(format!("expected {want}, got {l:?}"))
        };
    }
}

fn deliver(addr: &str, user: &str, probe: &str, timeout: Duration) -> Result<(), String> {
    let (mut r, mut w) = connect(addr, timeout)?;
    let say = |w: &mut TcpStream, s: &str| w.write_all(s.as_bytes()).map_err(|e| format!("writing: {e}"));
    reply(&mut r, "220")?;
    say(&mut w, "LHLO tandem-watchdog\r\n")?;
    reply(&mut r, "250")?;
    say(&mut w, "MAIL FROM:<>\r\n")?;
    reply(&mut r, "250")?;
    say(&mut w, &format!("RCPT TO:<{user}>\r\n"))?;
    reply(&mut r, "250")?;
    say(&mut w, "DATA\r\n")?;
    reply(&mut r, "354")?;
    say(
        &mut w,
        &format!("From: <>\r\nTo: <{user}>\r\nSubject: {probe}\r\nMessage-ID: <{probe}@watchdog.tandem>\r\n\r\nMirror watchdog probe; it is removed once seen.\r\n.\r\n"),
    )?;
    reply(&mut r, "250")?;
    let _ = say(&mut w, "QUIT\r\n");
    Ok(())
}

/// IMAP quoting for LOGIN.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Poll INBOX for the probe until `deadline`; remove it when found. The
/// instant it was first seen, or `None` if it never was.
fn find_and_remove(addr: &str, user: &str, password: &str, probe: &str, deadline: Instant) -> Result<Option<Instant>, String> {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    let (mut r, mut w) = connect(addr, left)?;
    let greeting = read_line(&mut r)?;
    if !greeting.starts_with("* OK") {
        return Err(format!("unexpected greeting {greeting:?}"));
    }
    let mut n = 0u32;
    let mut cmd = |r: &mut BufReader<TcpStream>, w: &mut TcpStream, c: &str| -> Result<Vec<String>, String> {
        n += 1;
        let tag = format!("w{n}");
        w.write_all(format!("{tag} {c}\r\n").as_bytes())
            .map_err(|e| format!("writing: {e}"))?;
        let mut untagged = Vec::new();
        loop {
            let l = read_line(r)?;
            if let Some(rest) = l.strip_prefix(&format!("{tag} ")) {
                return if rest.starts_with("OK") {
                    Ok(untagged)
                } else {
                    Err(format!("{} answered {rest:?}", c.split(' ').next().unwrap_or(c)))
                };
            }
            untagged.push(l);
        }
    };
    cmd(&mut r, &mut w, &format!("LOGIN {} {}", quoted(user), quoted(password)))?;
    cmd(&mut r, &mut w, "SELECT INBOX")?;
    let found = loop {
        let lines = cmd(&mut r, &mut w, &format!("UID SEARCH HEADER Subject {}", quoted(probe)))?;
        let uids: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("* SEARCH"))
            .flat_map(|l| l.split_whitespace().filter_map(|u| u.parse().ok()))
            .collect();
        if !uids.is_empty() {
            let at = Instant::now();
            let set = uids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            cmd(&mut r, &mut w, &format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"))?;
            cmd(&mut r, &mut w, &format!("UID EXPUNGE {set}"))?;
            break Some(at);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
        cmd(&mut r, &mut w, "NOOP")?;
    };
    let _ = cmd(&mut r, &mut w, "LOGOUT");
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_exit_codes() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("5 days"), None);
        assert_eq!(Outcome::Ok(Duration::ZERO).exit_code(), 0);
        assert_eq!(Outcome::Critical(String::new()).exit_code(), 2);
        assert_eq!(Outcome::Unknown(String::new()).exit_code(), 3);
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn the_last_success_outlives_later_failures() {
        let m = Metrics::default();
        let render = |m: &Metrics| {
            let mut e = crate::metrics::Encoder::default();
            crate::metrics::Collect::collect(m, &mut e);
            e.finish()
        };
        assert!(
            !render(&m).contains("\ntandem_watchdog_last_status "),
            "no sample before the first check"
        );
        m.record(&Outcome::Ok(Duration::from_millis(40)), Duration::from_millis(60), 1000.0);
        m.record(&Outcome::Critical("x".into()), Duration::from_secs(3), 1010.0);
        let t = render(&m);
        for line in [
            "tandem_watchdog_checks_total{status=\"ok\"} 1\n",
            "tandem_watchdog_checks_total{status=\"critical\"} 1\n",
            "tandem_watchdog_checks_total{status=\"unknown\"} 0\n",
            "tandem_watchdog_last_status 2\n",
            "tandem_watchdog_last_run_timestamp_seconds 1010\n",
            "tandem_watchdog_last_success_timestamp_seconds 1000\n",
            "tandem_watchdog_last_duration_seconds 3\n",
        ] {
            assert!(t.contains(line), "{line} missing from\n{t}");
        }
    }
}
