//! The commit thread: decodes inbound messages, steps the pure state machines, commits the
//! effects of a batch in one SQLite transaction (sessions, events, resumable state,
//! notification outbox), appends the batch's points to the time-series spool, and only
//! then acks the batch's MQTT messages, in arrival order. It is a plain thread: the
//! decider is synchronous by design and SQLite is blocking.

use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::app::acker::{Ack, AckFn, Acker};
use crate::app::live::Live;
use crate::config::Config;
use crate::domain::charger::{ChargerInput, ChargerMachine, Effect};
use crate::domain::event::Event;
use crate::domain::input::ChargerStatus;
use crate::domain::input::Telemetry;
use crate::domain::input::{ChargerKey, Input, ZoneKey};
use crate::domain::lounge::ZoneMachine;
use crate::domain::session::SessionRecord;
use crate::domain::thresholds::{ChargerMeta, ZoneMeta};
use crate::ingest::decode::{self, DecodeError, Route};
use crate::ingest::mqtt::{Inbound, MqttHandle};
use crate::outputs::timeseries::line_protocol::Line;
use crate::outputs::timeseries::{self, Point};
use crate::store::{self, StoreError};

/// Where the batch's time-series points go before the batch is acked (the disk spool):
/// written by the ack thread while `run` runs, by the commit thread otherwise.
pub trait PointSink: Send {
    /// Appends line protocol (whole lines).
    fn append(&mut self, lines: &[u8]) -> std::io::Result<()>;
    /// Makes what was appended durable.
    fn sync(&mut self) -> std::io::Result<()>;
}

/// Called inside the commit transaction (the notification outbox).
pub trait CommitHook: Send {
    /// A new event (first time its `event_id` is recorded).
    fn on_event(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        event: &Event,
        session_key: Option<&str>,
        now_ms: i64,
    ) -> rusqlite::Result<()>;
    /// A session record changed: `opened` on its first upsert; `tagged` when a session
    /// opened before now has an `id_tag` it did not have (an OCPP StartTransaction seconds
    /// after the plug-in).
    fn on_session(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        s: &SessionRecord,
        opened: bool,
        tagged: bool,
        now_ms: i64,
    ) -> rusqlite::Result<()>;
    /// A session ended; called after its last events were recorded.
    fn on_session_closed(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        s: &SessionRecord,
        now_ms: i64,
    ) -> rusqlite::Result<()>;
    /// After the transaction committed.
    fn after_commit(&mut self) {}
    /// A front-desk link received over MQTT.
    fn on_frontdesk(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        site: &str,
        payload: &[u8],
        now_ms: i64,
    );
}

/// Which live state a retained state topic shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateKey {
    Charger(String, String),
    Zone(String, String),
}

/// What a batch put in the live view: a charger (by slot) or a lounge zone.
#[derive(Debug, PartialEq)]
enum Shown {
    Charger(usize),
    Zone(ZoneKey),
}

/// Messages for the MQTT publisher task.
#[derive(Debug)]
pub enum OutMsg {
    /// A committed event: publish QoS 1, then mark published in the store.
    Event(EventOut),
    /// Retained live state changed (coalesced and rate-limited by the publisher, which
    /// renders it from the live view when it is due: no JSON per message here).
    State { topic: String, key: StateKey },
    /// Dead-letter copy of a rejected message.
    DeadLetter { topic: String, payload: Vec<u8> },
}

#[derive(Debug)]
pub struct EventOut {
    pub seq: i64,
    pub topic: String,
    pub payload: String,
    /// When its batch committed (for `evlounge_event_publish_seconds`).
    pub committed: Instant,
}

struct ChargerSlot {
    key: ChargerKey,
    meta: ChargerMeta,
    machine: ChargerMachine,
    /// Monotonic clock (ms, [`crate::util::time::mono_ms`]) when the last message for this
    /// charger was applied: its silence since is measured on it, never on the wall clock.
    last_mono_ms: i64,
    /// The machine changed since its snapshot was last saved; `must_save`: it changed in a
    /// way that decides something (events, session changes), so it is saved in this batch.
    unsaved: bool,
    must_save: bool,
    saved_wall_ms: i64,
    /// Listed in this batch's dirty chargers (one entry per charger, no sort/dedup).
    dirty: bool,
    /// The open session's (session_id, session_key), kept so the hot path compares
    /// instead of cloning them per message.
    open: Option<(String, String)>,
    /// What the live view shows of status and online; a change is shown at once.
    shown: (Option<ChargerStatus>, bool),
    /// Put this charger in the live view (and retained state) in this batch: something
    /// was decided or its status changed. Plain telemetry is coalesced instead: at most
    /// one live update per charger per `Processor::live_due_ms`; what is held back waits in
    /// `Processor::live_queue` and is shown once that has passed.
    live_now: bool,
    live_pending: bool,
    live_wall_ms: i64,
    /// In `Processor::unsent_states`: its retained state is still to be sent to the
    /// publisher.
    state_unsent: bool,
}

impl ChargerSlot {
    fn new(
        key: ChargerKey,
        meta: ChargerMeta,
        machine: ChargerMachine,
        now: i64,
        now_mono: i64,
        fresh: bool,
    ) -> Self {
        let open = owned_ids(machine.open_session_ids());
        let shown = machine.status_online();
        ChargerSlot {
            key,
            meta,
            machine,
            last_mono_ms: now_mono,
            unsaved: fresh,
            must_save: fresh,
            saved_wall_ms: now,
            dirty: false,
            open,
            shown,
            live_now: fresh,
            live_pending: false,
            live_wall_ms: now,
            state_unsent: false,
        }
    }

    /// After a step: refreshes the cached session ids and shown status. Returns the
    /// session ids from before the step when they changed.
    #[allow(clippy::option_option)]
    fn observe(&mut self) -> Option<Option<(String, String)>> {
        let shown = self.machine.status_online();
        if shown != self.shown {
            self.shown = shown;
            self.live_now = true;
        }
        let now = self.machine.open_session_ids();
        if self.open.as_ref().map(|(a, b)| (a.as_str(), b.as_str())) == now {
            return None;
        }
        let before = std::mem::replace(&mut self.open, owned_ids(now));
        Some(before)
    }
}

/// Every charger's slot, found by key once per message; the rest of the batch refers to
/// it by index. One table keyed by a hash of (site, charger), holding the hash beside the
/// index: a lookup probes once and compares the key only against the slot it is about to
/// use anyway (a map of maps cost two probes and two key compares per message, each a
/// likely cache miss at 10k chargers). A message's topic finds its slot by `&str`.
#[derive(Default)]
struct Chargers {
    index: hashbrown::HashTable<(u64, usize)>,
    /// Boxed: a slot is over a kilobyte, and a `Vec` of them inline would hold up to twice
    /// the chargers' memory in spare capacity after growing (and copy it all to grow).
    #[allow(clippy::vec_box)] // deliberate, see above
    slots: Vec<Box<ChargerSlot>>,
}

fn key_hash(site: &str, charger: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(site.as_bytes());
    // Not a byte a UTF-8 string holds: ("ab", "c") and ("a", "bc") hash apart.
    h.write_u8(0xff);
    h.write(charger.as_bytes());
    h.finish()
}

impl Chargers {
    fn insert(&mut self, slot: ChargerSlot) -> usize {
        if let Some(i) = self.find(&slot.key.site, &slot.key.charger) {
            *self.slots[i] = slot;
            return i;
        }
        let i = self.slots.len();
        let h = key_hash(&slot.key.site, &slot.key.charger);
        self.index.insert_unique(h, (h, i), |&(h, _)| h);
        self.slots.push(Box::new(slot));
        i
    }

    fn find(&self, site: &str, charger: &str) -> Option<usize> {
        let h = key_hash(site, charger);
        let slots = &self.slots;
        self.index
            .find(h, |&(eh, i)| {
                eh == h && {
                    let k = &slots[i].key;
                    k.charger == charger && k.site == site
                }
            })
            .map(|&(_, i)| i)
    }

    fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
    }
}

/// Wall-clock ms from `then` to `now`; a clock stepped backwards counts as long ago, so
/// nothing waits for it to catch up.
fn since(now: i64, then: i64) -> i64 {
    if now < then {
        i64::MAX
    } else {
        now - then
    }
}

/// A plain-telemetry snapshot is due once per `SNAPSHOT_EVERY_MS` window of the charger's
/// own `phase`, within the batch's budget; one twice that old is saved whatever the budget
/// (bounding what a crash rewinds). The phases spread the chargers' windows over the
/// interval: chargers first heard (and saved) in the same second, as all of them are at a
/// start, would otherwise come due together every 10 s, and each such wave of writes was a
/// latency spike.
fn snapshot_due(now: i64, saved: i64, phase: i64, within_budget: bool) -> bool {
    if since(now, saved) >= 2 * SNAPSHOT_EVERY_MS {
        return true;
    }
    let window = |t: i64| (t + phase).div_euclid(SNAPSHOT_EVERY_MS);
    within_budget && window(now) > window(saved)
}

/// How many chargers' timers a batch steps when `elapsed` has passed since the time ticked
/// so far, and how much of `elapsed` that accounts for: every charger once per [`TICK`],
/// spread over the batches in between instead of all 10k in one batch every 500 ms (a
/// stall of milliseconds for whichever message arrived then). A share that rounds down to
/// nothing carries its time to the next batch; a thread that fell a whole round behind
/// ticks everyone once and starts afresh.
fn tick_share(chargers: usize, elapsed: Duration) -> (usize, Duration) {
    if chargers == 0 {
        return (0, elapsed);
    }
    let tick = TICK.as_nanos();
    let share = chargers as u128 * elapsed.as_nanos() / tick;
    if share >= chargers as u128 {
        return (chargers, elapsed);
    }
    let accounted = tick * share / chargers as u128;
    (share as usize, Duration::from_nanos(accounted as u64))
}

/// The slots a share of `share` chargers ticks, from `cursor` on (wrapping round the `n`
/// slots), and the cursor after them. A cursor left beyond `n` (slots cleared and
/// re-registered by a reload) starts over within range.
fn tick_slots(cursor: usize, n: usize, share: usize) -> (impl Iterator<Item = usize>, usize) {
    let start = if n == 0 { 0 } else { cursor % n };
    let share = share.min(n);
    let next = if n == 0 { 0 } else { (start + share) % n };
    ((0..share).map(move |k| (start + k) % n), next)
}

/// Slot `i`'s snapshot phase: consecutive slots (chargers registered together) land
/// `7919 ms` apart modulo the interval, which visits every ms of it (7919 is prime).
fn snapshot_phase(i: usize) -> i64 {
    (i as i64).wrapping_mul(7919).rem_euclid(SNAPSHOT_EVERY_MS)
}

fn owned_ids(ids: Option<(&str, &str)>) -> Option<(String, String)> {
    ids.map(|(a, b)| (a.to_string(), b.to_string()))
}

/// Periodic (plain telemetry) snapshots saved per batch at most: a few, plus one per four
/// messages. When thousands of chargers come due together (they were first heard within
/// the same second) the saves spread over the following batches instead of stalling one;
/// at one message per charger per second this still saves each one every ~10 s, and one
/// skipped until its snapshot is twice that old is saved regardless.
fn snapshots_per_batch(messages: usize) -> usize {
    16 + messages / 4
}

/// Metric handles, resolved once (a labelled macro call per message is a registry lookup).
struct Meters {
    telemetry: metrics::Counter,
    availability: metrics::Counter,
    lounge: metrics::Counter,
    frontdesk: metrics::Counter,
    clock_skew: metrics::Counter,
    out_of_order: metrics::Counter,
    latency: metrics::Histogram,
    sync: metrics::Histogram,
}

impl Meters {
    fn new() -> Self {
        Meters {
            telemetry: metrics::counter!("evlounge_mqtt_messages_total", "kind" => "telemetry"),
            availability: metrics::counter!("evlounge_mqtt_messages_total", "kind" => "availability"),
            lounge: metrics::counter!("evlounge_mqtt_messages_total", "kind" => "lounge"),
            frontdesk: metrics::counter!("evlounge_mqtt_messages_total", "kind" => "frontdesk"),
            clock_skew: metrics::counter!("evlounge_clock_skew_total"),
            out_of_order: metrics::counter!("evlounge_ignored_total", "reason" => "out_of_order"),
            latency: metrics::histogram!("evlounge_processing_latency_seconds"),
            sync: metrics::histogram!("evlounge_commit_sync_seconds"),
        }
    }
}

/// How far behind its receive time a reading older than its charger's last may be and
/// still be written (a charger flushing what it buffered while offline).
const BACKFILL_MS: i64 = 7 * 86_400_000;

/// A charger whose messages decide nothing new (1 Hz telemetry while charging) has its
/// snapshot saved at most this often: the decisions (events, sessions, outbox) are always
/// committed with their batch; what a crash can lose is at most this much of plain
/// telemetry state (latest power and SoC, integrated energy), which the next messages
/// restore.
const SNAPSHOT_EVERY_MS: i64 = 10_000;

/// A batch that decides nothing (plain telemetry: periodic snapshots only) commits without
/// its own fsync (`synchronous = NORMAL`: safe from a crash, and made durable by the next
/// fsync'ed commit); one that decides something (events, sessions, outbox, a state change
/// that must be saved) always with one (`FULL`), and so does the first batch after this
/// long without. What a power cut can lose is then at most this much more of plain
/// telemetry state, on top of [`SNAPSHOT_EVERY_MS`]; never a decision.
const FULL_SYNC_EVERY: Duration = Duration::from_secs(1);

struct ZoneSlot {
    meta: ZoneMeta,
    machine: ZoneMachine,
    /// In `Processor::unsent_states` (see `send_state`).
    state_unsent: bool,
}

pub struct Processor {
    cfg: Arc<Config>,
    conn: Connection,
    chargers: Chargers,
    zones: FxHashMap<ZoneKey, ZoneSlot>,
    /// A charger's plain telemetry reaches the live view when this long has passed since
    /// its last live update: three quarters of min(`mqtt.state_min_interval`, 1 s), so a
    /// charger reporting once per interval (1 Hz, the common case) is shown message by
    /// message, never held back by a few ms of jitter; faster ones are coalesced.
    live_due_ms: i64,
    meters: Meters,
    sink: Option<Box<dyn PointSink>>,
    /// There is a time-series output (the sink may have moved to the ack thread).
    points: bool,
    hook: Option<Box<dyn CommitHook>>,
    adapters: Vec<crate::ingest::Source>,
    live: Arc<Live>,
    out: Option<flume::Sender<OutMsg>>,
    last_log: HashMap<&'static str, Instant>,
    suppressed: HashMap<&'static str, u64>,
    /// Time up to which the chargers' timers have been ticked (see [`tick_share`]).
    last_tick: Instant,
    /// The next charger to tick.
    tick_cursor: usize,
    /// Points from other tasks (notification outcomes) that go through the spool too, and
    /// those taken from it and not yet committed.
    extra_points: Option<flume::Receiver<Point>>,
    extra_held: Vec<Point>,
    /// The batch's pending effects, reused across batches.
    scratch: Pending,
    /// Chargers with telemetry held back from the live view, oldest first (entries whose
    /// charger was shown since are skipped).
    live_queue: std::collections::VecDeque<(usize, i64)>,
    /// Live states the MQTT publisher had no room for, oldest first (see `send_state`).
    unsent_states: Vec<Shown>,
    /// The WAL's size as the checkpointer saw it (see `store::WalWatch`).
    wal: Option<store::WalWatch>,
    /// Where acks go (the broker); none without QoS 1 intake.
    ack_to: Option<AckFn>,
    /// While `run` runs: the ack thread, which writes the spool.
    acker: Option<Acker>,
    /// The connection's `synchronous` setting is FULL (else NORMAL).
    sync_full: bool,
    /// When a FULL commit last went through, and how long a batch may go without one.
    last_full: Instant,
    full_every: Duration,
}

/// What one batch produced before commit.
#[derive(Default)]
struct Pending {
    sessions: BTreeMap<String, (SessionRecord, bool)>,
    events: Vec<(Event, Option<String>)>,
    points: Vec<Point>,
    /// Telemetry points, already line protocol (`line_count` lines), and at commit the
    /// other points after them: what goes to the spool.
    lines: Vec<u8>,
    line_count: usize,
    /// Indices into `Processor::chargers`, each charger once.
    dirty_chargers: Vec<usize>,
    /// Messages in the batch.
    messages: usize,
    dirty_zones: Vec<ZoneKey>,
    frontdesk: Vec<(String, Vec<u8>)>,
}

impl Pending {
    /// Empties it for the next batch, keeping the allocations.
    fn clear(&mut self) {
        self.sessions.clear();
        self.events.clear();
        self.points.clear();
        self.lines.clear();
        self.line_count = 0;
        self.dirty_chargers.clear();
        self.dirty_zones.clear();
        self.frontdesk.clear();
        self.messages = 0;
    }
}

pub const BATCH_MAX: usize = 8192;
pub const TICK: Duration = Duration::from_millis(500);

impl Processor {
    pub fn new(
        cfg: Arc<Config>,
        conn: Connection,
        live: Arc<Live>,
        adapters: Vec<crate::ingest::Source>,
    ) -> Result<Self, StoreError> {
        let live_due_ms = i64::try_from(cfg.mqtt.state_min_interval.as_millis())
            .unwrap_or(i64::MAX)
            .min(1_000)
            * 3
            / 4;
        let mut p = Processor {
            cfg,
            conn,
            chargers: Chargers::default(),
            zones: FxHashMap::default(),
            live_due_ms,
            meters: Meters::new(),
            sink: None,
            points: false,
            hook: None,
            adapters,
            live,
            out: None,
            last_log: HashMap::new(),
            suppressed: HashMap::new(),
            last_tick: Instant::now(),
            tick_cursor: 0,
            extra_points: None,
            extra_held: Vec::new(),
            scratch: Pending::default(),
            live_queue: std::collections::VecDeque::new(),
            unsent_states: Vec::new(),
            wal: None,
            ack_to: None,
            acker: None,
            sync_full: true,
            last_full: Instant::now(),
            full_every: FULL_SYNC_EVERY,
        };
        p.register_configured();
        p.resume()?;
        Ok(p)
    }

    pub fn with_sink(mut self, sink: Box<dyn PointSink>) -> Self {
        self.sink = Some(sink);
        self.points = true;
        self
    }

    pub fn with_wal_watch(mut self, wal: store::WalWatch) -> Self {
        self.wal = Some(wal);
        self
    }

    pub fn with_extra_points(mut self, rx: flume::Receiver<Point>) -> Self {
        self.extra_points = Some(rx);
        self
    }

    pub fn with_hook(mut self, hook: Box<dyn CommitHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    pub fn with_mqtt(mut self, mqtt: MqttHandle, out: flume::Sender<OutMsg>) -> Self {
        let acks = mqtt.clone();
        self.ack_to = Some(Arc::new(move |a: &Ack| acks.ack(a)));
        self.out = Some(out);
        self
    }

    /// Where the acks go instead of the broker (tests).
    pub fn with_acks(mut self, ack: AckFn) -> Self {
        self.ack_to = Some(ack);
        self
    }

    fn register_configured(&mut self) {
        let now = crate::util::time::now_ms();
        for site in &self.cfg.sites {
            for c in &site.chargers {
                let key = ChargerKey {
                    site: c.site.clone(),
                    charger: c.charger.clone(),
                };
                self.chargers.insert(ChargerSlot::new(
                    key,
                    c.clone(),
                    ChargerMachine::new(c),
                    now,
                    crate::util::time::mono_ms(),
                    false,
                ));
            }
            for z in &site.zones {
                let key = ZoneKey {
                    site: z.site.clone(),
                    zone: z.zone.clone(),
                };
                self.zones.insert(
                    key,
                    ZoneSlot {
                        machine: ZoneMachine::new(z),
                        meta: z.clone(),
                        state_unsent: false,
                    },
                );
            }
        }
    }

    /// Resumes every saved machine (open sessions included) from the store.
    fn resume(&mut self) -> Result<(), StoreError> {
        let now = crate::util::time::now_ms();
        let now_mono = crate::util::time::mono_ms();
        let mut resumed = 0usize;
        for (site, charger, json) in store::load_charger_states(&self.conn)? {
            let key = ChargerKey { site, charger };
            let meta = self.charger_meta(&key);
            match serde_json::from_str::<ChargerMachine>(&json) {
                Ok(machine) => {
                    self.chargers
                        .insert(ChargerSlot::new(key, meta, machine, now, now_mono, false));
                    resumed += 1;
                }
                Err(e) => {
                    tracing::warn!(site = %key.site, charger = %key.charger, error = %e, "saved charger state unreadable; starting fresh")
                }
            }
        }
        for (site, zone, json) in store::load_zone_states(&self.conn)? {
            let key = ZoneKey { site, zone };
            let meta = self.zone_meta(&key);
            match serde_json::from_str::<ZoneMachine>(&json) {
                Ok(machine) => {
                    self.zones.insert(
                        key,
                        ZoneSlot {
                            meta,
                            machine,
                            state_unsent: false,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(site = %key.site, zone = %key.zone, error = %e, "saved zone state unreadable; starting fresh")
                }
            }
        }
        if resumed > 0 {
            tracing::info!(chargers = resumed, "resumed charger state from the store");
        }
        let chargers = self
            .chargers
            .slots
            .iter()
            .map(|s| s.machine.live(&s.meta))
            .collect();
        let zones = self
            .zones
            .values()
            .map(|s| s.machine.live(&s.meta))
            .collect();
        self.live.update(chargers, zones);
        Ok(())
    }

    fn charger_meta(&self, key: &ChargerKey) -> ChargerMeta {
        self.cfg
            .site(&key.site)
            .and_then(|s| s.chargers.iter().find(|c| c.charger == key.charger))
            .cloned()
            .unwrap_or_else(|| {
                ChargerMeta::auto(
                    &key.site,
                    &key.charger,
                    self.cfg.site_thresholds(&key.site).clone(),
                )
            })
    }

    fn zone_meta(&self, key: &ZoneKey) -> ZoneMeta {
        self.cfg
            .site(&key.site)
            .and_then(|s| s.zones.iter().find(|z| z.zone == key.zone))
            .cloned()
            .unwrap_or_else(|| ZoneMeta {
                site: key.site.clone(),
                zone: key.zone.clone(),
                name: key.zone.clone(),
                capacity: None,
                thresholds: self.cfg.site_thresholds(&key.site).clone(),
            })
    }

    /// Runs until the inbound channel is closed and drained.
    pub fn run(mut self, rx: flume::Receiver<Inbound>) {
        if let Some(ack) = self.ack_to.clone() {
            match Acker::start(self.sink.take(), ack) {
                Ok(a) => self.acker = Some(a),
                Err(e) => {
                    // Not expected (a thread spawn); the broker would stop sending without
                    // acks, so there is nothing to run.
                    tracing::error!(error = %e, "starting the ack thread failed");
                    return;
                }
            }
        }
        self.show_all();
        let mut batch: Vec<Inbound> = Vec::with_capacity(BATCH_MAX);
        // Messages of a batch that panicked, retried one at a time to find the poison one.
        let mut singles: std::collections::VecDeque<Inbound> = std::collections::VecDeque::new();
        let mut closed = false;
        let mut failures = 0u32;
        let mut backoff =
            crate::util::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            // A batch whose commit failed is retried as it is (its messages stay unacked, in
            // order, and later messages wait behind it: backpressure, never reordering).
            if batch.is_empty() {
                if let Some(m) = singles.pop_front() {
                    batch.push(m);
                } else if !closed {
                    match rx.recv_timeout(TICK) {
                        Ok(m) => {
                            batch.push(m);
                            while batch.len() < BATCH_MAX {
                                match rx.try_recv() {
                                    Ok(m) => batch.push(m),
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(flume::RecvTimeoutError::Timeout) => {}
                        Err(flume::RecvTimeoutError::Disconnected) => closed = true,
                    }
                }
                if closed && batch.is_empty() {
                    break;
                }
            }
            let tick_due = self.last_tick.elapsed() >= TICK;
            if batch.is_empty() && !tick_due {
                continue;
            }
            let started = Instant::now();
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.process(&mut batch)));
            if self.acker.as_ref().is_some_and(Acker::is_gone) {
                // It took the spool with it and nothing can be acked: stop; unacked, the
                // messages come again.
                tracing::error!("the ack thread is gone; stopping the commit thread");
                break;
            }
            match result {
                Ok(Ok(())) => {
                    batch.clear();
                    failures = 0;
                    backoff.reset();
                }
                Ok(Err(e)) => {
                    failures += 1;
                    metrics::counter!("evlounge_commit_failures_total").increment(1);
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::error!(error = %e, failures, "commit failed; retrying the batch (its messages stay unacked)");
                    }
                    if let Err(e) = self.reload() {
                        tracing::error!(error = %e, "reloading state after a failed commit failed");
                    }
                    if closed && failures >= 5 {
                        // Shutting down: leave them unacked; the broker redelivers them to
                        // the next run, which decides them from the committed state.
                        tracing::error!(
                            messages = batch.len(),
                            "giving up on the batch at shutdown"
                        );
                        break;
                    }
                    std::thread::sleep(backoff.next_delay());
                }
                Err(_) => {
                    // A panic is a bug met by some input: find that message and skip it
                    // (acked, counted) instead of crash-looping on its redelivery.
                    metrics::counter!("evlounge_commit_failures_total").increment(1);
                    if let Err(e) = self.reload() {
                        tracing::error!(error = %e, "reloading state after a panic failed");
                    }
                    if batch.len() == 1 {
                        tracing::error!(topic = %batch[0].topic, "a message made the decider panic; skipped");
                        metrics::counter!("evlounge_decode_errors_total", "reason" => "panic", "adapter" => "evlounge").increment(1);
                        let acks = batch[0].ack.take().into_iter().collect();
                        self.acknowledge(acks, Vec::new());
                    } else {
                        tracing::error!(
                            messages = batch.len(),
                            "the decider panicked; retrying the batch one message at a time"
                        );
                        // The panic may have come after the batch's commit, with its lines
                        // not yet handed over: the retry writes them again.
                        for mut m in batch.drain(..).rev() {
                            m.redelivered = true;
                            singles.push_front(m);
                        }
                    }
                    batch.clear();
                }
            }
            metrics::histogram!("evlounge_batch_seconds").record(started.elapsed().as_secs_f64());
        }
        // Points reported since the last batch (notification outcomes): one more batch
        // takes them to the spool.
        let reported = self.extra_points.as_ref().is_some_and(|rx| !rx.is_empty());
        if reported || !self.extra_held.is_empty() {
            if let Err(e) = self.process(&mut []) {
                tracing::error!(error = %e, "writing the last reported points at shutdown failed");
            }
        }
        if let Err(e) = self.save_unsaved() {
            tracing::error!(error = %e, "saving charger state at shutdown failed");
        }
        self.hand_over_unsent(Duration::from_secs(2));
        if let Some(mut acker) = self.acker.take() {
            acker.finish();
        }
        tracing::info!("commit thread drained");
    }

    /// Saves every snapshot not saved since its last change (clean shutdown).
    fn save_unsaved(&mut self) -> Result<(), StoreError> {
        self.set_full(true)?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for slot in self.chargers.slots.iter_mut().filter(|s| s.unsaved) {
            let json = serde_json::to_string(&slot.machine)?;
            store::save_charger_state(&tx, &slot.key.site, &slot.key.charger, &json)?;
            slot.unsaved = false;
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets the connection's `synchronous` (outside a transaction only; SQLite refuses it
    /// inside one).
    fn set_full(&mut self, full: bool) -> Result<(), StoreError> {
        if full != self.sync_full {
            self.conn
                .pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
            self.sync_full = full;
        }
        Ok(())
    }

    /// After a failed commit the in-memory machines are ahead of the store: reload them.
    fn reload(&mut self) -> Result<(), StoreError> {
        self.chargers.clear();
        self.live_queue.clear();
        // Its slot indices are about to mean other chargers; `show_all` covers them.
        self.unsent_states.clear();
        self.zones.clear();
        self.register_configured();
        self.resume()?;
        self.show_all();
        Ok(())
    }

    fn process(&mut self, batch: &mut [Inbound]) -> Result<(), StoreError> {
        let now_wall = crate::util::time::now_ms();
        let started = Instant::now();
        // Left cleared by the previous batch (or empty, after a panic took it).
        let mut pending = std::mem::take(&mut self.scratch);
        pending.messages = batch.len();
        for m in batch.iter() {
            self.handle(m, &mut pending);
        }
        let decided = started.elapsed();
        let ticked_chargers = self.tick(crate::util::time::mono_ms(), &mut pending);
        self.release_held_back(now_wall, &mut pending);
        self.retry_states();
        let ticked = started.elapsed();
        // Kept until a commit takes them: a failed one would lose them (nothing else
        // sends them again).
        if let Some(rx) = &self.extra_points {
            let room = 10_000usize.saturating_sub(self.extra_held.len());
            self.extra_held.extend(rx.try_iter().take(room));
        }
        pending.points.extend(self.extra_held.iter().cloned());
        let committed = self.commit(&mut pending, now_wall);
        if committed.is_ok() {
            self.extra_held.clear();
        }
        let dirty = pending.dirty_chargers.len();
        let points = pending.line_count;
        let lines = match &committed {
            Ok(t) if t.handed => {
                let capacity = pending.lines.capacity();
                std::mem::replace(&mut pending.lines, Vec::with_capacity(capacity))
            }
            _ => Vec::new(),
        };
        pending.clear();
        self.scratch = pending;
        let times = committed?;
        let total = started.elapsed();
        if total >= Duration::from_millis(10) {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            tracing::debug!(
                messages = batch.len(),
                dirty,
                points,
                ticked = ticked_chargers,
                decide_ms = ms(decided),
                tick_ms = ms(ticked - decided),
                body_ms = ms(times.body),
                encode_ms = ms(times.encode),
                sync_ms = ms(times.sync),
                spool_sync_ms = ms(times.spool_sync),
                show_ms = ms(times.show),
                total_ms = ms(total),
                "slow batch"
            );
        }
        let acks = batch.iter_mut().filter_map(|m| m.ack.take()).collect();
        self.acknowledge(acks, lines);
        let now = crate::util::time::now_ms();
        for m in batch.iter() {
            self.meters
                .latency
                .record((now - m.recv_ms).max(0) as f64 / 1000.0);
        }
        Ok(())
    }

    /// Acks a committed batch's messages once its spool `lines` are written and synced:
    /// through the ack thread; without one (`process` outside `run`), `commit` wrote them
    /// and there are none left.
    fn acknowledge(&mut self, acks: Vec<Ack>, lines: Vec<u8>) {
        if let Some(acker) = &self.acker {
            // When the thread is gone `run` stops after this batch.
            let _ = acker.send(lines, acks);
            return;
        }
        debug_assert!(lines.is_empty());
        if let Some(ack) = &self.ack_to {
            for a in &acks {
                ack(a);
            }
        }
    }

    fn reject(&mut self, m: &Inbound, adapter: &'static str, e: &DecodeError) {
        let reason = e.reason();
        metrics::counter!("evlounge_decode_errors_total", "reason" => reason, "adapter" => adapter)
            .increment(1);
        let now = Instant::now();
        let due = self
            .last_log
            .get(reason)
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(10));
        if due {
            let suppressed = self.suppressed.remove(reason).unwrap_or(0);
            // The topic is logged, never the payload (it may carry personal data).
            tracing::warn!(reason, adapter, topic = %m.topic, error = %truncate(&e.to_string(), 200), suppressed, "message rejected");
            self.last_log.insert(reason, now);
        } else {
            *self.suppressed.entry(reason).or_default() += 1;
        }
        if let (Some(dl), Some(out)) = (&self.cfg.mqtt.dead_letter_topic, &self.out) {
            let _ = out.try_send(OutMsg::DeadLetter {
                topic: format!("{dl}/{reason}"),
                payload: m.payload.to_vec(),
            });
        }
    }

    fn handle(&mut self, m: &Inbound, p: &mut Pending) {
        if m.payload.len() > self.cfg.mqtt.max_payload_bytes {
            self.reject(m, "evlounge", &DecodeError::Oversized(m.payload.len()));
            return;
        }
        let cfg = self.cfg.clone();
        let inputs: Vec<Input> = match decode::route(&cfg.mqtt.prefix, &m.topic) {
            Some(Route::Telemetry { site, charger }) => {
                self.meters.telemetry.increment(1);
                match decode::telemetry(&m.payload, m.recv_ms) {
                    Ok(d) => {
                        if d.clock_skew {
                            self.meters.clock_skew.increment(1);
                        }
                        // The common case, without the key (two strings) an `Input` needs.
                        let i = match self.chargers.find(site, charger) {
                            Some(i) => i,
                            None => self.charger_slot(
                                ChargerKey {
                                    site: site.to_string(),
                                    charger: charger.to_string(),
                                },
                                m,
                            ),
                        };
                        self.telemetry(i, &d.value, m, p);
                        return;
                    }
                    Err(e) => {
                        self.reject(m, "evlounge", &e);
                        return;
                    }
                }
            }
            Some(Route::Availability { site, charger }) => {
                self.meters.availability.increment(1);
                match decode::availability(&m.payload) {
                    Ok(online) => vec![Input::Availability {
                        key: ChargerKey {
                            site: site.to_string(),
                            charger: charger.to_string(),
                        },
                        online,
                        ts: m.recv_ms,
                    }],
                    Err(e) => {
                        self.reject(m, "evlounge", &e);
                        return;
                    }
                }
            }
            Some(Route::Lounge { site, zone, sensor }) => {
                self.meters.lounge.increment(1);
                match decode::lounge(&m.payload, m.recv_ms) {
                    Ok(d) => {
                        if d.clock_skew {
                            self.meters.clock_skew.increment(1);
                        }
                        vec![Input::Lounge {
                            key: ZoneKey {
                                site: site.to_string(),
                                zone: zone.to_string(),
                            },
                            sensor: sensor.to_string(),
                            r: d.value,
                        }]
                    }
                    Err(e) => {
                        self.reject(m, "evlounge", &e);
                        return;
                    }
                }
            }
            Some(Route::FrontdeskLink { site }) => {
                self.meters.frontdesk.increment(1);
                p.frontdesk.push((site.to_string(), m.payload.to_vec()));
                return;
            }
            None => match self.decode_adapters(m) {
                Some(Ok(inputs)) => inputs,
                Some(Err((name, e))) => {
                    self.reject(m, name, &e);
                    return;
                }
                None => {
                    self.reject(m, "evlounge", &DecodeError::UnknownTopic);
                    return;
                }
            },
        };
        for input in inputs {
            self.apply(input, m, p);
        }
    }

    fn decode_adapters(
        &mut self,
        m: &Inbound,
    ) -> Option<Result<Vec<Input>, (&'static str, DecodeError)>> {
        for src in self.adapters.iter_mut() {
            if let Some(r) = src.decode(&m.topic, &m.payload, m.recv_ms) {
                let name = src.name();
                metrics::counter!("evlounge_mqtt_messages_total", "kind" => name).increment(1);
                return Some(match r {
                    Ok(mut inputs) => {
                        // The contract decoder's clock-skew rule holds for adapters too: a
                        // station clock in 2036 must not move the charger's clock there.
                        let skewed =
                            crate::ingest::sources::replace_future_times(&mut inputs, m.recv_ms);
                        self.meters.clock_skew.increment(skewed);
                        Ok(inputs)
                    }
                    Err(e) => Err((name, e)),
                });
            }
        }
        None
    }

    /// The index of the charger's slot, registered on first sight.
    fn charger_slot(&mut self, key: ChargerKey, m: &Inbound) -> usize {
        if let Some(i) = self.chargers.find(&key.site, &key.charger) {
            return i;
        }
        let meta = self.charger_meta(&key);
        tracing::info!(site = %key.site, charger = %key.charger, "unknown charger seen; auto-registered");
        metrics::counter!("evlounge_auto_registered_total", "kind" => "charger").increment(1);
        let machine = ChargerMachine::new(&meta);
        self.chargers.insert(ChargerSlot::new(
            key,
            meta,
            machine,
            m.recv_ms,
            m.recv_mono_ms,
            true,
        ))
    }

    fn apply(&mut self, input: Input, m: &Inbound, p: &mut Pending) {
        let recv_ms = m.recv_ms;
        match input {
            Input::Telemetry { key, t } => {
                let i = self.charger_slot(key, m);
                self.telemetry(i, &t, m, p);
            }
            Input::Availability { key, online, ts } => {
                let i = self.charger_slot(key, m);
                let slot = &mut self.chargers.slots[i];
                // Availability carries no time of its own (`ts` is the receive time): place
                // it on this charger's message clock, advanced by the wall time since its
                // last message, so a replayed or simulated stream is not thrown into the
                // present (which would look like a long silence).
                let ts = match slot.machine.last_ts() {
                    Some(last) if ts == recv_ms => {
                        last + (m.recv_mono_ms - slot.last_mono_ms).max(0)
                    }
                    // A charger not heard from yet starts online: an `online` then says
                    // nothing, and placing it at the receive time would set its clock.
                    None if online => return,
                    _ => ts,
                };
                let step = slot
                    .machine
                    .step(&slot.meta, ChargerInput::Availability { online, ts });
                if !step.applied {
                    return;
                }
                slot.last_mono_ms = m.recv_mono_ms;
                slot.unsaved = true;
                slot.must_save = true;
                slot.live_now = true;
                settle(slot, i, step.effects, p);
            }
            Input::Lounge { key, sensor, r } => {
                if !self.zones.contains_key(&key) {
                    let meta = self.zone_meta(&key);
                    tracing::info!(site = %key.site, zone = %key.zone, "unknown lounge zone seen; auto-registered");
                    metrics::counter!("evlounge_auto_registered_total", "kind" => "zone")
                        .increment(1);
                    self.zones.insert(
                        key.clone(),
                        ZoneSlot {
                            machine: ZoneMachine::new(&meta),
                            meta,
                            state_unsent: false,
                        },
                    );
                }
                let Some(slot) = self.zones.get_mut(&key) else {
                    return;
                };
                let step = slot.machine.step(&slot.meta, &sensor, &r);
                if !step.applied {
                    self.meters.out_of_order.increment(1);
                    return;
                }
                let live = slot.machine.live(&slot.meta);
                let cap = live.capacity.map(f64::from);
                let occ = f64::from(live.occupancy);
                p.points.push(
                    Point::new("lounge", r.ts)
                        .tag("site", key.site.clone())
                        .tag("zone", key.zone.clone())
                        .field("occupancy", Some(occ))
                        .field("capacity", cap)
                        .field("occupancy_ratio", cap.filter(|c| *c > 0.0).map(|c| occ / c))
                        .field("co2_ppm", r.co2_ppm)
                        .field("temperature_c", r.temperature_c)
                        .field("humidity_pct", r.humidity_pct),
                );
                for e in step.events {
                    p.events.push((e, None));
                }
                p.dirty_zones.push(key);
            }
        }
    }

    /// Applies telemetry to the charger in slot `i`; its point is encoded straight into the
    /// batch's line-protocol buffer (when there is a time-series output at all).
    ///
    /// A message no newer than the charger's last one (a charger flushing readings it
    /// buffered while offline, a duplicate, a redelivery) decides nothing, but its point is
    /// written all the same: it is a reading at its own time, and the TSDB overwrites the
    /// same series and timestamp. For a redelivery that matters: the commit that applied it
    /// may have reached the store and its lines not the spool (a crash or power cut after
    /// the commit, before the ack thread wrote and synced them; see `commit`), whether or
    /// not the broker marked it DUP.
    fn telemetry(&mut self, i: usize, t: &Telemetry, m: &Inbound, p: &mut Pending) {
        let slot = &mut self.chargers.slots[i];
        let step = slot.machine.step(&slot.meta, ChargerInput::Telemetry(t));
        if step.applied {
            slot.last_mono_ms = m.recv_mono_ms;
        } else {
            self.meters.out_of_order.increment(1);
        }
        // Within the backfill window only: a charger whose clock was reset (to 1970, say)
        // after good readings would otherwise write each reading far in the past, which a
        // TSDB refuses (beyond its retention) one rejected batch after another.
        let write = step.applied || m.redelivered || t.ts >= m.recv_ms - BACKFILL_MS;
        if self.points && write {
            let status = t.status.map(|s| s.as_str()).unwrap_or("unknown");
            let mut line = Line::new(&mut p.lines, "charger");
            line.tag("site", &slot.key.site)
                .tag("charger", &slot.key.charger)
                .tag("status", status)
                .field("power_kw", t.power_kw)
                .field("meter_kwh", t.meter_kwh)
                .field("session_kwh", t.session_kwh)
                .field("soc_pct", t.soc_pct)
                .field("voltage_v", t.voltage_v)
                .field("current_a", t.current_a)
                .field("temperature_c", t.temperature_c);
            p.line_count += usize::from(line.finish(t.ts));
        }
        if step.applied {
            slot.unsaved = true;
            settle(slot, i, step.effects, p);
        }
    }

    /// Shows held-back telemetry whose interval has passed, oldest first, a bounded number
    /// per batch (so thousands coming due together spread over a few batches instead of
    /// stalling one).
    fn release_held_back(&mut self, now_wall: i64, p: &mut Pending) {
        let due = self.live_due_ms;
        let mut budget = 256 + p.messages;
        while budget > 0 {
            let Some(&(i, queued_at)) = self.live_queue.front() else {
                break;
            };
            let Some(slot) = self.chargers.slots.get_mut(i) else {
                self.live_queue.pop_front();
                continue;
            };
            if !slot.live_pending || slot.live_wall_ms != queued_at {
                // Shown by a later message meanwhile (a newer entry may follow).
                self.live_queue.pop_front();
                continue;
            }
            if since(now_wall, slot.live_wall_ms) < due {
                break;
            }
            self.live_queue.pop_front();
            budget -= 1;
            slot.live_now = true;
            if !slot.dirty {
                slot.dirty = true;
                p.dirty_chargers.push(i);
            }
        }
    }

    /// Steps the timers of this batch's share of the chargers (see [`tick_share`]); returns
    /// how many.
    fn tick(&mut self, now_mono: i64, p: &mut Pending) -> usize {
        let n = self.chargers.slots.len();
        let (share, accounted) = tick_share(n, self.last_tick.elapsed());
        self.last_tick += accounted;
        let (slots, next) = tick_slots(self.tick_cursor, n, share);
        self.tick_cursor = next;
        for i in slots {
            let slot = &mut self.chargers.slots[i];
            let Some(last_ts) = slot.machine.last_ts() else {
                continue;
            };
            let now = last_ts + (now_mono - slot.last_mono_ms).max(0);
            let step = slot.machine.step(&slot.meta, ChargerInput::Tick { now });
            if !step.effects.is_empty() {
                slot.unsaved = true;
                slot.must_save = true;
                settle(slot, i, step.effects, p);
            }
        }
        share
    }

    /// Every charger and zone heard from (resumed from the store), to the MQTT publisher:
    /// at start (a broker that lost its retained messages while the daemon was down would
    /// otherwise show nothing for a charger until its next message; for an offline one,
    /// never) and after a reload (which forgets what was waiting). One never heard from
    /// has no retained state yet, as before its first message.
    fn show_all(&mut self) {
        if self.out.is_none() {
            return;
        }
        for i in 0..self.chargers.slots.len() {
            if self.chargers.slots[i].machine.last_ts().is_some() {
                self.send_state(Shown::Charger(i));
            }
        }
        let zones: Vec<ZoneKey> = self
            .zones
            .iter()
            .filter(|(_, z)| z.machine.last_ts().is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in zones {
            self.send_state(Shown::Zone(key));
        }
    }

    /// The publisher's message for `what`; `None` when it is gone (not expected: slots
    /// and zones are only cleared by a reload, which also forgets `unsent_states`).
    fn state_msg(&self, what: &Shown) -> Option<OutMsg> {
        let prefix = &self.cfg.mqtt.prefix;
        Some(match what {
            Shown::Charger(i) => {
                let key = &self.chargers.slots.get(*i)?.key;
                OutMsg::State {
                    topic: format!("{prefix}/{}/state/charger/{}", key.site, key.charger),
                    key: StateKey::Charger(key.site.clone(), key.charger.clone()),
                }
            }
            Shown::Zone(key) => OutMsg::State {
                topic: format!("{prefix}/{}/state/lounge/{}", key.site, key.zone),
                key: StateKey::Zone(key.site.clone(), key.zone.clone()),
            },
        })
    }

    /// Whether `what` waits in `unsent_states`.
    fn is_unsent(&self, what: &Shown) -> bool {
        match what {
            Shown::Charger(i) => self.chargers.slots.get(*i).is_some_and(|s| s.state_unsent),
            Shown::Zone(key) => self.zones.get(key).is_some_and(|z| z.state_unsent),
        }
    }

    fn set_unsent(&mut self, what: &Shown, unsent: bool) {
        match what {
            Shown::Charger(i) => {
                if let Some(s) = self.chargers.slots.get_mut(*i) {
                    s.state_unsent = unsent;
                }
            }
            Shown::Zone(key) => {
                if let Some(z) = self.zones.get_mut(key) {
                    z.state_unsent = unsent;
                }
            }
        }
    }

    /// Tells the MQTT publisher that `what` has a new live state (it renders the retained
    /// state from the live view when due). With the publisher's queue full, it is kept
    /// (once) and sent again by [`Processor::retry_states`]: dropped, a charger that then
    /// went quiet would show a stale retained state until its next change.
    fn send_state(&mut self, what: Shown) {
        // Already waiting: the publisher renders the latest state anyway.
        if self.is_unsent(&what) {
            return;
        }
        let (Some(out), Some(msg)) = (&self.out, self.state_msg(&what)) else {
            return;
        };
        if let Err(flume::TrySendError::Full(_)) = out.try_send(msg) {
            self.set_unsent(&what, true);
            self.unsent_states.push(what);
        }
    }

    /// Sends the states the publisher had no room for, oldest first, until it has no room
    /// again.
    fn retry_states(&mut self) {
        if self.unsent_states.is_empty() {
            return;
        }
        let Some(out) = self.out.clone() else {
            return;
        };
        let mut done = 0;
        for what in &self.unsent_states {
            let Some(msg) = self.state_msg(what) else {
                done += 1;
                continue;
            };
            match out.try_send(msg) {
                Ok(()) => done += 1,
                Err(flume::TrySendError::Full(_)) => break,
                // The publisher stopped (shutting down): nothing to send to.
                Err(flume::TrySendError::Disconnected(_)) => {
                    done = self.unsent_states.len();
                    break;
                }
            }
        }
        let sent: Vec<Shown> = self.unsent_states.drain(..done).collect();
        for what in &sent {
            self.set_unsent(what, false);
        }
    }

    /// At exit: what still waits for the publisher, handed over while it drains its queue
    /// (it stops after the commit thread), for at most `within`.
    fn hand_over_unsent(&mut self, within: Duration) {
        let Some(out) = self.out.clone() else {
            return;
        };
        let deadline = Instant::now() + within;
        for what in std::mem::take(&mut self.unsent_states) {
            self.set_unsent(&what, false);
            if let Some(msg) = self.state_msg(&what) {
                if out.send_deadline(msg, deadline).is_err() {
                    tracing::warn!("the MQTT publisher took no more retained state at exit");
                    break;
                }
            }
        }
    }

    /// Commits the batch; returns where its time went.
    fn commit(&mut self, p: &mut Pending, now_wall: i64) -> Result<CommitTimes, StoreError> {
        p.dirty_zones.sort();
        p.dirty_zones.dedup();
        if p.sessions.is_empty()
            && p.events.is_empty()
            && p.dirty_chargers.is_empty()
            && p.dirty_zones.is_empty()
            && p.frontdesk.is_empty()
            && p.points.is_empty()
            && p.lines.is_empty()
        {
            return Ok(CommitTimes::default());
        }
        let started = Instant::now();
        // A batch's lines go to the ack thread after its commit: it appends and syncs them
        // (one fdatasync for the batches that came meanwhile) and then acks the batch; the
        // events go out, and the next batch starts, without waiting for the spool. Should
        // the commit be durable and the lines not (a crash or power cut in between), the
        // batch was not acked, and its redelivery writes the lines again (`telemetry`).
        // What a redelivery cannot write again (session summaries, lounge readings,
        // notification outcomes: `p.points`) is made durable before the commit (and before
        // its transaction takes the store's write lock), with the batch's other lines: if
        // the commit then fails, the batch is decided again and its lines appended again,
        // which the TSDB overwrites (same series and timestamp).
        for (s, _) in p.sessions.values().filter(|(s, _)| s.ended.is_some()) {
            p.points.push(session_point(s));
        }
        let durable_first = !p.points.is_empty();
        if self.points {
            p.line_count += timeseries::encode_points(&p.points, &mut p.lines);
        }
        let encode = started.elapsed();
        let mut handed = false;
        if !p.lines.is_empty() {
            match (&self.acker, self.sink.as_mut()) {
                (Some(acker), _) if durable_first => {
                    acker.write_durably(std::mem::take(&mut p.lines))?;
                }
                (Some(_), _) => handed = true,
                (None, Some(sink)) => {
                    sink.append(&p.lines)?;
                    sink.sync()?;
                }
                (None, None) => {}
            }
        }
        let before_tx = started.elapsed();
        let spool_sync = before_tx - encode;
        let decides = !p.sessions.is_empty()
            || !p.events.is_empty()
            || !p.frontdesk.is_empty()
            || !p.dirty_zones.is_empty()
            || p.dirty_chargers.iter().any(|&i| {
                let slot = &self.chargers.slots[i];
                slot.unsaved && slot.must_save
            });
        let full = decides || self.last_full.elapsed() >= self.full_every;
        self.set_full(full)?;
        let mut new_events: Vec<(i64, &Event)> = Vec::new();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Front-desk links first: a link that arrives with the plug-in binds to that session.
        if let Some(h) = self.hook.as_mut() {
            for (site, payload) in &p.frontdesk {
                h.on_frontdesk(&tx, site, payload, now_wall);
            }
        }
        for (s, _) in p.sessions.values() {
            let stored = store::stored_id_tag(&tx, &s.session_key)?;
            let opened = stored.is_none();
            let tagged = !opened && s.id_tag.is_some() && stored.flatten() != s.id_tag;
            store::upsert_session(&tx, s)?;
            if let Some(h) = self.hook.as_mut() {
                h.on_session(&tx, s, opened, tagged, now_wall)?;
            }
        }
        for (e, session_key) in &p.events {
            if let Some(seq) = store::insert_event(&tx, e, session_key.as_deref())? {
                if let Some(h) = self.hook.as_mut() {
                    h.on_event(&tx, e, session_key.as_deref(), now_wall)?;
                }
                new_events.push((seq, e));
            } else {
                metrics::counter!("evlounge_events_duplicate_total").increment(1);
            }
        }
        if let Some(h) = self.hook.as_mut() {
            for (s, _) in p.sessions.values().filter(|(s, _)| s.ended.is_some()) {
                h.on_session_closed(&tx, s, now_wall)?;
            }
        }
        let mut saved = Vec::new();
        let mut periodic = 0usize;
        let budget = snapshots_per_batch(p.messages);
        for &i in &p.dirty_chargers {
            let slot = &self.chargers.slots[i];
            let due = slot.unsaved
                && (slot.must_save
                    || snapshot_due(
                        now_wall,
                        slot.saved_wall_ms,
                        snapshot_phase(i),
                        periodic < budget,
                    ));
            if due {
                periodic += usize::from(!slot.must_save);
                let json = serde_json::to_string(&slot.machine)?;
                store::save_charger_state(&tx, &slot.key.site, &slot.key.charger, &json)?;
                saved.push(i);
            }
        }
        for key in &p.dirty_zones {
            if let Some(slot) = self.zones.get(key) {
                let json = serde_json::to_string(&slot.machine)?;
                store::save_zone_state(&tx, &key.site, &key.zone, &json)?;
            }
        }
        let body = started.elapsed() - before_tx;
        let syncing = Instant::now();
        tx.commit()?;
        if full {
            self.last_full = Instant::now();
        }
        let sync = syncing.elapsed();
        self.meters.sync.record(sync.as_secs_f64());
        for i in saved {
            let slot = &mut self.chargers.slots[i];
            slot.unsaved = false;
            slot.must_save = false;
            slot.saved_wall_ms = now_wall;
        }
        if let Some(h) = self.hook.as_mut() {
            h.after_commit();
        }

        // Everything below reads what was committed.
        let shown_from = Instant::now();
        let prefix = &self.cfg.mqtt.prefix;
        for (seq, e) in &new_events {
            metrics::counter!("evlounge_events_total", "kind" => e.kind.as_str()).increment(1);
            let payload = e.to_json().to_string();
            tracing::info!(kind = e.kind.as_str(), event_id = %e.event_id, site = %e.site, subject = %e.charger.as_deref().or(e.zone.as_deref()).unwrap_or(""), "event");
            self.live
                .publish_event(*seq, e.kind.as_str(), payload.clone());
            if let Some(out) = &self.out {
                // When the publisher is behind, the event stays unpublished in the store
                // and its sweep picks it up.
                let _ = out.try_send(OutMsg::Event(EventOut {
                    seq: *seq,
                    topic: format!("{prefix}/{}/events/{}", e.site, e.kind.as_str()),
                    payload,
                    committed: Instant::now(),
                }));
            }
        }
        // Chargers whose change decides something are shown at once; plain telemetry at most
        // once per `live_due_ms` per charger (`release_held_back` shows what was held back).
        let mut shown = Vec::new();
        let mut chargers = Vec::new();
        for &i in &p.dirty_chargers {
            let slot = &mut self.chargers.slots[i];
            slot.dirty = false;
            if slot.live_now || since(now_wall, slot.live_wall_ms) >= self.live_due_ms {
                slot.live_now = false;
                slot.live_pending = false;
                slot.live_wall_ms = now_wall;
                chargers.push(slot.machine.live(&slot.meta));
                shown.push(i);
            } else if !slot.live_pending {
                slot.live_pending = true;
                self.live_queue.push_back((i, slot.live_wall_ms));
            }
        }
        let zones = p
            .dirty_zones
            .iter()
            .filter_map(|k| self.zones.get(k).map(|s| s.machine.live(&s.meta)))
            .collect();
        // The live view first: the publisher renders retained state from it.
        self.live.update(chargers, zones);
        for i in shown {
            self.send_state(Shown::Charger(i));
        }
        for key in p.dirty_zones.drain(..) {
            self.send_state(Shown::Zone(key));
        }
        let show = shown_from.elapsed();
        if let Some(wal) = &self.wal {
            if wal.load(std::sync::atomic::Ordering::Relaxed) > store::WAL_RESET_PAGES {
                wal.store(0, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = store::checkpoint(&self.conn) {
                    tracing::warn!(error = %e, "checkpoint after commit failed");
                }
            }
        }
        Ok(CommitTimes {
            encode,
            spool_sync,
            body,
            sync,
            show,
            handed,
        })
    }
}

/// Where a commit's time went (for the slow-batch log): the points' encoding, the spool's
/// append and fdatasync when the batch waited for them, the transaction's statements, the
/// COMMIT, and the publishing afterwards. And whether the batch's lines are left in it for
/// the ack thread (`handed`).
#[derive(Default, Clone, Copy)]
struct CommitTimes {
    encode: Duration,
    spool_sync: Duration,
    body: Duration,
    sync: Duration,
    show: Duration,
    handed: bool,
}

/// After a charger's step: notes what changed, collects its effects (events tied to their
/// session through the ids before and after the step), lists the charger as dirty.
fn settle(slot: &mut ChargerSlot, i: usize, effects: Vec<Effect>, p: &mut Pending) {
    let moved = slot.observe();
    if moved.is_some() || !effects.is_empty() {
        slot.must_save = true;
        slot.live_now = true;
        let before = moved.unwrap_or_else(|| slot.open.clone());
        collect(effects, &[before, slot.open.clone()], p);
    }
    if !slot.dirty {
        slot.dirty = true;
        p.dirty_chargers.push(i);
    }
}

fn collect(effects: Vec<Effect>, known: &[Option<(String, String)>], p: &mut Pending) {
    let mut keys: Vec<(String, String)> = known.iter().flatten().cloned().collect();
    for eff in &effects {
        if let Effect::Session(s) = eff {
            keys.push((s.session_id.clone(), s.session_key.clone()));
        }
    }
    for eff in effects {
        match eff {
            Effect::Event(e) => {
                let key = e.session_id.as_ref().and_then(|id| {
                    keys.iter()
                        .find(|(sid, _)| sid == id)
                        .map(|(_, k)| k.clone())
                });
                p.events.push((e, key));
            }
            Effect::Session(s) => {
                let opened = !p.sessions.contains_key(&s.session_key)
                    && s.charging_started.is_none()
                    && s.ended.is_none();
                let entry = p
                    .sessions
                    .entry(s.session_key.clone())
                    .or_insert((s.clone(), opened));
                entry.0 = s;
            }
        }
    }
}

fn session_point(s: &SessionRecord) -> Point {
    Point::new("charging_session", s.started)
        .tag("site", s.site.clone())
        .tag("charger", s.charger.clone())
        .tag("outcome", s.outcome.map(|o| o.as_str()).unwrap_or("open"))
        .field("duration_s", s.duration_s())
        .field("time_to_complete_s", s.time_to_complete_s)
        .field("idle_s", s.idle_s)
        .field("energy_kwh", Some(s.energy_kwh))
        .field("peak_kw", Some(s.peak_kw))
        .field("avg_kw", s.avg_kw)
        .field("soc_start", s.soc_start)
        .field("soc_end", s.soc_end)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_stepped_back_counts_as_long_ago() {
        assert_eq!(since(1_000, 400), 600);
        assert_eq!(since(400, 1_000), i64::MAX);
    }

    #[test]
    fn ticks_are_spread_over_the_batches_and_reach_every_charger_each_round() {
        assert_eq!(tick_share(0, TICK), (0, TICK));
        // Too little time for one charger: nothing, and the time carries over.
        assert_eq!(tick_share(3, TICK / 10), (0, Duration::ZERO));
        assert_eq!(tick_share(3, TICK), (3, TICK));
        // A round behind: everyone once, then start afresh.
        assert_eq!(tick_share(3, TICK * 4), (3, TICK * 4));
        // 10k chargers, a batch every 1.3 ms: each batch ticks a small share, and over each
        // round of TICK every charger is ticked once.
        let n = 10_000;
        let (mut ticked, mut from, mut now) = (0usize, Duration::ZERO, Duration::ZERO);
        let mut most = 0;
        let mut rounds = Vec::new();
        while now < TICK * 4 {
            now += Duration::from_micros(1300);
            let (share, accounted) = tick_share(n, now - from);
            from += accounted;
            most = most.max(share);
            ticked += share;
            if now.as_nanos() % TICK.as_nanos() < Duration::from_micros(1300).as_nanos() {
                rounds.push(ticked);
            }
        }
        assert!(most <= 27, "a batch ticked {most} chargers");
        for (k, t) in rounds.iter().enumerate() {
            let want = (k + 1) * n;
            assert!(t.abs_diff(want) <= 26, "after round {}: {t} ticked", k + 1);
        }
        assert!(!rounds.is_empty());
    }

    #[test]
    fn the_charger_index_finds_each_key_and_only_it() {
        let slot = |site: &str, charger: &str| {
            let meta = ChargerMeta::auto(site, charger, Default::default());
            let machine = ChargerMachine::new(&meta);
            let key = ChargerKey {
                site: site.into(),
                charger: charger.into(),
            };
            ChargerSlot::new(key, meta, machine, 0, 0, true)
        };
        let mut c = Chargers::default();
        // Keys whose concatenations are equal, and many more to make the table grow.
        let keys: Vec<(String, String)> = [("ab", "c"), ("a", "bc"), ("abc", "")]
            .iter()
            .map(|(s, k)| (s.to_string(), k.to_string()))
            .chain((0..2000).map(|i| (format!("b{}", i % 7), format!("hpc-{i}"))))
            .collect();
        for (k, (site, charger)) in keys.iter().enumerate() {
            assert_eq!(c.insert(slot(site, charger)), k);
        }
        for (k, (site, charger)) in keys.iter().enumerate() {
            assert_eq!(c.find(site, charger), Some(k), "{site}/{charger}");
        }
        assert_eq!(c.find("b0", "hpc-1"), None, "hpc-1 is on site b1");
        assert_eq!(c.find("a", "b"), None);
        // Registering a known key again replaces its slot in place.
        assert_eq!(c.insert(slot("a", "bc")), 1);
        assert_eq!(c.slots.len(), keys.len());
        c.clear();
        assert_eq!(c.find("ab", "c"), None);
    }

    #[test]
    fn tick_shares_visit_the_slots_in_turn_each_once_a_round() {
        let n = 7;
        let (mut cursor, mut seen) = (0, Vec::new());
        for share in [3, 0, 2, 4, 1, 5, 6, 7, 2] {
            let (slots, next) = tick_slots(cursor, n, share);
            seen.extend(slots);
            cursor = next;
        }
        let want: Vec<usize> = (0..seen.len()).map(|k| k % n).collect();
        assert_eq!(seen, want);
        // Fewer slots than the cursor (a reload re-registered fewer chargers): in range.
        let (slots, next) = tick_slots(5, 3, 2);
        assert_eq!(slots.collect::<Vec<_>>(), vec![2, 0]);
        assert_eq!(next, 1);
        let (slots, next) = tick_slots(4, 0, 3);
        assert_eq!((slots.count(), next), (0, 0));
    }

    #[test]
    fn snapshots_are_due_within_budget_and_overdue_ones_regardless() {
        // Phase 0: windows start at multiples of the interval.
        let t = 1_000_000;
        assert!(!snapshot_due(t + SNAPSHOT_EVERY_MS - 1, t, 0, true));
        assert!(snapshot_due(t + SNAPSHOT_EVERY_MS, t, 0, true));
        assert!(!snapshot_due(t + SNAPSHOT_EVERY_MS, t, 0, false));
        assert!(snapshot_due(t + 2 * SNAPSHOT_EVERY_MS, t, 0, false));
        // A phase moves the window: saved 1 ms before its boundary, due 1 ms later.
        let phase = 3_000;
        let boundary = 7 * SNAPSHOT_EVERY_MS - phase;
        assert!(!snapshot_due(boundary - 1, boundary - 2, phase, true));
        assert!(snapshot_due(boundary, boundary - 1, phase, true));
        // Once per window: saved at the boundary, not due again until the next one.
        assert!(!snapshot_due(
            boundary + SNAPSHOT_EVERY_MS - 1,
            boundary,
            phase,
            true
        ));
        assert!(snapshot_due(
            boundary + SNAPSHOT_EVERY_MS,
            boundary,
            phase,
            true
        ));
        // Wall clock stepped backwards: save rather than wait for it.
        assert!(snapshot_due(t - 5, t, 0, false));
        assert!(snapshots_per_batch(0) > 0);
        assert!(snapshots_per_batch(8192) >= 2048);
    }

    #[test]
    fn chargers_saved_together_come_due_spread_over_the_interval() {
        // 10k chargers all saved at the same instant (first heard together): when does
        // each come due next? Per 100 ms of the interval, about 100 of them, not 10k at once.
        let n = 10_000;
        let t0 = 1_764_000_000_000;
        let mut per_slice = vec![0usize; (SNAPSHOT_EVERY_MS / 100) as usize];
        for i in 0..n {
            let phase = snapshot_phase(i);
            let due_at = (1..=SNAPSHOT_EVERY_MS)
                .map(|d| t0 + d)
                .find(|&now| snapshot_due(now, t0, phase, true))
                .expect("due within one interval");
            per_slice[((due_at - t0 - 1) / 100) as usize] += 1;
        }
        assert_eq!(per_slice.iter().sum::<usize>(), n);
        assert!(per_slice.iter().all(|&c| c <= 110), "{per_slice:?}");
    }

    /// What was done with the points and acks, in order, each sync with the number of
    /// events the store had committed by then.
    #[derive(Clone, Default)]
    struct Recorder {
        log: Arc<parking_lot::Mutex<Vec<String>>>,
        lines: Arc<parking_lot::Mutex<Vec<u8>>>,
        db: Arc<parking_lot::Mutex<Option<std::path::PathBuf>>>,
        /// This many syncs fail before they succeed.
        failing_syncs: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Recorder {
        fn events_now(&self) -> usize {
            self.db.lock().as_deref().map_or(0, |d| events(d).len())
        }
        fn log(&self) -> Vec<String> {
            self.log.lock().clone()
        }
        fn charger_lines(&self) -> Vec<String> {
            String::from_utf8_lossy(&self.lines.lock())
                .lines()
                .filter(|l| l.starts_with("charger,"))
                .map(str::to_string)
                .collect()
        }
        fn acks(&self) -> AckFn {
            let me = self.clone();
            Arc::new(move |a: &Ack| {
                let n = me.events_now();
                me.log.lock().push(format!("ack {} events={n}", a.0.pkid));
            })
        }
    }

    impl PointSink for Recorder {
        fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
            self.log.lock().push("append".into());
            self.lines.lock().extend_from_slice(lines);
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            let failing = self.failing_syncs.fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            );
            if failing.is_ok() {
                self.log.lock().push("sync failed".into());
                return Err(std::io::Error::other("injected sync failure"));
            }
            let n = self.events_now();
            self.log.lock().push(format!("sync events={n}"));
            Ok(())
        }
    }

    fn processor(dir: &std::path::Path, sink: &Recorder) -> Processor {
        let cfg = crate::config::from_toml_str(&format!(
            "data_dir = {:?}\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n",
            dir.display()
        ))
        .expect("config");
        let conn = store::open(dir).expect("store");
        *sink.db.lock() = Some(dir.to_path_buf());
        Processor::new(Arc::new(cfg), conn, Arc::new(Live::new()), Vec::new())
            .expect("processor")
            .with_sink(Box::new(sink.clone()))
    }

    fn telemetry(ts: i64, status: &str, power_kw: f64, pkid: u16) -> Inbound {
        let mut publish = rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, Vec::<u8>::new());
        publish.pkid = pkid;
        Inbound {
            topic: "evlounge/s1/charger/c1/telemetry".into(),
            payload: format!(
                r#"{{"ts": {ts}, "status": "{status}", "power_kw": {power_kw}, "session_kwh": 1.5}}"#
            )
            .into_bytes()
            .into(),
            recv_ms: crate::util::time::now_ms(),
            recv_mono_ms: crate::util::time::mono_ms(),
            ack: Some((publish, 0)),
            redelivered: false,
        }
    }

    fn events(dir: &std::path::Path) -> Vec<String> {
        let conn = store::open_reader(dir).expect("reader");
        let mut st = conn
            .prepare("SELECT kind FROM events ORDER BY seq")
            .expect("query");
        st.query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("kinds")
    }

    fn wait_for(sink: &Recorder, entry: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = sink.log();
            if log.iter().any(|l| l == entry) {
                return log;
            }
            assert!(Instant::now() < deadline, "no {entry:?} in {log:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A box without a battery-backed clock boots at its last shutdown time and NTP then
    /// steps the wall clock hours ahead: that step is not silence. (Measured on the wall
    /// clock, every charger went offline at once, and pending completion and idle timers
    /// fired early: a false "your car is ready".)
    #[test]
    fn a_wall_clock_step_is_not_a_chargers_silence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Recorder::default();
        let mut p = processor(dir.path(), &sink);
        let t0 = crate::util::time::now_ms() - 60_000;
        // Received an hour before now by the wall clock (which has stepped since), just
        // now by the monotonic one.
        let mut m = telemetry(t0, "charging", 50.0, 1);
        m.recv_ms -= 3_600_000;
        p.process(&mut [m]).expect("batch");
        let offline_after = p.charger_meta(&ChargerKey {
            site: "s1".into(),
            charger: "c1".into(),
        });
        let offline_after = offline_after.thresholds.offline_after_ms;
        let offline_at = |p: &mut Processor, mono: i64| {
            let mut pending = Pending::default();
            p.last_tick = Instant::now() - 2 * TICK; // a whole round: every charger
            p.tick(mono, &mut pending);
            pending
                .events
                .iter()
                .any(|(e, _)| e.kind == crate::domain::event::EventKind::ChargerOffline)
        };
        let now = crate::util::time::mono_ms();
        assert!(
            !offline_at(&mut p, now),
            "a wall clock step went for silence"
        );
        // Real silence (on the monotonic clock) still counts.
        assert!(offline_at(&mut p, now + offline_after + 1_000));
    }

    #[test]
    fn telemetry_is_written_and_acked_after_the_commit_and_a_session_summary_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Recorder::default();
        sink.failing_syncs
            .store(1, std::sync::atomic::Ordering::SeqCst);
        let p = processor(dir.path(), &sink).with_acks(sink.acks());
        let (tx, rx) = flume::unbounded();
        let commit = std::thread::spawn(move || p.run(rx));
        let t0 = 1_795_000_000_000;

        // Plugged in and charging: `charging_started` is committed, then the ack thread
        // appends and syncs the line (after a failed sync: appended again), then acks.
        tx.send(telemetry(t0, "charging", 120.0, 1)).expect("send");
        let log = wait_for(&sink, "ack 1 events=1");
        assert_eq!(
            log,
            [
                "append",
                "sync failed",
                "append",
                "sync events=1",
                "ack 1 events=1"
            ]
        );

        // Unplugged: the session closes, and its summary point is one a redelivery would
        // not write again: written and synced before the commit (charging_stopped is not
        // in the store yet), acked after it.
        tx.send(telemetry(t0 + 1_000, "available", 0.0, 2))
            .expect("send");
        let log = wait_for(&sink, "ack 2 events=2");
        assert_eq!(log[5..], ["append", "sync events=1", "ack 2 events=2"]);
        assert!(String::from_utf8_lossy(&sink.lines.lock()).contains("charging_session,"));
        drop(tx);
        commit.join().expect("commit thread");
        assert_eq!(events(dir.path()), ["charging_started", "charging_stopped"]);
    }

    /// First telemetry (available: no event) of chargers `ids`, one message each.
    fn first_sight(ids: &[&str], t0: i64) -> Vec<Inbound> {
        ids.iter()
            .map(|c| {
                let mut m = telemetry(t0, "available", 0.0, 1);
                m.topic = format!("evlounge/s1/charger/{c}/telemetry");
                m
            })
            .collect()
    }

    /// `p` with an MQTT publisher that has room for `room` states at a time.
    fn with_publisher(mut p: Processor, room: usize) -> (Processor, flume::Receiver<OutMsg>) {
        let (out, published) = flume::bounded(room);
        p.out = Some(out);
        (p, published)
    }

    fn state_topic(m: OutMsg) -> String {
        match m {
            OutMsg::State { topic, .. } => topic,
            other => panic!("not a state: {other:?}"),
        }
    }

    #[test]
    fn a_state_the_publisher_had_no_room_for_is_sent_once_it_has() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Recorder::default();
        let (mut p, published) = with_publisher(processor(dir.path(), &sink), 1);
        let t0 = 1_795_000_000_000;
        // First sight: all three shown at once; one state fits.
        p.process(&mut first_sight(&["c1", "c2", "c3"], t0))
            .expect("batch");
        // Shown again while still waiting: kept once, not twice.
        p.send_state(Shown::Charger(2));
        assert_eq!(p.unsent_states, [Shown::Charger(1), Shown::Charger(2)]);
        let mut sent = vec![state_topic(published.try_recv().expect("first state"))];
        // Each later batch (nothing new in it) sends what waited, oldest first, while
        // there is room, and keeps the rest.
        p.process(&mut []).expect("batch");
        assert_eq!(p.unsent_states, [Shown::Charger(2)]);
        for _ in 0..3 {
            sent.extend(published.try_iter().map(state_topic));
            p.process(&mut []).expect("batch");
        }
        sent.extend(published.try_iter().map(state_topic));
        assert_eq!(
            sent,
            ["c1", "c2", "c3"].map(|c| format!("evlounge/s1/state/charger/{c}"))
        );
        assert!(p.unsent_states.is_empty());
        assert!(!p.is_unsent(&Shown::Charger(2)));
    }

    #[test]
    fn states_still_waiting_at_exit_are_handed_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Recorder::default();
        let (mut p, published) = with_publisher(processor(dir.path(), &sink), 1);
        p.process(&mut first_sight(&["c1", "c2", "c3"], 1_795_000_000_000))
            .expect("batch");
        assert_eq!(p.unsent_states.len(), 2);
        // The publisher keeps draining while the commit thread stops.
        let publisher = std::thread::spawn(move || {
            let mut topics = Vec::new();
            while let Ok(m) = published.recv_timeout(Duration::from_secs(5)) {
                topics.push(state_topic(m));
            }
            topics
        });
        let (tx, rx) = flume::unbounded::<Inbound>();
        drop(tx);
        p.run(rx); // returns when it has handed over what waited; drops the sender
        let mut topics = publisher.join().expect("publisher");
        topics.sort();
        topics.dedup();
        assert_eq!(
            topics,
            ["c1", "c2", "c3"].map(|c| format!("evlounge/s1/state/charger/{c}"))
        );
    }

    #[test]
    fn a_reload_shows_every_charger_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Recorder::default();
        let (mut p, published) = with_publisher(processor(dir.path(), &sink), 1);
        p.process(&mut first_sight(&["c1", "c2"], 1_795_000_000_000))
            .expect("batch");
        assert_eq!(p.unsent_states, [Shown::Charger(1)]);
        assert_eq!(published.try_iter().count(), 1, "c1");
        // A failed commit reloads: what waited is forgotten with the slots it indexed, and
        // every charger is handed over again instead.
        p.reload().expect("reload");
        let mut sent: Vec<String> = published.try_iter().map(state_topic).collect();
        for _ in 0..3 {
            p.process(&mut []).expect("batch");
            sent.extend(published.try_iter().map(state_topic));
        }
        sent.sort();
        assert_eq!(
            sent,
            ["c1", "c2"].map(|c| format!("evlounge/s1/state/charger/{c}"))
        );
    }

    #[test]
    fn points_reported_just_before_exit_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Recorder::default();
        let (points, reported) = flume::bounded(16);
        let p = processor(dir.path(), &sink).with_extra_points(reported);
        // A notification's outcome, reported after the last message.
        points
            .send(Point::new("notification", 1_795_000_000_000).field("attempts", Some(1.0)))
            .expect("send");
        let (tx, rx) = flume::unbounded::<Inbound>();
        drop(tx);
        p.run(rx);
        let lines = String::from_utf8_lossy(&sink.lines.lock()).into_owned();
        assert!(lines.starts_with("notification attempts=1 "), "{lines:?}");
    }

    #[test]
    fn every_resumed_charger_and_zone_is_shown_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Recorder::default();
        let t0 = 1_795_000_000_000;
        let mut first = processor(dir.path(), &sink);
        let mut batch = first_sight(&["c1", "c2"], t0);
        let mut lounge = telemetry(t0, "available", 0.0, 1);
        lounge.topic = "evlounge/s1/lounge/z1/door".into();
        lounge.payload = format!(r#"{{"ts": {t0}, "occupancy": 3}}"#)
            .into_bytes()
            .into();
        batch.push(lounge);
        first.process(&mut batch).expect("batch");
        drop(first);

        // The next run: no message comes, and still every known topic is handed over.
        let (p, published) = with_publisher(processor(dir.path(), &sink), 16);
        let (tx, rx) = flume::unbounded::<Inbound>();
        drop(tx);
        p.run(rx);
        let mut topics: Vec<String> = published
            .try_iter()
            .filter_map(|m| match m {
                OutMsg::State { topic, .. } => Some(topic),
                _ => None,
            })
            .collect();
        topics.sort();
        assert_eq!(
            topics,
            [
                "evlounge/s1/state/charger/c1",
                "evlounge/s1/state/charger/c2",
                "evlounge/s1/state/lounge/z1"
            ]
        );
    }

    #[test]
    fn an_old_or_repeated_message_writes_its_point_and_decides_nothing_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Recorder::default();
        let mut p = processor(dir.path(), &sink);
        // Received now (the helper's receive time): within the backfill window.
        let t0 = crate::util::time::now_ms() - 60_000;
        p.process(&mut [telemetry(t0, "charging", 120.0, 1)])
            .expect("batch");
        let first = sink.charger_lines();
        assert_eq!(first.len(), 1);
        let decided = events(dir.path());
        assert_eq!(decided, ["charging_started"]);

        // The same message again, published twice, or redelivered (DUP): the same point
        // again (the TSDB overwrites it), the same decisions.
        p.process(&mut [telemetry(t0, "charging", 120.0, 2)])
            .expect("batch");
        let mut again = telemetry(t0, "charging", 120.0, 1);
        again.redelivered = true;
        p.process(&mut [again]).expect("batch");
        assert_eq!(sink.charger_lines(), [&first[0]; 3].map(String::clone));
        assert_eq!(events(dir.path()), decided);

        // A reading older than the last one (buffered while the charger was offline): its
        // own point, at its own time; it decides nothing (no `charging_stopped`).
        p.process(&mut [telemetry(t0 + 1_000, "charging", 118.0, 3)])
            .expect("batch");
        p.process(&mut [telemetry(t0 + 500, "available", 0.0, 4)])
            .expect("batch");
        let lines = sink.charger_lines();
        assert_eq!(lines.len(), 5);
        assert!(
            lines[4].contains("status=available") && lines[4].ends_with(&(t0 + 500).to_string()),
            "{lines:?}"
        );
        // Beyond the backfill window (a clock reset to 1970): not written.
        p.process(&mut [telemetry(86_400_000, "available", 0.0, 5)])
            .expect("batch");
        assert_eq!(sink.charger_lines().len(), 5);
        assert_eq!(events(dir.path()), decided);
    }

    #[test]
    fn only_batches_that_decide_something_wait_for_the_stores_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Recorder::default();
        let mut p = processor(dir.path(), &sink);
        let synchronous = |p: &Processor| {
            p.conn
                .pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0))
                .expect("pragma")
        };
        const NORMAL: i64 = 1;
        const FULL: i64 = 2;
        let t0 = 1_795_000_000_000;
        let batch = |p: &mut Processor, i: i64, status: &str| {
            p.process(&mut [telemetry(t0 + i * 1_000, status, 120.0, 1)])
                .expect("batch")
        };
        p.full_every = Duration::from_secs(3_600);
        batch(&mut p, 0, "charging"); // charging_started
        assert_eq!(synchronous(&p), FULL);
        batch(&mut p, 1, "charging");
        batch(&mut p, 2, "charging");
        assert_eq!(synchronous(&p), NORMAL, "plain telemetry");
        batch(&mut p, 3, "available"); // unplugged: charging_stopped
        assert_eq!(synchronous(&p), FULL);
        batch(&mut p, 4, "available");
        assert_eq!(synchronous(&p), NORMAL);
        // Plain telemetry too, once the last fsync'ed commit is that long ago.
        p.full_every = Duration::ZERO;
        batch(&mut p, 5, "available");
        assert_eq!(synchronous(&p), FULL);
        assert_eq!(events(dir.path()), ["charging_started", "charging_stopped"]);
    }
}
