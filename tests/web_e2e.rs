//! The pages in a real browser: headless Chromium driven by `tests/e2e/run.mjs`
//! (playwright-core) against the real daemon and Mosquitto. The board turns a bay "ready"
//! live, a guest subscribes on the bay page and gets the MQTT notification, and the staff
//! dashboard logs in and draws its charts. Screenshots go to `target/e2e-artifacts/`.
//!
//! Needs `node`, `/usr/bin/chromium` (or `EVL_CHROMIUM`) and `npm ci --prefix tests/e2e`.
//! Without them the test is skipped loudly, except under `CI=true`, where it fails.

mod harness;
mod web_support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{wait_for_async, Mosquitto, MqttClient};
use web_support::*;

fn missing_tools(e2e: &Path, chromium: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node (apt-get install nodejs npm)".to_string());
    }
    if !chromium.exists() {
        missing.push(format!("{} (apt-get install chromium)", chromium.display()));
    }
    if !e2e.join("node_modules/playwright-core").exists() {
        missing.push("playwright-core (npm ci --prefix tests/e2e)".to_string());
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_work_in_a_real_browser() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let e2e = root.join("tests/e2e");
    let chromium = std::env::var_os("EVL_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let missing = missing_tools(&e2e, &chromium);
    if !missing.is_empty() {
        let msg = format!("browser e2e needs: {}", missing.join(", "));
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("\n!!!!!!!! SKIPPING web_e2e: {msg} !!!!!!!!\n");
        return;
    }
    let artifacts = root.join("target/e2e-artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);

    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(
        dir.path(),
        &broker,
        &site_config(&broker, true),
        &format!("staff_token = {TOKEN:?}\nguest_channels = [\"email\", \"ntfy\", \"mqtt\"]"),
    )
    .await;
    let guest = MqttClient::connect(broker.port, "t-guest", &["evlounge/milano/notify/#"]).await;
    let publ = MqttClient::connect(broker.port, "t-pub", &[]).await;

    // A car is charging on hpc-3 when the guest scans the QR code.
    let script = dc_session("T-E2E", base_ts());
    for m in &script.before {
        publ.publish(TOPIC, m.clone()).await;
    }
    publ.wait_acked().await;
    wait_for_async("hpc-3 charging", Duration::from_secs(30), || async {
        let v = d.get_json("/api/v1/chargers/milano/hpc-3")?;
        (v["status"] == "charging").then_some(())
    })
    .await;

    let mut node = Command::new("node")
        .arg(e2e.join("run.mjs"))
        .current_dir(&e2e)
        .env("EVL_BASE", &d.base)
        .env("EVL_TOKEN", TOKEN)
        .env("EVL_ARTIFACTS", &artifacts)
        .env("EVL_CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let mut stdin = node.stdin.take().expect("stdin");
    let stdout = node.stdout.take().expect("stdout");
    let stderr = node.stderr.take().expect("stderr");
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });

    let mut lines = Vec::new();
    let mut linked = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let line = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(_) => {
                let _ = node.kill();
                panic!(
                    "browser run timed out; output so far:\n{}",
                    lines.join("\n")
                );
            }
        };
        eprintln!("e2e: {line}");
        lines.push(line.clone());
        if line == "LINKED" {
            linked = true;
        }
        if line == "PHASE complete" {
            assert!(linked, "the guest linked before completion");
            // The guest's link is bound to the open session before it completes.
            for m in &script.after {
                publ.publish(TOPIC, m.clone()).await;
            }
            publ.wait_acked().await;
            writeln!(stdin, "GO complete").expect("answer node");
        }
    }
    let status = node.wait().expect("node exit");
    let err = err_thread.join().unwrap_or_default();
    assert!(
        status.success() && lines.iter().any(|l| l == "E2E OK"),
        "browser run failed ({status}):\n{}\n{err}\ndaemon log:\n{}",
        lines.join("\n"),
        d.log()
    );

    // The guest's MQTT notification for the completion.
    let note = wait_for_async(
        "the guest's notification",
        Duration::from_secs(30),
        || async {
            guest
                .messages("evlounge/milano/notify/guest-e2e")
                .into_iter()
                .find(|m| m["kind"] == "charging_complete")
        },
    )
    .await;
    assert_eq!(note["event_id"].as_str().map(str::len), Some(16), "{note}");

    for shot in [
        "bay-form.png",
        "bay-linked.png",
        "bay-ready.png",
        "board-charging.png",
        "board-ready.png",
        "staff-login.png",
        "staff-dashboard.png",
    ] {
        let meta = std::fs::metadata(artifacts.join(shot)).expect(shot);
        assert!(meta.len() > 5_000, "{shot} is an image");
    }
}
