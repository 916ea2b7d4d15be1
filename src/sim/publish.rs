//! `evlounge simulate`: publishes the site model's stream to a broker, paced to the wall clock
//! (× `speed`), or as fast as asked for load tests, over one or more MQTT connections.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use parking_lot::Mutex;
use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::formats::{SimFormat, Translator};
use super::model::{SimConfig, SiteSim};
use crate::util::time::now_ms;

#[derive(Clone, Debug, PartialEq)]
pub struct SimulateOptions {
    /// `mqtt://host[:port]` (user and password in the URL are used as credentials).
    pub mqtt_url: String,
    pub site: String,
    pub prefix: String,
    pub chargers: usize,
    /// Periodic telemetry messages per charger per wall-clock second.
    pub rate_hz: f64,
    /// Stop after this much wall time; `None` runs until `shutdown`.
    pub duration: Option<Duration>,
    /// Simulated time per wall time.
    pub speed: f64,
    pub seed: u64,
    /// 0 or 1.
    pub qos: u8,
    /// MQTT connections the load is spread over (each charger always on the same one, so its
    /// messages stay in order).
    pub connections: usize,
    /// Stop after this many messages.
    pub max_messages: Option<u64>,
    /// Simulated clock at the start. `None`: now, or — when `speed` > 1 with a `duration` —
    /// early enough that the simulated clock reaches the wall clock only at the end, so no
    /// message carries a future `ts`.
    pub start_ms: Option<i64>,
    /// The chargers' wire format (lounge sensors always use the contract's).
    pub format: SimFormat,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions {
            mqtt_url: "mqtt://127.0.0.1:1883".to_string(),
            site: "demo".to_string(),
            prefix: "evlounge".to_string(),
            chargers: 6,
            rate_hz: 1.0,
            duration: None,
            speed: 1.0,
            seed: 1,
            qos: 1,
            connections: 1,
            max_messages: None,
            start_ms: None,
            format: SimFormat::Evlounge,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SimReport {
    /// Messages the broker has: acknowledged (QoS 1) or written to the socket (QoS 0).
    pub messages: u64,
    pub elapsed: Duration,
    pub msg_per_s: f64,
}

/// Per request channel: enough for a few seconds of a 10 000-charger load on one connection.
const REQUEST_CAPACITY: usize = 50_000;
/// At most this much wall time worth of simulation per pacing step, so a publisher that falls
/// behind sends at the rate it can instead of building an unbounded backlog in memory.
const MAX_STEP_WALL_MS: f64 = 50.0;
const PACE_TICK: Duration = Duration::from_millis(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const STOPPED_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Turns options into the site model's configuration (also what `demo` can declare to the
/// daemon: same charger ids, bays, powers and zones).
pub fn sim_config(opts: &SimulateOptions, wall_now_ms: i64) -> SimConfig {
    let speed = sanitize(opts.speed, 1.0);
    let rate = sanitize(opts.rate_hz, 1.0);
    let start_ms = opts.start_ms.unwrap_or_else(|| match opts.duration {
        Some(d) if speed > 1.0 => {
            let ahead = d.as_secs_f64() * 1000.0 * (speed - 1.0);
            wall_now_ms - ahead.min(1e13) as i64
        }
        _ => wall_now_ms,
    });
    let mut cfg = SimConfig::standard_site(
        opts.site.clone(),
        opts.prefix.clone(),
        opts.chargers.max(1),
        opts.seed,
        start_ms,
    );
    cfg.telemetry_period_ms = 1000.0 * speed / rate;
    // Lounge sensors report every 10 simulated seconds, but no faster than the chargers.
    cfg.lounge_period_ms = (cfg.telemetry_period_ms as i64).max(10_000);
    cfg
}

fn sanitize(x: f64, default: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        default
    }
}

/// Runs until `duration`, `max_messages` or `shutdown`, then waits (bounded) until the broker
/// has what was sent, disconnects cleanly and reports.
pub async fn run_simulate(
    opts: SimulateOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<SimReport> {
    run_simulate_with(opts, |_| {}, shutdown).await
}

/// [`run_simulate`] with a hook on the site model before it starts (tests script cars with
/// [`SiteSim::script_arrival`]).
pub async fn run_simulate_with(
    opts: SimulateOptions,
    setup: impl FnOnce(&mut SiteSim),
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<SimReport> {
    if !(opts.rate_hz.is_finite() && opts.rate_hz > 0.0) {
        bail!("rate must be a positive number of messages per second");
    }
    if !(opts.speed.is_finite() && opts.speed > 0.0) {
        bail!("speed must be positive");
    }
    if opts.chargers == 0 {
        bail!("at least one charger is needed");
    }
    let qos = match opts.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        q => bail!("qos must be 0 or 1, not {q}"),
    };
    let target = BrokerTarget::parse(&opts.mqtt_url)?;
    let n_conn = opts.connections.max(1);

    let mut sim = SiteSim::new(sim_config(&opts, now_ms()));
    setup(&mut sim);
    let (stop_tx, stop_rx) = watch::channel(false);
    let run_id: u32 = rand::thread_rng().gen();
    let mut conns = Vec::with_capacity(n_conn);
    for i in 0..n_conn {
        let client_id = format!("evlounge-sim-{run_id:08x}-{i}");
        conns.push(Connection::start(&target, client_id, qos, stop_rx.clone()));
    }
    tracing::info!(
        broker = %target.display, site = %opts.site, chargers = opts.chargers,
        rate_hz = opts.rate_hz, speed = opts.speed, connections = n_conn, qos = opts.qos,
        format = %opts.format, "simulating"
    );

    tokio::pin!(shutdown);
    let mut stopped = false;
    let mut outcome = tokio::select! {
        biased;
        _ = &mut shutdown => {
            stopped = true;
            Ok(())
        }
        r = wait_connected(&conns) => r,
    };
    let t0 = Instant::now();
    if outcome.is_ok() && !stopped {
        let produce = produce(&opts, &mut sim, &conns, qos, t0);
        tokio::select! {
            biased;
            _ = &mut shutdown => stopped = true,
            r = produce => outcome = r,
        }
    }

    if outcome.is_ok() {
        // After Ctrl-C, don't make the operator wait long for a broker that is gone.
        drain(
            &conns,
            if stopped {
                STOPPED_DRAIN_TIMEOUT
            } else {
                DRAIN_TIMEOUT
            },
        )
        .await;
    }
    let elapsed = t0.elapsed();
    for c in &conns {
        // try_: a full request channel (broker gone) must not block shutdown.
        let _ = c.client.try_disconnect();
    }
    // Also on errors: the connection tasks would otherwise reconnect forever.
    let _ = stop_tx.send(true);
    for c in conns.iter_mut() {
        if let Some(mut task) = c.task.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                tracing::warn!(connection = %c.client_id, "connection task did not stop in time");
                task.abort();
            }
        }
    }
    outcome?;
    let messages: u64 = conns
        .iter()
        .map(|c| c.state.confirmed.load(Ordering::Relaxed))
        .sum();
    let secs = elapsed.as_secs_f64();
    Ok(SimReport {
        messages,
        elapsed,
        msg_per_s: if secs > 0.0 {
            messages as f64 / secs
        } else {
            0.0
        },
    })
}

async fn produce(
    opts: &SimulateOptions,
    sim: &mut SiteSim,
    conns: &[Connection],
    qos: QoS,
    t0: Instant,
) -> anyhow::Result<()> {
    let start_ms = sim.now_ms();
    let max_step_ms = ((MAX_STEP_WALL_MS * opts.speed) as i64).max(1);
    let limit = opts.max_messages.unwrap_or(u64::MAX);
    let mut sent: u64 = 0;
    let mut translator = Translator::new(opts.format, &opts.prefix);
    let mut tick = tokio::time::interval(PACE_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let wall = t0.elapsed();
        if opts.duration.is_some_and(|d| wall >= d) || sent >= limit {
            return Ok(());
        }
        let due = start_ms.saturating_add((wall.as_secs_f64() * 1000.0 * opts.speed) as i64);
        let target = due.min(sim.now_ms().saturating_add(max_step_ms));
        for m in sim
            .advance_to(target)
            .into_iter()
            .flat_map(|m| translator.translate(m))
        {
            if sent >= limit {
                return Ok(());
            }
            let conn = &conns[route(&m.topic, conns.len())];
            conn.client
                .publish(m.topic, qos, m.retain, m.payload)
                .await
                .context("queueing a publish")?;
            conn.state.queued.fetch_add(1, Ordering::Relaxed);
            sent += 1;
        }
    }
}

/// The connection for a topic: by its entity (the topic minus the last level), so a charger's
/// telemetry and availability, or a zone's sensors, keep their order on one connection.
fn route(topic: &str, n: usize) -> usize {
    let entity = topic.rsplit_once('/').map_or(topic, |(head, _)| head);
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in entity.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % n.max(1) as u64) as usize
}

struct BrokerTarget {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
    /// Without credentials, for logs.
    display: String,
}

impl BrokerTarget {
    fn parse(s: &str) -> anyhow::Result<Self> {
        let url = url::Url::parse(s).with_context(|| format!("invalid MQTT URL {s:?}"))?;
        match url.scheme() {
            "mqtt" | "tcp" => {}
            "mqtts" | "ssl" => bail!("simulate supports plain mqtt:// only"),
            other => bail!("unsupported MQTT URL scheme {other:?}"),
        }
        let host = url
            .host_str()
            .context("MQTT URL needs a host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port().unwrap_or(1883);
        let credentials = (!url.username().is_empty()).then(|| {
            (
                url.username().to_string(),
                url.password().unwrap_or_default().to_string(),
            )
        });
        Ok(BrokerTarget {
            display: format!("mqtt://{host}:{port}"),
            host,
            port,
            credentials,
        })
    }
}

#[derive(Default)]
struct ConnState {
    queued: AtomicU64,
    /// QoS 1: PUBACKs received; QoS 0: publishes written to the socket.
    confirmed: AtomicU64,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

struct Connection {
    client_id: String,
    client: AsyncClient,
    state: Arc<ConnState>,
    task: Option<JoinHandle<()>>,
}

impl Connection {
    fn start(
        target: &BrokerTarget,
        client_id: String,
        qos: QoS,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let mut o = MqttOptions::new(client_id.clone(), target.host.clone(), target.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_inflight(1_000);
        o.set_clean_session(true);
        if let Some((user, pass)) = &target.credentials {
            o.set_credentials(user.clone(), pass.clone());
        }
        let (client, eventloop) = AsyncClient::new(o, REQUEST_CAPACITY);
        let state = Arc::new(ConnState::default());
        let task = tokio::spawn(poll_loop(
            eventloop,
            Arc::clone(&state),
            qos,
            stop,
            client_id.clone(),
        ));
        Connection {
            client_id,
            client,
            state,
            task: Some(task),
        }
    }
}

/// Drives one connection. It only polls: awaiting client requests in here could deadlock once
/// the request channel is full.
async fn poll_loop(
    mut eventloop: EventLoop,
    state: Arc<ConnState>,
    qos: QoS,
    mut stop: watch::Receiver<bool>,
    client_id: String,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let ev = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                state.connected.store(true, Ordering::Release);
                backoff = Duration::from_millis(100);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => {
                state.confirmed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                state.confirmed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                state.connected.store(false, Ordering::Release);
                tracing::warn!(connection = %client_id, error = %e, "mqtt connection error");
                *state.last_error.lock() = Some(e.to_string());
                // rumqttc reconnects on the next poll without any delay: back off, with jitter.
                let jitter = rand::thread_rng().gen_range(0.8..1.2);
                let wait = backoff.mul_f64(jitter);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn wait_connected(conns: &[Connection]) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if conns
            .iter()
            .all(|c| c.state.connected.load(Ordering::Acquire))
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let err = conns
                .iter()
                .find_map(|c| c.state.last_error.lock().clone())
                .unwrap_or_else(|| "timed out".to_string());
            bail!("cannot connect to the MQTT broker: {err}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every queued message is confirmed, or the deadline (broker gone).
async fn drain(conns: &[Connection], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while conns
        .iter()
        .any(|c| c.state.confirmed.load(Ordering::Relaxed) < c.state.queued.load(Ordering::Relaxed))
    {
        if Instant::now() >= deadline {
            tracing::warn!("not every message was confirmed by the broker before the deadline");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        let t = BrokerTarget::parse("mqtt://127.0.0.1:18830").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 18830));
        assert!(t.credentials.is_none());
        let t = BrokerTarget::parse("mqtt://u:secret@broker.local").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("broker.local", 1883));
        assert_eq!(t.credentials, Some(("u".into(), "secret".into())));
        assert!(!t.display.contains("secret"));
        assert!(BrokerTarget::parse("mqtts://x:8883").is_err());
        assert!(BrokerTarget::parse("not a url").is_err());
    }

    #[test]
    fn routes_an_entity_to_one_connection() {
        let a = route("evlounge/s/charger/hpc-1/telemetry", 4);
        assert_eq!(a, route("evlounge/s/charger/hpc-1/availability", 4));
        assert!(a < 4);
        let spread: std::collections::HashSet<usize> = (0..100)
            .map(|i| route(&format!("evlounge/s/charger/c-{i}/telemetry"), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }

    #[test]
    fn fast_sim_starts_in_the_past_so_ts_never_runs_ahead() {
        let opts = SimulateOptions {
            speed: 60.0,
            duration: Some(Duration::from_secs(60)),
            rate_hz: 2.0,
            ..SimulateOptions::default()
        };
        let cfg = sim_config(&opts, 10_000_000_000);
        assert_eq!(cfg.start_ms, 10_000_000_000 - 60_000 * 59);
        assert_eq!(cfg.telemetry_period_ms, 30_000.0);
        assert_eq!(cfg.lounge_period_ms, 30_000);
        let cfg = sim_config(&SimulateOptions::default(), 5);
        assert_eq!(cfg.start_ms, 5);
        assert_eq!(cfg.telemetry_period_ms, 1_000.0);
    }
}
