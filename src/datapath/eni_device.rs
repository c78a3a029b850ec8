//! Readying an attached ENI's device on the node for shared ENI mode: found by MAC (it appears a
//! moment after attach), brought up, and given its route table (`policy::prepare_eni_table`)
//! and, for ipvlan pods, its host slave (`ipvlan::prepare_eni`). Runs in the daemon's (the
//! node's) namespace.

use super::{ipvlan, policy};
use crate::error::{Error, Kind, Result};
use crate::netlink::{self, Link, Netlink};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// How long an attached ENI's device may take to appear.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds ENI `eni_id`'s device by `mac`, readies it and returns its route table. With
/// `host_slave` it also gets the node's ipvlan slave `ipvl_<ifindex>` for ipvlan pods.
pub fn prepare(eni_id: &str, mac: &str, gateway: Ipv4Addr, host_slave: bool) -> Result<u32> {
    prepare_dual(eni_id, mac, gateway, None, host_slave)
}

/// [`prepare`] for a dual-stack node: with `gateway6` (the vSwitch's IPv6 gateway) the ENI's
/// table also gets its IPv6 default route ([`policy::prepare_eni_table_v6`]).
pub fn prepare_dual(
    eni_id: &str,
    mac: &str,
    gateway: Ipv4Addr,
    gateway6: Option<Ipv6Addr>,
    host_slave: bool,
) -> Result<u32> {
    let mut nl = Netlink::open()?;
    let link = wait_in(&mut nl, eni_id, mac)?;
    let ctx = |e: crate::Error| e.context(format!("ENI {eni_id} ({})", link.name));
    let table = policy::prepare_eni_table(&mut nl, link.index, gateway).map_err(ctx)?;
    if let Some(gw6) = gateway6 {
        policy::prepare_eni_table_v6(&mut nl, link.index, gw6).map_err(ctx)?;
    }
    if host_slave {
        // Read again: preparing the table brought it up.
        let link = nl.link_by_index(link.index)?.unwrap_or(link.clone());
        ipvlan::prepare_eni(&mut nl, &link).map_err(ctx)?;
    }
    Ok(table)
}

/// Waits until ENI `eni_id`'s device (by `mac`) is on the node.
pub fn wait(eni_id: &str, mac: &str) -> Result<Link> {
    wait_in(&mut Netlink::open()?, eni_id, mac)
}

/// Waits up to `timeout` for a device with `mac` in the calling thread's namespace. A NIC whose
/// namespace was just destroyed comes back to the node a moment later (the kernel tears
/// namespaces down asynchronously), so a new pod's ADD gives it that moment.
pub fn wait_for_mac(mac: &str, timeout: Duration) -> Result<bool> {
    let mac_bytes = netlink::parse_mac(mac)?;
    let mut nl = Netlink::open()?;
    let deadline = Instant::now() + timeout;
    loop {
        if netlink::find_link_by_mac(&mut nl, &mac_bytes)?.is_some() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_in(nl: &mut Netlink, eni_id: &str, mac: &str) -> Result<Link> {
    let mac_bytes = netlink::parse_mac(mac)?;
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    loop {
        if let Some(l) = netlink::find_link_by_mac(nl, &mac_bytes)? {
            return Ok(l);
        }
        if Instant::now() > deadline {
            return Err(Error::new(
                Kind::Datapath,
                format!(
                    "ENI {eni_id} is attached but no device with MAC {mac} appeared within {} s",
                    DEVICE_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
