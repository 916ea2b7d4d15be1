//! The MQTT notification channel against a real Mosquitto: a notification is done only
//! once the broker has acknowledged it, so one handed over while the broker is away is
//! retried (by the worker) instead of recorded delivered and lost with a restart.

mod harness;

use std::time::Duration;

use evlounge::app::wiring::AckedPublish;
use evlounge::outputs::notify::MqttPublish;
use harness::{wait_for_async, Mosquitto, MqttClient};

const TOPIC: &str = "evlounge/milano/notify/display-lobby";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_notification_is_done_only_when_the_broker_has_it() {
    let mut broker = Mosquitto::start();
    let cfg = evlounge::config::from_toml_str(&format!("[mqtt]\nurl = \"{}\"\n", broker.url()))
        .expect("config");
    let notify = AckedPublish::new(cfg.mqtt.clone(), "t-notify".into());
    let display = MqttClient::connect(broker.port, "t-display", &["evlounge/+/notify/#"]).await;

    notify
        .publish(TOPIC.into(), br#"{"n":1}"#.to_vec())
        .await
        .expect("acknowledged by the broker");
    wait_for_async("the display got it", Duration::from_secs(10), || async {
        (display.messages("notify/display-lobby") == [serde_json::json!({"n": 1})]).then_some(())
    })
    .await;

    // Two at once: each on a connection (and client id) of its own, neither waiting for
    // the other nor taking the other's place at the broker.
    let (a, b) = tokio::join!(
        notify.publish(TOPIC.into(), br#"{"n":2}"#.to_vec()),
        notify.publish(TOPIC.into(), br#"{"n":3}"#.to_vec())
    );
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    wait_for_async("the display got both", Duration::from_secs(10), || async {
        (display.count("notify/display-lobby") == 3).then_some(())
    })
    .await;

    // The broker is away: not done (the daemon's own client would have queued it and
    // said yes).
    broker.stop();
    let away = tokio::time::timeout(
        Duration::from_secs(20),
        notify.publish(TOPIC.into(), br#"{"n":4}"#.to_vec()),
    )
    .await;
    assert!(matches!(away, Ok(Err(_))), "{away:?}");

    // Back: done again, on a new connection.
    broker.restart();
    notify
        .publish(TOPIC.into(), br#"{"n":5}"#.to_vec())
        .await
        .expect("acknowledged after the restart");
}
