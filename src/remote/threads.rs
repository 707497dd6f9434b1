//! Walking an interpreter's `PyThreadState` list.
//!
//! Each thread state is copied with one read that covers every field we use (including
//! the 3.13/3.14 running-loop slot that sits past `PyThreadState`). The walk is bounded
//! (at most `MAX_THREADS`, no revisits) and stops at the first node that does not read or
//! does not point back at our interpreter: the target mutates the list while we walk it
//! (threads starting and exiting), and a stale `next` pointer must not take us into freed
//! memory.

use std::collections::HashSet;

use super::mem::Memory;
use anyhow::{anyhow, Result};

use super::mem::{plausible_obj, read_bytes, read_u64, u64_at};
use super::offsets::Layout;

/// Hard bound on the thread list length we follow.
pub const MAX_THREADS: usize = 4096;

/// The fields of one thread state, as copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawThread {
    pub tstate: u64,
    /// `thread_id`: pthread_t.
    pub pthread_id: u64,
    /// `native_thread_id` on 3.11+ (0 until the thread has started).
    pub native_tid: Option<u64>,
    /// `tstate->dict` (3.8–3.12).
    pub dict: Option<u64>,
    /// The running-loop slot value (3.13+), when its offset is known.
    pub slot: Option<u64>,
}

/// How many times `walk` re-reads a list that did not end in a NULL `next`.
const WALK_ATTEMPTS: usize = 4;

/// Walks the thread states of the interpreter at `interp`, re-walking (a few times) when
/// the walk was cut short by a node that no longer validates: a thread exiting while we
/// read frees its state, and the walk would otherwise silently miss every thread behind it.
/// `slot_off` is the offset of the running-loop pointer inside the thread state, when the
/// version keeps it there; `main_pthread`, once known, is a thread every whole walk contains.
///
/// Errors only when the list head itself cannot be read (the process is gone or the
/// interpreter address is wrong); a list that stays damaged yields the longest walk.
pub fn walk<M: Memory + ?Sized>(
    mem: &M,
    layout: &Layout,
    interp: u64,
    slot_off: Option<u64>,
    main_pthread: Option<u64>,
) -> Result<Vec<RawThread>> {
    let mut best: Vec<RawThread> = Vec::new();
    for _ in 0..WALK_ATTEMPTS {
        let (threads, clean) = walk_once(mem, layout, interp, slot_off)?;
        // A freed node can also end in a NULL `next`: a walk that misses the main thread (the
        // oldest, so the list's tail) was cut short too.
        let whole = main_pthread.is_none_or(|p| threads.iter().any(|t| t.pthread_id == p));
        if clean && whole {
            return Ok(threads);
        }
        if threads.len() > best.len() {
            best = threads;
        }
    }
    Ok(best)
}

/// One pass over the list; `true` when it ended at a NULL `next`.
fn walk_once<M: Memory + ?Sized>(
    mem: &M,
    layout: &Layout,
    interp: u64,
    slot_off: Option<u64>,
) -> Result<(Vec<RawThread>, bool)> {
    let head_addr = interp
        .checked_add(layout.interp_threads_head)
        .ok_or_else(|| anyhow!("bad interpreter address 0x{interp:x}"))?;
    let mut ts = read_u64(mem, head_addr)
        .ok_or_else(|| anyhow!("cannot read the thread list head of interpreter 0x{interp:x}"))?;
    let len = layout.tstate_read_len(slot_off);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while ts != 0 && out.len() < MAX_THREADS && plausible_obj(ts) && seen.insert(ts) {
        let Some(buf) = read_bytes(mem, ts, len) else {
            break;
        };
        // A freed or reused node no longer points back at our interpreter.
        if u64_at(&buf, layout.ts_interp) != Some(interp) {
            break;
        }
        let Some(pthread_id) = u64_at(&buf, layout.ts_thread_id) else {
            break;
        };
        out.push(RawThread {
            tstate: ts,
            pthread_id,
            native_tid: layout.ts_native_tid.and_then(|o| u64_at(&buf, o)),
            dict: layout.ts_dict.and_then(|o| u64_at(&buf, o)),
            slot: slot_off.and_then(|o| u64_at(&buf, o)),
        });
        let Some(next) = u64_at(&buf, layout.ts_next) else {
            break;
        };
        ts = next;
    }
    Ok((out, ts == 0))
}

#[cfg(test)]
mod tests {
    use super::super::mem::fake::FakeMem;
    use super::*;

    fn tstate(layout: &Layout, next: u64, interp: u64, tid: u64) -> Vec<u8> {
        let mut b = vec![0u8; layout.tstate_read_len(None)];
        b[layout.ts_next as usize..][..8].copy_from_slice(&next.to_le_bytes());
        b[layout.ts_interp as usize..][..8].copy_from_slice(&interp.to_le_bytes());
        b[layout.ts_thread_id as usize..][..8].copy_from_slice(&tid.to_le_bytes());
        b
    }

    #[test]
    fn stops_on_cycles_foreign_interp_and_unreadable_nodes() {
        let l = Layout::from_table(11).unwrap();
        let interp = 0x100_0000;
        let mut m = FakeMem::default();
        let mut ib = vec![0u8; 64];
        ib[16..24].copy_from_slice(&0x200_0000u64.to_le_bytes());
        m.put(interp, ib);
        // a -> b -> a (cycle)
        m.put(0x200_0000, tstate(&l, 0x300_0000, interp, 1));
        m.put(0x300_0000, tstate(&l, 0x200_0000, interp, 2));
        let t = walk(&m, &l, interp, None, None).unwrap();
        assert_eq!(
            t.iter().map(|t| t.pthread_id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        // b belongs to another interpreter: the walk stops before it.
        m.put(0x300_0000, tstate(&l, 0, 0x999_0000, 2));
        assert_eq!(walk(&m, &l, interp, None, None).unwrap().len(), 1);
        // b unmapped
        m.regions.remove(&0x300_0000);
        assert_eq!(walk(&m, &l, interp, None, None).unwrap().len(), 1);
        // head unreadable: error
        assert!(walk(&m, &l, 0x700_0000, None, None).is_err());
    }
}
