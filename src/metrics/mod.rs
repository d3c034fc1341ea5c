//! The metrics registry: typed counters, gauges and histograms, each with a
//! name and help text, and their rendering in the Prometheus text format
//! (version 0.0.4) for the `/metrics` listener ([`http`]).
//!
//! Hot paths touch only atomics: a counter or gauge is one `AtomicU64` /
//! `AtomicI64`, a histogram a fixed array of bucket counters plus a count
//! and a sum in nanoseconds (every histogram here measures time, in
//! seconds). Sets of metrics that belong together (one listener's) are
//! declared once with [`metrics!`], which also gives the plain copy
//! `tandem status` prints; sources that already keep their own numbers (the
//! log's statistics, the mirror's links) implement [`Collect`] and are read
//! at scrape time.

pub mod http;
pub mod node;
pub mod status;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A count that only grows.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        if cfg!(feature = "bench-no-metrics") {
            return;
        }
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (connections open now).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket bounds (seconds) for latencies from tens of microseconds (an
/// IMAP command served from the views) to seconds (a stalled fsync).
pub const LATENCY: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds (seconds) for replication lag: milliseconds on a healthy
/// link up to an hour behind after an outage.
pub const LAG: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A distribution of durations over fixed buckets (upper bounds in
/// seconds, ascending); observations above the last bound count only in
/// `+Inf` (the total).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bucket bounds ascend");
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        if cfg!(feature = "bench-no-metrics") {
            return;
        }
        let secs = d.as_secs_f64();
        // First bucket whose bound holds it; the buckets are not cumulative
        // here (one increment per observation), the rendering sums them.
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Observe the time since `t0`.
    pub fn since(&self, t0: Instant) {
        if cfg!(feature = "bench-no-metrics") {
            return;
        }
        self.observe(t0.elapsed());
    }

    /// A guard that observes the time until it is dropped.
    pub fn start_timer(&self) -> Timer<'_> {
        Timer(self, Instant::now())
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            count: self.count.load(Ordering::Relaxed),
            sum_secs: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// See [`Histogram::start_timer`].
pub struct Timer<'a>(&'a Histogram, Instant);

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.0.since(self.1);
    }
}

/// A histogram's counts at one moment (per bucket, not cumulative). Also
/// the form a histogram takes where it lives under a lock already (the
/// mirror's per-link state), via [`HistogramSnapshot::empty`] and
/// [`HistogramSnapshot::observe`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_secs: f64,
}

impl HistogramSnapshot {
    pub fn empty(bounds: &'static [f64]) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds,
            buckets: vec![0; bounds.len()],
            count: 0,
            sum_secs: 0.0,
        }
    }

    pub fn observe(&mut self, secs: f64) {
        let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_secs += secs;
    }
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot::empty(LAG)
    }
}

/// The kind of a metric family, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes the Prometheus text format. A family is opened with
/// [`Encoder::family`] (`# HELP` and `# TYPE` once) and its samples follow.
#[derive(Default)]
pub struct Encoder {
    out: String,
    /// Families written so far, with their kind and help (for the docs
    /// and for tests that check every name is declared once).
    pub families: Vec<(String, Kind, String)>,
}

impl Encoder {
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
        self.families.push((name.to_string(), kind, help));
    }

    /// One sample line: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        push_float(&mut self.out, value);
        self.out.push('\n');
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Kind::Counter, help);
        self.sample(name, &[], value as f64);
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, Kind::Gauge, help);
        self.sample(name, &[], value);
    }

    /// The samples of one histogram (its family opened already).
    pub fn histogram_samples(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (b, n) in h.bounds.iter().zip(&h.buckets) {
            cumulative += n;
            let le = float_string(*b);
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, cumulative as f64);
        }
        let mut l: Vec<(&str, &str)> = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum_secs);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.family(name, Kind::Histogram, help);
        self.histogram_samples(name, &[], h);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn float_string(v: f64) -> String {
    let mut s = String::new();
    push_float(&mut s, v);
    s
}

fn push_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Something that writes metric families at scrape time.
pub trait Collect: Send + Sync {
    fn collect(&self, e: &mut Encoder);
}

/// Every source of metrics of one daemon, rendered in registration order.
#[derive(Default, Clone)]
pub struct Registry {
    sources: Vec<Arc<dyn Collect>>,
}

impl Registry {
    pub fn register(&mut self, c: Arc<dyn Collect>) {
        self.sources.push(c);
    }

    pub fn encoder(&self) -> Encoder {
        let mut e = Encoder::default();
        for s in &self.sources {
            s.collect(&mut e);
        }
        e
    }

    /// The whole exposition.
    pub fn render(&self) -> String {
        self.encoder().finish()
    }
}

/// Add `n` to a counter.
pub(crate) fn bump(c: &Counter, n: u64) {
    c.add(n);
}

/// `metrics!(#[doc] Name, NameSnapshot, "prefix_" { counters { field:
/// "name_total", "help"; ... } gauges { ... } histograms { field: "name",
/// "help", BOUNDS; ... } })` declares `Name` (one typed metric per field,
/// with [`Collect`]), `NameSnapshot` (counters and gauges as `u64`,
/// serialisable, for `tandem status`) and `Name::snapshot`.
macro_rules! metrics {
    (
        $(#[$m:meta])* $name:ident, $snap:ident, $prefix:literal {
            counters { $($c:ident : $cn:literal, $ch:literal;)* }
            gauges { $($g:ident : $gn:literal, $gh:literal;)* }
            histograms { $($h:ident : $hn:literal, $hh:literal, $hb:expr;)* }
        }
    ) => {
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name {
            $(#[doc = $ch] pub $c: $crate::metrics::Counter,)*
            $(#[doc = $gh] pub $g: $crate::metrics::Gauge,)*
            $(#[doc = $hh] pub $h: $crate::metrics::Histogram,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($c: Default::default(),)*
                    $($g: Default::default(),)*
                    $($h: $crate::metrics::Histogram::new($hb),)*
                }
            }
        }

        /// A copy of the counters and gauges at one moment.
        #[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
        pub struct $snap {
            $(pub $c: u64,)*
            $(pub $g: u64,)*
        }

        impl $name {
            pub fn snapshot(&self) -> $snap {
                $snap {
                    $($c: self.$c.get(),)*
                    $($g: u64::try_from(self.$g.get()).unwrap_or(0),)*
                }
            }
        }

        impl $crate::metrics::Collect for $name {
            fn collect(&self, e: &mut $crate::metrics::Encoder) {
                $(e.counter(concat!($prefix, $cn), $ch, self.$c.get());)*
                $(e.gauge(concat!($prefix, $gn), $gh, self.$g.get() as f64);)*
                $(e.histogram(concat!($prefix, $hn), $hh, &self.$h.snapshot());)*
            }
        }
    };
}
pub(crate) use metrics;

#[cfg(test)]
mod tests {
    use super::*;

    metrics!(
        /// Test set.
        Set, SetSnapshot, "t_" {
            counters { hits: "hits_total", "Hits \"quoted\" \\ back"; }
            gauges { open: "open", "Open now"; }
            histograms { wait: "wait_seconds", "Waits", LATENCY; }
        }
    );

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        h.observe(Duration::from_micros(1000)); // exactly on the first bound
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(3)); // above every bound
        let mut e = Encoder::default();
        e.histogram("x_seconds", "x", &h.snapshot());
        let text = e.finish();
        assert!(text.contains("x_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"0.01\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"0.1\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("x_seconds_count 4\n"), "{text}");
        assert!(text.contains("x_seconds_sum 3.011\n"), "{text}");
    }

    #[test]
    fn a_declared_set_renders_types_help_and_snapshot() {
        let s = Set::default();
        s.hits.add(3);
        s.open.inc();
        s.open.inc();
        s.open.dec();
        s.wait.observe(Duration::from_millis(2));
        assert_eq!(s.snapshot(), SetSnapshot { hits: 3, open: 1 });
        let mut r = Registry::default();
        r.register(Arc::new(s));
        let e = r.encoder();
        let kinds: Vec<_> = e.families.iter().map(|(n, k, _)| (n.as_str(), *k)).collect();
        assert_eq!(
            kinds,
            [
                ("t_hits_total", Kind::Counter),
                ("t_open", Kind::Gauge),
                ("t_wait_seconds", Kind::Histogram)
            ]
        );
        let text = e.finish();
        assert!(
            text.starts_with("# HELP t_hits_total Hits \"quoted\" \\\\ back\n# TYPE t_hits_total counter\nt_hits_total 3\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE t_open gauge\nt_open 1\n"), "{text}");
        assert!(text.contains("t_wait_seconds_bucket{le=\"0.0025\"} 1\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Encoder::default();
        e.family("l", Kind::Gauge, "l");
        e.sample("l", &[("peer", "a\"b\\c\nd")], 1.5);
        assert_eq!(e.finish(), "# HELP l l\n# TYPE l gauge\nl{peer=\"a\\\"b\\\\c\\nd\"} 1.5\n");
    }
}
