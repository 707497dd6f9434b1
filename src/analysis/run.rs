//! A run: consecutive samples of one loop thread inside one callback. The detector opens one
//! when a callback starts, feeds it every sample that sees the callback still running, and
//! turns it into an episode when it ends after at least the threshold.

use std::collections::HashMap;

use crate::analysis::classify::kind_of_os;
use crate::analysis::evidence::Evidence;
use crate::analysis::loop_state::CallbackKey;
use crate::analysis::weights::Timeline;
use crate::sample::{Frame, ReadyQueue, Request, Sample, ThreadSample};

/// Where a run's episode begins and ends (monotonic seconds), and how sure that is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub start: f64,
    pub end: f64,
    /// Half of the two gaps the boundaries lie in, in seconds: the most `end - start` can be
    /// off by. A late sampler widens it; it never shortens the run.
    pub error: f64,
    /// `false` when no sample saw the thread before the run (attached mid-block): `start` is
    /// then the first sample of the run, and the duration a lower bound.
    pub start_seen: bool,
}

impl Bounds {
    pub fn duration(&self) -> f64 {
        (self.end - self.start).max(0.0)
    }
}

#[derive(Debug)]
pub struct Run {
    /// The callback, once a stack sample has named it (a probe tick only sees that one began).
    pub key: Option<CallbackKey>,
    /// Monotonic time of the sample before the first one that saw this run.
    pub prev: Option<f64>,
    pub first: f64,
    /// Wall minus monotonic time at the first sample, to convert the start to wall-clock time.
    pub wall_offset: f64,
    pub last: f64,
    pub samples: u32,
    /// Distinct stacks: (weight in ms, depth of the callback's part of the stack).
    pub stacks: HashMap<Vec<Frame>, (u32, usize)>,
    /// Samples per kind of wait.
    pub kinds: HashMap<&'static str, u32>,
    /// The ready queue at the last sample of the run.
    pub ready: Option<ReadyQueue>,
    /// Who held the GIL while the loop thread waited for it: (tid, name, stack) → samples.
    pub holders: HashMap<(u32, Option<String>, Vec<Frame>), u32>,
    /// The thread's (user, system) CPU ticks at the first and the last sample.
    pub cpu: Option<((u64, u64), (u64, u64))>,
    /// The latest stack and its callback depth, for live views.
    pub latest: Option<(Vec<Frame>, usize)>,
    /// The asyncio task (name, coroutine) each stack sample saw the loop stepping, `None` for
    /// none: how many samples each.
    pub tasks: HashMap<Option<(String, Option<String>)>, u32>,
    /// Seconds of the run the kernel saw the thread wait for the GIL (kernel clock only).
    pub gil_secs: f64,
    /// Kernel clock: when the loop entered the epoll wait whose return opened this run.
    pub waited_since: Option<f64>,
    /// GIL, GC and fd evidence, for the advice.
    pub evidence: Evidence,
    /// The stack samples in time order, to weigh an episode's stacks by its own time.
    pub timeline: Timeline,
    /// The HTTP requests stack samples saw the running task serve: how many samples each.
    pub requests: HashMap<Request, u32>,
}

impl Run {
    pub fn start(key: Option<CallbackKey>, prev: Option<f64>, sample: &Sample) -> Run {
        Run {
            key,
            prev,
            first: sample.mono,
            wall_offset: sample.wall - sample.mono,
            last: sample.mono,
            samples: 0,
            stacks: HashMap::new(),
            kinds: HashMap::new(),
            ready: None,
            holders: HashMap::new(),
            cpu: None,
            latest: None,
            tasks: HashMap::new(),
            gil_secs: 0.0,
            waited_since: None,
            evidence: Evidence::default(),
            timeline: Timeline::default(),
            requests: HashMap::new(),
        }
    }

    /// The request most stack samples of the run saw (samples whose read gave none do not
    /// count: a read that failed is no evidence of another request).
    pub fn request(&self) -> Option<Request> {
        self.requests
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(r, _)| r.clone())
    }

    /// The task most stack samples of the run saw (a plain callback's samples see none, so a
    /// task read that raced the callback's start or end does not win), with its coroutine.
    pub fn task(&self) -> Option<(String, Option<String>)> {
        self.tasks
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .and_then(|(t, _)| t.clone())
    }

    /// The run's boundaries. `next` is the first sample that saw it over (`None`: the
    /// recording stopped during it). Each boundary lies somewhere in the gap between the last
    /// sample on one side and the first on the other, however long that gap (a sampler that
    /// was late): the middle of the gap is the estimate, and half the gap its error.
    pub fn bounds(&self, next: Option<f64>) -> Bounds {
        let (start, start_error, start_seen) = match self.prev {
            Some(prev) if prev <= self.first => {
                ((prev + self.first) / 2.0, (self.first - prev) / 2.0, true)
            }
            _ => (self.first, 0.0, false),
        };
        let (end, end_error) = match next {
            Some(next) if next >= self.last => ((self.last + next) / 2.0, (next - self.last) / 2.0),
            _ => (self.last, 0.0),
        };
        Bounds {
            start,
            end,
            error: start_error + end_error,
            start_seen,
        }
    }

    /// The callback's name for live views.
    pub fn callback_name(&self) -> String {
        self.key
            .as_ref()
            .map_or_else(|| "a callback".to_string(), |k| k.function.clone())
    }

    /// Whether the loop dispatched a handle between the run's last sample and `now`.
    pub fn popped(&self, now: Option<&ReadyQueue>) -> bool {
        matches!((&self.ready, now), (Some(a), Some(b)) if a.popped_before(b))
    }

    /// One more sample (probe or full) saw the run going on.
    pub fn observe(&mut self, sample: &Sample, thread: &ThreadSample) {
        // Probe ticks do not read the current task, and a sample taken before the thread was
        // known to run a loop (its loop not mapped yet, e.g. right after a launch) could not:
        // neither says anything about the task.
        if !sample.probe && thread.event_loop.is_some() {
            let task = thread
                .task
                .as_ref()
                .map(|t| (t.clone(), thread.coroutine.clone()));
            *self.tasks.entry(task).or_insert(0) += 1;
            if let Some(r) = &thread.request {
                *self.requests.entry(r.clone()).or_insert(0) += 1;
            }
        }
        self.last = sample.mono;
        self.samples += 1;
        self.ready = thread.ready;
        let kind = thread.os.as_ref().and_then(kind_of_os);
        self.evidence.observe(sample, thread, kind);
        let Some(os) = &thread.os else { return };
        if let Some(ticks) = os.cpu_ticks {
            self.cpu = Some((self.cpu.map_or(ticks, |c| c.0), ticks));
        }
        if let Some(kind) = kind {
            *self.kinds.entry(kind).or_insert(0) += 1;
        }
        // Who holds the GIL whenever the loop thread does not: also between two of CPython's
        // timed GIL waits, when the thread runs for a moment without it. Used only when the
        // run turns out to be GIL starvation.
        if !thread.gil {
            if let Some(h) = sample.threads.iter().find(|t| t.gil && t.tid != thread.tid) {
                *self
                    .holders
                    .entry((h.tid, h.name.clone(), h.frames.clone()))
                    .or_insert(0) += 1;
            }
        }
    }

    /// A stack sample of the run, standing for `weight` ms of ordinary work (if the run stays
    /// short of an episode), taken at the time of the last [`Run::observe`].
    pub fn observe_stack(&mut self, frames: &[Frame], depth: usize, weight: u32) {
        self.latest = Some((frames.to_vec(), depth));
        self.stacks.entry(frames.to_vec()).or_insert((0, depth)).0 += weight;
        self.timeline.push(self.last, frames, depth);
    }
}
