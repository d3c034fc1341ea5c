//! STATUS counts of large mailboxes, kept between commands.
//!
//! `STATUS INBOX (MESSAGES UNSEEN)` needs the flags of every message in the
//! mailbox; read from the views each time, a 10,000-message INBOX cost
//! 2.7 ms a command, and clients ask it of every folder every few minutes.
//! This cache keeps, per mailbox, each message's UID with its `\Seen` and
//! `\Deleted` bits, as of a position in the mailbox's history (its
//! HIGHESTMODSEQ). A later STATUS reads only what changed since then from
//! the change index (`views::keys::change`: the last change of every
//! message and every expunge), and the records of those messages, so it
//! costs one lookup when nothing changed and a few when something did.
//!
//! Every change to a mailbox's messages raises its HIGHESTMODSEQ in the
//! same write as the change index (`views::apply`), so an entry whose
//! position equals the mailbox record's is current. Bringing an entry up
//! to date reads each changed message's record as it is now, so a change
//! committed after the mailbox record was read is taken in early and
//! taken in again later, with the same result.
//!
//! Memory is bounded: at most [`MAX_MESSAGES`] messages over all entries;
//! the least recently used entries give way.

use crate::event::Id;
use crate::views::{ViewError, ViewRead, Views};
use std::collections::HashMap;
use std::sync::Mutex;

/// Messages held over all mailboxes (8 bytes each).
pub const MAX_MESSAGES: usize = 1 << 20;

/// Mailboxes with fewer messages than this are counted from the views each
/// time (a few records cost less than keeping them).
pub const MIN_MESSAGES: usize = 64;

const SEEN: u8 = 1;
const DELETED: u8 = 2;

/// How many messages a mailbox holds, and of them how many are seen and
/// how many deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub messages: usize,
    pub seen: usize,
    pub deleted: usize,
}

struct Entry {
    /// The mailbox's HIGHESTMODSEQ these bits are current at.
    modseq: u64,
    /// (UID, bits), in UID order.
    bits: Vec<(u32, u8)>,
    /// How many of `bits` are seen and how many deleted, kept with them
    /// (a STATUS that finds the entry current reads these, not every bit).
    seen: usize,
    deleted: usize,
    /// When this entry was last used (a counter, for eviction).
    used: u64,
}

impl Entry {
    fn new(modseq: u64, bits: Vec<(u32, u8)>) -> Entry {
        let mut e = Entry {
            modseq,
            bits,
            seen: 0,
            deleted: 0,
            used: 0,
        };
        for i in 0..e.bits.len() {
            e.tally(e.bits[i].1, 1);
        }
        e
    }

    fn tally(&mut self, bits: u8, sign: isize) {
        self.seen = self.seen.wrapping_add_signed(sign * isize::from(bits & SEEN != 0));
        self.deleted = self.deleted.wrapping_add_signed(sign * isize::from(bits & DELETED != 0));
    }

    fn counts(&self) -> Counts {
        Counts {
            messages: self.bits.len(),
            seen: self.seen,
            deleted: self.deleted,
        }
    }

    fn set(&mut self, uid: u32, bits: Option<u8>) {
        match (self.bits.binary_search_by_key(&uid, |e| e.0), bits) {
            (Ok(i), Some(b)) => {
                self.tally(self.bits[i].1, -1);
                self.tally(b, 1);
                self.bits[i].1 = b;
            }
            (Ok(i), None) => {
                let (_, old) = self.bits.remove(i);
                self.tally(old, -1);
            }
            (Err(i), Some(b)) => {
                self.tally(b, 1);
                self.bits.insert(i, (uid, b));
            }
            (Err(_), None) => {}
        }
    }
}

fn bits_of(flags: &crate::event::Flags) -> u8 {
    (if flags.contains("\\Seen") { SEEN } else { 0 }) | (if flags.contains("\\Deleted") { DELETED } else { 0 })
}

#[derive(Default)]
pub struct StatusCounts {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Id, Entry>,
    held: usize,
    clock: u64,
}

impl StatusCounts {
    /// The counts of `mailbox`, whose mailbox record says HIGHESTMODSEQ is
    /// `modseq`: from the entry kept for it, brought up to date from the
    /// change index, or from a scan of its messages.
    pub fn counts(&self, views: &Views, mailbox: Id, modseq: u64) -> Result<Counts, ViewError> {
        let kept = {
            let mut inner = self.inner.lock().expect("status counts lock");
            inner.clock += 1;
            let now = inner.clock;
            match inner.entries.get_mut(&mailbox) {
                Some(e) if e.modseq == modseq => {
                    e.used = now;
                    return Ok(e.counts());
                }
                _ => {}
            }
            inner.entries.remove(&mailbox).inspect(|e| inner.held -= e.bits.len())
        };
        // Read outside the lock: other sessions' mailboxes are not held up.
        let entry = match kept {
            Some(mut e) => {
                let changed = views.changes_since(mailbox, e.modseq)?;
                let mut uids: Vec<u32> = changed.iter().map(|(u, _)| *u).collect();
                uids.sort_unstable();
                uids.dedup();
                for (uid, rec) in uids.iter().zip(views.messages_in(mailbox, &uids)?) {
                    e.set(*uid, rec.map(|m| bits_of(&m.flags)));
                }
                e.modseq = modseq;
                e
            }
            None => Entry::new(
                modseq,
                views
                    .message_flags(mailbox)?
                    .into_iter()
                    .map(|(uid, f)| (uid, bits_of(&f)))
                    .collect(),
            ),
        };
        let counts = entry.counts();
        if entry.bits.len() >= MIN_MESSAGES {
            self.keep(mailbox, entry);
        }
        Ok(counts)
    }

    fn keep(&self, mailbox: Id, mut entry: Entry) {
        let mut inner = self.inner.lock().expect("status counts lock");
        if entry.bits.len() > MAX_MESSAGES {
            return;
        }
        while inner.held + entry.bits.len() > MAX_MESSAGES {
            let Some(oldest) = inner.entries.iter().min_by_key(|(_, e)| e.used).map(|(id, _)| *id) else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.held -= e.bits.len();
            }
        }
        // Another session may have kept one meanwhile: the later position
        // stays.
        if inner.entries.get(&mailbox).is_some_and(|e| e.modseq >= entry.modseq) {
            return;
        }
        inner.clock += 1;
        entry.used = inner.clock;
        inner.held += entry.bits.len();
        if let Some(old) = inner.entries.insert(mailbox, entry) {
            inner.held -= old.bits.len();
        }
    }

    /// Messages held over all entries.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.inner.lock().expect("status counts lock").held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FlagOp, Flags};
    use crate::mutate::{self, NewMessage};
    use crate::store::{wal_options, Store};

    /// The counts read from every message, as STATUS read them before.
    fn scanned(v: &Views, mailbox: Id) -> Counts {
        let flags = v.message_flags(mailbox).unwrap();
        Counts {
            messages: flags.len(),
            seen: flags.iter().filter(|(_, f)| f.contains("\\Seen")).count(),
            deleted: flags.iter().filter(|(_, f)| f.contains("\\Deleted")).count(),
        }
    }

    /// After every step of a random run of appends, flag changes,
    /// expunges and moves in and out, the kept counts of both mailboxes
    /// equal a scan's, and the entries stay kept (each step reads only
    /// what changed).
    #[test]
    fn kept_counts_follow_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n", wal_options("n")).unwrap();
        store.run_blocking(|t, c| mutate::create_user(t, c, "u", "h".into(), 1)).unwrap();
        store
            .run_blocking(|t, c| mutate::create_mailbox(t, c, "u", "Other", None, 1).map(|_| ()))
            .unwrap();
        let append = |mailbox: &'static str, i: usize, flags: Flags| {
            let m = NewMessage::new(format!("Subject: {i}\r\n\r\nx\r\n").into_bytes(), flags, 1);
            store
                .run_blocking(move |t, c| mutate::append(t, c, "u", mailbox, &m).map(|_| ()))
                .unwrap();
        };
        for i in 0..(MIN_MESSAGES + 20) {
            append("INBOX", i, if i % 3 == 0 { Flags::new(["\\Seen"]) } else { Flags::default() });
        }
        let v = store.views();
        let inbox = v.mailbox_by_name("u", "INBOX").unwrap().unwrap().id;
        let other = v.mailbox_by_name("u", "Other").unwrap().unwrap().id;
        let cache = StatusCounts::default();
        let check = |step: &str| {
            for (name, id) in [("INBOX", inbox), ("Other", other)] {
                let mb = v.mailbox_by_name("u", name).unwrap().unwrap();
                assert_eq!(
                    cache.counts(&v, id, mb.highestmodseq).unwrap(),
                    scanned(&v, id),
                    "{name} after {step}"
                );
            }
        };
        check("the appends");
        assert!(cache.held() >= MIN_MESSAGES, "a large mailbox is kept");
        let mut rng = crate::testrng::XorShift(0x5eed_c0de);
        for step in 0..300 {
            let uids: Vec<u32> = v.message_flags(inbox).unwrap().into_iter().map(|(u, _)| u).collect();
            let pick: Vec<u32> = (0..1 + rng.below(4))
                .map(|_| uids[rng.below(uids.len())])
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let what = rng.below(6);
            match what {
                0 => append(
                    "INBOX",
                    1000 + step,
                    if rng.below(2) == 0 {
                        Flags::new(["\\Seen", "\\Deleted"])
                    } else {
                        Flags::default()
                    },
                ),
                1 | 2 => {
                    let op = if what == 1 { FlagOp::Add } else { FlagOp::Remove };
                    let flags = Flags::new([["\\Seen"], ["\\Deleted"]][rng.below(2)]);
                    store
                        .run_blocking(move |t, c| mutate::store_flags(t, c, "u", inbox, &pick, op, &flags).map(|_| ()))
                        .unwrap();
                }
                3 => {
                    if uids.len() > MIN_MESSAGES {
                        store
                            .run_blocking(move |t, c| mutate::expunge(t, c, "u", inbox, &pick).map(|_| ()))
                            .unwrap();
                    }
                }
                _ => {
                    // A move out, or back in.
                    let (from, to, pick) = if what == 4 {
                        (inbox, other, pick)
                    } else {
                        let back: Vec<u32> = v.message_flags(other).unwrap().into_iter().map(|(u, _)| u).take(2).collect();
                        (other, inbox, back)
                    };
                    store
                        .run_blocking(move |t, c| mutate::copy(t, c, "u", from, &pick, to, true, false).map(|_| ()))
                        .unwrap();
                }
            }
            check(&format!("step {step} ({what})"));
        }
        assert!(cache.held() >= MIN_MESSAGES, "the entry was kept throughout");
    }

    /// The bound on messages held gives way by least recent use, and a
    /// mailbox larger than the whole bound is never kept.
    #[test]
    fn entries_give_way_to_the_bound() {
        let cache = StatusCounts::default();
        let entry = |n: usize, modseq: u64| Entry::new(modseq, (0..n as u32).map(|u| (u, 0)).collect());
        let half = MAX_MESSAGES / 2;
        cache.keep(Id([1; 16]), entry(half, 1));
        cache.keep(Id([2; 16]), entry(half, 1));
        assert_eq!(cache.held(), 2 * half);
        // Id 1 was used least recently: it gives way.
        cache.keep(Id([3; 16]), entry(10, 1));
        {
            let inner = cache.inner.lock().unwrap();
            assert!(!inner.entries.contains_key(&Id([1; 16])));
            assert!(inner.entries.contains_key(&Id([2; 16])) && inner.entries.contains_key(&Id([3; 16])));
        }
        assert_eq!(cache.held(), half + 10);
        // An older position does not replace a newer one.
        cache.keep(Id([3; 16]), entry(20, 7));
        cache.keep(Id([3; 16]), entry(30, 5));
        assert_eq!(cache.held(), half + 20);
        cache.keep(Id([4; 16]), entry(MAX_MESSAGES + 1, 1));
        assert_eq!(cache.held(), half + 20);
    }
}
