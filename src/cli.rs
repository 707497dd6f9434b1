//! The command line (clap derive only). `into_*` methods turn raw arguments into validated
//! settings; no I/O happens here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::acquire::sampler::ClockChoice;

/// Default tick rate on the probe clock, in Hz (see README: "Choosing the rate").
pub const DEFAULT_RATE: f64 = 1000.0;
/// Default tick rate on the kernel clock, where ticks run only while a callback runs long.
pub const DEFAULT_KERNEL_RATE: f64 = 100.0;
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
    /// Watch a process until stopped: Prometheus metrics at /metrics, pprof profiles at
    /// /debug/pprof/profile, and episodes as JSON Lines; memory stays flat.
    Monitor(MonitorArgs),
    /// Compare two recordings or episode logs, before and after a fix: per culprit, blocked
    /// time per minute, duration percentiles, and a verdict.
    Diff(DiffArgs),
    /// Time stack reads of a running process (for scripts/bench_stacks.py).
    #[command(hide = true)]
    BenchStacks(BenchStacksArgs),
}

/// What `bench-stacks` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// Every thread's stack alone (what `RemoteUnwinder.get_stack_trace()` returns).
    Stacks,
    /// A whole sample of every thread: stack, OS state, ready queue, current task, timers.
    Sample,
}

#[derive(Debug, Args)]
pub struct BenchStacksArgs {
    #[arg(short, long)]
    pub pid: u32,
    #[arg(long, default_value = "2000")]
    pub reads: u64,
    #[arg(long, value_enum, default_value = "stacks")]
    pub mode: BenchMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An SVG flame graph with blocking episodes highlighted.
    Flamegraph,
    /// The same stacks as the flame graph, as a speedscope profile (JSON).
    Speedscope,
    /// A gzipped pprof profile (go tool pprof, Parca, Pyroscope), labeled with thread_name,
    /// pid, task_name, blocked and kind.
    Pprof,
    /// A Chrome trace-event JSON timeline for ui.perfetto.dev or chrome://tracing: episodes
    /// and sampled stacks per event-loop thread.
    Perfetto,
    /// The raw samples, for `loopspy report`.
    Raw,
}

impl Format {
    /// A note when `--by-task` has nothing to shape in this format, else `None`.
    pub fn by_task_note(self, by_task: bool) -> Option<&'static str> {
        match self {
            _ if !by_task => None,
            Format::Flamegraph | Format::Speedscope => None,
            Format::Pprof => Some("--by-task shapes the flame graph and speedscope only: pprof samples carry their task as the task_name label"),
            Format::Perfetto => Some("--by-task shapes the flame graph and speedscope only: Perfetto's episode slices carry their task in their args"),
            Format::Raw => Some("--by-task shapes the flame graph and speedscope only: give it to `loopspy report` when drawing this recording"),
        }
    }

    /// The file name extension of the format's default output (`loopspy-PID.<ext>`, or the
    /// recording's name with it for `report`).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Flamegraph => "svg",
            Format::Speedscope => "speedscope.json",
            Format::Pprof => "pb.gz",
            Format::Perfetto => "perfetto.json",
            Format::Raw => "jsonl",
        }
    }
}

/// Options shared by `record` and `report`.
#[derive(Debug, Args)]
pub struct AnalysisArgs {
    /// A callback running at least this many milliseconds is a blocking episode.
    #[arg(long, default_value = "50", value_parser = threshold_ms)]
    pub threshold: f64,
    /// Write the episodes as JSON Lines to FILE (`-` for stdout): `record` writes and flushes
    /// a line as each episode ends, `report` the whole file at once. See "Output files" in the
    /// README for how paths are written.
    #[arg(long, value_name = "FILE")]
    pub episodes: Option<String>,
    /// Also draw idle stacks (threads waiting) in the flame graph.
    #[arg(long)]
    pub idle: bool,
    /// Flame graph and speedscope: draw the loop's ordinary work (callbacks shorter than the
    /// threshold) under one frame per asyncio task: `task <name>`, or `task <coroutine>` for
    /// tasks left with a default `Task-N` name.
    #[arg(long)]
    pub by_task: bool,
}

/// What to sample and how often, shared by `record` and `top`.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Ticks per second: each reads the event-loop threads' state (a few microseconds). On the
    /// probe clock ticks run all the time and time episodes to one tick (default 1000); on the
    /// kernel clock they run only while a callback has run past 5 ms, to split callbacks of one
    /// loop iteration (default 100). At most 10000; on the probe clock at least 5 ticks per
    /// --threshold.
    #[arg(short, long, value_parser = rate_hz)]
    pub rate: Option<f64>,
    /// What times the loops' boundaries: `kernel` (perf tracepoints on the loop threads' epoll
    /// and futex calls: exact, and nothing to do while the loop is idle), `probe` (ticks reading
    /// /proc), or `auto`: the kernel clock when perf events are allowed, else the probe.
    #[arg(long, value_enum, default_value = "auto")]
    pub clock: ClockChoice,
    /// Full stack samples per second in the background, for the flame graph of ordinary work.
    /// The event-loop threads' stacks are also read at every tick while a callback has run
    /// past 5 ms (every 10 ms past one second).
    #[arg(long, default_value = DEFAULT_STACK_RATE, value_parser = stack_rate_hz)]
    pub stack_rate: f64,
    /// Also sample the target's Python child processes (uvicorn/gunicorn workers,
    /// multiprocessing), including workers started after loopspy attached.
    #[arg(long)]
    pub subprocesses: bool,
    /// Do not read which HTTP request a blocked task was serving. By default loopspy reads
    /// the method, path (never the query string) and route template of the request from the
    /// task's frames: no headers, no body.
    #[arg(long)]
    pub no_request: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["pid", "command"]))]
pub struct RecordArgs {
    /// PID of the Python process to attach to.
    #[arg(short, long)]
    pub pid: Option<u32>,
    /// Stop after this many seconds (default: until Ctrl-C or the target exits).
    #[arg(short, long, value_parser = duration_secs)]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Output file (default loopspy-PID.svg, .speedscope.json, .pb.gz, .perfetto.json or
    /// .jsonl, by format); `-` for
    /// stdout. A device, FIFO or socket is written in place; a symlink writes its target.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "flamegraph")]
    pub format: Format,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    /// Also show C frames (C extensions, the regex engine, the GC) between the Python frames,
    /// through py-spy's unwinder. This stops the target's threads for about a millisecond at
    /// each stack read (at most ~50 a second); without it loopspy never pauses the target.
    #[arg(long)]
    pub native: bool,
    /// The command to launch and record, after `--`. It shares loopspy's stdin, stdout and
    /// stderr, except that its stdout goes to loopspy's stderr when `-o -` or `--episodes -`
    /// puts data on loopspy's stdout.
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
    #[arg(long, default_value = "50", value_parser = threshold_ms)]
    pub threshold: f64,
    /// The command to launch and watch, after `--` (its output is discarded while the view runs).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The raw recording to read.
    pub recording: PathBuf,
    /// Output file (default: the recording's name with .svg, .speedscope.json, .pb.gz or
    /// .perfetto.json); `-` for stdout. It may not be the recording itself.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Output format (a recording is already raw).
    #[arg(short, long, default_value = "flamegraph", value_parser = report_format())]
    pub format: Format,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["pid", "command"]))]
pub struct MonitorArgs {
    /// PID of the Python process to attach to.
    #[arg(short, long)]
    pub pid: Option<u32>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A callback running at least this many milliseconds is a blocking episode.
    #[arg(long, default_value = "50", value_parser = threshold_ms)]
    pub threshold: f64,
    /// Address for the HTTP endpoints (/metrics, /debug/pprof/profile). Port 0 picks a free
    /// port (the address is printed on stderr).
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Append each episode as a JSON line to FILE (`-` for stdout), as it ends.
    #[arg(long, value_name = "FILE")]
    pub episodes: Option<String>,
    /// The command to launch and monitor, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The recording (`record --format raw`) or episodes log (`--episodes`) from before.
    pub before: PathBuf,
    /// The recording or episodes log from after.
    pub after: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit with code 3 when the verdict is a regression (a new or worse culprit, or more
    /// blocked time per minute), for CI.
    #[arg(long)]
    pub fail_on_regression: bool,
    /// With recordings: a callback running at least this many milliseconds is an episode.
    #[arg(long, default_value = "50", value_parser = threshold_ms)]
    pub threshold: f64,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// PID of the Python process to read.
    #[arg(short, long)]
    pub pid: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write the dump to FILE instead of stdout (`-` for stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also show C frames between the Python frames (py-spy's unwinder; stops the target's
    /// threads for about a millisecond).
    #[arg(long)]
    pub native: bool,
    /// Also dump the target's Python child processes (uvicorn/gunicorn workers,
    /// multiprocessing).
    #[arg(long)]
    pub subprocesses: bool,
    /// List every task on its own. By default tasks with the same loop, state, coroutine and
    /// await chain are shown once, with their count.
    #[arg(long)]
    pub all_tasks: bool,
    /// Do not read the HTTP request a loop's running task serves (method, path, route).
    #[arg(long)]
    pub no_request: bool,
}

/// Ticks needed per `--threshold`: an episode's boundaries are each known to within one tick
/// interval, so fewer ticks than this would make the threshold a matter of chance.
pub const TICKS_PER_THRESHOLD: f64 = 5.0;
/// The fastest tick rate: 0.1 ms apart, already far finer than any threshold.
pub const MAX_RATE: f64 = 10_000.0;

fn rate_hz(s: &str) -> Result<f64, String> {
    let v = positive_f64(s)?;
    if v > MAX_RATE {
        return Err(format!(
            "must be at most {MAX_RATE:.0} (a tick every 0.1 ms)"
        ));
    }
    Ok(v)
}

impl SamplingArgs {
    /// `Err` with a one-line reason when the tick rate cannot time episodes of `threshold_ms`:
    /// fewer than `TICKS_PER_THRESHOLD` ticks per threshold. A rate given on any clock is
    /// checked (`auto` may fall back to the probe, and on the kernel clock the ticks split the
    /// callbacks of one loop iteration); the kernel clock's own default is not, as the kernel
    /// times the boundaries themselves.
    pub fn check_rate(&self, threshold_ms: f64) -> Result<(), String> {
        let rate = match (self.rate, self.clock) {
            (Some(r), _) => r,
            (None, ClockChoice::Kernel) => return Ok(()),
            (None, _) => DEFAULT_RATE,
        };
        let interval_ms = 1000.0 / rate;
        if rate * threshold_ms / 1000.0 >= TICKS_PER_THRESHOLD {
            return Ok(());
        }
        Err(format!(
            "--rate {} cannot time {} ms episodes (--threshold): it ticks every {} ms, and each end of an episode is only known to within a tick; use --rate {} or more, or --threshold {} or more",
            rate,
            threshold_ms,
            short(interval_ms),
            short(TICKS_PER_THRESHOLD * 1000.0 / threshold_ms),
            short(TICKS_PER_THRESHOLD * interval_ms),
        ))
    }
}

/// A number as a person would write it: `500`, `0.5`, `16.7`.
fn short(v: f64) -> String {
    let s = format!("{:.1}", (v * 10.0).ceil() / 10.0);
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

impl Cli {
    /// Checks across flags that clap cannot express per flag; `Err` is a one-line reason for
    /// a bad command line (exit 2).
    pub fn check(&self) -> Result<(), String> {
        match &self.command {
            Command::Record(a) => a.sampling.check_rate(a.analysis.threshold),
            Command::Top(a) => a.sampling.check_rate(a.threshold),
            Command::Monitor(a) => a.sampling.check_rate(a.threshold),
            Command::Report(_) | Command::Dump(_) | Command::Diff(_) | Command::BenchStacks(_) => {
                Ok(())
            }
        }
    }
}

/// `report --format`: every format but `raw`.
fn report_format() -> impl clap::builder::TypedValueParser<Value = Format> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["flamegraph", "speedscope", "pprof", "perfetto"])
        .map(|s| Format::from_str(&s, true).expect("a format's own name"))
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(_) => Err("must be a number greater than 0".into()),
        Err(_) => Err(format!("`{s}` is not a number")),
    }
}

/// A number in `range`, or `why` (one line: the range and its reason). Every numeric flag is
/// bounded here, at parse time, so no later conversion (`Duration::from_secs_f64`, `1 / rate`)
/// can overflow or panic.
fn number_in(s: &str, range: impl std::ops::RangeBounds<f64>, why: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && range.contains(&v) => Ok(v),
        Ok(_) => Err(why.into()),
        Err(_) => Err(format!("`{s}` is not a number")),
    }
}

impl Cli {
    /// Relations between flags that clap's attributes cannot state. A failure is a clap error:
    /// printed in clap's style, exit 2.
    pub fn validate(&self) -> Result<(), clap::Error> {
        if let Err(reason) = self.check() {
            return Err(self.usage_error(clap::error::ErrorKind::ValueValidation, reason));
        }
        let (output, episodes) = match &self.command {
            Command::Record(r) => (&r.output, &r.analysis.episodes),
            Command::Report(r) => (&r.output, &r.analysis.episodes),
            _ => return Ok(()),
        };
        if output.as_deref() == Some(std::path::Path::new("-")) && episodes.as_deref() == Some("-")
        {
            return Err(self.usage_error(
                clap::error::ErrorKind::ArgumentConflict,
                "`-o -` and `--episodes -` both ask for stdout: send one of them to a file",
            ));
        }
        Ok(())
    }

    /// A usage error (exit 2) shown with the usage line of the subcommand given, as clap shows
    /// its own errors.
    fn usage_error(
        &self,
        kind: clap::error::ErrorKind,
        message: impl std::fmt::Display,
    ) -> clap::Error {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        cli.build();
        let name = match &self.command {
            Command::Record(_) => "record",
            Command::Report(_) => "report",
            Command::Top(_) => "top",
            Command::Dump(_) => "dump",
            Command::Monitor(_) => "monitor",
            Command::Diff(_) => "diff",
            Command::BenchStacks(_) => "bench-stacks",
        };
        match cli.find_subcommand_mut(name) {
            Some(sub) => sub.error(kind, message),
            None => cli.error(kind, message),
        }
    }
}

impl SamplingArgs {
    /// The tick rate on the probe clock.
    pub fn probe_rate(&self) -> f64 {
        self.rate.unwrap_or(DEFAULT_RATE)
    }

    /// The tick rate on the kernel clock (while a callback runs long).
    pub fn kernel_rate(&self) -> f64 {
        self.rate.unwrap_or(DEFAULT_KERNEL_RATE)
    }

    /// Which clock sampling will start on (true: the kernel's) and its tick rate. The kernel
    /// clock is checked here (tracefs, and perf events on one of our own threads); the final
    /// word comes when the first loop thread is traced. `--clock kernel` where the kernel
    /// refuses is an error now, before attaching.
    pub fn resolve_clock(&self) -> anyhow::Result<(bool, f64)> {
        use crate::acquire::kernel_clock::KernelClock;
        let kernel = match self.clock {
            ClockChoice::Probe => false,
            ClockChoice::Auto => KernelClock::check().is_ok(),
            ClockChoice::Kernel => match KernelClock::check() {
                Ok(()) => true,
                Err(e) => {
                    let reason = crate::acquire::perf::unavailable_reason(&e);
                    return Err(crate::error::UserError::KernelClock { reason }.into());
                }
            },
        };
        let rate = if kernel {
            self.kernel_rate()
        } else {
            self.probe_rate()
        };
        Ok((kernel, rate))
    }
}

/// `--stack-rate`: full stacks per second in the background.
fn stack_rate_hz(s: &str) -> Result<f64, String> {
    number_in(
        s,
        0.1..=1000.0,
        "must be from 0.1 to 1000 (per second): a full stack takes about 0.4 ms to read, so 1000 a second is the most a sampler can take",
    )
}

/// `--duration`: seconds.
fn duration_secs(s: &str) -> Result<f64, String> {
    const WHY: &str = "must be more than 0 and at most 2592000 (seconds, 30 days): leave --duration out to record until Ctrl-C or the target exits";
    let v = number_in(s, 0.0..=2_592_000.0, WHY)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(WHY.into())
    }
}

/// `--threshold`: milliseconds.
fn threshold_ms(s: &str) -> Result<f64, String> {
    number_in(
        s,
        1.0..=3_600_000.0,
        "must be from 1 to 3600000 (ms): shorter than 1 ms is not a block, and an hour is the longest callback loopspy times",
    )
}

impl RecordArgs {
    /// The output path: the one given or the default for the format.
    pub fn output_path(&self, pid: Option<u32>) -> PathBuf {
        self.output.clone().unwrap_or_else(|| {
            let id = pid.map(|p| p.to_string()).unwrap_or_else(|| "run".into());
            PathBuf::from(format!("loopspy-{id}.{}", self.format.extension()))
        })
    }
}

impl ReportArgs {
    /// The output path: the one given, or the recording's name with the format's extension
    /// (`rec.jsonl` → `rec.svg`, `rec.speedscope.json`).
    pub fn output_path(&self) -> PathBuf {
        self.output
            .clone()
            .unwrap_or_else(|| self.recording.with_extension(self.format.extension()))
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
    fn a_rate_must_resolve_the_threshold() {
        let check = |args: &[&str]| {
            let mut all = vec!["loopspy", "record", "--pid", "1"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map_err(|e| e.to_string())?.check()
        };
        assert_eq!(check(&[]), Ok(()), "the defaults");
        assert_eq!(check(&["--rate", "100"]), Ok(()), "README's low setting");
        assert_eq!(check(&["--rate", "2", "--threshold", "2500"]), Ok(()));
        let e = check(&["--rate", "2"]).unwrap_err();
        assert_eq!(
            e,
            "--rate 2 cannot time 50 ms episodes (--threshold): it ticks every 500 ms, and each end of an episode is only known to within a tick; use --rate 100 or more, or --threshold 2500 or more"
        );
        assert!(check(&["--rate", "0.05"])
            .unwrap_err()
            .starts_with("--rate 0.05 cannot time"));
        assert!(check(&["--rate", "99"]).is_err());
        assert!(check(&["--rate", "20000"])
            .unwrap_err()
            .contains("at most 10000"));
        let top = Cli::try_parse_from(["loopspy", "top", "--pid", "1", "--rate", "3"]).unwrap();
        assert!(top.check().is_err());
    }

    #[test]
    fn rejects_bad_numbers_and_missing_target() {
        assert!(Cli::try_parse_from(["loopspy", "record", "--pid", "1", "--rate", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["loopspy", "record", "--pid", "1", "--threshold", "-5"]).is_err()
        );
        assert!(Cli::try_parse_from(["loopspy", "record"]).is_err());
        // Out of range, and so never a panic later (`Duration::from_secs_f64(1e30)` panics).
        for (flag, bad) in [
            ("--duration", "1e30"),
            ("--duration", "inf"),
            ("--rate", "1e9"),
            ("--stack-rate", "1e-300"),
            ("--threshold", "1e300"),
            ("--threshold", "0.5"),
        ] {
            let e = Cli::try_parse_from(["loopspy", "record", "--pid", "1", flag, bad]);
            let e = e.expect_err(bad);
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flag} {bad}"
            );
        }
        assert!(Cli::try_parse_from(["loopspy", "record", "--pid", "1", "-d", "2592000"]).is_ok());
        assert!(Cli::try_parse_from(["loopspy", "record", "--pid", "1", "--", "python3"]).is_err());
        let ok =
            Cli::try_parse_from(["loopspy", "record", "--", "python3", "app.py", "-x"]).unwrap();
        match ok.command {
            Command::Record(r) => assert_eq!(r.command, ["python3", "app.py", "-x"]),
            _ => unreachable!(),
        }
    }

    #[test]
    fn stdout_for_two_outputs_is_a_usage_error() {
        for args in [
            &[
                "loopspy",
                "record",
                "--pid",
                "1",
                "-o",
                "-",
                "--episodes",
                "-",
            ][..],
            &["loopspy", "report", "r.jsonl", "-o", "-", "--episodes", "-"][..],
        ] {
            let err = Cli::try_parse_from(args).unwrap().validate().unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains("both ask for stdout"), "{err}");
        }
        let one = Cli::try_parse_from(["loopspy", "record", "--pid", "1", "-o", "-"]).unwrap();
        assert!(one.validate().is_ok());
    }

    #[test]
    fn default_output_follows_the_format() {
        let report =
            |fmt: &str| match Cli::try_parse_from(["loopspy", "report", "d/rec.jsonl", "-f", fmt])
                .unwrap()
                .command
            {
                Command::Report(r) => r.output_path(),
                _ => unreachable!(),
            };
        assert_eq!(report("flamegraph"), PathBuf::from("d/rec.svg"));
        assert_eq!(report("speedscope"), PathBuf::from("d/rec.speedscope.json"));
        match Cli::try_parse_from(["loopspy", "record", "--pid", "7", "-f", "speedscope"])
            .unwrap()
            .command
        {
            Command::Record(r) => {
                assert_eq!(
                    r.output_path(Some(7)),
                    PathBuf::from("loopspy-7.speedscope.json")
                )
            }
            _ => unreachable!(),
        }
    }
}
