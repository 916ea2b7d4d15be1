//! One charger's decision machine (CONTRACT §4–5): sessions, charging events, faults,
//! availability. Pure: `(state, input) -> (state, effects)`; time is the message clock.
//!
//! Time-based rules (offline, suspended_ev grace, sustained low power, not started, idle)
//! are deadlines derived from the state. Before an input at time `t` is applied, every
//! deadline up to `t` is fired *at its own time*, with the state that held until `t`
//! (state is piecewise constant between messages). So the same stream decides the same
//! way whatever the message or tick granularity, and a restart resumes exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::eta::{eta_s, EtaInput, KwhPerPct};
use super::event::{event_id, session_key, Event, EventKind, StopReason};
use super::input::{ChargerStatus, Telemetry, TsMs};
use super::session::{Outcome, SessionRecord};
use super::thresholds::ChargerMeta;

/// Energy above this (kWh) in a session counts as real charging even at low power.
const REAL_ENERGY_KWH: f64 = 0.1;
/// `charging_stopped` is `stopped_early` when SoC is more than this below the target.
const EARLY_STOP_MARGIN_PCT: f64 = 5.0;

#[derive(Clone, Debug, PartialEq)]
pub enum ChargerInput<'a> {
    Telemetry(&'a Telemetry),
    /// `ts` may be the receive time (availability messages rarely carry one).
    Availability {
        online: bool,
        ts: TsMs,
    },
    /// The caller's message-clock "now": the last message ts advanced by wall-clock time
    /// since that message. Fires deadlines only.
    Tick {
        now: TsMs,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Event(Event),
    /// Upsert of the session record (by `session_key`): emitted at open, charging start,
    /// terminal event, idle reminders, id/vehicle learned, and close (final values).
    Session(SessionRecord),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// `false`: the input was a duplicate or out of order and was ignored entirely.
    pub applied: bool,
    pub effects: Vec<Effect>,
}

impl Step {
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.effects.iter().filter_map(|e| match e {
            Effect::Event(ev) => Some(ev),
            Effect::Session(_) => None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveCharger {
    pub site: String,
    pub charger: String,
    pub bay: String,
    pub status: Option<ChargerStatus>,
    pub online: bool,
    pub power_kw: Option<f64>,
    pub soc_pct: Option<f64>,
    pub target_soc_pct: Option<f64>,
    pub eta_s: Option<f64>,
    pub vehicle: Option<String>,
    pub last_ts: Option<TsMs>,
    /// Boxed: absent on idle chargers, which then take 300 bytes less in the live view.
    pub session: Option<Box<SessionRecord>>,
    /// Current fault's error code, while `faulted`.
    pub error_code: Option<String>,
}

/// Occurrence counters per event kind: the `seq` of `event_id`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Seqs(BTreeMap<String, u32>);

impl Seqs {
    fn next(&mut self, kind: EventKind) -> u32 {
        let c = self.0.entry(kind.as_str().to_string()).or_insert(0);
        *c += 1;
        *c
    }
}

/// How long the session counter may be missing from readings that carry the meter before
/// the meter delta may pass it (see `Session::counter_stopped`).
const COUNTER_SILENCE_MS: TsMs = 5 * 60 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
enum Terminal {
    Completed,
    Stopped(StopReason),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Session {
    record: SessionRecord,
    /// The charger's own session id once seen (a different one later = a new session).
    charger_session_id: Option<String>,
    seqs: Seqs,
    real: bool,
    terminal: Option<Terminal>,
    /// When the terminal event fired (idle time counts from here).
    terminal_ts: Option<TsMs>,
    faulted: bool,
    meter_start: Option<f64>,
    meter_last: Option<f64>,
    session_kwh: Option<f64>,
    /// The session counter has stopped coming while the meter goes on (an adapter that
    /// cannot know the counter after a restart): the meter delta may then pass it. Said
    /// after [`COUNTER_SILENCE_MS`] without it, so that a charger sending the two in
    /// different messages keeps the counter.
    #[serde(default)]
    counter_stopped: bool,
    /// When the session counter last came.
    #[serde(default)]
    counter_ts: Option<TsMs>,
    integrated_kwh: f64,
    last_power: Option<(TsMs, f64)>,
    /// Status `suspended_ev` since, counted only after real charging.
    suspended_ev_since: Option<TsMs>,
    /// Power below the low-power threshold since, after real charging (not during
    /// `suspended_evse`: a load-management pause is not the car being done).
    low_since: Option<TsMs>,
    /// The last message showed the car drawing above the low-power threshold: a stop
    /// right now is "straight from real charging".
    drawing: bool,
    nearly_sent: bool,
    not_started_sent: bool,
    idle_next: Option<TsMs>,
    kwh_per_pct: KwhPerPct,
    last_ts: TsMs,
}

impl Session {
    /// `session_kwh`, else the meter delta, else integrated power. A counter that has only
    /// ever read zero is taken as not reported: an OCPP StartTransaction gives `session_kwh`
    /// 0, and a station configured for power and SoC only never reports energy again.
    ///
    /// A counter that has stopped coming while the meter goes on (an adapter that cannot
    /// know it after a restart) does not hold the energy at its last value: the meter delta
    /// counts once it is larger. While the counter comes, it wins (the meter may sit at the
    /// inlet, with the charger's losses, or be shared by two outlets).
    fn energy_kwh(&self) -> f64 {
        let meter = match (self.meter_start, self.meter_last) {
            (Some(a), Some(b)) if b > a => Some(b - a),
            _ => None,
        };
        match (self.session_kwh.filter(|k| *k > 0.0), meter) {
            (Some(k), Some(m)) if self.counter_stopped => k.max(m),
            (Some(k), _) => k,
            (None, Some(m)) => m,
            (None, None) => self.integrated_kwh,
        }
    }

    /// Brings the derived record fields up to date before the record is published.
    fn refresh_record(&mut self, now: TsMs) {
        let energy = self.energy_kwh();
        derive_record(&mut self.record, energy, self.terminal_ts, now);
    }

    /// The record with its derived fields as of `now`, leaving the session as it is (the
    /// live view: cloning the whole session, ETA history included, just to read it
    /// would cost more than the record).
    fn refreshed_record(&self, now: TsMs) -> SessionRecord {
        let mut r = self.record.clone();
        derive_record(&mut r, self.energy_kwh(), self.terminal_ts, now);
        r
    }
}

fn derive_record(r: &mut SessionRecord, energy: f64, terminal_ts: Option<TsMs>, now: TsMs) {
    r.energy_kwh = energy;
    if let Some(cs) = r.charging_started {
        let end = terminal_ts.or(r.ended).unwrap_or(now);
        let h = (end - cs) as f64 / 3_600_000.0;
        r.avg_kw = (h > 0.0).then(|| energy / h);
    }
    if let Some(t) = terminal_ts {
        let end = r.ended.unwrap_or(now);
        r.idle_s = Some(((end - t) as f64 / 1000.0).max(0.0));
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChargerMachine {
    last_telemetry_ts: Option<TsMs>,
    last_availability_ts: Option<TsMs>,
    /// Base of the silence timer (offline detection).
    heard_ts: Option<TsMs>,
    /// Deadlines have been fired up to here (max of all inputs' ts and ticks).
    clock: Option<TsMs>,
    /// Events are never emitted before this (keeps each charger's events in causal order
    /// when a late message follows a tick).
    last_event_ts: Option<TsMs>,
    online: bool,
    status: Option<ChargerStatus>,
    power_kw: Option<f64>,
    soc_pct: Option<f64>,
    target_soc_pct: Option<f64>,
    remaining_s: Option<f64>,
    vehicle: Option<String>,
    fault_active: bool,
    error_code: Option<String>,
    /// Counters for events outside a session (session_key "").
    seqs: Seqs,
    /// Boxed: most chargers are idle most of the time, and an inline session would make
    /// every idle charger's state half a kilobyte larger (same JSON either way).
    session: Option<Box<Session>>,
}

/// What one step accumulates.
struct Out {
    effects: Vec<Effect>,
    session_dirty: bool,
}

impl ChargerMachine {
    pub fn new(_meta: &ChargerMeta) -> Self {
        ChargerMachine {
            last_telemetry_ts: None,
            last_availability_ts: None,
            heard_ts: None,
            clock: None,
            last_event_ts: None,
            online: true,
            status: None,
            power_kw: None,
            soc_pct: None,
            target_soc_pct: None,
            remaining_s: None,
            vehicle: None,
            fault_active: false,
            error_code: None,
            seqs: Seqs::default(),
            session: None,
        }
    }

    pub fn step(&mut self, meta: &ChargerMeta, input: ChargerInput<'_>) -> Step {
        let mut out = Out {
            effects: Vec::new(),
            session_dirty: false,
        };
        match input {
            ChargerInput::Telemetry(t) => {
                if self.last_telemetry_ts.is_some_and(|l| t.ts <= l) {
                    return Step::default();
                }
                self.fire_due(meta, t.ts, &mut out);
                self.apply_telemetry(meta, t, &mut out);
                self.fire_due(meta, t.ts, &mut out);
            }
            ChargerInput::Availability { online, ts } => {
                if self.last_availability_ts.is_some_and(|l| ts <= l) {
                    return Step::default();
                }
                self.last_availability_ts = Some(ts);
                // Availability ts is often the receive time, not the charger's clock:
                // it toggles online state but does not drive the deadlines.
                if online && !self.online {
                    self.online = true;
                    self.heard_ts = self.heard_ts.max(Some(ts));
                    let ev = self.subject_event(meta, EventKind::ChargerOnline, ts);
                    out.effects.push(Effect::Event(ev));
                } else if !online && self.online {
                    self.online = false;
                    let ev = self.subject_event(meta, EventKind::ChargerOffline, ts);
                    out.effects.push(Effect::Event(ev));
                }
            }
            ChargerInput::Tick { now } => {
                if self.clock.is_some_and(|c| now <= c) {
                    return Step::default();
                }
                self.fire_due(meta, now, &mut out);
            }
        }
        if out.session_dirty {
            let now = self.clock;
            if let Some(s) = &mut self.session {
                s.refresh_record(now.unwrap_or(s.last_ts).max(s.last_ts));
                out.effects.push(Effect::Session(s.record.clone()));
            }
        }
        Step {
            applied: true,
            effects: out.effects,
        }
    }

    pub fn live(&self, meta: &ChargerMeta) -> LiveCharger {
        let session = self
            .session
            .as_ref()
            .map(|s| Box::new(s.refreshed_record(self.clock.unwrap_or(s.last_ts).max(s.last_ts))));
        LiveCharger {
            site: meta.site.clone(),
            charger: meta.charger.clone(),
            bay: meta.bay.clone(),
            status: self.status,
            online: self.online,
            power_kw: self.power_kw,
            soc_pct: self.soc_pct,
            target_soc_pct: self.target_soc_pct,
            eta_s: self.eta(meta),
            vehicle: self.vehicle.clone(),
            last_ts: self.last_ts(),
            session,
            error_code: if self.fault_active {
                self.error_code.clone()
            } else {
                None
            },
        }
    }

    /// Latest message ts applied (telemetry or availability). Ticks are not included:
    /// the caller derives the next tick's "now" from this plus wall-clock time elapsed.
    pub fn last_ts(&self) -> Option<TsMs> {
        self.last_telemetry_ts.max(self.last_availability_ts)
    }

    /// Status and online flag: what a glance at the charger shows, without building the
    /// live view.
    pub fn status_online(&self) -> (Option<ChargerStatus>, bool) {
        (self.status, self.online)
    }

    /// The open session's (session_id, session_key), without building the live view.
    pub fn open_session_ids(&self) -> Option<(&str, &str)> {
        self.session
            .as_ref()
            .map(|s| (s.record.session_id.as_str(), s.record.session_key.as_str()))
    }

    /// ETA while a session is charging towards its target.
    fn eta(&self, meta: &ChargerMeta) -> Option<f64> {
        let s = self.session.as_ref()?;
        if s.terminal.is_some() || !s.real {
            return None;
        }
        eta_s(&EtaInput {
            kind: meta.kind,
            soc_pct: self.soc_pct,
            target_soc_pct: self.target_soc_pct,
            power_kw: self.power_kw,
            remaining_s: self.remaining_s,
            kwh_per_pct: s.kwh_per_pct.get(),
        })
    }

    fn clamp_ts(&mut self, ts: TsMs) -> TsMs {
        let t = self.last_event_ts.map_or(ts, |l| l.max(ts));
        self.last_event_ts = Some(t);
        t
    }

    /// An event outside any session (offline/online, a fault while idle).
    fn subject_event(&mut self, meta: &ChargerMeta, kind: EventKind, ts: TsMs) -> Event {
        let ts = self.clamp_ts(ts);
        let seq = self.seqs.next(kind);
        let id = event_id(&meta.site, &meta.charger, "", kind, seq);
        let mut e = Event::new(kind, ts, &meta.site, id);
        e.charger = Some(meta.charger.clone());
        e.bay = Some(meta.bay.clone());
        e
    }

    /// An event of the open session. Callers check the session exists.
    fn session_event(&mut self, meta: &ChargerMeta, kind: EventKind, ts: TsMs) -> Option<Event> {
        let ts = self.clamp_ts(ts);
        let s = self.session.as_mut()?;
        let seq = s.seqs.next(kind);
        let id = event_id(&meta.site, &meta.charger, &s.record.session_key, kind, seq);
        let mut e = Event::new(kind, ts, &meta.site, id);
        e.charger = Some(meta.charger.clone());
        e.bay = Some(meta.bay.clone());
        e.session_id = Some(s.record.session_id.clone());
        e.vehicle = s.record.vehicle.clone();
        e.id_tag = s.record.id_tag.clone();
        e.energy_kwh = Some(s.energy_kwh());
        e.duration_s = Some(((ts - s.record.started) as f64 / 1000.0).max(0.0));
        e.soc_pct = s.record.soc_end;
        e.target_soc_pct = s.record.target_soc_pct;
        e.peak_kw = Some(s.record.peak_kw);
        Some(e)
    }

    fn push_session_event(
        &mut self,
        meta: &ChargerMeta,
        kind: EventKind,
        ts: TsMs,
        out: &mut Out,
        fill: impl FnOnce(&mut Event),
    ) {
        if let Some(mut e) = self.session_event(meta, kind, ts) {
            fill(&mut e);
            out.effects.push(Effect::Event(e));
        }
    }

    /// Sets the session's terminal event (at most one per session) and emits it.
    fn terminate(&mut self, meta: &ChargerMeta, term: Terminal, ts: TsMs, out: &mut Out) {
        let idle_after = meta.thresholds.idle_after_ms;
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.terminal.is_some() || !s.real {
            return;
        }
        s.terminal = Some(term);
        s.terminal_ts = Some(ts);
        s.suspended_ev_since = None;
        s.low_since = None;
        out.session_dirty = true;
        match term {
            Terminal::Completed => {
                s.record.completed = Some(ts);
                s.record.time_to_complete_s =
                    s.record.charging_started.map(|c| (ts - c) as f64 / 1000.0);
                s.idle_next = Some(ts + idle_after);
                self.push_session_event(meta, EventKind::ChargingComplete, ts, out, |_| {});
            }
            Terminal::Stopped(reason) => {
                // A car left plugged after its charge was stopped blocks the bay as
                // much as a full one; a faulted charger is for staff, not the guest.
                if reason == StopReason::StoppedEarly {
                    s.idle_next = Some(ts + idle_after);
                }
                self.push_session_event(meta, EventKind::ChargingStopped, ts, out, |e| {
                    e.reason = Some(reason)
                });
            }
        }
    }

    /// The session's charging stops (`finishing`, transaction end, unplug) without having
    /// completed: decides stopped_early vs the fallback.
    fn stop_decision(&self, straight_now: bool) -> Option<StopReason> {
        let s = self.session.as_ref()?;
        let soc_short = match (s.record.soc_end, s.record.target_soc_pct) {
            (Some(soc), Some(target)) => soc < target - EARLY_STOP_MARGIN_PCT,
            _ => false,
        };
        (soc_short || s.drawing || straight_now).then_some(StopReason::StoppedEarly)
    }

    /// Closes the open session at `ts` (unplug or a new transaction on the same plug).
    fn close_session(&mut self, meta: &ChargerMeta, ts: TsMs, out: &mut Out) {
        let Some(s) = self.session.as_ref() else {
            return;
        };
        if s.real && s.terminal.is_none() {
            let reason = self.stop_decision(false).unwrap_or(StopReason::Unplugged);
            self.terminate(meta, Terminal::Stopped(reason), ts, out);
        }
        let Some(mut s) = self.session.take() else {
            return;
        };
        s.record.ended = Some(ts.max(s.record.started));
        s.record.outcome = Some(match s.terminal {
            Some(Terminal::Completed) => Outcome::Completed,
            Some(Terminal::Stopped(StopReason::StoppedEarly)) => Outcome::StoppedEarly,
            Some(Terminal::Stopped(StopReason::Unplugged)) => Outcome::Unplugged,
            Some(Terminal::Stopped(StopReason::Faulted)) => Outcome::Faulted,
            None if s.faulted => Outcome::Faulted,
            None => Outcome::NoCharge,
        });
        s.refresh_record(ts);
        out.effects.push(Effect::Session(s.record));
        // The session already went out in full; a new one sets this again.
        out.session_dirty = false;
        self.soc_pct = None;
        self.target_soc_pct = None;
        self.remaining_s = None;
        self.vehicle = None;
    }

    fn open_session(&mut self, meta: &ChargerMeta, t: &Telemetry, out: &mut Out) {
        let session_id = t
            .session_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", meta.charger, t.ts));
        let key = session_key(&session_id, t.ts);
        let record = SessionRecord::opened(&meta.site, &meta.charger, session_id, key, t.ts);
        self.session = Some(Box::new(Session {
            record,
            charger_session_id: t.session_id.clone(),
            seqs: Seqs::default(),
            real: false,
            terminal: None,
            terminal_ts: None,
            faulted: false,
            meter_start: None,
            meter_last: None,
            session_kwh: None,
            counter_stopped: false,
            counter_ts: None,
            integrated_kwh: 0.0,
            last_power: None,
            suspended_ev_since: None,
            low_since: None,
            drawing: false,
            nearly_sent: false,
            not_started_sent: false,
            idle_next: None,
            kwh_per_pct: KwhPerPct::default(),
            last_ts: t.ts,
        }));
        out.session_dirty = true;
    }

    fn apply_telemetry(&mut self, meta: &ChargerMeta, t: &Telemetry, out: &mut Out) {
        let ts = t.ts;
        let th = &meta.thresholds;
        let thr = th.low_power_kw(meta.kind);
        self.last_telemetry_ts = Some(ts);
        self.heard_ts = self.heard_ts.max(Some(ts));
        self.clock = self.clock.max(Some(ts));
        if !self.online {
            self.online = true;
            let ev = self.subject_event(meta, EventKind::ChargerOnline, ts);
            out.effects.push(Effect::Event(ev));
        }

        let status = t.status.or(self.status);
        self.status = status;
        let plugged = matches!(
            status,
            Some(
                ChargerStatus::Preparing
                    | ChargerStatus::Charging
                    | ChargerStatus::SuspendedEv
                    | ChargerStatus::SuspendedEvse
            )
        );

        // Session boundaries. The unplug message's own values (often reset counters)
        // are not applied to the session it ends.
        if status == Some(ChargerStatus::Available) {
            self.close_session(meta, ts, out);
        }
        let new_transaction = match (&self.session, &t.session_id) {
            (Some(s), Some(id)) => s.charger_session_id.as_ref().is_some_and(|old| old != id),
            _ => false,
        };
        if new_transaction {
            self.close_session(meta, ts, out);
        }
        if plugged && self.session.is_none() {
            self.open_session(meta, t, out);
        }

        self.power_kw = match (t.power_kw, status) {
            (Some(p), _) => Some(p),
            (None, Some(ChargerStatus::Charging)) => self.power_kw,
            (None, _) => None,
        };
        self.remaining_s = t.remaining_s;
        if self.session.is_some() {
            self.soc_pct = t.soc_pct.or(self.soc_pct);
            self.target_soc_pct = t.target_soc_pct.or(self.target_soc_pct);
            self.vehicle = t.vehicle.clone().or(self.vehicle.take());
        }

        // Fault episodes.
        if status == Some(ChargerStatus::Faulted) {
            if !self.fault_active {
                self.fault_active = true;
                self.error_code = t.error_code.clone();
                let code = t.error_code.clone();
                if self.session.is_some() {
                    if let Some(s) = self.session.as_mut() {
                        s.faulted = true;
                    }
                    self.push_session_event(meta, EventKind::ChargerFault, ts, out, |e| {
                        e.error_code = code
                    });
                    self.terminate(meta, Terminal::Stopped(StopReason::Faulted), ts, out);
                } else {
                    let mut ev = self.subject_event(meta, EventKind::ChargerFault, ts);
                    ev.error_code = code;
                    out.effects.push(Effect::Event(ev));
                }
            }
        } else {
            self.fault_active = false;
        }

        let Some(s) = self.session.as_mut() else {
            return;
        };
        s.last_ts = ts;
        if s.charger_session_id.is_none() {
            if let Some(id) = &t.session_id {
                s.charger_session_id = Some(id.clone());
                s.record.session_id = id.clone();
                out.session_dirty = true;
            }
        }
        if t.vehicle.is_some() && t.vehicle != s.record.vehicle {
            s.record.vehicle = t.vehicle.clone();
            out.session_dirty = true;
        }
        if t.id_tag.is_some() && t.id_tag != s.record.id_tag {
            s.record.id_tag = t.id_tag.clone();
            out.session_dirty = true;
        }
        if let Some(target) = t.target_soc_pct {
            s.record.target_soc_pct = Some(target);
        }
        if let Some(soc) = t.soc_pct {
            s.record.soc_start.get_or_insert(soc);
            s.record.soc_end = Some(soc);
        }
        if let Some(m) = t.meter_kwh {
            s.meter_start.get_or_insert(m);
            s.meter_last = Some(m);
        }
        if let Some(k) = t.session_kwh {
            // A counter that drops mid-session (a charger resetting it) must not take back
            // energy that was delivered: session energy never decreases.
            s.session_kwh = Some(s.session_kwh.map_or(k, |prev| prev.max(k)));
            s.counter_stopped = false;
            s.counter_ts = Some(ts);
        } else if t.meter_kwh.is_some()
            && s.session_kwh.is_some()
            && s.counter_ts.is_none_or(|c| ts - c > COUNTER_SILENCE_MS)
        {
            s.counter_stopped = true;
        }
        if let Some(p) = t.power_kw {
            if let Some((lt, lp)) = s.last_power {
                let dt = ts - lt;
                // Across a silence longer than the offline threshold the power in between
                // is unknown; counting it would invent energy.
                if dt > 0 && dt <= th.offline_after_ms {
                    s.integrated_kwh += (lp + p) / 2.0 * dt as f64 / 3_600_000.0;
                }
            }
            s.last_power = Some((ts, p));
            s.record.peak_kw = s.record.peak_kw.max(p);
        }
        let energy = s.energy_kwh();
        s.record.energy_kwh = energy;
        if let Some(soc) = t.soc_pct {
            if s.session_kwh.is_some() || s.meter_last.is_some() || s.integrated_kwh > 0.0 {
                s.kwh_per_pct.observe(soc, energy);
            }
        }

        let power_now = t.power_kw;
        let drawing_now = power_now.is_some_and(|p| p > thr);
        if !s.real && (drawing_now || energy > REAL_ENERGY_KWH) {
            s.real = true;
            s.record.charging_started = Some(ts);
            out.session_dirty = true;
            self.push_session_event(meta, EventKind::ChargingStarted, ts, out, |_| {});
        }

        let Some(s) = self.session.as_mut() else {
            return;
        };
        // Completion timers run only after real charging: the suspended_ev / zero power
        // seen while a DC charge is still being negotiated is not the car being full.
        if s.real && s.terminal.is_none() {
            // Cross-checked with power: `suspended_ev` while the car still draws more than
            // the low-power threshold is a status that lags, not the car being done.
            if status == Some(ChargerStatus::SuspendedEv) && !drawing_now {
                s.suspended_ev_since.get_or_insert(ts);
            } else {
                s.suspended_ev_since = None;
            }
            if status == Some(ChargerStatus::SuspendedEvse) {
                s.low_since = None;
            } else if let Some(p) = power_now {
                if p < thr {
                    s.low_since.get_or_insert(ts);
                } else {
                    s.low_since = None;
                }
            }
        }

        let at_target = match (s.record.soc_end, s.record.target_soc_pct) {
            (Some(soc), Some(target)) => soc >= target,
            _ => false,
        };
        if s.real && s.terminal.is_none() {
            if at_target {
                self.terminate(meta, Terminal::Completed, ts, out);
            } else if status == Some(ChargerStatus::Finishing) {
                let term = match self.stop_decision(drawing_now) {
                    Some(r) => Terminal::Stopped(r),
                    None => Terminal::Completed,
                };
                self.terminate(meta, term, ts, out);
            }
        }

        let eta = self.eta(meta);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        // A stop right after `suspended_ev` is not "straight from real charging", whatever
        // power that message still showed (CONTRACT §4: no suspended_ev before it).
        s.drawing = drawing_now && status != Some(ChargerStatus::SuspendedEv);
        if s.real && s.terminal.is_none() && !s.nearly_sent {
            if let Some(eta) = eta.filter(|e| *e * 1000.0 < th.nearly_complete_eta_ms as f64) {
                s.nearly_sent = true;
                self.push_session_event(meta, EventKind::NearlyComplete, ts, out, |e| {
                    e.eta_s = Some(eta)
                });
            }
        }
    }

    /// The earliest deadline due at or before `now`, given the current state.
    fn next_due(&self, meta: &ChargerMeta, now: TsMs) -> Option<(TsMs, Due)> {
        let th = &meta.thresholds;
        let mut cands: Vec<(TsMs, Due)> = Vec::new();
        if self.online {
            if let Some(h) = self.heard_ts {
                cands.push((h + th.offline_after_ms, Due::Offline));
            }
        }
        if let Some(s) = &self.session {
            if !s.real && !s.not_started_sent && !s.faulted {
                cands.push((s.record.started + th.no_power_after_ms, Due::NotStarted));
            }
            if s.real && s.terminal.is_none() {
                if let Some(since) = s.suspended_ev_since {
                    cands.push((since + th.suspended_ev_grace_ms, Due::Complete));
                }
                if let Some(since) = s.low_since {
                    cands.push((since + th.low_power_for_ms, Due::Complete));
                }
            }
            if let Some(n) = s.idle_next {
                cands.push((n, Due::Idle));
            }
        }
        cands
            .into_iter()
            .filter(|(d, _)| *d <= now)
            .min_by_key(|(d, _)| *d)
    }

    /// Fires every deadline up to `now`, each at its own time, in time order.
    fn fire_due(&mut self, meta: &ChargerMeta, now: TsMs, out: &mut Out) {
        while let Some((at, due)) = self.next_due(meta, now) {
            match due {
                Due::Offline => {
                    self.online = false;
                    let ev = self.subject_event(meta, EventKind::ChargerOffline, at);
                    out.effects.push(Effect::Event(ev));
                }
                Due::NotStarted => {
                    if let Some(s) = self.session.as_mut() {
                        s.not_started_sent = true;
                    }
                    self.push_session_event(meta, EventKind::ChargingNotStarted, at, out, |_| {});
                }
                Due::Complete => self.terminate(meta, Terminal::Completed, at, out),
                Due::Idle => {
                    let repeat = meta.thresholds.idle_repeat_ms.filter(|r| *r > 0);
                    let Some(s) = self.session.as_mut() else {
                        break;
                    };
                    // After a long silence only the latest reminder goes out: a burst of
                    // "please move your car" helps nobody.
                    let (fire_at, next) = match repeat {
                        Some(r) => {
                            let k = (now - at) / r;
                            let d = at + k * r;
                            (d, Some(d + r))
                        }
                        None => (at, None),
                    };
                    s.idle_next = next;
                    let base = s.terminal_ts.unwrap_or(fire_at);
                    let idle_s = (fire_at - base) as f64 / 1000.0;
                    s.record.idle_s = Some(idle_s);
                    out.session_dirty = true;
                    self.push_session_event(meta, EventKind::IdleBlocking, fire_at, out, |e| {
                        e.idle_s = Some(idle_s)
                    });
                }
            }
        }
        self.clock = self.clock.max(Some(now));
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Due {
    Offline,
    NotStarted,
    Complete,
    Idle,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::eta::dc_curve;
    use crate::domain::thresholds::{ChargerKind, Thresholds};
    use ChargerStatus::*;
    use EventKind::*;

    const T0: TsMs = 1_795_547_378_000;
    const S: TsMs = 1000;
    const MIN: TsMs = 60 * S;

    pub(super) fn meta(kind: ChargerKind) -> ChargerMeta {
        ChargerMeta {
            site: "milano".into(),
            charger: "hpc-3".into(),
            bay: "Bay 3".into(),
            max_kw: Some(320.0),
            kind,
            thresholds: Thresholds::default(),
        }
    }

    fn tm(ts: TsMs, status: ChargerStatus) -> Telemetry {
        Telemetry {
            ts,
            status: Some(status),
            ..Telemetry::default()
        }
    }

    /// A synthetic message clock driving one machine and recording everything it emits.
    struct Sim {
        meta: ChargerMeta,
        m: ChargerMachine,
        now: TsMs,
        events: Vec<Event>,
        records: Vec<SessionRecord>,
        /// Telemetry fields carried into every message until changed.
        soc: Option<f64>,
        target: Option<f64>,
        kwh: f64,
        sid: Option<String>,
    }

    impl Sim {
        fn new(kind: ChargerKind) -> Self {
            let meta = meta(kind);
            Sim {
                m: ChargerMachine::new(&meta),
                meta,
                now: T0,
                events: Vec::new(),
                records: Vec::new(),
                soc: None,
                target: None,
                kwh: 0.0,
                sid: None,
            }
        }

        fn record(&mut self, st: Step) -> Step {
            for e in &st.effects {
                match e {
                    Effect::Event(ev) => self.events.push(ev.clone()),
                    Effect::Session(r) => self.records.push(r.clone()),
                }
            }
            st
        }

        /// Advances the clock by `dt` ms and sends a message with the carried fields.
        fn send(&mut self, dt: TsMs, status: ChargerStatus, power: f64) -> Step {
            self.now += dt;
            let t = Telemetry {
                power_kw: Some(power),
                soc_pct: self.soc,
                target_soc_pct: self.target,
                session_kwh: Some(self.kwh),
                session_id: self.sid.clone(),
                vehicle: Some("Taycan 4S".into()),
                ..tm(self.now, status)
            };
            self.raw(&t)
        }

        fn raw(&mut self, t: &Telemetry) -> Step {
            let st = self.m.step(&self.meta, ChargerInput::Telemetry(t));
            self.record(st)
        }

        fn tick(&mut self, dt: TsMs) -> Step {
            let now = self.m.last_ts().unwrap_or(T0).max(self.now) + dt;
            self.now = now;
            let st = self.m.step(&self.meta, ChargerInput::Tick { now });
            self.record(st)
        }

        /// DC charge following the modelled curve from the current SoC to `to`,
        /// a message every 10 s, 0.9 kWh per %.
        fn charge_dc(&mut self, peak: f64, to: f64) {
            let mut soc = self.soc.unwrap_or(10.0);
            while soc < to {
                let p = peak * dc_curve(soc);
                let dkwh = p * 10.0 / 3600.0;
                self.kwh += dkwh;
                soc = (soc + dkwh / 0.9).min(to);
                self.soc = Some(soc);
                self.send(10 * S, Charging, p);
            }
        }

        fn kinds(&self) -> Vec<EventKind> {
            self.events.iter().map(|e| e.kind).collect()
        }

        fn count(&self, k: EventKind) -> usize {
            self.events.iter().filter(|e| e.kind == k).count()
        }

        fn one(&self, k: EventKind) -> &Event {
            let v: Vec<_> = self.events.iter().filter(|e| e.kind == k).collect();
            assert_eq!(v.len(), 1, "{k:?} in {:?}", self.kinds());
            v[0]
        }

        fn last_record(&self) -> &SessionRecord {
            self.records.last().expect("a session record")
        }
    }

    /// DC session start as seen in the field: suspended_evse, a brief suspended_ev,
    /// then full power.
    fn dc_start(sim: &mut Sim) {
        sim.soc = Some(10.0);
        sim.target = Some(80.0);
        sim.send(0, Preparing, 0.0);
        sim.send(3 * S, SuspendedEvse, 0.0);
        sim.send(4 * S, SuspendedEv, 0.0);
        sim.send(5 * S, Charging, 40.0);
        sim.send(2 * S, SuspendedEv, 0.0);
        sim.send(5 * S, Charging, 250.0);
    }

    #[test]
    fn dc_start_blip_then_taper_to_target_completes_once() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        assert_eq!(sim.kinds(), vec![ChargingStarted], "blip must not complete");
        sim.charge_dc(250.0, 80.0);
        let c = sim.one(ChargingComplete);
        assert_eq!(c.soc_pct, Some(80.0));
        assert_eq!(
            c.session_id.as_deref(),
            Some(format!("hpc-3-{T0}").as_str())
        );
        assert_eq!(c.bay.as_deref(), Some("Bay 3"));
        assert!(c.energy_kwh.unwrap() > 60.0);
        assert!(c.peak_kw.unwrap() >= 250.0);
        let dur = c.duration_s.unwrap();
        assert!((15.0 * 60.0..25.0 * 60.0).contains(&dur), "{dur}");
        // The car then reports suspended_ev, the charger finishing: nothing more.
        sim.send(10 * S, SuspendedEv, 0.0);
        sim.send(2 * MIN, SuspendedEv, 0.0);
        sim.send(10 * S, Finishing, 0.0);
        sim.send(2 * MIN, Available, 0.0);
        assert_eq!(sim.count(ChargingComplete), 1);
        assert_eq!(sim.count(ChargingStopped), 0);
        assert_eq!(sim.count(NearlyComplete), 1);
        let r = sim.last_record();
        assert_eq!(r.outcome, Some(Outcome::Completed));
        assert_eq!(r.ended, Some(sim.now));
        assert_eq!(r.soc_start, Some(10.0));
        assert_eq!(r.soc_end, Some(80.0));
        assert!((r.energy_kwh - sim.kwh).abs() < 1e-9);
        assert!(r.avg_kw.unwrap() > 100.0);
        assert!(r.time_to_complete_s.unwrap() > 0.0);
    }

    #[test]
    fn nearly_complete_fires_once_with_eta_under_five_minutes() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        sim.charge_dc(250.0, 80.0);
        let complete_ts = sim.one(ChargingComplete).ts;
        let n = sim.one(NearlyComplete);
        let eta = n.eta_s.unwrap();
        assert!(eta < 300.0 && eta > 200.0, "{eta}");
        // The estimate was honest: completion came about when it said.
        let actual = (complete_ts - n.ts) as f64 / 1000.0;
        assert!((actual - eta).abs() < 60.0, "eta {eta} actual {actual}");
    }

    #[test]
    fn vehicle_reported_remaining_time_wins() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        sim.soc = Some(30.0);
        let mut t = tm(sim.now + 10 * S, Charging);
        t.power_kw = Some(200.0);
        t.soc_pct = Some(30.0);
        t.remaining_s = Some(240.0);
        sim.raw(&t);
        assert_eq!(sim.one(NearlyComplete).eta_s, Some(240.0));
    }

    #[test]
    fn taper_then_suspended_ev_then_finishing_is_one_complete() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        sim.target = None; // the car does not share its target
        sim.charge_dc(250.0, 78.0);
        sim.send(10 * S, Charging, 30.0);
        sim.send(10 * S, SuspendedEv, 0.0);
        sim.send(30 * S, SuspendedEv, 0.0);
        assert_eq!(sim.count(ChargingComplete), 0, "within the grace");
        sim.send(40 * S, SuspendedEv, 0.0);
        let c = sim.one(ChargingComplete).clone();
        // Fired when the grace ran out, not at the next message.
        assert_eq!(c.ts, sim.now - 70 * S + 60 * S);
        sim.send(10 * S, Finishing, 0.0);
        sim.send(MIN, Available, 0.0);
        assert_eq!(sim.count(ChargingComplete), 1);
        assert_eq!(sim.count(ChargingStopped), 0);
        assert_eq!(sim.last_record().outcome, Some(Outcome::Completed));
        assert_eq!(sim.last_record().completed, Some(c.ts));
    }

    #[test]
    fn finishing_after_taper_completes_immediately() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        sim.target = None;
        sim.charge_dc(250.0, 79.0);
        sim.send(10 * S, Charging, 1.0);
        sim.send(10 * S, Finishing, 0.0);
        assert_eq!(sim.one(ChargingComplete).ts, sim.now);
    }

    #[test]
    fn smart_charging_pause_never_completes() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        sim.charge_dc(250.0, 40.0);
        for _ in 0..60 {
            sim.send(20 * S, SuspendedEvse, 0.0);
        }
        sim.tick(10 * MIN);
        assert_eq!(sim.count(ChargingComplete), 0);
        sim.send(MIN, Charging, 150.0);
        sim.charge_dc(250.0, 80.0);
        assert_eq!(sim.count(ChargingComplete), 1);
        assert_eq!(sim.count(ChargingStopped), 0);
    }

    #[test]
    fn unplug_at_half_of_target_is_stopped_early() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        sim.charge_dc(250.0, 50.0);
        sim.send(10 * S, Charging, 240.0);
        sim.send(5 * S, Available, 0.0);
        assert_eq!(sim.count(ChargingComplete), 0);
        let s = sim.one(ChargingStopped);
        assert_eq!(s.reason, Some(StopReason::StoppedEarly));
        assert_eq!(s.soc_pct, Some(50.0));
        assert_eq!(sim.last_record().outcome, Some(Outcome::StoppedEarly));
    }

    #[test]
    fn finishing_straight_from_full_power_is_stopped_early_without_soc() {
        let mut sim = Sim::new(ChargerKind::Dc);
        sim.send(0, Preparing, 0.0);
        for _ in 0..30 {
            sim.kwh += 0.5;
            sim.send(10 * S, Charging, 180.0);
        }
        sim.send(10 * S, Finishing, 0.0);
        assert_eq!(
            sim.one(ChargingStopped).reason,
            Some(StopReason::StoppedEarly)
        );
        sim.send(MIN, Available, 0.0);
        assert_eq!(sim.count(ChargingStopped), 1);
        assert_eq!(sim.count(ChargingComplete), 0);
        assert_eq!(sim.last_record().outcome, Some(Outcome::StoppedEarly));
    }

    #[test]
    fn finishing_five_points_short_of_target_is_stopped_early() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        sim.charge_dc(250.0, 70.0);
        sim.send(10 * S, SuspendedEv, 0.0);
        sim.send(5 * S, Finishing, 0.0);
        assert_eq!(
            sim.one(ChargingStopped).reason,
            Some(StopReason::StoppedEarly)
        );
    }

    #[test]
    fn unplug_during_short_pause_is_unplugged() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        sim.charge_dc(250.0, 78.0);
        sim.send(10 * S, SuspendedEv, 0.0);
        sim.send(20 * S, Available, 0.0);
        assert_eq!(sim.one(ChargingStopped).reason, Some(StopReason::Unplugged));
        assert_eq!(sim.last_record().outcome, Some(Outcome::Unplugged));
    }

    #[test]
    fn ac_session_ends_on_sustained_low_power() {
        let mut sim = Sim::new(ChargerKind::Ac);
        sim.send(0, Preparing, 0.0);
        for _ in 0..120 {
            sim.kwh += 11.0 * 30.0 / 3600.0;
            sim.send(30 * S, Charging, 11.0);
        }
        sim.send(30 * S, Charging, 0.3);
        let low_from = sim.now;
        sim.send(MIN, Charging, 0.3);
        sim.send(MIN, Charging, 0.2);
        assert_eq!(sim.count(ChargingComplete), 0);
        sim.send(MIN + 30 * S, Charging, 0.2);
        let c = sim.one(ChargingComplete);
        assert_eq!(c.ts, low_from + 3 * MIN);
        assert!((c.energy_kwh.unwrap() - 11.0).abs() < 0.01);
        assert_eq!(c.peak_kw, Some(11.0));
    }

    #[test]
    fn low_power_completes_on_tick_when_messages_stop() {
        let mut sim = Sim::new(ChargerKind::Ac);
        sim.send(0, Preparing, 0.0);
        sim.kwh = 5.0;
        sim.send(MIN, Charging, 11.0);
        sim.send(MIN, Charging, 0.1);
        let low_from = sim.now;
        sim.tick(MIN);
        assert_eq!(sim.count(ChargingComplete), 0);
        sim.tick(3 * MIN);
        assert_eq!(sim.one(ChargingComplete).ts, low_from + 3 * MIN);
    }

    #[test]
    fn charger_without_soc_completes_on_suspended_ev_after_grace() {
        let mut sim = Sim::new(ChargerKind::Dc);
        sim.send(0, Preparing, 0.0);
        for _ in 0..20 {
            sim.kwh += 0.4;
            sim.send(10 * S, Charging, 150.0);
        }
        sim.send(10 * S, SuspendedEv, 0.0);
        let since = sim.now;
        sim.tick(61 * S);
        assert_eq!(sim.one(ChargingComplete).ts, since + 60 * S);
        assert_eq!(sim.one(ChargingComplete).soc_pct, None);
    }

    #[test]
    fn suspended_ev_while_drawing_power_is_not_complete() {
        let mut sim = Sim::new(ChargerKind::Dc);
        sim.send(0, Preparing, 0.0);
        // The status says suspended_ev from the start, the power says charging.
        for _ in 0..30 {
            sim.kwh += 0.2;
            sim.send(10 * S, SuspendedEv, 80.0);
        }
        sim.tick(MIN);
        assert_eq!(sim.count(ChargingComplete), 0, "80 kW is still flowing");
        // Once the power stops too, the grace runs from there.
        sim.send(10 * S, SuspendedEv, 0.0);
        let since = sim.now;
        sim.tick(61 * S);
        assert_eq!(sim.one(ChargingComplete).ts, since + 60 * S);
    }

    #[test]
    fn finishing_right_after_suspended_ev_still_showing_power_is_complete() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        // Within 5 points of the target: not short of it.
        sim.charge_dc(250.0, 78.0);
        // The meter sample of the suspended_ev message still reads 5 kW; finishing follows.
        sim.send(10 * S, SuspendedEv, 5.0);
        sim.send(5 * S, Finishing, 0.0);
        assert_eq!(sim.count(ChargingStopped), 0);
        assert_eq!(sim.count(ChargingComplete), 1);
    }

    /// An hour of AC charging at 10 kW (one reading a minute, `counters` sets each one's
    /// energy counters), then finishing: the energy its `charging_stopped` reports.
    fn energy_of_an_ac_hour(counters: impl Fn(i64, &mut Telemetry)) -> f64 {
        let m = meta(ChargerKind::Ac);
        let mut mach = ChargerMachine::new(&m);
        let mut evs = Vec::new();
        for i in 0..=60 {
            let mut t = tm(T0 + i * MIN, if i == 0 { Preparing } else { Charging });
            t.power_kw = Some(if i == 0 { 0.0 } else { 10.0 });
            counters(i, &mut t);
            evs.extend(mach.step(&m, ChargerInput::Telemetry(&t)).effects);
        }
        let mut t = tm(T0 + 61 * MIN, Finishing);
        t.power_kw = Some(0.0);
        evs.extend(mach.step(&m, ChargerInput::Telemetry(&t)).effects);
        evs.iter()
            .find_map(|e| match e {
                Effect::Event(ev) if ev.kind == ChargingStopped => ev.energy_kwh,
                _ => None,
            })
            .expect("charging_stopped with its energy")
    }

    #[test]
    fn a_session_counter_stuck_at_zero_falls_back_to_integrated_power() {
        // StartTransaction's 0 and a register that never moves (power and SoC only).
        let energy = energy_of_an_ac_hour(|i, t| {
            t.session_kwh = (i == 0).then_some(0.0);
            t.meter_kwh = (i == 0).then_some(1000.0);
        });
        assert!((energy - 10.0).abs() < 1e-9, "{energy}");
    }

    /// openWB after a restart: the adapter no longer knows the session counter (None from
    /// then on); the restored session had 5 kWh by it, and its meter goes on to 10 kWh.
    #[test]
    fn a_session_counter_no_longer_reported_does_not_hold_the_energy_back() {
        let energy = energy_of_an_ac_hour(|i, t| {
            t.meter_kwh = Some(1000.0 + 10.0 * i as f64 / 60.0);
            t.session_kwh = (i <= 30).then_some(10.0 * i as f64 / 60.0);
        });
        assert!((energy - 10.0).abs() < 1e-9, "{energy}");
    }

    /// A meter at the inlet (the charger's losses) or shared by two outlets reads more than
    /// the session counter: while the counter comes, it is the session's energy, also when
    /// the two come in different messages.
    #[test]
    fn a_session_counter_that_keeps_coming_wins_over_a_larger_meter_delta() {
        for split in [false, true] {
            let energy = energy_of_an_ac_hour(|i, t| {
                if !split || i % 2 == 0 {
                    t.meter_kwh = Some(1000.0 + 10.8 * i as f64 / 60.0);
                }
                if !split || i % 2 == 1 || i == 0 {
                    t.session_kwh = Some(10.0 * i as f64 / 60.0);
                }
            });
            assert!((energy - 10.0).abs() < 0.2, "split {split}: {energy}");
        }
    }

    #[test]
    fn energy_falls_back_to_meter_then_integrated_power() {
        let m = meta(ChargerKind::Ac);
        let mut ma = ChargerMachine::new(&m);
        let mut mb = ChargerMachine::new(&m);
        let mut ev_a = Vec::new();
        let mut ev_b = Vec::new();
        for i in 0..=60 {
            let mut t = tm(T0 + i * MIN, if i == 0 { Preparing } else { Charging });
            t.power_kw = Some(if i == 0 { 0.0 } else { 10.0 });
            let mut ta = t.clone();
            ta.meter_kwh = Some(1000.0 + 10.0 * i as f64 / 60.0);
            ev_a.extend(ma.step(&m, ChargerInput::Telemetry(&ta)).effects);
            ev_b.extend(mb.step(&m, ChargerInput::Telemetry(&t)).effects);
        }
        let mut t = tm(T0 + 61 * MIN, Finishing);
        t.power_kw = Some(0.0);
        ev_a.extend(ma.step(&m, ChargerInput::Telemetry(&t)).effects);
        ev_b.extend(mb.step(&m, ChargerInput::Telemetry(&t)).effects);
        let energy = |evs: &[Effect]| {
            evs.iter()
                .find_map(|e| match e {
                    Effect::Event(ev) if ev.kind == ChargingStopped => ev.energy_kwh,
                    _ => None,
                })
                .unwrap()
        };
        assert!((energy(&ev_a) - 10.0).abs() < 1e-9, "meter delta");
        // Trapezoid: 0→10 kW ramp in the first minute, 59 min at 10 kW, 10→0 in the last.
        assert!(
            (energy(&ev_b) - 10.0).abs() < 1e-9,
            "integrated {}",
            energy(&ev_b)
        );
    }

    #[test]
    fn fault_mid_session_stops_with_faulted() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        sim.charge_dc(250.0, 40.0);
        let mut t = tm(sim.now + 10 * S, Faulted);
        t.error_code = Some("GroundFailure".into());
        sim.raw(&t);
        t.ts += 10 * S;
        sim.raw(&t);
        let f = sim.one(ChargerFault);
        assert_eq!(f.error_code.as_deref(), Some("GroundFailure"));
        assert!(f.session_id.is_some());
        assert_eq!(sim.one(ChargingStopped).reason, Some(StopReason::Faulted));
        assert_eq!(
            sim.m.live(&sim.meta).error_code.as_deref(),
            Some("GroundFailure")
        );
        sim.send(MIN, Available, 0.0);
        assert_eq!(sim.count(ChargingStopped), 1);
        assert_eq!(sim.last_record().outcome, Some(Outcome::Faulted));
    }

    #[test]
    fn faults_while_idle_get_a_new_id_per_episode() {
        let mut sim = Sim::new(ChargerKind::Dc);
        sim.send(0, Available, 0.0);
        sim.send(MIN, Faulted, 0.0);
        sim.send(MIN, Faulted, 0.0);
        sim.send(MIN, Available, 0.0);
        sim.send(MIN, Faulted, 0.0);
        let faults: Vec<_> = sim
            .events
            .iter()
            .filter(|e| e.kind == ChargerFault)
            .collect();
        assert_eq!(faults.len(), 2);
        assert_ne!(faults[0].event_id, faults[1].event_id);
        assert_eq!(faults[0].session_id, None);
        assert_eq!(
            faults[1].event_id,
            event_id("milano", "hpc-3", "", ChargerFault, 2)
        );
    }

    #[test]
    fn silence_goes_offline_once_and_a_message_brings_it_back() {
        let mut sim = Sim::new(ChargerKind::Dc);
        sim.send(0, Available, 0.0);
        let last = sim.now;
        sim.tick(60 * S);
        assert!(sim.events.is_empty());
        sim.tick(70 * S);
        sim.tick(10 * MIN);
        let off = sim.one(ChargerOffline);
        assert_eq!(off.ts, last + 120 * S);
        assert!(!sim.m.live(&sim.meta).online);
        sim.send(MIN, Available, 0.0);
        assert_eq!(sim.count(ChargerOnline), 1);
        assert_eq!(sim.kinds(), vec![ChargerOffline, ChargerOnline]);
        assert!(sim.m.live(&sim.meta).online);
    }

    #[test]
    fn availability_toggles_online_without_repeats() {
        let mut sim = Sim::new(ChargerKind::Dc);
        sim.send(0, Available, 0.0);
        let m = sim.meta.clone();
        let mut av = |online: bool, ts: TsMs| {
            let st = sim.m.step(&m, ChargerInput::Availability { online, ts });
            (st.applied, st.effects.len())
        };
        assert_eq!(av(false, T0 + S), (true, 1));
        assert_eq!(av(false, T0 + 2 * S), (true, 0), "already offline");
        assert_eq!(av(true, T0 + S), (false, 0), "older availability ignored");
        assert_eq!(av(true, T0 + 3 * S), (true, 1));
        assert_eq!(av(true, T0 + 4 * S), (true, 0));
    }

    #[test]
    fn idle_blocking_after_completion_and_every_repeat() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        sim.charge_dc(250.0, 80.0);
        let done = sim.one(ChargingComplete).ts;
        for _ in 0..20 {
            sim.send(30 * S, SuspendedEv, 0.0);
        }
        assert_eq!(sim.count(IdleBlocking), 1);
        let first = sim.one(IdleBlocking).clone();
        assert_eq!(first.ts, done + 10 * MIN);
        assert_eq!(first.idle_s, Some(600.0));
        // Messages stop; ticks keep the reminders coming.
        sim.tick(14 * MIN);
        assert_eq!(sim.count(IdleBlocking), 1);
        sim.tick(2 * MIN);
        let idles: Vec<_> = sim
            .events
            .iter()
            .filter(|e| e.kind == IdleBlocking)
            .cloned()
            .collect();
        assert_eq!(idles.len(), 2);
        assert_eq!(idles[1].ts, done + 25 * MIN);
        assert_eq!(idles[1].idle_s, Some(1500.0));
        assert_ne!(idles[0].event_id, idles[1].event_id);
        // The record's idle time runs to the present, not just to the last reminder.
        assert_eq!(
            sim.last_record().idle_s,
            Some((sim.now - done) as f64 / 1000.0)
        );
        sim.send(MIN, Available, 0.0);
        sim.tick(30 * MIN);
        assert_eq!(sim.count(IdleBlocking), 2, "no reminders after unplug");
        let r = sim.last_record();
        assert_eq!(r.idle_s, Some((r.ended.unwrap() - done) as f64 / 1000.0));
    }

    #[test]
    fn idle_reminders_after_a_long_gap_do_not_burst_and_never_repeat_is_honoured() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        sim.charge_dc(250.0, 80.0);
        let done = sim.one(ChargingComplete).ts;
        sim.tick(65 * MIN);
        assert_eq!(sim.count(IdleBlocking), 1, "one reminder, not four");
        assert_eq!(sim.one(IdleBlocking).ts, done + 55 * MIN);

        let mut sim = Sim::new(ChargerKind::Dc);
        sim.meta.thresholds.idle_repeat_ms = None;
        dc_start(&mut sim);
        sim.charge_dc(250.0, 80.0);
        sim.tick(11 * MIN);
        sim.tick(60 * MIN);
        assert_eq!(sim.count(IdleBlocking), 1);
    }

    #[test]
    fn charging_not_started_once_when_no_power_flows() {
        let mut sim = Sim::new(ChargerKind::Dc);
        sim.send(0, Preparing, 0.0);
        let plugged = sim.now;
        sim.send(2 * MIN, SuspendedEvse, 0.0);
        sim.tick(2 * MIN);
        assert_eq!(sim.count(ChargingNotStarted), 0);
        sim.tick(2 * MIN);
        let e = sim.one(ChargingNotStarted);
        assert_eq!(e.ts, plugged + 5 * MIN);
        assert_eq!(e.duration_s, Some(300.0));
        sim.send(10 * S, SuspendedEvse, 0.0);
        sim.send(10 * MIN, Available, 0.0);
        assert_eq!(sim.count(ChargingNotStarted), 1);
        assert_eq!(sim.count(ChargingStopped) + sim.count(ChargingComplete), 0);
        assert_eq!(sim.last_record().outcome, Some(Outcome::NoCharge));
    }

    #[test]
    fn charging_in_time_means_no_not_started() {
        let mut sim = Sim::new(ChargerKind::Dc);
        sim.send(0, Preparing, 0.0);
        sim.send(4 * MIN, Charging, 100.0);
        sim.tick(10 * MIN);
        assert_eq!(sim.count(ChargingNotStarted), 0);
    }

    #[test]
    fn same_message_twice_is_one_event() {
        let mut sim = Sim::new(ChargerKind::Dc);
        sim.send(0, Preparing, 0.0);
        let mut t = tm(sim.now + 10 * S, Charging);
        t.power_kw = Some(200.0);
        let first = sim.raw(&t);
        let again = sim.raw(&t);
        assert!(first.applied);
        assert_eq!(again, Step::default());
        let mut older = t.clone();
        older.ts -= 5 * S;
        assert!(!sim.raw(&older).applied);
        assert_eq!(sim.count(ChargingStarted), 1);
    }

    #[test]
    fn charger_session_id_is_adopted_and_a_new_one_opens_a_new_session() {
        let mut sim = Sim::new(ChargerKind::Dc);
        sim.send(0, Preparing, 0.0);
        sim.sid = Some("T-1842".into());
        sim.kwh = 1.0;
        sim.send(5 * S, Charging, 100.0);
        let started = sim.one(ChargingStarted).clone();
        assert_eq!(started.session_id.as_deref(), Some("T-1842"));
        let key = session_key(&format!("hpc-3-{T0}"), T0);
        assert_eq!(
            started.event_id,
            event_id("milano", "hpc-3", &key, ChargingStarted, 1),
            "the key stays as fixed at open"
        );
        for _ in 0..10 {
            sim.kwh += 0.3;
            sim.send(10 * S, Charging, 100.0);
        }
        // Backend restarts the transaction on the same plug.
        sim.sid = Some("T-1843".into());
        sim.kwh = 0.0;
        sim.send(10 * S, SuspendedEvse, 0.0);
        let stopped = sim.one(ChargingStopped);
        assert_eq!(stopped.session_id.as_deref(), Some("T-1842"));
        let closed: Vec<_> = sim.records.iter().filter(|r| r.ended.is_some()).collect();
        assert_eq!(closed.len(), 1);
        let open = sim.last_record();
        assert_eq!(open.session_id, "T-1843");
        assert_eq!(open.session_key, session_key("T-1843", sim.now));
        assert!(open.is_open());
    }

    #[test]
    fn restart_mid_session_resumes_with_identical_event_ids() {
        let m = meta(ChargerKind::Dc);
        // Build the message list once.
        let mut msgs = Vec::new();
        let mut ts = T0;
        let mut push = |dt: TsMs, st: ChargerStatus, p: f64, soc: f64, kwh: f64| {
            ts += dt;
            msgs.push(Telemetry {
                power_kw: Some(p),
                soc_pct: Some(soc),
                target_soc_pct: Some(80.0),
                session_kwh: Some(kwh),
                session_id: Some("T-7".into()),
                ..tm(ts, st)
            });
        };
        push(0, Preparing, 0.0, 10.0, 0.0);
        let (mut soc, mut kwh) = (10.0, 0.0);
        while soc < 80.0 {
            let p = 250.0 * dc_curve(soc);
            kwh += p * 10.0 / 3600.0;
            soc = (soc + p * 10.0 / 3600.0 / 0.9).min(80.0);
            push(10 * S, Charging, p, soc, kwh);
        }
        for _ in 0..60 {
            push(30 * S, SuspendedEv, 0.0, 80.0, kwh);
        }
        push(30 * S, Available, 0.0, 80.0, 0.0);

        let run = |cut: Option<usize>| {
            let mut mach = ChargerMachine::new(&m);
            let mut evs = Vec::new();
            for (i, t) in msgs.iter().enumerate() {
                if cut == Some(i) {
                    let json = serde_json::to_string(&mach).unwrap();
                    mach = serde_json::from_str(&json).unwrap();
                    // Redelivery after restart: the last acked-but-uncommitted message.
                    if i > 0 {
                        let st = mach.step(&m, ChargerInput::Telemetry(&msgs[i - 1]));
                        assert!(!st.applied);
                    }
                }
                evs.extend(mach.step(&m, ChargerInput::Telemetry(t)).events().cloned());
            }
            evs
        };
        let whole = run(None);
        assert_eq!(
            whole.iter().filter(|e| e.kind == ChargingComplete).count(),
            1
        );
        assert_eq!(whole.iter().filter(|e| e.kind == IdleBlocking).count(), 2);
        for cut in [1, 5, msgs.len() / 2, msgs.len() - 30, msgs.len() - 1] {
            assert_eq!(run(Some(cut)), whole, "restart before message {cut}");
        }
    }

    #[test]
    fn live_view_reports_eta_and_session() {
        let mut sim = Sim::new(ChargerKind::Dc);
        dc_start(&mut sim);
        sim.charge_dc(250.0, 50.0);
        let live = sim.m.live(&sim.meta);
        assert_eq!(live.status, Some(Charging));
        assert_eq!(live.soc_pct, Some(50.0));
        let eta = live.eta_s.unwrap();
        assert!((5.0 * 60.0..15.0 * 60.0).contains(&eta), "{eta}");
        let s = live.session.unwrap();
        assert!((s.energy_kwh - sim.kwh).abs() < 1e-9);
        assert_eq!(live.last_ts, Some(sim.now));
        sim.send(10 * S, Available, 0.0);
        let live = sim.m.live(&sim.meta);
        assert!(live.session.is_none());
        assert_eq!(live.eta_s, None);
        assert_eq!(live.soc_pct, None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::collections::{HashMap, HashSet};

        #[derive(Clone, Debug)]
        enum Op {
            Tel {
                gap: TsMs,
                status: ChargerStatus,
                power: f64,
                soc: Option<f64>,
                target: Option<f64>,
                kwh_inc: f64,
                with_sid: bool,
                new_sid: bool,
            },
            /// Tick `gap` after the latest input; later telemetry may be older (late).
            Tick {
                gap: TsMs,
            },
            Avail {
                gap: TsMs,
                online: bool,
            },
        }

        #[derive(Clone, Debug)]
        enum In {
            Tel(Box<Telemetry>),
            Tick(TsMs),
            Avail(bool, TsMs),
        }

        fn gap() -> impl Strategy<Value = TsMs> {
            prop_oneof![3 => 1..30_000i64, 1 => 30_000..900_000i64]
        }

        fn op() -> impl Strategy<Value = Op> {
            let status = prop::sample::select(vec![
                Available,
                Preparing,
                Charging,
                Charging,
                Charging,
                SuspendedEv,
                SuspendedEv,
                SuspendedEvse,
                Finishing,
                Faulted,
                Reserved,
                Unavailable,
            ]);
            let tel = (
                gap(),
                status,
                prop_oneof![1 => Just(0.0), 1 => 0.0..3.0f64, 2 => 0.0..350.0f64],
                proptest::option::of(0.0..100.0f64),
                proptest::option::of(prop::sample::select(vec![80.0, 90.0, 100.0])),
                0.0..0.5f64,
                any::<bool>(),
                prop::bool::weighted(0.03),
            )
                .prop_map(
                    |(gap, status, power, soc, target, kwh_inc, with_sid, new_sid)| Op::Tel {
                        gap,
                        status,
                        power,
                        soc,
                        target,
                        kwh_inc,
                        with_sid,
                        new_sid,
                    },
                );
            prop_oneof![
                8 => tel,
                2 => gap().prop_map(|gap| Op::Tick { gap }),
                1 => (gap(), any::<bool>()).prop_map(|(gap, online)| Op::Avail { gap, online }),
            ]
        }

        /// Concrete inputs with absolute timestamps, so they can be replayed verbatim.
        fn concretize(ops: &[Op], with_kwh: bool) -> Vec<In> {
            let mut t = T0;
            let mut kwh = 0.0;
            let mut sid = 0u32;
            let mut out = Vec::new();
            for op in ops {
                match op {
                    Op::Tel {
                        gap,
                        status,
                        power,
                        soc,
                        target,
                        kwh_inc,
                        with_sid,
                        new_sid,
                    } => {
                        t += gap;
                        if *new_sid {
                            sid += 1;
                            kwh = 0.0;
                        }
                        if !matches!(status, Available | Faulted | Reserved | Unavailable) {
                            kwh += kwh_inc;
                        }
                        out.push(In::Tel(Box::new(Telemetry {
                            power_kw: Some(*power),
                            soc_pct: *soc,
                            target_soc_pct: *target,
                            session_kwh: with_kwh.then_some(kwh),
                            session_id: with_sid.then(|| format!("T{sid}")),
                            ..tm(t, *status)
                        })));
                        if *status == Available {
                            sid += 1;
                            kwh = 0.0;
                        }
                    }
                    Op::Tick { gap } => out.push(In::Tick(t + gap)),
                    Op::Avail { gap, online } => {
                        t += gap;
                        out.push(In::Avail(*online, t));
                    }
                }
            }
            out
        }

        fn feed(m: &ChargerMeta, mach: &mut ChargerMachine, i: &In) -> Step {
            match i {
                In::Tel(t) => mach.step(m, ChargerInput::Telemetry(t)),
                In::Tick(now) => mach.step(m, ChargerInput::Tick { now: *now }),
                In::Avail(online, ts) => mach.step(
                    m,
                    ChargerInput::Availability {
                        online: *online,
                        ts: *ts,
                    },
                ),
            }
        }

        fn run(m: &ChargerMeta, inputs: &[In]) -> Vec<Effect> {
            let mut mach = ChargerMachine::new(m);
            inputs
                .iter()
                .flat_map(|i| feed(m, &mut mach, i).effects)
                .collect()
        }

        fn events(effects: &[Effect]) -> Vec<Event> {
            effects
                .iter()
                .filter_map(|e| match e {
                    Effect::Event(ev) => Some(ev.clone()),
                    Effect::Session(_) => None,
                })
                .collect()
        }

        type Decision = (String, String, TsMs, Option<StopReason>, Option<Outcome>);

        fn decisions(effects: &[Effect]) -> Vec<Decision> {
            effects
                .iter()
                .map(|e| match e {
                    Effect::Event(ev) => (
                        ev.event_id.clone(),
                        ev.kind.as_str().to_string(),
                        ev.ts,
                        ev.reason,
                        None,
                    ),
                    Effect::Session(r) => (
                        r.session_key.clone(),
                        r.session_id.clone(),
                        r.ended.unwrap_or(0),
                        None,
                        r.outcome,
                    ),
                })
                .collect()
        }

        fn is_terminal(k: EventKind) -> bool {
            matches!(k, ChargingComplete | ChargingStopped)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn session_invariants_hold(
                ops in proptest::collection::vec(op(), 1..300),
                with_kwh in any::<bool>(),
                ac in any::<bool>(),
            ) {
                let m = meta(if ac { ChargerKind::Ac } else { ChargerKind::Dc });
                let thr = m.thresholds.low_power_kw(m.kind);
                let inputs = concretize(&ops, with_kwh);
                let effects = run(&m, &inputs);
                let evs = events(&effects);

                // Session ids change when the charger's own id is adopted mid-session:
                // group by the session_key the records carry.
                let mut key_of: HashMap<String, String> = HashMap::new();
                for e in &effects {
                    if let Effect::Session(r) = e {
                        key_of.insert(r.session_id.clone(), r.session_key.clone());
                    }
                }
                let mut ids = HashSet::new();
                let mut terminals: HashMap<String, u32> = HashMap::new();
                let mut completes: HashMap<String, u32> = HashMap::new();
                for w in evs.windows(2) {
                    prop_assert!(w[0].ts <= w[1].ts, "causal order: {:?} then {:?}", w[0], w[1]);
                }
                for e in &evs {
                    prop_assert!(ids.insert(e.event_id.clone()), "duplicate id {:?}", e);
                    if is_terminal(e.kind) {
                        let sid = e.session_id.clone().unwrap_or_default();
                        let key = key_of.get(&sid).cloned();
                        prop_assert!(key.is_some(), "terminal outside a session: {:?}", e);
                        let key = key.unwrap_or_default();
                        *terminals.entry(key.clone()).or_default() += 1;
                        if e.kind == ChargingComplete {
                            *completes.entry(key).or_default() += 1;
                        }
                        let real = e.peak_kw.unwrap_or(0.0) > thr
                            || e.energy_kwh.unwrap_or(0.0) > REAL_ENERGY_KWH;
                        prop_assert!(real, "terminal without real energy: {:?}", e);
                    }
                }
                prop_assert!(terminals.values().all(|n| *n <= 1), "{:?}", terminals);
                prop_assert!(completes.values().all(|n| *n <= 1));

                // Sessions close once, and their outcome matches the terminal events.
                let mut closed = HashSet::new();
                for e in &effects {
                    if let Effect::Session(r) = e {
                        if r.ended.is_some() {
                            prop_assert!(closed.insert(r.session_key.clone()));
                            let n_terminal = terminals.get(&r.session_key).copied().unwrap_or(0);
                            if r.charging_started.is_none() {
                                prop_assert_eq!(n_terminal, 0);
                                prop_assert!(
                                    matches!(r.outcome, Some(Outcome::NoCharge | Outcome::Faulted)),
                                    "{:?}", r
                                );
                            } else {
                                prop_assert_eq!(n_terminal, 1, "{:?}", r);
                            }
                            if r.outcome == Some(Outcome::Completed) {
                                prop_assert!(r.completed.is_some());
                                prop_assert_eq!(completes.get(&r.session_key), Some(&1));
                            }
                        }
                    }
                }
            }

            #[test]
            fn redelivery_and_restart_change_nothing(
                ops in proptest::collection::vec(op(), 1..150),
                cut_frac in 0.0..1.0f64,
                with_kwh in any::<bool>(),
            ) {
                let m = meta(ChargerKind::Dc);
                let inputs = concretize(&ops, with_kwh);
                let once = run(&m, &inputs);
                let k = ((inputs.len() as f64) * cut_frac) as usize;

                // A prefix replayed (broker redelivery after a reconnect).
                let mut replayed = inputs[..k].to_vec();
                replayed.extend_from_slice(&inputs[..k]);
                replayed.extend_from_slice(&inputs[k..]);
                prop_assert_eq!(events(&run(&m, &replayed)), events(&once));

                // Every message delivered twice.
                let doubled: Vec<In> =
                    inputs.iter().flat_map(|i| [i.clone(), i.clone()]).collect();
                prop_assert_eq!(&run(&m, &doubled), &once);

                // A restart from persisted state at the cut.
                // serde_json's default float parsing may differ in the last bit, so
                // compare what the decisions are, not every float.
                let mut mach = ChargerMachine::new(&m);
                let mut effects = Vec::new();
                for (n, i) in inputs.iter().enumerate() {
                    if n == k {
                        let json = serde_json::to_string(&mach).unwrap();
                        mach = serde_json::from_str(&json).unwrap();
                    }
                    effects.extend(feed(&m, &mut mach, i).effects);
                }
                prop_assert_eq!(decisions(&effects), decisions(&once));
            }
        }
    }
}
