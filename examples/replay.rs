//! A fixed replay for instruction counting (`cargo bench --bench suite -- callgrind` runs it
//! under `valgrind --tool=callgrind`): a deterministic stream of site traffic, built in memory
//! first, then fed through the daemon's real decode → domain → commit path (the commit
//! thread's `Processor` over a temp SQLite store and the notification hook), without MQTT.
//!
//! `cargo build --release --example replay && target/release/examples/replay [N]`
//! (N messages, default 100,000). Prints `replayed N messages in S s`.

use std::sync::Arc;
use std::time::Instant;

use evlounge::app::live::Live;
use evlounge::app::processor::Processor;
use evlounge::app::wiring::{notify_config, NotifyHook};
use evlounge::ingest::mqtt::Inbound;
use evlounge::sim::model::{SimConfig, SiteSim};

/// 2025-11-01T00:00:00Z: fixed, and in the past so no `ts` counts as clock skew.
const START_MS: i64 = 1_761_955_200_000;
const CHARGERS: usize = 200;
const SEED: u64 = 42;

/// The first `n` messages of a 200-charger site at 1 Hz, in publication order.
fn stream(n: usize) -> Vec<Inbound> {
    let cfg = SimConfig::standard_site("bench", "evlounge", CHARGERS, SEED, START_MS);
    let mut sim = SiteSim::new(cfg);
    let mut out = Vec::with_capacity(n);
    let mut t = START_MS;
    // Bounded: at 200 chargers × 1 Hz, 100k messages take ~500 simulated seconds.
    for _ in 0..1_000_000 {
        if out.len() >= n {
            break;
        }
        t += 1_000;
        for m in sim.advance_to(t) {
            if out.len() >= n {
                break;
            }
            out.push(Inbound {
                topic: m.topic,
                payload: m.payload.into(),
                // Deterministic: the broker's hop is taken as 20 ms.
                recv_ms: m.ts_ms + 20,
                // Far ahead of this process's monotonic clock: the processor's ticks see
                // no silence, whatever the replay's speed (under valgrind, 50× slower), so
                // its instruction count does not depend on the machine.
                recv_mono_ms: m.ts_ms + 20,
                ack: None,
                redelivered: false,
            });
        }
    }
    out
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let msgs = stream(n);
    anyhow::ensure!(
        msgs.len() == n,
        "the simulator produced {} messages",
        msgs.len()
    );
    let dir = tempfile::tempdir()?;
    let cfg = evlounge::config::from_toml_str(&format!(
        "data_dir = {:?}\n[[sites]]\nid = \"bench\"\ntimezone = \"Europe/Rome\"\n",
        dir.path().join("data").display().to_string()
    ))
    .map_err(|e| anyhow::anyhow!("config: {e:?}"))?;
    let cfg = Arc::new(cfg);
    let conn = evlounge::store::open(&cfg.data_dir)?;
    let live = Arc::new(Live::new());
    let sources = evlounge::ingest::sources::build(&cfg.sources);
    let hook = NotifyHook {
        cfg: Arc::new(notify_config(&cfg)?),
        directory: None,
        live: live.clone(),
        queued: false,
        wake: Arc::new(tokio::sync::Notify::new()),
    };
    let processor = Processor::new(cfg, conn, live, sources)?.with_hook(Box::new(hook));
    let (tx, rx) = flume::unbounded();
    for m in msgs {
        tx.send(m)?;
    }
    drop(tx);
    let started = Instant::now();
    // Returns once the channel is drained (the last batch committed).
    processor.run(rx);
    println!(
        "replayed {n} messages in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
