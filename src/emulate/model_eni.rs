//! ENI operations of the model: create, attach/detach (asynchronous), delete, assign/unassign
//! IPv4 and IPv6 addresses, describe. Quotas and errors as the cloud enforces them.

use crate::emulate::errors::{self, ApiError};
use crate::emulate::model::{AddrRecord, Eni, EniStatus, EniType, Model, Ms};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Secondary IPv4 addresses an ENI may hold while not attached (the cloud's creation limit).
pub const MAX_SECONDARY_UNATTACHED: usize = 49;
/// IPv6 addresses an ENI may hold while not attached.
pub const MAX_IPV6_UNATTACHED: usize = 10;

#[derive(Debug, Clone)]
pub struct CreateEni {
    pub vswitch_id: String,
    pub security_group_ids: Vec<String>,
    pub eni_type: EniType,
    pub primary_ip: Option<Ipv4Addr>,
    pub secondary_count: usize,
    pub secondary_ips: Vec<Ipv4Addr>,
    pub ipv6_count: usize,
    pub tags: Vec<(String, String)>,
    pub description: String,
    pub name: String,
}

/// DescribeNetworkInterfaces filters; empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct EniFilter {
    pub instance_id: Option<String>,
    pub eni_ids: Vec<String>,
    pub status: Option<String>,
    pub eni_type: Option<String>,
    pub vswitch_id: Option<String>,
    pub tags: Vec<(String, String)>,
}

impl Model {
    pub fn create_eni(&mut self, req: &CreateEni, now: Ms) -> Result<String, ApiError> {
        self.advance(now);
        if req.security_group_ids.is_empty() {
            return Err(errors::missing("SecurityGroupIds"));
        }
        for sg in &req.security_group_ids {
            if !self.security_groups.contains(sg) {
                return Err(errors::security_group_not_found());
            }
        }
        if req.secondary_count + req.secondary_ips.len() > MAX_SECONDARY_UNATTACHED {
            return Err(errors::ipv4_count_exceeded());
        }
        if req.ipv6_count > MAX_IPV6_UNATTACHED {
            return Err(errors::ipv6_count_exceeded());
        }
        let vsw = self
            .vswitches
            .get_mut(&req.vswitch_id)
            .ok_or_else(errors::vswitch_not_found)?;
        if req.ipv6_count > 0 && vsw.ipv6_cidr.is_none() {
            return Err(errors::ipv6_not_enabled());
        }
        let mut exact: Vec<Ipv4Addr> = req.primary_ip.into_iter().collect();
        exact.extend(&req.secondary_ips);
        let auto = req.secondary_count + usize::from(req.primary_ip.is_none());
        if (vsw.available() as usize) < exact.len() + auto {
            return Err(errors::ip_not_enough(&vsw.id));
        }
        vsw.take_exact(&exact)?;
        let picked = match vsw.take(auto) {
            Ok(p) => p,
            Err(e) => {
                exact.iter().for_each(|ip| vsw.release(*ip));
                return Err(e);
            }
        };
        let v6 = match vsw.take6(req.ipv6_count) {
            Ok(v) => v,
            Err(e) => {
                exact.iter().chain(&picked).for_each(|ip| vsw.release(*ip));
                return Err(e);
            }
        };
        let zone_id = vsw.zone_id.clone();
        let mut ips = exact.into_iter().chain(picked);
        let (primary, secondary): (Ipv4Addr, Vec<Ipv4Addr>) = match req.primary_ip {
            Some(p) => {
                ips.next();
                (p, ips.collect())
            }
            None => {
                // Explicit secondaries come first in `exact`; the primary is the first auto pick.
                let all: Vec<Ipv4Addr> = ips.collect();
                let split = req.secondary_ips.len();
                let primary = *all.get(split).ok_or_else(errors::internal)?;
                let mut sec = all[..split].to_vec();
                sec.extend_from_slice(&all[split + 1..]);
                (primary, sec)
            }
        };
        let id = self.new_id("eni-");
        let mac = self.new_mac();
        let rec = |ip| AddrRecord {
            ip,
            since: now,
            removed: None,
        };
        self.enis.push(Eni {
            id: id.clone(),
            mac,
            eni_type: req.eni_type,
            status: EniStatus::Available,
            vswitch_id: req.vswitch_id.clone(),
            zone_id,
            security_group_ids: req.security_group_ids.clone(),
            primary_ip: primary,
            secondary: secondary.into_iter().map(rec).collect(),
            ipv6: v6
                .into_iter()
                .map(|ip| AddrRecord {
                    ip,
                    since: now,
                    removed: None,
                })
                .collect(),
            tags: req.tags.clone(),
            description: req.description.clone(),
            name: req.name.clone(),
            instance_id: None,
            trunk_eni_id: None,
            device_index: None,
            pending_until: None,
            meta_instance: None,
            meta_from: None,
            meta_until: None,
            created_at: now,
        });
        Ok(id)
    }

    pub fn attach_eni(
        &mut self,
        instance_id: &str,
        eni_id: &str,
        trunk_eni_id: Option<&str>,
        now: Ms,
    ) -> Result<(), ApiError> {
        self.advance(now);
        let inst = self
            .instances
            .get(instance_id)
            .ok_or_else(errors::ecs_not_found)?
            .clone();
        let itype = self
            .instance_type(&inst.instance_type)
            .cloned()
            .ok_or_else(errors::internal)?;
        let eni = self.eni(eni_id)?.clone();
        if eni.eni_type == EniType::Primary {
            return Err(errors::invalid_eni_type());
        }
        if eni.status != EniStatus::Available {
            return Err(errors::invalid_eni_state());
        }
        if eni.zone_id != inst.zone_id {
            return Err(errors::zone_mismatch());
        }
        if eni.ipv4_count() > itype.eni_private_ip_address_quantity as usize {
            return Err(errors::ipv4_count_exceeded());
        }
        if eni.live_ipv6().count() > itype.eni_ipv6_address_quantity as usize {
            return Err(errors::ipv6_count_exceeded());
        }
        let on_instance: Vec<&Eni> = self
            .enis
            .iter()
            .filter(|e| e.instance_id.as_deref() == Some(instance_id))
            .collect();
        if let Some(trunk) = trunk_eni_id {
            let t = self.eni(trunk)?;
            if t.eni_type != EniType::Trunk
                || t.status != EniStatus::InUse
                || t.instance_id.as_deref() != Some(instance_id)
            {
                return Err(errors::invalid_eni_type());
            }
            let members = on_instance
                .iter()
                .filter(|e| e.eni_type == EniType::Member)
                .count();
            let cap = itype.eni_total_quantity.saturating_sub(itype.eni_quantity) as usize;
            if members >= cap {
                return Err(errors::eni_per_instance_limit());
            }
        } else {
            if eni.eni_type == EniType::Trunk && !itype.eni_trunk_supported {
                return Err(errors::invalid_eni_type());
            }
            let normal = on_instance
                .iter()
                .filter(|e| e.eni_type != EniType::Member)
                .count();
            if normal >= itype.eni_quantity as usize {
                return Err(errors::eni_per_instance_limit());
            }
        }
        let used: Vec<u32> = on_instance.iter().filter_map(|e| e.device_index).collect();
        let index = (1..).find(|i| !used.contains(i)).unwrap_or(1);
        let delay = self.timing.attach_delay_ms;
        let e = self.eni_mut(eni_id)?;
        e.status = EniStatus::Attaching;
        e.instance_id = Some(instance_id.to_string());
        e.device_index = Some(index);
        if let Some(t) = trunk_eni_id {
            e.eni_type = EniType::Member;
            e.trunk_eni_id = Some(t.to_string());
        }
        e.pending_until = Some(now + delay);
        self.advance(now);
        Ok(())
    }

    pub fn detach_eni(&mut self, instance_id: &str, eni_id: &str, now: Ms) -> Result<(), ApiError> {
        self.advance(now);
        if !self.instances.contains_key(instance_id) {
            return Err(errors::ecs_not_found());
        }
        let eni = self.eni(eni_id)?;
        if eni.eni_type == EniType::Primary {
            return Err(errors::detach_primary());
        }
        if eni.instance_id.as_deref() != Some(instance_id) || eni.status != EniStatus::InUse {
            return Err(errors::invalid_eni_state());
        }
        let has_members = self
            .enis
            .iter()
            .any(|e| e.trunk_eni_id.as_deref() == Some(eni_id));
        if has_members {
            return Err(errors::invalid_eni_state());
        }
        let delay = self.timing.detach_delay_ms;
        let e = self.eni_mut(eni_id)?;
        e.status = EniStatus::Detaching;
        e.pending_until = Some(now + delay);
        e.meta_until = Some(now);
        if e.eni_type == EniType::Member {
            e.eni_type = EniType::Secondary;
        }
        self.advance(now);
        Ok(())
    }

    /// Asynchronous, as in the cloud: the ENI is `Deleting` for `delete_delay_ms`, then gone
    /// (its addresses freed). Deleting an ENI that is already `Deleting` is accepted again.
    pub fn delete_eni(&mut self, eni_id: &str, now: Ms) -> Result<(), ApiError> {
        self.advance(now);
        let eni = self.eni(eni_id)?;
        if eni.eni_type == EniType::Primary {
            return Err(errors::invalid_eni_type());
        }
        match eni.status {
            EniStatus::Deleting => return Ok(()),
            EniStatus::Available => {}
            _ => return Err(errors::invalid_eni_state()),
        }
        let delay = self.timing.delete_delay_ms;
        let e = self.eni_mut(eni_id)?;
        e.status = EniStatus::Deleting;
        e.pending_until = Some(now + delay);
        self.advance(now);
        Ok(())
    }

    /// Quota of IPv4 (primary included) and IPv6 addresses for an ENI in its current state.
    fn ip_quota(&self, eni: &Eni) -> (usize, usize) {
        let attached = eni
            .instance_id
            .as_deref()
            .and_then(|i| self.instances.get(i))
            .and_then(|i| self.instance_type(&i.instance_type));
        match attached {
            Some(t) => (
                t.eni_private_ip_address_quantity as usize,
                t.eni_ipv6_address_quantity as usize,
            ),
            None => (MAX_SECONDARY_UNATTACHED + 1, MAX_IPV6_UNATTACHED),
        }
    }

    fn check_ip_state(eni: &Eni) -> Result<(), ApiError> {
        match eni.status {
            EniStatus::Available | EniStatus::InUse => Ok(()),
            _ => Err(errors::invalid_eni_state()),
        }
    }

    /// Assigns `count` automatic or the given secondary IPv4 addresses.
    pub fn assign_ips(
        &mut self,
        eni_id: &str,
        count: usize,
        ips: &[Ipv4Addr],
        now: Ms,
    ) -> Result<Vec<Ipv4Addr>, ApiError> {
        self.advance(now);
        let eni = self.eni(eni_id)?;
        Self::check_ip_state(eni)?;
        let (quota, _) = self.ip_quota(eni);
        if eni.ipv4_count() + count + ips.len() > quota {
            return Err(errors::ipv4_count_exceeded());
        }
        let vsw_id = eni.vswitch_id.clone();
        let vsw = self
            .vswitches
            .get_mut(&vsw_id)
            .ok_or_else(errors::vswitch_not_found)?;
        let got = if ips.is_empty() {
            vsw.take(count)?
        } else {
            vsw.take_exact(ips)?;
            ips.to_vec()
        };
        let e = self.eni_mut(eni_id)?;
        e.secondary.extend(got.iter().map(|&ip| AddrRecord {
            ip,
            since: now,
            removed: None,
        }));
        Ok(got)
    }

    /// Unassigns secondary IPv4 addresses; all must be assigned to this ENI (or nothing changes).
    pub fn unassign_ips(
        &mut self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        now: Ms,
    ) -> Result<(), ApiError> {
        self.advance(now);
        let eni = self.eni(eni_id)?;
        Self::check_ip_state(eni)?;
        for ip in ips {
            if !eni.live_secondary().any(|s| s == *ip) {
                return Err(errors::ip_unassigned());
            }
        }
        let vsw_id = eni.vswitch_id.clone();
        let e = self.eni_mut(eni_id)?;
        for r in e.secondary.iter_mut() {
            if r.removed.is_none() && ips.contains(&r.ip) {
                r.removed = Some(now);
            }
        }
        if let Some(v) = self.vswitches.get_mut(&vsw_id) {
            ips.iter().for_each(|ip| v.release(*ip));
        }
        self.advance(now);
        Ok(())
    }

    pub fn assign_ipv6(
        &mut self,
        eni_id: &str,
        count: usize,
        ips: &[Ipv6Addr],
        now: Ms,
    ) -> Result<Vec<Ipv6Addr>, ApiError> {
        self.advance(now);
        let eni = self.eni(eni_id)?;
        Self::check_ip_state(eni)?;
        let (_, quota) = self.ip_quota(eni);
        if eni.live_ipv6().count() + count + ips.len() > quota {
            return Err(errors::ipv6_count_exceeded());
        }
        let vsw_id = eni.vswitch_id.clone();
        let vsw = self
            .vswitches
            .get_mut(&vsw_id)
            .ok_or_else(errors::vswitch_not_found)?;
        let got = if ips.is_empty() {
            vsw.take6(count)?
        } else {
            let cidr = vsw.ipv6_cidr.ok_or_else(errors::ipv6_not_enabled)?;
            for (i, ip) in ips.iter().enumerate() {
                if !cidr.contains(*ip) {
                    return Err(errors::ip_invalid());
                }
                if vsw.used6.contains(ip) || ips[..i].contains(ip) {
                    return Err(errors::ip_assigned());
                }
            }
            vsw.used6.extend(ips.iter().copied());
            ips.to_vec()
        };
        let e = self.eni_mut(eni_id)?;
        e.ipv6.extend(got.iter().map(|&ip| AddrRecord {
            ip,
            since: now,
            removed: None,
        }));
        Ok(got)
    }

    pub fn unassign_ipv6(
        &mut self,
        eni_id: &str,
        ips: &[Ipv6Addr],
        now: Ms,
    ) -> Result<(), ApiError> {
        self.advance(now);
        let eni = self.eni(eni_id)?;
        Self::check_ip_state(eni)?;
        for ip in ips {
            if !eni.live_ipv6().any(|s| s == *ip) {
                return Err(errors::ip_unassigned());
            }
        }
        let vsw_id = eni.vswitch_id.clone();
        let e = self.eni_mut(eni_id)?;
        for r in e.ipv6.iter_mut() {
            if r.removed.is_none() && ips.contains(&r.ip) {
                r.removed = Some(now);
            }
        }
        if let Some(v) = self.vswitches.get_mut(&vsw_id) {
            ips.iter().for_each(|ip| {
                v.used6.remove(ip);
            });
        }
        self.advance(now);
        Ok(())
    }

    pub fn describe_enis(&mut self, f: &EniFilter, now: Ms) -> Vec<Eni> {
        self.advance(now);
        self.enis
            .iter()
            .filter(|e| {
                f.instance_id
                    .as_ref()
                    .is_none_or(|i| e.instance_id.as_ref() == Some(i))
            })
            .filter(|e| f.eni_ids.is_empty() || f.eni_ids.contains(&e.id))
            .filter(|e| f.status.as_ref().is_none_or(|s| e.status.as_str() == s))
            .filter(|e| f.eni_type.as_ref().is_none_or(|t| e.eni_type.as_str() == t))
            .filter(|e| f.vswitch_id.as_ref().is_none_or(|v| &e.vswitch_id == v))
            .filter(|e| f.tags.iter().all(|t| e.tags.contains(t)))
            .cloned()
            .collect()
    }
}
