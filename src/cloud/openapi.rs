//! One RPC-style OpenAPI product (ECS or VPC): V3-signed calls over ureq with client-side rate
//! limits and retries. Parameters stay identical across the retries of one call (so a
//! `ClientToken` keeps a create idempotent); date and nonce are fresh per attempt.

use crate::cloud::credentials::CredentialProvider;
use crate::cloud::error::CloudError;
use crate::cloud::http::{self, HttpConfig};
use crate::cloud::ratelimit::RateLimiter;
use crate::cloud::sign;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::cloud::retry::Attempts;
pub use crate::cloud::retry::RetryPolicy;
use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// The deadline of the operation this thread is carrying out (see [`with_deadline`]).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with `deadline` as the deadline of every call it makes: a throttled call is
/// retried until then rather than for the policy's `throttle_patience`. For a job whose calls
/// are one operation (a pool's create, say): waiting for the region's budget is part of it.
pub fn with_deadline<R>(deadline: Instant, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.set(self.0);
        }
    }
    let _restore = Restore(DEADLINE.replace(Some(deadline)));
    f()
}

/// Everything an [`OpenApi`] needs besides credentials.
#[derive(Debug, Clone)]
pub struct OpenApiConfig {
    /// `https://ecs-vpc.cn-hangzhou.aliyuncs.com`, `http://127.0.0.1:8800`, or a bare host
    /// (then HTTPS).
    pub endpoint: String,
    /// API version, e.g. `2014-05-26`.
    pub version: String,
    /// Added as `RegionId` unless the call passes one or the action has no such parameter.
    pub region_id: String,
    pub retry: RetryPolicy,
    /// Per-action calls per minute on top of the defaults (see [`crate::cloud::ratelimit`]).
    pub rate_limits: Vec<(String, u32)>,
    pub http: HttpConfig,
}

/// Actions without a `RegionId` parameter (the endpoint names the region); the official SDKs
/// do not send one either.
const NO_REGION_ID: &[&str] = &["DescribeInstanceTypes"];

pub struct OpenApi {
    /// `scheme://authority` without a trailing slash.
    base: String,
    /// The `host` header value, as signed.
    host: String,
    version: String,
    region_id: String,
    retry: RetryPolicy,
    limiter: RateLimiter,
    creds: Arc<CredentialProvider>,
    agent: ureq::Agent,
    counts: Mutex<BTreeMap<String, u64>>,
    /// Attempts refused by throttling so far.
    throttled: AtomicU64,
}

impl std::fmt::Debug for OpenApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenApi")
            .field("base", &self.base)
            .field("version", &self.version)
            .field("region_id", &self.region_id)
            .finish()
    }
}

/// Splits an endpoint into (`scheme://authority`, host header). Default ports are dropped from
/// the host header, as HTTP clients send it.
pub fn parse_endpoint(endpoint: &str) -> Result<(String, String), String> {
    let e = endpoint.trim();
    let (scheme, rest) = match e.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("https".to_string(), e),
    };
    let rest = rest.trim_end_matches('/');
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "endpoint {endpoint:?}: scheme must be http or https"
        ));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "endpoint {endpoint:?}: want scheme://host[:port] without a path"
        ));
    }
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let host = rest.strip_suffix(default_port).unwrap_or(rest).to_string();
    Ok((format!("{scheme}://{rest}"), host))
}

/// The cloud's error document (`{"RequestId","Code","Message",...}`) or, when the body is not
/// one, a code derived from the HTTP status.
pub fn error_from_response(action: &str, status: u16, body: &str) -> CloudError {
    let v: Option<Value> = serde_json::from_str(body).ok();
    let field = |k: &str| {
        v.as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match field("Code") {
        Some(code) => CloudError {
            action: action.to_string(),
            code,
            message: field("Message").unwrap_or_default(),
            request_id: field("RequestId").unwrap_or_default(),
            http_status: status,
        },
        None => CloudError {
            http_status: status,
            ..CloudError::new(
                action,
                &format!("HTTP{status}"),
                body.trim().chars().take(200).collect::<String>(),
            )
        },
    }
}

impl OpenApi {
    pub fn new(cfg: OpenApiConfig, creds: Arc<CredentialProvider>) -> Result<OpenApi, CloudError> {
        let (base, host) = parse_endpoint(&cfg.endpoint)
            .map_err(|m| CloudError::new("OpenApi", "InvalidEndpoint", m))?;
        Ok(OpenApi {
            base,
            host,
            version: cfg.version,
            region_id: cfg.region_id,
            retry: cfg.retry,
            limiter: RateLimiter::new(&cfg.rate_limits),
            creds,
            agent: http::agent(&cfg.http),
            counts: Mutex::new(BTreeMap::new()),
            throttled: AtomicU64::new(0),
        })
    }

    /// Calls `action` with `params`, waiting for the rate limit and retrying retryable errors
    /// with backoff. The final error names the action, code, message and request id.
    /// A throttled call is retried until the operation's deadline ([`with_deadline`]), else
    /// for the policy's `throttle_patience`.
    pub fn call(&self, action: &str, params: &[(&str, String)]) -> Result<Value, CloudError> {
        let mut query: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        if !NO_REGION_ID.contains(&action) && !query.iter().any(|(k, _)| k == "RegionId") {
            query.push(("RegionId".into(), self.region_id.clone()));
        }
        let deadline = DEADLINE
            .get()
            .unwrap_or_else(|| Instant::now() + self.retry.throttle_patience);
        let mut tries = Attempts::default();
        loop {
            self.limiter.acquire(action);
            self.count(action);
            let started = Instant::now();
            let result = self.attempt(action, &query);
            crate::metrics::global().openapi(
                action,
                result.as_ref().err().map(|e| e.code.as_str()),
                result.as_ref().is_err_and(CloudError::is_throttling),
                started.elapsed(),
            );
            let e = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if e.is_throttling() {
                self.throttled.fetch_add(1, Ordering::Relaxed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let next = self.retry.next(
                &mut tries,
                e.is_throttling(),
                e.is_retryable(),
                left,
                http::random_unit(),
            );
            let n = tries.failed + tries.throttled;
            match next {
                Some(delay) if e.is_throttling() => {
                    // Routine at scale: the region's budget is shared by every node.
                    log::debug!(
                        "{e}; throttled {} time(s), again in {delay:?}",
                        tries.throttled
                    );
                    std::thread::sleep(delay);
                }
                Some(delay) => {
                    let max = self.retry.max_attempts;
                    log::info!("{e}; attempt {}/{max}, retrying in {delay:?}", tries.failed);
                    std::thread::sleep(delay);
                }
                None => {
                    if n > 1 {
                        log::warn!("{e} (gave up after {n} attempts)");
                    }
                    return Err(e);
                }
            }
        }
    }

    fn count(&self, action: &str) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry(action.to_string()).or_default() += 1;
    }

    /// Attempts the cloud refused by throttling so far (a sign the region's budget is spent).
    pub fn throttled_total(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// HTTP requests sent so far per action (retries included).
    pub fn call_counts(&self) -> Vec<(String, u64)> {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// One signed exchange.
    fn attempt(&self, action: &str, query: &[(String, String)]) -> Result<Value, CloudError> {
        let creds = self.creds.get().map_err(|e| CloudError {
            action: action.to_string(),
            ..e
        })?;
        let date = sign::format_timestamp(http::unix_now());
        let nonce = http::nonce();
        let headers = sign::sign_v3(&sign::V3Request {
            method: "POST",
            host: &self.host,
            path: "/",
            query,
            action,
            version: &self.version,
            body: b"",
            extra_headers: &[],
            key_id: &creds.access_key_id,
            secret: &creds.access_key_secret,
            security_token: creds.security_token.as_deref(),
            date: &date,
            nonce: &nonce,
        });
        let url = format!("{}/?{}", self.base, sign::canonical_query(query));
        let mut req = self.agent.post(&url);
        // Every signed header goes out exactly as signed, `host` included.
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let (status, body) = http::read(action, req.send_empty())?;
        if status != 200 {
            return Err(error_from_response(action, status, &body));
        }
        let v: Value = serde_json::from_str(&body).map_err(|e| {
            let head: String = body.chars().take(120).collect();
            CloudError::decode(action, format!("answer is not JSON ({e}): {head}"))
        })?;
        if !v.is_object() {
            return Err(CloudError::decode(action, "answer is not a JSON object"));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("https://ecs-vpc.cn-hangzhou.aliyuncs.com/").unwrap(),
            (
                "https://ecs-vpc.cn-hangzhou.aliyuncs.com".to_string(),
                "ecs-vpc.cn-hangzhou.aliyuncs.com".to_string()
            )
        );
        assert_eq!(
            parse_endpoint("vpc.aliyuncs.com:443").unwrap().0,
            "https://vpc.aliyuncs.com:443"
        );
        assert_eq!(
            parse_endpoint("vpc.aliyuncs.com:443").unwrap().1,
            "vpc.aliyuncs.com"
        );
        assert_eq!(
            parse_endpoint("http://127.0.0.1:8800").unwrap().1,
            "127.0.0.1:8800"
        );
        for bad in ["ftp://x", "http://", "http://x/path", "http://u@x"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deadline_scopes_nest_and_restore() {
        let (a, b) = (
            Instant::now(),
            Instant::now() + std::time::Duration::from_secs(5),
        );
        assert_eq!(DEADLINE.get(), None);
        with_deadline(a, || {
            assert_eq!(DEADLINE.get(), Some(a));
            with_deadline(b, || assert_eq!(DEADLINE.get(), Some(b)));
            assert_eq!(DEADLINE.get(), Some(a));
        });
        let _ = std::panic::catch_unwind(|| with_deadline(b, || panic!("a job's bug")));
        assert_eq!(DEADLINE.get(), None, "restored after a panic too");
    }

    #[test]
    fn error_documents() {
        let e = error_from_response(
            "CreateNetworkInterface",
            403,
            r#"{"RequestId":"R1","HostId":"h","Code":"InvalidVSwitchId.IpNotEnough",
               "Message":"The specified VSwitch \"vsw-1\" has not enough IpAddress.","Recommend":"u"}"#,
        );
        assert_eq!(e.code, "InvalidVSwitchId.IpNotEnough");
        assert_eq!(e.request_id, "R1");
        assert_eq!(e.http_status, 403);
        assert!(e.message.contains("vsw-1"));
        let gw = error_from_response("X", 502, "<html>Bad Gateway</html>");
        assert_eq!((gw.code.as_str(), gw.is_retryable()), ("HTTP502", true));
        assert!(!error_from_response("X", 404, "").is_retryable());
        assert_eq!(
            crate::cloud::error::DECODE,
            CloudError::decode("X", "m").code
        );
    }
}
