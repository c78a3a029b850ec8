//! Blocking client: connect, send one request, read one reply (at once, or later: [`start`]).

use super::{MAX_REQUEST_BYTES, Reply, Request, Response};
use crate::{Error, Kind};
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
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
    start(socket, req, timeout)?.finish()
}

/// A request sent whose reply is still to be read: the caller may do other work meanwhile (the
/// plugin builds the address-independent part of a veth while the daemon allocates).
pub struct Pending<'a> {
    socket: &'a Path,
    timeout: Duration,
    stream: UnixStream,
    sent: std::io::Result<()>,
}

/// Connects and sends `req`; [`Pending::finish`] reads the reply.
pub fn start<'a>(
    socket: &'a Path,
    req: &Request,
    timeout: Duration,
) -> Result<Pending<'a>, CallError> {
    let body = serde_json::to_vec(req).map_err(|e| CallError {
        unreachable: false,
        error: Error::new(Kind::Internal, format!("encode request: {e}")),
    })?;
    // The daemon would refuse it; sending it anyway only costs a megabyte of copying.
    if body.len() > MAX_REQUEST_BYTES {
        return Err(CallError {
            unreachable: false,
            error: too_large(req, body.len()),
        });
    }
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
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| failed(socket, timeout, "set timeout", e))?;
    let sent = stream
        .write_all(&body)
        .and_then(|_| stream.shutdown(std::net::Shutdown::Write));
    Ok(Pending {
        socket,
        timeout,
        stream,
        sent,
    })
}

fn failed(socket: &Path, timeout: Duration, what: &str, e: std::io::Error) -> CallError {
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
}

impl Pending<'_> {
    /// Whether the whole request went out (a daemon that refuses one may stop reading it).
    pub fn sent(&self) -> bool {
        self.sent.is_ok()
    }

    /// Waits for the reply: up to the call's timeout from now, whatever was done since
    /// [`start`].
    pub fn finish(self) -> Result<Reply, CallError> {
        let Pending {
            socket,
            timeout,
            mut stream,
            sent,
        } = self;
        // Room for any usual reply at once: from empty, read_to_end probes with 32-byte reads.
        let mut buf = Vec::with_capacity(16 << 10);
        // A daemon that refuses a request (busy, stopping, too big) may stop reading it: the
        // send fails, but the answer is there to read.
        let read = if sent.is_ok() || refused(&sent) {
            (&mut stream).take(MAX_REPLY).read_to_end(&mut buf)
        } else {
            Ok(0)
        };
        // A complete reply counts even after a failed send, or when a reset follows it (the
        // daemon closed with part of the request unread).
        if (sent.is_err() || read.is_err())
            && let Ok(resp) = serde_json::from_slice::<Response>(&buf)
        {
            return resp.map_err(|error| CallError {
                unreachable: false,
                error,
            });
        }
        sent.map_err(|e| failed(socket, timeout, "send request", e))?;
        read.map_err(|e| failed(socket, timeout, "read reply", e))?;
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
}

fn refused(sent: &std::io::Result<()>) -> bool {
    sent.as_ref()
        .is_err_and(|e| matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset))
}

/// The refusal of a request bigger than the daemon reads, naming what makes it big.
fn too_large(req: &Request, size: usize) -> Error {
    let largest = serde_json::to_value(req)
        .ok()
        .and_then(|v| largest_field(&v, ""))
        .map(|(field, n)| format!(" (largest field: {field}, {n} bytes)"))
        .unwrap_or_default();
    Error::new(
        Kind::InvalidConfig,
        format!(
            "request to the terway daemon is {size} bytes, over the limit of {MAX_REQUEST_BYTES} bytes{largest}; not sent"
        ),
    )
}

/// The leaf (a string, number or list) with the longest encoding, by its dotted path.
fn largest_field(v: &Value, path: &str) -> Option<(String, usize)> {
    match v {
        Value::Object(m) => m
            .iter()
            .filter_map(|(k, x)| {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                largest_field(x, &p)
            })
            .max_by_key(|(_, n)| *n),
        leaf => Some((path.to_string(), serde_json::to_string(leaf).ok()?.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttachKey, PodRef};

    fn alloc(network: String) -> Request {
        Request::Alloc {
            key: AttachKey {
                network,
                container_id: "c".into(),
                ifname: "eth0".into(),
            },
            pod: PodRef::default(),
            netns: "/run/netns/x".into(),
        }
    }

    #[test]
    fn an_oversized_request_is_refused_before_connecting() {
        let socket = Path::new("/nonexistent/terway.sock");
        let e = call(socket, &alloc("n".repeat(2 << 20)), Duration::from_secs(1)).unwrap_err();
        assert!(!e.unreachable);
        assert_eq!(e.error.kind, Kind::InvalidConfig);
        assert!(
            e.error.msg.contains("limit of 1048576 bytes"),
            "{}",
            e.error
        );
        assert!(
            e.error
                .msg
                .contains("largest field: key.network, 2097154 bytes"),
            "{}",
            e.error
        );
        // Just under the limit it is sent (here: the daemon is not there).
        let fits = MAX_REQUEST_BYTES - serde_json::to_vec(&alloc(String::new())).unwrap().len();
        let e = call(socket, &alloc("n".repeat(fits)), Duration::from_secs(1)).unwrap_err();
        assert!(e.unreachable, "{}", e.error);
    }

    #[test]
    fn the_largest_field_is_found_in_nested_keys_and_lists() {
        let mut req = alloc("n".into());
        if let Request::Alloc { key, .. } = &mut req {
            key.container_id = "c".repeat(100);
        }
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            largest_field(&v, ""),
            Some(("key.container_id".into(), 102))
        );
        let gc = Request::Gc {
            network: "n".into(),
            valid: vec![AttachKey::new("n", "a", "eth0"); 3],
        };
        let v = serde_json::to_value(&gc).unwrap();
        assert_eq!(largest_field(&v, "").unwrap().0, "valid");
    }
}
