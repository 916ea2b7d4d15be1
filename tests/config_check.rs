//! `evlounge config check`: every problem with its key, exit 2; the example passes;
//! secrets never printed.

mod harness;

use std::process::Command;

fn check(toml: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, toml).unwrap();
    let mut cmd = Command::new(harness::bin());
    cmd.arg("config").arg("check").arg("-c").arg(&p);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn example_config_passes() {
    let out = Command::new(harness::bin())
        .args(["config", "check", "-c"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/evlounge.toml"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("hpc-3"), "{stdout}");
    assert!(stdout.contains("Europe/Rome"));
}

#[test]
fn bad_configs_name_their_keys() {
    let cases: &[(&str, &str)] = &[
        ("[mqtt]\nurl = \"http://broker\"\n", "mqtt.url"),
        ("[mqtt]\nurl = \"not a url\"\n", "mqtt.url"),
        ("[http]\nlisten = \"localhost-8080\"\n", "http.listen"),
        ("[http]\nlisten = \"0.0.0.0:8080\"\n", "http.staff_token"),
        ("[http]\nlisten = \"0.0.0.0:8080\"\nstaff_token = \" \"\n", "http.staff_token"),
        ("[http]\nstaff_token = \"\"\n", "http.staff_token"),
        ("[mqtt]\nbogus = 1\n", "mqtt.bogus"),
        ("typo_section = 3\n", "typo_section"),
        ("[[sites]]\nid = \"a\"\n[[sites.chargers]]\nid = \"c1\"\n[[sites.chargers]]\nid = \"c1\"\n", "sites[0].chargers[1].id"),
        ("[[sites]]\nid = \"a\"\n[[sites.zones]]\nid = \"z\"\ncapacity = 0\n", "sites[0].zones[0].capacity"),
        ("[[sites]]\nid = \"bad id!\"\n", "sites[0].id"),
        ("[[sites]]\nid = \"a\"\ntimezone = \"Mars/Olympus\"\n", "sites[0].timezone"),
        ("[thresholds]\nlow_power_for = \"soon\"\n", "thresholds.low_power_for"),
        ("[thresholds]\nidle_repeat = \"sometimes\"\n", "thresholds.idle_repeat"),
        ("[thresholds]\nlounge_free_pct = 100\nlounge_full_pct = 90\n", "thresholds.lounge_free_pct"),
        ("[influx]\nurl = \"http://127.0.0.1:8086\"\n", "influx.token"),
        ("[influx]\nurl = \"ftp://x\"\norg = \"o\"\nbucket = \"b\"\ntoken = \"t\"\n", "influx.url"),
        ("[notify.email]\nsmtp_url = \"mail.example.com\"\nfrom = \"a@b.c\"\n", "notify.email.smtp_url"),
        ("[notify]\nretention = \"30m\"\n", "notify.retention"),
        ("[notify]\nmax_age = \"500ms\"\n", "notify.max_age"),
        ("[notify]\nattempt_timeout = \"20000y\"\n", "notify.attempt_timeout"),
        ("[mqtt]\npassword = \"x\"\npassword_file = \"/nonexistent\"\nusername = \"u\"\n", "mqtt.password"),
        ("[mqtt]\nmax_payload_bytes = -4\n", "mqtt.max_payload_bytes"),
        ("[log]\nformat = \"xml\"\n", "log.format"),
        ("[mqtt]\nurl = 5\n", "mqtt.url"),
        ("[mqtt]\ndead_letter_topic = \"dl/#\"\n", "mqtt.dead_letter_topic"),
        ("[mqtt]\ndead_letter_topic = \"evlounge/x/lounge/z\"\n", "mqtt.dead_letter_topic"),
        ("[mqtt]\nkeep_alive = \"30h\"\n", "mqtt.keep_alive"),
    ];
    for (toml, key) in cases {
        let (code, stdout, stderr) = check(toml, &[]);
        assert_eq!(code, 2, "{toml}: {stderr}");
        assert!(stdout.is_empty(), "{toml}: nothing on stdout, got {stdout}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("error: {key}: "))),
            "{toml}: expected `error: {key}: …`, got:\n{stderr}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let (code, _, stderr) = check(
        "[mqtt]\nurl = \"http://x\"\n[http]\nlisten = \"nope\"\n[[sites]]\nid = \"a\"\n[[sites.zones]]\nid = \"z\"\ncapacity = 0\n",
        &[],
    );
    assert_eq!(code, 2);
    for key in ["mqtt.url", "http.listen", "sites[0].zones[0].capacity"] {
        assert!(
            stderr.contains(&format!("error: {key}: ")),
            "{key} missing in:\n{stderr}"
        );
    }
}

#[test]
fn env_overrides_the_file() {
    let (code, stdout, stderr) = check(
        "[mqtt]\nurl = \"mqtt://a:1883\"\n",
        &[
            ("EVLOUNGE__MQTT__URL", "mqtt://from-env:1884"),
            ("EVLOUNGE__MQTT__PREFIX", "site7"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("mqtt://from-env:1884"), "{stdout}");
    assert!(stdout.contains("site7"));
    let (code, _, stderr) = check("", &[("EVLOUNGE__MQTT__URL", "bogus://x")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("error: mqtt.url: "), "{stderr}");
}

#[test]
fn secrets_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let tokf = dir.path().join("tok");
    std::fs::write(&tokf, "file-secret-4242\n").unwrap();
    let toml = format!(
        "[mqtt]\nusername = \"u\"\npassword = \"inline-secret-1234\"\n[influx]\nurl = \"http://127.0.0.1:8086\"\norg = \"o\"\nbucket = \"b\"\ntoken_file = {:?}\n[http]\nstaff_token = \"staff-secret-9999\"\n",
        tokf.display()
    );
    let (code, stdout, stderr) = check(
        &toml,
        &[
            ("EVLOUNGE__NOTIFY__WEBHOOK__URL", "http://127.0.0.1:9/h"),
            ("EVLOUNGE__NOTIFY__WEBHOOK__SECRET", "env-secret-777"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    for s in [
        "inline-secret-1234",
        "file-secret-4242",
        "staff-secret-9999",
        "env-secret-777",
    ] {
        assert!(
            !stdout.contains(s) && !stderr.contains(s),
            "{s} leaked:\n{stdout}{stderr}"
        );
    }
    assert!(stdout.contains("***"));
    // and a failing config does not echo them either
    let (code, stdout, stderr) = check(&format!("{toml}\n[log]\nformat = \"bad\"\n"), &[]);
    assert_eq!(code, 2);
    assert!(!stdout.contains("inline-secret-1234") && !stderr.contains("inline-secret-1234"));
}

#[test]
fn usage_errors_exit_2_and_version_works() {
    let out = Command::new(harness::bin())
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(harness::bin())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(harness::bin())
        .args(["run", "-c", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
