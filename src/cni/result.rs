//! What the plugin prints: ADD/CHECK results, VERSION, and error objects, per the spec.

use super::conf::{LATEST_VERSION, SUPPORTED_VERSIONS, ip_carries_version};
use crate::Error;
use serde_json::{Value, json};
use std::net::Ipv4Addr;

/// The facts an ADD result reports.
#[derive(Debug, Clone)]
pub struct AddResult {
    pub host_ifname: String,
    pub host_mac: String,
    pub pod_ifname: String,
    pub pod_mac: String,
    pub mtu: u32,
    pub sandbox: String,
    pub ipv4: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

impl AddResult {
    /// The result in the shape of `version` (0.3.x/0.4.0 IPs carry `"version": "4"`).
    pub fn to_json(&self, version: &str) -> Value {
        let mut ip = json!({
            "address": format!("{}/32", self.ipv4),
            "gateway": self.gateway.to_string(),
            "interface": 1,
        });
        if ip_carries_version(version) {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": self.host_ifname, "mac": self.host_mac, "mtu": self.mtu},
                {"name": self.pod_ifname, "mac": self.pod_mac, "mtu": self.mtu, "sandbox": self.sandbox},
            ],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": self.gateway.to_string()}],
            "dns": {},
        })
    }
}

pub fn version_json() -> Value {
    json!({"cniVersion": LATEST_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

/// The spec's error object. `version` falls back to the latest when the config never parsed.
pub fn error_json(version: Option<&str>, e: &Error) -> Value {
    let code = e.kind.cni_code();
    json!({
        "cniVersion": version.unwrap_or(LATEST_VERSION),
        "code": code,
        "msg": short_msg(code),
        "details": e.msg,
    })
}

/// A short summary per code; the details carry the specifics.
fn short_msg(code: u32) -> &'static str {
    match code {
        1 => "incompatible CNI version",
        2 => "unsupported field in network configuration",
        3 => "container unknown or does not exist",
        4 => "invalid necessary environment variables",
        5 => "I/O failure",
        6 => "failed to decode content",
        7 => "invalid network config",
        11 => "try again later",
        50 => "the plugin is not available",
        101 => "network namespace problem",
        102 => "kernel network setup failed",
        103 => "no free address",
        104 => "terway state file problem",
        105 => "permission denied",
        106 => "cloud API error",
        _ => "terway error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    fn sample() -> AddResult {
        AddResult {
            host_ifname: "tw0123456789abc".into(),
            host_mac: "02:00:00:00:00:01".into(),
            pod_ifname: "eth0".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            mtu: 1500,
            sandbox: "/run/netns/p".into(),
            ipv4: "10.1.0.5".parse().unwrap(),
            gateway: "169.254.1.1".parse().unwrap(),
        }
    }

    #[test]
    fn result_shape_per_version() {
        let old = sample().to_json("0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][0]["address"], "10.1.0.5/32");
        assert_eq!(old["ips"][0]["interface"], 1);
        assert_eq!(old["interfaces"][1]["sandbox"], "/run/netns/p");
        let new = sample().to_json("1.1.0");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["cniVersion"], "1.1.0");
    }

    #[test]
    fn error_object() {
        let e = Error::new(Kind::InvalidEnv, "CNI_NETNS not set");
        let j = error_json(Some("0.4.0"), &e);
        assert_eq!(j["code"], 4);
        assert_eq!(j["cniVersion"], "0.4.0");
        assert_eq!(j["details"], "CNI_NETNS not set");
    }
}
