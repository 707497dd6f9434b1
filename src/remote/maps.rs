//! The target's memory map (`/proc/PID/maps`) and access to the files mapped in it.
//!
//! A mapped file is opened through `/proc/PID/map_files/START-END` (the very inode the target
//! mapped, even when the file was replaced or deleted since) or else through
//! `/proc/PID/root/PATH` (the target's mount namespace: a container's own files). Never through
//! the host's PATH: in a container that would be another file of the same name.

use std::fs::File;
use std::io::Read;

use anyhow::{Context, Result};

/// One line of `/proc/PID/maps` that maps a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of the first mapped byte.
    pub offset: u64,
    /// The path as the target sees it (without a ` (deleted)` suffix).
    pub path: String,
}

/// Parses the file-backed lines of a maps file.
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            // address perms offset dev inode path
            let mut parts = line.splitn(6, ' ');
            let range = parts.next()?;
            let _perms = parts.next()?;
            let offset = u64::from_str_radix(parts.next()?, 16).ok()?;
            let _dev = parts.next()?;
            let _inode = parts.next()?;
            let path = parts.next()?.trim_start();
            let path = path.strip_suffix(" (deleted)").unwrap_or(path);
            if !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset,
                path: path.to_string(),
            })
        })
        .collect()
}

/// The target's file mappings.
pub fn read(pid: i32) -> Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("cannot read /proc/{pid}/maps"))?;
    Ok(parse(&text))
}

/// The distinct paths mapped, in order of first appearance.
pub fn paths(maps: &[Mapping]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for m in maps {
        if !out.contains(&m.path.as_str()) {
            out.push(&m.path);
        }
    }
    out
}

/// The file name of a path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Largest mapped file we read whole (a libpython with debug info is ~30 MB).
const MAX_FILE: u64 = 512 << 20;

/// Reads the whole file mapped at `m`, as the target sees it (see the module doc).
pub fn read_file(pid: i32, m: &Mapping) -> Result<Vec<u8>> {
    let by_map = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let by_root = format!("/proc/{pid}/root{}", m.path);
    let file = File::open(&by_map)
        .or_else(|_| File::open(&by_root))
        .with_context(|| format!("cannot open {} of process {pid}", m.path))?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        anyhow::bail!(
            "{} of process {pid} is not a regular file of a sane size",
            m.path
        );
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {} of process {pid}", m.path))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_lines_only() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 123 /usr/bin/python3.11
55d0c0a01000-55d0c0b00000 r-xp 00001000 08:01 123 /usr/bin/python3.11
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 
7f0000002000-7f0000003000 r--p 00002000 08:01 9 /opt/lib/libpython3.8.so.1.0 (deleted)
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
";
        let m = parse(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].offset, 0x1000);
        assert_eq!(m[2].path, "/opt/lib/libpython3.8.so.1.0");
        assert_eq!(
            paths(&m),
            vec!["/usr/bin/python3.11", "/opt/lib/libpython3.8.so.1.0"]
        );
        assert_eq!(file_name(&m[2].path), "libpython3.8.so.1.0");
    }
}
