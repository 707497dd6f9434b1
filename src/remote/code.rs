//! Code objects: a function's name, file and line table, read once per code object and
//! cached, and the line a frame is at from its instruction offset.
//!
//! Line tables have three formats (described in CPython's `Objects/lnotab_notes.txt` and
//! `InternalDocs/code_objects.md`): 3.8/3.9 `co_lnotab` pairs of (bytecode increment, signed
//! line increment); 3.10 `co_linetable` pairs of (range length in bytes, signed line delta, -128
//! for "no line"); 3.11+ the location table, variable-length entries of code-unit ranges with
//! varint-coded line deltas. The decoders below are our own, written from those descriptions.

use std::collections::HashMap;

use super::mem::Memory;

use super::async_offsets::{AsyncLayout, Bytecode, CodeOffsets, BYTES_DATA};
use super::kinds::{Kind, Kinds};
use super::mem::{i64_at, read_bytes, u32_at, u64_at};
use super::offsets::OB_SIZE;
use super::strings::read_str;

/// Longest line table we read; real ones are a few KiB at most.
const MAX_TABLE: u64 = 1 << 20;
/// The cache is cleared past this many code objects.
const MAX_CACHED: usize = 8192;

/// What we keep of a code object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeInfo {
    /// `co_qualname` on 3.11+, `co_name` before.
    pub name: String,
    pub file: String,
    firstlineno: i64,
    table: Vec<u8>,
    /// Address of the bytecode (≤3.10: the `co_code` bytes' data; 3.11+: `co_code_adaptive`).
    pub bytecode: u64,
    /// Bytecode length in bytes.
    pub bytecode_len: u64,
    /// The fields that tell this code object apart from another at the same address.
    pub fingerprint: Fingerprint,
}

/// A code object's type and the pointers to its name, qualified name, file name and line
/// table, with its first line: what we compare to know that the code object at an address is
/// still the one we cached. A freed code object's memory can be reused by another code object,
/// which would have other strings (or at least another line table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u64; 6]);

/// Bytes from the start of a code object that cover its [`Fingerprint`].
pub fn fingerprint_len(c: &CodeOffsets) -> usize {
    let ptrs = [
        Some(c.filename),
        Some(c.name),
        c.qualname,
        Some(c.linetable),
    ];
    let end = ptrs
        .into_iter()
        .flatten()
        .map(|o| o + 8)
        .chain([c.firstlineno + 4, 16])
        .max()
        .unwrap_or(16);
    end as usize
}

/// The fingerprint in the first bytes `b` of a code object; `None` when `b` is too short.
pub fn fingerprint(c: &CodeOffsets, b: &[u8]) -> Option<Fingerprint> {
    Some(Fingerprint([
        u64_at(b, 8)?,
        u64_at(b, c.filename)?,
        u64_at(b, c.name)?,
        match c.qualname {
            Some(q) => u64_at(b, q)?,
            None => 0,
        },
        u64_at(b, c.linetable)?,
        u32_at(b, c.firstlineno)? as u64,
    ]))
}

/// Code objects by address. Code objects live as long as their function (module-level
/// functions: as long as the interpreter); an address reused by another code object would need
/// the first one freed, so entries are checked against the object's type on every lookup.
#[derive(Default)]
pub struct CodeCache {
    map: HashMap<u64, CodeInfo, super::stacks::FastHash>,
}

impl CodeCache {
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// The cached code object at `addr`, without any check (see [`CodeCache::get`]).
    pub fn cached(&self, addr: u64) -> Option<&CodeInfo> {
        self.map.get(&addr)
    }

    pub fn remove(&mut self, addr: u64) {
        self.map.remove(&addr);
    }

    /// Reads the code object at `addr` (its type already known to be `code`) and caches it.
    pub fn load<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &AsyncLayout,
        kinds: &mut Kinds,
        addr: u64,
    ) -> Option<&CodeInfo> {
        let info = read_code(mem, l, kinds, addr)?;
        if self.map.len() >= MAX_CACHED {
            self.map.clear();
        }
        self.map.insert(addr, info);
        self.map.get(&addr)
    }

    /// The code object at `addr`; `None` when it is not a readable code object.
    pub fn get<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &AsyncLayout,
        kinds: &mut Kinds,
        addr: u64,
    ) -> Option<&CodeInfo> {
        if kinds.of_object(mem, addr, l.tuple_items)?.1 != Kind::Code {
            return None;
        }
        if !self.map.contains_key(&addr) {
            let info = read_code(mem, l, kinds, addr)?;
            if self.map.len() >= MAX_CACHED {
                self.map.clear();
            }
            self.map.insert(addr, info);
        }
        self.map.get(&addr)
    }
}

fn read_code<M: Memory + ?Sized>(
    mem: &M,
    l: &AsyncLayout,
    kinds: &mut Kinds,
    addr: u64,
) -> Option<CodeInfo> {
    let c = &l.code;
    let len = match c.bytecode {
        Bytecode::Object { at } => at.max(c.linetable) + 8,
        Bytecode::Inline { .. } => c.linetable + 8,
    };
    let len = len.max(fingerprint_len(c) as u64);
    let b = read_bytes(mem, addr, len as usize)?;
    let fingerprint = fingerprint(c, &b)?;
    let string = |kinds: &mut Kinds, off: u64| -> Option<String> {
        let p = u64_at(&b, off)?;
        (kinds.of_object(mem, p, l.tuple_items)?.1 == Kind::Str).then_some(())?;
        read_str(mem, l.strs, p)
    };
    let name = string(kinds, c.qualname.unwrap_or(c.name))?;
    let file = string(kinds, c.filename)?;
    let firstlineno = u32_at(&b, c.firstlineno)? as i32 as i64;
    let table = bytes_object(mem, l, kinds, u64_at(&b, c.linetable)?)?;
    let (bytecode, bytecode_len) = match c.bytecode {
        Bytecode::Object { at } => {
            let p = u64_at(&b, at)?;
            let n = bytes_len(mem, l, kinds, p)?;
            (p.checked_add(BYTES_DATA)?, n)
        }
        // 3.11+: the code object is a var-object whose size counts code units.
        Bytecode::Inline { at } => {
            let units = i64_at(&b, OB_SIZE)?;
            if !(0..(MAX_TABLE as i64)).contains(&units) {
                return None;
            }
            (addr.checked_add(at)?, units as u64 * 2)
        }
    };
    Some(CodeInfo {
        name,
        file,
        firstlineno,
        table,
        bytecode,
        bytecode_len,
        fingerprint,
    })
}

fn bytes_len<M: Memory + ?Sized>(
    mem: &M,
    l: &AsyncLayout,
    kinds: &mut Kinds,
    addr: u64,
) -> Option<u64> {
    if kinds.of_object(mem, addr, l.tuple_items)?.1 != Kind::Other("bytes".into()) {
        return None;
    }
    let n = i64_at(&read_bytes(mem, addr, 24)?, OB_SIZE)?;
    (0..MAX_TABLE as i64).contains(&n).then_some(n as u64)
}

/// The contents of the `bytes` object at `addr`.
fn bytes_object<M: Memory + ?Sized>(
    mem: &M,
    l: &AsyncLayout,
    kinds: &mut Kinds,
    addr: u64,
) -> Option<Vec<u8>> {
    let n = bytes_len(mem, l, kinds, addr)?;
    if n == 0 {
        return Some(Vec::new());
    }
    read_bytes(mem, addr.checked_add(BYTES_DATA)?, n as usize)
}

impl CodeInfo {
    /// `co_firstlineno`, the line of the `def`.
    pub fn first_line(&self) -> u32 {
        u32::try_from(self.firstlineno).unwrap_or(0)
    }

    /// The source line of the instruction at byte offset `offset` in the bytecode; `None` when
    /// the table gives none (or the offset is outside the code).
    pub fn line_at(&self, minor: u64, offset: u64) -> Option<u32> {
        if offset >= self.bytecode_len.max(1) {
            return None;
        }
        let line = match minor {
            ..=9 => Some(lnotab_line(&self.table, self.firstlineno, offset)),
            10 => linetable_310_line(&self.table, self.firstlineno, offset),
            _ => location_table_line(&self.table, self.firstlineno, offset / 2),
        }?;
        u32::try_from(line).ok().filter(|&l| l > 0)
    }
}

/// 3.8/3.9 `co_lnotab`: the line of byte offset `addr`.
pub fn lnotab_line(table: &[u8], first: i64, addr: u64) -> i64 {
    let (mut line, mut at) = (first, 0u64);
    for pair in table.chunks_exact(2) {
        at += pair[0] as u64;
        if at > addr {
            break;
        }
        line += pair[1] as i8 as i64;
    }
    line
}

/// 3.10 `co_linetable`: the line of byte offset `addr`.
pub fn linetable_310_line(table: &[u8], first: i64, addr: u64) -> Option<i64> {
    let (mut line, mut start) = (first, 0u64);
    for pair in table.chunks_exact(2) {
        let end = start + pair[0] as u64;
        let delta = pair[1] as i8;
        let this = (delta != -128).then(|| {
            line += delta as i64;
            line
        });
        if (start..end).contains(&addr) {
            return this;
        }
        start = end;
    }
    None
}

/// 3.11+ location table: the line of code unit `unit`.
pub fn location_table_line(table: &[u8], first: i64, unit: u64) -> Option<i64> {
    let mut r = Reader { table, at: 0 };
    let (mut line, mut start) = (first, 0u64);
    while let Some(head) = r.byte() {
        // Every entry starts with a byte whose top bit is set; anything else is garbage.
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 15;
        let end = start + (head & 7) as u64 + 1;
        let this = match code {
            15 => None,
            14 => {
                line += r.svarint()?;
                r.varint()?; // end line delta
                r.varint()?; // start column
                r.varint()?; // end column
                Some(line)
            }
            13 => {
                line += r.svarint()?;
                Some(line)
            }
            10..=12 => {
                line += (code - 10) as i64;
                r.skip(2)?; // start and end column
                Some(line)
            }
            _ => {
                r.skip(1)?; // column
                Some(line)
            }
        };
        if (start..end).contains(&unit) {
            return this;
        }
        start = end;
    }
    None
}

struct Reader<'a> {
    table: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.table.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.at = self.at.checked_add(n).filter(|&a| a <= self.table.len())?;
        Some(())
    }

    /// 6 bits per byte, least significant first; bit 6 says another byte follows.
    fn varint(&mut self) -> Option<u64> {
        let mut b = self.byte()?;
        let (mut v, mut shift) = ((b & 63) as u64, 6);
        while b & 64 != 0 {
            b = self.byte()?;
            if shift > 60 {
                return None;
            }
            v |= ((b & 63) as u64) << shift;
            shift += 6;
        }
        Some(v)
    }

    /// The sign is the least significant bit.
    fn svarint(&mut self) -> Option<i64> {
        let v = self.varint()?;
        let m = (v >> 1) as i64;
        Some(if v & 1 == 1 { -m } else { m })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnotab() {
        // def f():            # line 10
        //     x = 1           # 11: bytes 0..4
        //     return x        # 12: bytes 4..8
        let t = [0, 1, 4, 1];
        assert_eq!(lnotab_line(&t, 10, 0), 11);
        assert_eq!(lnotab_line(&t, 10, 3), 11);
        assert_eq!(lnotab_line(&t, 10, 4), 12);
        // Negative increments (a loop jumping back).
        assert_eq!(lnotab_line(&[6, 2, 2, 0xff], 1, 8), 2);
    }

    #[test]
    fn linetable_310() {
        // 0..2 line first+1, 2..6 no line, 6..10 line first+3.
        let t = [2, 1, 4, 0x80, 4, 2];
        assert_eq!(linetable_310_line(&t, 5, 0), Some(6));
        assert_eq!(linetable_310_line(&t, 5, 3), None);
        assert_eq!(linetable_310_line(&t, 5, 9), Some(8));
        assert_eq!(linetable_310_line(&t, 5, 10), None);
    }

    #[test]
    fn location_table() {
        // RESUME (no columns, line +0), 2 units on line +1 (one-line form), a long-form entry
        // of 3 units at line +3, a no-location unit.
        let t = [
            0x80 | (13 << 3),
            0, // delta 0
            0x80 | (11 << 3) | 1,
            4,
            9,
            0x80 | (14 << 3) | 2,
            4, // +2
            0,
            1,
            5,
            0x80 | (15 << 3),
        ];
        assert_eq!(location_table_line(&t, 20, 0), Some(20));
        assert_eq!(location_table_line(&t, 20, 2), Some(21));
        assert_eq!(location_table_line(&t, 20, 4), Some(23));
        assert_eq!(location_table_line(&t, 20, 6), None);
        assert_eq!(location_table_line(&t, 20, 7), None);
        // Truncated or garbage tables give no line, never a panic.
        assert_eq!(location_table_line(&t[..6], 20, 4), None);
        assert_eq!(location_table_line(&[0x7f, 0x80], 20, 0), None);
        let mut r = Reader {
            table: &[0x7f; 20],
            at: 0,
        };
        assert_eq!(r.varint(), None);
    }
}
