//! Per-version layout of the few CPython structures the scanner reads (x86-64, GIL build).
//!
//! 3.8–3.12 come from a static table; every number was checked with gdb against the DWARF
//! of the pyenv builds 3.8.18/3.9.18/3.10.13/3.11.7/3.12.1 (`p (long)&((T*)0)->field`).
//! 3.13+ take the thread-state core from `_Py_DebugOffsets` at the start of `_PyRuntime`,
//! because `sizeof(PyThreadState)` (where 3.13 keeps the running-loop slot) changed between
//! 3.13 patch releases (304 on 3.13.0, 312 later).

use anyhow::{bail, Result};

use super::mem::u64_at;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub minor: u64,
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
    /// The static table for 3.8–3.12; `None` for other minors.
    pub fn from_table(minor: u64) -> Option<Layout> {
        // (threads head, thread_id, native_thread_id, dict)
        let (head, tid, ntid, dict) = match minor {
            8..=10 => (8, 176, None, 152),
            11 => (16, 152, Some(160), 128),
            12 => (72, 136, Some(144), 112),
            _ => return None,
        };
        Some(Layout {
            minor,
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

    /// Builds the layout of 3.13/3.14 from the bytes of `_Py_DebugOffsets` (the start of
    /// `_PyRuntime`). `major`/`minor` are what py-spy detected; the block must agree.
    pub fn from_debug_offsets(major: u64, minor: u64, buf: &[u8]) -> Result<Layout> {
        let d = parse_debug_offsets(buf)?;
        let (dmaj, dmin) = ((d.version >> 24) & 0xff, (d.version >> 16) & 0xff);
        if (dmaj, dmin) != (major, minor) {
            bail!("_Py_DebugOffsets says {dmaj}.{dmin} but the process looks like {major}.{minor}");
        }
        if d.free_threaded != 0 {
            bail!("free-threaded CPython {major}.{minor} is not supported (object layout differs)");
        }
        let slot = match minor {
            13 => LoopSlot::TstateField(d.ts_size),
            14 => LoopSlot::AsyncioDebug,
            _ => bail!("CPython {major}.{minor} is not supported (3.8–3.14 are)"),
        };
        Ok(Layout {
            minor,
            interp_threads_head: d.interp_threads_head,
            ts_next: d.ts_next,
            ts_interp: d.ts_interp,
            ts_thread_id: d.ts_thread_id,
            ts_native_tid: Some(d.ts_native_tid),
            ts_dict: None,
            slot,
            dict: DictLayout::Post311 { values_off: 8 },
            str_ascii_size: 40,
            tuple_items: if minor >= 14 { 32 } else { 24 },
            instance_dict: InstanceDict::Inline { cached_keys: 880 },
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

/// The fields of `_Py_DebugOffsets` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugOffsets {
    pub version: u64,
    pub free_threaded: u64,
    pub interp_threads_head: u64,
    pub ts_size: u64,
    pub ts_next: u64,
    pub ts_interp: u64,
    pub ts_thread_id: u64,
    pub ts_native_tid: u64,
}

/// Byte position of `interpreter_state` in `_Py_DebugOffsets`: cookie[8], version,
/// free_threaded, then `runtime_state {size, finalizing, interpreters_head}`. Same in the
/// 3.13.0 DWARF (gdb: `interpreter_state.threads_head` @72) and the 3.14 header.
const INTERP_STATE_POS: u64 = 48;
/// `interpreter_state` starts `{size, id, next, threads_head, ...}` in 3.13 and 3.14.
const INTERP_THREADS_HEAD_IDX: u64 = 3;

/// Parses `_Py_DebugOffsets`. The `thread_state` sub-struct is located by its content
/// rather than a fixed position, because 3.14 inserted fields into `interpreter_state`
/// (threads_main, ...) ahead of it: it is the first 8-aligned run `{size, prev=0, next=8,
/// interp=16}` after `interpreter_state` starts (`PyThreadState` begins with prev, next,
/// interp in both versions). Its position on 3.13.0 is 152 (gdb).
pub fn parse_debug_offsets(buf: &[u8]) -> Result<DebugOffsets> {
    if buf.get(..8) != Some(&b"xdebugpy"[..]) {
        bail!("_PyRuntime does not start with the \"xdebugpy\" debug-offsets cookie");
    }
    let get = |pos: u64| u64_at(buf, pos);
    let (Some(version), Some(free_threaded)) = (get(8), get(16)) else {
        bail!("_Py_DebugOffsets block is truncated");
    };
    let Some(interp_threads_head) = get(INTERP_STATE_POS + 8 * INTERP_THREADS_HEAD_IDX) else {
        bail!("_Py_DebugOffsets block is truncated");
    };
    if !(8..1 << 20).contains(&interp_threads_head) || interp_threads_head % 8 != 0 {
        bail!(
            "implausible interpreter_state.threads_head {interp_threads_head} in _Py_DebugOffsets"
        );
    }
    let mut pos = INTERP_STATE_POS + 8 * (INTERP_THREADS_HEAD_IDX + 1);
    // Bounded: the interpreter_state sub-struct has at most a few dozen fields.
    while pos < INTERP_STATE_POS + 8 * 48 {
        let w = |i: u64| get(pos + 8 * i);
        if let (Some(size), Some(0), Some(8), Some(16)) = (w(0), w(1), w(2), w(3)) {
            let (Some(tid), Some(ntid)) = (w(5), w(6)) else {
                break;
            };
            // saturating: `o` is unvalidated target data.
            let plausible = |o: u64| o >= 24 && o.saturating_add(8) <= size && o.is_multiple_of(8);
            if (64..8192).contains(&size) && plausible(tid) && plausible(ntid) {
                return Ok(DebugOffsets {
                    version,
                    free_threaded,
                    interp_threads_head,
                    ts_size: size,
                    ts_next: 8,
                    ts_interp: 16,
                    ts_thread_id: tid,
                    ts_native_tid: ntid,
                });
            }
        }
        pos += 8;
    }
    bail!("could not find the thread_state offsets in _Py_DebugOffsets")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 3.13.0 values read with gdb from its DWARF (see the module doc).
    fn debug_block_3130() -> Vec<u8> {
        let mut words: Vec<u64> = vec![0; 80];
        words[1] = 0x030d00f0; // PY_VERSION_HEX 3.13.0 final
        words[3..6].copy_from_slice(&[100_000, 600, 632]); // runtime_state
                                                           // interpreter_state: size, id, next, threads_head, gc, ... (13 fields)
        words[6..19].copy_from_slice(&[9000, 7256, 7264, 7344, 1, 2, 3, 4, 16, 5, 0, 6, 7]);
        // thread_state: size, prev, next, interp, current_frame, thread_id, native_thread_id
        words[19..26].copy_from_slice(&[304, 0, 8, 16, 72, 152, 160]);
        let mut b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        b[..8].copy_from_slice(b"xdebugpy");
        b
    }

    #[test]
    fn parses_313_debug_offsets() {
        let b = debug_block_3130();
        let d = parse_debug_offsets(&b).unwrap();
        assert_eq!(
            (
                d.interp_threads_head,
                d.ts_size,
                d.ts_thread_id,
                d.ts_native_tid
            ),
            (7344, 304, 152, 160)
        );
        let l = Layout::from_debug_offsets(3, 13, &b).unwrap();
        assert_eq!(l.slot, LoopSlot::TstateField(304));
        assert!(Layout::from_debug_offsets(3, 12, &b).is_err());
    }

    #[test]
    fn rejects_garbage_debug_offsets() {
        assert!(parse_debug_offsets(&[0u8; 600]).is_err());
        let mut b = debug_block_3130();
        b.truncate(100);
        assert!(parse_debug_offsets(&b).is_err());
        let mut b = debug_block_3130();
        b[16] = 1; // free-threaded
        assert!(Layout::from_debug_offsets(3, 13, &b).is_err());
    }

    #[test]
    fn random_words_never_panic() {
        let mut s: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5000 {
            let mut b = debug_block_3130();
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let pos = 8 * (1 + (s % 40) as usize);
                let val = if s & 1 == 0 { s } else { s % 512 };
                b[pos..pos + 8].copy_from_slice(&val.to_le_bytes());
            }
            let _ = Layout::from_debug_offsets(3, 13, &b);
            let _ = Layout::from_debug_offsets(3, 14, &b);
        }
    }

    #[test]
    fn table_covers_38_to_312() {
        for minor in 8..=12 {
            assert!(Layout::from_table(minor).is_some());
        }
        assert!(Layout::from_table(7).is_none() && Layout::from_table(13).is_none());
    }
}
