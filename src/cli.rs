//! The command line (clap derive only). `into_*` methods turn raw arguments into validated
//! settings; no I/O happens here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default tick rate in Hz (see README: "Choosing the rate").
pub const DEFAULT_RATE: &str = "1000";
/// Default rate of background full-stack samples, in Hz.
pub const DEFAULT_STACK_RATE: &str = "10";

#[derive(Debug, Parser)]
#[command(
    name = "loopspy",
    version,
    about = "Find what blocks a live asyncio event loop: attach to a running CPython process, detect blocking episodes, write an annotated flame graph and an episodes log."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sample a running process (--pid) or a command you launch (-- CMD), find blocking episodes.
    Record(RecordArgs),
    /// Re-render a raw recording (made with `record --format raw`) through the same analysis.
    Report(ReportArgs),
    /// A live view of each event loop: what it runs now, hangs as they happen, the worst culprits.
    Top(TopArgs),
    /// Print every thread's stack, every event loop's state and every asyncio task with its
    /// await chain, from one read of a running process.
    Dump(DumpArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An SVG flame graph with blocking episodes highlighted.
    Flamegraph,
    /// The same stacks as the flame graph, as a speedscope profile (JSON).
    Speedscope,
    /// The raw samples, for `loopspy report`.
    Raw,
}

/// Options shared by `record` and `report`.
#[derive(Debug, Args)]
pub struct AnalysisArgs {
    /// A callback running at least this many milliseconds is a blocking episode.
    #[arg(long, default_value = "50", value_parser = positive_f64)]
    pub threshold: f64,
    /// Write the episodes as JSON Lines to FILE (`-` for stdout), one line as each ends.
    #[arg(long, value_name = "FILE")]
    pub episodes: Option<String>,
    /// Also draw idle stacks (threads waiting) in the flame graph.
    #[arg(long)]
    pub idle: bool,
}

/// What to sample and how often, shared by `record` and `top`.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Ticks per second: each reads the event-loop threads' state (a few microseconds), which
    /// times episodes to one tick.
    #[arg(short, long, default_value = DEFAULT_RATE, value_parser = positive_f64)]
    pub rate: f64,
    /// Full stack samples per second in the background, for the flame graph of ordinary work.
    /// Stacks are also read every 10 ms while a callback runs past the threshold.
    #[arg(long, default_value = DEFAULT_STACK_RATE, value_parser = positive_f64)]
    pub stack_rate: f64,
    /// Also sample the target's Python child processes (uvicorn/gunicorn workers,
    /// multiprocessing), including workers started after loopspy attached.
    #[arg(long)]
    pub subprocesses: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["pid", "command"]))]
pub struct RecordArgs {
    /// PID of the Python process to attach to.
    #[arg(short, long)]
    pub pid: Option<u32>,
    /// Stop after this many seconds (default: until Ctrl-C or the target exits).
    #[arg(short, long, value_parser = positive_f64)]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Output file (default loopspy-PID.svg, or loopspy-PID.jsonl with --format raw).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "flamegraph")]
    pub format: Format,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    /// The command to launch and record, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["pid", "command"]))]
pub struct TopArgs {
    /// PID of the Python process to attach to.
    #[arg(short, long)]
    pub pid: Option<u32>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A callback running at least this many milliseconds is a blocking episode.
    #[arg(long, default_value = "50", value_parser = positive_f64)]
    pub threshold: f64,
    /// The command to launch and watch, after `--` (its output is discarded while the view runs).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The raw recording to read.
    pub recording: PathBuf,
    /// Output file (default: the recording's name with .svg, or .speedscope.json).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Output format: `flamegraph` or `speedscope` (a recording is already raw).
    #[arg(short, long, value_enum, default_value = "flamegraph")]
    pub format: Format,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// PID of the Python process to read.
    #[arg(short, long)]
    pub pid: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(_) => Err("must be a number greater than 0".into()),
        Err(_) => Err(format!("`{s}` is not a number")),
    }
}

impl RecordArgs {
    /// The output path: the one given or the default for the format.
    pub fn output_path(&self, pid: Option<u32>) -> PathBuf {
        self.output.clone().unwrap_or_else(|| {
            let id = pid.map(|p| p.to_string()).unwrap_or_else(|| "run".into());
            match self.format {
                Format::Flamegraph => PathBuf::from(format!("loopspy-{id}.svg")),
                Format::Raw => PathBuf::from(format!("loopspy-{id}.jsonl")),
                Format::Speedscope => PathBuf::from(format!("loopspy-{id}.speedscope.json")),
            }
        })
    }
}

impl ReportArgs {
    pub fn output_path(&self) -> PathBuf {
        self.output
            .clone()
            .unwrap_or_else(|| self.recording.with_extension("svg"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rejects_bad_numbers_and_missing_target() {
        assert!(Cli::try_parse_from(["loopspy", "record", "--pid", "1", "--rate", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["loopspy", "record", "--pid", "1", "--threshold", "-5"]).is_err()
        );
        assert!(Cli::try_parse_from(["loopspy", "record"]).is_err());
        assert!(Cli::try_parse_from(["loopspy", "record", "--pid", "1", "--", "python3"]).is_err());
        let ok =
            Cli::try_parse_from(["loopspy", "record", "--", "python3", "app.py", "-x"]).unwrap();
        match ok.command {
            Command::Record(r) => assert_eq!(r.command, ["python3", "app.py", "-x"]),
            _ => unreachable!(),
        }
    }
}
