//! The simulator knows when each car reached its target; the daemon's decisions, fed the
//! simulator's own messages (decoded exactly as from MQTT), must agree: one completion per
//! session that reached its target, a stop for the early unplugs, nothing for no-starts.

use std::collections::HashMap;

use evlounge::domain::charger::{ChargerInput, ChargerMachine, Effect};
use evlounge::domain::event::EventKind;
use evlounge::domain::thresholds::{ChargerKind, ChargerMeta, Thresholds};
use evlounge::ingest::decode::{self, Route};
use evlounge::sim::model::{ChargerKind as SimKind, SimConfig, SiteSim};

#[test]
fn every_simulated_session_completes_exactly_once_when_the_car_reached_its_target() {
    let start = 1_790_000_000_000;
    let mut cfg = SimConfig::standard_site("milano", "evlounge", 10, 42, start);
    cfg.arrivals_per_hour = 2.0;
    let metas: HashMap<String, ChargerMeta> = cfg
        .chargers
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                ChargerMeta {
                    site: "milano".into(),
                    charger: c.id.clone(),
                    bay: c.bay.clone(),
                    max_kw: Some(c.max_kw),
                    kind: match c.kind {
                        SimKind::Dc => ChargerKind::Dc,
                        SimKind::Ac => ChargerKind::Ac,
                    },
                    thresholds: Thresholds::default(),
                },
            )
        })
        .collect();
    let mut machines: HashMap<String, ChargerMachine> = metas
        .iter()
        .map(|(id, m)| (id.clone(), ChargerMachine::new(m)))
        .collect();
    let mut sim = SiteSim::new(cfg);
    // events by (charger, session_id)
    let mut events: HashMap<(String, String), Vec<EventKind>> = HashMap::new();
    let end = start + 12 * 3_600_000;
    let mut t = start;
    while t < end {
        t += 60_000;
        for m in sim.advance_to(t) {
            let Some(Route::Telemetry { charger, .. }) = decode::route("evlounge", &m.topic) else {
                continue;
            };
            let tel = decode::telemetry(&m.payload, m.ts_ms)
                .expect("simulator payloads are valid")
                .value;
            let (Some(meta), Some(mach)) = (metas.get(charger), machines.get_mut(charger)) else {
                panic!("unknown charger {charger}");
            };
            for eff in mach.step(meta, ChargerInput::Telemetry(&tel)).effects {
                if let Effect::Event(e) = eff {
                    if let Some(sid) = e.session_id.clone() {
                        events
                            .entry((charger.to_string(), sid))
                            .or_default()
                            .push(e.kind);
                    }
                }
            }
        }
    }
    let truth = sim.truth().to_vec();
    let finished: Vec<_> = truth.iter().filter(|s| s.unplugged_ms.is_some()).collect();
    assert!(
        finished.len() >= 30,
        "a busy day: {} sessions",
        finished.len()
    );
    let mut checked = 0;
    for s in finished {
        let kinds = events
            .get(&(s.charger.clone(), s.session_id.clone()))
            .cloned()
            .unwrap_or_default();
        let completes = kinds
            .iter()
            .filter(|k| **k == EventKind::ChargingComplete)
            .count();
        let stops = kinds
            .iter()
            .filter(|k| **k == EventKind::ChargingStopped)
            .count();
        assert!(completes + stops <= 1, "{s:?}: {kinds:?}");
        if s.faulted {
            continue;
        }
        if s.no_start {
            assert_eq!(completes + stops, 0, "{s:?}: {kinds:?}");
            assert!(
                kinds.contains(&EventKind::ChargingNotStarted),
                "{s:?}: {kinds:?}"
            );
        } else if s.early_unplug {
            assert_eq!(stops, 1, "early unplug is a stop: {s:?}: {kinds:?}");
        } else if s.reached_target_ms.is_some() {
            assert_eq!(
                completes, 1,
                "reached target, completes once: {s:?}: {kinds:?}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 25, "{checked} sessions compared");
}
