//! Property tests of everything the plugin parses from a runtime: the network config on stdin
//! (with `prevResult` and `cni.dev/valid-attachments`), the `CNI_*` environment and `CNI_ARGS`.
//! None may panic; what they accept must be safe to use as names and paths.
//!
//! The case budget is fixed for CI; `PROPTEST_CASES=100000 cargo test --lib cni::proptests`
//! runs a longer fuzz.

use super::conf::{NetConf, SUPPORTED_VERSIONS};
use super::env::{Command, Env, parse_cni_args, parse_cni_args_lenient};
use super::result::CniResult;
use crate::datapath::{host_veth_alias, host_veth_name};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

fn config() -> ProptestConfig {
    crate::prop_support::proptest_config(1000)
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        prop_oneof![
            Just("1.0.0"),
            Just("0.4.0"),
            Just("1.1.0"),
            Just("eth0"),
            Just("10.0.0.1/32"),
            Just("tw/../x")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A valid config with some of its fields replaced by anything.
fn mutated_netconf() -> impl Strategy<Value = Value> {
    let keys = prop::sample::subsequence(
        vec![
            "cniVersion",
            "cniVersions",
            "name",
            "daemon_socket",
            "mtu",
            "prevResult",
            "cni.dev/valid-attachments",
            "plugins",
            "type",
        ],
        0..5,
    );
    (keys, prop::collection::vec(any_json(), 5)).prop_map(|(keys, values)| {
        let mut v = json!({
            "cniVersion": "1.0.0",
            "name": "terway",
            "type": "terway",
            "daemon_socket": "/run/terway/terway.sock",
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "tw0123456789abc"}, {"name": "eth0", "sandbox": "/x"}],
                "ips": [{"address": "10.0.0.2/32", "interface": 1}],
            },
        });
        for (k, x) in keys.into_iter().zip(values) {
            v[k] = x;
        }
        v
    })
}

/// Environment values as a runtime (or a fuzzer) might set them.
fn env_value() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        ".{0,40}",
        "[A-Za-z0-9_.-]{1,70}",
        Just("ADD".to_string()),
        Just("DEL".to_string()),
        Just("CHECK".to_string()),
        Just("eth0".to_string()),
        Just("/run/netns/x".to_string()),
    ])
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn netconf_parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = NetConf::parse(&bytes);
    }

    #[test]
    fn netconf_parse_accepts_only_what_it_can_use(v in mutated_netconf()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Ok(conf) = NetConf::parse(&bytes) {
            prop_assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
            prop_assert!(!conf.name.is_empty());
            prop_assert!(!conf.daemon_socket.as_os_str().is_empty());
            prop_assert!((68..=65535).contains(&conf.mtu));
            // prevResult is data, never trusted, but reading it must not panic.
            let _ = conf.prev_ips();
        }
    }

    #[test]
    fn env_accepts_only_safe_names(
        command in env_value(),
        id in env_value(),
        netns in env_value(),
        ifname in env_value(),
        args in env_value(),
        path in env_value(),
    ) {
        let m: BTreeMap<&str, Option<String>> = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname),
            ("CNI_ARGS", args),
            ("CNI_PATH", path),
        ]
        .into();
        let Ok(env) = Env::from_lookup(|k| m.get(k).cloned().flatten()) else {
            return Ok(());
        };
        if matches!(env.command, Command::Add | Command::Del | Command::Check) {
            // What ends up in link names, lock file names and aliases.
            prop_assert!(!env.container_id.is_empty());
            prop_assert!(env.container_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
            prop_assert!(!env.ifname.is_empty() && env.ifname.len() <= 15);
            prop_assert!(!env.ifname.contains('/') && env.ifname != "." && env.ifname != "..");
            let name = host_veth_name(&env.container_id, &env.ifname);
            prop_assert_eq!(name.len(), 15);
            prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()));
            prop_assert!(host_veth_alias(&env.container_id, &env.ifname).len() < 256);
        }
    }

    #[test]
    fn cni_args_parsers_never_panic(s in ".{0,80}") {
        let _ = parse_cni_args(&s);
        let lenient = parse_cni_args_lenient(&s);
        if let Ok(strict) = parse_cni_args(&s) {
            prop_assert_eq!(strict, lenient);
        }
    }

    /// What ADD prints comes back as a `prevResult` that names the same address.
    #[test]
    fn add_results_round_trip_as_prev_result(
        ip in any::<[u8; 4]>(),
        version in prop::sample::select(SUPPORTED_VERSIONS.to_vec()),
    ) {
        let wired = super::result::tests::sample(ip.into());
        let result = CniResult::from_wired(version, &wired, "/run/netns/x").to_json();
        let conf = json!({"cniVersion": version, "name": "n", "prevResult": result});
        let parsed = NetConf::parse(&serde_json::to_vec(&conf).unwrap()).unwrap();
        prop_assert_eq!(parsed.prev_ips(), vec![std::net::IpAddr::from(ip)]);
    }
}
