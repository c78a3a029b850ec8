//! Helpers of the `terway emulate --netns` tests: uniquely named regions, namespaces removed on
//! drop, `ip` and `ping` inside namespaces, links found by MAC.

use super::{bin, fast_config};
use serde_json::Value;
use std::process::Command;
use terway::netlink::{Link, Netlink, find_link_by_mac, parse_mac};
use terway::netns::NetNs;

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "emulator netns tests need root (they build network namespaces); run them as root"
    );
}

/// The default region with instance ids unique to this test (they name namespaces): the
/// config path, instance A, instance B and the vpc namespace's name.
pub fn netns_config(tag: &str) -> (std::path::PathBuf, String, String, String) {
    let path = fast_config(&format!("netns-{tag}"), 200, 300);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let a = format!("i-{tag}{}a", std::process::id());
    let b = format!("i-{tag}{}b", std::process::id());
    v["instances"][0]["id"] = a.clone().into();
    v["instances"][1]["id"] = b.clone().into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    (path, a, b, format!("vpc-{tag}{}", std::process::id()))
}

pub fn ns_exists(n: &str) -> bool {
    std::path::Path::new("/run/netns").join(n).exists()
}

/// Runs a command; (success, stdout + stderr).
pub fn sh(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `ip -n <ns> <args>`, which must succeed.
pub fn ipn(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    let (ok, out) = sh(&full);
    assert!(ok, "{}: {out}", full.join(" "));
}

/// One ping from inside `ns` (optionally from source address `src`), one second to answer.
pub fn ping(ns: &str, src: Option<&str>, dst: &str) -> bool {
    let mut a = vec!["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1"];
    if let Some(s) = src {
        a.extend_from_slice(&["-I", s]);
    }
    a.push(dst);
    sh(&a).0
}

/// Every link of a named namespace, read over netlink (fast enough to poll in a tight loop).
pub fn links_in(ns: &str) -> Vec<Link> {
    let netns = NetNs::open(&std::path::Path::new("/run/netns").join(ns)).unwrap();
    Netlink::open_in(&netns).unwrap().links().unwrap()
}

/// The link with hardware address `mac` in a named namespace (`None` when the namespace is gone).
pub fn link_by_mac(ns: &str, mac: &str) -> Option<Link> {
    let netns = NetNs::open(&std::path::Path::new("/run/netns").join(ns)).ok()?;
    let mut nl = Netlink::open_in(&netns).unwrap();
    find_link_by_mac(&mut nl, &parse_mac(mac).unwrap()).unwrap()
}

/// Runs `terway emulate --cleanup` on drop, so a failing test leaves no namespace behind.
pub struct Cleanup(pub std::path::PathBuf, pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(bin())
            .args(["emulate", "--cleanup", "--vpc-netns", &self.1, "--config"])
            .arg(&self.0)
            .output();
    }
}

/// A namespace made by the test itself (a "pod"), removed on drop.
pub struct TestNs(pub String);

impl TestNs {
    pub fn add(name: String) -> TestNs {
        let (ok, out) = sh(&["ip", "netns", "add", &name]);
        assert!(ok, "ip netns add {name}: {out}");
        let ns = TestNs(name);
        ipn(&ns.0, &["link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if ns_exists(&self.0) {
            let _ = sh(&["ip", "netns", "del", &self.0]);
        }
    }
}
