//! The deterministic site model: chargers with cars that charge like real cars, and a lounge.
//!
//! Pure: no clock, no I/O. Time only moves when the caller says so (`advance_to`), and every
//! random draw comes from per-entity RNGs seeded from `SimConfig::seed`, processed in a fixed
//! (time, entity) order, so a seed gives the same message stream however the caller slices time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::lounge::{push_json, round1, Change, Zone};
use super::vehicles::{self, VehicleModel};
use crate::domain::input::ChargerStatus;
use crate::util::time::rfc3339_ms;

/// Share of DC energy at the meter that ends up in the pack (cable, conversion, cooling).
pub const DC_EFFICIENCY: f64 = 0.96;
/// AC charging loses more in the on-board charger.
pub const AC_EFFICIENCY: f64 = 0.90;
/// Longest physics step while energy flows, so SoC thresholds are met within a second even
/// when telemetry is sparse (high `speed`).
const PHYSICS_STEP_MS: i64 = 1_000;
/// DC power ramps up over the first seconds of charging.
const RAMP_MS: f64 = 8_000.0;
/// After the target is reached, power decays with this time constant before `suspended_ev`.
const TAPER_TAU_MS: f64 = 2_500.0;
const TAPER_MS: i64 = 12_000;
const AC_VOLTAGE: f64 = 230.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargerKind {
    Dc,
    Ac,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SimCharger {
    pub id: String,
    pub bay: String,
    pub max_kw: f64,
    pub kind: ChargerKind,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub site: String,
    pub prefix: String,
    pub chargers: Vec<SimCharger>,
    /// (zone id, capacity).
    pub zones: Vec<(String, u32)>,
    pub seed: u64,
    /// Simulated clock at the start, ms since the epoch (UTC; drives the time-of-day shape).
    pub start_ms: i64,
    /// Periodic telemetry per charger, in simulated ms (status changes are sent as they happen).
    pub telemetry_period_ms: f64,
    /// Lounge sensors report every this many simulated ms.
    pub lounge_period_ms: i64,
    /// Mean car arrivals per charger per hour over a day; shaped by time of day (UTC hour).
    pub arrivals_per_hour: f64,
    /// Walk-in guests per zone per hour.
    pub walkins_per_hour: f64,
    /// Share of drivers who wait in the lounge while charging.
    pub lounge_visit_prob: f64,
    /// Per session: the charger faults mid-charge.
    pub fault_prob: f64,
    /// Per session: the driver stops early (e.g. at 50 %) straight from charging.
    pub early_unplug_prob: f64,
    /// Per session: the car stays plugged 10–40 min after reaching its target.
    pub idle_leave_prob: f64,
    /// Per session: a smart-charging pause (`suspended_evse`, no power) mid-session.
    pub smart_pause_prob: f64,
    /// Per session: plugged in but charging never starts (stuck handshake).
    pub no_start_prob: f64,
    /// Per charger per day: goes offline for a few minutes.
    pub offline_per_day: f64,
    /// Half of the chargers get a car within the first minute, so a fresh demo has activity.
    pub warm_start: bool,
}

impl SimConfig {
    /// A site with realistic default rates.
    pub fn new(
        site: impl Into<String>,
        prefix: impl Into<String>,
        chargers: Vec<SimCharger>,
        zones: Vec<(String, u32)>,
        seed: u64,
        start_ms: i64,
    ) -> Self {
        SimConfig {
            site: site.into(),
            prefix: prefix.into(),
            chargers,
            zones,
            seed,
            start_ms,
            telemetry_period_ms: 1_000.0,
            lounge_period_ms: 10_000,
            arrivals_per_hour: 1.0,
            walkins_per_hour: 3.0,
            lounge_visit_prob: 0.8,
            fault_prob: 0.02,
            early_unplug_prob: 0.1,
            idle_leave_prob: 0.2,
            smart_pause_prob: 0.1,
            no_start_prob: 0.02,
            offline_per_day: 0.5,
            warm_start: true,
        }
    }

    /// `n` chargers named `hpc-1`.. in a repeating mix (320, 320, 150, 400 kW DC and a 22 kW
    /// AC post) and one lounge zone sized to the site.
    pub fn standard_site(
        site: impl Into<String>,
        prefix: impl Into<String>,
        n: usize,
        seed: u64,
        start_ms: i64,
    ) -> Self {
        let chargers = (0..n)
            .map(|i| {
                let (max_kw, kind) = match i % 5 {
                    0 | 1 => (320.0, ChargerKind::Dc),
                    2 => (150.0, ChargerKind::Dc),
                    3 => (400.0, ChargerKind::Dc),
                    _ => (22.0, ChargerKind::Ac),
                };
                let id = match kind {
                    ChargerKind::Dc => format!("hpc-{}", i + 1),
                    ChargerKind::Ac => format!("ac-{}", i + 1),
                };
                SimCharger {
                    id,
                    bay: format!("Bay {}", i + 1),
                    max_kw,
                    kind,
                }
            })
            .collect();
        let capacity = u32::try_from(n.clamp(8, 200)).unwrap_or(200);
        Self::new(
            site,
            prefix,
            chargers,
            vec![("lounge".to_string(), capacity)],
            seed,
            start_ms,
        )
    }
}

/// A car that arrives at a given charger at a given time, with no random incidents (no pause,
/// fault, early stop or stuck start unless asked): for tests that need one known session.
#[derive(Clone, Debug)]
pub struct ScriptedArrival {
    pub at_ms: i64,
    pub vehicle: &'static VehicleModel,
    pub soc_start: f64,
    pub target: f64,
    /// The driver stops the session at this SoC, straight from charging.
    pub early_stop_soc: Option<f64>,
    /// Time parked in `suspended_ev` after the target before unplugging (default: 2 min).
    pub dwell_ms: Option<i64>,
}

/// One MQTT message the site would send.
#[derive(Clone, Debug, PartialEq)]
pub struct SimMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub ts_ms: i64,
}

/// What really happened in a session, for comparing the daemon's decisions with.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionTruth {
    pub charger: String,
    pub session_id: String,
    pub plugged_ms: i64,
    /// When the car reached its target SoC (then tapered to `suspended_ev`).
    pub reached_target_ms: Option<i64>,
    /// When the connector became `available` again; `None` while still plugged.
    pub unplugged_ms: Option<i64>,
    /// The driver stopped the session before the target, straight from charging.
    pub early_unplug: bool,
    pub faulted: bool,
    /// Never drew power (stuck handshake).
    pub no_start: bool,
    pub energy_kwh: f64,
    pub soc_start: f64,
    pub soc_end: f64,
    pub target: f64,
}

pub struct SiteSim {
    cfg: SimConfig,
    chargers: Vec<Charger>,
    zones: Vec<Zone>,
    /// (time, entity kind: 0 charger / 1 zone, index): the one total order of processing.
    queue: BinaryHeap<Reverse<(i64, u8, usize)>>,
    truth: Vec<SessionTruth>,
    now: i64,
}

impl SiteSim {
    pub fn new(mut cfg: SimConfig) -> Self {
        if !(cfg.telemetry_period_ms.is_finite() && cfg.telemetry_period_ms > 0.0) {
            cfg.telemetry_period_ms = 1_000.0;
        }
        cfg.lounge_period_ms = cfg.lounge_period_ms.max(1);
        let base = format!("{}/{}", cfg.prefix, cfg.site);
        let chargers: Vec<Charger> = cfg
            .chargers
            .iter()
            .enumerate()
            .map(|(i, c)| Charger::new(i, c, &base, &cfg))
            .collect();
        let zones: Vec<Zone> = cfg
            .zones
            .iter()
            .enumerate()
            .map(|(i, (id, cap))| {
                Zone::new(
                    i as u64,
                    *cap,
                    &format!("{base}/lounge/{id}"),
                    entity_rng(cfg.seed, 1, i),
                    cfg.start_ms,
                    cfg.lounge_period_ms,
                    cfg.walkins_per_hour,
                )
            })
            .collect();
        let mut queue = BinaryHeap::with_capacity(chargers.len() + zones.len());
        for i in 0..chargers.len() {
            queue.push(Reverse((cfg.start_ms, 0u8, i)));
        }
        for i in 0..zones.len() {
            queue.push(Reverse((cfg.start_ms, 1u8, i)));
        }
        SiteSim {
            now: cfg.start_ms,
            cfg,
            chargers,
            zones,
            queue,
            truth: Vec::new(),
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The simulated time reached so far.
    pub fn now_ms(&self) -> i64 {
        self.now
    }

    /// Runs the site up to and including `t_ms`; returns what it published, in time order.
    pub fn advance_to(&mut self, t_ms: i64) -> Vec<SimMessage> {
        let mut out = Vec::new();
        let SiteSim {
            cfg,
            chargers,
            zones,
            queue,
            truth,
            ..
        } = self;
        while let Some(&Reverse((t, kind, idx))) = queue.peek() {
            if t > t_ms {
                break;
            }
            queue.pop();
            let next = if kind == 0 {
                let c = &mut chargers[idx];
                if c.queued_at != t {
                    continue; // superseded by an earlier wake-up
                }
                c.step(t, cfg, zones, truth, &mut out);
                c.queued_at = c.next_event();
                c.queued_at
            } else {
                let z = &mut zones[idx];
                z.tick(t, &mut out);
                z.next_tick
            };
            queue.push(Reverse((next, kind, idx)));
        }
        self.now = self.now.max(t_ms);
        out
    }

    pub fn truth(&self) -> &[SessionTruth] {
        &self.truth
    }

    /// Queues a scripted car at `charger_id` (it waits if the charger is busy then). Returns
    /// false for an unknown charger or a time already simulated.
    pub fn script_arrival(&mut self, charger_id: &str, arrival: ScriptedArrival) -> bool {
        if arrival.at_ms < self.now {
            return false;
        }
        let Some(idx) = self.chargers.iter().position(|c| c.id == charger_id) else {
            return false;
        };
        let c = &mut self.chargers[idx];
        c.scripted.push_back(arrival);
        c.scripted.make_contiguous().sort_by_key(|a| a.at_ms);
        // The charger may be queued for a later event: wake it on time. The older queue entry
        // becomes stale and is skipped (see `queued_at`).
        let at = c.next_event();
        if at < c.queued_at {
            c.queued_at = at;
            self.queue.push(Reverse((at, 0, idx)));
        }
        true
    }
}

fn entity_rng(seed: u64, kind: u64, idx: usize) -> StdRng {
    // Distinct, well-mixed streams per entity: StdRng::seed_from_u64 scrambles the input.
    let mixed = seed
        ^ (kind.wrapping_add(1)).wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ (idx as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    StdRng::seed_from_u64(mixed)
}

/// An exponential waiting time in ms for an event rate given per ms (at least 1 ms).
pub(crate) fn exp_sample(rng: &mut impl Rng, rate_per_ms: f64) -> i64 {
    let u: f64 = rng.gen();
    let wait = -(1.0 - u).ln() / rate_per_ms;
    // Bounded so a tiny rate can't overflow the clock; 1e13 ms is ~300 years.
    wait.clamp(1.0, 1e13) as i64
}

/// Arrivals per hour relative to the daily mean, by UTC hour: quiet nights, busy lunch and
/// evening commute.
fn time_of_day_factor(t_ms: i64) -> f64 {
    match t_ms.div_euclid(3_600_000).rem_euclid(24) {
        0..=5 => 0.2,
        6..=7 => 0.7,
        8..=11 => 1.1,
        12..=13 => 1.5,
        14..=16 => 1.1,
        17..=19 => 1.4,
        20..=21 => 0.8,
        _ => 0.4,
    }
}
const TOD_MAX: f64 = 1.5;

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Idle,
    Preparing {
        until: i64,
    },
    /// Start of DC: the charger isn't offering energy yet (1–3 s).
    StartEvse {
        until: i64,
    },
    /// Start of DC: the car isn't taking any yet (2–5 s): the blip.
    StartEv {
        until: i64,
    },
    Charging {
        since: i64,
    },
    /// Smart-charging pause mid-session.
    Paused {
        until: i64,
    },
    /// Target reached: power decays to ~0 while the status still says charging.
    Tapering {
        since: i64,
        from_kw: f64,
    },
    /// At target, car parked: `suspended_ev` until the driver comes back.
    Parked {
        leave_at: i64,
    },
    Stopping {
        until: i64,
    },
    Faulted {
        until: i64,
        code: &'static str,
    },
}

impl Phase {
    fn status(&self) -> ChargerStatus {
        match self {
            Phase::Idle => ChargerStatus::Available,
            Phase::Preparing { .. } => ChargerStatus::Preparing,
            Phase::StartEvse { .. } | Phase::Paused { .. } => ChargerStatus::SuspendedEvse,
            Phase::StartEv { .. } | Phase::Parked { .. } => ChargerStatus::SuspendedEv,
            Phase::Charging { .. } | Phase::Tapering { .. } => ChargerStatus::Charging,
            Phase::Stopping { .. } => ChargerStatus::Finishing,
            Phase::Faulted { .. } => ChargerStatus::Faulted,
        }
    }

    fn until(&self) -> Option<i64> {
        match *self {
            Phase::Preparing { until }
            | Phase::StartEvse { until }
            | Phase::StartEv { until }
            | Phase::Paused { until }
            | Phase::Stopping { until }
            | Phase::Faulted { until, .. } => Some(until),
            Phase::Parked { leave_at } => Some(leave_at),
            Phase::Tapering { since, .. } => Some(since + TAPER_MS),
            Phase::Idle | Phase::Charging { .. } => None,
        }
    }

    fn energy_flows(&self) -> bool {
        matches!(self, Phase::Charging { .. } | Phase::Tapering { .. })
    }
}

const ERROR_CODES: [&str; 5] = [
    "GroundFailure",
    "HighTemperature",
    "OverCurrentFailure",
    "EVCommunicationError",
    "PowerSwitchFailure",
];

struct Session {
    id: String,
    id_tag: String,
    car: &'static VehicleModel,
    soc: f64,
    target: f64,
    energy_kwh: f64,
    truth: usize,
    /// (person id, when they walk in) for drivers who wait in the lounge.
    person: Option<(u64, i64)>,
    early_stop_soc: Option<f64>,
    pause_at_soc: Option<f64>,
    fault_at_soc: Option<f64>,
    no_start: bool,
    idle_long: bool,
    dwell_ms: Option<i64>,
}

/// How a session will go, decided at plug-in.
struct Plan {
    car: &'static VehicleModel,
    soc_start: f64,
    target: f64,
    no_start: bool,
    early_stop_soc: Option<f64>,
    fault_at_soc: Option<f64>,
    pause_at_soc: Option<f64>,
    idle_long: bool,
    dwell_ms: Option<i64>,
}

impl Plan {
    fn random(rng: &mut StdRng, cfg: &SimConfig) -> Plan {
        let p = |x: f64| x.clamp(0.0, 1.0);
        let car = vehicles::pick(rng);
        let soc_start: f64 = (rng.gen_range(5.0..40.0f64) * 10.0).round() / 10.0;
        let target = if rng.gen_bool(0.7) { 80.0 } else { 100.0 };
        let no_start = rng.gen_bool(p(cfg.no_start_prob));
        let faults = !no_start && rng.gen_bool(p(cfg.fault_prob));
        let early = !no_start && !faults && rng.gen_bool(p(cfg.early_unplug_prob));
        let early_stop_soc = if early {
            let lo = (soc_start + 10.0).max(40.0);
            let hi = target - 10.0;
            (lo < hi).then(|| rng.gen_range(lo..hi))
        } else {
            None
        };
        let fault_at_soc = faults.then(|| rng.gen_range(soc_start + 1.0..target - 1.0));
        let pause_at_soc = rng
            .gen_bool(p(cfg.smart_pause_prob))
            .then(|| rng.gen_range(soc_start + 5.0..target - 5.0));
        let idle_long = rng.gen_bool(p(cfg.idle_leave_prob));
        Plan {
            car,
            soc_start,
            target,
            no_start,
            early_stop_soc,
            fault_at_soc,
            pause_at_soc,
            idle_long,
            dwell_ms: None,
        }
    }

    fn scripted(a: &ScriptedArrival) -> Plan {
        let target = if a.target.is_finite() {
            a.target.clamp(1.0, 100.0)
        } else {
            80.0
        };
        let soc_start = if a.soc_start.is_finite() {
            a.soc_start.clamp(0.0, target)
        } else {
            10.0
        };
        Plan {
            car: a.vehicle,
            soc_start,
            target,
            no_start: false,
            early_stop_soc: a.early_stop_soc,
            fault_at_soc: None,
            pause_at_soc: None,
            idle_long: false,
            dwell_ms: Some(a.dwell_ms.unwrap_or(120_000).max(1)),
        }
    }
}

struct Charger {
    index: usize,
    id: String,
    max_kw: f64,
    kind: ChargerKind,
    zone: Option<usize>,
    topic_telemetry: String,
    topic_availability: String,
    rng: StdRng,
    period_ms: f64,
    next_periodic: f64,
    last_t: i64,
    meter_kwh: f64,
    temperature_c: f64,
    phase: Phase,
    session: Option<Session>,
    sessions_started: u64,
    next_arrival: i64,
    scripted: VecDeque<ScriptedArrival>,
    idle_since: i64,
    /// Time of this charger's live entry in the site queue.
    queued_at: i64,
    announced: bool,
    online: bool,
    next_offline: i64,
    offline_until: i64,
}

#[derive(Serialize)]
struct TelemetryPayload<'a> {
    ts: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vehicle: Option<&'a str>,
    power_kw: f64,
    meter_kwh: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_kwh: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    soc_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_soc_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    voltage_v: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_a: Option<f64>,
    temperature_c: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'static str>,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Charger {
    fn new(index: usize, c: &SimCharger, base: &str, cfg: &SimConfig) -> Self {
        let mut rng = entity_rng(cfg.seed, 0, index);
        // Meters on a real site are not new: start somewhere in the first few MWh.
        let meter_kwh = round3(rng.gen_range(1_000.0..20_000.0));
        let mut ch = Charger {
            index,
            id: c.id.clone(),
            max_kw: c.max_kw.max(0.0),
            kind: c.kind,
            zone: if cfg.zones.is_empty() {
                None
            } else {
                Some(index % cfg.zones.len())
            },
            topic_telemetry: format!("{base}/charger/{}/telemetry", c.id),
            topic_availability: format!("{base}/charger/{}/availability", c.id),
            rng,
            period_ms: cfg.telemetry_period_ms,
            // Chargers report out of phase with each other, as real ones do: a site's load
            // is spread over the period rather than one burst per period.
            next_periodic: cfg.start_ms as f64
                + cfg.telemetry_period_ms * (index as f64 / cfg.chargers.len().max(1) as f64),
            last_t: cfg.start_ms,
            meter_kwh,
            temperature_c: 22.0,
            phase: Phase::Idle,
            session: None,
            sessions_started: 0,
            next_arrival: i64::MAX,
            scripted: VecDeque::new(),
            idle_since: cfg.start_ms,
            queued_at: cfg.start_ms,
            announced: false,
            online: true,
            next_offline: i64::MAX,
            offline_until: i64::MAX,
        };
        ch.next_arrival = if cfg.warm_start && ch.rng.gen_bool(0.5) {
            cfg.start_ms + ch.rng.gen_range(0..60_000)
        } else {
            ch.sample_arrival(cfg.start_ms, cfg.arrivals_per_hour)
        };
        ch.next_offline = ch.sample_offline(cfg.start_ms, cfg.offline_per_day);
        ch
    }

    /// Non-homogeneous Poisson arrivals by thinning against the busiest hour's rate.
    fn sample_arrival(&mut self, from: i64, per_hour: f64) -> i64 {
        if per_hour <= 0.0 || !per_hour.is_finite() {
            return i64::MAX;
        }
        let max_rate = per_hour * TOD_MAX / 3_600_000.0;
        let mut t = from;
        loop {
            t = t.saturating_add(exp_sample(&mut self.rng, max_rate));
            let accept: f64 = self.rng.gen();
            if accept * TOD_MAX < time_of_day_factor(t) || t > i64::MAX / 2 {
                return t;
            }
        }
    }

    fn sample_offline(&mut self, from: i64, per_day: f64) -> i64 {
        if per_day <= 0.0 || !per_day.is_finite() {
            return i64::MAX;
        }
        from.saturating_add(exp_sample(&mut self.rng, per_day / 86_400_000.0))
    }

    fn power_kw(&self, t: i64) -> f64 {
        let Some(s) = &self.session else {
            return 0.0;
        };
        match self.phase {
            Phase::Charging { since } => {
                let accepted = match self.kind {
                    ChargerKind::Dc => s.car.dc_power_kw(s.soc),
                    ChargerKind::Ac => s.car.ac_power_kw(s.soc),
                };
                let ramp = match self.kind {
                    ChargerKind::Dc => ((t - since) as f64 / RAMP_MS).clamp(0.05, 1.0),
                    ChargerKind::Ac => 1.0,
                };
                accepted.min(self.max_kw) * ramp
            }
            Phase::Tapering { since, from_kw } => {
                from_kw * (-((t - since) as f64) / TAPER_TAU_MS).exp()
            }
            _ => 0.0,
        }
    }

    /// Energy flow from `last_t` to `t` at the power of `last_t` (steps are ≤ 1 s while
    /// charging, so this explicit step is accurate enough).
    fn integrate(&mut self, t: i64, truth: &mut [SessionTruth]) {
        let dt = t - self.last_t;
        if dt <= 0 {
            return;
        }
        let p = self.power_kw(self.last_t);
        let kwh = p * dt as f64 / 3_600_000.0;
        self.meter_kwh += kwh;
        let ambient_target = 22.0 + 0.07 * p;
        self.temperature_c +=
            (ambient_target - self.temperature_c) * (1.0 - (-(dt as f64) / 120_000.0).exp());
        let eff = match self.kind {
            ChargerKind::Dc => DC_EFFICIENCY,
            ChargerKind::Ac => AC_EFFICIENCY,
        };
        if let Some(s) = &mut self.session {
            s.energy_kwh += kwh;
            s.soc = (s.soc + kwh * eff / s.car.net_kwh * 100.0).min(100.0);
            if let Some(tr) = truth.get_mut(s.truth) {
                tr.energy_kwh = s.energy_kwh;
                tr.soc_end = s.soc;
            }
        }
    }

    fn step(
        &mut self,
        t: i64,
        cfg: &SimConfig,
        zones: &mut [Zone],
        truth: &mut Vec<SessionTruth>,
        out: &mut Vec<SimMessage>,
    ) {
        self.integrate(t, truth);
        self.last_t = t;

        let mut force = false;
        if !self.announced {
            self.announced = true;
            self.push_availability(t, true, out);
            force = true;
        }
        if self.online && t >= self.next_offline {
            // What the broker publishes as the charger's last will: then silence.
            self.online = false;
            self.offline_until = t + self.rng.gen_range(3 * 60_000..10 * 60_000);
            self.push_availability(t, false, out);
        } else if !self.online && t >= self.offline_until {
            self.online = true;
            self.offline_until = i64::MAX;
            self.next_offline = self.sample_offline(t, cfg.offline_per_day);
            self.push_availability(t, true, out);
            force = true;
        }

        let before = self.phase.status();
        // Bounded: each pass moves the phase forward; the bound only guards against a bug.
        for _ in 0..8 {
            if !self.transition(t, cfg, zones, truth) {
                break;
            }
        }
        let changed = self.phase.status() != before;

        let periodic = self.next_periodic.floor() as i64 <= t;
        if periodic {
            self.next_periodic += self.period_ms;
            if (self.next_periodic.floor() as i64) < t {
                // Far behind (e.g. after a long offline spell): resume the grid from now.
                self.next_periodic = t as f64 + self.period_ms;
            }
        }
        if self.online && (periodic || changed || force) {
            self.push_telemetry(t, out);
        }
    }

    /// One phase change due at `t`, if any; returns whether something changed.
    fn transition(
        &mut self,
        t: i64,
        cfg: &SimConfig,
        zones: &mut [Zone],
        truth: &mut Vec<SessionTruth>,
    ) -> bool {
        let due = self.phase.until().is_some_and(|u| u <= t);
        match self.phase.clone() {
            Phase::Idle => {
                if self.scripted_due().is_some_and(|at| at <= t) {
                    let script = self.scripted.pop_front();
                    self.plug_in(t, cfg, zones, truth, script);
                } else if t >= self.next_arrival {
                    self.plug_in(t, cfg, zones, truth, None);
                } else {
                    return false;
                }
            }
            Phase::Preparing { .. } if due => {
                let no_start = self.session.as_ref().is_some_and(|s| s.no_start);
                self.phase = if no_start {
                    self.leave_lounge(t, zones);
                    Phase::Stopping {
                        until: t + self.rng.gen_range(2_000..6_000),
                    }
                } else if self.kind == ChargerKind::Dc {
                    Phase::StartEvse {
                        until: t + self.rng.gen_range(1_000..3_000),
                    }
                } else {
                    Phase::Charging { since: t }
                };
            }
            Phase::StartEvse { .. } if due => {
                self.phase = Phase::StartEv {
                    until: t + self.rng.gen_range(2_000..5_000),
                };
            }
            Phase::StartEv { .. } | Phase::Paused { .. } if due => {
                self.phase = Phase::Charging { since: t };
            }
            Phase::Charging { .. } => return self.while_charging(t, zones, truth),
            Phase::Tapering { .. } if due => {
                let (idle_long, fixed) = self
                    .session
                    .as_ref()
                    .map_or((false, None), |s| (s.idle_long, s.dwell_ms));
                let dwell = if let Some(d) = fixed {
                    d
                } else if idle_long {
                    self.rng.gen_range(10 * 60_000..40 * 60_000)
                } else {
                    self.rng.gen_range(60_000..8 * 60_000)
                };
                self.phase = Phase::Parked {
                    leave_at: t + dwell,
                };
            }
            Phase::Parked { .. } if due => {
                self.leave_lounge(t, zones);
                self.phase = Phase::Stopping {
                    until: t + self.rng.gen_range(3_000..8_000),
                };
            }
            Phase::Stopping { .. } | Phase::Faulted { .. } if due => {
                self.leave_lounge(t, zones);
                if let Some(s) = self.session.take() {
                    if let Some(tr) = truth.get_mut(s.truth) {
                        tr.unplugged_ms = Some(t);
                    }
                }
                self.phase = Phase::Idle;
                self.idle_since = t;
                // The next car needs at least the time to pull in.
                let from = t + self.rng.gen_range(20_000..120_000);
                self.next_arrival = self.sample_arrival(from, cfg.arrivals_per_hour);
            }
            _ => return false,
        }
        true
    }

    fn while_charging(&mut self, t: i64, zones: &mut [Zone], truth: &mut [SessionTruth]) -> bool {
        let Some(s) = &mut self.session else {
            return false;
        };
        let (soc, truth_idx) = (s.soc, s.truth);
        if soc >= s.target - 0.05 {
            if let Some(tr) = truth.get_mut(truth_idx) {
                tr.reached_target_ms = Some(t);
            }
            let from_kw = self.power_kw(t);
            self.phase = Phase::Tapering { since: t, from_kw };
        } else if s.early_stop_soc.is_some_and(|x| soc >= x) {
            if let Some(tr) = truth.get_mut(truth_idx) {
                tr.early_unplug = true;
            }
            self.leave_lounge(t, zones);
            self.phase = Phase::Stopping {
                until: t + self.rng.gen_range(3_000..8_000),
            };
        } else if s.fault_at_soc.is_some_and(|x| soc >= x) {
            s.fault_at_soc = None;
            if let Some(tr) = truth.get_mut(truth_idx) {
                tr.faulted = true;
            }
            let code = ERROR_CODES[self.rng.gen_range(0..ERROR_CODES.len())];
            self.phase = Phase::Faulted {
                until: t + self.rng.gen_range(60_000..5 * 60_000),
                code,
            };
        } else if s.pause_at_soc.is_some_and(|x| soc >= x) {
            s.pause_at_soc = None;
            self.phase = Phase::Paused {
                until: t + self.rng.gen_range(30_000..90_000),
            };
        } else {
            return false;
        }
        true
    }

    fn plug_in(
        &mut self,
        t: i64,
        cfg: &SimConfig,
        zones: &mut [Zone],
        truth: &mut Vec<SessionTruth>,
        script: Option<ScriptedArrival>,
    ) {
        self.sessions_started += 1;
        let plan = match script {
            Some(a) => Plan::scripted(&a),
            None => Plan::random(&mut self.rng, cfg),
        };
        let rng = &mut self.rng;
        let Plan {
            car,
            soc_start,
            target,
            no_start,
            early_stop_soc,
            fault_at_soc,
            pause_at_soc,
            idle_long,
            dwell_ms,
        } = plan;
        let id_tag = format!("{:08X}", rng.gen::<u32>());
        let person = match self.zone {
            Some(z) if rng.gen_bool(cfg.lounge_visit_prob.clamp(0.0, 1.0)) => {
                let pid = ((self.index as u64) << 32) | (self.sessions_started & 0xFFFF_FFFF);
                let at = t + rng.gen_range(60_000..180_000);
                if let Some(zone) = zones.get_mut(z) {
                    zone.schedule(at, Change::Enter(pid));
                }
                Some((pid, at))
            }
            _ => None,
        };
        let session_id = format!("S-{}-{}", self.id, self.sessions_started);
        truth.push(SessionTruth {
            charger: self.id.clone(),
            session_id: session_id.clone(),
            plugged_ms: t,
            reached_target_ms: None,
            unplugged_ms: None,
            early_unplug: false,
            faulted: false,
            no_start,
            energy_kwh: 0.0,
            soc_start,
            soc_end: soc_start,
            target,
        });
        self.session = Some(Session {
            id: session_id,
            id_tag,
            car,
            soc: soc_start,
            target,
            energy_kwh: 0.0,
            truth: truth.len() - 1,
            person,
            early_stop_soc,
            pause_at_soc,
            fault_at_soc,
            no_start,
            idle_long,
            dwell_ms,
        });
        let prepare_ms = if no_start {
            // Long enough for the daemon's "charging not started" rule (5 min by default).
            self.rng.gen_range(6 * 60_000..12 * 60_000)
        } else {
            self.rng.gen_range(3_000..10_000)
        };
        self.phase = Phase::Preparing {
            until: t + prepare_ms,
        };
        self.next_arrival = i64::MAX;
    }

    fn leave_lounge(&mut self, t: i64, zones: &mut [Zone]) {
        let Some(s) = &mut self.session else {
            return;
        };
        if let (Some((pid, entered_at)), Some(z)) = (s.person.take(), self.zone) {
            if let Some(zone) = zones.get_mut(z) {
                // Never before they walked in, or the exit would be ignored and they'd stay.
                zone.schedule(t.max(entered_at + 1), Change::Exit(pid));
            }
        }
    }

    /// When the next scripted car can pull in: not before the previous one has left.
    fn scripted_due(&self) -> Option<i64> {
        let a = self.scripted.front()?;
        let earliest = if self.sessions_started == 0 {
            self.idle_since
        } else {
            self.idle_since + 20_000
        };
        Some(a.at_ms.max(earliest))
    }

    fn next_event(&self) -> i64 {
        let mut next = self.next_periodic.floor() as i64;
        if let Some(u) = self.phase.until() {
            next = next.min(u);
        }
        if self.phase.energy_flows() {
            next = next.min(self.last_t + PHYSICS_STEP_MS);
        }
        if self.phase == Phase::Idle {
            next = next.min(self.next_arrival);
            if let Some(at) = self.scripted_due() {
                next = next.min(at);
            }
        }
        next = next.min(if self.online {
            self.next_offline
        } else {
            self.offline_until
        });
        next.max(self.last_t)
    }

    fn push_availability(&self, t: i64, online: bool, out: &mut Vec<SimMessage>) {
        out.push(SimMessage {
            topic: self.topic_availability.clone(),
            payload: if online {
                b"online".to_vec()
            } else {
                b"offline".to_vec()
            },
            retain: true,
            ts_ms: t,
        });
    }

    fn push_telemetry(&self, t: i64, out: &mut Vec<SimMessage>) {
        let power = self.power_kw(t);
        let status = self.phase.status();
        let s = self.session.as_ref();
        // Cars report SoC over DC (ISO 15118 / DIN) once communication is up; AC says nothing.
        let soc_known = self.kind == ChargerKind::Dc
            && s.is_some()
            && !matches!(self.phase, Phase::Preparing { .. });
        let (voltage, current) = match (s, self.kind) {
            (Some(s), ChargerKind::Dc) => {
                let v = s.car.pack_voltage(s.soc);
                (Some(round1(v)), Some(round1(power * 1000.0 / v)))
            }
            // Three-phase AC: current per phase.
            (Some(_), ChargerKind::Ac) => (
                Some(AC_VOLTAGE),
                Some(round1(power * 1000.0 / (3.0 * AC_VOLTAGE))),
            ),
            (None, _) => (None, None),
        };
        let payload = TelemetryPayload {
            ts: rfc3339_ms(t),
            status: status.as_str(),
            session_id: s.map(|s| s.id.as_str()),
            id_tag: s.map(|s| s.id_tag.as_str()),
            vehicle: s.map(|s| s.car.name),
            power_kw: round1(power),
            meter_kwh: round3(self.meter_kwh),
            session_kwh: s.map(|s| round3(s.energy_kwh)),
            soc_pct: s.filter(|_| soc_known).map(|s| round1(s.soc)),
            target_soc_pct: s.filter(|_| soc_known).map(|s| s.target),
            voltage_v: voltage,
            current_a: current,
            temperature_c: round1(self.temperature_c),
            error_code: match self.phase {
                Phase::Faulted { code, .. } => Some(code),
                _ => None,
            },
        };
        push_json(out, &self.topic_telemetry, t, &payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_charger(kind: ChargerKind, max_kw: f64) -> SimConfig {
        let mut cfg = SimConfig::new(
            "milano",
            "evlounge",
            vec![SimCharger {
                id: "hpc-1".into(),
                bay: "Bay 1".into(),
                max_kw,
                kind,
            }],
            vec![("lounge".into(), 10)],
            7,
            1_795_000_000_000,
        );
        cfg.warm_start = false;
        cfg.offline_per_day = 0.0;
        cfg
    }

    #[test]
    fn status_mapping_covers_phases() {
        assert_eq!(Phase::Idle.status(), ChargerStatus::Available);
        assert_eq!(
            Phase::StartEv { until: 0 }.status(),
            ChargerStatus::SuspendedEv
        );
        assert_eq!(
            Phase::Tapering {
                since: 0,
                from_kw: 1.0
            }
            .status(),
            ChargerStatus::Charging
        );
    }

    #[test]
    fn time_of_day_is_quiet_at_night() {
        assert!(time_of_day_factor(3 * 3_600_000) < time_of_day_factor(12 * 3_600_000));
        assert!(time_of_day_factor(-3_600_000) > 0.0);
    }

    #[test]
    fn an_idle_site_only_reports_idle() {
        let mut cfg = one_charger(ChargerKind::Dc, 320.0);
        cfg.arrivals_per_hour = 0.0;
        cfg.walkins_per_hour = 0.0;
        let start = cfg.start_ms;
        let mut sim = SiteSim::new(cfg);
        let msgs = sim.advance_to(start + 10_000);
        // availability + 11 telemetry + 2 lounge ticks × (counter + co2)
        let tel = msgs
            .iter()
            .filter(|m| m.topic.ends_with("/telemetry"))
            .count();
        assert_eq!(tel, 11);
        assert_eq!(msgs[0].payload, b"online");
        assert!(msgs[0].retain);
        assert!(sim.truth().is_empty());
    }

    #[test]
    fn ac_session_charges_at_on_board_limit() {
        let mut cfg = one_charger(ChargerKind::Ac, 22.0);
        cfg.arrivals_per_hour = 30.0;
        cfg.fault_prob = 0.0;
        cfg.no_start_prob = 0.0;
        cfg.early_unplug_prob = 0.0;
        let start = cfg.start_ms;
        let mut sim = SiteSim::new(cfg);
        let msgs = sim.advance_to(start + 3_600_000);
        assert!(sim.truth().iter().any(|t| t.energy_kwh > 1.0));
        let max_power = msgs
            .iter()
            .filter(|m| m.topic.ends_with("/telemetry"))
            .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
            .filter_map(|v| v["power_kw"].as_f64())
            .fold(0.0, f64::max);
        assert!((10.0..=11.0).contains(&max_power), "{max_power}");
    }
}
