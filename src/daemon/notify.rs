//! systemd readiness (`Type=notify`): the daemon tells the service manager on `$NOTIFY_SOCKET`
//! when it is ready (after its first reconcile with the cloud and with its socket bound), what
//! it holds (a STATUS line), and when it is stopping. Without `$NOTIFY_SOCKET` (not under
//! systemd) nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    last_status: String,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`: a path, or `@name` for an abstract socket.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|v| {
            let v = v.to_string_lossy().into_owned();
            let addr = match v.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name.as_bytes())
                }
                None => SocketAddr::from_pathname(&v),
            };
            match (addr, UnixDatagram::unbound()) {
                (Ok(a), Ok(s)) => Some((s, a)),
                (Err(e), _) | (_, Err(e)) => {
                    log::warn!("NOTIFY_SOCKET {v}: {e}; systemd will not hear from the daemon");
                    None
                }
            }
        });
        Notifier {
            target,
            last_status: String::new(),
        }
    }

    fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(msg.as_bytes(), addr)
        {
            log::warn!("notify systemd: {e}");
        }
    }

    /// Serving: the first reconcile is done and the RPC socket is bound.
    pub fn ready(&mut self, status: String) {
        self.send(&format!("READY=1\nSTATUS={status}"));
        self.last_status = status;
    }

    /// What the daemon holds now; sent only when it changed.
    pub fn status(&mut self, status: String) {
        if status != self.last_status {
            self.send(&format!("STATUS={status}"));
            self.last_status = status;
        }
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket_and_unchanged_status_is_not_repeated() {
        let dir = std::env::temp_dir().join(format!("terway-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
            last_status: String::new(),
        };
        let mut buf = [0u8; 256];
        let mut recv = || {
            let len = listener.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..len]).into_owned()
        };
        n.ready("1 pod, 2 idle".into());
        assert_eq!(recv(), "READY=1\nSTATUS=1 pod, 2 idle");
        n.status("1 pod, 2 idle".into());
        n.status("2 pods, 1 idle".into());
        assert_eq!(
            recv(),
            "STATUS=2 pods, 1 idle",
            "the unchanged one was not sent"
        );
        n.stopping();
        assert_eq!(recv(), "STOPPING=1");
        let _ = std::fs::remove_dir_all(dir);
    }
}
