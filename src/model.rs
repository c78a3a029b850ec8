//! The shared vocabulary of plugin, daemon, RPC, state file and datapaths: who an attachment is,
//! which addresses it holds (IPv4 and/or IPv6, with their gateways) and what they ride on.
//! Depends on nothing of the crate but serde types.

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An attachment as the CNI spec keys it: (network name, container id, interface name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachKey {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl AttachKey {
    pub fn new(network: &str, container_id: &str, ifname: &str) -> AttachKey {
        AttachKey {
            network: network.into(),
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

impl fmt::Display for AttachKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// Who the pod is (from `CNI_ARGS`); empty fields when the runtime did not say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// One family's address of a pod, as the pod sees it: the address with the prefix length its
/// interface gets (/32 behind a veth, the vSwitch's on an ENI) and the gateway it routes via.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub addr: IpNetwork,
    pub gateway: Option<IpAddr>,
}

impl IpConfig {
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

/// The addresses of one attachment: an IPv4, an IPv6, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAddress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<IpConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<IpConfig>,
}

impl PodAddress {
    /// An IPv4-only address (`ip/prefix`, optional gateway).
    pub fn v4(ip: Ipv4Addr, prefix: u8, gateway: Option<Ipv4Addr>) -> PodAddress {
        PodAddress {
            ipv4: Some(IpConfig {
                addr: IpNetwork::new(IpAddr::V4(ip), prefix.min(32))
                    .unwrap_or_else(|_| IpNetwork::from(IpAddr::V4(ip))),
                gateway: gateway.map(IpAddr::V4),
            }),
            ipv6: None,
        }
    }

    /// This address with `ip6/prefix` (and its gateway) as the IPv6 too.
    pub fn with_v6(mut self, ip6: Ipv6Addr, prefix: u8, gateway: Option<Ipv6Addr>) -> PodAddress {
        self.ipv6 = Some(IpConfig {
            addr: IpNetwork::new(IpAddr::V6(ip6), prefix.min(128))
                .unwrap_or_else(|_| IpNetwork::from(IpAddr::V6(ip6))),
            gateway: gateway.map(IpAddr::V6),
        });
        self
    }

    pub fn ipv6_addr(&self) -> Option<Ipv6Addr> {
        match self.ipv6?.addr.ip() {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        }
    }

    pub fn ipv4_addr(&self) -> Option<Ipv4Addr> {
        match self.ipv4?.addr.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }

    /// Every address, IPv4 first.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4.iter().chain(self.ipv6.iter()).map(|c| c.ip())
    }
}

impl fmt::Display for PodAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ips: Vec<String> = self.ips().map(|i| i.to_string()).collect();
        if ips.is_empty() {
            f.write_str("(no address)")
        } else {
            f.write_str(&ips.join(", "))
        }
    }
}

/// How the plugin wires an attachment; recorded with the allocation so a pod keeps the datapath
/// it was wired with across restarts and config changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Datapath {
    /// veth pair, pod address /32, host route to the pod (VPC mode).
    Veth,
    /// veth as above plus policy routing: traffic from the pod leaves through its ENI, whose
    /// route table (`table`, prepared by the daemon) points at the vSwitch gateway.
    VethPolicy { table: u32, eni_id: String },
    /// The ENI's own device becomes the pod's interface (exclusive ENI mode), plus optionally a
    /// veth `veth1` to the node for the service CIDR and node traffic.
    ExclusiveEni {
        eni_id: String,
        mac: String,
        #[serde(default)]
        host_peer: Option<HostPeer>,
    },
    /// An ipvlan L2 slave of the ENI (found by `mac`) is the pod's interface (shared ENI mode
    /// with `eniip_virtual_type: ipvlan`): the pod address with the vSwitch prefix, default
    /// route via the vSwitch gateway. What `to_node` names goes to the node's own stack
    /// instead; the node reaches the pod through its own slave of the ENI.
    Ipvlan {
        eni_id: String,
        mac: String,
        #[serde(default)]
        to_node: HostPeer,
    },
}

impl Datapath {
    /// The name the state file and `terway pool` use for it.
    pub const VETH: &'static str = "veth";
    pub const VETH_POLICY: &'static str = "veth_policy";
    pub const EXCLUSIVE_ENI: &'static str = "exclusive_eni";
    pub const IPVLAN: &'static str = "ipvlan";

    pub fn name(&self) -> &'static str {
        match self {
            Datapath::Veth => Datapath::VETH,
            Datapath::VethPolicy { .. } => Datapath::VETH_POLICY,
            Datapath::ExclusiveEni { .. } => Datapath::EXCLUSIVE_ENI,
            Datapath::Ipvlan { .. } => Datapath::IPVLAN,
        }
    }
}

/// What a pod sends to the node's own stack rather than into the VPC: the service CIDR (so
/// kube-proxy's rules apply) and the node's addresses. Through `veth1` in exclusive ENI mode,
/// through the ENI's ipvlan to the node in ipvlan mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPeer {
    #[serde(default)]
    pub service_cidr: Option<ipnetwork::Ipv4Network>,
    #[serde(default)]
    pub node_ips: Vec<Ipv4Addr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_address_shapes() {
        let a = PodAddress::v4(
            Ipv4Addr::new(10, 0, 0, 5),
            24,
            Some(Ipv4Addr::new(10, 0, 0, 253)),
        );
        assert_eq!(a.ipv4_addr(), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(a.ipv4.unwrap().addr.prefix(), 24);
        assert_eq!(a.to_string(), "10.0.0.5");
        let json = serde_json::to_value(&a).unwrap();
        assert!(json.get("ipv6").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<PodAddress>(json).unwrap(), a);
        assert_eq!(PodAddress::default().to_string(), "(no address)");
    }

    #[test]
    fn datapaths_are_tagged_by_their_names() {
        let dp = Datapath::Ipvlan {
            eni_id: "eni-1".into(),
            mac: "02:00:00:00:00:01".into(),
            to_node: HostPeer {
                service_cidr: Some("10.96.0.0/12".parse().unwrap()),
                node_ips: vec![Ipv4Addr::new(10, 0, 0, 2)],
            },
        };
        let json = serde_json::to_value(&dp).unwrap();
        assert_eq!(json["kind"], dp.name());
        assert_eq!(json["to_node"]["service_cidr"], "10.96.0.0/12");
        assert_eq!(serde_json::from_value::<Datapath>(json).unwrap(), dp);
        for dp in [
            Datapath::Veth,
            Datapath::VethPolicy {
                table: 1003,
                eni_id: "eni-1".into(),
            },
        ] {
            assert_eq!(serde_json::to_value(&dp).unwrap()["kind"], dp.name());
        }
        // Written without `to_node` (an older file): nothing routed to the node.
        let bare: Datapath = serde_json::from_value(
            serde_json::json!({"kind": "ipvlan", "eni_id": "eni-1", "mac": "02:00:00:00:00:01"}),
        )
        .unwrap();
        assert!(matches!(bare, Datapath::Ipvlan { to_node, .. } if to_node == HostPeer::default()));
    }

    #[test]
    fn keys_show_as_the_cni_spec_names_them() {
        let k = AttachKey::new("terway", "abc", "eth0");
        assert_eq!(k.to_string(), "abc/eth0");
    }
}
