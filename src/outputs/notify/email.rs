//! Email channel (SMTP via lettre): text + HTML alternative, event headers.

use std::time::Duration;

use futures_util::future::BoxFuture;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::channel::{Deliver, DeliveryError, Outgoing};
use super::config::EmailConfig;

#[derive(Debug, thiserror::Error)]
pub enum EmailConfigError {
    #[error("notify.email.smtp_url: {0}")]
    Url(String),
    #[error("notify.email.from: not a valid mailbox")]
    From,
    #[error("notify.email.reply_to: not a valid mailbox")]
    ReplyTo,
}

pub(crate) struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
}

impl Email {
    pub(crate) fn new(cfg: &EmailConfig, timeout: Duration) -> Result<Self, EmailConfigError> {
        let url =
            url::Url::parse(&cfg.smtp_url).map_err(|e| EmailConfigError::Url(e.to_string()))?;
        let host = url
            .host_str()
            .ok_or_else(|| EmailConfigError::Url("missing host".into()))?
            .to_string();
        let tls = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.to_ascii_lowercase());
        let builder = match (url.scheme(), tls.as_deref()) {
            ("smtps", _) => AsyncSmtpTransport::<Tokio1Executor>::relay(&host)
                .map_err(|e| EmailConfigError::Url(e.to_string()))?
                .port(url.port().unwrap_or(465)),
            ("smtp", Some("starttls" | "required")) => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
                    .map_err(|e| EmailConfigError::Url(e.to_string()))?
                    .port(url.port().unwrap_or(587))
            }
            ("smtp", None | Some("none" | "plain")) => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
                    .port(url.port().unwrap_or(25))
            }
            ("smtp", Some(other)) => {
                return Err(EmailConfigError::Url(format!(
                    "tls={other}: use tls=starttls, or smtps:// for implicit TLS"
                )))
            }
            (other, _) => {
                return Err(EmailConfigError::Url(format!(
                    "scheme {other}: use smtp:// or smtps://"
                )))
            }
        };
        let user = cfg
            .username
            .clone()
            .or_else(|| Some(url.username().to_string()).filter(|u| !u.is_empty()));
        let pass = cfg
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .or_else(|| url.password().map(str::to_string));
        let builder = match (user, pass) {
            (Some(u), Some(p)) => builder.credentials(Credentials::new(u, p)),
            _ => builder,
        };
        let from = cfg.from.parse().map_err(|_| EmailConfigError::From)?;
        let reply_to = match &cfg.reply_to {
            Some(r) => Some(r.parse().map_err(|_| EmailConfigError::ReplyTo)?),
            None => None,
        };
        Ok(Email {
            transport: builder.timeout(Some(timeout)).build(),
            from,
            reply_to,
        })
    }

    fn build(&self, out: &Outgoing) -> Result<Message, DeliveryError> {
        let permanent = |reason: &str| DeliveryError::Permanent {
            reason: reason.to_string(),
            status: None,
        };
        let to: Mailbox = out
            .address
            .expose()
            .parse()
            .map_err(|_| permanent("invalid recipient address"))?;
        let header = |name: &str, value: &str| -> Result<HeaderValue, DeliveryError> {
            let n = HeaderName::new_from_ascii(name.to_string())
                .map_err(|_| permanent("invalid header name"))?;
            Ok(HeaderValue::new(n, value.to_string()))
        };
        let mut b = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(out.message.subject.clone())
            // Stable per (event, guest): a re-sent mail after a lost acknowledgement threads
            // as the same message in the guest's client.
            .message_id(Some(format!(
                "<{}.{}@evlounge>",
                out.event.event_id, out.guest_id
            )))
            .date_now()
            .raw_header(header("X-Evlounge-Event", out.event.kind.as_str())?)
            .raw_header(header("X-Evlounge-Event-Id", &out.event.event_id)?);
        if let Some(r) = &self.reply_to {
            b = b.reply_to(r.clone());
        }
        b.multipart(MultiPart::alternative_plain_html(
            out.message.text.clone(),
            out.message.html.clone(),
        ))
        .map_err(|_| permanent("could not build message"))
    }
}

/// Permanent SMTP replies that say nothing about the guest: the server refusing our own
/// authentication (530, 534, 535, 538). The same for every mail and fixed in the
/// configuration, so retried until max age like a transient failure.
fn operator_side(status: Option<u16>) -> bool {
    matches!(status, Some(530 | 534 | 535 | 538))
}

/// Whether a failed send is retried: transient ones (4xx, connection, timeout), and the
/// permanent ones that are the operator's to fix.
fn retried(permanent: bool, status: Option<u16>) -> bool {
    !permanent || operator_side(status)
}

impl Deliver for Email {
    fn deliver<'a>(&'a self, out: &'a Outgoing) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let msg = self.build(out)?;
            match self.transport.send(msg).await {
                Ok(_) => Ok(()),
                // Server texts often echo the recipient: only the code is kept.
                Err(e) => {
                    let code = e.status().map(|c| c.to_string());
                    let status = code.as_deref().and_then(|c| c.parse().ok());
                    let reason = match &code {
                        Some(c) => format!("smtp {c}"),
                        None if e.is_timeout() => "smtp timeout".into(),
                        None if e.is_tls() => "smtp tls error".into(),
                        None => "smtp connection error".into(),
                    };
                    if !retried(e.is_permanent(), status) {
                        Err(DeliveryError::Permanent { reason, status })
                    } else {
                        Err(DeliveryError::Retry {
                            reason,
                            status,
                            retry_after: None,
                        })
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::retried;

    #[test]
    fn authentication_refusals_are_retried_and_mailbox_refusals_are_not() {
        for code in [530, 534, 535, 538] {
            assert!(retried(true, Some(code)), "{code}");
        }
        for code in [550, 551, 552, 553, 554] {
            assert!(!retried(true, Some(code)), "{code}");
        }
        for code in [Some(421), Some(450), Some(452), None] {
            assert!(retried(false, code), "{code:?}");
        }
    }
}
