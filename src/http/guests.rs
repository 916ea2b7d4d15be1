//! Guest links (CONTRACT §6–7): the front desk (staff token) links any channel, by charger
//! or id_tag; the public (the bay page) links its charger on the guest channels only, rate
//! limited per client address. A token sees only its own link.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::AppState;
use crate::outputs::notify::{self, LinkRequest};
use crate::store;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/guests", post(link))
        .route("/api/v1/guests/:token", get(lookup).delete(unlink))
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({"error": msg.into()}))).into_response()
}

/// Guests the public may link to one bay at a time (waiting or bound): enough for a
/// family, few enough that nobody can have the operator's mail server write to a crowd of
/// strangers about one car. The front desk is not limited.
const MAX_PUBLIC_LINKS_PER_BAY: i64 = 10;

async fn link(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // JSON only: a page elsewhere can make a browser POST text/plain or a form here without
    // asking first (no CORS preflight), but not application/json. Without a staff token
    // (loopback deployments) that is what keeps a web page opened on this host from linking.
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let staff = st.is_staff(&headers) && st.cfg.http.staff_token.is_some();
    if !staff && !st.limiter.allow_request(peer, &headers) {
        return error(StatusCode::TOO_MANY_REQUESTS, "too many requests");
    }
    let req: LinkRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        // serde's message may quote the offending value (an address): keep it out.
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid body at line {} column {}", e.line(), e.column()),
            )
        }
    };
    let public = !(staff || st.cfg.http.staff_token.is_none() && is_loopback_staff(&headers));
    let check = if public {
        req.validate_public(&st.notify)
    } else {
        req.validate(&st.notify)
    };
    if let Err(e) = check {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    // The public links a bay: one that has a page (configured, or heard from). A made-up
    // charger would keep the contact stored, waiting for a session that never comes.
    if public
        && req
            .charger
            .as_deref()
            .is_none_or(|c| super::pages::known_bay(&st, &req.site, c).is_none())
    {
        return error(StatusCode::NOT_FOUND, "unknown charger");
    }
    let current = req
        .charger
        .as_deref()
        .and_then(|c| st.live.charger(&req.site, c))
        .and_then(|c| c.session)
        .filter(|s| s.ended.is_none())
        .map(|s| s.session_key);
    let dir = st.data_dir.clone();
    let cfg = st.notify.clone();
    let res = tokio::task::spawn_blocking(move || {
        // Outer error: the store failed; inner: the request was refused.
        let conn = store::open_writer(&dir).map_err(|e| e.to_string())?;
        match notify::link_guest_capped(
            &conn,
            &req,
            &cfg,
            current.as_deref(),
            crate::util::time::now_ms(),
            public.then_some(MAX_PUBLIC_LINKS_PER_BAY),
        ) {
            Ok(l) => Ok(Ok(l)),
            Err(notify::NotifyError::Invalid(e)) => Ok(Err(e)),
            Err(notify::NotifyError::Store(e)) => Err(e.to_string()),
        }
    })
    .await;
    match res {
        Ok(Ok(Ok(l))) => {
            tracing::info!(guest = %l.guest_id, state = %l.state, staff, "guest linked");
            (
                StatusCode::CREATED,
                Json(json!({"token": l.token, "guest_id": l.guest_id, "state": l.state})),
            )
                .into_response()
        }
        Ok(Ok(Err(e @ notify::LinkError::BayFull(_)))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Ok(Ok(Err(e))) => error(
            StatusCode::BAD_REQUEST,
            format!("invalid link request: {e}"),
        ),
        // The store's own message (a path, "database is locked") is for the log, not the
        // caller, who may try again.
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "guest link: store unavailable");
            error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "link failed"),
    }
}

/// Without a configured staff token (loopback-only deployments) the desk is whoever can
/// reach the loopback address; a request still marked as coming from the bay page
/// (`X-Evlounge-Public: 1`), or relayed by a proxy, is held to the public rules.
fn is_loopback_staff(headers: &HeaderMap) -> bool {
    headers.get("x-evlounge-public").is_none() && !super::relayed(headers)
}

async fn lookup(State(st): State<AppState>, Path(token): Path<String>) -> Response {
    if token.len() > 128 {
        return error(StatusCode::NOT_FOUND, "unknown link");
    }
    let dir = st.data_dir.clone();
    let res = tokio::task::spawn_blocking(move || {
        let conn = store::open_reader(&dir).map_err(|e| e.to_string())?;
        notify::get_guest(&conn, &token).map_err(|e| e.to_string())
    })
    .await;
    match res {
        Ok(Ok(Some(v))) => Json(v).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, "unknown link"),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
    }
}

async fn unlink(State(st): State<AppState>, Path(token): Path<String>) -> Response {
    if token.len() > 128 {
        return error(StatusCode::NOT_FOUND, "unknown link");
    }
    let dir = st.data_dir.clone();
    let res = tokio::task::spawn_blocking(move || {
        // An unknown token is answered from a reader: a flood of made-up tokens must not
        // queue for the write lock the commit thread needs.
        let reader = store::open_reader(&dir).map_err(|e| e.to_string())?;
        if !notify::link_exists(&reader, &token).map_err(|e| e.to_string())? {
            return Ok(false);
        }
        drop(reader);
        // A writer connection zeroes what it frees (`store::open_writer`).
        let conn = store::open_writer(&dir).map_err(|e| e.to_string())?;
        notify::unlink_guest(&conn, &token).map_err(|e| e.to_string())
    })
    .await;
    match res {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => error(StatusCode::NOT_FOUND, "unknown link"),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
    }
}
