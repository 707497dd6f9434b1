//! Our own reader of CPython in a live target, never pausing it and never writing to it:
//! - finding the interpreter (`maps`, `elf`, `runtime`): the image holding `_PyRuntime`, its
//!   address and the CPython version;
//! - layouts (`offsets`, `async_offsets`, `frames`, `debug_offsets`): per-version tables for
//!   3.8–3.12, `_Py_DebugOffsets` read from the target for 3.13+;
//! - Python stacks (`stacks`, `code`): frames copied in batched reads, code objects cached and
//!   re-checked;
//! - threads (`scanner`, `threads`, `tid`, `names`, `gil`): thread states, OS thread ids,
//!   thread names, the GIL and its holder, and each thread's running event loop;
//! - asyncio (`asyncio`, `tasks`, `coro`, `task_sets`): tasks and their await chains.
//!
//! Every read goes through `mem`, the one place bytes come out of the target.
//!
//! Where the running loop lives (cpython-notes §2.1):
//! - 3.8–3.11: `tstate->dict["__asyncio_running_event_loop__"]` is a `_RunningLoopHolder`
//!   (`rl_loop` @16, `rl_pid` @24; `rl_pid` must be the target pid, since a forked child
//!   inherits the parent's holder);
//! - 3.12: the same key holds the loop itself (or None);
//! - 3.13: `_PyThreadStateImpl.asyncio_running_loop` at `sizeof(PyThreadState)`, taken from
//!   `_Py_DebugOffsets.thread_state.size`;
//! - 3.14: the offset given by the `_asyncio` module's `.AsyncioDebug` section.
//!
//! Only the main interpreter is walked.
//!
//! For stdlib pure-Python loops the scan also finds the loop's ready queue (`loop._ready`,
//! see `ready`), whose length and mutation counter the sampler re-reads every sample with
//! [`ThreadScanner::read_ready`].
//!
//! [`AsyncioReader`] (`asyncio`, `tasks`, `coro`, `task_sets`) reads asyncio's own state: the
//! task each running loop is stepping, every task with its await chain, and timer counts.

mod async_offsets;
mod asyncio;
mod asyncio_debug;
mod attrs;
mod code;
mod collections;
mod coro;
mod debug_offsets;
mod dict;
mod elf;
mod frames;
pub mod gc_state;
mod gil;
mod kinds;
mod maps;
mod mem;
mod names;
mod objects;
mod offsets;
mod py_tasks;
mod ready;
mod request;
mod runtime;
mod scanner;
mod stacks;
mod strings;
mod task_sets;
mod tasks;
mod threads;
mod tid;
mod waiting;

#[cfg(test)]
mod garbage_tests;
#[cfg(test)]
mod tests;

use anyhow::Result;

pub use async_offsets::{AsyncLayout, TaskOffsets};
pub use asyncio::{AsyncioReader, AwaitTarget, CurrentTask, TaskInfo};
pub use coro::{CoroState, Link};
pub use gil::Gil;
pub use mem::{Memory, Prefetched, Process};
pub use offsets::{DictLayout, Layout, LoopSlot};
pub use runtime::{DiscoverError, Runtime, Version};
pub use scanner::{LoopSlotWatch, PyThread, RunningLoop, ThreadScanner};
pub use stacks::{StackError, StackOf, StackReader, KEEP_INNER, KEEP_OUTER};
pub use task_sets::MAX_TASKS;
pub use tasks::TaskState;

/// An attached interpreter: the process, where its runtime is, and the layouts of its version.
pub struct Interpreter {
    pub pid: i32,
    pub process: Process,
    pub runtime: Runtime,
    pub layout: Layout,
    pub async_layout: AsyncLayout,
    /// Address of the main `PyInterpreterState`.
    pub interp: u64,
}

/// Why attaching failed.
#[derive(Debug)]
pub enum AttachError {
    Discover(DiscoverError),
    /// The runtime is there but not initialized yet (a process still starting up), or does not
    /// read as its version's layout says.
    NotReady(anyhow::Error),
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::Discover(e) => write!(f, "{e}"),
            AttachError::NotReady(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for AttachError {}

impl Interpreter {
    /// Finds the interpreter of process `pid` and its main interpreter state.
    pub fn attach(pid: i32) -> Result<Interpreter, AttachError> {
        let process = Process::new(pid);
        let runtime = runtime::discover(&process, pid).map_err(AttachError::Discover)?;
        let not_ready = |e: anyhow::Error| AttachError::NotReady(e);
        let layout = Layout::for_runtime(&runtime).map_err(not_ready)?;
        let async_layout = AsyncLayout::for_runtime(&runtime).ok_or_else(|| {
            not_ready(anyhow::anyhow!(
                "no asyncio layout for CPython {}",
                runtime.version
            ))
        })?;
        let interp = main_interpreter(&process, &runtime, &layout).map_err(not_ready)?;
        Ok(Interpreter {
            pid,
            process,
            runtime,
            layout,
            async_layout,
            interp,
        })
    }

    pub fn version(&self) -> Version {
        self.runtime.version
    }

    /// Address of the `sys.modules` pointer in the main interpreter.
    pub fn modules_ptr(&self) -> u64 {
        self.interp.wrapping_add(self.layout.interp_modules)
    }

    /// A stack reader for this interpreter.
    pub fn stack_reader(&self) -> StackReader {
        let l = frames::StackLayout::new(&self.runtime, &self.async_layout);
        StackReader::new(l, self.async_layout, self.interp)
    }
}

/// `_PyRuntime.interpreters.main` (the word after `interpreters.head`), or the head when main
/// is not set.
fn main_interpreter<M: Memory + ?Sized>(mem: &M, rt: &Runtime, l: &Layout) -> Result<u64> {
    let at = rt.address.wrapping_add(l.runtime_interp_head);
    let b = mem::read_bytes(mem, at, 16)
        .ok_or_else(|| anyhow::anyhow!("cannot read the interpreter list of _PyRuntime"))?;
    let (head, main) = (
        mem::u64_at(&b, 0).unwrap_or(0),
        mem::u64_at(&b, 8).unwrap_or(0),
    );
    [main, head]
        .into_iter()
        .find(|&p| mem::plausible_obj(p))
        .ok_or_else(|| anyhow::anyhow!("the interpreter is not initialized yet"))
}
