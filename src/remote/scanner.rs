//! The thread scanner: the target's thread states, their OS thread ids and the asyncio event
//! loop each one is running (see the module doc of `remote` for where each version keeps it).

use std::collections::HashSet;

use anyhow::{bail, Context, Result};

use super::dict::{self, KeyCache};
use super::mem::{self, Memory, Process};
use super::objects::TypeNames;
use super::offsets::{Layout, LoopSlot, HOLDER_LOOP, HOLDER_PID, OB_TYPE, RUNNING_LOOP_KEY};
use super::ready::ReadyQueues;
use super::threads::{self, RawThread};
use super::tid::{self, PthreadTid};
use super::{asyncio_debug, Interpreter};

/// One Python thread state of the target, as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyThread {
    /// Address of the thread's `PyThreadState` (3.14 keeps its current task and task list there).
    pub tstate: u64,
    /// pthread_t of the thread (PyThreadState.thread_id) — the same value py-spy puts in
    /// StackTrace.thread_id.
    pub pthread_id: u64,
    /// OS thread id (what /proc/PID/task/TID is named by). 3.11+: `native_thread_id`;
    /// 3.8–3.10: the calibrated `tid` field of glibc's `struct pthread`. Only reported when it
    /// is currently a thread of the target; None if it cannot be determined.
    pub native_tid: Option<u32>,
    /// The asyncio event loop this thread is running now (asyncio's per-thread running-loop
    /// slot), if any. Only objects whose type derives from `asyncio.AbstractEventLoop` are
    /// reported (this rejects freed-and-reused memory read mid-update).
    pub running_loop: Option<RunningLoop>,
    /// The word asyncio rewrites when this thread starts or stops running a loop, for a cheap
    /// check between scans ([`ThreadScanner::loop_slot_unchanged`]). `None` for a thread that
    /// never ran one (3.8–3.12: its dict has no running-loop key).
    pub loop_slot: Option<LoopSlotWatch>,
}

/// Where a thread's running-loop slot is, and the loop pointer it led to at the scan: the
/// value in `tstate->dict` under `__asyncio_running_event_loop__` (3.12 the loop or None; 3.8–
/// 3.11 a `_RunningLoopHolder`, replaced at every `_set_running_loop`, whose `rl_loop` is
/// compared, since two holders alternate between two addresses), or the thread state's own
/// slot (3.13+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopSlotWatch {
    pub addr: u64,
    /// The slot holds a `_RunningLoopHolder`: follow it to `rl_loop`.
    pub holder: bool,
    /// The loop pointer (None's address, or 0) seen at the scan.
    pub value: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningLoop {
    pub address: u64,
    /// ob_type->tp_name of the loop, e.g. "_UnixSelectorEventLoop" or uvloop's "Loop".
    pub type_name: String,
    /// Address of the loop's ready queue (`loop._ready`, a `collections.deque`), for loops
    /// derived from `asyncio.BaseEventLoop`; None for others (uvloop) or when unreadable.
    /// Read it with [`ThreadScanner::read_ready`].
    pub ready: Option<u64>,
}

/// Reads the target's thread states and their running loops. Built once per attach; keeps
/// the version layout, the calibrated pthread tid offset and small caches between scans.
pub struct ThreadScanner {
    pid: i32,
    interp: u64,
    layout: Layout,
    /// Offset of the running-loop pointer inside the thread state (3.13 at construction,
    /// 3.14 once `_asyncio` is loaded); None for the dict-based versions.
    slot_off: Option<u64>,
    tid: PthreadTid,
    key: KeyCache,
    names: TypeNames,
    ready: ReadyQueues,
    /// pthread id of the main thread (native tid == pid), once seen: every whole walk has it.
    main_pthread: Option<u64>,
    /// The target's threads under both numberings, from the last scan.
    task_ids: tid::TaskIds,
}

impl ThreadScanner {
    /// Build for an attached interpreter. Errors with a one-line reason when its thread list
    /// does not read with the version's layout.
    pub fn new(spy: &Interpreter) -> Result<ThreadScanner> {
        let v = spy.runtime.version;
        let interp = spy.interp;
        let layout = spy.layout;
        let slot_off = match layout.slot {
            LoopSlot::TstateField(off) => Some(off),
            _ => None,
        };
        let mut scanner = ThreadScanner {
            pid: spy.pid,
            interp,
            layout,
            slot_off,
            tid: PthreadTid::default(),
            key: KeyCache::new(RUNNING_LOOP_KEY),
            names: TypeNames::default(),
            ready: ReadyQueues::default(),
            main_pthread: None,
            task_ids: tid::TaskIds::default(),
        };
        // A wrong layout shows up as an empty walk: the head's `interp` back-pointer would not
        // match. A live interpreter always has at least the thread that runs it.
        let raw = threads::walk(
            &spy.process,
            &scanner.layout,
            interp,
            scanner.slot_off,
            None,
        )?;
        if raw.is_empty() {
            bail!(
                "no thread states found for CPython {v} at interpreter 0x{interp:x} (unexpected layout?)"
            );
        }
        if scanner.layout.ts_native_tid.is_none() {
            if let Some(ids) = tid::task_ids(scanner.pid) {
                let pts: Vec<u64> = raw.iter().map(|t| t.pthread_id).collect();
                scanner
                    .tid
                    .calibrate(&spy.process, ids.inner_pid as i32, &pts, &ids.inner());
            }
        }
        if scanner.layout.slot == LoopSlot::AsyncioDebug {
            scanner.slot_off = asyncio_debug::running_loop_offset(scanner.pid)?;
        }
        Ok(scanner)
    }

    /// The version layout in use (for diagnostics).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The calibrated `struct pthread` tid offset (3.8–3.10), if any.
    pub fn pthread_tid_offset(&self) -> Option<u64> {
        self.tid.offset
    }

    /// Walk the interpreter's thread states and read each one's running loop. Never panics
    /// on garbage; bounded loops; a thread whose slot can't be read validly gets
    /// running_loop None.
    pub fn scan(&mut self, process: &Process) -> Result<Vec<PyThread>> {
        if process.pid() != self.pid {
            bail!(
                "scanner was built for pid {}, asked to scan pid {}",
                self.pid,
                process.pid()
            );
        }
        if self.layout.slot == LoopSlot::AsyncioDebug && self.slot_off.is_none() {
            self.slot_off = asyncio_debug::running_loop_offset(self.pid)?;
        }
        let raw = threads::walk(
            process,
            &self.layout,
            self.interp,
            self.slot_off,
            self.main_pthread,
        )?;
        let ids = tid::task_ids(self.pid).with_context(|| {
            format!(
                "cannot list /proc/{}/task (has the process exited?)",
                self.pid
            )
        })?;
        let tids = ids.inner();
        if self.layout.ts_native_tid.is_none() {
            let pts: Vec<u64> = raw.iter().map(|t| t.pthread_id).collect();
            let distinct: HashSet<u64> = pts.iter().copied().collect();
            if self.tid.wants_calibration(distinct.len()) {
                self.tid
                    .calibrate(process, ids.inner_pid as i32, &pts, &tids);
            }
        }
        self.task_ids = ids.clone();
        let threads: Vec<PyThread> = raw
            .iter()
            .map(|t| {
                let (running_loop, loop_slot) = self.running_loop(process, t);
                PyThread {
                    tstate: t.tstate,
                    pthread_id: t.pthread_id,
                    native_tid: self.native_tid(process, t, &tids).and_then(|n| ids.host(n)),
                    running_loop,
                    loop_slot,
                }
            })
            .collect();
        if self.main_pthread.is_none() {
            let pid = self.pid as u32;
            self.main_pthread = threads
                .iter()
                .find(|t| t.native_tid == Some(pid))
                .map(|t| t.pthread_id);
        }
        let live: HashSet<u64> = threads
            .iter()
            .filter_map(|t| t.running_loop.as_ref().map(|l| l.address))
            .collect();
        self.ready.retain(&live);
        Ok(threads)
    }

    /// The host tid (`/proc/PID/task/TID`) of a thread id as the target numbers it (they
    /// differ in a container), from the last `scan`.
    pub fn host_tid(&self, inner: u32) -> Option<u32> {
        self.task_ids.host(inner)
    }

    /// `(len, state)` of a ready queue found by the last `scan` (`RunningLoop::ready`): its
    /// length and its mutation counter, which grows by one on every append and every pop.
    /// One `process_vm_readv` of 64 bytes; `None` when the read fails or the object there is
    /// no longer that deque. Cheap enough for every sample.
    pub fn read_ready<M: Memory + ?Sized>(&self, mem: &M, deque: u64) -> Option<(u64, u64)> {
        self.ready.read(mem, deque)
    }

    /// The region [`ThreadScanner::read_ready`] reads, to fetch it ahead with other reads.
    pub fn ready_region(&self, deque: u64) -> (u64, usize) {
        ReadyQueues::region(deque)
    }

    fn native_tid<M: Memory + ?Sized>(
        &self,
        mem: &M,
        t: &RawThread,
        tids: &HashSet<u32>,
    ) -> Option<u32> {
        match t.native_tid {
            Some(n) => u32::try_from(n).ok().filter(|n| tids.contains(n)),
            None if self.layout.ts_native_tid.is_none() => self.tid.read(mem, t.pthread_id, tids),
            None => None,
        }
    }

    /// Whether the running-loop slot still holds what the scan saw: one 8-byte read. `false`
    /// (the thread started or stopped a loop, or the slot is gone) means: scan again.
    pub fn loop_slot_unchanged<M: Memory + ?Sized>(&self, mem: &M, watch: &LoopSlotWatch) -> bool {
        watched_loop(mem, watch.addr, watch.holder) == Some(watch.value)
    }

    /// The thread's running loop (None when it has none or anything read is invalid), and
    /// where to watch for it to change.
    fn running_loop<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        t: &RawThread,
    ) -> (Option<RunningLoop>, Option<LoopSlotWatch>) {
        let watch = match self.layout.slot {
            LoopSlot::DictHolder | LoopSlot::DictDirect => {
                let d = t.dict.filter(|&d| d != 0);
                d.and_then(|d| {
                    dict::find_str(
                        mem,
                        self.layout.dict,
                        self.layout.str_ascii_size,
                        d,
                        &mut self.key,
                    )
                })
                .and_then(|f| {
                    let holder = self.layout.slot == LoopSlot::DictHolder;
                    Some(LoopSlotWatch {
                        addr: f.slot,
                        holder,
                        value: if holder {
                            watched_loop(mem, f.slot, true)?
                        } else {
                            f.value
                        },
                    })
                })
            }
            LoopSlot::TstateField(_) | LoopSlot::AsyncioDebug => match (self.slot_off, t.slot) {
                (Some(off), Some(value)) => t.tstate.checked_add(off).map(|addr| LoopSlotWatch {
                    addr,
                    holder: false,
                    value,
                }),
                _ => None,
            },
        };
        let value = match (self.layout.slot, t.dict) {
            // The holder itself, which `loop_at` type-checks.
            (LoopSlot::DictHolder, Some(d)) if d != 0 => {
                watch.and_then(|w| mem::read_u64(mem, w.addr))
            }
            _ => watch.map(|w| w.value),
        };
        (self.loop_at(mem, t, value), watch)
    }

    /// The loop the slot value `value` stands for.
    ///
    /// Objects can be freed and their memory reused between any two of our reads, so the
    /// holder is copied in one read (type, `rl_loop` and `rl_pid` from the same moment) and
    /// the loop candidate must have an event-loop type (see `objects`).
    fn loop_at<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        t: &RawThread,
        value: Option<u64>,
    ) -> Option<RunningLoop> {
        let loop_addr = match self.layout.slot {
            LoopSlot::DictHolder => {
                let holder = value?;
                let h = mem::read_bytes(mem, holder, (HOLDER_PID + 4) as usize)?;
                let holder_type = mem::u64_at(&h, OB_TYPE)?;
                if !self
                    .names
                    .of_type(mem, holder_type)?
                    .ends_with("_RunningLoopHolder")
                {
                    return None;
                }
                // A forked child inherits the parent's holder; it is not running that loop.
                // `getpid()` as the target sees it: its own namespace's number.
                if mem::u32_at(&h, HOLDER_PID)? != self.task_ids.inner_pid {
                    return None;
                }
                mem::u64_at(&h, HOLDER_LOOP)?
            }
            LoopSlot::DictDirect => value?,
            LoopSlot::TstateField(_) | LoopSlot::AsyncioDebug => t.slot?,
        };
        if loop_addr == 0 {
            return None;
        }
        let tp = TypeNames::type_of(mem, loop_addr)?;
        let type_name = self.names.of_type(mem, tp)?;
        if type_name == "NoneType" {
            return None;
        }
        let kind = self.names.loop_kind(mem, tp, self.layout.tuple_items)?;
        if !kind.event_loop {
            return None;
        }
        // Only the stdlib's pure-Python loops keep `_ready` in an instance dict we can read.
        let ready = if kind.base_event_loop {
            self.ready
                .resolve(mem, &self.layout, &mut self.names, loop_addr, tp)
        } else {
            None
        };
        Some(RunningLoop {
            address: loop_addr,
            type_name,
            ready,
        })
    }
}

/// The loop pointer a running-loop slot at `slot` leads to now: the slot's value, or with
/// `holder` the `rl_loop` of the `_RunningLoopHolder` it holds. Unchecked: for comparing with
/// what a scan saw.
fn watched_loop<M: Memory + ?Sized>(mem: &M, slot: u64, holder: bool) -> Option<u64> {
    let value = mem::read_u64(mem, slot)?;
    if holder {
        mem::read_u64(mem, value.checked_add(HOLDER_LOOP)?)
    } else {
        Some(value)
    }
}
