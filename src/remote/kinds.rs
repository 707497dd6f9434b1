//! What kind of object a remote pointer is, from its type: the validity check in front of every
//! layout-dependent read of the task reader (a task's fields are only read through a pointer
//! whose type is `_asyncio.Task` or a subclass, a coroutine's through type `coroutine`, ...).
//!
//! Kinds are cached by type address, so a check costs one read (`ob_type`) and often none, when
//! the caller already holds the object's header. The cache is cleared by [`Kinds::clear`] at
//! every rescan (once a second): a type freed and its memory reused by another type (only
//! dynamically created classes can be) is then seen within a second.

use std::collections::HashMap;

use super::mem::Memory;

use super::mem::{plausible_obj, read_at_least, read_bytes, read_u64, u64_at};
use super::objects::TypeNames;
use super::offsets::{OB_SIZE, TP_MRO};

/// Longest MRO we follow.
const MAX_MRO: u64 = 64;
/// The cache is cleared past this many types.
const MAX_CACHED: usize = 4096;

/// The object kinds the task reader tells apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    NoneType,
    Dict,
    Set,
    List,
    Module,
    Code,
    /// A native coroutine (`async def`).
    Coroutine,
    /// A generator (a `@types.coroutine` generator, or a pure-Python `__await__`).
    Generator,
    /// What `coro.__await__()` returns; wraps a coroutine.
    CoroWrapper,
    /// What awaiting a C `Future` (or `Task`) gives: it holds the future.
    FutureIter,
    WeakRef,
    /// `_asyncio.Task` or a subclass: the C `TaskObj` layout.
    Task,
    /// `_asyncio.Future` or a subclass (not a Task): the C `FutureObj` layout.
    Future,
    /// The pure-Python `asyncio.tasks.Task` (`asyncio.tasks._PyTask`) or a subclass: its fields
    /// are instance attributes (`_loop`, `_state`, `_coro`, `_name`, `_fut_waiter`).
    PyTask,
    /// Anything else, by type name.
    Other(String),
}

#[derive(Default)]
pub struct Kinds {
    names: TypeNames,
    cache: HashMap<u64, Kind>,
}

impl Kinds {
    /// Forget every cached kind (see the module doc).
    pub fn clear(&mut self) {
        self.cache.clear();
    }

    /// The kind of the object at `obj` and its type's address (one read for `ob_type`, unless
    /// the kind of that type is not cached yet).
    pub fn of_object<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        obj: u64,
        tuple_items: u64,
    ) -> Option<(u64, Kind)> {
        let tp = TypeNames::type_of(mem, obj)?;
        Some((tp, self.of_type(mem, tp, tuple_items)?))
    }

    /// The kind of objects of type `tp`. `tuple_items` is `PyTupleObject.ob_item` of the version.
    pub fn of_type<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        tp: u64,
        tuple_items: u64,
    ) -> Option<Kind> {
        if let Some(k) = self.cache.get(&tp) {
            return Some(k.clone());
        }
        let name = self.names.of_type(mem, tp)?;
        let kind = match exact(&name) {
            Some(k) => k,
            None => {
                let mro = self.mro_names(mem, tp, tuple_items)?;
                let has = |want: &str| mro.iter().any(|n| n == want);
                if has("_asyncio.Task") {
                    Kind::Task
                } else if has("_asyncio.Future") {
                    Kind::Future
                } else if has("Task") && has("Future") {
                    // asyncio.tasks._PyTask derives from the pure-Python futures.Future.
                    Kind::PyTask
                } else {
                    Kind::Other(name)
                }
            }
        };
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(tp, kind.clone());
        Some(kind)
    }

    /// `tp_name` of a type (cached by `TypeNames`).
    pub fn type_name<M: Memory + ?Sized>(&mut self, mem: &M, tp: u64) -> Option<String> {
        self.names.of_type(mem, tp)
    }

    /// `tp_name` of every type in `tp`'s MRO, itself first.
    pub fn mro_names<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        tp: u64,
        tuple_items: u64,
    ) -> Option<Vec<String>> {
        let mro = read_u64(mem, tp.checked_add(TP_MRO)?)?;
        if !plausible_obj(mro) {
            return None;
        }
        let need = (tuple_items + 8) as usize;
        let buf = read_at_least(mem, mro, need, need + 15 * 8)?;
        let n = u64_at(&buf, OB_SIZE)?;
        if n == 0 || n > MAX_MRO {
            return None;
        }
        let len = (n * 8) as usize;
        let items = match buf.get(tuple_items as usize..tuple_items as usize + len) {
            Some(items) => items.to_vec(),
            None => read_bytes(mem, mro.checked_add(tuple_items)?, len)?,
        };
        (0..n)
            .map(|i| self.names.of_type(mem, u64_at(&items, i * 8)?))
            .collect()
    }
}

/// Kinds known by their exact type name (identical in 3.8–3.14 unless noted).
fn exact(name: &str) -> Option<Kind> {
    Some(match name {
        "str" => Kind::Str,
        "int" => Kind::Int,
        "NoneType" => Kind::NoneType,
        "dict" => Kind::Dict,
        "set" => Kind::Set,
        "list" => Kind::List,
        "module" => Kind::Module,
        "code" => Kind::Code,
        "coroutine" => Kind::Coroutine,
        "generator" => Kind::Generator,
        "coroutine_wrapper" => Kind::CoroWrapper,
        "_asyncio.FutureIter" => Kind::FutureIter,
        // "weakref" on 3.8/3.9, "weakref.ReferenceType" from 3.10.
        "weakref" | "weakref.ReferenceType" => Kind::WeakRef,
        "_asyncio.Task" => Kind::Task,
        "_asyncio.Future" => Kind::Future,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::mem::fake::FakeMem;
    use super::*;

    fn ty(name_ptr: u64, mro: u64) -> Vec<u8> {
        let mut b = vec![0u8; 352];
        b[24..32].copy_from_slice(&name_ptr.to_le_bytes());
        b[344..352].copy_from_slice(&mro.to_le_bytes());
        b
    }

    fn name_page(s: &[u8]) -> Vec<u8> {
        let mut page = s.to_vec();
        page.resize(4096, 0);
        page
    }

    fn tuple(items: &[u64]) -> Vec<u8> {
        let mut b = vec![0u8; 24];
        b[16..24].copy_from_slice(&(items.len() as u64).to_le_bytes());
        b.extend(items.iter().flat_map(|i| i.to_le_bytes()));
        b
    }

    #[test]
    fn exact_names_and_subclasses() {
        let mut m = FakeMem::default();
        // 0x20: _asyncio.Task; 0x21: MyTask(Task); 0x22: object; 0x23: _asyncio.Future;
        // 0x24: _GatheringFuture(Future); 0x25: Task (pure Python, not the C layout).
        let names: [(u64, &[u8]); 6] = [
            (0x20, b"_asyncio.Task"),
            (0x21, b"MyTask"),
            (0x22, b"object"),
            (0x23, b"_asyncio.Future"),
            (0x24, b"_GatheringFuture"),
            (0x25, b"Task"),
        ];
        for (t, n) in names {
            m.put(t << 16, ty((t << 16) + 0x8000, (t << 16) + 0x9000));
            m.put((t << 16) + 0x8000, name_page(n));
        }
        m.put(
            0x21_9000,
            tuple(&[0x21_0000, 0x20_0000, 0x23_0000, 0x22_0000]),
        );
        m.put(0x24_9000, tuple(&[0x24_0000, 0x23_0000, 0x22_0000]));
        m.put(0x25_9000, tuple(&[0x25_0000, 0x22_0000]));
        let mut k = Kinds::default();
        assert_eq!(k.of_type(&m, 0x20_0000, 24), Some(Kind::Task));
        assert_eq!(k.of_type(&m, 0x21_0000, 24), Some(Kind::Task));
        assert_eq!(k.of_type(&m, 0x24_0000, 24), Some(Kind::Future));
        assert_eq!(
            k.of_type(&m, 0x25_0000, 24),
            Some(Kind::Other("Task".into()))
        );
        // Cached until cleared.
        m.regions.remove(&0x21_9000);
        assert_eq!(k.of_type(&m, 0x21_0000, 24), Some(Kind::Task));
        k.clear();
        assert_eq!(k.of_type(&m, 0x21_0000, 24), None);
    }
}
