//! The JSON API (CONTRACT §7) and health endpoints.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{unauthorized, AppState};
use crate::app::live::{charger_json, session_json, zone_json};
use crate::store;
use crate::store::queries::{self, SessionFilter};
use crate::util::time::{parse_rfc3339_ms, rfc3339_ms};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/chargers", get(chargers))
        .route("/api/v1/chargers/:site/:id", get(charger))
        .route("/api/v1/lounge", get(lounge))
        .route("/api/v1/sessions", get(sessions))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<AppState>) -> Response {
    let mqtt = *st.ready.mqtt.borrow();
    let tsdb = st.ready.tsdb.borrow().as_str();
    let dir = st.data_dir.clone();
    let store_ok = tokio::task::spawn_blocking(move || {
        store::open_reader(&dir)
            .and_then(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .is_ok()
    })
    .await
    .unwrap_or(false);
    let body = json!({
        "mqtt": if mqtt { "up" } else { "down" },
        "store": if store_ok { "up" } else { "down" },
        "tsdb": tsdb,
    });
    let ok = mqtt && store_ok && tsdb != "auth_failed";
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

async fn chargers(State(st): State<AppState>) -> Json<serde_json::Value> {
    let list: Vec<_> = st.live.chargers().iter().map(|c| charger_json(c)).collect();
    Json(json!({ "chargers": list }))
}

async fn charger(State(st): State<AppState>, Path((site, id)): Path<(String, String)>) -> Response {
    match st.live.charger(&site, &id) {
        Some(c) => Json(charger_json(&c)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown charger"})),
        )
            .into_response(),
    }
}

async fn lounge(State(st): State<AppState>) -> Json<serde_json::Value> {
    let zones: Vec<_> = st.live.zones().iter().map(zone_json).collect();
    Json(json!({ "zones": zones }))
}

#[derive(Debug, Deserialize)]
pub struct SessionsQuery {
    site: Option<String>,
    charger: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    format: Option<String>,
}

pub fn bad_request(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg.into()}))).into_response()
}

/// `from`/`to` as RFC 3339 or epoch milliseconds.
#[allow(clippy::result_large_err)] // the error is the HTTP response itself, built once
pub fn parse_time(name: &str, v: &Option<String>) -> Result<Option<i64>, Response> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => parse_rfc3339_ms(s)
            .or_else(|| s.parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| bad_request(format!("{name}: expected RFC 3339 or epoch ms"))),
    }
}

async fn sessions(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SessionsQuery>,
) -> Response {
    if !st.is_staff(&headers) {
        return unauthorized();
    }
    let from = match parse_time("from", &q.from) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let to = match parse_time("to", &q.to) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let filter = SessionFilter {
        site: q.site,
        charger: q.charger,
        from,
        to,
        limit: q.limit.unwrap_or(100).clamp(1, 10_000),
    };
    let csv = q.format.as_deref() == Some("csv")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/csv"));
    let dir = st.data_dir.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let conn = store::open_reader(&dir)?;
        Ok::<_, store::StoreError>(queries::sessions(&conn, &filter)?)
    })
    .await;
    let rows = match rows {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "sessions query failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "store unavailable"})),
            )
                .into_response();
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    if csv {
        let mut out = String::from("site,charger,session_id,vehicle,started,completed,ended,outcome,energy_kwh,peak_kw,soc_start,soc_end,time_to_complete_s,idle_s\n");
        for s in &rows {
            let opt = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
            let t = |v: Option<i64>| v.map(rfc3339_ms).unwrap_or_default();
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{:.3},{:.3},{},{},{},{}\n",
                csv_field(&s.site),
                csv_field(&s.charger),
                csv_field(&s.session_id),
                csv_field(s.vehicle.as_deref().unwrap_or("")),
                rfc3339_ms(s.started),
                t(s.completed),
                t(s.ended),
                s.outcome.map(|o| o.as_str()).unwrap_or(""),
                s.energy_kwh,
                s.peak_kw,
                opt(s.soc_start),
                opt(s.soc_end),
                opt(s.time_to_complete_s),
                opt(s.idle_s),
            ));
        }
        return (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"sessions.csv\"",
                ),
            ],
            out,
        )
            .into_response();
    }
    let list: Vec<_> = rows.iter().map(session_json).collect();
    Json(json!({ "sessions": list })).into_response()
}

/// CSV quoting, and a leading `'` against formula injection in spreadsheets.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}
