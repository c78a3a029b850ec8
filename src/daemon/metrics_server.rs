//! The metrics endpoint: HTTP on a unix socket (mode 0600, root only, like the RPC socket) and,
//! when `metrics_listen` is set, on TCP. `GET /metrics` only (see [`crate::metrics::http`]).
//! Each listener has a thread; each connection gets one of at most [`MAX_CONNECTIONS`] threads,
//! and one more is closed at once. Nothing here touches the daemon's state: the families are
//! atomics the loop and the cloud workers update.

use crate::config::Config;
use crate::metrics::{Metrics, http};
use crate::{Error, Kind, Result, ResultExt};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

/// Scrapes at once (Prometheus scrapes one at a time; operators now and then).
pub const MAX_CONNECTIONS: usize = 16;
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Binds the metrics socket (and the TCP listener when configured) and serves them from their
/// own threads. Returns the socket's path, for removal at exit.
pub fn start(config: &Config, metrics: Arc<Metrics>) -> Result<PathBuf> {
    let path = config.metrics_socket_path();
    let unix = super::server::bind_as("metrics_socket", &path)?;
    let tcp = match config.metrics_listen {
        None => None,
        Some(addr) => Some(TcpListener::bind(addr).map_err(|e| {
            Error::new(
                Kind::InvalidConfig,
                format!("metrics_listen {addr}: cannot listen: {e}"),
            )
        })?),
    };
    let active = Arc::new(AtomicUsize::new(0));
    {
        let (metrics, active) = (metrics.clone(), active.clone());
        std::thread::Builder::new()
            .name("metrics-unix".into())
            .stack_size(super::THREAD_STACK)
            .spawn(move || serve_unix(unix, &metrics, &active))
            .ctx("spawn the metrics socket's thread")?;
    }
    let shown = match &tcp {
        Some(l) => format!(
            " and http://{}/metrics",
            l.local_addr().map_or("?".into(), |a| a.to_string())
        ),
        None => String::new(),
    };
    if let Some(tcp) = tcp {
        std::thread::Builder::new()
            .name("metrics-tcp".into())
            .stack_size(super::THREAD_STACK)
            .spawn(move || serve_tcp(tcp, &metrics, &active))
            .ctx("spawn the metrics listener's thread")?;
    }
    log::info!("metrics on {}{shown}", path.display());
    Ok(path)
}

/// Runs `f` on a connection thread if one is free; otherwise the connection is closed.
fn with_slot(active: &Arc<AtomicUsize>, f: impl FnOnce() + Send + 'static) {
    if active.fetch_add(1, SeqCst) >= MAX_CONNECTIONS {
        active.fetch_sub(1, SeqCst);
        log::debug!("metrics: {MAX_CONNECTIONS} scrapes in progress, closing a connection");
        return;
    }
    let slot = active.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-conn".into())
        .stack_size(super::THREAD_STACK)
        .spawn(move || {
            f();
            slot.fetch_sub(1, SeqCst);
        });
    if spawned.is_err() {
        active.fetch_sub(1, SeqCst);
    }
}

fn serve_unix(listener: UnixListener, metrics: &Arc<Metrics>, active: &Arc<AtomicUsize>) {
    for conn in listener.incoming() {
        match conn {
            Ok(mut stream) => {
                let m = metrics.clone();
                with_slot(active, move || {
                    let allowed = root_peer(&stream);
                    http::answer(&mut stream, allowed, || m.encode());
                });
            }
            Err(e) => {
                log::debug!("metrics socket: accept: {e}");
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

fn serve_tcp(listener: TcpListener, metrics: &Arc<Metrics>, active: &Arc<AtomicUsize>) {
    for conn in listener.incoming() {
        match conn {
            Ok(mut stream) => {
                let m = metrics.clone();
                with_slot(active, move || {
                    http::answer(&mut stream, Ok(()), || m.encode())
                });
            }
            Err(e) => {
                log::debug!("metrics listener: accept: {e}");
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Only root reads the metrics socket (its mode already says so; the check holds if it is
/// loosened by hand).
fn root_peer(stream: &UnixStream) -> std::result::Result<(), &'static str> {
    match getsockopt(stream, PeerCredentials) {
        Ok(c) if c.uid() == 0 => Ok(()),
        _ => Err("only root may read the terway daemon's metrics"),
    }
}
