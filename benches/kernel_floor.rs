//! The kernel floor of a pod's ADD and DEL: only the netlink operations the veth policy-routing
//! datapath performs, from one process that is already running (no exec, no RPC, no state
//! file, no namespace checks). What a CNI plugin cannot go below on this kernel; the bench
//! scripts show terway's and ptp's ADD and DEL as ratios to it.
//!
//! Run as root inside the node namespace to compare with (the scripts do):
//!   cargo bench --bench kernel_floor -- [N]
//! Prints `floor ADD <median us>` and `floor DEL <median us>` (and every sample with -v).

use ipnetwork::{IpNetwork, Ipv4Network};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use terway::netlink::{DEFAULT_DST_V4, Family, Netlink, Route, Rule, TABLE_MAIN};
use terway::netns::NetNs;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Some ENI table (it need not exist for the rule to be added).
const TABLE: u32 = 1099;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let verbose = args.iter().any(|a| a == "-v");
    let n: usize = args
        .iter()
        .find(|a| *a != "-v")
        .map(|a| a.parse().expect("N must be a number"))
        .unwrap_or(50);
    let tag = std::process::id() % 10_000;
    let names: Vec<String> = (0..n).map(|i| format!("twfloor-{tag}-{i}")).collect();
    for ns in &names {
        ip(&["netns", "add", ns]);
    }
    let mut add = Vec::new();
    let mut del = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for (i, ns) in names.iter().enumerate() {
            let pod_ip = Ipv4Addr::new(10, 254, (i / 250) as u8, (i % 250 + 2) as u8);
            let host_name = format!("twfl{tag}x{i}");
            let t = Instant::now();
            wire(ns, &host_name, pod_ip).unwrap_or_else(|e| panic!("ADD {ns}: {e}"));
            add.push(t.elapsed().as_micros() as u64);
            let t = Instant::now();
            unwire(&host_name, pod_ip).unwrap_or_else(|e| panic!("DEL {ns}: {e}"));
            del.push(t.elapsed().as_micros() as u64);
        }
    }));
    for ns in &names {
        ip(&["netns", "del", ns]);
    }
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    if verbose {
        println!("samples ADD {add:?}");
        println!("samples DEL {del:?}");
    }
    println!("floor ADD {}", median(&mut add));
    println!("floor DEL {}", median(&mut del));
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {} failed", args.join(" "));
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn pod_rules(pod: IpNetwork) -> [Rule; 2] {
    [
        Rule {
            family: Family::V4,
            priority: 512,
            src: None,
            dst: Some(pod),
            table: TABLE_MAIN,
        },
        Rule {
            family: Family::V4,
            priority: 2048,
            src: Some(pod),
            dst: None,
            table: TABLE,
        },
    ]
}

/// What ADD's datapath does on the kernel: a veth with its peer created in the pod, the pod's
/// address, links up, the node's /32 route, the pod's default route and permanent neighbour
/// for the gateway, and the two policy rules.
fn wire(ns: &str, host_name: &str, pod_ip: Ipv4Addr) -> terway::Result<()> {
    let netns = NetNs::open(&Path::new("/run/netns").join(ns))?;
    let mut host = Netlink::open()?;
    let mut pod = Netlink::open_in(&netns)?;
    host.create_veth(host_name, "eth0", &netns, 1500)?;
    let h = host.link_by_name(host_name)?.expect("host veth");
    let p = pod.link_by_name("eth0")?.expect("pod veth");
    let lo = pod.link_by_name("lo")?.expect("lo");
    let pod_net = IpNetwork::V4(Ipv4Network::from(pod_ip));
    pod.set_link_up(lo.index)?;
    pod.add_addr(p.index, pod_net)?;
    pod.set_link_up(p.index)?;
    host.set_link_up(h.index)?;
    host.add_route(&Route {
        dst: pod_net,
        gateway: None,
        oif: Some(h.index),
        table: TABLE_MAIN,
        scope_link: true,
        onlink: false,
    })?;
    pod.add_route(&Route {
        dst: DEFAULT_DST_V4,
        gateway: Some(IpAddr::V4(GATEWAY)),
        oif: Some(p.index),
        table: TABLE_MAIN,
        scope_link: false,
        onlink: true,
    })?;
    pod.replace_neigh_permanent(p.index, IpAddr::V4(GATEWAY), h.mac.expect("mac"))?;
    for r in &pod_rules(pod_net) {
        host.add_rule(r)?;
    }
    Ok(())
}

/// What DEL does on the kernel: delete the host veth (its peer and routes go with it) and the
/// two rules.
fn unwire(host_name: &str, pod_ip: Ipv4Addr) -> terway::Result<()> {
    let mut host = Netlink::open()?;
    let h = host.link_by_name(host_name)?.expect("host veth");
    host.delete_link(h.index)?;
    for r in &pod_rules(IpNetwork::V4(Ipv4Network::from(pod_ip))) {
        host.del_rule(r)?;
    }
    Ok(())
}
