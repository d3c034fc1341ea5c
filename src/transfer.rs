//! `tandem import` and `tandem export`: stream mail between files and a
//! running node through the admin endpoint, with a progress bar.

use crate::admin::{ImportItem, ImportResult, MailboxInfo, MessageInfo};
use crate::cli::{urlencode, Admin, ExportCommand, ImportCommand};
use crate::mailfile;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::time::UNIX_EPOCH;

/// Largest batch sent in one request.
const BATCH_BYTES: usize = 8 << 20;
const BATCH_COUNT: usize = 1000;

fn progress(total_msgs: u64, total_bytes: u64) -> ProgressBar {
    let pb = ProgressBar::new(total_bytes);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(format!("0/{total_msgs} messages"));
    if std::env::var_os("TANDEM_NO_PROGRESS").is_some() {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb
}

struct Uploader<'a> {
    admin: &'a Admin,
    user: String,
    folder: String,
    batch: Vec<ImportItem>,
    bytes: usize,
    added: u64,
    skipped: u64,
}

impl<'a> Uploader<'a> {
    fn new(admin: &'a Admin, user: &str) -> Self {
        Uploader {
            admin,
            user: user.to_string(),
            folder: String::new(),
            batch: Vec::new(),
            bytes: 0,
            added: 0,
            skipped: 0,
        }
    }

    async fn push(&mut self, folder: &str, item: ImportItem) -> anyhow::Result<()> {
        if folder != self.folder || self.bytes + item.body.len() > BATCH_BYTES || self.batch.len() >= BATCH_COUNT {
            self.flush().await?;
            self.folder = folder.to_string();
        }
        self.bytes += item.body.len();
        self.batch.push(item);
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let body = postcard::to_allocvec(&self.batch)?;
        let q = format!("/v1/import?user={}&folder={}", urlencode(&self.user), urlencode(&self.folder));
        let r: ImportResult = self
            .admin
            .post_bytes(&q, body)
            .await
            .with_context(|| format!("importing into {}", self.folder))?;
        self.added += r.added;
        self.skipped += r.skipped;
        self.batch.clear();
        self.bytes = 0;
        Ok(())
    }
}

fn mtime(p: &Path) -> i64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Import mail files. A message larger than `max_message` (the node's
/// `lmtp.max_message_size`, counted with CRLF line endings as it would be
/// stored) is not imported: it is named on standard error, and the command
/// fails at the end, after importing everything else.
pub async fn import(admin: &Admin, cmd: ImportCommand, max_message: u64) -> anyhow::Result<()> {
    let mut too_large = 0u64;
    let mut refuse = |what: &dyn std::fmt::Display, size: u64| {
        eprintln!("tandem: not importing {what}: {size} bytes is over the limit of {max_message} (lmtp.max_message_size)");
        too_large += 1;
    };
    match cmd {
        ImportCommand::Maildir { path, user, folder } => {
            let files = mailfile::scan_maildir(&path).with_context(|| format!("reading Maildir {}", path.display()))?;
            let total: u64 = files.iter().map(|f| std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0)).sum();
            let pb = progress(files.len() as u64, total);
            let mut up = Uploader::new(admin, &user);
            for (i, f) in files.iter().enumerate() {
                // Conversion to CRLF only adds bytes: a file over the limit
                // is not even read.
                let on_disk = std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0);
                if on_disk > max_message {
                    refuse(&f.path.display(), on_disk);
                    pb.inc(on_disk);
                    continue;
                }
                let body = std::fs::read(&f.path).with_context(|| format!("reading {}", f.path.display()))?;
                let stored = mailfile::crlf_len(&body) as u64;
                if stored > max_message {
                    refuse(&f.path.display(), stored);
                    pb.inc(body.len() as u64);
                    continue;
                }
                let target = match (&folder, f.folder.as_str()) {
                    (None, name) => name.to_string(),
                    (Some(root), "INBOX") => root.clone(),
                    (Some(root), name) => format!("{root}/{name}"),
                };
                pb.inc(body.len() as u64);
                up.push(
                    &target,
                    ImportItem {
                        body,
                        flags: f.flags.clone(),
                        internal_date: mtime(&f.path),
                    },
                )
                .await?;
                pb.set_message(format!("{}/{} messages", i + 1, files.len()));
            }
            up.flush().await?;
            pb.finish_and_clear();
            println!("imported {} messages into {user} ({} already present)", up.added, up.skipped);
        }
        ImportCommand::Mbox { path, user, folder } => {
            let data = std::fs::read(&path).with_context(|| format!("reading mbox {}", path.display()))?;
            let msgs = mailfile::split_mbox(&data);
            let pb = progress(msgs.len() as u64, data.len() as u64);
            let fallback = mtime(&path);
            let mut up = Uploader::new(admin, &user);
            let n = msgs.len();
            for (i, m) in msgs.into_iter().enumerate() {
                pb.inc(m.body.len() as u64);
                if m.body.len() as u64 > max_message {
                    refuse(&format_args!("message {} of {}", i + 1, path.display()), m.body.len() as u64);
                    continue;
                }
                up.push(
                    &folder,
                    ImportItem {
                        body: m.body,
                        flags: m.flags,
                        internal_date: m.date.unwrap_or(fallback),
                    },
                )
                .await?;
                pb.set_message(format!("{}/{n} messages", i + 1));
            }
            up.flush().await?;
            pb.finish_and_clear();
            println!(
                "imported {} messages into {user}/{folder} ({} already present)",
                up.added, up.skipped
            );
        }
    }
    if too_large > 0 {
        anyhow::bail!("{too_large} messages were not imported: larger than lmtp.max_message_size ({max_message} bytes)");
    }
    Ok(())
}

pub async fn export(admin: &Admin, cmd: ExportCommand) -> anyhow::Result<()> {
    let ExportCommand::Maildir { user, path } = cmd;
    let u = urlencode(&user);
    let boxes: Vec<MailboxInfo> = admin.get(&format!("/v1/mailboxes?user={u}")).await?;
    // Every name is checked before anything is written: a name with no safe
    // Maildir++ directory stops the export.
    let mut dirs = Vec::with_capacity(boxes.len());
    let mut refused = Vec::new();
    for mb in &boxes {
        match mailfile::maildir_dir(&mb.name) {
            Ok(Some(sub)) => dirs.push(path.join(sub)),
            Ok(None) => dirs.push(path.clone()),
            Err(why) => refused.push(format!("{:?} ({why})", mb.name)),
        }
    }
    if !refused.is_empty() {
        anyhow::bail!(
            "nothing exported: these mailboxes of {user} have no safe Maildir++ directory name (rename them first): {}",
            refused.join(", ")
        );
    }
    let total: u64 = boxes.iter().map(|b| b.messages).sum();
    let pb = progress(total, 0);
    let mut written = 0u64;
    for (mb, dir) in boxes.iter().zip(dirs) {
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let msgs: Vec<MessageInfo> = admin.get(&format!("/v1/messages?user={u}&folder={}", urlencode(&mb.name))).await?;
        for m in msgs {
            let body = admin.get_bytes(&format!("/v1/blobs/{}", m.blob)).await?;
            let name = format!(
                "{}.T{}U{}V{}.tandem,S={}{}",
                m.internal_date,
                m.uid,
                m.uid,
                mb.uidvalidity,
                body.len(),
                mailfile::maildir_info(&m.flags)
            );
            let file = dir.join("cur").join(name);
            std::fs::write(&file, &body).with_context(|| format!("writing {}", file.display()))?;
            let t = UNIX_EPOCH + std::time::Duration::from_secs(m.internal_date.max(0) as u64);
            std::fs::File::options().write(true).open(&file)?.set_modified(t)?;
            written += 1;
            pb.inc_length(body.len() as u64);
            pb.inc(body.len() as u64);
            pb.set_message(format!("{written}/{total} messages"));
        }
    }
    pb.finish_and_clear();
    println!("exported {written} messages in {} mailboxes to {}", boxes.len(), path.display());
    Ok(())
}
