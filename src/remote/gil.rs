//! The GIL: where its state is (a futex wait inside it is a wait for the GIL) and which thread
//! holds it (cpython-notes §2.5, §4.2).
//!
//! - 3.8–3.11: the state is `_PyRuntime.ceval.gil`; the holder is
//!   `_PyRuntime.gilstate.tstate_current`, the thread state running Python now (NULL while the
//!   GIL is free).
//! - 3.12+: each interpreter points at its GIL (`interp->ceval.gil`); the holder is its
//!   `last_holder`, valid while `locked` is set.

use std::ops::Range;

use super::mem::{plausible_obj, read_bytes, read_u64, u32_at, u64_at, Memory};
use super::offsets::{GilLayout, GIL_LAST_HOLDER, GIL_LOCKED, GIL_STATE_SIZE};
use super::Interpreter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gil {
    /// Address of the `_gil_runtime_state`.
    state: Option<u64>,
    /// ≤3.11: address of `gilstate.tstate_current`.
    current: Option<u64>,
}

impl Gil {
    pub fn new<M: Memory + ?Sized>(mem: &M, spy: &Interpreter) -> Gil {
        let rt = spy.runtime.address;
        match spy.layout.gil {
            GilLayout::InRuntime { gil, holder } => Gil {
                state: rt.checked_add(gil),
                current: rt.checked_add(holder),
            },
            GilLayout::InterpPointer { ptr } => Gil {
                state: spy
                    .interp
                    .checked_add(ptr)
                    .and_then(|a| read_u64(mem, a))
                    .filter(|&g| plausible_obj(g)),
                current: None,
            },
        }
    }

    /// The address range of the GIL's state.
    pub fn range(&self) -> Option<Range<u64>> {
        let s = self.state?;
        Some(s..s.checked_add(GIL_STATE_SIZE)?)
    }

    /// The region [`Gil::holder`] reads, to fetch it ahead with other reads.
    pub fn holder_region(&self) -> Option<(u64, usize)> {
        match self.current {
            Some(at) => Some((at, 8)),
            None => Some((self.state?, (GIL_LOCKED + 4) as usize)),
        }
    }

    /// The thread state holding the GIL now; `None` when it is free or unreadable.
    pub fn holder<M: Memory + ?Sized>(&self, mem: &M) -> Option<u64> {
        let holder = match self.current {
            Some(at) => read_u64(mem, at)?,
            None => {
                let b = read_bytes(mem, self.state?, (GIL_LOCKED + 4) as usize)?;
                if u32_at(&b, GIL_LOCKED)? == 0 {
                    return None;
                }
                u64_at(&b, GIL_LAST_HOLDER)?
            }
        };
        plausible_obj(holder).then_some(holder)
    }
}
