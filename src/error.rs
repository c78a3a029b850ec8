//! One error type for the whole crate. Every error carries a [`Kind`] (which maps to a CNI error
//! code) and a message that says what failed and on what; `context` prepends where it happened.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What kind of failure this is. The discriminant is the CNI error code the plugin reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// CNI 1: the config asks for a version we do not speak.
    IncompatibleVersion,
    /// CNI 2: a field we do not support.
    UnsupportedField,
    /// CNI 3: the container is unknown.
    UnknownContainer,
    /// CNI 4: missing or malformed `CNI_*` environment.
    InvalidEnv,
    /// CNI 5: an I/O error.
    Io,
    /// CNI 6: malformed JSON or a value that does not parse.
    Decode,
    /// CNI 7: a network/daemon config that is well formed but invalid.
    InvalidConfig,
    /// CNI 11: transient, the runtime should retry later (daemon down, pool still filling).
    TryAgain,
    /// CNI 50 (STATUS only): the plugin cannot serve ADD now.
    NotAvailable,
    /// 100: a bug or an unexpected state.
    Internal,
    /// 101: a network namespace is missing or is not a namespace.
    Netns,
    /// 102: a kernel (netlink/sysctl) operation failed.
    Datapath,
    /// 103: no free address left (the pod CIDR or vSwitch is exhausted).
    Exhausted,
    /// 104: the state file is unreadable or corrupt.
    State,
    /// 105: the caller is not allowed (non-root RPC peer).
    Permission,
    /// 106: the cloud API answered with a final error.
    Cloud,
}

impl Kind {
    /// The CNI error code reported for this kind.
    pub fn cni_code(self) -> u32 {
        match self {
            Kind::IncompatibleVersion => 1,
            Kind::UnsupportedField => 2,
            Kind::UnknownContainer => 3,
            Kind::InvalidEnv => 4,
            Kind::Io => 5,
            Kind::Decode => 6,
            Kind::InvalidConfig => 7,
            Kind::TryAgain => 11,
            Kind::NotAvailable => 50,
            Kind::Internal => 100,
            Kind::Netns => 101,
            Kind::Datapath => 102,
            Kind::Exhausted => 103,
            Kind::State => 104,
            Kind::Permission => 105,
            Kind::Cloud => 106,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub kind: Kind,
    pub msg: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, msg: impl Into<String>) -> Error {
        Error {
            kind,
            msg: msg.into(),
        }
    }

    /// Prepends where the error happened: `"<ctx>: <msg>"`. The kind is kept.
    pub fn context(mut self, ctx: impl fmt::Display) -> Error {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }

    pub fn io(what: impl fmt::Display, e: std::io::Error) -> Error {
        Error::new(Kind::Io, format!("{what}: {e}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::new(Kind::Io, e.to_string())
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Error {
        Error::new(Kind::Io, e.desc().to_string())
    }
}

/// Adds `.ctx(...)` to results so call sites can say what they were doing.
pub trait ResultExt<T> {
    fn ctx(self, ctx: impl fmt::Display) -> Result<T>;
    fn with_ctx<D: fmt::Display>(self, f: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn ctx(self, ctx: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(ctx))
    }
    fn with_ctx<D: fmt::Display>(self, f: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

/// Shorthand constructors: `err!(Kind::Decode, "bad {}", x)`.
#[macro_export]
macro_rules! err {
    ($kind:expr, $($arg:tt)*) => {
        $crate::error::Error::new($kind, format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_prepends_and_keeps_kind() {
        let e = Error::new(Kind::Netns, "not a namespace").context("/run/netns/x");
        assert_eq!(e.msg, "/run/netns/x: not a namespace");
        assert_eq!(e.kind.cni_code(), 101);
    }

    #[test]
    fn io_errors_convert_with_context() {
        let r: std::result::Result<(), std::io::Error> =
            Err(std::io::Error::from_raw_os_error(libc::ENOENT));
        let e = r.ctx("open /x").unwrap_err();
        assert_eq!(e.kind, Kind::Io);
        assert!(e.msg.starts_with("open /x: "), "{}", e.msg);
    }
}
