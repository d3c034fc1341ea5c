//! The `tandem` command line. `serve` runs a node; every other command talks
//! to the running node over its admin endpoint (RocksDB admits one process).

use crate::admin::{Status, TailEntry};
use crate::config::Config;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "tandem", version, about = "Mail store daemon that keeps two or three servers in mirror")]
pub struct Cli {
    /// Configuration file (TOML). Without one: data in ./tandem-data,
    /// listeners on loopback.
    #[arg(long, short = 'c', global = true, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node.
    Serve,
    /// Show the node's status.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Print it again every SECS seconds until interrupted (the screen
        /// is cleared first on a terminal; with --json, one document a
        /// line).
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
    },
    /// Deliver a probe over LMTP to one node and read it over IMAP on the
    /// other: OK (exit 0) with the time taken, CRITICAL (2) or UNKNOWN (3),
    /// as monitoring plugins report.
    Watchdog(crate::watchdog::Args),
    /// Make this node the master under a higher epoch (a logged event; an
    /// old master steps down on its own when it receives it).
    Promote,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Replicated settings: set on one node, used by every node (unless
    /// in its `mirror.config_except`).
    #[command(subcommand)]
    Config(crate::settings::ConfigCommand),
    /// Users' storage quotas (RFC 9208), replicated like any event.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Read the log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Import existing mail into a user's mailboxes (idempotent).
    #[command(subcommand)]
    Import(ImportCommand),
    /// Export a user's mailboxes.
    #[command(subcommand)]
    Export(ExportCommand),
    /// List split-brain conflicts: UIDs given to two messages and
    /// mailboxes created twice (pending), and what the master moved.
    Conflicts {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Back up the node's log and bodies into a directory (incremental:
    /// only what is not there yet). Restore with `tandem-replay restore`.
    Backup {
        /// Backup directory (created if missing), or s3://BUCKET[/PREFIX]
        /// (reached with the node's `[backup]` endpoint, region and
        /// credentials).
        #[arg(long)]
        to: PathBuf,
    },
    /// Bring a user's mail (or one folder) as it was at a past instant back
    /// into new folders (`Restored/FOLDER YYYY-MM-DD HH:MM`), from the
    /// node's log; nothing present is touched.
    Restore {
        #[arg(long)]
        user: String,
        /// One folder (with its subfolders); all when absent.
        #[arg(long)]
        folder: Option<String>,
        /// The instant, RFC 3339 (e.g. 2026-11-30T14:00:00Z).
        #[arg(long)]
        at: String,
        /// Top folder of the copies.
        #[arg(long)]
        into: Option<String>,
    },
    /// Print the merkle roots and counts of what mirrored nodes must agree
    /// on (compare two nodes by eye).
    Digest {
        /// Also print this user's root and mailboxes.
        #[arg(long)]
        user: Option<String>,
        /// Also print this mailbox's leaves (needs --user).
        #[arg(long, requires = "user")]
        folder: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Compare this node's merkle tree with a peer's without repairing;
    /// exits non-zero on any difference, naming each.
    Verify {
        /// The peer's mirror address (default: the first of mirror.peers).
        #[arg(long)]
        peer: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long, requires = "user")]
        folder: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Compare with a peer and repair what the logs cannot explain, by
    /// appending events here (this node is the reference).
    Resync {
        /// Compare trees only (the default).
        #[arg(long, conflicts_with = "full")]
        fast: bool,
        /// Also re-hash every body held here, restoring bad ones from the peer.
        #[arg(long)]
        full: bool,
        #[arg(long)]
        user: Option<String>,
        #[arg(long, requires = "user")]
        folder: Option<String>,
        /// The peer's mirror address (default: the first of mirror.peers).
        #[arg(long)]
        peer: Option<String>,
        /// Report what differs without repairing.
        #[arg(long)]
        dry_run: bool,
        /// Join by trees: the peer is the reference and the logs need not
        /// be in step (a node started with an empty data dir, or behind
        /// history its peer no longer holds).
        #[arg(long, conflicts_with = "dry_run")]
        from_peer: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// A Maildir++ tree: the root is INBOX, `.Sub` folders become `Sub`.
    Maildir {
        path: PathBuf,
        #[arg(long)]
        user: String,
        /// Import the root into this folder (subfolders below it).
        #[arg(long)]
        folder: Option<String>,
    },
    /// An mbox file (mboxrd); flags from Status/X-Status headers.
    Mbox {
        path: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "INBOX")]
        folder: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// Write every mailbox of a user as a Maildir++ tree.
    Maildir {
        #[arg(long)]
        user: String,
        path: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user (with INBOX, Sent, Drafts, Trash, Junk, Archive).
    Add {
        user: String,
        /// Read the password from standard input (first line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password.
    Passwd {
        user: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user and all their mail.
    Del { user: String },
    /// List users.
    List,
}

#[derive(Subcommand, Debug)]
pub enum QuotaCommand {
    /// Set a user's limits; a limit not given is lifted.
    Set {
        user: String,
        /// Storage limit: N KiB, or NK, NM, NG.
        #[arg(long, value_parser = parse_kib)]
        storage: Option<u64>,
        /// Message count limit.
        #[arg(long)]
        messages: Option<u64>,
    },
    /// Show a user's limits and usage.
    Get { user: String },
}

/// A storage size in KiB: a number with an optional K, M or G suffix.
pub fn parse_kib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.as_bytes().last().map(|b| b.to_ascii_uppercase()) {
        Some(b'K') => (&t[..t.len() - 1], 1u64),
        Some(b'M') => (&t[..t.len() - 1], 1024),
        Some(b'G') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size (N, NK, NM or NG)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

async fn quota(cfg: &Config, cmd: QuotaCommand) -> anyhow::Result<()> {
    let admin = Admin::new(cfg)?;
    let (user, q): (String, crate::admin::QuotaInfo) = match cmd {
        QuotaCommand::Set { user, storage, messages } => {
            let q = admin
                .send(
                    reqwest::Method::PUT,
                    &format!("/v1/users/{}/quota", urlencode(&user)),
                    serde_json::json!({ "storage_kib": storage, "messages": messages }),
                )
                .await?;
            (user, q)
        }
        QuotaCommand::Get { user } => {
            let q = admin.get(&format!("/v1/users/{}/quota", urlencode(&user))).await?;
            (user, q)
        }
    };
    let limit = |l: Option<u64>| l.map_or("unlimited".to_string(), |n| n.to_string());
    println!("{}", user.to_lowercase());
    println!("  storage  {} KiB of {}", q.used_kib, limit(q.storage_kib));
    println!("  messages {} of {}", q.used_messages, limit(q.messages));
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum LogCommand {
    /// Show the most recent entries.
    Tail {
        #[arg(short = 'n', default_value_t = 20)]
        n: u64,
    },
}

pub fn main() -> ExitCode {
    crate::alloc::bound_retention();
    let cli = Cli::parse();
    // Needs no configuration and has exit codes of its own.
    if let Command::Watchdog(a) = &cli.command {
        return ExitCode::from(crate::watchdog::main(a));
    }
    crate::init_tracing(if matches!(cli.command, Command::Serve) { "info" } else { "warn" });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve => rt.block_on(crate::server::serve(cfg)),
        Command::Watchdog(a) => std::process::exit(i32::from(crate::watchdog::main(&a))),
        Command::Status { json, watch } => {
            let admin = Admin::new(&cfg)?;
            let Some(secs) = watch else {
                let st: Status = rt.block_on(admin.get("/v1/status"))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&st)?);
                } else {
                    print_status(&st);
                }
                return Ok(());
            };
            use std::io::{IsTerminal, Write};
            let tty = std::io::stdout().is_terminal();
            loop {
                let started = std::time::Instant::now();
                // A node that stops answering is reported, not fatal: the
                // watch goes on until it answers again or is interrupted.
                let st: anyhow::Result<Status> = rt.block_on(admin.get("/v1/status"));
                let now = crate::metrics::status::utc(crate::repl::now_ms());
                match (st, json) {
                    (Ok(st), true) => println!("{}", serde_json::to_string(&st)?),
                    (Ok(st), false) => {
                        if tty {
                            print!("\x1b[H\x1b[2J");
                        }
                        println!("--- {now}, every {secs} s (Ctrl-C ends)");
                        print_status(&st);
                    }
                    (Err(e), _) => eprintln!("--- {now}: status failed: {e:#}"),
                }
                std::io::stdout().flush()?;
                std::thread::sleep(std::time::Duration::from_secs(secs).saturating_sub(started.elapsed()));
            }
        }
        Command::Promote => {
            let p: crate::repl::role::Promoted =
                rt.block_on(Admin::new(&cfg)?.send(reqwest::Method::POST, "/v1/promote", serde_json::Value::Null))?;
            if p.changed {
                println!("promoted: master under epoch {}", p.epoch);
            } else {
                println!("already master under epoch {}", p.epoch);
            }
            Ok(())
        }
        Command::User(cmd) => rt.block_on(user(&cfg, cmd)),
        Command::Quota(cmd) => rt.block_on(quota(&cfg, cmd)),
        Command::Config(cmd) => rt.block_on(crate::settings::command(&Admin::new(&cfg)?, cmd)),
        Command::Import(cmd) => rt.block_on(async {
            let admin = Admin::new(&cfg)?;
            // The limit the node's LMTP uses now (a replicated value wins).
            let max = crate::settings::effective(&admin, crate::settings::Key::LmtpMaxMessageSize).await?;
            crate::transfer::import(&admin, cmd, max).await
        }),
        Command::Export(cmd) => rt.block_on(crate::transfer::export(&Admin::new(&cfg)?, cmd)),
        Command::Conflicts { json } => {
            let r: crate::repl::resolve::Report = rt.block_on(Admin::new(&cfg)?.get("/v1/conflicts"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_conflicts(&r);
            }
            Ok(())
        }
        Command::Backup { to } => rt.block_on(backup(&cfg, to)),
        Command::Restore { user, folder, at, into } => {
            let r: serde_json::Value = rt.block_on(Admin::new(&cfg)?.send(
                reqwest::Method::POST,
                "/v1/restore",
                serde_json::json!({ "user": user, "folder": folder, "at": at, "into": into }),
            ))?;
            for f in r["folders"].as_array().into_iter().flatten() {
                println!("restored {} as {} ({} messages)", f["from"], f["to"], f["messages"]);
            }
            Ok(())
        }
        Command::Digest { user, folder, json } => {
            let mut path = "/v1/digest".to_string();
            let mut sep = '?';
            for (k, v) in [("user", &user), ("folder", &folder)] {
                if let Some(v) = v {
                    path.push_str(&format!("{sep}{k}={}", urlencode(v)));
                    sep = '&';
                }
            }
            let d: serde_json::Value = rt.block_on(Admin::new(&cfg)?.get(&path))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_digest(&serde_json::from_value(d).context("unexpected digest from the node")?);
            }
            Ok(())
        }
        Command::Verify { peer, user, folder, json } => {
            let r = resync_call(&rt, &cfg, peer, user, folder, false, false, false)?;
            print_resync(&r, json)?;
            if r.differences > 0 {
                bail!("{} difference(s) with {}", r.differences, r.peer);
            }
            Ok(())
        }
        Command::Resync {
            fast: _,
            full,
            user,
            folder,
            peer,
            dry_run,
            from_peer,
            json,
        } => {
            let r = resync_call(&rt, &cfg, peer, user, folder, !dry_run, full, from_peer)?;
            print_resync(&r, json)?;
            if !dry_run && r.repaired < r.differences {
                bail!("{} of {} difference(s) not repaired", r.differences - r.repaired, r.differences);
            }
            Ok(())
        }
        Command::Log(LogCommand::Tail { n }) => {
            let entries: Vec<TailEntry> = rt.block_on(Admin::new(&cfg)?.get(&format!("/v1/log/tail?n={n}")))?;
            for e in entries {
                let secs = e.time_ms / 1000;
                println!(
                    "{:>8} {}:{:<6} {}.{:03} {}",
                    e.order,
                    e.origin,
                    e.seq,
                    secs,
                    e.time_ms % 1000,
                    e.event
                );
            }
            Ok(())
        }
    }
}

fn print_conflicts(r: &crate::repl::resolve::Report) {
    let name = |n: &Option<String>, id: &str| n.clone().unwrap_or_else(|| format!("(deleted {id})"));
    println!(
        "pending     {} uid collisions   {} name conflicts   resolved {}",
        r.pending.len(),
        r.name_conflicts.len(),
        r.resolved.len()
    );
    for p in &r.pending {
        println!("collision   {} {} uid {}", p.user, name(&p.mailbox, &p.mailbox_id), p.uid);
        for m in &p.messages {
            println!(
                "  {}  {}{}",
                m.guid,
                if m.shown { "shown" } else { "kept aside" },
                m.cause.as_deref().map(|c| format!(" by entry {c}")).unwrap_or_default()
            );
        }
    }
    for c in &r.name_conflicts {
        println!(
            "name        {} {:?} mailbox {} ({} messages) hidden behind {}",
            c.user,
            c.name,
            c.mailbox_id,
            c.messages,
            c.winner_id.as_deref().unwrap_or("-")
        );
    }
    for m in &r.resolved {
        println!(
            "resolved    {} {} uid {} -> {} uid {}   guid {}   {}by {}",
            m.user,
            name(&m.from, &m.from_id),
            m.old_uid,
            name(&m.to, &m.to_id),
            m.new_uid,
            m.guid,
            m.cause.as_deref().map(|c| format!("caused by {c}, resolved ")).unwrap_or_default(),
            m.resolved_by
        );
    }
}

async fn backup(cfg: &Config, to: PathBuf) -> anyhow::Result<()> {
    let to = if crate::backup::is_s3(&to) {
        to
    } else {
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        std::fs::canonicalize(&to).with_context(|| format!("resolving {}", to.display()))?
    };
    let r: serde_json::Value = Admin::new(cfg)?
        .send(reqwest::Method::POST, "/v1/backup", serde_json::json!({ "to": to }))
        .await?;
    let runs = r["runs"].as_array().map(Vec::len).unwrap_or(0);
    let st = &r["status"];
    println!(
        "backup {}: {} new manifest(s), position {} (manifest {})",
        to.display(),
        runs,
        st["position"],
        st["manifest"]
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn resync_call(
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    peer: Option<String>,
    user: Option<String>,
    folder: Option<String>,
    repair: bool,
    full: bool,
    from_peer: bool,
) -> anyhow::Result<crate::repl::resync::Report> {
    let peer = match peer {
        Some(p) => p,
        None => cfg
            .mirror
            .peers
            .first()
            .map(|p| p.to_string())
            .context("no --peer given and no mirror.peers configured")?,
    };
    let req = crate::repl::resync::Request {
        peer,
        user,
        folder,
        repair,
        full,
        from_peer,
    };
    let admin = Admin::new(cfg)?;
    rt.block_on(async {
        let call = admin.send(reqwest::Method::POST, "/v1/resync", serde_json::to_value(&req)?);
        tokio::pin!(call);
        let mut shown = ResyncProgress::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tokio::select! {
                r = &mut call => {
                    shown.finish();
                    return r;
                }
                _ = tick.tick() => {
                    // The node's status names the comparison it runs.
                    if let Ok(st) = admin.get::<Status>("/v1/status").await {
                        shown.show(st.resync.running.as_ref());
                    }
                }
            }
        }
    })
}

/// Progress of a resync while the node runs it: a bar on a terminal,
/// otherwise a plain line on standard error when the phase changes and
/// every few seconds (standard output keeps only the report).
struct ResyncProgress {
    bar: Option<indicatif::ProgressBar>,
    last_line: Option<(std::time::Instant, String)>,
}

impl ResyncProgress {
    fn new() -> ResyncProgress {
        let bar = (std::io::stdout().is_terminal() && std::env::var_os("TANDEM_NO_PROGRESS").is_none()).then(|| {
            let pb = indicatif::ProgressBar::new(0);
            pb.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            pb
        });
        ResyncProgress { bar, last_line: None }
    }

    fn show(&mut self, p: Option<&crate::repl::resync::Progress>) {
        let Some(p) = p else { return };
        let unit = if p.phase == "repairing" { "repairs" } else { "messages" };
        let msg = format!("{} {}: folders {}/{}", p.phase, p.peer, p.folders_done, p.folders_total);
        match &self.bar {
            Some(pb) => {
                pb.set_length(p.messages_total);
                pb.set_position(p.messages_done);
                pb.set_message(format!("{unit}, {msg}"));
            }
            None => {
                let line = format!("{msg}, {unit} {}/{}", p.messages_done, p.messages_total);
                let due = match &self.last_line {
                    None => true,
                    Some((at, old)) => !old.starts_with(&p.phase) || at.elapsed() >= std::time::Duration::from_secs(5),
                };
                if due && self.last_line.as_ref().is_none_or(|(_, old)| *old != line) {
                    eprintln!("{line}");
                    self.last_line = Some((std::time::Instant::now(), line));
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
    }
}

fn print_resync(r: &crate::repl::resync::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "compared {} messages with {}: {} difference(s), {} repaired   {} bytes sent, {} received, {} round trips, {:.3}s",
        r.compared, r.peer, r.differences, r.repaired, r.bytes_sent, r.bytes_received, r.round_trips, r.seconds
    );
    let c = &r.carried;
    if c.total() > 0 {
        println!(
            "bytes       {} of tree nodes, {} of records, {} of bodies, {} of heads",
            c.tree, c.records, c.bodies, c.heads
        );
    }
    if !r.logs_in_step {
        println!("note        the log heads here and on the peer differed: entries in flight may explain some differences");
    }
    if r.bodies_checked > 0 {
        let mb = r.body_bytes_checked as f64 / 1e6;
        println!(
            "bodies      {} checked ({mb:.1} MB, {:.0} MB/s over the whole run), {} bad or missing",
            r.bodies_checked,
            mb / r.seconds.max(1e-9),
            r.bodies_bad
        );
    }
    for d in &r.items {
        let mut place = d.user.clone().unwrap_or_default();
        if let Some(m) = &d.mailbox {
            place.push_str(&format!(" {m}"));
        }
        if let Some(u) = d.uid {
            place.push_str(&format!(" uid {u}"));
        }
        println!(
            "  {:<12} {:<40} {}{}",
            d.kind,
            place.trim(),
            d.detail,
            if d.repaired { "   [repaired]" } else { "" }
        );
    }
    Ok(())
}

fn print_digest(d: &crate::merkle::DigestReport) {
    println!("root        {}   users {}   messages {}", d.root, d.users, d.messages);
    if let Some(u) = &d.user {
        println!(
            "user        {}   root {}   messages {}   subscriptions {}",
            u.user, u.root, u.messages, u.subscriptions
        );
        for m in &u.mailboxes {
            println!(
                "  {:<20} root {}   messages {}   uidvalidity {}   uidnext {}   summary {}",
                m.name, m.root, m.messages, m.uidvalidity, m.uidnext, m.summary
            );
            for l in &m.leaves {
                println!("    uids {}..={}   {}   messages {}", l.first_uid, l.last_uid, l.hash, l.messages);
            }
        }
    }
}

fn print_status(st: &Status) {
    println!("node        {} (origin {}, {} epoch {})", st.node_id, st.origin, st.role, st.epoch);
    println!("version     {}   up {}s", st.version, st.uptime_secs);
    for (k, v) in &st.listeners {
        println!("listen      {k:<6} {v}");
    }
    println!("users       {}", st.users);
    let l = &st.log;
    println!(
        "log         apply order {}   entries {}   fsyncs {}   appends/fsync {:.2}   max group {}",
        l.apply_order, l.entries_appended, l.fsyncs, l.appends_per_fsync, l.max_group
    );
    let m = &l.memory;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!(
        "memory      block cache {:.1}/{:.0} MiB ({:.1} pinned)   memtables {:.1}/{:.0} MiB   RocksDB WAL files {:.1}/{:.0} MiB",
        mib(m.block_cache_bytes),
        mib(m.block_cache_capacity),
        mib(m.block_cache_pinned_bytes),
        mib(m.memtable_bytes),
        mib(m.write_buffer_budget),
        mib(m.wal_files_bytes),
        mib(m.max_wal_bytes)
    );
    let d = &l.disk;
    // "log 12.3, views 40.1" over the column families with files of a kind.
    let by_cf = |size: fn(&wal::CfDisk) -> u64| {
        let parts: Vec<String> = d
            .column_families
            .iter()
            .filter(|c| size(c) > 0)
            .map(|c| format!("{} {:.1}", c.name, mib(size(c))))
            .collect();
        if parts.is_empty() {
            "0".to_string()
        } else {
            parts.join(", ")
        }
    };
    println!(
        "disk        {:.1} MiB   tables {} MiB   blob files {} MiB   RocksDB WAL files {:.1} MiB",
        mib(d.total()),
        by_cf(|c| c.table_bytes),
        by_cf(|c| c.blob_bytes),
        mib(d.wal_files_bytes)
    );
    if l.bulk_flushes > 0 {
        println!(
            "  bulk      {} groups wrote {} bytes of bodies straight to blob files",
            l.bulk_flushes, l.bulk_bytes
        );
    }
    for (o, s) in &l.heads {
        println!("  origin    {o} seq {s}");
    }
    let m = &st.lmtp;
    println!(
        "lmtp        connections {} (in flight {})   messages {}   delivered {}   bytes {}",
        m.connections, m.in_flight, m.messages, m.delivered, m.bytes
    );
    println!(
        "  rejected  unknown user {}   no mailbox {}   oversize {}   syntax {}   busy {}   temporary failures {}   timeouts {}   aborted in DATA {}",
        m.rejected_unknown_user,
        m.rejected_no_mailbox,
        m.rejected_oversize,
        m.rejected_syntax,
        m.refused_busy,
        m.temp_failures,
        m.timeouts,
        m.aborted_in_data
    );
    let i = &st.imap;
    println!(
        "imap        connections {} (in flight {})   logins {}   failed logins {}   throttled {}   commands {}   bad {}   appends {}   busy {}   timeouts {}",
        i.connections,
        i.in_flight,
        i.logins,
        i.login_failures,
        i.login_throttled,
        i.commands,
        i.bad_commands,
        i.appends,
        i.refused_busy,
        i.timeouts
    );
    if let Some(p) = &st.pop3 {
        println!(
            "pop3        connections {} (in flight {})   logins {}   failed logins {}   maildrop in use {}   commands {}   bad {}   retrieved {}   deleted {}   busy {}   timeouts {}",
            p.connections,
            p.in_flight,
            p.logins,
            p.login_failures,
            p.maildrop_in_use,
            p.commands,
            p.bad_commands,
            p.retrieved,
            p.deleted,
            p.refused_busy,
            p.timeouts
        );
    }
    let c = &st.conflicts;
    println!(
        "conflicts   kept aside {}   uid collisions pending {} ({} reported to the master)   name conflicts pending {}   messages moved by the master {}",
        c.kept_aside, c.uid_collisions, c.reported, c.name_conflicts, c.resolved
    );
    let mi = &st.mirror;
    if mi.enabled {
        println!(
            "mirror      {} listening on {}   auth failures {}   bad frames {}   uid conflicts {}   ack timeouts {}",
            mi.role,
            mi.listen.as_deref().unwrap_or("-"),
            mi.auth_failures,
            mi.bad_frames,
            mi.uid_conflicts,
            mi.ack_timeouts
        );
        if mi.rollbacks + mi.forks > 0 {
            println!(
                "  DIVERGED  rollbacks {}   forks {}   last: {}",
                mi.rollbacks,
                mi.forks,
                mi.last_divergence.as_deref().unwrap_or("-")
            );
        }
        let hostile = [
            mi.connections_refused,
            mi.auth_timeouts,
            mi.own_origin_refused,
            mi.oversized_batches,
            mi.query_floods,
        ];
        if hostile.iter().any(|n| *n > 0) {
            println!(
                "  refused   connections {}   auth timeouts {}   own origin {}   oversized batches {}   query floods {}",
                mi.connections_refused, mi.auth_timeouts, mi.own_origin_refused, mi.oversized_batches, mi.query_floods
            );
        }
        for o in &mi.outgoing {
            println!(
                "  to {:<21} {:<12} since {}   sent {}   queue {}   lag {:.1}s   in flight {} ({} bytes)   {:.0} entries/s{}",
                o.address,
                o.state,
                o.since_ms / 1000,
                o.sent,
                o.queue,
                o.lag_secs,
                o.inflight_batches,
                o.unacked_bytes,
                o.send_rate,
                o.last_error.as_deref().map(|e| format!("   last error: {e}")).unwrap_or_default()
            );
            println!(
                "     added here {}   bodies sent {} ({} bytes)   held by peer {}   already sent {}",
                o.local_added, o.bodies_sent, o.body_bytes_sent, o.bodies_held_by_peer, o.bodies_already_sent
            );
            if let Some(b) = &o.behind_pruned {
                println!("     NEEDS JOIN BY TREES: {b}");
            }
        }
        for (peer, i) in &mi.incoming {
            println!(
                "  from {:<19} {:<12} batches {}   add {}   delete {}   rename {}   flags {}   other {}   duplicates {}   moved {}   failed {}   {:.0} entries/s",
                peer,
                if i.connected { "connected" } else { "disconnected" },
                i.batches,
                i.applied.add,
                i.applied.delete,
                i.applied.rename,
                i.applied.flags,
                i.applied.other,
                i.applied.duplicates,
                i.applied.rehomed,
                i.failed,
                i.apply_rate
            );
        }
        print_join_status(&mi.join);
    }
    print_resync_status(&st.resync);
    if let Some(s) = &st.sidefiles {
        crate::sidefiles::print_status(s);
    }
    for b in &st.backup {
        println!(
            "backup      {}{}   position {} of {}   lag {} entries ({:.1}s)   manifest {}   bodies {} ({} bytes)   objects {}   failures {}{}",
            b.target,
            if b.continuous { " (continuous)" } else { "" },
            b.position,
            b.apply_order,
            b.lag_entries,
            b.lag_secs,
            b.manifest,
            b.bodies,
            b.body_bytes,
            b.objects,
            b.failures,
            b.last_error.as_deref().map(|e| format!("   last error: {e}")).unwrap_or_default()
        );
    }
    crate::retention::print_status(&st.retention);
    if l.panics > 0 {
        println!("BUG         {} transactions panicked", l.panics);
    }
    if l.unclean_shutdown_recovered {
        println!("recovered   after an unclean shutdown");
    }
    if let Some(p) = &l.poisoned {
        println!("POISONED    {p}");
    }
}

/// The `resync` line of `tandem status` (and the one below it while a
/// comparison runs); nothing when no comparison ran and none is scheduled.
/// The `join by trees` line under the mirror, once a peer was checked.
fn print_join_status(j: &crate::repl::resync::join::JoinStatus) {
    if j.checks == 0 && j.joins == 0 {
        return;
    }
    let now = match (&j.state[..], &j.peer) {
        ("checking", Some(p)) => format!("checking {p}"),
        ("joining", Some(p)) => format!("JOINING {p}"),
        ("waiting", _) => format!("waiting until {}", j.retry_ms.unwrap_or(0) / 1000),
        (s, _) => s.to_string(),
    };
    let last = j.last.as_ref().map(|l| {
        let origins: Vec<String> = l
            .behind
            .iter()
            .map(|(o, b)| format!("{o} held to {} pruned to {}", b.held, b.base))
            .collect();
        format!(
            "   last: {} ({}) at {} for {:.1}s, {}: {}",
            l.peer,
            l.node,
            l.started_ms / 1000,
            l.seconds,
            origins.join(", "),
            match &l.error {
                Some(e) => format!("FAILED: {e}"),
                None if l.seconds > 0.0 => format!("joined, {} repaired, {} messages restored", l.repaired, l.messages_restored),
                None => "running".to_string(),
            }
        )
    });
    println!(
        "  join by trees   {now}   checks {}   joins {}   failed {}{}",
        j.checks,
        j.joins,
        j.failures,
        last.unwrap_or_default()
    );
}

fn print_resync_status(r: &crate::repl::resync::ResyncStatus) {
    if r.interval_secs == 0 && r.runs == 0 && r.running.is_none() {
        return;
    }
    let schedule = match (r.interval_secs, r.scheduled_here) {
        (0, _) => "not scheduled".to_string(),
        (s, true) => format!("every {s}s"),
        (s, false) => format!("every {s}s on the master"),
    };
    println!(
        "resync      {schedule}   runs {} (failed {})   differences {}   repaired {} in {} folders   messages restored {}{}",
        r.runs,
        r.failures,
        r.differences,
        r.repaired,
        r.folders_repaired,
        r.messages_restored,
        r.last_error.as_deref().map(|e| format!("   last error: {e}")).unwrap_or_default()
    );
    if let Some(l) = &r.last {
        println!(
            "  last      {} {} {} {}   {:.3}s   compared {} messages, {} folders   differences {}   repaired {} in {} folders   restored {}{}",
            l.started_ms / 1000,
            l.trigger,
            if l.repair { "repair" } else { "compare" },
            l.peer,
            l.seconds,
            l.compared,
            l.folders_compared,
            l.differences,
            l.repaired,
            l.folders_repaired,
            l.messages_restored,
            l.error.as_deref().map(|e| format!("   FAILED: {e}")).unwrap_or_default()
        );
    }
    if let Some(p) = &r.running {
        println!(
            "  running   {} {}   folders {} of {}   messages {} of {}",
            p.phase, p.peer, p.folders_done, p.folders_total, p.messages_done, p.messages_total
        );
    }
}

fn read_password(password_stdin: bool) -> anyhow::Result<String> {
    let pw = if password_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Again: ")?;
        if a != b {
            bail!("the passwords differ");
        }
        a
    };
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(pw)
}

async fn user(cfg: &Config, cmd: UserCommand) -> anyhow::Result<()> {
    let admin = Admin::new(cfg)?;
    match cmd {
        UserCommand::Add { user, password_stdin } => {
            let password = read_password(password_stdin)?;
            let _: serde_json::Value = admin
                .send(
                    reqwest::Method::POST,
                    "/v1/users",
                    serde_json::json!({ "user": user, "password": password }),
                )
                .await?;
            println!("user {} created", user.to_lowercase());
        }
        UserCommand::Passwd { user, password_stdin } => {
            let password = read_password(password_stdin)?;
            let _: serde_json::Value = admin
                .send(
                    reqwest::Method::PUT,
                    &format!("/v1/users/{}/password", urlencode(&user)),
                    serde_json::json!({ "password": password }),
                )
                .await?;
            println!("password of {user} changed");
        }
        UserCommand::Del { user } => {
            let _: serde_json::Value = admin
                .send(
                    reqwest::Method::DELETE,
                    &format!("/v1/users/{}", urlencode(&user)),
                    serde_json::Value::Null,
                )
                .await?;
            println!("user {user} deleted");
        }
        UserCommand::List => {
            let users: Vec<String> = admin.get("/v1/users").await?;
            for u in users {
                println!("{u}");
            }
        }
    }
    Ok(())
}

/// Client of the admin endpoint.
pub struct Admin {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Admin {
    /// Find the running node's admin address (the bound one, from the data
    /// dir, else the configured one) and its token.
    pub fn new(cfg: &Config) -> anyhow::Result<Admin> {
        let token_path = cfg.token_path();
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| {
                format!(
                    "reading the admin token {} (is the node's data dir right, and has it been started?)",
                    token_path.display()
                )
            })?
            .trim()
            .to_string();
        let bound = std::fs::read_to_string(cfg.node.data_dir.join(crate::server::LISTEN_FILE))
            .ok()
            .and_then(|s| serde_json::from_str::<std::collections::BTreeMap<String, String>>(&s).ok())
            .and_then(|m| m.get("admin").cloned());
        let base = bound.unwrap_or_else(|| format!("http://{}", cfg.admin.listen));
        Ok(Admin {
            base,
            token,
            http: reqwest::Client::new(),
        })
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(reqwest::Method::GET, path, serde_json::Value::Null).await
    }

    /// POST raw bytes.
    pub async fn post_bytes<T: serde::de::DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> anyhow::Result<T> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", self.base))?;
        Self::answer(&url, resp).await
    }

    /// GET raw bytes.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", self.base))?;
        if !resp.status().is_success() {
            bail!("{url}: {}", resp.status());
        }
        Ok(resp.bytes().await?.to_vec())
    }

    async fn answer<T: serde::de::DeserializeOwned>(url: &str, resp: reqwest::Response) -> anyhow::Result<T> {
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or(text);
            bail!("{msg}");
        }
        serde_json::from_str(&text).with_context(|| format!("unexpected answer from {url}"))
    }

    pub async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<T> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if !body.is_null() {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {} (is `tandem serve` running?)", self.base))?;
        Self::answer(&url, resp).await
    }
}

/// Percent-encode a string for a URL path segment or query value.
pub fn urlencode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::parse_kib;

    #[test]
    fn sizes_in_kib() {
        assert_eq!(parse_kib("512"), Ok(512));
        assert_eq!(parse_kib("8K"), Ok(8));
        assert_eq!(parse_kib("3m"), Ok(3 * 1024));
        assert_eq!(parse_kib("2G"), Ok(2 * 1024 * 1024));
        for bad in ["", "K", "12X", "-1", "1.5G", "99999999999999999999G", "18014398509481984G"] {
            assert!(parse_kib(bad).is_err(), "{bad}");
        }
    }
}
