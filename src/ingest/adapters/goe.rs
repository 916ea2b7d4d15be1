//! go-e Charger (API v2 over MQTT): one retained topic per API key, `go-eCharger/{serial}/{key}`.
//!
//! Keys used: `car` (1 idle, 2 charging, 3 wait car, 4 complete, 5 error, 0 unknown/error),
//! `nrg` (energy array: U L1..L3, N; I L1..L3; P L1..L3, N, Total; pf ...), `wh` (energy
//! since the car was connected), `eto` (total energy), `tma` (temperature sensors) and `mcc`
//! (MQTT connected; the charger's last will publishes `false`).
//!
//! Assumption: with API v2 firmware (the one that speaks MQTT) `nrg` is in plain V, A and W,
//! so total power is `nrg[11]` W; API v1's 0.01 kW scaling is not supported. `amp` (the
//! requested current) is configuration, not telemetry, and is ignored.

use std::collections::HashMap;

use serde_json::Value;

use super::common::{
    check_field, check_telemetry, leaf, num, parse_loose, MsgClock, PerValue, Target,
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
}

pub struct GoE {
    target: Target,
    chargers: HashMap<String, State>,
}

impl GoE {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            chargers: HashMap::new(),
        }
    }
}

fn numbers(v: &Value, name: &str) -> Result<Vec<f64>, DecodeError> {
    let arr = v
        .as_array()
        .ok_or_else(|| DecodeError::InvalidField(name.to_string()))?;
    arr.iter()
        .map(|x| {
            num(x)
                .filter(|x| x.is_finite())
                .ok_or_else(|| DecodeError::InvalidField(name.to_string()))
        })
        .collect()
}

impl Adapter for GoE {
    fn name(&self) -> &'static str {
        "goe"
    }

    fn decode(
        &mut self,
        topic: &str,
        caps: &Captures,
        payload: &[u8],
        recv_ms: TsMs,
    ) -> Result<Vec<Input>, DecodeError> {
        let name = leaf(topic, caps);
        if !matches!(name, "car" | "nrg" | "wh" | "eto" | "tma" | "mcc") {
            // Hundreds of other keys (config, wifi, scheduler) and `/set`, `/result` topics.
            return Ok(vec![]);
        }
        let key = self.target.charger_key(caps)?;
        let v = parse_loose(payload)?;
        let ts = recv_ms;
        if name == "mcc" {
            let online = super::common::boolish(&v)
                .ok_or_else(|| DecodeError::InvalidField("mcc".into()))?;
            return Ok(vec![Input::Availability { key, online, ts }]);
        }
        let mut updates: Vec<(&'static str, f64)> = Vec::new();
        match name {
            "car" => {
                let car = v
                    .as_u64()
                    .filter(|c| *c <= 5)
                    .ok_or_else(|| DecodeError::InvalidField("car".into()))?;
                updates.push(("car", car as f64));
            }
            "nrg" => {
                let n = numbers(&v, "nrg")?;
                if n.len() < 12 {
                    return Err(DecodeError::InvalidField("nrg".into()));
                }
                updates.push(("power_kw", check_field("power_kw", n[11] / 1000.0)?));
                let volts: Vec<f64> = n[0..3].iter().copied().filter(|u| *u > 0.0).collect();
                if !volts.is_empty() {
                    let mean = volts.iter().sum::<f64>() / volts.len() as f64;
                    updates.push(("voltage_v", check_field("voltage_v", mean)?));
                }
                let amps = n[4..7].iter().copied().fold(0.0, f64::max);
                updates.push(("current_a", check_field("current_a", amps)?));
            }
            "wh" => {
                let wh = num(&v).ok_or_else(|| DecodeError::InvalidField("wh".into()))?;
                updates.push(("session_kwh", check_field("session_kwh", wh / 1000.0)?));
            }
            "eto" => {
                let wh = num(&v).ok_or_else(|| DecodeError::InvalidField("eto".into()))?;
                updates.push(("meter_kwh", check_field("meter_kwh", wh / 1000.0)?));
            }
            _ => {
                let temps = numbers(&v, "tma")?;
                if let Some(t) = temps.into_iter().reduce(f64::max) {
                    updates.push(("temperature_c", check_field("temperature_c", t)?));
                }
            }
        }
        let skey = caps.state_key();
        if !self.chargers.contains_key(&skey) && self.chargers.len() >= MAX_CHARGERS {
            return Err(DecodeError::OutOfRange("chargers".into()));
        }
        let st = self.chargers.entry(skey).or_default();
        let mut changed = false;
        for (n, x) in updates {
            changed |= st.vals.set(n, x, ts);
        }
        if !changed {
            return Ok(vec![]);
        }
        let Some(car) = st.vals.state("car") else {
            return Ok(vec![]);
        };
        let status = match car as u8 {
            1 => {
                st.charged_since_plug = false;
                ChargerStatus::Available
            }
            2 => {
                st.charged_since_plug = true;
                ChargerStatus::Charging
            }
            // Waiting for the car: after charging that is the car pausing (full or at its
            // limit), before it a handshake that has not started.
            3 if st.charged_since_plug => ChargerStatus::SuspendedEv,
            3 => ChargerStatus::Preparing,
            4 => ChargerStatus::SuspendedEv,
            _ => ChargerStatus::Faulted,
        };
        let out_ts = st.clock.received(ts);
        let f = |n: &str| st.vals.fresh(n, ts);
        let t = Telemetry {
            ts: out_ts,
            status: Some(status),
            power_kw: f("power_kw"),
            meter_kwh: f("meter_kwh"),
            session_kwh: f("session_kwh").filter(|_| status != ChargerStatus::Available),
            voltage_v: f("voltage_v"),
            current_a: f("current_a"),
            temperature_c: f("temperature_c"),
            ..Default::default()
        };
        Ok(vec![Input::Telemetry {
            key,
            t: check_telemetry(t)?,
        }])
    }
}
