//! The embedded MQTT broker (`evlounge demo`): rumqttd on its own threads, MQTT 3.1.1, no TLS.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Payloads up to 1 MiB: above the daemon's default `mqtt.max_payload_bytes` (256 KiB), so
/// the daemon's own "oversized" handling is what a demo shows, not a dropped connection.
const MAX_PAYLOAD: usize = 1 << 20;

/// Starts a broker listening on `listen` and returns the address it really listens on once it
/// accepts connections. Port 0 picks a free port. The broker runs until the process exits.
pub fn start_embedded_broker(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    // rumqttd binds inside its own thread and never reports the address, so port 0 is
    // resolved here. Another process could take the port in between: unlikely, and the
    // readiness check below then fails loudly instead of hanging.
    let addr = if listen.port() == 0 {
        let probe = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
        probe.local_addr()?
    } else {
        listen
    };

    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PAYLOAD,
        // Many QoS 1 publishes in flight per client: the simulator and the daemon both pipeline.
        max_inflight_count: 10_000,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4-demo".to_string(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 1_000,
            // Per-topic commit log kept in memory: 10 segments of 16 MiB bound a topic's backlog
            // for a persistent (clean_session=false) subscriber that is away.
            max_segment_size: 16 << 20,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Config::default()
    };

    std::thread::Builder::new()
        .name("mqtt-broker".to_string())
        .spawn(move || {
            let mut broker = Broker::new(config);
            // start() blocks for the broker's lifetime; returning means its servers died.
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .context("spawning the broker thread")?;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(addr),
            Err(e) if Instant::now() >= deadline => {
                bail!("embedded broker did not start listening on {addr}: {e}")
            }
            // The broker's server thread binds asynchronously: retry shortly.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
