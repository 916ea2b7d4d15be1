//! The lounge: people come in (drivers whose car is charging, walk-ins) and go; each zone has
//! an absolute people counter, a line counter at the door and a CO₂/climate sensor.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use rand::rngs::StdRng;
use rand::Rng;
use serde::Serialize;

use super::model::{exp_sample, SimMessage};

/// Someone crossing the door. Person ids are unique across the site, so an exit of someone
/// who never got in (the lounge was full) is simply ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Change {
    Enter(u64),
    Exit(u64),
}

pub(crate) struct Zone {
    capacity: u32,
    topic_counter: String,
    topic_door: String,
    topic_env: String,
    rng: StdRng,
    present: BTreeSet<u64>,
    /// (time, insertion seq, change): seq keeps same-ms changes in the order they were made.
    pending: BinaryHeap<Reverse<(i64, u64, Change)>>,
    seq: u64,
    entered: u32,
    exited: u32,
    co2_ppm: f64,
    last_t: i64,
    pub(crate) next_tick: i64,
    period_ms: i64,
    walkins_per_hour: f64,
    next_walkin: i64,
    walkin_seq: u64,
    index: u64,
}

#[derive(Serialize)]
struct CounterPayload {
    ts: i64,
    occupancy: u32,
}

#[derive(Serialize)]
struct DoorPayload {
    ts: i64,
    entered: u32,
    exited: u32,
}

#[derive(Serialize)]
struct EnvPayload {
    ts: i64,
    co2_ppm: f64,
    temperature_c: f64,
    humidity_pct: f64,
}

/// Outdoor baseline; each person adds about 25 ppm at steady state in a ventilated lounge.
const CO2_BASE: f64 = 420.0;
const CO2_PER_PERSON: f64 = 25.0;
/// Room air mixes over ~10 minutes.
const CO2_TAU_MS: f64 = 600_000.0;

impl Zone {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: u64,
        capacity: u32,
        topic_base: &str,
        rng: StdRng,
        start_ms: i64,
        period_ms: i64,
        walkins_per_hour: f64,
    ) -> Self {
        let mut z = Zone {
            capacity,
            topic_counter: format!("{topic_base}/counter-1"),
            topic_door: format!("{topic_base}/door-1"),
            topic_env: format!("{topic_base}/co2-1"),
            rng,
            present: BTreeSet::new(),
            pending: BinaryHeap::new(),
            seq: 0,
            entered: 0,
            exited: 0,
            co2_ppm: CO2_BASE,
            last_t: start_ms,
            next_tick: start_ms,
            period_ms: period_ms.max(1),
            walkins_per_hour,
            next_walkin: i64::MAX,
            walkin_seq: 0,
            index,
        };
        z.next_walkin = z.sample_walkin(start_ms);
        z
    }

    pub(crate) fn schedule(&mut self, at: i64, change: Change) {
        self.seq += 1;
        self.pending.push(Reverse((at, self.seq, change)));
    }

    pub(crate) fn occupancy(&self) -> u32 {
        u32::try_from(self.present.len()).unwrap_or(u32::MAX)
    }

    fn sample_walkin(&mut self, from: i64) -> i64 {
        if self.walkins_per_hour <= 0.0 {
            return i64::MAX;
        }
        from + exp_sample(&mut self.rng, self.walkins_per_hour / 3_600_000.0)
    }

    /// Applies every door crossing up to `t` and reports the zone's sensors at `t`.
    pub(crate) fn tick(&mut self, t: i64, out: &mut Vec<SimMessage>) {
        while self.next_walkin <= t {
            let at = self.next_walkin;
            self.walkin_seq += 1;
            let pid = (1u64 << 63) | (self.index << 40) | self.walkin_seq;
            let stay_ms = self.rng.gen_range(15 * 60_000..90 * 60_000);
            self.schedule(at, Change::Enter(pid));
            self.schedule(at + stay_ms, Change::Exit(pid));
            self.next_walkin = self.sample_walkin(at);
        }
        while let Some(Reverse((at, _, change))) = self.pending.peek().copied() {
            if at > t {
                break;
            }
            self.pending.pop();
            self.advance_air(at);
            match change {
                Change::Enter(pid) => {
                    // A full lounge turns people away rather than overfilling.
                    if self.occupancy() < self.capacity && self.present.insert(pid) {
                        self.entered += 1;
                    }
                }
                Change::Exit(pid) => {
                    if self.present.remove(&pid) {
                        self.exited += 1;
                    }
                }
            }
        }
        self.advance_air(t);

        if self.entered > 0 || self.exited > 0 {
            push_json(
                out,
                &self.topic_door,
                t,
                &DoorPayload {
                    ts: t,
                    entered: self.entered,
                    exited: self.exited,
                },
            );
            self.entered = 0;
            self.exited = 0;
        }
        let occupancy = self.occupancy();
        push_json(
            out,
            &self.topic_counter,
            t,
            &CounterPayload { ts: t, occupancy },
        );
        let people = f64::from(occupancy);
        let noise: f64 = self.rng.gen_range(-0.1..0.1);
        push_json(
            out,
            &self.topic_env,
            t,
            &EnvPayload {
                ts: t,
                co2_ppm: self.co2_ppm.round(),
                temperature_c: round1(21.5 + 0.04 * people + noise),
                humidity_pct: round1(40.0 + 0.3 * people + noise * 5.0),
            },
        );
        self.next_tick = t + self.period_ms;
    }

    fn advance_air(&mut self, t: i64) {
        let dt = (t - self.last_t).max(0) as f64;
        let target = CO2_BASE + CO2_PER_PERSON * f64::from(self.occupancy());
        self.co2_ppm += (target - self.co2_ppm) * (1.0 - (-dt / CO2_TAU_MS).exp());
        self.last_t = self.last_t.max(t);
    }
}

pub(crate) fn push_json<T: Serialize>(out: &mut Vec<SimMessage>, topic: &str, ts_ms: i64, v: &T) {
    // Serialising plain structs of numbers and strings cannot fail; an empty payload would
    // still be a valid (if useless) message, so no panic path is needed here.
    let payload = serde_json::to_vec(v).unwrap_or_default();
    out.push(SimMessage {
        topic: topic.to_string(),
        payload,
        retain: false,
        ts_ms,
    });
}

pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn zone(capacity: u32) -> Zone {
        Zone::new(
            0,
            capacity,
            "evlounge/s/lounge/lounge",
            StdRng::seed_from_u64(1),
            0,
            10_000,
            0.0,
        )
    }

    #[test]
    fn occupancy_follows_door_and_capacity() {
        let mut z = zone(2);
        z.schedule(1_000, Change::Enter(1));
        z.schedule(2_000, Change::Enter(2));
        z.schedule(3_000, Change::Enter(3)); // turned away: full
        z.schedule(20_000, Change::Exit(3)); // never got in: ignored
        z.schedule(20_000, Change::Exit(1));
        let mut out = Vec::new();
        z.tick(10_000, &mut out);
        assert_eq!(z.occupancy(), 2);
        let door: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(out[0].topic, "evlounge/s/lounge/lounge/door-1");
        assert_eq!(door["entered"], 2);
        assert_eq!(door["exited"], 0);
        out.clear();
        z.tick(20_000, &mut out);
        assert_eq!(z.occupancy(), 1);
        let door: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(door["exited"], 1);
        let counter: serde_json::Value = serde_json::from_slice(&out[1].payload).unwrap();
        assert_eq!(counter["occupancy"], 1);
    }

    #[test]
    fn co2_rises_with_people_and_settles() {
        let mut z = zone(40);
        for pid in 0..20 {
            z.schedule(0, Change::Enter(pid));
        }
        let mut out = Vec::new();
        z.tick(0, &mut out);
        let mut prev = z.co2_ppm;
        for k in 1..=36 {
            out.clear();
            z.tick(k * 100_000, &mut out);
            assert!(z.co2_ppm >= prev);
            prev = z.co2_ppm;
        }
        // One hour at 20 people: close to 420 + 25 × 20 = 920 ppm.
        assert!((900.0..=920.0).contains(&z.co2_ppm), "{}", z.co2_ppm);
    }
}
