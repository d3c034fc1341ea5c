//! Point-in-time restore of one user's mail (or one folder of it) on a
//! running node: the user's state at a past instant is rebuilt from the
//! node's own log in a scratch store, and its messages are appended to new
//! folders as ordinary events, so the mirror carries them like any other
//! delivery and nothing present is touched.

use super::BackupError;
use crate::event::Event;
use crate::event::Id;
use crate::mutate::{self, MutationError};
use crate::store::{wal_options, Store};
use crate::views::{apply_without_tree, MessageRec, TxnViews, ViewRead};
use serde::{Deserialize, Serialize};
use std::path::Path;
use wal::{AppendError, Place};

/// What to bring back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PitrRequest {
    pub user: String,
    /// One folder (with its subfolders); all of the user's when absent.
    pub folder: Option<String>,
    /// The instant, ms since the epoch.
    pub at_ms: u64,
    /// Top folder of the restored copies (default `Restored`).
    pub into: Option<String>,
}

/// One folder restored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoredFolder {
    pub from: String,
    pub to: String,
    pub messages: u64,
}

/// What a point-in-time restore did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PitrReport {
    /// The user's log entries replayed up to the instant.
    pub entries_replayed: u64,
    pub folders: Vec<RestoredFolder>,
}

/// Messages appended per transaction (events only: the bodies are held).
const APPEND_BATCH: usize = 2048;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Restore `req` into `store`, using `scratch_dir` (empty; removed after)
/// for the replay.
pub fn restore_folders(store: &Store, scratch_dir: &Path, req: &PitrRequest) -> Result<PitrReport, BackupError> {
    let r = run(store, scratch_dir, req);
    let _ = std::fs::remove_dir_all(scratch_dir);
    r
}

fn run(store: &Store, scratch_dir: &Path, req: &PitrRequest) -> Result<PitrReport, BackupError> {
    let user = mutate::normalize_user(&req.user).map_err(|e| BackupError::Usage(e.to_string()))?;
    let folder = match &req.folder {
        Some(f) => Some(mutate::normalize_mailbox(f).map_err(|e| BackupError::Usage(e.to_string()))?),
        None => None,
    };
    // The replay starts from the first entry: a pruned log would give a
    // past state without whatever its pruned entries made.
    if let Some((origin, base)) = store.wal().bases().into_iter().next() {
        return Err(BackupError::Usage(format!(
            "a point-in-time restore replays the node's whole log, which is pruned (origin {origin} is held only after seq {}); \
             restore from a backup instead (tandem-replay restore)",
            base.seq
        )));
    }
    let mut o = wal_options("pitr-scratch");
    o.sync = false;
    let scratch = Store::open(scratch_dir, "pitr-scratch", o)?;
    let mut rep = PitrReport::default();
    // The user's events, in this node's apply order, up to the instant:
    // applied to the scratch views only (the scratch log stays empty, and
    // its merkle tree unbuilt: only mailboxes and messages are read back).
    let wal = store.wal();
    let cfs = scratch.cfs();
    let mut from = 1;
    'order: loop {
        let chunk = wal.read_order(from, 1024)?;
        let Some((last, _)) = chunk.last() else { break };
        from = last + 1;
        let mut mine = Vec::new();
        let mut stop = false;
        for (order, e) in chunk {
            if e.hlc >> 16 > req.at_ms {
                stop = true;
                break;
            }
            let place = Place {
                origin: e.origin,
                seq: e.seq,
            };
            let ev = Event::decode(&e.payload).map_err(|err| BackupError::Apply {
                place: place.clone(),
                reason: err.to_string(),
            })?;
            if ev.user() == Some(user.as_str()) {
                let at = wal::Appended {
                    origin: e.origin,
                    seq: e.seq,
                    order,
                    hlc: e.hlc,
                    hash: e.hash,
                };
                mine.push((place, at, ev));
            }
        }
        rep.entries_replayed += mine.len() as u64;
        if !mine.is_empty() {
            let r = scratch.wal().transact(move |txn| {
                for (place, at, ev) in &mine {
                    apply_without_tree(&mut TxnViews { txn, cf: cfs.views }, at, ev).map_err(|e| (place.clone(), e.to_string()))?;
                }
                Ok::<(), (Place, String)>(())
            });
            match r {
                Ok(()) => {}
                Err(AppendError::Rejected((place, reason))) => return Err(BackupError::Apply { place, reason }),
                Err(AppendError::Wal(w)) => return Err(w.into()),
            }
        }
        if stop {
            break 'order;
        }
    }
    let then = scratch.views();
    let stamp = chrono::DateTime::from_timestamp_millis(req.at_ms as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default();
    let top = req.into.clone().unwrap_or_else(|| "Restored".to_string());
    let view_err = |e: crate::views::ViewError| BackupError::Usage(e.to_string());
    let mut sources: Vec<_> = then
        .mailboxes(&user)
        .map_err(view_err)?
        .into_iter()
        .filter(|m| match &folder {
            Some(f) => m.name == *f || m.name.starts_with(&format!("{f}/")),
            None => true,
        })
        .collect();
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    if sources.is_empty() {
        scratch.close()?;
        return Err(BackupError::Usage(format!(
            "{user} had no {} at that time",
            folder.map(|f| format!("folder {f}")).unwrap_or_else(|| "folders".into())
        )));
    }
    for mb in sources {
        let to = format!("{top}/{} {stamp}", mb.name);
        let msgs = then.messages(mb.id).map_err(view_err)?;
        let (u, name) = (user.clone(), to.clone());
        let created = store
            .run_blocking(move |t, c| mutate::create_mailbox(t, c, &u, &name, None, now_secs()))
            .map_err(|e| BackupError::Usage(format!("creating {to}: {e}")))?;
        // The node holds every body the scratch views name (bodies are
        // kept while the log names them): the copies reference them by
        // hash, as a COPY does, without reading them.
        let mut n = 0u64;
        for part in msgs.chunks(APPEND_BATCH) {
            for (uid, m) in part {
                if !store.holds_body(&m.blob).map_err(view_err)? {
                    return Err(BackupError::Usage(format!(
                        "the body of {} uid {uid} (blake3 {}) is no longer held",
                        mb.name,
                        hex::encode(m.blob.0)
                    )));
                }
            }
            let batch: Vec<(u32, MessageRec)> = part.to_vec();
            n += batch.len() as u64;
            let (u, id) = (user.clone(), created.id);
            store
                .run_blocking(move |t, c| {
                    for (_, m) in &batch {
                        let Some(dst) = (TxnViews { txn: t, cf: c.views }).mailbox(&u, id)? else {
                            return Err(MutationError::NoSuchMailbox(id.to_hex()));
                        };
                        if dst.uidnext == u32::MAX {
                            return Err(MutationError::NotAllowed("mailbox has used every UID"));
                        }
                        mutate::emit(t, c, mutate::copy_of(m, &u, id, dst.uidnext, Id::random()))?;
                    }
                    Ok(())
                })
                .map_err(|e| BackupError::Usage(format!("appending to {to}: {e}")))?;
        }
        rep.folders.push(RestoredFolder {
            from: mb.name.clone(),
            to,
            messages: n,
        });
    }
    scratch.close()?;
    Ok(rep)
}
