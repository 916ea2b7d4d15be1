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
    /// `http.forwarded_for`: see [`client_ip`].
    forwarded_for: bool,
    // Held only for a map lookup, never across an await.
    buckets:
        parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32, forwarded_for: bool) -> Self {
        RateLimiter {
            per_minute,
            forwarded_for,
            buckets: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// One request from `peer` (with its headers: see [`client_ip`]) may go on.
    pub fn allow_request(&self, peer: SocketAddr, headers: &HeaderMap) -> bool {
        self.allow(client_ip(peer, self.forwarded_for, headers))
    }

    pub fn allow(&self, ip: std::net::IpAddr) -> bool {
        let now = std::time::Instant::now();
        let cap = f64::from(self.per_minute);
        let mut b = self.buckets.lock();
        if b.len() > 10_000 {
            b.retain(|_, (_, t)| now.duration_since(*t).as_secs() < 120);
            // Still full of fresh clients: start over rather than scan the map under the
            // lock on every request from now on.
            if b.len() > 10_000 {
                b.clear();
            }
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

/// A request a proxy relayed (it says so in one of the usual headers): without a staff
/// token, only requests made on this host itself pass as staff; one that came through a
/// reverse proxy came from anywhere (a staff token lost to a unit file's mistake must not
/// leave the staff pages open to the internet).
pub fn relayed(headers: &HeaderMap) -> bool {
    ["x-forwarded-for", "forwarded", "x-real-ip", "via"]
        .iter()
        .any(|h| headers.contains_key(*h))
}

/// The client a rate limit applies to. Behind a reverse proxy on this host every request
/// comes from loopback: with `forwarded_for` (`http.forwarded_for`, set when that proxy
/// sets the header), the proxy's `X-Forwarded-For` names the client there (its last entry,
/// the address the proxy itself saw; earlier entries are the client's to make up). Off,
/// the header is ignored: a proxy that passes the client's own header on, or any local
/// process, could otherwise pick a fresh bucket per request. IPv6 clients count per /64,
/// the block one subscriber usually holds; IPv4-mapped addresses as their IPv4 address.
pub fn client_ip(peer: SocketAddr, forwarded_for: bool, headers: &HeaderMap) -> std::net::IpAddr {
    use std::net::IpAddr;
    let unmapped = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let mut ip = unmapped(peer.ip());
    if !forwarded_for && ip.is_loopback() && headers.contains_key("x-forwarded-for") {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "requests come through a local proxy (X-Forwarded-For) but http.forwarded_for \
                 is off: the guest and login rate limits count all of them as one client"
            );
        }
    }
    if forwarded_for && ip.is_loopback() {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .last()
            .and_then(|a| a.trim().parse::<IpAddr>().ok());
        if let Some(f) = forwarded {
            ip = unmapped(f);
        }
    }
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl AppState {
    /// Staff endpoints: `Authorization: Bearer <token>` (or the `evlounge_staff` cookie set
    /// by the staff login). With no token configured (allowed on loopback only) all pass.
    pub fn is_staff(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.cfg.http.staff_token else {
            return !relayed(headers);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn behind_a_local_proxy_the_client_is_the_proxys_last_forwarded_entry() {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(client_ip(local, true, &headers(&[])), ip("127.0.0.1"));
        assert_eq!(
            client_ip(local, true, &headers(&["203.0.113.7"])),
            ip("203.0.113.7")
        );
        // A client's own header comes first; the proxy appends what it saw.
        assert_eq!(
            client_ip(local, true, &headers(&["10.9.9.9, 203.0.113.7"])),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip(local, true, &headers(&["10.9.9.9", "203.0.113.8"])),
            ip("203.0.113.8")
        );
        assert_eq!(
            client_ip(local, true, &headers(&["garbage"])),
            ip("127.0.0.1")
        );
        // A direct client cannot pick its own bucket.
        let remote: SocketAddr = "198.51.100.4:5555".parse().unwrap();
        assert_eq!(
            client_ip(remote, true, &headers(&["203.0.113.7"])),
            ip("198.51.100.4")
        );
        // IPv6: one bucket per /64; v4-mapped addresses are their IPv4 address.
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::2]:1".parse().unwrap();
        assert_eq!(
            client_ip(a, true, &headers(&[])),
            client_ip(b, true, &headers(&[]))
        );
        let m: SocketAddr = "[::ffff:198.51.100.4]:1".parse().unwrap();
        assert_eq!(client_ip(m, true, &headers(&[])), ip("198.51.100.4"));
        // A dual-stack listener sees its local proxy as ::ffff:127.0.0.1.
        let mapped_local: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        assert_eq!(
            client_ip(mapped_local, true, &headers(&["203.0.113.9"])),
            ip("203.0.113.9")
        );
        // Without `http.forwarded_for` the header is nobody's word: the peer counts.
        assert_eq!(
            client_ip(local, false, &headers(&["203.0.113.7"])),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn a_request_through_a_proxy_is_relayed() {
        assert!(!relayed(&HeaderMap::new()));
        assert!(relayed(&headers(&["203.0.113.7"])));
        for h in ["forwarded", "x-real-ip", "via"] {
            let mut m = HeaderMap::new();
            m.insert(h, "x".parse().unwrap());
            assert!(relayed(&m), "{h}");
        }
    }

    #[test]
    fn the_limiter_allows_a_minutes_worth_per_client_and_no_more() {
        let l = RateLimiter::new(3, true);
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let (a, b) = (headers(&["203.0.113.1"]), headers(&["203.0.113.2"]));
        for _ in 0..3 {
            assert!(l.allow_request(local, &a));
        }
        assert!(!l.allow_request(local, &a));
        // Another client behind the same proxy has its own bucket.
        assert!(l.allow_request(local, &b));
    }
}
