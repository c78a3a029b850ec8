//! Daemon configuration: the Terway `eni_conf` keys users already have, plus ours.
//!
//! Parsing collects *every* problem (with the key it concerns) instead of stopping at the first,
//! so `terway config check` can show them all at once. `#` annotations as in the upstream docs
//! are tolerated: they are stripped outside strings before the JSON is parsed.
//!
//! Every key is in one table (`support`): used, or accepted and reported ("not built yet", "not
//! used in this mode"), and refused where ignoring its value would change what users get.

mod parse;
#[cfg(test)]
mod prop_tests;
mod support;
mod validate;

pub use parse::parse_duration;
use parse::{Parser, strip_hash_comments};
pub use support::{KEYS, KeySupport, Support};
pub use validate::create_parent_dir;

use crate::{Error, Kind, Result, ResultExt};
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/terway/eni.json";
pub const DEFAULT_SOCKET_PATH: &str = "/run/terway/terway.sock";
pub const DEFAULT_STATE_PATH: &str = "/var/lib/terway/state.json";
/// Longer than Linux's conntrack timeouts for closed and idle UDP flows (120 s).
pub const DEFAULT_IP_COOLDOWN: Duration = Duration::from_secs(120);
/// The metrics socket's file name, in the RPC socket's directory unless `metrics_socket` says.
pub const METRICS_SOCKET_NAME: &str = "metrics.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    #[serde(rename = "VPC")]
    Vpc,
    #[serde(rename = "ENIMultiIP")]
    EniMultiIp,
    #[serde(rename = "ENIOnly")]
    EniOnly,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Vpc => "VPC",
            Mode::EniMultiIp => "ENIMultiIP",
            Mode::EniOnly => "ENIOnly",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `eniip_virtual_type`: how shared ENI (ENIMultiIP) pods are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualType {
    /// veth pair + policy routing (the default).
    Veth,
    /// The pod's interface is an ipvlan L2 slave of the ENI.
    Ipvlan,
}

impl VirtualType {
    pub fn name(self) -> &'static str {
        match self {
            VirtualType::Veth => "veth",
            VirtualType::Ipvlan => "ipvlan",
        }
    }
}

impl fmt::Display for VirtualType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VSwitchPolicy {
    Ordered,
    Random,
    Most,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EniPolicy {
    MostIps,
    LeastIps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpStack {
    Ipv4,
    Dual,
}

/// A secret that never shows in Debug output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub version: Option<String>,
    pub daemon_mode: Mode,
    pub pod_cidr: Option<Ipv4Network>,
    /// VPC mode with `ip_stack: dual`: the node's IPv6 pod prefix (a /64 or longer, routed to
    /// the node like `pod_cidr`). A pod's IPv6 sits at the same offset as its IPv4 in `pod_cidr`.
    pub pod_cidr_v6: Option<Ipv6Network>,
    pub socket_path: PathBuf,
    pub state_path: PathBuf,
    /// Where the metrics are served over HTTP; `None`: `metrics.sock` beside `socket_path`.
    pub metrics_socket: Option<PathBuf>,
    /// Also serve the metrics over TCP here.
    pub metrics_listen: Option<SocketAddr>,
    pub max_pool_size: u32,
    pub min_pool_size: u32,
    pub vswitches: BTreeMap<String, Vec<String>>,
    pub vswitch_selection_policy: VSwitchPolicy,
    pub eni_selection_policy: EniPolicy,
    pub security_groups: Vec<String>,
    pub service_cidr: Option<Ipv4Network>,
    pub eni_tags: BTreeMap<String, String>,
    pub credential_path: Option<PathBuf>,
    pub access_key: Option<String>,
    pub access_secret: Option<Secret>,
    pub max_eni: Option<u32>,
    pub min_eni: Option<u32>,
    pub ip_stack: IpStack,
    pub idle_ip_reclaim_after: Option<Duration>,
    pub idle_ip_reclaim_interval: Option<Duration>,
    pub idle_ip_reclaim_batch_size: Option<u32>,
    pub ip_pool_sync_period: Option<Duration>,
    pub enable_eni_trunking: bool,
    pub eniip_virtual_type: Option<String>,
    pub region_id: Option<String>,
    pub ecs_endpoint: Option<String>,
    pub vpc_endpoint: Option<String>,
    pub metadata_endpoint: Option<String>,
    /// VPC mode: the daemon keeps the route entry `pod_cidr → this instance` in the VPC route
    /// table itself (cloud access as in the ENI modes). Off: no cloud calls, the route is the
    /// cluster's to make (CCM), as upstream.
    pub vpc_route: bool,
    /// With `vpc_route`: the route table; default the one of the node's vSwitch.
    pub vpc_route_table_id: Option<String>,
    /// How long an allocation is protected from GC and the orphan sweep (its ADD may still run).
    pub orphan_grace_period: Duration,
    /// A released address is not handed out again for this long unless nothing else is free
    /// (conntrack entries and neighbours of its old pod must expire first).
    pub ip_cooldown: Duration,
    /// Every key the file set, known or not: what `notes` reports on.
    pub file_keys: BTreeSet<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            version: None,
            daemon_mode: Mode::EniMultiIp,
            pod_cidr: None,
            pod_cidr_v6: None,
            socket_path: PathBuf::from(DEFAULT_SOCKET_PATH),
            state_path: PathBuf::from(DEFAULT_STATE_PATH),
            metrics_socket: None,
            metrics_listen: None,
            max_pool_size: 5,
            min_pool_size: 0,
            vswitches: BTreeMap::new(),
            vswitch_selection_policy: VSwitchPolicy::Ordered,
            eni_selection_policy: EniPolicy::MostIps,
            security_groups: Vec::new(),
            service_cidr: None,
            eni_tags: BTreeMap::new(),
            credential_path: None,
            access_key: None,
            access_secret: None,
            max_eni: None,
            min_eni: None,
            ip_stack: IpStack::Ipv4,
            idle_ip_reclaim_after: None,
            idle_ip_reclaim_interval: None,
            idle_ip_reclaim_batch_size: None,
            ip_pool_sync_period: None,
            enable_eni_trunking: false,
            eniip_virtual_type: None,
            region_id: None,
            ecs_endpoint: None,
            vpc_endpoint: None,
            metadata_endpoint: None,
            vpc_route: false,
            vpc_route_table_id: None,
            orphan_grace_period: Duration::from_secs(60),
            ip_cooldown: DEFAULT_IP_COOLDOWN,
            file_keys: BTreeSet::new(),
        }
    }
}

/// One problem in a config file, tied to the key it concerns (empty key: the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub msg: String,
    /// Reported, but the config still works (an unknown key: the daemon ignores it).
    pub warning: bool,
}

impl Problem {
    /// `key "<key>": <msg>`, without the "warning: " the Display form puts before warnings.
    pub fn without_level(&self) -> String {
        if self.key.is_empty() {
            self.msg.clone()
        } else {
            format!("key \"{}\": {}", self.key, self.msg)
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.warning { "warning: " } else { "" };
        write!(f, "{level}{}", self.without_level())
    }
}

impl Config {
    /// `eniip_virtual_type` as configured (any case), `veth` when unset.
    pub fn virtual_type(&self) -> VirtualType {
        match &self.eniip_virtual_type {
            Some(t) if t.eq_ignore_ascii_case("ipvlan") => VirtualType::Ipvlan,
            _ => VirtualType::Veth,
        }
    }

    /// The metrics socket: `metrics_socket`, or `metrics.sock` beside the RPC socket.
    pub fn metrics_socket_path(&self) -> PathBuf {
        self.metrics_socket
            .clone()
            .unwrap_or_else(|| self.socket_path.with_file_name(METRICS_SOCKET_NAME))
    }

    /// Reads and validates a config file. The error lists every problem with its key.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_ctx(|| format!("config {}", path.display()))?;
        let (config, problems) = Config::parse_all(&text);
        let (warnings, errors): (Vec<Problem>, Vec<Problem>) =
            problems.into_iter().partition(|p| p.warning);
        // Once per load (start, reload). When the daemon logs `notes()` itself, drop this.
        for w in &warnings {
            log::warn!("config {}: {}", path.display(), w.without_level());
        }
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => {
                let list: Vec<String> = errors.iter().map(|p| p.to_string()).collect();
                Err(Error::new(
                    Kind::InvalidConfig,
                    format!("config {}: {}", path.display(), list.join("; ")),
                ))
            }
        }
    }

    /// Parses config text; fails with every error found (warnings do not fail it).
    pub fn parse(text: &str) -> std::result::Result<Config, Vec<Problem>> {
        let (config, problems) = Config::parse_all(text);
        let errors: Vec<Problem> = problems.into_iter().filter(|p| !p.warning).collect();
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(errors),
        }
    }

    /// Reads a config file for the operator commands that only need some of its keys (cloud
    /// endpoints and credentials, the mode): the config as parsed and its errors, which the
    /// caller judges by key. Fails only when the file cannot be read or is not a JSON object.
    pub fn load_lenient(path: &Path) -> Result<(Config, Vec<Problem>)> {
        let text =
            std::fs::read_to_string(path).with_ctx(|| format!("config {}", path.display()))?;
        match Config::parse_all(&text) {
            (Some(c), problems) => Ok((c, problems.into_iter().filter(|p| !p.warning).collect())),
            (None, problems) => {
                let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                Err(Error::new(
                    Kind::InvalidConfig,
                    format!("config {}: {}", path.display(), list.join("; ")),
                ))
            }
        }
    }

    /// Every problem, warnings included (`terway config check`).
    pub fn check(text: &str) -> Vec<Problem> {
        Config::parse_all(text).1
    }

    /// What the daemon should say once at start about a config that loaded: unknown keys, keys
    /// accepted but not built yet or not used in this mode, values meant for tests. One line
    /// each, `key "<key>": <what>`. `Config::load` logs them as warnings.
    pub fn notes(&self) -> Vec<String> {
        self.warnings().iter().map(Problem::without_level).collect()
    }

    fn warnings(&self) -> Vec<Problem> {
        let keys = self.file_keys.iter().map(String::as_str);
        let mut out = support::notes(keys, self.daemon_mode, self.vpc_route);
        out.extend(self.validate().into_iter().filter(|p| p.warning));
        out
    }

    /// The config (None when it could not be read at all) and every problem found.
    fn parse_all(text: &str) -> (Option<Config>, Vec<Problem>) {
        match Config::parse_inner(text) {
            Ok(r) => (Some(r.0), r.1),
            Err(p) => (None, p),
        }
    }

    fn parse_inner(text: &str) -> std::result::Result<(Config, Vec<Problem>), Vec<Problem>> {
        let value: Value = serde_json::from_str(&strip_hash_comments(text)).map_err(|e| {
            vec![Problem {
                key: String::new(),
                msg: format!("not valid JSON: {e}"),
                warning: false,
            }]
        })?;
        let Value::Object(map) = value else {
            return Err(vec![Problem {
                key: String::new(),
                msg: "must be a JSON object".into(),
                warning: false,
            }]);
        };
        let mut p = Parser {
            map: &map,
            problems: Vec::new(),
        };
        let mut c = Config {
            file_keys: map.keys().cloned().collect(),
            ..Config::default()
        };
        if let Some(v) = p.string("version") {
            c.version = Some(v);
        }
        if let Some(v) = p.string("daemon_mode") {
            match v.as_str() {
                "VPC" => c.daemon_mode = Mode::Vpc,
                "ENIMultiIP" => c.daemon_mode = Mode::EniMultiIp,
                "ENIOnly" => c.daemon_mode = Mode::EniOnly,
                other => p.problem(
                    "daemon_mode",
                    format!("unknown mode \"{other}\" (expected VPC, ENIMultiIP or ENIOnly)"),
                ),
            }
        }
        c.pod_cidr = p.cidr("pod_cidr");
        c.pod_cidr_v6 = p.cidr_v6("pod_cidr_v6");
        c.service_cidr = p.cidr("service_cidr");
        if let Some(v) = p.path("socket_path") {
            c.socket_path = v;
        }
        if let Some(v) = p.path("state_path") {
            c.state_path = v;
        }
        c.metrics_socket = p.path("metrics_socket");
        c.metrics_listen = p.socket_addr("metrics_listen");
        if let Some(v) = p.uint("max_pool_size") {
            c.max_pool_size = v;
        }
        if let Some(v) = p.uint("min_pool_size") {
            c.min_pool_size = v;
        }
        if let Some(v) = p.vswitches() {
            c.vswitches = v;
        }
        if let Some(v) = p.string("vswitch_selection_policy") {
            c.vswitch_selection_policy = match v.as_str() {
                "ordered" => VSwitchPolicy::Ordered,
                "random" => VSwitchPolicy::Random,
                "most" => VSwitchPolicy::Most,
                other => {
                    p.problem(
                        "vswitch_selection_policy",
                        format!("unknown policy \"{other}\" (expected ordered, random or most)"),
                    );
                    VSwitchPolicy::Ordered
                }
            };
        }
        if let Some(v) = p.string("eni_selection_policy") {
            c.eni_selection_policy = match v.as_str() {
                "most_ips" => EniPolicy::MostIps,
                "least_ips" => EniPolicy::LeastIps,
                other => {
                    p.problem(
                        "eni_selection_policy",
                        format!("unknown policy \"{other}\" (expected most_ips or least_ips)"),
                    );
                    EniPolicy::MostIps
                }
            };
        }
        if let Some(v) = p.string("security_group") {
            c.security_groups.push(v);
        }
        if let Some(v) = p.string_list("security_groups") {
            for sg in v {
                if !c.security_groups.contains(&sg) {
                    c.security_groups.push(sg);
                }
            }
        }
        if let Some(v) = p.string_map("eni_tags") {
            c.eni_tags = v;
        }
        c.credential_path = p.path("credential_path");
        c.access_key = p.string("access_key");
        c.access_secret = p.string("access_secret").map(Secret);
        c.max_eni = p.uint("max_eni");
        c.min_eni = p.uint("min_eni");
        if let Some(v) = p.string("ip_stack") {
            c.ip_stack = match v.as_str() {
                "ipv4" => IpStack::Ipv4,
                "dual" => IpStack::Dual,
                other => {
                    p.problem(
                        "ip_stack",
                        format!("unknown ip_stack \"{other}\" (expected ipv4 or dual)"),
                    );
                    IpStack::Ipv4
                }
            };
        }
        c.idle_ip_reclaim_after = p.duration("idle_ip_reclaim_after");
        c.idle_ip_reclaim_interval = p.duration("idle_ip_reclaim_interval");
        c.idle_ip_reclaim_batch_size = p.uint("idle_ip_reclaim_batch_size");
        c.ip_pool_sync_period = p.duration("ip_pool_sync_period");
        c.enable_eni_trunking = p.bool("enable_eni_trunking").unwrap_or(false);
        c.eniip_virtual_type = p.string("eniip_virtual_type");
        if let Some(v) = &c.eniip_virtual_type
            && !["veth", "ipvlan"].iter().any(|t| v.eq_ignore_ascii_case(t))
        {
            p.problem(
                "eniip_virtual_type",
                format!("unknown eniip_virtual_type \"{v}\" (expected veth or ipvlan)"),
            );
        }
        c.region_id = p.string("region_id");
        c.ecs_endpoint = p.string("ecs_endpoint");
        c.vpc_endpoint = p.string("vpc_endpoint");
        c.metadata_endpoint = p.string("metadata_endpoint");
        c.vpc_route = p.bool("vpc_route").unwrap_or(false);
        c.vpc_route_table_id = p.string("vpc_route_table_id");
        if let Some(d) = p.duration("orphan_grace_period") {
            c.orphan_grace_period = d;
        }
        if let Some(d) = p.duration("ip_cooldown") {
            c.ip_cooldown = d;
        }
        // Errors, and the warnings of `validate`.
        let mut found = p.problems;
        found.extend(support::refusals(&map, c.daemon_mode, c.vpc_route));
        // A key that failed to parse already has its error; "required" would only repeat it.
        let semantic: Vec<Problem> = c
            .validate()
            .into_iter()
            .filter(|sp| !found.iter().any(|q| !q.warning && q.key == sp.key))
            .collect();
        found.extend(semantic);
        // An error on a key says more than its note.
        let noted = map
            .keys()
            .map(String::as_str)
            .filter(|k| !found.iter().any(|e| !e.warning && e.key == *k));
        let mut problems = support::notes(noted, c.daemon_mode, c.vpc_route);
        problems.extend(found);
        Ok((c, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_config_with_annotations_parses() {
        let text = r#"{
"version": "1", # 版本
"max_pool_size": 80, # 资源池最大水位
"min_pool_size": 20, # 资源池最小水位
"credential_path": "/var/addon/token-config",
"vswitches": {"cn-shanghai-f":["vsw-AAA", "vsw-BBB"]}, # 关联的虚拟交换机
"eni_tags": {"ack.aliyun.com":"xxxxxxxxx"},
"service_cidr": "172.16.0.0/16", # 服务CIDR
"security_group": "sg-xxxxxxx", # 安全组ID
"vswitch_selection_policy": "ordered"
}"#;
        let c = Config::parse(text).unwrap();
        assert_eq!(c.max_pool_size, 80);
        assert_eq!(c.min_pool_size, 20);
        assert_eq!(c.vswitches["cn-shanghai-f"], vec!["vsw-AAA", "vsw-BBB"]);
        assert_eq!(c.security_groups, vec!["sg-xxxxxxx"]);
        assert_eq!(c.daemon_mode, Mode::EniMultiIp);
        let p = Config::parse(r#"{"daemon_mode":"ENIMultiIP"}"#).unwrap_err();
        assert_eq!(p[0].key, "security_group");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"{"daemon_mode":"VPC","pod_cidr":"10.0.0.0/33","max_pool_size":"lots",
            "vswitches":{"z":["sw-1"]},"colour":"blue","idle_ip_reclaim_after":"5 minutes"}"#;
        let problems = Config::check(text);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "colour",
            "pod_cidr",
            "max_pool_size",
            "vswitches",
            "idle_ip_reclaim_after",
        ] {
            assert!(keys.contains(&k), "{k} missing from {problems:?}");
        }
    }

    #[test]
    fn vpc_mode_needs_a_usable_pod_cidr() {
        let p = Config::parse(r#"{"daemon_mode":"VPC"}"#).unwrap_err();
        assert_eq!(p[0].key, "pod_cidr");
        let p = Config::parse(r#"{"daemon_mode":"VPC","pod_cidr":"10.1.2.3/24"}"#).unwrap_err();
        assert!(p[0].msg.contains("10.1.2.0/24"), "{p:?}");
        let c = Config::parse(r#"{"daemon_mode":"VPC","pod_cidr":"10.1.2.0/24"}"#).unwrap();
        assert_eq!(c.pod_cidr.unwrap().prefix(), 24);
    }

    #[test]
    fn hash_inside_strings_is_kept() {
        let c = Config::parse(r##"{"eni_tags":{"k":"a#b"},"security_group":"sg-1"} # trailing"##)
            .unwrap();
        assert_eq!(c.eni_tags["k"], "a#b");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = Config::parse(
            r#"{"access_key":"AK","access_secret":"very-secret","security_group":"sg-1"}"#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[test]
    fn misspelt_keys_get_a_hint() {
        let p = Config::check(r#"{"vswitchs":{},"security_group":"sg-1"}"#);
        assert_eq!(
            p[0].msg,
            "unknown key, ignored (did you mean \"vswitches\"?)"
        );
        assert!(p[0].warning);
        // A warning alone does not stop the daemon.
        assert!(Config::parse(r#"{"colour":1,"security_group":"sg-1"}"#).is_ok());
        assert_eq!(
            Config::check(r#"{"colour":1}"#)[0].msg,
            "unknown key, ignored"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn malformed_json_is_one_clear_problem() {
        let p = Config::parse("{ not json").unwrap_err();
        assert!(p[0].msg.starts_with("not valid JSON"), "{p:?}");
    }
}
