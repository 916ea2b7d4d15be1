//! Customer directory: id_tag (the customer's card) → name, language, contacts. A tap of a
//! known card links the customer to that session automatically.
//!
//! TOML:
//! ```toml
//! [[customers]]
//! id_tag = "04A2B3C4"
//! name = "Anna Rossi"
//! lang = "en"                      # default it
//! events = ["charging_complete"]   # default: the guest defaults
//! contacts = [{ channel = "email", address = "anna@example.com" }]
//! ```
//! CSV (header required; one contact per row, rows with the same id_tag merge):
//! ```text
//! id_tag,name,lang,channel,address
//! 04A2B3C4,Anna Rossi,en,email,anna@example.com
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Channel, Lang};
use crate::domain::event::EventKind;
use crate::util::secret::Redacted;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub channel: Channel,
    pub address: Redacted<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    pub id_tag: String,
    #[serde(default)]
    pub name: Option<Redacted<String>>,
    #[serde(default)]
    pub lang: Lang,
    #[serde(default)]
    pub events: Option<Vec<EventKind>>,
    #[serde(default)]
    pub contacts: Vec<Contact>,
}

/// The loaded directory, keyed by id_tag.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    by_tag: HashMap<String, Customer>,
}

impl Directory {
    pub fn get(&self, id_tag: &str) -> Option<&Customer> {
        self.by_tag.get(id_tag)
    }

    pub fn len(&self) -> usize {
        self.by_tag.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_tag.is_empty()
    }

    pub fn from_customers(customers: Vec<Customer>) -> Self {
        let mut by_tag: HashMap<String, Customer> = HashMap::new();
        for c in customers {
            match by_tag.get_mut(&c.id_tag) {
                Some(existing) => existing.contacts.extend(c.contacts),
                None => {
                    by_tag.insert(c.id_tag.clone(), c);
                }
            }
        }
        Directory { by_tag }
    }
}

/// Errors name the file and line/row, never a contact.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Parse { path: PathBuf, msg: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    customers: Vec<Customer>,
}

/// Loads a `.toml` or `.csv` directory (by extension; anything else is read as TOML).
pub fn load_directory(path: &Path) -> Result<Directory, DirectoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| DirectoryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let parse_err = |msg: String| DirectoryError::Parse {
        path: path.to_path_buf(),
        msg,
    };
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let customers = if is_csv {
        parse_csv(&text).map_err(parse_err)?
    } else {
        // toml's messages quote the offending value; keep only the location.
        toml::from_str::<TomlFile>(&text)
            .map_err(|e| parse_err(format!("invalid TOML near {:?}", e.span())))?
            .customers
    };
    for c in &customers {
        if c.id_tag.is_empty() {
            return Err(parse_err("a customer has an empty id_tag".into()));
        }
    }
    Ok(Directory::from_customers(customers))
}

fn parse_csv(text: &str) -> Result<Vec<Customer>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let cols: Vec<String> = split_csv_line(header)
        .into_iter()
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let idx = |name: &str| cols.iter().position(|c| c == name);
    let (Some(i_tag), Some(i_ch), Some(i_addr)) = (idx("id_tag"), idx("channel"), idx("address"))
    else {
        return Err("CSV header needs id_tag, channel, address (name, lang optional)".into());
    };
    let (i_name, i_lang) = (idx("name"), idx("lang"));
    let mut out = Vec::new();
    for (n, line) in lines {
        let row = split_csv_line(line);
        let get = |i: usize| row.get(i).map(|s| s.trim().to_string()).unwrap_or_default();
        let row_no = n + 1;
        let channel =
            Channel::parse(&get(i_ch)).ok_or_else(|| format!("line {row_no}: unknown channel"))?;
        let lang = match i_lang.map(get).filter(|s| !s.is_empty()) {
            None => Lang::default(),
            Some(l) => {
                Lang::parse(&l).ok_or_else(|| format!("line {row_no}: lang must be it or en"))?
            }
        };
        out.push(Customer {
            id_tag: get(i_tag),
            name: i_name.map(get).filter(|s| !s.is_empty()).map(Redacted::new),
            lang,
            events: None,
            contacts: vec![Contact {
                channel,
                address: Redacted::new(get(i_addr)),
            }],
        });
    }
    Ok(out)
}

/// RFC 4180 fields on one line: commas, double-quoted fields with `""` escapes.
fn split_csv_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_toml_and_csv() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("d.toml");
        std::fs::write(
            &t,
            r#"
[[customers]]
id_tag = "04A2"
name = "Anna"
lang = "en"
contacts = [{ channel = "email", address = "anna@example.com" }, { channel = "ntfy", address = "anna" }]
"#,
        )
        .unwrap();
        let d = load_directory(&t).unwrap();
        let c = d.get("04A2").unwrap();
        assert_eq!(c.lang, Lang::En);
        assert_eq!(c.contacts.len(), 2);

        let p = dir.path().join("d.csv");
        std::fs::write(
            &p,
            "id_tag,name,lang,channel,address\n04A2,\"Rossi, Anna\",,email,anna@example.com\n04A2,,,ntfy,anna\n",
        )
        .unwrap();
        let d = load_directory(&p).unwrap();
        let c = d.get("04A2").unwrap();
        assert_eq!(c.lang, Lang::It);
        assert_eq!(c.name.as_ref().unwrap().expose(), "Rossi, Anna");
        assert_eq!(c.contacts.len(), 2);
        assert_eq!(c.contacts[1].channel, Channel::Ntfy);
    }

    #[test]
    fn parse_errors_do_not_echo_contacts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        std::fs::write(&p, "id_tag,channel,address\n04A2,pigeon,anna@example.com\n").unwrap();
        let e = load_directory(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("anna@"), "{e}");
        let t = dir.path().join("d.toml");
        std::fs::write(&t, "[[customers]]\nid_tag = \"1\"\ncontacts = [{ channel = \"x\", address = \"anna@example.com\" }]\n").unwrap();
        let e = load_directory(&t).unwrap_err().to_string();
        assert!(!e.contains("anna@"), "{e}");
    }
}
