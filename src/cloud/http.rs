//! The I/O edge shared by the OpenAPI and metadata clients: a ureq agent with timeouts, reading
//! answers without panicking, wall-clock time and a small random source for nonces and jitter.

use crate::cloud::error::CloudError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Timeouts of every HTTP exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// TCP (and TLS) connect.
    pub connect_timeout: Duration,
    /// The whole exchange, connect to last body byte.
    pub timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Answers larger than this are refused rather than buffered.
const MAX_BODY: u64 = 8 << 20;

pub fn agent(cfg: &HttpConfig) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        // Error statuses carry the cloud's Code/Message: we read them ourselves.
        .http_status_as_error(false)
        .timeout_connect(Some(cfg.connect_timeout))
        .timeout_global(Some(cfg.timeout))
        // The metadata and API endpoints never redirect; following one could leak headers.
        .max_redirects(0)
        .user_agent(format!("terway/{}", crate::VERSION))
        .build();
    ureq::Agent::new_with_config(config)
}

/// Status and body text of an exchange; transport failures become [`CloudError::transport`].
pub fn read(
    action: &str,
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), CloudError> {
    let mut resp = resp.map_err(|e| CloudError::transport(action, e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|e| CloudError::transport(action, format!("reading the answer: {e}")))?;
    Ok((status, body))
}

/// Unix seconds now (0 if the clock is before 1970, which the cloud will then refuse).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// xorshift64*: not cryptographic; nonces only need to be unique, jitter only spread out.
/// Every call mixes time, pid and a process-wide counter so threads never share a sequence.
pub fn random_u64() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut x =
        nanos ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if x == 0 {
        x = 0x2545_F491_4F6C_DD1D;
    }
    for _ in 0..4 {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
    }
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Uniform in [0, 1).
pub fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A fresh signature nonce (32 hex digits).
pub fn nonce() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_differ_and_unit_is_in_range() {
        let a: std::collections::HashSet<String> = (0..1000).map(|_| nonce()).collect();
        assert_eq!(a.len(), 1000);
        assert!(
            (0..1000)
                .map(|_| random_unit())
                .all(|x| (0.0..1.0).contains(&x))
        );
    }
}
