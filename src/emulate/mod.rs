//! `terway emulate`: a local Alibaba Cloud (ECS/VPC OpenAPI + instance metadata), strict enough
//! that code passing against it works against the real service. Layers: `model*` (pure state),
//! `api` (actions, parameters, JSON), `http` (server, signatures, faults, admin), `metadata`,
//! `topology` (namespaces).

pub mod api;
pub mod api_vpc;
pub mod config;
pub mod errors;
pub mod faults;
pub mod metadata;
pub mod model;
pub mod model_eni;
pub mod model_route;
pub mod params;
#[cfg(test)]
mod model_tests;

use crate::{Error, Kind, Result};

#[derive(Debug, clap::Args)]
pub struct EmulateArgs {}

pub fn run(_args: EmulateArgs) -> Result<()> {
    Err(Error::new(
        Kind::Internal,
        "terway emulate is not built yet",
    ))
}
