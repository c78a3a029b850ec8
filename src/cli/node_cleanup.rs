//! `terway node cleanup`: deletes what terway created in the cloud for an instance being
//! retired — its tagged ENIs (detach, wait, delete) and its pod CIDR's VPC route entry — and
//! reports each. Dry run unless `--yes`; refused while a daemon still serves the instance.

use super::cloud_access::{Access, CloudArgs};
use super::eni::{self, Step, duration, run_eni_steps};
use crate::cloud::codes;
use crate::cloud::ecs::{Ecs, EniFilter};
use crate::cloud::lifecycle::{self, InstanceInfo, RouteEntryInfo};
use crate::config::Mode;
use crate::rpc::client::call;
use crate::rpc::{Reply, Request};
use crate::{Error, Kind, Result};
use clap::{Args, Subcommand};
use ipnetwork::Ipv4Network;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Delete what terway created in the cloud for an instance (run on a node being retired, or
    /// with --instance from anywhere with credentials): its ENIs tagged terway.node=<instance>
    /// (detach, wait, delete) and the VPC route entry of its pod CIDR. Prints what it would do
    /// unless --yes.
    Cleanup(NodeCleanupArgs),
}

#[derive(Debug, Args)]
pub struct NodeCleanupArgs {
    /// The instance (default: this one, from metadata).
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// The node's pod CIDR: its route entry to the instance is deleted (default: the config's
    /// pod_cidr in VPC mode). Other routes to the instance are listed and kept.
    #[arg(long, value_name = "CIDR", value_parser = cidr)]
    pub pod_cidr: Option<Ipv4Network>,
    /// Route tables to look in (default: those of the vSwitches of the instance's VPC).
    #[arg(long = "route-table", value_name = "ID")]
    pub route_tables: Vec<String>,
    /// Act: without it nothing changes and the plan is printed.
    #[arg(long)]
    pub yes: bool,
    /// How long to wait for each ENI to detach and go.
    #[arg(long, default_value = "2m", value_parser = duration)]
    pub timeout: Duration,
    /// The daemon's RPC socket (default: the config's socket_path): cleaning up is refused while
    /// a daemon there serves the instance (it would create ENIs again).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn cidr(s: &str) -> std::result::Result<Ipv4Network, String> {
    let c: Ipv4Network = s
        .parse()
        .map_err(|e| format!("not an IPv4 CIDR: {s:?} ({e})"))?;
    Ipv4Network::new(c.network(), c.prefix()).map_err(|e| e.to_string())
}

fn cloud_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(Kind::Cloud, format!("{what}: {e}"))
}

/// Says which daemon still serves `instance` at `socket`, if one answers there. A daemon that
/// does not say its instance counts when the instance came from this node's metadata.
fn serving_daemon(socket: &Path, instance: &str, this_node: bool) -> Option<String> {
    match call(socket, &Request::Pool, Duration::from_secs(3)) {
        Ok(Reply::Pool(v)) => {
            let serves = match &v.instance_id {
                Some(i) => i == instance,
                None => this_node,
            };
            serves.then(|| format!("the daemon at {} ({} mode)", socket.display(), v.mode))
        }
        _ => None,
    }
}

/// Which route entries to the instance go: the pod CIDR's; the others are kept and listed.
pub fn route_steps(entries: &[RouteEntryInfo], pod_cidr: Option<Ipv4Network>) -> Vec<Step> {
    entries
        .iter()
        .map(|r| {
            let ours = pod_cidr.is_some_and(|c| {
                r.destination
                    .parse::<Ipv4Network>()
                    .is_ok_and(|d| d.network() == c.network() && d.prefix() == c.prefix())
            });
            let hops: Vec<&str> = r.next_hops.iter().map(|(_, id)| id.as_str()).collect();
            let state = format!(
                "{} -> {} in {}",
                r.destination,
                hops.join(","),
                r.route_table_id
            );
            let (action, result) = match (ours, pod_cidr) {
                (true, _) => ("delete".to_string(), String::new()),
                (false, Some(c)) => (format!("none (not the node's pod CIDR {c})"), "kept".into()),
                (false, None) => (
                    "none (no pod CIDR for this node: give --pod-cidr)".to_string(),
                    "kept".into(),
                ),
            };
            Step {
                resource: "route",
                id: r.id.clone(),
                state,
                action,
                result,
                ok: true,
            }
        })
        .collect()
}

fn run_route_steps(ecs: &Ecs, steps: &mut [Step], entries: &[RouteEntryInfo]) {
    for step in steps
        .iter_mut()
        .filter(|s| s.resource == "route" && s.acts())
    {
        let Some(entry) = entries.iter().find(|e| e.id == step.id) else {
            continue;
        };
        match lifecycle::delete_route_entry(ecs, entry) {
            Ok(()) => step.result = "deleted".into(),
            Err(e) if codes::is_not_found(&e.code) => step.result = "gone already".into(),
            Err(e) => {
                step.result = format!("failed: {e}");
                step.ok = false;
            }
        }
    }
}

pub fn cleanup(a: &NodeCleanupArgs) -> Result<ExitCode> {
    let access = Access::new(&a.cloud)?;
    let (instance, this_node) = match &a.instance {
        Some(i) => (i.clone(), false),
        None => (access.instance_id()?, true),
    };
    let socket = a
        .socket
        .clone()
        .unwrap_or_else(|| access.config.socket_path.clone());
    let daemon = serving_daemon(&socket, &instance, this_node);
    if let (Some(d), true) = (&daemon, a.yes) {
        return Err(Error::new(
            Kind::InvalidConfig,
            format!(
                "{d} still serves {instance}: stop it first (systemctl stop terwayd), or it \
                 creates ENIs again; nothing was changed"
            ),
        ));
    }
    let ecs = access.ecs()?;
    let found: Option<InstanceInfo> =
        lifecycle::describe_instances(&ecs, std::slice::from_ref(&instance))
            .map_err(|e| cloud_err("DescribeInstances", e))?
            .into_iter()
            .find(|i| i.id == instance);

    let mut enis = ecs
        .describe_enis(&EniFilter {
            tags: lifecycle::node_tags(&instance),
            ..EniFilter::default()
        })
        .map_err(|e| cloud_err("DescribeNetworkInterfaces", e))?;
    enis.retain(|e| lifecycle::created_by_terway(&e.tags) && e.eni_type != "Primary");
    enis.sort_by(|x, y| x.id.cmp(&y.id));
    let target = instance.clone();
    let may_detach = move |i: &str| -> std::result::Result<(), String> {
        if i == target {
            Ok(())
        } else {
            Err(format!("attached to {i}, not {target}"))
        }
    };
    let mut steps: Vec<Step> = enis
        .iter()
        .map(|e| {
            let state = match &e.instance_id {
                Some(i) if e.status != "Available" => format!("{} on {i}", e.status),
                _ => e.status.clone(),
            };
            let (action, result) = match eni::plan_eni(e, &may_detach) {
                Ok(p) => (p, String::new()),
                Err(why) => (format!("none ({why})"), "kept".to_string()),
            };
            Step {
                resource: "ENI",
                id: e.id.clone(),
                state,
                action,
                result,
                ok: true,
            }
        })
        .collect();

    let pod_cidr = a.pod_cidr.or(if access.config.daemon_mode == Mode::Vpc {
        access.config.pod_cidr
    } else {
        None
    });
    let tables = if a.route_tables.is_empty() {
        let vpc = found
            .as_ref()
            .map(|i| i.vpc_id.as_str())
            .filter(|v| !v.is_empty());
        lifecycle::route_table_ids(&ecs, vpc).map_err(|e| cloud_err("DescribeVSwitches", e))?
    } else {
        a.route_tables.clone()
    };
    let mut routes = Vec::new();
    for t in &tables {
        let entries = lifecycle::describe_route_entries(&ecs, t)
            .map_err(|e| cloud_err("DescribeRouteEntryList", e))?;
        routes.extend(entries.into_iter().filter(|r| r.points_at(&instance)));
    }
    steps.extend(route_steps(&routes, pod_cidr));

    for s in steps.iter_mut().filter(|s| s.acts() && !a.yes) {
        s.result = "dry run".into();
    }
    if a.yes {
        run_eni_steps(&ecs, &mut steps, &may_detach, a.timeout);
        run_route_steps(&ecs, &mut steps, &routes);
    }
    let mut header = match &found {
        Some(i) => format!(
            "instance {instance}: {}, {} in {}\n",
            i.status, i.instance_type, i.zone_id
        ),
        None => format!("instance {instance}: does not exist (any more)\n"),
    };
    if let Some(d) = &daemon {
        header.push_str(&format!(
            "warning: {d} still serves {instance}: stop it before running with --yes\n"
        ));
    }
    if steps.is_empty() {
        header.push_str("nothing of terway's left for this instance\n");
    }
    eni::report(
        &steps,
        a.yes,
        a.json,
        serde_json::json!({
            "instance": instance,
            "instance_exists": found.is_some(),
            "instance_status": found.as_ref().map(|i| i.status.clone()),
            "daemon_running": daemon.is_some(),
            "pod_cidr": pod_cidr.map(|c| c.to_string()),
            "route_tables": tables,
        }),
        &header,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, dest: &str) -> RouteEntryInfo {
        RouteEntryInfo {
            id: id.into(),
            route_table_id: "vtb-1".into(),
            destination: dest.into(),
            kind: "Custom".into(),
            next_hops: vec![("Instance".into(), "i-1".into())],
        }
    }

    #[test]
    fn only_the_pod_cidr_route_goes() {
        let entries = [
            entry("rte-1", "10.244.1.0/24"),
            entry("rte-2", "192.168.0.0/16"),
        ];
        let steps = route_steps(&entries, Some(cidr("10.244.1.0/24").unwrap()));
        assert!(steps[0].acts() && !steps[1].acts());
        assert_eq!(steps[1].result, "kept");
        assert!(steps[0].state.contains("10.244.1.0/24 -> i-1 in vtb-1"));
        let steps = route_steps(&entries, None);
        assert!(steps.iter().all(|s| !s.acts()));
        assert_eq!(cidr("10.244.1.7/24").unwrap().to_string(), "10.244.1.0/24");
        assert!(cidr("10.244.1.0/33").is_err());
    }
}
