//! # Tandem — a mail store that keeps two or three servers in mirror
//!
//! Every mailbox mutation is an event appended to a RocksDB-backed log
//! (the [`wal`] crate); mailbox views are materialised from that log in the
//! same atomic write. Replaying the log reproduces the views exactly.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated with key and line.
//! - [`settings`]: replicated settings layered over the file.
//! - [`event`]: what the log records.
//! - [`views`]: the materialised views and the one function that writes them.
//! - [`merkle`]: blake3 summaries of what mirrored nodes must agree on.
//! - [`mutate`]: mutations that decide, append and apply in one transaction.
//! - [`store`]: the log, views and blobs with an async face.
//! - [`replay`]: rebuild views, copy a log, digest views.
//! - [`backup`]: backups of the log and bodies, and restoring from them.
//! - [`admin`], [`server`], [`cli`]: the running node and its operators' tools.

pub mod admin;
pub mod alloc;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod config;
pub mod event;
pub mod imap;
pub mod lmtp;
pub mod mailfile;
pub mod merkle;
pub mod metrics;
pub mod mutate;
pub mod notify;
pub mod pop3;
pub mod proto;
pub mod repl;
pub mod replay;
pub mod retention;
pub mod server;
pub mod settings;
pub mod sidefiles;
pub mod store;
pub mod tls;
pub mod transfer;
pub mod views;
pub mod watchdog;

#[cfg(test)]
pub(crate) mod testrng;

/// Log to standard error; `TANDEM_LOG` overrides the filter. Colours only
/// when standard error is a terminal (not in a file or a journal); no
/// timestamps when it goes to systemd's journal.
pub fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let chosen = std::env::var("TANDEM_LOG").ok().filter(|v| !v.trim().is_empty());
    let mut filter = chosen
        .as_deref()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    // rustls warns at every client that sends an IP address (or another
    // name RFC 6066 does not allow) as SNI; many mail clients do, and the
    // handshake goes on regardless. Shown only when asked for by name.
    if !chosen.is_some_and(|v| v.contains("rustls")) {
        if let Ok(quiet) = QUIET_SNI.parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // Under systemd with stderr going to the journal (which sets
    // JOURNAL_STREAM), the journal stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        let _ = fmt.without_time().try_init();
    } else {
        let _ = fmt.try_init();
    }
}

/// The filter directive that silences rustls' SNI warnings.
const QUIET_SNI: &str = "rustls::msgs::handshake=error";
