//! SORT and THREAD (RFC 5256): base subjects, sort keys, and the
//! ORDEREDSUBJECT and REFERENCES threading algorithms over messages the
//! caller has already searched and summarised. Pure: no I/O, and no
//! recursion (a chain of replies as long as the mailbox is just a loop).

use std::collections::HashMap;

/// One SORT criterion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Arrival,
    Cc,
    Date,
    From,
    Size,
    Subject,
    To,
}

/// A criterion with its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortBy {
    pub key: SortKey,
    pub reverse: bool,
}

impl SortKey {
    pub fn parse(word: &str) -> Option<SortKey> {
        Some(match word {
            "ARRIVAL" => SortKey::Arrival,
            "CC" => SortKey::Cc,
            "DATE" => SortKey::Date,
            "FROM" => SortKey::From,
            "SIZE" => SortKey::Size,
            "SUBJECT" => SortKey::Subject,
            "TO" => SortKey::To,
            _ => return None,
        })
    }
}

/// A threading algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadAlg {
    OrderedSubject,
    References,
}

/// What SORT and THREAD need of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// What the response names it by (sequence number or UID).
    pub id: u32,
    /// Position in the mailbox: the last tie-breaker.
    pub seq: u32,
    /// INTERNALDATE, seconds.
    pub arrival: i64,
    /// The `Date:` header in UTC, or INTERNALDATE when it has none that
    /// parses (RFC 5256 section 2.2).
    pub date: i64,
    pub size: u64,
    /// Base subject (section 2.1), as [`base_subject`] makes it.
    pub subject: String,
    /// The subject had a reply or forward marker ([`base_subject`]).
    pub reply: bool,
    /// Local part of the first From / To / Cc address, lower-cased.
    pub from: String,
    pub to: String,
    pub cc: String,
    /// Message-ID, without angle brackets.
    pub message_id: Option<String>,
    /// References (or, without them, the first In-Reply-To message id).
    pub references: Vec<String>,
}

/// The base subject of RFC 5256 section 2.1 (the subject already decoded
/// to UTF-8): leading `Re:`, `Fw:`, `Fwd:` and `[blob]`s, trailing
/// `(fwd)`, and `[fwd: ...]` wrappers removed, whitespace collapsed,
/// lower-cased for comparison.
pub fn base_subject(subject: &str) -> String {
    base_subject_reply(subject).0
}

/// [`base_subject`], and whether anything marking a reply or forward was
/// taken off (for THREAD REFERENCES' gathering by subject).
pub fn base_subject_reply(subject: &str) -> (String, bool) {
    let mut reply = false;
    let mut s: String = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    loop {
        // (2) trailers.
        loop {
            let t = s.trim_end();
            if t.len() >= 5 && t[t.len() - 5..].eq_ignore_ascii_case("(fwd)") {
                s = t[..t.len() - 5].to_string();
            } else {
                s = t.to_string();
                break;
            }
        }
        // (3)-(5) leaders and blobs, until nothing changes.
        loop {
            let before = s.len();
            s = s.trim_start().to_string();
            if let Some(rest) = strip_leader(&s) {
                s = rest.to_string();
                reply = true;
            } else if let Some(rest) = strip_blob(&s) {
                if !rest.trim().is_empty() {
                    s = rest.to_string();
                }
            }
            if s.len() == before {
                break;
            }
        }
        // (6) [fwd: ...]
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("[fwd:") && s.ends_with(']') {
            s = s[5..s.len() - 1].to_string();
            reply = true;
            continue;
        }
        break;
    }
    (s.to_lowercase(), reply)
}

/// The message ids (`<...>`, brackets taken off) in a header value, at most
/// [`MAX_REFERENCES`].
pub fn message_ids(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let Some(len) = rest[open..].find('>') else { break };
        let id = rest[open + 1..open + len].trim();
        if !id.is_empty() && out.len() < MAX_REFERENCES {
            out.push(id.to_string());
        }
        rest = &rest[open + len + 1..];
    }
    out
}

/// Deepest a thread grows: a reply below this depth starts a thread of its
/// own. Linking walks up the tree, so this bounds the work per message.
pub const MAX_DEPTH: usize = 1000;

/// Most references of one message that threading follows (the last ones
/// matter most: a longer list is cut at its start).
pub const MAX_REFERENCES: usize = 256;

/// `subj-refwd *WSP [subj-blob] ":"` at the start.
fn strip_leader(s: &str) -> Option<&str> {
    let lower = s.to_ascii_lowercase();
    let word = ["re", "fwd", "fw"].into_iter().find(|w| lower.starts_with(w))?;
    let mut rest = s[word.len()..].trim_start();
    if rest.starts_with('[') {
        rest = strip_blob(rest)?;
    }
    rest.strip_prefix(':')
}

/// `"[" *BLOBCHAR "]" *WSP` at the start.
fn strip_blob(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('[')?;
    let end = inner.find(['[', ']'])?;
    let rest = inner[end..].strip_prefix(']')?;
    Some(rest.trim_start())
}

fn compare(a: &Summary, b: &Summary, keys: &[SortBy]) -> std::cmp::Ordering {
    for k in keys {
        let o = match k.key {
            SortKey::Arrival => a.arrival.cmp(&b.arrival),
            SortKey::Cc => a.cc.cmp(&b.cc),
            SortKey::Date => a.date.cmp(&b.date),
            SortKey::From => a.from.cmp(&b.from),
            SortKey::Size => a.size.cmp(&b.size),
            SortKey::Subject => a.subject.cmp(&b.subject),
            SortKey::To => a.to.cmp(&b.to),
        };
        let o = if k.reverse { o.reverse() } else { o };
        if o.is_ne() {
            return o;
        }
    }
    a.seq.cmp(&b.seq)
}

/// SORT: the ids in the order of `keys`, ties in mailbox order.
pub fn sort(msgs: &mut [Summary], keys: &[SortBy]) -> Vec<u32> {
    msgs.sort_by(|a, b| compare(a, b, keys));
    msgs.iter().map(|m| m.id).collect()
}

/// A node of a thread tree: a message (index into the summaries) or a
/// placeholder for one that is referenced but not here.
#[derive(Debug, Clone, Default)]
struct Node {
    msg: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

struct Forest<'a> {
    nodes: Vec<Node>,
    msgs: &'a [Summary],
}

impl Forest<'_> {
    /// The date a node sorts by: its message's, or its first child's.
    fn date_key(&self, mut n: usize) -> (i64, u32) {
        for _ in 0..self.nodes.len() + 1 {
            match self.nodes[n].msg {
                Some(m) => return (self.msgs[m].date, self.msgs[m].seq),
                None => match self.nodes[n].children.first() {
                    Some(c) => n = *c,
                    None => break,
                },
            }
        }
        (i64::MAX, u32::MAX)
    }

    /// Is `anc` `n` or above it? Answers yes past [`MAX_DEPTH`] levels, so
    /// that a link that would make a thread deeper is not made.
    fn is_ancestor(&self, anc: usize, mut n: usize) -> bool {
        for _ in 0..MAX_DEPTH {
            if n == anc {
                return true;
            }
            match self.nodes[n].parent {
                Some(p) => n = p,
                None => return false,
            }
        }
        true
    }

    fn unlink(&mut self, child: usize) {
        if let Some(p) = self.nodes[child].parent.take() {
            self.nodes[p].children.retain(|c| *c != child);
        }
    }

    fn link(&mut self, parent: usize, child: usize) {
        self.unlink(child);
        self.nodes[child].parent = Some(parent);
        self.nodes[parent].children.push(child);
    }

    /// Sort every list of children (and `roots`) by date, deepest first
    /// so a placeholder sorts by its first child's date.
    fn sort_all(&mut self, roots: &mut [usize]) {
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<usize> = roots.to_vec();
        while let Some(n) = stack.pop() {
            order.push(n);
            stack.extend(self.nodes[n].children.iter().copied());
        }
        for n in order.into_iter().rev() {
            let mut kids = std::mem::take(&mut self.nodes[n].children);
            kids.sort_by_key(|c| self.date_key(*c));
            self.nodes[n].children = kids;
        }
        roots.sort_by_key(|r| self.date_key(*r));
    }

    /// The response: `(a b (c)(d))...`, written without recursion.
    fn render(&self, roots: &[usize]) -> String {
        enum Step {
            Node(usize),
            Text(&'static str),
        }
        let mut out = String::new();
        let mut stack: Vec<Step> = Vec::new();
        for r in roots.iter().rev() {
            stack.push(Step::Text(")"));
            stack.push(Step::Node(*r));
            stack.push(Step::Text("("));
        }
        while let Some(step) = stack.pop() {
            let n = match step {
                Step::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Step::Node(n) => n,
            };
            let node = &self.nodes[n];
            let kids = &node.children;
            if let Some(m) = node.msg {
                if !out.ends_with('(') {
                    out.push(' ');
                }
                out.push_str(&self.msgs[m].id.to_string());
            }
            match (node.msg, kids.len()) {
                (_, 0) => {}
                // A single child continues the same list.
                (_, 1) => stack.push(Step::Node(kids[0])),
                (m, _) => {
                    for k in kids.iter().rev() {
                        stack.push(Step::Text(")"));
                        stack.push(Step::Node(*k));
                        stack.push(Step::Text("("));
                    }
                    if m.is_some() {
                        stack.push(Step::Text(" "));
                    }
                }
            }
        }
        out
    }
}

/// THREAD ORDEREDSUBJECT (RFC 5256 section 4): messages grouped by base
/// subject, each group a parent (the earliest) with the others as its
/// children, groups in the order of their first message.
pub fn thread_ordered_subject(msgs: &[Summary]) -> String {
    let mut idx: Vec<usize> = (0..msgs.len()).collect();
    idx.sort_by(|a, b| {
        let (x, y) = (&msgs[*a], &msgs[*b]);
        x.subject.cmp(&y.subject).then(x.date.cmp(&y.date)).then(x.seq.cmp(&y.seq))
    });
    let mut f = Forest {
        nodes: (0..msgs.len())
            .map(|m| Node {
                msg: Some(m),
                ..Node::default()
            })
            .collect(),
        msgs,
    };
    let mut roots = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let root = idx[i];
        roots.push(root);
        let mut j = i + 1;
        while j < idx.len() && msgs[idx[j]].subject == msgs[root].subject {
            f.link(root, idx[j]);
            j += 1;
        }
        i = j;
    }
    f.sort_all(&mut roots);
    f.render(&roots)
}

/// THREAD REFERENCES (RFC 5256 section 4): parent/child links from
/// Message-ID, References and In-Reply-To; placeholders for messages not
/// here pruned; roots with one base subject gathered; everything sorted by
/// sent date.
pub fn thread_references(msgs: &[Summary]) -> String {
    let mut f = Forest { nodes: Vec::new(), msgs };
    let mut ids: HashMap<&str, usize> = HashMap::new();
    fn node_of<'m>(f: &mut Forest<'_>, id: &'m str, ids: &mut HashMap<&'m str, usize>) -> usize {
        *ids.entry(id).or_insert_with(|| {
            f.nodes.push(Node::default());
            f.nodes.len() - 1
        })
    }
    // Step 1.
    for (m, s) in msgs.iter().enumerate() {
        // A missing or repeated Message-ID makes the message its own.
        let own = match s.message_id.as_deref() {
            Some(id) if ids.get(id).is_none_or(|n| f.nodes[*n].msg.is_none()) => node_of(&mut f, id, &mut ids),
            _ => {
                f.nodes.push(Node::default());
                f.nodes.len() - 1
            }
        };
        f.nodes[own].msg = Some(m);
        // A: link the references in order.
        let mut prev: Option<usize> = None;
        for r in &s.references {
            let n = node_of(&mut f, r, &mut ids);
            if let Some(p) = prev {
                if f.nodes[n].parent.is_none() && p != n && !f.is_ancestor(n, p) {
                    f.link(p, n);
                }
            }
            prev = Some(n);
        }
        // B: the message's parent is its last reference.
        match prev {
            Some(p) if p != own && !f.is_ancestor(own, p) => f.link(p, own),
            Some(_) => {}
            None => f.unlink(own),
        }
    }
    // Step 2: the root set.
    let mut roots: Vec<usize> = (0..f.nodes.len()).filter(|n| f.nodes[*n].parent.is_none()).collect();
    // Step 4: prune placeholders, deepest first.
    let mut order = Vec::new();
    let mut stack = roots.clone();
    while let Some(n) = stack.pop() {
        order.push(n);
        stack.extend(f.nodes[n].children.iter().copied());
    }
    for n in order.into_iter().rev() {
        if f.nodes[n].msg.is_some() {
            continue;
        }
        let kids = f.nodes[n].children.clone();
        match f.nodes[n].parent {
            // A placeholder root keeps two or more children; with one, the
            // child is promoted to the root set; with none it goes.
            None if kids.len() > 1 => {}
            None => {
                for k in &kids {
                    f.unlink(*k);
                }
                roots.retain(|r| *r != n);
                roots.extend(kids);
            }
            Some(p) => {
                for k in kids {
                    f.link(p, k);
                }
                f.unlink(n);
            }
        }
    }
    roots.retain(|r| f.nodes[*r].msg.is_some() || !f.nodes[*r].children.is_empty());
    // Step 5: sort by date.
    f.sort_all(&mut roots);
    // Step 6: gather roots by base subject.
    // The subject of a root (its first child's for a placeholder), and
    // whether it was a reply or forward.
    let subject_of = |f: &Forest<'_>, n: usize| -> Option<(String, bool)> {
        let m = f.nodes[n]
            .msg
            .or_else(|| f.nodes[n].children.first().and_then(|c| f.nodes[*c].msg))?;
        let s = &f.msgs[m];
        (!s.subject.is_empty()).then(|| (s.subject.clone(), s.reply))
    };
    let reply_of = |f: &Forest<'_>, n: usize| f.nodes[n].msg.is_some_and(|m| f.msgs[m].reply);
    let mut table: HashMap<String, usize> = HashMap::new();
    for r in &roots {
        if let Some((subj, _)) = subject_of(&f, *r) {
            let keep = match table.get(&subj) {
                None => true,
                // A placeholder beats a message; a message that is not a
                // reply beats one that is.
                Some(old) => {
                    (f.nodes[*old].msg.is_some() && f.nodes[*r].msg.is_none())
                        || (f.nodes[*r].msg.is_some() && reply_of(&f, *old) && !reply_of(&f, *r))
                }
            };
            if keep {
                table.insert(subj, *r);
            }
        }
    }
    let mut merged_roots = Vec::new();
    for r in roots.clone() {
        let Some((subj, _)) = subject_of(&f, r) else {
            merged_roots.push(r);
            continue;
        };
        let Some(&t) = table.get(&subj) else {
            merged_roots.push(r);
            continue;
        };
        if t == r {
            merged_roots.push(r);
            continue;
        }
        match (f.nodes[t].msg.is_none(), f.nodes[r].msg.is_none()) {
            (true, true) => {
                for k in f.nodes[r].children.clone() {
                    f.link(t, k);
                }
            }
            (true, false) => f.link(t, r),
            (false, false) if reply_of(&f, r) && !reply_of(&f, t) => f.link(t, r),
            (false, _) => {
                // Both messages: a new placeholder holds both.
                f.nodes.push(Node::default());
                let d = f.nodes.len() - 1;
                let at = merged_roots.iter().position(|x| *x == t);
                f.link(d, t);
                f.link(d, r);
                table.insert(subj, d);
                match at {
                    Some(i) => merged_roots[i] = d,
                    None => merged_roots.push(d),
                }
            }
        }
    }
    let mut roots = merged_roots;
    // Step 7: sort everything again.
    f.sort_all(&mut roots);
    f.render(&roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u32, date: i64, subject: &str, mid: &str, refs: &[&str]) -> Summary {
        let (subject, reply) = base_subject_reply(subject);
        Summary {
            id,
            seq: id,
            date,
            arrival: date,
            subject,
            reply,
            message_id: (!mid.is_empty()).then(|| mid.to_string()),
            references: refs.iter().map(|r| r.to_string()).collect(),
            ..Summary::default()
        }
    }

    #[test]
    fn base_subjects() {
        assert_eq!(base_subject("Re: Fwd: [list] Hello  world (fwd)"), "hello world");
        assert_eq!(base_subject("[fwd: Re: Topic]"), "topic");
        assert_eq!(base_subject("RE [x]: re:  Topic"), "topic");
        assert_eq!(base_subject("[only a blob]"), "[only a blob]");
        assert_eq!(base_subject(""), "");
        assert_eq!(base_subject("Ré: été"), "ré: été");
    }

    #[test]
    fn message_ids_in_headers() {
        assert_eq!(message_ids("<a@x> <b@y>\t<c@z>"), vec!["a@x", "b@y", "c@z"]);
        assert_eq!(message_ids("junk <> <open"), Vec::<String>::new());
    }

    #[test]
    fn sort_with_ties_in_mailbox_order() {
        let mut m = vec![msg(1, 30, "b", "", &[]), msg(2, 10, "a", "", &[]), msg(3, 30, "Re: a", "", &[])];
        let by = |key, reverse| SortBy { key, reverse };
        assert_eq!(sort(&mut m.clone(), &[by(SortKey::Date, false)]), vec![2, 1, 3]);
        assert_eq!(sort(&mut m.clone(), &[by(SortKey::Subject, false)]), vec![2, 3, 1]);
        assert_eq!(sort(&mut m, &[by(SortKey::Subject, true), by(SortKey::Date, true)]), vec![1, 3, 2]);
    }

    #[test]
    fn ordered_subject_threads() {
        let m = vec![
            msg(1, 10, "a", "", &[]),
            msg(2, 20, "b", "", &[]),
            msg(3, 30, "Re: a", "", &[]),
            msg(4, 40, "Re: a", "", &[]),
            msg(5, 50, "Re: b", "", &[]),
        ];
        assert_eq!(thread_ordered_subject(&m), "(1 (3)(4))(2 5)");
    }

    #[test]
    fn references_threads() {
        let m = vec![
            msg(1, 10, "topic", "a@x", &[]),
            msg(2, 20, "Re: topic", "b@x", &["a@x"]),
            msg(3, 30, "Re: topic", "c@x", &["a@x"]),
            msg(4, 40, "Re: topic", "d@x", &["a@x", "c@x"]),
            msg(5, 50, "other", "e@x", &[]),
            // Replies to a message that is not here: a placeholder holds both.
            msg(6, 60, "Re: lost", "f@x", &["gone@x"]),
            msg(7, 70, "Re: lost", "g@x", &["gone@x"]),
            // Same subject, no references: gathered with the thread.
            msg(8, 80, "Re: other", "h@x", &[]),
        ];
        assert_eq!(thread_references(&m), "(1 (2)(3 4))(5 8)((6)(7))");
    }

    #[test]
    fn long_chains_and_loops_do_not_recurse_or_hang() {
        let n = 20_000u32;
        let ids: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let m: Vec<Summary> = (0..n)
            .map(|i| {
                let refs: Vec<&str> = if i == 0 {
                    vec![ids[n as usize - 1].as_str()]
                } else {
                    vec![ids[i as usize - 1].as_str()]
                };
                msg(i + 1, i64::from(i), &ids[i as usize], &ids[i as usize], &refs)
            })
            .collect();
        let out = thread_references(&m);
        // Every message once; the chain is cut into threads of MAX_DEPTH.
        let mut seen: Vec<u32> = out.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse().ok()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=n).collect::<Vec<_>>());
        // (The last piece may join the first: message 1 refers to the last.)
        let threads = out.matches('(').count();
        let pieces = (n as usize).div_ceil(MAX_DEPTH);
        assert!(threads == pieces || threads == pieces - 1, "{threads} threads: {}", &out[..40]);
        assert_eq!(thread_ordered_subject(&m).matches('(').count(), n as usize);
    }
}
