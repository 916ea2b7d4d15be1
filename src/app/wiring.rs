//! Adapters between the commit thread and the outputs: the notification hook that runs in
//! the commit transaction, the spool as the point sink (written by the ack thread), and the
//! typed output configurations built from the validated config.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use rusqlite::Transaction;

use crate::app::processor::{CommitHook, PointSink};
use crate::config::Config;
use crate::domain::event::Event;
use crate::domain::session::SessionRecord;
use crate::outputs::notify::{self, Channel, Directory, LinkRequest, NotifyConfig};
use crate::outputs::timeseries::{InfluxConfig, SpoolWriter};

/// The spool as the point sink: append, fsync per group commit (on the ack thread).
pub struct SpoolSink {
    pub writer: SpoolWriter,
}

impl PointSink for SpoolSink {
    fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
        self.writer.append(lines)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.writer.sync()
    }
}

pub fn influx_config(cfg: &Config) -> Option<InfluxConfig> {
    let i = cfg.influx.as_ref()?;
    let mut c = InfluxConfig::new(i.url.clone(), &i.org, &i.bucket, i.token.expose());
    c.batch_lines = i.batch_lines;
    c.flush_ms = i.flush_interval.as_millis() as u64;
    c.timeout = i.timeout;
    c.spool_max_bytes = i.spool_max_bytes;
    Some(c)
}

pub fn notify_config(cfg: &Config) -> anyhow::Result<NotifyConfig> {
    let public = url::Url::parse(&cfg.http.public_url)?;
    let n = &cfg.notify;
    let mut c = NotifyConfig::new(public);
    c.webhook = n.webhook.as_ref().map(|w| notify::WebhookConfig {
        url: w.url.clone(),
        secret: w.secret.clone(),
    });
    c.ntfy = n.ntfy.as_ref().map(|w| notify::NtfyConfig {
        url: w.url.clone(),
        token: w.token.clone(),
    });
    c.email = n.email.as_ref().map(|e| notify::EmailConfig {
        smtp_url: e.smtp_url.clone(),
        from: e.from.clone(),
        reply_to: e.reply_to.clone(),
        username: e.username.clone(),
        password: e.password.clone(),
    });
    c.mqtt_enabled = n.mqtt;
    c.mqtt_prefix = cfg.mqtt.prefix.clone();
    c.retention = n.retention;
    c.max_attempts = n.max_attempts;
    c.max_age = n.max_age;
    c.attempt_timeout = n.attempt_timeout;
    c.templates_dir = n.templates_dir.clone();
    c.directory_file = n.directory_file.clone();
    c.guest_channels = cfg
        .http
        .guest_channels
        .iter()
        .filter_map(|s| Channel::parse(s))
        .collect();
    Ok(c)
}

/// Runs in the commit transaction: binds links to sessions, queues notifications for new
/// events, takes front-desk links from MQTT.
pub struct NotifyHook {
    pub cfg: Arc<NotifyConfig>,
    pub directory: Option<Directory>,
    pub live: Arc<crate::app::live::Live>,
    /// Notifications were queued in this batch: wake the worker after the commit.
    pub queued: bool,
    pub wake: Arc<tokio::sync::Notify>,
}

impl CommitHook for NotifyHook {
    fn on_event(
        &mut self,
        tx: &Transaction<'_>,
        event: &Event,
        session_key: Option<&str>,
        now_ms: i64,
    ) -> rusqlite::Result<()> {
        if notify::enqueue_for_event(tx, event, session_key, now_ms)? > 0 {
            self.queued = true;
        }
        Ok(())
    }

    fn on_session(
        &mut self,
        tx: &Transaction<'_>,
        s: &SessionRecord,
        opened: bool,
        tagged: bool,
        now_ms: i64,
    ) -> rusqlite::Result<()> {
        if opened {
            notify::on_session_opened(
                tx,
                self.directory.as_ref(),
                &s.site,
                &s.charger,
                &s.session_key,
                s.id_tag.as_deref(),
                now_ms,
            )?;
        } else if let Some(tag) = s.id_tag.as_deref().filter(|_| tagged) {
            notify::on_session_tagged(
                tx,
                self.directory.as_ref(),
                &s.site,
                &s.charger,
                &s.session_key,
                tag,
                now_ms,
            )?;
        }
        Ok(())
    }

    fn on_session_closed(
        &mut self,
        tx: &Transaction<'_>,
        s: &SessionRecord,
        now_ms: i64,
    ) -> rusqlite::Result<()> {
        notify::on_session_closed(tx, &s.session_key, now_ms)
    }

    fn after_commit(&mut self) {
        if std::mem::take(&mut self.queued) {
            self.wake.notify_one();
        }
    }

    fn on_frontdesk(&mut self, tx: &Transaction<'_>, site: &str, payload: &[u8], now_ms: i64) {
        let req: LinkRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("evlounge_decode_errors_total", "reason" => "invalid_field", "adapter" => "frontdesk").increment(1);
                // serde's message may quote the offending value (an address): only where.
                tracing::warn!(line = e.line(), column = e.column(), kind = ?e.classify(), "front-desk link rejected");
                return;
            }
        };
        // A QoS 1 message can be redelivered: the same link message links once.
        let dedup = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(site.as_bytes());
            h.update(b"|");
            h.update(payload);
            format!("fd|{}", hex::encode(h.finalize()))
        };
        let seen = tx
            .prepare_cached("SELECT 1 FROM guests WHERE dedup_key = ?1")
            .and_then(|mut st| st.exists([&dedup]));
        if matches!(seen, Ok(true)) {
            tracing::debug!("front-desk link already applied (redelivery)");
            return;
        }
        if req.site != site {
            tracing::warn!(topic_site = %site, "front-desk link for another site rejected");
            return;
        }
        let current = req
            .charger
            .as_deref()
            .and_then(|c| self.live.charger(site, c))
            .and_then(|c| c.session)
            .filter(|s| s.ended.is_none())
            .map(|s| s.session_key);
        match notify::link_guest(tx, &req, &self.cfg, current.as_deref(), now_ms) {
            Ok(link) => {
                if let Err(e) = tx.execute(
                    "UPDATE guests SET dedup_key = ?1 WHERE guest_id = ?2",
                    rusqlite::params![dedup, link.guest_id],
                ) {
                    tracing::warn!(error = %e, "cannot record the front-desk link's dedup key");
                }
                tracing::info!(guest = %link.guest_id, state = %link.state, "front-desk link")
            }
            Err(e) => tracing::warn!(error = %e, "front-desk link rejected"),
        }
    }
}

/// The notification worker's MQTT channel: each notification on a short connection of its
/// own, done once the broker has acknowledged it (PUBACK). On the daemon's client, a
/// publish returned as soon as the request was queued, and a notification handed over
/// while the broker was away was recorded delivered and lost with a restart. A connection
/// per delivery keeps its PUBACK the only one that can come. Concurrent deliveries use
/// client ids `{client_id}-notify-{n}`, n from a small set (the lowest free), so brokers
/// that authorise by client id see a fixed list.
pub struct AckedPublish {
    cfg: crate::config::MqttConfig,
    client_id: String,
    /// Slot numbers of the client ids in use by a delivery.
    in_use: Arc<parking_lot::Mutex<std::collections::BTreeSet<u32>>>,
}

/// A client id slot, given back when the delivery's connection is gone (however it ends).
struct Slot {
    in_use: Arc<parking_lot::Mutex<std::collections::BTreeSet<u32>>>,
    n: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_use.lock().remove(&self.n);
    }
}

impl AckedPublish {
    pub fn new(cfg: crate::config::MqttConfig, client_id: String) -> Self {
        AckedPublish {
            cfg,
            client_id,
            in_use: Arc::default(),
        }
    }

    /// The lowest free slot.
    fn slot(&self) -> Slot {
        let mut in_use = self.in_use.lock();
        let n = (0..).find(|n| !in_use.contains(n)).unwrap_or(0);
        in_use.insert(n);
        Slot {
            in_use: self.in_use.clone(),
            n,
        }
    }

    async fn publish_acked(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        use rumqttc::{Event, Outgoing, Packet, QoS};
        let slot = self.slot();
        let id = format!("{}-notify-{}", self.client_id, slot.n);
        let opts =
            crate::ingest::mqtt::connection_options(&self.cfg, &id).map_err(|e| e.to_string())?;
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 4);
        client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|e| e.to_string())?;
        // The caller's attempt timeout bounds this; dropping the event loop closes the
        // connection.
        let mut pkid = None;
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(id))) => pkid = Some(id),
                Ok(Event::Incoming(Packet::PubAck(ack))) if Some(ack.pkid) == pkid => break,
                Ok(_) => {}
                // Connection refused, reset, TLS: the worker retries with backoff.
                Err(e) => return Err(e.to_string()),
            }
        }
        // Done: the goodbye happens on its own (briefly, best effort), outside the
        // attempt's time, and the slot is free once it is.
        tokio::spawn(async move {
            let _slot_until_gone = slot;
            if client.try_disconnect().is_ok() {
                let _ = tokio::time::timeout(std::time::Duration::from_millis(200), async {
                    while let Ok(ev) = events.poll().await {
                        if let Event::Outgoing(Outgoing::Disconnect) = ev {
                            break;
                        }
                    }
                })
                .await;
            }
        });
        Ok(())
    }
}

impl notify::MqttPublish for AckedPublish {
    fn publish(&self, topic: String, payload: Vec<u8>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.publish_acked(topic, payload))
    }
}
