//! The embedded store (SQLite, WAL): sessions, events, resumable machine state, and the
//! tables of the notification outbox. One writer (the commit thread) plus readers.

pub mod queries;
pub mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::domain::event::Event;
use crate::domain::session::SessionRecord;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Json(#[from] serde_json::Error),
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
}

/// The schema, in order. `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    session_key TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    charger TEXT NOT NULL,
    session_id TEXT NOT NULL,
    id_tag TEXT,
    vehicle TEXT,
    started INTEGER NOT NULL,
    charging_started INTEGER,
    completed INTEGER,
    ended INTEGER,
    outcome TEXT,
    energy_kwh REAL NOT NULL DEFAULT 0,
    peak_kw REAL NOT NULL DEFAULT 0,
    avg_kw REAL,
    soc_start REAL,
    soc_end REAL,
    target_soc_pct REAL,
    time_to_complete_s REAL,
    idle_s REAL
);
CREATE INDEX IF NOT EXISTS sessions_by_charger ON sessions(site, charger, started);
CREATE INDEX IF NOT EXISTS sessions_by_started ON sessions(started);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    ts INTEGER NOT NULL,
    site TEXT NOT NULL,
    subject TEXT NOT NULL,
    session_key TEXT,
    payload TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_unpublished ON events(published, seq);
CREATE TABLE IF NOT EXISTS charger_state (
    site TEXT NOT NULL,
    charger TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (site, charger)
);
CREATE TABLE IF NOT EXISTS zone_state (
    site TEXT NOT NULL,
    zone TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (site, zone)
);
"#,
    r#"
-- Statistics over a time range on a store that is never pruned: sessions that overlap it
-- (ended after its start, or still open) and events within it.
CREATE INDEX IF NOT EXISTS sessions_by_ended ON sessions(ended);
CREATE INDEX IF NOT EXISTS events_by_ts ON events(ts);
"#,
];

pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("evlounge.db")
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed (and so acked) batch survives power loss, not only a crash. Group
    // commit keeps the fsyncs to one per batch; the commit thread lowers it to NORMAL for
    // batches that decide nothing (see `FULL_SYNC_EVERY` in `app::processor`).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // What any writer frees is zeroed: a guest row rewritten longer (bound → expired) moves
    // within its page, and the old copy with the contact would otherwise outlive the
    // retention sweep's delete in free space.
    conn.pragma_update(None, "secure_delete", "ON")?;
    no_auto_checkpoint(conn)?;
    wait_briefly_when_busy(conn)?;
    Ok(())
}

/// Waits for a lock held by another connection in short steps (50 µs, then 200 µs; gives
/// up after about 10 s), instead of SQLite's default ladder of 1, 2, 5, 10 … 100 ms sleeps:
/// the lock holders here keep it for a millisecond or two, and with the default a commit
/// that met a held lock slept up to ~30 ms more than needed, with messages queued behind it.
pub fn wait_briefly_when_busy(conn: &Connection) -> rusqlite::Result<()> {
    fn busy(attempt: i32) -> bool {
        const FAST: i32 = 20;
        const LIMIT: i32 = FAST + 50_000;
        if attempt >= LIMIT {
            return false;
        }
        let us = if attempt < FAST { 50 } else { 200 };
        std::thread::sleep(std::time::Duration::from_micros(us));
        true
    }
    conn.busy_handler(Some(busy))
}

/// Checkpoints are the checkpointer's job ([`spawn_checkpointer`]): an automatic one runs
/// inside whichever COMMIT crosses the threshold, copying pages into the database file and
/// fsyncing it, and a message waiting behind that commit waits for all of it.
pub fn no_auto_checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // After a checkpoint has reset the log, its file is cut back to this size.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    Ok(())
}

/// How often the checkpointer runs; sooner when the log has grown past `CHECKPOINT_PAGES`.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const CHECKPOINT_PAGES: i64 = 4096;

/// Runs WAL checkpoints on their own connection and thread until `stop` is dropped or
/// signalled, then runs a last one. PASSIVE: never waits for, nor blocks, the writers.
pub fn spawn_checkpointer(
    data_dir: &Path,
    stop: std::sync::mpsc::Receiver<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn_checkpointer_watching(data_dir, stop, Arc::default())
}

/// Pages in the log above which the writer checkpoints once itself (see [`WalWatch`]).
pub const WAL_RESET_PAGES: i64 = 16_384;

/// The log's size in pages as the checkpointer last saw it. A PASSIVE checkpoint never
/// resets the log; the next writer does, but only when the log was checkpointed to its end
/// before it began, which a writer committing every few ms seldom lets happen. So when the
/// log has grown past [`WAL_RESET_PAGES`], the writer runs one PASSIVE checkpoint right
/// after its own commit (little is left to copy by then), and its next transaction starts
/// the log over.
pub type WalWatch = Arc<std::sync::atomic::AtomicI64>;

/// [`spawn_checkpointer`], reporting the log's size to `pages`.
pub fn spawn_checkpointer_watching(
    data_dir: &Path,
    stop: std::sync::mpsc::Receiver<()>,
    pages: WalWatch,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // Opened here, so a checkpointer that cannot start stops the daemon's start (with every
    // connection's automatic checkpoints off, nothing else would bound the log).
    let conn = Connection::open(db_path(data_dir)).map_err(std::io::Error::other)?;
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            let mut wait = CHECKPOINT_EVERY;
            let mut trimmed = std::time::Instant::now();
            loop {
                let last = !matches!(
                    stop.recv_timeout(wait),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                );
                let started = std::time::Instant::now();
                match checkpoint(&conn) {
                    Ok((log, done)) => {
                        metrics::histogram!("evlounge_checkpoint_seconds")
                            .record(started.elapsed().as_secs_f64());
                        metrics::gauge!("evlounge_wal_pages").set(log as f64);
                        pages.store(log, std::sync::atomic::Ordering::Relaxed);
                        // Still far behind: go again soon.
                        wait = if log - done > CHECKPOINT_PAGES {
                            std::time::Duration::from_millis(50)
                        } else {
                            CHECKPOINT_EVERY
                        };
                    }
                    Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
                }
                if last {
                    break;
                }
                if trimmed.elapsed() >= TRIM_EVERY {
                    trimmed = std::time::Instant::now();
                    crate::util::mem::release_free_memory();
                    tracing::debug!(
                        ms = trimmed.elapsed().as_secs_f64() * 1000.0,
                        "freed heap returned to the OS"
                    );
                }
            }
        })
}

/// How often freed heap goes back to the OS (from the checkpointer's thread).
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One PASSIVE checkpoint: (pages in the log, pages checkpointed).
pub fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })
}

/// Opens (and migrates) the store for writing.
pub fn open(data_dir: &Path) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(data_dir)?;
    let mut conn = Connection::open(db_path(data_dir))?;
    configure(&conn)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// A read-only connection for queries (HTTP).
pub fn open_reader(data_dir: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        db_path(data_dir),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    wait_briefly_when_busy(&conn)?;
    Ok(conn)
}

/// A second read-write connection (outbox and publisher bookkeeping).
pub fn open_writer(data_dir: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(db_path(data_dir))?;
    configure(&conn)?;
    Ok(conn)
}

/// Each module's migrations are numbered on their own (the core's in `user_version`, the
/// notification outbox's in `meta`), so either list can grow without shifting the other.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let core_done: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for sql in MIGRATIONS.iter().skip(core_done.max(0) as usize) {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    let notify = crate::outputs::notify::MIGRATIONS;
    let notify_done: usize = meta_get(&tx, "notify_schema_version")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for sql in notify.iter().skip(notify_done) {
        tx.execute_batch(sql)?;
    }
    meta_set(&tx, "notify_schema_version", &notify.len().to_string())?;
    tx.commit()?;
    Ok(())
}

pub fn upsert_session(tx: &Transaction<'_>, s: &SessionRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO sessions (session_key, site, charger, session_id, id_tag, vehicle, started,
            charging_started, completed, ended, outcome, energy_kwh, peak_kw, avg_kw, soc_start,
            soc_end, target_soc_pct, time_to_complete_s, idle_s)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19)
         ON CONFLICT(session_key) DO UPDATE SET
            session_id=excluded.session_id, id_tag=excluded.id_tag, vehicle=excluded.vehicle,
            charging_started=excluded.charging_started, completed=excluded.completed,
            ended=excluded.ended, outcome=excluded.outcome, energy_kwh=excluded.energy_kwh,
            peak_kw=excluded.peak_kw, avg_kw=excluded.avg_kw, soc_start=excluded.soc_start,
            soc_end=excluded.soc_end, target_soc_pct=excluded.target_soc_pct,
            time_to_complete_s=excluded.time_to_complete_s, idle_s=excluded.idle_s",
    )?
    .execute(params![
        s.session_key,
        s.site,
        s.charger,
        s.session_id,
        s.id_tag,
        s.vehicle,
        s.started,
        s.charging_started,
        s.completed,
        s.ended,
        s.outcome.map(|o| o.as_str()),
        s.energy_kwh,
        s.peak_kw,
        s.avg_kw,
        s.soc_start,
        s.soc_end,
        s.target_soc_pct,
        s.time_to_complete_s,
        s.idle_s,
    ])?;
    Ok(())
}

/// The stored record's `id_tag`: `None` when the session has no record yet.
pub fn stored_id_tag(
    tx: &Transaction<'_>,
    session_key: &str,
) -> rusqlite::Result<Option<Option<String>>> {
    use rusqlite::OptionalExtension;
    tx.prepare_cached("SELECT id_tag FROM sessions WHERE session_key = ?1")?
        .query_row([session_key], |r| r.get(0))
        .optional()
}

/// Records an event; `Some(seq)` when it is new, `None` when its `event_id` was already
/// recorded (a redelivery or replay): the insert decides whether it is published.
pub fn insert_event(
    tx: &Transaction<'_>,
    e: &Event,
    session_key: Option<&str>,
) -> Result<Option<i64>, StoreError> {
    let subject = e.charger.as_deref().or(e.zone.as_deref()).unwrap_or("");
    let payload = serde_json::to_string(&e.to_json())?;
    let n = tx
        .prepare_cached(
            "INSERT INTO events (event_id, kind, ts, site, subject, session_key, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(event_id) DO NOTHING",
        )?
        .execute(params![
            e.event_id,
            e.kind.as_str(),
            e.ts,
            e.site,
            subject,
            session_key,
            payload
        ])?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(tx.last_insert_rowid()))
}

pub fn save_charger_state(
    tx: &Transaction<'_>,
    site: &str,
    charger: &str,
    state_json: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO charger_state (site, charger, state) VALUES (?1, ?2, ?3)
         ON CONFLICT(site, charger) DO UPDATE SET state = excluded.state",
    )?
    .execute(params![site, charger, state_json])?;
    Ok(())
}

pub fn save_zone_state(
    tx: &Transaction<'_>,
    site: &str,
    zone: &str,
    state_json: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO zone_state (site, zone, state) VALUES (?1, ?2, ?3)
         ON CONFLICT(site, zone) DO UPDATE SET state = excluded.state",
    )?
    .execute(params![site, zone, state_json])?;
    Ok(())
}

/// Every saved charger state: (site, charger, json).
pub fn load_charger_states(conn: &Connection) -> rusqlite::Result<Vec<(String, String, String)>> {
    let mut st = conn.prepare("SELECT site, charger, state FROM charger_state")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

pub fn load_zone_states(conn: &Connection) -> rusqlite::Result<Vec<(String, String, String)>> {
    let mut st = conn.prepare("SELECT site, zone, state FROM zone_state")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

pub fn meta_get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

pub fn meta_set(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// An event as stored: its store sequence (SSE ids) and wire payload.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub event_id: String,
    pub kind: String,
    pub site: String,
    pub payload: String,
}

pub fn unpublished_events(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut st = conn.prepare_cached(
        "SELECT seq, event_id, kind, site, payload FROM events WHERE published = 0 ORDER BY seq LIMIT ?1",
    )?;
    let rows = st.query_map([limit as i64], stored_event)?;
    rows.collect()
}

pub fn events_after(
    conn: &Connection,
    seq: i64,
    limit: usize,
) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut st = conn.prepare_cached(
        "SELECT seq, event_id, kind, site, payload FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = st.query_map(params![seq, limit as i64], stored_event)?;
    rows.collect()
}

fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: r.get(0)?,
        event_id: r.get(1)?,
        kind: r.get(2)?,
        site: r.get(3)?,
        payload: r.get(4)?,
    })
}

/// Marks events from `seq` on unpublished again (the broker lost what was in flight).
pub fn unmark_published_from(conn: &Connection, seq: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE events SET published = 0 WHERE seq >= ?1 AND published = 1",
        [seq],
    )
}

pub fn mark_published(conn: &Connection, seqs: &[i64]) -> rusqlite::Result<()> {
    let tx = write_tx(conn)?;
    {
        let mut st = tx.prepare_cached("UPDATE events SET published = 1 WHERE seq = ?1")?;
        for s in seqs {
            st.execute([s])?;
        }
    }
    tx.commit()
}

/// A write transaction that takes the write lock up front (`BEGIN IMMEDIATE`), so under
/// WAL it waits for other writers (busy timeout) instead of failing with "database is
/// locked" when a deferred read would have to upgrade. Inside an open transaction (the
/// commit thread's) it nests as a savepoint.
pub struct WriteTx<'c> {
    conn: &'c Connection,
    nested: bool,
    done: bool,
}

pub fn write_tx(conn: &Connection) -> rusqlite::Result<WriteTx<'_>> {
    let nested = !conn.is_autocommit();
    conn.execute_batch(if nested {
        "SAVEPOINT evlounge_w"
    } else {
        "BEGIN IMMEDIATE"
    })?;
    Ok(WriteTx {
        conn,
        nested,
        done: false,
    })
}

impl WriteTx<'_> {
    pub fn commit(mut self) -> rusqlite::Result<()> {
        self.done = true;
        self.conn.execute_batch(if self.nested {
            "RELEASE evlounge_w"
        } else {
            "COMMIT"
        })
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch(if self.nested {
                "ROLLBACK TO evlounge_w; RELEASE evlounge_w"
            } else {
                "ROLLBACK"
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{event_id, EventKind};

    /// The statistics queries read the range they are asked for, not the whole history.
    #[test]
    fn range_queries_use_an_index_not_a_scan_of_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(dir.path()).unwrap();
        let plan = |sql: &str| -> String {
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = st.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
        };
        for by_site in [false, true] {
            let sessions = plan(&queries::sessions_overlapping_sql(by_site).replace('?', "1"));
            assert!(sessions.contains("sessions_by_ended"), "{sessions}");
            assert!(!sessions.contains("SCAN sessions"), "{sessions}");
            assert!(!sessions.contains("sessions_by_charger"), "{sessions}");
        }
        let events = plan(
            "SELECT site, subject, kind, COUNT(*) FROM events WHERE ts >= 1 AND ts < 2
             GROUP BY site, subject, kind",
        );
        assert!(events.contains("events_by_ts"), "{events}");
    }

    #[test]
    fn event_insert_is_idempotent_by_event_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(dir.path()).unwrap();
        let id = event_id("s", "c", "k", EventKind::ChargingComplete, 1);
        let mut e = Event::new(EventKind::ChargingComplete, 1000, "s", id);
        e.charger = Some("c".into());
        let tx = conn.transaction().unwrap();
        assert_eq!(insert_event(&tx, &e, Some("k")).unwrap(), Some(1));
        assert_eq!(insert_event(&tx, &e, Some("k")).unwrap(), None);
        tx.commit().unwrap();
        assert_eq!(unpublished_events(&conn, 10).unwrap().len(), 1);
        mark_published(&conn, &[1]).unwrap();
        assert!(unpublished_events(&conn, 10).unwrap().is_empty());
        assert_eq!(events_after(&conn, 0, 10).unwrap().len(), 1);
        // reopening migrates nothing twice
        drop(conn);
        let conn = open(dir.path()).unwrap();
        assert_eq!(events_after(&conn, 0, 10).unwrap()[0].event_id, e.event_id);
    }

    #[test]
    fn an_upsert_updates_every_field_but_the_key() {
        use crate::domain::session::{Outcome, SessionRecord};
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(dir.path()).unwrap();
        let mut s = SessionRecord::opened("s", "c", "c-1000".into(), "c-10001000".into(), 1000);
        let tx = conn.transaction().unwrap();
        upsert_session(&tx, &s).unwrap();
        // the charger's own id arrives later (an OCPP transactionId), then the end
        s.session_id = "1842".into();
        s.vehicle = Some("Taycan".into());
        s.ended = Some(5000);
        s.outcome = Some(Outcome::Completed);
        s.energy_kwh = 12.5;
        upsert_session(&tx, &s).unwrap();
        tx.commit().unwrap();
        let rows = queries::sessions(
            &conn,
            &queries::SessionFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(rows, vec![s]);
    }
}
