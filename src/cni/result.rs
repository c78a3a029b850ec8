//! What the plugin prints: ADD/CHECK results, VERSION, and error objects, per the spec.

use super::conf::{LATEST_VERSION, SUPPORTED_VERSIONS, ip_carries_version};
use crate::Error;
use crate::datapath::attach::Wired;
use crate::netlink::format_mac;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The spec's result object, typed: what ADD prints and what DEL/CHECK get back as `prevResult`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpEntry>,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    #[serde(default)]
    pub dns: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpEntry {
    /// 0.3.x and 0.4.0 only: "4" or "6".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

impl CniResult {
    /// The result of an ADD that built `wired` in the pod namespace `sandbox`, in the shape of
    /// `version`.
    pub fn from_wired(version: &str, wired: &Wired, sandbox: &str) -> CniResult {
        let interfaces = wired
            .interfaces
            .iter()
            .map(|i| Interface {
                name: i.name.clone(),
                mac: format_mac(&i.mac),
                mtu: Some(i.mtu),
                sandbox: i.in_pod.then(|| sandbox.to_string()),
            })
            .collect();
        let ips = wired
            .ips
            .iter()
            .map(|ip| IpEntry {
                version: ip_carries_version(version)
                    .then(|| if ip.addr.is_ipv4() { "4" } else { "6" }.to_string()),
                address: ip.addr,
                gateway: Some(ip.gateway),
                interface: Some(ip.interface),
            })
            .collect();
        let routes = wired
            .ips
            .iter()
            .map(|ip| RouteEntry {
                dst: if ip.addr.is_ipv4() {
                    IpNetwork::V4(Ipv4Network::from(Ipv4Addr::UNSPECIFIED).with_prefix(0))
                } else {
                    IpNetwork::V6(Ipv6Network::from(Ipv6Addr::UNSPECIFIED).with_prefix(0))
                },
                gw: Some(ip.gateway),
            })
            .collect();
        CniResult {
            cni_version: version.to_string(),
            interfaces,
            ips,
            routes,
            dns: json!({}),
        }
    }

    /// A `prevResult` as far as it parses; `None` when it is not a result at all. Its contents
    /// are the caller's word, never trusted for what to delete.
    pub fn parse_prev(v: &Value) -> Option<CniResult> {
        serde_json::from_value(v.clone()).ok()
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Every address the result names.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ips.iter().map(|i| i.address.ip()).collect()
    }
}

trait WithPrefix: Sized {
    fn with_prefix(self, prefix: u8) -> Self;
}

impl WithPrefix for Ipv4Network {
    fn with_prefix(self, prefix: u8) -> Self {
        Ipv4Network::new(self.ip(), prefix).unwrap_or(self)
    }
}

impl WithPrefix for Ipv6Network {
    fn with_prefix(self, prefix: u8) -> Self {
        Ipv6Network::new(self.ip(), prefix).unwrap_or(self)
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
pub(crate) mod tests {
    use super::*;
    use crate::Kind;

    use crate::datapath::attach::{WiredInterface, WiredIp};

    pub(crate) fn sample(ip: Ipv4Addr) -> Wired {
        Wired {
            interfaces: vec![
                WiredInterface {
                    name: "tw0123456789abc".into(),
                    mac: [2, 0, 0, 0, 0, 1],
                    mtu: 1500,
                    in_pod: false,
                },
                WiredInterface {
                    name: "eth0".into(),
                    mac: [2, 0, 0, 0, 0, 2],
                    mtu: 1500,
                    in_pod: true,
                },
            ],
            ips: vec![WiredIp {
                addr: IpNetwork::V4(Ipv4Network::from(ip)),
                gateway: "169.254.1.1".parse().unwrap(),
                interface: 1,
            }],
        }
    }

    #[test]
    fn result_shape_per_version() {
        let w = sample("10.1.0.5".parse().unwrap());
        let old = CniResult::from_wired("0.3.1", &w, "/run/netns/p").to_json();
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][0]["address"], "10.1.0.5/32");
        assert_eq!(old["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(old["ips"][0]["interface"], 1);
        assert_eq!(old["interfaces"][0]["mac"], "02:00:00:00:00:01");
        assert!(old["interfaces"][0].get("sandbox").is_none());
        assert_eq!(old["interfaces"][1]["sandbox"], "/run/netns/p");
        assert_eq!(old["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(old["routes"][0]["gw"], "169.254.1.1");
        assert_eq!(old["dns"], json!({}));
        let new = CniResult::from_wired("1.1.0", &w, "/run/netns/p").to_json();
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["cniVersion"], "1.1.0");
        let back = CniResult::parse_prev(&new).unwrap();
        assert_eq!(back.addresses(), ["10.1.0.5".parse::<IpAddr>().unwrap()]);
    }

    /// A dual-stack veth pod: IPv4 and IPv6 on the pod's `eth0`.
    pub(crate) fn dual_sample() -> Wired {
        let mut w = sample("10.1.0.5".parse().unwrap());
        w.ips.push(WiredIp {
            addr: "fd00:1::5/128".parse().unwrap(),
            gateway: "fe80::1".parse().unwrap(),
            interface: 1,
        });
        w
    }

    #[test]
    fn dual_stack_result_in_every_supported_version() {
        let w = dual_sample();
        for version in SUPPORTED_VERSIONS {
            let j = CniResult::from_wired(version, &w, "/run/netns/p").to_json();
            assert_eq!(j["cniVersion"], *version);
            let ips = j["ips"].as_array().unwrap();
            assert_eq!(ips.len(), 2, "{version}: {j}");
            assert_eq!(ips[0]["address"], "10.1.0.5/32");
            assert_eq!(ips[0]["gateway"], "169.254.1.1");
            assert_eq!(ips[1]["address"], "fd00:1::5/128");
            assert_eq!(ips[1]["gateway"], "fe80::1");
            assert_eq!(ips[1]["interface"], 1);
            if ip_carries_version(version) {
                assert_eq!(ips[0]["version"], "4", "{version}");
                assert_eq!(ips[1]["version"], "6", "{version}");
            } else {
                assert!(ips[1].get("version").is_none(), "{version}: {j}");
            }
            let routes = j["routes"].as_array().unwrap();
            assert_eq!(
                routes,
                &vec![
                    json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}),
                    json!({"dst": "::/0", "gw": "fe80::1"}),
                ],
                "{version}"
            );
            // What DEL and CHECK get back parses with both families.
            let back = CniResult::parse_prev(&j).unwrap();
            assert_eq!(
                back.addresses(),
                [
                    "10.1.0.5".parse::<IpAddr>().unwrap(),
                    "fd00:1::5".parse().unwrap()
                ]
            );
            assert_eq!(back, CniResult::from_wired(version, &w, "/run/netns/p"));
        }
    }

    #[test]
    fn exclusive_eni_dual_stack_result_names_the_vswitch_gateways() {
        let w = Wired {
            interfaces: vec![WiredInterface {
                name: "eth0".into(),
                mac: [2, 0, 0, 0, 0, 9],
                mtu: 1500,
                in_pod: true,
            }],
            ips: vec![
                WiredIp {
                    addr: "10.240.0.10/24".parse().unwrap(),
                    gateway: "10.240.0.253".parse().unwrap(),
                    interface: 0,
                },
                WiredIp {
                    addr: "2408:4005:3ff:1::10/64".parse().unwrap(),
                    gateway: "2408:4005:3ff:1::1".parse().unwrap(),
                    interface: 0,
                },
            ],
        };
        let j = CniResult::from_wired("0.4.0", &w, "/run/netns/p").to_json();
        assert_eq!(j["ips"][1]["address"], "2408:4005:3ff:1::10/64");
        assert_eq!(j["ips"][1]["gateway"], "2408:4005:3ff:1::1");
        assert_eq!(j["routes"][1]["dst"], "::/0");
        assert_eq!(j["routes"][1]["gw"], "2408:4005:3ff:1::1");
    }

    #[test]
    fn prev_results_with_ipv6_parse() {
        // As another plugin or an older terway may have written them.
        let old = json!({
            "cniVersion": "0.3.1",
            "ips": [
                {"version": "6", "address": "2001:db8::7/64", "gateway": "2001:db8::1"},
                {"version": "4", "address": "10.0.0.7/24", "interface": 0}
            ],
            "routes": [{"dst": "::/0", "gw": "2001:db8::1"}, {"dst": "0.0.0.0/0"}]
        });
        let r = CniResult::parse_prev(&old).unwrap();
        assert_eq!(
            r.addresses(),
            [
                "2001:db8::7".parse::<IpAddr>().unwrap(),
                "10.0.0.7".parse().unwrap()
            ]
        );
        assert_eq!(r.routes[0].gw, Some("2001:db8::1".parse().unwrap()));
        let v6_only = json!({"cniVersion": "1.1.0", "ips": [{"address": "fd00::9/128"}]});
        let r = CniResult::parse_prev(&v6_only).unwrap();
        assert_eq!(r.addresses(), ["fd00::9".parse::<IpAddr>().unwrap()]);
        // Not an address at all: not a result.
        assert!(CniResult::parse_prev(&json!({"ips": [{"address": "fd00::zz/64"}]})).is_none());
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
