//! The daemon's state file: every allocation is on disk before the reply that hands it out.
//!
//! Two files hold the state. The state file `<name>` is a snapshot, replaced atomically (temp
//! file, fsync, rename, fsync of the directory) and keeping the previous good copy beside it as
//! `<name>.prev`, so a file damaged by hand or by a disk fault never costs the allocations: the
//! daemon refuses to start and says where the last good copy is. Saves between snapshots go to
//! the log `<name>.log` (see `journal`): one sync each instead of three, which is most of what
//! a warm ADD costs. A snapshot is taken at start, at a clean stop and whenever the log is full,
//! so after a clean stop the state file alone is the state; while the daemon runs (or after a
//! crash) read it with `terway state`, which applies the log.

mod journal;
mod migrate;

use crate::model::{AttachKey, Datapath, PodAddress, PodRef};
use crate::{Error, Kind, Result, ResultExt};
use serde::{Deserialize, Serialize};
use std::fs::{File, FileType, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// 2: allocations carry the network in their key, a pod address (IPv4 and/or IPv6 with
/// gateways) and the datapath that wired them. 1 is migrated on load (see `migrate`).
pub const SCHEMA: u32 = 2;
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAllocation {
    pub key: AttachKey,
    pub pod: PodRef,
    pub netns: String,
    pub address: PodAddress,
    pub datapath: Datapath,
    pub created_unix: u64,
}

/// Pool bookkeeping of VPC mode: the CIDR and where the round-robin cursor stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpcPoolState {
    pub pod_cidr: ipnetwork::Ipv4Network,
    pub cursor: Option<Ipv4Addr>,
    /// Addresses cooling down since (unix ms) they were released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<(Ipv4Addr, u64)>,
    /// Dual stack: the IPv6 pod prefix (its route entry is removed when it changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<ipnetwork::Ipv6Network>,
}

/// An ENI mode's part of the state: its pool and the node facts worth caching across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniModeState<P> {
    pub instance_id: String,
    pub instance_type: String,
    /// DescribeInstanceTypes answer for `instance_type` (it never changes for an instance).
    pub limits: Option<InstanceLimits>,
    pub pool: P,
}

/// Shared ENI mode's part.
pub type EniPoolState = EniModeState<crate::pool::shared_eni::PoolState>;
/// Exclusive ENI mode's part: the pool of whole ENIs.
pub type ExclusiveEniState = EniModeState<crate::pool::exclusive_eni::PoolState>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLimits {
    pub eni_quantity: u32,
    pub eni_private_ip_quantity: u32,
    pub eni_total_quantity: u32,
    /// IPv6 addresses per ENI; absent in files written before dual stack (asked again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eni_ipv6_quantity: Option<u32>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive_eni: Option<ExclusiveEniState>,
    /// The log cycle that follows this snapshot: records of `<name>.log` with this id are newer
    /// than the snapshot (0: none are).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub journal_id: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl State {
    pub fn new(boot_id: String) -> State {
        State {
            schema: SCHEMA,
            boot_id,
            allocations: Vec::new(),
            vpc: None,
            eni: None,
            exclusive_eni: None,
            journal_id: 0,
        }
    }
}

/// Who loads: the daemon (which will save, so a schema-1 file is kept as a copy first) or a
/// reader beside it (`terway state`), which writes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Owner,
    Reader,
}

pub struct Store {
    path: PathBuf,
    /// The log of the current cycle, once a snapshot started one.
    log: Option<journal::Log>,
    /// The log's size in bytes; 0: no log, every save is a snapshot.
    log_capacity: u64,
}

/// Held for the daemon's lifetime: one daemon per state file, or two would overwrite each
/// other's allocations.
pub struct StoreLock {
    _file: File,
}

impl Store {
    pub fn new(path: impl Into<PathBuf>) -> Store {
        Store {
            path: path.into(),
            log: None,
            log_capacity: journal::CAPACITY,
        }
    }

    /// Sizes the log of the next cycles (0: no log); meant for tests of the snapshot path.
    pub fn set_log_capacity(&mut self, bytes: u64) {
        self.log_capacity = bytes;
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

    pub fn log_path(&self) -> PathBuf {
        self.sibling(".log")
    }

    /// Every file of this store that exists must be a regular file: see [`ensure_regular`].
    fn check_files(&self) -> Result<()> {
        for suffix in ["", ".prev", ".tmp", ".prev.tmp", ".lock", ".log"] {
            ensure_regular(&self.sibling(suffix))?;
        }
        Ok(())
    }

    /// Takes the exclusive lock `<state>.lock` (released when the process ends, even by SIGKILL).
    /// It is the daemon's first touch of the store, so it first checks every file of the store
    /// is a regular file ([`Store::check_files`]).
    pub fn lock(&self) -> Result<StoreLock> {
        self.check_files()?;
        let path = self.sibling(".lock");
        let file = open_regular(
            OpenOptions::new().write(true).create(true).truncate(false),
            &path,
        )
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

    /// `Ok(None)` when there is no state file yet (first start). Otherwise the snapshot with
    /// the newest save its log cycle holds (`journal_id` is the store's business: 0).
    pub fn load(&self) -> Result<Option<State>> {
        self.load_as(Access::Owner)
    }

    fn load_as(&self, access: Access) -> Result<Option<State>> {
        let Some(mut state) = self.load_snapshot(access)? else {
            return Ok(None);
        };
        let id = state.journal_id;
        if id != 0
            && let Some(newer) = self.replay(id)?
        {
            state = newer;
        }
        state.journal_id = 0;
        Ok(Some(state))
    }

    /// [`Store::load`] for a reader beside a running daemon: a snapshot replaced (renamed over)
    /// while the log was read means the log may already belong to the next cycle, so read again.
    /// A save in flight reads as the state before it.
    pub fn read_live(&self) -> Result<Option<State>> {
        let inode = || {
            std::fs::symlink_metadata(&self.path)
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        };
        for _ in 0..10 {
            let before = inode();
            let state = self.load_as(Access::Reader)?;
            if inode() == before {
                return Ok(state);
            }
        }
        Err(Error::new(
            Kind::State,
            format!(
                "state file {} was replaced during each of 10 reads (the daemon snapshots faster than it can be read); try again",
                self.path.display()
            ),
        ))
    }

    /// The newest complete save of log cycle `id`, if the log holds one.
    fn replay(&self, id: u64) -> Result<Option<State>> {
        let path = self.log_path();
        if !ensure_regular(&path)? {
            return Ok(None);
        }
        let scan = open_regular(OpenOptions::new().read(true), &path)
            .and_then(|f| journal::scan(&f, id))
            .map_err(|e| {
                Error::new(
                    Kind::State,
                    format!("state log {} is unreadable: {e}", path.display()),
                )
            })?;
        if scan.torn {
            log::warn!(
                "state log {}: ignored the incomplete save at byte {} (cut short by a crash, or still being written beside this reader; it was not acknowledged)",
                path.display(),
                scan.end
            );
        }
        let Some((at, body)) = scan.last else {
            return Ok(None);
        };
        let corrupt = |e: &dyn std::fmt::Display| {
            Error::new(
                Kind::State,
                format!(
                    "state log {} is corrupt: the save at byte {at} {e}; the state file {} holds \
                     the state before the log's saves (remove the log to fall back to it, losing \
                     those saves)",
                    path.display(),
                    self.path.display()
                ),
            )
        };
        let state: State = serde_json::from_slice(&body)
            .map_err(|e| corrupt(&format_args!("does not decode: {e}")))?;
        if state.schema > SCHEMA {
            return Err(corrupt(&format_args!(
                "has schema {} but this terway knows only up to {SCHEMA}",
                state.schema
            )));
        }
        Ok(Some(state))
    }

    fn load_snapshot(&self, access: Access) -> Result<Option<State>> {
        let unreadable = |e: std::io::Error| {
            Error::new(
                Kind::State,
                format!("state file {} is unreadable: {e}", self.path.display()),
            )
        };
        if !ensure_regular(&self.path)? {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        open_regular(OpenOptions::new().read(true), &self.path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(unreadable)?;
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
        let corrupt = |e: &dyn std::fmt::Display| {
            Error::new(
                Kind::State,
                format!(
                    "state file {} is corrupt: {e}{}",
                    self.path.display(),
                    hint()
                ),
            )
        };
        let mut value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(&e))?;
        let schema = value.get("schema").and_then(serde_json::Value::as_u64);
        if schema.is_some_and(|s| s > u64::from(SCHEMA)) {
            return Err(Error::new(
                Kind::State,
                format!(
                    "state file {} has schema {} but this terway knows only up to {SCHEMA}: it was written by a newer version; refusing to overwrite it",
                    self.path.display(),
                    schema.unwrap_or_default()
                ),
            ));
        }
        if schema == Some(1) {
            value = migrate::from_schema1(value).map_err(|e| corrupt(&e))?;
            if access == Access::Owner {
                self.keep_schema1_copy()?;
            }
        }
        let state: State = serde_json::from_value(value).map_err(|e| corrupt(&e))?;
        Ok(Some(state))
    }

    /// Before the first save in the new schema replaces it: the schema-1 file stays as
    /// `<name>.schema1` (a hard link, so it is exactly what the old version wrote).
    fn keep_schema1_copy(&self) -> Result<()> {
        let copy = self.sibling(".schema1");
        if !ensure_regular(&copy)? {
            std::fs::hard_link(&self.path, &copy).with_ctx(|| {
                format!(
                    "keep the schema-1 state file {} as {}",
                    self.path.display(),
                    copy.display()
                )
            })?;
            log::info!(
                "state file {}: migrated from schema 1 to {SCHEMA}; the old file is kept as {}",
                self.path.display(),
                copy.display()
            );
        }
        Ok(())
    }

    /// Makes `state` durable before it returns: as the next save of the log cycle when there is
    /// one with room, otherwise as a snapshot.
    pub fn save(&mut self, state: &State) -> Result<()> {
        if let Some(log) = &mut self.log {
            let body = serde_json::to_vec(state)
                .map_err(|e| Error::new(Kind::Internal, format!("encode state: {e}")))?;
            if log.append(&body)? {
                return Ok(());
            }
        }
        self.snapshot(state)
    }

    /// Replaces the state file atomically (keeping the one it replaces as `.prev`) and starts a
    /// new log cycle after it.
    pub fn snapshot(&mut self, state: &State) -> Result<()> {
        let id = cycle_id()?;
        // The old cycle's records must never follow the new snapshot: drop the log first.
        self.log = None;
        let mut snap = state.clone();
        snap.journal_id = id;
        self.write_snapshot(&snap)?;
        if self.log_capacity == 0 {
            return Ok(());
        }
        let path = self.log_path();
        let opened = ensure_regular(&path).and_then(|_| {
            open_regular(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false),
                &path,
            )
            .with_ctx(|| format!("open state log {}", path.display()))
        });
        match opened.and_then(|file| journal::Log::start(&path, file, id, self.log_capacity)) {
            Ok(log) => self.log = Some(log),
            // The state is safe in the snapshot; saves stay snapshots until a log can start.
            Err(e) => log::warn!("{e}: saving every change as a snapshot of the state file"),
        }
        Ok(())
    }

    fn write_snapshot(&self, state: &State) -> Result<()> {
        let what = || format!("save state file {}", self.path.display());
        let body = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::new(Kind::Internal, format!("encode state: {e}")))
            .with_ctx(what)?;
        let tmp = self.sibling(".tmp");
        ensure_regular(&tmp).with_ctx(what)?;
        let mut f = open_regular(
            OpenOptions::new().write(true).create(true).truncate(true),
            &tmp,
        )
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
        journal::sync_parent(&self.path).with_ctx(|| format!("{}: sync directory", what()))?;
        Ok(())
    }
}

/// What a file of the store is when it is not a regular file (None: it is one).
fn not_regular(t: FileType) -> Option<&'static str> {
    if t.is_file() {
        return None;
    }
    Some(if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "not a regular file"
    })
}

fn refuse(path: &Path, what: &str) -> Error {
    Error::new(
        Kind::State,
        format!(
            "{} is {what}, not a regular file: the state file and its .prev, .tmp, .lock and .log \
             companions must be regular files (move it away)",
            path.display()
        ),
    )
}

/// `path`, when it exists (true), is a regular file. A FIFO would block the daemon for ever on
/// open, a directory or device is a mistake. A symbolic link is refused too, even to a regular file:
/// saves replace the file by `rename`, which replaces the link and not its target (the state
/// would silently move away from where the link points), and a root daemon must not open or
/// create files wherever a link planted in its state directory points.
fn ensure_regular(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => match not_regular(m.file_type()) {
            None => Ok(true),
            Some(what) => Err(refuse(path, what)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::new(Kind::State, format!("{}: {e}", path.display()))),
    }
}

/// Opens only a regular file: without following a link and without blocking on a FIFO (one
/// swapped in after [`ensure_regular`] looked).
pub(crate) fn open_regular(opts: &mut OpenOptions, path: &Path) -> std::io::Result<File> {
    let file = opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    match not_regular(file.metadata()?.file_type()) {
        None => Ok(file),
        Some(what) => Err(std::io::Error::other(format!(
            "it is {what}, not a regular file"
        ))),
    }
}

/// A new log cycle's id: random, so that no other cycle (of this store, another store, another
/// process, before a clock step) has it, and never 0 (no cycle).
fn cycle_id() -> Result<u64> {
    let mut bytes = [0u8; 8];
    // The raw system call: the static musl build's libc::getrandom symbol is null (a call to
    // it crashed the daemon).
    // SAFETY: the buffer is valid for its length; getrandom writes at most that many bytes.
    let n = unsafe { libc::syscall(libc::SYS_getrandom, bytes.as_mut_ptr(), bytes.len(), 0) };
    if n != bytes.len() as libc::c_long {
        let e = std::io::Error::last_os_error();
        return Err(Error::new(
            Kind::Io,
            format!("getrandom for a state log cycle id: {e}"),
        ));
    }
    Ok(u64::from_ne_bytes(bytes) | 1)
}

/// The kernel's id of this boot: allocations from another boot belong to pods that are gone.
pub fn read_boot_id() -> Result<String> {
    std::fs::read_to_string(BOOT_ID_PATH)
        .map(|s| s.trim().to_string())
        .with_ctx(|| format!("read {BOOT_ID_PATH}"))
}

#[cfg(test)]
mod tests;
