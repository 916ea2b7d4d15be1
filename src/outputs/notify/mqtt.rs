//! MQTT channel: JSON on `{prefix}/{site}/notify/{address}` at QoS 1, through an
//! [`MqttPublish`] that returns once the broker has the message (the daemon's is
//! `app::wiring::AckedPublish`).

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::channel::{Deliver, DeliveryError, MqttPublish, Outgoing};

pub(crate) struct Mqtt {
    prefix: String,
    client: Arc<dyn MqttPublish>,
}

impl Mqtt {
    pub(crate) fn new(prefix: String, client: Arc<dyn MqttPublish>) -> Self {
        Mqtt { prefix, client }
    }
}

impl Deliver for Mqtt {
    fn deliver<'a>(&'a self, out: &'a Outgoing) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let topic = format!(
                "{}/{}/notify/{}",
                self.prefix,
                out.event.site,
                out.address.expose()
            );
            let payload =
                serde_json::to_vec(&out.json_body()).map_err(|e| DeliveryError::Permanent {
                    reason: format!("encode: {e}"),
                    status: None,
                })?;
            // The client's error text may name the topic (= the address): not kept.
            self.client
                .publish(topic, payload)
                .await
                .map_err(|_| DeliveryError::Retry {
                    reason: "mqtt publish failed".into(),
                    status: None,
                    retry_after: None,
                })
        })
    }
}
