//! MQTT ingest against a real Mosquitto: connect and count, broker restarts, persistent
//! sessions, and a flood of malformed input.

mod harness;

use std::time::Duration;

use harness::{wait_for_async, Daemon, Mosquitto, MqttClient};

fn config(broker: &Mosquitto) -> String {
    format!("[mqtt]\nurl = \"{}\"\n", broker.url())
}

const TELEMETRY: &str = "evlounge/milano/charger/hpc-1/telemetry";

async fn wait_metric(d: &Daemon, series: &str, at_least: f64, timeout: Duration) -> f64 {
    wait_for_async(&format!("{series} >= {at_least}"), timeout, || async {
        let v = d.metric(series);
        (v >= at_least).then_some(v)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_subscribes_and_counts() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &config(&broker));
    wait_for_async("mqtt up in /readyz", Duration::from_secs(10), || async {
        d.get("/readyz")
            .filter(|(c, b)| *c == 200 && b.contains("\"mqtt\":\"up\""))
            .map(|_| ())
    })
    .await;
    let c = MqttClient::connect(broker.port, "t-pub", &[]).await;
    c.publish(TELEMETRY, r#"{"status":"charging","power_kw":120.5}"#)
        .await;
    c.wait_acked().await;
    let n = wait_metric(
        &d,
        "evlounge_mqtt_messages_total{kind=\"telemetry\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(n, 1.0);
    assert_eq!(d.get("/healthz").map(|(c, _)| c), Some(200));
    assert!(d.log().contains("mqtt connected"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_broker_restart_and_gets_queued_messages() {
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &config(&broker));
    let series = "evlounge_mqtt_messages_total{kind=\"telemetry\"}";
    {
        let c = MqttClient::connect(broker.port, "t-pub1", &[]).await;
        c.publish(TELEMETRY, r#"{"status":"available"}"#).await;
        c.wait_acked().await;
        wait_metric(&d, series, 1.0, Duration::from_secs(10)).await;
    }

    // 1. The broker goes away while the daemon runs; it reconnects with backoff.
    broker.restart();
    wait_for_async("daemon reconnected", Duration::from_secs(40), || async {
        d.get("/readyz").filter(|(c, _)| *c == 200).map(|_| ())
    })
    .await;
    assert!(d.metric("evlounge_mqtt_reconnects_total") >= 1.0);
    {
        let c = MqttClient::connect(broker.port, "t-pub2", &[]).await;
        c.publish(TELEMETRY, r#"{"status":"preparing"}"#).await;
        c.wait_acked().await;
        wait_metric(&d, series, 2.0, Duration::from_secs(10)).await;
    }
    let log = d.log();
    assert_eq!(
        log.matches("mqtt connection lost").count(),
        1,
        "one line per outage:\n{log}"
    );

    // 2. QoS 1 messages published while the daemon is away survive a broker restart
    //    (persistent session + broker persistence) and are delivered when it is back.
    assert_eq!(d.stop(), Some(0));
    {
        let c = MqttClient::connect(broker.port, "t-pub3", &[]).await;
        for i in 0..20 {
            c.publish(
                TELEMETRY,
                format!(r#"{{"status":"charging","power_kw":{}}}"#, 100 + i),
            )
            .await;
        }
        c.wait_acked().await;
    }
    broker.restart();
    d.spawn();
    // The metric restarts at 0 with the new process: all 20 queued messages arrive.
    let n = wait_metric(&d, series, 20.0, Duration::from_secs(20)).await;
    assert_eq!(n, 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_added_while_the_broker_kept_the_session_is_subscribed() {
    // The broker keeps the daemon's session across its restart (the same client id, kept
    // in the data dir). The second run listens under another prefix: its subscriptions
    // must be made although the broker says the session is present.
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut first = Daemon::start(dir.path(), &config(&broker));
    assert_eq!(first.stop(), Some(0));
    let second = Daemon::start(
        dir.path(),
        &format!("[mqtt]\nurl = \"{}\"\nprefix = \"lounge2\"\n", broker.url()),
    );
    let c = MqttClient::connect(broker.port, "t-pub-prefix", &[]).await;
    c.publish(
        "lounge2/milano/charger/hpc-1/telemetry",
        r#"{"status":"charging","power_kw":120.5}"#,
    )
    .await;
    c.wait_acked().await;
    wait_metric(
        &second,
        "evlounge_mqtt_messages_total{kind=\"telemetry\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        second.log().contains("session_present=true"),
        "the broker did not keep the session, so this proves nothing: {}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_data_dir_refuses_to_start() {
    use std::io::Read;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut first = Daemon::start(dir.path(), &config(&broker));
    // The same config file again: the same data_dir.
    let mut second = std::process::Command::new(harness::bin())
        .arg("run")
        .arg("-c")
        .arg(dir.path().join("evlounge.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = second.try_wait().expect("wait") {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    let _ = second.stderr.take().map(|mut e| e.read_to_string(&mut err));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
    assert!(err.contains("is in use by another evlounge (pid "), "{err}");
    assert!(first.is_running(), "the first daemon is unaffected");
    assert_eq!(first.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_flood_is_counted_and_skipped() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &config(&broker));
    wait_for_async("ready", Duration::from_secs(10), || async {
        d.get("/readyz").filter(|(c, _)| *c == 200).map(|_| ())
    })
    .await;
    let c = MqttClient::connect(broker.port, "t-flood", &[]).await;
    let bad: &[(&str, &str)] = &[
        (TELEMETRY, "{not json"),
        (TELEMETRY, r#"{"status":"charging","power_kw":"lots"}"#),
        (TELEMETRY, r#"{"status":"charging","soc_pct":180}"#),
        (
            "evlounge/bad site!/charger/x/telemetry",
            r#"{"status":"charging"}"#,
        ),
        (
            "evlounge/milano/lounge/lounge/door-1",
            r#"{"occupancy":-3}"#,
        ),
        ("evlounge/milano/charger/hpc-1/availability", "maybe"),
    ];
    for i in 0..10_000 {
        let (t, p) = bad[i % bad.len()];
        c.publish(t, p).await;
    }
    let big = format!(r#"{{"status":"charging","pad":"{}"}}"#, "x".repeat(1 << 20));
    c.publish(TELEMETRY, big).await;
    c.publish(TELEMETRY, r#"{"status":"charging","power_kw":50}"#)
        .await;

    let per =
        |r: &str| format!("evlounge_decode_errors_total{{reason=\"{r}\",adapter=\"evlounge\"}}");
    wait_metric(&d, &per("oversized"), 1.0, Duration::from_secs(60)).await;
    let total = wait_for_async(
        "all 10,001 rejections counted",
        Duration::from_secs(60),
        || async {
            let m = d.metrics();
            let sum: f64 = [
                "invalid_json",
                "invalid_field",
                "out_of_range",
                "unknown_topic",
                "oversized",
            ]
            .iter()
            .map(|r| harness::metric_value(&m, &per(r)))
            .sum();
            if sum < 10_001.0 {
                eprintln!("so far: {sum}");
            }
            (sum >= 10_001.0).then_some(sum)
        },
    )
    .await;
    assert_eq!(total, 10_001.0);
    let m = d.metrics();
    assert_eq!(harness::metric_value(&m, &per("invalid_json")), 1667.0);
    // 10,000 = 6 kinds x 1,666 + the first four kinds once more
    assert_eq!(
        harness::metric_value(&m, &per("invalid_field")),
        1667.0 + 1666.0
    );
    assert_eq!(
        harness::metric_value(&m, &per("out_of_range")),
        1667.0 + 1666.0
    );
    assert_eq!(harness::metric_value(&m, &per("unknown_topic")), 1667.0);
    // The good message after the flood is processed.
    wait_for_async(
        "good message processed",
        Duration::from_secs(10),
        || async {
            d.get_json("/api/v1/chargers/milano/hpc-1")
                .filter(|v| v["power_kw"] == 50.0)
                .map(|_| ())
        },
    )
    .await;
    assert!(d.is_running());
    // Rate-limited logging: at most a few lines per reason, not thousands.
    let rejected_lines = d.log().matches("message rejected").count();
    assert!(
        rejected_lines <= 20,
        "{rejected_lines} log lines for 10k rejects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_retained_online_and_offline_at_shutdown_and_rejects_go_to_dead_letter() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        dir.path(),
        &format!(
            "{}dead_letter_topic = \"evlounge/deadletter\"\n",
            config(&broker)
        ),
    );
    // A late subscriber still sees the retained status.
    let watcher = MqttClient::connect(
        broker.port,
        "t-status",
        &["evlounge/status", "evlounge/deadletter/#"],
    )
    .await;
    wait_for_async("retained online", Duration::from_secs(10), || async {
        watcher
            .received
            .lock()
            .unwrap()
            .iter()
            .any(|(t, p, retained)| t == "evlounge/status" && p == b"online" && *retained)
            .then_some(())
    })
    .await;
    let c = MqttClient::connect(broker.port, "t-dl", &[]).await;
    c.publish(TELEMETRY, "{broken").await;
    c.wait_acked().await;
    wait_for_async("dead letter copy", Duration::from_secs(10), || async {
        watcher
            .received
            .lock()
            .unwrap()
            .iter()
            .any(|(t, p, _)| t == "evlounge/deadletter/invalid_json" && p == b"{broken")
            .then_some(())
    })
    .await;
    assert_eq!(d.stop(), Some(0));
    wait_for_async(
        "offline at clean shutdown",
        Duration::from_secs(10),
        || async {
            watcher
                .received
                .lock()
                .unwrap()
                .iter()
                .any(|(t, p, _)| t == "evlounge/status" && p == b"offline")
                .then_some(())
        },
    )
    .await;
}

/// Waits for the next publish on `el`, up to 10 s.
async fn next_publish(el: &mut rumqttc::EventLoop) -> rumqttc::Publish {
    let wait = async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = el.poll().await {
                return p;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("a publish within 10 s")
}

/// A batch whose store commit went through but whose time-series lines the ack thread had
/// not yet synced is written again when the broker redelivers it: the daemon knows a
/// redelivery by its DUP flag (`Inbound::redelivered`). That the broker sets it on a
/// persistent session's unacked QoS 1 message is what this checks, on the real broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_redelivers_an_unacked_message_with_dup_set() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let broker = Mosquitto::start();
    let opts = || {
        let mut o = MqttOptions::new("t-dup-sub", "127.0.0.1", broker.port);
        o.set_clean_session(false);
        o.set_manual_acks(true);
        o.set_keep_alive(Duration::from_secs(5));
        o
    };
    let (client, mut el) = AsyncClient::new(opts(), 16);
    client
        .subscribe("t/dup", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(el.poll().await, Ok(Event::Incoming(Packet::SubAck(_)))) {}
    })
    .await
    .expect("suback");
    let publ = MqttClient::connect(broker.port, "t-dup-pub", &[]).await;
    publ.publish("t/dup", "x").await;
    publ.wait_acked().await;

    let first = next_publish(&mut el).await;
    assert!(!first.dup, "first delivery: {first:?}");
    // Gone without acking it, as a daemon killed before its ack thread got to the batch.
    drop(el);
    drop(client);

    let (_client, mut el) = AsyncClient::new(opts(), 16);
    let again = next_publish(&mut el).await;
    assert_eq!(&again.payload[..], b"x");
    assert!(again.dup, "redelivery: {again:?}");
}
