//! The datapath hint: a file beside the daemon's socket (`<socket>.datapath`) naming the datapath
//! new pods get (`veth`, `veth_policy`, `ipvlan`, `exclusive_eni`). The plugin reads it to build
//! a veth pair while the daemon allocates. It is only a hint: the allocation's own datapath is
//! what gets wired, and a missing, stale or garbled hint costs nothing but that overlap.

use crate::error::{Result, ResultExt};
use crate::model::Datapath;
use crate::store::open_regular;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Longer than any datapath name: a bigger file is not ours.
const MAX_HINT: u64 = 64;

pub fn path(socket: &Path) -> PathBuf {
    let mut p = OsString::from(socket.as_os_str());
    p.push(".datapath");
    PathBuf::from(p)
}

/// Publishes `datapath` (atomically: a reader sees the old hint or the new one).
pub fn write(socket: &Path, datapath: &str) -> Result<()> {
    let dst = path(socket);
    let mut tmp = OsString::from(dst.as_os_str());
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    // A leftover of a crash goes (unlinking never follows a link); then a new file only.
    let _ = std::fs::remove_file(&tmp);
    open_regular(
        OpenOptions::new().write(true).create_new(true).mode(0o644),
        &tmp,
    )
    .and_then(|mut f| f.write_all(format!("{datapath}\n").as_bytes()))
    .and_then(|()| std::fs::rename(&tmp, &dst))
    .inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
    .with_ctx(|| format!("write the datapath hint {}", dst.display()))
}

pub fn remove(socket: &Path) {
    let _ = std::fs::remove_file(path(socket));
}

/// The hinted datapath; `None` when there is no readable hint (never follows a link).
pub fn read(socket: &Path) -> Option<String> {
    let file = open_regular(OpenOptions::new().read(true), &path(socket)).ok()?;
    let mut text = String::new();
    file.take(MAX_HINT).read_to_string(&mut text).ok()?;
    Some(text.trim().to_string())
}

/// Whether the daemon's new pods get a veth pair (VPC mode, shared ENI with veth).
pub fn wants_veth(socket: &Path) -> bool {
    read(socket).is_some_and(|d| d == Datapath::VETH || d == Datapath::VETH_POLICY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of this test's own.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("terway-hint-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_hint_sits_beside_the_socket_and_round_trips() {
        let dir = scratch("round-trip");
        let socket = dir.join("terway.sock");
        assert_eq!(path(&socket), dir.join("terway.sock.datapath"));
        assert_eq!(read(&socket), None);
        assert!(!wants_veth(&socket));
        for (dp, veth) in [
            ("veth", true),
            ("veth_policy", true),
            ("ipvlan", false),
            ("exclusive_eni", false),
        ] {
            write(&socket, dp).unwrap();
            assert_eq!(read(&socket).as_deref(), Some(dp));
            assert_eq!(wants_veth(&socket), veth, "{dp}");
        }
        // Only the hint is left: no temporary file.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        remove(&socket);
        assert_eq!(read(&socket), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_garbage_and_directories_are_no_hint() {
        let dir = scratch("garbage");
        let socket = dir.join("t.sock");
        let target = dir.join("elsewhere");
        std::fs::write(&target, "veth\n").unwrap();
        std::os::unix::fs::symlink(&target, path(&socket)).unwrap();
        assert_eq!(read(&socket), None);
        std::fs::remove_file(path(&socket)).unwrap();
        std::fs::write(path(&socket), "veth".repeat(100)).unwrap();
        assert!(!wants_veth(&socket));
        std::fs::remove_file(path(&socket)).unwrap();
        std::fs::create_dir(path(&socket)).unwrap();
        assert_eq!(read(&socket), None);
        std::fs::remove_dir(path(&socket)).unwrap();
        // A link planted at the temporary name is replaced, never written through.
        let tmp = format!("{}.tmp.{}", path(&socket).display(), std::process::id());
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        write(&socket, "ipvlan").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "veth\n");
        assert_eq!(read(&socket).as_deref(), Some("ipvlan"));
        std::fs::remove_file(path(&socket)).unwrap();
        std::fs::create_dir(path(&socket)).unwrap();
        // Writing over a directory fails with the path in the message.
        let e = write(&socket, "veth").unwrap_err();
        assert!(e.msg.contains("t.sock.datapath"), "{}", e.msg);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
