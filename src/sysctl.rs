//! `/proc/sys` access. Network sysctls resolve against the namespace of the thread that opens the
//! file, so these act in the calling thread's netns.

use crate::err;
use crate::error::{Kind, Result};
use std::path::PathBuf;

/// `net.ipv4.ip_forward` or `net/ipv4/ip_forward` -> `/proc/sys/net/ipv4/ip_forward`. A key with a
/// `/` is taken as a path (needed for interface names containing dots, e.g. `eth0.100`).
fn key_path(key: &str) -> Result<PathBuf> {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let bad = rel.is_empty()
        || rel.starts_with('/')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'));
    if bad {
        return Err(err!(Kind::Internal, "invalid sysctl key {key:?}"));
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// Writes `value` to the sysctl `key`.
pub fn set(key: &str, value: &str) -> Result<()> {
    let path = key_path(key)?;
    std::fs::write(&path, value)
        .map_err(|e| err!(Kind::Datapath, "set sysctl {key} = {value}: {e}"))
}

/// Reads the sysctl `key`, trailing newline removed.
pub fn get(key: &str) -> Result<String> {
    let path = key_path(key)?;
    let s = std::fs::read_to_string(&path)
        .map_err(|e| err!(Kind::Datapath, "read sysctl {key}: {e}"))?;
    Ok(s.trim_end_matches('\n').to_string())
}

/// The `rp_filter` key of one interface (slash form, so dotted interface names work).
pub fn rp_filter_key(ifname: &str) -> String {
    format!("net/ipv4/conf/{ifname}/rp_filter")
}

/// A per-interface IPv6 key, e.g. `net/ipv6/conf/eth0/accept_ra` (slash form, like
/// [`rp_filter_key`]).
pub fn ipv6_conf_key(ifname: &str, leaf: &str) -> String {
    format!("net/ipv6/conf/{ifname}/{leaf}")
}

/// The entries of `net/ipv6/conf` (every interface with IPv6, plus `all` and `default`) in the
/// calling thread's namespace; empty when the kernel has no IPv6.
pub fn ipv6_conf_names() -> Result<Vec<String>> {
    let dir = std::path::Path::new("/proc/sys/net/ipv6/conf");
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err!(Kind::Datapath, "list {}: {e}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| err!(Kind::Datapath, "list {}: {e}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_paths() {
        assert_eq!(
            key_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            key_path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        for bad in ["", "/etc/passwd", "net/../../etc", "net//x", "net."] {
            assert!(key_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = get("net.ipv4.no_such_key_here").unwrap_err();
        assert_eq!(e.kind, Kind::Datapath);
        assert!(e.msg.contains("net.ipv4.no_such_key_here"), "{}", e.msg);
    }

    #[test]
    fn ipv6_keys_take_dotted_names() {
        assert_eq!(
            key_path(&ipv6_conf_key("eth0.100", "accept_ra")).unwrap(),
            PathBuf::from("/proc/sys/net/ipv6/conf/eth0.100/accept_ra")
        );
    }

    #[test]
    fn reads_a_value() {
        let v = get("net.ipv4.ip_forward").unwrap();
        assert!(v == "0" || v == "1", "{v}");
    }
}
