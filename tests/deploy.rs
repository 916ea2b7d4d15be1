//! deploy/: the Grafana dashboards query only what CONTRACT §8 writes; the compose file,
//! Mosquitto config, systemd unit, Dockerfile health check and compose config are valid as
//! shipped (checked with the real tools: python3-yaml, mosquitto, systemd-analyze, the
//! evlounge binary).

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn read(rel: &str) -> String {
    let p = deploy(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

// ------------------------------------------------------------------ CONTRACT §8 schema

struct Measurement {
    name: &'static str,
    tags: &'static [&'static str],
    fields: &'static [&'static str],
}

const SCHEMA: &[Measurement] = &[
    Measurement {
        name: "charger",
        tags: &["site", "charger", "status"],
        fields: &[
            "power_kw",
            "meter_kwh",
            "session_kwh",
            "soc_pct",
            "voltage_v",
            "current_a",
            "temperature_c",
        ],
    },
    Measurement {
        name: "charging_session",
        tags: &["site", "charger", "outcome"],
        fields: &[
            "duration_s",
            "time_to_complete_s",
            "idle_s",
            "energy_kwh",
            "peak_kw",
            "avg_kw",
            "soc_start",
            "soc_end",
        ],
    },
    Measurement {
        name: "lounge",
        tags: &["site", "zone"],
        fields: &[
            "occupancy",
            "capacity",
            "occupancy_ratio",
            "co2_ppm",
            "temperature_c",
            "humidity_pct",
        ],
    },
    Measurement {
        name: "notification",
        tags: &["site", "channel", "kind", "outcome"],
        fields: &["latency_ms", "attempts"],
    },
];

/// Flux's own columns a query may read as `r._x`.
const SYSTEM_COLUMNS: &[&str] = &["_time", "_value", "_start", "_stop"];

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn ident_at(s: &str, i: usize) -> &str {
    let end = s[i..]
        .bytes()
        .position(|b| !is_ident(b))
        .map_or(s.len(), |n| i + n);
    &s[i..end]
}

/// `"..."` right after `i` (spaces skipped), or None.
fn string_after(s: &str, i: usize) -> Option<&str> {
    let rest = s[i..].trim_start();
    let rest = rest.strip_prefix('"')?;
    rest.find('"').map(|end| &rest[..end])
}

/// `== "..."` right after `i`, or None.
fn eq_string_after(s: &str, i: usize) -> Option<&str> {
    let rest = s[i..].trim_start();
    let rest = rest.strip_prefix("==")?;
    string_after(rest, 0)
}

fn strip_comments(q: &str) -> String {
    q.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Start offsets of `needle` in `s` not preceded by an identifier character or a dot
/// (so `r.` does not match inside `accumulator.`).
fn occurrences(s: &str, needle: &str) -> Vec<usize> {
    let b = s.as_bytes();
    s.match_indices(needle)
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || !(is_ident(b[i - 1]) || b[i - 1] == b'.'))
        .collect()
}

/// Checks one Flux query against CONTRACT §8: every `r._measurement == "m"` names a
/// measurement, every `r._field == "f"` a field of a measurement the query selects, every
/// tag comparison or `tag: "t"` a tag of one; `_measurement`/`_field` appear in no other
/// form (no regex or set match that would escape the check). Returns the problems.
fn check_flux(query: &str) -> Vec<String> {
    let q = strip_comments(query);
    let mut problems = Vec::new();
    let mut measurements: Vec<&Measurement> = Vec::new();
    let mut fields = Vec::new();

    // Every mention of the two key columns, in whatever form.
    let b = q.as_bytes();
    for key in ["_measurement", "_field"] {
        for (i, _) in q.match_indices(key) {
            let end = i + key.len();
            if end < b.len() && is_ident(b[end]) {
                continue; // a longer identifier such as `_fields`
            }
            if i > 0 && is_ident(b[i - 1]) {
                continue; // a longer identifier such as `my_field`
            }
            let quoted = i > 0 && b[i - 1] == b'"' && b.get(end) == Some(&b'"');
            if quoted {
                continue; // a column name in columns: [...], pivot, set(key: ...)
            }
            let via_r = i >= 2 && &q[i - 2..i] == "r." && (i == 2 || !is_ident(b[i - 3]));
            match (via_r, eq_string_after(&q, end)) {
                (true, Some(name)) if key == "_measurement" => {
                    match SCHEMA.iter().find(|m| m.name == name) {
                        Some(m) => measurements.push(m),
                        None => problems.push(format!("unknown measurement {name:?}")),
                    }
                }
                (true, Some(name)) => fields.push(name.to_string()),
                _ => {
                    let ctx: String = q[i.saturating_sub(20)..(end + 20).min(q.len())].into();
                    problems.push(format!(
                        "{key} used other than as r.{key} == \"name\" (cannot be checked): {ctx:?}"
                    ));
                }
            }
        }
    }
    if q.contains("r[\"") {
        problems.push("bracket column access r[\"...\"] cannot be checked".into());
    }
    if measurements.is_empty() {
        problems.push("no r._measurement == \"...\" filter".into());
        return problems;
    }
    for f in &fields {
        if !measurements.iter().any(|m| m.fields.contains(&f.as_str())) {
            let names: Vec<_> = measurements.iter().map(|m| m.name).collect();
            problems.push(format!("field {f:?} is not a field of {names:?}"));
        }
    }

    // Columns the query itself creates: record keys and named output columns.
    let mut defined: BTreeSet<String> = BTreeSet::new();
    for (i, _) in q.match_indices(':') {
        let head = q[..i].trim_end();
        let start = head
            .bytes()
            .rposition(|c| !is_ident(c))
            .map_or(0, |p| p + 1);
        if start < head.len() {
            defined.insert(head[start..].to_string());
        }
    }
    for key in ["columnName:", "key:"] {
        for (i, _) in q.match_indices(key) {
            if let Some(name) = string_after(&q, i + key.len()) {
                defined.insert(name.to_string());
            }
        }
    }
    for i in occurrences(&q, "r.") {
        let name = ident_at(&q, i + 2);
        if name.is_empty() || name == "_measurement" || name == "_field" {
            continue;
        }
        let known = SYSTEM_COLUMNS.contains(&name)
            || measurements
                .iter()
                .any(|m| m.tags.contains(&name) || m.fields.contains(&name))
            || defined.contains(name);
        if !known {
            problems.push(format!(
                "column r.{name} is no tag or field of the query's measurements"
            ));
        }
    }
    for i in occurrences(&q, "tag:") {
        match string_after(&q, i + 4) {
            Some(t) if measurements.iter().any(|m| m.tags.contains(&t)) => {}
            other => problems.push(format!(
                "tag: {other:?} is no tag of the query's measurements"
            )),
        }
    }
    problems
}

/// Every string under a "query" key, with where it was found.
fn flux_queries(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = format!("{path}.{k}");
                match (k.as_str(), v) {
                    ("query", Value::String(s)) if s.contains("r._measurement") => {
                        out.push((p, s.clone()))
                    }
                    _ => flux_queries(v, &p, out),
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flux_queries(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

const DASHBOARDS: &[(&str, &str)] = &[
    ("charger-usage.json", "Charger usage"),
    ("charging-curves.json", "Charging curves"),
    ("lounge.json", "Lounge"),
    ("notifications.json", "Notifications"),
];

#[test]
fn flux_check_rejects_names_outside_the_contract() {
    let ok = r#"from(bucket: v.defaultBucket)
  |> filter(fn: (r) => r._measurement == "charger" and r.site == "${site}")
  |> filter(fn: (r) => r._field == "power_kw" or r._field == "soc_pct")
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> map(fn: (r) => ({r with kw2: r.power_kw * 2.0}))
  |> filter(fn: (r) => exists r.kw2)"#;
    assert_eq!(check_flux(ok), Vec::<String>::new());

    let bad: &[(&str, &str)] = &[
        (
            r#"filter(fn: (r) => r._measurement == "chargers" and r._field == "power_kw")"#,
            "unknown measurement",
        ),
        (
            r#"filter(fn: (r) => r._measurement == "charger" and r._field == "power_w")"#,
            "field \"power_w\"",
        ),
        // A real field, of another measurement.
        (
            r#"filter(fn: (r) => r._measurement == "charger" and r._field == "occupancy")"#,
            "field \"occupancy\"",
        ),
        (
            r#"filter(fn: (r) => r._measurement == "charger" and r._field =~ /power/)"#,
            "cannot be checked",
        ),
        (
            r#"filter(fn: (r) => r._measurement =~ /charg/ and r._field == "power_kw")"#,
            "cannot be checked",
        ),
        (
            r#"filter(fn: (r) => contains(value: r._field, set: ["x"]) and r._measurement == "lounge")"#,
            "cannot be checked",
        ),
        (
            r#"filter(fn: (r) => r._measurement == "lounge" and r.bay == "Bay 1")"#,
            "r.bay",
        ),
        (
            r#"schema.tagValues(bucket: "b", tag: "status", predicate: (r) => r._measurement == "lounge")"#,
            "tag: Some(\"status\")",
        ),
        (
            r#"filter(fn: (r) => r._field == "power_kw")"#,
            "no r._measurement",
        ),
        (
            r#"filter(fn: (r) => r["_measurement"] == "charger")"#,
            "bracket",
        ),
    ];
    for (q, expect) in bad {
        let problems = check_flux(q);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{q}\n  expected a problem containing {expect:?}, got {problems:?}"
        );
    }
}

#[test]
fn dashboards_parse_and_query_only_contract_names() {
    let mut uids = BTreeSet::new();
    let mut used: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (file, title) in DASHBOARDS {
        let text = read(&format!("grafana/dashboards/{file}"));
        let d: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: invalid JSON: {e}"));
        assert!(
            d["title"].as_str().is_some_and(|t| t.contains(title)),
            "{file}: title {:?}",
            d["title"]
        );
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(uids.insert(uid.to_string()), "{file}: duplicate uid {uid}");

        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no templating.list"))
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        assert!(vars.contains(&"site"), "{file}: no site variable: {vars:?}");
        assert!(vars.contains(&"datasource"), "{file}: {vars:?}");
        if file.starts_with("charg") {
            assert!(vars.contains(&"charger"), "{file}: no charger variable");
        }

        let panels = d["panels"].as_array().expect("panels");
        assert!(panels.len() >= 3, "{file}: {} panels", panels.len());
        for p in panels.iter().filter(|p| p["type"] != "row") {
            let ptitle = p["title"].as_str().unwrap_or("?");
            let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            assert!(!targets.is_empty(), "{file}: panel {ptitle:?} has no query");
            for t in targets {
                let q = t["query"].as_str().unwrap_or("");
                assert!(
                    q.contains("from(bucket: v.defaultBucket)"),
                    "{file}: panel {ptitle:?}: not a Flux query on the data source's bucket"
                );
                assert!(
                    q.contains("r.site == \"${site}\""),
                    "{file}: panel {ptitle:?} does not filter by the site variable"
                );
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{file}: {ptitle:?}"
                );
            }
        }

        let mut queries = Vec::new();
        flux_queries(&d, "", &mut queries);
        let n_targets: usize = panels
            .iter()
            .map(|p| p["targets"].as_array().map_or(0, Vec::len))
            .sum();
        assert!(
            queries.len() > n_targets,
            "{file}: variable queries not found ({} queries, {n_targets} targets)",
            queries.len()
        );
        for (path, q) in &queries {
            let problems = check_flux(q);
            assert!(problems.is_empty(), "{file}{path}: {problems:#?}\n{q}");
            let q = strip_comments(q);
            for (i, _) in q.match_indices("r._measurement") {
                if let Some(m) = eq_string_after(&q, i + "r._measurement".len()) {
                    used.entry(file).or_default().insert(m.to_string());
                }
            }
        }
    }
    // Each dashboard reads the measurement it is about.
    assert!(used["charger-usage.json"].contains("charger"));
    assert!(used["charger-usage.json"].contains("charging_session"));
    assert!(used["charging-curves.json"].contains("charger"));
    assert!(used["charging-curves.json"].contains("charging_session"));
    assert!(used["lounge.json"].contains("lounge"));
    assert!(used["notifications.json"].contains("notification"));
}

#[test]
fn grafana_provisioning_points_at_the_dashboards() {
    let ds = read("grafana/provisioning/datasources/influxdb.yaml");
    for needle in [
        "type: influxdb",
        "version: Flux",
        "organization: ${INFLUX_ORG}",
        "defaultBucket: ${INFLUX_BUCKET}",
        "token: ${INFLUX_TOKEN}",
    ] {
        assert!(ds.contains(needle), "datasource lacks {needle:?}");
    }
    let prov = read("grafana/provisioning/dashboards/evlounge.yaml");
    let compose = read("compose.yaml");
    let path = prov
        .lines()
        .find_map(|l| l.trim().strip_prefix("path:"))
        .map(str::trim)
        .expect("provider path");
    assert!(
        compose.contains(&format!("./grafana/dashboards:{path}")),
        "compose must mount the dashboards at the provider path {path}"
    );
    for f in [&ds, &prov] {
        yaml_to_json(f);
    }
}

// ------------------------------------------------------------------ compose + Mosquitto

/// Parses YAML with PyYAML (CI: `python3 -m pip install pyyaml` or `apt-get install
/// python3-yaml`) and returns it as JSON.
fn yaml_to_json(text: &str) -> Value {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed to parse YAML");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write yaml");
    }
    let out = child.wait_with_output().expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'yaml'"),
        "PyYAML missing: apt-get install python3-yaml (or python3 -m pip install pyyaml)"
    );
    assert!(out.status.success(), "invalid YAML: {stderr}");
    serde_json::from_slice(&out.stdout).expect("json from python")
}

/// deploy/.env.example as a map (what `docker compose` reads from deploy/.env).
fn env_example() -> BTreeMap<String, String> {
    read(".env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` against `env`.
fn interpolate(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').expect("unclosed ${") + i;
        let expr = &rest[i + 2..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr.split(":?").next().unwrap_or(expr), None),
        };
        match (env.get(name), default) {
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => panic!("${{{name}}} is used by compose.yaml but not in .env.example"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn compose() -> Value {
    yaml_to_json(&read("compose.yaml"))
}

#[test]
fn compose_names_the_four_services_and_wires_evlounge() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    for s in ["mosquitto", "influxdb", "grafana", "evlounge"] {
        assert!(services.contains_key(s), "service {s} missing");
    }
    assert!(c["services"]["mosquitto"]["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("eclipse-mosquitto:2")));
    assert!(c["services"]["influxdb"]["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("influxdb:2")));
    let mosq_vols = c["services"]["mosquitto"]["volumes"].to_string();
    assert!(mosq_vols.contains("./mosquitto/mosquitto.conf:/mosquitto/config/mosquitto.conf"));

    let ev = &c["services"]["evlounge"];
    assert_eq!(ev["build"]["context"], "..");
    assert_eq!(ev["build"]["dockerfile"], "deploy/Dockerfile");
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(ev["build"]["dockerfile"].as_str().unwrap_or(""))
            .is_file(),
        "the Dockerfile named by compose exists"
    );
    let vols = ev["volumes"].to_string();
    assert!(vols.contains("./evlounge.compose.toml:/etc/evlounge/evlounge.toml"));
    assert!(vols.contains(":/var/lib/evlounge"));
    for k in ["EVLOUNGE__INFLUX__TOKEN", "EVLOUNGE__HTTP__STAFF_TOKEN"] {
        assert!(ev["environment"].get(k).is_some(), "evlounge env lacks {k}");
    }

    // Every ${VAR} of compose.yaml is documented in .env.example.
    let env = env_example();
    interpolate(&read("compose.yaml"), &env);
    let init = &c["services"]["influxdb"]["environment"];
    for k in [
        "DOCKER_INFLUXDB_INIT_ORG",
        "DOCKER_INFLUXDB_INIT_BUCKET",
        "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN",
    ] {
        assert!(init.get(k).is_some(), "influxdb env lacks {k}");
    }
}

fn mosquitto_conf() -> BTreeMap<String, String> {
    read("mosquitto/mosquitto.conf")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn mosquitto_conf_keeps_qos1_messages() {
    let c = mosquitto_conf();
    let num = |k: &str| -> u64 {
        c.get(k)
            .unwrap_or_else(|| panic!("mosquitto.conf does not set {k}"))
            .parse()
            .unwrap_or_else(|e| panic!("{k}: {e}"))
    };
    assert_eq!(c.get("persistence").map(String::as_str), Some("true"));
    assert!(num("autosave_interval") <= 60);
    assert_eq!(num("max_inflight_messages"), 0, "0 = unlimited in flight");
    assert!(num("max_queued_messages") >= 100_000);
    assert_eq!(num("max_queued_bytes"), 0);
    assert_eq!(c.get("listener").map(String::as_str), Some("1883"));
}

struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the real Mosquitto with deploy/mosquitto/mosquitto.conf, only the listener port
/// and persistence directory moved into the test's temp dir.
fn start_deploy_broker() -> Broker {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    for _ in 0..5 {
        let port = harness::free_port();
        let mut conf = read("mosquitto/mosquitto.conf")
            .replace("listener 1883", &format!("listener {port} 127.0.0.1"))
            .replace(
                "persistence_location /mosquitto/data/",
                &format!("persistence_location {}/", data.display()),
            );
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // As root Mosquitto switches to user "mosquitto", who cannot write the temp dir.
            conf.push_str("\nuser root\n");
        }
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).expect("write conf");
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).expect("log");
        let mut child = Command::new(
            ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .unwrap_or("mosquitto"),
        )
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("mosquitto must be installed (apt-get install mosquitto)");
        let up = harness::wait_for(
            "mosquitto to listen or exit",
            Duration::from_secs(10),
            || {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(true);
                }
                match child.try_wait() {
                    Ok(Some(_)) => Some(false),
                    _ => None,
                }
            },
        );
        if up {
            return Broker {
                child,
                port,
                _dir: dir,
            };
        }
        let log = std::fs::read_to_string(dir.path().join("mosquitto.log")).unwrap_or_default();
        assert!(
            log.contains("Address already in use"),
            "mosquitto rejected deploy/mosquitto/mosquitto.conf:\n{log}"
        );
    }
    panic!("mosquitto did not start");
}

/// The HEALTHCHECK command of deploy/Dockerfile (exec form), as argv.
fn dockerfile_healthcheck() -> Vec<String> {
    let text = read("Dockerfile").replace("\\\n", " ");
    let line = text
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("HEALTHCHECK");
    let json = &line[line.find("CMD [").expect("CMD in exec form") + 4..];
    serde_json::from_str(json.trim()).expect("HEALTHCHECK CMD is a JSON array")
}

#[test]
fn deploy_broker_config_runs_and_the_image_healthcheck_probes_healthz() {
    let broker = start_deploy_broker();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = harness::Daemon::start(
        dir.path(),
        &format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n", broker.port),
    );
    harness::wait_for(
        "evlounge to connect to the deploy broker",
        Duration::from_secs(20),
        || {
            daemon
                .get_json("/readyz")
                .filter(|r| r["mqtt"] == "up")
                .map(|_| ())
        },
    );

    let port = daemon.base.rsplit(':').next().expect("port").to_string();
    let argv = dockerfile_healthcheck();
    let probe = |port: &str| {
        Command::new(&argv[0])
            .args(&argv[1..])
            .env("HEALTHCHECK_PORT", port)
            .output()
            .expect("run the health check")
            .status
    };
    assert!(
        probe(&port).success(),
        "health check failed on a live daemon"
    );
    let dead = harness::free_port().to_string();
    assert!(
        !probe(&dead).success(),
        "health check passed with nothing listening"
    );
    assert_eq!(daemon.stop(), Some(0));
}

// ------------------------------------------------------------------ systemd unit

#[test]
fn systemd_unit_is_hardened() {
    let unit = read("evlounge.service");
    let set: BTreeSet<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for line in [
        "ExecStart=/usr/local/bin/evlounge run -c /etc/evlounge/evlounge.toml",
        "DynamicUser=yes",
        "StateDirectory=evlounge",
        "ConfigurationDirectory=evlounge",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
        "MemoryDenyWriteExecute=yes",
        "LockPersonality=yes",
        "RestrictNamespaces=yes",
    ] {
        assert!(set.contains(line), "evlounge.service lacks {line:?}");
    }
    assert!(unit.contains("LoadCredential="));
    // Each credential's variable names it by a literal path: `%d` needs systemd 251, and an
    // older one drops the whole line, leaving the secret (the staff token) unset.
    assert!(
        !unit
            .lines()
            .any(|l| l.contains("Environment=") && l.contains("%d")),
        "no %d specifier"
    );
    for line in unit.lines() {
        let line = line.trim_start_matches('#');
        if let Some(cred) = line.strip_prefix("LoadCredential=") {
            let name = cred.split(':').next().unwrap();
            let path = format!("_FILE=/run/credentials/evlounge.service/{name}");
            assert!(unit.contains(&path), "no variable for credential {name}");
        }
    }
    let stop = set
        .iter()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec");
    let stop = humantime::parse_duration(stop).expect("TimeoutStopSec duration");
    // The graceful stop may wait out influx.timeout and notify.attempt_timeout (10 s each).
    assert!(stop >= Duration::from_secs(30), "TimeoutStopSec {stop:?}");
}

fn systemd_analyze() -> Option<&'static str> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// `systemd-analyze verify` on `unit` placed in a temp dir; (success, diagnostics).
fn verify(unit: &str) -> (bool, String) {
    let tool = systemd_analyze().expect("systemd-analyze");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("evlounge.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new(tool)
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    if systemd_analyze().is_none() {
        eprintln!(
            "SKIPPED systemd_unit_passes_systemd_analyze_verify: systemd-analyze not installed \
             (apt-get install systemd)"
        );
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let unit = read("evlounge.service").replace("/usr/local/bin/evlounge", harness::bin());
    let (ok, diagnostics) = verify(&unit);
    assert!(ok && diagnostics.trim().is_empty(), "{diagnostics}");

    // And the check does catch a unit systemd would not run as written.
    let broken = unit.replace("Restart=on-failure", "Restart=on-failure\nRestartt=always");
    let (_, diagnostics) = verify(&broken);
    assert!(diagnostics.contains("Restartt"), "{diagnostics}");
}

// ------------------------------------------------------------------ compose config

/// The environment compose gives the evlounge service, with deploy/.env.example's values.
fn compose_evlounge_env() -> Vec<(String, String)> {
    let env = env_example();
    let c = compose();
    c["services"]["evlounge"]["environment"]
        .as_object()
        .expect("environment as a map")
        .iter()
        .map(|(k, v)| (k.clone(), interpolate(v.as_str().unwrap_or(""), &env)))
        .collect()
}

fn config_check(path: &Path, env: &[(String, String)]) -> std::process::Output {
    let mut cmd = Command::new(harness::bin());
    cmd.args(["config", "check", "-c"]).arg(path);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("EVLOUNGE__")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.output().expect("evlounge config check")
}

#[test]
fn compose_config_passes_config_check_with_the_compose_env() {
    // The example's staff token is a public placeholder: refused until it is changed.
    let placeholder = compose_evlounge_env();
    let out = config_check(&deploy("evlounge.compose.toml"), &placeholder);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("http.staff_token: is still the example's placeholder"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env: Vec<(String, String)> = placeholder
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "EVLOUNGE__HTTP__STAFF_TOKEN" => (k, "d41c9a0e5b7f4a2c8e13f6b9a0c7d5e2".into()),
            _ => (k, v),
        })
        .collect();
    let token = env
        .iter()
        .find(|(k, _)| k == "EVLOUNGE__INFLUX__TOKEN")
        .map(|(_, v)| v.clone())
        .expect("influx token in compose env");
    let path = deploy("evlounge.compose.toml");
    let out = config_check(&path, &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("listen = \"0.0.0.0:8080\""), "{stdout}");
    assert!(
        stdout.contains("url = \"mqtt://mosquitto:1883\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("data_dir = \"/var/lib/evlounge\""),
        "{stdout}"
    );
    assert!(!stdout.contains(&token), "config check printed the token");

    // Without the staff token compose passes, the non-loopback listen is refused: the
    // compose file's env is what makes this config valid.
    let partial: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| k != "EVLOUNGE__HTTP__STAFF_TOKEN")
        .collect();
    let out = config_check(&path, &partial);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.staff_token"));
}
