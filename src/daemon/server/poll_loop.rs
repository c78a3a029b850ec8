//! The one thread that serves every RPC connection: poll(2) over the listener, the wake-up end of
//! the reply queue and each connection that can make progress; timers are the connections'
//! deadlines (the poll timeout is the nearest one).

use super::conn::{Conn, Input, Phase, Step, shed};
use super::{Gate, Hub, Responder, RpcCall, Target, busy, check_peer, decode_request};
use crate::{Error, Kind};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Connections accepted per wake-up, so that a flood of them cannot starve replies.
const ACCEPT_BATCH: usize = 64;
/// How often connections beyond what one poll may watch are tried (see `Loop::wait`).
const OVERFLOW_TICK: Duration = Duration::from_millis(20);

/// Serves `listener` with at most `cap` connections, forever.
pub(super) fn run<M: From<RpcCall>>(
    listener: UnixListener,
    tx: Sender<M>,
    gate: Arc<Gate>,
    cap: usize,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        // Accepting would then block the loop on an empty backlog: no way to serve.
        log::error!(
            "rpc: cannot make the listener non-blocking: {e}; the RPC socket is not served"
        );
        return;
    }
    let (hub, woken) = loop {
        match Hub::new() {
            Ok(pair) => break pair,
            Err(e) => {
                gate.warn(format_args!("rpc: cannot create the reply queue: {e}"));
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    };
    let _closed = Closed(hub.clone());
    Loop {
        listener,
        tx,
        gate,
        hub,
        woken,
        cap,
        conns: HashMap::new(),
        next_id: 0,
        spare: std::fs::File::open("/dev/null").ok(),
        accept_after: None,
        chunk: vec![0u8; 64 << 10],
    }
    .run()
}

/// However the loop ends (a panic is a bug), replies sent afterwards fail instead of vanishing.
struct Closed(Arc<Hub>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.closed.store(true, SeqCst);
    }
}

struct Loop<M> {
    listener: UnixListener,
    tx: Sender<M>,
    gate: Arc<Gate>,
    hub: Arc<Hub>,
    woken: UnixStream,
    cap: usize,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    /// A spare descriptor: when the process is out of them, it is given up to accept and answer
    /// the next caller instead of leaving it in the backlog until some connection ends.
    spare: Option<std::fs::File>,
    /// The listener is left out of the poll set until then (accept failed; never spin on it).
    accept_after: Option<Instant>,
    chunk: Vec<u8>,
}

impl<M: From<RpcCall>> Loop<M> {
    fn run(mut self) {
        let mut ready = Vec::new();
        loop {
            let Some((woke, accept)) = self.wait(&mut ready) else {
                continue;
            };
            if woke {
                self.deliver();
            }
            for id in ready.drain(..) {
                self.progress(id);
            }
            self.expire(Instant::now());
            if accept {
                self.accept();
            }
        }
    }

    /// Waits for the next event or deadline. Fills `ready` with the connections to try and
    /// returns whether replies came and whether callers wait in the backlog; `None` when the
    /// wait failed and is to be repeated.
    fn wait(&mut self, ready: &mut Vec<u64>) -> Option<(bool, bool)> {
        let now = Instant::now();
        if self.accept_after.is_some_and(|t| now >= t) {
            self.accept_after = None;
        }
        let listen = self.accept_after.is_none();
        let limit = self.gate.deadline;
        let mut wake_at = self.accept_after;
        // The most descriptors one poll may watch: poll refuses more than the soft
        // RLIMIT_NOFILE (EINVAL), and the limit can be lowered under a running daemon below what
        // it has open. Connections beyond it are tried every OVERFLOW_TICK instead of polled.
        let poll_max = fd_limit();
        let mut fds = Vec::with_capacity(self.conns.len() + 2);
        let mut ids = Vec::with_capacity(self.conns.len());
        let mut overflow = Vec::new();
        fds.push(PollFd::new(self.woken.as_fd(), PollFlags::POLLIN));
        if listen {
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        }
        for (id, c) in &self.conns {
            if let Some(d) = c.deadline(limit) {
                wake_at = Some(wake_at.map_or(d, |w| w.min(d)));
            }
            if let Some(ev) = c.interest() {
                if fds.len() < poll_max {
                    fds.push(PollFd::new(c.stream.as_fd(), ev));
                    ids.push(*id);
                } else {
                    overflow.push(*id);
                }
            }
        }
        if !overflow.is_empty() {
            self.gate.warn(format_args!(
                "rpc: {} connections beyond what one poll may watch (RLIMIT_NOFILE {poll_max}); trying them every {} ms",
                overflow.len(),
                OVERFLOW_TICK.as_millis()
            ));
            let tick = now + OVERFLOW_TICK;
            wake_at = Some(wake_at.map_or(tick, |w| w.min(tick)));
        }
        match poll(&mut fds, timeout(wake_at, now)) {
            Ok(_) => {}
            Err(Errno::EINTR) => return None,
            Err(e) => {
                self.gate.warn(format_args!("rpc: poll: {e}"));
                std::thread::sleep(ACCEPT_BACKOFF);
                return None;
            }
        }
        // Any event counts, errors and hang-ups included: the phase's own read or write then
        // sees what happened.
        let hit = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let first = if listen { 2 } else { 1 };
        ready.extend(
            ids.iter()
                .zip(&fds[first..])
                .filter(|(_, f)| hit(f))
                .map(|(id, _)| *id),
        );
        // Not polled: their operations do not block, a try finds nothing to do or progresses.
        ready.append(&mut overflow);
        Some((hit(&fds[0]), listen && hit(&fds[1])))
    }

    /// Writes the replies the daemon loop sent.
    fn deliver(&mut self) {
        // The wake-up pair first, then the queue (see `Hub::push`).
        let mut buf = [0u8; 256];
        while matches!((&self.woken).read(&mut buf), Ok(n) if n > 0) {}
        let limit = self.gate.deadline;
        for (id, resp) in self.hub.take() {
            // Always there: a connection waiting for its reply has no deadline and no events.
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let Some((op, started)) = c.waiting() else {
                continue;
            };
            let resp = resp.unwrap_or_else(|| Err(dropped(&self.gate, op)));
            crate::metrics::global().rpc(
                op,
                resp.as_ref().err().map(|e| e.kind),
                started.elapsed(),
            );
            if c.respond(&resp, Instant::now(), limit, false) == Step::Closed {
                self.conns.remove(&id);
            }
        }
    }

    /// The connection's socket is ready for its phase.
    fn progress(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let (now, limit) = (Instant::now(), self.gate.deadline);
        let step = match c.phase {
            Phase::Reading(_) => match c.read(&mut self.chunk) {
                Input::More => Step::Open,
                Input::Request(buf) => request(&self.gate, &self.hub, &self.tx, id, c, &buf, now),
                Input::Refused { error, unread } => c.respond(&Err(error), now, limit, unread),
            },
            Phase::Writing { .. } => c.write(),
            Phase::Draining { .. } => c.drain_more(&mut self.chunk, now, limit),
            Phase::Waiting { .. } => Step::Open,
        };
        if step == Step::Closed {
            self.conns.remove(&id);
        }
    }

    /// Connections whose phase ran out of time.
    fn expire(&mut self, now: Instant) {
        let limit = self.gate.deadline;
        let due: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline(limit).is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(c) = self.conns.get_mut(&id)
                && c.expire(now, limit) == Step::Closed
            {
                self.conns.remove(&id);
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if self.evict_oldest() {
                        continue;
                    }
                    let open = self.conns.len();
                    self.gate.warn(format_args!(
                        "rpc: accept: {e} ({open} connections open): answering callers busy"
                    ));
                    let Some(spare) = self.spare.take() else {
                        self.spare = std::fs::File::open("/dev/null").ok();
                        self.accept_after = Some(Instant::now() + ACCEPT_BACKOFF);
                        return;
                    };
                    drop(spare);
                    if let Ok((stream, _)) = self.listener.accept() {
                        shed(
                            &stream,
                            busy(format_args!(
                                "out of file descriptors with {open} requests in progress"
                            )),
                        );
                    }
                    self.spare = std::fs::File::open("/dev/null").ok();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    self.gate.warn(format_args!("rpc: accept: {e}"));
                    self.accept_after = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Takes a connection in, evicting the oldest idle reader when all places are taken.
    fn admit(&mut self, stream: UnixStream) {
        if let Err(e) = stream.set_nonblocking(true) {
            self.gate
                .warn(format_args!("rpc: accepted connection: {e}"));
            return;
        }
        if self.conns.len() >= self.cap && !self.evict_oldest() {
            let e = busy(format_args!("{} requests in progress", self.conns.len()));
            self.gate.warn(format_args!("rpc: {e}"));
            shed(&stream, e);
            return;
        }
        self.next_id += 1;
        self.conns
            .insert(self.next_id, Conn::new(stream, Instant::now()));
    }

    /// Drops the connection that has waited longest for its request, with a "busy" reply.
    /// False when no connection is still reading.
    fn evict_oldest(&mut self) -> bool {
        let Some(id) = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_reading())
            .min_by_key(|(_, c)| c.accepted)
            .map(|(id, _)| *id)
        else {
            return false;
        };
        let Some(c) = self.conns.remove(&id) else {
            return false;
        };
        shed(
            &c.stream,
            busy(
                "out of connection slots or file descriptors, and this connection had not sent a complete request",
            ),
        );
        self.gate.warn(format_args!(
            "rpc: out of connection slots ({}) or file descriptors: dropped a connection that sent no complete request in {} ms",
            self.cap,
            c.accepted.elapsed().as_millis()
        ));
        true
    }
}

/// A complete request: checked, decoded and handed to the daemon loop, or refused.
fn request<M: From<RpcCall>>(
    gate: &Arc<Gate>,
    hub: &Arc<Hub>,
    tx: &Sender<M>,
    id: u64,
    c: &mut Conn,
    buf: &[u8],
    now: Instant,
) -> Step {
    let req = match check_peer(&c.stream).and_then(|()| decode_request(buf)) {
        Ok(req) => req,
        Err(e) => return c.respond(&Err(e), now, gate.deadline, false),
    };
    let op = req.op();
    // Counted before the check: the daemon loop, which stops first and then waits for the
    // count to drop, either sees this request or this sees it stop.
    let pending = gate.count();
    if let Some(e) = gate.stopping() {
        crate::metrics::global().rpc(op, Some(e.kind), now.elapsed());
        c.count(pending);
        return c.respond(&Err(e), now, gate.deadline, false);
    }
    c.wait(op, now, pending);
    let reply = Responder {
        to: Some(Target::Conn {
            hub: hub.clone(),
            id,
        }),
    };
    // When the daemon loop is gone the call comes back and its responder, dropped unsent,
    // queues the error reply.
    let _ = tx.send(M::from(RpcCall { req, reply }));
    Step::Open
}

/// The answer to a request whose responder was dropped unsent.
fn dropped(gate: &Gate, op: &str) -> Error {
    gate.stopping().unwrap_or_else(|| {
        log::warn!("rpc: the daemon loop dropped a {op} request without answering it");
        Error::new(
            Kind::TryAgain,
            "terway daemon dropped the request without answering (is it shutting down?); try again",
        )
    })
}

/// The soft RLIMIT_NOFILE: no more descriptors than that can be open or polled at once.
fn fd_limit() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => usize::try_from(soft).unwrap_or(usize::MAX).max(2),
        Err(_) => usize::MAX,
    }
}

/// Milliseconds until `at`, rounded up so that the loop does not wake just before it.
fn timeout(at: Option<Instant>, now: Instant) -> PollTimeout {
    let Some(at) = at else {
        return PollTimeout::NONE;
    };
    let ms = at.saturating_duration_since(now).as_micros().div_ceil(1000);
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}
