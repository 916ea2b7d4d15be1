//! EVerest external API (`everest_api/{module}/var/#`): `session_info` (state, energy,
//! power), `powermeter` (register, power, voltage, current), `ev_info` (SoC, time to full)
//! and `telemetry` (temperature) are published separately, each about once a second. They
//! are merged per module; each message yields the merged view once the state is known.

use std::collections::HashMap;

use serde_json::Value;

use super::common::{
    check_field, check_telemetry, leaf, num, opt_num, opt_str, parse_json, parse_time_value,
    MsgClock, PerValue, Target,
};
use super::template::Captures;
use super::{Adapter, DecodeError};
use crate::domain::input::{ChargerStatus, Input, Telemetry, TsMs};

const MAX_MODULES: usize = 10_000;

/// What `ev_info` says about the car: it leaves with the car.
const VEHICLE_VALUES: [&str; 3] = ["soc_pct", "target_soc_pct", "remaining_s"];

#[derive(Debug, Default)]
struct Module {
    status: Option<ChargerStatus>,
    vals: PerValue,
    clock: MsgClock,
}

pub struct Everest {
    target: Target,
    modules: HashMap<String, Module>,
}

impl Everest {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            modules: HashMap::new(),
        }
    }
}

fn map_state(s: &str) -> Option<ChargerStatus> {
    Some(match s {
        "Unplugged" => ChargerStatus::Available,
        "Disabled" => ChargerStatus::Unavailable,
        // `PluggedIn` is the older name of the plugged, not yet authorised state.
        "Preparing" | "AuthRequired" | "PluggedIn" => ChargerStatus::Preparing,
        "Reserved" => ChargerStatus::Reserved,
        // Authorised, but the EVSE is not offering energy yet: OCPP's SuspendedEVSE.
        "WaitingForEnergy" | "ChargingPausedEVSE" => ChargerStatus::SuspendedEvse,
        "Charging" => ChargerStatus::Charging,
        "ChargingPausedEV" => ChargerStatus::SuspendedEv,
        "Finished" => ChargerStatus::Finishing,
        "Error" | "PermanentFault" => ChargerStatus::Faulted,
        _ => return None,
    })
}

/// `{"total": x}` or per-phase `{"L1": .., "L2": .., "L3": ..}`.
fn phases(v: Option<&Value>, name: &str) -> Result<Vec<f64>, DecodeError> {
    let Some(obj) = v.filter(|v| !v.is_null()) else {
        return Ok(vec![]);
    };
    if !obj.is_object() {
        return Err(DecodeError::InvalidField(name.to_string()));
    }
    let mut out = Vec::new();
    for k in ["L1", "L2", "L3"] {
        if let Some(x) = opt_num(obj, k)? {
            out.push(x);
        }
    }
    Ok(out)
}

fn total(v: Option<&Value>, name: &str) -> Result<Option<f64>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(o) if o.is_object() => match opt_num(o, "total")? {
            Some(t) => Ok(Some(t)),
            None => {
                let p = phases(Some(o), name)?;
                Ok((!p.is_empty()).then(|| p.iter().sum()))
            }
        },
        Some(_) => Err(DecodeError::InvalidField(name.to_string())),
    }
}

impl Adapter for Everest {
    fn name(&self) -> &'static str {
        "everest"
    }

    fn decode(
        &mut self,
        topic: &str,
        caps: &Captures,
        payload: &[u8],
        recv_ms: TsMs,
    ) -> Result<Vec<Input>, DecodeError> {
        let var = leaf(topic, caps);
        if !matches!(var, "session_info" | "powermeter" | "ev_info" | "telemetry") {
            // datetime, limits, hardware_capabilities, session events, commands.
            return Ok(vec![]);
        }
        let key = self.target.charger_key(caps)?;
        let v = parse_json(payload)?;
        if !v.is_object() {
            return Err(DecodeError::InvalidField(var.to_string()));
        }
        let skey = caps.state_key();
        if !self.modules.contains_key(&skey) && self.modules.len() >= MAX_MODULES {
            return Err(DecodeError::OutOfRange("modules".into()));
        }
        let time_field = match var {
            "session_info" => v.get("datetime"),
            _ => v.get("timestamp"),
        };
        let ts = match time_field {
            // `ev_info` and `telemetry` carry no time: they belong to the module's latest
            // known instant (like an OCPP frame without one, CONTRACT §3), not to the
            // receive time, which on a replay or after an outage is far from the charger's
            // clock and would hide every later reading as out of order.
            None | Some(Value::Null) => self
                .modules
                .get(&skey)
                .and_then(|m| m.clock.latest())
                .unwrap_or(recv_ms),
            Some(t) => {
                parse_time_value(t).ok_or_else(|| DecodeError::InvalidField("timestamp".into()))?
            }
        };
        // Parse first, store after: a bad message leaves the module untouched.
        let mut updates: Vec<(&'static str, f64)> = Vec::new();
        let mut status = None;
        match var {
            "session_info" => {
                let state = opt_str(&v, "state")?
                    .ok_or_else(|| DecodeError::InvalidField("state".into()))?;
                let mut s =
                    map_state(state).ok_or_else(|| DecodeError::InvalidField("state".into()))?;
                if v.get("active_permanent_faults")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
                {
                    s = ChargerStatus::Faulted;
                }
                status = Some(s);
                if let Some(wh) = opt_num(&v, "charged_energy_wh")? {
                    updates.push(("session_kwh", wh / 1000.0));
                }
                if let Some(w) = opt_num(&v, "latest_total_w")? {
                    updates.push(("power_kw", w / 1000.0));
                }
            }
            "powermeter" => {
                if let Some(wh) = total(v.get("energy_Wh_import"), "energy_Wh_import")? {
                    updates.push(("meter_kwh", wh / 1000.0));
                }
                if let Some(w) = total(v.get("power_W"), "power_W")? {
                    updates.push(("power_kw", w / 1000.0));
                }
                let volts = phases(v.get("voltage_V"), "voltage_V")?;
                if !volts.is_empty() {
                    updates.push(("voltage_v", volts.iter().sum::<f64>() / volts.len() as f64));
                } else if let Some(dc) = v.get("voltage_V").and_then(|o| o.get("DC")).and_then(num)
                {
                    updates.push(("voltage_v", dc));
                }
                let amps = phases(v.get("current_A"), "current_A")?;
                if let Some(a) = amps.into_iter().reduce(f64::max) {
                    updates.push(("current_a", a));
                } else if let Some(dc) = v.get("current_A").and_then(|o| o.get("DC")).and_then(num)
                {
                    updates.push(("current_a", dc));
                }
            }
            "ev_info" => {
                if let Some(soc) = opt_num(&v, "soc")? {
                    updates.push(("soc_pct", soc));
                }
                if let Some(target) = opt_num(&v, "target_soc")? {
                    updates.push(("target_soc_pct", target));
                }
                // Seconds to full; some versions give the expected end time instead.
                match v.get("estimated_time_full") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) => {
                        let end = super::common::parse_time_str(s).ok_or_else(|| {
                            DecodeError::InvalidField("estimated_time_full".into())
                        })?;
                        updates.push(("remaining_s", ((end - ts) as f64 / 1000.0).max(0.0)));
                    }
                    Some(x) => {
                        let secs = num(x).ok_or_else(|| {
                            DecodeError::InvalidField("estimated_time_full".into())
                        })?;
                        updates.push(("remaining_s", secs));
                    }
                }
            }
            _ => {
                if let Some(t) = opt_num(&v, "temperature")? {
                    updates.push(("temperature_c", t));
                }
            }
        }
        for (name, x) in updates.iter_mut() {
            *x = check_field(name, *x)?;
        }
        let m = self.modules.entry(skey).or_default();
        if let Some(new) = status {
            // Unplugged, or plugged in again: the last car's SoC, target and time to full
            // are not the next one's (they would stay fresh for minutes and make it look
            // complete at once).
            let was_free = m.status == Some(ChargerStatus::Available);
            if was_free != (new == ChargerStatus::Available) {
                for name in VEHICLE_VALUES {
                    m.vals.remove(name);
                }
            }
            m.status = status;
        }
        for (name, x) in updates {
            m.vals.set(name, x, ts);
        }
        let Some(status) = m.status else {
            return Ok(vec![]);
        };
        let out_ts = m.clock.stamped(ts, var, recv_ms);
        let f = |n: &str| m.vals.fresh(n, ts);
        let in_session = status != ChargerStatus::Available;
        let t = Telemetry {
            ts: out_ts,
            status: Some(status),
            power_kw: f("power_kw"),
            meter_kwh: f("meter_kwh"),
            session_kwh: f("session_kwh").filter(|_| in_session),
            soc_pct: f("soc_pct").filter(|_| in_session),
            target_soc_pct: f("target_soc_pct").filter(|_| in_session),
            voltage_v: f("voltage_v"),
            current_a: f("current_a"),
            temperature_c: f("temperature_c"),
            remaining_s: f("remaining_s").filter(|_| in_session),
            ..Default::default()
        };
        Ok(vec![Input::Telemetry {
            key,
            t: check_telemetry(t)?,
        }])
    }
}
