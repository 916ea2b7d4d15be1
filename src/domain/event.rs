//! Events the daemon decides (CONTRACT §5) and their stable ids.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::input::TsMs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ChargingStarted,
    NearlyComplete,
    ChargingComplete,
    IdleBlocking,
    ChargingStopped,
    ChargingNotStarted,
    ChargerFault,
    ChargerOffline,
    ChargerOnline,
    LoungeFull,
    LoungeFree,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::ChargingStarted,
        EventKind::NearlyComplete,
        EventKind::ChargingComplete,
        EventKind::IdleBlocking,
        EventKind::ChargingStopped,
        EventKind::ChargingNotStarted,
        EventKind::ChargerFault,
        EventKind::ChargerOffline,
        EventKind::ChargerOnline,
        EventKind::LoungeFull,
        EventKind::LoungeFree,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ChargingStarted => "charging_started",
            EventKind::NearlyComplete => "nearly_complete",
            EventKind::ChargingComplete => "charging_complete",
            EventKind::IdleBlocking => "idle_blocking",
            EventKind::ChargingStopped => "charging_stopped",
            EventKind::ChargingNotStarted => "charging_not_started",
            EventKind::ChargerFault => "charger_fault",
            EventKind::ChargerOffline => "charger_offline",
            EventKind::ChargerOnline => "charger_online",
            EventKind::LoungeFull => "lounge_full",
            EventKind::LoungeFree => "lounge_free",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Guests are subscribed to these by default (CONTRACT §6).
    pub fn is_guest_default(self) -> bool {
        matches!(
            self,
            EventKind::NearlyComplete
                | EventKind::ChargingComplete
                | EventKind::ChargingStopped
                | EventKind::IdleBlocking
        )
    }
}

/// Why a session's charging stopped (`charging_stopped.reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    StoppedEarly,
    Unplugged,
    Faulted,
}

/// One decided event. Charger events fill the charger fields, lounge events the zone fields;
/// what does not apply or is unknown stays `None` (serialised as `null` where it applies).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub kind: EventKind,
    /// Message-clock time of the event, ms since epoch.
    pub ts: TsMs,
    pub site: String,
    // charger events
    pub charger: Option<String>,
    pub bay: Option<String>,
    pub session_id: Option<String>,
    pub vehicle: Option<String>,
    pub id_tag: Option<String>,
    pub energy_kwh: Option<f64>,
    pub duration_s: Option<f64>,
    pub soc_pct: Option<f64>,
    pub target_soc_pct: Option<f64>,
    pub peak_kw: Option<f64>,
    pub reason: Option<StopReason>,
    pub eta_s: Option<f64>,
    pub idle_s: Option<f64>,
    pub error_code: Option<String>,
    // lounge events
    pub zone: Option<String>,
    pub occupancy: Option<u32>,
    pub capacity: Option<u32>,
}

impl Event {
    /// A blank event of `kind`; the caller fills what applies.
    pub fn new(kind: EventKind, ts: TsMs, site: &str, event_id: String) -> Self {
        Event {
            event_id,
            kind,
            ts,
            site: site.to_string(),
            charger: None,
            bay: None,
            session_id: None,
            vehicle: None,
            id_tag: None,
            energy_kwh: None,
            duration_s: None,
            soc_pct: None,
            target_soc_pct: None,
            peak_kw: None,
            reason: None,
            eta_s: None,
            idle_s: None,
            error_code: None,
            zone: None,
            occupancy: None,
            capacity: None,
        }
    }

    pub fn is_lounge(&self) -> bool {
        matches!(self.kind, EventKind::LoungeFull | EventKind::LoungeFree)
    }

    /// The wire form (CONTRACT §5): charger events carry the charger fields (unknown as
    /// `null`), lounge events carry zone, occupancy and capacity instead. `id_tag` is never
    /// published (it identifies a customer's card).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Value};
        let mut v = json!({
            "event_id": self.event_id,
            "kind": self.kind.as_str(),
            "ts": crate::util::time::rfc3339_ms(self.ts),
            "site": self.site,
        });
        let Value::Object(m) = &mut v else {
            return v;
        };
        if self.is_lounge() {
            m.insert("zone".into(), json!(self.zone));
            m.insert("occupancy".into(), json!(self.occupancy));
            m.insert("capacity".into(), json!(self.capacity));
        } else {
            m.insert("charger".into(), json!(self.charger));
            m.insert("bay".into(), json!(self.bay));
            m.insert("session_id".into(), json!(self.session_id));
            m.insert("vehicle".into(), json!(self.vehicle));
            m.insert("energy_kwh".into(), json!(self.energy_kwh.map(round3)));
            m.insert("duration_s".into(), json!(self.duration_s.map(f64::round)));
            m.insert("soc_pct".into(), json!(self.soc_pct));
            m.insert("target_soc_pct".into(), json!(self.target_soc_pct));
            m.insert("peak_kw".into(), json!(self.peak_kw.map(round3)));
            match self.kind {
                EventKind::ChargingStopped => {
                    m.insert("reason".into(), json!(self.reason));
                }
                EventKind::NearlyComplete => {
                    m.insert("eta_s".into(), json!(self.eta_s.map(f64::round)));
                }
                EventKind::IdleBlocking => {
                    m.insert("idle_s".into(), json!(self.idle_s.map(f64::round)));
                }
                EventKind::ChargerFault => {
                    m.insert("error_code".into(), json!(self.error_code));
                }
                _ => {}
            }
        }
        v
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `event_id` = first 16 hex digits of SHA-256 of `site|subject|session_key|kind|seq`
/// (CONTRACT §5). `session_key` is the session id plus the session's start ts in ms, or
/// empty outside a session; `seq` counts this kind's occurrences within the session or subject.
pub fn event_id(site: &str, subject: &str, session_key: &str, kind: EventKind, seq: u32) -> String {
    let mut h = Sha256::new();
    h.update(site.as_bytes());
    h.update(b"|");
    h.update(subject.as_bytes());
    h.update(b"|");
    h.update(session_key.as_bytes());
    h.update(b"|");
    h.update(kind.as_str().as_bytes());
    h.update(b"|");
    h.update(seq.to_string().as_bytes());
    let digest = h.finalize();
    hex::encode(&digest[..8])
}

/// `session_key` as used in `event_id`: the charger's session id plus the start ts in ms.
pub fn session_key(session_id: &str, started_ms: TsMs) -> String {
    format!("{session_id}{started_ms}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_is_stable_and_16_hex() {
        let a = event_id(
            "milano",
            "hpc-3",
            "T-18421795547378380",
            EventKind::ChargingComplete,
            1,
        );
        let b = event_id(
            "milano",
            "hpc-3",
            "T-18421795547378380",
            EventKind::ChargingComplete,
            1,
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let c = event_id(
            "milano",
            "hpc-3",
            "T-18421795547378380",
            EventKind::IdleBlocking,
            2,
        );
        assert_ne!(a, c);
    }

    #[test]
    fn event_id_matches_sha256_of_the_contract_string() {
        let s = "milano|hpc-3|T-1842100|charging_complete|1";
        let full = hex::encode(Sha256::digest(s.as_bytes()));
        assert_eq!(
            event_id(
                "milano",
                "hpc-3",
                "T-1842100",
                EventKind::ChargingComplete,
                1
            ),
            full[..16]
        );
    }

    #[test]
    fn kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }
}
