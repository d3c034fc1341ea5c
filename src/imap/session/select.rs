//! SELECT and EXAMINE (with the RFC 7162 CONDSTORE and QRESYNC forms),
//! and keeping a selected mailbox in step with the views: the untagged
//! EXISTS, EXPUNGE / VANISHED and FETCH lines at the points RFC 3501 allows.

use super::*;

impl Session {
    /// The mailbox a command names, or the tagged BAD / NO already said.
    pub(super) fn existing_mailbox(&mut self, tag: &str, user: &str, mailbox: &Mailbox<'_>) -> Option<(String, MailboxRec)> {
        let name = match mailbox_name(mailbox, self.utf8_names()) {
            Ok(n) => n,
            Err(e) => {
                self.no(tag, &format!("[CANNOT] {e}"));
                return None;
            }
        };
        match self.shared.store.views().mailbox_by_name(user, &name) {
            Ok(Some(mb)) => Some((name, mb)),
            _ => {
                self.no(tag, "[NONEXISTENT] No such mailbox");
                None
            }
        }
    }

    pub(super) fn select(&mut self, tag: &str, user: &str, mailbox: &Mailbox<'_>, readonly: bool, params: Option<SelectParams>) {
        let params = params.unwrap_or_default();
        if params.qresync.is_some() && !self.qresync {
            // RFC 7162 section 3.2.5.
            self.line(&format!("{tag} BAD The QRESYNC parameter needs ENABLE QRESYNC first"));
            return;
        }
        if params.condstore {
            self.condstore = true;
        }
        // RFC 5182 section 2.1: `$` is empty in a newly selected mailbox.
        self.saved.clear();
        if self.selected.take().is_some() && (self.qresync || self.rev2) {
            // RFC 7162 section 3.2.11, RFC 9051 section 7.1 (CLOSED): the
            // client learns where the old mailbox's responses end.
            self.line("* OK [CLOSED] Previous mailbox closed");
        }
        let Some((name, mb)) = self.existing_mailbox(tag, user, mailbox) else {
            return;
        };
        let v = self.shared.store.views();
        let msgs = match v.message_flags(mb.id) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "reading mailbox");
                self.no(tag, "[SERVERBUG] Cannot read mailbox");
                return;
            }
        };
        let mut keywords = BTreeSet::new();
        let mut first_unseen = None;
        for (i, (_, flags)) in msgs.iter().enumerate() {
            for f in flags.iter() {
                if !f.starts_with('\\') {
                    keywords.insert(f.to_string());
                }
            }
            if first_unseen.is_none() && !flags.contains("\\Seen") {
                first_unseen = Some(i + 1);
            }
        }
        for l in flag_lines(&keywords) {
            self.line(&l);
        }
        self.line(&format!("* {} EXISTS", msgs.len()));
        if self.rev2 {
            // RFC 9051 section 6.3.2: no RECENT (there is no \Recent) and
            // no UNSEEN code (not a response code of RFC 9051), but a LIST
            // of the mailbox with its attributes.
            let line = self.selected_list_line(user, &name, &mb);
            self.line(&line);
        } else {
            self.line("* 0 RECENT");
            if let Some(u) = first_unseen {
                self.line(&format!("* OK [UNSEEN {u}] First unseen"));
            }
        }
        self.line(&format!("* OK [UIDVALIDITY {}] UIDs valid", mb.uidvalidity));
        self.line(&format!("* OK [UIDNEXT {}] Predicted next UID", mb.uidnext));
        if self.condstore {
            self.line(&format!("* OK [HIGHESTMODSEQ {}] Highest", self.scale.wire(mb.highestmodseq)));
        }
        let uids = msgs.iter().map(|(u, _)| *u).collect();
        self.selected = Some(Selected {
            id: mb.id,
            name,
            readonly,
            told: HashMap::new(),
            keywords,
            uids,
            modseq: mb.highestmodseq,
            expunge_pending: false,
            expunge_floor: 0,
        });
        if let Some(q) = params.qresync.filter(|q| q.uidvalidity == mb.uidvalidity) {
            self.qresync_select(&mb, &q);
        }
        self.line(&format!(
            "{tag} OK [{}] {} completed",
            if readonly { "READ-ONLY" } else { "READ-WRITE" },
            if readonly { "EXAMINE" } else { "SELECT" }
        ));
    }

    /// `* LIST (attributes) "/" name` of the mailbox SELECT or EXAMINE
    /// opens (RFC 9051 section 6.3.2), with the attributes LIST gives it.
    fn selected_list_line(&self, user: &str, name: &str, mb: &MailboxRec) -> String {
        let v = self.shared.store.views();
        let prefix = format!("{name}/");
        let children = v.mailboxes(user).unwrap_or_default().iter().any(|b| b.name.starts_with(&prefix));
        let mut attrs = vec![if children { "\\HasChildren" } else { "\\HasNoChildren" }];
        if let Some(su) = mb.special_use {
            attrs.push(su.attribute());
        }
        if v.subscriptions(user).unwrap_or_default().iter().any(|s| s == name) {
            attrs.push("\\Subscribed");
        }
        format!("* LIST ({}) \"/\" {}", attrs.join(" "), self.name_out(name))
    }

    /// Turn CONDSTORE on (RFC 7162 section 3.1); the first time, with a
    /// mailbox selected, the client learns its HIGHESTMODSEQ.
    pub(super) fn enable_condstore(&mut self) {
        if self.condstore {
            return;
        }
        self.condstore = true;
        if let Some(sel) = &self.selected {
            let line = format!("* OK [HIGHESTMODSEQ {}] Highest", self.scale.wire(sel.modseq));
            self.line(&line);
        }
    }

    /// The highest MODSEQ position of the selected mailbox now (0 when it
    /// cannot be read: nothing the client sends is then comparable).
    pub(super) fn highest_now(&self) -> u64 {
        let (Some(user), Some(sel)) = (self.user(), self.selected.as_ref()) else {
            return 0;
        };
        match self.shared.store.views().mailbox(user, sel.id) {
            Ok(Some(mb)) => mb.highestmodseq,
            _ => 0,
        }
    }

    /// SELECT's QRESYNC parameter (RFC 7162 section 3.2.5.1): `VANISHED
    /// (EARLIER)` for the known UIDs expunged since the client's MODSEQ,
    /// then a FETCH of each known message changed since then. A MODSEQ this
    /// node cannot compare ([`Scale::since`]) gets everything: every known
    /// UID not here is reported vanished and every message is sent. The
    /// sequence match data only helps servers that forget expunges; the
    /// change index does not, so it is checked and not used.
    pub(super) fn qresync_select(&mut self, mb: &MailboxRec, q: &condstore::Qresync) {
        let v = self.shared.store.views();
        let Some(sel) = self.selected.as_ref() else { return };
        let known: Vec<(u32, u32)> = match &q.known_uids {
            Some(k) => merge_ranges(k.clone()),
            None => vec![(1, mb.uidnext.saturating_sub(1).max(1))],
        };
        let since = self.scale.since(q.modseq, mb.highestmodseq);
        let indexed = if since > 0 { v.changes_since(mb.id, since).ok() } else { None };
        let (vanished, changed): (Vec<(u32, u32)>, Vec<u32>) = match indexed {
            Some(changes) => {
                let (mut gone, mut changed) = (Vec::new(), Vec::new());
                for (u, expunged) in changes {
                    if !in_ranges(&known, u) {
                        continue;
                    }
                    if !expunged {
                        changed.push(u);
                    } else if sel.uids.binary_search(&u).is_err() {
                        gone.push(u);
                    }
                }
                gone.sort_unstable();
                gone.dedup();
                changed.sort_unstable();
                changed.dedup();
                (gone.into_iter().map(|u| (u, u)).collect(), changed)
            }
            None => {
                let below_next: Vec<(u32, u32)> = known
                    .iter()
                    .filter(|(a, _)| *a < mb.uidnext)
                    .map(|(a, b)| (*a, (*b).min(mb.uidnext.saturating_sub(1))))
                    .collect();
                let changed = sel.uids.iter().copied().filter(|u| in_ranges(&known, *u)).collect();
                (missing(&below_next, &sel.uids), changed)
            }
        };
        if !vanished.is_empty() {
            self.line(&format!("* VANISHED (EARLIER) {}", ranges_text(&vanished)));
        }
        let id = mb.id;
        for chunk in changed.chunks(256) {
            let recs = v.messages_at(id, chunk).unwrap_or_default();
            for (u, m) in chunk.iter().zip(recs) {
                let Some(m) = m else { continue };
                let Some(sel) = self.selected.as_mut() else { return };
                let Ok(pos) = sel.uids.binary_search(u) else { continue };
                let announce = sel.announce(&m.flags);
                sel.tell(*u, m.modseq);
                for l in announce.into_iter().flatten() {
                    self.line(&l);
                }
                let line = format!(
                    "* {} FETCH (UID {u} FLAGS {} MODSEQ ({}))",
                    pos + 1,
                    fetch::flags_list(&m.flags),
                    self.scale.wire(m.modseq)
                );
                self.line(&line);
            }
        }
    }

    /// Bring the selected mailbox up to date with the views, announcing what
    /// changed. Expunges are held back when `expunges` is false.
    pub(super) fn sync(&mut self, expunges: bool) {
        self.sync_changes(expunges);
        // RFC 7162 section 3.2: MODSEQ values above an expunge the client
        // has not been told of (held back during this command) must be
        // followed by a HIGHESTMODSEQ below that expunge, so that a client
        // that resynchronises from what it saw still learns of it.
        if let Some(sel) = self.selected.as_ref().filter(|s| s.expunge_pending && self.condstore) {
            let line = format!("* OK [HIGHESTMODSEQ {}] Expunges pending", self.scale.wire(sel.expunge_floor));
            self.line(&line);
        }
    }

    /// [`Session::sync`] without the note on held-back expunges.
    pub(super) fn sync_changes(&mut self, expunges: bool) {
        let Some(user) = self.user().map(String::from) else { return };
        let Some(sel) = self.selected.as_mut() else { return };
        let v = self.shared.store.views();
        let mb = match v.mailbox(&user, sel.id) {
            Ok(Some(mb)) => mb,
            Ok(None) => {
                // Deleted or renamed away under us.
                if expunges {
                    if self.qresync && !sel.uids.is_empty() {
                        self.out
                            .extend_from_slice(format!("* VANISHED {}\r\n", ext::compact_set(&sel.uids)).as_bytes());
                    } else {
                        for seq in (1..=sel.uids.len()).rev() {
                            self.out.extend_from_slice(format!("* {seq} EXPUNGE\r\n").as_bytes());
                        }
                    }
                    sel.uids.clear();
                    sel.told.clear();
                }
                return;
            }
            Err(_) => return,
        };
        if mb.highestmodseq == sel.modseq && !(expunges && sel.expunge_pending) {
            return;
        }
        // What changed since the session last looked comes from the change
        // index: the work follows the changes, not the mailbox size. Only
        // expunges held back earlier (during FETCH, STORE, SEARCH) need the
        // whole mailbox compared with what the client was told.
        let changes = if expunges && sel.expunge_pending {
            None
        } else {
            v.changes_since(sel.id, sel.modseq).ok()
        };
        let report = Report {
            modseq: self.condstore.then_some(self.scale),
            vanished: self.qresync,
        };
        let found = match changes {
            Some(c) => Some(changed_since(sel, &v, c, expunges, report)),
            None => compare_whole(sel, &v, expunges, report),
        };
        let Some(Found { mut lines, added, pending }) = found else { return };
        if added {
            lines.push(format!("* {} EXISTS", sel.uids.len()));
        }
        if pending && !sel.expunge_pending {
            sel.expunge_floor = sel.modseq;
        }
        sel.modseq = mb.highestmodseq;
        let floor = sel.modseq;
        sel.told.retain(|_, m| *m > floor);
        sel.expunge_pending = pending;
        for l in lines {
            self.line(&l);
        }
    }
}

/// Bring `sel` up to date from the change index entries after its MODSEQ.
pub(super) fn changed_since(
    sel: &mut Selected,
    v: &crate::views::Views,
    changes: Vec<(u32, bool)>,
    expunges: bool,
    report: Report,
) -> Found {
    let mut lines = Vec::new();
    let mut pending = sel.expunge_pending;
    let (mut gone, mut changed): (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());
    for (uid, expunged) in changes {
        if expunged {
            gone.push(uid);
        } else {
            changed.push(uid);
        }
    }
    gone.sort_unstable();
    changed.sort_unstable();
    let mut vanished = Vec::new();
    for uid in gone {
        if let Ok(pos) = sel.uids.binary_search(&uid) {
            if expunges {
                if report.vanished {
                    vanished.push(uid);
                } else {
                    lines.push(format!("* {} EXPUNGE", pos + 1));
                }
                sel.uids.remove(pos);
                sel.told.remove(&uid);
            } else {
                pending = true;
            }
        }
    }
    if !vanished.is_empty() {
        lines.push(format!("* VANISHED {}", ext::compact_set(&vanished)));
    }
    let last = sel.uids.last().copied().unwrap_or(0);
    let mut added = false;
    for uid in changed {
        // Gone since the index was read: the next sync sees it.
        let Ok(Some(m)) = v.message(sel.id, uid) else { continue };
        if uid > last {
            lines.extend(sel.announce(&m.flags).into_iter().flatten());
            sel.uids.push(uid);
            sel.tell(uid, m.modseq);
            added = true;
        } else if let Ok(pos) = sel.uids.binary_search(&uid) {
            if sel.untold(uid, m.modseq) {
                lines.extend(sel.announce(&m.flags).into_iter().flatten());
                lines.push(report.flags(pos + 1, uid, &m));
                sel.tell(uid, m.modseq);
            }
        }
    }
    Found { lines, added, pending }
}

/// Bring `sel` up to date by comparing the whole mailbox with it.
pub(super) fn compare_whole(sel: &mut Selected, v: &crate::views::Views, expunges: bool, report: Report) -> Option<Found> {
    let msgs = v.messages(sel.id).ok()?;
    let current: HashMap<u32, &MessageRec> = msgs.iter().map(|(u, m)| (*u, m)).collect();
    let mut lines = Vec::new();
    let mut pending = false;
    if expunges {
        let mut seq = 0usize;
        let mut kept = Vec::with_capacity(sel.uids.len());
        let mut vanished = Vec::new();
        for uid in &sel.uids {
            seq += 1;
            if current.contains_key(uid) {
                kept.push(*uid);
            } else {
                if report.vanished {
                    vanished.push(*uid);
                } else {
                    lines.push(format!("* {seq} EXPUNGE"));
                }
                sel.told.remove(uid);
                seq -= 1;
            }
        }
        sel.uids = kept;
        if !vanished.is_empty() {
            lines.push(format!("* VANISHED {}", ext::compact_set(&vanished)));
        }
    } else {
        pending = sel.uids.iter().any(|u| !current.contains_key(u));
    }
    for i in 0..sel.uids.len() {
        let uid = sel.uids[i];
        if let Some(m) = current.get(&uid) {
            if sel.untold(uid, m.modseq) {
                lines.extend(sel.announce(&m.flags).into_iter().flatten());
                lines.push(report.flags(i + 1, uid, m));
                sel.tell(uid, m.modseq);
            }
        }
    }
    let last = sel.uids.last().copied().unwrap_or(0);
    let mut added = false;
    for (uid, m) in &msgs {
        if *uid > last {
            lines.extend(sel.announce(&m.flags).into_iter().flatten());
            sel.uids.push(*uid);
            sel.tell(*uid, m.modseq);
            added = true;
        }
    }
    Some(Found { lines, added, pending })
}
