//! CNI plugin: spec types and the commands.

pub mod conf;
pub mod env;
pub mod lock;
pub mod log;
pub mod plugin;
pub mod result;

#[cfg(test)]
mod proptests;
