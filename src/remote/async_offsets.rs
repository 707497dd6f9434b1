//! Per-version layouts of what the task reader reads: `TaskObj` (the `_asyncio` C module),
//! coroutine objects, the frames they suspend in, and code objects (x86-64, GIL build).
//!
//! 3.8–3.13 were read with gdb from the DWARF of the pyenv builds 3.8.18, 3.9.18, 3.10.13,
//! 3.11.7, 3.12.1 and 3.13.0 (`p (long)&((T*)0)->field` on libpython and on each `_asyncio`
//! .so; frame-state enums with `p (int)FRAME_SUSPENDED`; opcodes from each version's `opcode`
//! module). 3.14 is from its headers (`pycore_interpframe_structs.h`, `pycore_frame.h`,
//! `cpython/code.h`) and cpython-notes §3.3; 3.15 from its frame-state renumbering
//! (`pycore_frame.h`) and `gen_getyieldfrom`. On 3.13+ the frame, code, generator, tuple and
//! string offsets come from `_Py_DebugOffsets` ([`AsyncLayout::for_runtime`]).
//!
//! The `TaskObj` offsets are only a starting point: they drift between patch releases, so
//! `tasks` self-calibrates them on a live task (3.14+ start from `.AsyncioDebug`).

use super::strings::StrLayout;

/// `TaskObj` fields (cpython-notes §3.1). `task_fut_waiter` is the word before `task_coro` in
/// every version, and `task_name` the word after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_loop` (`fut_loop`): 16 everywhere.
    pub loop_: u64,
    /// `task_state` (`fut_state`, a C enum: 0 pending, 1 cancelled, 2 finished); `None` when
    /// calibration could not confirm it.
    pub state: Option<u64>,
    pub coro: u64,
    pub name: u64,
    /// 3.14: `task_node`, the task's `llist_node` in its thread's list of tasks.
    pub node: Option<u64>,
}

impl TaskOffsets {
    pub fn fut_waiter(&self) -> u64 {
        self.coro - 8
    }

    /// Bytes of a task to read so one read covers every field used.
    pub fn read_len(&self) -> usize {
        let end = [Some(self.name), self.state, self.node.map(|n| n + 8)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.name);
        (end + 8) as usize
    }
}

/// How a coroutine keeps its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenFrame {
    /// ≤3.10: `cr_frame`, a pointer to a heap `PyFrameObject` (NULL once finished).
    Pointer { at: u64 },
    /// 3.11+: `cr_iframe`, an `_PyInterpreterFrame` inside the coroutine, and `cr_frame_state`.
    Inline { at: u64, state: u64 },
}

/// Where a frame keeps its value stack's top (the object a suspended `await` waits on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackTop {
    /// 3.8/3.9: `f_stacktop`, a pointer one past the top (NULL while executing).
    TopPointer { at: u64 },
    /// 3.10: `f_valuestack` pointer and `f_stackdepth` (int).
    Depth { valuestack: u64, depth: u64 },
    /// 3.11–3.13: `stacktop` (int), counted in words from `localsplus`.
    Index { at: u64 },
    /// 3.14+: `stackpointer`, a pointer one past the top; tagged `_PyStackRef`s. The awaited
    /// object is `depth` slots below it: 1 on 3.14; 2 on 3.15, whose `SEND` keeps a NULL
    /// above it (`_PyFrame_StackPeek(frame, 2)` in `gen_getyieldfrom`).
    Pointer { at: u64, depth: u64 },
}

/// Whether a frame is suspended in an `await`, by version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspension {
    /// 3.8/3.9: `f_stacktop` set and the next instruction is `YIELD_FROM` (72); executing is
    /// `f_executing` (char) set.
    YieldFrom38 { executing: u64 },
    /// 3.10: `f_state` (char) is `FRAME_SUSPENDED` (-1) and the next instruction `YIELD_FROM`.
    YieldFrom310 { state: u64 },
    /// 3.11/3.12: frame state `FRAME_SUSPENDED` (-1) and the code unit after `prev_instr` is
    /// `RESUME` (151; or 3.11's quickened `RESUME_QUICK` 150, 3.12's `INSTRUMENTED_RESUME` 240)
    /// with oparg ≥ 2 (after `yield from`/`await`).
    Resume { opcodes: [u8; 2] },
    /// 3.13/3.14: frame state `FRAME_SUSPENDED_YIELD_FROM` (-1).
    State,
    /// 3.15: frame state `FRAME_SUSPENDED_YIELD_FROM` (2) or `..._LOCKED` (3).
    State315,
}

/// How a 3.11+ coroutine's `gi_frame_state` numbers its states (`pycore_frame.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenStates {
    /// 3.11–3.14: created is negative (given), suspended states are negative, executing 0,
    /// completed and cleared positive.
    Signed { created: i8 },
    /// 3.15 renumbered them: created 0, suspended 1–3, executing 4, cleared 5.
    Renumbered,
}

/// Frame fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameOffsets {
    /// `f_code` / `f_executable` (3.14: a tagged `_PyStackRef`, low bits masked).
    pub code: u64,
    /// ≤3.10: `f_lasti` (int; bytes on 3.8/3.9, code units on 3.10). 3.11+: `prev_instr`
    /// (3.11/3.12) or `instr_ptr` (3.13+), a pointer into the code object's bytecode.
    pub instr: u64,
    pub stack: StackTop,
    /// Start of `localsplus` (3.11+; the stack index counts from here).
    pub localsplus: u64,
    pub suspension: Suspension,
    /// How 3.11+ coroutines number their frame states.
    pub states: GenStates,
    /// Bytes of the frame to read so one read covers every field used.
    pub header: u64,
}

/// Code object fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeOffsets {
    pub filename: u64,
    pub name: u64,
    /// `co_qualname` (3.11+).
    pub qualname: Option<u64>,
    /// `co_firstlineno` (int).
    pub firstlineno: u64,
    /// `co_lnotab` (3.8/3.9) or `co_linetable` (3.10+), a bytes object.
    pub linetable: u64,
    /// ≤3.10: `co_code`, a bytes object. 3.11+: `co_code_adaptive`, inline bytecode.
    pub bytecode: Bytecode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bytecode {
    Object { at: u64 },
    Inline { at: u64 },
}

/// `PyBytesObject.ob_sval` (after `ob_shash`), all versions.
pub const BYTES_DATA: u64 = 32;
/// `PyModuleObject.md_dict`, all versions.
pub const MODULE_DICT: u64 = 16;
/// `PyWeakReference.wr_object`, all versions.
pub const WR_OBJECT: u64 = 16;
/// `futureiterobject.future` and `PyCoroWrapper.cw_coroutine`, all versions.
pub const ITER_TARGET: u64 = 16;
/// `YIELD_FROM` (3.8–3.10).
pub const YIELD_FROM: u8 = 72;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncLayout {
    pub minor: u64,
    pub strs: StrLayout,
    pub tuple_items: u64,
    pub task: TaskOffsets,
    /// `cr_qualname`.
    pub coro_qualname: u64,
    pub gen_frame: GenFrame,
    pub frame: FrameOffsets,
    pub code: CodeOffsets,
}

impl AsyncLayout {
    pub fn for_minor(minor: u64) -> Option<AsyncLayout> {
        // (task_state, task_coro)
        let (state, coro) = match minor {
            8 => (72, 112),
            9 => (80, 152),
            10 => (88, 160),
            11 | 12 => (88, 136),
            13 => (96, 120),
            14 | 15 => (104, 128),
            _ => return None,
        };
        let task = TaskOffsets {
            loop_: 16,
            state: Some(state),
            coro,
            name: coro + 8,
            node: (minor >= 14).then_some(152),
        };
        let heap_code = CodeOffsets {
            filename: 104,
            name: 112,
            qualname: None,
            firstlineno: 40,
            linetable: 120,
            bytecode: Bytecode::Object { at: 48 },
        };
        let inline_code = |firstlineno, adaptive| CodeOffsets {
            filename: 112,
            name: 120,
            qualname: Some(128),
            firstlineno,
            linetable: 136,
            bytecode: Bytecode::Inline { at: adaptive },
        };
        let (coro_qualname, gen_frame, frame, code) = match minor {
            8 | 9 => (
                56,
                GenFrame::Pointer { at: 16 },
                FrameOffsets {
                    code: 32,
                    instr: 104,
                    stack: StackTop::TopPointer { at: 72 },
                    localsplus: 360,
                    suspension: Suspension::YieldFrom38 { executing: 116 },
                    states: GenStates::Signed { created: 0 },
                    header: 120,
                },
                heap_code,
            ),
            10 => (
                48,
                GenFrame::Pointer { at: 16 },
                FrameOffsets {
                    code: 32,
                    instr: 96,
                    stack: StackTop::Depth {
                        valuestack: 64,
                        depth: 80,
                    },
                    localsplus: 352,
                    suspension: Suspension::YieldFrom310 { state: 108 },
                    states: GenStates::Signed { created: 0 },
                    header: 112,
                },
                heap_code,
            ),
            11 => (
                40,
                GenFrame::Inline { at: 80, state: 75 },
                interp_frame(32, StackTop::Index { at: 64 }, 72, resume(151, 150), -2),
                inline_code(72, 184),
            ),
            12 => (
                32,
                GenFrame::Inline { at: 72, state: 67 },
                interp_frame(0, StackTop::Index { at: 64 }, 72, resume(151, 240), -2),
                inline_code(68, 192),
            ),
            13 => (
                32,
                GenFrame::Inline { at: 72, state: 67 },
                interp_frame(0, StackTop::Index { at: 64 }, 72, Suspension::State, -3),
                inline_code(68, 200),
            ),
            14 => (
                32,
                GenFrame::Inline { at: 72, state: 67 },
                interp_frame(
                    0,
                    StackTop::Pointer { at: 64, depth: 1 },
                    80,
                    Suspension::State,
                    -3,
                ),
                inline_code(68, 208),
            ),
            _ => (
                32,
                GenFrame::Inline { at: 72, state: 67 },
                FrameOffsets {
                    states: GenStates::Renumbered,
                    ..interp_frame(
                        0,
                        StackTop::Pointer { at: 64, depth: 2 },
                        80,
                        Suspension::State315,
                        0,
                    )
                },
                inline_code(68, 208),
            ),
        };
        Some(AsyncLayout {
            minor,
            strs: StrLayout::for_minor(minor),
            tuple_items: if minor >= 14 { 32 } else { 24 },
            task,
            coro_qualname,
            gen_frame,
            frame,
            code,
        })
    }
}

fn resume(op: u8, instrumented: u8) -> Suspension {
    Suspension::Resume {
        opcodes: [op, instrumented],
    }
}

fn interp_frame(
    code: u64,
    stack: StackTop,
    localsplus: u64,
    suspension: Suspension,
    created: i8,
) -> FrameOffsets {
    FrameOffsets {
        code,
        instr: 56,
        stack,
        localsplus,
        suspension,
        states: GenStates::Signed { created },
        header: localsplus,
    }
}

impl AsyncLayout {
    /// The layout of the target: the table of its minor, with every offset the 3.13+ runtime
    /// publishes in `_Py_DebugOffsets` taken from there instead.
    pub fn for_runtime(rt: &super::runtime::Runtime) -> Option<AsyncLayout> {
        let mut l = AsyncLayout::for_minor(rt.version.minor)?;
        let Some(d) = &rt.debug else {
            return Some(l);
        };
        let c = &mut l.code;
        c.filename = d.get("code_object.filename");
        c.name = d.get("code_object.name");
        c.qualname = Some(d.get("code_object.qualname"));
        c.firstlineno = d.get("code_object.firstlineno");
        c.linetable = d.get("code_object.linetable");
        c.bytecode = Bytecode::Inline {
            at: d.get("code_object.co_code_adaptive"),
        };
        let f = &mut l.frame;
        f.code = d.get("interpreter_frame.executable");
        f.instr = d.get("interpreter_frame.instr_ptr");
        f.localsplus = d.get("interpreter_frame.localsplus");
        f.header = f.localsplus;
        if let StackTop::Pointer { at, .. } = &mut f.stack {
            *at = d.get("interpreter_frame.stackpointer");
        }
        l.tuple_items = d.get("tuple_object.ob_item");
        l.strs.ascii_data = d.get("unicode_object.asciiobject_size");
        if d.has("unicode_object.compactunicodeobject_size") {
            l.strs.compact_data = d.get("unicode_object.compactunicodeobject_size");
        }
        if d.has("gen_object.gi_iframe") {
            l.gen_frame = GenFrame::Inline {
                at: d.get("gen_object.gi_iframe"),
                state: d.get("gen_object.gi_frame_state"),
            };
        }
        Some(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_minor_has_a_layout() {
        for minor in 8..=15 {
            let l = AsyncLayout::for_minor(minor).unwrap();
            assert_eq!(l.task.fut_waiter() + 16, l.task.name);
            assert!(l.task.read_len() as u64 > l.task.name);
        }
        assert!(AsyncLayout::for_minor(7).is_none());
    }
}
