//! Dual stack: keeping each ENI's IPv6 addresses paired with its IPv4s. Repairs (IPv6-only
//! assigns for IPv4s without a partner), release of spares nothing needs, and pairing.

use super::{CloudOp, EniState, Flight, Pool};
use std::net::Ipv6Addr;

impl EniState {
    /// Dual stack: IPv6 addresses this ENI still needs for its unpaired idle IPv4s.
    pub(super) fn missing6(&self) -> u32 {
        let unpaired = self.ips.iter().filter(|i| i.wants_partner()).count();
        unpaired.saturating_sub(self.spare6.len()) as u32
    }

    /// Dual stack: gives unpaired idle IPv4s a spare IPv6 partner.
    pub(super) fn pair(&mut self) {
        for ip in self.ips.iter_mut().filter(|i| i.wants_partner()) {
            match self.spare6.pop() {
                Some(v6) => ip.ip6 = Some(v6),
                None => break,
            }
        }
    }
}

impl Pool {
    /// Dual stack: an IPv6-only assign for every settled ENI whose idle IPv4s lack partners
    /// (an earlier IPv6 call failed, or reconcile found a partner gone).
    pub(super) fn plan_repair6(&mut self, now: u64, ops: &mut Vec<CloudOp>) {
        if now < self.retry_assign {
            return;
        }
        let wanting: Vec<(String, u32)> = self
            .st
            .enis
            .iter()
            .filter(|e| e.live() && !self.flights.busy(&e.info.id))
            .filter(|e| !self.st.blocked.is_blocked(&e.info.vswitch_id, now))
            .map(|e| (e.info.id.clone(), e.missing6()))
            .filter(|(_, n)| *n > 0)
            .collect();
        for (eni_id, missing) in wanting {
            let ipv6_count = missing.min(self.cfg.batch.max(1));
            let op = self.flights.start(Flight::Assign {
                eni: eni_id.clone(),
                count: 0,
                usable: ipv6_count,
            });
            ops.push(CloudOp::AssignIps {
                op,
                eni_id,
                count: 0,
                ipv6_count,
            });
        }
    }

    /// Dual stack: IPv6 addresses no IPv4 needs as a partner go back to the cloud.
    pub(super) fn plan_spare6_release(&mut self, now: u64, ops: &mut Vec<CloudOp>) {
        if now < self.retry_release {
            return;
        }
        let spare: Vec<(String, Vec<Ipv6Addr>)> = self
            .st
            .enis
            .iter()
            .filter(|e| e.live() && !self.flights.busy(&e.info.id) && e.missing6() == 0)
            .filter(|e| !e.ips.iter().any(|i| i.wants_partner()))
            .filter(|e| !e.spare6.is_empty())
            .map(|e| (e.info.id.clone(), e.spare6.clone()))
            .collect();
        for (eni_id, ips6) in spare {
            let ips6: Vec<Ipv6Addr> = ips6
                .into_iter()
                .take(self.cfg.batch.max(1) as usize)
                .collect();
            let op = self.flights.start(Flight::Unassign {
                eni: eni_id.clone(),
                ips: Vec::new(),
                ips6: ips6.clone(),
            });
            ops.push(CloudOp::UnassignIps {
                op,
                eni_id,
                ips: Vec::new(),
                ips6,
            });
        }
    }

    /// Dual stack: unknown IPv6s of a live ENI become spares, then partners of its unpaired
    /// IPv4s. Without dual stack the pool keeps no IPv6.
    pub(super) fn add_ips6(&mut self, eni_id: &str, ips6: &[Ipv6Addr]) {
        if !self.cfg.dual {
            return;
        }
        let Some(e) = self.eni_index(eni_id) else {
            return;
        };
        if !self.st.enis[e].live() {
            return;
        }
        let fresh: Vec<Ipv6Addr> = ips6
            .iter()
            .copied()
            .filter(|v6| !self.contains_ip6(*v6))
            .collect();
        let eni = &mut self.st.enis[e];
        for v6 in fresh {
            if !eni.spare6.contains(&v6) {
                eni.spare6.push(v6);
            }
        }
        eni.pair();
    }
}
