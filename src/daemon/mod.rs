//! The node daemon: one thread owns the address state and the state file; the RPC acceptor, the
//! signal thread and the cloud workers talk to it over one channel.
//!
//! The [`core::Core`] is the same for every mode; a mode is an address source
//! ([`source::AddressSource`]). The loop saves the state file once per batch and only then sends
//! the replies, so nothing is handed out that is not on disk.

pub mod core;
pub mod eni_ops;
pub mod eni_source;
pub mod exclusive_eni;
pub mod failures;
pub mod grants;
pub mod metrics_server;
pub mod node;
pub mod notify;
pub mod server;
pub mod shared_eni;
pub mod shared_eni_jobs;
pub mod shared_eni_wiring;
pub mod source;
pub mod sweep;
pub mod vpc_route;
pub mod vpc_source;
pub mod waiters;
pub mod workers;

use self::core::{Core, Outbox};
use crate::clock::now_ms;
use crate::config::{Config, DEFAULT_CONFIG_PATH, Mode};
use crate::model::AttachKey;
use crate::rpc::{Allocation, Request};
use crate::store::{State, Store, StoredAllocation, read_boot_id};
use crate::{Error, Kind, Result, ResultExt};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use source::AddressSource;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};
use workers::Workers;

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Daemon config (Terway `eni_conf` keys plus daemon_mode, pod_cidr, socket_path, state_path).
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "TERWAY_CONFIG")]
    pub config: PathBuf,
}

/// What reaches the loop: requests with their reply channel, signals, and cloud job results of
/// the mode's source (`D`).
pub enum Msg<D> {
    Rpc(Request, server::Responder),
    Signal(i32),
    Job(D),
    /// The teardown thread removed (or failed to remove) a DEL'd pod's datapath.
    TornDown(AttachKey, std::result::Result<(), String>),
}

impl<D> From<server::RpcCall> for Msg<D> {
    fn from(c: server::RpcCall) -> Self {
        Msg::Rpc(c.req, c.reply)
    }
}

/// Most messages handled before one save: concurrent ADDs share one fsync.
const MAX_BATCH: usize = 256;
const IDLE_TICK: Duration = Duration::from_secs(60);
/// On stop, how long replies already handed to connections get to be written before exit.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Sizes the state log in bytes (0: no log, every save a snapshot), read once at start; meant
/// for tests of the snapshot path.
const STATE_LOG_ENV: &str = "TERWAY_STATE_LOG_BYTES";

fn state_log_bytes() -> Option<u64> {
    let v = std::env::var(STATE_LOG_ENV).ok()?;
    match v.parse() {
        Ok(bytes) => Some(bytes),
        Err(_) => {
            log::warn!("{STATE_LOG_ENV}={v:?} is not a number of bytes; using the default");
            None
        }
    }
}

pub fn run(args: DaemonArgs) -> Result<()> {
    tune_allocator();
    let config = Config::load(&args.config)?;
    let mut store = Store::new(&config.state_path);
    if let Some(bytes) = state_log_bytes() {
        store.set_log_capacity(bytes);
    }
    crate::config::create_parent_dir("state_path", &config.state_path)?;
    // Before reading anything: a second daemon must not rewrite the first one's state.
    let lock = store.lock()?;
    let boot_id = read_boot_id()?;
    let state = match store.load()? {
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
    match config.daemon_mode {
        Mode::Vpc => {
            let (source, allocs) = vpc_source::VpcSource::start(&config, &state)?;
            serve(args, config, store, state, source, allocs, lock)
        }
        Mode::EniMultiIp => {
            let (source, allocs) = shared_eni::SharedEniSource::start(&config, &state)?;
            serve(args, config, store, state, source, allocs, lock)
        }
        Mode::EniOnly => {
            let (source, allocs) = exclusive_eni::ExclusiveEniSource::start(&config, &state)?;
            serve(args, config, store, state, source, allocs, lock)
        }
    }
}

/// glibc's malloc gives each thread that allocates its own arena (up to 8 per core), each
/// keeping what it once held: with the helper threads and cloud workers, that is most
/// of the daemon's memory, for no gain (the daemon allocates little and rarely in parallel).
/// One arena, and freed memory goes back to the kernel above 128 KiB. Before any thread starts.
/// musl's allocator (the static binary) has no arenas and returns memory by itself.
#[cfg(target_env = "gnu")]
fn tune_allocator() {
    for (param, value) in [
        (libc::M_ARENA_MAX, 1),
        (libc::M_TRIM_THRESHOLD, 128 << 10),
        (libc::M_MMAP_THRESHOLD, 128 << 10),
    ] {
        // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
        if unsafe { libc::mallopt(param, value) } != 1 {
            log::debug!("mallopt({param}, {value}) refused");
        }
    }
}

#[cfg(not(target_env = "gnu"))]
fn tune_allocator() {}

/// Runs the daemon with the mode's source until a signal or a fatal error.
fn serve<S: AddressSource>(
    args: DaemonArgs,
    config: Config,
    mut store: Store,
    mut state: State,
    source: S,
    allocations: Vec<StoredAllocation>,
    _lock: crate::store::StoreLock,
) -> Result<()> {
    let now = now_ms();
    let core = Core::new(
        source,
        allocations,
        config.orphan_grace_period.as_secs(),
        now,
    );
    core.write_state(&mut state);
    state.schema = crate::store::SCHEMA;
    let started = Instant::now();
    // A snapshot: what was loaded (a snapshot and its log) becomes one file, and a log cycle starts.
    store.snapshot(&state)?;
    crate::metrics::global()
        .state_save
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = crate::sysctl::set("net/ipv4/ip_forward", "1") {
        log::warn!("cannot enable IPv4 forwarding: {e}");
    }
    let (tx, rx) = mpsc::channel::<Msg<S::Done>>();
    let job_tx = tx.clone();
    let workers = Workers::start(core.source().workers(), move |d| {
        job_tx.send(Msg::Job(d)).is_ok()
    })?;
    let metrics = crate::metrics::global().clone();
    metrics.set_info(config.daemon_mode.name());
    let pool = core.source().metrics(now, core.allocations());
    metrics.set_pool(&pool);
    let metrics_socket = metrics_server::start(&config, metrics.clone())?;
    let listener = server::bind(&config.socket_path)?;
    if let Err(e) = crate::rpc::hint::write(&config.socket_path, core.source().new_pod_datapath()) {
        log::warn!("{e} (ADDs still work, without building the veth while the address is chosen)");
    }
    spawn_signal_thread(tx.clone())?;
    let teardowns = spawn_teardown_thread(tx.clone())?;
    let acceptor_tx = tx.clone();
    let gate = server::Gate::new();
    let acceptor_gate = gate.clone();
    std::thread::Builder::new()
        .name("rpc-accept".into())
        .stack_size(THREAD_STACK)
        .spawn(move || server::accept_loop(listener, acceptor_tx, acceptor_gate))
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
    let mut notifier = notify::Notifier::from_env();
    notifier.ready(status_line(config.daemon_mode, &pool));
    let mut daemon = Daemon {
        config_path: args.config,
        config,
        store,
        state,
        core,
        workers,
        teardowns,
        next_sweep: 0,
        gate: gate.clone(),
        notifier,
        metrics,
    };
    let result = daemon.event_loop(&rx);
    if let Err(e) = &result {
        gate.stop(&e.msg);
    }
    // Requests parked in the core (ADDs waiting for capacity) learn that it is stopping.
    drop(daemon);
    finish(&gate, &rx, Instant::now() + STOP_GRACE);
    let _ = std::fs::remove_file(&socket_path);
    crate::rpc::hint::remove(&socket_path);
    let _ = std::fs::remove_file(&metrics_socket);
    result
}

/// After the loop stopped: answers what still reaches it with "stopping" and waits, until
/// `deadline` at most, for every reply handed to a connection to be written. Exiting earlier
/// would close those connections without a reply.
fn finish<D>(gate: &server::Gate, rx: &Receiver<Msg<D>>, deadline: Instant) {
    while gate.unanswered() > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::warn!(
                "{} repl(ies) not written within {} s of stopping",
                gate.unanswered(),
                STOP_GRACE.as_secs()
            );
            return;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(10))) {
            Ok(Msg::Rpc(_, reply)) => {
                let e = gate
                    .stopping()
                    .unwrap_or_else(|| Error::new(Kind::TryAgain, "terway daemon is stopping"));
                let _ = reply.send(Err(e));
            }
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(left.min(Duration::from_millis(10)))
            }
        }
    }
}

/// A failed save as the callers see it: a state file error (104) naming the file.
fn save_failed(path: &Path, e: Error) -> Error {
    let p = path.display().to_string();
    let msg = if e.msg.contains(&p) {
        e.msg
    } else {
        format!("save state file {p}: {}", e.msg)
    };
    Error::new(
        Kind::State,
        format!(
            "{msg}; the daemon stops so that the state file stays the truth (nothing unsaved was handed out)"
        ),
    )
}

fn spawn_signal_thread<D: Send + 'static>(tx: Sender<Msg<D>>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .ctx("install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(THREAD_STACK)
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

/// The thread that removes the veth datapaths of DEL'd pods (see `Request::Delete`): the
/// kernel takes tens of milliseconds to unregister a device, which the plugin (and with it the
/// runtime) no longer waits for. It runs in the daemon's namespace, the node's.
fn spawn_teardown_thread<D: Send + 'static>(tx: Sender<Msg<D>>) -> Result<Sender<Allocation>> {
    let (jobs, rx) = mpsc::channel::<Allocation>();
    std::thread::Builder::new()
        .name("teardown".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            for a in rx {
                let att = crate::datapath::attach::Attachment {
                    container_id: &a.key.container_id,
                    ifname: &a.key.ifname,
                    netns: None,
                    mtu: 0,
                };
                let done = crate::datapath::attach::teardown(&att, Some((&a.address, &a.datapath)))
                    .map_err(|e| e.to_string());
                if tx.send(Msg::TornDown(a.key, done)).is_err() {
                    break;
                }
            }
        })
        .ctx("spawn the teardown thread")?;
    Ok(jobs)
}

/// Stack of the daemon's helper threads: they parse small JSON and do blocking I/O, far below
/// this; the default (2 MiB) is address space only, but what a thread touched stays resident.
pub const THREAD_STACK: usize = 256 << 10;

struct Daemon<S: AddressSource> {
    config_path: PathBuf,
    config: Config,
    store: Store,
    state: State,
    core: Core<S>,
    workers: Workers<S::Done>,
    teardowns: Sender<Allocation>,
    next_sweep: u64,
    gate: Arc<server::Gate>,
    notifier: notify::Notifier,
    metrics: Arc<crate::metrics::Metrics>,
}

/// What systemd shows for the daemon: pods served and idle addresses.
fn status_line(mode: Mode, pool: &crate::metrics::PoolSnapshot) -> String {
    format!(
        "{mode} mode: {} pod(s), {} idle, capacity {}",
        pool.in_use, pool.idle, pool.capacity
    )
}

impl<S: AddressSource> Daemon<S> {
    fn event_loop(&mut self, rx: &Receiver<Msg<S::Done>>) -> Result<()> {
        loop {
            let now = now_ms();
            let wait = self
                .core
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
    fn handle_batch(&mut self, batch: Vec<Msg<S::Done>>) -> Result<bool> {
        let now = now_ms();
        let mut out = Outbox::default();
        let mut stop = None;
        for msg in batch {
            match msg {
                Msg::Rpc(req, reply_tx) => self.core.handle(req, reply_tx, now, &mut out),
                Msg::Job(done) => self.core.apply(done, now, &mut out),
                Msg::TornDown(key, done) => self.core.torn_down(&key, done, now, &mut out),
                Msg::Signal(SIGHUP) => {
                    self.reload();
                    out.touch();
                }
                Msg::Signal(sig) => {
                    log::info!("terway daemon: signal {sig}, shutting down");
                    stop = Some(sig);
                }
            }
        }
        if stop.is_none() {
            if now >= self.next_sweep {
                self.next_sweep = now + sweep::EVERY_MS;
                self.sweep(now, &mut out);
            }
            for job in self.core.tick(now, &mut out) {
                if !self.workers.submit(job) {
                    log::error!("a cloud job was planned but no worker takes it");
                }
            }
        }
        let mut fatal = None;
        if out.dirty() || stop.is_some() {
            self.core.write_state(&mut self.state);
            let started = Instant::now();
            // At a clean stop a snapshot, so that the state file alone is the state.
            let saved = if stop.is_some() {
                self.store.snapshot(&self.state)
            } else {
                self.store.save(&self.state)
            };
            self.metrics
                .state_save
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = saved {
                // Fail-stop: what is in memory but not on disk must not be handed out. The
                // state on disk stays the truth; the restarted daemon reconciles from it. Every
                // reply of the batch gets the error (a read may show unsaved state), and from
                // now on nothing is answered with success.
                let e = save_failed(self.store.path(), e);
                log::error!("{e}");
                self.gate.stop(&e.msg);
                for r in out.replies.iter_mut() {
                    r.1 = Err(e.clone());
                }
                fatal = Some(e);
            }
        }
        if let Some(sig) = stop {
            self.notifier.stopping();
            self.gate.stop(&format!("signal {sig}"));
        }
        // The replies first: what follows only reports, and a pod's ADD waits for its reply.
        let dirty = out.dirty();
        for (tx, resp) in out.replies {
            let _ = tx.send(resp);
        }
        if stop.is_none() && dirty && fatal.is_none() {
            let pool = self.core.source().metrics(now, self.core.allocations());
            self.metrics.set_pool(&pool);
            self.notifier
                .status(status_line(self.config.daemon_mode, &pool));
        }
        for a in out.teardowns {
            // Only when the thread is gone (the daemon is stopping): the allocation stays on
            // disk, address held, and GC or the sweep remove it later.
            let _ = self.teardowns.send(a);
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(stop.is_some()),
        }
    }

    /// Releases allocations whose pod is gone for good (see `sweep`).
    fn sweep(&mut self, now: u64, out: &mut Outbox) {
        let grace = self.config.orphan_grace_period.as_secs();
        let allocs: Vec<StoredAllocation> = self.core.allocations().values().cloned().collect();
        for key in sweep::find(&allocs, now / 1000, grace) {
            if self.core.release(&key, now).is_some() {
                out.touch();
            }
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
        if let Err(e) = self.core.reload(&config) {
            log::error!("reload: keeping the running config: {e}");
            return;
        }
        for (what, old, new) in [
            ("socket_path", &self.config.socket_path, &config.socket_path),
            ("state_path", &self.config.state_path, &config.state_path),
            (
                "metrics_socket",
                &self.config.metrics_socket_path(),
                &config.metrics_socket_path(),
            ),
        ] {
            if old != new {
                log::warn!("reload: {what} changes only on restart");
            }
        }
        if config.metrics_listen != self.config.metrics_listen {
            log::warn!("reload: metrics_listen changes only on restart");
        }
        self.config = Config {
            socket_path: self.config.socket_path.clone(),
            state_path: self.config.state_path.clone(),
            metrics_socket: self.config.metrics_socket.clone(),
            metrics_listen: self.config.metrics_listen,
            ..config
        };
        log::info!("reload: config {} applied", self.config_path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_save_is_a_state_error_naming_the_file_once() {
        let path = Path::new("/var/lib/terway/state.json");
        let io = Error::new(
            Kind::Io,
            "save state file /var/lib/terway/state.json: create /var/lib/terway/state.json.tmp: Read-only file system (os error 30)",
        );
        let e = save_failed(path, io);
        assert_eq!(e.kind.cni_code(), 104);
        assert!(
            e.msg
                .starts_with("save state file /var/lib/terway/state.json: create "),
            "{e}"
        );
        assert!(e.msg.contains("the daemon stops"), "{e}");
        let e = save_failed(path, Error::new(Kind::Internal, "encode state: boom"));
        assert_eq!(e.kind, Kind::State);
        assert!(
            e.msg
                .starts_with("save state file /var/lib/terway/state.json: encode state: boom"),
            "{e}"
        );
    }

    #[test]
    fn on_stop_replies_are_written_before_finish_returns_and_late_requests_hear_why() {
        use crate::rpc::{Reply, StatusView, client::call};
        let dir = std::env::temp_dir().join(format!("terway-finish-{}", std::process::id()));
        let socket = dir.join("t.sock");
        let listener = server::bind(&socket).unwrap();
        let gate = server::Gate::new();
        let (tx, rx) = mpsc::channel::<Msg<()>>();
        let g = gate.clone();
        std::thread::spawn(move || server::accept_loop(listener, tx, g));
        let s = socket.clone();
        let client = std::thread::spawn(move || call(&s, &Request::Status, Duration::from_secs(5)));
        // The loop's part: take the request, stop, answer it, then finish.
        let Ok(Msg::Rpc(Request::Status, reply)) = rx.recv_timeout(Duration::from_secs(5)) else {
            panic!("no request reached the loop");
        };
        assert_eq!(gate.unanswered(), 1);
        gate.stop("save state file /x: disk full");
        let status = StatusView {
            mode: "VPC".into(),
            free: 1,
        };
        reply.send(Ok(Reply::Status(status.clone()))).unwrap();
        finish(&gate, &rx, Instant::now() + Duration::from_secs(5));
        assert_eq!(gate.unanswered(), 0);
        assert_eq!(client.join().unwrap().unwrap(), Reply::Status(status));
        // After the stop nothing reaches the loop; the caller hears why, as "try again".
        let e = call(&socket, &Request::Pool, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.error.kind, Kind::TryAgain);
        assert!(
            e.error
                .msg
                .contains("stopping (save state file /x: disk full)"),
            "{}",
            e.error
        );
        assert!(rx.try_recv().is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
