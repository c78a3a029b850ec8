//! Instance metadata client (`http://100.100.100.200/latest/meta-data/...`) with the hardened
//! token flow: PUT `latest/api/token` for a session token, send it on every read, and fetch a
//! new one when the service answers 401 (the token expired or the service restarted).

use crate::cloud::error::{CloudError, DECODE};
use crate::cloud::http::{self, HttpConfig};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DEFAULT_ENDPOINT: &str = "http://100.100.100.200";
const TOKEN_TTL_SECS: u64 = 21600;
/// A token is renewed this long before the service would expire it.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// Metadata is local and cheap: a couple of quick retries ride out a hiccup.
const ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// No token yet (or the last one was refused).
    Unknown,
    Valid(String, Instant),
    /// The service has no token endpoint: read without one.
    Unsupported,
}

/// Cheap to clone: clones share the agent and the token.
#[derive(Clone)]
pub struct Metadata {
    base: String,
    agent: ureq::Agent,
    token: Arc<Mutex<Token>>,
}

impl std::fmt::Debug for Metadata {
    // The session token stays out of Debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("base", &self.base)
            .finish()
    }
}

/// One ENI as the metadata service describes it (per MAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaEni {
    pub mac: String,
    pub eni_id: String,
    pub primary_ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub vswitch_id: String,
    pub vswitch_cidr: Ipv4Network,
    /// All IPv4 addresses of the ENI, the primary included.
    pub private_ipv4s: Vec<Ipv4Addr>,
}

/// The IPv6 side of one ENI as the metadata service describes it (per MAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaEniIpv6 {
    /// The ENI's IPv6 addresses (`ipv6s`); empty when it has none.
    pub ips: Vec<Ipv6Addr>,
    /// `ipv6-gateway`; `None` when the vSwitch has no IPv6.
    pub gateway: Option<Ipv6Addr>,
    /// `vswitch-ipv6-cidr-block`; `None` when the vSwitch has no IPv6.
    pub vswitch_cidr: Option<Ipv6Network>,
}

impl Metadata {
    /// `base` is the service root, e.g. `http://100.100.100.200` or, for the emulator,
    /// `http://127.0.0.1:PORT/instances/i-xxx`.
    pub fn new(base: &str) -> Self {
        Metadata::with_http(base, &HttpConfig::default())
    }

    pub fn with_http(base: &str, cfg: &HttpConfig) -> Self {
        let base = if base.is_empty() {
            DEFAULT_ENDPOINT
        } else {
            base
        };
        Metadata {
            base: base.trim_end_matches('/').to_string(),
            agent: http::agent(cfg),
            token: Arc::new(Mutex::new(Token::Unknown)),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Replaces the cached session token, e.g. with a stale one to exercise the 401 path.
    #[doc(hidden)]
    pub fn set_session_token(&self, token: &str) {
        *self.lock() = Token::Valid(
            token.to_string(),
            Instant::now() + Duration::from_secs(TOKEN_TTL_SECS) - TOKEN_MARGIN,
        );
    }

    /// Whether a session token is cached (tests of the token flow).
    #[doc(hidden)]
    pub fn has_session_token(&self) -> bool {
        matches!(&*self.lock(), Token::Valid(..))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Token> {
        self.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token to send, fetching one when there is none or it is about to expire.
    fn token(&self, what: &str) -> Result<Option<String>, CloudError> {
        match &*self.lock() {
            Token::Valid(t, exp) if Instant::now() < *exp => return Ok(Some(t.clone())),
            Token::Unsupported => return Ok(None),
            _ => {}
        }
        let url = format!("{}/latest/api/token", self.base);
        let started = Instant::now();
        let resp = self
            .agent
            .put(&url)
            .header(
                "X-aliyun-ecs-metadata-token-ttl-seconds",
                TOKEN_TTL_SECS.to_string(),
            )
            .send_empty();
        let read = http::read(what, resp);
        let failed = !matches!(&read, Ok((200 | 403..=405, _)));
        crate::metrics::global().metadata("api/token", failed, started.elapsed());
        let (status, body) = read?;
        let new = match status {
            200 if !body.trim().is_empty() => Token::Valid(
                body.trim().to_string(),
                Instant::now() + Duration::from_secs(TOKEN_TTL_SECS) - TOKEN_MARGIN,
            ),
            // Older or plain metadata services have no token endpoint: read without a token.
            403..=405 => Token::Unsupported,
            _ => {
                return Err(CloudError {
                    http_status: status,
                    ..CloudError::new(
                        what,
                        &format!("HTTP{status}"),
                        "the metadata service refused a session token",
                    )
                });
            }
        };
        let out = match &new {
            Token::Valid(t, _) => Some(t.clone()),
            _ => None,
        };
        *self.lock() = new;
        Ok(out)
    }

    fn get_once(&self, path: &str, what: &str) -> Result<(u16, String), CloudError> {
        let url = format!(
            "{}/latest/meta-data/{}",
            self.base,
            path.trim_start_matches('/')
        );
        let mut fresh_token = false;
        loop {
            let token = self.token(what)?;
            let mut req = self.agent.get(&url);
            if let Some(t) = &token {
                req = req.header("X-aliyun-ecs-metadata-token", t);
            }
            let started = Instant::now();
            let read = http::read(what, req.call());
            let failed = !matches!(&read, Ok((200, _)));
            crate::metrics::global().metadata(
                &format!("meta-data/{}", path.trim_start_matches('/')),
                failed,
                started.elapsed(),
            );
            let (status, body) = read?;
            // 401: the token expired or the service forgot it; one fresh token, then give up.
            if status == 401 && !fresh_token {
                *self.lock() = Token::Unknown;
                fresh_token = true;
                continue;
            }
            return Ok((status, body));
        }
    }

    /// The text at `path`, relative to `latest/meta-data/`.
    pub fn get(&self, path: &str) -> Result<String, CloudError> {
        let what = format!("metadata {path}");
        let mut attempt = 1;
        loop {
            let r = self.get_once(path, &what).and_then(|(status, body)| {
                if status == 200 {
                    return Ok(body);
                }
                let code = if status == 404 {
                    "NotFound".to_string()
                } else {
                    format!("HTTP{status}")
                };
                let message: String = body.trim().chars().take(200).collect();
                Err(CloudError {
                    http_status: status,
                    ..CloudError::new(&what, &code, message)
                })
            });
            match r {
                Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn get_trimmed(&self, path: &str) -> Result<String, CloudError> {
        Ok(self.get(path)?.trim().to_string())
    }

    pub fn instance_id(&self) -> Result<String, CloudError> {
        self.get_trimmed("instance-id")
    }
    pub fn instance_type(&self) -> Result<String, CloudError> {
        self.get_trimmed("instance/instance-type")
    }
    pub fn region_id(&self) -> Result<String, CloudError> {
        self.get_trimmed("region-id")
    }
    pub fn zone_id(&self) -> Result<String, CloudError> {
        self.get_trimmed("zone-id")
    }
    pub fn vpc_id(&self) -> Result<String, CloudError> {
        self.get_trimmed("vpc-id")
    }
    pub fn vswitch_id(&self) -> Result<String, CloudError> {
        self.get_trimmed("vswitch-id")
    }
    pub fn primary_mac(&self) -> Result<String, CloudError> {
        self.get_trimmed("mac")
    }

    /// MACs of the ENIs the instance has (as far as metadata knows yet).
    pub fn macs(&self) -> Result<Vec<String>, CloudError> {
        Ok(parse_list(&self.get("network/interfaces/macs/")?))
    }

    /// A list at `path` (one item per line, trailing `/` dropped), e.g. the RAM role names.
    pub fn list(&self, path: &str) -> Result<Vec<String>, CloudError> {
        Ok(parse_list(&self.get(path)?))
    }

    pub fn eni(&self, mac: &str) -> Result<MetaEni, CloudError> {
        let base = format!("network/interfaces/macs/{mac}/");
        let field = |k: &str| self.get_trimmed(&format!("{base}{k}"));
        let what = |k: &str| format!("metadata {base}{k}");
        let ip = |k: &str| -> Result<Ipv4Addr, CloudError> {
            let v = field(k)?;
            v.parse().map_err(|_| {
                CloudError::new(&what(k), DECODE, format!("not an IPv4 address: {v:?}"))
            })
        };
        let cidr_text = field("vswitch-cidr-block")?;
        let vswitch_cidr = cidr_text.parse().map_err(|_| {
            CloudError::new(
                &what("vswitch-cidr-block"),
                DECODE,
                format!("not an IPv4 CIDR: {cidr_text:?}"),
            )
        })?;
        let ips_text = field("private-ipv4s")?;
        let private_ipv4s = parse_ipv4s(&ips_text).ok_or_else(|| {
            CloudError::new(
                &what("private-ipv4s"),
                DECODE,
                format!("not a list of IPv4 addresses: {ips_text:?}"),
            )
        })?;
        Ok(MetaEni {
            mac: mac.to_string(),
            eni_id: field("network-interface-id")?,
            primary_ip: ip("primary-ip-address")?,
            gateway: ip("gateway")?,
            vswitch_id: field("vswitch-id")?,
            vswitch_cidr,
            private_ipv4s,
        })
    }
}

impl Metadata {
    /// The text at `path`, or `None` when the service answers 404 (the path does not exist,
    /// which for the IPv6 paths means the ENI or its vSwitch has no IPv6).
    fn get_optional(&self, path: &str) -> Result<Option<String>, CloudError> {
        match self.get(path) {
            Ok(t) => Ok(Some(t.trim().to_string())),
            Err(e) if e.http_status == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The ENI's IPv6 addresses (`network/interfaces/macs/<mac>/ipv6s`); empty when it has
    /// none (the service answers 404 then).
    pub fn ipv6s(&self, mac: &str) -> Result<Vec<Ipv6Addr>, CloudError> {
        let path = format!("network/interfaces/macs/{mac}/ipv6s");
        match self.get_optional(&path)? {
            None => Ok(Vec::new()),
            Some(text) => parse_ipv6s(&text).ok_or_else(|| {
                CloudError::new(
                    &format!("metadata {path}"),
                    DECODE,
                    format!(
                        "not a bracketed list of IPv6 addresses like \"[2408::1,2408::2]\": {text:?}"
                    ),
                )
            }),
        }
    }

    /// The ENI's IPv6 gateway (`ipv6-gateway`); `None` when its vSwitch has no IPv6.
    pub fn ipv6_gateway(&self, mac: &str) -> Result<Option<Ipv6Addr>, CloudError> {
        let path = format!("network/interfaces/macs/{mac}/ipv6-gateway");
        self.get_optional(&path)?
            .map(|t| {
                t.parse().map_err(|_| {
                    CloudError::new(
                        &format!("metadata {path}"),
                        DECODE,
                        format!("not an IPv6 address: {t:?}"),
                    )
                })
            })
            .transpose()
    }

    /// The IPv6 CIDR of the ENI's vSwitch (`vswitch-ipv6-cidr-block`); `None` without IPv6.
    pub fn vswitch_ipv6_cidr(&self, mac: &str) -> Result<Option<Ipv6Network>, CloudError> {
        let path = format!("network/interfaces/macs/{mac}/vswitch-ipv6-cidr-block");
        self.get_optional(&path)?
            .map(|t| {
                t.parse().map_err(|_| {
                    CloudError::new(
                        &format!("metadata {path}"),
                        DECODE,
                        format!("not an IPv6 CIDR: {t:?}"),
                    )
                })
            })
            .transpose()
    }

    /// All three IPv6 facts of an ENI.
    pub fn eni_ipv6(&self, mac: &str) -> Result<MetaEniIpv6, CloudError> {
        Ok(MetaEniIpv6 {
            ips: self.ipv6s(mac)?,
            gateway: self.ipv6_gateway(mac)?,
            vswitch_cidr: self.vswitch_ipv6_cidr(mac)?,
        })
    }
}

/// `ipv6s` as the service writes it: `[2408:4005:39c:7a00:b1ad:8fa2:f04:e4e]`, several
/// comma-separated inside one pair of brackets, no quotes. `None` for anything else.
pub fn parse_ipv6s(text: &str) -> Option<Vec<Ipv6Addr>> {
    let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?.trim();
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|s| s.trim().parse().ok()).collect()
}

/// One item per line; directory entries end with `/`, which is not part of the name.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim().trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `private-ipv4s` is a JSON array of strings; tolerate one address per line too.
pub fn parse_ipv4s(text: &str) -> Option<Vec<Ipv4Addr>> {
    let text = text.trim();
    if text.starts_with('[') {
        let list: Vec<String> = serde_json::from_str(text).ok()?;
        return list.iter().map(|s| s.trim().parse().ok()).collect();
    }
    parse_list(text).iter().map(|s| s.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_addresses() {
        assert_eq!(
            parse_list("00:16:3e:00:00:01/\n00:16:3e:00:00:02/\n"),
            vec!["00:16:3e:00:00:01", "00:16:3e:00:00:02"]
        );
        assert_eq!(parse_list("a\r\nb"), vec!["a", "b"]);
        assert!(parse_list("").is_empty());
        let ips = parse_ipv4s(r#"["172.16.0.10","172.16.0.11"]"#).unwrap();
        assert_eq!(
            ips,
            vec![Ipv4Addr::new(172, 16, 0, 10), Ipv4Addr::new(172, 16, 0, 11)]
        );
        assert_eq!(parse_ipv4s("172.16.0.10\n").unwrap().len(), 1);
        assert_eq!(parse_ipv4s("[]").unwrap().len(), 0);
        assert!(parse_ipv4s(r#"["nope"]"#).is_none());
        assert!(parse_ipv4s("[1,").is_none());
    }

    #[test]
    fn ipv6s_are_bracketed_and_unquoted() {
        let one: Ipv6Addr = "2408:4005:39c:7a00:b1ad:8fa2:f04:e4e".parse().unwrap();
        assert_eq!(
            parse_ipv6s("[2408:4005:39c:7a00:b1ad:8fa2:f04:e4e]\n").unwrap(),
            vec![one]
        );
        assert_eq!(
            parse_ipv6s("[2408::1,2408::2]").unwrap(),
            vec![
                "2408::1".parse::<Ipv6Addr>().unwrap(),
                "2408::2".parse().unwrap()
            ]
        );
        assert_eq!(parse_ipv6s("[2408::1, 2408::2]").unwrap().len(), 2);
        assert!(parse_ipv6s("[]").unwrap().is_empty());
        for bad in [
            "",
            "2408::1",
            "[\"2408::1\"]",
            "[2408::1",
            "[2408::1,]",
            "[10.0.0.1]",
            "[2408::1][2408::2]",
            "<html>",
        ] {
            assert_eq!(parse_ipv6s(bad), None, "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let m = Metadata::new("http://127.0.0.1:1/instances/i-x/");
        *m.lock() = Token::Valid("s3cr3t-token".into(), Instant::now());
        let d = format!("{m:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        assert_eq!(m.base(), "http://127.0.0.1:1/instances/i-x");
    }
}
