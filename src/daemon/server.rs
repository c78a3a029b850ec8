//! The RPC socket: bind (mode 0600), accept, check the peer is root, hand requests to the loop.
//!
//! Each connection gets a thread, within bounds a misbehaving client cannot stretch:
//! - the whole request must arrive within one deadline (not per read), and at most
//!   [`MAX_REQUEST_BYTES`] of it;
//! - at most [`MAX_CONNECTIONS`] threads; when they are all taken, the connection that has waited
//!   longest without delivering a request is dropped (with a "busy" reply) to make room, and when
//!   every thread is busy with real work the newcomer gets the "busy" reply instead;
//! - running out of file descriptors is handled the same way, never by spinning on `accept`;
//! - every refusal is a JSON reply the peer can read: what it still sends is drained (bounded)
//!   or refused by shutting down reading, because closing a unix socket with unread data resets
//!   the peer's connection and the reply would be lost.
//!
//! The [`Gate`] is shared with the loop: once it stops, no request is answered with success, and
//! the loop waits (bounded) until every reply it handed out has been written.

use crate::rpc::{MAX_REQUEST_BYTES, Request, Response};
use crate::{Error, Kind, Result, ResultExt};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{Mode, umask};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Connection threads at once. A node runs at most a few hundred pods and the runtime calls in
/// a handful at a time, but a cold node's burst parks an ADD per pod (each holding its thread)
/// until the pool grows: room for a few hundred of those.
pub const MAX_CONNECTIONS: usize = 256;
/// The whole request must arrive within this, and the reply must be taken within it again.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// Overrides [`DEFAULT_DEADLINE`] (milliseconds), read once at start; meant for tests.
const DEADLINE_ENV: &str = "TERWAY_RPC_DEADLINE_MS";
/// After refusing an oversized request, this much more is read and discarded while waiting for
/// the peer to finish sending; beyond it reading is shut down (the peer's send then fails).
const DRAIN_CAP: usize = 16 * MAX_REQUEST_BYTES;
/// What can still be queued once reading is shut down is bounded by the peer's send buffer;
/// this bounds the loop that discards it regardless.
const DISCARD_CAP: usize = 64 << 20;
/// How long to wait for an evicted connection's thread to let go of its descriptor.
const EVICT_SETTLE: Duration = Duration::from_millis(20);
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
const LOG_EVERY: Duration = Duration::from_secs(10);
/// A connection thread reads one request into the heap, decodes it and waits: a small stack
/// (the default 2 MiB costs address space, and what a thread touched stays resident while glibc
/// caches the stack for the next thread).
const CONN_STACK: usize = 128 << 10;

/// A request as the loop receives it, with where its reply goes.
pub struct RpcCall {
    pub req: Request,
    pub reply: Sender<Response>,
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

/// One accepted connection. The registry of connections still reading shares it with the
/// connection's thread, so the acceptor can shut down its reading side to evict it; the socket
/// closes when the thread is done with it.
struct Conn {
    stream: UnixStream,
    accepted: Instant,
    evicted: AtomicBool,
}

/// What the acceptor, the connection threads and the loop share.
pub struct Gate {
    deadline: Duration,
    /// Set once, by the loop, when it stops: no request is answered with success after it.
    stopping: AtomicBool,
    stop_reason: Mutex<String>,
    /// Connection threads alive (only the acceptor adds, threads subtract).
    active: AtomicUsize,
    /// Requests handed to the loop whose reply has not been written yet.
    unanswered: AtomicUsize,
    /// Connections still reading their request: the eviction candidates.
    readers: Mutex<Vec<Arc<Conn>>>,
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
            active: AtomicUsize::new(0),
            unanswered: AtomicUsize::new(0),
            readers: Mutex::new(Vec::new()),
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

    /// Takes a thread slot for `conn`, evicting the oldest idle reader when all are taken.
    fn admit(&self, conn: &Arc<Conn>) -> Result<()> {
        let active = self.active.load(SeqCst);
        // Evicted threads finish within moments; twice the limit bounds them regardless.
        if active >= MAX_CONNECTIONS && (active >= 2 * MAX_CONNECTIONS || !self.evict_oldest()) {
            return Err(busy(format_args!("{active} requests in progress")));
        }
        self.active.fetch_add(1, SeqCst);
        lock(&self.readers).push(conn.clone());
        Ok(())
    }

    /// Shuts down the reading side of the connection that has waited longest for its request;
    /// its thread then answers "busy" and lets go. False when no connection is still reading.
    fn evict_oldest(&self) -> bool {
        let readers = lock(&self.readers);
        let Some(c) = readers
            .iter()
            .filter(|c| !c.evicted.load(SeqCst))
            .min_by_key(|c| c.accepted)
        else {
            return false;
        };
        c.evicted.store(true, SeqCst);
        let _ = c.stream.shutdown(Shutdown::Read);
        let waited = c.accepted.elapsed().as_millis();
        drop(readers);
        self.warn(format_args!(
            "rpc: out of connection slots ({MAX_CONNECTIONS}) or file descriptors: dropped a connection that sent no complete request in {waited} ms"
        ));
        true
    }

    fn done_reading(&self, conn: &Arc<Conn>) {
        lock(&self.readers).retain(|c| !Arc::ptr_eq(c, conn));
    }

    fn warn(&self, msg: std::fmt::Arguments) {
        lock(&self.log).warn(msg);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection thread's hold on the gate: released however the thread ends (panics included),
/// after the socket is closed, so the acceptor may count on the descriptor being free.
struct Slot {
    gate: Arc<Gate>,
    conn: Option<Arc<Conn>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.gate.done_reading(&c);
        }
        self.gate.active.fetch_sub(1, SeqCst);
    }
}

/// Counts a request handed to the loop until its reply is written.
struct Pending<'a>(&'a Gate);

impl Drop for Pending<'_> {
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

/// Accepts until the process ends. Never blocks on a client: a connection either gets a thread
/// or an immediate "busy" reply.
pub fn accept_loop<M: From<RpcCall> + Send + 'static>(
    listener: UnixListener,
    tx: Sender<M>,
    gate: Arc<Gate>,
) {
    // A spare descriptor: when the process is out of them, it is given up to accept and answer
    // the next caller instead of leaving it in the backlog until some connection ends.
    let mut spare = std::fs::File::open("/dev/null").ok();
    loop {
        match listener.accept() {
            Ok((stream, _)) => start(&gate, stream, &tx),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                let active = gate.active.load(SeqCst);
                if gate.evict_oldest() {
                    let settle = Instant::now() + EVICT_SETTLE;
                    while gate.active.load(SeqCst) >= active && Instant::now() < settle {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    continue;
                }
                gate.warn(format_args!(
                    "rpc: accept: {e} ({active} connections open): answering callers busy"
                ));
                match spare.take() {
                    Some(f) => {
                        drop(f);
                        if let Ok((stream, _)) = listener.accept() {
                            shed(
                                &stream,
                                busy(format_args!(
                                    "out of file descriptors with {active} requests in progress"
                                )),
                            );
                        }
                    }
                    None => std::thread::sleep(ACCEPT_BACKOFF),
                }
                spare = std::fs::File::open("/dev/null").ok();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                gate.warn(format_args!("rpc: accept: {e}"));
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

fn start<M: From<RpcCall> + Send + 'static>(gate: &Arc<Gate>, stream: UnixStream, tx: &Sender<M>) {
    let conn = Arc::new(Conn {
        stream,
        accepted: Instant::now(),
        evicted: AtomicBool::new(false),
    });
    if let Err(e) = gate.admit(&conn) {
        gate.warn(format_args!("rpc: {e}"));
        shed(&conn.stream, e);
        return;
    }
    let slot = Slot {
        gate: gate.clone(),
        conn: Some(conn.clone()),
    };
    let tx = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("rpc-conn".into())
        .stack_size(CONN_STACK)
        .spawn(move || serve(slot, tx));
    // On failure the closure, and the slot in it, is already dropped.
    if let Err(e) = spawned {
        gate.warn(format_args!("rpc: cannot start a connection thread: {e}"));
        shed(
            &conn.stream,
            busy(format_args!("cannot start a connection thread: {e}")),
        );
    }
}

/// Answers without a thread and without ever blocking the acceptor.
fn shed(stream: &UnixStream, e: Error) {
    let _ = stream.set_nonblocking(true);
    discard_queued(stream);
    let _ = (&*stream).write_all(&encode(&Err(e)));
    let _ = stream.shutdown(Shutdown::Write);
}

/// Why a request was not read, and whether the peer may still be sending.
struct Refusal {
    error: Error,
    unread: bool,
}

fn serve<M: From<RpcCall>>(slot: Slot, tx: Sender<M>) {
    let (gate, conn) = (&*slot.gate, slot.conn.clone().expect("a fresh slot"));
    let stream = &conn.stream;
    let deadline = conn.accepted + gate.deadline;
    let read = read_request(stream, conn.accepted, gate.deadline, &conn.evicted);
    gate.done_reading(&conn);
    let mut pending = None;
    let (resp, unread) = match read {
        Err(r) => (Err(r.error), r.unread),
        Ok(buf) => {
            let started = Instant::now();
            let mut op = None;
            let resp = check_peer(stream)
                .and_then(|()| decode_request(&buf))
                .and_then(|req| {
                    op = Some(req.op());
                    // Counted before the check: the loop, which stops first and then waits for
                    // the count to drop, either sees this request or this thread sees it stop.
                    gate.unanswered.fetch_add(1, SeqCst);
                    pending = Some(Pending(gate));
                    match gate.stopping() {
                        Some(e) => Err(e),
                        None => dispatch(req, &tx, gate),
                    }
                });
            if let Some(op) = op {
                let failed = resp.as_ref().err().map(|e| e.kind);
                crate::metrics::global().rpc(op, failed, started.elapsed());
            }
            (resp, false)
        }
    };
    write_reply(
        stream,
        &resp,
        Instant::now() + gate.deadline,
        pending.is_some(),
    );
    let _ = stream.shutdown(Shutdown::Write);
    drop(pending);
    if unread {
        drain(stream, deadline);
    }
    drop(conn);
    drop(slot);
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

/// Reads up to the peer's end of the request, within the deadline and the size limit.
fn read_request(
    stream: &UnixStream,
    since: Instant,
    limit: Duration,
    evicted: &AtomicBool,
) -> std::result::Result<Vec<u8>, Refusal> {
    let deadline = since + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refusal {
                error: Error::new(
                    Kind::TryAgain,
                    format!(
                        "rpc: no complete request within {} ms ({} bytes received)",
                        limit.as_millis(),
                        buf.len()
                    ),
                ),
                unread: true,
            });
        }
        let _ = stream.set_read_timeout(Some(left));
        match (&*stream).read(&mut chunk) {
            Ok(0) if evicted.load(SeqCst) => {
                return Err(Refusal {
                    error: busy(
                        "out of connection slots or file descriptors, and this connection had not sent a complete request",
                    ),
                    unread: false,
                });
            }
            Ok(0) => return Ok(buf),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_REQUEST_BYTES {
                    return Err(Refusal {
                        error: too_large(buf.len()),
                        unread: true,
                    });
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                return Err(Refusal {
                    error: Error::io("rpc: read request", e),
                    unread: false,
                });
            }
        }
    }
}

fn dispatch<M: From<RpcCall>>(req: Request, tx: &Sender<M>, gate: &Gate) -> Response {
    let (reply_tx, reply_rx) = mpsc::channel();
    let gone = || {
        gate.stopping()
            .unwrap_or_else(|| Error::new(Kind::TryAgain, "terway daemon is shutting down"))
    };
    tx.send(M::from(RpcCall {
        req,
        reply: reply_tx,
    }))
    .map_err(|_| gone())?;
    reply_rx.recv().map_err(|_| gone())?
}

fn encode(resp: &Response) -> Vec<u8> {
    serde_json::to_vec(resp).unwrap_or_else(|e| {
        format!(r#"{{"Err":{{"kind":"Internal","msg":"encode reply: {e}"}}}}"#).into_bytes()
    })
}

/// Writes the reply within the deadline; a peer that does not take it loses it. `loud` when
/// the loop answered it (a lost reply may leave the caller unsure what was done).
fn write_reply(stream: &UnixStream, resp: &Response, deadline: Instant, loud: bool) {
    let body = encode(resp);
    let mut rest = &body[..];
    while !rest.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = if left.is_zero() {
            std::io::Error::from(ErrorKind::TimedOut)
        } else {
            let _ = stream.set_write_timeout(Some(left));
            match (&*stream).write(rest) {
                Ok(0) => std::io::Error::from(ErrorKind::WriteZero),
                Ok(n) => {
                    rest = &rest[n..];
                    continue;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => e,
            }
        };
        if loud {
            log::warn!("rpc: write reply: {e}");
        } else {
            log::debug!("rpc: write refusal: {e}");
        }
        return;
    }
}

/// After a refusal while the peer may still be sending: read and discard until its end (it then
/// reads the reply as usual), bounded in time and bytes; then shut reading down.
fn drain(stream: &UnixStream, deadline: Instant) {
    let mut chunk = vec![0u8; 64 << 10]; // on the heap: the stack is small
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
    let mut chunk = vec![0u8; 64 << 10]; // on the heap: the stack is small
    let mut total = 0;
    while total < DISCARD_CAP {
        match (&*stream).read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
