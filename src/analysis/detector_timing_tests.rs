//! Episode timing on synthetic timelines: boundaries across a stalled sampler, the error bar,
//! an episode whose start was not seen, and GIL starvation that the frames call idle but the
//! OS does not.

use super::detector::{Detector, DetectorConfig, Event};
use crate::episode::Episode;
use crate::sample::{Frame, OsState, ReadyQueue, Sample, ThreadSample};

fn f(function: &str, file: &str) -> Frame {
    Frame {
        function: function.into(),
        file: file.into(),
        line: 7,
    }
}

/// What the loop thread does at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Doing {
    /// Waiting in epoll.
    Idle,
    /// Inside `handler`, asleep in `time.sleep`.
    Sleeping,
    /// Out of epoll with the selector's frames, waiting for the GIL (`true`) or between two
    /// timed waits (`false`, briefly running).
    GilWait(bool),
}

fn selector_frames() -> Vec<Frame> {
    vec![
        f("EpollSelector.select", "/py/selectors.py"),
        f("BaseEventLoop._run_once", "/py/asyncio/base_events.py"),
        f("BaseEventLoop.run_forever", "/py/asyncio/base_events.py"),
        f("<module>", "/app/main.py"),
    ]
}

fn loop_thread(doing: Doing, full: bool, ready_state: u64) -> ThreadSample {
    let (frames, syscall, gil_wait) = match doing {
        Doing::Idle => (selector_frames(), "epoll_wait", false),
        Doing::Sleeping => {
            let mut frames = vec![
                f("handler", "/app/main.py"),
                f("Handle._run", "/py/asyncio/events.py"),
            ];
            frames.extend(selector_frames().into_iter().skip(1));
            (frames, "clock_nanosleep", false)
        }
        Doing::GilWait(true) => (selector_frames(), "futex", true),
        Doing::GilWait(false) => (selector_frames(), "running", false),
    };
    ThreadSample {
        gc: false,
        loop_ended: false,
        tid: 7,
        name: Some("MainThread".into()),
        event_loop: Some("_UnixSelectorEventLoop".into()),
        gil: false,
        active: true,
        os: Some(OsState {
            state: if syscall == "running" { 'R' } else { 'S' },
            syscall: Some(syscall.into()),
            gil_wait,
            cpu_ticks: None,
            fd: None,
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
        frames: if full { frames } else { Vec::new() },
    }
}

/// The thread that holds the GIL in one long C call, seen by full samples.
fn hog() -> ThreadSample {
    ThreadSample {
        gc: false,
        loop_ended: false,
        tid: 9,
        name: Some("asyncio_0".into()),
        event_loop: None,
        gil: true,
        active: true,
        os: Some(OsState {
            state: 'R',
            syscall: Some("running".into()),
            gil_wait: false,
            cpu_ticks: None,
            fd: None,
        }),
        ready: None,
        task: None,
        coroutine: None,
        timers: None,
        timer_overdue_us: None,
        request: None,
        frames: vec![
            f("decode", "/app/main.py"),
            f("run", "/py/concurrent/futures/thread.py"),
        ],
    }
}

/// Sample at each of `times` (seconds) a loop doing `doing(t)`, whose ready queue has popped
/// `pops(t)` handles by then. Like the sampler, a tick reads full stacks every 100 ms, and
/// every 10 ms once the loop has been out of epoll for 50 ms; `full_at` adds full samples.
fn samples(
    times: &[f64],
    doing: impl Fn(f64) -> Doing,
    pops: impl Fn(f64) -> u64,
    full_at: &[f64],
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut busy_since: Option<f64> = None;
    let mut last_full = f64::NEG_INFINITY;
    for &t in times {
        let d = doing(t);
        busy_since = if d == Doing::Idle {
            None
        } else {
            busy_since.or(Some(t))
        };
        let burst = busy_since.is_some_and(|s| t - s >= 0.05);
        let full = t - last_full >= 0.1
            || (burst && t - last_full >= 0.01)
            || full_at.iter().any(|x| (x - t).abs() < 1e-9);
        if full {
            last_full = t;
        }
        let mut threads = vec![loop_thread(d, full, pops(t))];
        if full && matches!(d, Doing::GilWait(_)) {
            threads.push(hog());
        }
        out.push(Sample {
            wall: 1000.0 + t,
            mono: t,
            pid: 7,
            probe: !full,
            threads,
            events: Vec::new(),
        });
    }
    out
}

fn ticks(from: f64, to: f64, dt: f64) -> Vec<f64> {
    let n = ((to - from) / dt).round() as usize;
    (0..=n).map(|i| from + i as f64 * dt).collect()
}

fn episodes(samples: &[Sample]) -> Vec<Episode> {
    let mut d = Detector::new(DetectorConfig { threshold: 0.05 });
    let mut events: Vec<Event> = samples.iter().flat_map(|s| d.feed(s)).collect();
    events.extend(d.finish());
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Episode { episode, .. } => Some(episode),
            Event::Stack { .. } => None,
        })
        .collect()
}

fn error_ms(e: &Episode) -> f64 {
    e.duration_error_ms
        .expect("the detector gives an error bar")
}

/// A `time.sleep` from `from` to `to`, one pop when it starts.
fn sleeping(from: f64, to: f64) -> (impl Fn(f64) -> Doing, impl Fn(f64) -> u64) {
    (
        move |t| {
            if t >= from && t < to {
                Doing::Sleeping
            } else {
                Doing::Idle
            }
        },
        move |t| u64::from(t >= from),
    )
}

#[test]
fn the_error_is_one_tick_interval_when_the_sampler_keeps_time() {
    let (doing, pops) = sleeping(0.1004, 0.2507);
    let eps = episodes(&samples(&ticks(0.0, 0.5, 0.001), doing, pops, &[]));
    assert_eq!(eps.len(), 1, "{eps:?}");
    let e = &eps[0];
    assert!((e.duration_ms - 150.3).abs() <= 1.0, "{}", e.duration_ms);
    assert!((error_ms(e) - 1.0).abs() < 1e-6, "{}", error_ms(e));
    assert!((e.duration_ms - 150.3).abs() <= error_ms(e));
    assert!(e.start_seen && e.complete);
}

#[test]
fn a_stalled_sampler_widens_the_error_instead_of_cutting_the_episode() {
    // 1 kHz ticks, but the sampler stalled for 45 ms across the start and 40 ms across the end
    // of a 150 ms block. Both boundaries lie somewhere in those gaps.
    let (doing, pops) = sleeping(0.1, 0.25);
    let times: Vec<f64> = ticks(0.0, 0.5, 0.001)
        .into_iter()
        .filter(|t| !(0.0805..0.1245).contains(t) && !(0.2405..0.2795).contains(t))
        .collect();
    let eps = episodes(&samples(&times, doing, pops, &[]));
    assert_eq!(eps.len(), 1, "{eps:?}");
    let e = &eps[0];
    // Capping each boundary at two ticks from the samples gave 119 ms here.
    assert!(
        (e.duration_ms - 150.0).abs() <= error_ms(e),
        "{} ± {}",
        e.duration_ms,
        error_ms(e)
    );
    assert!((e.duration_ms - 157.5).abs() < 1e-6, "{}", e.duration_ms);
    assert!((error_ms(e) - 42.5).abs() < 1e-6, "{}", error_ms(e));
    assert!((e.start - 1000.1025).abs() < 1e-9, "{}", e.start);
}

#[test]
fn attached_mid_block_the_start_is_not_seen() {
    // The first sample of the thread is already inside a 2 s sleep that began at -1.3 s.
    let (doing, pops) = sleeping(-1.3, 0.7);
    let eps = episodes(&samples(&ticks(0.0, 1.0, 0.001), doing, pops, &[]));
    assert_eq!(eps.len(), 1, "{eps:?}");
    let e = &eps[0];
    assert!(!e.start_seen, "{e:?}");
    assert!(e.complete);
    assert!((e.duration_ms - 699.5).abs() < 1e-6, "{}", e.duration_ms);
    assert!((e.start - 1000.0).abs() < 1e-9);
    let json = serde_json::to_value(e).unwrap();
    assert_eq!(json["start_seen"], serde_json::Value::Bool(false));
}

#[test]
fn a_seen_start_is_not_written_out() {
    let (doing, pops) = sleeping(0.1, 0.2);
    let e = &episodes(&samples(&ticks(0.0, 0.4, 0.001), doing, pops, &[]))[0];
    let json = serde_json::to_value(e).unwrap();
    assert!(json.get("start_seen").is_none(), "{json}");
    assert!(json["duration_error_ms"].as_f64().is_some(), "{json}");
    // Episodes written before these fields existed still read.
    let mut old = json.clone();
    old.as_object_mut().unwrap().remove("duration_error_ms");
    let back: Episode = serde_json::from_value(old).unwrap();
    assert!(back.start_seen && back.duration_error_ms.is_none());
}

/// The loop waits for the GIL from 0.2 to 0.45 s (CPython's 5 ms timed waits, briefly running
/// between two of them), then runs the waiting callbacks (two pops) and idles again.
fn gil_stall(t: f64) -> Doing {
    if (0.2..0.45).contains(&t) {
        // 0.2 ms of running after each 5 ms wait.
        let into = (t - 0.2) % 0.005;
        Doing::GilWait((0.0002..=0.0048).contains(&into))
    } else {
        Doing::Idle
    }
}

fn gil_pops(t: f64) -> u64 {
    if t >= 0.45 {
        2
    } else {
        0
    }
}

#[test]
fn a_gil_wait_seen_between_two_timed_waits_is_not_idle() {
    // Every full sample of the burst lands between two of CPython's GIL waits, when the loop's
    // frames show the selector and the thread is running: the frames alone call it idle.
    let times = ticks(0.0, 0.7, 0.001);
    let full_at: Vec<f64> = ticks(0.255, 0.445, 0.005);
    let eps = episodes(&samples(&times, gil_stall, gil_pops, &full_at));
    assert_eq!(eps.len(), 1, "one episode, not split: {eps:#?}");
    let e = &eps[0];
    assert_eq!(e.kind, "gil");
    assert!((e.start - 1000.1995).abs() <= 0.001, "{}", e.start);
    assert!((e.duration_ms - 250.0).abs() <= 1.0, "{}", e.duration_ms);
    assert!(error_ms(e) <= 1.0 + 1e-9);
    let holder = e.gil_holder.as_ref().expect("the holder is named");
    assert_eq!(holder.tid, 9);
    assert_eq!(e.culprit.function, "decode");
}

#[test]
fn a_gil_wait_no_stack_sample_named_is_named_by_the_os() {
    // Full stacks only before and after: the probes alone saw the GIL wait.
    let times = ticks(0.0, 0.7, 0.001);
    let s: Vec<Sample> = samples(&times, gil_stall, gil_pops, &[])
        .into_iter()
        .map(|mut s| {
            if (0.15..0.5).contains(&s.mono) && !s.probe {
                s.probe = true;
                s.threads.truncate(1);
                s.threads[0].frames.clear();
            }
            s
        })
        .collect();
    let eps = episodes(&s);
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert_eq!(eps[0].kind, "gil");
    assert!((eps[0].duration_ms - 250.0).abs() <= 1.0);
}

#[test]
fn a_loop_that_stops_ends_its_callback_there() {
    // The loop's last callback ends at 0.2 s, when `asyncio.run` returns; the thread then
    // tears down (running, not in epoll) and starts a new loop whose first callback, with the
    // same name, blocks from 0.25 s to 0.37 s.
    let doing = |t: f64| {
        if (0.1..0.2).contains(&t) || (0.25..0.37).contains(&t) {
            Doing::Sleeping
        } else if (0.2..0.25).contains(&t) {
            Doing::GilWait(false)
        } else {
            Doing::Idle
        }
    };
    let pops = |t: f64| u64::from(t >= 0.1);
    let mut s = samples(&ticks(0.0, 0.6, 0.001), doing, pops, &[]);
    for x in s.iter_mut() {
        // The running-loop slot changed between 0.199 and 0.200 (and again at 0.25).
        if (x.mono - 0.2).abs() < 1e-9 {
            // A probe tick: the next stack sample is 10 ms away.
            x.probe = true;
            x.threads.truncate(1);
            x.threads[0].loop_ended = true;
            x.threads[0].event_loop = None;
        }
        if (0.2..0.25).contains(&x.mono) {
            x.threads[0].event_loop = None;
            x.threads[0].frames.clear();
        }
    }
    // Between loops the probe reads no loop thread (nothing to read).
    s.retain(|x| !(x.probe && (0.2005..0.25).contains(&x.mono)));
    let eps = episodes(&s);
    let durations: Vec<f64> = eps.iter().map(|e| e.duration_ms).collect();
    assert_eq!(eps.len(), 2, "{durations:?}");
    // Ended at the tick that saw the loop stop, not at the next stack sample.
    assert!((eps[0].duration_ms - 100.0).abs() < 0.5, "{durations:?}");
    assert!(error_ms(&eps[0]) <= 1.0 + 1e-9);
    assert!(
        (eps[1].duration_ms - 120.0).abs() <= error_ms(&eps[1]),
        "{durations:?}"
    );
    assert!(eps[1].start_seen);
}
