//! The RPC socket: bind (mode 0600), accept, check the peer is root, hand requests to the loop.
//!
//! Requests are at most [`MAX_REQUEST_BYTES`]. Every refusal is a JSON reply the peer can read:
//! what it still sends is drained (bounded) or refused by shutting down reading, because closing
//! a unix socket with unread data resets the peer's connection and the reply would be lost.
//!
//! The [`Gate`] is shared with the loop: once it stops, no request is answered with success, and
//! the loop waits (bounded) until every reply it handed out has been written.

use super::Msg;
use crate::rpc::{MAX_REQUEST_BYTES, Request, Response};
use crate::{Error, Kind, Result, ResultExt};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{Mode, umask};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// After refusing an oversized request, this much more is read and discarded while waiting for
/// the peer to finish sending; beyond it reading is shut down (the peer's send then fails).
const DRAIN_CAP: usize = 16 * MAX_REQUEST_BYTES;
/// What can still be queued once reading is shut down is bounded by the peer's send buffer;
/// this bounds the loop that discards it regardless.
const DISCARD_CAP: usize = 64 << 20;

/// Binds the socket, refusing to steal it from a daemon that is still running.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_ctx(|| format!("create {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!(
                    "another terway daemon is already listening on {}",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)
            .with_ctx(|| format!("remove stale socket {}", path.display()))?;
    }
    // umask rather than chmod after bind: there is never a moment the socket is open to others.
    let old = umask(Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    umask(old);
    listener.with_ctx(|| format!("bind {}", path.display()))
}

/// What the connection threads and the loop share.
pub struct Gate {
    /// Set once, by the loop, when it stops: no request is answered with success after it.
    stopping: AtomicBool,
    stop_reason: Mutex<String>,
    /// Requests handed to the loop whose reply has not been written yet.
    unanswered: AtomicUsize,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate {
            stopping: AtomicBool::new(false),
            stop_reason: Mutex::new(String::new()),
            unanswered: AtomicUsize::new(0),
        })
    }

    /// From now on every request is answered with "stopping" (the first reason given stays).
    pub fn stop(&self, reason: &str) {
        {
            let mut r = lock(&self.stop_reason);
            if r.is_empty() {
                *r = reason.to_string();
            }
        }
        self.stopping.store(true, SeqCst);
    }

    /// The answer to a request once the loop stopped, `None` while it runs.
    pub fn stopping(&self) -> Option<Error> {
        if !self.stopping.load(SeqCst) {
            return None;
        }
        Some(Error::new(
            Kind::TryAgain,
            format!(
                "terway daemon is stopping ({}); try again when it is back",
                lock(&self.stop_reason)
            ),
        ))
    }

    /// Requests handed to the loop whose reply has not been written yet.
    pub fn unanswered(&self) -> usize {
        self.unanswered.load(SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a request handed to the loop until its reply is written.
struct Pending<'a>(&'a Gate);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.unanswered.fetch_sub(1, SeqCst);
    }
}

/// Accepts forever; each connection gets a short-lived thread so a slow client blocks nobody.
pub fn accept_loop(listener: UnixListener, tx: Sender<Msg>, gate: Arc<Gate>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let tx = tx.clone();
                let gate = gate.clone();
                let spawned = std::thread::Builder::new()
                    .name("rpc-conn".into())
                    .spawn(move || serve(stream, tx, &gate));
                if let Err(e) = spawned {
                    log::error!("rpc: cannot spawn a connection thread: {e}");
                }
            }
            Err(e) => {
                log::warn!("rpc: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Why a request was not read, and whether the peer may still be sending.
struct Refusal {
    error: Error,
    unread: bool,
}

fn serve(stream: UnixStream, tx: Sender<Msg>, gate: &Gate) {
    let stream = &stream;
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut pending = None;
    let (resp, unread) = match read_request(stream) {
        Err(r) => (Err(r.error), r.unread),
        Ok(buf) => {
            let resp = check_peer(stream)
                .and_then(|()| decode_request(&buf))
                .and_then(|req| {
                    // Counted before the check: the loop, which stops first and then waits for
                    // the count to drop, either sees this request or this thread sees it stop.
                    gate.unanswered.fetch_add(1, SeqCst);
                    pending = Some(Pending(gate));
                    match gate.stopping() {
                        Some(e) => Err(e),
                        None => dispatch(req, &tx, gate),
                    }
                });
            (resp, false)
        }
    };
    if let Err(e) = (&*stream).write_all(&encode(&resp)) {
        log::warn!("rpc: write reply: {e}");
    }
    let _ = stream.shutdown(Shutdown::Write);
    drop(pending);
    if unread {
        drain(stream, Instant::now() + IO_TIMEOUT);
    }
}

/// The request on the wire to a [`Request`]; pure, so it can be tested on its own.
pub fn decode_request(buf: &[u8]) -> Result<Request> {
    if buf.len() > MAX_REQUEST_BYTES {
        return Err(too_large(buf.len()));
    }
    serde_json::from_slice(buf)
        .map_err(|e| Error::new(Kind::Decode, format!("rpc: malformed request: {e}")))
}

fn too_large(read: usize) -> Error {
    Error::new(
        Kind::Decode,
        format!(
            "rpc: request refused: larger than the limit of {MAX_REQUEST_BYTES} bytes ({read} bytes read before giving up)"
        ),
    )
}

/// Refuses anyone but root, after reading their request: the reply then reaches them.
fn check_peer(stream: &UnixStream) -> Result<()> {
    let cred = getsockopt(stream, PeerCredentials).ctx("rpc: read peer credentials")?;
    if cred.uid() == 0 {
        return Ok(());
    }
    log::warn!(
        "rpc: refused a request from uid {} (pid {})",
        cred.uid(),
        cred.pid()
    );
    Err(Error::new(
        Kind::Permission,
        format!(
            "permission denied: only root may talk to the terway daemon (caller uid {})",
            cred.uid()
        ),
    ))
}

/// Reads up to the peer's end of the request, at most one byte over the limit.
fn read_request(stream: &UnixStream) -> std::result::Result<Vec<u8>, Refusal> {
    let mut buf = Vec::new();
    match stream
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut buf)
    {
        Err(e) => Err(Refusal {
            error: Error::io("rpc: read request", e),
            unread: false,
        }),
        Ok(_) if buf.len() > MAX_REQUEST_BYTES => Err(Refusal {
            error: too_large(buf.len()),
            unread: true,
        }),
        Ok(_) => Ok(buf),
    }
}

fn dispatch(req: Request, tx: &Sender<Msg>, gate: &Gate) -> Response {
    let (reply_tx, reply_rx) = mpsc::channel();
    let gone = || {
        gate.stopping()
            .unwrap_or_else(|| Error::new(Kind::TryAgain, "terway daemon is shutting down"))
    };
    tx.send(Msg::Rpc(req, reply_tx)).map_err(|_| gone())?;
    reply_rx.recv().map_err(|_| gone())?
}

fn encode(resp: &Response) -> Vec<u8> {
    serde_json::to_vec(resp).unwrap_or_else(|e| {
        format!(r#"{{"Err":{{"kind":"Internal","msg":"encode reply: {e}"}}}}"#).into_bytes()
    })
}

/// After a refusal while the peer may still be sending: read and discard until its end (it then
/// reads the reply as usual), bounded in time and bytes; then shut reading down.
fn drain(stream: &UnixStream, deadline: Instant) {
    let mut chunk = [0u8; 64 << 10];
    let mut total = 0;
    while total < DRAIN_CAP {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = stream.set_read_timeout(Some(left));
        match (&*stream).read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    discard_queued(stream);
}

/// Shuts reading down and throws away what is queued. The peer cannot queue more after the
/// shutdown (its sends fail with EPIPE), and with nothing unread the close is an orderly EOF,
/// not a reset that would destroy the reply in the peer's receive queue.
fn discard_queued(stream: &UnixStream) {
    let _ = stream.shutdown(Shutdown::Read);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut chunk = [0u8; 64 << 10];
    let mut total = 0;
    while total < DISCARD_CAP {
        match (&*stream).read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}
