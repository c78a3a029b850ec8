//! `terway emulate`: a local Alibaba Cloud (ECS/VPC OpenAPI + instance metadata), strict enough
//! that code passing against it works against the real service. Layers: `model*` (pure state),
//! `api*` (actions, parameters, JSON), `http` (server, signatures, faults, admin), `metadata`,
//! `topology` (network namespaces).

pub mod api;
pub mod api_vpc;
pub mod config;
pub mod errors;
pub mod faults;
pub mod http;
pub mod metadata;
pub mod model;
pub mod model_eni;
pub mod model_route;
#[cfg(test)]
mod model_tests;
pub mod params;

use crate::{Kind, Result, ResultExt, err};
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
    /// HTTP worker threads per listener.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
}

pub fn run(args: EmulateArgs) -> Result<()> {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let cfg = match &args.config {
        Some(p) => EmuConfig::load(p)?,
        None => EmuConfig::embedded()?,
    };
    if args.print_config {
        println!("{}", cfg.to_pretty_json());
        return Ok(());
    }
    if args.cleanup || args.netns {
        return Err(err!(Kind::Internal, "--netns/--cleanup are not built yet"));
    }
    let model = model::Model::new(&cfg, http::now_ms())?;
    let shared = Arc::new(http::Shared::new(&cfg, model));
    let server = tiny_http::Server::http(args.listen.as_str())
        .map_err(|e| err!(Kind::Io, "listen on {}: {e}", args.listen))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| err!(Kind::Io, "listen on {}: not an IP address", args.listen))?;
    let server = Arc::new(server);
    let workers = http::serve(
        server.clone(),
        shared.clone(),
        http::Mode::Local,
        args.threads,
    );
    let base = format!("http://{addr}");
    if let Some(dir) = &args.node_configs {
        config::write_node_configs(&cfg, dir, |id| NodeEndpoints {
            api: base.clone(),
            metadata: format!("{base}/instances/{id}"),
        })?;
    }
    print_banner(&cfg, &base, &addr.to_string(), args.node_configs.as_ref());
    wait_for_signal()?;
    server.unblock();
    for _ in 1..workers.len() {
        server.unblock();
    }
    Ok(())
}

fn print_banner(cfg: &EmuConfig, base: &str, addr: &str, node_configs: Option<&PathBuf>) {
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
    if let Some(d) = node_configs {
        let _ = writeln!(out, "  node configs: {}/<instance-id>.json", d.display());
    }
    let _ = out.flush();
}

fn wait_for_signal() -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .ctx("install signal handlers")?;
    let _ = signals.forever().next();
    Ok(())
}
