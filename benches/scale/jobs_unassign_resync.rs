//! The unassign (with its check of what the cloud did) and the resync's steps of [`Job`]:
//! `EniOps::unassign` and `EniOps::resync` of the daemon, call for call.

use super::{Done, Job, Kind, MAX_IPS_PER_CALL, Ph, Step, facts, failure, found};
use crate::region::{Answer, Cloud, Req};
use std::net::Ipv4Addr;
use terway::cloud::codes;
use terway::emulate::errors::ApiError;
use terway::emulate::model::EniStatus;
use terway::pool::shared_eni::{CloudOp, CloudOutcome};

impl Job {
    pub(super) fn planned_ips(&self) -> Vec<Ipv4Addr> {
        match &self.kind {
            Kind::Op(CloudOp::UnassignIps { ips, .. }) => ips.clone(),
            _ => Vec::new(),
        }
    }

    pub(super) fn next_chunk(&mut self) -> Step {
        match self.chunks.first() {
            Some(c) => {
                self.ph = Ph::Unassigned;
                Step::Call(Req::Unassign {
                    eni: self.eni.clone(),
                    ips: c.clone(),
                })
            }
            None => self.unassign_round_ended(Ok(())),
        }
    }

    pub(super) fn unassigned(&mut self, r: Result<Answer, ApiError>) -> Step {
        match r {
            Ok(_) => {
                self.chunks.remove(0);
                self.next_chunk()
            }
            Err(e) if e.code == codes::IP_UNASSIGNED => {
                self.ph = Ph::UnassignGone;
                Step::Call(Req::DescribeEni {
                    eni: self.eni.clone(),
                })
            }
            Err(e) => self.unassign_round_ended(Err(e)),
        }
    }

    /// `ecs.unassign_ips` returned: the first round is checked against the cloud on error.
    pub(super) fn unassign_round_ended(&mut self, r: Result<(), ApiError>) -> Step {
        let outcome = CloudOutcome::IpsUnassigned {
            op: self.op_id(),
            eni_id: self.eni.clone(),
            ips: self.planned_ips(),
            ips6: Vec::new(),
            failure6: None,
        };
        match r {
            Ok(()) => self.finish(outcome),
            Err(e) if self.rest_round => self.failed(failure(&e)),
            Err(e) => {
                self.err = Some(e);
                self.ph = Ph::UnassignCheck;
                Step::Call(Req::DescribeEni {
                    eni: self.eni.clone(),
                })
            }
        }
    }

    pub(super) fn unassign_checked(&mut self, r: Result<Answer, ApiError>) -> Step {
        let ips = self.planned_ips();
        let err = self.err.take().unwrap_or_else(|| ApiError::new(0, "", ""));
        let Some(v) = found(&r, &self.eni) else {
            return self.failed(failure(&err));
        };
        let rest: Vec<Ipv4Addr> = ips
            .iter()
            .copied()
            .filter(|i| v.secondary_ips.contains(i))
            .collect();
        if rest.is_empty() {
            return self.unassign_round_ended(Ok(()));
        }
        // Partly done: finish the rest once.
        self.rest_round = true;
        self.chunks = rest.chunks(MAX_IPS_PER_CALL).map(<[_]>::to_vec).collect();
        self.next_chunk()
    }

    pub(super) fn next_leak(&mut self, cloud: &Cloud, node: usize) -> Step {
        match self.leaked.pop() {
            Some(id) => {
                self.ph = Ph::LeakDeleted;
                Step::Call(Req::Delete { eni: id })
            }
            None if matches!(self.kind, Kind::Resync { vswitches: true }) => {
                self.ph = Ph::VSwitches;
                Step::Call(Req::DescribeVSwitches)
            }
            None => self.observed(cloud, node),
        }
    }

    pub(super) fn observed(&mut self, cloud: &Cloud, node: usize) -> Step {
        let list = match self.ours.take() {
            Some(Ok(list)) => list,
            None => panic!("a resync observed without its listing"),
            Some(Err(e)) => {
                return Step::Finish(Done::Observed(Err(e.to_string())));
            }
        };
        // Only our secondary ENIs in use on this instance. (An Attaching one cannot be seen
        // here: a resync runs only while no job is in flight, and every create job ends
        // attached or deleted.)
        let inst = Some(cloud.instance(node));
        let facts = list
            .iter()
            .filter(|e| e.secondary_type && e.ours && e.status == EniStatus::InUse)
            .filter(|e| e.instance_id.as_deref() == inst)
            .map(|e| facts(e, cloud, node))
            .collect();
        Step::Finish(Done::Observed(Ok(facts)))
    }
}
