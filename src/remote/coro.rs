//! Where a coroutine is suspended, and what it awaits: the await chain of a task.
//!
//! A coroutine suspended in `await x` keeps `x`'s awaitable (a coroutine, or the `FutureIter`
//! of a future) on top of its frame's value stack. That is what CPython's own `cr_await`
//! returns (`_PyGen_yf`), and we decide "suspended in an await" the same way, per version (see
//! `Suspension`): 3.8–3.10 check that the next instruction is `YIELD_FROM`, 3.11/3.12 that it
//! is `RESUME` with an oparg of 2 or more, 3.13+ read the frame state
//! `FRAME_SUSPENDED_YIELD_FROM` (renumbered in 3.15, which also keeps a NULL above the awaited
//! object). Following the stack top from coroutine to coroutine gives the
//! chain, down to the future (or task) at its end.
//!
//! Frames: ≤3.10 a coroutine points at a heap `PyFrameObject` (`cr_frame`); 3.11+ the frame is
//! inline in the coroutine (`cr_iframe`). Every object on the way is type-checked (`kinds`);
//! a failed check ends the chain rather than guessing.

use std::collections::HashMap;

use super::mem::Memory;

use super::async_offsets::{
    AsyncLayout, GenFrame, GenStates, StackTop, Suspension, ITER_TARGET, YIELD_FROM,
};
use super::code::CodeCache;
use super::kinds::{Kind, Kinds};
use super::mem::{plausible_obj, read_bytes, read_u64, u32_at, u64_at, u8_at};
use super::strings::{read_head, str_from};

/// Longest chain we follow; real ones are a handful deep.
pub const MAX_DEPTH: usize = 64;
/// A value-stack index beyond this is garbage.
const MAX_STACK: u64 = 1 << 16;

/// One coroutine of an await chain: its function and the line it is at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The code's qualified name (3.11+) or name.
    pub function: String,
    pub file: String,
    /// The line it is suspended at (or running, for the running task); `None` when unknown or
    /// not started yet.
    pub line: Option<u32>,
    pub state: CoroState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoroState {
    Created,
    Suspended,
    Running,
}

/// What the innermost coroutine of a chain awaits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Awaited {
    /// A task (its address, for the caller to name).
    Task(u64),
    /// A future, by type name (`_asyncio.Future`, `_GatheringFuture`, ...).
    Future(String),
    /// Something else awaitable, by type name.
    Other(String),
}

/// One coroutine read.
struct Step {
    link: Link,
    /// The object its `await` waits on, when suspended in one.
    awaits: Option<u64>,
}

/// The await chain from the coroutine at `coro` inward: the coroutines (outermost first) and
/// what the innermost awaits. Empty when `coro` is finished or unreadable.
pub fn await_chain<M: Memory + ?Sized>(
    mem: &M,
    l: &AsyncLayout,
    kinds: &mut Kinds,
    codes: &mut CodeCache,
    coro: u64,
) -> (Vec<Link>, Option<Awaited>) {
    let mut links = Vec::new();
    let mut obj = coro;
    for _ in 0..MAX_DEPTH {
        let Some((tp, kind)) = kinds.of_object(mem, obj, l.tuple_items) else {
            break;
        };
        match kind {
            Kind::Coroutine | Kind::Generator => {
                let Some(step) = read_step(mem, l, kinds, codes, obj) else {
                    break;
                };
                links.push(step.link);
                match step.awaits {
                    Some(next) => obj = next,
                    None => return (links, None),
                }
            }
            Kind::CoroWrapper => match read_u64(mem, obj + ITER_TARGET) {
                Some(next) => obj = next,
                None => break,
            },
            Kind::FutureIter => {
                let Some(fut) = read_u64(mem, obj + ITER_TARGET) else {
                    break;
                };
                return (links, describe(mem, l, kinds, fut));
            }
            Kind::Task | Kind::PyTask => return (links, Some(Awaited::Task(obj))),
            Kind::Future => {
                return (links, kinds.type_name(mem, tp).map(Awaited::Future));
            }
            Kind::Other(name) => return (links, Some(Awaited::Other(name))),
            _ => break,
        }
    }
    (links, None)
}

/// A future or task awaited through its `FutureIter`.
fn describe<M: Memory + ?Sized>(
    mem: &M,
    l: &AsyncLayout,
    kinds: &mut Kinds,
    fut: u64,
) -> Option<Awaited> {
    let (tp, kind) = kinds.of_object(mem, fut, l.tuple_items)?;
    match kind {
        Kind::Task | Kind::PyTask => Some(Awaited::Task(fut)),
        Kind::Future => kinds.type_name(mem, tp).map(Awaited::Future),
        _ => None,
    }
}

/// Qualified names by the address of their `str`. A coroutine's `cr_qualname` is its
/// function's `__qualname__`, shared by every coroutine of that function and alive as long as
/// the function, so after the first read of a name only the coroutine is read. The cache is
/// cleared at every rescan (see `AsyncioReader::refresh`).
#[derive(Default)]
pub struct Qualnames {
    map: HashMap<u64, String>,
}

impl Qualnames {
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

/// The qualified name of a coroutine or generator (`cr_qualname`), after checking its type:
/// one read of the coroutine, plus one of the name the first time it is seen.
pub fn qualname<M: Memory + ?Sized>(
    mem: &M,
    l: &AsyncLayout,
    kinds: &mut Kinds,
    names: &mut Qualnames,
    coro: u64,
) -> Option<String> {
    if !plausible_obj(coro) {
        return None;
    }
    let b = read_bytes(mem, coro, (l.coro_qualname + 8) as usize)?;
    match kinds.of_type(mem, u64_at(&b, 8)?, l.tuple_items)? {
        Kind::Coroutine | Kind::Generator => {}
        _ => return None,
    }
    let q = u64_at(&b, l.coro_qualname)?;
    if let Some(name) = names.map.get(&q) {
        return Some(name.clone());
    }
    let head = read_head(mem, q)?;
    (kinds.of_type(mem, u64_at(&head, 8)?, l.tuple_items)? == Kind::Str).then_some(())?;
    let name = str_from(mem, l.strs, q, &head)?;
    if names.map.len() >= 4096 {
        names.map.clear();
    }
    names.map.insert(q, name.clone());
    Some(name)
}

/// The address of the frame of the coroutine at `coro` (type already checked): ≤3.10 its
/// `cr_frame` pointer (one read; `None` once it has finished), 3.11+ its inline `cr_iframe`
/// (no read). A stack walk that passed through this address ran the coroutine.
pub fn frame_address<M: Memory + ?Sized>(mem: &M, l: &AsyncLayout, coro: u64) -> Option<u64> {
    match l.gen_frame {
        GenFrame::Pointer { at } => {
            Some(read_u64(mem, coro.checked_add(at)?)?).filter(|f| plausible_obj(*f))
        }
        GenFrame::Inline { at, .. } => coro.checked_add(at),
    }
}

/// Reads one coroutine (type already checked): its frame's code and line, its state, and the
/// object it awaits when suspended in an await.
fn read_step<M: Memory + ?Sized>(
    mem: &M,
    l: &AsyncLayout,
    kinds: &mut Kinds,
    codes: &mut CodeCache,
    coro: u64,
) -> Option<Step> {
    let f = &l.frame;
    // Where the frame is, its bytes, and (3.11+) the coroutine's frame state.
    let (frame, fb, gen_state) = match l.gen_frame {
        GenFrame::Pointer { at } => {
            let frame = read_u64(mem, coro.checked_add(at)?)?;
            // NULL once the coroutine has finished.
            if !plausible_obj(frame) {
                return None;
            }
            (frame, read_bytes(mem, frame, f.header as usize)?, None)
        }
        GenFrame::Inline { at, state } => {
            let b = read_bytes(mem, coro, (at + f.header) as usize)?;
            let st = u8_at(&b, state)? as i8;
            (coro + at, b.get(at as usize..)?.to_vec(), Some(st))
        }
    };
    let mut code_addr = u64_at(&fb, f.code)?;
    if l.minor >= 14 {
        code_addr &= !3; // a tagged _PyStackRef
    }
    let code = codes.get(mem, l, kinds, code_addr)?.clone();
    // The instruction offset in bytes, and the state.
    let (offset, state) = match (l.gen_frame, f.suspension) {
        (GenFrame::Pointer { .. }, Suspension::YieldFrom38 { executing }) => {
            let lasti = u32_at(&fb, f.instr)? as i32;
            let state = if lasti < 0 {
                CoroState::Created
            } else if u8_at(&fb, executing)? != 0 {
                CoroState::Running
            } else {
                CoroState::Suspended
            };
            (u64::try_from(lasti).ok(), state)
        }
        (GenFrame::Pointer { .. }, Suspension::YieldFrom310 { state }) => {
            // 3.10 counts f_lasti in code units.
            let lasti = u32_at(&fb, f.instr)? as i32;
            let state = match u8_at(&fb, state)? as i8 {
                -2 => CoroState::Created,
                -1 => CoroState::Suspended,
                0 => CoroState::Running,
                _ => return None,
            };
            (u64::try_from(lasti).ok().map(|u| u * 2), state)
        }
        _ => {
            let st = gen_state?;
            let state = match f.states {
                GenStates::Signed { created } => match st {
                    0 => CoroState::Running,
                    s if s == created => CoroState::Created,
                    s if s < 0 => CoroState::Suspended,
                    _ => return None, // finished
                },
                GenStates::Renumbered => match st {
                    0 => CoroState::Created,
                    1..=3 => CoroState::Suspended,
                    4 => CoroState::Running,
                    _ => return None, // cleared
                },
            };
            let instr = u64_at(&fb, f.instr)?;
            (instr.checked_sub(code.bytecode), state)
        }
    };
    let line = match state {
        CoroState::Created => None,
        _ => offset.and_then(|o| code.line_at(l.minor, o)),
    };
    let awaits = match state {
        CoroState::Suspended => awaited(mem, l, frame, &fb, gen_state, offset, code.bytecode),
        _ => None,
    };
    Some(Step {
        link: Link {
            function: code.name,
            file: code.file,
            line,
            state,
        },
        awaits,
    })
}

/// The stack top of a frame suspended in an await (see the module doc for the checks).
fn awaited<M: Memory + ?Sized>(
    mem: &M,
    l: &AsyncLayout,
    frame: u64,
    fb: &[u8],
    gen_state: Option<i8>,
    offset: Option<u64>,
    bytecode: u64,
) -> Option<u64> {
    let f = &l.frame;
    let next_op = |at: u64| -> Option<(u8, u8)> {
        let b = read_bytes(mem, bytecode.checked_add(at)?, 2)?;
        Some((u8_at(&b, 0)?, u8_at(&b, 1)?))
    };
    let in_await = match f.suspension {
        // f_lasti was moved back onto the instruction before YIELD_FROM.
        Suspension::YieldFrom38 { .. } | Suspension::YieldFrom310 { .. } => {
            next_op(offset? + 2)?.0 == YIELD_FROM
        }
        Suspension::Resume { opcodes } => {
            let (op, arg) = next_op(offset? + 2)?;
            gen_state == Some(-1) && opcodes.contains(&op) && arg >= 2
        }
        Suspension::State => gen_state == Some(-1),
        Suspension::State315 => matches!(gen_state, Some(2 | 3)),
    };
    if !in_await {
        return None;
    }
    let slot = match f.stack {
        StackTop::TopPointer { at } => u64_at(fb, at)?.checked_sub(8)?,
        StackTop::Depth { valuestack, depth } => {
            let d = u32_at(fb, depth)? as u64;
            if d == 0 || d > MAX_STACK {
                return None;
            }
            u64_at(fb, valuestack)?.checked_add(8 * (d - 1))?
        }
        StackTop::Index { at } => {
            let top = u32_at(fb, at)? as u64;
            if top == 0 || top > MAX_STACK {
                return None;
            }
            frame.checked_add(f.localsplus + 8 * (top - 1))?
        }
        StackTop::Pointer { at, depth } => u64_at(fb, at)?.checked_sub(8 * depth)?,
    };
    let mut v = read_u64(mem, slot)?;
    if l.minor >= 14 {
        v &= !3;
    }
    plausible_obj(v).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::mem::fake::FakeMem;

    const CORO: u64 = 0x7f00_0000_1000;
    const FRAME: u64 = 0x7f00_0000_9000;

    /// ≤3.10 the frame is found through `cr_frame`; a finished coroutine (NULL) has none.
    #[test]
    fn a_3_8_coroutine_frame_is_its_cr_frame() {
        let l = AsyncLayout::for_minor(8).unwrap();
        let GenFrame::Pointer { at } = l.gen_frame else {
            panic!("3.8 keeps a frame pointer");
        };
        let mut m = FakeMem::default();
        let mut b = vec![0u8; at as usize + 8];
        b[at as usize..].copy_from_slice(&FRAME.to_le_bytes());
        m.put(CORO, b.clone());
        assert_eq!(frame_address(&m, &l, CORO), Some(FRAME));
        b[at as usize..].copy_from_slice(&0u64.to_le_bytes());
        m.put(CORO, b);
        assert_eq!(frame_address(&m, &l, CORO), None);
        // Unreadable: no frame, never a guess.
        assert_eq!(frame_address(&m, &l, CORO + 0x10_0000), None);
    }

    /// 3.11+ the frame is inside the coroutine: its address needs no read.
    #[test]
    fn a_3_12_coroutine_frame_is_inline() {
        let l = AsyncLayout::for_minor(12).unwrap();
        let GenFrame::Inline { at, .. } = l.gen_frame else {
            panic!("3.12 keeps its frame inline");
        };
        assert_eq!(
            frame_address(&FakeMem::default(), &l, CORO),
            Some(CORO + at)
        );
    }
}
