//! The CNI commands: ADD, DEL, CHECK, VERSION, GC, STATUS.
//!
//! The plugin asks the daemon for an address, wires the pod, and prints the result. It never
//! exits with anything but 0 or 1; on failure the CNI error object on stdout carries the code.

use super::conf::{NetConf, version_at_least};
use super::env::{Command, Env};
use super::lock::{AttachLock, lock_dir};
use super::result::{CniResult, error_json, version_json};
use crate::datapath::{self, attach, attach::Attachment};
use crate::model::Datapath;
use crate::netns::NetNs;
use crate::rpc::client::{self, CallError, call};
use crate::rpc::hint;
use crate::rpc::{Allocation, Reply, Request};
use crate::{Error, Kind, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// ADD may wait while the daemon grows the pool (bounded there at 60 s by default).
const ALLOC_TIMEOUT: Duration = Duration::from_secs(75);
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// DEL must not hold up pod deletion behind a hung daemon.
const DEL_TIMEOUT: Duration = Duration::from_secs(3);

/// Entry point when a runtime execs us; returns the process exit status (0 or 1).
pub fn main() -> u8 {
    // A panic is a bug: say so on stderr; `catch_unwind` below turns it into one error object.
    std::panic::set_hook(Box::new(|info| eprintln!("terway plugin bug: {info}")));
    let var = |name: &str| std::env::var(name).ok();
    super::log::init(
        var("CNI_COMMAND").as_deref(),
        var("CNI_CONTAINERID").as_deref(),
        var("TERWAY_LOG").as_deref(),
    );
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(None, &Error::io("read network config from stdin", e));
    }
    let outcome = std::panic::catch_unwind(|| run(Env::from_process(), &stdin));
    let (version, outcome) = match outcome {
        Ok(r) => r,
        Err(_) => (
            requested_version(&stdin),
            Err(Error::new(
                Kind::Internal,
                "terway plugin bug: it panicked (details on stderr); please report it",
            )),
        ),
    };
    match outcome {
        Ok(Some(out)) => {
            emit(&out.to_string());
            0
        }
        Ok(None) => 0,
        Err(e) => fail(version.as_deref(), &e),
    }
}

fn fail(version: Option<&str>, e: &Error) -> u8 {
    emit(&error_json(version, e).to_string());
    1
}

/// Writes one line to stdout. A runtime that closed its end gets nothing; the exit status
/// still says what happened (the plugin exits 0 or 1, never with a panic's 101).
fn emit(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}").and_then(|_| o.flush());
}

/// The `cniVersion` the config asks for, if it can be read at all: errors should carry it even
/// when something else in the config (or the environment) is wrong.
fn requested_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let s = v.get("cniVersion")?.as_str()?;
    super::conf::SUPPORTED_VERSIONS
        .contains(&s)
        .then(|| s.to_string())
}

/// Runs one command; returns the negotiated version (for the error object) and the output.
fn run(env: Result<Env>, stdin: &[u8]) -> (Option<String>, Result<Option<Value>>) {
    let env = match env {
        Ok(e) => e,
        Err(e) => return (requested_version(stdin), Err(e)),
    };
    if env.command == Command::Version {
        return (None, Ok(Some(version_json())));
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return (requested_version(stdin), Err(e)),
    };
    let version = Some(conf.cni_version.clone());
    let out = match env.command {
        Command::Add => add(&env, &conf).map(Some),
        Command::Del => del(&env, &conf).map(|_| None),
        Command::Check => check(&env, &conf).map(|_| None),
        Command::Gc => gc(&conf).map(|_| None),
        Command::Status => status(&conf).map(|_| None),
        Command::Version => Ok(Some(version_json())),
    };
    (version, out)
}

fn open_netns(path: &str) -> Result<NetNs> {
    let ns = NetNs::open(Path::new(path))
        .map_err(|e| Error::new(Kind::InvalidEnv, format!("CNI_NETNS {}", e.msg)))?;
    let node = ns
        .is_node_namespace()
        .map_err(|e| Error::new(Kind::InvalidEnv, format!("CNI_NETNS {}", e.msg)))?;
    if node {
        return Err(Error::new(
            Kind::InvalidEnv,
            format!(
                "CNI_NETNS {path} is the node's own network namespace, not a pod's: refusing to wire it"
            ),
        ));
    }
    Ok(ns)
}

/// The attachment's lock (see `lock`), waiting up to `wait`; `None` when another call on the
/// same attachment held it all that time.
fn lock_attachment(env: &Env, conf: &NetConf, wait: Duration) -> Result<Option<AttachLock>> {
    AttachLock::acquire(
        &lock_dir(&conf.daemon_socket),
        &datapath::host_veth_name(&env.container_id, &env.ifname),
        wait,
    )
}

fn busy(env: &Env, conf: &NetConf, what: &str) -> Error {
    Error::new(
        Kind::TryAgain,
        format!(
            "{what} {}: another call on this attachment is still running",
            env.key(&conf.name)
        ),
    )
}

fn attachment<'a>(env: &'a Env, conf: &NetConf, netns: Option<&'a NetNs>) -> Attachment<'a> {
    Attachment {
        container_id: &env.container_id,
        ifname: &env.ifname,
        netns,
        mtu: conf.mtu,
    }
}

/// The datapath as this network's config wants it: `disable_host_peer` drops the exclusive
/// ENI's veth to the node.
fn as_configured(dp: &Datapath, conf: &NetConf) -> Datapath {
    match dp {
        Datapath::ExclusiveEni { eni_id, mac, .. } if conf.disable_host_peer => {
            Datapath::ExclusiveEni {
                eni_id: eni_id.clone(),
                mac: mac.clone(),
                host_peer: None,
            }
        }
        other => other.clone(),
    }
}

fn add(env: &Env, conf: &NetConf) -> Result<Value> {
    // Validate the namespace before taking an address for it.
    let netns = open_netns(&env.netns)?;
    let Some(_lock) = lock_attachment(env, conf, ALLOC_TIMEOUT)? else {
        return Err(busy(env, conf, "ADD"));
    };
    let key = env.key(&conf.name);
    let pending = client::start(
        &conf.daemon_socket,
        &Request::Alloc {
            key: key.clone(),
            pod: env.pod(),
            netns: env.netns.clone(),
        },
        ALLOC_TIMEOUT,
    )?;
    let att = attachment(env, conf, Some(&netns));
    // While the daemon chooses the address: the veth pair, which needs none (only once the
    // request is out: a daemon that refused it answers at once). A failure here is not the
    // ADD's: setup builds the pair again after the reply and reports what fails then.
    let early = if pending.sent() && hint::wants_veth(&conf.daemon_socket) {
        attach::prepare_veth(&att)
            .inspect_err(|e| log::debug!("veth not prepared early: {e}"))
            .ok()
            .flatten()
    } else {
        None
    };
    let alloc = match pending.finish() {
        Ok(Reply::Allocated(alloc)) => alloc,
        other => {
            if let Some(p) = early {
                p.discard();
            }
            let reply = other?;
            return Err(unexpected(&reply));
        }
    };
    let datapath = as_configured(&alloc.datapath, conf);
    let wired = match attach::setup_prepared(&att, &alloc.address, &datapath, early) {
        Ok(w) => w,
        Err(e) => {
            // Undo only what this call created: an allocation that already existed (a retried
            // ADD) stays with its attachment until DEL.
            if let Some(grant) = alloc.grant.filter(|g| g.created) {
                let _ = call(
                    &conf.daemon_socket,
                    &Request::Rollback {
                        key: key.clone(),
                        token: grant.token,
                    },
                    CALL_TIMEOUT,
                );
            }
            return Err(e.context(format!("set up pod {} ({key})", env.pod())));
        }
    };
    Ok(CniResult::from_wired(&conf.cni_version, &wired, &env.netns).to_json())
}

/// DEL never blocks pod deletion: the wiring is removed first, then the address released; when
/// the daemon is down the address stays recorded and GC (or the daemon's own sweep) frees it.
/// A veth pod's wiring is removed by the daemon after it answers (`Request::Delete`): the
/// kernel's device unregistration is off the runtime's path, and the daemon frees the address
/// only after it.
/// Only objects that provably belong to this attachment are touched (see `attach::teardown`);
/// `prevResult` is never trusted for names or addresses.
fn del(env: &Env, conf: &NetConf) -> Result<()> {
    let key = env.key(&conf.name);
    let lock = match lock_attachment(env, conf, DEL_TIMEOUT) {
        Ok(Some(l)) => Some(l),
        Ok(None) => {
            eprintln!(
                "terway: DEL {key}: another call on this attachment is still running; its address is reclaimed by GC or the daemon's sweep once the pod is gone"
            );
            return Ok(());
        }
        Err(e) => {
            // Never block pod deletion: tear down without the lock, but leave the release to
            // GC or the sweep (an ADD on this attachment could be wiring the address).
            eprintln!("terway: DEL {key}: {e}; its address is reclaimed later by GC or the sweep");
            None
        }
    };
    let locked = lock.is_some();
    // Without the lock an ADD may be wiring this attachment: only look, never hand over.
    let ask = if locked {
        Request::Delete { key: key.clone() }
    } else {
        Request::Get { key: key.clone() }
    };
    let lookup = call(&conf.daemon_socket, &ask, DEL_TIMEOUT);
    if let Ok(Reply::TearingDown(_)) = lookup {
        if let Some(l) = lock {
            l.remove();
        }
        return Ok(());
    }
    // The namespace may be gone (CNI_NETNS empty or deleted): what lives in it went with it.
    let netns = (!env.netns.is_empty())
        .then(|| open_netns(&env.netns).ok())
        .flatten();
    let att = attachment(env, conf, netns.as_ref());
    let daemon_down = lookup.is_err();
    let known = match &lookup {
        Ok(Reply::Found(Some(a))) => Some(a),
        _ => None,
    };
    let shown = match known {
        Some(a) => a.address.to_string(),
        None => describe_ips(&attach::routed_ips(&env.container_id, &env.ifname)),
    };
    let datapath = known.map(|a| as_configured(&a.datapath, conf));
    let teardown = attach::teardown(&att, known.map(|a| &a.address).zip(datapath.as_ref()));
    if let Err(e) = teardown {
        eprintln!("terway: DEL {key}: {e}");
        // Keep the address held so nobody gets it while the old route may still exist; GC
        // retries the teardown and releases it once the container is gone for good.
        return Ok(());
    }
    if !locked {
        return Ok(());
    }
    if daemon_down {
        eprintln!(
            "terway: DEL {key}: the daemon did not answer; the address {shown} is reclaimed later by GC or the daemon's sweep"
        );
        return Ok(());
    }
    match call(
        &conf.daemon_socket,
        &Request::Release { key: key.clone() },
        DEL_TIMEOUT,
    ) {
        Ok(_) => {
            if let Some(l) = lock {
                l.remove();
            }
            Ok(())
        }
        Err(CallError {
            unreachable: true,
            error,
        }) => {
            eprintln!("terway: DEL {key}: {error}; the address {shown} is reclaimed later by GC");
            Ok(())
        }
        Err(e) => {
            eprintln!("terway: DEL {key}: release: {}", e.error);
            Ok(())
        }
    }
}

fn describe_ips(ips: &[std::net::IpAddr]) -> String {
    if ips.is_empty() {
        "(unknown)".into()
    } else {
        ips.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn check(env: &Env, conf: &NetConf) -> Result<()> {
    if !version_at_least(&conf.cni_version, "0.4.0") {
        return Err(Error::new(
            Kind::IncompatibleVersion,
            format!(
                "CHECK needs cniVersion 0.4.0 or later, got {}",
                conf.cni_version
            ),
        ));
    }
    let netns = open_netns(&env.netns)?;
    let Some(_lock) = lock_attachment(env, conf, CALL_TIMEOUT)? else {
        return Err(busy(env, conf, "CHECK"));
    };
    let key = env.key(&conf.name);
    let reply = call(
        &conf.daemon_socket,
        &Request::Get { key: key.clone() },
        CALL_TIMEOUT,
    )?;
    let alloc: Allocation = match reply {
        Reply::Found(Some(a)) => a,
        Reply::Found(None) => {
            return Err(Error::new(
                Kind::UnknownContainer,
                format!("CHECK: the daemon has no allocation for {key}"),
            ));
        }
        other => return Err(unexpected(&other)),
    };
    if let Some(problem) = &alloc.problem {
        return Err(Error::new(
            Kind::Datapath,
            format!("CHECK {key}: {problem}"),
        ));
    }
    let prev = conf.prev_ips();
    let daemons: Vec<std::net::IpAddr> = alloc.address.ips().collect();
    let same =
        prev.iter().all(|ip| daemons.contains(ip)) && daemons.iter().all(|ip| prev.contains(ip));
    if !prev.is_empty() && !same {
        return Err(Error::new(
            Kind::Datapath,
            format!(
                "CHECK {key}: prevResult says {} but the daemon allocated {}",
                prev.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                alloc.address
            ),
        ));
    }
    let att = attachment(env, conf, Some(&netns));
    attach::check(&att, &alloc.address, &as_configured(&alloc.datapath, conf))
        .map_err(|e| e.context(format!("CHECK {key}")))
}

fn gc(conf: &NetConf) -> Result<()> {
    if !version_at_least(&conf.cni_version, "1.1.0") {
        return Err(Error::new(
            Kind::IncompatibleVersion,
            format!("GC needs cniVersion 1.1.0, got {}", conf.cni_version),
        ));
    }
    let Some(valid) = conf.valid_attachments.clone() else {
        return Err(Error::new(
            Kind::InvalidConfig,
            "GC: \"cni.dev/valid-attachments\" is missing",
        ));
    };
    let reply = call(
        &conf.daemon_socket,
        &Request::Gc {
            network: conf.name.clone(),
            valid,
        },
        CALL_TIMEOUT,
    )?;
    let Reply::Collected(stale) = reply else {
        return Err(unexpected(&reply));
    };
    // Wiring first, then the address: an address is never free while a route still points at
    // an old veth. Keep going on errors: one stuck link must not keep the others. An
    // attachment another call is working on right now is left for the next GC.
    for a in stale {
        let name = datapath::host_veth_name(&a.key.container_id, &a.key.ifname);
        let lock = match AttachLock::acquire(&lock_dir(&conf.daemon_socket), &name, Duration::ZERO)
        {
            Ok(Some(l)) => l,
            Ok(None) => {
                eprintln!(
                    "terway: GC {}: a call on it is running; left for the next GC",
                    a.key
                );
                continue;
            }
            Err(e) => {
                eprintln!("terway: GC {}: {e}; keeping its address", a.key);
                continue;
            }
        };
        let att = Attachment {
            container_id: &a.key.container_id,
            ifname: &a.key.ifname,
            netns: None,
            mtu: conf.mtu,
        };
        let datapath = as_configured(&a.datapath, conf);
        if let Err(e) = attach::teardown(&att, Some((&a.address, &datapath))) {
            eprintln!("terway: GC {}: {e}; keeping its address", a.key);
            continue;
        }
        match call(
            &conf.daemon_socket,
            &Request::Release { key: a.key.clone() },
            CALL_TIMEOUT,
        ) {
            Ok(_) => lock.remove(),
            Err(e) => eprintln!("terway: GC {}: release: {}", a.key, e.error),
        }
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<()> {
    if !version_at_least(&conf.cni_version, "1.1.0") {
        return Err(Error::new(
            Kind::IncompatibleVersion,
            format!("STATUS needs cniVersion 1.1.0, got {}", conf.cni_version),
        ));
    }
    match call(&conf.daemon_socket, &Request::Status, CALL_TIMEOUT) {
        Ok(Reply::Status(s)) if s.free > 0 => Ok(()),
        Ok(Reply::Status(s)) => Err(Error::new(
            Kind::NotAvailable,
            format!("terway daemon ({} mode) has no free address", s.mode),
        )),
        Ok(other) => Err(unexpected(&other)),
        Err(e) => Err(Error::new(Kind::NotAvailable, e.error.msg)),
    }
}

fn unexpected(reply: &Reply) -> Error {
    Error::new(
        Kind::Internal,
        format!("unexpected reply from the daemon: {reply:?}"),
    )
}
