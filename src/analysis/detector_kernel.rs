//! The detector's input from the kernel clock: loop boundaries timed by the kernel
//! ([`LoopEvent`]s: the loop thread left or entered epoll, waited for the GIL). On a traced
//! thread these events alone open and close runs, at their exact times; samples only name the
//! run's callback and split it where the loop dispatched a new one inside one iteration (a pop
//! from the ready queue, or another callback on the stack), as on the probe clock. A poll (epoll
//! with a zero timeout) ends a callback as an epoll wait does, but not a GIL starvation.

use super::{gil_key, Detector, Event, Track};
use crate::analysis::loop_state::LoopState;
use crate::analysis::run::Run;
use crate::sample::{LoopEvent, LoopEventKind, Sample, ThreadSample};

/// Whether the run is the loop starved of the GIL outside any callback.
fn gil_run(run: &Run) -> bool {
    run.key == Some(gil_key())
}

/// A run opened at an exact time `t`: its start is `t`, not the middle of a gap.
fn exact_run(sample: &Sample, t: f64) -> Run {
    let mut run = Run::start(None, Some(t), sample);
    run.first = t;
    run.last = t;
    run.prev = Some(t);
    run
}

/// A sample of a GIL starvation that the kernel opened at a wait's return found the loop's
/// earliest timer due `overdue_us` µs before `now` (seconds). When that was before the loop even
/// entered the wait, its timeout was stale (worked out before the thread lost its CPU, and
/// used only when it ran again): the loop was late for its timer through the whole wait, not
/// idle, and its starvation began at the wait's entry. Seen on 3.12: a timer due at 55.5 ms,
/// the wait entered at 57.2 ms with the 3 ms worked out at 52.8 ms, and the starvation put at
/// the wait's return, 60.2 ms. Decided once, at the first sample of the run that read the
/// timer.
fn late_wait(run: &mut Run, now: f64, overdue_us: Option<u64>) {
    let Some(overdue) = overdue_us.map(|us| us as f64 / 1e6) else {
        return;
    };
    let Some(entry) = run.waited_since.take() else {
        return;
    };
    let exact = run.prev == Some(run.first);
    if exact && now - overdue < entry && entry < run.first {
        run.first = entry;
        run.prev = Some(entry);
    }
}

impl Detector {
    /// The kernel's events of one sample, in order.
    pub(super) fn feed_events(&mut self, sample: &Sample, out: &mut Vec<Event>) {
        for e in &sample.events {
            if e.t.is_finite() && e.t.abs() < 1e9 {
                self.feed_event(sample, e, out);
            }
        }
    }

    fn feed_event(&mut self, sample: &Sample, e: &LoopEvent, out: &mut Vec<Event>) {
        let key = (sample.pid, e.tid);
        let mut track = self.tracks.remove(&key).unwrap_or_default();
        match e.kind {
            LoopEventKind::Traced => {
                track.kernel = true;
                track.kernel_seen = false;
                track.traced_at = Some(e.t);
            }
            LoopEventKind::Untraced => {
                track.kernel = false;
                track.gil_since = None;
            }
            // The return of a poll the GIL-starved loop made: it is still starved.
            LoopEventKind::Busy if track.through_poll && track.run.is_some() => {
                track.kernel_seen = true;
                track.polled = Some(e.t);
            }
            LoopEventKind::Busy => {
                track.kernel = true;
                track.kernel_seen = true;
                self.end_exactly(key, &mut track, e.t, out);
                if !self.seen.contains_key(&key) {
                    self.remember_loop(key, track.name.clone());
                }
                track.idle = false;
                let mut run = exact_run(sample, e.t);
                run.waited_since = track.idle_since.take();
                track.run = Some(run);
            }
            // An epoll entry before the open run began: the Idle inferred as tracing began,
            // reaching us after the kernel's first exit. The kernel's own records are in order
            // per thread, so only that one can be stale; it must not end the run (which would
            // then end before it began, and the block be lost).
            LoopEventKind::Idle | LoopEventKind::Poll
                if track.kernel_seen && track.run.as_ref().is_some_and(|r| r.first > e.t) => {}
            // The loop starved of the GIL got it for a moment, ran what was due, and polled
            // (a zero timeout: more work was waiting). That is no idle time: once it is starved
            // again the run goes on, and a callback a sample then finds running began at this
            // poll (`split`). Ending the run here cut a 302 ms starvation at 287 ms, where the
            // loop polled once and waited 15 ms more for the same holder.
            LoopEventKind::Poll if track.kernel_seen && track.run.as_ref().is_some_and(gil_run) => {
                track.through_poll = true;
                track.polled = Some(e.t);
                track.gil_since = None;
            }
            LoopEventKind::Idle | LoopEventKind::Poll => {
                track.kernel = true;
                if !track.kernel_seen && track.traced_at == Some(e.t) {
                    // In epoll as tracing began: a run open now was opened by samples before,
                    // and ended somewhere between its last sample and now (placed mid-gap, with
                    // its error bar, as on the probe clock). Unless its own samples span the
                    // threshold it is not known to have blocked: its stacks are ordinary work.
                    let threshold = self.config.threshold;
                    if let Some(run) = track.run.as_mut() {
                        if run.last - run.first < threshold {
                            run.key = None;
                        }
                    }
                    self.close(key, &mut track, Some(e.t), out);
                } else {
                    self.end_exactly(key, &mut track, e.t, out);
                }
                track.kernel_seen = true;
                track.idle = true;
                track.gil_since = None;
                // (An `Idle` at the trace's start is not when the wait was entered.)
                let entered = e.kind == LoopEventKind::Idle && track.traced_at != Some(e.t);
                track.idle_since = entered.then_some(e.t);
            }
            LoopEventKind::GilWait => track.gil_since = Some(e.t),
            LoopEventKind::GilTaken => {
                if let (Some(since), Some(run)) = (track.gil_since.take(), track.run.as_mut()) {
                    run.gil_secs += (e.t - since.max(run.first)).max(0.0);
                }
                // The starved loop got the GIL: what a sample then finds running began here
                // (`split`). Placed mid-gap instead, a 9 ms late tick cut 4.6 ms off a
                // starvation whose end the kernel had timed exactly.
                if track.run.as_ref().is_some_and(gil_run) {
                    track.polled = Some(e.t);
                }
            }
            LoopEventKind::Lost => {
                // What happened since the last record is unknown: end the run where it was
                // last known to be going on, and wait for the next boundary.
                if let Some(last) = track.run.as_ref().map(|r| r.last) {
                    self.close(key, &mut track, Some(last), out);
                }
                track.gil_since = None;
            }
        }
        // Tracing starting or stopping says nothing about the thread's state.
        let boundary = !matches!(e.kind, LoopEventKind::Traced | LoopEventKind::Untraced);
        if boundary && e.t > track.last_seen.unwrap_or(f64::MIN) {
            track.last_seen = Some(e.t);
        }
        self.tracks.insert(key, track);
    }

    /// A sample saw the loop dispatch another callback: close the run and open the next. When
    /// the starved loop got the GIL or polled since the run's first sample and no sample saw
    /// the starvation after that (`Track::polled`), the boundary is that event, exactly;
    /// otherwise it lies between the last sample and this one.
    fn split(&mut self, key: (u32, u32), track: &mut Track, sample: &Sample, out: &mut Vec<Event>) {
        let first = track.run.as_ref().map_or(f64::MAX, |r| r.first);
        match track.polled.filter(|p| *p >= first && *p <= sample.mono) {
            Some(p) => {
                self.end_exactly(key, track, p, out);
                track.run = Some(exact_run(sample, p));
            }
            None => {
                self.close(key, track, Some(sample.mono), out);
                let prev = track.last_seen;
                track.run = Some(Run::start(None, prev, sample));
            }
        }
    }

    /// Close the track's run with its end at `t` exactly.
    fn end_exactly(&mut self, key: (u32, u32), track: &mut Track, t: f64, out: &mut Vec<Event>) {
        if let Some(run) = track.run.as_mut() {
            if let Some(since) = track.gil_since {
                run.gil_secs += (t - since.max(run.first)).max(0.0);
                track.gil_since = Some(t);
            }
            // The end is the event itself: `close` places it between `last` and `next`.
            run.last = t.max(run.first);
            let end = run.last;
            self.close(key, track, Some(end), out);
        }
    }

    /// A stack sample of a traced loop thread: names the run the kernel opened, or splits it
    /// when the stack shows another callback or the ready queue a dispatch. Never opens or
    /// closes a run on its own: the kernel's events do.
    pub(super) fn feed_traced_stack(
        &mut self,
        key: (u32, u32),
        track: &mut Track,
        sample: &Sample,
        thread: &ThreadSample,
        (state, weight): (LoopState, u32),
        out: &mut Vec<Event>,
    ) {
        let gil = track.gil_since.is_some() || thread.os.as_ref().is_some_and(|o| o.gil_wait);
        let idle = state == LoopState::Idle;
        // The callback it runs; `Some((None, 0))`: one the stack does not name (`Dispatched`).
        let current = match state {
            LoopState::Callback { key, depth } => Some((Some(key), depth)),
            LoopState::GilWait => Some((Some(gil_key()), 0)),
            // Out of epoll with nothing above the selector (`Waking`): between two of
            // CPython's timed GIL waits, as the kernel's GIL events say.
            LoopState::Idle | LoopState::Machinery | LoopState::Waking | LoopState::Dispatched
                if gil && track.run.is_some() =>
            {
                Some((Some(gil_key()), 0))
            }
            LoopState::Dispatched => Some((None, 0)),
            _ => None,
        };
        // Tracing began during a callback: until the kernel's first boundary, a sample that
        // sees one opens the run (its start lies between this sample and the previous one).
        if track.run.is_none() && !track.kernel_seen {
            if let Some((cb, _)) = &current {
                track.run = Some(Run::start(cb.clone(), track.last_seen, sample));
            }
        }
        let stack = |idle: bool| Event::Stack {
            pid: sample.pid,
            thread: thread.label(),
            task: super::own_task(thread),
            frames: thread.frames.clone(),
            idle,
            count: weight,
        };
        let (Some((cb, depth)), true) = (current, track.run.is_some()) else {
            // Idle by the kernel's account (a stack read racing the next boundary), or the
            // loop's own code between callbacks.
            out.push(stack(idle && track.run.is_none()));
            return;
        };
        let starved = cb.as_ref() == Some(&gil_key());
        let split = track.run.as_ref().is_some_and(|run| {
            (run.key.is_some() && cb.is_some() && run.key != cb)
                || (run.popped(thread.ready.as_ref()) && !(starved && gil_run(run)))
        });
        if split {
            self.split(key, track, sample, out);
        } else if starved {
            // Still starved after the poll: whatever runs next began after this sample.
            track.polled = None;
        }
        let run = track.run.as_mut().expect("a run is open");
        if starved {
            late_wait(run, sample.mono, thread.timer_overdue_us);
        }
        if let Some(cb) = cb {
            run.key.get_or_insert(cb);
        }
        run.observe(sample, thread);
        run.observe_stack(&thread.frames, depth, weight);
    }

    /// A probe tick of a traced loop thread (read while a callback runs long): a dispatch
    /// splits the run; idleness is left to the kernel's events.
    pub(super) fn feed_traced_probe(
        &mut self,
        key: (u32, u32),
        track: &mut Track,
        sample: &Sample,
        thread: &ThreadSample,
        out: &mut Vec<Event>,
    ) {
        let in_epoll = super::in_epoll(thread) && !thread.os.as_ref().is_some_and(|o| o.gil_wait);
        if track.run.is_none() && !track.kernel_seen && !in_epoll {
            // Tracing began during a callback (see `feed_traced_stack`).
            track.run = Some(Run::start(None, track.last_seen, sample));
        }
        let Some(run) = track.run.as_ref() else {
            return;
        };
        // A loop starved of the GIL pops what was due in the moments it holds it; while it
        // waits for the GIL again that is the same starvation.
        let waits = track.gil_since.is_some() || thread.os.as_ref().is_some_and(|o| o.gil_wait);
        if run.popped(thread.ready.as_ref()) && !(waits && gil_run(run)) {
            self.split(key, track, sample, out);
        }
        if let Some(run) = track.run.as_mut() {
            run.observe(sample, thread);
        }
    }
}
