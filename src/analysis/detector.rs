//! The episode detector: a pure state machine fed one sample at a time. It follows every
//! event-loop thread, groups consecutive samples inside the same callback into a run, and turns a
//! run that lasted at least the threshold into an [`Episode`]. Time comes only from the samples'
//! timestamps, so the same recording always gives the same episodes.

use std::collections::HashMap;

use crate::analysis::blame::blame;
use crate::analysis::culprit::culprit;
use crate::analysis::loop_state::{
    classify, in_python_loop, outside_any_loop, outside_python_dispatch, Anchor, CallbackKey,
    LoopState, GIL_WAIT_FUNCTION,
};
use crate::analysis::run::Run;
use crate::episode::{Episode, Location};
use crate::os::source_files::SourceFiles;
use crate::sample::{Frame, Sample, ThreadSample};

#[path = "detector_kernel.rs"]
mod kernel;

/// Settings of the detector.
#[derive(Debug, Clone, Copy)]
pub struct DetectorConfig {
    /// A callback running at least this long (seconds) is a blocking episode.
    pub threshold: f64,
}

/// What the detector tells its sinks.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stack of ordinary work (or idleness), `count` samples of it.
    Stack {
        pid: u32,
        thread: String,
        /// The asyncio task the work belonged to (a loop thread's short callback), as
        /// [`task_label`] names it.
        task: Option<String>,
        frames: Vec<Frame>,
        idle: bool,
        count: u32,
    },
    /// A finished (or, at the end of a recording, unfinished) blocking episode with the stacks
    /// seen during it and how many samples each.
    Episode {
        episode: Episode,
        stacks: Vec<(Vec<Frame>, u32)>,
    },
}

#[derive(Debug, Default)]
struct Track {
    anchor: Anchor,
    name: Option<String>,
    last_seen: Option<f64>,
    run: Option<Run>,
    /// What the last sample showed, for live views.
    idle: bool,
    /// The thread's loop stopped and no new one has been seen yet (not shown in live views).
    loop_ended: bool,
    loop_type: Option<String>,
    ready_len: Option<u64>,
    /// The kernel clock times this thread: its events open and close runs (detector_kernel).
    kernel: bool,
    /// Since when the kernel has seen it wait for the GIL.
    gil_since: Option<f64>,
    /// Whether the kernel reported a boundary since tracing began (until then samples may
    /// open a run: the thread may have been inside a callback when tracing started).
    kernel_seen: bool,
    /// When tracing of the thread last began (kernel clock): an `Idle` at that very time says
    /// the thread was in epoll then, not when it entered.
    traced_at: Option<f64>,
    /// The open run is the loop starved of the GIL, and the kernel saw it poll (`Poll`) while
    /// it lasted: the `Busy` of that poll's return continues it.
    through_poll: bool,
    /// When the starved loop last got the GIL or polled, while no stack sample has seen it
    /// starved since: where a callback that a sample then finds running began (the loop
    /// dispatched it after that event).
    polled: Option<f64>,
    /// When the kernel last saw the loop enter an epoll wait (`Idle`), until the wait's return
    /// opens a run (which keeps it as `Run::waited_since`).
    idle_since: Option<f64>,
}

/// What one loop thread is doing now, for live views (`loopspy top`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopView {
    pub pid: u32,
    pub tid: u32,
    pub thread: Option<String>,
    pub loop_type: Option<String>,
    pub ready_len: Option<u64>,
    pub state: ViewState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ViewState {
    Idle,
    /// Between callbacks, in the loop's own code.
    Machinery,
    /// Inside one callback for `secs` so far; past the threshold this is a hang in progress.
    Running {
        callback: String,
        secs: f64,
        culprit: Option<Location>,
        kind: Option<String>,
    },
}

/// How many loop threads are named in the summary.
const MAX_LOOPS_REMEMBERED: usize = 64;

/// The detector. Feed it samples in time order, then call [`Detector::finish`].
#[derive(Debug)]
pub struct Detector {
    config: DetectorConfig,
    tracks: HashMap<(u32, u32), Track>,
    /// Every event-loop thread seen, with its last known name.
    seen: std::collections::BTreeMap<(u32, u32), Option<String>>,
    /// Loop threads seen past `MAX_LOOPS_REMEMBERED` (counted, not named).
    seen_more: std::collections::HashSet<(u32, u32)>,
    /// Where to read the culprit's source line from, if anywhere.
    sources: Option<SourceFiles>,
    /// Monotonic time of each thread's last stack: a stack stands for the time since the
    /// thread's previous one (loop threads are read more often than the others).
    last_stack: HashMap<(u32, u32), f64>,
    /// Each thread's last stacks that showed it outside a loop, until it is first seen running
    /// one: a callback of its first loop began after such a sample, which bounds the start of
    /// a callback already running when the loop was found (a launched program, or one that
    /// exec()'d, that blocks in its first callback).
    outside_loop: HashMap<(u32, u32), OutsideLoop>,
}

/// When a thread was last seen outside a loop (monotonic seconds).
#[derive(Debug, Clone, Copy)]
struct OutsideLoop {
    /// Outside any loop: no loop entry or dispatch frame. Bounds a callback of any loop.
    any: Option<f64>,
    /// Outside a pure-Python loop's dispatch (`asyncio.run` may be setting up): bounds a
    /// callback of a pure-Python loop only, since uvloop's run under its entry frames.
    python: f64,
}

impl Detector {
    pub fn new(config: DetectorConfig) -> Detector {
        Detector {
            config,
            tracks: HashMap::new(),
            seen: Default::default(),
            sources: None,
            seen_more: Default::default(),
            last_stack: HashMap::new(),
            outside_loop: HashMap::new(),
        }
    }

    /// Read culprits' source lines from `files` to name calls made in C.
    pub fn with_sources(mut self, files: SourceFiles) -> Detector {
        self.sources = Some(files);
        self
    }

    /// Notes on the source files read (files not trusted because they changed on disk).
    pub fn source_notes(&self) -> Vec<String> {
        self.sources.as_ref().map(|s| s.notes()).unwrap_or_default()
    }

    /// Process one sample and return what it completed.
    pub fn feed(&mut self, sample: &Sample) -> Vec<Event> {
        // A corrupt timestamp (NaN, infinite, centuries away) cannot be placed in time.
        if !(sample.wall.is_finite() && sample.mono.abs() < 1e9) {
            return Vec::new();
        }
        let mut events = Vec::new();
        self.feed_events(sample, &mut events);
        for thread in sample.threads.iter().filter(|t| t.loop_ended) {
            self.loop_ended(sample, thread, &mut events);
        }
        if sample.probe {
            for thread in &sample.threads {
                self.feed_probe(sample, thread, &mut events);
            }
            return events;
        }
        // Each stack stands for the time since the thread's previous one (probe ticks read
        // none; loop threads are read more often than the others).
        for thread in &sample.threads {
            let weight = match self
                .last_stack
                .insert((sample.pid, thread.tid), sample.mono)
            {
                Some(prev) => ((sample.mono - prev) * 1000.0).round().clamp(1.0, 1000.0) as u32,
                None => 1,
            };
            self.feed_thread(sample, thread, weight, &mut events);
        }
        // Bounded: threads not seen for a while (exited) are forgotten.
        if self.last_stack.len() > 4 * MAX_LOOPS_REMEMBERED.max(1024) {
            let now = sample.mono;
            self.last_stack.retain(|_, t| now - *t < 10.0);
            self.outside_loop.retain(|_, t| now - t.python < 10.0);
        }
        // A loop thread that is gone ended whatever it was running when it was last seen.
        let gone: Vec<(u32, u32)> = self
            .tracks
            .iter()
            .filter(|((pid, tid), _)| {
                *pid == sample.pid && !sample.threads.iter().any(|t| t.tid == *tid)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            if let Some(mut track) = self.tracks.remove(&key) {
                self.close(key, &mut track, Some(sample.mono), &mut events);
            }
        }
        events
    }

    /// The thread stopped running its loop since its previous sample (and may run a new one
    /// now): what it ran in the old loop is over. Its end lies between the two samples.
    fn loop_ended(&mut self, sample: &Sample, thread: &ThreadSample, events: &mut Vec<Event>) {
        let key = (sample.pid, thread.tid);
        let Some(mut track) = self.tracks.remove(&key) else {
            return;
        };
        // On the kernel clock the new loop's first epoll entry already ended the old loop's
        // last callback, at its exact time; a run open now is the new loop's (its ticks are
        // sparse, so the new loop may be well into a block by the time a tick sees the change).
        // Only a thread that runs no loop now is left inside a run no epoll entry will end.
        let running_again = track.kernel && thread.event_loop.is_some();
        if !running_again {
            self.close(key, &mut track, Some(sample.mono), events);
        }
        // The next loop may be run from elsewhere, and only a sample will say it runs.
        track.anchor = Default::default();
        track.loop_ended = true;
        self.tracks.insert(key, track);
    }

    /// End of the recording: runs still going become episodes with `complete: false`.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let mut keys: Vec<(u32, u32)> = self.tracks.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            if let Some(mut track) = self.tracks.remove(&key) {
                self.close(key, &mut track, None, &mut events);
            }
        }
        events
    }

    /// Note a loop thread for the summary; past `MAX_LOOPS_REMEMBERED` (programs that start
    /// loops in short-lived threads) only the number of the others is kept.
    fn remember_loop(&mut self, key: (u32, u32), name: Option<String>) {
        if self.seen.len() < MAX_LOOPS_REMEMBERED || self.seen.contains_key(&key) {
            self.seen.insert(key, name);
        } else if self.seen_more.len() < 10 * MAX_LOOPS_REMEMBERED {
            self.seen_more.insert(key);
        }
    }

    /// The event-loop threads seen so far, as `name (tid)` labels (with the pid when several).
    pub fn loops_seen(&self) -> Vec<String> {
        let pids: std::collections::BTreeSet<u32> = self.seen.keys().map(|k| k.0).collect();
        let mut out: Vec<String> = self
            .seen
            .iter()
            .map(|((pid, tid), name)| {
                let label = crate::sample::thread_label(name.as_deref(), *tid);
                if pids.len() > 1 {
                    format!("pid {pid} {label}")
                } else {
                    label
                }
            })
            .collect();
        if !self.seen_more.is_empty() {
            out.push(format!("and {} more loop threads", self.seen_more.len()));
        }
        out
    }

    /// Runs in progress whose length already passes the threshold, as of `now` (monotonic):
    /// `(pid, tid, thread name, callback, seconds so far)`. For live progress reports.
    pub fn ongoing(&self, now: f64) -> Vec<(u32, u32, Option<String>, String, f64)> {
        self.loops(now)
            .into_iter()
            .filter_map(|v| match v.state {
                ViewState::Running { callback, secs, .. } if secs >= self.config.threshold => {
                    Some((v.pid, v.tid, v.thread, callback, secs))
                }
                _ => None,
            })
            .collect()
    }

    /// Every loop thread being followed and what it is doing as of `now` (monotonic), sorted
    /// by (pid, tid).
    pub fn loops(&self, now: f64) -> Vec<LoopView> {
        let mut out: Vec<LoopView> = self
            .tracks
            .iter()
            .filter(|(k, t)| {
                !t.loop_ended && (self.seen.contains_key(k) || self.seen_more.contains(k))
            })
            .map(|((pid, tid), t)| {
                let state = match &t.run {
                    Some(run) => ViewState::Running {
                        callback: run.callback_name(),
                        secs: (now - run.first).max(0.0),
                        culprit: run.latest.as_ref().and_then(|(frames, depth)| {
                            culprit(&frames[..(*depth).min(frames.len())], frames)
                                .map(Location::from)
                        }),
                        kind: dominant_kind(&run.kinds).map(String::from),
                    },
                    None if t.idle => ViewState::Idle,
                    None => ViewState::Machinery,
                };
                LoopView {
                    pid: *pid,
                    tid: *tid,
                    thread: t.name.clone(),
                    loop_type: t.loop_type.clone(),
                    ready_len: t.ready_len,
                    state,
                }
            })
            .collect();
        out.sort_by_key(|v| (v.pid, v.tid));
        out
    }

    /// The threshold in seconds.
    pub fn threshold(&self) -> f64 {
        self.config.threshold
    }

    /// A probe tick: no frames, only the loop thread's OS state and ready queue. Idle in epoll
    /// ends a run; a dispatch (a pop from the ready queue) ends it and starts the next one,
    /// whose callback the next stack sample names.
    fn feed_probe(&mut self, sample: &Sample, thread: &ThreadSample, events: &mut Vec<Event>) {
        let key = (sample.pid, thread.tid);
        if thread.event_loop.is_none() {
            return;
        }
        let Some(os) = &thread.os else { return };
        let mut track = self.tracks.remove(&key).unwrap_or_default();
        self.seed_first_loop_sample(key, &mut track, &[]);
        track.loop_ended = false;
        if !self.seen.contains_key(&key) {
            self.remember_loop(key, thread.name.clone());
        }
        if thread.name.is_some() {
            track.name.clone_from(&thread.name);
        }
        track.ready_len = thread.ready.map(|r| r.len);
        if track.kernel {
            self.feed_traced_probe(key, &mut track, sample, thread, events);
            track.last_seen = Some(sample.mono);
            self.tracks.insert(key, track);
            return;
        }
        let idle = !os.gil_wait && in_epoll(thread);
        let popped = track
            .run
            .as_ref()
            .is_some_and(|r| r.popped(thread.ready.as_ref()));
        if idle || popped {
            self.close(key, &mut track, Some(sample.mono), events);
        }
        track.idle = idle;
        if !idle {
            let prev = track.last_seen;
            track
                .run
                .get_or_insert_with(|| Run::start(None, prev, sample))
                .observe(sample, thread);
        }
        track.last_seen = Some(sample.mono);
        self.tracks.insert(key, track);
    }

    fn feed_thread(
        &mut self,
        sample: &Sample,
        thread: &ThreadSample,
        weight: u32,
        events: &mut Vec<Event>,
    ) {
        let key = (sample.pid, thread.tid);
        let mut track = self.tracks.remove(&key).unwrap_or_default();
        let state = classify(thread, &mut track.anchor);
        if state == LoopState::NotLoop && track.run.is_none() {
            events.push(Event::Stack {
                pid: sample.pid,
                thread: thread.label(),
                task: own_task(thread),
                frames: thread.frames.clone(),
                idle: !is_active(thread),
                count: weight,
            });
            // Keep tracking only threads that have been seen running a loop.
            if track.last_seen.is_some() {
                track.last_seen = Some(sample.mono);
                self.tracks.insert(key, track);
            } else if outside_python_dispatch(&thread.frames) {
                let any = outside_any_loop(&thread.frames).then_some(sample.mono);
                let before = self.outside_loop.get(&key).and_then(|o| o.any);
                let python = sample.mono;
                let any = any.or(before);
                self.outside_loop.insert(key, OutsideLoop { any, python });
            }
            return;
        }
        self.seed_first_loop_sample(key, &mut track, &thread.frames);
        // py-spy sometimes misses a thread's name for a sample: keep the last one known.
        if thread.name.is_some() {
            track.name.clone_from(&thread.name);
        }
        if state != LoopState::NotLoop {
            track.loop_ended = false;
            self.remember_loop(key, track.name.clone());
        }
        let state_is_idle = state == LoopState::Idle;
        track.idle = state_is_idle;
        if thread.event_loop.is_some() {
            track.loop_type.clone_from(&thread.event_loop);
        }
        track.ready_len = thread.ready.map(|r| r.len);
        if track.kernel {
            self.feed_traced_stack(key, &mut track, sample, thread, (state, weight), events);
            track.last_seen = Some(sample.mono);
            self.tracks.insert(key, track);
            return;
        }
        let dispatched = state == LoopState::Dispatched;
        // Not idle: the callback it runs (`None`: out of epoll or dispatched, not named yet).
        let current = match state {
            LoopState::Callback { key, depth } => Some((Some(key), depth)),
            LoopState::GilWait => Some((Some(gil_key()), 0)),
            LoopState::Waking | LoopState::Dispatched => Some((None, 0)),
            _ => None,
        };
        // Same callback (a run a probe tick started has no name yet and takes this one), and
        // the loop dispatched nothing in between: a task stepped twice is two callbacks. A
        // loop seen waking continues only a wait for the GIL (it has not taken it yet) or a
        // run not named yet; frames back in the selector end any named callback. A loop seen
        // inside its dispatch with nothing above it continues the callback it dispatched (a C
        // task step's tail), and without one opens a run the next stack names.
        let continues = match (&current, &track.run) {
            (Some((k, _)), Some(run)) if !run.popped(thread.ready.as_ref()) => {
                match (&run.key, k) {
                    (None, _) => true,
                    (Some(rk), Some(k)) => rk == k,
                    (Some(rk), None) => *rk == gil_key() || dispatched,
                }
            }
            _ => false,
        };
        if !continues {
            self.close(key, &mut track, Some(sample.mono), events);
        }
        match current {
            Some((cb, depth)) => {
                let prev = track.last_seen;
                let run = track
                    .run
                    .get_or_insert_with(|| Run::start(cb.clone(), prev, sample));
                if let Some(cb) = cb {
                    run.key.get_or_insert(cb);
                }
                run.observe(sample, thread);
                run.observe_stack(&thread.frames, depth, weight);
            }
            None => events.push(Event::Stack {
                pid: sample.pid,
                thread: thread.label(),
                task: own_task(thread),
                frames: thread.frames.clone(),
                idle: state_is_idle,
                count: weight,
            }),
        }
        track.last_seen = Some(sample.mono);
        self.tracks.insert(key, track);
    }

    /// A thread seen running a loop for the first time: its previous sample is the last one
    /// that showed it outside that loop, if any (a run it is in began after that). `frames`:
    /// the first loop sample's stack (empty for a probe); a pure-Python loop's iteration on
    /// it lets a stack inside `asyncio.run` but before its loop ran bound the run too.
    fn seed_first_loop_sample(&mut self, key: (u32, u32), track: &mut Track, frames: &[Frame]) {
        if track.last_seen.is_none() {
            let outside = self.outside_loop.remove(&key);
            track.last_seen = if in_python_loop(frames) {
                outside.map(|o| o.python)
            } else {
                outside.and_then(|o| o.any)
            };
        }
    }

    /// End the thread's current run, if any. `next` is the monotonic time of the first sample
    /// that saw the run over, or `None` when the recording stopped during it.
    fn close(
        &mut self,
        key: (u32, u32),
        track: &mut Track,
        next: Option<f64>,
        events: &mut Vec<Event>,
    ) {
        track.through_poll = false;
        track.polled = None;
        let Some(mut run) = track.run.take() else {
            return;
        };
        let bounds = run.bounds(next);
        let duration = bounds.duration();
        // The kernel saw the thread wait for the GIL most of the run: that is what it did.
        let os_kind = if run.gil_secs * 2.0 >= duration && run.gil_secs > 0.0 {
            Some("gil")
        } else {
            dominant_kind(&run.kinds)
        };
        // A run no stack sample named, whose samples (or the kernel) saw the thread wait for
        // the GIL, was a loop starved of the GIL outside any callback: the OS is evidence enough.
        if run.key.is_none() && os_kind == Some("gil") {
            run.key = Some(gil_key());
        }
        let task = run.task();
        let request = run.request();
        // A run no stack sample ever named (probe ticks alone, e.g. an interpreter shutting
        // down after its loop stopped) is not known to be a callback: no episode.
        if duration < self.config.threshold || run.key.is_none() {
            let mut stacks: Vec<(Vec<Frame>, (u32, usize))> = run.stacks.into_iter().collect();
            // Most frequent first; ties broken by the stack itself so output is deterministic.
            stacks.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
            let thread = crate::sample::thread_label(track.name.as_deref(), key.1);
            let task = task
                .as_ref()
                .map(|(name, coro)| task_label(name, coro.as_deref()));
            for (frames, (count, _)) in stacks {
                events.push(Event::Stack {
                    pid: key.0,
                    thread: thread.clone(),
                    task: task.clone(),
                    frames,
                    idle: false,
                    count,
                });
            }
            return;
        }
        // An episode's stacks weigh the time each stood for inside the episode alone, in
        // milliseconds adding up to its duration (`weights`), most first.
        let mut stacks = std::mem::take(&mut run.timeline).weigh(bounds.start, bounds.end);
        stacks.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
        // A run past the threshold normally has stacks (the sampler reads them every 10 ms
        // then); without any, the episode still stands, with the callback unknown.
        let b = blame(&run, os_kind, &stacks, self.sources.as_mut());
        let top = stacks.first().map(|s| s.0.as_slice()).unwrap_or_default();
        let episode = Episode {
            pid: key.0,
            tid: key.1,
            thread: track.name.clone(),
            start: bounds.start + run.wall_offset,
            duration_ms: duration * 1000.0,
            duration_error_ms: Some(bounds.error * 1000.0),
            start_seen: bounds.start_seen,
            samples: run.samples,
            kind: b.kind,
            source: b.source,
            // The task's own coroutine names the callback better than its outermost frame.
            coroutine: task.as_ref().and_then(|t| t.1.clone()).or_else(|| {
                run.key
                    .as_ref()
                    .filter(|k| **k != gil_key())
                    .map(|k| k.function.clone())
            }),
            task: task.map(|t| t.0),
            culprit: b.culprit.unwrap_or_else(|| Location {
                function: run
                    .key
                    .as_ref()
                    .map_or_else(|| "<unknown callback>".into(), |k| k.function.clone()),
                file: run.key.as_ref().map(|k| k.file.clone()).unwrap_or_default(),
                line: 0,
            }),
            stack: top.iter().map(Location::from).collect(),
            gil_holder: b.holder,
            advice: b.advice,
            complete: next.is_some(),
            driver: b.driver,
            holds_gil: b.holds_gil,
            fd: b.fd,
            self_call: b.self_call,
            request,
        };
        let stacks = stacks.into_iter().map(|(f, (c, _))| (f, c)).collect();
        events.push(Event::Episode { episode, stacks });
    }
}

/// The kind most samples of an episode showed. Waiting kinds beat `cpu` from a quarter of the
/// samples on: a write+fsync loop spends much of its time "running" in the kernel copying data,
/// but the callback is blocked on file I/O.
fn dominant_kind(kinds: &HashMap<&'static str, u32>) -> Option<&'static str> {
    let total: u32 = kinds.values().sum();
    let best = |filter: &dyn Fn(&str) -> bool| {
        kinds
            .iter()
            .filter(|(k, _)| filter(k))
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(k, n)| (*k, *n))
    };
    let top = best(&|_| true)?;
    if top.0 == "cpu" {
        if let Some((k, n)) = best(&|k| k != "cpu" && k != "unknown") {
            if n * 4 >= total {
                return Some(k);
            }
        }
    }
    Some(top.0)
}

fn gil_key() -> CallbackKey {
    CallbackKey {
        function: GIL_WAIT_FUNCTION.to_string(),
        file: String::new(),
    }
}

/// How the flame graph names a task's work: `task <name>` for a task given a name, and
/// `task <coroutine>` for one that kept asyncio's default `Task-N` (a new number for every task,
/// which would split the same work into as many towers as there were tasks).
pub fn task_label(name: &str, coroutine: Option<&str>) -> String {
    let default = name
        .strip_prefix("Task-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    match coroutine {
        Some(c) if default => format!("task {c}"),
        _ => format!("task {name}"),
    }
}

/// The task a single stack sample says it was stepping, as [`task_label`] names it.
pub(super) fn own_task(thread: &ThreadSample) -> Option<String> {
    let name = thread.task.as_deref()?;
    Some(task_label(name, thread.coroutine.as_deref()))
}

/// Whether the thread waits in the event loop's epoll call.
fn in_epoll(t: &ThreadSample) -> bool {
    matches!(
        t.os.as_ref().and_then(|o| o.syscall.as_deref()),
        Some("epoll_wait" | "epoll_pwait" | "epoll_pwait2")
    )
}

/// Whether a thread that runs no loop was doing work (for the flame graph's idle filter).
fn is_active(thread: &ThreadSample) -> bool {
    match &thread.os {
        Some(os) => os.state == 'R' || os.state == 'D',
        None => thread.active,
    }
}
