//! Requests and replies between the CNI plugin / CLI and the daemon: one JSON request and one
//! JSON reply per connection on a unix socket.

pub mod client;

use crate::Error;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Largest encoded request the daemon reads; the client refuses to send anything bigger. Real
/// requests are a few hundred bytes (a GC with thousands of valid attachments stays far below).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// An attachment as the CNI spec keys it: (container id, interface name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachKey {
    pub container_id: String,
    pub ifname: String,
}

impl std::fmt::Display for AttachKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// Who the pod is (from `CNI_ARGS`); empty fields when the runtime did not say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Allocate (or return the existing allocation of) an address for an attachment.
    Alloc {
        key: AttachKey,
        network: String,
        pod: PodRef,
        netns: String,
    },
    /// Release an attachment's address. Releasing an unknown attachment succeeds.
    Release {
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

/// How the plugin must wire the pod for an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Datapath {
    /// veth pair, pod address /32, host route to the pod (VPC mode).
    Veth,
    /// veth as above plus policy routing: traffic from the pod leaves through its ENI, whose
    /// route table (`table`, prepared by the daemon) points at the vSwitch gateway.
    VethPolicy { table: u32, eni_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub key: AttachKey,
    pub pod: PodRef,
    pub ipv4: Ipv4Addr,
    pub datapath: Datapath,
    /// Only in the reply to `Alloc`: what this call may undo if it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub mode: String,
    pub pod_cidr: Option<String>,
    /// Shared ENI mode: per-ENI usage, blocked vSwitches, max pods.
    #[serde(default)]
    pub eni: Option<crate::pool::eni::PoolSnapshot>,
    /// Where the daemon reads instance metadata (the CLI compares against it).
    #[serde(default)]
    pub metadata_endpoint: Option<String>,
    #[serde(default)]
    pub instance_id: Option<String>,
    pub in_use: u64,
    pub idle: u64,
    pub capacity: u64,
    pub min_pool_size: u32,
    pub max_pool_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Allocated(Allocation),
    /// The released allocation, or `None` when there was nothing to release.
    Released(Option<Allocation>),
    Found(Option<Allocation>),
    /// GC candidates, not yet released.
    Collected(Vec<Allocation>),
    Status(StatusView),
    Mapping(Vec<MappingRow>),
    Pool(PoolView),
}

/// What travels back on the wire.
pub type Response = std::result::Result<Reply, Error>;
