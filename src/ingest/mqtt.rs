//! The MQTT connection: owns the rumqttc event loop and polls it without pause, reconnects
//! with jittered exponential backoff, resubscribes whenever the broker has no session for
//! us, and hands every inbound publish to the commit thread through a bounded channel.
//!
//! Acks: QoS 1 messages are acked by the commit thread after their effects are committed,
//! in arrival order, with `try_ack` (never awaiting the client from a task the event loop
//! may be waiting on). An ack is only sent on the connection the message arrived on: after
//! a reconnect the broker redelivers, and a stale packet id could ack someone else's message.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS};
use tokio::sync::watch;

use crate::config::MqttConfig;

/// One inbound message on its way to the commit thread.
#[derive(Debug)]
pub struct Inbound {
    pub topic: String,
    pub payload: bytes::Bytes,
    /// Wall-clock receive time, ms.
    pub recv_ms: i64,
    /// Receive time on the monotonic clock ([`crate::util::time::mono_ms`]): what the time
    /// since a charger's last message is measured with.
    pub recv_mono_ms: i64,
    /// For QoS > 0: what to ack, and the connection epoch it arrived on.
    pub ack: Option<(Publish, u64)>,
    /// Sent before and not acked: the broker's DUP flag, or a batch the commit thread
    /// retries. Its time-series point is written again even when its state was applied
    /// already (see `Processor::telemetry`).
    pub redelivered: bool,
}

/// Shared connection facts: connected flag and the connection epoch.
#[derive(Debug, Default)]
pub struct ConnState {
    pub connected: AtomicBool,
    pub epoch: AtomicU64,
    /// ConnAcks received so far, and whether the latest said the broker kept our session
    /// (if not, what rumqttc had in flight on the old connection is gone).
    pub connacks: AtomicU64,
    pub session_present: AtomicBool,
}

/// A clonable handle to ack messages and publish from outside the event-loop task.
#[derive(Clone)]
pub struct MqttHandle {
    pub client: AsyncClient,
    pub state: Arc<ConnState>,
    pub connected_rx: watch::Receiver<bool>,
}

impl MqttHandle {
    /// Acks a message if it arrived on the current connection. Never blocks.
    pub fn ack(&self, ack: &(Publish, u64)) {
        if ack.1 != self.state.epoch.load(Ordering::Acquire) {
            metrics::counter!("evlounge_mqtt_acks_skipped_total").increment(1);
            return;
        }
        if self.client.try_ack(&ack.0).is_err() {
            // The request queue is full (broker away): the broker redelivers, we dedup.
            metrics::counter!("evlounge_mqtt_acks_skipped_total").increment(1);
        }
    }

    pub fn is_connected(&self) -> bool {
        self.state.connected.load(Ordering::Acquire)
    }
}

pub fn status_topic(prefix: &str) -> String {
    format!("{prefix}/status")
}

/// The inbound subscriptions: the contract's topics plus any adapter filters.
pub fn subscriptions(prefix: &str, extra: &[String]) -> Vec<String> {
    let mut v = vec![
        format!("{prefix}/+/charger/+/telemetry"),
        format!("{prefix}/+/charger/+/availability"),
        format!("{prefix}/+/lounge/+/+"),
        format!("{prefix}/+/frontdesk/link"),
    ];
    v.extend(extra.iter().cloned());
    v
}

/// Builds the client options (persistent session, manual acks, last will).
pub fn options(cfg: &MqttConfig, client_id: &str) -> anyhow::Result<MqttOptions> {
    let mut o = connection_options(cfg, client_id)?;
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_inflight(1000);
    o.set_last_will(LastWill::new(
        status_topic(&cfg.prefix),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    Ok(o)
}

/// Broker address, keep-alive, packet size, credentials and TLS: what every connection of
/// the daemon shares (clean session, no last will).
pub fn connection_options(cfg: &MqttConfig, client_id: &str) -> anyhow::Result<MqttOptions> {
    let mut o = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keep_alive);
    // The transport limit is kept high on purpose: a packet over it drops the connection
    // and a persistent session redelivers it forever. The payload limit is enforced by
    // the decoder (ack, count, skip).
    o.set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes);
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        o.set_credentials(u.clone(), p.expose().to_string());
    }
    if cfg.tls {
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(cfg)?)),
        ));
    }
    Ok(o)
}

fn tls_config(cfg: &MqttConfig) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("mqtt.ca_file {}", ca.display()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.context("mqtt.ca_file: bad certificate")?)?;
        }
    } else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(c), Some(k)) => {
            let cp = std::fs::read(c)
                .with_context(|| format!("mqtt.client_cert_file {}", c.display()))?;
            let certs = rustls_pemfile::certs(&mut cp.as_slice()).collect::<Result<Vec<_>, _>>()?;
            let kp = std::fs::read(k)
                .with_context(|| format!("mqtt.client_key_file {}", k.display()))?;
            let key = rustls_pemfile::private_key(&mut kp.as_slice())?
                .context("mqtt.client_key_file: no private key")?;
            builder.with_client_auth_cert(certs, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

pub use crate::util::backoff::Backoff;

pub struct Ingest {
    pub eventloop: EventLoop,
    pub handle: MqttHandle,
    connected_tx: watch::Sender<bool>,
    prefix: String,
    filters: Vec<String>,
}

/// Creates the client and its event loop (nothing connects until [`Ingest::run`]).
pub fn connect(
    cfg: &MqttConfig,
    client_id: &str,
    extra_filters: &[String],
) -> anyhow::Result<Ingest> {
    let opts = options(cfg, client_id)?;
    // Large request queue: acks and publishes never wait on the event loop in practice.
    let (client, eventloop) = AsyncClient::new(opts, 65_536);
    let (connected_tx, connected_rx) = watch::channel(false);
    Ok(Ingest {
        eventloop,
        handle: MqttHandle {
            client,
            state: Arc::new(ConnState::default()),
            connected_rx,
        },
        connected_tx,
        prefix: cfg.prefix.clone(),
        filters: subscriptions(&cfg.prefix, extra_filters),
    })
}

impl Ingest {
    fn mark_connected(&self, up: bool) {
        self.handle.state.connected.store(up, Ordering::Release);
        self.connected_tx
            .send_if_modified(|v| std::mem::replace(v, up) != up);
    }

    /// Polls until `stop` turns true. Every publish goes to `tx` (a bounded channel:
    /// when the commit thread is slow we stop polling, and the broker holds the rest).
    pub async fn run(
        mut self,
        tx: flume::Sender<Inbound>,
        mut stop: watch::Receiver<bool>,
    ) -> EventLoop {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut outage_since: Option<Instant> = None;
        let mut connected_at: Option<Instant> = None;
        // This run's subscriptions: all acknowledged (`subscribed`), how many SubAcks are
        // still to come, and whether one was refused or could not be sent.
        let (mut subscribed, mut subacks_due, mut suback_failed) = (false, 0usize, false);
        let client = self.handle.client.clone();
        let depth = metrics::gauge!("evlounge_ingest_queue_depth");
        // One future for the whole run, not one per message (each registered and dropped a
        // waiter on the watch channel: a tenth of this task's CPU at 10k msg/s). It is never
        // polled again once it has completed: every branch that sees it complete breaks.
        let stopped = stop.changed();
        tokio::pin!(stopped);
        loop {
            let ev = tokio::select! {
                biased;
                _ = &mut stopped => break,
                ev = self.eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    let epoch = self.handle.state.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                    self.handle
                        .state
                        .session_present
                        .store(ack.session_present, Ordering::Release);
                    self.handle.state.connacks.fetch_add(1, Ordering::AcqRel);
                    // Ready once our subscriptions stand: at once when the broker kept a
                    // session this run subscribed in, else at the SubAck. A session kept
                    // from an earlier run may lack filters added since (a new source, a
                    // new prefix), or one refused then: each run subscribes once itself
                    // (subscribing again is harmless).
                    let resubscribe = !ack.session_present || !subscribed;
                    if !resubscribe {
                        self.mark_connected(true);
                    }
                    connected_at = Some(Instant::now());
                    match outage_since.take() {
                        Some(t) => tracing::info!(
                            broker = %format!("{}:{}", self.eventloop.mqtt_options.broker_address().0, self.eventloop.mqtt_options.broker_address().1),
                            outage_s = t.elapsed().as_secs_f64(),
                            attempts = backoff.attempts(),
                            session_present = ack.session_present,
                            "mqtt reconnected"
                        ),
                        None => tracing::info!(
                            broker = %format!("{}:{}", self.eventloop.mqtt_options.broker_address().0, self.eventloop.mqtt_options.broker_address().1),
                            session_present = ack.session_present,
                            epoch,
                            "mqtt connected"
                        ),
                    }
                    if resubscribe {
                        subscribed = false;
                        suback_failed = false;
                        subacks_due = 0;
                        for f in &self.filters {
                            match client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                                Ok(()) => subacks_due += 1,
                                Err(e) => {
                                    suback_failed = true;
                                    tracing::error!(filter = %f, error = %e, "subscribe request failed");
                                }
                            }
                        }
                    }
                    let _ = client.try_publish(
                        status_topic(&self.prefix),
                        QoS::AtLeastOnce,
                        true,
                        "online",
                    );
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(at) = connected_at {
                        // A connection that has carried traffic for a while is stable.
                        if at.elapsed() > Duration::from_secs(10) {
                            backoff.reset();
                        }
                    }
                    // An ack needs only the QoS and packet id (rumqttc's `try_ack`): the
                    // topic and payload move into the message instead of being copied.
                    let ack = if p.qos == QoS::AtMostOnce {
                        None
                    } else {
                        let mut a = Publish::from_bytes(String::new(), p.qos, Bytes::new());
                        a.pkid = p.pkid;
                        Some((a, self.handle.state.epoch.load(Ordering::Acquire)))
                    };
                    let msg = Inbound {
                        topic: p.topic,
                        payload: p.payload,
                        recv_ms: crate::util::time::now_ms(),
                        recv_mono_ms: crate::util::time::mono_ms(),
                        ack,
                        redelivered: p.dup,
                    };
                    depth.set(tx.len() as f64);
                    // Waits (backpressure) only when the channel is full.
                    let sent = match tx.try_send(msg) {
                        Ok(()) => Ok(()),
                        Err(flume::TrySendError::Full(msg)) => tokio::select! {
                            biased;
                            _ = &mut stopped => break,
                            r = tx.send_async(msg) => r,
                        },
                        Err(flume::TrySendError::Disconnected(_)) => break,
                    };
                    if sent.is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    for code in &s.return_codes {
                        if matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                            suback_failed = true;
                            tracing::error!("broker refused a subscription");
                        }
                    }
                    subacks_due = subacks_due.saturating_sub(1);
                    // All of them stand: a reconnect to this session needs none again (a
                    // refused or unsent one is asked for again on the next connection).
                    subscribed = subacks_due == 0 && !suback_failed;
                    self.mark_connected(true);
                }
                Ok(_) => {}
                Err(e) => {
                    self.mark_connected(false);
                    // Acks queued from now on belong to a dead connection: rumqttc would
                    // send them on the next one, where the packet ids may be reused.
                    self.handle.state.epoch.fetch_add(1, Ordering::AcqRel);
                    connected_at = None;
                    metrics::counter!("evlounge_mqtt_reconnects_total").increment(1);
                    if outage_since.is_none() {
                        outage_since = Some(Instant::now());
                        tracing::warn!(error = %e, "mqtt connection lost; reconnecting with backoff");
                    } else {
                        tracing::debug!(error = %e, "mqtt reconnect failed");
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        drop(tx);
        self.eventloop
    }
}

/// Publishes `offline` and disconnects, polling the event loop until the broker has it.
pub async fn goodbye(client: &AsyncClient, eventloop: &mut EventLoop, prefix: &str) {
    // Handed over without awaiting: this task is the one that polls, so awaiting room in
    // a full request queue (the broker slow to take what is queued) would wait for ever.
    // The queue drains as it polls, and the requests go in as soon as there is room.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let (mut said, mut left) = (false, false);
    loop {
        if !said {
            said = client
                .try_publish(status_topic(prefix), QoS::AtLeastOnce, true, "offline")
                .is_ok();
        }
        if said && !left {
            left = client.try_disconnect().is_ok();
        }
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_cover_the_contract_topics() {
        let s = subscriptions("evlounge", &[]);
        assert!(s.contains(&"evlounge/+/charger/+/telemetry".to_string()));
        assert!(s.contains(&"evlounge/+/lounge/+/+".to_string()));
    }
}
