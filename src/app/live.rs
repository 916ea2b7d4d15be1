//! The live view: the latest charger and zone states for HTTP readers, and a broadcast of
//! committed events and state changes for the SSE stream. Written by the commit thread only.

use std::collections::BTreeMap;

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
    /// Boxed values: B-tree nodes hold eleven entries each, inline, and a node half full of
    /// half-kilobyte chargers wastes more than the boxes cost.
    pub chargers: BTreeMap<String, BTreeMap<String, Box<LiveCharger>>>,
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

    pub fn chargers(&self) -> Vec<LiveCharger> {
        self.state.read().charger_values().cloned().collect()
    }

    pub fn charger(&self, site: &str, charger: &str) -> Option<LiveCharger> {
        self.state
            .read()
            .chargers
            .get(site)
            .and_then(|m| m.get(charger))
            .map(|c| (**c).clone())
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
                    if let Ok(data) = serde_json::to_string(&charger_json(&c)) {
                        items.push(LiveItem {
                            seq: None,
                            kind: "charger_state".into(),
                            data,
                        });
                    }
                }
                match st
                    .chargers
                    .get_mut(c.site.as_str())
                    .and_then(|m| m.get_mut(c.charger.as_str()))
                {
                    Some(slot) => **slot = c,
                    None => {
                        st.chargers
                            .entry(c.site.clone())
                            .or_default()
                            .insert(c.charger.clone(), Box::new(c));
                    }
                }
            }
            for z in zones {
                if zone_listeners {
                    let _ = self.zones_tx.send(z.clone());
                }
                if listening {
                    if let Ok(data) = serde_json::to_string(&zone_json(&z)) {
                        items.push(LiveItem {
                            seq: None,
                            kind: "lounge_state".into(),
                            data,
                        });
                    }
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
    use crate::util::time::rfc3339_ms;
    serde_json::json!({
        "site": s.site,
        "charger": s.charger,
        "session_id": s.session_id,
        "vehicle": s.vehicle,
        "started": rfc3339_ms(s.started),
        "charging_started": s.charging_started.map(rfc3339_ms),
        "completed": s.completed.map(rfc3339_ms),
        "ended": s.ended.map(rfc3339_ms),
        "outcome": s.outcome.map(|o| o.as_str()),
        "energy_kwh": (s.energy_kwh * 1000.0).round() / 1000.0,
        "peak_kw": (s.peak_kw * 1000.0).round() / 1000.0,
        "avg_kw": s.avg_kw,
        "soc_start": s.soc_start,
        "soc_end": s.soc_end,
        "target_soc_pct": s.target_soc_pct,
        "time_to_complete_s": s.time_to_complete_s,
        "idle_s": s.idle_s,
    })
}

/// A charger's live state as the API and the retained MQTT state show it.
pub fn charger_json(c: &LiveCharger) -> serde_json::Value {
    serde_json::json!({
        "site": c.site,
        "charger": c.charger,
        "bay": c.bay,
        "status": c.status.map(|s| s.as_str()),
        "online": c.online,
        "power_kw": c.power_kw,
        "soc_pct": c.soc_pct,
        "target_soc_pct": c.target_soc_pct,
        "eta_s": c.eta_s.map(f64::round),
        "vehicle": c.vehicle,
        "ts": c.last_ts.map(crate::util::time::rfc3339_ms),
        "session": c.session.as_deref().map(session_json),
    })
}

pub fn zone_json(z: &LiveZone) -> serde_json::Value {
    serde_json::json!({
        "site": z.site,
        "zone": z.zone,
        "name": z.name,
        "occupancy": z.occupancy,
        "capacity": z.capacity,
        "full": z.full,
        "co2_ppm": z.co2_ppm,
        "temperature_c": z.temperature_c,
        "humidity_pct": z.humidity_pct,
        "ts": z.last_ts.map(crate::util::time::rfc3339_ms),
    })
}
