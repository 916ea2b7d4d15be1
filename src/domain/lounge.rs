//! PLACEHOLDER API (replaced by the domain implementation).
use serde::{Deserialize, Serialize};

use super::event::Event;
use super::input::{LoungeReading, TsMs};
use super::thresholds::ZoneMeta;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ZoneStep {
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
pub struct ZoneMachine {
    pub occupancy: u32,
}

impl ZoneMachine {
    pub fn new(_meta: &ZoneMeta) -> Self {
        ZoneMachine::default()
    }
    pub fn step(&mut self, _meta: &ZoneMeta, _sensor: &str, _r: &LoungeReading) -> ZoneStep {
        ZoneStep::default()
    }
    pub fn live(&self, meta: &ZoneMeta) -> LiveZone {
        LiveZone {
            site: meta.site.clone(),
            zone: meta.zone.clone(),
            name: meta.name.clone(),
            occupancy: self.occupancy,
            capacity: meta.capacity,
            full: false,
            co2_ppm: None,
            temperature_c: None,
            humidity_pct: None,
            last_ts: None,
        }
    }
}
