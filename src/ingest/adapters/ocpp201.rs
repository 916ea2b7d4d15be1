//! OCPP 2.0.1 frames relayed over MQTT (`ocpp/{cp}/in`), one frame per message.
//!
//! In 2.0.1 the connector status only says Available/Occupied/...; what the car is doing is
//! in `TransactionEvent.transactionInfo.chargingState`. State per station and EVSE: the
//! connector status, the open transaction with its latest charging state, and the session
//! energy from the first register reading of the transaction (2.0.1 has no `meterStart`).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::common::{
    check_telemetry, opt_str, parse_json, FrameClocks, SessionEnergy, StationClock, Target,
};
use super::ocpp16j::{merge_instants, read_samples, BootInfo, Dialect};
use super::template::Captures;
use super::{Adapter, DecodeError};
use crate::domain::input::{ChargerKey, ChargerStatus, Input, Telemetry, TsMs};
use crate::ingest::decode::clamp_future;

const MAX_EVSE: u64 = 255;
const MAX_STATIONS: usize = 10_000;

#[derive(Debug)]
struct Tx {
    id: String,
    id_tag: Option<String>,
    charging: Option<ChargerStatus>,
    energy: SessionEnergy,
    /// Seen from its `Started` event, so its first energy reading is the session start.
    started_seen: bool,
    ended: bool,
}

#[derive(Debug, Default)]
struct Evse {
    connector: Option<u32>,
    /// Connector status from StatusNotification, mapped to the 1.6 vocabulary.
    status: Option<ChargerStatus>,
    tx: Option<Tx>,
    last_meter_ts: Option<TsMs>,
}

#[derive(Debug, Default)]
struct Station {
    clock: StationClock,
    /// Per charger (EVSE): frames of one instant get distinct times.
    clocks: FrameClocks,
    boot: Option<BootInfo>,
    evses: BTreeMap<u32, Evse>,
}

impl Station {
    fn ts(&self, explicit: Option<&Value>, recv_ms: TsMs) -> Result<TsMs, DecodeError> {
        self.clock.ts(explicit, recv_ms)
    }

    fn saw(&mut self, ts: TsMs, recv_ms: TsMs) {
        self.clock.saw(ts, recv_ms);
    }
}

pub struct Ocpp201 {
    target: Target,
    stations: HashMap<String, Station>,
}

impl Ocpp201 {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            stations: HashMap::new(),
        }
    }

    pub fn boot_info(&self, caps: &Captures) -> Option<&BootInfo> {
        self.stations.get(&caps.state_key())?.boot.as_ref()
    }
}

fn key_for(
    target: &Target,
    caps: &Captures,
    evse: u32,
    connector: Option<u32>,
) -> Result<ChargerKey, DecodeError> {
    let caps = caps
        .with("evse", evse.to_string())
        .with("connector", connector.unwrap_or(1).to_string());
    target.charger_key(&caps)
}

fn charging_state(s: &str) -> Option<ChargerStatus> {
    Some(match s {
        "Charging" => ChargerStatus::Charging,
        "SuspendedEV" => ChargerStatus::SuspendedEv,
        "SuspendedEVSE" => ChargerStatus::SuspendedEvse,
        // Plugged in (or authorised before plug-in) but no energy asked for yet.
        "EVConnected" | "Idle" => ChargerStatus::Preparing,
        _ => return None,
    })
}

fn small_id(v: Option<&Value>, name: &str, max: u64) -> Result<Option<u32>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let n = v
                .as_u64()
                .ok_or_else(|| DecodeError::InvalidField(name.to_string()))?;
            if n > max {
                return Err(DecodeError::OutOfRange(name.to_string()));
            }
            Ok(Some(n as u32))
        }
    }
}

impl Evse {
    fn telemetry(&self, ts: TsMs, status: ChargerStatus) -> Telemetry {
        let tx = self
            .tx
            .as_ref()
            .filter(|_| status != ChargerStatus::Available);
        Telemetry {
            ts,
            status: Some(status),
            session_id: tx.map(|t| t.id.clone()),
            id_tag: tx.and_then(|t| t.id_tag.clone()),
            ..Default::default()
        }
    }

    /// What an `Occupied` connector means depends on the transaction on it.
    fn occupied_status(&self) -> ChargerStatus {
        match &self.tx {
            Some(t) if t.ended => ChargerStatus::Finishing,
            Some(t) => t.charging.unwrap_or(ChargerStatus::Preparing),
            None => ChargerStatus::Preparing,
        }
    }
}

impl Adapter for Ocpp201 {
    fn name(&self) -> &'static str {
        "ocpp201"
    }

    fn decode(
        &mut self,
        _topic: &str,
        caps: &Captures,
        payload: &[u8],
        recv_ms: TsMs,
    ) -> Result<Vec<Input>, DecodeError> {
        let frame = parse_json(payload)?;
        let arr = frame
            .as_array()
            .ok_or_else(|| DecodeError::InvalidField("frame".into()))?;
        let msg_type = arr
            .first()
            .and_then(Value::as_u64)
            .ok_or_else(|| DecodeError::InvalidField("messageTypeId".into()))?;
        arr.get(1)
            .and_then(Value::as_str)
            .ok_or_else(|| DecodeError::InvalidField("messageId".into()))?;
        match msg_type {
            2 => {}
            // No 2.0.1 response carries anything the domain needs (transaction ids are
            // assigned by the station itself).
            3 | 4 => return Ok(vec![]),
            _ => return Err(DecodeError::InvalidField("messageTypeId".into())),
        }
        let action = arr
            .get(2)
            .and_then(Value::as_str)
            .ok_or_else(|| DecodeError::InvalidField("action".into()))?;
        let p = arr
            .get(3)
            .filter(|p| p.is_object())
            .ok_or_else(|| DecodeError::InvalidField("payload".into()))?;
        let skey = caps.state_key();
        if !self.stations.contains_key(&skey) && self.stations.len() >= MAX_STATIONS {
            return Err(DecodeError::OutOfRange("stations".into()));
        }
        let target = &self.target;
        let st = self.stations.entry(skey).or_default();
        let mut out = match action {
            "BootNotification" => {
                let cs = p.get("chargingStation").unwrap_or(&Value::Null);
                if cs.is_object() {
                    st.boot = Some(BootInfo {
                        vendor: opt_str(cs, "vendorName")?.unwrap_or_default().to_string(),
                        model: opt_str(cs, "model")?.unwrap_or_default().to_string(),
                        serial: opt_str(cs, "serialNumber")?.map(String::from),
                        firmware: opt_str(cs, "firmwareVersion")?.map(String::from),
                    });
                }
                Ok(vec![])
            }
            "StatusNotification" => status_notification(target, st, caps, p, recv_ms),
            "TransactionEvent" => transaction_event(target, st, caps, p, recv_ms),
            _ => Ok(vec![]),
        }?;
        st.clocks.stamp(payload, &mut out, recv_ms);
        Ok(out)
    }
}

fn status_notification(
    target: &Target,
    st: &mut Station,
    caps: &Captures,
    p: &Value,
    recv_ms: TsMs,
) -> Result<Vec<Input>, DecodeError> {
    let evse_id = small_id(p.get("evseId"), "evseId", MAX_EVSE)?
        .ok_or_else(|| DecodeError::InvalidField("evseId".into()))?;
    let connector = small_id(p.get("connectorId"), "connectorId", MAX_EVSE)?;
    let raw = opt_str(p, "connectorStatus")?
        .ok_or_else(|| DecodeError::InvalidField("connectorStatus".into()))?;
    let ts = st.ts(p.get("timestamp"), recv_ms)?;
    let mut out = Vec::new();
    let fixed = match raw {
        "Available" => Some(ChargerStatus::Available),
        "Occupied" => None,
        "Reserved" => Some(ChargerStatus::Reserved),
        "Unavailable" => Some(ChargerStatus::Unavailable),
        "Faulted" => Some(ChargerStatus::Faulted),
        _ => return Err(DecodeError::InvalidField("connectorStatus".into())),
    };
    if evse_id == 0 {
        if let Some(s @ (ChargerStatus::Unavailable | ChargerStatus::Faulted)) = fixed {
            let ids: Vec<u32> = st.evses.keys().copied().collect();
            for id in ids {
                if let Some(e) = st.evses.get_mut(&id) {
                    let key = key_for(target, caps, id, e.connector)?;
                    e.status = Some(s);
                    out.push(Input::Telemetry {
                        key,
                        t: check_telemetry(e.telemetry(ts, s))?,
                    });
                }
            }
        }
        st.saw(ts, recv_ms);
        return Ok(out);
    }
    let key = key_for(target, caps, evse_id, connector)?;
    let e = st.evses.entry(evse_id).or_default();
    if connector.is_some() {
        e.connector = connector;
    }
    let status = fixed.unwrap_or_else(|| e.occupied_status());
    e.status = Some(status);
    let t = check_telemetry(e.telemetry(ts, status))?;
    if status == ChargerStatus::Available {
        e.tx = None;
    }
    out.push(Input::Telemetry { key, t });
    st.saw(ts, recv_ms);
    Ok(out)
}

fn transaction_event(
    target: &Target,
    st: &mut Station,
    caps: &Captures,
    p: &Value,
    recv_ms: TsMs,
) -> Result<Vec<Input>, DecodeError> {
    let event =
        opt_str(p, "eventType")?.ok_or_else(|| DecodeError::InvalidField("eventType".into()))?;
    if !matches!(event, "Started" | "Updated" | "Ended") {
        return Err(DecodeError::InvalidField("eventType".into()));
    }
    let info = p
        .get("transactionInfo")
        .filter(|v| v.is_object())
        .ok_or_else(|| DecodeError::InvalidField("transactionInfo".into()))?;
    let tx_id = opt_str(info, "transactionId")?
        .filter(|s| !s.is_empty() && s.len() <= 36)
        .ok_or_else(|| DecodeError::InvalidField("transactionId".into()))?;
    let charging = match opt_str(info, "chargingState")? {
        None => None,
        Some(s) => Some(
            charging_state(s).ok_or_else(|| DecodeError::InvalidField("chargingState".into()))?,
        ),
    };
    let (evse_id, connector) = match p.get("evse") {
        None | Some(Value::Null) => (None, None),
        Some(e) if e.is_object() => (
            small_id(e.get("id"), "evse.id", MAX_EVSE)?,
            small_id(e.get("connectorId"), "evse.connectorId", MAX_EVSE)?,
        ),
        Some(_) => return Err(DecodeError::InvalidField("evse".into())),
    };
    let id_tag = match p.get("idToken") {
        None | Some(Value::Null) => None,
        Some(t) if t.is_object() => opt_str(t, "idToken")?.map(String::from),
        Some(_) => return Err(DecodeError::InvalidField("idToken".into())),
    };
    let ts = st.ts(p.get("timestamp"), recv_ms)?;
    let mut readings = Vec::new();
    match p.get("meterValue") {
        None | Some(Value::Null) => {}
        Some(Value::Array(mvs)) => {
            for mv in mvs {
                if !mv.is_object() {
                    return Err(DecodeError::InvalidField("meterValue".into()));
                }
                let mts = st.ts(mv.get("timestamp"), recv_ms)?;
                let r = read_samples(
                    mv.get("sampledValue").unwrap_or(&Value::Null),
                    Dialect::V201,
                )?;
                readings.push((mts, r));
            }
        }
        Some(_) => return Err(DecodeError::InvalidField("meterValue".into())),
    }
    let readings = merge_instants(readings);
    // Only the first event of a transaction must name its EVSE; later ones are found by id.
    let evse_id = match evse_id {
        Some(id) if id > 0 => id,
        Some(_) => return Err(DecodeError::InvalidField("evse.id".into())),
        None => {
            let found = st
                .evses
                .iter()
                .find(|(_, e)| e.tx.as_ref().is_some_and(|t| t.id == tx_id))
                .map(|(id, _)| *id);
            match found {
                Some(id) => id,
                None => {
                    st.saw(ts, recv_ms);
                    return Ok(vec![]);
                }
            }
        }
    };
    let e = st.evses.entry(evse_id).or_default();
    if connector.is_some() {
        e.connector = connector;
    }
    let key = key_for(target, caps, evse_id, e.connector)?;
    // A new transaction, or one whose Started we missed.
    if e.tx.as_ref().is_none_or(|t| t.id != tx_id) {
        e.tx = Some(Tx {
            id: tx_id.to_string(),
            id_tag: None,
            charging: None,
            energy: SessionEnergy::default(),
            started_seen: event == "Started",
            ended: false,
        });
    }
    let ended = event == "Ended";
    let connector_free = e.status == Some(ChargerStatus::Available);
    let mut out = Vec::new();
    if let Some(tx) = e.tx.as_mut() {
        if id_tag.is_some() {
            tx.id_tag = id_tag;
        }
        if charging.is_some() {
            tx.charging = charging;
        }
    }
    let status = if ended {
        if connector_free {
            ChargerStatus::Available
        } else {
            ChargerStatus::Finishing
        }
    } else {
        e.tx.as_ref()
            .and_then(|t| t.charging)
            .unwrap_or(ChargerStatus::Preparing)
    };
    if readings.is_empty() {
        let mut t = e.telemetry(ts, status);
        if ended {
            t.power_kw = Some(0.0);
        }
        out.push(Input::Telemetry {
            key: key.clone(),
            t: check_telemetry(t)?,
        });
    }
    for (mts, r) in readings {
        // As in OCPP 1.6: a time years ahead would leave every later reading out of order.
        let order_ts = clamp_future(mts, recv_ms).0;
        let in_order = e.last_meter_ts.is_none_or(|l| order_ts >= l);
        let session_wh = match (e.tx.as_mut(), r.energy_wh) {
            (Some(tx), Some(wh)) if in_order && !tx.ended => {
                if tx.started_seen && tx.energy.start_wh.is_none() {
                    tx.energy = SessionEnergy::starting_at(wh);
                }
                tx.energy.advance(wh)
            }
            (Some(tx), Some(wh)) => tx.energy.peek(wh),
            _ => None,
        };
        if in_order {
            e.last_meter_ts = Some(order_ts);
        }
        let mut t = e.telemetry(mts, status);
        t.power_kw = r.power_kw.or(ended.then_some(0.0));
        t.meter_kwh = r.energy_wh.map(|wh| wh / 1000.0);
        t.session_kwh = session_wh.map(|wh| wh / 1000.0);
        t.soc_pct = r.soc_pct;
        t.voltage_v = r.voltage_v;
        t.current_a = r.current_a;
        t.temperature_c = r.temperature_c;
        out.push(Input::Telemetry {
            key: key.clone(),
            t: check_telemetry(t)?,
        });
    }
    if ended {
        if let Some(tx) = e.tx.as_mut() {
            tx.ended = true;
        }
        if connector_free {
            e.tx = None;
        }
    }
    st.saw(ts, recv_ms);
    Ok(out)
}
