//! People counters: absolute totals (Milesight VS121 `{"event": "Region People Counting",
//! "current_total": 10, ...}`) become `occupancy`; cumulative line counters `in`/`out`
//! become the deltas `entered`/`exited`.
//!
//! The first cumulative value seen from a counter is its baseline (no delta: the daemon does
//! not know what it counted before). A counter that goes backwards was reset or wrapped:
//! the new value is the delta from zero, never negative.

use std::collections::HashMap;

use serde_json::Value;

use super::common::{count, device_name, parse_json, parse_time_value, MsgClock, Target};
use super::template::Captures;
use super::{Adapter, DecodeError};
use crate::domain::input::{Input, LoungeReading, TsMs};

const MAX_COUNTERS: usize = 10_000;

#[derive(Debug, Default)]
struct Counter {
    last_in: Option<u32>,
    last_out: Option<u32>,
    clock: MsgClock,
}

pub struct PeopleCounter {
    target: Target,
    counters: HashMap<String, Counter>,
}

impl PeopleCounter {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            counters: HashMap::new(),
        }
    }
}

fn delta(last: Option<u32>, now: u32) -> Option<u32> {
    match last {
        None => None,
        Some(l) if now >= l => Some(now - l),
        Some(_) => Some(now),
    }
}

fn opt_count(v: &Value, key: &str) -> Result<Option<u32>, DecodeError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => count(x, key).map(Some),
    }
}

impl Adapter for PeopleCounter {
    fn name(&self) -> &'static str {
        "people_counter"
    }

    fn decode(
        &mut self,
        topic: &str,
        caps: &Captures,
        payload: &[u8],
        recv_ms: TsMs,
    ) -> Result<Vec<Input>, DecodeError> {
        let device = device_name(topic, caps).to_string();
        let v = parse_json(payload)?;
        if !v.is_object() {
            return Err(DecodeError::InvalidField("payload".into()));
        }
        let occupancy = opt_count(&v, "current_total")?;
        let cum_in = opt_count(&v, "in")?;
        let cum_out = opt_count(&v, "out")?;
        let own_ts = ["ts", "timestamp", "time"]
            .iter()
            .find_map(|k| v.get(*k).and_then(parse_time_value));
        let key = self.target.zone_key(caps, &device)?;
        let skey = caps.device_key(&device);
        if !self.counters.contains_key(&skey) && self.counters.len() >= MAX_COUNTERS {
            return Err(DecodeError::OutOfRange("counters".into()));
        }
        let c = self.counters.entry(skey).or_default();
        let ts = match own_ts {
            // Two crossings within the device clock's second are two readings (their
            // counts differ); the same bytes again are a redelivery and keep their time.
            Some(ts) => c
                .clock
                .stamped(ts, &format!("{:08x}", crc32fast::hash(payload)), recv_ms),
            None => c.clock.received(recv_ms),
        };
        let mut r = LoungeReading {
            ts,
            occupancy,
            ..Default::default()
        };
        if let Some(n) = cum_in {
            r.entered = delta(c.last_in, n);
            c.last_in = Some(n);
        }
        if let Some(n) = cum_out {
            r.exited = delta(c.last_out, n);
            c.last_out = Some(n);
        }
        if r.occupancy.is_none() && r.entered.is_none() && r.exited.is_none() {
            return Ok(vec![]);
        }
        Ok(vec![Input::Lounge {
            key,
            sensor: device,
            r,
        }])
    }
}
