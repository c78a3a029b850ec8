//! Values that parse but cannot work. One place, reached through `Config::parse_all` by both
//! `terway config check` and the daemon (start and SIGHUP reload); every problem names its key.

use super::{Config, IpStack, Mode, Problem, VirtualType};
use crate::{Error, Kind, Result};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Ranges a node's pod CIDR must not touch (network, prefix, what they are). Pods there would get
/// addresses the kernel treats specially, or that the VPC cannot route to the node: every VPC
/// route table has a system route for 100.64.0.0/10 (cloud services: the metadata service
/// 100.100.100.200, DNS 100.100.2.136) and custom routes cannot point into it.
const RESERVED: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "\"this network\""),
    ([127, 0, 0, 0], 8, "loopback"),
    (
        [169, 254, 0, 0],
        16,
        "link-local (the pods' gateway 169.254.1.1 lives there)",
    ),
    ([224, 0, 0, 0], 4, "multicast"),
    ([240, 0, 0, 0], 4, "reserved, with the broadcast address"),
    (
        [100, 64, 0, 0],
        10,
        "the VPC's cloud-service range (metadata 100.100.100.200, DNS 100.100.2.136)",
    ),
];

/// Why a route table id cannot be one (`vtb-` and letters, digits or `-`), if so.
fn route_table_id_problem(id: &str) -> Option<String> {
    let ok = id.len() <= 64
        && id.strip_prefix("vtb-").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    (!ok).then(|| format!("{id:?} is not a route table id (vtb-…)"))
}

/// The longest accepted period: longer ones are typos ("99999999999h"), and timers add them to
/// the clock.
pub const MAX_PERIOD: Duration = Duration::from_secs(30 * 24 * 3600);
/// `ip_pool_sync_period` floor: each sync asks DescribeNetworkInterfaces and the metadata
/// service; "0s" would do so in a tight loop. The integration tests use 500ms.
pub const MIN_SYNC_PERIOD: Duration = Duration::from_millis(500);
/// Below this `ip_pool_sync_period` works but is meant for tests: a warning.
pub const SYNC_PERIOD_WARN_BELOW: Duration = Duration::from_secs(10);
/// `idle_ip_reclaim_interval` floor (how often idle addresses are looked at, as upstream).
pub const MIN_RECLAIM_INTERVAL: Duration = Duration::from_secs(1);
/// `idle_ip_reclaim_batch_size` ceiling: addresses per UnassignPrivateIpAddresses call.
pub const MAX_RECLAIM_BATCH: u32 = 10;
/// `sun_path` holds 108 bytes with the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

impl Config {
    /// Every rule on parsed values, cross-key ones included.
    pub(super) fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut unused_v6 = None;
        let mut problem = |key: &str, msg: String| {
            out.push(Problem {
                key: key.into(),
                msg,
                warning: false,
            })
        };
        if self.min_pool_size > self.max_pool_size {
            problem(
                "min_pool_size",
                format!(
                    "{} is above max_pool_size {}",
                    self.min_pool_size, self.max_pool_size
                ),
            );
        }
        if let (Some(min), Some(max)) = (self.min_eni, self.max_eni)
            && min > max
        {
            problem("min_eni", format!("{min} is above max_eni {max}"));
        }
        if self.daemon_mode != Mode::Vpc && self.max_eni == Some(0) {
            problem(
                "max_eni",
                "0 leaves no ENI to give pods addresses from: at least 1".into(),
            );
        }
        if let Some(n) = self.idle_ip_reclaim_batch_size
            && !(1..=MAX_RECLAIM_BATCH).contains(&n)
        {
            problem(
                "idle_ip_reclaim_batch_size",
                format!("{n} is out of range: 1 to {MAX_RECLAIM_BATCH} addresses per call"),
            );
        }
        if self.access_key.is_some() != self.access_secret.is_some() {
            problem(
                "access_key",
                "access_key and access_secret must be given together".into(),
            );
        }
        if self.daemon_mode != Mode::Vpc && self.security_groups.is_empty() {
            problem(
                "security_group",
                format!(
                    "required in {} mode: the security group new ENIs join",
                    self.daemon_mode
                ),
            );
        }
        if self.daemon_mode == Mode::EniMultiIp
            && self.virtual_type() == VirtualType::Ipvlan
            && self.service_cidr.is_none()
        {
            problem(
                "service_cidr",
                "required with eniip_virtual_type ipvlan: ipvlan pods reach services only \
                 through their route for this range to the node (e.g. \"172.21.0.0/20\")"
                    .into(),
            );
        }
        if self.daemon_mode == Mode::Vpc
            && let Some(t) = &self.vpc_route_table_id
        {
            if !self.vpc_route {
                problem(
                    "vpc_route_table_id",
                    "set, but vpc_route is not true: the daemon would keep no route entry in it; add \"vpc_route\": true (or remove this key)".into(),
                );
            } else if let Some(msg) = route_table_id_problem(t) {
                problem("vpc_route_table_id", msg);
            }
        }
        if self.daemon_mode == Mode::Vpc {
            match self.pod_cidr {
                None => problem(
                    "pod_cidr",
                    "required in VPC mode (the node's pod CIDR, e.g. \"10.244.1.0/24\")".into(),
                ),
                Some(c) => {
                    if let Some(msg) = pod_cidr_problem(c) {
                        problem("pod_cidr", msg);
                    }
                }
            }
            match (self.ip_stack, self.pod_cidr_v6) {
                (IpStack::Dual, None) => problem(
                    "pod_cidr_v6",
                    "required in VPC mode with ip_stack dual (the node's IPv6 pod prefix, e.g. \"fd00:0:0:1::/64\")".into(),
                ),
                (IpStack::Dual, Some(c6)) => {
                    if let Some(msg) = pod_cidr_v6_problem(c6, self.pod_cidr) {
                        problem("pod_cidr_v6", msg);
                    }
                }
                (IpStack::Ipv4, Some(c6)) => unused_v6 = Some(c6),
                (IpStack::Ipv4, None) => {}
            }
        }
        for (key, value, min) in [
            (
                "ip_pool_sync_period",
                self.ip_pool_sync_period,
                MIN_SYNC_PERIOD,
            ),
            (
                "idle_ip_reclaim_after",
                self.idle_ip_reclaim_after,
                Duration::ZERO,
            ),
            (
                "idle_ip_reclaim_interval",
                self.idle_ip_reclaim_interval,
                MIN_RECLAIM_INTERVAL,
            ),
            (
                "orphan_grace_period",
                Some(self.orphan_grace_period),
                Duration::ZERO,
            ),
            ("ip_cooldown", Some(self.ip_cooldown), Duration::ZERO),
        ] {
            match value {
                Some(d) if d < min => problem(key, format!("{d:?} is too short: at least {min:?}")),
                Some(d) if d > MAX_PERIOD => problem(
                    key,
                    format!(
                        "{d:?} is too long: at most {} days",
                        MAX_PERIOD.as_secs() / 86_400
                    ),
                ),
                _ => {}
            }
        }
        let mut socket_ok = true;
        for (key, path) in [
            ("state_path", &self.state_path),
            ("socket_path", &self.socket_path),
        ] {
            if let Some(msg) = path_problem(key, path) {
                socket_ok &= key != "socket_path";
                problem(key, msg);
            }
        }
        // Beside socket_path unless set: a broken socket_path is reported once, as itself.
        let metrics = self.metrics_socket_path();
        if self.metrics_socket.is_some() || socket_ok {
            if let Some(msg) = path_problem("metrics_socket", &metrics) {
                let beside = if self.metrics_socket.is_none() {
                    " (the default, beside socket_path)"
                } else {
                    ""
                };
                problem("metrics_socket", format!("{msg}{beside}"));
            } else if metrics == self.socket_path || metrics == self.state_path {
                problem(
                    "metrics_socket",
                    format!(
                        "{} is the daemon's {} already",
                        metrics.display(),
                        if metrics == self.socket_path {
                            "RPC socket"
                        } else {
                            "state file"
                        }
                    ),
                );
            }
        }
        if self.daemon_mode == Mode::EniMultiIp
            && self.virtual_type() == VirtualType::Veth
            && self.service_cidr.is_some()
        {
            out.push(Problem {
                key: "service_cidr".into(),
                msg: "accepted, not used in ENIMultiIP mode with eniip_virtual_type veth: veth \
                      pods reach services through the host already"
                    .into(),
                warning: true,
            });
        }
        if let Some(c6) = unused_v6 {
            out.push(Problem {
                key: "pod_cidr_v6".into(),
                msg: format!(
                    "{c6} set, but ip_stack is ipv4: pods get no IPv6 address; set \"ip_stack\": \"dual\" (or remove this key)"
                ),
                warning: true,
            });
        }
        // In VPC mode the key is reported as not used instead.
        if let Some(d) = self.ip_pool_sync_period
            && self.daemon_mode != Mode::Vpc
            && (MIN_SYNC_PERIOD..SYNC_PERIOD_WARN_BELOW).contains(&d)
        {
            out.push(Problem {
                key: "ip_pool_sync_period".into(),
                msg: format!(
                    "{d:?} is meant for tests: every sync asks DescribeNetworkInterfaces; \
                     use {SYNC_PERIOD_WARN_BELOW:?} or more on real nodes"
                ),
                warning: true,
            });
        }
        out
    }
}

/// Why `c6` cannot be a node's IPv6 pod prefix beside `pod_cidr`, if it cannot. A pod's IPv6 is
/// at its IPv4's offset, so the prefix must hold as many addresses as `pod_cidr`.
fn pod_cidr_v6_problem(c6: Ipv6Network, pod_cidr: Option<Ipv4Network>) -> Option<String> {
    if c6.prefix() < 64 {
        return Some(format!(
            "{c6} is too large: a node's IPv6 pod prefix is a /64 or longer"
        ));
    }
    if c6.network() != c6.ip() {
        return Some(format!(
            "{c6} has host bits set (did you mean {}/{}?)",
            c6.network(),
            c6.prefix()
        ));
    }
    let v6 = c6.network().segments();
    if v6[0] & 0xffc0 == 0xfe80 || v6[0] & 0xff00 == 0xff00 || c6.network().is_loopback() {
        return Some(format!(
            "{c6} is link-local, multicast or loopback: pods cannot use it"
        ));
    }
    let c4 = pod_cidr?;
    if 128 - u32::from(c6.prefix()) < 32 - u32::from(c4.prefix()) {
        return Some(format!(
            "{c6} holds fewer addresses than pod_cidr {c4}: a pod's IPv6 sits at its IPv4's offset, so it needs at least a /{}",
            96 + u32::from(c4.prefix())
        ));
    }
    None
}

/// Why `c` cannot be a node's pod CIDR, if it cannot.
fn pod_cidr_problem(c: Ipv4Network) -> Option<String> {
    if c.prefix() > 30 {
        return Some(format!("{c} is too small: a pod CIDR needs at least a /30"));
    }
    if c.network() != c.ip() {
        return Some(format!(
            "{c} has host bits set (did you mean {}/{}?)",
            c.network(),
            c.prefix()
        ));
    }
    let (first, last) = (u32::from(c.network()), u32::from(c.broadcast()));
    RESERVED.iter().find_map(|&(net, prefix, what)| {
        let r_first = u32::from_be_bytes(net);
        let r_last = r_first | u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        (first <= r_last && r_first <= last).then(|| {
            format!(
                "{c} overlaps {}.{}.{}.{}/{prefix}, {what}: pods cannot use those addresses",
                net[0], net[1], net[2], net[3]
            )
        })
    })
}

/// Why the daemon could not create or use the file at `path` (`state_path`, `socket_path`,
/// `metrics_socket`).
fn path_problem(key: &str, path: &Path) -> Option<String> {
    let socket = key != "state_path";
    let shown = path.display();
    if !path.is_absolute() {
        return Some(format!("\"{shown}\" must be an absolute path"));
    }
    if path.file_name().is_none() {
        return Some(format!("\"{shown}\" names no file"));
    }
    if socket && path.as_os_str().len() > MAX_SOCKET_PATH {
        return Some(format!(
            "\"{shown}\" is {} bytes long; a unix socket path holds at most {MAX_SOCKET_PATH}",
            path.as_os_str().len()
        ));
    }
    if let Some(a) = blocking_ancestor(path) {
        return Some(format!(
            "{} is not a directory, so {shown} cannot be created under it",
            a.display()
        ));
    }
    // The state file's own kind (and its companions') the store checks first thing at start.
    // The socket is bound only after the state is saved: say it now.
    let t = std::fs::symlink_metadata(path).ok()?.file_type();
    (socket && !t.is_socket())
        .then(|| format!("{shown} exists and is not a socket (the daemon would replace it)"))
}

/// The first ancestor of `path` (from the root down) that exists and is not a directory.
fn blocking_ancestor(path: &Path) -> Option<PathBuf> {
    let mut ancestors: Vec<&Path> = path
        .ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .collect();
    ancestors.reverse();
    for a in ancestors {
        match std::fs::metadata(a) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => return Some(a.to_path_buf()),
            // Missing (so are those below it) or not ours to look at: nothing to say.
            Err(_) => return None,
        }
    }
    None
}

/// Creates the directory the file of config key `key` goes in; an error names the key, the
/// file and, when there is one, the ancestor that is not a directory.
pub fn create_parent_dir(key: &str, path: &Path) -> Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(|e| {
        let (kind, why) = match blocking_ancestor(path) {
            Some(a) => (
                Kind::InvalidConfig,
                format!("{} is not a directory", a.display()),
            ),
            None => (Kind::Io, e.to_string()),
        };
        Error::new(
            kind,
            format!(
                "{key} {}: cannot create directory {}: {why}",
                path.display(),
                dir.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(json: &str) -> Vec<Problem> {
        Config::check(json)
    }

    /// The single error of a VPC-mode config with `extra` keys.
    fn vpc_error(extra: &str) -> Problem {
        let text = format!(r#"{{"daemon_mode":"VPC","pod_cidr":"10.1.0.0/24"{extra}}}"#);
        let errors: Vec<Problem> = problems(&text).into_iter().filter(|p| !p.warning).collect();
        assert_eq!(errors.len(), 1, "{text}: {errors:?}");
        errors.into_iter().next().unwrap()
    }

    #[test]
    fn dual_stack_in_vpc_mode_needs_a_usable_v6_prefix() {
        let dual = r#","ip_stack":"dual""#;
        let p = vpc_error(dual);
        assert_eq!(p.key, "pod_cidr_v6");
        assert!(p.msg.contains("required in VPC mode"), "{}", p.msg);
        for (c6, what) in [
            ("fd00::/48", "a /64 or longer"),
            ("fd00::1/64", "host bits"),
            ("fe80::/64", "link-local"),
            ("fd00::/124", "at least a /120"),
            ("10.0.0.0/8", "invalid IPv6 CIDR"),
        ] {
            let p = vpc_error(&format!(r#"{dual},"pod_cidr_v6":"{c6}""#));
            assert_eq!(p.key, "pod_cidr_v6");
            assert!(p.msg.contains(what), "{c6}: {}", p.msg);
        }
        for ok in ["fd00:0:0:1::/64", "2408:4005:39c:7a00::/80", "fd00::/120"] {
            let text = format!(
                r#"{{"daemon_mode":"VPC","pod_cidr":"10.1.0.0/24"{dual},"pod_cidr_v6":"{ok}"}}"#
            );
            assert!(Config::parse(&text).is_ok(), "{ok}");
        }
        // Set without dual: a note, not an error.
        let text = r#"{"daemon_mode":"VPC","pod_cidr":"10.1.0.0/24","pod_cidr_v6":"fd00::/64"}"#;
        let p = problems(text);
        assert!(
            p.len() == 1 && p[0].warning && p[0].key == "pod_cidr_v6",
            "{p:?}"
        );
    }

    #[test]
    fn pod_cidr_must_not_touch_reserved_ranges() {
        for (cidr, what) in [
            ("0.0.0.0/8", "this network"),
            ("127.0.0.0/24", "loopback"),
            ("169.254.1.0/24", "link-local"),
            ("224.1.0.0/16", "multicast"),
            ("240.0.0.0/30", "reserved"),
            ("255.255.255.252/30", "broadcast"),
            ("100.100.100.0/24", "metadata 100.100.100.200"),
            ("100.64.0.0/30", "cloud-service"),
            ("0.0.0.0/0", "this network"),
            ("96.0.0.0/3", "loopback"),
        ] {
            let text = format!(r#"{{"daemon_mode":"VPC","pod_cidr":"{cidr}"}}"#);
            let p = Config::parse(&text).unwrap_err();
            assert_eq!(p.len(), 1, "{cidr}: {p:?}");
            assert_eq!(p[0].key, "pod_cidr");
            assert!(p[0].msg.contains(what), "{cidr}: {}", p[0].msg);
        }
        for ok in [
            "10.250.0.0/16",
            "10.250.23.0/30",
            "172.16.0.0/12",
            "100.63.255.252/30",
            "100.128.0.0/24",
            "223.255.255.0/24",
        ] {
            let text = format!(r#"{{"daemon_mode":"VPC","pod_cidr":"{ok}"}}"#);
            assert!(Config::parse(&text).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_route_table_needs_vpc_route_and_a_route_table_id() {
        let p = vpc_error(r#","vpc_route_table_id":"vtb-abc""#);
        assert_eq!(p.key, "vpc_route_table_id");
        assert!(p.msg.contains("add \"vpc_route\": true"), "{p:?}");
        for bad in ["abc", "vtb-", "vtb-a b", "rtb-123"] {
            let p = vpc_error(&format!(
                r#","vpc_route":true,"vpc_route_table_id":"{bad}""#
            ));
            assert!(p.msg.contains("is not a route table id"), "{bad}: {p:?}");
        }
        let text = r#"{"daemon_mode":"VPC","pod_cidr":"10.1.0.0/24","vpc_route":true,
            "vpc_route_table_id":"vtb-bp145q7glnuzdvzu2"}"#;
        let c = Config::parse(text).unwrap();
        assert!(c.vpc_route);
        assert_eq!(
            c.vpc_route_table_id.as_deref(),
            Some("vtb-bp145q7glnuzdvzu2")
        );
        let p = vpc_error(r#","vpc_route":"yes""#);
        assert_eq!(p.key, "vpc_route");
    }

    #[test]
    fn pod_cidr_needs_a_usable_address() {
        for small in ["10.1.0.0/31", "10.1.0.0/32"] {
            let p = vpc_error(&format!(r#","pod_cidr":"{small}""#));
            assert!(p.msg.contains("too small"), "{p:?}");
        }
        // A /30 leaves one: network, gateway (.1) and broadcast are never handed out.
        assert!(Config::parse(r#"{"daemon_mode":"VPC","pod_cidr":"10.1.0.0/30"}"#).is_ok());
    }

    #[test]
    fn periods_have_floors_and_ceilings() {
        for (key, bad, says) in [
            ("ip_pool_sync_period", "0s", "at least 500ms"),
            ("ip_pool_sync_period", "499ms", "at least 500ms"),
            ("idle_ip_reclaim_interval", "0s", "at least 1s"),
            ("ip_pool_sync_period", "99999999999h", "at most 30 days"),
            ("idle_ip_reclaim_after", "721h", "at most 30 days"),
            ("orphan_grace_period", "99999999999h", "at most 30 days"),
        ] {
            let p = vpc_error(&format!(r#","{key}":"{bad}""#));
            assert_eq!(p.key, key);
            assert!(p.msg.contains(says), "{key} {bad}: {}", p.msg);
        }
        // What the integration tests use stays valid.
        let c = Config::parse(
            r#"{"daemon_mode":"VPC","pod_cidr":"10.1.0.0/24","ip_pool_sync_period":"500ms",
                "idle_ip_reclaim_after":"0s","orphan_grace_period":"0s",
                "idle_ip_reclaim_interval":"1s"}"#,
        )
        .unwrap();
        assert_eq!(c.orphan_grace_period, Duration::ZERO);
        assert!(
            Config::parse(
                r#"{"daemon_mode":"VPC","pod_cidr":"10.1.0.0/24","orphan_grace_period":"720h"}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn a_test_sync_period_is_a_warning() {
        let p = problems(r#"{"security_group":"sg-1","ip_pool_sync_period":"500ms"}"#);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].warning && p[0].key == "ip_pool_sync_period", "{p:?}");
        assert!(p[0].msg.contains("meant for tests"), "{p:?}");
        assert!(problems(r#"{"security_group":"sg-1","ip_pool_sync_period":"10s"}"#).is_empty());
    }

    #[test]
    fn counts_have_ranges() {
        let sg = r#","daemon_mode":"ENIMultiIP","security_group":"sg-1""#;
        let p = Config::parse(&format!(r#"{{"max_eni":0{sg}}}"#)).unwrap_err();
        assert_eq!(p[0].key, "max_eni");
        assert!(Config::parse(&format!(r#"{{"max_eni":1{sg}}}"#)).is_ok());
        for n in [0, 11] {
            let p = vpc_error(&format!(r#","idle_ip_reclaim_batch_size":{n}"#));
            assert_eq!(p.key, "idle_ip_reclaim_batch_size", "{p:?}");
        }
        let p = vpc_error(r#","min_pool_size":6,"max_pool_size":5"#);
        assert_eq!(p.key, "min_pool_size");
        let p = vpc_error(r#","min_eni":3,"max_eni":2"#);
        assert_eq!(p.key, "min_eni");
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("terway-validate-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn paths_must_be_absolute_and_creatable() {
        let p = vpc_error(r#","state_path":"state.json""#);
        assert_eq!(p.key, "state_path");
        assert!(p.msg.contains("absolute"), "{p:?}");
        let p = vpc_error(r#","socket_path":"/""#);
        assert_eq!(p.key, "socket_path");
        let long = format!("/run/{}/terway.sock", "x".repeat(100));
        let p = vpc_error(&format!(r#","socket_path":"{long}""#));
        assert!(p.msg.contains("at most 107"), "{p:?}");

        let d = tmpdir("paths");
        let file = d.join("file");
        std::fs::write(&file, b"").unwrap();
        for key in ["state_path", "socket_path"] {
            let p = vpc_error(&format!(r#","{key}":"{}/sub/x""#, file.display()));
            assert_eq!(p.key, key);
            assert!(
                p.msg
                    .contains(&format!("{} is not a directory", file.display())),
                "{p:?}"
            );
        }
        // An existing file that is not a socket: the daemon would replace it.
        let p = vpc_error(&format!(r#","socket_path":"{}""#, file.display()));
        assert!(p.msg.contains("is not a socket"), "{p:?}");
        // Not there yet below an existing directory: fine.
        let ok = format!(
            r#"{{"daemon_mode":"VPC","pod_cidr":"10.1.0.0/24","state_path":"{0}/a/b/state.json",
                "socket_path":"{0}/a/terway.sock"}}"#,
            d.display()
        );
        assert!(Config::parse(&ok).is_ok());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn metrics_endpoints() {
        let c = Config::parse(
            r#"{"daemon_mode":"VPC","pod_cidr":"10.1.0.0/24","socket_path":"/run/tw/t.sock"}"#,
        )
        .unwrap();
        assert_eq!(c.metrics_socket_path(), Path::new("/run/tw/metrics.sock"));
        assert_eq!(c.metrics_listen, None);
        let c = Config::parse(
            r#"{"daemon_mode":"VPC","pod_cidr":"10.1.0.0/24","metrics_socket":"/run/m.sock",
                "metrics_listen":"[::1]:9253"}"#,
        )
        .unwrap();
        assert_eq!(c.metrics_socket_path(), Path::new("/run/m.sock"));
        assert_eq!(c.metrics_listen, Some("[::1]:9253".parse().unwrap()));
        for bad in ["9253", "localhost:9253", "127.0.0.1", "127.0.0.1:99999", ""] {
            let p = vpc_error(&format!(r#","metrics_listen":"{bad}""#));
            assert_eq!(p.key, "metrics_listen", "{bad}");
            assert!(p.msg.contains("expected IP:port"), "{bad}: {p:?}");
        }
        for (bad, says) in [
            ("metrics.sock", "absolute"),
            ("/run/terway/terway.sock", "RPC socket already"),
            ("/var/lib/terway/state.json", "state file already"),
        ] {
            let p = vpc_error(&format!(r#","metrics_socket":"{bad}""#));
            assert_eq!(p.key, "metrics_socket", "{bad}");
            assert!(p.msg.contains(says), "{bad}: {p:?}");
        }
        let long = format!("/run/{}/m.sock", "x".repeat(100));
        let p = vpc_error(&format!(r#","metrics_socket":"{long}""#));
        assert!(p.msg.contains("at most 107"), "{p:?}");
        // The default beside a socket_path whose name is shorter can be too long on its own.
        let dir = format!("/run/{}", "x".repeat(95));
        let p = vpc_error(&format!(r#","socket_path":"{dir}/t.sock""#));
        assert_eq!(p.key, "metrics_socket");
        assert!(p.msg.contains("beside socket_path"), "{p:?}");
        // A broken socket_path is reported once, as itself.
        let p = vpc_error(r#","socket_path":"t.sock""#);
        assert_eq!(p.key, "socket_path");
        let d = tmpdir("metrics");
        let file = d.join("file");
        std::fs::write(&file, b"").unwrap();
        let p = vpc_error(&format!(r#","metrics_socket":"{}""#, file.display()));
        assert!(p.msg.contains("is not a socket"), "{p:?}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn creating_a_parent_names_the_key_and_the_ancestor() {
        let d = tmpdir("create");
        let file = d.join("file");
        std::fs::write(&file, b"").unwrap();
        let e = create_parent_dir("state_path", &file.join("sub/state.json")).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidConfig);
        assert!(e.msg.starts_with("state_path "), "{e}");
        assert!(
            e.msg
                .contains(&format!("{} is not a directory", file.display())),
            "{e}"
        );
        create_parent_dir("socket_path", &d.join("a/b/terway.sock")).unwrap();
        assert!(d.join("a/b").is_dir());
        std::fs::remove_dir_all(d).unwrap();
    }
}
