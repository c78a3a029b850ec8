//! CNI plugin: spec types and commands.
pub mod plugin;
