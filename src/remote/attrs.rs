//! Reading an attribute from an instance's `__dict__` (cpython-notes §2.2), for objects of
//! Python classes without `__slots__` such as the stdlib event loops.
//!
//! Where the attributes live changed in almost every version (see `InstanceDict`): a dict
//! pointer at `tp_dictoffset` (3.8–3.10), a values array indexed by the type's shared keys
//! before the object (3.11, 3.12 tagged), or values inline after the object (3.13+). Each
//! path falls back to a materialized dict when the values array is not in use, because
//! touching `obj.__dict__` (or an attribute the shared keys cannot hold) materializes one.

use super::mem::Memory;

use super::dict::{find_in_values, find_str, Found, KeyCache};
use super::mem::{i64_at, plausible_obj, read_at_least, read_bytes, read_u64, u64_at, u8_at};
use super::offsets::{
    InstanceDict, Layout, TPFLAGS_INLINE_VALUES, TPFLAGS_MANAGED_DICT, TP_BASICSIZE, TP_DICTOFFSET,
    TP_FLAGS,
};

/// Bytes of `PyTypeObject` we need before `ht_cached_keys`: up to `tp_dictoffset`.
const TYPE_HEAD: usize = (TP_DICTOFFSET + 8) as usize;
/// `PyDictValues.values` on 3.13+ (after four u8 fields and padding; gdb on 3.13.0).
const INLINE_VALUES_ITEMS: u64 = 8;
/// Bound on a values array we index without knowing its capacity (3.11/3.12, where the
/// capacity is implied by the shared keys): the keys' own entry count bounds the index.
const UNBOUNDED: u64 = u64::MAX;

/// The value of attribute `key` in the instance dict of `obj`, whose type is `tp`, and the
/// slot it was read from. `None` when the type has no instance dict, the attribute is not
/// set, or anything read is implausible.
pub fn instance_attr<M: Memory + ?Sized>(
    mem: &M,
    layout: &Layout,
    obj: u64,
    tp: u64,
    key: &mut KeyCache,
) -> Option<Found> {
    if !plausible_obj(obj) || !plausible_obj(tp) {
        return None;
    }
    let (ascii, dl) = (layout.str_ascii_size, layout.dict);
    let cached_keys_off = match layout.instance_dict {
        InstanceDict::DictOffset => None,
        InstanceDict::ValuesOrDict { cached_keys }
        | InstanceDict::Tagged { cached_keys }
        | InstanceDict::Inline { cached_keys } => Some(cached_keys),
    };
    // One read covers the type fields, including `ht_cached_keys` when the type is a heap
    // type; a static type may end (and its mapping with it) before that offset.
    let want = cached_keys_off.map_or(TYPE_HEAD, |o| (o + 8) as usize);
    let t = read_at_least(mem, tp, TYPE_HEAD, want)?;
    let flags = u64_at(&t, TP_FLAGS)?;
    let cached_keys = || cached_keys_off.and_then(|o| u64_at(&t, o));
    let dict_at = |addr: u64| -> Option<u64> { read_u64(mem, addr).filter(|&d| d != 0) };
    match layout.instance_dict {
        InstanceDict::DictOffset => {
            // Negative offsets count from the end of variable-size objects; loops are not.
            let off = i64_at(&t, TP_DICTOFFSET)?;
            if off <= 0 {
                return None;
            }
            let dict = dict_at(obj.checked_add(off as u64)?)?;
            find_str(mem, dl, ascii, dict, key)
        }
        _ if flags & TPFLAGS_MANAGED_DICT == 0 => None,
        InstanceDict::ValuesOrDict { .. } => {
            let b = read_bytes(mem, obj.checked_sub(32)?, 16)?;
            let (values, dict) = (u64_at(&b, 0)?, u64_at(&b, 8)?);
            if values != 0 {
                find_in_values(mem, dl, ascii, cached_keys()?, values, UNBOUNDED, key)
            } else {
                find_str(mem, dl, ascii, dict, key)
            }
        }
        InstanceDict::Tagged { .. } => {
            let word = read_u64(mem, obj.checked_sub(24)?)?;
            if word & 1 == 1 {
                // The word stores `values - 1` (`_PyDictOrValues_GetValues`).
                let values = word.checked_add(1)?;
                find_in_values(mem, dl, ascii, cached_keys()?, values, UNBOUNDED, key)
            } else {
                find_str(mem, dl, ascii, word, key)
            }
        }
        InstanceDict::Inline { .. } => {
            if let Some(dict) = dict_at(obj.checked_sub(24)?) {
                // A materialized dict; it may itself point at the inline values.
                return find_str(mem, dl, ascii, dict, key);
            }
            if flags & TPFLAGS_INLINE_VALUES == 0 {
                return None;
            }
            let basicsize = u64_at(&t, TP_BASICSIZE)?;
            if !(16..=4096).contains(&basicsize) || basicsize % 8 != 0 {
                return None;
            }
            let values = obj.checked_add(basicsize)?;
            let h = read_bytes(mem, values, 4)?;
            let (capacity, valid) = (u8_at(&h, 0)?, u8_at(&h, 3)?);
            if valid == 0 {
                return None;
            }
            let items = values + INLINE_VALUES_ITEMS;
            find_in_values(mem, dl, ascii, cached_keys()?, items, capacity as u64, key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::mem::fake::FakeMem;
    use super::*;

    /// Random objects, types, dicts and keys: every layout must return without panicking.
    #[test]
    fn garbage_never_panics() {
        let mut s: u64 = 0x853c_49e6_748f_ea9b;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let layouts: Vec<Layout> = [8, 11, 12]
            .into_iter()
            .filter_map(Layout::from_table)
            .chain(Layout::from_table(12).map(|l| Layout {
                instance_dict: InstanceDict::Inline { cached_keys: 880 },
                ..l
            }))
            .collect();
        let regions = [0x1000_0000u64, 0x2000_0000, 0x3000_0000, 0x4000_0000];
        for round in 0..2000 {
            let mut m = FakeMem::default();
            for base in regions {
                let mut b: Vec<u8> = (0..1024).map(|_| next() as u8).collect();
                // Point some words at the other regions (or small offsets) so parsing goes deep.
                for _ in 0..(round % 16) {
                    let at = (next() % 127 * 8) as usize;
                    let r = regions[(next() % 4) as usize];
                    let w = if next() % 2 == 0 {
                        r + next() % 64
                    } else {
                        next() % 64
                    };
                    b[at..at + 8].copy_from_slice(&w.to_le_bytes());
                }
                m.put(base, b);
            }
            for layout in &layouts {
                let mut key = KeyCache::new(b"_ready");
                let obj = 0x1000_0000 + 8 * (next() % 64);
                let _ = instance_attr(&m, layout, obj, 0x2000_0000, &mut key);
            }
        }
    }
}
