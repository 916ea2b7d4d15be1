//! `GET /api/v1/events`: Server-Sent Events of committed events (`id:` = store sequence)
//! and state changes (no id). `Last-Event-ID` (or `?last_event_id=`) replays what the
//! client missed from the store, then continues live without a gap or a duplicate: the
//! broadcast is subscribed before the store is read, and live events at or below the last
//! sequence sent are skipped. A receiver that lags behind the broadcast resyncs the same way.
//!
//! On connect (and after a resync) the stream starts with the current state of every
//! charger and zone it covers, so a page needs no separate fetch and misses no change.
//! `?site=` and `?charger=` narrow the stream (the bay page).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};

use super::api::bad_request;
use super::AppState;
use crate::app::live::{charger_json_text, zone_json_text, Live, LiveItem};
use crate::store;

/// Events read from the store per query while replaying.
const PAGE: usize = 500;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/events", get(events))
}

#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    last_event_id: Option<String>,
    site: Option<String>,
    charger: Option<String>,
}

/// Which items a client asked for.
#[derive(Clone, Debug, Default)]
struct Filter {
    site: Option<String>,
    charger: Option<String>,
}

impl Filter {
    fn is_all(&self) -> bool {
        self.site.is_none() && self.charger.is_none()
    }

    fn matches_ids(&self, site: &str, charger: Option<&str>) -> bool {
        self.site.as_deref().is_none_or(|s| s == site)
            && self.charger.as_deref().is_none_or(|c| charger == Some(c))
    }

    /// Matches a JSON payload by its `site` and `charger` fields.
    fn matches_json(&self, data: &str) -> bool {
        if self.is_all() {
            return true;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            return false;
        };
        let site = v.get("site").and_then(|s| s.as_str()).unwrap_or("");
        self.matches_ids(site, v.get("charger").and_then(|s| s.as_str()))
    }
}

async fn events(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    let given = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(q.last_event_id);
    let resume = match given.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => return bad_request("last_event_id: expected a non-negative integer"),
        },
    };
    let filter = Filter {
        site: q.site.filter(|s| !s.is_empty()),
        charger: q.charger.filter(|s| !s.is_empty()),
    };
    // Subscribe first: whatever commits from now on reaches us through the broadcast.
    let rx = st.live.tx.subscribe();
    let dir = st.data_dir.clone();
    let last = match resume {
        Some(n) => n,
        // A fresh client wants what happens from now on: start after the newest stored
        // event (anything the broadcast still holds below it is skipped).
        None => match blocking(dir.clone(), max_seq).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "events stream: store unavailable");
                return (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({"error": "store unavailable"})),
                )
                    .into_response();
            }
        },
    };
    let stream = EventStream {
        live: st.live.clone(),
        rx,
        dir,
        filter,
        last_sent: last,
        replaying: resume.is_some(),
        queue: VecDeque::new(),
        snapshot_due: true,
    };
    Sse::new(stream.into_stream())
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response()
}

async fn blocking<T: Send + 'static>(
    dir: PathBuf,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || {
        let conn = store::open_reader(&dir).map_err(|e| e.to_string())?;
        f(&conn).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

fn max_seq(conn: &rusqlite::Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
}

struct EventStream {
    live: Arc<Live>,
    rx: broadcast::Receiver<LiveItem>,
    dir: PathBuf,
    filter: Filter,
    /// The highest event sequence sent (or skipped as already known to the client).
    last_sent: i64,
    /// Reading the store until it has nothing after `last_sent`.
    replaying: bool,
    queue: VecDeque<LiveItem>,
    snapshot_due: bool,
}

impl EventStream {
    fn into_stream(mut self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        async_stream::stream! {
            loop {
                if self.snapshot_due {
                    self.snapshot_due = false;
                    self.push_snapshot();
                }
                while let Some(item) = self.queue.pop_front() {
                    yield Ok(to_sse(&item));
                }
                if self.replaying {
                    match self.replay_page().await {
                        Ok(()) => continue,
                        Err(e) => {
                            // Ending the stream makes the browser reconnect with
                            // Last-Event-ID, which resumes exactly here.
                            tracing::warn!(error = %e, "events stream: replay failed");
                            break;
                        }
                    }
                }
                match self.rx.recv().await {
                    Ok(item) => {
                        if let Some(seq) = item.seq {
                            if seq <= self.last_sent {
                                continue;
                            }
                            self.last_sent = seq;
                        }
                        if self.filter.matches_json(&item.data) {
                            yield Ok(to_sse(&item));
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(skipped = n, "events stream lagged; resyncing from the store");
                        self.replaying = true;
                        self.snapshot_due = true;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        }
    }

    /// Queues the next page of stored events after `last_sent`; the last page ends replay.
    async fn replay_page(&mut self) -> Result<(), String> {
        let after = self.last_sent;
        let page = blocking(self.dir.clone(), move |c| {
            store::events_after(c, after, PAGE)
        })
        .await?;
        if page.len() < PAGE {
            self.replaying = false;
        }
        for e in page {
            self.last_sent = self.last_sent.max(e.seq);
            let item = LiveItem {
                seq: Some(e.seq),
                kind: e.kind,
                data: e.payload,
            };
            if self.filter.matches_json(&item.data) {
                self.queue.push_back(item);
            }
        }
        Ok(())
    }

    fn push_snapshot(&mut self) {
        let snap = self.live.snapshot();
        for c in snap.charger_values() {
            if !self.filter.matches_ids(&c.site, Some(&c.charger)) {
                continue;
            }
            self.queue.push_back(LiveItem {
                seq: None,
                kind: "charger_state".into(),
                data: charger_json_text(c),
            });
        }
        // Zones belong to a site, not a bay: a charger filter leaves them out.
        if self.filter.charger.is_none() {
            for z in snap.zones.values() {
                if !self.filter.matches_ids(&z.site, None) {
                    continue;
                }
                self.queue.push_back(LiveItem {
                    seq: None,
                    kind: "lounge_state".into(),
                    data: zone_json_text(z),
                });
            }
        }
    }
}

fn to_sse(item: &LiveItem) -> SseEvent {
    let e = SseEvent::default().event(&item.kind).data(&item.data);
    match item.seq {
        Some(seq) => e.id(seq.to_string()),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matches_site_and_charger_fields() {
        let all = Filter::default();
        assert!(all.matches_json("not even json"));
        let bay = Filter {
            site: Some("milano".into()),
            charger: Some("hpc-3".into()),
        };
        assert!(bay.matches_json(r#"{"site":"milano","charger":"hpc-3","kind":"x"}"#));
        assert!(!bay.matches_json(r#"{"site":"milano","charger":"hpc-4"}"#));
        assert!(!bay.matches_json(r#"{"site":"milano","zone":"lounge"}"#));
        assert!(!bay.matches_json("garbage"));
        let site = Filter {
            site: Some("milano".into()),
            charger: None,
        };
        assert!(site.matches_json(r#"{"site":"milano","zone":"lounge"}"#));
        assert!(!site.matches_json(r#"{"site":"roma","zone":"lounge"}"#));
    }
}
