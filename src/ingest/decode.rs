//! Decoders for the contract's own payloads (CONTRACT §3): pure `bytes -> Result<Input>`.

use std::borrow::Cow;

use serde::Deserialize;

use crate::domain::input::{ChargerStatus, LoungeReading, Telemetry, TsMs};

/// Why a message was rejected; `reason()` is the `/metrics` label.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("invalid field: {0}")]
    InvalidField(String),
    #[error("value out of range: {0}")]
    OutOfRange(String),
    #[error("unknown topic")]
    UnknownTopic,
    #[error("payload of {0} bytes over the limit")]
    Oversized(usize),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::InvalidField(_) => "invalid_field",
            DecodeError::OutOfRange(_) => "out_of_range",
            DecodeError::UnknownTopic => "unknown_topic",
            DecodeError::Oversized(_) => "oversized",
            DecodeError::Unsupported(_) => "unsupported",
        }
    }

    fn from_serde(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        // serde's data errors quote the offending value, which may be personal (an id_tag):
        // say only where it was.
        match e.classify() {
            Category::Data => DecodeError::InvalidField(format!(
                "wrong type or value at line {} column {}",
                e.line(),
                e.column()
            )),
            // 1e999 and friends: well-formed JSON whose value no f64 holds
            Category::Syntax if e.to_string().starts_with("number out of range") => {
                DecodeError::OutOfRange(e.to_string())
            }
            _ => DecodeError::InvalidJson(e.to_string()),
        }
    }
}

/// A `ts` more than this far in the future is replaced by the receive time.
pub const MAX_FUTURE_MS: TsMs = 5 * 60 * 1000;

/// `ts`, or the receive time when `ts` is more than [`MAX_FUTURE_MS`] ahead of it (a
/// charger clock gone wrong); the flag says it was replaced (`evlounge_clock_skew_total`).
/// The one rule for the contract's messages and for the adapters' output.
pub fn clamp_future(ts: TsMs, recv_ms: TsMs) -> (TsMs, bool) {
    if ts > recv_ms.saturating_add(MAX_FUTURE_MS) {
        (recv_ms, true)
    } else {
        (ts, false)
    }
}

/// A decoded value plus whether its `ts` was replaced for clock skew.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded<T> {
    pub value: T,
    pub clock_skew: bool,
}

/// `ts` as epoch milliseconds or RFC 3339 text. A hand-written visitor, not
/// `#[serde(untagged)]`: untagged buffers the value and builds (and formats) an error for
/// every variant that does not match, on every message.
enum RawTs<'a> {
    Ms(f64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for RawTs<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = RawTs<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("epoch milliseconds or an RFC 3339 string")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawTs::Ms(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTs::Ms(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawTs::Ms(v as f64))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Owned(v)))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

fn resolve_ts(ts: Option<RawTs<'_>>, recv_ms: TsMs) -> Result<(TsMs, bool), DecodeError> {
    let t = match ts {
        None => return Ok((recv_ms, false)),
        Some(RawTs::Ms(ms)) => {
            if !ms.is_finite() || !(0.0..=1e15).contains(&ms) {
                return Err(DecodeError::OutOfRange(format!("ts {ms}")));
            }
            ms as TsMs
        }
        Some(RawTs::Text(s)) => crate::util::time::parse_rfc3339_ms(&s)
            .ok_or_else(|| DecodeError::InvalidField(format!("ts {s:?} is not RFC 3339")))?,
    };
    Ok(clamp_future(t, recv_ms))
}

#[derive(Deserialize)]
struct RawTelemetry<'a> {
    #[serde(borrow)]
    ts: Option<RawTs<'a>>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id_tag: Option<Cow<'a, str>>,
    #[serde(borrow)]
    vehicle: Option<Cow<'a, str>>,
    power_kw: Option<f64>,
    meter_kwh: Option<f64>,
    session_kwh: Option<f64>,
    soc_pct: Option<f64>,
    target_soc_pct: Option<f64>,
    voltage_v: Option<f64>,
    current_a: Option<f64>,
    temperature_c: Option<f64>,
    #[serde(borrow)]
    error_code: Option<Cow<'a, str>>,
    remaining_s: Option<f64>,
}

fn check(name: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<Option<f64>, DecodeError> {
    match v {
        Some(x) if !x.is_finite() || x < lo || x > hi => Err(DecodeError::OutOfRange(format!(
            "{name} = {x} (expected {lo}..={hi})"
        ))),
        v => Ok(v),
    }
}

fn short_text(name: &str, v: Option<Cow<'_, str>>) -> Result<Option<String>, DecodeError> {
    match v {
        Some(s) if s.len() > 128 => {
            Err(DecodeError::InvalidField(format!("{name} longer than 128")))
        }
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => Ok(Some(s.into_owned())),
        None => Ok(None),
    }
}

/// Charger telemetry JSON. `status` is required; every number is range-checked.
pub fn telemetry(payload: &[u8], recv_ms: TsMs) -> Result<Decoded<Telemetry>, DecodeError> {
    let raw: RawTelemetry<'_> = serde_json::from_slice(payload).map_err(DecodeError::from_serde)?;
    let status = match raw.status.as_deref() {
        None => return Err(DecodeError::InvalidField("status missing".into())),
        Some(s) => ChargerStatus::parse(s)
            .ok_or_else(|| DecodeError::InvalidField(format!("status {s:?} unknown")))?,
    };
    let (ts, clock_skew) = resolve_ts(raw.ts, recv_ms)?;
    let t = Telemetry {
        ts,
        status: Some(status),
        session_id: short_text("session_id", raw.session_id)?,
        id_tag: short_text("id_tag", raw.id_tag)?,
        vehicle: short_text("vehicle", raw.vehicle)?,
        power_kw: check("power_kw", raw.power_kw, -1000.0, 2000.0)?,
        meter_kwh: check("meter_kwh", raw.meter_kwh, 0.0, 1e9)?,
        session_kwh: check("session_kwh", raw.session_kwh, 0.0, 10_000.0)?,
        soc_pct: check("soc_pct", raw.soc_pct, 0.0, 100.0)?,
        target_soc_pct: check("target_soc_pct", raw.target_soc_pct, 0.0, 100.0)?,
        voltage_v: check("voltage_v", raw.voltage_v, 0.0, 2000.0)?,
        current_a: check("current_a", raw.current_a, -2000.0, 2000.0)?,
        temperature_c: check("temperature_c", raw.temperature_c, -60.0, 200.0)?,
        error_code: short_text("error_code", raw.error_code)?,
        remaining_s: check("remaining_s", raw.remaining_s, 0.0, 7.0 * 86400.0)?,
    };
    Ok(Decoded {
        value: t,
        clock_skew,
    })
}

/// Charger availability: `online` / `offline` (plain text, optionally a JSON string).
pub fn availability(payload: &[u8]) -> Result<bool, DecodeError> {
    let s = std::str::from_utf8(payload)
        .map_err(|_| DecodeError::InvalidField("availability is not UTF-8".into()))?
        .trim()
        .trim_matches('"');
    match s.to_ascii_lowercase().as_str() {
        "online" => Ok(true),
        "offline" => Ok(false),
        _ => Err(DecodeError::InvalidField(format!(
            "availability {:?} is not online/offline",
            s.chars().take(32).collect::<String>()
        ))),
    }
}

#[derive(Deserialize)]
struct RawLounge<'a> {
    #[serde(borrow)]
    ts: Option<RawTs<'a>>,
    occupancy: Option<f64>,
    presence: Option<bool>,
    entered: Option<f64>,
    exited: Option<f64>,
    co2_ppm: Option<f64>,
    temperature_c: Option<f64>,
    humidity_pct: Option<f64>,
}

fn count(name: &str, v: Option<f64>) -> Result<Option<u32>, DecodeError> {
    match v {
        None => Ok(None),
        Some(x) if x.fract() != 0.0 => Err(DecodeError::InvalidField(format!(
            "{name} = {x} is not a whole number"
        ))),
        Some(x) if !(0.0..=100_000.0).contains(&x) => Err(DecodeError::OutOfRange(format!(
            "{name} = {x} (expected 0..=100000)"
        ))),
        Some(x) => Ok(Some(x as u32)),
    }
}

/// Lounge sensor JSON (any subset of fields).
pub fn lounge(payload: &[u8], recv_ms: TsMs) -> Result<Decoded<LoungeReading>, DecodeError> {
    let raw: RawLounge<'_> = serde_json::from_slice(payload).map_err(DecodeError::from_serde)?;
    let (ts, clock_skew) = resolve_ts(raw.ts, recv_ms)?;
    let r = LoungeReading {
        ts,
        occupancy: count("occupancy", raw.occupancy)?,
        presence: raw.presence,
        entered: count("entered", raw.entered)?,
        exited: count("exited", raw.exited)?,
        co2_ppm: check("co2_ppm", raw.co2_ppm, 0.0, 50_000.0)?,
        temperature_c: check("temperature_c", raw.temperature_c, -50.0, 80.0)?,
        humidity_pct: check("humidity_pct", raw.humidity_pct, 0.0, 100.0)?,
    };
    Ok(Decoded {
        value: r,
        clock_skew,
    })
}

/// Where a message on the contract's own topics goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Telemetry {
        site: &'a str,
        charger: &'a str,
    },
    Availability {
        site: &'a str,
        charger: &'a str,
    },
    Lounge {
        site: &'a str,
        zone: &'a str,
        sensor: &'a str,
    },
    FrontdeskLink {
        site: &'a str,
    },
}

/// Routes `{prefix}/{site}/…` topics; `None` for anything else.
pub fn route<'a>(prefix: &str, topic: &'a str) -> Option<Route<'a>> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let parts: Vec<&'a str> = rest.split('/').collect();
    let ok = |s: &str| crate::config::is_valid_id(s);
    match parts.as_slice() {
        [site, "charger", charger, "telemetry"] if ok(site) && ok(charger) => {
            Some(Route::Telemetry { site, charger })
        }
        [site, "charger", charger, "availability"] if ok(site) && ok(charger) => {
            Some(Route::Availability { site, charger })
        }
        [site, "lounge", zone, sensor] if ok(site) && ok(zone) && !sensor.is_empty() => {
            Some(Route::Lounge { site, zone, sensor })
        }
        [site, "frontdesk", "link"] if ok(site) => Some(Route::FrontdeskLink { site }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: TsMs = 1_795_547_378_380;

    #[test]
    fn full_telemetry_rfc3339() {
        let p =
            br#"{"ts": "2026-11-24T10:15:00.120Z", "status": "charging", "session_id": "T-1842",
 "id_tag": "04A2B3C4", "vehicle": "Taycan 4S", "power_kw": 148.2,
 "meter_kwh": 10233.4, "session_kwh": 23.4, "soc_pct": 61.0, "target_soc_pct": 80,
 "voltage_v": 781.0, "current_a": 189.8, "temperature_c": 41.0, "extra": {"x": [1]}}"#;
        let d = telemetry(p, NOW + 10_000_000_000).unwrap();
        let t = d.value;
        assert!(!d.clock_skew);
        assert_eq!(
            t.ts,
            crate::util::time::parse_rfc3339_ms("2026-11-24T10:15:00.120Z").unwrap()
        );
        assert_eq!(t.status, Some(ChargerStatus::Charging));
        assert_eq!(t.session_id.as_deref(), Some("T-1842"));
        assert_eq!(t.id_tag.as_deref(), Some("04A2B3C4"));
        assert_eq!(t.vehicle.as_deref(), Some("Taycan 4S"));
        assert_eq!(t.power_kw, Some(148.2));
        assert_eq!(t.meter_kwh, Some(10233.4));
        assert_eq!(t.session_kwh, Some(23.4));
        assert_eq!(t.soc_pct, Some(61.0));
        assert_eq!(t.target_soc_pct, Some(80.0));
        assert_eq!(t.voltage_v, Some(781.0));
        assert_eq!(t.current_a, Some(189.8));
        assert_eq!(t.temperature_c, Some(41.0));
    }

    #[test]
    fn epoch_ms_and_absent_ts() {
        let d = telemetry(br#"{"ts": 1795547378000, "status": "available"}"#, NOW).unwrap();
        assert_eq!(d.value.ts, 1_795_547_378_000);
        let d = telemetry(br#"{"status": "suspended_ev"}"#, NOW).unwrap();
        assert_eq!(d.value.ts, NOW);
        assert_eq!(d.value.status, Some(ChargerStatus::SuspendedEv));
    }

    #[test]
    fn every_status_parses() {
        for s in ChargerStatus::ALL {
            let p = format!(r#"{{"status":"{}"}}"#, s.as_str());
            assert_eq!(telemetry(p.as_bytes(), NOW).unwrap().value.status, Some(s));
        }
    }

    #[test]
    fn future_ts_is_clock_skew() {
        let p = format!(r#"{{"ts": {}, "status": "charging"}}"#, NOW + 6 * 60_000);
        let d = telemetry(p.as_bytes(), NOW).unwrap();
        assert!(d.clock_skew);
        assert_eq!(d.value.ts, NOW);
        // four minutes ahead is tolerated; old is accepted (replays)
        let p = format!(r#"{{"ts": {}, "status": "charging"}}"#, NOW + 4 * 60_000);
        assert!(!telemetry(p.as_bytes(), NOW).unwrap().clock_skew);
        let p = format!(r#"{{"ts": {}, "status": "charging"}}"#, NOW - 86_400_000);
        assert_eq!(
            telemetry(p.as_bytes(), NOW).unwrap().value.ts,
            NOW - 86_400_000
        );
    }

    #[test]
    fn rejections_by_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"{not json", "invalid_json"),
            (b"", "invalid_json"),
            (b"\xff\xfe", "invalid_json"),
            (
                br#"{"status": "charging", "power_kw": NaN}"#,
                "invalid_json",
            ),
            (br#"[1,2,3]"#, "invalid_field"),
            (br#"{"power_kw": 10}"#, "invalid_field"),
            (br#"{"status": "charging_hard"}"#, "invalid_field"),
            (br#"{"status": 3}"#, "invalid_field"),
            (
                br#"{"status": "charging", "power_kw": "fast"}"#,
                "invalid_field",
            ),
            (
                br#"{"status": "charging", "ts": "yesterday"}"#,
                "invalid_field",
            ),
            (br#"{"status": "charging", "ts": true}"#, "invalid_field"),
            (br#"{"status": "charging", "soc_pct": 101}"#, "out_of_range"),
            (br#"{"status": "charging", "soc_pct": -1}"#, "out_of_range"),
            (
                br#"{"status": "charging", "session_kwh": -3}"#,
                "out_of_range",
            ),
            (
                br#"{"status": "charging", "meter_kwh": -3}"#,
                "out_of_range",
            ),
            (
                br#"{"status": "charging", "power_kw": 1e9}"#,
                "out_of_range",
            ),
            (
                br#"{"status": "charging", "power_kw": 1e999}"#,
                "out_of_range",
            ),
            (br#"{"status": "charging", "ts": -5}"#, "out_of_range"),
            (
                br#"{"status": "charging", "target_soc_pct": 180}"#,
                "out_of_range",
            ),
        ];
        for (p, reason) in cases {
            let e = telemetry(p, NOW).expect_err(&String::from_utf8_lossy(p));
            assert_eq!(e.reason(), *reason, "{}: {e}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn availability_forms() {
        assert_eq!(availability(b"online"), Ok(true));
        assert_eq!(availability(b"offline\n"), Ok(false));
        assert_eq!(availability(br#""online""#), Ok(true));
        assert_eq!(availability(b"OFFLINE"), Ok(false));
        assert_eq!(
            availability(b"maybe").unwrap_err().reason(),
            "invalid_field"
        );
        assert_eq!(availability(b"\xff").unwrap_err().reason(), "invalid_field");
    }

    #[test]
    fn lounge_fields() {
        let d = lounge(
            br#"{"ts": 1795547378380, "occupancy": 14, "presence": true, "entered": 3, "exited": 1,
 "co2_ppm": 820, "temperature_c": 22.5, "humidity_pct": 41}"#,
            NOW,
        )
        .unwrap();
        let r = d.value;
        assert_eq!(r.ts, 1_795_547_378_380);
        assert_eq!(r.occupancy, Some(14));
        assert_eq!(r.presence, Some(true));
        assert_eq!(r.entered, Some(3));
        assert_eq!(r.exited, Some(1));
        assert_eq!(r.co2_ppm, Some(820.0));
        assert_eq!(r.temperature_c, Some(22.5));
        assert_eq!(r.humidity_pct, Some(41.0));
        assert_eq!(lounge(br#"{}"#, NOW).unwrap().value.ts, NOW);
        assert_eq!(
            lounge(br#"{"occupancy": -2}"#, NOW).unwrap_err().reason(),
            "out_of_range"
        );
        assert_eq!(
            lounge(br#"{"occupancy": 2.5}"#, NOW).unwrap_err().reason(),
            "invalid_field"
        );
        assert_eq!(
            lounge(br#"{"humidity_pct": 140}"#, NOW)
                .unwrap_err()
                .reason(),
            "out_of_range"
        );
        assert_eq!(
            lounge(br#"{"presence": "yes"}"#, NOW).unwrap_err().reason(),
            "invalid_field"
        );
        assert_eq!(lounge(b"nope", NOW).unwrap_err().reason(), "invalid_json");
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("evlounge", "evlounge/milano/charger/hpc-3/telemetry"),
            Some(Route::Telemetry {
                site: "milano",
                charger: "hpc-3"
            })
        );
        assert_eq!(
            route("evlounge", "evlounge/milano/charger/hpc-3/availability"),
            Some(Route::Availability {
                site: "milano",
                charger: "hpc-3"
            })
        );
        assert_eq!(
            route("evlounge", "evlounge/milano/lounge/lounge/door-1"),
            Some(Route::Lounge {
                site: "milano",
                zone: "lounge",
                sensor: "door-1"
            })
        );
        assert_eq!(
            route("evlounge", "evlounge/milano/frontdesk/link"),
            Some(Route::FrontdeskLink { site: "milano" })
        );
        assert_eq!(
            route("evlounge", "evlounge/milano/charger/hpc-3/other"),
            None
        );
        assert_eq!(
            route("evlounge", "evloungex/milano/charger/a/telemetry"),
            None
        );
        assert_eq!(
            route("evlounge", "evlounge/mi lano/charger/a/telemetry"),
            None
        );
        assert_eq!(
            route("a/b", "a/b/s/charger/c/telemetry"),
            Some(Route::Telemetry {
                site: "s",
                charger: "c"
            })
        );
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("null".to_string()),
                any::<bool>().prop_map(|b| b.to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
                any::<i64>().prop_map(|i| i.to_string()),
                "[a-z_]{0,12}".prop_map(|s| format!("{s:?}")),
                Just("[1,2]".to_string()),
                Just("{}".to_string()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = telemetry(&bytes, 1_795_547_378_380);
                let _ = lounge(&bytes, 1_795_547_378_380);
                let _ = availability(&bytes);
            }

            #[test]
            fn weird_values_in_the_right_places_never_panic_and_stay_in_range(
                fields in proptest::collection::vec(
                    (prop_oneof![
                        Just("ts"), Just("status"), Just("power_kw"), Just("soc_pct"),
                        Just("session_kwh"), Just("meter_kwh"), Just("target_soc_pct"),
                        Just("occupancy"), Just("entered"), Just("co2_ppm"), Just("presence"),
                    ], json_value()),
                    0..8,
                ),
            ) {
                let body = format!(
                    "{{{}}}",
                    fields.iter().map(|(k, v)| format!("{k:?}:{v}")).collect::<Vec<_>>().join(",")
                );
                if let Ok(d) = telemetry(body.as_bytes(), 1_795_547_378_380) {
                    let t = d.value;
                    prop_assert!(t.status.is_some());
                    prop_assert!(t.soc_pct.is_none_or(|s| (0.0..=100.0).contains(&s)));
                    prop_assert!(t.session_kwh.is_none_or(|k| k >= 0.0));
                    prop_assert!(t.power_kw.is_none_or(f64::is_finite));
                }
                if let Ok(d) = lounge(body.as_bytes(), 1_795_547_378_380) {
                    prop_assert!(d.value.co2_ppm.is_none_or(f64::is_finite));
                }
            }
        }
    }
}
