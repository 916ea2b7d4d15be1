//! Configuration: TOML file, then `EVLOUNGE__SECTION__KEY` environment variables, into a
//! raw struct ([`raw`]), then validated into the typed [`Config`]. Validation reports every
//! problem with its key path; secrets live in [`Secret`] and never print.

pub mod raw;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::domain::thresholds::{ChargerKind, ChargerMeta, Thresholds, ZoneMeta};
use crate::util::secret::Secret;
use raw::{Extra, RawConfig, RawThresholds};

/// One problem: the key path (`mqtt.url`, `sites[0].chargers[1].id`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error: {}: {}", self.key, self.reason)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("{} configuration problem(s): {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors(pub Vec<Problem>);

#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub data_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub influx: Option<InfluxSettings>,
    pub notify: NotifySettings,
    pub thresholds: Thresholds,
    pub sites: Vec<SiteConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<crate::ingest::adapters::SourceSpec>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MqttConfig {
    pub url: String,
    #[serde(skip)]
    pub host: String,
    #[serde(skip)]
    pub port: u16,
    #[serde(skip)]
    pub tls: bool,
    pub prefix: String,
    /// `None`: derived at start from the hostname and a suffix kept in `data_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    pub max_payload_bytes: usize,
    pub max_packet_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(with = "hdur")]
    pub keep_alive: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    #[serde(with = "hdur")]
    pub state_min_interval: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staff_token: Option<Secret>,
    pub public_url: String,
    pub guest_channels: Vec<String>,
    /// A reverse proxy on this host sets `X-Forwarded-For`: for a request from loopback,
    /// the rate limits count its last entry as the client.
    pub forwarded_for: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct InfluxSettings {
    pub url: url::Url,
    pub org: String,
    pub bucket: String,
    pub token: Secret,
    pub spool_max_bytes: u64,
    pub batch_lines: usize,
    #[serde(with = "hdur")]
    pub flush_interval: Duration,
    #[serde(with = "hdur")]
    pub timeout: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct WebhookSettings {
    pub url: url::Url,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NtfySettings {
    pub url: url::Url,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EmailSettings {
    pub smtp_url: String,
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NotifySettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ntfy: Option<NtfySettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailSettings>,
    pub mqtt: bool,
    #[serde(with = "hdur")]
    pub retention: Duration,
    pub max_attempts: u32,
    #[serde(with = "hdur")]
    pub max_age: Duration,
    #[serde(with = "hdur")]
    pub attempt_timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub templates_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SiteConfig {
    pub id: String,
    pub name: String,
    pub timezone: String,
    #[serde(skip)]
    pub tz: chrono_tz::Tz,
    pub thresholds: Thresholds,
    pub chargers: Vec<ChargerMeta>,
    pub zones: Vec<ZoneMeta>,
}

impl Config {
    pub fn site(&self, id: &str) -> Option<&SiteConfig> {
        self.sites.iter().find(|s| s.id == id)
    }

    /// Thresholds for a site (the global ones when the site is not configured).
    pub fn site_thresholds(&self, site: &str) -> &Thresholds {
        self.site(site)
            .map(|s| &s.thresholds)
            .unwrap_or(&self.thresholds)
    }

    /// The effective configuration as TOML, secrets as `***`.
    pub fn effective_toml(&self) -> String {
        let v = match serde_json::to_value(self) {
            Ok(v) => strip_nulls(v),
            Err(e) => return format!("# cannot render: {e}\n"),
        };
        toml::to_string_pretty(&v).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        v => v,
    }
}

/// Durations serialised as humantime strings.
mod hdur {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Where `run` looks for a config when `-c` is not given.
pub const DEFAULT_PATHS: &[&str] = &["/etc/evlounge/evlounge.toml"];

/// Loads and validates: the file (if any), then `EVLOUNGE__…` variables from `env`.
pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
    let mut builder = config::Config::builder();
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => DEFAULT_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
    };
    if let Some(p) = &path {
        if !p.is_file() {
            return Err(ConfigErrors(vec![Problem {
                key: "config".into(),
                reason: format!("file {} not found", p.display()),
            }]));
        }
        builder =
            builder.add_source(config::File::from(p.as_path()).format(config::FileFormat::Toml));
    }
    let env_map: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("EVLOUNGE__"))
        .cloned()
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix("EVLOUNGE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env_map)),
    );
    let merged = builder.build().map_err(|e| {
        ConfigErrors(vec![Problem {
            key: "config".into(),
            reason: e.to_string(),
        }])
    })?;
    let tree: Value = merged.try_deserialize().map_err(|e| {
        ConfigErrors(vec![Problem {
            key: "config".into(),
            reason: e.to_string(),
        }])
    })?;
    from_value(tree)
}

/// Validates an already-merged tree (also used by tests).
pub fn from_value(tree: Value) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = match serde_path_to_error::deserialize(tree) {
        Ok(r) => r,
        Err(e) => {
            let key = e.path().to_string();
            return Err(ConfigErrors(vec![Problem {
                key,
                reason: e.into_inner().to_string(),
            }]));
        }
    };
    let mut v = Validator::default();
    let cfg = v.config(raw);
    if v.problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(v.problems))
    }
}

/// Parses a TOML string (tests, tooling).
pub fn from_toml_str(s: &str) -> Result<Config, ConfigErrors> {
    let v: Value = toml::from_str(s).map_err(|e| {
        ConfigErrors(vec![Problem {
            key: "config".into(),
            reason: e.to_string(),
        }])
    })?;
    from_value(v)
}

pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn err(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn extra(&mut self, prefix: &str, extra: &Extra) {
        for k in extra.keys() {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            self.err(key, "unknown key");
        }
    }

    fn duration(&mut self, key: &str, v: &Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) => d,
                Err(e) => {
                    self.err(
                        key,
                        format!("invalid duration {s:?}: {e} (use e.g. \"90s\", \"3m\")"),
                    );
                    default
                }
            },
        }
    }

    fn positive(&mut self, key: &str, v: Option<i64>, default: u64) -> u64 {
        match v {
            None => default,
            Some(n) if n > 0 => n as u64,
            Some(n) => {
                self.err(key, format!("must be positive, got {n}"));
                default
            }
        }
    }

    /// A secret given inline or as `<key>_file` (never both).
    fn secret(
        &mut self,
        key: &str,
        inline: &Option<String>,
        file: &Option<String>,
    ) -> Option<Secret> {
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.err(key, format!("set either {key} or {key}_file, not both"));
                None
            }
            (Some(s), None) => Some(Secret::new(s.clone())),
            (None, Some(f)) => match std::fs::read_to_string(f) {
                Ok(s) => Some(Secret::new(s.trim_end_matches(['\n', '\r']).to_string())),
                Err(e) => {
                    self.err(format!("{key}_file"), format!("cannot read {f}: {e}"));
                    None
                }
            },
            (None, None) => None,
        }
    }

    fn http_url(&mut self, key: &str, s: &str) -> Option<url::Url> {
        match url::Url::parse(s) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
                Some(u)
            }
            Ok(u) => {
                self.err(
                    key,
                    format!(
                        "expected an http:// or https:// URL, got scheme {:?}",
                        u.scheme()
                    ),
                );
                None
            }
            Err(e) => {
                self.err(key, format!("invalid URL {s:?}: {e}"));
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        self.extra("", &raw.extra);
        let mqtt = self.mqtt(&raw.mqtt);
        let http = self.http(&raw.http);
        let log = self.log(&raw.log);
        let data_dir = PathBuf::from(raw.data_dir.clone().unwrap_or_else(|| "./data".into()));
        let influx = self.influx(&raw.influx);
        let notify = self.notify(&raw.notify);
        let thresholds = self.thresholds("thresholds", &raw.thresholds, &Thresholds::default());
        let mut sites = Vec::new();
        let mut site_ids = BTreeSet::new();
        for (i, s) in raw.sites.iter().enumerate() {
            let key = format!("sites[{i}]");
            self.extra(&key, &s.extra);
            let id = match &s.id {
                Some(id) if is_valid_id(id) => id.clone(),
                Some(id) => {
                    self.err(
                        format!("{key}.id"),
                        format!("{id:?} must match [A-Za-z0-9_-]{{1,64}}"),
                    );
                    id.clone()
                }
                None => {
                    self.err(format!("{key}.id"), "missing");
                    String::new()
                }
            };
            if !id.is_empty() && !site_ids.insert(id.clone()) {
                self.err(format!("{key}.id"), format!("duplicate site id {id:?}"));
            }
            let timezone = s.timezone.clone().unwrap_or_else(|| "UTC".into());
            let tz = match timezone.parse::<chrono_tz::Tz>() {
                Ok(tz) => tz,
                Err(_) => {
                    self.err(
                        format!("{key}.timezone"),
                        format!("unknown time zone {timezone:?}"),
                    );
                    chrono_tz::UTC
                }
            };
            let site_th = match &s.thresholds {
                Some(t) => self.thresholds(&format!("{key}.thresholds"), t, &thresholds),
                None => thresholds.clone(),
            };
            let mut chargers = Vec::new();
            let mut charger_ids = BTreeSet::new();
            for (j, c) in s.chargers.iter().enumerate() {
                let ck = format!("{key}.chargers[{j}]");
                self.extra(&ck, &c.extra);
                let cid = match &c.id {
                    Some(cid) if is_valid_id(cid) => cid.clone(),
                    Some(cid) => {
                        self.err(
                            format!("{ck}.id"),
                            format!("{cid:?} must match [A-Za-z0-9_-]{{1,64}}"),
                        );
                        cid.clone()
                    }
                    None => {
                        self.err(format!("{ck}.id"), "missing");
                        String::new()
                    }
                };
                if !cid.is_empty() && !charger_ids.insert(cid.clone()) {
                    self.err(
                        format!("{ck}.id"),
                        format!("duplicate charger id {cid:?} in site {id:?}"),
                    );
                }
                if let Some(kw) = c.max_kw {
                    if !(kw.is_finite() && kw > 0.0 && kw <= 1000.0) {
                        self.err(
                            format!("{ck}.max_kw"),
                            format!("must be in (0, 1000], got {kw}"),
                        );
                    }
                }
                let kind = match c.kind.as_deref() {
                    None => {
                        if c.max_kw.is_some_and(|kw| kw <= 22.0) {
                            ChargerKind::Ac
                        } else {
                            ChargerKind::Dc
                        }
                    }
                    Some("dc") => ChargerKind::Dc,
                    Some("ac") => ChargerKind::Ac,
                    Some(other) => {
                        self.err(
                            format!("{ck}.kind"),
                            format!("must be \"dc\" or \"ac\", got {other:?}"),
                        );
                        ChargerKind::Dc
                    }
                };
                let th = match &c.thresholds {
                    Some(t) => self.thresholds(&format!("{ck}.thresholds"), t, &site_th),
                    None => site_th.clone(),
                };
                chargers.push(ChargerMeta {
                    site: id.clone(),
                    charger: cid.clone(),
                    bay: c.bay.clone().unwrap_or_else(|| cid.clone()),
                    max_kw: c.max_kw,
                    kind,
                    thresholds: th,
                });
            }
            let mut zones = Vec::new();
            let mut zone_ids = BTreeSet::new();
            for (j, z) in s.zones.iter().enumerate() {
                let zk = format!("{key}.zones[{j}]");
                self.extra(&zk, &z.extra);
                let zid = match &z.id {
                    Some(zid) if is_valid_id(zid) => zid.clone(),
                    Some(zid) => {
                        self.err(
                            format!("{zk}.id"),
                            format!("{zid:?} must match [A-Za-z0-9_-]{{1,64}}"),
                        );
                        zid.clone()
                    }
                    None => {
                        self.err(format!("{zk}.id"), "missing");
                        String::new()
                    }
                };
                if !zid.is_empty() && !zone_ids.insert(zid.clone()) {
                    self.err(
                        format!("{zk}.id"),
                        format!("duplicate zone id {zid:?} in site {id:?}"),
                    );
                }
                let capacity = match z.capacity {
                    None => {
                        self.err(format!("{zk}.capacity"), "missing");
                        None
                    }
                    Some(c) if (1..=100_000).contains(&c) => Some(c as u32),
                    Some(c) => {
                        self.err(
                            format!("{zk}.capacity"),
                            format!("must be between 1 and 100000, got {c}"),
                        );
                        None
                    }
                };
                zones.push(ZoneMeta {
                    site: id.clone(),
                    zone: zid.clone(),
                    name: z.name.clone().unwrap_or_else(|| zid.clone()),
                    capacity,
                    thresholds: site_th.clone(),
                });
            }
            sites.push(SiteConfig {
                id: id.clone(),
                name: s.name.clone().unwrap_or_else(|| id.clone()),
                timezone,
                tz,
                thresholds: site_th,
                chargers,
                zones,
            });
        }
        let mut sources = Vec::new();
        for (i, v) in raw.sources.iter().enumerate() {
            let key = format!("sources[{i}]");
            match serde_path_to_error::deserialize::<_, crate::ingest::adapters::SourceSpec>(
                v.clone(),
            ) {
                Ok(spec) => {
                    if let Err(errs) = spec.validate() {
                        for (k, r) in errs {
                            self.err(format!("{key}.{k}"), r);
                        }
                    }
                    sources.push(spec);
                }
                Err(e) => {
                    let path = e.path().to_string();
                    let k = if path == "." {
                        key
                    } else {
                        format!("{key}.{path}")
                    };
                    self.err(k, e.into_inner().to_string());
                }
            }
        }
        let mut http = http;
        if http.public_url.is_empty() {
            http.public_url = format!("http://{}", http.listen);
        }
        Config {
            mqtt,
            http,
            log,
            data_dir,
            influx,
            notify,
            thresholds,
            sites,
            sources,
        }
    }

    fn mqtt(&mut self, m: &raw::RawMqtt) -> MqttConfig {
        self.extra("mqtt", &m.extra);
        let url = m
            .url
            .clone()
            .unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());
        let (host, port, tls) = match parse_mqtt_url(&url) {
            Ok(x) => x,
            Err(reason) => {
                self.err("mqtt.url", reason);
                (String::new(), 1883, false)
            }
        };
        let prefix = m.prefix.clone().unwrap_or_else(|| "evlounge".into());
        if prefix.is_empty()
            || prefix.contains(['+', '#'])
            || prefix.starts_with('/')
            || prefix.ends_with('/')
        {
            self.err("mqtt.prefix", format!("{prefix:?} must be a non-empty topic without wildcards or leading/trailing '/'"));
        }
        if let Some(id) = &m.client_id {
            if id.is_empty() || id.len() > 128 {
                self.err("mqtt.client_id", "must be 1 to 128 characters");
            }
        }
        let max_payload_bytes =
            self.positive("mqtt.max_payload_bytes", m.max_payload_bytes, 262_144) as usize;
        let max_packet_bytes = self.positive(
            "mqtt.max_packet_bytes",
            m.max_packet_bytes,
            16 * 1024 * 1024,
        ) as usize;
        if max_packet_bytes < max_payload_bytes {
            self.err(
                "mqtt.max_packet_bytes",
                "must be at least mqtt.max_payload_bytes",
            );
        }
        let password = self.secret("mqtt.password", &m.password, &m.password_file);
        if password.is_some() && m.username.is_none() {
            self.err("mqtt.username", "required when a password is set");
        }
        let mut file = |k: &str, v: &Option<String>| -> Option<PathBuf> {
            let p = PathBuf::from(v.as_ref()?);
            if !p.is_file() {
                self.err(k, format!("file {} not found", p.display()));
            }
            Some(p)
        };
        let ca_file = file("mqtt.ca_file", &m.ca_file);
        let client_cert_file = file("mqtt.client_cert_file", &m.client_cert_file);
        let client_key_file = file("mqtt.client_key_file", &m.client_key_file);
        if client_cert_file.is_some() != client_key_file.is_some() {
            self.err(
                "mqtt.client_key_file",
                "client_cert_file and client_key_file go together",
            );
        }
        if (ca_file.is_some() || client_cert_file.is_some()) && !tls {
            self.err("mqtt.url", "TLS files are set but the URL is not mqtts://");
        }
        let keep_alive = self.duration("mqtt.keep_alive", &m.keep_alive, Duration::from_secs(30));
        if keep_alive < Duration::from_secs(5) || keep_alive > Duration::from_secs(65_535) {
            self.err("mqtt.keep_alive", "must be between 5s and 65535s");
        }
        if let Some(t) = &m.dead_letter_topic {
            let sample = format!("{t}/invalid_json");
            let loops = crate::ingest::mqtt::subscriptions(&prefix, &[])
                .iter()
                .any(|f| topic_matches(f, &sample));
            if t.is_empty() || t.contains(['+', '#']) || loops {
                self.err(
                    "mqtt.dead_letter_topic",
                    format!("{t:?} must be a topic without wildcards that no inbound subscription matches"),
                );
            }
        }
        let state_min_interval = self.duration(
            "mqtt.state_min_interval",
            &m.state_min_interval,
            Duration::from_secs(1),
        );
        MqttConfig {
            url,
            host,
            port,
            tls,
            prefix,
            client_id: m.client_id.clone(),
            ca_file,
            client_cert_file,
            client_key_file,
            max_payload_bytes,
            max_packet_bytes,
            username: m.username.clone(),
            password,
            keep_alive,
            dead_letter_topic: m.dead_letter_topic.clone(),
            state_min_interval,
        }
    }

    fn http(&mut self, h: &raw::RawHttp) -> HttpConfig {
        self.extra("http", &h.extra);
        let listen_s = h.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = match listen_s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    "http.listen",
                    format!("{listen_s:?} is not an address like 127.0.0.1:8080"),
                );
                SocketAddr::from(([127, 0, 0, 1], 8080))
            }
        };
        let staff_token = self.secret("http.staff_token", &h.staff_token, &h.staff_token_file);
        if staff_token
            .as_ref()
            .is_some_and(|t| t.expose().trim().is_empty())
        {
            // An empty token would let an empty `evlounge_staff` cookie pass as staff.
            self.err(
                "http.staff_token",
                "is empty: set a long random token (e.g. `openssl rand -hex 32`) or leave it unset on loopback",
            );
        } else if staff_token
            .as_ref()
            .is_some_and(|t| t.expose().to_ascii_lowercase().contains("change-me"))
        {
            // The placeholder of deploy/.env.example: public, so it guards nothing.
            self.err(
                "http.staff_token",
                "is still the example's placeholder: set a long random token (e.g. `openssl rand -hex 32`)",
            );
        }
        if staff_token.is_none() && !listen.ip().is_loopback() {
            self.err(
                "http.staff_token",
                "required when http.listen is not a loopback address",
            );
        }
        let public_url = match &h.public_url {
            Some(u) => {
                self.http_url("http.public_url", u);
                u.trim_end_matches('/').to_string()
            }
            None => String::new(),
        };
        let guest_channels = h
            .guest_channels
            .clone()
            .unwrap_or_else(|| vec!["email".into(), "ntfy".into()]);
        for (i, c) in guest_channels.iter().enumerate() {
            if !["email", "ntfy", "webhook", "mqtt"].contains(&c.as_str()) {
                self.err(
                    format!("http.guest_channels[{i}]"),
                    format!("unknown channel {c:?}"),
                );
            }
        }
        HttpConfig {
            listen,
            staff_token,
            public_url,
            guest_channels,
            forwarded_for: h.forwarded_for.unwrap_or(false),
        }
    }

    fn log(&mut self, l: &raw::RawLog) -> LogConfig {
        self.extra("log", &l.extra);
        let format = match l.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(o) => {
                self.err(
                    "log.format",
                    format!("must be \"text\" or \"json\", got {o:?}"),
                );
                LogFormat::Text
            }
        };
        let level = l.level.clone().unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            self.err("log.level", format!("invalid level/filter {level:?}"));
        }
        LogConfig { format, level }
    }

    fn influx(&mut self, i: &raw::RawInflux) -> Option<InfluxSettings> {
        self.extra("influx", &i.extra);
        let token = self.secret("influx.token", &i.token, &i.token_file);
        let spool_max_bytes = self.positive("influx.spool_max_bytes", i.spool_max_bytes, 1 << 30);
        let batch_lines = self.positive("influx.batch_lines", i.batch_lines, 5000) as usize;
        let flush_interval = self.duration(
            "influx.flush_interval",
            &i.flush_interval,
            Duration::from_secs(1),
        );
        let timeout = self.duration("influx.timeout", &i.timeout, Duration::from_secs(10));
        let url_s = i.url.as_ref()?;
        let url = self.http_url("influx.url", url_s);
        let org = i.org.clone().unwrap_or_default();
        if org.is_empty() {
            self.err("influx.org", "required when influx.url is set");
        }
        let bucket = i.bucket.clone().unwrap_or_default();
        if bucket.is_empty() {
            self.err("influx.bucket", "required when influx.url is set");
        }
        let token = match token {
            Some(t) => t,
            None => {
                self.err(
                    "influx.token",
                    "required when influx.url is set (or influx.token_file)",
                );
                Secret::new("")
            }
        };
        Some(InfluxSettings {
            url: url?,
            org,
            bucket,
            token,
            spool_max_bytes,
            batch_lines,
            flush_interval,
            timeout,
        })
    }

    fn notify(&mut self, n: &raw::RawNotify) -> NotifySettings {
        self.extra("notify", &n.extra);
        let webhook = n.webhook.as_ref().and_then(|w| {
            self.extra("notify.webhook", &w.extra);
            let secret = self.secret("notify.webhook.secret", &w.secret, &w.secret_file);
            let url = match &w.url {
                Some(u) => self.http_url("notify.webhook.url", u)?,
                None => {
                    self.err("notify.webhook.url", "missing");
                    return None;
                }
            };
            Some(WebhookSettings { url, secret })
        });
        let ntfy = n.ntfy.as_ref().and_then(|w| {
            self.extra("notify.ntfy", &w.extra);
            let token = self.secret("notify.ntfy.token", &w.token, &w.token_file);
            let url = match &w.url {
                Some(u) => self.http_url("notify.ntfy.url", u)?,
                None => {
                    self.err("notify.ntfy.url", "missing");
                    return None;
                }
            };
            Some(NtfySettings { url, token })
        });
        let email = n.email.as_ref().and_then(|e| {
            self.extra("notify.email", &e.extra);
            let password = self.secret("notify.email.password", &e.password, &e.password_file);
            let smtp_url = match &e.smtp_url {
                Some(u) => u.clone(),
                None => {
                    self.err("notify.email.smtp_url", "missing");
                    return None;
                }
            };
            match url::Url::parse(&smtp_url) {
                Ok(u) if (u.scheme() == "smtp" || u.scheme() == "smtps") && u.host().is_some() => {}
                _ => self.err(
                    "notify.email.smtp_url",
                    format!("{smtp_url:?} must be smtp://host:port, smtp://host:port?tls=starttls or smtps://host:port"),
                ),
            }
            let from = match &e.from {
                Some(f) if f.contains('@') => f.clone(),
                Some(f) => {
                    self.err("notify.email.from", format!("{f:?} is not an e-mail address"));
                    f.clone()
                }
                None => {
                    self.err("notify.email.from", "missing");
                    String::new()
                }
            };
            Some(EmailSettings {
                smtp_url,
                from,
                reply_to: e.reply_to.clone(),
                username: e.username.clone(),
                password,
            })
        });
        let retention = self.duration(
            "notify.retention",
            &n.retention,
            Duration::from_secs(30 * 86400),
        );
        let max_attempts = self.positive("notify.max_attempts", n.max_attempts, 30) as u32;
        let max_age = self.duration("notify.max_age", &n.max_age, Duration::from_secs(3600));
        let attempt_timeout = self.duration(
            "notify.attempt_timeout",
            &n.attempt_timeout,
            Duration::from_secs(10),
        );
        // Long enough to bound, short enough that no ms arithmetic on them can overflow.
        const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 86_400);
        for (key, d) in [
            ("notify.retention", retention),
            ("notify.max_age", max_age),
            ("notify.attempt_timeout", attempt_timeout),
        ] {
            if d < Duration::from_secs(1) || d > TEN_YEARS {
                self.err(key, format!("must be between 1s and 10 years, got {d:?}"));
            }
        }
        if retention < max_age {
            self.err(
                "notify.retention",
                format!(
                    "must be at least notify.max_age ({max_age:?}): a notification may wait \
                     that long for delivery, and the retention sweep would delete some before \
                     their outcome is known"
                ),
            );
        }
        let templates_dir = n.templates_dir.as_ref().map(PathBuf::from);
        if let Some(d) = &templates_dir {
            if !d.is_dir() {
                self.err(
                    "notify.templates_dir",
                    format!("directory {} not found", d.display()),
                );
            }
        }
        let directory_file = n.directory_file.as_ref().map(PathBuf::from);
        if let Some(f) = &directory_file {
            if !f.is_file() {
                self.err(
                    "notify.directory_file",
                    format!("file {} not found", f.display()),
                );
            }
        }
        NotifySettings {
            webhook,
            ntfy,
            email,
            mqtt: n.mqtt.unwrap_or(true),
            retention,
            max_attempts,
            max_age,
            attempt_timeout,
            templates_dir,
            directory_file,
        }
    }

    fn thresholds(&mut self, key: &str, t: &RawThresholds, base: &Thresholds) -> Thresholds {
        self.extra(key, &t.extra);
        let ms = |d: Duration| d.as_millis() as i64;
        let mut d = |name: &str, v: &Option<String>, cur: i64| -> i64 {
            ms(self.duration(
                &format!("{key}.{name}"),
                v,
                Duration::from_millis(cur.max(0) as u64),
            ))
        };
        let suspended_ev_grace_ms = d(
            "suspended_ev_grace",
            &t.suspended_ev_grace,
            base.suspended_ev_grace_ms,
        );
        let low_power_for_ms = d("low_power_for", &t.low_power_for, base.low_power_for_ms);
        let nearly_complete_eta_ms = d(
            "nearly_complete_eta",
            &t.nearly_complete_eta,
            base.nearly_complete_eta_ms,
        );
        let idle_after_ms = d("idle_after", &t.idle_after, base.idle_after_ms);
        let no_power_after_ms = d("no_power_after", &t.no_power_after, base.no_power_after_ms);
        let offline_after_ms = d("offline_after", &t.offline_after, base.offline_after_ms);
        let idle_repeat_ms = match t.idle_repeat.as_deref() {
            None => base.idle_repeat_ms,
            Some("never") => None,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if !d.is_zero() => Some(ms(d)),
                _ => {
                    self.err(
                        format!("{key}.idle_repeat"),
                        format!("{s:?} must be a duration such as \"15m\" or \"never\""),
                    );
                    base.idle_repeat_ms
                }
            },
        };
        let mut kw = |name: &str, v: Option<f64>, cur: f64| -> f64 {
            match v {
                None => cur,
                Some(x) if x.is_finite() && (0.0..=1000.0).contains(&x) => x,
                Some(x) => {
                    self.err(
                        format!("{key}.{name}"),
                        format!("must be between 0 and 1000, got {x}"),
                    );
                    cur
                }
            }
        };
        let low_power_kw_dc = kw("low_power_kw_dc", t.low_power_kw_dc, base.low_power_kw_dc);
        let low_power_kw_ac = kw("low_power_kw_ac", t.low_power_kw_ac, base.low_power_kw_ac);
        let lounge_full_pct = kw("lounge_full_pct", t.lounge_full_pct, base.lounge_full_pct);
        let lounge_free_pct = kw("lounge_free_pct", t.lounge_free_pct, base.lounge_free_pct);
        if lounge_free_pct >= lounge_full_pct {
            self.err(
                format!("{key}.lounge_free_pct"),
                format!("must be below lounge_full_pct ({lounge_full_pct})"),
            );
        }
        if offline_after_ms < 5_000 {
            self.err(format!("{key}.offline_after"), "must be at least 5s");
        }
        Thresholds {
            suspended_ev_grace_ms,
            low_power_kw_dc,
            low_power_kw_ac,
            low_power_for_ms,
            nearly_complete_eta_ms,
            idle_after_ms,
            idle_repeat_ms,
            no_power_after_ms,
            offline_after_ms,
            lounge_full_pct,
            lounge_free_pct,
        }
    }
}

/// Whether an MQTT topic filter (`+`, `#`) matches a topic.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// `mqtt://host[:port]` or `mqtts://host[:port]` → (host, port, tls).
pub fn parse_mqtt_url(s: &str) -> Result<(String, u16, bool), String> {
    let u = url::Url::parse(s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    let tls = match u.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => return Err(format!("scheme {other:?} is not mqtt:// or mqtts://")),
    };
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{s:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = u.port().unwrap_or(if tls { 8883 } else { 1883 });
    Ok((host, port, tls))
}
