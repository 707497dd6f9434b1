//! The ready queue (`loop._ready`, a `collections.deque`) of stdlib pure-Python loops, and the
//! cheap per-sample read of its length and mutation counter (cpython-notes §2.4, §7(c)).
//!
//! Resolving costs a dict lookup (a handful of reads), so it is done once per loop and cached.
//! The periodic thread scan only re-validates the cache entry with two small reads (the
//! attribute's value slot still holds the deque, the deque still has its type), because a
//! loop can be freed and its address reused by another loop with another deque.
//!
//! The per-sample read is one `process_vm_readv` of the deque header: `ob_type` @8 (must
//! still be the deque type seen at resolve time, else the object was freed and reused),
//! `ob_size` @16 (the length) and `state` @56 (+1 on every append and every pop).

use std::collections::{HashMap, HashSet};

use super::mem::Memory;

use super::attrs::instance_attr;
use super::dict::KeyCache;
use super::mem::{i64_at, plausible_obj, read_u64, u64_at};
use super::objects::TypeNames;
use super::offsets::{Layout, DEQUE_STATE, OB_SIZE, OB_TYPE};

/// `tp_name` of `collections.deque` (its C type is named with the module, 3.8–3.14).
const DEQUE_TYPE_NAME: &str = "collections.deque";
/// The attribute `BaseEventLoop.__init__` stores the ready queue in.
const READY_ATTR: &[u8] = b"_ready";
/// Bytes of the deque header read per sample: up to and including `state`.
const HEADER: usize = (DEQUE_STATE + 8) as usize;
/// A longer queue than this is not a real ready queue (torn read or reused memory).
const MAX_LEN: i64 = 1 << 40;

/// A resolved ready queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// The loop's type when resolved: a different type at the same address is another loop.
    loop_type: u64,
    /// Where the loop's `__dict__` keeps the `_ready` value.
    slot: u64,
    deque: u64,
    deque_type: u64,
}

/// Ready queues by loop address.
pub struct ReadyQueues {
    cache: HashMap<u64, Entry>,
    key: KeyCache,
}

impl Default for ReadyQueues {
    fn default() -> Self {
        ReadyQueues {
            cache: HashMap::new(),
            key: KeyCache::new(READY_ATTR),
        }
    }
}

impl ReadyQueues {
    /// The `_ready` deque of the pure-Python loop at `loop_addr` (type `loop_type`): the
    /// cached one while it still validates, else resolved anew. `None` when it cannot be
    /// found or is not a `collections.deque`.
    pub fn resolve<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        layout: &Layout,
        names: &mut TypeNames,
        loop_addr: u64,
        loop_type: u64,
    ) -> Option<u64> {
        if let Some(e) = self.cache.get(&loop_addr) {
            if e.loop_type == loop_type
                && read_u64(mem, e.slot) == Some(e.deque)
                && header(mem, e.deque, e.deque_type).is_some()
            {
                return Some(e.deque);
            }
            self.cache.remove(&loop_addr);
        }
        let found = instance_attr(mem, layout, loop_addr, loop_type, &mut self.key)?;
        let deque_type = TypeNames::type_of(mem, found.value)?;
        if names.of_type(mem, deque_type)? != DEQUE_TYPE_NAME {
            return None;
        }
        header(mem, found.value, deque_type)?;
        let e = Entry {
            loop_type,
            slot: found.slot,
            deque: found.value,
            deque_type,
        };
        self.cache.insert(loop_addr, e);
        Some(e.deque)
    }

    /// Forgets the loops not in `live` (they stopped running or were freed).
    pub fn retain(&mut self, live: &HashSet<u64>) {
        self.cache.retain(|addr, _| live.contains(addr));
    }

    /// The region [`ReadyQueues::read`] reads.
    pub fn region(deque: u64) -> (u64, usize) {
        (deque, HEADER)
    }

    /// `(len, state)` of the ready deque at `deque` (as returned by `resolve`), with one read.
    /// `None` on a failed read, an unknown deque, or a header that is no longer that deque.
    pub fn read<M: Memory + ?Sized>(&self, mem: &M, deque: u64) -> Option<(u64, u64)> {
        // A linear search: a process runs a handful of loops at most.
        let tp = self.cache.values().find(|e| e.deque == deque)?.deque_type;
        header(mem, deque, tp)
    }
}

/// `(len, state)` from one read of the deque header at `deque`, if its type is still `tp`.
fn header<M: Memory + ?Sized>(mem: &M, deque: u64, tp: u64) -> Option<(u64, u64)> {
    if !plausible_obj(deque) {
        return None;
    }
    // On the stack, not through `mem::read_bytes`: this runs every sample.
    let mut buf = [0u8; HEADER];
    mem.read(deque, &mut buf).ok()?;
    if u64_at(&buf, OB_TYPE)? != tp {
        return None;
    }
    let len = i64_at(&buf, OB_SIZE)?;
    if !(0..MAX_LEN).contains(&len) {
        return None;
    }
    Some((len as u64, u64_at(&buf, DEQUE_STATE)?))
}

#[cfg(test)]
mod tests {
    use super::super::mem::fake::FakeMem;
    use super::super::offsets::TPFLAGS_MANAGED_DICT;
    use super::*;

    const LOOP: u64 = 0x1000_0020;
    const LOOP_TYPE: u64 = 0x2000_0000;
    const VALUES: u64 = 0x4000_0000;
    const DEQUE: u64 = 0x5000_0000;
    const DEQUE_TYPE: u64 = 0x6000_0000;
    const LIST_TYPE: u64 = 0x6200_0000;

    fn put_u64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// A compact-ASCII str with the 3.12 header size (40).
    fn ascii_str(s: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 40];
        put_u64(&mut b, 16, s.len() as u64);
        b[32..36].copy_from_slice(&((1u32 << 2) | (1 << 5) | (1 << 6)).to_le_bytes());
        b.extend_from_slice(s);
        b.push(0);
        b
    }

    /// Mappings are page-granular: a name's page is readable past its NUL.
    fn name_page(s: &[u8]) -> Vec<u8> {
        let mut page = s.to_vec();
        page.resize(4096, 0);
        page
    }

    fn type_named(name_ptr: u64) -> Vec<u8> {
        let mut t = vec![0u8; 32];
        put_u64(&mut t, 24, name_ptr);
        t
    }

    fn deque(tp: u64, len: i64, state: u64) -> Vec<u8> {
        let mut d = vec![0u8; 80];
        put_u64(&mut d, 8, tp);
        put_u64(&mut d, 16, len as u64);
        put_u64(&mut d, 56, state);
        d
    }

    /// A 3.12 loop whose `PyDictOrValues` word is tagged values `{_selector, _ready}`.
    fn mem_312() -> FakeMem {
        let mut m = FakeMem::default();
        let mut obj = vec![0u8; 48];
        // obj-24 holds `values - 1`: values are 8-aligned, so this sets the tag bit 0.
        put_u64(&mut obj, 8, VALUES - 1);
        put_u64(&mut obj, 40, LOOP_TYPE); // ob_type
        m.put(LOOP - 32, obj);
        let mut tp = vec![0u8; 888];
        put_u64(&mut tp, 168, TPFLAGS_MANAGED_DICT);
        put_u64(&mut tp, 880, 0x3000_0000);
        m.put(LOOP_TYPE, tp);
        // Split keys: log2 size 3, 8 one-byte indices, kind 2, 2 entries of (key, NULL).
        let mut k = vec![0u8; 32];
        (k[8], k[9], k[10]) = (3, 3, 2);
        put_u64(&mut k, 24, 2);
        k.extend_from_slice(&[0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        for key in [0x3100_0000u64, 0x3200_0000] {
            k.extend_from_slice(&key.to_le_bytes());
            k.extend_from_slice(&[0; 8]);
        }
        m.put(0x3000_0000, k);
        m.put(0x3100_0000, ascii_str(b"_selector"));
        m.put(0x3200_0000, ascii_str(b"_ready"));
        let mut v = vec![0u8; 16];
        put_u64(&mut v, 0, 0x7000_0000);
        put_u64(&mut v, 8, DEQUE);
        m.put(VALUES, v);
        m.put(DEQUE, deque(DEQUE_TYPE, 3, 42));
        m.put(DEQUE_TYPE, type_named(0x6100_0000));
        m.put(0x6100_0000, name_page(b"collections.deque"));
        m.put(LIST_TYPE, type_named(0x6300_0000));
        m.put(0x6300_0000, name_page(b"list"));
        m
    }

    #[test]
    fn resolves_caches_and_validates() {
        let mut m = mem_312();
        let layout = Layout::from_table(12).unwrap();
        let (mut q, mut names) = (ReadyQueues::default(), TypeNames::default());
        let mut resolve =
            |q: &mut ReadyQueues, m: &FakeMem| q.resolve(m, &layout, &mut names, LOOP, LOOP_TYPE);
        assert_eq!(resolve(&mut q, &m), Some(DEQUE));
        assert_eq!(q.read(&m, DEQUE), Some((3, 42)));
        assert_eq!(q.read(&m, DEQUE + 8), None, "not a resolved deque");
        // Cached: resolving again needs neither the keys nor the key strings.
        m.regions.remove(&0x3200_0000);
        assert_eq!(resolve(&mut q, &m), Some(DEQUE));
        m.put(0x3200_0000, ascii_str(b"_ready"));
        // A torn or reused header is refused: another type, a negative length.
        m.put(DEQUE, deque(LIST_TYPE, 3, 42));
        assert_eq!(q.read(&m, DEQUE), None);
        m.put(DEQUE, deque(DEQUE_TYPE, -1, 42));
        assert_eq!(q.read(&m, DEQUE), None);
        // `_ready` now holds a list: the cache entry fails validation and nothing resolves.
        m.put(DEQUE, deque(LIST_TYPE, 0, 0));
        assert_eq!(resolve(&mut q, &m), None);
        assert_eq!(q.read(&m, DEQUE), None);
        // Back to a deque; a loop that stopped running is forgotten on `retain`.
        m.put(DEQUE, deque(DEQUE_TYPE, 0, 7));
        assert_eq!(resolve(&mut q, &m), Some(DEQUE));
        q.retain(&HashSet::new());
        assert_eq!(q.read(&m, DEQUE), None);
    }
}
