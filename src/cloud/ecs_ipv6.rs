//! The IPv6 address actions of ECS (dual stack): AssignIpv6Addresses and UnassignIpv6Addresses,
//! batched and forgiving like their IPv4 counterparts in `ecs.rs`.

use crate::cloud::codes;
use crate::cloud::ecs::{Ecs, EniFilter, MAX_IPS_PER_CALL, Params, client_token};
use crate::cloud::error::CloudError;
use crate::cloud::parse;
use std::net::Ipv6Addr;

impl Ecs {
    /// Adds `count` IPv6 addresses, like [`Ecs::assign_ips`]: calls of at most 10, each with
    /// its own ClientToken; a later call's failure returns the addresses obtained so far.
    pub fn assign_ipv6(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv6Addr>, CloudError> {
        const A: &str = "AssignIpv6Addresses";
        let mut out = Vec::new();
        let mut left = count as usize;
        while left > 0 {
            let n = left.min(MAX_IPS_PER_CALL);
            let mut p = Params::default();
            p.set("NetworkInterfaceId", eni_id)
                .set("Ipv6AddressCount", n.to_string())
                .set("ClientToken", client_token());
            let got = match self.ecs.call(A, &p.borrow()) {
                Ok(v) => parse::assigned_ipv6(A, &v)?,
                Err(e) if !out.is_empty() => {
                    log::warn!(
                        "{e}; keeping the {} IPv6 addresses already assigned",
                        out.len()
                    );
                    return Ok(out);
                }
                Err(e) => return Err(e),
            };
            out.extend(got);
            left -= n;
        }
        Ok(out)
    }

    /// Removes IPv6 addresses, like [`Ecs::unassign_ips`]: ones already gone count as removed.
    pub fn unassign_ipv6(&self, eni_id: &str, ips: &[Ipv6Addr]) -> Result<(), CloudError> {
        for chunk in ips.chunks(MAX_IPS_PER_CALL) {
            match self.unassign_ipv6_chunk(eni_id, chunk) {
                Err(e) if e.code == codes::IP_UNASSIGNED => {
                    // The call fails as a whole when any address is gone: remove the rest.
                    let filter = EniFilter {
                        eni_ids: vec![eni_id.to_string()],
                        ..EniFilter::default()
                    };
                    let still: Vec<Ipv6Addr> = self
                        .describe_enis(&filter)?
                        .into_iter()
                        .filter(|e| e.id == eni_id)
                        .flat_map(|e| e.ipv6)
                        .filter(|ip| chunk.contains(ip))
                        .collect();
                    if !still.is_empty() {
                        match self.unassign_ipv6_chunk(eni_id, &still) {
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

    fn unassign_ipv6_chunk(&self, eni_id: &str, ips: &[Ipv6Addr]) -> Result<(), CloudError> {
        let mut p = Params::default();
        let ips: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        p.set("NetworkInterfaceId", eni_id)
            .list("Ipv6Address", &ips);
        self.ecs
            .call("UnassignIpv6Addresses", &p.borrow())
            .map(drop)
    }
}
