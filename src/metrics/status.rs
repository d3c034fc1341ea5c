//! The HTML status page of the metrics listener: `GET /status` (the page)
//! and `GET /status.json` (what its script polls), behind the same bearer
//! token as `/metrics`.
//!
//! The page shows one node: its identity and role, the links it sends on
//! (state, lag, queue, added and sent, rates, last error with its time,
//! and lag and queue over the last hour as inline SVG sparklines) and the
//! links it receives on (what the peer's batches added, deleted, renamed,
//! what failed). Each node's outgoing links are the half of the pair it
//! sends, its incoming links the half its peer sends. With `[metrics]
//! peer_status` the node also fetches each peer's `/status.json` (with
//! `peer_token_file`) and shows the peer's own view of its links; the
//! node fetches, not the browser, so the token stays here.
//!
//! The page is rendered here, once, with every changing value in an
//! element carrying a `data-k` key; `/status.json` carries the same keys
//! and values, so the script (a dozen lines, no framework, no external
//! asset) only copies text, and reloads the page when the set of links
//! changed. History is an in-memory ring per outgoing link: one sample
//! every [`INTERVAL`], [`POINTS`] samples (an hour); it starts empty at
//! each start of the daemon.

use crate::admin::{AdminState, Status};
use crate::repl::{Mirror, OutLink};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Time between two history samples.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept per link: an hour at [`INTERVAL`].
pub const POINTS: usize = 360;

/// One history sample of an outgoing link.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Sample {
    pub t_ms: u64,
    pub lag_secs: f64,
    pub queue: u64,
}

/// The last hour of every outgoing link, by the peer's address.
#[derive(Debug, Default)]
pub struct History {
    links: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

impl History {
    /// Add one sample per link; the oldest fall off past [`POINTS`].
    pub fn record(&self, t_ms: u64, links: &[OutLink]) {
        let mut h = self.links.lock().expect("history lock");
        for l in links {
            let ring = h.entry(l.address.clone()).or_default();
            ring.push_back(Sample {
                t_ms,
                lag_secs: l.lag_secs,
                queue: l.queue,
            });
            while ring.len() > POINTS {
                ring.pop_front();
            }
        }
    }

    /// The samples of one link, oldest first.
    pub fn get(&self, address: &str) -> Vec<Sample> {
        let h = self.links.lock().expect("history lock");
        h.get(address).map(|r| r.iter().copied().collect()).unwrap_or_default()
    }
}

/// Sample the links of `mirror` into `history` every [`INTERVAL`] (the
/// first at once) until `shutdown`.
pub async fn sample(
    history: Arc<History>,
    mirror: Arc<Mirror>,
    store: crate::store::Store,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = crate::repl::now_ms();
                let mut st = mirror.status(0);
                st.count_from_log(store.wal(), now);
                history.record(now, &st.outgoing);
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// What the page needs: the node's admin state (for its status), the
/// history, and the peers' listeners to fetch.
pub struct Source {
    pub admin: Arc<AdminState>,
    pub history: Arc<History>,
    pub peers: Peers,
}

/// The peers' metrics listeners (`[metrics] peer_status`), fetched by the
/// node (not by the browser: their token stays on the node, and the
/// browser needs to reach only this node).
#[derive(Default)]
pub struct Peers {
    pub urls: Vec<String>,
    pub token: Option<String>,
    pub client: reqwest::Client,
}

/// How long a peer's status may take before the page shows it unreachable.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

impl Peers {
    /// Every peer's `/status.json`, or why it could not be had.
    pub async fn fetch(&self) -> Vec<(String, Result<Live, String>)> {
        let mut out = Vec::with_capacity(self.urls.len());
        for u in &self.urls {
            out.push((u.clone(), self.fetch_one(u).await));
        }
        out
    }

    async fn fetch_one(&self, url: &str) -> Result<Live, String> {
        // `?local`: the peer answers with its own status only, without
        // fetching its peers in turn (two nodes that list each other would
        // otherwise wait on each other until the timeout).
        let mut req = self.client.get(format!("{url}/status.json?local")).timeout(PEER_TIMEOUT);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => r.json::<Live>().await.map_err(|e| format!("its status did not decode: {e}")),
            Ok(r) => Err(format!("it answered HTTP {}", r.status())),
            Err(e) if e.is_timeout() => Err(format!("no answer within {} s", PEER_TIMEOUT.as_secs())),
            Err(e) => Err(error_chain(&e)),
        }
    }
}

/// An error with its causes (reqwest's own text says little: "error
/// sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The page's changing values, keyed as the page's `data-k` attributes,
/// and its sparklines (SVG `points`), keyed as `data-s`. `shape` names the
/// links shown: when it differs from the page's, the page reloads.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Live {
    pub shape: String,
    pub fields: BTreeMap<String, String>,
    pub sparks: BTreeMap<String, String>,
}

/// The page body and its live values, built together so they cannot
/// disagree.
#[derive(Default)]
struct Doc {
    html: String,
    live: Live,
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

impl Doc {
    /// A live value inside an element of `tag`.
    fn val(&mut self, tag: &str, key: &str, value: String) {
        let class = if key.ends_with(".up") {
            format!(" class=\"{}\"", esc(&value))
        } else {
            String::new()
        };
        let _ = write!(self.html, "<{tag} data-k=\"{}\"{class}>{}</{tag}>", esc(key), esc(&value));
        self.live.fields.insert(key.to_string(), value);
    }

    /// A table row: label, then a live value.
    fn row(&mut self, label: &str, key: &str, value: String) {
        let _ = write!(self.html, "<tr><th>{}</th>", esc(label));
        self.val("td", key, value);
        self.html.push_str("</tr>\n");
    }

    /// A sparkline of `values` (oldest first, at their times) over the last
    /// hour before `now_ms`, with its largest value as the scale.
    fn spark(&mut self, label: &str, key: &str, unit: &str, points: &[(u64, f64)], now_ms: u64) {
        const W: f64 = 360.0;
        const H: f64 = 40.0;
        let max = points.iter().map(|p| p.1).fold(0.0f64, f64::max);
        let span = (POINTS as u64 * INTERVAL.as_millis() as u64) as f64;
        let start = now_ms as f64 - span;
        let mut pts = String::new();
        for (t, v) in points {
            let x = ((*t as f64 - start) / span * W).clamp(0.0, W);
            let y = if max > 0.0 { H - 1.0 - v / max * (H - 2.0) } else { H - 1.0 };
            let _ = write!(pts, "{x:.1},{y:.1} ");
        }
        let pts = pts.trim_end().to_string();
        let _ = write!(
            self.html,
            "<tr><th>{}, last hour</th><td><svg class=\"spark\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{} over the last hour\">\
             <polyline data-s=\"{}\" fill=\"none\" stroke=\"currentColor\" stroke-width=\"1.5\" points=\"{}\"/></svg> ",
            esc(label),
            esc(label),
            esc(key),
            pts
        );
        self.val("span", &format!("{key}.max"), format!("max {}{unit}", trim_float(max)));
        self.html.push_str("</td></tr>\n");
        self.live.sparks.insert(key.to_string(), pts);
    }
}

fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Unix milliseconds as UTC wall time.
pub fn utc(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// Build the page body and its live values from one status (and the
/// peers' pages' values).
fn build(st: &Status, history: &History, peers: &[(String, Result<Live, String>)], now_ms: u64) -> Doc {
    let mut d = Doc::default();
    let shape: Vec<String> = st
        .mirror
        .outgoing
        .iter()
        .map(|o| format!("out:{}", o.address))
        .chain(st.mirror.incoming.keys().map(|p| format!("in:{p}")))
        .chain(st.backup.iter().map(|b| format!("backup:{}", b.target)))
        .chain(st.retention.enabled.then(|| format!("retention:{}", st.retention.held_back.len())))
        .chain(st.sidefiles.iter().map(|s| format!("sidefiles:{}", s.dirs.len())))
        .chain(peers.iter().map(|(url, r)| match r {
            Ok(l) => format!("peer:{url}[{}]", l.shape),
            Err(_) => format!("peer:{url}[unreachable]"),
        }))
        .collect();
    d.live.shape = shape.join(" ");

    let _ = write!(d.html, "<h1>Tandem node {}</h1>\n<table class=\"node\">\n", esc(&st.node_id));
    d.row(
        "Role",
        "node.role",
        format!(
            "{} (epoch {}{})",
            st.role,
            st.epoch,
            st.master.as_deref().map(|m| format!(", master {m}")).unwrap_or_default()
        ),
    );
    d.row("Version", "node.version", st.version.clone());
    d.row("Up", "node.uptime", format!("{} s", st.uptime_secs));
    d.row("Users", "node.users", st.users.to_string());
    d.row(
        "Delivered",
        "node.lmtp",
        format!(
            "{} messages to {} recipients ({}) over LMTP",
            st.lmtp.messages,
            st.lmtp.delivered,
            bytes(st.lmtp.bytes)
        ),
    );
    d.row(
        "Log",
        "node.log",
        format!(
            "apply order {}, {} entries appended since start, {} fsyncs{}",
            st.log.apply_order,
            st.log.entries_appended,
            st.log.fsyncs,
            st.log.poisoned.as_deref().map(|p| format!(", POISONED: {p}")).unwrap_or_default()
        ),
    );
    let c = &st.conflicts;
    d.row(
        "Conflicts",
        "node.conflicts",
        format!(
            "kept aside {}, UID collisions pending {} ({} reported to the master), name conflicts pending {}, moved by the master {}",
            c.kept_aside, c.uid_collisions, c.reported, c.name_conflicts, c.resolved
        ),
    );
    d.html.push_str("</table>\n");

    let mi = &st.mirror;
    if !mi.enabled {
        d.html.push_str("<p>No mirror is configured on this node.</p>\n");
    }
    for (i, o) in mi.outgoing.iter().enumerate() {
        let k = format!("out.{i}");
        let _ = write!(
            d.html,
            "<section class=\"link\" id=\"{k}\"><h2>Mirror to {}{}</h2>\n<table>\n",
            esc(&o.address),
            esc(&o.peer.as_deref().map(|p| format!(" ({p})")).unwrap_or_default())
        );
        let up = if o.state == "connected" { "up" } else { "down" };
        d.row("Link", &format!("{k}.up"), up.to_string());
        d.row(
            "State",
            &format!("{k}.state"),
            format!("{} since {} ({})", o.state, utc(o.since_ms), ago(now_ms, o.since_ms)),
        );
        d.row("Add", &format!("{k}.added"), format!("{} entries added here", o.local_added));
        d.row(
            "Sent",
            &format!("{k}.sent"),
            format!(
                "{} entries ({}), {:.1}/s; {} bodies ({})",
                o.sent,
                bytes(o.sent_bytes),
                o.send_rate,
                o.bodies_sent,
                bytes(o.body_bytes_sent)
            ),
        );
        d.row(
            "Queue",
            &format!("{k}.queue"),
            if o.acked.is_empty() && o.state != "connected" {
                "unknown: the peer has acknowledged nothing since this node started".to_string()
            } else {
                format!(
                    "{} entries not acknowledged; in flight {} batches ({})",
                    o.queue,
                    o.inflight_batches,
                    bytes(o.unacked_bytes)
                )
            },
        );
        d.row("Lag", &format!("{k}.lag"), format!("{:.1} s", o.lag_secs));
        d.row(
            "Info",
            &format!("{k}.error"),
            match (&o.last_error, o.last_error_ms) {
                (Some(e), Some(t)) => format!("{} ({}): {e}", utc(t), ago(now_ms, t)),
                (Some(e), None) => e.clone(),
                (None, _) => "no error since start".into(),
            },
        );
        let mut h = history.get(&o.address);
        h.push(Sample {
            t_ms: now_ms,
            lag_secs: o.lag_secs,
            queue: o.queue,
        });
        let lag: Vec<(u64, f64)> = h.iter().map(|s| (s.t_ms, s.lag_secs)).collect();
        let queue: Vec<(u64, f64)> = h.iter().map(|s| (s.t_ms, s.queue as f64)).collect();
        d.spark("Lag", &format!("{k}.lag_h"), " s", &lag, now_ms);
        d.spark("Queue", &format!("{k}.queue_h"), " entries", &queue, now_ms);
        d.html.push_str("</table></section>\n");
    }
    for (i, (peer, l)) in mi.incoming.iter().enumerate() {
        let k = format!("in.{i}");
        let _ = write!(
            d.html,
            "<section class=\"link\" id=\"{k}\"><h2>Mirror from {}</h2>\n<table>\n",
            esc(peer)
        );
        d.row("Link", &format!("{k}.up"), if l.connected { "up" } else { "down" }.to_string());
        d.row(
            "State",
            &format!("{k}.state"),
            format!(
                "{} since {} ({}); peer is {} (epoch {})",
                if l.connected { "connected" } else { "disconnected" },
                utc(l.since_ms),
                ago(now_ms, l.since_ms),
                l.peer_role.as_deref().unwrap_or("?"),
                l.peer_epoch
            ),
        );
        let a = &l.applied;
        d.row(
            "In",
            &format!("{k}.in"),
            format!(
                "add={} del={} rename={} flags={} other={} duplicates={} fail={}",
                a.add, a.delete, a.rename, a.flags, a.other, a.duplicates, l.failed
            ),
        );
        d.row(
            "Applied",
            &format!("{k}.applied"),
            format!("{} batches, {} entries, {:.1} entries/s", l.batches, a.entries, l.apply_rate),
        );
        d.row(
            "Info",
            &format!("{k}.error"),
            l.last_error.clone().unwrap_or_else(|| "no error since start".into()),
        );
        d.html.push_str("</table></section>\n");
    }
    for (i, (url, r)) in peers.iter().enumerate() {
        peer_section(&mut d, i, url, r);
    }
    for (i, b) in st.backup.iter().enumerate() {
        let k = format!("backup.{i}");
        let _ = write!(
            d.html,
            "<section class=\"link\" id=\"{k}\"><h2>Backup to {}</h2>\n<table>\n",
            esc(&b.target)
        );
        d.row(
            "Position",
            &format!("{k}.position"),
            format!(
                "{} of {} ({} entries behind, {:.1} s)",
                b.position, b.apply_order, b.lag_entries, b.lag_secs
            ),
        );
        d.html.push_str("</table></section>\n");
    }
    if st.retention.enabled {
        let r = &st.retention;
        d.html
            .push_str("<section class=\"link\" id=\"retention\"><h2>Log retention</h2>\n<table>\n");
        d.row(
            "Pruned",
            "retention.pruned",
            format!(
                "{} entries in {} runs (keep {} s and the newest {} per origin){}",
                r.pruned,
                r.runs,
                r.keep_secs,
                r.keep_entries,
                r.last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default()
            ),
        );
        for (i, (o, why)) in r.held_back.iter().enumerate() {
            let upto = r.pruned_up_to.get(o).copied().unwrap_or(0);
            d.row(
                &format!("Origin {o}"),
                &format!("retention.held.{i}"),
                format!("pruned up to seq {upto}; held back at {why}"),
            );
        }
        d.html.push_str("</table></section>\n");
    }
    if let Some(s) = &st.sidefiles {
        d.html
            .push_str("<section class=\"link\" id=\"sidefiles\"><h2>Side files (mirror.sync_dirs)</h2>\n<table>\n");
        d.row("Files", "sidefiles.files", format!("{} in {} directories", s.files, s.dirs.len()));
        let when = |ms: u64| {
            if ms == 0 {
                "not since start".to_string()
            } else {
                format!("{} ({})", utc(ms), ago(now_ms, ms))
            }
        };
        d.row("Last sync", "sidefiles.sync", when(s.last_sync_ms));
        d.row(
            "Changes",
            "sidefiles.changes",
            format!(
                "logged here {}, applied here {}, refused {}, errors {}",
                s.logged, s.applied, s.refused, s.errors
            ),
        );
        d.row(
            "Info",
            "sidefiles.error",
            s.last_error.clone().unwrap_or_else(|| "no error since start".into()),
        );
        d.html.push_str("</table></section>\n");
    }
    d
}

/// A peer's values, as its own page shows them, under `peer.N.`: its
/// role and uptime, and per link it sends on, up or down, state, queue,
/// lag and last error.
fn peer_section(d: &mut Doc, i: usize, url: &str, r: &Result<Live, String>) {
    let k = format!("peer.{i}");
    let _ = write!(
        d.html,
        "<section class=\"peer\" id=\"{k}\"><h2>Peer <a href=\"{0}/status\">{0}</a></h2>\n<table>\n",
        esc(url)
    );
    let l = match r {
        Ok(l) => l,
        Err(e) => {
            d.row("Reached", &format!("{k}.reached"), format!("no: {e}"));
            d.html.push_str("</table></section>\n");
            return;
        }
    };
    d.row("Reached", &format!("{k}.reached"), "yes".into());
    let f = |key: &str| l.fields.get(key).cloned();
    for (key, label) in [("node.role", "Role"), ("node.uptime", "Up"), ("node.lmtp", "Delivered")] {
        if let Some(v) = f(key) {
            d.row(label, &format!("{k}.{key}"), v);
        }
    }
    // The peer's outgoing links, named as its shape names them.
    let outs = l.shape.split(' ').filter_map(|s| s.strip_prefix("out:"));
    for (j, addr) in outs.enumerate() {
        let o = format!("out.{j}");
        let Some(up) = f(&format!("{o}.up")) else { continue };
        d.row(&format!("Mirror to {addr}"), &format!("{k}.{o}.up"), up);
        for (suffix, label) in [("state", "State"), ("queue", "Queue"), ("lag", "Lag"), ("error", "Info")] {
            if let Some(v) = f(&format!("{o}.{suffix}")) {
                d.row(label, &format!("{k}.{o}.{suffix}"), v);
            }
        }
    }
    d.html.push_str("</table></section>\n");
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin:1.2em 0 .3em}\
table{border-collapse:collapse}th{text-align:left;padding:2px 12px 2px 0;vertical-align:top;color:#555;font-weight:600}\
td{padding:2px 0}.up{color:#070;font-weight:700}.down{color:#b00;font-weight:700}\
.spark{color:#246;background:#f4f6f8;vertical-align:middle}#refreshed{color:#777}.peer{border-left:3px solid #ccd;padding-left:10px}";

/// A dozen lines: poll `status.json`, copy the values, reload when the
/// set of links changed.
const SCRIPT: &str = r#"(function(){
var out=document.getElementById('refreshed');
function tick(){
 fetch('status.json',{cache:'no-store'}).then(function(r){if(!r.ok)throw new Error('HTTP '+r.status);return r.json();}).then(function(j){
  if(j.shape!==document.body.dataset.shape){location.reload();return;}
  Object.keys(j.fields).forEach(function(k){var e=document.querySelector('[data-k="'+k+'"]');if(e){e.textContent=j.fields[k];if(/\.up$/.test(k))e.className=j.fields[k];}});
  Object.keys(j.sparks).forEach(function(k){var e=document.querySelector('[data-s="'+k+'"]');if(e)e.setAttribute('points',j.sparks[k]);});
  out.textContent='live: refreshed '+new Date().toISOString().replace('T',' ').slice(0,19)+' UTC';
 }).catch(function(e){out.textContent='refresh failed: '+e.message;});
}
tick();setInterval(tick,5000);
})();"#;

/// The whole page.
pub fn page(st: &Status, history: &History, peers: &[(String, Result<Live, String>)], now_ms: u64) -> String {
    let d = build(st, history, peers, now_ms);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>Tandem {} status</title><style>{STYLE}</style></head>\n\
         <body data-shape=\"{}\">\n{}<p id=\"refreshed\">rendered {} (live refresh needs JavaScript; the values are at status.json)</p>\n\
         <script>{SCRIPT}</script>\n</body></html>\n",
        esc(&st.node_id),
        esc(&d.live.shape),
        d.html,
        utc(now_ms)
    )
}

/// What `/status.json` answers.
pub fn live(st: &Status, history: &History, peers: &[(String, Result<Live, String>)], now_ms: u64) -> Live {
    build(st, history, peers, now_ms).live
}

impl Source {
    /// The node's status (reads the views: off the async workers).
    pub async fn status(&self) -> anyhow::Result<Status> {
        let admin = self.admin.clone();
        Ok(tokio::task::spawn_blocking(move || crate::admin::status(&admin)).await??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(addr: &str, queue: u64, lag: f64) -> OutLink {
        OutLink {
            address: addr.into(),
            state: "disconnected".into(),
            queue,
            lag_secs: lag,
            ..Default::default()
        }
    }

    #[test]
    fn the_ring_keeps_an_hour_per_link() {
        let h = History::default();
        for i in 0..(POINTS as u64 + 5) {
            h.record(i * 10_000, &[link("a:1", i, i as f64), link("b:2", 0, 0.0)]);
        }
        let a = h.get("a:1");
        assert_eq!(a.len(), POINTS);
        assert_eq!(a[0].t_ms, 50_000, "the five oldest fell off");
        assert_eq!(a.last().unwrap().queue, POINTS as u64 + 4);
        assert_eq!(h.get("b:2").len(), POINTS);
        assert!(h.get("c:3").is_empty());
    }

    #[test]
    fn sparkline_points_span_the_hour_and_scale_to_the_maximum() {
        let mut d = Doc::default();
        let now = 3_600_000;
        d.spark("q", "k", "", &[(0, 0.0), (1_800_000, 5.0), (now, 10.0)], now);
        assert_eq!(d.live.sparks["k"], "0.0,39.0 180.0,20.0 360.0,1.0");
        assert_eq!(d.live.fields["k.max"], "max 10");
        assert!(d.html.contains("points=\"0.0,39.0 180.0,20.0 360.0,1.0\""), "{}", d.html);
    }

    #[test]
    fn values_are_escaped_in_html_but_not_in_json() {
        let mut d = Doc::default();
        d.row("E", "x.error", "<script>\"&".into());
        assert!(d.html.contains("&lt;script&gt;&quot;&amp;"), "{}", d.html);
        assert_eq!(d.live.fields["x.error"], "<script>\"&");
    }

    #[test]
    fn utc_formats_milliseconds() {
        assert_eq!(utc(1_764_646_108_000), "2025-12-02 03:28:28 UTC");
    }
}
