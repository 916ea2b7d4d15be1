//! A scriptable InfluxDB v2 write endpoint on 127.0.0.1:0 for the statuses a real
//! VictoriaMetrics never produces (429 + Retry-After, 413, 400 on one line, 401, hang).
#![allow(dead_code)]

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;

pub enum Reply {
    Status(u16),
    StatusWith(u16, &'static str, String),
    /// Never answer (the client must time out).
    Hang,
}

/// Decides the reply from (request number starting at 0, decompressed body).
pub type Script = Box<dyn Fn(usize, &str) -> Reply + Send + Sync>;

pub struct Request {
    pub at: Instant,
    pub status: u16,
    pub lines: usize,
}

pub struct Fake {
    pub script: Mutex<Script>,
    pub requests: Mutex<Vec<Request>>,
    /// Lines of every 2xx-answered request, in arrival order.
    pub accepted: Mutex<Vec<String>>,
    pub bad_requests: Mutex<Vec<String>>,
}

impl Fake {
    pub fn accepted(&self) -> Vec<String> {
        self.accepted.lock().clone()
    }
    pub fn request_count(&self) -> usize {
        self.requests.lock().len()
    }
    pub fn set_script(&self, s: Script) {
        *self.script.lock() = s;
    }
}

pub async fn start(script: Script) -> (url::Url, Arc<Fake>) {
    let fake = Arc::new(Fake {
        script: Mutex::new(script),
        requests: Mutex::new(Vec::new()),
        accepted: Mutex::new(Vec::new()),
        bad_requests: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/api/v2/write", post(write))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (
        url::Url::parse(&format!("http://{addr}")).expect("url"),
        fake,
    )
}

async fn write(
    State(fake): State<Arc<Fake>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let q = q.unwrap_or_default();
    let gz = headers.get("content-encoding").is_some_and(|v| v == "gzip");
    let auth_ok = headers
        .get("authorization")
        .is_some_and(|v| v == "Token t0ken");
    if !gz || !auth_ok || !q.contains("precision=ms") || !q.contains("bucket=") {
        fake.bad_requests
            .lock()
            .push(format!("gzip={gz} auth={auth_ok} query={q}"));
        return StatusCode::BAD_REQUEST.into_response();
    }
    let mut text = String::new();
    if flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .is_err()
    {
        fake.bad_requests.lock().push("bad gzip".into());
        return StatusCode::BAD_REQUEST.into_response();
    }
    let n = fake.requests.lock().len();
    let reply = (fake.script.lock())(n, &text);
    let lines = text.lines().count();
    let status = match &reply {
        Reply::Status(s) | Reply::StatusWith(s, _, _) => *s,
        Reply::Hang => 0,
    };
    fake.requests.lock().push(Request {
        at: Instant::now(),
        status,
        lines,
    });
    match reply {
        Reply::Hang => std::future::pending::<Response>().await,
        Reply::Status(s) | Reply::StatusWith(s, _, _) if (200..300).contains(&s) => {
            fake.accepted
                .lock()
                .extend(text.lines().map(str::to_string));
            StatusCode::from_u16(s).expect("status").into_response()
        }
        Reply::Status(s) => StatusCode::from_u16(s).expect("status").into_response(),
        Reply::StatusWith(s, h, v) => (
            StatusCode::from_u16(s).expect("status"),
            [(h, v)],
            "{\"code\":\"fake\"}",
        )
            .into_response(),
    }
}
