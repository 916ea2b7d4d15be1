//! Decoded inputs: what every decoder and adapter produces, whatever the source format.
//! The domain never sees topics, JSON or units other than these.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, on the message clock (`ts` of the message).
pub type TsMs = i64;

/// OCPP 1.6 connector states, snake case on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargerStatus {
    Available,
    Preparing,
    Charging,
    SuspendedEv,
    SuspendedEvse,
    Finishing,
    Reserved,
    Unavailable,
    Faulted,
}

impl ChargerStatus {
    pub const ALL: [ChargerStatus; 9] = [
        ChargerStatus::Available,
        ChargerStatus::Preparing,
        ChargerStatus::Charging,
        ChargerStatus::SuspendedEv,
        ChargerStatus::SuspendedEvse,
        ChargerStatus::Finishing,
        ChargerStatus::Reserved,
        ChargerStatus::Unavailable,
        ChargerStatus::Faulted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChargerStatus::Available => "available",
            ChargerStatus::Preparing => "preparing",
            ChargerStatus::Charging => "charging",
            ChargerStatus::SuspendedEv => "suspended_ev",
            ChargerStatus::SuspendedEvse => "suspended_evse",
            ChargerStatus::Finishing => "finishing",
            ChargerStatus::Reserved => "reserved",
            ChargerStatus::Unavailable => "unavailable",
            ChargerStatus::Faulted => "faulted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// One charger telemetry message (CONTRACT §3), validated: every number is finite and in range.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub ts: TsMs,
    pub status: Option<ChargerStatus>,
    pub session_id: Option<String>,
    pub id_tag: Option<String>,
    pub vehicle: Option<String>,
    pub power_kw: Option<f64>,
    pub meter_kwh: Option<f64>,
    pub session_kwh: Option<f64>,
    pub soc_pct: Option<f64>,
    pub target_soc_pct: Option<f64>,
    pub voltage_v: Option<f64>,
    pub current_a: Option<f64>,
    pub temperature_c: Option<f64>,
    /// Charger error code (OCPP `errorCode`), when the source gives one.
    pub error_code: Option<String>,
    /// Seconds to the target as reported by the vehicle/charger, when the source gives it.
    pub remaining_s: Option<f64>,
}

/// One lounge sensor message (CONTRACT §3); any subset of fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoungeReading {
    pub ts: TsMs,
    /// Absolute head count.
    pub occupancy: Option<u32>,
    /// Seat/area presence sensor.
    pub presence: Option<bool>,
    /// Line-crossing deltas since the last message.
    pub entered: Option<u32>,
    pub exited: Option<u32>,
    pub co2_ppm: Option<f64>,
    pub temperature_c: Option<f64>,
    pub humidity_pct: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChargerKey {
    pub site: String,
    pub charger: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ZoneKey {
    pub site: String,
    pub zone: String,
}

/// What an inbound message turns into, after decoding (one message may yield several).
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Telemetry {
        key: ChargerKey,
        t: Telemetry,
    },
    Availability {
        key: ChargerKey,
        online: bool,
        ts: TsMs,
    },
    Lounge {
        key: ZoneKey,
        sensor: String,
        r: LoungeReading,
    },
}
