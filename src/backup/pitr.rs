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
    let started = std::time::Instant::now();
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
    let mut scratch_apply = std::time::Duration::ZERO;
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
            // Whose entry it is, read from its first fields: only the
            // user's own are decoded whole.
            let bad = |err: crate::event::EventDecodeError| BackupError::Apply {
                place: place.clone(),
                reason: err.to_string(),
            };
            if Event::user_of(&e.payload).map_err(bad)? == Some(user.as_str()) {
                let ev = Event::decode(&e.payload).map_err(bad)?;
                mine.push((place, e.at(order), ev));
            }
        }
        rep.entries_replayed += mine.len() as u64;
        if !mine.is_empty() {
            let t = std::time::Instant::now();
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
            scratch_apply += t.elapsed();
        }
        if stop {
            break 'order;
        }
    }
    let replayed = started.elapsed();
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
                    let Some(dst) = (TxnViews { txn: t, cf: c.views }).mailbox(&u, id)? else {
                        return Err(MutationError::NoSuchMailbox(id.to_hex()));
                    };
                    if u64::from(dst.uidnext) + batch.len() as u64 > u64::from(u32::MAX) {
                        return Err(MutationError::NotAllowed("mailbox has used every UID"));
                    }
                    // UIDs from UIDNEXT up, as each append raises it; the
                    // tree is summed up once for the batch.
                    let copies = batch
                        .iter()
                        .zip(dst.uidnext..)
                        .map(|((_, m), uid)| mutate::copy_of(m, &u, id, uid, Id::random()))
                        .collect();
                    mutate::emit_appends(t, c, &u, id, copies)?;
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
    tracing::info!(
        user = %user,
        entries = rep.entries_replayed,
        replay_ms = replayed.as_millis() as u64,
        scratch_apply_ms = scratch_apply.as_millis() as u64,
        copies_ms = (started.elapsed() - replayed).as_millis() as u64,
        "point-in-time restore done"
    );
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use crate::event::{Flags, Id};
    use crate::mutate::{self, NewMessage};
    use crate::store::{wal_options, Store};
    use crate::views::ViewRead;

    fn open(dir: &std::path::Path) -> Store {
        let mut o = wal_options("n");
        o.sync = false;
        Store::open(dir, "n", o).unwrap()
    }

    /// Appends applied as one batch with one climb of the tree leave the
    /// tree the views call for (as appending them one by one does: the
    /// same check on a second store), and a batch holding anything else
    /// is refused whole.
    #[test]
    fn a_batch_of_appends_leaves_the_tree_one_by_one_leaves() {
        const U: &str = "u@example.org";
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let stores = [open(da.path()), open(db.path())];
        for (i, s) in stores.iter().enumerate() {
            s.run_blocking(|t, c| {
                mutate::create_user(t, c, U, "$argon2id$x".into(), 1_700_000_000)?;
                mutate::create_mailbox(t, c, U, "Big", None, 1_700_000_000)?;
                // A few already there, so the batch starts above them.
                for k in 0..3 {
                    let m = NewMessage::new(format!("Subject: {k}\r\n\r\nx\r\n").into_bytes(), Flags::default(), 1_700_000_000);
                    mutate::append(t, c, U, "Big", &m)?;
                }
                Ok(())
            })
            .unwrap();
            let v = s.views();
            let big = v.mailbox_by_name(U, "Big").unwrap().unwrap();
            let msgs = v.messages(big.id).unwrap();
            drop(v);
            // 150 copies of the three, over more than two leaves.
            let copies: Vec<_> = (0..150u32)
                .map(|k| mutate::copy_of(&msgs[k as usize % 3].1, U, big.id, big.uidnext + k, Id([k as u8 + 1; 16])))
                .collect();
            s.run_blocking(move |t, c| {
                if i == 0 {
                    mutate::emit_appends(t, c, U, big.id, copies)?;
                } else {
                    for e in copies {
                        mutate::emit(t, c, e)?;
                    }
                }
                Ok(())
            })
            .unwrap();
            let v = s.views();
            let kept: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = v.vscan(&crate::merkle::keys::all()).unwrap().into_iter().collect();
            assert_eq!(
                kept,
                crate::merkle::build(&v).unwrap(),
                "the tree kept equals the tree built from the views"
            );
            assert_eq!(v.messages(big.id).unwrap().len(), 153);
            assert_eq!(crate::merkle::node_root(&v).unwrap().1, 153);
            // Another event in the batch: refused, nothing appended.
            let before = s.wal().last_order();
            let mixed = vec![
                mutate::copy_of(&msgs[0].1, U, big.id, 200, Id([200; 16])),
                mutate::copy_of(&msgs[0].1, U, big.id, 0, Id([201; 16])),
            ];
            let r = s.run_blocking(move |t, c| mutate::emit_appends(t, c, U, big.id, mixed).map(|_| ()));
            assert!(r.is_err());
            assert_eq!(s.wal().last_order(), before);
        }
    }
}
