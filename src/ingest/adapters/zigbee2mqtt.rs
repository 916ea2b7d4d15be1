//! Zigbee2MQTT sensors: JSON state on `zigbee2mqtt/{device}`.
//!
//! `occupancy` (PIR) and `presence` (mmWave) become `presence`; `co2`/`co2_ppm`,
//! `temperature`, `humidity` the air readings. Other keys (illuminance, battery, linkquality)
//! are ignored. `.../set`, `.../get` and `bridge/...` topics carry no reading;
//! `.../availability` `offline` (`{"state":"offline"}`, or the bare word of older versions)
//! of a device that has reported presence in this run says it is gone: "nobody here" from
//! it, so a seat sensor whose battery died while it saw someone does not count them for
//! ever. Other devices' availability (lamps, plugs, buttons) says nothing.

use std::collections::HashMap;

use serde_json::Value;

use super::common::{
    boolish, check_field, check_lounge, device_name, num, parse_json, parse_time_value, MsgClock,
    Target,
};
use super::template::Captures;
use super::{Adapter, DecodeError};
use crate::domain::input::{Input, LoungeReading, TsMs};

const MAX_DEVICES: usize = 10_000;

pub struct Zigbee2Mqtt {
    target: Target,
    /// Per device: its readings are mostly stamped on receipt (see [`MsgClock`]).
    clocks: HashMap<String, MsgClock>,
    /// Devices that have reported presence (seat and room sensors), by their state key.
    presence: std::collections::HashSet<String>,
}

impl Zigbee2Mqtt {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            clocks: HashMap::new(),
            presence: std::collections::HashSet::new(),
        }
    }
}

fn number(obj: &Value, keys: &[&str], field: &str) -> Result<Option<f64>, DecodeError> {
    for k in keys {
        match obj.get(*k) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                let x = num(v).ok_or_else(|| DecodeError::InvalidField((*k).to_string()))?;
                return Ok(Some(check_field(field, x)?));
            }
        }
    }
    Ok(None)
}

impl Zigbee2Mqtt {
    fn availability(
        &mut self,
        topic: &str,
        caps: &Captures,
        payload: &[u8],
        recv_ms: TsMs,
    ) -> Result<Vec<Input>, DecodeError> {
        let state = match parse_json(payload) {
            Ok(v) => v.get("state").and_then(Value::as_str).map(str::to_owned),
            Err(_) => std::str::from_utf8(payload)
                .ok()
                .map(|s| s.trim().to_owned()),
        };
        if state.as_deref() != Some("offline") {
            return Ok(vec![]);
        }
        let device = device_name(topic, caps).to_string();
        let skey = caps.device_key(&device);
        if !self.presence.contains(&skey) {
            return Ok(vec![]);
        }
        let key = self.target.zone_key(caps, &device)?;
        let ts = self.clocks.entry(skey).or_default().received(recv_ms);
        Ok(vec![Input::Lounge {
            key,
            sensor: device,
            r: LoungeReading {
                ts,
                presence: Some(false),
                ..Default::default()
            },
        }])
    }
}

impl Adapter for Zigbee2Mqtt {
    fn name(&self) -> &'static str {
        "zigbee2mqtt"
    }

    fn decode(
        &mut self,
        topic: &str,
        caps: &Captures,
        payload: &[u8],
        recv_ms: TsMs,
    ) -> Result<Vec<Input>, DecodeError> {
        let last = topic.rsplit('/').next().unwrap_or(topic);
        if matches!(last, "set" | "get") || topic.split('/').any(|l| l == "bridge") {
            return Ok(vec![]);
        }
        if last == "availability" {
            return self.availability(topic, caps, payload, recv_ms);
        }
        let device = device_name(topic, caps).to_string();
        let v = parse_json(payload)?;
        if !v.is_object() {
            return Err(DecodeError::InvalidField("payload".into()));
        }
        let presence = match v.get("presence").or_else(|| v.get("occupancy")) {
            None | Some(Value::Null) => None,
            Some(p) => {
                Some(boolish(p).ok_or_else(|| DecodeError::InvalidField("presence".into()))?)
            }
        };
        let mut r = LoungeReading {
            presence,
            co2_ppm: number(&v, &["co2", "co2_ppm"], "co2_ppm")?,
            temperature_c: number(&v, &["temperature", "temperature_c"], "temperature_c")?,
            humidity_pct: number(&v, &["humidity", "humidity_pct"], "humidity_pct")?,
            ..Default::default()
        };
        if r.presence.is_none()
            && r.co2_ppm.is_none()
            && r.temperature_c.is_none()
            && r.humidity_pct.is_none()
        {
            // A button, a plug, a light: nothing the lounge tracks.
            return Ok(vec![]);
        }
        let key = self.target.zone_key(caps, &device)?;
        let skey = caps.device_key(&device);
        if !self.clocks.contains_key(&skey) && self.clocks.len() >= MAX_DEVICES {
            return Err(DecodeError::OutOfRange("devices".into()));
        }
        if r.presence.is_some() {
            self.presence.insert(skey.clone());
        }
        let clock = self.clocks.entry(skey).or_default();
        // `last_seen` is in the payload when Zigbee2MQTT is configured to add it.
        r.ts = match v.get("last_seen").and_then(parse_time_value) {
            Some(ts) => clock.stamped(ts, "state", recv_ms),
            None => clock.received(recv_ms),
        };
        Ok(vec![Input::Lounge {
            key,
            sensor: device,
            r: check_lounge(r)?,
        }])
    }
}
