//! Lookup of a `str` key in a remote `dict` (both dict-keys layouts, cpython-notes §2.3).
//!
//! Reads the dict header, then the keys object with its entry table (usually one
//! speculative read covers header, indices and entries), and compares keys. Keys are
//! compared as compact-ASCII strings until the first hit; the matching key object's address
//! is then cached, because the keys we look up are interned identifiers that live as long as
//! the interpreter, so later lookups compare pointers only and read no strings.

use super::mem::Memory;

use super::mem::{plausible_obj, read_at_least, read_bytes, u32_at, u64_at, u8_at};
use super::offsets::DictLayout;

/// Upper bound on entries we are willing to read: `sys.modules` of a big application holds
/// thousands of modules; more than this means garbage or a torn read.
const MAX_ENTRIES: u64 = 1 << 18;
/// Speculative first read of the keys object: covers a small dict's header, indices and
/// entries (e.g. 3.8: 40 + 8 + 5*24 = 168 bytes; 3.11+: 32 + 8 + 5*16 = 120 bytes).
const KEYS_SPECULATIVE: usize = 512;

/// A `str` key to find, with the address of the matching key object once one was seen.
#[derive(Debug, Clone)]
pub struct KeyCache {
    pub key: &'static [u8],
    pub addr: Option<u64>,
}

impl KeyCache {
    pub fn new(key: &'static [u8]) -> KeyCache {
        KeyCache { key, addr: None }
    }
}

/// A value found in a dict, with the address of the slot it was read from: re-reading the
/// slot is a cheap check that the value is still the one stored under the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub value: u64,
    pub slot: u64,
}

/// Returns the value stored under `key` in the dict at `dict_addr`, or `None` when the
/// key is absent, the value is NULL, or anything read does not look like a valid dict.
#[cfg(test)]
pub fn lookup_str<M: Memory + ?Sized>(
    mem: &M,
    layout: DictLayout,
    str_ascii_size: u64,
    dict_addr: u64,
    key: &mut KeyCache,
) -> Option<u64> {
    find_str(mem, layout, str_ascii_size, dict_addr, key).map(|f| f.value)
}

/// The value stored under `key` and the slot it was read from, or `None` when the key is
/// absent, the value is NULL, or anything read does not look like a valid dict.
pub fn find_str<M: Memory + ?Sized>(
    mem: &M,
    layout: DictLayout,
    str_ascii_size: u64,
    dict_addr: u64,
    key: &mut KeyCache,
) -> Option<Found> {
    find_str_bounded(mem, layout, str_ascii_size, dict_addr, key, MAX_ENTRIES)
}

/// Largest dict `find_str_large` reads: `sys.modules` of a big application has tens of
/// thousands of entries (24 MiB of entries at this bound).
pub const MAX_LARGE_ENTRIES: u64 = 1 << 20;

/// `find_str` for a dict that can be large (`sys.modules`: one entry per imported module, past
/// 4096 in big applications).
pub fn find_str_large<M: Memory + ?Sized>(
    mem: &M,
    layout: DictLayout,
    str_ascii_size: u64,
    dict_addr: u64,
    key: &mut KeyCache,
) -> Option<Found> {
    find_str_bounded(
        mem,
        layout,
        str_ascii_size,
        dict_addr,
        key,
        MAX_LARGE_ENTRIES,
    )
}

fn find_str_bounded<M: Memory + ?Sized>(
    mem: &M,
    layout: DictLayout,
    str_ascii_size: u64,
    dict_addr: u64,
    key: &mut KeyCache,
    max_entries: u64,
) -> Option<Found> {
    if !plausible_obj(dict_addr) {
        return None;
    }
    // PyDictObject: ma_used @16, ma_keys @32, ma_values @40 (all versions).
    let d = read_bytes(mem, dict_addr, 48)?;
    let used = u64_at(&d, 16)?;
    if used == 0 || used > max_entries {
        return None;
    }
    let keys = u64_at(&d, 32)?;
    let values = u64_at(&d, 40)?;
    if !plausible_obj(keys) || (values != 0 && !plausible_obj(values)) {
        return None;
    }
    if values != 0 {
        // Split table: values live outside the keys object.
        let off = match layout {
            DictLayout::Pre311 => 0,
            DictLayout::Post311 { values_off } => values_off,
        };
        return find_in_values(
            mem,
            layout,
            str_ascii_size,
            keys,
            values.checked_add(off)?,
            MAX_ENTRIES,
            key,
        );
    }
    let t = EntryTable::read_bounded(mem, layout, keys, max_entries)?;
    let i = t.index_of(mem, str_ascii_size, key)?;
    let v = u64_at(&t.bytes, i * t.entry_size + t.value_off)?;
    let slot = keys.checked_add(t.entries_off + i * t.entry_size + t.value_off)?;
    (v != 0).then_some(Found { value: v, slot })
}

/// Looks `key` up in a split table: the keys object `keys` (a type's shared
/// `ht_cached_keys`, or a split dict's `ma_keys`) indexes the values array whose item 0 is at
/// `values`; entries at index `capacity` or beyond have no value slot.
pub fn find_in_values<M: Memory + ?Sized>(
    mem: &M,
    layout: DictLayout,
    str_ascii_size: u64,
    keys: u64,
    values: u64,
    capacity: u64,
    key: &mut KeyCache,
) -> Option<Found> {
    if !plausible_obj(keys) || !plausible_obj(values) {
        return None;
    }
    let t = EntryTable::read(mem, layout, keys)?;
    let i = t.index_of(mem, str_ascii_size, key)?;
    if i >= capacity {
        return None;
    }
    let slot = values.checked_add(8 * i)?;
    let v = super::mem::read_u64(mem, slot)?;
    (v != 0).then_some(Found { value: v, slot })
}

/// The entry table of a dict-keys object, copied out of the target.
pub(super) struct EntryTable {
    /// Entry bytes, starting at entry 0.
    pub(super) bytes: Vec<u8>,
    /// Where entry 0 starts, from the start of the keys object.
    pub(super) entries_off: u64,
    pub(super) nentries: u64,
    pub(super) entry_size: u64,
    pub(super) key_off: u64,
    pub(super) value_off: u64,
}

impl EntryTable {
    pub(super) fn read<M: Memory + ?Sized>(
        mem: &M,
        layout: DictLayout,
        keys: u64,
    ) -> Option<EntryTable> {
        Self::read_bounded(mem, layout, keys, MAX_ENTRIES)
    }

    /// Like `read`, for tables of up to `max_entries` entries.
    pub(super) fn read_bounded<M: Memory + ?Sized>(
        mem: &M,
        layout: DictLayout,
        keys: u64,
        max_entries: u64,
    ) -> Option<EntryTable> {
        let hdr_len = match layout {
            DictLayout::Pre311 => 40,
            DictLayout::Post311 { .. } => 32,
        };
        let buf = read_at_least(mem, keys, hdr_len, KEYS_SPECULATIVE)?;
        let (entries_off, nentries, entry_size, key_off, value_off) = match layout {
            DictLayout::Pre311 => {
                let size = u64_at(&buf, 8)?;
                if !size.is_power_of_two() || !(8..=1 << 22).contains(&size) {
                    return None;
                }
                // Index width grows with the table size (int8/16/32/64 indices).
                let w = if size <= 0xff {
                    1
                } else if size <= 0xffff {
                    2
                } else {
                    4
                };
                let n = u64_at(&buf, 32)?;
                if n > size {
                    return None;
                }
                (40 + size * w, n, 24, 8, 16)
            }
            DictLayout::Post311 { .. } => {
                let log2_size = u8_at(&buf, 8)? as u64;
                let log2_index_bytes = u8_at(&buf, 9)? as u64;
                let kind = u8_at(&buf, 10)?;
                // Index bytes = size * width, width 1..=8, so log2 differs by 0..=3.
                if !(3..=22).contains(&log2_size)
                    || !(log2_size..=log2_size + 3).contains(&log2_index_bytes)
                    || kind > 2
                {
                    return None;
                }
                let n = u64_at(&buf, 24)?;
                if n > 1 << log2_size {
                    return None;
                }
                // dk_kind 0 = general (hash, key, value); 1 unicode / 2 split = (key, value).
                let (es, ko, vo) = if kind == 0 { (24, 8, 16) } else { (16, 0, 8) };
                (32 + (1u64 << log2_index_bytes), n, es, ko, vo)
            }
        };
        if nentries > max_entries {
            return None;
        }
        let len = nentries * entry_size;
        let end = entries_off + len;
        let bytes = if end as usize <= buf.len() {
            buf.get(entries_off as usize..end as usize)?.to_vec()
        } else {
            read_bytes(mem, keys.checked_add(entries_off)?, len as usize)?
        };
        Some(EntryTable {
            bytes,
            entries_off,
            nentries,
            entry_size,
            key_off,
            value_off,
        })
    }
}

impl EntryTable {
    /// Index of the entry whose key is `key`. With the key object's address cached only
    /// pointers are compared; otherwise every key is read as a compact-ASCII `str`, all in one
    /// batched read.
    fn index_of<M: Memory + ?Sized>(
        &self,
        mem: &M,
        str_ascii_size: u64,
        key: &mut KeyCache,
    ) -> Option<u64> {
        let key_at = |i: u64| {
            u64_at(&self.bytes, i * self.entry_size + self.key_off).filter(|&k| plausible_obj(k))
        };
        if let Some(known) = key.addr {
            return (0..self.nentries).find(|&i| key_at(i) == Some(known));
        }
        let keys: Vec<(u64, u64)> = (0..self.nentries)
            .filter_map(|i| Some((i, key_at(i)?)))
            .collect();
        let reqs: Vec<(u64, usize)> = keys
            .iter()
            .map(|&(_, k)| (k, str_ascii_size as usize + key.key.len()))
            .collect();
        let got = super::mem::read_batch(mem, &reqs);
        let (i, addr) = keys.iter().zip(got).find_map(|(&(i, k), b)| {
            str_bytes_equal(&b?, str_ascii_size, key.key).then_some((i, k))
        })?;
        key.addr = Some(addr);
        Some(i)
    }
}

/// Whether `buf`, the first bytes of a `str` object, hold the compact-ASCII string `want`.
fn str_bytes_equal(buf: &[u8], ascii_size: u64, want: &[u8]) -> bool {
    let (Some(len), Some(state)) = (u64_at(buf, 16), u32_at(buf, 32)) else {
        return false;
    };
    let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
    len == want.len() as u64
        && kind == 1
        && compact == 1
        && ascii == 1
        && buf.get(ascii_size as usize..) == Some(want)
}

#[cfg(test)]
mod tests {
    use super::super::mem::fake::FakeMem;
    use super::*;

    const KEY: &[u8] = b"__asyncio_running_event_loop__";

    fn ascii_str(s: &[u8], ascii_size: usize) -> Vec<u8> {
        let mut b = vec![0u8; ascii_size];
        b[16..24].copy_from_slice(&(s.len() as u64).to_le_bytes());
        b[32..36].copy_from_slice(&((1u32 << 2) | (1 << 5) | (1 << 6) | (1 << 7)).to_le_bytes());
        b.extend_from_slice(s);
        b.push(0);
        b
    }

    fn dict(keys: u64, used: u64) -> Vec<u8> {
        let mut d = vec![0u8; 48];
        d[16..24].copy_from_slice(&used.to_le_bytes());
        d[32..40].copy_from_slice(&keys.to_le_bytes());
        d
    }

    /// A 3.8-style combined dict {other: 1, KEY: 0x5000}.
    fn mem_38() -> FakeMem {
        let mut m = FakeMem::default();
        m.put(0x1000_0000, dict(0x2000_0000, 2));
        let mut k = vec![0u8; 40];
        k[8..16].copy_from_slice(&8u64.to_le_bytes()); // dk_size
        k[32..40].copy_from_slice(&2u64.to_le_bytes()); // dk_nentries
        k.extend_from_slice(&[0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]); // int8 indices
        for (key, val) in [(0x3000_0000u64, 1u64), (0x3100_0000, 0x5000_0000)] {
            k.extend_from_slice(&7u64.to_le_bytes());
            k.extend_from_slice(&key.to_le_bytes());
            k.extend_from_slice(&val.to_le_bytes());
        }
        m.put(0x2000_0000, k);
        m.put(
            0x3000_0000,
            ascii_str(b"other_key_of_len_thirty_chars!", 48),
        );
        m.put(0x3100_0000, ascii_str(KEY, 48));
        m
    }

    #[test]
    fn finds_key_in_38_layout_and_caches_pointer() {
        let m = mem_38();
        let mut kc = KeyCache::new(KEY);
        assert_eq!(
            lookup_str(&m, DictLayout::Pre311, 48, 0x1000_0000, &mut kc),
            Some(0x5000_0000)
        );
        assert_eq!(kc.addr, Some(0x3100_0000));
        assert_eq!(
            lookup_str(&m, DictLayout::Pre311, 48, 0x1000_0000, &mut kc),
            Some(0x5000_0000)
        );
    }

    #[test]
    fn finds_key_in_311_unicode_layout() {
        let mut m = FakeMem::default();
        m.put(0x1000_0000, dict(0x2000_0000, 1));
        let mut k = vec![0u8; 32];
        k[8] = 3; // log2 size 8
        k[9] = 3; // 8 one-byte indices
        k[10] = 1; // unicode keys
        k[24..32].copy_from_slice(&1u64.to_le_bytes());
        k.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        k.extend_from_slice(&0x3100_0000u64.to_le_bytes());
        k.extend_from_slice(&0x6000_0000u64.to_le_bytes());
        m.put(0x2000_0000, k);
        m.put(0x3100_0000, ascii_str(KEY, 40));
        let mut kc = KeyCache::new(KEY);
        let l = DictLayout::Post311 { values_off: 0 };
        assert_eq!(
            lookup_str(&m, l, 40, 0x1000_0000, &mut kc),
            Some(0x6000_0000)
        );
        // Wrong str header size: the data does not compare equal, no false hit.
        let mut kc = KeyCache::new(KEY);
        assert_eq!(lookup_str(&m, l, 48, 0x1000_0000, &mut kc), None);
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic xorshift fill: random dict headers, keys objects and strings.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for round in 0..2000u64 {
            let mut m = FakeMem::default();
            for base in [0x1000_0000u64, 0x2000_0000, 0x3000_0000] {
                let mut b: Vec<u8> = (0..600).map(|_| next() as u8).collect();
                // Point some fields at the other regions so parsing goes deep.
                if round % 2 == 0 {
                    b[32..40].copy_from_slice(&0x2000_0000u64.to_le_bytes());
                    b[16..24].copy_from_slice(&(next() % 8).to_le_bytes());
                    b[8] = 3 + (next() % 3) as u8;
                    b[9] = b[8];
                }
                m.put(base, b);
            }
            for layout in [DictLayout::Pre311, DictLayout::Post311 { values_off: 8 }] {
                let mut kc = KeyCache::new(KEY);
                let _ = lookup_str(&m, layout, 48, 0x1000_0000, &mut kc);
            }
        }
    }
}
