//! What both ENI pools say to the daemon and keep about an ENI: the cloud's facts about it, a
//! failed call, a pod's lease, op ids, and the persisted record of an ENI's identity and network.
//!
//! The public types are re-exported by [`crate::pool::shared_eni`] and
//! [`crate::pool::exclusive_eni`], where the daemon names them.

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Numbers the cloud ops a pool hands out (never 0).
pub type OpId = u64;

/// What the cloud says about one ENI (from CreateNetworkInterface / DescribeNetworkInterfaces / metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniFacts {
    pub id: String,
    pub mac: String,
    pub vswitch_id: String,
    pub vswitch_cidr: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Its IPv6 addresses (`Ipv6Sets`), when its vSwitch has IPv6.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6s: Vec<Ipv6Addr>,
    /// The vSwitch's IPv6 network and the ENI's IPv6 gateway, when its vSwitch has IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<EniV6>,
}

/// The IPv6 side of an ENI's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniV6 {
    pub vswitch_cidr: Ipv6Network,
    pub gateway: Ipv6Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudFailure {
    /// e.g. "InvalidVSwitchId.IpNotEnough", "Throttling.User", "EniPerInstanceLimitExceeded"
    pub code: String,
    /// e.g. The specified VSwitch "vsw-x" has not enough IpAddress.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub eni_id: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub vswitch_cidr: Ipv4Network,
    /// Dual stack: the pod's IPv6 from the same ENI, with the ENI's IPv6 network.
    pub ip6: Option<(Ipv6Addr, EniV6)>,
}

/// An ENI's identity and network as the pools persist it. Both pools flatten it into their ENI
/// record, so the state file keeps these as fields of the ENI itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EniInfo {
    pub id: String,
    pub mac: String,
    pub vswitch_id: String,
    pub vswitch_cidr: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub primary_ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<EniV6>,
}

impl EniInfo {
    /// The cloud's view (its secondary IPs aside).
    pub fn of(f: &EniFacts) -> EniInfo {
        EniInfo {
            id: f.id.clone(),
            mac: f.mac.clone(),
            vswitch_id: f.vswitch_id.clone(),
            vswitch_cidr: f.vswitch_cidr,
            gateway: f.gateway,
            primary_ip: f.primary_ip,
            v6: f.v6,
        }
    }

    /// `ip` (and `ip6`, dual stack) of this ENI, for a pod.
    pub fn lease(&self, ip: Ipv4Addr, ip6: Option<Ipv6Addr>) -> Lease {
        Lease {
            eni_id: self.id.clone(),
            mac: self.mac.clone(),
            ip,
            gateway: self.gateway,
            vswitch_cidr: self.vswitch_cidr,
            ip6: ip6.zip(self.v6),
        }
    }
}

/// For `skip_serializing_if`: flags are written only when set.
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_of_facts_and_its_lease() {
        let f = EniFacts {
            id: "eni-1".into(),
            mac: "00:16:3e:00:00:01".into(),
            vswitch_id: "vsw-AAA".into(),
            vswitch_cidr: "10.1.0.0/16".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            primary_ip: "10.1.0.11".parse().unwrap(),
            secondary_ips: vec!["10.1.0.12".parse().unwrap()],
            ipv6s: Vec::new(),
            v6: None,
        };
        let info = EniInfo::of(&f);
        assert_eq!((info.id.as_str(), info.primary_ip), ("eni-1", f.primary_ip));
        let l = info.lease("10.1.0.12".parse().unwrap(), None);
        assert_eq!(
            l,
            Lease {
                eni_id: "eni-1".into(),
                mac: f.mac.clone(),
                ip: "10.1.0.12".parse().unwrap(),
                gateway: f.gateway,
                vswitch_cidr: f.vswitch_cidr,
                ip6: None,
            }
        );
        // Written as plain fields (the pools flatten it into their ENI record).
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"id":"eni-1","mac":"00:16:3e:00:00:01","vswitch_id":"vsw-AAA","vswitch_cidr":"10.1.0.0/16","gateway":"10.1.0.1","primary_ip":"10.1.0.11"}"#
        );
    }
}
