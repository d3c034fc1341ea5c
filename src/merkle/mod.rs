//! Merkle summaries of what mirrored nodes must agree on, kept in the views
//! and changed in the same transaction as the views they summarise, so two
//! nodes compare (and name their differences) without scanning their mail.
//!
//! # What is summarised, and why
//! - **Messages**, per mailbox, by UID: GUID, body hash, size, internal date
//!   (and its zone), and flags. All of it is set by the append event or by
//!   flag events and shown to clients, so it must converge.
//! - **Left out:** MODSEQ (each node numbers its own apply order), and the
//!   per-flag clocks (HLC, origin). The clocks only decide how later
//!   concurrent changes merge; a repair writes the reference node's flags
//!   with a clock of its own, and that must not count as a difference
//!   afterwards. Messages kept aside by a UID collision are not shown to
//!   clients and are left to the conflict report.
//! - **Mailboxes**, per user: id, name, UIDVALIDITY, UIDNEXT, special use,
//!   and the root of its messages. **Users**: the account record (password
//!   hash), the mailboxes and the subscriptions. **The node**: every user
//!   and the replicated configuration keys.
//!
//! # Shape
//! Every tree node is a sorted list of entries `(key, hash, count)`; its
//! hash is blake3 over its kind and its entries (see `docs/format.md`).
//! A mailbox's messages form a trie on the UID, 64 ways at each level: a
//! leaf (level 0) holds the messages of 64 consecutive UIDs, level *k*
//! covers 64^(k+1) UIDs, and level 4 is the mailbox's root. A user's node
//! lists the account, its mailboxes and its subscriptions. Users hang from
//! a two-level trie on the first 12 bits of blake3(user), under the users'
//! root. The node root combines the users' root and the configuration.
//!
//! [`update`] is called by `views::apply` after every event: it sums up
//! again what the event touched, from the views as they now are.

mod build;
mod update;

pub use build::{build, build_stored, ensure, invalidate, node_root, read_node, report, DigestReport, MailboxDigest, UserDigest, FORMAT};
pub use update::{refresh_messages_of, refresh_place, update};

use crate::event::{Id, SpecialUse};
use crate::views::{MailboxRec, MessageRec, ViewError};

/// A blake3 hash.
pub type Hash = [u8; 32];

/// Deepest level of a mailbox's message trie: its root.
pub const ROOT_LEVEL: u8 = 4;
/// UIDs per leaf, and children per inner node, as a power of two.
pub const FANOUT_BITS: u32 = 6;

/// Node kinds (the first byte hashed for a node).
pub mod kind {
    /// Levels 0..=4 of a mailbox's message trie are kinds 0..=4.
    pub const USER: u8 = b'u';
    pub const BUCKET: u8 = b'b';
    pub const GROUP: u8 = b'g';
    pub const USERS: u8 = b'r';
    pub const CONFIG: u8 = b'c';
    pub const NODE: u8 = b'N';
}

/// Keys of the tree in the views column family (prefix `T`).
pub mod keys {
    use crate::event::Id;

    pub const PREFIX: u8 = b'T';

    /// `T m mailbox-id level index(u32 BE)`: a node of a mailbox's trie.
    pub fn mailbox_node(mailbox: Id, level: u8, index: u32) -> Vec<u8> {
        let mut k = mailbox_prefix(mailbox);
        k.push(level);
        k.extend_from_slice(&index.to_be_bytes());
        k
    }
    pub fn mailbox_prefix(mailbox: Id) -> Vec<u8> {
        let mut k = Vec::with_capacity(23);
        k.extend_from_slice(&[PREFIX, b'm']);
        k.extend_from_slice(&mailbox.0);
        k
    }
    /// Whether `key` names a node of a mailbox's trie
    /// ([`mailbox_node`]).
    pub fn is_mailbox_node(key: &[u8]) -> bool {
        key.len() == 23 && key.starts_with(&[PREFIX, b'm']) && key[18] <= super::ROOT_LEVEL
    }
    /// `T u user`: a user's node.
    pub fn user(user: &str) -> Vec<u8> {
        let mut k = vec![PREFIX, b'u'];
        k.extend_from_slice(user.as_bytes());
        k
    }
    pub fn users_prefix() -> Vec<u8> {
        vec![PREFIX, b'u']
    }
    /// `T n 01 bucket(u16 BE)`: the users of one bucket.
    pub fn bucket(bucket: u16) -> Vec<u8> {
        let mut k = vec![PREFIX, b'n', 1];
        k.extend_from_slice(&bucket.to_be_bytes());
        k
    }
    /// `T n 02 group`: the buckets of one group (64 buckets).
    pub fn group(group: u8) -> Vec<u8> {
        vec![PREFIX, b'n', 2, group]
    }
    /// `T n 03`: the users' root.
    pub fn users_root() -> Vec<u8> {
        vec![PREFIX, b'n', 3]
    }
    /// `T c`: the replicated configuration.
    pub fn config() -> Vec<u8> {
        vec![PREFIX, b'c']
    }
    /// Every key of the tree.
    pub fn all() -> Vec<u8> {
        vec![PREFIX]
    }
}

/// One entry of a node: a child (or a message, an account, a
/// subscription, a configuration key) by its key, with its hash and the
/// number of messages below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub hash: Hash,
    pub count: u64,
}

/// A tree node: entries sorted by key, keys unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub entries: Vec<Entry>,
}

/// A node's hash and message count, as its parent holds them.
pub type Summary = (Hash, u64);

fn hasher(context: &str) -> blake3::Hasher {
    blake3::Hasher::new_derive_key(context)
}

impl Node {
    /// The entries as hashed and stored: per entry `klen u16 BE, key,
    /// hash, count u64 BE`.
    pub fn entries_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.entries.iter().map(|e| e.key.len() + 42).sum());
        for e in &self.entries {
            b.extend_from_slice(&(e.key.len() as u16).to_be_bytes());
            b.extend_from_slice(&e.key);
            b.extend_from_slice(&e.hash);
            b.extend_from_slice(&e.count.to_be_bytes());
        }
        b
    }

    pub fn count(&self) -> u64 {
        self.entries.iter().map(|e| e.count).fold(0u64, |a, c| a.saturating_add(c))
    }

    pub fn hash(&self, kind: u8) -> Hash {
        hash_entries(kind, &self.entries_bytes())
    }

    pub fn summary(&self, kind: u8) -> Summary {
        (self.hash(kind), self.count())
    }

    /// Stored form: `hash, count u64 BE, entries`.
    pub fn encode(&self, kind: u8) -> Vec<u8> {
        let entries = self.entries_bytes();
        let mut b = Vec::with_capacity(40 + entries.len());
        b.extend_from_slice(&hash_entries(kind, &entries));
        b.extend_from_slice(&self.count().to_be_bytes());
        b.extend_from_slice(&entries);
        b
    }

    /// Decode a stored node; `key` names it in errors.
    pub fn decode(key: &[u8], b: &[u8]) -> Result<Node, ViewError> {
        let bad = |reason: String| ViewError::Corrupt {
            key: hex::encode(key),
            reason,
        };
        let mut rest = b
            .get(40..)
            .ok_or_else(|| bad(format!("tree node of {} bytes, shorter than 40", b.len())))?;
        let mut entries: Vec<Entry> = Vec::new();
        while !rest.is_empty() {
            let at = b.len() - rest.len();
            let short = || bad(format!("tree node entry at byte {at} is cut short"));
            let klen = u16::from_be_bytes(rest.get(..2).ok_or_else(short)?.try_into().map_err(|_| short())?) as usize;
            let body = rest.get(2..2 + klen + 40).ok_or_else(short)?;
            let key = body[..klen].to_vec();
            if entries.last().is_some_and(|l| l.key >= key) {
                return Err(bad(format!("tree node entry at byte {at} is out of order")));
            }
            entries.push(Entry {
                key,
                hash: body[klen..klen + 32].try_into().map_err(|_| short())?,
                count: u64::from_be_bytes(body[klen + 32..].try_into().map_err(|_| short())?),
            });
            rest = &rest[2 + klen + 40..];
        }
        Ok(Node { entries })
    }

    /// Set (`Some`) or remove (`None`) the entry under `key`.
    pub fn set(&mut self, key: &[u8], value: Option<Summary>) {
        match (self.entries.binary_search_by(|e| e.key.as_slice().cmp(key)), value) {
            (Ok(i), Some((hash, count))) => {
                self.entries[i].hash = hash;
                self.entries[i].count = count;
            }
            (Ok(i), None) => {
                self.entries.remove(i);
            }
            (Err(i), Some((hash, count))) => self.entries.insert(
                i,
                Entry {
                    key: key.to_vec(),
                    hash,
                    count,
                },
            ),
            (Err(_), None) => {}
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.key.as_slice().cmp(key))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// Bytes of an entry's hash a [`Node::digest`] carries: enough to steer a
/// comparison down the tree (two different children look alike with
/// probability 2^-64), while a node's full hash still decides whether
/// two trees are equal.
pub const DIGEST_HASH_BYTES: usize = 8;

/// One entry of a [`Node::digest`].
#[derive(serde::Serialize, serde::Deserialize)]
struct DigestEntry {
    key: serde_bytes::ByteBuf,
    hash: [u8; DIGEST_HASH_BYTES],
    count: u64,
}

impl Node {
    /// The node as a resync sends it for comparison: postcard
    /// `Vec<(key bytes, hash[..8], count varint)>`, about a quarter of the
    /// stored form for wide nodes.
    pub fn digest(&self) -> Vec<u8> {
        let entries: Vec<DigestEntry> = self
            .entries
            .iter()
            .map(|e| DigestEntry {
                key: serde_bytes::ByteBuf::from(e.key.clone()),
                hash: e.hash[..DIGEST_HASH_BYTES].try_into().expect("a hash is longer"),
                count: e.count,
            })
            .collect();
        postcard::to_allocvec(&entries).expect("a digest encodes")
    }

    /// Decode a [`Node::digest`]: entries whose hashes hold the digest's
    /// bytes, the rest zero (as [`Node::truncated`]). `key` names it in
    /// errors.
    pub fn from_digest(key: &[u8], b: &[u8]) -> Result<Node, ViewError> {
        let bad = |reason: String| ViewError::Corrupt {
            key: hex::encode(key),
            reason,
        };
        let entries: Vec<DigestEntry> = postcard::from_bytes(b).map_err(|e| bad(format!("tree node digest does not decode: {e}")))?;
        let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            if out.last().is_some_and(|l| l.key.as_slice() >= e.key.as_slice()) {
                return Err(bad(format!("tree node digest entry {i} is out of order")));
            }
            let mut hash = [0u8; 32];
            hash[..DIGEST_HASH_BYTES].copy_from_slice(&e.hash);
            out.push(Entry {
                key: e.key.into_vec(),
                hash,
                count: e.count,
            });
        }
        Ok(Node { entries: out })
    }

    /// The node with each entry's hash cut to what a digest carries (the
    /// rest zero), to compare with a node read from a digest.
    pub fn truncated(&self) -> Node {
        let mut n = self.clone();
        for e in &mut n.entries {
            e.hash[DIGEST_HASH_BYTES..].fill(0);
        }
        n
    }
}

/// Eighths of a mailbox trie node: its 64 slots (the entry key, a UID or a
/// child index, modulo 64) in 8 runs of 8, which a resync compares first
/// when a node is wide ([`Node::eighths`]), and then reads only the runs
/// that differ ([`Node::eighth`]).
pub const EIGHTHS: u8 = 8;

/// One eighth's summary: 8 bytes of its hash and the messages under it.
pub type EighthSummary = ([u8; DIGEST_HASH_BYTES], u64);

impl Node {
    /// The eighth (0..8) an entry of a mailbox trie node falls in; `None`
    /// for a key that is not a 4-byte index.
    pub fn eighth_of(key: &[u8]) -> Option<u8> {
        let n = u32::from_be_bytes(key.try_into().ok()?);
        Some(((n & ((1 << FANOUT_BITS) - 1)) >> 3) as u8)
    }

    /// The node with only the entries of eighth `e`.
    pub fn eighth(&self, e: u8) -> Node {
        Node {
            entries: self
                .entries
                .iter()
                .filter(|x| Node::eighth_of(&x.key) == Some(e))
                .cloned()
                .collect(),
        }
    }

    /// Summary of a mailbox trie node by eighths, as a resync sends it:
    /// postcard `(u8 bitmap of the eighths that hold entries, [(hash[..8],
    /// count varint)] for those eighths in order)`, where an eighth's hash
    /// is blake3 (context "tandem merkle eighth v1") over its entries in
    /// stored form (`Node::entries_bytes`). 74 bytes for a full leaf,
    /// against about 900 for its digest. Errors on a key that is not a
    /// 4-byte index.
    pub fn eighths(&self, key: &[u8]) -> Result<Vec<u8>, ViewError> {
        if let Some(x) = self.entries.iter().find(|x| Node::eighth_of(&x.key).is_none()) {
            return Err(ViewError::Corrupt {
                key: hex::encode(key),
                reason: format!("trie node entry {} is not a 4-byte index", hex::encode(&x.key)),
            });
        }
        let mut parts: Vec<EighthSummary> = Vec::new();
        let mut bitmap = 0u8;
        for e in 0..EIGHTHS {
            let part = self.eighth(e);
            if part.entries.is_empty() {
                continue;
            }
            bitmap |= 1 << e;
            let mut h = hasher("tandem merkle eighth v1");
            h.update(&part.entries_bytes());
            let hash: [u8; DIGEST_HASH_BYTES] = h.finalize().as_bytes()[..DIGEST_HASH_BYTES].try_into().expect("a hash is longer");
            parts.push((hash, part.count()));
        }
        Ok(postcard::to_allocvec(&(bitmap, parts)).expect("a summary encodes"))
    }

    /// Decode [`Node::eighths`]: each eighth's summary, `None` where it
    /// holds nothing. `key` names it in errors.
    pub fn from_eighths(key: &[u8], b: &[u8]) -> Result<[Option<EighthSummary>; EIGHTHS as usize], ViewError> {
        let bad = |reason: String| ViewError::Corrupt {
            key: hex::encode(key),
            reason,
        };
        let (bitmap, parts): (u8, Vec<EighthSummary>) =
            postcard::from_bytes(b).map_err(|e| bad(format!("eighths summary does not decode: {e}")))?;
        if parts.len() != bitmap.count_ones() as usize {
            return Err(bad(format!(
                "eighths summary names {} eighths and holds {}",
                bitmap.count_ones(),
                parts.len()
            )));
        }
        let mut out = [None; EIGHTHS as usize];
        let mut parts = parts.into_iter();
        for (e, slot) in out.iter_mut().enumerate() {
            if bitmap & (1 << e) != 0 {
                *slot = parts.next();
            }
        }
        Ok(out)
    }
}

/// blake3 (context "tandem merkle node v1") over `kind || entries`.
pub fn hash_entries(kind: u8, entries: &[u8]) -> Hash {
    let mut h = hasher("tandem merkle node v1");
    h.update(&[kind]);
    h.update(entries);
    *h.finalize().as_bytes()
}

/// The summary of a stored node without decoding its entries.
pub fn stored_summary(key: &[u8], b: &[u8]) -> Result<Summary, ViewError> {
    match (b.get(..32), b.get(32..40)) {
        (Some(h), Some(c)) => Ok((h.try_into().expect("32 bytes"), u64::from_be_bytes(c.try_into().expect("8 bytes")))),
        _ => Err(ViewError::Corrupt {
            key: hex::encode(key),
            reason: format!("tree node of {} bytes, shorter than 40", b.len()),
        }),
    }
}

/// The summary of an empty node of `kind`.
pub fn empty(kind: u8) -> Summary {
    (hash_entries(kind, &[]), 0)
}

/// Leaf hash of one message: blake3 (context "tandem merkle message v1")
/// over `guid, blob, size u64 BE, internal_date i64 BE, tz_minutes i16 BE,
/// nflags u16 BE, then per flag: len u16 BE, bytes` (flags sorted).
pub fn message_hash(m: &MessageRec) -> Hash {
    let mut h = hasher("tandem merkle message v1");
    h.update(&m.guid.0);
    h.update(&m.blob.0);
    h.update(&m.size.to_be_bytes());
    h.update(&m.internal_date.to_be_bytes());
    h.update(&m.tz_minutes.to_be_bytes());
    h.update(&(m.flags.len() as u16).to_be_bytes());
    for f in m.flags.iter() {
        h.update(&(f.len() as u16).to_be_bytes());
        h.update(f.as_bytes());
    }
    *h.finalize().as_bytes()
}

pub fn special_use_byte(s: Option<SpecialUse>) -> u8 {
    match s {
        None => 0,
        Some(SpecialUse::Sent) => 1,
        Some(SpecialUse::Drafts) => 2,
        Some(SpecialUse::Trash) => 3,
        Some(SpecialUse::Junk) => 4,
        Some(SpecialUse::Archive) => 5,
    }
}

/// A mailbox's entry in its user's node: blake3 (context "tandem merkle
/// mailbox v1") over `id, uidvalidity u32 BE, uidnext u32 BE, special use
/// u8, name len u16 BE, name, messages root hash, count u64 BE`.
pub fn mailbox_hash(mb: &MailboxRec, root: Summary) -> Hash {
    let mut h = hasher("tandem merkle mailbox v1");
    h.update(&mb.id.0);
    h.update(&mb.uidvalidity.to_be_bytes());
    h.update(&mb.uidnext.to_be_bytes());
    h.update(&[special_use_byte(mb.special_use)]);
    h.update(&(mb.name.len() as u16).to_be_bytes());
    h.update(mb.name.as_bytes());
    h.update(&root.0);
    h.update(&root.1.to_be_bytes());
    *h.finalize().as_bytes()
}

/// The account entry: blake3 (context "tandem merkle account v1") over the
/// password hash as stored.
pub fn account_hash(password_hash: &str) -> Hash {
    let mut h = hasher("tandem merkle account v1");
    h.update(password_hash.as_bytes());
    *h.finalize().as_bytes()
}

/// A subscription entry: blake3 (context "tandem merkle subscription v1")
/// over the name.
pub fn subscription_hash(name: &str) -> Hash {
    let mut h = hasher("tandem merkle subscription v1");
    h.update(name.as_bytes());
    *h.finalize().as_bytes()
}

/// A configuration entry: blake3 (context "tandem merkle config v1") over
/// the value.
pub fn config_hash(value: &[u8]) -> Hash {
    let mut h = hasher("tandem merkle config v1");
    h.update(value);
    *h.finalize().as_bytes()
}

/// Keys of a user's entries.
pub fn account_key() -> Vec<u8> {
    vec![b'a']
}
pub fn mailbox_key(id: Id) -> Vec<u8> {
    let mut k = vec![b'm'];
    k.extend_from_slice(&id.0);
    k
}
pub fn subscription_key(name: &str) -> Vec<u8> {
    let mut k = vec![b's'];
    k.extend_from_slice(name.as_bytes());
    k
}

/// The bucket (0..4096) of a user: the first 12 bits of blake3(user).
pub fn bucket_of(user: &str) -> u16 {
    let h = blake3::hash(user.as_bytes());
    let b = h.as_bytes();
    ((b[0] as u16) << 4) | (b[1] as u16 >> 4)
}

/// The group (0..64) of a bucket.
pub fn group_of(bucket: u16) -> u8 {
    (bucket >> 6) as u8
}

/// The key of `uid` in a level-`level` node of a mailbox trie.
pub fn level_key(level: u8, uid: u32) -> u32 {
    uid.checked_shr(FANOUT_BITS * level as u32).unwrap_or(0)
}

/// The index of the level-`level` node holding the entry `key`.
pub fn node_index(level: u8, key: u32) -> u32 {
    if level >= ROOT_LEVEL {
        0
    } else {
        key >> FANOUT_BITS
    }
}

/// The UIDs a leaf (level 0 node `index`) covers.
pub fn leaf_range(index: u32) -> (u32, u32) {
    let lo = index << FANOUT_BITS;
    (lo, lo | ((1 << FANOUT_BITS) - 1))
}

/// The node root: blake3 node of kind `N` over the entries `c` (the
/// configuration node's summary) and `u` (the users' root), each present
/// only when not empty.
pub fn combine_root(config: Option<Summary>, users: Option<Summary>) -> Summary {
    let mut n = Node::default();
    n.set(b"c", config);
    n.set(b"u", users);
    n.summary(kind::NODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_carries_keys_counts_and_cut_hashes_and_rejects_damage() {
        let mut n = Node::default();
        for (k, h, c) in [(b"alice".to_vec(), [7u8; 32], 3u64), (b"bob".to_vec(), [9; 32], 300)] {
            n.set(&k, Some((h, c)));
        }
        let d = n.digest();
        // Per entry: key length, key, 8 hash bytes, varint count.
        assert_eq!(d.len(), 1 + (1 + 5 + 8 + 1) + (1 + 3 + 8 + 2));
        let back = Node::from_digest(b"k", &d).unwrap();
        assert_eq!(back, n.truncated());
        assert_eq!(back.count(), 303);
        assert_eq!(back.entries[0].hash[..8], [7; 8]);
        assert_eq!(back.entries[0].hash[8..], [0; 24]);
        // Cut short, and entries out of order.
        assert!(Node::from_digest(b"k", &d[..d.len() - 1]).is_err());
        let swapped = Node {
            entries: vec![n.entries[1].clone(), n.entries[0].clone()],
        };
        assert!(Node::from_digest(b"k", &swapped.digest()).is_err());
    }

    #[test]
    fn eighths_name_the_runs_that_differ_and_reject_damage() {
        let mut n = Node::default();
        for uid in 64..128u32 {
            n.set(&uid.to_be_bytes(), Some(([uid as u8; 32], 1)));
        }
        let s = n.eighths(b"k").unwrap();
        // Bitmap, length, and 8 x (8 hash bytes, count 1).
        assert_eq!(s.len(), 1 + 1 + 8 * 9);
        let mut m = n.clone();
        m.set(&100u32.to_be_bytes(), Some(([0; 32], 1)));
        m.set(&70u32.to_be_bytes(), None);
        let (a, b) = (
            Node::from_eighths(b"k", &s).unwrap(),
            Node::from_eighths(b"k", &m.eighths(b"k").unwrap()).unwrap(),
        );
        let differ: Vec<usize> = (0..8).filter(|e| a[*e] != b[*e]).collect();
        // UID 70 is slot 6 (eighth 0), UID 100 slot 36 (eighth 4).
        assert_eq!(differ, [0, 4]);
        assert_eq!(b[0].unwrap().1, 7);
        // The eighths put back together are the node.
        let whole: Vec<Entry> = (0..EIGHTHS).flat_map(|e| n.eighth(e).entries).collect();
        assert_eq!(whole, n.entries);
        // An empty eighth is left out of the summary.
        let mut sparse = Node::default();
        sparse.set(&3u32.to_be_bytes(), Some(([1; 32], 1)));
        let e = Node::from_eighths(b"k", &sparse.eighths(b"k").unwrap()).unwrap();
        assert!(e[0].is_some() && e[1..].iter().all(Option::is_none));
        // Damage: a bitmap naming more eighths than it holds, a key that
        // is not an index.
        let bad = postcard::to_allocvec(&(0b11u8, vec![([0u8; 8], 1u64)])).unwrap();
        assert!(Node::from_eighths(b"k", &bad).is_err());
        assert!(Node::from_eighths(b"k", &s[..s.len() - 1]).is_err());
        let mut odd = Node::default();
        odd.set(b"alice", Some(([1; 32], 1)));
        assert!(odd.eighths(b"k").is_err());
    }

    #[test]
    fn node_round_trips_and_rejects_damage() {
        let mut n = Node::default();
        n.set(&7u32.to_be_bytes(), Some(([1; 32], 1)));
        n.set(&3u32.to_be_bytes(), Some(([2; 32], 1)));
        n.set(&5u32.to_be_bytes(), Some(([3; 32], 1)));
        n.set(&5u32.to_be_bytes(), None);
        assert_eq!(n.entries.len(), 2);
        assert_eq!(n.entries[0].key, 3u32.to_be_bytes());
        let b = n.encode(0);
        assert_eq!(Node::decode(b"k", &b).unwrap(), n);
        assert_eq!(stored_summary(b"k", &b).unwrap(), n.summary(0));
        assert_ne!(n.hash(0), n.hash(1), "the kind is hashed");
        assert!(Node::decode(b"k", &b[..b.len() - 1]).is_err());
        assert!(Node::decode(b"k", &b[..20]).is_err());
        // Entries out of order are refused.
        let mut swapped = b[..40].to_vec();
        let e = n.entries_bytes();
        let half = e.len() / 2;
        swapped.extend_from_slice(&e[half..]);
        swapped.extend_from_slice(&e[..half]);
        assert!(Node::decode(b"k", &swapped).is_err());
    }

    #[test]
    fn trie_indices() {
        assert_eq!(level_key(0, 130), 130);
        assert_eq!(node_index(0, 130), 2);
        assert_eq!(level_key(1, 130), 2);
        assert_eq!(node_index(1, 2), 0);
        assert_eq!(level_key(4, u32::MAX), 255);
        assert_eq!(node_index(4, 255), 0);
        assert_eq!(leaf_range(2), (128, 191));
        assert!(bucket_of("someone@example.org") < 4096);
        assert!(group_of(4095) < 64);
    }
}
