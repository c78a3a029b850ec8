//! The RPC socket: bind (mode 0600), accept, check the peer is root, hand requests to the loop.
//!
//! One thread runs a poll(2) loop over the listener and every connection ([`poll_loop`]); a
//! connection is a socket and its buffers ([`conn`]), not a thread. A cold node's burst parks an
//! ADD per pod until the pool grows: with a thread per connection each of those held a stack
//! (and the pages glibc keeps cached for the next thread) just to wait. Now a parked ADD is a
//! [`Responder`] in the daemon loop's waiters; its reply comes back through a queue that wakes
//! the poll loop, which writes it without blocking on any client. No async runtime: poll over a
//! few hundred sockets is all it takes.
//!
//! The bounds a misbehaving client cannot stretch:
//! - the whole request must arrive within one deadline (not per read), and at most
//!   [`MAX_REQUEST_BYTES`] of it;
//! - at most [`MAX_CONNECTIONS`] connections; when they are all taken, the connection that has
//!   waited longest without delivering a request is dropped (with a "busy" reply) to make room,
//!   and when every connection is busy with real work the newcomer gets the "busy" reply instead;
//! - running out of file descriptors is handled the same way, never by spinning on `accept`;
//! - a reply must be taken within the deadline too, and a client that does not read it delays
//!   nobody else (writes never block);
//! - every refusal is a JSON reply the peer can read: what it still sends is drained (bounded)
//!   or refused by shutting down reading, because closing a unix socket with unread data resets
//!   the peer's connection and the reply would be lost.
//!
//! The [`Gate`] is shared with the daemon loop: once it stops, no request is answered with
//! success, and the daemon loop waits (bounded) until every reply it handed out has been written.

mod conn;
mod poll_loop;

use crate::rpc::{MAX_REQUEST_BYTES, Request, Response};
use crate::{Error, Kind, Result, ResultExt};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{Mode, umask};
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Connections at once. A connection costs a file descriptor and its buffers, no thread, so the
/// bound is descriptors: the usual soft limit is 1024, and staying below it leaves room for the
/// rest of the daemon (state file, netlink, metrics) so that this cap, not EMFILE, is what
/// normally turns callers away. A node runs at most a few hundred pods; a cold node's burst
/// parks an ADD per pod until the pool grows: room for all of them.
pub const MAX_CONNECTIONS: usize = 768;
/// The whole request must arrive within this, and the reply must be taken within it again.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// Overrides [`DEFAULT_DEADLINE`] (milliseconds), read once at start; meant for tests.
const DEADLINE_ENV: &str = "TERWAY_RPC_DEADLINE_MS";
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A request as the loop receives it, with where its reply goes.
pub struct RpcCall {
    pub req: Request,
    pub reply: Responder,
}

/// Where one reply goes; used like a channel's `Sender` (`send` it the response). Sending never
/// blocks: the reply is queued for the poll loop, which writes it when the client takes it.
/// Dropped unsent (the loop lost the call), the client still gets an error reply, never silence.
pub struct Responder {
    to: Option<Target>,
}

enum Target {
    Conn {
        hub: Arc<Hub>,
        id: u64,
    },
    /// For the core's tests: the reply goes to a channel.
    #[cfg(test)]
    Channel(Sender<Response>),
}

impl Responder {
    /// A responder whose reply arrives on the returned receiver (disconnected if dropped unsent).
    #[cfg(test)]
    pub fn channel() -> (Responder, std::sync::mpsc::Receiver<Response>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let r = Responder {
            to: Some(Target::Channel(tx)),
        };
        (r, rx)
    }

    /// Hands over the reply; an error only when nobody can take it any more.
    pub fn send(mut self, resp: Response) -> std::result::Result<(), Undelivered> {
        let sent = match self.to.take() {
            Some(Target::Conn { hub, id }) => hub.push(id, Some(resp)),
            #[cfg(test)]
            Some(Target::Channel(tx)) => tx.send(resp).is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(Undelivered) }
    }
}

/// A reply nobody could take any more: the poll loop (or the channel's receiver) is gone.
#[derive(Debug, PartialEq, Eq)]
pub struct Undelivered;

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(Target::Conn { hub, id }) = self.to.take() {
            // The loop answers it with an error (it knows whether the daemon is stopping).
            let _ = hub.push(id, None);
        }
    }
}

/// Replies on their way from the daemon loop to the poll loop: a queue, and a socket pair in
/// the poll set that wakes the poll loop when the queue stops being empty.
struct Hub {
    /// (connection, reply); `None` for a responder dropped unsent.
    queue: Mutex<Vec<(u64, Option<Response>)>>,
    wake: UnixStream,
    /// Set when the poll loop has ended: nothing would write a reply any more.
    closed: AtomicBool,
}

impl Hub {
    /// A hub and the end of its wake-up pair the poll loop watches.
    fn new() -> std::io::Result<(Arc<Hub>, UnixStream)> {
        let (wake, woken) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        woken.set_nonblocking(true)?;
        let hub = Hub {
            queue: Mutex::new(Vec::new()),
            wake,
            closed: AtomicBool::new(false),
        };
        Ok((Arc::new(hub), woken))
    }

    /// Queues a reply for the poll loop; false when it has ended.
    fn push(&self, id: u64, resp: Option<Response>) -> bool {
        if self.closed.load(SeqCst) {
            return false;
        }
        let first = {
            let mut q = lock(&self.queue);
            q.push((id, resp));
            q.len() == 1
        };
        // One byte per batch: the loop empties the pair before it takes the queue, so a push
        // after its take finds the queue empty again and wakes it. A full pair already wakes it.
        if first {
            let _ = (&self.wake).write(&[1]);
        }
        true
    }

    fn take(&self) -> Vec<(u64, Option<Response>)> {
        std::mem::take(&mut *lock(&self.queue))
    }
}

/// Binds the socket, refusing to steal it from a daemon that is still running.
pub fn bind(path: &Path) -> Result<UnixListener> {
    bind_as("socket_path", path)
}
/// [`bind`] for the socket of config key `key` (errors name it).
pub fn bind_as(key: &str, path: &Path) -> Result<UnixListener> {
    crate::config::create_parent_dir(key, path)?;
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
        // Only a stale socket is ours to remove.
        if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!(
                    "{key} {} exists and is not a socket; refusing to replace it",
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

/// The request on the wire to a [`Request`]; pure, so it is tested on arbitrary bytes.
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

fn busy(what: impl std::fmt::Display) -> Error {
    Error::new(
        Kind::TryAgain,
        format!("terway daemon busy: {what}; try again"),
    )
}

/// What the poll loop and the daemon loop share.
pub struct Gate {
    deadline: Duration,
    /// Set once, by the loop, when it stops: no request is answered with success after it.
    stopping: AtomicBool,
    stop_reason: Mutex<String>,
    /// Requests handed to the loop whose reply has not been written yet.
    unanswered: AtomicUsize,
    log: Mutex<Throttle>,
}

impl Gate {
    /// A gate with the default deadline, or the one [`DEADLINE_ENV`] sets.
    pub fn new() -> Arc<Gate> {
        let deadline = match std::env::var(DEADLINE_ENV) {
            Err(_) => DEFAULT_DEADLINE,
            Ok(v) => match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    log::warn!(
                        "{DEADLINE_ENV}={v:?} is not a positive number of milliseconds; using {} s",
                        DEFAULT_DEADLINE.as_secs()
                    );
                    DEFAULT_DEADLINE
                }
            },
        };
        Gate::with_deadline(deadline)
    }

    pub fn with_deadline(deadline: Duration) -> Arc<Gate> {
        Arc::new(Gate {
            deadline,
            stopping: AtomicBool::new(false),
            stop_reason: Mutex::new(String::new()),
            unanswered: AtomicUsize::new(0),
            log: Mutex::new(Throttle::default()),
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

    /// Counts a request handed to the loop until the returned guard is dropped (its reply
    /// written, or the connection gone).
    fn count(self: &Arc<Gate>) -> Pending {
        self.unanswered.fetch_add(1, SeqCst);
        Pending(self.clone())
    }

    fn warn(&self, msg: std::fmt::Arguments) {
        lock(&self.log).warn(msg);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request counted in [`Gate::unanswered`].
struct Pending(Arc<Gate>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.unanswered.fetch_sub(1, SeqCst);
    }
}

/// Warnings that an abusive client could repeat thousands of times a second: one per period,
/// with the count of those left out.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn warn(&mut self, msg: std::fmt::Arguments) {
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log::warn!("{msg} (and {} similar in the last period)", self.suppressed);
        } else {
            log::warn!("{msg}");
        }
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// Serves the socket until the process ends, on the calling thread: never blocks on a client;
/// a connection is either taken in or answered "busy" at once.
pub fn accept_loop<M: From<RpcCall> + Send + 'static>(
    listener: UnixListener,
    tx: Sender<M>,
    gate: Arc<Gate>,
) {
    poll_loop::run(listener, tx, gate, MAX_CONNECTIONS);
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

fn encode(resp: &Response) -> Vec<u8> {
    serde_json::to_vec(resp).unwrap_or_else(|e| {
        format!(r#"{{"Err":{{"kind":"Internal","msg":"encode reply: {e}"}}}}"#).into_bytes()
    })
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "server_loop_tests.rs"]
mod loop_tests;
