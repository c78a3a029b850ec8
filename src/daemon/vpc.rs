//! VPC mode: pod addresses from the node's pod CIDR. Pure bookkeeping: requests in, replies
//! out, the daemon loop persists the result before answering.

use super::eni::CloudDone;
use super::grants::{Grants, refused_rollback};
use super::sweep::gc_candidates;
use super::{Backend, Outbox};
use crate::config::Config;
use crate::pool::cidr::CidrPool;
use crate::rpc::{
    Allocation, AttachKey, Datapath, MappingRow, PoolView, Reply, Request, Response, StatusView,
};
use crate::store::{State, StoredAllocation, VpcPoolState};
use crate::{Error, Kind, Result};
use ipnetwork::Ipv4Network;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::mpsc::Sender;

#[derive(Debug)]
pub struct VpcIpam {
    pool: CidrPool,
    allocs: BTreeMap<AttachKey, StoredAllocation>,
    by_ip: HashMap<Ipv4Addr, AttachKey>,
    min_pool_size: u32,
    max_pool_size: u32,
    grace_secs: u64,
    grants: Grants,
}

impl VpcIpam {
    /// The VPC-mode backend from the config and the loaded state.
    pub fn start(config: &Config, state: &State) -> Result<VpcIpam> {
        let Some(pod_cidr) = config.pod_cidr else {
            return Err(Error::new(
                Kind::InvalidConfig,
                "pod_cidr is required in VPC mode",
            ));
        };
        let mut ipam = VpcIpam::from_state(pod_cidr, state)
            .map_err(|e| e.context(format!("state file {}", config.state_path.display())))?;
        ipam.set_watermarks(config.min_pool_size, config.max_pool_size);
        ipam.grace_secs = config.orphan_grace_period.as_secs();
        Ok(ipam)
    }

    /// Rebuilds from the state file. Allocations outside `pod_cidr` (the config changed while the
    /// daemon was stopped) are refused rather than dropped: those pods still use the addresses.
    pub fn from_state(pod_cidr: Ipv4Network, state: &State) -> Result<VpcIpam> {
        let cursor = state
            .vpc
            .as_ref()
            .filter(|v| v.pod_cidr == pod_cidr)
            .and_then(|v| v.cursor);
        let mut ipam = VpcIpam {
            pool: CidrPool::new(pod_cidr, cursor),
            allocs: BTreeMap::new(),
            by_ip: HashMap::new(),
            min_pool_size: 0,
            max_pool_size: 0,
            grace_secs: 60,
            grants: Grants::new(super::now_ms()),
        };
        let outside: Vec<String> = state
            .allocations
            .iter()
            .filter(|a| !ipam.pool.is_usable(a.ipv4))
            .map(|a| format!("{} {} ({})", a.ipv4, a.pod, a.key))
            .collect();
        if !outside.is_empty() {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!(
                    "pod_cidr {pod_cidr} does not hold {} address(es) pods still use: {}; restore the previous pod_cidr or delete those pods first",
                    outside.len(),
                    outside.join(", ")
                ),
            ));
        }
        for a in &state.allocations {
            if let Some(other) = ipam.by_ip.get(&a.ipv4) {
                return Err(Error::new(
                    Kind::State,
                    format!("state lists {} twice ({} and {})", a.ipv4, other, a.key),
                ));
            }
            ipam.by_ip.insert(a.ipv4, a.key.clone());
            ipam.allocs.insert(a.key.clone(), a.clone());
        }
        Ok(ipam)
    }

    pub fn set_watermarks(&mut self, min: u32, max: u32) {
        self.min_pool_size = min;
        self.max_pool_size = max;
    }

    pub fn write_state(&self, state: &mut State) {
        state.allocations = self.allocs.values().cloned().collect();
        state.vpc = Some(VpcPoolState {
            pod_cidr: self.pool.cidr(),
            cursor: self.pool.cursor(),
        });
    }

    pub fn in_use(&self) -> usize {
        self.allocs.len()
    }

    fn free(&self) -> u64 {
        self.pool
            .capacity()
            .saturating_sub(self.allocs.len() as u64)
    }

    fn view(a: &StoredAllocation) -> Allocation {
        Allocation {
            key: a.key.clone(),
            pod: a.pod.clone(),
            ipv4: a.ipv4,
            datapath: Datapath::Veth,
            grant: None,
        }
    }

    /// Handles one request; the flag says whether the state changed (and must be saved).
    pub fn handle(&mut self, req: Request, now_unix: u64) -> (Response, bool) {
        match req {
            Request::Alloc {
                key,
                network,
                pod,
                netns,
            } => {
                if let Some(a) = self.allocs.get(&key) {
                    // The runtime retried ADD: same attachment, same address.
                    let mut view = Self::view(a);
                    view.grant = Some(self.grants.grant(&key, false));
                    return (Ok(Reply::Allocated(view)), false);
                }
                let by_ip = &self.by_ip;
                let Some(ip) = self.pool.next(|ip| by_ip.contains_key(&ip)) else {
                    return (
                        Err(Error::new(
                            Kind::Exhausted,
                            format!(
                                "pod CIDR {} has no free address ({} in use) for pod {pod}",
                                self.pool.cidr(),
                                self.allocs.len()
                            ),
                        )),
                        false,
                    );
                };
                let a = StoredAllocation {
                    key: key.clone(),
                    network,
                    pod,
                    netns,
                    ipv4: ip,
                    created_unix: now_unix,
                };
                let mut reply = Self::view(&a);
                reply.grant = Some(self.grants.grant(&key, true));
                self.by_ip.insert(ip, key.clone());
                self.allocs.insert(key, a);
                (Ok(Reply::Allocated(reply)), true)
            }
            Request::Release { key } => match self.remove(&key) {
                Some(a) => (Ok(Reply::Released(Some(a))), true),
                None => (Ok(Reply::Released(None)), false),
            },
            Request::Rollback { key, token } => {
                if !self.grants.may_roll_back(&key, token) {
                    log::info!("{}", refused_rollback(&key));
                    return (Ok(Reply::Released(None)), false);
                }
                match self.remove(&key) {
                    Some(a) => (Ok(Reply::Released(Some(a))), true),
                    None => (Ok(Reply::Released(None)), false),
                }
            }
            Request::Get { key } => (
                Ok(Reply::Found(self.allocs.get(&key).map(Self::view))),
                false,
            ),
            Request::Gc { network, valid } => {
                let stale = gc_candidates(
                    self.allocs.values(),
                    &network,
                    &valid,
                    now_unix,
                    self.grace_secs,
                );
                let found = stale
                    .iter()
                    .filter_map(|k| self.allocs.get(k).map(Self::view))
                    .collect();
                (Ok(Reply::Collected(found)), false)
            }
            Request::Status => (
                Ok(Reply::Status(StatusView {
                    mode: "VPC".into(),
                    free: self.free(),
                })),
                false,
            ),
            Request::Mapping => (Ok(Reply::Mapping(self.mapping())), false),
            Request::Pool => (
                Ok(Reply::Pool(PoolView {
                    mode: "VPC".into(),
                    pod_cidr: Some(self.pool.cidr().to_string()),
                    eni: None,
                    metadata_endpoint: None,
                    instance_id: None,
                    in_use: self.allocs.len() as u64,
                    idle: self.free(),
                    capacity: self.pool.capacity(),
                    min_pool_size: self.min_pool_size,
                    max_pool_size: self.max_pool_size,
                })),
                false,
            ),
        }
    }

    fn remove(&mut self, key: &AttachKey) -> Option<Allocation> {
        self.grants.forget(key);
        let a = self.allocs.remove(key)?;
        self.by_ip.remove(&a.ipv4);
        Some(Self::view(&a))
    }

    fn mapping(&self) -> Vec<MappingRow> {
        let mut rows: Vec<MappingRow> = self
            .allocs
            .values()
            .map(|a| MappingRow {
                status: "Normal".into(),
                pod: a.pod.to_string(),
                res_id: a.ipv4.to_string(),
                factory_res_id: a.ipv4.to_string(),
            })
            .collect();
        rows.sort_by_key(|r| r.res_id.parse::<Ipv4Addr>().ok());
        rows
    }

    /// Takes a new pod CIDR on reload only if every allocation still fits.
    pub fn change_cidr(&mut self, cidr: Ipv4Network) -> Result<()> {
        if cidr == self.pool.cidr() {
            return Ok(());
        }
        let mut state = State::new(String::new());
        self.write_state(&mut state);
        let next = VpcIpam::from_state(cidr, &state)?;
        self.pool = next.pool;
        Ok(())
    }
}

impl Backend for VpcIpam {
    fn on_request(&mut self, req: Request, reply: Sender<Response>, now: u64, out: &mut Outbox) {
        let (resp, changed) = self.handle(req, now / 1000);
        out.reply(reply, resp, changed);
    }

    fn on_cloud(&mut self, _done: CloudDone, _now: u64, _out: &mut Outbox) {}

    fn on_tick(&mut self, _now: u64, _out: &mut Outbox) {}

    fn next_deadline(&self, _now: u64) -> Option<u64> {
        None
    }

    fn write_state(&self, state: &mut State) {
        VpcIpam::write_state(self, state)
    }

    fn reload(&mut self, config: &Config) -> Result<()> {
        if let Some(cidr) = config.pod_cidr {
            self.change_cidr(cidr)?;
        }
        self.set_watermarks(config.min_pool_size, config.max_pool_size);
        self.grace_secs = config.orphan_grace_period.as_secs();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::PodRef;

    fn key(id: &str) -> AttachKey {
        AttachKey {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn alloc(ipam: &mut VpcIpam, id: &str) -> Response {
        ipam.handle(
            Request::Alloc {
                key: key(id),
                network: "terway".into(),
                pod: PodRef {
                    namespace: "default".into(),
                    name: id.into(),
                    uid: String::new(),
                },
                netns: "/run/netns/x".into(),
            },
            7,
        )
        .0
    }

    fn ip_of(r: Response) -> Ipv4Addr {
        match r {
            Ok(Reply::Allocated(a)) => a.ipv4,
            other => panic!("{other:?}"),
        }
    }

    fn ipam(cidr: &str) -> VpcIpam {
        VpcIpam::from_state(cidr.parse().unwrap(), &State::new("b".into())).unwrap()
    }

    #[test]
    fn alloc_is_idempotent_per_attachment() {
        let mut m = ipam("10.9.0.0/24");
        let a = ip_of(alloc(&mut m, "a"));
        assert_eq!(ip_of(alloc(&mut m, "a")), a);
        assert_ne!(ip_of(alloc(&mut m, "b")), a);
        assert_eq!(m.in_use(), 2);
    }

    #[test]
    fn a_failing_retry_never_releases_what_another_call_holds() {
        let mut m = ipam("10.9.0.0/24");
        let grant = |r: Response| match r {
            Ok(Reply::Allocated(a)) => a.grant.unwrap(),
            other => panic!("{other:?}"),
        };
        let first = grant(alloc(&mut m, "a"));
        let retry = grant(alloc(&mut m, "a"));
        assert!(first.created && !retry.created);
        for token in [first.token, retry.token] {
            let (r, changed) = m.handle(
                Request::Rollback {
                    key: key("a"),
                    token,
                },
                8,
            );
            assert_eq!(r, Ok(Reply::Released(None)));
            assert!(!changed);
        }
        assert_eq!(m.in_use(), 1, "the address stays with the attachment");
        // A call that created it and is the latest may undo it.
        let b = grant(alloc(&mut m, "b"));
        let (r, changed) = m.handle(
            Request::Rollback {
                key: key("b"),
                token: b.token,
            },
            8,
        );
        assert!(matches!(r, Ok(Reply::Released(Some(_)))) && changed);
    }

    #[test]
    fn exhaustion_names_the_cidr() {
        let mut m = ipam("10.9.0.0/30");
        ip_of(alloc(&mut m, "a"));
        let e = alloc(&mut m, "b").unwrap_err();
        assert_eq!(e.kind, Kind::Exhausted);
        assert!(e.msg.contains("10.9.0.0/30"), "{e}");
    }

    #[test]
    fn gc_names_only_old_invalid_attachments_of_the_network() {
        let mut m = ipam("10.9.0.0/24");
        for id in ["a", "b", "c"] {
            ip_of(alloc(&mut m, id));
        }
        let gc = |m: &mut VpcIpam, network: &str, now: u64| {
            let (r, changed) = m.handle(
                Request::Gc {
                    network: network.into(),
                    valid: vec![key("b")],
                },
                now,
            );
            assert!(
                !changed,
                "GC only names candidates; the plugin releases them"
            );
            let Ok(Reply::Collected(found)) = r else {
                panic!("{r:?}")
            };
            found
                .iter()
                .map(|a| a.key.container_id.clone())
                .collect::<Vec<_>>()
        };
        assert!(
            gc(&mut m, "terway", 8).is_empty(),
            "too young: ADD may still run"
        );
        assert_eq!(gc(&mut m, "terway", 7 + 60), ["a", "c"]);
        assert!(gc(&mut m, "other", 7 + 60).is_empty());
    }

    #[test]
    fn state_round_trip_and_cidr_changes() {
        let mut m = ipam("10.9.0.0/24");
        let a = ip_of(alloc(&mut m, "a"));
        let mut s = State::new("b".into());
        m.write_state(&mut s);
        let mut back = VpcIpam::from_state("10.9.0.0/24".parse().unwrap(), &s).unwrap();
        assert_ne!(ip_of(alloc(&mut back, "z")), a);
        let e = VpcIpam::from_state("10.8.0.0/24".parse().unwrap(), &s).unwrap_err();
        assert!(e.msg.contains(&a.to_string()), "{e}");
        assert!(m.change_cidr("10.9.0.0/16".parse().unwrap()).is_ok());
        assert!(m.change_cidr("10.7.0.0/24".parse().unwrap()).is_err());
    }
}
