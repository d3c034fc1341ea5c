//! Replay: rebuild views from the log, copy a log into an empty store, and
//! digest views so two stores (or a store and its replay) can be compared.

use crate::event::Event;
use crate::mutate::Cfs;
use crate::store::Store;
use crate::views::{apply_without_tree, read::TxnViews, read::ViewError, ViewRead, ViewWrite};
use wal::{AppendError, Entry, Place, WalError};

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("event at {place} does not decode: {reason}")]
    Event { place: Place, reason: String },
    #[error("applying the event at {place}: {source}")]
    View { place: Place, source: ViewError },
    /// The log's chains do not verify (`wal::Wal::verify_all`): the views
    /// were left as they were.
    #[error("the log does not verify; not rebuilding from it: {0}")]
    Unverified(WalError),
    #[error("building the merkle tree from the views: {0}")]
    Tree(#[from] crate::store::StoreError),
    /// The log was pruned (`wal::prune`): its entries no longer explain
    /// the views, so views cannot be rebuilt or replayed from it alone.
    #[error(
        "the log is pruned: origin {origin} is held only after seq {base}; views cannot be rebuilt from a pruned log \
         (restore from a backup, or rejoin the node by trees with `tandem resync --from-peer`)"
    )]
    Pruned { origin: wal::Origin, base: u64 },
}

/// Refuse a store whose log was pruned: replaying it would start every
/// pruned origin in the middle of its history.
pub fn refuse_pruned(wal: &wal::Wal) -> Result<(), ReplayError> {
    match wal.bases().into_iter().next() {
        Some((origin, b)) => Err(ReplayError::Pruned { origin, base: b.seq }),
        None => Ok(()),
    }
}

fn apply_entries(txn: &mut wal::Txn<'_>, cfs: Cfs, entries: Vec<(u64, Entry)>, append: bool) -> Result<(), ReplayError> {
    for (order, e) in entries {
        let at = if append {
            match txn.append_remote(&e)? {
                Some(at) => at,
                None => continue,
            }
        } else {
            e.at(order)
        };
        apply_entry(&mut TxnViews { txn, cf: cfs.views }, true, &at, &e)?;
    }
    Ok(())
}

/// Entries applied per transaction (one durable write each).
const CHUNK: usize = 4096;

fn unwrap_append(r: Result<(), AppendError<ReplayError>>) -> Result<(), ReplayError> {
    match r {
        Ok(()) => Ok(()),
        Err(AppendError::Rejected(e)) => Err(e),
        Err(AppendError::Wal(w)) => Err(ReplayError::Wal(w)),
    }
}

/// The marks of joins by trees (`crate::repl::resync::joined_key`): not
/// derived from the log, so a replay carries them over and honours them.
fn join_marks(store: &Store) -> Result<wal::KeyValues, WalError> {
    let mut marks = store.wal().scan_prefix(store.cfs().views, b"J")?;
    marks.retain(|(k, _)| k.len() == 9);
    Ok(marks)
}

fn put_join_marks(store: &Store, marks: wal::KeyValues) -> Result<(), ReplayError> {
    if marks.is_empty() {
        return Ok(());
    }
    let cfs = store.cfs();
    unwrap_append(store.wal().transact(move |txn| {
        for (k, v) in &marks {
            txn.put(cfs.views, &k[..], &v[..]);
        }
        Ok::<(), ReplayError>(())
    }))
}

/// The views of a rebuild held in a shadow of its own
/// ([`wal::Wal::shadow_detached`]): read and written directly, each write
/// going once into the one map, with no transaction around it.
struct ShadowViews<'s>(&'s mut wal::Shadow);

/// The same views, read only (by the merkle build, while they are written out).
struct ShadowRead<'s>(&'s wal::Shadow);

impl ViewRead for ShadowRead<'_> {
    fn vget(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WalError> {
        Ok(self.0.get(key))
    }
    fn vscan(&self, prefix: &[u8]) -> Result<wal::KeyValues, WalError> {
        Ok(self.0.scan(prefix).into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect())
    }
    /// Straight from the map, without copying each key and value out: the
    /// tree is built from every message record this way.
    fn vscan_from_each(&self, prefix: &[u8], start: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), WalError> {
        for (k, v) in self.0.scan(prefix) {
            if k >= start && !f(k, v) {
                break;
            }
        }
        Ok(())
    }
}

impl ViewRead for ShadowViews<'_> {
    fn vget(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WalError> {
        ShadowRead(self.0).vget(key)
    }
    fn vscan(&self, prefix: &[u8]) -> Result<wal::KeyValues, WalError> {
        ShadowRead(self.0).vscan(prefix)
    }
}

impl ViewWrite for ShadowViews<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.0.put(key, value)
    }
    fn delete(&mut self, key: &[u8]) {
        self.0.delete(key)
    }
}

/// Apply one entry, appended at `at`, to `v`; entries a join by trees
/// already reflects were stored, not applied, when they arrived, and a
/// replay skips them the same way. `joins`: whether the views may hold
/// any join mark (with none, no entry is covered by one, and the lookup
/// per entry is saved: applying events never writes marks).
fn apply_entry(v: &mut impl ViewWrite, joins: bool, at: &wal::Appended, e: &Entry) -> Result<(), ReplayError> {
    apply_decoded(v, joins, at, e, &decode(e)?)
}

/// The event an entry carries.
fn decode(e: &Entry) -> Result<Event, ReplayError> {
    Event::decode(&e.payload).map_err(|err| ReplayError::Event {
        place: Place {
            origin: e.origin,
            seq: e.seq,
        },
        reason: err.to_string(),
    })
}

/// [`apply_entry`] with the entry's event already decoded.
fn apply_decoded(v: &mut impl ViewWrite, joins: bool, at: &wal::Appended, e: &Entry, event: &Event) -> Result<(), ReplayError> {
    let view_error = |source| ReplayError::View {
        place: Place {
            origin: e.origin,
            seq: e.seq,
        },
        source,
    };
    if joins && crate::repl::resync::joined(&*v, e.origin.0, e.seq, event).map_err(view_error)? {
        return Ok(());
    }
    apply_without_tree(v, at, event).map_err(view_error)
}

/// Throw away the views and re-apply every entry in the apply order, then
/// build the merkle tree from the views in one pass (cheaper than keeping
/// it up to date entry by entry). Returns the number of entries applied.
///
/// The views are computed in memory (a shadow the rebuild holds itself:
/// reads are map lookups, each write goes once into the map, no
/// transaction per chunk) while another thread clears the views on disk;
/// the map is then written out as sorted tables while another thread
/// builds the merkle tree from it, whose nodes are written after. Past the shadow's memory budget, what the map holds is written
/// out and the rest of the log is applied through transactions, as it was
/// before shadows. After a failure to apply, what the map holds is
/// written out all the same (the join marks must survive it): the entries
/// before the failing one and part of that one. The views are then not a
/// function of the log until the next rebuild succeeds.
pub fn rebuild_views(store: &Store) -> Result<u64, ReplayError> {
    rebuild_views_within(store, false, SHADOW_BUDGET, CHUNK)
}

/// [`rebuild_views`] after verifying the log's chains
/// (`wal::Wal::verify_all`), on the thread that clears the views, before
/// it does: the verification costs no time beside applying the log, and a
/// log that does not verify leaves the views as they were
/// ([`ReplayError::Unverified`]).
pub fn rebuild_views_verified(store: &Store) -> Result<u64, ReplayError> {
    rebuild_views_within(store, true, SHADOW_BUDGET, CHUNK)
}

/// [`rebuild_views`] (verifying first if `verify`) with a memory budget
/// for the views held in memory and the entries applied per transaction
/// once past it: small ones make tests go through the path a large store
/// takes.
#[doc(hidden)]
pub fn rebuild_views_within(store: &Store, verify: bool, budget: usize, chunk: usize) -> Result<u64, ReplayError> {
    let wal = store.wal();
    let cfs = store.cfs();
    // Checked before the views are cleared: they are the only copy of the
    // state the pruned entries made.
    refuse_pruned(wal)?;
    let mut shadow = wal.shadow_detached(cfs.views, budget);
    shadow.hash_tags(crate::views::keys::POINT_TAGS);
    // A delivery writes one key of each hashed tag.
    let entries = usize::try_from(wal.last_order()).unwrap_or(usize::MAX);
    shadow.reserve_points(entries.saturating_mul(crate::views::keys::POINT_TAGS.len()));
    let marks = join_marks(store)?;
    let joins = !marks.is_empty();
    for (k, v) in marks {
        shadow.put_owned(k, v);
    }
    let (applied, cleared) = std::thread::scope(|s| {
        let clearing = s.spawn(|| {
            if verify {
                wal.verify_all().map_err(ReplayError::Unverified)?;
            }
            wal.clear(&[cfs.views])?;
            Ok::<(), ReplayError>(())
        });
        let applied = rebuild_in(wal, &mut shadow, joins, chunk);
        (applied, clearing.join().expect("the thread clearing the views panicked"))
    });
    // Not verified, or not cleared: nothing is written.
    cleared?;
    let (n, spilled_at) = match applied {
        Ok(done) => done,
        Err(e) => {
            // Written out even after a failure to apply.
            wal.shadow_write(&shadow)?;
            return Err(e);
        }
    };
    let Some(from) = spilled_at else {
        // The views are written out on this thread while another builds
        // the merkle tree from them; its nodes are written after.
        let (written, tree) = std::thread::scope(|s| {
            let tree = s.spawn(|| crate::merkle::build(&ShadowRead(&shadow)));
            let written = wal.shadow_write(&shadow);
            (written, tree.join().expect("the thread building the tree panicked"))
        });
        written?;
        // The map is freed (a twentieth of a rebuild) beside the writing
        // of the tree's nodes.
        let freeing = std::thread::spawn(move || drop(shadow));
        let tree = tree.map_err(|e| ReplayError::Tree(crate::mutate::MutationError::from(e).into()))?;
        let mut nodes = wal.shadow_detached(cfs.views, usize::MAX);
        for (k, b) in tree {
            nodes.put_owned(k, b);
        }
        wal.shadow_write(&nodes)?;
        freeing.join().expect("the thread freeing the views panicked");
        return Ok(n);
    };
    wal.shadow_write(&shadow)?;
    drop(shadow);
    // Out of the memory budget: the rest goes through RocksDB.
    let rest = apply_order(wal, from, chunk, |chunk| {
        unwrap_append(wal.transact(move |txn| apply_entries(txn, cfs, chunk, false)))
    })?;
    crate::merkle::build_stored(store)?;
    Ok(n + rest)
}

/// Apply the apply order to `shadow` from its start. Returns the entries
/// applied and, when the shadow outgrew its budget first, the order the
/// rest starts at. The log is read and its events decoded on a second
/// thread, a chunk ahead of the applying (a tenth of a rebuild's time was
/// reading and decoding on the applying thread).
fn rebuild_in(wal: &wal::Wal, shadow: &mut wal::Shadow, joins: bool, chunk: usize) -> Result<(u64, Option<u64>), ReplayError> {
    type Decoded = Vec<(u64, Entry, Result<Event, ReplayError>)>;
    let mut v = ShadowViews(shadow);
    let mut n = 0;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Decoded, ReplayError>>(2);
        s.spawn(move || {
            let mut from = 1;
            loop {
                let entries = match wal.read_order(from, chunk) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let Some((last, _)) = entries.last() else { return };
                from = last + 1;
                let decoded: Decoded = entries
                    .into_iter()
                    .map(|(order, e)| {
                        let event = decode(&e);
                        (order, e, event)
                    })
                    .collect();
                // The applying side stopped (a failure, or past its
                // budget): nothing more to read.
                if tx.send(Ok(decoded)).is_err() {
                    return;
                }
            }
        });
        for entries in rx {
            let entries = entries?;
            let Some((last, _, _)) = entries.last() else { continue };
            let from = last + 1;
            n += entries.len() as u64;
            for (order, e, event) in entries {
                apply_decoded(&mut v, joins, &e.at(order), &e, &event?)?;
            }
            if v.0.over_budget() {
                return Ok(Some(from));
            }
        }
        Ok(None)
    })
    .and_then(|spilled| {
        if spilled.is_some() {
            return Ok((n, spilled));
        }
        // The tree is built from the views afresh: no node is kept.
        for (k, _) in v.vscan(&crate::merkle::keys::all())? {
            v.delete(&k);
        }
        Ok((n, None))
    })
}

/// Copy `src`'s log, in its apply order, into `dst` (normally empty),
/// applying every entry to `dst`'s views as replication would, with
/// `src`'s join marks; the merkle tree is built from the views at the end.
pub fn replay_into(src: &Store, dst: &Store) -> Result<u64, ReplayError> {
    refuse_pruned(src.wal())?;
    let cfs = dst.cfs();
    let marks = join_marks(src)?;
    let n = in_shadow(dst, || {
        put_join_marks(dst, marks)?;
        apply_order(src.wal(), 1, CHUNK, |chunk| {
            unwrap_append(dst.wal().transact(move |txn| apply_entries(txn, cfs, chunk, true)))
        })
    })?;
    crate::merkle::build_stored(dst)?;
    Ok(n)
}

/// Memory the views of a rebuild may take before they go to RocksDB
/// (`wal::Wal::shadow_begin`).
const SHADOW_BUDGET: usize = 256 << 20;

/// Run `f`, which writes `store`'s views from nothing, with the views held
/// in memory when they start empty (reads then need no RocksDB lookup and
/// the views are written once, sorted, at the end); as before when not.
fn in_shadow(store: &Store, f: impl FnOnce() -> Result<u64, ReplayError>) -> Result<u64, ReplayError> {
    let wal = store.wal();
    let shadowed = wal.shadow_begin(store.cfs().views, SHADOW_BUDGET).is_ok();
    let r = f();
    // Written out even after a failure, like the chunks committed before it.
    let end = if shadowed { wal.shadow_end() } else { Ok(()) };
    let n = r?;
    end?;
    Ok(n)
}

/// Hand `wal`'s apply order from `from` to `apply` in chunks of `chunk`
/// entries; returns how many there were.
fn apply_order(
    wal: &wal::Wal,
    mut from: u64,
    chunk: usize,
    mut apply: impl FnMut(Vec<(u64, Entry)>) -> Result<(), ReplayError>,
) -> Result<u64, ReplayError> {
    let mut n = 0;
    loop {
        let chunk = wal.read_order(from, chunk)?;
        let Some((last, _)) = chunk.last() else { break };
        from = last + 1;
        n += chunk.len() as u64;
        apply(chunk)?;
    }
    Ok(n)
}

/// blake3 over every key and value of the views, in key order.
pub fn views_digest(store: &Store) -> Result<String, WalError> {
    let mut h = blake3::Hasher::new_derive_key("tandem views digest v1");
    for (k, v) in store.wal().scan_all(store.cfs().views)? {
        h.update(&(k.len() as u64).to_be_bytes());
        h.update(&k);
        h.update(&(v.len() as u64).to_be_bytes());
        h.update(&v);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The merkle root of what mirrored nodes must agree on (see
/// [`crate::merkle`]), as hex: read from the tree the views keep, so it
/// costs two reads whatever the size of the store.
pub fn mirror_digest(store: &Store) -> Result<String, crate::views::ViewError> {
    Ok(hex::encode(crate::merkle::node_root(&store.views())?.0))
}
