//! Whether the interpreter is collecting garbage right now: the `collecting` flag of its GC
//! state (`struct _gc_runtime_state`), one 4-byte read. CPython sets it for the whole of a
//! collection, automatic or `gc.collect()`, and the collecting thread holds the GIL throughout,
//! so a sample that sees the flag blames the GIL holder's time on the collector.
//!
//! Where the flag lives (LP64: x86-64 and aarch64):
//! - 3.8: in `_PyRuntime.gc` (the GC state moved into the interpreter in 3.9): `collecting` is
//!   `_PyRuntime` + 544 (DWARF of CPython 3.8.18: `gc` at 344, `collecting` 200 into it).
//! - 3.9–3.12: `PyInterpreterState.gc`: `collecting` at interp + 816 (3.9, 3.10), 848 (3.11),
//!   312 (3.12) (DWARF of 3.9.18, 3.10.13, 3.11.7, 3.12.1; 200 into the GC state in each).
//! - 3.13+: from `_Py_DebugOffsets` at the start of `_PyRuntime` (`pycore_debug_offsets.h`):
//!   `interpreter_state.gc` (the 5th field of `interpreter_state` in 3.13, the 6th from 3.14,
//!   which inserted `threads_main` before it) plus `gc.collecting`. The `gc` sub-struct sits at
//!   byte 568 of `_Py_DebugOffsets` in 3.13, 648 in 3.14 (set_object was added before it) and
//!   752 in 3.15 (values checked in the `.PyRuntime` sections of CPython 3.13.0, 3.13.18,
//!   3.14.10 and 3.15.2: interp gc 7400/7408/7400, collecting 200/192/112).

use super::mem::{read_bytes, u32_at, u64_at, Memory};

/// Where `collecting` is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcFlag {
    addr: u64,
}

/// Offset of `collecting` from the interpreter state (3.9–3.12) or `_PyRuntime` (3.8).
fn table_offset(minor: u64) -> Option<(Base, u64)> {
    Some(match minor {
        8 => (Base::Runtime, 544),
        9 | 10 => (Base::Interp, 816),
        11 => (Base::Interp, 848),
        12 => (Base::Interp, 312),
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Runtime,
    Interp,
}

/// `interpreter_state` starts at byte 48 of `_Py_DebugOffsets` (cookie, version,
/// free_threaded, runtime_state{3}).
const INTERP_STATE_POS: u64 = 48;

/// Offset of `collecting` from the interpreter state, from the bytes of `_Py_DebugOffsets`
/// (3.13+); `None` when the block is not one of the layouts above or its values are
/// implausible.
pub fn collecting_offset_from_debug(minor: u64, debug: &[u8]) -> Option<u64> {
    if debug.get(..8) != Some(&b"xdebugpy"[..]) {
        return None;
    }
    let version = u64_at(debug, 8)?;
    if (version >> 24) & 0xff != 3 || (version >> 16) & 0xff != minor {
        return None;
    }
    let (gc_field, gc_struct) = match minor {
        13 => (4, 568),
        14 => (5, 648),
        15 => (5, 752),
        _ => return None,
    };
    let interp_gc = u64_at(debug, INTERP_STATE_POS + 8 * gc_field)?;
    let size = u64_at(debug, gc_struct)?;
    let collecting = u64_at(debug, gc_struct + 8)?;
    let interp_size = u64_at(debug, INTERP_STATE_POS)?;
    let plausible = (16..4096).contains(&size)
        && collecting % 4 == 0
        && collecting + 4 <= size
        && interp_gc % 8 == 0
        && interp_gc + size <= interp_size;
    plausible.then_some(interp_gc + collecting)
}

impl GcFlag {
    /// Find the flag of the interpreter at `interp` for CPython `major.minor`. `runtime` is
    /// `_PyRuntime`'s address, needed on 3.8 and 3.13+ (without it those are not read).
    /// `None` when the version is not one of the layouts above, or the flag reads as anything
    /// but 0 or 1 (a layout that does not match this build).
    pub fn locate<M: Memory + ?Sized>(
        mem: &M,
        interp: u64,
        runtime: Option<u64>,
        (major, minor): (u64, u64),
    ) -> Option<GcFlag> {
        if major != 3 {
            return None;
        }
        let addr = match table_offset(minor) {
            Some((Base::Interp, off)) => interp.checked_add(off)?,
            Some((Base::Runtime, off)) => runtime?.checked_add(off)?,
            None => {
                // _Py_DebugOffsets is ~600 (3.13) to ~1000 (3.15) bytes.
                let debug = read_bytes(mem, runtime?, 2048)?;
                interp.checked_add(collecting_offset_from_debug(minor, &debug)?)?
            }
        };
        let flag = GcFlag { addr };
        flag.collecting(mem).map(|_| flag)
    }

    /// Whether a collection is running now; `None` on a failed or implausible read.
    pub fn collecting<M: Memory + ?Sized>(&self, mem: &M) -> Option<bool> {
        match u32_at(&read_bytes(mem, self.addr, 4)?, 0)? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

/// Mark the thread that ran the collection: the one holding the GIL in this sample.
pub fn mark_collector(threads: &mut [crate::sample::ThreadSample], collecting: Option<bool>) {
    if collecting == Some(true) {
        if let Some(t) = threads.iter_mut().find(|t| t.gil) {
            t.gc = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `_Py_DebugOffsets` block with the values of the given fields set.
    fn block(version: u64, words: &[(u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[..8].copy_from_slice(b"xdebugpy");
        b[8..16].copy_from_slice(&version.to_le_bytes());
        for (pos, v) in words {
            b[*pos as usize..*pos as usize + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// The values read from the `.PyRuntime` sections of Debian's 3.13.18, 3.14.10, 3.15.2.
    #[test]
    fn debug_offsets_per_minor() {
        let b313 = block(
            0x030d12f0,
            &[(48, 194984), (80, 7400), (568, 240), (576, 200)],
        );
        assert_eq!(collecting_offset_from_debug(13, &b313), Some(7600));
        let b314 = block(
            0x030e0af0,
            &[(48, 225864), (88, 7408), (648, 264), (656, 192)],
        );
        assert_eq!(collecting_offset_from_debug(14, &b314), Some(7600));
        let b315 = block(
            0x030f02f0,
            &[(48, 226240), (88, 7400), (752, 176), (760, 112)],
        );
        assert_eq!(collecting_offset_from_debug(15, &b315), Some(7512));
    }

    #[test]
    fn implausible_debug_offsets_are_refused() {
        let ok = [(48, 194984), (80, 7400), (568, 240), (576, 200)];
        // The version in the block must be the process's.
        assert_eq!(
            collecting_offset_from_debug(14, &block(0x030d12f0, &ok)),
            None
        );
        // No cookie.
        let mut b = block(0x030d12f0, &ok);
        b[0] = b'X';
        assert_eq!(collecting_offset_from_debug(13, &b), None);
        // `collecting` past the struct, a struct past the interpreter, truncated blocks.
        let past = [(48, 194984), (80, 7400), (568, 240), (576, 240)];
        assert_eq!(
            collecting_offset_from_debug(13, &block(0x030d12f0, &past)),
            None
        );
        let huge = [(48, 7500), (80, 7400), (568, 240), (576, 200)];
        assert_eq!(
            collecting_offset_from_debug(13, &block(0x030d12f0, &huge)),
            None
        );
        assert_eq!(collecting_offset_from_debug(13, &b313_prefix()), None);
        assert_eq!(
            collecting_offset_from_debug(16, &block(0x03100000, &ok)),
            None
        );
    }

    fn b313_prefix() -> Vec<u8> {
        block(
            0x030d12f0,
            &[(48, 194984), (80, 7400), (568, 240), (576, 200)],
        )[..500]
            .to_vec()
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..200 {
            let mut b = vec![0u8; 900];
            for byte in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            b[..8].copy_from_slice(b"xdebugpy");
            for minor in 13..=15 {
                let _ = collecting_offset_from_debug(minor, &b);
            }
        }
    }

    #[test]
    fn the_gil_holder_is_the_collector() {
        use crate::sample::ThreadSample;
        let mut threads = vec![
            ThreadSample {
                tid: 1,
                ..Default::default()
            },
            ThreadSample {
                tid: 2,
                gil: true,
                ..Default::default()
            },
        ];
        mark_collector(&mut threads, Some(false));
        assert!(!threads.iter().any(|t| t.gc));
        mark_collector(&mut threads, Some(true));
        assert!(!threads[0].gc && threads[1].gc);
    }
}
