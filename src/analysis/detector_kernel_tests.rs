//! The detector on kernel-clock timelines: runs open and close at the kernel's event times;
//! samples only name and split them.

use super::detector::{Detector, DetectorConfig, Event};
use crate::episode::Episode;
use crate::sample::{Frame, LoopEvent, LoopEventKind, OsState, ReadyQueue, Sample, ThreadSample};

const TID: u32 = 7;

fn f(function: &str, file: &str) -> Frame {
    Frame {
        function: function.into(),
        file: file.into(),
        line: 3,
    }
}

/// A loop thread's stack: in the selector (`None`) or inside callback `cb`.
fn thread(cb: Option<&str>, ready_state: u64, syscall: &str, gil_wait: bool) -> ThreadSample {
    let mut frames = match cb {
        None => vec![f("EpollSelector.select", "/py/selectors.py")],
        Some(name) => vec![
            f(name, "/app/handlers.py"),
            f("Handle._run", "/py/asyncio/events.py"),
        ],
    };
    frames.push(f("BaseEventLoop._run_once", "/py/asyncio/base_events.py"));
    frames.push(f("<module>", "/app/main.py"));
    ThreadSample {
        gc: false,
        loop_ended: false,
        tid: TID,
        name: Some("MainThread".into()),
        event_loop: Some("_UnixSelectorEventLoop".into()),
        gil: false,
        active: true,
        os: Some(OsState {
            fd: None,
            state: 'S',
            syscall: Some(syscall.into()),
            gil_wait,
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

fn stack(t: f64, th: ThreadSample) -> Sample {
    Sample {
        wall: 1000.0 + t,
        mono: t,
        pid: 1,
        probe: false,
        threads: vec![th],
        events: Vec::new(),
    }
}

fn probe(t: f64, ready_state: u64) -> Sample {
    let mut th = thread(None, ready_state, "clock_nanosleep", false);
    th.frames.clear();
    Sample {
        probe: true,
        ..stack(t, th)
    }
}

/// A batch of kernel events, delivered at the time of the last one.
fn events(list: &[(f64, LoopEventKind)]) -> Sample {
    let at = list.last().map_or(0.0, |e| e.0);
    Sample {
        wall: 1000.0 + at,
        mono: at,
        pid: 1,
        probe: true,
        threads: Vec::new(),
        events: list
            .iter()
            .map(|&(t, kind)| LoopEvent { tid: TID, t, kind })
            .collect(),
    }
}

fn run(samples: &[Sample]) -> (Vec<Episode>, Vec<Event>) {
    let mut d = Detector::new(DetectorConfig { threshold: 0.05 });
    let mut out = Vec::new();
    for s in samples {
        out.extend(d.feed(s));
    }
    out.extend(d.finish());
    let eps = out
        .iter()
        .filter_map(|e| match e {
            Event::Episode { episode, .. } => Some(episode.clone()),
            _ => None,
        })
        .collect();
    (eps, out)
}

use LoopEventKind::*;

#[test]
fn boundaries_are_the_kernels_event_times() {
    let (eps, _) = run(&[
        events(&[(0.0, Traced), (1.000_25, Busy)]),
        stack(1.03, thread(Some("handler"), 5, "clock_nanosleep", false)),
        stack(1.06, thread(Some("handler"), 5, "clock_nanosleep", false)),
        events(&[(1.082_375, Idle)]),
    ]);
    assert_eq!(eps.len(), 1, "{eps:#?}");
    let e = &eps[0];
    assert!((e.duration_ms - 82.125).abs() < 1e-6, "{}", e.duration_ms);
    assert!((e.start - 1001.000_25).abs() < 1e-9, "{}", e.start);
    assert_eq!(e.culprit.function, "handler");
    assert_eq!(e.samples, 2);
    assert!(e.complete);
}

#[test]
fn short_gaps_and_unnamed_runs_make_no_episode() {
    let (eps, _) = run(&[
        events(&[(0.0, Traced), (0.1, Busy), (0.13, Idle)]),
        // Long, but no stack ever named it.
        events(&[(0.2, Busy), (0.4, Idle)]),
    ]);
    assert!(eps.is_empty(), "{eps:#?}");
}

#[test]
fn stacks_while_the_kernel_says_idle_open_no_run() {
    let (eps, out) = run(&[
        events(&[(0.0, Traced), (0.001, Busy), (0.002, Idle)]),
        // A stack read that raced the next boundary shows a callback: it is not a run.
        stack(0.05, thread(Some("handler"), 5, "running", false)),
        stack(0.2, thread(Some("handler"), 5, "running", false)),
        events(&[(0.3, Busy), (0.31, Idle)]),
    ]);
    assert!(eps.is_empty(), "{eps:#?}");
    let stacks = out
        .iter()
        .filter(|e| matches!(e, Event::Stack { idle: false, .. }))
        .count();
    assert_eq!(stacks, 2, "the stacks still reach the flame graph");
}

#[test]
fn a_dispatch_inside_one_iteration_splits_the_run() {
    // Two 100 ms callbacks in one loop iteration: the ready queue's pop splits them.
    let (eps, _) = run(&[
        events(&[(0.0, Traced), (0.0, Busy)]),
        stack(0.05, thread(Some("first"), 10, "clock_nanosleep", false)),
        stack(0.08, thread(Some("first"), 10, "clock_nanosleep", false)),
        probe(0.11, 11),
        stack(0.14, thread(Some("second"), 11, "clock_nanosleep", false)),
        events(&[(0.2, Idle)]),
    ]);
    let got: Vec<(&str, f64)> = eps
        .iter()
        .map(|e| (e.culprit.function.as_str(), e.duration_ms))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "first");
    assert!((got[0].1 - 95.0).abs() < 1e-6, "{got:?}");
    assert_eq!(got[1].0, "second");
    assert!((got[1].1 - 105.0).abs() < 1e-6, "{got:?}");
}

#[test]
fn a_different_callback_on_the_stack_splits_the_run() {
    let (eps, _) = run(&[
        events(&[(0.0, Traced), (0.0, Busy)]),
        stack(0.06, thread(Some("first"), 10, "clock_nanosleep", false)),
        stack(0.12, thread(Some("second"), 10, "clock_nanosleep", false)),
        events(&[(0.2, Idle)]),
    ]);
    let names: Vec<&str> = eps.iter().map(|e| e.culprit.function.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    assert!((eps[0].duration_ms - 90.0).abs() < 1e-6);
    assert!((eps[1].duration_ms - 110.0).abs() < 1e-6);
}

#[test]
fn a_gil_wait_seen_by_the_kernel_is_a_gil_episode() {
    // The selector returned, then the thread waited for the GIL: its stack still shows the
    // selector and /proc caught it between two 5 ms waits (running), but the kernel saw the
    // futex waits.
    let (eps, _) = run(&[
        events(&[(0.0, Traced), (0.0, Busy), (0.000_1, GilWait)]),
        stack(0.03, thread(None, 5, "running", false)),
        events(&[(0.09, GilTaken), (0.1, Idle)]),
    ]);
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert_eq!(eps[0].kind, "gil");
    assert!((eps[0].duration_ms - 100.0).abs() < 1e-6);
}

#[test]
fn a_hang_in_progress_is_reported_from_the_kernels_start() {
    let mut d = Detector::new(DetectorConfig { threshold: 0.05 });
    d.feed(&events(&[(0.0, Traced), (1.0, Busy)]));
    d.feed(&stack(
        1.055,
        thread(Some("stuck"), 5, "clock_nanosleep", false),
    ));
    let ongoing = d.ongoing(1.06);
    assert_eq!(ongoing.len(), 1);
    assert!((ongoing[0].4 - 0.06).abs() < 1e-9, "{ongoing:?}");
    assert_eq!(ongoing[0].3, "stuck");
}

#[test]
fn lost_records_end_the_run_where_it_was_last_seen() {
    let (eps, _) = run(&[
        events(&[(0.0, Traced), (0.0, Busy)]),
        stack(0.07, thread(Some("handler"), 5, "clock_nanosleep", false)),
        events(&[(0.5, Lost)]),
        events(&[(0.6, Idle)]),
    ]);
    assert_eq!(eps.len(), 1);
    assert!(
        (eps[0].duration_ms - 70.0).abs() < 1e-6,
        "{}",
        eps[0].duration_ms
    );
}

#[test]
fn untraced_threads_go_back_to_probe_timing() {
    let (eps, _) = run(&[
        events(&[(0.0, Traced), (0.0, Busy), (0.001, Idle), (0.01, Untraced)]),
        // From here the probe's ticks decide, as without a kernel clock.
        probe(0.1, 5),
        stack(0.105, thread(Some("handler"), 5, "clock_nanosleep", false)),
        probe(0.2, 5),
        stack(0.205, thread(None, 6, "epoll_wait", false)),
    ]);
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert_eq!(eps[0].culprit.function, "handler");
}

#[test]
fn old_recordings_without_events_still_parse() {
    let line = r#"{"wall":1.0,"mono":0.5,"pid":3,"threads":[]}"#;
    let s: Sample = serde_json::from_str(line).unwrap();
    assert!(s.events.is_empty());
    let with = serde_json::to_string(&events(&[(0.25, Busy)])).unwrap();
    assert!(
        with.contains(r#""events":[{"tid":7,"t":0.25,"kind":"busy"}]"#),
        "{with}"
    );
}

#[test]
fn tracing_that_begins_inside_a_callback_keeps_its_start_from_the_samples() {
    let (eps, _) = run(&[
        stack(0.0, thread(None, 5, "epoll_wait", false)),
        events(&[(0.002, Traced)]),
        // The probe right after tracing began finds the thread in a callback.
        probe(0.004, 6),
        stack(0.05, thread(Some("handler"), 6, "clock_nanosleep", false)),
        // The kernel's first boundary: the callback ends.
        events(&[(0.21, Idle)]),
    ]);
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert_eq!(eps[0].culprit.function, "handler");
    assert!(
        (eps[0].duration_ms - 208.0).abs() < 1e-6,
        "{}",
        eps[0].duration_ms
    );
}

/// Tracing began during a callback, and the first stack after it caught the loop in its
/// dispatch with nothing above (`Handle._run` innermost): that opens the run, unnamed; the next
/// stack names it.
#[test]
fn tracing_that_begins_at_a_dispatch_keeps_its_start_from_the_samples() {
    let mut dispatched = thread(Some("handler"), 6, "running", false);
    dispatched.frames.remove(0);
    let (eps, _) = run(&[
        stack(0.0, thread(None, 5, "epoll_wait", false)),
        events(&[(0.002, Traced)]),
        stack(0.004, dispatched),
        stack(0.05, thread(Some("handler"), 6, "clock_nanosleep", false)),
        events(&[(0.21, Idle)]),
    ]);
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert_eq!(eps[0].culprit.function, "handler");
    // Began between 0.0 and 0.004.
    assert!(
        (eps[0].duration_ms - 208.0).abs() < 1e-6,
        "{}",
        eps[0].duration_ms
    );
}

/// Issue 15 §3: `asyncio.run()` again on the same thread. The first tick after the change says
/// the old loop ended while the new loop is well into a block (ticks are sparse on the kernel
/// clock): that block is the new loop's, whole, from the kernel's boundaries.
#[test]
fn a_loop_started_again_keeps_the_new_loops_block_whole() {
    let mut restarted = thread(Some("handler"), 3, "clock_nanosleep", false);
    restarted.loop_ended = true;
    let (eps, _) = run(&[
        events(&[(0.0, Traced), (0.1, Busy)]),
        stack(0.15, thread(Some("handler"), 50, "clock_nanosleep", false)),
        // The old loop closes; the new one enters epoll, then leaves it into a 120 ms block.
        events(&[(0.22, Idle), (0.23, Busy)]),
        stack(0.26, restarted),
        stack(0.30, thread(Some("handler"), 3, "clock_nanosleep", false)),
        events(&[(0.35, Idle)]),
    ]);
    let durations: Vec<f64> = eps.iter().map(|e| e.duration_ms).collect();
    assert_eq!(eps.len(), 2, "{durations:?}");
    assert!((durations[0] - 120.0).abs() < 1e-6, "{durations:?}");
    assert!((durations[1] - 120.0).abs() < 1e-6, "{durations:?}");
    assert!(eps.iter().all(|e| e.duration_error_ms == Some(0.0)));
}

/// A thread whose loop ended and that runs none now (sync code after `asyncio.run`): no epoll
/// entry will end its run, so the tick that saw the loop gone does.
#[test]
fn a_loop_that_ended_for_good_ends_its_run() {
    let mut gone = thread(None, 0, "clock_nanosleep", false);
    gone.loop_ended = true;
    gone.event_loop = None;
    gone.frames.clear();
    let (eps, _) = run(&[
        events(&[(0.0, Traced), (0.1, Busy)]),
        stack(0.15, thread(Some("handler"), 5, "clock_nanosleep", false)),
        stack(0.2, thread(Some("handler"), 5, "clock_nanosleep", false)),
        stack(0.3, gone),
        stack(5.0, thread(None, 0, "clock_nanosleep", false)),
    ]);
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert!(eps[0].duration_ms < 200.0, "{}", eps[0].duration_ms);
}

#[test]
fn a_run_seen_before_tracing_ends_before_a_trace_that_starts_in_epoll() {
    // Samples saw a short callback before the thread was traced; tracing began with the thread
    // back in epoll (`Idle` at the `Traced` time), and the next callback came 120 ms later.
    // The early run must not last until that callback.
    let (eps, _) = run(&[
        stack(0.900, thread(None, 1, "epoll_wait", false)),
        stack(1.000, thread(Some("tick"), 2, "clock_nanosleep", false)),
        events(&[(1.020, Traced), (1.020, Idle)]),
        events(&[(1.140, Busy)]),
        stack(1.150, thread(Some("handler"), 3, "clock_nanosleep", false)),
        events(&[(1.160, Idle)]),
    ]);
    assert!(eps.is_empty(), "{eps:#?}");
}

#[test]
fn a_callback_under_way_as_tracing_begins_ends_at_its_epoll_entry() {
    // Tracing began inside the callback (no `Idle` at the `Traced` time): the kernel's first
    // epoll entry is its exact end.
    let (eps, _) = run(&[
        stack(1.000, thread(Some("handler"), 2, "clock_nanosleep", false)),
        events(&[(1.020, Traced)]),
        stack(1.040, thread(Some("handler"), 2, "clock_nanosleep", false)),
        events(&[(1.120, Idle)]),
    ]);
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert!(eps[0].duration_ms >= 100.0, "{}", eps[0].duration_ms);
}

/// The `Idle` loopspy infers as tracing begins (the thread was in epoll then) carries the trace
/// start's time. Should it reach the detector after the kernel's first exit from that epoll
/// wait, it is stale: it must not end the callback the kernel just opened (which would lose
/// the whole block, as a run ending before it began).
#[test]
fn a_stale_idle_from_the_trace_start_does_not_end_a_later_run() {
    let (eps, _) = run(&[
        events(&[(0.99, Traced), (1.0, Busy)]),
        events(&[(0.99, Idle)]),
        stack(1.05, thread(Some("handler"), 5, "clock_nanosleep", false)),
        stack(1.2, thread(Some("handler"), 5, "clock_nanosleep", false)),
        events(&[(1.3, Idle)]),
    ]);
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert!(
        (eps[0].duration_ms - 300.0).abs() < 1e-6,
        "{}",
        eps[0].duration_ms
    );
    assert_eq!(eps[0].culprit.function, "handler");
}

/// A loop thread waiting for the GIL in its selector, with the ready queue's counter at
/// `ready_state` and `ready_len` handles waiting.
fn starved(ready_state: u64, ready_len: u64) -> ThreadSample {
    let mut th = thread(None, ready_state, "futex", true);
    th.ready = Some(ReadyQueue {
        len: ready_len,
        state: ready_state,
    });
    th
}

fn exact(e: &Episode) -> bool {
    e.duration_error_ms.unwrap_or(0.0) == 0.0
}

/// A 3.15 recording (gil_base64.py, 150 MB): the worker's decode held the GIL for 285 ms; the
/// loop got it back for a moment, ran the heartbeat's timer handle (which queued the task's
/// step), polled, and waited 15 ms more while the worker freed the decoded bytes. The task
/// waited 302 ms: one starvation, not a 287 ms one cut at the poll.
#[test]
fn a_gil_starvation_goes_on_across_a_poll() {
    let mut samples = vec![events(&[(0.0, Traced), (0.0021, Busy), (0.0022, GilWait)])];
    for i in 1..28 {
        samples.push(stack(0.0021 + 0.01 * i as f64, starved(350, 0)));
    }
    samples.push(events(&[
        (0.2859, GilTaken),
        (0.2870, Poll),
        (0.2870, Busy),
        (0.2872, GilWait),
    ]));
    // The timer handle was popped and the step queued: still the same starvation.
    samples.push(probe(0.2910, 353));
    samples.push(stack(0.2922, starved(353, 1)));
    samples.push(events(&[(0.3024, GilTaken), (0.3027, Idle)]));
    let (eps, _) = run(&samples);
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert_eq!(eps[0].kind, "gil");
    assert!(
        (eps[0].duration_ms - 300.6).abs() < 1e-6,
        "{}",
        eps[0].duration_ms
    );
    assert!(exact(&eps[0]), "{eps:#?}");
}

/// A callback that a sample finds running after the starved loop polled began at that poll:
/// both boundaries are exact.
#[test]
fn a_callback_after_a_starved_poll_begins_at_the_poll() {
    let mut samples = vec![events(&[(0.0, Traced), (0.0, Busy), (0.0001, GilWait)])];
    for i in 1..10 {
        samples.push(stack(0.01 * i as f64, starved(5, 0)));
    }
    samples.push(events(&[(0.0995, GilTaken), (0.1, Poll), (0.1, Busy)]));
    for i in 0..9 {
        samples.push(stack(
            0.105 + 0.01 * i as f64,
            thread(Some("crunch"), 7, "running", false),
        ));
    }
    samples.push(events(&[(0.2, Idle)]));
    let (eps, _) = run(&samples);
    assert_eq!(eps.len(), 2, "{eps:#?}");
    assert_eq!(eps[0].kind, "gil");
    assert_eq!(eps[1].culprit.function, "crunch");
    assert!((eps[0].duration_ms - 100.0).abs() < 1e-6, "{eps:#?}");
    assert!((eps[1].duration_ms - 100.0).abs() < 1e-6, "{eps:#?}");
    assert!((eps[1].start - 1000.1).abs() < 1e-9, "{}", eps[1].start);
    assert!(eps.iter().all(exact), "{eps:#?}");
}

/// A 3.10 recording (gil_base64.py): the loop got the GIL back at 0.1588, and the next tick,
/// 9 ms late, found the heartbeat's step running. The starvation ended when the loop took the
/// GIL, exactly, not in the middle of the late tick's gap.
#[test]
fn a_starvation_ends_when_the_loop_takes_the_gil() {
    let mut samples = vec![events(&[(0.0, Traced), (0.0, Busy), (0.0001, GilWait)])];
    for i in 1..15 {
        samples.push(stack(0.01 * i as f64, starved(5, 0)));
    }
    samples.push(events(&[(0.1588, GilTaken)]));
    samples.push(stack(0.1590, thread(Some("beat"), 5, "running", false)));
    samples.push(events(&[(0.1591, Poll), (0.1592, Idle)]));
    let (eps, _) = run(&samples);
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert_eq!(eps[0].kind, "gil");
    assert!((eps[0].duration_ms - 158.8).abs() < 1e-6, "{eps:#?}");
    assert!(exact(&eps[0]), "{eps:#?}");
}

/// A 3.12 recording (gil_base64.py): the heartbeat's timer was due at 55.5 ms, but the loop,
/// having worked out its 3 ms timeout at 52.8 ms, lost its CPU and entered the wait only at
/// 57.2 ms; it returned at 60.2 ms straight into a GIL wait. Late for its timer through the
/// whole wait, the loop was starved from the wait's entry. A timer due after the entry (a
/// fresh timeout) leaves the start at the return.
#[test]
fn a_wait_entered_after_the_timer_was_due_is_part_of_the_starvation() {
    let starts = |due: f64| {
        let mut samples = vec![events(&[
            (0.0, Traced),
            (0.0528, Busy),
            (0.0572, Idle),
            (0.0602, Busy),
            (0.0603, GilWait),
        ])];
        for i in 0..18 {
            let t = 0.065 + 0.01 * i as f64;
            let mut th = starved(5, 0);
            th.timer_overdue_us = Some(((t - due) * 1e6).round() as u64);
            samples.push(stack(t, th));
        }
        samples.push(events(&[(0.2408, GilTaken), (0.2410, Idle)]));
        let (eps, _) = run(&samples);
        assert_eq!(eps.len(), 1, "{eps:#?}");
        assert_eq!(eps[0].kind, "gil");
        assert!(exact(&eps[0]), "{eps:#?}");
        eps[0].start - 1000.0
    };
    assert!((starts(0.0555) - 0.0572).abs() < 1e-9);
    assert!((starts(0.0598) - 0.0602).abs() < 1e-9);
}

/// A poll ends an ordinary callback exactly, as an epoll wait does, and the next callback
/// begins at the poll's entry: a loop thread that waited 7 ms for a CPU inside the poll was
/// not idle then.
#[test]
fn a_poll_ends_a_callback_and_the_next_begins_at_its_entry() {
    let (eps, _) = run(&[
        events(&[(0.0, Traced), (0.0, Busy)]),
        stack(0.03, thread(Some("first"), 5, "running", false)),
        stack(0.07, thread(Some("first"), 5, "running", false)),
        events(&[(0.08, Poll), (0.08, Busy)]),
        stack(0.1, thread(Some("second"), 6, "running", false)),
        stack(0.15, thread(Some("second"), 6, "running", false)),
        events(&[(0.2, Idle)]),
    ]);
    let got: Vec<(&str, f64)> = eps
        .iter()
        .map(|e| (e.culprit.function.as_str(), e.duration_ms))
        .collect();
    assert_eq!(got.len(), 2, "{eps:#?}");
    assert_eq!(got[0].0, "first");
    assert!((got[0].1 - 80.0).abs() < 1e-6, "{got:?}");
    assert_eq!(got[1].0, "second");
    assert!((got[1].1 - 120.0).abs() < 1e-6, "{got:?}");
    assert!(eps.iter().all(exact), "{eps:#?}");
}
