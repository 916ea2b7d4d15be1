//! Wiring: `run(config, shutdown)` spawns every task in one place and shuts down in order:
//! stop intake → drain the commit thread (final commit) → flush MQTT out → let the
//! notification worker finish the attempt in flight (its MQTT channel still needs the
//! connection) → say goodbye to the broker → flush time series (the rest stays in the
//! spool) → stop HTTP → exit.

pub mod acker;
pub mod live;
pub mod processor;
pub mod wiring;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::Config;
use crate::http::{self, AppState, Readiness};
use crate::ingest::mqtt;
use crate::outputs::mqtt_out::MqttOut;
use crate::outputs::timeseries::TsdbState;
use live::Live;
use processor::Processor;

/// What a running daemon tells its caller (tests, demo) once it serves.
#[derive(Clone, Debug)]
pub struct Started {
    pub http: SocketAddr,
}

/// `evlounge-<hostname>-<suffix kept in data_dir>`.
pub fn client_id(data_dir: &Path) -> anyhow::Result<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_else(|_| "host".into());
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect();
    let f = data_dir.join("client_id_suffix");
    let suffix = match std::fs::read_to_string(&f) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => {
            let s = format!("{:08x}", rand::random::<u32>());
            std::fs::write(&f, &s).with_context(|| format!("writing {}", f.display()))?;
            s
        }
    };
    Ok(format!("evlounge-{host}-{suffix}"))
}

/// `data_dir/lock`, held (an exclusive `flock`) while the daemon runs: a second daemon on
/// the same data dir would share its store, spool and outbox, and send again what the
/// first has in flight. The lock goes with the process, however it ends.
pub struct DataDirLock(#[allow(dead_code)] std::fs::File);

pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join("lock");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // (`File::try_lock` is newer than this crate's rust-version.)
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this function owns, open for its whole lifetime.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        anyhow::bail!(
            "data_dir {} is in use by another evlounge (pid {}); stop it first or give this \
             one a data_dir of its own",
            data_dir.display(),
            holder.trim()
        );
    }
    // Who holds it, for the message above (advisory; the lock itself is what counts).
    let _ = f.set_len(0).and_then(|()| f.rewind());
    let _ = write!(f, "{}", std::process::id());
    Ok(DataDirLock(f))
}

/// Runs the daemon until `shutdown` resolves, then drains and returns.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(cfg, shutdown, |_| {}).await
}

/// Like [`run`], calling `on_started` once HTTP is bound.
pub async fn run_with(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    on_started: impl FnOnce(Started),
) -> anyhow::Result<()> {
    let mut cfg = cfg;
    // The data dir first: a second daemon on it is told so, not that the port is taken.
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("data_dir {}", cfg.data_dir.display()))?;
    let _data_dir_lock = lock_data_dir(&cfg.data_dir)?;
    // Bind next: with port 0 the real address is known only now, and the default public
    // URL (QR codes, links in notifications) must name it.
    let (listener, addr) = http::bind(cfg.http.listen)
        .await
        .with_context(|| format!("http.listen {}", cfg.http.listen))?;
    if cfg.http.listen.port() == 0 && cfg.http.public_url == format!("http://{}", cfg.http.listen) {
        cfg.http.public_url = format!("http://{addr}");
    }
    let cfg = Arc::new(cfg);
    let metrics = http::metrics::handle();
    // Ends with `run_with` (the sender is dropped when it returns).
    let (_upkeep_stop, upkeep_rx) = watch::channel(false);
    tokio::spawn(http::metrics::upkeep(metrics.clone(), upkeep_rx));
    let client_id = match &cfg.mqtt.client_id {
        Some(id) => id.clone(),
        None => client_id(&cfg.data_dir)?,
    };
    let conn = crate::store::open(&cfg.data_dir).context("opening the store")?;
    // Stopped (after a last checkpoint) once the commit thread is done; dropping the sender
    // on an early return stops it too.
    let (checkpoint_stop, checkpoint_rx) = std::sync::mpsc::channel::<()>();
    let wal_watch = crate::store::WalWatch::default();
    let checkpointer =
        crate::store::spawn_checkpointer_watching(&cfg.data_dir, checkpoint_rx, wal_watch.clone())
            .context("starting the checkpointer")?;
    let live = Arc::new(Live::new());

    let sources = crate::ingest::sources::build(&cfg.sources);
    let filters: Vec<String> = sources.iter().map(|s| s.filter()).collect();
    let ingest = mqtt::connect(&cfg.mqtt, &client_id, &filters)?;
    let handle = ingest.handle.clone();

    let (in_tx, in_rx) = flume::bounded::<mqtt::Inbound>(16_384);
    let (out_tx, out_rx) = flume::bounded(16_384);

    // Time series: the spool is written by the ack thread (see `acker`), read by the sink
    // task.
    let (tsdb_state, timeseries) = match wiring::influx_config(&cfg) {
        Some(ic) => {
            let ts = crate::outputs::timeseries::start(ic, &cfg.data_dir)
                .context("opening the time-series spool")?;
            (ts.state.clone(), Some(ts))
        }
        None => (watch::channel(TsdbState::Off).1, None),
    };
    let (points_tx, points_rx) = flume::bounded::<crate::outputs::timeseries::Point>(10_000);

    let notify_cfg = Arc::new(wiring::notify_config(&cfg).context("notify configuration")?);
    let directory = match &notify_cfg.directory_file {
        Some(p) => Some(
            crate::outputs::notify::load_directory(p)
                .with_context(|| format!("notify.directory_file {}", p.display()))?,
        ),
        None => None,
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let hook = wiring::NotifyHook {
        cfg: notify_cfg.clone(),
        directory,
        live: live.clone(),
        queued: false,
        wake: wake.clone(),
    };

    let mut processor = Processor::new(cfg.clone(), conn, live.clone(), sources)
        .context("loading state")?
        .with_wal_watch(wal_watch)
        .with_mqtt(handle.clone(), out_tx)
        .with_hook(Box::new(hook));
    let mut sink_task = None;
    let mut sink_stop = None;
    if let Some(ts) = timeseries {
        processor = processor
            .with_sink(Box::new(wiring::SpoolSink { writer: ts.writer }))
            .with_extra_points(points_rx);
        sink_task = Some(tokio::spawn(ts.task));
        sink_stop = Some(ts.shutdown);
    }
    // `commit_alive` closes when the commit thread ends, however it ends.
    let (commit_alive_tx, mut commit_alive) = watch::channel(());
    let commit = std::thread::Builder::new()
        .name("commit".into())
        .spawn(move || {
            let _alive = commit_alive_tx;
            processor.run(in_rx)
        })
        .context("spawning the commit thread")?;

    // Ingest: intake stops on `stop_intake`; the event loop keeps polling (so MQTT out can
    // flush) until `finish`, then says goodbye.
    let (stop_intake_tx, stop_intake_rx) = watch::channel(false);
    let (finish_tx, finish_rx) = watch::channel(false);
    let prefix = cfg.mqtt.prefix.clone();
    let ingest_task = tokio::spawn(run_ingest(ingest, in_tx, stop_intake_rx, finish_rx, prefix));

    let (out_stop_tx, out_stop_rx) = watch::channel(false);
    let mqtt_out = MqttOut {
        live: live.clone(),
        marked: parking_lot::Mutex::new(std::collections::BTreeMap::new()),
        handle: handle.clone(),
        rx: out_rx,
        data_dir: cfg.data_dir.clone(),
        prefix: cfg.mqtt.prefix.clone(),
        state_min_interval: cfg.mqtt.state_min_interval,
    };
    let out_task = tokio::spawn(mqtt_out.run(out_stop_rx));

    let (notify_stop_tx, notify_stop_rx) = watch::channel(false);
    let mqtt_pub: Arc<dyn crate::outputs::notify::MqttPublish> = Arc::new(
        wiring::AckedPublish::new(cfg.mqtt.clone(), format!("{client_id}-notify")),
    );
    let notify_task = tokio::spawn(crate::outputs::notify::run_worker(
        (*notify_cfg).clone(),
        crate::store::db_path(&cfg.data_dir),
        wake,
        Some(mqtt_pub),
        cfg.influx.as_ref().map(|_| points_tx),
        notify_stop_rx,
    ));

    let state = AppState {
        cfg: cfg.clone(),
        live: live.clone(),
        data_dir: cfg.data_dir.clone(),
        ready: Readiness {
            mqtt: handle.connected_rx.clone(),
            tsdb: tsdb_state,
        },
        metrics,
        notify: notify_cfg.clone(),
        limiter: Arc::new(http::RateLimiter::new(20, cfg.http.forwarded_for)),
    };
    println!("evlounge: listening on http://{addr}");
    tracing::info!(%addr, "http listening");
    on_started(Started { http: addr });
    let (http_stop_tx, mut http_stop_rx) = watch::channel(false);
    let app = http::router(state);
    let http_task = tokio::spawn(async move {
        let r = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = http_stop_rx.changed().await;
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "http server failed");
        }
    });

    // Runs until asked to stop, or until the commit thread is gone (nothing would be
    // processed any more: exit non-zero so the supervisor restarts us).
    let failed = tokio::select! {
        _ = shutdown => false,
        _ = commit_alive.changed() => true,
    };
    if failed {
        tracing::error!("the commit thread ended unexpectedly; shutting down");
    }
    tracing::info!("shutting down");
    // The notification worker first: it finishes the attempt in flight (the rest stays in
    // the outbox) and reports its outcome point to the commit thread, which must still be
    // there to spool it.
    let _ = notify_stop_tx.send(true);
    finish_within("notifications", Duration::from_secs(15), notify_task).await;
    let _ = stop_intake_tx.send(true);
    // The commit thread ends once the intake channel is closed and drained.
    let joined = tokio::task::spawn_blocking(move || commit.join()).await;
    let commit_ok = matches!(joined, Ok(Ok(())));
    if !commit_ok {
        tracing::error!("commit thread ended abnormally");
    }
    drop(checkpoint_stop);
    let _ = tokio::task::spawn_blocking(move || checkpointer.join()).await;
    let _ = out_stop_tx.send(true);
    finish_within("mqtt out", Duration::from_secs(5), out_task).await;
    let _ = finish_tx.send(true);
    finish_within("mqtt", Duration::from_secs(5), ingest_task).await;
    // What the sink cannot write within its drain time stays in the spool for next start.
    if let (Some(stop), Some(task)) = (sink_stop, sink_task) {
        stop.shutdown();
        finish_within("time series", Duration::from_secs(10), task).await;
    }
    let _ = http_stop_tx.send(true);
    finish_within("http", Duration::from_secs(5), http_task).await;
    tracing::info!("stopped");
    if failed || !commit_ok {
        anyhow::bail!("the commit thread failed; see the log");
    }
    Ok(())
}

/// Waits for a task to finish its shutdown, and stops it when it takes longer.
async fn finish_within(name: &str, limit: Duration, mut task: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(limit, &mut task).await.is_err() {
        tracing::warn!(task = name, "did not finish in time; stopped");
        task.abort();
    }
}

async fn run_ingest(
    ingest: mqtt::Ingest,
    in_tx: flume::Sender<mqtt::Inbound>,
    stop_intake: watch::Receiver<bool>,
    mut finish: watch::Receiver<bool>,
    prefix: String,
) {
    let client = ingest.handle.client.clone();
    let mut eventloop = ingest.run(in_tx, stop_intake).await;
    // Intake is closed (the channel sender is dropped); keep the connection serviced so the
    // publisher can flush, dropping inbound messages unacked (the broker redelivers them).
    loop {
        tokio::select! {
            _ = finish.changed() => break,
            ev = eventloop.poll() => {
                if ev.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    mqtt::goodbye(&client, &mut eventloop, &prefix).await;
}
