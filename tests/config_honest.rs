//! Every accepted key is used, or reported as accepted but not built yet (or not used in this
//! mode), or refused when ignoring its value would change what users get: by `terway config
//! check` and by the daemon at start.

mod common;

use common::{BIN, TempDir, daemon_exits};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A valid ENIMultiIP config in `dir` with `extra` keys.
fn eni_config(dir: &Path, extra: &Value) -> Value {
    let mut v = json!({
        "daemon_mode": "ENIMultiIP",
        "security_group": "sg-1",
        "socket_path": dir.join("terway.sock"),
        "state_path": dir.join("state.json"),
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let f = dir.join(format!("{name}.json"));
    std::fs::write(&f, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    f
}

/// `terway config check [--json] f`: (success, stdout).
fn check(f: &Path, json: bool) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["config", "check"]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.arg(f).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Keys that are parsed or recognised but not built yet in ENIMultiIP mode, with a value each.
fn not_built() -> Vec<(&'static str, Value)> {
    vec![
        ("min_eni", json!(1)),
        ("idle_ip_reclaim_interval", json!("2m")),
        ("idle_ip_reclaim_batch_size", json!(5)),
        ("ip_warm_up_size", json!(10)),
        ("idle_ip_reclaim_jitter_factor", json!("0.1")),
        ("eni_tag_filter", json!({"team": "a"})),
        ("eni_tag_block_list", json!(["no-terway"])),
        ("custom_stateful_workload_kinds", json!(["Foo"])),
        ("backoff_override", json!({})),
        ("extra_routes", json!([])),
        ("resource_group_id", json!("rg-1")),
        ("rate_limit", json!({"AssignPrivateIpAddresses": 10})),
        ("ipv4_prefix_count", json!(1)),
        ("ipv6_prefix_count", json!(1)),
    ]
}

#[test]
fn keys_not_built_yet_are_reported_and_accepted() {
    let d = TempDir::new("honest-notes");
    let mut all = json!({});
    for (key, value) in not_built() {
        all[key] = value.clone();
        let f = write(&d.0, key, &eni_config(&d.0, &json!({ key: value })));
        let (ok, out) = check(&f, false);
        assert!(ok, "{key}: {out}");
        assert!(
            out.contains(&format!(
                "warning: key \"{key}\": accepted, not built yet: "
            )),
            "{key}: {out}"
        );
        assert_eq!(out.lines().count(), 2, "{key}: {out}");
        assert!(
            out.ends_with(": ok, with the warnings above\n"),
            "{key}: {out}"
        );
    }
    // All at once, as JSON: one warning each, ok.
    let f = write(&d.0, "all", &eni_config(&d.0, &all));
    let (ok, out) = check(&f, true);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), not_built().len(), "{v}");
    for p in problems {
        assert_eq!(p["warning"], true, "{p}");
        assert!(
            p["problem"]
                .as_str()
                .unwrap()
                .starts_with("accepted, not built yet: "),
            "{p}"
        );
    }
}

#[test]
fn keys_of_another_mode_are_reported_and_accepted() {
    let d = TempDir::new("honest-mode");
    let f = write(
        &d.0,
        "svc",
        &eni_config(&d.0, &json!({"service_cidr": "172.16.0.0/16"})),
    );
    let (ok, out) = check(&f, false);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: key \"service_cidr\": accepted, not used in ENIMultiIP mode"),
        "{out}"
    );
    let vpc = json!({
        "daemon_mode": "VPC",
        "pod_cidr": "10.250.97.0/24",
        "socket_path": d.0.join("terway.sock"),
        "state_path": d.0.join("state.json"),
        "vswitches": {"z": ["vsw-1"]},
        "eniip_virtual_type": "ipvlan",
        "enable_ip_prefix": true,
    });
    let (ok, out) = check(&write(&d.0, "vpc", &vpc), false);
    assert!(ok, "{out}");
    for key in ["vswitches", "eniip_virtual_type", "enable_ip_prefix"] {
        assert!(
            out.contains(&format!(
                "warning: key \"{key}\": accepted, not used in VPC mode"
            )),
            "{key}: {out}"
        );
    }
}

#[test]
fn values_that_would_change_what_pods_get_are_refused() {
    let d = TempDir::new("honest-refused");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "enable_eni_trunking",
            json!(true),
            "trunk ENIs are not built yet",
        ),
        (
            "enable_ip_prefix",
            json!(true),
            "IPv4 prefixes are not built yet",
        ),
        (
            "ipam_type",
            json!("crd"),
            "centralized IPAM is not built yet",
        ),
        (
            "eni_cap_ratio",
            json!(0.5),
            "ENI capacity ratios are not built yet",
        ),
        (
            "eni_cap_shift",
            json!(-1),
            "ENI capacity shifts are not built yet",
        ),
        (
            "extra_routes",
            json!([{"dst": "10.0.0.0/8"}]),
            "extra pod routes are not built yet",
        ),
    ];
    for (i, (key, value, says)) in cases.into_iter().enumerate() {
        let f = write(
            &d.0,
            &format!("bad{i}"),
            &eni_config(&d.0, &json!({ key: value })),
        );
        let (ok, out) = check(&f, false);
        assert!(!ok, "{key}: {value} passed: {out}");
        assert!(
            out.contains(&format!("key \"{key}\": ")) && out.contains(&format!(" refused: {says}")),
            "{key}: {value}: {out}"
        );
        let (ok, out) = check(&f, true);
        assert!(!ok, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert!(
            v["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["key"] == key && p["warning"] == false),
            "{v}"
        );
    }
    // Their values that match what this daemon does are fine, and quiet.
    let fine = json!({
        "ip_stack": "ipv4",
        "enable_eni_trunking": false,
        "eniip_virtual_type": "Veth",
        "enable_ip_prefix": false,
        "ipam_type": "default",
        "eni_cap_ratio": 1,
        "eni_cap_shift": 0,
    });
    let (ok, out) = check(&write(&d.0, "fine", &eni_config(&d.0, &fine)), false);
    assert!(ok && out.ends_with(": ok\n"), "{out}");
}

#[test]
fn ipvlan_is_used_and_needs_the_service_cidr() {
    let d = TempDir::new("honest-ipvlan");
    for t in ["ipvlan", "IPVlan"] {
        let with = eni_config(
            &d.0,
            &json!({"eniip_virtual_type": t, "service_cidr": "172.21.0.0/20"}),
        );
        let (ok, out) = check(&write(&d.0, &format!("with-{t}"), &with), false);
        assert!(ok && out.ends_with(": ok\n"), "{t}: {out}");
        let without = eni_config(&d.0, &json!({ "eniip_virtual_type": t }));
        let (ok, out) = check(&write(&d.0, &format!("without-{t}"), &without), false);
        assert!(!ok, "{t}: {out}");
        assert!(
            out.contains("key \"service_cidr\": required with eniip_virtual_type ipvlan"),
            "{t}: {out}"
        );
    }
}

#[test]
fn the_daemon_says_the_same_at_start() {
    let d = TempDir::new("honest-daemon");
    let state = d.0.join("state.json");
    // A FIFO as state file stops the daemon right after its config: nothing else runs.
    nix::unistd::mkfifo(&state, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut v = json!({
        "daemon_mode": "VPC",
        "pod_cidr": "10.250.96.0/24",
        "socket_path": d.0.join("terway.sock"),
        "state_path": state,
        "extra_routes": [],
        "colour": "blue",
    });
    let cfg = write(&d.0, "eni", &v);
    let (ok, err) = daemon_exits(&cfg);
    assert!(!ok);
    assert!(err.contains("is a FIFO"), "it got past its config: {err}");
    for line in [
        "key \"extra_routes\": accepted, not built yet: ",
        "key \"colour\": unknown key, ignored",
    ] {
        assert_eq!(err.matches(line).count(), 1, "{line}: {err}");
    }
    v["enable_eni_trunking"] = true.into();
    let cfg = write(&d.0, "eni", &v);
    let (ok, err) = daemon_exits(&cfg);
    assert!(!ok);
    assert!(
        err.contains("key \"enable_eni_trunking\": true refused: trunk ENIs are not built yet"),
        "{err}"
    );
    assert!(
        !err.contains("is a FIFO"),
        "it must stop at its config: {err}"
    );
}
