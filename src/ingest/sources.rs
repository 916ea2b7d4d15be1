//! Configured `[[sources]]`: an adapter on a topic template, as a [`SourceDecoder`].

use super::adapters::{self, Adapter, SourceSpec, TopicTemplate};
use super::decode::{self, DecodeError};
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

/// Adapter output gets the contract decoder's clock-skew rule (CONTRACT §3, decode.rs): a
/// time too far in the future is replaced by the receive time. Returns how many were
/// replaced, for `evlounge_clock_skew_total`.
pub fn replace_future_times(inputs: &mut [Input], recv_ms: i64) -> u64 {
    let mut replaced = 0;
    for input in inputs.iter_mut() {
        let ts = match input {
            Input::Telemetry { t, .. } => &mut t.ts,
            Input::Availability { ts, .. } => ts,
            Input::Lounge { r, .. } => &mut r.ts,
        };
        let (clamped, skewed) = decode::clamp_future(*ts, recv_ms);
        *ts = clamped;
        replaced += u64::from(skewed);
    }
    replaced
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::input::TsMs;

    const NOW: TsMs = 1_795_514_400_000; // 2026-11-24T10:00:00Z

    fn ts_of(inputs: &[Input]) -> Vec<TsMs> {
        inputs
            .iter()
            .map(|i| match i {
                Input::Telemetry { t, .. } => t.ts,
                Input::Lounge { r, .. } => r.ts,
                Input::Availability { ts, .. } => *ts,
            })
            .collect()
    }

    /// A station clock set to 2036 used to move the charger's message clock there, and the
    /// domain then dropped every later (real) reading as out of order.
    #[test]
    fn adapter_times_in_the_future_are_replaced_and_counted() {
        let spec: SourceSpec =
            toml::from_str("format = \"ocpp16j\"\ntopic = \"ocpp/{cp}/in\"\nsite = \"m\"")
                .expect("spec");
        let mut src = build(&[spec]).pop().expect("source");
        let mut decode = |payload: &str, recv: TsMs| {
            let mut out = src
                .decode("ocpp/CP/in", payload.as_bytes(), recv)
                .expect("topic is the source's")
                .expect("decodes");
            let skewed = replace_future_times(&mut out, recv);
            (ts_of(&out), skewed)
        };
        let sn = |uid: &str, st: &str, ts: &str| {
            format!(
                r#"[2,"{uid}","StatusNotification",{{"connectorId":1,"status":"{st}","errorCode":"NoError","timestamp":"{ts}"}}]"#
            )
        };
        assert_eq!(
            decode(&sn("a", "Preparing", "2036-01-01T00:00:00Z"), NOW),
            (vec![NOW], 1)
        );
        // Real times after it: their own, and siblings of one second still spread apart.
        assert_eq!(
            decode(&sn("b", "Charging", "2026-11-24T10:00:01Z"), NOW + 1_000),
            (vec![NOW + 1_000], 0)
        );
        assert_eq!(
            decode(&sn("c", "SuspendedEV", "2026-11-24T10:00:01Z"), NOW + 1_000),
            (vec![NOW + 1_001], 0)
        );
        // A frame without a time sits at the station's latest real time, not in 2036.
        let no_ts = r#"[2,"d","StatusNotification",{"connectorId":1,"status":"Charging","errorCode":"NoError"}]"#;
        assert_eq!(decode(no_ts, NOW + 5_000), (vec![NOW + 1_002], 0));
    }
}
