//! `terway emulate`: a local Alibaba Cloud. Being built (issue 3).

use crate::{Error, Kind, Result};

#[derive(Debug, clap::Args)]
pub struct EmulateArgs {}

pub fn run(_args: EmulateArgs) -> Result<()> {
    Err(Error::new(
        Kind::Internal,
        "terway emulate is not built yet",
    ))
}
