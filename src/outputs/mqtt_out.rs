//! MQTT out: events (QoS 1, from the store's record, so an outage delays but never loses
//! them), retained live state (coalesced, at most one per topic per interval), dead letters.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

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

/// Retained state per topic, and the topics with a state to publish in the order they may
/// go out: a flush takes the due ones off the front of the queue instead of looking at
/// every topic (10k chargers at one look per 10 ms was a million slot checks a second).
/// Earliest due first also keeps a flush that runs out of budget fair: what it left is
/// first in line for the next one.
#[derive(Default)]
struct States {
    slots: IndexMap<String, StateSlot>,
    /// (when it may be published, slot index); a slot is in here at most once (`queued`).
    due: BinaryHeap<Reverse<(Instant, usize)>>,
}

#[derive(Default)]
struct StateSlot {
    pending: Option<StateKey>,
    /// What this topic shows (republished after a reconnect).
    shown: Option<StateKey>,
    last_sent: Option<Instant>,
    queued: bool,
}

impl States {
    /// `topic` is to show `key`: published once `interval` has passed since its last
    /// publish (at once when it has none).
    fn set(&mut self, topic: String, key: StateKey, now: Instant, interval: Duration) {
        let entry = self.slots.entry(topic);
        let i = entry.index();
        let slot = entry.or_default();
        slot.pending = Some(key);
        if !slot.queued {
            slot.queued = true;
            let at = slot.last_sent.map_or(now, |t| (t + interval).max(now));
            self.due.push(Reverse((at, i)));
        }
    }

    /// The next slot due by `now` (any queued one when `force`d), taken off the queue.
    fn next_due(&mut self, now: Instant, force: bool) -> Option<(usize, Instant)> {
        let &Reverse((at, i)) = self.due.peek()?;
        if at > now && !force {
            return None;
        }
        self.due.pop();
        if let Some(slot) = self.slots.get_index_mut(i).map(|(_, s)| s) {
            slot.queued = false;
        }
        Some((i, at))
    }

    /// Puts a slot taken by [`States::next_due`] back at the front (its publish failed).
    fn put_back(&mut self, i: usize, at: Instant) {
        if let Some((_, slot)) = self.slots.get_index_mut(i) {
            if !slot.queued {
                slot.queued = true;
                self.due.push(Reverse((at, i)));
            }
        }
    }

    /// A new connection: retained state goes out at QoS 0, so what was in flight when the
    /// last one dropped may be lost; every topic is due again with what it shows (or the
    /// newer state waiting for it).
    fn reconnected(&mut self, now: Instant) {
        self.due.clear();
        for (i, slot) in self.slots.values_mut().enumerate() {
            if slot.pending.is_none() {
                slot.pending = slot.shown.clone();
            }
            slot.last_sent = None;
            slot.queued = slot.pending.is_some();
            if slot.queued {
                self.due.push(Reverse((now, i)));
            }
        }
    }
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
                        let connacks = self.handle.state.connacks.load(std::sync::atomic::Ordering::Acquire);
                        if connacks != state_connacks {
                            state_connacks = connacks;
                            states.reconnected(Instant::now());
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
                states.set(topic, key, Instant::now(), self.state_min_interval)
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
    /// when `force`d, at shutdown); the rest stay queued for the next flush. Every
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
        // States sent during the flush are applied after it.
        let mut later = Vec::new();
        while left > 0 {
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
            let Some((i, at)) = states.next_due(now, force) else {
                break;
            };
            let Some((topic, slot)) = states.slots.get_index_mut(i) else {
                continue;
            };
            let Some(key) = slot.pending.take() else {
                continue;
            };
            let payload = match &key {
                StateKey::Charger(site, id) => self.live.charger_text(site, id),
                StateKey::Zone(site, zone) => {
                    self.live.zone(site, zone).map(|z| zone_json_text(&z))
                }
            };
            let Some(payload) = payload else {
                continue;
            };
            // QoS 0: retained state is superseded within seconds, and a QoS 1 stream of it
            // (one per charger per second) would hold events up behind the in-flight
            // window. What a dropped connection loses is sent again on the next one.
            if self
                .handle
                .client
                .try_publish(topic.clone(), QoS::AtMostOnce, true, payload)
                .is_err()
            {
                slot.pending = Some(key);
                states.put_back(i, at);
                break;
            }
            slot.shown = Some(key);
            slot.last_sent = Some(now);
            rendered += 1;
            left -= 1;
        }
        for m in later {
            self.handle_msg(m, conn, published, states).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> StateKey {
        StateKey::Charger("s".into(), id.into())
    }

    /// Takes what is due by `now` as a flush would, marking each sent at `now`.
    fn flush(states: &mut States, now: Instant) -> Vec<String> {
        let mut sent = Vec::new();
        while let Some((i, _)) = states.next_due(now, false) {
            let (topic, slot) = states.slots.get_index_mut(i).expect("slot");
            if let Some(k) = slot.pending.take() {
                slot.shown = Some(k);
                slot.last_sent = Some(now);
                sent.push(topic.clone());
            }
        }
        sent
    }

    #[test]
    fn a_topic_is_published_at_most_once_per_interval_with_its_latest_state() {
        let iv = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut st = States::default();
        st.set("a".into(), key("1"), t0, iv);
        assert_eq!(flush(&mut st, t0), ["a"]);
        // Two newer states within the interval: one publish, of the last, once it has passed.
        st.set("a".into(), key("2"), t0 + iv / 4, iv);
        st.set("a".into(), key("3"), t0 + iv / 2, iv);
        assert_eq!(st.due.len(), 1, "queued once");
        assert!(flush(&mut st, t0 + iv / 2).is_empty());
        assert!(flush(&mut st, t0 + iv - Duration::from_millis(1)).is_empty());
        assert_eq!(flush(&mut st, t0 + iv), ["a"]);
        assert_eq!(st.slots["a"].shown, Some(key("3")));
        assert!(
            flush(&mut st, t0 + 5 * iv).is_empty(),
            "nothing new, nothing sent"
        );
    }

    #[test]
    fn due_topics_go_out_earliest_first_and_a_failed_one_stays_first() {
        let iv = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut st = States::default();
        st.set("late".into(), key("0"), t0, iv);
        flush(&mut st, t0);
        st.set("late".into(), key("1"), t0, iv); // due at t0 + 1 s
        st.set("new".into(), key("2"), t0 + iv / 2, iv); // never sent: due at once
        let (i, at) = st.next_due(t0 + 2 * iv, false).expect("due");
        assert_eq!(st.slots.get_index(i).map(|(t, _)| t.as_str()), Some("new"));
        st.put_back(i, at);
        assert_eq!(flush(&mut st, t0 + 2 * iv), ["new", "late"]);
    }

    #[test]
    fn a_reconnect_makes_every_shown_topic_due_again() {
        let iv = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut st = States::default();
        for t in ["a", "b", "c"] {
            st.set(t.into(), key(t), t0, iv);
        }
        flush(&mut st, t0);
        st.set("b".into(), key("b2"), t0, iv);
        st.reconnected(t0 + iv / 10);
        let mut sent = flush(&mut st, t0 + iv / 10);
        sent.sort();
        assert_eq!(sent, ["a", "b", "c"]);
        assert_eq!(
            st.slots["b"].shown,
            Some(key("b2")),
            "the newer state, not the shown one"
        );
        assert!(st.due.is_empty());
    }
}
