//! Defensive reads of target memory.
//!
//! Owns the only place where bytes come out of the target: [`Process`] reads with
//! `process_vm_readv` (one call per read, or one call for many reads with [`Memory::read_many`]),
//! never pausing the target and never writing to it. Every helper returns `Option` and never
//! panics, because the target keeps running while we read (torn reads, freed objects, garbage
//! pointers). Parsing of read buffers goes through `u64_at`/`u32_at`, which bound-check instead
//! of indexing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// Read access to a target's memory. `read` fills the whole buffer or fails.
pub trait Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()>;

    /// Several reads at once; `out[i]` is set to whether request `i` was read whole. The
    /// default does one `read` per request; [`Process`] does them in as few system calls as it
    /// can.
    fn read_many(&self, reqs: &mut [Req<'_>]) {
        for r in reqs.iter_mut() {
            r.ok = plausible_range(r.addr, r.buf.len()) && self.read(r.addr, r.buf).is_ok();
        }
    }
}

/// One request of a batched read.
pub struct Req<'a> {
    pub addr: u64,
    pub buf: &'a mut [u8],
    /// Set by [`Memory::read_many`]: the buffer holds the target's bytes.
    pub ok: bool,
}

impl<'a> Req<'a> {
    pub fn new(addr: u64, buf: &'a mut [u8]) -> Req<'a> {
        Req {
            addr,
            buf,
            ok: false,
        }
    }
}

/// `IOV_MAX` on Linux: the most iovecs one `process_vm_readv` takes.
const IOV_MAX: usize = 1024;

/// A live process, read with `process_vm_readv` (the same ptrace access check as
/// `/proc/PID/mem`; `/proc/PID/mem` is the fallback where the system call is missing).
#[derive(Debug)]
pub struct Process {
    pid: i32,
    /// `/proc/PID/mem`, opened on first need when `process_vm_readv` is not available (ENOSYS).
    fallback: OnceLock<Option<File>>,
}

impl Process {
    pub fn new(pid: i32) -> Process {
        Process {
            pid,
            fallback: OnceLock::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn mem_file(&self) -> Option<&File> {
        self.fallback
            .get_or_init(|| File::open(format!("/proc/{}/mem", self.pid)).ok())
            .as_ref()
    }

    /// One `process_vm_readv` over `reqs` (at most `IOV_MAX`); the number of bytes read.
    fn readv(&self, reqs: &mut [Req<'_>]) -> std::io::Result<usize> {
        let mut local: Vec<libc::iovec> = Vec::with_capacity(reqs.len());
        let mut remote: Vec<libc::iovec> = Vec::with_capacity(reqs.len());
        for r in reqs.iter_mut() {
            local.push(libc::iovec {
                iov_base: r.buf.as_mut_ptr().cast(),
                iov_len: r.buf.len(),
            });
            remote.push(libc::iovec {
                iov_base: r.addr as usize as *mut libc::c_void,
                iov_len: r.buf.len(),
            });
        }
        // SAFETY: every local iovec points into a live, exclusively borrowed buffer of exactly
        // its length; the remote ones are only addresses in the other process.
        let n = unsafe {
            libc::process_vm_readv(
                self.pid,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl Memory for Process {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut one = [Req::new(addr, buf)];
        match self.readv(&mut one) {
            Ok(n) if n == one[0].buf.len() => Ok(()),
            Ok(_) => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                let file = self.mem_file().ok_or(e)?;
                file.read_exact_at(one[0].buf, addr)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the requests with `process_vm_readv`, up to `IOV_MAX` per call. The kernel stops at
    /// the first request it cannot read (an unmapped address); requests before it are whole and
    /// the call resumes after it. So a batch costs one system call per failed request plus one.
    fn read_many(&self, reqs: &mut [Req<'_>]) {
        let mut i = 0;
        while i < reqs.len() {
            if reqs[i].buf.is_empty() || !plausible_range(reqs[i].addr, reqs[i].buf.len()) {
                reqs[i].ok = reqs[i].buf.is_empty();
                i += 1;
                continue;
            }
            // The run of plausible requests from `i`, at most IOV_MAX long.
            let mut end = i;
            while end < reqs.len()
                && end - i < IOV_MAX
                && !reqs[end].buf.is_empty()
                && plausible_range(reqs[end].addr, reqs[end].buf.len())
            {
                end += 1;
            }
            let run = &mut reqs[i..end];
            let n = match self.readv(run) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    for r in run.iter_mut() {
                        r.ok = self.read(r.addr, r.buf).is_ok();
                    }
                    i = end;
                    continue;
                }
                // The first request failed outright (e.g. EFAULT): skip it.
                Err(_) => 0,
            };
            let mut left = n;
            let mut done = 0;
            for r in run.iter_mut() {
                if left >= r.buf.len() {
                    left -= r.buf.len();
                    r.ok = true;
                    done += 1;
                } else {
                    r.ok = false;
                    break;
                }
            }
            // `done` whole requests, then the one that failed (or the end of the run).
            i += (done + 1).min(end - i);
        }
    }
}

/// Memory with some regions already read (in the same batched read as a stack): a read inside
/// one of them is served from it, any other goes to the target. For one sample's reads only.
pub struct Prefetched<'a, M: Memory + ?Sized> {
    inner: &'a M,
    regions: Vec<(u64, Vec<u8>)>,
}

impl<'a, M: Memory + ?Sized> Prefetched<'a, M> {
    pub fn new(inner: &'a M, regions: Vec<(u64, Vec<u8>)>) -> Prefetched<'a, M> {
        Prefetched { inner, regions }
    }
}

impl<M: Memory + ?Sized> Memory for Prefetched<'_, M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        for (start, bytes) in &self.regions {
            if let Some(off) = addr.checked_sub(*start) {
                if let Some(src) = bytes.get(off as usize..off as usize + buf.len()) {
                    buf.copy_from_slice(src);
                    return Ok(());
                }
            }
        }
        self.inner.read(addr, buf)
    }
}

/// Reads `(address, length)` pairs in as few system calls as the memory allows; `None` for
/// each one that could not be read whole.
pub fn read_batch<M: Memory + ?Sized>(mem: &M, reqs: &[(u64, usize)]) -> Vec<Option<Vec<u8>>> {
    let mut bufs: Vec<Vec<u8>> = reqs.iter().map(|&(_, n)| vec![0u8; n]).collect();
    let oks: Vec<bool> = {
        let mut rs: Vec<Req<'_>> = bufs
            .iter_mut()
            .zip(reqs)
            .map(|(b, &(a, _))| Req::new(a, b))
            .collect();
        mem.read_many(&mut rs);
        rs.iter().map(|r| r.ok).collect()
    };
    bufs.into_iter()
        .zip(oks)
        .map(|(b, ok)| ok.then_some(b))
        .collect()
}

/// True when `[addr, addr + len)` lies in user space.
fn plausible_range(addr: u64, len: usize) -> bool {
    plausible_addr(addr)
        && addr
            .checked_add(len as u64)
            .is_some_and(|end| end <= USER_ADDR_LIMIT)
}

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
pub fn read_bytes<M: Memory + ?Sized>(mem: &M, addr: u64, len: usize) -> Option<Vec<u8>> {
    if !plausible_range(addr, len) {
        return None;
    }
    let mut buf = vec![0u8; len];
    mem.read(addr, &mut buf).ok()?;
    Some(buf)
}

/// Reads up to `want` bytes at `addr`, accepting fewer (down to `need`) when the full
/// range crosses into an unmapped page: a speculative larger read saves a round trip
/// in the common case, and the page-bounded retry keeps us correct at mapping ends.
pub fn read_at_least<M: Memory + ?Sized>(
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

pub fn read_u64<M: Memory + ?Sized>(mem: &M, addr: u64) -> Option<u64> {
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
pub fn read_cstr<M: Memory + ?Sized>(mem: &M, addr: u64, max: usize) -> Option<Vec<u8>> {
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
    //! An in-memory `Memory` for unit tests: a set of (address, bytes) regions;
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

    impl super::Memory for FakeMem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
            if let Some((start, bytes)) = self.regions.range(..=addr).next_back() {
                let off = (addr - start) as usize;
                if let Some(src) = bytes.get(off..off + buf.len()) {
                    buf.copy_from_slice(src);
                    return Ok(());
                }
            }
            Err(std::io::ErrorKind::NotFound.into())
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
