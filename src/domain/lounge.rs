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
