//! The tables this module owns and the outbox writes made in the commit transaction.

use rusqlite::{params, Connection};

use super::link::decode_events;
use crate::domain::event::Event;

/// Run by the store at open (idempotent). `guests.address`/`name` are the personal data;
/// the outbox keeps only the event, and messages are rendered at send time.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS guests (
        guest_id   TEXT PRIMARY KEY,
        token_hash TEXT UNIQUE,
        site       TEXT NOT NULL,
        charger    TEXT,
        id_tag     TEXT,
        channel    TEXT NOT NULL,
        address    TEXT,
        name       TEXT,
        lang       TEXT NOT NULL,
        events     TEXT NOT NULL,
        source     TEXT NOT NULL,
        state      TEXT NOT NULL,
        dedup_key  TEXT UNIQUE,
        created_ms INTEGER NOT NULL,
        ended_ms   INTEGER
    )",
    "CREATE INDEX IF NOT EXISTS guests_pending ON guests (site, charger, state)",
    "CREATE INDEX IF NOT EXISTS guests_tag ON guests (site, id_tag, state)",
    "CREATE TABLE IF NOT EXISTS guest_sessions (
        guest_id    TEXT NOT NULL,
        session_key TEXT NOT NULL,
        bound_ms    INTEGER NOT NULL,
        PRIMARY KEY (guest_id, session_key)
    )",
    "CREATE INDEX IF NOT EXISTS guest_sessions_key ON guest_sessions (session_key)",
    "CREATE TABLE IF NOT EXISTS notifications (
        id          INTEGER PRIMARY KEY,
        event_id    TEXT NOT NULL,
        guest_id    TEXT NOT NULL,
        channel     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        site        TEXT NOT NULL,
        event_ts    INTEGER NOT NULL,
        event_json  TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        due_at      INTEGER NOT NULL,
        lease_until INTEGER,
        attempts    INTEGER NOT NULL DEFAULT 0,
        status      TEXT NOT NULL DEFAULT 'pending',
        last_error  TEXT,
        done_ms     INTEGER,
        UNIQUE (event_id, guest_id, channel)
    )",
    "CREATE INDEX IF NOT EXISTS notifications_due ON notifications (status, channel, due_at)",
    "CREATE TABLE IF NOT EXISTS notification_attempts (
        id              INTEGER PRIMARY KEY,
        notification_id INTEGER NOT NULL,
        attempt         INTEGER NOT NULL,
        started_ms      INTEGER NOT NULL,
        finished_ms     INTEGER NOT NULL,
        outcome         TEXT NOT NULL,
        status_code     INTEGER,
        error           TEXT
    )",
    "CREATE INDEX IF NOT EXISTS notification_attempts_n ON notification_attempts (notification_id)",
];

/// Applies [`MIGRATIONS`] (the lead's store does the same at open).
pub(crate) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for m in MIGRATIONS {
        conn.execute(m, [])?;
    }
    Ok(())
}

/// Queues `event` for every guest bound to `session_key` and subscribed to its kind. Call it
/// inside the commit transaction that records the event; idempotent per (event, guest,
/// channel). Events outside a session (lounge, charger offline) reach no guest. Returns the
/// number of notifications queued.
pub fn enqueue_for_event(
    conn: &Connection,
    event: &Event,
    session_key: Option<&str>,
    now_ms: i64,
) -> rusqlite::Result<usize> {
    let Some(sk) = session_key.filter(|s| !s.is_empty()) else {
        return Ok(0);
    };
    let guests: Vec<(String, String, String)> = {
        let mut st = conn.prepare_cached(
            "SELECT g.guest_id, g.channel, g.events FROM guests g
             JOIN guest_sessions s ON s.guest_id = g.guest_id
             WHERE s.session_key = ?1 AND g.address IS NOT NULL",
        )?;
        let rows = st.query_map(params![sk], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut queued = 0;
    let mut event_json: Option<String> = None;
    for (guest_id, channel, events) in guests {
        if !decode_events(&events).contains(&event.kind) {
            continue;
        }
        let json = match &event_json {
            Some(j) => j.clone(),
            None => {
                let j = serde_json::to_string(event)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                event_json = Some(j.clone());
                j
            }
        };
        queued += conn.execute(
            "INSERT OR IGNORE INTO notifications
                 (event_id, guest_id, channel, kind, site, event_ts, event_json, created_ms, due_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                event.event_id,
                guest_id,
                channel,
                event.kind.as_str(),
                event.site,
                event.ts,
                json,
                now_ms,
            ],
        )?;
    }
    Ok(queued)
}
