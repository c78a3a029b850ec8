//! Typed ECS (2014-05-26) and VPC (2016-04-28) actions the daemon needs, on top of [`OpenApi`].

use crate::cloud::codes;
use crate::cloud::credentials::CredentialProvider;
use crate::cloud::error::{CloudError, TIMEOUT};
use crate::cloud::http::{self, HttpConfig};
use crate::cloud::openapi::{OpenApi, OpenApiConfig, RetryPolicy};
use crate::cloud::parse;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::cloud::parse::{EniInfo, InstanceTypeLimits, VSwitchInfo};

pub const ECS_VERSION: &str = "2014-05-26";
pub const VPC_VERSION: &str = "2016-04-28";
/// The API takes at most this many addresses per Assign/Unassign call.
pub const MAX_IPS_PER_CALL: usize = 10;
/// CreateNetworkInterface takes at most this many secondary IPv4 addresses
/// (`SecondaryPrivateIpAddressCount`) and IPv6 addresses (`Ipv6AddressCount`) for the new ENI:
/// an ENI not yet attached holds no more (the emulator's model enforces the same).
pub const MAX_SECONDARY_ON_CREATE: u32 = 49;
pub const MAX_IPV6_ON_CREATE: u32 = 10;
/// `NetworkInterfaceId.N` and `InstanceTypes.N` limits per call.
const MAX_ENI_IDS: usize = 100;
const MAX_TYPES: usize = 10;
/// Guards against a NextToken that never ends.
const MAX_PAGES: usize = 1000;

pub struct CloudConfig {
    pub region_id: String,
    /// Default `https://ecs-vpc.<region>.aliyuncs.com`; `http://` allowed (emulator).
    pub ecs_endpoint: String,
    /// Default `https://vpc-vpc.<region>.aliyuncs.com`.
    pub vpc_endpoint: String,
    pub retry: RetryPolicy,
    /// Per-action overrides, calls per minute (`*` for unlisted actions, 0 = unlimited).
    pub rate_limits: Vec<(String, u32)>,
}

impl CloudConfig {
    /// The production defaults of `region_id`.
    pub fn new(region_id: &str) -> CloudConfig {
        CloudConfig {
            region_id: region_id.to_string(),
            ecs_endpoint: default_ecs_endpoint(region_id),
            vpc_endpoint: default_vpc_endpoint(region_id),
            retry: RetryPolicy::default(),
            rate_limits: Vec::new(),
        }
    }
}

pub fn default_ecs_endpoint(region: &str) -> String {
    format!("https://ecs-vpc.{region}.aliyuncs.com")
}

pub fn default_vpc_endpoint(region: &str) -> String {
    format!("https://vpc-vpc.{region}.aliyuncs.com")
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniFilter {
    pub instance_id: Option<String>,
    pub eni_ids: Vec<String>,
    pub status: Option<String>,
    pub tags: Vec<(String, String)>,
}

pub struct Ecs {
    pub(super) ecs: OpenApi,
    vpc: OpenApi,
    page_size: u32,
}

impl std::fmt::Debug for Ecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ecs")
            .field("ecs", &self.ecs)
            .field("vpc", &self.vpc)
            .finish()
    }
}

/// Owned parameter list, turned into the `&[(&str, String)]` that [`OpenApi::call`] takes.
#[derive(Default)]
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    pub(super) fn set(&mut self, k: &str, v: impl Into<String>) -> &mut Self {
        self.0.push((k.to_string(), v.into()));
        self
    }
    pub(super) fn list<S: AsRef<str>>(&mut self, name: &str, values: &[S]) -> &mut Self {
        for (i, v) in values.iter().enumerate() {
            self.0
                .push((format!("{name}.{}", i + 1), v.as_ref().to_string()));
        }
        self
    }
    fn tags(&mut self, tags: &[(String, String)]) -> &mut Self {
        for (i, (k, v)) in tags.iter().enumerate() {
            self.0.push((format!("Tag.{}.Key", i + 1), k.clone()));
            self.0.push((format!("Tag.{}.Value", i + 1), v.clone()));
        }
        self
    }
    pub(super) fn borrow(&self) -> Vec<(&str, String)> {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect()
    }
}

pub(super) fn client_token() -> String {
    format!("terway-{}", http::nonce())
}

impl Ecs {
    pub fn new(cfg: CloudConfig, creds: Arc<CredentialProvider>) -> Result<Ecs, CloudError> {
        Ecs::with_http(cfg, creds, HttpConfig::default())
    }

    /// Like [`Ecs::new`] with explicit HTTP timeouts.
    pub fn with_http(
        cfg: CloudConfig,
        creds: Arc<CredentialProvider>,
        http: HttpConfig,
    ) -> Result<Ecs, CloudError> {
        let endpoint = |e: &str, default: fn(&str) -> String| {
            if e.trim().is_empty() {
                default(&cfg.region_id)
            } else {
                e.to_string()
            }
        };
        let api = |endpoint: String, version: &str| OpenApiConfig {
            endpoint,
            version: version.to_string(),
            region_id: cfg.region_id.clone(),
            retry: cfg.retry,
            rate_limits: cfg.rate_limits.clone(),
            http,
        };
        Ok(Ecs {
            ecs: OpenApi::new(
                api(
                    endpoint(&cfg.ecs_endpoint, default_ecs_endpoint),
                    ECS_VERSION,
                ),
                creds.clone(),
            )?,
            vpc: OpenApi::new(
                api(
                    endpoint(&cfg.vpc_endpoint, default_vpc_endpoint),
                    VPC_VERSION,
                ),
                creds,
            )?,
            page_size: 100,
        })
    }

    /// Page size of DescribeNetworkInterfaces (`MaxResults`, default 100; the API takes
    /// 10 to 500, so it is kept within).
    pub fn with_page_size(mut self, n: u32) -> Ecs {
        self.page_size = n.clamp(10, 500);
        self
    }

    /// The ECS API client, for actions not wrapped here.
    pub fn ecs_api(&self) -> &OpenApi {
        &self.ecs
    }

    /// The VPC API client (routes for VPC mode).
    pub fn vpc_api(&self) -> &OpenApi {
        &self.vpc
    }

    /// ClientToken generated once by the caller and reused across retries (OpenApi retries keep
    /// params identical). `secondary_count` is at most 49 at creation.
    pub fn create_eni(
        &self,
        vswitch_id: &str,
        security_groups: &[String],
        secondary_count: u32,
        tags: &[(String, String)],
        description: &str,
        client_token: &str,
    ) -> Result<EniInfo, CloudError> {
        self.create_eni_dual(
            vswitch_id,
            security_groups,
            secondary_count,
            0,
            tags,
            description,
            client_token,
        )
    }

    /// [`Ecs::create_eni`] with `ipv6_count` IPv6 addresses too (`Ipv6AddressCount`, at most 10
    /// at creation; the vSwitch needs IPv6, else `InvalidVSwitch.Ipv6NotTurnOn`).
    #[allow(clippy::too_many_arguments)]
    pub fn create_eni_dual(
        &self,
        vswitch_id: &str,
        security_groups: &[String],
        secondary_count: u32,
        ipv6_count: u32,
        tags: &[(String, String)],
        description: &str,
        client_token: &str,
    ) -> Result<EniInfo, CloudError> {
        const A: &str = "CreateNetworkInterface";
        let mut p = Params::default();
        p.set("VSwitchId", vswitch_id)
            .list("SecurityGroupIds", security_groups)
            .tags(tags);
        if secondary_count > 0 {
            p.set(
                "SecondaryPrivateIpAddressCount",
                secondary_count.to_string(),
            );
        }
        if ipv6_count > 0 {
            p.set("Ipv6AddressCount", ipv6_count.to_string());
        }
        if !description.is_empty() {
            p.set("Description", description);
        }
        if !client_token.is_empty() {
            p.set("ClientToken", client_token);
        }
        let v = self.ecs.call(A, &p.borrow())?;
        let mut eni = parse::eni(A, &v)?;
        if eni.status.is_empty() {
            eni.status = "Available".into();
        }
        if eni.eni_type.is_empty() {
            eni.eni_type = "Secondary".into();
        }
        if eni.vswitch_id.is_empty() {
            eni.vswitch_id = vswitch_id.to_string();
        }
        Ok(eni)
    }

    /// Asynchronous in the cloud: follow with [`Ecs::wait_eni_status`] `InUse`.
    pub fn attach_eni(&self, instance_id: &str, eni_id: &str) -> Result<(), CloudError> {
        let mut p = Params::default();
        p.set("InstanceId", instance_id)
            .set("NetworkInterfaceId", eni_id);
        self.ecs
            .call("AttachNetworkInterface", &p.borrow())
            .map(drop)
    }

    /// Asynchronous in the cloud: follow with [`Ecs::wait_eni_status`] `Available`.
    pub fn detach_eni(&self, instance_id: &str, eni_id: &str) -> Result<(), CloudError> {
        let mut p = Params::default();
        p.set("InstanceId", instance_id)
            .set("NetworkInterfaceId", eni_id);
        self.ecs
            .call("DetachNetworkInterface", &p.borrow())
            .map(drop)
    }

    pub fn delete_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        let mut p = Params::default();
        p.set("NetworkInterfaceId", eni_id);
        self.ecs
            .call("DeleteNetworkInterface", &p.borrow())
            .map(drop)
    }

    /// All ENIs matching `filter`, following `NextToken`.
    pub fn describe_enis(&self, filter: &EniFilter) -> Result<Vec<EniInfo>, CloudError> {
        if filter.eni_ids.len() <= MAX_ENI_IDS {
            return self.describe_enis_chunk(filter, &filter.eni_ids);
        }
        let mut out = Vec::new();
        for ids in filter.eni_ids.chunks(MAX_ENI_IDS) {
            out.extend(self.describe_enis_chunk(filter, ids)?);
        }
        Ok(out)
    }

    fn describe_enis_chunk(
        &self,
        filter: &EniFilter,
        ids: &[String],
    ) -> Result<Vec<EniInfo>, CloudError> {
        const A: &str = "DescribeNetworkInterfaces";
        let mut base = Params::default();
        if let Some(i) = &filter.instance_id {
            base.set("InstanceId", i.as_str());
        }
        if let Some(s) = &filter.status {
            base.set("Status", s.as_str());
        }
        base.list("NetworkInterfaceId", ids)
            .tags(&filter.tags)
            .set("MaxResults", self.page_size.to_string());
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut p = Params(base.0.clone());
            if let Some(t) = &token {
                p.set("NextToken", t.as_str());
            }
            let v = self.ecs.call(A, &p.borrow())?;
            let (list, next) = parse::eni_page(A, &v)?;
            out.extend(list);
            if next.is_none() || next == token {
                return Ok(out);
            }
            token = next;
        }
        Err(CloudError::decode(
            A,
            format!("more than {MAX_PAGES} pages"),
        ))
    }

    /// Polls DescribeNetworkInterfaces until the ENI has `status` (e.g. "InUse", "Available");
    /// backoff between polls; timeout → CloudError code "Timeout".
    pub fn wait_eni_status(
        &self,
        eni_id: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<EniInfo, CloudError> {
        const A: &str = "DescribeNetworkInterfaces";
        let start = Instant::now();
        let mut delay = Duration::from_millis(200);
        let filter = EniFilter {
            eni_ids: vec![eni_id.to_string()],
            ..EniFilter::default()
        };
        loop {
            let found = self
                .describe_enis(&filter)?
                .into_iter()
                .find(|e| e.id == eni_id);
            let Some(eni) = found else {
                return Err(CloudError::new(
                    A,
                    codes::ENI_NOT_FOUND,
                    format!("ENI {eni_id} no longer exists (waiting for {status})"),
                ));
            };
            if eni.status == status {
                return Ok(eni);
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Err(CloudError::new(
                    A,
                    TIMEOUT,
                    format!(
                        "ENI {eni_id} is still {} after {:.1}s, want {status}",
                        eni.status,
                        elapsed.as_secs_f64()
                    ),
                ));
            }
            std::thread::sleep(delay.min(timeout - elapsed));
            delay = (delay * 3 / 2).min(Duration::from_secs(2));
        }
    }

    /// ENI limits of instance types (all types when `types` is empty).
    pub fn describe_instance_types(
        &self,
        types: &[String],
    ) -> Result<Vec<InstanceTypeLimits>, CloudError> {
        let mut out = Vec::new();
        let chunks: Vec<&[String]> = if types.is_empty() {
            vec![&[]]
        } else {
            types.chunks(MAX_TYPES).collect()
        };
        for chunk in chunks {
            let mut token: Option<String> = None;
            for page in 0.. {
                if page >= MAX_PAGES {
                    return Err(CloudError::decode(
                        "DescribeInstanceTypes",
                        format!("more than {MAX_PAGES} pages"),
                    ));
                }
                let mut p = Params::default();
                p.list("InstanceTypes", chunk);
                if let Some(t) = &token {
                    p.set("NextToken", t.as_str());
                }
                let v = self.ecs.call("DescribeInstanceTypes", &p.borrow())?;
                let (list, next) = parse::instance_types(&v);
                out.extend(list);
                if next.is_none() || next == token {
                    break;
                }
                token = next;
            }
        }
        Ok(out)
    }

    /// vSwitches by id (one call each: the API filters by a single `VSwitchId`); all the
    /// region's vSwitches when `ids` is empty.
    pub fn describe_vswitches(&self, ids: &[String]) -> Result<Vec<VSwitchInfo>, CloudError> {
        const A: &str = "DescribeVSwitches";
        let mut out = Vec::new();
        let targets: Vec<Option<&String>> = if ids.is_empty() {
            vec![None]
        } else {
            ids.iter().map(Some).collect()
        };
        for id in targets {
            let mut page = 1u64;
            loop {
                let mut p = Params::default();
                if let Some(id) = id {
                    p.set("VSwitchId", id.as_str());
                }
                p.set("PageSize", "50").set("PageNumber", page.to_string());
                let v = self.vpc.call(A, &p.borrow())?;
                let (list, total) = parse::vswitches(A, &v)?;
                let empty = list.is_empty();
                out.extend(list.into_iter().filter(|s| id.is_none_or(|i| *i == s.id)));
                if empty || page * 50 >= total || page as usize >= MAX_PAGES {
                    break;
                }
                page += 1;
            }
        }
        Ok(out)
    }

    /// The vSwitches `ids`, expected in VPC `vpc_id` and zone `zone_id`: a listing of that
    /// zone's vSwitches (50 a page) instead of a call each, which at 2000 nodes with a few
    /// vSwitches each would exceed the region's 300 calls a minute. The listing goes on while
    /// its pages left are fewer than the ids it has not shown; those (another zone's, an
    /// unknown one, or ones on pages not read) are then asked for one by one, as
    /// [`Ecs::describe_vswitches`] does. Without a VPC id, one call each.
    pub fn describe_vswitches_in(
        &self,
        vpc_id: &str,
        zone_id: &str,
        ids: &[String],
    ) -> Result<Vec<VSwitchInfo>, CloudError> {
        const A: &str = "DescribeVSwitches";
        const PAGE: u64 = 50;
        let mut wanted: Vec<&String> = ids.iter().collect();
        wanted.sort();
        wanted.dedup();
        if wanted.len() < 2 || vpc_id.is_empty() {
            let each: Vec<String> = wanted.iter().map(|id| id.to_string()).collect();
            return self.describe_vswitches(&each);
        }
        let mut out: Vec<VSwitchInfo> = Vec::new();
        let unseen = |out: &[VSwitchInfo]| -> Vec<String> {
            wanted
                .iter()
                .filter(|id| !out.iter().any(|s| s.id == ***id))
                .map(|id| id.to_string())
                .collect()
        };
        for page in 1u64.. {
            let mut p = Params::default();
            p.set("VpcId", vpc_id)
                .set("ZoneId", zone_id)
                .set("PageSize", PAGE.to_string())
                .set("PageNumber", page.to_string());
            let v = self.vpc.call(A, &p.borrow())?;
            let (list, total, on_page) =
                parse::vswitches_where(A, &v, |id| wanted.iter().any(|w| *w == id))?;
            for s in list {
                if !out.iter().any(|o| o.id == s.id) {
                    out.push(s);
                }
            }
            let pages_left = total.div_ceil(PAGE).saturating_sub(page);
            let left = unseen(&out).len() as u64;
            if left == 0 || on_page == 0 || pages_left >= left || page as usize >= MAX_PAGES {
                break;
            }
        }
        let rest = unseen(&out);
        if !rest.is_empty() {
            out.extend(self.describe_vswitches(&rest)?);
        }
        Ok(out)
    }

    /// Attempts refused by throttling so far (both APIs).
    pub fn throttled_total(&self) -> u64 {
        self.ecs.throttled_total() + self.vpc.throttled_total()
    }

    /// HTTP requests made per action so far, retries included (both APIs).
    pub fn call_counts(&self) -> Vec<(String, u64)> {
        let mut all: BTreeMap<String, u64> = BTreeMap::new();
        for (k, v) in self
            .ecs
            .call_counts()
            .into_iter()
            .chain(self.vpc.call_counts())
        {
            *all.entry(k).or_default() += v;
        }
        all.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_numbered_from_one() {
        let mut p = Params::default();
        p.set("VSwitchId", "vsw-1")
            .list("SecurityGroupIds", &["sg-1", "sg-2"])
            .tags(&[("k".into(), "v".into())]);
        let names: Vec<String> = p.borrow().iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            names,
            [
                "VSwitchId=vsw-1",
                "SecurityGroupIds.1=sg-1",
                "SecurityGroupIds.2=sg-2",
                "Tag.1.Key=k",
                "Tag.1.Value=v"
            ]
        );
        assert_ne!(client_token(), client_token());
        assert!(client_token().len() <= 64, "the API's ClientToken limit");
    }

    #[test]
    fn clients_are_shareable_between_worker_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Ecs>();
        shareable::<crate::cloud::Metadata>();
        shareable::<CredentialProvider>();
    }

    #[test]
    fn default_endpoints_and_config() {
        let c = CloudConfig::new("cn-beijing");
        assert_eq!(c.ecs_endpoint, "https://ecs-vpc.cn-beijing.aliyuncs.com");
        assert_eq!(c.vpc_endpoint, "https://vpc-vpc.cn-beijing.aliyuncs.com");
        let creds = Arc::new(CredentialProvider::new(
            crate::cloud::CredentialSource::Static {
                access_key: "k".into(),
                access_secret: "s".into(),
            },
            None,
        ));
        let bad = CloudConfig {
            ecs_endpoint: "ftp://x".into(),
            ..CloudConfig::new("cn-beijing")
        };
        assert_eq!(Ecs::new(bad, creds).unwrap_err().code, "InvalidEndpoint");
    }
}
