//! Staff statistics: usage per charger and bucket, event counts (faults), notification
//! outcomes, and lounge occupancy over time.
//!
//! The store keeps no occupancy history (only the latest zone state), so the HTTP side keeps
//! its own bounded ring of samples, fed by the live broadcast and a periodic sample. It
//! starts empty at each daemon start; long-term history is the time series' job (§8).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::api::{bad_request, parse_time};
use super::{unauthorized, AppState};
use crate::app::live::Live;
use crate::store;
use crate::store::stats::{self as usage_stats, BucketSize};
use crate::util::time::{now_ms, rfc3339_ms};

/// Most rows a usage answer may hold (chargers × buckets); more is a 400.
pub const MAX_USAGE_ROWS: usize = 5_000;
const DAY_MS: i64 = 86_400_000;

pub fn routes(state: &AppState) -> Router<AppState> {
    let ring = Arc::new(LoungeRing::default());
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(sample_lounge(Arc::downgrade(&state.live), ring.clone()));
    }
    Router::new()
        .route("/api/v1/stats/usage", get(usage))
        .route("/api/v1/stats/events", get(event_counts))
        .route("/api/v1/stats/notifications", get(notifications))
        .route("/api/v1/stats/lounge", get(lounge))
        .layer(Extension(ring))
}

#[derive(Debug, Default, Deserialize)]
pub struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    bucket: Option<String>,
    site: Option<String>,
    charger: Option<String>,
}

/// The staff-only usage endpoints' common start: the caller must be staff, and the
/// `from`/`to` range must parse (`now` is the default end).
#[allow(clippy::result_large_err)] // the error is the response itself, as in `range`
fn staff_range(
    st: &AppState,
    headers: &HeaderMap,
    q: &RangeQuery,
    now: i64,
) -> Result<(i64, i64), Response> {
    if !st.is_staff(headers) {
        return Err(unauthorized());
    }
    range(q, now)
}

/// `from`/`to` with defaults (the last 24 h), validated.
#[allow(clippy::result_large_err)] // the error is the response itself, as in `api`
fn range(q: &RangeQuery, now: i64) -> Result<(i64, i64), Response> {
    let to = parse_time("to", &q.to)?.unwrap_or(now);
    let from = parse_time("from", &q.from)?.unwrap_or(to - DAY_MS);
    if from >= to {
        return Err(bad_request("from must be before to"));
    }
    Ok((from, to))
}

fn store_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "stats query failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "store unavailable"})),
    )
        .into_response()
}

async fn read<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, Response> {
    let dir = st.data_dir.clone();
    let r = tokio::task::spawn_blocking(move || {
        let conn = store::open_reader(&dir).map_err(|e| e.to_string())?;
        f(&conn).map_err(|e| e.to_string())
    })
    .await;
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(store_error(e)),
        Err(e) => Err(store_error(e)),
    }
}

async fn usage(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Response {
    let now = now_ms();
    let (from, to) = match staff_range(&st, &headers, &q, now) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let size = match q.bucket.as_deref() {
        None | Some("") => BucketSize::Hour,
        Some(b) => match BucketSize::parse(b) {
            Some(s) => s,
            None => return bad_request("bucket: expected hour or day"),
        },
    };
    let site_filter = q.site.clone().filter(|s| !s.is_empty());
    let charger_filter = q.charger.clone().filter(|s| !s.is_empty());
    // The aligned range starts at most a (25 h) day before `from`.
    let sf = site_filter.clone();
    let sessions = match read(&st, move |c| {
        crate::store::queries::sessions_overlapping(c, sf.as_deref(), from - 2 * DAY_MS, to)
    })
    .await
    {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Configured chargers, plus any auto-registered one that has sessions or live state.
    let mut sites: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for s in &st.cfg.sites {
        let set = sites.entry(s.id.clone()).or_default();
        set.extend(s.chargers.iter().map(|c| c.charger.clone()));
    }
    for c in st.live.chargers() {
        sites
            .entry(c.site.clone())
            .or_default()
            .insert(c.charger.clone());
    }
    for s in &sessions {
        sites
            .entry(s.site.clone())
            .or_default()
            .insert(s.charger.clone());
    }
    let mut rows = Vec::new();
    let mut total = 0usize;
    for (site, chargers) in &sites {
        if site_filter.as_deref().is_some_and(|f| f != site) {
            continue;
        }
        let chargers: Vec<String> = chargers
            .iter()
            .filter(|c| charger_filter.as_deref().is_none_or(|f| f == c.as_str()))
            .cloned()
            .collect();
        if chargers.is_empty() {
            continue;
        }
        let tz = st
            .cfg
            .site(site)
            .map(|s| s.tz)
            .unwrap_or(chrono_tz::Tz::UTC);
        let max = MAX_USAGE_ROWS.saturating_sub(total) / chargers.len();
        let Some(bounds) = usage_stats::bucket_bounds(tz, size, from, to, max) else {
            return bad_request(format!(
                "too many buckets: at most {MAX_USAGE_ROWS} (chargers × buckets); narrow from/to or use bucket=day"
            ));
        };
        total += chargers.len() * bounds.len().saturating_sub(1);
        rows.extend(usage_stats::usage(
            site, tz, &chargers, &bounds, &sessions, now,
        ));
    }
    let buckets: Vec<_> = rows.iter().map(|b| b.to_json()).collect();
    Json(json!({ "buckets": buckets })).into_response()
}

async fn event_counts(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Response {
    let (from, to) = match staff_range(&st, &headers, &q, now_ms()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match read(&st, move |c| usage_stats::event_counts(c, from, to)).await {
        Ok(rows) => {
            let counts: Vec<_> = rows
                .into_iter()
                .map(|(site, subject, kind, count)| {
                    json!({"site": site, "subject": subject, "kind": kind, "count": count})
                })
                .collect();
            Json(json!({ "counts": counts })).into_response()
        }
        Err(r) => r,
    }
}

async fn notifications(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Response {
    let (from, to) = match staff_range(&st, &headers, &q, now_ms()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match read(&st, move |c| usage_stats::notification_counts(c, from, to)).await {
        Ok(rows) => {
            let mut totals: BTreeMap<String, i64> = ["delivered", "failed", "expired", "pending"]
                .into_iter()
                .map(|k| (k.to_string(), 0))
                .collect();
            let counts: Vec<_> = rows
                .into_iter()
                .map(|(channel, outcome, count)| {
                    *totals.entry(outcome.clone()).or_default() += count;
                    json!({"channel": channel, "outcome": outcome, "count": count})
                })
                .collect();
            Json(json!({ "counts": counts, "totals": totals })).into_response()
        }
        Err(r) => r,
    }
}

async fn lounge(
    State(st): State<AppState>,
    Extension(ring): Extension<Arc<LoungeRing>>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Response {
    let (from, to) = match staff_range(&st, &headers, &q, now_ms() + 1) {
        Ok(r) => r,
        Err(r) => return r,
    };
    // The current occupancy is a sample too (the ring may not have ticked yet).
    let now = now_ms();
    for z in st.live.zones() {
        ring.record(&z.site, &z.zone, z.capacity, z.occupancy, now);
    }
    let zones: Vec<_> = ring
        .samples(from, to)
        .into_iter()
        .map(|(site, zone, capacity, samples)| {
            let samples: Vec<_> = samples
                .into_iter()
                .map(|(ts, occ)| json!({"ts": rfc3339_ms(ts), "occupancy": occ}))
                .collect();
            json!({"site": site, "zone": zone, "capacity": capacity, "samples": samples})
        })
        .collect();
    Json(json!({ "zones": zones })).into_response()
}

/// Occupancy samples per zone, bounded in count and age.
#[derive(Default)]
pub struct LoungeRing {
    // Held for a push or a copy, never across an await.
    zones: parking_lot::Mutex<BTreeMap<(String, String), ZoneSamples>>,
}

#[derive(Default)]
struct ZoneSamples {
    capacity: Option<u32>,
    samples: VecDeque<(i64, u32)>,
}

/// Samples kept per zone: a week at one a minute, plus changes.
const RING_MAX: usize = 12_000;
const RING_AGE_MS: i64 = 8 * DAY_MS;
/// An unchanged occupancy is sampled at most this often.
const RING_EVERY_MS: i64 = 60_000;

impl LoungeRing {
    pub fn record(&self, site: &str, zone: &str, capacity: Option<u32>, occ: u32, ts: i64) {
        let mut zones = self.zones.lock();
        let z = zones
            .entry((site.to_string(), zone.to_string()))
            .or_default();
        z.capacity = capacity;
        if let Some(&(last_ts, last_occ)) = z.samples.back() {
            if ts < last_ts || (last_occ == occ && ts - last_ts < RING_EVERY_MS) {
                return;
            }
        }
        z.samples.push_back((ts, occ));
        while z.samples.len() > RING_MAX
            || z.samples.front().is_some_and(|(t, _)| ts - t > RING_AGE_MS)
        {
            z.samples.pop_front();
        }
    }

    /// Per zone: (site, zone, capacity, samples in `[from, to)`).
    #[allow(clippy::type_complexity)]
    pub fn samples(
        &self,
        from: i64,
        to: i64,
    ) -> Vec<(String, String, Option<u32>, Vec<(i64, u32)>)> {
        self.zones
            .lock()
            .iter()
            .map(|((site, zone), z)| {
                let s = z
                    .samples
                    .iter()
                    .filter(|(t, _)| *t >= from && *t < to)
                    .copied()
                    .collect();
                (site.clone(), zone.clone(), z.capacity, s)
            })
            .collect()
    }
}

/// Feeds the ring from lounge state changes and samples every zone once a minute. Holds the
/// live view weakly and ends with it (its broadcast closes).
async fn sample_lounge(live: Weak<Live>, ring: Arc<LoungeRing>) {
    let Some(mut rx) = live.upgrade().map(|l| l.zones_tx.subscribe()) else {
        return;
    };
    let sample_all = |ring: &LoungeRing| -> bool {
        let Some(l) = live.upgrade() else {
            return false;
        };
        let now = now_ms();
        for z in l.zones() {
            ring.record(&z.site, &z.zone, z.capacity, z.occupancy, now);
        }
        true
    };
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(z) => ring.record(&z.site, &z.zone, z.capacity, z.occupancy, now_ms()),
                Err(RecvError::Lagged(_)) => {
                    if !sample_all(&ring) {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                if !sample_all(&ring) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_changes_and_thins_repeats() {
        let r = LoungeRing::default();
        r.record("m", "lounge", Some(40), 3, 1_000);
        r.record("m", "lounge", Some(40), 3, 2_000); // same value, too soon
        r.record("m", "lounge", Some(40), 4, 3_000); // a change
        r.record("m", "lounge", Some(40), 4, 3_000 + RING_EVERY_MS); // periodic
        r.record("m", "lounge", Some(40), 9, 500); // older than the last: ignored
        let s = r.samples(0, i64::MAX);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].2, Some(40));
        assert_eq!(
            s[0].3,
            vec![(1_000, 3), (3_000, 4), (3_000 + RING_EVERY_MS, 4)]
        );
        assert_eq!(r.samples(2_000, 4_000)[0].3, vec![(3_000, 4)]);
    }

    #[test]
    fn ring_drops_old_samples() {
        let r = LoungeRing::default();
        r.record("m", "z", None, 1, 0);
        r.record("m", "z", None, 2, RING_AGE_MS + 1);
        assert_eq!(
            r.samples(i64::MIN, i64::MAX)[0].3,
            vec![(RING_AGE_MS + 1, 2)]
        );
    }
}
