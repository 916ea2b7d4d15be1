//! The benchmark suite: every figure BENCHMARKS.md quotes, measured on this machine in one run.
//!
//! `cargo build --release --bin evlounge --example replay` first, then
//! `cargo bench --bench suite -- all` (or any of `decode ingest latency rss notify callgrind`).
//!
//! It starts its own Mosquitto (free port, temp dir, persistence on, QoS 1-friendly limits),
//! VictoriaMetrics (`/usr/bin/victoria-metrics` or `VM_BIN`) and an HTTP webhook receiver, and
//! runs `target/release/evlounge` against them; everything listens on 127.0.0.1 only. Every
//! loop is bounded in count and time. Results go to `target/bench/results.json` and
//! `target/bench/results.md` (also printed).
//!
//! The latency runs' background load (10 × 1k or 1 × 10k chargers at 1 Hz) is separate
//! `target/release/evlounge simulate` processes, stopped with SIGTERM (their counts are what
//! each prints on exit; killed if the bench fails on the way), and each latency probe's MQTT
//! subscriber and publisher run on an OS thread of their own with a current-thread runtime:
//! the timed path does not queue behind the load in the bench's own runtime. The ingest runs'
//! publisher stays in-process (`run_simulate`): they measure throughput, not latency. Ceiling
//! and daemon are measured alternately, `BENCH_INGEST_ROUNDS` times each, and their medians
//! compared; a daemon round ends when every point has reached VictoriaMetrics. The latency phases also measure their floors meanwhile: the broker's own round
//! trip (an echo before each probe) and the disk's fdatasync (every 20 ms).
//!
//! Tunables (env): `BENCH_INGEST_N` (messages per ingest run, 200000), `BENCH_INGEST_ROUNDS` (3),
//! `BENCH_NOTIFY_SPREAD_S` (60), `BENCH_PROBES` (50), `BENCH_REPLAY_N` (100000),
//! `BENCH_VM_DIR` (where VictoriaMetrics keeps its data; the system temp dir when unset),
//! `BENCH_SIM_NICE` (10: the nice value of the latency run's background simulators).

#[path = "../tests/common/vm.rs"]
mod vm;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use evlounge::sim::publish::{run_simulate, SimulateOptions};
use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

const SITE: &str = "bench";
const STAFF_TOKEN: &str = "bench-staff-token";
const COMMANDS: &[&str] = &["decode", "ingest", "latency", "notify", "callgrind"];

// ---------------------------------------------------------------- results

#[derive(Clone, Copy)]
enum Cmp {
    AtLeast(f64),
    Below(f64),
    AtMost(f64),
}

struct Figure {
    id: String,
    what: String,
    value: Option<f64>,
    unit: &'static str,
    target: Option<Cmp>,
    note: String,
}

impl Figure {
    fn pass(&self) -> Option<bool> {
        let v = self.value?;
        Some(match self.target? {
            Cmp::AtLeast(t) => v >= t,
            Cmp::Below(t) => v < t,
            Cmp::AtMost(t) => v <= t,
        })
    }

    fn target_text(&self) -> String {
        match self.target {
            None => "—".into(),
            Some(Cmp::AtLeast(t)) => format!("≥ {}", fmt_num(t)),
            Some(Cmp::Below(t)) => format!("< {}", fmt_num(t)),
            Some(Cmp::AtMost(t)) => format!("≤ {}", fmt_num(t)),
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v);
        // Thousands separators, for reading.
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
    details: serde_json::Map<String, Value>,
}

impl Report {
    fn add(
        &mut self,
        id: &str,
        what: &str,
        value: Option<f64>,
        unit: &'static str,
        target: Option<Cmp>,
        note: impl Into<String>,
    ) {
        let f = Figure {
            id: id.into(),
            what: what.into(),
            value,
            unit,
            target,
            note: note.into(),
        };
        let pass = match f.pass() {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "",
        };
        println!(
            "  {id}: {} {unit} (target {}) {pass} {}",
            f.value.map_or("n/a".into(), fmt_num),
            f.target_text(),
            f.note
        );
        self.figures.push(f);
    }

    fn error(&mut self, id: &str, e: &anyhow::Error) {
        eprintln!("  {id}: ERROR {e:#}");
        self.add(id, id, None, "", None, format!("error: {e:#}"));
    }

    fn detail(&mut self, key: &str, v: Value) {
        self.details.insert(key.into(), v);
    }

    fn write(&self, commands: &[String]) -> anyhow::Result<String> {
        let machine = machine();
        let commit = git_commit();
        let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                json!({
                    "id": f.id, "what": f.what, "value": f.value, "unit": f.unit,
                    "target": f.target.map(|_| f.target_text()), "pass": f.pass(), "note": f.note,
                })
            })
            .collect();
        let doc = json!({
            "date": date, "commit": commit, "machine": machine, "commands": commands,
            "figures": figures, "details": Value::Object(self.details.clone()),
        });
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&doc)?,
        )?;
        let mut md = format!(
            "# evlounge benchmarks\n\n- date: {date}\n- commit: {commit}\n- machine: {} cores, {}, {} MiB RAM\n\n\
             | figure | value | target | result | notes |\n|---|---:|---|---|---|\n",
            machine["nproc"], machine["cpu"].as_str().unwrap_or("?"), machine["mem_mib"],
        );
        for f in &self.figures {
            md.push_str(&format!(
                "| {} | {} {} | {} | {} | {} |\n",
                f.what,
                f.value.map_or("n/a".into(), fmt_num),
                f.unit,
                f.target_text(),
                match f.pass() {
                    Some(true) => "pass",
                    Some(false) => "**FAIL**",
                    None => "—",
                },
                f.note.replace('|', "/"),
            ));
        }
        std::fs::write(dir.join("results.md"), &md)?;
        Ok(md)
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "mem_mib": mem_kb / 1024,
        "victoria_metrics_data": vm_placement(),
    })
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    json!({
        "n": v.len(),
        "p50": percentile(&v, 0.50),
        "p90": percentile(&v, 0.90),
        "p99": percentile(&v, 0.99),
        "max": v.last().copied(),
        "min": v.first().copied(),
    })
}

// ---------------------------------------------------------------- processes

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Scratch dirs on the same disk as a real data_dir (fsync costs are part of the figures).
fn scratch() -> anyhow::Result<tempfile::TempDir> {
    let base = repo().join("target/bench/tmp");
    std::fs::create_dir_all(&base)?;
    Ok(tempfile::Builder::new().prefix("run-").tempdir_in(base)?)
}

/// VictoriaMetrics with its storage where `BENCH_VM_DIR` says (e.g. `/dev/shm`, so that the
/// TSDB's own flushes do not share the daemon's disk); the system temp dir otherwise.
async fn start_vm() -> vm::Vm {
    let dir = std::env::var_os("BENCH_VM_DIR").map(PathBuf::from);
    vm::Vm::start_in(false, dir.as_deref()).await
}

fn vm_placement() -> String {
    std::env::var("BENCH_VM_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string())
}

fn release_bin(rel: &str, build: &str) -> anyhow::Result<PathBuf> {
    let p = repo().join(rel);
    if !p.is_file() {
        bail!("{} not found: build it first with `{build}`", p.display());
    }
    Ok(p)
}

fn daemon_bin() -> anyhow::Result<PathBuf> {
    release_bin(
        "target/release/evlounge",
        "cargo build --release --bin evlounge",
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn sigterm(pid: u32) {
    // SAFETY: kill(2) on the pid of a child this process spawned and has not reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`.
fn stop_child(c: &mut Child, grace: Duration) {
    sigterm(c.id());
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// (user + system) CPU seconds of a process.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    match (t(11), t(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

/// (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Mosquitto {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> anyhow::Result<Self> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("mosquitto not installed (apt-get install mosquitto)")?;
        let dir = scratch()?;
        for _ in 0..5 {
            let port = free_port();
            let data = dir.path().join("data");
            std::fs::create_dir_all(&data)?;
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nuser root\nallow_anonymous true\n\
                     persistence true\npersistence_location {}/\n\
                     max_inflight_messages 0\nmax_queued_messages 10000000\nmax_queued_bytes 0\n\
                     log_dest file {}\n",
                    data.display(),
                    dir.path().join("mosquitto.log").display()
                ),
            )?;
            let mut child = Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut up = false;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = matches!(child.try_wait(), Ok(None));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if up {
                return Ok(Mosquitto {
                    port,
                    child,
                    _dir: dir,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!("mosquitto did not start")
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

struct Daemon {
    base: String,
    child: Child,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(config: &str) -> anyhow::Result<Self> {
        let bin = daemon_bin()?;
        let dir = scratch()?;
        let cfg_path = dir.path().join("evlounge.toml");
        std::fs::write(
            &cfg_path,
            format!(
                "data_dir = {:?}\n{config}",
                dir.path().join("data").display().to_string()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("daemon.log"))?;
        let mut child = Command::new(bin)
            .arg("run")
            .arg("-c")
            .arg(&cfg_path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()?;
        let stdout = child.stdout.take().context("daemon stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("evlounge: listening on ") {
                    let _ = tx.send(a.to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log =
                    std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
                bail!(
                    "daemon did not start; log tail:\n{}",
                    &log[log.len().saturating_sub(2000)..]
                );
            }
        };
        Ok(Daemon {
            base,
            child,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await {
                if r.text()
                    .await
                    .unwrap_or_default()
                    .contains("\"mqtt\":\"up\"")
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("daemon not ready (MQTT) within 30 s")
    }

    async fn metrics(&self) -> String {
        match self.http.get(format!("{}/metrics", self.base)).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn get_json(&self, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    async fn link(&self, body: Value) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/api/v1/guests", self.base))
            .bearer_auth(STAFF_TOKEN)
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "link: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default();
        log[log.len().saturating_sub(1500)..].to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(20));
        // The last daemon's log outlives its scratch dir, for a look after the run.
        let _ = std::fs::copy(
            self.dir.path().join("daemon.log"),
            repo().join("target/bench/daemon-last.log"),
        );
    }
}

/// Sum of one metric's series whose label set contains `labels` (e.g. `kind="telemetry"`).
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let ok = if labels.is_empty() {
                rest.is_empty() || rest.starts_with('{')
            } else {
                rest.starts_with('{') && rest.contains(labels)
            };
            ok.then(|| v.parse::<f64>().ok()).flatten()
        })
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// CPU seconds per thread name of a process (threads of one name added up).
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
            continue;
        };
        let rest = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(name).or_insert(0.0) += (t(11) + t(12)) / 100.0;
    }
    out
}

/// The webhook receiver: records (charger, kind, receipt time) of every POST.
struct Hook {
    url: String,
    log: Arc<Mutex<Vec<(String, String, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hook {
    async fn start() -> anyhow::Result<Self> {
        let log: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
        let l = log.clone();
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let l = l.clone();
            async move {
                let at = Instant::now();
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                    l.lock().push((s("charger"), s("kind"), at));
                }
                axum::http::StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Hook {
            url: format!("http://{addr}/hook"),
            log,
            task,
        })
    }

    fn count(&self, kind: &str) -> usize {
        self.log.lock().iter().filter(|(_, k, _)| k == kind).count()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn daemon_config(broker: &Mosquitto, vm: &vm::Vm, hook: &Hook, email: Option<u16>) -> String {
    let email = email.map_or(String::new(), |port| {
        format!(
            "[notify.email]\nsmtp_url = \"smtp://127.0.0.1:{port}\"\nfrom = \"lounge@example.com\"\n"
        )
    });
    format!(
        r#"[mqtt]
url = "{mqtt}"
[http]
listen = "127.0.0.1:0"
staff_token = "{STAFF_TOKEN}"
[influx]
url = "{influx}"
org = "bench"
bucket = "bench"
token = "bench-token"
[notify.webhook]
url = "{hook}"
secret = "bench-hook-secret"
{email}
[[sites]]
id = "{SITE}"
name = "Bench"
timezone = "Europe/Rome"
  [[sites.zones]]
  id = "lounge"
  capacity = 200
{spread}"#,
        mqtt = broker.url(),
        influx = vm.url().as_str().trim_end_matches('/'),
        hook = hook.url,
        spread = (0..10)
            .map(|i| format!("[[sites]]\nid = \"b{i}\"\ntimezone = \"Europe/Rome\"\n"))
            .collect::<String>(),
    )
}

// ---------------------------------------------------------------- MQTT helpers

/// A client whose event loop runs in the background and hands publishes to `on_publish`.
struct Client {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn connect(
        port: u16,
        id: &str,
        subscribe: Option<(&str, QoS)>,
        on_publish: impl Fn(&rumqttc::Publish) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(true);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_inflight(1000);
        let (client, mut el) = AsyncClient::new(o, 100_000);
        let acked = Arc::new(AtomicU64::new(0));
        let a = acked.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let sub = subscribe.map(|(t, q)| (t.to_string(), q));
        let c2 = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => match &sub {
                        Some((t, q)) => {
                            let _ = c2.try_subscribe(t.clone(), *q);
                        }
                        None => {
                            if let Some(r) = ready_tx.take() {
                                let _ = r.send(());
                            }
                        }
                    },
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("MQTT client did not connect in 10 s")?
            .context("MQTT client task ended")?;
        Ok(Client {
            client,
            acked,
            task,
        })
    }

    async fn wait_acked(&self, n: u64, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while self.acked.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                bail!("broker acked {} of {n}", self.acked.load(Ordering::Relaxed));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sim_opts(broker: &Mosquitto, chargers: usize, rate_hz: f64, qos: u8) -> SimulateOptions {
    SimulateOptions {
        mqtt_url: broker.url(),
        site: SITE.into(),
        prefix: "evlounge".into(),
        chargers,
        rate_hz,
        qos,
        seed: 7,
        connections: 4,
        ..SimulateOptions::default()
    }
}

// A scripted DC session (CONTRACT §3), as in tests/harness: plug-in, the start-of-charge
// suspended_ev blip, charging 20 → 79 %; then the completing message (SoC at the target).
fn msg(sid: &str, ts: i64, status: &str, power: f64, soc: f64, kwh: f64) -> String {
    format!(
        r#"{{"ts":{ts},"status":"{status}","session_id":"{sid}","vehicle":"Taycan 4S","power_kw":{power},"soc_pct":{soc:.2},"target_soc_pct":80,"session_kwh":{kwh:.3},"meter_kwh":{m:.3},"voltage_v":781.0,"current_a":189.8,"temperature_c":41.0}}"#,
        m = 10_000.0 + kwh
    )
}

/// (messages up to 79 %, the completing message).
fn dc_session(sid: &str, t0: i64) -> (Vec<String>, String) {
    let mut before = vec![
        msg(sid, t0, "preparing", 0.0, 20.0, 0.0),
        msg(sid, t0 + 2_000, "suspended_evse", 0.0, 20.0, 0.0),
        msg(sid, t0 + 4_000, "suspended_ev", 0.0, 20.0, 0.0),
    ];
    let (mut kwh, mut soc, mut t) = (0.0, 20.0, t0 + 6_000);
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
    (before, msg(sid, t, "charging", 60.0, 80.0, kwh + 0.5))
}

fn telemetry_topic(charger: &str) -> String {
    format!("evlounge/{SITE}/charger/{charger}/telemetry")
}

// ---------------------------------------------------------------- 1. decode

fn bench_decode(r: &mut Report) -> anyhow::Result<()> {
    println!("== decode");
    // Realistic payloads: the simulator's own telemetry for a 1,000-charger site.
    let cfg = evlounge::sim::model::SimConfig::standard_site(
        SITE,
        "evlounge",
        1000,
        3,
        1_761_955_200_000,
    );
    let mut sim = evlounge::sim::model::SiteSim::new(cfg);
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut t = 1_761_955_200_000;
    while payloads.len() < 20_000 && t < 1_761_955_200_000 + 3_600_000 {
        t += 1000;
        payloads.extend(
            sim.advance_to(t)
                .into_iter()
                .filter(|m| m.topic.ends_with("/telemetry"))
                .map(|m| m.payload),
        );
    }
    // Plus fully populated DC payloads (every contract field, charging), as a third of the mix.
    let full: Vec<Vec<u8>> = (0..payloads.len() / 2)
        .map(|i| {
            let soc = 10.0 + (i % 70) as f64;
            msg(
                &format!("T-{i}"),
                1_761_955_200_000 + i as i64 * 1000,
                "charging",
                148.2 + (i % 50) as f64,
                soc,
                soc * 0.8,
            )
            .into_bytes()
        })
        .collect();
    payloads.extend(full);
    let avg_len = payloads.iter().map(Vec::len).sum::<usize>() as f64 / payloads.len() as f64;
    let recv = 1_761_955_300_000;
    // Warm-up, then timed passes for at least 2 s (at most 200 passes).
    let mut ok = 0u64;
    for p in &payloads {
        ok += u64::from(evlounge::ingest::decode::telemetry(p, recv).is_ok());
    }
    if ok != payloads.len() as u64 {
        bail!(
            "{} of {} payloads did not decode",
            payloads.len() as u64 - ok,
            payloads.len()
        );
    }
    let started = Instant::now();
    let mut n = 0u64;
    for _ in 0..200 {
        for p in &payloads {
            let d = evlounge::ingest::decode::telemetry(std::hint::black_box(p), recv);
            std::hint::black_box(&d);
            n += 1;
        }
        if started.elapsed() >= Duration::from_secs(2) {
            break;
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    r.add(
        "decode_msgs_per_s",
        "decode: contract telemetry, one core",
        Some(rate),
        "msg/s",
        Some(Cmp::AtLeast(500_000.0)),
        format!(
            "{} distinct payloads (simulator + full DC ones), {avg_len:.0} B average, {n} decodes",
            payloads.len()
        ),
    );
    r.detail(
        "decode",
        json!({"msgs_per_s": rate, "payloads": payloads.len(), "avg_bytes": avg_len}),
    );
    Ok(())
}

// ---------------------------------------------------------------- 2. ingest

struct IngestRun {
    published: u64,
    received: u64,
    rate: f64,
    pub_rate: f64,
    secs: f64,
    extra: Value,
}

const INGEST_CHARGERS: usize = 10_000;
/// Far more than the publisher can send: it then publishes as fast as it can.
const INGEST_RATE_HZ: f64 = 50.0;

/// Runs the load generator to completion.
async fn publish_load(
    broker: &Mosquitto,
    qos: u8,
    n: u64,
) -> anyhow::Result<evlounge::sim::publish::SimReport> {
    let opts = SimulateOptions {
        max_messages: Some(n),
        duration: Some(Duration::from_secs(180)),
        ..sim_opts(broker, INGEST_CHARGERS, INGEST_RATE_HZ, qos)
    };
    run_simulate(opts, std::future::pending::<()>()).await
}

/// A bare rumqttc subscriber counting telemetry: what broker + publisher can do here.
async fn ceiling(qos: u8, n: u64) -> anyhow::Result<IngestRun> {
    let broker = Mosquitto::start()?;
    let count = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let first = Arc::new(AtomicU64::new(u64::MAX));
    let last = Arc::new(AtomicU64::new(0));
    let (c, tot, f, l) = (count.clone(), total.clone(), first.clone(), last.clone());
    let bench_cpu0 = cpu_secs(std::process::id());
    let q = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let _sub = Client::connect(
        broker.port,
        "bench-ceiling",
        Some(("evlounge/#", q)),
        move |p| {
            if p.retain {
                return;
            }
            tot.fetch_add(1, Ordering::Relaxed);
            if p.topic.ends_with("/telemetry") {
                let now = t0.elapsed().as_nanos() as u64;
                f.fetch_min(now, Ordering::Relaxed);
                l.store(now, Ordering::Relaxed);
                c.fetch_add(1, Ordering::Relaxed);
            }
        },
    )
    .await?;
    let rep = publish_load(&broker, qos, n).await?;
    // Drained: no new message for 2 s (bounded at 60 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = (total.load(Ordering::Relaxed), Instant::now());
    while Instant::now() < deadline && seen.1.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = total.load(Ordering::Relaxed);
        if now != seen.0 {
            seen = (now, Instant::now());
        }
    }
    let received = count.load(Ordering::Relaxed);
    let secs = (last
        .load(Ordering::Relaxed)
        .saturating_sub(first.load(Ordering::Relaxed))) as f64
        / 1e9;
    Ok(IngestRun {
        published: rep.messages,
        received: total.load(Ordering::Relaxed),
        rate: if secs > 0.0 {
            received as f64 / secs
        } else {
            0.0
        },
        pub_rate: rep.msg_per_s,
        secs,
        extra: json!({
            "telemetry_received": received,
            "mosquitto_cpu_s": cpu_secs(broker.child.id()),
            // The bench's own process: the publisher and the bare subscriber.
            "bench_process_cpu_s (publisher + subscriber)": cpu_secs(std::process::id()) - bench_cpu0,
        }),
    })
}

/// The daemon with every output on, the same load; its rate from its own counter.
async fn daemon_ingest(
    qos: u8,
    n: u64,
    vm: &vm::Vm,
    hook: &Hook,
    tsdb: bool,
) -> anyhow::Result<IngestRun> {
    let broker = Mosquitto::start()?;
    let mut config = daemon_config(&broker, vm, hook, None);
    if !tsdb {
        // The same daemon without its time-series output (no spool, no VictoriaMetrics
        // ingesting on the same two cores).
        let start = config.find("[influx]").context("influx section")?;
        let end = config.find("[notify.webhook]").context("webhook section")?;
        config.replace_range(start..end, "");
    }
    let d = Daemon::start(&config)?;
    d.wait_ready().await?;
    // Some guests, so notifications are queued and delivered during the run.
    for i in 1..=50 {
        d.link(
            json!({"site": SITE, "charger": format!("hpc-{}", i * 5 - 4), "channel": "webhook",
                      "address": format!("ingest-guest-{i}"), "lang": "en"}),
        )
        .await?;
    }
    let cpu0 = cpu_secs(d.pid());
    let bench_cpu0 = cpu_secs(std::process::id());
    let vm_cpu0 = vm.pid().map_or(f64::NAN, cpu_secs);
    let opts = SimulateOptions {
        max_messages: Some(n),
        duration: Some(Duration::from_secs(180)),
        ..sim_opts(&broker, INGEST_CHARGERS, INGEST_RATE_HZ, qos)
    };
    let load = tokio::spawn(run_simulate(opts, std::future::pending::<()>()));
    // Poll the counter: (first value > 0, time), (last change, time).
    let mut first: Option<(f64, Instant)> = None;
    let mut last = (0.0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut rep = None;
    let mut load = Some(load);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let m = d.metrics().await;
        let v = metric(&m, "evlounge_mqtt_messages_total", "kind=\"telemetry\"");
        let now = Instant::now();
        if v > 0.0 && first.is_none() {
            first = Some((v, now));
        }
        if v != last.0 {
            last = (v, now);
        }
        if let Some(h) = load.as_ref() {
            if h.is_finished() {
                if let Some(h) = load.take() {
                    rep = Some(h.await.context("load task")??);
                }
            }
        }
        // Done: the publisher finished and the counter has not moved for 3 s.
        if rep.is_some() && last.1.elapsed() >= Duration::from_secs(3) {
            break;
        }
        if now > deadline {
            if let Some(h) = load.take() {
                h.abort();
            }
            bail!("daemon ingest did not finish within 300 s (telemetry {v})");
        }
    }
    let rep = rep.context("no load report")?;
    // Every point reaches the TSDB (from the spool, after the load if the TSDB lags).
    let quiet = Instant::now();
    if tsdb {
        let deadline = quiet + Duration::from_secs(120);
        loop {
            let m = d.metrics().await;
            let written = metric(&m, "evlounge_tsdb_points_written_total", "");
            if written >= last.0 {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "only {written} of {} telemetry points reached the TSDB within 120 s",
                    last.0
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // How long the points took beyond the 3 s of quiet after the last message.
    let tsdb_catch_up_s = quiet.elapsed().as_secs_f64();
    let m = d.metrics().await;
    let all_kinds = metric(&m, "evlounge_mqtt_messages_total", "");
    let (f, secs) = match first {
        Some((v, t)) => (v, last.1.duration_since(t).as_secs_f64()),
        None => (0.0, 0.0),
    };
    let rate = if secs > 0.0 { (last.0 - f) / secs } else { 0.0 };
    let (rss, hwm) = rss_mib(d.pid());
    Ok(IngestRun {
        published: rep.messages,
        received: all_kinds as u64,
        rate,
        pub_rate: rep.msg_per_s,
        secs,
        extra: json!({
            "telemetry_processed": last.0,
            "daemon_cpu_s": cpu_secs(d.pid()) - cpu0,
            "mosquitto_cpu_s": cpu_secs(broker.child.id()),
            // Its own work on the same two cores (the ceiling has nothing in its place).
            "victoriametrics_cpu_s": vm.pid().map_or(f64::NAN, cpu_secs) - vm_cpu0,
            "tsdb_catch_up_s": tsdb_catch_up_s,
            "events": metric(&m, "evlounge_events_total", ""),
            "tsdb_points_written": metric(&m, "evlounge_tsdb_points_written_total", ""),
            "decode_errors": metric(&m, "evlounge_decode_errors_total", ""),
            "commit_failures": metric(&m, "evlounge_commit_failures_total", ""),
            "batch_seconds_count": metric(&m, "evlounge_batch_seconds_count", ""),
            "batch_seconds_sum": metric(&m, "evlounge_batch_seconds_sum", ""),
            "daemon_thread_cpu_s": thread_cpu(d.pid()),
            "bench_process_cpu_s (publisher)": cpu_secs(std::process::id()) - bench_cpu0,
            "rss_mib": rss, "hwm_mib": hwm,
        }),
    })
}

impl IngestRun {
    /// This run's rate as a share of `ceiling`'s (0 when the ceiling measured nothing).
    fn ratio_to(&self, ceiling: &IngestRun) -> f64 {
        if ceiling.rate > 0.0 {
            self.rate / ceiling.rate
        } else {
            0.0
        }
    }
}

/// The run with the median rate (the upper one of the middle two for an even count).
fn median_run(mut runs: Vec<IngestRun>) -> IngestRun {
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

async fn bench_ingest(r: &mut Report) -> anyhow::Result<()> {
    println!("== ingest: broker ceiling vs daemon");
    daemon_bin()?;
    let n: u64 = env_num("BENCH_INGEST_N", 200_000);
    let vm = start_vm().await;
    let hook = Hook::start().await?;
    let mut details = serde_json::Map::new();
    // The ceiling swings by ±30 % between runs on a shared 2-core machine: ceiling and
    // daemon are measured alternately, `rounds` times each, and their medians compared.
    let rounds: usize = env_num("BENCH_INGEST_ROUNDS", 3).max(1);
    'qos: for qos in [0u8, 1] {
        let (mut cs, mut ds) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let c = ceiling(qos, n).await?;
            println!(
                "  round {round}: ceiling qos{qos}: {:.0} msg/s ({} of {} received, publisher {:.0} msg/s) {}",
                c.rate, c.received, c.published, c.pub_rate, c.extra
            );
            let dm = match daemon_ingest(qos, n, &vm, &hook, true).await {
                Ok(x) => x,
                Err(e) => {
                    r.error(&format!("ingest_qos{qos}"), &e);
                    continue 'qos;
                }
            };
            println!(
                "  round {round}: daemon qos{qos}: {:.0} msg/s ({} of {} processed, publisher {:.0} msg/s) {}",
                dm.rate, dm.received, dm.published, dm.pub_rate, dm.extra
            );
            cs.push(c);
            ds.push(dm);
        }
        let rounds_text = cs
            .iter()
            .zip(&ds)
            .map(|(c, d)| format!("{:.0}/{:.0}", d.rate, c.rate))
            .collect::<Vec<_>>()
            .join(", ");
        let round_ratios: Vec<f64> = cs.iter().zip(&ds).map(|(c, d)| d.ratio_to(c)).collect();
        let (c, dm) = (median_run(cs), median_run(ds));
        let ratio = dm.ratio_to(&c);
        let lost = dm.published.saturating_sub(dm.received);
        r.add(
            &format!("ceiling_qos{qos}"),
            &format!(
                "broker ceiling, QoS {qos} (bare subscriber, 10k chargers; median of {rounds})"
            ),
            Some(c.rate),
            "msg/s",
            None,
            format!(
                "{} of {} published received; publisher {:.0} msg/s",
                c.received, c.published, c.pub_rate
            ),
        );
        r.add(
            &format!("daemon_ingest_qos{qos}"),
            &format!("daemon ingest, QoS {qos}, all outputs on (median of {rounds})"),
            Some(dm.rate),
            "msg/s",
            Some(Cmp::AtLeast(50_000.0)),
            format!(
                "{} of {} published processed ({} lost); {:.1} s; daemon CPU {:.1} s",
                dm.received,
                dm.published,
                lost,
                dm.secs,
                dm.extra["daemon_cpu_s"].as_f64().unwrap_or(f64::NAN)
            ),
        );
        r.add(
            &format!("daemon_ratio_qos{qos}"),
            &format!("daemon / ceiling, QoS {qos} (medians)"),
            Some(ratio),
            "",
            (qos == 0).then_some(Cmp::AtLeast(0.8)),
            format!(
                "rounds (daemon/ceiling msg/s): {rounds_text}; per-round ratios {}",
                round_ratios
                    .iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        if qos == 0 {
            match daemon_ingest(qos, n, &vm, &hook, false).await {
                Ok(x) => {
                    println!(
                        "  daemon qos0 without tsdb: {:.0} msg/s ({} of {} processed) {}",
                        x.rate, x.received, x.published, x.extra
                    );
                    r.add(
                        "daemon_ingest_qos0_no_tsdb",
                        "daemon ingest, QoS 0, store + MQTT out + notifications (no TSDB output)",
                        Some(x.rate),
                        "msg/s",
                        None,
                        format!(
                            "{} of {} processed; {:.1} s; daemon CPU {:.1} s",
                            x.received,
                            x.published,
                            x.secs,
                            x.extra["daemon_cpu_s"].as_f64().unwrap_or(f64::NAN)
                        ),
                    );
                    r.add(
                        "daemon_ratio_qos0_no_tsdb",
                        "daemon (no TSDB output) / ceiling, QoS 0",
                        Some(x.ratio_to(&c)),
                        "",
                        None,
                        "",
                    );
                    details.insert(
                        "qos0_no_tsdb".into(),
                        json!({"msg_per_s": x.rate, "secs": x.secs, "extra": x.extra}),
                    );
                }
                Err(e) => r.error("ingest_qos0_no_tsdb", &e),
            }
        }
        details.insert(
            format!("qos{qos}"),
            json!({
                "ceiling": {"msg_per_s": c.rate, "published": c.published, "received": c.received,
                            "publisher_msg_per_s": c.pub_rate, "secs": c.secs, "extra": c.extra},
                "daemon": {"msg_per_s": dm.rate, "published": dm.published, "processed_all_kinds": dm.received,
                           "publisher_msg_per_s": dm.pub_rate, "secs": dm.secs, "extra": dm.extra},
                "ratio": ratio,
                "rounds": rounds,
                "round_ratios": round_ratios,
            }),
        );
    }
    r.detail("ingest", Value::Object(details));
    Ok(())
}

// ---------------------------------------------------------------- 3. latency + RSS

/// The `evlounge simulate` arguments for `o`, so a background simulator runs with exactly the
/// options [`sim_opts`] gives the in-process one (every field is named: a new option fails to
/// compile here instead of being silently left at the CLI's default).
fn simulate_args(o: &SimulateOptions) -> anyhow::Result<Vec<String>> {
    let SimulateOptions {
        mqtt_url,
        site,
        prefix,
        chargers,
        rate_hz,
        duration,
        speed,
        seed,
        qos,
        connections,
        max_messages,
        start_ms,
        format,
    } = o;
    if start_ms.is_some() {
        bail!("`evlounge simulate` has no flag for start_ms");
    }
    let mut a: Vec<String> = vec![
        "simulate".into(),
        format!("--mqtt={mqtt_url}"),
        format!("--site={site}"),
        format!("--prefix={prefix}"),
        format!("--chargers={chargers}"),
        format!("--rate={rate_hz}"),
        format!("--speed={speed}"),
        format!("--seed={seed}"),
        format!("--qos={qos}"),
        format!("--connections={connections}"),
        format!("--format={format}"),
    ];
    if let Some(d) = duration {
        a.push(format!("--duration={}ms", d.as_millis()));
    }
    if let Some(m) = max_messages {
        a.push(format!("--max={m}"));
    }
    Ok(a)
}

/// The background simulators' nice value (`BENCH_SIM_NICE`, default 10; 0 = the daemon's).
static SIM_NICE: std::sync::LazyLock<i32> =
    std::sync::LazyLock::new(|| env_num("BENCH_SIM_NICE", 10));

/// One background simulator: a `target/release/evlounge simulate` process, its stdout and
/// stderr in files of its own scratch dir. Dropped while it still runs (an error or a panic on
/// the way), it is killed, so no simulator outlives its run.
struct SimProc {
    site: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl SimProc {
    fn spawn(opts: &SimulateOptions) -> anyhow::Result<Self> {
        let bin = daemon_bin()?;
        let args = simulate_args(opts)?;
        let dir = scratch()?;
        let stdout = std::fs::File::create(dir.path().join("stdout"))?;
        let stderr = std::fs::File::create(dir.path().join("stderr"))?;
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        // Also gone when the bench dies without unwinding (SIGKILL, abort): the kernel sends
        // SIGKILL when the spawning thread exits (this runs on the thread that `block_on`s the
        // bench, which lives as long as the process).
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
        // Niced, on one worker thread: the chargers it stands for are remote devices, so it
        // should take the two cores only when the daemon and the broker leave them idle
        // (the report says how many messages it did publish).
        let nice = *SIM_NICE;
        // SAFETY: prctl(2) and setpriority(2) are async-signal-safe and touch no memory of
        // the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1
                    || libc::setpriority(libc::PRIO_PROCESS, 0, nice) == -1
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.env("TOKIO_WORKER_THREADS", "1");
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning `evlounge {}`", args.join(" ")))?;
        Ok(SimProc {
            site: opts.site.clone(),
            child,
            dir,
        })
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stderr_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
        s[s.len().saturating_sub(1500)..].to_string()
    }

    /// (messages, msg/s) from the line `evlounge simulate` prints on a clean exit:
    /// `evlounge: published {messages} messages in {secs} s ({rate} msg/s)` — its
    /// `SimReport` (messages the broker acknowledged; the rate rounded to whole msg/s).
    fn report(&self) -> Option<(u64, f64)> {
        let out = std::fs::read_to_string(self.dir.path().join("stdout")).ok()?;
        out.lines().rev().find_map(|l| {
            let rest = l.strip_prefix("evlounge: published ")?;
            let (n, rest) = rest.split_once(" messages in ")?;
            let rate = rest.split_once(" s (")?.1.strip_suffix(" msg/s)")?;
            Some((n.trim().parse().ok()?, rate.trim().parse().ok()?))
        })
    }
}

impl Drop for SimProc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Background load: `sites` × `per_site` chargers at 1 Hz, each site's simulator a separate
/// `evlounge simulate` process started `stagger` after the previous one (each simulator
/// spreads its chargers over the period, as real chargers report out of phase; "burst" in the
/// figures' ids names the one-simulator run, from before the simulator spread its load). Out
/// of the bench's process, so its 10k msg/s do not queue in the runtime that times the probes.
async fn start_background(
    broker: &Mosquitto,
    sites: &[String],
    per_site: usize,
    stagger: Duration,
) -> anyhow::Result<Vec<SimProc>> {
    let mut out: Vec<SimProc> = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(stagger).await;
        }
        let opts = SimulateOptions {
            duration: Some(Duration::from_secs(600)),
            site: site.clone(),
            connections: 1,
            ..sim_opts(broker, per_site, 1.0, 1)
        };
        // On an error the ones already started are dropped with `out`: killed.
        out.push(SimProc::spawn(&opts)?);
    }
    Ok(out)
}

/// An error if any background simulator has already exited (it would publish nothing more).
fn check_background(bg: &mut [SimProc]) -> anyhow::Result<()> {
    for p in bg.iter_mut() {
        if !p.running() {
            bail!(
                "simulator for site {} exited early; stderr tail:\n{}",
                p.site,
                p.stderr_tail()
            );
        }
    }
    Ok(())
}

/// SIGTERM to every simulator at once, then each one's report (as it prints it on exit),
/// added up: (messages published, msg/s).
async fn stop_background(mut bg: Vec<SimProc>) -> anyhow::Result<(u64, f64)> {
    check_background(&mut bg)?;
    for p in &bg {
        // Not reaped yet (just checked), so the pid is still this child's.
        sigterm(p.child.id());
    }
    // The simulator drains for up to 5 s after SIGTERM, then stops its connections (2 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut n, mut rate) = (0, 0.0);
    for p in &mut bg {
        let status = loop {
            match p.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(None) => bail!(
                    "simulator for site {} still running 20 s after SIGTERM; stderr tail:\n{}",
                    p.site,
                    p.stderr_tail()
                ),
                Err(e) => bail!("waiting for the simulator for site {}: {e}", p.site),
            }
        };
        let (m, r) = match (status.success(), p.report()) {
            (true, Some(x)) => x,
            _ => bail!(
                "simulator for site {} exited ({status}) without a report; stderr tail:\n{}",
                p.site,
                p.stderr_tail()
            ),
        };
        n += m;
        rate += r;
    }
    Ok((n, rate))
}

/// Scripted DC sessions on `probes` chargers `{tag}-{i}` of site `bench`, one at a time: the
/// session up to 79 % is applied first, then the completing message is timed to its
/// `charging_complete` event. Returns (latencies in ms, missed, broker round trips in ms):
/// before each completing message the same publisher sends a QoS 1 echo that a bare
/// subscriber times, the broker's own share of the path at that moment.
///
/// It runs on an OS thread of its own with a current-thread runtime: its MQTT subscriber and
/// publisher, its polls of the daemon's API and the arrival timestamps (taken in the
/// subscriber's callback) share no scheduler with anything else the bench runs.
async fn probe(
    d: &Daemon,
    broker: &Mosquitto,
    probes: usize,
    tag: &str,
) -> anyhow::Result<(Vec<f64>, usize, Vec<f64>)> {
    let (api, port, tag) = (d.base.clone(), broker.port, tag.to_string());
    let th = std::thread::Builder::new()
        .name("bench-probe".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("probe runtime")?;
            rt.block_on(probe_run(&api, port, probes, &tag))
        })
        .context("spawning the probe thread")?;
    tokio::task::spawn_blocking(move || th.join())
        .await
        .context("waiting for the probe thread")?
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
}

/// Milliseconds from `t0` to `key`'s arrival time in `arrivals` (set by a subscriber's
/// callback), waiting up to 10 s for it.
async fn arrival_ms<K: std::hash::Hash + Eq>(
    arrivals: &Mutex<HashMap<K, Instant>>,
    key: &K,
    t0: Instant,
) -> Option<f64> {
    let deadline = t0 + Duration::from_secs(10);
    loop {
        if let Some(at) = arrivals.lock().get(key) {
            return Some(at.duration_since(t0).as_secs_f64() * 1000.0);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// [`probe`]'s body, on the probe's own runtime (`api`: the daemon's HTTP base URL).
async fn probe_run(
    api: &str,
    port: u16,
    probes: usize,
    tag: &str,
) -> anyhow::Result<(Vec<f64>, usize, Vec<f64>)> {
    // Its own HTTP client: the daemon's pooled connections belong to the bench's runtime.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let events: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let ev = events.clone();
    let _sub = Client::connect(
        port,
        &format!("bench-probe-sub-{tag}"),
        Some((
            &format!("evlounge/{SITE}/events/charging_complete"),
            QoS::AtLeastOnce,
        )),
        move |p| {
            let at = Instant::now();
            if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                if let Some(c) = v["charger"].as_str() {
                    ev.lock().entry(c.to_string()).or_insert(at);
                }
            }
        },
    )
    .await?;
    let echoes: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let ec = echoes.clone();
    let echo_topic = format!("bench/echo/{tag}");
    let _echo_sub = Client::connect(
        port,
        &format!("bench-probe-echo-{tag}"),
        Some((&echo_topic, QoS::AtLeastOnce)),
        move |p| {
            let at = Instant::now();
            if let Some(i) = std::str::from_utf8(&p.payload)
                .ok()
                .and_then(|s| s.parse().ok())
            {
                ec.lock().entry(i).or_insert(at);
            }
        },
    )
    .await?;
    let pubc = Client::connect(port, &format!("bench-probe-pub-{tag}"), None, |_| {}).await?;
    let mut echo = Vec::new();
    let mut lat = Vec::new();
    let mut missed = 0;
    let mut sent = 0u64;
    // Each probe's scripted session spans ~15 min of message time, a minute after the
    // previous probe's start: all of them end in the past (a future `ts` is clock skew).
    let base = chrono::Utc::now().timestamp_millis() - (probes as i64 + 60) * 60_000;
    for i in 1..=probes {
        let charger = format!("{tag}-{i}");
        let topic = telemetry_topic(&charger);
        let (before, done) = dc_session(&format!("P-{tag}-{i}"), base + i as i64 * 60_000);
        for m in &before {
            pubc.client
                .publish(&topic, QoS::AtLeastOnce, false, m.clone())
                .await?;
            sent += 1;
        }
        pubc.wait_acked(sent, Duration::from_secs(30)).await?;
        // The daemon has applied the session so far (charging at 79 %).
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{api}/api/v1/chargers/{SITE}/{charger}");
        loop {
            let v: Option<Value> = match http.get(&url).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            let soc = v
                .as_ref()
                .and_then(|v| v["soc_pct"].as_f64().or(v["charger"]["soc_pct"].as_f64()));
            if soc.is_some_and(|s| s >= 78.9) {
                break;
            }
            if Instant::now() > deadline {
                bail!("probe {charger} not applied within 30 s: {v:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The broker's round trip just before: publisher → broker → a bare subscriber.
        let te = Instant::now();
        pubc.client
            .publish(&echo_topic, QoS::AtLeastOnce, false, i.to_string())
            .await?;
        sent += 1;
        echo.extend(arrival_ms(&echoes, &i, te).await);
        let t0 = Instant::now();
        let sent_at = chrono::Utc::now();
        pubc.client
            .publish(&topic, QoS::AtLeastOnce, false, done)
            .await?;
        sent += 1;
        let arrival = arrival_ms(&events, &charger, t0).await;
        if std::env::var_os("BENCH_TRACE_PROBES").is_some() {
            // For lining up with the daemon's log (its `event` line is the commit).
            eprintln!(
                "probe {charger} sent {} latency_ms {arrival:?}",
                sent_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
        }
        match arrival {
            Some(ms) => lat.push(ms),
            None => missed += 1,
        }
    }
    Ok((lat, missed, echo))
}

/// The disk's own fdatasync latency while a probe phase runs: every 20 ms, 4 KiB appended
/// to a file on the daemon's disk and fdatasync'd (what the daemon does per commit, twice).
struct DiskFloor {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Vec<f64>>>,
    _dir: tempfile::TempDir,
}

impl DiskFloor {
    fn start() -> anyhow::Result<Self> {
        let dir = scratch()?;
        let path = dir.path().join("fsync-probe");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-disk".into())
            .spawn(move || {
                use std::io::Write;
                let mut f = std::fs::File::create(&path)?;
                let block = vec![b'x'; 4096];
                let mut lat = Vec::new();
                while !st.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    f.write_all(&block)?;
                    f.sync_data()?;
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(lat)
            })?;
        Ok(DiskFloor {
            stop,
            thread,
            _dir: dir,
        })
    }

    fn finish(self) -> anyhow::Result<Vec<f64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the disk probe panicked"))?
    }
}

async fn bench_latency(r: &mut Report) -> anyhow::Result<()> {
    println!("== latency telemetry → charging_complete, RSS");
    daemon_bin()?;
    let probes: usize = env_num("BENCH_PROBES", 50);
    let vm = start_vm().await;
    let hook = Hook::start().await?;
    let broker = Mosquitto::start()?;
    let d = Daemon::start(&daemon_config(&broker, &vm, &hook, None))?;
    d.wait_ready().await?;
    let spread_sites: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();

    // 1k chargers (site b0), then 10k (b0..b9, started 100 ms apart): RSS and latency. Every
    // simulator is an `evlounge simulate` process; each probe runs on a thread of its own.
    let mut bg = start_background(&broker, &spread_sites[..1], 1000, Duration::ZERO).await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    check_background(&mut bg)?;
    let (rss1k, hwm1k) = rss_mib(d.pid());
    println!("  RSS at 1k chargers: {rss1k:.1} MiB (peak {hwm1k:.1})");
    let (n1, rate1) = stop_background(bg).await?;

    // The simulator as it is: one site of 10k chargers, all sending in the same millisecond.
    let tel = |m: &str| metric(m, "evlounge_mqtt_messages_total", "kind=\"telemetry\"");
    let p0 = tel(&d.metrics().await);
    let mut bg = start_background(&broker, &[SITE.to_string()], 10_000, Duration::ZERO).await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    check_background(&mut bg)?;
    let cpu0 = cpu_secs(d.pid());
    let t_cpu = Instant::now();
    let disk = DiskFloor::start()?;
    let (lat_b, missed_b, echo_b) = probe(&d, &broker, probes, "probe-b").await?;
    let disk_b = disk.finish()?;
    let cpu = (cpu_secs(d.pid()) - cpu0) / t_cpu.elapsed().as_secs_f64();
    let (rss10k, hwm10k) = rss_mib(d.pid());
    let (nb, rateb) = stop_background(bg).await?;
    let processed_b = tel(&d.metrics().await) - p0;
    println!(
        "  RSS at 10k chargers: {rss10k:.1} MiB (peak {hwm10k:.1}); daemon CPU {:.0} % of a core; \
         {processed_b} of {nb} published processed",
        cpu * 100.0
    );

    // Spread: 10 sites × 1k chargers, each simulator started 100 ms after the previous.
    let p1 = tel(&d.metrics().await);
    let mut bg = start_background(&broker, &spread_sites, 1000, Duration::from_millis(100)).await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    check_background(&mut bg)?;
    let hist_b = histograms(&d.metrics().await);
    let disk = DiskFloor::start()?;
    let (lat, missed, echo) = probe(&d, &broker, probes, "probe-s").await?;
    let disk_s = disk.finish()?;
    let (n10, rate10) = stop_background(bg).await?;
    let processed_s = tel(&d.metrics().await) - p1;
    println!("  spread: {processed_s} of {n10} published processed");
    if missed + missed_b > 0 {
        r.detail("latency_daemon_log_tail", Value::String(d.log_tail()));
    }

    let s = stats(lat.clone());
    let sb = stats(lat_b.clone());
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    r.add(
        "latency_complete_p50_ms",
        "telemetry → charging_complete p50 (10 simulator processes × 1k chargers at 1 Hz; after the one-simulator run)",
        s["p50"].as_f64(),
        "ms",
        None,
        format!(
            "{} probes ({missed} missed); 10 sites × 1k chargers, each a separate `evlounge simulate` process, started 100 ms apart ({rate10:.0} msg/s); probe on its own thread and runtime; p90 {:.1} ms, max {:.1} ms",
            lat.len(), f(&s, "p90"), f(&s, "max")
        ),
    );
    r.add(
        "latency_complete_p99_ms",
        "telemetry → charging_complete p99 (10 simulator processes × 1k chargers at 1 Hz)",
        s["p99"].as_f64(),
        "ms",
        Some(Cmp::Below(20.0)),
        "",
    );
    r.add(
        "latency_complete_burst_p50_ms",
        "telemetry → charging_complete p50 (one simulator process of 10k chargers at 1 Hz)",
        sb["p50"].as_f64(),
        "ms",
        None,
        format!(
            "{} probes ({missed_b} missed); one `evlounge simulate` process; it spreads its 10k chargers over each second ({rateb:.0} msg/s); probe on its own thread and runtime; p90 {:.1} ms",
            lat_b.len(), f(&sb, "p90")
        ),
    );
    r.add(
        "latency_complete_burst_p99_ms",
        "telemetry → charging_complete p99 (one simulator process of 10k chargers at 1 Hz)",
        sb["p99"].as_f64(),
        "ms",
        Some(Cmp::Below(20.0)),
        format!("max {:.1} ms", f(&sb, "max")),
    );
    // What the probe's path shares with everything else in the same minutes: the broker
    // (two of its hops are the broker's) and the disk (two fdatasyncs per commit).
    for (id, phase, e, k) in [
        ("burst", "one simulator of 10k", &echo_b, &disk_b),
        ("spread", "10 simulators × 1k", &echo, &disk_s),
    ] {
        let (se, sk) = (stats(e.clone()), stats(k.clone()));
        r.add(
            &format!("broker_echo_{id}_p99_ms"),
            &format!("floor: broker round trip p99 (QoS 1, publisher → bare subscriber, just before each probe; {phase})"),
            se["p99"].as_f64(),
            "ms",
            None,
            format!(
                "{} echoes; p50 {:.1} ms, max {:.1} ms",
                e.len(),
                f(&se, "p50"),
                f(&se, "max")
            ),
        );
        r.add(
            &format!("disk_fdatasync_{id}_p99_ms"),
            &format!("floor: 4 KiB append + fdatasync p99 on the daemon's disk, every 20 ms during the probes ({phase})"),
            sk["p99"].as_f64(),
            "ms",
            None,
            format!(
                "{} syncs; p50 {:.2} ms, max {:.1} ms",
                k.len(),
                f(&sk, "p50"),
                f(&sk, "max")
            ),
        );
    }
    r.add(
        "rss_1k_mib",
        "daemon RSS, 1k chargers",
        Some(rss1k),
        "MiB",
        None,
        format!("peak {hwm1k:.1} MiB after 20 s at 1 Hz (one `evlounge simulate` process)"),
    );
    r.add(
        "rss_10k_mib",
        "daemon RSS, 10k chargers",
        Some(rss10k),
        "MiB",
        Some(Cmp::AtMost(64.0)),
        format!(
            "one site of 10k chargers (one `evlounge simulate` process); peak {hwm10k:.1} MiB; daemon CPU {:.0} % of a core at {rateb:.0} msg/s",
            cpu * 100.0
        ),
    );
    r.detail(
        "latency",
        json!({
            "floors": {"burst": {"broker_echo_ms": stats(echo_b.clone()), "disk_fdatasync_ms": stats(disk_b.clone())},
                       "spread": {"broker_echo_ms": stats(echo.clone()), "disk_fdatasync_ms": stats(disk_s.clone())}},
            "spread": {"complete_ms": s, "missed": missed, "samples_ms": lat,
                       "messages": n10, "msg_per_s": rate10, "telemetry_processed": processed_s},
            "burst": {"complete_ms": sb, "missed": missed_b, "samples_ms": lat_b,
                      "messages": nb, "msg_per_s": rateb, "telemetry_processed": processed_b},
            "rss_mib": {"1k": rss1k, "1k_peak": hwm1k, "10k": rss10k, "10k_peak": hwm10k},
            "daemon_cpu_share_10k": cpu,
            "histograms_after_burst": hist_b,
            "histograms_at_end": histograms(&d.metrics().await),
            "wal_pages_at_end": metric(&d.metrics().await, "evlounge_wal_pages", ""),
            "counters_at_end": counters(&d.metrics().await),
            "daemon_thread_cpu_s": thread_cpu(d.pid()),
            "load_1k": {"messages": n1, "msg_per_s": rate1},
        }),
    );
    Ok(())
}

/// The daemon's counters (`*_total`), by name and labels.
fn counters(text: &str) -> Value {
    let mut out = serde_json::Map::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((name, v)) = line.rsplit_once(' ') {
            let base = name.split('{').next().unwrap_or(name);
            if base.ends_with("_total") {
                if let Ok(v) = v.parse::<f64>() {
                    out.insert(name.to_string(), json!(v));
                }
            }
        }
    }
    Value::Object(out)
}

/// The daemon's latency histograms (cumulative buckets), for where a tail comes from.
fn histograms(text: &str) -> Value {
    let mut out = serde_json::Map::new();
    for name in [
        "evlounge_batch_seconds",
        "evlounge_processing_latency_seconds",
        "evlounge_event_publish_seconds",
        "evlounge_commit_sync_seconds",
        "evlounge_checkpoint_seconds",
    ] {
        let buckets: Vec<Value> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket")))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let v: f64 = l.rsplit(' ').next()?.parse().ok()?;
                Some(json!([le, v]))
            })
            .collect();
        out.insert(name.to_string(), Value::Array(buckets));
    }
    Value::Object(out)
}

// ---------------------------------------------------------------- 4. notify

struct NotifyRun {
    lat_ms: Vec<f64>,
    missing: usize,
    extra: Value,
}

async fn notify_run(
    vm: &vm::Vm,
    guests: usize,
    spread: Duration,
    dead_email: bool,
) -> anyhow::Result<NotifyRun> {
    let broker = Mosquitto::start()?;
    let hook = Hook::start().await?;
    // A port nothing listens on: every e-mail attempt is refused.
    let email = dead_email.then(free_port);
    let d = Daemon::start(&daemon_config(&broker, vm, &hook, email))?;
    d.wait_ready().await?;
    let chargers: Vec<String> = (1..=guests).map(|i| format!("n-{i}")).collect();
    let t_link = Instant::now();
    for (i, c) in chargers.iter().enumerate() {
        d.link(json!({"site": SITE, "charger": c, "channel": "webhook",
                      "address": format!("guest-ref-{i}"), "lang": "en"}))
            .await?;
        if dead_email {
            d.link(json!({"site": SITE, "charger": c, "channel": "email",
                          "address": format!("guest-{i}@example.com"), "lang": "it"}))
                .await?;
        }
    }
    let link_s = t_link.elapsed().as_secs_f64();
    let pubc = Client::connect(broker.port, "bench-notify-pub", None, |_| {}).await?;
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let mut finals = Vec::with_capacity(guests);
    let mut sent = 0u64;
    for (i, c) in chargers.iter().enumerate() {
        let (before, done) = dc_session(&format!("N-{i}"), base);
        for m in before {
            pubc.client
                .publish(telemetry_topic(c), QoS::AtLeastOnce, false, m)
                .await?;
            sent += 1;
        }
        finals.push((c.clone(), done));
    }
    pubc.wait_acked(sent, Duration::from_secs(120)).await?;
    // Every charger at 79 % before the completions start.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = d.get_json("/api/v1/chargers").await;
        let ready = v
            .as_ref()
            .and_then(|v| v["chargers"].as_array().cloned())
            .map_or(0, |l| {
                l.iter()
                    .filter(|c| {
                        c["charger"].as_str().is_some_and(|s| s.starts_with("n-"))
                            && c["soc_pct"].as_f64().is_some_and(|s| s >= 78.9)
                    })
                    .count()
            });
        if ready >= guests {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {guests} sessions applied within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let nearly_complete deliveries from the build-up drain (bounded).
    let settle = Instant::now() + Duration::from_secs(30);
    let mut seen = (hook.log.lock().len(), Instant::now());
    while Instant::now() < settle && seen.1.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = hook.log.lock().len();
        if n != seen.0 {
            seen = (n, Instant::now());
        }
    }
    let t_start = tokio::time::Instant::now();
    let step = spread / guests as u32;
    let mut published: HashMap<String, Instant> = HashMap::new();
    for (i, (c, done)) in finals.into_iter().enumerate() {
        tokio::time::sleep_until(t_start + step * i as u32).await;
        published.insert(c.clone(), Instant::now());
        pubc.client
            .publish(telemetry_topic(&c), QoS::AtLeastOnce, false, done)
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while hook.count("charging_complete") < guests && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lat = Vec::new();
    let mut got: HashMap<String, Instant> = HashMap::new();
    for (c, k, at) in hook.log.lock().iter() {
        if k == "charging_complete" {
            got.entry(c.clone()).or_insert(*at);
        }
    }
    for (c, t) in &published {
        if let Some(at) = got.get(c) {
            lat.push(at.saturating_duration_since(*t).as_secs_f64() * 1000.0);
        }
    }
    let m = d.metrics().await;
    let missing = guests - lat.len();
    if missing > 0 {
        eprintln!(
            "  {missing} webhooks missing; daemon log tail:\n{}",
            d.log_tail()
        );
    }
    Ok(NotifyRun {
        lat_ms: lat,
        missing,
        extra: json!({
            "link_s": link_s,
            "webhook_delivered": metric(&m, "evlounge_notifications_total", "channel=\"webhook\",outcome=\"delivered\""),
            "email_outcomes": m.lines().filter(|l| l.starts_with("evlounge_notifications_total") && l.contains("email")).collect::<Vec<_>>(),
            "outbox": outbox_summary(&d),
        }),
    })
}

/// Per channel: notifications by status and attempts made, read from the daemon's store.
fn outbox_summary(d: &Daemon) -> Value {
    let path = evlounge::store::db_path(&d.dir.path().join("data"));
    let q = || -> rusqlite::Result<Vec<Value>> {
        let c = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        c.busy_timeout(Duration::from_secs(5))?;
        let mut st = c.prepare(
            "SELECT channel, status, count(*), sum(attempts) FROM notifications GROUP BY 1, 2",
        )?;
        let rows = st.query_map([], |r| {
            Ok(
                json!({"channel": r.get::<_, String>(0)?, "status": r.get::<_, String>(1)?,
                      "count": r.get::<_, i64>(2)?, "attempts": r.get::<_, i64>(3)?}),
            )
        })?;
        rows.collect()
    };
    q().map_or_else(|e| json!({"error": e.to_string()}), Value::from)
}

async fn bench_notify(r: &mut Report) -> anyhow::Result<()> {
    println!("== notify: event → webhook");
    daemon_bin()?;
    let spread = Duration::from_secs(env_num("BENCH_NOTIFY_SPREAD_S", 60));
    let guests = 1000;
    let vm = start_vm().await;
    let mut details = serde_json::Map::new();
    for (dead, id, label) in [
        (false, "notify_webhook", "webhook only"),
        (true, "notify_webhook_email_down", "e-mail channel down"),
    ] {
        let run = match notify_run(&vm, guests, spread, dead).await {
            Ok(x) => x,
            Err(e) => {
                r.error(id, &e);
                continue;
            }
        };
        let s = stats(run.lat_ms.clone());
        println!("  {label}: {s} {}", run.extra);
        r.add(
            &format!("{id}_p50_ms"),
            &format!(
                "event → webhook p50, 1,000 guests / {} s, {label}",
                spread.as_secs()
            ),
            s["p50"].as_f64(),
            "ms",
            None,
            format!(
                "{} delivered, {} missing; p90 {:.1} ms, max {:.1} ms",
                run.lat_ms.len(),
                run.missing,
                s["p90"].as_f64().unwrap_or(f64::NAN),
                s["max"].as_f64().unwrap_or(f64::NAN)
            ),
        );
        r.add(
            &format!("{id}_p99_ms"),
            &format!(
                "event → webhook p99, 1,000 guests / {} s, {label}",
                spread.as_secs()
            ),
            s["p99"].as_f64(),
            "ms",
            Some(Cmp::Below(50.0)),
            if dead {
                format!(
                    "1,000 e-mail guests too, SMTP port refused; outbox {}",
                    run.extra["outbox"]
                )
            } else {
                String::new()
            },
        );
        details.insert(
            id.to_string(),
            json!({"latency_ms": s, "missing": run.missing, "extra": run.extra}),
        );
    }
    r.detail("notify", Value::Object(details));
    Ok(())
}

// ---------------------------------------------------------------- 5. callgrind

fn bench_callgrind(r: &mut Report) -> anyhow::Result<()> {
    println!("== callgrind: instructions per message (fixed replay)");
    let replay = release_bin(
        "target/release/examples/replay",
        "cargo build --release --example replay",
    )?;
    let n: u64 = env_num("BENCH_REPLAY_N", 100_000);
    let dir = scratch()?;
    let out = dir.path().join("callgrind.out");
    // Only the commit thread's loop is counted: stream generation and store setup are not.
    let o = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--toggle-collect=*Processor*run*")
        .arg(&replay)
        .arg(n.to_string())
        .output()
        .context("valgrind not runnable (apt-get install valgrind)")?;
    if !o.status.success() {
        bail!(
            "valgrind failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let text = std::fs::read_to_string(&out)?;
    let total: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no totals in the callgrind output")?;
    if total <= 0.0 {
        bail!("callgrind counted nothing: Processor::run not found by --toggle-collect");
    }
    let stdout = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let per = total / n as f64;
    r.add(
        "callgrind_instr_per_msg",
        "instructions per message (decode + domain + commit, callgrind)",
        Some(per),
        "instr",
        None,
        format!("{n} simulator messages, 200 chargers; {total:.0} instructions in Processor::run"),
    );
    r.detail(
        "callgrind",
        json!({"messages": n, "instructions": total, "per_message": per, "replay": stdout}),
    );
    Ok(())
}

// ---------------------------------------------------------------- main

fn main() {
    // cargo passes `--bench`; anything else starting with `-` is ignored too.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut cmds: Vec<String> = Vec::new();
    for a in &args {
        match a.as_str() {
            "all" => cmds.extend(COMMANDS.iter().map(|s| s.to_string())),
            "rss" => cmds.push("latency".into()),
            c if COMMANDS.contains(&c) => cmds.push(c.to_string()),
            other => {
                eprintln!(
                    "unknown measurement {other:?}; use: all {} rss",
                    COMMANDS.join(" ")
                );
                std::process::exit(2);
            }
        }
    }
    if cmds.is_empty() {
        eprintln!(
            "usage: cargo bench --bench suite -- all | {} | rss",
            COMMANDS.join(" | ")
        );
        std::process::exit(2);
    }
    cmds.dedup();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let mut report = Report::default();
    for c in &cmds {
        let res = match c.as_str() {
            "decode" => bench_decode(&mut report),
            "ingest" => rt.block_on(bench_ingest(&mut report)),
            "latency" => rt.block_on(bench_latency(&mut report)),
            "notify" => rt.block_on(bench_notify(&mut report)),
            "callgrind" => bench_callgrind(&mut report),
            _ => Ok(()),
        };
        if let Err(e) = res {
            report.error(c, &e);
        }
    }
    match report.write(&cmds) {
        Ok(md) => println!("\n{md}"),
        Err(e) => {
            eprintln!("writing results: {e:#}");
            std::process::exit(1);
        }
    }
}
