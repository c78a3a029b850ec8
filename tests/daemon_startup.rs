//! The daemon refuses what cannot work, at once and saying why: state files that are not regular
//! files. The daemon here never gets past its config and state file.

mod common;

use common::{BIN, TempDir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Runs `terway daemon --config cfg`; it must exit within 10 s. Returns (success, stderr).
/// As root in a network namespace of its own (`unshare -n` execs it in place): a daemon that got
/// further than it should would otherwise change the host's sysctls.
fn daemon_exits(cfg: &Path) -> (bool, String) {
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("unshare");
        c.args(["-n", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    let mut child = cmd
        .args(["daemon", "--config"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "terway daemon --config {} still running after 10 s",
                cfg.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), err)
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
