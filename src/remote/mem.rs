//! Defensive reads of target memory.
//!
//! Owns the only place where bytes come out of the target: every helper returns `Option`
//! and never panics, because the target keeps running while we read (torn reads, freed
//! objects, garbage pointers). Parsing of read buffers goes through `u64_at`/`u32_at`,
//! which bound-check instead of indexing.

use remoteprocess::ProcessMemory;

/// Highest user-space address on x86-64 with 4-level paging (47 bits). Anything above
/// is certainly not a pointer into the target's heap, so we do not even issue the read.
const USER_ADDR_LIMIT: u64 = 0x0000_8000_0000_0000;
/// Below this nothing is mapped on Linux (vm.mmap_min_addr is 64 KiB by default).
const LOW_ADDR_LIMIT: u64 = 0x1_0000;
const PAGE: u64 = 4096;

/// True when `addr` could be the address of a `PyObject` in the target: user space and
/// 8-byte aligned (CPython allocates objects at least 8-aligned).
pub fn plausible_obj(addr: u64) -> bool {
    plausible_addr(addr) && addr.is_multiple_of(8)
}

/// True when `addr` lies in the user-space range where mappings can exist.
pub fn plausible_addr(addr: u64) -> bool {
    (LOW_ADDR_LIMIT..USER_ADDR_LIMIT).contains(&addr)
}

/// Reads `len` bytes at `addr`; `None` on an implausible range or a failed read.
pub fn read_bytes<M: ProcessMemory + ?Sized>(mem: &M, addr: u64, len: usize) -> Option<Vec<u8>> {
    let end = addr.checked_add(len as u64)?;
    if !plausible_addr(addr) || end > USER_ADDR_LIMIT {
        return None;
    }
    let mut buf = vec![0u8; len];
    mem.read(addr as usize, &mut buf).ok()?;
    Some(buf)
}

/// Reads up to `want` bytes at `addr`, accepting fewer (down to `need`) when the full
/// range crosses into an unmapped page: a speculative larger read saves a round trip
/// in the common case, and the page-bounded retry keeps us correct at mapping ends.
pub fn read_at_least<M: ProcessMemory + ?Sized>(
    mem: &M,
    addr: u64,
    need: usize,
    want: usize,
) -> Option<Vec<u8>> {
    if want > need {
        if let Some(buf) = read_bytes(mem, addr, want) {
            return Some(buf);
        }
        // Bytes left in this page; a read that stays in one page cannot fail for the
        // speculative tail alone.
        let in_page = (PAGE - addr % PAGE) as usize;
        if in_page > need && in_page < want {
            if let Some(buf) = read_bytes(mem, addr, in_page) {
                return Some(buf);
            }
        }
    }
    read_bytes(mem, addr, need)
}

pub fn read_u64<M: ProcessMemory + ?Sized>(mem: &M, addr: u64) -> Option<u64> {
    let buf = read_bytes(mem, addr, 8)?;
    u64_at(&buf, 0)
}

/// Little-endian u64 at byte offset `off` of `buf`, bound-checked.
pub fn u64_at(buf: &[u8], off: u64) -> Option<u64> {
    let off = usize::try_from(off).ok()?;
    let bytes = buf.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(bytes);
    Some(u64::from_le_bytes(a))
}

/// Little-endian i64 at byte offset `off` of `buf`, bound-checked.
pub fn i64_at(buf: &[u8], off: u64) -> Option<i64> {
    u64_at(buf, off).map(|v| v as i64)
}

/// Little-endian u32 at byte offset `off` of `buf`, bound-checked.
pub fn u32_at(buf: &[u8], off: u64) -> Option<u32> {
    let off = usize::try_from(off).ok()?;
    let bytes = buf.get(off..off.checked_add(4)?)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(bytes);
    Some(u32::from_le_bytes(a))
}

pub fn u8_at(buf: &[u8], off: u64) -> Option<u8> {
    buf.get(usize::try_from(off).ok()?).copied()
}

/// Reads a NUL-terminated C string of at most `max` bytes (terminator excluded).
/// Reads page by page so a short string near the end of a mapping still reads.
/// `None` if unreadable or no terminator within `max`.
pub fn read_cstr<M: ProcessMemory + ?Sized>(mem: &M, addr: u64, max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = addr;
    // +1 for the terminator; bounded loop: at most max/PAGE + 2 iterations.
    while out.len() <= max {
        let in_page = (PAGE - cur % PAGE) as usize;
        let chunk = in_page.min(max + 1 - out.len());
        let buf = read_bytes(mem, cur, chunk)?;
        if let Some(nul) = buf.iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..nul]);
            return Some(out);
        }
        out.extend_from_slice(&buf);
        cur = cur.checked_add(chunk as u64)?;
    }
    None
}

#[cfg(test)]
pub mod fake {
    //! An in-memory `ProcessMemory` for unit tests: a set of (address, bytes) regions;
    //! reads outside them fail like reads of unmapped target memory.
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct FakeMem {
        pub regions: BTreeMap<u64, Vec<u8>>,
    }

    impl FakeMem {
        pub fn put(&mut self, addr: u64, bytes: Vec<u8>) {
            self.regions.insert(addr, bytes);
        }
    }

    impl remoteprocess::ProcessMemory for FakeMem {
        fn read(&self, addr: usize, buf: &mut [u8]) -> Result<(), remoteprocess::Error> {
            let addr = addr as u64;
            if let Some((start, bytes)) = self.regions.range(..=addr).next_back() {
                let off = (addr - start) as usize;
                if let Some(src) = bytes.get(off..off + buf.len()) {
                    buf.copy_from_slice(src);
                    return Ok(());
                }
            }
            Err(remoteprocess::Error::Other(format!("unmapped 0x{addr:x}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeMem;
    use super::*;

    #[test]
    fn cstr_stops_at_nul_and_mapping_end() {
        let mut m = FakeMem::default();
        // A string ending 3 bytes before the end of its mapping: a 128-byte read would fail.
        m.put(0x10_0000 - 8, b"abcd\0xyz".to_vec());
        assert_eq!(
            read_cstr(&m, 0x10_0000 - 8, 128).as_deref(),
            Some(&b"abcd"[..])
        );
        // No terminator within the mapping: unreadable.
        m.put(0x20_0000, b"abcdefgh".to_vec());
        assert_eq!(read_cstr(&m, 0x20_0000, 128), None);
        assert_eq!(read_u64(&m, 0), None);
        assert_eq!(u64_at(&[1, 2, 3], 0), None);
        assert_eq!(u64_at(&[0; 16], u64::MAX), None);
    }
}
