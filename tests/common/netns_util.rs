//! Throwaway network namespaces for root-only integration tests. Include with
//! `#[path = "common/netns_util.rs"] mod netns_util;`.
//!
//! These tests need root, `ip` and `ping`: without them they fail loudly instead of passing.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Panics unless we are root and `ip` and `ping` are installed.
pub fn require_root_and_tools() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests create network namespaces and must run as root (euid is {euid})"
    );
    for (tool, arg) in [("ip", "-V"), ("ping", "-V")] {
        let out = Command::new(tool).arg(arg).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "`{tool} {arg}` failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("`{tool}` is required by these tests (iproute2 / iputils-ping): {e}"),
        }
    }
}

/// A named namespace (`ip netns add`), deleted on drop, also when the test panics.
pub struct TestNs {
    pub name: String,
}

impl TestNs {
    pub fn new(tag: &str) -> TestNs {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("tw-test-{}-{tag}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        TestNs { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn open(&self) -> terway::netns::NetNs {
        terway::netns::NetNs::open(&self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.name))
    }

    /// `ip -n <ns> <args>`, panicking with stderr on failure.
    pub fn ip(&self, args: &str) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend(args.split_whitespace());
        run("ip", &full)
    }

    /// `ip -n <ns> <args>` that may fail.
    pub fn try_ip(&self, args: &str) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend(args.split_whitespace());
        output("ip", &full)
    }

    /// One ping from inside this namespace; returns whether it got an answer.
    pub fn ping(&self, dst: &str) -> bool {
        let out = output(
            "ip",
            &["netns", "exec", &self.name, "ping", "-c1", "-W2", dst],
        );
        if !out.status.success() {
            eprintln!(
                "ping {dst} from {} failed:\n{}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }

    /// Runs `f` on a thread inside this namespace (the test's "node" view).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> terway::Result<T> + Send + 'static,
    ) -> terway::Result<T> {
        self.open().run(f)
    }

    /// A node: `addr` (e.g. "10.240.0.1/32") on `lo`, so the host has a source address. (Our
    /// build machines' kernel has no `dummy` module; `lo` serves the same purpose here.)
    pub fn with_node_addr(self, addr: &str) -> TestNs {
        self.ip("link set lo up");
        self.ip(&format!("addr add {addr} dev lo"));
        self
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let out = output("ip", &["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "cleanup: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn output(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

/// Runs a command, panics with its stderr on failure, returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = output(cmd, args);
    assert!(
        out.status.success(),
        "`{cmd} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
