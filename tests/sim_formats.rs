//! `evlounge simulate --format ocpp16j` end to end: the simulator's OCPP 1.6J frames through
//! a real Mosquitto into the daemon binary reading them with an `ocpp16j` source.

mod harness;

use std::time::Duration;

use evlounge::sim::vehicles::TAYCAN_GEN2;
use evlounge::sim::{run_simulate_with, ScriptedArrival, SimFormat, SimulateOptions};
use harness::{wait_for_async, Daemon, Mosquitto, MqttClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_ocpp16j_sessions_complete_in_the_daemon() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(
        dir.path(),
        &format!(
            r#"[mqtt]
url = "{}"
[[sites]]
id = "demo"
timezone = "Europe/Rome"
[[sources]]
format = "ocpp16j"
topic = "ocpp/{{cp}}/in"
site = "demo"
charger = "{{cp}}"
"#,
            broker.url()
        ),
    );
    let events = MqttClient::connect(
        broker.port,
        "sim-formats-events",
        &["evlounge/demo/events/#"],
    )
    .await;

    // 240× real time, starting three simulated hours ago, so no `ts` runs ahead of the wall
    // clock within the test's time. A car is scripted 30 s in (20 → 80 %, ~18 min at up to
    // 320 kW, then 2 min parked at target).
    let start_ms = evlounge::util::time::now_ms() - 3 * 3_600_000;
    let opts = SimulateOptions {
        mqtt_url: broker.url(),
        site: "demo".into(),
        chargers: 1,
        rate_hz: 10.0,
        speed: 240.0,
        duration: Some(Duration::from_secs(45)),
        start_ms: Some(start_ms),
        format: SimFormat::Ocpp16j,
        ..SimulateOptions::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sim = tokio::spawn(run_simulate_with(
        opts,
        move |sim| {
            assert!(sim.script_arrival(
                "hpc-1",
                ScriptedArrival {
                    at_ms: start_ms + 30_000,
                    vehicle: &TAYCAN_GEN2,
                    soc_start: 20.0,
                    target: 80.0,
                    early_stop_soc: None,
                    dwell_ms: Some(120_000),
                },
            ));
        },
        async {
            let _ = stop_rx.await;
        },
    ));

    // The scripted session (whatever random ones the model adds around it) ends completed.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let row = loop {
        let found = daemon.get_json("/api/v1/sessions").and_then(|v| {
            v["sessions"]
                .as_array()?
                .iter()
                .find(|r| {
                    // The scripted car: its first SoC reading comes a few seconds into
                    // charging, just above 20 %.
                    r["outcome"] == "completed"
                        && r["soc_start"]
                            .as_f64()
                            .is_some_and(|s| (20.0..23.0).contains(&s))
                })
                .cloned()
        });
        if let Some(r) = found {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no completed session; sessions: {:?}\nevents: {:?}\nlog:\n{}",
            daemon.get_json("/api/v1/sessions"),
            events.messages("/events/"),
            daemon
                .log()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stop_tx.send(());
    let report = sim.await.expect("sim task").expect("simulate runs");
    assert!(report.messages > 100, "{report:?}");

    assert_eq!(
        row["charger"], "hpc-1",
        "charger = \"{{cp}}\" keeps the model's id"
    );
    let sid = row["session_id"].as_str().expect("session id").to_string();
    assert!(
        sid.parse::<u64>().is_ok(),
        "the session is named by the OCPP transactionId, got {sid}\nall: {:?}\nevents: {:?}",
        daemon.get_json("/api/v1/sessions"),
        events.messages("/events/")
    );
    let kwh = row["energy_kwh"].as_f64().expect("energy");
    // 20 → 80 % of a Taycan gen 2 pack (~97 kWh net) plus losses, from meterStart/meterStop
    // in Wh.
    assert!((50.0..70.0).contains(&kwh), "energy {kwh}");
    assert!(row["soc_end"].as_f64().is_some_and(|s| s >= 79.0), "{row}");

    // Exactly one completion for that session, with the same figures. The event went out
    // before the unplug closed the row; it may still be on its way to this subscriber.
    let of_session = || -> Vec<serde_json::Value> {
        events
            .messages("/events/charging_complete")
            .into_iter()
            .filter(|e| e["session_id"] == sid.as_str())
            .collect()
    };
    wait_for_async(
        "the session's charging_complete",
        Duration::from_secs(10),
        || async { (!of_session().is_empty()).then_some(()) },
    )
    .await;
    let completes = of_session();
    assert_eq!(completes.len(), 1, "{completes:?}");
    eprintln!("{}\n{row}", completes[0]);
    let ev = &completes[0];
    assert_eq!(ev["charger"], "hpc-1");
    assert!(ev["soc_pct"].as_f64().is_some_and(|s| s >= 79.0), "{ev}");
    assert!(
        (ev["energy_kwh"].as_f64().unwrap_or(0.0) - kwh).abs() < 1.0,
        "{ev} vs {kwh}"
    );
    let d = ev["duration_s"].as_f64().unwrap_or(0.0);
    assert!((600.0..3_600.0).contains(&d), "duration {d}");
    assert_eq!(
        events
            .messages("/events/charging_stopped")
            .iter()
            .filter(|e| e["session_id"] == sid.as_str())
            .count(),
        0
    );
}
