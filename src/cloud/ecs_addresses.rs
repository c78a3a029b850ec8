//! The ENI address actions of ECS, both families: Assign/UnassignPrivateIpAddresses and
//! Assign/UnassignIpv6Addresses, batched and forgiving in the same way; only the action and
//! parameter names differ ([`Family`]).

use crate::cloud::codes;
use crate::cloud::ecs::{Ecs, EniFilter, EniInfo, MAX_IPS_PER_CALL, Params, client_token};
use crate::cloud::error::CloudError;
use crate::cloud::parse;
use serde_json::Value;
use std::fmt::Display;
use std::net::{Ipv4Addr, Ipv6Addr};

/// What differs between the IPv4 and IPv6 address actions.
struct Family<A> {
    assign: &'static str,
    count_param: &'static str,
    assigned: fn(&str, &Value) -> Result<Vec<A>, CloudError>,
    unassign: &'static str,
    list_param: &'static str,
    /// The ENI's addresses of this family that can be unassigned.
    held: fn(EniInfo) -> Vec<A>,
    /// For the log: "addresses" or "IPv6 addresses".
    noun: &'static str,
}

const V4: Family<Ipv4Addr> = Family {
    assign: "AssignPrivateIpAddresses",
    count_param: "SecondaryPrivateIpAddressCount",
    assigned: parse::assigned_ips,
    unassign: "UnassignPrivateIpAddresses",
    list_param: "PrivateIpAddress",
    held: secondary_ips,
    noun: "addresses",
};

const V6: Family<Ipv6Addr> = Family {
    assign: "AssignIpv6Addresses",
    count_param: "Ipv6AddressCount",
    assigned: parse::assigned_ipv6,
    unassign: "UnassignIpv6Addresses",
    list_param: "Ipv6Address",
    held: ipv6s,
    noun: "IPv6 addresses",
};

fn secondary_ips(e: EniInfo) -> Vec<Ipv4Addr> {
    e.secondary_ips
}

fn ipv6s(e: EniInfo) -> Vec<Ipv6Addr> {
    e.ipv6
}

impl Ecs {
    /// Adds `count` secondary addresses, in calls of at most 10, each with its own ClientToken
    /// (so a retried call cannot assign twice). If a later call fails after earlier ones
    /// succeeded, the addresses obtained so far are returned (the caller owns them).
    pub fn assign_ips(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, CloudError> {
        self.assign_addresses(&V4, eni_id, count)
    }

    /// Removes addresses; ones already gone (`InvalidIp.IpUnassigned`) count as removed.
    pub fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), CloudError> {
        self.unassign_addresses(&V4, eni_id, ips)
    }

    /// Adds `count` IPv6 addresses, as [`Ecs::assign_ips`] does IPv4 ones.
    pub fn assign_ipv6(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv6Addr>, CloudError> {
        self.assign_addresses(&V6, eni_id, count)
    }

    /// Removes IPv6 addresses, as [`Ecs::unassign_ips`] does IPv4 ones.
    pub fn unassign_ipv6(&self, eni_id: &str, ips: &[Ipv6Addr]) -> Result<(), CloudError> {
        self.unassign_addresses(&V6, eni_id, ips)
    }

    fn assign_addresses<A>(
        &self,
        f: &Family<A>,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<A>, CloudError> {
        let mut out = Vec::new();
        let mut left = count as usize;
        while left > 0 {
            let n = left.min(MAX_IPS_PER_CALL);
            let mut p = Params::default();
            p.set("NetworkInterfaceId", eni_id)
                .set(f.count_param, n.to_string())
                .set("ClientToken", client_token());
            let got = match self.ecs.call(f.assign, &p.borrow()) {
                Ok(v) => (f.assigned)(f.assign, &v)?,
                Err(e) if !out.is_empty() => {
                    log::warn!("{e}; keeping the {} {} already assigned", out.len(), f.noun);
                    return Ok(out);
                }
                Err(e) => return Err(e),
            };
            out.extend(got);
            left -= n;
        }
        Ok(out)
    }

    fn unassign_addresses<A: Copy + PartialEq + Display>(
        &self,
        f: &Family<A>,
        eni_id: &str,
        ips: &[A],
    ) -> Result<(), CloudError> {
        for chunk in ips.chunks(MAX_IPS_PER_CALL) {
            match self.unassign_chunk(f, eni_id, chunk) {
                Err(e) if e.code == codes::IP_UNASSIGNED => {
                    // The call fails as a whole when any address is gone: remove the rest.
                    let filter = EniFilter {
                        eni_ids: vec![eni_id.to_string()],
                        ..EniFilter::default()
                    };
                    let still: Vec<A> = self
                        .describe_enis(&filter)?
                        .into_iter()
                        .filter(|e| e.id == eni_id)
                        .flat_map(f.held)
                        .filter(|ip| chunk.contains(ip))
                        .collect();
                    if !still.is_empty() {
                        match self.unassign_chunk(f, eni_id, &still) {
                            Err(e) if e.code != codes::IP_UNASSIGNED => return Err(e),
                            _ => {}
                        }
                    }
                }
                other => other?,
            }
        }
        Ok(())
    }

    fn unassign_chunk<A: Display>(
        &self,
        f: &Family<A>,
        eni_id: &str,
        ips: &[A],
    ) -> Result<(), CloudError> {
        let mut p = Params::default();
        let ips: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        p.set("NetworkInterfaceId", eni_id).list(f.list_param, &ips);
        self.ecs.call(f.unassign, &p.borrow()).map(drop)
    }
}
