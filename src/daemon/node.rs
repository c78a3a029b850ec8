//! Node discovery, shared by every mode that talks to the cloud: who this instance is (from
//! metadata), the credentials to sign with, the OpenAPI client, and the instance type's ENI
//! limits (from DescribeInstanceTypes, cached in the state file: they never change).

use crate::cloud::credentials::{CredentialProvider, CredentialSource};
use crate::cloud::ecs::{CloudConfig, Ecs, default_ecs_endpoint, default_vpc_endpoint};
use crate::cloud::metadata::{self, Metadata};
use crate::cloud::openapi::RetryPolicy;
use crate::config::Config;
use crate::store::InstanceLimits;
use crate::{Error, Kind, Result};
use std::sync::Arc;
use std::time::Duration;

/// The daemon's retries: errors 6 attempts, 0.2–5 s apart; throttled calls until the job's
/// deadline (`eni_ops::OP_DEADLINE`, else 10 min), backing off up to 20 s.
pub const CLOUD_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 6,
    base_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(5),
    throttle_max_delay: Duration::from_secs(20),
    throttle_patience: Duration::from_secs(600),
};

/// What metadata says about this instance.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub instance_id: String,
    pub instance_type: String,
    pub region_id: String,
    pub zone_id: String,
    pub vswitch_id: String,
    /// Empty when metadata did not tell.
    pub vpc_id: String,
    pub primary_mac: String,
}

/// The cloud as this node reaches it.
pub struct Cloud {
    pub ecs: Ecs,
    pub meta: Metadata,
    pub metadata_endpoint: String,
}

pub fn cloud_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(Kind::Cloud, format!("{what}: {e}"))
}

/// Reads the node's facts from metadata and builds the signed client.
pub fn discover(config: &Config) -> Result<(NodeInfo, Cloud)> {
    let metadata_endpoint = config
        .metadata_endpoint
        .clone()
        .unwrap_or_else(|| metadata::DEFAULT_ENDPOINT.into());
    let meta = Metadata::new(&metadata_endpoint);
    let m = |what: &str| cloud_err(&format!("metadata {what} from {metadata_endpoint}"), "");
    let instance_id = meta
        .instance_id()
        .map_err(|e| m("instance-id").context(e))?;
    let instance_type = meta
        .instance_type()
        .map_err(|e| m("instance/instance-type").context(e))?;
    let region_id = match &config.region_id {
        Some(r) => r.clone(),
        None => meta.region_id().map_err(|e| m("region-id").context(e))?,
    };
    let zone_id = meta.zone_id().map_err(|e| m("zone-id").context(e))?;
    let vswitch_id = meta.vswitch_id().map_err(|e| m("vswitch-id").context(e))?;
    let primary_mac = meta.primary_mac().map_err(|e| m("mac").context(e))?;
    // Only for describing vSwitches in one listing: without it, one call each.
    let vpc_id = meta.vpc_id().unwrap_or_else(|e| {
        log::warn!(
            "metadata vpc-id from {metadata_endpoint}: {e}; vSwitches are described one by one"
        );
        String::new()
    });
    let key_pair = config
        .access_key
        .as_deref()
        .zip(config.access_secret.as_ref().map(|s| s.0.as_str()));
    let source = CredentialSource::choose(key_pair, config.credential_path.as_deref());
    let creds = Arc::new(CredentialProvider::new(source, Some(meta.clone())));
    let ecs = Ecs::new(
        CloudConfig {
            ecs_endpoint: config
                .ecs_endpoint
                .clone()
                .unwrap_or_else(|| default_ecs_endpoint(&region_id)),
            vpc_endpoint: config
                .vpc_endpoint
                .clone()
                .unwrap_or_else(|| default_vpc_endpoint(&region_id)),
            region_id: region_id.clone(),
            retry: CLOUD_RETRY,
            rate_limits: Vec::new(),
        },
        creds,
    )
    .map_err(|e| cloud_err("cloud client", e))?;
    let node = NodeInfo {
        instance_id,
        instance_type,
        region_id,
        zone_id,
        vswitch_id,
        vpc_id,
        primary_mac,
    };
    Ok((
        node,
        Cloud {
            ecs,
            meta,
            metadata_endpoint,
        },
    ))
}

/// The instance type's ENI limits: the cached answer when it is for this type, else asked.
pub fn limits(
    cloud: &Cloud,
    node: &NodeInfo,
    cached: Option<(&str, InstanceLimits)>,
) -> Result<InstanceLimits> {
    let cached = cached.filter(|(_, l)| l.eni_ipv6_quantity.is_some());
    if let Some((t, l)) = cached.filter(|(t, _)| *t == node.instance_type) {
        log::debug!("ENI limits of {t} from the state file");
        return Ok(l);
    }
    let types = cloud
        .ecs
        .describe_instance_types(std::slice::from_ref(&node.instance_type))
        .map_err(|e| cloud_err("DescribeInstanceTypes", e))?;
    let t = types
        .into_iter()
        .find(|t| t.id == node.instance_type)
        .ok_or_else(|| {
            cloud_err(
                "DescribeInstanceTypes",
                format!(
                    "the cloud does not know instance type {}",
                    node.instance_type
                ),
            )
        })?;
    Ok(InstanceLimits {
        eni_quantity: t.eni_quantity,
        eni_private_ip_quantity: t.eni_private_ip_quantity,
        eni_total_quantity: t.eni_total_quantity,
        eni_ipv6_quantity: Some(t.eni_ipv6_quantity),
    })
}
