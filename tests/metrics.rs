//! The daemon's Prometheus metrics, as root: a VPC-mode daemon scraped over its unix socket,
//! over TCP (`metrics_listen`) and with `terway metrics`, and a shared-ENI daemon on the
//! emulator whose OpenAPI counts match what the emulator saw. Every scrape is checked with
//! Prometheus's own `promtool check metrics`.

mod common;

use common::cloud::{Cloud, CloudSpec};
use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Upstream Terway's gauge names end in `_count`, which promtool's linter flags for gauges; we
/// keep upstream's names (dashboards use them), so these four findings, and only these, are
/// expected.
const UPSTREAM_COUNT_GAUGES: [&str; 4] = [
    "terway_resource_pool_total_count",
    "terway_resource_pool_idle_count",
    "terway_eniip_factory_eni_count",
    "terway_eniip_factory_ip_count",
];

fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("TERWAY_PROMTOOL") {
        return p.into();
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("promtool"))
                .find(|p| p.exists())
        })
        .expect(
            "promtool is not installed: run scripts/test.sh (it installs promtool from Debian's \
             prometheus package), or set TERWAY_PROMTOOL",
        )
}

/// `promtool check metrics` finds nothing wrong but upstream's `_count` gauge names.
fn promtool_accepts(text: &str) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let allowed: Vec<String> = UPSTREAM_COUNT_GAUGES
        .iter()
        .map(|n| {
            format!("{n} non-histogram and non-summary metrics should not have \"_count\" suffix")
        })
        .collect();
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            allowed.iter().any(|a| a == line.trim()),
            "promtool: {line}\n(all it said: {said})\n{text}"
        );
    }
    // 0: clean; 3: lint findings only (the ones allowed above). 1 would be a parse error.
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "promtool exit {:?}: {said}",
        out.status
    );
}

/// Every sample line as `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, v) = l.rsplit_once(' ').unwrap();
            (series.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[track_caller]
fn get(s: &BTreeMap<String, f64>, series: &str) -> f64 {
    *s.get(series).unwrap_or_else(|| {
        let near: Vec<&String> = s
            .keys()
            .filter(|k| k.starts_with(series.split('{').next().unwrap()))
            .collect();
        panic!("no {series}; have {near:?}")
    })
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let f_ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f_ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// One HTTP exchange over TCP: status and body.
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    terway::metrics::http::parse_answer(&raw).unwrap()
}

fn scrape(socket: &Path) -> String {
    terway::metrics::http::scrape_unix(socket, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("scrape {}: {e}", socket.display()))
}

#[test]
fn a_vpc_daemon_serves_its_metrics_on_its_socket_over_tcp_and_to_terway_metrics() {
    require_root();
    promtool();
    // Five addresses: network, broadcast and .1 are never handed out.
    let mut node = Node::with_cidr(41, "10.250.41.0/29");
    let port = in_netns(&node.ns.name, || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    let listen = format!("127.0.0.1:{port}");
    node.configure(json!({ "metrics_listen": listen }));
    node.start_daemon();
    let socket = node.dir.0.join("metrics.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "root only, like the RPC socket");

    let conf = node.netconf("1.0.0");
    let pods: Vec<Netns> = (0..7).map(|_| Netns::new("twpod")).collect();
    let add = |i: usize| node.cni("ADD", &format!("m{i}"), &pods[i].path(), &conf);
    for i in 0..3 {
        add(i).assert_ok();
    }
    node.cni("DEL", "m0", &pods[0].path(), &conf).assert_ok();
    for i in 3..6 {
        add(i).assert_ok();
    }
    let full = add(6);
    assert!(
        !full.ok && full.code() == 103,
        "the CIDR is full: {:?}",
        full
    );

    let text = scrape(&socket);
    promtool_accepts(&text);
    let s = samples(&text);
    assert_eq!(
        get(
            &s,
            &format!(
                r#"terway_daemon_info{{mode="VPC",version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    let rpc = |labels: &str| get(&s, &format!("terway_rpc_latency_count{{{labels}}}"));
    assert_eq!(rpc(r#"error="false",result="ok",rpc_api="alloc""#), 6.0);
    assert_eq!(
        rpc(r#"error="true",result="Exhausted",rpc_api="alloc""#),
        1.0
    );
    // DEL of a veth pod: the daemon removes the veth and then releases (`delete`).
    assert!(rpc(r#"error="false",result="ok",rpc_api="delete""#) >= 1.0);
    assert!(rpc(r#"error="false",result="ok",rpc_api="pool""#) >= 1.0);
    assert!(
        get(
            &s,
            r#"terway_rpc_latency_bucket{error="false",result="ok",rpc_api="alloc",le="+Inf"}"#
        ) == 6.0
    );
    assert_eq!(get(&s, "terway_resource_pool_capacity"), 5.0);
    assert_eq!(get(&s, "terway_resource_pool_total_count"), 5.0);
    assert_eq!(get(&s, "terway_resource_pool_idle_count"), 0.0);
    assert_eq!(get(&s, "terway_pods_waiting"), 0.0);
    assert_eq!(
        get(&s, r#"terway_allocation_failures_total{reason="capacity"}"#),
        1.0
    );
    for r in [
        "vswitch_exhausted",
        "quota",
        "cloud_error",
        "timeout",
        "other",
    ] {
        assert_eq!(
            get(
                &s,
                &format!(r#"terway_allocation_failures_total{{reason="{r}"}}"#)
            ),
            0.0,
            "{r}"
        );
    }
    assert_eq!(
        get(&s, r#"terway_pod_wait_seconds_count{outcome="served"}"#),
        0.0,
        "VPC mode never parks a pod"
    );
    // The start and six allocations, each saved before its reply (the ADDs come one after
    // another, so no two share a save). The release after m0's teardown is saved too, but may
    // share its save with an ADD that arrived in the same batch.
    assert!(get(&s, "terway_state_save_seconds_count") >= 7.0);
    assert!(get(&s, "terway_state_save_seconds_sum") > 0.0);
    assert!(
        !s.keys().any(|k| k.starts_with("aliyun_openapi_")),
        "VPC mode makes no cloud calls"
    );

    // Nothing happened since: TCP and `terway metrics` show the same text.
    let (status, over_tcp) = in_netns(&node.ns.name, || {
        http(
            &listen,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    });
    assert_eq!(status, 200);
    assert_eq!(over_tcp, text, "TCP and the unix socket serve the same");
    let cli = Command::new(BIN)
        .args(["metrics", "--config"])
        .arg(node.config_path())
        .env_remove("TERWAY_METRICS_SOCKET")
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&cli.stdout), text);
    let cli = Command::new(BIN)
        .args(["metrics", "--metrics-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cli.stdout), text);

    // Only GET /metrics.
    let (status, _) = in_netns(&node.ns.name, || http(&listen, "GET / HTTP/1.1\r\n\r\n"));
    assert_eq!(status, 404);
    let (status, _) = in_netns(&node.ns.name, || {
        http(
            &listen,
            "POST /metrics HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789",
        )
    });
    assert_eq!(status, 405);
    let gone = node.dir.0.join("nothing.sock");
    let e = Command::new(BIN)
        .args(["metrics", "--metrics-socket"])
        .arg(&gone)
        .output()
        .unwrap();
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains(&gone.display().to_string()),
        "the error names the socket"
    );

    // TERM removes the socket with the RPC one.
    node.kill_daemon(nix::sys::signal::Signal::SIGTERM);
    assert!(!socket.exists());
}

/// Per-action totals the emulator counted.
fn emulator_calls(cloud: &Cloud) -> BTreeMap<String, f64> {
    let calls = cloud.admin("GET", "/admin/calls", None);
    calls
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["total"].as_f64().unwrap()))
        .collect()
}

fn our_calls(s: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    s.iter()
        .filter_map(|(k, v)| {
            let api = k
                .strip_prefix("aliyun_openapi_calls_total{api=\"")?
                .strip_suffix("\"}")?;
            Some((api.to_string(), *v))
        })
        .collect()
}

#[test]
fn a_shared_eni_daemon_counts_its_cloud_calls_and_shows_its_enis() {
    let cloud = Cloud::start(CloudSpec::default());
    let mut node = cloud.node(0);
    node.start_daemon();
    let socket = Path::new(&node.socket).with_file_name("metrics.sock");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("twpod")).collect();
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let node = &node;
            s.spawn(move || {
                node.cni("ADD", &format!("e{i}"), &p.path()).assert_ok();
            });
        }
    });

    // Once the pool has settled, our counts per action are the emulator's, and the gauges are
    // what `terway pool` shows.
    let mut last = String::new();
    let settled = wait_until(Duration::from_secs(20), || {
        let pool: Value = node.pool();
        let text = scrape(&socket);
        let s = samples(&text);
        let ours = our_calls(&s);
        let theirs = emulator_calls(&cloud);
        let enis = pool["eni"]["enis"].as_array().unwrap();
        let gauges_agree = s.get("terway_resource_pool_idle_count")
            == Some(&pool["idle"].as_f64().unwrap())
            && s.get("terway_resource_pool_total_count")
                == Some(&(pool["idle"].as_f64().unwrap() + pool["in_use"].as_f64().unwrap()))
            && s.get("terway_eniip_factory_eni_count") == Some(&(enis.len() as f64))
            && enis.iter().all(|e| {
                let labels = format!(
                    r#"{{eni="{}",mac="{}"}}"#,
                    e["id"].as_str().unwrap(),
                    e["mac"].as_str().unwrap()
                );
                s.get(&format!("terway_eniip_factory_ip_count{labels}"))
                    == Some(&e["addresses"].as_f64().unwrap())
                    && s.get(&format!("terway_eni_ips_in_use{labels}"))
                        == Some(&e["in_use"].as_f64().unwrap())
            });
        last = format!("ours {ours:?}\nemulator {theirs:?}\npool {pool}\n{text}");
        ours == theirs && gauges_agree && pool["eni"]["pending_ips"] == 0
    });
    assert!(settled, "{last}");

    let text = scrape(&socket);
    promtool_accepts(&text);
    let s = samples(&text);
    for api in [
        "DescribeInstanceTypes",
        "DescribeVSwitches",
        "DescribeNetworkInterfaces",
        "CreateNetworkInterface",
        "AttachNetworkInterface",
    ] {
        assert!(
            get(&s, &format!(r#"aliyun_openapi_calls_total{{api="{api}"}}"#)) >= 1.0,
            "{api}"
        );
        assert!(
            get(
                &s,
                &format!(r#"aliyun_openapi_latency_count{{api="{api}",error="false"}}"#)
            ) >= 1.0,
            "{api}"
        );
    }
    assert!(
        !s.keys()
            .any(|k| k.starts_with("aliyun_openapi_throttles_total")),
        "no throttling without faults"
    );
    assert!(
        get(
            &s,
            r#"aliyun_metadata_latency_count{error="false",url="meta-data/instance-id"}"#
        ) >= 1.0
    );
    assert!(
        s.keys()
            .any(|k| k.contains(r#"url="meta-data/network/interfaces/macs/<mac>/"#)),
        "per-ENI metadata paths are one label: {text}"
    );
    assert_eq!(
        get(
            &s,
            &format!(
                r#"terway_daemon_info{{mode="ENIMultiIP",version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    let in_use: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("terway_eni_ips_in_use{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(in_use, 3.0, "three pods");
    assert!(get(&s, "terway_eniip_factory_eni_count") >= 1.0);
    assert_eq!(get(&s, "terway_pods_waiting"), 0.0);
    assert!(
        get(
            &s,
            r#"terway_rpc_latency_count{error="false",result="ok",rpc_api="alloc"}"#
        ) >= 3.0
    );
    // A cold pool parks the first ADDs until its ENI is attached.
    assert!(get(&s, r#"terway_pod_wait_seconds_count{outcome="served"}"#) >= 1.0);
    assert!(get(&s, r#"terway_reconcile_findings_total{finding="lost"}"#) == 0.0);
    let _ = node.stop_daemon(nix::sys::signal::Signal::SIGTERM);
}
