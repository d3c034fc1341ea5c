//! The `/metrics` listener (`[metrics] listen`): the registry in the
//! Prometheus text format, over axum like the admin endpoint, and the
//! read-only status page ([`super::status`]: `/status`, `/status.json`).
//! It may face the monitoring network, so it serves nothing else: other
//! paths get 404, and with a bearer token configured a missing or wrong
//! token gets 401 on every path.

use super::Registry;
use crate::auth::constant_time_eq;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// The content type of the text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Listener {
    registry: Registry,
    token: Option<String>,
    /// The status page's data (absent in listeners without a node, such
    /// as the watchdog's).
    status: Option<super::status::Source>,
}

/// Read a bearer token from `path` (surrounding whitespace ignored); `key`
/// names the setting in errors.
pub fn read_token(key: &str, path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let t = std::fs::read_to_string(path).with_context(|| format!("reading {key} {}", path.display()))?;
    let t = t.trim().to_string();
    anyhow::ensure!(!t.is_empty(), "{key} {} is empty", path.display());
    Ok(t)
}

async fn require_token(State(l): State<Arc<Listener>>, req: Request, next: Next) -> Response {
    if let Some(token) = &l.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "missing or wrong bearer token\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

async fn metrics(State(l): State<Arc<Listener>>) -> Response {
    // Collectors read RocksDB (heads, users): off the async workers.
    match tokio::task::spawn_blocking(move || l.registry.render()).await {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering metrics failed: {e}\n")).into_response(),
    }
}

async fn status_page(State(l): State<Arc<Listener>>) -> Response {
    let Some(src) = &l.status else {
        return (StatusCode::NOT_FOUND, "no status page here; metrics are at /metrics\n").into_response();
    };
    let (st, peers) = tokio::join!(src.status(), src.peers.fetch());
    match st {
        Ok(st) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            super::status::page(&st, &src.history, &peers, crate::repl::now_ms()),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("reading the status failed: {e:#}\n")).into_response(),
    }
}

async fn status_json(State(l): State<Arc<Listener>>, RawQuery(q): RawQuery) -> Response {
    let Some(src) = &l.status else {
        return (StatusCode::NOT_FOUND, "no status page here; metrics are at /metrics\n").into_response();
    };
    // `?local` (what a peer's page asks for): this node only.
    let local = q.is_some_and(|q| q.split('&').any(|p| p == "local"));
    let fetch = async {
        if local {
            Vec::new()
        } else {
            src.peers.fetch().await
        }
    };
    let (st, peers) = tokio::join!(src.status(), fetch);
    match st {
        Ok(st) => (
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(super::status::live(&st, &src.history, &peers, crate::repl::now_ms())),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("reading the status failed: {e:#}\n")).into_response(),
    }
}

/// `GET /metrics`, and with a status source `GET /status` and
/// `GET /status.json`; everything else 404.
pub fn router(registry: Registry, token: Option<String>, status: Option<super::status::Source>) -> Router {
    let l = Arc::new(Listener { registry, token, status });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status_page))
        .route("/status.json", get(status_json))
        .route_layer(middleware::from_fn_with_state(l.clone(), require_token))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found; metrics are at /metrics, the status page at /status\n",
            )
        })
        .with_state(l)
}

/// A bound `[metrics] listen`, not serving yet (the daemon binds every
/// port before it builds the state the status page reads).
pub struct Bound {
    listener: tokio::net::TcpListener,
    token: Option<String>,
    pub addr: std::net::SocketAddr,
}

/// Bind `[metrics] listen` (when set) and read its token.
pub async fn bind(cfg: &crate::config::MetricsConfig) -> anyhow::Result<Option<Bound>> {
    use anyhow::Context;
    let Some(addr) = cfg.listen else {
        return Ok(None);
    };
    let token = cfg
        .bearer_token_file
        .as_deref()
        .map(|p| read_token("metrics.bearer_token_file", p))
        .transpose()?;
    if token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics listener faces the network without metrics.bearer_token_file");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics.listen {addr}"))?;
    let addr = listener.local_addr()?;
    Ok(Some(Bound { listener, token, addr }))
}

/// Serve a bound listener until `shutdown` turns true.
pub fn serve(
    b: Bound,
    registry: Registry,
    status: Option<super::status::Source>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let l = b.listener;
    let app = router(registry, b.token, status);
    tokio::spawn(async move {
        let r = axum::serve(l, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "metrics listener failed");
        }
    })
}
