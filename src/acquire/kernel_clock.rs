//! The kernel clock of one process: perf traces ([`crate::acquire::perf`]) on its event-loop
//! threads, turned into [`LoopEvent`]s on the recording's monotonic clock.
//!
//! Two things keep it cheap for loopspy and for the target:
//! - Only gaps worth knowing are reported. A loop that left epoll and re-entered it within
//!   `min_gap` (1 ms, or half the threshold if smaller) ran nothing that could become an episode,
//!   so the pair is dropped here; a busy loop's tens of thousands of iterations a second cost a
//!   parse each, not a trip through the detector or a line in the recording. One exception: the
//!   first wait after a reported poll is always reported (see `Pairing::after_poll`).
//! - An event-rate limit. Every traced syscall costs the target about a microsecond here (see
//!   README, "Choosing the clock"). A loop thread that makes more than `EVENT_LIMIT` traced
//!   calls a second is untraced, and timed by probe ticks, for `RETRY`; then it is traced again.

use std::collections::HashMap;
use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::acquire::perf::{self, Call, Record, ThreadTrace, Tracepoints};
use crate::sample::{LoopEvent, LoopEventKind};

/// Traced calls per second above which a thread goes back to the probe: about 0.5 % of the
/// target's time at the ~1 µs each measured here.
pub const EVENT_LIMIT: u64 = 5_000;
/// How long a thread over the limit stays on the probe before it is traced again.
const RETRY: Duration = Duration::from_secs(30);
/// A futex wait on the GIL that starts within this long after the previous one returned
/// continues the same wait (3.8–3.11 wait in 5 ms slices, and are briefly running between).
const GIL_SLICE_GAP_NS: u64 = 200_000;

/// The tracepoints, found once per run (the `Err` is the reason they cannot be used), with one
/// trace of each held open for the whole run on a parked thread of ours. Closing the last perf
/// event of a tracepoint unregisters it, which waits out an RCU grace period: 35-45 ms per
/// event on this VM, about 300 ms per thread. With the pin held, untracing a loop thread or
/// dropping an exited worker's clock closes in microseconds instead of stalling the sampler.
static PINNED: OnceLock<Result<Tracepoints, String>> = OnceLock::new();

/// Find the tracepoints and open them on a parked thread of ours, which stays for the run: the
/// same permission checks as on the target's threads, minus ptrace rights.
fn pin() -> Result<Tracepoints> {
    let points = Tracepoints::discover()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let theirs = points.clone();
    std::thread::Builder::new()
        .name("loopspy-pin".into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            match ThreadTrace::open(tid, &theirs, Some(0..1)) {
                Ok(trace) => {
                    let _ = tx.send(Ok(()));
                    let _held = trace;
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .context("starting the thread that holds the tracepoints")?;
    rx.recv()
        .context("the thread that holds the tracepoints ended")??;
    Ok(points)
}

/// Per traced thread: the trace and what its records said so far.
struct Traced {
    trace: ThreadTrace,
    pair: Pairing,
    window_start: Instant,
    window_records: u64,
    /// The thread exited (its event hung up): drained once more, then dropped.
    hung_up: bool,
}

/// Turns one thread's records into events, dropping short gaps.
#[derive(Default, Debug)]
struct Pairing {
    /// Left epoll at this time (ns); not reported yet (it may be a short gap).
    pending_busy: Option<u64>,
    /// A `Busy` was reported and its `Idle` not yet.
    busy_reported: bool,
    /// A GIL wait going on since (ns), reported or not, and the last futex return in it.
    gil_since: Option<u64>,
    gil_reported: bool,
    gil_last_exit: Option<u64>,
    /// GIL waits that ended inside a gap not reported yet.
    gil_done: Vec<(u64, u64)>,
    /// Tracing began at this time while the thread was out of epoll: busy since before then,
    /// for the schedule only (samples place that run's start), until its first boundary.
    busy_before: Option<u64>,
    /// A `Poll` was reported and no `Idle` since: the detector may be holding a GIL
    /// starvation open through the poll, so the next wait is reported however short the busy
    /// time before it.
    after_poll: bool,
    /// When the current epoll wait's timeout expires (ns): its entry plus its timeout.
    deadline: Option<u64>,
    /// The last epoll wait timed out at this deadline (ns) and returned only at this later
    /// time, the thread having waited for a CPU (or its virtual CPU for the host) in between.
    late_wake: Option<(u64, u64)>,
}

impl Pairing {
    /// One record; events go to `out` as (ns, kind).
    fn record(&mut self, r: &Record, min_gap: u64, out: &mut Vec<(u64, LoopEventKind)>) {
        if r.call.is_epoll_wait() || r.call.is_epoll_exit() || r.call == Call::EpollPoll {
            self.busy_before = None;
        }
        // Only the record right after the late return may use it (a futex return of another
        // lock, whose wait is not traced, does not count).
        let late_wake = match r.call {
            Call::FutexExit => self.late_wake,
            _ => self.late_wake.take(),
        };
        // A GIL wait ends at its futex's return unless another wait follows at once.
        if let (Some(_), Some(last)) = (self.gil_since, self.gil_last_exit) {
            let continues = matches!(r.call, Call::FutexWait { .. })
                && r.time_ns.saturating_sub(last) <= GIL_SLICE_GAP_NS;
            if !continues {
                self.end_gil(last, min_gap, out);
            }
        }
        match r.call {
            Call::EpollExit | Call::EpollTimedOut => {
                if !self.busy_reported && self.pending_busy.is_none() {
                    self.pending_busy = Some(r.time_ns);
                }
                if r.call == Call::EpollTimedOut {
                    self.late_wake = self
                        .deadline
                        .filter(|d| *d < r.time_ns)
                        .map(|d| (d, r.time_ns));
                }
                self.deadline = None;
            }
            Call::EpollEnter | Call::EpollWait { .. } | Call::EpollPoll => {
                self.deadline = match r.call {
                    Call::EpollWait { timeout_ms } => {
                        Some(r.time_ns + u64::from(timeout_ms) * 1_000_000)
                    }
                    _ => None,
                };
                if let Some(since) = self.gil_since {
                    // Never reached: a GIL wait ends before the thread can call epoll.
                    self.end_gil(self.gil_last_exit.unwrap_or(since), min_gap, out);
                }
                let poll = r.call == Call::EpollPoll;
                let kind = if poll {
                    LoopEventKind::Poll
                } else {
                    LoopEventKind::Idle
                };
                let mut told = true;
                match self.pending_busy.take() {
                    Some(b) if r.time_ns.saturating_sub(b) >= min_gap => {
                        out.push((b, LoopEventKind::Busy));
                        self.flush_gil(out);
                        out.push((r.time_ns, kind));
                    }
                    Some(_) if self.after_poll && !poll => {
                        self.gil_done.clear();
                        out.push((r.time_ns, kind));
                    }
                    Some(_) => {
                        self.gil_done.clear();
                        told = false;
                    }
                    // Busy was reported, or tracing began during a callback.
                    None => out.push((r.time_ns, kind)),
                }
                if told {
                    self.after_poll = poll;
                }
                self.busy_reported = false;
                // A poll returns at once with work waiting: busy from its entry, however long
                // the call takes (a loop thread waiting for a CPU inside it is not idle).
                if poll {
                    self.pending_busy = Some(r.time_ns);
                }
            }
            Call::FutexWait { .. } => {
                if self.gil_since.is_none() {
                    self.gil_since = Some(r.time_ns);
                    self.gil_reported = false;
                    // Woken by its timeout, run again only later, and then straight into a
                    // wait for the GIL: the loop was due to run at the deadline, and the GIL
                    // was still held when it got a CPU. Its starvation began at the deadline,
                    // not when the kernel next ran it: a heartbeat timer in the target, due
                    // then, measures the same (a 2 ms wait that returned 11 ms late on an idle
                    // virtual CPU put a GIL starvation's start 9 ms late).
                    if let Some((deadline, exit)) = late_wake {
                        let straight = r.time_ns.saturating_sub(exit) <= GIL_SLICE_GAP_NS;
                        if straight && self.pending_busy == Some(exit) {
                            self.pending_busy = Some(deadline);
                            self.gil_since = Some(deadline);
                        }
                    }
                }
                self.gil_last_exit = None;
            }
            Call::FutexExit => {
                if self.gil_since.is_some() {
                    self.gil_last_exit = Some(r.time_ns);
                }
            }
        }
    }

    fn end_gil(&mut self, end: u64, min_gap: u64, out: &mut Vec<(u64, LoopEventKind)>) {
        let Some(since) = self.gil_since.take() else {
            return;
        };
        self.gil_last_exit = None;
        if self.gil_reported {
            out.push((end, LoopEventKind::GilTaken));
        } else if end.saturating_sub(since) >= min_gap {
            if self.busy_reported {
                out.push((since, LoopEventKind::GilWait));
                out.push((end, LoopEventKind::GilTaken));
            } else {
                self.gil_done.push((since, end));
            }
        }
        self.gil_reported = false;
    }

    fn flush_gil(&mut self, out: &mut Vec<(u64, LoopEventKind)>) {
        for (since, end) in self.gil_done.drain(..) {
            out.push((since, LoopEventKind::GilWait));
            out.push((end, LoopEventKind::GilTaken));
        }
    }

    /// End of a drain at `now`: report a gap (and a GIL wait) that has lasted `min_gap`, so a
    /// callback running long is known while it runs.
    fn flush(&mut self, now: u64, min_gap: u64, out: &mut Vec<(u64, LoopEventKind)>) {
        if let (Some(_), Some(last)) = (self.gil_since, self.gil_last_exit) {
            if now.saturating_sub(last) > GIL_SLICE_GAP_NS {
                self.end_gil(last, min_gap, out);
            }
        }
        if let Some(b) = self.pending_busy {
            if now.saturating_sub(b) >= min_gap {
                self.pending_busy = None;
                self.busy_reported = true;
                out.push((b, LoopEventKind::Busy));
                self.flush_gil(out);
            }
        }
        if let Some(since) = self.gil_since {
            if self.busy_reported && !self.gil_reported && now.saturating_sub(since) >= min_gap {
                self.gil_reported = true;
                out.push((since, LoopEventKind::GilWait));
            }
        }
    }

    /// Since when (ns) the thread has been running callbacks, if it is now, as far as known.
    fn busy_since(&self) -> Option<u64> {
        self.pending_busy.or(self.busy_before)
    }
}

/// The kernel clock of one process.
pub struct KernelClock {
    points: Tracepoints,
    traced: HashMap<u32, Traced>,
    /// Threads over the event-rate limit, and when to try them again.
    resting: HashMap<u32, Instant>,
    /// Busy-since times (ns) of reported gaps, per thread.
    busy: HashMap<u32, u64>,
    /// CLOCK_MONOTONIC (ns) at the recording's `mono` 0.
    start_ns: u64,
    min_gap_ns: u64,
    /// Whether a thread was ever traced: a first refusal means the platform refuses.
    opened_any: bool,
    /// Why some loop thread is not traced now (shown once in the summary).
    pub last_refusal: Option<String>,
    /// Loop threads that went over the event-rate limit so far.
    pub rate_limited: u64,
}

impl KernelClock {
    /// Find the tracepoints. `start` is the instant of `mono` 0; `threshold` in seconds. The
    /// error says why the kernel clock is not available.
    pub fn new(start: Instant, threshold: f64) -> Result<KernelClock> {
        let points = Self::tracepoints()?;
        let elapsed = start.elapsed().as_nanos() as u64;
        let min_gap = (threshold / 2.0).clamp(0.0, 0.001);
        Ok(KernelClock {
            points,
            traced: HashMap::new(),
            resting: HashMap::new(),
            busy: HashMap::new(),
            start_ns: perf::monotonic_ns().saturating_sub(elapsed),
            min_gap_ns: (min_gap * 1e9) as u64,
            opened_any: false,
            last_refusal: None,
            rate_limited: 0,
        })
    }

    /// Whether perf tracepoints can be used here: found, and allowed on one of our own threads
    /// (the same permission checks as on the target's, minus ptrace rights). Checked once per
    /// run.
    pub fn check() -> Result<()> {
        Self::tracepoints().map(drop)
    }

    fn tracepoints() -> Result<Tracepoints> {
        PINNED
            .get_or_init(|| pin().map_err(|e| perf::unavailable_reason(&e)))
            .clone()
            .map_err(|reason| anyhow!(reason))
    }

    fn mono(&self, ns: u64) -> f64 {
        (ns as i128 - self.start_ns as i128) as f64 / 1e9
    }

    /// Trace the loop threads `loops` (host tids) and stop tracing threads no longer in it.
    /// `gil` is the GIL state's address range. Errors only when the very first thread cannot
    /// be traced: the platform refuses perf events, and the caller falls back to the probe.
    pub fn follow(
        &mut self,
        loops: &[u32],
        gil: Option<Range<u64>>,
        now: f64,
        out: &mut Vec<LoopEvent>,
    ) -> Result<()> {
        let gone: Vec<u32> = self
            .traced
            .keys()
            .filter(|t| !loops.contains(t))
            .copied()
            .collect();
        for tid in gone {
            self.traced.remove(&tid);
            self.busy.remove(&tid);
            out.push(LoopEvent {
                tid,
                t: now,
                kind: LoopEventKind::Untraced,
            });
        }
        self.resting.retain(|t, _| loops.contains(t));
        for &tid in loops {
            if self.traced.contains_key(&tid)
                || self
                    .resting
                    .get(&tid)
                    .is_some_and(|until| Instant::now() < *until)
            {
                continue;
            }
            match ThreadTrace::open(tid, &self.points, gil.clone()) {
                Ok(trace) => {
                    self.opened_any = true;
                    self.resting.remove(&tid);
                    let idle = in_epoll(tid);
                    let pair = Pairing {
                        busy_before: (!idle).then(perf::monotonic_ns),
                        ..Default::default()
                    };
                    self.traced.insert(
                        tid,
                        Traced {
                            trace,
                            pair,
                            window_start: Instant::now(),
                            window_records: 0,
                            hung_up: false,
                        },
                    );
                    out.push(LoopEvent {
                        tid,
                        t: now,
                        kind: LoopEventKind::Traced,
                    });
                    // In epoll as tracing begins: a callback that samples saw running before
                    // then is over, though its end is only known to lie before now (without
                    // this it would last until the next callback the kernel times).
                    if idle {
                        out.push(LoopEvent {
                            tid,
                            t: now,
                            kind: LoopEventKind::Idle,
                        });
                    }
                }
                Err(e) if !self.opened_any => return Err(e),
                Err(e) => {
                    // A thread that just exited, or a transient refusal: retry later.
                    self.last_refusal = Some(perf::unavailable_reason(&e));
                    self.resting.insert(tid, Instant::now() + RETRY);
                }
            }
        }
        Ok(())
    }

    /// Read every traced thread's records up to now; events go to `out`, oldest first.
    pub fn drain(&mut self, out: &mut Vec<LoopEvent>) {
        let now_ns = perf::monotonic_ns();
        let min_gap = self.min_gap_ns;
        let mut raw: Vec<(u32, u64, LoopEventKind)> = Vec::new();
        let mut over_limit = Vec::new();
        let mut exited = Vec::new();
        for (&tid, t) in self.traced.iter_mut() {
            if t.hung_up {
                exited.push(tid);
            }
            let mut local = Vec::new();
            let mut n = 0u64;
            let pair = &mut t.pair;
            let lost = t.trace.drain(&mut |r| {
                n += 1;
                pair.record(&r, min_gap, &mut local);
            });
            if lost > 0 {
                // The state is unknown until the next boundary.
                *pair = Pairing::default();
                local.push((now_ns, LoopEventKind::Lost));
            } else {
                pair.flush(now_ns, min_gap, &mut local);
            }
            raw.extend(local.into_iter().map(|(ns, k)| (tid, ns, k)));
            t.window_records += n;
            let window = t.window_start.elapsed();
            if window >= Duration::from_secs(1) {
                if t.window_records as f64 / window.as_secs_f64() > EVENT_LIMIT as f64 {
                    over_limit.push(tid);
                }
                t.window_start = Instant::now();
                t.window_records = 0;
            }
        }
        raw.sort_by_key(|e| e.1);
        for (tid, ns, kind) in raw {
            match kind {
                LoopEventKind::Busy => {
                    self.busy.insert(tid, ns);
                }
                LoopEventKind::Idle | LoopEventKind::Poll | LoopEventKind::Lost => {
                    self.busy.remove(&tid);
                }
                _ => {}
            }
            out.push(LoopEvent {
                tid,
                t: self.mono(ns),
                kind,
            });
        }
        let now = self.mono(now_ns);
        for tid in exited {
            // Its last records are in; a thread of the same id later is traced anew.
            self.traced.remove(&tid);
            self.busy.remove(&tid);
            out.push(LoopEvent {
                tid,
                t: now,
                kind: LoopEventKind::Untraced,
            });
        }
        for tid in over_limit {
            self.traced.remove(&tid);
            self.busy.remove(&tid);
            self.rate_limited += 1;
            self.resting.insert(tid, Instant::now() + RETRY);
            out.push(LoopEvent {
                tid,
                t: now,
                kind: LoopEventKind::Untraced,
            });
        }
    }

    /// The earliest time (recording seconds) since which a traced loop thread has been out of
    /// epoll, reported or not: the sampler reads it while it runs long.
    pub fn busy_since(&self) -> Option<f64> {
        let pending = self.traced.values().filter_map(|t| t.pair.busy_since());
        let earliest = pending.chain(self.busy.values().copied()).min()?;
        Some(self.mono(earliest))
    }

    /// Whether every loop thread in `loops` is traced (else probe ticks must time some).
    pub fn covers(&self, loops: &[u32]) -> bool {
        loops.iter().all(|t| self.traced.contains_key(t))
    }

    /// The perf fds to poll: readable when a buffer is half full. Threads that exited are
    /// left out (their fds poll as ready until the next drain drops them).
    pub fn poll_fds(&self) -> Vec<RawFd> {
        self.traced
            .values()
            .filter(|t| !t.hung_up)
            .map(|t| t.trace.poll_fd())
            .collect()
    }

    /// Mark the threads whose fds in `fds` hung up (from [`perf::poll_readable`]).
    pub fn hung_up(&mut self, fds: &[RawFd]) {
        for t in self.traced.values_mut() {
            if fds.contains(&t.trace.poll_fd()) {
                t.hung_up = true;
            }
        }
    }

    /// Whether the kernel dropped its uaddr filter on every traced thread (only for notes).
    pub fn traced_threads(&self) -> usize {
        self.traced.len()
    }
}

/// Whether thread `tid` waits in epoll now (`/proc/TID/syscall`); false when unreadable.
fn in_epoll(tid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/syscall"))
        .ok()
        .and_then(|s| crate::os::thread_state::parse_syscall(&s))
        .is_some_and(|(name, _)| name.starts_with("epoll_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ms: f64, call: Call) -> Record {
        Record {
            tid: 1,
            time_ns: (ms * 1e6) as u64,
            call,
        }
    }

    fn pair(records: &[Record], flush_at_ms: Option<f64>) -> Vec<(f64, LoopEventKind)> {
        let mut p = Pairing::default();
        let mut out = Vec::new();
        for r in records {
            p.record(r, 1_000_000, &mut out);
        }
        if let Some(at) = flush_at_ms {
            p.flush((at * 1e6) as u64, 1_000_000, &mut out);
        }
        out.into_iter()
            .map(|(ns, k)| (ns as f64 / 1e6, k))
            .collect()
    }

    use Call::*;
    use LoopEventKind as K;

    #[test]
    fn short_gaps_are_dropped_long_ones_reported() {
        let got = pair(
            &[
                rec(0.0, EpollExit),
                rec(0.3, EpollEnter),
                rec(10.0, EpollExit),
                rec(70.0, EpollEnter),
            ],
            None,
        );
        assert_eq!(got, vec![(10.0, K::Busy), (70.0, K::Idle)]);
    }

    #[test]
    fn a_gap_still_open_is_reported_at_the_drain() {
        let mut p = Pairing::default();
        let mut out = Vec::new();
        p.record(&rec(5.0, EpollExit), 1_000_000, &mut out);
        p.flush(5_500_000, 1_000_000, &mut out);
        assert!(out.is_empty(), "0.5 ms in: not yet");
        assert_eq!(p.busy_since(), Some(5_000_000));
        p.flush(7_000_000, 1_000_000, &mut out);
        assert_eq!(out, vec![(5_000_000, K::Busy)]);
        p.record(&rec(80.0, EpollEnter), 1_000_000, &mut out);
        assert_eq!(out[1], (80_000_000, K::Idle));
    }

    /// A 2 ms wait that timed out but ran again only 11 ms later, then waited at once for the
    /// GIL: the starvation began at the deadline. Woken by an fd (an unknown time), returned
    /// on time, or running Python before the GIL wait: it began at the return.
    #[test]
    fn a_late_timed_out_wait_starves_from_its_deadline() {
        let starved_at = |exit: Call, exit_at: f64, futex_at: f64| {
            pair(
                &[
                    rec(10.0, EpollWait { timeout_ms: 2 }),
                    rec(exit_at, exit),
                    rec(futex_at, FutexWait { uaddr: 1 }),
                    rec(180.0, FutexExit),
                    rec(181.0, EpollEnter),
                ],
                None,
            )
        };
        let starved = |exit: Call, futex_at: f64| starved_at(exit, 21.0, futex_at);
        assert_eq!(
            starved(EpollTimedOut, 21.01),
            vec![
                (10.0, K::Idle),
                (12.0, K::Busy),
                (12.0, K::GilWait),
                (180.0, K::GilTaken),
                (181.0, K::Idle)
            ]
        );
        for (exit, futex_at) in [(EpollExit, 21.01), (EpollTimedOut, 22.0)] {
            assert_eq!(
                starved(exit, futex_at),
                vec![
                    (10.0, K::Idle),
                    (21.0, K::Busy),
                    (futex_at, K::GilWait),
                    (180.0, K::GilTaken),
                    (181.0, K::Idle)
                ],
                "{exit:?}, GIL wait at {futex_at} ms"
            );
        }
        let on_time = starved_at(EpollTimedOut, 12.0, 12.01);
        assert_eq!(on_time[1], (12.0, K::Busy));
    }

    #[test]
    fn gil_wait_slices_merge_into_one_wait() {
        let got = pair(
            &[
                rec(0.0, EpollExit),
                rec(0.01, FutexWait { uaddr: 1 }),
                rec(5.01, FutexExit),
                rec(5.05, FutexWait { uaddr: 1 }),
                rec(10.05, FutexExit),
                rec(10.1, FutexWait { uaddr: 1 }),
                rec(12.0, FutexExit),
                rec(30.0, EpollEnter),
            ],
            None,
        );
        assert_eq!(
            got,
            vec![
                (0.0, K::Busy),
                (0.01, K::GilWait),
                (12.0, K::GilTaken),
                (30.0, K::Idle)
            ]
        );
    }

    #[test]
    fn an_ongoing_gil_wait_is_reported_while_it_lasts() {
        let got = pair(
            &[
                rec(0.0, EpollExit),
                rec(0.1, FutexWait { uaddr: 1 }),
                rec(5.1, FutexExit),
                rec(5.2, FutexWait { uaddr: 1 }),
            ],
            Some(8.0),
        );
        assert_eq!(got, vec![(0.0, K::Busy), (0.1, K::GilWait)]);
    }

    /// A poll (epoll with a zero timeout) ends the busy time before it, and the next begins
    /// at its entry: here the thread waited 7 ms for a CPU inside the call.
    #[test]
    fn a_poll_is_busy_from_its_entry() {
        let got = pair(
            &[
                rec(0.0, EpollExit),
                rec(10.0, EpollPoll),
                rec(17.0, EpollExit),
                rec(60.0, EpollEnter),
            ],
            None,
        );
        assert_eq!(
            got,
            vec![
                (0.0, K::Busy),
                (10.0, K::Poll),
                (10.0, K::Busy),
                (60.0, K::Idle)
            ]
        );
    }

    /// After a reported poll the next wait is reported however short the busy time before it
    /// (a starvation held open through the poll must end); polls in a row with short busy
    /// times between them stay silent, as short gaps do.
    #[test]
    fn the_wait_after_a_reported_poll_is_always_reported() {
        let got = pair(
            &[
                rec(0.0, EpollExit),
                rec(10.0, EpollPoll),
                rec(10.01, EpollExit),
                rec(10.2, EpollPoll),
                rec(10.21, EpollExit),
                rec(10.5, EpollEnter),
                rec(20.0, EpollExit),
                rec(20.1, EpollPoll),
                rec(20.11, EpollExit),
                rec(20.3, EpollEnter),
            ],
            None,
        );
        assert_eq!(got, vec![(0.0, K::Busy), (10.0, K::Poll), (10.5, K::Idle)]);
    }

    #[test]
    fn tracing_that_starts_inside_a_callback_reports_its_end() {
        let got = pair(&[rec(3.0, EpollEnter), rec(4.0, EpollExit)], Some(4.5));
        assert_eq!(got, vec![(3.0, K::Idle)]);
    }
}
