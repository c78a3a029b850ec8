//! Blocking client: connect, send one request, read one reply.

use super::{Reply, Request, Response};
use crate::{Error, Kind};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Why a call failed: the daemon could not be reached at all (nothing was done), or it answered
/// with an error.
#[derive(Debug)]
pub struct CallError {
    pub unreachable: bool,
    pub error: Error,
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Error {
        e.error
    }
}

/// Largest reply we accept; a mapping of thousands of rows fits easily.
const MAX_REPLY: u64 = 16 << 20;

pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, CallError> {
    let unreachable = |e: std::io::Error| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            "only root may talk to the daemon"
        } else {
            "is terwayd running?"
        };
        CallError {
            unreachable: true,
            error: Error::new(
                Kind::TryAgain,
                format!(
                    "terway daemon is not reachable at {}: {e} ({hint})",
                    socket.display()
                ),
            ),
        }
    };
    let failed = |what: &str, e: std::io::Error| {
        let e = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no answer within {} s", timeout.as_secs())
            }
            _ => e.to_string(),
        };
        CallError {
            unreachable: false,
            error: Error::new(
                Kind::TryAgain,
                format!("terway daemon at {}: {what}: {e}", socket.display()),
            ),
        }
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| failed("set timeout", e))?;
    let body = serde_json::to_vec(req).map_err(|e| CallError {
        unreachable: false,
        error: Error::new(Kind::Internal, format!("encode request: {e}")),
    })?;
    stream
        .write_all(&body)
        .and_then(|_| stream.shutdown(std::net::Shutdown::Write))
        .map_err(|e| failed("send request", e))?;
    let mut buf = Vec::new();
    stream
        .take(MAX_REPLY)
        .read_to_end(&mut buf)
        .map_err(|e| failed("read reply", e))?;
    if buf.is_empty() {
        return Err(CallError {
            unreachable: false,
            error: Error::new(
                Kind::TryAgain,
                format!(
                    "terway daemon at {} closed the connection without a reply",
                    socket.display()
                ),
            ),
        });
    }
    let resp: Response = serde_json::from_slice(&buf).map_err(|e| CallError {
        unreachable: false,
        error: Error::new(
            Kind::Internal,
            format!("malformed reply from daemon at {}: {e}", socket.display()),
        ),
    })?;
    resp.map_err(|error| CallError {
        unreachable: false,
        error,
    })
}
