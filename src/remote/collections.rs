//! Whole-container reads: every (key, value) of a dict and every key of a set, each in a couple
//! of `process_vm_readv` calls (header, then the whole table). The task reader uses them for
//! asyncio's `_current_tasks` dict (`{loop: task}`, keyed by object, so the `str`-key lookup
//! of `dict` does not apply) and its task sets.
//!
//! Nothing here knows what the items are: callers validate every key and value by its type.

use super::mem::Memory;

use super::dict::EntryTable;
use super::mem::{plausible_obj, read_bytes, u64_at};
use super::offsets::DictLayout;

/// Largest set table we copy (entries): 4M slots (64 MiB) hold a million tasks at CPython's
/// 60% fill; more is garbage.
const MAX_SET_SLOTS: u64 = 1 << 22;
/// `PySetObject` (gdb, 3.8–3.13; unchanged in 3.14's `setobject.h`): `fill` @16, `used` @24,
/// `mask` @32, `table` @40; entries are `{key, hash}`.
const SET_USED: u64 = 24;
const SET_MASK: u64 = 32;
const SET_TABLE: u64 = 40;
const SET_ENTRY: u64 = 16;

/// Every (key, value) pair of the dict at `dict` with non-NULL key and value, in entry order.
/// `None` when the dict does not read as a dict.
pub fn dict_items<M: Memory + ?Sized>(
    mem: &M,
    layout: DictLayout,
    dict: u64,
) -> Option<Vec<(u64, u64)>> {
    if !plausible_obj(dict) {
        return None;
    }
    // ma_used @16, ma_keys @32, ma_values @40 (all versions).
    let d = read_bytes(mem, dict, 48)?;
    if u64_at(&d, 16)? == 0 {
        return Some(Vec::new());
    }
    let (keys, values) = (u64_at(&d, 32)?, u64_at(&d, 40)?);
    if !plausible_obj(keys) {
        return None;
    }
    let t = EntryTable::read(mem, layout, keys)?;
    // A split table keeps the values in their own array.
    let split = if values != 0 {
        let off = match layout {
            DictLayout::Pre311 => 0,
            DictLayout::Post311 { values_off } => values_off,
        };
        Some(read_bytes(
            mem,
            values.checked_add(off)?,
            (t.nentries * 8) as usize,
        )?)
    } else {
        None
    };
    let mut out = Vec::new();
    for i in 0..t.nentries {
        let key = u64_at(&t.bytes, i * t.entry_size + t.key_off)?;
        let value = match &split {
            Some(v) => u64_at(v, i * 8)?,
            None => u64_at(&t.bytes, i * t.entry_size + t.value_off)?,
        };
        if key != 0 && value != 0 {
            out.push((key, value));
        }
    }
    Some(out)
}

/// Every non-NULL key in the hash table of the set at `set` (deleted slots hold a dummy object,
/// which callers reject by its type). `None` when the header is implausible.
pub fn set_items<M: Memory + ?Sized>(mem: &M, set: u64) -> Option<Vec<u64>> {
    if !plausible_obj(set) {
        return None;
    }
    let h = read_bytes(mem, set, (SET_TABLE + 8) as usize)?;
    let (used, mask, table) = (
        u64_at(&h, SET_USED)?,
        u64_at(&h, SET_MASK)?,
        u64_at(&h, SET_TABLE)?,
    );
    let slots = mask.checked_add(1)?;
    if !slots.is_power_of_two() || slots > MAX_SET_SLOTS || used > slots {
        return None;
    }
    if used == 0 {
        return Some(Vec::new());
    }
    let bytes = read_bytes(mem, table, (slots * SET_ENTRY) as usize)?;
    Some(
        (0..slots)
            .filter_map(|i| u64_at(&bytes, i * SET_ENTRY))
            .filter(|&k| k != 0)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::mem::fake::FakeMem;
    use super::*;

    fn put(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn dict_items_311_general_table() {
        let mut m = FakeMem::default();
        let mut d = vec![0u8; 48];
        put(&mut d, 16, 2);
        put(&mut d, 32, 0x2000_0000);
        m.put(0x1000_0000, d);
        // log2 size 3, 8 one-byte indices, general kind, 3 entries, the middle one deleted.
        let mut k = vec![0u8; 40];
        (k[8], k[9], k[10]) = (3, 3, 0);
        put(&mut k, 24, 3);
        for (key, val) in [
            (0x3000_0000u64, 0x4000_0000u64),
            (0, 0),
            (0x3100_0000, 0x4100_0000),
        ] {
            k.extend_from_slice(&7u64.to_le_bytes());
            k.extend_from_slice(&key.to_le_bytes());
            k.extend_from_slice(&val.to_le_bytes());
        }
        m.put(0x2000_0000, k);
        let l = DictLayout::Post311 { values_off: 0 };
        assert_eq!(
            dict_items(&m, l, 0x1000_0000),
            Some(vec![(0x3000_0000, 0x4000_0000), (0x3100_0000, 0x4100_0000)])
        );
        assert_eq!(dict_items(&m, l, 0x1000_0004), None);
    }

    #[test]
    fn set_items_reads_the_table() {
        let mut m = FakeMem::default();
        let mut h = vec![0u8; 48];
        put(&mut h, 24, 2);
        put(&mut h, 32, 7);
        put(&mut h, 40, 0x2000_0000);
        m.put(0x1000_0000, h);
        let mut t = vec![0u8; 8 * 16];
        put(&mut t, 16, 0x3000_0000);
        put(&mut t, 80, 0x3100_0000);
        m.put(0x2000_0000, t);
        assert_eq!(
            set_items(&m, 0x1000_0000),
            Some(vec![0x3000_0000, 0x3100_0000])
        );
        // A mask that is not 2^n - 1 is garbage.
        let mut h = vec![0u8; 48];
        put(&mut h, 24, 1);
        put(&mut h, 32, 6);
        m.put(0x1000_0000, h);
        assert_eq!(set_items(&m, 0x1000_0000), None);
    }
}
