//! Helpers shared by the adapters: payload parsing, timestamps, range checks, ids.

use std::collections::{BTreeMap, HashMap};

use chrono::{NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

use super::template::{render, Captures};
use super::DecodeError;
use crate::domain::input::{
    ChargerKey, ChargerStatus, Input, LoungeReading, Telemetry, TsMs, ZoneKey,
};
use crate::ingest::decode::clamp_future;

/// Values from a per-value topic older than this (on the message clock) are left out of the
/// aggregate, so a sensor that stopped publishing does not keep reporting its last power.
pub const STALE_AFTER_MS: i64 = 5 * 60 * 1000;

pub fn parse_json(payload: &[u8]) -> Result<Value, DecodeError> {
    serde_json::from_slice(payload).map_err(|_| DecodeError::InvalidJson)
}

/// Per-value topics carry bare values: JSON (`42`, `true`, `"x"`, `{..}`) or, from some
/// publishers (evcc), unquoted text. Text that is not JSON becomes a string value.
pub fn parse_loose(payload: &[u8]) -> Result<Value, DecodeError> {
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::InvalidJson)?;
    let text = text.trim();
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(_) => Ok(Value::String(text.to_string())),
    }
}

/// A number given as a JSON number or a numeric string (OCPP 1.6 sends strings).
pub fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

/// Like [`num`], but an absent/null field is `Ok(None)` and a wrong type is an error.
pub fn opt_num(obj: &Value, key: &str) -> Result<Option<f64>, DecodeError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match num(v) {
            Some(x) if x.is_finite() => Ok(Some(x)),
            Some(_) => Err(DecodeError::OutOfRange(key.to_string())),
            None => Err(DecodeError::InvalidField(key.to_string())),
        },
    }
}

pub fn opt_str<'a>(obj: &'a Value, key: &str) -> Result<Option<&'a str>, DecodeError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(DecodeError::InvalidField(key.to_string())),
    }
}

/// Booleans as `true`/`false`, 0/1, or the strings `"true"`/`"false"`/`"on"`/`"off"`.
pub fn boolish(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "1" => Some(true),
            "false" | "off" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// RFC 3339; also a zone-less `YYYY-MM-DDTHH:MM:SS[.fff]` taken as UTC, which several
/// charger firmwares send despite the OCPP spec.
pub fn parse_time_str(s: &str) -> Option<TsMs> {
    if let Some(ms) = crate::util::time::parse_rfc3339_ms(s) {
        return Some(ms);
    }
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| Utc.from_utc_datetime(&n).timestamp_millis())
}

/// A timestamp given as RFC 3339, epoch milliseconds, or epoch seconds (numbers below 1e11
/// are seconds: 1e11 ms is 1973, 1e11 s is the year 5138).
/// A charging station's message clock: a frame without a timestamp sits at the station's
/// latest known message time, or the receive time when there is none (CONTRACT §3).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StationClock {
    last: Option<TsMs>,
}

impl StationClock {
    /// The frame's time: its own `timestamp`, else the station's latest.
    pub fn ts(&self, explicit: Option<&Value>, recv_ms: TsMs) -> Result<TsMs, DecodeError> {
        match explicit {
            None | Some(Value::Null) => Ok(self.latest(recv_ms)),
            Some(v) => {
                parse_time_value(v).ok_or_else(|| DecodeError::InvalidField("timestamp".into()))
            }
        }
    }

    /// The latest time seen, or `recv_ms` before any.
    pub fn latest(&self, recv_ms: TsMs) -> TsMs {
        self.last.unwrap_or(recv_ms)
    }

    /// Records a frame's time, unless it is one the daemon replaces as clock skew (see
    /// [`clamp_future`]): a station clock gone to 2036 for one frame must not place every
    /// later frame without a time there.
    pub fn saw(&mut self, ts: TsMs, recv_ms: TsMs) {
        if clamp_future(ts, recv_ms).1 {
            return;
        }
        self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
    }
}

pub fn parse_time_value(v: &Value) -> Option<TsMs> {
    match v {
        Value::String(s) => parse_time_str(s),
        Value::Number(n) => {
            let x = n.as_f64()?;
            if !x.is_finite() || x < 0.0 {
                return None;
            }
            let ms = if x < 1e11 { x * 1000.0 } else { x };
            // Beyond year 9999 the value is garbage, not a time.
            (ms < 253_402_300_800_000.0).then_some(ms as TsMs)
        }
        _ => None,
    }
}

/// `[A-Za-z0-9_-]{1,64}`: ids end up in MQTT topics and URLs (CONTRACT §2).
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Where a source's messages go: site, charger or zone, from templates and captures.
#[derive(Clone, Debug)]
pub struct Target {
    pub site: Option<String>,
    pub charger: String,
    pub zone: Option<String>,
    pub devices: BTreeMap<String, String>,
}

impl Target {
    pub fn site(&self, caps: &Captures) -> Result<String, DecodeError> {
        let site = match caps.get("site") {
            Some(s) => s.to_string(),
            None => render(self.site.as_deref().unwrap_or(""), caps),
        };
        if valid_id(&site) {
            Ok(site)
        } else {
            Err(DecodeError::InvalidField("site".into()))
        }
    }

    pub fn charger_key(&self, caps: &Captures) -> Result<ChargerKey, DecodeError> {
        let charger = render(&self.charger, caps);
        if !valid_id(&charger) {
            return Err(DecodeError::InvalidField("charger".into()));
        }
        Ok(ChargerKey {
            site: self.site(caps)?,
            charger,
        })
    }

    /// Device map first (a sensor named in config), then the fixed/templated `zone`, then a
    /// `{zone}` topic level.
    pub fn zone_key(&self, caps: &Captures, device: &str) -> Result<ZoneKey, DecodeError> {
        let zone = if let Some(z) = self.devices.get(device) {
            z.clone()
        } else if let Some(t) = &self.zone {
            render(t, caps)
        } else if let Some(z) = caps.get("zone") {
            z.to_string()
        } else {
            // A device we were not told about, on a source without a default zone.
            return Err(DecodeError::UnknownTopic);
        };
        if !valid_id(&zone) {
            return Err(DecodeError::InvalidField("zone".into()));
        }
        Ok(ZoneKey {
            site: self.site(caps)?,
            zone,
        })
    }
}

/// The device/sensor a topic is about: a `{device}`/`{sensor}` capture, else the first level
/// of a `#` tail, else the topic's last level.
pub fn device_name<'a>(topic: &'a str, caps: &'a Captures) -> &'a str {
    if let Some(d) = caps.get("device").or_else(|| caps.get("sensor")) {
        return d;
    }
    if let Some(t) = caps.tail() {
        if let Some(first) = t.split('/').next().filter(|s| !s.is_empty()) {
            return first;
        }
    }
    topic.rsplit('/').next().unwrap_or(topic)
}

/// The value name of a per-value topic (`.../get/power`, `go-eCharger/X/car`): the `#` tail
/// when the template has one, else the last topic level.
pub fn leaf<'a>(topic: &'a str, caps: &'a Captures) -> &'a str {
    match caps.tail() {
        Some(t) if !t.is_empty() => t,
        _ => topic.rsplit('/').next().unwrap_or(topic),
    }
}

/// Accepted range per telemetry field (CONTRACT §3 "absurd values").
fn range(name: &str) -> (f64, f64) {
    match name {
        "power_kw" => (0.0, 5_000.0),
        "meter_kwh" => (0.0, 1e9),
        "session_kwh" => (0.0, 100_000.0),
        "soc_pct" | "target_soc_pct" | "humidity_pct" => (0.0, 100.0),
        "voltage_v" => (0.0, 2_000.0),
        "current_a" => (-5_000.0, 5_000.0),
        "temperature_c" => (-60.0, 200.0),
        "remaining_s" => (0.0, 1e7),
        "co2_ppm" => (0.0, 100_000.0),
        _ => (f64::MIN, f64::MAX),
    }
}

/// One value, range-checked under its telemetry field name. Tiny negative power is meter
/// noise around zero on an idle connector and becomes 0 rather than an error.
pub fn check_field(name: &str, x: f64) -> Result<f64, DecodeError> {
    let x = if name == "power_kw" && (-0.5..0.0).contains(&x) {
        0.0
    } else {
        x
    };
    let (lo, hi) = range(name);
    if x.is_finite() && x >= lo && x <= hi {
        Ok(x)
    } else {
        Err(DecodeError::OutOfRange(name.to_string()))
    }
}

fn check(name: &str, v: &mut Option<f64>) -> Result<(), DecodeError> {
    if let Some(x) = *v {
        *v = Some(check_field(name, x)?);
    }
    Ok(())
}

/// Range checks on an outgoing telemetry.
pub fn check_telemetry(mut t: Telemetry) -> Result<Telemetry, DecodeError> {
    check("power_kw", &mut t.power_kw)?;
    check("meter_kwh", &mut t.meter_kwh)?;
    check("session_kwh", &mut t.session_kwh)?;
    check("soc_pct", &mut t.soc_pct)?;
    check("target_soc_pct", &mut t.target_soc_pct)?;
    check("voltage_v", &mut t.voltage_v)?;
    check("current_a", &mut t.current_a)?;
    check("temperature_c", &mut t.temperature_c)?;
    check("remaining_s", &mut t.remaining_s)?;
    Ok(t)
}

pub fn check_lounge(mut r: LoungeReading) -> Result<LoungeReading, DecodeError> {
    check("co2_ppm", &mut r.co2_ppm)?;
    check("temperature_c", &mut r.temperature_c)?;
    check("humidity_pct", &mut r.humidity_pct)?;
    Ok(r)
}

/// A head count or counter value: a non-negative integer below a sanity bound.
pub fn count(v: &Value, name: &str) -> Result<u32, DecodeError> {
    let x = num(v).ok_or_else(|| DecodeError::InvalidField(name.to_string()))?;
    if !x.is_finite() || x < 0.0 || x.fract() != 0.0 || x > 1e9 {
        return Err(DecodeError::OutOfRange(name.to_string()));
    }
    Ok(x as u32)
}

/// Status names as OCPP writes them (`SuspendedEV`) or as the contract does (`suspended_ev`).
pub fn parse_status_loose(s: &str) -> Option<ChargerStatus> {
    let norm: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    ChargerStatus::ALL
        .into_iter()
        .find(|st| st.as_str().replace('_', "") == norm)
}

/// Energy of one session from an energy register, robust to register resets: a register
/// that falls to less than half its last value restarted from zero (a meter swap, a 32-bit
/// rollover), so what was counted so far is carried over. A smaller step back is rounding
/// (a kWh register rounded below `meterStart` in Wh) or meter noise: the energy holds. The
/// session never loses energy nor turns negative.
/// A register below this fraction of its last value was reset; above it, a step back is noise.
const RESET_BELOW: f64 = 0.5;

#[derive(Clone, Debug, Default)]
pub struct SessionEnergy {
    /// Register at the session start (OCPP 1.6 `meterStart`, 2.0.1 first reading).
    pub start_wh: Option<f64>,
    carried_wh: f64,
    base_wh: Option<f64>,
    last_wh: Option<f64>,
}

impl SessionEnergy {
    pub fn starting_at(start_wh: f64) -> Self {
        Self {
            start_wh: Some(start_wh),
            base_wh: Some(start_wh),
            ..Default::default()
        }
    }

    /// Session energy for an in-order reading, updating the reset bookkeeping; `None` when
    /// the start is unknown.
    pub fn advance(&mut self, meter_wh: f64) -> Option<f64> {
        let base = self.base_wh?;
        let last = self.last_wh.unwrap_or(base);
        if meter_wh < last * RESET_BELOW {
            self.carried_wh += (last - base).max(0.0);
            self.base_wh = Some(0.0);
            self.last_wh = Some(meter_wh);
            return Some(self.carried_wh + meter_wh.max(0.0));
        }
        // A small step back: keep the highest reading, so the energy holds until the
        // register passes it again.
        let meter_wh = meter_wh.max(last);
        self.last_wh = Some(meter_wh);
        Some(self.carried_wh + (meter_wh - base).max(0.0))
    }

    /// Session energy for a late (out-of-order) reading, leaving the state alone.
    pub fn peek(&self, meter_wh: f64) -> Option<f64> {
        let start = self.start_wh?;
        (meter_wh >= start).then_some(meter_wh - start)
    }
}

/// Latest values of a charger that publishes one value per topic (go-e, openWB, evcc),
/// each stamped with when it arrived.
#[derive(Debug, Default)]
pub struct PerValue {
    vals: BTreeMap<&'static str, (f64, TsMs)>,
}

impl PerValue {
    /// Stores a value; returns whether it differs from the fresh value held before.
    pub fn set(&mut self, name: &'static str, v: f64, ts: TsMs) -> bool {
        let changed = match self.vals.get(name) {
            Some((old, at)) => *old != v || ts - at > STALE_AFTER_MS,
            None => true,
        };
        self.vals.insert(name, (v, ts));
        changed
    }

    /// A measurement, unless older than [`STALE_AFTER_MS`] at `now`.
    pub fn fresh(&self, name: &str, now: TsMs) -> Option<f64> {
        self.vals
            .get(name)
            .filter(|(_, at)| now - at <= STALE_AFTER_MS)
            .map(|(v, _)| *v)
    }

    /// Forgets a value (the car that reported it left).
    pub fn remove(&mut self, name: &str) {
        self.vals.remove(name);
    }

    /// A state value (plugged, car state): these are published only on change, so they
    /// never go stale.
    pub fn state(&self, name: &str) -> Option<f64> {
        self.vals.get(name).map(|(v, _)| *v)
    }
}

/// The times an adapter gives one charger's (or sensor's) readings.
///
/// The domain drops a reading whose `ts` is not after the previous one (a redelivery, a
/// late frame). But one instant often yields several readings: a per-value charger (go-e,
/// openWB, evcc) publishes its keys together, and a backlog redelivered after an outage
/// arrives within the same millisecond, so receive-time stamps collide; EVerest publishes
/// `session_info`, `powermeter` and `ev_info` for the same second. Without this, all but
/// the first of those readings were silently dropped (the status change or the unplug
/// among them). Readings of the same instant are therefore spread 1 ms apart, while a true
/// repeat (the same part again at that instant) or a late one keeps its own time, for the
/// domain to drop as before.
const MAX_PARTS: usize = 64;

#[derive(Debug, Default)]
pub struct MsgClock {
    /// The newest source time seen.
    latest: Option<TsMs>,
    /// The newest time handed out (≥ `latest`).
    last_out: Option<TsMs>,
    /// Parts (topic leaves) already handed out at `latest`.
    parts: Vec<String>,
}

impl MsgClock {
    /// The newest source time seen: where a message without a time of its own belongs.
    pub fn latest(&self) -> Option<TsMs> {
        self.latest
    }

    /// A reading stamped with its receive time: always after the ones before it.
    pub fn received(&mut self, recv_ms: TsMs) -> TsMs {
        let out = self.last_out.map_or(recv_ms, |l| recv_ms.max(l + 1));
        self.latest = Some(self.latest.map_or(recv_ms, |l| l.max(recv_ms)));
        self.last_out = Some(out);
        out
    }

    /// A reading with a source time `ts`, from `part` (e.g. `powermeter`), received at
    /// `recv_ms`. A time the daemon replaces as clock skew ([`clamp_future`]) passes through
    /// and leaves the clock alone, so the readings after it are still spread apart.
    pub fn stamped(&mut self, ts: TsMs, part: &str, recv_ms: TsMs) -> TsMs {
        if clamp_future(ts, recv_ms).1 {
            return ts;
        }
        match self.latest {
            Some(l) if ts < l => ts,
            Some(l) if ts == l => {
                // A repeat, or more siblings than any station sends at once (bounds memory).
                if self.parts.len() >= MAX_PARTS || self.parts.iter().any(|p| p == part) {
                    return ts;
                }
                self.parts.push(part.to_string());
                let out = self.last_out.map_or(ts, |o| o + 1);
                self.last_out = Some(out);
                out
            }
            _ => {
                self.latest = Some(ts);
                self.parts.clear();
                self.parts.push(part.to_string());
                let out = self.last_out.map_or(ts, |o| ts.max(o + 1));
                self.last_out = Some(out);
                out
            }
        }
    }
}

/// Per-charger [`MsgClock`]s of a station whose frames carry their own times (OCPP).
///
/// Stations with second-resolution clocks send StatusNotification, StartTransaction and
/// MeterValues (1.6), or TransactionEvent Ended and StatusNotification Available (2.0.1),
/// within the same second; the frame itself tells a sibling from a redelivery (identical
/// bytes).
#[derive(Debug, Default)]
pub struct FrameClocks {
    clocks: HashMap<String, MsgClock>,
}

impl FrameClocks {
    /// Gives the telemetry decoded from one frame its charger's message time.
    pub fn stamp(&mut self, payload: &[u8], out: &mut [Input], recv_ms: TsMs) {
        let part = format!("{:08x}", crc32fast::hash(payload));
        for input in out.iter_mut() {
            if let Input::Telemetry { key, t } = input {
                let clock = self.clocks.entry(key.charger.clone()).or_default();
                t.ts = clock.stamped(t.ts, &part, recv_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times() {
        assert_eq!(
            parse_time_str("2026-11-24T10:15:00Z"),
            Some(1_795_515_300_000)
        );
        assert_eq!(
            parse_time_str("2026-11-24T10:15:00"),
            Some(1_795_515_300_000)
        );
        assert_eq!(
            parse_time_value(&json!(1_795_515_300.5)),
            Some(1_795_515_300_500)
        );
        assert_eq!(
            parse_time_value(&json!(1_795_515_300_000i64)),
            Some(1_795_515_300_000)
        );
        assert_eq!(parse_time_value(&json!(-1)), None);
        assert_eq!(parse_time_value(&json!(1e300)), None);
        assert_eq!(parse_time_value(&json!(true)), None);
    }

    #[test]
    fn statuses() {
        assert_eq!(
            parse_status_loose("SuspendedEV"),
            Some(ChargerStatus::SuspendedEv)
        );
        assert_eq!(
            parse_status_loose("suspended_evse"),
            Some(ChargerStatus::SuspendedEvse)
        );
        assert_eq!(parse_status_loose("Occupied"), None);
    }

    #[test]
    fn telemetry_ranges() {
        let t = Telemetry {
            power_kw: Some(-0.1),
            ..Default::default()
        };
        assert_eq!(check_telemetry(t).unwrap().power_kw, Some(0.0));
        let t = Telemetry {
            soc_pct: Some(101.0),
            ..Default::default()
        };
        assert_eq!(
            check_telemetry(t),
            Err(DecodeError::OutOfRange("soc_pct".into()))
        );
        let t = Telemetry {
            session_kwh: Some(f64::NAN),
            ..Default::default()
        };
        assert!(check_telemetry(t).is_err());
    }

    #[test]
    fn session_energy_resets() {
        let mut e = SessionEnergy::starting_at(10_000.0);
        assert_eq!(e.advance(12_000.0), Some(2_000.0));
        // Register reset to zero mid-session: keep the 2 kWh, count on from zero.
        assert_eq!(e.advance(500.0), Some(2_500.0));
        assert_eq!(e.advance(1_500.0), Some(3_500.0));
        // A late reading is judged against the start only, and changes nothing.
        assert_eq!(e.peek(11_000.0), Some(1_000.0));
        assert_eq!(e.peek(9_000.0), None);
        assert_eq!(e.advance(1_600.0), Some(3_600.0));
        // A first reading below meterStart is a reset too, never negative energy.
        let mut e = SessionEnergy::starting_at(10_000.0);
        assert_eq!(e.advance(200.0), Some(200.0));
        assert_eq!(SessionEnergy::default().advance(5.0), None);
    }

    /// A kWh register rounded below a `meterStart` in Wh was taken for a reset, and the
    /// session was credited with the whole lifetime register.
    #[test]
    fn session_energy_small_step_back_is_noise() {
        let mut e = SessionEnergy::starting_at(10_233_450.0);
        assert_eq!(e.advance(10_233_400.0), Some(0.0));
        assert_eq!(e.advance(10_245_500.0), Some(12_050.0));
        assert_eq!(e.advance(10_245_400.0), Some(12_050.0));
        assert_eq!(e.advance(10_245_450.0), Some(12_050.0));
        assert_eq!(e.advance(10_246_500.0), Some(13_050.0));
        // A fall to less than half is still a reset.
        assert_eq!(e.advance(1_000.0), Some(14_050.0));
    }

    #[test]
    fn per_value_staleness() {
        let mut p = PerValue::default();
        assert!(p.set("power", 1.0, 0));
        assert!(!p.set("power", 1.0, 1000));
        assert!(p.set("power", 2.0, 2000));
        assert_eq!(p.fresh("power", 2000 + STALE_AFTER_MS), Some(2.0));
        assert_eq!(p.fresh("power", 2001 + STALE_AFTER_MS), None);
        assert_eq!(p.state("power"), Some(2.0));
    }

    #[test]
    fn msg_clock_spreads_one_instant_and_keeps_repeats_and_late_readings() {
        let mut c = MsgClock::default();
        // Receive times: a burst in one millisecond becomes strictly increasing.
        assert_eq!(c.received(100), 100);
        assert_eq!(c.received(100), 101);
        assert_eq!(c.received(100), 102);
        assert_eq!(c.received(500), 500);

        let mut c = MsgClock::default();
        let recv = 5_000;
        assert_eq!(c.latest(), None);
        assert_eq!(c.stamped(1_000, "session_info", recv), 1_000);
        assert_eq!(c.stamped(1_000, "powermeter", recv), 1_001);
        assert_eq!(c.stamped(1_000, "ev_info", recv), 1_002);
        // The same part again at that instant is a repeat: its own (already used) time.
        assert_eq!(c.stamped(1_000, "powermeter", recv), 1_000);
        // Late: its own time.
        assert_eq!(c.stamped(900, "session_info", recv), 900);
        assert_eq!(c.latest(), Some(1_000));
        // The next instant: its own time, unless the spread already passed it.
        assert_eq!(c.stamped(2_000, "session_info", recv), 2_000);
        assert_eq!(c.stamped(2_000, "powermeter", recv), 2_001);
        assert_eq!(c.stamped(2_001, "session_info", recv), 2_002);
        assert_eq!(c.latest(), Some(2_001));
        // A time the daemon replaces as clock skew passes through and moves nothing.
        let far = recv + 3_600_000;
        assert_eq!(c.stamped(far, "session_info", recv), far);
        assert_eq!(c.latest(), Some(2_001));
        assert_eq!(c.stamped(2_001, "powermeter", recv), 2_003);
    }
}
