//! The tables this module owns and the outbox writes made in the commit transaction.

use rusqlite::{params, Connection};

use super::link::decode_events;
use crate::domain::event::Event;

/// Run by the store at open (idempotent). `guests.address`/`name` are the personal data;
/// the outbox keeps only the event, and messages are rendered at send time.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS guests (
        guest_id   TEXT PRIMARY KEY,
        token_hash TEXT UNIQUE,
        site       TEXT NOT NULL,
        charger    TEXT,
        id_tag     TEXT,
        channel    TEXT NOT NULL,
        address    TEXT,
        name       TEXT,
        lang       TEXT NOT NULL,
        events     TEXT NOT NULL,
        source     TEXT NOT NULL,
        state      TEXT NOT NULL,
        dedup_key  TEXT UNIQUE,
        created_ms INTEGER NOT NULL,
        ended_ms   INTEGER
    )",
    "CREATE INDEX IF NOT EXISTS guests_pending ON guests (site, charger, state)",
    "CREATE INDEX IF NOT EXISTS guests_tag ON guests (site, id_tag, state)",
    "CREATE TABLE IF NOT EXISTS guest_sessions (
        guest_id    TEXT NOT NULL,
        session_key TEXT NOT NULL,
        bound_ms    INTEGER NOT NULL,
        PRIMARY KEY (guest_id, session_key)
    )",
    "CREATE INDEX IF NOT EXISTS guest_sessions_key ON guest_sessions (session_key)",
    "CREATE TABLE IF NOT EXISTS notifications (
        id          INTEGER PRIMARY KEY,
        event_id    TEXT NOT NULL,
        guest_id    TEXT NOT NULL,
        channel     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        site        TEXT NOT NULL,
        event_ts    INTEGER NOT NULL,
        event_json  TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        due_at      INTEGER NOT NULL,
        lease_until INTEGER,
        attempts    INTEGER NOT NULL DEFAULT 0,
        status      TEXT NOT NULL DEFAULT 'pending',
        last_error  TEXT,
        done_ms     INTEGER,
        UNIQUE (event_id, guest_id, channel)
    )",
    "CREATE INDEX IF NOT EXISTS notifications_due ON notifications (status, channel, due_at)",
    "CREATE TABLE IF NOT EXISTS notification_attempts (
        id              INTEGER PRIMARY KEY,
        notification_id INTEGER NOT NULL,
        attempt         INTEGER NOT NULL,
        started_ms      INTEGER NOT NULL,
        finished_ms     INTEGER NOT NULL,
        outcome         TEXT NOT NULL,
        status_code     INTEGER,
        error           TEXT
    )",
    "CREATE INDEX IF NOT EXISTS notification_attempts_n ON notification_attempts (notification_id)",
];

/// Applies [`MIGRATIONS`] (the lead's store does the same at open).
pub(crate) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for m in MIGRATIONS {
        conn.execute(m, [])?;
    }
    Ok(())
}

/// Queues `event` for every guest bound to `session_key` and subscribed to its kind. Call it
/// inside the commit transaction that records the event; idempotent per (event, guest,
/// channel). Events outside a session (lounge, charger offline) reach no guest. Returns the
/// number of notifications queued.
pub fn enqueue_for_event(
    conn: &Connection,
    event: &Event,
    session_key: Option<&str>,
    now_ms: i64,
) -> rusqlite::Result<usize> {
    let Some(sk) = session_key.filter(|s| !s.is_empty()) else {
        return Ok(0);
    };
    let guests: Vec<(String, String, String, String)> = {
        let mut st = conn.prepare_cached(
            "SELECT g.guest_id, g.channel, g.events, g.address FROM guests g
             JOIN guest_sessions s ON s.guest_id = g.guest_id
             WHERE s.session_key = ?1 AND g.address IS NOT NULL
             ORDER BY g.created_ms DESC, g.guest_id DESC",
        )?;
        let rows = st.query_map(params![sk], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut queued = 0;
    let mut event_json: Option<String> = None;
    // The same address linked twice to the session (a retried form, the desk and the
    // directory both): one message, to the latest link (a guest who linked again to change
    // the language gets the new one; an id_tag link, usually the oldest, may be swept by
    // retention first). Each link is a guest of its own with its own idempotency key, so a
    // receiver could not drop the repeat.
    let mut reached: std::collections::HashSet<(String, String)> = Default::default();
    for (guest_id, channel, events, address) in guests {
        if !decode_events(&events).contains(&event.kind) {
            continue;
        }
        if !reached.insert((channel.clone(), address)) {
            continue;
        }
        let json = match &event_json {
            Some(j) => j.clone(),
            None => {
                let j = serde_json::to_string(event)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                event_json = Some(j.clone());
                j
            }
        };
        queued += conn.execute(
            "INSERT OR IGNORE INTO notifications
                 (event_id, guest_id, channel, kind, site, event_ts, event_json, created_ms, due_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                event.event_id,
                guest_id,
                channel,
                event.kind.as_str(),
                event.site,
                event.ts,
                json,
                now_ms,
            ],
        )?;
    }
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::EventKind;
    use crate::outputs::notify::{
        link_guest, link_guest_capped, on_session_closed, on_session_opened, unlink_guest, Channel,
        Contact, Customer, Directory, Lang, LinkRequest, NotifyConfig, NtfyConfig,
    };
    use crate::util::secret::Redacted;

    const NOW: i64 = 1_795_547_378_380;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        migrate(&c).unwrap();
        migrate(&c).unwrap(); // idempotent
        c
    }

    fn cfg() -> NotifyConfig {
        let mut c = NotifyConfig::new("http://127.0.0.1:8080".parse().unwrap());
        c.ntfy = Some(NtfyConfig {
            url: "http://127.0.0.1:1".parse().unwrap(),
            token: None,
        });
        c
    }

    fn req(charger: Option<&str>, id_tag: Option<&str>) -> LinkRequest {
        LinkRequest {
            site: "milano".into(),
            charger: charger.map(str::to_string),
            id_tag: id_tag.map(str::to_string),
            channel: Channel::Ntfy,
            address: Redacted::new("topic-a".into()),
            lang: Lang::En,
            name: None,
            events: None,
        }
    }

    fn ev(kind: EventKind, id: &str) -> Event {
        let mut e = Event::new(kind, NOW, "milano", id.into());
        e.charger = Some("hpc-3".into());
        e
    }

    fn queued(c: &Connection) -> Vec<(String, String)> {
        let mut st = c
            .prepare("SELECT event_id, guest_id FROM notifications ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn charger_link_gets_its_session_only() {
        let c = conn();
        let g = link_guest(&c, &req(Some("hpc-3"), None), &cfg(), Some("A"), NOW).unwrap();
        assert_eq!(g.state, "bound");
        assert_eq!(
            enqueue_for_event(&c, &ev(EventKind::ChargingComplete, "e1"), Some("A"), NOW).unwrap(),
            1
        );
        // Same event again (redelivery): nothing new.
        assert_eq!(
            enqueue_for_event(&c, &ev(EventKind::ChargingComplete, "e1"), Some("A"), NOW).unwrap(),
            0
        );
        // Not subscribed by default.
        assert_eq!(
            enqueue_for_event(&c, &ev(EventKind::ChargingStarted, "e0"), Some("A"), NOW).unwrap(),
            0
        );
        on_session_closed(&c, "A", NOW).unwrap();
        on_session_opened(&c, None, "milano", "hpc-3", "B", None, NOW).unwrap();
        assert_eq!(
            enqueue_for_event(&c, &ev(EventKind::ChargingComplete, "e2"), Some("B"), NOW).unwrap(),
            0
        );
        // A late event of A (closed out of order) still reaches A's guest only.
        assert_eq!(
            enqueue_for_event(&c, &ev(EventKind::IdleBlocking, "e3"), Some("A"), NOW).unwrap(),
            1
        );
        assert_eq!(queued(&c).len(), 2);
        assert!(queued(&c).iter().all(|(_, gid)| *gid == g.guest_id));
    }

    #[test]
    fn the_same_address_linked_twice_gets_one_message_by_its_latest_link() {
        let c = conn();
        link_guest(&c, &req(Some("hpc-3"), None), &cfg(), Some("A"), NOW).unwrap();
        // The same form sent again a second later, in Italian this time; and another guest
        // on the same session.
        let mut again = req(Some("hpc-3"), None);
        again.lang = Lang::It;
        let latest = link_guest(&c, &again, &cfg(), Some("A"), NOW + 1_000).unwrap();
        let mut other = req(Some("hpc-3"), None);
        other.address = Redacted::new("topic-b".into());
        let second = link_guest(&c, &other, &cfg(), Some("A"), NOW + 2_000).unwrap();
        assert_eq!(
            enqueue_for_event(&c, &ev(EventKind::ChargingComplete, "e1"), Some("A"), NOW).unwrap(),
            2
        );
        let mut guests: Vec<String> = queued(&c).into_iter().map(|(_, g)| g).collect();
        guests.sort();
        let mut want = vec![latest.guest_id, second.guest_id];
        want.sort();
        assert_eq!(guests, want);
    }

    #[test]
    fn pending_link_binds_to_the_next_session_within_the_ttl() {
        let c = conn();
        let g = link_guest(&c, &req(Some("hpc-3"), None), &cfg(), None, NOW).unwrap();
        assert_eq!(g.state, "pending");
        let late =
            link_guest(&c, &req(Some("hpc-3"), None), &cfg(), None, NOW - 3_600_000).unwrap();
        on_session_opened(&c, None, "milano", "hpc-4", "X", None, NOW).unwrap();
        on_session_opened(&c, None, "milano", "hpc-3", "B", None, NOW).unwrap();
        enqueue_for_event(&c, &ev(EventKind::ChargingComplete, "e1"), Some("B"), NOW).unwrap();
        assert_eq!(queued(&c), vec![("e1".to_string(), g.guest_id.clone())]);
        assert_ne!(late.guest_id, g.guest_id);
        // The session after B does not inherit the link.
        on_session_closed(&c, "B", NOW).unwrap();
        on_session_opened(&c, None, "milano", "hpc-3", "C", None, NOW).unwrap();
        assert_eq!(
            enqueue_for_event(&c, &ev(EventKind::ChargingComplete, "e2"), Some("C"), NOW).unwrap(),
            0
        );
    }

    #[test]
    fn a_capped_link_counts_the_bays_waiting_and_bound_guests_only() {
        let c = conn();
        let capped = |at: i64, sess: Option<&str>| {
            link_guest_capped(&c, &req(Some("hpc-3"), None), &cfg(), sess, at, Some(2))
        };
        // A pending link that lapsed an hour ago takes no place.
        capped(NOW - 3_600_000, None).unwrap();
        capped(NOW, Some("A")).unwrap();
        capped(NOW, None).unwrap();
        assert!(matches!(
            capped(NOW, None),
            Err(crate::outputs::notify::NotifyError::Invalid(
                crate::outputs::notify::LinkError::BayFull(2)
            ))
        ));
        // Another bay is not held back by it.
        link_guest_capped(&c, &req(Some("hpc-4"), None), &cfg(), None, NOW, Some(2)).unwrap();
        // Once the session ends, its guest's place is free again.
        on_session_closed(&c, "A", NOW).unwrap();
        capped(NOW, None).unwrap();
        // The front desk is not capped.
        link_guest(&c, &req(Some("hpc-3"), None), &cfg(), None, NOW).unwrap();
    }

    #[test]
    fn id_tag_links_follow_the_card_and_unlink_cancels() {
        let c = conn();
        let g = link_guest(&c, &req(None, Some("04A2")), &cfg(), None, NOW).unwrap();
        assert_eq!(g.state, "active");
        on_session_opened(&c, None, "milano", "hpc-3", "A", Some("04A2"), NOW).unwrap();
        on_session_opened(&c, None, "milano", "hpc-4", "B", Some("FFFF"), NOW).unwrap();
        on_session_opened(&c, None, "milano", "hpc-5", "C", Some("04A2"), NOW).unwrap();
        for (sk, id) in [("A", "e1"), ("B", "e2"), ("C", "e3")] {
            enqueue_for_event(&c, &ev(EventKind::ChargingComplete, id), Some(sk), NOW).unwrap();
        }
        let ids: Vec<String> = queued(&c).into_iter().map(|(e, _)| e).collect();
        assert_eq!(ids, vec!["e1", "e3"]);
        assert!(unlink_guest(&c, &g.token).unwrap());
        assert!(!unlink_guest(&c, &g.token).unwrap());
        assert!(
            queued(&c).is_empty(),
            "pending notifications of an unlinked guest are dropped"
        );
    }

    #[test]
    fn directory_card_tap_links_the_customer_once() {
        let c = conn();
        let dir = Directory::from_customers(vec![Customer {
            id_tag: "04A2".into(),
            name: Some(Redacted::new("Anna".into())),
            lang: Lang::En,
            events: None,
            contacts: vec![
                Contact {
                    channel: Channel::Email,
                    address: Redacted::new("anna@example.com".into()),
                },
                Contact {
                    channel: Channel::Ntfy,
                    address: Redacted::new("anna".into()),
                },
            ],
        }]);
        on_session_opened(&c, Some(&dir), "milano", "hpc-3", "A", Some("04A2"), NOW).unwrap();
        on_session_opened(&c, Some(&dir), "milano", "hpc-3", "A", Some("04A2"), NOW).unwrap();
        assert_eq!(
            enqueue_for_event(&c, &ev(EventKind::ChargingComplete, "e1"), Some("A"), NOW).unwrap(),
            2
        );
        on_session_closed(&c, "A", NOW).unwrap();
        on_session_opened(&c, Some(&dir), "milano", "hpc-3", "B", Some("9999"), NOW).unwrap();
        assert_eq!(
            enqueue_for_event(&c, &ev(EventKind::ChargingComplete, "e2"), Some("B"), NOW).unwrap(),
            0
        );
    }

    #[test]
    fn events_outside_a_session_reach_nobody() {
        let c = conn();
        link_guest(&c, &req(Some("hpc-3"), None), &cfg(), Some("A"), NOW).unwrap();
        assert_eq!(
            enqueue_for_event(&c, &ev(EventKind::ChargingComplete, "e1"), None, NOW).unwrap(),
            0
        );
        assert_eq!(
            enqueue_for_event(&c, &ev(EventKind::ChargingComplete, "e1"), Some(""), NOW).unwrap(),
            0
        );
    }
}
