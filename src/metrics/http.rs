//! The `/metrics` listener (`[metrics] listen`): the registry in the
//! Prometheus text format, over axum like the admin endpoint. It may face
//! the monitoring network, so it serves nothing else: other paths get 404,
//! and with a bearer token configured a missing or wrong token gets 401.

use super::Registry;
use crate::auth::constant_time_eq;
use axum::extract::{Request, State};
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
}

/// Read the bearer token from `path` (surrounding whitespace ignored).
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let t = std::fs::read_to_string(path).with_context(|| format!("reading metrics.bearer_token_file {}", path.display()))?;
    let t = t.trim().to_string();
    anyhow::ensure!(!t.is_empty(), "metrics.bearer_token_file {} is empty", path.display());
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

/// `GET /metrics`; everything else 404.
pub fn router(registry: Registry, token: Option<String>) -> Router {
    let l = Arc::new(Listener { registry, token });
    Router::new()
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(l.clone(), require_token))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found; metrics are at /metrics\n") })
        .with_state(l)
}

/// Bind `[metrics] listen` (when set) and serve until `shutdown` turns
/// true: the bound address and the task.
pub async fn start(
    cfg: &crate::config::MetricsConfig,
    registry: Registry,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>> {
    use anyhow::Context;
    let Some(addr) = cfg.listen else {
        return Ok(None);
    };
    let token = cfg.bearer_token_file.as_deref().map(read_token).transpose()?;
    if token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics listener faces the network without metrics.bearer_token_file");
    }
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics.listen {addr}"))?;
    let local = l.local_addr()?;
    let app = router(registry, token);
    let task = tokio::spawn(async move {
        let r = axum::serve(l, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(Some((local, task)))
}
