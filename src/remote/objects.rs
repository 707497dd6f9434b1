//! Type names of remote objects (`ob_type->tp_name`), validated and cached.
//!
//! A type name is the scanner's validity check for any object pointer it got from the
//! target: if the pointer is stale or garbage, `ob_type` or `tp_name` will not read as a
//! plausible pointer and NUL-terminated printable name. Names are cached per type address
//! together with the `tp_name` pointer they were read from, so a repeat costs two small
//! reads (object header, type header) and no string read; a changed `tp_name` pointer (type
//! freed and its memory reused) invalidates the entry.

use std::collections::HashMap;

use remoteprocess::ProcessMemory;

use super::mem::{plausible_addr, plausible_obj, read_cstr, read_u64};
use super::offsets::{OB_TYPE, TP_NAME};

/// Longest type name we accept; real ones are far shorter.
const MAX_NAME: usize = 256;
/// The cache is cleared past this many types: bounded memory if the target churns types.
const MAX_CACHED: usize = 1024;

#[derive(Default)]
pub struct TypeNames {
    cache: HashMap<u64, (u64, String)>,
}

impl TypeNames {
    /// The address of the object's type, if the object header reads and points somewhere
    /// plausible.
    pub fn type_of<M: ProcessMemory + ?Sized>(mem: &M, obj: u64) -> Option<u64> {
        if !plausible_obj(obj) {
            return None;
        }
        let tp = read_u64(mem, obj.checked_add(OB_TYPE)?)?;
        plausible_obj(tp).then_some(tp)
    }

    /// `ob_type->tp_name` of the object at `obj`; `None` when anything is unreadable or
    /// the name is not a plausible type name.
    pub fn of_object<M: ProcessMemory + ?Sized>(&mut self, mem: &M, obj: u64) -> Option<String> {
        let tp = Self::type_of(mem, obj)?;
        self.of_type(mem, tp)
    }

    /// `tp_name` of the type object at `tp`.
    pub fn of_type<M: ProcessMemory + ?Sized>(&mut self, mem: &M, tp: u64) -> Option<String> {
        let name_ptr = read_u64(mem, tp.checked_add(TP_NAME)?)?;
        if !plausible_addr(name_ptr) {
            return None;
        }
        if let Some((p, name)) = self.cache.get(&tp) {
            if *p == name_ptr {
                return Some(name.clone());
            }
        }
        let bytes = read_cstr(mem, name_ptr, MAX_NAME)?;
        let name = String::from_utf8(bytes).ok()?;
        if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return None;
        }
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(tp, (name_ptr, name.clone()));
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::super::mem::fake::FakeMem;
    use super::*;

    fn obj(tp: u64) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[8..16].copy_from_slice(&tp.to_le_bytes());
        b
    }

    fn ty(name_ptr: u64) -> Vec<u8> {
        let mut b = vec![0u8; 32];
        b[24..32].copy_from_slice(&name_ptr.to_le_bytes());
        b
    }

    #[test]
    fn reads_validates_and_caches() {
        let mut m = FakeMem::default();
        m.put(0x10_0000, obj(0x20_0000));
        m.put(0x20_0000, ty(0x30_0000));
        // Mappings are page-granular: the name's page is readable past its NUL.
        let mut page = b"_UnixSelectorEventLoop\0".to_vec();
        page.resize(4096, 0xaa);
        m.put(0x30_0000, page);
        let mut n = TypeNames::default();
        assert_eq!(n.of_object(&m, 0x10_0000).as_deref(), Some("_UnixSelectorEventLoop"));
        // Cached: works even with the string gone, as long as tp_name still points there.
        m.regions.remove(&0x30_0000);
        assert_eq!(n.of_object(&m, 0x10_0000).as_deref(), Some("_UnixSelectorEventLoop"));
        // tp_name moved to garbage: rejected.
        m.put(0x20_0000, ty(0x40_0000));
        let mut page = b"a\x01b\0".to_vec();
        page.resize(4096, 0);
        m.put(0x40_0000, page);
        assert_eq!(n.of_object(&m, 0x10_0000), None);
        // Misaligned / null / kernel-space object pointers are not even read.
        assert_eq!(n.of_object(&m, 0x10_0001), None);
        assert_eq!(n.of_object(&m, 0), None);
        assert_eq!(n.of_object(&m, 0xffff_8000_0000_0000), None);
    }
}
