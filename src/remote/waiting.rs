//! The task a loop is about to step while it waits for the GIL outside any callback.
//!
//! A loop starved of the GIL in its selector runs no task, so asyncio's current-task record
//! is empty. What it woke for is usually its earliest timer (`loop._scheduled[0]`) coming due:
//! for `asyncio.sleep`, a `TimerHandle` whose `_args[0]` is the future a task awaits, and whose
//! first done-callback (`FutureObj.fut_callback0`) is that task's wakeup. The task is named
//! only when every link checks out: the handle's type is `TimerHandle` and its `_when` has
//! passed, the future is a C `Future`, the wakeup is the task's, and the task awaits exactly
//! that future (`task_fut_waiter`) on that loop.
//!
//! Layouts (x86-64, 3.8–3.14): `PyTypeObject.tp_members` @240 and `tp_base` @256;
//! `PyMemberDef` {name, type, offset @16, flags, doc} (40 bytes), which gives the offsets of
//! `Handle.__slots__` (`_args`) and `TimerHandle.__slots__` (`_when`) from the classes
//! themselves; `PyListObject.ob_item` @24; `PyFloatObject.ob_fval` @16;
//! `FutureObj.fut_callback0` @24 (after `PyObject_HEAD` and `fut_loop`); the wakeup is a
//! `TaskWakeupMethWrapper` (`ww_task` @16) on 3.8/3.9 and a `builtin_function_or_method` bound
//! to the task (`PyCFunctionObject.m_self` @24) from 3.10 (checked live on 3.8–3.14).

use std::collections::HashMap;

use super::asyncio::{AsyncioReader, CurrentTask};
use super::kinds::Kind;
use super::mem::{i64_at, plausible_obj, read_bytes, read_cstr, read_u64, u64_at, Memory};
use super::offsets::{OB_SIZE, OB_TYPE};

const TP_MEMBERS: u64 = 240;
const TP_BASE: u64 = 256;
const MEMBER_DEF: u64 = 40;
const MEMBER_OFFSET: u64 = 16;
/// Members read per class: `Handle` has 8 slots, `TimerHandle` 2.
const MAX_MEMBERS: u64 = 16;
const LIST_ITEMS: u64 = 24;
const FLOAT_VALUE: u64 = 16;
const FUT_CALLBACK0: u64 = 24;
const WW_TASK: u64 = 16;
const M_SELF: u64 = 24;
/// A timer this close to now counts as due (asyncio adds its clock resolution too).
const DUE_SLACK: f64 = 0.001;

/// Offsets of `_args` and `_when` in `TimerHandle` objects, by type address.
#[derive(Default)]
pub struct HandleSlots {
    by_type: HashMap<u64, Option<(u64, u64)>>,
}

impl HandleSlots {
    /// Forget the offsets (a class can be freed and its memory reused).
    pub fn clear(&mut self) {
        self.by_type.clear();
    }

    fn of<M: Memory + ?Sized>(&mut self, mem: &M, tp: u64) -> Option<(u64, u64)> {
        if let Some(known) = self.by_type.get(&tp) {
            return *known;
        }
        let found = find_slots(mem, tp);
        self.by_type.insert(tp, found);
        found
    }
}

/// `(_args, _when)` from the member tables of `tp` and its bases.
fn find_slots<M: Memory + ?Sized>(mem: &M, tp: u64) -> Option<(u64, u64)> {
    let (mut args, mut when) = (None, None);
    let mut t = tp;
    for _ in 0..4 {
        if !plausible_obj(t) {
            return None;
        }
        let members = read_u64(mem, t.checked_add(TP_MEMBERS)?)?;
        if plausible_obj(members) {
            // One definition per read: the table ends wherever the class's allocation does.
            // Done once per class.
            for i in 0..MAX_MEMBERS {
                let def = read_bytes(mem, members.checked_add(i * MEMBER_DEF)?, 24)?;
                let name = u64_at(&def, 0)?;
                if name == 0 {
                    break;
                }
                let offset = i64_at(&def, MEMBER_OFFSET)?;
                let slot = u64::try_from(offset)
                    .ok()
                    .filter(|o| (16..4096).contains(o));
                // Names longer than ours (`_source_traceback`) need not read whole.
                match read_cstr(mem, name, 32).as_deref() {
                    Some(b"_args") => args = slot,
                    Some(b"_when") => when = slot,
                    _ => {}
                }
            }
        }
        if let (Some(a), Some(w)) = (args, when) {
            return Some((a, w));
        }
        t = read_u64(mem, t.checked_add(TP_BASE)?)?;
    }
    None
}

/// The loop's earliest timer, once it has come due.
#[derive(Debug, Clone, PartialEq)]
pub struct DueTimer {
    /// Its deadline, `TimerHandle._when`: asyncio's `loop.time()`, CLOCK_MONOTONIC seconds.
    pub when: f64,
    /// The task it will step, when every link checks out (see the module doc).
    pub task: Option<CurrentTask>,
}

impl AsyncioReader {
    /// The earliest timer of the loop at `loop_`, when it is due at `now` (CLOCK_MONOTONIC
    /// seconds, asyncio's `loop.time()`), and the task it will step; `None` when no timer is
    /// due or the timer list does not read validly. About ten small reads; only worth it while
    /// the loop waits for the GIL outside any callback.
    pub fn due_timer<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        loop_: u64,
        now: f64,
    ) -> Option<DueTimer> {
        let tuple_items = self.al.tuple_items;
        let list = self.scheduled_list(mem, loop_)?;
        let b = read_bytes(mem, list, (LIST_ITEMS + 8) as usize)?;
        if i64_at(&b, OB_SIZE)? <= 0 {
            return None;
        }
        let handle = read_u64(mem, u64_at(&b, LIST_ITEMS)?)?;
        let tp = read_u64(mem, handle.checked_add(OB_TYPE)?)?;
        if self.kinds.of_type(mem, tp, tuple_items)? != Kind::Other("TimerHandle".into()) {
            return None;
        }
        let (args_at, when_at) = self.handle_slots.of(mem, tp)?;
        let h = read_bytes(mem, handle, (args_at.max(when_at) + 8) as usize)?;
        let when_obj = u64_at(&h, when_at)?;
        if self.kinds.of_object(mem, when_obj, tuple_items)?.1 != Kind::Other("float".into()) {
            return None;
        }
        let when = f64::from_bits(read_u64(mem, when_obj.checked_add(FLOAT_VALUE)?)?);
        // Not due yet (or not a number): the loop woke for something else.
        if when.is_nan() || when > now + DUE_SLACK {
            return None;
        }
        let task = self.timer_task(mem, loop_, u64_at(&h, args_at)?);
        Some(DueTimer { when, task })
    }

    /// The task a timer handle whose `_args` is at `args` will step (see the module doc).
    fn timer_task<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        loop_: u64,
        args: u64,
    ) -> Option<CurrentTask> {
        let tuple_items = self.al.tuple_items;
        if self.kinds.of_object(mem, args, tuple_items)?.1 != Kind::Other("tuple".into()) {
            return None;
        }
        let t = read_bytes(mem, args, (tuple_items + 8) as usize)?;
        if i64_at(&t, OB_SIZE)? < 1 {
            return None;
        }
        let fut = u64_at(&t, tuple_items)?;
        if self.kinds.of_object(mem, fut, tuple_items)?.1 != Kind::Future {
            return None;
        }
        let wakeup = read_u64(mem, fut.checked_add(FUT_CALLBACK0)?)?;
        let at = match self.kinds.of_object(mem, wakeup, tuple_items)?.1 {
            Kind::Other(n) if n == "TaskWakeupMethWrapper" => WW_TASK,
            Kind::Other(n) if n == "builtin_function_or_method" => M_SELF,
            _ => return None,
        };
        let task = read_u64(mem, wakeup.checked_add(at)?)?;
        self.describe_waiting(mem, task, loop_, fut)
    }
}

#[cfg(test)]
mod tests {
    use super::super::mem::fake::FakeMem;
    use super::*;

    fn put_u64(b: &mut [u8], off: u64, v: u64) {
        b[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// A type whose `tp_members` lists `members` (name address, offset) and whose base is
    /// `base`.
    fn class(m: &mut FakeMem, at: u64, members: &[(u64, u64)], base: u64) {
        let mut t = vec![0u8; 264];
        put_u64(&mut t, TP_MEMBERS, at + 0x1000);
        put_u64(&mut t, TP_BASE, base);
        m.put(at, t);
        let mut defs = vec![0u8; ((members.len() + 1) as u64 * MEMBER_DEF) as usize];
        for (i, (name, off)) in members.iter().enumerate() {
            put_u64(&mut defs, i as u64 * MEMBER_DEF, *name);
            put_u64(&mut defs, i as u64 * MEMBER_DEF + MEMBER_OFFSET, *off);
        }
        m.put(at + 0x1000, defs);
    }

    fn name(m: &mut FakeMem, at: u64, s: &[u8]) {
        let mut page = s.to_vec();
        page.resize(4096, 0);
        m.put(at, page);
    }

    #[test]
    fn handle_slots_come_from_the_classes_member_tables() {
        // As on 3.11: TimerHandle {_scheduled 80, _when 88} derives from Handle {_args 16,
        // ..., _source_traceback 64} (a name longer than the ones looked for).
        let mut m = FakeMem::default();
        for (at, s) in [
            (0x7000_0000, &b"_scheduled"[..]),
            (0x7000_1000, b"_when"),
            (0x7000_2000, b"_args"),
            (0x7000_3000, b"_source_traceback"),
        ] {
            name(&mut m, at, s);
        }
        class(
            &mut m,
            0x1000_0000,
            &[(0x7000_2000, 16), (0x7000_3000, 64)],
            0,
        );
        class(
            &mut m,
            0x2000_0000,
            &[(0x7000_0000, 80), (0x7000_1000, 88)],
            0x1000_0000,
        );
        let mut slots = HandleSlots::default();
        assert_eq!(slots.of(&m, 0x2000_0000), Some((16, 88)));
        // Cached per type, until cleared.
        m.regions.remove(&0x1000_1000);
        assert_eq!(slots.of(&m, 0x2000_0000), Some((16, 88)));
        slots.clear();
        assert_eq!(
            slots.of(&m, 0x2000_0000),
            None,
            "no Handle table: no `_args`"
        );
        // A class without both is not a timer handle.
        assert_eq!(find_slots(&m, 0x1000_0000), None);
    }
}
