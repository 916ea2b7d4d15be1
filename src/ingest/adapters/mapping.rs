//! Generic mapping for JSON payloads no adapter knows: each contract field is read from a
//! JSON pointer, optionally scaled (W → kW is `0.001`), and source status strings are
//! mapped to OCPP statuses. A small cousin of Telegraf's `json_v2`.
//!
//! ```toml
//! [[sources]]
//! format = "mapping"
//! topic = "acme/{dev}/state"
//! site = "milano"
//! charger = "{dev}"
//!   [sources.mapping]
//!   kind = "charger"
//!   fields = { status = "/state", power_kw = "/meter/p_w", soc_pct = "/ev/soc", ts = "/t" }
//!   scale = { power_kw = 0.001, ts = 1000.0 }
//!   status_map = { "IDLE" = "available", "CHG" = "charging", "DONE" = "suspended_ev" }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{
    boolish, check_field, check_lounge, check_telemetry, count, device_name, num, parse_json,
    parse_status_loose, parse_time_value, Target,
};
use super::template::Captures;
use super::{Adapter, DecodeError};
use crate::domain::input::{ChargerStatus, Input, LoungeReading, Telemetry, TsMs};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingKind {
    #[default]
    Charger,
    Lounge,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    pub kind: MappingKind,
    /// Contract field name → JSON pointer (RFC 6901, e.g. `/meter/power`).
    pub fields: BTreeMap<String, String>,
    /// Field → factor applied to the number read (`ts`: factor to milliseconds).
    #[serde(default)]
    pub scale: BTreeMap<String, f64>,
    /// Source status (as text; numbers as their JSON text) → OCPP status, e.g.
    /// `"CHG" = "charging"` or `"2" = "SuspendedEV"`.
    #[serde(default)]
    pub status_map: BTreeMap<String, String>,
}

const CHARGER_NUM: &[&str] = &[
    "power_kw",
    "meter_kwh",
    "session_kwh",
    "soc_pct",
    "target_soc_pct",
    "voltage_v",
    "current_a",
    "temperature_c",
    "remaining_s",
];
const CHARGER_TEXT: &[&str] = &["session_id", "id_tag", "vehicle", "error_code"];
const LOUNGE_NUM: &[&str] = &["co2_ppm", "temperature_c", "humidity_pct"];
const LOUNGE_COUNT: &[&str] = &["occupancy", "entered", "exited"];

impl MappingSpec {
    fn is_field(&self, f: &str) -> bool {
        f == "ts"
            || match self.kind {
                MappingKind::Charger => {
                    f == "status" || CHARGER_NUM.contains(&f) || CHARGER_TEXT.contains(&f)
                }
                MappingKind::Lounge => {
                    f == "presence" || LOUNGE_NUM.contains(&f) || LOUNGE_COUNT.contains(&f)
                }
            }
    }

    /// Problems as `(key, reason)`, keys relative to the `mapping` table.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        if self.fields.is_empty() {
            errs.push(("fields".into(), "map at least one field".into()));
        }
        if self.kind == MappingKind::Charger && !self.fields.contains_key("status") {
            errs.push((
                "fields.status".into(),
                "required: every charger reading needs a status".into(),
            ));
        }
        for (f, ptr) in &self.fields {
            if !self.is_field(f) {
                errs.push((format!("fields.{f}"), "not a field of this kind".into()));
            } else if !(ptr.is_empty() || ptr.starts_with('/')) {
                errs.push((
                    format!("fields.{f}"),
                    format!("`{ptr}` is not a JSON pointer (starts with `/`)"),
                ));
            }
        }
        for (f, k) in &self.scale {
            let numeric =
                f == "ts" || CHARGER_NUM.contains(&f.as_str()) || LOUNGE_NUM.contains(&f.as_str());
            if !self.fields.contains_key(f) || !numeric {
                errs.push((format!("scale.{f}"), "not a mapped numeric field".into()));
            } else if !k.is_finite() || *k == 0.0 {
                errs.push((
                    format!("scale.{f}"),
                    "must be a finite, non-zero number".into(),
                ));
            }
        }
        for (src, st) in &self.status_map {
            if parse_status_loose(st).is_none() {
                errs.push((
                    format!("status_map.{src}"),
                    format!("`{st}` is not an OCPP 1.6 status"),
                ));
            }
        }
        if self.kind == MappingKind::Lounge && !self.status_map.is_empty() {
            errs.push(("status_map".into(), "not used by kind lounge".into()));
        }
        errs
    }
}

pub struct Mapping {
    target: Target,
    spec: MappingSpec,
}

impl Mapping {
    pub fn new(target: Target, spec: MappingSpec) -> Self {
        Self { target, spec }
    }

    fn get<'a>(&self, v: &'a Value, field: &str) -> Option<&'a Value> {
        let ptr = self.spec.fields.get(field)?;
        v.pointer(ptr).filter(|x| !x.is_null())
    }

    fn number(&self, v: &Value, field: &str) -> Result<Option<f64>, DecodeError> {
        match self.get(v, field) {
            None => Ok(None),
            Some(x) => {
                let n = num(x).ok_or_else(|| DecodeError::InvalidField(field.to_string()))?;
                let k = self.spec.scale.get(field).copied().unwrap_or(1.0);
                Ok(Some(n * k))
            }
        }
    }

    fn text(&self, v: &Value, field: &str) -> Result<Option<String>, DecodeError> {
        match self.get(v, field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.chars().take(128).collect())),
            Some(x @ Value::Number(_)) => Ok(Some(x.to_string())),
            Some(_) => Err(DecodeError::InvalidField(field.to_string())),
        }
    }

    fn ts(&self, v: &Value, recv_ms: TsMs) -> Result<TsMs, DecodeError> {
        let Some(x) = self.get(v, "ts") else {
            return Ok(recv_ms);
        };
        let bad = || DecodeError::InvalidField("ts".into());
        match (x, self.spec.scale.get("ts")) {
            (Value::Number(_) | Value::String(_), Some(k)) if num(x).is_some() => {
                let ms = num(x).unwrap_or(f64::NAN) * k;
                parse_time_value(&serde_json::json!(ms)).ok_or_else(bad)
            }
            _ => parse_time_value(x).ok_or_else(bad),
        }
    }

    fn status(&self, v: &Value) -> Result<ChargerStatus, DecodeError> {
        let bad = || DecodeError::InvalidField("status".into());
        let raw = match self.get(v, "status").ok_or_else(bad)? {
            Value::String(s) => s.clone(),
            x @ (Value::Number(_) | Value::Bool(_)) => x.to_string(),
            _ => return Err(bad()),
        };
        match self.spec.status_map.get(&raw) {
            Some(st) => parse_status_loose(st).ok_or_else(bad),
            None => parse_status_loose(&raw).ok_or_else(bad),
        }
    }
}

impl Adapter for Mapping {
    fn name(&self) -> &'static str {
        "mapping"
    }

    fn decode(
        &mut self,
        topic: &str,
        caps: &Captures,
        payload: &[u8],
        recv_ms: TsMs,
    ) -> Result<Vec<Input>, DecodeError> {
        let v = parse_json(payload)?;
        let ts = self.ts(&v, recv_ms)?;
        match self.spec.kind {
            MappingKind::Charger => {
                let key = self.target.charger_key(caps)?;
                let mut t = Telemetry {
                    ts,
                    status: Some(self.status(&v)?),
                    session_id: self.text(&v, "session_id")?,
                    id_tag: self.text(&v, "id_tag")?,
                    vehicle: self.text(&v, "vehicle")?,
                    error_code: self.text(&v, "error_code")?,
                    ..Default::default()
                };
                t.power_kw = self.number(&v, "power_kw")?;
                t.meter_kwh = self.number(&v, "meter_kwh")?;
                t.session_kwh = self.number(&v, "session_kwh")?;
                t.soc_pct = self.number(&v, "soc_pct")?;
                t.target_soc_pct = self.number(&v, "target_soc_pct")?;
                t.voltage_v = self.number(&v, "voltage_v")?;
                t.current_a = self.number(&v, "current_a")?;
                t.temperature_c = self.number(&v, "temperature_c")?;
                t.remaining_s = self.number(&v, "remaining_s")?;
                Ok(vec![Input::Telemetry {
                    key,
                    t: check_telemetry(t)?,
                }])
            }
            MappingKind::Lounge => {
                let device = device_name(topic, caps).to_string();
                let key = self.target.zone_key(caps, &device)?;
                let mut counts = [None; 3];
                for (slot, f) in counts.iter_mut().zip(LOUNGE_COUNT) {
                    if let Some(x) = self.number(&v, f)? {
                        *slot = Some(count(&serde_json::json!(x), f)?);
                    }
                }
                let presence = match self.get(&v, "presence") {
                    None => None,
                    Some(p) => Some(
                        boolish(p).ok_or_else(|| DecodeError::InvalidField("presence".into()))?,
                    ),
                };
                let air = |f: &str| -> Result<Option<f64>, DecodeError> {
                    self.number(&v, f)?.map(|x| check_field(f, x)).transpose()
                };
                let r = LoungeReading {
                    ts,
                    occupancy: counts[0],
                    entered: counts[1],
                    exited: counts[2],
                    presence,
                    co2_ppm: air("co2_ppm")?,
                    temperature_c: air("temperature_c")?,
                    humidity_pct: air("humidity_pct")?,
                };
                if r == (LoungeReading {
                    ts,
                    ..Default::default()
                }) {
                    return Ok(vec![]);
                }
                Ok(vec![Input::Lounge {
                    key,
                    sensor: device,
                    r: check_lounge(r)?,
                }])
            }
        }
    }
}
