//! The RPC socket: bind (mode 0600), accept, check the peer is root, hand requests to the loop.

use super::Msg;
use crate::rpc::{Request, Response};
use crate::{Error, Kind, Result, ResultExt};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{Mode, umask};
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

/// Requests are small; anything bigger is garbage or abuse.
const MAX_REQUEST: u64 = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket, refusing to steal it from a daemon that is still running.
pub fn bind(path: &Path) -> Result<UnixListener> {
    crate::config::create_parent_dir("socket_path", path)?;
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
                    "socket_path {} exists and is not a socket; refusing to replace it",
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

/// Accepts forever; each connection gets a short-lived thread so a slow client blocks nobody.
pub fn accept_loop(listener: UnixListener, tx: Sender<Msg>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let tx = tx.clone();
                let spawned = std::thread::Builder::new()
                    .name("rpc-conn".into())
                    .spawn(move || serve(stream, tx));
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

fn serve(mut stream: UnixStream, tx: Sender<Msg>) {
    let resp = match read_request(&mut stream) {
        Ok(req) => dispatch(req, &tx),
        Err(e) => Err(e),
    };
    let body = serde_json::to_vec(&resp).unwrap_or_else(|e| {
        format!(r#"{{"Err":{{"kind":"Internal","msg":"encode reply: {e}"}}}}"#).into_bytes()
    });
    if let Err(e) = stream.write_all(&body) {
        log::warn!("rpc: write reply: {e}");
    }
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

fn dispatch(req: Request, tx: &Sender<Msg>) -> Response {
    let (reply_tx, reply_rx) = mpsc::channel();
    let gone = || Error::new(Kind::TryAgain, "terway daemon is shutting down");
    tx.send(Msg::Rpc(req, reply_tx)).map_err(|_| gone())?;
    reply_rx.recv().map_err(|_| gone())?
}
