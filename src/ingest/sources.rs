//! Configured `[[sources]]`: an adapter on a topic template, as a [`SourceDecoder`].

use super::adapters::{self, Adapter, SourceSpec, TopicTemplate};
use super::decode::DecodeError;
use super::{Source, SourceDecoder};
use crate::domain::input::Input;

pub struct AdapterSource {
    template: TopicTemplate,
    adapter: Box<dyn Adapter>,
}

impl SourceDecoder for AdapterSource {
    fn name(&self) -> &'static str {
        self.adapter.name()
    }

    fn filter(&self) -> String {
        self.template.filter()
    }

    fn decode(
        &mut self,
        topic: &str,
        payload: &[u8],
        recv_ms: i64,
    ) -> Option<Result<Vec<Input>, DecodeError>> {
        let caps = self.template.captures(topic)?;
        Some(
            self.adapter
                .decode(topic, &caps, payload, recv_ms)
                .map_err(convert),
        )
    }
}

fn convert(e: adapters::DecodeError) -> DecodeError {
    match e {
        adapters::DecodeError::InvalidJson => DecodeError::InvalidJson("adapter".into()),
        adapters::DecodeError::InvalidField(f) => DecodeError::InvalidField(f),
        adapters::DecodeError::OutOfRange(f) => DecodeError::OutOfRange(f),
        adapters::DecodeError::UnknownTopic => DecodeError::UnknownTopic,
        adapters::DecodeError::Unsupported => DecodeError::Unsupported("adapter".into()),
    }
}

/// Builds the sources (validated by config already); `evlounge`-format sources are the
/// contract's own decoder and need no adapter.
pub fn build(specs: &[SourceSpec]) -> Vec<Source> {
    specs
        .iter()
        .filter_map(|spec| {
            let template = TopicTemplate::parse(&spec.topic).ok()?;
            let adapter = adapters::build(spec)?;
            Some(Box::new(AdapterSource { template, adapter }) as Source)
        })
        .collect()
}
