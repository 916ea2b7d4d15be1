//! One lounge zone's occupancy and full/free decisions (CONTRACT §3–5). Pure.
//!
//! Occupancy sources, in order of trust: absolute head counts (`occupancy`, summed over
//! the sensors that report one), line-crossing deltas (`entered`/`exited`, applied on top
//! of the last absolute count and dropped when a new one re-bases it, clamped at 0), and
//! presence sensors (only when the zone has no counter at all: present sensors = people).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::{event_id, Event, EventKind};
use super::input::{LoungeReading, TsMs};
use super::thresholds::ZoneMeta;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ZoneStep {
    /// `false`: the reading was a duplicate or older than the sensor's last one.
    pub applied: bool,
    pub events: Vec<Event>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveZone {
    pub site: String,
    pub zone: String,
    pub name: String,
    pub occupancy: u32,
    pub capacity: Option<u32>,
    pub full: bool,
    pub co2_ppm: Option<f64>,
    pub temperature_c: Option<f64>,
    pub humidity_pct: Option<f64>,
    pub last_ts: Option<TsMs>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct SensorState {
    last_ts: TsMs,
    absolute: Option<u32>,
    present: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZoneMachine {
    sensors: BTreeMap<String, SensorState>,
    /// Some sensor has ever counted people (absolute or line crossing): presence
    /// sensors no longer decide occupancy.
    has_counter: bool,
    /// Net line crossings since the last absolute count, kept so that the total is ≥ 0.
    delta: i64,
    occupancy: u32,
    full: bool,
    seq_full: u32,
    seq_free: u32,
    co2_ppm: Option<f64>,
    temperature_c: Option<f64>,
    humidity_pct: Option<f64>,
    last_ts: Option<TsMs>,
    last_event_ts: Option<TsMs>,
}

impl ZoneMachine {
    pub fn new(_meta: &ZoneMeta) -> Self {
        ZoneMachine::default()
    }

    /// The time of the last reading applied; `None` before the first.
    pub fn last_ts(&self) -> Option<TsMs> {
        self.last_ts
    }

    pub fn step(&mut self, meta: &ZoneMeta, sensor: &str, r: &LoungeReading) -> ZoneStep {
        if self.sensors.get(sensor).is_some_and(|s| r.ts <= s.last_ts) {
            return ZoneStep::default();
        }
        let st = self.sensors.entry(sensor.to_string()).or_default();
        st.last_ts = r.ts;
        if let Some(p) = r.presence {
            st.present = Some(p);
        }
        if let Some(n) = r.occupancy {
            // An absolute count already includes every crossing so far.
            st.absolute = Some(n);
            self.has_counter = true;
            self.delta = 0;
        } else if r.entered.is_some() || r.exited.is_some() {
            self.has_counter = true;
            let base = self.absolute_sum();
            let moved = i64::from(r.entered.unwrap_or(0)) - i64::from(r.exited.unwrap_or(0));
            let total = (base + self.delta + moved).max(0);
            self.delta = total - base;
        }
        if r.co2_ppm.is_some() {
            self.co2_ppm = r.co2_ppm;
        }
        if r.temperature_c.is_some() {
            self.temperature_c = r.temperature_c;
        }
        if r.humidity_pct.is_some() {
            self.humidity_pct = r.humidity_pct;
        }
        self.last_ts = self.last_ts.max(Some(r.ts));

        self.occupancy = if self.has_counter {
            u32::try_from((self.absolute_sum() + self.delta).max(0)).unwrap_or(u32::MAX)
        } else {
            let n = self
                .sensors
                .values()
                .filter(|s| s.present == Some(true))
                .count();
            u32::try_from(n).unwrap_or(u32::MAX)
        };

        let mut events = Vec::new();
        if let Some(cap) = meta.capacity.filter(|c| *c > 0) {
            let pct = f64::from(self.occupancy) * 100.0 / f64::from(cap);
            let th = &meta.thresholds;
            let kind = if !self.full && pct >= th.lounge_full_pct {
                self.full = true;
                self.seq_full += 1;
                Some((EventKind::LoungeFull, self.seq_full))
            } else if self.full && pct < th.lounge_free_pct {
                self.full = false;
                self.seq_free += 1;
                Some((EventKind::LoungeFree, self.seq_free))
            } else {
                None
            };
            if let Some((kind, seq)) = kind {
                let ts = self.last_event_ts.map_or(r.ts, |l| l.max(r.ts));
                self.last_event_ts = Some(ts);
                let id = event_id(&meta.site, &meta.zone, "", kind, seq);
                let mut e = Event::new(kind, ts, &meta.site, id);
                e.zone = Some(meta.zone.clone());
                e.occupancy = Some(self.occupancy);
                e.capacity = Some(cap);
                events.push(e);
            }
        }
        ZoneStep {
            applied: true,
            events,
        }
    }

    pub fn live(&self, meta: &ZoneMeta) -> LiveZone {
        LiveZone {
            site: meta.site.clone(),
            zone: meta.zone.clone(),
            name: meta.name.clone(),
            occupancy: self.occupancy,
            capacity: meta.capacity,
            full: self.full,
            co2_ppm: self.co2_ppm,
            temperature_c: self.temperature_c,
            humidity_pct: self.humidity_pct,
            last_ts: self.last_ts,
        }
    }

    fn absolute_sum(&self) -> i64 {
        self.sensors
            .values()
            .filter_map(|s| s.absolute)
            .map(i64::from)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::thresholds::Thresholds;

    const T0: TsMs = 1_795_547_378_000;

    fn meta(capacity: Option<u32>) -> ZoneMeta {
        ZoneMeta {
            site: "milano".into(),
            zone: "lounge".into(),
            name: "Lounge".into(),
            capacity,
            thresholds: Thresholds::default(),
        }
    }

    fn at(ts_s: i64) -> LoungeReading {
        LoungeReading {
            ts: T0 + ts_s * 1000,
            ..LoungeReading::default()
        }
    }

    fn count(n: u32, ts_s: i64) -> LoungeReading {
        LoungeReading {
            occupancy: Some(n),
            ..at(ts_s)
        }
    }

    fn present(p: bool, ts_s: i64) -> LoungeReading {
        LoungeReading {
            presence: Some(p),
            ..at(ts_s)
        }
    }

    #[test]
    fn a_seat_sensor_that_goes_away_no_longer_counts() {
        let m = meta(Some(10));
        let mut z = ZoneMachine::new(&m);
        z.step(&m, "sofa", &present(true, 1));
        z.step(&m, "chair", &present(true, 2));
        assert_eq!(z.live(&m).occupancy, 2);
        // The sofa's battery dies while it says "present": its offline says absent.
        z.step(&m, "sofa", &present(false, 3));
        assert_eq!(z.live(&m).occupancy, 1);
    }

    fn cross(entered: u32, exited: u32, ts_s: i64) -> LoungeReading {
        LoungeReading {
            entered: Some(entered),
            exited: Some(exited),
            ..at(ts_s)
        }
    }

    #[test]
    fn full_and_free_with_hysteresis() {
        let m = meta(Some(10));
        let mut z = ZoneMachine::new(&m);
        assert!(z.step(&m, "cam", &count(9, 1)).events.is_empty());
        let full = z.step(&m, "cam", &count(10, 2)).events;
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].kind, EventKind::LoungeFull);
        assert_eq!((full[0].occupancy, full[0].capacity), (Some(10), Some(10)));
        assert_eq!(full[0].zone.as_deref(), Some("lounge"));
        assert_eq!(
            full[0].event_id,
            event_id("milano", "lounge", "", EventKind::LoungeFull, 1)
        );
        assert!(
            z.step(&m, "cam", &count(12, 3)).events.is_empty(),
            "already full"
        );
        assert!(
            z.step(&m, "cam", &count(9, 4)).events.is_empty(),
            "90 % is not < 90 %"
        );
        let free = z.step(&m, "cam", &count(8, 5)).events;
        assert_eq!(free[0].kind, EventKind::LoungeFree);
        let again = z.step(&m, "cam", &count(10, 6)).events;
        assert_eq!(
            again[0].event_id,
            event_id("milano", "lounge", "", EventKind::LoungeFull, 2),
            "a second full is a new event"
        );
        assert!(z.live(&m).full);
    }

    #[test]
    fn line_crossings_adjust_clamp_and_rebase() {
        let m = meta(Some(40));
        let mut z = ZoneMachine::new(&m);
        z.step(&m, "door", &cross(3, 0, 1));
        z.step(&m, "door", &cross(1, 2, 2));
        assert_eq!(z.live(&m).occupancy, 2);
        z.step(&m, "door", &cross(0, 5, 3));
        assert_eq!(z.live(&m).occupancy, 0, "clamped at 0");
        z.step(&m, "door", &cross(2, 0, 4));
        assert_eq!(
            z.live(&m).occupancy,
            2,
            "the clamp does not remember phantom exits"
        );
        // A camera's absolute count re-bases the drifting door count.
        z.step(&m, "cam", &count(7, 5));
        assert_eq!(z.live(&m).occupancy, 7);
        z.step(&m, "door", &cross(1, 0, 6));
        assert_eq!(z.live(&m).occupancy, 8);
        z.step(&m, "cam", &count(5, 7));
        assert_eq!(z.live(&m).occupancy, 5);
    }

    #[test]
    fn presence_sensors_count_when_there_is_no_counter() {
        let m = meta(Some(2));
        let mut z = ZoneMachine::new(&m);
        let p = |v: bool, ts: i64| LoungeReading {
            presence: Some(v),
            ..at(ts)
        };
        z.step(&m, "seat-1", &p(true, 1));
        assert_eq!(z.live(&m).occupancy, 1);
        let ev = z.step(&m, "seat-2", &p(true, 2)).events;
        assert_eq!(ev[0].kind, EventKind::LoungeFull);
        z.step(&m, "seat-1", &p(false, 3));
        assert_eq!(z.live(&m).occupancy, 1);
        // Once a counter exists it decides; presence only describes seats.
        z.step(&m, "cam", &count(4, 4));
        z.step(&m, "seat-1", &p(true, 5));
        assert_eq!(z.live(&m).occupancy, 4);
    }

    #[test]
    fn old_and_duplicate_readings_are_ignored_per_sensor() {
        let m = meta(Some(40));
        let mut z = ZoneMachine::new(&m);
        assert!(z.step(&m, "door", &cross(3, 0, 10)).applied);
        assert!(!z.step(&m, "door", &cross(3, 0, 10)).applied, "redelivery");
        assert!(!z.step(&m, "door", &cross(5, 0, 5)).applied, "older");
        assert!(
            z.step(&m, "door2", &cross(1, 0, 5)).applied,
            "other sensor's clock"
        );
        assert_eq!(z.live(&m).occupancy, 4);
    }

    #[test]
    fn no_capacity_no_events_and_environment_is_kept() {
        let m = meta(None);
        let mut z = ZoneMachine::new(&m);
        assert!(z.step(&m, "cam", &count(500, 1)).events.is_empty());
        z.step(
            &m,
            "air",
            &LoungeReading {
                co2_ppm: Some(820.0),
                temperature_c: Some(22.5),
                humidity_pct: Some(41.0),
                ..at(2)
            },
        );
        z.step(
            &m,
            "air",
            &LoungeReading {
                co2_ppm: Some(900.0),
                ..at(3)
            },
        );
        let live = z.live(&m);
        assert_eq!(live.occupancy, 500);
        assert_eq!(
            (live.co2_ppm, live.temperature_c, live.humidity_pct),
            (Some(900.0), Some(22.5), Some(41.0))
        );
        assert_eq!(live.last_ts, Some(T0 + 3000));
    }

    #[test]
    fn state_survives_serde() {
        let m = meta(Some(10));
        let mut z = ZoneMachine::new(&m);
        z.step(&m, "cam", &count(10, 1));
        let mut back: ZoneMachine =
            serde_json::from_str(&serde_json::to_string(&z).unwrap()).unwrap();
        assert_eq!(back, z);
        let a = z.step(&m, "cam", &count(1, 2)).events;
        let b = back.step(&m, "cam", &count(1, 2)).events;
        assert_eq!(a, b);
        assert_eq!(a[0].kind, EventKind::LoungeFree);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum R {
            Count(u32),
            Cross(u32, u32),
            Presence(bool),
        }

        fn reading() -> impl Strategy<Value = (u8, i64, R)> {
            let r = prop_oneof![
                (0u32..30).prop_map(R::Count),
                (0u32..6, 0u32..9).prop_map(|(a, b)| R::Cross(a, b)),
                any::<bool>().prop_map(R::Presence),
            ];
            (0u8..3, 1i64..20, r)
        }

        proptest! {
            #[test]
            fn occupancy_never_negative_and_full_free_alternate(
                rs in proptest::collection::vec(reading(), 1..200)
            ) {
                let m = meta(Some(12));
                let mut z = ZoneMachine::new(&m);
                let mut ts = [T0; 3];
                let mut last_kind = EventKind::LoungeFree;
                let mut ids = std::collections::HashSet::new();
                for (sensor, dt, r) in rs {
                    let i = usize::from(sensor);
                    ts[i] += dt * 1000;
                    let mut lr = LoungeReading { ts: ts[i], ..LoungeReading::default() };
                    match r {
                        R::Count(n) => lr.occupancy = Some(n),
                        R::Cross(a, b) => { lr.entered = Some(a); lr.exited = Some(b); }
                        R::Presence(p) => lr.presence = Some(p),
                    }
                    let name = format!("s{sensor}");
                    let before = z.clone();
                    let st = z.step(&m, &name, &lr);
                    prop_assert!(st.applied);
                    // Redelivery changes nothing.
                    let snapshot = z.clone();
                    prop_assert!(!z.step(&m, &name, &lr).applied);
                    prop_assert_eq!(&z, &snapshot);
                    let occ = z.live(&m).occupancy;
                    if let R::Cross(a, b) = r {
                        // Presence-only occupancy is not a base for line crossings.
                        let base = if before.has_counter { i64::from(before.occupancy) } else { 0 };
                        let expect = (base + i64::from(a) - i64::from(b)).max(0);
                        prop_assert_eq!(i64::from(occ), expect);
                    }
                    for e in st.events {
                        prop_assert!(e.kind != last_kind, "full/free must alternate");
                        prop_assert!(ids.insert(e.event_id.clone()));
                        let pct = f64::from(occ) * 100.0 / 12.0;
                        match e.kind {
                            EventKind::LoungeFull => prop_assert!(pct >= 100.0),
                            _ => prop_assert!(pct < 90.0),
                        }
                        last_kind = e.kind;
                    }
                }
            }
        }
    }
}
