//! MQTT in: the event loop, routing, and decoders turning payloads into domain inputs.

pub mod adapters;
pub mod decode;
pub mod mqtt;
pub mod sources;

use crate::domain::input::Input;
use decode::DecodeError;

/// An inbound source other than the contract's own topics (an adapter on a topic filter).
pub trait SourceDecoder: Send {
    /// The adapter's name, the `adapter` label in `/metrics`.
    fn name(&self) -> &'static str;
    /// The MQTT subscription filter.
    fn filter(&self) -> String;
    /// `None` when the topic is not this source's; otherwise the decoded inputs.
    fn decode(
        &mut self,
        topic: &str,
        payload: &[u8],
        recv_ms: i64,
    ) -> Option<Result<Vec<Input>, DecodeError>>;
}

pub type Source = Box<dyn SourceDecoder>;
