//! The IPv6 side of `--netns`. Routes (/128 per assigned address, route entries) are kept with
//! the IPv4 ones in `topology`; this file holds what IPv6 needs beyond them:
//!
//! - **Spoof protection.** IPv4 uses strict rp_filter, which IPv6 lacks, so the `vpc` namespace
//!   has policy rules per ENI veth: `iif <veth> from <addr>/128 goto 30000` for each address the
//!   ENI owns (and each IPv6 route entry pointing at it, and link-local sources for NDP), then
//!   `iif <veth> prohibit`. The `local` table's rule moves from priority 0 to 30000 so that no
//!   packet, even one to the VPC's own addresses, skips the check. Pure kernel: no ip6tables.
//! - **NDP.** The vSwitch answers for its IPv6 gateway and for every address of the same /64 on
//!   another ENI (as it answers ARP for everything): proxy NDP entries on each veth.
//!
//! Rules and proxy entries go through iproute2 in one batch per change (the netlink module has
//! neither `iif`/`goto`/`prohibit` rules nor proxy entries); the sets applied are remembered so
//! the 100 ms tick forks nothing when nothing changed.

use crate::{Kind, Result, err};
use ipnetwork::Ipv6Network;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv6Addr;
use std::process::{Command, Stdio};

/// Priority of the allow rules (`iif <veth> from <src> goto LOCAL_PREF`).
pub const ALLOW_PREF: u32 = 10000;
/// Priority of the per-veth catch-all `prohibit`.
pub const GUARD_PREF: u32 = 20000;
/// Where the `local` table's rule moves to (from 0), after the checks.
pub const LOCAL_PREF: u32 = 30000;

/// `fe80::/10`, built at compile time (a const panic is a build error, never a runtime one).
const LINK_LOCAL: Ipv6Network =
    match Ipv6Network::new_checked(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10) {
        Some(n) => n,
        None => panic!("fe80::/10 is valid"),
    };

/// Link-local sources pass: NDP needs them, and the kernel never forwards them.
pub fn link_local() -> Ipv6Network {
    LINK_LOCAL
}

/// The EUI-64 link-local address of a MAC: what the kernel gives a fresh ENI device.
pub fn eui64_link_local(mac: [u8; 6]) -> Ipv6Addr {
    let w = |a: u8, b: u8| (u16::from(a) << 8) | u16::from(b);
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        w(mac[0] ^ 0x02, mac[1]),
        w(mac[2], 0xff),
        w(0xfe, mac[3]),
        w(mac[4], mac[5]),
    )
}

/// What the IPv6 policy and NDP of the `vpc` namespace should be, by VPC-side veth name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Want6 {
    /// veth → the sources it may send from (each ENI with a veth has an entry, maybe empty
    /// but for link-local: then it sends no global IPv6 at all).
    pub allowed: BTreeMap<String, BTreeSet<Ipv6Network>>,
    /// veth → the addresses the VPC answers NDP for on it.
    pub proxies: BTreeMap<String, BTreeSet<Ipv6Addr>>,
}

/// What was applied to the kernel.
#[derive(Debug, Default)]
pub struct Applied6 {
    rules: BTreeSet<(String, Ipv6Network)>,
    guards: BTreeSet<String>,
    proxies: BTreeSet<(String, Ipv6Addr)>,
}

fn flatten<T: Ord + Copy>(m: &BTreeMap<String, BTreeSet<T>>) -> BTreeSet<(String, T)> {
    m.iter()
        .flat_map(|(k, v)| v.iter().map(move |x| (k.clone(), *x)))
        .collect()
}

/// The iproute2 batch lines taking `applied` to `want`; deletions first.
pub fn plan(applied: &Applied6, want: &Want6) -> Vec<String> {
    let rules = flatten(&want.allowed);
    let guards: BTreeSet<String> = want.allowed.keys().cloned().collect();
    let proxies = flatten(&want.proxies);
    let rule = |op: &str, (dev, src): &(String, Ipv6Network)| {
        format!("rule {op} pref {ALLOW_PREF} iif {dev} from {src} goto {LOCAL_PREF}")
    };
    let guard = |op: &str, dev: &String| format!("rule {op} pref {GUARD_PREF} iif {dev} prohibit");
    let proxy =
        |op: &str, (dev, ip): &(String, Ipv6Addr)| format!("neigh {op} proxy {ip} dev {dev}");
    let mut out = Vec::new();
    out.extend(applied.rules.difference(&rules).map(|r| rule("del", r)));
    out.extend(applied.guards.difference(&guards).map(|g| guard("del", g)));
    out.extend(
        applied
            .proxies
            .difference(&proxies)
            .map(|p| proxy("del", p)),
    );
    // A guard only after its allow rules, so that no allowed packet is refused meanwhile.
    out.extend(rules.difference(&applied.rules).map(|r| rule("add", r)));
    out.extend(guards.difference(&applied.guards).map(|g| guard("add", g)));
    out.extend(
        proxies
            .difference(&applied.proxies)
            .map(|p| proxy("add", p)),
    );
    out
}

/// Runs `ip -6 -n <ns> -force -batch -` with `lines`. Deletions of what is already gone (a veth
/// removed with its proxy entries) are fine; any other failure is an error naming the line.
pub fn run_batch(ns: &str, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-6", "-n", ns, "-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err!(Kind::Datapath, "run ip -batch in {ns}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| err!(Kind::Datapath, "ip -batch in {ns}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err!(Kind::Datapath, "ip -batch in {ns}: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed: Vec<&String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("Command failed -:"))
        .filter_map(|n| n.trim().parse::<usize>().ok())
        .filter_map(|n| lines.get(n.wrapping_sub(1)))
        .filter(|l| !l.contains(" del "))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(err!(
        Kind::Datapath,
        "ip -6 -n {ns}: {} failed: {}",
        failed
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        stderr.trim()
    ))
}

impl Applied6 {
    /// Applies the difference to `want` in namespace `ns`.
    pub fn sync(&mut self, ns: &str, want: &Want6) -> Result<()> {
        let lines = plan(self, want);
        let r = run_batch(ns, &lines);
        // On failure nothing is trusted: the next tick re-adds everything (adds of what exists
        // fail with "File exists", which then names the real problem only if it persists).
        match &r {
            Ok(()) => {
                self.rules = flatten(&want.allowed);
                self.guards = want.allowed.keys().cloned().collect();
                self.proxies = flatten(&want.proxies);
            }
            Err(_) => *self = Applied6::default(),
        }
        r
    }

    /// Forgets the proxy entries of a veth the kernel removed (its rules stay: they name it).
    pub fn forget_link(&mut self, dev: &str) {
        self.proxies.retain(|(d, _)| d != dev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui64_of_a_mac() {
        assert_eq!(
            eui64_link_local([0x00, 0x16, 0x3e, 0x12, 0x34, 0x56]),
            "fe80::216:3eff:fe12:3456".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn plans_deletions_first_and_guards_after_their_rules() {
        let a: Ipv6Network = "2408::1/128".parse().unwrap();
        let b: Ipv6Network = "2408::2/128".parse().unwrap();
        let mut want = Want6::default();
        want.allowed
            .insert("va".into(), [link_local(), a].into_iter().collect());
        want.proxies.insert(
            "va".into(),
            ["2408::fffd".parse().unwrap()].into_iter().collect(),
        );
        let mut applied = Applied6::default();
        let lines = plan(&applied, &want);
        assert_eq!(
            lines,
            [
                "rule add pref 10000 iif va from 2408::1/128 goto 30000",
                "rule add pref 10000 iif va from fe80::/10 goto 30000",
                "rule add pref 20000 iif va prohibit",
                "neigh add proxy 2408::fffd dev va",
            ]
        );
        applied.rules = flatten(&want.allowed);
        applied.guards = want.allowed.keys().cloned().collect();
        applied.proxies = flatten(&want.proxies);
        assert!(plan(&applied, &want).is_empty(), "nothing changed: no fork");
        want.allowed.get_mut("va").unwrap().remove(&a);
        want.allowed.get_mut("va").unwrap().insert(b);
        assert_eq!(
            plan(&applied, &want),
            [
                "rule del pref 10000 iif va from 2408::1/128 goto 30000",
                "rule add pref 10000 iif va from 2408::2/128 goto 30000",
            ]
        );
        assert_eq!(
            plan(&applied, &Want6::default()).len(),
            4,
            "a detached ENI loses everything"
        );
    }
}
