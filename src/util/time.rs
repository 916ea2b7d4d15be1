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
