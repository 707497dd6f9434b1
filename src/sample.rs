//! Our own timestamped, serializable samples, made from the live target in `acquire::spy`.
//! Everything downstream (analysis, renderers, recordings) sees only these types, so it can be
//! tested without a live process.

use serde::{Deserialize, Serialize};

/// One Python frame. `line` is the line being executed (0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// What the OS said about a thread at sampling time (`/proc/PID/task/TID/{stat,syscall}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsState {
    /// Scheduler state letter from `stat`: R, S, D, ...
    pub state: char,
    /// Name of the system call the thread is blocked in (architecture-neutral, e.g.
    /// `epoll_wait`), `running` when it is on a CPU or runnable, `None` when unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// The thread waits on a futex inside the interpreter's GIL: it is ready to run Python but
    /// another thread holds the GIL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gil_wait: bool,
    /// CPU time the thread has used so far, in clock ticks, in user mode and in the kernel
    /// (`stat` fields 14 and 15): tells computing apart from kernel work such as fsync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ticks: Option<(u64, u64)>,
    /// What the blocked syscall waits on (its fd resolved through `/proc/PID/fd`): a pipe, a
    /// socket with its peer, a file or a terminal. Absent when the syscall has no fd (sleeps,
    /// futexes, epoll), in recordings made before loopspy read it, or when it was unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<crate::os::fd::FdTarget>,
}

/// The ready queue of a loop (`collections.deque`): its length and its mutation counter, which
/// grows by one on every append and every pop. Two samples of one callback whose counters show a
/// pop between them are two callbacks: the loop dispatched a new handle in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyQueue {
    pub len: u64,
    pub state: u64,
}

impl ReadyQueue {
    /// Whether the loop popped (dispatched) at least one handle between `self` and `later`.
    pub fn popped_before(&self, later: &ReadyQueue) -> bool {
        let changes = later.state.wrapping_sub(self.state);
        let growth = later.len as i128 - self.len as i128;
        // changes = appends + pops and growth = appends - pops, so pops = (changes - growth) / 2.
        (changes as i128 - growth) > 0
    }
}

/// One thread of the target as seen by one sample.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSample {
    /// OS thread id (0 when it could not be determined).
    pub tid: u32,
    /// Python thread name (`threading.current_thread().name`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Type name of the asyncio event loop this thread runs, when it runs one
    /// (`_UnixSelectorEventLoop`, uvloop's `Loop`, ...). Read from asyncio's running-loop slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_loop: Option<String>,
    /// Whether this thread held the GIL.
    #[serde(default)]
    pub gil: bool,
    /// This thread, holding the GIL, was running the garbage collector: the interpreter's GC
    /// state had its `collecting` flag set (read by `remote::gc_state`). Only full samples
    /// read it; absent (false) in older recordings.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gc: bool,
    /// Whether the thread was doing work (py-spy's verdict: on a CPU, or not in a known wait).
    #[serde(default)]
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsState>,
    /// The loop's ready queue (`loop._ready`), when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadyQueue>,
    /// The asyncio Task the loop was stepping (its name: `Task-3`, or the name given to
    /// `create_task`), from asyncio's own current-task record; `None` when the loop was idle or
    /// in a plain callback, or the task could not be read. While the loop waits for the GIL
    /// outside any callback, the task it will step next for its due timer (the starved one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The qualified name of that task's coroutine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coroutine: Option<String>,
    /// The loop's pending timers (`len(loop._scheduled)`), when readable (not on uvloop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timers: Option<u64>,
    /// While the loop waits for the GIL outside any callback: how long its earliest timer had
    /// been due when this sample read it, in µs (`TimerHandle._when` against CLOCK_MONOTONIC).
    /// `None` otherwise, or when no timer was due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_overdue_us: Option<u64>,
    /// The thread stopped running its event loop since the previous sample (and may have
    /// started a new one, given by `event_loop`): whatever it ran in the old loop is over.
    /// Seen by asyncio's running-loop slot changing (`asyncio.run` returned or was called again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub loop_ended: bool,
    /// The HTTP request the running task was serving, read on stack samples of a loop thread
    /// inside a task step (`remote::request`); `None` when none, unreadable or not read
    /// (`--no-request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    /// Innermost frame first.
    pub frames: Vec<Frame>,
}

/// An HTTP request being served: only its method, its path (no query string) and the route
/// template the framework matched (`/orders/{order_id}`), never headers or bodies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Request {
    /// `GET`, `POST`, ...; `WEBSOCKET` for an ASGI websocket connection.
    pub method: String,
    /// The concrete path, without the query string; at most `MAX_REQUEST_CHARS` characters
    /// (a longer one ends in `…`).
    pub path: String,
    /// The route template, when the framework has matched one.
    #[serde(default)]
    pub route: Option<String>,
}

/// Longest path or route kept, in characters.
pub const MAX_REQUEST_CHARS: usize = 256;

impl Request {
    /// `GET /orders/{order_id}`: the method and the route, or the path when no route matched.
    pub fn endpoint(&self) -> String {
        format!(
            "{} {}",
            self.method,
            self.route.as_deref().unwrap_or(&self.path)
        )
    }
}

/// One sample of the whole process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Wall-clock Unix time in seconds.
    pub wall: f64,
    /// Monotonic seconds since the recording started: all durations come from this.
    pub mono: f64,
    pub pid: u32,
    /// A probe tick: only the event-loop threads' OS state and ready queues, no frames.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
    pub threads: Vec<ThreadSample>,
    /// Loop boundaries the kernel timed since the previous sample (the kernel clock), oldest
    /// first; their times are at most this sample's `mono`. Empty on the probe clock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<LoopEvent>,
}

/// A loop thread's boundary, timed by the kernel: perf tracepoints on its epoll and futex calls
/// give nanosecond CLOCK_MONOTONIC timestamps, converted to the recording's monotonic seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoopEvent {
    /// OS thread id of the loop thread.
    pub tid: u32,
    /// Monotonic seconds since the recording started (the clock of `Sample::mono`).
    pub t: f64,
    pub kind: LoopEventKind,
}

/// What the kernel saw a loop thread do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopEventKind {
    /// The kernel clock starts on this thread: from now on its boundaries come from events.
    Traced,
    /// The kernel clock stops on this thread (too many events, or tracing failed): probe ticks
    /// time it again.
    Untraced,
    /// The loop left epoll: it runs callbacks from `t`.
    Busy,
    /// The loop entered epoll: idle from `t`.
    Idle,
    /// The loop entered epoll with a zero timeout at `t`: it polled between two iterations,
    /// with work waiting, and is busy from `t` on (the `Busy` that follows, if reported, has
    /// this same `t`). It ends the callback that ran, as `Idle` does, but a loop starved of the
    /// GIL is still starved across it.
    Poll,
    /// The thread started waiting on the GIL's futex.
    GilWait,
    /// It stopped waiting on the GIL (it holds it now).
    GilTaken,
    /// The kernel dropped records (full buffer): what the thread did up to `t` is unknown.
    Lost,
}

impl Frame {
    /// `file:line`, with the file shortened to its last two path components.
    pub fn location(&self) -> String {
        format!("{}:{}", short_path(&self.file), self.line)
    }
}

/// The last two components of a path: `app/handlers.py` rather than the full site path.
pub fn short_path(path: &str) -> &str {
    let mut cut = path.len();
    for _ in 0..2 {
        match path[..cut].rfind('/') {
            Some(i) => cut = i,
            None => return path,
        }
    }
    &path[cut + 1..]
}

impl ThreadSample {
    /// A label for this thread in outputs: `name (tid)` or `thread tid`.
    pub fn label(&self) -> String {
        thread_label(self.name.as_deref(), self.tid)
    }
}

/// A label for a thread in outputs: `name (tid)` or `thread tid`.
pub fn thread_label(name: Option<&str>, tid: u32) -> String {
    match name {
        Some(n) => format!("{n} ({tid})"),
        None => format!("thread {tid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_queue_pops() {
        let q = |len, state| ReadyQueue { len, state };
        assert!(!q(0, 10).popped_before(&q(0, 10)));
        assert!(
            !q(0, 10).popped_before(&q(2, 12)),
            "two appends are not a dispatch"
        );
        assert!(q(1, 10).popped_before(&q(0, 11)));
        assert!(q(0, 10).popped_before(&q(0, 12)), "append then pop");
    }

    #[test]
    fn short_path_keeps_two_components() {
        assert_eq!(short_path("/srv/app/handlers.py"), "app/handlers.py");
        assert_eq!(short_path("app/handlers.py"), "app/handlers.py");
        assert_eq!(short_path("handlers.py"), "handlers.py");
    }
}
