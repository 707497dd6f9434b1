//! Where a thread's Python frames are, per version, and how one frame reads.
//!
//! - 3.8–3.10: `tstate->frame` is the innermost `PyFrameObject`, a heap object; `f_back` links
//!   to its caller. The frame's `f_lasti` is the last instruction (bytes on 3.8/3.9, code units
//!   on 3.10).
//! - 3.11/3.12: `tstate->cframe->current_frame` is the innermost `_PyInterpreterFrame`; frames
//!   live in the thread's data stack (`tstate->datastack_chunk`, a list of `_PyStackChunk
//!   {previous, size, top, data[]}`) or, for generators and coroutines, inside their object.
//!   `prev_instr` points at the last instruction executed.
//! - 3.13+: `tstate->current_frame`; `instr_ptr` points at the instruction executing. 3.14+
//!   tag the low two bits of `f_executable` (a `_PyStackRef`).
//! - 3.12+ put shim frames on the C stack between Python frames (`owner` ≥ 3:
//!   `FRAME_OWNED_BY_CSTACK` on 3.12/3.13, `_INTERPRETER`/`_CSTACK` on 3.14, `_INTERPRETER`
//!   on 3.15); they are not Python code and are skipped.
//!
//! Offsets: ≤3.12 from gdb on the pyenv builds' DWARF (3.8.18, 3.9.18, 3.10.13, 3.11.7,
//! 3.12.1); 3.13+ from `_Py_DebugOffsets`. The live top of the current chunk,
//! `datastack_top`, is the word after `datastack_chunk` in every version (`pystate.h` declares
//! `datastack_chunk, datastack_top, datastack_limit` in a row; gdb: 296/304/312 on 3.11,
//! 232/240/248 on 3.12 and 3.13); they are only trusted when they lie inside the chunk.

use super::async_offsets::AsyncLayout;
use super::mem::{u32_at, u64_at, u8_at};
use super::runtime::Runtime;

/// How the thread state points at the innermost frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePtr {
    /// ≤3.10: `tstate->frame`.
    Frame { at: u64 },
    /// 3.11/3.12: `tstate->cframe` (on the C stack), then its `current_frame`.
    CFrame { at: u64, current: u64 },
    /// 3.13+: `tstate->current_frame`.
    Current { at: u64 },
}

/// Where an instruction position is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instr {
    /// ≤3.10: `f_lasti`, an int; `units`: counted in 2-byte code units (3.10) not bytes.
    Lasti { at: u64, units: bool },
    /// 3.11+: a pointer into the code object's bytecode.
    Pointer { at: u64 },
}

/// The layout the stack walker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackLayout {
    pub minor: u64,
    pub ts_interp: u64,
    pub ts_thread_id: u64,
    pub frame_ptr: FramePtr,
    /// 3.11+: `tstate->datastack_chunk` (and `datastack_top` the word after).
    pub chunk: Option<u64>,
    /// Bytes of a thread state covering every field above.
    pub tstate_len: usize,
    /// `f_back` / `previous`.
    pub previous: u64,
    /// `f_code` / `f_executable`.
    pub code: u64,
    pub instr: Instr,
    /// 3.11+: `owner` (a byte).
    pub owner: Option<u64>,
    /// Bytes of a frame covering every field above.
    pub header: usize,
    /// 3.14+: `f_executable` is a tagged `_PyStackRef`.
    pub tagged: bool,
    /// 3.14+: `interp->_code_object_generation`, bumped whenever a code object is freed.
    pub code_generation: Option<u64>,
}

/// `_PyStackChunk`: `previous` @0, `size` @8, `top` @16 (in words, saved when a newer chunk is
/// pushed), `data` @24.
pub const CHUNK_PREVIOUS: u64 = 0;
pub const CHUNK_SIZE: u64 = 8;
pub const CHUNK_TOP: u64 = 16;
pub const CHUNK_DATA: u64 = 24;
/// A chunk is 16 KiB unless one frame needs more; bigger than this is garbage.
pub const MAX_CHUNK: u64 = 1 << 26;

impl StackLayout {
    pub fn new(rt: &Runtime, al: &AsyncLayout) -> StackLayout {
        let minor = rt.version.minor;
        let d = rt.debug.as_ref();
        let (ts_interp, ts_thread_id, frame_ptr, chunk) = match (minor, d) {
            (_, Some(d)) => (
                d.get("thread_state.interp"),
                d.get("thread_state.thread_id"),
                FramePtr::Current {
                    at: d.get("thread_state.current_frame"),
                },
                Some(d.get("thread_state.datastack_chunk")),
            ),
            (..=10, None) => (16, 176, FramePtr::Frame { at: 24 }, None),
            (11, None) => (16, 152, FramePtr::CFrame { at: 56, current: 8 }, Some(296)),
            (_, None) => (16, 136, FramePtr::CFrame { at: 56, current: 0 }, Some(232)),
        };
        let ptr_at = match frame_ptr {
            FramePtr::Frame { at } | FramePtr::Current { at } | FramePtr::CFrame { at, .. } => at,
        };
        let tstate_len = [ts_interp, ts_thread_id, ptr_at, chunk.map_or(0, |c| c + 16)]
            .into_iter()
            .max()
            .unwrap_or(0)
            + 8;
        let (previous, instr, owner) = match (minor, d) {
            (_, Some(d)) => (
                d.get("interpreter_frame.previous"),
                Instr::Pointer {
                    at: d.get("interpreter_frame.instr_ptr"),
                },
                Some(d.get("interpreter_frame.owner")),
            ),
            (8 | 9, None) => (
                24,
                Instr::Lasti {
                    at: 104,
                    units: false,
                },
                None,
            ),
            (10, None) => (
                24,
                Instr::Lasti {
                    at: 96,
                    units: true,
                },
                None,
            ),
            (11, None) => (48, Instr::Pointer { at: 56 }, Some(69)),
            (_, None) => (8, Instr::Pointer { at: 56 }, Some(70)),
        };
        let code = al.frame.code;
        let instr_end = match instr {
            Instr::Lasti { at, .. } => at + 4,
            Instr::Pointer { at } => at + 8,
        };
        let header = [
            previous + 8,
            code + 8,
            instr_end,
            owner.map_or(0, |o| o + 1),
        ]
        .into_iter()
        .max()
        .unwrap_or(0) as usize;
        StackLayout {
            minor,
            ts_interp,
            ts_thread_id,
            frame_ptr,
            chunk,
            tstate_len: tstate_len as usize,
            previous,
            code,
            instr,
            owner,
            header,
            tagged: minor >= 14,
            code_generation: d
                .filter(|d| d.has("interpreter_state.code_object_generation"))
                .map(|d| d.get("interpreter_state.code_object_generation")),
        }
    }
}

/// What one frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame {
    pub code: u64,
    pub previous: u64,
    /// The instruction: a byte offset (≤3.10) or a pointer into the bytecode (3.11+).
    pub instr: i64,
    /// A shim frame (not Python code): skip it.
    pub shim: bool,
}

/// Parses the first bytes of a frame; `None` when they are inconsistent (a torn read).
pub fn parse_frame(l: &StackLayout, b: &[u8]) -> Option<RawFrame> {
    let mut code = u64_at(b, l.code)?;
    if l.tagged {
        code &= !3;
    }
    let previous = u64_at(b, l.previous)?;
    let instr = match l.instr {
        Instr::Lasti { at, units } => {
            let v = u32_at(b, at)? as i32 as i64;
            if units {
                v.checked_mul(2)?
            } else {
                v
            }
        }
        Instr::Pointer { at } => u64_at(b, at)? as i64,
    };
    let shim = match l.owner {
        None => false,
        Some(at) => {
            let owner = u8_at(b, at)?;
            // 3.11: thread, generator, frame object (0-2) only.
            match (l.minor, owner) {
                (_, 0..=2) => false,
                (12.., 3..=4) => true,
                _ => return None,
            }
        }
    };
    Some(RawFrame {
        code,
        previous,
        instr,
        shim,
    })
}

/// The innermost frame pointer in a thread state's bytes, or (3.11/3.12) the address of the
/// `_PyCFrame` field holding it.
pub enum Innermost {
    Frame(u64),
    /// Read `current_frame` at this address.
    Via(u64),
}

pub fn innermost(l: &StackLayout, ts: &[u8]) -> Option<Innermost> {
    Some(match l.frame_ptr {
        FramePtr::Frame { at } | FramePtr::Current { at } => Innermost::Frame(u64_at(ts, at)?),
        FramePtr::CFrame { at, current } => Innermost::Via(u64_at(ts, at)?.checked_add(current)?),
    })
}

/// `(datastack_chunk, datastack_top, datastack_limit)` of a thread state's bytes (3.11+).
pub fn chunk_of(l: &StackLayout, ts: &[u8]) -> Option<(u64, u64, u64)> {
    let at = l.chunk?;
    Some((u64_at(ts, at)?, u64_at(ts, at + 8)?, u64_at(ts, at + 16)?))
}

#[cfg(test)]
mod tests {
    use super::super::debug_offsets::{parse, tests as dt};
    use super::super::runtime::Version;
    use super::*;

    fn rt(minor: u64, words: Option<&[u64]>) -> Runtime {
        Runtime {
            pid: 1,
            version: Version {
                major: 3,
                minor,
                patch: None,
            },
            address: 0,
            debug: words.map(|w| parse(&dt::block(w), minor).unwrap()),
            image: String::new(),
        }
    }

    #[test]
    fn layouts_per_version() {
        let at = |minor, w| {
            let r = rt(minor, w);
            StackLayout::new(&r, &AsyncLayout::for_runtime(&r).unwrap())
        };
        let l = at(9, None);
        assert_eq!(l.frame_ptr, FramePtr::Frame { at: 24 });
        assert_eq!((l.previous, l.code, l.header), (24, 32, 108));
        let l = at(11, None);
        assert_eq!(
            (l.previous, l.code, l.owner, l.chunk),
            (48, 32, Some(69), Some(296))
        );
        assert_eq!(l.tstate_len, 320);
        let l = at(14, Some(dt::W_31410));
        assert_eq!(l.frame_ptr, FramePtr::Current { at: 72 });
        assert_eq!(
            (l.chunk, l.code_generation, l.tagged),
            (Some(232), Some(7992), true)
        );
        assert_eq!((l.previous, l.code, l.owner), (8, 0, Some(74)));
        let l = at(15, Some(dt::W_3152));
        assert_eq!((l.chunk, l.ts_thread_id), (Some(256), 176));
    }

    #[test]
    fn frames_parse_and_shims_skip() {
        let r = rt(14, Some(dt::W_31410));
        let l = StackLayout::new(&r, &AsyncLayout::for_runtime(&r).unwrap());
        let mut b = vec![0u8; l.header];
        b[0..8].copy_from_slice(&0x7000_0003u64.to_le_bytes());
        b[8..16].copy_from_slice(&0x6000u64.to_le_bytes());
        b[74] = 4;
        let f = parse_frame(&l, &b).unwrap();
        assert_eq!((f.code, f.previous, f.shim), (0x7000_0000, 0x6000, true));
        b[74] = 9;
        assert_eq!(parse_frame(&l, &b), None);
        assert_eq!(parse_frame(&l, &b[..10]), None);
    }
}
