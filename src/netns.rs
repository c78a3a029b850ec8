//! Network namespace handles. A [`NetNs`] is a validated, open namespace file; work inside it is
//! done on a short-lived thread that `setns`es, or (opening a socket) on the calling thread,
//! which returns to its own namespace right after: no thread ever stays in a foreign namespace.

use crate::err;
use crate::error::{Kind, Result};
use nix::sched::CloneFlags;
use nix::sys::statfs::{NSFS_MAGIC, PROC_SUPER_MAGIC, fstatfs};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `NS_GET_NSTYPE` from `<linux/nsfs.h>`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace file (`/proc/<pid>/ns/net`, `/var/run/netns/<name>`, ...).
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
}

impl NetNs {
    /// Opens `path` and checks it really is a network namespace.
    pub fn open(path: &Path) -> Result<NetNs> {
        let shown = path.display();
        // A path from the runtime: never open a FIFO (it blocks) or a device (opening one can
        // have effects). A namespace file is a regular (nsfs/proc) file.
        match std::fs::metadata(path) {
            Ok(m) if !m.file_type().is_file() => {
                return Err(err!(
                    Kind::Netns,
                    "{shown} is not a network namespace (not a regular nsfs or proc file)"
                ));
            }
            _ => {}
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => err!(Kind::Netns, "netns {shown} does not exist"),
                _ => err!(Kind::Netns, "open netns {shown}: {e}"),
            })?;
        let fs = fstatfs(&file).map_err(|e| err!(Kind::Netns, "statfs netns {shown}: {e}"))?;
        let fs_type = fs.filesystem_type();
        if fs_type != NSFS_MAGIC && fs_type != PROC_SUPER_MAGIC {
            return Err(err!(
                Kind::Netns,
                "{shown} is not a network namespace (not an nsfs or proc file)"
            ));
        }
        // nsfs also holds mount, pid, ... namespaces: ask the kernel which type this one is.
        // SAFETY: the fd is open for the duration of the call; the ioctl takes no argument.
        let ty = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if ty < 0 {
            let e = std::io::Error::last_os_error();
            return Err(err!(
                Kind::Netns,
                "{shown} is not a network namespace (NS_GET_NSTYPE: {e})"
            ));
        }
        if ty != libc::CLONE_NEWNET {
            return Err(err!(
                Kind::Netns,
                "{shown} is not a network namespace (it is a namespace of another type)"
            ));
        }
        Ok(NetNs {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The namespace of the calling thread (`/proc/thread-self/ns/net`).
    pub fn current() -> Result<NetNs> {
        NetNs::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's identity: device and inode of its nsfs file (equal for every path that
    /// refers to the same namespace).
    pub fn id(&self) -> Result<(u64, u64)> {
        let st = nix::sys::stat::fstat(&self.file)
            .map_err(|e| err!(Kind::Netns, "stat netns {}: {e}", self.path.display()))?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Whether this is the node's own namespace: the calling thread's, or that of PID 1 (when
    /// it can be seen). A pod's namespace is never either; wiring one as a pod would rewrite
    /// the node's own routes.
    pub fn is_node_namespace(&self) -> Result<bool> {
        let me = self.id()?;
        if NetNs::current()?.id()? == me {
            return Ok(true);
        }
        match NetNs::open(Path::new("/proc/1/ns/net")) {
            Ok(init) => Ok(init.id()? == me),
            // Another PID namespace or a restricted /proc: the check above still holds.
            Err(_) => Ok(false),
        }
    }

    /// The open namespace file, e.g. for `IFLA_NET_NS_FD`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` on the calling thread inside this namespace and returns the thread to its own
    /// namespace after it, also when `f` panics: for short work such as opening a socket (a
    /// socket stays in the namespace it was made in), where starting a thread costs more than
    /// the work itself.
    pub fn run_here<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let home = NetNs::current()?;
        nix::sched::setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            err!(
                Kind::Netns,
                "setns into {}: {}",
                self.path.display(),
                e.desc()
            )
        })?;
        let _back = ReturnHome(home);
        Ok(f())
    }

    /// Runs `f` on a fresh thread that has joined this namespace. The thread ends with `f`, so
    /// the namespace switch never leaks into other work.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let fd = self.file.as_fd();
        let path = &self.path;
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(s, move || {
                    nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        err!(Kind::Netns, "setns into {}: {}", path.display(), e.desc())
                    })?;
                    f()
                })
                .map_err(|e| err!(Kind::Internal, "spawn netns thread: {e}"))?;
            handle.join().map_err(|_| {
                err!(
                    Kind::Internal,
                    "thread working in netns {} panicked",
                    path.display()
                )
            })?
        })
    }
}

/// Returns the calling thread to the namespace it holds when dropped (see [`NetNs::run_here`]).
struct ReturnHome(NetNs);

impl Drop for ReturnHome {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(self.0.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Stranded in a pod's namespace, this thread would take the pod's objects for the
            // node's: nothing it could do next is safe.
            eprintln!(
                "terway: cannot return to network namespace {}: {}; aborting",
                self.0.path.display(),
                e.desc()
            );
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_is_named() {
        let e = NetNs::open(Path::new("/nonexistent/netns/x")).unwrap_err();
        assert_eq!(e.kind, Kind::Netns);
        assert!(e.msg.contains("/nonexistent/netns/x"), "{}", e.msg);
        assert!(e.msg.contains("does not exist"), "{}", e.msg);
    }

    #[test]
    fn regular_file_is_rejected() {
        let e = NetNs::open(Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(e.kind, Kind::Netns);
        assert!(e.msg.contains("is not a network namespace"), "{}", e.msg);
    }

    #[test]
    fn own_namespace_is_recognised_by_any_path() {
        for p in ["/proc/self/ns/net", "/proc/thread-self/ns/net"] {
            let ns = NetNs::open(Path::new(p)).unwrap();
            assert!(ns.is_node_namespace().unwrap(), "{p}");
        }
        let a = NetNs::open(Path::new("/proc/self/ns/net")).unwrap();
        let b = NetNs::current().unwrap();
        assert_eq!(a.id().unwrap(), b.id().unwrap());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("terway-netns-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = NetNs::open(&fifo).unwrap_err();
        assert!(e.msg.contains("not a network namespace"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn other_namespace_type_is_rejected() {
        let e = NetNs::open(Path::new("/proc/self/ns/uts")).unwrap_err();
        assert_eq!(e.kind, Kind::Netns);
        assert!(e.msg.contains("another type"), "{}", e.msg);
    }
}
