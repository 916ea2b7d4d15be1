//! MQTT out: events (QoS 1, from the store's record, so an outage delays but never loses
//! them), retained live state (coalesced, at most one per topic per interval), dead letters.

use std::collections::BTreeSet;

use indexmap::IndexMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use tokio::sync::watch;

use crate::app::live::{zone_json_text, Live};
use crate::app::processor::{EventOut, OutMsg, StateKey};
use crate::ingest::mqtt::MqttHandle;
use crate::store;

pub struct MqttOut {
    /// Retained state is rendered from here when it is due.
    pub live: std::sync::Arc<Live>,
    /// Smallest event seq marked published per connection (ConnAck count at the time).
    /// `publish()` returns once the client has the request, not when the broker has the
    /// message; if the broker comes back without our session, rumqttc drops what was in
    /// flight, and those are published again (same event_id: consumers deduplicate).
    pub marked: parking_lot::Mutex<std::collections::BTreeMap<u64, i64>>,
    pub handle: MqttHandle,
    pub rx: flume::Receiver<OutMsg>,
    pub data_dir: PathBuf,
    pub prefix: String,
    pub state_min_interval: Duration,
}

/// Retained states published between two looks for events during a flush.
const STATE_CHUNK: usize = 64;
/// How often due retained states are published, and at most how many each time. The
/// client's request queue is first in, first out: an event published after a flush waits
/// behind every state that flush queued. Flushing ~1,000 states every 100 ms (10k chargers
/// at 1 Hz) put ~30 ms in front of events; a tenth of the interval and a cap keep that to a
/// few ms, and still leave room for 25k states a second.
const FLUSH_EVERY: Duration = Duration::from_millis(10);
const STATE_BUDGET: usize = 256;

/// Retained state per topic, in first-seen order, and where the next flush starts: a flush
/// that runs out of budget is continued by the next one, not started over (which would
/// leave the topics at the end waiting while more are due than a second's flushes send).
#[derive(Default)]
struct States {
    slots: IndexMap<String, StateSlot>,
    next: usize,
}

struct StateSlot {
    pending: Option<StateKey>,
    /// What this topic shows (republished after a reconnect).
    shown: Option<StateKey>,
    last_sent: Option<Instant>,
}

impl MqttOut {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        // A mutex only so the future is Send; it is never held across an await.
        // NORMAL, not FULL: a "published" mark lost to a power cut only means the event is
        // published once more (same event_id), and without an fsync per mark this
        // connection holds the write lock for microseconds, not a disk flush, while the
        // commit thread waits for it.
        let conn = match store::open_writer(&self.data_dir).and_then(|c| {
            c.pragma_update(None, "synchronous", "NORMAL")?;
            Ok(c)
        }) {
            Ok(c) => std::sync::Mutex::new(c),
            Err(e) => {
                tracing::error!(error = %e, "mqtt out: cannot open the store; events stay unpublished");
                return;
            }
        };
        let mut connected = self.handle.connected_rx.clone();
        let mut published: BTreeSet<i64> = BTreeSet::new();
        let mut seen_connacks = 0u64;
        let mut states = States::default();
        let mut state_connacks = self
            .handle
            .state
            .connacks
            .load(std::sync::atomic::Ordering::Acquire);
        let mut sweep = tokio::time::interval(Duration::from_secs(2));
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                m = self.rx.recv_async() => match m {
                    Ok(m) => self.handle_msg(m, &conn, &mut published, &mut states).await,
                    Err(_) => break,
                },
                _ = sweep.tick() => {
                    self.check_session(&conn, &mut published, &mut seen_connacks);
                    if *connected.borrow_and_update() {
                        self.sweep(&conn, &mut published).await;
                    }
                }
                _ = flush.tick() => {
                    if *connected.borrow_and_update() {
                        // A new connection: retained state goes out at QoS 0, so what was
                        // in flight when the last one dropped may be lost; send it all again.
                        let connacks = self.handle.state.connacks.load(std::sync::atomic::Ordering::Acquire);
                        if connacks != state_connacks {
                            state_connacks = connacks;
                            for slot in states.slots.values_mut() {
                                if slot.pending.is_none() {
                                    slot.pending = slot.shown.clone();
                                }
                                slot.last_sent = None;
                            }
                        }
                        self.flush_states(&mut states, false, &conn, &mut published).await;
                    }
                }
            }
        }
        // Shutdown: what the commit thread sent last, then everything still unpublished.
        while let Ok(m) = self.rx.try_recv() {
            self.handle_msg(m, &conn, &mut published, &mut states).await;
        }
        if self.handle.is_connected() {
            self.sweep(&conn, &mut published).await;
            self.flush_states(&mut states, true, &conn, &mut published)
                .await;
        }
    }

    async fn handle_msg(
        &self,
        m: OutMsg,
        conn: &std::sync::Mutex<rusqlite::Connection>,
        published: &mut BTreeSet<i64>,
        states: &mut States,
    ) {
        match m {
            OutMsg::Event(e) => self.publish_event(e, conn, published).await,
            OutMsg::State { topic, key } => {
                let slot = states.slots.entry(topic).or_insert(StateSlot {
                    pending: None,
                    shown: None,
                    last_sent: None,
                });
                slot.pending = Some(key);
            }
            OutMsg::DeadLetter { topic, payload } => {
                if self.handle.is_connected() {
                    let _ = self
                        .handle
                        .client
                        .try_publish(topic, QoS::AtMostOnce, false, payload);
                }
            }
        }
    }

    async fn publish_event(
        &self,
        e: EventOut,
        conn: &std::sync::Mutex<rusqlite::Connection>,
        published: &mut BTreeSet<i64>,
    ) {
        if published.contains(&e.seq) || !self.handle.is_connected() {
            // Not connected: the sweep publishes it after the reconnect.
            return;
        }
        if self.publish(e.topic, e.payload.into_bytes(), false).await {
            metrics::histogram!("evlounge_event_publish_seconds")
                .record(e.committed.elapsed().as_secs_f64());
            self.mark(conn, &[e.seq], published);
        }
    }

    async fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) -> bool {
        match self
            .handle
            .client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "mqtt publish request failed");
                false
            }
        }
    }

    /// After a reconnect where the broker had lost our session, re-publish what was marked
    /// published on earlier connections.
    fn check_session(
        &self,
        conn: &std::sync::Mutex<rusqlite::Connection>,
        published: &mut BTreeSet<i64>,
        seen_connacks: &mut u64,
    ) {
        use std::sync::atomic::Ordering;
        let current = self.handle.state.connacks.load(Ordering::Acquire);
        if current == *seen_connacks {
            return;
        }
        *seen_connacks = current;
        let lost = !self.handle.state.session_present.load(Ordering::Acquire);
        let earlier = {
            let mut m = self.marked.lock();
            let keep = m.split_off(&current);
            let earlier = std::mem::replace(&mut *m, keep);
            earlier.values().copied().min()
        };
        let Some(min) = earlier.filter(|_| lost) else {
            return;
        };
        let r = match conn.lock() {
            Ok(c) => store::unmark_published_from(&c, min),
            Err(_) => return,
        };
        match r {
            Ok(n) => {
                published.retain(|s| *s < min);
                if n > 0 {
                    tracing::warn!(
                        events = n,
                        "the broker lost our session; publishing recent events again"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot re-queue events after a lost session"),
        }
    }

    fn mark(
        &self,
        conn: &std::sync::Mutex<rusqlite::Connection>,
        seqs: &[i64],
        published: &mut BTreeSet<i64>,
    ) {
        if let Some(min) = seqs.iter().min() {
            let generation = self
                .handle
                .state
                .connacks
                .load(std::sync::atomic::Ordering::Acquire);
            let mut m = self.marked.lock();
            let e = m.entry(generation).or_insert(*min);
            *e = (*e).min(*min);
        }
        let r = match conn.lock() {
            Ok(c) => store::mark_published(&c, seqs),
            Err(_) => return,
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot mark events published; they may be published again");
        }
        published.extend(seqs.iter().copied());
        while published.len() > 10_000 {
            published.pop_first();
        }
    }

    async fn sweep(
        &self,
        conn: &std::sync::Mutex<rusqlite::Connection>,
        published: &mut BTreeSet<i64>,
    ) {
        loop {
            let r = match conn.lock() {
                Ok(c) => store::unpublished_events(&c, 500),
                Err(_) => return,
            };
            let batch = match r {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read unpublished events");
                    return;
                }
            };
            if batch.is_empty() {
                return;
            }
            let mut done = Vec::new();
            for ev in &batch {
                if published.contains(&ev.seq) {
                    done.push(ev.seq);
                    continue;
                }
                let topic = format!("{}/{}/events/{}", self.prefix, ev.site, ev.kind);
                if !self
                    .publish(topic, ev.payload.clone().into_bytes(), false)
                    .await
                {
                    break;
                }
                done.push(ev.seq);
            }
            let full = done.len() == batch.len();
            self.mark(conn, &done, published);
            if !full || batch.len() < 500 {
                return;
            }
        }
    }

    /// Publishes the retained states that are due, at most [`STATE_BUDGET`] (all of them
    /// when `force`d, at shutdown); the rest stay due for the next flush. Every
    /// [`STATE_CHUNK`] of them it yields and publishes the events the commit thread sent
    /// meanwhile.
    async fn flush_states(
        &self,
        states: &mut States,
        force: bool,
        conn: &std::sync::Mutex<rusqlite::Connection>,
        published: &mut BTreeSet<i64>,
    ) {
        let now = Instant::now();
        let mut rendered = 0usize;
        let mut left = if force { usize::MAX } else { STATE_BUDGET };
        // States sent during the flush are applied after it (the map is being iterated).
        let mut later = Vec::new();
        let n = states.slots.len();
        let start = states.next % n.max(1);
        for i in (start..n).chain(0..start) {
            let Some((topic, slot)) = states.slots.get_index_mut(i) else {
                continue;
            };
            if rendered >= STATE_CHUNK {
                rendered = 0;
                tokio::task::yield_now().await;
                for m in self.rx.try_iter().take(4096) {
                    match m {
                        OutMsg::Event(e) => self.publish_event(e, conn, published).await,
                        other => later.push(other),
                    }
                }
            }
            if slot.pending.is_none() {
                continue;
            }
            let due = force
                || slot
                    .last_sent
                    .is_none_or(|t| now.duration_since(t) >= self.state_min_interval);
            if !due {
                continue;
            }
            if let Some(key) = slot.pending.take() {
                let payload = match &key {
                    StateKey::Charger(site, id) => self.live.charger_text(site, id),
                    StateKey::Zone(site, zone) => {
                        self.live.zone(site, zone).map(|z| zone_json_text(&z))
                    }
                };
                let Some(payload) = payload else {
                    continue;
                };
                // QoS 0: retained state is superseded within seconds, and a QoS 1 stream of
                // it (one per charger per second) would hold events up behind the in-flight
                // window. What a dropped connection loses is sent again on the next one.
                if self
                    .handle
                    .client
                    .try_publish(topic.clone(), QoS::AtMostOnce, true, payload)
                    .is_err()
                {
                    slot.pending = Some(key);
                    break;
                }
                slot.shown = Some(key);
                slot.last_sent = Some(now);
                rendered += 1;
                left -= 1;
                if left == 0 {
                    states.next = i + 1;
                    break;
                }
            }
        }
        for m in later {
            self.handle_msg(m, conn, published, states).await;
        }
    }
}
