//! The emulator's region description: what exists at start (VPC, vSwitches, instance types,
//! instances, access keys), timings and faults. An embedded default makes `terway emulate` work
//! with no file; `--print-config` shows it as a starting point.

use crate::emulate::faults::Faults;
use crate::{Kind, Result, ResultExt, err};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The instance type of the default config whose per-ENI IPv4 and IPv6 counts differ (the
/// others have equal counts): a dual-stack daemon in shared ENI mode refuses it.
pub const UNEQUAL_V6_TYPE: &str = "ecs.c6-v6unequal.large";

/// The embedded default region.
pub const DEFAULT_CONFIG: &str = include_str!("default.json");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmuConfig {
    pub region_id: String,
    pub vpc_id: String,
    pub vpc_cidr: String,
    /// The VPC's IPv6 CIDR (a /56 on Alibaba Cloud); vSwitch IPv6 CIDRs are /64s inside it.
    #[serde(default)]
    pub vpc_ipv6_cidr: Option<String>,
    pub route_table_id: String,
    pub zones: Vec<String>,
    pub vswitches: Vec<VSwitchCfg>,
    pub security_groups: Vec<String>,
    pub instance_types: Vec<InstanceTypeCfg>,
    pub instances: Vec<InstanceCfg>,
    pub access_keys: Vec<AccessKeyCfg>,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub faults: Faults,
    /// Requests with a larger body are refused without reading it all.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Hardened metadata mode: every metadata GET needs a token from `PUT /latest/api/token`.
    #[serde(default)]
    pub metadata_require_token: bool,
    /// Seeds ids, MACs and fault dice so runs are reproducible.
    #[serde(default)]
    pub seed: u64,
}

fn default_max_body() -> usize {
    64 * 1024
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VSwitchCfg {
    pub id: String,
    pub zone: String,
    pub cidr: String,
    #[serde(default)]
    pub ipv6_cidr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceTypeCfg {
    pub id: String,
    #[serde(default)]
    pub cpu: u32,
    #[serde(default)]
    pub memory_gib: u32,
    pub eni_quantity: u32,
    pub eni_private_ip_address_quantity: u32,
    #[serde(default)]
    pub eni_ipv6_address_quantity: u32,
    #[serde(default)]
    pub eni_total_quantity: u32,
    #[serde(default)]
    pub eni_trunk_supported: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceCfg {
    pub id: String,
    pub instance_type: String,
    pub vswitch: String,
    pub security_group: String,
    #[serde(default)]
    pub primary_ip: Option<String>,
    /// IPv6 addresses the primary ENI has from the start (its vSwitch needs IPv6).
    #[serde(default)]
    pub ipv6_address_count: u32,
    #[serde(default)]
    pub ram_role: Option<String>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyCfg {
    pub id: String,
    pub secret: String,
}

// Secrets never reach logs, even through Debug.
impl std::fmt::Debug for AccessKeyCfg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessKeyCfg {{ id: {:?}, secret: <hidden> }}", self.id)
    }
}

/// Asynchronous behaviour of the cloud, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "TimingIn")]
pub struct Timing {
    pub attach_delay_ms: u64,
    pub detach_delay_ms: u64,
    pub metadata_lag_ms: u64,
    /// How long a deleted ENI stays `Deleting` (DeleteNetworkInterface is asynchronous).
    pub delete_delay_ms: u64,
}

/// `Timing` as written: `delete_delay_ms` may be left out (then it is `detach_delay_ms`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimingIn {
    attach_delay_ms: u64,
    detach_delay_ms: u64,
    metadata_lag_ms: u64,
    delete_delay_ms: Option<u64>,
}

impl From<TimingIn> for Timing {
    fn from(t: TimingIn) -> Timing {
        Timing {
            attach_delay_ms: t.attach_delay_ms,
            detach_delay_ms: t.detach_delay_ms,
            metadata_lag_ms: t.metadata_lag_ms,
            delete_delay_ms: t.delete_delay_ms.unwrap_or(t.detach_delay_ms),
        }
    }
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            attach_delay_ms: 1500,
            detach_delay_ms: 1500,
            metadata_lag_ms: 1000,
            delete_delay_ms: 1000,
        }
    }
}

impl EmuConfig {
    pub fn embedded() -> Result<EmuConfig> {
        EmuConfig::parse(DEFAULT_CONFIG).ctx("embedded emulator config")
    }

    pub fn parse(text: &str) -> Result<EmuConfig> {
        let cfg: EmuConfig =
            serde_json::from_str(text).map_err(|e| err!(Kind::Decode, "emulator config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<EmuConfig> {
        let text = std::fs::read_to_string(path).with_ctx(|| format!("read {}", path.display()))?;
        EmuConfig::parse(&text).with_ctx(|| path.display().to_string())
    }

    /// Cross-references: every instance names a known type, vSwitch and security group; every
    /// vSwitch is in a known zone and inside the VPC; ids are unique.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(err!(Kind::InvalidConfig, "emulator config: {m}"));
        let vpc = match crate::emulate::model::Cidr4::parse(&self.vpc_cidr) {
            Some(c) => c,
            None => return bad(format!("vpc_cidr {:?} is not an IPv4 CIDR", self.vpc_cidr)),
        };
        let vpc6 = match &self.vpc_ipv6_cidr {
            None => None,
            Some(t) => match crate::emulate::model::Cidr6::parse(t) {
                Some(c) if c.is_network() => Some(c),
                _ => return bad(format!("vpc_ipv6_cidr {t:?} is not an IPv6 network CIDR")),
            },
        };
        let mut seen = std::collections::BTreeSet::new();
        for vsw in &self.vswitches {
            if !seen.insert(vsw.id.clone()) {
                return bad(format!("vSwitch {} is listed twice", vsw.id));
            }
            if !self.zones.contains(&vsw.zone) {
                return bad(format!(
                    "vSwitch {} is in unknown zone {}",
                    vsw.id, vsw.zone
                ));
            }
            match crate::emulate::model::Cidr4::parse(&vsw.cidr) {
                Some(c) if vpc.contains_cidr(&c) && c.prefix <= 29 => {}
                _ => {
                    return bad(format!(
                        "vSwitch {} CIDR {:?} must be a /29 or larger inside the VPC {}",
                        vsw.id, vsw.cidr, self.vpc_cidr
                    ));
                }
            }
            if let Some(v6) = &vsw.ipv6_cidr {
                // As on Alibaba Cloud: a vSwitch's IPv6 CIDR is a /64 of the VPC's.
                match crate::emulate::model::Cidr6::parse(v6) {
                    Some(c)
                        if c.prefix == 64
                            && c.is_network()
                            && vpc6.is_some_and(|p| p.contains_cidr(&c)) => {}
                    _ => {
                        return bad(format!(
                            "vSwitch {} ipv6_cidr {v6:?} must be a /64 inside vpc_ipv6_cidr {:?}",
                            vsw.id,
                            self.vpc_ipv6_cidr.as_deref().unwrap_or("(none)")
                        ));
                    }
                }
            }
        }
        let types: BTreeMap<_, _> = self.instance_types.iter().map(|t| (&t.id, t)).collect();
        for t in &self.instance_types {
            if t.eni_quantity == 0 || t.eni_private_ip_address_quantity == 0 {
                return bad(format!(
                    "instance type {} needs at least one ENI and one IP",
                    t.id
                ));
            }
        }
        for i in &self.instances {
            if !seen.insert(i.id.clone()) {
                return bad(format!("instance {} is listed twice", i.id));
            }
            if !types.contains_key(&i.instance_type) {
                return bad(format!(
                    "instance {} has unknown type {}",
                    i.id, i.instance_type
                ));
            }
            if !self.vswitches.iter().any(|v| v.id == i.vswitch) {
                return bad(format!(
                    "instance {} is on unknown vSwitch {}",
                    i.id, i.vswitch
                ));
            }
            let vsw_v6 = self
                .vswitches
                .iter()
                .any(|v| v.id == i.vswitch && v.ipv6_cidr.is_some());
            if i.ipv6_address_count > 0 && !vsw_v6 {
                return bad(format!(
                    "instance {} wants IPv6 but vSwitch {} has no ipv6_cidr",
                    i.id, i.vswitch
                ));
            }
            if types
                .get(&i.instance_type)
                .is_some_and(|t| i.ipv6_address_count > t.eni_ipv6_address_quantity)
            {
                return bad(format!(
                    "instance {}: ipv6_address_count {} is more than its type's {}",
                    i.id, i.ipv6_address_count, i.instance_type
                ));
            }
            if !self.security_groups.contains(&i.security_group) {
                return bad(format!(
                    "instance {} has unknown security group {}",
                    i.id, i.security_group
                ));
            }
        }
        if let Some(v) = self
            .faults
            .vswitch_free_cap
            .keys()
            .find(|k| !self.vswitches.iter().any(|v| &v.id == *k))
        {
            return bad(format!("faults.vswitch_free_cap names unknown vSwitch {v}"));
        }
        if self.access_keys.is_empty() {
            return bad("at least one access key is needed".into());
        }
        Ok(())
    }

    pub fn to_pretty_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Endpoints a node's daemon should use.
#[derive(Debug, Clone)]
pub struct NodeEndpoints {
    pub api: String,
    /// Metadata base for this instance (per-instance path without `--netns`).
    pub metadata: String,
}

/// Writes `DIR/<instance-id>.json` for every instance: a daemon config usable as is.
pub fn write_node_configs(
    cfg: &EmuConfig,
    dir: &Path,
    endpoints: impl Fn(&str) -> NodeEndpoints,
) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_ctx(|| format!("create {}", dir.display()))?;
    let key = cfg
        .access_keys
        .first()
        .ok_or_else(|| err!(Kind::InvalidConfig, "no access key configured"))?;
    let mut written = Vec::new();
    for inst in &cfg.instances {
        let zone = cfg
            .vswitches
            .iter()
            .find(|v| v.id == inst.vswitch)
            .map(|v| v.zone.clone())
            .unwrap_or_default();
        let zone_vsw: Vec<&str> = cfg
            .vswitches
            .iter()
            .filter(|v| v.zone == zone)
            .map(|v| v.id.as_str())
            .collect();
        let node_dir = dir.join(&inst.id);
        std::fs::create_dir_all(&node_dir).with_ctx(|| format!("create {}", node_dir.display()))?;
        let ep = endpoints(&inst.id);
        let doc = serde_json::json!({
            "daemon_mode": "ENIMultiIP",
            "region_id": cfg.region_id,
            "ecs_endpoint": ep.api,
            "vpc_endpoint": ep.api,
            "metadata_endpoint": ep.metadata,
            "access_key": key.id,
            "access_secret": key.secret,
            "vswitches": { zone: zone_vsw },
            "security_group": inst.security_group,
            "socket_path": node_dir.join("terway.sock"),
            "state_path": node_dir.join("state.json"),
        });
        let path = dir.join(format!("{}.json", inst.id));
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        // Holds a secret: readable by the owner only.
        write_private(&path, text.as_bytes()).with_ctx(|| format!("write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_round_trips() {
        let c = EmuConfig::embedded().unwrap();
        assert_eq!(c.instances.len(), 2);
        assert_eq!(c.vswitches.len(), 2);
        let g7 = c
            .instance_types
            .iter()
            .find(|t| t.id == "ecs.g7.4xlarge")
            .unwrap();
        assert_eq!(
            (g7.eni_quantity, g7.eni_private_ip_address_quantity),
            (8, 30)
        );
        assert_eq!(EmuConfig::parse(&c.to_pretty_json()).unwrap(), c);
        // Dual stack: IPv6 /64s out of the VPC's /56, equal per-ENI counts but for one type.
        assert_eq!(c.vpc_ipv6_cidr.as_deref(), Some("2408:4005:3c4:a00::/56"));
        assert!(c.vswitches.iter().all(|v| v.ipv6_cidr.is_some()));
        let unequal: Vec<&str> = c
            .instance_types
            .iter()
            .filter(|t| t.eni_private_ip_address_quantity != t.eni_ipv6_address_quantity)
            .map(|t| t.id.as_str())
            .collect();
        assert_eq!(unequal, [UNEQUAL_V6_TYPE]);
        assert!(c.instances.iter().all(|i| i.ipv6_address_count == 1));
        assert!(!format!("{:?}", c.access_keys).contains(&c.access_keys[0].secret));
    }

    #[test]
    fn invalid_configs_are_explained() {
        let mut c = EmuConfig::embedded().unwrap();
        c.instances[0].instance_type = "ecs.nope".into();
        let e = c.validate().unwrap_err();
        assert!(e.msg.contains("unknown type ecs.nope"), "{e}");
        let mut c = EmuConfig::embedded().unwrap();
        c.vswitches[0].cidr = "10.0.0.0/24".into();
        assert!(c.validate().unwrap_err().msg.contains("inside the VPC"));
        for bad in [
            "2408:4005:3c5:a00::/64",
            "2408:4005:3c4:a00::/80",
            "2408:4005:3c4:a00::1/64",
        ] {
            let mut c = EmuConfig::embedded().unwrap();
            c.vswitches[1].ipv6_cidr = Some(bad.into());
            let e = c.validate().unwrap_err();
            assert!(e.msg.contains("must be a /64 inside"), "{bad}: {e}");
        }
        let mut c = EmuConfig::embedded().unwrap();
        c.vswitches[0].ipv6_cidr = None;
        assert!(c.validate().unwrap_err().msg.contains("wants IPv6"));
        let mut c = EmuConfig::embedded().unwrap();
        c.instances[1].ipv6_address_count = 7;
        assert!(
            c.validate()
                .unwrap_err()
                .msg
                .contains("ipv6_address_count 7")
        );
        assert!(EmuConfig::parse("{\"region_id\": 1}").is_err());
        let extra = DEFAULT_CONFIG.replacen("\"seed\"", "\"bogus\": 1, \"seed\"", 1);
        assert!(EmuConfig::parse(&extra).unwrap_err().msg.contains("bogus"));
    }

    #[test]
    fn node_configs_have_the_daemon_keys() {
        let c = EmuConfig::embedded().unwrap();
        let dir = std::env::temp_dir().join(format!("terway-emu-nodecfg-{}", std::process::id()));
        let files = write_node_configs(&c, &dir, |id| NodeEndpoints {
            api: "http://127.0.0.1:1".into(),
            metadata: format!("http://127.0.0.1:1/instances/{id}"),
        })
        .unwrap();
        assert_eq!(files.len(), 2);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
        for k in [
            "daemon_mode",
            "ecs_endpoint",
            "vpc_endpoint",
            "metadata_endpoint",
            "access_key",
            "access_secret",
            "vswitches",
            "security_group",
            "socket_path",
            "state_path",
            "region_id",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["vswitches"]["cn-hangzhou-k"].as_array().unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
