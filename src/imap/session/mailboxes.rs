//! Commands on mailboxes as names (RFC 3501 §6.3): RENAME, SUBSCRIBE and
//! UNSUBSCRIBE, LIST and LSUB, STATUS.

use super::*;

impl Session {
    pub(super) async fn rename(&mut self, tag: &str, user: &str, from: String, to: String) {
        let u = user.to_string();
        let now = now_secs();
        let result = if from == "INBOX" {
            // RFC 3501: renaming INBOX moves its messages to a new mailbox
            // and leaves INBOX empty.
            self.shared
                .store
                .run(move |t, c| {
                    let dst = mutate::create_mailbox(t, c, &u, &to, None, now)?;
                    let v = crate::views::TxnViews { txn: t, cf: c.views };
                    let inbox = v.mailbox_id(&u, "INBOX")?.ok_or(MutationError::NoSuchMailbox("INBOX".into()))?;
                    let uids: Vec<u32> = v.messages(inbox)?.into_iter().map(|(uid, _)| uid).collect();
                    mutate::copy(t, c, &u, inbox, &uids, dst.id, true, false)?;
                    Ok(())
                })
                .await
        } else {
            self.shared
                .store
                .run(move |t, c| mutate::rename_mailbox(t, c, &u, &from, &to))
                .await
        };
        match result {
            Ok(()) => {
                self.sync(true);
                self.line(&format!("{tag} OK RENAME completed"));
            }
            Err(e) => self.store_error(tag, e),
        }
    }

    pub(super) async fn subscribe(&mut self, tag: &str, user: &str, mailbox: &Mailbox<'_>, on: bool) {
        let cmd = if on { "SUBSCRIBE" } else { "UNSUBSCRIBE" };
        match mailbox_name(mailbox, self.utf8_names()) {
            Ok(name) => {
                let u = user.to_string();
                match self.shared.store.run(move |t, c| mutate::subscribe(t, c, &u, &name, on)).await {
                    Ok(()) => self.line(&format!("{tag} OK {cmd} completed")),
                    Err(e) => self.store_error(tag, e),
                }
            }
            Err(e) => self.no(tag, &format!("[CANNOT] {e}")),
        }
    }

    pub(super) async fn list(&mut self, tag: &str, user: &str, reference: &Mailbox<'_>, pattern: &ListMailbox<'_>, lsub: bool) {
        let reference = match reference {
            Mailbox::Inbox => b"INBOX".to_vec(),
            Mailbox::Other(o) => o.as_ref().to_vec(),
        };
        let pattern = match pattern {
            ListMailbox::Token(t) => t.as_ref().to_vec(),
            ListMailbox::String(s) => s.as_ref().to_vec(),
        };
        let cmd = ext::ListCommand {
            select: ext::ListSelect::default(),
            reference,
            patterns: vec![pattern],
            ret: ext::ListReturn::default(),
        };
        self.list_extended(tag, user, cmd, lsub).await;
    }

    pub(super) fn status(&mut self, tag: &str, user: &str, mailbox: &Mailbox<'_>, items: &[StatusDataItemName]) {
        let raw = match mailbox {
            Mailbox::Inbox => b"INBOX".to_vec(),
            Mailbox::Other(o) => o.as_ref().to_vec(),
        };
        let items: Vec<ext::StatusItem> = items
            .iter()
            .map(|i| match i {
                StatusDataItemName::Messages => ext::StatusItem::Messages,
                StatusDataItemName::Recent => ext::StatusItem::Recent,
                StatusDataItemName::UidNext => ext::StatusItem::UidNext,
                StatusDataItemName::UidValidity => ext::StatusItem::UidValidity,
                StatusDataItemName::Unseen => ext::StatusItem::Unseen,
                StatusDataItemName::Deleted => ext::StatusItem::Deleted,
                StatusDataItemName::DeletedStorage => ext::StatusItem::DeletedStorage,
                StatusDataItemName::HighestModSeq => ext::StatusItem::HighestModSeq,
            })
            .collect();
        self.status_items(tag, user, &raw, items);
    }

    /// STATUS of the mailbox named `raw` (as sent).
    pub(super) fn status_items(&mut self, tag: &str, user: &str, raw: &[u8], items: Vec<ext::StatusItem>) {
        if self.rev2 && items.contains(&ext::StatusItem::Recent) {
            // RFC 9051 has no \Recent, and no RECENT status-att.
            self.line(&format!("{tag} BAD RECENT is not a STATUS item in IMAP4rev2"));
            return;
        }
        let name = match raw_name(raw, false, self.utf8_names()) {
            Ok(n) => n,
            Err(e) => return self.no(tag, &format!("[CANNOT] {e}")),
        };
        let mb = match self.shared.store.views().mailbox_by_name(user, &name) {
            Ok(Some(mb)) => mb,
            _ => return self.no(tag, "[NONEXISTENT] No such mailbox"),
        };
        if items.contains(&ext::StatusItem::HighestModSeq) {
            // A CONDSTORE enabling command (RFC 7162 section 3.1).
            self.enable_condstore();
        }
        let line = self.status_line(&name, &mb, &items);
        self.line(&line);
        self.line(&format!("{tag} OK STATUS completed"));
    }
}
