//! Datapaths: how a pod's interface is wired to the node. One file per datapath, each with
//! `setup` / `check` / `teardown`; [`attach`] is the one interface the plugin uses, choosing the
//! datapath the daemon recorded with the allocation. Host-side work happens in the calling
//! thread's namespace; the pod side is reached through a netlink socket opened inside the pod's
//! namespace.

pub mod attach;
pub mod eni_device;
pub mod exclusive_eni;
pub mod ipv6;
pub mod ipvlan;
pub mod policy;
pub mod veth;

pub use ipv6::POD_GATEWAY_V6;
pub use veth::{Teardown, VethInfo, VethSpec};

use sha2::{Digest, Sha256};
use std::net::Ipv4Addr;

/// The link-local gateway every pod routes through; its MAC is the host veth's.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Every host-side veth terway makes starts with this (DEL only removes such links).
pub const HOST_VETH_PREFIX: &str = "tw";

/// Deterministic host-side veth name: `tw` + 13 hex chars of sha256("<id>/<ifname>"), 15 bytes,
/// so a retried ADD or a DEL without prevResult finds the same link.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    let mut name = String::from(HOST_VETH_PREFIX);
    name.push_str(&hex::encode(digest)[..13]);
    name
}

/// Runs a datapath's check, which notes every missing or wrong piece: all of them in one error.
pub(crate) fn checked(
    what: &str,
    check: impl FnOnce(&mut Vec<String>) -> crate::Result<()>,
) -> crate::Result<()> {
    let mut problems = Vec::new();
    check(&mut problems).map_err(|e| e.context(format!("check {what}")))?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(crate::err!(
            crate::Kind::Datapath,
            "{what} is broken: {}",
            problems.join("; ")
        ))
    }
}

/// The end of a rollback: each step that failed is logged, and all of them are the error.
pub(crate) fn rolled_back(what: &str, failed: Vec<String>) -> crate::Result<()> {
    for msg in &failed {
        log::warn!("rollback of {what}: {msg}");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(crate::err!(crate::Kind::Datapath, "{}", failed.join("; ")))
    }
}

/// The alias terway puts on an attachment's host veth: `terway:` + sha256("<id>/<ifname>") in
/// full. The 15-byte name alone could collide; the alias proves which attachment owns the link.
pub fn host_veth_alias(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    format!("terway:{}", hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_alias_is_the_full_digest() {
        let a = host_veth_alias("abc123", "eth0");
        assert_eq!(a.len(), "terway:".len() + 64);
        assert!(a.ends_with(&hex::encode(Sha256::digest(b"abc123/eth0"))));
        assert_ne!(a, host_veth_alias("abc123", "eth1"));
    }

    #[test]
    fn host_veth_names_are_stable_and_short() {
        let a = host_veth_name("abc123", "eth0");
        assert_eq!(a, host_veth_name("abc123", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("tw"));
        assert!(
            a[2..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, host_veth_name("abc123", "eth1"));
        assert_ne!(a, host_veth_name("abc124", "eth0"));
        // sha256("abc123/eth0") starts with these 13 hex digits.
        let full = hex::encode(Sha256::digest(b"abc123/eth0"));
        assert_eq!(&a[2..], &full[..13]);
    }
}
