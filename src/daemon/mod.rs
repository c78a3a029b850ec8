//! The node daemon: one thread owns the address state and the state file; the RPC acceptor, the
//! signal thread and the cloud workers talk to it over one channel.
//!
//! Each mode is a [`Backend`]: requests, cloud results and timer ticks go in, replies come out
//! through an [`Outbox`]. The loop saves the state file once per batch and only then sends the
//! replies, so nothing is handed out that is not on disk.

pub mod eni;
pub mod eni_cloud;
pub mod server;
pub mod sweep;
pub mod vpc;

use crate::config::{Config, DEFAULT_CONFIG_PATH, Mode};
use crate::rpc::{Request, Response};
use crate::store::{State, Store, read_boot_id};
use crate::{Error, Kind, Result, ResultExt};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Daemon config (Terway `eni_conf` keys plus daemon_mode, pod_cidr, socket_path, state_path).
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "TERWAY_CONFIG")]
    pub config: PathBuf,
}

pub enum Msg {
    Rpc(Request, Sender<Response>),
    Signal(i32),
    Cloud(eni::CloudDone),
}

/// Replies produced while handling a batch; sent only after the state is saved.
#[derive(Default)]
pub struct Outbox {
    replies: Vec<(Sender<Response>, Response, bool)>,
    dirty: bool,
}

impl Outbox {
    /// Queues a reply. `mutating` replies depend on state that must reach the disk first.
    pub fn reply(&mut self, tx: Sender<Response>, resp: Response, mutating: bool) {
        self.dirty |= mutating;
        self.replies.push((tx, resp, mutating));
    }

    /// The state changed without a reply depending on it (a cloud result, a reload).
    pub fn touch(&mut self) {
        self.dirty = true;
    }
}

/// One daemon mode. Time is unix milliseconds, passed in.
pub trait Backend {
    fn on_request(&mut self, req: Request, reply: Sender<Response>, now: u64, out: &mut Outbox);
    fn on_cloud(&mut self, done: eni::CloudDone, now: u64, out: &mut Outbox);
    /// Called after every batch and when `next_deadline` passes.
    fn on_tick(&mut self, now: u64, out: &mut Outbox);
    fn next_deadline(&self, now: u64) -> Option<u64>;
    fn write_state(&self, state: &mut State);
    /// Applies a re-read config; an error keeps the running one.
    fn reload(&mut self, config: &Config) -> Result<()>;
}

/// Most messages handled before one save: concurrent ADDs share one fsync.
const MAX_BATCH: usize = 256;
const IDLE_TICK: Duration = Duration::from_secs(60);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn run(args: DaemonArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let store = Store::new(&config.state_path);
    crate::config::create_parent_dir("state_path", &config.state_path)?;
    // Before reading anything: a second daemon must not rewrite the first one's state.
    let _lock = store.lock()?;
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
    let (tx, rx) = mpsc::channel();
    let backend: Box<dyn Backend> = match config.daemon_mode {
        Mode::Vpc => Box::new(vpc::VpcIpam::start(&config, &state)?),
        Mode::EniMultiIp => Box::new(eni::EniBackend::start(&config, &state, tx.clone())?),
        Mode::EniOnly => {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!(
                    "config {}: daemon_mode ENIOnly is not supported by this build yet (use VPC or ENIMultiIP)",
                    args.config.display()
                ),
            ));
        }
    };
    backend.write_state(&mut state);
    state.schema = crate::store::SCHEMA;
    store.save(&state)?;
    if let Err(e) = crate::sysctl::set("net/ipv4/ip_forward", "1") {
        log::warn!("cannot enable IPv4 forwarding: {e}");
    }

    let listener = server::bind(&config.socket_path)?;
    spawn_signal_thread(tx.clone())?;
    let acceptor_tx = tx.clone();
    std::thread::Builder::new()
        .name("rpc-accept".into())
        .spawn(move || server::accept_loop(listener, acceptor_tx))
        .ctx("spawn the RPC acceptor")?;
    drop(tx);
    log::info!(
        "terway daemon {} in {} mode: {} allocation(s), socket {}, state {}",
        crate::VERSION,
        config.daemon_mode,
        state.allocations.len(),
        config.socket_path.display(),
        store.path().display()
    );
    let socket_path = config.socket_path.clone();
    let mut daemon = Daemon {
        config_path: args.config,
        config,
        store,
        state,
        backend,
        next_sweep: 0,
    };
    let result = daemon.event_loop(rx);
    let _ = std::fs::remove_file(&socket_path);
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
    backend: Box<dyn Backend>,
    next_sweep: u64,
}

impl Daemon {
    fn event_loop(&mut self, rx: Receiver<Msg>) -> Result<()> {
        loop {
            let now = now_ms();
            let wait = self
                .backend
                .next_deadline(now)
                .map_or(self.next_sweep, |d| d.min(self.next_sweep));
            let wait = Duration::from_millis(wait.saturating_sub(now)).min(IDLE_TICK);
            let mut batch = Vec::new();
            match rx.recv_timeout(wait) {
                Ok(m) => batch.push(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::new(Kind::Internal, "all message senders are gone"));
                }
            }
            while !batch.is_empty() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            if self.handle_batch(batch)? {
                log::info!("terway daemon stopping: state saved");
                return Ok(());
            }
        }
    }

    /// Applies a batch, saves once, then replies. Returns true when asked to stop.
    fn handle_batch(&mut self, batch: Vec<Msg>) -> Result<bool> {
        let now = now_ms();
        let mut out = Outbox::default();
        let mut stop = false;
        for msg in batch {
            match msg {
                Msg::Rpc(req, reply_tx) => self.backend.on_request(req, reply_tx, now, &mut out),
                Msg::Cloud(done) => self.backend.on_cloud(done, now, &mut out),
                Msg::Signal(SIGHUP) => {
                    self.reload();
                    out.touch();
                }
                Msg::Signal(sig) => {
                    log::info!("terway daemon: signal {sig}, shutting down");
                    stop = true;
                }
            }
        }
        if !stop {
            if now >= self.next_sweep {
                self.next_sweep = now + sweep::EVERY_MS;
                self.sweep(now, &mut out);
            }
            self.backend.on_tick(now, &mut out);
        }
        let mut fatal = None;
        if out.dirty || stop {
            self.backend.write_state(&mut self.state);
            if let Err(e) = self.store.save(&self.state) {
                // Fail-stop: what is in memory but not on disk must not be handed out. The
                // state on disk stays the truth; the restarted daemon reconciles from it.
                log::error!("{e}; stopping so the state file stays the truth");
                for r in out.replies.iter_mut().filter(|r| r.2) {
                    r.1 = Err(e.clone());
                }
                fatal = Some(e);
            }
        }
        for (tx, resp, _) in out.replies {
            let _ = tx.send(resp);
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(stop),
        }
    }

    /// Releases allocations whose pod is gone for good (see `sweep`), through the backend as if
    /// the plugin had asked.
    fn sweep(&mut self, now: u64, out: &mut Outbox) {
        self.backend.write_state(&mut self.state);
        let grace = self.config.orphan_grace_period.as_secs();
        for key in sweep::find(&self.state.allocations, now / 1000, grace) {
            let (tx, _rx) = mpsc::channel();
            self.backend
                .on_request(Request::Release { key }, tx, now, out);
        }
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
        if let Err(e) = self.backend.reload(&config) {
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
        self.config = Config {
            socket_path: self.config.socket_path.clone(),
            state_path: self.config.state_path.clone(),
            ..config
        };
        log::info!("reload: config {} applied", self.config_path.display());
    }
}
