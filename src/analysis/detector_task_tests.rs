//! The detector names an episode's asyncio task from the samples' current-task reads: the task
//! most of the run's stack samples saw, whose coroutine then names the callback.

use super::detector::{Detector, DetectorConfig, Event};
use crate::episode::Episode;
use crate::sample::{Frame, OsState, Sample, ThreadSample};

fn f(function: &str, file: &str) -> Frame {
    Frame {
        function: function.into(),
        file: file.into(),
        line: 3,
    }
}

/// A loop thread inside `handler` (stepped by `task`, if any), or idle.
fn thread(busy: bool, task: Option<(&str, &str)>) -> ThreadSample {
    let base = f("BaseEventLoop._run_once", "/py/asyncio/base_events.py");
    let frames = if busy {
        vec![
            f("handler", "/app/h.py"),
            f("Handle._run", "/py/asyncio/events.py"),
            base,
        ]
    } else {
        vec![f("EpollSelector.select", "/py/selectors.py"), base]
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
            fd: None,
            state: 'S',
            syscall: Some(
                if busy {
                    "clock_nanosleep"
                } else {
                    "epoll_wait"
                }
                .into(),
            ),
            gil_wait: false,
            cpu_ticks: None,
        }),
        ready: None,
        task: task.map(|t| t.0.to_string()),
        coroutine: task.map(|t| t.1.to_string()),
        timers: Some(2),
        timer_overdue_us: None,
        request: None,
        frames,
    }
}

/// 10 ms samples: idle, then `busy` samples inside the callback, then idle.
fn episode(busy: &[Option<(&str, &str)>]) -> Episode {
    let mut d = Detector::new(DetectorConfig { threshold: 0.05 });
    let mut out = Vec::new();
    let mut t = 0.0;
    let mut feed = |th: ThreadSample, out: &mut Vec<Event>| {
        out.extend(d.feed(&Sample {
            probe: false,
            wall: 1000.0 + t,
            mono: t,
            pid: 1,
            threads: vec![th],
            events: Vec::new(),
        }));
        t += 0.01;
    };
    feed(thread(false, None), &mut out);
    for task in busy {
        feed(thread(true, *task), &mut out);
    }
    feed(thread(false, None), &mut out);
    let mut eps: Vec<Episode> = out
        .into_iter()
        .filter_map(|e| match e {
            Event::Episode { episode, .. } => Some(episode),
            _ => None,
        })
        .collect();
    assert_eq!(eps.len(), 1);
    eps.remove(0)
}

#[test]
fn episode_takes_the_task_and_its_coroutine() {
    let fetch = Some(("fetcher", "Client.fetch"));
    let e = episode(&[fetch; 8]);
    assert_eq!(e.task.as_deref(), Some("fetcher"));
    assert_eq!(e.coroutine.as_deref(), Some("Client.fetch"));
}

#[test]
fn the_most_common_task_wins() {
    // A read that raced the step's start saw the previous task.
    let mut seen = vec![Some(("Task-3", "worker")); 7];
    seen.insert(0, Some(("Task-2", "other")));
    let e = episode(&seen);
    assert_eq!(e.task.as_deref(), Some("Task-3"));
    assert_eq!(e.coroutine.as_deref(), Some("worker"));
}

#[test]
fn a_plain_callback_has_no_task() {
    // One stray read of a task during a plain callback does not name it.
    let mut seen = vec![None; 7];
    seen.push(Some(("Task-9", "late")));
    let e = episode(&seen);
    assert_eq!(e.task, None);
    assert_eq!(e.coroutine.as_deref(), Some("handler"));
}
