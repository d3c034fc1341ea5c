//! The daemon's store: the log plus the views and blobs kept beside it, with
//! an async face for the protocol drivers. Blocking work stays on the log's
//! writer thread; callers await a oneshot answered once the group is durable.

use crate::event::BlobHash;
use crate::mutate::{Cfs, MutationError};
use crate::views::Views;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};
use wal::{AppendError, Origin, Txn, Wal, WalError, WalOptions};

pub const CF_VIEWS: &str = "views";
pub const CF_BLOBS: &str = "blobs";
/// Derived data (parsed MIME summaries): rebuilt on demand, never logged.
pub const CF_CACHE: &str = "cache";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Mutation(#[from] MutationError),
    #[error(transparent)]
    Wal(#[from] WalError),
}

impl From<AppendError<MutationError>> for StoreError {
    fn from(e: AppendError<MutationError>) -> Self {
        match e {
            AppendError::Rejected(m) => StoreError::Mutation(m),
            AppendError::Wal(w) => StoreError::Wal(w),
        }
    }
}

impl StoreError {
    /// True when the request itself was refused (as opposed to the store
    /// failing): the caller may answer with a permanent error.
    pub fn is_refusal(&self) -> bool {
        matches!(self, StoreError::Mutation(m) if !matches!(m, MutationError::View(_)))
    }
}

struct Inner {
    wal: Arc<Wal>,
    cfs: Cfs,
    commits: watch::Receiver<u64>,
    node_id: String,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// RocksDB's memory budget (docs/operations.md section 3, "Memory budget").
pub const MEMORY: wal::MemoryBudget = wal::MemoryBudget {
    block_cache_bytes: 64 << 20,
    write_buffer_bytes: 256 << 20,
    max_wal_bytes: 256 << 20,
};

/// Log options the daemon uses, given a node id.
pub fn wal_options(node_id: &str) -> WalOptions {
    let mut o = WalOptions::new(Origin::from_node_id(node_id));
    o.memory = MEMORY;
    o.user_cfs = vec![CF_VIEWS.into(), CF_CACHE.into()];
    o.blob_cfs = vec![CF_BLOBS.into()];
    o
}

impl Store {
    /// Open the RocksDB store at `path` as node `node_id`.
    pub fn open(path: &Path, node_id: &str, opts: WalOptions) -> Result<Store, WalError> {
        let wal = Arc::new(Wal::open(path, opts)?);
        let cfs = Cfs {
            views: wal.cf(CF_VIEWS)?,
            blobs: wal.cf(CF_BLOBS)?,
            cache: wal.cf(CF_CACHE)?,
        };
        let (tx, rx) = watch::channel(wal.last_order());
        wal.on_commit(move |order| {
            let _ = tx.send(order);
        });
        Ok(Store {
            inner: Arc::new(Inner {
                wal,
                cfs,
                commits: rx,
                node_id: node_id.to_string(),
            }),
        })
    }

    pub fn wal(&self) -> &Arc<Wal> {
        &self.inner.wal
    }

    pub fn cfs(&self) -> Cfs {
        self.inner.cfs
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Committed views.
    pub fn views(&self) -> Views {
        Views {
            wal: self.inner.wal.clone(),
            cf: self.inner.cfs.views,
            blobs: self.inner.cfs.blobs,
        }
    }

    /// Watch the apply order: changes after every durable group that
    /// appended entries (IDLE, replication tail).
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.inner.commits.clone()
    }

    /// Run a mutation; resolves once it is durable.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>, Cfs) -> Result<T, MutationError> + Send + 'static,
    {
        self.submit(f).await
    }

    /// Queue a mutation now (in call order, before any await) and return
    /// a future of its durable result. Mutations queued back to back may
    /// share one group commit; each sees the ones queued before it.
    pub fn submit<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>, Cfs) -> Result<T, MutationError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let cfs = self.inner.cfs;
        self.inner.wal.submit(
            move |txn| f(txn, cfs),
            move |r| {
                let _ = tx.send(r);
            },
        );
        async move {
            match rx.await {
                Ok(r) => r.map_err(StoreError::from),
                Err(_) => Err(StoreError::Wal(WalError::Closed)),
            }
        }
    }

    /// Apply `events` to the views of this store without appending them to
    /// its log: state the log cannot explain. Only the merkle resync's
    /// tests and benchmark generator use it, to make the damage a resync
    /// must find; no command reaches it.
    #[doc(hidden)]
    pub fn apply_unlogged(&self, events: Vec<crate::event::Event>) -> Result<(), StoreError> {
        self.run_blocking(move |txn, cfs| {
            for e in &events {
                let at = wal::Appended {
                    origin: txn.local_origin(),
                    seq: 0,
                    order: 1 << 40,
                    hlc: txn.peek_hlc(),
                    hash: [0; 32],
                };
                crate::views::apply(&mut crate::views::TxnViews { txn, cf: cfs.views }, &at, e)?;
            }
            Ok(())
        })
    }

    /// Run a mutation from a synchronous caller.
    pub fn run_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>, Cfs) -> Result<T, MutationError> + Send + 'static,
    {
        let cfs = self.inner.cfs;
        self.inner.wal.transact(move |txn| f(txn, cfs)).map_err(StoreError::from)
    }

    /// Make bodies durable now, written once, ahead of the entries that
    /// reference them (see `wal::Wal::put_flushed`).
    pub fn put_bodies_flushed(&self, bodies: &[(&[u8], &[u8])]) -> Result<(), WalError> {
        self.inner.wal.put_flushed(self.inner.cfs.blobs, bodies)
    }

    /// Whether this node holds a body (see `ViewRead::holds_body`).
    pub fn holds_body(&self, hash: &BlobHash) -> Result<bool, crate::views::ViewError> {
        use crate::views::ViewRead;
        self.views().holds_body(hash)
    }

    /// How many messages reference a body.
    pub fn body_refs(&self, hash: &BlobHash) -> Result<u64, crate::views::ViewError> {
        use crate::views::ViewRead;
        self.views().refcount(hash)
    }

    /// A message body by hash.
    pub fn blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, WalError> {
        self.inner.wal.get(self.inner.cfs.blobs, &hash.0)
    }

    /// Stop the writer and mark the log closed cleanly.
    pub fn close(&self) -> Result<(), WalError> {
        self.inner.wal.close()
    }
}
