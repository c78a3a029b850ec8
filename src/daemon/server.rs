//! The RPC socket: bind (mode 0600), accept, check the peer is root, hand requests to the loop.
//!
//! The [`Gate`] is shared with the loop: once it stops, no request is answered with success, and
//! the loop waits (bounded) until every reply it handed out has been written.

use super::Msg;
use crate::rpc::{Request, Response};
use crate::{Error, Kind, Result, ResultExt};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{Mode, umask};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Requests are small; anything bigger is garbage or abuse.
const MAX_REQUEST: u64 = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

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

fn serve(mut stream: UnixStream, tx: Sender<Msg>, gate: &Gate) {
    let mut pending = None;
    let resp = read_request(&mut stream).and_then(|req| {
        // Counted before the check: the loop, which stops first and then waits for the count
        // to drop, either sees this request or this thread sees it stop.
        gate.unanswered.fetch_add(1, SeqCst);
        pending = Some(Pending(gate));
        match gate.stopping() {
            Some(e) => Err(e),
            None => dispatch(req, &tx, gate),
        }
    });
    let body = serde_json::to_vec(&resp).unwrap_or_else(|e| {
        format!(r#"{{"Err":{{"kind":"Internal","msg":"encode reply: {e}"}}}}"#).into_bytes()
    });
    if let Err(e) = stream.write_all(&body) {
        log::warn!("rpc: write reply: {e}");
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    drop(pending);
}

fn read_request(stream: &mut UnixStream) -> Result<Request> {
    let cred = getsockopt(&*stream, PeerCredentials).ctx("rpc: read peer credentials")?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    // Read the whole request even from a refused peer: closing with unread data would reset
    // the connection and the caller would never see why it was refused.
    let mut buf = Vec::new();
    stream
        .take(MAX_REQUEST + 1)
        .read_to_end(&mut buf)
        .ctx("rpc: read request")?;
    if cred.uid() != 0 {
        log::warn!(
            "rpc: refused a request from uid {} (pid {})",
            cred.uid(),
            cred.pid()
        );
        return Err(Error::new(
            Kind::Permission,
            format!(
                "permission denied: only root may talk to the terway daemon (caller uid {})",
                cred.uid()
            ),
        ));
    }
    if buf.len() as u64 > MAX_REQUEST {
        return Err(Error::new(
            Kind::Decode,
            format!("rpc: request larger than {MAX_REQUEST} bytes"),
        ));
    }
    serde_json::from_slice(&buf)
        .map_err(|e| Error::new(Kind::Decode, format!("rpc: malformed request: {e}")))
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
