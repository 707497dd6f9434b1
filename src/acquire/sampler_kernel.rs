//! The sampler's schedule on the kernel clock. The kernel timestamps every loop boundary, so
//! the sampler does not tick to find them: it wakes to read the ring buffers every
//! [`check_interval`] (half the threshold, 10 to 25 ms; sooner when a buffer is half full),
//! reads stacks at the background rate, and only while a callback has run past `QUIET` does it
//! tick (at `--rate`, 100 Hz by default) to read the ready queue and OS state, plus stacks every
//! 10 ms past the threshold. An idle loop costs a wake-up per check; a busy one its events.

use super::*;
use crate::acquire::perf;
use crate::error::UserError;
use crate::sample::{LoopEvent, LoopEventKind};

/// `--clock`: what times the loops' boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClockChoice {
    /// The kernel clock when perf events are allowed, else the probe (with a notice).
    Auto,
    /// perf tracepoints on the loop threads' epoll and futex calls; an error if refused.
    Kernel,
    /// Ticks reading each loop thread's syscall from /proc and its ready queue.
    Probe,
}

/// A callback must have run this long before the kernel clock's ticks read anything.
pub const QUIET: Duration = Duration::from_millis(5);
/// With the kernel clock and no callback running long, how often the ring buffers are read:
/// half the threshold, so a callback that reaches the threshold has been seen starting before it
/// does, and its in-progress hang is reported at the first tick past the threshold (one tick
/// interval late at most); no more often than every 10 ms, no less than every 25 ms. On this VM
/// a wake-up costs 20-40 µs: 40 checks a second are 0.1-0.2 % of a core.
pub fn check_interval(threshold: Duration) -> Duration {
    (threshold / 2).clamp(Duration::from_millis(10), Duration::from_millis(25))
}
/// How often the loop threads' list is handed to the clock again even when it did not change
/// (threads over the event-rate limit are retried then).
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// One process's kernel clock and its schedule.
pub(super) struct KernelSlot {
    clock: Option<KernelClock>,
    /// The loop threads last handed to the clock.
    loops: Vec<u32>,
    /// Whether the clock traces every one of them (else probe ticks time this process).
    covered: bool,
    last_follow: Option<Instant>,
    last_drain: Option<Instant>,
    last_probe: Option<Instant>,
    /// Since when (recording seconds) a loop thread has been in a callback, as of the last
    /// drain.
    busy_since: Option<f64>,
    /// Tick at once: tracing just began on a thread, whose state only a read can tell.
    probe_now: bool,
    /// The last read of the ready queues, and the last one inside the current gap that saw a
    /// dispatch: the callback running now began after it.
    last_read: Option<Instant>,
    last_pop: Option<Instant>,
}

impl KernelSlot {
    pub(super) fn new(clock: Option<KernelClock>) -> KernelSlot {
        KernelSlot {
            clock,
            loops: Vec::new(),
            covered: false,
            last_follow: None,
            last_drain: None,
            last_probe: None,
            busy_since: None,
            probe_now: false,
            last_read: None,
            last_pop: None,
        }
    }

    /// Whether the kernel clock times every loop of this process now.
    pub(super) fn active(&self) -> bool {
        self.clock.is_some() && self.covered
    }

    fn busy_at(&self, t: &Timing) -> Option<Instant> {
        self.busy_since
            .map(|b| t.start + Duration::from_secs_f64(b.max(0.0)))
    }

    /// How long the callback running now has run: since the loop left epoll, or since the
    /// last dispatch the ticks saw inside this gap (one iteration may run thousands of short
    /// callbacks, as pyperformance's async_tree does). `None` while the loops are idle.
    pub(super) fn busy(&self, tick: Instant, t: &Timing) -> Option<Duration> {
        let b = self.busy_at(t)?;
        let since = match self.last_pop {
            Some(p) if p > b => p,
            _ => b,
        };
        Some(tick.saturating_duration_since(since))
    }

    /// A read of the ready queues at `tick`; `popped`: a loop dispatched since the last read.
    /// Only a dispatch between two reads inside the current gap counts.
    pub(super) fn observe_read(&mut self, tick: Instant, popped: bool, t: &Timing) {
        let in_gap = match (self.last_read, self.busy_at(t)) {
            (Some(r), Some(b)) => r >= b,
            _ => false,
        };
        if popped && in_gap {
            self.last_pop = Some(tick);
        }
        self.last_read = Some(tick);
    }

    /// Whether this wake ticks: a callback has run past `QUIET` and a tick interval passed. A
    /// stack read (`stack_due`) during such a callback counts as its tick (it reads the ready
    /// queue too).
    pub(super) fn probe_due(&mut self, tick: Instant, t: &Timing, stack_due: bool) -> bool {
        if std::mem::take(&mut self.probe_now) {
            self.last_probe = Some(tick);
            return true;
        }
        let Some(b) = self.busy_at(t) else {
            return false;
        };
        // The tick at the threshold itself: a hang in progress is seen then, not up to a tick
        // interval later.
        let at_threshold =
            tick >= b + t.threshold && self.last_probe.is_none_or(|p| p < b + t.threshold);
        let due = tick >= b + QUIET
            && (stack_due
                || at_threshold
                || self
                    .last_probe
                    .is_none_or(|p| tick >= p + t.kernel_interval - t.kernel_interval / 10));
        if due {
            self.last_probe = Some(tick);
        }
        due
    }

    /// When this process next needs a wake.
    fn wake(&self, last_stack: Option<Instant>, t: &Timing) -> Instant {
        let now = Instant::now();
        let mut wake = self
            .last_drain
            .map_or(now, |d| d + check_interval(t.threshold));
        wake = wake.min(last_stack.map_or(now, |s| s + t.stack_interval));
        if let Some(b) = self.busy_at(t) {
            let first = b + QUIET;
            wake = wake.min(
                self.last_probe
                    .map_or(first, |p| (p + t.kernel_interval).max(first)),
            );
            let threshold = b + t.threshold;
            if self.last_probe.is_none_or(|p| p < threshold) {
                wake = wake.min(threshold.max(first));
            }
        }
        wake
    }
}

/// The clock for a new process: none on `--clock probe`, or when the kernel refuses and the
/// choice is `auto` (the reason goes into the stats, for the notice and the summary).
pub(super) fn make_clock(
    limits: &Limits,
    start: Instant,
    stats: &mut SamplerStats,
) -> Result<Option<KernelClock>> {
    if limits.clock == ClockChoice::Probe {
        stats.clock = "probe".into();
        return Ok(None);
    }
    match KernelClock::new(start, limits.threshold) {
        Ok(c) => {
            if stats.clock.is_empty() {
                stats.clock = "kernel".into();
                stats.rate = limits.kernel_rate;
            }
            Ok(Some(c))
        }
        Err(e) => refused(limits, stats, &e).map(|()| None),
    }
}

/// The kernel refused: an error on `--clock kernel`, else fall back to the probe.
fn refused(limits: &Limits, stats: &mut SamplerStats, e: &anyhow::Error) -> Result<()> {
    let reason = perf::unavailable_reason(e);
    if limits.clock == ClockChoice::Kernel {
        return Err(UserError::KernelClock { reason }.into());
    }
    stats.clock = "probe".into();
    stats.rate = limits.rate;
    stats.clock_note = Some(format!("kernel clock unavailable: {reason}"));
    Ok(())
}

/// Kernel-clock work at a wake: hand the clock the loop threads, read its events. `None` when
/// there is nothing to record.
pub(super) fn step(
    slot: &mut Slot,
    limits: &Limits,
    mono: f64,
    stats: &mut SamplerStats,
) -> Result<Option<Vec<LoopEvent>>> {
    let Some(clock) = slot.kernel.clock.as_mut() else {
        return Ok(None);
    };
    let now = Instant::now();
    let mut events = Vec::new();
    let loops = slot.source.loop_tids();
    if loops != slot.kernel.loops
        || slot
            .kernel
            .last_follow
            .is_none_or(|f| now - f >= FOLLOW_EVERY)
    {
        if let Err(e) = clock.follow(&loops, slot.source.gil_range(), mono, &mut events) {
            slot.kernel.clock = None;
            slot.kernel.covered = false;
            refused(limits, stats, &e)?;
            return Ok(None);
        }
        slot.kernel.loops = loops;
        slot.kernel.last_follow = Some(now);
    }
    slot.kernel.probe_now |= events.iter().any(|e| e.kind == LoopEventKind::Traced);
    clock.drain(&mut events);
    slot.kernel.busy_since = clock.busy_since();
    let covered = !slot.kernel.loops.is_empty() && clock.covers(&slot.kernel.loops);
    if covered && !slot.kernel.covered {
        // Probe ticks timed the loops until now: their last run state ends here.
        slot.clocks.clear();
    }
    slot.kernel.covered = covered;
    slot.kernel.last_drain = Some(now);
    if clock.rate_limited > 0 {
        stats.clock_note = Some(format!(
            "{} time(s) a loop thread made over {} traced calls a second: it was timed by probe ticks for 30 s",
            clock.rate_limited,
            crate::acquire::kernel_clock::EVENT_LIMIT
        ));
    }
    stats.events += events.len() as u64;
    Ok((!events.is_empty()).then_some(events))
}

/// The next wake when every process is on the kernel clock; `None` means tick at `--rate`.
pub(super) fn next_wake(slots: &[Slot], t: &Timing) -> Option<Instant> {
    if slots.is_empty() || !slots.iter().all(|s| s.kernel.active()) {
        return None;
    }
    slots.iter().map(|s| s.kernel.wake(s.last_stack, t)).min()
}

/// Sleep for `dur`, or less when a kernel clock's buffer fills or a traced thread exits (its
/// clock then drops it at the next drain).
pub(super) fn wait(slots: &mut [Slot], dur: Duration) -> Result<()> {
    let fds: Vec<std::os::fd::RawFd> = slots
        .iter()
        .filter_map(|s| s.kernel.clock.as_ref())
        .flat_map(|c| c.poll_fds())
        .collect();
    if fds.is_empty() {
        std::thread::sleep(dur);
        return Ok(());
    }
    let hung_up = perf::poll_readable(&fds, dur)?;
    if !hung_up.is_empty() {
        for clock in slots.iter_mut().filter_map(|s| s.kernel.clock.as_mut()) {
            clock.hung_up(&hung_up);
        }
    }
    Ok(())
}
