//! 3.14: the running-loop offset from the `_asyncio` module's `.AsyncioDebug` ELF section.
//!
//! CPython 3.14 keeps the running loop in `_PyThreadStateImpl.asyncio_running_loop` and
//! publishes its offset in `Py_AsyncioModuleDebugOffsets`, which `GENERATE_DEBUG_SECTION`
//! places in a section named `.AsyncioDebug` of whatever image contains `_asyncio`
//! (normally `lib-dynload/_asyncio.cpython-314-*.so`; built-in on some distro builds). The
//! values are compile-time constants, so we read the section from the file on disk (via
//! `/proc/PID/root`, which also works across mount namespaces) rather than from memory.
//!
//! Layout (13 u64, 3.14 `Modules/_asynciomodule.c`): `asyncio_task_object` {size, task_name,
//! task_awaited_by, task_is_task, task_awaited_by_is_set, task_coro, task_node},
//! `asyncio_interpreter_state` {size, asyncio_tasks_head}, `asyncio_thread_state` {size,
//! asyncio_running_loop, asyncio_running_task, asyncio_tasks_head}.

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{bail, Context, Result};

use super::mem::{u32_at, u64_at};

pub const SECTION: &str = ".AsyncioDebug";
/// Byte positions of `asyncio_thread_state.size` and `.asyncio_running_loop`.
const TS_SIZE_POS: u64 = 9 * 8;
const TS_RUNNING_LOOP_POS: u64 = 10 * 8;
const SECTION_MIN: usize = 13 * 8;

/// Finds `asyncio_thread_state.asyncio_running_loop` for the target. `Ok(None)` when no
/// mapped image carries the section and no `_asyncio` module is mapped yet (asyncio not
/// imported: no thread can be running a loop); an error when `_asyncio` is mapped but the
/// offsets cannot be read.
pub fn running_loop_offset(pid: i32) -> Result<Option<u64>> {
    match section(pid)? {
        Some((path, bytes)) => parse(&bytes)
            .map(Some)
            .with_context(|| format!("{SECTION} of {path}")),
        None => Ok(None),
    }
}

/// Every field of `Py_AsyncioModuleDebugOffsets`, for the task reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncioOffsets {
    pub task_size: u64,
    pub task_name: u64,
    pub task_coro: u64,
    pub task_node: u64,
    pub interp_tasks_head: u64,
    pub running_task: u64,
    pub thread_tasks_head: u64,
}

/// The task offsets of the target's `.AsyncioDebug` section, like [`running_loop_offset`].
pub fn asyncio_offsets(pid: i32) -> Result<Option<AsyncioOffsets>> {
    let Some((path, sec)) = section(pid)? else {
        return Ok(None);
    };
    parse_offsets(&sec)
        .map(Some)
        .with_context(|| format!("{SECTION} of {path}"))
}

/// Validates the section and returns its task offsets.
pub fn parse_offsets(sec: &[u8]) -> Result<AsyncioOffsets> {
    parse(sec)?;
    let w = |i: u64| u64_at(sec, i * 8).unwrap_or(0);
    let o = AsyncioOffsets {
        task_size: w(0),
        task_name: w(1),
        task_coro: w(5),
        task_node: w(6),
        interp_tasks_head: w(8),
        running_task: w(11),
        thread_tasks_head: w(12),
    };
    // Inside their structs, 8-aligned; the name follows the coroutine (as in every TaskObj).
    let inside =
        |off: u64, size: u64| off >= 16 && off.is_multiple_of(8) && off.saturating_add(8) <= size;
    if !inside(o.task_coro, o.task_size)
        || o.task_name != o.task_coro + 8
        || !inside(o.task_node, o.task_size)
        || !inside(o.running_task, w(9))
        || !inside(o.thread_tasks_head, w(9))
        || !inside(o.interp_tasks_head, w(7))
    {
        bail!("implausible task offsets: {o:?}");
    }
    Ok(o)
}

/// The path and bytes of the first mapped image with a `.AsyncioDebug` section; `Ok(None)` when
/// `_asyncio` is not loaded yet; an error when it is but has no such section.
fn section(pid: i32) -> Result<Option<(String, Vec<u8>)>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("cannot read /proc/{pid}/maps"))?;
    let mut paths: Vec<&str> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let Some(path) = line.splitn(6, ' ').nth(5).map(str::trim) else {
            continue;
        };
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        if path.starts_with('/') && !paths.contains(&path) {
            paths.push(path);
        }
    }
    let file_name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    let asyncio_so: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|p| file_name(p).starts_with("_asyncio"))
        .collect();
    // The extension module first; then images that might have `_asyncio` built in.
    let mut candidates = asyncio_so.clone();
    candidates.extend(paths.iter().copied().filter(|p| {
        let f = file_name(p);
        f.starts_with("python") || f.starts_with("libpython")
    }));
    for path in candidates {
        if let Some(bytes) = read_section(pid, path, SECTION)? {
            return Ok(Some((path.to_string(), bytes)));
        }
    }
    if asyncio_so.is_empty() {
        return Ok(None);
    }
    bail!(
        "{} is loaded but has no {SECTION} section",
        asyncio_so.join(", ")
    )
}

/// Validates the section and returns the running-loop offset.
pub fn parse(sec: &[u8]) -> Result<u64> {
    if sec.len() < SECTION_MIN {
        bail!(
            "section is {} bytes, expected at least {SECTION_MIN}",
            sec.len()
        );
    }
    let (Some(ts_size), Some(off)) = (u64_at(sec, TS_SIZE_POS), u64_at(sec, TS_RUNNING_LOOP_POS))
    else {
        bail!("section truncated");
    };
    // The slot lies past the public PyThreadState (hundreds of bytes) and inside the
    // _PyThreadStateImpl whose size the section also gives.
    if !(64..1 << 16).contains(&ts_size)
        || off < 64
        || off.saturating_add(8) > ts_size
        || off % 8 != 0
    {
        bail!("implausible asyncio_thread_state (size {ts_size}, running loop @{off})");
    }
    Ok(off)
}

/// Reads the contents of the named section of the ELF file at `path` in the target's
/// mount namespace. `Ok(None)` when the file has no such section or is not a readable ELF.
fn read_section(pid: i32, path: &str, name: &str) -> Result<Option<Vec<u8>>> {
    let file = match File::open(format!("/proc/{pid}/root{path}")).or_else(|_| File::open(path)) {
        Ok(f) => f,
        Err(_) => return Ok(None),
    };
    Ok(elf_section(&file, name))
}

fn read_at(file: &File, off: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off).ok()?;
    Some(buf)
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

/// Minimal ELF64 little-endian section lookup: header → section header table →
/// section-name string table → the section's file bytes. Bounded sizes throughout.
pub fn elf_section(file: &File, name: &str) -> Option<Vec<u8>> {
    let eh = read_at(file, 0, 64)?;
    if eh.get(..4)? != b"\x7fELF" || *eh.get(4)? != 2 || *eh.get(5)? != 1 {
        return None;
    }
    let shoff = u64_at(&eh, 0x28)?;
    let shentsize = u16_at(&eh, 0x3a)? as u64;
    let shnum = u16_at(&eh, 0x3c)? as u64;
    let shstrndx = u16_at(&eh, 0x3e)? as u64;
    if shentsize != 64 || shnum == 0 || shstrndx >= shnum {
        return None;
    }
    let table = read_at(file, shoff, (shnum * 64) as usize)?;
    let sh = |i: u64| table.get((i * 64) as usize..(i * 64 + 64) as usize);
    let strtab_hdr = sh(shstrndx)?;
    let (str_off, str_size) = (u64_at(strtab_hdr, 24)?, u64_at(strtab_hdr, 32)?);
    if str_size > 1 << 20 {
        return None;
    }
    let strtab = read_at(file, str_off, str_size as usize)?;
    for i in 0..shnum {
        let h = sh(i)?;
        let name_off = u32_at(h, 0)? as usize;
        let Some(rest) = strtab.get(name_off..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] != name.as_bytes() {
            continue;
        }
        const SHT_NOBITS: u32 = 8;
        let (ty, off, size) = (u32_at(h, 4)?, u64_at(h, 24)?, u64_at(h, 32)?);
        if ty == SHT_NOBITS || size > 1 << 16 {
            return None;
        }
        return read_at(file, off, size as usize);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 3.14.7/3.14.10 values (cpython-notes §3.3).
    fn section_314() -> Vec<u8> {
        [
            168u64, 136, 96, 108, 109, 128, 152, 225864, 10880, 936, 864, 872, 880,
        ]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
    }

    #[test]
    fn parses_section() {
        assert_eq!(parse(&section_314()).unwrap(), 864);
        assert!(parse(&section_314()[..96]).is_err());
        let mut bad = section_314();
        bad[80..88].copy_from_slice(&2000u64.to_le_bytes()); // past asyncio_thread_state.size
        assert!(parse(&bad).is_err());
        bad[80..88].copy_from_slice(&u64::MAX.to_le_bytes()); // must not overflow
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn parses_task_offsets() {
        let o = parse_offsets(&section_314()).unwrap();
        assert_eq!(
            (o.task_name, o.task_coro, o.task_node, o.running_task),
            (136, 128, 152, 872)
        );
        assert_eq!((o.thread_tasks_head, o.interp_tasks_head), (880, 10880));
        let mut bad = section_314();
        bad[8..16].copy_from_slice(&200u64.to_le_bytes()); // task_name past the TaskObj
        assert!(parse_offsets(&bad).is_err());
    }

    #[test]
    fn elf_reader_finds_real_sections() {
        // Our own test binary is an ELF: its .text exists, a made-up section does not.
        let exe = File::open("/proc/self/exe").unwrap();
        assert!(elf_section(&exe, ".comment").is_some_and(|b| !b.is_empty()));
        assert_eq!(elf_section(&exe, ".no_such_section"), None);
        // No `_asyncio` in our own process: nothing to find, not an error.
        assert_eq!(
            running_loop_offset(std::process::id() as i32).unwrap(),
            None
        );
    }
}
