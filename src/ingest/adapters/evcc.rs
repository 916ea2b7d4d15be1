//! evcc: `evcc/loadpoints/{id}/{key}`, one bare value per topic (`true`, `7400`, text).
//!
//! Keys used: `connected`, `charging`, `chargePower` (W), `sessionEnergy` (Wh; older
//! versions `chargedEnergy`), `vehicleSoc` (%), `effectiveLimitSoc`/`limitSoc` (target %,
//! 0 = none), `chargeRemainingDuration` (a Go `time.Duration`, which evcc's MQTT publisher
//! writes as whole SECONDS; versions before it, and the REST API, gave nanoseconds), and
//! `vehicleName`/`vehicleTitle`.

use std::collections::HashMap;

use serde_json::Value;

use super::common::{
    boolish, check_field, check_telemetry, leaf, num, parse_loose, MsgClock, PerValue, Target,
};
use super::template::Captures;
use super::{Adapter, DecodeError};
use crate::domain::input::{ChargerStatus, Input, Telemetry, TsMs};

const MAX_CHARGERS: usize = 10_000;

#[derive(Debug, Default)]
struct State {
    vals: PerValue,
    clock: MsgClock,
    charged_since_plug: bool,
    vehicle: Option<String>,
}

pub struct Evcc {
    target: Target,
    chargers: HashMap<String, State>,
}

impl Evcc {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            chargers: HashMap::new(),
        }
    }
}

fn number(v: &Value, name: &str) -> Result<f64, DecodeError> {
    num(v).ok_or_else(|| DecodeError::InvalidField(name.to_string()))
}

/// A `time.Duration` as evcc publishes it: seconds, or nanoseconds from old versions (1e9
/// seconds is 31 years, no charge time; 1e9 ns is one second).
fn duration_s(x: f64) -> f64 {
    if x >= 1e9 {
        x / 1e9
    } else {
        x
    }
}

impl Adapter for Evcc {
    fn name(&self) -> &'static str {
        "evcc"
    }

    fn decode(
        &mut self,
        topic: &str,
        caps: &Captures,
        payload: &[u8],
        recv_ms: TsMs,
    ) -> Result<Vec<Input>, DecodeError> {
        let name = leaf(topic, caps);
        let known = matches!(
            name,
            "connected"
                | "charging"
                | "chargePower"
                | "sessionEnergy"
                | "chargedEnergy"
                | "vehicleSoc"
                | "effectiveLimitSoc"
                | "limitSoc"
                | "chargeRemainingDuration"
                | "vehicleName"
                | "vehicleTitle"
        );
        if !known {
            return Ok(vec![]);
        }
        let key = self.target.charger_key(caps)?;
        let v = parse_loose(payload)?;
        let ts = recv_ms;
        let skey = caps.state_key();
        if !self.chargers.contains_key(&skey) && self.chargers.len() >= MAX_CHARGERS {
            return Err(DecodeError::OutOfRange("chargers".into()));
        }
        let mut update: Option<(&'static str, f64)> = None;
        let mut vehicle = None;
        match name {
            "connected" | "charging" => {
                let b = boolish(&v).ok_or_else(|| DecodeError::InvalidField(name.to_string()))?;
                let n = if name == "connected" {
                    "connected"
                } else {
                    "charging"
                };
                update = Some((n, if b { 1.0 } else { 0.0 }));
            }
            "chargePower" => {
                update = Some((
                    "power_kw",
                    check_field("power_kw", number(&v, name)? / 1000.0)?,
                ))
            }
            "sessionEnergy" | "chargedEnergy" => {
                update = Some((
                    "session_kwh",
                    check_field("session_kwh", number(&v, name)? / 1000.0)?,
                ))
            }
            "vehicleSoc" => update = Some(("soc_pct", check_field("soc_pct", number(&v, name)?)?)),
            "effectiveLimitSoc" | "limitSoc" => {
                // 0 means "no limit set", not a target of 0 %.
                let x = number(&v, name)?;
                update = Some(("target_soc_pct", check_field("target_soc_pct", x)?));
            }
            "chargeRemainingDuration" => {
                let x = number(&v, name)?;
                update = Some(("remaining_s", check_field("remaining_s", duration_s(x))?));
            }
            _ => {
                let s = match &v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                vehicle = Some(s.chars().take(64).collect::<String>());
            }
        }
        let st = self.chargers.entry(skey).or_default();
        let mut changed = false;
        if let Some((n, x)) = update {
            changed |= st.vals.set(n, x, ts);
        }
        if let Some(name) = vehicle {
            let name = (!name.is_empty()).then_some(name);
            changed |= st.vehicle != name;
            st.vehicle = name;
        }
        if !changed {
            return Ok(vec![]);
        }
        let connected = st.vals.state("connected").map(|c| c == 1.0);
        let charging = st.vals.state("charging") == Some(1.0);
        let status = match connected {
            Some(false) => {
                st.charged_since_plug = false;
                ChargerStatus::Available
            }
            _ if charging => {
                st.charged_since_plug = true;
                ChargerStatus::Charging
            }
            Some(true) if st.charged_since_plug => ChargerStatus::SuspendedEv,
            Some(true) => ChargerStatus::Preparing,
            None => return Ok(vec![]),
        };
        let plugged = status != ChargerStatus::Available;
        let out_ts = st.clock.received(ts);
        let f = |n: &str| st.vals.fresh(n, ts);
        let t = Telemetry {
            ts: out_ts,
            status: Some(status),
            power_kw: f("power_kw"),
            session_kwh: f("session_kwh").filter(|_| plugged),
            soc_pct: f("soc_pct").filter(|_| plugged),
            target_soc_pct: f("target_soc_pct").filter(|t| plugged && *t > 0.0),
            remaining_s: f("remaining_s").filter(|r| plugged && *r > 0.0),
            vehicle: st.vehicle.clone().filter(|_| plugged),
            ..Default::default()
        };
        Ok(vec![Input::Telemetry {
            key,
            t: check_telemetry(t)?,
        }])
    }
}
