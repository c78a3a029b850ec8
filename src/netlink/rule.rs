//! Policy routing rule operations, IPv4 and IPv6.

use super::{Family, Netlink, Rule};
use crate::err;
use crate::error::{Kind, Result};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};

/// A selector of another family than the rule's is a caller's bug, refused before the kernel
/// sees it.
fn check_families(r: &Rule) -> Result<()> {
    for (side, net) in [("from", r.src), ("to", r.dst)] {
        if let Some(net) = net.filter(|n| Family::of(n) != r.family) {
            return Err(err!(
                Kind::InvalidConfig,
                "{} rule {r}: {side} {net} is {}",
                r.family,
                Family::of(&net)
            ));
        }
    }
    Ok(())
}

pub(super) fn rule_message(r: &Rule) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = r.family.address_family();
    msg.header.action = RuleAction::ToTable;
    msg.header.table = u8::try_from(r.table).unwrap_or(0);
    msg.attributes.push(RuleAttribute::Priority(r.priority));
    msg.attributes.push(RuleAttribute::Table(r.table));
    if let Some(src) = r.src {
        msg.header.src_len = src.prefix();
        msg.attributes.push(RuleAttribute::Source(src.network()));
    }
    if let Some(dst) = r.dst {
        msg.header.dst_len = dst.prefix();
        msg.attributes
            .push(RuleAttribute::Destination(dst.network()));
    }
    msg
}

/// The rule a dumped message describes, if it is an IPv4 or IPv6 "lookup <table>" rule.
pub(super) fn rule_from(msg: &RuleMessage) -> Option<Rule> {
    let h = &msg.header;
    let family = Family::from_address_family(h.family)?;
    if h.action != RuleAction::ToTable {
        return None;
    }
    let mut r = Rule {
        family,
        priority: 0,
        src: None,
        dst: None,
        table: u32::from(h.table),
    };
    let net = |ip, len| {
        IpNetwork::new(ip, len)
            .ok()
            .filter(|n| Family::of(n) == family)
    };
    for attr in &msg.attributes {
        match attr {
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::Source(ip) => r.src = Some(net(*ip, h.src_len)?),
            RuleAttribute::Destination(ip) => r.dst = Some(net(*ip, h.dst_len)?),
            _ => {}
        }
    }
    Some(r)
}

/// `512: from all to 10.0.0.5/32 lookup main`, as `ip rule` shows it (`ip -6 rule` for IPv6).
impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |n: Option<IpNetwork>| n.map_or("all".to_string(), |n| n.to_string());
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
        check_families(r)?;
        match self
            .sock
            .request(M::NewRule(rule_message(r)), NLM_F_CREATE | NLM_F_EXCL)
        {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e.into_error(format!("add {} rule {r}", r.family))),
        }
    }

    /// Deletes `r`; a rule that is not there is success.
    pub fn del_rule(&mut self, r: &Rule) -> Result<()> {
        check_families(r)?;
        match self.sock.request(M::DelRule(rule_message(r)), 0) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::ESRCH)) => Ok(()),
            Err(e) => Err(e.into_error(format!("delete {} rule {r}", r.family))),
        }
    }

    /// All IPv4 "lookup <table>" rules; see [`Netlink::rules_of`] for IPv6.
    pub fn rules(&mut self) -> Result<Vec<Rule>> {
        self.rules_of(Family::V4)
    }

    /// All "lookup <table>" rules of one family.
    pub fn rules_of(&mut self, family: Family) -> Result<Vec<Rule>> {
        let mut req = RuleMessage::default();
        req.header.family = family.address_family();
        let msgs = self
            .sock
            .dump(M::GetRule(req))
            .map_err(|e| e.into_error(format!("list {family} rules")))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                M::NewRule(r) => rule_from(r),
                _ => None,
            })
            .filter(|r| r.family == family)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::AddressFamily;
    use std::net::IpAddr;

    /// `msg` as an RTM_NEWRULE request on the wire, parsed back.
    fn through_bytes(msg: &RuleMessage) -> RuleMessage {
        match super::super::through_the_wire(M::NewRule(msg.clone())) {
            M::NewRule(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rule_messages_round_trip() {
        let to = Rule {
            family: Family::V4,
            priority: 512,
            src: None,
            dst: Some("10.240.1.5/32".parse().unwrap()),
            table: 254,
        };
        assert_eq!(rule_from(&rule_message(&to)), Some(to.clone()));
        assert_eq!(rule_from(&through_bytes(&rule_message(&to))), Some(to));
        let from = Rule {
            family: Family::V4,
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

    #[test]
    fn ipv6_rule_messages_round_trip() {
        let from = Rule {
            family: Family::V6,
            priority: 2048,
            src: Some("fd00:1::5/128".parse().unwrap()),
            dst: Some("fd00:2::/64".parse().unwrap()),
            table: 1003,
        };
        let msg = through_bytes(&rule_message(&from));
        assert_eq!(msg.header.family, AddressFamily::Inet6);
        assert_eq!((msg.header.src_len, msg.header.dst_len), (128, 64));
        let src: IpAddr = "fd00:1::5".parse().unwrap();
        assert!(msg.attributes.contains(&RuleAttribute::Source(src)));
        assert_eq!(rule_from(&msg), Some(from.clone()));
        assert_eq!(
            from.to_string(),
            "2048: from fd00:1::5/128 to fd00:2::/64 lookup 1003"
        );
        // "from all" keeps its family: it is not the IPv4 rule of the same shape.
        let all = Rule {
            family: Family::V6,
            priority: 100,
            src: None,
            dst: None,
            table: 254,
        };
        let back = rule_from(&through_bytes(&rule_message(&all))).unwrap();
        assert_eq!(back, all);
        assert_ne!(
            back,
            Rule {
                family: Family::V4,
                ..all
            }
        );
    }

    #[test]
    fn mixed_families_are_refused_and_never_parsed() {
        let bad = Rule {
            family: Family::V4,
            priority: 512,
            src: None,
            dst: Some("fd00::5/128".parse().unwrap()),
            table: 254,
        };
        let e = check_families(&bad).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidConfig);
        assert!(e.msg.contains("to fd00::5/128 is IPv6"), "{}", e.msg);
        check_families(&Rule {
            family: Family::V6,
            ..bad.clone()
        })
        .unwrap();
        // A dumped IPv4 message carrying an IPv6 selector is not a rule we understand.
        assert_eq!(rule_from(&rule_message(&bad)), None);
    }
}
