//! Requests and replies between the CNI plugin / CLI and the daemon: one JSON request and one
//! JSON reply per connection on a unix socket.

pub mod client;
pub mod hint;

use crate::Error;
use crate::model::{AttachKey, Datapath, PodAddress, PodRef};
use serde::{Deserialize, Serialize};

/// Largest encoded request the daemon reads; the client refuses to send anything bigger. Real
/// requests are a few hundred bytes (a GC with thousands of valid attachments stays far below).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Allocate (or return the existing allocation of) an address for an attachment.
    Alloc {
        key: AttachKey,
        pod: PodRef,
        netns: String,
    },
    /// Release an attachment's address. Releasing an unknown attachment succeeds.
    Release {
        key: AttachKey,
    },
    /// DEL: the daemon removes a veth datapath itself, after replying `TearingDown`, and frees
    /// the address only once that is done (until then no pod gets it). Any other datapath is
    /// answered as `Get`: the plugin tears it down (it needs the pod's namespace) and releases.
    Delete {
        key: AttachKey,
    },
    /// A failed ADD gives back what it was granted, and only that: the address is released only
    /// if `token`'s grant created the allocation and no later ADD was granted it since.
    Rollback {
        key: AttachKey,
        token: u64,
    },
    /// Look up an attachment's allocation (CHECK, and DEL without a prevResult).
    Get {
        key: AttachKey,
    },
    /// The allocations of `network` whose key is not in `valid` (and that are old enough not
    /// to be an ADD still running): the plugin unwires and releases each.
    Gc {
        network: String,
        valid: Vec<AttachKey>,
    },
    Status,
    Mapping,
    Pool,
}

impl Request {
    /// The request's `op` as on the wire (`alloc`, `release`, …): the RPC metrics' `rpc_api`.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Alloc { .. } => "alloc",
            Request::Release { .. } => "release",
            Request::Delete { .. } => "delete",
            Request::Rollback { .. } => "rollback",
            Request::Get { .. } => "get",
            Request::Gc { .. } => "gc",
            Request::Status => "status",
            Request::Mapping => "mapping",
            Request::Pool => "pool",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub key: AttachKey,
    pub pod: PodRef,
    pub address: PodAddress,
    pub datapath: Datapath,
    /// Only in the reply to `Alloc`: what this call may undo if it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
    /// `Get` of an allocation that is recorded but not usable as it stands (the cloud lost its
    /// address, its ENI's device has not appeared): why. DEL still tears down what was wired;
    /// CHECK fails with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One `Alloc` reply's claim on an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// This call created the allocation (false: it existed, e.g. a retried ADD).
    pub created: bool,
    /// Names this grant in a `Rollback`.
    pub token: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub mode: String,
    pub free: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingRow {
    /// `Normal` (held by a pod), `Idle` (in the pool), or an error description.
    pub status: String,
    pub pod: String,
    pub res_id: String,
    pub factory_res_id: String,
    /// Dual stack: the pod's IPv6 (the IPv4 is in the resource id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub mode: String,
    pub pod_cidr: Option<String>,
    /// VPC mode with dual stack: the IPv6 pod prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<String>,
    /// ENI modes: the ENIs, what holds them, blocked vSwitches.
    #[serde(default)]
    pub eni: Option<EniPoolView>,
    /// Where the daemon reads instance metadata (the CLI compares against it).
    #[serde(default)]
    pub metadata_endpoint: Option<String>,
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Shared ENI mode: how pods are wired, as configured and as this node does it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathView>,
    /// VPC mode with `vpc_route`: the route entry the daemon keeps for the pod CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_route: Option<VpcRouteView>,
    /// VPC mode with `vpc_route` and dual stack: the route entry of the IPv6 pod prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_route_v6: Option<VpcRouteView>,
    pub in_use: u64,
    pub idle: u64,
    pub capacity: u64,
    pub min_pool_size: u32,
    pub max_pool_size: u32,
}

/// The datapath of new pods: `eniip_virtual_type` as configured and what the node does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathView {
    /// As configured: `veth` or `ipvlan`.
    pub configured: String,
    /// What new pods get: `ipvlan`, or `veth` (policy routing) when the kernel has no ipvlan.
    pub effective: String,
    /// Why they differ; empty when they do not.
    #[serde(default)]
    pub reason: String,
}

/// The VPC route entry `pod CIDR → this instance`, as the daemon last found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpcRouteView {
    pub route_table_id: String,
    pub destination: String,
    /// `Instance`.
    pub next_hop_type: String,
    /// This instance.
    pub next_hop_id: String,
    /// `present`, `conflict`, `error` or `unchecked`.
    pub state: String,
    /// The entry's id and cloud status when present, else what is wrong.
    #[serde(default)]
    pub detail: String,
    /// Seconds since the last check (none yet: `None`).
    #[serde(default)]
    pub checked_seconds_ago: Option<u64>,
    /// Times the entry was found missing and created again since the daemon started.
    #[serde(default)]
    pub repairs: u64,
}

/// The ENIs of an ENI mode, as `terway pool` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniPoolView {
    /// Secondary ENIs the node may have.
    pub max_enis: u32,
    /// Addresses (or ENIs) requested from the cloud and not there yet.
    pub pending_ips: u32,
    pub enis: Vec<EniView>,
    #[serde(default)]
    pub blocked_vswitches: Vec<BlockedVSwitchView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniView {
    pub id: String,
    pub mac: String,
    pub vswitch_id: String,
    pub primary_ip: String,
    /// Addresses held by pods / addresses on the ENI.
    pub in_use: u32,
    pub addresses: u32,
    /// What is wrong with it, empty when nothing is.
    #[serde(default)]
    pub problems: String,
    #[serde(default)]
    pub ips: Vec<EniIpView>,
}

/// One address of an ENI: who holds it, or idle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniIpView {
    pub ip: String,
    /// Dual stack: its IPv6 partner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<crate::model::AttachKey>,
    #[serde(default)]
    pub primary: bool,
    /// The cloud no longer has it.
    #[serde(default)]
    pub lost: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedVSwitchView {
    pub id: String,
    pub seconds_left: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Allocated(Allocation),
    /// The released allocation, or `None` when there was nothing to release.
    Released(Option<Allocation>),
    Found(Option<Allocation>),
    /// `Delete`: the daemon is removing this allocation's datapath; its address is freed when
    /// that is done.
    TearingDown(Allocation),
    /// GC candidates, not yet released.
    Collected(Vec<Allocation>),
    Status(StatusView),
    Mapping(Vec<MappingRow>),
    /// Boxed: by far the largest reply.
    Pool(Box<PoolView>),
}

/// What travels back on the wire.
pub type Response = std::result::Result<Reply, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_names_are_the_wire_names() {
        let key = AttachKey::new("terway", "c", "eth0");
        for req in [
            Request::Alloc {
                key: key.clone(),
                pod: PodRef::default(),
                netns: String::new(),
            },
            Request::Release { key: key.clone() },
            Request::Delete { key: key.clone() },
            Request::Rollback {
                key: key.clone(),
                token: 1,
            },
            Request::Get { key: key.clone() },
            Request::Gc {
                network: "terway".into(),
                valid: Vec::new(),
            },
            Request::Status,
            Request::Mapping,
            Request::Pool,
        ] {
            let wire = serde_json::to_value(&req).unwrap();
            assert_eq!(wire["op"], req.op(), "{req:?}");
        }
    }
}
