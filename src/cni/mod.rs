//! CNI plugin: spec types and the commands.

pub mod conf;
pub mod env;
pub mod lock;
pub mod plugin;
pub mod result;
pub mod wiring;

#[cfg(test)]
mod proptests;
