//! Adapters: fixture sessions replayed through each adapter, OCPP fixtures validated against
//! the official JSON schemas, edge cases of the OCPP decoders, and fuzzing (never panic).

use std::path::{Path, PathBuf};
use std::process::Command;

use evlounge::domain::input::{ChargerStatus, Input, LoungeReading, Telemetry};
use evlounge::ingest::adapters::{build, Adapter, DecodeError, SourceSpec, TopicTemplate};
use proptest::prelude::*;
use serde_json::{json, Value};

const T0: i64 = 1_795_514_400_000; // 2026-11-24T10:00:00Z
/// A receive time after every message time of the tests (a replay, the next day): a message
/// time more than 5 minutes after its receive time is clock skew, which the adapters keep
/// out of their message clocks.
const LATER: i64 = T0 + 86_400_000;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A source from TOML, validated like the daemon does.
fn source(toml_src: &str) -> (SourceSpec, TopicTemplate, Box<dyn Adapter>) {
    let spec: SourceSpec = toml::from_str(toml_src).expect("spec parses");
    spec.validate().expect("spec is valid");
    let tpl = TopicTemplate::parse(&spec.topic).expect("topic parses");
    let adapter = build(&spec).expect("format has an adapter");
    (spec, tpl, adapter)
}

/// Fixture lines: a JSON string payload is sent verbatim, anything else as its JSON text.
fn load(rel: &str) -> Vec<(String, Vec<u8>, i64)> {
    let text = std::fs::read_to_string(fixtures().join(rel)).expect("fixture exists");
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("fixture line is JSON");
            let payload = match &v["payload"] {
                Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (
                v["topic"].as_str().expect("topic").to_string(),
                payload,
                v["recv_ms"].as_i64().expect("recv_ms"),
            )
        })
        .collect()
}

struct Src {
    tpl: TopicTemplate,
    adapter: Box<dyn Adapter>,
}

impl Src {
    fn new(toml_src: &str) -> Self {
        let (_, tpl, adapter) = source(toml_src);
        Self { tpl, adapter }
    }

    fn ocpp16() -> Self {
        Self::new("format = \"ocpp16j\"\ntopic = \"ocpp/{cp}/in\"\nsite = \"milano\"")
    }

    fn feed(
        &mut self,
        topic: &str,
        payload: &[u8],
        recv_ms: i64,
    ) -> Result<Vec<Input>, DecodeError> {
        let caps = self.tpl.captures(topic).expect("topic matches the source");
        self.adapter.decode(topic, &caps, payload, recv_ms)
    }

    fn json(&mut self, topic: &str, v: Value, recv_ms: i64) -> Result<Vec<Input>, DecodeError> {
        self.feed(topic, v.to_string().as_bytes(), recv_ms)
    }

    /// Every fixture message must decode; returns all inputs in order.
    fn replay(&mut self, rel: &str) -> Vec<Input> {
        let mut out = Vec::new();
        for (i, (topic, payload, recv)) in load(rel).into_iter().enumerate() {
            match self.feed(&topic, &payload, recv) {
                Ok(v) => out.extend(v),
                Err(e) => panic!(
                    "{rel}:{}: {e} ({})",
                    i + 1,
                    String::from_utf8_lossy(&payload)
                ),
            }
        }
        out
    }
}

fn telemetry_of(inputs: &[Input], charger: &str) -> Vec<Telemetry> {
    inputs
        .iter()
        .filter_map(|i| match i {
            Input::Telemetry { key, t } if key.charger == charger => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn statuses(ts: &[Telemetry]) -> Vec<ChargerStatus> {
    let mut out: Vec<ChargerStatus> = Vec::new();
    for t in ts {
        let s = t.status.expect("every telemetry carries a status");
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    out
}

fn last<T: Copy>(ts: &[Telemetry], f: impl Fn(&Telemetry) -> Option<T>) -> Option<T> {
    ts.iter().rev().find_map(f)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 0.01
}

use ChargerStatus::*;

// ---------------------------------------------------------------- schema validation

#[test]
fn ocpp_fixtures_match_official_schemas() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/validate_ocpp.py");
    let on_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let out = Command::new(&python).arg(&script).arg(fixtures()).output();
    let missing = |why: String| {
        assert!(!on_ci, "OCPP schema validation cannot run on CI: {why}");
        eprintln!(
            "\n!!!!!! SKIPPED OCPP schema validation: {why}\n!!!!!! install: pip install ocpp jsonschema\n"
        );
    };
    match out {
        Err(e) => missing(format!("{python} not runnable: {e}")),
        Ok(o) if o.status.code() == Some(3) => {
            missing(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
        Ok(o) => {
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "fixtures violate the OCPP schemas:\n{}{stdout}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(stdout.contains("validated"), "{stdout}");
        }
    }
}

// ---------------------------------------------------------------- session replays

#[test]
fn ocpp16j_session_replay() {
    let inputs = Src::ocpp16().replay("ocpp16j/session_dc.jsonl");
    let t = telemetry_of(&inputs, "CP-MI-03-1");
    assert!(t.len() > 60, "{} telemetries", t.len());
    assert_eq!(
        statuses(&t),
        vec![
            Available,
            Preparing,
            SuspendedEv,
            Charging,
            SuspendedEv,
            Finishing,
            Available
        ]
    );
    // Connector 2 only reported Available; connector 0 is never a charger.
    assert_eq!(
        statuses(&telemetry_of(&inputs, "CP-MI-03-2")),
        vec![Available]
    );
    assert!(telemetry_of(&inputs, "CP-MI-03-0").is_empty());
    let energy = last(&t, |t| t.session_kwh).expect("session energy");
    assert!(close(energy, 58.083), "{energy}");
    assert!(close(last(&t, |t| t.meter_kwh).unwrap(), 10_291.483));
    assert_eq!(last(&t, |t| t.soc_pct), Some(80.0));
    let peak = t.iter().filter_map(|t| t.power_kw).fold(0.0, f64::max);
    assert!(close(peak, 262.0), "{peak}");
    // After the CALLRESULT every in-session reading carries the CSMS transaction id.
    let charging: Vec<_> = t.iter().filter(|t| t.status == Some(Charging)).collect();
    assert!(charging.iter().all(
        |t| t.session_id.as_deref() == Some("1842") && t.id_tag.as_deref() == Some("04A2B3C4")
    ));
    let fin = t.iter().find(|t| t.status == Some(Finishing)).unwrap();
    assert_eq!(fin.session_id.as_deref(), Some("1842"));
    assert_eq!(t.last().unwrap().session_id, None);
    assert!(
        t.windows(2).all(|w| w[0].ts <= w[1].ts),
        "time runs forward"
    );
    let fin = t.iter().find(|t| t.status == Some(Finishing)).unwrap();
    // Finishing first comes from StopTransaction; the unplug is 95 s later.
    assert_eq!(t.last().unwrap().ts, fin.ts + 95_000);
}

#[test]
fn ocpp201_session_replay() {
    let inputs = Src::new("format = \"ocpp201\"\ntopic = \"ocpp/{cp}/in\"\nsite = \"torino\"")
        .replay("ocpp201/session_dc.jsonl");
    let t = telemetry_of(&inputs, "CS-TO-01-1");
    assert_eq!(
        statuses(&t),
        vec![
            Available,
            Preparing,
            SuspendedEv,
            Charging,
            SuspendedEv,
            Finishing,
            Available
        ]
    );
    // Energy given as Wh x 10^3 (kWh), power as W x 10^3 (kW).
    let energy = last(&t, |t| t.session_kwh).unwrap();
    assert!(close(energy, 58.064), "{energy}");
    let peak = t.iter().filter_map(|t| t.power_kw).fold(0.0, f64::max);
    assert!(close(peak, 175.0), "{peak}");
    assert_eq!(last(&t, |t| t.soc_pct), Some(80.0));
    let in_session: Vec<_> = t.iter().filter(|t| t.status == Some(Charging)).collect();
    assert!(in_session.iter().all(|t| t.session_id.as_deref()
        == Some("b7e2c1d4-5f60-4a11-9c3e-7d8a9b0c1d2e")
        && t.id_tag.as_deref() == Some("DE8ACC1234")));
}

#[test]
fn everest_session_replay() {
    let inputs =
        Src::new("format = \"everest\"\ntopic = \"everest_api/{module}/var/#\"\nsite = \"milano\"")
            .replay("everest/session_dc.jsonl");
    let t = telemetry_of(&inputs, "evse_manager");
    assert_eq!(
        statuses(&t),
        vec![
            Available,
            Preparing,
            SuspendedEvse,
            Charging,
            SuspendedEv,
            Finishing,
            Available
        ]
    );
    let energy = last(&t, |t| t.session_kwh).unwrap();
    assert!(close(energy, 50.313), "{energy}");
    assert_eq!(last(&t, |t| t.soc_pct), Some(80.0));
    assert!(t.iter().any(|t| t.remaining_s.is_some_and(|r| r > 60.0)));
    assert!(t.iter().any(|t| t.voltage_v == Some(790.0)));
    let fin = t.iter().find(|t| t.status == Some(Finishing)).unwrap();
    assert_eq!(fin.power_kw, Some(0.0));
}

#[test]
fn goe_session_replay() {
    let inputs =
        Src::new("format = \"goe\"\ntopic = \"go-eCharger/{serial}/#\"\nsite = \"garage\"")
            .replay("goe/session_ac.jsonl");
    let t = telemetry_of(&inputs, "012345");
    assert_eq!(
        statuses(&t),
        vec![Available, Preparing, Charging, SuspendedEv, Available]
    );
    let energy = t
        .iter()
        .filter(|t| t.status != Some(Available))
        .filter_map(|t| t.session_kwh)
        .next_back()
        .unwrap();
    assert!(close(energy, 3.496), "{energy}");
    assert!(t.iter().any(|t| t.power_kw == Some(11.04)));
    assert!(t.iter().any(|t| t.temperature_c == Some(33.0)));
    let avail: Vec<bool> = inputs
        .iter()
        .filter_map(|i| match i {
            Input::Availability { online, .. } => Some(*online),
            _ => None,
        })
        .collect();
    assert_eq!(avail, vec![true, false]);
}

#[test]
fn openwb_session_replay() {
    let inputs = Src::new(
        "format = \"openwb\"\ntopic = \"openWB/chargepoint/{id}/get/#\"\nsite = \"home\"\ncharger = \"cp{id}\"",
    )
    .replay("openwb/session_ac.jsonl");
    let t = telemetry_of(&inputs, "cp3");
    assert_eq!(
        statuses(&t),
        vec![Available, Preparing, Charging, SuspendedEv, Available]
    );
    let energy = last(&t, |t| t.session_kwh).unwrap();
    assert!(close(energy, 5.317), "{energy}");
    assert_eq!(last(&t, |t| t.soc_pct), Some(64.0));
    assert!(t.iter().any(|t| t.power_kw == Some(11.0)));
}

#[test]
fn evcc_session_replay() {
    let inputs = Src::new("format = \"evcc\"\ntopic = \"evcc/loadpoints/{id}/#\"\nsite = \"home\"\ncharger = \"lp{id}\"")
        .replay("evcc/session_ac.jsonl");
    let t = telemetry_of(&inputs, "lp1");
    assert_eq!(
        statuses(&t),
        vec![Available, Preparing, Charging, SuspendedEv, Available]
    );
    let energy = last(&t, |t| t.session_kwh).unwrap();
    assert!(close(energy, 3.667), "{energy}");
    assert_eq!(last(&t, |t| t.soc_pct), Some(80.0));
    assert_eq!(last(&t, |t| t.target_soc_pct), Some(80.0));
    assert!(t.iter().any(|t| t.vehicle.as_deref() == Some("Taycan 4S")));
    // chargeRemainingDuration is in seconds (evcc's MQTT encoding): 1170 s early on.
    assert_eq!(t.iter().find_map(|t| t.remaining_s), Some(1_170.0));
}

fn lounge_of(inputs: &[Input]) -> Vec<(String, String, LoungeReading)> {
    inputs
        .iter()
        .filter_map(|i| match i {
            Input::Lounge { key, sensor, r } => Some((key.zone.clone(), sensor.clone(), r.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn zigbee2mqtt_replay() {
    let inputs = Src::new(
        "format = \"zigbee2mqtt\"\ntopic = \"zigbee2mqtt/#\"\nsite = \"milano\"\nzone = \"lounge\"\n[devices]\nsofa_mmwave = \"sofa\"",
    )
    .replay("zigbee2mqtt/lounge.jsonl");
    let l = lounge_of(&inputs);
    // bridge/state, availability and the button produce nothing.
    assert_eq!(l.len(), 5, "{l:?}");
    assert_eq!(l[0].0, "lounge");
    assert_eq!(l[0].1, "lounge_pir_1");
    assert_eq!(l[0].2.presence, Some(true));
    assert_eq!(l[1].0, "sofa");
    assert_eq!(l[1].2.presence, Some(true));
    assert_eq!(l[2].2.co2_ppm, Some(820.0));
    assert_eq!(l[2].2.temperature_c, Some(22.4));
    assert_eq!(l[2].2.humidity_pct, Some(41.0));
    assert_eq!(l[3].2.presence, Some(false));
    assert_eq!(l[4].2.co2_ppm, Some(910.0));
}

#[test]
fn people_counter_replay_converts_cumulative_counts_and_survives_reset() {
    let inputs = Src::new(
        "format = \"people_counter\"\ntopic = \"people/{device}\"\nsite = \"milano\"\nzone = \"lounge\"",
    )
    .replay("people_counter/lounge.jsonl");
    let l = lounge_of(&inputs);
    let totals: Vec<u32> = l.iter().filter_map(|(_, _, r)| r.occupancy).collect();
    assert_eq!(totals, vec![3, 5, 9, 12, 10]);
    let deltas: Vec<(Option<u32>, Option<u32>)> = l
        .iter()
        .filter(|(_, s, _)| s == "door-entrance")
        .map(|(_, _, r)| (r.entered, r.exited))
        .collect();
    // First value is the baseline; 130→2 and 104→1 are resets: the new value is the delta.
    assert_eq!(
        deltas,
        vec![
            (Some(3), Some(1)),
            (Some(7), Some(3)),
            (Some(2), Some(1)),
            (Some(3), Some(1))
        ]
    );
}

// ---------------------------------------------------------------- OCPP 1.6J edge cases

fn frame(uid: &str, action: &str, p: Value) -> Value {
    json!([2, uid, action, p])
}

fn status(connector: u32, st: &str, ts: &str) -> Value {
    frame(
        "s",
        "StatusNotification",
        json!({"connectorId": connector, "status": st, "errorCode": "NoError", "timestamp": ts}),
    )
}

fn meter(connector: u32, tx: Option<i64>, ts: &str, samples: Value) -> Value {
    let mut p = json!({"connectorId": connector, "meterValue": [{"timestamp": ts, "sampledValue": samples}]});
    if let Some(tx) = tx {
        p["transactionId"] = json!(tx);
    }
    frame("m", "MeterValues", p)
}

fn start(src: &mut Src, cp: &str, connector: u32, meter_start: i64, tx: i64, ts: &str) {
    let topic = format!("ocpp/{cp}/in");
    let uid = format!("start-{connector}");
    src.json(
        &topic,
        frame(&uid, "StartTransaction", json!({"connectorId": connector, "idTag": "TAG", "meterStart": meter_start, "timestamp": ts})),
        LATER,
    )
    .unwrap();
    let r = src
        .json(
            &topic,
            json!([3, uid, {"transactionId": tx, "idTagInfo": {"status": "Accepted"}}]),
            LATER,
        )
        .unwrap();
    assert_eq!(
        r.len(),
        1,
        "CALLRESULT of StartTransaction announces the id"
    );
}

fn one(r: Result<Vec<Input>, DecodeError>) -> Telemetry {
    let v = r.expect("decodes");
    assert_eq!(v.len(), 1, "{v:?}");
    match &v[0] {
        Input::Telemetry { t, .. } => t.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ocpp16j_units_and_default_measurand() {
    let mut s = Src::ocpp16();
    let topic = "ocpp/CP/in";
    s.json(topic, status(1, "Charging", "2026-11-24T10:00:00Z"), 0)
        .unwrap();
    start(&mut s, "CP", 1, 1_000_000, 7, "2026-11-24T10:00:00Z");
    // kWh and kW units.
    let t = one(s.json(
        topic,
        meter(
            1,
            Some(7),
            "2026-11-24T10:01:00Z",
            json!([
                {"measurand": "Energy.Active.Import.Register", "unit": "kWh", "value": "1002.5"},
                {"measurand": "Power.Active.Import", "unit": "kW", "value": "150.5"}
            ]),
        ),
        0,
    ));
    assert_eq!(t.meter_kwh, Some(1002.5));
    assert!(close(t.session_kwh.unwrap(), 2.5));
    assert_eq!(t.power_kw, Some(150.5));
    assert_eq!(t.status, Some(Charging));
    assert_eq!(t.session_id.as_deref(), Some("7"));
    // No measurand, no unit: the energy register in Wh.
    let t = one(s.json(
        topic,
        meter(
            1,
            Some(7),
            "2026-11-24T10:02:00Z",
            json!([{"value": "1004000"}]),
        ),
        0,
    ));
    assert_eq!(t.meter_kwh, Some(1004.0));
    assert!(close(t.session_kwh.unwrap(), 4.0));
    assert_eq!(t.power_kw, None);
    // Per-phase power is summed when there is no total; a numeric value is tolerated.
    let t = one(s.json(
        topic,
        meter(
            1,
            Some(7),
            "2026-11-24T10:03:00Z",
            json!([
                {"measurand": "Power.Active.Import", "phase": "L1", "value": "3600"},
                {"measurand": "Power.Active.Import", "phase": "L2", "value": "3700"},
                {"measurand": "Power.Active.Import", "phase": "L3", "value": 3700},
                {"measurand": "Power.Active.Import", "phase": "N", "value": "5"},
                {"measurand": "Temperature", "unit": "K", "value": "313.15"}
            ]),
        ),
        0,
    ));
    assert!(close(t.power_kw.unwrap(), 11.0));
    assert!(close(t.temperature_c.unwrap(), 40.0));
    // A unit that makes no sense for the measurand is an error, not a silent misread.
    let e = s
        .json(
            topic,
            meter(
                1,
                Some(7),
                "2026-11-24T10:04:00Z",
                json!([{"unit": "varh", "value": "1"}]),
            ),
            0,
        )
        .unwrap_err();
    assert_eq!(e.reason(), "invalid_field");
    // SoC over 100 is absurd.
    let e = s
        .json(
            topic,
            meter(
                1,
                Some(7),
                "2026-11-24T10:04:00Z",
                json!([{"measurand": "SoC", "value": "140"}]),
            ),
            0,
        )
        .unwrap_err();
    assert_eq!(e, DecodeError::OutOfRange("soc_pct".into()));
}

#[test]
fn ocpp16j_meter_reset_never_goes_negative() {
    let mut s = Src::ocpp16();
    let topic = "ocpp/CP/in";
    start(&mut s, "CP", 1, 4_294_960_000, 9, "2026-11-24T10:00:00Z");
    let e = |s: &mut Src, ts: &str, wh: &str| {
        one(s.json(topic, meter(1, Some(9), ts, json!([{"value": wh}])), 0)).session_kwh
    };
    assert_eq!(e(&mut s, "2026-11-24T10:01:00Z", "4294965000"), Some(5.0));
    // 32-bit register rolled over: 5 kWh so far, then 2 kWh from zero.
    assert_eq!(e(&mut s, "2026-11-24T10:02:00Z", "2000"), Some(7.0));
    assert_eq!(e(&mut s, "2026-11-24T10:03:00Z", "3000"), Some(8.0));
    let t = one(s.json(
        topic,
        frame(
            "x",
            "StopTransaction",
            json!({"transactionId": 9, "meterStop": 3500, "timestamp": "2026-11-24T10:04:00Z"}),
        ),
        0,
    ));
    assert_eq!(t.session_kwh, Some(8.5));
    assert_eq!(t.status, Some(Finishing));
    // A meter below meterStart from the first reading on: a reset, not negative energy.
    let mut s = Src::ocpp16();
    start(&mut s, "CP", 1, 50_000, 10, "2026-11-24T11:00:00Z");
    let t = one(s.json(
        topic,
        meter(
            1,
            Some(10),
            "2026-11-24T11:01:00Z",
            json!([{"value": "100"}]),
        ),
        0,
    ));
    assert_eq!(t.session_kwh, Some(0.1));
}

#[test]
fn ocpp16j_connector_zero() {
    let mut s = Src::ocpp16();
    let topic = "ocpp/CP/in";
    s.json(topic, status(1, "Charging", "2026-11-24T10:00:00Z"), 0)
        .unwrap();
    s.json(topic, status(2, "Available", "2026-11-24T10:00:00Z"), 0)
        .unwrap();
    // Connector 0 Available is about the station: nothing per charger.
    assert!(s
        .json(topic, status(0, "Available", "2026-11-24T10:00:01Z"), 0)
        .unwrap()
        .is_empty());
    // Meter values on connector 0 (the grid meter) are no charger's.
    assert!(s
        .json(
            topic,
            meter(0, None, "2026-11-24T10:00:02Z", json!([{"value": "99"}])),
            0
        )
        .unwrap()
        .is_empty());
    // A station fault takes every connector with it.
    let out = s
        .json(
            topic,
            frame("f", "StatusNotification", json!({"connectorId": 0, "status": "Faulted", "errorCode": "GroundFailure", "timestamp": "2026-11-24T10:00:03Z"})),
            0,
        )
        .unwrap();
    let mut got: Vec<(String, Option<ChargerStatus>, Option<String>)> = out
        .iter()
        .map(|i| match i {
            Input::Telemetry { key, t } => (key.charger.clone(), t.status, t.error_code.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("CP-1".into(), Some(Faulted), Some("GroundFailure".into())),
            ("CP-2".into(), Some(Faulted), Some("GroundFailure".into()))
        ]
    );
    assert!(out
        .iter()
        .all(|i| matches!(i, Input::Telemetry { key, .. } if key.site == "milano")));
}

#[test]
fn ocpp16j_interleaved_connectors_and_stations() {
    let mut s = Src::ocpp16();
    start(&mut s, "A", 1, 1_000, 101, "2026-11-24T10:00:00Z");
    start(&mut s, "A", 2, 5_000, 102, "2026-11-24T10:00:05Z");
    start(&mut s, "B", 1, 9_000, 201, "2026-11-24T10:00:06Z");
    let m = |s: &mut Src, cp: &str, c: u32, tx: i64, wh: &str| {
        let topic = format!("ocpp/{cp}/in");
        let v = s
            .json(
                &topic,
                meter(
                    c,
                    Some(tx),
                    "2026-11-24T10:01:00Z",
                    json!([{"value": wh}, {"measurand": "Power.Active.Import", "value": "50000"}]),
                ),
                0,
            )
            .unwrap();
        match &v[0] {
            Input::Telemetry { key, t } => {
                (key.charger.clone(), t.session_kwh, t.session_id.clone())
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        m(&mut s, "A", 2, 102, "6000"),
        ("A-2".into(), Some(1.0), Some("102".into()))
    );
    assert_eq!(
        m(&mut s, "A", 1, 101, "3000"),
        ("A-1".into(), Some(2.0), Some("101".into()))
    );
    assert_eq!(
        m(&mut s, "B", 1, 201, "12000"),
        ("B-1".into(), Some(3.0), Some("201".into()))
    );
    // StopTransaction names no connector: found by transaction id.
    let t = one(s.json(
        "ocpp/A/in",
        frame(
            "x",
            "StopTransaction",
            json!({"transactionId": 102, "meterStop": 7000, "timestamp": "2026-11-24T10:02:00Z"}),
        ),
        0,
    ));
    assert_eq!(t.session_kwh, Some(2.0));
    assert_eq!(t.session_id.as_deref(), Some("102"));
    // Connector 1 of A is still charging, unaffected (status: charging by power, no status seen).
    assert_eq!(
        m(&mut s, "A", 1, 101, "4000"),
        ("A-1".into(), Some(3.0), Some("101".into()))
    );
}

#[test]
fn ocpp16j_out_of_order_and_missing_timestamps() {
    let mut s = Src::ocpp16();
    let topic = "ocpp/CP/in";
    start(&mut s, "CP", 1, 10_000, 5, "2026-11-24T10:00:00Z");
    let ts = |s: &mut Src, at: &str, wh: &str| {
        one(s.json(topic, meter(1, Some(5), at, json!([{"value": wh}])), LATER))
    };
    assert_eq!(
        ts(&mut s, "2026-11-24T10:05:00Z", "15000").session_kwh,
        Some(5.0)
    );
    // A late frame is passed through with its own (older) time and does not count as a
    // meter reset.
    let late = ts(&mut s, "2026-11-24T10:02:00Z", "12000");
    assert_eq!(late.ts, T0 + 120_000);
    assert_eq!(late.session_kwh, Some(2.0));
    assert_eq!(
        ts(&mut s, "2026-11-24T10:06:00Z", "16000").session_kwh,
        Some(6.0)
    );
    // A StatusNotification without timestamp sits at the station's latest known time, 1 ms
    // after the MeterValues of that instant so the domain does not drop it as a repeat.
    let t = one(s.json(
        topic,
        frame(
            "q",
            "StatusNotification",
            json!({"connectorId": 1, "status": "SuspendedEV", "errorCode": "NoError"}),
        ),
        T0 + 999_999,
    ));
    assert_eq!(t.ts, T0 + 360_001);
    // A station never heard from: the receive time.
    let t = one(s.json(
        "ocpp/NEW/in",
        frame(
            "q",
            "StatusNotification",
            json!({"connectorId": 1, "status": "Available", "errorCode": "NoError"}),
        ),
        T0 + 5,
    ));
    assert_eq!(t.ts, T0 + 5);
}

#[test]
fn ocpp16j_callerror_and_other_frames_are_ignored() {
    let mut s = Src::ocpp16();
    let topic = "ocpp/CP/in";
    s.json(topic, frame("u1", "StartTransaction", json!({"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2026-11-24T10:00:00Z"})), 0).unwrap();
    assert!(s
        .json(topic, json!([4, "u1", "InternalError", "boom", {}]), 0)
        .unwrap()
        .is_empty());
    // The refused start's CALLRESULT never comes; a stray one is not taken for it.
    assert!(s
        .json(topic, json!([3, "u1", {"transactionId": 99}]), 0)
        .unwrap()
        .is_empty());
    assert!(s
        .json(topic, frame("h", "Heartbeat", json!({})), 0)
        .unwrap()
        .is_empty());
    assert!(s
        .json(
            topic,
            json!([3, "h", {"currentTime": "2026-11-24T10:00:00Z"}]),
            0
        )
        .unwrap()
        .is_empty());
    assert!(s
        .json(
            topic,
            frame(
                "b",
                "BootNotification",
                json!({"chargePointVendor": "V", "chargePointModel": "M"})
            ),
            0
        )
        .unwrap()
        .is_empty());
    assert!(s
        .json(
            topic,
            frame("d", "DataTransfer", json!({"vendorId": "x"})),
            0
        )
        .unwrap()
        .is_empty());
    // Without the CALLRESULT the session id falls back to `{charger}-{start ms}`.
    let t = one(s.json(
        topic,
        meter(1, None, "2026-11-24T10:01:00Z", json!([{"value": "1000"}])),
        0,
    ));
    assert_eq!(t.session_id.as_deref(), Some(format!("CP-1-{T0}").as_str()));
    assert_eq!(t.status, Some(Preparing));
    for (bad, reason) in [
        (&b"not json"[..], "invalid_json"),
        (b"{}", "invalid_field"),
        (b"[9, \"x\"]", "invalid_field"),
        (b"[2, \"x\", \"StatusNotification\", {\"connectorId\": 1, \"status\": \"Dancing\", \"errorCode\": \"NoError\"}]", "invalid_field"),
        (b"[2, \"x\", \"StatusNotification\", {\"connectorId\": 100000, \"status\": \"Available\"}]", "out_of_range"),
    ] {
        assert_eq!(s.feed(topic, bad, 0).unwrap_err().reason(), reason, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn ocpp16j_stop_after_unplug_does_not_reopen_the_session() {
    let mut s = Src::ocpp16();
    let topic = "ocpp/CP/in";
    start(&mut s, "CP", 1, 0, 3, "2026-11-24T10:00:00Z");
    s.json(topic, status(1, "Charging", "2026-11-24T10:00:01Z"), 0)
        .unwrap();
    s.json(topic, status(1, "Available", "2026-11-24T10:10:00Z"), 0)
        .unwrap();
    let t = one(s.json(
        topic,
        frame("x", "StopTransaction", json!({"transactionId": 3, "meterStop": 20000, "timestamp": "2026-11-24T10:10:01Z", "reason": "EVDisconnected"})),
        0,
    ));
    assert_eq!(t.status, Some(Available));
    // The final energy, named after the session it closes.
    assert_eq!(
        (t.session_kwh, t.session_id.as_deref()),
        (Some(20.0), Some("3"))
    );
}

// ---------------------------------------------------------------- OCPP 2.0.1 details

#[test]
fn ocpp201_multiplier_and_occupied() {
    let mut s = Src::new("format = \"ocpp201\"\ntopic = \"ocpp/{cp}/in\"\nsite = \"m\"");
    let topic = "ocpp/CS/in";
    let t = one(s.json(topic, json!([2, "1", "StatusNotification", {"timestamp": "2026-11-24T10:00:00Z", "connectorStatus": "Occupied", "evseId": 2, "connectorId": 1}]), 0));
    assert_eq!(t.status, Some(Preparing));
    let ev = |ev: &str, extra: Value| {
        let mut p = json!({"eventType": ev, "timestamp": "2026-11-24T10:01:00Z", "triggerReason": "MeterValuePeriodic", "seqNo": 1,
            "transactionInfo": {"transactionId": "TX1", "chargingState": "Charging"}});
        if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        json!([2, "2", "TransactionEvent", p])
    };
    let t = one(s.json(topic, ev("Started", json!({"evse": {"id": 2}, "meterValue": [{"timestamp": "2026-11-24T10:01:00Z", "sampledValue": [
        {"value": 12.5, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh", "multiplier": 3}},
        {"value": 1234, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W", "multiplier": 2}}]}]})), 0));
    assert_eq!(t.meter_kwh, Some(12.5));
    assert_eq!(t.session_kwh, Some(0.0));
    assert!(close(t.power_kw.unwrap(), 123.4));
    assert_eq!(t.status, Some(Charging));
    // Later events find the EVSE by transaction id; kWh unit with no multiplier.
    let t = one(s.json(
        topic,
        ev(
            "Updated",
            json!({"meterValue": [{"timestamp": "2026-11-24T10:02:00Z", "sampledValue": [
        {"value": 14.0, "unitOfMeasure": {"unit": "kWh"}}]}]}),
        ),
        0,
    ));
    assert_eq!(t.session_kwh, Some(1.5));
    let key_ok = s.json(topic, ev("Updated", json!({})), 0).unwrap();
    assert!(matches!(&key_ok[0], Input::Telemetry { key, .. } if key.charger == "CS-2"));
    // Strings are not 2.0.1 values.
    let e = s.json(topic, ev("Updated", json!({"meterValue": [{"timestamp": "2026-11-24T10:02:00Z", "sampledValue": [{"value": "14"}]}]})), 0).unwrap_err();
    assert_eq!(e.reason(), "invalid_field");
}

// ---------------------------------------------------------------- mapping

#[test]
fn mapping_reads_pointers_scales_and_maps_statuses() {
    let mut s = Src::new(
        "format = \"mapping\"\ntopic = \"acme/{dev}/state\"\nsite = \"m\"\ncharger = \"acme-{dev}\"\n[mapping]\nkind = \"charger\"\nfields = { status = \"/st\", power_kw = \"/m/p\", soc_pct = \"/ev/soc\", ts = \"/t\" }\nscale = { power_kw = 0.001, ts = 1000.0 }\nstatus_map = { \"CHG\" = \"charging\", \"3\" = \"SuspendedEV\" }",
    );
    let t = one(s.json(
        "acme/7/state",
        json!({"st": "CHG", "m": {"p": 7400}, "ev": {"soc": "55"}, "t": 1_795_514_400}),
        0,
    ));
    assert_eq!(
        (t.status, t.soc_pct, t.ts),
        (Some(Charging), Some(55.0), T0)
    );
    assert!(close(t.power_kw.unwrap(), 7.4));
    let t = one(s.json("acme/7/state", json!({"st": 3}), 5));
    assert_eq!((t.status, t.ts), (Some(SuspendedEv), 5));
    assert_eq!(
        s.json("acme/7/state", json!({"st": "??"}), 0)
            .unwrap_err()
            .reason(),
        "invalid_field"
    );
    let mut l = Src::new(
        "format = \"mapping\"\ntopic = \"room/{zone}/{sensor}\"\nsite = \"m\"\n[mapping]\nkind = \"lounge\"\nfields = { occupancy = \"/count\", co2_ppm = \"/air/co2\" }",
    );
    let v = l
        .json("room/bar/cam1", json!({"count": 4, "air": {"co2": 700}}), 0)
        .unwrap();
    assert!(
        matches!(&v[0], Input::Lounge { key, sensor, r } if key.zone == "bar" && sensor == "cam1" && r.occupancy == Some(4) && r.co2_ppm == Some(700.0))
    );
    assert_eq!(
        l.json("room/bar/cam1", json!({"count": -1}), 0)
            .unwrap_err()
            .reason(),
        "out_of_range"
    );
}

// ---------------------------------------------------------------- fuzzing

/// One source per adapter, with a topic that matches it.
fn all_sources() -> Vec<(&'static str, &'static str)> {
    vec![
        ("format = \"ocpp16j\"\ntopic = \"ocpp/{cp}/in\"\nsite = \"s\"", "ocpp/CP/in"),
        ("format = \"ocpp201\"\ntopic = \"ocpp/{cp}/in\"\nsite = \"s\"", "ocpp/CP/in"),
        ("format = \"everest\"\ntopic = \"everest_api/{module}/var/#\"\nsite = \"s\"", "everest_api/m/var/session_info"),
        ("format = \"everest\"\ntopic = \"everest_api/{module}/var/#\"\nsite = \"s\"", "everest_api/m/var/powermeter"),
        ("format = \"everest\"\ntopic = \"everest_api/{module}/var/#\"\nsite = \"s\"", "everest_api/m/var/ev_info"),
        ("format = \"openwb\"\ntopic = \"openWB/chargepoint/{id}/get/#\"\nsite = \"s\"", "openWB/chargepoint/1/get/power"),
        ("format = \"openwb\"\ntopic = \"openWB/chargepoint/{id}/get/#\"\nsite = \"s\"", "openWB/chargepoint/1/get/connected_vehicle/soc"),
        ("format = \"goe\"\ntopic = \"go-eCharger/{serial}/#\"\nsite = \"s\"", "go-eCharger/1/nrg"),
        ("format = \"goe\"\ntopic = \"go-eCharger/{serial}/#\"\nsite = \"s\"", "go-eCharger/1/car"),
        ("format = \"evcc\"\ntopic = \"evcc/loadpoints/{id}/#\"\nsite = \"s\"", "evcc/loadpoints/1/chargeRemainingDuration"),
        ("format = \"zigbee2mqtt\"\ntopic = \"zigbee2mqtt/#\"\nsite = \"s\"\nzone = \"z\"", "zigbee2mqtt/pir"),
        ("format = \"people_counter\"\ntopic = \"pc/{device}\"\nsite = \"s\"\nzone = \"z\"", "pc/d"),
        ("format = \"mapping\"\ntopic = \"x/{d}\"\nsite = \"s\"\ncharger = \"{d}\"\n[mapping]\nkind = \"charger\"\nfields = { status = \"/s\", power_kw = \"/p\", ts = \"/t\" }\nscale = { ts = 1000.0 }", "x/1"),
    ]
}

/// Any JSON value, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("".to_string()),
            Just("Charging".to_string()),
            Just("SuspendedEV".to_string()),
            Just("Energy.Active.Import.Register".to_string()),
            Just("kWh".to_string()),
            Just("2026-11-24T10:00:00Z".to_string()),
            Just("1e308".to_string()),
            Just("-5".to_string()),
            Just("NaN".to_string()),
            "[ -~]{0,12}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// OCPP-shaped frames with random values in the right places.
fn weird_ocpp16() -> impl Strategy<Value = Value> {
    let action = prop_oneof![
        Just("StatusNotification"),
        Just("StartTransaction"),
        Just("StopTransaction"),
        Just("MeterValues"),
        Just("BootNotification"),
        Just("Heartbeat"),
    ];
    let sample = (
        any_json(),
        prop_oneof![Just(json!(null)), Just(json!("Energy.Active.Import.Register")), Just(json!("Power.Active.Import")), Just(json!("SoC")), Just(json!("Voltage")), Just(json!("Temperature")), any_json()],
        prop_oneof![Just(json!(null)), Just(json!("Wh")), Just(json!("kWh")), Just(json!("W")), Just(json!("kW")), Just(json!("K")), any_json()],
        prop_oneof![Just(json!(null)), Just(json!("L1")), Just(json!("L2")), any_json()],
    )
        .prop_map(|(value, measurand, unit, phase)| {
            json!({"value": value, "measurand": measurand, "unit": unit, "phase": phase})
        });
    (
        prop_oneof![Just(2u8), Just(3), Just(4)],
        prop_oneof![Just("a".to_string()), Just("b".to_string())],
        action,
        prop_oneof![(0u32..4).prop_map(|c| json!(c)), any_json()],
        prop_oneof![(0i64..4).prop_map(|c| json!(c)), any_json()],
        prop_oneof![(0i64..100_000_000).prop_map(|c| json!(c)), any_json()],
        prop_oneof![Just(json!("2026-11-24T10:00:00Z")), Just(json!("2026-11-24T09:00:00Z")), Just(json!(null)), any_json()],
        prop::collection::vec(sample, 0..5),
        prop_oneof![Just(json!("Charging")), Just(json!("Available")), Just(json!("Faulted")), any_json()],
    )
        .prop_map(|(kind, uid, action, connector, tx, meter, ts, samples, st)| match kind {
            2 => json!([2, uid, action, {
                "connectorId": connector, "transactionId": tx, "meterStart": meter, "meterStop": meter,
                "timestamp": ts, "status": st, "errorCode": "NoError", "idTag": "T",
                "meterValue": [{"timestamp": ts, "sampledValue": samples}]
            }]),
            3 => json!([3, uid, {"transactionId": tx, "idTagInfo": {"status": "Accepted"}}]),
            _ => json!([4, uid, "GenericError", "", {}]),
        })
}

fn weird_ocpp201() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("Started"), Just("Updated"), Just("Ended"), Just("Other")],
        prop_oneof![Just(json!("TX")), Just(json!("TY")), any_json()],
        prop_oneof![Just(json!("Charging")), Just(json!("SuspendedEV")), Just(json!(null)), any_json()],
        prop_oneof![(0u32..3).prop_map(|e| json!({"id": e})), Just(json!(null)), any_json()],
        any_json(),
        prop_oneof![(-40i64..40).prop_map(|m| json!(m)), any_json()],
        prop_oneof![Just(json!("Occupied")), Just(json!("Available")), any_json()],
        any::<bool>(),
    )
        .prop_map(|(ev, tx, state, evse, value, mult, cstatus, is_status)| {
            if is_status {
                json!([2, "s", "StatusNotification", {"timestamp": "2026-11-24T10:00:00Z", "connectorStatus": cstatus, "evseId": evse.get("id").cloned().unwrap_or(json!(1)), "connectorId": 1}])
            } else {
                json!([2, "t", "TransactionEvent", {
                    "eventType": ev, "timestamp": "2026-11-24T10:00:00Z", "triggerReason": "Trigger", "seqNo": 0,
                    "transactionInfo": {"transactionId": tx, "chargingState": state}, "evse": evse,
                    "meterValue": [{"timestamp": "2026-11-24T10:00:00Z", "sampledValue": [
                        {"value": value, "unitOfMeasure": {"unit": "Wh", "multiplier": mult}}]}]
                }])
            }
        })
}

fn weird_object() -> impl Strategy<Value = Value> {
    let keys = prop_oneof![
        Just("state"),
        Just("charged_energy_wh"),
        Just("latest_total_w"),
        Just("datetime"),
        Just("energy_Wh_import"),
        Just("power_W"),
        Just("voltage_V"),
        Just("current_A"),
        Just("timestamp"),
        Just("soc"),
        Just("estimated_time_full"),
        Just("occupancy"),
        Just("presence"),
        Just("co2"),
        Just("temperature"),
        Just("humidity"),
        Just("current_total"),
        Just("in"),
        Just("out"),
        Just("s"),
        Just("p"),
        Just("t"),
        Just("last_seen"),
        Just("total"),
        Just("L1"),
    ];
    let state = prop_oneof![
        Just(json!("Charging")),
        Just(json!("Unplugged")),
        Just(json!("ChargingPausedEV"))
    ];
    prop::collection::btree_map(
        keys,
        prop_oneof![any_json(), state, (0u32..200).prop_map(|n| json!(n))],
        0..8,
    )
    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_adapter_panics_on_arbitrary_bytes(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..8)) {
        for (src, topic) in all_sources() {
            let mut s = Src::new(src);
            for p in &payloads {
                let _ = s.feed(topic, p, T0);
            }
        }
    }

    #[test]
    fn no_adapter_panics_on_weird_json(values in prop::collection::vec(prop_oneof![weird_object(), any_json()], 1..12)) {
        for (src, topic) in all_sources() {
            let mut s = Src::new(src);
            for v in &values {
                if let Ok(out) = s.json(topic, v.clone(), T0) {
                    for i in out {
                        if let Input::Telemetry { t, .. } = i {
                            prop_assert!(t.status.is_some());
                            for x in [t.power_kw, t.meter_kwh, t.session_kwh, t.soc_pct, t.remaining_s].into_iter().flatten() {
                                prop_assert!(x.is_finite() && x >= 0.0, "{t:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ocpp16j_never_panics_nor_reports_negative_energy(frames in prop::collection::vec(weird_ocpp16(), 1..24)) {
        let mut s = Src::ocpp16();
        for f in frames {
            if let Ok(out) = s.json("ocpp/CP/in", f, T0) {
                for i in out {
                    if let Input::Telemetry { t, .. } = i {
                        prop_assert!(t.status.is_some());
                        prop_assert!(t.session_kwh.is_none_or(|e| e >= 0.0 && e.is_finite()));
                    }
                }
            }
        }
    }

    #[test]
    fn ocpp201_never_panics(frames in prop::collection::vec(weird_ocpp201(), 1..24)) {
        let mut s = Src::new("format = \"ocpp201\"\ntopic = \"ocpp/{cp}/in\"\nsite = \"m\"");
        for f in frames {
            if let Ok(out) = s.json("ocpp/CP/in", f, T0) {
                for i in out {
                    if let Input::Telemetry { t, .. } = i {
                        prop_assert!(t.session_kwh.is_none_or(|e| e >= 0.0 && e.is_finite()));
                    }
                }
            }
        }
    }

    #[test]
    fn people_counter_deltas_never_negative(counts in prop::collection::vec((0u32..1000, 0u32..1000), 1..20)) {
        let mut s = Src::new("format = \"people_counter\"\ntopic = \"pc/{device}\"\nsite = \"s\"\nzone = \"z\"");
        let mut prev: Option<(u32, u32)> = None;
        for (i, o) in counts {
            let out = s.json("pc/d", json!({"in": i, "out": o}), T0).unwrap();
            if let Some((pi, po)) = prev {
                let r = match &out[0] { Input::Lounge { r, .. } => r.clone(), other => panic!("{other:?}") };
                prop_assert_eq!(r.entered, Some(if i >= pi { i - pi } else { i }));
                prop_assert_eq!(r.exited, Some(if o >= po { o - po } else { o }));
            } else {
                prop_assert!(out.is_empty());
            }
            prev = Some((i, o));
        }
    }
}

#[test]
fn ocpp16j_next_car_does_not_inherit_the_old_session() {
    let mut s = Src::ocpp16();
    let topic = "ocpp/CP/in";
    start(&mut s, "CP", 1, 0, 3, "2026-11-24T10:00:00Z");
    s.json(topic, status(1, "Charging", "2026-11-24T10:00:01Z"), 0)
        .unwrap();
    // Unplugged without a StopTransaction (lost), then the next car.
    s.json(topic, status(1, "Available", "2026-11-24T10:10:00Z"), 0)
        .unwrap();
    let t = one(s.json(topic, status(1, "Preparing", "2026-11-24T10:20:00Z"), 0));
    assert_eq!((t.session_id, t.id_tag), (None, None));
    // Idle meter readings carry no session energy.
    let t = one(s.json(
        topic,
        meter(1, None, "2026-11-24T10:20:05Z", json!([{"value": "30000"}])),
        0,
    ));
    assert_eq!(t.session_kwh, None);
    // The late StopTransaction of the first car must not make the new session look finished.
    let out = s
        .json(
            topic,
            frame("x", "StopTransaction", json!({"transactionId": 3, "meterStop": 20000, "timestamp": "2026-11-24T10:10:01Z"})),
            0,
        )
        .unwrap();
    assert!(out.is_empty(), "{out:?}");
}

// ---------------------------------------------------------------- review findings

fn telemetries(r: Result<Vec<Input>, DecodeError>) -> Vec<Telemetry> {
    r.expect("decodes")
        .into_iter()
        .filter_map(|i| match i {
            Input::Telemetry { t, .. } => Some(t),
            _ => None,
        })
        .collect()
}

#[test]
fn ocpp16j_kwh_register_rounded_below_meter_start_is_not_a_reset() {
    let mut s = Src::ocpp16();
    let topic = "ocpp/CP/in";
    start(&mut s, "CP", 1, 10_233_450, 11, "2026-11-24T10:00:00Z");
    let kwh = |s: &mut Src, ts: &str, v: &str| {
        one(s.json(
            topic,
            meter(
                1,
                Some(11),
                ts,
                json!([{"measurand": "Energy.Active.Import.Register", "unit": "kWh", "value": v}]),
            ),
            0,
        ))
        .session_kwh
    };
    // 10233.4 kWh is meterStart rounded down: noise, not a register reset.
    assert_eq!(kwh(&mut s, "2026-11-24T10:01:00Z", "10233.4"), Some(0.0));
    let e = kwh(&mut s, "2026-11-24T10:02:00Z", "10245.5").unwrap();
    assert!(close(e, 12.05), "{e}");
    // A small step back holds the energy (it never decreases).
    let e = kwh(&mut s, "2026-11-24T10:03:00Z", "10245.4").unwrap();
    assert!(close(e, 12.05), "{e}");
    let e = kwh(&mut s, "2026-11-24T10:04:00Z", "10246.5").unwrap();
    assert!(close(e, 13.05), "{e}");
}

#[test]
fn ocpp16j_inlet_and_outlet_values_are_not_mixed() {
    let mut s = Src::ocpp16();
    let topic = "ocpp/CP/in";
    start(&mut s, "CP", 1, 1_000_000, 7, "2026-11-24T10:00:00Z");
    let t = one(s.json(
        topic,
        meter(
            1,
            Some(7),
            "2026-11-24T10:01:00Z",
            json!([
                {"measurand": "Energy.Active.Import.Register", "location": "Outlet", "value": "1002000"},
                {"measurand": "Energy.Active.Import.Register", "location": "Inlet", "value": "1002500"},
                {"measurand": "Power.Active.Import", "phase": "L1", "location": "Outlet", "value": "3600"},
                {"measurand": "Power.Active.Import", "phase": "L1", "location": "Inlet", "value": "3700"},
                {"measurand": "SoC", "location": "EV", "value": "47"},
                {"measurand": "SoC", "location": "Outlet", "value": "99"}
            ]),
        ),
        0,
    ));
    assert_eq!(t.meter_kwh, Some(1002.0));
    assert_eq!(t.session_kwh, Some(2.0));
    assert!(close(t.power_kw.unwrap(), 3.6), "{:?}", t.power_kw);
    assert_eq!(t.soc_pct, Some(47.0));
    // A charger that meters only at the inlet: those values are used.
    let t = one(s.json(
        topic,
        meter(
            1,
            Some(7),
            "2026-11-24T10:02:00Z",
            json!([{"measurand": "Power.Active.Import", "location": "Inlet", "value": "50000"}]),
        ),
        0,
    ));
    assert_eq!(t.power_kw, Some(50.0));
}

#[test]
fn ocpp201_ended_and_available_in_the_same_second_get_increasing_times() {
    let mut s = Src::new("format = \"ocpp201\"\ntopic = \"ocpp/{cp}/in\"\nsite = \"m\"");
    let topic = "ocpp/CS/in";
    let tx = |ev: &str, ts: &str, state: &str| {
        json!([2, format!("{ev}{ts}"), "TransactionEvent", {"eventType": ev, "timestamp": ts,
            "triggerReason": "EVDeparted", "seqNo": 0, "evse": {"id": 1, "connectorId": 1},
            "transactionInfo": {"transactionId": "TX1", "chargingState": state}}])
    };
    let sn = |st: &str, ts: &str| json!([2, format!("{st}{ts}"), "StatusNotification", {"timestamp": ts, "connectorStatus": st, "evseId": 1, "connectorId": 1}]);
    let mut out = Vec::new();
    out.extend(telemetries(s.json(
        topic,
        sn("Occupied", "2026-11-24T10:00:00Z"),
        LATER,
    )));
    out.extend(telemetries(s.json(
        topic,
        tx("Started", "2026-11-24T10:00:00Z", "Charging"),
        LATER,
    )));
    out.extend(telemetries(s.json(
        topic,
        tx("Ended", "2026-11-24T10:30:00Z", "EVConnected"),
        LATER,
    )));
    out.extend(telemetries(s.json(
        topic,
        sn("Available", "2026-11-24T10:30:00Z"),
        LATER,
    )));
    assert_eq!(
        out.iter().map(|t| t.status.unwrap()).collect::<Vec<_>>(),
        vec![Preparing, Charging, Finishing, Available]
    );
    assert!(
        out.windows(2).all(|w| w[0].ts < w[1].ts),
        "{:?}",
        out.iter().map(|t| t.ts).collect::<Vec<_>>()
    );
    // A redelivered frame (same bytes) keeps its time, for the domain to drop.
    let again = telemetries(s.json(topic, sn("Available", "2026-11-24T10:30:00Z"), LATER));
    assert_eq!(again[0].ts, T0 + 1_800_000);
}

#[test]
fn evcc_remaining_duration_is_seconds_and_old_nanoseconds_still_read() {
    let mut s = Src::new(
        "format = \"evcc\"\ntopic = \"evcc/loadpoints/{id}/#\"\nsite = \"home\"\ncharger = \"lp{id}\"",
    );
    s.feed("evcc/loadpoints/1/connected", b"true", T0).unwrap();
    let t = one(s.feed("evcc/loadpoints/1/chargeRemainingDuration", b"1170", T0 + 1));
    assert_eq!(t.remaining_s, Some(1_170.0));
    // evcc before MQTT published seconds (REST's time.Duration JSON) sent nanoseconds.
    let t = one(s.feed(
        "evcc/loadpoints/1/chargeRemainingDuration",
        b"1140000000000",
        T0 + 2,
    ));
    assert_eq!(t.remaining_s, Some(1_140.0));
}

#[test]
fn everest_next_car_does_not_inherit_vehicle_values() {
    let mut s =
        Src::new("format = \"everest\"\ntopic = \"everest_api/{module}/var/#\"\nsite = \"m\"");
    let info = |state: &str, at: i64| json!({"state": state, "datetime": at / 1000, "charged_energy_wh": 1000, "latest_total_w": 0});
    let si = "everest_api/e/var/session_info";
    one(s.json(si, info("Charging", T0), T0));
    let t = one(s.json(
        "everest_api/e/var/ev_info",
        json!({"soc": 80, "target_soc": 80, "estimated_time_full": 0}),
        T0,
    ));
    assert_eq!((t.soc_pct, t.target_soc_pct), (Some(80.0), Some(80.0)));
    one(s.json(si, info("Finished", T0 + 10_000), T0));
    one(s.json(si, info("Unplugged", T0 + 60_000), T0));
    // The next car, two minutes later: nothing of the last one's.
    let t = one(s.json(si, info("Preparing", T0 + 120_000), T0));
    assert_eq!(t.status, Some(Preparing));
    assert_eq!(
        (t.soc_pct, t.target_soc_pct, t.remaining_s),
        (None, None, None)
    );
    let t = one(s.json(si, info("Charging", T0 + 130_000), T0));
    assert_eq!(
        (t.soc_pct, t.target_soc_pct, t.remaining_s),
        (None, None, None)
    );
}

fn openwb() -> Src {
    Src::new(
        "format = \"openwb\"\ntopic = \"openWB/chargepoint/{id}/get/#\"\nsite = \"home\"\ncharger = \"cp{id}\"",
    )
}

#[test]
fn openwb_next_car_does_not_inherit_soc() {
    let mut s = openwb();
    let b = "openWB/chargepoint/3/get/";
    let f = |s: &mut Src, k: &str, v: &str, at: i64| s.feed(&format!("{b}{k}"), v.as_bytes(), at);
    f(&mut s, "plug_state", "false", T0).unwrap();
    f(&mut s, "plug_state", "true", T0 + 1_000).unwrap();
    let t = one(f(
        &mut s,
        "connected_vehicle/soc",
        r#"{"soc": 80}"#,
        T0 + 2_000,
    ));
    assert_eq!(t.soc_pct, Some(80.0));
    f(&mut s, "plug_state", "false", T0 + 60_000).unwrap();
    let t = one(f(&mut s, "plug_state", "true", T0 + 120_000));
    assert_eq!(t.status, Some(Preparing));
    assert_eq!(t.soc_pct, None);
}

#[test]
fn openwb_restart_with_a_car_plugged_in_reports_no_session_energy_until_a_plug_in() {
    let mut s = openwb();
    let b = "openWB/chargepoint/3/get/";
    let f = |s: &mut Src, k: &str, v: &str, at: i64| s.feed(&format!("{b}{k}"), v.as_bytes(), at);
    // The daemon restarted mid-session: the retained values arrive, plug_state already true.
    f(&mut s, "imported", "2000000", T0).unwrap();
    let t = one(f(&mut s, "plug_state", "true", T0));
    assert_eq!(t.session_kwh, None);
    f(&mut s, "charge_state", "true", T0).unwrap();
    let t = one(f(&mut s, "imported", "2001000", T0 + 60_000));
    assert_eq!((t.status, t.session_kwh), (Some(Charging), None));
    // A real plug-in: counted from there.
    f(&mut s, "charge_state", "false", T0 + 70_000).unwrap();
    f(&mut s, "plug_state", "false", T0 + 80_000).unwrap();
    let t = one(f(&mut s, "plug_state", "true", T0 + 90_000));
    assert_eq!(t.session_kwh, Some(0.0));
    let t = one(f(&mut s, "imported", "2002000", T0 + 120_000));
    assert_eq!(t.session_kwh, Some(1.0));
}

#[test]
fn ocpp16j_session_id_stays_stable_without_the_callresult() {
    let mut s = Src::ocpp16();
    let topic = "ocpp/CP/in";
    // The bridge relays only the station's frames: no CALLRESULT with the transactionId.
    s.json(topic, frame("u1", "StartTransaction", json!({"connectorId": 1, "idTag": "T", "meterStart": 1000, "timestamp": "2026-11-24T10:00:00Z"})), 0).unwrap();
    let provisional = format!("CP-1-{T0}");
    let t = one(s.json(topic, status(1, "Charging", "2026-11-24T10:00:01Z"), 0));
    assert_eq!(t.session_id.as_deref(), Some(provisional.as_str()));
    // The transactionId, learnt from MeterValues, does not rename the session.
    let t = one(s.json(
        topic,
        meter(
            1,
            Some(77),
            "2026-11-24T10:01:00Z",
            json!([{"value": "3000"}]),
        ),
        0,
    ));
    assert_eq!(t.session_id.as_deref(), Some(provisional.as_str()));
    assert_eq!(t.session_kwh, Some(2.0));
    let t = one(s.json(
        topic,
        frame(
            "x",
            "StopTransaction",
            json!({"transactionId": 77, "meterStop": 4000, "timestamp": "2026-11-24T10:02:00Z"}),
        ),
        0,
    ));
    assert_eq!(
        (t.status, t.session_id.as_deref(), t.session_kwh),
        (Some(Finishing), Some(provisional.as_str()), Some(3.0))
    );
    // The next transaction, whose CALLRESULT comes before anything shows its id, uses it.
    s.json(topic, status(1, "Available", "2026-11-24T10:03:00Z"), 0)
        .unwrap();
    start(&mut s, "CP", 1, 4000, 78, "2026-11-24T10:10:00Z");
    let t = one(s.json(topic, status(1, "Charging", "2026-11-24T10:10:01Z"), 0));
    assert_eq!(t.session_id.as_deref(), Some("78"));
}

#[test]
fn ocpp16j_meter_values_sharing_a_timestamp_are_merged() {
    let mut s = Src::ocpp16();
    let topic = "ocpp/CP/in";
    start(&mut s, "CP", 1, 1_000_000, 7, "2026-11-24T10:00:00Z");
    let at = "2026-11-24T10:01:00Z";
    let out = telemetries(s.json(
        topic,
        frame(
            "m",
            "MeterValues",
            json!({"connectorId": 1, "transactionId": 7, "meterValue": [
                {"timestamp": at, "sampledValue": [{"value": "1005000"}]},
                {"timestamp": at, "sampledValue": [
                    {"measurand": "Power.Active.Import", "value": "150000"},
                    {"measurand": "SoC", "location": "EV", "value": "55"}]},
                {"timestamp": "2026-11-24T10:01:30Z", "sampledValue": [{"measurand": "SoC", "location": "EV", "value": "56"}]}
            ]}),
        ),
        0,
    ));
    assert_eq!(out.len(), 2, "{out:?}");
    let t = &out[0];
    assert_eq!(t.ts, T0 + 60_000);
    assert_eq!(
        (t.session_kwh, t.power_kw, t.soc_pct),
        (Some(5.0), Some(150.0), Some(55.0))
    );
    assert_eq!((out[1].ts, out[1].soc_pct), (T0 + 90_000, Some(56.0)));
}

/// One MeterValues stamped years ahead (a station clock gone wrong for a frame) used to
/// become the connector's latest meter time: every later reading was "out of order", so the
/// session's energy was only peeked at, never advanced (a register rounded below
/// meterStart then read as no energy at all).
#[test]
fn ocpp16j_one_reading_from_the_future_does_not_freeze_the_session_energy() {
    let mut s = Src::ocpp16();
    let topic = "ocpp/CP/in";
    start(&mut s, "CP", 1, 1_000_000, 9, "2026-11-24T10:00:00Z");
    let wh = |ts: &str, v: &str| {
        meter(
            1,
            Some(9),
            ts,
            json!([{"measurand": "Energy.Active.Import.Register", "unit": "kWh", "value": v}]),
        )
    };
    // Received as they were sent (T0 is 10:00), but for the one from 2036.
    let _ = one(s.json(topic, wh("2036-01-01T00:00:00Z", "1000.0"), T0 + 60_000));
    let b = one(s.json(topic, wh("2026-11-24T10:02:00Z", "999.9"), T0 + 120_000));
    assert_eq!(b.session_kwh, Some(0.0), "rounded below meterStart: noise");
    let c = one(s.json(topic, wh("2026-11-24T10:03:00Z", "1001.0"), T0 + 180_000));
    assert_eq!(c.session_kwh, Some(1.0));
}

/// A line counter with a one-second clock, two crossings in that second: both count. (The
/// second reading kept the first's time, the zone took it for a repeat and dropped it, and
/// the adapter had already moved its baseline: the crossing was lost for good.)
#[test]
fn people_counter_two_crossings_in_one_second_are_two_readings() {
    let mut s = Src::new(
        "format = \"people_counter\"\ntopic = \"pc/{device}\"\nsite = \"s\"\nzone = \"z\"",
    );
    let at = "2026-11-24T10:00:05Z";
    let mut send = |n: u32| {
        s.json("pc/door", json!({"time": at, "in": n, "out": 100}), LATER)
            .unwrap()
    };
    let reading = |out: Vec<Input>| match &out[..] {
        [Input::Lounge { r, .. }] => r.clone(),
        other => panic!("{other:?}"),
    };
    assert!(send(120).is_empty(), "the first counts set the baseline");
    let a = reading(send(121));
    let b = reading(send(122));
    assert!(a.ts < b.ts, "{} {}", a.ts, b.ts);
    assert_eq!((a.entered, b.entered), (Some(1), Some(1)));
    // The same bytes again (a redelivery): not after the last reading (the zone drops it
    // as a repeat), and nothing new in it.
    let again = reading(send(122));
    assert!(again.ts <= b.ts && again.entered == Some(0), "{again:?}");
}

/// A Zigbee2MQTT seat sensor going offline says "nobody here" from it; a device that never
/// reported presence (a lamp, a plug), its coming back online, and the bridge's own topics
/// say nothing, and none of them is an error.
#[test]
fn zigbee2mqtt_offline_seat_sensor_reads_as_absent() {
    let mut s = Src::new(
        "format = \"zigbee2mqtt\"\ntopic = \"zigbee2mqtt/#\"\nsite = \"s\"\n[devices]\nsofa = \"z\"\nchair = \"z\"",
    );
    let json = |s: &mut Src, topic: &str, v: Value| s.json(topic, v, LATER).unwrap();
    let raw = |s: &mut Src, topic: &str, p: &str| s.feed(topic, p.as_bytes(), LATER).unwrap();
    // Not heard from yet (or never a presence sensor, or not even mapped): nothing.
    assert!(json(
        &mut s,
        "zigbee2mqtt/sofa/availability",
        json!({"state": "offline"})
    )
    .is_empty());
    assert!(json(
        &mut s,
        "zigbee2mqtt/hall_lamp/availability",
        json!({"state": "offline"})
    )
    .is_empty());
    json(&mut s, "zigbee2mqtt/sofa", json!({"presence": true}));
    json(&mut s, "zigbee2mqtt/chair", json!({"occupancy": true}));
    let absent = |out: Vec<Input>| match &out[..] {
        [Input::Lounge { sensor, r, .. }] => {
            assert_eq!(r.presence, Some(false), "{r:?}");
            assert_eq!(r.co2_ppm, None);
            sensor.clone()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        absent(json(
            &mut s,
            "zigbee2mqtt/sofa/availability",
            json!({"state": "offline"})
        )),
        "sofa"
    );
    assert_eq!(
        absent(raw(&mut s, "zigbee2mqtt/chair/availability", "offline")),
        "chair"
    );
    assert!(json(
        &mut s,
        "zigbee2mqtt/sofa/availability",
        json!({"state": "online"})
    )
    .is_empty());
    assert!(raw(&mut s, "zigbee2mqtt/sofa/availability", "online").is_empty());
    assert!(json(
        &mut s,
        "zigbee2mqtt/bridge/state",
        json!({"state": "offline"})
    )
    .is_empty());
}
