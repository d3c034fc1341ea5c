//! The admin endpoint: HTTP/JSON on loopback, authenticated with the token in
//! the data directory. The CLI is its client.

use crate::auth::{constant_time_eq, hash_password, Secret};
use crate::event::Event;
use crate::mutate;
use crate::store::{Store, StoreError};
use crate::views::ViewRead;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Everything the status command shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node_id: String,
    pub origin: String,
    /// "master" or "slave", from the highest role event (see `repl::role`).
    pub role: String,
    /// The epoch of that event (0: no node was promoted yet; the
    /// configured `mirror.mode` decides).
    #[serde(default)]
    pub epoch: u64,
    /// The master's node id, once a role event named one.
    #[serde(default)]
    pub master: Option<String>,
    pub version: String,
    pub uptime_secs: u64,
    pub listeners: BTreeMap<String, String>,
    pub log: LogStatus,
    pub users: u64,
    pub lmtp: crate::lmtp::CountersSnapshot,
    pub imap: crate::imap::CountersSnapshot,
    /// Present when a POP3 listener is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pop3: Option<crate::pop3::CountersSnapshot>,
    pub mirror: crate::repl::MirrorStatus,
    /// Split-brain conflicts: pending and resolved (`tandem conflicts`).
    #[serde(default)]
    pub conflicts: crate::repl::resolve::Counts,
    /// Backup targets used since start: position and lag.
    #[serde(default)]
    pub backup: Vec<crate::backup::BackupStatus>,
    /// Merkle comparisons with peers: the scheduled repair, the last run
    /// and the one running.
    #[serde(default)]
    pub resync: crate::repl::resync::ResyncStatus,
    /// Side-file mirroring (`mirror.sync_dirs`), when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidefiles: Option<crate::sidefiles::Status>,
    /// Log retention (`[retention]`): pruned-up-to per origin and what
    /// holds pruning back.
    #[serde(default)]
    pub retention: crate::retention::RetentionStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogStatus {
    /// `{origin: last seq}`.
    pub heads: BTreeMap<String, u64>,
    pub apply_order: u64,
    pub entries_appended: u64,
    pub fsyncs: u64,
    pub transactions: u64,
    pub bytes: u64,
    pub appends_per_fsync: f64,
    pub max_group: u64,
    pub unclean_shutdown_recovered: bool,
    pub poisoned: Option<String>,
    /// Transactions that panicked (a bug; their writes were discarded).
    pub panics: u64,
    /// Groups whose bodies went straight to blob files (not RocksDB's
    /// WAL), and their bytes.
    #[serde(default)]
    pub bulk_flushes: u64,
    #[serde(default)]
    pub bulk_bytes: u64,
    /// RocksDB's memory and WAL files against the store's budget.
    #[serde(default)]
    pub memory: wal::MemorySnapshot,
    /// The store's files on disk, by column family.
    #[serde(default)]
    pub disk: wal::DiskUsage,
}

/// One log entry, readable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TailEntry {
    pub order: u64,
    pub origin: String,
    pub seq: u64,
    pub time_ms: u64,
    pub event: String,
}

/// State behind the admin routes.
pub struct AdminState {
    pub store: Store,
    pub token: String,
    pub started: Instant,
    /// The configured `mirror.mode`: the role until a node is promoted.
    pub role: crate::config::Role,
    pub listeners: BTreeMap<String, String>,
    pub lmtp: Arc<crate::lmtp::Counters>,
    pub imap: Arc<crate::imap::Counters>,
    pub pop3: Option<Arc<crate::pop3::Counters>>,
    pub mirror: Arc<crate::repl::Mirror>,
    pub backups: Arc<crate::backup::Backups>,
    /// The node's data directory (scratch space of point-in-time restores).
    pub data_dir: std::path::PathBuf,
    /// Replicated settings (`tandem config`).
    pub settings: Arc<crate::settings::Settings>,
    /// Side-file mirroring's counters and last results.
    pub sidefiles: Arc<crate::sidefiles::SideFiles>,
    /// Log retention's last run and what holds pruning back.
    pub retention: Arc<crate::retention::Retention>,
}

type Shared = Arc<AdminState>;

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        use mutate::MutationError as M;
        let code = match &e {
            StoreError::Mutation(M::NoSuchUser(_) | M::NoSuchMailbox(_)) => StatusCode::NOT_FOUND,
            StoreError::Mutation(M::UserExists(_) | M::MailboxExists(_)) => StatusCode::CONFLICT,
            StoreError::Mutation(M::InvalidName { .. } | M::NotAllowed(_) | M::Refused(_)) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

impl From<crate::views::read::ViewError> for ApiError {
    fn from(e: crate::views::read::ViewError) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

async fn require_token(State(st): State<Shared>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), st.token.as_bytes()) {
        tracing::warn!("admin request with a missing or wrong token");
        return ApiError(StatusCode::UNAUTHORIZED, "missing or wrong admin token".into()).into_response();
    }
    next.run(req).await
}

/// Build the status block.
pub fn status(st: &AdminState) -> Result<Status, crate::views::read::ViewError> {
    let wal = st.store.wal();
    let s = wal.stats();
    let role = crate::repl::role::current(&st.store.views(), st.store.node_id(), st.role)?;
    let mut mirror = st.mirror.status(
        st.store
            .wal()
            .scan_prefix(st.store.cfs().views, &crate::views::keys::conflicts_prefix())?
            .len() as u64,
    );
    mirror.role = role.name().to_string();
    mirror.count_from_log(wal, crate::repl::now_ms());
    Ok(Status {
        node_id: st.store.node_id().to_string(),
        origin: wal.local_origin().to_string(),
        role: role.name().to_string(),
        epoch: role.epoch,
        master: role.master_node,
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: st.started.elapsed().as_secs(),
        listeners: st.listeners.clone(),
        log: LogStatus {
            heads: wal.heads().0.iter().map(|(o, s)| (o.to_string(), *s)).collect(),
            apply_order: wal.last_order(),
            entries_appended: s.entries,
            fsyncs: s.groups,
            transactions: s.jobs,
            bytes: s.bytes,
            appends_per_fsync: if s.groups == 0 { 0.0 } else { s.entries as f64 / s.groups as f64 },
            max_group: s.max_group_jobs,
            unclean_shutdown_recovered: wal.recovery_report().unclean_shutdown,
            poisoned: wal.poisoned(),
            panics: s.panics,
            bulk_flushes: s.bulk_flushes,
            bulk_bytes: s.bulk_bytes,
            memory: wal.memory(),
            disk: wal.disk(),
        },
        users: st.store.views().users()?.len() as u64,
        lmtp: st.lmtp.snapshot(),
        imap: st.imap.snapshot(),
        pop3: st.pop3.as_ref().map(|p| p.snapshot()),
        mirror,
        conflicts: crate::repl::resolve::counts(&st.store.views())?,
        backup: st.backups.status(&st.store),
        resync: st.mirror.repair.status(),
        sidefiles: Some(st.sidefiles.status()).filter(|s| !s.dirs.is_empty()),
        retention: st.retention.status(wal),
    })
}

async fn get_conflicts(State(st): State<Shared>) -> Result<Json<crate::repl::resolve::Report>, ApiError> {
    let store = st.store.clone();
    let r = tokio::task::spawn_blocking(move || crate::repl::resolve::report(&store.views()))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(r))
}

async fn get_status(State(st): State<Shared>) -> Result<Json<Status>, ApiError> {
    Ok(Json(status(&st)?))
}

/// `tandem promote`: this node becomes master under a higher epoch.
async fn promote(State(st): State<Shared>) -> Result<Json<crate::repl::role::Promoted>, ApiError> {
    let node = st.store.node_id().to_string();
    let p = st.store.run(move |txn, cfs| crate::repl::role::promote(txn, cfs, &node)).await?;
    if p.changed {
        tracing::warn!(epoch = p.epoch, "promoted: this node is the master");
    }
    Ok(Json(p))
}

#[derive(Deserialize)]
struct NewUser {
    user: String,
    password: String,
}

#[derive(Deserialize)]
struct NewPassword {
    password: String,
}

async fn hash(password: String) -> Result<String, ApiError> {
    if password.is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "empty password".into()));
    }
    tokio::task::spawn_blocking(move || hash_password(&Secret::new(password)))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn list_users(State(st): State<Shared>) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(st.store.views().users()?))
}

async fn add_user(State(st): State<Shared>, Json(req): Json<NewUser>) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let user = mutate::normalize_user(&req.user).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let phc = hash(req.password).await?;
    let u = user.clone();
    let now = now_secs();
    st.store.run(move |txn, cfs| mutate::create_user(txn, cfs, &u, phc, now)).await?;
    tracing::info!(user = %user, "user created");
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "user": user }))))
}

async fn set_password(
    State(st): State<Shared>,
    Path(user): Path<String>,
    Json(req): Json<NewPassword>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let phc = hash(req.password).await?;
    let u = user.clone();
    st.store.run(move |txn, cfs| mutate::set_password(txn, cfs, &u, phc)).await?;
    tracing::info!(user = %user, "password changed");
    Ok(Json(serde_json::json!({ "user": user })))
}

async fn del_user(State(st): State<Shared>, Path(user): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let u = user.clone();
    st.store.run(move |txn, cfs| mutate::delete_user(txn, cfs, &u)).await?;
    tracing::info!(user = %user, "user deleted");
    Ok(Json(serde_json::json!({ "user": user })))
}

/// A user's quota and usage (`tandem quota`).
#[derive(Debug, Serialize, Deserialize)]
pub struct QuotaInfo {
    pub storage_kib: Option<u64>,
    pub messages: Option<u64>,
    /// Storage in use, in KiB rounded up (as IMAP GETQUOTA shows it).
    pub used_kib: u64,
    pub used_bytes: u64,
    pub used_messages: u64,
}

#[derive(Deserialize)]
struct QuotaLimits {
    storage_kib: Option<u64>,
    messages: Option<u64>,
}

fn quota_info(v: &crate::views::Views, user: &str) -> Result<QuotaInfo, ApiError> {
    if v.user(user)?.is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no such user {user}")));
    }
    let q = v.quota(user)?;
    let (used_bytes, used_messages) = v.usage(user)?;
    Ok(QuotaInfo {
        storage_kib: q.as_ref().and_then(|q| q.storage_kib),
        messages: q.as_ref().and_then(|q| q.messages),
        used_kib: used_bytes.div_ceil(1024),
        used_bytes,
        used_messages,
    })
}

async fn quota_get(State(st): State<Shared>, Path(user): Path<String>) -> Result<Json<QuotaInfo>, ApiError> {
    let user = mutate::normalize_user(&user).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Json(quota_info(&st.store.views(), &user)?))
}

async fn quota_set(State(st): State<Shared>, Path(user): Path<String>, Json(req): Json<QuotaLimits>) -> Result<Json<QuotaInfo>, ApiError> {
    let user = mutate::normalize_user(&user).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let u = user.clone();
    st.store
        .run(move |txn, cfs| mutate::set_quota(txn, cfs, &u, req.storage_kib, req.messages))
        .await?;
    tracing::info!(user = %user, storage_kib = ?req.storage_kib, messages = ?req.messages, "quota set");
    Ok(Json(quota_info(&st.store.views(), &user)?))
}

#[derive(Deserialize)]
struct TailQuery {
    n: Option<u64>,
}

/// The last `n` entries of the apply order, readable.
pub fn tail(store: &Store, n: u64) -> Result<Vec<TailEntry>, wal::WalError> {
    let wal = store.wal();
    let last = wal.last_order();
    let from = last.saturating_sub(n.min(10_000)) + 1;
    Ok(wal
        .read_order(from, n as usize)?
        .into_iter()
        .map(|(order, e)| TailEntry {
            order,
            origin: e.origin.to_string(),
            seq: e.seq,
            time_ms: e.hlc >> 16,
            event: match Event::decode(&e.payload) {
                Ok(ev) => ev.describe(),
                Err(err) => format!("<undecodable: {err}>"),
            },
        })
        .collect())
}

async fn get_tail(State(st): State<Shared>, Query(q): Query<TailQuery>) -> Result<Json<Vec<TailEntry>>, ApiError> {
    let store = st.store.clone();
    let n = q.n.unwrap_or(20);
    let r = tokio::task::spawn_blocking(move || tail(&store, n))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(r))
}

/// One message of an import batch (the request body is the postcard
/// encoding of `Vec<ImportItem>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportItem {
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub flags: Vec<String>,
    pub internal_date: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportResult {
    pub added: u64,
    pub skipped: u64,
}

#[derive(Deserialize)]
struct FolderQuery {
    user: String,
    folder: String,
}

async fn import(State(st): State<Shared>, Query(q): Query<FolderQuery>, body: axum::body::Bytes) -> Result<Json<ImportResult>, ApiError> {
    let items: Vec<ImportItem> =
        postcard::from_bytes(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("import batch does not decode: {e}")))?;
    let msgs: Vec<mutate::NewMessage> = items
        .into_iter()
        .map(|i| {
            mutate::NewMessage::new(
                crate::mailfile::to_crlf(&i.body),
                crate::event::Flags::new(i.flags),
                i.internal_date,
            )
        })
        .collect();
    let user = mutate::normalize_user(&q.user).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let now = now_secs();
    let (added, skipped) = st
        .store
        .run(move |txn, cfs| mutate::import(txn, cfs, &user, &q.folder, &msgs, now))
        .await?;
    Ok(Json(ImportResult { added, skipped }))
}

/// A mailbox as the export sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailboxInfo {
    pub name: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub messages: u64,
    pub special_use: Option<String>,
    pub subscribed: bool,
}

/// A message as the export sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageInfo {
    pub uid: u32,
    /// The message's GUID (hex), the same on every node of a mirror.
    #[serde(default)]
    pub guid: String,
    pub blob: String,
    pub size: u64,
    pub internal_date: i64,
    pub flags: Vec<String>,
}

#[derive(Deserialize)]
struct UserQuery {
    user: String,
}

async fn mailboxes(State(st): State<Shared>, Query(q): Query<UserQuery>) -> Result<Json<Vec<MailboxInfo>>, ApiError> {
    let v = st.store.views();
    let user = mutate::normalize_user(&q.user).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    if v.user(&user)?.is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no such user {user}")));
    }
    let subs = v.subscriptions(&user)?;
    let mut out = Vec::new();
    for mb in v.mailboxes(&user)? {
        out.push(MailboxInfo {
            messages: v.messages(mb.id)?.len() as u64,
            subscribed: subs.contains(&mb.name),
            special_use: mb.special_use.map(|s| s.attribute().to_string()),
            name: mb.name,
            uidvalidity: mb.uidvalidity,
            uidnext: mb.uidnext,
        });
    }
    Ok(Json(out))
}

async fn messages(State(st): State<Shared>, Query(q): Query<FolderQuery>) -> Result<Json<Vec<MessageInfo>>, ApiError> {
    let v = st.store.views();
    let user = mutate::normalize_user(&q.user).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let name = mutate::normalize_mailbox(&q.folder).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let Some(mb) = v.mailbox_by_name(&user, &name)? else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no such mailbox {name}")));
    };
    Ok(Json(
        v.messages(mb.id)?
            .into_iter()
            .map(|(uid, m)| MessageInfo {
                uid,
                guid: m.guid.to_hex(),
                blob: hex::encode(m.blob.0),
                size: m.size,
                internal_date: m.internal_date,
                flags: m.flags.iter().map(String::from).collect(),
            })
            .collect(),
    ))
}

async fn blob(State(st): State<Shared>, Path(hash): Path<String>) -> Result<Vec<u8>, ApiError> {
    let h: [u8; 32] = hex::decode(&hash)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "a blob is named by 64 hex digits".into()))?;
    match st.store.blob(&crate::event::BlobHash(h)) {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(ApiError(StatusCode::NOT_FOUND, format!("no blob {hash}"))),
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

#[derive(Deserialize)]
struct DigestQuery {
    user: Option<String>,
    folder: Option<String>,
}

/// The merkle digest of what must converge between mirrored nodes (see
/// [`crate::merkle`]), of one user and one folder if asked, with the log
/// heads.
async fn digest(State(st): State<Shared>, Query(q): Query<DigestQuery>) -> Result<Json<serde_json::Value>, ApiError> {
    let bad = |e: mutate::MutationError| ApiError(StatusCode::BAD_REQUEST, e.to_string());
    let user = q.user.as_deref().map(mutate::normalize_user).transpose().map_err(bad)?;
    let folder = q.folder.as_deref().map(mutate::normalize_mailbox).transpose().map_err(bad)?;
    let store = st.store.clone();
    let r = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let v = store.views();
        if let Some(u) = &user {
            if v.user(u)?.is_none() {
                return Err(ApiError(StatusCode::NOT_FOUND, format!("no such user {u}")));
            }
            if let Some(f) = &folder {
                if v.mailbox_by_name(u, f)?.is_none() {
                    return Err(ApiError(StatusCode::NOT_FOUND, format!("no such mailbox {f}")));
                }
            }
        }
        Ok(crate::merkle::report(&v, user.as_deref(), folder.as_deref())?)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let mut out = serde_json::to_value(&r).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    out["digest"] = serde_json::Value::String(r.root.clone());
    out["heads"] = serde_json::json!(st
        .store
        .wal()
        .heads()
        .0
        .iter()
        .map(|(o, s)| (o.to_string(), *s))
        .collect::<BTreeMap<_, _>>());
    Ok(Json(out))
}

/// Compare with a peer's merkle tree, and repair if asked
/// (`crate::repl::resync`).
async fn resync(
    State(st): State<Shared>,
    Json(req): Json<crate::repl::resync::Request>,
) -> Result<Json<crate::repl::resync::Report>, ApiError> {
    let dialer = st
        .mirror
        .resync
        .get()
        .cloned()
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "the mirror is not configured on this node".into()))?;
    crate::repl::resync::run(&st.store, &st.mirror, &dialer, &req)
        .await
        .map(Json)
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, format!("{e:#}")))
}

#[derive(Deserialize)]
struct BackupRequest {
    to: std::path::PathBuf,
}

/// Back up everything applied so far into a directory or an S3 target;
/// answers once the manifest naming it is durable.
async fn backup(State(st): State<Shared>, Json(req): Json<BackupRequest>) -> Result<Json<serde_json::Value>, ApiError> {
    if !req.to.is_absolute() && !crate::backup::is_s3(&req.to) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "the backup target must be an absolute path or s3://BUCKET[/PREFIX]".into(),
        ));
    }
    let (store, backups, to) = (st.store.clone(), st.backups.clone(), req.to.clone());
    let runs = tokio::task::spawn_blocking(move || backups.run(&store, &to, false))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let status = st
        .backups
        .status(&st.store)
        .into_iter()
        .find(|b| b.target == req.to.display().to_string());
    Ok(Json(serde_json::json!({ "runs": runs, "status": status })))
}

#[derive(Deserialize)]
struct PitrQuery {
    user: String,
    folder: Option<String>,
    /// RFC 3339.
    at: String,
    into: Option<String>,
}

/// Bring a user's (or a folder's) state at a past instant back into new
/// folders, as ordinary events.
async fn restore_folders(State(st): State<Shared>, Json(q): Json<PitrQuery>) -> Result<Json<crate::backup::pitr::PitrReport>, ApiError> {
    let at = chrono::DateTime::parse_from_rfc3339(&q.at)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("at {:?} is not an RFC 3339 time: {e}", q.at)))?;
    let req = crate::backup::pitr::PitrRequest {
        user: q.user,
        folder: q.folder,
        at_ms: u64::try_from(at.timestamp_millis()).unwrap_or(0),
        into: q.into,
    };
    let store = st.store.clone();
    let scratch = st.data_dir.join(format!("pitr-scratch-{}", hex::encode(rand::random::<[u8; 6]>())));
    let r = tokio::task::spawn_blocking(move || crate::backup::pitr::restore_folders(&store, &scratch, &req))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Json(r))
}

fn setting_error(e: crate::settings::SettingError) -> ApiError {
    use crate::settings::SettingError as E;
    let code = match e {
        E::Unknown { .. } => StatusCode::NOT_FOUND,
        E::NodeLocal { .. } | E::Invalid { .. } => StatusCode::BAD_REQUEST,
    };
    ApiError(code, e.to_string())
}

async fn config_list(State(st): State<Shared>) -> Json<Vec<crate::settings::Entry>> {
    Json(st.settings.list())
}

async fn config_get(State(st): State<Shared>, Path(key): Path<String>) -> Result<Json<crate::settings::Entry>, ApiError> {
    let k = crate::settings::lookup(&key).map_err(setting_error)?;
    Ok(Json(st.settings.entry(k)))
}

#[derive(Deserialize)]
struct ConfigValue {
    value: String,
}

/// Log a `ConfigSet` (an empty value unsets) and use it at once.
async fn config_write(st: &AdminState, key: crate::settings::Key, value: String) -> Result<Json<crate::settings::Entry>, ApiError> {
    let name = key.name();
    st.store.run(move |txn, cfs| mutate::set_config(txn, cfs, name, &value)).await?;
    st.settings.refresh(&st.store.views())?;
    tracing::info!(key = name, "replicated setting written");
    Ok(Json(st.settings.entry(key)))
}

async fn config_set(
    State(st): State<Shared>,
    Path(key): Path<String>,
    Json(req): Json<ConfigValue>,
) -> Result<Json<crate::settings::Entry>, ApiError> {
    let (k, value) = crate::settings::check(&key, &req.value).map_err(setting_error)?;
    config_write(&st, k, value).await
}

async fn config_unset(State(st): State<Shared>, Path(key): Path<String>) -> Result<Json<crate::settings::Entry>, ApiError> {
    let k = crate::settings::lookup(&key).map_err(setting_error)?;
    config_write(&st, k, String::new()).await
}

/// The admin routes.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/digest", get(digest))
        .route("/v1/resync", axum::routing::post(resync))
        .route(
            "/v1/import",
            axum::routing::post(import).layer(axum::extract::DefaultBodyLimit::max(256 << 20)),
        )
        .route("/v1/mailboxes", get(mailboxes))
        .route("/v1/messages", get(messages))
        .route("/v1/blobs/{hash}", get(blob))
        .route("/v1/status", get(get_status))
        .route("/v1/promote", axum::routing::post(promote))
        .route("/v1/users", get(list_users).post(add_user))
        .route("/v1/users/{user}", axum::routing::delete(del_user))
        .route("/v1/users/{user}/password", put(set_password))
        .route("/v1/users/{user}/quota", get(quota_get).put(quota_set))
        .route("/v1/log/tail", get(get_tail))
        .route("/v1/conflicts", get(get_conflicts))
        .route("/v1/backup", axum::routing::post(backup))
        .route("/v1/restore", axum::routing::post(restore_folders))
        .route("/v1/config", get(config_list))
        .route("/v1/config/{key}", get(config_get).put(config_set).delete(config_unset))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}
