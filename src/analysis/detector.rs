//! The episode detector: a pure state machine fed one sample at a time. It follows every
//! event-loop thread, groups consecutive samples inside the same callback into a run, and turns a
//! run that lasted at least the threshold into an [`Episode`]. Time comes only from the samples'
//! timestamps, so the same recording always gives the same episodes.

use std::collections::HashMap;

use crate::analysis::classify::{io_kind_of_source, kind_of_syscall, verdict};
use crate::analysis::culprit::culprit;
use crate::analysis::loop_state::{classify, Anchor, CallbackKey, LoopState, GIL_WAIT_FUNCTION};
use crate::episode::{Episode, GilHolder, Location};
use crate::os::source_files::SourceFiles;
use crate::sample::{Frame, ReadyQueue, Sample, ThreadSample};

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

/// Consecutive samples of one loop thread inside one callback.
#[derive(Debug)]
struct Run {
    key: CallbackKey,
    /// Monotonic time of the sample before the first one that saw this run.
    prev: Option<f64>,
    first: f64,
    /// Wall minus monotonic time at the first sample, to convert the start to wall-clock time.
    wall_offset: f64,
    last: f64,
    samples: u32,
    /// Distinct stacks: (count, depth of the callback's part of the stack).
    stacks: HashMap<Vec<Frame>, (u32, usize)>,
    kinds: HashMap<&'static str, u32>,
    /// The ready queue at the last sample of the run.
    ready: Option<ReadyQueue>,
    /// Who held the GIL while the loop thread waited for it: (tid, name, stack) → samples.
    holders: HashMap<(u32, Option<String>, Vec<Frame>), u32>,
    /// The thread's (user, system) CPU ticks at the first and the last sample.
    cpu: Option<((u64, u64), (u64, u64))>,
    /// The latest stack and its callback depth, for live views.
    latest: Option<(Vec<Frame>, usize)>,
}

#[derive(Debug, Default)]
struct Track {
    anchor: Anchor,
    name: Option<String>,
    last_seen: Option<f64>,
    run: Option<Run>,
    /// What the last sample showed, for live views.
    idle: bool,
    loop_type: Option<String>,
    ready_len: Option<u64>,
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

/// The detector. Feed it samples in time order, then call [`Detector::finish`].
#[derive(Debug)]
pub struct Detector {
    config: DetectorConfig,
    tracks: HashMap<(u32, u32), Track>,
    /// Every event-loop thread seen, with its last known name.
    seen: std::collections::BTreeMap<(u32, u32), Option<String>>,
    /// Where to read the culprit's source line from, if anywhere.
    sources: Option<SourceFiles>,
}

impl Detector {
    pub fn new(config: DetectorConfig) -> Detector {
        Detector {
            config,
            tracks: HashMap::new(),
            seen: Default::default(),
            sources: None,
        }
    }

    /// Read culprits' source lines from `files` to name calls made in C.
    pub fn with_sources(mut self, files: SourceFiles) -> Detector {
        self.sources = Some(files);
        self
    }

    /// Process one sample and return what it completed.
    pub fn feed(&mut self, sample: &Sample) -> Vec<Event> {
        let mut events = Vec::new();
        for thread in &sample.threads {
            self.feed_thread(sample, thread, &mut events);
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

    /// The event-loop threads seen so far, as `name (tid)` labels (with the pid when several).
    pub fn loops_seen(&self) -> Vec<String> {
        let pids: std::collections::BTreeSet<u32> = self.seen.keys().map(|k| k.0).collect();
        self.seen
            .iter()
            .map(|((pid, tid), name)| {
                let label = crate::sample::thread_label(name.as_deref(), *tid);
                if pids.len() > 1 {
                    format!("pid {pid} {label}")
                } else {
                    label
                }
            })
            .collect()
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
            .filter(|(k, _)| self.seen.contains_key(k))
            .map(|((pid, tid), t)| {
                let state = match &t.run {
                    Some(run) => ViewState::Running {
                        callback: run.key.function.clone(),
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

    fn feed_thread(&mut self, sample: &Sample, thread: &ThreadSample, events: &mut Vec<Event>) {
        let key = (sample.pid, thread.tid);
        let mut track = self.tracks.remove(&key).unwrap_or_default();
        let state = classify(thread, &mut track.anchor);
        if state == LoopState::NotLoop && track.run.is_none() {
            events.push(Event::Stack {
                pid: sample.pid,
                thread: thread.label(),
                frames: thread.frames.clone(),
                idle: !is_active(thread),
                count: 1,
            });
            // Keep tracking only threads that have been seen running a loop.
            if track.last_seen.is_some() {
                track.last_seen = Some(sample.mono);
                self.tracks.insert(key, track);
            }
            return;
        }
        // py-spy sometimes misses a thread's name for a sample: keep the last one known.
        if thread.name.is_some() {
            track.name.clone_from(&thread.name);
        }
        if state != LoopState::NotLoop {
            self.seen.insert(key, track.name.clone());
        }
        // Same callback key, and the loop dispatched nothing in between (when its ready queue is
        // readable): a task step that yields and is stepped again is two callbacks.
        let state_is_idle = state == LoopState::Idle;
        track.idle = state_is_idle;
        if thread.event_loop.is_some() {
            track.loop_type.clone_from(&thread.event_loop);
        }
        track.ready_len = thread.ready.map(|r| r.len);
        let current = match state {
            LoopState::Callback { key, depth } => Some((key, depth)),
            LoopState::GilWait => Some((gil_key(), 0)),
            _ => None,
        };
        let continues = matches!((&current, &track.run),
            (Some((k, _)), Some(run)) if run.key == *k
                && !matches!((&run.ready, &thread.ready), (Some(a), Some(b)) if a.popped_before(b)));
        if !continues {
            self.close(key, &mut track, Some(sample.mono), events);
        }
        match current {
            Some((cb, depth)) => {
                let run = track.run.get_or_insert_with(|| Run {
                    key: cb,
                    prev: track.last_seen,
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
                });
                run.latest = Some((thread.frames.clone(), depth));
                if let Some(ticks) = thread.os.as_ref().and_then(|o| o.cpu_ticks) {
                    run.cpu = Some((run.cpu.map_or(ticks, |c| c.0), ticks));
                }
                run.ready = thread.ready;
                run.last = sample.mono;
                run.samples += 1;
                run.stacks
                    .entry(thread.frames.clone())
                    .or_insert((0, depth))
                    .0 += 1;
                if let Some(os) = &thread.os {
                    let kind = match &os.syscall {
                        _ if os.gil_wait => Some("gil"),
                        Some(sc) => Some(kind_of_syscall(sc, os.state)),
                        None => None,
                    };
                    if let Some(kind) = kind {
                        *run.kinds.entry(kind).or_insert(0) += 1;
                    }
                    if os.gil_wait {
                        if let Some(h) =
                            sample.threads.iter().find(|t| t.gil && t.tid != thread.tid)
                        {
                            *run.holders
                                .entry((h.tid, h.name.clone(), h.frames.clone()))
                                .or_insert(0) += 1;
                        }
                    }
                }
            }
            None => events.push(Event::Stack {
                pid: sample.pid,
                thread: thread.label(),
                frames: thread.frames.clone(),
                idle: state_is_idle,
                count: 1,
            }),
        }
        track.last_seen = Some(sample.mono);
        self.tracks.insert(key, track);
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
        let Some(run) = track.run.take() else { return };
        // Each boundary lies between two samples; take the middle of the gap, so the error is
        // at most half a gap on each side.
        let start = match run.prev {
            Some(prev) => run.first - (run.first - prev) / 2.0,
            None => run.first,
        };
        let end = match next {
            Some(next) => run.last + (next - run.last) / 2.0,
            None => run.last,
        };
        let duration = (end - start).max(0.0);
        let mut stacks: Vec<(Vec<Frame>, (u32, usize))> = run.stacks.into_iter().collect();
        // Most frequent first; ties broken by the stack itself so output is deterministic.
        stacks.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
        if duration < self.config.threshold || stacks.is_empty() {
            let thread = crate::sample::thread_label(track.name.as_deref(), key.1);
            for (frames, (count, _)) in stacks {
                events.push(Event::Stack {
                    pid: key.0,
                    thread: thread.clone(),
                    frames,
                    idle: false,
                    count,
                });
            }
            return;
        }
        let (top, (_, depth)) = &stacks[0];
        let os_kind = dominant_kind(&run.kinds);
        // GIL starvation: blame the holder's code, not the loop's.
        let holder = (os_kind == Some("gil"))
            .then(|| {
                run.holders
                    .iter()
                    .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            })
            .flatten()
            .map(|(h, _)| h.clone());
        let (blame_stack, callback): (&[Frame], &[Frame]) = match &holder {
            Some((_, _, frames)) => (frames, frames),
            None => (top, &top[..(*depth).min(top.len())]),
        };
        let blamed = culprit(callback, blame_stack);
        let culprit_index = blamed
            .and_then(|b| blame_stack.iter().position(|f| std::ptr::eq(f, b)))
            .unwrap_or(0);
        let line = match (blamed, self.sources.as_mut()) {
            (Some(b), Some(files)) => files.file(&b.file).and_then(|lines| {
                let text = lines.get((b.line as usize).checked_sub(1)?)?.clone();
                Some((text, lines))
            }),
            _ => None,
        };
        let mut v = verdict(
            os_kind,
            &blame_stack[..culprit_index],
            line.as_ref().map(|(t, l)| (t.as_str(), l.as_slice())),
        );
        // CPU spent mostly in the kernel on behalf of an I/O call (fsync, large writes) is that
        // I/O, not computation.
        if v.kind == "cpu" && kernel_bound(run.cpu) {
            if let Some(io) = v.source.as_deref().and_then(io_kind_of_source) {
                v.kind = io.to_string();
            }
        }
        let episode = Episode {
            pid: key.0,
            tid: key.1,
            thread: track.name.clone(),
            start: start + run.wall_offset,
            duration_ms: duration * 1000.0,
            samples: run.samples,
            kind: v.kind,
            source: v.source,
            task: None,
            coroutine: (run.key != gil_key()).then(|| run.key.function.clone()),
            culprit: blamed.map(Location::from).unwrap_or_else(|| Location {
                function: run.key.function.clone(),
                file: run.key.file.clone(),
                line: 0,
            }),
            stack: top.iter().map(Location::from).collect(),
            gil_holder: holder.map(|(tid, thread, frames)| GilHolder {
                tid,
                thread,
                stack: frames.iter().map(Location::from).collect(),
            }),
            advice: v.advice,
            complete: next.is_some(),
        };
        let stacks = stacks.into_iter().map(|(f, (c, _))| (f, c)).collect();
        events.push(Event::Episode { episode, stacks });
    }
}

/// Whether the thread's CPU time over a run went mostly to the kernel (at least two ticks).
fn kernel_bound(cpu: Option<((u64, u64), (u64, u64))>) -> bool {
    match cpu {
        Some(((u0, s0), (u1, s1))) => {
            let (user, sys) = (u1.saturating_sub(u0), s1.saturating_sub(s0));
            sys >= 2 && sys > user
        }
        None => false,
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

/// Whether a thread that runs no loop was doing work (for the flame graph's idle filter).
fn is_active(thread: &ThreadSample) -> bool {
    match &thread.os {
        Some(os) => os.state == 'R' || os.state == 'D',
        None => thread.active,
    }
}
