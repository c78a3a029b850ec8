//! Network configuration on the plugin's stdin, and CNI version negotiation.

use super::result::CniResult;
use crate::config::DEFAULT_SOCKET_PATH;
use crate::model::AttachKey;
use crate::{Error, Kind, Result};
use serde_json::Value;
use std::path::PathBuf;

/// Versions we accept, oldest first. 0.3.0 still appears in upstream Terway's own examples.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST_VERSION: &str = "1.1.0";
pub const DEFAULT_MTU: u32 = 1500;

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub daemon_socket: PathBuf,
    pub mtu: u32,
    /// Exclusive ENI mode: no veth from the pod to the node (service CIDR and node traffic then
    /// go through the VPC).
    pub disable_host_peer: bool,
    /// The caller's word on a previous ADD: compared (CHECK), never trusted for what to delete.
    pub prev_result: Option<CniResult>,
    /// GC: `cni.dev/valid-attachments`; `None` when the key is absent.
    pub valid_attachments: Option<Vec<AttachKey>>,
}

/// Orders versions like "0.4.0" < "1.0.0"; anything unparsable sorts first.
fn version_tuple(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

pub fn version_at_least(v: &str, min: &str) -> bool {
    version_tuple(v) >= version_tuple(min)
}

/// 0.3.x and 0.4.0 results carry `"version": "4"` on each IP.
pub fn ip_carries_version(v: &str) -> bool {
    !version_at_least(v, "1.0.0")
}

impl NetConf {
    /// Parses stdin as runtimes send it: a single plugin config (with `name` and `cniVersion`
    /// injected from the list) or, defensively, a whole conflist.
    pub fn parse(bytes: &[u8]) -> Result<NetConf> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            Error::new(
                Kind::Decode,
                format!("network config on stdin is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(top) = value else {
            return Err(Error::new(
                Kind::Decode,
                "network config on stdin must be a JSON object",
            ));
        };
        let plugin = match top.get("plugins") {
            Some(Value::Array(list)) => list
                .iter()
                .find(|p| p.get("type").and_then(Value::as_str) == Some("terway"))
                .or(list.first())
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    Error::new(
                        Kind::InvalidConfig,
                        "conflist has no plugin of type \"terway\"",
                    )
                })?,
            Some(_) => {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    "\"plugins\" must be a list of plugin configs",
                ));
            }
            None => &top,
        };
        let field = |k: &str| plugin.get(k).or_else(|| top.get(k));

        let cni_version = negotiate_version(top.get("cniVersions"), field("cniVersion"))?;
        let name = match field("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) if !other.is_string() => {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    format!("\"name\" must be a string, got {other}"),
                ));
            }
            _ => {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    "network config has no \"name\"",
                ));
            }
        };
        let daemon_socket = match field("daemon_socket") {
            None | Some(Value::Null) => PathBuf::from(DEFAULT_SOCKET_PATH),
            Some(Value::String(s)) if !s.is_empty() => PathBuf::from(s),
            Some(other) => {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    format!("\"daemon_socket\" must be a non-empty path, got {other}"),
                ));
            }
        };
        let mtu = match field("mtu") {
            None | Some(Value::Null) => DEFAULT_MTU,
            Some(v) => match v.as_u64() {
                Some(m) if (68..=65535).contains(&m) => m as u32,
                _ => {
                    return Err(Error::new(
                        Kind::InvalidConfig,
                        format!("\"mtu\" must be a number from 68 to 65535, got {v}"),
                    ));
                }
            },
        };
        let disable_host_peer = match field("disable_host_peer") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    format!("\"disable_host_peer\" must be true or false, got {other}"),
                ));
            }
        };
        let valid_attachments = match field("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_attachments(v, &name)?),
        };
        Ok(NetConf {
            cni_version,
            name,
            daemon_socket,
            mtu,
            disable_host_peer,
            prev_result: field("prevResult")
                .filter(|v| !v.is_null())
                .and_then(CniResult::parse_prev),
            valid_attachments,
        })
    }

    /// The addresses a previous result names.
    pub fn prev_ips(&self) -> Vec<std::net::IpAddr> {
        self.prev_result
            .as_ref()
            .map(CniResult::addresses)
            .unwrap_or_default()
    }
}

fn negotiate_version(versions: Option<&Value>, version: Option<&Value>) -> Result<String> {
    if let Some(Value::Array(list)) = versions {
        let best = list
            .iter()
            .filter_map(Value::as_str)
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .max_by_key(|v| version_tuple(v));
        if let Some(v) = best {
            return Ok(v.to_string());
        }
    }
    match version {
        Some(Value::String(v)) if SUPPORTED_VERSIONS.contains(&v.as_str()) => Ok(v.clone()),
        Some(Value::String(v)) => Err(Error::new(
            Kind::IncompatibleVersion,
            format!(
                "incompatible CNI version \"{v}\": this plugin supports {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        )),
        Some(other) => Err(Error::new(
            Kind::InvalidConfig,
            format!("\"cniVersion\" must be a string, got {other}"),
        )),
        None => Err(Error::new(
            Kind::InvalidConfig,
            "network config has no \"cniVersion\"",
        )),
    }
}

/// The runtime's valid attachments, keyed on this network.
fn parse_attachments(v: &Value, network: &str) -> Result<Vec<AttachKey>> {
    let bad = || {
        Error::new(
            Kind::InvalidConfig,
            "\"cni.dev/valid-attachments\" must be a list of {\"containerID\", \"ifname\"}",
        )
    };
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|a| {
            Ok(AttachKey {
                network: network.to_string(),
                container_id: a
                    .get("containerID")
                    .and_then(Value::as_str)
                    .ok_or_else(bad)?
                    .into(),
                ifname: a
                    .get("ifname")
                    .and_then(Value::as_str)
                    .ok_or_else(bad)?
                    .into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_config_defaults() {
        let c =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"terway","type":"terway"}"#).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.daemon_socket, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert!(c.valid_attachments.is_none());
    }

    #[test]
    fn conflist_with_cni_versions_picks_the_highest_supported() {
        let c = NetConf::parse(
            br#"{"cniVersions":["0.4.0","1.1.0","9.9.9"],"name":"net","plugins":[
                {"type":"portmap"},{"type":"terway","mtu":9000,"daemon_socket":"/tmp/x.sock"}]}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, "1.1.0");
        assert_eq!(c.mtu, 9000);
        assert_eq!(c.name, "net");
    }

    #[test]
    fn errors_have_the_right_codes() {
        let code = |s: &str| NetConf::parse(s.as_bytes()).unwrap_err().kind.cni_code();
        assert_eq!(code("{nope"), 6);
        assert_eq!(code("[1]"), 6);
        assert_eq!(code(r#"{"cniVersion":"0.2.0","name":"n"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"1.0.0"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n","mtu":10}"#), 7);
        assert_eq!(
            code(r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"x":1}]}"#),
            7
        );
    }

    #[test]
    fn gc_attachments_and_prev_ips() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n",
                "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
                "prevResult":{"ips":[{"address":"10.1.0.5/32"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments.as_ref().unwrap()[0].container_id, "a");
        assert_eq!(
            c.prev_ips(),
            vec!["10.1.0.5".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn version_order() {
        assert!(version_at_least("1.1.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(ip_carries_version("0.4.0"));
        assert!(!ip_carries_version("1.0.0"));
    }
}
