//! # Tandem — a mail store that keeps two or three servers in mirror
//!
//! Every mailbox mutation is an event appended to a RocksDB-backed log
//! (the [`wal`] crate); mailbox views are materialised from that log in the
//! same atomic write. Replaying the log reproduces the views exactly.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated with key and line.
//! - [`event`]: what the log records.
//! - [`views`]: the materialised views and the one function that writes them.
//! - [`merkle`]: blake3 summaries of what mirrored nodes must agree on.
//! - [`mutate`]: mutations that decide, append and apply in one transaction.
//! - [`store`]: the log, views and blobs with an async face.
//! - [`replay`]: rebuild views, copy a log, digest views.
//! - [`admin`], [`server`], [`cli`]: the running node and its operators' tools.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod counters;
pub mod event;
pub mod imap;
pub mod lmtp;
pub mod mailfile;
pub mod merkle;
pub mod mutate;
pub mod proto;
pub mod repl;
pub mod replay;
pub mod server;
pub mod store;
pub mod tls;
pub mod transfer;
pub mod views;

#[cfg(test)]
pub(crate) mod testrng;

/// Log to standard error; `TANDEM_LOG` overrides the filter.
pub fn init_tracing(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
