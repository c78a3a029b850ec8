//! A state file written by the schema-1 daemon (`tests/fixtures/`, captured from a real run of
//! the earlier version) is taken over by today's daemon: every allocation kept, the old file kept
//! as `.schema1`, new allocations never collide with the old ones.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn a_schema_1_state_file_is_migrated_and_every_allocation_kept() {
    require_root();
    let mut node = Node::with_cidr(70, "10.244.1.0/24");
    let mut old: Value =
        serde_json::from_str(include_str!("fixtures/state-schema1-vpc.json")).unwrap();
    // Written in another boot, its pods would be gone: make it this boot's.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    old["boot_id"] = Value::String(boot.trim().to_string());
    // Its pods are alive (else the daemon's sweep rightly releases their addresses).
    let alive = Netns::new("twpod");
    for a in old["allocations"].as_array_mut().unwrap() {
        a["netns"] = Value::String(alive.path());
    }
    std::fs::write(node.state_path(), serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    node.start_daemon();

    let copy = node.state_path().with_file_name("state.json.schema1");
    let kept: Value = serde_json::from_slice(&std::fs::read(&copy).unwrap()).unwrap();
    assert_eq!(kept, old, "the schema-1 file is kept as it was");
    let now: Value = serde_json::from_slice(&std::fs::read(node.state_path()).unwrap()).unwrap();
    assert_eq!(now["schema"], 2);
    assert_eq!(now["allocations"].as_array().unwrap().len(), 3);

    let out = node.cli(&["mapping", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut seen: Vec<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["pod"].as_str().unwrap().to_string(),
                r["res_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("default/web-1".to_string(), "10.244.1.2".to_string()),
            ("default/web-2".into(), "10.244.1.3".into()),
            ("default/web-3".into(), "10.244.1.4".into()),
        ]
    );
    // A new pod gets a new address; an old pod's DEL releases its own.
    let conf = node.netconf("1.0.0");
    let pod = Netns::new("twpod");
    let r = node.cni("ADD", "web-4", &pod.path(), &conf);
    r.assert_ok();
    assert_eq!(r.ip(), "10.244.1.5");
    node.cni("DEL", "web-1", "", &conf).assert_ok();
    let out = node.cli(&["pool", "--json"]);
    let pool: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pool["in_use"], 3, "{pool}");
    node.cni("DEL", "web-4", &pod.path(), &conf).assert_ok();
}
