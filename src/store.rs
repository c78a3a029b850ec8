//! The daemon's state file: every allocation is on disk before the reply that hands it out.
//!
//! Saves are atomic (temp file, fsync, rename, fsync of the directory) and keep the previous
//! good copy beside the file as `<name>.prev`, so a file damaged by hand or by a disk fault never
//! costs the allocations: the daemon refuses to start and says where the last good copy is.

use crate::rpc::{AttachKey, PodRef};
use crate::{Error, Kind, Result, ResultExt};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub const SCHEMA: u32 = 1;
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAllocation {
    pub key: AttachKey,
    pub network: String,
    pub pod: PodRef,
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub created_unix: u64,
}

/// Pool bookkeeping of VPC mode: the CIDR and where the round-robin cursor stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpcPoolState {
    pub pod_cidr: ipnetwork::Ipv4Network,
    pub cursor: Option<Ipv4Addr>,
}

/// Shared ENI mode: the pool and the node facts worth caching across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniPoolState {
    pub instance_id: String,
    pub instance_type: String,
    /// DescribeInstanceTypes answer for `instance_type` (it never changes for an instance).
    pub limits: Option<InstanceLimits>,
    pub pool: crate::pool::eni::PoolState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLimits {
    pub eni_quantity: u32,
    pub eni_private_ip_quantity: u32,
    pub eni_total_quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub schema: u32,
    pub boot_id: String,
    #[serde(default)]
    pub allocations: Vec<StoredAllocation>,
    #[serde(default)]
    pub vpc: Option<VpcPoolState>,
    #[serde(default)]
    pub eni: Option<EniPoolState>,
}

impl State {
    pub fn new(boot_id: String) -> State {
        State {
            schema: SCHEMA,
            boot_id,
            allocations: Vec::new(),
            vpc: None,
            eni: None,
        }
    }
}

pub struct Store {
    path: PathBuf,
}

/// Held for the daemon's lifetime: one daemon per state file, or two would overwrite each
/// other's allocations.
pub struct StoreLock {
    _file: File,
}

impl Store {
    pub fn new(path: impl Into<PathBuf>) -> Store {
        Store { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        self.path.with_file_name(name)
    }

    pub fn prev_path(&self) -> PathBuf {
        self.sibling(".prev")
    }

    /// Takes the exclusive lock `<state>.lock` (released when the process ends, even by SIGKILL).
    pub fn lock(&self) -> Result<StoreLock> {
        let path = self.sibling(".lock");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_ctx(|| format!("open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(StoreLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::new(
                Kind::State,
                format!(
                    "another terway daemon is using the state file {} (it holds {})",
                    self.path.display(),
                    path.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("lock {}", path.display()), e))
            }
        }
    }

    /// `Ok(None)` when there is no state file yet (first start).
    pub fn load(&self) -> Result<Option<State>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::new(
                    Kind::State,
                    format!("state file {} is unreadable: {e}", self.path.display()),
                ));
            }
        };
        let hint = || {
            let prev = self.prev_path();
            if prev.exists() {
                format!(
                    "; the previous good copy is {} (move it into place to recover, or remove both files to start empty)",
                    prev.display()
                )
            } else {
                "; remove it to start empty (pods on this node then need their addresses re-checked)".into()
            }
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                Kind::State,
                format!(
                    "state file {} is corrupt: {e}{}",
                    self.path.display(),
                    hint()
                ),
            )
        })?;
        if state.schema > SCHEMA {
            return Err(Error::new(
                Kind::State,
                format!(
                    "state file {} has schema {} but this terway knows only up to {SCHEMA}: it was written by a newer version; refusing to overwrite it",
                    self.path.display(),
                    state.schema
                ),
            ));
        }
        Ok(Some(state))
    }

    /// Atomically replaces the state file, keeping the one it replaces as `.prev`.
    pub fn save(&self, state: &State) -> Result<()> {
        let what = || format!("save state file {}", self.path.display());
        let body = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::new(Kind::Internal, format!("encode state: {e}")))
            .with_ctx(what)?;
        let tmp = self.sibling(".tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_ctx(|| format!("{}: create {}", what(), tmp.display()))?;
        f.write_all(&body)
            .and_then(|_| f.sync_all())
            .with_ctx(|| format!("{}: write {}", what(), tmp.display()))?;
        drop(f);
        if self.path.exists() {
            // Hard link then rename: `.prev` is always a complete file, never half-written.
            let prev_tmp = self.sibling(".prev.tmp");
            let _ = std::fs::remove_file(&prev_tmp);
            std::fs::hard_link(&self.path, &prev_tmp)
                .and_then(|_| std::fs::rename(&prev_tmp, self.prev_path()))
                .with_ctx(|| format!("{}: keep previous copy", what()))?;
        }
        std::fs::rename(&tmp, &self.path).with_ctx(what)?;
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))
            .and_then(|d| d.sync_all())
            .with_ctx(|| format!("{}: sync directory", what()))?;
        Ok(())
    }
}

/// The kernel's id of this boot: allocations from another boot belong to pods that are gone.
pub fn read_boot_id() -> Result<String> {
    std::fs::read_to_string(BOOT_ID_PATH)
        .map(|s| s.trim().to_string())
        .with_ctx(|| format!("read {BOOT_ID_PATH}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("terway-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn alloc(id: &str, ip: &str) -> StoredAllocation {
        StoredAllocation {
            key: AttachKey {
                container_id: id.into(),
                ifname: "eth0".into(),
            },
            network: "terway".into(),
            pod: PodRef::default(),
            netns: "/run/netns/x".into(),
            ipv4: ip.parse().unwrap(),
            created_unix: 1,
        }
    }

    #[test]
    fn save_load_round_trip_keeps_previous_copy() {
        let d = tmpdir("rt");
        let store = Store::new(d.join("state.json"));
        assert_eq!(store.load().unwrap(), None);
        let mut s = State::new("boot".into());
        s.allocations.push(alloc("a", "10.0.0.2"));
        store.save(&s).unwrap();
        s.allocations.push(alloc("b", "10.0.0.3"));
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap().unwrap(), s);
        let prev: State =
            serde_json::from_slice(&std::fs::read(store.prev_path()).unwrap()).unwrap();
        assert_eq!(prev.allocations.len(), 1);
        assert!(!d.join("state.json.tmp").exists());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn corrupt_file_names_file_and_previous_copy() {
        let d = tmpdir("corrupt");
        let store = Store::new(d.join("state.json"));
        store.save(&State::new("boot".into())).unwrap();
        store.save(&State::new("boot".into())).unwrap();
        std::fs::write(store.path(), b"{\"schema\":1,\"boot_id\":").unwrap();
        let e = store.load().unwrap_err();
        assert_eq!(e.kind, Kind::State);
        assert!(e.msg.contains("state.json is corrupt"), "{e}");
        assert!(e.msg.contains("state.json.prev"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn one_lock_holder_per_state_file() {
        let d = tmpdir("lock");
        let store = Store::new(d.join("state.json"));
        let held = store.lock().unwrap();
        let e = store.lock().err().unwrap();
        assert!(e.msg.contains("another terway daemon"), "{e}");
        drop(held);
        assert!(store.lock().is_ok());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn newer_schema_is_refused() {
        let d = tmpdir("schema");
        let store = Store::new(d.join("state.json"));
        std::fs::write(store.path(), br#"{"schema":99,"boot_id":"x"}"#).unwrap();
        assert!(store.load().unwrap_err().msg.contains("newer version"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn boot_id_is_readable() {
        assert_eq!(read_boot_id().unwrap().len(), 36);
    }
}
