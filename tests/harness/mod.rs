//! Test harness: real processes on free ports in temp dirs (Mosquitto, the evlounge
//! binary), and polling with deadlines instead of sleeps.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// Async flavour of [`wait_for`].
pub async fn wait_for_async<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we own.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// A real Mosquitto broker on a free port, persistence on, QoS 1-friendly limits.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    persistence: bool,
}

impl Mosquitto {
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// A broker that forgets everything (sessions, queues) when it restarts.
    pub fn start_volatile() -> Self {
        Self::start_with(false)
    }

    fn start_with(persistence: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = Mosquitto {
            port: free_port(),
            dir,
            child: None,
            persistence,
        };
        // The free port may be taken by someone else before Mosquitto binds it: retry.
        for _ in 0..5 {
            if m.try_spawn() {
                return m;
            }
            m.port = free_port();
        }
        panic!("mosquitto did not start");
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "mosquitto did not restart on port {}",
            self.port
        );
    }

    /// Starts Mosquitto; false when it exited (its port was taken).
    fn try_spawn(&mut self) -> bool {
        let conf = self.dir.path().join("mosquitto.conf");
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nuser root\nallow_anonymous true\npersistence {persistence}\npersistence_location {data}/\n\
                 max_inflight_messages 0\nmax_queued_messages 1000000\nmax_queued_bytes 0\n\
                 log_dest file {log}\n",
                port = self.port,
                persistence = self.persistence,
                data = data.display(),
                log = self.dir.path().join("mosquitto.log").display(),
            ),
        )
        .expect("write conf");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (apt-get install mosquitto)");
        let port = self.port;
        let mut child = child;
        let up = wait_for(
            "mosquitto to accept connections",
            Duration::from_secs(10),
            || {
                if !matches!(child.try_wait(), Ok(None)) {
                    return Some(false);
                }
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .ok()
                    .map(|_| true)
            },
        );
        // Connected, but is it ours? A process that exited lost the port to another.
        let ours = up && matches!(child.try_wait(), Ok(None));
        if ours {
            self.child = Some(child);
        }
        ours
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGTERM (Mosquitto writes its persistence file only on a clean exit) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, libc::SIGTERM);
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("mosquitto")
}

/// The evlounge binary running `run -c <config>` in a temp data dir.
pub struct Daemon {
    pub base: String,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_evlounge")
}

impl Daemon {
    /// Writes `config` (TOML, without `data_dir`/`http`) and starts the daemon.
    pub fn start(dir: &Path, config: &str) -> Self {
        Self::start_http(dir, config, "")
    }

    /// Like [`Daemon::start`], with extra keys for the `[http]` section the harness writes.
    pub fn start_http(dir: &Path, config: &str, http_extra: &str) -> Self {
        let data_dir = dir.join("data");
        let config_path = dir.join("evlounge.toml");
        std::fs::write(
            &config_path,
            format!(
                "data_dir = {:?}\n{config}\n[http]\nlisten = \"127.0.0.1:0\"\n{http_extra}\n",
                data_dir.display()
            ),
        )
        .expect("write config");
        let mut d = Daemon {
            base: String::new(),
            data_dir,
            config_path,
            log_path: dir.join("daemon.log"),
            child: None,
        };
        d.spawn();
        d
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut child = Command::new(bin())
            .arg("run")
            .arg("-c")
            .arg(&self.config_path)
            .env("RUST_LOG", "info,evlounge=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn evlounge");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("evlounge: listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        self.base = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("daemon did not start; log:\n{}", self.log()));
        self.child = Some(child);
        // Subscribed (so nothing published from now on is missed).
        wait_for(
            "the daemon's MQTT subscriptions",
            Duration::from_secs(30),
            || {
                self.get("/readyz")
                    .filter(|(_, b)| b.contains("\"mqtt\":\"up\""))
                    .map(|_| ())
            },
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        signal(&c, libc::SIGTERM);
        c.wait().ok().and_then(|s| s.code())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&format!("{}{path}", self.base), None)
    }

    pub fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let (code, body) = self.get(path)?;
        if code != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// The value of one metric line, e.g. `evlounge_decode_errors_total{reason="oversized",adapter="evlounge"}`.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.trim().parse::<f64>().ok())
        .next()
        .unwrap_or(0.0)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal blocking HTTP/1.1 GET (no client library needed in the harness).
pub fn http_get(url: &str, bearer: Option<&str>) -> Option<(u16, String)> {
    http_request("GET", url, bearer, None)
}

pub fn http_request(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A test MQTT client (rumqttc) with its event loop polled in the background; received
/// publishes are collected for assertions.
/// Received publishes: (topic, payload, retained).
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>, bool)>>>;

pub struct MqttClient {
    pub client: rumqttc::AsyncClient,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    sent: std::sync::atomic::AtomicUsize,
    pub received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl MqttClient {
    pub async fn connect(port: u16, id: &str, subscribe: &[&str]) -> Self {
        Self::connect_with(port, id, subscribe, true).await
    }

    /// A subscriber with a persistent session: QoS 1 messages published while it is
    /// disconnected (a broker restart) are queued for it.
    pub async fn connect_persistent(port: u16, id: &str, subscribe: &[&str]) -> Self {
        Self::connect_with(port, id, subscribe, false).await
    }

    async fn connect_with(port: u16, id: &str, subscribe: &[&str], clean: bool) -> Self {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(4 << 20, 4 << 20);
        o.set_inflight(1000);
        let (client, mut el) = rumqttc::AsyncClient::new(o, 100_000);
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = received.clone();
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = acked.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let subs: Vec<String> = subscribe.iter().map(|s| s.to_string()).collect();
        let c2 = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                        for s in subs.iter().filter(|_| !ack.session_present) {
                            let _ = c2.try_subscribe(s.clone(), rumqttc::QoS::AtLeastOnce);
                        }
                        if subs.is_empty() || ack.session_present {
                            if let Some(t) = ready_tx.take() {
                                let _ = t.send(());
                            }
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        r.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec(), p.retain));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("mqtt test client connects")
            .expect("ready");
        MqttClient {
            client,
            acked,
            sent: std::sync::atomic::AtomicUsize::new(0),
            received,
            task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish");
        self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits until the broker acked every QoS 1 message this client published.
    pub async fn wait_acked(&self) {
        let sent = self.sent.load(std::sync::atomic::Ordering::SeqCst);
        wait_for_async("broker acks", Duration::from_secs(30), || async {
            (self.acked.load(std::sync::atomic::Ordering::SeqCst) >= sent).then_some(())
        })
        .await;
    }

    pub fn count(&self, topic_part: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| t.contains(topic_part))
            .count()
    }

    pub fn messages(&self, topic_part: &str) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| t.contains(topic_part))
            .filter_map(|(_, p, _)| serde_json::from_slice(p).ok())
            .collect()
    }
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------- a scripted DC session (CONTRACT §3 telemetry) ----------

pub fn base_ts() -> i64 {
    // An hour ago, so every scripted ts is in the past (no clock-skew replacement).
    chrono::Utc::now().timestamp_millis() - 3_600_000
}

pub fn msg(ts: i64, status: &str, power: f64, soc: f64, kwh: f64) -> String {
    format!(
        r#"{{"ts":{ts},"status":"{status}","session_id":"T-1842","vehicle":"Taycan 4S","power_kw":{power},"soc_pct":{soc},"target_soc_pct":80,"session_kwh":{kwh},"meter_kwh":{m}}}"#,
        m = 10_000.0 + kwh
    )
}

/// A DC session: plug-in, the start-of-charge suspended_ev blip, charging 20→80 %, the car
/// at target (complete), suspended_ev, finishing, unplug.
pub fn dc_session(t0: i64) -> (Vec<String>, Vec<String>) {
    let mut before = vec![
        msg(t0, "preparing", 0.0, 20.0, 0.0),
        msg(t0 + 2_000, "suspended_evse", 0.0, 20.0, 0.0),
        msg(t0 + 4_000, "suspended_ev", 0.0, 20.0, 0.0),
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
        before.push(msg(t, "charging", p, soc.min(79.0), kwh));
        t += 30_000;
    }
    let after = vec![
        msg(t, "charging", 60.0, 80.0, kwh + 0.5),
        msg(t + 30_000, "suspended_ev", 0.0, 80.0, kwh + 0.5),
        msg(t + 60_000, "finishing", 0.0, 80.0, kwh + 0.5),
        msg(t + 90_000, "available", 0.0, 80.0, 0.0),
    ];
    (before, after)
}
