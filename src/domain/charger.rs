//! PLACEHOLDER API (replaced by the domain implementation).
use serde::{Deserialize, Serialize};

use super::event::Event;
use super::input::{ChargerStatus, Telemetry, TsMs};
use super::session::SessionRecord;
use super::thresholds::ChargerMeta;

#[derive(Clone, Debug, PartialEq)]
pub enum ChargerInput<'a> {
    Telemetry(&'a Telemetry),
    Availability { online: bool, ts: TsMs },
    Tick { now: TsMs },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Event(Event),
    Session(SessionRecord),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    pub applied: bool,
    pub effects: Vec<Effect>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveCharger {
    pub site: String,
    pub charger: String,
    pub bay: String,
    pub status: Option<ChargerStatus>,
    pub online: bool,
    pub power_kw: Option<f64>,
    pub soc_pct: Option<f64>,
    pub target_soc_pct: Option<f64>,
    pub eta_s: Option<f64>,
    pub vehicle: Option<String>,
    pub last_ts: Option<TsMs>,
    pub session: Option<SessionRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChargerMachine {
    pub meta_site: String,
}

impl ChargerMachine {
    pub fn new(meta: &ChargerMeta) -> Self {
        ChargerMachine {
            meta_site: meta.site.clone(),
        }
    }
    pub fn step(&mut self, _meta: &ChargerMeta, _input: ChargerInput<'_>) -> Step {
        Step::default()
    }
    pub fn live(&self, meta: &ChargerMeta) -> LiveCharger {
        LiveCharger {
            site: meta.site.clone(),
            charger: meta.charger.clone(),
            bay: meta.bay.clone(),
            status: None,
            online: true,
            power_kw: None,
            soc_pct: None,
            target_soc_pct: None,
            eta_s: None,
            vehicle: None,
            last_ts: None,
            session: None,
        }
    }
    pub fn last_ts(&self) -> Option<TsMs> {
        None
    }
}
