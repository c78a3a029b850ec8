//! One connection: its request being read, the call waiting for the daemon loop, its reply
//! being written, and what the peer still sends after a refusal. Every step is non-blocking; the
//! poll loop takes one when the socket is ready or the phase's deadline passed.

use super::{Pending, encode, too_large};
use crate::rpc::{MAX_REQUEST_BYTES, Response};
use crate::{Error, Kind};
use nix::poll::PollFlags;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// After refusing an oversized request, this much more is read and discarded while waiting for
/// the peer to finish sending; beyond it reading is shut down (the peer's send then fails).
const DRAIN_CAP: usize = 16 * MAX_REQUEST_BYTES;
/// Drained per turn of the poll loop.
const DRAIN_TURN: usize = MAX_REQUEST_BYTES;
/// What can still be queued once reading is shut down is bounded by the peer's send buffer;
/// this bounds the loop that discards it regardless.
const DISCARD_CAP: usize = 64 << 20;

pub(super) enum Phase {
    /// The request so far, until the peer's end of it.
    Reading(Vec<u8>),
    /// Handed to the daemon loop: nothing to read or write until its reply comes.
    Waiting { op: &'static str, started: Instant },
    /// The reply, `at` bytes of it taken by the peer.
    Writing {
        body: Vec<u8>,
        at: usize,
        deadline: Instant,
    },
    /// After a refusal: what the peer still sends is read and discarded, `read` bytes so far.
    Draining { read: usize },
}

/// Whether the connection stays open after a step; `Closed` ones are dropped by the loop.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Open,
    Closed,
}

/// What reading brought.
pub(super) enum Input {
    More,
    Request(Vec<u8>),
    /// Refused before its end; `unread`: the peer may still be sending.
    Refused {
        error: Error,
        unread: bool,
    },
}

pub(super) struct Conn {
    pub stream: UnixStream,
    pub accepted: Instant,
    pub phase: Phase,
    /// The request reached the daemon loop: counted until its reply is written.
    pending: Option<Pending>,
    /// After the reply, whether the peer may still be sending (a refusal before its end).
    drain: bool,
}

impl Conn {
    pub fn new(stream: UnixStream, accepted: Instant) -> Conn {
        Conn {
            stream,
            accepted,
            phase: Phase::Reading(Vec::new()),
            pending: None,
            drain: false,
        }
    }

    /// What to poll for; `None` while the daemon loop has the request.
    pub fn interest(&self) -> Option<PollFlags> {
        match self.phase {
            Phase::Reading(_) | Phase::Draining { .. } => Some(PollFlags::POLLIN),
            Phase::Writing { .. } => Some(PollFlags::POLLOUT),
            Phase::Waiting { .. } => None,
        }
    }

    /// When the current phase gives up. Reading and draining share one deadline from accept:
    /// the whole request within it, not each read.
    pub fn deadline(&self, limit: Duration) -> Option<Instant> {
        match self.phase {
            Phase::Reading(_) | Phase::Draining { .. } => Some(self.accepted + limit),
            Phase::Writing { deadline, .. } => Some(deadline),
            Phase::Waiting { .. } => None,
        }
    }

    /// Still reading its request: the one that waited longest is evicted when room is needed.
    pub fn is_reading(&self) -> bool {
        matches!(self.phase, Phase::Reading(_))
    }

    /// The request's op and when it was read, while the daemon loop has it.
    pub fn waiting(&self) -> Option<(&'static str, Instant)> {
        match self.phase {
            Phase::Waiting { op, started } => Some((op, started)),
            _ => None,
        }
    }

    /// Reads what the peer has sent, up to its end or the size limit.
    pub fn read(&mut self, chunk: &mut [u8]) -> Input {
        let Phase::Reading(buf) = &mut self.phase else {
            return Input::More;
        };
        loop {
            match (&self.stream).read(chunk) {
                Ok(0) => return Input::Request(std::mem::take(buf)),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > MAX_REQUEST_BYTES {
                        return Input::Refused {
                            error: too_large(buf.len()),
                            unread: true,
                        };
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Input::More,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Input::Refused {
                        error: Error::io("rpc: read request", e),
                        unread: false,
                    };
                }
            }
        }
    }

    /// The request went to the daemon loop; its reply comes through [`Conn::respond`].
    pub fn wait(&mut self, op: &'static str, started: Instant, pending: Pending) {
        self.phase = Phase::Waiting { op, started };
        self.pending = Some(pending);
    }

    /// Counts a request answered without the daemon loop (it is stopping) like one it answered.
    pub fn count(&mut self, pending: Pending) {
        self.pending = Some(pending);
    }

    /// Starts writing `resp`, which must be taken within `limit`. `drain`: the peer may still be
    /// sending, so what it sends is read until its end before the socket closes.
    pub fn respond(&mut self, resp: &Response, now: Instant, limit: Duration, drain: bool) -> Step {
        self.phase = Phase::Writing {
            body: encode(resp),
            at: 0,
            deadline: now + limit,
        };
        self.drain = drain;
        self.write()
    }

    /// Writes what the peer takes; once all of it is written, ends the connection or drains it.
    pub fn write(&mut self) -> Step {
        let Phase::Writing { body, at, .. } = &mut self.phase else {
            return Step::Open;
        };
        while *at < body.len() {
            match (&self.stream).write(&body[*at..]) {
                Ok(0) => return self.written(Err(ErrorKind::WriteZero.into())),
                Ok(n) => *at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Open,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.written(Err(e)),
            }
        }
        self.written(Ok(()))
    }

    /// The reply is written, or lost: warned about when the daemon loop answered it (the caller
    /// may be unsure what was done), not for refusals.
    fn written(&mut self, r: std::io::Result<()>) -> Step {
        if let Err(e) = r {
            if self.pending.is_some() {
                log::warn!("rpc: write reply: {e}");
            } else {
                log::debug!("rpc: write refusal: {e}");
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        self.pending = None;
        if !self.drain {
            return Step::Closed;
        }
        // The loop drains it (with its own buffer) when the peer's bytes are there.
        self.phase = Phase::Draining { read: 0 };
        Step::Open
    }

    /// After a refusal while the peer may still be sending: reads and discards up to its end
    /// (it then reads the reply as usual), bounded in time and bytes; then shuts reading down.
    pub fn drain_more(&mut self, chunk: &mut [u8], now: Instant, limit: Duration) -> Step {
        let Phase::Draining { read } = &mut self.phase else {
            return Step::Open;
        };
        if now >= self.accepted + limit {
            discard_queued(&self.stream);
            return Step::Closed;
        }
        // A peer sending as fast as it can gets a share of the loop, not all of it.
        let pause = *read + DRAIN_TURN;
        while *read < DRAIN_CAP {
            if *read >= pause {
                return Step::Open;
            }
            match (&self.stream).read(chunk) {
                Ok(0) => return Step::Closed,
                Ok(n) => *read += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Open,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Step::Closed,
            }
        }
        discard_queued(&self.stream);
        Step::Closed
    }

    /// The phase's deadline passed.
    pub fn expire(&mut self, now: Instant, limit: Duration) -> Step {
        match &self.phase {
            Phase::Reading(buf) => {
                let e = Error::new(
                    Kind::TryAgain,
                    format!(
                        "rpc: no complete request within {} ms ({} bytes received)",
                        limit.as_millis(),
                        buf.len()
                    ),
                );
                self.respond(&Err(e), now, limit, true)
            }
            Phase::Writing { .. } => self.written(Err(ErrorKind::TimedOut.into())),
            Phase::Draining { .. } => {
                discard_queued(&self.stream);
                Step::Closed
            }
            Phase::Waiting { .. } => Step::Open,
        }
    }
}

/// Answers at once and lets go: for a newcomer turned away or a reader evicted. Never blocks;
/// a refusal is small and the peer's receive queue holds nothing from us yet.
pub(super) fn shed(stream: &UnixStream, e: Error) {
    let _ = stream.set_nonblocking(true);
    discard_queued(stream);
    let _ = (&*stream).write_all(&encode(&Err(e)));
    let _ = stream.shutdown(Shutdown::Write);
}

/// Shuts reading down and throws away what is queued. The peer cannot queue more after the
/// shutdown (its sends fail with EPIPE), and with nothing unread the close is an orderly EOF,
/// not a reset that would destroy the reply in the peer's receive queue. Once reading is shut
/// down a read returns the end instead of blocking, so this never waits.
fn discard_queued(stream: &UnixStream) {
    let _ = stream.shutdown(Shutdown::Read);
    // (Usually little is queued: no heap buffer per turned-away caller.)
    let mut chunk = [0u8; 8 << 10];
    let mut total = 0;
    while total < DISCARD_CAP {
        match (&*stream).read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
