//! Decision thresholds (CONTRACT §2 `[thresholds]`), typed. Built by config validation.

use serde::Serialize;

use super::input::TsMs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargerKind {
    Dc,
    Ac,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    /// A `suspended_ev` shorter than this (at the start of DC charging) is not completion.
    pub suspended_ev_grace_ms: TsMs,
    pub low_power_kw_dc: f64,
    pub low_power_kw_ac: f64,
    /// Power below the low-power threshold this long, after real charging, is completion.
    pub low_power_for_ms: TsMs,
    /// `nearly_complete` when the ETA to target falls under this.
    pub nearly_complete_eta_ms: TsMs,
    /// `idle_blocking` this long after completion while still plugged in.
    pub idle_after_ms: TsMs,
    /// Repeat `idle_blocking` every this long; `None` = never.
    pub idle_repeat_ms: Option<TsMs>,
    /// Plugged in, no power drawn this long: `charging_not_started`.
    pub no_power_after_ms: TsMs,
    /// No message this long: `charger_offline`.
    pub offline_after_ms: TsMs,
    pub lounge_full_pct: f64,
    pub lounge_free_pct: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            suspended_ev_grace_ms: 60_000,
            low_power_kw_dc: 2.0,
            low_power_kw_ac: 0.5,
            low_power_for_ms: 180_000,
            nearly_complete_eta_ms: 300_000,
            idle_after_ms: 600_000,
            idle_repeat_ms: Some(900_000),
            no_power_after_ms: 300_000,
            offline_after_ms: 120_000,
            lounge_full_pct: 100.0,
            lounge_free_pct: 90.0,
        }
    }
}

impl Thresholds {
    pub fn low_power_kw(&self, kind: ChargerKind) -> f64 {
        match kind {
            ChargerKind::Dc => self.low_power_kw_dc,
            ChargerKind::Ac => self.low_power_kw_ac,
        }
    }
}

/// What config says about one charger (auto-registered chargers get defaults).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChargerMeta {
    pub site: String,
    pub charger: String,
    /// Bay label shown to guests; the charger id when not configured.
    pub bay: String,
    pub max_kw: Option<f64>,
    pub kind: ChargerKind,
    pub thresholds: Thresholds,
}

impl ChargerMeta {
    /// An unknown charger seen on MQTT: accepted with defaults.
    pub fn auto(site: &str, charger: &str, thresholds: Thresholds) -> Self {
        ChargerMeta {
            site: site.to_string(),
            charger: charger.to_string(),
            bay: charger.to_string(),
            max_kw: None,
            kind: ChargerKind::Dc,
            thresholds,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ZoneMeta {
    pub site: String,
    pub zone: String,
    pub name: String,
    /// `None` for an auto-registered zone (no full/free events then).
    pub capacity: Option<u32>,
    pub thresholds: Thresholds,
}
