//! Guest notifications against real receivers: an aiosmtpd SMTP server (python), an HTTP
//! webhook receiver and an ntfy-compatible receiver (axum), a real SQLite file, and the
//! real delivery worker. Events are queued with `enqueue_for_event` as the commit thread does.

#[path = "support/notify_harness.rs"]
mod harness;

use std::sync::atomic::Ordering;
use std::time::Duration;

use evlounge::domain::event::{EventKind, StopReason};
use evlounge::outputs::notify::{
    link_guest, on_session_closed, on_session_opened, Channel, EmailConfig, Lang, LinkRequest,
    NtfyConfig,
};
use evlounge::outputs::timeseries::Point;
use evlounge::util::secret::{Redacted, Secret};
use harness::*;

// ---------- tests ----------

#[tokio::test]
async fn one_mail_per_completed_session_in_the_guests_language() {
    let sink = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let mut cfg = base_cfg();
    cfg.email = Some(EmailConfig {
        smtp_url: format!("smtp://127.0.0.1:{}", sink.port),
        from: "Porsche Lounge <lounge@example.com>".into(),
        reply_to: Some("desk@example.com".into()),
        username: None,
        password: None,
    });
    let it = link(
        &conn,
        &cfg,
        Channel::Email,
        "giulia@example.it",
        Lang::It,
        Some("A"),
    );
    let en = link(
        &conn,
        &cfg,
        Channel::Email,
        "john@example.com",
        Lang::En,
        Some("A"),
    );
    let e = complete_event("0f6c1c1e9a7b4d2e");
    assert_eq!(commit_event(&conn, &e, "A", now_ms()), 2);
    assert_eq!(
        commit_event(&conn, &e, "A", now_ms()),
        0,
        "same event twice queues nothing"
    );

    let (ptx, prx) = flume::bounded(16);
    let w = Worker::start(&cfg, &db, Some(ptx));
    w.wake.notify_one();
    wait_until("both mails delivered", || all_done(&conn, 2)).await;
    w.stop().await;

    let mails = sink.messages();
    assert_eq!(mails.len(), 2, "exactly one mail per guest");
    let by_rcpt = |a: &str| {
        mails
            .iter()
            .find(|m| m["rcpt_tos"][0] == a)
            .unwrap_or_else(|| panic!("no mail to {a}"))
            .clone()
    };
    let m_it = by_rcpt("giulia@example.it");
    let m_en = by_rcpt("john@example.com");
    let text_it = m_it["text"].as_str().unwrap();
    let text_en = m_en["text"].as_str().unwrap();
    assert!(
        text_it.contains("La tua Taycan 4S al Bay 3 è carica all'80 %: 61,2 kWh in 23 minuti."),
        "{text_it}"
    );
    assert!(text_it.contains("Ciao Anna Bianchi"), "{text_it}");
    assert!(
        text_en.contains("Your Taycan 4S at Bay 3 is charged to 80 %: 61.2 kWh in 23 minutes."),
        "{text_en}"
    );
    assert!(!text_en.contains("61,2"));
    assert!(text_en.contains("http://lounge.test:8080/bay/milano/hpc-3"));
    for m in [&m_it, &m_en] {
        let h = &m["headers"];
        assert_eq!(h["x-evlounge-event"], "charging_complete");
        assert_eq!(h["x-evlounge-event-id"], "0f6c1c1e9a7b4d2e");
        assert!(h["message-id"]
            .as_str()
            .unwrap()
            .contains("0f6c1c1e9a7b4d2e"));
        assert!(h.get("date").is_some());
        assert!(h["from"].as_str().unwrap().contains("lounge@example.com"));
        assert!(h["reply-to"].as_str().unwrap().contains("desk@example.com"));
        assert!(m["html"]
            .as_str()
            .unwrap()
            .contains("<a href=\"http://lounge.test:8080/bay/milano/hpc-3\">"));
    }
    assert_eq!(
        m_it["headers"]["subject"],
        "Bay 3: la tua Taycan 4S è carica"
    );
    assert_eq!(
        m_en["headers"]["subject"],
        "Bay 3: your Taycan 4S is charged"
    );
    assert_ne!(it.guest_id, en.guest_id);

    let points: Vec<Point> = prx.drain().collect();
    assert_eq!(points.len(), 2);
    for p in &points {
        assert_eq!(p.measurement, "notification");
        assert!(p.tags.contains(&("channel", "email".to_string())));
        assert!(p.tags.contains(&("outcome", "delivered".to_string())));
        assert!(p.tags.contains(&("kind", "charging_complete".to_string())));
        let lat = p.fields.iter().find(|(k, _)| *k == "latency_ms").unwrap().1;
        assert!(lat >= 5_000.0, "latency counts from the event ts: {lat}");
        assert!(p.fields.contains(&("attempts", 1.0)));
    }
}

#[tokio::test]
async fn webhook_is_signed_and_delivered_exactly_once() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let cfg = webhook_cfg(&r);
    let g = link(
        &conn,
        &cfg,
        Channel::Webhook,
        "crm:4711",
        Lang::En,
        Some("A"),
    );
    commit_event(&conn, &complete_event("e-hook-1"), "A", now_ms());
    let w = Worker::start(&cfg, &db, None);
    w.wake.notify_one();
    wait_until("webhook delivered", || all_done(&conn, 1)).await;
    w.stop().await;

    let log = r.log();
    assert_eq!(log.len(), 1);
    let req = &log[0];
    assert_eq!(req.path, "/hook");
    assert!(req.signature_ok, "signature verifies: {:?}", req.headers);
    assert_eq!(
        req.headers["idempotency-key"],
        format!("e-hook-1:{}", g.guest_id)
    );
    assert!(!req.headers["idempotency-key"].contains(&g.token));
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["kind"], "charging_complete");
    assert_eq!(body["event_id"], "e-hook-1");
    assert_eq!(body["guest"], g.guest_id.as_str());
    assert_eq!(body["address"], "crm:4711");
    assert_eq!(body["lang"], "en");
    assert_eq!(body["bay"], "Bay 3");
    assert_eq!(body["event"]["event_id"], "e-hook-1");
    assert_eq!(body["event"]["energy_kwh"], 61.2);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("charged to 80 %"));
    assert!(body["title"].as_str().unwrap().contains("Bay 3"));
    assert_eq!(
        statuses(&conn),
        vec![("e-hook-1".into(), "delivered".into(), 1)]
    );
}

#[tokio::test]
async fn ntfy_gets_title_click_priority_and_token() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let mut cfg = base_cfg();
    cfg.ntfy = Some(NtfyConfig {
        url: r.url("/"),
        token: Some(Secret::new(NTFY_TOKEN)),
    });
    link(&conn, &cfg, Channel::Ntfy, "bay3-john", Lang::En, Some("A"));
    link(
        &conn,
        &cfg,
        Channel::Ntfy,
        "bay3-giulia",
        Lang::It,
        Some("A"),
    );
    commit_event(&conn, &complete_event("e-ntfy-1"), "A", now_ms());
    let w = Worker::start(&cfg, &db, None);
    w.wake.notify_one();
    wait_until("ntfy delivered", || all_done(&conn, 2)).await;
    w.stop().await;

    let log = r.log();
    assert_eq!(log.len(), 2);
    let en = log
        .iter()
        .find(|q| q.path == "/bay3-john")
        .expect("POST to /{topic}");
    assert_eq!(en.headers["title"], "Bay 3: your Taycan 4S is charged");
    assert_eq!(
        en.headers["click"],
        "http://lounge.test:8080/bay/milano/hpc-3"
    );
    assert_eq!(en.headers["priority"], "high");
    assert!(en.headers["tags"].contains("white_check_mark"));
    assert_eq!(en.headers["authorization"], format!("Bearer {NTFY_TOKEN}"));
    assert_eq!(en.headers["x-evlounge-event"], "charging_complete");
    assert_eq!(en.headers["x-evlounge-event-id"], "e-ntfy-1");
    // One sequence per (event, guest): a retry replaces rather than rings again.
    let sid = |q: &Received| q.headers["x-sequence-id"].clone();
    assert!(sid(en).starts_with("e-ntfy-1-"), "{}", sid(en));
    let body = String::from_utf8(en.body.to_vec()).unwrap();
    assert!(
        body.contains("Your Taycan 4S at Bay 3 is charged to 80 %"),
        "{body}"
    );
    let it = log.iter().find(|q| q.path == "/bay3-giulia").unwrap();
    assert!(sid(it).starts_with("e-ntfy-1-") && sid(it) != sid(en));
    // Non-ASCII title as an RFC 2047 encoded word, which ntfy decodes.
    assert!(
        it.headers["title"].starts_with("=?UTF-8?B?"),
        "{}",
        it.headers["title"]
    );
    assert!(String::from_utf8(it.body.to_vec())
        .unwrap()
        .contains("61,2 kWh"));
}

#[tokio::test]
async fn receiver_503_then_recovers_is_delivered_once_with_attempts_recorded() {
    let r = Receiver::start().await;
    r.state.fail_first.store(3, Ordering::SeqCst);
    *r.state.retry_after.lock() = Some("1");
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let cfg = webhook_cfg(&r);
    link(&conn, &cfg, Channel::Webhook, "crm:1", Lang::It, Some("A"));
    commit_event(&conn, &complete_event("e-503"), "A", now_ms());
    let (ptx, prx) = flume::bounded(16);
    let w = Worker::start(&cfg, &db, Some(ptx));
    w.wake.notify_one();
    wait_until("delivered after recovery", || all_done(&conn, 1)).await;
    w.stop().await;

    assert_eq!(
        statuses(&conn),
        vec![("e-503".into(), "delivered".into(), 4)]
    );
    let log = r.log();
    assert_eq!(
        log.iter().map(|q| q.answered).collect::<Vec<_>>(),
        vec![503, 503, 503, 200]
    );
    let keys: Vec<&String> = log.iter().map(|q| &q.headers["idempotency-key"]).collect();
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "same Idempotency-Key on every attempt"
    );
    let att = attempts(&conn);
    let outcomes: Vec<&str> = att.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(outcomes, vec!["retry", "retry", "retry", "delivered"]);
    assert!(att[..3].iter().all(|a| a.1 == Some(503)));
    // Retry-After: 1 was honoured (the backoff alone is at most 200 ms here).
    for pair in att.windows(2) {
        assert!(
            pair[1].3 - pair[0].4 >= 1_000,
            "retry sooner than Retry-After: {att:?}"
        );
    }
    let p: Vec<Point> = prx.drain().collect();
    assert_eq!(p.len(), 1);
    assert!(p[0].fields.contains(&("attempts", 4.0)));
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_the_notification_is_retried() {
    // Followed, a 302 turns the POST into a body-less GET that the other end may answer
    // 200 ("delivered", nothing sent).
    let r = Receiver::start().await;
    r.state.redirect_first.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let cfg = webhook_cfg(&r);
    link(&conn, &cfg, Channel::Webhook, "crm:1", Lang::En, Some("A"));
    commit_event(&conn, &complete_event("e-302"), "A", now_ms());
    let w = Worker::start(&cfg, &db, None);
    w.wake.notify_one();
    wait_until("delivered after the redirect", || all_done(&conn, 1)).await;
    w.stop().await;
    let log = r.log();
    assert_eq!(
        log.iter()
            .map(|q| (q.path.as_str(), q.answered, q.body.is_empty()))
            .collect::<Vec<_>>(),
        [("/hook", 302, false), ("/hook", 200, false)],
        "the redirect was followed"
    );
    assert_eq!(
        statuses(&conn),
        vec![("e-302".into(), "delivered".into(), 2)]
    );
    assert_eq!(attempts(&conn)[0].1, Some(302));
}

#[tokio::test]
async fn hanging_receiver_times_out_and_is_retried() {
    let r = Receiver::start().await;
    r.state.hang_first.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let mut cfg = webhook_cfg(&r);
    cfg.attempt_timeout = Duration::from_millis(300);
    link(&conn, &cfg, Channel::Webhook, "crm:2", Lang::It, Some("A"));
    commit_event(&conn, &complete_event("e-hang"), "A", now_ms());
    let w = Worker::start(&cfg, &db, None);
    w.wake.notify_one();
    wait_until("delivered after a timeout", || all_done(&conn, 1)).await;
    w.stop().await;
    assert_eq!(
        statuses(&conn),
        vec![("e-hang".into(), "delivered".into(), 2)]
    );
    let att = attempts(&conn);
    assert_eq!(att[0].0, "retry");
    assert_eq!(att[0].2.as_deref(), Some("timeout"));
    assert!(
        att[0].4 - att[0].3 >= 300 && att[0].4 - att[0].3 < 3_000,
        "{att:?}"
    );
    assert_eq!(att[1].0, "delivered");
    assert_eq!(r.count(), 2);
}

#[tokio::test]
async fn worker_killed_mid_attempt_then_a_new_worker_delivers_once() {
    let r = Receiver::start().await;
    r.state.hang_first.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let mut cfg = webhook_cfg(&r);
    // Long enough that the first worker is still waiting when it is killed.
    cfg.attempt_timeout = Duration::from_secs(30);
    link(&conn, &cfg, Channel::Webhook, "crm:3", Lang::It, Some("A"));
    commit_event(&conn, &complete_event("e-kill"), "A", now_ms());
    let a = Worker::start(&cfg, &db, None);
    a.wake.notify_one();
    wait_until("first attempt in flight", || r.count() == 1).await;
    a.join.abort();
    let _ = a.join.await;
    assert_eq!(
        statuses(&conn),
        vec![("e-kill".into(), "pending".into(), 0)]
    );

    let b = Worker::start(&cfg, &db, None);
    b.wake.notify_one();
    wait_until("delivered by the new worker", || all_done(&conn, 1)).await;
    b.stop().await;
    assert_eq!(
        statuses(&conn),
        vec![("e-kill".into(), "delivered".into(), 1)]
    );
    let log = r.log();
    assert_eq!(
        log.iter().filter(|q| q.answered == 200).count(),
        1,
        "one successful delivery"
    );
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[0].headers["idempotency-key"],
        log[1].headers["idempotency-key"]
    );
}

#[tokio::test]
async fn worker_not_started_before_crash_delivers_once_after_restart() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let cfg = webhook_cfg(&r);
    link(&conn, &cfg, Channel::Webhook, "crm:4", Lang::It, Some("A"));
    commit_event(&conn, &complete_event("e-restart"), "A", now_ms());
    // A worker killed right after the enqueue, before it could deliver.
    let a = Worker::start(&cfg, &db, None);
    a.join.abort();
    let _ = a.join.await;
    let b = Worker::start(&cfg, &db, None);
    b.wake.notify_one();
    wait_until("delivered", || all_done(&conn, 1)).await;
    b.stop().await;
    assert_eq!(r.count(), 1);
}

#[tokio::test]
async fn restart_after_a_recorded_delivery_does_not_resend() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let cfg = webhook_cfg(&r);
    link(&conn, &cfg, Channel::Webhook, "crm:5", Lang::It, Some("A"));
    commit_event(&conn, &complete_event("e-first"), "A", now_ms());
    let a = Worker::start(&cfg, &db, None);
    a.wake.notify_one();
    wait_until("first delivered", || all_done(&conn, 1)).await;
    a.stop().await;
    assert_eq!(r.count(), 1);

    let b = Worker::start(&cfg, &db, None);
    // A second event after the restart: once it is delivered, the new worker has polled
    // the outbox, and the first notification must not have been sent again.
    let mut second = complete_event("e-second");
    second.kind = EventKind::IdleBlocking;
    second.idle_s = Some(900.0);
    commit_event(&conn, &second, "A", now_ms());
    b.wake.notify_one();
    wait_until("second delivered", || all_done(&conn, 2)).await;
    b.stop().await;
    let ids: Vec<String> = r
        .log()
        .iter()
        .map(|q| {
            serde_json::from_slice::<serde_json::Value>(&q.body).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, vec!["e-first", "e-second"]);
}

#[tokio::test]
async fn a_link_bound_to_session_a_never_gets_session_b() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let cfg = webhook_cfg(&r);
    let ga = link(
        &conn,
        &cfg,
        Channel::Webhook,
        "guest-a",
        Lang::It,
        Some("A"),
    );
    let mut stopped = complete_event("e-a");
    stopped.kind = EventKind::ChargingStopped;
    stopped.reason = Some(StopReason::StoppedEarly);
    stopped.soc_pct = Some(50.0);
    commit_event(&conn, &stopped, "A", now_ms());
    on_session_closed(&conn, "A", now_ms()).unwrap();
    // The next driver links before plugging in; session B opens.
    let gb = link(&conn, &cfg, Channel::Webhook, "guest-b", Lang::En, None);
    on_session_opened(&conn, None, "milano", "hpc-3", "B", None, now_ms()).unwrap();
    assert_eq!(
        commit_event(&conn, &complete_event("e-b"), "B", now_ms()),
        1
    );
    let w = Worker::start(&cfg, &db, None);
    w.wake.notify_one();
    wait_until("both delivered", || all_done(&conn, 2)).await;
    w.stop().await;
    let got: Vec<(String, String)> = r
        .log()
        .iter()
        .map(|q| {
            let v: serde_json::Value = serde_json::from_slice(&q.body).unwrap();
            (
                v["guest"].as_str().unwrap().to_string(),
                v["event_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got.len(), 2);
    assert!(got.contains(&(ga.guest_id.clone(), "e-a".to_string())));
    assert!(got.contains(&(gb.guest_id.clone(), "e-b".to_string())));
    let a_body = r
        .log()
        .into_iter()
        .find(|q| q.headers["idempotency-key"].ends_with(&ga.guest_id))
        .unwrap();
    let msg = serde_json::from_slice::<serde_json::Value>(&a_body.body).unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("si è fermata al 50 %"), "{msg}");
}

#[tokio::test]
async fn notifications_older_than_max_age_are_recorded_expired() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let cfg = webhook_cfg(&r);
    link(&conn, &cfg, Channel::Webhook, "crm:6", Lang::It, Some("A"));
    // Queued two hours ago (max_age 1 h), e.g. while the worker was down.
    commit_event(
        &conn,
        &complete_event("e-old"),
        "A",
        now_ms() - 2 * 3_600_000,
    );
    commit_event(&conn, &complete_event("e-new"), "A", now_ms());
    let (ptx, prx) = flume::bounded(16);
    let w = Worker::start(&cfg, &db, Some(ptx));
    w.wake.notify_one();
    wait_until("both finished", || all_done(&conn, 2)).await;
    w.stop().await;
    assert_eq!(
        statuses(&conn),
        vec![
            ("e-old".into(), "expired".into(), 0),
            ("e-new".into(), "delivered".into(), 1)
        ]
    );
    assert_eq!(r.count(), 1);
    let outcomes: Vec<String> = prx
        .drain()
        .map(|p| p.tags.iter().find(|t| t.0 == "outcome").unwrap().1.clone())
        .collect();
    assert!(
        outcomes.contains(&"expired".to_string()) && outcomes.contains(&"delivered".to_string())
    );
}

#[tokio::test]
async fn retention_sweep_removes_guest_addresses() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let cfg = webhook_cfg(&r);
    let old_ms = now_ms() - 31 * 24 * 3_600_000;
    let req = LinkRequest {
        site: "milano".into(),
        charger: Some("hpc-3".into()),
        id_tag: None,
        channel: Channel::Webhook,
        address: Redacted::new("old-guest-reference-xyz".into()),
        lang: Lang::It,
        name: Some(Redacted::new("Old Guest Name".into())),
        events: None,
    };
    let old = link_guest(&conn, &req, &cfg, Some("OLD"), old_ms).unwrap();
    commit_event(&conn, &complete_event("e-ancient"), "OLD", old_ms);
    on_session_closed(&conn, "OLD", old_ms).unwrap();
    let recent = link(
        &conn,
        &cfg,
        Channel::Webhook,
        "recent-guest",
        Lang::It,
        Some("NEW"),
    );

    let w = Worker::start(&cfg, &db, None);
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    wait_until("old guest deleted", || {
        count("SELECT COUNT(*) FROM guests WHERE address = 'old-guest-reference-xyz'") == 0
    })
    .await;
    w.stop().await;
    assert_eq!(
        count("SELECT COUNT(*) FROM notifications"),
        0,
        "old outbox rows deleted"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM guests"),
        1,
        "the recent link stays"
    );
    assert!(evlounge::outputs::notify::get_guest(&conn, &old.token)
        .unwrap()
        .is_none());
    assert!(evlounge::outputs::notify::get_guest(&conn, &recent.token)
        .unwrap()
        .is_some());
    // Nothing of the contact is left in the file (secure_delete + checkpoint).
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
    let mut bytes = std::fs::read(&db).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("evlounge.db-wal")) {
        bytes.extend(wal);
    }
    for needle in ["old-guest-reference-xyz", "Old Guest Name"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} still in the database file"
        );
    }
}

/// Guest rows rewritten longer (bound → expired with its end time) move within their page.
/// The commit thread's connection did not zero what it freed, so after the retention sweep
/// deleted the rows, their old copies (address, name) were still in the file.
#[tokio::test]
async fn retention_leaves_no_copy_of_rewritten_guest_rows() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The daemon's own connection settings (the commit thread's).
    let conn = evlounge::store::open(dir.path()).unwrap();
    let db = db_in(&dir);
    let cfg = webhook_cfg(&r);
    let old_ms = now_ms() - 40 * 24 * 3_600_000;
    let n = 60;
    for i in 0..n {
        let req = LinkRequest {
            site: "milano".into(),
            charger: Some("hpc-3".into()),
            id_tag: None,
            channel: Channel::Webhook,
            address: Redacted::new(format!("guest-address-{i:03}")),
            lang: Lang::It,
            name: Some(Redacted::new(format!("Guest Name {i:03}"))),
            events: None,
        };
        link_guest(&conn, &req, &cfg, Some(&format!("S{i}")), old_ms + i).unwrap();
    }
    // Sessions end in another order than they began; each end rewrites its guest longer.
    for i in (0..n).rev() {
        on_session_closed(&conn, &format!("S{i}"), old_ms + 1_000 + i).unwrap();
    }
    let w = Worker::start(&cfg, &db, None);
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    // The worker deletes them, then copies the log into the file and cuts it to nothing.
    let wal = dir.path().join("evlounge.db-wal");
    wait_until("old guests deleted and the log cut", || {
        count("SELECT COUNT(*) FROM guests") == 0
            && std::fs::metadata(&wal).map_or(true, |m| m.len() == 0)
    })
    .await;
    w.stop().await;
    let mut bytes = std::fs::read(&db).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("evlounge.db-wal")) {
        bytes.extend(wal);
    }
    let left: Vec<String> = (0..n)
        .flat_map(|i| {
            [
                format!("guest-address-{i:03}"),
                format!("Guest Name {i:03}"),
            ]
        })
        .filter(|needle| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .collect();
    assert!(left.is_empty(), "still in the database file: {left:?}");
}

/// A short retention (here 2 h) must not delete a guest still waiting for their car: a
/// link bound to an open session counts from its creation plus a week, not from its
/// creation alone.
#[tokio::test]
async fn retention_keeps_a_guest_whose_session_is_still_open() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The notify tables alone: a link binds to the session the caller names.
    let conn = open_store(&db_in(&dir));
    let mut cfg = webhook_cfg(&r);
    cfg.retention = Duration::from_secs(2 * 3600);
    let now = now_ms();
    let h = 3_600_000;
    let guest = |addr: &str, session: &str, at: i64| {
        let req = LinkRequest {
            site: "milano".into(),
            charger: Some("hpc-3".into()),
            id_tag: None,
            channel: Channel::Webhook,
            address: Redacted::new(addr.into()),
            lang: Lang::En,
            name: None,
            events: None,
        };
        link_guest(&conn, &req, &cfg, Some(session), at).unwrap()
    };
    let waiting = guest("still-charging", "OPEN", now - 3 * h);
    let done = guest("long-gone", "ENDED", now - 4 * h);
    on_session_closed(&conn, "ENDED", now - 3 * h).unwrap();
    let stuck = guest("never-unplugged", "STUCK", now - 8 * 24 * h);
    let n = evlounge::outputs::notify::retention_sweep(&conn, &cfg, now).unwrap();
    assert_eq!(n, 2);
    let exists = |t: &str| evlounge::outputs::notify::link_exists(&conn, t).unwrap();
    assert!(exists(&waiting.token), "the open session's guest stays");
    assert!(!exists(&done.token));
    assert!(
        !exists(&stuck.token),
        "a session that never ended keeps it a week at most"
    );
}

/// The MQTT channel through the worker. The publisher stands in for the daemon's client
/// (the lead's code); it refuses the first publish, as a client does while disconnected.
#[tokio::test]
async fn mqtt_channel_publishes_json_on_the_notify_topic() {
    use evlounge::outputs::notify::{run_worker, MqttPublish};
    use futures_util::future::BoxFuture;

    #[derive(Default)]
    struct Recorder {
        calls: parking_lot::Mutex<Vec<(String, Vec<u8>)>>,
    }
    impl MqttPublish for Recorder {
        fn publish(&self, topic: String, payload: Vec<u8>) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async move {
                let mut calls = self.calls.lock();
                calls.push((topic, payload));
                if calls.len() == 1 {
                    Err("not connected".into())
                } else {
                    Ok(())
                }
            })
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let mut cfg = base_cfg();
    cfg.mqtt_enabled = true;
    cfg.mqtt_prefix = "lounge".into();
    link(
        &conn,
        &cfg,
        Channel::Mqtt,
        "display/lobby",
        Lang::En,
        Some("A"),
    );
    commit_event(&conn, &complete_event("e-mqtt"), "A", now_ms());
    let rec = std::sync::Arc::new(Recorder::default());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let client: std::sync::Arc<dyn MqttPublish> = rec.clone();
    let join = tokio::spawn(run_worker(
        cfg,
        db.clone(),
        wake.clone(),
        Some(client),
        None,
        rx,
    ));
    wake.notify_one();
    wait_until("mqtt delivered", || all_done(&conn, 1)).await;
    stop.send(true).unwrap();
    join.await.unwrap();
    assert_eq!(
        statuses(&conn),
        vec![("e-mqtt".into(), "delivered".into(), 2)]
    );
    let calls = rec.calls.lock().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].0, "lounge/milano/notify/display/lobby");
    let v: serde_json::Value = serde_json::from_slice(&calls[1].1).unwrap();
    assert_eq!(v["kind"], "charging_complete");
    assert_eq!(v["event_id"], "e-mqtt");
    assert!(v["message"].as_str().unwrap().contains("charged to 80 %"));
}

/// A row for a channel that is not configured waits (it may be configured after a restart)
/// and expires at max age; the worker does not spin on it meanwhile.
#[tokio::test]
async fn rows_of_an_unconfigured_channel_wait_then_expire() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let conn = open_store(&db);
    let cfg = webhook_cfg(&r);
    link(&conn, &cfg, Channel::Webhook, "crm:7", Lang::It, Some("A"));
    commit_event(&conn, &complete_event("e-wait"), "A", now_ms());
    commit_event(
        &conn,
        &complete_event("e-stale"),
        "A",
        now_ms() - 2 * 3_600_000,
    );
    let mut no_webhook = cfg.clone();
    no_webhook.webhook = None;
    let w = Worker::start(&no_webhook, &db, None);
    w.wake.notify_one();
    wait_until("stale row expired", || {
        statuses(&conn)
            .iter()
            .any(|s| s.0 == "e-stale" && s.1 == "expired")
    })
    .await;
    w.stop().await;
    assert!(statuses(&conn).contains(&("e-wait".into(), "pending".into(), 0)));
    assert_eq!(r.count(), 0);
    // Configured again: delivered.
    let w = Worker::start(&cfg, &db, None);
    w.wake.notify_one();
    wait_until("delivered", || all_done(&conn, 2)).await;
    w.stop().await;
    assert_eq!(r.count(), 1);
}
