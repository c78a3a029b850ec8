//! The daemon's state file: every allocation is on disk before the reply that hands it out.
//!
//! Saves are atomic (temp file, fsync, rename, fsync of the directory) and keep the previous
//! good copy beside the file as `<name>.prev`, so a file damaged by hand or by a disk fault never
//! costs the allocations: the daemon refuses to start and says where the last good copy is.

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
}

/// Shared ENI mode: the pool and the node facts worth caching across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniPoolState {
    pub instance_id: String,
    pub instance_type: String,
    /// DescribeInstanceTypes answer for `instance_type` (it never changes for an instance).
    pub limits: Option<InstanceLimits>,
    pub pool: crate::pool::shared_eni::PoolState,
}

/// Exclusive ENI mode: the pool of whole ENIs and the node facts worth caching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExclusiveEniState {
    pub instance_id: String,
    pub instance_type: String,
    pub limits: Option<InstanceLimits>,
    pub pool: crate::pool::exclusive_eni::PoolState,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive_eni: Option<ExclusiveEniState>,
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

    /// Every file of this store that exists must be a regular file: see [`ensure_regular`].
    fn check_files(&self) -> Result<()> {
        for suffix in ["", ".prev", ".tmp", ".prev.tmp", ".lock"] {
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

    /// `Ok(None)` when there is no state file yet (first start).
    pub fn load(&self) -> Result<Option<State>> {
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
            self.keep_schema1_copy()?;
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

    /// Atomically replaces the state file, keeping the one it replaces as `.prev`.
    pub fn save(&self, state: &State) -> Result<()> {
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
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))
            .and_then(|d| d.sync_all())
            .with_ctx(|| format!("{}: sync directory", what()))?;
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
            "{} is {what}, not a regular file: the state file and its .prev, .tmp and .lock \
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
fn open_regular(opts: &mut OpenOptions, path: &Path) -> std::io::Result<File> {
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
            key: AttachKey::new("terway", id, "eth0"),
            pod: PodRef::default(),
            netns: "/run/netns/x".into(),
            address: PodAddress::v4(ip.parse().unwrap(), 32, None),
            datapath: Datapath::Veth,
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

    /// Runs `f` on a thread and fails the test instead of hanging when it blocks.
    fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("blocked on a non-regular file")
    }

    fn mkfifo(p: &Path) {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[test]
    fn a_fifo_state_file_is_refused_without_blocking() {
        let d = tmpdir("fifo");
        let store = Store::new(d.join("state.json"));
        mkfifo(store.path());
        // Even when the FIFO appears after the check looked: opened without blocking, refused.
        let fifo = store.path().to_path_buf();
        let e = within_5s(move || open_regular(OpenOptions::new().read(true), &fifo).unwrap_err());
        assert!(e.to_string().contains("a FIFO, not a regular file"), "{e}");
        let (s1, s2) = (Store::new(store.path()), Store::new(store.path()));
        for e in [
            within_5s(move || s1.load().unwrap_err()),
            within_5s(move || s2.lock().err().unwrap()),
        ] {
            assert_eq!(e.kind, Kind::State);
            assert!(
                e.msg
                    .contains(&format!("{} is a FIFO", store.path().display())),
                "{e}"
            );
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn every_companion_file_must_be_regular() {
        for suffix in [".prev", ".tmp", ".prev.tmp", ".lock"] {
            let d = tmpdir(&format!("companion{suffix}"));
            let store = Store::new(d.join("state.json"));
            let companion = store.sibling(suffix);
            mkfifo(&companion);
            let s = Store::new(store.path());
            let e = within_5s(move || s.lock().err().unwrap());
            assert_eq!(e.kind, Kind::State);
            assert!(
                e.msg
                    .contains(&format!("{} is a FIFO", companion.display())),
                "{e}"
            );
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn a_fifo_tmp_file_fails_the_save_without_blocking() {
        let d = tmpdir("fifotmp");
        let store = Store::new(d.join("state.json"));
        mkfifo(&store.sibling(".tmp"));
        let e = within_5s(move || store.save(&State::new("boot".into())).unwrap_err());
        assert!(e.msg.contains("state.json.tmp is a FIFO"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn directories_sockets_devices_and_links_are_named() {
        let d = tmpdir("kinds");
        let dir = d.join("dir");
        std::fs::create_dir(&dir).unwrap();
        let sock = d.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let file = d.join("file");
        std::fs::write(&file, br#"{"schema":1,"boot_id":"b"}"#).unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        for (path, what) in [
            (dir.as_path(), "a directory"),
            (sock.as_path(), "a socket"),
            (Path::new("/dev/null"), "a character device"),
            (link.as_path(), "a symbolic link"),
        ] {
            let e = Store::new(path).load().unwrap_err();
            assert_eq!(e.kind, Kind::State);
            assert!(
                e.msg.contains(&format!("{} is {what}", path.display())),
                "{e}"
            );
        }
        // The regular file the link points to is fine.
        assert!(Store::new(&file).load().unwrap().is_some());
        assert!(!ensure_regular(&d.join("absent")).unwrap());
        std::fs::remove_dir_all(d).unwrap();
    }

    /// A state file with every section, as a daemon in each mode writes it.
    const SAMPLE: &str = r#"{
      "schema": 1,
      "boot_id": "6f1c2d3e-0000-4000-8000-000000000001",
      "allocations": [{"key": {"container_id": "c1", "ifname": "eth0"}, "network": "terway",
        "pod": {"namespace": "default", "name": "web-0", "uid": "u-1"},
        "netns": "/var/run/netns/cni-1", "ipv4": "10.0.0.6", "created_unix": 1700000000}],
      "vpc": {"pod_cidr": "10.244.1.0/24", "cursor": "10.244.1.7"},
      "eni": {"instance_id": "i-1", "instance_type": "ecs.g7.large",
        "limits": {"eni_quantity": 3, "eni_private_ip_quantity": 10, "eni_total_quantity": 5},
        "pool": {
          "enis": [{"id": "eni-1", "mac": "00:16:3e:00:00:01", "vswitch_id": "vsw-1",
            "vswitch_cidr": "10.0.0.0/24", "gateway": "10.0.0.253", "primary_ip": "10.0.0.5",
            "ips": [{"ip": "10.0.0.5", "since": 1},
                    {"ip": "10.0.0.6", "owner": {"container_id": "c1", "ifname": "eth0"},
                     "pod": "default/web-0", "since": 5},
                    {"ip": "10.0.0.7", "since": 2, "invalid": true, "releasing": true}],
            "full": true, "gone": false, "deleting": true}],
          "blocked": [{"id": "vsw-2", "until_ms": 99,
            "reason": "The specified VSwitch \"vsw-2\" has not enough IpAddress."}]}}
    }"#;

    /// Whatever `load` accepts, `save` writes back and `load` reads again unchanged.
    fn round_trips(store: &Store, s: State) {
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), Some(s));
    }

    /// Loads `bytes` as the state file: an answer, never a panic, and a loaded state round trips.
    fn load_bytes(store: &Store, bytes: &[u8]) {
        std::fs::write(store.path(), bytes).unwrap();
        match store.load() {
            Ok(Some(s)) => round_trips(store, s),
            Ok(None) => panic!("the file is there"),
            Err(e) => assert_eq!(e.kind, Kind::State, "{e}"),
        }
    }

    #[test]
    fn the_sample_loads_and_round_trips() {
        let d = tmpdir("sample");
        let store = Store::new(d.join("state.json"));
        std::fs::write(store.path(), SAMPLE).unwrap();
        let s = store.load().unwrap().unwrap();
        assert!(s.vpc.is_some() && s.eni.is_some() && s.allocations.len() == 1);
        round_trips(&store, s);
        std::fs::remove_dir_all(d).unwrap();
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        const KEYS: &[&str] = &[
            "schema",
            "boot_id",
            "allocations",
            "vpc",
            "eni",
            "key",
            "container_id",
            "ifname",
            "network",
            "pod",
            "netns",
            "ipv4",
            "created_unix",
            "pod_cidr",
            "cursor",
            "pool",
            "enis",
            "ips",
            "ip",
            "owner",
            "since",
            "invalid",
            "releasing",
            "blocked",
            "limits",
        ];

        fn any_json() -> impl Strategy<Value = Value> {
            let odd = prop::sample::select(vec![
                "10.0.0.1",
                "10.0.0.0/33",
                "256.0.0.1",
                "0.0.0.0/0",
                "",
                "\u{0}",
                "ÿ",
                "1e400",
            ])
            .prop_map(String::from);
            crate::prop_support::any_json(KEYS, odd)
        }

        #[derive(Debug, Clone)]
        enum Seg {
            Key(String),
            Index(usize),
        }

        /// Every node of `v` by its path, the root first.
        fn paths(v: &Value, here: Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
            out.push(here.clone());
            let children: Vec<(Seg, &Value)> = match v {
                Value::Object(m) => m.iter().map(|(k, x)| (Seg::Key(k.clone()), x)).collect(),
                Value::Array(a) => a
                    .iter()
                    .enumerate()
                    .map(|(i, x)| (Seg::Index(i), x))
                    .collect(),
                _ => Vec::new(),
            };
            for (seg, child) in children {
                let mut p = here.clone();
                p.push(seg);
                paths(child, p, out);
            }
        }

        fn node<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
            path.iter().fold(v, |v, seg| match seg {
                Seg::Key(k) => &mut v[k.as_str()],
                Seg::Index(i) => &mut v[*i],
            })
        }

        #[derive(Debug, Clone)]
        enum Change {
            Replace(Value),
            Remove,
            /// Another value of the same JSON type: a string, a number, a bool.
            SameKind(String, u64, bool),
        }

        fn change() -> impl Strategy<Value = Change> {
            prop_oneof![
                any_json().prop_map(Change::Replace),
                Just(Change::Remove),
                (any::<String>(), any::<u64>(), any::<bool>())
                    .prop_map(|(s, n, b)| Change::SameKind(s, n % 5000, b)),
            ]
        }

        /// Changes the node at `at` among all of them.
        fn edit(v: &mut Value, at: prop::sample::Index, change: Change) {
            let mut all = Vec::new();
            paths(v, Vec::new(), &mut all);
            let path = at.get(&all).clone();
            match (change, path.split_last()) {
                (Change::Replace(x), _) => *node(v, &path) = x,
                (Change::SameKind(s, n, b), _) => {
                    let x = node(v, &path);
                    match x {
                        Value::String(_) => *x = s.into(),
                        Value::Number(_) => *x = n.into(),
                        Value::Bool(_) => *x = b.into(),
                        _ => {}
                    }
                }
                (Change::Remove, Some((Seg::Key(k), parent))) => {
                    if let Value::Object(m) = node(v, parent) {
                        m.remove(k);
                    }
                }
                (Change::Remove, Some((Seg::Index(i), parent))) => {
                    if let Value::Array(a) = node(v, parent) {
                        a.remove(*i);
                    }
                }
                (Change::Remove, None) => {}
            }
        }

        fn alloc_strategy() -> impl Strategy<Value = StoredAllocation> {
            (any::<[String; 6]>(), any::<u32>(), any::<u64>()).prop_map(|(s, ip, t)| {
                let [id, ifname, network, ns, name, netns] = s;
                StoredAllocation {
                    key: AttachKey {
                        network,
                        container_id: id,
                        ifname,
                    },
                    pod: PodRef {
                        namespace: ns,
                        name,
                        uid: String::new(),
                    },
                    netns,
                    address: PodAddress::v4(Ipv4Addr::from(ip), 32, None),
                    datapath: Datapath::Veth,
                    created_unix: t,
                }
            })
        }

        fn state_strategy() -> impl Strategy<Value = State> {
            (
                any::<u32>(),
                any::<String>(),
                prop::collection::vec(alloc_strategy(), 0..4),
                prop::option::of((any::<u32>(), 0u8..=32, prop::option::of(any::<u32>()))),
            )
                .prop_map(|(schema, boot_id, allocations, vpc)| State {
                    schema: if schema % 2 == 0 { SCHEMA } else { 0 },
                    boot_id,
                    allocations,
                    vpc: vpc.map(|(net, prefix, cursor)| VpcPoolState {
                        pod_cidr: ipnetwork::Ipv4Network::new(Ipv4Addr::from(net), prefix).unwrap(),
                        cursor: cursor.map(Ipv4Addr::from),
                    }),
                    eni: None,
                    exclusive_eni: None,
                })
        }

        /// One store per property test (its cases run on one thread), removed with the thread.
        struct TmpStore(Store);

        impl TmpStore {
            fn new(name: &str) -> TmpStore {
                TmpStore(Store::new(
                    tmpdir(&format!("prop-{name}")).join("state.json"),
                ))
            }
        }

        impl Drop for TmpStore {
            fn drop(&mut self) {
                if let Some(d) = self.0.path().parent() {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
        }

        proptest! {
            #![proptest_config(crate::prop_support::proptest_config(1000))]

            #[test]
            fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
                thread_local!(static S: TmpStore = TmpStore::new("bytes"));
                S.with(|s| load_bytes(&s.0, &bytes));
            }

            #[test]
            fn arbitrary_json(v in any_json()) {
                thread_local!(static S: TmpStore = TmpStore::new("json"));
                S.with(|s| load_bytes(&s.0, v.to_string().as_bytes()));
            }

            #[test]
            fn mutated_sample(
                edits in prop::collection::vec(
                    (any::<prop::sample::Index>(), change()), 1..4),
                damage in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
            ) {
                thread_local!(static S: TmpStore = TmpStore::new("mutated"));
                let mut v: Value = serde_json::from_str(SAMPLE).unwrap();
                for (at, change) in edits {
                    edit(&mut v, at, change);
                }
                let mut bytes = serde_json::to_vec_pretty(&v).unwrap();
                if let Some((at, b)) = damage {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
                S.with(|s| load_bytes(&s.0, &bytes));
            }
        }

        // Every case saves (two fsyncs): fewer of them.
        proptest! {
            #![proptest_config(crate::prop_support::proptest_config(300))]

            #[test]
            fn generated_states_round_trip(state in state_strategy()) {
                thread_local!(static S: TmpStore = TmpStore::new("generated"));
                S.with(|s| round_trips(&s.0, state));
            }
        }
    }

    #[test]
    fn boot_id_is_readable() {
        assert_eq!(read_boot_id().unwrap().len(), 36);
    }
}
