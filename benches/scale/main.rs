//! Cluster scale by simulation: the real shared-ENI pool (`terway::pool::shared_eni`) on every
//! node, the daemon's cloud jobs call for call, and the emulator's cloud model behind
//! region-wide rate limits, in virtual time. See README "Performance".
//!
//! `cargo bench --bench scale -- [--nodes N] [--pods N] [--seed N] [--policy pool|naive|both]
//!  [--limit Action=perMinute]… [--resync-ms N] [--rollout-s N] [--ramp-s N] [--drain-nodes N]
//!  [--api-ms N] [--attach-ms N] [--emulator-windows]`

mod jobs;
mod node;
mod region;
mod rng;
mod scenario;
mod world;

use scenario::{Params, Report};
use world::Src;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bench scale: {e}");
        std::process::exit(2);
    }
}

fn real_main() -> Result<(), String> {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: a small smoke run
    // then (the full cluster takes minutes in a debug build); tests/scale_sim.rs checks the logic.
    let smoke = std::env::args().len() == 1;
    let mut p = match smoke {
        true => Params::cluster(20, 10),
        false => Params::cluster(2000, 50),
    };
    let mut policy = match smoke {
        true => "pool".to_string(),
        false => "both".to_string(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let num = |s: String, name: &str| -> Result<u64, String> {
            s.parse()
                .map_err(|_| format!("{name}: {s:?} is not a whole number"))
        };
        match a.as_str() {
            "--nodes" => p.nodes = num(val(&a)?, &a)? as usize,
            "--pods" => p.pods_per_node = num(val(&a)?, &a)? as usize,
            "--seed" => p.seed = num(val(&a)?, &a)?,
            "--resync-ms" => p.resync_ms = num(val(&a)?, &a)?,
            "--rollout-s" => p.rollout_ms = num(val(&a)?, &a)? * 1000,
            "--ramp-s" => p.ramp_ms = num(val(&a)?, &a)? * 1000,
            "--drain-nodes" => p.drain_nodes = num(val(&a)?, &a)? as usize,
            // Fixed latencies instead of the distributions (to mirror an emulator run).
            "--api-ms" => {
                let ms = num(val(&a)?, &a)?;
                p.api = rng::Latency {
                    floor_ms: ms,
                    mean_extra_ms: 0.0,
                    cap_ms: ms,
                };
            }
            "--attach-ms" => {
                let ms = num(val(&a)?, &a)?;
                p.attach = rng::Latency {
                    floor_ms: ms,
                    mean_extra_ms: 0.0,
                    cap_ms: ms,
                };
            }
            "--policy" => policy = val(&a)?,
            "--emulator-windows" => p.windows = true,
            "--limit" => {
                let v = val(&a)?;
                let (k, n) = v
                    .split_once('=')
                    .ok_or(format!("--limit {v:?}: want Action=callsPerMinute"))?;
                p.limits
                    .push((k.to_string(), num(n.to_string(), "--limit")? as u32));
            }
            // What cargo bench passes to every bench target.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if p.nodes == 0 || p.pods_per_node == 0 {
        return Err("--nodes and --pods must be at least 1".into());
    }
    p.drain_nodes = p
        .drain_nodes
        .min(p.nodes / 10)
        .max(usize::from(p.nodes > 1));
    println!(
        "cluster scale simulation: {} nodes × {} pods ({} pods), {INSTANCE}, seed {}, resync every {} s",
        p.nodes,
        p.pods_per_node,
        p.nodes * p.pods_per_node,
        p.seed,
        p.resync_ms / 1000
    );
    let mut reports = Vec::new();
    for which in ["pool", "naive"] {
        if policy != "both" && policy != which {
            continue;
        }
        // The calls the policy needs: the same scenario with no rate limit at all.
        let free = p.unlimited();
        let needed = match which {
            "pool" => scenario::run_pool(&free)?,
            _ => scenario::run_naive(&free)?,
        };
        let t = std::time::Instant::now();
        let r = match which {
            "pool" => scenario::run_pool(&p)?,
            _ => scenario::run_naive(&p)?,
        };
        print_report(&r, &needed, t.elapsed());
        reports.push(r);
    }
    if reports.is_empty() {
        return Err(format!("--policy {policy:?}: want pool, naive or both"));
    }
    Ok(())
}

const INSTANCE: &str = "ecs.g7.4xlarge (7 secondary ENIs × 30 IPs)";

fn secs(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

fn print_report(r: &Report, needed: &Report, wall: std::time::Duration) {
    println!();
    println!(
        "== policy {}: {:.1} s virtual, {:.2} s wall",
        r.policy,
        r.virtual_ms as f64 / 1000.0,
        wall.as_secs_f64()
    );
    println!(
        "{:<16} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6} {:>9} {:>10} {:>9} {:>9}",
        "phase",
        "pods",
        "unready",
        "p50_s",
        "p99_s",
        "max_s",
        "all_rdy_s",
        "floor_s",
        "ratio",
        "unlim_s",
        "calls/pod",
        "throttled",
        "gave_up"
    );
    for (ph, free) in r.phases.iter().zip(&needed.phases) {
        // The floor: calls the policy's operations need (the unlimited run's) over the
        // region's budgets; the periodic resync is load on top, not work for the pods.
        let (floor, _) = free.floor_ms(&r.limiter, Some(Src::Op));
        let ratio = if floor > 0 {
            format!("{:.2}", ph.span_ms as f64 / floor as f64)
        } else {
            "-".into()
        };
        let calls = ph.sum(None, |c| c.ok);
        println!(
            "{:<16} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6} {:>9} {:>10.3} {:>9} {:>9}",
            ph.name,
            ph.pods,
            ph.unready,
            secs(ph.pct(0.5)),
            secs(ph.pct(0.99)),
            secs(ph.ready_ms.last().copied().unwrap_or(0)),
            secs(ph.span_ms),
            secs(floor),
            ratio,
            secs(free.span_ms),
            calls as f64 / ph.pods.max(1) as f64,
            ph.sum(None, |c| c.throttled),
            ph.sum(None, |c| c.gave_up),
        );
    }
    println!("calls per pod by action (accepted requests; throttled and given-up attempts apart):");
    println!(
        "{:<16} {:<28} {:<6} {:>8} {:>9} {:>9} {:>9}",
        "phase", "action", "by", "accepted", "per_pod", "throttled", "gave_up"
    );
    for ph in &r.phases {
        for ((action, src), c) in &ph.calls {
            println!(
                "{:<16} {:<28} {:<6} {:>8} {:>9.4} {:>9} {:>9}",
                ph.name,
                action,
                match src {
                    Src::Op => "pool",
                    Src::Resync => "resync",
                },
                c.ok,
                c.ok as f64 / ph.pods.max(1) as f64,
                c.throttled,
                c.gave_up
            );
        }
        let ops = ph.sum(Some(Src::Op), |c| c.ok);
        println!(
            "{:<16} {:<28} {:<6} {:>8} {:>9.4}   (kubelet ADDs {})",
            ph.name,
            "all pool/naive ops",
            "",
            ops,
            ops as f64 / ph.pods.max(1) as f64,
            ph.adds,
        );
    }
    println!(
        "floors (calls over the region's budgets): needed = the operations' calls in the same \
         scenario with no rate limit; spent = every call this run got accepted, resync included:"
    );
    for (ph, free) in r.phases.iter().zip(&needed.phases) {
        let (need, by) = free.floor_ms(&r.limiter, Some(Src::Op));
        let (spent, spent_by) = ph.floor_ms(&r.limiter, None);
        let (resync, resync_by) = ph.floor_ms(&r.limiter, Some(Src::Resync));
        println!(
            "{:<16} needed {:>8} s (set by {by}: {} calls); spent {:>8} s (set by {spent_by}); \
             resync alone {:>8} s (set by {resync_by})",
            ph.name,
            secs(need),
            free.calls
                .iter()
                .filter(|((a, s), _)| *a == by && *s == Src::Op)
                .map(|(_, c)| c.ok)
                .sum::<u64>(),
            secs(spent),
            secs(resync),
        );
    }
    println!(
        "at the end: {} pods, {} idle addresses held by the daemons, {} addresses taken in the vSwitches",
        r.pods_end, r.idle_end, r.addresses_end
    );
}
