//! Shared ENI mode's cloud jobs: the pool's operations carried out with the ENI operations, and
//! the periodic resync. What each reports back to the loop.

use super::eni_ops::{EniOps, NodeFacts, OP_DEADLINE, Observation, RESYNC_DEADLINE, to_failure};
use crate::cloud::openapi::with_deadline;
use crate::pool::shared_eni::{CloudFailure, CloudOp, CloudOutcome};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

/// What a cloud job reports back to the loop.
pub enum CloudDone {
    /// A pool operation finished; `table` is the route table prepared for a new ENI.
    Op {
        outcome: CloudOutcome,
        table: Option<(String, u32)>,
    },
    /// A resync: what the cloud says, or why it failed.
    Observed(std::result::Result<Observation, String>),
}

impl EniOps {
    /// Carries out `op`, its throttled calls retried until [`OP_DEADLINE`].
    pub fn execute(&self, op: CloudOp, node: &NodeFacts) -> CloudDone {
        with_deadline(Instant::now() + OP_DEADLINE, || self.execute_op(op, node))
    }

    fn execute_op(&self, op: CloudOp, node: &NodeFacts) -> CloudDone {
        match op {
            CloudOp::CreateEni {
                op,
                vswitch_id,
                secondary_count,
                ipv6_count,
            } => match self.create_eni(op, &vswitch_id, secondary_count, ipv6_count, node) {
                Ok((eni, table)) => CloudDone::Op {
                    table: Some((eni.id.clone(), table)),
                    outcome: CloudOutcome::EniCreated { op, eni },
                },
                Err(failure) => failed(op, failure),
            },
            CloudOp::AssignIps {
                op,
                eni_id,
                count,
                ipv6_count,
            } => self.assign(op, eni_id, count, ipv6_count),
            CloudOp::UnassignIps {
                op,
                eni_id,
                ips,
                ips6,
            } => self.unassign_both(op, eni_id, ips, ips6),
            CloudOp::DeleteEni { op, eni_id } => match self.delete_eni(&eni_id) {
                Ok(()) => CloudDone::Op {
                    outcome: CloudOutcome::EniDeleted { op, eni_id },
                    table: None,
                },
                Err(failure) => failed(op, failure),
            },
        }
    }
}

impl EniOps {
    /// IPv4s, then (dual stack) IPv6s. When the IPv6 call fails after IPv4s came, the pool
    /// keeps the IPv4s and hears the failure beside them.
    fn assign(&self, op: u64, eni_id: String, count: u32, ipv6_count: u32) -> CloudDone {
        let ips = match count {
            0 => Vec::new(),
            n => match self.cloud.ecs.assign_ips(&eni_id, n) {
                Ok(ips) => ips,
                Err(e) => return failed(op, to_failure(e)),
            },
        };
        let (ips6, failure6) = match ipv6_count {
            0 => (Vec::new(), None),
            n => match self.cloud.ecs.assign_ipv6(&eni_id, n) {
                Ok(ips6) => (ips6, None),
                Err(e) if ips.is_empty() => return failed(op, to_failure(e)),
                Err(e) => (Vec::new(), Some(to_failure(e))),
            },
        };
        CloudDone::Op {
            outcome: CloudOutcome::IpsAssigned {
                op,
                eni_id,
                ips,
                ips6,
                failure6,
            },
            table: None,
        }
    }

    /// IPv4s, then (dual stack) IPv6s, each checked against what the cloud did on failure.
    fn unassign_both(
        &self,
        op: u64,
        eni_id: String,
        ips: Vec<Ipv4Addr>,
        ips6: Vec<Ipv6Addr>,
    ) -> CloudDone {
        if !ips.is_empty()
            && let Err(failure) = self.unassign(&eni_id, &ips)
        {
            return failed(op, failure);
        }
        let failure6 = match ips6.is_empty() {
            true => None,
            false => match self.cloud.ecs.unassign_ipv6(&eni_id, &ips6) {
                Ok(()) => None,
                Err(e) if ips.is_empty() => return failed(op, to_failure(e)),
                Err(e) => Some(to_failure(e)),
            },
        };
        let ips6 = if failure6.is_some() { Vec::new() } else { ips6 };
        CloudDone::Op {
            outcome: CloudOutcome::IpsUnassigned {
                op,
                eni_id,
                ips,
                ips6,
                failure6,
            },
            table: None,
        }
    }
}

/// A failed op as the pool hears it.
pub fn failed(op: u64, failure: CloudFailure) -> CloudDone {
    CloudDone::Op {
        outcome: CloudOutcome::Failed { op, failure },
        table: None,
    }
}

/// What a panicking job reports instead of its result.
pub fn panicked(op: u64) -> CloudDone {
    failed(
        op,
        CloudFailure {
            code: "Terway.Internal".into(),
            message: "the cloud worker panicked (a bug; see the log)".into(),
        },
    )
}

impl EniOps {
    /// [`EniOps::observe_all`] within [`RESYNC_DEADLINE`].
    pub fn resync(&self, vswitches: &[String]) -> CloudDone {
        with_deadline(Instant::now() + RESYNC_DEADLINE, || {
            CloudDone::Observed(self.observe_all(vswitches).map_err(|e| e.msg))
        })
    }
}
