//! Command handlers of the extensions whose grammar lives in
//! [`crate::proto::imap::ext`]: ENABLE (RFC 5161) with UTF8=ACCEPT (RFC
//! 6855), LIST with selection and return options (RFC 5258, RFC 6154
//! SPECIAL-USE, RFC 5819 LIST-STATUS), MULTIAPPEND (RFC 3502), ESEARCH
//! (RFC 4731), SORT and THREAD (RFC 5256), FETCH with the BINARY items
//! of RFC 3516, and the RFC 7162 (CONDSTORE, QRESYNC) forms of SELECT,
//! EXAMINE, FETCH, STORE and SEARCH.

use super::{astring, fetch_items, mutf7, now_secs, raw_name, CondFetch, Extras, Flow, Session, R};
use crate::event::Flags;
use crate::imap::bump;
use crate::imap::pattern::Pattern;
use crate::mutate::{self, MutationError, NewMessage};
use crate::proto::imap::condstore;
use crate::proto::imap::ext::{self, ListCommand, SearchReturn, StatusItem};
use crate::store::StoreError;
use crate::views::{MailboxRec, ViewRead};
use std::collections::{BTreeMap, BTreeSet};

/// One name a LIST answers with.
#[derive(Default)]
struct Listed {
    attrs: Vec<&'static str>,
    /// RFC 5258 CHILDINFO ("SUBSCRIBED"): a descendant is subscribed.
    child_subscribed: bool,
    /// The mailbox, when the name is a selectable one (for LIST-STATUS).
    mailbox: Option<MailboxRec>,
}

impl Session {
    /// How a mailbox name goes to this client: UTF-8 after `ENABLE
    /// UTF8=ACCEPT`, modified UTF-7 before.
    pub(super) fn name_out(&self, name: &str) -> String {
        if self.utf8_names() && !name.bytes().any(|b| b < 0x20 || b == 0x7f) && name.len() < 1024 {
            format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
        } else {
            astring(&mutf7::encode(name))
        }
    }

    /// ENABLE (RFC 5161): the extensions named that this server has and
    /// that were not enabled yet are enabled and listed in `* ENABLED`.
    pub(super) fn enable(&mut self, tag: &str, rest: &str) {
        if self.user().is_none() {
            self.line(&format!("{tag} BAD Log in first"));
            return;
        }
        let caps: Vec<String> = rest.split_ascii_whitespace().map(|c| c.to_ascii_uppercase()).collect();
        if caps.is_empty() {
            self.line(&format!("{tag} BAD ENABLE needs a capability name"));
            return;
        }
        let mut enabled = String::new();
        for c in caps {
            match c.as_str() {
                "UTF8=ACCEPT" if !self.utf8 => {
                    self.utf8 = true;
                    enabled.push_str(" UTF8=ACCEPT");
                }
                "CONDSTORE" if !self.condstore => {
                    self.enable_condstore();
                    enabled.push_str(" CONDSTORE");
                }
                // RFC 9051 section 6.3.1: the session follows IMAP4rev2
                // from here on (it cannot be disabled).
                "IMAP4REV2" if !self.rev2 => {
                    self.rev2 = true;
                    enabled.push_str(" IMAP4rev2");
                }
                // RFC 7162 section 3.2.3: QRESYNC implies CONDSTORE.
                "QRESYNC" if !self.qresync => {
                    self.qresync = true;
                    self.enable_condstore();
                    enabled.push_str(" QRESYNC");
                }
                _ => {}
            }
        }
        self.line(&format!("* ENABLED{enabled}"));
        self.line(&format!("{tag} OK ENABLE completed"));
    }

    /// A command imap-codec could not parse: one of the extended forms, or
    /// a syntax error (answered BAD with where it failed).
    pub(super) async fn extended(&mut self, bytes: &[u8]) -> R<Flow> {
        let (tag, uid, name, mut lx) = match ext::head(bytes) {
            Ok(h) => h,
            Err(e) => return Ok(self.syntax_error(bytes, &format!("Syntax error: {e}"))),
        };
        let Some(user) = self.user().map(String::from) else {
            return Ok(self.syntax_error(bytes, "Syntax error in command"));
        };
        match (uid, name.as_str()) {
            (false, "LIST") => match ext::list(&mut lx) {
                Ok(l) => self.list_extended(&tag, &user, l, false).await,
                Err(e) => return Ok(self.syntax_error(bytes, &format!("LIST: {e}"))),
            },
            (false, "APPEND") => match ext::append(&mut lx) {
                Ok(a) => {
                    if a.messages.iter().any(|m| m.utf8) && !self.utf8 {
                        // RFC 6855 section 4.
                        self.line(&format!("{tag} BAD APPEND with UTF8 data needs ENABLE UTF8=ACCEPT"));
                        return Ok(Flow::Continue);
                    }
                    let name = match raw_name(&a.mailbox, false, self.utf8_names()) {
                        Ok(n) => n,
                        Err(e) => {
                            self.no(&tag, &format!("[CANNOT] {e}"));
                            return Ok(Flow::Continue);
                        }
                    };
                    let now = now_secs();
                    let msgs = a
                        .messages
                        .iter()
                        .map(|m| {
                            let (secs, tz) = m.date.unwrap_or((now, 0));
                            let mut msg = NewMessage::new(m.data.to_vec(), Flags::new(m.flags.iter().cloned()), secs);
                            msg.tz_minutes = tz;
                            msg
                        })
                        .collect();
                    self.append_messages(&tag, &user, name, msgs).await;
                }
                Err(e) => return Ok(self.syntax_error(bytes, &format!("APPEND: {e}"))),
            },
            (_, "FETCH") => return self.fetch_extended(bytes, &tag, &user).await,
            (false, "SELECT" | "EXAMINE") | (_, "STORE") => {
                let split = match name.as_str() {
                    "STORE" => condstore::store_unchanged_since(bytes).map(|r| {
                        r.map(|(n, plain)| {
                            let extras = Extras {
                                unchanged_since: Some(n),
                                ..Extras::default()
                            };
                            (extras, plain)
                        })
                    }),
                    _ => condstore::select_params(bytes).map(|r| {
                        r.map(|(p, plain)| {
                            let extras = Extras {
                                select: Some(p),
                                ..Extras::default()
                            };
                            (extras, plain)
                        })
                    }),
                };
                match split {
                    Ok(Some((extras, plain))) => {
                        use imap_codec::decode::Decoder;
                        match imap_codec::CommandCodec::default().decode(&plain) {
                            Ok((_, cmd)) => return self.command(cmd, extras).await,
                            Err(_) => return Ok(self.syntax_error(bytes, &format!("Syntax error in {name}"))),
                        }
                    }
                    Ok(None) => return Ok(self.syntax_error(bytes, "Syntax error in command")),
                    Err(e) => return Ok(self.syntax_error(bytes, &format!("{name}: {e}"))),
                }
            }
            (_, "SEARCH" | "SORT" | "THREAD") => {
                // RFC 7162's MODSEQ keys first, then RETURN / SORT / THREAD.
                let (modseq_keys, bytes) = match condstore::search_modseq(bytes) {
                    Ok(Some((keys, plain))) => (keys, std::borrow::Cow::Owned(plain)),
                    Ok(None) => (Vec::new(), std::borrow::Cow::Borrowed(bytes)),
                    Err(e) => return Ok(self.syntax_error(bytes, &format!("{name}: {e}"))),
                };
                // IMAP4rev2's 64-bit LARGER and SMALLER (RFC 9051 section 9).
                let sizes = if self.rev2 { ext::search_sizes(&bytes) } else { Ok(None) };
                let (size_keys, bytes) = match sizes {
                    Ok(Some((keys, plain))) => (keys, std::borrow::Cow::Owned(plain)),
                    Ok(None) => (Vec::new(), bytes),
                    Err(e) => return Ok(self.syntax_error(&bytes, &format!("{name}: {e}"))),
                };
                let split = match name.as_str() {
                    // SAVE is RFC 5182's, which only IMAP4rev2 sessions have.
                    "SEARCH" => {
                        ext::search_return_with(&bytes, self.rev2).map(|r| r.map(|(ret, plain)| (Some(ext::SearchAs::Esearch(ret)), plain)))
                    }
                    _ => ext::sort_or_thread(&bytes).map(|r| r.map(|(how, plain)| (Some(how), plain))),
                };
                let split = match split {
                    Ok(None) if !modseq_keys.is_empty() || !size_keys.is_empty() => Ok(Some((None, bytes.to_vec()))),
                    other => other,
                };
                match split {
                    Ok(Some((search_as, plain))) => {
                        use imap_codec::decode::Decoder;
                        let extras = Extras {
                            search_as,
                            modseq_keys,
                            size_keys,
                            ..Extras::default()
                        };
                        match imap_codec::CommandCodec::default().decode(&plain) {
                            Ok((_, cmd)) => return self.command(cmd, extras).await,
                            Err(_) => return Ok(self.syntax_error(&bytes, &format!("Syntax error in {name} criteria"))),
                        }
                    }
                    Ok(None) => return Ok(self.syntax_error(&bytes, "Syntax error in command")),
                    Err(e) => return Ok(self.syntax_error(&bytes, &format!("{name}: {e}"))),
                }
            }
            (false, "STATUS") => match ext::status(&mut lx) {
                Ok((raw, items)) => self.status_items(&tag, &user, &raw, items),
                Err(e) => return Ok(self.syntax_error(bytes, &format!("STATUS: {e}"))),
            },
            (false, "GETQUOTA" | "GETQUOTAROOT" | "SETQUOTA") => match ext::quota(&name, &mut lx) {
                Ok(q) => self.quota(&tag, &user, q),
                Err(e) => return Ok(self.syntax_error(bytes, &format!("{name}: {e}"))),
            },
            _ => return Ok(self.syntax_error(bytes, "Syntax error in command")),
        }
        Ok(Flow::Continue)
    }

    /// RFC 9208: one quota root, `""`, holds every mailbox of the user;
    /// its limits are the operator's (`tandem quota set`), so SETQUOTA is
    /// refused. Storage is shown in KiB rounded up.
    pub(super) fn quota(&mut self, tag: &str, user: &str, q: ext::QuotaCommand) {
        let v = self.shared.store.views();
        let answer = (|| -> Result<Option<String>, crate::views::ViewError> {
            let Some(limits) = v.quota(user)?.filter(|q| q.storage_kib.is_some() || q.messages.is_some()) else {
                return Ok(None);
            };
            let (bytes, count) = v.usage(user)?;
            let mut res = Vec::new();
            if let Some(l) = limits.storage_kib {
                res.push(format!("STORAGE {} {l}", bytes.div_ceil(1024)));
            }
            if let Some(l) = limits.messages {
                res.push(format!("MESSAGE {count} {l}"));
            }
            Ok(Some(format!("* QUOTA \"\" ({})", res.join(" "))))
        })();
        let answer = match answer {
            Ok(a) => a,
            Err(e) => return self.store_error(tag, StoreError::Mutation(e.into())),
        };
        match q {
            ext::QuotaCommand::Set(_) => self.no(tag, "[NOPERM] Quotas are set by the operator"),
            ext::QuotaCommand::Get(root) => match answer {
                Some(line) if root.is_empty() => {
                    self.line(&line);
                    self.line(&format!("{tag} OK GETQUOTA completed"));
                }
                _ => self.no(tag, "[NONEXISTENT] No such quota root"),
            },
            ext::QuotaCommand::Root(raw) => {
                let name = match raw_name(&raw, false, self.utf8_names()) {
                    Ok(n) => n,
                    Err(e) => return self.no(tag, &format!("[CANNOT] {e}")),
                };
                match v.mailbox_id(user, &name) {
                    Ok(Some(_)) => {}
                    Ok(None) => return self.no(tag, "[NONEXISTENT] No such mailbox"),
                    Err(e) => return self.store_error(tag, StoreError::Mutation(e.into())),
                }
                let shown = self.name_out(&name);
                match answer {
                    Some(line) => {
                        self.line(&format!("* QUOTAROOT {shown} \"\""));
                        self.line(&line);
                    }
                    None => self.line(&format!("* QUOTAROOT {shown}")),
                }
                self.line(&format!("{tag} OK GETQUOTAROOT completed"));
            }
        }
    }

    /// A FETCH imap-codec could not parse: with RFC 7162 modifiers
    /// (`CHANGEDSINCE`, `VANISHED`), the MODSEQ item, or RFC 3516 BINARY
    /// items. Each is split off in turn; imap-codec parses what is left.
    async fn fetch_extended(&mut self, bytes: &[u8], tag: &str, user: &str) -> R<Flow> {
        use imap_codec::decode::Decoder;
        use imap_codec::imap_types::command::CommandBody;
        use imap_codec::imap_types::fetch::MessageDataItemName;
        let (mods, rest) = match condstore::fetch_modifiers(bytes) {
            Ok(Some((m, plain))) => (Some(m), std::borrow::Cow::Owned(plain)),
            Ok(None) => (None, std::borrow::Cow::Borrowed(bytes)),
            Err(e) => return Ok(self.syntax_error(bytes, &format!("FETCH: {e}"))),
        };
        let split = match ext::fetch_items(&rest) {
            Ok(s) => s,
            Err(e) => return Ok(self.syntax_error(bytes, &format!("FETCH: {e}"))),
        };
        if mods.is_none() && split.is_none() {
            return Ok(self.syntax_error(bytes, "Syntax error in command"));
        }
        let plain: &[u8] = split.as_ref().map_or(&rest, |s| &s.plain);
        let Ok((_, cmd)) = imap_codec::CommandCodec::default().decode(plain) else {
            return Ok(self.syntax_error(bytes, "Syntax error in FETCH"));
        };
        let CommandBody::Fetch {
            sequence_set,
            macro_or_item_names,
            uid,
        } = cmd.body
        else {
            return Ok(self.syntax_error(bytes, "Syntax error in FETCH"));
        };
        if self.selected.is_none() {
            self.line(&format!("{tag} BAD No mailbox selected"));
            return Ok(Flow::Continue);
        }
        let mut items = fetch_items(macro_or_item_names);
        if let Some(s) = &split {
            // The stand-ins for the BINARY and MODSEQ items go; UID stays
            // when it was asked for (once is enough).
            items.retain(|i| !matches!(i, MessageDataItemName::Uid));
            if s.uid_item {
                items.insert(0, MessageDataItemName::Uid);
            }
        }
        let mods = mods.unwrap_or_default();
        let cond = CondFetch {
            modseq: split.as_ref().is_some_and(|s| s.modseq),
            changed_since: mods.changed_since,
            vanished: mods.vanished,
        };
        let binary = split.as_ref().map(|s| s.items.as_slice()).unwrap_or_default();
        self.fetch(tag, user, &sequence_set, &items, binary, uid, cond).await?;
        Ok(Flow::Continue)
    }

    /// Store messages of one APPEND in one transaction: all or none
    /// (RFC 3502 section 6.3.11).
    pub(super) async fn append_messages(&mut self, tag: &str, user: &str, name: String, mut msgs: Vec<NewMessage>) {
        // A slave that reaches its master stores them pending; APPENDUID
        // names the UIDs the master gives them.
        let pending = self.shared.durability.append_pending(&self.shared.store);
        for m in &mut msgs {
            m.pending = pending;
        }
        let (u, n) = (user.to_string(), name.clone());
        let count = msgs.len();
        let result = self
            .shared
            .store
            .run(move |t, c| {
                let mut placed = Vec::with_capacity(msgs.len());
                for m in &msgs {
                    placed.push(mutate::append(t, c, &u, &n, m)?);
                }
                Ok(placed)
            })
            .await;
        let result = match result {
            Ok(stored) if stored.iter().any(|p| p.uid == 0) => {
                let mut placed = Vec::with_capacity(stored.len());
                let mut failed = None;
                for p in stored {
                    if p.uid != 0 {
                        placed.push(p);
                        continue;
                    }
                    match self
                        .shared
                        .durability
                        .await_placement(&self.shared.store, user, p.mailbox, p.guid)
                        .await
                    {
                        Ok(Some(p)) => placed.push(p),
                        Ok(None) => failed = Some(StoreError::Mutation(MutationError::NoSuchMailbox(name.clone()))),
                        Err(e) => failed = Some(e),
                    }
                }
                match failed {
                    Some(e) => Err(e),
                    None => Ok(placed),
                }
            }
            r => r,
        };
        match result {
            Ok(placed) => {
                for _ in 0..count {
                    bump(&self.shared.counters.appends);
                }
                if self.shared.durability.settle(&self.shared.store).await.is_err() {
                    self.no(tag, "[UNAVAILABLE] Stored here but not yet on the mirror; try again");
                    return;
                }
                self.sync(true);
                let validity = placed.first().map(|p| p.uidvalidity).unwrap_or(0);
                let uids: Vec<u32> = placed.iter().map(|p| p.uid).collect();
                self.line(&format!(
                    "{tag} OK [APPENDUID {validity} {}] APPEND completed",
                    ext::compact_set(&uids)
                ));
            }
            Err(StoreError::Mutation(MutationError::NoSuchMailbox(_))) => self.no(tag, "[TRYCREATE] No such mailbox"),
            Err(e) => self.store_error(tag, e),
        }
    }

    /// LIST and LSUB, in the extended form of RFC 5258 (RFC 3501's form is
    /// the one without options).
    pub(super) async fn list_extended(&mut self, tag: &str, user: &str, cmd: ListCommand, lsub: bool) {
        let verb = if lsub { "LSUB" } else { "LIST" };
        // Options or several patterns: RFC 5258's form, not RFC 3501's.
        // IMAP4rev2's LIST is RFC 5258's in every form (RFC 9051 section 6.3.9).
        let extended =
            self.rev2 || cmd.select != ext::ListSelect::default() || cmd.ret != ext::ListReturn::default() || cmd.patterns.len() > 1;
        let decode = |b: &[u8]| -> String {
            let s = String::from_utf8_lossy(b).into_owned();
            if self.utf8_names() {
                s
            } else {
                mutf7::decode(&s).unwrap_or(s)
            }
        };
        let reference = decode(&cmd.reference);
        if cmd.patterns.len() == 1 && cmd.patterns[0].is_empty() && !lsub {
            // RFC 3501 section 6.3.8: the hierarchy delimiter.
            self.line("* LIST (\\Noselect) \"/\" \"\"");
            self.line(&format!("{tag} OK LIST completed"));
            return;
        }
        let mut matchers = Vec::new();
        let mut percent = false;
        for p in &cmd.patterns {
            let full = format!("{reference}{}", decode(p));
            // INBOX matches case-insensitively. (Compared as bytes: the
            // name may have a multi-byte character at any offset.)
            let full = if full.as_bytes().get(..5).is_some_and(|p| p.eq_ignore_ascii_case(b"INBOX")) {
                format!("INBOX{}", &full[5..])
            } else {
                full
            };
            percent |= full.contains('%');
            match Pattern::new(&full) {
                Ok(m) => matchers.push(m),
                Err(e) => {
                    self.line(&format!("{tag} BAD {e}"));
                    return;
                }
            }
        }
        let v = self.shared.store.views();
        let boxes: BTreeMap<String, MailboxRec> = v
            .mailboxes(user)
            .unwrap_or_default()
            .into_iter()
            .map(|b| (b.name.clone(), b))
            .collect();
        let subs: BTreeSet<String> = v.subscriptions(user).unwrap_or_default().into_iter().collect();
        let has_children = |name: &str| {
            let prefix = format!("{name}/");
            boxes.range(prefix.clone()..).next().is_some_and(|(n, _)| n.starts_with(&prefix))
        };
        let mut out: BTreeMap<String, Listed> = BTreeMap::new();
        let mut work = 0usize;
        let select = &cmd.select;
        let by_subscription = lsub || select.subscribed;
        let candidates: Vec<&String> = if by_subscription {
            subs.iter().collect()
        } else {
            boxes.keys().collect()
        };
        for name in candidates {
            work += 1;
            if work.is_multiple_of(16) {
                // Matching costs up to name x pattern: other sessions get
                // the thread in between.
                tokio::task::yield_now().await;
            }
            let mb = boxes.get(name);
            // LSUB lists only subscribed mailboxes that exist.
            if lsub && mb.is_none() {
                continue;
            }
            if select.special_use && mb.and_then(|m| m.special_use).is_none() {
                continue;
            }
            if !matchers.iter().any(|m| m.matches(name)) {
                continue;
            }
            out.insert(
                name.clone(),
                Listed {
                    mailbox: mb.cloned(),
                    ..Listed::default()
                },
            );
        }
        // RECURSIVEMATCH (RFC 5258 section 3.5): a matching name whose
        // descendant was selected by subscription is listed with CHILDINFO.
        if select.recursive_match && select.subscribed {
            for name in &subs {
                let parts: Vec<&str> = name.split('/').collect();
                for i in 1..parts.len() {
                    let parent = parts[..i].join("/");
                    if matchers.iter().any(|m| m.matches(&parent)) {
                        let entry = out.entry(parent.clone()).or_insert_with(|| Listed {
                            mailbox: boxes.get(&parent).cloned(),
                            ..Listed::default()
                        });
                        entry.child_subscribed = true;
                    }
                }
            }
        }
        // Parents that exist only as hierarchy, for `%` patterns.
        let mut noselect = BTreeSet::new();
        if percent && !select.special_use && (lsub || !select.subscribed) {
            let names: Vec<&String> = if lsub { subs.iter().collect() } else { boxes.keys().collect() };
            for n in names {
                work += 1;
                if work.is_multiple_of(16) {
                    tokio::task::yield_now().await;
                }
                let parts: Vec<&str> = n.split('/').collect();
                for i in 1..parts.len() {
                    let parent = parts[..i].join("/");
                    if out.contains_key(&parent) || (boxes.contains_key(&parent) && !lsub) {
                        continue;
                    }
                    if matchers.iter().any(|m| m.matches(&parent)) {
                        noselect.insert(parent.clone());
                        out.insert(parent, Listed::default());
                    }
                }
            }
        }
        let mut lines = Vec::new();
        for (name, mut l) in out {
            if noselect.contains(&name) {
                l.attrs.push("\\Noselect");
                if extended {
                    // RFC 5258 section 3: computed for every name listed.
                    l.attrs.push("\\NonExistent");
                }
                l.attrs.push("\\HasChildren");
            } else {
                match &l.mailbox {
                    None => l.attrs.push("\\NonExistent"),
                    Some(mb) => {
                        l.attrs.push(if has_children(&name) { "\\HasChildren" } else { "\\HasNoChildren" });
                        if let Some(su) = mb.special_use {
                            l.attrs.push(su.attribute());
                        }
                    }
                }
                if !lsub && subs.contains(&name) {
                    l.attrs.push("\\Subscribed");
                }
            }
            let mut line = format!("* {verb} ({}) \"/\" {}", l.attrs.join(" "), self.name_out(&name));
            if l.child_subscribed {
                line.push_str(" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
            }
            lines.push(line);
            // LIST-STATUS (RFC 5819): STATUS of each selectable mailbox
            // listed, right after its LIST line.
            if let (Some(items), Some(mb)) = (&cmd.ret.status, &l.mailbox) {
                lines.push(self.status_line(&name, mb, items));
            }
        }
        for l in lines {
            self.line(&l);
        }
        self.line(&format!("{tag} OK {verb} completed"));
    }

    /// `* STATUS name (items)` of one mailbox.
    pub(super) fn status_line(&self, name: &str, mb: &MailboxRec, items: &[StatusItem]) -> String {
        // Counted from what the items need: nothing, the flags (read from
        // the front of each record), or whole records (sizes). A mailbox
        // whose UIDNEXT is 1 has never held a message under a UID.
        #[derive(Default)]
        struct Counts {
            messages: usize,
            seen: usize,
            deleted: usize,
            size: u64,
            deleted_size: u64,
        }
        let mut c = Counts::default();
        let mut add = |flags: &crate::event::Flags, size: u64| {
            let deleted = flags.contains("\\Deleted");
            c.messages += 1;
            c.seen += usize::from(flags.contains("\\Seen"));
            c.deleted += usize::from(deleted);
            c.size += size;
            c.deleted_size += if deleted { size } else { 0 };
        };
        let v = self.shared.store.views();
        let sizes = items.iter().any(|i| matches!(i, StatusItem::Size | StatusItem::DeletedStorage));
        let counts = items
            .iter()
            .any(|i| matches!(i, StatusItem::Messages | StatusItem::Unseen | StatusItem::Deleted));
        if mb.uidnext > 1 && sizes {
            v.messages(mb.id)
                .unwrap_or_default()
                .iter()
                .for_each(|(_, m)| add(&m.flags, m.size));
        } else if mb.uidnext > 1 && counts {
            let kept = self.shared.counts.counts(&v, mb.id, mb.highestmodseq).unwrap_or_default();
            c.messages = kept.messages;
            c.seen = kept.seen;
            c.deleted = kept.deleted;
        }
        let parts: Vec<String> = items
            .iter()
            .map(|i| match i {
                StatusItem::Messages => format!("MESSAGES {}", c.messages),
                StatusItem::Recent => "RECENT 0".into(),
                StatusItem::UidNext => format!("UIDNEXT {}", mb.uidnext),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", mb.uidvalidity),
                StatusItem::Unseen => format!("UNSEEN {}", c.messages - c.seen),
                StatusItem::Deleted => format!("DELETED {}", c.deleted),
                StatusItem::HighestModSeq => format!("HIGHESTMODSEQ {}", self.scale.wire(mb.highestmodseq)),
                StatusItem::Size => format!("SIZE {}", c.size),
                StatusItem::DeletedStorage => format!("DELETED-STORAGE {}", c.deleted_size),
            })
            .collect();
        format!("* STATUS {} ({})", self.name_out(name), parts.join(" "))
    }

    /// `* SORT ...` or `* THREAD ...` for the messages a search found
    /// (sequence numbers, or UIDs for `uid`); `None` at shutdown.
    pub(super) async fn sort_or_thread(&mut self, how: &ext::SearchAs, hits: &[u32], uid: bool) -> Option<String> {
        use crate::proto::imap::mime::Parsed;
        use crate::proto::imap::sort;
        let (id, uids) = {
            let sel = self.selected.as_ref()?;
            (sel.id, sel.uids.clone())
        };
        let v = self.shared.store.views();
        // ARRIVAL and SIZE are in the views; everything else is read from
        // the message's header.
        let needs_headers = match how {
            ext::SearchAs::Sort(keys) => keys.iter().any(|k| !matches!(k.key, sort::SortKey::Arrival | sort::SortKey::Size)),
            _ => true,
        };
        let mut msgs = Vec::with_capacity(hits.len());
        for (i, hit) in hits.iter().enumerate() {
            if i % 64 == 63 {
                // Every message is parsed: other sessions get turns.
                tokio::task::yield_now().await;
                if *self.shutdown.borrow() {
                    return None;
                }
            }
            let (seq, u) = if uid {
                (uids.binary_search(hit).map(|p| p as u32 + 1).unwrap_or(0), *hit)
            } else {
                (*hit, uids.get((*hit as usize).wrapping_sub(1)).copied().unwrap_or(0))
            };
            let Ok(Some(m)) = v.message(id, u) else { continue };
            let mut summary = sort::Summary {
                id: *hit,
                seq,
                arrival: m.internal_date,
                date: m.internal_date,
                size: m.size,
                ..sort::Summary::default()
            };
            if needs_headers {
                let body = self.shared.store.blob(&m.blob).ok().flatten().unwrap_or_default();
                let p = Parsed::new(&body);
                let first = |name: &str| p.header_values(name).into_iter().next().unwrap_or_default();
                (summary.subject, summary.reply) = sort::base_subject_reply(&first("Subject"));
                summary.references = sort::message_ids(&first("References"));
                if summary.references.is_empty() {
                    summary.references = sort::message_ids(&first("In-Reply-To")).into_iter().take(1).collect();
                }
                summary.date = p.sent_date().unwrap_or(m.internal_date);
                summary.from = p.first_mailbox("From").unwrap_or_default();
                summary.to = p.first_mailbox("To").unwrap_or_default();
                summary.cc = p.first_mailbox("Cc").unwrap_or_default();
                summary.message_id = sort::message_ids(&first("Message-ID")).into_iter().next();
            }
            msgs.push(summary);
        }
        Some(match how {
            ext::SearchAs::Sort(keys) => {
                let order: String = sort::sort(&mut msgs, keys).iter().map(|n| format!(" {n}")).collect();
                format!("* SORT{order}")
            }
            ext::SearchAs::Thread(alg) => {
                let threads = match alg {
                    sort::ThreadAlg::OrderedSubject => sort::thread_ordered_subject(&msgs),
                    sort::ThreadAlg::References => sort::thread_references(&msgs),
                };
                // `thread-data = "THREAD" [SP 1*thread-list]`
                if threads.is_empty() {
                    "* THREAD".to_string()
                } else {
                    format!("* THREAD {threads}")
                }
            }
            ext::SearchAs::Esearch(_) => return None,
        })
    }

    /// The ESEARCH response of RFC 4731 for the hits of a SEARCH RETURN.
    pub(super) fn esearch_line(tag: &str, uid: bool, ret: &SearchReturn, hits: &[u32]) -> String {
        let mut line = format!("* ESEARCH (TAG {})", astring(tag));
        if uid {
            line.push_str(" UID");
        }
        if let (true, Some(min)) = (ret.min, hits.iter().min()) {
            line.push_str(&format!(" MIN {min}"));
        }
        if let (true, Some(max)) = (ret.max, hits.iter().max()) {
            line.push_str(&format!(" MAX {max}"));
        }
        if ret.count {
            line.push_str(&format!(" COUNT {}", hits.len()));
        }
        if ret.all && !hits.is_empty() {
            let mut sorted = hits.to_vec();
            sorted.sort_unstable();
            line.push_str(&format!(" ALL {}", ext::compact_set(&sorted)));
        }
        line
    }
}
