//! Time series end to end: spool → sink → a real VictoriaMetrics (InfluxDB v2 write API),
//! plus a scripted fake server for statuses VictoriaMetrics never sends.

#[path = "common/influx_fake.rs"]
mod fake;
#[path = "common/vm.rs"]
mod vm;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use evlounge::outputs::timeseries::spool::{segment_path, Spool};
use evlounge::outputs::timeseries::{
    encode_points, start, InfluxConfig, Point, Timeseries, TsdbState,
};
use fake::Reply;

const WAIT: Duration = Duration::from_secs(60);

fn base_ms() -> i64 {
    // In the past: VictoriaMetrics' export stops at "now" and its retention is a month.
    chrono::Utc::now().timestamp_millis() - 2 * 3600 * 1000
}

/// Point `i`: one of 10 chargers, a unique timestamp per series, float fields.
fn point(i: usize, base: i64) -> Point {
    Point::new("charger", base + i as i64)
        .tag("site", "milano")
        .tag("charger", format!("c{}", i % 10))
        .tag("status", "charging")
        .field("power_kw", Some(i as f64 + 0.5))
        .field("soc_pct", Some((i % 100) as f64))
}

fn cfg(url: url::Url) -> InfluxConfig {
    let mut c = InfluxConfig::new(url, "org", "bucket", "t0ken");
    c.flush_ms = 50;
    c.batch_lines = 1_000;
    c.timeout = Duration::from_secs(2);
    c.max_backoff = Duration::from_millis(500);
    c.drain_timeout = Duration::from_secs(3);
    c
}

/// What the commit thread does: encode, append, sync.
fn commit(ts: &mut Timeseries, range: std::ops::Range<usize>, base: i64, chunk: usize) {
    let mut buf = Vec::new();
    let pts: Vec<Point> = range.map(|i| point(i, base)).collect();
    for c in pts.chunks(chunk) {
        buf.clear();
        encode_points(c, &mut buf);
        ts.writer.append(&buf).expect("append");
        ts.writer.sync().expect("sync");
    }
}

async fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn spawn(ts: &mut Timeseries) -> tokio::task::JoinHandle<()> {
    let task = std::mem::replace(&mut ts.task, Box::pin(async {}));
    tokio::spawn(task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_points_are_stored_with_tags_and_float_fields() {
    let vm = vm::Vm::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut ts = start(cfg(vm.url()), dir.path()).unwrap();
    let task = spawn(&mut ts);
    let base = base_ms();
    let n = 5_000;
    commit(&mut ts, 0..n, base, 250);
    until("all points written", WAIT, || {
        ts.stats.written() == n as u64
    })
    .await;
    until("spool drained", WAIT, || ts.spool.is_drained()).await;

    assert_eq!(vm.wait_samples("charger_power_kw", n, WAIT).await, n);
    assert_eq!(vm.wait_samples("charger_soc_pct", n, WAIT).await, n);
    let series = vm.export("{__name__=\"charger_power_kw\"}").await;
    assert_eq!(series.len(), 10);
    let mut seen = BTreeSet::new();
    for s in &series {
        assert_eq!(s.labels["site"], "milano");
        assert_eq!(s.labels["status"], "charging");
        let c: usize = s.labels["charger"][1..].parse().unwrap();
        for (v, t) in s.values.iter().zip(&s.timestamps) {
            let i = (t - base) as usize;
            assert_eq!(i % 10, c);
            assert_eq!(*v, i as f64 + 0.5);
            assert!(seen.insert(i), "duplicate {i}");
        }
    }
    assert_eq!(seen.len(), n);
    assert_eq!(*ts.state.borrow(), TsdbState::Up);

    ts.shutdown.shutdown();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsdb_outage_under_load_loses_nothing() {
    let mut vm = vm::Vm::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut ts = start(cfg(vm.url()), dir.path()).unwrap();
    let task = spawn(&mut ts);
    let base = base_ms();
    let n = 30_000;
    let stats = ts.stats.clone();
    let mut state = ts.state.clone();
    let spool = ts.spool.clone();

    // The commit thread keeps producing throughout the outage.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let producer = std::thread::spawn(move || {
        let per = 200;
        for k in 0..n / per {
            commit(&mut ts, k * per..(k + 1) * per, base, per);
            if k == n / per / 3 {
                // Let the test take the TSDB down mid-stream.
                tx.send(()).unwrap();
            }
            // Load shape, not synchronisation: spread the writes over the outage.
            std::thread::sleep(Duration::from_millis(2));
        }
        ts
    });
    rx.recv().unwrap();
    vm.stop();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == TsdbState::Spooling))
        .await
        .expect("state spooling")
        .unwrap();
    let retries_during_outage = stats.retries();
    until("a retry", WAIT, || stats.retries() > retries_during_outage).await;
    vm.restart().await;
    let ts = producer.join().unwrap();
    until("all points written", WAIT, || stats.written() >= n as u64).await;
    until("spool drained", WAIT, || spool.is_drained()).await;
    assert_eq!(*ts.state.borrow(), TsdbState::Up);

    assert_eq!(vm.wait_samples("charger_power_kw", n, WAIT).await, n);
    let mut seen = BTreeSet::new();
    for s in vm.export("{__name__=\"charger_power_kw\"}").await {
        for t in s.timestamps {
            assert!(seen.insert(t), "duplicate timestamp in {:?}", s.labels);
        }
    }
    assert_eq!(seen.len(), n);
    assert_eq!(spool.dropped_points(), 0);

    ts.shutdown.shutdown();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    drop(ts.writer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_kill_while_spooling_replays_everything_on_restart() {
    // No dedup: replay must neither lose nor repeat an acknowledged batch.
    let mut vm = vm::Vm::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let base = base_ms();
    let first = 3_000;
    let total = 8_000;
    {
        let mut ts = start(cfg(vm.url()), dir.path()).unwrap();
        let task = spawn(&mut ts);
        commit(&mut ts, 0..first, base, 100);
        until("first part written", WAIT, || {
            ts.stats.written() == first as u64
        })
        .await;
        until("first part acked", WAIT, || ts.spool.is_drained()).await;
        vm.stop();
        commit(&mut ts, first..total, base, 100);
        until("spooling", WAIT, || {
            *ts.state.borrow() == TsdbState::Spooling
        })
        .await;
        // SIGKILL as far as the spool can tell: no shutdown, the future just vanishes.
        task.abort();
        let _ = task.await;
        assert!(!ts.spool.is_drained());
    }
    vm.restart().await;
    let mut ts = start(cfg(vm.url()), dir.path()).unwrap();
    let task = spawn(&mut ts);
    until("replay written", WAIT, || {
        ts.stats.written() == (total - first) as u64
    })
    .await;
    until("spool drained", WAIT, || ts.spool.is_drained()).await;
    assert_eq!(
        vm.wait_samples("charger_power_kw", total, WAIT).await,
        total
    );
    // Give a late duplicate the chance to show up before concluding there is none.
    vm.export("{__name__=\"charger_power_kw\"}").await;
    assert_eq!(
        vm.wait_samples("charger_power_kw", total + 1, Duration::from_millis(500))
            .await,
        total
    );
    ts.shutdown.shutdown();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_spool_tail_is_skipped_and_the_rest_replayed() {
    let vm = vm::Vm::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let base = base_ms();
    let (chunks, per) = (20, 100);
    {
        // A previous run spooled these and died before sending any.
        let (mut w, _r) = Spool::open(&spool_dir, 1 << 30).unwrap();
        let mut buf = Vec::new();
        for k in 0..chunks {
            buf.clear();
            let pts: Vec<Point> = (k * per..(k + 1) * per).map(|i| point(i, base)).collect();
            encode_points(&pts, &mut buf);
            w.append(&buf).unwrap();
        }
        w.sync().unwrap();
    }
    // ... in the middle of writing the last record.
    let seg = segment_path(&spool_dir, 1);
    let len = std::fs::metadata(&seg).unwrap().len();
    truncate(&seg, len - 1000);

    let mut ts = start(cfg(vm.url()), dir.path()).unwrap();
    assert_eq!(ts.spool.torn_tails(), 1);
    let task = spawn(&mut ts);
    let want = (chunks - 1) * per;
    until("replay written", WAIT, || ts.stats.written() == want as u64).await;
    assert_eq!(vm.wait_samples("charger_power_kw", want, WAIT).await, want);
    // The torn record's points are the last ones: everything before is there.
    let max_ts = vm
        .export("{__name__=\"charger_power_kw\"}")
        .await
        .iter()
        .flat_map(|s| s.timestamps.clone())
        .max()
        .unwrap();
    assert_eq!(max_ts, base + want as i64 - 1);
    ts.shutdown.shutdown();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[tokio::test]
async fn a_rejected_line_is_isolated_and_the_rest_delivered() {
    let (url, srv) = fake::start(Box::new(|_, body| {
        if body.contains("charger=poison") {
            Reply::Status(400)
        } else {
            Reply::Status(204)
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut ts = start(cfg(url), dir.path()).unwrap();
    let task = spawn(&mut ts);
    let base = base_ms();
    let mut pts: Vec<Point> = (0..100).map(|i| point(i, base)).collect();
    pts[37] = Point::new("charger", base)
        .tag("charger", "poison")
        .field("power_kw", Some(1.0));
    let mut buf = Vec::new();
    encode_points(&pts, &mut buf);
    ts.writer.append(&buf).unwrap();
    until("batch settled", WAIT, || ts.spool.is_drained()).await;

    assert_eq!(ts.stats.rejected(), 1);
    assert_eq!(ts.stats.written(), 99);
    let got = srv.accepted();
    let want: Vec<String> = String::from_utf8(buf)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("poison"))
        .map(str::to_string)
        .collect();
    // Every good line exactly once, in order.
    assert_eq!(got, want);
    // Halving 100 lines isolates one line in about 2·log2(100) requests, not 100.
    assert!(srv.request_count() <= 16, "{}", srv.request_count());
    assert!(srv.bad_requests.lock().is_empty());
    assert_eq!(*ts.state.borrow(), TsdbState::Up);
    ts.shutdown.shutdown();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn too_large_batches_are_split_without_loss() {
    let (url, srv) = fake::start(Box::new(|_, body| {
        if body.lines().count() > 64 {
            Reply::Status(413)
        } else {
            Reply::Status(204)
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut ts = start(cfg(url), dir.path()).unwrap();
    let task = spawn(&mut ts);
    commit(&mut ts, 0..1_000, base_ms(), 1_000);
    until("drained", WAIT, || ts.spool.is_drained()).await;
    assert_eq!(ts.stats.written(), 1_000);
    assert_eq!(ts.stats.rejected(), 0);
    assert_eq!(srv.accepted().len(), 1_000);
    ts.shutdown.shutdown();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (url, srv) = fake::start(Box::new(|n, _| {
        if n == 0 {
            Reply::StatusWith(429, "retry-after", "1".into())
        } else {
            Reply::Status(204)
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut ts = start(cfg(url), dir.path()).unwrap();
    let task = spawn(&mut ts);
    commit(&mut ts, 0..10, base_ms(), 10);
    until("written", WAIT, || ts.stats.written() == 10).await;
    {
        let reqs = srv.requests.lock();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].status, 429);
        let gap = reqs[1].at - reqs[0].at;
        // cfg caps our own backoff at 500 ms: only Retry-After explains a 1 s wait.
        assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    }
    assert_eq!(srv.accepted().len(), 10);
    ts.shutdown.shutdown();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_then_recovers() {
    let (url, srv) = fake::start(Box::new(|_, _| Reply::Hang)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(url);
    c.timeout = Duration::from_millis(300);
    let mut ts = start(c, dir.path()).unwrap();
    let task = spawn(&mut ts);
    commit(&mut ts, 0..50, base_ms(), 10);
    until("two timed-out attempts", WAIT, || srv.request_count() >= 2).await;
    until("state spooling", WAIT, || {
        *ts.state.borrow() == TsdbState::Spooling
    })
    .await;
    assert_eq!(ts.stats.written(), 0);
    assert!(ts.stats.retries() >= 1);
    srv.set_script(Box::new(|_, _| Reply::Status(204)));
    until("written", WAIT, || ts.stats.written() == 50).await;
    until("state up", WAIT, || *ts.state.borrow() == TsdbState::Up).await;
    assert_eq!(srv.accepted().len(), 50);
    ts.shutdown.shutdown();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn rejected_token_sets_auth_failed_and_keeps_the_points() {
    let (url, srv) = fake::start(Box::new(|_, _| Reply::Status(401))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(url);
    c.auth_retry = Duration::from_millis(200);
    let mut ts = start(c, dir.path()).unwrap();
    let task = spawn(&mut ts);
    commit(&mut ts, 0..20, base_ms(), 20);
    until("auth_failed", WAIT, || {
        *ts.state.borrow() == TsdbState::AuthFailed
    })
    .await;
    until("a slow retry", WAIT, || srv.request_count() >= 2).await;
    assert!(!ts.spool.is_drained());
    // The operator fixes the token (here: the server starts accepting it).
    srv.set_script(Box::new(|_, _| Reply::Status(204)));
    until("written", WAIT, || ts.stats.written() == 20).await;
    assert_eq!(*ts.state.borrow(), TsdbState::Up);
    ts.shutdown.shutdown();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_flushes_pending_points_without_waiting_for_the_timer() {
    let (url, srv) = fake::start(Box::new(|_, _| Reply::Status(204))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(url);
    c.flush_ms = 3_600_000;
    let mut ts = start(c, dir.path()).unwrap();
    let task = spawn(&mut ts);
    commit(&mut ts, 0..30, base_ms(), 10);
    ts.shutdown.shutdown();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert_eq!(srv.accepted().len(), 30);
    assert!(ts.spool.is_drained());
}

#[tokio::test]
async fn shutdown_with_tsdb_down_is_bounded_and_keeps_the_spool() {
    let (url, srv) = fake::start(Box::new(|_, _| Reply::Status(503))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(url.clone());
    c.drain_timeout = Duration::from_millis(500);
    let mut ts = start(c.clone(), dir.path()).unwrap();
    let task = spawn(&mut ts);
    commit(&mut ts, 0..30, base_ms(), 10);
    until("a failed attempt", WAIT, || srv.request_count() >= 1).await;
    let t0 = Instant::now();
    ts.shutdown.shutdown();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(!ts.spool.is_drained());
    drop(ts);
    // Next start replays it all.
    srv.set_script(Box::new(|_, _| Reply::Status(204)));
    let mut ts = start(c, dir.path()).unwrap();
    let task = spawn(&mut ts);
    until("replayed", WAIT, || ts.stats.written() == 30).await;
    assert_eq!(srv.accepted().len(), 30);
    ts.shutdown.shutdown();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}
