//! The Prometheus recorder: installed once per process, rendered at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder on first use and returns its handle.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

/// Histogram samples wait in the recorder until a render drains them into their buckets;
/// nothing else bounds them. Without a scraper (Prometheus not configured, or away) they
/// would pile up by one per message, so they are drained here every few seconds too.
pub async fn upkeep(handle: PrometheusHandle, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = every.tick() => drop(handle.render()),
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "evlounge_mqtt_messages_total",
        "Inbound messages handled, by kind"
    );
    describe_counter!(
        "evlounge_decode_errors_total",
        "Rejected inbound messages, by reason and adapter"
    );
    describe_counter!(
        "evlounge_mqtt_reconnects_total",
        "Failed broker connection attempts"
    );
    describe_counter!(
        "evlounge_events_total",
        "Events decided and committed, by kind"
    );
    describe_counter!(
        "evlounge_notifications_total",
        "Notification outcomes, by channel and outcome"
    );
    describe_counter!(
        "evlounge_tsdb_points_written_total",
        "Points acknowledged by the TSDB"
    );
    describe_gauge!(
        "evlounge_tsdb_spool_bytes",
        "Bytes waiting in the time-series spool"
    );
    describe_gauge!(
        "evlounge_ingest_queue_depth",
        "Messages waiting for the commit thread"
    );
    describe_histogram!(
        "evlounge_processing_latency_seconds",
        "Receive to commit, per message"
    );
    describe_histogram!("evlounge_batch_seconds", "Commit thread time per batch");
    describe_histogram!(
        "evlounge_commit_sync_seconds",
        "Per batch: the store's COMMIT (with its WAL fsync when the batch decides something), after the spool's append and fdatasync when the batch has points a redelivery cannot write again"
    );
    describe_counter!(
        "evlounge_spool_sync_failures_total",
        "Failed appends or fdatasyncs of the time-series spool on the ack thread (retried; the batches stay unacked meanwhile)"
    );
    describe_gauge!(
        "evlounge_wal_pages",
        "SQLite write-ahead log size in pages at the last checkpoint"
    );
    describe_histogram!(
        "evlounge_checkpoint_seconds",
        "SQLite WAL checkpoint time (checkpointer thread)"
    );
    describe_histogram!(
        "evlounge_event_publish_seconds",
        "Event committed to handed to the MQTT client"
    );
}
