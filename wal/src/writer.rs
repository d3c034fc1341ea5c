//! Group commit: one writer thread turns many concurrent transactions into
//! one RocksDB `WriteBatch` and one fsync.
//!
//! A transaction is a closure that runs on the writer thread with a [`Txn`].
//! It may read (seeing every write of earlier transactions of the same group),
//! write view keys, and append entries. Everything it does lands in the same
//! batch as the entries it appended, so views can never run ahead of or behind
//! the log. A closure that returns an error leaves no trace. Callers are told
//! the outcome only after the batch is durable.

use crate::error::{AppendError, Place, WalError};
use crate::record::{Entry, Hash, GENESIS};
use crate::seq::{log_key, Origin};
use crate::store::{meta_head_key, Cf, KeyValues, Shared, CF_LOG, CF_META, CF_ORDER, META_ORIGIN, META_ORIGIN_BASE};
use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) type Finish = Box<dyn FnOnce(Result<(), WalError>) + Send>;
pub(crate) type Job = Box<dyn FnOnce(&mut Txn<'_>) -> (bool, Finish) + Send>;

/// What an append produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub origin: Origin,
    pub seq: u64,
    /// Position in this node's apply order (dense from 1). The daemon uses it
    /// as MODSEQ, which is per node.
    pub order: u64,
    pub hlc: u64,
    pub hash: Hash,
}

/// What [`Txn::rehome`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rehomed {
    /// The origin this node appended as until now.
    pub old: Origin,
    /// The successor origin it appends as from now on.
    pub new: Origin,
    /// First seq of `old` that was moved (its entries now start at seq 1 of `new`).
    pub from: u64,
    /// Entries moved.
    pub moved: u64,
}

/// Pending writes, one sorted map per column family: a read looks its key
/// up as a borrowed slice (no key copy per read), and a write lands in its
/// family's map, whose keys share no column family byte.
#[derive(Default)]
pub(crate) struct Overlay(Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>);

impl Overlay {
    pub(crate) fn new() -> Overlay {
        Overlay(Vec::new())
    }

    fn cf(&self, cf: u8) -> Option<&BTreeMap<Vec<u8>, Option<Vec<u8>>>> {
        self.0.get(cf as usize)
    }

    fn get(&self, cf: u8, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.cf(cf)?.get(key)
    }

    fn insert(&mut self, (cf, key): (u8, Vec<u8>), value: Option<Vec<u8>>) {
        let i = cf as usize;
        if self.0.len() <= i {
            self.0.resize_with(i + 1, BTreeMap::new);
        }
        self.0[i].insert(key, value);
    }

    /// The pending writes of `cf` under `prefix`, in key order.
    fn prefixed<'s>(&'s self, cf: u8, prefix: &'s [u8]) -> impl Iterator<Item = (&'s Vec<u8>, &'s Option<Vec<u8>>)> + 's {
        self.cf(cf).into_iter().flat_map(move |m| {
            m.range::<[u8], _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
                .take_while(move |(k, _)| k.starts_with(prefix))
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(BTreeMap::is_empty)
    }

    fn extend(&mut self, other: Overlay) {
        if self.0.len() < other.0.len() {
            self.0.resize_with(other.0.len(), BTreeMap::new);
        }
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            if mine.is_empty() {
                *mine = theirs;
            } else {
                mine.extend(theirs);
            }
        }
    }

    /// Every write as (column family, key, value), in column family then
    /// key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u8, &Vec<u8>, &Option<Vec<u8>>)> {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(cf, m)| m.iter().map(move |(k, v)| (cf as u8, k, v)))
    }

    /// The writes of each column family, taken out.
    pub(crate) fn into_families(self) -> impl Iterator<Item = (u8, BTreeMap<Vec<u8>, Option<Vec<u8>>>)> {
        self.0.into_iter().enumerate().map(|(cf, m)| (cf as u8, m))
    }
}

/// The first bytes of a hash in hex, for messages.
fn short(h: &Hash) -> String {
    h[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// State shared by the transactions of one group.
pub(crate) struct Group {
    overlay: Overlay,
    heads: BTreeMap<Origin, (u64, Hash)>,
    order_next: u64,
    hlc_last: u64,
    appended: u64,
    bytes: u64,
    /// A successor origin taken by a transaction of this group.
    origin: Option<Origin>,
}

impl Group {
    pub(crate) fn empty(order_next: u64, hlc_last: u64) -> Group {
        Group {
            overlay: Overlay::new(),
            heads: BTreeMap::new(),
            order_next,
            hlc_last,
            appended: 0,
            bytes: 0,
            origin: None,
        }
    }
}

/// A transaction running on the writer thread.
pub struct Txn<'a> {
    shared: &'a Shared,
    group: &'a mut Group,
    scratch: Overlay,
    heads: BTreeMap<Origin, (u64, Hash)>,
    order_next: u64,
    hlc_last: u64,
    appended: Vec<Appended>,
    bytes: u64,
    origin: Option<Origin>,
}

fn now_hlc() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ms << 16
}

impl<'a> Txn<'a> {
    /// A transaction whose writes go nowhere (used to answer a job that
    /// cannot be committed).
    pub(crate) fn detached(shared: &'a Shared, group: &'a mut Group) -> Txn<'a> {
        Txn::new(shared, group)
    }

    fn new(shared: &'a Shared, group: &'a mut Group) -> Txn<'a> {
        let order_next = group.order_next;
        let hlc_last = group.hlc_last;
        Txn {
            shared,
            group,
            scratch: Overlay::new(),
            heads: BTreeMap::new(),
            order_next,
            hlc_last,
            appended: Vec::new(),
            bytes: 0,
            origin: None,
        }
    }

    /// The origin this node appends as (as this transaction sees it).
    pub fn local_origin(&self) -> Origin {
        self.origin.or(self.group.origin).unwrap_or_else(|| self.shared.local_origin())
    }

    /// Read a key, seeing this transaction's and this group's writes.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, WalError> {
        if let Some(v) = self.scratch.get(cf.0, key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.group.overlay.get(cf.0, key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.shared.shadow_get(cf, key) {
            return Ok(v);
        }
        self.shared.get_raw(cf, key)
    }

    /// All keys starting with `prefix`, in key order, seeing pending writes.
    pub fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<KeyValues, WalError> {
        let committed = match self.shared.shadow_scan(cf, prefix) {
            Some(kv) => kv,
            None => self.shared.scan_prefix_raw(cf, prefix)?,
        };
        let pending = |layer| Overlay::prefixed(layer, cf.0, prefix);
        if pending(&self.group.overlay).next().is_none() && pending(&self.scratch).next().is_none() {
            // Nothing pending under the prefix: the committed keys as they are.
            return Ok(committed);
        }
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = committed.into_iter().map(|(k, v)| (k, Some(v))).collect();
        for layer in [&self.group.overlay, &self.scratch] {
            for (k, v) in pending(layer) {
                merged.insert(k.clone(), v.clone());
            }
        }
        Ok(merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect())
    }

    /// Write a key of a caller-declared column family.
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        assert!(
            cf.0 >= crate::store::FIRST_USER_CF,
            "the log's own column families are written by append only"
        );
        self.scratch.insert((cf.0, key.to_vec()), Some(value.to_vec()));
    }

    /// Delete a key of a caller-declared column family.
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        assert!(
            cf.0 >= crate::store::FIRST_USER_CF,
            "the log's own column families are written by append only"
        );
        self.scratch.insert((cf.0, key.to_vec()), None);
    }

    fn head(&self, origin: Origin) -> (u64, Hash) {
        if let Some(h) = self.heads.get(&origin) {
            return *h;
        }
        if let Some(h) = self.group.heads.get(&origin) {
            return *h;
        }
        self.shared.committed_head(origin).unwrap_or((0, GENESIS))
    }

    fn push(&mut self, entry: Entry) -> Appended {
        let order = self.order_next;
        self.order_next += 1;
        let value = entry.encode_value();
        self.bytes += value.len() as u64;
        self.scratch
            .insert((CF_LOG, log_key(entry.origin, entry.seq).to_vec()), Some(value));
        let mut ov = [0u8; 16];
        ov.copy_from_slice(&log_key(entry.origin, entry.seq));
        self.scratch.insert((CF_ORDER, order.to_be_bytes().to_vec()), Some(ov.to_vec()));
        let mut hv = Vec::with_capacity(40);
        hv.extend_from_slice(&entry.seq.to_be_bytes());
        hv.extend_from_slice(&entry.hash);
        self.scratch.insert((CF_META, meta_head_key(entry.origin).to_vec()), Some(hv));
        self.heads.insert(entry.origin, (entry.seq, entry.hash));
        let a = Appended {
            origin: entry.origin,
            seq: entry.seq,
            order,
            hlc: entry.hlc,
            hash: entry.hash,
        };
        self.appended.push(a);
        a
    }

    /// Append an entry to this node's own origin log.
    pub fn append(&mut self, payload: Vec<u8>) -> Appended {
        let origin = self.local_origin();
        let (seq, prev) = self.head(origin);
        let hlc = now_hlc().max(self.hlc_last + 1);
        self.hlc_last = hlc;
        self.push(Entry::new(&prev, origin, seq + 1, hlc, payload))
    }

    /// The hybrid logical clock value the next local append would get.
    pub fn peek_hlc(&self) -> u64 {
        now_hlc().max(self.hlc_last + 1)
    }

    /// An entry as this transaction sees it (its own and its group's
    /// writes included).
    fn entry_at(&self, origin: Origin, seq: u64) -> Result<Option<Entry>, WalError> {
        match self.get(Cf(CF_LOG), &log_key(origin, seq))? {
            Some(v) => Entry::decode_value(origin, seq, &v).map(Some).map_err(|reason| WalError::Corrupt {
                place: Place { origin, seq },
                reason,
            }),
            None => Ok(None),
        }
    }

    /// Apply an entry shipped by a peer (replication, restore), of any
    /// origin: this node's own origin too, whose missing tail it takes back
    /// after its log went backwards. Returns `Ok(None)` when the very entry
    /// is already held (same hash); an entry for a held seq with another
    /// hash is a [`WalError::Fork`]; an entry that skips a seq or does not
    /// follow the chain is refused with its place.
    pub fn append_remote(&mut self, entry: &Entry) -> Result<Option<Appended>, WalError> {
        let (seq, prev) = self.head(entry.origin);
        let place = Place {
            origin: entry.origin,
            seq: entry.seq,
        };
        if entry.seq == 0 {
            return Err(WalError::Discontinuous {
                place,
                reason: "seq 0 does not exist".into(),
            });
        }
        if entry.seq <= seq {
            let base = self.shared.base(entry.origin);
            if entry.seq <= base.seq && self.entry_at(entry.origin, entry.seq)?.is_none() {
                // Pruned here: the base hash is the only one left to compare.
                if entry.seq == base.seq && entry.hash != base.hash {
                    return Err(WalError::Fork {
                        place,
                        held: short(&base.hash),
                        offered: short(&entry.hash),
                    });
                }
                return Ok(None);
            }
            let held = self.entry_at(entry.origin, entry.seq)?.ok_or_else(|| WalError::Corrupt {
                place: place.clone(),
                reason: format!("missing below the head (seq {seq})"),
            })?;
            if held.hash == entry.hash {
                return Ok(None);
            }
            return Err(WalError::Fork {
                place,
                held: short(&held.hash),
                offered: short(&entry.hash),
            });
        }
        if entry.seq != seq + 1 {
            return Err(WalError::Discontinuous {
                place,
                reason: format!("log holds up to seq {seq}"),
            });
        }
        if !entry.follows(&prev) {
            return Err(WalError::Discontinuous {
                place,
                reason: "hash does not follow the previous entry".into(),
            });
        }
        self.hlc_last = self.hlc_last.max(entry.hlc);
        Ok(Some(self.push(entry.clone())))
    }

    /// Move this node's own entries `from..=head` to a new origin, which
    /// this node appends as from then on (persisted with the entries).
    ///
    /// For a node whose log went backwards (restored from an older copy)
    /// and that appended again before it learnt what its peers hold: those
    /// seqs name other entries at the peers. The moved entries keep their
    /// payload, clock and place in the apply order (the views, which already
    /// hold their effects, stay as they are); they get new seqs and hashes
    /// under the new origin, so peers receive their effects as new entries,
    /// and the old origin's seqs from `from` on are free to take the peers'
    /// entries as remote ones. No seq of any origin ever names two entries.
    pub fn rehome(&mut self, from: u64) -> Result<Rehomed, WalError> {
        let old = self.local_origin();
        let (head, head_hash) = self.head(old);
        if from == 0 || from > head + 1 {
            return Err(WalError::Discontinuous {
                place: Place { origin: old, seq: from },
                reason: format!("cannot move entries from seq {from}: the log holds up to seq {head}"),
            });
        }
        // Moving every held entry of a pruned origin would leave it a head
        // with no entry behind its base: refused, like pruned history.
        let base = self.shared.base(old);
        if base.seq > 0 && from <= base.seq + 1 {
            return Err(crate::prune::pruned(old, from, base.seq));
        }
        let prev = if from == 1 {
            GENESIS
        } else {
            self.entry_at(old, from - 1)?
                .ok_or_else(|| WalError::Corrupt {
                    place: Place {
                        origin: old,
                        seq: from - 1,
                    },
                    reason: "entry missing".into(),
                })?
                .hash
        };
        let mut moved = Vec::new();
        for s in from..=head {
            let e = self.entry_at(old, s)?.ok_or_else(|| WalError::Corrupt {
                place: Place { origin: old, seq: s },
                reason: "entry missing".into(),
            })?;
            moved.push(e);
        }
        let orders = self.orders_of(old, from, head)?;
        // A new origin nobody used: derived from the old one, the point of
        // the move, this history's head and the time.
        let mut h = blake3::Hasher::new_derive_key("tandem successor origin v1");
        h.update(&old.0.to_be_bytes());
        h.update(&from.to_be_bytes());
        h.update(&head_hash);
        h.update(&now_hlc().to_be_bytes());
        h.update(&std::process::id().to_be_bytes());
        let new = Origin(u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes")));
        let mut p = GENESIS;
        for (i, e) in moved.iter().enumerate() {
            let ne = Entry::new(&p, new, i as u64 + 1, e.hlc, e.payload.clone());
            p = ne.hash;
            self.scratch.insert((CF_LOG, log_key(old, e.seq).to_vec()), None);
            self.scratch
                .insert((CF_LOG, log_key(new, ne.seq).to_vec()), Some(ne.encode_value()));
            self.scratch
                .insert((CF_ORDER, orders[i].to_be_bytes().to_vec()), Some(log_key(new, ne.seq).to_vec()));
        }
        let k = moved.len() as u64;
        let head_value = |seq: u64, hash: &Hash| {
            let mut v = seq.to_be_bytes().to_vec();
            v.extend_from_slice(hash);
            v
        };
        // An origin with no entry left has no head record (open checks that
        // every head names stored entries).
        let old_head = (from > 1).then(|| head_value(from - 1, &prev));
        self.scratch.insert((CF_META, meta_head_key(old).to_vec()), old_head);
        if k > 0 {
            self.scratch.insert((CF_META, meta_head_key(new).to_vec()), Some(head_value(k, &p)));
            self.heads.insert(new, (k, p));
        }
        self.heads.insert(old, (from - 1, prev));
        self.scratch
            .insert((CF_META, META_ORIGIN.to_vec()), Some(new.0.to_be_bytes().to_vec()));
        self.scratch.insert(
            (CF_META, META_ORIGIN_BASE.to_vec()),
            Some(self.shared.opts.local_origin.0.to_be_bytes().to_vec()),
        );
        self.origin = Some(new);
        tracing::warn!(%old, %new, from, moved = k, "this node's own log went backwards: its entries from the fork on move to a new origin");
        Ok(Rehomed { old, new, from, moved: k })
    }

    /// See [`crate::Wal::adopt_base`]: `held` is the origin's current base.
    /// Returns the base record written, or `None` when nothing changed.
    pub(crate) fn adopt_base(
        &mut self,
        origin: Origin,
        held: crate::prune::Base,
        base: crate::prune::Base,
    ) -> Result<Option<crate::prune::Base>, WalError> {
        let (head, _) = self.head(origin);
        if head >= base.seq {
            return Ok(None);
        }
        for s in held.seq + 1..=head {
            self.scratch.insert((CF_LOG, log_key(origin, s).to_vec()), None);
        }
        let new = crate::prune::Base {
            adopted: held.adopted + (base.seq - head),
            ..base
        };
        self.scratch
            .insert((CF_META, crate::prune::meta_base_key(origin).to_vec()), Some(new.encode().to_vec()));
        let mut hv = base.seq.to_be_bytes().to_vec();
        hv.extend_from_slice(&base.hash);
        self.scratch.insert((CF_META, meta_head_key(origin).to_vec()), Some(hv));
        self.heads.insert(origin, (base.seq, base.hash));
        self.hlc_last = self.hlc_last.max(base.hlc);
        Ok(Some(new))
    }

    /// Apply-order positions of `origin`'s entries `from..=to`, found from
    /// the end of the order (they are this node's latest own entries).
    fn orders_of(&self, origin: Origin, from: u64, to: u64) -> Result<Vec<u64>, WalError> {
        let mut out = vec![0u64; (to + 1).saturating_sub(from) as usize];
        let mut left = out.len();
        let mut look = |pos: u64, v: &[u8]| {
            if let Some((o, s)) = crate::seq::parse_log_key(v) {
                if o == origin && (from..=to).contains(&s) && out[(s - from) as usize] == 0 {
                    out[(s - from) as usize] = pos;
                    left -= 1;
                }
            }
            left > 0
        };
        let mut more = true;
        for layer in [&self.scratch, &self.group.overlay] {
            for (k, v) in layer.cf(CF_ORDER).into_iter().flatten() {
                if let (Some(v), Ok(b)) = (v, <[u8; 8]>::try_from(k.as_slice())) {
                    more = look(u64::from_be_bytes(b), v);
                }
            }
        }
        if more {
            self.shared.scan_order_back(&mut look)?;
        }
        if let Some(i) = out.iter().position(|p| *p == 0) {
            return Err(WalError::Corrupt {
                place: Place {
                    origin,
                    seq: from + i as u64,
                },
                reason: "entry has no place in the apply order".into(),
            });
        }
        Ok(out)
    }

    /// Entries appended so far by this transaction.
    pub fn appended(&self) -> &[Appended] {
        &self.appended
    }

    fn merge_into_group(self) -> u64 {
        let n = self.appended.len() as u64;
        let Txn {
            group,
            scratch,
            heads,
            order_next,
            hlc_last,
            bytes,
            origin,
            ..
        } = self;
        group.origin = origin.or(group.origin);
        // The group's first transaction's writes become the group's as
        // they are, not key by key (per column family).
        group.overlay.extend(scratch);
        group.heads.extend(heads);
        group.order_next = order_next;
        group.hlc_last = hlc_last;
        group.appended += n;
        group.bytes += bytes;
        n
    }
}

/// Wrap a typed closure and completion into a type-erased job.
pub(crate) fn make_job<R, E, F, D>(f: F, done: D) -> Job
where
    R: Send + 'static,
    E: Send + 'static,
    F: FnOnce(&mut Txn<'_>) -> Result<R, E> + Send + 'static,
    D: FnOnce(Result<R, AppendError<E>>) + Send + 'static,
{
    Box::new(move |txn: &mut Txn<'_>| match f(txn) {
        Ok(r) => (
            true,
            Box::new(move |res: Result<(), WalError>| done(res.map(|()| r).map_err(AppendError::Wal))) as Finish,
        ),
        Err(e) => (
            false,
            Box::new(move |res: Result<(), WalError>| match res {
                Err(WalError::Poisoned(p)) => done(Err(AppendError::Wal(WalError::Poisoned(p)))),
                _ => done(Err(AppendError::Rejected(e))),
            }) as Finish,
        ),
    })
}

/// The writer thread's loop: take every waiting job, run them, write once.
pub(crate) fn run(shared: Arc<Shared>, rx: Receiver<Job>) {
    let max = shared.opts.max_group.max(1);
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        commit_group(&shared, jobs);
    }
}

fn commit_group(shared: &Shared, jobs: Vec<Job>) {
    let started = std::time::Instant::now();
    let (order_next, hlc_last) = shared.group_start();
    if let Some(p) = shared.poisoned() {
        // The closures run against a group that is thrown away, so each
        // caller gets its answer; nothing of them reaches the store.
        for job in jobs {
            let mut group = Group::empty(order_next, hlc_last);
            let mut txn = Txn::new(shared, &mut group);
            let (_, fin) = job(&mut txn);
            fin(Err(WalError::Poisoned(p.clone())));
        }
        return;
    }
    let mut group = Group::empty(order_next, hlc_last);
    let mut finishers: Vec<Finish> = Vec::with_capacity(jobs.len());
    let njobs = jobs.len() as u64;
    for job in jobs {
        let mut txn = Txn::new(shared, &mut group);
        // A panicking transaction is a bug in that caller: its writes are
        // dropped and its caller sees the log as closed for that request,
        // but the writer and every other transaction carry on.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut txn))) {
            Ok((ok, fin)) => {
                if ok {
                    txn.merge_into_group();
                }
                finishers.push(fin);
            }
            Err(_) => {
                shared.count_panic();
                tracing::error!("a log transaction panicked; its writes were discarded");
            }
        }
    }
    if group.overlay.is_empty() {
        for f in finishers {
            f(Ok(()));
        }
        return;
    }
    let writing = std::time::Instant::now();
    let result = shared.write_group(group.overlay, group.order_next);
    let write = writing.elapsed();
    match result {
        Ok(()) => {
            #[cfg(feature = "failpoints")]
            shared.wait_publish();
            shared.committed(
                group.origin,
                group.heads,
                group.order_next,
                group.hlc_last,
                group.appended,
                group.bytes,
                njobs,
            );
            let timing = crate::store::GroupTiming {
                write,
                total: started.elapsed(),
                jobs: njobs,
            };
            for f in finishers {
                f(Ok(()));
            }
            shared.report_timing(&timing);
        }
        Err(e) => {
            let msg = e.to_string();
            shared.poison(msg.clone());
            tracing::error!(error = %msg, "durable write failed; the log is poisoned until reopened");
            for f in finishers {
                f(Err(WalError::Poisoned(msg.clone())));
            }
        }
    }
}
