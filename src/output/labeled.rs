//! Stack samples labeled for the timeline-aware outputs (pprof files, the monitor's
//! `/debug/pprof/profile`, Perfetto traces): each thread's stack at one full sample, with its
//! thread, task, weight, and whether it was inside a blocking episode (`blocked`) and of what
//! kind, and for a blocked sample the route template of the request its episode served.
//!
//! Whether a sample was inside an episode is only known once the detector has seen the run
//! through, so the [`Labeler`] holds a loop thread's samples while its callback runs:
//! - a run that ends short of the threshold releases them as not blocked;
//! - an episode releases the samples between its start and end as blocked, with its kind;
//! - in `early` mode (live endpoints), a run that has passed the threshold releases them at once
//!   as blocked, with the kind seen so far, so a hang in progress shows in a profile taken
//!   during it (the window that keeps them corrects their kind when the episode ends).
//!
//! A thread's samples come out in time order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::analysis::classify::kind_of_syscall;
use crate::analysis::detector::{Detector, ViewState};
use crate::episode::Episode;
use crate::sample::{Frame, Sample, ThreadSample};

/// One thread's stack at one full sample.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledStack {
    /// Wall-clock Unix seconds of the sample.
    pub wall: f64,
    /// Monotonic seconds since the recording started.
    pub mono: f64,
    pub pid: u32,
    pub tid: u32,
    /// The Python thread name, when known.
    pub thread: Option<Arc<str>>,
    /// The asyncio task the loop was stepping, when known.
    pub task: Option<Arc<str>>,
    /// Innermost frame first.
    pub frames: Arc<[Frame]>,
    /// The time this sample stands for (since the process's previous full sample), in ms.
    pub weight_ms: u32,
    /// Whether the thread runs an event loop.
    pub loop_thread: bool,
    /// Whether the sample lies inside a blocking episode of its thread.
    pub blocked: bool,
    /// For a blocked sample, the episode's kind; otherwise what the OS said the thread was
    /// doing (`cpu`, `sleep`, `network`, ..., `idle` for a loop waiting for events).
    pub kind: Option<Arc<str>>,
    /// For a blocked sample, the route template of the request its episode served, when known
    /// (`/orders/{order_id}`; never a concrete path).
    pub route: Option<Arc<str>>,
}

/// Samples held per thread at most while a run is undecided; past it the oldest are released
/// with the kind seen so far (a run this long is past any threshold).
const MAX_PENDING: usize = 50_000;

/// Shares equal stacks and names between samples, so a long window of samples costs one copy
/// of each distinct stack.
#[derive(Debug, Default)]
pub struct Interner {
    stacks: HashSet<Arc<[Frame]>>,
    names: HashSet<Arc<str>>,
}

impl Interner {
    pub fn stack(&mut self, frames: &[Frame]) -> Arc<[Frame]> {
        if let Some(s) = self.stacks.get(frames) {
            return s.clone();
        }
        let s: Arc<[Frame]> = Arc::from(frames);
        self.stacks.insert(s.clone());
        s
    }

    pub fn name(&mut self, name: &str) -> Arc<str> {
        if let Some(s) = self.names.get(name) {
            return s.clone();
        }
        let s: Arc<str> = Arc::from(name);
        self.names.insert(s.clone());
        s
    }

    /// Forget what nothing else refers to any more (for windows that drop old samples).
    pub fn prune(&mut self) {
        self.stacks.retain(|s| Arc::strong_count(s) > 1);
        self.names.retain(|s| Arc::strong_count(s) > 1);
    }

    pub fn len(&self) -> usize {
        self.stacks.len() + self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Turns samples into [`LabeledStack`]s; see the module doc.
#[derive(Debug)]
pub struct Labeler {
    include_idle: bool,
    loops_only: bool,
    early: bool,
    /// pid → monotonic time of its previous full sample.
    last_full: HashMap<u32, f64>,
    /// Per loop thread: samples of the run in progress, not yet known to be blocked or not.
    pending: HashMap<(u32, u32), VecDeque<LabeledStack>>,
    pub interner: Interner,
}

impl Labeler {
    /// `include_idle`: also label idle threads (waiting, not working); `loops_only`: only
    /// event-loop threads; `early`: release a run's samples as soon as it passes the threshold.
    pub fn new(include_idle: bool, loops_only: bool, early: bool) -> Labeler {
        Labeler {
            include_idle,
            loops_only,
            early,
            last_full: HashMap::new(),
            pending: HashMap::new(),
            interner: Interner::default(),
        }
    }

    /// An episode ended: its thread's held samples inside it are released as blocked.
    pub fn on_episode(&mut self, ep: &Episode, out: &mut dyn FnMut(LabeledStack)) {
        let Some(queue) = self.pending.get_mut(&(ep.pid, ep.tid)) else {
            return;
        };
        let (start, end) = episode_span(ep);
        let kind = Some(self.interner.name(&ep.kind));
        let route = crate::output::route_of(ep).map(|r| self.interner.name(&r));
        while let Some(front) = queue.front() {
            if front.wall > end {
                break;
            }
            let mut s = queue.pop_front().expect("front exists");
            if s.wall >= start {
                s.blocked = true;
                s.kind.clone_from(&kind);
                s.route.clone_from(&route);
            }
            out(s);
        }
    }

    /// A sample, after the detector has seen it (and its episodes were given to
    /// `on_episode`).
    pub fn on_sample(
        &mut self,
        sample: &Sample,
        detector: &Detector,
        out: &mut dyn FnMut(LabeledStack),
    ) {
        if sample.probe || !(sample.wall.is_finite() && sample.mono.is_finite()) {
            return;
        }
        let weight_ms = match self.last_full.insert(sample.pid, sample.mono) {
            Some(prev) => ((sample.mono - prev) * 1000.0).round().clamp(1.0, 1000.0) as u32,
            None => 1,
        };
        // What each loop thread of this process is doing now: the start of its run in
        // progress, and that run's kind so far if it is already past the threshold.
        let mut runs: HashMap<u32, (f64, Option<Option<String>>)> = HashMap::new();
        for v in detector.loops(sample.mono) {
            if v.pid != sample.pid {
                continue;
            }
            if let ViewState::Running { secs, kind, .. } = v.state {
                let past = (secs >= detector.threshold()).then_some(kind);
                runs.insert(v.tid, (sample.mono - secs, past));
            }
        }
        for t in &sample.threads {
            let loop_thread = t.event_loop.is_some() || runs.contains_key(&t.tid);
            if t.frames.is_empty() || (self.loops_only && !loop_thread) {
                continue;
            }
            let (idle, kind) = state_of(t, loop_thread);
            if idle && !self.include_idle && !runs.contains_key(&t.tid) {
                continue;
            }
            let labeled = LabeledStack {
                wall: sample.wall,
                mono: sample.mono,
                pid: sample.pid,
                tid: t.tid,
                thread: t.name.as_deref().map(|n| self.interner.name(n)),
                task: t.task.as_deref().map(|n| self.interner.name(n)),
                frames: self.interner.stack(&t.frames),
                weight_ms,
                loop_thread,
                blocked: false,
                kind: kind.map(|k| self.interner.name(k)),
                route: None,
            };
            // Behind samples still held, so each thread's samples come out in time order.
            let key = (sample.pid, t.tid);
            if loop_thread && (runs.contains_key(&t.tid) || self.pending.contains_key(&key)) {
                self.pending.entry(key).or_default().push_back(labeled);
            } else {
                out(labeled);
            }
        }
        self.resolve(sample.pid, &runs, out);
    }

    /// Release what the current state of each loop thread decides.
    fn resolve(
        &mut self,
        pid: u32,
        runs: &HashMap<u32, (f64, Option<Option<String>>)>,
        out: &mut dyn FnMut(LabeledStack),
    ) {
        let keys: Vec<(u32, u32)> = self
            .pending
            .keys()
            .filter(|k| k.0 == pid)
            .copied()
            .collect();
        for key in keys {
            let Some(mut queue) = self.pending.remove(&key) else {
                continue;
            };
            let run = runs.get(&key.1);
            let start = run.map_or(f64::INFINITY, |r| r.0 - 1e-9);
            // Before the run in progress (or with none): that run ended short.
            while queue.front().is_some_and(|s| s.mono < start) {
                out(queue.pop_front().expect("front exists"));
            }
            if let Some((_, Some(kind))) = run {
                if self.early {
                    let kind = kind.as_deref().map(|k| self.interner.name(k));
                    for mut s in queue.drain(..) {
                        s.blocked = true;
                        s.kind.clone_from(&kind);
                        out(s);
                    }
                } else {
                    while queue.len() > MAX_PENDING {
                        let mut s = queue.pop_front().expect("non-empty");
                        s.blocked = true;
                        s.kind = kind.as_deref().map(|k| self.interner.name(k));
                        out(s);
                    }
                }
            }
            if !queue.is_empty() {
                self.pending.insert(key, queue);
            }
        }
    }

    /// End of input: whatever is still held was not inside an episode the detector reported.
    pub fn finish(&mut self, out: &mut dyn FnMut(LabeledStack)) {
        let mut keys: Vec<(u32, u32)> = self.pending.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            for s in self.pending.remove(&key).into_iter().flatten() {
                out(s);
            }
        }
    }

    /// How many samples are held now (for tests and memory checks).
    pub fn held(&self) -> usize {
        self.pending.values().map(VecDeque::len).sum()
    }
}

/// The wall-clock span of an episode, widened by a microsecond for rounding.
pub fn episode_span(ep: &Episode) -> (f64, f64) {
    (ep.start - 1e-6, ep.start + ep.duration_ms / 1000.0 + 1e-6)
}

/// Whether a thread sample is idle, and what the OS says it is doing.
fn state_of(t: &ThreadSample, loop_thread: bool) -> (bool, Option<&'static str>) {
    let Some(os) = &t.os else {
        return (!t.active, None);
    };
    if os.gil_wait {
        return (false, Some("gil"));
    }
    let in_epoll = matches!(
        os.syscall.as_deref(),
        Some("epoll_wait" | "epoll_pwait" | "epoll_pwait2")
    );
    if loop_thread && in_epoll {
        return (true, Some("idle"));
    }
    let idle = !(os.state == 'R' || os.state == 'D');
    let kind = os
        .syscall
        .as_deref()
        .map(|sc| kind_of_syscall(sc, os.state))
        .filter(|k| *k != "unknown");
    (idle && !loop_thread, kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::detector::DetectorConfig;
    use crate::sample::OsState;

    fn thread(syscall: &str, function: &str) -> ThreadSample {
        ThreadSample {
            gc: false,
            loop_ended: false,
            tid: 1,
            name: Some("MainThread".into()),
            event_loop: Some("_UnixSelectorEventLoop".into()),
            gil: true,
            active: true,
            os: Some(OsState {
                fd: None,
                state: if syscall == "running" { 'R' } else { 'S' },
                syscall: Some(syscall.into()),
                gil_wait: false,
                cpu_ticks: None,
            }),
            ready: None,
            task: None,
            coroutine: None,
            timers: None,
            timer_overdue_us: None,
            request: None,
            frames: loop_frames(function),
        }
    }

    fn loop_frames(top: &str) -> Vec<Frame> {
        let f = |function: &str, file: &str, line| Frame {
            function: function.into(),
            file: file.into(),
            line,
        };
        let mut frames = vec![];
        if top == "select" {
            frames.push(f("select", "/usr/lib/python3.11/selectors.py", 468));
        } else {
            frames.push(f(top, "/app/main.py", 9));
            frames.push(f("_run", "/usr/lib/python3.11/asyncio/events.py", 80));
        }
        frames.push(f(
            "_run_once",
            "/usr/lib/python3.11/asyncio/base_events.py",
            1922,
        ));
        frames.push(f(
            "run_forever",
            "/usr/lib/python3.11/asyncio/base_events.py",
            607,
        ));
        frames
    }

    fn sample(mono: f64, t: ThreadSample) -> Sample {
        Sample {
            wall: 1000.0 + mono,
            mono,
            pid: 7,
            probe: false,
            threads: vec![t],
            events: Vec::new(),
        }
    }

    /// Feed idle, then a 200 ms sleep in `handler`, then idle, through the detector and the
    /// labeler as the pipeline does.
    fn run(early: bool) -> Vec<LabeledStack> {
        let mut detector = Detector::new(DetectorConfig { threshold: 0.05 });
        let mut labeler = Labeler::new(true, false, early);
        let mut out = Vec::new();
        let mut samples = Vec::new();
        for i in 0..5 {
            samples.push(sample(i as f64 * 0.01, thread("epoll_wait", "select")));
        }
        for i in 5..25 {
            samples.push(sample(
                i as f64 * 0.01,
                thread("clock_nanosleep", "handler"),
            ));
        }
        for i in 25..30 {
            samples.push(sample(i as f64 * 0.01, thread("epoll_wait", "select")));
        }
        for s in &samples {
            for e in detector.feed(s) {
                if let crate::analysis::detector::Event::Episode { episode, .. } = e {
                    labeler.on_episode(&episode, &mut |l| out.push(l));
                }
            }
            labeler.on_sample(s, &detector, &mut |l| out.push(l));
        }
        labeler.finish(&mut |l| out.push(l));
        assert_eq!(labeler.held(), 0);
        out.sort_by(|a, b| a.mono.total_cmp(&b.mono));
        out
    }

    #[test]
    fn samples_inside_an_episode_are_blocked_with_its_kind() {
        for early in [false, true] {
            let out = run(early);
            assert_eq!(out.len(), 30, "every sample comes out once");
            let blocked: Vec<_> = out.iter().filter(|s| s.blocked).collect();
            assert_eq!(blocked.len(), 20, "early={early}");
            assert!(blocked.iter().all(|s| s.frames[0].function == "handler"));
            assert!(blocked.iter().all(|s| s.kind.as_deref() == Some("sleep")));
            assert!(out
                .iter()
                .filter(|s| !s.blocked)
                .all(|s| s.kind.as_deref() == Some("idle")));
        }
    }

    #[test]
    fn interner_shares_and_prunes() {
        let mut i = Interner::default();
        let a = i.stack(&loop_frames("x"));
        let b = i.stack(&loop_frames("x"));
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        i.prune();
        assert!(i.is_empty());
    }
}
