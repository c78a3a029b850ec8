//! The emulated region as pure state: VPC, vSwitches (address bookkeeping), security groups,
//! instance types, instances, ENIs, route table. No I/O; every operation takes `now` (ms since
//! the Unix epoch) and first applies the asynchronous transitions due by then.
//! ENI operations live in `model_eni.rs`, route entries in `model_route.rs`.

use crate::emulate::config::{EmuConfig, InstanceTypeCfg, Timing};
use crate::emulate::errors::{self, ApiError};
use crate::emulate::faults::Rng;
use crate::{Kind, Result, err};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Milliseconds since the Unix epoch.
pub type Ms = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr4 {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr4 {
    /// Parses `a.b.c.d/n`; the address must be the network address.
    pub fn parse(s: &str) -> Option<Cidr4> {
        let (a, p) = s.split_once('/')?;
        let addr: Ipv4Addr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        if prefix > 32 {
            return None;
        }
        let c = Cidr4 { addr, prefix };
        (u32::from(addr) & c.mask() == u32::from(addr)).then_some(c)
    }
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    pub fn network(&self) -> u32 {
        u32::from(self.addr)
    }
    pub fn broadcast(&self) -> u32 {
        self.network() | !self.mask()
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.network()
    }
    pub fn contains_cidr(&self, other: &Cidr4) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }
    /// The vSwitch gateway: the third address from the end (`.253` in a /24).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.broadcast() - 2)
    }
    /// First and last usable addresses: the network address and the last three are reserved.
    pub fn usable(&self) -> (u32, u32) {
        (self.network() + 1, self.broadcast() - 3)
    }
}

impl std::fmt::Display for Cidr4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr6 {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl Cidr6 {
    pub fn parse(s: &str) -> Option<Cidr6> {
        let (a, p) = s.split_once('/')?;
        let addr: Ipv6Addr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        (prefix <= 120).then_some(Cidr6 { addr, prefix })
    }
    pub fn mask(&self) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0)
    }
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        let mask = self.mask();
        u128::from(ip) & mask == u128::from(self.addr) & mask
    }
    pub fn contains_cidr(&self, other: &Cidr6) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
    /// The address is the network address (no host bits).
    pub fn is_network(&self) -> bool {
        u128::from(self.addr) & !self.mask() == 0
    }
}

impl std::fmt::Display for Cidr6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VSwitch {
    pub id: String,
    pub zone_id: String,
    pub cidr: Cidr4,
    pub ipv6_cidr: Option<Cidr6>,
    pub used: BTreeSet<Ipv4Addr>,
    pub used6: BTreeSet<Ipv6Addr>,
    /// Remaining allocations allowed by the fault cap (`None`: no cap).
    pub free_cap: Option<u32>,
}

impl VSwitch {
    fn real_free(&self) -> u32 {
        let (lo, hi) = self.cidr.usable();
        (hi + 1 - lo).saturating_sub(self.used.len() as u32)
    }

    /// `AvailableIpAddressCount` as DescribeVSwitches reports it.
    pub fn available(&self) -> u32 {
        let free = self.real_free();
        self.free_cap.map_or(free, |c| c.min(free))
    }

    /// Takes `n` free addresses (lowest first), all or none.
    pub(crate) fn take(&mut self, n: usize) -> Result<Vec<Ipv4Addr>, ApiError> {
        if (self.available() as usize) < n {
            return Err(errors::ip_not_enough(&self.id));
        }
        let (lo, hi) = self.cidr.usable();
        let picked: Vec<Ipv4Addr> = (lo..=hi)
            .map(Ipv4Addr::from)
            .filter(|ip| !self.used.contains(ip))
            .take(n)
            .collect();
        if picked.len() < n {
            return Err(errors::ip_not_enough(&self.id));
        }
        self.commit(&picked);
        Ok(picked)
    }

    /// Takes the given addresses; each must be usable and free.
    pub(crate) fn take_exact(&mut self, ips: &[Ipv4Addr]) -> Result<(), ApiError> {
        let (lo, hi) = self.cidr.usable();
        for (i, ip) in ips.iter().enumerate() {
            let n = u32::from(*ip);
            if !self.cidr.contains(*ip) || n < lo || n > hi {
                return Err(errors::ip_invalid());
            }
            if ips[..i].contains(ip) {
                return Err(errors::ip_repeated());
            }
            if self.used.contains(ip) {
                return Err(errors::ip_assigned());
            }
        }
        if (self.available() as usize) < ips.len() {
            return Err(errors::ip_not_enough(&self.id));
        }
        self.commit(ips);
        Ok(())
    }

    fn commit(&mut self, ips: &[Ipv4Addr]) {
        self.used.extend(ips.iter().copied());
        if let Some(c) = self.free_cap.as_mut() {
            *c = c.saturating_sub(ips.len() as u32);
        }
    }

    pub(crate) fn release(&mut self, ip: Ipv4Addr) {
        if self.used.remove(&ip)
            && let Some(c) = self.free_cap.as_mut()
        {
            *c += 1;
        }
    }

    pub(crate) fn take6(&mut self, n: usize) -> Result<Vec<Ipv6Addr>, ApiError> {
        // No IPv6 wanted: fine on a vSwitch without IPv6 too.
        if n == 0 {
            return Ok(Vec::new());
        }
        let cidr = self.ipv6_cidr.ok_or_else(errors::ipv6_not_enabled)?;
        // Interface identifiers from ::1000 up, like the cloud's (never the subnet router anycast).
        let net = u128::from(cidr.addr) & cidr.mask();
        let mut out = Vec::new();
        for i in 0x1000u128..0x1000 + (1 << 20) {
            if out.len() >= n {
                break;
            }
            let Some(ip) = net
                .checked_add(i)
                .map(Ipv6Addr::from)
                .filter(|ip| cidr.contains(*ip))
            else {
                break;
            };
            if !self.used6.contains(&ip) {
                out.push(ip);
            }
        }
        if out.len() < n {
            return Err(errors::ip_not_enough(&self.id));
        }
        self.used6.extend(out.iter().copied());
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EniType {
    Primary,
    Secondary,
    Trunk,
    Member,
}

impl EniType {
    pub fn as_str(self) -> &'static str {
        match self {
            EniType::Primary => "Primary",
            EniType::Secondary => "Secondary",
            EniType::Trunk => "Trunk",
            EniType::Member => "Member",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EniStatus {
    Available,
    Attaching,
    InUse,
    Detaching,
    /// DeleteNetworkInterface was accepted; the ENI disappears when `pending_until` passes.
    Deleting,
}

impl EniStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EniStatus::Available => "Available",
            EniStatus::Attaching => "Attaching",
            EniStatus::InUse => "InUse",
            EniStatus::Detaching => "Detaching",
            EniStatus::Deleting => "Deleting",
        }
    }
}

/// An address on an ENI with when it was added (and removed), for the metadata lag.
#[derive(Debug, Clone, Serialize)]
pub struct AddrRecord<A> {
    pub ip: A,
    pub since: Ms,
    pub removed: Option<Ms>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Eni {
    pub id: String,
    pub mac: String,
    pub eni_type: EniType,
    pub status: EniStatus,
    pub vswitch_id: String,
    pub zone_id: String,
    pub security_group_ids: Vec<String>,
    pub primary_ip: Ipv4Addr,
    /// Secondary IPv4 addresses, including recently removed ones still visible in metadata.
    pub secondary: Vec<AddrRecord<Ipv4Addr>>,
    pub ipv6: Vec<AddrRecord<Ipv6Addr>>,
    pub tags: Vec<(String, String)>,
    pub description: String,
    pub name: String,
    pub instance_id: Option<String>,
    pub trunk_eni_id: Option<String>,
    pub device_index: Option<u32>,
    /// When the pending Attaching/Detaching/Deleting completes.
    pub pending_until: Option<Ms>,
    /// Metadata view: the instance it shows under, from when, until when.
    pub meta_instance: Option<String>,
    pub meta_from: Option<Ms>,
    pub meta_until: Option<Ms>,
    pub created_at: Ms,
}

impl Eni {
    pub fn live_secondary(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.secondary
            .iter()
            .filter(|r| r.removed.is_none())
            .map(|r| r.ip)
    }
    pub fn live_ipv6(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.ipv6
            .iter()
            .filter(|r| r.removed.is_none())
            .map(|r| r.ip)
    }
    /// Primary + live secondary IPv4 count.
    pub fn ipv4_count(&self) -> usize {
        1 + self.live_secondary().count()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub zone_id: String,
    pub vswitch_id: String,
    pub primary_eni_id: String,
    pub status: String,
    pub ram_role: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteEntry {
    pub id: String,
    /// `RouteEntryName` at creation (may be empty).
    pub name: String,
    pub destination: String,
    pub next_hop_type: String,
    pub next_hop_id: String,
    pub created_at: Ms,
}

/// The whole region. Serializes as the admin model dump.
#[derive(Debug, Serialize)]
pub struct Model {
    pub region_id: String,
    pub vpc_id: String,
    pub vpc_cidr: Cidr4,
    pub zones: Vec<String>,
    pub route_table_id: String,
    pub vswitches: BTreeMap<String, VSwitch>,
    pub security_groups: Vec<String>,
    pub instance_types: Vec<InstanceTypeCfg>,
    pub instances: BTreeMap<String, Instance>,
    /// In creation order (DescribeNetworkInterfaces pages through this order).
    pub enis: Vec<Eni>,
    pub routes: Vec<RouteEntry>,
    pub timing: Timing,
    /// `<action>:<ClientToken>` → (request fingerprint, stored answer).
    #[serde(skip)]
    pub(crate) tokens: BTreeMap<String, (String, serde_json::Value)>,
    #[serde(skip)]
    pub(crate) rng: Rng,
    pub now: Ms,
}

impl Model {
    /// Builds the region of `cfg` at time `now`: instances get their primary ENI, in use.
    pub fn new(cfg: &EmuConfig, now: Ms) -> Result<Model> {
        cfg.validate()?;
        let vpc_cidr = Cidr4::parse(&cfg.vpc_cidr)
            .ok_or_else(|| err!(Kind::InvalidConfig, "bad vpc_cidr {}", cfg.vpc_cidr))?;
        let mut m = Model {
            region_id: cfg.region_id.clone(),
            vpc_id: cfg.vpc_id.clone(),
            vpc_cidr,
            zones: cfg.zones.clone(),
            route_table_id: cfg.route_table_id.clone(),
            vswitches: BTreeMap::new(),
            security_groups: cfg.security_groups.clone(),
            instance_types: cfg.instance_types.clone(),
            instances: BTreeMap::new(),
            enis: Vec::new(),
            routes: Vec::new(),
            timing: cfg.timing.clone(),
            tokens: BTreeMap::new(),
            rng: Rng(cfg.seed),
            now,
        };
        for v in &cfg.vswitches {
            let cidr = Cidr4::parse(&v.cidr)
                .ok_or_else(|| err!(Kind::InvalidConfig, "bad CIDR of {}", v.id))?;
            m.vswitches.insert(
                v.id.clone(),
                VSwitch {
                    id: v.id.clone(),
                    zone_id: v.zone.clone(),
                    cidr,
                    ipv6_cidr: v.ipv6_cidr.as_deref().and_then(Cidr6::parse),
                    used: BTreeSet::new(),
                    used6: BTreeSet::new(),
                    free_cap: cfg.faults.vswitch_free_cap.get(&v.id).copied(),
                },
            );
        }
        for i in &cfg.instances {
            let vsw = m
                .vswitches
                .get_mut(&i.vswitch)
                .ok_or_else(|| err!(Kind::InvalidConfig, "unknown vSwitch {}", i.vswitch))?;
            let zone = vsw.zone_id.clone();
            let ip = match &i.primary_ip {
                Some(s) => {
                    let ip: Ipv4Addr = s.parse().map_err(|_| {
                        err!(Kind::InvalidConfig, "instance {}: bad primary_ip {s}", i.id)
                    })?;
                    vsw.take_exact(&[ip]).map_err(|e| {
                        err!(Kind::InvalidConfig, "instance {}: {}", i.id, e.message)
                    })?;
                    ip
                }
                None => vsw
                    .take(1)
                    .map_err(|e| err!(Kind::InvalidConfig, "instance {}: {}", i.id, e.message))?
                    .first()
                    .copied()
                    .ok_or_else(|| err!(Kind::InvalidConfig, "instance {}: no address", i.id))?,
            };
            let v6 = match i.ipv6_address_count {
                0 => Vec::new(),
                n => vsw
                    .take6(n as usize)
                    .map_err(|e| err!(Kind::InvalidConfig, "instance {}: {}", i.id, e.message))?,
            };
            let eni_id = m.new_id("eni-");
            let mac = m.new_mac();
            m.enis.push(Eni {
                id: eni_id.clone(),
                mac,
                eni_type: EniType::Primary,
                status: EniStatus::InUse,
                vswitch_id: i.vswitch.clone(),
                zone_id: zone.clone(),
                security_group_ids: vec![i.security_group.clone()],
                primary_ip: ip,
                secondary: Vec::new(),
                ipv6: v6
                    .into_iter()
                    .map(|ip| AddrRecord {
                        ip,
                        since: 0,
                        removed: None,
                    })
                    .collect(),
                tags: Vec::new(),
                description: String::new(),
                name: String::new(),
                instance_id: Some(i.id.clone()),
                trunk_eni_id: None,
                device_index: Some(0),
                pending_until: None,
                meta_instance: Some(i.id.clone()),
                meta_from: Some(0),
                meta_until: None,
                created_at: now,
            });
            m.instances.insert(
                i.id.clone(),
                Instance {
                    id: i.id.clone(),
                    instance_type: i.instance_type.clone(),
                    zone_id: zone,
                    vswitch_id: i.vswitch.clone(),
                    primary_eni_id: eni_id,
                    status: "Running".into(),
                    ram_role: i.ram_role.clone(),
                },
            );
        }
        Ok(m)
    }

    /// An id like the cloud's: prefix + 20 lower-case alphanumerics.
    pub(crate) fn new_id(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut x = self.rng.next_u64();
        let mut y = self.rng.next_u64();
        let mut s = String::from(prefix);
        for i in 0..20 {
            let v = if i < 10 { &mut x } else { &mut y };
            s.push(char::from(ALPHABET[(*v % 36) as usize]));
            *v /= 36;
        }
        s
    }

    /// A MAC in Alibaba Cloud's OUI 00:16:3e, unique in the model.
    pub(crate) fn new_mac(&mut self) -> String {
        loop {
            let r = self.rng.next_u64();
            let mac = format!(
                "00:16:3e:{:02x}:{:02x}:{:02x}",
                (r >> 16) & 0xff,
                (r >> 8) & 0xff,
                r & 0xff
            );
            if !self.enis.iter().any(|e| e.mac == mac) {
                return mac;
            }
        }
    }

    /// Applies the asynchronous transitions due by `now` and forgets metadata history that no
    /// longer matters. Time never goes backwards here.
    pub fn advance(&mut self, now: Ms) {
        let now = now.max(self.now);
        self.now = now;
        let lag = self.timing.metadata_lag_ms;
        let mut deleted = Vec::new();
        for eni in &mut self.enis {
            if let Some(t) = eni.pending_until
                && t <= now
            {
                eni.pending_until = None;
                match eni.status {
                    EniStatus::Attaching => {
                        eni.status = EniStatus::InUse;
                        eni.meta_instance = eni.instance_id.clone();
                        eni.meta_from = Some(t);
                        eni.meta_until = None;
                    }
                    EniStatus::Detaching => {
                        eni.status = EniStatus::Available;
                        eni.instance_id = None;
                        eni.trunk_eni_id = None;
                        eni.device_index = None;
                    }
                    EniStatus::Deleting => deleted.push(eni.id.clone()),
                    _ => {}
                }
            }
            eni.secondary
                .retain(|r| r.removed.is_none_or(|t| t + lag > now));
            eni.ipv6.retain(|r| r.removed.is_none_or(|t| t + lag > now));
        }
        for id in deleted {
            self.remove_eni(&id);
        }
    }

    /// Removes an ENI for good, giving its addresses back to its vSwitch.
    pub(crate) fn remove_eni(&mut self, id: &str) {
        let Some(pos) = self.enis.iter().position(|e| e.id == id) else {
            return;
        };
        let eni = self.enis.remove(pos);
        if let Some(v) = self.vswitches.get_mut(&eni.vswitch_id) {
            v.release(eni.primary_ip);
            for ip in eni.live_secondary() {
                v.release(ip);
            }
            for ip in eni.live_ipv6() {
                v.used6.remove(&ip);
            }
        }
    }

    pub fn instance_type(&self, id: &str) -> Option<&InstanceTypeCfg> {
        self.instance_types.iter().find(|t| t.id == id)
    }

    pub fn eni(&self, id: &str) -> Result<&Eni, ApiError> {
        self.enis
            .iter()
            .find(|e| e.id == id)
            .ok_or_else(errors::eni_not_found)
    }

    pub(crate) fn eni_mut(&mut self, id: &str) -> Result<&mut Eni, ApiError> {
        self.enis
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(errors::eni_not_found)
    }

    /// The answer stored for a ClientToken, if any: `Ok(Some)` replays it, `Err` when the token was
    /// used with different parameters.
    pub fn token_lookup(
        &self,
        action: &str,
        token: &str,
        fingerprint: &str,
    ) -> Result<Option<serde_json::Value>, ApiError> {
        match self.tokens.get(&format!("{action}:{token}")) {
            Some((fp, v)) if fp == fingerprint => Ok(Some(v.clone())),
            Some(_) => Err(errors::idempotent_mismatch()),
            None => Ok(None),
        }
    }

    pub fn token_store(
        &mut self,
        action: &str,
        token: &str,
        fingerprint: &str,
        answer: serde_json::Value,
    ) {
        self.tokens.insert(
            format!("{action}:{token}"),
            (fingerprint.to_string(), answer),
        );
    }

    /// Sets (or clears) a vSwitch's free-address cap.
    pub fn set_free_cap(&mut self, vsw: &str, cap: Option<u32>) -> Result<(), ApiError> {
        let v = self
            .vswitches
            .get_mut(vsw)
            .ok_or_else(errors::vswitch_not_found)?;
        v.free_cap = cap;
        Ok(())
    }

    /// The instance owning an address, for metadata by source address: any live IPv4 of its
    /// ENIs, or an address of a route entry pointing at it (VPC-mode pods).
    pub fn instance_by_ip(&self, ip: Ipv4Addr) -> Option<&str> {
        self.enis
            .iter()
            .filter(|e| e.primary_ip == ip || e.live_secondary().any(|s| s == ip))
            .find_map(|e| e.instance_id.as_deref())
            .or_else(|| {
                self.routes
                    .iter()
                    .filter(|r| Cidr4::parse(&r.destination).is_some_and(|c| c.contains(ip)))
                    .max_by_key(|r| Cidr4::parse(&r.destination).map_or(0, |c| c.prefix))
                    .map(|r| r.next_hop_id.as_str())
            })
    }
}
