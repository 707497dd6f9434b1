//! `loopspy bench-stacks` (hidden): the cost of reading a live target's stacks, for
//! `scripts/bench_stacks.py`. Reads every thread's stack `--reads` times in a tight loop, as
//! CPython's own `RemoteUnwinder.get_stack_trace()` is timed, and prints the CPU time per read.

use anyhow::Result;

use crate::acquire::attach::attach;
use crate::acquire::sampler::SampleSource;
use crate::cli::{BenchMode, BenchStacksArgs};

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

pub fn run(args: &BenchStacksArgs) -> Result<()> {
    let mut target = attach(args.pid)?;
    let spy = target
        .spy
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("no reader"))?;
    // Warm up: the first read maps the threads and loads every code object.
    let _ = spy.sample();
    let (mut frames, mut errors) = (0usize, 0u64);
    let (cpu0, wall0) = (cpu_seconds(), std::time::Instant::now());
    for _ in 0..args.reads {
        let read = match args.mode {
            BenchMode::Stacks => spy.bench_stacks(),
            BenchMode::Sample => spy.sample().map(|t| t.iter().map(|t| t.frames.len()).sum()),
        };
        match read {
            Ok(n) => frames += n,
            Err(_) => errors += 1,
        }
    }
    let cpu = cpu_seconds() - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    let n = args.reads.max(1) as f64;
    // Frames per successful read, on average (a target's depth changes as it runs).
    let frames = frames as f64 / (args.reads - errors).max(1) as f64;
    println!(
        "reads {} cpu_us_per_read {:.2} wall_us_per_read {:.2} frames {:.1} errors {}",
        args.reads,
        cpu / n * 1e6,
        wall / n * 1e6,
        frames,
        errors
    );
    Ok(())
}
