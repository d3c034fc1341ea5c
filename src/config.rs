//! Configuration: TOML, kebab-case-free plain keys as documented in
//! `docs/operations.md`. Unknown keys and bad values are refused with the key
//! and the line. Node-local keys (everything in this file) never replicate;
//! replicated settings travel as `config-set` events.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub imap: ImapConfig,
    pub lmtp: LmtpConfig,
    pub admin: ListenConfig,
    pub mirror: MirrorConfig,
    pub pop3: Pop3Config,
    pub backup: BackupConfig,
    pub metrics: MetricsConfig,
    pub retention: RetentionConfig,
    /// The keys the file sets, as `section.key` (tells a file value from a
    /// default in `tandem config list`).
    #[serde(skip)]
    pub file_keys: std::collections::BTreeSet<String>,
}

/// `[backup]`: continuous backup of the log and bodies (see
/// `docs/operations.md`, "Backups").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Backup directory (local or network file system) or
    /// `s3://bucket/prefix`. Unset: no continuous backup (`tandem backup
    /// --to DIR` still works).
    pub to: Option<PathBuf>,
    /// How often to back up what was applied since the last run.
    pub interval_ms: u64,
    /// S3 targets: the service's URL (unset: AWS or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// S3 targets: signing region (unset: `AWS_REGION`, else us-east-1).
    pub region: Option<String>,
    /// S3 targets: file with `access_key_id` and `secret_access_key`
    /// (unset: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`).
    pub credentials_file: Option<PathBuf>,
}

impl BackupConfig {
    /// How S3 targets are reached.
    pub fn s3(&self) -> crate::backup::s3::S3Settings {
        crate::backup::s3::S3Settings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            credentials_file: self.credentials_file.clone(),
        }
    }
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            to: None,
            interval_ms: 1000,
            endpoint: None,
            region: None,
            credentials_file: None,
        }
    }
}

/// `[retention]`: pruning of this node's own log (see `crate::retention`
/// and `docs/operations.md`, "Log retention"). Off unless `keep` is set:
/// a node never configured for it keeps its whole history.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Entries younger than this are never pruned (`"30d"`, `"12h"`, or
    /// seconds). 0 (the default): no pruning at all.
    #[serde(deserialize_with = "interval")]
    pub keep: std::time::Duration,
    /// The newest entries of each origin that are always kept.
    pub keep_entries: u64,
    /// How often the pruner runs.
    #[serde(deserialize_with = "interval")]
    pub interval: std::time::Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep: std::time::Duration::ZERO,
            keep_entries: 100_000,
            interval: std::time::Duration::from_secs(600),
        }
    }
}

/// `[metrics]`: the Prometheus `/metrics` listener. Off unless `listen` is
/// set; it may face the monitoring network, so a bearer token can be
/// required (the file holds the token, surrounding whitespace ignored).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
    pub bearer_token_file: Option<PathBuf>,
    /// The peers' metrics listeners (`http://HOST:PORT`), whose status the
    /// status page fetches and shows beside this node's.
    pub peer_status: Vec<String>,
    /// The bearer token those listeners want, if they want one.
    pub peer_token_file: Option<PathBuf>,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Stable node id. Empty: generated at first start and kept in
    /// `data_dir/node-id`. Changing it later is refused: it names this
    /// node's origin log.
    pub id: String,
    /// Where the RocksDB store, the node id and the admin token live.
    pub data_dir: PathBuf,
    /// Write RocksDB flushes and compactions with O_DIRECT (bodies are
    /// written without a page-cache copy, each write waiting for the disk).
    /// Off by default: through the page cache an initial sync ran faster
    /// (`operations.md`). Turned off by itself, with a warning, on a file
    /// system that refuses O_DIRECT.
    pub direct_io: bool,
}

/// A listener: `listen = "127.0.0.1:1143"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub listen: SocketAddr,
}

/// `[imap]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImapConfig {
    pub listen: SocketAddr,
    /// Implicit-TLS listener (IMAPS); default `127.0.0.1:1993`.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain and key; both absent: a self-signed pair is
    /// generated in `data_dir/tls/` at first start and reused.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Longest command line, bytes (literals not counted).
    pub max_line: usize,
    /// Largest literal, bytes: the APPEND size limit.
    pub max_literal: u64,
    /// Most simultaneous connections per listener.
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Most simultaneous sessions of one user.
    pub max_connections_per_user: usize,
    /// Seconds before login a connection may be idle.
    pub preauth_timeout_secs: u64,
    /// Seconds after login a connection may be idle (RFC 3501: at least 30 minutes).
    pub idle_timeout_secs: u64,
    /// Bad commands tolerated before the connection is closed.
    pub max_bad_commands: u32,
    /// Login attempts one IP address may make in a burst; the budget
    /// refills over `login_lockout_secs`. 0: no per-address budget.
    pub login_attempts_per_ip: u32,
    /// Login attempts for one user, from anywhere, in a burst. 0: no
    /// per-user budget.
    pub login_attempts_per_user: u32,
    /// Seconds an empty login budget takes to refill completely.
    pub login_lockout_secs: u64,
    /// Seconds a successful password check is remembered (0: never).
    pub auth_cache_secs: u64,
    /// Where LOGIN / AUTHENTICATE PLAIN are allowed without TLS:
    /// "loopback" (default), "always" or "never".
    pub plaintext_auth: PlaintextAuth,
    /// Seconds a TLS handshake (implicit TLS or after STARTTLS) may take.
    pub handshake_timeout_secs: u64,
    /// Seconds from connecting to logging in, however busy the client is.
    pub login_timeout_secs: u64,
    /// Seconds the client may take to accept each 64 KiB of responses.
    pub write_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlaintextAuth {
    #[default]
    Loopback,
    Always,
    Never,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            listen: "127.0.0.1:1143".parse().expect("literal"),
            tls_listen: Some("127.0.0.1:1993".parse().expect("literal")),
            tls_cert: None,
            tls_key: None,
            max_line: 64 * 1024,
            max_literal: 64 << 20,
            max_connections: 1024,
            max_connections_per_ip: 100,
            max_connections_per_user: 50,
            handshake_timeout_secs: 10,
            login_timeout_secs: 120,
            write_timeout_secs: 60,
            preauth_timeout_secs: 60,
            idle_timeout_secs: 1800,
            max_bad_commands: 20,
            login_attempts_per_ip: 10,
            login_attempts_per_user: 20,
            login_lockout_secs: 300,
            auth_cache_secs: 600,
            plaintext_auth: PlaintextAuth::Loopback,
        }
    }
}

/// `[lmtp]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LmtpConfig {
    pub listen: SocketAddr,
    /// Largest message accepted (SIZE), bytes.
    pub max_message_size: u64,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Deliver `user+detail@domain` into folder `detail` when it exists
    /// and has no special use (never into Drafts, Sent, Trash, ...).
    pub detail_folders: bool,
    /// Seconds a connection may sit idle between commands.
    pub idle_timeout_secs: u64,
    /// Seconds a connection may last in all.
    pub max_session_secs: u64,
    /// Name in the greeting; empty: the machine's host name.
    pub hostname: String,
}

impl LmtpConfig {
    /// The name to greet with.
    pub fn hostname(&self) -> String {
        if !self.hostname.is_empty() {
            return self.hostname.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }
}

/// `[pop3]`: off unless `listen` or `tls_listen` is set. Logins follow
/// `[imap]`: its plaintext policy, login budgets, TLS certificate and
/// handshake, login and write deadlines.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3Config {
    /// Plain POP3 (offers STLS), e.g. `127.0.0.1:1110`.
    pub listen: Option<SocketAddr>,
    /// Implicit-TLS POP3 (POP3S), e.g. `0.0.0.0:995`.
    pub tls_listen: Option<SocketAddr>,
    /// Most simultaneous connections per listener.
    pub max_connections: usize,
    /// Seconds a logged-in session may sit idle (RFC 1939: at least 600).
    pub idle_timeout_secs: u64,
    /// Bad commands after which the session is closed.
    pub max_bad_commands: u32,
}

impl Default for Pop3Config {
    fn default() -> Self {
        Pop3Config {
            listen: None,
            tls_listen: None,
            max_connections: 256,
            idle_timeout_secs: 600,
            max_bad_commands: 10,
        }
    }
}

/// `[mirror]`: replication (its behaviour comes with the mirror).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    pub mode: Role,
    pub listen: Option<SocketAddr>,
    pub peers: Vec<SocketAddr>,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// Replicated keys this node does not take from the mirror: it logs
    /// and passes on their `ConfigSet` events like any other, but keeps
    /// its own file value (`src/settings.rs`).
    pub config_except: Vec<String>,
    pub ack: AckMode,
    /// Batches in flight per link before waiting for an acknowledgement.
    pub window_batches: usize,
    /// Entries per batch.
    pub batch_entries: usize,
    /// Bytes per batch, bodies included.
    pub batch_bytes: u64,
    /// Reconnect backoff, milliseconds: first wait and ceiling.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// With `ack = "peer"`: how long a delivery waits for the peers.
    pub ack_timeout_ms: u64,
    /// With `ack = "peer"`, past the timeout: "local" answers OK anyway and
    /// raises the alarm counter in status; "tempfail" answers with a
    /// temporary error (the MTA retries; the message is kept locally).
    pub ack_fallback: AckFallback,
    /// Most incoming mirror connections at once, authenticated or not.
    pub max_connections: usize,
    /// Most incoming mirror connections at once that have not yet proved
    /// the shared secret.
    pub max_unauthenticated: usize,
    /// Of those, most from one IP address.
    pub max_unauthenticated_per_ip: usize,
    /// Milliseconds an incoming connection has to prove the secret and
    /// introduce itself, from its first packet.
    pub auth_timeout_ms: u64,
    /// Milliseconds without a packet after which a link counts as down (a
    /// peer that vanished without closing it); keep-alives go every third
    /// of it, at most every 5 s. The lower of the two nodes' values holds.
    pub idle_timeout_ms: u64,
    /// Scheduled merkle repair against each peer, run by the master only
    /// (`"1h"`, `"30m"`, `"45s"`, `"500ms"`, or seconds; 0: off).
    #[serde(deserialize_with = "interval")]
    pub repair_interval: std::time::Duration,
    /// Directories whose regular files replicate between the nodes: a list
    /// of absolute paths (the same on every node) or a table `name =
    /// "path"` (see `crate::sidefiles::SyncDirs`).
    pub sync_dirs: crate::sidefiles::SyncDirs,
    /// How often the sync dirs are scanned for changes, milliseconds.
    pub sync_dirs_interval_ms: u64,
    /// Join a peer by trees on its own when its log is pruned past what
    /// this node holds (`replication.md` section 5.8); false leaves it to
    /// `tandem resync --from-peer`.
    pub auto_join: bool,
}

/// A duration written as `"1h"`, `"30m"`, `"45s"`, `"500ms"`, `"2d"`, or a
/// whole number of seconds. Written here rather than taken from a crate:
/// one key, five suffixes.
fn interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(std::time::Duration::from_secs(s)),
        Raw::Text(t) => parse_interval(&t).map_err(serde::de::Error::custom),
    }
}

/// See [`interval`].
pub fn parse_interval(t: &str) -> Result<std::time::Duration, String> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{t:?} is not a duration (write e.g. \"1h\", \"30m\", \"45s\", \"500ms\")"))?;
    let ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => return Err(format!("{t:?}: unknown unit {u:?} (ms, s, m, h or d)")),
    };
    n.checked_mul(ms)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("{t:?} is too long"))
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckFallback {
    #[default]
    Local,
    Tempfail,
}

impl MirrorConfig {
    /// The shared secret, from `secret` or the first line of `secret_file`,
    /// held to the same minimum strength either way.
    pub fn secret_bytes(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        if let Some(s) = &self.secret {
            return Ok(Some(s.as_bytes().to_vec()));
        }
        match &self.secret_file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                let line = text.lines().next().unwrap_or("").trim().to_string();
                if line.is_empty() {
                    return Err(ConfigError::Invalid {
                        path: p.clone(),
                        problems: "mirror.secret_file is empty".into(),
                    });
                }
                if let Some(weak) = secret_weakness(line.as_bytes()) {
                    return Err(ConfigError::Invalid {
                        path: p.clone(),
                        problems: format!("mirror.secret_file: {weak}"),
                    });
                }
                Ok(Some(line.into_bytes()))
            }
            None => Ok(None),
        }
    }
}

/// Shortest shared secret accepted, and the fewest different characters
/// in it: a secret like "aaaaaaaaaaaaaaaa" is refused.
pub const MIN_SECRET_LEN: usize = 16;
pub const MIN_SECRET_DISTINCT: usize = 8;

/// Why a shared secret is too weak, if it is.
pub fn secret_weakness(secret: &[u8]) -> Option<String> {
    let distinct = secret.iter().collect::<std::collections::BTreeSet<_>>().len();
    if secret.len() < MIN_SECRET_LEN {
        Some(format!("use at least {MIN_SECRET_LEN} characters"))
    } else if distinct < MIN_SECRET_DISTINCT {
        Some(format!("use at least {MIN_SECRET_DISTINCT} different characters"))
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Master,
    Slave,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    #[default]
    Local,
    Peer,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: String::new(),
            data_dir: PathBuf::from("tandem-data"),
            direct_io: false,
        }
    }
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig {
            listen: "127.0.0.1:2424".parse().expect("literal"),
            max_message_size: 64 << 20,
            max_connections: 256,
            detail_folders: false,
            idle_timeout_secs: 300,
            max_session_secs: 3600,
            hostname: String::new(),
        }
    }
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            mode: Role::Master,
            listen: None,
            peers: Vec::new(),
            secret: None,
            secret_file: None,
            config_except: Vec::new(),
            ack: AckMode::Local,
            window_batches: 32,
            batch_entries: 512,
            batch_bytes: 8 << 20,
            reconnect_min_ms: 100,
            reconnect_max_ms: 10_000,
            idle_timeout_ms: 30_000,
            ack_timeout_ms: 5_000,
            ack_fallback: AckFallback::Local,
            max_connections: 16,
            max_unauthenticated: 8,
            max_unauthenticated_per_ip: 4,
            auth_timeout_ms: 5_000,
            repair_interval: std::time::Duration::ZERO,
            sync_dirs: crate::sidefiles::SyncDirs::default(),
            sync_dirs_interval_ms: 2_000,
            auto_join: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node: NodeConfig::default(),
            imap: ImapConfig::default(),
            lmtp: LmtpConfig::default(),
            admin: ListenConfig {
                listen: "127.0.0.1:8643".parse().expect("literal"),
            },
            mirror: MirrorConfig::default(),
            pop3: Pop3Config::default(),
            backup: BackupConfig::default(),
            metrics: MetricsConfig::default(),
            retention: RetentionConfig::default(),
            file_keys: Default::default(),
        }
    }
}

/// A configuration problem, with the file and what went wrong where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {problems}")]
    Invalid { path: PathBuf, problems: String },
}

impl Config {
    /// Parse TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if let Ok(table) = text.parse::<toml::Table>() {
            for (section, keys) in table.iter().filter_map(|(s, v)| Some((s, v.as_table()?))) {
                cfg.file_keys.extend(keys.keys().map(|k| format!("{section}.{k}")));
            }
        }
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: problems.join("; "),
            });
        }
        Ok(cfg)
    }

    /// Load a file, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Config::parse(&text, p)
            }
        }
    }

    /// Every problem serde cannot see, all at once.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.node.id.is_empty()
            && (self.node.id.len() > 64
                || !self
                    .node
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        {
            p.push(format!("node.id {:?}: use 1-64 characters of A-Z a-z 0-9 - _ .", self.node.id));
        }
        if self.node.data_dir.as_os_str().is_empty() {
            p.push("node.data_dir is empty".into());
        }
        if !self.admin.listen.ip().is_loopback() {
            p.push(format!(
                "admin.listen {}: the admin endpoint listens on loopback only",
                self.admin.listen
            ));
        }
        if self.metrics.bearer_token_file.is_some() && self.metrics.listen.is_none() {
            p.push("metrics.bearer_token_file is set but metrics.listen is not".into());
        }
        if (!self.metrics.peer_status.is_empty() || self.metrics.peer_token_file.is_some()) && self.metrics.listen.is_none() {
            p.push("metrics.peer_status or metrics.peer_token_file is set but metrics.listen is not".into());
        }
        for u in &self.metrics.peer_status {
            let ok = u
                .strip_prefix("http://")
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#', ' ']));
            if !ok {
                p.push(format!("metrics.peer_status: {u:?} is not http://HOST:PORT"));
            }
        }
        if self.imap.max_connections == 0 || self.imap.max_connections_per_ip == 0 || self.imap.max_connections_per_user == 0 {
            p.push("imap.max_connections, imap.max_connections_per_ip and imap.max_connections_per_user must be positive".into());
        }
        if self.pop3.max_connections == 0 || self.pop3.idle_timeout_secs == 0 {
            p.push("pop3.max_connections and pop3.idle_timeout_secs must be positive".into());
        }
        if self.imap.tls_cert.is_some() != self.imap.tls_key.is_some() {
            p.push("imap.tls_cert and imap.tls_key: set both or neither".into());
        }
        if self.imap.handshake_timeout_secs == 0 || self.imap.login_timeout_secs == 0 || self.imap.write_timeout_secs == 0 {
            p.push("imap.handshake_timeout_secs, imap.login_timeout_secs and imap.write_timeout_secs must be positive".into());
        }
        if self.imap.max_line < 1024 {
            p.push(format!("imap.max_line {} is below 1024", self.imap.max_line));
        }
        if self.imap.login_lockout_secs == 0 {
            p.push("imap.login_lockout_secs must be positive".into());
        }
        if self.lmtp.max_message_size == 0 {
            p.push("lmtp.max_message_size must be positive".into());
        }
        if self.lmtp.max_connections == 0 {
            p.push("lmtp.max_connections must be positive".into());
        }
        if self.mirror.secret.is_some() && self.mirror.secret_file.is_some() {
            p.push("mirror.secret and mirror.secret_file: set one, not both".into());
        }
        if let Some(weak) = self.mirror.secret.as_ref().and_then(|s| secret_weakness(s.as_bytes())) {
            p.push(format!("mirror.secret: {weak}"));
        }
        // Bodies up to this size replicate (in chunks); a larger message
        // stored here could never reach a peer.
        let max_message = crate::repl::frame::MAX_MESSAGE;
        for (key, limit) in [
            ("imap.max_literal", self.imap.max_literal),
            ("lmtp.max_message_size", self.lmtp.max_message_size),
        ] {
            if limit > max_message {
                p.push(format!(
                    "{key} {limit} is above {max_message}, the largest message the mirror carries"
                ));
            }
        }
        if self.mirror.batch_entries > crate::repl::frame::MAX_BATCH_ENTRIES {
            p.push(format!(
                "mirror.batch_entries: at most {} (what a receiver accepts)",
                crate::repl::frame::MAX_BATCH_ENTRIES
            ));
        }
        if self.mirror.max_connections == 0
            || self.mirror.max_unauthenticated_per_ip == 0
            || self.mirror.max_unauthenticated_per_ip > self.mirror.max_unauthenticated
            || self.mirror.max_unauthenticated > self.mirror.max_connections
        {
            p.push(
                "mirror.max_connections, max_unauthenticated and max_unauthenticated_per_ip must be positive, each at most the one before"
                    .into(),
            );
        }
        if self.mirror.auth_timeout_ms == 0 {
            p.push("mirror.auth_timeout_ms must be positive".into());
        }
        if self.mirror.batch_bytes > (crate::repl::frame::MAX_FRAME as u64) / 2 {
            p.push(format!(
                "mirror.batch_bytes: at most {} (half the largest frame)",
                crate::repl::frame::MAX_FRAME / 2
            ));
        }
        if self.mirror.window_batches == 0 || self.mirror.batch_entries == 0 || self.mirror.batch_bytes == 0 {
            p.push("mirror.window_batches, mirror.batch_entries and mirror.batch_bytes must be positive".into());
        }
        if self.mirror.idle_timeout_ms < 1000 {
            p.push("mirror.idle_timeout_ms must be at least 1000".into());
        }
        if self.mirror.reconnect_min_ms == 0 || self.mirror.reconnect_max_ms < self.mirror.reconnect_min_ms {
            p.push("mirror.reconnect_min_ms must be positive and at most mirror.reconnect_max_ms".into());
        }
        p.extend(self.mirror.sync_dirs.check());
        if self.mirror.sync_dirs_interval_ms < 100 {
            p.push("mirror.sync_dirs_interval_ms must be at least 100".into());
        }
        if self.backup.interval_ms == 0 {
            p.push("backup.interval_ms must be positive".into());
        }
        if !self.retention.keep.is_zero() && self.retention.interval < std::time::Duration::from_millis(100) {
            p.push("retention.interval must be at least 100ms".into());
        }
        if self.backup.to.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            p.push("backup.to is empty".into());
        }
        if let Some(to) = self.backup.to.as_ref().filter(|t| crate::backup::is_s3(t)) {
            if crate::backup::s3::parse_url(&to.to_string_lossy()).is_none() {
                p.push(format!("backup.to = {:?} is not s3://BUCKET[/PREFIX]", to.display()));
            }
        }
        if let Some(e) = self
            .backup
            .endpoint
            .as_ref()
            .filter(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            p.push(format!("backup.endpoint = {e:?} is not an http:// or https:// URL"));
        }
        for k in &self.mirror.config_except {
            if crate::settings::Key::from_name(k).is_none() {
                p.push(format!(
                    "mirror.config_except: {k:?} is not a replicated key (`tandem config list` shows them)"
                ));
            }
        }
        if self.mirror.peers.len() > 2 {
            p.push(format!(
                "mirror.peers: {} peers given; a mirror has two or three nodes",
                self.mirror.peers.len()
            ));
        }
        p
    }

    pub fn db_path(&self) -> PathBuf {
        self.node.data_dir.join("db")
    }

    pub fn token_path(&self) -> PathBuf {
        self.node.data_dir.join("admin.token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback() {
        let c = Config::default();
        assert!(c.imap.listen.ip().is_loopback() && c.lmtp.listen.ip().is_loopback() && c.admin.listen.ip().is_loopback());
        assert!(c.validate().is_empty());
    }

    #[test]
    fn parses_documented_keys() {
        let c = Config::parse(
            r#"
[node]
id = "node-a"
data_dir = "/var/lib/tandem"
[imap]
listen = "127.0.0.1:10143"
[lmtp]
listen = "127.0.0.1:10024"
[admin]
listen = "127.0.0.1:9000"
[mirror]
mode = "slave"
listen = "127.0.0.1:7000"
peers = ["127.0.0.1:7001"]
secret = "a long enough shared secret"
ack = "peer"
"#,
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.node.id, "node-a");
        assert_eq!(c.mirror.mode, Role::Slave);
        assert_eq!(c.mirror.ack, AckMode::Peer);
        assert_eq!(c.lmtp.listen.port(), 10024);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = Config::parse(
            "[node]\nid = \"a\"\n\n[imap]\nlisten = \"127.0.0.1:1\"\nlsten = 3\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lsten") && e.contains("line 6"), "{e}");
    }

    #[test]
    fn bad_value_names_line() {
        let e = Config::parse("[mirror]\nack = \"sometimes\"\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("sometimes"), "{e}");
        let e = Config::parse("[lmtp]\nlisten = \"not an address\"\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn peer_status_urls_and_idle_timeout_are_checked() {
        let ok = "[metrics]\nlisten = \"127.0.0.1:1\"\npeer_status = [\"http://192.0.2.11:9643\"]\n";
        assert_eq!(
            Config::parse(ok, Path::new("t.toml")).unwrap().metrics.peer_status,
            ["http://192.0.2.11:9643"]
        );
        for bad in [
            "https://192.0.2.11:9643",
            "http://192.0.2.11:9643/status",
            "192.0.2.11:9643",
            "http://",
        ] {
            let text = format!("[metrics]\nlisten = \"127.0.0.1:1\"\npeer_status = [\"{bad}\"]\n");
            let e = Config::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
            assert!(e.contains("is not http://HOST:PORT"), "{bad}: {e}");
        }
        let e = Config::parse("[metrics]\npeer_status = [\"http://a:1\"]\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics.listen is not"), "{e}");
        let e = Config::parse("[mirror]\nidle_timeout_ms = 999\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mirror.idle_timeout_ms must be at least 1000"), "{e}");
    }

    #[test]
    fn weak_secrets_are_refused_from_either_key() {
        let e = Config::parse("[mirror]\nsecret = \"aaaaaaaaaaaaaaaaaaaa\"\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("different characters"), "{e}");
        let e = Config::parse("[mirror]\nsecret = \"short\"\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 16"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "tooshort\n").unwrap();
        let c = MirrorConfig {
            secret_file: Some(f.clone()),
            ..Default::default()
        };
        let e = c.secret_bytes().unwrap_err().to_string();
        assert!(e.contains("mirror.secret_file: use at least 16"), "{e}");
        std::fs::write(&f, "correct horse battery staple\n").unwrap();
        assert_eq!(c.secret_bytes().unwrap().unwrap(), b"correct horse battery staple");
    }

    #[test]
    fn repair_interval_reads_units_and_refuses_others() {
        let c = Config::parse("[mirror]\nrepair_interval = \"1h\"\n", Path::new("t.toml")).unwrap();
        assert_eq!(c.mirror.repair_interval, std::time::Duration::from_secs(3600));
        let c = Config::parse("[mirror]\nrepair_interval = 90\n", Path::new("t.toml")).unwrap();
        assert_eq!(c.mirror.repair_interval, std::time::Duration::from_secs(90));
        assert_eq!(parse_interval("500ms").unwrap(), std::time::Duration::from_millis(500));
        assert_eq!(parse_interval("0").unwrap(), std::time::Duration::ZERO);
        assert_eq!(Config::default().mirror.repair_interval, std::time::Duration::ZERO);
        let e = Config::parse("[mirror]\nrepair_interval = \"1 week\"\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown unit") && e.contains("line 2"), "{e}");
        assert!(parse_interval("h").is_err());
        assert!(parse_interval("99999999999999999d").is_err());
    }

    #[test]
    fn message_limits_fit_what_the_mirror_carries() {
        let e = Config::parse(
            "[imap]\nmax_literal = 2000000000\n[lmtp]\nmax_message_size = 1073741825\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("imap.max_literal 2000000000 is above 1073741824"), "{e}");
        assert!(e.contains("lmtp.max_message_size 1073741825"), "{e}");
        assert!(Config::parse("[lmtp]\nmax_message_size = 1073741824\n", Path::new("t.toml")).is_ok());
    }

    #[test]
    fn validation_collects_all_problems() {
        let e = Config::parse("[admin]\nlisten = \"0.0.0.0:1\"\n[node]\nid = \"bad id\"\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin.listen") && e.contains("node.id"), "{e}");
    }

    #[test]
    fn retention_section() {
        let d = Config::default().retention;
        assert!(d.keep.is_zero(), "retention is off unless configured");
        assert_eq!((d.keep_entries, d.interval.as_secs()), (100_000, 600));
        let c = Config::parse(
            "[retention]\nkeep = \"30d\"\nkeep_entries = 10\ninterval = \"1m\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.retention.keep.as_secs(), 30 * 86_400);
        assert_eq!((c.retention.keep_entries, c.retention.interval.as_secs()), (10, 60));
        let e = Config::parse("[retention]\nkeep = \"1d\"\ninterval = \"10ms\"\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("retention.interval"), "{e}");
        let e = Config::parse("[retention]\nkeep = \"soon\"\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn backup_section() {
        let c = Config::parse("[backup]\nto = \"/srv/b\"\ninterval_ms = 250\n", Path::new("t.toml")).unwrap();
        assert_eq!(c.backup.to.as_deref(), Some(Path::new("/srv/b")));
        assert_eq!(c.backup.interval_ms, 250);
        assert_eq!(Config::default().backup.interval_ms, 1000);
        assert!(Config::default().backup.to.is_none());
        let e = Config::parse("[backup]\ninterval_ms = 0\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("backup.interval_ms"), "{e}");
        let e = Config::parse("[backup]\nevery = 1\n", Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("every"), "{e}");
        // S3 targets.
        let c = Config::parse(
            "[backup]\nto = \"s3://tandem-b/mx1\"\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"eu-west-1\"\ncredentials_file = \"/etc/s3.key\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert!(crate::backup::is_s3(c.backup.to.as_deref().unwrap()));
        assert_eq!(c.backup.s3().endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.backup.s3().region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.backup.s3().credentials_file.as_deref(), Some(Path::new("/etc/s3.key")));
        let e = Config::parse("[backup]\nto = \"s3://B\"\nendpoint = \"ftp://x\"\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("backup.to") && e.contains("backup.endpoint"), "{e}");
    }
}
