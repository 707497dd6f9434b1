//! The `loopspy` binary: parse, run, and map errors to the documented exit codes
//! (0 success, 1 runtime failure, 2 bad command line, 3 a regression found by
//! `diff --fail-on-regression`).

use std::process::ExitCode;

use clap::Parser;
use loopspy::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.validate() {
        e.exit();
    }
    let result = match &cli.command {
        Command::Record(args) => loopspy::commands::record::run(args),
        Command::Report(args) => loopspy::commands::report::run(args),
        Command::Top(args) => loopspy::top::terminal::run(args),
        Command::Dump(args) => loopspy::dump::run(args),
        Command::Monitor(args) => loopspy::commands::monitor::run(args),
        // diff's verdict is an exit code of its own (3: regression, with --fail-on-regression).
        Command::Diff(args) => match loopspy::commands::diff::run(args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::BenchStacks(args) => loopspy::commands::bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is::<loopspy::error::AlreadyReported>() {
                loopspy::error::print(&loopspy::error::message(&e));
            }
            ExitCode::from(1)
        }
    }
}
