//! A node's life in the cloud, as root, against `terway emulate --netns`: `terway node cleanup`
//! after the daemon died (dry run first, refused while a daemon serves the node), `terway eni
//! list` flagging leaks, `terway eni delete` acting only with `--yes`, and `terway max-pods`
//! from DescribeInstanceTypes and from metadata (inside a node namespace and over loopback).
//! The CLI runs on the host with a node's config pointed at the emulator's loopback address.

mod common;

use common::cloud::{Cloud, CloudSpec};
use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;
use terway::cloud::credentials::{CredentialProvider, CredentialSource};
use terway::cloud::ecs::{CloudConfig, Ecs};
use terway::cloud::lifecycle;

/// Node `i`'s config, its endpoints moved to the emulator's loopback address (as an operator
/// host elsewhere would reach the cloud), written beside the original.
fn host_config(cloud: &Cloud, i: usize, edit: impl FnOnce(&mut Value)) -> String {
    let mut v: Value =
        serde_json::from_slice(&std::fs::read(cloud.node_config(i)).unwrap()).unwrap();
    let base = format!("http://{}", cloud.addr);
    v["ecs_endpoint"] = json!(base);
    v["vpc_endpoint"] = json!(base);
    v["metadata_endpoint"] = json!(format!("{base}/instances/{}", cloud.instances[i]));
    edit(&mut v);
    let p = cloud.dir.0.join(format!("host-{i}.json"));
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    p.to_str().unwrap().to_string()
}

/// A signed client of the emulated region, to plant what the tests need.
fn client(cloud: &Cloud) -> Ecs {
    let v: Value = serde_json::from_slice(&std::fs::read(cloud.node_config(0)).unwrap()).unwrap();
    let base = format!("http://{}", cloud.addr);
    let creds = CredentialProvider::new(
        CredentialSource::Static {
            access_key: v["access_key"].as_str().unwrap().into(),
            access_secret: v["access_secret"].as_str().unwrap().into(),
        },
        None,
    );
    Ecs::new(
        CloudConfig {
            ecs_endpoint: base.clone(),
            vpc_endpoint: base,
            ..CloudConfig::new(v["region_id"].as_str().unwrap())
        },
        Arc::new(creds),
    )
    .unwrap()
}

fn security_group(cloud: &Cloud) -> String {
    let v: Value = serde_json::from_slice(&std::fs::read(cloud.node_config(0)).unwrap()).unwrap();
    v["security_group"].as_str().unwrap().to_string()
}

/// Creates an ENI with `tags` through the API; attached to `attach_to` (and waited for) if given.
fn plant_eni(cloud: &Cloud, ecs: &Ecs, tags: &[(&str, &str)], attach_to: Option<&str>) -> String {
    let tags: Vec<(String, String)> = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let e = ecs
        .create_eni(
            &cloud.vswitches[0],
            &[security_group(cloud)],
            1,
            &tags,
            "planted by a test",
            "",
        )
        .unwrap();
    if let Some(i) = attach_to {
        ecs.attach_eni(i, &e.id).unwrap();
        ecs.wait_eni_status(&e.id, "InUse", Duration::from_secs(20))
            .unwrap();
    }
    e.id
}

fn plant_route(ecs: &Ecs, dest: &str, instance: &str) -> String {
    let table = lifecycle::route_table_ids(ecs, None).unwrap().remove(0);
    let v = ecs
        .vpc_api()
        .call(
            "CreateRouteEntry",
            &[
                ("RouteTableId", table),
                ("DestinationCidrBlock", dest.to_string()),
                ("NextHopType", "Instance".to_string()),
                ("NextHopId", instance.to_string()),
            ],
        )
        .unwrap();
    v["RouteEntryId"].as_str().unwrap().to_string()
}

fn terway(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env_remove("TERWAY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn terway_json(args: &[&str]) -> (bool, Value) {
    let mut full = args.to_vec();
    full.push("--json");
    let (ok, out, err) = terway(&full);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}{err}"));
    (ok, v)
}

/// The model's ENIs: (id, status, owner tag, eni type).
fn model_enis(cloud: &Cloud) -> Vec<(String, String, Option<String>, String)> {
    let m = cloud.admin("GET", "/admin/model", None);
    m["enis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let owner = e["tags"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t[0] == "terway.node")
                .map(|t| t[1].as_str().unwrap().to_string());
            (
                e["id"].as_str().unwrap().to_string(),
                e["status"].as_str().unwrap().to_string(),
                owner,
                e["eni_type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn model_routes(cloud: &Cloud) -> BTreeSet<(String, String)> {
    let m = cloud.admin("GET", "/admin/model", None);
    m["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["destination"].as_str().unwrap().to_string(),
                r["next_hop_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn enis_of(cloud: &Cloud, instance: &str) -> BTreeSet<String> {
    model_enis(cloud)
        .into_iter()
        .filter(|(_, _, owner, _)| owner.as_deref() == Some(instance))
        .map(|(id, ..)| id)
        .collect()
}

fn resources(v: &Value) -> Vec<(String, String, String)> {
    v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["resource"].as_str().unwrap().to_string(),
                r["id"].as_str().unwrap().to_string(),
                r["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn node_cleanup_after_the_daemon_died_leaves_nothing_of_the_node() {
    let cloud = Cloud::start(CloudSpec {
        // A warm pool bigger than one ENI: the node ends up with two tagged ENIs.
        node_extra: json!({"min_pool_size": 35, "max_pool_size": 40}),
        ..CloudSpec::default()
    });
    let (a, b) = (cloud.instances[0].clone(), cloud.instances[1].clone());
    let mut node = cloud.node(0);
    node.start_daemon();
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("twpod")).collect();
    for (i, p) in pods.iter().enumerate() {
        node.cni("ADD", &format!("life-{i}"), &p.path()).assert_ok();
    }
    assert!(
        wait_until(Duration::from_secs(30), || enis_of(&cloud, &a).len() >= 2
            && model_enis(&cloud)
                .iter()
                .all(|(_, s, o, _)| o.as_deref() != Some(&a) || s == "InUse")),
        "two InUse ENIs for the node: {:?}",
        model_enis(&cloud)
    );
    // On the node, with no arguments, max-pods reads the type from metadata (100.100.100.200
    // inside the namespace) and asks DescribeInstanceTypes.
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        BIN,
        "max-pods",
        "--kubelet",
        "--config",
        node.config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "--max-pods=210\n");

    let ecs = client(&cloud);
    let pod_route = plant_route(&ecs, "10.244.9.0/24", &a);
    plant_route(&ecs, "192.168.77.0/24", &a);
    plant_route(&ecs, "10.244.10.0/24", &b);
    let other_node_eni = plant_eni(
        &cloud,
        &ecs,
        &[("creator", "terway"), ("terway.node", &b)],
        Some(&b),
    );
    let config = host_config(&cloud, 0, |_| {});
    let base = [
        "node",
        "cleanup",
        "--instance",
        &a,
        "--config",
        &config,
        "--pod-cidr",
        "10.244.9.0/24",
    ];
    let before = (model_enis(&cloud), model_routes(&cloud));

    // Refused while the node's daemon still answers on the config's socket.
    let (ok, _, err) = terway(&[&base[..], &["--yes"]].concat());
    assert!(!ok && err.contains("still serves"), "{err}");
    assert_eq!((model_enis(&cloud), model_routes(&cloud)), before);

    assert!(node.stop_daemon(Signal::SIGKILL).signal().is_some());
    let node_enis = enis_of(&cloud, &a);

    // Dry run: every step shown, nothing changed.
    let (ok, out, err) = terway(&base);
    assert!(ok, "{out}{err}");
    for id in node_enis.iter().chain([&pod_route]) {
        assert!(out.contains(id.as_str()), "{id} in the plan: {out}");
    }
    assert!(out.contains("detach from"), "{out}");
    assert!(out.contains("dry run: nothing changed"), "{out}");
    assert!(
        out.contains("192.168.77.0/24") && out.contains("kept"),
        "{out}"
    );
    assert!(!out.contains(&other_node_eni), "{out}");
    assert_eq!((model_enis(&cloud), model_routes(&cloud)), before);

    // For real.
    let (ok, v) = terway_json(&[&base[..], &["--yes"]].concat());
    assert!(ok, "{v}");
    assert_eq!(v["dry_run"], false);
    assert_eq!(v["instance_exists"], true);
    let res = resources(&v);
    for id in &node_enis {
        assert!(
            res.contains(&("ENI".into(), id.clone(), "deleted".into())),
            "{id}: {v}"
        );
    }
    assert!(
        res.contains(&("route".into(), pod_route.clone(), "deleted".into())),
        "{v}"
    );
    assert!(
        res.iter().any(|(k, _, r)| k == "route" && r == "kept"),
        "{v}"
    );

    // Nothing of the node's is left but its own primary ENI and the route terway did not make.
    assert!(enis_of(&cloud, &a).is_empty(), "{:?}", model_enis(&cloud));
    let left: Vec<_> = model_enis(&cloud)
        .into_iter()
        .filter(|(id, ..)| !before.0.iter().any(|(b, ..)| b == id))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        model_enis(&cloud)
            .iter()
            .any(|(id, s, _, _)| *id == other_node_eni && s == "InUse"),
        "the other node's ENI is untouched"
    );
    let routes = model_routes(&cloud);
    assert!(!routes.contains(&("10.244.9.0/24".into(), a.clone())));
    assert!(routes.contains(&("192.168.77.0/24".into(), a.clone())));
    assert!(routes.contains(&("10.244.10.0/24".into(), b.clone())));
    // The ENI devices left the node with the detach.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let links = sh_ok(&["ip", "-n", &a, "-o", "link", "show"]);
            !links.contains("eth1") && !links.contains("eth2")
        }),
        "{}",
        sh_ok(&["ip", "-n", &a, "-o", "link", "show"])
    );

    // Again: nothing left to do.
    let (ok, out, err) = terway(&[&base[..], &["--yes"]].concat());
    assert!(ok, "{out}{err}");
    assert!(!out.contains("ENI "), "{out}");
    assert!(out.contains("deleted 0, failed 0"), "{out}");

    // On a VPC-mode node, without --instance: metadata names the instance, the config its pod
    // CIDR (the node's own config, endpoints inside the VPC).
    cloud.edit_node_config(1, |v| {
        v["daemon_mode"] = json!("VPC");
        v["pod_cidr"] = json!("10.244.10.0/24");
    });
    let on_b = |extra: &[&str]| {
        let cfg = cloud.node_config(1);
        let mut cmd = vec![
            "ip", "netns", "exec", &b, BIN, "node", "cleanup", "--config",
        ];
        cmd.push(cfg.to_str().unwrap());
        cmd.extend_from_slice(extra);
        let out = sh(&cmd);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = on_b(&[]);
    assert!(out.contains(&format!("instance {b}: Running")), "{out}");
    assert!(
        out.contains(&other_node_eni) && out.contains("10.244.10.0/24"),
        "{out}"
    );
    let out = on_b(&["--yes"]);
    assert!(out.contains("deleted 2, failed 0"), "{out}");
    assert!(enis_of(&cloud, &b).is_empty());
    assert!(!model_routes(&cloud).contains(&("10.244.10.0/24".into(), b.clone())));
    assert_eq!(on_b(&[]).lines().last(), Some("dry run: nothing to delete"));
}

#[test]
fn eni_list_flags_leaks_and_eni_delete_acts_only_with_yes() {
    let cloud = Cloud::start(CloudSpec::default());
    let (a, b) = (cloud.instances[0].clone(), cloud.instances[1].clone());
    let ecs = client(&cloud);
    let gone = "i-tw0000000000gone";
    let in_use = plant_eni(
        &cloud,
        &ecs,
        &[("creator", "terway"), ("terway.node", &b)],
        Some(&b),
    );
    let orphan = plant_eni(
        &cloud,
        &ecs,
        &[("creator", "terway"), ("terway.node", gone)],
        None,
    );
    let idle = plant_eni(
        &cloud,
        &ecs,
        &[("creator", "terway"), ("terway.node", &a)],
        None,
    );
    let foreign = plant_eni(&cloud, &ecs, &[("owner", "someone")], None);
    let config = host_config(&cloud, 0, |_| {});

    // Default grace: the fresh Available ENI of a live instance is no leak; the orphan is.
    let (ok, out, err) = terway(&["eni", "list", "--config", &config]);
    assert!(!ok, "a leak makes it fail: {out}");
    assert!(err.contains("1 leaked ENI"), "{err}");
    let line = |id: &str| {
        out.lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} listed: {out}"))
            .to_string()
    };
    assert!(line(&orphan).contains(&format!("LEAK: owner {gone} does not exist")));
    assert!(!line(&idle).contains("LEAK"), "{out}");
    assert!(line(&in_use).contains("InUse") && line(&in_use).contains(&b));
    assert!(!out.contains(&foreign), "only terway's ENIs: {out}");

    // A zero grace: every Available one is a leak.
    let (ok, v) = terway_json(&["eni", "list", "--config", &config, "--grace", "0s"]);
    assert!(!ok);
    let leaks = |id: &str| -> Vec<String> {
        v["enis"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("{id}: {v}"))["leaks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    };
    assert!(leaks(&idle)[0].starts_with("Available, created"), "{v}");
    assert_eq!(leaks(&orphan).len(), 2, "{v}");
    assert!(leaks(&in_use).is_empty(), "{v}");
    assert!(
        v["enis"][0]["creation_time"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    // One owner's ENIs.
    let (ok, v) = terway_json(&["eni", "list", "--config", &config, "--instance", &b]);
    assert!(ok, "{v}");
    assert_eq!(v["enis"].as_array().unwrap().len(), 1);

    // Delete: a dry run first, then --yes.
    let exists = |id: &str| model_enis(&cloud).iter().any(|(e, ..)| e == id);
    let (ok, out, err) = terway(&["eni", "delete", &orphan, "--config", &config]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("dry run") && out.contains(&orphan), "{out}");
    assert!(exists(&orphan));
    let (ok, v) = terway_json(&["eni", "delete", &orphan, "--config", &config, "--yes"]);
    assert!(ok, "{v}");
    assert_eq!(
        resources(&v),
        [("ENI".into(), orphan.clone(), "deleted".into())]
    );
    assert!(!exists(&orphan));

    // An attached one needs --detach; an ENI terway did not create is never deleted.
    let (ok, out, _) = terway(&["eni", "delete", &in_use, "--config", &config, "--yes"]);
    assert!(!ok && out.contains("pass --detach"), "{out}");
    let (ok, out, _) = terway(&["eni", "delete", &foreign, "--config", &config, "--yes"]);
    assert!(!ok && out.contains("not created by terway"), "{out}");
    assert!(exists(&in_use) && exists(&foreign));
    let (ok, v) = terway_json(&[
        "eni", "delete", &in_use, "--config", &config, "--yes", "--detach",
    ]);
    assert!(ok, "{v}");
    assert_eq!(resources(&v)[0].2, "deleted");
    assert!(!exists(&in_use));
    let (ok, out, _) = terway(&["eni", "delete", "eni-nosuchthing", "--config", &config]);
    assert!(!ok && out.contains("not found"), "{out}");
}

#[test]
fn max_pods_from_the_cloud() {
    let cloud = Cloud::start(CloudSpec::default());
    let config_a = host_config(&cloud, 0, |_| {});
    let config_b = host_config(&cloud, 1, |_| {});

    let (ok, out, err) = terway(&[
        "max-pods",
        "--config",
        &config_a,
        "--instance-type",
        "ecs.g7.4xlarge",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("shared ENI (ENIMultiIP) | 210"), "{out}");
    assert!(out.contains("exclusive ENI (ENIOnly) | 7"), "{out}");
    assert!(err.is_empty(), "{err}");

    let (ok, v) = terway_json(&[
        "max-pods",
        "--config",
        &config_a,
        "--instance-type",
        "ecs.g7.large",
    ]);
    assert!(ok);
    assert_eq!(
        (
            v["eni_quantity"].clone(),
            v["eni_private_ip_quantity"].clone()
        ),
        (json!(3), json!(6))
    );
    assert_eq!(
        (v["shared"].clone(), v["exclusive"].clone()),
        (json!(12), json!(2))
    );
    let (_, _, err) = terway(&[
        "max-pods",
        "--config",
        &config_a,
        "--instance-type",
        "ecs.g7.large",
    ]);
    assert!(
        err.contains("warning: exclusive ENI mode needs at least 6"),
        "{err}"
    );

    // No type given: metadata names it (the per-instance path on loopback).
    let (ok, out, _) = terway(&["max-pods", "--config", &config_b]);
    assert!(
        ok && out.contains("ecs.g7.large") && out.contains("| 12"),
        "{out}"
    );
    let (ok, out, err) = terway(&[
        "max-pods",
        "--config",
        &config_b,
        "--kubelet",
        "--mode",
        "ENIOnly",
    ]);
    assert!(ok);
    assert_eq!(out, "--max-pods=2\n");
    assert!(
        err.contains("warning: ENIOnly mode needs at least 6"),
        "{err}"
    );
    let (_, out, _) = terway(&["max-pods", "--config", &config_a, "--kubelet"]);
    assert_eq!(out, "--max-pods=210\n");
    let capped = host_config(&cloud, 0, |v| {
        v["daemon_mode"] = json!("ENIOnly");
        v["max_eni"] = json!(3);
        v["service_cidr"] = json!("10.96.0.0/12");
    });
    let (_, out, _) = terway(&["max-pods", "--config", &capped, "--kubelet"]);
    assert_eq!(out, "--max-pods=3\n");
    let vpc = host_config(&cloud, 0, |v| {
        v["daemon_mode"] = json!("VPC");
        v["pod_cidr"] = json!("10.244.1.0/24");
    });
    let (ok, v) = terway_json(&["max-pods", "--config", &vpc, "--kubelet"]);
    assert!(ok);
    assert_eq!(
        (v["mode"].clone(), v["max_pods"].clone()),
        (json!("VPC"), json!(253))
    );

    let (ok, _, err) = terway(&[
        "max-pods",
        "--config",
        &config_a,
        "--instance-type",
        "ecs.nope",
    ]);
    assert!(
        !ok && err.contains("does not know instance type ecs.nope"),
        "{err}"
    );
    let calls = cloud.admin("GET", "/admin/calls", None);
    assert!(
        calls["DescribeInstanceTypes"]["ok"].as_u64().unwrap() >= 5,
        "{calls}"
    );
}
