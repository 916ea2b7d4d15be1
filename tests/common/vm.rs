//! A real VictoriaMetrics for tests: `apt-get install -y victoria-metrics`
//! (binary `/usr/bin/victoria-metrics`, or set `VM_BIN`). It accepts the InfluxDB v2 write
//! API and exports `<measurement>_<field>` series.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Vm {
    child: Option<Child>,
    pub port: u16,
    data: PathBuf,
    dedup: bool,
    _tmp: tempfile::TempDir,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub values: Vec<f64>,
    pub timestamps: Vec<i64>,
}

fn bin() -> String {
    let b = std::env::var("VM_BIN").unwrap_or_else(|_| "/usr/bin/victoria-metrics".into());
    assert!(
        Path::new(&b).exists(),
        "VictoriaMetrics not found at {b}: apt-get install -y victoria-metrics (or set VM_BIN)"
    );
    b
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Vm {
    /// Starts on a free port; `dedup` makes same series + timestamp overwrite (InfluxDB
    /// semantics), so retried batches are not counted twice.
    pub async fn start(dedup: bool) -> Vm {
        Vm::start_in(dedup, None).await
    }

    /// As [`Vm::start`], with its storage under `parent` (the system temp dir when `None`).
    pub async fn start_in(dedup: bool, parent: Option<&Path>) -> Vm {
        let tmp = match parent {
            Some(p) => tempfile::tempdir_in(p),
            None => tempfile::tempdir(),
        }
        .expect("tempdir");
        let mut vm = Vm {
            child: None,
            port: 0,
            data: tmp.path().join("vm"),
            dedup,
            _tmp: tmp,
        };
        // The port can be taken between probe and bind: retry on another.
        for _ in 0..5 {
            vm.port = free_port();
            if vm.launch().await {
                return vm;
            }
        }
        panic!("VictoriaMetrics did not start");
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn url(&self) -> url::Url {
        url::Url::parse(&format!("http://127.0.0.1:{}", self.port)).expect("url")
    }

    async fn launch(&mut self) -> bool {
        let mut cmd = Command::new(bin());
        cmd.arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .arg(format!("-storageDataPath={}", self.data.display()))
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.dedup {
            cmd.arg("-dedup.minScrapeInterval=1ms");
        }
        let mut child = cmd.spawn().expect("spawn victoria-metrics");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            let health = format!("http://127.0.0.1:{}/health", self.port);
            if let Ok(r) = client.get(&health).send().await {
                if r.status().is_success() {
                    self.child = Some(child);
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Graceful stop (SIGTERM): VictoriaMetrics flushes what it acknowledged.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Same port, same data.
    pub async fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.launch().await {
                return;
            }
        }
        panic!("VictoriaMetrics did not restart on port {}", self.port);
    }

    /// Series matching `match` after a force flush.
    pub async fn export(&self, matcher: &str) -> Vec<Series> {
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{}", self.port);
        client
            .get(format!("{base}/internal/force_flush"))
            .send()
            .await
            .expect("force_flush");
        let body = client
            .get(format!("{base}/api/v1/export"))
            .query(&[("match[]", matcher)])
            .send()
            .await
            .expect("export")
            .text()
            .await
            .expect("export body");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("export json");
                Series {
                    labels: v["metric"]
                        .as_object()
                        .expect("metric")
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect(),
                    values: v["values"]
                        .as_array()
                        .expect("values")
                        .iter()
                        .map(|x| x.as_f64().expect("f64"))
                        .collect(),
                    timestamps: v["timestamps"]
                        .as_array()
                        .expect("timestamps")
                        .iter()
                        .map(|x| x.as_i64().expect("i64"))
                        .collect(),
                }
            })
            .collect()
    }

    /// Total samples of one metric name, polled until it reaches `want` or the deadline
    /// passes (VictoriaMetrics makes fresh samples searchable asynchronously).
    pub async fn wait_samples(&self, name: &str, want: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let n: usize = self
                .export(&format!("{{__name__=\"{name}\"}}"))
                .await
                .iter()
                .map(|s| s.values.len())
                .sum();
            if n >= want || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
