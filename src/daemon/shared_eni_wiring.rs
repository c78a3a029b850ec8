//! How shared ENI mode wires a pod: the datapath new pods get (ipvlan when configured and the
//! kernel has it, else veth policy routing), and a lease turned into the pod's addresses and
//! datapath.

use crate::config::VirtualType;
use crate::model::{Datapath, HostPeer, PodAddress};
use crate::pool::shared_eni::Lease;
use crate::rpc::DatapathView;

/// The datapath new pods get: `eniip_virtual_type` as configured, unless the kernel cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatapathChoice {
    pub configured: VirtualType,
    pub effective: VirtualType,
}

/// What the daemon says (once, at start) when it cannot do what the config asks.
pub const NO_IPVLAN: &str = "ipvlan not supported by this kernel: using veth policy routing";

impl DatapathChoice {
    /// `kernel_has_ipvlan` is asked only when the config wants ipvlan.
    pub fn decide(configured: VirtualType, kernel_has_ipvlan: impl FnOnce() -> bool) -> Self {
        let effective = match configured {
            VirtualType::Ipvlan if kernel_has_ipvlan() => VirtualType::Ipvlan,
            _ => VirtualType::Veth,
        };
        DatapathChoice {
            configured,
            effective,
        }
    }

    pub fn fell_back(&self) -> bool {
        self.configured != self.effective
    }

    pub(super) fn view(&self) -> DatapathView {
        DatapathView {
            configured: self.configured.to_string(),
            effective: self.effective.to_string(),
            reason: if self.fell_back() {
                NO_IPVLAN.to_string()
            } else {
                String::new()
            },
        }
    }
}

/// How one allocation is wired: with veth and policy routing, or as an ipvlan of its ENI
/// (routing these to the node).
#[derive(Debug, Clone, Copy)]
pub(super) enum Wiring<'a> {
    Veth,
    Ipvlan(&'a HostPeer),
}

impl<'a> Wiring<'a> {
    /// As the allocation was wired: a pod keeps its datapath whatever the config says now.
    pub(super) fn recorded(dp: &'a Datapath) -> Wiring<'a> {
        match dp {
            Datapath::Ipvlan { to_node, .. } => Wiring::Ipvlan(to_node),
            _ => Wiring::Veth,
        }
    }
}

/// The address and datapath of `lease` on an ENI with route table `table`: a /32 behind a
/// veth, or the address with its vSwitch prefix and gateway on an ipvlan of the ENI.
/// With dual stack, the IPv6 of the lease likewise (/128 behind a veth, whose gateway the
/// datapath makes `fe80::1`).
pub(super) fn wire_lease(lease: &Lease, table: u32, how: Wiring) -> (PodAddress, Datapath) {
    let with_v6 = |a: PodAddress, on_eni: bool| match lease.ip6 {
        Some((ip6, v6)) if on_eni => a.with_v6(ip6, v6.vswitch_cidr.prefix(), Some(v6.gateway)),
        Some((ip6, _)) => a.with_v6(ip6, 128, None),
        None => a,
    };
    match how {
        Wiring::Veth => (
            with_v6(PodAddress::v4(lease.ip, 32, None), false),
            Datapath::VethPolicy {
                table,
                eni_id: lease.eni_id.clone(),
            },
        ),
        Wiring::Ipvlan(to_node) => (
            with_v6(
                PodAddress::v4(lease.ip, lease.vswitch_cidr.prefix(), Some(lease.gateway)),
                true,
            ),
            Datapath::Ipvlan {
                eni_id: lease.eni_id.clone(),
                mac: lease.mac.clone(),
                to_node: to_node.clone(),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            eni_id: "eni-1".into(),
            mac: "02:16:3e:00:00:01".into(),
            ip: "172.16.0.10".parse().unwrap(),
            gateway: "172.16.0.253".parse().unwrap(),
            vswitch_cidr: "172.16.0.0/24".parse().unwrap(),
            ip6: None,
        }
    }

    #[test]
    fn the_kernel_is_asked_only_when_ipvlan_is_configured() {
        let veth = DatapathChoice::decide(VirtualType::Veth, || panic!("not asked"));
        assert_eq!(veth.effective, VirtualType::Veth);
        assert!(!veth.fell_back());
        assert_eq!(veth.view().reason, "");
        let yes = DatapathChoice::decide(VirtualType::Ipvlan, || true);
        assert_eq!(yes.effective, VirtualType::Ipvlan);
        assert!(!yes.fell_back());
        let no = DatapathChoice::decide(VirtualType::Ipvlan, || false);
        assert_eq!(no.effective, VirtualType::Veth);
        assert!(no.fell_back());
        let v = no.view();
        assert_eq!(
            (v.configured.as_str(), v.effective.as_str()),
            ("ipvlan", "veth")
        );
        assert_eq!(v.reason, NO_IPVLAN);
    }

    #[test]
    fn leases_are_wired_as_asked() {
        let (addr, dp) = wire_lease(&lease(), 1003, Wiring::Veth);
        assert_eq!(addr, PodAddress::v4(lease().ip, 32, None));
        assert_eq!(
            dp,
            Datapath::VethPolicy {
                table: 1003,
                eni_id: "eni-1".into()
            }
        );
        let to_node = HostPeer {
            service_cidr: Some("10.96.0.0/12".parse().unwrap()),
            node_ips: vec!["172.16.0.5".parse().unwrap()],
        };
        let (addr, dp) = wire_lease(&lease(), 1003, Wiring::Ipvlan(&to_node));
        assert_eq!(
            addr,
            PodAddress::v4(lease().ip, 24, Some(lease().gateway)),
            "the vSwitch prefix and gateway"
        );
        assert_eq!(
            dp,
            Datapath::Ipvlan {
                eni_id: "eni-1".into(),
                mac: "02:16:3e:00:00:01".into(),
                to_node: to_node.clone()
            }
        );
    }

    #[test]
    fn a_pod_keeps_the_datapath_it_was_wired_with() {
        let to_node = HostPeer::default();
        let ipvlan = Datapath::Ipvlan {
            eni_id: "eni-1".into(),
            mac: "02:16:3e:00:00:01".into(),
            to_node,
        };
        assert!(matches!(Wiring::recorded(&ipvlan), Wiring::Ipvlan(_)));
        let veth = Datapath::VethPolicy {
            table: 1003,
            eni_id: "eni-1".into(),
        };
        assert!(matches!(Wiring::recorded(&veth), Wiring::Veth));
        // A migrated schema-1 allocation says veth.
        assert!(matches!(Wiring::recorded(&Datapath::Veth), Wiring::Veth));
    }
}
