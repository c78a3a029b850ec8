//! `--netns`: the model made real with network namespaces. A `vpc` namespace routes like the VPC
//! (one /32 per assigned address toward the veth of the ENI that owns it, strict reverse-path
//! filtering, proxy ARP as the vSwitch answers for everything, the vSwitch gateways and the
//! metadata/API addresses local). One namespace per instance, named after its id; each attached
//! ENI is a veth whose node end carries the API's MAC (`eth0` for the primary ENI, configured;
//! others appear down and bare, as a fresh NIC does). An ENI device that vanishes while still
//! attached (its pod namespace was destroyed) comes back to its node: see `topology_watch`.
//!
//! IPv6 goes the same way (a /128 per assigned address, the vSwitch IPv6 gateway local, route
//! entries with IPv6 destinations); its spoof protection and NDP are in `topology_v6`.
//!
//! Only namespaces this emulator creates are touched; the root namespace never is.

use crate::emulate::metadata::ipv6_gateway;
use crate::emulate::model::{EniStatus, EniType, Model};
use crate::emulate::topology_v6::{self, Applied6, LOCAL_PREF, Want6};
use crate::emulate::topology_watch;
use crate::netlink::{DEFAULT_DST_V4, DEFAULT_DST_V6, Netlink, Route, TABLE_MAIN, parse_mac};
use crate::netns::NetNs;
use crate::{Error, Kind, Result, ResultExt, err, sysctl};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};
use std::path::PathBuf;
use std::process::Command;

/// The metadata address, as on every ECS instance.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
/// The VPC-internal OpenAPI address (both ECS and VPC APIs answer there, port 80).
pub const API_IP: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 201);

fn ns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| err!(Kind::Datapath, "run ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(err!(
            Kind::Datapath,
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn ns_exists(name: &str) -> bool {
    ns_path(name).exists()
}

/// Deletes those of `names` that exist; returns the ones deleted. Deleting a namespace removes
/// every link in it, and a veth pair goes with either end.
pub fn cleanup(names: &[String]) -> Result<Vec<String>> {
    let mut gone = Vec::new();
    for n in names {
        if ns_exists(n) {
            ip(&["netns", "del", n])?;
            gone.push(n.clone());
        }
    }
    Ok(gone)
}

/// The namespaces of a region: the VPC's and one per instance.
pub fn namespaces(m: &Model, vpc_ns: &str) -> Vec<String> {
    std::iter::once(vpc_ns.to_string())
        .chain(m.instances.keys().cloned())
        .collect()
}

/// A short, stable interface name for the VPC end of an ENI's veth.
pub(super) fn vpc_ifname(eni_id: &str) -> String {
    let h = crate::cloud::sign::sha256_hex(eni_id.as_bytes());
    format!("v{}", &h[..12])
}

pub(super) struct EniLink {
    pub(super) vpc_index: u32,
    /// The node end's MAC: the VPC delivers an ENI's addresses to it without asking ARP.
    pub(super) mac: [u8; 6],
}

/// What the kernel should look like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// ENI id → its link and addresses.
    pub enis: BTreeMap<String, WantEni>,
    /// Custom route entries (VPC mode), IPv4 and IPv6: destination → the ENI (primary of the
    /// next-hop instance).
    pub cidrs: BTreeMap<IpNetwork, String>,
}

/// What the kernel should look like for one ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantEni {
    instance: String,
    node_if: String,
    mac: String,
    primary: Option<(Ipv4Network, Ipv4Addr)>,
    gateway: Ipv4Addr,
    ips: Vec<Ipv4Addr>,
    /// The ENI's IPv6 addresses.
    ipv6: Vec<Ipv6Addr>,
    /// The vSwitch's IPv6 /64 and gateway, when it has IPv6.
    v6_net: Option<(Ipv6Network, Ipv6Addr)>,
    /// For the primary ENI with IPv6: the instance's IPv6 on `eth0`, in the vSwitch's /64.
    primary6: Option<Ipv6Network>,
}

pub struct Topology {
    vpc_name: String,
    vpc: NetNs,
    /// A socket in the vpc namespace.
    pub(super) nl: Netlink,
    nodes: BTreeMap<String, NetNs>,
    /// ENI id → its veth, by the VPC-side end (the node end may be in any namespace).
    pub(super) links: BTreeMap<String, EniLink>,
    /// The /32 and /128 (and route entry) routes in the vpc namespace → the VPC-side index
    /// they use.
    pub(super) routes: BTreeMap<IpNetwork, u32>,
    /// IPv6 spoof-protection rules and proxy NDP entries applied.
    pub(super) v6: Applied6,
}

impl Topology {
    /// Creates the namespaces (none may exist yet) and the static parts of the VPC.
    pub fn build(m: &Model, vpc_name: &str) -> Result<Topology> {
        let names = namespaces(m, vpc_name);
        if let Some(n) = names.iter().find(|n| ns_exists(n)) {
            return Err(err!(
                Kind::Netns,
                "network namespace {n} already exists: another emulator runs, or a previous one \
                 crashed (then run `terway emulate --cleanup` with the same config)"
            ));
        }
        let mut made = Vec::new();
        let r = Topology::build_in(m, vpc_name, &names, &mut made);
        if r.is_err() {
            let _ = cleanup(&made);
        }
        r
    }

    fn build_in(
        m: &Model,
        vpc_name: &str,
        names: &[String],
        made: &mut Vec<String>,
    ) -> Result<Topology> {
        for n in names {
            ip(&["netns", "add", n])?;
            made.push(n.clone());
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        let vpc = NetNs::open(&ns_path(vpc_name))?;
        let mut nl = Netlink::open_in(&vpc)?;
        vpc.run(|| {
            for (k, v) in [
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv4/conf/all/rp_filter", "1"),
                ("net/ipv4/conf/default/rp_filter", "1"),
                ("net/ipv4/conf/default/proxy_arp", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv6/conf/all/proxy_ndp", "1"),
                // The VPC's addresses work at once; it takes no advice from nodes.
                ("net/ipv6/conf/default/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_ra", "0"),
                ("net/ipv6/conf/all/accept_ra", "0"),
            ] {
                sysctl::set(k, v)?;
            }
            Ok(())
        })
        .ctx("configure the vpc namespace")?;
        // Every IPv6 packet passes the per-veth source checks (topology_v6) before any table,
        // the local one included: it moves from priority 0 to after them.
        topology_v6::run_batch(
            vpc_name,
            &[
                format!("rule add pref {LOCAL_PREF} lookup local"),
                "rule del pref 0 lookup local".to_string(),
            ],
        )
        .ctx("move the IPv6 local rule in the vpc namespace")?;
        let lo = nl
            .link_by_name("lo")?
            .ok_or_else(|| err!(Kind::Datapath, "no lo in namespace {vpc_name}"))?;
        let mut local: BTreeSet<Ipv4Addr> = [METADATA_IP, API_IP].into();
        local.extend(m.vswitches.values().map(|v| v.cidr.gateway()));
        for a in local {
            let net = Ipv4Network::new(a, 32).map_err(|e| err!(Kind::Internal, "{e}"))?;
            nl.add_addr(lo.index, IpNetwork::V4(net))?;
        }
        let gw6: BTreeSet<Ipv6Addr> = m
            .vswitches
            .values()
            .filter_map(|v| v.ipv6_cidr.as_ref().map(ipv6_gateway))
            .collect();
        for a in gw6 {
            let net = Ipv6Network::new(a, 128).map_err(|e| err!(Kind::Internal, "{e}"))?;
            nl.add_addr(lo.index, IpNetwork::V6(net))?;
        }
        let mut nodes = BTreeMap::new();
        for id in m.instances.keys() {
            let ns = NetNs::open(&ns_path(id))?;
            // ENI addresses work at once (no DAD wait) and no router advertisement is taken:
            // the VPC sends none, and a node's routes come from its configuration.
            ns.run(|| {
                for k in ["all", "default"] {
                    sysctl::set(&format!("net/ipv6/conf/{k}/accept_dad"), "0")?;
                    sysctl::set(&format!("net/ipv6/conf/{k}/accept_ra"), "0")?;
                }
                Ok(())
            })
            .with_ctx(|| format!("configure node namespace {id}"))?;
            nodes.insert(id.clone(), ns);
        }
        let mut t = Topology {
            vpc_name: vpc_name.to_string(),
            vpc,
            nl,
            nodes,
            links: BTreeMap::new(),
            routes: BTreeMap::new(),
            v6: Applied6::default(),
        };
        t.sync(&Topology::desired(m))?;
        Ok(t)
    }

    /// Binds a TCP listener inside the vpc namespace (for the metadata and API servers).
    pub fn listen(&self, addr: Ipv4Addr, port: u16) -> Result<TcpListener> {
        self.vpc
            .run(move || {
                TcpListener::bind((addr, port))
                    .map_err(|e| Error::io(format!("bind {addr}:{port}"), e))
            })
            .with_ctx(|| format!("netns {}", self.vpc_name))
    }

    /// The desired kernel state for the model (computed under the model lock, applied outside).
    pub fn desired(m: &Model) -> Desired {
        let cidrs = m
            .routes
            .iter()
            .filter(|r| r.next_hop_type == "Instance")
            .filter_map(|r| {
                let dst: IpNetwork = r.destination.parse().ok()?;
                let eni = m.instances.get(&r.next_hop_id)?.primary_eni_id.clone();
                Some((dst, eni))
            })
            .collect();
        let enis = m
            .enis
            .iter()
            .filter(|e| e.eni_type != EniType::Member)
            .filter(|e| e.eni_type == EniType::Primary || e.status == EniStatus::InUse)
            .filter_map(|e| {
                let instance = e.instance_id.clone()?;
                let vsw = m.vswitches.get(&e.vswitch_id)?;
                let primary = (e.eni_type == EniType::Primary)
                    .then(|| {
                        Ipv4Network::new(e.primary_ip, vsw.cidr.prefix)
                            .ok()
                            .map(|n| (n, vsw.cidr.gateway()))
                    })
                    .flatten();
                let mut ips = vec![e.primary_ip];
                ips.extend(e.live_secondary());
                let ipv6: Vec<Ipv6Addr> = e.live_ipv6().collect();
                let v6_net = vsw.ipv6_cidr.and_then(|c| {
                    let net = Ipv6Network::new(c.addr, c.prefix).ok()?;
                    Some((net, ipv6_gateway(&c)))
                });
                let primary6 = match (e.eni_type, v6_net, ipv6.first()) {
                    (EniType::Primary, Some((net, _)), Some(ip)) => {
                        Ipv6Network::new(*ip, net.prefix()).ok()
                    }
                    _ => None,
                };
                Some((
                    e.id.clone(),
                    WantEni {
                        instance,
                        node_if: format!("eth{}", e.device_index.unwrap_or(0)),
                        mac: e.mac.clone(),
                        primary,
                        gateway: vsw.cidr.gateway(),
                        ips,
                        ipv6,
                        v6_net,
                        primary6,
                    },
                ))
            })
            .collect();
        Desired { enis, cidrs }
    }

    /// Makes the kernel match the model: ENI links appear/disappear (and come back when they
    /// vanish while attached), /32 routes follow the assigned addresses.
    pub fn sync(&mut self, want: &Desired) -> Result<()> {
        self.forget_vanished()?;
        let stale: Vec<String> = self
            .links
            .keys()
            .filter(|id| !want.enis.contains_key(*id))
            .cloned()
            .collect();
        for id in stale {
            if let Some(l) = self.links.remove(&id) {
                self.nl
                    .delete_link(l.vpc_index)
                    .with_ctx(|| format!("remove ENI {id}"))?;
                self.routes.retain(|_, idx| *idx != l.vpc_index);
            }
        }
        for (id, w) in &want.enis {
            if !self.links.contains_key(id.as_str()) {
                let link = self
                    .add_eni(id, w)
                    .with_ctx(|| format!("attach ENI {id} to {}", w.instance))?;
                self.links.insert(id.clone(), link);
            }
        }
        let mut routes = BTreeMap::new();
        let mut macs = BTreeMap::new();
        for (id, w) in &want.enis {
            if let Some(l) = self.links.get(id) {
                macs.insert(l.vpc_index, l.mac);
                for ip in &w.ips {
                    routes.insert(IpNetwork::V4((*ip).into()), l.vpc_index);
                }
                for ip in &w.ipv6 {
                    routes.insert(IpNetwork::V6((*ip).into()), l.vpc_index);
                }
            }
        }
        // A route entry's CIDR goes to the instance's primary address (whose MAC the VPC
        // knows, below): the node need not answer ARP for the addresses behind it (its pods).
        // An IPv6 one goes to the ENI's link-local address, whatever IPv6 the node has.
        let mut via: BTreeMap<IpNetwork, IpAddr> = BTreeMap::new();
        for (dst, eni) in &want.cidrs {
            if let Some(l) = self.links.get(eni) {
                let gw = match dst {
                    IpNetwork::V4(_) => want
                        .enis
                        .get(eni)
                        .and_then(|w| w.primary)
                        .map(|(net, _)| IpAddr::V4(net.ip())),
                    IpNetwork::V6(_) => Some(IpAddr::V6(topology_v6::eui64_link_local(l.mac))),
                };
                routes.insert(*dst, l.vpc_index);
                if let Some(gw) = gw {
                    via.insert(*dst, gw);
                }
            }
        }
        let old: Vec<(IpNetwork, u32)> = self.routes.iter().map(|(a, b)| (*a, *b)).collect();
        for (ip, idx) in old {
            if routes.get(&ip) != Some(&idx) {
                self.nl.del_route(&host_route(ip, idx))?;
                self.routes.remove(&ip);
            }
        }
        for (ip, idx) in routes {
            if self.routes.get(&ip) != Some(&idx) {
                // The VPC knows which ENI holds an address: no ARP toward the node (a node does
                // not answer ARP for its pods' addresses, and need not on the real VPC).
                let host = matches!(
                    ip,
                    IpNetwork::V4(n) if n.prefix() == 32
                ) || matches!(ip, IpNetwork::V6(n) if n.prefix() == 128);
                let neigh = match via.get(&ip) {
                    Some(IpAddr::V6(ll)) => Some(IpAddr::V6(*ll)),
                    _ if host => Some(ip.ip()),
                    _ => None,
                };
                if let (Some(addr), Some(mac)) = (neigh, macs.get(&idx)) {
                    self.nl.replace_neigh_permanent(idx, addr, *mac)?;
                }
                let route = match via.get(&ip) {
                    Some(gw) => Route {
                        gateway: Some(*gw),
                        scope_link: false,
                        // The IPv4 next hop is the node's address, off the veth's (absent)
                        // subnet; the IPv6 one is link-local, on-link by definition.
                        onlink: gw.is_ipv4(),
                        ..host_route(ip, idx)
                    },
                    None => host_route(ip, idx),
                };
                self.nl.replace_route(&route)?;
                self.routes.insert(ip, idx);
            }
        }
        let want6 = self.want6(want);
        self.v6.sync(&self.vpc_name, &want6)
    }

    /// The IPv6 sources each ENI veth may send from and the addresses the VPC answers NDP for
    /// on it (its vSwitch's gateway and the same /64's addresses of the other ENIs).
    fn want6(&self, want: &Desired) -> Want6 {
        let mut out = Want6::default();
        for (id, w) in &want.enis {
            if !self.links.contains_key(id) {
                continue;
            }
            let dev = vpc_ifname(id);
            let mut allowed: BTreeSet<Ipv6Network> = [topology_v6::link_local()].into();
            allowed.extend(w.ipv6.iter().map(|ip| Ipv6Network::from(*ip)));
            allowed.extend(
                want.cidrs
                    .iter()
                    .filter(|(_, e)| *e == id)
                    .filter_map(|(dst, _)| match dst {
                        IpNetwork::V6(n) => Some(*n),
                        IpNetwork::V4(_) => None,
                    }),
            );
            out.allowed.insert(dev.clone(), allowed);
            if let Some((net, gw)) = w.v6_net {
                let mut answer: BTreeSet<Ipv6Addr> = [gw].into();
                answer.extend(
                    want.enis
                        .iter()
                        .filter(|(other, _)| *other != id && self.links.contains_key(*other))
                        .flat_map(|(_, o)| o.ipv6.iter().copied())
                        .filter(|ip| net.contains(*ip)),
                );
                out.proxies.insert(dev, answer);
            }
        }
        out
    }

    /// Creates the ENI's veth (node end named `eth<device index>`, or the lowest free `eth<N>`
    /// when that is taken) and configures both ends; a half-made veth is removed again.
    fn add_eni(&mut self, eni_id: &str, w: &WantEni) -> Result<EniLink> {
        let node = self
            .nodes
            .get(&w.instance)
            .ok_or_else(|| err!(Kind::Internal, "no namespace for instance {}", w.instance))?;
        let mut nn = Netlink::open_in(node)?;
        let taken: BTreeSet<String> = nn.links()?.into_iter().map(|l| l.name).collect();
        let node_if = topology_watch::fresh_ifname(&w.node_if, &taken);
        let vpc_if = vpc_ifname(eni_id);
        self.nl.create_veth(&vpc_if, &node_if, node, 1500)?;
        let r = self.configure_eni(&vpc_if, &node_if, w, &mut nn);
        if r.is_err()
            && let Ok(Some(l)) = self.nl.link_by_name(&vpc_if)
        {
            let _ = self.nl.delete_link(l.index);
        }
        r
    }

    fn configure_eni(
        &mut self,
        vpc_if: &str,
        node_if: &str,
        w: &WantEni,
        nn: &mut Netlink,
    ) -> Result<EniLink> {
        let vl = self
            .nl
            .link_by_name(vpc_if)?
            .ok_or_else(|| err!(Kind::Datapath, "veth {vpc_if} vanished"))?;
        let key_if = vpc_if.to_string();
        self.vpc.run(move || {
            sysctl::set(&format!("net/ipv4/conf/{key_if}/proxy_arp"), "1")?;
            // Proxy ARP answers after a random delay (up to 0.8 s) by default; the VPC does not.
            sysctl::set(&format!("net/ipv4/neigh/{key_if}/proxy_delay"), "0")?;
            sysctl::set(&format!("net/ipv6/neigh/{key_if}/proxy_delay"), "0")?;
            sysctl::set(&sysctl::rp_filter_key(&key_if), "1")
        })?;
        self.nl.set_link_up(vl.index)?;
        let nlk = nn
            .link_by_name(node_if)?
            .ok_or_else(|| err!(Kind::Datapath, "{node_if} vanished in {}", w.instance))?;
        // The netlink module has no "set address" operation; iproute2 does it.
        let mac = parse_mac(&w.mac)?;
        ip(&[
            "-n",
            &w.instance,
            "link",
            "set",
            "dev",
            node_if,
            "address",
            &w.mac,
        ])?;
        if let Some((net, gw)) = w.primary {
            nn.set_link_up(nlk.index)?;
            nn.add_addr(nlk.index, IpNetwork::V4(net))?;
            nn.replace_route(&Route {
                dst: DEFAULT_DST_V4,
                gateway: Some(gw.into()),
                oif: Some(nlk.index),
                table: TABLE_MAIN,
                scope_link: false,
                onlink: false,
            })?;
        }
        if let (Some(net), Some((_, gw6))) = (w.primary6, w.v6_net) {
            nn.set_link_up(nlk.index)?;
            nn.add_addr(nlk.index, IpNetwork::V6(net))?;
            nn.replace_route(&Route {
                dst: DEFAULT_DST_V6,
                gateway: Some(gw6.into()),
                oif: Some(nlk.index),
                table: TABLE_MAIN,
                scope_link: false,
                onlink: false,
            })?;
        }
        // The VPC gateway answers ARP from any sender, also from an ENI that carries no
        // address (shared ENI mode); Linux with strict rp_filter would not, so the emulator
        // gives the node the answer up front. The same for the IPv6 gateway.
        if let Some(vpc_mac) = vl.mac {
            nn.replace_neigh_permanent(nlk.index, IpAddr::V4(w.gateway), vpc_mac)?;
            if let Some((_, gw6)) = w.v6_net {
                nn.replace_neigh_permanent(nlk.index, IpAddr::V6(gw6), vpc_mac)?;
            }
        }
        Ok(EniLink {
            vpc_index: vl.index,
            mac,
        })
    }
}

fn host_route(dst: IpNetwork, oif: u32) -> Route {
    Route {
        dst,
        gateway: None,
        oif: Some(oif),
        table: TABLE_MAIN,
        scope_link: true,
        onlink: false,
    }
}
