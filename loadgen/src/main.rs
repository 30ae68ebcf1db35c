//! `loadgen`: SIP load generator (see docs/LOADGEN.md).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = loadgen::cli::Cli::parse();
    std::process::ExitCode::from(loadgen::cli::main_with(cli) as u8)
}
