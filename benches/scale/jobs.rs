//! The daemon's cloud jobs as state machines in virtual time, call for call what
//! `src/daemon/shared_eni_jobs.rs` and `src/daemon/eni_ops.rs` do on a worker thread: every
//! `ecs.…` call there is a [`Step::Call`] here, every sleep a [`Step::Sleep`]. The retries of a
//! single call (client-side limiter, back-off on throttling) are the world's, as they are
//! `OpenApi::call`'s in the daemon.

#[path = "jobs_unassign_resync.rs"]
mod unassign_resync;

use crate::region::{Answer, Cloud, EniView, Req};
use std::net::Ipv4Addr;
use terway::cloud::codes;
use terway::emulate::errors::ApiError;
use terway::emulate::model::EniStatus;
use terway::pool::shared_eni::{CloudFailure, CloudOp, CloudOutcome, EniFacts};

/// `eni_ops::ATTACH_TIMEOUT` and `DEVICE_TIMEOUT`.
const ATTACH_TIMEOUT_MS: u64 = 60_000;
const DEVICE_TIMEOUT_MS: u64 = 30_000;
/// `ecs::MAX_IPS_PER_CALL`.
const MAX_IPS_PER_CALL: usize = 10;
/// `cloud::ecs` answers a wait that runs out with this code.
const TIMEOUT: &str = "Timeout";

#[derive(Debug, Clone)]
pub enum Kind {
    Op(CloudOp),
    /// `vswitches`: the resync refreshes the vSwitches' free counts (the `most` policy only).
    Resync {
        vswitches: bool,
    },
}

#[derive(Debug)]
pub enum Step {
    Call(Req),
    Sleep(u64),
    Finish(Done),
}

#[derive(Debug)]
pub enum Input {
    Start,
    Reply(Result<Answer, ApiError>),
    Woke,
}

/// What a job reports to its node (`CloudDone` in the daemon).
#[derive(Debug)]
pub enum Done {
    Op(CloudOutcome),
    Observed(Result<Vec<EniFacts>, String>),
}

/// A `wait_eni_status` in progress.
#[derive(Debug, Clone)]
struct Wait {
    target: EniStatus,
    start: u64,
    delay: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ph {
    Start,
    Created,
    Attached,
    AttachMeta,
    AttachCheck,
    Waiting,
    Metadata,
    DelStatus,
    Detached,
    DetachCheck,
    Deleted,
    FinalCheck,
    Assigned,
    Unassigned,
    UnassignGone,
    UnassignStill,
    UnassignCheck,
    Leaked,
    LeakDeleted,
    VSwitches,
}

pub struct Job {
    pub kind: Kind,
    ph: Ph,
    eni: String,
    wait: Option<Wait>,
    /// A failed create being cleaned up: reported once its ENI is deleted.
    cleanup: Option<CloudFailure>,
    err: Option<ApiError>,
    got: Vec<Ipv4Addr>,
    /// Addresses still to assign / unassign chunks still to send.
    left: u32,
    chunks: Vec<Vec<Ipv4Addr>>,
    /// The second round of an unassign (what a failed first round left behind).
    rest_round: bool,
    leaked: Vec<String>,
    /// The resync's one listing of our ENIs.
    ours: Option<Result<Vec<EniView>, ApiError>>,
    view: Option<EniView>,
    meta_deadline: u64,
    /// When the attach call was answered (`wait_attached` counts from then).
    attached_at: u64,
}

fn failure(e: &ApiError) -> CloudFailure {
    CloudFailure {
        code: codes::normalize(&e.code).to_string(),
        message: e.message.clone(),
    }
}

fn code_failure(code: &str, message: String) -> CloudFailure {
    CloudFailure {
        code: code.to_string(),
        message,
    }
}

fn found(r: &Result<Answer, ApiError>, eni: &str) -> Option<EniView> {
    match r {
        Ok(Answer::Enis(list)) => list.iter().find(|e| e.id == eni).cloned(),
        _ => None,
    }
}

impl Job {
    pub fn new(kind: Kind) -> Job {
        Job {
            kind,
            ph: Ph::Start,
            eni: String::new(),
            wait: None,
            cleanup: None,
            err: None,
            got: Vec::new(),
            left: 0,
            chunks: Vec::new(),
            rest_round: false,
            leaked: Vec::new(),
            ours: None,
            view: None,
            meta_deadline: 0,
            attached_at: 0,
        }
    }

    fn op_id(&self) -> u64 {
        match &self.kind {
            Kind::Op(op) => op.id(),
            Kind::Resync { .. } => 0,
        }
    }

    fn finish(&self, outcome: CloudOutcome) -> Step {
        Step::Finish(Done::Op(outcome))
    }

    fn failed(&self, f: CloudFailure) -> Step {
        self.finish(CloudOutcome::Failed {
            op: self.op_id(),
            failure: f,
        })
    }

    fn start_wait(&mut self, target: EniStatus, now: u64) -> Step {
        self.start_wait_from(target, now)
    }

    /// A wait whose timeout counts from `start`.
    fn start_wait_from(&mut self, target: EniStatus, start: u64) -> Step {
        self.wait = Some(Wait {
            target,
            start,
            delay: 200,
        });
        self.ph = Ph::Waiting;
        Step::Call(Req::DescribeEni {
            eni: self.eni.clone(),
        })
    }

    /// The next step after `input`, at `now`, for `node` of `cloud`.
    pub fn resume(&mut self, input: Input, cloud: &Cloud, node: usize, now: u64) -> Step {
        let r = match input {
            Input::Reply(r) => Some(r),
            Input::Start | Input::Woke => None,
        };
        match (self.ph, r) {
            (Ph::Start, _) => self.begin(),
            (Ph::Created, Some(Err(e))) => self.failed(failure(&e)),
            (Ph::Created, Some(Ok(Answer::Eni(v)))) => {
                self.eni = v.id;
                self.ph = Ph::Attached;
                Step::Call(Req::Attach {
                    eni: self.eni.clone(),
                })
            }
            (Ph::Attached, Some(Ok(_))) => {
                self.attached_at = now;
                self.ph = Ph::AttachMeta;
                self.attach_meta(cloud, node, now)
            }
            (Ph::AttachMeta, None) => self.attach_meta(cloud, node, now),
            (Ph::Attached, Some(Err(e))) => {
                // A lost answer: the ENI's state tells whether the attach went through.
                self.err = Some(e);
                self.ph = Ph::AttachCheck;
                Step::Call(Req::DescribeEni {
                    eni: self.eni.clone(),
                })
            }
            (Ph::AttachCheck, Some(r)) => match found(&r, &self.eni) {
                Some(v)
                    if v.instance_id.as_deref() == Some(cloud.instance(node))
                        && matches!(v.status, EniStatus::Attaching | EniStatus::InUse) =>
                {
                    self.start_wait(EniStatus::InUse, now)
                }
                _ => {
                    let f = failure(self.err.as_ref().unwrap_or(&ApiError::new(0, "", "")));
                    self.clean_up(f)
                }
            },
            (Ph::Waiting, Some(r)) => self.polled(r, cloud, node, now),
            (Ph::Waiting, None) => Step::Call(Req::DescribeEni {
                eni: self.eni.clone(),
            }),
            (Ph::Metadata, None) => self.device_ready(cloud, node, now),
            (Ph::DelStatus, Some(r)) => match (&r, found(&r, &self.eni)) {
                // A failed look is a failed delete (retried later), never "gone".
                (Err(e), _) => {
                    let f = failure(e);
                    self.delete_ended(Err(f))
                }
                (_, None) => self.delete_ended(Ok(())),
                (_, Some(v)) => match v.status {
                    EniStatus::Deleting => self.delete_ended(Ok(())),
                    EniStatus::Available | EniStatus::Detaching => {
                        self.start_wait(EniStatus::Available, now)
                    }
                    _ => {
                        self.ph = Ph::Detached;
                        Step::Call(Req::Detach {
                            eni: self.eni.clone(),
                        })
                    }
                },
            },
            (Ph::Detached, Some(Ok(_))) => self.start_wait(EniStatus::Available, now),
            (Ph::Detached, Some(Err(e))) => {
                self.err = Some(e);
                self.ph = Ph::DetachCheck;
                Step::Call(Req::DescribeEni {
                    eni: self.eni.clone(),
                })
            }
            (Ph::DetachCheck, Some(r)) => match found(&r, &self.eni) {
                Some(v) if matches!(v.status, EniStatus::Detaching | EniStatus::Available) => {
                    self.start_wait(EniStatus::Available, now)
                }
                _ => {
                    let f = failure(self.err.as_ref().unwrap_or(&ApiError::new(0, "", "")));
                    self.delete_ended(Err(f))
                }
            },
            (Ph::Deleted, Some(Ok(_))) => self.delete_ended(Ok(())),
            (Ph::Deleted, Some(Err(_))) => self.final_check(),
            // Whatever the last look shows, the delete counts as done (the resync cleans up).
            (Ph::FinalCheck, Some(_)) => self.delete_ended(Ok(())),
            (Ph::Assigned, Some(r)) => self.assigned(r),
            (Ph::Unassigned, Some(r)) => self.unassigned(r),
            (Ph::UnassignGone, Some(r)) => {
                // InvalidIp.IpUnassigned: the call fails as a whole; remove what is still there.
                let chunk = self.chunks.remove(0);
                match r {
                    Err(e) => self.unassign_round_ended(Err(e)),
                    Ok(_) => {
                        let still: Vec<Ipv4Addr> = found(&r, &self.eni)
                            .map(|v| v.secondary_ips)
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|ip| chunk.contains(ip))
                            .collect();
                        if still.is_empty() {
                            return self.next_chunk();
                        }
                        self.ph = Ph::UnassignStill;
                        Step::Call(Req::Unassign {
                            eni: self.eni.clone(),
                            ips: still,
                        })
                    }
                }
            }
            (Ph::UnassignStill, Some(r)) => match r {
                Err(e) if e.code != codes::IP_UNASSIGNED => self.unassign_round_ended(Err(e)),
                _ => self.next_chunk(),
            },
            (Ph::UnassignCheck, Some(r)) => self.unassign_checked(r),
            (Ph::Leaked, Some(r)) => {
                // `list_ours`: the Available ones are leaked; the rest is observed at the end.
                self.ours = Some(match r {
                    Ok(Answer::Enis(list)) => Ok(list),
                    Ok(a) => panic!("listing answered {a:?}"),
                    Err(e) => Err(e),
                });
                if let Some(Ok(list)) = &self.ours {
                    self.leaked = list
                        .iter()
                        .filter(|e| e.status == EniStatus::Available)
                        .map(|e| e.id.clone())
                        .collect();
                }
                self.next_leak(cloud, node)
            }
            (Ph::LeakDeleted, Some(_)) => self.next_leak(cloud, node),
            (Ph::VSwitches, Some(_)) => self.observed(cloud, node),
            (ph, r) => panic!("job in {ph:?} got {r:?}"),
        }
    }

    fn begin(&mut self) -> Step {
        match self.kind.clone() {
            // IPv4 only: an IPv6 count stays 0 (the daemon's dual-stack calls are not modelled).
            Kind::Op(CloudOp::CreateEni {
                vswitch_id,
                secondary_count,
                ipv6_count: 0,
                ..
            }) => {
                self.ph = Ph::Created;
                Step::Call(Req::Create {
                    vswitch: vswitch_id,
                    secondary: secondary_count,
                })
            }
            Kind::Op(CloudOp::AssignIps {
                eni_id,
                count,
                ipv6_count: 0,
                ..
            }) => {
                self.eni = eni_id;
                self.left = count;
                self.next_assign()
            }
            Kind::Op(CloudOp::UnassignIps {
                eni_id, ips, ips6, ..
            }) if ips6.is_empty() => {
                self.eni = eni_id;
                self.chunks = ips.chunks(MAX_IPS_PER_CALL).map(<[_]>::to_vec).collect();
                self.next_chunk()
            }
            Kind::Op(CloudOp::DeleteEni { eni_id, .. }) => {
                self.eni = eni_id;
                self.ph = Ph::DelStatus;
                Step::Call(Req::DescribeEni {
                    eni: self.eni.clone(),
                })
            }
            Kind::Resync { .. } => {
                self.ph = Ph::Leaked;
                Step::Call(Req::DescribeOurs)
            }
            Kind::Op(op) => panic!("the simulation is IPv4 only: {op:?}"),
        }
    }

    /// One poll of `wait_eni_status` answered.
    fn polled(
        &mut self,
        r: Result<Answer, ApiError>,
        cloud: &Cloud,
        node: usize,
        now: u64,
    ) -> Step {
        let Some(w) = self.wait.clone() else {
            panic!("a poll without a wait");
        };
        let outcome = match &r {
            Err(e) => Err(failure(e)),
            Ok(_) => match found(&r, &self.eni) {
                None => Err(code_failure(
                    codes::ENI_NOT_FOUND,
                    format!("ENI {} no longer exists", self.eni),
                )),
                Some(v) if v.status == w.target => Ok(v),
                Some(v) => {
                    let elapsed = now.saturating_sub(w.start);
                    if elapsed >= ATTACH_TIMEOUT_MS {
                        Err(code_failure(
                            TIMEOUT,
                            format!("ENI {} is still {:?}", self.eni, v.status),
                        ))
                    } else {
                        let sleep = w.delay.min(ATTACH_TIMEOUT_MS - elapsed);
                        self.wait = Some(Wait {
                            delay: (w.delay * 3 / 2).min(2_000),
                            ..w
                        });
                        return Step::Sleep(sleep);
                    }
                }
            },
        };
        self.wait = None;
        match (w.target, outcome) {
            (EniStatus::InUse, Ok(v)) => {
                self.view = Some(v);
                self.meta_deadline = now + DEVICE_TIMEOUT_MS;
                self.ph = Ph::Metadata;
                self.device_ready(cloud, node, now)
            }
            (EniStatus::InUse, Err(f)) => self.clean_up(f),
            (_, Ok(_)) => {
                self.ph = Ph::Deleted;
                Step::Call(Req::Delete {
                    eni: self.eni.clone(),
                })
            }
            (_, Err(_)) => self.final_check(),
        }
    }

    /// `wait_attached`: metadata polled every 100 ms until it lists the ENI (at most
    /// `DEVICE_TIMEOUT`), then the status is waited for (one look when it is InUse already).
    fn attach_meta(&mut self, cloud: &Cloud, node: usize, now: u64) -> Step {
        let visible = cloud
            .metadata_from(node, &self.eni)
            .is_some_and(|t| t <= now);
        if !visible && now < self.attached_at + DEVICE_TIMEOUT_MS {
            return Step::Sleep(100);
        }
        self.start_wait_from(EniStatus::InUse, self.attached_at)
    }

    /// `facts(…, wait_for_metadata = true)`: metadata polled every 100 ms until it lists the
    /// ENI (or 30 s passed, then the gateway is derived), then the device is readied.
    fn device_ready(&mut self, cloud: &Cloud, node: usize, now: u64) -> Step {
        let visible = cloud
            .metadata_from(node, &self.eni)
            .is_some_and(|t| t <= now);
        if !visible && now <= self.meta_deadline {
            return Step::Sleep(100);
        }
        let Some(v) = self.view.take() else {
            panic!("device readied without its ENI");
        };
        self.finish(CloudOutcome::EniCreated {
            op: self.op_id(),
            eni: facts(&v, cloud, node),
        })
    }

    fn clean_up(&mut self, f: CloudFailure) -> Step {
        // Do not leak it: delete_eni, then report the create's failure.
        self.cleanup = Some(f);
        self.ph = Ph::DelStatus;
        Step::Call(Req::DescribeEni {
            eni: self.eni.clone(),
        })
    }

    fn final_check(&mut self) -> Step {
        self.ph = Ph::FinalCheck;
        Step::Call(Req::DescribeEni {
            eni: self.eni.clone(),
        })
    }

    fn delete_ended(&mut self, r: Result<(), CloudFailure>) -> Step {
        if let Some(f) = self.cleanup.take() {
            return self.failed(f);
        }
        match r {
            Ok(()) => self.finish(CloudOutcome::EniDeleted {
                op: self.op_id(),
                eni_id: self.eni.clone(),
            }),
            Err(f) => self.failed(f),
        }
    }

    fn next_assign(&mut self) -> Step {
        let n = (self.left as usize).min(MAX_IPS_PER_CALL) as u32;
        self.ph = Ph::Assigned;
        Step::Call(Req::Assign {
            eni: self.eni.clone(),
            count: n,
        })
    }

    fn assigned(&mut self, r: Result<Answer, ApiError>) -> Step {
        match r {
            Ok(Answer::Ips(ips)) => {
                self.left = self.left.saturating_sub(ips.len() as u32);
                self.got.extend(ips);
                if self.left > 0 {
                    return self.next_assign();
                }
            }
            // A later chunk failed: the addresses obtained so far are kept.
            Err(_) if !self.got.is_empty() => {}
            Err(e) => return self.failed(failure(&e)),
            Ok(a) => panic!("assign answered {a:?}"),
        }
        let ips = std::mem::take(&mut self.got);
        self.finish(CloudOutcome::IpsAssigned {
            op: self.op_id(),
            eni_id: self.eni.clone(),
            ips,
            ips6: Vec::new(),
            failure6: None,
        })
    }
}

pub(super) fn facts(v: &EniView, cloud: &Cloud, node: usize) -> EniFacts {
    let (net, gateway) = cloud.vswitch_net(node);
    EniFacts {
        id: v.id.clone(),
        mac: v.mac.clone(),
        vswitch_id: v.vswitch_id.clone(),
        vswitch_cidr: net,
        gateway,
        primary_ip: v.primary_ip,
        secondary_ips: v.secondary_ips.clone(),
        ipv6s: Vec::new(),
        v6: None,
    }
}
