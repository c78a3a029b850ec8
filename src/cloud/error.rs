//! The one error type of the cloud clients: what the cloud (or the wire) said, verbatim, with the
//! action and request id needed to chase it with the provider. Never carries secrets.

use crate::cloud::codes;
use crate::{Error, Kind};
use std::fmt;

/// Code for connection-level failures (connect, TLS, timeout, reset).
pub const TRANSPORT: &str = "Transport";
/// Code for answers that are not the JSON we expect.
pub const DECODE: &str = "Decode";
/// Code for a wait that ran out of time.
pub const TIMEOUT: &str = "Timeout";
/// Code for credentials that could not be obtained (file, metadata RAM role).
pub const CREDENTIALS: &str = "Credentials";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudError {
    /// The OpenAPI action (`CreateNetworkInterface`) or `metadata <path>`.
    pub action: String,
    /// The cloud's `Code`, or [`TRANSPORT`] / [`DECODE`] / [`TIMEOUT`] / [`CREDENTIALS`].
    pub code: String,
    /// The cloud's `Message`, verbatim.
    pub message: String,
    /// `""` when there is none.
    pub request_id: String,
    /// 0 for transport errors.
    pub http_status: u16,
}

impl CloudError {
    pub fn new(action: &str, code: &str, message: impl Into<String>) -> CloudError {
        CloudError {
            action: action.to_string(),
            code: code.to_string(),
            message: message.into(),
            request_id: String::new(),
            http_status: 0,
        }
    }

    pub fn transport(action: &str, message: impl Into<String>) -> CloudError {
        CloudError::new(action, TRANSPORT, message)
    }

    pub fn decode(action: &str, message: impl Into<String>) -> CloudError {
        CloudError::new(action, DECODE, message)
    }

    /// Worth another attempt: throttling, server-side trouble, a broken connection.
    pub fn is_retryable(&self) -> bool {
        codes::is_retryable(&self.code) || self.code == TRANSPORT || self.http_status >= 500
    }

    pub fn is_throttling(&self) -> bool {
        codes::is_throttling(&self.code)
    }

    /// The vSwitch has no free address (per vSwitch, unlike `QuotaExceeded.PrivateIpAddress`
    /// which is per ENI): the caller should try another vSwitch.
    pub fn is_vswitch_exhausted(&self) -> bool {
        self.code == codes::VSWITCH_IP_NOT_ENOUGH
    }

    /// The resource does not exist (any `*.NotFound` code).
    pub fn is_not_found(&self) -> bool {
        codes::is_not_found(&self.code)
    }
}

impl fmt::Display for CloudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.action, self.code, self.message)?;
        if !self.request_id.is_empty() {
            write!(f, " (request id {})", self.request_id)?;
        }
        Ok(())
    }
}

impl std::error::Error for CloudError {}

impl From<CloudError> for Error {
    fn from(e: CloudError) -> Error {
        let kind = if e.is_retryable() {
            Kind::TryAgain
        } else if e.is_vswitch_exhausted() {
            Kind::Exhausted
        } else {
            Kind::Cloud
        };
        Error::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(code: &str, status: u16) -> CloudError {
        CloudError {
            http_status: status,
            ..CloudError::new("AssignPrivateIpAddresses", code, "m")
        }
    }

    #[test]
    fn classification() {
        for (code, status) in [
            ("Throttling", 400),
            ("Throttling.User", 400),
            ("Throttling.Api", 400),
            ("InternalError", 500),
            ("ServiceUnavailable", 503),
            ("Transport", 0),
            ("SomethingNew", 502),
            ("SignatureNonceUsed", 400),
            ("Operation.Conflict", 403),
        ] {
            assert!(e(code, status).is_retryable(), "{code}");
        }
        for (code, status) in [
            ("InvalidVSwitchId.IpNotEnough", 403),
            ("InvalidAccessKeyId.NotFound", 404),
            ("SignatureDoesNotMatch", 400),
            ("Forbidden.RAM", 403),
            ("InvalidParameter", 400),
            ("Decode", 200),
            ("Timeout", 0),
        ] {
            assert!(!e(code, status).is_retryable(), "{code}");
        }
        assert!(e("InvalidVSwitchId.IpNotEnough", 403).is_vswitch_exhausted());
        assert!(!e("QuotaExceeded.PrivateIpAddress", 403).is_vswitch_exhausted());
        assert!(e("InvalidEniId.NotFound", 404).is_not_found());
        assert!(e("Throttling.User", 400).is_throttling());
    }

    #[test]
    fn display_and_conversion() {
        let mut x = CloudError::new(
            "CreateNetworkInterface",
            "InvalidVSwitchId.IpNotEnough",
            "The specified VSwitch \"vsw-x\" has not enough IpAddress.",
        );
        x.request_id = "RID-1".into();
        x.http_status = 403;
        assert_eq!(
            x.to_string(),
            "CreateNetworkInterface: InvalidVSwitchId.IpNotEnough: The specified VSwitch \
             \"vsw-x\" has not enough IpAddress. (request id RID-1)"
        );
        let err: Error = x.into();
        assert_eq!(err.kind, Kind::Exhausted);
        assert_eq!(Error::from(e("Throttling", 400)).kind, Kind::TryAgain);
        assert_eq!(Error::from(e("Forbidden.RAM", 403)).kind, Kind::Cloud);
        assert_eq!(
            CloudError::transport("X", "refused").to_string(),
            "X: Transport: refused"
        );
    }
}
