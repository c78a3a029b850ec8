//! Route entries of the VPC route table (VPC mode sends node pod CIDRs to instances).

use crate::emulate::errors::{self, ApiError};
use crate::emulate::model::{Cidr4, Cidr6, Model, Ms, RouteEntry};

/// A route as DescribeRouteEntryList shows it (system routes included, as the cloud does).
#[derive(Debug, Clone)]
pub struct RouteView {
    pub id: String,
    pub name: String,
    pub destination: String,
    pub kind: &'static str,
    pub next_hop_type: String,
    pub next_hop_id: String,
}

/// A destination CIDR, IPv4 or IPv6, in its canonical spelling (`None` when it is neither or
/// has host bits set).
pub fn canonical_destination(s: &str) -> Option<String> {
    if let Some(c) = Cidr4::parse(s) {
        return Some(c.to_string());
    }
    Cidr6::parse(s)
        .filter(Cidr6::is_network)
        .map(|c| c.to_string())
}

impl Model {
    fn check_table(&self, table: &str) -> Result<(), ApiError> {
        if table == self.route_table_id {
            Ok(())
        } else {
            Err(errors::route_table_not_found())
        }
    }

    pub fn create_route(
        &mut self,
        table: &str,
        destination: &str,
        next_hop_type: &str,
        next_hop_id: &str,
        now: Ms,
    ) -> Result<String, ApiError> {
        self.advance(now);
        self.check_table(table)?;
        let dest = canonical_destination(destination)
            .ok_or_else(|| errors::invalid("DestinationCidrBlock"))?;
        if next_hop_type != "Instance" {
            return Err(errors::invalid("NextHopType"));
        }
        if !self.instances.contains_key(next_hop_id) {
            return Err(errors::instance_not_found());
        }
        let system = self.vswitches.values().any(|v| {
            v.cidr.to_string() == dest || v.ipv6_cidr.is_some_and(|c| c.to_string() == dest)
        });
        if system || self.routes.iter().any(|r| r.destination == dest) {
            return Err(errors::route_entry_conflict());
        }
        let id = self.new_id("rte-");
        self.routes.push(RouteEntry {
            id: id.clone(),
            name: String::new(),
            destination: dest,
            next_hop_type: next_hop_type.to_string(),
            next_hop_id: next_hop_id.to_string(),
            created_at: now,
        });
        Ok(id)
    }

    /// Deletes by entry id, or by destination (and next hop when given).
    pub fn delete_route(
        &mut self,
        table: &str,
        entry_id: Option<&str>,
        destination: Option<&str>,
        next_hop_id: Option<&str>,
        now: Ms,
    ) -> Result<(), ApiError> {
        self.advance(now);
        self.check_table(table)?;
        let dest = match destination {
            Some(d) => Some(
                canonical_destination(d).ok_or_else(|| errors::invalid("DestinationCidrBlock"))?,
            ),
            None => None,
        };
        let pos = self.routes.iter().position(|r| {
            entry_id.is_none_or(|id| r.id == id)
                && dest.as_ref().is_none_or(|d| &r.destination == d)
                && next_hop_id.is_none_or(|n| r.next_hop_id == n)
        });
        match pos {
            Some(i) if entry_id.is_some() || dest.is_some() => {
                self.routes.remove(i);
                Ok(())
            }
            _ => Err(errors::route_entry_not_found()),
        }
    }

    pub fn list_routes(&mut self, table: &str, now: Ms) -> Result<Vec<RouteView>, ApiError> {
        self.advance(now);
        self.check_table(table)?;
        let mut out: Vec<RouteView> = self
            .vswitches
            .values()
            .map(|v| RouteView {
                id: format!("rte-system-{}", v.id.trim_start_matches("vsw-")),
                name: String::new(),
                destination: v.cidr.to_string(),
                kind: "System",
                next_hop_type: "local".into(),
                next_hop_id: String::new(),
            })
            .collect();
        // A vSwitch with IPv6 has a system entry for its /64 too.
        out.extend(self.vswitches.values().filter_map(|v| {
            Some(RouteView {
                id: format!("rte-system6-{}", v.id.trim_start_matches("vsw-")),
                name: String::new(),
                destination: v.ipv6_cidr?.to_string(),
                kind: "System",
                next_hop_type: "local".into(),
                next_hop_id: String::new(),
            })
        }));
        out.extend(self.routes.iter().map(|r| RouteView {
            id: r.id.clone(),
            name: r.name.clone(),
            destination: r.destination.clone(),
            kind: "Custom",
            next_hop_type: r.next_hop_type.clone(),
            next_hop_id: r.next_hop_id.clone(),
        }));
        Ok(out)
    }
}
