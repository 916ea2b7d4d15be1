//! Adapter fixture sessions end to end: each recorded-style session (tests/fixtures/<format>)
//! is published to a real Mosquitto, in order, to its own topics; the daemon binary reads
//! it through a `[[sources]]` entry of that format and must decide exactly what the contract
//! says: one `charging_complete` with the session's energy and SoC, a session row in
//! `/api/v1/sessions`, and lounge occupancy in `/api/v1/lounge`.

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{wait_for_async, Daemon, Mosquitto, MqttClient};
use serde_json::Value;

/// How long the test listens after the completion for a duplicate or a contradicting
/// terminal event. Replays are processed in a few ms per message, so a second event caused
/// by the same stream would arrive well within this; absence is all it can show.
const QUIET: Duration = Duration::from_millis(2_500);

/// Expected session energies in kWh, printed by `python3 tests/fixtures/generate.py`
/// (meterStop − meterStart for OCPP, the last `charged_energy_wh` for EVerest, the last
/// `wh` / `imported` delta / `sessionEnergy` for the AC wallboxes).
const OCPP16J_KWH: f64 = 58.083;
const OCPP201_KWH: f64 = 58.064;
const EVEREST_KWH: f64 = 50.313_077_710_397_07;
const GOE_KWH: f64 = 3.496;
const OPENWB_KWH: f64 = 5.316_666_666_664_416;
const EVCC_KWH: f64 = 3.666_666_666_666_665;

/// Fixture lines as (topic, payload bytes): a JSON string payload is sent verbatim, any
/// other value as its JSON text (tests/fixtures/README.md).
fn load(rel: &str) -> Vec<(String, Vec<u8>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("fixture line is JSON");
            let payload = match &v["payload"] {
                Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (v["topic"].as_str().expect("topic").to_string(), payload)
        })
        .collect()
}

fn config(broker: &Mosquitto, site: &str, source: &str, thresholds: &str) -> String {
    format!(
        r#"[mqtt]
url = "{url}"
[thresholds]
{thresholds}
[[sites]]
id = "{site}"
timezone = "Europe/Rome"
  [[sites.zones]]
  id = "lounge"
  capacity = 40
[[sources]]
{source}
"#,
        url = broker.url()
    )
}

struct Run {
    _broker: Mosquitto,
    _dir: tempfile::TempDir,
    daemon: Daemon,
    events: MqttClient,
    publisher: MqttClient,
    /// The fixture's last messages, not yet sent (the unplug of a receive-time format).
    rest: Vec<(String, Vec<u8>)>,
}

impl Run {
    /// Sends what [`replay`] held back and waits until the broker acked it.
    async fn send_rest(&mut self) {
        for (topic, payload) in std::mem::take(&mut self.rest) {
            self.publisher.publish(&topic, payload).await;
        }
        self.publisher.wait_acked().await;
    }
}

/// Starts a broker and the daemon with `source` and `[thresholds]`, replays the fixture but
/// its last `hold_back` messages, and waits until the broker acked them (the daemon may
/// still be processing them).
async fn replay(
    site: &str,
    source: &str,
    thresholds: &str,
    fixture: &str,
    hold_back: usize,
) -> Run {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &config(&broker, site, source, thresholds));
    let events = MqttClient::connect(
        broker.port,
        "e2e-events",
        &[&format!("evlounge/{site}/events/#")],
    )
    .await;
    let publisher = MqttClient::connect(broker.port, "e2e-station", &[]).await;
    let mut msgs = load(fixture);
    let rest = msgs.split_off(msgs.len() - hold_back);
    for (topic, payload) in msgs {
        publisher.publish(&topic, payload).await;
    }
    publisher.wait_acked().await;
    Run {
        _broker: broker,
        _dir: dir,
        daemon,
        events,
        publisher,
        rest,
    }
}

/// Like [`wait_for_async`], returning `None` at the deadline so the caller can say what it saw.
async fn poll<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn kinds(events: &MqttClient) -> Vec<String> {
    events
        .messages("/events/")
        .iter()
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect()
}

/// Waits for the completion, then listens for [`QUIET`] more: exactly one, and no
/// `charging_stopped` for the same session.
async fn the_completion(run: &mut Run, site: &str) -> Value {
    let topic = format!("evlounge/{site}/events/charging_complete");
    let seen = poll(Duration::from_secs(30), || async {
        (run.events.count(&topic) > 0).then_some(())
    })
    .await;
    if seen.is_none() {
        panic!(
            "no charging_complete; events: {:?}\nchargers: {:?}\nsessions: {:?}\nlog tail:\n{}",
            run.events.messages("/events/"),
            run.daemon.get_json("/api/v1/chargers"),
            run.daemon.get_json("/api/v1/sessions"),
            tail(&run.daemon.log())
        );
    }
    run.send_rest().await;
    tokio::time::sleep(QUIET).await;
    let all = run.events.messages(&topic);
    assert_eq!(
        all.len(),
        1,
        "exactly one charging_complete: {all:?}\nall events: {:?}\nlog:\n{}",
        kinds(&run.events),
        run.daemon.log()
    );
    assert_eq!(
        run.events.count("/events/charging_stopped"),
        0,
        "a completed session is not also stopped: {:?}",
        kinds(&run.events)
    );
    all[0].clone()
}

/// The session row, once the unplug closed it.
async fn the_session(run: &Run, charger: &str) -> Value {
    wait_for_async(
        "the closed session in /api/v1/sessions",
        Duration::from_secs(30),
        || async {
            let v = run.daemon.get_json("/api/v1/sessions")?;
            let rows = v["sessions"].as_array()?.clone();
            let mine: Vec<Value> = rows
                .into_iter()
                .filter(|r| r["charger"] == charger)
                .collect();
            (mine.len() == 1 && !mine[0]["ended"].is_null()).then(|| mine[0].clone())
        },
    )
    .await
}

fn assert_close(what: &str, got: &Value, want: f64, tol: f64) {
    let g = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {got}"));
    assert!((g - want).abs() <= tol, "{what}: got {g}, want {want}");
}

struct Expect<'a> {
    site: &'a str,
    charger: &'a str,
    session_id: Option<&'a str>,
    kwh: f64,
    soc: Option<f64>,
    /// Plausible `duration_s` (plug-in to completion) on the message clock.
    duration_s: std::ops::RangeInclusive<f64>,
}

async fn check_charger_session(run: &mut Run, x: Expect<'_>) {
    let ev = the_completion(run, x.site).await;
    eprintln!("{}: {ev}", x.charger);
    assert_eq!(ev["site"], x.site);
    assert_eq!(ev["charger"], x.charger);
    if let Some(sid) = x.session_id {
        assert_eq!(ev["session_id"], sid);
    }
    // Energy: the fixture's final figure less what the car still took after completion
    // (a few Wh of standby at most).
    assert_close("energy_kwh", &ev["energy_kwh"], x.kwh, 0.02);
    match x.soc {
        Some(soc) => assert_close("soc_pct", &ev["soc_pct"], soc, 0.05),
        None => assert!(ev["soc_pct"].is_null(), "no SoC in this format: {ev}"),
    }
    let d = ev["duration_s"].as_f64().expect("duration_s");
    assert!(
        x.duration_s.contains(&d),
        "duration_s {d} not in {:?}",
        x.duration_s
    );

    let row = the_session(run, x.charger).await;
    assert_eq!(row["site"], x.site);
    assert_eq!(row["outcome"], "completed", "{row}");
    assert!(!row["completed"].is_null(), "{row}");
    assert_close("session energy_kwh", &row["energy_kwh"], x.kwh, 0.02);
    if let Some(soc) = x.soc {
        assert_close("soc_end", &row["soc_end"], soc, 0.05);
    }
    if let Some(sid) = x.session_id {
        assert_eq!(row["session_id"], sid);
    }
}

// ---------------------------------------------------------------- DC (timestamped frames)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocpp16j_dc_session_completes_once() {
    let mut run = replay(
        "milano",
        "format = \"ocpp16j\"\ntopic = \"ocpp/{cp}/in\"\nsite = \"milano\"",
        "",
        "ocpp16j/session_dc.jsonl",
        0,
    )
    .await;
    // Plug-in (Preparing, 10:01:00) to the car at target (SuspendedEV, 10:19:13): 1093 s on
    // the fixture's own clock, not the replay's.
    check_charger_session(
        &mut run,
        Expect {
            site: "milano",
            charger: "CP-MI-03-1",
            session_id: Some("1842"),
            kwh: OCPP16J_KWH,
            soc: Some(80.0),
            duration_s: 1_088.0..=1_098.0,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocpp201_dc_session_completes_once() {
    let mut run = replay(
        "torino",
        "format = \"ocpp201\"\ntopic = \"ocpp/{cp}/in\"\nsite = \"torino\"",
        "",
        "ocpp201/session_dc.jsonl",
        0,
    )
    .await;
    // TransactionEvent Started (EVConnected, 10:00:40) to chargingState SuspendedEV at
    // target (10:24:48): 1448 s.
    check_charger_session(
        &mut run,
        Expect {
            site: "torino",
            charger: "CS-TO-01-1",
            session_id: Some("b7e2c1d4-5f60-4a11-9c3e-7d8a9b0c1d2e"),
            kwh: OCPP201_KWH,
            soc: Some(80.0),
            duration_s: 1_440.0..=1_456.0,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everest_dc_session_completes_once() {
    let mut run = replay(
        "milano",
        "format = \"everest\"\ntopic = \"everest_api/{module}/var/#\"\nsite = \"milano\"",
        "",
        "everest/session_dc.jsonl",
        0,
    )
    .await;
    // AuthRequired (plug-in, 10:00:20) to ChargingPausedEV at target (10:24:10): 1430 s.
    check_charger_session(
        &mut run,
        Expect {
            site: "milano",
            charger: "evse_manager",
            session_id: None,
            kwh: EVEREST_KWH,
            soc: Some(80.0),
            duration_s: 1_420.0..=1_440.0,
        },
    )
    .await;
}

// ---------------------------------------------------------------- AC (per-value topics)
//
// go-e, openWB and evcc publish bare values without a time: the adapters stamp them with the
// receive time, so a replay compresses the session into the replay's few seconds (and
// `duration_s` says so). In the recordings the car then sits paused (go-e `car` 4, openWB
// `charge_state` false) for 2.5–5 minutes before the unplug, longer than the default
// `suspended_ev_grace` of 60 s, so the daemon calls it complete. Replayed at once, that
// pause would last milliseconds and the contract's answer would be `charging_stopped`
// (`unplugged`). So the test holds the unplug back, lets the daemon's clock run on the
// wall clock past a grace scaled down to 2 s (a silent charger's clock advances with wall
// time), waits for the completion, and only then sends the unplug.
const AC_THRESHOLDS: &str = "suspended_ev_grace = \"2s\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goe_ac_session_completes_once() {
    let mut run = replay(
        "garage",
        "format = \"goe\"\ntopic = \"go-eCharger/{serial}/#\"\nsite = \"garage\"",
        AC_THRESHOLDS,
        "goe/session_ac.jsonl",
        2,
    )
    .await;
    check_charger_session(
        &mut run,
        Expect {
            site: "garage",
            charger: "012345",
            session_id: None,
            kwh: GOE_KWH,
            soc: None,
            duration_s: 2.0..=30.0,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openwb_ac_session_completes_once() {
    let mut run = replay(
        "home",
        "format = \"openwb\"\ntopic = \"openWB/chargepoint/{id}/get/#\"\nsite = \"home\"\ncharger = \"cp{id}\"",
        AC_THRESHOLDS,
        "openwb/session_ac.jsonl",
        1,
    )
    .await;
    check_charger_session(
        &mut run,
        Expect {
            site: "home",
            charger: "cp3",
            session_id: None,
            kwh: OPENWB_KWH,
            soc: Some(64.0),
            duration_s: 2.0..=30.0,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evcc_ac_session_completes_once() {
    let mut run = replay(
        "home",
        "format = \"evcc\"\ntopic = \"evcc/loadpoints/{id}/#\"\nsite = \"home\"\ncharger = \"lp{id}\"",
        AC_THRESHOLDS,
        "evcc/session_ac.jsonl",
        1,
    )
    .await;
    check_charger_session(
        &mut run,
        Expect {
            site: "home",
            charger: "lp1",
            session_id: None,
            kwh: EVCC_KWH,
            soc: Some(80.0),
            duration_s: 0.0..=30.0,
        },
    )
    .await;
}

// ---------------------------------------------------------------- lounge

async fn occupancy(run: &Run, site: &str, zone: &str, want: u64) {
    let got = poll(Duration::from_secs(30), || async {
        let v = run.daemon.get_json("/api/v1/lounge")?;
        let z = v["zones"]
            .as_array()?
            .iter()
            .find(|z| z["site"] == site && z["zone"] == zone)?
            .clone();
        (z["occupancy"].as_u64() == Some(want)).then_some(z)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "occupancy of {site}/{zone} never {want}: {:?}\nlog tail:\n{}",
            run.daemon.get_json("/api/v1/lounge"),
            tail(&run.daemon.log())
        )
    });
    assert_eq!(got["capacity"], 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zigbee2mqtt_presence_sets_lounge_occupancy() {
    let run = replay(
        "milano",
        "format = \"zigbee2mqtt\"\ntopic = \"zigbee2mqtt/#\"\nsite = \"milano\"\nzone = \"lounge\"",
        "",
        "zigbee2mqtt/lounge.jsonl",
        0,
    )
    .await;
    // No counter in this zone, so present sensors are people: the PIR ends unoccupied,
    // the mmWave on the sofa still present.
    occupancy(&run, "milano", "lounge", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_counter_totals_and_line_crossings_set_lounge_occupancy() {
    let run = replay(
        "milano",
        "format = \"people_counter\"\ntopic = \"people/{device}\"\nsite = \"milano\"\nzone = \"lounge\"",
        "",
        "people_counter/lounge.jsonl",
        0,
    )
    .await;
    // The fixture sends the VS121 totals first (last: 10), then the door counter: its first
    // value is a baseline, then +3−1, +7−3, reset to 2/1 (+2−1), +3−1 → 10 + 9 = 19.
    occupancy(&run, "milano", "lounge", 19).await;
}
