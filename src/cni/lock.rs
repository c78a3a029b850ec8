//! One plugin call at a time per attachment. ADD, DEL, CHECK and GC of the same (container id,
//! ifname) take an exclusive lock on `<daemon socket dir>/locks/<host veth name>.lock`, so a
//! runtime retrying ADD while the first one still runs, or a DEL racing an ADD, can never
//! interleave their kernel work, their rollback and their release. The lock is an `flock`: it
//! dies with the process, SIGKILL included, and lives on tmpfs (`/run`) so a reboot clears it.

use crate::{Error, Kind, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a waiting call tries again.
const POLL: Duration = Duration::from_millis(5);

/// Held for the duration of one plugin call on one attachment.
#[derive(Debug)]
pub struct AttachLock {
    file: File,
    path: PathBuf,
}

/// The lock directory for a daemon socket: per node, beside the socket.
pub fn lock_dir(daemon_socket: &Path) -> PathBuf {
    daemon_socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/run/terway"))
        .join("locks")
}

impl AttachLock {
    /// Waits up to `wait` for the lock of `name` (a host veth name: short, hex, safe as a file
    /// name). `Ok(None)`: another call held it all that time.
    pub fn acquire(dir: &Path, name: &str, wait: Duration) -> Result<Option<AttachLock>> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Error::new(
                Kind::Internal,
                format!("attachment lock name {name:?} is not alphanumeric"),
            ));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| lock_error(dir, "create", e))?;
        let path = dir.join(format!("{name}.lock"));
        let deadline = Instant::now() + wait;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| lock_error(&path, "open", e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    drop(file);
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(TryLockError::Error(e)) => return Err(lock_error(&path, "lock", e)),
            }
            // The holder before us may have removed the file after its DEL: a lock on an
            // unlinked inode excludes nobody, so take the one at the path now.
            if same_file(&file, &path) {
                return Ok(Some(AttachLock { file, path }));
            }
        }
    }

    /// Removes the lock file while still holding it (the attachment is gone after DEL or GC).
    /// A call waiting on the old file notices and locks a new one.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn lock_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::new(
        Kind::Io,
        format!("{what} attachment lock {}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("terway-lock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn one_holder_at_a_time_and_removal_is_safe() {
        let d = tmpdir("one");
        let a = AttachLock::acquire(&d, "tw0123", Duration::ZERO)
            .unwrap()
            .unwrap();
        assert!(
            AttachLock::acquire(&d, "tw0123", Duration::from_millis(20))
                .unwrap()
                .is_none()
        );
        assert!(
            AttachLock::acquire(&d, "tw4567", Duration::ZERO)
                .unwrap()
                .is_some(),
            "other attachments are independent"
        );
        // A waiter blocked on the old file gets a fresh lock once the holder removes it.
        let dir = d.clone();
        let waiter = std::thread::spawn(move || {
            AttachLock::acquire(&dir, "tw0123", Duration::from_secs(5))
                .unwrap()
                .is_some()
        });
        std::thread::sleep(Duration::from_millis(30));
        a.remove();
        assert!(waiter.join().unwrap());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn odd_names_are_refused() {
        let d = tmpdir("odd");
        for bad in ["", "../x", "a/b", "tw.lock"] {
            assert!(
                AttachLock::acquire(&d, bad, Duration::ZERO).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn lock_dir_is_beside_the_socket() {
        assert_eq!(
            lock_dir(Path::new("/run/terway/terway.sock")),
            Path::new("/run/terway/locks")
        );
        assert_eq!(
            lock_dir(Path::new("terway.sock")),
            Path::new("/run/terway/locks")
        );
    }
}
