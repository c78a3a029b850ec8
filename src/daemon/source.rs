//! What a mode is to the daemon core: an address source. The core owns the allocation table,
//! waiting pods, persistence, GC and the sweep; a source only knows its addresses: it answers
//! takes, accepts give-backs, plans cloud work, applies the results, and describes itself.
//! Time is unix milliseconds, passed in.

use super::workers::Job;
use crate::config::{Config, Mode};
use crate::metrics::{EniSnapshot, PoolSnapshot};
use crate::model::{AttachKey, Datapath, PodAddress, PodRef};
use crate::rpc::{MappingRow, PoolView};
use crate::store::{State, StoredAllocation};
use crate::{Error, Result};
use std::collections::BTreeMap;

/// The allocation table, as sources see it.
pub type Allocations = BTreeMap<AttachKey, StoredAllocation>;

/// A source's answer to a pod that needs an address.
#[derive(Debug)]
pub enum Take {
    Ready(PodAddress, Datapath),
    /// Nothing free now but the pool grows: the pod waits.
    Later,
    Fail(Error),
}

/// Where an existing allocation stands.
#[derive(Debug)]
pub enum Current {
    /// Still valid: its address and the datapath it is wired with now.
    Valid(PodAddress, Datapath),
    /// Valid but not usable right now (e.g. its ENI's device has not appeared yet).
    NotReady(Error),
    /// The source no longer has the address (the cloud lost it): the pod needs a new one.
    Lost,
}

pub trait AddressSource {
    /// What a cloud job reports back to the loop.
    type Done: Send + 'static;

    fn mode(&self) -> Mode;
    /// The datapath new pods get (`Datapath::name`): the daemon tells the plugin, which builds
    /// a veth pair while the daemon allocates when it is `veth` or `veth_policy`.
    fn new_pod_datapath(&self) -> &'static str;
    /// How many cloud worker threads the source needs (0: it makes no cloud calls).
    fn workers(&self) -> usize;
    /// An address for `key`, which holds none.
    fn take(&mut self, key: &AttachKey, pod: &PodRef, now: u64) -> Take;
    /// The attachment is gone: its address is free again.
    fn give_back(&mut self, alloc: &StoredAllocation, now: u64);
    fn current(&self, alloc: &StoredAllocation) -> Current;
    /// Cloud work to start now, with `waiting` pods parked.
    fn plan(&mut self, now: u64, waiting: u32) -> Vec<Job<Self::Done>>;
    /// A job's result.
    fn apply(&mut self, done: Self::Done, now: u64);
    /// Why waiting pods cannot be served at all (they fail at once with this), if so.
    fn unservable(&self, now: u64, waiting: u32) -> Option<String>;
    /// Told to a pod whose wait timed out: the pool's situation.
    fn waiting_detail(&self) -> String;
    fn next_deadline(&self, now: u64) -> Option<u64>;
    /// Writes the source's own part of the state file (the core writes the allocations).
    fn write_state(&self, state: &mut State);
    /// Applies a re-read config; an error keeps the running one.
    fn reload(&mut self, config: &Config) -> Result<()>;
    /// Addresses a new pod could get now or after growing (STATUS).
    fn free(&self) -> u64;
    fn pool_view(&self, now: u64, allocs: &Allocations) -> PoolView;
    fn mapping(&self, now: u64, allocs: &Allocations) -> Vec<MappingRow>;
    /// What the pool gauges show (refreshed after every batch that changed something). By
    /// default read from [`AddressSource::pool_view`]; a source may answer more cheaply.
    fn metrics(&self, now: u64, allocs: &Allocations) -> PoolSnapshot {
        snapshot_of(&self.pool_view(now, allocs))
    }
}

/// The gauges' view of a pool view.
pub fn snapshot_of(v: &PoolView) -> PoolSnapshot {
    PoolSnapshot {
        in_use: v.in_use,
        idle: v.idle,
        capacity: v.capacity,
        min_idle: v.min_pool_size,
        max_idle: v.max_pool_size,
        enis: v.eni.as_ref().map(|e| {
            e.enis
                .iter()
                .map(|x| EniSnapshot {
                    id: x.id.clone(),
                    mac: x.mac.clone(),
                    addresses: x.addresses,
                    in_use: x.in_use,
                })
                .collect()
        }),
    }
}
