//! Time-series throughput: line-protocol encoding, spool append/replay, and gzip writes into
//! a local VictoriaMetrics. Prints a Markdown table.
//!
//! `cargo bench --bench tsdb` (needs `/usr/bin/victoria-metrics` or `VM_BIN`).
//! `TSDB_BENCH_POINTS` sets the number of points (default 1,000,000).

#[path = "../tests/common/vm.rs"]
mod vm;

use std::time::{Duration, Instant};

use evlounge::outputs::timeseries::spool::Spool;
use evlounge::outputs::timeseries::{encode_points, start, InfluxConfig, Point};

/// A typical group commit: a few hundred points.
const CHUNK: usize = 500;

fn point(i: usize, base: i64) -> Point {
    Point::new("charger", base + (i / 50) as i64)
        .tag("site", "milano")
        .tag("charger", format!("hpc-{}", i % 50))
        .tag("status", "charging")
        .field("power_kw", Some(100.0 + (i % 2000) as f64 * 0.1))
        .field("meter_kwh", Some(10_000.0 + i as f64 * 0.01))
        .field("session_kwh", Some((i % 900) as f64 * 0.1))
        .field("soc_pct", Some((i % 100) as f64))
        .field("voltage_v", Some(781.0))
        .field("current_a", Some(189.8))
        .field("temperature_c", Some(41.0))
}

/// (user + system) CPU seconds of a process, from /proc.
fn cpu_secs(pid: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    ticks / 100.0
}

struct Row {
    what: &'static str,
    points: usize,
    bytes: usize,
    secs: f64,
    cpu: f64,
    note: String,
}

fn main() {
    let n: usize = std::env::var("TSDB_BENCH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let base = chrono::Utc::now().timestamp_millis() - 3 * 3600 * 1000 - n as i64;
    let points: Vec<Point> = (0..n).map(|i| point(i, base)).collect();
    let mut rows = Vec::new();

    // Encoding.
    let cpu0 = cpu_secs("self");
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for c in points.chunks(CHUNK) {
        buf.clear();
        encode_points(c, &mut buf);
        chunks.push(buf.clone());
    }
    let lp_bytes: usize = chunks.iter().map(Vec::len).sum();
    rows.push(Row {
        what: "encode line protocol",
        points: n,
        bytes: lp_bytes,
        secs: t0.elapsed().as_secs_f64(),
        cpu: cpu_secs("self") - cpu0,
        note: format!("{:.0} B/point", lp_bytes as f64 / n as f64),
    });

    let tmp = tempfile::tempdir().expect("tempdir");

    // Spool append, fdatasync once per chunk (= per group commit).
    let dir = tmp.path().join("data_sync");
    {
        let (mut w, _r) = Spool::open(&dir.join("spool"), 4 << 30).expect("spool");
        let cpu0 = cpu_secs("self");
        let t0 = Instant::now();
        for c in &chunks {
            w.append(c).expect("append");
            w.sync().expect("sync");
        }
        rows.push(Row {
            what: "spool append + fdatasync per 500-point commit",
            points: n,
            bytes: lp_bytes,
            secs: t0.elapsed().as_secs_f64(),
            cpu: cpu_secs("self") - cpu0,
            note: format!("{} commits", chunks.len()),
        });
    }

    // Spool append without sync (the write(2) cost alone).
    let dir = tmp.path().join("data");
    {
        let (mut w, _r) = Spool::open(&dir.join("spool"), 4 << 30).expect("spool");
        let cpu0 = cpu_secs("self");
        let t0 = Instant::now();
        for c in &chunks {
            w.append(c).expect("append");
        }
        w.sync().expect("sync");
        rows.push(Row {
            what: "spool append, one sync at the end",
            points: n,
            bytes: lp_bytes,
            secs: t0.elapsed().as_secs_f64(),
            cpu: cpu_secs("self") - cpu0,
            note: String::new(),
        });
    }

    // Replay (read + crc) in sink-sized batches, without acking so the data stays for
    // the write benchmark below.
    {
        let (_w, mut r) = Spool::open(&dir.join("spool"), 4 << 30).expect("spool");
        let cpu0 = cpu_secs("self");
        let t0 = Instant::now();
        let mut got = 0;
        while let Some((body, _)) = r.read_batch(5_000, 8 << 20).expect("read") {
            got += body.len();
        }
        assert_eq!(got, lp_bytes);
        rows.push(Row {
            what: "spool replay (read + crc32), 5,000-line batches",
            points: n,
            bytes: lp_bytes,
            secs: t0.elapsed().as_secs_f64(),
            cpu: cpu_secs("self") - cpu0,
            note: String::new(),
        });
    }

    // Write the spooled points into VictoriaMetrics: gzip fast, 5,000 lines per request.
    rt.block_on(async {
        let vm = vm::Vm::start(false).await;
        let vm_pid = vm.pid().map(|p| p.to_string()).unwrap_or_default();
        let mut cfg = InfluxConfig::new(vm.url(), "org", "bucket", "token");
        cfg.spool_max_bytes = 4 << 30;
        let mut ts = start(cfg, &dir).expect("start");
        let task = std::mem::replace(&mut ts.task, Box::pin(async {}));
        let cpu0 = cpu_secs("self");
        let vm_cpu0 = cpu_secs(&vm_pid);
        let t0 = Instant::now();
        let handle = tokio::spawn(task);
        while !ts.spool.is_drained() {
            assert!(t0.elapsed() < Duration::from_secs(600), "write stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_secs("self") - cpu0;
        let vm_cpu = cpu_secs(&vm_pid) - vm_cpu0;
        assert_eq!(ts.stats.written(), n as u64);
        rows.push(Row {
            what: "sink → VictoriaMetrics (gzip fast, 5,000 lines/request)",
            points: n,
            bytes: lp_bytes,
            secs,
            cpu,
            note: format!(
                "VictoriaMetrics CPU {:.1} ms/1k points; {} retries",
                vm_cpu * 1000.0 / (n as f64 / 1000.0),
                ts.stats.retries()
            ),
        });
        ts.shutdown.shutdown();
        let _ = handle.await;
        let stored = vm
            .wait_samples("charger_power_kw", n, Duration::from_secs(60))
            .await;
        assert_eq!(stored, n, "VictoriaMetrics stored {stored} of {n}");
    });

    println!("\n{n} charger points, 7 float fields, 3 tags, {CHUNK}-point commits\n");
    println!("| step | points/s | MB/s | CPU ms / 1k points | note |");
    println!("|---|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.1} | {:.3} | {} |",
            r.what,
            r.points as f64 / r.secs,
            r.bytes as f64 / r.secs / 1e6,
            r.cpu * 1000.0 / (r.points as f64 / 1000.0),
            r.note
        );
    }
}
