//! Charging sessions end to end against a real Mosquitto: one `charging_complete` per
//! session, idempotent under redelivery, SIGKILL and broker outages.

mod harness;

use std::time::Duration;

use harness::{base_ts, dc_session, wait_for_async, Daemon, Mosquitto, MqttClient};

const TOPIC: &str = "evlounge/milano/charger/hpc-3/telemetry";

fn config(broker: &Mosquitto) -> String {
    format!(
        r#"[mqtt]
url = "{}"
state_min_interval = "100ms"
[thresholds]
suspended_ev_grace = "60s"
low_power_for = "3s"
[[sites]]
id = "milano"
timezone = "Europe/Rome"
  [[sites.chargers]]
  id = "hpc-3"
  bay = "Bay 3"
  max_kw = 270.0
"#,
        broker.url()
    )
}

async fn wait_session_closed(d: &Daemon) -> serde_json::Value {
    wait_for_async(
        "session closed in /api/v1/sessions",
        Duration::from_secs(30),
        || async {
            let v = d.get_json("/api/v1/sessions?site=milano&charger=hpc-3")?;
            let s = v["sessions"].as_array()?.first()?.clone();
            (!s["ended"].is_null()).then_some(s)
        },
    )
    .await
}

async fn wait_events(sub: &MqttClient, kind: &str, n: usize) {
    wait_for_async(
        &format!("{n} {kind} event(s)"),
        Duration::from_secs(30),
        || async { (sub.count(&format!("/events/{kind}")) >= n).then_some(()) },
    )
    .await
}

/// Absence can only be checked over a period: one publisher sweep interval (2 s) and a bit.
async fn quiet_period() {
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_session_yields_one_completion_and_a_session_row() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &config(&broker));
    let sub = MqttClient::connect(
        broker.port,
        "t-sub",
        &["evlounge/milano/events/#", "evlounge/milano/state/#"],
    )
    .await;
    let publ = MqttClient::connect(broker.port, "t-pub", &[]).await;
    let (a, b) = dc_session(base_ts());
    for m in a.iter().chain(b.iter()) {
        publ.publish(TOPIC, m.clone()).await;
    }
    publ.wait_acked().await;
    let s = wait_session_closed(&d).await;
    wait_events(&sub, "charging_complete", 1).await;
    quiet_period().await;
    assert_eq!(sub.count("/events/charging_complete"), 1);
    assert_eq!(sub.count("/events/charging_started"), 1);
    assert_eq!(sub.count("/events/charging_stopped"), 0);
    let ev = &sub.messages("/events/charging_complete")[0];
    assert_eq!(ev["kind"], "charging_complete");
    assert_eq!(ev["site"], "milano");
    assert_eq!(ev["charger"], "hpc-3");
    assert_eq!(ev["bay"], "Bay 3");
    assert_eq!(ev["session_id"], "T-1842");
    assert_eq!(ev["event_id"].as_str().map(str::len), Some(16));
    assert!(ev["energy_kwh"].as_f64().unwrap() > 40.0, "{ev}");
    assert_eq!(ev["soc_pct"], 80.0);
    assert!(ev["peak_kw"].as_f64().unwrap() >= 250.0);
    assert!(ev["duration_s"].as_f64().unwrap() > 600.0);
    // the session row
    assert_eq!(s["outcome"], "completed", "{s}");
    assert_eq!(s["session_id"], "T-1842");
    assert_eq!(s["soc_start"], 20.0);
    assert_eq!(s["soc_end"], 80.0);
    assert!(s["completed"].is_string());
    assert!(s["energy_kwh"].as_f64().unwrap() > 40.0);
    // retained live state was published
    assert!(sub.count("/state/charger/hpc-3") >= 1);
    let c = d.get_json("/api/v1/chargers/milano/hpc-3").unwrap();
    assert_eq!(c["status"], "available");
    assert_eq!(c["bay"], "Bay 3");
    // CSV export
    let (code, csv) = d.get("/api/v1/sessions?format=csv").unwrap();
    assert_eq!(code, 200);
    assert!(
        csv.lines().count() == 2 && csv.contains("T-1842") && csv.contains("completed"),
        "{csv}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_messages_yield_one_event() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &config(&broker));
    let sub = MqttClient::connect(broker.port, "t-sub", &["evlounge/milano/events/#"]).await;
    let publ = MqttClient::connect(broker.port, "t-pub", &[]).await;
    let (a, b) = dc_session(base_ts());
    // Every message twice, and the whole session replayed once more.
    for m in a.iter().chain(b.iter()) {
        publ.publish(TOPIC, m.clone()).await;
        publ.publish(TOPIC, m.clone()).await;
    }
    for m in a.iter().chain(b.iter()) {
        publ.publish(TOPIC, m.clone()).await;
    }
    publ.wait_acked().await;
    wait_session_closed(&d).await;
    wait_events(&sub, "charging_complete", 1).await;
    quiet_period().await;
    assert_eq!(sub.count("/events/charging_complete"), 1);
    assert_eq!(sub.count("/events/charging_started"), 1);
    let v = d.get_json("/api/v1/sessions").unwrap();
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1, "{v}");
    assert!(
        d.metric("evlounge_ignored_total{reason=\"out_of_order\"}") >= (a.len() + b.len()) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_session_then_restart_completes_once() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &config(&broker));
    let sub =
        MqttClient::connect_persistent(broker.port, "t-sub-kill", &["evlounge/milano/events/#"])
            .await;
    let publ = MqttClient::connect(broker.port, "t-pub", &[]).await;
    let (a, b) = dc_session(base_ts());
    for m in &a {
        publ.publish(TOPIC, m.clone()).await;
    }
    publ.wait_acked().await;
    wait_events(&sub, "charging_started", 1).await;
    wait_for_async(
        "charging state committed",
        Duration::from_secs(10),
        || async {
            let c = d.get_json("/api/v1/chargers/milano/hpc-3")?;
            (c["soc_pct"].as_f64()? >= 78.0).then_some(())
        },
    )
    .await;
    d.kill();
    // While it is dead the car completes; the messages wait in the broker.
    for m in &b {
        publ.publish(TOPIC, m.clone()).await;
    }
    publ.wait_acked().await;
    d.spawn();
    let s = wait_session_closed(&d).await;
    wait_events(&sub, "charging_complete", 1).await;
    quiet_period().await;
    assert_eq!(sub.count("/events/charging_complete"), 1);
    assert_eq!(sub.count("/events/charging_started"), 1);
    assert_eq!(s["outcome"], "completed");
    assert!(d.log().contains("resumed charger state"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_while_the_car_completes_delays_but_keeps_the_event() {
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &config(&broker));
    let sub =
        MqttClient::connect_persistent(broker.port, "t-sub-outage", &["evlounge/milano/events/#"])
            .await;
    let publ = MqttClient::connect(broker.port, "t-pub", &[]).await;
    // An AC-like tail: real charging, then low power; the telemetry stops and the car
    // completes on sustained low power (3 s here) while the broker is down.
    let t0 = chrono::Utc::now().timestamp_millis() - 20_000;
    for (i, (st, p)) in [
        ("preparing", 0.0),
        ("charging", 50.0),
        ("charging", 50.0),
        ("charging", 1.0),
    ]
    .iter()
    .enumerate()
    {
        publ.publish(
            TOPIC,
            format!(
                r#"{{"ts":{},"status":"{st}","session_id":"T-9","power_kw":{p}}}"#,
                t0 + i as i64 * 5_000
            ),
        )
        .await;
    }
    publ.wait_acked().await;
    wait_events(&sub, "charging_started", 1).await;
    drop(publ);
    broker.stop();
    wait_for_async(
        "daemon sees the outage",
        Duration::from_secs(10),
        || async { d.get("/readyz").filter(|(c, _)| *c == 503).map(|_| ()) },
    )
    .await;
    // The completion is decided and committed while the broker is away.
    wait_for_async(
        "completion committed during the outage",
        Duration::from_secs(20),
        || async {
            let v = d.get_json("/api/v1/sessions")?;
            let s = v["sessions"].as_array()?.first()?.clone();
            (!s["completed"].is_null()).then_some(())
        },
    )
    .await;
    assert_eq!(sub.count("/events/charging_complete"), 0);
    broker.restart();
    wait_events(&sub, "charging_complete", 1).await;
    quiet_period().await;
    assert_eq!(sub.count("/events/charging_complete"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_again_when_the_broker_lost_the_session() {
    // A broker without persistence forgets our session on restart; what rumqttc had in
    // flight is then gone, so the daemon publishes its recent events again (same event_id).
    let mut broker = Mosquitto::start_volatile();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &config(&broker));
    let publ = MqttClient::connect(broker.port, "t-pub", &[]).await;
    let (a, b) = dc_session(base_ts());
    for m in a.iter().chain(b.iter()) {
        publ.publish(TOPIC, m.clone()).await;
    }
    publ.wait_acked().await;
    wait_session_closed(&d).await;
    // Published before anyone listened; the store has them.
    let first = d.get_json("/api/v1/sessions").unwrap();
    assert_eq!(first["sessions"][0]["outcome"], "completed");
    broker.restart();
    let sub = MqttClient::connect(broker.port, "t-sub-b", &["evlounge/milano/events/#"]).await;
    wait_events(&sub, "charging_complete", 1).await;
    let ev = &sub.messages("/events/charging_complete")[0];
    assert_eq!(ev["session_id"], "T-1842");
    assert!(
        d.log().contains("the broker lost our session"),
        "{}",
        d.log()
    );
}
