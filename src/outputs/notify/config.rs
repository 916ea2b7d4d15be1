//! Typed notification config; the lead builds it from the TOML `[notify]` section.

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::Channel;
use crate::util::secret::Secret;

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The operator's receiver; never guest-supplied.
    pub url: Url,
    /// HMAC-SHA256 key for `X-Evlounge-Signature`; unsigned when absent.
    pub secret: Option<Secret>,
}

#[derive(Clone, Debug)]
pub struct NtfyConfig {
    /// ntfy server base URL; the guest's topic is appended.
    pub url: Url,
    pub token: Option<Secret>,
}

#[derive(Clone, Debug)]
pub struct EmailConfig {
    /// `smtp://host:port` (plain), `smtp://host:port?tls=starttls`, `smtps://host[:port]`.
    pub smtp_url: String,
    pub from: String,
    pub reply_to: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

#[derive(Clone, Debug)]
pub struct NotifyConfig {
    pub webhook: Option<WebhookConfig>,
    pub ntfy: Option<NtfyConfig>,
    pub email: Option<EmailConfig>,
    pub mqtt_enabled: bool,
    /// MQTT channel topics are `{mqtt_prefix}/{site}/notify/{address}`.
    pub mqtt_prefix: String,
    /// Guest contacts (and the outbox rows of their notifications) are deleted after this.
    pub retention: Duration,
    pub max_attempts: u32,
    /// A notification not delivered within this of being enqueued is recorded `expired`.
    pub max_age: Duration,
    pub attempt_timeout: Duration,
    /// First retry delay; doubles per attempt, full jitter, capped at `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Base for bay page links: `{public_url}/bay/{site}/{charger}`.
    pub public_url: Url,
    /// Operator-edited templates `{dir}/{lang}/{kind}.txt` override the built-in ones.
    pub templates_dir: Option<PathBuf>,
    /// Customer directory (TOML or CSV), see [`super::load_directory`].
    pub directory_file: Option<PathBuf>,
    /// Channels the public (bay page, no staff token) may link.
    pub guest_channels: Vec<Channel>,
    pub per_channel_concurrency: usize,
}

impl NotifyConfig {
    /// Defaults from CONTRACT §2/§6, no channel configured but MQTT.
    pub fn new(public_url: Url) -> Self {
        NotifyConfig {
            webhook: None,
            ntfy: None,
            email: None,
            mqtt_enabled: true,
            mqtt_prefix: "evlounge".to_string(),
            retention: Duration::from_secs(30 * 24 * 3600),
            // At the built-in backoff (5 s doubling to 10 min, full jitter) 30 attempts
            // take about 2 h on average: an outage's retries end at max age (1 h), not
            // at the count (10 ended them after about a quarter of an hour).
            max_attempts: 30,
            max_age: Duration::from_secs(3600),
            attempt_timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(600),
            public_url,
            templates_dir: None,
            directory_file: None,
            guest_channels: vec![Channel::Email, Channel::Ntfy],
            per_channel_concurrency: 8,
        }
    }

    pub fn channel_enabled(&self, ch: Channel) -> bool {
        match ch {
            Channel::Webhook => self.webhook.is_some(),
            Channel::Ntfy => self.ntfy.is_some(),
            Channel::Email => self.email.is_some(),
            Channel::Mqtt => self.mqtt_enabled,
        }
    }

    /// The guest page of one bay, linked from every message.
    pub fn bay_url(&self, site: &str, charger: &str) -> String {
        let base = self.public_url.as_str().trim_end_matches('/');
        format!("{base}/bay/{site}/{charger}")
    }
}
