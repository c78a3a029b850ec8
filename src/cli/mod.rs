//! Command line: subcommands of `terway` (also reached as `terwayd` and `terway-cli`).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "terway",
    version,
    about = "VPC-native container networking for Alibaba Cloud ECS nodes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local Alibaba Cloud (ECS/VPC OpenAPI and instance metadata) for tests and demos.
    Emulate(crate::emulate::EmulateArgs),
    /// Print the version.
    Version,
}

pub fn main(_argv0: &str, args: Vec<std::ffi::OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Emulate(a) => crate::emulate::run(a),
        Command::Version => {
            println!("terway {}", crate::VERSION);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("terway: {e}");
            ExitCode::FAILURE
        }
    }
}
