//! asyncio's own state in the target, read through our reader: the task each running loop is
//! stepping right now, every task with its await chain, and each loop's timer count.
//!
//! Where asyncio keeps it (cpython-notes §3.2):
//! - current task: 3.8–3.13 the `_current_tasks` dict `{loop: task}`, found once through
//!   `sys.modules['asyncio.tasks'].__dict__`; 3.14+
//!   `_PyThreadStateImpl.asyncio_running_task`, at the offset given by `.AsyncioDebug`;
//! - all tasks: see `task_sets`;
//! - timers: `len(loop._scheduled)`, a list in the loop's instance dict.
//!
//! The per-sample reads ([`AsyncioReader::current_task`], [`AsyncioReader::timers`]) use only
//! addresses resolved before and cached; [`AsyncioReader::refresh`], called at every rescan,
//! resolves what is missing (asyncio may be imported after we attach) and drops the caches
//! whose entries could have gone stale.

use std::collections::HashMap;

use super::mem::Memory;
use anyhow::Result;

use super::async_offsets::{AsyncLayout, MODULE_DICT};
use super::asyncio_debug::{asyncio_offsets, AsyncioOffsets};
use super::attrs::instance_attr;
use super::code::CodeCache;
use super::collections::dict_items;
use super::coro::{await_chain, qualname, Awaited, Link, Qualnames};
use super::dict::{find_str, find_str_large, KeyCache};
use super::kinds::{Kind, Kinds};
use super::mem::{i64_at, plausible_obj, read_bytes, read_u64, u64_at};
use super::offsets::{Layout, OB_SIZE, OB_TYPE};
use super::task_sets::Globals;
use super::tasks::{TaskHead, TaskReader, TaskState};

/// A list longer than this is not a timer heap.
const MAX_TIMERS: i64 = 1 << 32;

/// The task a loop is running right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentTask {
    pub address: u64,
    /// `Task-N` or the explicit name; `None` when it could not be read validly.
    pub name: Option<String>,
    /// Qualified name of the task's coroutine.
    pub coroutine: Option<String>,
    /// Address of the task's coroutine object (`task_coro`).
    pub coro: u64,
}

/// One task in full, for `loopspy dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub address: u64,
    pub name: Option<String>,
    pub state: Option<TaskState>,
    /// Address of the task's loop.
    pub loop_: u64,
    pub coroutine: Option<String>,
    /// Where its coroutine is, outermost first (empty once finished).
    pub chain: Vec<Link>,
    /// What the innermost coroutine awaits.
    pub awaiting: Option<AwaitTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwaitTarget {
    /// Another task: its address, and its name when it reads.
    Task {
        address: u64,
        name: Option<String>,
    },
    /// A future or other awaitable, by type name.
    Future(String),
    Other(String),
}

pub struct AsyncioReader {
    pub(super) layout: Layout,
    pub(super) al: AsyncLayout,
    pid: i32,
    interp: u64,
    /// Address of the `sys.modules` pointer.
    modules_ptr: u64,
    pub(super) kinds: Kinds,
    pub(super) codes: CodeCache,
    qualnames: Qualnames,
    pub(super) tasks: TaskReader,
    pub(super) globals: Globals,
    /// 3.14: the `.AsyncioDebug` offsets, once `_asyncio` is loaded.
    pub(super) debug: Option<AsyncioOffsets>,
    /// Loop address → the slot of `_scheduled` in its instance dict (`None`: it has none).
    timer_slots: HashMap<u64, Option<u64>>,
    /// `len(sys.modules)` at the last lookup that did not find everything.
    modules_seen: Option<u64>,
    /// Slot offsets of `TimerHandle`, for `due_timer`.
    pub(super) handle_slots: super::waiting::HandleSlots,
    /// The request reader's caches (see `request`).
    pub(super) requests: super::request::RequestState,
}

impl AsyncioReader {
    /// Build for an attached interpreter whose thread scanner uses `layout`.
    pub fn new(spy: &super::Interpreter, layout: &Layout) -> Result<AsyncioReader> {
        let al = spy.async_layout;
        let mut reader = AsyncioReader {
            layout: *layout,
            tasks: TaskReader::new(al.task, false),
            al,
            pid: spy.pid,
            interp: spy.interp,
            modules_ptr: spy.modules_ptr(),
            kinds: Kinds::default(),
            codes: CodeCache::default(),
            qualnames: Qualnames::default(),
            globals: Globals::default(),
            debug: None,
            timer_slots: HashMap::new(),
            modules_seen: None,
            handle_slots: Default::default(),
            requests: super::request::RequestState::for_minor(al.minor),
        };
        reader.refresh(&spy.process);
        Ok(reader)
    }

    /// The `TaskObj` offsets in use and whether they are confirmed, for diagnostics.
    pub fn task_offsets(&self) -> (super::async_offsets::TaskOffsets, bool) {
        (self.tasks.offsets(), self.tasks.calibrated)
    }

    /// Re-resolve what is missing and drop caches that may be stale (see the module doc).
    pub fn refresh<M: Memory + ?Sized>(&mut self, mem: &M) {
        self.kinds.clear();
        self.codes.clear();
        self.qualnames.clear();
        self.timer_slots.clear();
        self.handle_slots.clear();
        self.requests.refresh();
        if self.al.minor >= 14 && self.debug.is_none() {
            if let Ok(Some(o)) = asyncio_offsets(self.pid) {
                self.debug = Some(o);
                let mut t = self.al.task;
                (t.coro, t.name, t.node) = (o.task_coro, o.task_name, Some(o.task_node));
                // Still confirmed on a live task: the section says nothing of `task_state`.
                self.tasks = TaskReader::new(t, false);
            }
        }
        if self.globals.complete(self.al.minor) {
            return;
        }
        // Looking a module up compares the keys of `sys.modules` (hundreds) one by one: only
        // worth redoing once the program has imported something since the last miss.
        let modules = read_u64(mem, self.modules_ptr).unwrap_or(0);
        let used = read_bytes(mem, modules, 24).and_then(|b| u64_at(&b, 16));
        if used.is_some() && used == self.modules_seen {
            return;
        }
        self.modules_seen = used;
        if let Some(module_dict) = self.module_dict(mem, modules, b"asyncio.tasks") {
            self.globals = Globals::resolve(self, mem, module_dict);
        }
    }

    /// pthread id → name of the threads `threading` knows (see `names`).
    pub fn thread_names<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Option<std::collections::HashMap<u64, String>> {
        super::names::thread_names(self, mem)
    }

    /// `sys.version`, e.g. `3.9.18 (main, Oct 2 2023, ...) [GCC 12.2.0]`.
    pub fn sys_version<M: Memory + ?Sized>(&mut self, mem: &M) -> Option<String> {
        let modules = read_u64(mem, self.modules_ptr)?;
        let sys = self.module_dict(mem, modules, b"sys")?;
        let v = self.lookup(mem, sys, b"version")?;
        self.is(mem, v, Kind::Str)?;
        super::strings::read_str(mem, self.al.strs, v)
    }

    pub(super) fn modules_ptr(&self) -> u64 {
        self.modules_ptr
    }

    pub(super) fn dict_layout(&self) -> super::offsets::DictLayout {
        self.layout.dict
    }

    /// The kind of the object at `obj`.
    pub(super) fn kind<M: Memory + ?Sized>(&mut self, mem: &M, obj: u64) -> Option<Kind> {
        Some(self.kinds.of_object(mem, obj, self.al.tuple_items)?.1)
    }

    /// `sys.modules[name].__dict__`, type-checked at each step.
    pub(super) fn module_dict<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        modules: u64,
        name: &'static [u8],
    ) -> Option<u64> {
        self.is(mem, modules, Kind::Dict)?;
        let mut key = KeyCache::new(name);
        let (dl, ascii) = (self.layout.dict, self.layout.str_ascii_size);
        let module = find_str_large(mem, dl, ascii, modules, &mut key)?.value;
        self.is(mem, module, Kind::Module)?;
        let dict = read_u64(mem, module.checked_add(MODULE_DICT)?)?;
        self.is(mem, dict, Kind::Dict)?;
        Some(dict)
    }

    /// `dict[name]` for a `str` key.
    pub(super) fn lookup<M: Memory + ?Sized>(
        &self,
        mem: &M,
        dict: u64,
        name: &'static [u8],
    ) -> Option<u64> {
        let mut key = KeyCache::new(name);
        let (dl, ascii) = (self.layout.dict, self.layout.str_ascii_size);
        find_str(mem, dl, ascii, dict, &mut key).map(|f| f.value)
    }

    /// `Some(())` when `obj`'s kind is `kind`.
    pub(super) fn is<M: Memory + ?Sized>(&mut self, mem: &M, obj: u64, kind: Kind) -> Option<()> {
        (self.kinds.of_object(mem, obj, self.al.tuple_items)?.1 == kind).then_some(())
    }

    /// The value of attribute `name` in `obj`'s instance dict.
    pub(super) fn attr<M: Memory + ?Sized>(
        &self,
        mem: &M,
        obj: u64,
        name: &'static [u8],
    ) -> Option<super::dict::Found> {
        let tp = read_u64(mem, obj.checked_add(OB_TYPE)?)?;
        instance_attr(mem, &self.layout, obj, tp, &mut KeyCache::new(name))
    }

    /// The task the loop at `loop_` (run by the thread whose state is at `tstate`) is stepping
    /// now, or `None` when it runs no task (idle, or a plain callback) or nothing reads validly.
    /// Five `process_vm_readv` calls: the dict's header and table (3.14: the thread-state
    /// slot), the task, its name, its coroutine.
    pub fn current_task<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        tstate: u64,
        loop_: u64,
    ) -> Option<CurrentTask> {
        let task = match self.debug {
            Some(o) => match read_u64(mem, tstate.checked_add(o.running_task)?)? {
                // 3.14's pure-Python tasks (`_PyTask`) step through `_py_enter_task`, which
                // records them in the module's `_current_tasks` dict, not the thread state.
                0 => self.current_in_dict(mem, loop_)?,
                t => t,
            },
            None => self.current_in_dict(mem, loop_)?,
        };
        if !plausible_obj(task) {
            return None;
        }
        if self.kinds.of_object(mem, task, self.al.tuple_items)?.1 == Kind::Task {
            self.tasks
                .calibrate(mem, &self.al, &mut self.kinds, task, loop_);
        }
        let head = self.any_head(mem, task)?;
        if head.loop_ != loop_ {
            return None;
        }
        self.describe(mem, task, &head)
    }

    /// Whether `task`'s coroutine is running in a stack whose walk passed through the frames
    /// `walked` (addresses of frames outside the data stack: all frames on ≤3.10, coroutine and
    /// generator frames on 3.11+). The task record and the stack are separate reads, and the
    /// loop can step another task between them: a task whose coroutine frame is not in the
    /// stack read is not that stack's task.
    pub fn runs_in<M: Memory + ?Sized>(&self, mem: &M, task: &CurrentTask, walked: &[u64]) -> bool {
        super::coro::frame_address(mem, &self.al, task.coro).is_some_and(|f| walked.contains(&f))
    }

    /// The task `asyncio.tasks._current_tasks` (`{loop: task}`, one entry per loop running a
    /// task) holds for `loop_`.
    fn current_in_dict<M: Memory + ?Sized>(&mut self, mem: &M, loop_: u64) -> Option<u64> {
        let dict = self.globals.current?;
        let items = dict_items(mem, self.layout.dict, dict)?;
        items.iter().find(|(k, _)| *k == loop_).map(|e| e.1)
    }

    /// The task at `task`, when it runs on `loop_` and awaits exactly the future `fut`.
    pub(super) fn describe_waiting<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        task: u64,
        loop_: u64,
        fut: u64,
    ) -> Option<CurrentTask> {
        if !plausible_obj(task) {
            return None;
        }
        self.tasks
            .calibrate(mem, &self.al, &mut self.kinds, task, loop_);
        let head = self.tasks.head(mem, &self.al, &mut self.kinds, task)?;
        if head.loop_ != loop_ || head.fut_waiter != fut {
            return None;
        }
        self.describe(mem, task, &head)
    }

    fn describe<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        task: u64,
        head: &TaskHead,
    ) -> Option<CurrentTask> {
        // Read at every call: a task, its coroutine and its name object can all be freed and
        // their addresses reused by the next task (tasks created and finished in a row), so no
        // cache keyed by addresses can tell an old task's name from a new one's.
        let name = self.head_name(mem, head);
        let coroutine = qualname(
            mem,
            &self.al,
            &mut self.kinds,
            &mut self.qualnames,
            head.coro,
        );
        Some(CurrentTask {
            address: task,
            name,
            coroutine,
            coro: head.coro,
        })
    }

    /// The first region [`AsyncioReader::current_task`] reads for the thread state `tstate`
    /// (3.14+: its running-task slot; before: the `_current_tasks` dict's header), to fetch it
    /// ahead with other reads.
    pub fn current_task_region(&self, tstate: u64) -> Option<(u64, usize)> {
        match self.debug {
            Some(o) => Some((tstate.checked_add(o.running_task)?, 8)),
            None => Some((self.globals.current?, 48)),
        }
    }

    /// `len(loop._scheduled)`: the loop's pending timers (`call_later`, `asyncio.sleep`). Two
    /// reads: the attribute's slot (the list is replaced when the loop compacts it), then the
    /// list's header. `None` for loops without it (uvloop) or when it does not read validly.
    pub fn timers<M: Memory + ?Sized>(&mut self, mem: &M, loop_: u64) -> Option<u64> {
        let list = self.scheduled_list(mem, loop_)?;
        let b = read_bytes(mem, list, 24)?;
        let kind = self
            .kinds
            .of_type(mem, u64_at(&b, OB_TYPE)?, self.al.tuple_items)?;
        let n = i64_at(&b, OB_SIZE)?;
        (kind == Kind::List && (0..MAX_TIMERS).contains(&n)).then_some(n as u64)
    }

    /// The `loop._scheduled` list object now (the attribute's slot is cached).
    pub(super) fn scheduled_list<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        loop_: u64,
    ) -> Option<u64> {
        let slot = match self.timer_slots.get(&loop_) {
            Some(s) => (*s)?,
            None => {
                let found = self.attr(mem, loop_, b"_scheduled");
                let slot = found
                    .filter(|f| self.is(mem, f.value, Kind::List).is_some())
                    .map(|f| f.slot);
                self.timer_slots.insert(loop_, slot);
                slot?
            }
        };
        read_u64(mem, slot)
    }

    /// Calibrates the task offsets on the first of `tasks` that belongs to one of `loops`,
    /// when no running task did it yet (a dump of idle loops).
    pub fn calibrate_on<M: Memory + ?Sized>(&mut self, mem: &M, tasks: &[u64], loops: &[u64]) {
        for &t in tasks {
            if self.tasks.calibrated {
                return;
            }
            if self
                .kinds
                .of_object(mem, t, self.al.tuple_items)
                .map(|k| k.1)
                != Some(Kind::Task)
            {
                continue;
            }
            if let Some(l) = read_u64(mem, t + 16).filter(|l| loops.contains(l)) {
                self.tasks.calibrate(mem, &self.al, &mut self.kinds, t, l);
            }
        }
    }

    /// Everything about one task, with its await chain.
    pub fn task_info<M: Memory + ?Sized>(&mut self, mem: &M, task: u64) -> Option<TaskInfo> {
        let head = self.any_head(mem, task)?;
        let (chain, awaited) =
            await_chain(mem, &self.al, &mut self.kinds, &mut self.codes, head.coro);
        let awaiting = awaited.map(|a| match a {
            Awaited::Task(t) => AwaitTarget::Task {
                address: t,
                name: self.task_name(mem, t),
            },
            Awaited::Future(n) => AwaitTarget::Future(n),
            Awaited::Other(n) => AwaitTarget::Other(n),
        });
        Some(TaskInfo {
            address: task,
            name: self.head_name(mem, &head),
            state: head.state,
            loop_: head.loop_,
            coroutine: qualname(
                mem,
                &self.al,
                &mut self.kinds,
                &mut self.qualnames,
                head.coro,
            ),
            chain,
            awaiting,
        })
    }

    fn task_name<M: Memory + ?Sized>(&mut self, mem: &M, task: u64) -> Option<String> {
        let head = self.any_head(mem, task)?;
        self.head_name(mem, &head)
    }

    /// One read of a task's fields (validated), for the task walkers.
    pub(super) fn head<M: Memory + ?Sized>(&mut self, mem: &M, task: u64) -> Option<TaskHead> {
        self.tasks.head(mem, &self.al, &mut self.kinds, task)
    }

    pub(super) fn interp(&self) -> u64 {
        self.interp
    }
}
