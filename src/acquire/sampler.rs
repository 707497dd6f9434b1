//! The timed sampling loop: one sample per tick at a fixed rate, each stamped with wall-clock and
//! monotonic time. Failed reads (torn reads of a running target) are counted, not fatal; lateness
//! is measured; the loop ends at the deadline, on a stop request, or when the target exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use super::handoff::{self, Outbox};
use crate::acquire::kernel_clock::KernelClock;
use crate::sample::{LoopEvent, ReadyQueue, Sample, ThreadSample};

#[path = "sampler_kernel.rs"]
mod kernel;
pub use kernel::ClockChoice;

/// Something that can be sampled: the live target, or a fake in tests.
pub trait SampleSource {
    fn pid(&self) -> u32;
    /// Read every thread once.
    fn sample(&mut self) -> Result<Vec<ThreadSample>>;
    /// The cheap tick: only the event-loop threads' OS state and ready queues, no stacks.
    /// `None` when this source cannot probe (then every tick reads stacks).
    fn probe(&mut self) -> Option<Result<Vec<ThreadSample>>> {
        None
    }
    /// Full samples of the event-loop threads only (and of the GIL's holder while a loop waits
    /// for it): what a tick inside a long callback needs. `None` when this source cannot tell
    /// its loop threads (then [`SampleSource::sample`] is used).
    fn sample_loops(&mut self) -> Option<Result<Vec<ThreadSample>>> {
        None
    }
    /// Stacks left out of samples since the last call (torn reads of threads that run no
    /// loop), counted as errors.
    fn take_dropped(&mut self) -> u64 {
        0
    }
    /// When the last read (sample, probe or loop sample) began to read the target's threads,
    /// after whatever bookkeeping came first (a thread scan, finding a new loop). Its sample is
    /// timed then, not at the tick: a read that began 6 ms late (a scan on a loaded machine)
    /// describes the target 6 ms after the tick, and a sample timed at the tick placed a
    /// callback's start before it began, outside its error bar. `None`: timed at the tick.
    fn read_at(&mut self) -> Option<Instant> {
        None
    }
    /// Whether the target still runs (checked after a failed read).
    fn alive(&mut self) -> bool;
    /// Host thread ids of the event-loop threads found so far, for the kernel clock.
    fn loop_tids(&self) -> Vec<u32> {
        Vec::new()
    }
    /// Address range of the interpreter's GIL state, when known (futex waits inside it are GIL
    /// waits).
    fn gil_range(&self) -> Option<std::ops::Range<u64>> {
        None
    }
    /// Checked after every read: why this source no longer reads the program it attached to
    /// although the process may live on (it called `exec()`; its main thread exited and reads
    /// through it fail). The read just made is then dropped, never used.
    fn replaced(&mut self) -> Option<String> {
        None
    }
    /// After [`SampleSource::replaced`]: attach to the same process afresh. `Ok(None)` while
    /// the new program cannot be read yet (a Python still starting up); an error when it never
    /// will be (it is not Python).
    fn reattach(&mut self) -> Result<Option<Reattached>> {
        bail!("this source cannot attach again")
    }
}

/// A source attached afresh to a process whose program changed.
pub struct Reattached {
    pub source: Box<dyn SampleSource + Send>,
    /// What the process runs now (its command line and Python version), for messages.
    pub what: String,
}

/// How the sampler did: written into recordings and shown in the summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplerStats {
    /// The rate asked for, in Hz.
    pub rate: f64,
    pub samples: u64,
    pub errors: u64,
    /// Ticks that started more than half an interval after their scheduled time.
    pub late: u64,
    pub max_late_ms: f64,
    /// Seconds from the first to the last tick.
    pub elapsed: f64,
    /// Why the recording ended: `duration`, `interrupted` or `target exited`.
    pub end: String,
    /// How many of the samples read full stacks (the rest were probe ticks).
    #[serde(default)]
    pub stacks: u64,
    /// The last read error, if any, for the summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What timed the loops: `kernel` (perf tracepoints) or `probe` (/proc ticks); empty in
    /// recordings made before the kernel clock existed (they used the probe).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub clock: String,
    /// Why the probe timed the loops (the kernel clock was refused), or what it gave up on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_note: Option<String>,
    /// Loop boundaries the kernel clock reported.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub events: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SamplerStats {
    /// Samples per second actually taken.
    pub fn achieved_rate(&self) -> f64 {
        if self.elapsed > 0.0 {
            self.samples as f64 / self.elapsed
        } else {
            0.0
        }
    }
}

/// What to sample, how often, and when to stop.
pub struct Limits<'a> {
    /// Ticks per second. A tick is a cheap probe of the loop threads; full stacks are read at
    /// `stack_rate`, and more often while a callback runs past the threshold.
    pub rate: f64,
    /// Full stacks per second in the background (for the flame graph of ordinary work).
    pub stack_rate: f64,
    /// Seconds: a callback running this long is an episode. The loop threads' stacks are read
    /// at every tick from `BUSY_STACKS` into a callback, or from half the threshold when that
    /// is sooner, so that the episode's callback, culprit and stack are known: a run no stack
    /// names is not reported, and a block just past the threshold must get stacks read even
    /// when the sampler runs late.
    pub threshold: f64,
    pub duration: Option<Duration>,
    pub stop: &'a AtomicBool,
    /// What times loop boundaries: the kernel's tracepoints or probe ticks.
    pub clock: ClockChoice,
    /// With the kernel clock: ticks per second while a callback runs past `QUIET` (they read
    /// the ready queue to split callbacks of one iteration, and the OS state).
    pub kernel_rate: f64,
}

/// Give up when this many reads in a row failed while the target still runs.
const MAX_CONSECUTIVE_ERRORS: u64 = 500;
/// Once a loop thread has been inside one callback this long, every tick reads the loop
/// threads' stacks, so even an episode just past the threshold gets its culprit and stack from
/// many samples.
const BUSY_STACKS: Duration = Duration::from_millis(5);
/// Past this much of one callback, loop stacks are read every `BURST` instead of every tick
/// (a long hang does not need a thousand stacks a second, and recordings stay small).
const PER_TICK_UNTIL: Duration = Duration::from_secs(1);
/// Stack interval of a callback past `PER_TICK_UNTIL`.
const BURST: Duration = Duration::from_millis(10);
/// A stack read that took `t` is not repeated before `COST_SPACING * t` has passed, so a costly
/// read (a stack thousands of frames deep, hundreds of threads) takes at most about 5% of the
/// sampler's time and never delays tick after tick. The spacing is capped, so one slow read (a
/// first read that loads every code object, a stall) never keeps a long callback without
/// stacks: the loop threads are read at least every `MAX_LOOP_SPACING` while one is busy.
const COST_SPACING: u32 = 20;
const MAX_LOOP_SPACING: Duration = Duration::from_millis(40);
const MAX_ALL_SPACING: Duration = Duration::from_secs(2);
/// The tick rate when the source cannot probe and every tick reads full stacks.
pub const STACK_ONLY_MAX_RATE: f64 = 100.0;

/// Per loop thread: since when it has been inside one callback, as the ticks see it.
#[derive(Default)]
struct RunClock {
    busy_since: Option<Instant>,
    ready: Option<ReadyQueue>,
}

fn in_epoll(t: &ThreadSample) -> bool {
    matches!(
        t.os.as_ref().and_then(|o| o.syscall.as_deref()),
        Some("epoll_wait" | "epoll_pwait" | "epoll_pwait2")
    )
}

/// Follow the loop threads of one tick; how long the busiest of them has been inside one
/// callback (`None` when all are idle).
fn track_runs(
    clocks: &mut HashMap<u32, RunClock>,
    threads: &[ThreadSample],
    now: Instant,
) -> Option<Duration> {
    let mut longest: Option<Duration> = None;
    for t in threads.iter().filter(|t| t.event_loop.is_some()) {
        let c = clocks.entry(t.tid).or_default();
        let popped = matches!((&c.ready, &t.ready), (Some(a), Some(b)) if a.popped_before(b));
        c.ready = t.ready;
        if in_epoll(t) || t.os.is_none() {
            c.busy_since = None;
        } else if popped || c.busy_since.is_none() {
            c.busy_since = Some(now);
        }
        if let Some(since) = c.busy_since {
            longest = longest.max(Some(now - since));
        }
    }
    longest
}

/// Finds new processes to sample (worker processes started after attaching); called every
/// `DISCOVER_EVERY` with the pids already sampled. Each comes with the line to print once its
/// first sample is read and its loops are traced (the handshake users and tests wait for).
pub type Discover<'a> =
    dyn FnMut(&[u32]) -> Vec<(Box<dyn SampleSource + Send>, String)> + Send + 'a;

/// How often `Discover` is asked for new processes (it only collects what a finder thread
/// attached, so it is cheap).
const DISCOVER_EVERY: Duration = Duration::from_millis(100);
/// After an `exec()`, how often to try attaching to the new program, and for how long.
const REATTACH_EVERY: Duration = Duration::from_millis(50);
const REATTACH_FOR: Duration = Duration::from_secs(10);
/// The longest the sampler sleeps at once: a stop request or the deadline is seen within it,
/// whatever the rate.
const NAP: Duration = Duration::from_millis(50);
/// Intervals are capped here, so no rate given to the library overflows a `Duration`.
const MAX_INTERVAL: f64 = 3600.0;

/// `1 / rate` seconds, capped at `MAX_INTERVAL` (also for a rate of 0 or NaN).
// Not `clamp`: it passes NaN through, and `from_secs_f64(NaN)` panics; `min` maps it to the cap.
#[allow(clippy::manual_clamp)]
fn interval_of(rate: f64) -> Duration {
    Duration::from_secs_f64((1.0 / rate).min(MAX_INTERVAL).max(0.0))
}

/// One sampled process and its schedule.
struct Slot<'s> {
    source: Box<dyn SampleSource + Send + 's>,
    /// The last read of every thread's stack, and how long it took.
    last_stack: Option<Instant>,
    stack_cost: Duration,
    /// The last read of the loop threads' stacks (a full read counts too), and its cost.
    last_loop_stack: Option<Instant>,
    loop_cost: Duration,
    /// How long the busiest loop thread has been in one callback, as of the last tick.
    busy: Option<Duration>,
    clocks: HashMap<u32, RunClock>,
    consecutive: u64,
    kernel: kernel::KernelSlot,
    /// Since when (and when last tried) the process's new program is waited for.
    reattaching: Option<(Instant, Instant)>,
    /// The line saying the process is followed, printed after its first sample (see
    /// [`Discover`]).
    announce: Option<String>,
}

/// What one tick of one process gave.
enum Read {
    /// A sample, and the errors met on the way (stacks left out, a stack read that failed
    /// and fell back to a probe).
    Sample(Sample, u64),
    Skipped,
    Failed(anyhow::Error),
    /// The program the source read is gone (`exec`), and why.
    Replaced(String),
}

/// Which read a tick makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    All,
    Loops,
    Probe,
}

impl<'s> Slot<'s> {
    fn new(source: Box<dyn SampleSource + Send + 's>, clock: Option<KernelClock>) -> Slot<'s> {
        Slot {
            source,
            last_stack: None,
            stack_cost: Duration::ZERO,
            last_loop_stack: None,
            loop_cost: Duration::ZERO,
            busy: None,
            clocks: HashMap::new(),
            consecutive: 0,
            kernel: kernel::KernelSlot::new(clock),
            reattaching: None,
            announce: None,
        }
    }

    /// What this tick reads: every thread at the background stack rate; the loop threads while
    /// one runs a callback past `BUSY_STACKS` (every tick, then every `BURST`); else a probe.
    /// A read is not repeated sooner than `COST_SPACING` times what it last cost.
    /// `busy`: how long the busiest loop thread has been in one callback (from the kernel clock
    /// when it times this process, else from the ticks).
    fn plan(&self, tick: Instant, limits: &Timing, busy: Option<Duration>) -> Kind {
        let since = |t: Option<Instant>| t.map(|t| tick.saturating_duration_since(t));
        let all_every = limits
            .stack_interval
            .max((self.stack_cost * COST_SPACING).min(MAX_ALL_SPACING));
        if since(self.last_stack).is_none_or(|s| s >= all_every) {
            return Kind::All;
        }
        let loop_every = match busy {
            Some(b) if b >= PER_TICK_UNTIL => Some(BURST),
            Some(b) if b >= limits.burst_after => Some(Duration::ZERO),
            _ => None,
        };
        let spacing = (self.loop_cost * COST_SPACING).min(MAX_LOOP_SPACING);
        match loop_every {
            Some(every) if since(self.last_loop_stack).is_none_or(|s| s >= every.max(spacing)) => {
                Kind::Loops
            }
            _ => Kind::Probe,
        }
    }

    fn tick(&mut self, tick: Instant, wall: f64, mono: f64, limits: &Timing) -> Read {
        let kernel = self.kernel.active();
        let busy = if kernel {
            self.kernel.busy(tick, limits)
        } else {
            self.busy
        };
        let mut kind = self.plan(tick, limits, busy);
        // With the kernel clock nothing is read while the loops are idle or in short callbacks
        // (a background stack read still is); a loop stack read counts as the busy loop's tick.
        if kernel && !self.kernel.probe_due(tick, limits, kind != Kind::Probe) && kind != Kind::All
        {
            return Read::Skipped;
        }
        let started = Instant::now();
        let mut read = match kind {
            Kind::All => self.source.sample(),
            Kind::Loops => match self.source.sample_loops() {
                Some(r) => r,
                None => {
                    kind = Kind::All;
                    self.source.sample()
                }
            },
            Kind::Probe => match self.source.probe() {
                Some(r) => r,
                // No cheap path for now (no loop known yet, or a layout we cannot read): read
                // stacks instead, but no faster than a stack read can keep up with.
                None if self
                    .last_stack
                    .is_none_or(|t| tick - t >= limits.stack_only) =>
                {
                    kind = Kind::All;
                    self.source.sample()
                }
                None => return Read::Skipped,
            },
        };
        // After the read: if the program is still the one attached to now, it was then too.
        if let Some(why) = self.source.replaced() {
            return Read::Replaced(why);
        }
        let cost = started.elapsed();
        match kind {
            Kind::All => {
                (self.last_stack, self.stack_cost) = (Some(tick), cost);
                self.last_loop_stack = Some(tick);
            }
            Kind::Loops => (self.last_loop_stack, self.loop_cost) = (Some(tick), cost),
            Kind::Probe => {}
        }
        let mut errors = self.source.take_dropped();
        if kind != Kind::Probe && read.is_err() {
            // A torn stack read: the tick still sees the loops' state through a probe.
            if let Some(Ok(threads)) = self.source.probe() {
                errors += 1;
                read = Ok(threads);
                kind = Kind::Probe;
            }
        }
        match read {
            // Nothing to probe (a process without a loop): no sample.
            Ok(threads) if kind == Kind::Probe && threads.is_empty() => {
                self.consecutive = 0;
                Read::Skipped
            }
            Ok(threads) => {
                self.consecutive = 0;
                // Timed when the read looked, not at the tick (see `SampleSource::read_at`).
                let late = self
                    .source
                    .read_at()
                    .map_or(0.0, |at| at.saturating_duration_since(tick).as_secs_f64());
                let (wall, mono) = (wall + late, mono + late);
                if kernel {
                    let popped = threads.iter().any(|t| {
                        let before = self.clocks.get(&t.tid).and_then(|c| c.ready);
                        matches!((before, t.ready), (Some(a), Some(b)) if a.popped_before(&b))
                    });
                    self.kernel.observe_read(tick, popped, limits);
                }
                self.busy = track_runs(&mut self.clocks, &threads, tick);
                Read::Sample(
                    Sample {
                        wall,
                        mono,
                        pid: self.source.pid(),
                        probe: kind == Kind::Probe,
                        threads,
                        events: Vec::new(),
                    },
                    errors,
                )
            }
            Err(e) => {
                self.consecutive += 1;
                Read::Failed(e)
            }
        }
    }
}

/// A sample carrying only the kernel clock's `events` of process `pid`.
fn events_sample(wall: f64, mono: f64, pid: u32, events: Vec<LoopEvent>) -> Sample {
    Sample {
        wall,
        mono,
        pid,
        probe: true,
        threads: Vec::new(),
        events,
    }
}

/// Now on the wall clock, in Unix seconds (0 before the epoch).
fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The empty sample that closes what process `pid` was running at this tick (it exited, or
/// exec'd another program): the detector ends its open episodes here.
fn ended(wall: f64, mono: f64, pid: u32) -> Sample {
    Sample {
        wall,
        mono,
        pid,
        probe: false,
        threads: Vec::new(),
        events: Vec::new(),
    }
}

/// The intervals derived from `Limits`.
struct Timing {
    stack_interval: Duration,
    stack_only: Duration,
    threshold: Duration,
    /// The instant of `mono` 0.
    start: Instant,
    /// Kernel clock: the tick interval while a callback runs past `QUIET`.
    kernel_interval: Duration,
    /// The loop threads' stacks are read at every tick once a callback has run this long:
    /// `BUSY_STACKS`, or half the threshold when that is sooner.
    burst_after: Duration,
}

/// Run the loop over one process, handing each sample to `sink` with the stats so far.
/// Returns the stats; errors only when sampling keeps failing on a live target or the sink
/// fails.
pub fn run(
    source: &mut (dyn SampleSource + Send),
    limits: &Limits,
    sink: &mut dyn FnMut(Sample, &SamplerStats) -> Result<()>,
) -> Result<SamplerStats> {
    struct Borrowed<'a>(&'a mut (dyn SampleSource + Send));
    impl SampleSource for Borrowed<'_> {
        fn pid(&self) -> u32 {
            self.0.pid()
        }
        fn sample(&mut self) -> Result<Vec<ThreadSample>> {
            self.0.sample()
        }
        fn probe(&mut self) -> Option<Result<Vec<ThreadSample>>> {
            self.0.probe()
        }
        fn sample_loops(&mut self) -> Option<Result<Vec<ThreadSample>>> {
            self.0.sample_loops()
        }
        fn take_dropped(&mut self) -> u64 {
            self.0.take_dropped()
        }
        fn read_at(&mut self) -> Option<Instant> {
            self.0.read_at()
        }
        fn alive(&mut self) -> bool {
            self.0.alive()
        }
        fn loop_tids(&self) -> Vec<u32> {
            self.0.loop_tids()
        }
        fn gil_range(&self) -> Option<std::ops::Range<u64>> {
            self.0.gil_range()
        }
        fn replaced(&mut self) -> Option<String> {
            self.0.replaced()
        }
        fn reattach(&mut self) -> Result<Option<Reattached>> {
            self.0.reattach()
        }
    }
    run_tree(vec![Box::new(Borrowed(source))], None, limits, sink)
}

/// Run the loop over a root process and, with `discover`, the processes it finds later (worker
/// processes). The first source is the root: sampling ends when it exits. A worker that exits
/// gets one last, empty sample so its open episodes end there.
///
/// The ticks run on a thread of their own and `sink` on the caller's, so no output ever delays
/// a tick (see [`handoff`]).
pub fn run_tree<'s>(
    sources: Vec<Box<dyn SampleSource + Send + 's>>,
    discover: Option<&mut Discover>,
    limits: &Limits,
    sink: &mut dyn FnMut(Sample, &SamplerStats) -> Result<()>,
) -> Result<SamplerStats> {
    handoff::run_beside(|out| ticks(sources, discover, limits, out), sink)
}

/// The tick loop of [`run_tree`], handing samples and stderr lines to `out`.
fn ticks<'s>(
    sources: Vec<Box<dyn SampleSource + Send + 's>>,
    mut discover: Option<&mut Discover>,
    limits: &Limits,
    out: &Outbox,
) -> Result<SamplerStats> {
    let interval = interval_of(limits.rate);
    let start = Instant::now();
    let timing = Timing {
        stack_interval: interval_of(limits.stack_rate.min(limits.rate)),
        stack_only: interval_of(STACK_ONLY_MAX_RATE),
        threshold: Duration::from_secs_f64(limits.threshold.clamp(0.0, MAX_INTERVAL)),
        start,
        kernel_interval: interval_of(limits.kernel_rate),
        // At most half the threshold: a 55 ms block at a 50 ms threshold, with the sampler 30 ms
        // late at the wrong moment, got no stack read at all and was not reported.
        burst_after: BUSY_STACKS.min(Duration::from_secs_f64(limits.threshold / 2.0)),
    };
    let deadline = limits.duration.and_then(|d| start.checked_add(d));
    let mut stats = SamplerStats {
        rate: limits.rate,
        ..Default::default()
    };
    let mut next = start;
    let mut slots: Vec<Slot> = Vec::new();
    for source in sources {
        let clock = kernel::make_clock(limits, start, &mut stats)?;
        slots.push(Slot::new(source, clock));
    }
    let mut last_discover = start;
    'ticks: loop {
        let end = if limits.stop.load(Ordering::Relaxed) {
            Some("interrupted")
        } else if limits.duration.is_some_and(|d| start.elapsed() >= d) {
            Some("duration")
        } else {
            None
        };
        if let Some(end) = end {
            stats.end = end.into();
            drain_at_stop(&mut slots, limits, start, &mut stats, out)?;
            break;
        }
        // On the kernel clock alone, wake when a slot needs to (a callback running long, a
        // stack due, the next check for one) or a ring buffer fills; else at the next tick.
        let kernel_wake = kernel::next_wake(&slots, &timing);
        let wake = kernel_wake.unwrap_or(next);
        let now = Instant::now();
        if now < wake {
            // Never one long wait: a stop or the deadline is seen within `NAP`, at any rate.
            let mut until = wake.min(now + NAP);
            if let Some(d) = deadline {
                until = until.min(d);
            }
            kernel::wait(&mut slots, until - now)?;
            // The nap ran out before the wake: back to the loop head (stop, deadline). A wait
            // that returned early was a ring buffer filling: tick now.
            if until < wake && Instant::now() >= until {
                continue;
            }
        }
        let tick = Instant::now();
        // A kernel-clock wake already due when computed ("as soon as possible") is not late;
        // a probe tick is late from its scheduled time.
        let (late, period) = match kernel_wake {
            Some(_) => (
                tick.saturating_duration_since(wake.max(now)),
                timing.kernel_interval,
            ),
            None => (tick.saturating_duration_since(wake), interval),
        };
        if late > period / 2 {
            stats.late += 1;
            stats.max_late_ms = stats.max_late_ms.max(late.as_secs_f64() * 1000.0);
            // Skip the missed ticks instead of bursting to catch up.
            next = tick;
        }
        if kernel_wake.is_some() {
            next = tick;
        }
        // Never more than one interval ahead: a wake that came early (a ring buffer filled)
        // must not push the schedule into the future.
        next = (next + interval).min(tick + interval);
        let wall = wall_now();
        let mono = tick.duration_since(start).as_secs_f64();
        let mut any = false;
        let mut i = 0;
        while i < slots.len() {
            // The line saying a process was attached to again, once its new program is read.
            let mut told = None;
            if slots[i].reattaching.is_some() {
                match reattach(&mut slots[i], tick, out) {
                    Reattach::Waiting => i += 1,
                    Reattach::Done(source, line) => {
                        // Read the new program at this tick, not the next one.
                        let clock = kernel::make_clock(limits, start, &mut stats)?;
                        slots[i] = Slot::new(source, clock);
                        told = Some(line);
                    }
                    Reattach::GaveUp(why) if i == 0 => {
                        stats.end = why;
                        break 'ticks;
                    }
                    Reattach::GaveUp(_) => {
                        slots.remove(i);
                    }
                }
                if told.is_none() {
                    continue;
                }
            }
            if let Some(events) = kernel::step(&mut slots[i], limits, mono, &mut stats)? {
                let pid = slots[i].source.pid();
                out.sample(events_sample(wall, mono, pid, events), &stats)?;
            }
            let read = slots[i].tick(tick, wall, mono, &timing);
            if !matches!(read, Read::Sample(..)) {
                if let Some(line) = told.take() {
                    out.line(line)?;
                }
            }
            match read {
                Read::Sample(sample, errors) => {
                    any = true;
                    stats.errors += errors;
                    if !sample.probe {
                        stats.stacks += 1;
                    }
                    stats.elapsed = mono;
                    // The kernel clock is drained again after the read, and its events go on
                    // in time order around the sample. Drained only before the read, an epoll
                    // entry made between that drain and the read reached the detector after a
                    // sample that already showed the next callback: the detector took the
                    // entry for a stale one and ignored it, and that callback's run lasted
                    // until the loop's next exit (a 103 ms episode of an idle loop, CI).
                    // Loops this read found are traced here too, not at the next wake: a
                    // callback that begins soon after an attach or an exec gets an exact
                    // start. And before the sample goes on: its sink says that sampling began
                    // (the handshake scripts and tests wait for), which must mean the loops
                    // are timed. Said first, a request sent on it began before the tracing
                    // did, and its start fell in a 36 ms gap of the first ticks (an 18 ms
                    // error bar on an episode 14 ms short).
                    let now = (wall_now(), start.elapsed().as_secs_f64());
                    let pid = slots[i].source.pid();
                    let (before, after): (Vec<LoopEvent>, Vec<LoopEvent>) =
                        kernel::step(&mut slots[i], limits, now.1, &mut stats)?
                            .unwrap_or_default()
                            .into_iter()
                            .partition(|e| e.t <= sample.mono);
                    if !before.is_empty() {
                        let (wall, mono) = (sample.wall, sample.mono);
                        out.sample(events_sample(wall, mono, pid, before), &stats)?;
                    }
                    out.sample(sample, &stats)?;
                    if !after.is_empty() {
                        out.sample(events_sample(now.0, now.1, pid, after), &stats)?;
                    }
                    for line in told.take().into_iter().chain(slots[i].announce.take()) {
                        out.line(line)?;
                    }
                    i += 1;
                }
                Read::Skipped => i += 1,
                Read::Replaced(why) => {
                    let slot = &mut slots[i];
                    let pid = slot.source.pid();
                    if i == 0 && !slot.source.alive() {
                        // An exit, as a failed read would have found it.
                        stats.end = "target exited".into();
                        break 'ticks;
                    }
                    // The callback running then ended with the program (or the process): close
                    // its episode at this tick, and never count the new program's time in it.
                    out.sample(ended(wall, mono, pid), &stats)?;
                    if !slot.source.alive() {
                        slots.remove(i);
                        continue;
                    }
                    // The kernel clock followed the old program's threads: nobody drains it
                    // while waiting, so it goes now (a fresh one comes with the new source).
                    slot.kernel = kernel::KernelSlot::new(None);
                    out.line(format!(
                        "loopspy: process {pid} {why}: the episode in progress ends here; attaching to it again"
                    ))?;
                    slot.reattaching = Some((tick, tick));
                    i += 1;
                }
                Read::Failed(e) => {
                    stats.errors += 1;
                    stats.last_error = Some(format!("{e:#}"));
                    let slot = &mut slots[i];
                    if !slot.source.alive() {
                        if i == 0 {
                            stats.end = "target exited".into();
                            break 'ticks;
                        }
                        // A worker ended: close its episodes at this tick.
                        let pid = slot.source.pid();
                        slots.remove(i);
                        out.sample(ended(wall, mono, pid), &stats)?;
                        continue;
                    }
                    if slot.consecutive >= MAX_CONSECUTIVE_ERRORS {
                        bail!(
                            "sampling failed {} times in a row; last error: {e:#}",
                            slot.consecutive
                        );
                    }
                    i += 1;
                }
            }
        }
        if any {
            stats.samples += 1;
        }
        if let Some(d) = discover.as_mut() {
            if tick - last_discover >= DISCOVER_EVERY {
                last_discover = tick;
                let known: Vec<u32> = slots.iter().map(|s| s.source.pid()).collect();
                for (s, line) in d(&known) {
                    let clock = kernel::make_clock(limits, start, &mut stats)?;
                    let mut slot = Slot::new(s, clock);
                    slot.announce = Some(line);
                    slots.push(slot);
                }
            }
        }
    }
    Ok(stats)
}

/// The kernel clocks' records up to the stop, handed on as a last sample per process: a
/// callback that ended after the last wake's drain (the loop went back to epoll) ends there,
/// instead of becoming an episode still running at the stop (`complete: false`). The Ctrl-C
/// can land while the sampler works between a drain and its stop check.
fn drain_at_stop(
    slots: &mut [Slot],
    limits: &Limits,
    start: Instant,
    stats: &mut SamplerStats,
    out: &Outbox,
) -> Result<()> {
    let (wall, mono) = (wall_now(), start.elapsed().as_secs_f64());
    for slot in slots.iter_mut().filter(|s| s.reattaching.is_none()) {
        if let Some(events) = kernel::step(slot, limits, mono, stats)? {
            let pid = slot.source.pid();
            out.sample(events_sample(wall, mono, pid, events), stats)?;
        }
    }
    Ok(())
}

enum Reattach<'s> {
    Waiting,
    /// The new program's source, and the line to print once it has been read (the loops it
    /// runs are then traced on the kernel clock: tests wait for this line).
    Done(Box<dyn SampleSource + Send + 's>, String),
    /// Why sampling this process ends.
    GaveUp(String),
}

/// One attempt (every `REATTACH_EVERY`) to attach to the new program of a slot's process.
fn reattach<'s>(slot: &mut Slot<'s>, tick: Instant, out: &Outbox) -> Reattach<'s> {
    let Some((since, tried)) = slot.reattaching else {
        return Reattach::Waiting;
    };
    if tick - tried < REATTACH_EVERY {
        return Reattach::Waiting;
    }
    slot.reattaching = Some((since, tick));
    let pid = slot.source.pid();
    let attempt = slot.source.reattach();
    if !slot.source.alive() {
        return Reattach::GaveUp("target exited".into());
    }
    let why = match attempt {
        Ok(Some(r)) => {
            let line = format!(
                "loopspy: attached to process {pid} again: it now runs {}",
                crate::output::escape::escape(&r.what)
            );
            return Reattach::Done(r.source, line);
        }
        Ok(None) if tick - since < REATTACH_FOR => return Reattach::Waiting,
        Ok(None) => format!(
            "its new program was not readable as Python within {} s",
            REATTACH_FOR.as_secs()
        ),
        Err(e) => format!("{e:#}"),
    };
    // A failed hand-off (the outputs stopped) ends the tick loop at its next sample anyway.
    let _ = out.line(format!(
        "loopspy: stopped sampling process {pid}: {}",
        crate::output::escape::escape(&why)
    ));
    Reattach::GaveUp(format!("target replaced by exec: {why}"))
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
