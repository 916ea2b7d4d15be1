//! One trait for every delivery channel; "should we retry?" is decided here, "how long to
//! wait" in the worker.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::templates::Message;
use super::Lang;
use crate::domain::event::Event;
use crate::util::secret::Redacted;

/// Publishes one notification at QoS 1 and returns once the broker has acknowledged it (an
/// error otherwise, and the worker retries). The daemon passes `app::wiring::AckedPublish`.
pub trait MqttPublish: Send + Sync {
    fn publish(&self, topic: String, payload: Vec<u8>) -> BoxFuture<'_, Result<(), String>>;
}

/// One notification ready to send.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub event: Event,
    pub guest_id: String,
    pub address: Redacted<String>,
    pub lang: Lang,
    pub message: Message,
    pub bay_url: String,
}

impl Outgoing {
    /// `Idempotency-Key`: stable across retries and restarts, names no secret.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.event.event_id, self.guest_id)
    }

    /// The JSON body shared by the webhook and MQTT channels.
    pub fn json_body(&self) -> serde_json::Value {
        let e = &self.event;
        serde_json::json!({
            "kind": e.kind.as_str(),
            "event_id": e.event_id,
            "site": e.site,
            "charger": e.charger,
            "bay": e.bay,
            "guest": self.guest_id,
            "address": self.address.expose(),
            "lang": self.lang.as_str(),
            "title": self.message.subject,
            "message": self.message.text,
            "bay_url": self.bay_url,
            "event": e.to_json(),
        })
    }
}

/// Why an attempt did not deliver. Reasons are built from status codes and error kinds,
/// scrubbed of the address before they are stored or logged.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryError {
    /// Try again later (timeouts, connection errors, 408/429/5xx), no sooner than
    /// `retry_after` when the receiver said so.
    Retry {
        reason: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// Do not try again (other 4xx, a rejected address, a channel not configured).
    Permanent { reason: String, status: Option<u16> },
}

impl DeliveryError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, DeliveryError::Retry { .. })
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Retry { status, .. } | DeliveryError::Permanent { status, .. } => {
                *status
            }
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            DeliveryError::Retry { reason, .. } | DeliveryError::Permanent { reason, .. } => reason,
        }
    }

    /// Classifies an HTTP answer (webhook, ntfy).
    pub fn from_http(status: u16, retry_after: Option<Duration>) -> Result<(), DeliveryError> {
        match status {
            200..=299 => Ok(()),
            408 | 429 | 500..=599 => Err(DeliveryError::Retry {
                reason: format!("http {status}"),
                status: Some(status),
                retry_after,
            }),
            // Redirects are not followed: the configured URL is wrong (http for https, a
            // moved server). Retried until max age, so fixing the URL still delivers.
            300..=399 => Err(DeliveryError::Retry {
                reason: format!("http {status}: redirected; check the configured url"),
                status: Some(status),
                retry_after: None,
            }),
            // The operator's receiver refusing our credentials or path: the same for every
            // guest, and fixed in the configuration; retried until max age likewise.
            401 | 403 | 404 => Err(DeliveryError::Retry {
                reason: format!("http {status}: check the configured url and token"),
                status: Some(status),
                retry_after: None,
            }),
            _ => Err(DeliveryError::Permanent {
                reason: format!("http {status}"),
                status: Some(status),
            }),
        }
    }

    /// Transport errors from reqwest: all retriable (connect, timeout, reset).
    pub fn from_reqwest(e: &reqwest::Error) -> DeliveryError {
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect error"
        } else if e.is_body() || e.is_request() {
            "request error"
        } else {
            "transport error"
        };
        // reqwest's Display includes the URL (the ntfy topic = the guest's address): only
        // the kind is kept.
        DeliveryError::Retry {
            reason: kind.to_string(),
            status: None,
            retry_after: None,
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for these receivers and ignored),
/// at most a day: the row expires at max age anyway, and a receiver's huge value must not
/// overflow the due time.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(86_400)))
}

/// A delivery channel.
pub trait Deliver: Send + Sync {
    fn deliver<'a>(&'a self, out: &'a Outgoing) -> BoxFuture<'a, Result<(), DeliveryError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_and_capped_at_a_day() {
        let h = |v: &str| {
            let mut m = reqwest::header::HeaderMap::new();
            m.insert(reqwest::header::RETRY_AFTER, v.parse().expect("header"));
            retry_after(&m)
        };
        assert_eq!(h("7"), Some(Duration::from_secs(7)));
        assert_eq!(h("9223372036854775807"), Some(Duration::from_secs(86_400)));
        assert_eq!(h("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn http_status_classes() {
        assert_eq!(DeliveryError::from_http(204, None), Ok(()));
        // 3xx, 401, 403, 404: redirects are not followed, and a wrong URL or token is
        // retried until max age (an operator fixes it).
        for s in [
            301, 302, 307, 308, 401, 403, 404, 408, 429, 500, 502, 503, 504,
        ] {
            assert!(
                DeliveryError::from_http(s, None)
                    .unwrap_err()
                    .is_retriable(),
                "{s}"
            );
        }
        for s in [400, 405, 410, 413, 422] {
            assert!(
                !DeliveryError::from_http(s, None)
                    .unwrap_err()
                    .is_retriable(),
                "{s}"
            );
        }
    }
}
