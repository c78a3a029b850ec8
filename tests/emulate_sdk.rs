//! `terway emulate` driven by Alibaba Cloud's official Python SDKs (the Tea clients
//! `alibabacloud_ecs20140526` / `alibabacloud_vpc20160428` with V3 and V2 signatures, and the
//! classic `aliyun-python-sdk-core` AcsClient with V2 signatures): every action terway uses,
//! answers checked against the SDKs' own response models (no undocumented fields).
//!
//! The SDKs (pinned in `tests/sdk/requirements.txt`) go into a virtualenv made with
//! `python3 -m venv` in a temporary directory, then kept for later runs in the user's cache
//! (`$XDG_CACHE_HOME/terway` or `~/.cache/terway`; `TERWAY_SDK_VENV_DIR` overrides), under a
//! name made from the requirements and the interpreter: a fresh clone on the same machine does
//! not install again. Once per test binary. Needs `python3` with `venv` (Debian:
//! `python3-venv`) and PyPI; a failed install fails the test with pip's output.

mod emulate_support;

use emulate_support::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/requirements.txt");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/drive_emulator.py");
/// What a usable virtualenv can import.
const PROBE: &str = "import alibabacloud_ecs20140526.client, alibabacloud_vpc20160428.client, \
                     aliyunsdkcore.client, aliyunsdkecs, aliyunsdkvpc";

/// The actions terway's daemon uses (ECS and VPC), each driven by every SDK style.
const ACTIONS: &[&str] = &[
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
    "DescribeNetworkInterfaces",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "DescribeInstanceTypes",
    "DescribeInstances",
    "DescribeVSwitches",
    "CreateRouteEntry",
    "DeleteRouteEntry",
    "DescribeRouteEntryList",
    "DescribeRouteTableList",
];
const STYLES: u64 = 3;

fn show(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {cmd:?}\n{}",
        show(&out)
    );
    out
}

fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("TERWAY_SDK_VENV_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("terway");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache").join("terway"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}

/// A virtualenv with the pinned SDKs: the cached one, or a new one.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let t = Instant::now();
        let interpreter = Command::new("python3")
            .args([
                "-c",
                "import sys; print(sys.version); print(sys.executable)",
            ])
            .output()
            .unwrap_or_else(|e| {
                panic!("python3 is needed (with venv: Debian's python3-venv): {e}")
            });
        assert!(
            interpreter.status.success(),
            "python3: {}",
            show(&interpreter)
        );
        let reqs = std::fs::read(REQUIREMENTS).expect("tests/sdk/requirements.txt");
        let mut h = Sha256::new();
        h.update(&reqs);
        h.update(&interpreter.stdout);
        let key = &hex::encode(h.finalize())[..16];
        let root = cache_root();
        let dir = root.join(format!("sdk-venv-{key}"));
        let python = dir.join("bin").join("python");
        let usable = |python: &Path| {
            Command::new(python)
                .args(["-c", PROBE])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if usable(&python) {
            eprintln!("SDK virtualenv: {} (cached)", dir.display());
            return dir;
        }
        // Built beside its final place, then renamed into it: a half-made one is never used.
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        let tmp = root.join(format!(".sdk-venv-{key}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        run(
            Command::new("python3").arg("-m").arg("venv").arg(&tmp),
            "python3 -m venv (Debian: apt-get install python3-venv)",
        );
        let pip = Command::new(tmp.join("bin").join("python"))
            .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
            .arg(REQUIREMENTS)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run pip");
        if !pip.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            panic!(
                "pip could not install the Alibaba Cloud SDKs of {REQUIREMENTS}:\n{}",
                show(&pip)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another run put one there first.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        assert!(
            usable(&python),
            "the new virtualenv {} imports nothing",
            dir.display()
        );
        eprintln!(
            "SDK virtualenv: {} (installed in {:.1}s)",
            dir.display(),
            t.elapsed().as_secs_f64()
        );
        dir
    })
}

/// Runs `cmd` to its end, killing it after `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let end = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{cmd:?} ran over {limit:?}\n{}", show(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn official_python_sdks_drive_every_action() {
    let venv = venv();
    let emu = Emu::fast("sdk");
    emu.admin("DELETE", "/admin/calls", "");
    let t = Instant::now();
    let out = run_bounded(
        Command::new(venv.join("bin").join("python"))
            .arg(SCRIPT)
            .env("EMU_ENDPOINT", &emu.addr)
            .env("EMU_KEY_ID", KEY_ID)
            .env("EMU_SECRET", SECRET)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null()),
        Duration::from_secs(90),
    );
    assert!(
        out.status.success(),
        "the SDK script failed\n{}",
        show(&out)
    );
    eprintln!(
        "{}SDK script: {:.1}s",
        String::from_utf8_lossy(&out.stdout),
        t.elapsed().as_secs_f64()
    );
    // The emulator saw every action succeed through every style.
    let calls = emu.admin("GET", "/admin/calls", "");
    for a in ACTIONS {
        let ok = calls[*a]["ok"].as_u64().unwrap_or(0);
        assert!(
            ok >= STYLES,
            "{a}: {ok} successful calls, want {STYLES}+: {calls}"
        );
    }
    let unknown = &calls["<unknown>"];
    assert!(
        unknown.is_null(),
        "requests the emulator could not place: {unknown}"
    );
}
