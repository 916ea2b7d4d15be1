//! Webhook channel: a signed JSON POST to the operator's receiver.

use std::time::Duration;

use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::channel::{retry_after, Deliver, DeliveryError, Outgoing};
use super::config::WebhookConfig;

/// `sha256=<lowercase hex HMAC-SHA256 of "<timestamp>.<raw body>">` (CONTRACT §6).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length; the error branch cannot happen but is not unwrapped.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub(crate) struct Webhook {
    cfg: WebhookConfig,
    client: reqwest::Client,
}

impl Webhook {
    pub(crate) fn new(cfg: WebhookConfig, timeout: Duration) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would turn the POST into a body-less GET that the other end may
            // answer 200 ("delivered", nothing sent): answered as it is.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Webhook { cfg, client })
    }
}

impl Deliver for Webhook {
    fn deliver<'a>(&'a self, out: &'a Outgoing) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let body =
                serde_json::to_vec(&out.json_body()).map_err(|e| DeliveryError::Permanent {
                    reason: format!("encode: {e}"),
                    status: None,
                })?;
            let ts = chrono::Utc::now().timestamp();
            let mut req = self
                .client
                .post(self.cfg.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-Evlounge-Timestamp", ts.to_string())
                .header("Idempotency-Key", out.idempotency_key())
                .header("X-Evlounge-Event", out.event.kind.as_str())
                .header("X-Evlounge-Event-Id", out.event.event_id.as_str());
            if let Some(secret) = &self.cfg.secret {
                req = req.header(
                    "X-Evlounge-Signature",
                    sign(secret.expose().as_bytes(), ts, &body),
                );
            }
            let resp = req
                .body(body)
                .send()
                .await
                .map_err(|e| DeliveryError::from_reqwest(&e))?;
            DeliveryError::from_http(resp.status().as_u16(), retry_after(resp.headers()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"key",b"1700000000.{\"a\":1}",hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(b"key", 1_700_000_000, br#"{"a":1}"#),
            "sha256=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
    }

    #[test]
    fn signature_depends_on_timestamp_body_and_key() {
        let a = sign(b"key", 1, b"body");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
        assert!(a[7..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_ne!(a, sign(b"key", 2, b"body"));
        assert_ne!(a, sign(b"key", 1, b"body2"));
        assert_ne!(a, sign(b"kez", 1, b"body"));
    }
}
