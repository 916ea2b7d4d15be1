//! The delivery worker: claims due outbox rows per channel, delivers them with bounded
//! concurrency per channel, and records every attempt and the final outcome.
//!
//! One worker per database is assumed (the daemon starts one): at start it clears the leases
//! a previous, killed worker left, so its in-flight rows are retried at once. A success is
//! recorded right after the receiver acknowledged; a crash between the two re-sends with the
//! same `Idempotency-Key` (at-least-once), a recorded success is never re-sent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use super::channel::{Deliver, DeliveryError, MqttPublish, Outgoing};
use super::email::Email;
use super::link::delete_guest;
use super::mqtt::Mqtt;
use super::ntfy::Ntfy;
use super::outbox::migrate;
use super::templates::Templates;
use super::webhook::Webhook;
use super::{Channel, Lang, NotifyConfig, Outcome, PENDING_LINK_TTL};
use crate::domain::event::Event;
use crate::outputs::timeseries::Point;
use crate::util::secret::Redacted;
use crate::util::time::now_ms;

/// How often the retention sweep runs (also once at start).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Upper bound on sleeping between outbox polls, in case a wake-up was missed.
const MAX_IDLE: Duration = Duration::from_secs(2);

struct Shared {
    /// The worker's own connection. A std-style mutex: only taken inside `spawn_blocking`,
    /// never across an `.await`.
    db: Mutex<Connection>,
    cfg: NotifyConfig,
    templates: Templates,
    channels: HashMap<Channel, Arc<dyn Deliver>>,
    points: Option<flume::Sender<Point>>,
}

/// A claimed notification, ready to send.
struct Job {
    id: i64,
    channel: Channel,
    event: Event,
    guest_id: String,
    address: Redacted<String>,
    lang: Lang,
    name: Option<Redacted<String>>,
    attempts: u32,
    created_ms: i64,
}

/// A notification that reached its final outcome (for metrics and the point).
struct Finished {
    site: String,
    channel: Channel,
    kind: String,
    outcome: Outcome,
    attempts: u32,
    event_ts: i64,
    done_ms: i64,
}

/// Runs until `shutdown` turns true, then finishes the attempts in flight and returns;
/// undelivered notifications stay in the outbox for the next start. `wake` is notified by
/// the commit thread after a commit that queued notifications.
pub async fn run_worker(
    cfg: NotifyConfig,
    db_path: PathBuf,
    wake: Arc<Notify>,
    mqtt: Option<Arc<dyn MqttPublish>>,
    points: Option<flume::Sender<Point>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let conn = loop {
        match open_db(&db_path) {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "notify: cannot open the store, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let templates = match Templates::load(cfg.templates_dir.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "notify: bad template override, using the built-in templates");
            Templates::builtin()
        }
    };
    let channels = build_channels(&cfg, mqtt);
    let shared = Arc::new(Shared {
        db: Mutex::new(conn),
        cfg,
        templates,
        channels,
        points,
    });
    if let Err(e) = db(&shared, |c| {
        c.execute(
            "UPDATE notifications SET lease_until = NULL WHERE status = 'pending'",
            [],
        )
    })
    .await
    {
        tracing::error!(error = %e, "notify: clearing leases failed");
    }

    let concurrency = shared.cfg.per_channel_concurrency.max(1);
    let sems: HashMap<Channel, Arc<Semaphore>> = Channel::ALL
        .into_iter()
        .map(|c| (c, Arc::new(Semaphore::new(concurrency))))
        .collect();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut next_sweep = tokio::time::Instant::now();
    // Contacts were deleted and the log may still hold pages from before: when it is
    // next due to be cut to nothing (see `truncate_log`).
    let mut truncate_due: Option<tokio::time::Instant> = None;

    loop {
        if *shutdown.borrow() {
            break;
        }
        if tokio::time::Instant::now() >= next_sweep {
            let s = shared.clone();
            match db(&shared, move |c| retention_sweep(c, &s.cfg, now_ms())).await {
                Ok(n) if n > 0 => {
                    tracing::info!(guests = n, "notify: retention sweep deleted guest contacts");
                    truncate_due = Some(tokio::time::Instant::now());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "notify: retention sweep failed"),
            }
            next_sweep = tokio::time::Instant::now()
                + SWEEP_EVERY.min(shared.cfg.retention.max(Duration::from_secs(1)));
        }
        if truncate_due.is_some_and(|t| tokio::time::Instant::now() >= t) {
            truncate_due = match db(&shared, truncate_log).await {
                Ok(true) => None,
                other => {
                    tracing::debug!(
                        ?other,
                        "notify: log not cut yet after the sweep; again in a minute"
                    );
                    Some(tokio::time::Instant::now() + Duration::from_secs(60))
                }
            };
        }

        let now = now_ms();
        let mut open_channels = Vec::new();
        for ch in Channel::ALL {
            let Some(sem) = sems.get(&ch) else { continue };
            let free = sem.available_permits();
            if free == 0 {
                continue;
            }
            let deliverable = shared.channels.contains_key(&ch);
            // An unavailable channel's rows only wait to expire: the idle poll finds them,
            // counting them as due would spin.
            if deliverable {
                open_channels.push(ch);
            }
            let s = shared.clone();
            let claimed = db(&shared, move |c| {
                claim(c, &s.cfg, ch, free, now, deliverable)
            })
            .await;
            let (jobs, finished) = match claimed {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, channel = ch.as_str(), "notify: claiming failed");
                    continue;
                }
            };
            for f in finished {
                report(&shared, &f).await;
            }
            for job in jobs {
                let Ok(permit) = sem.clone().try_acquire_owned() else {
                    break;
                };
                let s = shared.clone();
                tasks.spawn(async move {
                    attempt(&s, job).await;
                    drop(permit);
                });
            }
        }

        let until = {
            let chans: Vec<&'static str> = open_channels.iter().map(|c| c.as_str()).collect();
            match db(&shared, move |c| next_due(c, &chans)).await {
                Ok(Some(t)) => Duration::from_millis((t - now_ms()).max(0) as u64).min(MAX_IDLE),
                _ => MAX_IDLE,
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(until) => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => {}
        }
    }
    // Finish the attempts in flight (each bounded by attempt_timeout); the rest stays queued.
    while tasks.join_next().await.is_some() {}
    tracing::info!("notify: worker stopped");
}

fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )?;
    crate::store::wait_briefly_when_busy(&c)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    crate::store::no_auto_checkpoint(&c)?;
    // Deleted guest contacts are overwritten in the file, not just unlinked from the b-tree.
    c.pragma_update(None, "secure_delete", "ON")?;
    migrate(&c)?;
    Ok(c)
}

fn build_channels(
    cfg: &NotifyConfig,
    mqtt: Option<Arc<dyn MqttPublish>>,
) -> HashMap<Channel, Arc<dyn Deliver>> {
    let mut m: HashMap<Channel, Arc<dyn Deliver>> = HashMap::new();
    let t = cfg.attempt_timeout;
    if let Some(w) = &cfg.webhook {
        match Webhook::new(w.clone(), t) {
            Ok(d) => {
                m.insert(Channel::Webhook, Arc::new(d));
            }
            Err(e) => tracing::error!(error = %e, "notify: webhook channel unavailable"),
        }
    }
    if let Some(n) = &cfg.ntfy {
        match Ntfy::new(n.clone(), t) {
            Ok(d) => {
                m.insert(Channel::Ntfy, Arc::new(d));
            }
            Err(e) => tracing::error!(error = %e, "notify: ntfy channel unavailable"),
        }
    }
    if let Some(e) = &cfg.email {
        match Email::new(e, t) {
            Ok(d) => {
                m.insert(Channel::Email, Arc::new(d));
            }
            Err(e) => tracing::error!(error = %e, "notify: email channel unavailable"),
        }
    }
    match (cfg.mqtt_enabled, mqtt) {
        (true, Some(client)) => {
            m.insert(
                Channel::Mqtt,
                Arc::new(Mqtt::new(cfg.mqtt_prefix.clone(), client)),
            );
        }
        (true, None) => tracing::warn!("notify: mqtt channel enabled but no client given"),
        _ => {}
    }
    m
}

/// Runs `f` on the worker's connection off the async threads (SQLite may wait on the
/// commit thread's write lock for up to the busy timeout).
async fn db<T, F>(shared: &Arc<Shared>, f: F) -> rusqlite::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
{
    let s = shared.clone();
    match tokio::task::spawn_blocking(move || {
        let conn = s.db.lock();
        f(&conn)
    })
    .await
    {
        Ok(r) => r,
        Err(e) => Err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))),
    }
}

fn lease_ms(cfg: &NotifyConfig) -> i64 {
    (cfg.attempt_timeout * 3 + Duration::from_secs(30)).as_millis() as i64
}

fn max_age_ms(cfg: &NotifyConfig) -> i64 {
    cfg.max_age.as_millis() as i64
}

/// Claims up to `limit` due rows of `channel` (leasing them), and finishes on the spot the
/// ones that can no longer be delivered (too old, guest gone, unreadable). For a channel
/// that is not available only the expiry applies.
fn claim(
    conn: &Connection,
    cfg: &NotifyConfig,
    channel: Channel,
    limit: usize,
    now: i64,
    deliverable: bool,
) -> rusqlite::Result<(Vec<Job>, Vec<Finished>)> {
    let tx = crate::store::write_tx(conn)?;
    let expire_before = now - max_age_ms(cfg);
    let rows: Vec<ClaimRow> = {
        let mut st = tx.prepare_cached(
            "SELECT n.id, n.guest_id, n.kind, n.site, n.event_ts, n.event_json, n.created_ms,
                    n.attempts, g.address, g.lang, g.name
             FROM notifications n LEFT JOIN guests g ON g.guest_id = n.guest_id
             WHERE n.status = 'pending' AND n.channel = ?1 AND n.due_at <= ?2
               AND (n.lease_until IS NULL OR n.lease_until <= ?2)
               AND (?4 OR n.created_ms <= ?5)
             ORDER BY n.due_at LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![
                channel.as_str(),
                now,
                limit as i64,
                deliverable,
                expire_before
            ],
            |r| {
                Ok(ClaimRow {
                    id: r.get(0)?,
                    guest_id: r.get(1)?,
                    kind: r.get(2)?,
                    site: r.get(3)?,
                    event_ts: r.get(4)?,
                    event_json: r.get(5)?,
                    created_ms: r.get(6)?,
                    attempts: r.get(7)?,
                    address: r.get(8)?,
                    lang: r.get(9)?,
                    name: r.get(10)?,
                })
            },
        )?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut jobs = Vec::new();
    let mut finished = Vec::new();
    for row in rows {
        let fin = |outcome: Outcome| Finished {
            site: row.site.clone(),
            channel,
            kind: row.kind.clone(),
            outcome,
            attempts: row.attempts,
            event_ts: row.event_ts,
            done_ms: now,
        };
        let terminal = if row.created_ms <= expire_before {
            Some((Outcome::Expired, "max age reached"))
        } else if row.address.is_none() {
            Some((Outcome::Failed, "guest unlinked or deleted"))
        } else {
            None
        };
        let event = serde_json::from_str::<Event>(&row.event_json).ok();
        let terminal = terminal.or(event
            .is_none()
            .then_some((Outcome::Failed, "unreadable event")));
        if let Some((outcome, why)) = terminal {
            tx.execute(
                "UPDATE notifications SET status = ?2, done_ms = ?3, last_error = ?4,
                        lease_until = NULL WHERE id = ?1",
                params![row.id, outcome.as_str(), now, why],
            )?;
            finished.push(fin(outcome));
            continue;
        }
        let (Some(event), Some(address)) = (event, row.address) else {
            continue;
        };
        tx.execute(
            "UPDATE notifications SET lease_until = ?2 WHERE id = ?1",
            params![row.id, now + lease_ms(cfg)],
        )?;
        jobs.push(Job {
            id: row.id,
            channel,
            event,
            guest_id: row.guest_id,
            address: Redacted::new(address),
            lang: row
                .lang
                .as_deref()
                .and_then(Lang::parse)
                .unwrap_or_default(),
            name: row.name.map(Redacted::new),
            attempts: row.attempts,
            created_ms: row.created_ms,
        });
    }
    tx.commit()?;
    Ok((jobs, finished))
}

struct ClaimRow {
    id: i64,
    guest_id: String,
    kind: String,
    site: String,
    event_ts: i64,
    event_json: String,
    created_ms: i64,
    attempts: u32,
    address: Option<String>,
    lang: Option<String>,
    name: Option<String>,
}

/// When the next row of one of `channels` becomes claimable.
fn next_due(conn: &Connection, channels: &[&str]) -> rusqlite::Result<Option<i64>> {
    if channels.is_empty() {
        return Ok(None);
    }
    let list = channels
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(",");
    conn.query_row(
        &format!(
            "SELECT MIN(MAX(due_at, COALESCE(lease_until, 0))) FROM notifications
             WHERE status = 'pending' AND channel IN ({list})"
        ),
        [],
        |r| r.get(0),
    )
}

/// One delivery attempt, then its record.
async fn attempt(shared: &Arc<Shared>, job: Job) {
    let cfg = &shared.cfg;
    let started = now_ms();
    let (site, charger) = (
        job.event.site.clone(),
        job.event.charger.clone().unwrap_or_default(),
    );
    let bay_url = cfg.bay_url(&site, &charger);
    let message = shared.templates.render(
        job.lang,
        &job.event,
        job.name.as_ref().map(|n| n.expose().as_str()),
        &bay_url,
    );
    let out = Outgoing {
        event: job.event.clone(),
        guest_id: job.guest_id.clone(),
        address: job.address.clone(),
        lang: job.lang,
        message,
        bay_url,
    };
    let result = match shared.channels.get(&job.channel) {
        Some(d) => match tokio::time::timeout(cfg.attempt_timeout, d.deliver(&out)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Retry {
                reason: "timeout".into(),
                status: None,
                retry_after: None,
            }),
        },
        None => Err(DeliveryError::Permanent {
            reason: "channel not configured".into(),
            status: None,
        }),
    };
    let finished_ms = now_ms();
    let attempt_no = job.attempts + 1;
    let (outcome, due_at) = match &result {
        Ok(()) => (Some(Outcome::Delivered), None),
        Err(DeliveryError::Permanent { .. }) => (Some(Outcome::Failed), None),
        Err(DeliveryError::Retry { .. }) if attempt_no >= cfg.max_attempts => {
            (Some(Outcome::Failed), None)
        }
        Err(DeliveryError::Retry { retry_after, .. }) => {
            let delay = backoff(cfg, attempt_no, *retry_after);
            // Never later than the expiry: the row is then claimed once more and expired.
            let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            let due = finished_ms
                .saturating_add(delay_ms)
                .min(job.created_ms.saturating_add(max_age_ms(cfg)));
            (None, Some(due))
        }
    };
    let error = result
        .as_ref()
        .err()
        .map(|e| scrub(e.reason(), job.address.expose()));
    let status_code = result.as_ref().err().and_then(DeliveryError::status);
    let attempt_outcome = match (outcome, &result) {
        (Some(o), _) => o.as_str(),
        (None, _) => "retry",
    };
    let id = job.id;
    let rec = {
        let error = error.clone();
        db(shared, move |c| {
            let tx = crate::store::write_tx(c)?;
            tx.execute(
                "INSERT INTO notification_attempts
                    (notification_id, attempt, started_ms, finished_ms, outcome, status_code, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    attempt_no,
                    started,
                    finished_ms,
                    attempt_outcome,
                    status_code,
                    error
                ],
            )?;
            match (outcome, due_at) {
                (Some(o), _) => tx.execute(
                    "UPDATE notifications SET status = ?2, attempts = ?3, done_ms = ?4,
                            last_error = ?5, lease_until = NULL WHERE id = ?1",
                    params![id, o.as_str(), attempt_no, finished_ms, error],
                )?,
                (None, due) => tx.execute(
                    "UPDATE notifications SET attempts = ?2, due_at = ?3, last_error = ?4,
                            lease_until = NULL WHERE id = ?1",
                    params![id, attempt_no, due.unwrap_or(finished_ms), error],
                )?,
            };
            tx.commit()
        })
        .await
    };
    if let Err(e) = rec {
        // The lease runs out and the row is tried again: at-least-once, same idempotency key.
        tracing::error!(notification = id, error = %e, "notify: recording the attempt failed");
        return;
    }
    match outcome {
        Some(o) => {
            tracing::info!(
                notification = id,
                guest = %job.guest_id,
                event_id = %job.event.event_id,
                kind = job.event.kind.as_str(),
                channel = job.channel.as_str(),
                outcome = o.as_str(),
                attempts = attempt_no,
                error = error.as_deref().unwrap_or(""),
                "notification finished"
            );
            report(
                shared,
                &Finished {
                    site,
                    channel: job.channel,
                    kind: job.event.kind.as_str().to_string(),
                    outcome: o,
                    attempts: attempt_no,
                    event_ts: job.event.ts,
                    done_ms: finished_ms,
                },
            )
            .await;
        }
        None => tracing::warn!(
            notification = id,
            guest = %job.guest_id,
            event_id = %job.event.event_id,
            channel = job.channel.as_str(),
            attempts = attempt_no,
            error = error.as_deref().unwrap_or(""),
            retry_in_ms = due_at.unwrap_or(finished_ms) - finished_ms,
            "notification attempt failed, will retry"
        ),
    }
}

/// Exponential backoff with full jitter, never sooner than the receiver's `Retry-After`.
fn backoff(cfg: &NotifyConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = cfg
        .retry_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(cfg.retry_max);
    let jittered = Duration::from_millis(rand::thread_rng().gen_range(0..=exp.as_millis() as u64));
    match retry_after {
        Some(ra) => jittered.max(ra),
        None => jittered,
    }
}

/// Error texts come from our own code, but a receiver's words could still carry the
/// address: it is masked before anything is stored or logged.
fn scrub(reason: &str, address: &str) -> String {
    if address.is_empty() {
        return reason.to_string();
    }
    reason.replace(address, "***")
}

async fn report(shared: &Arc<Shared>, f: &Finished) {
    metrics::counter!(
        "evlounge_notifications_total",
        "channel" => f.channel.as_str(),
        "outcome" => f.outcome.as_str()
    )
    .increment(1);
    if f.outcome != Outcome::Delivered {
        tracing::info!(
            channel = f.channel.as_str(),
            kind = %f.kind,
            outcome = f.outcome.as_str(),
            "notification finished"
        );
    }
    let Some(tx) = &shared.points else { return };
    let latency = (f.outcome == Outcome::Delivered).then(|| (f.done_ms - f.event_ts) as f64);
    let p = Point::new("notification", f.done_ms)
        .tag("site", f.site.clone())
        .tag("channel", f.channel.as_str())
        .tag("kind", f.kind.clone())
        .tag("outcome", f.outcome.as_str())
        .field("latency_ms", latency)
        .field("attempts", Some(f64::from(f.attempts)));
    // Bounded: a stalled time-series writer costs this point, never the delivery loop.
    let why = match tokio::time::timeout(Duration::from_secs(2), tx.send_async(p)).await {
        Ok(Ok(())) => return,
        Ok(Err(_)) => "the commit thread has stopped",
        Err(_) => "the time-series channel is full",
    };
    metrics::counter!("evlounge_tsdb_dropped_points_total", "reason" => "notify_channel")
        .increment(1);
    tracing::warn!(why, "notify: notification point dropped");
}

/// Copies the log into the database and cuts it to nothing, so that no page from before a
/// retention delete stays in it. Such a checkpoint holds new writers back while it waits
/// for readers: it waits 50 ms at most (the commit thread must not stall behind it), and
/// says whether it got through; the worker tries again a minute later if not.
fn truncate_log(c: &Connection) -> rusqlite::Result<bool> {
    c.busy_timeout(Duration::from_millis(50))?;
    let busy = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    crate::store::wait_briefly_when_busy(c)?;
    Ok(busy? == 0)
}

/// How long past the retention a link bound to a session that never ended (a charger that
/// never reported the unplug) keeps its contact.
pub const OPEN_SESSION_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Deletes guest contacts older than the retention (counted from the link's end; for a
/// link still bound to an open session, from its creation plus [`OPEN_SESSION_GRACE`], so a
/// short retention does not take a guest's "your car is ready" away mid-session; for a card
/// link, from its creation), the outbox rows and attempts of that age, and lapses charger
/// links that waited too long for a session. Returns the number of guests deleted.
pub fn retention_sweep(conn: &Connection, cfg: &NotifyConfig, now: i64) -> rusqlite::Result<usize> {
    let cutoff = now - cfg.retention.as_millis() as i64;
    let tx = crate::store::write_tx(conn)?;
    tx.execute(
        "UPDATE guests SET state = 'expired', ended_ms = created_ms + ?2
         WHERE state = 'pending' AND created_ms < ?1",
        params![
            now - PENDING_LINK_TTL.as_millis() as i64,
            PENDING_LINK_TTL.as_millis() as i64
        ],
    )?;
    let old: Vec<String> = {
        let mut st = tx.prepare(
            "SELECT guest_id FROM guests WHERE
               CASE WHEN state = 'bound' AND ended_ms IS NULL THEN created_ms + ?2
                    ELSE COALESCE(ended_ms, created_ms) END < ?1",
        )?;
        let rows = st.query_map(
            params![cutoff, OPEN_SESSION_GRACE.as_millis() as i64],
            |r| r.get(0),
        )?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for gid in &old {
        delete_guest(&tx, gid)?;
    }
    tx.execute(
        "DELETE FROM notification_attempts WHERE notification_id IN
           (SELECT id FROM notifications WHERE created_ms < ?1)",
        params![cutoff],
    )?;
    tx.execute(
        "DELETE FROM notifications WHERE created_ms < ?1",
        params![cutoff],
    )?;
    tx.commit()?;
    Ok(old.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_honours_retry_after() {
        let mut cfg = NotifyConfig::new("http://x".parse().unwrap());
        cfg.retry_base = Duration::from_secs(5);
        cfg.retry_max = Duration::from_secs(60);
        for attempt in 1..40 {
            let d = backoff(&cfg, attempt, None);
            assert!(d <= Duration::from_secs(60));
            if attempt == 1 {
                assert!(d <= Duration::from_secs(5));
            }
        }
        assert!(backoff(&cfg, 1, Some(Duration::from_secs(120))) >= Duration::from_secs(120));
    }

    #[test]
    fn with_the_defaults_an_outage_is_retried_until_max_age_not_cut_short_by_the_count() {
        let cfg = NotifyConfig::new("http://x".parse().unwrap());
        // The mean of full jitter is half the window; the sum over the attempts' delays.
        let mean_span: Duration = (1..cfg.max_attempts)
            .map(|a| {
                cfg.retry_base
                    .saturating_mul(1u32 << (a - 1).min(20))
                    .min(cfg.retry_max)
                    / 2
            })
            .sum();
        assert!(
            mean_span >= cfg.max_age + cfg.max_age / 2,
            "{mean_span:?} of retries for a max age of {:?}",
            cfg.max_age
        );
    }

    #[test]
    fn scrub_masks_the_address() {
        assert_eq!(
            scrub("550 <anna@x.it> unknown", "anna@x.it"),
            "550 <***> unknown"
        );
    }
}
