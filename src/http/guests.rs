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

async fn link(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let staff = st.is_staff(&headers) && st.cfg.http.staff_token.is_some();
    if !staff && !st.limiter.allow(peer.ip()) {
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
    let check = if staff || st.cfg.http.staff_token.is_none() && is_loopback_staff(&headers) {
        req.validate(&st.notify)
    } else {
        req.validate_public(&st.notify)
    };
    if let Err(e) = check {
        return error(StatusCode::BAD_REQUEST, e.to_string());
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
        let conn = store::open_writer(&dir).map_err(|e| e.to_string())?;
        notify::link_guest(
            &conn,
            &req,
            &cfg,
            current.as_deref(),
            crate::util::time::now_ms(),
        )
        .map_err(|e| e.to_string())
    })
    .await;
    match res {
        Ok(Ok(l)) => {
            tracing::info!(guest = %l.guest_id, state = %l.state, staff, "guest linked");
            (
                StatusCode::CREATED,
                Json(json!({"token": l.token, "guest_id": l.guest_id, "state": l.state})),
            )
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "link failed"),
    }
}

/// Without a configured staff token (loopback-only deployments) the desk is whoever can
/// reach the loopback address; a request still marked as coming from the bay page
/// (`X-Evlounge-Public: 1`) is held to the public rules.
fn is_loopback_staff(headers: &HeaderMap) -> bool {
    headers.get("x-evlounge-public").is_none()
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
    let dir = st.data_dir.clone();
    let res = tokio::task::spawn_blocking(move || {
        let conn = store::open_writer(&dir).map_err(|e| e.to_string())?;
        let _ = conn.pragma_update(None, "secure_delete", "ON");
        notify::unlink_guest(&conn, &token).map_err(|e| e.to_string())
    })
    .await;
    match res {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => error(StatusCode::NOT_FOUND, "unknown link"),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
    }
}
