//! The web API against the real binary and a real Mosquitto: the SSE stream (ids, resume
//! without loss or duplicates), exact usage statistics, staff authentication, the bay page
//! and its QR code.

mod harness;
mod web_support;

use std::collections::BTreeSet;
use std::time::Duration;

use harness::{wait_for_async, Mosquitto, MqttClient};
use serde_json::{json, Value};
use web_support::*;

async fn publish_all(p: &MqttClient, msgs: &[String]) {
    for m in msgs {
        p.publish(TOPIC, m.clone()).await;
    }
    p.wait_acked().await;
}

fn event_ids(sub: &MqttClient) -> BTreeSet<String> {
    sub.messages("/events/")
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_events_with_ids_and_resumes_without_loss_or_duplicates() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), &broker, &site_config(&broker, false), "").await;
    let sub = MqttClient::connect(broker.port, "t-sub", &["evlounge/milano/events/#"]).await;
    let publ = MqttClient::connect(broker.port, "t-pub", &[]).await;

    // A fresh client first gets the current state of every bay, without ids.
    let a = SseReader::open(&d.base, None, "").await;
    a.wait_for("initial charger_state", |e| {
        e.iter()
            .any(|x| x.event == "charger_state" && x.data["charger"] == "hpc-3")
    })
    .await;
    assert!(a.all().iter().all(|e| e.id.is_none()));

    let t0 = base_ts();
    let s1 = dc_session("T-1", t0);
    publish_all(&publ, &[s1.before, s1.after, s1.unplug].concat()).await;
    a.wait_for("charging_complete on the stream", |e| {
        e.iter().any(|x| x.event == "charging_complete")
    })
    .await;
    wait_for_async(
        "session 1 events on MQTT",
        Duration::from_secs(30),
        || async { (sub.count("/events/charging_complete") == 1).then_some(()) },
    )
    .await;
    let first = event_ids(&sub).len();
    a.wait_for("every session 1 event", |e| {
        e.iter().filter(|x| x.id.is_some()).count() == first
    })
    .await;
    let seen_a = a.with_ids();
    let done = seen_a
        .iter()
        .find(|e| e.event == "charging_complete")
        .expect("complete");
    assert_eq!(done.data["kind"], "charging_complete");
    assert_eq!(done.data["charger"], "hpc-3");
    assert_eq!(done.data["session_id"], "T-1");
    assert_eq!(done.data["event_id"].as_str().map(str::len), Some(16));
    // ids are the store's increasing sequence; the kind is the SSE event name
    let ids_a: Vec<i64> = seen_a.iter().filter_map(|e| e.id).collect();
    assert!(ids_a.windows(2).all(|w| w[0] < w[1]), "{ids_a:?}");
    assert!(seen_a.iter().all(|e| e.data["kind"] == e.event.as_str()));
    // state changes arrived live too (one per committed batch: when the whole session lands
    // in one batch, only the final state — session closed — is broadcast)
    assert!(a
        .all()
        .iter()
        .any(|e| e.event == "charger_state" && e.data["charger"] == "hpc-3"));
    let last_a = *ids_a.last().expect("ids");
    a.close();

    // While nobody listens, a second session runs to completion.
    let s2 = dc_session("T-2", s1.end_ts + 60_000);
    publish_all(&publ, &[s2.before, s2.after, s2.unplug].concat()).await;
    wait_for_async(
        "session 2 events on MQTT",
        Duration::from_secs(30),
        || async { (sub.count("/events/charging_complete") == 2).then_some(()) },
    )
    .await;
    let all_ids = event_ids(&sub);
    let missed = all_ids.len() - first;
    assert!(missed >= 2, "session 2 produced events");

    // Reconnecting with Last-Event-ID replays exactly what was missed, then goes live.
    let b = SseReader::open(&d.base, Some(last_a), "").await;
    b.wait_for("the missed events", |e| {
        e.iter().filter(|x| x.id.is_some()).count() >= missed
    })
    .await;
    let seen_b = b.with_ids();
    let ids_b: Vec<i64> = seen_b.iter().filter_map(|e| e.id).collect();
    assert!(
        ids_b.iter().all(|&i| i > last_a),
        "{ids_b:?} after {last_a}"
    );
    assert!(ids_b.windows(2).all(|w| w[0] < w[1]), "{ids_b:?}");
    assert!(seen_b
        .iter()
        .any(|e| e.event == "charging_complete" && e.data["session_id"] == "T-2"));
    let mut union: Vec<String> = seen_a
        .iter()
        .chain(seen_b.iter())
        .map(|e| e.data["event_id"].as_str().unwrap_or_default().to_string())
        .collect();
    let n = union.len();
    union.sort();
    union.dedup();
    assert_eq!(union.len(), n, "no event twice");
    assert_eq!(
        union.into_iter().collect::<BTreeSet<_>>(),
        all_ids,
        "no event lost"
    );

    // …and live after the replay: a third plug-in reaches the resumed stream once.
    let s3 = dc_session("T-3", s2.end_ts + 60_000);
    publish_all(&publ, &s3.before).await;
    b.wait_for("charging_started of session 3", |e| {
        e.iter()
            .any(|x| x.event == "charging_started" && x.data["session_id"] == "T-3")
    })
    .await;
    let ids: Vec<i64> = b.with_ids().iter().filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // `?last_event_id=0` replays the whole history in order; a bay filter narrows it.
    let c = SseReader::open(&d.base, None, "?last_event_id=0&site=milano&charger=hpc-3").await;
    c.wait_for("the whole history", |e| {
        e.iter().filter(|x| x.id.is_some()).count() > all_ids.len()
    })
    .await;
    let ids_c: Vec<i64> = c.with_ids().iter().filter_map(|e| e.id).collect();
    assert_eq!(ids_c[0], 1);
    assert!(ids_c.windows(2).all(|w| w[1] == w[0] + 1), "{ids_c:?}");
    // the unfiltered snapshot would hold hpc-4 and the lounge
    assert!(
        c.all().iter().all(|e| e.data["charger"] == "hpc-3"),
        "only hpc-3"
    );
    // a malformed id is refused
    let r = client()
        .get(format!("{}/api/v1/events", d.base))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

fn ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_millis()
}

fn record(
    charger: &str,
    id: &str,
    started: &str,
    completed: Option<&str>,
    ended: &str,
    kwh: f64,
) -> evlounge::domain::session::SessionRecord {
    evlounge::domain::session::SessionRecord {
        vehicle: Some("Taycan".into()),
        charging_started: Some(ms(started)),
        completed: completed.map(ms),
        ended: Some(ms(ended)),
        outcome: Some(evlounge::domain::session::Outcome::Completed),
        energy_kwh: kwh,
        peak_kw: 100.0,
        ..evlounge::domain::session::SessionRecord::opened(
            "milano",
            charger,
            id.into(),
            format!("{id}:{}", ms(started)),
            ms(started),
        )
    }
}

async fn get_json(base: &str, path: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_stats_are_exact_across_buckets_and_dst() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    // Sessions recorded before the daemon starts, around the autumn DST night in Rome
    // (26 October 2025 has 25 hours; 02:00–03:00 happens twice).
    {
        let mut conn = evlounge::store::open(&dir.path().join("data")).unwrap();
        let tx = conn.transaction().unwrap();
        for r in [
            // 22:00 → 01:00 across midnight, complete at 23:00: 2 h then 1 h plugged, 1 h + 1 h idle
            record(
                "hpc-3",
                "A",
                "2025-10-25T22:00:00+02:00",
                Some("2025-10-25T23:00:00+02:00"),
                "2025-10-26T01:00:00+02:00",
                40.0,
            ),
            // 02:30 → 03:30 in winter time, across two hour buckets
            record(
                "hpc-3",
                "B",
                "2025-10-26T02:30:00+01:00",
                None,
                "2025-10-26T03:30:00+01:00",
                20.5,
            ),
            record(
                "hpc-4",
                "C",
                "2025-10-26T10:00:00+01:00",
                Some("2025-10-26T10:15:00+01:00"),
                "2025-10-26T10:45:00+01:00",
                12.25,
            ),
        ] {
            evlounge::store::upsert_session(&tx, &r).unwrap();
        }
        tx.commit().unwrap();
    }
    let d = start_daemon(
        dir.path(),
        &broker,
        &site_config(&broker, false),
        &format!("staff_token = {TOKEN:?}"),
    )
    .await;

    let (code, v) = get_json(
        &d.base,
        "/api/v1/stats/usage?bucket=day&from=2025-10-25T00:00:00%2B02:00&to=2025-10-27T00:00:00%2B01:00",
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v,
        json!({"buckets": [
            {"site": "milano", "charger": "hpc-3", "start": "2025-10-25T00:00:00+02:00",
             "utilization_pct": 8.33, "sessions": 1, "energy_kwh": 40.0, "idle_min": 60.0},
            {"site": "milano", "charger": "hpc-3", "start": "2025-10-26T00:00:00+02:00",
             "utilization_pct": 8.0, "sessions": 1, "energy_kwh": 20.5, "idle_min": 60.0},
            {"site": "milano", "charger": "hpc-4", "start": "2025-10-25T00:00:00+02:00",
             "utilization_pct": 0.0, "sessions": 0, "energy_kwh": 0.0, "idle_min": 0.0},
            // 45 min of a 25 h day = 3 %
            {"site": "milano", "charger": "hpc-4", "start": "2025-10-26T00:00:00+02:00",
             "utilization_pct": 3.0, "sessions": 1, "energy_kwh": 12.25, "idle_min": 30.0},
        ]})
    );

    // Hours through the repeated 02:00, one charger.
    let (code, v) = get_json(
        &d.base,
        "/api/v1/stats/usage?bucket=hour&charger=hpc-3&from=2025-10-26T01:00:00%2B02:00&to=2025-10-26T04:00:00%2B01:00",
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let rows: Vec<(String, f64, u64, f64)> = v["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["start"].as_str().unwrap().to_string(),
                b["utilization_pct"].as_f64().unwrap(),
                b["sessions"].as_u64().unwrap(),
                b["energy_kwh"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("2025-10-26T01:00:00+02:00".into(), 0.0, 0, 0.0),
            ("2025-10-26T02:00:00+02:00".into(), 0.0, 0, 0.0),
            ("2025-10-26T02:00:00+01:00".into(), 50.0, 1, 20.5),
            ("2025-10-26T03:00:00+01:00".into(), 50.0, 0, 0.0),
        ]
    );

    // Epoch ms work as well as RFC 3339; the spring day has 23 hours.
    let (code, v) = get_json(
        &d.base,
        &format!(
            "/api/v1/stats/usage?bucket=day&site=milano&charger=hpc-4&from={}&to={}",
            ms("2025-03-30T00:00:00+01:00"),
            ms("2025-03-30T12:00:00+02:00")
        ),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["buckets"].as_array().unwrap().len(), 1);
    assert_eq!(v["buckets"][0]["start"], "2025-03-30T00:00:00+01:00");

    // Defaults: the last 24 h in hour buckets for every charger (24 or 25 per charger).
    let (code, v) = get_json(&d.base, "/api/v1/stats/usage").await;
    assert_eq!(code, 200);
    let n = v["buckets"].as_array().unwrap().len();
    assert!(n == 48 || n == 50, "{n}");

    // Bad requests
    for q in [
        "bucket=week",
        "from=yesterday",
        "from=2025-01-02T00:00:00Z&to=2025-01-01T00:00:00Z",
        "bucket=hour&from=2020-01-01T00:00:00Z&to=2025-01-01T00:00:00Z",
    ] {
        let (code, v) = get_json(&d.base, &format!("/api/v1/stats/usage?{q}")).await;
        assert_eq!(code, 400, "{q}: {v}");
        assert!(v["error"].is_string());
    }
    let r = client()
        .get(format!("{}/api/v1/stats/usage", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_pages_and_endpoints_need_the_token_public_pages_do_not() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(
        dir.path(),
        &broker,
        &site_config(&broker, false),
        &format!("staff_token = {TOKEN:?}\npublic_url = \"https://ev.example.test\""),
    )
    .await;
    let publ = MqttClient::connect(broker.port, "t-pub", &[]).await;
    publ.publish(
        "evlounge/milano/lounge/lounge/cam-1",
        r#"{"occupancy": 14}"#,
    )
    .await;
    publ.wait_acked().await;
    wait_for_async("lounge occupancy", Duration::from_secs(30), || async {
        let v = d.get_json("/api/v1/lounge")?;
        (v["zones"][0]["occupancy"] == 14).then_some(())
    })
    .await;
    let http = client();
    let url = |p: &str| format!("{}{p}", d.base);

    let staff_paths = [
        "/staff",
        "/api/v1/sessions",
        "/api/v1/sessions?format=csv",
        "/api/v1/stats/usage",
        "/api/v1/stats/events",
        "/api/v1/stats/notifications",
        "/api/v1/stats/lounge",
    ];
    for p in staff_paths {
        let r = http.get(url(p)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{p} without a token");
        let r = http.get(url(p)).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(r.status(), 401, "{p} with a wrong token");
        let r = http.get(url(p)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p} with the token");
    }
    // The login page is what /staff shows without a token.
    let page = http
        .get(url("/staff"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"action="/staff/login""#));

    // Login: a wrong token is refused, the right one sets the cookie the API honours.
    let r = http
        .post(url("/staff/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let r = http
        .post(url("/staff/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie")
        .to_string();
    assert!(
        cookie.starts_with(&format!("evlounge_staff={TOKEN}")),
        "{cookie}"
    );
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(cookie.contains("Secure"), "https public_url: {cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let r = http
        .get(url("/staff"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("/assets/staff.js"));
    let (code, v) = {
        let r = http
            .get(url("/api/v1/stats/notifications"))
            .header("cookie", &pair)
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(code, 200);
    assert!(
        v["counts"].is_array() && v["totals"]["delivered"] == 0,
        "{v}"
    );
    let (_, lounge) = get_json(&d.base, "/api/v1/stats/lounge").await;
    let z = &lounge["zones"][0];
    assert_eq!(
        (z["zone"].as_str(), z["capacity"].as_u64()),
        (Some("lounge"), Some(40))
    );
    assert_eq!(
        z["samples"].as_array().unwrap().last().unwrap()["occupancy"],
        14
    );

    // Public: the board, the bay page, its QR code, the OpenAPI document, assets.
    for p in [
        "/",
        "/?lang=en",
        "/bay/milano/hpc-3",
        "/api/v1/openapi.json",
        "/assets/app.css",
        "/assets/board.js",
        "/api/v1/chargers",
    ] {
        let r = http.get(url(p)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
    let bay = http
        .get(url("/bay/milano/hpc-3"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(bay.contains("\"charger\":\"hpc-3\"") && bay.contains("Bay 3"));
    for p in [
        "/bay/milano/hpc-99",
        "/bay/roma/hpc-3",
        "/bay/milano/a%20b",
        "/bay/milano/hpc-99/qr.svg",
    ] {
        let r = http.get(url(p)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{p}");
    }
    let doc: Value = http
        .get(url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for p in [
        "/api/v1/events",
        "/api/v1/stats/usage",
        "/api/v1/guests",
        "/bay/{site}/{charger}",
    ] {
        assert!(doc["paths"][p].is_object(), "{p}");
    }

    let r = http
        .get(url("/bay/milano/hpc-3/qr.svg"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/svg+xml")
    );
    let svg = r.text().await.unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches('<').count(), svg.matches('>').count());
    // a QR code for a 40-character URL has hundreds of dark modules, one path command each
    assert!(svg.matches("h8v8h-8z").count() > 200, "{svg}");
    assert!(svg.contains("https://ev.example.test/bay/milano/hpc-3"));
    // a longer URL encodes to a bigger code
    let other = http
        .get(url("/bay/milano/hpc-4/qr.svg"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_ne!(svg, other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_deletes_their_link_and_made_up_tokens_never_wait_for_the_writer() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(
        dir.path(),
        &broker,
        &site_config(&broker, true),
        &format!("staff_token = {TOKEN:?}\nguest_channels = [\"mqtt\"]"),
    )
    .await;
    let http = client();
    let url = |p: &str| format!("{}{p}", d.base);
    // What a page elsewhere can make a browser send without a CORS preflight is refused.
    let body = r#"{"site": "milano", "charger": "hpc-3", "channel": "mqtt", "address": "x"}"#;
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = http
            .post(url("/api/v1/guests"))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{ct}");
    }
    let r = http
        .post(url("/api/v1/guests"))
        .header("X-Evlounge-Public", "1")
        .json(
            &json!({"site": "milano", "charger": "hpc-3", "channel": "mqtt",
                      "address": "bay3-display", "lang": "en"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let own = url(&format!("/api/v1/guests/{token}"));
    assert_eq!(http.get(&own).send().await.unwrap().status(), 200);

    // Someone holds the store's write lock (here: this test; in life, a flood of deletes or
    // a long commit). A made-up token is answered from a reader at once, not after the
    // writer's busy wait (which ends in 503).
    let db = evlounge::store::db_path(&dir.path().join("data"));
    assert!(db.exists(), "{}", db.display());
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    for fake in ["0123456789abcdef0123456789abcdef", "x"] {
        let r = http
            .delete(url(&format!("/api/v1/guests/{fake}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{fake}");
    }
    let long = "a".repeat(200);
    let r = http
        .delete(url(&format!("/api/v1/guests/{long}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    holder.execute_batch("ROLLBACK").unwrap();

    // The guest's own delete removes the link; a second one finds nothing.
    let r = http.delete(&own).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(http.get(&own).send().await.unwrap().status(), 404);
    assert_eq!(http.delete(&own).send().await.unwrap().status(), 404);

    // The public links bays that exist, and up to 10 guests on one bay; the desk is not
    // limited.
    let public = |charger: &str, i: usize| {
        http.post(url("/api/v1/guests"))
            .header("X-Evlounge-Public", "1")
            .json(
                &json!({"site": "milano", "charger": charger, "channel": "mqtt",
                          "address": format!("display-{i}")}),
            )
    };
    let r = public("hpc-99", 0).send().await.unwrap();
    assert_eq!(r.status(), 404);
    for i in 1..=10 {
        assert_eq!(
            public("hpc-4", i).send().await.unwrap().status(),
            201,
            "{i}"
        );
    }
    let r = public("hpc-4", 11).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let r = http
        .post(url("/api/v1/guests"))
        .bearer_auth(TOKEN)
        .json(
            &json!({"site": "milano", "charger": "hpc-4", "channel": "mqtt",
                      "address": "desk-linked"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// Without a staff token (loopback only) the desk is whoever is on this host, but not a
/// request a reverse proxy relayed: a token lost to a unit file's mistake must not leave the
/// staff pages open through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_staff_token_only_requests_from_this_host_are_staff() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), &broker, &site_config(&broker, false), "").await;
    let http = client();
    let url = format!("{}/api/v1/sessions", d.base);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    for (h, v) in [
        ("X-Forwarded-For", "203.0.113.7"),
        ("Forwarded", "for=203.0.113.7"),
        ("X-Real-IP", "203.0.113.7"),
    ] {
        let r = http.get(&url).header(h, v).send().await.unwrap();
        assert_eq!(r.status(), 401, "{h}");
    }
    // Logging in cannot help there: said plainly, no cookie (a cookie would only lead back
    // to the login form).
    let r = http
        .post(format!("{}/staff/login", d.base))
        .header("X-Forwarded-For", "203.0.113.7")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.text().await.unwrap().contains("http.staff_token"));
}
