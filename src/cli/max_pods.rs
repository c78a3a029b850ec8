//! `terway max-pods`: the seed formulas for pods per node by mode, from an instance type's ENI
//! limits (DescribeInstanceTypes; on a node, the type metadata names) or from given figures, and
//! `--kubelet`: the `--max-pods=N` that matches what the configured mode can serve.

use super::cloud_access::{Access, CloudArgs};
use super::{print_json, table};
use crate::config::{Config, Mode};
use crate::output;
use crate::pool::cidr::CidrPool;
use crate::{Error, Kind, Result};
use clap::Args;
use serde::Serialize;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct MaxPodsArgs {
    /// The instance type to ask DescribeInstanceTypes about (default: this instance's type,
    /// from metadata). Credentials and endpoints as the daemon's config.
    #[arg(long, value_name = "TYPE", conflicts_with = "eni_quantity")]
    pub instance_type: Option<String>,
    /// ENIs the instance type supports (EniQuantity), the primary ENI included: compute from
    /// given figures, without the cloud.
    #[arg(long, requires = "eni_ips")]
    pub eni_quantity: Option<u32>,
    /// Private IPs per ENI (EniPrivateIpAddressQuantity).
    #[arg(long, requires = "eni_quantity")]
    pub eni_ips: Option<u32>,
    /// All network interfaces including trunk members (EniTotalQuantity).
    #[arg(long, requires = "eni_quantity")]
    pub eni_total: Option<u32>,
    /// Print kubelet's `--max-pods=N` for the configured mode: daemon_mode and max_eni of the
    /// config (pod_cidr in VPC mode, without the cloud).
    #[arg(long)]
    pub kubelet: bool,
    /// The mode for --kubelet instead of the config's daemon_mode: ENIMultiIP, ENIOnly or VPC.
    #[arg(long, value_parser = mode)]
    pub mode: Option<Mode>,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn mode(s: &str) -> std::result::Result<Mode, String> {
    match s {
        "ENIMultiIP" => Ok(Mode::EniMultiIp),
        "ENIOnly" => Ok(Mode::EniOnly),
        "VPC" => Ok(Mode::Vpc),
        _ => Err(format!("unknown mode {s:?} (ENIMultiIP, ENIOnly or VPC)")),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaxPods {
    /// ENIMultiIP: (EniQuantity − 1) × EniPrivateIpAddressQuantity (the primary ENI serves the node).
    pub shared: u32,
    /// ENIOnly: one pod per secondary ENI.
    pub exclusive: u32,
    /// Trunk member ENIs: EniTotalQuantity − EniQuantity, when the total is known.
    pub trunk: Option<u32>,
    /// Problems that keep a node of this type out of a mode.
    pub notes: Vec<String>,
}

/// Nodes below these counts cannot join a cluster in that mode (seed 002).
pub const MIN_SHARED_PODS: u32 = 11;
pub const MIN_EXCLUSIVE_PODS: u32 = 6;

pub fn max_pods(eni_quantity: u32, eni_ips: u32, eni_total: Option<u32>) -> MaxPods {
    let secondary = eni_quantity.saturating_sub(1);
    let shared = secondary.saturating_mul(eni_ips);
    let exclusive = secondary;
    let trunk = eni_total.map(|t| t.saturating_sub(eni_quantity));
    let mut notes = Vec::new();
    if shared < MIN_SHARED_PODS {
        notes.push(format!(
            "shared ENI mode needs at least {MIN_SHARED_PODS} pods per node; this type gives {shared}"
        ));
    }
    if exclusive < MIN_EXCLUSIVE_PODS {
        notes.push(format!(
            "exclusive ENI mode needs at least {MIN_EXCLUSIVE_PODS} pods per node; this type gives {exclusive}"
        ));
    }
    MaxPods {
        shared,
        exclusive,
        trunk,
        notes,
    }
}

/// An instance type's ENI figures, asked or given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeLimits {
    /// `None` when the figures were given on the command line.
    pub instance_type: Option<String>,
    pub eni_quantity: u32,
    pub eni_private_ip_quantity: u32,
    pub eni_total_quantity: Option<u32>,
}

fn type_limits(a: &MaxPodsArgs, access: Option<&Access>) -> Result<TypeLimits> {
    if let (Some(q), Some(ips)) = (a.eni_quantity, a.eni_ips) {
        return Ok(TypeLimits {
            instance_type: None,
            eni_quantity: q,
            eni_private_ip_quantity: ips,
            eni_total_quantity: a.eni_total,
        });
    }
    let access = access.ok_or_else(|| Error::new(Kind::Internal, "max-pods: no cloud access"))?;
    let wanted = match &a.instance_type {
        Some(t) => t.clone(),
        None => access.instance_type()?,
    };
    let ecs = access.ecs()?;
    let t = ecs
        .describe_instance_types(std::slice::from_ref(&wanted))
        .map_err(|e| Error::new(Kind::Cloud, format!("DescribeInstanceTypes: {e}")))?
        .into_iter()
        .find(|t| t.id == wanted)
        .ok_or_else(|| {
            Error::new(
                Kind::Cloud,
                format!("DescribeInstanceTypes: the cloud does not know instance type {wanted}"),
            )
        })?;
    Ok(TypeLimits {
        instance_type: Some(t.id),
        eni_quantity: t.eni_quantity,
        eni_private_ip_quantity: t.eni_private_ip_quantity,
        eni_total_quantity: Some(t.eni_total_quantity),
    })
}

/// What kubelet's `--max-pods` should be for `mode` under `config`: the pods this node's terway
/// can give addresses to. `limits` is only asked for in the ENI modes.
pub fn kubelet_max_pods(
    mode: Mode,
    config: &Config,
    limits: impl FnOnce() -> Result<TypeLimits>,
) -> Result<(u64, Vec<String>)> {
    let mut warnings = Vec::new();
    let n = match mode {
        Mode::Vpc => {
            let cidr = config.pod_cidr.ok_or_else(|| {
                Error::new(
                    Kind::InvalidConfig,
                    "VPC mode: the config has no pod_cidr to count pods from",
                )
            })?;
            CidrPool::new(cidr, None).capacity()
        }
        Mode::EniMultiIp | Mode::EniOnly => {
            let l = limits()?;
            let secondary = l.eni_quantity.saturating_sub(1);
            let enis = config.max_eni.map_or(secondary, |m| m.min(secondary));
            let (n, min) = if mode == Mode::EniOnly {
                (u64::from(enis), MIN_EXCLUSIVE_PODS)
            } else {
                (
                    u64::from(enis) * u64::from(l.eni_private_ip_quantity),
                    MIN_SHARED_PODS,
                )
            };
            if n < u64::from(min) {
                warnings.push(format!(
                    "{mode} mode needs at least {min} pods per node to join a cluster; this node gives {n}"
                ));
            }
            n
        }
    };
    Ok((n, warnings))
}

pub fn run(a: &MaxPodsArgs) -> Result<ExitCode> {
    // Given figures need neither the config nor the cloud, unless --kubelet asks for the mode.
    let access = if a.kubelet || a.eni_quantity.is_none() {
        Some(Access::new(&a.cloud)?)
    } else {
        None
    };
    if let (true, Some(access)) = (a.kubelet, &access) {
        let mode = a.mode.unwrap_or(access.config.daemon_mode);
        let (n, warnings) =
            kubelet_max_pods(mode, &access.config, || type_limits(a, Some(access)))?;
        for w in &warnings {
            output::eprint_line(format_args!("warning: {w}"));
        }
        if a.json {
            print_json(&serde_json::json!({
                "mode": mode.name(),
                "max_pods": n,
                "kubelet_flag": format!("--max-pods={n}"),
                "warnings": warnings,
            }))?;
        } else {
            output::print(&format!("--max-pods={n}\n"))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let l = type_limits(a, access.as_ref())?;
    let m = max_pods(
        l.eni_quantity,
        l.eni_private_ip_quantity,
        l.eni_total_quantity,
    );
    for n in &m.notes {
        output::eprint_line(format_args!("warning: {n}"));
    }
    if a.json {
        #[derive(Serialize)]
        struct Both<'a> {
            #[serde(flatten)]
            limits: &'a TypeLimits,
            #[serde(flatten)]
            max_pods: &'a MaxPods,
        }
        print_json(&Both {
            limits: &l,
            max_pods: &m,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = String::new();
    if let Some(t) = &l.instance_type {
        text.push_str(&format!(
            "instance type: {t} ({} ENIs x {} IPs, {} network interfaces)\n",
            l.eni_quantity,
            l.eni_private_ip_quantity,
            l.eni_total_quantity.unwrap_or(0)
        ));
    }
    let rows = vec![
        vec!["shared ENI (ENIMultiIP)".to_string(), m.shared.to_string()],
        vec![
            "exclusive ENI (ENIOnly)".to_string(),
            m.exclusive.to_string(),
        ],
        vec![
            "trunk member ENIs".to_string(),
            m.trunk
                .map(|t| t.to_string())
                .unwrap_or_else(|| "(give --eni-total)".into()),
        ],
    ];
    text.push_str(&table::render(&["Mode", "Max Pods"], &rows));
    output::print(&text)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_figures_for_g7_4xlarge() {
        let m = max_pods(8, 30, Some(16));
        assert_eq!((m.shared, m.exclusive, m.trunk), (210, 7, Some(8)));
        assert!(m.notes.is_empty());
    }

    #[test]
    fn small_types_cannot_join() {
        let m = max_pods(2, 6, None);
        assert_eq!((m.shared, m.exclusive, m.trunk), (6, 1, None));
        assert_eq!(m.notes.len(), 2);
        assert_eq!(max_pods(0, 10, None).shared, 0);
    }

    fn limits(q: u32, ips: u32) -> impl FnOnce() -> Result<TypeLimits> {
        move || {
            Ok(TypeLimits {
                instance_type: None,
                eni_quantity: q,
                eni_private_ip_quantity: ips,
                eni_total_quantity: None,
            })
        }
    }

    #[test]
    fn kubelet_figures_per_mode() {
        let c = Config::default();
        assert_eq!(
            kubelet_max_pods(Mode::EniMultiIp, &c, limits(8, 30)).unwrap(),
            (210, vec![])
        );
        assert_eq!(
            kubelet_max_pods(Mode::EniOnly, &c, limits(8, 30)).unwrap(),
            (7, vec![])
        );
        let (n, w) = kubelet_max_pods(Mode::EniOnly, &c, limits(3, 6)).unwrap();
        assert_eq!((n, w.len()), (2, 1));
        assert!(w[0].contains("at least 6"), "{w:?}");
        let capped = Config {
            max_eni: Some(2),
            ..Config::default()
        };
        assert_eq!(
            kubelet_max_pods(Mode::EniMultiIp, &capped, limits(8, 30))
                .unwrap()
                .0,
            60
        );
        let vpc = Config {
            daemon_mode: Mode::Vpc,
            pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
            ..Config::default()
        };
        let no_cloud = || -> Result<TypeLimits> { panic!("VPC mode asks no cloud") };
        assert_eq!(
            kubelet_max_pods(Mode::Vpc, &vpc, no_cloud).unwrap(),
            (253, vec![])
        );
        assert!(kubelet_max_pods(Mode::Vpc, &c, limits(8, 30)).is_err());
    }
}
