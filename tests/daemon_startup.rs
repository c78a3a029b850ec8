//! The daemon refuses what cannot work, at once and saying why: state files that are not regular
//! files. The daemon here never gets past its config and state file.

mod common;

use common::{BIN, TempDir, daemon_exits};
use std::path::Path;
use std::process::Command;

/// A VPC-mode config in `dir` with the given state file.
fn vpc_config(dir: &Path, state: &Path) -> std::path::PathBuf {
    let cfg = dir.join("eni.json");
    let v = serde_json::json!({
        "daemon_mode": "VPC",
        "pod_cidr": "10.250.99.0/24",
        "socket_path": dir.join("terway.sock"),
        "state_path": state,
    });
    std::fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    cfg
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn a_fifo_state_file_stops_the_daemon_naming_it() {
    let d = TempDir::new("fifo-state");
    let state = d.0.join("state.json");
    mkfifo(&state);
    let (ok, err) = daemon_exits(&vpc_config(&d.0, &state));
    assert!(!ok);
    assert!(
        err.contains(&format!("{} is a FIFO", state.display())),
        "{err}"
    );
    assert!(
        !d.0.join("terway.sock").exists(),
        "it must stop before serving"
    );
}

#[test]
fn a_fifo_lock_file_or_a_directory_as_state_file_stops_the_daemon() {
    let d = TempDir::new("fifo-lock");
    let state = d.0.join("state.json");
    let lock = d.0.join("state.json.lock");
    mkfifo(&lock);
    let (ok, err) = daemon_exits(&vpc_config(&d.0, &state));
    assert!(!ok);
    assert!(
        err.contains(&format!("{} is a FIFO", lock.display())),
        "{err}"
    );
    std::fs::remove_file(&lock).unwrap();
    std::fs::create_dir(&state).unwrap();
    let (ok, err) = daemon_exits(&vpc_config(&d.0, &state));
    assert!(!ok);
    assert!(
        err.contains(&format!("{} is a directory", state.display())),
        "{err}"
    );
}

/// `terway config check` on `v` (JSON): (success, stdout).
fn check(dir: &Path, name: &str, v: &serde_json::Value) -> (bool, String) {
    let f = dir.join(format!("{name}.json"));
    std::fs::write(&f, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&f)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn config_check_refuses_values_that_cannot_work_naming_the_key() {
    let d = TempDir::new("bad-values");
    let file = d.0.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let under_file = file.join("sub/x").display().to_string();
    let base = serde_json::json!({
        "daemon_mode": "VPC",
        "pod_cidr": "10.250.98.0/24",
        "socket_path": d.0.join("terway.sock"),
        "state_path": d.0.join("state.json"),
    });
    let (ok, out) = check(&d.0, "good", &base);
    assert!(ok, "{out}");
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("pod_cidr", "127.0.0.0/24".into(), "loopback"),
        ("pod_cidr", "224.0.0.0/24".into(), "multicast"),
        ("pod_cidr", "240.0.0.0/24".into(), "reserved"),
        ("pod_cidr", "169.254.0.0/24".into(), "link-local"),
        ("pod_cidr", "0.0.0.0/24".into(), "this network"),
        ("pod_cidr", "100.100.100.0/24".into(), "100.100.100.200"),
        ("pod_cidr", "10.0.0.0/31".into(), "too small"),
        ("ip_pool_sync_period", "0s".into(), "at least"),
        ("idle_ip_reclaim_interval", "0s".into(), "at least"),
        ("orphan_grace_period", "99999999999h".into(), "at most"),
        ("idle_ip_reclaim_batch_size", 0.into(), "out of range"),
        ("min_pool_size", 9.into(), "above max_pool_size"),
        (
            "state_path",
            under_file.clone().into(),
            "is not a directory",
        ),
        ("socket_path", under_file.into(), "is not a directory"),
        ("state_path", "state.json".into(), "absolute"),
        (
            "socket_path",
            file.display().to_string().into(),
            "not a socket",
        ),
    ];
    for (i, (key, value, says)) in cases.into_iter().enumerate() {
        let mut v = base.clone();
        v[key] = value.clone();
        let (ok, out) = check(&d.0, &format!("bad{i}"), &v);
        assert!(!ok, "{key}: {value} passed: {out}");
        assert!(
            out.contains(&format!("key \"{key}\"")) && out.contains(says),
            "{key}: {value}: {out}"
        );
    }
    let mut eni = base.clone();
    eni["daemon_mode"] = "ENIMultiIP".into();
    eni["security_group"] = "sg-1".into();
    eni["max_eni"] = 0.into();
    let (ok, out) = check(&d.0, "eni", &eni);
    assert!(!ok && out.contains("key \"max_eni\""), "{out}");
}

#[test]
fn the_daemon_refuses_the_same_values_naming_the_key() {
    let d = TempDir::new("bad-daemon");
    let file = d.0.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let cfg = vpc_config(&d.0, &file.join("state.json"));
    let (ok, err) = daemon_exits(&cfg);
    assert!(!ok);
    assert!(
        err.contains("key \"state_path\"")
            && err.contains(&format!("{} is not a directory", file.display())),
        "{err}"
    );
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["state_path"] = d.0.join("state.json").display().to_string().into();
    v["pod_cidr"] = "127.0.0.0/24".into();
    std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();
    let (ok, err) = daemon_exits(&cfg);
    assert!(!ok && err.contains("key \"pod_cidr\""), "{err}");
}
