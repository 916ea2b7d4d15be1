//! Shared by the web tests: a daemon with an `[http]` section of our own, scripted charging
//! sessions, an HTTP client and a Server-Sent Events reader.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{wait_for_async, Daemon, Mosquitto};

pub const TOKEN: &str = "staff-Secret-42";
pub const TOPIC: &str = "evlounge/milano/charger/hpc-3/telemetry";

pub fn site_config(broker: &Mosquitto, notify_mqtt: bool) -> String {
    format!(
        r#"[mqtt]
url = "{url}"
state_min_interval = "100ms"
[notify]
mqtt = {notify_mqtt}
[thresholds]
suspended_ev_grace = "60s"
low_power_for = "3s"
[[sites]]
id = "milano"
name = "Porsche Milano"
timezone = "Europe/Rome"
  [[sites.chargers]]
  id = "hpc-3"
  bay = "Bay 3"
  max_kw = 270.0
  [[sites.chargers]]
  id = "hpc-4"
  bay = "Bay 4"
  max_kw = 270.0
  [[sites.zones]]
  id = "lounge"
  name = "Lounge"
  capacity = 40
"#,
        url = broker.url()
    )
}

/// Starts the daemon with extra `[http]` keys; it returns once the daemon's subscriptions
/// stand, so nothing published afterwards is missed.
pub async fn start_daemon(
    dir: &std::path::Path,
    _broker: &Mosquitto,
    config: &str,
    http_extra: &str,
) -> Daemon {
    Daemon::start_http(dir, config, http_extra)
}

pub fn base_ts() -> i64 {
    // An hour ago, so every scripted ts is in the past (no clock-skew replacement).
    chrono::Utc::now().timestamp_millis() - 3_600_000
}

pub fn msg(sid: &str, ts: i64, status: &str, power: f64, soc: f64, kwh: f64) -> String {
    format!(
        r#"{{"ts":{ts},"status":"{status}","session_id":"{sid}","vehicle":"Taycan 4S","power_kw":{power},"soc_pct":{soc},"target_soc_pct":80,"session_kwh":{kwh},"meter_kwh":{m}}}"#,
        m = 10_000.0 + kwh
    )
}

/// A DC session from `t0`: plug-in, charging 20→80 %, complete (`suspended_ev` at target).
/// `before` ends while still charging; `after` completes it; `unplug` ends the session.
pub struct Script {
    pub before: Vec<String>,
    pub after: Vec<String>,
    pub unplug: Vec<String>,
    pub end_ts: i64,
}

pub fn dc_session(sid: &str, t0: i64) -> Script {
    let mut before = vec![
        msg(sid, t0, "preparing", 0.0, 20.0, 0.0),
        msg(sid, t0 + 2_000, "suspended_evse", 0.0, 20.0, 0.0),
        msg(sid, t0 + 4_000, "suspended_ev", 0.0, 20.0, 0.0),
    ];
    let mut kwh = 0.0;
    let mut soc = 20.0;
    let mut t = t0 + 6_000;
    while soc < 79.0 {
        let p = if soc < 55.0 {
            250.0
        } else {
            250.0 - (soc - 55.0) * 7.0
        };
        kwh += p * 30.0 / 3600.0;
        soc += p * 30.0 / 3600.0 / 0.85;
        before.push(msg(sid, t, "charging", p, soc.min(79.0), kwh));
        t += 30_000;
    }
    let after = vec![
        msg(sid, t, "charging", 60.0, 80.0, kwh + 0.5),
        msg(sid, t + 30_000, "suspended_ev", 0.0, 80.0, kwh + 0.5),
    ];
    let unplug = vec![
        msg(sid, t + 60_000, "finishing", 0.0, 80.0, kwh + 0.5),
        msg(sid, t + 90_000, "available", 0.0, 80.0, 0.0),
    ];
    Script {
        before,
        after,
        unplug,
        end_ts: t + 90_000,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// One Server-Sent Event as received.
#[derive(Clone, Debug, PartialEq)]
pub struct Sse {
    pub event: String,
    pub id: Option<i64>,
    pub data: serde_json::Value,
}

/// Reads `/api/v1/events` in the background, collecting every event.
pub struct SseReader {
    pub events: Arc<Mutex<Vec<Sse>>>,
    pub comments: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl SseReader {
    pub async fn open(base: &str, last_event_id: Option<i64>, query: &str) -> Self {
        let mut req = client()
            .get(format!("{base}/api/v1/events{query}"))
            .timeout(Duration::from_secs(3600));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let mut resp = req.send().await.expect("connect to the event stream");
        assert_eq!(resp.status(), 200);
        assert!(resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream")));
        let events = Arc::new(Mutex::new(Vec::new()));
        let comments = Arc::new(Mutex::new(0));
        let (ev, cm) = (events.clone(), comments.clone());
        let task = tokio::spawn(async move {
            let mut buf = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(i) = buf.find("\n\n") {
                    let block: String = buf.drain(..i + 2).collect();
                    let (mut event, mut id, mut data) = (String::from("message"), None, None);
                    for line in block.lines() {
                        if line.starts_with(':') {
                            *cm.lock().unwrap() += 1;
                        } else if let Some(v) = line.strip_prefix("event:") {
                            event = v.trim().to_string();
                        } else if let Some(v) = line.strip_prefix("id:") {
                            id = v.trim().parse().ok();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data = serde_json::from_str(v.trim()).ok();
                        }
                    }
                    if let Some(data) = data {
                        ev.lock().unwrap().push(Sse { event, id, data });
                    }
                }
            }
        });
        SseReader {
            events,
            comments,
            task,
        }
    }

    pub fn all(&self) -> Vec<Sse> {
        self.events.lock().unwrap().clone()
    }

    /// Events with an id (committed events, not state changes).
    pub fn with_ids(&self) -> Vec<Sse> {
        self.all().into_iter().filter(|e| e.id.is_some()).collect()
    }

    pub async fn wait_for(&self, what: &str, f: impl Fn(&[Sse]) -> bool) {
        wait_for_async(what, Duration::from_secs(30), || async {
            f(&self.all()).then_some(())
        })
        .await;
    }

    pub fn close(self) {
        self.task.abort();
    }
}

impl Drop for SseReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}
