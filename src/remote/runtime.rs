//! Finding the interpreter in a live process: which mapped image holds `_PyRuntime` (the
//! executable of a static build such as Debian's `/usr/bin/python3` or uv's, or `libpython` of
//! a shared build such as pyenv's), where it is in the target, and which CPython version it is.
//!
//! The version comes from the best source each version has: 3.13+ `_Py_DebugOffsets.version`
//! read from the target, 3.11+ the `Py_Version` symbol, 3.8–3.10 the image's name
//! (`libpython3.9.so.1.0`, `python3.10`) or its read-only strings, with the patch level from
//! the `PY_VERSION` string the linker keeps in the image (the reader confirms it from
//! `sys.version` once attached).

use std::fmt;

use anyhow::{Context, Result};

use super::debug_offsets::{self, DebugOffsets};
use super::elf::Image;
use super::maps::{self, Mapping};
use super::mem::{read_bytes, Memory};

/// The minors this reader knows.
pub const SUPPORTED: std::ops::RangeInclusive<u64> = 8..=15;

/// A CPython version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    /// `None` when only the minor version is known.
    pub patch: Option<u64>,
}

impl Version {
    fn from_hex(hex: u64) -> Version {
        Version {
            major: (hex >> 24) & 0xff,
            minor: (hex >> 16) & 0xff,
            patch: Some((hex >> 8) & 0xff),
        }
    }

    pub fn supported(&self) -> bool {
        self.major == 3 && SUPPORTED.contains(&self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.patch {
            Some(p) => write!(f, "{}.{}.{}", self.major, self.minor, p),
            None => write!(f, "{}.{}", self.major, self.minor),
        }
    }
}

/// Why no runtime could be found.
#[derive(Debug)]
pub enum DiscoverError {
    /// A Python this reader does not support.
    Unsupported(Version),
    /// No Python interpreter image in the process (not Python, or not started yet).
    NotFound(String),
    /// The process could not be read (gone, or permission).
    Io(anyhow::Error),
}

impl fmt::Display for DiscoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoverError::Unsupported(v) => write!(f, "CPython {v} is not supported"),
            DiscoverError::NotFound(why) => write!(f, "no Python interpreter found: {why}"),
            DiscoverError::Io(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for DiscoverError {}

/// The interpreter of a process, as found at attach.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub pid: i32,
    pub version: Version,
    /// Address of `_PyRuntime` in the target.
    pub address: u64,
    /// 3.13+: the offsets the runtime publishes.
    pub debug: Option<DebugOffsets>,
    /// The image that holds `_PyRuntime`, as the target names it.
    pub image: String,
}

/// An image that might be the interpreter: the executable, or a `libpython`.
fn is_candidate(path: &str, exe: Option<&str>) -> bool {
    let name = maps::file_name(path);
    Some(path) == exe || name.contains("libpython") || name.starts_with("python")
}

/// `(major, minor)` from a file name such as `libpython3.8.so.1.0`, `libpython3.7m.so`,
/// `python3.14` or `python2.7`.
pub fn version_from_name(name: &str) -> Option<(u64, u64)> {
    let rest = &name[name.find("python")? + "python".len()..];
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Finds the interpreter of process `pid`.
pub fn discover<M: Memory + ?Sized>(mem: &M, pid: i32) -> Result<Runtime, DiscoverError> {
    let maps = maps::read(pid).map_err(DiscoverError::Io)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| {
            let p = p.to_string_lossy().into_owned();
            p.strip_suffix(" (deleted)")
                .map(str::to_string)
                .unwrap_or(p)
        });
    let mut seen: Option<(String, Version)> = None;
    let mut found: Option<(String, Image, u64)> = None;
    for path in maps::paths(&maps) {
        if !is_candidate(path, exe.as_deref()) {
            continue;
        }
        let mine: Vec<&Mapping> = maps.iter().filter(|m| m.path == path).collect();
        let Ok(bytes) = maps::read_file(pid, mine[0]) else {
            continue;
        };
        let Ok(image) = Image::parse(&bytes) else {
            continue;
        };
        drop(bytes);
        if seen.is_none() {
            if let Some(v) = image_version(path, &image) {
                seen = Some((path.to_string(), v));
            }
        }
        let Some(runtime) = image.runtime else {
            continue;
        };
        let Some(bias) = image.load_bias(&mine) else {
            continue;
        };
        let version = image_version(path, &image);
        if let Some(v) = version {
            seen = Some((path.to_string(), v));
        }
        found = Some((path.to_string(), image, runtime.wrapping_add(bias)));
        break;
    }
    let Some((image_path, image, address)) = found else {
        return Err(match seen {
            Some((_, v)) if !v.supported() => DiscoverError::Unsupported(v),
            Some((path, v)) => DiscoverError::NotFound(format!(
                "{path} (Python {v}) has no _PyRuntime symbol or .PyRuntime section"
            )),
            None => DiscoverError::NotFound("no python executable or libpython is mapped".into()),
        });
    };
    // 3.13+ start `_PyRuntime` with the debug offsets, whose version is authoritative.
    let head = read_bytes(mem, address, debug_offsets::READ_LEN)
        .or_else(|| read_bytes(mem, address, 16))
        .with_context(|| format!("cannot read _PyRuntime of process {pid} at 0x{address:x}"))
        .map_err(DiscoverError::Io)?;
    let from_debug = debug_offsets::version_hex(&head)
        .ok()
        .map(Version::from_hex);
    let version = match (from_debug, image_version(&image_path, &image), seen) {
        (Some(v), _, _) => v,
        (None, Some(v), _) => v,
        (None, None, Some((_, v))) => v,
        (None, None, None) => {
            return Err(DiscoverError::NotFound(format!(
                "cannot tell the Python version of {image_path}"
            )))
        }
    };
    if !version.supported() {
        return Err(DiscoverError::Unsupported(version));
    }
    let debug = if version.minor >= 13 {
        let d = debug_offsets::parse(&head, version.minor)
            .with_context(|| format!("_Py_DebugOffsets of {image_path}"))
            .map_err(DiscoverError::Io)?;
        Some(d)
    } else {
        None
    };
    Ok(Runtime {
        pid,
        version,
        address,
        debug,
        image: image_path,
    })
}

/// The version an image says it is: `Py_Version`, else its name (and a matching version
/// string for the patch level), else its read-only strings alone.
fn image_version(path: &str, image: &Image) -> Option<Version> {
    if let Some(hex) = image.py_version.filter(|h| h >> 24 == 3) {
        return Some(Version::from_hex(hex));
    }
    let named = version_from_name(maps::file_name(path)).or_else(|| {
        // The stdlib directory the image names (`lib/python3.9`), when it names one only.
        let mut minors = image.python_minors.clone();
        minors.sort_unstable();
        minors.dedup();
        (minors.len() == 1).then(|| (3, minors[0]))
    })?;
    let patch = most_common(
        image
            .version_strings
            .iter()
            .filter(|v| (v.0, v.1) == named)
            .map(|v| v.2),
    );
    Some(Version {
        major: named.0,
        minor: named.1,
        patch,
    })
}

fn most_common(items: impl Iterator<Item = u64>) -> Option<u64> {
    let mut counts: Vec<(u64, usize)> = Vec::new();
    for i in items {
        match counts.iter_mut().find(|(v, _)| *v == i) {
            Some(c) => c.1 += 1,
            None => counts.push((i, 1)),
        }
    }
    counts.into_iter().max_by_key(|c| c.1).map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_names() {
        assert_eq!(version_from_name("libpython3.8.so.1.0"), Some((3, 8)));
        assert_eq!(version_from_name("libpython3.7m.so.1.0"), Some((3, 7)));
        assert_eq!(version_from_name("python3.14"), Some((3, 14)));
        assert_eq!(version_from_name("python2.7"), Some((2, 7)));
        assert_eq!(version_from_name("python3"), None);
        assert_eq!(version_from_name("loopspy"), None);
        let v = Version {
            major: 3,
            minor: 16,
            patch: Some(0),
        };
        assert!(!v.supported());
        assert_eq!(v.to_string(), "3.16.0");
        assert_eq!(Version::from_hex(0x030f02f0).to_string(), "3.15.2");
    }

    #[test]
    fn our_own_process_is_not_python() {
        let me = std::process::id() as i32;
        let mem = super::super::mem::Process::new(me);
        assert!(matches!(
            discover(&mem, me),
            Err(DiscoverError::NotFound(_))
        ));
    }
}
