//! The `CNI_*` environment a runtime passes to the plugin, validated per command.

use crate::model::{AttachKey, PodRef};
use crate::{Error, Kind, Result};
use std::collections::BTreeMap;
use std::ffi::OsString;

/// Every `CNI_*` variable the plugin reads.
const CNI_VARS: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(Error::new(
                    Kind::InvalidEnv,
                    format!(
                        "CNI_COMMAND \"{other}\" is not one of ADD, DEL, CHECK, VERSION, GC, STATUS"
                    ),
                ));
            }
        })
    }
}

/// The environment of one invocation. Fields a command requires are guaranteed present.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
}

impl Env {
    /// Reads from a lookup function (the process environment in production, a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let command = match get("CNI_COMMAND") {
            Some(c) => Command::parse(&c)?,
            None => return Err(Error::new(Kind::InvalidEnv, "CNI_COMMAND is not set")),
        };
        let required: &[&str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Gc => &["CNI_PATH"],
            Command::Version | Command::Status => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|k| get(k).is_none_or(|v| v.is_empty()))
            .collect();
        if !missing.is_empty() {
            return Err(Error::new(
                Kind::InvalidEnv,
                format!(
                    "{}: required environment variable(s) {} not set",
                    command_name(command),
                    missing.join(", ")
                ),
            ));
        }
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        if required.contains(&"CNI_CONTAINERID") {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        Ok(Env {
            command,
            container_id,
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname,
            args: match command {
                // ADD records who the pod is; elsewhere a malformed field must not block
                // pod deletion or GC.
                Command::Add => parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?,
                _ => parse_cni_args_lenient(&get("CNI_ARGS").unwrap_or_default()),
            },
        })
    }

    pub fn from_process() -> Result<Env> {
        Env::from_os_lookup(|k| std::env::var_os(k))
    }

    /// [`Env::from_lookup`] over raw values: a `CNI_*` value that is not UTF-8 is refused by
    /// name rather than mistaken for a missing one.
    pub fn from_os_lookup(get: impl Fn(&str) -> Option<OsString>) -> Result<Env> {
        for k in CNI_VARS {
            if let Some(v) = get(k).filter(|v| v.to_str().is_none()) {
                return Err(Error::new(
                    Kind::InvalidEnv,
                    format!(
                        "{k} is not valid UTF-8: {:?}",
                        v.to_string_lossy().chars().take(256).collect::<String>()
                    ),
                ));
            }
        }
        Env::from_lookup(|k| get(k).and_then(|v| v.into_string().ok()))
    }

    /// The attachment this call is about, on network `network` (the config's name).
    pub fn key(&self, network: &str) -> AttachKey {
        AttachKey {
            network: network.to_string(),
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    /// Pod identity from `CNI_ARGS`. Podman passes only `K8S_POD_NAME` (the container name).
    pub fn pod(&self) -> PodRef {
        PodRef {
            namespace: self
                .args
                .get("K8S_POD_NAMESPACE")
                .cloned()
                .unwrap_or_default(),
            name: self.args.get("K8S_POD_NAME").cloned().unwrap_or_default(),
            uid: self.args.get("K8S_POD_UID").cloned().unwrap_or_default(),
        }
    }
}

fn command_name(c: Command) -> &'static str {
    match c {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Version => "VERSION",
        Command::Gc => "GC",
        Command::Status => "STATUS",
    }
}

/// `K=V;K=V`. A pair without `=` is malformed input, not something to guess about.
pub fn parse_cni_args(s: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Error::new(
                Kind::InvalidEnv,
                format!("CNI_ARGS: \"{pair}\" is not KEY=VALUE"),
            ));
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Like `parse_cni_args`, skipping malformed pairs.
pub fn parse_cni_args_lenient(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Spec: container ids are non-empty and use only `[A-Za-z0-9_.-]`, starting alphanumeric.
fn validate_container_id(id: &str) -> Result<()> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            Kind::InvalidEnv,
            format!("CNI_CONTAINERID \"{id}\" is invalid (letters, digits, _ . - only)"),
        ))
    }
}

/// Spec: interface names are at most 15 bytes, not `.`/`..`, without `/`, `:` or white space.
fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            // `%` makes the kernel expand the name as a template (`eth%d` -> `eth0`).
            .any(|c| c == '/' || c == ':' || c == '%' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            Kind::InvalidEnv,
            format!("CNI_IFNAME \"{name}\" is not a valid interface name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc")]).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidEnv);
        assert!(
            e.msg.contains("CNI_NETNS") && e.msg.contains("CNI_IFNAME"),
            "{e}"
        );
    }

    #[test]
    fn del_allows_an_empty_netns() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Del);
        assert_eq!(e.netns, "");
    }

    #[test]
    fn pod_identity_from_containerd_and_podman_args() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1",
            ),
        ])
        .unwrap();
        assert_eq!(
            e.pod(),
            PodRef {
                namespace: "default".into(),
                name: "web-0".into(),
                uid: "u-1".into()
            }
        );
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=cranky_turing"),
        ])
        .unwrap();
        assert_eq!(e.pod().name, "cranky_turing");
        assert_eq!(e.pod().namespace, "");
    }

    #[test]
    fn non_utf8_values_are_named_not_called_missing() {
        use std::os::unix::ffi::OsStringExt;
        let e = Env::from_os_lookup(|k| match k {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some("abc".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_NETNS" => Some(OsString::from_vec(b"/run/netns/\xff".to_vec())),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(e.kind, Kind::InvalidEnv);
        assert!(e.msg.contains("CNI_NETNS is not valid UTF-8"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(env(&[("CNI_COMMAND", "FROB")]).is_err());
        assert!(env(&[]).is_err());
        let bad_id = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a b"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert!(bad_id.unwrap_err().msg.contains("CNI_CONTAINERID"));
        let bad_if = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "ab"),
            ("CNI_IFNAME", "a-very-long-interface-name"),
        ]);
        assert!(bad_if.unwrap_err().msg.contains("CNI_IFNAME"));
        assert!(parse_cni_args("K8S_POD_NAME").is_err());
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "ab"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME"),
        ]);
        assert!(del.is_ok(), "a malformed CNI_ARGS must not block DEL");
        assert!(env(&[("CNI_COMMAND", "GC")]).is_err());
        assert!(env(&[("CNI_COMMAND", "STATUS")]).is_ok());
    }
}
