//! `--netns`: the model made real with network namespaces. A `vpc` namespace routes like the VPC
//! (one /32 per assigned address toward the veth of the ENI that owns it, strict reverse-path
//! filtering, proxy ARP as the vSwitch answers for everything, the vSwitch gateways and the
//! metadata/API addresses local). One namespace per instance, named after its id; each attached
//! ENI is a veth whose node end carries the API's MAC (`eth0` for the primary ENI, configured;
//! others appear down and bare, as a fresh NIC does). An ENI device that vanishes while still
//! attached (its pod namespace was destroyed) comes back to its node: see `topology_watch`.
//!
//! Only namespaces this emulator creates are touched; the root namespace never is.

use crate::emulate::model::{EniStatus, EniType, Model};
use crate::emulate::topology_watch;
use crate::netlink::{DEFAULT_DST_V4, Netlink, Route, TABLE_MAIN, parse_mac};
use crate::netns::NetNs;
use crate::{Error, Kind, Result, ResultExt, err, sysctl};
use ipnetwork::{IpNetwork, Ipv4Network};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, TcpListener};
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
    /// Custom route entries (VPC mode): destination → the ENI (primary of the next-hop instance).
    pub cidrs: BTreeMap<Ipv4Network, String>,
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
}

pub struct Topology {
    vpc_name: String,
    vpc: NetNs,
    /// A socket in the vpc namespace.
    pub(super) nl: Netlink,
    nodes: BTreeMap<String, NetNs>,
    /// ENI id → its veth, by the VPC-side end (the node end may be in any namespace).
    pub(super) links: BTreeMap<String, EniLink>,
    /// The /32 (and route entry) routes in the vpc namespace → the VPC-side index they use.
    pub(super) routes: BTreeMap<Ipv4Network, u32>,
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
            ] {
                sysctl::set(k, v)?;
            }
            Ok(())
        })
        .ctx("configure the vpc namespace")?;
        let lo = nl
            .link_by_name("lo")?
            .ok_or_else(|| err!(Kind::Datapath, "no lo in namespace {vpc_name}"))?;
        let mut local: BTreeSet<Ipv4Addr> = [METADATA_IP, API_IP].into();
        local.extend(m.vswitches.values().map(|v| v.cidr.gateway()));
        for a in local {
            let net = Ipv4Network::new(a, 32).map_err(|e| err!(Kind::Internal, "{e}"))?;
            nl.add_addr(lo.index, IpNetwork::V4(net))?;
        }
        let mut nodes = BTreeMap::new();
        for id in m.instances.keys() {
            nodes.insert(id.clone(), NetNs::open(&ns_path(id))?);
        }
        let mut t = Topology {
            vpc_name: vpc_name.to_string(),
            vpc,
            nl,
            nodes,
            links: BTreeMap::new(),
            routes: BTreeMap::new(),
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
                let dst: Ipv4Network = r.destination.parse().ok()?;
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
                Some((
                    e.id.clone(),
                    WantEni {
                        instance,
                        node_if: format!("eth{}", e.device_index.unwrap_or(0)),
                        mac: e.mac.clone(),
                        primary,
                        gateway: vsw.cidr.gateway(),
                        ips,
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
                    routes.insert(Ipv4Network::from(*ip), l.vpc_index);
                }
            }
        }
        // A route entry's CIDR goes to the instance's primary address (whose MAC the VPC
        // knows, below): the node need not answer ARP for the addresses behind it (its pods).
        let mut via = BTreeMap::new();
        for (dst, eni) in &want.cidrs {
            if let Some(l) = self.links.get(eni) {
                routes.insert(*dst, l.vpc_index);
                if let Some((net, _)) = want.enis.get(eni).and_then(|w| w.primary) {
                    via.insert(*dst, net.ip());
                }
            }
        }
        let old: Vec<(Ipv4Network, u32)> = self.routes.iter().map(|(a, b)| (*a, *b)).collect();
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
                if let (32, Some(mac)) = (ip.prefix(), macs.get(&idx)) {
                    self.nl
                        .replace_neigh_permanent(idx, std::net::IpAddr::V4(ip.ip()), *mac)?;
                }
                let route = match via.get(&ip) {
                    Some(gw) => Route {
                        gateway: Some((*gw).into()),
                        scope_link: false,
                        onlink: true,
                        ..host_route(ip, idx)
                    },
                    None => host_route(ip, idx),
                };
                self.nl.replace_route(&route)?;
                self.routes.insert(ip, idx);
            }
        }
        Ok(())
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
        // The VPC gateway answers ARP from any sender, also from an ENI that carries no
        // address (shared ENI mode); Linux with strict rp_filter would not, so the emulator
        // gives the node the answer up front.
        if let Some(vpc_mac) = vl.mac {
            nn.replace_neigh_permanent(nlk.index, std::net::IpAddr::V4(w.gateway), vpc_mac)?;
        }
        Ok(EniLink {
            vpc_index: vl.index,
            mac,
        })
    }
}

fn host_route(dst: Ipv4Network, oif: u32) -> Route {
    Route {
        dst: IpNetwork::V4(dst),
        gateway: None,
        oif: Some(oif),
        table: TABLE_MAIN,
        scope_link: true,
        onlink: false,
    }
}
