//! Merkle resync: compare this node's merkle tree (`crate::merkle`) with a
//! peer's, top-down, and repair what differs by appending events to this
//! node's log, which the mirror then carries to the peer like any other.
//!
//! The exchange runs on its own connection: after the usual proof of the
//! shared secret, the dialing node sends [`Frame::ResyncHello`] instead of
//! `Hello`, then [`Frame::Read`]s of tree nodes and of the records they
//! name; the peer answers each with [`Frame::Values`]. Every level of the
//! tree is one round trip, all reads of a level sent at once, so a
//! comparison costs O(depth) round trips and bytes in proportion to the
//! differences times the depth. The peer only answers reads; it changes
//! nothing.
//!
//! Repair (the node that runs it is the reference): a message or mailbox
//! that only one side holds is restored on the other (`MessageRestored`,
//! `MailboxRestored`: mail is never dropped); flags, mailbox names,
//! subscriptions, accounts and configuration that differ take this node's
//! value. A body this node lacks is read from the peer and stored with the
//! event that needs it; bodies the peer lacks travel with the events on the
//! mirror link, which asks the peer first. `full` also re-hashes every
//! body held here and restores one whose bytes do not match its hash.

use super::frame::{Frame, MAX_FRAME};
use super::Mirror;
use crate::event::{BlobHash, Event, FlagOp, Id};
use crate::merkle::{self, keys as tk, Entry, Node, FANOUT_BITS, ROOT_LEVEL};
use crate::store::Store;
use crate::views::{keys as vk, MailboxRec, MessageRec, UserRec, ViewRead};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub mod join;

/// Keys in one read (the answering node refuses more).
pub const MAX_KEYS: usize = 4096;
/// Bytes of bodies asked for in one read.
const BODY_READ_BYTES: u64 = 32 << 20;
/// Rounds of a comparison (the tree is 10 levels deep at most).
const MAX_ROUNDS: usize = 16;

/// Read families (`Frame::Read::family`): views keys, bodies, log heads,
/// and (resync digests 1) tree nodes as [`merkle::Node::digest`]s and
/// tree nodes' stored summaries (hash and count, the first 40 bytes).
const VIEWS: u8 = 0;
const BODIES: u8 = 1;
const HEADS: u8 = 2;
const DIGEST: u8 = 3;
const SUMMARY: u8 = 4;
/// (resync eighths 1) A mailbox trie node's summary by eighths
/// ([`merkle::Node::eighths`]), and the digest of one eighth
/// ([`merkle::Node::eighth`]; the key is the node's followed by the
/// eighth's number).
const EIGHTHS: u8 = 5;
const EIGHTH: u8 = 6;
/// A key of a heads read (family 2) that a node serving families 3 and 4
/// answers with [`DIGESTS_ANSWER`]; an older node answers it with its log
/// heads, and is then compared by whole nodes (family 0).
const DIGESTS_KEY: &[u8] = b"resync digests?";
/// A key of a heads read (family 2) answered with [`BASES_ANSWER`] and the
/// node's log bases (`wal::Wal::bases`) as postcard `[(origin, seq, hash,
/// hlc)]`; an older node answers it with its heads, which do not start
/// with the marker.
const BASES_KEY: &[u8] = b"resync bases?";
const BASES_ANSWER: &[u8] = b"resync bases 1\n";
const DIGESTS_ANSWER: &[u8] = b"resync digests 1";
/// A key of a heads read answered with [`EIGHTHS_ANSWER`] by a node that
/// serves families 5 and 6 (an older node answers it with its heads).
const EIGHTHS_KEY: &[u8] = b"resync eighths?";
const EIGHTHS_ANSWER: &[u8] = b"resync eighths 1";
/// A trie node is read by eighths (two round trips: the summary, then the
/// eighths that differ) when its parent counts more messages under it than
/// this; a narrower node is read whole, in one.
const EIGHTHS_ABOVE: u64 = 16;
/// (resync cores 1) A message's or a mailbox's record with the fields each
/// node keeps for itself cleared (MODSEQ, flag clocks, HIGHESTMODSEQ): what
/// its tree entry covers, and all a comparison or a repair uses.
const CORE: u8 = 7;
/// (resync cores 1) A mailbox record's first 8 bytes of
/// [`merkle::mailbox_hash`] over it and an empty trie (`[0; 32]`, 0): the
/// record itself is read ([`CORE`]) only where these differ.
const CORE_HASH: u8 = 8;
/// A key of a heads read answered with [`CORES_ANSWER`] by a node that
/// serves families 7 and 8 (an older node answers it with its heads).
const CORES_KEY: &[u8] = b"resync cores?";
const CORES_ANSWER: &[u8] = b"resync cores 1";

/// What the peer serves, and so how the walk reads its tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reads {
    /// Tree nodes as digests (families 3 and 4), else whole (family 0).
    digests: bool,
    /// Wide trie nodes by eighths (families 5 and 6); only with digests.
    eighths: bool,
    /// Records cut to their cores, and mailbox records by hash first
    /// (families 7 and 8).
    cores: bool,
}

impl Reads {
    const WHOLE: Reads = Reads {
        digests: false,
        eighths: false,
        cores: false,
    };
    #[cfg(test)]
    const DIGESTS: Reads = Reads {
        digests: true,
        eighths: false,
        cores: false,
    };
    #[cfg(test)]
    const ALL: Reads = Reads {
        digests: true,
        eighths: true,
        cores: true,
    };
}

/// What a node needs to dial a peer for a resync.
#[derive(Clone)]
pub struct Dialer {
    pub data_dir: PathBuf,
    pub secret: Arc<Vec<u8>>,
}

/// What to compare, and whether to repair.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Request {
    /// The peer's mirror address.
    pub peer: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub folder: Option<String>,
    /// Append the repairs (else only report).
    #[serde(default)]
    pub repair: bool,
    /// Also re-hash every body held here (scrub).
    #[serde(default)]
    pub full: bool,
    /// The peer is the reference, and the logs need not be in step: a
    /// node that joins by trees (an empty data dir, or history the peer
    /// no longer holds) takes everything the peer holds, as the peer
    /// holds it.
    #[serde(default)]
    pub from_peer: bool,
}

/// One difference, named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// `message`, `flags`, `mailbox`, `subscription`, `account`, `config`,
    /// `body`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// What differs, in words.
    pub detail: String,
    pub repaired: bool,
}

/// The outcome of a comparison (and repair).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub peer: String,
    /// Messages covered by the comparison (this node's count).
    pub compared: u64,
    pub differences: u64,
    pub repaired: u64,
    /// Bytes of the exchange sent and received by this node.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The same bytes (sent and received together) by what they carried.
    #[serde(default)]
    pub carried: Carried,
    pub round_trips: u64,
    /// Bodies re-hashed (`full`), and those found bad or missing.
    pub bodies_checked: u64,
    pub bodies_bad: u64,
    /// Bytes of the bodies re-hashed (`full`).
    #[serde(default)]
    pub body_bytes_checked: u64,
    /// Mailboxes whose records the walk compared (only those under a user
    /// whose summary differs are opened), and those it repaired.
    #[serde(default)]
    pub folders_compared: u64,
    #[serde(default)]
    pub folders_repaired: u64,
    /// `MessageRestored` events appended by the repair.
    #[serde(default)]
    pub messages_restored: u64,
    /// Whether both nodes held the same log heads when the comparison
    /// started (if not, some differences may be entries still in flight).
    pub logs_in_step: bool,
    /// The exchange ran on a connection kept from an earlier one with the
    /// same peer (no handshakes).
    #[serde(default)]
    pub connection_kept: bool,
    pub seconds: f64,
    pub items: Vec<Difference>,
}

/// Bytes of an exchange by what they carried. Each frame's bytes (header,
/// id and length prefixes included) are shared among its keys (a read) or
/// values (an answer) in proportion to their lengths, each counted with
/// one byte more, so the four sum to the bytes sent and received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    /// Tree nodes: digests, summaries and eighths, and nodes read whole
    /// (keys under `T`): what finds where the trees differ.
    pub tree: u64,
    /// View records (messages, mailboxes, names, accounts): the state
    /// itself, compared where the trees differ.
    pub records: u64,
    /// Bodies read from the peer for a repair.
    pub bodies: u64,
    /// Log heads, bases and the questions of what the peer serves.
    pub heads: u64,
}

impl Carried {
    pub fn total(&self) -> u64 {
        self.tree + self.records + self.bodies + self.heads
    }

    fn slot(&mut self, family: u8, key: &[u8]) -> &mut u64 {
        match family {
            VIEWS if key.first() == Some(&tk::PREFIX) => &mut self.tree,
            VIEWS | CORE | CORE_HASH => &mut self.records,
            BODIES => &mut self.bodies,
            HEADS => &mut self.heads,
            _ => &mut self.tree,
        }
    }

    /// Count one read of `keys` of `family` (a frame of `sent` bytes) and
    /// its answer `values` (a frame of `received` bytes).
    fn count(&mut self, family: u8, keys: &[Vec<u8>], values: &[Option<Vec<u8>>], sent: u64, received: u64) {
        let Some(first) = keys.first() else {
            *self.slot(family, &[]) += sent + received;
            return;
        };
        let asked: Vec<u64> = keys.iter().map(|k| k.len() as u64 + 1).collect();
        let answered: Vec<u64> = (0..keys.len())
            .map(|i| values.get(i).and_then(|v| v.as_ref()).map_or(0, |v| v.len() as u64) + 1)
            .collect();
        for (bytes, weights) in [(sent, asked), (received, answered)] {
            let whole: u64 = weights.iter().sum();
            let mut given = 0;
            for (k, w) in keys.iter().zip(weights) {
                let share = (bytes as u128 * w as u128 / whole as u128) as u64;
                *self.slot(family, k) += share;
                given += share;
            }
            // What rounding left over goes with the first key.
            *self.slot(family, first) += bytes - given;
        }
    }
}

/// Where a running comparison is: what the walk has settled, of what it
/// knows about so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// `comparing`, `scrubbing` or `repairing`.
    pub phase: String,
    pub peer: String,
    /// Mailboxes compared, of those the walk has found under differing
    /// users.
    pub folders_done: u64,
    pub folders_total: u64,
    /// Messages settled (equal subtrees count at once), of the larger of
    /// the two sides' counts; while repairing: differences repaired, of
    /// those to repair.
    pub messages_done: u64,
    pub messages_total: u64,
}

/// One comparison as `tandem status` reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    /// `scheduled` (by `mirror.repair_interval`), `command` (`tandem
    /// verify` / `resync`) or `join` (a join by trees this node started on
    /// its own, [`join`]).
    pub trigger: String,
    pub peer: String,
    /// Whether it repaired (else it only compared).
    pub repair: bool,
    /// Start, milliseconds since the epoch.
    pub started_ms: u64,
    pub seconds: f64,
    pub compared: u64,
    pub folders_compared: u64,
    pub folders_repaired: u64,
    pub differences: u64,
    pub repaired: u64,
    pub messages_restored: u64,
    pub bytes: u64,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `resync` block of `tandem status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResyncStatus {
    /// `mirror.repair_interval` in seconds (0: no scheduled repair).
    pub interval_secs: u64,
    /// Whether this node runs the scheduled repair now (it is the master).
    pub scheduled_here: bool,
    /// When the next scheduled run starts, milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ms: Option<u64>,
    /// Comparisons since start (scheduled or by command), and those that
    /// failed.
    pub runs: u64,
    pub failures: u64,
    /// Totals over those runs.
    pub differences: u64,
    pub repaired: u64,
    pub messages_restored: u64,
    pub folders_repaired: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Progress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<LastRun>,
    /// The last failure, `time_ms message`, kept after later successes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Comparisons run by this node: their progress and results, for status
/// and metrics. One comparison at a time: a scheduled run waits for one
/// started by command, and the other way round.
#[derive(Default)]
pub struct Schedule {
    status: std::sync::Mutex<ResyncStatus>,
    one_at_a_time: tokio::sync::Mutex<()>,
    /// Connections kept after an exchange, by peer address ([`Kept`]).
    kept: std::sync::Mutex<Pool>,
}

/// How long a resync connection stays open after an exchange, for the next
/// one with the same peer.
const KEEP_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// A resync connection kept after an exchange: the next exchange with the
/// same peer within [`KEEP_FOR`] reads on it at once, without the QUIC and
/// SPAKE2 handshakes (2-14 ms of a 3-16 ms no-change check on loopback).
/// The peer's server answers reads until the stream ends, whatever
/// exchange they belong to.
struct Kept {
    ep: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    next_id: u64,
    /// What the peer serves, as its first heads read said.
    reads: Reads,
    /// Which keeping this is: a timer ends only its own.
    generation: u64,
}

#[derive(Default)]
struct Pool {
    generation: u64,
    conns: std::collections::HashMap<SocketAddr, Kept>,
}

impl Schedule {
    /// The connection kept for `addr`, if it is still open.
    fn take_kept(&self, addr: SocketAddr) -> Option<Kept> {
        let k = self.kept.lock().expect("resync pool lock").conns.remove(&addr)?;
        k.conn.close_reason().is_none().then_some(k)
    }

    /// Keep a connection for the next exchange with `addr`; it is closed
    /// after [`KEEP_FOR`] unless an exchange takes it first.
    fn keep(mirror: &Arc<Mirror>, addr: SocketAddr, mut k: Kept) {
        let generation = {
            let mut pool = mirror.repair.kept.lock().expect("resync pool lock");
            pool.generation += 1;
            k.generation = pool.generation;
            if let Some(old) = pool.conns.insert(addr, k) {
                old.conn.close(0u32.into(), b"resync done");
            }
            pool.generation
        };
        let m = Arc::downgrade(mirror);
        tokio::spawn(async move {
            tokio::time::sleep(KEEP_FOR).await;
            let Some(m) = m.upgrade() else { return };
            let mut pool = m.repair.kept.lock().expect("resync pool lock");
            if pool.conns.get(&addr).is_some_and(|k| k.generation == generation) {
                if let Some(k) = pool.conns.remove(&addr) {
                    k.conn.close(0u32.into(), b"resync done");
                }
            }
        });
    }

    pub fn status(&self) -> ResyncStatus {
        self.status.lock().expect("resync status lock").clone()
    }

    fn with(&self, f: impl FnOnce(&mut ResyncStatus)) {
        f(&mut self.status.lock().expect("resync status lock"));
    }

    fn progress(&self, f: impl FnOnce(&mut Progress)) {
        self.with(|s| f(s.running.get_or_insert_with(Default::default)));
    }

    fn record(&self, run: LastRun) {
        self.with(|s| {
            s.running = None;
            s.runs += 1;
            s.differences += run.differences;
            s.repaired += run.repaired;
            s.messages_restored += run.messages_restored;
            s.folders_repaired += run.folders_repaired;
            if let Some(e) = &run.error {
                s.failures += 1;
                s.last_error = Some(format!("{} {e}", run.started_ms));
            }
            s.last = Some(run);
        });
    }
}

impl crate::metrics::Collect for Schedule {
    fn collect(&self, e: &mut crate::metrics::Encoder) {
        let s = self.status();
        e.counter(
            "tandem_resync_runs_total",
            "Merkle comparisons with a peer run by this node (scheduled, by command, or a join by trees started on its own).",
            s.runs,
        );
        e.counter("tandem_resync_failures_total", "Of those, comparisons that failed.", s.failures);
        e.counter(
            "tandem_resync_differences_total",
            "Differences the comparisons found.",
            s.differences,
        );
        e.counter("tandem_resync_repaired_total", "Differences repaired by events.", s.repaired);
        e.counter(
            "tandem_resync_messages_restored_total",
            "Messages restored (MessageRestored events appended) by repairs.",
            s.messages_restored,
        );
        e.counter(
            "tandem_resync_folders_repaired_total",
            "Mailboxes in which a repair changed something.",
            s.folders_repaired,
        );
        let last = s.last.as_ref();
        e.gauge(
            "tandem_resync_last_run_timestamp_seconds",
            "Start of the last comparison, seconds since the epoch (0: none yet).",
            last.map_or(0.0, |l| l.started_ms as f64 / 1000.0),
        );
        e.gauge(
            "tandem_resync_last_duration_seconds",
            "Duration of the last comparison.",
            last.map_or(0.0, |l| l.seconds),
        );
        e.gauge(
            "tandem_resync_last_differences",
            "Differences the last comparison found (NaN when it failed).",
            last.map_or(0.0, |l| if l.error.is_some() { f64::NAN } else { l.differences as f64 }),
        );
        e.gauge(
            "tandem_resync_running",
            "1 while a comparison runs.",
            f64::from(u8::from(s.running.is_some())),
        );
    }
}

/// A repair: events to append here, after storing the bodies they need.
#[derive(Debug)]
struct Fix {
    /// Order of application: accounts, mailboxes, subscriptions, messages,
    /// configuration.
    rank: u8,
    events: Vec<Event>,
    /// A body the event references that this node may lack.
    body: Option<BlobHash>,
}

async fn write_frame(send: &mut quinn::SendStream, f: &Frame, sent: &mut u64) -> anyhow::Result<()> {
    let b = f.encode();
    *sent += b.len() as u64;
    send.write_all(&b).await.context("writing a resync frame")
}

async fn read_frame(recv: &mut quinn::RecvStream, mirror: &Mirror, received: &mut u64) -> anyhow::Result<Frame> {
    let mut hdr = [0u8; 4];
    recv.read_exact(&mut hdr).await.context("reading a resync frame header")?;
    let n = Frame::length(hdr, MAX_FRAME).inspect_err(|_| {
        mirror.bad_frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })?;
    let mut body = vec![0u8; n as usize];
    recv.read_exact(&mut body).await.context("reading a resync frame body")?;
    *received += 4 + n as u64;
    Frame::decode(&body)
        .inspect_err(|_| {
            mirror.bad_frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .context("decoding a resync frame")
}

/// Answer a peer's resync reads until it closes the stream. Nothing here
/// changes this node.
pub async fn serve(store: &Store, mirror: &Mirror, mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> anyhow::Result<()> {
    let (mut sent, mut received) = (0u64, 0u64);
    loop {
        let f = match read_frame(&mut recv, mirror, &mut received).await {
            Ok(f) => f,
            Err(e) => {
                // The peer closing its side ends the exchange.
                if e.chain().any(|c| {
                    c.downcast_ref::<quinn::ReadExactError>()
                        .is_some_and(|r| matches!(r, quinn::ReadExactError::FinishedEarly(0)))
                }) {
                    let _ = send.finish();
                    return Ok(());
                }
                return Err(e);
            }
        };
        let Frame::Read { id, family, keys } = f else {
            bail!("expected a resync read, got {}", f.kind());
        };
        if keys.len() > MAX_KEYS {
            bail!("resync read {id} asks for {} keys, more than {MAX_KEYS}", keys.len());
        }
        if family > CORE_HASH {
            bail!("resync read {id} names family {family}");
        }
        let st = store.clone();
        let values = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Option<serde_bytes::ByteBuf>>> {
            let views = st.views();
            let mut total = 0u64;
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(PREFETCH_KEYS) {
                let v = Prefetched::new(&views, chunk.iter().filter_map(|k| stored_key(family, k)))
                    .with_context(|| format!("resync read {id}"))?;
                for k in chunk {
                    let val = answer(&st, &v, family, k).with_context(|| format!("resync read {id}"))?;
                    total += val.as_ref().map_or(0, |b| b.len() as u64 + 8);
                    if total + (1 << 20) > MAX_FRAME as u64 {
                        bail!("resync read {id}: the answer would exceed the frame limit");
                    }
                    out.push(val.map(serde_bytes::ByteBuf::from));
                }
            }
            Ok(out)
        })
        .await??;
        write_frame(&mut send, &Frame::Values { id, values }, &mut sent).await?;
    }
}

/// The views key whose stored value answers `k` of a read of `family`, if
/// one does.
fn stored_key(family: u8, k: &[u8]) -> Option<Vec<u8>> {
    match family {
        VIEWS | DIGEST | SUMMARY | EIGHTHS | CORE | CORE_HASH => Some(k.to_vec()),
        EIGHTH => eighth_node(k).map(<[u8]>::to_vec),
        _ => None,
    }
}

/// The key of the node an eighth's key (the node's key and the eighth's
/// number) names.
fn eighth_node(k: &[u8]) -> Option<&[u8]> {
    k.split_last().map(|(_, node)| node)
}

/// Keys looked up together (a [`Prefetched`] at a time): whole tree nodes
/// are kilobytes each, and only what is made of them (digests, eighths)
/// outlives the batch, so memory stays bounded whatever a round reads.
const PREFETCH_KEYS: usize = 256;

/// Views with the keys a read needs looked up ahead, in one batched lookup
/// (RocksDB's MultiGet, sorted: one visit of each block for the keys it
/// holds) instead of one point read each; other keys are read through.
struct Prefetched<'a, V> {
    inner: &'a V,
    got: std::collections::HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a, V: ViewRead> Prefetched<'a, V> {
    fn new(inner: &'a V, keys: impl Iterator<Item = Vec<u8>>) -> anyhow::Result<Self> {
        let mut keys: Vec<Vec<u8>> = keys.collect();
        keys.sort_unstable();
        keys.dedup();
        let values = inner.vget_many(&keys, true)?;
        Ok(Prefetched {
            inner,
            got: keys.into_iter().zip(values).collect(),
        })
    }
}

impl<V: ViewRead> ViewRead for Prefetched<'_, V> {
    fn vget(&self, key: &[u8]) -> Result<Option<Vec<u8>>, wal::WalError> {
        match self.got.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.inner.vget(key),
        }
    }
    fn vscan(&self, prefix: &[u8]) -> Result<wal::KeyValues, wal::WalError> {
        self.inner.vscan(prefix)
    }
    fn vscan_from_each(&self, prefix: &[u8], start: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), wal::WalError> {
        self.inner.vscan_from_each(prefix, start, f)
    }
}

/// The answer to one key of a read of `family`.
fn answer(st: &Store, v: &impl ViewRead, family: u8, k: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(match family {
        VIEWS => v.vget(k)?,
        HEADS if k == DIGESTS_KEY => Some(DIGESTS_ANSWER.to_vec()),
        HEADS if k == EIGHTHS_KEY => Some(EIGHTHS_ANSWER.to_vec()),
        HEADS if k == CORES_KEY => Some(CORES_ANSWER.to_vec()),
        HEADS if k == BASES_KEY => {
            let bases: Vec<(u64, u64, [u8; 32], u64)> = st.wal().bases().iter().map(|(o, b)| (o.0, b.seq, b.hash, b.hlc)).collect();
            let mut v = BASES_ANSWER.to_vec();
            v.extend(postcard::to_allocvec(&bases)?);
            Some(v)
        }
        HEADS => Some(postcard::to_allocvec(&heads(st))?),
        DIGEST | SUMMARY => {
            if k.first() != Some(&tk::PREFIX) {
                bail!("key {} is not a tree node", hex::encode(k));
            }
            match v.vget(k)? {
                Some(b) if family == DIGEST => Some(Node::decode(k, &b)?.digest()),
                Some(b) => {
                    merkle::stored_summary(k, &b)?;
                    Some(b[..40].to_vec())
                }
                None => None,
            }
        }
        EIGHTHS | EIGHTH => {
            let (node_key, eighth) = match family {
                EIGHTHS => (k, None),
                _ => match k.split_last() {
                    Some((e, node_key)) if *e < merkle::EIGHTHS => (node_key, Some(*e)),
                    _ => bail!("key {} does not name an eighth of a node", hex::encode(k)),
                },
            };
            if !tk::is_mailbox_node(node_key) {
                bail!("key {} is not a node of a mailbox's trie", hex::encode(node_key));
            }
            match v.vget(node_key)? {
                Some(b) => {
                    let n = Node::decode(node_key, &b)?;
                    Some(match eighth {
                        None => n.eighths(node_key)?,
                        Some(e) => n.eighth(e).digest(),
                    })
                }
                None => None,
            }
        }
        CORE | CORE_HASH => match k.first() {
            Some(&b'm') if family == CORE => v.vget(k)?.map(|b| core_of_message(k, &b)).transpose()?,
            Some(&b'M') => match v.vget(k)? {
                Some(b) => {
                    let mb: MailboxRec = postcard::from_bytes(&b).with_context(|| format!("mailbox record {}", hex::encode(k)))?;
                    Some(if family == CORE {
                        postcard::to_allocvec(&MailboxRec { highestmodseq: 0, ..mb })?
                    } else {
                        mailbox_core_hash(&mb).to_vec()
                    })
                }
                None => None,
            },
            _ => bail!("key {} is not a message's or a mailbox's record (family {family})", hex::encode(k)),
        },
        BODIES => {
            let h: [u8; 32] = k.try_into().map_err(|_| anyhow::anyhow!("a body is named by 32 bytes"))?;
            st.blob(&BlobHash(h))?
        }
        _ => bail!("no read family {family}"),
    })
}

/// A message record as [`CORE`] answers it: the node's own MODSEQ and flag
/// clocks cleared.
fn core_of_message(k: &[u8], b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let m = MessageRec::decode(b).with_context(|| format!("message record {}", hex::encode(k)))?;
    Ok(MessageRec {
        modseq: 0,
        clocks: Vec::new(),
        set_clock: (0, 0),
        ..m
    }
    .encode())
}

/// What [`CORE_HASH`] answers for a mailbox record.
fn mailbox_core_hash(mb: &MailboxRec) -> [u8; 8] {
    let h = merkle::mailbox_hash(mb, ([0; 32], 0));
    h[..8].try_into().expect("8 of 32 bytes")
}

/// Views key of a join by trees: `J origin(u64 BE)` -> seq (u64 BE). The
/// entries of that origin up to that seq are reflected in this node's
/// views by the join (the peer held them when the join read its state), so
/// the mirror stores them in the log but does not apply them again. Not
/// derived from the log: a rebuild or replay of the views from the log
/// (`crate::replay`) carries the marks over and skips those entries too.
pub fn joined_key(origin: u64) -> Vec<u8> {
    let mut k = vec![b'J'];
    k.extend_from_slice(&origin.to_be_bytes());
    k
}

/// Whether a peer's entry `(origin, seq)` carrying `event` is already
/// reflected in the views by a join by trees (see [`joined_key`]). Role,
/// side-file and quota events are not in the trees, so they always apply.
pub fn joined(v: &impl ViewRead, origin: u64, seq: u64, event: &Event) -> Result<bool, crate::views::ViewError> {
    if matches!(
        event,
        Event::RoleChanged { .. } | Event::SideFileSet { .. } | Event::SideFileRemoved { .. } | Event::QuotaSet { .. }
    ) {
        return Ok(false);
    }
    Ok(match v.vget(&joined_key(origin))? {
        Some(b) => <[u8; 8]>::try_from(b.as_slice()).map(u64::from_be_bytes).unwrap_or(0) >= seq,
        None => false,
    })
}

/// This node's log heads, `(origin, last seq)` in origin order.
fn heads(store: &Store) -> Vec<(u64, u64)> {
    store.wal().heads().0.iter().map(|(o, s)| (o.0, *s)).collect()
}

/// How long a repair waits for the logs to be in step with the peer's.
const STEP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The dialing side of the exchange.
struct Peer<'m> {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    mirror: &'m Mirror,
    next_id: u64,
    sent: u64,
    received: u64,
    carried: Carried,
    round_trips: u64,
}

/// Where the other side's values come from: a peer over the exchange (or,
/// in tests, another store).
trait Source {
    /// Values of the keys of each family (as [`Frame::Read`]), in the
    /// order asked, all in one round trip.
    async fn read_all(&mut self, reads: &[(u8, Vec<Vec<u8>>)]) -> anyhow::Result<Vec<Vec<Option<Vec<u8>>>>>;

    /// Values of `keys` of `family`, in order.
    async fn read(&mut self, family: u8, keys: &[Vec<u8>]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        Ok(self.read_all(&[(family, keys.to_vec())]).await?.pop().unwrap_or_default())
    }
}

impl Source for Peer<'_> {
    /// Every chunk of every family sent at once, then the answers in
    /// order (one round trip).
    async fn read_all(&mut self, reads: &[(u8, Vec<Vec<u8>>)]) -> anyhow::Result<Vec<Vec<Option<Vec<u8>>>>> {
        if reads.iter().all(|(_, k)| k.is_empty()) {
            return Ok(reads.iter().map(|_| Vec::new()).collect());
        }
        let mut ids = Vec::new();
        for (g, (family, keys)) in reads.iter().enumerate() {
            for (c, chunk) in keys.chunks(MAX_KEYS).enumerate() {
                self.next_id += 1;
                let f = Frame::Read {
                    id: self.next_id,
                    family: *family,
                    keys: chunk.to_vec(),
                };
                let before = self.sent;
                write_frame(&mut self.send, &f, &mut self.sent).await?;
                ids.push((g, c, self.next_id, chunk.len(), self.sent - before));
            }
        }
        self.round_trips += 1;
        let mut out: Vec<Vec<Option<Vec<u8>>>> = reads.iter().map(|(_, k)| Vec::with_capacity(k.len())).collect();
        for (g, c, id, n, sent) in ids {
            let before = self.received;
            match read_frame(&mut self.recv, self.mirror, &mut self.received).await? {
                Frame::Values { id: got, values } if got == id && values.len() == n => {
                    let values: Vec<Option<Vec<u8>>> = values.into_iter().map(|v| v.map(|b| b.into_vec())).collect();
                    let (family, keys) = &reads[g];
                    let chunk = &keys[c * MAX_KEYS..(c * MAX_KEYS + n)];
                    self.carried.count(*family, chunk, &values, sent, self.received - before);
                    out[g].extend(values);
                }
                Frame::Values { id: got, values } => {
                    bail!("resync answer {got} with {} values, expected {id} with {n}", values.len())
                }
                Frame::Refused { reason } => bail!("the peer refused the resync: {reason}"),
                other => bail!("expected resync values, got {}", other.kind()),
            }
        }
        Ok(out)
    }
}

/// What one probe of the comparison looks at.
#[derive(Debug, Clone)]
enum Probe {
    UsersRoot,
    Group(u8),
    Bucket(u16),
    User(String),
    /// A user's account record (its node's `a` entry differs).
    Account(String),
    Config,
    ConfigKey(String),
    /// A mailbox's record and trie root, and (`low` below the root) the
    /// first node of trie level `low`, which holds every message when both
    /// sides' UIDs are below 64^(low+1): the levels above it are then
    /// chains of one entry and are not read.
    Mailbox {
        user: String,
        id: Id,
        low: u8,
    },
    Trie {
        user: String,
        id: Id,
        level: u8,
        index: u32,
        stage: Stage,
    },
    /// A mailbox's record, cut to its core: read where the peer's
    /// [`CORE_HASH`] of it differs from this node's.
    MailboxRecord {
        user: String,
        id: Id,
    },
    Message {
        user: String,
        id: Id,
        uid: u32,
        /// The peer's leaf holds this UID; where it does not, its record
        /// is not asked for (it has none).
        peer: bool,
    },
}

/// How a trie node is read.
#[derive(Debug, Clone)]
enum Stage {
    /// Whole (as a digest where the peer serves them), in one round trip.
    Whole,
    /// Its summary by eighths first ...
    Eighths,
    /// ... then the digests of the eighths that differ.
    Picked(Vec<u8>),
}

/// What a key of a probe names, and so how it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// A views record.
    Record,
    /// A tree node (as a digest where the peer serves them).
    Node,
    /// A trie node's summary by eighths.
    Eighths,
    /// One eighth of a trie node (the node's key and the eighth).
    Eighth,
    /// A message's or a mailbox's record, from the peer cut to its core
    /// ([`CORE`]; whole from a peer that does not serve cores).
    Core,
    /// A mailbox's record here, its [`CORE_HASH`] from the peer.
    CoreHash,
    /// A record read here only: the peer's tree says it holds none.
    Local,
}

impl Read {
    /// The views key whose stored value this key's value comes from.
    fn stored_key(self, k: &[u8]) -> &[u8] {
        match self {
            Read::Eighth => eighth_node(k).unwrap_or(k),
            _ => k,
        }
    }
}

impl Probe {
    /// The keys, each with what it names.
    fn read_keys(&self, cores: bool) -> Vec<(Read, Vec<u8>)> {
        let (t, r) = (Read::Node, Read::Record);
        match self {
            Probe::UsersRoot => vec![(t, tk::users_root())],
            Probe::Group(g) => vec![(t, tk::group(*g))],
            Probe::Bucket(b) => vec![(t, tk::bucket(*b))],
            Probe::User(u) => vec![(t, tk::user(u))],
            Probe::Account(u) => vec![(r, vk::user(u))],
            Probe::Config => vec![(t, tk::config())],
            Probe::ConfigKey(k) => vec![(r, vk::config(k))],
            Probe::Mailbox { user, id, low } => {
                let rec = if cores { Read::CoreHash } else { r };
                let mut k = vec![(rec, vk::mailbox(user, *id)), (t, tk::mailbox_node(*id, ROOT_LEVEL, 0))];
                if *low < ROOT_LEVEL {
                    k.push((t, tk::mailbox_node(*id, *low, 0)));
                }
                k
            }
            Probe::Trie {
                id, level, index, stage, ..
            } => {
                let k = tk::mailbox_node(*id, *level, *index);
                match stage {
                    Stage::Whole => vec![(t, k)],
                    Stage::Eighths => vec![(Read::Eighths, k)],
                    Stage::Picked(es) => es
                        .iter()
                        .map(|e| {
                            let mut k = k.clone();
                            k.push(*e);
                            (Read::Eighth, k)
                        })
                        .collect(),
                }
            }
            Probe::MailboxRecord { user, id } => vec![(Read::Core, vk::mailbox(user, *id))],
            Probe::Message { id, uid, peer, .. } => {
                vec![(if *peer { Read::Core } else { Read::Local }, vk::message(*id, *uid))]
            }
        }
    }

    /// The tree node whose summary decides, before the walk, whether this
    /// start needs walking at all (the mailbox's record is outside its
    /// trie, so a mailbox is always walked).
    fn summary_key(&self) -> Option<Vec<u8>> {
        match self {
            Probe::UsersRoot => Some(tk::users_root()),
            Probe::Config => Some(tk::config()),
            Probe::User(u) => Some(tk::user(u)),
            _ => None,
        }
    }
}

fn node(key: &[u8], b: &Option<Vec<u8>>) -> anyhow::Result<Node> {
    Ok(match b {
        Some(b) => Node::decode(key, b)?,
        None => Node::default(),
    })
}

/// Entries that differ between two nodes: (key, here, there).
fn differing<'a>(here: &'a Node, there: &'a Node) -> Vec<(Vec<u8>, Option<&'a Entry>, Option<&'a Entry>)> {
    let mut keys: Vec<&Vec<u8>> = here.entries.iter().chain(there.entries.iter()).map(|e| &e.key).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (a, b) = (here.get(k), there.get(k));
            (a != b).then(|| (k.clone(), a, b))
        })
        .collect()
}

fn dec<T: serde::de::DeserializeOwned>(key: &[u8], b: &Option<Vec<u8>>) -> anyhow::Result<Option<T>> {
    b.as_ref()
        .map(|b| postcard::from_bytes(b).with_context(|| format!("record {} does not decode", hex::encode(key))))
        .transpose()
}

fn flags_text(m: &MessageRec) -> String {
    m.flags.iter().collect::<Vec<_>>().join(" ")
}

fn restored(user: &str, mailbox: Id, uid: u32, m: &MessageRec) -> Event {
    Event::MessageRestored {
        user: user.to_string(),
        mailbox,
        uid,
        guid: m.guid,
        blob: m.blob,
        size: m.size,
        internal_date: m.internal_date,
        tz_minutes: m.tz_minutes,
        flags: m.flags.clone(),
    }
}

fn mailbox_restored(user: &str, mb: &MailboxRec, uidnext: u32) -> Event {
    Event::MailboxRestored {
        user: user.to_string(),
        mailbox: mb.id,
        name: mb.name.clone(),
        uidvalidity: mb.uidvalidity,
        uidnext,
        special_use: mb.special_use,
    }
}

/// The comparison's state: what it found and how to repair it.
#[derive(Default)]
struct Walk {
    items: Vec<(Difference, Option<Fix>)>,
    /// Mailbox names by id, for naming differences.
    names: std::collections::HashMap<[u8; 16], String>,
    /// The peer's values are the reference (`Request::from_peer`).
    from_peer: bool,
    /// The first round: its nodes give the messages in all.
    first: bool,
    /// Wide trie nodes are read by eighths.
    eighths: bool,
    /// Mailbox records are compared by [`CORE_HASH`] first.
    cores: bool,
    folders_done: u64,
    folders_total: u64,
    messages_done: u64,
    messages_total: u64,
}

/// Messages under the entries two nodes hold alike.
fn settled(here: &Node, there: &Node) -> u64 {
    here.entries
        .iter()
        .filter(|e| there.get(&e.key) == Some(*e))
        .fold(0u64, |n, e| n.saturating_add(e.count))
}

impl Walk {
    fn found(&mut self, kind: &str, user: Option<&str>, mailbox: Option<Id>, uid: Option<u32>, detail: String, fix: Option<Fix>) {
        let mailbox = mailbox.map(|id| self.names.get(&id.0).cloned().unwrap_or_else(|| id.to_hex()));
        self.items.push((
            Difference {
                kind: kind.into(),
                user: user.map(String::from),
                mailbox,
                uid,
                detail,
                repaired: false,
            },
            fix,
        ));
    }

    /// Progress: the messages in all (first round), and those settled by
    /// equal entries.
    fn count(&mut self, a: &Node, b: &Node) {
        if self.first {
            self.messages_total += a.count().max(b.count());
        }
        self.messages_done += settled(a, b);
    }

    /// Look at one probe's values here and there; the probes below it.
    fn examine(&mut self, p: &Probe, keys: &[Vec<u8>], here: &[Option<Vec<u8>>], there: &[Option<Vec<u8>>]) -> anyhow::Result<Vec<Probe>> {
        let mut next = Vec::new();
        match p {
            Probe::UsersRoot | Probe::Group(_) | Probe::Bucket(_) | Probe::Config => {
                let (a, b) = (node(&keys[0], &here[0])?, node(&keys[0], &there[0])?);
                self.count(&a, &b);
                for (k, _, _) in differing(&a, &b) {
                    next.push(match p {
                        Probe::UsersRoot => Probe::Group(*k.first().context("empty key in the users' root")?),
                        Probe::Group(_) => Probe::Bucket(u16::from_be_bytes(k.as_slice().try_into().context("bucket key is not 2 bytes")?)),
                        Probe::Bucket(_) => Probe::User(String::from_utf8_lossy(&k).into_owned()),
                        _ => Probe::ConfigKey(String::from_utf8_lossy(&k).into_owned()),
                    });
                }
            }
            Probe::ConfigKey(key) => {
                let (a, b) = (&here[0], &there[0]);
                let text = |v: &Option<Vec<u8>>| {
                    v.as_ref()
                        .map(|b| format!("{:?}", String::from_utf8_lossy(b)))
                        .unwrap_or("unset".into())
                };
                let (r, o) = if self.from_peer { (b, a) } else { (a, b) };
                let value = r.as_ref().or(o.as_ref()).map(|v| String::from_utf8_lossy(v).into_owned());
                let fix = value.map(|value| Fix {
                    rank: 4,
                    events: vec![Event::ConfigSet { key: key.clone(), value }],
                    body: None,
                });
                self.found(
                    "config",
                    None,
                    None,
                    None,
                    format!("config {key}: here {}, peer {}", text(a), text(b)),
                    fix,
                );
            }
            Probe::Account(user) => {
                let (ua, ub): (Option<UserRec>, Option<UserRec>) = (dec(&keys[0], &here[0])?, dec(&keys[0], &there[0])?);
                let (ur, uo) = if self.from_peer { (&ub, &ua) } else { (&ua, &ub) };
                let fix = match (ur, uo) {
                    (Some(u), Some(_)) => Some(Event::PasswordChanged {
                        user: user.clone(),
                        password_hash: u.password_hash.clone(),
                    }),
                    (Some(u), None) | (None, Some(u)) => Some(Event::UserCreated {
                        user: user.clone(),
                        password_hash: u.password_hash.clone(),
                    }),
                    (None, None) => None,
                };
                let detail = match (&ua, &ub) {
                    (Some(_), Some(_)) => "password differs".to_string(),
                    (Some(_), None) => "user missing on the peer".to_string(),
                    (None, Some(_)) => "user missing here".to_string(),
                    (None, None) => "account records differ".to_string(),
                };
                let fix = fix.map(|e| Fix {
                    rank: 0,
                    events: vec![e],
                    body: None,
                });
                self.found("account", Some(user), None, None, detail, fix);
            }
            Probe::User(user) => {
                let (a, b) = (node(&keys[0], &here[0])?, node(&keys[0], &there[0])?);
                self.count(&a, &b);
                let folders = |n: &Node| n.entries.iter().filter(|e| e.key.first() == Some(&b'm')).count() as u64;
                let equal = a
                    .entries
                    .iter()
                    .filter(|e| e.key.first() == Some(&b'm') && b.get(&e.key) == Some(*e))
                    .count() as u64;
                self.folders_total += folders(&a) + folders(&b) - equal;
                self.folders_done += equal;
                for (k, ea, eb) in differing(&a, &b) {
                    match k.first() {
                        // The account record is read only when it differs.
                        Some(b'a') => next.push(Probe::Account(user.clone())),
                        Some(b'm') => {
                            let id: [u8; 16] = k[1..].try_into().context("mailbox key is not 17 bytes")?;
                            // The lowest level whose first node could hold
                            // as many messages as either side counts.
                            let n = ea.map_or(0, |e| e.count).max(eb.map_or(0, |e| e.count));
                            let low = (0..ROOT_LEVEL)
                                .find(|k| n < 1u64 << (FANOUT_BITS * (u32::from(*k) + 1)))
                                .unwrap_or(ROOT_LEVEL);
                            next.push(Probe::Mailbox {
                                user: user.clone(),
                                id: Id(id),
                                low,
                            });
                        }
                        Some(b's') => {
                            let name = String::from_utf8_lossy(&k[1..]).into_owned();
                            let here_sub = ea.is_some();
                            let fix = Fix {
                                rank: 2,
                                events: vec![Event::Subscribed {
                                    user: user.clone(),
                                    name: name.clone(),
                                    subscribed: if self.from_peer { eb.is_some() } else { here_sub },
                                }],
                                body: None,
                            };
                            let detail = format!(
                                "subscription {name:?}: {} here, {} on the peer",
                                if here_sub { "subscribed" } else { "not subscribed" },
                                if eb.is_some() { "subscribed" } else { "not subscribed" }
                            );
                            self.found("subscription", Some(user), None, None, detail, Some(fix));
                        }
                        _ => bail!("unknown entry {} in the node of user {user}", hex::encode(&k)),
                    }
                }
            }
            Probe::Mailbox { user, id, low } => {
                self.folders_done += 1;
                let ma: Option<MailboxRec> = dec(&keys[0], &here[0])?;
                if self.cores {
                    // The peer sent its record's hash: the record itself
                    // is read next round only where that differs.
                    if let Some(m) = &ma {
                        self.names.insert(id.0, m.name.clone());
                    }
                    let same = match (&ma, &there[0]) {
                        (Some(m), Some(h)) => mailbox_core_hash(m)[..] == h[..],
                        (None, None) => true,
                        _ => false,
                    };
                    if !same {
                        next.push(Probe::MailboxRecord {
                            user: user.clone(),
                            id: *id,
                        });
                    }
                } else {
                    let mb: Option<MailboxRec> = dec(&keys[0], &there[0])?;
                    self.mailbox_records(user, *id, ma, mb);
                }
                let (ra, rb) = (node(&keys[1], &here[1])?, node(&keys[1], &there[1])?);
                let below = |n: &Option<Vec<u8>>| node(&keys[2], n).map(|n| n.count());
                if keys.len() == 3 && ra != rb && below(&here[2])? == ra.count() && below(&there[2])? == rb.count() {
                    // Every message of both sides is under the first node
                    // of level `low`.
                    let (a, b) = (node(&keys[2], &here[2])?, node(&keys[2], &there[2])?);
                    next.extend(self.trie(user, *id, *low, &a, &b)?);
                } else {
                    next.extend(self.trie(user, *id, ROOT_LEVEL, &ra, &rb)?);
                }
            }
            Probe::MailboxRecord { user, id } => {
                let (ma, mb): (Option<MailboxRec>, Option<MailboxRec>) = (dec(&keys[0], &here[0])?, dec(&keys[0], &there[0])?);
                self.mailbox_records(user, *id, ma, mb);
            }
            Probe::Trie {
                user,
                id,
                level,
                index,
                stage,
            } => match stage {
                Stage::Whole => {
                    let (a, b) = (node(&keys[0], &here[0])?, node(&keys[0], &there[0])?);
                    next.extend(self.trie(user, *id, *level, &a, &b)?);
                }
                Stage::Eighths => {
                    let sums = |v: &Option<Vec<u8>>| {
                        v.as_deref()
                            .map(|b| Node::from_eighths(&keys[0], b))
                            .transpose()
                            .map(|s| s.unwrap_or_default())
                    };
                    let (a, b) = (sums(&here[0])?, sums(&there[0])?);
                    let mut picked = Vec::new();
                    for (e, (x, y)) in a.iter().zip(&b).enumerate() {
                        if x == y {
                            self.messages_done += x.map_or(0, |s| s.1);
                        } else {
                            picked.push(e as u8);
                        }
                    }
                    if !picked.is_empty() {
                        next.push(Probe::Trie {
                            user: user.clone(),
                            id: *id,
                            level: *level,
                            index: *index,
                            stage: Stage::Picked(picked),
                        });
                    }
                }
                Stage::Picked(_) => {
                    // The eighths in order, put back together.
                    let joined = |vals: &[Option<Vec<u8>>]| -> anyhow::Result<Node> {
                        let mut n = Node::default();
                        for (k, v) in keys.iter().zip(vals) {
                            n.entries.extend(node(k, v)?.entries);
                        }
                        Ok(n)
                    };
                    let (a, b) = (joined(here)?, joined(there)?);
                    next.extend(self.trie(user, *id, *level, &a, &b)?);
                }
            },
            Probe::Message { user, id, uid, .. } => {
                let (a, b): (Option<MessageRec>, Option<MessageRec>) = (dec(&keys[0], &here[0])?, dec(&keys[0], &there[0])?);
                let (uid, mailbox) = (Some(*uid), Some(*id));
                self.messages_done += 1;
                let r = if self.from_peer { b.as_ref() } else { a.as_ref() };
                match (&a, &b) {
                    (Some(a), Some(b)) if a.guid != b.guid => {
                        let detail = format!(
                            "uid collision: guid {} here, {} on the peer (left to renumbering)",
                            a.guid.to_hex(),
                            b.guid.to_hex()
                        );
                        self.found("message", Some(user), mailbox, uid, detail, None);
                    }
                    (Some(a), Some(b))
                        if (a.blob, a.size, a.internal_date, a.tz_minutes) == (b.blob, b.size, b.internal_date, b.tz_minutes) =>
                    {
                        let fix = Fix {
                            rank: 3,
                            events: vec![Event::FlagsChanged {
                                user: user.clone(),
                                mailbox: *id,
                                messages: vec![(uid.expect("set"), a.guid)],
                                op: FlagOp::Set,
                                flags: r.unwrap_or(a).flags.clone(),
                            }],
                            body: None,
                        };
                        let detail = format!("flags [{}] here, [{}] on the peer", flags_text(a), flags_text(b));
                        self.found("flags", Some(user), mailbox, uid, detail, Some(fix));
                    }
                    (Some(a), Some(b)) => {
                        let detail = format!(
                            "message differs: body {} ({} bytes) here, {} ({} bytes) on the peer",
                            hex::encode(&a.blob.0[..8]),
                            a.size,
                            hex::encode(&b.blob.0[..8]),
                            b.size
                        );
                        let r = r.unwrap_or(a);
                        let fix = Fix {
                            rank: 3,
                            events: vec![restored(user, *id, uid.expect("set"), r)],
                            body: Some(r.blob),
                        };
                        self.found("message", Some(user), mailbox, uid, detail, Some(fix));
                    }
                    (Some(m), None) | (None, Some(m)) => {
                        let side = if a.is_some() { "on the peer" } else { "here" };
                        let fix = Fix {
                            rank: 3,
                            events: vec![restored(user, *id, uid.expect("set"), m)],
                            body: Some(m.blob),
                        };
                        let detail = format!("message missing {side} (guid {}, {} bytes)", m.guid.to_hex(), m.size);
                        self.found("message", Some(user), mailbox, uid, detail, Some(fix));
                    }
                    (None, None) => {}
                }
            }
        }
        Ok(next)
    }

    /// Compare a mailbox's records here and on the peer (either may be
    /// missing) and name what differs, with its repair.
    fn mailbox_records(&mut self, user: &str, id: Id, ma: Option<MailboxRec>, mb: Option<MailboxRec>) {
        if let Some(m) = ma.as_ref().or(mb.as_ref()) {
            self.names.insert(id.0, m.name.clone());
        }
        match (&ma, &mb) {
            (Some(a), Some(b)) => {
                let mut what = Vec::new();
                if a.name != b.name {
                    what.push(format!("name {:?} here, {:?} on the peer", a.name, b.name));
                }
                if a.uidvalidity != b.uidvalidity {
                    what.push(format!("uidvalidity {} here, {} on the peer", a.uidvalidity, b.uidvalidity));
                }
                if a.uidnext != b.uidnext {
                    what.push(format!("uidnext {} here, {} on the peer", a.uidnext, b.uidnext));
                }
                if a.special_use != b.special_use {
                    what.push(format!("special use {:?} here, {:?} on the peer", a.special_use, b.special_use));
                }
                if !what.is_empty() {
                    // UIDVALIDITY is fixed at creation: a mailbox id
                    // with two of them is not repaired.
                    let r = if self.from_peer { b } else { a };
                    let fix = (a.uidvalidity == b.uidvalidity).then(|| Fix {
                        rank: 1,
                        events: vec![mailbox_restored(user, r, a.uidnext.max(b.uidnext))],
                        body: None,
                    });
                    self.found("mailbox", Some(user), Some(id), None, what.join("; "), fix);
                }
            }
            (Some(m), None) | (None, Some(m)) => {
                let side = if ma.is_some() { "on the peer" } else { "here" };
                let fix = Fix {
                    rank: 1,
                    events: vec![mailbox_restored(user, m, m.uidnext)],
                    body: None,
                };
                self.found("mailbox", Some(user), Some(id), None, format!("mailbox missing {side}"), Some(fix));
            }
            (None, None) => {}
        }
    }

    /// The probes below two versions of a trie node at `level`: the
    /// messages (at level 0) or the child nodes whose entries differ.
    fn trie(&mut self, user: &str, id: Id, level: u8, a: &Node, b: &Node) -> anyhow::Result<Vec<Probe>> {
        self.count(a, b);
        differing(a, b)
            .into_iter()
            .map(|(k, ea, eb)| {
                let n = u32::from_be_bytes(k.as_slice().try_into().context("trie key is not 4 bytes")?);
                let under = ea.map_or(0, |e| e.count).max(eb.map_or(0, |e| e.count));
                Ok(if level == 0 {
                    Probe::Message {
                        user: user.to_string(),
                        id,
                        uid: n,
                        peer: eb.is_some(),
                    }
                } else {
                    Probe::Trie {
                        user: user.to_string(),
                        id,
                        level: level - 1,
                        index: n,
                        stage: if self.eighths && under > EIGHTHS_ABOVE {
                            Stage::Eighths
                        } else {
                            Stage::Whole
                        },
                    }
                })
            })
            .collect()
    }
}

/// Dial the peer, compare, and (if asked) repair, as a command asked;
/// the result shows in `tandem status`.
pub async fn run(store: &Store, mirror: &Arc<Mirror>, dialer: &Dialer, req: &Request) -> anyhow::Result<Report> {
    recorded(store, mirror, dialer, req, "command").await
}

/// [`exchange`], one at a time, with its progress and result kept in
/// [`Mirror::repair`] for status and metrics.
async fn recorded(store: &Store, mirror: &Arc<Mirror>, dialer: &Dialer, req: &Request, trigger: &str) -> anyhow::Result<Report> {
    let _one = mirror.repair.one_at_a_time.lock().await;
    recorded_in_turn(store, mirror, dialer, req, trigger).await
}

/// [`recorded`] for a caller that holds the turn (`one_at_a_time`).
async fn recorded_in_turn(store: &Store, mirror: &Arc<Mirror>, dialer: &Dialer, req: &Request, trigger: &str) -> anyhow::Result<Report> {
    let sched = &mirror.repair;
    let started_ms = super::now_ms();
    sched.with(|s| {
        s.running = Some(Progress {
            phase: "comparing".into(),
            peer: req.peer.clone(),
            ..Default::default()
        })
    });
    let started = Instant::now();
    let r = exchange(store, mirror, dialer, req).await;
    let mut run = LastRun {
        trigger: trigger.into(),
        peer: req.peer.clone(),
        repair: req.repair,
        started_ms,
        seconds: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    match &r {
        Ok(rep) => {
            run.compared = rep.compared;
            run.folders_compared = rep.folders_compared;
            run.folders_repaired = rep.folders_repaired;
            run.differences = rep.differences;
            run.repaired = rep.repaired;
            run.messages_restored = rep.messages_restored;
            run.bytes = rep.bytes_sent + rep.bytes_received;
        }
        Err(e) => run.error = Some(format!("{e:#}")),
    }
    sched.record(run);
    r
}

/// The scheduled repair (`mirror.repair_interval`): every interval, if this
/// node is the master, compare with each peer and repair what differs.
/// The first run is one interval after start.
pub async fn scheduled(
    store: Store,
    mirror: Arc<Mirror>,
    cfg: crate::config::MirrorConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let every = cfg.repair_interval;
    mirror.repair.with(|s| s.interval_secs = every.as_secs());
    if every.is_zero() || cfg.peers.is_empty() {
        return;
    }
    loop {
        let master = super::role::is_master(&store.views(), store.node_id(), cfg.mode).unwrap_or(false);
        mirror.repair.with(|s| {
            s.scheduled_here = master;
            s.next_ms = Some(super::now_ms() + every.as_millis() as u64);
        });
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        // The role may have changed while waiting.
        match super::role::is_master(&store.views(), store.node_id(), cfg.mode) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "scheduled repair: the role does not read");
                continue;
            }
        }
        let Some(dialer) = mirror.resync.get().cloned() else {
            continue;
        };
        for peer in &cfg.peers {
            let req = Request {
                peer: peer.to_string(),
                repair: true,
                ..Default::default()
            };
            let r = tokio::select! {
                r = recorded(&store, &mirror, &dialer, &req, "scheduled") => r,
                _ = shutdown.changed() => return,
            };
            match r {
                Ok(r) => tracing::info!(
                    peer = %peer,
                    differences = r.differences,
                    repaired = r.repaired,
                    seconds = r.seconds,
                    "scheduled repair done"
                ),
                Err(e) => tracing::warn!(peer = %peer, error = %format!("{e:#}"), "scheduled repair failed"),
            }
        }
    }
}

/// The socket address of a peer's mirror address as written.
async fn resolve(peer: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(peer)
        .await
        .with_context(|| format!("resolving the peer address {peer}"))?
        .next()
        .with_context(|| format!("the peer address {peer} resolves to nothing"))
}

/// Dial `addr` for a resync exchange and open it (`ResyncHello`). The
/// endpoint must live as long as the connection.
async fn open<'m>(
    store: &Store,
    mirror: &'m Mirror,
    dialer: &Dialer,
    addr: SocketAddr,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection, Peer<'m>)> {
    let (ep, conn, send, recv) = super::quic::dial_resync(addr, &dialer.data_dir, &dialer.secret, mirror).await?;
    let mut peer = Peer {
        send,
        recv,
        mirror,
        next_id: 0,
        sent: 0,
        received: 0,
        carried: Carried::default(),
        round_trips: 0,
    };
    write_frame(
        &mut peer.send,
        &Frame::ResyncHello {
            node_id: store.node_id().to_string(),
        },
        &mut peer.sent,
    )
    .await?;
    // The greeting counts with the heads: what opens the exchange.
    peer.carried.heads += peer.sent;
    Ok((ep, conn, peer))
}

/// A log base as the bases read carries it: `(origin, seq, hash, hlc)`.
pub type WireBase = (u64, u64, [u8; 32], u64);

/// The peer's log bases (a heads read with [`BASES_KEY`]); `None` from a
/// node that does not serve them (an older one answers with its heads).
async fn read_bases(peer: &mut impl Source) -> anyhow::Result<Option<Vec<WireBase>>> {
    let got = peer.read(HEADS, &[BASES_KEY.to_vec()]).await?;
    match got.first().and_then(|v| v.as_deref()).and_then(|v| v.strip_prefix(BASES_ANSWER)) {
        Some(b) => Ok(Some(postcard::from_bytes(b).context("the peer's log bases do not decode")?)),
        None => Ok(None),
    }
}

/// Read `peer`'s log bases over a short resync exchange (it changes
/// nothing on either node): what a join by trees would take, and whether
/// this node needs one (`join`).
pub async fn peer_bases(store: &Store, mirror: &Mirror, dialer: &Dialer, peer: &str) -> anyhow::Result<Option<Vec<WireBase>>> {
    let addr = resolve(peer).await?;
    let (_ep, conn, mut p) = open(store, mirror, dialer, addr).await?;
    let r = read_bases(&mut p).await;
    let _ = p.send.finish();
    conn.close(0u32.into(), b"bases read");
    r
}

/// Dial the peer, compare, and (if asked) repair.
async fn exchange(store: &Store, mirror: &Arc<Mirror>, dialer: &Dialer, req: &Request) -> anyhow::Result<Report> {
    let sched = &mirror.repair;
    let started = Instant::now();
    let addr = resolve(&req.peer).await?;
    let user = req.user.as_deref().map(crate::mutate::normalize_user).transpose()?;
    let folder = req.folder.as_deref().map(crate::mutate::normalize_mailbox).transpose()?;
    let views = store.views();
    // Where the comparison starts, and what it covers here.
    let (start, compared) = match (&user, &folder) {
        (None, _) => (vec![Probe::UsersRoot, Probe::Config], merkle::node_root(&views)?.1),
        (Some(u), None) => {
            let n = merkle::read_node(&views, &tk::user(u))?.map(|n| n.count()).unwrap_or(0);
            (vec![Probe::User(u.clone())], n)
        }
        (Some(u), Some(f)) => {
            let mb = views
                .mailbox_by_name(u, f)?
                .with_context(|| format!("no mailbox {f} of {u} here"))?;
            let n = merkle::read_node(&views, &tk::mailbox_node(mb.id, ROOT_LEVEL, 0))?
                .map(|n| n.count())
                .unwrap_or(0);
            (
                vec![Probe::Mailbox {
                    user: u.clone(),
                    id: mb.id,
                    low: ROOT_LEVEL,
                }],
                n,
            )
        }
    };
    let heads_keys = [Vec::new(), DIGESTS_KEY.to_vec(), EIGHTHS_KEY.to_vec(), CORES_KEY.to_vec()];
    let summary_keys: Vec<Vec<u8>> = start.iter().filter_map(Probe::summary_key).collect();
    // On a kept connection what the peer serves is known: the summaries of
    // the starts are read with the heads, so a no-change check is one round
    // trip. They count only if the heads are not read again.
    let (mut ep, mut conn, mut peer, known_reads) = match sched.take_kept(addr) {
        Some(k) => (
            k.ep,
            k.conn,
            Peer {
                send: k.send,
                recv: k.recv,
                mirror,
                next_id: k.next_id,
                sent: 0,
                received: 0,
                carried: Carried::default(),
                round_trips: 0,
            },
            Some(k.reads),
        ),
        None => {
            let (ep, conn, peer) = open(store, mirror, dialer, addr).await?;
            (ep, conn, peer, None)
        }
    };
    let mut kept = known_reads.is_some();
    // A kept connection may have ended with the peer's process: the first
    // read then fails, and one fresh dial follows.
    let with_summaries = known_reads.is_some_and(|r| r.digests) && !summary_keys.is_empty();
    let mut asked = vec![(HEADS, heads_keys.to_vec())];
    if with_summaries {
        asked.push((SUMMARY, summary_keys.clone()));
    }
    let mut summaries = None;
    let mut first = match peer.read_all(&asked).await {
        Ok(mut got) => {
            if with_summaries {
                summaries = got.pop();
            }
            got.pop()
        }
        Err(e) if kept => {
            tracing::debug!(error = %format!("{e:#}"), "a kept resync connection to {addr} failed; dialing again");
            conn.close(0u32.into(), b"resync redial");
            (ep, conn, peer) = open(store, mirror, dialer, addr).await?;
            kept = false;
            None
        }
        Err(e) => return Err(e),
    };
    // Differences the logs still in flight will explain are not damage:
    // a repair waits until both nodes hold the same log heads, and refuses
    // to guess (it could bring back a message whose expunge is on its way).
    // The same read asks whether the peer serves node digests (an older
    // node answers that key with its heads too).
    let (in_step, peer_heads, reads) = async {
        let deadline = Instant::now() + STEP_WAIT;
        loop {
            let got = match first.take() {
                Some(got) => got,
                None => {
                    summaries = None;
                    peer.read(HEADS, &heads_keys).await?
                }
            };
            let theirs: Vec<(u64, u64)> = match got.first() {
                Some(Some(b)) => postcard::from_bytes(b).context("the peer's log heads do not decode")?,
                _ => bail!("the peer did not send its log heads"),
            };
            let digests = got.get(1).and_then(|v| v.as_deref()) == Some(DIGESTS_ANSWER);
            let reads = Reads {
                digests,
                eighths: digests && got.get(2).and_then(|v| v.as_deref()) == Some(EIGHTHS_ANSWER),
                cores: digests && got.get(3).and_then(|v| v.as_deref()) == Some(CORES_ANSWER),
            };
            if theirs == heads(store) {
                return Ok::<_, anyhow::Error>((true, theirs, reads));
            }
            // A node joining by trees takes the peer's state as it is.
            if !req.repair || req.from_peer || Instant::now() > deadline {
                return Ok((false, theirs, reads));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    .await?;
    if req.repair && !in_step && !req.from_peer {
        bail!(
            "the logs here and on {} are not in step after {}s (is the mirror link up and caught up?); \
             not repairing what they may still explain (tandem verify compares anyway)",
            req.peer,
            STEP_WAIT.as_secs()
        );
    }
    let summaries = summaries.filter(|_| reads.digests);
    let mut walk = compare(store, &mut peer, start, req.from_peer, reads, sched, summaries).await?;
    let mut report = Report {
        peer: req.peer.clone(),
        compared,
        logs_in_step: in_step,
        ..Default::default()
    };
    // Bodies: re-hash every body held here; a bad or missing one is read
    // from the peer.
    let mut restored_bodies: Vec<(BlobHash, Vec<u8>)> = Vec::new();
    if req.full {
        sched.progress(|p| p.phase = "scrubbing".into());
        let st = store.clone();
        let (checked, bytes, bad) = tokio::task::spawn_blocking(move || scrub(&st)).await??;
        report.bodies_checked = checked;
        report.body_bytes_checked = bytes;
        report.bodies_bad = bad.len() as u64;
        let got = read_bodies(&mut peer, &bad.iter().map(|b| (*b, 0)).collect::<Vec<_>>()).await?;
        for h in bad {
            let body = got.iter().find(|(g, _)| *g == h).map(|(_, b)| b.clone());
            let repaired = req.repair && body.is_some();
            walk.found(
                "body",
                None,
                None,
                None,
                format!(
                    "body {} does not match its hash here{}",
                    hex::encode(h.0),
                    if body.is_some() { "" } else { " (the peer lacks it too)" }
                ),
                None,
            );
            if let Some(b) = body {
                if repaired {
                    restored_bodies.push((h, b));
                    walk.items.last_mut().expect("just pushed").0.repaired = true;
                }
            }
        }
    }
    if req.repair {
        report.messages_restored = repair(store, &mut peer, &mut walk, restored_bodies, sched).await?;
    }
    // A join by trees that repaired everything reflects the peer's log up
    // to the heads it read before the walk: the mirror stores those
    // entries when they come, without applying them over the joined state
    // again (their history would otherwise leave marks for UIDs appended
    // and expunged long ago).
    if req.repair && req.from_peer && walk.items.iter().all(|i| i.0.repaired) {
        let own = store.wal().local_origin().0;
        let marks: Vec<(u64, u64)> = peer_heads.into_iter().filter(|(o, _)| *o != own).collect();
        // Where the peer's log is pruned past what this node holds, its
        // entries after the base are all the mirror can send: this log
        // takes the peer's base as its start (the joined views already
        // hold what the pruned entries made), so they chain here.
        //
        // The marks go first: once a base is adopted, the peer's link is
        // no longer refused and may deliver entries up to the marks at
        // once; they must find the marks written and be stored, not
        // applied over the joined state again.
        let m = marks.clone();
        store
            .run(move |txn, cfs| {
                for (origin, seq) in &m {
                    let k = joined_key(*origin);
                    let held = txn
                        .get(cfs.views, &k)?
                        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                        .map_or(0, u64::from_be_bytes);
                    if *seq > held {
                        txn.put(cfs.views, &k, &seq.to_be_bytes());
                    }
                }
                Ok(())
            })
            .await?;
        if let Some(bases) = read_bases(&mut peer).await? {
            for (origin, seq, hash, hlc) in bases {
                if origin == own || store.wal().heads().get(wal::Origin(origin)) >= seq {
                    continue;
                }
                let mark = marks.iter().find(|(o, _)| *o == origin).map_or(0, |(_, s)| *s);
                if seq > mark {
                    bail!(
                        "the peer pruned origin {origin:016x} up to seq {seq} during the join, past the seq {mark} it held when \
                         the join read its state; run the join again"
                    );
                }
                let base = wal::Base {
                    seq,
                    hash,
                    hlc,
                    adopted: 0,
                };
                let w = store.wal().clone();
                tokio::task::spawn_blocking(move || w.adopt_base(wal::Origin(origin), base)).await??;
                tracing::info!(origin = %format!("{origin:016x}"), seq, "joined by trees: this log of the origin starts after the peer's base");
            }
        }
    }
    report.folders_compared = walk.folders_done;
    let mut folders: Vec<(&Option<String>, &Option<String>)> = walk
        .items
        .iter()
        .filter(|i| i.0.repaired && i.0.mailbox.is_some())
        .map(|i| (&i.0.user, &i.0.mailbox))
        .collect();
    folders.sort();
    folders.dedup();
    report.folders_repaired = folders.len() as u64;
    report.connection_kept = kept;
    report.differences = walk.items.len() as u64;
    report.repaired = walk.items.iter().filter(|i| i.0.repaired).count() as u64;
    report.items = walk.items.into_iter().map(|i| i.0).collect();
    report.bytes_sent = peer.sent;
    report.bytes_received = peer.received;
    report.carried = peer.carried;
    report.round_trips = peer.round_trips;
    Schedule::keep(
        mirror,
        addr,
        Kept {
            ep,
            conn,
            send: peer.send,
            recv: peer.recv,
            next_id: peer.next_id,
            reads,
            generation: 0,
        },
    );
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        peer = %req.peer,
        compared = report.compared,
        differences = report.differences,
        repaired = report.repaired,
        bytes_sent = report.bytes_sent,
        "resync compared"
    );
    Ok(report)
}

/// Walk both trees top-down from `start`, one read of the other side per
/// level. With digests (the peer serves families 3 and 4), the starts'
/// full summaries are read first and only those that differ are walked,
/// by node digests (and wide trie nodes by eighths, where the peer serves
/// them); if that walk finds nothing although a summary differed (two
/// children alike in their first 8 hash bytes), it is walked again by
/// whole nodes. `summaries`: the peer's summaries of the starts, if read
/// already (with its heads, on a kept connection).
async fn compare(
    store: &Store,
    src: &mut impl Source,
    start: Vec<Probe>,
    from_peer: bool,
    reads: Reads,
    sched: &Schedule,
    summaries: Option<Vec<Option<Vec<u8>>>>,
) -> anyhow::Result<Walk> {
    let mut walk = Walk {
        from_peer,
        ..Default::default()
    };
    if !reads.digests {
        walk_from(store, src, &mut walk, start, Reads::WHOLE, sched).await?;
        return Ok(walk);
    }
    let keys: Vec<Vec<u8>> = start.iter().filter_map(Probe::summary_key).collect();
    let there = match summaries {
        Some(there) => there,
        None => src.read(SUMMARY, &keys).await?,
    };
    if there.len() != keys.len() {
        bail!("{} summaries for {} keys", there.len(), keys.len());
    }
    let views = store.views();
    let mut differ = Vec::new();
    // Messages under the starts that differ (a walk by whole nodes counts
    // them again).
    let mut walked = 0u64;
    let mut at = 0;
    for p in start {
        let Some(k) = p.summary_key() else {
            differ.push(p);
            continue;
        };
        let here = views.vget(&k)?;
        let here = here.as_deref().map(|b| merkle::stored_summary(&k, b)).transpose()?;
        let theirs = there[at]
            .as_deref()
            .map(|b| merkle::stored_summary(&k, b))
            .transpose()
            .context("a summary from the peer")?;
        at += 1;
        let (ch, ct) = (here.map_or(0, |s| s.1), theirs.map_or(0, |s| s.1));
        walk.messages_total += ch.max(ct);
        if here == theirs {
            walk.messages_done += ch;
        } else {
            walked += ch.max(ct);
            differ.push(p);
        }
    }
    drop(views);
    if differ.is_empty() {
        return Ok(walk);
    }
    let (total, done) = (walk.messages_total, walk.messages_done);
    walk_from(store, src, &mut walk, differ.clone(), reads, sched).await?;
    if walk.items.is_empty() {
        walk = Walk {
            from_peer,
            messages_total: total - walked,
            messages_done: done,
            ..Default::default()
        };
        walk_from(store, src, &mut walk, differ, Reads::WHOLE, sched).await?;
    }
    Ok(walk)
}

/// A node read for comparison in stored form: whole, or with its entries'
/// hashes cut as a digest's are.
fn cut(key: &[u8], b: Option<Vec<u8>>, digest: bool) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(match b {
        Some(b) if digest => Some(Node::decode(key, &b)?.truncated().encode(0)),
        b => b,
    })
}

/// The walk itself, level by level from `probes`.
async fn walk_from(
    store: &Store,
    src: &mut impl Source,
    walk: &mut Walk,
    mut probes: Vec<Probe>,
    reads: Reads,
    sched: &Schedule,
) -> anyhow::Result<()> {
    let views = store.views();
    let digests = reads.digests;
    walk.eighths = reads.eighths;
    walk.cores = reads.cores;
    let mut rounds = 0;
    while !probes.is_empty() {
        // Starts settled by their summaries were counted then.
        walk.first = rounds == 0 && (!digests || probes.iter().all(|p| p.summary_key().is_none()));
        rounds += 1;
        if rounds > MAX_ROUNDS {
            bail!("the comparison did not reach the leaves in {MAX_ROUNDS} rounds");
        }
        let keys: Vec<Vec<(Read, Vec<u8>)>> = probes.iter().map(|p| p.read_keys(reads.cores)).collect();
        let flat: Vec<&(Read, Vec<u8>)> = keys.iter().flatten().collect();
        // Every kind of key in one round trip: records, nodes (as digests
        // or whole), eighths summaries and eighths.
        let kinds = [
            (Read::Record, VIEWS),
            (Read::Node, if digests { DIGEST } else { VIEWS }),
            (Read::Eighths, EIGHTHS),
            (Read::Eighth, EIGHTH),
            (Read::Core, if reads.cores { CORE } else { VIEWS }),
            (Read::CoreHash, CORE_HASH),
        ];
        let asked: Vec<(u8, Vec<Vec<u8>>)> = kinds
            .iter()
            .map(|(r, family)| (*family, flat.iter().filter(|(x, _)| x == r).map(|(_, k)| k.clone()).collect()))
            .collect();
        // This node's values are read while the peer reads its own.
        let v2 = views.clone();
        let f2: Vec<(Read, Vec<u8>)> = flat.iter().map(|x| (*x).clone()).collect();
        let here = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(f2.len());
            for chunk in f2.chunks(PREFETCH_KEYS) {
                let v = Prefetched::new(&v2, chunk.iter().map(|(r, k)| r.stored_key(k).to_vec()))?;
                for (r, k) in chunk {
                    out.push(ours(&v, *r, k, digests)?);
                }
            }
            anyhow::Ok(out)
        });
        let got = src.read_all(&asked).await?;
        if got.len() != asked.len() || got.iter().zip(&asked).any(|(v, (_, k))| v.len() != k.len()) {
            bail!("the peer's values do not match the {} keys asked", flat.len());
        }
        let mut got: Vec<std::vec::IntoIter<Option<Vec<u8>>>> = got.into_iter().map(Vec::into_iter).collect();
        let mut there = Vec::with_capacity(flat.len());
        for (r, k) in &flat {
            if *r == Read::Local {
                there.push(None);
                continue;
            }
            let at = kinds.iter().position(|(x, _)| x == r).expect("every other kind is read");
            let v = got[at].next().flatten();
            there.push(match r {
                Read::Node if digests => v
                    .map(|b| Node::from_digest(k, &b).map(|n| n.encode(0)))
                    .transpose()
                    .context("a node digest from the peer")?,
                Read::Eighth => v
                    .map(|b| Node::from_digest(k, &b).map(|n| n.encode(0)))
                    .transpose()
                    .context("an eighth's digest from the peer")?,
                _ => v,
            });
        }
        let here = here.await??;
        let mut next = Vec::new();
        let mut at = 0;
        for (p, k) in probes.iter().zip(&keys) {
            let n = k.len();
            let k: Vec<Vec<u8>> = k.iter().map(|(_, k)| k.clone()).collect();
            next.extend(walk.examine(p, &k, &here[at..at + n], &there[at..at + n])?);
            at += n;
        }
        probes = next;
        sched.progress(|p| {
            p.folders_done = walk.folders_done;
            p.folders_total = walk.folders_total;
            p.messages_done = walk.messages_done;
            p.messages_total = walk.messages_total.max(walk.messages_done);
        });
    }
    Ok(())
}

/// This node's value of a key a probe reads, in the form the peer's
/// answer is compared in: records and whole nodes as stored, nodes read
/// as digests and eighths with their hashes cut ([`cut`]), eighths
/// summaries as the peer sends them.
fn ours(v: &impl ViewRead, r: Read, k: &[u8], digests: bool) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(match r {
        Read::Record | Read::Core | Read::CoreHash | Read::Local => v.vget(k)?,
        Read::Node => cut(k, v.vget(k)?, digests)?,
        Read::Eighths => v.vget(k)?.map(|b| Node::decode(k, &b)?.eighths(k)).transpose()?,
        Read::Eighth => {
            let (e, node_key) = k.split_last().context("an eighth's key is empty")?;
            v.vget(node_key)?
                .map(|b| Node::decode(node_key, &b).map(|n| n.eighth(*e).truncated().encode(0)))
                .transpose()?
        }
    })
}

/// Read bodies from the peer, in reads of bounded size; only those whose
/// bytes match their hash are returned.
async fn read_bodies(peer: &mut impl Source, want: &[(BlobHash, u64)]) -> anyhow::Result<Vec<(BlobHash, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut chunk: Vec<BlobHash> = Vec::new();
    let mut bytes = 0u64;
    let mut chunks = Vec::new();
    for (h, size) in want {
        if !chunk.is_empty() && (bytes + size > BODY_READ_BYTES || chunk.len() >= 256) {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        chunk.push(*h);
        bytes += size;
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    for c in chunks {
        let keys: Vec<Vec<u8>> = c.iter().map(|h| h.0.to_vec()).collect();
        for (h, b) in c.into_iter().zip(peer.read(1, &keys).await?) {
            if let Some(b) = b {
                if BlobHash::of(&b) == h {
                    out.push((h, b));
                } else {
                    tracing::warn!(body = %hex::encode(h.0), "the peer's copy of a body does not match its hash either");
                }
            }
        }
    }
    Ok(out)
}

/// Re-hash every body this node holds a reference count for, a page at a
/// time with several reads in flight: (checked, their bytes, bad or
/// missing in hash order).
fn scrub(store: &Store) -> anyhow::Result<(u64, u64, Vec<BlobHash>)> {
    scrub_paged(store, SCRUB_PAGE)
}

fn scrub_paged(store: &Store, page_size: usize) -> anyhow::Result<(u64, u64, Vec<BlobHash>)> {
    let (mut checked, mut bytes) = (0u64, 0u64);
    let mut bad = Vec::new();
    let mut start = b"R".to_vec();
    loop {
        // A page of the bodies referenced, in hash order.
        let mut page: Vec<BlobHash> = Vec::with_capacity(page_size);
        let mut last = None;
        store.wal().scan_from_each(store.cfs().views, b"R", &start, &mut |k, v| {
            if page.len() == page_size {
                return false;
            }
            last = Some(k.to_vec());
            // A body no message references any more is not needed.
            if let (Ok(h), false) = (<[u8; 32]>::try_from(&k[1..]), v.iter().all(|b| *b == 0)) {
                page.push(BlobHash(h));
            }
            true
        })?;
        let Some(mut last) = last else { break };
        let (n, b, mut page_bad) = scrub_page(store, &page)?;
        checked += n;
        bytes += b;
        bad.append(&mut page_bad);
        // On past the page's last key.
        last.push(0);
        start = last;
    }
    bad.sort_by_key(|h| h.0);
    Ok((checked, bytes, bad))
}

/// Bodies named per page of a scrub.
const SCRUB_PAGE: usize = 4096;

/// Reads a scrub keeps in flight on the disk: each reader holds one body at
/// a time, so memory stays at this many bodies.
const SCRUB_READERS: usize = 4;

/// Re-read and hash the bodies of `page` with [`SCRUB_READERS`] readers
/// taking them in order: (checked, bytes, bad or missing).
fn scrub_page(store: &Store, page: &[BlobHash]) -> anyhow::Result<(u64, u64, Vec<BlobHash>)> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let read = || -> anyhow::Result<(u64, u64, Vec<BlobHash>)> {
        let (mut n, mut bytes, mut bad) = (0, 0, Vec::new());
        while let Some(h) = page.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            n += 1;
            match store.blob(h)? {
                Some(b) => {
                    bytes += b.len() as u64;
                    if BlobHash::of(&b) != *h {
                        bad.push(*h);
                    }
                }
                None => bad.push(*h),
            }
        }
        Ok((n, bytes, bad))
    };
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..SCRUB_READERS).map(|_| s.spawn(read)).collect();
        let mut all = (0, 0, Vec::new());
        for r in readers {
            let (n, b, mut bad) = r.join().map_err(|_| anyhow::anyhow!("a scrub reader panicked"))??;
            all.0 += n;
            all.1 += b;
            all.2.append(&mut bad);
        }
        Ok(all)
    })
}

/// Repairs appended in one transaction (with the bodies they need, read
/// from the peer for that transaction only).
const REPAIR_CHUNK: usize = 512;

/// Append the repairs here, with the bodies they need, in transactions of
/// at most [`REPAIR_CHUNK`] differences, in rank order (accounts, then
/// mailboxes, subscriptions, messages, configuration), so a store of any
/// size is restored in bounded memory. `bodies` (re-read by a scrub) go
/// with the first. Returns the `MessageRestored` events appended.
async fn repair(
    store: &Store,
    peer: &mut impl Source,
    walk: &mut Walk,
    mut bodies: Vec<(BlobHash, Vec<u8>)>,
    sched: &Schedule,
) -> anyhow::Result<u64> {
    let mut order: Vec<usize> = (0..walk.items.len()).filter(|i| walk.items[*i].1.is_some()).collect();
    order.sort_by_key(|i| walk.items[*i].1.as_ref().map(|f| f.rank));
    let total = order.len() as u64;
    sched.progress(|p| {
        p.phase = "repairing".into();
        p.messages_done = 0;
        p.messages_total = total;
    });
    let mut restored_messages = 0u64;
    let mut done_so_far = 0u64;
    for chunk in order.chunks(REPAIR_CHUNK) {
        // Bodies these repairs reference that this node lacks come from
        // the peer: the body itself, not its reference count (a count can
        // outlive a lost body).
        let mut need: Vec<(BlobHash, u64)> = Vec::new();
        for i in chunk {
            if let Some(Fix { body: Some(h), events, .. }) = &walk.items[*i].1 {
                if !need.iter().any(|n| n.0 == *h) && !bodies.iter().any(|b| b.0 == *h) && store.blob(h)?.is_none() {
                    let size = events
                        .iter()
                        .map(|e| match e {
                            Event::MessageRestored { size, .. } => *size,
                            _ => 0,
                        })
                        .sum();
                    need.push((*h, size));
                }
            }
        }
        bodies.extend(read_bodies(peer, &need).await?);
        let mut events = Vec::new();
        let mut done = Vec::new();
        let have: std::collections::HashSet<[u8; 32]> = bodies.iter().map(|b| b.0 .0).collect();
        for i in chunk {
            let fix = walk.items[*i].1.as_ref().expect("filtered");
            if let Some(h) = fix.body {
                if !have.contains(&h.0) && store.blob(&h)?.is_none() {
                    continue; // neither side has the body: reported, not repaired
                }
            }
            restored_messages += fix.events.iter().filter(|e| matches!(e, Event::MessageRestored { .. })).count() as u64;
            events.extend(fix.events.iter().cloned());
            done.push(*i);
        }
        let bodies = std::mem::take(&mut bodies);
        if events.is_empty() && bodies.is_empty() {
            continue;
        }
        store
            .run(move |txn, cfs| {
                for (h, b) in &bodies {
                    txn.put(cfs.blobs, &h.0, b);
                }
                for e in events {
                    crate::mutate::emit(txn, cfs, e)?;
                }
                Ok(())
            })
            .await?;
        for i in done {
            walk.items[i].0.repaired = true;
        }
        done_so_far += chunk.len() as u64;
        sched.progress(|p| p.messages_done = done_so_far);
    }
    // Bodies a scrub re-read, when there was nothing else to repair.
    if !bodies.is_empty() {
        store
            .run(move |txn, cfs| {
                for (h, b) in &bodies {
                    txn.put(cfs.blobs, &h.0, b);
                }
                Ok(())
            })
            .await?;
    }
    Ok(restored_messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Flags;
    use crate::mutate::{self, NewMessage};
    use crate::store::wal_options;

    const U: &str = "u@example.org";

    /// The other side, read straight from another store.
    struct Local(Store);

    impl Source for Local {
        async fn read_all(&mut self, reads: &[(u8, Vec<Vec<u8>>)]) -> anyhow::Result<Vec<Vec<Option<Vec<u8>>>>> {
            let v = self.0.views();
            reads
                .iter()
                .map(|(family, keys)| keys.iter().map(|k| answer(&self.0, &v, *family, k)).collect())
                .collect()
        }
    }

    /// The other side as [`Local`], counting the bytes of the frames a
    /// peer link would carry (as [`Peer`] encodes them), per round.
    struct Counted {
        inner: Local,
        next_id: u64,
        rounds: Vec<(u64, u64)>,
        carried: Carried,
    }

    impl Source for Counted {
        async fn read_all(&mut self, reads: &[(u8, Vec<Vec<u8>>)]) -> anyhow::Result<Vec<Vec<Option<Vec<u8>>>>> {
            let values = self.inner.read_all(reads).await?;
            let (mut sent, mut received) = (0u64, 0u64);
            for ((family, keys), values) in reads.iter().zip(&values) {
                for (k, v) in keys.chunks(MAX_KEYS).zip(values.chunks(MAX_KEYS)) {
                    self.next_id += 1;
                    let (id, family) = (self.next_id, *family);
                    let asked = Frame::Read {
                        id,
                        family,
                        keys: k.to_vec(),
                    }
                    .encode()
                    .len() as u64;
                    let answer = v.iter().map(|v| v.clone().map(serde_bytes::ByteBuf::from)).collect();
                    let answered = Frame::Values { id, values: answer }.encode().len() as u64;
                    self.carried.count(family, k, v, asked, answered);
                    sent += asked;
                    received += answered;
                }
            }
            if sent > 0 {
                self.rounds.push((sent, received));
            }
            Ok(values)
        }
    }

    impl Counted {
        fn total(&self) -> u64 {
            self.rounds.iter().map(|(s, r)| s + r).sum()
        }
    }

    /// `users` users with `msgs` messages each in `a`, mirrored into `b`.
    fn populate(a: &Store, b: &Store, users: usize, msgs: usize) {
        let all: Vec<usize> = (0..users).collect();
        for chunk in all.chunks(250) {
            let chunk = chunk.to_vec();
            a.run_blocking(move |t, c| {
                for u in chunk {
                    let user = format!("user{u}@example.org");
                    mutate::create_user(t, c, &user, "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(), 1_700_000_000)?;
                    for i in 0..msgs {
                        let flags = if i % 3 == 0 { Flags::new(["\\Seen"]) } else { Flags::default() };
                        let body = format!("From: s{i}@example.net\r\nSubject: {i} of {u}\r\n\r\nbody {i} of user {u}\r\n");
                        let m = NewMessage::new(body.into_bytes(), flags, 1_700_000_000 + i as i64);
                        mutate::append(t, c, &user, "INBOX", &m)?;
                    }
                }
                Ok(())
            })
            .unwrap();
        }
        mirror(a, b);
    }

    /// `n` differences on `b` behind its log's back, each in another user:
    /// every other one an expunge, the others a flag change.
    /// Returns the true difference: the bytes (keys and values) of the
    /// damaged messages' records as they were, which both sides held.
    fn damage_spread(b: &Store, n: usize) -> u64 {
        let v = b.views();
        let users = v.users().unwrap();
        let step = (users.len() / n.max(1)).max(1);
        let mut events = Vec::new();
        let mut true_bytes = 0;
        for (k, user) in users.iter().step_by(step).take(n).enumerate() {
            let mb = v.mailbox_by_name(user, "INBOX").unwrap().unwrap();
            let msgs = v.messages(mb.id).unwrap();
            let (uid, m) = &msgs[msgs.len() / 2];
            let key = vk::message(mb.id, *uid);
            true_bytes += (key.len() + v.vget(&key).unwrap().unwrap().len()) as u64;
            events.push(if k % 2 == 0 {
                Event::Expunged {
                    user: user.clone(),
                    mailbox: mb.id,
                    messages: vec![(*uid, m.guid)],
                }
            } else {
                Event::FlagsChanged {
                    user: user.clone(),
                    mailbox: mb.id,
                    messages: vec![(*uid, m.guid)],
                    op: FlagOp::Set,
                    flags: Flags::new(["\\Flagged"]),
                }
            });
        }
        drop(v);
        damage(b, events);
        true_bytes
    }

    fn open(dir: &std::path::Path, node: &str) -> Store {
        let mut o = wal_options(node);
        o.sync = false;
        Store::open(dir, node, o).unwrap()
    }

    /// Views changed without a log entry.
    fn damage(store: &Store, events: Vec<Event>) {
        store.apply_unlogged(events).unwrap();
    }

    /// A scrub pages through the bodies referenced (several readers a
    /// page) and names exactly the rotten ones, in hash order.
    #[test]
    fn a_scrub_reads_every_body_page_by_page_and_names_the_rotten() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(da.path(), "node-a"), open(db.path(), "node-b"));
        populate(&a, &b, 3, 5);
        let held: Vec<(BlobHash, usize)> = a
            .wal()
            .scan_prefix(a.cfs().views, b"R")
            .unwrap()
            .into_iter()
            .map(|(k, _)| {
                let h = BlobHash(k[1..].try_into().unwrap());
                (h, a.blob(&h).unwrap().unwrap().len())
            })
            .collect();
        assert_eq!(held.len(), 15);
        let whole: usize = held.iter().map(|(_, n)| n).sum();
        for page in [1, 4, 15, 4096] {
            assert_eq!(scrub_paged(&a, page).unwrap(), (15, whole as u64, vec![]), "page {page}");
        }
        // Two bodies rot on disk.
        let mut rotten = vec![held[11].0, held[2].0];
        for h in &rotten {
            a.wal().put_derived(a.cfs().blobs, &h.0, b"rotten").unwrap();
        }
        rotten.sort_by_key(|h| h.0);
        let bytes = (whole - held[11].1 - held[2].1 + 2 * 6) as u64;
        for page in [1, 4, 4096] {
            assert_eq!(scrub_paged(&a, page).unwrap(), (15, bytes, rotten.clone()), "page {page}");
        }
    }

    /// What the mirror would do: `a`'s log, with its bodies, into `b`.
    fn mirror(a: &Store, b: &Store) {
        crate::replay::replay_into(a, b).unwrap();
        for (k, _) in a.wal().scan_prefix(a.cfs().views, b"R").unwrap() {
            let h = BlobHash(k[1..].try_into().unwrap());
            if let Some(body) = a.blob(&h).unwrap() {
                b.run_blocking(move |t, c| {
                    t.put(c.blobs, &h.0, &body);
                    Ok(())
                })
                .unwrap();
            }
        }
    }

    fn kinds(w: &Walk) -> Vec<(String, Option<u32>)> {
        let mut k: Vec<_> = w.items.iter().map(|i| (i.0.kind.clone(), i.0.uid)).collect();
        k.sort();
        k
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn damage_on_both_sides_is_named_and_repaired_by_events() {
        // By digests with cores (mailbox records by hash first), by
        // digests alone, and by whole nodes (the older peers).
        for reads in [Reads::ALL, Reads::DIGESTS, Reads::WHOLE] {
            damage_on_both_sides(reads).await;
        }
    }

    /// Differences a walk from the node's starts finds between `a` and `b`.
    async fn differences(a: &Store, b: &Store, reads: Reads) -> usize {
        let start = vec![Probe::UsersRoot, Probe::Config];
        let w = compare(a, &mut Local(b.clone()), start, false, reads, &Schedule::default(), None).await;
        w.unwrap().items.len()
    }

    async fn damage_on_both_sides(reads: Reads) {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(da.path(), "a"), open(db.path(), "b"));
        a.run_blocking(|t, c| mutate::create_user(t, c, U, "hash".into(), 1_700_000_000))
            .unwrap();
        for i in 0..3 {
            let m = NewMessage::new(
                format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes(),
                Flags::default(),
                1_700_000_000,
            );
            a.run_blocking(move |t, c| mutate::append(t, c, U, "INBOX", &m).map(|_| ()))
                .unwrap();
        }
        a.run_blocking(|t, c| mutate::set_config(t, c, "k", "v")).unwrap();
        mirror(&a, &b);
        assert_eq!(merkle::node_root(&a.views()).unwrap(), merkle::node_root(&b.views()).unwrap());
        let start = || vec![Probe::UsersRoot, Probe::Config];
        assert_eq!(differences(&a, &b, reads).await, 0);

        let v = a.views();
        let inbox = v.mailbox_by_name(U, "INBOX").unwrap().unwrap();
        let archive = v.mailbox_by_name(U, "Archive").unwrap().unwrap();
        let msgs = v.messages(inbox.id).unwrap();
        let (g1, g2, g3) = (msgs[0].1.guid, msgs[1].1.guid, msgs[2].1.guid);
        let body3 = msgs[2].1.blob;
        damage(
            &b,
            vec![
                Event::Expunged {
                    user: U.into(),
                    mailbox: inbox.id,
                    messages: vec![(1, g1)],
                },
                Event::FlagsChanged {
                    user: U.into(),
                    mailbox: inbox.id,
                    messages: vec![(2, g2)],
                    op: FlagOp::Set,
                    flags: Flags::new(["\\Flagged"]),
                },
                Event::MailboxRenamed {
                    user: U.into(),
                    mailbox: archive.id,
                    name: "Attic".into(),
                },
                Event::Subscribed {
                    user: U.into(),
                    name: "Extra".into(),
                    subscribed: true,
                },
                Event::ConfigSet {
                    key: "k".into(),
                    value: "other".into(),
                },
            ],
        );
        // This side lost a message and its body.
        damage(
            &a,
            vec![Event::Expunged {
                user: U.into(),
                mailbox: inbox.id,
                messages: vec![(3, g3)],
            }],
        );
        a.run_blocking(move |t, c| {
            t.delete(c.blobs, &body3.0);
            Ok(())
        })
        .unwrap();

        let mut walk = compare(&a, &mut Local(b.clone()), start(), false, reads, &Schedule::default(), None)
            .await
            .unwrap();
        let s = |k: &str, u: Option<u32>| (k.to_string(), u);
        assert_eq!(
            kinds(&walk),
            vec![
                s("config", None),
                s("flags", Some(2)),
                s("mailbox", None),
                s("message", Some(1)),
                s("message", Some(3)),
                s("subscription", None),
            ]
        );
        let detail = |uid: u32| walk.items.iter().find(|i| i.0.uid == Some(uid)).unwrap().0.detail.clone();
        assert!(detail(1).contains("missing on the peer"), "{}", detail(1));
        assert!(detail(3).contains("missing here"), "{}", detail(3));
        assert!(walk
            .items
            .iter()
            .all(|i| i.0.mailbox.is_none() || i.0.mailbox.as_deref() == Some("INBOX") || i.0.mailbox.as_deref() == Some("Archive")));

        repair(&a, &mut Local(b.clone()), &mut walk, Vec::new(), &Schedule::default())
            .await
            .unwrap();
        assert!(walk.items.iter().all(|i| i.0.repaired), "{:?}", walk.items);
        // The body came back from the other side with the event.
        assert!(a.blob(&body3).unwrap().is_some());
        // The repairs reach the other side as log entries, and then the
        // trees agree.
        mirror(&a, &b);
        assert_eq!(merkle::node_root(&a.views()).unwrap(), merkle::node_root(&b.views()).unwrap());
        assert_eq!(differences(&a, &b, reads).await, 0);
        let vb = b.views();
        assert_eq!(vb.messages(inbox.id).unwrap().len(), 3);
        assert_eq!(vb.mailbox(U, archive.id).unwrap().unwrap().name, "Archive");
        assert_eq!(vb.config("k").unwrap().as_deref(), Some("v"));
        assert!(vb.message(inbox.id, 2).unwrap().unwrap().flags.is_empty());
    }

    /// Bytes the walk exchanges: equal nodes, then differences spread
    /// over many users (as benches/resync_scale.sh makes them), by node
    /// digests and by whole nodes (as with an older peer).
    #[tokio::test(flavor = "multi_thread")]
    async fn bytes_per_difference_stay_bounded() {
        const USERS: usize = 2000;
        const MSGS: usize = 5;
        const DIFFS: usize = 20;
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(da.path(), "a"), open(db.path(), "b"));
        populate(&a, &b, USERS, MSGS);
        let start = || vec![Probe::UsersRoot, Probe::Config];
        let counted = || Counted {
            inner: Local(b.clone()),
            next_id: 0,
            rounds: Vec::new(),
            carried: Carried::default(),
        };
        let mut equal = [counted(), counted()];
        for (src, reads) in equal.iter_mut().zip([Reads::ALL, Reads::WHOLE]) {
            let w = compare(&a, src, start(), false, reads, &Schedule::default(), None).await.unwrap();
            assert!(w.items.is_empty());
            assert_eq!(w.messages_total, (USERS * MSGS) as u64);
        }
        let true_bytes = damage_spread(&b, DIFFS);
        let mut diff = [counted(), counted()];
        let mut found = Vec::new();
        for (src, reads) in diff.iter_mut().zip([Reads::ALL, Reads::WHOLE]) {
            let w = compare(&a, src, start(), false, reads, &Schedule::default(), None).await.unwrap();
            assert_eq!(w.items.len(), DIFFS, "{:?}", kinds(&w));
            found.push(w.items.into_iter().map(|i| i.0).collect::<Vec<_>>());
        }
        assert_eq!(found[0], found[1], "digests and whole nodes find the same differences");
        let per_diff = |c: &Counted| c.total() / DIFFS as u64;
        for (c, how) in diff.iter().zip(["digests", "whole nodes"]) {
            eprintln!(
                "{USERS} users x {MSGS} messages, {how}: equal {} B; {DIFFS} differences {} B in {} round trips, {} B each; per round (sent, received): {:?}",
                equal[if how == "digests" { 0 } else { 1 }].total(),
                c.total(),
                c.rounds.len(),
                per_diff(c),
                c.rounds
            );
        }
        // Equal trees: one summary read of the two starts.
        assert!(equal[0].total() <= 256, "equal trees cost {} B", equal[0].total());
        // Per difference here (about 960 B measured): a group's digest (64
        // buckets at about 13 B, one group per difference), a bucket's (one
        // user, about 40 B), the user's node (6 mailboxes at 27 B, 6
        // subscriptions at about 17 B), the mailbox record, trie root and
        // first leaf (about 120 B), the message records of one side (about
        // 50 B), and the keys asked for (about 140 B). The bound leaves a
        // quarter for record and name sizes; whole nodes cost about 3 KB
        // (2.7 KB with the shortcuts below the user).
        assert!(per_diff(&diff[0]) <= 1200, "{} B per difference", per_diff(&diff[0]));
        assert!(per_diff(&diff[0]) * 2 <= per_diff(&diff[1]));
        // The bytes by what they carried add up to the whole, and the
        // records compared (the state itself, beyond the tree's walk) are
        // within twice the true difference, with either kind of peer.
        for c in &diff {
            assert_eq!(c.carried.total(), c.total(), "{:?}", c.carried);
            assert!(c.carried.tree > 0 && c.carried.records > 0, "{:?}", c.carried);
            assert!(
                c.carried.records <= 2 * true_bytes,
                "records {} B against a true difference of {true_bytes} B",
                c.carried.records
            );
        }
        // Records cut to their cores, a mailbox's record read by its hash,
        // and no read of a record the peer's tree says it lacks: within
        // 1.2x the true difference.
        assert!(
            diff[0].carried.records * 5 <= true_bytes * 6,
            "records {} B by cores against a true difference of {true_bytes} B",
            diff[0].carried.records
        );
        eprintln!("true difference {true_bytes} B; by digests {:?}", diff[0].carried);
    }

    /// Mailboxes of 300 messages, whose leaves are full: a leaf read by
    /// eighths (its summary, then the eighth that differs) costs about a
    /// fifth of its digest, and finds the same differences, with the same
    /// progress, as a walk by digests.
    #[tokio::test(flavor = "multi_thread")]
    async fn wide_leaves_are_read_by_eighths() {
        const USERS: usize = 12;
        const MSGS: usize = 300;
        const DIFFS: usize = 12;
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(da.path(), "a"), open(db.path(), "b"));
        populate(&a, &b, USERS, MSGS);
        damage_spread(&b, DIFFS);
        let start = || vec![Probe::UsersRoot, Probe::Config];
        let mut runs = Vec::new();
        for reads in [Reads::ALL, Reads::DIGESTS] {
            let mut c = Counted {
                inner: Local(b.clone()),
                next_id: 0,
                rounds: Vec::new(),
                carried: Carried::default(),
            };
            let w = compare(&a, &mut c, start(), false, reads, &Schedule::default(), None)
                .await
                .unwrap();
            assert_eq!(w.items.len(), DIFFS, "{:?}", kinds(&w));
            eprintln!(
                "{USERS} users x {MSGS} messages, {reads:?}: {} B in {} round trips, {} B a difference; per round: {:?}",
                c.total(),
                c.rounds.len(),
                c.total() / DIFFS as u64,
                c.rounds
            );
            runs.push((kinds(&w), w.messages_done, w.messages_total, c.total(), c.rounds.len()));
        }
        let (eighths, digests) = (&runs[0], &runs[1]);
        assert_eq!(eighths.0, digests.0, "the same differences");
        assert_eq!((eighths.1, eighths.2), (digests.1, digests.2), "the same progress");
        assert_eq!(eighths.4, digests.4 + 1, "one more round trip, for the leaves' eighths");
        assert!(
            eighths.3 * 10 <= digests.3 * 6,
            "{} B by eighths against {} B by digests",
            eighths.3,
            digests.3
        );
    }

    /// Eighths are answered for nodes of a mailbox's trie only, and an
    /// eighth's number must be one of the eight; an absent node answers
    /// nothing, an empty eighth of a present node an empty digest.
    #[test]
    fn eighths_reads_answer_trie_nodes_only() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(da.path(), "a"), open(db.path(), "b"));
        populate(&a, &b, 1, 10);
        let v = a.views();
        let inbox = v.mailbox_by_name("user0@example.org", "INBOX").unwrap().unwrap();
        let leaf = tk::mailbox_node(inbox.id, 0, 0);
        let sums = answer(&a, &v, EIGHTHS, &leaf).unwrap().unwrap();
        let parts = Node::from_eighths(&leaf, &sums).unwrap();
        // UIDs 1-10: slots 1-7 and 8-10.
        assert_eq!(
            parts.iter().map(|p| p.map_or(0, |p| p.1)).collect::<Vec<_>>(),
            [7, 3, 0, 0, 0, 0, 0, 0]
        );
        let with = |e: u8| {
            let mut k = leaf.clone();
            k.push(e);
            k
        };
        let first = answer(&a, &v, EIGHTH, &with(0)).unwrap().unwrap();
        assert_eq!(Node::from_digest(&leaf, &first).unwrap().entries.len(), 7);
        let empty = answer(&a, &v, EIGHTH, &with(5)).unwrap().unwrap();
        assert!(Node::from_digest(&leaf, &empty).unwrap().entries.is_empty());
        // Refused: an eighth past the eighth, keys outside a mailbox trie.
        assert!(answer(&a, &v, EIGHTH, &with(8)).is_err());
        assert!(answer(&a, &v, EIGHTHS, &tk::users_root()).is_err());
        assert!(answer(&a, &v, EIGHTHS, &tk::user("user0@example.org")).is_err());
        assert!(answer(&a, &v, EIGHTH, &[]).is_err());
        assert!(answer(&a, &v, EIGHTHS, &leaf[..22]).is_err());
        // A node that is not there answers nothing.
        let absent = tk::mailbox_node(inbox.id, 0, 9);
        assert_eq!(answer(&a, &v, EIGHTHS, &absent).unwrap(), None);
    }

    /// Digests whose cut hashes all look alike (as two children alike in
    /// their first 8 bytes would): the summaries still differ, and the
    /// walk by whole nodes finds the differences.
    #[tokio::test(flavor = "multi_thread")]
    async fn digests_alike_fall_back_to_whole_nodes() {
        /// Answers digest reads with this side's own nodes.
        struct Alike(Local, Store);
        impl Source for Alike {
            async fn read_all(&mut self, reads: &[(u8, Vec<Vec<u8>>)]) -> anyhow::Result<Vec<Vec<Option<Vec<u8>>>>> {
                let mut out = self.0.read_all(reads).await?;
                let v = self.1.views();
                for ((family, keys), vals) in reads.iter().zip(&mut out) {
                    if *family == DIGEST {
                        *vals = keys.iter().map(|k| answer(&self.1, &v, DIGEST, k).unwrap()).collect();
                    }
                }
                Ok(out)
            }
        }
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(da.path(), "a"), open(db.path(), "b"));
        populate(&a, &b, 40, 3);
        damage_spread(&b, 4);
        let start = vec![Probe::UsersRoot, Probe::Config];
        let w = compare(
            &a,
            &mut Alike(Local(b.clone()), a.clone()),
            start,
            false,
            Reads::ALL,
            &Schedule::default(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(w.items.len(), 4, "{:?}", kinds(&w));
    }

    /// A mailbox of few messages under high UIDs: the first leaf does not
    /// hold them, so the walk goes down from the trie root and still finds
    /// the difference.
    #[tokio::test(flavor = "multi_thread")]
    async fn few_messages_under_high_uids_are_walked_from_the_root() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(da.path(), "a"), open(db.path(), "b"));
        populate(&a, &b, 1, 70);
        let v = a.views();
        let inbox = v.mailbox_by_name("user0@example.org", "INBOX").unwrap().unwrap();
        let gone: Vec<_> = v
            .messages(inbox.id)
            .unwrap()
            .into_iter()
            .take(66)
            .map(|(u, m)| (u, m.guid))
            .collect();
        let (uid, guid) = v.message(inbox.id, 70).unwrap().map(|m| (70, m.guid)).unwrap();
        drop(v);
        for s in [&a, &b] {
            damage(
                s,
                vec![Event::Expunged {
                    user: "user0@example.org".into(),
                    mailbox: inbox.id,
                    messages: gone.clone(),
                }],
            );
        }
        damage(
            &b,
            vec![Event::FlagsChanged {
                user: "user0@example.org".into(),
                mailbox: inbox.id,
                messages: vec![(uid, guid)],
                op: FlagOp::Set,
                flags: Flags::new(["\\Flagged"]),
            }],
        );
        for reads in [Reads::ALL, Reads::DIGESTS, Reads::WHOLE] {
            let w = compare(
                &a,
                &mut Local(b.clone()),
                vec![Probe::UsersRoot, Probe::Config],
                false,
                reads,
                &Schedule::default(),
                None,
            )
            .await
            .unwrap();
            assert_eq!(kinds(&w), vec![("flags".to_string(), Some(70))]);
        }
    }
}
