//! Per-version layout of the CPython structures the thread scanner and the dict readers use
//! (x86-64, GIL build): the runtime's interpreter list, the interpreter's thread list, `sys.modules`
//! and GIL, the thread state, dicts, strings and tuples.
//!
//! 3.8–3.12 come from a static table; every number was checked with gdb against the DWARF
//! of the pyenv builds 3.8.18/3.9.18/3.10.13/3.11.7/3.12.1 (`p (long)&((T*)0)->field`), and the
//! scanner checks the result against the live target at attach (the thread list must point back
//! at its interpreter, `sys.modules` must be a dict). 3.13+ take every offset the runtime
//! publishes from `_Py_DebugOffsets` (see `debug_offsets`), because layouts drift between
//! patch releases: `sizeof(PyThreadState)`, where 3.13 keeps the running-loop slot, is 304 on
//! 3.13.0 and 312 on 3.13.15.

use anyhow::{bail, Result};

use super::debug_offsets::DebugOffsets;
use super::runtime::Runtime;

/// `PyObject.ob_type`, the same in every supported version.
pub const OB_TYPE: u64 = 8;
/// `PyTypeObject.tp_name`, the same in every supported version.
pub const TP_NAME: u64 = 24;
/// `PyTypeObject.tp_mro` (gdb: 344 in 3.8–3.13; cpython-notes §2.5: also 3.14).
pub const TP_MRO: u64 = 344;
/// `PyVarObject.ob_size`.
pub const OB_SIZE: u64 = 16;
/// `PyTypeObject.tp_basicsize` / `.tp_flags` / `.tp_dictoffset` (gdb: 32/168/288 in 3.8–3.13).
pub const TP_BASICSIZE: u64 = 32;
pub const TP_FLAGS: u64 = 168;
pub const TP_DICTOFFSET: u64 = 288;
/// `Py_TPFLAGS_INLINE_VALUES` (3.13+) and `Py_TPFLAGS_MANAGED_DICT` (3.11+), from `object.h`.
pub const TPFLAGS_INLINE_VALUES: u64 = 1 << 2;
pub const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;
/// `dequeobject.state`, the mutation counter (gdb: 56 in 3.8–3.13; a 3.14-era
/// `Modules/_collectionsmodule.c` keeps the same fields before it).
pub const DEQUE_STATE: u64 = 56;
/// `_RunningLoopHolder.rl_loop` / `.rl_pid` (3.8–3.11 `_asyncio`; gdb on each `_asyncio` .so).
pub const HOLDER_LOOP: u64 = 16;
pub const HOLDER_PID: u64 = 24;
/// The `tstate->dict` key under which `_asyncio` keeps the running loop (3.8–3.12).
pub const RUNNING_LOOP_KEY: &[u8] = b"__asyncio_running_event_loop__";

/// Where a thread's running loop lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopSlot {
    /// 3.8–3.11: `tstate->dict[KEY]` is a `_RunningLoopHolder`; check its `rl_pid`.
    DictHolder,
    /// 3.12: `tstate->dict[KEY]` is the loop itself (or None).
    DictDirect,
    /// 3.13: `_PyThreadStateImpl.asyncio_running_loop`, a pointer at this offset in the
    /// thread state (= `sizeof(PyThreadState)`).
    TstateField(u64),
    /// 3.14: the offset is in the `.AsyncioDebug` section of the `_asyncio` module, which
    /// only exists once asyncio is imported, so it is resolved lazily by the scanner.
    AsyncioDebug,
}

/// Where an instance keeps its `__dict__` (cpython-notes §2.2). `cached_keys` is
/// `PyHeapTypeObject.ht_cached_keys` (gdb: 872 in 3.11, 880 in 3.12/3.13; 880 in 3.14 per
/// the notes), the shared keys that inline/split values are indexed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceDict {
    /// 3.8–3.10: the dict pointer at `obj + tp_dictoffset`.
    DictOffset,
    /// 3.11 (`pycore_object.h`): `_PyObject_ValuesPointer` = obj-32 (values array, used
    /// first when set), `_PyObject_ManagedDictPointer` = obj-24 (materialized dict).
    ValuesOrDict { cached_keys: u64 },
    /// 3.12: one `PyDictOrValues` word at obj-24; bit 0 set means values at `word + 1`.
    Tagged { cached_keys: u64 },
    /// 3.13+: the managed dict pointer at obj-24 (`MANAGED_DICT_OFFSET`); when NULL and the
    /// type has inline values, `PyDictValues {capacity, size, embedded, valid: u8; values[]
    /// @8}` sits at `obj + tp_basicsize`.
    Inline { cached_keys: u64 },
}

/// Dict-keys layout (cpython-notes §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DictLayout {
    /// 3.8–3.10: `dk_size` @8, `dk_nentries` @32, indices @40, 24-byte entries.
    Pre311,
    /// 3.11+: `dk_log2_size` @8, `dk_log2_index_bytes` @9, `dk_kind` @10, `dk_nentries` @24,
    /// indices @32; 16-byte entries unless `dk_kind` is general. Split values live at
    /// `ma_values + values_off` (0 on 3.11/3.12, 8 on 3.13+ where a header byte block precedes).
    Post311 { values_off: u64 },
}

/// Where the GIL's state and its holder are (cpython-notes §2.5, §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GilLayout {
    /// ≤3.11: `_PyRuntime.ceval.gil` (a `_gil_runtime_state`) at `runtime + gil`, and the holder
    /// `_PyRuntime.gilstate.tstate_current` (a `PyThreadState*`, NULL when nobody holds it) at
    /// `runtime + holder`.
    InRuntime { gil: u64, holder: u64 },
    /// 3.12+: `interp->ceval.gil` (a pointer to the `_gil_runtime_state`) at `interp + ptr`;
    /// the holder is its `last_holder` while `locked` is set.
    InterpPointer { ptr: u64 },
}

/// `_gil_runtime_state`: `last_holder` @8, `locked` @16, size 208 (gdb on 3.8–3.13; the 3.13+
/// debug offsets give the same `locked`/`last_holder` distance from `_gil`).
pub const GIL_LAST_HOLDER: u64 = 8;
pub const GIL_LOCKED: u64 = 16;
pub const GIL_STATE_SIZE: u64 = 208;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub minor: u64,
    /// `_PyRuntime.interpreters.head`; `interpreters.main` is the next word.
    pub runtime_interp_head: u64,
    /// Offset of the `sys.modules` pointer in `PyInterpreterState` (`modules` /
    /// `imports.modules`).
    pub interp_modules: u64,
    pub gil: GilLayout,
    /// Offset of the thread-list head in `PyInterpreterState`.
    pub interp_threads_head: u64,
    pub ts_next: u64,
    pub ts_interp: u64,
    /// `PyThreadState.thread_id` (pthread_t).
    pub ts_thread_id: u64,
    /// `PyThreadState.native_thread_id` (3.11+).
    pub ts_native_tid: Option<u64>,
    /// `PyThreadState.dict` (needed for 3.8–3.12 only).
    pub ts_dict: Option<u64>,
    pub slot: LoopSlot,
    pub dict: DictLayout,
    /// `sizeof(PyASCIIObject)`: where compact-ASCII str data starts.
    pub str_ascii_size: u64,
    /// `PyTupleObject.ob_item`: 24 up to 3.13 (gdb), 32 on 3.14 (a cached `ob_hash` precedes).
    pub tuple_items: u64,
    pub instance_dict: InstanceDict,
}

impl Layout {
    /// The layout of the target's version.
    pub fn for_runtime(rt: &Runtime) -> Result<Layout> {
        match &rt.debug {
            Some(d) => Layout::from_debug_offsets(d),
            None => match Layout::from_table(rt.version.minor) {
                Some(l) => Ok(l),
                None => bail!("no layout for CPython {}", rt.version),
            },
        }
    }

    /// The static table for 3.8–3.12; `None` for other minors.
    pub fn from_table(minor: u64) -> Option<Layout> {
        // (threads head, thread_id, native_thread_id, dict)
        let (head, tid, ntid, dict) = match minor {
            8..=10 => (8, 176, None, 152),
            11 => (16, 152, Some(160), 128),
            12 => (72, 136, Some(144), 112),
            _ => return None,
        };
        // (interpreters.head, sys.modules, GIL)
        let (runtime_interp_head, interp_modules, gil) = match minor {
            8 => (
                32,
                56,
                GilLayout::InRuntime {
                    gil: 1152,
                    holder: 1368,
                },
            ),
            9 | 10 => (
                32,
                856,
                GilLayout::InRuntime {
                    gil: 352,
                    holder: 568,
                },
            ),
            11 => (
                40,
                888,
                GilLayout::InRuntime {
                    gil: 360,
                    holder: 576,
                },
            ),
            _ => (40, 944, GilLayout::InterpPointer { ptr: 384 }),
        };
        Some(Layout {
            minor,
            runtime_interp_head,
            interp_modules,
            gil,
            interp_threads_head: head,
            ts_next: 8,
            ts_interp: 16,
            ts_thread_id: tid,
            ts_native_tid: ntid,
            ts_dict: Some(dict),
            slot: if minor <= 11 {
                LoopSlot::DictHolder
            } else {
                LoopSlot::DictDirect
            },
            dict: if minor <= 10 {
                DictLayout::Pre311
            } else {
                DictLayout::Post311 { values_off: 0 }
            },
            str_ascii_size: if minor <= 11 { 48 } else { 40 },
            tuple_items: 24,
            instance_dict: match minor {
                8..=10 => InstanceDict::DictOffset,
                11 => InstanceDict::ValuesOrDict { cached_keys: 872 },
                _ => InstanceDict::Tagged { cached_keys: 880 },
            },
        })
    }

    /// The layout of 3.13+ from its `_Py_DebugOffsets`. What they do not cover (dict keys,
    /// instance dicts of heap types before 3.15) keeps the values of the 3.13/3.14 headers.
    pub fn from_debug_offsets(d: &DebugOffsets) -> Result<Layout> {
        let minor = d.minor();
        let slot = match minor {
            13 => LoopSlot::TstateField(d.get("thread_state.size")),
            14 | 15 => LoopSlot::AsyncioDebug,
            _ => bail!("CPython 3.{minor} is not supported (3.8–3.15 are)"),
        };
        let cached_keys = match d.get("heap_type_object.ht_cached_keys") {
            0 => 880,
            k => k,
        };
        Ok(Layout {
            minor,
            runtime_interp_head: d.get("runtime_state.interpreters_head"),
            interp_modules: d.get("interpreter_state.imports_modules"),
            gil: GilLayout::InterpPointer {
                ptr: d.get("interpreter_state.ceval_gil"),
            },
            interp_threads_head: d.get("interpreter_state.threads_head"),
            ts_next: d.get("thread_state.next"),
            ts_interp: d.get("thread_state.interp"),
            ts_thread_id: d.get("thread_state.thread_id"),
            ts_native_tid: Some(d.get("thread_state.native_thread_id")),
            ts_dict: None,
            slot,
            dict: DictLayout::Post311 { values_off: 8 },
            str_ascii_size: d.get("unicode_object.asciiobject_size"),
            tuple_items: d.get("tuple_object.ob_item"),
            instance_dict: InstanceDict::Inline { cached_keys },
        })
    }

    /// How many bytes of a thread state to copy so one read covers every field we use.
    pub fn tstate_read_len(&self, slot_off: Option<u64>) -> usize {
        let mut end = self.ts_next.max(self.ts_interp).max(self.ts_thread_id);
        for o in [self.ts_native_tid, self.ts_dict, slot_off]
            .into_iter()
            .flatten()
        {
            end = end.max(o);
        }
        (end + 8) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::debug_offsets::{parse, tests as dt};

    #[test]
    fn layouts_from_real_debug_offsets() {
        let l = Layout::from_debug_offsets(&parse(&dt::block(dt::W_3130), 13).unwrap()).unwrap();
        assert_eq!(l.slot, LoopSlot::TstateField(304));
        assert_eq!((l.interp_threads_head, l.interp_modules), (7344, 7656));
        assert_eq!((l.ts_thread_id, l.ts_native_tid), (152, Some(160)));
        assert_eq!(l.gil, GilLayout::InterpPointer { ptr: 16 });
        assert_eq!((l.tuple_items, l.str_ascii_size), (24, 40));
        let l = Layout::from_debug_offsets(&parse(&dt::block(dt::W_31410), 14).unwrap()).unwrap();
        assert_eq!(l.slot, LoopSlot::AsyncioDebug);
        assert_eq!((l.tuple_items, l.interp_modules), (32, 7688));
        assert_eq!(l.instance_dict, InstanceDict::Inline { cached_keys: 880 });
        let l = Layout::from_debug_offsets(&parse(&dt::block(dt::W_3152), 15).unwrap()).unwrap();
        assert_eq!((l.ts_thread_id, l.ts_native_tid), (176, Some(184)));
        assert_eq!(l.instance_dict, InstanceDict::Inline { cached_keys: 888 });
    }

    #[test]
    fn table_covers_38_to_312() {
        for minor in 8..=12 {
            assert!(Layout::from_table(minor).is_some());
        }
        assert!(Layout::from_table(7).is_none() && Layout::from_table(13).is_none());
    }
}
