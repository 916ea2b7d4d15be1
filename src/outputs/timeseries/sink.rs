//! The async writer task: spool → batch → gzip → `POST {url}/api/v2/write`.
//!
//! Plain reqwest, not the `influxdb2` crate: that crate loses the response headers on
//! error (so `Retry-After` cannot be honoured), gzips only a streamed body that cannot be
//! re-sent on retry, has no request timeout by default and sits on reqwest 0.11. Here a
//! batch is compressed once and the same bytes are re-sent until the server decides.
//!
//! "Should we retry?" ([`classify`]) is kept apart from "how long to wait" ([`Backoff`],
//! `Retry-After`), as in Vector's `RetryLogic`.

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};
use url::Url;

use super::spool::{Batch, SpoolReader};
use super::InfluxConfig;

/// Upper bound on one uncompressed request body; `batch_lines` normally binds first.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// A server asking for more than this is treated as asking for this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
const BACKOFF_BASE: Duration = Duration::from_millis(200);

/// What `/readyz` reports as `tsdb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsdbState {
    /// Time series not configured.
    Off,
    Up,
    /// Writes failing for a transient reason; points accumulate in the spool.
    Spooling,
    /// 401/403: the token is wrong. Points are still spooled; retried slowly.
    AuthFailed,
}

impl TsdbState {
    pub fn as_str(self) -> &'static str {
        match self {
            TsdbState::Off => "off",
            TsdbState::Up => "up",
            TsdbState::Spooling => "spooling",
            TsdbState::AuthFailed => "auth_failed",
        }
    }
}

/// Counters mirrored from the metrics, readable without a recorder (tests, status pages).
#[derive(Debug, Default)]
pub struct SinkStats {
    pub points_written: AtomicU64,
    pub points_rejected: AtomicU64,
    pub batches_ok: AtomicU64,
    pub retries: AtomicU64,
}

impl SinkStats {
    pub fn written(&self) -> u64 {
        self.points_written.load(Ordering::Relaxed)
    }
    pub fn rejected(&self) -> u64 {
        self.points_rejected.load(Ordering::Relaxed)
    }
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

/// The server's answer, reduced to what the sink does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// The body itself is at fault (400/413/422): split it, never retry it as is.
    Reject,
    /// 401/403: nothing to do but wait for an operator.
    Auth,
    Retry {
        reason: &'static str,
        after: Option<Duration>,
    },
}

pub fn classify(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Ok,
        400 | 413 | 422 => Verdict::Reject,
        401 | 403 => Verdict::Auth,
        429 => Verdict::Retry {
            reason: "throttled",
            after: retry_after,
        },
        503 => Verdict::Retry {
            reason: "unavailable",
            after: retry_after,
        },
        500..=599 => Verdict::Retry {
            reason: "server_error",
            after: retry_after,
        },
        // 404 (bucket missing), redirects, ...: configuration problems. Dropping the
        // data would be wrong, so keep it spooled and retry with backoff.
        _ => Verdict::Retry {
            reason: "unexpected_status",
            after: retry_after,
        },
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => {
            let at: SystemTime = chrono::DateTime::parse_from_rfc2822(v).ok()?.into();
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(d.min(MAX_RETRY_AFTER))
}

pub use crate::util::backoff::Backoff;

/// Byte offset after the `n`-th line of `body` (lines are `\n`-terminated).
pub fn split_after_lines(body: &[u8], n: usize) -> usize {
    body.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .nth(n.saturating_sub(1))
        .map_or(body.len(), |(i, _)| i + 1)
}

enum Raced<T> {
    Done(T),
    /// Shutdown was requested just now (only for interruptible waits).
    Shutdown,
    /// The drain deadline passed: give up, the spool keeps the rest.
    Deadline,
}

/// Shutdown bookkeeping: once asked to stop, the sink keeps sending until `deadline`.
struct Stop {
    rx: watch::Receiver<bool>,
    deadline: Option<Instant>,
    drain: Duration,
}

impl Stop {
    /// Runs `fut` until it completes or the drain deadline passes. An interruptible wait
    /// (idle, flush timer) also ends when shutdown is first requested, so draining starts
    /// at once; a request in flight is allowed to finish within the deadline.
    async fn run<F: Future>(&mut self, fut: F, interruptible: bool) -> Raced<F::Output> {
        tokio::pin!(fut);
        loop {
            if let Some(d) = self.deadline {
                return tokio::select! {
                    biased;
                    out = &mut fut => Raced::Done(out),
                    _ = sleep_until(d) => Raced::Deadline,
                };
            }
            tokio::select! {
                out = &mut fut => return Raced::Done(out),
                // A dropped sender also means stop: nobody can ask any more.
                _ = self.rx.wait_for(|v| *v) => {
                    self.deadline = Some(Instant::now() + self.drain);
                    if interruptible {
                        return Raced::Shutdown;
                    }
                }
            }
        }
    }
}

/// Rate limit for repetitive warnings.
struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    fn new(every: Duration) -> Self {
        LogLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }
    /// Some(number suppressed since the last allowed one) when a log may go out now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

struct Http {
    client: reqwest::Client,
    url: Url,
    auth: HeaderValue,
}

impl Http {
    async fn send(&self, gz: Bytes) -> (Verdict, String) {
        let resp = self
            .client
            .post(self.url.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_ENCODING, "gzip")
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(gz)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let reason = if e.is_timeout() {
                    "timeout"
                } else {
                    "connection"
                };
                // reqwest errors carry the URL, which holds no secret (the token is a
                // header), but strip it anyway to keep logs short.
                return (
                    Verdict::Retry {
                        reason,
                        after: None,
                    },
                    e.without_url().to_string(),
                );
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let verdict = classify(status, retry_after);
        let detail = if verdict == Verdict::Ok {
            String::new()
        } else {
            let body = resp.bytes().await.unwrap_or_default();
            let mut s = format!("HTTP {status}: ");
            s.push_str(&String::from_utf8_lossy(&body[..body.len().min(300)]));
            s
        };
        (verdict, detail)
    }
}

pub(crate) struct Sink {
    http: Http,
    reader: SpoolReader,
    stop: Stop,
    state: watch::Sender<TsdbState>,
    stats: Arc<SinkStats>,
    batch_lines: usize,
    flush: Duration,
    max_backoff: Duration,
    auth_retry: Duration,
    retry_log: LogLimit,
    poison_log: LogLimit,
}

impl Sink {
    pub(crate) fn new(
        cfg: &InfluxConfig,
        reader: SpoolReader,
        stop: watch::Receiver<bool>,
        state: watch::Sender<TsdbState>,
        stats: Arc<SinkStats>,
    ) -> std::io::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(std::io::Error::other)?;
        let mut auth = HeaderValue::try_from(format!("Token {}", cfg.token)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "influx.token is not a valid header value",
            )
        })?;
        auth.set_sensitive(true);
        Ok(Sink {
            http: Http {
                client,
                url: cfg.write_url(),
                auth,
            },
            reader,
            stop: Stop {
                rx: stop,
                deadline: None,
                drain: cfg.drain_timeout,
            },
            state,
            stats,
            batch_lines: cfg.batch_lines.max(1),
            flush: Duration::from_millis(cfg.flush_ms),
            max_backoff: cfg.max_backoff,
            auth_retry: cfg.auth_retry,
            retry_log: LogLimit::new(Duration::from_secs(10)),
            poison_log: LogLimit::new(Duration::from_secs(10)),
        })
    }

    /// Runs until shutdown has been requested and the spool is drained, or the drain
    /// deadline passes. Whatever is not acknowledged stays on disk for the next start.
    pub(crate) async fn run(mut self) {
        let mut batch = Batch::default();
        // When the oldest unsent record entered the batch: the flush timer starts there.
        let mut first: Option<Instant> = None;
        loop {
            let more = match self
                .reader
                .fill(&mut batch, self.batch_lines, MAX_BODY_BYTES)
            {
                Ok(more) => more,
                Err(e) => {
                    tracing::error!(error = %e, "tsdb spool read failed; retrying");
                    match self.stop.run(sleep(Duration::from_secs(1)), true).await {
                        Raced::Deadline => return,
                        Raced::Done(()) | Raced::Shutdown => continue,
                    }
                }
            };
            if batch.is_empty() {
                // Only skipped corrupt data: retire it.
                if let Some(end) = batch.end.take() {
                    self.ack(end);
                }
            } else if first.is_none() {
                first = Some(Instant::now());
            }
            let due = !batch.is_empty()
                && (more
                    || batch.lines >= self.batch_lines
                    || first.is_some_and(|t| t.elapsed() >= self.flush)
                    || self.stop.deadline.is_some());
            if due {
                if !self.deliver(&batch.body, batch.lines).await {
                    tracing::info!(
                        "tsdb sink stopped before the spool drained; the rest is replayed on next start"
                    );
                    return;
                }
                if let Some(end) = batch.end {
                    self.ack(end);
                }
                batch.clear();
                first = None;
                continue;
            }
            if self.stop.deadline.is_some() && batch.is_empty() {
                return;
            }
            let flush_at = first.map(|t| t + self.flush);
            let reader = &self.reader;
            let wait = async move {
                match flush_at {
                    Some(t) => tokio::select! {
                        _ = reader.wait() => {}
                        _ = sleep_until(t) => {}
                    },
                    None => reader.wait().await,
                }
            };
            if let Raced::Deadline = self.stop.run(wait, true).await {
                return;
            }
        }
    }

    fn ack(&mut self, end: super::spool::Position) {
        if let Err(e) = self.reader.ack(end) {
            // In memory the ack advanced, so nothing is re-sent in this run; after a
            // restart the stale ledger replays a little (idempotent in the TSDB).
            tracing::error!(error = %e, "tsdb spool: writing the ledger failed");
        }
    }

    fn set_state(&self, new: TsdbState) {
        let old = *self.state.borrow();
        if old == new {
            return;
        }
        self.state.send_replace(new);
        match new {
            TsdbState::Up => tracing::info!(from = old.as_str(), "tsdb writes succeeding"),
            TsdbState::Spooling => {
                tracing::warn!("tsdb unreachable; spooling points to disk until it returns")
            }
            TsdbState::AuthFailed => tracing::error!(
                "tsdb rejected the token (401/403): check influx.token; points are spooled meanwhile"
            ),
            TsdbState::Off => {}
        }
    }

    /// Sends one batch, splitting it on rejection. Returns false only when the drain
    /// deadline cut it short (nothing acknowledged then).
    async fn deliver(&mut self, body: &[u8], lines: usize) -> bool {
        let mut backoff = Backoff::new(BACKOFF_BASE, self.max_backoff);
        // Ranges still to send, last = next; halves are pushed right then left so the
        // points keep their order.
        let mut todo = vec![(0usize, body.len(), lines)];
        while let Some((start, end, n)) = todo.pop() {
            let part = &body[start..end];
            let gz = match gzip(part) {
                Ok(gz) => gz,
                Err(e) => {
                    // Cannot happen with an in-memory sink; keep the data either way.
                    tracing::error!(error = %e, "tsdb: gzip failed");
                    return false;
                }
            };
            loop {
                let t0 = Instant::now();
                let (verdict, detail) = match self.stop.run(self.http.send(gz.clone()), false).await
                {
                    Raced::Done(v) => v,
                    Raced::Shutdown | Raced::Deadline => return false,
                };
                metrics::histogram!("evlounge_tsdb_write_seconds")
                    .record(t0.elapsed().as_secs_f64());
                let delay = match verdict {
                    Verdict::Ok => {
                        self.stats
                            .points_written
                            .fetch_add(n as u64, Ordering::Relaxed);
                        self.stats.batches_ok.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("evlounge_tsdb_points_written_total").increment(n as u64);
                        metrics::counter!("evlounge_tsdb_batches_total", "outcome" => "ok")
                            .increment(1);
                        backoff.reset();
                        self.set_state(TsdbState::Up);
                        break;
                    }
                    Verdict::Reject => {
                        metrics::counter!("evlounge_tsdb_batches_total", "outcome" => "rejected")
                            .increment(1);
                        if n <= 1 {
                            self.drop_poison(part, &detail);
                        } else {
                            let left = n / 2;
                            let mid = start + split_after_lines(part, left);
                            todo.push((mid, end, n - left));
                            todo.push((start, mid, left));
                        }
                        // A rejection is an answer: the server is up.
                        self.set_state(TsdbState::Up);
                        break;
                    }
                    Verdict::Auth => {
                        metrics::counter!("evlounge_tsdb_batches_total", "outcome" => "auth_failed")
                            .increment(1);
                        metrics::counter!("evlounge_tsdb_retries_total", "reason" => "auth")
                            .increment(1);
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        if *self.state.borrow() == TsdbState::AuthFailed {
                            tracing::error!(detail, "tsdb token still rejected");
                        }
                        self.set_state(TsdbState::AuthFailed);
                        self.auth_retry
                    }
                    Verdict::Retry { reason, after } => {
                        metrics::counter!("evlounge_tsdb_batches_total", "outcome" => "failed")
                            .increment(1);
                        metrics::counter!("evlounge_tsdb_retries_total", "reason" => reason)
                            .increment(1);
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        self.set_state(TsdbState::Spooling);
                        let jittered = backoff.next_delay();
                        // The server's Retry-After is a floor, never shortened by jitter.
                        let delay = after.map_or(jittered, |a| a.max(jittered));
                        if let Some(suppressed) = self.retry_log.allow() {
                            tracing::warn!(
                                reason,
                                detail,
                                retry_in_ms = delay.as_millis() as u64,
                                suppressed,
                                "tsdb write failed; will retry"
                            );
                        }
                        delay
                    }
                };
                if let Raced::Deadline | Raced::Shutdown = self.stop.run(sleep(delay), false).await
                {
                    return false;
                }
            }
        }
        true
    }

    fn drop_poison(&mut self, line: &[u8], detail: &str) {
        self.stats.points_rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("evlounge_tsdb_dropped_points_total", "reason" => "rejected")
            .increment(1);
        if let Some(suppressed) = self.poison_log.allow() {
            let shown = String::from_utf8_lossy(&line[..line.len().min(200)]);
            tracing::warn!(
                line = %shown.trim_end(),
                detail,
                suppressed,
                "tsdb rejected a point; dropped it"
            );
        }
    }
}

fn gzip(part: &[u8]) -> std::io::Result<Bytes> {
    let mut enc = GzEncoder::new(Vec::with_capacity(part.len() / 4 + 64), Compression::fast());
    enc.write_all(part)?;
    Ok(Bytes::from(enc.finish()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(204, None), Verdict::Ok);
        for s in [400, 413, 422] {
            assert_eq!(classify(s, None), Verdict::Reject);
        }
        for s in [401, 403] {
            assert_eq!(classify(s, None), Verdict::Auth);
        }
        let d = Some(Duration::from_secs(3));
        assert_eq!(
            classify(429, d),
            Verdict::Retry {
                reason: "throttled",
                after: d
            }
        );
        assert!(matches!(
            classify(503, None),
            Verdict::Retry {
                reason: "unavailable",
                ..
            }
        ));
        assert!(matches!(
            classify(502, None),
            Verdict::Retry {
                reason: "server_error",
                ..
            }
        ));
        assert!(matches!(
            classify(404, None),
            Verdict::Retry {
                reason: "unexpected_status",
                ..
            }
        ));
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 06 Nov 1994 08:49:37
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:30 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn split_points() {
        let body = b"a 1\nbb 2\nccc 3\n";
        assert_eq!(split_after_lines(body, 1), 4);
        assert_eq!(split_after_lines(body, 2), 9);
        assert_eq!(split_after_lines(body, 3), body.len());
        assert_eq!(split_after_lines(body, 9), body.len());
    }

    #[test]
    fn state_strings() {
        let all = [
            TsdbState::Off,
            TsdbState::Up,
            TsdbState::Spooling,
            TsdbState::AuthFailed,
        ];
        let s: Vec<_> = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(s, ["off", "up", "spooling", "auth_failed"]);
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let body = b"m f=1 1\n".repeat(1000);
        let gz = gzip(&body).unwrap();
        assert!(gz.len() < body.len() / 10);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }
}
