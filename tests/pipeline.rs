//! The whole daemon with every output on, against real servers: Mosquitto, VictoriaMetrics
//! (InfluxDB v2 write API), an SMTP server (aiosmtpd) and HTTP webhook receivers.

mod harness;
#[path = "support/notify_harness.rs"]
mod notify_harness;
#[path = "common/vm.rs"]
mod vm;

use std::sync::atomic::Ordering;
use std::time::Duration;

use harness::{base_ts, dc_session, http_request, wait_for_async, Daemon, Mosquitto, MqttClient};

const TOPIC: &str = "evlounge/milano/charger/hpc-3/telemetry";

fn config(broker: &Mosquitto, extra: &str) -> String {
    format!(
        r#"[mqtt]
url = "{}"
[thresholds]
low_power_for = "3s"
[[sites]]
id = "milano"
timezone = "Europe/Rome"
  [[sites.chargers]]
  id = "hpc-3"
  bay = "Bay 3"
  max_kw = 270.0
  [[sites.zones]]
  id = "lounge"
  capacity = 10
{extra}
"#,
        broker.url()
    )
}

fn influx(vm: &vm::Vm) -> String {
    format!(
        "[influx]\nurl = \"{}\"\norg = \"o\"\nbucket = \"b\"\ntoken = \"t0ken\"\nflush_interval = \"200ms\"\n",
        vm.url()
    )
}

async fn publish_series(c: &MqttClient, t0: i64, n: usize) {
    for i in 0..n {
        let soc = 10.0 + (i % 80) as f64 * 0.5;
        c.publish(
            TOPIC,
            format!(r#"{{"ts":{},"status":"charging","power_kw":{},"soc_pct":{soc},"voltage_v":800.0}}"#, t0 + i as i64 * 1000, 100 + i % 50),
        )
        .await;
    }
    c.wait_acked().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_lands_in_the_tsdb_exactly_once_across_outages_and_sigkill() {
    let broker = Mosquitto::start();
    let mut tsdb = vm::Vm::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &config(&broker, &influx(&tsdb)));
    let c = MqttClient::connect(broker.port, "t-pub", &[]).await;
    let t0 = base_ts();

    // 1. N messages in → N points, with tags and float fields.
    publish_series(&c, t0, 300).await;
    c.publish(
        "evlounge/milano/lounge/lounge/counter-1",
        format!(r#"{{"ts":{t0},"occupancy":4,"co2_ppm":650}}"#),
    )
    .await;
    c.wait_acked().await;
    let got = tsdb
        .wait_samples("charger_power_kw", 300, Duration::from_secs(30))
        .await;
    assert_eq!(got, 300);
    let series = tsdb.export("{__name__=\"charger_power_kw\"}").await;
    assert_eq!(series.len(), 1, "one series (site, charger, status)");
    let l = &series[0].labels;
    assert_eq!(
        (
            l["site"].as_str(),
            l["charger"].as_str(),
            l["status"].as_str()
        ),
        ("milano", "hpc-3", "charging")
    );
    assert_eq!(
        tsdb.wait_samples("charger_voltage_v", 300, Duration::from_secs(10))
            .await,
        300
    );
    assert_eq!(
        tsdb.wait_samples("lounge_occupancy", 1, Duration::from_secs(10))
            .await,
        1
    );
    let ratio = tsdb.export("{__name__=\"lounge_occupancy_ratio\"}").await;
    assert_eq!(ratio[0].values, vec![0.4]);
    assert_eq!(d.get_json("/readyz").unwrap()["tsdb"], "up");

    // 2. The TSDB goes away under load: points wait on disk, readiness says so.
    tsdb.stop();
    publish_series(&c, t0 + 300_000, 200).await;
    wait_for_async(
        "tsdb spooling in /readyz",
        Duration::from_secs(30),
        || async {
            d.get("/readyz")
                .filter(|(_, b)| b.contains("\"tsdb\":\"spooling\""))
                .map(|_| ())
        },
    )
    .await;
    assert!(d.metric("evlounge_tsdb_spool_bytes") > 0.0);

    // 3. And the daemon is SIGKILLed while they wait; then both come back.
    d.kill();
    publish_series(&c, t0 + 600_000, 100).await;
    tsdb.restart().await;
    d.spawn();
    assert_eq!(
        tsdb.wait_samples("charger_power_kw", 600, Duration::from_secs(90))
            .await,
        600,
        "every point, none duplicated"
    );
    // no duplicates: every timestamp once
    let s = tsdb.export("{__name__=\"charger_power_kw\"}").await;
    let mut ts: Vec<i64> = s.iter().flat_map(|s| s.timestamps.clone()).collect();
    let n = ts.len();
    ts.sort();
    ts.dedup();
    assert_eq!(ts.len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_point_is_written_when_the_session_ends() {
    let broker = Mosquitto::start();
    let tsdb = vm::Vm::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &config(&broker, &influx(&tsdb)));
    let c = MqttClient::connect(broker.port, "t-pub", &[]).await;
    let t0 = base_ts();
    let (a, b) = dc_session(t0);
    for m in a.iter().chain(b.iter()) {
        c.publish(TOPIC, m.clone()).await;
    }
    c.wait_acked().await;
    assert_eq!(
        tsdb.wait_samples("charging_session_energy_kwh", 1, Duration::from_secs(30))
            .await,
        1
    );
    let s = tsdb
        .export("{__name__=\"charging_session_energy_kwh\"}")
        .await;
    assert_eq!(s[0].labels["outcome"], "completed");
    assert_eq!(
        s[0].timestamps,
        vec![t0],
        "timestamped at the session's start"
    );
    assert!(s[0].values[0] > 40.0);
    assert!(d.get_json("/readyz").is_some());
}

fn notify_config(
    broker: &Mosquitto,
    smtp: &notify_harness::SmtpSink,
    hook: &notify_harness::Receiver,
    extra: &str,
) -> String {
    config(
        broker,
        &format!(
            r#"[notify]
attempt_timeout = "2s"
[notify.email]
smtp_url = "smtp://127.0.0.1:{}"
from = "lounge@example.com"
[notify.webhook]
url = "{}"
secret = "{}"
{extra}"#,
            smtp.port,
            hook.url("/hook"),
            notify_harness::HOOK_SECRET
        ),
    )
}

/// One scripted DC session on hpc-3 (plug-in to unplug), published and acked.
async fn charge_once(c: &MqttClient) {
    let (a, b) = dc_session(base_ts());
    for m in a.iter().chain(b.iter()) {
        c.publish(TOPIC, m.clone()).await;
    }
    c.wait_acked().await;
}

/// Waits (60 s at most) until the receiver has had a webhook whose body contains `needle`.
async fn webhook_containing(hook: &notify_harness::Receiver, needle: &str) {
    wait_for_async(
        &format!("a webhook with {needle}"),
        Duration::from_secs(60),
        || async {
            hook.log()
                .iter()
                .any(|r| String::from_utf8_lossy(&r.body).contains(needle))
                .then_some(())
        },
    )
    .await;
}

fn link(d: &Daemon, body: &str) -> String {
    let (code, resp) = http_request(
        "POST",
        &format!("{}/api/v1/guests", d.base),
        None,
        Some(body),
    )
    .unwrap();
    assert_eq!(code, 201, "{resp}");
    serde_json::from_str::<serde_json::Value>(&resp).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_guest_is_told_once_in_their_language_on_each_channel() {
    let broker = Mosquitto::start();
    let smtp = notify_harness::SmtpSink::start();
    let hook = notify_harness::Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &notify_config(&broker, &smtp, &hook, ""));
    let it = link(
        &d,
        r#"{"site":"milano","charger":"hpc-3","channel":"email","address":"mario.rossi@example.com","lang":"it","name":"Mario Rossi"}"#,
    );
    link(
        &d,
        r#"{"site":"milano","charger":"hpc-3","channel":"webhook","address":"crm-guest-77","lang":"en"}"#,
    );
    // The front desk links a third guest over MQTT.
    let c = MqttClient::connect(broker.port, "t-pub", &[]).await;
    c.publish("evlounge/milano/frontdesk/link", r#"{"site":"milano","charger":"hpc-3","channel":"email","address":"jane.doe@example.com","lang":"en"}"#).await;
    charge_once(&c).await;
    let done = |kind: &str, m: &serde_json::Value| m.to_string().contains(kind);
    wait_for_async("two completion mails", Duration::from_secs(60), || async {
        let n = smtp
            .messages()
            .iter()
            .filter(|m| done("charging_complete", m))
            .count();
        (n >= 2).then_some(())
    })
    .await;
    webhook_containing(&hook, "charging_complete").await;
    // Quiet period: absence of a second delivery can only be seen over time.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mails: Vec<_> = smtp
        .messages()
        .into_iter()
        .filter(|m| done("charging_complete", m))
        .collect();
    assert_eq!(mails.len(), 2, "one per guest: {mails:?}");
    let text = serde_json::to_string(&mails).unwrap();
    assert!(text.contains("mario.rossi@example.com") && text.contains("jane.doe@example.com"));
    assert!(
        text.contains("carica") || text.contains("Ricarica"),
        "Italian mail: {text}"
    );
    assert!(
        text.contains("charged") || text.contains("Charging"),
        "English mail: {text}"
    );
    let hooks: Vec<_> = hook
        .log()
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("charging_complete"))
        .collect();
    assert_eq!(hooks.len(), 1);
    assert!(hooks[0].signature_ok, "HMAC signature verifies");
    assert!(hooks[0].headers["idempotency-key"].contains(':'));
    let body: serde_json::Value = serde_json::from_slice(&hooks[0].body).unwrap();
    assert_eq!(body["kind"], "charging_complete");
    assert_eq!(body["event_id"].as_str().map(str::len), Some(16));
    // The guest sees their own link, and nobody's contact leaks into the logs.
    let (code, own) = harness::http_get(&format!("{}/api/v1/guests/{it}", d.base), None).unwrap();
    assert_eq!(code, 200, "{own}");
    let log = d.log();
    for personal in [
        "mario.rossi@example.com",
        "jane.doe@example.com",
        "Mario Rossi",
        "crm-guest-77",
    ] {
        assert!(!log.contains(personal), "{personal} in the daemon log");
    }
    assert!(
        d.metric("evlounge_notifications_total{channel=\"email\",outcome=\"delivered\"}") >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_completion_and_delivery_delivers_once_after_restart() {
    let broker = Mosquitto::start();
    let smtp = notify_harness::SmtpSink::start();
    let hook = notify_harness::Receiver::start().await;
    // The receiver is down (503) for a long while: the notification waits in the outbox.
    hook.state.fail_first.store(1_000_000, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &notify_config(&broker, &smtp, &hook, ""));
    link(
        &d,
        r#"{"site":"milano","charger":"hpc-3","channel":"webhook","address":"crm-guest-1","lang":"it"}"#,
    );
    charge_once(&MqttClient::connect(broker.port, "t-pub", &[]).await).await;
    wait_for_async("a failed attempt", Duration::from_secs(30), || async {
        hook.log().iter().any(|r| r.answered == 503).then_some(())
    })
    .await;
    d.kill();
    hook.state.fail_first.store(0, Ordering::SeqCst);
    d.spawn();
    wait_for_async(
        "delivered after restart",
        Duration::from_secs(60),
        || async {
            hook.log()
                .iter()
                .any(|r| {
                    r.answered == 200
                        && String::from_utf8_lossy(&r.body)
                            .contains("\"kind\":\"charging_complete\"")
                })
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let complete: Vec<_> = hook
        .log()
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("\"kind\":\"charging_complete\""))
        .collect();
    let ok: Vec<_> = complete.iter().filter(|r| r.answered == 200).collect();
    assert_eq!(ok.len(), 1, "delivered exactly once");
    let keys: std::collections::BTreeSet<_> = complete
        .iter()
        .map(|r| r.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(
        keys.len(),
        1,
        "every attempt carries the same Idempotency-Key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_delivered_during_shutdown_has_its_point_in_the_tsdb() {
    // The webhook answers its first request only after 1.5 s: the daemon is stopped while
    // that attempt is in flight. The worker finishes it (delivered), and its outcome point
    // must still reach the spool, and from there the TSDB.
    let broker = Mosquitto::start();
    let smtp = notify_harness::SmtpSink::start();
    let hook = notify_harness::Receiver::start().await;
    hook.state.slow_first.store(1, Ordering::SeqCst);
    *hook.state.slow_for.lock() = Duration::from_millis(1500);
    let vm = vm::Vm::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        dir.path(),
        &notify_config(&broker, &smtp, &hook, &influx(&vm)),
    );
    link(
        &d,
        r#"{"site":"milano","charger":"hpc-3","channel":"webhook","address":"crm-guest-9","lang":"en"}"#,
    );
    charge_once(&MqttClient::connect(broker.port, "t-pub", &[]).await).await;
    wait_for_async("the attempt in flight", Duration::from_secs(30), || async {
        (hook.count() > 0).then_some(())
    })
    .await;
    assert_eq!(d.stop(), Some(0));
    let first: serde_json::Value = serde_json::from_slice(&hook.log()[0].body).unwrap();
    let kind = first["kind"].as_str().unwrap().to_string();
    // What the sink had no time for is in the spool: the next run writes it (and delivers
    // the session's other notifications, which the worker had not started).
    d.spawn();
    let matcher =
        format!(r#"{{__name__="notification_attempts",kind="{kind}",outcome="delivered"}}"#);
    wait_for_async(
        "the point of the notification delivered during the shutdown",
        Duration::from_secs(30),
        || async { (!vm.export(&matcher).await.is_empty()).then_some(()) },
    )
    .await;
    let sent_again = hook
        .log()
        .iter()
        .skip(1)
        .filter(|r| String::from_utf8_lossy(&r.body).contains(&format!("\"kind\":\"{kind}\"")))
        .count();
    assert_eq!(
        sent_again, 0,
        "{kind} was finished during the shutdown, not cut short"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_driver_never_gets_the_previous_guests_messages() {
    let broker = Mosquitto::start();
    let smtp = notify_harness::SmtpSink::start();
    let hook = notify_harness::Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &notify_config(&broker, &smtp, &hook, ""));
    link(
        &d,
        r#"{"site":"milano","charger":"hpc-3","channel":"webhook","address":"first-guest","lang":"en"}"#,
    );
    let c = MqttClient::connect(broker.port, "t-pub", &[]).await;
    let t0 = base_ts();
    let (a, b) = dc_session(t0);
    for m in a.iter().chain(b.iter()) {
        c.publish(TOPIC, m.clone()).await;
    }
    // A second car, another session id, an hour later on the message clock.
    let (a2, b2) = dc_session(t0 + 1_800_000);
    for m in a2.iter().chain(b2.iter()) {
        c.publish(TOPIC, m.replace("T-1842", "T-2001")).await;
    }
    c.wait_acked().await;
    wait_for_async("second session closed", Duration::from_secs(30), || async {
        let v = d.get_json("/api/v1/sessions")?;
        let list = v["sessions"].as_array()?;
        (list.len() == 2 && list.iter().all(|s| !s["ended"].is_null())).then_some(())
    })
    .await;
    webhook_containing(&hook, "charging_complete").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let completes: Vec<String> = hook
        .log()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .filter(|b| b.contains("charging_complete"))
        .collect();
    assert_eq!(completes.len(), 1, "{completes:?}");
    assert!(completes[0].contains("T-1842") && !completes[0].contains("T-2001"));
}

/// A card (`id_tag`) that comes seconds after the plug-in, in a batch of its own (OCPP:
/// StatusNotification Preparing, then StartTransaction): the guest linked by that card is
/// still told. The session opened without a card used to bind nobody by card for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_linked_by_card_is_told_when_the_card_comes_after_the_plug_in() {
    let broker = Mosquitto::start();
    let smtp = notify_harness::SmtpSink::start();
    let hook = notify_harness::Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &notify_config(&broker, &smtp, &hook, ""));
    link(
        &d,
        r#"{"site":"milano","id_tag":"04A2B9","channel":"webhook","address":"card-guest","lang":"en"}"#,
    );
    let c = MqttClient::connect(broker.port, "t-pub", &[]).await;
    let (before, after) = dc_session(base_ts());
    let mut msgs = before.iter().chain(after.iter());
    // The plug-in, without a card; its session is on record before anything else comes.
    c.publish(TOPIC, msgs.next().unwrap().clone()).await;
    c.wait_acked().await;
    wait_for_async("the session opened", Duration::from_secs(30), || async {
        let v = d.get_json("/api/v1/chargers/milano/hpc-3")?;
        v["session"]["session_id"].is_string().then_some(())
    })
    .await;
    // Everything after it carries the card.
    for m in msgs {
        c.publish(
            TOPIC,
            m.replacen(r#""ts":"#, r#""id_tag":"04A2B9","ts":"#, 1),
        )
        .await;
    }
    c.wait_acked().await;
    webhook_containing(&hook, "charging_complete").await;
    let to_card: Vec<_> = hook
        .log()
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("charging_complete"))
        .collect();
    assert_eq!(to_card.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&to_card[0].body).unwrap();
    assert_eq!(body["address"], "card-guest");
}
