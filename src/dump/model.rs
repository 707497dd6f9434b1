//! What `loopspy dump` shows, as plain serializable data: the JSON output is this model, and
//! the text renderer reads only this model, so both are tested without a live process.

use serde::{Deserialize, Serialize};

use crate::sample::{Frame, Request};

/// One read of the whole target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dump {
    pub pid: u32,
    pub python_version: String,
    /// The target's command line.
    pub command: String,
    /// Every Python thread: the main thread (tid == pid) first, then the others by tid.
    pub threads: Vec<ThreadDump>,
    pub loops: Vec<LoopDump>,
    /// Every task read: one entry per group of tasks with the same loop, state, coroutine,
    /// await chain and awaited kind (`count` of them, the fields of the first one), or one per
    /// task with `--all-tasks`.
    pub tasks: Vec<TaskDump>,
    /// How many tasks were read (the sum of the entries' `count`).
    #[serde(default)]
    pub task_count: u64,
    /// What could not be read, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadDump {
    pub tid: u32,
    pub name: Option<String>,
    /// Whether it held the GIL.
    pub gil: bool,
    /// `idle` or `active`, from the thread's OS state (running or in disk wait is active).
    pub state: String,
    /// The system call it waits in (`epoll_wait`, `futex`, ...), or `running`.
    pub syscall: Option<String>,
    /// The type of the event loop it runs, if any.
    pub event_loop: Option<String>,
    /// For a loop thread seen inside one callback during the whole of dump's probe (`state`
    /// is then `blocked`): how long it was seen there, in ms, a lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_ms: Option<f64>,
    /// Innermost frame first.
    pub stack: Vec<Frame>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopDump {
    /// The thread running it.
    pub tid: u32,
    pub thread: Option<String>,
    /// `_UnixSelectorEventLoop`, uvloop's `Loop`, ...
    pub loop_type: String,
    /// Its address in the target, `0x...`.
    pub address: String,
    /// Callbacks waiting in `loop._ready` (stdlib loops only).
    pub ready: Option<u64>,
    /// Timers in `loop._scheduled` (stdlib loops only).
    pub timers: Option<u64>,
    /// Pending tasks of this loop.
    pub tasks: Option<u64>,
    /// The task it is stepping now.
    pub running_task: Option<String>,
    pub running_coroutine: Option<String>,
    /// The HTTP request that task serves (method, path, route), unless `--no-request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    /// Inside one callback for at least this many ms (seen so during dump's probe of a few
    /// ms, without pausing the target); `None` when idle or between callbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_ms_at_least: Option<f64>,
    /// Milliseconds since the loop last came back from polling (`_run_once`'s `end_time`),
    /// for a loop inside a callback (stdlib loops only): how long it has not served I/O.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_poll_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDump {
    /// How many tasks this entry stands for (the others differ only in name and address).
    #[serde(default = "one")]
    pub count: u64,
    /// Its address in the target, `0x...` (what other tasks' `awaiting` refers to).
    pub address: String,
    pub name: Option<String>,
    /// `running` (its loop is stepping it now), `pending`, `cancelled`, `finished`, `unknown`.
    pub state: String,
    /// Qualified name of its coroutine.
    pub coroutine: Option<String>,
    /// The thread whose running loop the task belongs to, if that loop is running.
    pub loop_tid: Option<u32>,
    /// Where its coroutine is: the task's coroutine first, then each coroutine it awaits.
    pub await_chain: Vec<AwaitFrame>,
    /// What the innermost coroutine waits on.
    pub awaiting: Option<Awaiting>,
}

fn one() -> u64 {
    1
}

/// Every process of a `dump --subprocesses`: the target and its Python descendants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Processes {
    pub processes: Vec<Dump>,
    /// Descendants that could not be read, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwaitFrame {
    pub function: String,
    pub file: String,
    /// The line it is suspended at; `None` when unknown or not started.
    pub line: Option<u32>,
    /// `suspended`, `running`, or `created` (not started yet).
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Awaiting {
    /// Another task.
    Task {
        name: Option<String>,
        address: String,
    },
    /// A future, by type (`_asyncio.Future`, `_GatheringFuture`, ...).
    Future { type_name: String },
    /// Another awaitable, by type.
    Other { type_name: String },
}

impl Awaiting {
    /// `task fetcher`, `_asyncio.Future`, ...
    pub fn label(&self) -> String {
        match self {
            Awaiting::Task { name, address } => match name {
                Some(n) => format!("task {n}"),
                None => format!("task at {address}"),
            },
            Awaiting::Future { type_name } | Awaiting::Other { type_name } => type_name.clone(),
        }
    }
}
