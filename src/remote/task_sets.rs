//! Where asyncio registers its tasks, and the walk over all of them (cpython-notes §3.2):
//! - ≤3.11: `asyncio.tasks._all_tasks`, a `WeakSet` (its instance attribute `data` is a `set`
//!   of weak references to the tasks);
//! - 3.12/3.13: `_scheduled_tasks` (a `WeakSet`) plus `_eager_tasks` (a plain `set`);
//! - 3.14: a circular linked list of native tasks per thread state and one in the interpreter
//!   (for tasks whose thread exited), through each task's `task_node`; `_scheduled_tasks` still
//!   holds tasks of other implementations.
//!
//! The sets hold finished tasks too until they are garbage-collected (≤3.13). Every entry is
//! type-checked: a dead weak reference (its referent is None) or a set's dummy slot is skipped.

use std::collections::HashSet;

use super::mem::Memory;

use super::async_offsets::WR_OBJECT;
use super::asyncio::AsyncioReader;
use super::collections::set_items;
use super::kinds::Kind;
use super::mem::{read_bytes, read_u64, u64_at};

/// Most tasks we list: a million tasks are a few seconds of reads and 8 MiB of addresses;
/// past it `task_addresses` says the list was cut.
pub const MAX_TASKS: usize = 1_000_000;

/// asyncio's module-level registries, once found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Globals {
    /// `_current_tasks` (dict): every task on 3.8–3.13, pure-Python tasks (`_PyTask`) on 3.14.
    pub current: Option<u64>,
    /// `_all_tasks` (WeakSet), ≤3.11.
    pub all: Option<u64>,
    /// `_scheduled_tasks` (WeakSet), 3.12+.
    pub scheduled: Option<u64>,
    /// `_eager_tasks` (set), 3.12/3.13.
    pub eager: Option<u64>,
}

impl Globals {
    /// Whether everything this version has was found.
    pub fn complete(&self, minor: u64) -> bool {
        match minor {
            ..=11 => self.current.is_some() && self.all.is_some(),
            12 | 13 => self.current.is_some() && self.scheduled.is_some() && self.eager.is_some(),
            _ => self.scheduled.is_some(),
        }
    }

    /// Looks the registries up in `asyncio.tasks`' module dict, type-checking each.
    pub fn resolve<M: Memory + ?Sized>(
        r: &mut AsyncioReader,
        mem: &M,
        module_dict: u64,
    ) -> Globals {
        let minor = r.al.minor;
        let weakset = || Kind::Other("WeakSet".into());
        let mut get = |name: &'static [u8], kind: Kind, wanted: bool| {
            if !wanted {
                return None;
            }
            let v = r.lookup(mem, module_dict, name)?;
            r.is(mem, v, kind)?;
            Some(v)
        };
        Globals {
            // 3.14 records only pure-Python tasks there (C tasks are in the thread state).
            current: get(b"_current_tasks", Kind::Dict, true),
            all: get(b"_all_tasks", weakset(), minor <= 11),
            scheduled: get(b"_scheduled_tasks", weakset(), minor >= 12),
            eager: get(b"_eager_tasks", Kind::Set, (12..=13).contains(&minor)),
        }
    }
}

impl AsyncioReader {
    /// The addresses of every task the target has registered, each type-checked, without
    /// duplicates, and whether the list stopped at `MAX_TASKS`. `tstates` are the thread
    /// states (3.14 keeps a task list in each).
    pub fn task_addresses<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        tstates: &[u64],
    ) -> (Vec<u64>, bool) {
        let mut out = Vec::new();
        let g = self.globals;
        for ws in [g.all, g.scheduled].into_iter().flatten() {
            self.weakset_tasks(mem, ws, &mut out);
        }
        if let Some(set) = g.eager {
            for t in set_items(mem, set).unwrap_or_default() {
                if self.is_task(mem, t) {
                    out.push(t);
                }
            }
        }
        if let Some(o) = self.debug {
            for &ts in tstates {
                self.walk_list(mem, ts.saturating_add(o.thread_tasks_head), &mut out);
            }
            let interp = self.interp();
            self.walk_list(mem, interp.saturating_add(o.interp_tasks_head), &mut out);
        }
        let mut seen = HashSet::new();
        out.retain(|t| seen.insert(*t));
        let cut = out.len() >= MAX_TASKS;
        out.truncate(MAX_TASKS);
        (out, cut)
    }

    /// The live tasks of a `WeakSet`: `ws.data` is a set of weak references.
    fn weakset_tasks<M: Memory + ?Sized>(&mut self, mem: &M, ws: u64, out: &mut Vec<u64>) {
        let Some(data) = self.attr(mem, ws, b"data").map(|f| f.value) else {
            return;
        };
        if self.is(mem, data, Kind::Set).is_none() {
            return;
        }
        for r in set_items(mem, data).unwrap_or_default() {
            if out.len() >= MAX_TASKS {
                return;
            }
            // One read: the reference's type and referent (a dead one points at None).
            let Some(b) = read_bytes(mem, r, (WR_OBJECT + 8) as usize) else {
                continue;
            };
            let (Some(tp), Some(t)) = (u64_at(&b, 8), u64_at(&b, WR_OBJECT)) else {
                continue;
            };
            if self.kinds.of_type(mem, tp, self.al.tuple_items) == Some(Kind::WeakRef)
                && self.is_task(mem, t)
            {
                out.push(t);
            }
        }
    }

    /// 3.14: the tasks of the circular list whose head node is at `head`.
    fn walk_list<M: Memory + ?Sized>(&mut self, mem: &M, head: u64, out: &mut Vec<u64>) {
        let Some(node_off) = self.tasks.offsets().node else {
            return;
        };
        let mut node = read_u64(mem, head).unwrap_or(0);
        let mut seen = HashSet::new();
        while node != head && node != 0 && out.len() < MAX_TASKS && seen.insert(node) {
            let Some(task) = node.checked_sub(node_off) else {
                return;
            };
            let Some(h) = self.head(mem, task) else {
                return;
            };
            out.push(task);
            node = h.next_node.unwrap_or(0);
        }
    }
}
