//! Guest notifications (CONTRACT §6): links between guests and sessions, a durable outbox
//! written in the commit thread's transaction, and a delivery worker with per-channel
//! concurrency, retries and recorded outcomes.
//!
//! Flow: the commit thread calls [`on_session_opened`] / [`enqueue_for_event`] /
//! [`on_session_closed`] inside its transaction, so a notification intent is durable exactly
//! when its event is. [`run_worker`] owns its own connection to the same SQLite file, claims
//! due outbox rows, renders them at send time (templates may be edited by the operator) and
//! records every attempt and the final outcome.
//!
//! Matching is by session: a link is bound to session keys, and an event reaches only the
//! guests bound to the event's session. So the next driver on a charger never gets the
//! previous guest's messages, whatever order the session hooks are called in.

mod channel;
mod config;
mod directory;
mod email;
mod link;
mod mqtt;
mod ntfy;
mod outbox;
mod templates;
mod webhook;
mod worker;

pub use channel::{Deliver, DeliveryError, MqttPublish, Outgoing};
pub use config::{EmailConfig, NotifyConfig, NtfyConfig, WebhookConfig};
pub use directory::{load_directory, Contact, Customer, Directory, DirectoryError};
pub use link::{
    get_guest, link_exists, link_guest, link_guest_capped, on_session_closed, on_session_opened,
    on_session_tagged, unlink_guest, GuestLink, GuestView, LinkError, LinkRequest,
    PENDING_LINK_TTL,
};
pub use outbox::{enqueue_for_event, MIGRATIONS};
pub use templates::{Message, TemplateError, Templates};
pub use webhook::sign;
pub use worker::{retention_sweep, run_worker};

use serde::{Deserialize, Serialize};

/// A delivery channel (CONTRACT §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Webhook,
    Ntfy,
    Email,
    Mqtt,
}

impl Channel {
    pub const ALL: [Channel; 4] = [
        Channel::Webhook,
        Channel::Ntfy,
        Channel::Email,
        Channel::Mqtt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Ntfy => "ntfy",
            Channel::Email => "email",
            Channel::Mqtt => "mqtt",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A guest's language. Italian is the default (CONTRACT §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    It,
    En,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::It, Lang::En];

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::It => "it",
            Lang::En => "en",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// Final or intermediate outcome of a notification, as recorded and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Failed,
    Expired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Expired => "expired",
        }
    }
}

/// Errors at this module's boundary.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid link request: {0}")]
    Invalid(#[from] LinkError),
    #[error("store: {0}")]
    Store(#[from] rusqlite::Error),
}

/// Random lowercase hex of `bytes` random bytes (OS-seeded CSPRNG).
fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}
