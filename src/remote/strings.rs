//! Reading `str` and small `int` objects out of the target: task names, coroutine qualnames,
//! file names, and the lazy `int` counter that 3.12+ stores as an unnamed task's name.
//!
//! Only compact strings are read (every string the interpreter creates from Python code is
//! compact; legacy "ready" strings from old C APIs are refused). The header says how long the
//! string is and how wide its characters are, so one read usually covers header and data: the
//! first read is speculative and sized for a typical identifier, and only a longer string costs
//! a second read. Callers check the object's type first (see `kinds`): these functions only
//! check that the header is self-consistent.

use super::mem::Memory;

use super::mem::{i64_at, plausible_obj, read_at_least, read_bytes, u32_at, u64_at};

/// Characters of a string we keep; a longer one is cut there and ends with `…`. Names and paths
/// come from the target, which can make them as long as it likes.
pub const KEEP_CHARS: u64 = 1024;
/// A length beyond this is not a string the target could have made: a torn or garbage header.
const MAX_LEN: u64 = 1 << 40;
/// Bytes read speculatively: the biggest header (72) plus a typical name or path.
const SPECULATIVE: usize = 192;
/// `PyASCIIObject.length` / `.state`, the same in every supported version.
const LENGTH: u64 = 16;
const STATE: u64 = 32;
/// Where an int's digits start (`ob_digit` ≤3.11, `long_value.ob_digit` 3.12+), and its
/// size field (`ob_size` ≤3.11, `long_value.lv_tag` 3.12+); gdb on 3.8–3.13.
const INT_SIZE: u64 = 16;
const INT_DIGITS: u64 = 24;
/// CPython's 30-bit digits.
const DIGIT_BITS: u32 = 30;

/// Where string data starts, per version (cpython-notes §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrLayout {
    /// `sizeof(PyASCIIObject)`: compact ASCII data (48 ≤3.11, 40 3.12+).
    pub ascii_data: u64,
    /// `sizeof(PyCompactUnicodeObject)`: other compact data (72 ≤3.11, 56 3.12+).
    pub compact_data: u64,
    /// 3.12+ ints keep sign and digit count in `lv_tag`; older ones in a signed `ob_size`.
    pub tagged_ints: bool,
}

impl StrLayout {
    pub fn for_minor(minor: u64) -> StrLayout {
        if minor <= 11 {
            StrLayout {
                ascii_data: 48,
                compact_data: 72,
                tagged_ints: false,
            }
        } else {
            StrLayout {
                ascii_data: 40,
                compact_data: 56,
                tagged_ints: true,
            }
        }
    }
}

/// The text of the compact `str` at `addr`, or `None` if the header is not a valid compact
/// string. Code points that are not characters (lone surrogates, which is how Python keeps
/// undecodable bytes of file names) become U+FFFD; past [`KEEP_CHARS`] the text is cut and ends
/// with `…`.
pub fn read_str<M: Memory + ?Sized>(mem: &M, l: StrLayout, addr: u64) -> Option<String> {
    let head = read_head(mem, addr)?;
    str_from(mem, l, addr, &head)
}

/// One speculative read of an object that may be a `str` or `int`: enough for its type, its
/// header and, usually, its data; pass it to [`str_from`] or [`int_from`].
pub fn read_head<M: Memory + ?Sized>(mem: &M, addr: u64) -> Option<Vec<u8>> {
    if !plausible_obj(addr) {
        return None;
    }
    // 40 bytes cover a str header up to `state` (@32); an int can be as small as 32 bytes, and
    // one at the end of a mapping only reads as that.
    read_at_least(mem, addr, 40, SPECULATIVE).or_else(|| read_bytes(mem, addr, 32))
}

/// The text of the compact `str` at `addr`, whose first bytes are `head`.
pub fn str_from<M: Memory + ?Sized>(
    mem: &M,
    l: StrLayout,
    addr: u64,
    head: &[u8],
) -> Option<String> {
    let len = u64_at(head, LENGTH)?;
    let state = u32_at(head, STATE)?;
    // state bits (all versions): interned 0-1, kind 2-4, compact 5, ascii 6.
    let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
    if compact == 0 || len > MAX_LEN || !matches!(kind, 1 | 2 | 4) || (ascii == 1 && kind != 1) {
        return None;
    }
    let data = if ascii == 1 {
        l.ascii_data
    } else {
        l.compact_data
    };
    let kept = len.min(KEEP_CHARS);
    let nbytes = kept * kind as u64;
    let start = data as usize;
    let bytes = match head.get(start..start + nbytes as usize) {
        Some(b) => b.to_vec(),
        None => read_bytes(mem, addr.checked_add(data)?, nbytes as usize)?,
    };
    let mut text = decode(&bytes, kind, ascii == 1)?;
    if kept < len {
        text.push('…');
    }
    Some(text)
}

/// At most the first `max_chars` characters of the compact `str` at `addr`, whose first bytes
/// are `head`, and whether it was longer: only that prefix is read, so a huge string costs no
/// more than a short one.
pub fn str_prefix<M: Memory + ?Sized>(
    mem: &M,
    l: StrLayout,
    addr: u64,
    head: &[u8],
    max_chars: u64,
) -> Option<(String, bool)> {
    let len = u64_at(head, LENGTH)?;
    let state = u32_at(head, STATE)?;
    let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
    if compact == 0 || !matches!(kind, 1 | 2 | 4) || (ascii == 1 && kind != 1) {
        return None;
    }
    // Py_ssize_t: a negative or absurd length is garbage.
    if len > i64::MAX as u64 / 4 {
        return None;
    }
    let data = if ascii == 1 {
        l.ascii_data
    } else {
        l.compact_data
    };
    let take = len.min(max_chars);
    let nbytes = (take * kind as u64) as usize;
    let start = data as usize;
    let bytes = match head.get(start..start + nbytes) {
        Some(b) => b.to_vec(),
        None => read_bytes(mem, addr.checked_add(data)?, nbytes)?,
    };
    Some((decode(&bytes, kind, ascii == 1)?, len > take))
}

/// Decodes compact string data of the given kind (bytes per character).
fn decode(bytes: &[u8], kind: u32, ascii: bool) -> Option<String> {
    let lossy = |c: u32| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
    match kind {
        1 if ascii => bytes
            .iter()
            .all(u8::is_ascii)
            .then(|| bytes.iter().map(|&b| b as char).collect()),
        // Latin-1: each byte is the code point.
        1 => Some(bytes.iter().map(|&b| b as char).collect()),
        2 => Some(
            bytes
                .chunks_exact(2)
                .map(|c| lossy(u16::from_le_bytes([c[0], c[1]]) as u32))
                .collect(),
        ),
        4 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| lossy(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        _ => None,
    }
}

/// The value of the `int` at `addr` when it fits in two digits (60 bits), else `None`.
#[cfg(test)]
pub fn read_int<M: Memory + ?Sized>(mem: &M, l: StrLayout, addr: u64) -> Option<i64> {
    int_from(l, &read_head(mem, addr)?)
}

/// The value of an `int` whose first bytes are `b`, when it fits in two digits.
pub fn int_from(l: StrLayout, b: &[u8]) -> Option<i64> {
    let (ndigits, negative) = if l.tagged_ints {
        // lv_tag: digit count << 3 | sign (0 positive, 1 zero, 2 negative).
        let tag = u64_at(b, INT_SIZE)?;
        match tag & 3 {
            1 => return (tag >> 3 == 0).then_some(0),
            0 => (tag >> 3, false),
            2 => (tag >> 3, true),
            _ => return None,
        }
    } else {
        let size = i64_at(b, INT_SIZE)?;
        (size.unsigned_abs(), size < 0)
    };
    let digit = |i: u64| u32_at(b, INT_DIGITS + 4 * i).filter(|d| *d < 1 << DIGIT_BITS);
    let value = match ndigits {
        0 => 0,
        1 => digit(0)? as i64,
        2 => digit(0)? as i64 | (digit(1)? as i64) << DIGIT_BITS,
        _ => return None,
    };
    Some(if negative { -value } else { value })
}

#[cfg(test)]
pub mod test_objects {
    //! Builders for fake `str` / `int` objects, shared by the unit tests of this directory.

    pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// A compact str object of `kind` bytes per char, laid out for `l`.
    pub fn str_obj(l: super::StrLayout, tp: u64, s: &str) -> Vec<u8> {
        let chars: Vec<u32> = s.chars().map(|c| c as u32).collect();
        let max = chars.iter().copied().max().unwrap_or(0);
        let (kind, ascii) = match max {
            0..=0x7f => (1u32, true),
            0x80..=0xff => (1, false),
            0x100..=0xffff => (2, false),
            _ => (4, false),
        };
        let data = if ascii { l.ascii_data } else { l.compact_data } as usize;
        let mut b = vec![0u8; data];
        put_u64(&mut b, 8, tp);
        put_u64(&mut b, 16, chars.len() as u64);
        let state = (kind << 2) | (1 << 5) | ((ascii as u32) << 6);
        b[32..36].copy_from_slice(&state.to_le_bytes());
        for c in chars {
            b.extend_from_slice(&c.to_le_bytes()[..kind as usize]);
        }
        b.extend_from_slice(&[0; 8]);
        b
    }

    /// A one- or two-digit non-negative int object laid out for `l`.
    pub fn int_obj(l: super::StrLayout, tp: u64, v: u64) -> Vec<u8> {
        let digits: Vec<u32> = match v {
            0 => vec![],
            v if v < 1 << 30 => vec![v as u32],
            v => vec![(v & ((1 << 30) - 1)) as u32, (v >> 30) as u32],
        };
        let mut b = vec![0u8; 24];
        put_u64(&mut b, 8, tp);
        let size = if l.tagged_ints {
            if digits.is_empty() {
                1
            } else {
                (digits.len() as u64) << 3
            }
        } else {
            digits.len() as u64
        };
        put_u64(&mut b, 16, size);
        for d in digits {
            b.extend_from_slice(&d.to_le_bytes());
        }
        // The smallest int object is 32 bytes.
        b.resize(b.len().max(32), 0);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::super::mem::fake::FakeMem;
    use super::test_objects::{int_obj, str_obj};
    use super::*;

    #[test]
    fn reads_every_kind_in_both_layouts() {
        for minor in [8, 12] {
            let l = StrLayout::for_minor(minor);
            for (i, s) in ["Task-3", "fetcher", "café", "Δelta", "tå🦀sk", ""]
                .into_iter()
                .enumerate()
            {
                let mut m = FakeMem::default();
                let addr = 0x10_0000 * (i as u64 + 1);
                m.put(addr, str_obj(l, 0x99, s));
                assert_eq!(read_str(&m, l, addr).as_deref(), Some(s), "{minor} {s}");
            }
        }
    }

    #[test]
    fn long_strings_take_a_second_read() {
        let l = StrLayout::for_minor(11);
        let s = "/srv/app/".repeat(100);
        let mut m = FakeMem::default();
        m.put(0x10_0000, str_obj(l, 0x99, &s));
        assert_eq!(read_str(&m, l, 0x10_0000), Some(s));
    }

    #[test]
    fn long_and_undecodable_strings_keep_a_lossy_capped_text() {
        let l = StrLayout::for_minor(12);
        let mut m = FakeMem::default();
        let long = "f".repeat(5000);
        m.put(0x10_0000, str_obj(l, 0x99, &long));
        let got = read_str(&m, l, 0x10_0000).unwrap();
        assert_eq!(got.chars().count(), KEEP_CHARS as usize + 1);
        assert!(got.ends_with("ff…"));
        // `lib_\xff/mod.py` as Python keeps it: a lone surrogate U+DCFF (a 2-byte string).
        let mut b = str_obj(l, 0x99, "lib_\u{100}/mod.py");
        let at = l.compact_data as usize + 4 * 2;
        b[at..at + 2].copy_from_slice(&0xdcffu16.to_le_bytes());
        m.put(0x20_0000, b);
        assert_eq!(
            read_str(&m, l, 0x20_0000).as_deref(),
            Some("lib_\u{fffd}/mod.py")
        );
    }

    #[test]
    fn refuses_inconsistent_headers() {
        let l = StrLayout::for_minor(12);
        let mut m = FakeMem::default();
        let mut b = str_obj(l, 0x99, "abc");
        b[32] &= !(1 << 5); // not compact
        m.put(0x10_0000, b);
        assert_eq!(read_str(&m, l, 0x10_0000), None);
        let mut b = str_obj(l, 0x99, "abc");
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes()); // absurd length
        m.put(0x20_0000, b);
        assert_eq!(read_str(&m, l, 0x20_0000), None);
        assert_eq!(read_str(&m, l, 0x30_0001), None);
    }

    #[test]
    fn reads_small_ints() {
        for minor in [8, 11, 12, 13] {
            let l = StrLayout::for_minor(minor);
            for v in [0u64, 1, 7, 12345, 1 << 30, (1 << 40) + 3] {
                let mut m = FakeMem::default();
                m.put(0x10_0000, int_obj(l, 0x98, v));
                assert_eq!(read_int(&m, l, 0x10_0000), Some(v as i64), "{minor} {v}");
            }
        }
        // A digit with its top bits set is not a CPython digit.
        let l = StrLayout::for_minor(12);
        let mut b = int_obj(l, 0x98, 5);
        b[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut m = FakeMem::default();
        m.put(0x10_0000, b);
        assert_eq!(read_int(&m, l, 0x10_0000), None);
    }
}
