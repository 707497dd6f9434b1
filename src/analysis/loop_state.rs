//! What an event-loop thread is doing in one sample: idle in the selector, inside one callback
//! (and which), or in the loop's own machinery. Pure: it looks only at the frames, the OS state
//! and the loop type recorded in the sample.

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
    /// Ready to run but waiting for the GIL that another thread holds, while its stack still
    /// shows the loop waiting in its selector (the selector call has returned in C).
    GilWait,
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
        self.frames = Some(
            frames
                .iter()
                .map(|f| (f.function.clone(), f.file.clone()))
                .collect(),
        );
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
            Some(h) => key_of(&frames[..h]).unwrap_or(LoopState::Machinery),
            None if gil_wait(thread) => LoopState::GilWait,
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
        return key_of(&frames[..start]).unwrap_or(LoopState::Machinery);
    }
    match frames.iter().position(is_loop_entry) {
        Some(e) => key_of(&frames[..e]).unwrap_or(LoopState::Machinery),
        None => LoopState::Machinery,
    }
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
            tid: 1,
            name: None,
            event_loop: event_loop.map(String::from),
            gil: false,
            active: true,
            ready: None,
            task: None,
            coroutine: None,
            timers: None,
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
    fn gil_wait_in_the_selector_is_not_idle() {
        let mut frames = vec![f("EpollSelector.select", "/py/selectors.py")];
        frames.extend(base());
        let mut t = thread(frames, Some("_UnixSelectorEventLoop"), Some("futex"));
        t.os.as_mut().unwrap().gil_wait = true;
        assert_eq!(classify(&t, &mut Anchor::default()), LoopState::GilWait);
    }

    #[test]
    fn plain_thread_is_not_a_loop() {
        let t = thread(vec![f("worker", "/app/main.py")], None, Some("futex"));
        assert_eq!(classify(&t, &mut Anchor::default()), LoopState::NotLoop);
    }
}
