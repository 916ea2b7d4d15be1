//! HTTP: health, metrics, the JSON API and the pages. Handlers read the live view or query
//! the store through their own connections; they never touch a decider's state.

pub mod api;
pub mod guests;
pub mod metrics;
pub mod pages;
pub mod sse;
pub mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use crate::app::live::Live;
use crate::config::Config;

/// Readiness inputs.
#[derive(Clone)]
pub struct Readiness {
    pub mqtt: watch::Receiver<bool>,
    pub tsdb: watch::Receiver<crate::outputs::timeseries::TsdbState>,
}

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub live: Arc<Live>,
    pub data_dir: PathBuf,
    pub ready: Readiness,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub notify: Arc<crate::outputs::notify::NotifyConfig>,
    /// Per-client-address limiter for the public guest endpoints.
    pub limiter: Arc<RateLimiter>,
}

/// A small token bucket per client address (public guest endpoints).
pub struct RateLimiter {
    per_minute: u32,
    // Held only for a map lookup, never across an await.
    buckets:
        parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute,
            buckets: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }

    pub fn allow(&self, ip: std::net::IpAddr) -> bool {
        let now = std::time::Instant::now();
        let cap = f64::from(self.per_minute);
        let mut b = self.buckets.lock();
        if b.len() > 10_000 {
            b.retain(|_, (_, t)| now.duration_since(*t).as_secs() < 120);
        }
        let (tokens, last) = b.entry(ip).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * cap / 60.0).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl AppState {
    /// Staff endpoints: `Authorization: Bearer <token>` (or the `evlounge_staff` cookie set
    /// by the staff login). With no token configured (allowed on loopback only) all pass.
    pub fn is_staff(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.cfg.http.staff_token else {
            return true;
        };
        let expected = token.expose().as_bytes();
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let cookie = headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix("evlounge_staff="))
            .next();
        [bearer, cookie]
            .into_iter()
            .flatten()
            .any(|given| !given.is_empty() && constant_time_eq(given.as_bytes(), expected))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(serde_json::json!({"error": "staff token required"})),
    )
        .into_response()
}

pub fn router(state: AppState) -> axum::Router {
    api::routes()
        .merge(guests::routes())
        .merge(sse::routes())
        .merge(stats::routes(&state))
        .merge(pages::routes())
        .with_state(state)
}

/// Binds the listener (port 0 picks a free one) and returns it with its real address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}
