//! Torn reads: the target runs while loopspy reads it, so any sample can be garbage. These
//! property tests feed the detector thousands of plausible timelines corrupted from a fixed-seed
//! PRNG (garbage and empty frames, random syscalls, NaN/infinite/negative/backwards timestamps,
//! threads appearing and vanishing, ready-queue counters going backwards, probe ticks) and check
//! that it never panics and never reports an impossible episode.

use std::collections::{HashMap, HashSet};

use super::detector::{Detector, DetectorConfig, Event};
use crate::episode::Episode;
use crate::sample::{Frame, OsState, ReadyQueue, Sample, ThreadSample};

/// xorshift64*: small, fast, and the same sequence on every machine.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A string of random characters: ASCII, path separators, `;` (the flame graph's frame
    /// separator), newlines, multi-byte characters and NULs.
    pub(crate) fn garbage(&mut self) -> String {
        const CHARS: &[char] = &[
            'a', 'z', '_', '.', '/', ';', ' ', '\n', '\t', '<', '>', '0', '9', 'é', '語', '\0',
            '\u{fffd}', '"', '\\',
        ];
        let len = self.below(24);
        (0..len).map(|_| *self.pick(CHARS)).collect()
    }
}

fn frame(function: &str, file: &str, line: u32) -> Frame {
    Frame {
        function: function.into(),
        file: file.into(),
        line,
    }
}

const PY: &str = "/py/lib/python3.11";

fn loop_base(uvloop: bool) -> Vec<Frame> {
    if uvloop {
        return vec![
            frame("run", "/venv/uvloop/__init__.py", 82),
            frame("<module>", "/app/main.py", 50),
        ];
    }
    vec![
        frame(
            "BaseEventLoop._run_once",
            &format!("{PY}/asyncio/base_events.py"),
            1922,
        ),
        frame(
            "BaseEventLoop.run_forever",
            &format!("{PY}/asyncio/base_events.py"),
            607,
        ),
        frame("Runner.run", &format!("{PY}/asyncio/runners.py"), 118),
        frame("<module>", "/app/main.py", 50),
    ]
}

/// Callbacks the clean timelines run; the index is also their line number.
const CALLBACKS: &[&str] = &["handler", "render", "lookup", "flush", "Task-7"];

const SYSCALLS: &[&str] = &[
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "running",
    "clock_nanosleep",
    "futex",
    "poll",
    "recvfrom",
    "connect",
    "fsync",
    "openat",
    "read",
    "write",
    "wait4",
    "pselect6",
    "",
    "syscall_9999",
];

/// What a loop thread of the clean timeline does at one instant.
#[derive(Clone, Copy, Debug)]
enum Doing {
    Idle,
    Cb(usize),
}

/// One loop thread of the clean timeline.
struct LoopThread {
    tid: u32,
    uvloop: bool,
    doing: Doing,
    until: f64,
    /// The ready queue's mutation counter: +1 on each dispatch.
    state: u64,
}

/// A generator of clean timelines (loops alternating between idle and callbacks of 1 to 400
/// ms, threads starting and ending), corrupted as it goes.
struct Gen {
    rng: Rng,
    t: f64,
    loops: Vec<LoopThread>,
    next_tid: u32,
    /// How hard to corrupt: the chance of each kind of damage per sample.
    damage: f64,
    /// Whether timestamps may be corrupted too: 0 never, 1 near (NaN, infinite, negative,
    /// backwards, zero), 2 also far (a jump of days, `f64::MAX`).
    bad_time: u8,
}

impl Gen {
    fn new(seed: u64, damage: f64, bad_time: u8) -> Gen {
        let mut g = Gen {
            rng: Rng::new(seed),
            t: 0.0,
            loops: Vec::new(),
            next_tid: 100,
            damage,
            bad_time,
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let uvloop = self.rng.chance(0.3);
        self.loops.push(LoopThread {
            tid: self.next_tid,
            uvloop,
            doing: Doing::Idle,
            until: self.t,
            state: 0,
        });
        self.next_tid += 1;
    }

    fn clean_thread(&mut self, i: usize, probe: bool) -> ThreadSample {
        let t = self.t;
        let rng = &mut self.rng;
        let l = &mut self.loops[i];
        if t >= l.until {
            l.doing = if matches!(l.doing, Doing::Idle) || rng.chance(0.3) {
                l.state += 1;
                Doing::Cb(rng.below(CALLBACKS.len()))
            } else {
                Doing::Idle
            };
            let long = rng.chance(0.3);
            l.until = t + if long {
                0.03 + rng.unit() * 0.4
            } else {
                rng.unit() * 0.02
            };
        }
        let (mut frames, syscall) = match l.doing {
            Doing::Idle if l.uvloop => (Vec::new(), "epoll_wait"),
            Doing::Idle => (
                vec![frame(
                    "EpollSelector.select",
                    &format!("{PY}/selectors.py"),
                    468,
                )],
                "epoll_wait",
            ),
            Doing::Cb(n) => {
                let mut f = vec![
                    frame("sleep", "<built-in>", 0),
                    frame(CALLBACKS[n], "/app/handlers.py", n as u32 + 1),
                ];
                if !l.uvloop {
                    f.push(frame("Handle._run", &format!("{PY}/asyncio/events.py"), 80));
                }
                (f, *rng.pick(&["clock_nanosleep", "running", "recvfrom"]))
            }
        };
        frames.extend(loop_base(l.uvloop));
        if probe {
            frames.clear();
        }
        ThreadSample {
            gc: false,
            loop_ended: false,
            tid: l.tid,
            name: Some(format!("loop-{}", l.tid)),
            event_loop: Some(
                if l.uvloop {
                    "Loop"
                } else {
                    "_UnixSelectorEventLoop"
                }
                .into(),
            ),
            gil: rng.chance(0.5),
            active: true,
            os: Some(OsState {
                fd: None,
                state: if syscall == "running" { 'R' } else { 'S' },
                syscall: Some(syscall.into()),
                gil_wait: false,
                cpu_ticks: Some(((t * 100.0) as u64, (t * 10.0) as u64)),
            }),
            ready: Some(ReadyQueue {
                len: 0,
                state: l.state,
            }),
            task: matches!(l.doing, Doing::Cb(4)).then(|| "Task-7".into()),
            coroutine: matches!(l.doing, Doing::Cb(4)).then(|| "Task-7".into()),
            timers: Some(3),
            timer_overdue_us: None,
            request: None,
            frames,
        }
    }

    /// Damage one thread the way a torn read can.
    fn corrupt(&mut self, th: &mut ThreadSample) {
        let p = self.damage;
        let rng = &mut self.rng;
        if rng.chance(p) {
            th.frames.clear();
        }
        if rng.chance(p) {
            // Garbage frames anywhere in the stack.
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(th.frames.len() + 1);
                let f = Frame {
                    function: rng.garbage(),
                    file: rng.garbage(),
                    line: rng.next() as u32,
                };
                th.frames.insert(at, f);
            }
        }
        if rng.chance(p) && !th.frames.is_empty() {
            // A stack cut short, from either end.
            let cut = rng.below(th.frames.len());
            if rng.chance(0.5) {
                th.frames.truncate(cut);
            } else {
                th.frames.drain(..cut);
            }
        }
        if rng.chance(p) {
            // Loop machinery in the wrong places.
            let pieces = [
                frame("Handle._run", &format!("{PY}/asyncio/events.py"), 80),
                frame(
                    "BaseEventLoop._run_once",
                    &format!("{PY}/asyncio/base_events.py"),
                    1922,
                ),
                frame("Task.__step", &format!("{PY}/asyncio/tasks.py"), 1),
                frame("run", &format!("{PY}/asyncio/runners.py"), 1),
            ];
            let at = rng.below(th.frames.len() + 1);
            th.frames.insert(at, rng.pick(&pieces).clone());
        }
        if rng.chance(p) {
            th.os = match rng.below(3) {
                0 => None,
                _ => Some(OsState {
                    fd: None,
                    state: *rng.pick(&['R', 'S', 'D', 'Z', 'X', '?', '\0', '語']),
                    syscall: match rng.below(3) {
                        0 => None,
                        1 => Some(rng.garbage()),
                        _ => Some(rng.pick(SYSCALLS).to_string()),
                    },
                    gil_wait: rng.chance(0.3),
                    cpu_ticks: rng.chance(0.7).then(|| (rng.next(), rng.next())),
                }),
            };
        }
        if rng.chance(p) {
            th.ready = match rng.below(3) {
                0 => None,
                // Counters going backwards, wrapping, or jumping.
                1 => th.ready.map(|r| ReadyQueue {
                    len: r.len.wrapping_sub(rng.below(3) as u64),
                    state: r.state.wrapping_sub(rng.below(5) as u64),
                }),
                _ => Some(ReadyQueue {
                    len: rng.next(),
                    state: rng.next(),
                }),
            };
        }
        if rng.chance(p) {
            th.event_loop = rng.chance(0.5).then(|| rng.garbage());
        }
        if rng.chance(p) {
            th.name = rng.chance(0.5).then(|| rng.garbage());
        }
        if rng.chance(p) {
            th.task = rng.chance(0.5).then(|| rng.garbage());
            th.coroutine = rng.chance(0.5).then(|| rng.garbage());
        }
        if rng.chance(p / 4.0) {
            th.tid = *rng.pick(&[0, u32::MAX, 1]);
        }
    }

    fn bad_time(&mut self, x: f64) -> f64 {
        let kinds = if self.bad_time >= 2 { 8 } else { 6 };
        match self.rng.below(kinds) {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => f64::NEG_INFINITY,
            3 => -x,
            4 => x - self.rng.unit() * 5.0,
            5 => 0.0,
            6 => x + self.rng.unit() * 1e6,
            _ => f64::MAX,
        }
    }

    fn sample(&mut self) -> Sample {
        let rng = &mut self.rng;
        // Ticks every millisecond, with jitter, occasional stalls, and full stacks now and then.
        self.t += 0.001 * (0.5 + rng.unit()) + if rng.chance(0.002) { rng.unit() } else { 0.0 };
        let probe = !rng.chance(0.15);
        if self.loops.len() < 4 && rng.chance(0.002) {
            self.spawn();
        }
        if self.loops.len() > 1 && self.rng.chance(0.001) {
            let i = self.rng.below(self.loops.len());
            self.loops.remove(i);
        }
        let mut threads = Vec::new();
        for i in 0..self.loops.len() {
            // A thread missing from one sample, as if its read failed.
            if self.rng.chance(self.damage / 4.0) {
                continue;
            }
            let mut th = self.clean_thread(i, probe);
            self.corrupt(&mut th);
            threads.push(th);
        }
        if !probe {
            // A plain worker thread, and sometimes a stranger that shows up once.
            threads.push(ThreadSample {
                gc: false,
                loop_ended: false,
                tid: 99,
                name: Some("worker".into()),
                event_loop: None,
                gil: self.rng.chance(0.5),
                active: self.rng.chance(0.5),
                os: None,
                ready: None,
                task: None,
                coroutine: None,
                timers: None,
                timer_overdue_us: None,
                request: None,
                frames: vec![frame("work", "/app/worker.py", 3)],
            });
            if self.rng.chance(self.damage) {
                let mut th = threads[0].clone();
                th.tid = 50_000 + self.rng.below(1000) as u32;
                threads.push(th);
            }
        }
        if self.rng.chance(self.damage / 4.0) {
            // The same thread twice in one sample.
            if let Some(th) = threads.first().cloned() {
                threads.push(th);
            }
        }
        let mut s = Sample {
            wall: 1_700_000_000.0 + self.t,
            mono: self.t,
            pid: 7,
            probe,
            threads,
            events: Vec::new(),
        };
        if self.rng.chance(self.damage / 10.0) {
            s.pid = 8;
        }
        if self.bad_time > 0 && self.rng.chance(self.damage / 5.0) {
            s.mono = self.bad_time(s.mono);
        }
        if self.bad_time > 0 && self.rng.chance(self.damage / 5.0) {
            s.wall = self.bad_time(s.wall);
        }
        s
    }
}

/// What the properties need to know about the input.
struct Seen {
    /// Samples that showed each (pid, tid).
    keys: HashMap<(u32, u32), u32>,
    min: f64,
    max: f64,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            keys: HashMap::new(),
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn add(&mut self, s: &Sample) {
        let tids: HashSet<u32> = s.threads.iter().map(|t| t.tid).collect();
        for tid in tids {
            *self.keys.entry((s.pid, tid)).or_insert(0) += 1;
        }
        // Only timestamps that can be placed in time (the detector drops the others).
        if s.mono.abs() < 1e9 && s.wall.is_finite() {
            self.min = self.min.min(s.mono);
            self.max = self.max.max(s.mono);
        }
    }

    /// The recording's span in ms: from its first to its last (finite) timestamp.
    fn span_ms(&self) -> f64 {
        if self.max >= self.min {
            (self.max - self.min) * 1000.0
        } else {
            0.0
        }
    }
}

fn check(ep: &Episode, seen: &Seen, what: &str) {
    assert!(
        ep.duration_ms.is_finite() && ep.duration_ms >= 0.0,
        "{what}: duration {} ms\n{ep:?}",
        ep.duration_ms
    );
    // The span in seconds, and so the comparison, is exact only to a rounding error.
    assert!(
        ep.duration_ms <= seen.span_ms() * (1.0 + 1e-9) + 1e-6,
        "{what}: a {} ms episode in a {} ms recording\n{ep:?}",
        ep.duration_ms,
        seen.span_ms()
    );
    assert!(ep.start.is_finite(), "{what}: start {}\n{ep:?}", ep.start);
    let appeared = seen.keys.get(&(ep.pid, ep.tid)).copied().unwrap_or(0);
    assert!(
        appeared > 0,
        "{what}: episode on thread {}/{} that never appeared\n{ep:?}",
        ep.pid,
        ep.tid
    );
    assert!(
        ep.samples >= 1 && ep.samples <= appeared,
        "{what}: {} samples of a thread seen in {appeared}\n{ep:?}",
        ep.samples
    );
    if let Some(h) = &ep.gil_holder {
        assert!(
            seen.keys.contains_key(&(ep.pid, h.tid)),
            "{what}: GIL holder\n{ep:?}"
        );
    }
}

/// Run one generated timeline through a detector; return how many episodes it made.
fn run_one(seed: u64, samples: usize, damage: f64, bad_time: u8) -> usize {
    let what = format!("seed {seed}, damage {damage}, bad_time {bad_time}");
    let mut gen = Gen::new(seed, damage, bad_time);
    let mut d = Detector::new(DetectorConfig { threshold: 0.05 });
    let mut seen = Seen::new();
    let mut found = Vec::new();
    let collect = |events: Vec<Event>, found: &mut Vec<Episode>| {
        for e in events {
            match e {
                Event::Episode { episode, stacks } => {
                    assert!(stacks.iter().all(|(_, n)| *n >= 1), "{what}");
                    found.push(episode);
                }
                Event::Stack { count, .. } => assert!(count >= 1, "{what}"),
            }
        }
    };
    for i in 0..samples {
        let s = gen.sample();
        seen.add(&s);
        collect(d.feed(&s), &mut found);
        // The live views ask at any time, with the latest timestamp, garbage or not.
        if i % 97 == 0 {
            for v in d.loops(s.mono) {
                if let super::detector::ViewState::Running { secs, .. } = v.state {
                    assert!(!(secs < 0.0), "{what}: {secs} s running");
                }
            }
            let _ = d.ongoing(s.mono);
            let _ = d.loops_seen();
        }
    }
    collect(d.finish(), &mut found);
    for ep in &found {
        check(ep, &seen, &what);
    }
    found.len()
}

#[test]
fn clean_timelines_make_episodes() {
    // The generator itself is sound: undamaged, its long callbacks become episodes.
    let n: usize = (0..20).map(|seed| run_one(seed, 3000, 0.0, 0)).sum();
    assert!(n > 100, "only {n} episodes from clean timelines");
}

#[test]
fn torn_samples_never_make_impossible_episodes() {
    let mut episodes = 0;
    for seed in 0..300 {
        let damage = [0.01, 0.05, 0.2, 0.6][seed as usize % 4];
        episodes += run_one(seed, 2000, damage, 0);
    }
    // The properties were checked on real episodes, not on none.
    assert!(episodes > 500, "only {episodes} episodes");
}

#[test]
fn garbage_timestamps_never_make_impossible_episodes() {
    let mut episodes = 0;
    for seed in 1000..1300 {
        let damage = [0.01, 0.05, 0.2, 0.6][seed as usize % 4];
        episodes += run_one(seed, 2000, damage, 1 + (seed % 2) as u8);
    }
    assert!(episodes > 300, "only {episodes} episodes");
}

#[test]
fn only_garbage_timestamps() {
    // Every timestamp NaN, infinite, or the same: no episode can be timed, none may be made up.
    for (i, t) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 5.0]
        .into_iter()
        .enumerate()
    {
        let mut gen = Gen::new(i as u64, 0.0, 0);
        let mut d = Detector::new(DetectorConfig { threshold: 0.05 });
        let mut seen = Seen::new();
        let mut found = Vec::new();
        for _ in 0..3000 {
            let mut s = gen.sample();
            s.mono = t;
            s.wall = t;
            seen.add(&s);
            found.extend(d.feed(&s));
        }
        found.extend(d.finish());
        for e in found {
            if let Event::Episode { episode, .. } = e {
                check(&episode, &seen, &format!("every timestamp {t}"));
            }
        }
    }
}

/// A damaged recording replays (`loopspy report`) without a panic: what it writes is whole, and
/// every episode in the log is a possible one.
#[test]
fn damaged_recordings_replay_cleanly() {
    use crate::acquire::sampler::SamplerStats;
    use crate::output::episodes::EpisodeLog;
    use crate::output::target::{Mode, OutputFile};
    use crate::pipeline::Sinks;
    use crate::recording::{Header, RecordingWriter, FORMAT_VERSION};

    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(77);
    let mut episodes = 0;
    for round in 0..60u64 {
        let header = Header {
            loopspy_recording: FORMAT_VERSION,
            pid: 7,
            command: "python3 app.py".into(),
            python_version: "3.11.7".into(),
            rate: 1000.0,
            start_wall: 1_700_000_000.0,
            note: None,
        };
        let mut gen = Gen::new(round, [0.0, 0.05, 0.3][round as usize % 3], 1);
        let mut w = RecordingWriter::new(Vec::new(), &header).unwrap();
        for _ in 0..1500 {
            // NaN and infinite timestamps are written as `null`: those lines do not parse.
            w.write(&gen.sample()).unwrap();
        }
        let mut bytes = w.finish(&SamplerStats::default()).unwrap();
        for _ in 0..rng.below(6) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(4) {
                0 => bytes.truncate(at.max(bytes.len() / 2)),
                1 if at < bytes.len() => bytes[at] = rng.next() as u8,
                2 => bytes.splice(at..at, [0xc3, 0x28, b'\n']).for_each(drop),
                _ => {
                    let end = (at + rng.below(5000)).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
        }
        let rec = dir.path().join(format!("r{round}.jsonl"));
        std::fs::write(&rec, &bytes).unwrap();
        let svg = dir.path().join(format!("r{round}.svg"));
        let log = dir.path().join(format!("r{round}-episodes.jsonl"));
        let sinks = Sinks {
            by_task: false,
            speedscope: false,
            flamegraph: Some(OutputFile::create(&svg, Mode::Whole).unwrap()),
            raw: None,
            episodes: Some(EpisodeLog::new(
                OutputFile::create(&log, Mode::Stream).unwrap(),
            )),
            live_hangs: false,
        };
        let mut summary = Vec::new();
        let result =
            crate::commands::report::replay(&rec, 50.0, round % 2 == 0, sinks, None, &mut summary);
        let head = format!("{}\n", serde_json::to_string(&header).unwrap());
        let found = match result {
            Ok(found) => found,
            // Only a damaged header may refuse the file.
            Err(e) if !bytes.starts_with(head.as_bytes()) => {
                assert!(format!("{e:#}").contains("cannot read recording"), "{e:#}");
                continue;
            }
            Err(e) => panic!("round {round}: {e:#}"),
        };
        episodes += found.len();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(
            text.trim_end().ends_with("</svg>"),
            "round {round}: SVG cut"
        );
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            let ep: serde_json::Value = serde_json::from_str(line).unwrap();
            let ms = ep["duration_ms"].as_f64().expect("duration_ms is a number");
            assert!(ms >= 0.0 && ms.is_finite(), "round {round}: {line}");
            assert!(ep["start"].as_f64().is_some(), "round {round}: {line}");
        }
        assert!(!summary.is_empty());
    }
    assert!(episodes > 20, "only {episodes} episodes replayed");
}
