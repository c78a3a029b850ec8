//! Shared fixtures for the root integration tests: throwaway network namespaces, a daemon per
//! "node" namespace, and CNI invocations of the real binary. Everything is removed on drop.
#![allow(dead_code)]

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod cloud;

pub const BIN: &str = env!("CARGO_BIN_EXE_terway");

/// Root tests must run as root: fail loudly, never pass by skipping.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this integration test needs root (network namespaces, veths); run it as root (CI does)"
    );
    for tool in ["ip", "ping"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is not installed: run scripts/test.sh, which installs iproute2 and iputils-ping"
        );
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique short name: namespace names end up in paths and must stay readable.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn sh(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

pub fn sh_ok(cmd: &[&str]) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        sh_ok(&["ip", "netns", "add", &name]);
        sh_ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        sh(&full)
    }

    pub fn ping(&self, ip: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", ip])
            .status
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(unique(&format!("terway-{name}")));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node: its own namespace with a node address on lo, a daemon config, and
/// (when started) a daemon running inside the namespace.
pub struct Node {
    pub ns: Netns,
    pub dir: TempDir,
    pub node_ip: String,
    pub pod_cidr: String,
    pub daemon: Option<DaemonProc>,
}

impl Node {
    /// `index` picks distinct addresses per test: pods in 10.250.<index>.0/24.
    pub fn new(index: u8) -> Node {
        Node::with_cidr(index, &format!("10.250.{index}.0/24"))
    }

    pub fn with_cidr(index: u8, pod_cidr: &str) -> Node {
        let ns = Netns::new("twnode");
        let node_ip = format!("192.168.250.{index}");
        // On lo: the build machines' kernel has no dummy driver; a /32 on lo is as good a
        // node address for source selection and local delivery.
        sh_ok(&[
            "ip",
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{node_ip}/32"),
            "dev",
            "lo",
        ]);
        let dir = TempDir::new("node");
        let node = Node {
            ns,
            dir,
            node_ip,
            pod_cidr: pod_cidr.into(),
            daemon: None,
        };
        node.configure(serde_json::json!({}));
        node
    }

    /// Writes the node's VPC-mode daemon config with `extra` keys on top.
    pub fn configure(&self, extra: Value) {
        let mut v = serde_json::json!({
            "daemon_mode": "VPC",
            "pod_cidr": self.pod_cidr,
            "socket_path": self.socket(),
            "state_path": self.state_path(),
        });
        for (k, x) in extra.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        self.write_config(&v);
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.0.join("eni.json")
    }

    pub fn write_config(&self, v: &Value) {
        std::fs::write(self.config_path(), serde_json::to_vec_pretty(v).unwrap()).unwrap();
    }

    pub fn socket(&self) -> String {
        self.dir.0.join("terway.sock").display().to_string()
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.0.join("state.json")
    }

    /// Starts the daemon and waits until its socket answers.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        self.daemon = Some(DaemonProc::start(
            &self.ns.name,
            &self.config_path(),
            &self.socket(),
            &self.dir.0.join("daemon.log"),
        ));
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("daemon.log")).unwrap_or_default()
    }

    pub fn kill_daemon(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        self.daemon.take().expect("daemon running").stop(signal)
    }

    /// The state on disk as the daemon would load it (see [`stored_state_at`]).
    pub fn stored_state(&self) -> Value {
        stored_state_at(&self.state_path())
    }

    /// Runs a CLI subcommand against this node's daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("TERWAY_SOCKET", self.socket())
            .output()
            .unwrap()
    }

    /// The network config the runtime would pass.
    pub fn netconf(&self, version: &str) -> Value {
        serde_json::json!({
            "cniVersion": version,
            "name": "terway",
            "type": "terway",
            "daemon_socket": self.socket(),
        })
    }

    /// Execs the plugin inside the node namespace as a runtime would.
    pub fn cni(&self, command: &str, container_id: &str, netns: &str, conf: &Value) -> CniOutcome {
        cni_in(&self.ns.name, command, container_id, netns, conf, &[])
    }
}

/// A `terway daemon` running inside a namespace (via `ip netns exec`, which execs it in place,
/// so the child's pid is the daemon's). Killed on drop.
pub struct DaemonProc {
    child: Child,
    log: PathBuf,
}

impl DaemonProc {
    pub fn start(ns: &str, config: &Path, socket: &str, log: &Path) -> DaemonProc {
        let log_file = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN, "daemon", "--config"])
            .arg(config)
            .env("TERWAY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn daemon");
        let mut d = DaemonProc {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(BIN)
                .args(["pool", "--socket", socket])
                .output()
                .unwrap();
            if out.status.success() {
                return d;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("daemon exited with {status}: {}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up within 60 s: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn stop(mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        // Already dead (killed by the test itself) is fine: reap it.
        let _ = nix::sys::signal::kill(self.pid(), signal);
        self.child.wait().unwrap()
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct CniOutcome {
    pub ok: bool,
    pub json: Value,
    pub stderr: String,
}

impl CniOutcome {
    pub fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }

    pub fn ip(&self) -> String {
        let addr = self.json["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no ip in {}", self.json));
        addr.split('/').next().unwrap().to_string()
    }

    /// The IPv6 of a dual-stack result.
    pub fn ip6(&self) -> String {
        let ips = self.json["ips"].as_array().into_iter().flatten();
        let addr = ips
            .filter_map(|i| i["address"].as_str())
            .find(|a| a.contains(':'))
            .unwrap_or_else(|| panic!("no IPv6 in {}", self.json));
        addr.split('/').next().unwrap().to_string()
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok, "CNI failed: {} {}", self.json, self.stderr);
        self
    }
}

/// Execs the plugin in namespace `ns_name` with the given CNI env; `extra_env` overrides.
pub fn cni_in(
    ns_name: &str,
    command: &str,
    container_id: &str,
    netns: &str,
    conf: &Value,
    extra_env: &[(&str, &str)],
) -> CniOutcome {
    let stdin = serde_json::to_vec(conf).unwrap();
    cni_raw(ns_name, command, container_id, netns, &stdin, extra_env)
}

pub fn cni_raw(
    ns_name: &str,
    command: &str,
    container_id: &str,
    netns: &str,
    stdin: &[u8],
    extra_env: &[(&str, &str)],
) -> CniOutcome {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns_name, BIN])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{container_id}"),
        );
    for (k, v) in extra_env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("plugin printed non-JSON ({e}): {text}"))
    };
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(1),
        "plugin exit status must be 0 or 1, got {code:?}: {text}"
    );
    CniOutcome {
        ok: out.status.success(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits until `f` holds or the timeout passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

/// The state at `path` as the daemon would load it (`terway state`: the state file and its
/// log), read beside the running daemon.
pub fn stored_state_at(path: &Path) -> Value {
    let out = Command::new(BIN)
        .args(["state", "--path"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "terway state: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn link_exists(ns: &str, name: &str) -> bool {
    sh(&["ip", "-n", ns, "link", "show", name]).status.success()
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// Runs `terway daemon --config cfg`; it must exit within 10 s. Returns (success, stderr).
/// As root in a network namespace of its own (`unshare -n` execs it in place): a daemon that got
/// further than it should would otherwise change the host's sysctls.
pub fn daemon_exits(cfg: &Path) -> (bool, String) {
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("unshare");
        c.args(["-n", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    let mut child = cmd
        .args(["daemon", "--config"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "terway daemon --config {} still running after 10 s",
                cfg.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), err)
}
