//! Pure-Python tasks (`asyncio.tasks._PyTask`, or a subclass): the same fields as the C
//! `TaskObj`, kept as instance attributes (`_loop`, `_state`, `_coro`, `_name`,
//! `_fut_waiter`; asyncio/futures.py and asyncio/tasks.py, 3.8–3.14). Their `_state` is one of
//! the strings `PENDING`, `CANCELLED`, `FINISHED`, and `_name` is always a `str` (the pure
//! Python class formats `Task-N` when it is created).

use super::asyncio::AsyncioReader;
use super::kinds::Kind;
use super::mem::{plausible_obj, read_u64, Memory};
use super::offsets::OB_TYPE;
use super::strings::read_str;
use super::tasks::{TaskHead, TaskState};

impl AsyncioReader {
    /// Whether `obj` is a task of either implementation.
    pub(super) fn is_task<M: Memory + ?Sized>(&mut self, mem: &M, obj: u64) -> bool {
        matches!(
            self.kinds.of_object(mem, obj, self.al.tuple_items),
            Some((_, Kind::Task | Kind::PyTask))
        )
    }

    /// A task of either implementation, type-checked.
    pub(super) fn any_head<M: Memory + ?Sized>(&mut self, mem: &M, task: u64) -> Option<TaskHead> {
        // The C layout first: its one read checks the type too.
        if let Some(head) = self.tasks.head(mem, &self.al, &mut self.kinds, task) {
            return Some(head);
        }
        match self.kinds.of_object(mem, task, self.al.tuple_items)?.1 {
            Kind::PyTask => self.py_task_head(mem, task),
            _ => None,
        }
    }

    /// The name of a task read by `any_head`.
    pub(super) fn head_name<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        head: &TaskHead,
    ) -> Option<String> {
        if head.python {
            self.is(mem, head.name, Kind::Str)?;
            return read_str(mem, self.al.strs, head.name);
        }
        self.tasks.name(mem, &self.al, &mut self.kinds, head)
    }

    fn py_task_head<M: Memory + ?Sized>(&mut self, mem: &M, task: u64) -> Option<TaskHead> {
        let get = |r: &Self, name: &'static [u8]| r.attr(mem, task, name).map(|f| f.value);
        let (loop_, coro, name) = (
            get(self, b"_loop")?,
            get(self, b"_coro")?,
            get(self, b"_name")?,
        );
        if ![loop_, coro, name].into_iter().all(plausible_obj) {
            return None;
        }
        // `_state` and `_fut_waiter` are class attributes (`PENDING`, None) until first set.
        let tp = read_u64(mem, task.checked_add(OB_TYPE)?)?;
        let fut_waiter = get(self, b"_fut_waiter")
            .or_else(|| self.class_attr(mem, tp, "_fut_waiter"))
            .unwrap_or(0);
        let state = get(self, b"_state").or_else(|| self.class_attr(mem, tp, "_state"));
        let state = state.and_then(|s| {
            self.is(mem, s, Kind::Str)?;
            match read_str(mem, self.al.strs, s)?.as_str() {
                "PENDING" => Some(TaskState::Pending),
                "CANCELLED" => Some(TaskState::Cancelled),
                "FINISHED" => Some(TaskState::Finished),
                _ => None,
            }
        });
        Some(TaskHead {
            address: task,
            loop_,
            state,
            coro,
            name,
            fut_waiter,
            next_node: None,
            python: true,
        })
    }
}
