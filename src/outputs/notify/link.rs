//! Guest links: who is told about which session, and the session hooks that bind them.

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::directory::Directory;
use super::{random_hex, Channel, Lang, NotifyConfig, NotifyError};
use crate::domain::event::EventKind;
use crate::util::secret::Redacted;

/// A charger link made while the charger has no open session waits this long for the next
/// session; after that it never binds, so a guest who linked and left is not told about a
/// stranger's car hours later.
pub const PENDING_LINK_TTL: Duration = Duration::from_secs(30 * 60);

/// `POST /api/v1/guests` and `{prefix}/{site}/frontdesk/link` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    pub site: String,
    #[serde(default)]
    pub charger: Option<String>,
    #[serde(default)]
    pub id_tag: Option<String>,
    pub channel: Channel,
    pub address: Redacted<String>,
    #[serde(default)]
    pub lang: Lang,
    #[serde(default)]
    pub name: Option<Redacted<String>>,
    /// Kinds to notify; absent = the guest defaults (CONTRACT §6).
    #[serde(default)]
    pub events: Option<Vec<EventKind>>,
}

/// Why a link request is refused. Never carries the address or name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("site: must match [A-Za-z0-9_-]{{1,64}}")]
    Site,
    #[error("exactly one of charger or id_tag is required")]
    Target,
    #[error("charger: must match [A-Za-z0-9_-]{{1,64}}")]
    Charger,
    #[error("id_tag: must be 1-64 printable characters")]
    IdTag,
    #[error("channel {0} is not configured")]
    ChannelDisabled(&'static str),
    #[error("channel {0} is not open to guests")]
    ChannelNotPublic(&'static str),
    #[error("id_tag links need the staff token")]
    IdTagNotPublic,
    #[error("address: not a valid {0} address")]
    Address(&'static str),
    #[error("name: at most 100 characters, no control characters")]
    Name,
    #[error("events: must not be empty")]
    Events,
    #[error("this bay has as many guests linked as it takes ({0}); ask the front desk")]
    BayFull(i64),
}

fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn valid_email(s: &str) -> bool {
    // lettre's parser is the one that will have to accept it when sending.
    s.len() <= 254 && s.parse::<lettre::Address>().is_ok()
}

fn valid_mqtt_suffix(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && !s.starts_with('/')
        && !s.ends_with('/')
        && !s.contains("//")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/'))
}

fn valid_reference(s: &str) -> bool {
    (1..=256).contains(&s.chars().count()) && !s.chars().any(char::is_control)
}

impl LinkRequest {
    /// Shape checks plus "the channel is configured". The HTTP layer adds
    /// [`LinkRequest::validate_public`] for callers without the staff token.
    pub fn validate(&self, cfg: &NotifyConfig) -> Result<(), LinkError> {
        if !is_id(&self.site) {
            return Err(LinkError::Site);
        }
        match (&self.charger, &self.id_tag) {
            (Some(c), None) => {
                if !is_id(c) {
                    return Err(LinkError::Charger);
                }
            }
            (None, Some(t)) => {
                if t.is_empty() || t.len() > 64 || t.chars().any(|c| c.is_control()) {
                    return Err(LinkError::IdTag);
                }
            }
            _ => return Err(LinkError::Target),
        }
        if !cfg.channel_enabled(self.channel) {
            return Err(LinkError::ChannelDisabled(self.channel.as_str()));
        }
        let a = self.address.expose().as_str();
        let ok = match self.channel {
            Channel::Email => valid_email(a),
            Channel::Ntfy => is_id(a),
            Channel::Mqtt => valid_mqtt_suffix(a),
            // The URL is the operator's; the address is only the guest's reference there.
            Channel::Webhook => valid_reference(a),
        };
        if !ok {
            return Err(LinkError::Address(self.channel.as_str()));
        }
        if let Some(n) = &self.name {
            let n = n.expose();
            if n.chars().count() > 100 || n.chars().any(char::is_control) {
                return Err(LinkError::Name);
            }
        }
        if matches!(&self.events, Some(e) if e.is_empty()) {
            return Err(LinkError::Events);
        }
        Ok(())
    }

    /// The public (no staff token) subset: charger links on `guest_channels` only.
    pub fn validate_public(&self, cfg: &NotifyConfig) -> Result<(), LinkError> {
        self.validate(cfg)?;
        if self.id_tag.is_some() {
            return Err(LinkError::IdTagNotPublic);
        }
        if !cfg.guest_channels.contains(&self.channel) {
            return Err(LinkError::ChannelNotPublic(self.channel.as_str()));
        }
        Ok(())
    }
}

/// What `link_guest` returns: the secret token (only the guest gets it) and the non-secret
/// guest id used in `Idempotency-Key` and logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestLink {
    pub token: String,
    pub guest_id: String,
    /// `pending` (waiting for the next session), `bound` (to the open session) or `active`
    /// (an id_tag link).
    pub state: String,
}

/// A guest's own link, looked up by its token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GuestView {
    pub guest_id: String,
    pub site: String,
    pub charger: Option<String>,
    pub id_tag: Option<String>,
    pub channel: Channel,
    pub address: Redacted<String>,
    pub lang: Lang,
    pub name: Option<Redacted<String>>,
    pub events: Vec<EventKind>,
    /// `pending`, `bound`, `active` or `expired`.
    pub state: String,
    pub created_ms: i64,
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub(crate) fn encode_events(events: &[EventKind]) -> String {
    events
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn decode_events(s: &str) -> Vec<EventKind> {
    s.split(',').filter_map(EventKind::parse).collect()
}

fn default_events() -> Vec<EventKind> {
    EventKind::ALL
        .into_iter()
        .filter(|k| k.is_guest_default())
        .collect()
}

/// Links a guest. A charger link binds to `current_session` (the session open on that
/// charger now, as the commit thread knows it) or, when none, to the next session that opens
/// within [`PENDING_LINK_TTL`]. An id_tag link binds to every session started with that tag
/// until it is unlinked or swept by retention. The token is 128 random bits, stored only as
/// its SHA-256.
pub fn link_guest(
    conn: &Connection,
    req: &LinkRequest,
    cfg: &NotifyConfig,
    current_session: Option<&str>,
    now_ms: i64,
) -> Result<GuestLink, NotifyError> {
    link_guest_capped(conn, req, cfg, current_session, now_ms, None)
}

/// [`link_guest`], refused ([`LinkError::BayFull`]) when the charger already has `per_bay`
/// guests waiting or bound: counted in the link's own write transaction, so two requests
/// at once cannot both take the last place.
pub fn link_guest_capped(
    conn: &Connection,
    req: &LinkRequest,
    cfg: &NotifyConfig,
    current_session: Option<&str>,
    now_ms: i64,
    per_bay: Option<i64>,
) -> Result<GuestLink, NotifyError> {
    req.validate(cfg)?;
    let token = random_hex(16);
    let guest_id = random_hex(8);
    let events = req.events.clone().unwrap_or_else(default_events);
    let tx = crate::store::write_tx(conn)?;
    if let (Some(cap), Some(charger)) = (per_bay, &req.charger) {
        // Pending links count while they can still bind (the sweep that marks them
        // expired runs only hourly).
        let linked: i64 = tx.query_row(
            "SELECT COUNT(*) FROM guests WHERE site = ?1 AND charger = ?2
             AND address IS NOT NULL
             AND (state = 'bound' OR state = 'pending' AND created_ms >= ?3)",
            params![
                req.site,
                charger,
                now_ms - PENDING_LINK_TTL.as_millis() as i64
            ],
            |r| r.get(0),
        )?;
        if linked >= cap {
            return Err(LinkError::BayFull(cap).into());
        }
    }
    // The open session is read inside the write transaction, from the store itself: a
    // snapshot taken before it (the live view) can be a plug-in or an unplug behind, and a
    // link bound from it could miss its own session or wait for the next driver's.
    // (Without the daemon's `sessions` table — this module on its own — the caller's view
    // is taken.)
    let has_sessions: bool = tx
        .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sessions'")?
        .exists([])?;
    let open: Option<String> = match (&req.charger, has_sessions) {
        (Some(charger), true) => tx
            .query_row(
                "SELECT session_key FROM sessions WHERE site = ?1 AND charger = ?2 AND ended IS NULL
                 ORDER BY started DESC LIMIT 1",
                params![req.site, charger],
                |r| r.get(0),
            )
            .optional()?,
        (Some(_), false) => current_session.map(str::to_string),
        (None, _) => None,
    };
    let current_session = open.as_deref();
    let state = match (&req.charger, current_session) {
        (Some(_), Some(_)) => "bound",
        (Some(_), None) => "pending",
        (None, _) => "active",
    };
    tx.execute(
        "INSERT INTO guests (guest_id, token_hash, site, charger, id_tag, channel, address, name,
                             lang, events, source, state, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'link', ?11, ?12)",
        params![
            guest_id,
            token_hash(&token),
            req.site,
            req.charger,
            req.id_tag,
            req.channel.as_str(),
            req.address.expose(),
            req.name.as_ref().map(|n| n.expose().as_str()),
            req.lang.as_str(),
            encode_events(&events),
            state,
            now_ms,
        ],
    )?;
    if let (Some(_), Some(sk)) = (&req.charger, current_session) {
        bind(&tx, &guest_id, sk, now_ms)?;
    }
    tx.commit()?;
    tracing::info!(guest = %guest_id, site = %req.site, channel = req.channel.as_str(), state, "guest linked");
    Ok(GuestLink {
        token,
        guest_id,
        state: state.to_string(),
    })
}

fn bind(conn: &Connection, guest_id: &str, session_key: &str, now_ms: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO guest_sessions (guest_id, session_key, bound_ms) VALUES (?1, ?2, ?3)",
        params![guest_id, session_key, now_ms],
    )?;
    Ok(())
}

/// The link behind `token`, or `None` (unknown, unlinked or swept).
pub fn get_guest(conn: &Connection, token: &str) -> rusqlite::Result<Option<GuestView>> {
    conn.query_row(
        "SELECT guest_id, site, charger, id_tag, channel, address, lang, name, events, state,
                created_ms
         FROM guests WHERE token_hash = ?1 AND address IS NOT NULL",
        params![token_hash(token)],
        |r| {
            let channel: String = r.get(4)?;
            let lang: String = r.get(6)?;
            let events: String = r.get(8)?;
            Ok(GuestView {
                guest_id: r.get(0)?,
                site: r.get(1)?,
                charger: r.get(2)?,
                id_tag: r.get(3)?,
                channel: Channel::parse(&channel).unwrap_or(Channel::Webhook),
                address: Redacted::new(r.get(5)?),
                lang: Lang::parse(&lang).unwrap_or_default(),
                name: r.get::<_, Option<String>>(7)?.map(Redacted::new),
                events: decode_events(&events),
                state: r.get(9)?,
                created_ms: r.get(10)?,
            })
        },
    )
    .optional()
}

/// Whether `token` names a link (with or without its contact).
pub fn link_exists(conn: &Connection, token: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM guests WHERE token_hash = ?1",
        params![token_hash(token)],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

/// Deletes the link, its contact and its undelivered notifications. `false` if the token
/// is unknown.
pub fn unlink_guest(conn: &Connection, token: &str) -> rusqlite::Result<bool> {
    let tx = crate::store::write_tx(conn)?;
    let gid: Option<String> = tx
        .query_row(
            "SELECT guest_id FROM guests WHERE token_hash = ?1",
            params![token_hash(token)],
            |r| r.get(0),
        )
        .optional()?;
    let Some(gid) = gid else {
        return Ok(false);
    };
    delete_guest(&tx, &gid)?;
    tx.commit()?;
    tracing::info!(guest = %gid, "guest unlinked");
    Ok(true)
}

pub(crate) fn delete_guest(conn: &Connection, guest_id: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM notification_attempts WHERE notification_id IN
           (SELECT id FROM notifications WHERE guest_id = ?1 AND status = 'pending')",
        params![guest_id],
    )?;
    conn.execute(
        "DELETE FROM notifications WHERE guest_id = ?1 AND status = 'pending'",
        params![guest_id],
    )?;
    conn.execute(
        "DELETE FROM guest_sessions WHERE guest_id = ?1",
        params![guest_id],
    )?;
    conn.execute("DELETE FROM guests WHERE guest_id = ?1", params![guest_id])?;
    Ok(())
}

/// Session opened on `site`/`charger`: binds the charger's pending links (made within
/// [`PENDING_LINK_TTL`]), the id_tag links for `id_tag`, and creates links for a directory
/// customer whose card this is. Idempotent (a replayed open binds nothing twice). `now_ms`
/// is wall-clock time, the clock `link_guest` was given.
pub fn on_session_opened(
    conn: &Connection,
    directory: Option<&Directory>,
    site: &str,
    charger: &str,
    session_key: &str,
    id_tag: Option<&str>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    let cutoff = now_ms - PENDING_LINK_TTL.as_millis() as i64;
    let pending: Vec<String> = {
        let mut st = conn.prepare(
            "SELECT guest_id FROM guests
             WHERE state = 'pending' AND site = ?1 AND charger = ?2 AND created_ms >= ?3",
        )?;
        let rows = st.query_map(params![site, charger, cutoff], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for gid in &pending {
        bind(conn, gid, session_key, now_ms)?;
        conn.execute(
            "UPDATE guests SET state = 'bound' WHERE guest_id = ?1",
            params![gid],
        )?;
    }
    match id_tag {
        Some(tag) => on_session_tagged(conn, directory, site, charger, session_key, tag, now_ms),
        None => Ok(()),
    }
}

/// The session's card (`id_tag`) is known: its guests linked by card and the directory's
/// contacts for it are bound to the session. At the session's opening, or later when the
/// card comes after the plug-in (an OCPP StartTransaction seconds after Preparing).
/// Idempotent: a replay binds nobody twice.
pub fn on_session_tagged(
    conn: &Connection,
    directory: Option<&Directory>,
    site: &str,
    charger: &str,
    session_key: &str,
    tag: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO guest_sessions (guest_id, session_key, bound_ms)
         SELECT guest_id, ?1, ?2 FROM guests
         WHERE state = 'active' AND site = ?3 AND id_tag = ?4 AND address IS NOT NULL",
        params![session_key, now_ms, site, tag],
    )?;
    if let Some(customer) = directory.and_then(|d| d.get(tag)) {
        for (i, c) in customer.contacts.iter().enumerate() {
            // One row per (session, contact): a replayed open hits the UNIQUE dedup_key.
            let dedup = format!("dir|{session_key}|{tag}|{i}");
            let gid = random_hex(8);
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO guests (guest_id, token_hash, site, charger, id_tag,
                     channel, address, name, lang, events, source, state, dedup_key, created_ms)
                 VALUES (?1, NULL, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'directory', 'bound', ?10, ?11)",
                params![
                    gid,
                    site,
                    charger,
                    tag,
                    c.channel.as_str(),
                    c.address.expose(),
                    customer.name.as_ref().map(|n| n.expose().as_str()),
                    customer.lang.as_str(),
                    encode_events(customer.events.as_deref().unwrap_or(&default_events())),
                    dedup,
                    now_ms,
                ],
            )?;
            if inserted == 1 {
                bind(conn, &gid, session_key, now_ms)?;
            }
        }
    }
    Ok(())
}

/// Session closed (unplugged): its charger and directory links end. Call it after the
/// session's last events were enqueued; matching is by session key, so even a late call
/// never lets the next session's events reach these guests.
pub fn on_session_closed(
    conn: &Connection,
    session_key: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE guests SET state = 'expired', ended_ms = ?2
         WHERE state = 'bound'
           AND guest_id IN (SELECT guest_id FROM guest_sessions WHERE session_key = ?1)",
        params![session_key, now_ms],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NotifyConfig {
        let mut c = NotifyConfig::new("http://127.0.0.1:8080".parse().unwrap());
        c.ntfy = Some(super::super::NtfyConfig {
            url: "http://127.0.0.1:1".parse().unwrap(),
            token: None,
        });
        c.email = Some(super::super::EmailConfig {
            smtp_url: "smtp://127.0.0.1:25".into(),
            from: "lounge@example.com".into(),
            reply_to: None,
            username: None,
            password: None,
        });
        c.webhook = Some(super::super::WebhookConfig {
            url: "http://127.0.0.1:1/hook".parse().unwrap(),
            secret: None,
        });
        c
    }

    fn req(channel: Channel, address: &str) -> LinkRequest {
        LinkRequest {
            site: "milano".into(),
            charger: Some("hpc-3".into()),
            id_tag: None,
            channel,
            address: Redacted::new(address.into()),
            lang: Lang::It,
            name: None,
            events: None,
        }
    }

    #[test]
    fn addresses_are_checked_per_channel() {
        let c = cfg();
        assert_eq!(req(Channel::Email, "anna@example.com").validate(&c), Ok(()));
        assert_eq!(
            req(Channel::Email, "anna at example").validate(&c),
            Err(LinkError::Address("email"))
        );
        assert_eq!(req(Channel::Ntfy, "bay3-anna_1").validate(&c), Ok(()));
        assert_eq!(
            req(Channel::Ntfy, "no/slash").validate(&c),
            Err(LinkError::Address("ntfy"))
        );
        assert_eq!(
            req(Channel::Ntfy, &"x".repeat(65)).validate(&c),
            Err(LinkError::Address("ntfy"))
        );
        assert_eq!(req(Channel::Webhook, "crm:4711").validate(&c), Ok(()));
        assert_eq!(
            req(Channel::Webhook, "a\nb").validate(&c),
            Err(LinkError::Address("webhook"))
        );
        assert_eq!(req(Channel::Mqtt, "display/lobby").validate(&c), Ok(()));
        assert_eq!(
            req(Channel::Mqtt, "a/#").validate(&c),
            Err(LinkError::Address("mqtt"))
        );
    }

    #[test]
    fn exactly_one_target() {
        let c = cfg();
        let mut r = req(Channel::Email, "anna@example.com");
        r.id_tag = Some("04A2".into());
        assert_eq!(r.validate(&c), Err(LinkError::Target));
        r.charger = None;
        assert_eq!(r.validate(&c), Ok(()));
        assert_eq!(r.validate_public(&c), Err(LinkError::IdTagNotPublic));
        r.id_tag = None;
        assert_eq!(r.validate(&c), Err(LinkError::Target));
    }

    #[test]
    fn channel_must_be_configured_and_public() {
        let mut c = cfg();
        assert_eq!(
            req(Channel::Webhook, "crm:1").validate_public(&c),
            Err(LinkError::ChannelNotPublic("webhook"))
        );
        c.ntfy = None;
        assert_eq!(
            req(Channel::Ntfy, "topic").validate(&c),
            Err(LinkError::ChannelDisabled("ntfy"))
        );
    }

    #[test]
    fn request_json_rejects_unknown_fields_and_defaults_lang() {
        let r: LinkRequest = serde_json::from_str(
            r#"{"site":"milano","charger":"hpc-3","channel":"email","address":"a@b.it"}"#,
        )
        .unwrap();
        assert_eq!(r.lang, Lang::It);
        let e = serde_json::from_str::<LinkRequest>(
            r#"{"site":"milano","charger":"hpc-3","channel":"email","address":"a@b.it","x":1}"#,
        );
        assert!(e.is_err());
        let e = serde_json::from_str::<LinkRequest>(
            r#"{"site":"milano","charger":"hpc-3","channel":"email","address":"a@b.it","lang":"de"}"#,
        );
        assert!(e.is_err());
    }

    #[test]
    fn errors_never_contain_the_address() {
        let r = req(Channel::Email, "secret-person");
        let e = r.validate(&cfg()).unwrap_err();
        assert!(!e.to_string().contains("secret-person"));
        assert!(!format!("{r:?}").contains("secret-person"));
    }
}
