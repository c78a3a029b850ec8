//! The operator CLI and the multi-call dispatch, without a daemon (no root needed).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_terway");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("terway-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn max_pods_seed_figures() {
    let (ok, out, _) = run(&[
        "max-pods",
        "--eni-quantity",
        "8",
        "--eni-ips",
        "30",
        "--eni-total",
        "16",
    ]);
    assert!(ok);
    assert!(out.contains("shared ENI (ENIMultiIP) | 210"), "{out}");
    assert!(out.contains("exclusive ENI (ENIOnly) | 7"), "{out}");
    assert!(out.contains("trunk member ENIs       | 8"), "{out}");
    let (_, json, _) = run(&[
        "max-pods",
        "--eni-quantity",
        "2",
        "--eni-ips",
        "6",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["shared"], 6);
    assert_eq!(v["notes"].as_array().unwrap().len(), 2, "{v}");
}

#[test]
fn config_check_lists_every_problem_with_its_key() {
    let d = tmp("check");
    let f = d.join("eni.json");
    std::fs::write(
        &f,
        r#"{"daemon_mode":"VPC","pod_cidr":"10.0.0.0/40","max_pool_size":-1,"vswitchs":{}}"#,
    )
    .unwrap();
    let (ok, out, _) = run(&["config", "check", f.to_str().unwrap()]);
    assert!(!ok);
    for key in ["pod_cidr", "max_pool_size", "vswitchs"] {
        assert!(out.contains(&format!("key \"{key}\"")), "{key}: {out}");
    }
    let (ok, out, _) = run(&["config", "check", "--json", f.to_str().unwrap()]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["problems"].as_array().unwrap().len(), 3, "{v}");
    let (ok, _, err) = run(&["config", "check", "/nonexistent/eni.json"]);
    assert!(!ok && err.contains("/nonexistent/eni.json"), "{err}");
    let (ok, out, _) = run(&[
        "config",
        "check",
        concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/eni.json"),
    ]);
    assert!(ok, "the shipped example must be valid: {out}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn help_for_every_subcommand() {
    for sub in [
        "daemon", "mapping", "pool", "max-pods", "config", "emulate", "version", "node", "eni",
    ] {
        let (ok, out, err) = run(&[sub, "--help"]);
        assert!(ok, "{sub} --help: {err}");
        assert!(out.contains("Usage"), "{sub}: {out}");
    }
    for sub in [["node", "cleanup"], ["eni", "list"], ["eni", "delete"]] {
        let (ok, out, err) = run(&[sub[0], sub[1], "--help"]);
        assert!(ok, "{sub:?} --help: {err}");
        assert!(
            out.contains("--config") && out.contains("--json"),
            "{sub:?}: {out}"
        );
    }
    let (_, out, _) = run(&["max-pods", "--help"]);
    assert!(
        out.contains("--instance-type") && out.contains("--kubelet"),
        "{out}"
    );
    let (_, out, _) = run(&["mapping", "--help"]);
    assert!(out.contains("--socket") && out.contains("TERWAY_SOCKET") && out.contains("--json"));
}

#[test]
fn argv0_names_select_the_role() {
    let d = tmp("argv0");
    for name in ["terwayd", "terway-cli"] {
        let link = d.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(BIN, &link).unwrap();
    }
    let out = Command::new(d.join("terwayd"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--config"),
        "terwayd --help must be the daemon's: {text}"
    );
    let out = Command::new(d.join("terway-cli"))
        .args(["max-pods", "--eni-quantity", "3", "--eni-ips", "10"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("| 20"));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn cli_without_a_daemon_says_so() {
    let (ok, _, err) = run(&["pool", "--socket", "/nonexistent/terway.sock"]);
    assert!(!ok);
    assert!(
        err.contains("not reachable at /nonexistent/terway.sock"),
        "{err}"
    );
}

#[test]
fn cni_version_without_a_subcommand() {
    let out = Command::new(BIN)
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.1.0");
}
