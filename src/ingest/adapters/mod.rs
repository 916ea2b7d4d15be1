//! Adapters for real chargers and sensors (CONTRACT §3 `[[sources]]`).
//!
//! Each adapter turns one MQTT message of a foreign format into the shared [`Input`], so the
//! domain never knows where a reading came from. Adapters are stateful where the format
//! needs it (OCPP transactions, per-value topics, cumulative counters) and never panic on
//! any input: every problem is a [`DecodeError`] whose [`reason`](DecodeError::reason) feeds
//! `evlounge_decode_errors_total{reason,adapter}`.
//!
//! `format = "evlounge"` is the contract's own JSON, decoded by the daemon itself:
//! [`build`] returns `None` for it and the caller routes those topics to that decoder.

pub mod common;
pub mod evcc;
pub mod everest;
pub mod goe;
pub mod mapping;
pub mod ocpp16j;
pub mod ocpp201;
pub mod openwb;
pub mod people_counter;
pub mod template;
pub mod zigbee2mqtt;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use self::common::{valid_id, Target};
pub use self::mapping::{MappingKind, MappingSpec};
pub use self::template::{render, Captures, TopicTemplate};
use crate::domain::input::{Input, TsMs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Evlounge,
    Ocpp16j,
    Ocpp201,
    Everest,
    Openwb,
    Goe,
    Evcc,
    Zigbee2mqtt,
    PeopleCounter,
    Mapping,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Evlounge => "evlounge",
            Format::Ocpp16j => "ocpp16j",
            Format::Ocpp201 => "ocpp201",
            Format::Everest => "everest",
            Format::Openwb => "openwb",
            Format::Goe => "goe",
            Format::Evcc => "evcc",
            Format::Zigbee2mqtt => "zigbee2mqtt",
            Format::PeopleCounter => "people_counter",
            Format::Mapping => "mapping",
        }
    }

    /// The usual topic of the format, for docs and `config check` hints.
    pub fn default_topic(self) -> &'static str {
        match self {
            Format::Evlounge => "evlounge/#",
            Format::Ocpp16j | Format::Ocpp201 => "ocpp/{cp}/in",
            Format::Everest => "everest_api/{module}/var/#",
            Format::Openwb => "openWB/chargepoint/{id}/get/#",
            Format::Goe => "go-eCharger/{serial}/#",
            Format::Evcc => "evcc/loadpoints/{id}/#",
            Format::Zigbee2mqtt => "zigbee2mqtt/#",
            Format::PeopleCounter => "people/{device}",
            Format::Mapping => "",
        }
    }

    /// Charger id template when `charger` is not set; `None` for sensor formats (and for
    /// `mapping`, where it must be given).
    pub fn default_charger(self) -> Option<&'static str> {
        match self {
            Format::Ocpp16j => Some("{cp}-{connector}"),
            Format::Ocpp201 => Some("{cp}-{evse}"),
            Format::Everest => Some("{module}"),
            Format::Openwb | Format::Evcc => Some("{id}"),
            Format::Goe => Some("{serial}"),
            _ => None,
        }
    }

    /// Names an adapter adds to the topic's captures before rendering the charger id.
    fn extra_names(self) -> &'static [&'static str] {
        match self {
            Format::Ocpp16j => &["connector"],
            Format::Ocpp201 => &["evse", "connector"],
            _ => &[],
        }
    }

    fn is_charger(self, spec: &SourceSpec) -> bool {
        match self {
            Format::Ocpp16j
            | Format::Ocpp201
            | Format::Everest
            | Format::Openwb
            | Format::Goe
            | Format::Evcc => true,
            Format::Mapping => spec
                .mapping
                .as_ref()
                .is_some_and(|m| m.kind == MappingKind::Charger),
            _ => false,
        }
    }

    fn is_lounge(self, spec: &SourceSpec) -> bool {
        match self {
            Format::Zigbee2mqtt | Format::PeopleCounter => true,
            Format::Mapping => spec
                .mapping
                .as_ref()
                .is_some_and(|m| m.kind == MappingKind::Lounge),
            _ => false,
        }
    }
}

/// One `[[sources]]` entry. Topics are taken as written (the `mqtt.prefix` is not added).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub format: Format,
    pub topic: String,
    /// Site id (may be a template) when the topic has no `{site}` level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Charger id template; default per format ([`Format::default_charger`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charger: Option<String>,
    /// Sensor formats: fixed zone (may be a template); else a `{zone}` level or `devices`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Sensor formats: device name → zone id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub devices: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<MappingSpec>,
}

impl SourceSpec {
    /// Every problem, as `(key, reason)` with keys relative to this source (`topic`,
    /// `charger`, `mapping.fields.power_kw`, ...): the caller prefixes `sources[i].`.
    pub fn validate(&self) -> Result<(), Vec<(String, String)>> {
        let mut errs: Vec<(String, String)> = Vec::new();
        let mut err = |k: &str, r: String| errs.push((k.to_string(), r));
        let f = self.format;

        let tpl = match TopicTemplate::parse(&self.topic) {
            Ok(t) => Some(t),
            Err(e) => {
                err("topic", e);
                None
            }
        };
        let captured: Vec<String> = tpl
            .as_ref()
            .map(|t| t.names().into_iter().map(String::from).collect())
            .unwrap_or_default();
        let known =
            |name: &str| captured.iter().any(|c| c == name) || f.extra_names().contains(&name);

        if f == Format::Evlounge {
            return if errs.is_empty() { Ok(()) } else { Err(errs) };
        }

        // The site: a `{site}` level wins; otherwise `site` is required.
        match (&self.site, known("site")) {
            (None, false) => err(
                "site",
                "required: the topic has no {site} level".to_string(),
            ),
            (Some(s), _) => check_id_template(s, &known, "site", &mut err),
            _ => {}
        }

        let charger = f.is_charger(self);
        let lounge = f.is_lounge(self);
        if charger {
            match self.charger.as_deref().or(f.default_charger()) {
                Some(t) => {
                    let key = if self.charger.is_some() {
                        "charger".to_string()
                    } else {
                        format!("charger (default `{t}`)")
                    };
                    check_id_template(t, &known, &key, &mut err);
                }
                None => err("charger", "required for this format".to_string()),
            }
        } else if self.charger.is_some() {
            err("charger", format!("not used by format {}", f.as_str()));
        }
        if lounge {
            if self.zone.is_none() && self.devices.is_empty() && !known("zone") {
                err(
                    "zone",
                    "required: set `zone`, a `devices` map or a {zone} topic level".to_string(),
                );
            }
            if let Some(z) = &self.zone {
                check_id_template(z, &known, "zone", &mut err);
            }
            for (dev, zone) in &self.devices {
                if !valid_id(zone) {
                    err(
                        &format!("devices.{dev}"),
                        format!("zone id `{zone}` must match [A-Za-z0-9_-]{{1,64}}"),
                    );
                }
            }
        } else {
            if self.zone.is_some() {
                err("zone", format!("not used by format {}", f.as_str()));
            }
            if !self.devices.is_empty() {
                err("devices", format!("not used by format {}", f.as_str()));
            }
        }
        match (f, &self.mapping) {
            (Format::Mapping, None) => err("mapping", "required for format mapping".to_string()),
            (Format::Mapping, Some(m)) => {
                for (k, r) in m.validate() {
                    err(&format!("mapping.{k}"), r);
                }
            }
            (_, Some(_)) => err("mapping", format!("not used by format {}", f.as_str())),
            _ => {}
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn target(&self) -> Target {
        Target {
            site: self.site.clone(),
            charger: self
                .charger
                .clone()
                .or_else(|| self.format.default_charger().map(String::from))
                .unwrap_or_default(),
            zone: self.zone.clone(),
            devices: self.devices.clone(),
        }
    }
}

/// A literal id must be a valid id; a template may only use names the topic captures.
fn check_id_template(
    t: &str,
    known: &dyn Fn(&str) -> bool,
    key: &str,
    err: &mut dyn FnMut(&str, String),
) {
    match template::placeholders(t) {
        Err(e) => err(key, e),
        Ok(names) if names.is_empty() => {
            if !valid_id(t) {
                err(key, format!("`{t}` must match [A-Za-z0-9_-]{{1,64}}"));
            }
        }
        Ok(names) => {
            for n in names.iter().filter(|n| !known(n)) {
                err(
                    key,
                    format!("template `{t}` uses {{{n}}}, which the topic does not capture"),
                );
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON")]
    InvalidJson,
    #[error("invalid field `{0}`")]
    InvalidField(String),
    #[error("value out of range: `{0}`")]
    OutOfRange(String),
    #[error("unknown topic")]
    UnknownTopic,
    #[error("unsupported message")]
    Unsupported,
}

impl DecodeError {
    /// The `reason` label of `evlounge_decode_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::InvalidJson => "invalid_json",
            DecodeError::InvalidField(_) => "invalid_field",
            DecodeError::OutOfRange(_) => "out_of_range",
            DecodeError::UnknownTopic => "unknown_topic",
            DecodeError::Unsupported => "unsupported",
        }
    }
}

pub trait Adapter: Send {
    /// The format name, used as the `adapter` metric label.
    fn name(&self) -> &'static str;

    /// Decodes one message. `caps` are the captures of the source's topic template;
    /// `recv_ms` is when the message arrived, used when the payload carries no time.
    /// Messages that carry nothing for the domain (heartbeats, responses) give `Ok(vec![])`.
    fn decode(
        &mut self,
        topic: &str,
        caps: &Captures,
        payload: &[u8],
        recv_ms: TsMs,
    ) -> Result<Vec<Input>, DecodeError>;
}

/// The adapter for a validated source; `None` for `format = "evlounge"`, which the daemon's
/// own decoder handles.
pub fn build(spec: &SourceSpec) -> Option<Box<dyn Adapter>> {
    let target = spec.target();
    Some(match spec.format {
        Format::Evlounge => return None,
        Format::Ocpp16j => Box::new(ocpp16j::Ocpp16j::new(target)),
        Format::Ocpp201 => Box::new(ocpp201::Ocpp201::new(target)),
        Format::Everest => Box::new(everest::Everest::new(target)),
        Format::Openwb => Box::new(openwb::OpenWb::new(target)),
        Format::Goe => Box::new(goe::GoE::new(target)),
        Format::Evcc => Box::new(evcc::Evcc::new(target)),
        Format::Zigbee2mqtt => Box::new(zigbee2mqtt::Zigbee2Mqtt::new(target)),
        Format::PeopleCounter => Box::new(people_counter::PeopleCounter::new(target)),
        Format::Mapping => Box::new(mapping::Mapping::new(
            target,
            spec.mapping.clone().unwrap_or_default(),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_src: &str) -> SourceSpec {
        toml::from_str(toml_src).expect("spec parses")
    }

    #[test]
    fn format_names() {
        for f in [
            Format::Evlounge,
            Format::Ocpp16j,
            Format::Ocpp201,
            Format::Everest,
            Format::Openwb,
            Format::Goe,
            Format::Evcc,
            Format::Zigbee2mqtt,
            Format::PeopleCounter,
            Format::Mapping,
        ] {
            let s = serde_json::to_string(&f).unwrap();
            assert_eq!(s, format!("\"{}\"", f.as_str()));
        }
    }

    #[test]
    fn valid_specs() {
        for src in [
            "format = \"ocpp16j\"\ntopic = \"ocpp/{cp}/in\"\nsite = \"milano\"",
            "format = \"ocpp16j\"\ntopic = \"{site}/ocpp/{cp}\"\ncharger = \"{cp}\"",
            "format = \"everest\"\ntopic = \"everest_api/{module}/var/#\"\nsite = \"milano\"",
            "format = \"zigbee2mqtt\"\ntopic = \"zigbee2mqtt/#\"\nsite = \"m\"\nzone = \"lounge\"",
            "format = \"zigbee2mqtt\"\ntopic = \"zigbee2mqtt/+\"\nsite = \"m\"\n[devices]\npir1 = \"lounge\"",
            "format = \"evlounge\"\ntopic = \"other/#\"",
            "format = \"mapping\"\ntopic = \"x/{dev}\"\nsite = \"m\"\ncharger = \"{dev}\"\n[mapping]\nkind = \"charger\"\nfields = { status = \"/st\", power_kw = \"/p\" }\nscale = { power_kw = 0.001 }\nstatus_map = { \"1\" = \"charging\" }",
        ] {
            let s = spec(src);
            assert_eq!(s.validate(), Ok(()), "{src}");
            assert_eq!(build(&s).is_some(), s.format != Format::Evlounge);
        }
    }

    #[test]
    fn invalid_specs_name_their_keys() {
        let cases: &[(&str, &str)] = &[
            ("format = \"ocpp16j\"\ntopic = \"ocpp/{cp}/in\"", "site"),
            (
                "format = \"ocpp16j\"\ntopic = \"ocpp/+/in\"\nsite = \"m\"",
                "charger (default `{cp}-{connector}`)",
            ),
            (
                "format = \"ocpp16j\"\ntopic = \"ocpp/{cp}/#/x\"\nsite = \"m\"",
                "topic",
            ),
            (
                "format = \"goe\"\ntopic = \"go-eCharger/{serial}/#\"\nsite = \"bad site\"",
                "site",
            ),
            (
                "format = \"goe\"\ntopic = \"go-eCharger/{serial}/#\"\nsite = \"m\"\nzone = \"z\"",
                "zone",
            ),
            (
                "format = \"people_counter\"\ntopic = \"pc/{device}\"\nsite = \"m\"",
                "zone",
            ),
            ("format = \"mapping\"\ntopic = \"x/{d}\"\nsite = \"m\"", "mapping"),
            (
                "format = \"mapping\"\ntopic = \"x/{d}\"\nsite = \"m\"\ncharger = \"{d}\"\n[mapping]\nkind = \"charger\"\nfields = { power_kw = \"/p\" }",
                "mapping.fields.status",
            ),
        ];
        for (src, key) in cases {
            let errs = spec(src).validate().expect_err(src);
            assert!(
                errs.iter().any(|(k, _)| k == key),
                "{src}: expected key {key}, got {errs:?}"
            );
        }
        assert!(
            toml::from_str::<SourceSpec>("format = \"goe\"\ntopic = \"x\"\nbogus = 1").is_err()
        );
        assert!(toml::from_str::<SourceSpec>("format = \"nope\"\ntopic = \"x\"").is_err());
    }

    #[test]
    fn reasons() {
        assert_eq!(DecodeError::InvalidJson.reason(), "invalid_json");
        assert_eq!(
            DecodeError::InvalidField("x".into()).reason(),
            "invalid_field"
        );
        assert_eq!(DecodeError::OutOfRange("x".into()).reason(), "out_of_range");
        assert_eq!(DecodeError::UnknownTopic.reason(), "unknown_topic");
        assert_eq!(DecodeError::Unsupported.reason(), "unsupported");
    }

    fn feed(spec_src: &str, msgs: &[(&str, &str, TsMs)]) -> Vec<TsMs> {
        let s = spec(spec_src);
        let tpl = TopicTemplate::parse(&s.topic).expect("topic");
        let mut a = build(&s).expect("adapter");
        let mut out = Vec::new();
        for (topic, payload, recv) in msgs {
            let caps = tpl.captures(topic).expect("topic matches");
            for i in a
                .decode(topic, &caps, payload.as_bytes(), *recv)
                .expect("decodes")
            {
                if let Input::Telemetry { t, .. } = i {
                    out.push(t.ts);
                }
            }
        }
        out
    }

    /// Readings of one instant used to share a `ts`, and the domain drops all but the
    /// first of those as out of order: a go-e burst lost its status change, an EVerest
    /// `ev_info` (no time of its own) was put at the receive time, days after a replayed
    /// session's clock, hiding every later reading.
    #[test]
    fn readings_of_one_instant_get_increasing_times() {
        let goe = "format = \"goe\"\ntopic = \"go-eCharger/{serial}/#\"\nsite = \"m\"";
        let ts = feed(
            goe,
            &[
                ("go-eCharger/1/car", "2", 5_000),
                ("go-eCharger/1/wh", "100", 5_000),
                ("go-eCharger/1/car", "4", 5_000),
            ],
        );
        assert_eq!(ts, vec![5_000, 5_001, 5_002]);

        let everest = "format = \"everest\"\ntopic = \"everest_api/{module}/var/#\"\nsite = \"m\"";
        let now = 1_900_000_000_000;
        let ts = feed(
            everest,
            &[
                (
                    "everest_api/e/var/session_info",
                    r#"{"state":"Charging","datetime":"2026-11-24T10:00:00Z"}"#,
                    now,
                ),
                (
                    "everest_api/e/var/powermeter",
                    r#"{"power_W":{"total":1000},"timestamp":1795514400}"#,
                    now,
                ),
                ("everest_api/e/var/ev_info", r#"{"soc":50}"#, now),
                // A redelivered session_info keeps its time (the domain drops it).
                (
                    "everest_api/e/var/session_info",
                    r#"{"state":"Charging","datetime":"2026-11-24T10:00:00Z"}"#,
                    now,
                ),
                (
                    "everest_api/e/var/session_info",
                    r#"{"state":"Charging","datetime":"2026-11-24T10:00:01Z"}"#,
                    now,
                ),
            ],
        );
        let t0 = 1_795_514_400_000;
        assert_eq!(ts, vec![t0, t0 + 1, t0 + 2, t0, t0 + 1_000]);

        // OCPP 1.6J with second-resolution timestamps: Preparing, StartTransaction and its
        // CALLRESULT in one second; a redelivered frame (same bytes) keeps its time.
        let ocpp = "format = \"ocpp16j\"\ntopic = \"ocpp/{cp}/in\"\nsite = \"m\"";
        let status = r#"[2,"a","StatusNotification",{"connectorId":1,"status":"Preparing","errorCode":"NoError","timestamp":"2026-11-24T10:00:00Z"}]"#;
        let ts = feed(
            ocpp,
            &[
                ("ocpp/CP/in", status, now),
                (
                    "ocpp/CP/in",
                    r#"[2,"b","StartTransaction",{"connectorId":1,"idTag":"T","meterStart":0,"timestamp":"2026-11-24T10:00:00Z"}]"#,
                    now,
                ),
                (
                    "ocpp/CP/in",
                    r#"[3,"b",{"transactionId":7,"idTagInfo":{"status":"Accepted"}}]"#,
                    now,
                ),
                ("ocpp/CP/in", status, now),
            ],
        );
        assert_eq!(ts, vec![t0, t0 + 1, t0 + 2, t0]);
    }
}
