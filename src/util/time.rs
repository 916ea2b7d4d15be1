//! Time helpers: the message clock is milliseconds since the Unix epoch.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

use crate::domain::input::TsMs;

/// RFC 3339 with milliseconds and `Z`, e.g. `2026-11-24T10:41:07.512Z`.
pub fn rfc3339_ms(ts: TsMs) -> String {
    match Utc.timestamp_millis_opt(ts).single() {
        Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => String::new(),
    }
}

/// Parses RFC 3339 into ms since epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<TsMs> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|dt| dt.timestamp_millis())
}

/// Wall clock now, ms since epoch.
pub fn now_ms() -> TsMs {
    Utc::now().timestamp_millis()
}

/// A monotonic clock in ms (from the first call in this process): for "how long since",
/// which a wall clock stepped by NTP (a box without a battery-backed clock boots at its last
/// shutdown time, then jumps hours ahead) would get wrong by the size of the step.
pub fn mono_ms() -> i64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = "2026-11-24T10:15:00.120Z";
        let ms = parse_rfc3339_ms(s).unwrap();
        assert_eq!(rfc3339_ms(ms), s);
        assert_eq!(parse_rfc3339_ms("2026-11-24T11:15:00.120+01:00"), Some(ms));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }
}
