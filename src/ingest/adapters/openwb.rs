//! openWB 2.x: `openWB/chargepoint/{id}/get/{power, imported, plug_state, charge_state,
//! fault_state, connected_vehicle/soc, voltages, currents}`, one value per topic.
//!
//! `imported` is the charge point's lifetime register (Wh); the session energy is counted
//! from its value at a plug-in this adapter saw (`plug_state` false, then true), so it is
//! unknown for a car already plugged in when the daemon started: the retained
//! `plug_state` true of a restart is not a plug-in.

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
    /// `imported` at plug-in, Wh.
    plug_meter_wh: Option<f64>,
    /// Plugged in before any `imported` arrived: take the next one as the start.
    await_plug_meter: bool,
}

pub struct OpenWb {
    target: Target,
    chargers: HashMap<String, State>,
}

impl OpenWb {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            chargers: HashMap::new(),
        }
    }
}

fn bool_field(v: &Value, name: &str) -> Result<f64, DecodeError> {
    boolish(v)
        .map(|b| if b { 1.0 } else { 0.0 })
        .ok_or_else(|| DecodeError::InvalidField(name.to_string()))
}

fn number(v: &Value, name: &str) -> Result<f64, DecodeError> {
    num(v).ok_or_else(|| DecodeError::InvalidField(name.to_string()))
}

fn phase_values(v: &Value, name: &str) -> Result<Vec<f64>, DecodeError> {
    v.as_array()
        .ok_or_else(|| DecodeError::InvalidField(name.to_string()))?
        .iter()
        .map(|x| number(x, name))
        .collect()
}

impl Adapter for OpenWb {
    fn name(&self) -> &'static str {
        "openwb"
    }

    fn decode(
        &mut self,
        topic: &str,
        caps: &Captures,
        payload: &[u8],
        recv_ms: TsMs,
    ) -> Result<Vec<Input>, DecodeError> {
        let name = leaf(topic, caps);
        // With a template ending in `{id}/#` the tail is `get/power`; strip the `get/`.
        let name = name.strip_prefix("get/").unwrap_or(name);
        let known = matches!(
            name,
            "power"
                | "imported"
                | "plug_state"
                | "charge_state"
                | "fault_state"
                | "connected_vehicle/soc"
                | "soc"
                | "voltages"
                | "currents"
        );
        if !known {
            return Ok(vec![]);
        }
        let key = self.target.charger_key(caps)?;
        let v = parse_loose(payload)?;
        let ts = recv_ms;
        let mut updates: Vec<(&'static str, f64)> = Vec::new();
        match name {
            "power" => updates.push((
                "power_kw",
                check_field("power_kw", number(&v, name)? / 1000.0)?,
            )),
            "imported" => updates.push((
                "meter_kwh",
                check_field("meter_kwh", number(&v, name)? / 1000.0)?,
            )),
            "plug_state" => updates.push(("plug", bool_field(&v, name)?)),
            "charge_state" => updates.push(("charging", bool_field(&v, name)?)),
            "fault_state" => updates.push(("fault", number(&v, name)?)),
            "voltages" => {
                let u: Vec<f64> = phase_values(&v, name)?
                    .into_iter()
                    .filter(|u| *u > 0.0)
                    .collect();
                if !u.is_empty() {
                    let mean = u.iter().sum::<f64>() / u.len() as f64;
                    updates.push(("voltage_v", check_field("voltage_v", mean)?));
                }
            }
            "currents" => {
                let a = phase_values(&v, name)?.into_iter().fold(0.0, f64::max);
                updates.push(("current_a", check_field("current_a", a)?));
            }
            _ => {
                // `connected_vehicle/soc` is an object `{"soc": 45, "range": .., ...}`.
                let soc = match &v {
                    Value::Object(_) => v.get("soc").and_then(num),
                    other => num(other),
                };
                match soc {
                    Some(s) => updates.push(("soc_pct", check_field("soc_pct", s)?)),
                    None if v.get("soc").is_some_and(Value::is_null) => {}
                    None => return Err(DecodeError::InvalidField("soc".into())),
                }
            }
        }
        let skey = caps.state_key();
        if !self.chargers.contains_key(&skey) && self.chargers.len() >= MAX_CHARGERS {
            return Err(DecodeError::OutOfRange("chargers".into()));
        }
        let st = self.chargers.entry(skey).or_default();
        let was_plugged = st.vals.state("plug");
        let mut changed = false;
        for (n, x) in updates {
            changed |= st.vals.set(n, x, ts);
        }
        if !changed {
            return Ok(vec![]);
        }
        let plugged = st.vals.state("plug").map(|p| p == 1.0);
        let meter = st.vals.state("meter_kwh");
        match plugged {
            Some(true) if was_plugged == Some(0.0) => {
                st.plug_meter_wh = meter.map(|m| m * 1000.0);
                st.await_plug_meter = meter.is_none();
                st.charged_since_plug = false;
            }
            // Plugged in before we heard of it (a retained value after a restart): the
            // register at plug-in is unknown, and the register now would restart the
            // session's energy from zero.
            Some(true) if was_plugged.is_none() => {
                st.plug_meter_wh = None;
                st.await_plug_meter = false;
            }
            Some(false) => {
                if was_plugged == Some(1.0) {
                    // The car left: its SoC is not the next car's.
                    st.vals.remove("soc_pct");
                }
                st.plug_meter_wh = None;
                st.await_plug_meter = false;
                st.charged_since_plug = false;
            }
            _ => {}
        }
        if st.await_plug_meter {
            if let Some(m) = meter {
                st.plug_meter_wh = Some(m * 1000.0);
                st.await_plug_meter = false;
            }
        }
        let charging = st.vals.state("charging") == Some(1.0);
        if charging {
            st.charged_since_plug = true;
        }
        let status = if st.vals.state("fault") == Some(2.0) {
            ChargerStatus::Faulted
        } else {
            match plugged {
                Some(false) => ChargerStatus::Available,
                _ if charging => ChargerStatus::Charging,
                Some(true) if st.charged_since_plug => ChargerStatus::SuspendedEv,
                Some(true) => ChargerStatus::Preparing,
                None => return Ok(vec![]),
            }
        };
        let out_ts = st.clock.received(ts);
        let f = |n: &str| st.vals.fresh(n, ts);
        let session_kwh = match (f("meter_kwh"), st.plug_meter_wh) {
            (Some(m), Some(start)) if plugged == Some(true) => Some((m - start / 1000.0).max(0.0)),
            _ => None,
        };
        let t = Telemetry {
            ts: out_ts,
            status: Some(status),
            power_kw: f("power_kw"),
            meter_kwh: f("meter_kwh"),
            session_kwh,
            soc_pct: f("soc_pct").filter(|_| plugged == Some(true)),
            voltage_v: f("voltage_v"),
            current_a: f("current_a"),
            ..Default::default()
        };
        Ok(vec![Input::Telemetry {
            key,
            t: check_telemetry(t)?,
        }])
    }
}
