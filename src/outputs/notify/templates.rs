//! Message templates: `templates/notify/{lang}/{kind}.txt`, compiled in, overridable by files
//! in `templates_dir`.
//!
//! A template's first line is `Subject: ...`; the rest is the body. `{name}` is a
//! placeholder; `[[ ... ]]` is an optional segment, dropped when a placeholder in it is
//! unknown; `[[ a || b ]]` renders the first alternative whose placeholders are all known.
//! A placeholder outside `[[ ]]` that is unknown renders as `?` (templates should guard
//! what can be missing).
//!
//! Placeholders: `bay`, `vehicle` (the car model, or "auto"/"car"), `energy_kwh` (one
//! decimal, decimal comma in Italian), `duration_min`, `duration` ("23 minuti"), `soc_pct`,
//! `target_soc_pct`, `al_soc`/`al_target` (Italian "all'80 %" / "al 60 %"), `eta_min`,
//! `eta`, `idle_min`, `idle`, `reason`, `bay_url`, `name`, `site`, `charger`, `error_code`,
//! `zone`, `occupancy`, `capacity`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::Lang;
use crate::domain::event::{Event, EventKind, StopReason};

const PLACEHOLDERS: &[&str] = &[
    "bay",
    "vehicle",
    "energy_kwh",
    "duration_min",
    "duration",
    "soc_pct",
    "target_soc_pct",
    "al_soc",
    "al_target",
    "eta_min",
    "eta",
    "idle_min",
    "idle",
    "reason",
    "bay_url",
    "name",
    "site",
    "charger",
    "error_code",
    "zone",
    "occupancy",
    "capacity",
];

macro_rules! builtin {
    ($lang:literal, $kind:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/templates/notify/",
            $lang,
            "/",
            $kind,
            ".txt"
        ))
    };
}

macro_rules! builtins {
    ($($kind:literal),*) => {
        &[$(
            (Lang::It, $kind, builtin!("it", $kind)),
            (Lang::En, $kind, builtin!("en", $kind)),
        )*]
    };
}

const BUILTIN: &[(Lang, &str, &str)] = builtins!(
    "charging_started",
    "nearly_complete",
    "charging_complete",
    "idle_blocking",
    "charging_stopped",
    "charging_not_started",
    "charger_fault",
    "charger_offline",
    "charger_online",
    "lounge_full",
    "lounge_free"
);

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {msg}")]
    Syntax { origin: String, msg: String },
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Lit(String),
    Var(&'static str),
    Opt(Vec<Vec<Part>>),
}

#[derive(Clone, Debug)]
struct Template {
    subject: Vec<Part>,
    body: Vec<Part>,
}

/// A rendered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// All templates, by language and kind.
#[derive(Clone, Debug)]
pub struct Templates {
    map: HashMap<(Lang, EventKind), Template>,
}

impl Templates {
    /// The compiled-in templates.
    pub fn builtin() -> Self {
        let mut map = HashMap::new();
        for (lang, kind, text) in BUILTIN {
            let Some(k) = EventKind::parse(kind) else {
                continue;
            };
            // Built-ins are checked by unit tests; a broken one is skipped, not fatal.
            if let Ok(t) = parse_template(text, &format!("builtin {}/{kind}", lang.as_str())) {
                map.insert((*lang, k), t);
            }
        }
        Templates { map }
    }

    /// Built-ins overridden by `{dir}/{lang}/{kind}.txt` where such files exist. A file that
    /// exists but does not parse is an error (found at start, not at the first send).
    pub fn load(dir: Option<&Path>) -> Result<Self, TemplateError> {
        let mut t = Self::builtin();
        let Some(dir) = dir else {
            return Ok(t);
        };
        for lang in Lang::ALL {
            for kind in EventKind::ALL {
                let path = dir
                    .join(lang.as_str())
                    .join(format!("{}.txt", kind.as_str()));
                let text = match std::fs::read_to_string(&path) {
                    Ok(s) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(TemplateError::Io { path, source }),
                };
                let parsed = parse_template(&text, &path.display().to_string())?;
                t.map.insert((lang, kind), parsed);
            }
        }
        Ok(t)
    }

    /// Renders `event` for a guest. `bay_url` is the bay page; `name` the guest's name.
    pub fn render(&self, lang: Lang, event: &Event, name: Option<&str>, bay_url: &str) -> Message {
        let ctx = Ctx {
            lang,
            event,
            name,
            bay_url,
        };
        let (subject, text) = match self.map.get(&(lang, event.kind)) {
            Some(t) => (render_parts(&t.subject, &ctx), render_parts(&t.body, &ctx)),
            None => (
                format!("{}: {}", ctx.bay(), event.kind.as_str()),
                format!("{}: {}\n\n{bay_url}\n", ctx.bay(), event.kind.as_str()),
            ),
        };
        let subject = subject.trim().to_string();
        let text = text.trim_end().to_string() + "\n";
        let html = to_html(&text, bay_url);
        Message {
            subject,
            text,
            html,
        }
    }
}

fn parse_template(text: &str, origin: &str) -> Result<Template, TemplateError> {
    let err = |msg: &str| TemplateError::Syntax {
        origin: origin.to_string(),
        msg: msg.to_string(),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (first, body) = text.split_once('\n').unwrap_or((text, ""));
    let subject = first
        .trim_end_matches('\r')
        .strip_prefix("Subject:")
        .ok_or_else(|| err("first line must be `Subject: ...`"))?;
    Ok(Template {
        subject: parse_parts(subject.trim(), true).map_err(|m| err(&m))?,
        body: parse_parts(body, true).map_err(|m| err(&m))?,
    })
}

fn parse_parts(s: &str, allow_opt: bool) -> Result<Vec<Part>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        if allow_opt {
            if let Some(after) = rest.strip_prefix("[[") {
                let end = after
                    .find("]]")
                    .ok_or_else(|| "`[[` without `]]`".to_string())?;
                let inner = &after[..end];
                if inner.contains("[[") {
                    return Err("`[[` segments do not nest".into());
                }
                let alts = inner
                    .split("||")
                    .map(|a| parse_parts(a, false))
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(Part::Opt(alts));
                rest = &after[end + 2..];
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix('{') {
            if let Some(end) = after.find('}') {
                let name = &after[..end];
                if !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    let known = PLACEHOLDERS
                        .iter()
                        .find(|p| **p == name)
                        .ok_or_else(|| format!("unknown placeholder {{{name}}}"))?;
                    out.push(Part::Var(known));
                    rest = &after[end + 1..];
                    continue;
                }
            }
        }
        // Literal up to the next `{` or `[[`.
        let mut cut = rest.len();
        for (i, c) in rest.char_indices().skip(1) {
            if c == '{' || (allow_opt && rest[i..].starts_with("[[")) {
                cut = i;
                break;
            }
        }
        push_lit(&mut out, &rest[..cut]);
        rest = &rest[cut..];
    }
    Ok(out)
}

fn push_lit(out: &mut Vec<Part>, s: &str) {
    if let Some(Part::Lit(prev)) = out.last_mut() {
        prev.push_str(s);
    } else {
        out.push(Part::Lit(s.to_string()));
    }
}

fn render_parts(parts: &[Part], ctx: &Ctx) -> String {
    let mut s = String::new();
    for p in parts {
        match p {
            Part::Lit(l) => s.push_str(l),
            Part::Var(v) => s.push_str(ctx.value(v).as_deref().unwrap_or("?")),
            Part::Opt(alts) => {
                if let Some(r) = alts.iter().find_map(|a| try_render(a, ctx)) {
                    s.push_str(&r);
                }
            }
        }
    }
    s
}

fn try_render(parts: &[Part], ctx: &Ctx) -> Option<String> {
    let mut s = String::new();
    for p in parts {
        match p {
            Part::Lit(l) => s.push_str(l),
            Part::Var(v) => s.push_str(&ctx.value(v)?),
            Part::Opt(_) => return None,
        }
    }
    Some(s)
}

struct Ctx<'a> {
    lang: Lang,
    event: &'a Event,
    name: Option<&'a str>,
    bay_url: &'a str,
}

impl Ctx<'_> {
    fn bay(&self) -> String {
        let e = self.event;
        e.bay
            .clone()
            .or_else(|| e.charger.clone())
            .or_else(|| e.zone.clone())
            .unwrap_or_default()
    }

    fn value(&self, key: &str) -> Option<String> {
        let e = self.event;
        let lang = self.lang;
        let known = |x: Option<f64>| x.filter(|v| v.is_finite());
        match key {
            "bay" => Some(self.bay()),
            "vehicle" => Some(
                e.vehicle
                    .clone()
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| match lang {
                        Lang::It => "auto".into(),
                        Lang::En => "car".into(),
                    }),
            ),
            "energy_kwh" => known(e.energy_kwh).map(|v| decimal(v, 1, lang)),
            "duration_min" => known(e.duration_s).map(|s| minutes(s).to_string()),
            "duration" => known(e.duration_s).map(|s| minutes_text(minutes(s), lang)),
            "soc_pct" => known(e.soc_pct).map(|v| pct(v).to_string()),
            "target_soc_pct" => known(e.target_soc_pct).map(|v| pct(v).to_string()),
            "al_soc" => known(e.soc_pct).map(|v| al_pct(pct(v), lang)),
            "al_target" => known(e.target_soc_pct).map(|v| al_pct(pct(v), lang)),
            "eta_min" => known(e.eta_s).map(|s| minutes_up(s).to_string()),
            "eta" => known(e.eta_s).map(|s| minutes_text(minutes_up(s), lang)),
            "idle_min" => known(e.idle_s).map(|s| minutes(s).to_string()),
            "idle" => known(e.idle_s).map(|s| minutes_text(minutes(s), lang)),
            "reason" => Some(reason_text(e, lang)),
            "bay_url" => Some(self.bay_url.to_string()),
            "name" => self
                .name
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string),
            "site" => Some(e.site.clone()),
            "charger" => e.charger.clone(),
            "error_code" => e.error_code.clone(),
            "zone" => e.zone.clone(),
            "occupancy" => e.occupancy.map(|v| v.to_string()),
            "capacity" => e.capacity.map(|v| v.to_string()),
            _ => None,
        }
    }
}

fn minutes(s: f64) -> i64 {
    (s / 60.0).round().max(0.0) as i64
}

/// ETAs round up: "in about 1 minute", never "in 0 minutes".
fn minutes_up(s: f64) -> i64 {
    (s / 60.0).ceil().max(1.0) as i64
}

fn minutes_text(m: i64, lang: Lang) -> String {
    match (lang, m) {
        (Lang::It, 1) => "1 minuto".into(),
        (Lang::It, m) => format!("{m} minuti"),
        (Lang::En, 1) => "1 minute".into(),
        (Lang::En, m) => format!("{m} minutes"),
    }
}

fn pct(v: f64) -> i64 {
    v.round().clamp(0.0, 100.0) as i64
}

/// Italian "al 60 %" but "all'80 %": the article elides before a vowel sound (uno, otto,
/// undici, ottanta...). English has no article here.
fn al_pct(p: i64, lang: Lang) -> String {
    match lang {
        Lang::En => format!("{p} %"),
        Lang::It if matches!(p, 1 | 8 | 11 | 80..=89) => format!("all'{p} %"),
        Lang::It => format!("al {p} %"),
    }
}

/// `decimals` places; Italian uses a decimal comma.
pub(crate) fn decimal(v: f64, decimals: usize, lang: Lang) -> String {
    let s = format!("{v:.decimals$}");
    match lang {
        Lang::It => s.replace('.', ","),
        Lang::En => s,
    }
}

fn reason_text(e: &Event, lang: Lang) -> String {
    let target = e.target_soc_pct.filter(|v| v.is_finite()).map(pct);
    match (e.reason, lang, target) {
        (Some(StopReason::StoppedEarly), Lang::It, Some(t)) => {
            format!("interrotta prima dell'obiettivo ({t} %)")
        }
        (Some(StopReason::StoppedEarly), Lang::It, None) => {
            "interrotta prima dell'obiettivo".into()
        }
        (Some(StopReason::StoppedEarly), Lang::En, Some(t)) => {
            format!("it ended before reaching the target ({t} %)")
        }
        (Some(StopReason::StoppedEarly), Lang::En, None) => {
            "it ended before reaching the target".into()
        }
        (Some(StopReason::Unplugged), Lang::It, _) => "il cavo è stato scollegato".into(),
        (Some(StopReason::Unplugged), Lang::En, _) => "the cable was unplugged".into(),
        (Some(StopReason::Faulted), Lang::It, _) => "la colonnina ha segnalato un guasto".into(),
        (Some(StopReason::Faulted), Lang::En, _) => "the charger reported a fault".into(),
        (None, Lang::It, _) => "la ricarica è stata interrotta".into(),
        (None, Lang::En, _) => "charging was interrupted".into(),
    }
}

fn escape_html(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The HTML alternative: paragraphs of the text, the bay page as a link.
fn to_html(text: &str, bay_url: &str) -> String {
    let url = escape_html(bay_url);
    let link = format!("<a href=\"{url}\">{url}</a>");
    let paras: Vec<String> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let inner = escape_html(p).replace('\n', "<br>\n");
            let inner = if url.is_empty() {
                inner
            } else {
                inner.replace(&url, &link)
            };
            format!("<p>{inner}</p>")
        })
        .collect();
    format!(
        "<!DOCTYPE html>\n<html><body style=\"font-family:sans-serif\">\n{}\n</body></html>\n",
        paras.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete() -> Event {
        let mut e = Event::new(
            EventKind::ChargingComplete,
            1_795_547_378_380,
            "milano",
            "0f6c1c1e9a7b4d2e".into(),
        );
        e.charger = Some("hpc-3".into());
        e.bay = Some("Bay 3".into());
        e.vehicle = Some("Taycan 4S".into());
        e.energy_kwh = Some(61.23);
        e.duration_s = Some(1391.0);
        e.soc_pct = Some(80.0);
        e.target_soc_pct = Some(80.0);
        e
    }

    const URL: &str = "https://lounge.example/bay/milano/hpc-3";

    #[test]
    fn charging_complete_reads_naturally_in_both_languages() {
        let t = Templates::builtin();
        let it = t.render(Lang::It, &complete(), None, URL);
        assert!(
            it.text
                .contains("La tua Taycan 4S al Bay 3 è carica all'80 %: 61,2 kWh in 23 minuti."),
            "{}",
            it.text
        );
        assert_eq!(it.subject, "Bay 3: la tua Taycan 4S è carica");
        let en = t.render(Lang::En, &complete(), None, URL);
        assert!(
            en.text
                .contains("Your Taycan 4S at Bay 3 is charged to 80 %: 61.2 kWh in 23 minutes."),
            "{}",
            en.text
        );
        assert!(en.text.contains(URL));
        assert!(en.html.contains(&format!("<a href=\"{URL}\">")));
    }

    #[test]
    fn unknowns_drop_optional_segments() {
        let mut e = complete();
        e.vehicle = None;
        e.soc_pct = None;
        e.energy_kwh = None;
        let it = Templates::builtin().render(Lang::It, &e, None, URL);
        assert!(
            it.text.starts_with("La tua auto al Bay 3 è carica.\n"),
            "{}",
            it.text
        );
        let en = Templates::builtin().render(Lang::En, &e, Some("Anna"), URL);
        assert!(
            en.text
                .starts_with("Hello Anna,\n\nYour car at Bay 3 is charged.\n"),
            "{}",
            en.text
        );
    }

    #[test]
    fn stopped_early_says_where_it_stopped_not_done() {
        let mut e = complete();
        e.kind = EventKind::ChargingStopped;
        e.reason = Some(StopReason::StoppedEarly);
        e.soc_pct = Some(50.0);
        let t = Templates::builtin();
        let it = t.render(Lang::It, &e, None, URL);
        assert!(
            it.text
                .contains("si è fermata al 50 %: interrotta prima dell'obiettivo (80 %)."),
            "{}",
            it.text
        );
        assert!(!it.text.contains("è carica"));
        let en = t.render(Lang::En, &e, None, URL);
        assert!(
            en.text
                .contains("stopped at 50 %: it ended before reaching the target (80 %)."),
            "{}",
            en.text
        );
        assert!(!en.text.contains("is charged"));
    }

    #[test]
    fn idle_blocking_asks_politely_with_minutes_and_fee() {
        let mut e = complete();
        e.kind = EventKind::IdleBlocking;
        e.idle_s = Some(600.0);
        let t = Templates::builtin();
        let it = t.render(Lang::It, &e, None, URL);
        assert!(it.text.contains("da 10 minuti"), "{}", it.text);
        assert!(
            it.text.contains("per favore") && it.text.contains("tariffa"),
            "{}",
            it.text
        );
        let en = t.render(Lang::En, &e, None, URL);
        assert!(
            en.text.contains("10 minutes ago")
                && en.text.contains("please move")
                && en.text.contains("fee"),
            "{}",
            en.text
        );
    }

    #[test]
    fn nearly_complete_rounds_eta_up_and_falls_back() {
        let mut e = complete();
        e.kind = EventKind::NearlyComplete;
        e.soc_pct = Some(72.4);
        e.eta_s = Some(30.0);
        let t = Templates::builtin();
        let en = t.render(Lang::En, &e, None, URL);
        assert!(
            en.text
                .contains("will be charged to 80 % in about 1 minute. It is at 72 % now."),
            "{}",
            en.text
        );
        e.eta_s = None;
        let it = t.render(Lang::It, &e, None, URL);
        assert!(
            it.text
                .contains("sarà carica all'80 % a breve. Ora è al 72 %."),
            "{}",
            it.text
        );
    }

    #[test]
    fn every_kind_renders_in_both_languages_without_holes() {
        let t = Templates::builtin();
        for lang in Lang::ALL {
            for kind in EventKind::ALL {
                assert!(
                    t.map.contains_key(&(lang, kind)),
                    "missing {lang:?} {kind:?}"
                );
                let mut e = complete();
                e.kind = kind;
                e.zone = Some("Lounge".into());
                let m = t.render(lang, &e, Some("Anna"), URL);
                assert!(!m.subject.is_empty() && !m.text.is_empty());
                assert!(
                    !m.text.contains('{') && !m.text.contains("[["),
                    "{lang:?} {kind:?}: {}",
                    m.text
                );
                assert!(!m.text.contains('?'), "{lang:?} {kind:?}: {}", m.text);
            }
        }
    }

    #[test]
    fn decimal_comma_in_italian_only() {
        assert_eq!(decimal(61.25, 1, Lang::It), "61,2");
        assert_eq!(decimal(61.26, 1, Lang::En), "61.3");
        assert_eq!(decimal(7.0, 1, Lang::It), "7,0");
        assert_eq!(al_pct(80, Lang::It), "all'80 %");
        assert_eq!(al_pct(100, Lang::It), "al 100 %");
        assert_eq!(al_pct(8, Lang::It), "all'8 %");
        assert_eq!(al_pct(60, Lang::It), "al 60 %");
    }

    #[test]
    fn overrides_are_loaded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("en")).unwrap();
        std::fs::write(
            dir.path().join("en/charging_complete.txt"),
            "Subject: Done at {bay}\nCustom: {energy_kwh} kWh[[, {soc_pct} %]]\n",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let m = t.render(Lang::En, &complete(), None, URL);
        assert_eq!(m.subject, "Done at Bay 3");
        assert_eq!(m.text, "Custom: 61.2 kWh, 80 %\n");
        // Italian still the built-in.
        assert!(t
            .render(Lang::It, &complete(), None, URL)
            .text
            .contains("all'80 %"));

        std::fs::write(
            dir.path().join("en/idle_blocking.txt"),
            "Subject: x\n{nmae}\n",
        )
        .unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains("unknown placeholder {nmae}"), "{e}");
        std::fs::write(dir.path().join("en/idle_blocking.txt"), "no subject\n").unwrap();
        assert!(Templates::load(Some(dir.path())).is_err());
    }
}
