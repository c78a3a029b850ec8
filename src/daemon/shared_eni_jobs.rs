//! Shared ENI mode's cloud jobs: the pool's operations carried out with the ENI operations, and
//! the periodic resync. What each reports back to the loop.

use super::eni_ops::{EniOps, NodeFacts, to_failure};
use crate::pool::shared_eni::{CloudFailure, CloudOp, CloudOutcome, EniFacts};

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

pub struct Observation {
    /// Our ENIs attached to this instance, each with its prepared route table.
    pub enis: Vec<(EniFacts, u32)>,
    /// Free addresses per vSwitch (for the `most` selection policy).
    pub vswitch_free: Vec<(String, u64)>,
}

impl EniOps {
    pub fn execute(&self, op: CloudOp, node: &NodeFacts) -> CloudDone {
        match op {
            CloudOp::CreateEni {
                op,
                vswitch_id,
                secondary_count,
            } => match self.create_eni(op, &vswitch_id, secondary_count, node) {
                Ok((eni, table)) => CloudDone::Op {
                    table: Some((eni.id.clone(), table)),
                    outcome: CloudOutcome::EniCreated { op, eni },
                },
                Err(failure) => failed(op, failure),
            },
            CloudOp::AssignIps { op, eni_id, count } => {
                match self.cloud.ecs.assign_ips(&eni_id, count) {
                    Ok(ips) => CloudDone::Op {
                        outcome: CloudOutcome::IpsAssigned { op, eni_id, ips },
                        table: None,
                    },
                    Err(e) => failed(op, to_failure(e)),
                }
            }
            CloudOp::UnassignIps { op, eni_id, ips } => match self.unassign(&eni_id, &ips) {
                Ok(()) => CloudDone::Op {
                    outcome: CloudOutcome::IpsUnassigned { op, eni_id, ips },
                    table: None,
                },
                Err(failure) => failed(op, failure),
            },
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
    /// A resync: leaked ENIs deleted, vSwitch counts refreshed, attached ENIs listed. Runs only
    /// while nothing else is in flight (and nothing new goes out until it reports), so an
    /// unattached ENI of ours is not one being created.
    pub fn resync(&self, vswitches: &[String]) -> CloudDone {
        self.delete_leaked_enis();
        if let Err(e) = self.refresh_vswitches(vswitches) {
            log::warn!("resync: {e}");
        }
        CloudDone::Observed(self.observe().map_err(|e| e.msg).map(|enis| Observation {
            enis,
            vswitch_free: self.vswitch_free(),
        }))
    }
}
