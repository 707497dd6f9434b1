//! asyncio Tasks (the C `TaskObj` of `_asyncio`): their name, state, loop and coroutine, with
//! the `TaskObj` offsets self-calibrated on a live task.
//!
//! `TaskObj`'s layout moves between minor versions and even patch releases (cpython-notes
//! §3.1), so the per-version table is only where calibration starts. The first time a task is
//! read through its loop (the current task of a running loop, whose `task_loop` must be that
//! loop), the reader scans the task for the first pointer whose type is `coroutine` followed by
//! one whose type is `str` or `int`: that is `task_coro`, then `task_name`. `task_state` sits in
//! the Future part before them and is kept from the table only when calibration agrees with it
//! (or, when `task_coro` moved, where the running task reads "pending"). Until calibration
//! succeeds no name is reported: a guessed offset could land on another `str` field (a cancel
//! message) and give a wrong name. On 3.14 calibration starts from the `.AsyncioDebug` offsets
//! instead of the table.
//!
//! Names: 3.8–3.11 store the `str` `Task-N` at creation; 3.12+ store an `int` counter for
//! unnamed tasks and format `Task-N` lazily, which we do the same way. Explicit names are `str`.

use super::mem::Memory;

use super::async_offsets::{AsyncLayout, TaskOffsets};
use super::kinds::{Kind, Kinds};
use super::mem::{plausible_obj, read_bytes, u32_at, u64_at};
use super::strings::{int_from, read_head, str_from};

/// Bytes scanned for `task_coro` during calibration: past the biggest known `TaskObj` (192).
const CALIBRATION_SPAN: u64 = 256;
/// A live object's reference count is far below this; a freed pymalloc block keeps a
/// free-list pointer (a user-space address, above 2^40) or 0 in that word.
const MAX_REFCNT: u64 = 1 << 40;

/// A task's state, from `task_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Cancelled,
    Finished,
}

/// The fields of one task, as read in one go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskHead {
    pub address: u64,
    pub loop_: u64,
    pub state: Option<TaskState>,
    pub coro: u64,
    pub name: u64,
    pub fut_waiter: u64,
    /// 3.14: the `next` pointer of `task_node`.
    pub next_node: Option<u64>,
    /// A pure-Python task (`Kind::PyTask`): `name` is its `_name` attribute, a `str`.
    pub python: bool,
}

/// Reads tasks with calibrated offsets.
pub struct TaskReader {
    offsets: TaskOffsets,
    /// Whether the offsets were confirmed on a live task.
    pub calibrated: bool,
    /// Calibration attempts that found no coroutine (e.g. a Cython coroutine): bounded.
    attempts: u32,
}

impl TaskReader {
    pub fn new(offsets: TaskOffsets, calibrated: bool) -> TaskReader {
        TaskReader {
            offsets,
            calibrated,
            attempts: 0,
        }
    }

    pub fn offsets(&self) -> TaskOffsets {
        self.offsets
    }

    /// Calibrates on `task`, the current task of the loop at `loop_`. Returns whether the
    /// reader is calibrated (now or before).
    pub fn calibrate<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &AsyncLayout,
        kinds: &mut Kinds,
        task: u64,
        loop_: u64,
    ) -> bool {
        if self.calibrated || self.attempts > 64 {
            return self.calibrated;
        }
        self.attempts += 1;
        let Some(b) = read_bytes(mem, task, CALIBRATION_SPAN as usize) else {
            return false;
        };
        if u64_at(&b, self.offsets.loop_) != Some(loop_)
            || kinds.of_object(mem, task, l.tuple_items).map(|k| k.1) != Some(Kind::Task)
        {
            return false;
        }
        let mut kind_at = |off: u64| {
            u64_at(&b, off)
                .filter(|&p| plausible_obj(p))
                .and_then(|p| kinds.of_object(mem, p, l.tuple_items))
                .map(|k| k.1)
        };
        let Some(coro) = (24..CALIBRATION_SPAN - 8).step_by(8).find(|&off| {
            kind_at(off) == Some(Kind::Coroutine)
                && matches!(kind_at(off + 8), Some(Kind::Str | Kind::Int))
        }) else {
            return false;
        };
        let table = self.offsets;
        // The running task is pending (0). If task_coro moved by `d`, a field was added either
        // in the Future part (the state moved by `d` too) or after it (it did not).
        let pending = |off: u64| u32_at(&b, off) == Some(0);
        let state = table.state.and_then(|s| {
            if coro == table.coro {
                pending(s).then_some(s)
            } else {
                let moved = (s as i64 + coro as i64 - table.coro as i64) as u64;
                [moved, s].into_iter().find(|&o| o < coro && pending(o))
            }
        });
        self.offsets = TaskOffsets {
            state,
            coro,
            name: coro + 8,
            ..table
        };
        self.calibrated = true;
        true
    }

    /// One read of the task at `task`, after checking it is a live `TaskObj`. The caller checks
    /// `loop_` against the loop it expects, when it knows one.
    pub fn head<M: Memory + ?Sized>(
        &self,
        mem: &M,
        l: &AsyncLayout,
        kinds: &mut Kinds,
        task: u64,
    ) -> Option<TaskHead> {
        if !plausible_obj(task) {
            return None;
        }
        let o = &self.offsets;
        let b = read_bytes(mem, task, o.read_len())?;
        let refcnt = u64_at(&b, 0)?;
        if refcnt == 0 || refcnt >= MAX_REFCNT {
            return None;
        }
        if kinds.of_type(mem, u64_at(&b, 8)?, l.tuple_items)? != Kind::Task {
            return None;
        }
        let state = o.state.and_then(|s| match u32_at(&b, s)? {
            0 => Some(TaskState::Pending),
            1 => Some(TaskState::Cancelled),
            2 => Some(TaskState::Finished),
            _ => None,
        });
        Some(TaskHead {
            address: task,
            loop_: u64_at(&b, o.loop_)?,
            state,
            coro: u64_at(&b, o.coro)?,
            name: u64_at(&b, o.name)?,
            fut_waiter: u64_at(&b, o.fut_waiter())?,
            next_node: o.node.and_then(|n| u64_at(&b, n)),
            python: false,
        })
    }

    /// The task's name: its `str`, or `Task-N` for 3.12+'s lazy `int` counter. `None` before
    /// calibration or when the name object is neither.
    pub fn name<M: Memory + ?Sized>(
        &self,
        mem: &M,
        l: &AsyncLayout,
        kinds: &mut Kinds,
        head: &TaskHead,
    ) -> Option<String> {
        if !self.calibrated {
            return None;
        }
        // One read: the object's type and, for a short name, all of it.
        let b = read_head(mem, head.name)?;
        match kinds.of_type(mem, u64_at(&b, 8)?, l.tuple_items)? {
            Kind::Str => str_from(mem, l.strs, head.name, &b),
            Kind::Int => int_from(l.strs, &b).map(|n| format!("Task-{n}")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::mem::fake::FakeMem;
    use super::super::strings::test_objects::{int_obj, put_u64, str_obj};
    use super::*;

    const LOOP: u64 = 0x5000_0000;
    const TASK: u64 = 0x1000_0000;
    const CORO: u64 = 0x2000_0000;
    const NAME: u64 = 0x2100_0000;
    const TYPES: u64 = 0x7000_0000;

    /// Types named `_asyncio.Task`, `coroutine`, `str`, `int`, `NoneType` at TYPES + i*0x1000.
    fn mem_with_types() -> FakeMem {
        let mut m = FakeMem::default();
        for (i, n) in ["_asyncio.Task", "coroutine", "str", "int", "NoneType"]
            .iter()
            .enumerate()
        {
            let tp = TYPES + i as u64 * 0x1_0000;
            let mut t = vec![0u8; 352];
            put_u64(&mut t, 24, tp + 0x8000);
            m.put(tp, t);
            let mut name = n.as_bytes().to_vec();
            name.resize(4096, 0);
            m.put(tp + 0x8000, name);
        }
        m
    }

    fn obj(tp: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        put_u64(&mut b, 0, 1);
        put_u64(&mut b, 8, tp);
        b
    }

    /// A 3.12-like task whose real `task_coro` is 8 bytes further than the table says (a
    /// field was added after the Future part), with an int name.
    fn task_mem(l: &AsyncLayout, shift: u64) -> FakeMem {
        let mut m = mem_with_types();
        let mut t = vec![0u8; 256];
        put_u64(&mut t, 0, 3);
        put_u64(&mut t, 8, TYPES);
        put_u64(&mut t, 16, LOOP);
        let none = 0x3000_0000;
        for off in (24..l.task.coro + shift).step_by(8) {
            put_u64(&mut t, off as usize, none);
        }
        put_u64(&mut t, l.task.state.unwrap() as usize, 0);
        put_u64(&mut t, (l.task.coro + shift) as usize, CORO);
        put_u64(&mut t, (l.task.name + shift) as usize, NAME);
        m.put(TASK, t);
        m.put(none, obj(TYPES + 0x4_0000));
        m.put(CORO, obj(TYPES + 0x1_0000));
        m.put(NAME, int_obj(l.strs, TYPES + 0x3_0000, 42));
        m
    }

    #[test]
    fn calibrates_and_names_lazy_int_tasks() {
        let l = AsyncLayout::for_minor(12).unwrap();
        for shift in [0, 8] {
            let m = task_mem(&l, shift);
            let mut kinds = Kinds::default();
            let mut r = TaskReader::new(l.task, false);
            let head = r.head(&m, &l, &mut kinds, TASK).unwrap();
            assert_eq!(
                r.name(&m, &l, &mut kinds, &head),
                None,
                "not calibrated yet"
            );
            assert!(
                !r.calibrate(&m, &l, &mut kinds, TASK, LOOP + 8),
                "wrong loop"
            );
            assert!(r.calibrate(&m, &l, &mut kinds, TASK, LOOP));
            assert_eq!(r.offsets().coro, l.task.coro + shift);
            let head = r.head(&m, &l, &mut kinds, TASK).unwrap();
            assert_eq!((head.loop_, head.coro), (LOOP, CORO));
            assert_eq!(head.state, Some(TaskState::Pending));
            assert_eq!(
                r.name(&m, &l, &mut kinds, &head).as_deref(),
                Some("Task-42")
            );
        }
    }

    #[test]
    fn refuses_freed_or_foreign_objects() {
        let l = AsyncLayout::for_minor(12).unwrap();
        let mut m = task_mem(&l, 0);
        let mut kinds = Kinds::default();
        let mut r = TaskReader::new(l.task, false);
        assert!(r.calibrate(&m, &l, &mut kinds, TASK, LOOP));
        // A str name.
        m.put(NAME, str_obj(l.strs, TYPES + 0x2_0000, "fetcher"));
        let head = r.head(&m, &l, &mut kinds, TASK).unwrap();
        assert_eq!(
            r.name(&m, &l, &mut kinds, &head).as_deref(),
            Some("fetcher")
        );
        // The coroutine object is not a task.
        assert_eq!(r.head(&m, &l, &mut kinds, CORO), None);
        // A freed block: its first word is a free-list pointer.
        let mut t = m.regions[&TASK].clone();
        put_u64(&mut t, 0, 0x7f00_0000_1000);
        m.put(TASK, t);
        assert_eq!(r.head(&m, &l, &mut kinds, TASK), None);
    }
}
