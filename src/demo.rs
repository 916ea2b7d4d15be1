//! `evlounge demo`: everything on one machine with nothing installed — an embedded MQTT
//! broker, a simulated site publishing to it, the daemon subscribed to it, and the pages.
//! Guests are linked on the MQTT channel as each car starts charging, so notifications
//! show up on `{prefix}/{site}/notify/guest-<charger>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::config::{Config, SiteConfig};
use crate::domain::thresholds::{ChargerMeta, ZoneMeta};
use crate::sim::publish::{run_simulate, sim_config, SimulateOptions};

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub speed: f64,
    pub chargers: usize,
    pub seed: u64,
    pub http: Option<SocketAddr>,
    pub broker: SocketAddr,
}

pub const SITE: &str = "milano";

/// The daemon's configuration for the demo: the simulated site declared as config.
pub fn demo_config(
    mut cfg: Config,
    opts: &DemoOptions,
    broker: SocketAddr,
    data_dir: PathBuf,
    sim: &SimulateOptions,
) -> Config {
    cfg.mqtt.url = format!("mqtt://{broker}");
    cfg.mqtt.host = broker.ip().to_string();
    cfg.mqtt.port = broker.port();
    cfg.data_dir = data_dir;
    if let Some(h) = opts.http {
        cfg.http.listen = h;
        cfg.http.public_url = format!("http://{h}");
    }
    let th = cfg.thresholds.clone();
    let sc = sim_config(sim, crate::util::time::now_ms());
    let chargers = sc
        .chargers
        .iter()
        .map(|c| ChargerMeta {
            site: SITE.into(),
            charger: c.id.clone(),
            bay: c.bay.clone(),
            max_kw: Some(c.max_kw),
            kind: match c.kind {
                crate::sim::model::ChargerKind::Dc => crate::domain::thresholds::ChargerKind::Dc,
                crate::sim::model::ChargerKind::Ac => crate::domain::thresholds::ChargerKind::Ac,
            },
            thresholds: th.clone(),
        })
        .collect();
    let zones = sc
        .zones
        .iter()
        .map(|(id, cap)| ZoneMeta {
            site: SITE.into(),
            zone: id.clone(),
            name: if id == "lounge" {
                "Lounge".into()
            } else {
                id.clone()
            },
            capacity: Some(*cap),
            thresholds: th.clone(),
        })
        .collect();
    cfg.sites.retain(|s| s.id != SITE);
    cfg.sites.push(SiteConfig {
        id: SITE.into(),
        name: "EV Lounge (demo)".into(),
        timezone: "Europe/Rome".into(),
        tz: chrono_tz::Europe::Rome,
        thresholds: th,
        chargers,
        zones,
    });
    cfg
}

pub fn simulate_options(opts: &DemoOptions, broker: SocketAddr, prefix: &str) -> SimulateOptions {
    SimulateOptions {
        mqtt_url: format!("mqtt://{broker}"),
        site: SITE.into(),
        prefix: prefix.into(),
        chargers: opts.chargers.max(1),
        rate_hz: 1.0,
        duration: None,
        speed: opts.speed,
        seed: opts.seed,
        qos: 1,
        connections: 1,
        max_messages: None,
        // The simulated clock runs `speed` times faster than the wall clock: start it far
        // enough in the past that it stays behind "now" (no clock-skew replacement) for
        // about a day of wall time at the default speed.
        start_ms: Some(crate::util::time::now_ms() - (opts.speed.max(1.0) * 86_400_000.0) as i64),
        format: crate::sim::SimFormat::Evlounge,
    }
}

/// Links a guest on the MQTT channel whenever a car starts charging.
async fn link_guests(broker: SocketAddr, prefix: String) {
    let mut o = MqttOptions::new(
        format!("evlounge-demo-desk-{}", std::process::id()),
        broker.ip().to_string(),
        broker.port(),
    );
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 1000);
    let topic = format!("{prefix}/{SITE}/events/charging_started");
    let mut n = 0u64;
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Ok(ev) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                    continue;
                };
                let Some(charger) = ev["charger"].as_str() else {
                    continue;
                };
                n += 1;
                let link = serde_json::json!({
                    "site": SITE,
                    "charger": charger,
                    "channel": "mqtt",
                    "address": format!("guest-{charger}"),
                    "lang": if n.is_multiple_of(2) { "en" } else { "it" },
                });
                let _ = client.try_publish(
                    format!("{prefix}/{SITE}/frontdesk/link"),
                    QoS::AtLeastOnce,
                    false,
                    link.to_string(),
                );
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

pub async fn run(
    cfg: Config,
    opts: DemoOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let broker = crate::sim::broker::start_embedded_broker(opts.broker)
        .context("starting the embedded broker")?;
    let (data_dir, _tmp) = match &opts.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile_dir()?;
            (t.clone(), Some(TempDir(t)))
        }
    };
    let sim = simulate_options(&opts, broker, &cfg.mqtt.prefix);
    let mut cfg = demo_config(cfg, &opts, broker, data_dir, &sim);
    // Prefer the usual port; take any free one when it is busy.
    if opts.http.is_none() && std::net::TcpListener::bind(cfg.http.listen).is_err() {
        cfg.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        // replaced by the bound address at start
        cfg.http.public_url = format!("http://{}", cfg.http.listen);
    }
    if !cfg.http.listen.ip().is_loopback() && cfg.http.staff_token.is_none() {
        anyhow::bail!("http.staff_token is required when the demo listens beyond loopback");
    }
    let prefix = cfg.mqtt.prefix.clone();
    println!("evlounge: broker mqtt://{broker}");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let desk = tokio::spawn(link_guests(broker, prefix.clone()));
    let sim_task = tokio::spawn(async move {
        let mut stop = stop_rx;
        let r = run_simulate(sim, async move {
            let _ = stop.changed().await;
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %format!("{e:#}"), "simulator stopped");
        }
    });
    let r = crate::app::run_with(cfg, shutdown, move |started| {
        let a = started.http;
        println!("evlounge: lounge board http://{a}/");
        println!("evlounge: bay page     http://{a}/bay/{SITE}/hpc-1");
        println!("evlounge: staff        http://{a}/staff");
        println!("evlounge: API          http://{a}/api/v1/chargers");
        println!(
            "evlounge: watch it     mosquitto_sub -h {} -p {} -t '{prefix}/#' -v",
            broker.ip(),
            broker.port()
        );
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), sim_task).await;
    desk.abort();
    r
}

/// A temp directory removed when the demo ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "evlounge-demo-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}
