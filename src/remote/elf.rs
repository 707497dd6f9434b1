//! What we need from a mapped ELF image (parsed with goblin): the `_PyRuntime` symbol or the
//! `.PyRuntime` section, `Py_Version`, the `.AsyncioDebug` section, the load segments (for the
//! load bias) and, for 3.8–3.10 whose binaries carry no version number we can read directly,
//! the version strings in the read-only data.

use anyhow::{anyhow, Result};
use goblin::elf::header::{ET_DYN, ET_EXEC};
use goblin::elf::program_header::PT_LOAD;
use goblin::elf::section_header::SHT_NOBITS;
use goblin::elf::Elf;

use super::maps::Mapping;

/// One `PT_LOAD` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    vaddr: u64,
    offset: u64,
    filesz: u64,
}

/// What one image offers, with addresses as linked (add [`Image::load_bias`] for the target's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// `ET_DYN` (shared object or PIE: add the load bias) rather than `ET_EXEC` (absolute).
    pub relocatable: bool,
    loads: Vec<Segment>,
    /// `_PyRuntime` (the dynamic symbol, else the static one, else the `.PyRuntime` section).
    pub runtime: Option<u64>,
    /// The value of `Py_Version` (3.11+): `PY_VERSION_HEX`.
    pub py_version: Option<u64>,
    /// The bytes of the `.AsyncioDebug` section (3.14+: where `_asyncio` is built in).
    pub asyncio_debug: Option<Vec<u8>>,
    /// `(major, minor, patch)` candidates found in the read-only data (`3.8.18\0`).
    pub version_strings: Vec<(u64, u64, u64)>,
    /// `N` of every `python3.N` in the read-only data (the stdlib directory `lib/python3.N`).
    pub python_minors: Vec<u64>,
}

/// Largest section we copy (`.AsyncioDebug` is about 100 bytes).
const MAX_SECTION: u64 = 1 << 16;

impl Image {
    /// Parses the ELF file `bytes`. Errors when it is not an ELF executable or shared object.
    pub fn parse(bytes: &[u8]) -> Result<Image> {
        let elf = Elf::parse(bytes).map_err(|e| anyhow!("not a readable ELF file: {e}"))?;
        let relocatable = match elf.header.e_type {
            ET_DYN => true,
            ET_EXEC => false,
            t => {
                return Err(anyhow!(
                    "ELF type {t} is neither an executable nor a shared object"
                ))
            }
        };
        let loads = elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .map(|p| Segment {
                vaddr: p.p_vaddr,
                offset: p.p_offset,
                filesz: p.p_filesz,
            })
            .collect();
        let symbol = |name: &str| {
            let dynamic = elf
                .dynsyms
                .iter()
                .find(|s| elf.dynstrtab.get_at(s.st_name) == Some(name));
            dynamic
                .or_else(|| {
                    elf.syms
                        .iter()
                        .find(|s| elf.strtab.get_at(s.st_name) == Some(name))
                })
                .filter(|s| s.st_value != 0)
                .map(|s| (s.st_value, s.st_size))
        };
        let section = |name: &str| {
            elf.section_headers
                .iter()
                .find(|h| elf.shdr_strtab.get_at(h.sh_name) == Some(name))
        };
        let runtime = symbol("_PyRuntime")
            .map(|s| s.0)
            .or_else(|| section(".PyRuntime").map(|h| h.sh_addr).filter(|&a| a != 0));
        // `Py_Version` is a `const unsigned long`: read its value from the file.
        let py_version = symbol("Py_Version").and_then(|(vaddr, size)| {
            let off = file_offset(&elf, vaddr)?;
            let b = bytes.get(off as usize..(off + size.clamp(4, 8)) as usize)?;
            Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as u64)
        });
        let asyncio_debug = section(".AsyncioDebug")
            .filter(|h| h.sh_type != SHT_NOBITS && h.sh_size <= MAX_SECTION)
            .and_then(|h| {
                bytes
                    .get(h.sh_offset as usize..(h.sh_offset + h.sh_size) as usize)
                    .map(<[u8]>::to_vec)
            });
        let rodata = section(".rodata")
            .filter(|h| h.sh_type != SHT_NOBITS)
            .and_then(|h| bytes.get(h.sh_offset as usize..(h.sh_offset + h.sh_size) as usize))
            .unwrap_or_default();
        Ok(Image {
            relocatable,
            loads,
            runtime,
            py_version,
            asyncio_debug,
            version_strings: version_strings(rodata),
            python_minors: python_minors(rodata),
        })
    }

    /// The load bias of this image in the target, from its mappings there: 0 for an `ET_EXEC`
    /// image; for `ET_DYN`, where the mapping of some load segment starts minus where that
    /// segment's bytes were linked. `None` when no mapping matches a load segment.
    pub fn load_bias(&self, mappings: &[&Mapping]) -> Option<u64> {
        if !self.relocatable {
            return Some(0);
        }
        mappings.iter().find_map(|m| {
            let seg = self
                .loads
                .iter()
                .find(|s| s.offset <= m.offset && m.offset < s.offset + s.filesz.max(1))?;
            // The linked address of the mapping's first byte (segments are congruent to their
            // file offsets modulo the page size, and mappings start on page boundaries).
            let linked = seg.vaddr.checked_add(m.offset - seg.offset)?;
            m.start.checked_sub(linked)
        })
    }
}

/// The file offset of the linked address `vaddr`, through the load segment that holds it.
fn file_offset(elf: &Elf, vaddr: u64) -> Option<u64> {
    elf.program_headers
        .iter()
        .filter(|p| p.p_type == PT_LOAD)
        .find(|p| p.p_vaddr <= vaddr && vaddr < p.p_vaddr + p.p_filesz)
        .map(|p| vaddr - p.p_vaddr + p.p_offset)
}

/// Every `M.N.P` (optionally with a release tag like `a1`/`rc2` and a `+`) that ends a string of
/// the read-only data. CPython's `PY_VERSION` literal ends strings such as the build directory
/// `.../Python-3.8.18` (the linker merges it into their tail), so it is found even when it is
/// not a string of its own.
fn version_strings(data: &[u8]) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for (nul, _) in data.iter().enumerate().filter(|(_, b)| **b == 0) {
        let Some(text) = tail(&data[..nul]) else {
            continue;
        };
        if let Some(v) = parse_version(text) {
            out.push(v);
        }
    }
    out
}

/// `N` of every `python3.N` (followed by a non-digit) in `data`.
fn python_minors(data: &[u8]) -> Vec<u64> {
    const NEEDLE: &[u8] = b"python3.";
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = data[at..].windows(NEEDLE.len()).position(|w| w == NEEDLE) {
        let digits_start = at + i + NEEDLE.len();
        let digits: Vec<u8> = data[digits_start..]
            .iter()
            .take(3)
            .take_while(|b| b.is_ascii_digit())
            .copied()
            .collect();
        if (1..=2).contains(&digits.len()) {
            if let Some(n) = std::str::from_utf8(&digits)
                .ok()
                .and_then(|d| d.parse().ok())
            {
                out.push(n);
            }
        }
        at = digits_start;
    }
    out
}

/// The printable characters right before `end` (at most 24 of them).
fn tail(s: &[u8]) -> Option<&str> {
    let start = s
        .iter()
        .rposition(|b| !(b.is_ascii_alphanumeric() || *b == b'.' || *b == b'+'))
        .map_or(0, |p| p + 1)
        .max(s.len().saturating_sub(24));
    std::str::from_utf8(&s[start..]).ok()
}

/// `M.N.P[tag][+]` at the end of `text` (after a non-digit), with M 2 or 3.
fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let text = text.strip_suffix('+').unwrap_or(text);
    // Drop a release tag: a1, b2, rc3.
    let core = text.trim_end_matches(|c: char| c.is_ascii_digit());
    let core = ["rc", "a", "b"]
        .iter()
        .find_map(|t| core.strip_suffix(t))
        .filter(|_| core.len() < text.len())
        .unwrap_or(text);
    let start = core
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let mut parts = core[start..].split('.');
    let major: u64 = parts.next()?.parse().ok()?;
    let minor: u64 = parts.next()?.parse().ok()?;
    let patch: u64 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && (2..=3).contains(&major) && minor < 100 && patch < 100)
        .then_some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_version_strings_at_string_ends() {
        let data =
            b"\0/tmp/build/Python-3.8.18\0lib/python3.8\0x 3.10.0rc2\0v2.7.18+\0GCC 12.2.0\0\x31.2\0";
        let v = version_strings(data);
        assert!(v.contains(&(3, 8, 18)), "{v:?}");
        assert!(v.contains(&(3, 10, 0)), "{v:?}");
        assert!(v.contains(&(2, 7, 18)), "{v:?}");
        assert!(!v.iter().any(|&(m, _, _)| m == 12 || m == 1), "{v:?}");
        assert_eq!(parse_version("python3.8"), None);
        assert_eq!(
            python_minors(b"\0lib/python3.10\0python3.8/x\0python3.\0"),
            vec![10, 8]
        );
    }

    #[test]
    fn parses_our_own_binary() {
        let bytes = std::fs::read("/proc/self/exe").unwrap();
        let img = Image::parse(&bytes).unwrap();
        assert_eq!(img.runtime, None);
        assert_eq!(img.py_version, None);
        assert!(Image::parse(b"not an elf").is_err());
    }

    #[test]
    fn load_bias_of_exec_and_dyn() {
        let img = Image {
            relocatable: true,
            loads: vec![
                Segment {
                    vaddr: 0,
                    offset: 0,
                    filesz: 0x1000,
                },
                Segment {
                    vaddr: 0x2000,
                    offset: 0x1000,
                    filesz: 0x3000,
                },
            ],
            ..Default::default()
        };
        let m = Mapping {
            start: 0x7f00_0000_2000,
            end: 0x7f00_0000_5000,
            offset: 0x1000,
            path: "/lib/libpython3.11.so".into(),
        };
        assert_eq!(img.load_bias(&[&m]), Some(0x7f00_0000_0000));
        let exec = Image {
            relocatable: false,
            ..img
        };
        assert_eq!(exec.load_bias(&[&m]), Some(0));
    }
}
