//! A charging session as recorded in the store and returned by `/api/v1/sessions`.

use serde::{Deserialize, Serialize};

use super::input::TsMs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    StoppedEarly,
    Unplugged,
    Faulted,
    NoCharge,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::StoppedEarly => "stopped_early",
            Outcome::Unplugged => "unplugged",
            Outcome::Faulted => "faulted",
            Outcome::NoCharge => "no_charge",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Outcome::Completed,
            Outcome::StoppedEarly,
            Outcome::Unplugged,
            Outcome::Faulted,
            Outcome::NoCharge,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// One session, from plug-in to unplug. Upserted into the store by `session_key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub site: String,
    pub charger: String,
    /// The charger's `session_id`, or one derived when the charger sends none.
    pub session_id: String,
    /// `session_id` + start ts in ms: unique per session, fixed when it opens.
    pub session_key: String,
    pub id_tag: Option<String>,
    pub vehicle: Option<String>,
    /// Plug-in time.
    pub started: TsMs,
    /// First real power draw.
    pub charging_started: Option<TsMs>,
    /// When `charging_complete` fired.
    pub completed: Option<TsMs>,
    /// Unplug time; `None` while open.
    pub ended: Option<TsMs>,
    /// `None` while open.
    pub outcome: Option<Outcome>,
    pub energy_kwh: f64,
    pub peak_kw: f64,
    pub avg_kw: Option<f64>,
    pub soc_start: Option<f64>,
    pub soc_end: Option<f64>,
    pub target_soc_pct: Option<f64>,
    /// completed − charging_started.
    pub time_to_complete_s: Option<f64>,
    /// Plugged-in time after completion (so far, or final).
    pub idle_s: Option<f64>,
}

impl SessionRecord {
    /// A session just plugged in: nothing charged, measured or decided yet.
    pub fn opened(
        site: &str,
        charger: &str,
        session_id: String,
        session_key: String,
        started: TsMs,
    ) -> Self {
        SessionRecord {
            site: site.to_string(),
            charger: charger.to_string(),
            session_id,
            session_key,
            id_tag: None,
            vehicle: None,
            started,
            charging_started: None,
            completed: None,
            ended: None,
            outcome: None,
            energy_kwh: 0.0,
            peak_kw: 0.0,
            avg_kw: None,
            soc_start: None,
            soc_end: None,
            target_soc_pct: None,
            time_to_complete_s: None,
            idle_s: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.ended.is_none()
    }

    pub fn duration_s(&self) -> Option<f64> {
        self.ended.map(|e| (e - self.started) as f64 / 1000.0)
    }
}
