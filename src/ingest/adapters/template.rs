//! Topic templates: `ocpp/{cp}/in`, `everest_api/{module}/var/#`, `zigbee2mqtt/+`.
//!
//! A `{name}` level matches one topic level like `+` and captures it; `#` (last level only)
//! matches the rest and is kept as the capture's tail.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Literal(String),
    Capture(String),
    Plus,
    Hash,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    levels: Vec<Level>,
}

/// What a topic matched: the named levels, plus the levels matched by a trailing `#`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captures {
    vars: BTreeMap<String, String>,
    tail: Option<String>,
}

impl Captures {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The levels matched by a trailing `#`, joined by `/` (may be empty); `None` without `#`.
    pub fn tail(&self) -> Option<&str> {
        self.tail.as_deref()
    }

    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }

    pub fn set_tail(&mut self, tail: impl Into<String>) {
        self.tail = Some(tail.into());
    }

    /// A copy with one more variable, e.g. the OCPP connector id for the charger template.
    pub fn with(&self, name: &str, value: impl Into<String>) -> Self {
        let mut c = self.clone();
        c.set(name, value);
        c
    }

    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// A stable key for per-device state: the named captures, in name order.
    pub(crate) fn state_key(&self) -> String {
        let mut k = String::new();
        for (n, v) in &self.vars {
            k.push_str(n);
            k.push('=');
            k.push_str(v);
            k.push('\u{1f}');
        }
        k
    }

    /// [`Captures::state_key`] for one device of the topic (adapters keep state per device).
    pub(crate) fn device_key(&self, device: &str) -> String {
        format!("{}\u{1f}{}", self.state_key(), device)
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl TopicTemplate {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty topic".into());
        }
        if s.len() > 1024 {
            return Err("topic longer than 1024 bytes".into());
        }
        let parts: Vec<&str> = s.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in parts.iter().enumerate() {
            let level = if *p == "#" {
                if i + 1 != parts.len() {
                    return Err("`#` is allowed only as the last level".into());
                }
                Level::Hash
            } else if *p == "+" {
                Level::Plus
            } else if let Some(name) = p.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                if !is_name(name) {
                    return Err(format!("bad capture name `{{{name}}}`: use [A-Za-z0-9_]"));
                }
                if !seen.insert(name.to_string()) {
                    return Err(format!("capture `{{{name}}}` appears twice"));
                }
                Level::Capture(name.to_string())
            } else {
                if p.contains(['+', '#', '{', '}', '\0']) {
                    return Err(format!(
                        "level `{p}`: wildcards and captures must fill a whole level"
                    ));
                }
                Level::Literal((*p).to_string())
            };
            levels.push(level);
        }
        Ok(Self { levels })
    }

    /// The MQTT subscription filter: every `{name}` becomes `+`.
    pub fn filter(&self) -> String {
        let parts: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Capture(_) | Level::Plus => "+",
                Level::Hash => "#",
            })
            .collect();
        parts.join("/")
    }

    /// Names captured by this template, in order.
    pub fn names(&self) -> Vec<&str> {
        self.levels
            .iter()
            .filter_map(|l| match l {
                Level::Capture(n) => Some(n.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn has_hash(&self) -> bool {
        matches!(self.levels.last(), Some(Level::Hash))
    }

    /// Matches a concrete topic, MQTT rules included: `#` also matches the parent level, and
    /// a wildcard in the first level does not match `$SYS`-style topics.
    pub fn captures(&self, topic: &str) -> Option<Captures> {
        let parts: Vec<&str> = topic.split('/').collect();
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Literal(_))) {
            return None;
        }
        let mut caps = Captures::new();
        for (i, level) in self.levels.iter().enumerate() {
            match level {
                Level::Hash => {
                    let rest = if i < parts.len() {
                        parts[i..].join("/")
                    } else if i == parts.len() {
                        String::new()
                    } else {
                        return None;
                    };
                    caps.tail = Some(rest);
                    return Some(caps);
                }
                _ => {
                    let part = parts.get(i)?;
                    match level {
                        Level::Literal(s) if s == part => {}
                        Level::Literal(_) => return None,
                        Level::Plus => {}
                        Level::Capture(n) => {
                            caps.vars.insert(n.clone(), (*part).to_string());
                        }
                        Level::Hash => return None,
                    }
                }
            }
        }
        (parts.len() == self.levels.len()).then_some(caps)
    }
}

/// Placeholder names used by an id template such as `{cp}-{connector}`.
pub fn placeholders(template: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{template}`"))?;
        let name = &after[..close];
        if !is_name(name) {
            return Err(format!("bad placeholder `{{{name}}}` in `{template}`"));
        }
        out.push(name.to_string());
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("stray `}}` in `{template}`"));
    }
    Ok(out)
}

/// Fills `{name}` placeholders from the captures; a missing name renders empty (callers
/// validate the resulting id, and `SourceSpec::validate` rejects such templates up front).
pub fn render(template: &str, caps: &Captures) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                out.push_str(caps.get(&after[..close]).unwrap_or(""));
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_and_captures() {
        let t = TopicTemplate::parse("ocpp/{cp}/in").unwrap();
        assert_eq!(t.filter(), "ocpp/+/in");
        let c = t.captures("ocpp/CP-7/in").unwrap();
        assert_eq!(c.get("cp"), Some("CP-7"));
        assert_eq!(c.tail(), None);
        assert!(t.captures("ocpp/CP-7/out").is_none());
        assert!(t.captures("ocpp/CP-7/in/x").is_none());
        assert!(t.captures("ocpp/CP-7").is_none());
    }

    #[test]
    fn hash_tail() {
        let t = TopicTemplate::parse("everest_api/{module}/var/#").unwrap();
        assert_eq!(t.filter(), "everest_api/+/var/#");
        let c = t.captures("everest_api/evse1/var/session_info").unwrap();
        assert_eq!(c.get("module"), Some("evse1"));
        assert_eq!(c.tail(), Some("session_info"));
        let c = t.captures("everest_api/evse1/var/a/b").unwrap();
        assert_eq!(c.tail(), Some("a/b"));
        // MQTT: `a/#` also matches `a`.
        assert_eq!(
            t.captures("everest_api/evse1/var").unwrap().tail(),
            Some("")
        );
        assert!(t.captures("everest_api/evse1").is_none());
    }

    #[test]
    fn plus_and_dollar() {
        let t = TopicTemplate::parse("+/{x}").unwrap();
        assert_eq!(t.filter(), "+/+");
        assert!(t.captures("$SYS/x").is_none());
        assert_eq!(t.captures("a/b").unwrap().get("x"), Some("b"));
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "",
            "a/#/b",
            "a/{x}/{x}",
            "a/b+",
            "a/{x-y}",
            "a/{}",
            "a/x{y}",
        ] {
            assert!(TopicTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renders() {
        let c = Captures::new().with("cp", "CP1").with("connector", "2");
        assert_eq!(render("{cp}-{connector}", &c), "CP1-2");
        assert_eq!(render("{cp}", &c), "CP1");
        assert_eq!(render("fixed", &c), "fixed");
        assert_eq!(render("{missing}x", &c), "x");
        assert_eq!(render("{unclosed", &c), "{unclosed");
        assert_eq!(
            placeholders("{cp}-{connector}").unwrap(),
            vec!["cp".to_string(), "connector".to_string()]
        );
        assert!(placeholders("{cp").is_err());
        assert!(placeholders("cp}").is_err());
    }
}
