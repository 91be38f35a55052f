//! The `volcache` binary: parse arguments, run, print any error as one line.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = volcache::cli::Cli::parse();
    match volcache::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("volcache: {e:#}");
            ExitCode::FAILURE
        }
    }
}
