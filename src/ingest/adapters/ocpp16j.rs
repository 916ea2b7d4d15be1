//! OCPP 1.6J frames relayed over MQTT, one frame per message (`ocpp/{cp}/in`).
//!
//! State per station (the topic's named captures) and connector: the latest status, the
//! open transaction (id, idTag, meterStart, energy across meter resets) and StartTransaction
//! CALLs waiting for their CALLRESULT, which is where the CSMS assigns the transactionId.
//!
//! Session id: the transactionId once known (CALLRESULT, or a MeterValues/StopTransaction
//! that carries it), else `{charger}-{start ms}`. The StartTransaction telemetry itself
//! carries no session id, because its CALLRESULT normally follows within milliseconds and
//! the domain should see one id per session, not a provisional one first. Once an id went
//! out it stays for the transaction, since the domain takes a new id for a new session: a
//! provisional id shown before the transactionId was learnt (from a bridge that relays only
//! the station's frames) is kept to the end.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::Value;

use super::common::{
    check_telemetry, num, opt_num, opt_str, parse_json, FrameClocks, SessionEnergy, StationClock,
    Target,
};
use super::template::Captures;
use super::{Adapter, DecodeError};
use crate::domain::input::{ChargerKey, ChargerStatus, Input, Telemetry, TsMs};
use crate::ingest::decode::clamp_future;

/// Connector ids above this are garbage, not hardware; the bound also caps state per station.
const MAX_CONNECTOR: u64 = 255;
/// StartTransaction CALLs remembered per station while waiting for their CALLRESULT.
const MAX_PENDING: usize = 16;
/// Stations tracked per source; beyond this new stations are refused, not tracked.
const MAX_STATIONS: usize = 10_000;

/// BootNotification fields, kept as station metadata (they produce no [`Input`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    pub vendor: String,
    pub model: String,
    pub serial: Option<String>,
    pub firmware: Option<String>,
}

#[derive(Debug)]
struct Tx {
    tx_id: Option<i64>,
    fallback_id: String,
    /// The session id the domain was given, kept for the rest of the transaction.
    shown_id: Option<String>,
    id_tag: Option<String>,
    energy: SessionEnergy,
    ended: bool,
    /// The connector went Available since: the session is over for the domain; the
    /// transaction is kept only for a late StopTransaction.
    unplugged: bool,
}

impl Tx {
    fn new(
        tx_id: Option<i64>,
        fallback_id: String,
        id_tag: Option<String>,
        e: SessionEnergy,
    ) -> Self {
        Self {
            tx_id,
            fallback_id,
            shown_id: None,
            id_tag,
            energy: e,
            ended: false,
            unplugged: false,
        }
    }

    /// The id to give the domain, fixed by the first one given.
    fn session_id(&mut self) -> String {
        let (tx_id, fallback) = (self.tx_id, &self.fallback_id);
        self.shown_id
            .get_or_insert_with(|| match tx_id {
                Some(id) => id.to_string(),
                None => fallback.clone(),
            })
            .clone()
    }
}

#[derive(Debug, Default)]
struct Conn {
    status: Option<ChargerStatus>,
    error_code: Option<String>,
    tx: Option<Tx>,
    last_meter_ts: Option<TsMs>,
}

impl Conn {
    fn telemetry(&mut self, ts: TsMs, status: ChargerStatus) -> Telemetry {
        let tx = self
            .tx
            .as_mut()
            .filter(|t| status != ChargerStatus::Available && !t.unplugged);
        let (session_id, id_tag) = match tx {
            Some(t) => (Some(t.session_id()), t.id_tag.clone()),
            None => (None, None),
        };
        Telemetry {
            ts,
            status: Some(status),
            session_id,
            id_tag,
            error_code: self.error_code.clone(),
            ..Default::default()
        }
    }

    /// Status for a reading that is not a status message: the latest reported one, else a
    /// guess from the transaction and the power (a reading must carry a status).
    fn current_status(&self, power_kw: Option<f64>) -> ChargerStatus {
        let drawing = power_kw.is_some_and(|p| p > 0.0);
        match self.status {
            Some(s) => s,
            None if drawing => ChargerStatus::Charging,
            None if self.tx.as_ref().is_some_and(|t| !t.ended) => ChargerStatus::Preparing,
            None => ChargerStatus::Available,
        }
    }
}

#[derive(Debug, Default)]
struct Station {
    clock: StationClock,
    /// Per charger (connector): frames of one instant get distinct times.
    clocks: FrameClocks,
    boot: Option<BootInfo>,
    connectors: BTreeMap<u32, Conn>,
    pending_starts: VecDeque<(String, u32)>,
}

impl Station {
    fn ts(&self, explicit: Option<&Value>, recv_ms: TsMs) -> Result<TsMs, DecodeError> {
        self.clock.ts(explicit, recv_ms)
    }

    fn saw(&mut self, ts: TsMs, recv_ms: TsMs) {
        self.clock.saw(ts, recv_ms);
    }
}

pub struct Ocpp16j {
    target: Target,
    stations: HashMap<String, Station>,
}

impl Ocpp16j {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            stations: HashMap::new(),
        }
    }

    /// The station's BootNotification, if one was seen on the topic with these captures.
    pub fn boot_info(&self, caps: &Captures) -> Option<&BootInfo> {
        self.stations.get(&caps.state_key())?.boot.as_ref()
    }
}

fn connector_id(p: &Value) -> Result<u32, DecodeError> {
    let c = p
        .get("connectorId")
        .and_then(Value::as_u64)
        .ok_or_else(|| DecodeError::InvalidField("connectorId".into()))?;
    if c > MAX_CONNECTOR {
        return Err(DecodeError::OutOfRange("connectorId".into()));
    }
    Ok(c as u32)
}

fn key_for(target: &Target, caps: &Captures, connector: u32) -> Result<ChargerKey, DecodeError> {
    target.charger_key(&caps.with("connector", connector.to_string()))
}

fn parse_status(s: &str) -> Option<ChargerStatus> {
    Some(match s {
        "Available" => ChargerStatus::Available,
        "Preparing" => ChargerStatus::Preparing,
        "Charging" => ChargerStatus::Charging,
        "SuspendedEV" => ChargerStatus::SuspendedEv,
        "SuspendedEVSE" => ChargerStatus::SuspendedEvse,
        "Finishing" => ChargerStatus::Finishing,
        "Reserved" => ChargerStatus::Reserved,
        "Unavailable" => ChargerStatus::Unavailable,
        "Faulted" => ChargerStatus::Faulted,
        _ => return None,
    })
}

/// Readings of one `meterValue` entry, in the units of [`Telemetry`].
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Reading {
    pub energy_wh: Option<f64>,
    pub power_kw: Option<f64>,
    pub soc_pct: Option<f64>,
    pub voltage_v: Option<f64>,
    pub current_a: Option<f64>,
    pub temperature_c: Option<f64>,
}

impl Reading {
    pub fn is_empty(&self) -> bool {
        *self == Reading::default()
    }

    /// Adds the values of another entry of the same instant (its own win where both have one).
    fn merge(&mut self, o: Reading) {
        self.energy_wh = o.energy_wh.or(self.energy_wh);
        self.power_kw = o.power_kw.or(self.power_kw);
        self.soc_pct = o.soc_pct.or(self.soc_pct);
        self.voltage_v = o.voltage_v.or(self.voltage_v);
        self.current_a = o.current_a.or(self.current_a);
        self.temperature_c = o.temperature_c.or(self.temperature_c);
    }
}

/// `meterValue` entries of one instant as one reading, in the order the instants first
/// appear: some stations put energy and power/SoC of the same time in separate entries, and
/// the domain takes a second reading at the same time for a repeat and drops it.
pub(crate) fn merge_instants(readings: Vec<(TsMs, Reading)>) -> Vec<(TsMs, Reading)> {
    let mut out: Vec<(TsMs, Reading)> = Vec::with_capacity(readings.len());
    let mut index: HashMap<TsMs, usize> = HashMap::with_capacity(readings.len());
    for (ts, r) in readings {
        match index.get(&ts).and_then(|&i| out.get_mut(i)) {
            Some((_, held)) => held.merge(r),
            None => {
                index.insert(ts, out.len());
                out.push((ts, r));
            }
        }
    }
    out
}

/// Values of one measurand: the phase-less total, and per-phase values.
#[derive(Default)]
struct PhaseAcc {
    total: Option<f64>,
    phases: Vec<f64>,
}

impl PhaseAcc {
    fn add(&mut self, phase: Option<&str>, x: f64) {
        match phase {
            None => self.total = Some(x),
            Some("L1" | "L2" | "L3" | "L1-N" | "L2-N" | "L3-N") => self.phases.push(x),
            // Neutral and line-to-line values do not add up to a total.
            Some(_) => {}
        }
    }

    fn sum(&self) -> Option<f64> {
        self.total
            .or_else(|| (!self.phases.is_empty()).then(|| self.phases.iter().sum()))
    }

    fn mean(&self) -> Option<f64> {
        self.total.or_else(|| {
            (!self.phases.is_empty())
                .then(|| self.phases.iter().sum::<f64>() / self.phases.len() as f64)
        })
    }

    fn max(&self) -> Option<f64> {
        self.total
            .or_else(|| self.phases.iter().copied().reduce(f64::max))
    }

    fn is_empty(&self) -> bool {
        self.total.is_none() && self.phases.is_empty()
    }
}

/// Values of one measurand by `location`. The meter's values are at the outlet (the OCPP
/// default when no location is given); some chargers add the inlet (grid side, with the
/// charger's own losses) or report only that. The two are never added up nor mixed: the
/// outlet's values, else the inlet's. EV, cable and body locations are not the meter's.
#[derive(Default)]
struct Located {
    outlet: PhaseAcc,
    inlet: PhaseAcc,
}

impl Located {
    fn add(&mut self, location: Option<&str>, phase: Option<&str>, x: f64) {
        match location {
            None | Some("Outlet") => self.outlet.add(phase, x),
            Some("Inlet") => self.inlet.add(phase, x),
            Some(_) => {}
        }
    }

    fn get(&self) -> &PhaseAcc {
        if self.outlet.is_empty() {
            &self.inlet
        } else {
            &self.outlet
        }
    }
}

/// How a sampled value's number is given: OCPP 1.6 strings with a `unit` name, or OCPP
/// 2.0.1 numbers with `unitOfMeasure{unit, multiplier}`.
pub(crate) enum Dialect {
    V16,
    V201,
}

/// Decodes a `sampledValue` array (shared with OCPP 2.0.1). Power and energy phases are
/// summed when no total is given, voltage phases averaged, current takes the highest phase.
pub(crate) fn read_samples(samples: &Value, dialect: Dialect) -> Result<Reading, DecodeError> {
    let arr = samples
        .as_array()
        .ok_or_else(|| DecodeError::InvalidField("sampledValue".into()))?;
    let mut energy = Located::default();
    let mut power = Located::default();
    let mut voltage = Located::default();
    let mut current = Located::default();
    // The car's own SoC (location EV, or none given); another location's only without it.
    let mut soc = None;
    let mut soc_elsewhere = None;
    let mut temp: Option<f64> = None;
    for s in arr {
        if !s.is_object() {
            return Err(DecodeError::InvalidField("sampledValue".into()));
        }
        let measurand = opt_str(s, "measurand")?.unwrap_or("Energy.Active.Import.Register");
        let phase = opt_str(s, "phase")?;
        let location = opt_str(s, "location")?;
        let signed = opt_str(s, "format")? == Some("SignedData");
        let (raw, unit) = match dialect {
            Dialect::V16 => {
                let raw = match s.get("value").and_then(num) {
                    Some(x) => x,
                    // Signed meter data is an opaque blob, not a number: skip, not an error.
                    None if signed => continue,
                    None => return Err(DecodeError::InvalidField("sampledValue.value".into())),
                };
                (raw, opt_str(s, "unit")?.map(str::to_string))
            }
            Dialect::V201 => {
                let raw = match s.get("value") {
                    Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
                    _ => return Err(DecodeError::InvalidField("sampledValue.value".into())),
                };
                let uom = s.get("unitOfMeasure");
                let (unit, mult) = match uom {
                    None | Some(Value::Null) => (None, 0),
                    Some(u) if u.is_object() => {
                        let m = match u.get("multiplier") {
                            None | Some(Value::Null) => 0,
                            Some(m) => m
                                .as_i64()
                                .ok_or_else(|| DecodeError::InvalidField("multiplier".into()))?,
                        };
                        (opt_str(u, "unit")?.map(str::to_string), m)
                    }
                    Some(_) => return Err(DecodeError::InvalidField("unitOfMeasure".into())),
                };
                let mult = mult.clamp(-30, 30) as i32;
                (raw * 10f64.powi(mult), unit)
            }
        };
        if !raw.is_finite() {
            return Err(DecodeError::OutOfRange(measurand.to_string()));
        }
        let unit = unit.as_deref();
        match measurand {
            "Energy.Active.Import.Register" => {
                let wh = match unit {
                    None | Some("Wh") => raw,
                    Some("kWh") => raw * 1000.0,
                    Some(_) => return Err(DecodeError::InvalidField("unit".into())),
                };
                energy.add(location, phase, wh);
            }
            "Power.Active.Import" => {
                let kw = match unit {
                    None | Some("W") => raw / 1000.0,
                    Some("kW") => raw,
                    Some(_) => return Err(DecodeError::InvalidField("unit".into())),
                };
                power.add(location, phase, kw);
            }
            "SoC" => match location {
                None | Some("EV") => soc = Some(raw),
                Some(_) => soc_elsewhere = Some(raw),
            },
            "Voltage" => voltage.add(location, phase, raw),
            "Current.Import" => current.add(location, phase, raw),
            "Temperature" => {
                let c = match unit {
                    None | Some("Celsius" | "Celcius" | "deg C") => raw,
                    Some("K") => raw - 273.15,
                    Some("Fahrenheit") => (raw - 32.0) * 5.0 / 9.0,
                    Some(_) => return Err(DecodeError::InvalidField("unit".into())),
                };
                // The hottest part (cable, body) is the one that limits charging.
                temp = Some(temp.map_or(c, |t| t.max(c)));
            }
            // Export, reactive, offered and interval measurands say nothing we track.
            _ => {}
        }
    }
    Ok(Reading {
        energy_wh: energy.get().sum(),
        power_kw: power.get().sum(),
        soc_pct: soc.or(soc_elsewhere),
        voltage_v: voltage.get().mean(),
        current_a: current.get().max(),
        temperature_c: temp,
    })
}

impl Adapter for Ocpp16j {
    fn name(&self) -> &'static str {
        "ocpp16j"
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
        let uid = arr
            .get(1)
            .and_then(Value::as_str)
            .ok_or_else(|| DecodeError::InvalidField("uniqueId".into()))?;
        let skey = caps.state_key();
        if !self.stations.contains_key(&skey) && self.stations.len() >= MAX_STATIONS {
            return Err(DecodeError::OutOfRange("stations".into()));
        }
        let target = &self.target;
        let station = self.stations.entry(skey).or_default();
        let mut out = match msg_type {
            2 => {
                let action = arr
                    .get(2)
                    .and_then(Value::as_str)
                    .ok_or_else(|| DecodeError::InvalidField("action".into()))?;
                let p = arr
                    .get(3)
                    .filter(|p| p.is_object())
                    .ok_or_else(|| DecodeError::InvalidField("payload".into()))?;
                call(target, station, caps, uid, action, p, recv_ms)
            }
            3 => {
                let p = arr
                    .get(2)
                    .ok_or_else(|| DecodeError::InvalidField("payload".into()))?;
                call_result(target, station, caps, uid, p, recv_ms)
            }
            4 => {
                // The CSMS refused a CALL: a StartTransaction it refused gets no id.
                station.pending_starts.retain(|(u, _)| u != uid);
                Ok(vec![])
            }
            _ => Err(DecodeError::InvalidField("messageTypeId".into())),
        }?;
        station.clocks.stamp(payload, &mut out, recv_ms);
        Ok(out)
    }
}

fn call(
    target: &Target,
    st: &mut Station,
    caps: &Captures,
    uid: &str,
    action: &str,
    p: &Value,
    recv_ms: TsMs,
) -> Result<Vec<Input>, DecodeError> {
    match action {
        "BootNotification" => {
            let vendor = opt_str(p, "chargePointVendor")?.unwrap_or_default();
            let model = opt_str(p, "chargePointModel")?.unwrap_or_default();
            st.boot = Some(BootInfo {
                vendor: vendor.to_string(),
                model: model.to_string(),
                serial: opt_str(p, "chargePointSerialNumber")?.map(String::from),
                firmware: opt_str(p, "firmwareVersion")?.map(String::from),
            });
            Ok(vec![])
        }
        "StatusNotification" => status_notification(target, st, caps, p, recv_ms),
        "StartTransaction" => start_transaction(target, st, caps, uid, p, recv_ms),
        "MeterValues" => meter_values(target, st, caps, p, recv_ms),
        "StopTransaction" => stop_transaction(target, st, caps, p, recv_ms),
        // Heartbeat, Authorize, DataTransfer, firmware/diagnostics notices, and CALLs from
        // the CSMS mirrored by some bridges: nothing for the domain.
        _ => Ok(vec![]),
    }
}

fn status_notification(
    target: &Target,
    st: &mut Station,
    caps: &Captures,
    p: &Value,
    recv_ms: TsMs,
) -> Result<Vec<Input>, DecodeError> {
    let connector = connector_id(p)?;
    let status = opt_str(p, "status")?
        .and_then(parse_status)
        .ok_or_else(|| DecodeError::InvalidField("status".into()))?;
    let error_code = match opt_str(p, "errorCode")? {
        None | Some("NoError") => None,
        Some("OtherError") => Some(match opt_str(p, "vendorErrorCode")? {
            Some(v) => format!("OtherError:{v}"),
            None => "OtherError".to_string(),
        }),
        Some(e) => Some(e.to_string()),
    };
    let ts = st.ts(p.get("timestamp"), recv_ms)?;
    let mut out = Vec::new();
    if connector == 0 {
        // Connector 0 is the station itself; only its outages say something per charger.
        if matches!(status, ChargerStatus::Unavailable | ChargerStatus::Faulted) {
            let ids: Vec<u32> = st.connectors.keys().copied().collect();
            for id in ids {
                let key = key_for(target, caps, id)?;
                if let Some(c) = st.connectors.get_mut(&id) {
                    c.status = Some(status);
                    c.error_code.clone_from(&error_code);
                    out.push(Input::Telemetry {
                        key,
                        t: check_telemetry(c.telemetry(ts, status))?,
                    });
                }
            }
        }
    } else {
        let key = key_for(target, caps, connector)?;
        let c = st.connectors.entry(connector).or_default();
        c.status = Some(status);
        c.error_code = error_code;
        let t = check_telemetry(c.telemetry(ts, status))?;
        if status == ChargerStatus::Available {
            // Unplugged: the transaction is over even if its Stop is late or lost. It is kept
            // (ended) so a late StopTransaction still finds its connector and energy.
            if let Some(tx) = c.tx.as_mut() {
                tx.ended = true;
                tx.unplugged = true;
            }
        }
        out.push(Input::Telemetry { key, t });
    }
    st.saw(ts, recv_ms);
    Ok(out)
}

fn start_transaction(
    target: &Target,
    st: &mut Station,
    caps: &Captures,
    uid: &str,
    p: &Value,
    recv_ms: TsMs,
) -> Result<Vec<Input>, DecodeError> {
    let connector = connector_id(p)?;
    if connector == 0 {
        return Err(DecodeError::InvalidField("connectorId".into()));
    }
    let key = key_for(target, caps, connector)?;
    let meter_start =
        opt_num(p, "meterStart")?.ok_or_else(|| DecodeError::InvalidField("meterStart".into()))?;
    if meter_start < 0.0 {
        return Err(DecodeError::OutOfRange("meterStart".into()));
    }
    let id_tag = opt_str(p, "idTag")?.map(String::from);
    let ts = st.ts(p.get("timestamp"), recv_ms)?;
    let c = st.connectors.entry(connector).or_default();
    c.tx = Some(Tx::new(
        None,
        format!("{}-{}", key.charger, ts),
        id_tag.clone(),
        SessionEnergy::starting_at(meter_start),
    ));
    let status = match c.status {
        Some(
            s @ (ChargerStatus::Preparing
            | ChargerStatus::Charging
            | ChargerStatus::SuspendedEv
            | ChargerStatus::SuspendedEvse),
        ) => s,
        _ => ChargerStatus::Preparing,
    };
    let t = Telemetry {
        ts,
        status: Some(status),
        id_tag,
        meter_kwh: Some(meter_start / 1000.0),
        session_kwh: Some(0.0),
        error_code: c.error_code.clone(),
        ..Default::default()
    };
    if st.pending_starts.len() >= MAX_PENDING {
        st.pending_starts.pop_front();
    }
    st.pending_starts.push_back((uid.to_string(), connector));
    st.saw(ts, recv_ms);
    Ok(vec![Input::Telemetry {
        key,
        t: check_telemetry(t)?,
    }])
}

fn call_result(
    target: &Target,
    st: &mut Station,
    caps: &Captures,
    uid: &str,
    p: &Value,
    recv_ms: TsMs,
) -> Result<Vec<Input>, DecodeError> {
    let Some(pos) = st.pending_starts.iter().position(|(u, _)| u == uid) else {
        // A response to a CALL we do not track (Heartbeat, BootNotification, ...).
        return Ok(vec![]);
    };
    let Some((_, connector)) = st.pending_starts.remove(pos) else {
        return Ok(vec![]);
    };
    let tx_id = p
        .get("transactionId")
        .and_then(Value::as_i64)
        .ok_or_else(|| DecodeError::InvalidField("transactionId".into()))?;
    let key = key_for(target, caps, connector)?;
    let ts = st.clock.latest(recv_ms);
    let Some(c) = st.connectors.get_mut(&connector) else {
        return Ok(vec![]);
    };
    let status = c.current_status(None);
    let Some(tx) = c.tx.as_mut().filter(|t| t.tx_id.is_none()) else {
        return Ok(vec![]);
    };
    tx.tx_id = Some(tx_id);
    let mut t = c.telemetry(ts, status);
    t.meter_kwh =
        c.tx.as_ref()
            .and_then(|t| t.energy.start_wh)
            .map(|wh| wh / 1000.0);
    Ok(vec![Input::Telemetry {
        key,
        t: check_telemetry(t)?,
    }])
}

fn meter_values(
    target: &Target,
    st: &mut Station,
    caps: &Captures,
    p: &Value,
    recv_ms: TsMs,
) -> Result<Vec<Input>, DecodeError> {
    let connector = connector_id(p)?;
    let tx_id = match p.get("transactionId") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| DecodeError::InvalidField("transactionId".into()))?,
        ),
    };
    let entries = p
        .get("meterValue")
        .and_then(Value::as_array)
        .ok_or_else(|| DecodeError::InvalidField("meterValue".into()))?;
    // Decode everything before touching state, so a bad frame changes nothing.
    let mut readings = Vec::with_capacity(entries.len());
    for mv in entries {
        if !mv.is_object() {
            return Err(DecodeError::InvalidField("meterValue".into()));
        }
        let ts = st.ts(mv.get("timestamp"), recv_ms)?;
        let r = read_samples(mv.get("sampledValue").unwrap_or(&Value::Null), Dialect::V16)?;
        readings.push((ts, r));
    }
    let readings = merge_instants(readings);
    if connector == 0 {
        // Station-wide meters (the grid connection) are not any one charger's.
        return Ok(vec![]);
    }
    let key = key_for(target, caps, connector)?;
    let c = st.connectors.entry(connector).or_default();
    if let Some(id) = tx_id {
        match c.tx.as_mut() {
            Some(tx) if tx.tx_id == Some(id) => {}
            Some(tx) if tx.tx_id.is_none() && !tx.ended => tx.tx_id = Some(id),
            // A transaction whose start we missed (daemon started mid-session).
            _ => {
                c.tx = Some(Tx::new(
                    Some(id),
                    String::new(),
                    None,
                    SessionEnergy::default(),
                ))
            }
        }
    }
    // Readings belong to the open transaction, or to an ended one only when they name it
    // (a late Transaction.End sample); idle readings after a stop have no session energy.
    let names_tx = tx_id.is_some();
    let mut out = Vec::new();
    let mut latest = None;
    for (ts, r) in readings {
        if r.is_empty() {
            continue;
        }
        // A station clock gone years ahead for one frame must not put every later reading
        // "out of order" (the processor replaces such a time by the receive time too).
        let order_ts = clamp_future(ts, recv_ms).0;
        let in_order = c.last_meter_ts.is_none_or(|l| order_ts >= l);
        let session_wh = match (c.tx.as_mut(), r.energy_wh) {
            (Some(tx), Some(wh)) if in_order && !tx.ended => tx.energy.advance(wh),
            (Some(tx), Some(wh)) if !tx.ended || names_tx => tx.energy.peek(wh),
            _ => None,
        };
        if in_order {
            c.last_meter_ts = Some(order_ts);
        }
        let mut t = c.telemetry(ts, c.current_status(r.power_kw));
        t.power_kw = r.power_kw;
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
        latest = Some(latest.map_or(ts, |l: TsMs| l.max(ts)));
    }
    if let Some(ts) = latest {
        st.saw(ts, recv_ms);
    }
    Ok(out)
}

fn stop_transaction(
    target: &Target,
    st: &mut Station,
    caps: &Captures,
    p: &Value,
    recv_ms: TsMs,
) -> Result<Vec<Input>, DecodeError> {
    let tx_id = p
        .get("transactionId")
        .and_then(Value::as_i64)
        .ok_or_else(|| DecodeError::InvalidField("transactionId".into()))?;
    let meter_stop =
        opt_num(p, "meterStop")?.ok_or_else(|| DecodeError::InvalidField("meterStop".into()))?;
    if meter_stop < 0.0 {
        return Err(DecodeError::OutOfRange("meterStop".into()));
    }
    let ts = st.ts(p.get("timestamp"), recv_ms)?;
    // StopTransaction names no connector: find it by transaction, else by the one open
    // transaction whose id we never learnt.
    let by_id = st
        .connectors
        .iter()
        .find(|(_, c)| c.tx.as_ref().is_some_and(|t| t.tx_id == Some(tx_id)))
        .map(|(id, _)| *id);
    let connector = by_id.or_else(|| {
        let open: Vec<u32> = st
            .connectors
            .iter()
            .filter(|(_, c)| c.tx.as_ref().is_some_and(|t| t.tx_id.is_none() && !t.ended))
            .map(|(id, _)| *id)
            .collect();
        (open.len() == 1).then(|| open[0])
    });
    let Some(connector) = connector else {
        // Nothing to attach it to; the connector's StatusNotifications still tell the story.
        st.saw(ts, recv_ms);
        return Ok(vec![]);
    };
    let key = key_for(target, caps, connector)?;
    let Some(c) = st.connectors.get_mut(&connector) else {
        return Ok(vec![]);
    };
    let unplugged = c.tx.as_ref().is_some_and(|t| t.unplugged);
    if unplugged && c.status != Some(ChargerStatus::Available) {
        // A late Stop of a car that left, while the next one is plugged in: reporting it
        // now would make the new session look finished.
        st.saw(ts, recv_ms);
        return Ok(vec![]);
    }
    let order_ts = clamp_future(ts, recv_ms).0;
    let in_order = c.last_meter_ts.is_none_or(|l| order_ts >= l);
    let session_wh = match c.tx.as_mut() {
        Some(tx) => {
            tx.tx_id = Some(tx_id);
            let wh = if in_order && !tx.ended {
                tx.energy.advance(meter_stop)
            } else {
                tx.energy.peek(meter_stop)
            };
            tx.ended = true;
            wh
        }
        None => None,
    };
    // Stop after unplug (reason EVDisconnected) must not reopen a session as `finishing`.
    let status = if c.status == Some(ChargerStatus::Available) {
        ChargerStatus::Available
    } else {
        ChargerStatus::Finishing
    };
    c.status = Some(status);
    if in_order {
        c.last_meter_ts = Some(order_ts);
    }
    let mut t = c.telemetry(ts, status);
    t.meter_kwh = Some(meter_stop / 1000.0);
    t.session_kwh = session_wh.map(|wh| wh / 1000.0);
    if status == ChargerStatus::Available {
        // Stop after unplug: the final energy, attributed to the session it closes.
        t.session_id = c.tx.as_mut().map(Tx::session_id);
    } else {
        t.power_kw = Some(0.0);
    }
    st.saw(ts, recv_ms);
    Ok(vec![Input::Telemetry {
        key,
        t: check_telemetry(t)?,
    }])
}
