//! Readying an attached ENI's device on the node for shared ENI mode: found by MAC (it appears a
//! moment after attach), brought up, and given its route table (`policy::prepare_eni_table`).
//! Runs in the daemon's (the node's) namespace.

use super::policy;
use crate::error::{Error, Kind, Result};
use crate::netlink::{self, Netlink};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// How long an attached ENI's device may take to appear.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds ENI `eni_id`'s device by `mac`, readies it and returns its route table.
pub fn prepare(eni_id: &str, mac: &str, gateway: Ipv4Addr) -> Result<u32> {
    let mac_bytes = netlink::parse_mac(mac)?;
    let mut nl = Netlink::open()?;
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    let link = loop {
        if let Some(l) = netlink::find_link_by_mac(&mut nl, &mac_bytes)? {
            break l;
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
    };
    policy::prepare_eni_table(&mut nl, link.index, gateway)
        .map_err(|e| e.context(format!("ENI {eni_id} ({})", link.name)))
}
