//! ntfy channel: POST the message to `{ntfy.url}/{topic}` with ntfy's headers.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::channel::{retry_after, Deliver, DeliveryError, Outgoing};
use super::config::NtfyConfig;
use crate::domain::event::EventKind;

pub(crate) struct Ntfy {
    cfg: NtfyConfig,
    client: reqwest::Client,
}

impl Ntfy {
    pub(crate) fn new(cfg: NtfyConfig, timeout: Duration) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would turn the POST into a body-less GET (which ntfy answers
            // 200 with its web app: "delivered", nothing sent): answered as it is.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Ntfy { cfg, client })
    }

    fn topic_url(&self, topic: &str) -> String {
        format!("{}/{topic}", self.cfg.url.as_str().trim_end_matches('/'))
    }
}

fn priority(kind: EventKind) -> &'static str {
    match kind {
        EventKind::ChargingComplete | EventKind::IdleBlocking => "high",
        _ => "default",
    }
}

fn tags(kind: EventKind) -> &'static str {
    match kind {
        EventKind::ChargingComplete => "white_check_mark,electric_plug",
        EventKind::NearlyComplete => "hourglass_flowing_sand,electric_plug",
        EventKind::IdleBlocking => "warning,car",
        EventKind::ChargingStopped => "octagonal_sign,electric_plug",
        EventKind::ChargerFault | EventKind::ChargingNotStarted => "warning,electric_plug",
        _ => "electric_plug",
    }
}

/// HTTP header values are ASCII in practice; ntfy decodes RFC 2047 encoded-words, which
/// keeps Italian titles ("è carica") intact.
pub(crate) fn header_text(s: &str) -> String {
    if s.is_ascii() && !s.chars().any(|c| c.is_ascii_control()) {
        return s.to_string();
    }
    format!("=?UTF-8?B?{}?=", base64(s.as_bytes()))
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// `id` when ntfy takes it as a sequence id (1 to 64 of `[A-Za-z0-9_-]`: an event id and a
/// guest id, 16 hex digits each, always are), else a hash of it that is: a sequence id ntfy
/// refused would fail the message (400).
fn sequence_id(id: &str) -> String {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if ok {
        return id.to_string();
    }
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(id.as_bytes())[..16])
}

impl Deliver for Ntfy {
    fn deliver<'a>(&'a self, out: &'a Outgoing) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let kind = out.event.kind;
            let mut req = self
                .client
                .post(self.topic_url(out.address.expose()))
                .header("Title", header_text(&out.message.subject))
                .header("Priority", priority(kind))
                .header("Tags", tags(kind))
                .header("Click", out.bay_url.as_str())
                .header("X-Evlounge-Event", kind.as_str())
                .header("X-Evlounge-Event-Id", out.event.event_id.as_str())
                .header("Idempotency-Key", out.idempotency_key())
                // ntfy ignores Idempotency-Key; from 2.16 on, a message with the sequence id
                // of an earlier one replaces it on the phone instead of ringing again, so a
                // retry after an answer that was lost (a timeout) shows once. Older servers
                // ignore the header.
                .header(
                    "X-Sequence-ID",
                    sequence_id(&format!("{}-{}", out.event.event_id, out.guest_id)),
                );
            if let Some(t) = &self.cfg.token {
                req = req.bearer_auth(t.expose());
            }
            let resp = req
                .body(out.message.text.clone())
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
    fn base64_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn non_ascii_titles_are_encoded_words() {
        assert_eq!(header_text("Bay 3: done"), "Bay 3: done");
        assert_eq!(
            sequence_id("0f6c1c1e9a7b4d2e-a1b2c3d4e5f60718"),
            "0f6c1c1e9a7b4d2e-a1b2c3d4e5f60718"
        );
        for odd in ["a:b", "", &"x".repeat(65)] {
            let s = sequence_id(odd);
            assert_eq!(s.len(), 32, "{odd:?}");
            assert!(s.bytes().all(|c| c.is_ascii_hexdigit()));
        }
        assert_eq!(header_text("è"), "=?UTF-8?B?w6g=?=");
    }

    #[test]
    fn priorities() {
        assert_eq!(priority(EventKind::ChargingComplete), "high");
        assert_eq!(priority(EventKind::IdleBlocking), "high");
        assert_eq!(priority(EventKind::NearlyComplete), "default");
    }
}
