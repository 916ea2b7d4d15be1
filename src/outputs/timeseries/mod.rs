//! Time series to InfluxDB v2 (CONTRACT §8) with zero loss while the spool is bounded.
//!
//! Flow: the commit thread encodes points ([`encode_points`]); the ack thread appends each
//! batch's chunk to the durable [`spool`] (then `sync`, then MQTT acks; see `app::acker`); the
//! async [`sink`] reads the spool in batches, gzips and POSTs them, and acknowledges
//! what the TSDB accepted. Nothing unacknowledged leaves the disk.

pub mod line_protocol;
pub mod point;
pub mod sink;
pub mod spool;

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use url::Url;

pub use point::Point;
pub use sink::{SinkStats, TsdbState};
pub use spool::{Spool, SpoolReader, SpoolStats, SpoolWriter};

/// Encodes points as line protocol into `buf` (appending; clear it between commits).
/// Returns the number of lines written (points without fields are skipped).
pub fn encode_points(points: &[Point], buf: &mut Vec<u8>) -> usize {
    line_protocol::encode(points, buf)
}

/// Typed runtime configuration for the InfluxDB v2 writer.
#[derive(Clone)]
pub struct InfluxConfig {
    /// Base URL; a path prefix (behind a proxy) is kept.
    pub url: Url,
    pub org: String,
    pub bucket: String,
    /// Secret: never in Debug output or logs.
    pub token: String,
    /// Flush when this many lines are waiting (InfluxDB recommends 5,000).
    pub batch_lines: usize,
    /// ... or this long after the oldest unsent line arrived.
    pub flush_ms: u64,
    /// Per-request timeout.
    pub timeout: Duration,
    pub spool_max_bytes: u64,
    /// On shutdown, keep flushing for at most this long.
    pub drain_timeout: Duration,
    /// Cap of the exponential backoff between transient failures.
    pub max_backoff: Duration,
    /// Retry period while the token is rejected.
    pub auth_retry: Duration,
}

impl InfluxConfig {
    pub fn new(
        url: Url,
        org: impl Into<String>,
        bucket: impl Into<String>,
        token: impl Into<String>,
    ) -> Self {
        InfluxConfig {
            url,
            org: org.into(),
            bucket: bucket.into(),
            token: token.into(),
            batch_lines: 5_000,
            flush_ms: 1_000,
            timeout: Duration::from_secs(10),
            spool_max_bytes: spool::DEFAULT_MAX_BYTES,
            drain_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(30),
            auth_retry: Duration::from_secs(30),
        }
    }

    /// `{url}/api/v2/write?org=..&bucket=..&precision=ms`.
    pub fn write_url(&self) -> Url {
        let mut u = self.url.clone();
        if let Ok(mut segs) = u.path_segments_mut() {
            segs.pop_if_empty().extend(["api", "v2", "write"]);
        }
        u.query_pairs_mut()
            .clear()
            .append_pair("org", &self.org)
            .append_pair("bucket", &self.bucket)
            .append_pair("precision", "ms");
        u
    }
}

impl fmt::Debug for InfluxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfluxConfig")
            .field("url", &redacted(&self.url).as_str())
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("token", &"***")
            .field("batch_lines", &self.batch_lines)
            .field("flush_ms", &self.flush_ms)
            .field("timeout", &self.timeout)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("drain_timeout", &self.drain_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("auth_retry", &self.auth_retry)
            .finish()
    }
}

/// The URL without a password, for logs and Debug.
fn redacted(url: &Url) -> Url {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u
}

/// The sink future; the caller spawns it where it spawns its other tasks.
pub type SinkTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Asks the sink to flush (for at most `drain_timeout`) and finish. Dropping every
/// handle has the same effect.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// Everything [`start`] hands out.
pub struct Timeseries {
    /// For the ack thread: `append` per batch, `sync` per group commit.
    pub writer: SpoolWriter,
    pub state: watch::Receiver<TsdbState>,
    /// Spawn it; it returns after shutdown once drained or out of time.
    pub task: SinkTask,
    pub shutdown: ShutdownHandle,
    pub stats: Arc<SinkStats>,
    pub spool: SpoolStats,
}

/// Opens the spool under `<data_dir>/spool/` (replaying what a previous run left
/// unacknowledged first) and builds the sink task.
pub fn start(cfg: InfluxConfig, data_dir: &Path) -> io::Result<Timeseries> {
    let (writer, reader) = Spool::open(&data_dir.join("spool"), cfg.spool_max_bytes)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (state_tx, state_rx) = watch::channel(TsdbState::Up);
    let stats = Arc::new(SinkStats::default());
    let spool = reader.stats();
    let sink = sink::Sink::new(&cfg, reader, stop_rx, state_tx, stats.clone())?;
    tracing::info!(
        url = %redacted(&cfg.url),
        bucket = %cfg.bucket,
        spool_bytes = spool.bytes(),
        "tsdb writer starting"
    );
    Ok(Timeseries {
        writer,
        state: state_rx,
        task: Box::pin(sink.run()),
        shutdown: ShutdownHandle(Arc::new(stop_tx)),
        stats,
        spool,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_url_keeps_prefix_and_encodes_query() {
        let mut c = InfluxConfig::new(
            Url::parse("http://h:8086/influx/").unwrap(),
            "my org",
            "b&1",
            "s3cret",
        );
        assert_eq!(
            c.write_url().as_str(),
            "http://h:8086/influx/api/v2/write?org=my+org&bucket=b%261&precision=ms"
        );
        c.url = Url::parse("http://h:8086").unwrap();
        assert_eq!(
            c.write_url().as_str(),
            "http://h:8086/api/v2/write?org=my+org&bucket=b%261&precision=ms"
        );
    }

    #[test]
    fn debug_hides_token() {
        let c = InfluxConfig::new(Url::parse("http://h").unwrap(), "o", "b", "s3cret-token");
        let s = format!("{c:?}");
        assert!(!s.contains("s3cret"), "{s}");
        let c = InfluxConfig::new(Url::parse("http://u:pw-s3cret@h").unwrap(), "o", "b", "t");
        let s = format!("{c:?}");
        assert!(!s.contains("s3cret"), "{s}");
        assert!(s.contains("***"));
    }
}
