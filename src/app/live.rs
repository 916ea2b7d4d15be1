//! The live view: the latest charger and zone states for HTTP readers, and a broadcast of
//! committed events and state changes for the SSE stream. Written by the commit thread only.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::domain::charger::LiveCharger;
use crate::domain::lounge::LiveZone;

/// One item of the live stream: a committed event (with its store sequence) or a state change.
#[derive(Clone, Debug, Serialize)]
pub struct LiveItem {
    /// Store sequence for events (SSE `id:`); `None` for state changes.
    pub seq: Option<i64>,
    /// Event kind, or `charger_state` / `lounge_state`.
    pub kind: String,
    pub data: String,
}

#[derive(Default, Clone, Debug)]
pub struct LiveState {
    /// Site, then charger: an update finds its entry by `&str` and overwrites it in place
    /// (no key allocated per update, as a `(String, String)` key would need).
    /// Values behind an `Arc` each: a reader takes the read lock only to clone pointers and
    /// renders or copies outside it (a reader preempted while holding the lock, on a busy
    /// runtime worker, would hold up the commit thread's `update`); and B-tree nodes hold
    /// eleven entries each, inline, so half-kilobyte chargers would waste node space.
    pub chargers: BTreeMap<String, BTreeMap<String, Arc<LiveCharger>>>,
    pub zones: BTreeMap<(String, String), LiveZone>,
}

impl LiveState {
    /// Every charger, ordered by site and id.
    pub fn charger_values(&self) -> impl Iterator<Item = &LiveCharger> {
        self.chargers
            .values()
            .flat_map(|m| m.values().map(|c| &**c))
    }
}

pub struct Live {
    // A std-style lock held only for map updates and clones, never across an await.
    state: RwLock<LiveState>,
    /// Events and state changes for SSE clients. State changes are rendered to JSON only
    /// while a client listens.
    pub tx: broadcast::Sender<LiveItem>,
    /// Zone changes for in-process listeners (the lounge occupancy history), typed, so
    /// they never make the commit thread render charger JSON nobody reads.
    pub zones_tx: broadcast::Sender<LiveZone>,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        let (zones_tx, _) = broadcast::channel(1024);
        Live {
            state: RwLock::new(LiveState::default()),
            tx,
            zones_tx,
        }
    }

    pub fn snapshot(&self) -> LiveState {
        self.state.read().clone()
    }

    /// Every charger's shared entry, ordered by site and id (pointers cloned under the lock,
    /// nothing deep-copied).
    pub fn chargers(&self) -> Vec<Arc<LiveCharger>> {
        self.state
            .read()
            .chargers
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    fn charger_arc(&self, site: &str, charger: &str) -> Option<Arc<LiveCharger>> {
        self.state
            .read()
            .chargers
            .get(site)
            .and_then(|m| m.get(charger))
            .cloned()
    }

    pub fn charger(&self, site: &str, charger: &str) -> Option<LiveCharger> {
        self.charger_arc(site, charger).map(|c| (*c).clone())
    }

    /// A charger's retained-state JSON, rendered outside the lock from its shared entry.
    pub fn charger_text(&self, site: &str, charger: &str) -> Option<String> {
        self.charger_arc(site, charger)
            .map(|c| charger_json_text(&c))
    }

    pub fn zone(&self, site: &str, zone: &str) -> Option<LiveZone> {
        self.state
            .read()
            .zones
            .get(&(site.to_string(), zone.to_string()))
            .cloned()
    }

    pub fn zones(&self) -> Vec<LiveZone> {
        self.state.read().zones.values().cloned().collect()
    }

    pub fn update(&self, chargers: Vec<LiveCharger>, zones: Vec<LiveZone>) {
        if chargers.is_empty() && zones.is_empty() {
            return;
        }
        let mut items = Vec::new();
        let listening = self.tx.receiver_count() > 0;
        let zone_listeners = self.zones_tx.receiver_count() > 0;
        {
            let mut st = self.state.write();
            for c in chargers {
                if listening {
                    items.push(LiveItem {
                        seq: None,
                        kind: "charger_state".into(),
                        data: charger_json_text(&c),
                    });
                }
                match st
                    .chargers
                    .get_mut(c.site.as_str())
                    .and_then(|m| m.get_mut(c.charger.as_str()))
                {
                    // In place unless a reader still holds the previous entry.
                    Some(slot) => match Arc::get_mut(slot) {
                        Some(entry) => *entry = c,
                        None => *slot = Arc::new(c),
                    },
                    None => {
                        st.chargers
                            .entry(c.site.clone())
                            .or_default()
                            .insert(c.charger.clone(), Arc::new(c));
                    }
                }
            }
            for z in zones {
                if zone_listeners {
                    let _ = self.zones_tx.send(z.clone());
                }
                if listening {
                    items.push(LiveItem {
                        seq: None,
                        kind: "lounge_state".into(),
                        data: zone_json_text(&z),
                    });
                }
                st.zones.insert((z.site.clone(), z.zone.clone()), z);
            }
        }
        for i in items {
            let _ = self.tx.send(i);
        }
    }

    pub fn publish_event(&self, seq: i64, kind: &str, data: String) {
        let _ = self.tx.send(LiveItem {
            seq: Some(seq),
            kind: kind.to_string(),
            data,
        });
    }
}

/// Session as shown in the API (RFC 3339 times).
pub fn session_json(s: &crate::domain::session::SessionRecord) -> serde_json::Value {
    serde_json::to_value(SessionView::new(s)).unwrap_or_default()
}

/// A charger's live state as the API and the retained MQTT state show it.
pub fn charger_json(c: &LiveCharger) -> serde_json::Value {
    serde_json::to_value(ChargerView::new(c)).unwrap_or_default()
}

/// [`charger_json`] rendered straight to text (retained state, SSE: no `Value` built).
pub fn charger_json_text(c: &LiveCharger) -> String {
    serde_json::to_string(&ChargerView::new(c)).unwrap_or_default()
}

pub fn zone_json(z: &LiveZone) -> serde_json::Value {
    serde_json::to_value(ZoneView::new(z)).unwrap_or_default()
}

/// [`zone_json`] rendered straight to text.
pub fn zone_json_text(z: &LiveZone) -> String {
    serde_json::to_string(&ZoneView::new(z)).unwrap_or_default()
}

// The shapes of the JSON above, serialized without building a `serde_json::Value`. Fields
// are in alphabetical order: the order a `Value` (a sorted map) has always printed them in.

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[derive(Serialize)]
struct SessionView<'a> {
    avg_kw: Option<f64>,
    charger: &'a str,
    charging_started: Option<String>,
    completed: Option<String>,
    ended: Option<String>,
    energy_kwh: f64,
    idle_s: Option<f64>,
    outcome: Option<&'static str>,
    peak_kw: f64,
    session_id: &'a str,
    site: &'a str,
    soc_end: Option<f64>,
    soc_start: Option<f64>,
    started: String,
    target_soc_pct: Option<f64>,
    time_to_complete_s: Option<f64>,
    vehicle: Option<&'a str>,
}

impl<'a> SessionView<'a> {
    fn new(s: &'a crate::domain::session::SessionRecord) -> Self {
        use crate::util::time::rfc3339_ms;
        SessionView {
            avg_kw: s.avg_kw,
            charger: &s.charger,
            charging_started: s.charging_started.map(rfc3339_ms),
            completed: s.completed.map(rfc3339_ms),
            ended: s.ended.map(rfc3339_ms),
            energy_kwh: round3(s.energy_kwh),
            idle_s: s.idle_s,
            outcome: s.outcome.map(|o| o.as_str()),
            peak_kw: round3(s.peak_kw),
            session_id: &s.session_id,
            site: &s.site,
            soc_end: s.soc_end,
            soc_start: s.soc_start,
            started: rfc3339_ms(s.started),
            target_soc_pct: s.target_soc_pct,
            time_to_complete_s: s.time_to_complete_s,
            vehicle: s.vehicle.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct ChargerView<'a> {
    bay: &'a str,
    charger: &'a str,
    eta_s: Option<f64>,
    online: bool,
    power_kw: Option<f64>,
    session: Option<SessionView<'a>>,
    site: &'a str,
    soc_pct: Option<f64>,
    status: Option<&'static str>,
    target_soc_pct: Option<f64>,
    ts: Option<String>,
    vehicle: Option<&'a str>,
}

impl<'a> ChargerView<'a> {
    fn new(c: &'a LiveCharger) -> Self {
        ChargerView {
            bay: &c.bay,
            charger: &c.charger,
            eta_s: c.eta_s.map(f64::round),
            online: c.online,
            power_kw: c.power_kw,
            session: c.session.as_deref().map(SessionView::new),
            site: &c.site,
            soc_pct: c.soc_pct,
            status: c.status.map(|s| s.as_str()),
            target_soc_pct: c.target_soc_pct,
            ts: c.last_ts.map(crate::util::time::rfc3339_ms),
            vehicle: c.vehicle.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct ZoneView<'a> {
    capacity: Option<u32>,
    co2_ppm: Option<f64>,
    full: bool,
    humidity_pct: Option<f64>,
    name: &'a str,
    occupancy: u32,
    site: &'a str,
    temperature_c: Option<f64>,
    ts: Option<String>,
    zone: &'a str,
}

impl<'a> ZoneView<'a> {
    fn new(z: &'a LiveZone) -> Self {
        ZoneView {
            capacity: z.capacity,
            co2_ppm: z.co2_ppm,
            full: z.full,
            humidity_pct: z.humidity_pct,
            name: &z.name,
            occupancy: z.occupancy,
            site: &z.site,
            temperature_c: z.temperature_c,
            ts: z.last_ts.map(crate::util::time::rfc3339_ms),
            zone: &z.zone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::input::ChargerStatus;
    use crate::domain::session::{Outcome, SessionRecord};
    use crate::util::time::rfc3339_ms;
    use serde_json::json;

    // The shapes as they were first written, with `json!`: the views must print the same.
    fn session_reference(s: &SessionRecord) -> serde_json::Value {
        json!({
            "site": s.site, "charger": s.charger, "session_id": s.session_id,
            "vehicle": s.vehicle, "started": rfc3339_ms(s.started),
            "charging_started": s.charging_started.map(rfc3339_ms),
            "completed": s.completed.map(rfc3339_ms), "ended": s.ended.map(rfc3339_ms),
            "outcome": s.outcome.map(|o| o.as_str()),
            "energy_kwh": (s.energy_kwh * 1000.0).round() / 1000.0,
            "peak_kw": (s.peak_kw * 1000.0).round() / 1000.0,
            "avg_kw": s.avg_kw, "soc_start": s.soc_start, "soc_end": s.soc_end,
            "target_soc_pct": s.target_soc_pct, "time_to_complete_s": s.time_to_complete_s,
            "idle_s": s.idle_s,
        })
    }

    fn charger_reference(c: &LiveCharger) -> serde_json::Value {
        json!({
            "site": c.site, "charger": c.charger, "bay": c.bay,
            "status": c.status.map(|s| s.as_str()), "online": c.online,
            "power_kw": c.power_kw, "soc_pct": c.soc_pct, "target_soc_pct": c.target_soc_pct,
            "eta_s": c.eta_s.map(f64::round), "vehicle": c.vehicle,
            "ts": c.last_ts.map(rfc3339_ms),
            "session": c.session.as_deref().map(session_reference),
        })
    }

    fn zone_reference(z: &LiveZone) -> serde_json::Value {
        json!({
            "site": z.site, "zone": z.zone, "name": z.name, "occupancy": z.occupancy,
            "capacity": z.capacity, "full": z.full, "co2_ppm": z.co2_ppm,
            "temperature_c": z.temperature_c, "humidity_pct": z.humidity_pct,
            "ts": z.last_ts.map(rfc3339_ms),
        })
    }

    fn session() -> SessionRecord {
        let mut s = SessionRecord::opened(
            "s1",
            "hpc-1",
            "tx-9".into(),
            "tx-9@1".into(),
            1_764_000_000_123,
        );
        s.vehicle = Some("Taycan \"4S\"".into());
        s.charging_started = Some(1_764_000_006_000);
        s.completed = Some(1_764_001_000_000);
        s.ended = Some(1_764_001_600_000);
        s.outcome = Some(Outcome::Completed);
        s.energy_kwh = 49.44212;
        s.peak_kw = 250.00049;
        s.avg_kw = Some(211.894285);
        s.soc_start = Some(20.0);
        s.soc_end = Some(80.0);
        s.target_soc_pct = Some(80.0);
        s.time_to_complete_s = Some(994.0);
        s.idle_s = Some(600.5);
        s
    }

    fn charger(session: Option<SessionRecord>) -> LiveCharger {
        LiveCharger {
            site: "s1".into(),
            charger: "hpc-1".into(),
            bay: "Bay 1".into(),
            status: Some(ChargerStatus::Charging),
            online: true,
            power_kw: Some(94.30551250260834),
            soc_pct: Some(78.17),
            target_soc_pct: Some(80.0),
            eta_s: Some(64.6),
            vehicle: Some("Taycan".into()),
            last_ts: Some(1_764_000_500_000),
            session: session.map(Box::new),
            error_code: None,
        }
    }

    #[test]
    fn views_print_what_the_json_macro_printed() {
        let full = charger(Some(session()));
        let bare = LiveCharger {
            status: None,
            power_kw: None,
            soc_pct: None,
            target_soc_pct: None,
            eta_s: None,
            vehicle: None,
            last_ts: None,
            online: false,
            ..charger(None)
        };
        let open = charger(Some(SessionRecord::opened(
            "s1",
            "hpc-1",
            "x".into(),
            "x@0".into(),
            0,
        )));
        for c in [&full, &bare, &open] {
            let want = charger_reference(c);
            assert_eq!(charger_json(c), want);
            // Byte for byte, key order included.
            assert_eq!(charger_json_text(c), serde_json::to_string(&want).unwrap());
        }
        let s = session();
        assert_eq!(session_json(&s), session_reference(&s));
        let z = LiveZone {
            site: "s1".into(),
            zone: "lounge".into(),
            name: "Lounge".into(),
            occupancy: 7,
            capacity: Some(20),
            full: false,
            co2_ppm: Some(612.0),
            temperature_c: None,
            humidity_pct: Some(41.5),
            last_ts: Some(1_764_000_500_000),
        };
        assert_eq!(zone_json(&z), zone_reference(&z));
        assert_eq!(
            zone_json_text(&z),
            serde_json::to_string(&zone_reference(&z)).unwrap()
        );
    }

    #[test]
    fn a_held_entry_is_replaced_not_changed_and_a_free_one_updated_in_place() {
        let live = Live::new();
        let first = charger(None);
        live.update(vec![first.clone()], Vec::new());
        // A reader (a render in progress) holds the entry outside the lock ...
        let held = live.charger_arc("s1", "hpc-1").unwrap();
        let second = LiveCharger {
            soc_pct: Some(79.5),
            ..charger(None)
        };
        // ... the update replaces the entry, and the reader still sees what it took.
        live.update(vec![second.clone()], Vec::new());
        assert_eq!(held.soc_pct, first.soc_pct);
        assert_eq!(live.charger("s1", "hpc-1").unwrap().soc_pct, Some(79.5));
        drop(held);
        // Without a reader the entry is updated in place.
        let before = Arc::as_ptr(&live.charger_arc("s1", "hpc-1").unwrap());
        live.update(vec![first.clone()], Vec::new());
        let after = live.charger_arc("s1", "hpc-1").unwrap();
        assert_eq!(Arc::as_ptr(&after), before);
        assert_eq!(after.soc_pct, first.soc_pct);
        assert_eq!(live.chargers().len(), 1);
    }

    #[test]
    fn retained_state_renders_from_the_shared_entry() {
        let live = Live::new();
        assert_eq!(live.charger_text("s1", "hpc-1"), None);
        let c = charger(Some(session()));
        live.update(vec![c.clone()], Vec::new());
        assert_eq!(
            live.charger_text("s1", "hpc-1"),
            Some(charger_json_text(&c))
        );
        assert_eq!(live.charger_text("s1", "hpc-2"), None);
    }
}
