//! Shared harness for the notification integration tests: real receivers and a real
//! SQLite store. Included with `#[path]` by tests/notify.rs and tests/notify_logs.rs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use evlounge::domain::event::{Event, EventKind};
use evlounge::outputs::notify::{
    enqueue_for_event, link_guest, run_worker, Channel, GuestLink, Lang, LinkRequest, NotifyConfig,
    WebhookConfig, MIGRATIONS,
};
use evlounge::outputs::timeseries::Point;
use evlounge::util::secret::{Redacted, Secret};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rusqlite::Connection;
use sha2::Sha256;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

pub const HOOK_SECRET: &str = "s3cret-hook-key";
pub const NTFY_TOKEN: &str = "tk_test_token";
pub const DEADLINE: Duration = Duration::from_secs(20);

// ---------- helpers: store ----------

pub fn open_store(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    for m in MIGRATIONS {
        c.execute(m, []).unwrap();
    }
    c
}

pub fn now_ms() -> i64 {
    evlounge::util::time::now_ms()
}

pub fn complete_event(id: &str) -> Event {
    let mut e = Event::new(
        EventKind::ChargingComplete,
        now_ms() - 5_000,
        "milano",
        id.into(),
    );
    e.charger = Some("hpc-3".into());
    e.bay = Some("Bay 3".into());
    e.session_id = Some("T-1842".into());
    e.vehicle = Some("Taycan 4S".into());
    e.energy_kwh = Some(61.2);
    e.duration_s = Some(1391.0);
    e.soc_pct = Some(80.0);
    e.target_soc_pct = Some(80.0);
    e
}

pub fn link(
    conn: &Connection,
    cfg: &NotifyConfig,
    channel: Channel,
    address: &str,
    lang: Lang,
    session: Option<&str>,
) -> GuestLink {
    let req = LinkRequest {
        site: "milano".into(),
        charger: Some("hpc-3".into()),
        id_tag: None,
        channel,
        address: Redacted::new(address.into()),
        lang,
        name: Some(Redacted::new("Anna Bianchi".into())),
        events: None,
    };
    link_guest(conn, &req, cfg, session, now_ms()).unwrap()
}

/// Queues `e` for session `sk` in one transaction, as the commit thread does.
pub fn commit_event(conn: &Connection, e: &Event, sk: &str, now: i64) -> usize {
    let tx = conn.unchecked_transaction().unwrap();
    let n = enqueue_for_event(&tx, e, Some(sk), now).unwrap();
    tx.commit().unwrap();
    n
}

pub fn statuses(conn: &Connection) -> Vec<(String, String, i64)> {
    let mut st = conn
        .prepare("SELECT event_id, status, attempts FROM notifications ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// One recorded attempt: outcome, HTTP status, error, started ms, finished ms.
pub type AttemptRow = (String, Option<i64>, Option<String>, i64, i64);

pub fn attempts(conn: &Connection) -> Vec<AttemptRow> {
    let mut st = conn
        .prepare(
            "SELECT outcome, status_code, error, started_ms, finished_ms
             FROM notification_attempts ORDER BY id",
        )
        .unwrap();
    st.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn all_done(conn: &Connection, n: usize) -> bool {
    let s = statuses(conn);
    s.len() == n && s.iter().all(|(_, st, _)| st != "pending")
}

// ---------- helpers: HTTP receiver (webhook + ntfy) ----------

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
    pub answered: u16,
    pub signature_ok: bool,
}

#[derive(Default)]
pub struct ReceiverState {
    pub log: Mutex<Vec<Received>>,
    pub fail_first: AtomicUsize,
    pub hang_first: AtomicUsize,
    /// Answers this many requests with `302 Location: /moved` first.
    pub redirect_first: AtomicUsize,
    /// Answers this many requests 200 only after `slow_for` (logged on arrival).
    pub slow_first: AtomicUsize,
    pub slow_for: Mutex<Duration>,
    pub retry_after: Mutex<Option<&'static str>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub state: Arc<ReceiverState>,
    pub task: JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let st = state.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let st = st.clone();
                async move { handle(st, uri.path().to_string(), headers, body).await }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, state, task }
    }

    pub fn url(&self, path: &str) -> url::Url {
        format!("http://{}{path}", self.addr).parse().unwrap()
    }

    pub fn log(&self) -> Vec<Received> {
        self.state.log.lock().clone()
    }

    pub fn count(&self) -> usize {
        self.state.log.lock().len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Independent check of the contract's signature: HMAC-SHA256 of "<ts>.<body>".
pub fn verify_signature(headers: &HashMap<String, String>, body: &[u8]) -> bool {
    let (Some(ts), Some(sig)) = (
        headers.get("x-evlounge-timestamp"),
        headers.get("x-evlounge-signature"),
    ) else {
        return false;
    };
    let Some(hex_sig) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let ts_ok = ts
        .parse::<i64>()
        .map(|t| (t - now_ms() / 1000).abs() < 300)
        .unwrap_or(false);
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    ts_ok && hex_sig == hex_sig.to_lowercase() && mac.verify_slice(&expected).is_ok()
}

pub async fn handle(
    st: Arc<ReceiverState>,
    path: String,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let signature_ok = verify_signature(&headers, &body);
    // One of the scripted answers, counted down, in this order of precedence.
    let take = |n: &AtomicUsize| {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    };
    let hang = take(&st.hang_first);
    let fail = !hang && take(&st.fail_first);
    let redirect = !hang && !fail && take(&st.redirect_first);
    let answered = if hang {
        0
    } else if fail {
        503
    } else if redirect {
        302
    } else {
        200
    };
    st.log.lock().push(Received {
        path,
        headers,
        body,
        answered,
        signature_ok,
    });
    if hang {
        // Never answers in time: the worker's attempt timeout must fire.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if fail {
        let mut h = HeaderMap::new();
        if let Some(ra) = *st.retry_after.lock() {
            h.insert("retry-after", ra.parse().unwrap());
        }
        return (StatusCode::SERVICE_UNAVAILABLE, h, "busy").into_response();
    }
    if redirect {
        return (StatusCode::FOUND, [("location", "/moved")], "moved").into_response();
    }
    let slow = !hang && take(&st.slow_first);
    if slow {
        let d = *st.slow_for.lock();
        tokio::time::sleep(d).await;
    }
    (StatusCode::OK, "ok").into_response()
}

// ---------- helpers: SMTP sink (python aiosmtpd) ----------

pub struct SmtpSink {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd) is needed for the SMTP tests");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("smtp_sink.py did not start (is aiosmtpd installed?): {line:?}")
        });
        SmtpSink { child, port, dir }
    }

    pub fn messages(&self) -> Vec<serde_json::Value> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------- helpers: worker ----------

pub struct Worker {
    pub shutdown: watch::Sender<bool>,
    pub wake: Arc<Notify>,
    pub join: JoinHandle<()>,
}

impl Worker {
    pub fn start(cfg: &NotifyConfig, db: &Path, points: Option<flume::Sender<Point>>) -> Worker {
        let (shutdown, rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let join = tokio::spawn(run_worker(
            cfg.clone(),
            db.to_path_buf(),
            wake.clone(),
            None,
            points,
            rx,
        ));
        Worker {
            shutdown,
            wake,
            join,
        }
    }

    pub async fn stop(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.join)
            .await
            .expect("worker stops on shutdown")
            .unwrap();
    }
}

pub fn base_cfg() -> NotifyConfig {
    let mut cfg = NotifyConfig::new("http://lounge.test:8080".parse().unwrap());
    cfg.mqtt_enabled = false;
    cfg.retry_base = Duration::from_millis(20);
    cfg.retry_max = Duration::from_millis(200);
    cfg.attempt_timeout = Duration::from_secs(5);
    cfg
}

pub fn webhook_cfg(r: &Receiver) -> NotifyConfig {
    let mut cfg = base_cfg();
    cfg.webhook = Some(WebhookConfig {
        url: r.url("/hook"),
        secret: Some(Secret::new(HOOK_SECRET)),
    });
    cfg
}

pub fn db_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("evlounge.db")
}
