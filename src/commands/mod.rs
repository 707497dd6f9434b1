//! One module per subcommand that has no room of its own: parse → call the stages → result.
//! `top` and `dump` keep their own folders (model, render, terminal), and `main` dispatches.

pub mod bench;
pub mod diff;
pub mod monitor;
pub mod record;
pub mod report;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::acquire::attach::Target;
use crate::acquire::sampler::Limits;
use crate::cli::SamplingArgs;
use crate::output::escape::escape;

/// The sampler's limits from the sampling flags `record` and `monitor` share; `threshold_ms`
/// in milliseconds, `duration` none for "until stopped", `stop` the signal flag.
pub(crate) fn limits<'a>(
    sampling: &SamplingArgs,
    threshold_ms: f64,
    duration: Option<Duration>,
    stop: &'a AtomicBool,
) -> Limits<'a> {
    Limits {
        rate: sampling.probe_rate(),
        kernel_rate: sampling.kernel_rate(),
        clock: sampling.clock,
        stack_rate: sampling.stack_rate,
        threshold: threshold_ms / 1000.0,
        duration,
        stop,
    }
}

/// The line that says sampling began (tests wait for it): the clock that times the loops and
/// its rate in Hz (`kernel` from `SamplingArgs::resolve_clock`).
pub(crate) fn announce(target: &Target, kernel: bool, rate: f64) -> String {
    let clock = if kernel {
        format!("kernel clock, {rate} Hz ticks in long callbacks")
    } else {
        format!("probe clock at {rate} Hz")
    };
    format!(
        "loopspy: sampling process {} (Python {}), {clock}; Ctrl-C to stop",
        target.pid,
        escape(&target.python_version)
    )
}
