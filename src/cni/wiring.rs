//! How the plugin wires a pod for the daemon's `Datapath` answer: the veth always, plus the
//! policy rules of shared ENI mode. ADD, DEL, CHECK and GC all go through here.

use crate::datapath::{Teardown, VethInfo, VethSpec, policy, veth};
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
            let _ = veth::teardown(spec.host_ifname, spec.alias);
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

/// Removes the attachment's host veth (only if it provably is the attachment's: see
/// `veth::teardown`) and the policy rules of `ips`. Every step is tried; the first error is
/// returned. Missing pieces are not errors, and neither is a link of that name that belongs to
/// someone else: it is left alone and logged.
pub fn unwire(host_ifname: &str, alias: &str, ips: &[Ipv4Addr]) -> Result<()> {
    let mut first: Option<Error> = None;
    match veth::teardown(host_ifname, alias) {
        Ok(Teardown::NotOurs(why)) => eprintln!("terway: left {host_ifname} alone: {why}"),
        Ok(_) => {}
        Err(e) => {
            first.get_or_insert(e);
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
