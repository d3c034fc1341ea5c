//! Replicated settings: the per-system policies that must be the same on
//! every node of a mirror (login budgets, connection limits per user and
//! per address, the largest message, detail folders, ...). They travel as
//! `ConfigSet` events in the log, so a `tandem config set` on any node
//! reaches the others as mail does, and takes effect without a restart.
//!
//! # Layering
//!
//! For each key of [`Key::ALL`] the value a node uses (its *effective*
//! value) is:
//!
//! 1. the replicated value, when one is set and the key is not in this
//!    node's `[mirror] config_except`;
//! 2. else the value in this node's configuration file;
//! 3. else the built-in default.
//!
//! An empty replicated value means "unset": `tandem config unset KEY` logs
//! one, and every node goes back to steps 2 and 3. `config_except` changes
//! only which value the node uses: the events are logged, applied to the
//! views and counted in the merkle tree on every node alike, so logs, views
//! and trees stay identical across the mirror. A replicated value this node
//! cannot accept (written by a build with other bounds) is not used: the
//! file value is, and `tandem config list` shows why.
//!
//! Every other key (listeners, the data directory, TLS files, the node id,
//! `[mirror]`, `[backup]`, `[metrics]`, ...) is node-local: `config set`
//! refuses it, naming the key and why.
//!
//! # Taking effect
//!
//! [`Settings`] holds each effective value in an atomic that the listeners
//! read where they use it. [`follow`] refreshes them after every durable
//! group that changed the replicated configuration, whether the `ConfigSet`
//! was appended here or applied from a peer (it watches the store's commits
//! and the configuration's merkle node, one point read per group).

use crate::config::Config;
use crate::views::{ViewError, ViewRead};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A replicated key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    ImapMaxConnectionsPerUser,
    ImapMaxConnectionsPerIp,
    ImapLoginAttemptsPerUser,
    ImapLoginAttemptsPerIp,
    ImapLoginLockoutSecs,
    ImapAuthCacheSecs,
    ImapMaxBadCommands,
    ImapMaxLiteral,
    Pop3MaxBadCommands,
    LmtpMaxMessageSize,
    LmtpDetailFolders,
    LmtpIdleTimeoutSecs,
    LmtpMaxSessionSecs,
}

/// The type of a key's value, with its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole number from `min` to `max`.
    Int { min: u64, max: u64 },
    /// `true` or `false`.
    Bool,
}

impl Kind {
    /// How the type reads in listings.
    pub fn describe(&self) -> String {
        match self {
            Kind::Int { min, max } => format!("integer {min}..{max}"),
            Kind::Bool => "bool".into(),
        }
    }
}

/// Thirty days, the longest lockout or login memory accepted.
const MONTH_SECS: u64 = 30 * 86_400;
const MAX_MESSAGE: u64 = crate::repl::frame::MAX_MESSAGE;

impl Key {
    /// Every replicated key, in listing order.
    pub const ALL: [Key; 13] = [
        Key::ImapMaxConnectionsPerUser,
        Key::ImapMaxConnectionsPerIp,
        Key::ImapLoginAttemptsPerUser,
        Key::ImapLoginAttemptsPerIp,
        Key::ImapLoginLockoutSecs,
        Key::ImapAuthCacheSecs,
        Key::ImapMaxBadCommands,
        Key::ImapMaxLiteral,
        Key::Pop3MaxBadCommands,
        Key::LmtpMaxMessageSize,
        Key::LmtpDetailFolders,
        Key::LmtpIdleTimeoutSecs,
        Key::LmtpMaxSessionSecs,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The key as written in the configuration file: `section.key`.
    pub fn name(self) -> &'static str {
        match self {
            Key::ImapMaxConnectionsPerUser => "imap.max_connections_per_user",
            Key::ImapMaxConnectionsPerIp => "imap.max_connections_per_ip",
            Key::ImapLoginAttemptsPerUser => "imap.login_attempts_per_user",
            Key::ImapLoginAttemptsPerIp => "imap.login_attempts_per_ip",
            Key::ImapLoginLockoutSecs => "imap.login_lockout_secs",
            Key::ImapAuthCacheSecs => "imap.auth_cache_secs",
            Key::ImapMaxBadCommands => "imap.max_bad_commands",
            Key::ImapMaxLiteral => "imap.max_literal",
            Key::Pop3MaxBadCommands => "pop3.max_bad_commands",
            Key::LmtpMaxMessageSize => "lmtp.max_message_size",
            Key::LmtpDetailFolders => "lmtp.detail_folders",
            Key::LmtpIdleTimeoutSecs => "lmtp.idle_timeout_secs",
            Key::LmtpMaxSessionSecs => "lmtp.max_session_secs",
        }
    }

    /// The type and the bounds a replicated value must keep.
    pub fn kind(self) -> Kind {
        let int = |min, max| Kind::Int { min, max };
        match self {
            Key::ImapMaxConnectionsPerUser | Key::ImapMaxConnectionsPerIp => int(1, 1_000_000),
            // 0: no budget of that kind.
            Key::ImapLoginAttemptsPerUser | Key::ImapLoginAttemptsPerIp => int(0, 1_000_000),
            Key::ImapLoginLockoutSecs => int(1, MONTH_SECS),
            // 0: logins are not remembered.
            Key::ImapAuthCacheSecs => int(0, MONTH_SECS),
            Key::ImapMaxBadCommands | Key::Pop3MaxBadCommands => int(1, 10_000),
            Key::ImapMaxLiteral => int(1024, MAX_MESSAGE),
            Key::LmtpMaxMessageSize => int(1, MAX_MESSAGE),
            Key::LmtpDetailFolders => Kind::Bool,
            Key::LmtpIdleTimeoutSecs => int(1, 86_400),
            Key::LmtpMaxSessionSecs => int(1, 7 * 86_400),
        }
    }

    /// This key's value in a loaded configuration (the file's, or the default).
    fn file_value(self, c: &Config) -> u64 {
        match self {
            Key::ImapMaxConnectionsPerUser => c.imap.max_connections_per_user as u64,
            Key::ImapMaxConnectionsPerIp => c.imap.max_connections_per_ip as u64,
            Key::ImapLoginAttemptsPerUser => c.imap.login_attempts_per_user.into(),
            Key::ImapLoginAttemptsPerIp => c.imap.login_attempts_per_ip.into(),
            Key::ImapLoginLockoutSecs => c.imap.login_lockout_secs,
            Key::ImapAuthCacheSecs => c.imap.auth_cache_secs,
            Key::ImapMaxBadCommands => c.imap.max_bad_commands.into(),
            Key::ImapMaxLiteral => c.imap.max_literal,
            Key::Pop3MaxBadCommands => c.pop3.max_bad_commands.into(),
            Key::LmtpMaxMessageSize => c.lmtp.max_message_size,
            Key::LmtpDetailFolders => c.lmtp.detail_folders.into(),
            Key::LmtpIdleTimeoutSecs => c.lmtp.idle_timeout_secs,
            Key::LmtpMaxSessionSecs => c.lmtp.max_session_secs,
        }
    }

    /// The replicated key named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == name)
    }

    /// A value as text: decimal, or `true` / `false`.
    pub fn show(self, v: u64) -> String {
        match self.kind() {
            Kind::Int { .. } => v.to_string(),
            Kind::Bool => (v != 0).to_string(),
        }
    }

    /// Parse and bound a value given as text.
    pub fn parse(self, text: &str) -> Result<u64, String> {
        let t = text.trim();
        match self.kind() {
            Kind::Bool => match t {
                "true" => Ok(1),
                "false" => Ok(0),
                _ => Err("write true or false".into()),
            },
            Kind::Int { min, max } => {
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("write a whole number from {min} to {max}"));
                }
                match t.parse::<u64>() {
                    Ok(v) if (min..=max).contains(&v) => Ok(v),
                    _ => Err(format!("out of range: from {min} to {max}")),
                }
            }
        }
    }
}

/// Why a key cannot be set or read as a replicated setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("{key} is node-local and never replicates ({why}); set it in each node's configuration file")]
    NodeLocal { key: String, why: &'static str },
    #[error("{key}: no such key (`tandem config list` shows the replicated keys)")]
    Unknown { key: String },
    #[error("{key} = {value:?}: {why}")]
    Invalid { key: String, value: String, why: String },
}

/// Sections of the configuration file.
const SECTIONS: [&str; 8] = ["node", "imap", "lmtp", "admin", "mirror", "pop3", "backup", "metrics"];

/// Why a key that is not replicated stays on its node; `None` when the key
/// is not in any section of the file.
pub fn node_local_reason(name: &str) -> Option<&'static str> {
    let (section, key) = name.split_once('.')?;
    if !SECTIONS.contains(&section) || key.is_empty() {
        return None;
    }
    Some(match (section, key) {
        ("node", _) => "it names this node, its data directory or its disk",
        ("mirror", _) => "the mirror's own settings (role, peers, secret, acknowledgements, config_except) belong to each node",
        ("backup", _) => "each node backs up its own store to its own target",
        ("metrics", _) => "the metrics listener and its tokens belong to each node",
        ("admin", _) => "the admin listener belongs to each node",
        (_, "listen" | "tls_listen") => "a listener address of this node",
        ("imap", "tls_cert" | "tls_key") => "a TLS file on this node's disk",
        ("lmtp", "hostname") => "this node's name in greetings and certificates",
        _ => "not one of the replicated keys that `tandem config list` shows",
    })
}

/// The replicated key called `name`, or why there is none.
pub fn lookup(name: &str) -> Result<Key, SettingError> {
    if let Some(k) = Key::from_name(name) {
        return Ok(k);
    }
    match node_local_reason(name) {
        Some(why) => Err(SettingError::NodeLocal { key: name.into(), why }),
        None => Err(SettingError::Unknown { key: name.into() }),
    }
}

/// Check `value` for the key `name`: the key and its value in the
/// canonical text that travels in the `ConfigSet` event.
pub fn check(name: &str, value: &str) -> Result<(Key, String), SettingError> {
    let k = lookup(name)?;
    let invalid = |why: String| SettingError::Invalid {
        key: name.into(),
        value: value.into(),
        why,
    };
    if value.trim().is_empty() {
        return Err(invalid("empty; `tandem config unset` removes a replicated value".into()));
    }
    let v = k.parse(value).map_err(invalid)?;
    Ok((k, k.show(v)))
}

/// Where an effective value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The replicated value.
    Replicated,
    /// This node's configuration file (no replicated value is set, or it
    /// is one this node cannot accept).
    File,
    /// The built-in default (neither is set).
    Default,
    /// A replicated value is set, but the key is in this node's
    /// `[mirror] config_except`: the file value (or default) holds.
    Excepted,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Replicated => "replicated",
            Source::File => "file",
            Source::Default => "default",
            Source::Excepted => "excepted",
        }
    }
}

/// The layering rule, on its own: a key's effective value and its source,
/// and why a replicated value was not used when it cannot be.
pub fn layer(k: Key, file: u64, in_file: bool, replicated: Option<&str>, excepted: bool) -> (u64, Source, Option<String>) {
    let local = if in_file { Source::File } else { Source::Default };
    match replicated.filter(|r| !r.is_empty()) {
        None => (file, local, None),
        Some(_) if excepted => (file, Source::Excepted, None),
        Some(r) => match k.parse(r) {
            Ok(v) => (v, Source::Replicated, None),
            Err(why) => (file, local, Some(format!("replicated value {r:?} not used: {why}"))),
        },
    }
}

/// One key as `tandem config get|list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    /// Its type and bounds.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value this node uses.
    pub effective: String,
    pub source: Source,
    /// The replicated value, if one is set (the same on every node).
    pub replicated: Option<String>,
    /// This node's file value (the default when the file does not set it).
    pub file: String,
    /// In this node's `[mirror] config_except`.
    pub excepted: bool,
    /// Why the replicated value is not used, when it cannot be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The node's settings: effective values, read where they are used.
pub struct Settings {
    file: Vec<u64>,
    in_file: Vec<bool>,
    excepted: Vec<bool>,
    effective: Vec<AtomicU64>,
    /// Replicated values as last read from the views (`None`: unset).
    replicated: Mutex<Vec<Option<String>>>,
    /// The configuration's merkle node as last read.
    seen: Mutex<Option<Option<Vec<u8>>>>,
}

impl Settings {
    /// The file's values (and defaults), before any replicated value is read.
    pub fn new(cfg: &Config) -> Settings {
        let file: Vec<u64> = Key::ALL.iter().map(|k| k.file_value(cfg)).collect();
        Settings {
            in_file: Key::ALL.iter().map(|k| cfg.file_keys.contains(k.name())).collect(),
            excepted: Key::ALL
                .iter()
                .map(|k| cfg.mirror.config_except.iter().any(|e| e == k.name()))
                .collect(),
            effective: file.iter().map(|v| AtomicU64::new(*v)).collect(),
            replicated: Mutex::new(vec![None; Key::ALL.len()]),
            seen: Mutex::new(None),
            file,
        }
    }

    /// A key's effective value.
    pub fn get(&self, k: Key) -> u64 {
        self.effective[k.index()].load(Ordering::Relaxed)
    }

    /// A boolean key's effective value.
    pub fn flag(&self, k: Key) -> bool {
        self.get(k) != 0
    }

    /// A seconds key's effective value.
    pub fn secs(&self, k: Key) -> Duration {
        Duration::from_secs(self.get(k))
    }

    /// A count key's effective value, saturated to `u32`.
    pub fn count(&self, k: Key) -> u32 {
        u32::try_from(self.get(k)).unwrap_or(u32::MAX)
    }

    /// Read the replicated values from the views and update the effective
    /// ones; logs each effective value that changes.
    pub fn refresh(&self, v: &impl ViewRead) -> Result<(), ViewError> {
        let mut fresh = Vec::with_capacity(Key::ALL.len());
        for k in Key::ALL {
            fresh.push(v.config(k.name())?.filter(|s| !s.is_empty()));
        }
        let mut replicated = self.replicated.lock().expect("settings lock");
        for k in Key::ALL {
            let i = k.index();
            let (value, source, problem) = layer(k, self.file[i], self.in_file[i], fresh[i].as_deref(), self.excepted[i]);
            let old = self.effective[i].swap(value, Ordering::Relaxed);
            if let Some(p) = &problem {
                if replicated[i] != fresh[i] {
                    tracing::warn!(key = k.name(), problem = %p, "replicated setting not used");
                }
            }
            if old != value {
                tracing::info!(key = k.name(), value = %k.show(value), source = source.name(), "setting changed");
            } else if source == Source::Excepted && replicated[i] != fresh[i] {
                tracing::info!(key = k.name(), replicated = ?fresh[i], "replicated setting not used here: the key is in mirror.config_except");
            }
        }
        *replicated = fresh;
        Ok(())
    }

    /// [`Settings::refresh`], when the replicated configuration changed
    /// since the last look (one read of its merkle node).
    pub fn refresh_if_changed(&self, v: &impl ViewRead) -> Result<(), ViewError> {
        let node = v.vget(&crate::merkle::keys::config())?;
        {
            let seen = self.seen.lock().expect("settings lock");
            if seen.as_ref() == Some(&node) {
                return Ok(());
            }
        }
        self.refresh(v)?;
        *self.seen.lock().expect("settings lock") = Some(node);
        Ok(())
    }

    /// One key as shown to the operator.
    pub fn entry(&self, k: Key) -> Entry {
        let i = k.index();
        let replicated = self.replicated.lock().expect("settings lock")[i].clone();
        let (value, source, problem) = layer(k, self.file[i], self.in_file[i], replicated.as_deref(), self.excepted[i]);
        Entry {
            key: k.name().into(),
            kind: k.kind().describe(),
            effective: k.show(value),
            source,
            replicated,
            file: k.show(self.file[i]),
            excepted: self.excepted[i],
            problem,
        }
    }

    /// Every key.
    pub fn list(&self) -> Vec<Entry> {
        Key::ALL.into_iter().map(|k| self.entry(k)).collect()
    }
}

/// Keep `settings` in step with the store until shutdown: refresh after
/// every durable group that changed the replicated configuration.
pub async fn follow(settings: Arc<Settings>, store: crate::store::Store, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut commits = store.commits();
    loop {
        commits.borrow_and_update();
        if let Err(e) = settings.refresh_if_changed(&store.views()) {
            tracing::warn!(error = %e, "reading the replicated settings failed");
        }
        tokio::select! {
            r = commits.changed() => if r.is_err() { return },
            _ = crate::server::wait_shutdown(&mut shutdown) => return,
        }
    }
}

/// `tandem config ...`
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Set a replicated key on every node of the mirror (a logged event;
    /// it takes effect without a restart).
    Set { key: String, value: String },
    /// Remove a key's replicated value: every node uses its file value
    /// (or the default) again.
    Unset { key: String },
    /// Show one key: the value this node uses, where it comes from, and
    /// the replicated value.
    Get {
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Show every replicated key.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn key_path(key: &str) -> anyhow::Result<String> {
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        anyhow::bail!("{key:?}: no such key (`tandem config list` shows the replicated keys)");
    }
    Ok(format!("/v1/config/{key}"))
}

/// Run a `tandem config` command against the running node.
pub async fn command(admin: &crate::cli::Admin, cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Set { key, value } => {
            let e: Entry = admin
                .send(reqwest::Method::PUT, &key_path(&key)?, serde_json::json!({ "value": value }))
                .await?;
            println!(
                "{} = {} (logged; replicates to every node)",
                e.key,
                e.replicated.as_deref().unwrap_or("")
            );
            print_effective(&e);
        }
        ConfigCommand::Unset { key } => {
            let e: Entry = admin
                .send(reqwest::Method::DELETE, &key_path(&key)?, serde_json::Value::Null)
                .await?;
            println!("{} unset (logged; every node goes back to its file value)", e.key);
            print_effective(&e);
        }
        ConfigCommand::Get { key, json } => {
            let e: Entry = admin.get(&key_path(&key)?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print_table(std::slice::from_ref(&e));
            }
        }
        ConfigCommand::List { json } => {
            let all: Vec<Entry> = admin.get("/v1/config").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_table(&all);
            }
        }
    }
    Ok(())
}

/// The value a running node uses for `k`.
pub async fn effective(admin: &crate::cli::Admin, k: Key) -> anyhow::Result<u64> {
    let e: Entry = admin.get(&key_path(k.name())?).await?;
    k.parse(&e.effective)
        .map_err(|why| anyhow::anyhow!("the node reports {} = {:?}: {why}", k.name(), e.effective))
}

fn print_effective(e: &Entry) {
    println!("this node uses {} ({})", e.effective, e.source.name());
    if e.source == Source::Excepted {
        println!("{} is in this node's mirror.config_except: it keeps its own value here", e.key);
    }
    if let Some(p) = &e.problem {
        println!("{p}");
    }
}

/// Columns: key, effective value, source, replicated value.
pub fn print_table(entries: &[Entry]) {
    let w = entries.iter().map(|e| e.key.len()).max().unwrap_or(3).max(3);
    let v = entries.iter().map(|e| e.effective.len()).max().unwrap_or(9).max(9);
    println!("{:w$}  {:v$}  {:10}  REPLICATED", "KEY", "EFFECTIVE", "SOURCE");
    for e in entries {
        println!(
            "{:w$}  {:v$}  {:10}  {}",
            e.key,
            e.effective,
            e.source.name(),
            e.replicated.as_deref().unwrap_or("-")
        );
        if let Some(p) = &e.problem {
            println!("{:w$}  ({p})", "");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::store::{wal_options, Store};

    fn cfg(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("t.toml")).unwrap()
    }

    #[test]
    fn layering_replicated_then_file_then_default() {
        let k = Key::LmtpMaxMessageSize;
        assert_eq!(layer(k, 100, false, None, false), (100, Source::Default, None));
        assert_eq!(layer(k, 100, true, None, false), (100, Source::File, None));
        assert_eq!(layer(k, 100, true, Some("5000"), false), (5000, Source::Replicated, None));
        assert_eq!(layer(k, 100, false, Some("5000"), false), (5000, Source::Replicated, None));
        // Excepted: the file (or default) holds while a replicated value is set.
        assert_eq!(layer(k, 100, true, Some("5000"), true), (100, Source::Excepted, None));
        assert_eq!(layer(k, 100, true, None, true), (100, Source::File, None));
        // Empty means unset.
        assert_eq!(layer(k, 100, true, Some(""), false), (100, Source::File, None));
        // A value this node cannot take is not used, and says why.
        let (v, s, p) = layer(k, 100, true, Some("0"), false);
        assert_eq!((v, s), (100, Source::File));
        assert!(p.unwrap().contains("out of range"));
        let (v, s, p) = layer(Key::LmtpDetailFolders, 0, false, Some("yes"), false);
        assert_eq!((v, s), (0, Source::Default));
        assert!(p.unwrap().contains("true or false"));
    }

    #[test]
    fn values_are_checked_and_made_canonical() {
        assert_eq!(
            check("lmtp.max_message_size", " 1024 ").unwrap(),
            (Key::LmtpMaxMessageSize, "1024".into())
        );
        assert_eq!(
            check("lmtp.detail_folders", "true").unwrap(),
            (Key::LmtpDetailFolders, "true".into())
        );
        assert_eq!(check("imap.login_attempts_per_ip", "0").unwrap().1, "0");
        for (key, bad, why) in [
            ("lmtp.max_message_size", "0", "out of range"),
            ("lmtp.max_message_size", "1073741825", "out of range"),
            ("lmtp.max_message_size", "-5", "whole number"),
            ("lmtp.max_message_size", "1e6", "whole number"),
            ("lmtp.max_message_size", "99999999999999999999999", "out of range"),
            ("imap.max_connections_per_user", "0", "out of range"),
            ("imap.login_lockout_secs", "0", "out of range"),
            ("imap.max_literal", "100", "out of range"),
            ("lmtp.detail_folders", "1", "true or false"),
            ("lmtp.detail_folders", "", "config unset"),
        ] {
            let e = check(key, bad).unwrap_err();
            assert!(matches!(e, SettingError::Invalid { .. }), "{key} {bad}: {e}");
            assert!(e.to_string().contains(why) && e.to_string().starts_with(key), "{key} {bad}: {e}");
        }
    }

    #[test]
    fn node_local_keys_are_refused_with_the_key_and_why() {
        for (key, why) in [
            ("imap.listen", "listener address"),
            ("lmtp.listen", "listener address"),
            ("pop3.tls_listen", "listener address"),
            ("node.data_dir", "data directory"),
            ("node.id", "names this node"),
            ("imap.tls_cert", "TLS file"),
            ("mirror.peers", "mirror's own settings"),
            ("mirror.config_except", "mirror's own settings"),
            ("backup.to", "backs up its own store"),
            ("metrics.listen", "metrics listener"),
            ("admin.listen", "admin listener"),
            ("lmtp.hostname", "this node's name"),
            ("imap.max_connections", "not one of the replicated keys"),
        ] {
            let e = check(key, "1").unwrap_err();
            assert!(matches!(e, SettingError::NodeLocal { .. }), "{key}: {e}");
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("{key} is node-local")) && text.contains(why),
                "{key}: {text}"
            );
        }
        assert!(matches!(lookup("nosuch.key"), Err(SettingError::Unknown { .. })));
        assert!(matches!(lookup("imap"), Err(SettingError::Unknown { .. })));
        assert!(matches!(lookup("imap."), Err(SettingError::Unknown { .. })));
    }

    #[test]
    fn registry_names_are_file_keys_and_every_default_is_in_bounds() {
        let d = Config::default();
        for k in Key::ALL {
            assert_eq!(Key::from_name(k.name()), Some(k));
            assert_eq!(Key::ALL[k.index()], k);
            // Each name is a key of the file: setting it there parses.
            let (section, key) = k.name().split_once('.').unwrap();
            let value = k.show(k.file_value(&d));
            let c = cfg(&format!("[{section}]\n{key} = {value}\n"));
            assert!(c.file_keys.contains(k.name()), "{}", k.name());
            assert_eq!(k.parse(&value), Ok(k.file_value(&d)), "default of {} out of its bounds", k.name());
            assert!(node_local_reason(k.name()).is_some());
        }
    }

    #[test]
    fn settings_report_sources_and_except() {
        let s = Settings::new(&cfg(
            "[lmtp]\nmax_message_size = 5000\n[imap]\nauth_cache_secs = 7\n[mirror]\nconfig_except = [\"imap.auth_cache_secs\"]\n",
        ));
        assert_eq!(s.get(Key::LmtpMaxMessageSize), 5000);
        assert_eq!(s.entry(Key::LmtpMaxMessageSize).source, Source::File);
        assert_eq!(s.entry(Key::ImapMaxConnectionsPerUser).source, Source::Default);
        assert_eq!(s.secs(Key::ImapAuthCacheSecs), Duration::from_secs(7));
        let e = s.entry(Key::ImapAuthCacheSecs);
        assert!(e.excepted && e.source == Source::File && e.replicated.is_none());
    }

    #[test]
    fn config_except_names_replicated_keys_only() {
        let e = Config::parse("[mirror]\nconfig_except = [\"imap.listen\"]\n", std::path::Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mirror.config_except: \"imap.listen\" is not a replicated key"), "{e}");
        assert!(Config::parse(
            "[mirror]\nconfig_except = [\"lmtp.detail_folders\"]\n",
            std::path::Path::new("t.toml")
        )
        .is_ok());
    }

    use crate::views::read::tests::apply_at;

    fn set(key: &str, value: &str) -> Event {
        Event::ConfigSet {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn concurrent_sets_converge_whatever_the_apply_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a"), "a", wal_options("a")).unwrap();
        let b = Store::open(&dir.path().join("b"), "b", wal_options("b")).unwrap();
        let k = "lmtp.max_message_size";
        // Node 1 set 1000 at hlc 10; node 2 set 2000 at hlc 20 (later).
        let one = ((10, 1), set(k, "1000"));
        let two = ((20, 2), set(k, "2000"));
        apply_at(&a, vec![one.clone(), two.clone()]);
        apply_at(&b, vec![two, one]);
        let (va, vb) = (a.views(), b.views());
        assert_eq!(va.config(k).unwrap().as_deref(), Some("2000"));
        assert_eq!(vb.config(k).unwrap().as_deref(), Some("2000"));
        assert_eq!(crate::merkle::node_root(&va).unwrap(), crate::merkle::node_root(&vb).unwrap());
        // Equal clocks: the origin decides.
        apply_at(&a, vec![((30, 1), set(k, "3")), ((30, 2), set(k, "4"))]);
        apply_at(&b, vec![((30, 2), set(k, "4")), ((30, 1), set(k, "3"))]);
        assert_eq!(a.views().config(k).unwrap(), b.views().config(k).unwrap());
        assert_eq!(a.views().config(k).unwrap().as_deref(), Some("4"));

        // The settings follow the views: set, then unset with an empty value.
        let s = Settings::new(&cfg("[lmtp]\nmax_message_size = 777\n"));
        s.refresh_if_changed(&a.views()).unwrap();
        assert_eq!(s.get(Key::LmtpMaxMessageSize), 4);
        assert_eq!(s.entry(Key::LmtpMaxMessageSize).source, Source::Replicated);
        apply_at(&a, vec![((40, 1), set(k, ""))]);
        s.refresh_if_changed(&a.views()).unwrap();
        let e = s.entry(Key::LmtpMaxMessageSize);
        assert_eq!((e.effective.as_str(), e.source, e.replicated), ("777", Source::File, None));
    }

    #[test]
    fn an_excepted_key_is_stored_alike_but_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a"), "a", wal_options("a")).unwrap();
        apply_at(&a, vec![((5, 1), set("imap.max_connections_per_user", "3"))]);
        let plain = Settings::new(&Config::default());
        let except = Settings::new(&cfg("[mirror]\nconfig_except = [\"imap.max_connections_per_user\"]\n"));
        plain.refresh(&a.views()).unwrap();
        except.refresh(&a.views()).unwrap();
        assert_eq!(plain.get(Key::ImapMaxConnectionsPerUser), 3);
        assert_eq!(except.get(Key::ImapMaxConnectionsPerUser), 50);
        let e = except.entry(Key::ImapMaxConnectionsPerUser);
        assert_eq!((e.source, e.replicated.as_deref()), (Source::Excepted, Some("3")));
    }
}
