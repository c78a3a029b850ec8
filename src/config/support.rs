//! What every accepted key does, per mode: the one table behind unknown-key warnings, the
//! "accepted, not built yet" notes (`terway config check`, daemon start) and the values refused
//! because ignoring them would silently change what users get.
//!
//! A key's status in a mode is one of: used (it does what the README says), not built yet
//! (accepted and reported; the note says what it would do) or not used in this mode (accepted
//! and reported). In VPC mode the cloud keys are used only with `vpc_route: true` (the daemon
//! then keeps the pod CIDR's VPC route entry through the API); without it they are not used. Separately a key may refuse values: those are errors in every mode where the
//! key means something (not where it is "not used in this mode"). A switch whose default is what
//! we build (`enable_eni_trunking: false`) is "used": its other values refuse.

use super::parse::edit_distance;
use super::{Mode, Problem};
use serde_json::{Map, Value};

/// A key's status in one mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Does what the README says.
    Used,
    /// Accepted and reported, not built yet: what it would do.
    NotBuilt(&'static str),
    /// Accepted and reported, has nothing to act on in this mode: why.
    NotInMode(&'static str),
    /// VPC mode: used with `vpc_route: true`, else not used in this mode: why.
    WithVpcRoute(&'static str),
}

/// Why a value is refused (`Err`), or `Ok` when the key's status stands for it. Only values of
/// the right type reach a refusal: type errors of parsed keys are the parser's.
pub type Check = fn(&Value) -> Result<(), String>;

/// One accepted key.
#[derive(Debug, Clone, Copy)]
pub struct KeySupport {
    pub key: &'static str,
    pub vpc: Support,
    pub eni_multi_ip: Support,
    pub eni_only: Support,
    pub check: Option<Check>,
}

impl KeySupport {
    pub fn support(&self, mode: Mode) -> Support {
        match mode {
            Mode::Vpc => self.vpc,
            Mode::EniMultiIp => self.eni_multi_ip,
            Mode::EniOnly => self.eni_only,
        }
    }

    /// The status in `mode` for a config with `vpc_route` as given: used or not used.
    pub fn status(&self, mode: Mode, vpc_route: bool) -> Support {
        match self.support(mode) {
            WithVpcRoute(_) if vpc_route => Used,
            WithVpcRoute(why) => NotInMode(why),
            other => other,
        }
    }
}

use Support::{NotBuilt, NotInMode, Used, WithVpcRoute};

const NO_CLOUD: Support =
    NotInMode("pods get addresses from pod_cidr; the daemon makes no cloud calls");
/// A cloud key in VPC mode: what it is for with `vpc_route: true`.
const ROUTE_CLOUD: Support = WithVpcRoute(
    "the daemon makes no cloud calls without vpc_route: true (pod_cidr's VPC route entry is the cluster's to make)",
);
const NO_ROUTE: Support =
    NotInMode("pods get VPC addresses: the VPC routes them without a route entry");
const NO_POOL: Support =
    NotInMode("pod_cidr is on the node: there is no pool of cloud addresses to fill or drain");
const NO_ENI_CIDR: Support = NotInMode("pods get ENI addresses, not pod_cidr ones");
const NO_ENI_CIDR6: Support = NotInMode("pods get their IPv6 from their ENI, not from pod_cidr_v6");
const WHOLE_ENI: Support = NotInMode("a pod gets a whole ENI: there are no addresses to choose");

const fn row(
    key: &'static str,
    vpc: Support,
    eni_multi_ip: Support,
    eni_only: Support,
    check: Option<Check>,
) -> KeySupport {
    KeySupport {
        key,
        vpc,
        eni_multi_ip,
        eni_only,
        check,
    }
}

/// Used in every mode.
const fn used(key: &'static str, check: Option<Check>) -> KeySupport {
    row(key, Used, Used, Used, check)
}

/// An ENI key: not used in VPC mode, `multi` in ENIMultiIP, `only` in ENIOnly.
const fn eni(key: &'static str, multi: Support, only: Support) -> KeySupport {
    row(key, NO_CLOUD, multi, only, None)
}

/// A cloud key: used in the ENI modes, and in VPC mode with `vpc_route: true`.
const fn cloud(key: &'static str) -> KeySupport {
    row(key, ROUTE_CLOUD, Used, Used, None)
}

/// Every key the daemon accepts: Terway's `eni_conf` keys, later upstream ones, ours.
pub const KEYS: &[KeySupport] = &[
    // The file format version: informational, as upstream.
    used("version", None),
    used("daemon_mode", None),
    row("pod_cidr", Used, NO_ENI_CIDR, NO_ENI_CIDR, None),
    row("pod_cidr_v6", Used, NO_ENI_CIDR6, NO_ENI_CIDR6, None),
    used("socket_path", None),
    used("state_path", None),
    used("metrics_socket", None),
    used("metrics_listen", None),
    used("orphan_grace_period", None),
    used("ip_cooldown", None),
    row("max_pool_size", NO_POOL, Used, Used, None),
    row("min_pool_size", NO_POOL, Used, Used, None),
    eni("vswitches", Used, Used),
    eni("vswitch_selection_policy", Used, Used),
    eni("eni_selection_policy", Used, WHOLE_ENI),
    eni("security_group", Used, Used),
    eni("security_groups", Used, Used),
    // ENIMultiIP: used by ipvlan pods; with veth pods `validate` reports it as not used.
    row(
        "service_cidr",
        NotInMode("veth pods reach services through the host already"),
        Used,
        Used,
        None,
    ),
    eni("eni_tags", Used, Used),
    cloud("credential_path"),
    cloud("access_key"),
    cloud("access_secret"),
    cloud("region_id"),
    row(
        "ecs_endpoint",
        NotInMode("VPC mode calls only the VPC API (vpc_endpoint)"),
        Used,
        Used,
        None,
    ),
    cloud("vpc_endpoint"),
    cloud("metadata_endpoint"),
    eni("max_eni", Used, Used),
    eni(
        "min_eni",
        NotBuilt("would keep at least this many ENIs attached, idle or not"),
        Used,
    ),
    used("ip_stack", None),
    eni("idle_ip_reclaim_after", Used, Used),
    eni(
        "idle_ip_reclaim_interval",
        NotBuilt("would set how often idle addresses are looked at for release"),
        NotBuilt("would set how often idle ENIs are looked at for release"),
    ),
    eni(
        "idle_ip_reclaim_batch_size",
        NotBuilt("would cap how many idle addresses one reclaim round releases"),
        NotBuilt("would cap how many idle ENIs one reclaim round deletes"),
    ),
    cloud("ip_pool_sync_period"),
    used("enable_eni_trunking", Some(enable_eni_trunking)),
    row(
        "eniip_virtual_type",
        NotInMode("pods always get veth and host routes"),
        Used,
        NotInMode("the ENI itself is the pod's eth0"),
        None,
    ),
    // Upstream keys beyond the documented eni_conf ones.
    eni(
        "ip_warm_up_size",
        NotBuilt("would fill the pool with this many addresses at start"),
        NotBuilt("would attach this many ENIs at start"),
    ),
    eni(
        "idle_ip_reclaim_jitter_factor",
        NotBuilt("would randomise the reclaim interval by this factor"),
        NotBuilt("would randomise the reclaim interval by this factor"),
    ),
    row("eni_cap_ratio", NO_CLOUD, Used, Used, Some(eni_cap_ratio)),
    row("eni_cap_shift", NO_CLOUD, Used, Used, Some(eni_cap_shift)),
    eni(
        "eni_tag_filter",
        NotBuilt(concat!(
            "would manage only ENIs with these tags; this daemon already uses only ENIs ",
            "it created for this node (tag terway.node)"
        )),
        NotBuilt(concat!(
            "would manage only ENIs with these tags; this daemon already uses only ENIs ",
            "it created for this node (tag terway.node)"
        )),
    ),
    eni(
        "eni_tag_block_list",
        NotBuilt(concat!(
            "would never use ENIs with these tags; this daemon already uses only ENIs ",
            "it created for this node (tag terway.node)"
        )),
        NotBuilt(concat!(
            "would never use ENIs with these tags; this daemon already uses only ENIs ",
            "it created for this node (tag terway.node)"
        )),
    ),
    eni(
        "custom_stateful_workload_kinds",
        NotBuilt(concat!(
            "would give pods of these kinds their address back when re-created; this daemon ",
            "does so for every pod re-created under the same name within 5 minutes"
        )),
        NotBuilt(concat!(
            "would give pods of these kinds their ENI back when re-created; this daemon ",
            "does so for every pod re-created under the same name within 5 minutes"
        )),
    ),
    eni(
        "backoff_override",
        NotBuilt("would tune the retry backoff of cloud API calls"),
        NotBuilt("would tune the retry backoff of cloud API calls"),
    ),
    row(
        "extra_routes",
        NotBuilt("would add these routes to every pod"),
        NotBuilt("would add these routes to every pod"),
        NotBuilt("would add these routes to every pod"),
        Some(extra_routes),
    ),
    eni(
        "resource_group_id",
        NotBuilt("would create ENIs in this resource group, not the account's default one"),
        NotBuilt("would create ENIs in this resource group, not the account's default one"),
    ),
    eni(
        "rate_limit",
        NotBuilt("would override the client-side rate limits of cloud API calls"),
        NotBuilt("would override the client-side rate limits of cloud API calls"),
    ),
    row(
        "enable_ip_prefix",
        NO_CLOUD,
        Used,
        WHOLE_ENI,
        Some(enable_ip_prefix),
    ),
    eni(
        "ipv4_prefix_count",
        NotBuilt("would set how many IPv4 /28 prefixes an ENI gets, with enable_ip_prefix"),
        WHOLE_ENI,
    ),
    eni(
        "ipv6_prefix_count",
        NotBuilt("would set how many IPv6 /80 prefixes an ENI gets, with enable_ip_prefix"),
        WHOLE_ENI,
    ),
    used("ipam_type", Some(ipam_type)),
    // Ours: VPC mode keeps its own route entry (cross-key rules in `validate`).
    row("vpc_route", Used, NO_ROUTE, NO_ROUTE, None),
    row("vpc_route_table_id", Used, NO_ROUTE, NO_ROUTE, None),
];

/// The row of `key`, if the daemon accepts it.
pub fn lookup(key: &str) -> Option<&'static KeySupport> {
    KEYS.iter().find(|r| r.key == key)
}

/// Warnings for the keys of a file in `mode`: unknown keys (with a hint when one is misspelt)
/// and accepted keys that are not built yet or not used in this mode.
pub(super) fn notes<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    mode: Mode,
    vpc_route: bool,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for key in keys {
        let msg = match lookup(key).map(|r| r.status(mode, vpc_route)) {
            None => format!("unknown key, ignored{}", hint(key)),
            Some(Used | WithVpcRoute(_)) => continue,
            Some(NotBuilt(what)) => format!("accepted, not built yet: {what}"),
            Some(NotInMode(why)) => format!("accepted, not used in {mode} mode: {why}"),
        };
        out.push(Problem {
            key: key.into(),
            msg,
            warning: true,
        });
    }
    out
}

/// Errors for values refused in `mode` (never for a key not used in this mode).
pub(super) fn refusals(map: &Map<String, Value>, mode: Mode, vpc_route: bool) -> Vec<Problem> {
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .filter_map(|(key, value)| {
            let row = lookup(key)?;
            if matches!(row.status(mode, vpc_route), NotInMode(_)) {
                return None;
            }
            let msg = (row.check?)(value).err()?;
            Some(Problem {
                key: key.clone(),
                msg,
                warning: false,
            })
        })
        .collect()
}

fn hint(key: &str) -> String {
    KEYS.iter()
        .map(|r| (edit_distance(key, r.key), r.key))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, known)| format!(" (did you mean \"{known}\"?)"))
        .unwrap_or_default()
}

fn refused(value: &Value, why: &str) -> Result<(), String> {
    Err(format!("{value} refused: {why}"))
}

/// `true` as the parser reads booleans (upstream files carry them as strings too).
fn is_true(v: &Value) -> bool {
    matches!(v, Value::Bool(true)) || v.as_str() == Some("true")
}

fn enable_eni_trunking(v: &Value) -> Result<(), String> {
    if is_true(v) {
        return refused(
            v,
            "trunk ENIs are not built yet: no pod would get a trunk member ENI",
        );
    }
    Ok(())
}

fn enable_ip_prefix(v: &Value) -> Result<(), String> {
    match v {
        Value::Bool(false) => Ok(()),
        Value::String(s) if s == "false" => Ok(()),
        _ if is_true(v) => refused(
            v,
            "IPv4 prefixes are not built yet: pods would get secondary IPs, not prefix addresses",
        ),
        _ => Err(format!("expected true or false, got {v}")),
    }
}

fn ipam_type(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some("" | "default") => Ok(()),
        Some("crd") => refused(
            v,
            "centralized IPAM is not built yet: pods would get addresses from this node's own \
             pool, not the ones the cluster assigned",
        ),
        _ => Err(format!("unknown ipam_type {v} (expected default or crd)")),
    }
}

const ENI_CAP: &str =
    "the daemon would use every ENI the instance type allows (cap them with max_eni)";

fn eni_cap_ratio(v: &Value) -> Result<(), String> {
    match v.as_f64() {
        // Upstream reads 0 (unset) as 1.
        Some(0.0 | 1.0) => Ok(()),
        Some(_) => refused(
            v,
            &format!("ENI capacity ratios are not built yet: {ENI_CAP}"),
        ),
        None => Err(format!("expected a number, got {v}")),
    }
}

fn eni_cap_shift(v: &Value) -> Result<(), String> {
    match v.as_f64() {
        Some(0.0) => Ok(()),
        Some(_) => refused(
            v,
            &format!("ENI capacity shifts are not built yet: {ENI_CAP}"),
        ),
        None => Err(format!("expected a whole number, got {v}")),
    }
}

fn extra_routes(v: &Value) -> Result<(), String> {
    match v.as_array() {
        Some(routes) if routes.is_empty() => Ok(()),
        Some(routes) => Err(format!(
            "{} route(s) refused: extra pod routes are not built yet: pods would not get them",
            routes.len()
        )),
        None => Err(format!("expected a list of routes, got {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const ENI: &str = r#""daemon_mode":"ENIMultiIP","security_group":"sg-1""#;
    const VPC: &str = r#""daemon_mode":"VPC","pod_cidr":"10.1.0.0/24""#;

    /// Every problem of a config in a mode (`ENI` or `VPC`) with `extra` keys.
    fn check(mode: &str, extra: &str) -> Vec<Problem> {
        Config::check(&format!("{{{mode}{extra}}}"))
    }

    /// The single problem of `extra` in `mode`, which must be an error.
    fn refusal(mode: &str, extra: &str) -> Problem {
        let p = check(mode, extra);
        assert_eq!(p.len(), 1, "{extra}: {p:?}");
        assert!(!p[0].warning, "{extra}: {p:?}");
        p[0].clone()
    }

    /// The single problem of `extra` in `mode`, which must be a note.
    fn note(mode: &str, extra: &str) -> Problem {
        let p = check(mode, extra);
        assert_eq!(p.len(), 1, "{extra}: {p:?}");
        assert!(p[0].warning, "{extra}: {p:?}");
        p[0].clone()
    }

    #[test]
    fn one_row_per_key() {
        for (i, r) in KEYS.iter().enumerate() {
            assert!(
                KEYS[i + 1..].iter().all(|o| o.key != r.key),
                "{} twice",
                r.key
            );
        }
    }

    #[test]
    fn dual_stack_is_accepted() {
        assert!(check(ENI, r#","ip_stack":"dual""#).is_empty());
        assert!(check(VPC, r#","ip_stack":"dual","pod_cidr_v6":"fd00:1::/64""#).is_empty());
        assert!(check(VPC, r#","ip_stack":"ipv4""#).is_empty());
    }

    #[test]
    fn trunking_is_refused_when_on() {
        for mode in [ENI, VPC] {
            for on in ["true", r#""true""#] {
                let p = refusal(mode, &format!(r#","enable_eni_trunking":{on}"#));
                assert_eq!(p.key, "enable_eni_trunking");
                assert!(p.msg.contains("trunk ENIs are not built yet"), "{p:?}");
            }
            assert!(check(mode, r#","enable_eni_trunking":false"#).is_empty());
        }
    }

    #[test]
    fn ipvlan_is_used_in_shared_eni_mode_with_a_service_cidr() {
        for t in ["veth", "Veth"] {
            assert!(check(ENI, &format!(r#","eniip_virtual_type":"{t}""#)).is_empty());
        }
        for t in ["ipvlan", "IPVlan"] {
            let extra = format!(r#","eniip_virtual_type":"{t}","service_cidr":"10.96.0.0/12""#);
            assert!(check(ENI, &extra).is_empty(), "{t}");
            let c = Config::parse(&format!("{{{ENI}{extra}}}")).unwrap();
            assert_eq!(c.virtual_type(), crate::config::VirtualType::Ipvlan);
            // Without the service CIDR ipvlan pods could not reach services at all.
            let p = refusal(ENI, &format!(r#","eniip_virtual_type":"{t}""#));
            assert_eq!(p.key, "service_cidr");
            assert!(
                p.msg.contains("required with eniip_virtual_type ipvlan"),
                "{p:?}"
            );
        }
        assert_eq!(
            Config::default().virtual_type(),
            crate::config::VirtualType::Veth
        );
        // VPC pods are veth whatever it says: reported, not refused.
        let p = note(VPC, r#","eniip_virtual_type":"ipvlan""#);
        assert!(p.msg.starts_with("accepted, not used in VPC mode"), "{p:?}");
        let p = refusal(ENI, r#","eniip_virtual_type":"macvlan""#);
        assert!(p.msg.contains("expected veth or ipvlan"), "{p:?}");
    }

    #[test]
    fn min_eni_is_not_built_in_shared_eni_mode() {
        let p = note(ENI, r#","min_eni":1"#);
        assert_eq!(p.key, "min_eni");
        assert!(p.msg.starts_with("accepted, not built yet: "), "{p:?}");
        let p = note(VPC, r#","min_eni":1"#);
        assert!(p.msg.starts_with("accepted, not used in VPC mode"), "{p:?}");
        // The exclusive-ENI pool keeps min_eni ENIs.
        assert_eq!(lookup("min_eni").unwrap().support(Mode::EniOnly), Used);
        // Its range is still checked.
        let p = check(ENI, r#","min_eni":3,"max_eni":2"#);
        assert!(p.iter().any(|p| !p.warning && p.key == "min_eni"), "{p:?}");
    }

    #[test]
    fn service_cidr_is_for_exclusive_enis() {
        for (mode, name) in [(ENI, "ENIMultiIP"), (VPC, "VPC")] {
            let p = note(mode, r#","service_cidr":"172.16.0.0/16""#);
            assert_eq!(p.key, "service_cidr");
            assert!(
                p.msg
                    .starts_with(&format!("accepted, not used in {name} mode")),
                "{p:?}"
            );
        }
        assert_eq!(lookup("service_cidr").unwrap().support(Mode::EniOnly), Used);
        // ipvlan pods route it to the node.
        assert!(
            check(
                ENI,
                r#","service_cidr":"172.16.0.0/16","eniip_virtual_type":"ipvlan""#
            )
            .is_empty()
        );
    }

    #[test]
    fn cloud_keys_are_used_in_vpc_mode_only_with_vpc_route() {
        let cloud_keys = concat!(
            r#","access_key":"AK","access_secret":"SK","region_id":"cn-hangzhou","#,
            r#""vpc_endpoint":"http://127.0.0.1:1","metadata_endpoint":"http://127.0.0.1:2","#,
            r#""credential_path":"/etc/terway/creds","ip_pool_sync_period":"30s""#
        );
        let p = check(VPC, cloud_keys);
        assert_eq!(p.len(), 7, "{p:?}");
        for n in &p {
            assert!(n.warning, "{n:?}");
            assert!(
                n.msg.starts_with("accepted, not used in VPC mode")
                    && n.msg.contains("without vpc_route: true"),
                "{n:?}"
            );
        }
        let p = check(VPC, &format!(r#","vpc_route":true{cloud_keys}"#));
        assert!(p.is_empty(), "{p:?}");
        // VPC mode calls only the VPC API.
        let p = note(
            VPC,
            r#","vpc_route":true,"ecs_endpoint":"http://127.0.0.1:1""#,
        );
        assert_eq!(p.key, "ecs_endpoint");
        // The ENI modes need no route entry.
        for key in ["vpc_route", "vpc_route_table_id"] {
            let value = if key == "vpc_route" {
                "true"
            } else {
                r#""vtb-1""#
            };
            let p = note(ENI, &format!(r#","{key}":{value}"#));
            assert!(
                p.msg.starts_with("accepted, not used in ENIMultiIP mode"),
                "{p:?}"
            );
        }
        let c = Config::parse(&format!(
            "{{{VPC},\"access_key\":\"AK\",\"access_secret\":\"S\"}}"
        ))
        .unwrap();
        assert_eq!(c.notes().len(), 2, "{:?}", c.notes());
    }

    #[test]
    fn reclaim_pacing_is_not_built_and_still_checked() {
        for extra in [
            r#","idle_ip_reclaim_interval":"2m""#,
            r#","idle_ip_reclaim_batch_size":5"#,
        ] {
            let p = note(ENI, extra);
            assert!(p.msg.starts_with("accepted, not built yet: "), "{p:?}");
        }
        // Its range is still checked; the error replaces the note.
        let p = refusal(ENI, r#","idle_ip_reclaim_batch_size":0"#);
        assert!(p.msg.contains("out of range"), "{p:?}");
    }

    #[test]
    fn upstream_keys_are_recognised() {
        for (key, value) in [
            ("ip_warm_up_size", "10"),
            ("idle_ip_reclaim_jitter_factor", r#""0.1""#),
            ("eni_tag_filter", r#"{"k":"v"}"#),
            ("eni_tag_block_list", r#"["k"]"#),
            ("custom_stateful_workload_kinds", r#"["Foo"]"#),
            ("backoff_override", "{}"),
            ("extra_routes", "[]"),
            ("resource_group_id", r#""rg-1""#),
            ("rate_limit", r#"{"AssignPrivateIpAddresses":10}"#),
            ("ipv4_prefix_count", "1"),
            ("ipv6_prefix_count", "1"),
        ] {
            let p = note(ENI, &format!(r#","{key}":{value}"#));
            assert_eq!(p.key, key);
            assert!(p.msg.starts_with("accepted, not built yet: "), "{p:?}");
        }
        // Their default values are what this daemon does.
        for extra in [
            r#","eni_cap_ratio":1"#,
            r#","eni_cap_shift":0"#,
            r#","enable_ip_prefix":false"#,
            r#","ipam_type":"default""#,
            r#","ipam_type":"""#,
        ] {
            assert!(check(ENI, extra).is_empty(), "{extra}");
        }
    }

    #[test]
    fn upstream_values_that_would_change_what_pods_get_are_refused() {
        for (key, value, says) in [
            (
                "enable_ip_prefix",
                "true",
                "IPv4 prefixes are not built yet",
            ),
            ("ipam_type", r#""crd""#, "centralized IPAM is not built yet"),
            ("ipam_type", r#""vpc""#, "unknown ipam_type"),
            ("eni_cap_ratio", "0.5", "cap them with max_eni"),
            ("eni_cap_shift", "-1", "cap them with max_eni"),
            (
                "extra_routes",
                r#"[{"dst":"10.0.0.0/8"}]"#,
                "pods would not get them",
            ),
        ] {
            let p = refusal(ENI, &format!(r#","{key}":{value}"#));
            assert_eq!(p.key, key);
            assert!(p.msg.contains(says), "{key} {value}: {p:?}");
        }
        // Not refused where the key means nothing.
        let p = note(VPC, r#","enable_ip_prefix":true"#);
        assert!(p.msg.starts_with("accepted, not used in VPC mode"), "{p:?}");
    }

    #[test]
    fn eni_only_uses_the_service_cidr() {
        let p = check(
            r#""daemon_mode":"ENIOnly","security_group":"sg-1""#,
            r#","service_cidr":"172.16.0.0/16""#,
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn notes_are_the_warnings_of_a_loaded_config() {
        let text = format!(
            r#"{{{ENI},"min_eni":1,"colur":"x","ip_pool_sync_period":"1s","version":"1"}}"#
        );
        let c = Config::parse(&text).unwrap();
        let notes = c.notes();
        let warnings: Vec<String> = Config::check(&text)
            .iter()
            .map(Problem::without_level)
            .collect();
        assert_eq!(notes.len(), 3, "{notes:?}");
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        assert_eq!(sorted(&notes), sorted(&warnings));
        assert!(
            notes.contains(&"key \"colur\": unknown key, ignored".to_string()),
            "{notes:?}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("key \"min_eni\": accepted, not built yet: ")),
            "{notes:?}"
        );
        assert!(Config::default().notes().is_empty());
    }
}
