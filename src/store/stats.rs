//! Usage statistics per charger and time bucket (CONTRACT §7 `/api/v1/stats/usage`): a pure
//! function of the sessions, the site's time zone and a clock, so it is table-tested here.
//!
//! Rules, per charger and bucket `[start, end)`:
//! - `utilization_pct` = plugged-in seconds (plug-in → unplug, or `now` while open)
//!   overlapping the bucket ÷ the bucket's length (a DST day has 23 or 25 hours) × 100;
//! - `sessions` and `energy_kwh` count each session once, in the bucket where it started;
//! - `idle_min` = idle time (completion → unplug, or `now` while open) overlapping the bucket.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::domain::session::SessionRecord;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketSize {
    Hour,
    Day,
}

impl BucketSize {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hour" => Some(BucketSize::Hour),
            "day" => Some(BucketSize::Day),
            _ => None,
        }
    }
}

/// One row of the usage answer.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageBucket {
    pub site: String,
    pub charger: String,
    /// Bucket start in the site's zone (its offset is the one in force at that instant).
    pub start: DateTime<Tz>,
    pub end_ms: i64,
    pub utilization_pct: f64,
    pub sessions: u32,
    pub energy_kwh: f64,
    pub idle_min: f64,
}

impl UsageBucket {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "site": self.site,
            "charger": self.charger,
            "start": self.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            "utilization_pct": round(self.utilization_pct, 2),
            "sessions": self.sessions,
            "energy_kwh": round(self.energy_kwh, 3),
            "idle_min": round(self.idle_min, 2),
        })
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// The bucket boundaries (epoch ms) covering `[from, to)`, aligned to local hours or local
/// midnights in `tz`: `n` buckets are `n + 1` boundaries. The first bucket starts at or
/// before `from`. Stops (returning `None`) once more than `max` buckets would be needed.
pub fn bucket_bounds(tz: Tz, size: BucketSize, from: i64, to: i64, max: usize) -> Option<Vec<i64>> {
    let mut out = Vec::new();
    let mut t = align(tz, size, from);
    out.push(t);
    while t < to {
        if out.len() > max {
            return None;
        }
        t = next(tz, size, t);
        out.push(t);
    }
    Some(out)
}

fn offset_ms(tz: Tz, t: i64) -> i64 {
    use chrono::Offset;
    let utc = DateTime::<Utc>::from_timestamp_millis(t).unwrap_or_default();
    i64::from(
        tz.offset_from_utc_datetime(&utc.naive_utc())
            .fix()
            .local_minus_utc(),
    ) * 1000
}

/// The start of the local hour containing `t`. Offsets are applied as in force at `t`, so
/// the repeated hour of an autumn night is two buckets, and half-hour zones align right.
fn floor_hour(tz: Tz, t: i64) -> i64 {
    let off = offset_ms(tz, t);
    let local = t + off;
    local - local.rem_euclid(3_600_000) - off
}

/// The first instant of the local day `d` (midnight, or the end of a DST gap over it).
fn day_start(tz: Tz, d: NaiveDate) -> i64 {
    let mut naive = d.and_time(NaiveTime::MIN);
    for _ in 0..48 {
        match tz.from_local_datetime(&naive) {
            LocalResult::Single(x) => return x.timestamp_millis(),
            LocalResult::Ambiguous(a, _) => return a.timestamp_millis(),
            LocalResult::None => naive += Duration::minutes(30),
        }
    }
    naive.and_utc().timestamp_millis()
}

fn local_date(tz: Tz, t: i64) -> NaiveDate {
    let utc = DateTime::<Utc>::from_timestamp_millis(t).unwrap_or_default();
    utc.with_timezone(&tz).date_naive()
}

fn align(tz: Tz, size: BucketSize, t: i64) -> i64 {
    match size {
        BucketSize::Hour => floor_hour(tz, t),
        BucketSize::Day => day_start(tz, local_date(tz, t)),
    }
}

fn next(tz: Tz, size: BucketSize, start: i64) -> i64 {
    match size {
        BucketSize::Hour => {
            let n = floor_hour(tz, start + 3_600_000);
            // A shift by less than an hour (Lord Howe) could floor back onto `start`.
            if n > start {
                n
            } else {
                floor_hour(tz, start + 7_200_000)
            }
        }
        BucketSize::Day => {
            let d = local_date(tz, start);
            match d.succ_opt() {
                Some(n) => day_start(tz, n),
                None => start + 86_400_000,
            }
        }
    }
}

fn overlap_ms(a: i64, b: i64, s: i64, e: i64) -> i64 {
    (b.min(e) - a.max(s)).max(0)
}

/// Usage of `chargers` (one site, zone `tz`) over `bounds` (from [`bucket_bounds`]), from
/// the `sessions` overlapping it; `now` closes open sessions. Rows are ordered by charger,
/// then time. Sessions of other chargers are ignored.
pub fn usage(
    site: &str,
    tz: Tz,
    chargers: &[String],
    bounds: &[i64],
    sessions: &[SessionRecord],
    now: i64,
) -> Vec<UsageBucket> {
    let mut out = Vec::with_capacity(chargers.len() * bounds.len().saturating_sub(1));
    for charger in chargers {
        let mine: Vec<&SessionRecord> = sessions
            .iter()
            .filter(|s| s.site == site && &s.charger == charger)
            .collect();
        for w in bounds.windows(2) {
            let (s, e) = (w[0], w[1]);
            let mut plugged = 0i64;
            let mut idle = 0i64;
            let mut count = 0u32;
            let mut energy = 0.0;
            for r in &mine {
                let end = r.ended.unwrap_or(now).max(r.started);
                plugged += overlap_ms(r.started, end, s, e);
                if let Some(c) = r.completed {
                    idle += overlap_ms(c.max(r.started), end, s, e);
                }
                if r.started >= s && r.started < e {
                    count += 1;
                    energy += r.energy_kwh;
                }
            }
            let len = (e - s).max(1);
            out.push(UsageBucket {
                site: site.to_string(),
                charger: charger.clone(),
                start: DateTime::<Utc>::from_timestamp_millis(s)
                    .unwrap_or_default()
                    .with_timezone(&tz),
                end_ms: e,
                utilization_pct: plugged as f64 * 100.0 / len as f64,
                sessions: count,
                energy_kwh: energy,
                idle_min: idle as f64 / 60_000.0,
            });
        }
    }
    out
}

/// Events per (site, subject, kind) with `ts` in `[from, to)`.
pub fn event_counts(
    conn: &rusqlite::Connection,
    from: i64,
    to: i64,
) -> rusqlite::Result<Vec<(String, String, String, i64)>> {
    let mut st = conn.prepare_cached(
        "SELECT site, subject, kind, COUNT(*) FROM events WHERE ts >= ?1 AND ts < ?2
         GROUP BY site, subject, kind ORDER BY site, subject, kind",
    )?;
    let rows = st.query_map([from, to], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    rows.collect()
}

/// Guest notifications per (channel, status) created in `[from, to)`; status is `pending`,
/// `delivered`, `failed` or `expired`. Never reads addresses.
pub fn notification_counts(
    conn: &rusqlite::Connection,
    from: i64,
    to: i64,
) -> rusqlite::Result<Vec<(String, String, i64)>> {
    let mut st = conn.prepare_cached(
        "SELECT channel, status, COUNT(*) FROM notifications WHERE created_ms >= ?1 AND created_ms < ?2
         GROUP BY channel, status ORDER BY channel, status",
    )?;
    let rows = st.query_map([from, to], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn rome() -> Tz {
        "Europe/Rome".parse().unwrap()
    }

    fn session(
        charger: &str,
        started: &str,
        completed: Option<&str>,
        ended: Option<&str>,
        kwh: f64,
    ) -> SessionRecord {
        SessionRecord {
            completed: completed.map(ms),
            ended: ended.map(ms),
            energy_kwh: kwh,
            ..SessionRecord::opened(
                "milano",
                charger,
                format!("S-{started}"),
                format!("S-{started}"),
                ms(started),
            )
        }
    }

    fn starts(tz: Tz, b: &[i64]) -> Vec<String> {
        b.iter()
            .map(|t| {
                DateTime::<Utc>::from_timestamp_millis(*t)
                    .unwrap()
                    .with_timezone(&tz)
                    .to_rfc3339()
            })
            .collect()
    }

    #[test]
    fn day_buckets_follow_dst_23_and_25_hour_days() {
        let b = bucket_bounds(
            rome(),
            BucketSize::Day,
            ms("2025-03-29T10:00:00Z"),
            ms("2025-03-31T00:00:00+02:00"),
            100,
        )
        .unwrap();
        assert_eq!(
            starts(rome(), &b),
            [
                "2025-03-29T00:00:00+01:00",
                "2025-03-30T00:00:00+01:00",
                "2025-03-31T00:00:00+02:00"
            ]
        );
        assert_eq!(b[2] - b[1], 23 * 3_600_000);
        let b = bucket_bounds(
            rome(),
            BucketSize::Day,
            ms("2025-10-26T00:00:00+02:00"),
            ms("2025-10-26T12:00:00+01:00"),
            100,
        )
        .unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[1] - b[0], 25 * 3_600_000);
    }

    #[test]
    fn hour_buckets_repeat_the_autumn_hour_and_skip_the_spring_one() {
        let b = bucket_bounds(
            rome(),
            BucketSize::Hour,
            ms("2025-10-26T01:10:00+02:00"),
            ms("2025-10-26T04:00:00+01:00"),
            100,
        )
        .unwrap();
        assert_eq!(
            starts(rome(), &b),
            [
                "2025-10-26T01:00:00+02:00",
                "2025-10-26T02:00:00+02:00",
                "2025-10-26T02:00:00+01:00",
                "2025-10-26T03:00:00+01:00",
                "2025-10-26T04:00:00+01:00"
            ]
        );
        let b = bucket_bounds(
            rome(),
            BucketSize::Hour,
            ms("2025-03-30T01:00:00+01:00"),
            ms("2025-03-30T04:00:00+02:00"),
            100,
        )
        .unwrap();
        assert_eq!(
            starts(rome(), &b),
            [
                "2025-03-30T01:00:00+01:00",
                "2025-03-30T03:00:00+02:00",
                "2025-03-30T04:00:00+02:00"
            ]
        );
        // Half-hour zones align to their own hours, not UTC's.
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        let b = bucket_bounds(
            kolkata,
            BucketSize::Hour,
            ms("2025-01-01T10:45:00+05:30"),
            ms("2025-01-01T11:30:00+05:30"),
            100,
        )
        .unwrap();
        assert_eq!(
            starts(kolkata, &b),
            [
                "2025-01-01T10:00:00+05:30",
                "2025-01-01T11:00:00+05:30",
                "2025-01-01T12:00:00+05:30"
            ]
        );
    }

    #[test]
    fn too_many_buckets_is_refused() {
        let from = ms("2025-01-01T00:00:00Z");
        assert!(bucket_bounds(rome(), BucketSize::Hour, from, from + 10 * 3_600_000, 5).is_none());
        assert!(bucket_bounds(rome(), BucketSize::Hour, from, from + 5 * 3_600_000, 5).is_some());
    }

    #[test]
    fn usage_splits_plugged_and_idle_time_and_counts_at_start() {
        let tz = rome();
        let b = bucket_bounds(
            tz,
            BucketSize::Day,
            ms("2025-10-25T00:00:00+02:00"),
            ms("2025-10-27T00:00:00+01:00"),
            100,
        )
        .unwrap();
        let sessions = vec![
            // 22:00 → 01:00 across midnight; done at 23:00, then 2 h idle.
            session(
                "hpc-3",
                "2025-10-25T22:00:00+02:00",
                Some("2025-10-25T23:00:00+02:00"),
                Some("2025-10-26T01:00:00+02:00"),
                40.0,
            ),
            session(
                "hpc-3",
                "2025-10-26T02:30:00+01:00",
                None,
                Some("2025-10-26T03:30:00+01:00"),
                20.5,
            ),
            // another charger's session is not counted for hpc-3
            session(
                "hpc-4",
                "2025-10-26T10:00:00+01:00",
                None,
                Some("2025-10-26T10:30:00+01:00"),
                5.0,
            ),
        ];
        let rows = usage("milano", tz, &["hpc-3".into()], &b, &sessions, 0);
        assert_eq!(rows.len(), 2);
        let (d1, d2) = (&rows[0], &rows[1]);
        assert!((d1.utilization_pct - 200.0 / 24.0).abs() < 1e-9);
        assert_eq!((d1.sessions, d1.energy_kwh, d1.idle_min), (1, 40.0, 60.0));
        // 1 h + 1 h of a 25 h day
        assert!((d2.utilization_pct - 8.0).abs() < 1e-9);
        assert_eq!((d2.sessions, d2.energy_kwh, d2.idle_min), (1, 20.5, 60.0));
        assert_eq!(
            d2.to_json()["start"],
            serde_json::json!("2025-10-26T00:00:00+02:00")
        );
        assert_eq!(d1.to_json()["utilization_pct"], serde_json::json!(8.33));
    }

    #[test]
    fn open_sessions_run_until_now() {
        let tz = rome();
        let b = bucket_bounds(
            tz,
            BucketSize::Hour,
            ms("2025-06-01T10:00:00+02:00"),
            ms("2025-06-01T12:00:00+02:00"),
            100,
        )
        .unwrap();
        let s = vec![session(
            "hpc-3",
            "2025-06-01T10:15:00+02:00",
            Some("2025-06-01T10:45:00+02:00"),
            None,
            12.0,
        )];
        let now = ms("2025-06-01T11:30:00+02:00");
        let rows = usage("milano", tz, &["hpc-3".into()], &b, &s, now);
        assert_eq!(rows.len(), 2);
        assert!((rows[0].utilization_pct - 75.0).abs() < 1e-9);
        assert!((rows[0].idle_min - 15.0).abs() < 1e-9);
        assert!((rows[1].utilization_pct - 50.0).abs() < 1e-9);
        assert!((rows[1].idle_min - 30.0).abs() < 1e-9);
        assert_eq!(rows[1].sessions, 0);
    }
}
