//! The node daemon: one thread owns the address state and the state file; the RPC acceptor and
//! the signal thread talk to it over one channel.

pub mod server;
pub mod vpc;

use crate::config::{Config, DEFAULT_CONFIG_PATH, Mode};
use crate::rpc::{Request, Response};
use crate::store::{State, Store, read_boot_id};
use crate::{Error, Kind, Result, ResultExt};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vpc::VpcIpam;

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Daemon config (Terway `eni_conf` keys plus daemon_mode, pod_cidr, socket_path, state_path).
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "TERWAY_CONFIG")]
    pub config: PathBuf,
}

pub enum Msg {
    Rpc(Request, Sender<Response>),
    Signal(i32),
}

/// Most messages handled before one save: concurrent ADDs share one fsync.
const MAX_BATCH: usize = 256;
const IDLE_TICK: Duration = Duration::from_secs(60);

pub fn run(args: DaemonArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    if config.daemon_mode != Mode::Vpc {
        return Err(Error::new(
            Kind::InvalidConfig,
            format!(
                "config {}: daemon_mode {} is not supported by this build yet (use VPC)",
                args.config.display(),
                config.daemon_mode
            ),
        ));
    }
    let Some(pod_cidr) = config.pod_cidr else {
        return Err(Error::new(
            Kind::InvalidConfig,
            "pod_cidr is required in VPC mode",
        ));
    };
    let store = Store::new(&config.state_path);
    if let Some(dir) = config.state_path.parent() {
        std::fs::create_dir_all(dir).with_ctx(|| format!("create {}", dir.display()))?;
    }
    let boot_id = read_boot_id()?;
    let mut state = match store.load()? {
        Some(s) if s.boot_id != boot_id => {
            log::info!(
                "node rebooted since {} was written: dropping {} pod allocation(s)",
                store.path().display(),
                s.allocations.len()
            );
            State {
                boot_id: boot_id.clone(),
                allocations: Vec::new(),
                ..s
            }
        }
        Some(s) => s,
        None => State::new(boot_id.clone()),
    };
    let mut ipam = VpcIpam::from_state(pod_cidr, &state)
        .map_err(|e| e.context(format!("state file {}", store.path().display())))?;
    ipam.set_watermarks(config.min_pool_size, config.max_pool_size);
    ipam.write_state(&mut state);
    state.schema = crate::store::SCHEMA;
    store.save(&state)?;
    if let Err(e) = crate::sysctl::set("net/ipv4/ip_forward", "1") {
        log::warn!("cannot enable IPv4 forwarding: {e}");
    }

    let listener = server::bind(&config.socket_path)?;
    let (tx, rx) = mpsc::channel();
    spawn_signal_thread(tx.clone())?;
    let acceptor_tx = tx.clone();
    std::thread::Builder::new()
        .name("rpc-accept".into())
        .spawn(move || server::accept_loop(listener, acceptor_tx))
        .ctx("spawn the RPC acceptor")?;
    drop(tx);
    log::info!(
        "terway daemon {} in VPC mode: pod CIDR {pod_cidr}, {} allocation(s), socket {}, state {}",
        crate::VERSION,
        ipam.in_use(),
        config.socket_path.display(),
        store.path().display()
    );
    let mut daemon = Daemon {
        config_path: args.config,
        config,
        store,
        state,
        ipam,
    };
    let result = daemon.event_loop(rx);
    let _ = std::fs::remove_file(&daemon.config.socket_path);
    result
}

fn spawn_signal_thread(tx: Sender<Msg>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .ctx("install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(Msg::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .ctx("spawn the signal thread")?;
    Ok(())
}

struct Daemon {
    config_path: PathBuf,
    config: Config,
    store: Store,
    state: State,
    ipam: VpcIpam,
}

impl Daemon {
    fn event_loop(&mut self, rx: Receiver<Msg>) -> Result<()> {
        loop {
            let first = match rx.recv_timeout(IDLE_TICK) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::new(Kind::Internal, "all message senders are gone"));
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            if self.handle_batch(batch) {
                log::info!("terway daemon stopping: state saved");
                return Ok(());
            }
        }
    }

    /// Applies a batch, saves once, then replies. Returns true when asked to stop.
    fn handle_batch(&mut self, batch: Vec<Msg>) -> bool {
        let before = self.ipam.clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut replies: Vec<(Sender<Response>, Response, bool)> = Vec::new();
        let mut dirty = false;
        let mut stop = false;
        for msg in batch {
            match msg {
                Msg::Rpc(req, reply_tx) => {
                    let (resp, changed) = self.ipam.handle(req, now);
                    dirty |= changed;
                    replies.push((reply_tx, resp, changed));
                }
                Msg::Signal(SIGHUP) => {
                    // A new pod CIDR moves the cursor: persist it like any other change.
                    self.reload();
                    dirty = true;
                }
                Msg::Signal(sig) => {
                    log::info!("terway daemon: signal {sig}, shutting down");
                    stop = true;
                }
            }
        }
        if dirty || stop {
            self.ipam.write_state(&mut self.state);
            if let Err(e) = self.store.save(&self.state) {
                // Nothing that is not on disk may be handed out: undo and fail those replies.
                log::error!("{e}");
                self.ipam = before;
                self.ipam.write_state(&mut self.state);
                for r in replies.iter_mut().filter(|r| r.2) {
                    r.1 = Err(e.clone());
                }
            }
        }
        for (tx, resp, _) in replies {
            let _ = tx.send(resp);
        }
        stop
    }

    /// SIGHUP: re-read the config; keep the old one if the new one is broken or unsafe.
    fn reload(&mut self) {
        let config = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload: keeping the running config: {e}");
                return;
            }
        };
        if config.daemon_mode != self.config.daemon_mode {
            log::error!(
                "reload: daemon_mode cannot change at run time ({} -> {}); restart the daemon",
                self.config.daemon_mode,
                config.daemon_mode
            );
            return;
        }
        if let Some(cidr) = config.pod_cidr
            && let Err(e) = self.ipam.change_cidr(cidr)
        {
            log::error!("reload: keeping the running config: {e}");
            return;
        }
        for (what, old, new) in [
            ("socket_path", &self.config.socket_path, &config.socket_path),
            ("state_path", &self.config.state_path, &config.state_path),
        ] {
            if old != new {
                log::warn!("reload: {what} changes only on restart");
            }
        }
        self.ipam
            .set_watermarks(config.min_pool_size, config.max_pool_size);
        self.config = Config {
            socket_path: self.config.socket_path.clone(),
            state_path: self.config.state_path.clone(),
            ..config
        };
        log::info!("reload: config {} applied", self.config_path.display());
    }
}
