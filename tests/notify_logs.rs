//! Log capture of a whole delivery run: no guest address or name in any log line. In its
//! own test binary because it installs the process-wide subscriber (a thread-local one
//! misses events when other tests race it for tracing's callsite cache).

#[path = "support/notify_harness.rs"]
mod harness;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use evlounge::outputs::notify::{Channel, EmailConfig, Lang, NtfyConfig};
use harness::*;
use parking_lot::Mutex;

/// Captures every log line (TRACE, all crates) of a full run over email, webhook and ntfy,
/// including a failing attempt, and checks no address or name appears.
#[tokio::test]
async fn logs_of_a_delivery_run_contain_no_personal_data() {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let sink = SmtpSink::start();
    let r = Receiver::start().await;
    r.state.fail_first.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let mut cfg = webhook_cfg(&r);
    cfg.ntfy = Some(NtfyConfig {
        url: r.url("/ntfy"),
        token: None,
    });
    cfg.email = Some(EmailConfig {
        smtp_url: format!("smtp://127.0.0.1:{}", sink.port),
        from: "lounge@example.com".into(),
        reply_to: None,
        username: None,
        password: None,
    });
    let personal = [
        "private.person@example.org",
        "privatetopic77",
        "crm-private-ref-99",
        "Anna Bianchi",
    ];
    link(
        &conn,
        &cfg,
        Channel::Email,
        personal[0],
        Lang::It,
        Some("A"),
    );
    link(&conn, &cfg, Channel::Ntfy, personal[1], Lang::En, Some("A"));
    link(
        &conn,
        &cfg,
        Channel::Webhook,
        personal[2],
        Lang::It,
        Some("A"),
    );
    commit_event(&conn, &complete_event("e-logs"), "A", now_ms());
    let w = Worker::start(&cfg, &db, None);
    w.wake.notify_one();
    wait_until("all delivered", || all_done(&conn, 3)).await;
    w.stop().await;
    assert!(statuses(&conn).iter().all(|s| s.1 == "delivered"));

    let logs = String::from_utf8(buf.0.lock().clone()).unwrap();
    assert!(
        logs.contains("notification finished"),
        "the capture works: {logs}"
    );
    assert!(
        logs.contains("will retry"),
        "the failing attempt was logged: {logs}"
    );
    for p in personal {
        assert!(!logs.contains(p), "{p} appears in the logs:\n{logs}");
    }
}
