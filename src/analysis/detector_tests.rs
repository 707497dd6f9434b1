//! The detector on synthetic timelines: exact boundaries, jitter, gaps, back-to-back callbacks,
//! a thread that disappears, a recording that stops mid-episode.

use super::detector::{Detector, DetectorConfig, Event};
use crate::episode::Episode;
use crate::sample::{Frame, OsState, ReadyQueue, Sample, ThreadSample};

fn f(function: &str, file: &str, line: u32) -> Frame {
    Frame {
        function: function.into(),
        file: file.into(),
        line,
    }
}

fn loop_base() -> Vec<Frame> {
    vec![
        f(
            "BaseEventLoop._run_once",
            "/py/lib/python3.11/asyncio/base_events.py",
            1922,
        ),
        f(
            "BaseEventLoop.run_forever",
            "/py/lib/python3.11/asyncio/base_events.py",
            607,
        ),
        f("<module>", "/app/main.py", 50),
    ]
}

/// What the loop thread does at one instant.
#[derive(Clone, Copy)]
enum Doing {
    Idle,
    Cb(&'static str),
    /// Inside the loop's dispatch with nothing above it (preempted right after `Handle._run`
    /// began, or in a C task step).
    Dispatched,
}

fn thread(tid: u32, doing: Doing, ready_state: u64) -> ThreadSample {
    let mut frames = match doing {
        Doing::Idle => vec![f(
            "EpollSelector.select",
            "/py/lib/python3.11/selectors.py",
            468,
        )],
        Doing::Cb(name) => vec![
            f(name, "/app/handlers.py", 10),
            f("Handle._run", "/py/lib/python3.11/asyncio/events.py", 80),
        ],
        Doing::Dispatched => vec![f("Handle._run", "/py/lib/python3.11/asyncio/events.py", 80)],
    };
    frames.extend(loop_base());
    let syscall = match doing {
        Doing::Idle => "epoll_wait",
        Doing::Cb(_) => "clock_nanosleep",
        Doing::Dispatched => "running",
    };
    ThreadSample {
        gc: false,
        loop_ended: false,
        tid,
        name: Some("MainThread".into()),
        event_loop: Some("_UnixSelectorEventLoop".into()),
        gil: false,
        active: true,
        os: Some(OsState {
            fd: None,
            state: 'S',
            syscall: Some(syscall.into()),
            gil_wait: false,
            cpu_ticks: None,
        }),
        ready: Some(ReadyQueue {
            len: 0,
            state: ready_state,
        }),
        task: None,
        coroutine: None,
        timers: None,
        timer_overdue_us: None,
        request: None,
        frames,
    }
}

fn sample(t: f64, threads: Vec<ThreadSample>) -> Sample {
    Sample {
        probe: false,
        wall: 1000.0 + t,
        mono: t,
        pid: 7,
        threads,
        events: Vec::new(),
    }
}

fn episodes(events: Vec<Event>) -> Vec<Episode> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Episode { episode, .. } => Some(episode),
            Event::Stack { .. } => None,
        })
        .collect()
}

/// Feed a timeline of (time, doing, ready-queue counter) for thread 7; return all episodes.
fn run(timeline: &[(f64, Doing, u64)], finish: bool) -> Vec<Episode> {
    let mut d = Detector::new(DetectorConfig { threshold: 0.05 });
    let mut out = Vec::new();
    for (t, doing, q) in timeline {
        out.extend(episodes(d.feed(&sample(*t, vec![thread(7, *doing, *q)]))));
    }
    if finish {
        out.extend(episodes(d.finish()));
    }
    out
}

/// Sample every `dt` from 0 to `end` a loop that runs `cb` from `from` to `to` and idles
/// otherwise; the handle is popped (counter +1) when the callback starts.
fn timeline(
    dt: f64,
    end: f64,
    spans: &[(&'static str, f64, f64)],
    jitter: impl Fn(usize) -> f64,
) -> Vec<(f64, Doing, u64)> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let t = i as f64 * dt + jitter(i);
        if t > end {
            break;
        }
        let mut doing = Doing::Idle;
        let mut q = 0;
        for (n, (name, from, to)) in spans.iter().enumerate() {
            if t >= *from {
                q = n as u64 + 1;
            }
            if t >= *from && t < *to {
                doing = Doing::Cb(name);
            }
        }
        out.push((t, doing, q));
        i += 1;
    }
    out
}

#[test]
fn duration_within_one_interval() {
    let eps = run(
        &timeline(0.01, 1.0, &[("handler", 0.103, 0.306)], |_| 0.0),
        true,
    );
    assert_eq!(eps.len(), 1);
    let e = &eps[0];
    assert!((e.duration_ms - 203.0).abs() <= 10.0, "{}", e.duration_ms);
    assert!((e.start - 1000.103).abs() <= 0.01, "{}", e.start);
    assert_eq!(e.culprit.function, "handler");
    assert_eq!(e.coroutine.as_deref(), Some("handler"));
    assert_eq!(e.kind, "sleep");
    assert_eq!(e.source.as_deref(), Some("time.sleep"));
    assert!(e.complete);
    assert_eq!(e.samples, 20);
}

#[test]
fn jitter_keeps_the_error_within_an_interval() {
    // ±4 ms of deterministic jitter on a 10 ms grid.
    let jitter = |i: usize| ((i * 7919) % 9) as f64 * 0.001 - 0.004;
    let eps = run(&timeline(0.01, 1.0, &[("handler", 0.2, 0.5)], jitter), true);
    assert_eq!(eps.len(), 1);
    assert!(
        (eps[0].duration_ms - 300.0).abs() <= 10.0 + 4.0,
        "{}",
        eps[0].duration_ms
    );
}

#[test]
fn a_gap_widens_only_its_own_boundary() {
    // Samples between 0.3 and 0.45 are missing (the sampler stalled): the end lies in the gap.
    let tl: Vec<_> = timeline(0.01, 1.0, &[("handler", 0.1, 0.4)], |_| 0.0)
        .into_iter()
        .filter(|(t, _, _)| !(*t > 0.305 && *t < 0.445))
        .collect();
    let eps = run(&tl, true);
    assert_eq!(eps.len(), 1);
    // True 300 ms; the end is taken mid-gap (0.30 .. 0.45 → 0.375).
    assert!(
        (eps[0].duration_ms - 275.0).abs() <= 6.0,
        "{}",
        eps[0].duration_ms
    );
}

#[test]
fn below_threshold_is_not_an_episode() {
    let eps = run(
        &timeline(0.01, 1.0, &[("a", 0.1, 0.13), ("b", 0.3, 0.34)], |_| 0.0),
        true,
    );
    assert!(eps.is_empty(), "{eps:?}");
}

#[test]
fn back_to_back_different_callbacks_are_two_episodes() {
    let eps = run(
        &timeline(
            0.01,
            1.0,
            &[("first", 0.1, 0.3), ("second", 0.3, 0.5)],
            |_| 0.0,
        ),
        true,
    );
    let names: Vec<_> = eps.iter().map(|e| e.culprit.function.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    assert!((eps[0].duration_ms - 200.0).abs() <= 10.0);
    assert!((eps[1].duration_ms - 200.0).abs() <= 10.0);
}

#[test]
fn back_to_back_same_callback_split_by_ready_queue_pop() {
    let eps = run(
        &timeline(
            0.01,
            1.0,
            &[("handler", 0.1, 0.3), ("handler", 0.3, 0.5)],
            |_| 0.0,
        ),
        true,
    );
    assert_eq!(eps.len(), 2, "{eps:?}");
}

#[test]
fn short_steps_of_one_task_are_not_merged() {
    // A task stepped every 5 ms for 2 ms each, never seen idle at 10 ms sampling.
    let spans: Vec<(&'static str, f64, f64)> = (0..100)
        .map(|i| ("stepper", i as f64 * 0.005, i as f64 * 0.005 + 0.0049))
        .collect();
    let eps = run(&timeline(0.01, 0.5, &spans, |_| 0.0), true);
    assert!(eps.is_empty(), "{eps:?}");
}

#[test]
fn recording_stopping_mid_episode_marks_it_incomplete() {
    let tl = timeline(0.01, 0.6, &[("handler", 0.4, 5.0)], |_| 0.0);
    assert!(
        run(&tl, false).is_empty(),
        "nothing is final before the end"
    );
    let eps = run(&tl, true);
    assert_eq!(eps.len(), 1);
    assert!(!eps[0].complete);
    assert!(
        (eps[0].duration_ms - 200.0).abs() <= 10.0,
        "{}",
        eps[0].duration_ms
    );
}

#[test]
fn a_thread_that_disappears_ends_its_episode() {
    let mut d = Detector::new(DetectorConfig { threshold: 0.05 });
    let mut eps = Vec::new();
    for i in 0..30 {
        let t = i as f64 * 0.01;
        let mut threads = vec![thread(8, Doing::Idle, 0)];
        if t < 0.2 {
            threads.push(thread(
                7,
                if t >= 0.05 {
                    Doing::Cb("handler")
                } else {
                    Doing::Idle
                },
                1,
            ));
        }
        eps.extend(episodes(d.feed(&sample(t, threads))));
    }
    assert_eq!(
        eps.len(),
        1,
        "ended when the thread vanished, not at finish"
    );
    assert_eq!(eps[0].tid, 7);
    assert!(eps[0].complete);
    assert!(
        (eps[0].duration_ms - 150.0).abs() <= 10.0,
        "{}",
        eps[0].duration_ms
    );
    assert!(episodes(d.finish()).is_empty());
}

#[test]
fn ongoing_reports_a_hang_in_progress() {
    let mut d = Detector::new(DetectorConfig { threshold: 0.05 });
    for (t, doing, q) in timeline(0.01, 1.5, &[("handler", 0.2, 9.0)], |_| 0.0) {
        d.feed(&sample(t, vec![thread(7, doing, q)]));
    }
    let now = d.ongoing(1.5);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].3, "handler");
    assert!((now[0].4 - 1.3).abs() < 0.011);
}

/// The probe's view: ticks every `dt` with only OS state and the ready counter; a full stack
/// sample every `stack_every` ticks, and every 10 ticks once a run passes 50 ms.
fn probe_timeline(
    dt: f64,
    end: f64,
    spans: &[(&'static str, f64, f64)],
    stack_every: usize,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut run_start: Option<f64> = None;
    let mut since_stack = usize::MAX / 2;
    for (i, (t, doing, q)) in timeline(dt, end, spans, |_| 0.0).into_iter().enumerate() {
        run_start = match doing {
            Doing::Idle => None,
            Doing::Cb(_) | Doing::Dispatched => run_start.or(Some(t)),
        };
        let long = run_start.is_some_and(|s| t - s >= 0.05);
        let full = i % stack_every == 0 || (long && since_stack >= 10);
        let mut th = thread(7, doing, q);
        since_stack += 1;
        if full {
            since_stack = 0;
        } else {
            th.frames.clear();
        }
        let mut s = sample(t, vec![th]);
        s.probe = !full;
        out.push(s);
    }
    out
}

fn run_samples(samples: &[Sample]) -> Vec<Episode> {
    let mut d = Detector::new(DetectorConfig { threshold: 0.05 });
    let mut out: Vec<Episode> = samples.iter().flat_map(|s| episodes(d.feed(s))).collect();
    out.extend(episodes(d.finish()));
    out
}

#[test]
fn probe_ticks_time_episodes_to_one_tick() {
    let samples = probe_timeline(0.001, 1.0, &[("handler", 0.1034, 0.3061)], 100);
    let eps = run_samples(&samples);
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert!(
        (eps[0].duration_ms - 202.7).abs() <= 1.0,
        "{}",
        eps[0].duration_ms
    );
    assert_eq!(
        eps[0].culprit.function, "handler",
        "named by the burst stacks"
    );
    assert_eq!(eps[0].samples, 203);
}

#[test]
fn probe_ticks_split_back_to_back_callbacks() {
    let samples = probe_timeline(
        0.001,
        1.0,
        &[("first", 0.1, 0.2), ("second", 0.2, 0.3)],
        100,
    );
    let names: Vec<_> = run_samples(&samples)
        .iter()
        .map(|e| e.culprit.function.clone())
        .collect();
    assert_eq!(names, ["first", "second"]);
}

#[test]
fn short_runs_between_stacks_make_no_episode() {
    let samples = probe_timeline(0.001, 1.0, &[("a", 0.1, 0.13), ("b", 0.5, 0.54)], 100);
    assert!(run_samples(&samples).is_empty());
}

/// Regression (issue 10 §3e): an 89 ms episode was drawn 183 ms wide, its first stack weighing
/// the time since the last 10 Hz stack before it. Stacks are now weighed by the episode's own
/// time, and the widths under an episode add up to its duration.
#[test]
fn episode_stacks_weigh_the_episode_alone() {
    let mut d = Detector::new(DetectorConfig { threshold: 0.05 });
    let (from, to) = (0.151, 0.240);
    let doing = |t: f64| {
        if (from..to).contains(&t) {
            (Doing::Cb("handler"), 1)
        } else {
            (Doing::Idle, if t >= from { 1 } else { 0 })
        }
    };
    let full = [0.0, 0.1, 0.2, 0.21, 0.22, 0.23, 0.3];
    let mut events = Vec::new();
    for ms in 0..=300 {
        let t = ms as f64 / 1000.0;
        let (what, q) = doing(t);
        let mut s = sample(t, vec![thread(7, what, q)]);
        if !full.iter().any(|f| (f - t).abs() < 1e-9) {
            // A probe tick: OS state and ready queue only.
            s.probe = true;
            s.threads[0].frames.clear();
        }
        events.extend(d.feed(&s));
    }
    let (episode, stacks) = events
        .into_iter()
        .find_map(|e| match e {
            Event::Episode { episode, stacks } => Some((episode, stacks)),
            _ => None,
        })
        .expect("an episode");
    assert!(
        (episode.duration_ms - 89.0).abs() <= 2.0,
        "{}",
        episode.duration_ms
    );
    let width: u32 = stacks.iter().map(|(_, n)| n).sum();
    assert_eq!(width as f64, episode.duration_ms.round(), "{stacks:?}");
}

/// The one episode of a loop thread first seen running callback `boot` from `from` to `to`
/// (a sample every `step`), after an optional earlier sample `before` of the thread.
fn first_callback(before: Option<(f64, ThreadSample)>, from: f64, to: f64, step: f64) -> Episode {
    let mut d = Detector::new(DetectorConfig { threshold: 0.05 });
    let mut out = Vec::new();
    if let Some((t, th)) = before {
        out.extend(episodes(d.feed(&sample(t, vec![th]))));
    }
    let mut t = from;
    while t < to {
        out.extend(episodes(
            d.feed(&sample(t, vec![thread(7, Doing::Cb("boot"), 1)])),
        ));
        t += step;
    }
    out.extend(episodes(
        d.feed(&sample(t, vec![thread(7, Doing::Idle, 1)])),
    ));
    assert_eq!(out.len(), 1, "{out:?}");
    out.remove(0)
}

/// A launched program whose first callback blocks: the thread was sampled importing (no loop
/// frames) at 20 ms, then first seen running its loop at 41 ms, inside a callback that began at
/// about 35 ms. The start lies between those two samples: mid-gap, with half the gap as its
/// error bar, never at the first loop sample with a one-tick bar. Without the earlier sample
/// the start is not seen (`start_seen: false`).
#[test]
fn a_loop_found_mid_callback_is_bounded_by_the_thread_outside_any_loop() {
    let importing = || {
        let mut t = thread(7, Doing::Idle, 0);
        t.event_loop = None;
        t.frames = vec![
            f(
                "_compile_bytecode",
                "<frozen importlib._bootstrap_external>",
                729,
            ),
            f("<module>", "/app/main.py", 3),
        ];
        t
    };
    let first = |with_import: bool| {
        let before = with_import.then(|| (0.020, importing()));
        first_callback(before, 0.041, 0.185, 0.001)
    };
    let bounded = first(true);
    assert!(bounded.start_seen);
    let error = bounded.duration_error_ms.unwrap();
    assert!((error - 11.0).abs() < 0.6, "{error}");
    // From mid-gap (30.5 ms) to the end (~185 ms).
    assert!(
        (bounded.duration_ms - 154.5).abs() < 1.0,
        "{}",
        bounded.duration_ms
    );
    let unseen = first(false);
    assert!(!unseen.start_seen);
    assert!(
        (unseen.duration_ms - 144.0).abs() < 1.0,
        "{}",
        unseen.duration_ms
    );
}

/// Regression: a loop seen just after it dispatched a callback (`Handle._run` innermost, the
/// thread preempted before the callback's first frame) was taken for the loop's own machinery,
/// and the episode began at the next sample, one interval late. The dispatch opens the run;
/// the next stack names it.
#[test]
fn a_callback_seen_at_its_dispatch_begins_there() {
    let eps = run(
        &[
            (0.00, Doing::Idle, 0),
            (0.01, Doing::Idle, 0),
            (0.02, Doing::Dispatched, 1),
            (0.03, Doing::Cb("handler"), 1),
            (0.10, Doing::Cb("handler"), 1),
            (0.11, Doing::Idle, 1),
        ],
        true,
    );
    assert_eq!(eps.len(), 1, "{eps:?}");
    let e = &eps[0];
    assert_eq!(e.culprit.function, "handler");
    // Began between 0.01 and 0.02, ended between 0.10 and 0.11: 90 ms, ±10.
    assert!((e.start - 1000.015).abs() < 1e-9, "start {}", e.start);
    assert!((e.duration_ms - 90.0).abs() < 1e-6, "{}", e.duration_ms);
}

/// A named callback seen back in its dispatch with no dispatch in between (a C task step's
/// tail after its coroutine's frame returned) is still that callback: one episode, which ends
/// after that sample. A dispatch in between is a new callback.
#[test]
fn the_dispatch_frame_alone_continues_its_callback_until_a_pop() {
    let tail = [
        (0.00, Doing::Idle, 0),
        (0.01, Doing::Cb("handler"), 1),
        (0.08, Doing::Cb("handler"), 1),
        (0.09, Doing::Dispatched, 1),
        (0.10, Doing::Idle, 1),
    ];
    let eps = run(&tail, true);
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert!(
        (eps[0].duration_ms - 90.0).abs() < 1e-6,
        "{}",
        eps[0].duration_ms
    );

    let next = [
        (0.00, Doing::Idle, 0),
        (0.01, Doing::Cb("handler"), 1),
        (0.08, Doing::Cb("handler"), 1),
        (0.09, Doing::Dispatched, 2),
        (0.10, Doing::Cb("other"), 2),
        (0.20, Doing::Cb("other"), 2),
        (0.21, Doing::Idle, 2),
    ];
    let eps = run(&next, true);
    let names: Vec<&str> = eps.iter().map(|e| e.culprit.function.as_str()).collect();
    assert_eq!(names, ["handler", "other"], "{eps:?}");
    // `other` was dispatched between 0.08 and 0.09.
    assert!(
        (eps[1].start - 1000.085).abs() < 1e-9,
        "start {}",
        eps[1].start
    );
}

/// Regression (`hostile::targets::exec_into_python_attaches_again`, 3.12): after an exec into
/// Python, the thread was last sampled inside `asyncio.run` setting up (`Runner.run` calling
/// `signal.getsignal`, no loop yet), then first seen inside its loop's first callback. That
/// stack has a loop entry, so it did not count as "outside any loop", and the episode's start
/// was taken as unseen, at the first loop sample: 8 ms short with no error bar. A pure-Python
/// loop runs its callbacks under `_run_once`, so a stack without it bounds the start. (For a
/// loop seen without `_run_once`, uvloop's, it does not: its callbacks run under `Runner.run`.)
#[test]
fn a_thread_setting_up_asyncio_run_bounds_its_first_callback() {
    let setting_up = || {
        let mut t = thread(7, Doing::Idle, 0);
        t.event_loop = None;
        t.frames = vec![
            f("getsignal", "/py/lib/python3.12/signal.py", 63),
            f("Runner.run", "/py/lib/python3.12/asyncio/runners.py", 102),
            f("run", "/py/lib/python3.12/asyncio/runners.py", 194),
            f("<module>", "/app/main.py", 3),
        ];
        t
    };
    let e = &first_callback(Some((0.020, setting_up())), 0.030, 0.200, 0.01);
    assert!(e.start_seen, "{e:?}");
    // Began between 20 and 30 ms.
    assert!((e.start - 1000.025).abs() < 1e-9, "start {}", e.start);
}
