//! The configuration as written (TOML + env), before validation. Every struct keeps the keys
//! it does not know in `extra`, so validation can report *all* of them with their path
//! instead of stopping at the first.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

pub type Extra = BTreeMap<String, Value>;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub mqtt: RawMqtt,
    pub http: RawHttp,
    pub log: RawLog,
    pub data_dir: Option<String>,
    pub influx: RawInflux,
    pub notify: RawNotify,
    pub thresholds: RawThresholds,
    pub sites: Vec<RawSite>,
    pub sources: Vec<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawMqtt {
    pub url: Option<String>,
    pub prefix: Option<String>,
    pub client_id: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
    pub max_payload_bytes: Option<i64>,
    pub max_packet_bytes: Option<i64>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub keep_alive: Option<String>,
    pub dead_letter_topic: Option<String>,
    pub state_min_interval: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawHttp {
    pub listen: Option<String>,
    pub staff_token: Option<String>,
    pub staff_token_file: Option<String>,
    pub public_url: Option<String>,
    pub guest_channels: Option<Vec<String>>,
    pub forwarded_for: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawInflux {
    pub url: Option<String>,
    pub org: Option<String>,
    pub bucket: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub spool_max_bytes: Option<i64>,
    pub batch_lines: Option<i64>,
    pub flush_interval: Option<String>,
    pub timeout: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawNotify {
    pub webhook: Option<RawWebhook>,
    pub ntfy: Option<RawNtfy>,
    pub email: Option<RawEmail>,
    pub mqtt: Option<bool>,
    pub retention: Option<String>,
    pub max_attempts: Option<i64>,
    pub max_age: Option<String>,
    pub attempt_timeout: Option<String>,
    pub templates_dir: Option<String>,
    pub directory_file: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawWebhook {
    pub url: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawNtfy {
    pub url: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawEmail {
    pub smtp_url: Option<String>,
    pub from: Option<String>,
    pub reply_to: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct RawThresholds {
    pub suspended_ev_grace: Option<String>,
    pub low_power_kw_dc: Option<f64>,
    pub low_power_kw_ac: Option<f64>,
    pub low_power_for: Option<String>,
    pub nearly_complete_eta: Option<String>,
    pub idle_after: Option<String>,
    pub idle_repeat: Option<String>,
    pub no_power_after: Option<String>,
    pub offline_after: Option<String>,
    pub lounge_full_pct: Option<f64>,
    pub lounge_free_pct: Option<f64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawSite {
    pub id: Option<String>,
    pub name: Option<String>,
    pub timezone: Option<String>,
    pub chargers: Vec<RawCharger>,
    pub zones: Vec<RawZone>,
    pub thresholds: Option<RawThresholds>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawCharger {
    pub id: Option<String>,
    pub bay: Option<String>,
    pub max_kw: Option<f64>,
    pub kind: Option<String>,
    pub thresholds: Option<RawThresholds>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawZone {
    pub id: Option<String>,
    pub name: Option<String>,
    pub capacity: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}
