//! `terway emulate`: a local Alibaba Cloud (ECS/VPC OpenAPI + instance metadata), strict enough
//! that code passing against it works against the real service. Layers: `model*` (pure state),
//! `api*` and `params` (actions, parameters, JSON), `http` (routing, signatures, faults, admin),
//! `http_server` (the bounded HTTP/1.1 wire),
//! `metadata` (pure answers), `topology` (network namespaces; `topology_watch`: vanished ENI
//! devices come back), `config` (region description).
//!
//! Endpoints on `--listen`:
//! - `/` the RPC OpenAPI (ECS 2014-05-26 and VPC 2016-04-28 actions), V3 or V2 signed;
//! - `/instances/<instance-id>/latest/...` the metadata service of one instance;
//! - `/admin/model` (GET: the whole model as JSON), `/admin/calls` (GET: calls per action with
//!   error codes; DELETE or `POST /admin/calls/reset`: zero them), `/admin/faults` (GET/PUT:
//!   latency, rate limits, error, `Operation.Conflict` and lost-answer rates, vSwitch
//!   free-address caps), `/admin/timing` (GET/PUT: attach/detach/delete delays and metadata
//!   lag), `/admin/health`.
//!
//! With `--netns`, inside the VPC: metadata at `100.100.100.200:80` (the instance is found by
//! the source address) and the OpenAPI at `100.100.100.201:80`.

pub mod api;
pub mod api_vpc;
pub mod config;
pub mod errors;
pub mod faults;
pub mod http;
pub mod http_server;
pub mod metadata;
pub mod model;
pub mod model_eni;
pub mod model_route;
#[cfg(test)]
mod model_tests;
pub mod params;
pub mod topology;
mod topology_v6;
mod topology_watch;

use crate::{Error, Kind, Result, ResultExt, err};
use config::{EmuConfig, NodeEndpoints};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct EmulateArgs {
    /// Region description (JSON); the embedded default when absent.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the configuration (the embedded default, or --config) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Address of the OpenAPI, admin and per-instance metadata endpoints (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8800")]
    pub listen: String,
    /// Write a ready daemon config per instance into DIR/<instance-id>.json.
    #[arg(long, value_name = "DIR")]
    pub node_configs: Option<PathBuf>,
    /// Build the VPC from network namespaces (needs root).
    #[arg(long)]
    pub netns: bool,
    /// Remove namespaces and links left by a previous run, then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Name of the namespace acting as the VPC router (with --netns / --cleanup).
    #[arg(long, value_name = "NAME", default_value = "vpc")]
    pub vpc_netns: String,
    /// Acceptor threads per listener (each connection then runs on its own thread).
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Connections served at once per listener; more are answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections: usize,
    /// Time a client has to send a whole request (and, after, to take its answer).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
}

pub fn run(args: EmulateArgs) -> Result<()> {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let cfg = match &args.config {
        Some(p) => EmuConfig::load(p)?,
        None => EmuConfig::embedded()?,
    };
    if args.print_config {
        return crate::output::print(&(cfg.to_pretty_json() + "\n"));
    }
    let model = model::Model::new(&cfg, http::now_ms())?;
    let names = topology::namespaces(&model, &args.vpc_netns);
    if args.cleanup {
        need_root("--cleanup")?;
        let gone = topology::cleanup(&names)?;
        println!(
            "removed namespaces: {}",
            if gone.is_empty() {
                "none".into()
            } else {
                gone.join(" ")
            }
        );
        return Ok(());
    }
    // Handlers first: a TERM during setup must still tear down what was built.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .ctx("install signal handlers")?;
    let topo = if args.netns {
        need_root("--netns")?;
        Some(topology::Topology::build(&model, &args.vpc_netns)?)
    } else {
        None
    };
    let result = serve_until_signal(&args, &cfg, model, topo, &mut signals);
    if args.netns {
        let gone = topology::cleanup(&names);
        if let Err(e) = &gone {
            eprintln!("terway emulate: teardown: {e}");
        }
        result?;
        gone?;
        return Ok(());
    }
    result
}

fn need_root(what: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(err!(
            Kind::Permission,
            "{what} needs root (it creates network namespaces)"
        ))
    }
}

fn serve_until_signal(
    args: &EmulateArgs,
    cfg: &EmuConfig,
    model: model::Model,
    topo: Option<topology::Topology>,
    signals: &mut signal_hook::iterator::Signals,
) -> Result<()> {
    let shared = Arc::new(http::Shared::new(cfg, model));
    let opts = http_server::Options {
        threads: args.threads,
        max_connections: args.max_connections.max(1),
        request_timeout: std::time::Duration::from_millis(args.request_timeout_ms.max(1)),
        limits: http_server::Limits::with_body(cfg.max_body_bytes),
    };
    let listener = std::net::TcpListener::bind(args.listen.as_str())
        .map_err(|e| Error::io(format!("listen on {}", args.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io(format!("listen on {}", args.listen), e))?;
    let mut servers = vec![http::serve(
        listener,
        shared.clone(),
        http::Mode::Local,
        opts,
    )];
    let base = format!("http://{addr}");
    let mut syncer = None;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(t) = topo {
        for (ip, mode) in [
            (topology::METADATA_IP, http::Mode::Metadata),
            (topology::API_IP, http::Mode::Api),
        ] {
            let l = t.listen(ip, 80)?;
            servers.push(http::serve(l, shared.clone(), mode, opts));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        *http::lock(&shared.on_change) = Some(tx);
        let (shared2, stop2) = (shared.clone(), stop.clone());
        syncer = Some(std::thread::spawn(move || {
            follow_model(t, &shared2, &rx, &stop2)
        }));
    }
    if let Some(dir) = &args.node_configs {
        config::write_node_configs(cfg, dir, |id| {
            if args.netns {
                NodeEndpoints {
                    api: format!("http://{}", topology::API_IP),
                    metadata: format!("http://{}", topology::METADATA_IP),
                }
            } else {
                NodeEndpoints {
                    api: base.clone(),
                    metadata: format!("{base}/instances/{id}"),
                }
            }
        })?;
    }
    print_banner(cfg, args, &base, &addr.to_string());
    let _ = signals.forever().next();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(h) = syncer {
        let _ = h.join();
    }
    for s in servers {
        s.stop();
    }
    Ok(())
}

/// Keeps the namespaces in step with the model: after every mutating call and on a short tick
/// (attach/detach complete on their own after a delay).
fn follow_model(
    mut t: topology::Topology,
    shared: &http::Shared,
    rx: &std::sync::mpsc::Receiver<()>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut last_error = String::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = rx.recv_timeout(std::time::Duration::from_millis(100));
        let want = {
            let mut m = http::lock(&shared.model);
            m.advance(http::now_ms());
            topology::Topology::desired(&m)
        };
        match t.sync(&want) {
            // Retried on the next tick; said once, not every 100 ms.
            Err(e) if e.msg != last_error => {
                eprintln!("terway emulate: topology: {e}");
                last_error = e.msg;
            }
            Err(_) => {}
            Ok(()) => last_error.clear(),
        }
    }
}

fn print_banner(cfg: &EmuConfig, args: &EmulateArgs, base: &str, addr: &str) {
    let mut out = std::io::stdout().lock();
    // The first line is for scripts and tests: the bound address.
    let _ = writeln!(out, "listening on {addr}");
    let _ = writeln!(
        out,
        "  OpenAPI (ECS 2014-05-26, VPC 2016-04-28): {base}/  region {}",
        cfg.region_id
    );
    let _ = writeln!(
        out,
        "  metadata: {base}/instances/<instance-id>/latest/meta-data/"
    );
    let _ = writeln!(
        out,
        "  admin: {base}/admin/{{model,calls,faults,timing,health}}"
    );
    if let Some(k) = cfg.access_keys.first() {
        let _ = writeln!(out, "  access key: {} (secret: see --print-config)", k.id);
    }
    for i in &cfg.instances {
        let _ = writeln!(
            out,
            "  instance {} ({}, vSwitch {})",
            i.id, i.instance_type, i.vswitch
        );
    }
    if args.netns {
        let _ = writeln!(
            out,
            "  in the VPC: metadata http://{}/latest/meta-data/, OpenAPI http://{}/",
            topology::METADATA_IP,
            topology::API_IP
        );
        let nodes: Vec<&str> = cfg.instances.iter().map(|i| i.id.as_str()).collect();
        let _ = writeln!(
            out,
            "  namespaces: vpc {}, nodes {}",
            args.vpc_netns,
            nodes.join(" ")
        );
    }
    if let Some(d) = &args.node_configs {
        let _ = writeln!(out, "  node configs: {}/<instance-id>.json", d.display());
    }
    let _ = out.flush();
}
