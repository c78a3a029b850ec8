//! VPC mode as an address source: pod addresses from the node's pod CIDR (round robin, so a
//! released address is not handed out again at once). No cloud calls, unless `vpc_route` is on:
//! then the VPC route entry `pod_cidr → this instance` is checked at start (the daemon refuses to
//! start when another instance owns the CIDR) and at every `ip_pool_sync_period`, and created
//! again when it went missing (`vpc_route`).

use super::node;
use super::source::{AddressSource, Allocations, Current, Take};
use super::vpc_route::{RouteDone, RouteKeeper};
use super::workers::Job;
use crate::config::{Config, IpStack, Mode};
use crate::model::{AttachKey, Datapath, IpConfig, PodAddress, PodRef};
use crate::pool::cidr::CidrPool;
use crate::rpc::{MappingRow, PoolView};
use crate::store::{State, StoredAllocation, VpcPoolState};
use crate::{Error, Kind, Result};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

#[derive(Debug)]
pub struct VpcSource {
    pool: CidrPool,
    /// `ip_stack: dual`: the IPv6 prefix; a pod's IPv6 sits at its IPv4's offset in `pool`.
    pod_cidr_v6: Option<Ipv6Network>,
    used: HashMap<Ipv4Addr, AttachKey>,
    /// The IPv6 addresses pods hold (dual stack), to keep a prefix change from stranding them.
    used6: HashMap<Ipv6Addr, AttachKey>,
    /// When each address was last given back (unix ms): cooling down.
    released: HashMap<Ipv4Addr, u64>,
    cooldown_ms: u64,
    min_pool_size: u32,
    max_pool_size: u32,
    /// With `vpc_route`: the route entry the daemon keeps.
    route: Option<RouteKeeper>,
    /// With `vpc_route` and dual stack: the IPv6 prefix's route entry.
    route6: Option<RouteKeeper>,
    metadata_endpoint: Option<String>,
}

impl VpcSource {
    /// The source from the config and the loaded state, with the allocations it holds.
    pub fn start(config: &Config, state: &State) -> Result<(VpcSource, Vec<StoredAllocation>)> {
        let Some(pod_cidr) = config.pod_cidr else {
            return Err(Error::new(
                Kind::InvalidConfig,
                "pod_cidr is required in VPC mode",
            ));
        };
        let mut source = VpcSource::from_state(pod_cidr, state)
            .map_err(|e| e.context(format!("state file {}", config.state_path.display())))?;
        source.set_v6(config)?;
        source.min_pool_size = config.min_pool_size;
        source.max_pool_size = config.max_pool_size;
        source.cooldown_ms = config.ip_cooldown.as_millis() as u64;
        if config.vpc_route {
            let (info, cloud) = node::discover(config)?;
            // The entry of the pod CIDR the state file was written with, if it changed.
            let previous = state
                .vpc
                .as_ref()
                .map(|v| v.pod_cidr)
                .filter(|c| *c != pod_cidr);
            let now = crate::clock::now_ms();
            let ecs = Arc::new(cloud.ecs);
            let keeper = RouteKeeper::start(
                config,
                ecs.clone(),
                &info,
                pod_cidr.into(),
                previous.map(Into::into),
                now,
            )?;
            source.route = Some(keeper);
            if let Some(c6) = source.pod_cidr_v6 {
                let previous6 = state
                    .vpc
                    .as_ref()
                    .and_then(|v| v.pod_cidr_v6)
                    .filter(|c| *c != c6);
                let keeper6 = RouteKeeper::start(
                    config,
                    ecs,
                    &info,
                    c6.into(),
                    previous6.map(Into::into),
                    now,
                )?;
                source.route6 = Some(keeper6);
            }
            source.metadata_endpoint = Some(cloud.metadata_endpoint);
        }
        Ok((source, state.allocations.clone()))
    }

    /// Rebuilds from the state file. Allocations outside `pod_cidr` (the config changed while the
    /// daemon was stopped) are refused rather than dropped: those pods still use the addresses.
    pub fn from_state(pod_cidr: Ipv4Network, state: &State) -> Result<VpcSource> {
        let cursor = state
            .vpc
            .as_ref()
            .filter(|v| v.pod_cidr == pod_cidr)
            .and_then(|v| v.cursor);
        let mut source = VpcSource {
            pool: CidrPool::new(pod_cidr, cursor),
            pod_cidr_v6: None,
            used: HashMap::new(),
            used6: HashMap::new(),
            released: state
                .vpc
                .as_ref()
                .map(|v| v.released.iter().copied().collect())
                .unwrap_or_default(),
            cooldown_ms: crate::config::DEFAULT_IP_COOLDOWN.as_millis() as u64,
            min_pool_size: 0,
            max_pool_size: 0,
            route: None,
            route6: None,
            metadata_endpoint: None,
        };
        source.hold(state.allocations.iter())?;
        Ok(source)
    }

    fn hold<'a>(&mut self, allocs: impl Iterator<Item = &'a StoredAllocation>) -> Result<()> {
        let allocs: Vec<&StoredAllocation> = allocs.collect();
        let cidr = self.pool.cidr();
        let outside: Vec<String> = allocs
            .iter()
            .filter(|a| {
                !a.address
                    .ipv4_addr()
                    .is_some_and(|ip| self.pool.is_usable(ip))
            })
            .map(|a| format!("{} {} ({})", a.address, a.pod, a.key))
            .collect();
        if !outside.is_empty() {
            return Err(not_held(cidr, &outside));
        }
        for a in allocs {
            if let Some(ip6) = ipv6_of(&a.address)
                && let Some(other) = self.used6.insert(ip6, a.key.clone())
            {
                return Err(Error::new(
                    Kind::State,
                    format!("state lists {ip6} twice ({other} and {})", a.key),
                ));
            }
            let Some(ip) = a.address.ipv4_addr() else {
                continue;
            };
            if let Some(other) = self.used.insert(ip, a.key.clone()) {
                return Err(Error::new(
                    Kind::State,
                    format!("state lists {ip} twice ({other} and {})", a.key),
                ));
            }
        }
        Ok(())
    }

    /// Takes a new pod CIDR on reload only if every allocation still fits.
    fn change_cidr(&mut self, cidr: Ipv4Network) -> Result<()> {
        if cidr == self.pool.cidr() {
            return Ok(());
        }
        let mut next = CidrPool::new(cidr, None);
        let outside: Vec<String> = self
            .used
            .iter()
            .filter(|(ip, _)| !next.is_usable(**ip))
            .map(|(ip, key)| format!("{ip} ({key})"))
            .collect();
        if !outside.is_empty() {
            return Err(not_held(cidr, &outside));
        }
        std::mem::swap(&mut self.pool, &mut next);
        Ok(())
    }

    /// The IPv6 prefix of `ip_stack: dual` (none otherwise). A new prefix is taken only if every
    /// IPv6 pods hold still fits in it.
    fn set_v6(&mut self, config: &Config) -> Result<()> {
        let next = match config.ip_stack {
            IpStack::Dual => config.pod_cidr_v6,
            IpStack::Ipv4 => None,
        };
        if next == self.pod_cidr_v6 {
            return Ok(());
        }
        if let Some(c6) = next {
            let outside: Vec<String> = self
                .used6
                .iter()
                .filter(|(ip, _)| !c6.contains(**ip))
                .map(|(ip, key)| format!("{ip} ({key})"))
                .collect();
            if !outside.is_empty() {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    format!(
                        "pod_cidr_v6 {c6} does not hold {} address(es) pods still use: {}; restore the previous pod_cidr_v6 or delete those pods first",
                        outside.len(),
                        outside.join(", ")
                    ),
                ));
            }
        }
        self.pod_cidr_v6 = next;
        Ok(())
    }

    /// The pod address for `ip`: with dual stack, the IPv6 at the same offset too.
    fn address_of(&self, ip: Ipv4Addr) -> PodAddress {
        let mut address = PodAddress::v4(ip, 32, None);
        if let Some(c6) = self.pod_cidr_v6 {
            let offset = u32::from(ip) - u32::from(self.pool.cidr().network());
            let ip6 = Ipv6Addr::from(u128::from(c6.network()) + u128::from(offset));
            address.ipv6 = Some(IpConfig {
                addr: IpNetwork::V6(Ipv6Network::from(ip6)),
                gateway: None,
            });
        }
        address
    }

    fn free_now(&self) -> u64 {
        self.pool.capacity().saturating_sub(self.used.len() as u64)
    }
}

fn ipv6_of(address: &PodAddress) -> Option<Ipv6Addr> {
    match address.ipv6?.ip() {
        IpAddr::V6(ip) => Some(ip),
        IpAddr::V4(_) => None,
    }
}

/// A pod CIDR that does not hold addresses pods still use (a config change): refused.
fn not_held(cidr: Ipv4Network, outside: &[String]) -> Error {
    Error::new(
        Kind::InvalidConfig,
        format!(
            "pod_cidr {cidr} does not hold {} address(es) pods still use: {}; restore the previous pod_cidr or delete those pods first",
            outside.len(),
            outside.join(", ")
        ),
    )
}

impl AddressSource for VpcSource {
    type Done = RouteDone;

    fn mode(&self) -> Mode {
        Mode::Vpc
    }

    fn new_pod_datapath(&self) -> &'static str {
        Datapath::VETH
    }

    fn workers(&self) -> usize {
        usize::from(self.route.is_some()) + usize::from(self.route6.is_some())
    }

    fn take(&mut self, key: &AttachKey, pod: &PodRef, now: u64) -> Take {
        let (used, released) = (&self.used, &self.released);
        let cooling = |ip: &Ipv4Addr| {
            released
                .get(ip)
                .is_some_and(|t| now.saturating_sub(*t) < self.cooldown_ms)
        };
        // Cooled addresses first; one still cooling only when nothing else is free.
        let ip = self
            .pool
            .next(|ip| used.contains_key(&ip) || cooling(&ip))
            .or_else(|| self.pool.next(|ip| used.contains_key(&ip)));
        match ip {
            Some(ip) => {
                self.used.insert(ip, key.clone());
                self.released.remove(&ip);
                let address = self.address_of(ip);
                if let Some(ip6) = ipv6_of(&address) {
                    self.used6.insert(ip6, key.clone());
                }
                Take::Ready(address, Datapath::Veth)
            }
            None => Take::Fail(Error::new(
                Kind::Exhausted,
                format!(
                    "pod CIDR {} has no free address ({} in use) for pod {pod}",
                    self.pool.cidr(),
                    self.used.len()
                ),
            )),
        }
    }

    fn give_back(&mut self, alloc: &StoredAllocation, now: u64) {
        if let Some(ip6) = ipv6_of(&alloc.address) {
            self.used6.remove(&ip6);
        }
        if let Some(ip) = alloc.address.ipv4_addr() {
            self.used.remove(&ip);
            self.released.insert(ip, now);
        }
        let cooldown = self.cooldown_ms;
        self.released
            .retain(|_, t| now.saturating_sub(*t) < cooldown);
    }

    fn current(&self, alloc: &StoredAllocation) -> Current {
        Current::Valid(alloc.address.clone(), Datapath::Veth)
    }

    fn plan(&mut self, now: u64, _waiting: u32) -> Vec<Job<RouteDone>> {
        self.route
            .iter_mut()
            .chain(self.route6.iter_mut())
            .filter_map(|r| r.plan(now))
            .collect()
    }

    fn apply(&mut self, done: RouteDone, now: u64) {
        // Each keeper's checks are of its own family (a reload keeps the family).
        let keeper = match done.cidr.is_ipv6() {
            true => self.route6.as_mut(),
            false => self.route.as_mut(),
        };
        if let Some(r) = keeper {
            r.apply(done, now);
        }
    }

    fn unservable(&self, _now: u64, _waiting: u32) -> Option<String> {
        None
    }

    fn waiting_detail(&self) -> String {
        format!("{} free in pod CIDR {}", self.free_now(), self.pool.cidr())
    }

    fn next_deadline(&self, _now: u64) -> Option<u64> {
        self.route
            .iter()
            .chain(self.route6.iter())
            .filter_map(RouteKeeper::next_deadline)
            .min()
    }

    fn write_state(&self, state: &mut State) {
        let mut released: Vec<(Ipv4Addr, u64)> =
            self.released.iter().map(|(ip, t)| (*ip, *t)).collect();
        released.sort();
        state.vpc = Some(VpcPoolState {
            pod_cidr: self.pool.cidr(),
            cursor: self.pool.cursor(),
            released,
            pod_cidr_v6: self.pod_cidr_v6,
        });
    }

    fn reload(&mut self, config: &Config) -> Result<()> {
        if let Some(cidr) = config.pod_cidr {
            self.change_cidr(cidr)?;
        }
        self.set_v6(config)?;
        if let (Some(r), Some(c6)) = (self.route6.as_mut(), self.pod_cidr_v6) {
            r.reload(config, c6.into(), 0);
        } else if self.route.is_some() && self.pod_cidr_v6.is_some() {
            log::warn!("reload: the IPv6 prefix's route entry is kept from the next restart on");
        }
        match self.route.as_mut() {
            // Checked at once (0: due now) when the pod CIDR changed.
            Some(r) => r.reload(config, self.pool.cidr().into(), 0),
            None if config.vpc_route => {
                log::warn!("reload: vpc_route changes only on restart");
            }
            None => {}
        }
        self.min_pool_size = config.min_pool_size;
        self.max_pool_size = config.max_pool_size;
        self.cooldown_ms = config.ip_cooldown.as_millis() as u64;
        Ok(())
    }

    fn free(&self) -> u64 {
        self.free_now()
    }

    fn pool_view(&self, now: u64, allocs: &Allocations) -> PoolView {
        PoolView {
            datapath: None,
            mode: Mode::Vpc.to_string(),
            pod_cidr: Some(self.pool.cidr().to_string()),
            pod_cidr_v6: self.pod_cidr_v6.map(|c| c.to_string()),
            eni: None,
            metadata_endpoint: self.metadata_endpoint.clone(),
            instance_id: self.route.as_ref().map(|r| r.instance_id().to_string()),
            vpc_route: self.route.as_ref().map(|r| r.view(now)),
            vpc_route_v6: self.route6.as_ref().map(|r| r.view(now)),
            in_use: allocs.len() as u64,
            idle: self.free_now(),
            capacity: self.pool.capacity(),
            min_pool_size: self.min_pool_size,
            max_pool_size: self.max_pool_size,
        }
    }

    fn mapping(&self, _now: u64, allocs: &Allocations) -> Vec<MappingRow> {
        let mut rows: Vec<(Option<Ipv4Addr>, MappingRow)> = allocs
            .values()
            .map(|a| {
                let ip = a
                    .address
                    .ipv4_addr()
                    .map_or_else(|| a.address.to_string(), |i| i.to_string());
                (
                    a.address.ipv4_addr(),
                    MappingRow {
                        status: "Normal".into(),
                        pod: a.pod.to_string(),
                        res_id: ip.clone(),
                        factory_res_id: ip,
                        ipv6: a.address.ipv6_addr().map(|i| i.to_string()),
                    },
                )
            })
            .collect();
        rows.sort_by_key(|r| r.0);
        rows.into_iter().map(|r| r.1).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dual(cidr6: &str) -> Config {
        Config::parse(&format!(
            r#"{{"daemon_mode":"VPC","pod_cidr":"10.9.0.0/24","ip_stack":"dual","pod_cidr_v6":"{cidr6}"}}"#
        ))
        .unwrap()
    }

    fn source(config: &Config) -> VpcSource {
        let mut s =
            VpcSource::from_state(config.pod_cidr.unwrap(), &State::new("b".into())).unwrap();
        s.set_v6(config).unwrap();
        s
    }

    fn take(s: &mut VpcSource, id: &str) -> PodAddress {
        match s.take(&AttachKey::new("n", id, "eth0"), &PodRef::default(), 0) {
            Take::Ready(a, Datapath::Veth) => a,
            other => panic!("{other:?}"),
        }
    }

    fn alloc(id: &str, address: PodAddress) -> StoredAllocation {
        StoredAllocation {
            key: AttachKey::new("n", id, "eth0"),
            pod: PodRef::default(),
            netns: String::new(),
            address,
            datapath: Datapath::Veth,
            created_unix: 0,
        }
    }

    #[test]
    fn dual_stack_pods_get_the_ipv6_at_their_ipv4_offset() {
        let config = dual("fd00:9::/64");
        let mut s = source(&config);
        let a = take(&mut s, "a");
        assert_eq!(a.to_string(), "10.9.0.2, fd00:9::2");
        assert_eq!(a.ipv6.unwrap().addr.prefix(), 128);
        let b = take(&mut s, "b");
        assert_eq!(b.to_string(), "10.9.0.3, fd00:9::3");
        assert_eq!(
            s.pool_view(0, &Allocations::new()).pod_cidr_v6.as_deref(),
            Some("fd00:9::/64")
        );
        // IPv4 only: no IPv6.
        let v4 = Config::parse(r#"{"daemon_mode":"VPC","pod_cidr":"10.9.0.0/24"}"#).unwrap();
        let mut s4 = source(&v4);
        assert_eq!(take(&mut s4, "c").to_string(), "10.9.0.2");
    }

    #[test]
    fn a_v6_prefix_that_strands_pods_is_refused_and_duplicates_are_caught() {
        let config = dual("fd00:9::/64");
        let mut s = source(&config);
        let a = take(&mut s, "a");
        let e = s.reload(&dual("fd00:8::/64")).unwrap_err().to_string();
        assert!(
            e.contains("pod_cidr_v6 fd00:8::/64 does not hold 1") && e.contains("fd00:9::2"),
            "{e}"
        );
        assert_eq!(s.pod_cidr_v6, Some("fd00:9::/64".parse().unwrap()));
        // Once the pod is gone the new prefix is taken.
        s.give_back(&alloc("a", a.clone()), 0);
        s.reload(&dual("fd00:8::/64")).unwrap();
        assert_eq!(s.pod_cidr_v6, Some("fd00:8::/64".parse().unwrap()));
        // A state file listing one IPv6 twice is refused.
        let mut st = State::new("b".into());
        let mut other = PodAddress::v4("10.9.0.3".parse().unwrap(), 32, None);
        other.ipv6 = a.ipv6;
        st.allocations = vec![alloc("a", a), alloc("b", other)];
        let e = VpcSource::from_state(config.pod_cidr.unwrap(), &st).unwrap_err();
        assert!(e.to_string().contains("state lists fd00:9::2 twice"), "{e}");
    }
}
