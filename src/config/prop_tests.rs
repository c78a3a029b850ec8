//! Property tests of the config entry `terway config check` and the daemon use: whatever the
//! file holds (bytes, any JSON, a valid config with keys of the wrong type, huge numbers, odd
//! durations, unicode), parsing never panics and gives a config or errors naming their keys,
//! and a config it gives keeps the rules. `PROPTEST_CASES` overrides the case budget.

use super::support::KEYS;
use super::validate::{MAX_PERIOD, MIN_SYNC_PERIOD};
use super::{Config, IpStack, Mode, VirtualType};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::sync::LazyLock;

/// Every accepted key, as the generators want them.
static KNOWN_KEYS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| KEYS.iter().map(|r| r.key).collect());

fn cases() -> ProptestConfig {
    crate::prop_support::proptest_config(1000)
}

fn any_json() -> impl Strategy<Value = Value> {
    crate::prop_support::any_json(&KNOWN_KEYS, nasty_string())
}

fn key() -> impl Strategy<Value = String> {
    crate::prop_support::key(&KNOWN_KEYS)
}

/// Strings that have broken parsers before: durations, CIDRs, paths, numbers as text.
fn nasty_string() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        prop::sample::select(vec![
            "99999999999h",
            "18446744073709551616s",
            "1e9h",
            "0.0000000001ms",
            ".5s",
            "5",
            "s",
            "1h-1s",
            "１s",
            "NaNs",
            "infs",
            "0s",
            "720h0m0.001s",
            "10.0.0.0/0",
            "0.0.0.0/32",
            "255.255.255.255/1",
            "1.2.3.4/33",
            "::/0",
            "10.1.0.0/30",
            "/",
            "",
            "relative/path",
            "/tmp/\u{0}nul",
            "/proc/self/fd/0/x",
            "-1",
            "4294967296",
            " 7 ",
            "vsw-é",
            "ENIMultiIP",
            "VPC",
        ])
        .prop_map(String::from),
        "[0-9.]{1,30}(ns|us|ms|s|m|h|d|){1,3}",
        "(/[a-zé\u{0}.]{0,8}){0,5}",
        "[0-9]{1,3}(\\.[0-9]{1,3}){0,4}(/[0-9]{0,3})?",
    ]
}

/// Valid configs, one per mode, every key set.
fn valid_bases() -> Vec<Value> {
    let eni = json!({
        "version": "1",
        "daemon_mode": "ENIMultiIP",
        "socket_path": "/run/terway/terway.sock",
        "state_path": "/var/lib/terway/state.json",
        "metrics_socket": "/run/terway/metrics.sock",
        "metrics_listen": "127.0.0.1:9253",
        "max_pool_size": 5,
        "min_pool_size": "0",
        "vswitches": {"cn-hangzhou-i": ["vsw-1", "vsw-2"]},
        "vswitch_selection_policy": "most",
        "eni_selection_policy": "least_ips",
        "security_group": "sg-1",
        "security_groups": ["sg-2"],
        "service_cidr": "172.16.0.0/16",
        "eni_tags": {"k": "v"},
        "credential_path": "/var/addon/token-config",
        "access_key": "AK",
        "access_secret": "SK",
        "max_eni": 3,
        "min_eni": 1,
        "ip_stack": "ipv4",
        "idle_ip_reclaim_after": "5m",
        "idle_ip_reclaim_interval": "2m",
        "idle_ip_reclaim_batch_size": 5,
        "ip_pool_sync_period": "120s",
        "enable_eni_trunking": "false",
        "eniip_virtual_type": "Veth",
        "region_id": "cn-hangzhou",
        "ecs_endpoint": "http://127.0.0.1:1",
        "vpc_endpoint": "http://127.0.0.1:1",
        "metadata_endpoint": "http://127.0.0.1:1",
        "orphan_grace_period": "60s",
    });
    let mut vpc = eni.clone();
    vpc["daemon_mode"] = "VPC".into();
    vpc["pod_cidr"] = "10.244.1.0/24".into();
    vec![eni, vpc]
}

#[derive(Debug, Clone)]
enum Edit {
    Set(String, Value),
    Remove(String),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let value = prop_oneof![
        any_json(),
        nasty_string().prop_map(Value::from),
        prop::sample::select(vec![
            json!(u64::MAX),
            json!(i64::MIN),
            json!(-1),
            json!(1e308),
            json!(-0.0),
            json!(4294967296u64),
            json!(0),
        ]),
    ];
    let edit = prop_oneof![
        4 => (key(), value).prop_map(|(k, v)| Edit::Set(k, v)),
        1 => key().prop_map(Edit::Remove),
    ];
    prop::collection::vec(edit, 1..5)
}

/// What `terway config check` and `Config::load` see, and what must hold of the answer.
fn check_text(text: &str) {
    let problems = Config::check(text);
    let parsed = Config::parse(text);
    let errors: Vec<_> = problems.iter().filter(|p| !p.warning).collect();
    assert_eq!(parsed.is_ok(), errors.is_empty(), "{problems:?}");
    for p in &errors {
        assert!(
            !p.key.is_empty()
                || p.msg.starts_with("not valid JSON")
                || p.msg == "must be a JSON object",
            "an error without its key: {p:?}"
        );
    }
    if let Ok(c) = parsed {
        holds_the_rules(&c);
    }
}

/// A config the parser accepts keeps the rules the daemon relies on.
fn holds_the_rules(c: &Config) {
    for d in [
        c.ip_pool_sync_period,
        c.idle_ip_reclaim_after,
        c.idle_ip_reclaim_interval,
        Some(c.orphan_grace_period),
    ]
    .into_iter()
    .flatten()
    {
        assert!(d <= MAX_PERIOD, "{d:?}");
    }
    assert!(c.ip_pool_sync_period.is_none_or(|d| d >= MIN_SYNC_PERIOD));
    assert!(c.min_pool_size <= c.max_pool_size);
    assert!(c.state_path.is_absolute() && c.socket_path.is_absolute());
    // Nothing that would silently change what pods get.
    assert_eq!(c.ip_stack, IpStack::Ipv4);
    assert!(!c.enable_eni_trunking);
    if c.daemon_mode == Mode::EniMultiIp && c.virtual_type() == VirtualType::Ipvlan {
        assert!(
            c.service_cidr.is_some(),
            "ipvlan pods need the service CIDR"
        );
    }
    if c.daemon_mode == Mode::Vpc {
        let cidr = c.pod_cidr.expect("VPC mode has a pod CIDR");
        assert!(cidr.prefix() <= 30 && cidr.ip() == cidr.network(), "{cidr}");
        let first = cidr.network().octets()[0];
        assert!(![0, 127].contains(&first) && first < 224, "{cidr}");
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_text(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_text(text in any::<String>()) {
        check_text(&text);
    }

    #[test]
    fn arbitrary_json(v in any_json()) {
        check_text(&v.to_string());
    }

    #[test]
    fn mutated_valid_configs(
        base in prop::sample::select(valid_bases()),
        edits in edits(),
        pretty in any::<bool>(),
        comment in prop::option::of(any::<String>()),
    ) {
        let mut v = base;
        for e in edits {
            match e {
                Edit::Set(k, x) => { v[k] = x; }
                Edit::Remove(k) => { v.as_object_mut().unwrap().remove(&k); }
            }
        }
        let mut text = if pretty {
            serde_json::to_string_pretty(&v).unwrap()
        } else {
            v.to_string()
        };
        if let Some(c) = comment {
            text.push_str(" # ");
            text.push_str(&c);
        }
        check_text(&text);
    }

    #[test]
    fn damaged_valid_configs(
        base in prop::sample::select(valid_bases()),
        cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = serde_json::to_vec_pretty(&base).unwrap();
        for (at, b) in cuts {
            let i = at.index(bytes.len() + 1);
            match b % 3 {
                0 => bytes.insert(i, b),
                1 if i < bytes.len() => { bytes.remove(i); }
                _ if i < bytes.len() => bytes[i] = b,
                _ => {}
            }
        }
        check_text(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn the_bases_are_valid() {
    for b in valid_bases() {
        let c = Config::parse(&b.to_string()).unwrap();
        holds_the_rules(&c);
        // Every key the parser reads is in the table.
        let unknown: Vec<_> = Config::check(&b.to_string())
            .into_iter()
            .filter(|p| p.msg.starts_with("unknown key"))
            .collect();
        assert!(unknown.is_empty(), "{unknown:?}");
    }
}
