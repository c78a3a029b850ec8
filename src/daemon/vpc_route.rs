//! VPC mode with `vpc_route: true`: the daemon keeps the VPC route entry `pod_cidr → this
//! instance` (NextHopType `Instance`) itself, as the cloud controller manager does upstream.
//!
//! - [`decide`] is the pure rule: what a route table's entries mean for our pod CIDR.
//! - [`RouteClient`] carries it out with the signed VPC API (list, create, remove an old entry).
//! - [`RouteKeeper`] is the daemon side: when to check (at start, then every
//!   `ip_pool_sync_period`), what was found, what `terway pool` shows. Time is passed in.
//!
//! The daemon never removes an entry it did not make for this instance: an entry sending our
//! CIDR elsewhere is a conflict (reported; at start the daemon refuses to run), and the entry of
//! a previous pod CIDR is removed only when it points at this instance.

use super::node::{NodeInfo, cloud_err};
use super::workers::Job;
use crate::cloud::codes;
use crate::cloud::ecs::Ecs;
use crate::cloud::error::CloudError;
use crate::cloud::route::{RouteEntryFilter, RouteEntryInfo, RouteTableInfo};
use crate::config::Config;
use crate::rpc::VpcRouteView;
use crate::{Error, Kind, Result};
use ipnetwork::IpNetwork;
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_CHECK_EVERY_MS: u64 = 120_000;
const NEXT_HOP_TYPE: &str = "Instance";
/// Attempts of a create while the route table is busy with another change (`TaskConflict`…):
/// route entries of a VPC change one at a time, and nodes starting together collide.
const BUSY_ATTEMPTS: u32 = 8;

/// What a route table says about our pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteCheck {
    /// An entry sends the CIDR to this instance.
    Present { entry_id: String, status: String },
    /// Nothing routes the CIDR: the entry is to be created.
    Missing,
    /// Something else has the CIDR or part of it.
    Conflict(Conflict),
}

/// An entry that stands in the way of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub entry_id: String,
    pub destination: String,
    /// `System`, `Custom`, `BGP`.
    pub kind: String,
    /// `Type id` of each next hop (`Instance i-…`), or `local` for a vSwitch.
    pub next_hops: Vec<String>,
}

impl Conflict {
    /// Names the CIDR, the table and the other owner.
    pub fn describe(&self, cidr: IpNetwork, table: &str) -> String {
        if self.kind == "System" {
            return format!(
                "pod_cidr {cidr} overlaps the vSwitch CIDR {} (system route {} in route table {table}): pods would get addresses of the VPC; choose a pod_cidr outside every vSwitch",
                self.destination, self.entry_id
            );
        }
        let to = if self.next_hops.is_empty() {
            "no next hop".to_string()
        } else {
            self.next_hops.join(" and ")
        };
        let what = if self.destination == cidr.to_string() {
            format!("pod_cidr {cidr} is")
        } else {
            format!("{} (part of pod_cidr {cidr}) is", self.destination)
        };
        format!(
            "{what} already routed to {to} in route table {table} (route entry {}): another node owns it; give this node a pod_cidr of its own, or delete that entry if its node is gone",
            self.entry_id
        )
    }
}

fn hop_names(e: &RouteEntryInfo) -> Vec<String> {
    e.next_hops
        .iter()
        .map(|(t, id)| {
            if id.is_empty() {
                t.clone()
            } else {
                format!("{t} {id}")
            }
        })
        .collect()
}

fn points_at(e: &RouteEntryInfo, instance_id: &str) -> bool {
    matches!(e.next_hops.as_slice(), [(t, id)] if t.eq_ignore_ascii_case(NEXT_HOP_TYPE) && id == instance_id)
}

/// What `entries` (a route table's, any type) mean for `cidr` routed to `instance_id`. An entry
/// for exactly `cidr` must point at this instance alone; an entry inside `cidr` (more specific,
/// so it wins) must too; a vSwitch's system route must not overlap it at all. Entries covering
/// `cidr` from outside (less specific) lose to ours and do not matter. Entries of the other family never do.
pub fn decide(entries: &[RouteEntryInfo], cidr: IpNetwork, instance_id: &str) -> RouteCheck {
    let conflict = |e: &RouteEntryInfo| {
        RouteCheck::Conflict(Conflict {
            entry_id: e.id.clone(),
            destination: e.destination.clone(),
            kind: e.kind.clone(),
            next_hops: hop_names(e),
        })
    };
    let mut ours = None;
    for e in entries {
        let Ok(dst) = e.destination.parse::<IpNetwork>() else {
            continue;
        };
        // Normalised: `10.244.1.0/24` however the cloud spells it.
        let Ok(dst) = IpNetwork::new(dst.network(), dst.prefix()) else {
            continue;
        };
        let overlaps = cidr.contains(dst.network()) || dst.contains(cidr.network());
        if !overlaps {
            continue;
        }
        if e.kind == "System" {
            return conflict(e);
        }
        let inside = dst.prefix() >= cidr.prefix();
        if !inside {
            continue;
        }
        if !points_at(e, instance_id) {
            return conflict(e);
        }
        if dst == cidr {
            ours = Some(e);
        }
    }
    match ours {
        Some(e) => RouteCheck::Present {
            entry_id: e.id.clone(),
            status: e.status.clone(),
        },
        None => RouteCheck::Missing,
    }
}

/// Which route table holds our entry when the config does not say: the vSwitch's own (from
/// DescribeVSwitches), else the VPC's table that lists the vSwitch, else its system table.
pub fn pick_table(vswitch_table: &str, tables: &[RouteTableInfo], vswitch: &str) -> Option<String> {
    if !vswitch_table.is_empty() {
        return Some(vswitch_table.to_string());
    }
    tables
        .iter()
        .find(|t| t.vswitch_ids.iter().any(|v| v == vswitch))
        .or_else(|| tables.iter().find(|t| t.kind == "System"))
        .map(|t| t.id.clone())
}

/// What a check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// The entry was there.
    Present { entry_id: String, status: String },
    /// It was missing and is created now; `status` as the cloud shows it right after
    /// (`Creating` while the asynchronous create runs).
    Created { entry_id: String, status: String },
    /// Another owner; nothing was changed.
    Conflict(String),
}

/// The route table and this instance, with the signed client.
#[derive(Debug)]
pub struct RouteClient {
    pub ecs: Arc<Ecs>,
    pub table_id: String,
    pub instance_id: String,
}

impl RouteClient {
    /// Finds the route table (config, else the node's vSwitch) for the node.
    pub fn discover(config: &Config, ecs: Arc<Ecs>, node: &NodeInfo) -> Result<RouteClient> {
        let table_id = match &config.vpc_route_table_id {
            Some(t) => t.clone(),
            None => {
                let v = ecs
                    .describe_vswitches(std::slice::from_ref(&node.vswitch_id))
                    .map_err(|e| cloud_err("DescribeVSwitches", e))?
                    .into_iter()
                    .find(|v| v.id == node.vswitch_id)
                    .ok_or_else(|| {
                        cloud_err(
                            "DescribeVSwitches",
                            format!("the cloud does not know vSwitch {}", node.vswitch_id),
                        )
                    })?;
                let tables = if v.route_table_id.is_empty() {
                    ecs.describe_route_tables(&v.vpc_id)
                        .map_err(|e| cloud_err("DescribeRouteTableList", e))?
                } else {
                    Vec::new()
                };
                pick_table(&v.route_table_id, &tables, &v.id).ok_or_else(|| {
                    Error::new(
                        Kind::Cloud,
                        format!(
                            "no route table found for vSwitch {} of VPC {}: set vpc_route_table_id",
                            v.id, v.vpc_id
                        ),
                    )
                })?
            }
        };
        Ok(RouteClient {
            ecs,
            table_id,
            instance_id: node.instance_id.clone(),
        })
    }

    fn entries(&self) -> std::result::Result<Vec<RouteEntryInfo>, CloudError> {
        self.ecs
            .describe_route_entries(&self.table_id, &RouteEntryFilter::default())
    }

    /// Makes sure `cidr` is routed to this instance: checks, creates when missing, reports a
    /// conflict. `stale` is a previous pod CIDR: its entry goes if it points at this instance.
    pub fn ensure(
        &self,
        cidr: IpNetwork,
        stale: Option<IpNetwork>,
    ) -> std::result::Result<Ensured, CloudError> {
        let entries = self.entries()?;
        if let Some(old) = stale.filter(|o| *o != cidr) {
            self.remove_stale(&entries, old)?;
        }
        let settled = |check: RouteCheck| match check {
            RouteCheck::Present { entry_id, status } => Some(Ensured::Present { entry_id, status }),
            RouteCheck::Conflict(c) => Some(Ensured::Conflict(c.describe(cidr, &self.table_id))),
            RouteCheck::Missing => None,
        };
        if let Some(done) = settled(decide(&entries, cidr, &self.instance_id)) {
            return Ok(done);
        }
        let token = format!("terway-{}", crate::cloud::http::nonce());
        match self.create(cidr, &token) {
            Ok(entry_id) => {
                let status = self.status_of(cidr, &entry_id);
                Ok(Ensured::Created { entry_id, status })
            }
            // Someone made it between our look and our create: what is there now?
            Err(e) if codes::is_route_duplicate(&e.code) => {
                settled(decide(&self.entries()?, cidr, &self.instance_id)).ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The status of a just-created entry (`Creating` when the look fails).
    fn status_of(&self, cidr: IpNetwork, entry_id: &str) -> String {
        let filter = RouteEntryFilter {
            destination: Some(cidr.to_string()),
            ..RouteEntryFilter::default()
        };
        self.ecs
            .describe_route_entries(&self.table_id, &filter)
            .ok()
            .and_then(|l| l.into_iter().find(|e| e.id == entry_id))
            .map(|e| e.status)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "Creating".into())
    }

    /// CreateRouteEntry, again (same ClientToken) while the table is busy with another change.
    fn create(&self, cidr: IpNetwork, token: &str) -> std::result::Result<String, CloudError> {
        let name = format!("terway-{}", self.instance_id);
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match self.ecs.create_route_entry(
                &self.table_id,
                &cidr.to_string(),
                &self.instance_id,
                &name,
                token,
            ) {
                Err(e) if codes::is_route_busy(&e.code) && attempt < BUSY_ATTEMPTS => {
                    log::info!("{e}; the route table is busy, trying again in {delay:?}");
                    let jitter = crate::cloud::http::random_unit();
                    std::thread::sleep(delay.mul_f64(0.5 + jitter / 2.0));
                    delay = (delay * 2).min(Duration::from_secs(8));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn remove_stale(
        &self,
        entries: &[RouteEntryInfo],
        old: IpNetwork,
    ) -> std::result::Result<(), CloudError> {
        let mine = entries.iter().any(|e| {
            e.destination.parse::<IpNetwork>().ok() == Some(old) && points_at(e, &self.instance_id)
        });
        if !mine {
            return Ok(());
        }
        match self
            .ecs
            .delete_route_entry(&self.table_id, &old.to_string(), &self.instance_id)
        {
            Ok(()) => {
                log::info!(
                    "removed the route entry of the previous pod CIDR {old} -> {} from {}",
                    self.instance_id,
                    self.table_id
                );
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A check's result, reported to the loop.
#[derive(Debug, Clone)]
pub struct RouteDone {
    /// The pod CIDR checked (a reload may have changed it meanwhile).
    pub cidr: IpNetwork,
    pub stale: Option<IpNetwork>,
    pub result: std::result::Result<Ensured, String>,
}

/// What the daemon last found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Unchecked,
    Present { entry_id: String, status: String },
    Conflict(String),
    Error(String),
}

/// The daemon's side: schedule, last finding, view. The cloud work runs in jobs on a worker.
#[derive(Debug)]
pub struct RouteKeeper {
    client: Arc<RouteClient>,
    cidr: IpNetwork,
    /// A previous pod CIDR whose entry (if ours) is still to be removed.
    stale: Option<IpNetwork>,
    found: Found,
    checked_at: Option<u64>,
    every_ms: u64,
    next_check: u64,
    in_flight: bool,
    repairs: u64,
    /// The route settings the daemon started with (they change only on restart).
    started_with: (bool, Option<String>),
}

impl RouteKeeper {
    /// After the check at start (`first`), the next one is due `every_ms` later.
    pub fn new(
        client: Arc<RouteClient>,
        config: &Config,
        cidr: IpNetwork,
        first: &Ensured,
        now: u64,
    ) -> RouteKeeper {
        let every_ms = config
            .ip_pool_sync_period
            .map(|d| d.as_millis() as u64)
            .unwrap_or(DEFAULT_CHECK_EVERY_MS);
        let mut k = RouteKeeper {
            client,
            cidr,
            stale: None,
            found: Found::Unchecked,
            checked_at: None,
            every_ms,
            next_check: now + every_ms,
            in_flight: false,
            repairs: 0,
            started_with: (config.vpc_route, config.vpc_route_table_id.clone()),
        };
        k.record(first, now);
        k
    }

    /// Checks the route at start, synchronously: the daemon refuses to start when another
    /// instance owns the CIDR, or when the route cannot be checked at all.
    pub fn start(
        config: &Config,
        ecs: Arc<Ecs>,
        node: &NodeInfo,
        cidr: IpNetwork,
        previous: Option<IpNetwork>,
        now: u64,
    ) -> Result<RouteKeeper> {
        let client = Arc::new(RouteClient::discover(config, ecs, node)?);
        let table = client.table_id.clone();
        let first = client.ensure(cidr, previous).map_err(|e| {
            Error::new(
                Kind::Cloud,
                format!(
                    "cannot check the VPC route entry {cidr} -> {} in route table {table}: {e}",
                    client.instance_id
                ),
            )
        })?;
        match &first {
            Ensured::Conflict(msg) => {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    format!("refusing to start: {msg}"),
                ));
            }
            Ensured::Present { entry_id, status } => log::info!(
                "VPC route entry {cidr} -> {} in {table} is there ({entry_id}, {status})",
                client.instance_id
            ),
            Ensured::Created { entry_id, .. } => log::info!(
                "created the VPC route entry {cidr} -> {} in {table} ({entry_id})",
                client.instance_id
            ),
        }
        Ok(RouteKeeper::new(client, config, cidr, &first, now))
    }

    fn record(&mut self, e: &Ensured, now: u64) {
        self.checked_at = Some(now);
        self.found = match e {
            Ensured::Present { entry_id, status } => Found::Present {
                entry_id: entry_id.clone(),
                status: status.clone(),
            },
            Ensured::Created { entry_id, status } => Found::Present {
                entry_id: entry_id.clone(),
                status: status.clone(),
            },
            Ensured::Conflict(m) => Found::Conflict(m.clone()),
        };
    }

    /// A check to start now, if one is due and none runs.
    pub fn plan(&mut self, now: u64) -> Option<Job<RouteDone>> {
        if self.in_flight || now < self.next_check {
            return None;
        }
        self.in_flight = true;
        self.next_check = now + self.every_ms;
        Some(check_job(self.client.clone(), self.cidr, self.stale))
    }

    /// A check's result: logs what changed, and repairs count.
    pub fn apply(&mut self, done: RouteDone, now: u64) {
        self.in_flight = false;
        if done.cidr != self.cidr {
            // The pod CIDR changed while it ran: check the new one at once.
            self.next_check = now;
            return;
        }
        if done.stale.is_some() && done.stale == self.stale && done.result.is_ok() {
            self.stale = None;
        }
        let (cidr, table, me) = (self.cidr, &self.client.table_id, &self.client.instance_id);
        let before = self.found.clone();
        match &done.result {
            Ok(e) => {
                match e {
                    Ensured::Present { entry_id, .. }
                        if matches!(before, Found::Conflict(_) | Found::Error(_)) =>
                    {
                        log::info!(
                            "the VPC route entry {cidr} -> {me} in {table} is fine again ({entry_id})"
                        );
                    }
                    Ensured::Created { entry_id, .. } => {
                        self.repairs += 1;
                        log::warn!(
                            "the VPC route entry {cidr} -> {me} was missing from {table}: created it again ({entry_id})"
                        );
                    }
                    Ensured::Conflict(m) if before != Found::Conflict(m.clone()) => {
                        log::error!("{m}");
                    }
                    _ => {}
                }
                self.record(e, now);
            }
            Err(m) => {
                if before != Found::Error(m.clone()) {
                    log::warn!("checking the VPC route entry {cidr} -> {me} in {table}: {m}");
                }
                self.checked_at = Some(now);
                self.found = Found::Error(m.clone());
            }
        }
    }

    pub fn next_deadline(&self) -> Option<u64> {
        (!self.in_flight).then_some(self.next_check)
    }

    /// A reload: a new pod CIDR is routed at once, the old one's entry removed. The route
    /// settings themselves change only on restart.
    pub fn reload(&mut self, config: &Config, cidr: IpNetwork, now: u64) {
        if (config.vpc_route, config.vpc_route_table_id.clone()) != self.started_with {
            log::warn!("reload: vpc_route and vpc_route_table_id change only on restart");
        }
        if let Some(d) = config.ip_pool_sync_period {
            self.every_ms = d.as_millis() as u64;
        }
        if cidr != self.cidr {
            self.stale = Some(self.cidr);
            self.cidr = cidr;
            self.found = Found::Unchecked;
            self.checked_at = None;
            self.next_check = now;
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.client.instance_id
    }

    pub fn view(&self, now: u64) -> VpcRouteView {
        let (state, detail) = match &self.found {
            Found::Unchecked => ("unchecked", String::new()),
            Found::Present { entry_id, status } => ("present", format!("{entry_id} ({status})")),
            Found::Conflict(m) => ("conflict", m.clone()),
            Found::Error(m) => ("error", m.clone()),
        };
        VpcRouteView {
            route_table_id: self.client.table_id.clone(),
            destination: self.cidr.to_string(),
            next_hop_type: NEXT_HOP_TYPE.into(),
            next_hop_id: self.client.instance_id.clone(),
            state: state.into(),
            detail,
            checked_seconds_ago: self.checked_at.map(|t| now.saturating_sub(t) / 1000),
            repairs: self.repairs,
        }
    }
}

/// The job of one check: runs `ensure` on a worker.
fn check_job(
    client: Arc<RouteClient>,
    cidr: IpNetwork,
    stale: Option<IpNetwork>,
) -> Job<RouteDone> {
    Job::new(
        move || RouteDone {
            cidr,
            stale,
            result: client.ensure(cidr, stale).map_err(|e| e.to_string()),
        },
        move || RouteDone {
            cidr,
            stale,
            result: Err("the route check panicked (a bug)".into()),
        },
    )
}

#[cfg(test)]
#[path = "vpc_route_tests.rs"]
mod tests;
