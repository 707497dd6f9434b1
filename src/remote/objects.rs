//! Type names of remote objects (`ob_type->tp_name`) and the "is this an event loop type"
//! check, validated and cached per type.
//!
//! A type name is the scanner's validity check for any object pointer it got from the
//! target: if the pointer is stale or garbage, `ob_type` or `tp_name` will not read as a
//! plausible pointer and NUL-terminated printable name. That alone is not enough for the
//! running loop: the target frees a loop (and its holder) while we read, and the address is
//! soon reused by some other object whose type reads fine ("cell", "Thread" were seen under
//! churn). So a loop candidate's type must also have `AbstractEventLoop` in its MRO, which
//! every asyncio loop (selector loops, uvloop's `Loop`, ...) has. The same MRO scan tells
//! whether the loop is a pure-Python `BaseEventLoop` (whose `__dict__` we know how to read).
//!
//! Entries are keyed by type address and remember the `tp_name` pointer they were read
//! from: a repeat costs one small read (the type's `tp_name` pointer), and a changed pointer
//! (type freed and its memory reused) invalidates the entry.

use std::collections::HashMap;

use super::mem::Memory;

use super::mem::{plausible_addr, plausible_obj, read_at_least, read_cstr, read_u64, u64_at};
use super::offsets::{OB_SIZE, OB_TYPE, TP_MRO, TP_NAME};

/// Longest type name we accept; real ones are far shorter.
const MAX_NAME: usize = 256;
/// The cache is cleared past this many types: bounded memory if the target churns types.
const MAX_CACHED: usize = 1024;
/// Longest MRO we follow; real class hierarchies are far shallower.
const MAX_MRO: u64 = 64;
/// The base every asyncio event loop class derives from (its `tp_name`; a Python class).
const LOOP_BASE: &str = "AbstractEventLoop";
/// The base of the stdlib's pure-Python loops (selector and proactor loops), not of uvloop.
const PY_LOOP_BASE: &str = "BaseEventLoop";

/// What a type's MRO says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopKind {
    /// `AbstractEventLoop` is in the MRO: an asyncio event loop.
    pub event_loop: bool,
    /// `BaseEventLoop` is in the MRO: a stdlib pure-Python loop (or a subclass).
    pub base_event_loop: bool,
}

struct TypeInfo {
    name_ptr: u64,
    name: String,
    /// Computed on first need.
    kind: Option<LoopKind>,
}

#[derive(Default)]
pub struct TypeNames {
    cache: HashMap<u64, TypeInfo>,
}

impl TypeNames {
    /// The address of the object's type, if the object header reads and points somewhere
    /// plausible.
    pub fn type_of<M: Memory + ?Sized>(mem: &M, obj: u64) -> Option<u64> {
        if !plausible_obj(obj) {
            return None;
        }
        let tp = read_u64(mem, obj.checked_add(OB_TYPE)?)?;
        plausible_obj(tp).then_some(tp)
    }

    /// `ob_type->tp_name` of the object at `obj`; `None` when anything is unreadable or
    /// the name is not a plausible type name. (The scanner reads `ob_type` itself to check
    /// the type further; this is the one-step form used by the tests.)
    #[cfg(test)]
    pub fn of_object<M: Memory + ?Sized>(&mut self, mem: &M, obj: u64) -> Option<String> {
        let tp = Self::type_of(mem, obj)?;
        self.of_type(mem, tp)
    }

    /// `tp_name` of the type object at `tp`.
    pub fn of_type<M: Memory + ?Sized>(&mut self, mem: &M, tp: u64) -> Option<String> {
        self.entry(mem, tp).map(|e| e.name.clone())
    }

    /// What the MRO of the type at `tp` says about it: whether it is an asyncio event loop
    /// type (`AbstractEventLoop` in its MRO) and a pure-Python one. `tuple_items` is
    /// `PyTupleObject.ob_item` of the target version. `None` when the type or its MRO cannot
    /// be read validly right now.
    pub fn loop_kind<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        tp: u64,
        tuple_items: u64,
    ) -> Option<LoopKind> {
        if let Some(known) = self.entry(mem, tp)?.kind {
            return Some(known);
        }
        let mro = read_u64(mem, tp.checked_add(TP_MRO)?)?;
        if !plausible_obj(mro) {
            return None;
        }
        // One speculative read covers a typical MRO tuple (header + up to 16 items).
        let need = (tuple_items + 8) as usize;
        let buf = read_at_least(mem, mro, need, need + 15 * 8)?;
        let n = u64_at(&buf, OB_SIZE)?;
        if n == 0 || n > MAX_MRO {
            return None;
        }
        let items_len = (n * 8) as usize;
        let items = match buf.get(tuple_items as usize..tuple_items as usize + items_len) {
            Some(items) => items.to_vec(),
            None => super::mem::read_bytes(mem, mro.checked_add(tuple_items)?, items_len)?,
        };
        let mut kind = LoopKind {
            event_loop: false,
            base_event_loop: false,
        };
        for i in 0..n {
            let base = u64_at(&items, i * 8)?;
            match self.entry(mem, base)?.name.as_str() {
                LOOP_BASE => kind.event_loop = true,
                PY_LOOP_BASE => kind.base_event_loop = true,
                _ => {}
            }
        }
        if let Some(e) = self.cache.get_mut(&tp) {
            e.kind = Some(kind);
        }
        Some(kind)
    }

    /// The current cache entry of `tp`, (re)reading the name when the `tp_name` pointer
    /// changed or the type was not seen yet.
    fn entry<M: Memory + ?Sized>(&mut self, mem: &M, tp: u64) -> Option<&TypeInfo> {
        if !plausible_obj(tp) {
            return None;
        }
        let name_ptr = read_u64(mem, tp.checked_add(TP_NAME)?)?;
        if !plausible_addr(name_ptr) {
            return None;
        }
        let fresh = self.cache.get(&tp).is_some_and(|e| e.name_ptr == name_ptr);
        if !fresh {
            let bytes = read_cstr(mem, name_ptr, MAX_NAME)?;
            let name = String::from_utf8(bytes).ok()?;
            if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return None;
            }
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
            self.cache.insert(
                tp,
                TypeInfo {
                    name_ptr,
                    name,
                    kind: None,
                },
            );
        }
        self.cache.get(&tp)
    }
}

#[cfg(test)]
mod tests {
    use super::super::mem::fake::FakeMem;
    use super::*;

    fn obj(tp: u64) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[8..16].copy_from_slice(&tp.to_le_bytes());
        b
    }

    fn ty(name_ptr: u64, mro: u64) -> Vec<u8> {
        let mut b = vec![0u8; 352];
        b[24..32].copy_from_slice(&name_ptr.to_le_bytes());
        b[344..352].copy_from_slice(&mro.to_le_bytes());
        b
    }

    /// Mappings are page-granular: a name's page is readable past its NUL.
    fn name_page(s: &[u8]) -> Vec<u8> {
        let mut page = s.to_vec();
        page.push(0);
        page.resize(4096, 0xaa);
        page
    }

    fn tuple(items: &[u64]) -> Vec<u8> {
        let mut b = vec![0u8; 24];
        b[16..24].copy_from_slice(&(items.len() as u64).to_le_bytes());
        b.extend(items.iter().flat_map(|i| i.to_le_bytes()));
        b
    }

    #[test]
    fn reads_validates_and_caches() {
        let mut m = FakeMem::default();
        m.put(0x10_0000, obj(0x20_0000));
        m.put(0x20_0000, ty(0x30_0000, 0));
        m.put(0x30_0000, name_page(b"_UnixSelectorEventLoop"));
        let mut n = TypeNames::default();
        assert_eq!(
            n.of_object(&m, 0x10_0000).as_deref(),
            Some("_UnixSelectorEventLoop")
        );
        // Cached: works even with the string gone, as long as tp_name still points there.
        m.regions.remove(&0x30_0000);
        assert_eq!(
            n.of_object(&m, 0x10_0000).as_deref(),
            Some("_UnixSelectorEventLoop")
        );
        // tp_name moved to garbage: rejected.
        m.put(0x20_0000, ty(0x40_0000, 0));
        m.put(0x40_0000, name_page(b"a\x01b"));
        assert_eq!(n.of_object(&m, 0x10_0000), None);
        // Misaligned / null / kernel-space object pointers are not even read.
        assert_eq!(n.of_object(&m, 0x10_0001), None);
        assert_eq!(n.of_object(&m, 0), None);
        assert_eq!(n.of_object(&m, 0xffff_8000_0000_0000), None);
    }

    #[test]
    fn event_loop_types_are_recognised_by_mro() {
        let mut m = FakeMem::default();
        // uvloop-like 0x20_0000: MRO (Loop, AbstractEventLoop, object); "cell" 0x50_0000;
        // selector-like 0x23_0000: MRO (_UnixSelectorEventLoop, BaseEventLoop,
        // AbstractEventLoop, object).
        m.put(0x20_0000, ty(0x30_0000, 0x60_0000));
        m.put(0x21_0000, ty(0x31_0000, 0));
        m.put(0x22_0000, ty(0x32_0000, 0));
        m.put(0x23_0000, ty(0x34_0000, 0x63_0000));
        m.put(0x24_0000, ty(0x35_0000, 0));
        m.put(0x30_0000, name_page(b"Loop"));
        m.put(0x31_0000, name_page(b"AbstractEventLoop"));
        m.put(0x32_0000, name_page(b"object"));
        m.put(0x34_0000, name_page(b"_UnixSelectorEventLoop"));
        m.put(0x35_0000, name_page(b"BaseEventLoop"));
        m.put(0x60_0000, tuple(&[0x20_0000, 0x21_0000, 0x22_0000]));
        m.put(
            0x63_0000,
            tuple(&[0x23_0000, 0x24_0000, 0x21_0000, 0x22_0000]),
        );
        m.put(0x50_0000, ty(0x33_0000, 0x61_0000));
        m.put(0x33_0000, name_page(b"cell"));
        m.put(0x61_0000, tuple(&[0x50_0000, 0x22_0000]));
        let mut n = TypeNames::default();
        let kind = |event_loop, base_event_loop| {
            Some(LoopKind {
                event_loop,
                base_event_loop,
            })
        };
        assert_eq!(n.loop_kind(&m, 0x20_0000, 24), kind(true, false));
        assert_eq!(n.loop_kind(&m, 0x23_0000, 24), kind(true, true));
        assert_eq!(n.loop_kind(&m, 0x50_0000, 24), kind(false, false));
        // Cached verdict survives the MRO tuple going away.
        m.regions.remove(&0x60_0000);
        assert_eq!(n.loop_kind(&m, 0x20_0000, 24), kind(true, false));
        // Garbage MRO size: no verdict.
        m.put(0x51_0000, ty(0x33_0000, 0x62_0000));
        let mut t = tuple(&[0x50_0000]);
        t[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        m.put(0x62_0000, t);
        assert_eq!(n.loop_kind(&m, 0x51_0000, 24), None);
    }
}
