//! CNI plugin: spec types and the commands.

pub mod conf;
pub mod env;
pub mod plugin;
pub mod result;
