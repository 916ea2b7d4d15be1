//! `evlounge demo` with nothing installed: starts in seconds, serves the API and pages, and
//! at high speed produces a `charging_complete` (and a guest notification) in bounded time.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{http_get, wait_for_async, MqttClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_a_site_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(harness::bin())
        .args([
            "demo",
            "--speed",
            "120",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut base = None;
    let mut broker = None;
    while base.is_none() || broker.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("demo prints its URLs");
        if let Some(a) = line.strip_prefix("evlounge: listening on ") {
            base = Some(a.to_string());
        }
        if let Some(b) = line.strip_prefix("evlounge: broker mqtt://") {
            broker = Some(b.to_string());
        }
    }
    let base = base.unwrap();
    let port: u16 = broker.unwrap().rsplit(':').next().unwrap().parse().unwrap();
    let sub = MqttClient::connect(
        port,
        "t-demo-sub",
        &["evlounge/milano/events/#", "evlounge/milano/notify/#"],
    )
    .await;

    let chargers = wait_for_async(
        "six chargers in the API",
        Duration::from_secs(30),
        || async {
            let (code, body) = http_get(&format!("{base}/api/v1/chargers"), None)?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let n = v["chargers"].as_array()?.len();
            (code == 200 && n == 6).then_some(v)
        },
    )
    .await;
    assert!(chargers["chargers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["bay"] == "Bay 1"));
    let (code, _) = http_get(&format!("{base}/healthz"), None).unwrap();
    assert_eq!(code, 200);
    let (code, board) = http_get(&format!("{base}/"), None).unwrap();
    assert_eq!(code, 200);
    assert!(
        board.contains("<html") && board.contains("/assets/board.js"),
        "the lounge board: {board}"
    );
    let (code, js) = http_get(&format!("{base}/assets/common.js"), None).unwrap();
    assert_eq!(code, 200);
    assert!(
        js.contains("/api/v1/events"),
        "the board updates live over SSE"
    );
    wait_for_async("a charging_complete", Duration::from_secs(120), || async {
        (sub.count("/events/charging_complete") >= 1).then_some(())
    })
    .await;
    wait_for_async(
        "a guest notification on the MQTT channel",
        Duration::from_secs(60),
        || async { (sub.count("/notify/") >= 1).then_some(()) },
    )
    .await;
    let n = &sub.messages("/notify/")[0];
    assert!(n["kind"].is_string() && n["event_id"].is_string(), "{n}");
    let _ = child.kill();
    let _ = child.wait();
}
