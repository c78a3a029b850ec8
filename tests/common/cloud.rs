//! An emulated region (`terway emulate --netns`) with unique instance ids per test, and ENI-mode
//! nodes: a daemon per instance namespace using the config the emulator wrote for it.

use super::*;
use std::io::{BufRead, BufReader};

/// Emulator settings a test may change before it starts.
pub struct CloudSpec {
    pub attach_ms: u64,
    pub lag_ms: u64,
    /// Extra per-node daemon config keys (watermarks, reclaim timing…).
    pub node_extra: Value,
    /// Edits to the region config (vSwitches, instance types, faults).
    pub region: Box<dyn FnOnce(&mut Value)>,
}

impl Default for CloudSpec {
    fn default() -> CloudSpec {
        CloudSpec {
            attach_ms: 300,
            lag_ms: 300,
            node_extra: serde_json::json!({}),
            region: Box::new(|_| {}),
        }
    }
}

pub struct Cloud {
    child: Child,
    pub addr: String,
    pub dir: TempDir,
    pub instances: Vec<String>,
    pub vswitches: Vec<String>,
    agent: ureq::Agent,
}

impl Cloud {
    pub fn start(spec: CloudSpec) -> Cloud {
        require_root();
        let out = Command::new(BIN)
            .args(["emulate", "--print-config"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let mut region: Value = serde_json::from_slice(&out.stdout).unwrap();
        // Namespaces are named after instance ids: make them unique per test run.
        let tag = unique("x").replace('-', "");
        let mut text = serde_json::to_string(&region).unwrap();
        for (i, inst) in region["instances"].as_array().unwrap().iter().enumerate() {
            let id = inst["id"].as_str().unwrap();
            text = text.replace(id, &format!("i-tw{tag}{i}"));
        }
        region = serde_json::from_str(&text).unwrap();
        region["timing"] = serde_json::json!({"attach_delay_ms": spec.attach_ms,
            "detach_delay_ms": spec.attach_ms, "metadata_lag_ms": spec.lag_ms});
        (spec.region)(&mut region);
        let dir = TempDir::new("cloud");
        let cfg = dir.0.join("region.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&region).unwrap()).unwrap();
        let nodes = dir.0.join("nodes");
        let child = Command::new(BIN)
            .args(["emulate", "--netns", "--listen", "127.0.0.1:0"])
            .args(["--vpc-netns", &format!("twvpc{tag}")])
            .arg("--config")
            .arg(&cfg)
            .arg("--node-configs")
            .arg(&nodes)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.0.join("emulate.log")).unwrap())
            .spawn()
            .expect("spawn terway emulate");
        // From here on a panic must still stop the emulator (TERM removes its namespaces).
        let mut child = EmulatorGuard(Some(child));
        let stdout = child.get().stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = match lines.next() {
            Some(Ok(l)) => l,
            _ => panic!(
                "emulator printed nothing: {}",
                std::fs::read_to_string(dir.0.join("emulate.log")).unwrap_or_default()
            ),
        };
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected banner {first}"))
            .to_string();
        std::thread::spawn(move || for _ in lines {});
        let instances: Vec<String> = region["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        let vswitches = region["vswitches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        assert!(
            wait_until(Duration::from_secs(20), || instances
                .iter()
                .all(|i| nodes.join(format!("{i}.json")).exists())),
            "emulator wrote no node configs"
        );
        for i in &instances {
            let p = nodes.join(format!("{i}.json"));
            let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            for (k, x) in spec.node_extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        Cloud {
            child: child.take(),
            addr,
            dir,
            instances,
            vswitches,
            agent,
        }
    }

    pub fn node_config(&self, i: usize) -> PathBuf {
        self.dir
            .0
            .join("nodes")
            .join(format!("{}.json", self.instances[i]))
    }

    /// Rewrites keys of node `i`'s daemon config.
    pub fn edit_node_config(&self, i: usize, edit: impl FnOnce(&mut Value)) {
        let p = self.node_config(i);
        let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    /// Starts a daemon on node 0 of a fresh cloud that holds one leaked ENI of the node's: one
    /// listing of the node's ENIs serves the leak clean-up and the reconcile, and the leak is
    /// deleted once.
    pub fn assert_a_start_lists_once_and_deletes_the_leak(&self) {
        let mut a = self.node(0);
        let ecs = self.operator(0);
        let v: Value =
            serde_json::from_slice(&std::fs::read(self.node_config(0)).unwrap()).unwrap();
        let sgs = vec![v["security_group"].as_str().unwrap().to_string()];
        let tags = vec![
            ("creator".to_string(), "terway".to_string()),
            ("terway.node".to_string(), a.ns.clone()),
        ];
        let leaked = ecs
            .create_eni(&self.vswitches[0], &sgs, 1, &tags, "", "")
            .unwrap();
        self.admin("DELETE", "/admin/calls", None);
        a.start_daemon();
        let gone = || {
            let model = self.admin("GET", "/admin/model", None);
            !model["enis"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["id"] == leaked.id.as_str() && e["status"] == "Available")
        };
        assert!(wait_until(Duration::from_secs(10), gone), "{}", a.log());
        let calls = self.admin("GET", "/admin/calls", None);
        assert_eq!(
            calls["DescribeNetworkInterfaces"]["total"], 1,
            "one listing serves the leak clean-up and the reconcile: {calls}"
        );
        assert_eq!(calls["DeleteNetworkInterface"]["total"], 1, "{calls}");
    }

    pub fn node(&self, i: usize) -> EniNode {
        let v: Value =
            serde_json::from_slice(&std::fs::read(self.node_config(i)).unwrap()).unwrap();
        EniNode {
            ns: self.instances[i].clone(),
            config: self.node_config(i),
            socket: v["socket_path"].as_str().unwrap().to_string(),
            state: PathBuf::from(v["state_path"].as_str().unwrap()),
            log: self.dir.0.join(format!("daemon-{i}.log")),
            daemon: None,
        }
    }

    /// A signed client of the emulated cloud with node `i`'s key: the API as anyone else (an
    /// operator acting behind the daemons' backs) would call it.
    pub fn operator(&self, i: usize) -> terway::cloud::ecs::Ecs {
        use terway::cloud::credentials::{CredentialProvider, CredentialSource};
        let v: Value =
            serde_json::from_slice(&std::fs::read(self.node_config(i)).unwrap()).unwrap();
        let s = |k: &str| v[k].as_str().unwrap().to_string();
        let mut cfg = terway::cloud::ecs::CloudConfig::new(&s("region_id"));
        cfg.ecs_endpoint = format!("http://{}", self.addr);
        cfg.vpc_endpoint = cfg.ecs_endpoint.clone();
        let creds = CredentialProvider::new(
            CredentialSource::Static {
                access_key: s("access_key"),
                access_secret: s("access_secret"),
            },
            None,
        );
        terway::cloud::ecs::Ecs::new(cfg, std::sync::Arc::new(creds)).unwrap()
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let url = format!("http://{}{path}", self.addr);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            ("PUT", Some(b)) => self.agent.put(&url).send(b.to_string().as_bytes()),
            (_, b) => self
                .agent
                .post(&url)
                .send(b.map(|b| b.to_string()).unwrap_or_default().as_bytes()),
        };
        let mut r = resp.unwrap_or_else(|e| panic!("admin {method} {path}: {e}"));
        let text = r.body_mut().read_to_string().unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("emulate.log")).unwrap_or_default()
    }
}

/// TERM, then wait: the emulator removes every namespace and link it made.
fn stop_emulator(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

struct EmulatorGuard(Option<Child>);

impl EmulatorGuard {
    fn get(&mut self) -> &mut Child {
        self.0.as_mut().expect("emulator child")
    }

    fn take(&mut self) -> Child {
        self.0.take().expect("emulator child")
    }
}

impl Drop for EmulatorGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            stop_emulator(c);
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        stop_emulator(&mut self.child);
    }
}

/// A node of the emulated region: the instance's namespace, its daemon, CNI calls inside it.
pub struct EniNode {
    pub ns: String,
    pub config: PathBuf,
    pub socket: String,
    pub state: PathBuf,
    pub log: PathBuf,
    pub daemon: Option<DaemonProc>,
}

impl EniNode {
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none());
        self.daemon = Some(DaemonProc::start(
            &self.ns,
            &self.config,
            &self.socket,
            &self.log,
        ));
    }

    pub fn stop_daemon(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        self.daemon.take().expect("daemon running").stop(sig)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn netconf(&self) -> Value {
        serde_json::json!({"cniVersion": "1.0.0", "name": "terway", "type": "terway",
            "daemon_socket": self.socket})
    }

    pub fn cni(&self, command: &str, container_id: &str, netns: &str) -> CniOutcome {
        cni_in(&self.ns, command, container_id, netns, &self.netconf(), &[])
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = Command::new(BIN)
            .args(args)
            .args(["--json", "--socket", &self.socket])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.ns, BIN];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--socket", &self.socket]);
        sh(&full)
    }

    pub fn pool(&self) -> Value {
        self.cli_json(&["pool"])
    }

    /// The state on disk as the daemon would load it (see [`stored_state_at`]).
    pub fn stored_state(&self) -> Value {
        stored_state_at(&self.state)
    }

    /// The node's own address: the primary ENI's, on `eth0`.
    pub fn node_ip(&self) -> String {
        let out = sh_ok(&[
            "ip", "-n", &self.ns, "-4", "-o", "addr", "show", "dev", "eth0",
        ]);
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no address on eth0 of {}: {out}", self.ns))
            .to_string()
    }

    /// The node's own IPv6 (dual stack): the primary ENI's, on `eth0`.
    pub fn node_ip6(&self) -> String {
        let out = sh_ok(&[
            "ip", "-n", &self.ns, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
        ]);
        out.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no IPv6 on eth0 of {}: {out}", self.ns))
            .to_string()
    }

    /// An address in the node's own stack (on `lo`), e.g. a "service" address as kube-proxy's
    /// would be reached: the VPC has no route to it.
    pub fn add_lo_address(&self, ip: &str) {
        sh_ok(&[
            "ip",
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            "lo",
        ]);
    }
}
