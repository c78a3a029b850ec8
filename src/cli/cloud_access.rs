//! How the operator commands that call the cloud (`node cleanup`, `eni`, `max-pods`) reach it:
//! endpoints and credentials from the daemon's config file, flags over the file, the instance
//! metadata service for what neither gives (instance id and type, region, the RAM role).

use crate::cloud::credentials::{CredentialProvider, CredentialSource};
use crate::cloud::ecs::{CloudConfig, Ecs, default_ecs_endpoint, default_vpc_endpoint};
use crate::cloud::metadata::{self, Metadata};
use crate::cloud::openapi::RetryPolicy;
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::{Error, Kind, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Environment variables of the access key, as Alibaba Cloud's SDKs and CLI name them. They win
/// over the config file (a key on the command line would show in `ps`).
pub const ENV_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
pub const ENV_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";

/// Config keys these commands use: an error in any of them stops the command; errors in other
/// keys (a missing security group, say) do not concern it.
const KEYS_USED: &[&str] = &[
    "daemon_mode",
    "pod_cidr",
    "socket_path",
    "max_eni",
    "region_id",
    "ecs_endpoint",
    "vpc_endpoint",
    "metadata_endpoint",
    "access_key",
    "access_secret",
    "credential_path",
];

#[derive(Debug, Clone, Args)]
pub struct CloudArgs {
    /// The daemon's config file: region, endpoints and credentials (access_key/access_secret,
    /// credential_path, else the instance RAM role). Missing at the default path: flags,
    /// ALIBABA_CLOUD_ACCESS_KEY_ID/_SECRET and metadata only.
    #[arg(long, env = "TERWAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Region id (default: the config's region_id, else metadata).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// ECS OpenAPI endpoint (default: the config's, else https://ecs-vpc.<region>.aliyuncs.com).
    #[arg(long, value_name = "URL")]
    pub ecs_endpoint: Option<String>,
    /// VPC OpenAPI endpoint (default: the config's, else https://vpc-vpc.<region>.aliyuncs.com).
    #[arg(long, value_name = "URL")]
    pub vpc_endpoint: Option<String>,
    /// Instance metadata service (default: the config's, else http://100.100.100.200).
    #[arg(long, value_name = "URL")]
    pub metadata_endpoint: Option<String>,
}

/// The config as these commands see it, and the metadata service it names.
pub struct Access {
    pub config: Config,
    pub meta: Metadata,
    pub metadata_endpoint: String,
    args: CloudArgs,
}

fn meta_err(endpoint: &str, what: &str, e: impl std::fmt::Display, hint: &str) -> Error {
    Error::new(
        Kind::Cloud,
        format!("metadata {what} from {endpoint}: {e} ({hint})"),
    )
}

impl Access {
    /// Reads the config (leniently: see [`KEYS_USED`]). An explicit `--config` must exist; the
    /// default path may be missing.
    pub fn new(args: &CloudArgs) -> Result<Access> {
        let config = match &args.config {
            Some(p) => load(p)?,
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG_PATH);
                if p.exists() {
                    load(&p)?
                } else {
                    Config::default()
                }
            }
        };
        let metadata_endpoint = args
            .metadata_endpoint
            .clone()
            .or_else(|| config.metadata_endpoint.clone())
            .unwrap_or_else(|| metadata::DEFAULT_ENDPOINT.into());
        Ok(Access {
            meta: Metadata::new(&metadata_endpoint),
            metadata_endpoint,
            config,
            args: args.clone(),
        })
    }

    /// This instance's id, from metadata.
    pub fn instance_id(&self) -> Result<String> {
        self.meta.instance_id().map_err(|e| {
            meta_err(
                &self.metadata_endpoint,
                "instance-id",
                e,
                "not on an ECS instance? name the instance with --instance",
            )
        })
    }

    /// This instance's type, from metadata.
    pub fn instance_type(&self) -> Result<String> {
        self.meta.instance_type().map_err(|e| {
            meta_err(
                &self.metadata_endpoint,
                "instance/instance-type",
                e,
                "not on an ECS instance? name the type with --instance-type",
            )
        })
    }

    pub fn region(&self) -> Result<String> {
        if let Some(r) = self.args.region.clone().or(self.config.region_id.clone()) {
            return Ok(r);
        }
        self.meta.region_id().map_err(|e| {
            meta_err(
                &self.metadata_endpoint,
                "region-id",
                e,
                "give --region or region_id in the config",
            )
        })
    }

    /// The signed OpenAPI client.
    pub fn ecs(&self) -> Result<Ecs> {
        let region = self.region()?;
        let env = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        let from_env = env(ENV_KEY_ID).zip(env(ENV_KEY_SECRET));
        let from_config = self
            .config
            .access_key
            .as_deref()
            .zip(self.config.access_secret.as_ref().map(|s| s.0.as_str()));
        let key_pair = from_env
            .as_ref()
            .map(|(a, s)| (a.as_str(), s.as_str()))
            .or(from_config);
        let source = CredentialSource::choose(key_pair, self.config.credential_path.as_deref());
        let creds = Arc::new(CredentialProvider::new(source, Some(self.meta.clone())));
        let pick = |flag: &Option<String>, key: &Option<String>, default: fn(&str) -> String| {
            flag.clone()
                .or_else(|| key.clone())
                .unwrap_or_else(|| default(&region))
        };
        Ecs::new(
            CloudConfig {
                ecs_endpoint: pick(
                    &self.args.ecs_endpoint,
                    &self.config.ecs_endpoint,
                    default_ecs_endpoint,
                ),
                vpc_endpoint: pick(
                    &self.args.vpc_endpoint,
                    &self.config.vpc_endpoint,
                    default_vpc_endpoint,
                ),
                region_id: region.clone(),
                retry: RetryPolicy {
                    max_attempts: 6,
                    base_delay: Duration::from_millis(200),
                    max_delay: Duration::from_secs(5),
                    ..RetryPolicy::default()
                },
                rate_limits: Vec::new(),
            },
            creds,
        )
        .map_err(|e| Error::new(Kind::Cloud, format!("cloud client: {e}")))
    }
}

fn load(path: &std::path::Path) -> Result<Config> {
    let (config, errors) = Config::load_lenient(path)?;
    let relevant: Vec<String> = errors
        .iter()
        .filter(|p| KEYS_USED.contains(&p.key.as_str()))
        .map(|p| p.to_string())
        .collect();
    if relevant.is_empty() {
        Ok(config)
    } else {
        Err(Error::new(
            Kind::InvalidConfig,
            format!("config {}: {}", path.display(), relevant.join("; ")),
        ))
    }
}

/// `3s`, `4m12s`, `2h5m`, `3d4h`: an age at a glance.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, (s / 60) % 60),
        s => format!("{}d{}h", s / 86_400, (s / 3600) % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(252), "4m12s");
        assert_eq!(age(7500), "2h5m");
        assert_eq!(age(3 * 86_400 + 4 * 3600 + 5), "3d4h");
    }

    #[test]
    fn config_errors_in_other_keys_do_not_matter() {
        let dir = std::env::temp_dir().join(format!("terway-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("eni.json");
        // ENIMultiIP without a security group: the daemon refuses it, these commands do not.
        std::fs::write(
            &f,
            r#"{"region_id":"cn-x","access_key":"k","access_secret":"s"}"#,
        )
        .unwrap();
        let c = load(&f).unwrap();
        assert_eq!(c.region_id.as_deref(), Some("cn-x"));
        std::fs::write(&f, r#"{"region_id":"cn-x","pod_cidr":"10.0.0.0/40"}"#).unwrap();
        assert!(load(&f).unwrap_err().to_string().contains("pod_cidr"));
        std::fs::write(&f, "[]").unwrap();
        assert!(load(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
