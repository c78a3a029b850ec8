//! Command line: subcommands of `terway` (also reached as `terwayd` and `terway-cli`).

pub mod cloud_access;
pub mod eni;
pub mod max_pods;
pub mod metadata;
pub mod metrics;
pub mod node_cleanup;
pub mod table;

pub use max_pods::MaxPodsArgs;

use crate::config::{Config, DEFAULT_SOCKET_PATH};
use crate::output;
use crate::rpc::client::call;
use crate::rpc::{EniPoolView, MappingRow, PoolView, Reply, Request, VpcRouteView};
use crate::{Error, Kind, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "terway",
    version,
    about = "VPC-native container networking for Alibaba Cloud ECS nodes",
    long_about = "VPC-native container networking for Alibaba Cloud ECS nodes.\n\n\
        One binary, many roles: exec'd by a container runtime with CNI_COMMAND set it is the CNI \
        plugin; `terway daemon` (or argv[0] terwayd) is the node daemon; the other subcommands \
        are the operator CLI (argv[0] terway-cli works too)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon: address pool, state file and the RPC socket the CNI plugin uses.
    Daemon(crate::daemon::DaemonArgs),
    /// Show which pod holds which address (Status | Pod Name | Res ID | Factory Res ID).
    /// Exits non-zero when the daemon and the cloud disagree about any address.
    Mapping(ClientArgs),
    /// Show the address pool: mode, CIDR or ENIs, in use / idle / capacity, watermarks.
    Pool(ClientArgs),
    /// Show what the instance metadata service says: vSwitch -> ENIs -> IPs, and ENIs that
    /// have no Linux device on this node.
    Metadata(MetadataArgs),
    /// Print the daemon's Prometheus metrics (what its metrics socket serves on GET /metrics).
    Metrics(metrics::MetricsArgs),
    /// Maximum pods per node for an instance type, per network mode: from the type's ENI limits
    /// (DescribeInstanceTypes, or this instance's type from metadata) or given figures.
    MaxPods(MaxPodsArgs),
    /// A node's cloud resources: `cleanup` deletes what terway created for an instance.
    #[command(subcommand)]
    Node(node_cleanup::NodeCommand),
    /// ENIs terway created in the region: `list` (leaks flagged), `delete`.
    #[command(subcommand)]
    Eni(eni::EniCommand),
    /// Work with daemon config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the state on disk as the daemon would load it (the state file and the saves its
    /// log holds since), as JSON. Reads the files only: works with the daemon running or not.
    State(StateArgs),
    /// Run a local Alibaba Cloud (ECS/VPC OpenAPI and instance metadata) for tests and demos.
    Emulate(crate::emulate::EmulateArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The daemon's RPC socket.
    #[arg(long, env = "TERWAY_SOCKET", default_value = DEFAULT_SOCKET_PATH)]
    pub socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MetadataArgs {
    /// Metadata service base URL; by default the one the daemon uses (asked over --socket),
    /// else http://100.100.100.200.
    #[arg(long, env = "TERWAY_METADATA_ENDPOINT")]
    pub endpoint: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// The daemon's state file (its `state_path`).
    #[arg(long, default_value = crate::config::DEFAULT_STATE_PATH)]
    pub path: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a daemon config file and print every problem with the key it concerns.
    Check {
        /// The config file, e.g. /etc/terway/eni.json.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn main(argv0: &str, mut args: Vec<std::ffi::OsString>) -> ExitCode {
    if argv0 == "terwayd" {
        args.insert(1, "daemon".into());
    }
    let cli = Cli::parse_from(args);
    if matches!(cli.command, Command::Daemon(_)) {
        init_logging();
    }
    let result = match cli.command {
        Command::Daemon(a) => crate::daemon::run(a).map(|_| ExitCode::SUCCESS),
        Command::Mapping(a) => mapping(&a),
        Command::Pool(a) => pool(&a),
        Command::Metrics(a) => metrics::run(&a),
        Command::MaxPods(a) => max_pods::run(&a),
        Command::Node(node_cleanup::NodeCommand::Cleanup(a)) => node_cleanup::cleanup(&a),
        Command::Eni(eni::EniCommand::List(a)) => eni::list(&a),
        Command::Eni(eni::EniCommand::Delete(a)) => eni::delete(&a),
        Command::Metadata(a) => show_metadata(&a),
        Command::Config(ConfigCommand::Check { file, json }) => config_check(&file, json),
        Command::State(a) => show_state(&a),
        Command::Emulate(a) => crate::emulate::run(a).map(|_| ExitCode::SUCCESS),
        Command::Version => {
            output::print(&format!("terway {}\n", crate::VERSION)).map(|_| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            output::eprint_line(format_args!("terway: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr with a UTC timestamp (journald adds its own, but demos and tests read files).
fn init_logging() {
    use std::io::Write;
    env_logger::Builder::from_env(env_logger::Env::default().filter_or("TERWAY_LOG", "info"))
        .format(|buf, record| {
            let now = crate::clock::now_ms();
            let ts = crate::cloud::sign::format_timestamp(now / 1000);
            writeln!(
                buf,
                "{}.{:03}Z {:<5} {}] {}",
                ts.trim_end_matches('Z'),
                now % 1000,
                record.level(),
                record.target(),
                record.args()
            )
        })
        .init();
}

const CLI_TIMEOUT: Duration = Duration::from_secs(15);

fn ask(socket: &std::path::Path, req: Request) -> Result<Reply> {
    call(socket, &req, CLI_TIMEOUT).map_err(Error::from)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| Error::new(Kind::Internal, format!("encode JSON: {e}")))?;
    output::print(&(s + "\n"))
}

fn show_state(a: &StateArgs) -> Result<ExitCode> {
    match crate::store::Store::new(&a.path).read_live()? {
        Some(state) => print_json(&state).map(|_| ExitCode::SUCCESS),
        None => Err(Error::new(
            Kind::State,
            format!("no state file at {}", a.path.display()),
        )),
    }
}

fn mapping(a: &ClientArgs) -> Result<ExitCode> {
    let Reply::Mapping(mut rows) = ask(&a.socket, Request::Mapping)? else {
        return Err(Error::new(Kind::Internal, "unexpected reply to mapping"));
    };
    if let Reply::Pool(view) = ask(&a.socket, Request::Pool)?
        && let PoolView {
            eni: Some(_),
            metadata_endpoint: Some(endpoint),
            ..
        } = *view
    {
        match metadata::read(&endpoint) {
            Ok(view) => metadata::compare(&mut rows, &view),
            Err(e) => {
                output::eprint_line(format_args!("terway: cannot compare with metadata: {e}"))
            }
        }
    }
    if a.json {
        print_json(&rows)?;
    } else {
        output::print(&render_mapping(&rows))?;
    }
    let bad = rows
        .iter()
        .filter(|r| r.status != "Normal" && r.status != "Idle")
        .count();
    if bad > 0 {
        output::eprint_line(format_args!(
            "terway: {bad} address(es) where the daemon and the cloud disagree"
        ));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The mapping table; with dual stack (any row with an IPv6) an IPv6 column too.
pub fn render_mapping(rows: &[MappingRow]) -> String {
    let dual = rows.iter().any(|r| r.ipv6.is_some());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.status.clone(),
                r.pod.clone(),
                r.res_id.clone(),
                r.factory_res_id.clone(),
            ];
            if dual {
                row.push(r.ipv6.clone().unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    let mut head = vec!["Status", "Pod Name", "Res ID", "Factory Res ID"];
    if dual {
        head.push("IPv6");
    }
    table::render(&head, &cells)
}

fn pool(a: &ClientArgs) -> Result<ExitCode> {
    let Reply::Pool(view) = ask(&a.socket, Request::Pool)? else {
        return Err(Error::new(Kind::Internal, "unexpected reply to pool"));
    };
    if a.json {
        print_json(&view)?;
    } else {
        output::print(&render_pool(&view))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn render_pool(v: &PoolView) -> String {
    let mut out = format!("mode:       {}\n", v.mode);
    if let Some(id) = &v.instance_id {
        out.push_str(&format!("instance:   {id}\n"));
    }
    if let Some(c) = &v.pod_cidr {
        out.push_str(&format!("pod CIDR:   {c}\n"));
    }
    if let Some(c) = &v.pod_cidr_v6 {
        out.push_str(&format!("pod CIDR6:  {c}\n"));
    }
    if let Some(d) = &v.datapath {
        if d.effective == d.configured {
            out.push_str(&format!("datapath:   {} (as configured)\n", d.effective));
        } else {
            out.push_str(&format!(
                "datapath:   {} (configured {}: {})\n",
                d.effective, d.configured, d.reason
            ));
        }
    }
    for r in v.vpc_route.iter().chain(v.vpc_route_v6.iter()) {
        out.push_str(&render_vpc_route(r));
    }
    out.push_str(&format!(
        "in use:     {}\nidle:       {}\ncapacity:   {}\nwatermarks: min_pool_size {}, max_pool_size {}\n",
        v.in_use, v.idle, v.capacity, v.min_pool_size, v.max_pool_size
    ));
    if let Some(e) = &v.eni {
        out.push_str(&render_enis(e, v.capacity));
    }
    out
}

/// The VPC route entry: table, CIDR, next hop; what the last check found and when.
fn render_vpc_route(r: &VpcRouteView) -> String {
    let mut state = r.state.clone();
    if !r.detail.is_empty() {
        state = format!("{state}: {}", r.detail);
    }
    if let Some(s) = r.checked_seconds_ago {
        state.push_str(&format!(", checked {s} s ago"));
    }
    if r.repairs > 0 {
        state.push_str(&format!(", created again {} time(s)", r.repairs));
    }
    format!(
        "VPC route:  {} -> {} {} in route table {}\nroute:      {state}\n",
        r.destination, r.next_hop_type, r.next_hop_id, r.route_table_id
    )
}

fn render_enis(e: &EniPoolView, capacity: u64) -> String {
    let mut out = format!(
        "max pods:   {capacity} ({} secondary ENIs allowed)\npending:    {} address(es) requested\n\n",
        e.max_enis, e.pending_ips
    );
    let rows: Vec<Vec<String>> = e
        .enis
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                n.mac.clone(),
                n.vswitch_id.clone(),
                n.primary_ip.clone(),
                format!("{} / {}", n.in_use, n.addresses),
                n.problems.clone(),
            ]
        })
        .collect();
    out.push_str(&table::render(
        &[
            "ENI",
            "MAC",
            "vSwitch",
            "Primary IP",
            "In Use / IPs",
            "Problems",
        ],
        &rows,
    ));
    for b in &e.blocked_vswitches {
        out.push_str(&format!(
            "blocked:    {} for {} s more: {}\n",
            b.id, b.seconds_left, b.reason
        ));
    }
    out
}

fn show_metadata(a: &MetadataArgs) -> Result<ExitCode> {
    let endpoint = match &a.endpoint {
        Some(e) => e.clone(),
        None => match ask(&a.client.socket, Request::Pool) {
            Ok(Reply::Pool(v)) if v.metadata_endpoint.is_some() => {
                v.metadata_endpoint.unwrap_or_default()
            }
            _ => "http://100.100.100.200".into(),
        },
    };
    let view = metadata::read(&endpoint)?;
    if a.client.json {
        print_json(&view)?;
    } else {
        output::print(&metadata::render(&view))?;
    }
    let missing = view
        .vswitches
        .values()
        .flatten()
        .filter(|e| e.device.is_none())
        .count();
    Ok(if missing > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn config_check(file: &std::path::Path, json: bool) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::io(format!("config {}", file.display()), e))?;
    let problems = Config::check(&text);
    let errors = problems.iter().filter(|p| !p.warning).count();
    if json {
        let list: Vec<serde_json::Value> = problems
            .iter()
            .map(|p| serde_json::json!({"key": p.key, "problem": p.msg, "warning": p.warning}))
            .collect();
        print_json(&serde_json::json!({"file": file, "ok": errors == 0, "problems": list}))?;
    } else if problems.is_empty() {
        output::print(&format!("{}: ok\n", file.display()))?;
    } else {
        let mut lines: String = problems
            .iter()
            .map(|p| format!("{}: {p}\n", file.display()))
            .collect();
        if errors == 0 {
            // Warnings only: the daemon would start with this file.
            lines.push_str(&format!(
                "{}: ok, with the warnings above\n",
                file.display()
            ));
        }
        output::print(&lines)?;
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::DatapathView;

    fn view(datapath: Option<DatapathView>) -> PoolView {
        PoolView {
            mode: "ENIMultiIP".into(),
            pod_cidr: None,
            pod_cidr_v6: None,
            eni: None,
            metadata_endpoint: None,
            instance_id: None,
            datapath,
            vpc_route: None,
            vpc_route_v6: None,
            in_use: 0,
            idle: 0,
            capacity: 0,
            min_pool_size: 0,
            max_pool_size: 5,
        }
    }

    #[test]
    fn pool_shows_the_configured_and_the_effective_datapath() {
        let fell_back = render_pool(&view(Some(DatapathView {
            configured: "ipvlan".into(),
            effective: "veth".into(),
            reason: "ipvlan not supported by this kernel: using veth policy routing".into(),
        })));
        assert!(
            fell_back.contains(
                "datapath:   veth (configured ipvlan: ipvlan not supported by this kernel: \
                 using veth policy routing)\n"
            ),
            "{fell_back}"
        );
        let same = render_pool(&view(Some(DatapathView {
            configured: "ipvlan".into(),
            effective: "ipvlan".into(),
            reason: String::new(),
        })));
        assert!(
            same.contains("datapath:   ipvlan (as configured)\n"),
            "{same}"
        );
        assert!(!render_pool(&view(None)).contains("datapath"));
    }
}
