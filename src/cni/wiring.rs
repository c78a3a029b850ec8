//! How the plugin wires a pod for the daemon's `Datapath` answer: the veth always, plus the
//! policy rules of shared ENI mode. ADD, DEL, CHECK and GC all go through here.

use crate::datapath::{VethInfo, VethSpec, policy, veth};
use crate::netlink::Netlink;
use crate::rpc::Datapath;
use crate::{Error, Result};
use std::net::Ipv4Addr;

pub fn wire(spec: &VethSpec, dp: &Datapath) -> Result<VethInfo> {
    let info = veth::setup(spec)?;
    if let Datapath::VethPolicy { table, .. } = dp {
        let rules =
            Netlink::open().and_then(|mut nl| policy::setup_pod_rules(&mut nl, spec.ip, *table));
        if let Err(e) = rules {
            let _ = veth::teardown(spec.host_ifname);
            return Err(e);
        }
    }
    Ok(info)
}

pub fn check(spec: &VethSpec, dp: &Datapath) -> Result<()> {
    veth::check(spec)?;
    if let Datapath::VethPolicy { table, .. } = dp {
        let mut nl = Netlink::open()?;
        policy::check_pod_rules(&mut nl, spec.ip, *table)?;
    }
    Ok(())
}

/// Removes the host veth(s) and the policy rules of `ips`. Every step is tried; the first
/// error is returned. Missing pieces are not errors.
pub fn unwire(host_ifnames: &[String], ips: &[Ipv4Addr]) -> Result<()> {
    let mut first: Option<Error> = None;
    for name in host_ifnames {
        if let Err(e) = veth::teardown(name) {
            first.get_or_insert(e.context(format!("remove {name}")));
        }
    }
    if !ips.is_empty() {
        match Netlink::open() {
            Ok(mut nl) => {
                for ip in ips {
                    if let Err(e) = policy::teardown_pod_rules(&mut nl, *ip) {
                        first.get_or_insert(e.context(format!("remove rules of {ip}")));
                    }
                }
            }
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Whether any of these host links still exists (a DEL that has not run before).
pub fn any_link_exists(host_ifnames: &[String]) -> bool {
    let Ok(mut nl) = Netlink::open() else {
        return true;
    };
    host_ifnames
        .iter()
        .any(|n| !matches!(nl.link_by_name(n), Ok(None)))
}
