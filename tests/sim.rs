//! The site simulator: determinism and physics of the model, `run_simulate` against a real
//! Mosquitto, and the embedded broker.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evlounge::domain::input::ChargerStatus;
use evlounge::sim::vehicles::{TAYCAN_GEN1, TAYCAN_GEN2};
use evlounge::sim::{
    run_simulate, start_embedded_broker, ChargerKind, ScriptedArrival, SimCharger, SimConfig,
    SimMessage, SimulateOptions, SiteSim,
};
use evlounge::util::time::parse_rfc3339_ms;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::mpsc;

/// 2026-11-18 08:53 UTC: a weekday morning.
const T0: i64 = 1_795_510_400_000;
const MIN: i64 = 60_000;

fn busy_site(seed: u64) -> SimConfig {
    let mut cfg = SimConfig::standard_site("milano", "evlounge", 10, seed, T0);
    cfg.arrivals_per_hour = 2.0;
    cfg.fault_prob = 0.1;
    cfg.early_unplug_prob = 0.2;
    cfg.offline_per_day = 12.0;
    cfg.walkins_per_hour = 10.0;
    cfg
}

fn run(cfg: SimConfig, until: i64) -> (Vec<SimMessage>, SiteSim) {
    let mut sim = SiteSim::new(cfg);
    let msgs = sim.advance_to(until);
    (msgs, sim)
}

#[test]
fn same_seed_gives_the_same_stream_however_time_is_sliced() {
    let until = T0 + 120 * MIN;
    let (whole, sim_a) = run(busy_site(42), until);
    let mut sim_b = SiteSim::new(busy_site(42));
    let mut sliced = Vec::new();
    let mut t = T0 - 1;
    while t < until {
        t = (t + 777).min(until);
        sliced.extend(sim_b.advance_to(t));
    }
    assert!(whole.len() > 10_000, "{} messages", whole.len());
    assert_eq!(whole.len(), sliced.len());
    assert!(whole == sliced, "streams differ");
    assert_eq!(sim_a.truth(), sim_b.truth());
    assert!(!sim_a.truth().is_empty());

    let (other, _) = run(busy_site(43), until);
    assert!(whole != other, "a different seed gave the same stream");
}

/// CONTRACT §3 charger telemetry: only contract fields, right types.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Telemetry {
    ts: String,
    status: String,
    session_id: Option<String>,
    id_tag: Option<String>,
    vehicle: Option<String>,
    power_kw: Option<f64>,
    meter_kwh: Option<f64>,
    session_kwh: Option<f64>,
    soc_pct: Option<f64>,
    target_soc_pct: Option<f64>,
    voltage_v: Option<f64>,
    current_a: Option<f64>,
    temperature_c: Option<f64>,
    error_code: Option<String>,
}

/// CONTRACT §3 lounge sensor.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lounge {
    ts: i64,
    occupancy: Option<u32>,
    entered: Option<u32>,
    exited: Option<u32>,
    co2_ppm: Option<f64>,
    temperature_c: Option<f64>,
    humidity_pct: Option<f64>,
}

fn telemetry_of(m: &SimMessage) -> Option<(String, Telemetry)> {
    let charger = m
        .topic
        .strip_prefix("evlounge/milano/charger/")?
        .strip_suffix("/telemetry")?;
    let t: Telemetry = serde_json::from_slice(&m.payload)
        .unwrap_or_else(|e| panic!("{}: {e}: {}", m.topic, String::from_utf8_lossy(&m.payload)));
    Some((charger.to_string(), t))
}

#[test]
fn every_message_follows_the_contract_and_physics() {
    let cfg = busy_site(7);
    let max_kw: HashMap<String, f64> = cfg
        .chargers
        .iter()
        .map(|c| (c.id.clone(), c.max_kw))
        .collect();
    let capacity = cfg.zones[0].1;
    let (msgs, sim) = run(cfg, T0 + 8 * 60 * MIN);

    let mut last_ts = i64::MIN;
    let mut meter: HashMap<String, f64> = HashMap::new();
    let mut soc: HashMap<String, f64> = HashMap::new();
    let mut session_kwh: HashMap<String, f64> = HashMap::new();
    let mut statuses = HashSet::new();
    let mut offline_seen = 0;
    let mut occupancy_seen = HashSet::new();
    for m in &msgs {
        assert!(m.ts_ms >= last_ts, "out of order at {}", m.topic);
        last_ts = m.ts_ms;
        if let Some((charger, t)) = telemetry_of(m) {
            assert!(!m.retain);
            let status = ChargerStatus::parse(&t.status)
                .unwrap_or_else(|| panic!("status {:?} is not an OCPP state", t.status));
            statuses.insert(status);
            assert_eq!(parse_rfc3339_ms(&t.ts), Some(m.ts_ms), "ts {}", t.ts);
            let p = t.power_kw.expect("power_kw");
            assert!(
                p >= 0.0 && p <= max_kw[&charger] + 1e-9,
                "{charger}: {p} kW"
            );
            let e = t.meter_kwh.expect("meter_kwh");
            let prev = meter.insert(charger.clone(), e).unwrap_or(0.0);
            assert!(e >= prev, "{charger}: meter went back {prev} → {e}");
            if let Some(sid) = &t.session_id {
                assert!(sid.starts_with(&format!("S-{charger}-")), "{sid}");
                if let Some(s) = t.soc_pct {
                    assert!((0.0..=100.0).contains(&s), "{sid}: soc {s}");
                    let prev = soc.insert(sid.clone(), s).unwrap_or(0.0);
                    assert!(s >= prev, "{sid}: soc went back {prev} → {s}");
                    assert!(matches!(t.target_soc_pct, Some(x) if x == 80.0 || x == 100.0));
                }
                let k = t.session_kwh.expect("session_kwh in a session");
                let prev = session_kwh.insert(sid.clone(), k).unwrap_or(0.0);
                assert!(k >= prev);
            } else {
                assert_eq!(p, 0.0, "{charger}: power without a session");
            }
            if status == ChargerStatus::Faulted {
                assert!(t.error_code.is_some());
            }
        } else if m.topic.ends_with("/availability") {
            assert!(m.retain);
            match m.payload.as_slice() {
                b"online" => {}
                b"offline" => offline_seen += 1,
                other => panic!("availability {:?}", String::from_utf8_lossy(other)),
            }
        } else {
            assert!(
                m.topic.starts_with("evlounge/milano/lounge/lounge/"),
                "{}",
                m.topic
            );
            let l: Lounge = serde_json::from_slice(&m.payload).expect("lounge JSON");
            assert_eq!(l.ts, m.ts_ms);
            if let Some(o) = l.occupancy {
                assert!(o <= capacity);
                occupancy_seen.insert(o);
            }
            if let Some(c) = l.co2_ppm {
                assert!((400.0..=420.0 + 25.0 * f64::from(capacity)).contains(&c));
                assert!(l.temperature_c.is_some() && l.humidity_pct.is_some());
            }
            assert!(l.entered.is_some() == l.exited.is_some());
        }
    }

    // The run is long and eventful enough to show every behaviour the daemon must handle.
    for s in [
        ChargerStatus::Available,
        ChargerStatus::Preparing,
        ChargerStatus::SuspendedEvse,
        ChargerStatus::SuspendedEv,
        ChargerStatus::Charging,
        ChargerStatus::Finishing,
        ChargerStatus::Faulted,
    ] {
        assert!(statuses.contains(&s), "never saw {s:?}");
    }
    assert!(offline_seen > 0);
    assert!(occupancy_seen.len() > 3, "lounge occupancy never moved");
    let truth = sim.truth();
    assert!(truth.iter().any(|t| t.reached_target_ms.is_some()));
    assert!(truth.iter().any(|t| t.early_unplug));
    assert!(truth.iter().any(|t| t.faulted));
    for t in truth {
        assert!(t.soc_end >= t.soc_start && t.soc_end <= 100.0);
        if let Some(r) = t.reached_target_ms {
            assert!(t.soc_end >= t.target - 0.1, "{t:?}");
            assert!(t.unplugged_ms.is_none_or(|u| u > r));
            assert!(!t.early_unplug && !t.faulted);
        }
        if t.early_unplug {
            assert!(
                t.reached_target_ms.is_none() && t.soc_end < t.target - 5.0,
                "{t:?}"
            );
        }
    }
}

fn one_dc(max_kw: f64) -> SimConfig {
    let mut cfg = SimConfig::new(
        "milano",
        "evlounge",
        vec![SimCharger {
            id: "hpc-1".into(),
            bay: "Bay 1".into(),
            max_kw,
            kind: ChargerKind::Dc,
        }],
        vec![("lounge".into(), 10)],
        5,
        T0,
    );
    cfg.arrivals_per_hour = 0.0;
    cfg.walkins_per_hour = 0.0;
    cfg.offline_per_day = 0.0;
    cfg.lounge_visit_prob = 1.0;
    cfg.warm_start = false;
    cfg
}

fn session_telemetry(msgs: &[SimMessage]) -> Vec<(i64, Telemetry)> {
    msgs.iter()
        .filter_map(|m| telemetry_of(m).map(|(_, t)| (m.ts_ms, t)))
        .collect()
}

/// Consecutive runs of one status: (status, first ts, last-run end ts).
fn status_runs(tel: &[(i64, Telemetry)]) -> Vec<(String, i64, i64)> {
    let mut runs: Vec<(String, i64, i64)> = Vec::new();
    for (ts, t) in tel {
        match runs.last_mut() {
            Some(r) if r.0 == t.status => r.2 = *ts,
            _ => {
                if let Some(r) = runs.last_mut() {
                    r.2 = *ts;
                }
                runs.push((t.status.clone(), *ts, *ts));
            }
        }
    }
    runs
}

#[test]
fn taycan_dc_session_from_plug_to_unplug() {
    let mut sim = SiteSim::new(one_dc(320.0));
    assert!(sim.script_arrival(
        "hpc-1",
        ScriptedArrival {
            at_ms: T0 + 10_000,
            vehicle: &TAYCAN_GEN1,
            soc_start: 10.0,
            target: 80.0,
            early_stop_soc: None,
            dwell_ms: Some(4 * MIN),
        }
    ));
    assert!(!sim.script_arrival(
        "nope",
        ScriptedArrival {
            at_ms: T0,
            vehicle: &TAYCAN_GEN1,
            soc_start: 10.0,
            target: 80.0,
            early_stop_soc: None,
            dwell_ms: None,
        }
    ));
    let msgs = sim.advance_to(T0 + 60 * MIN);
    let tel = session_telemetry(&msgs);

    let runs = status_runs(&tel);
    let names: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "available",
            "preparing",
            "suspended_evse",
            "suspended_ev",
            "charging",
            "suspended_ev",
            "finishing",
            "available"
        ]
    );
    // The start-of-DC blip: charger not offering 1–3 s, then the car not taking 2–5 s.
    let evse = runs[2].2 - runs[2].1;
    let blip = runs[3].2 - runs[3].1;
    assert!(
        (1_000..=3_000).contains(&evse),
        "suspended_evse for {evse} ms"
    );
    assert!((2_000..=5_000).contains(&blip), "blip for {blip} ms");

    let truth = sim.truth();
    assert_eq!(truth.len(), 1);
    let t = &truth[0];
    assert_eq!(t.session_id, "S-hpc-1-1");
    assert_eq!(t.plugged_ms, T0 + 10_000);
    let reached = t.reached_target_ms.expect("reached target");
    let minutes = (reached - t.plugged_ms) as f64 / MIN as f64;
    assert!(
        (15.0..=25.0).contains(&minutes),
        "10→80 took {minutes:.1} min"
    );
    assert!(t.unplugged_ms.expect("unplugged") >= reached + 4 * MIN);
    assert!(!t.early_unplug && !t.faulted);
    // ~58.6 kWh into the pack at 96 % efficiency.
    assert!(
        (58.0..=64.0).contains(&t.energy_kwh),
        "{} kWh",
        t.energy_kwh
    );

    let powers: Vec<f64> = tel.iter().filter_map(|(_, t)| t.power_kw).collect();
    let peak = powers.iter().cloned().fold(0.0, f64::max);
    assert!((260.0..=270.0).contains(&peak), "peak {peak}");
    // At the target the power tapers towards zero before suspended_ev.
    let last_charging = tel
        .iter()
        .rev()
        .find(|(_, t)| t.status == "charging")
        .and_then(|(_, t)| t.power_kw)
        .unwrap();
    assert!(last_charging < 10.0, "last charging power {last_charging}");
    let soc_at_end = tel
        .iter()
        .filter_map(|(_, t)| t.soc_pct)
        .fold(0.0, f64::max);
    assert!((80.0..=80.5).contains(&soc_at_end));
    let v = tel.iter().find_map(|(_, t)| t.voltage_v).unwrap();
    assert!((700.0..=860.0).contains(&v), "800 V class: {v}");

    // The driver waited in the lounge while charging.
    let occ: Vec<u32> = msgs
        .iter()
        .filter(|m| m.topic.ends_with("/counter-1"))
        .map(|m| {
            serde_json::from_slice::<Lounge>(&m.payload)
                .unwrap()
                .occupancy
                .unwrap()
        })
        .collect();
    assert_eq!(occ.first(), Some(&0));
    assert!(occ.contains(&1));
    assert_eq!(occ.last(), Some(&0));
}

#[test]
fn charger_limit_caps_power_and_early_stop_ends_from_charging() {
    let mut sim = SiteSim::new(one_dc(150.0));
    sim.script_arrival(
        "hpc-1",
        ScriptedArrival {
            at_ms: T0,
            vehicle: &TAYCAN_GEN2,
            soc_start: 20.0,
            target: 80.0,
            early_stop_soc: Some(50.0),
            dwell_ms: None,
        },
    );
    let msgs = sim.advance_to(T0 + 60 * MIN);
    let tel = session_telemetry(&msgs);
    let peak = tel
        .iter()
        .filter_map(|(_, t)| t.power_kw)
        .fold(0.0, f64::max);
    assert_eq!(peak, 150.0);

    let t = &sim.truth()[0];
    assert!(t.early_unplug);
    assert!(t.reached_target_ms.is_none());
    assert!((50.0..51.0).contains(&t.soc_end), "{}", t.soc_end);
    // Straight from charging at high power to finishing, then available.
    let runs = status_runs(&tel);
    let names: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        &names[names.len() - 3..],
        ["charging", "finishing", "available"]
    );
    let last_charging = tel
        .iter()
        .rev()
        .find(|(_, t)| t.status == "charging")
        .and_then(|(_, t)| t.power_kw)
        .unwrap();
    assert!(last_charging > 100.0, "{last_charging}");
}

// ---------------------------------------------------------------------------------------------
// Against real brokers.

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        // Unlimited in-flight and a deep queue: the defaults (20 / 1000) drop QoS 1 floods.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_inflight_messages 0\nmax_queued_messages 1000000\n"
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto installed");
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A subscriber counting messages under `evlounge/#`; `test/sentinel` is reported on `done`.
struct Counter {
    count: Arc<AtomicU64>,
    sentinel: mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn counter(
    port: u16,
    threshold: u64,
    reached: Option<tokio::sync::oneshot::Sender<()>>,
) -> Counter {
    let mut o = MqttOptions::new("test-counter", "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(o, 100);
    client
        .subscribe("evlounge/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe("test/sentinel", QoS::AtLeastOnce)
        .await
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let (sent_tx, sentinel) = mpsc::channel(1);
    let (ready_tx, mut ready) = mpsc::channel(1);
    let c = Arc::clone(&count);
    let task = tokio::spawn(async move {
        let _client = client; // dropping it would end the event loop
        let mut reached = reached;
        let mut subacks = 0;
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subacks += 1;
                    if subacks == 2 {
                        let _ = ready_tx.send(()).await;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.topic == "test/sentinel" {
                        let _ = sent_tx.send(()).await;
                    } else {
                        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                        if n >= threshold {
                            if let Some(tx) = reached.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready.recv())
        .await
        .expect("subscribed");
    Counter {
        count,
        sentinel,
        task,
    }
}

/// Everything published before the sentinel has reached the subscriber once the sentinel has:
/// the broker routes in order, and the simulator's messages were all acknowledged before.
async fn publish_sentinel_and_wait(port: u16, c: &mut Counter) {
    let (client, mut ev) =
        AsyncClient::new(MqttOptions::new("test-sentinel", "127.0.0.1", port), 10);
    client
        .publish("test/sentinel", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let pump = tokio::spawn(async move {
        loop {
            if ev.poll().await.is_err() {
                return;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), c.sentinel.recv())
        .await
        .expect("sentinel arrives");
    pump.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_publishes_exactly_what_it_reports_qos1() {
    let broker = Mosquitto::start();
    let mut sub = counter(broker.port, u64::MAX, None).await;
    let opts = SimulateOptions {
        mqtt_url: broker.url(),
        site: "milano".into(),
        chargers: 5,
        rate_hz: 50.0,
        speed: 10.0,
        qos: 1,
        connections: 2,
        max_messages: Some(400),
        duration: Some(Duration::from_secs(30)),
        ..SimulateOptions::default()
    };
    let report = run_simulate(opts, std::future::pending()).await.unwrap();
    assert_eq!(report.messages, 400);
    assert!(report.msg_per_s > 0.0);
    publish_sentinel_and_wait(broker.port, &mut sub).await;
    assert_eq!(sub.count.load(Ordering::SeqCst), 400);
    sub.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_stops_on_shutdown_and_reports_what_arrived() {
    let broker = Mosquitto::start();
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
    let mut sub = counter(broker.port, 200, Some(reached_tx)).await;
    let opts = SimulateOptions {
        mqtt_url: broker.url(),
        chargers: 20,
        rate_hz: 20.0,
        qos: 1,
        connections: 3,
        ..SimulateOptions::default()
    };
    let shutdown = async {
        let _ = reached_rx.await;
    };
    let report = tokio::time::timeout(Duration::from_secs(30), run_simulate(opts, shutdown))
        .await
        .expect("stops on shutdown")
        .unwrap();
    assert!(report.messages >= 200, "{report:?}");
    publish_sentinel_and_wait(broker.port, &mut sub).await;
    assert_eq!(sub.count.load(Ordering::SeqCst), report.messages);
    sub.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_without_a_broker_fails_instead_of_hanging() {
    let opts = SimulateOptions {
        mqtt_url: format!("mqtt://127.0.0.1:{}", free_port()),
        ..SimulateOptions::default()
    };
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        run_simulate(opts, std::future::pending()),
    )
    .await
    .expect("gives up");
    let err = r.expect_err("no broker").to_string();
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_round_trips_qos1_and_keeps_retained() {
    let addr = start_embedded_broker("127.0.0.1:0".parse().unwrap()).unwrap();
    assert_ne!(addr.port(), 0);

    let (sub, mut sub_ev) =
        AsyncClient::new(MqttOptions::new("rt-sub", "127.0.0.1", addr.port()), 10);
    sub.subscribe("rt/#", QoS::AtLeastOnce).await.unwrap();
    let (got_tx, mut got) = mpsc::channel(8);
    let (ready_tx, mut ready) = mpsc::channel(1);
    let sub_task = tokio::spawn(async move {
        let _sub = sub;
        loop {
            match sub_ev.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(()).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = got_tx
                        .send((p.topic.clone(), p.payload.to_vec(), p.qos, p.retain))
                        .await;
                }
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready.recv())
        .await
        .expect("subscribed");

    let (publ, mut pub_ev) =
        AsyncClient::new(MqttOptions::new("rt-pub", "127.0.0.1", addr.port()), 10);
    publ.publish("rt/x", QoS::AtLeastOnce, false, "hello")
        .await
        .unwrap();
    publ.publish("rt/avail", QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        let mut acks = 0;
        while acks < 2 {
            if let Event::Incoming(Packet::PubAck(_)) = pub_ev.poll().await.unwrap() {
                acks += 1;
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "publisher got its PUBACKs");
    let (topic, payload, qos, _) = tokio::time::timeout(Duration::from_secs(10), got.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (topic.as_str(), payload.as_slice(), qos),
        ("rt/x", &b"hello"[..], QoS::AtLeastOnce)
    );
    sub_task.abort();

    // A late subscriber gets the retained availability (the charger's last will relies on it).
    let (late, mut late_ev) =
        AsyncClient::new(MqttOptions::new("rt-late", "127.0.0.1", addr.port()), 10);
    late.subscribe("rt/avail", QoS::AtLeastOnce).await.unwrap();
    let retained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = late_ev.poll().await.unwrap() {
                return (p.payload.to_vec(), p.retain);
            }
        }
    })
    .await
    .expect("retained message delivered");
    assert_eq!(retained, (b"online".to_vec(), true));
}
