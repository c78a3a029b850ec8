//! IPv4 policy routing rule operations.

use super::{Netlink, Rule};
use crate::error::Result;
use ipnetwork::Ipv4Network;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use std::net::IpAddr;

pub(super) fn rule_message(r: &Rule) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.action = RuleAction::ToTable;
    msg.header.table = u8::try_from(r.table).unwrap_or(0);
    msg.attributes.push(RuleAttribute::Priority(r.priority));
    msg.attributes.push(RuleAttribute::Table(r.table));
    if let Some(src) = r.src {
        msg.header.src_len = src.prefix();
        msg.attributes
            .push(RuleAttribute::Source(IpAddr::V4(src.network())));
    }
    if let Some(dst) = r.dst {
        msg.header.dst_len = dst.prefix();
        msg.attributes
            .push(RuleAttribute::Destination(IpAddr::V4(dst.network())));
    }
    msg
}

/// The rule a dumped message describes, if it is an IPv4 "lookup <table>" rule.
pub(super) fn rule_from(msg: &RuleMessage) -> Option<Rule> {
    let h = &msg.header;
    if h.family != AddressFamily::Inet || h.action != RuleAction::ToTable {
        return None;
    }
    let mut r = Rule {
        priority: 0,
        src: None,
        dst: None,
        table: u32::from(h.table),
    };
    for attr in &msg.attributes {
        match attr {
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::Source(IpAddr::V4(ip)) => {
                r.src = Ipv4Network::new(*ip, h.src_len).ok();
            }
            RuleAttribute::Destination(IpAddr::V4(ip)) => {
                r.dst = Ipv4Network::new(*ip, h.dst_len).ok();
            }
            _ => {}
        }
    }
    Some(r)
}

/// `512: from all to 10.0.0.5/32 lookup main`, as `ip rule` shows it.
impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |n: Option<Ipv4Network>| n.map_or("all".to_string(), |n| n.to_string());
        write!(
            f,
            "{}: from {} to {} lookup ",
            self.priority,
            side(self.src),
            side(self.dst)
        )?;
        if self.table == super::TABLE_MAIN {
            f.write_str("main")
        } else {
            write!(f, "{}", self.table)
        }
    }
}

impl Netlink {
    /// Adds `r`; an identical rule that already exists is success.
    pub fn add_rule(&mut self, r: &Rule) -> Result<()> {
        match self
            .sock
            .request(M::NewRule(rule_message(r)), NLM_F_CREATE | NLM_F_EXCL)
        {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e.into_error(format!("add rule {r}"))),
        }
    }

    /// Deletes `r`; a rule that is not there is success.
    pub fn del_rule(&mut self, r: &Rule) -> Result<()> {
        match self.sock.request(M::DelRule(rule_message(r)), 0) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::ESRCH)) => Ok(()),
            Err(e) => Err(e.into_error(format!("delete rule {r}"))),
        }
    }

    /// All IPv4 "lookup <table>" rules.
    pub fn rules(&mut self) -> Result<Vec<Rule>> {
        let mut req = RuleMessage::default();
        req.header.family = AddressFamily::Inet;
        let msgs = self
            .sock
            .dump(M::GetRule(req))
            .map_err(|e| e.into_error("list rules"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                M::NewRule(r) => rule_from(r),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_messages_round_trip() {
        let to = Rule {
            priority: 512,
            src: None,
            dst: Some("10.240.1.5/32".parse().unwrap()),
            table: 254,
        };
        assert_eq!(rule_from(&rule_message(&to)), Some(to.clone()));
        let from = Rule {
            priority: 2048,
            src: Some("10.240.1.5/32".parse().unwrap()),
            dst: None,
            table: 1003,
        };
        let msg = rule_message(&from);
        assert_eq!(msg.header.table, 0);
        assert_eq!(rule_from(&msg), Some(from.clone()));
        assert_eq!(
            from.to_string(),
            "2048: from 10.240.1.5/32 to all lookup 1003"
        );
    }
}
