//! terway: VPC-native container networking for Alibaba Cloud ECS nodes.
//! One binary plays every role; `main.rs` only dispatches, the logic lives here.

pub mod error;

pub mod cli;
pub mod clock;
pub mod cloud;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod emulate;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod output;
pub mod pool;
#[cfg(test)]
mod prop_support;
pub mod rpc;
pub mod store;
pub mod sysctl;

pub use error::{Error, Kind, Result, ResultExt};

/// Crate version, printed by `terway version` and the CNI VERSION command.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
