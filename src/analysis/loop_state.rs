//! What an event-loop thread is doing in one sample: idle in the selector, inside one callback
//! (and which), or in the loop's own machinery. Pure: it looks only at the frames, the OS state
//! and the loop type recorded in the sample.
//!
//! When the frames and the OS disagree, the OS wins: a loop is idle only while its thread waits
//! in epoll. Frames that still show the selector once epoll has returned belong to a loop that
//! wants to run, typically waiting for the GIL (CPython waits for it in 5 ms slices, and is
//! briefly "running" between two of them; cpython-notes §8).

use crate::sample::{Frame, ThreadSample};

/// The state of one loop thread at one sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopState {
    /// Waiting for I/O or timers: the loop is healthy.
    Idle,
    /// Running one callback; `frames` is the callback's part of the stack (innermost first).
    Callback { key: CallbackKey, depth: usize },
    /// Between callbacks: timer processing, the selector returning, bookkeeping.
    Machinery,
    /// Inside a callback with no Python frame above the loop's dispatch (`Handle._run` is the
    /// innermost frame): a C callback, a C task step before or after its coroutine's frame,
    /// or a thread preempted right after the dispatch. A callback runs; which one the stack
    /// does not say.
    Dispatched,
    /// Ready to run but waiting for the GIL that another thread holds, while its stack still
    /// shows the loop waiting in its selector (the selector call has returned in C).
    GilWait,
    /// Out of epoll, but its frames still show the selector (or, on uvloop, only the loop's
    /// caller): the loop wants to run and has not started a callback yet. Between two of
    /// CPython's timed GIL waits, or just before a dispatch. Not idle, not named.
    Waking,
    /// Not an event-loop thread.
    NotLoop,
}

/// The pseudo-callback of a loop starved of the GIL outside any callback.
pub const GIL_WAIT_FUNCTION: &str = "<waiting for the GIL>";

/// Identity of a callback as far as the stack can tell: its outermost frame's function and file.
/// A task step is named by its coroutine, a `call_soon`/`call_later` callback by its function.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallbackKey {
    pub function: String,
    pub file: String,
}

/// Learns, per loop thread, where the loop's own frames end (the "anchor") for loops that run no
/// Python machinery of their own (uvloop): the stack seen while idle in epoll is the anchor, and a
/// callback's frames are what sits on top of it.
#[derive(Debug, Default, Clone)]
pub struct Anchor {
    frames: Option<Vec<(String, String)>>,
    /// A deeper stack that extends the anchor, seen once while the OS said epoll: learned only
    /// when the next idle sample shows it again. A stack read just before the loop returned to
    /// epoll (the frames are read before the OS state) still shows the callback, and would
    /// otherwise make every later callback with the same frames look like the loop itself.
    candidate: Option<Vec<(String, String)>>,
}

fn file_is(frame: &Frame, suffix: &str) -> bool {
    frame.file.ends_with(suffix)
}

fn is_run_once(f: &Frame) -> bool {
    file_is(f, "asyncio/base_events.py")
        && (f.function == "_run_once" || f.function == "BaseEventLoop._run_once")
}

fn is_handle_run(f: &Frame) -> bool {
    file_is(f, "asyncio/events.py") && (f.function == "_run" || f.function == "Handle._run")
}

/// Frames of the pure-Python Task implementation that sit between `Handle._run` and the coroutine.
fn is_task_step(f: &Frame) -> bool {
    file_is(f, "asyncio/tasks.py")
        && (f.function.ends_with("__step")
            || f.function.ends_with("__step_run_and_handle_result")
            || f.function.ends_with("__wakeup"))
}

/// Frames that call into a loop implemented in C (uvloop) and so mark where its callbacks start,
/// used before an idle sample has shown the real anchor.
fn is_loop_entry(f: &Frame) -> bool {
    (file_is(f, "asyncio/runners.py") && (f.function == "run" || f.function == "Runner.run"))
        || (file_is(f, "uvloop/__init__.py") && f.function == "run")
        || (file_is(f, "asyncio/base_events.py")
            && (f.function.ends_with("run_until_complete") || f.function.ends_with("run_forever")))
}

/// Whether a stack shows its thread outside any event loop: it has frames, and none of them is
/// a loop's entry (`asyncio.run`, `run_until_complete`, `run_forever`, uvloop's `run`) or its
/// dispatch (`_run_once`, `Handle._run`). (uvloop driven by a bare `run_until_complete` leaves
/// no Python frame of its own: its callbacks are not told apart here, and its runs are
/// bounded by the first sample that sees its loop, as before.)
pub fn outside_any_loop(frames: &[Frame]) -> bool {
    !frames.is_empty()
        && !frames
            .iter()
            .any(|f| is_loop_entry(f) || is_run_once(f) || is_handle_run(f))
}

/// Whether a stack shows its thread outside the dispatch of any pure-Python loop: it has
/// frames, and neither `_run_once` nor `Handle._run` is among them. Such a thread may be
/// inside `asyncio.run` before its loop starts (setting signal handlers), but runs no callback
/// of a selector loop, whose callbacks all run under `_run_once`.
pub fn outside_python_dispatch(frames: &[Frame]) -> bool {
    !frames.is_empty() && !frames.iter().any(|f| is_run_once(f) || is_handle_run(f))
}

/// Whether a stack shows a pure-Python loop's iteration (`_run_once`) on it.
pub fn in_python_loop(frames: &[Frame]) -> bool {
    frames.iter().any(is_run_once)
}

/// The selector's wait: the top of an idle selector loop's stack.
fn is_selector_wait(f: &Frame) -> bool {
    file_is(f, "selectors.py") || (file_is(f, "asyncio/base_events.py") && is_run_once(f))
}

fn is_epoll(thread: &ThreadSample) -> bool {
    matches!(
        thread.os.as_ref().and_then(|o| o.syscall.as_deref()),
        Some("epoll_wait" | "epoll_pwait" | "epoll_pwait2")
    )
}

fn gil_wait(thread: &ThreadSample) -> bool {
    thread.os.as_ref().is_some_and(|o| o.gil_wait)
}

/// The OS says the thread is out of epoll (an unknown OS state says nothing).
fn out_of_epoll(thread: &ThreadSample) -> bool {
    thread
        .os
        .as_ref()
        .is_some_and(|o| o.syscall.is_some() && !is_epoll(thread))
}

fn key_of(frames: &[Frame]) -> Option<LoopState> {
    // frames: the part above the loop's dispatch frame, innermost first.
    let mut end = frames.len();
    while end > 0 && is_task_step(&frames[end - 1]) {
        end -= 1;
    }
    let outer = frames[..end].last()?;
    Some(LoopState::Callback {
        key: CallbackKey {
            function: outer.function.clone(),
            file: outer.file.clone(),
        },
        depth: end,
    })
}

impl Anchor {
    fn matches(&self, frames: &[Frame]) -> Option<usize> {
        let anchor = self.frames.as_ref()?;
        if anchor.len() > frames.len() {
            return None;
        }
        let start = frames.len() - anchor.len();
        let same = frames[start..]
            .iter()
            .zip(anchor)
            .all(|(f, (func, file))| &f.function == func && &f.file == file);
        same.then_some(start)
    }

    fn learn(&mut self, frames: &[Frame]) {
        let new: Vec<(String, String)> = frames
            .iter()
            .map(|f| (f.function.clone(), f.file.clone()))
            .collect();
        let extends = self
            .frames
            .as_ref()
            .is_some_and(|old| new.len() > old.len() && new.ends_with(old));
        if extends && self.candidate.as_ref() != Some(&new) {
            self.candidate = Some(new);
            return;
        }
        self.candidate = None;
        self.frames = Some(new);
    }
}

/// Classify one thread sample. `anchor` is this thread's learned anchor (updated on idle samples
/// of loops without Python machinery).
pub fn classify(thread: &ThreadSample, anchor: &mut Anchor) -> LoopState {
    let frames = &thread.frames;
    if let Some(r) = frames.iter().position(is_run_once) {
        // A pure-Python loop: the dispatch frame `Handle._run` closest to `_run_once` starts the
        // callback; without one the loop is selecting or doing its own bookkeeping.
        return match frames[..r].iter().rposition(is_handle_run) {
            Some(h) => key_of(&frames[..h]).unwrap_or(LoopState::Dispatched),
            None if gil_wait(thread) => LoopState::GilWait,
            None if frames[..r].iter().all(is_selector_wait) && out_of_epoll(thread) => {
                LoopState::Waking
            }
            None if frames[..r].iter().all(is_selector_wait) => LoopState::Idle,
            None => LoopState::Machinery,
        };
    }
    if thread.event_loop.is_none() {
        return LoopState::NotLoop;
    }
    // A loop without Python machinery (uvloop): idle is the epoll wait, and callbacks sit on the
    // frames that started the loop.
    if gil_wait(thread) && anchor.matches(frames).is_some_and(|start| start == 0) {
        return LoopState::GilWait;
    }
    if is_epoll(thread) {
        anchor.learn(frames);
        return LoopState::Idle;
    }
    if let Some(start) = anchor.matches(frames) {
        // Nothing above the loop's caller while out of epoll: uvloop's own C code runs, or the
        // thread waits for the GIL between two timed waits.
        let nothing_above = if out_of_epoll(thread) {
            LoopState::Waking
        } else {
            LoopState::Machinery
        };
        return key_of(&frames[..start]).unwrap_or(nothing_above);
    }
    match frames.iter().position(is_loop_entry) {
        Some(e) => key_of(&frames[..e]).unwrap_or(LoopState::Machinery),
        // No idle sample yet and no runner frame (`loop.run_until_complete(...)` on uvloop
        // leaves none): the task being stepped names its own frame.
        None => match task_root(thread) {
            Some(end) => key_of(&frames[..end]).unwrap_or(LoopState::Machinery),
            None => LoopState::Machinery,
        },
    }
}

/// Where the current task's step starts: one past the outermost frame of the task's coroutine
/// (its qualified name; frames carry qualified names from 3.11, plain names before).
fn task_root(thread: &ThreadSample) -> Option<usize> {
    let coro = thread.coroutine.as_deref()?;
    let is_coro = |f: &Frame| {
        f.function == coro
            || coro
                .strip_suffix(f.function.as_str())
                .is_some_and(|head| head.ends_with('.'))
    };
    thread.frames.iter().rposition(is_coro).map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::OsState;

    fn f(function: &str, file: &str) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line: 1,
        }
    }

    fn thread(frames: Vec<Frame>, event_loop: Option<&str>, syscall: Option<&str>) -> ThreadSample {
        ThreadSample {
            gc: false,
            loop_ended: false,
            tid: 1,
            name: None,
            event_loop: event_loop.map(String::from),
            gil: false,
            active: true,
            ready: None,
            task: None,
            coroutine: None,
            timers: None,
            timer_overdue_us: None,
            request: None,
            os: syscall.map(|s| OsState {
                fd: None,
                state: 'S',
                syscall: Some(s.into()),
                gil_wait: false,
                cpu_ticks: None,
            }),
            frames,
        }
    }

    fn base() -> Vec<Frame> {
        vec![
            f("BaseEventLoop._run_once", "/py/asyncio/base_events.py"),
            f("BaseEventLoop.run_forever", "/py/asyncio/base_events.py"),
            f("Runner.run", "/py/asyncio/runners.py"),
            f("<module>", "/app/main.py"),
        ]
    }

    #[test]
    fn selector_idle() {
        let mut frames = vec![f("EpollSelector.select", "/py/selectors.py")];
        frames.extend(base());
        let t = thread(frames, Some("_UnixSelectorEventLoop"), Some("epoll_wait"));
        assert_eq!(classify(&t, &mut Anchor::default()), LoopState::Idle);
    }

    #[test]
    fn task_step_is_named_by_coroutine() {
        let mut frames = vec![
            f("sleep", "<builtin>"),
            f("handler", "/app/main.py"),
            f("endpoint", "/app/main.py"),
            f("Handle._run", "/py/asyncio/events.py"),
        ];
        frames.extend(base());
        let t = thread(frames, None, None);
        match classify(&t, &mut Anchor::default()) {
            LoopState::Callback { key, depth } => {
                assert_eq!(key.function, "endpoint");
                assert_eq!(depth, 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pure_python_task_step_frames_are_skipped() {
        let mut frames = vec![
            f("handler", "/app/main.py"),
            f("Task.__step_run_and_handle_result", "/py/asyncio/tasks.py"),
            f("Task.__step", "/py/asyncio/tasks.py"),
            f("Handle._run", "/py/asyncio/events.py"),
        ];
        frames.extend(base());
        let t = thread(frames, None, None);
        assert!(matches!(classify(&t, &mut Anchor::default()),
            LoopState::Callback { key, .. } if key.function == "handler"));
    }

    #[test]
    fn the_dispatch_frame_alone_is_a_callback_not_yet_named() {
        let mut frames = vec![f("Handle._run", "/py/asyncio/events.py")];
        frames.extend(base());
        let t = thread(frames, Some("_UnixSelectorEventLoop"), Some("running"));
        assert_eq!(classify(&t, &mut Anchor::default()), LoopState::Dispatched);
    }

    #[test]
    fn timer_processing_is_machinery() {
        let mut frames = vec![f("heappop", "/py/heapq.py")];
        frames.extend(base());
        let t = thread(frames, None, None);
        assert_eq!(classify(&t, &mut Anchor::default()), LoopState::Machinery);
    }

    #[test]
    fn uvloop_learns_anchor_from_idle() {
        let anchor_frames = vec![f("main", "/app/main.py"), f("<module>", "/app/main.py")];
        let mut anchor = Anchor::default();
        let idle = thread(anchor_frames.clone(), Some("Loop"), Some("epoll_pwait"));
        assert_eq!(classify(&idle, &mut anchor), LoopState::Idle);
        let mut busy = vec![f("work", "/app/jobs.py"), f("job", "/app/jobs.py")];
        busy.extend(anchor_frames);
        let t = thread(busy, Some("Loop"), Some("running"));
        assert!(matches!(classify(&t, &mut anchor),
            LoopState::Callback { key, .. } if key.function == "job"));
    }

    #[test]
    fn uvloop_before_anchor_uses_runner_frames() {
        let frames = vec![
            f("blocker", "/app/main.py"),
            f("Runner.run", "/py/asyncio/runners.py"),
            f("run", "/py/asyncio/runners.py"),
            f("<module>", "/app/main.py"),
        ];
        let t = thread(frames, Some("Loop"), Some("clock_nanosleep"));
        assert!(matches!(classify(&t, &mut Anchor::default()),
            LoopState::Callback { key, .. } if key.function == "blocker"));
    }

    #[test]
    fn uvloop_before_anchor_uses_the_current_task() {
        // `loop.run_until_complete(main())` on a uvloop Loop leaves no runner frame, and no
        // idle sample has shown the loop's own frames yet: the task's coroutine marks its step.
        let frames = vec![
            f("sleepy_handler", "/app/main.py"),
            f("single_main", "/app/main.py"),
            f("main", "/app/main.py"),
            f("<module>", "/app/main.py"),
        ];
        let mut t = thread(frames, Some("Loop"), Some("clock_nanosleep"));
        assert_eq!(
            classify(&t, &mut Anchor::default()),
            LoopState::Machinery,
            "nothing to go by"
        );
        for coro in ["single_main", "outer.<locals>.single_main"] {
            t.coroutine = Some(coro.into());
            assert_eq!(
                classify(&t, &mut Anchor::default()),
                LoopState::Callback {
                    key: CallbackKey {
                        function: "single_main".into(),
                        file: "/app/main.py".into()
                    },
                    depth: 2
                },
                "{coro}"
            );
        }
    }

    #[test]
    fn gil_wait_in_the_selector_is_not_idle() {
        let mut frames = vec![f("EpollSelector.select", "/py/selectors.py")];
        frames.extend(base());
        let mut t = thread(frames, Some("_UnixSelectorEventLoop"), Some("futex"));
        t.os.as_mut().unwrap().gil_wait = true;
        assert_eq!(classify(&t, &mut Anchor::default()), LoopState::GilWait);
    }

    #[test]
    fn gil_wait_between_two_timed_waits_is_not_idle() {
        // Between two of CPython's 5 ms GIL waits the thread runs for a moment: the frames
        // still show the selector, the OS says it is out of epoll.
        let mut frames = vec![f("EpollSelector.select", "/py/selectors.py")];
        frames.extend(base());
        let t = thread(
            frames.clone(),
            Some("_UnixSelectorEventLoop"),
            Some("running"),
        );
        assert_eq!(classify(&t, &mut Anchor::default()), LoopState::Waking);
        // Without an OS view the frames are all there is.
        let t = thread(frames, Some("_UnixSelectorEventLoop"), None);
        assert_eq!(classify(&t, &mut Anchor::default()), LoopState::Idle);
    }

    #[test]
    fn uvloop_out_of_epoll_at_the_anchor_is_waking() {
        let anchor_frames = vec![f("main", "/app/main.py"), f("<module>", "/app/main.py")];
        let mut anchor = Anchor::default();
        let idle = thread(anchor_frames.clone(), Some("Loop"), Some("epoll_pwait"));
        assert_eq!(classify(&idle, &mut anchor), LoopState::Idle);
        let t = thread(anchor_frames, Some("Loop"), Some("running"));
        assert_eq!(classify(&t, &mut anchor), LoopState::Waking);
    }

    #[test]
    fn uvloop_anchor_survives_a_stack_read_just_before_epoll() {
        // The stack is read before the OS state: a sample taken as the callback returns shows
        // its frames with the thread already back in epoll. Learning that as the loop's own
        // stack would hide every later callback with the same frames.
        let anchor_frames = vec![f("main", "/app/main.py"), f("<module>", "/app/main.py")];
        let mut busy = vec![
            f("sleepy", "/app/jobs.py"),
            f("single_main", "/app/jobs.py"),
        ];
        busy.extend(anchor_frames.clone());
        let mut anchor = Anchor::default();
        let idle = thread(anchor_frames, Some("Loop"), Some("epoll_pwait"));
        assert_eq!(classify(&idle, &mut anchor), LoopState::Idle);
        let torn = thread(busy.clone(), Some("Loop"), Some("epoll_pwait"));
        assert_eq!(classify(&torn, &mut anchor), LoopState::Idle);
        let blocked = thread(busy.clone(), Some("Loop"), Some("clock_nanosleep"));
        assert!(matches!(classify(&blocked, &mut anchor),
            LoopState::Callback { key, .. } if key.function == "single_main"));
        // Seen idle twice in a row, a deeper stack is the loop's own (a loop run from deeper).
        assert_eq!(classify(&torn, &mut anchor), LoopState::Idle);
        assert_eq!(classify(&torn, &mut anchor), LoopState::Idle);
        assert_eq!(classify(&blocked, &mut anchor), LoopState::Waking);
    }

    #[test]
    fn plain_thread_is_not_a_loop() {
        let t = thread(vec![f("worker", "/app/main.py")], None, Some("futex"));
        assert_eq!(classify(&t, &mut Anchor::default()), LoopState::NotLoop);
    }
}
