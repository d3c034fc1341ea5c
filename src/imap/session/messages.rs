//! Commands on the messages of the selected mailbox (RFC 3501 §6.4): FETCH,
//! STORE, COPY and MOVE, EXPUNGE, SEARCH, with the message sets they take.

use super::*;

/// Message records a SEARCH reads at a time (`ViewRead::messages_in`).
const SEARCH_CHUNK: usize = 256;

/// A FETCH's responses are first sent once this many bytes are buffered:
/// a client that parses as it reads (imaplib, most clients) starts on the
/// first messages while the server makes the rest.
const FIRST_FLUSH: usize = 4 * 1024;

/// After the first send, a FETCH's responses go out in writes of this size.
const LATER_FLUSH: usize = 64 * 1024;

impl Session {
    /// Resolve a sequence or UID set against the session's view: (seq, uid)
    /// pairs in ascending order.
    pub(super) fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<(u32, u32)> {
        let Some(sel) = self.selected.as_ref() else { return vec![] };
        let n = sel.uids.len() as u32;
        let max_uid = sel.uids.last().copied().unwrap_or(0);
        let val = |s: &SeqOrUid, star: u32| match s {
            SeqOrUid::Value(v) => v.get(),
            SeqOrUid::Asterisk => star,
        };
        let mut out = BTreeSet::new();
        for seq in set.0.as_ref() {
            let (a, b) = match seq {
                Sequence::Single(s) => {
                    let x = val(s, if uid { max_uid } else { n });
                    (x, x)
                }
                Sequence::Range(a, b) => {
                    let star = if uid { max_uid } else { n };
                    let (x, y) = (val(a, star), val(b, star));
                    (x.min(y), x.max(y))
                }
            };
            if uid {
                let lo = sel.uids.partition_point(|u| *u < a);
                let hi = sel.uids.partition_point(|u| *u <= b);
                for i in lo..hi {
                    out.insert(((i + 1) as u32, sel.uids[i]));
                }
            } else {
                for s in a.max(1)..=b.min(n) {
                    out.insert((s, sel.uids[(s - 1) as usize]));
                }
            }
        }
        out.into_iter().collect()
    }

    /// FETCH: `items` as imap-codec parsed them, the BINARY items of RFC
    /// 3516 ([`ext::fetch_items`]), which are answered after them, and the
    /// MODSEQ item and modifiers of RFC 7162 (`cond`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fetch(
        &mut self,
        tag: &str,
        user: &str,
        set: &SequenceSet,
        items: &[MessageDataItemName<'_>],
        binary: &[ext::BinaryItem],
        uid: bool,
        cond: CondFetch,
    ) -> R<()> {
        if cond.vanished && !self.qresync {
            // RFC 7162 section 3.2.6.
            self.line(&format!("{tag} BAD VANISHED needs ENABLE QRESYNC first"));
            return Ok(());
        }
        if cond.any() {
            self.enable_condstore();
        }
        // CHANGEDSINCE: only messages changed after this position (0: all,
        // for a value this node cannot compare).
        let since = cond.changed_since.map(|n| self.scale.since(n, self.highest_now()));
        let targets = self.resolve(set, uid);
        if let (true, Some(since)) = (cond.vanished, since) {
            self.vanished_earlier(set, since);
        }
        let Some(sel) = self.selected.as_ref() else { return Ok(()) };
        let (id, readonly) = (sel.id, sel.readonly);
        let mut seen_now = Vec::new();
        if !readonly && fetch::sets_seen(items, binary) {
            let v = self.shared.store.views();
            for (_, u) in &targets {
                if let Ok(Some(m)) = v.message(id, *u) {
                    if since.is_some_and(|s| m.modseq <= s) {
                        continue;
                    }
                    if !m.flags.contains("\\Seen") {
                        // A FETCH refused for a transfer encoding sets no flag.
                        let raw = if binary.is_empty() {
                            None
                        } else {
                            self.shared.store.blob(&m.blob).ok().flatten()
                        };
                        if let Err(e) = raw.map_or(Ok(()), |raw| fetch::check_binary(&raw, binary, self.rev2)) {
                            self.no(tag, &format!("[UNKNOWN-CTE] {e}"));
                            return Ok(());
                        }
                        seen_now.push(*u);
                    }
                }
            }
            if !seen_now.is_empty() {
                let (us, ids) = (user.to_string(), seen_now.clone());
                if let Err(e) = self
                    .shared
                    .store
                    .run(move |t, c| mutate::store_flags(t, c, &us, id, &ids, FlagOp::Add, &Flags::new(["\\Seen"])))
                    .await
                {
                    self.store_error(tag, e);
                    return Ok(());
                }
            }
        }
        // Header fields only (what clients ask of new messages): read from
        // the kept header sections, not the bodies.
        let header_only = binary.is_empty() && fetch::needs_header_only(items);
        let need_raw = !header_only && (fetch::needs_raw(items) || !binary.is_empty());
        let need_summary = items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::Envelope | MessageDataItemName::Body | MessageDataItemName::BodyStructure
            )
        });
        let v = self.shared.store.views();
        let store = self.shared.store.clone();
        // Records are read 64 at a time (one walk over their range, or a
        // batched lookup when they lie apart); other sessions get the
        // thread between the batches.
        let mut records: std::vec::IntoIter<Option<crate::views::MessageRec>> = Vec::new().into_iter();
        // A FETCH of much of a large mailbox reads its summaries without
        // keeping them: it would push out every session's working set.
        let keep = !self.shared.cache.is_sweep(targets.len());
        let mut summaries = std::collections::HashMap::new();
        let mut headers = std::collections::HashMap::new();
        // The first responses go out as soon as a few KiB are ready, so the
        // client parses them while the rest are made; later ones in 64 KiB
        // writes.
        let mut flush_at = FIRST_FLUSH;
        for (i, (seq, u)) in targets.iter().copied().enumerate() {
            if i % 64 == 0 {
                if i > 0 {
                    tokio::task::yield_now().await;
                }
                let uids: Vec<u32> = targets[i..].iter().take(64).map(|(_, u)| *u).collect();
                records = match v.messages_in(id, &uids) {
                    Ok(r) => r.into_iter(),
                    Err(e) => {
                        tracing::error!(error = %e, "reading messages");
                        vec![None; uids.len()].into_iter()
                    }
                };
                if need_summary || header_only {
                    let hashes: Vec<crate::event::BlobHash> = records.as_slice().iter().flatten().map(|m| m.blob).collect();
                    if need_summary {
                        summaries = self.shared.cache.prefetch(&store, &hashes, keep);
                    }
                    if header_only {
                        headers = self.shared.cache.headers(&store, &hashes);
                    }
                }
            }
            let Some(Some(m)) = records.next() else { continue };
            if since.is_some_and(|s| m.modseq <= s) {
                continue;
            }
            let mut body = if need_raw { store.blob(&m.blob).ok().flatten() } else { None };
            let header = if header_only {
                // Cut once; a copy of the body later in the batch finds it.
                if let std::collections::hash_map::Entry::Vacant(e) = headers.entry(m.blob) {
                    if let Some(h) = self
                        .shared
                        .cache
                        .keep_header(&store, &m.blob, || store.blob(&m.blob).ok().flatten())
                    {
                        e.insert(h);
                    }
                }
                headers.get(&m.blob).cloned()
            } else {
                None
            };
            let mut summary = if need_summary {
                match summaries.get(&m.blob) {
                    Some(s) => Some(s.clone()),
                    None => self.shared.cache.get_or(&store, &m.blob, keep, || {
                        body.as_deref()
                            .map(std::borrow::Cow::Borrowed)
                            .or_else(|| store.blob(&m.blob).ok().flatten().map(std::borrow::Cow::Owned))
                    }),
                }
            } else {
                None
            };
            // What is kept is the IMAP4rev1 reading; an IMAP4rev2 session
            // reads a message/global part as a message (RFC 9051 section
            // 7.5.2), so such a message is parsed again for it.
            if self.rev2 && summary.as_ref().is_some_and(|s| s.has_global()) {
                if body.is_none() {
                    body = store.blob(&m.blob).ok().flatten();
                }
                if let Some(raw) = body.as_deref() {
                    summary = Some(std::sync::Arc::new(fetch::Summary::of(raw, true)));
                }
            }
            let force_flags = seen_now.contains(&u);
            if let Some(lines) = self.selected.as_mut().and_then(|sel| sel.announce(&m.flags)) {
                for l in lines {
                    self.line(&l);
                }
            }
            // RFC 7162 section 3.1.4: MODSEQ when asked for (CHANGEDSINCE
            // asks), and with UID in a FETCH that set \Seen once CONDSTORE
            // is on.
            let seen_report = force_flags && self.condstore;
            let modseq = (cond.any() || seen_report).then(|| self.scale.wire(m.modseq));
            let response = match fetch::render(
                seq,
                u,
                &m,
                body.as_deref()
                    .map(fetch::Source::Message)
                    .or(header.as_deref().map(fetch::Source::Header)),
                summary.as_deref(),
                items,
                binary,
                uid || seen_report,
                force_flags,
                modseq,
                self.rev2,
            ) {
                Ok(r) => r,
                Err(e) => {
                    // RFC 3516 section 4.2: the request fails. Responses
                    // already sent for earlier messages stand.
                    self.no(tag, &format!("[UNKNOWN-CTE] {e}"));
                    return Ok(());
                }
            };
            // Each message's response goes out as it is made (the client's
            // reading paces the command), large bodies straight from the
            // stored copy.
            for part in &response.parts {
                match part {
                    fetch::Part::Bytes(b) => self.out.extend_from_slice(b),
                    fetch::Part::Body(b) => {
                        self.flush().await?;
                        self.write_out(b).await?;
                    }
                }
            }
            if self.out.len() >= flush_at {
                self.flush().await?;
                flush_at = LATER_FLUSH;
            }
            if let Some(sel) = self.selected.as_mut() {
                sel.tell(u, m.modseq);
            }
        }
        // No expunges during FETCH by sequence number.
        self.sync(uid);
        self.line(&format!("{tag} OK {}FETCH completed", if uid { "UID " } else { "" }));
        Ok(())
    }

    /// `* VANISHED (EARLIER)` of a UID FETCH with CHANGEDSINCE and VANISHED
    /// (RFC 7162 section 3.2.6): the UIDs of `set` expunged after position
    /// `since`; for `since` 0 (a MODSEQ not comparable here), every UID of
    /// `set` below UIDNEXT that is not in the mailbox. `*` is the highest
    /// UID ever given here, so an expunged last message is reported too.
    pub(super) fn vanished_earlier(&mut self, set: &SequenceSet, since: u64) {
        let (Some(user), Some(sel)) = (self.user(), self.selected.as_ref()) else {
            return;
        };
        let v = self.shared.store.views();
        let Ok(Some(mb)) = v.mailbox(user, sel.id) else { return };
        let top = mb.uidnext.saturating_sub(1).max(1);
        let asked = merge_ranges(
            set.0
                .as_ref()
                .iter()
                .map(|s| {
                    let val = |x: &SeqOrUid| match x {
                        SeqOrUid::Value(n) => n.get(),
                        SeqOrUid::Asterisk => top,
                    };
                    match s {
                        Sequence::Single(x) => (val(x), val(x)),
                        Sequence::Range(a, b) => (val(a).min(val(b)), val(a).max(val(b))),
                    }
                })
                .collect(),
        );
        let gone: Vec<(u32, u32)> = if since > 0 {
            let Ok(changes) = v.changes_since(sel.id, since) else { return };
            let mut uids: Vec<u32> = changes
                .into_iter()
                .filter(|(u, expunged)| *expunged && in_ranges(&asked, *u))
                .map(|(u, _)| u)
                .collect();
            uids.sort_unstable();
            uids.dedup();
            let present = v.messages_at(sel.id, &uids).unwrap_or_default();
            uids.iter()
                .zip(present.iter().chain(std::iter::repeat(&None)))
                .filter(|(_, m)| m.is_none())
                .map(|(u, _)| (*u, *u))
                .collect()
        } else {
            let below: Vec<(u32, u32)> = asked.iter().filter(|(a, _)| *a <= top).map(|(a, b)| (*a, (*b).min(top))).collect();
            let present: Vec<u32> = v.message_flags(sel.id).unwrap_or_default().into_iter().map(|(u, _)| u).collect();
            missing(&below, &present)
        };
        if !gone.is_empty() {
            self.line(&format!("* VANISHED (EARLIER) {}", ranges_text(&gone)));
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn store_flags(
        &mut self,
        tag: &str,
        user: &str,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
        unchanged_since: Option<u64>,
    ) {
        let Some(sel) = self.selected.as_ref() else {
            self.line(&format!("{tag} BAD No mailbox selected"));
            return;
        };
        if sel.readonly {
            self.no(tag, "[READ-ONLY] Mailbox is read-only");
            return;
        }
        let id = sel.id;
        if unchanged_since.is_some() {
            self.enable_condstore();
        }
        // UNCHANGEDSINCE (RFC 7162 section 3.1.3): a message passes when its
        // MODSEQ is at most this position. A value this node cannot compare
        // (and 0) passes none: each is reported MODIFIED.
        let limit = unchanged_since.map(|n| self.scale.position(n, self.highest_now()).filter(|_| n > 0));
        let targets = self.resolve(set, uid);
        let uids: Vec<u32> = targets.iter().map(|(_, u)| *u).collect();
        let op = match kind {
            StoreType::Add => FlagOp::Add,
            StoreType::Remove => FlagOp::Remove,
            StoreType::Replace => FlagOp::Set,
        };
        let fl = to_flags(flags);
        let us = user.to_string();
        // The test and the change are one transaction: nothing changes a
        // message between its test and its store.
        let stored = self
            .shared
            .store
            .run(move |t, c| {
                let mut modified = Vec::new();
                let passed = match limit {
                    None => uids,
                    Some(limit) => {
                        let v = crate::views::TxnViews { txn: t, cf: c.views };
                        let mut passed = Vec::with_capacity(uids.len());
                        for u in uids {
                            match v.message(id, u)? {
                                Some(m) if limit.is_some_and(|p| m.modseq <= p) => passed.push(u),
                                Some(_) => modified.push(u),
                                None => {}
                            }
                        }
                        passed
                    }
                };
                if !passed.is_empty() {
                    mutate::store_flags(t, c, &us, id, &passed, op, &fl)?;
                }
                Ok((passed, modified))
            })
            .await;
        let (passed, modified) = match stored {
            Ok(r) => r,
            Err(e) => {
                self.store_error(tag, e);
                return;
            }
        };
        let passed: BTreeSet<u32> = passed.into_iter().collect();
        let modified: BTreeSet<u32> = modified.into_iter().collect();
        let silent = !matches!(response, StoreResponse::Answer);
        let v = self.shared.store.views();
        let mut failed = Vec::new();
        for (seq, u) in targets {
            if modified.contains(&u) {
                failed.push(if uid { u } else { seq });
            }
            if !passed.contains(&u) {
                continue;
            }
            let Ok(Some(m)) = v.message(id, u) else { continue };
            if let Some(lines) = self.selected.as_mut().and_then(|sel| sel.announce(&m.flags)) {
                for l in lines {
                    self.line(&l);
                }
            }
            if self.condstore {
                // RFC 7162 section 3.1.3: UID and MODSEQ of every message
                // stored, FLAGS unless .SILENT.
                let flags = if silent {
                    String::new()
                } else {
                    format!(" FLAGS {}", fetch::flags_list(&m.flags))
                };
                self.line(&format!("* {seq} FETCH (UID {u}{flags} MODSEQ ({}))", self.scale.wire(m.modseq)));
            } else if !silent {
                let uid_part = if uid { format!("UID {u} ") } else { String::new() };
                self.line(&format!("* {seq} FETCH ({uid_part}FLAGS {})", fetch::flags_list(&m.flags)));
            }
            if let Some(sel) = self.selected.as_mut() {
                sel.tell(u, m.modseq);
            }
        }
        self.sync(uid);
        let verb = if uid { "UID STORE" } else { "STORE" };
        if failed.is_empty() {
            self.line(&format!("{tag} OK {verb} completed"));
        } else {
            failed.sort_unstable();
            self.line(&format!(
                "{tag} OK [MODIFIED {}] Conditional {verb} failed for some messages",
                ext::compact_set(&failed)
            ));
        }
    }

    pub(super) async fn copy(&mut self, tag: &str, user: &str, set: &SequenceSet, mailbox: &Mailbox<'_>, uid: bool, remove: bool) {
        let Some(sel) = self.selected.as_ref() else {
            self.line(&format!("{tag} BAD No mailbox selected"));
            return;
        };
        if remove && sel.readonly {
            self.no(tag, "[READ-ONLY] Mailbox is read-only");
            return;
        }
        let from = sel.id;
        let name = match mailbox_name(mailbox, self.utf8_names()) {
            Ok(n) => n,
            Err(e) => {
                self.no(tag, &format!("[CANNOT] {e}"));
                return;
            }
        };
        let Ok(Some(to)) = self.shared.store.views().mailbox_id(user, &name) else {
            self.no(tag, "[TRYCREATE] No such mailbox");
            return;
        };
        let targets = self.resolve(set, uid);
        let uids: Vec<u32> = targets.iter().map(|(_, u)| *u).collect();
        let us = user.to_string();
        let cmd = if remove { "MOVE" } else { "COPY" };
        let pending = self.shared.durability.append_pending(&self.shared.store);
        let copied = match self
            .shared
            .store
            .run(move |t, c| mutate::copy(t, c, &us, from, &uids, to, remove, pending))
            .await
        {
            // Pending copies: COPYUID names the UIDs the master gives them.
            Ok((validity, pairs)) if pending => {
                let mut placed = Vec::with_capacity(pairs.len());
                let mut failed = None;
                for (src, _, guid) in pairs {
                    match self.shared.durability.await_placement(&self.shared.store, user, to, guid).await {
                        Ok(Some(p)) => placed.push((src, p.uid, guid)),
                        Ok(None) => {}
                        Err(e) => failed = Some(e),
                    }
                }
                match failed {
                    Some(e) => Err(e),
                    None => Ok((validity, placed)),
                }
            }
            r => r,
        };
        match copied {
            Ok((validity, pairs)) => {
                let code = if pairs.is_empty() {
                    String::new()
                } else {
                    let src: Vec<String> = pairs.iter().map(|p| p.0.to_string()).collect();
                    let dst: Vec<String> = pairs.iter().map(|p| p.1.to_string()).collect();
                    format!("[COPYUID {validity} {} {}] ", src.join(","), dst.join(","))
                };
                if remove {
                    if !code.is_empty() {
                        self.line(&format!("* OK {code}Moved"));
                    }
                    // The moved messages leave this mailbox now.
                    self.sync(true);
                    self.line(&format!("{tag} OK {cmd} completed"));
                } else {
                    self.sync(uid);
                    self.line(&format!("{tag} OK {code}{cmd} completed"));
                }
            }
            Err(e) => self.store_error(tag, e),
        }
    }

    pub(super) async fn expunge(&mut self, tag: &str, only: Option<Vec<(u32, u32)>>) {
        let user = self.user().expect("authenticated").to_string();
        let Some(sel) = self.selected.as_ref() else { return };
        if sel.readonly {
            self.no(tag, "[READ-ONLY] Mailbox is read-only");
            return;
        }
        let id = sel.id;
        let v = self.shared.store.views();
        let candidates: Vec<u32> = match &only {
            None => sel.uids.clone(),
            Some(ranges) => sel
                .uids
                .iter()
                .copied()
                .filter(|u| ranges.iter().any(|(a, b)| u >= a && u <= b))
                .collect(),
        };
        let doomed: Vec<u32> = candidates
            .into_iter()
            .filter(|u| v.message(id, *u).ok().flatten().is_some_and(|m| m.flags.contains("\\Deleted")))
            .collect();
        if !doomed.is_empty() {
            let us = user.clone();
            if let Err(e) = self.shared.store.run(move |t, c| mutate::expunge(t, c, &us, id, &doomed)).await {
                self.store_error(tag, e);
                return;
            }
        }
        self.sync(true);
        self.line(&format!("{tag} OK {}EXPUNGE completed", if only.is_some() { "UID " } else { "" }));
    }

    pub(super) async fn search(
        &mut self,
        tag: &str,
        criteria: &imap_codec::imap_types::search::SearchKey<'_>,
        uid: bool,
        search_as: Option<ext::SearchAs>,
        modseq_keys: &[u64],
        size_keys: &[ext::SizeKey],
    ) {
        if !modseq_keys.is_empty() {
            self.enable_condstore();
        }
        // MODSEQ n keys (RFC 7162 section 3.1.5): MODSEQ >= this position;
        // 0 (every message) for a value this node cannot compare.
        let highest = if modseq_keys.is_empty() { 0 } else { self.highest_now() };
        let modseq_min: Vec<u64> = modseq_keys.iter().map(|n| self.scale.since(*n, highest)).collect();
        let mut top_modseq = 0;
        let Some(sel) = self.selected.as_ref() else { return };
        let v = self.shared.store.views();
        let ctx = search::Context {
            max_seq: sel.uids.len() as u32,
            max_uid: sel.uids.last().copied().unwrap_or(0),
        };
        let mut hits = Vec::new();
        let mut stopped = false;
        // A search that parses bodies shares the runtime's threads with
        // other sessions (a turn after every 64 messages, or after any
        // message whose body was read), and ends at shutdown.
        let mut work = 0usize;
        // Records are read a chunk at a time, by one walk over the chunk's
        // UIDs (one lookup per message took most of a SEARCH SINCE).
        let mut chunk: Vec<Option<crate::views::MessageRec>> = Vec::new();
        for (i, u) in sel.uids.iter().enumerate() {
            if work >= 64 {
                work = 0;
                tokio::task::yield_now().await;
                if *self.shutdown.borrow() {
                    stopped = true;
                    break;
                }
            }
            work += 1;
            if i % SEARCH_CHUNK == 0 {
                let end = (i + SEARCH_CHUNK).min(sel.uids.len());
                chunk = v.messages_in(sel.id, &sel.uids[i..end]).unwrap_or_default();
                chunk.reverse();
            }
            let Some(m) = chunk.pop().flatten() else { continue };
            let msg = LazyMessage {
                seq: i as u32 + 1,
                uid: *u,
                rec: &m,
                store: &self.shared.store,
                parsed: Default::default(),
                modseq_min: &modseq_min,
                sizes: size_keys,
                global: self.rev2,
            };
            if search::matches(criteria, &msg, &ctx) {
                hits.push(if uid { *u } else { i as u32 + 1 });
                top_modseq = top_modseq.max(m.modseq);
            }
            if msg.parsed.get().is_some() {
                work = 64;
            }
        }
        if stopped {
            if matches!(&search_as, Some(ext::SearchAs::Esearch(r)) if r.save) {
                // RFC 5182 section 2.1: NO to a SEARCH with SAVE empties `$`.
                self.saved.clear();
            }
            self.no(tag, "[UNAVAILABLE] Server shutting down");
            return;
        }
        // IMAP4rev2 answers every SEARCH with ESEARCH, ALL when RETURN is
        // not given (RFC 9051 section 6.4.4).
        let search_as = match search_as {
            None if self.rev2 => Some(ext::SearchAs::Esearch(ext::SearchReturn {
                all: true,
                ..Default::default()
            })),
            other => other,
        };
        if let Some(ext::SearchAs::Esearch(ret)) = search_as.as_ref().filter(|_| self.rev2) {
            if ret.save {
                self.save_result(ret, &hits, uid);
            }
        }
        // RFC 7162 section 3.1.5: with a MODSEQ key, the highest MODSEQ of
        // the messages found (none when nothing was found).
        let top = (!modseq_keys.is_empty() && !hits.is_empty()).then(|| self.scale.wire(top_modseq));
        let verb = match search_as {
            Some(ext::SearchAs::Esearch(ret)) => {
                if ret.answers() {
                    let mut line = Self::esearch_line(tag, uid, &ret, &hits);
                    if let Some(n) = top {
                        line.push_str(&format!(" MODSEQ {n}"));
                    }
                    self.line(&line);
                }
                "SEARCH"
            }
            Some(how @ (ext::SearchAs::Sort(_) | ext::SearchAs::Thread(_))) => {
                let Some(mut line) = self.sort_or_thread(&how, &hits, uid).await else {
                    self.no(tag, "[UNAVAILABLE] Server shutting down");
                    return;
                };
                if let (Some(n), ext::SearchAs::Sort(_)) = (top, &how) {
                    line.push_str(&format!(" (MODSEQ {n})"));
                }
                self.line(&line);
                if matches!(how, ext::SearchAs::Sort(_)) {
                    "SORT"
                } else {
                    "THREAD"
                }
            }
            None => {
                let list: String = hits.iter().map(|h| format!(" {h}")).collect();
                let modseq = top.map(|n| format!(" (MODSEQ {n})")).unwrap_or_default();
                self.line(&format!("* SEARCH{list}{modseq}"));
                "SEARCH"
            }
        };
        self.sync(uid);
        self.line(&format!("{tag} OK {}{verb} completed", if uid { "UID " } else { "" }));
    }
}

impl Session {
    /// Keep what a `SEARCH RETURN (SAVE ...)` found for `$` (RFC 5182
    /// section 2.1): with MIN and/or MAX and neither ALL nor COUNT, only
    /// those; otherwise every message found. `hits` are UIDs for `uid`,
    /// sequence numbers otherwise; they are kept as UIDs.
    fn save_result(&mut self, ret: &ext::SearchReturn, hits: &[u32], uid: bool) {
        let Some(sel) = self.selected.as_ref() else { return };
        let mut kept: Vec<u32> = if (ret.min || ret.max) && !ret.all && !ret.count {
            let mut v = Vec::new();
            if let (true, Some(m)) = (ret.min, hits.iter().min()) {
                v.push(*m);
            }
            if let (true, Some(m)) = (ret.max, hits.iter().max()) {
                v.push(*m);
            }
            v
        } else {
            hits.to_vec()
        };
        if !uid {
            kept = kept
                .into_iter()
                .filter_map(|seq| sel.uids.get((seq as usize).wrapping_sub(1)).copied())
                .collect();
        }
        kept.sort_unstable();
        kept.dedup();
        self.saved = kept;
    }
}

/// `1:5,7,9:*` -> inclusive ranges (`*` = u32::MAX).
pub(super) fn parse_uid_set(s: &str) -> Option<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    for part in s.trim().split(',') {
        let num = |x: &str| {
            if x == "*" {
                Some(u32::MAX)
            } else {
                x.parse::<u32>().ok().filter(|n| *n > 0)
            }
        };
        match part.split_once(':') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                out.push((a.min(b), a.max(b)));
            }
            None => {
                let a = num(part)?;
                out.push((a, a));
            }
        }
    }
    Some(out)
}

/// Inclusive ranges sorted and merged (adjacent ones joined).
pub(super) fn merge_ranges(mut r: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    r.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Whether merged `ranges` hold `n`.
pub(super) fn in_ranges(ranges: &[(u32, u32)], n: u32) -> bool {
    let i = ranges.partition_point(|(_, b)| *b < n);
    ranges.get(i).is_some_and(|(a, _)| *a <= n)
}

/// The numbers of merged `ranges` not in ascending `present`, as ranges.
pub(super) fn missing(ranges: &[(u32, u32)], present: &[u32]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for &(a, b) in ranges {
        let mut next = a;
        let lo = present.partition_point(|u| *u < a);
        let hi = present.partition_point(|u| *u <= b);
        for &u in &present[lo..hi] {
            if u > next {
                out.push((next, u - 1));
            }
            next = u.saturating_add(1);
        }
        if next <= b && (hi == 0 || present[hi - 1] < u32::MAX) {
            out.push((next, b));
        }
    }
    out
}

/// Ranges as a sequence set (`1:3,7`).
pub(super) fn ranges_text(ranges: &[(u32, u32)]) -> String {
    ranges
        .iter()
        .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}:{b}") })
        .collect::<Vec<_>>()
        .join(",")
}

/// A message for SEARCH that loads and parses its body only if a key needs it.
pub(super) struct LazyMessage<'a> {
    pub(super) seq: u32,
    pub(super) uid: u32,
    pub(super) rec: &'a MessageRec,
    pub(super) store: &'a crate::store::Store,
    pub(super) parsed: std::cell::OnceCell<Vec<u8>>,
    /// The positions of the SEARCH MODSEQ keys, by index
    /// ([`condstore::search_modseq`]).
    pub(super) modseq_min: &'a [u64],
    /// The LARGER / SMALLER keys above 32 bits, by index
    /// ([`ext::search_sizes`]).
    pub(super) sizes: &'a [ext::SizeKey],
    /// `message/global` parts are messages, whose text is searched
    /// (IMAP4rev2; [`crate::proto::imap::mime::Parsed::with_global_messages`]).
    pub(super) global: bool,
}

impl LazyMessage<'_> {
    pub(super) fn bytes(&self) -> &[u8] {
        self.parsed
            .get_or_init(|| self.store.blob(&self.rec.blob).ok().flatten().unwrap_or_default())
    }

    /// The MIME tree, read as the session's revision reads it.
    fn tree(&self) -> crate::proto::imap::mime::Parsed<'_> {
        if self.global {
            crate::proto::imap::mime::Parsed::with_global_messages(self.bytes())
        } else {
            crate::proto::imap::mime::Parsed::new(self.bytes())
        }
    }
}

impl SearchMessage for LazyMessage<'_> {
    fn seq(&self) -> u32 {
        self.seq
    }
    fn uid(&self) -> u32 {
        self.uid
    }
    fn has_flag(&self, flag: &str) -> bool {
        if !self.sizes.is_empty() {
            if let Some(i) = ext::size_key(flag) {
                return self
                    .sizes
                    .get(i)
                    .is_some_and(|&(larger, n)| if larger { self.rec.size > n } else { self.rec.size < n });
            }
        }
        if !self.modseq_min.is_empty() {
            if let Some(i) = condstore::modseq_key(flag) {
                return self.modseq_min.get(i).is_some_and(|p| self.rec.modseq >= *p);
            }
        }
        self.rec.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }
    fn is_recent(&self) -> bool {
        false
    }
    fn internal_date(&self) -> (i64, i16) {
        (self.rec.internal_date, self.rec.tz_minutes)
    }
    fn size(&self) -> u64 {
        self.rec.size
    }
    fn header(&self, name: &str) -> Vec<String> {
        let parsed = crate::proto::imap::mime::Parsed::new(self.bytes());
        let mut values = parsed.header_values(name);
        if ["From", "To", "Cc", "Bcc"].iter().any(|f| f.eq_ignore_ascii_case(name)) {
            values.extend(parsed.address_texts(name));
        }
        values
    }
    fn sent_date(&self) -> Option<(i64, i16)> {
        crate::proto::imap::mime::Parsed::new(self.bytes()).sent_date_zoned()
    }
    fn body_text(&self) -> String {
        self.tree().body_text()
    }
    fn full_text(&self) -> String {
        let p = self.tree();
        let header = p.section(&[], crate::proto::imap::mime::SectionText::Header).unwrap_or_default();
        format!("{}{}", String::from_utf8_lossy(&header), p.body_text())
    }
}
