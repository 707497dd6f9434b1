//! Thread names, as `threading` knows them: `sys.modules['threading']._active` is a dict
//! `{ident: Thread}` whose keys are the threads' pthread ids (`threading.get_ident()`, the same
//! number as `PyThreadState.thread_id`) and whose values keep the name in their `_name`
//! attribute. Read rarely (once a second, or when a thread appears): a few reads per thread.

use std::collections::HashMap;

use super::asyncio::AsyncioReader;
use super::collections::dict_items;
use super::kinds::Kind;
use super::mem::{read_bytes, read_u64, u64_at, Memory};
use super::strings::{int_from, read_head, read_str};

/// Most threads named.
const MAX_THREADS: usize = 4096;

/// pthread id → name of every thread `threading` knows; `None` when `threading` is not
/// imported or its registry does not read.
pub fn thread_names<M: Memory + ?Sized>(
    r: &mut AsyncioReader,
    mem: &M,
) -> Option<HashMap<u64, String>> {
    let modules = read_u64(mem, r.modules_ptr())?;
    let module_dict = r.module_dict(mem, modules, b"threading")?;
    let active = r.lookup(mem, module_dict, b"_active")?;
    r.is(mem, active, Kind::Dict)?;
    let items = dict_items(mem, r.dict_layout(), active)?;
    let strs = r.al.strs;
    let mut out = HashMap::new();
    for (key, thread) in items.into_iter().take(MAX_THREADS) {
        let Some(Kind::Int) = r.kind(mem, key) else {
            continue;
        };
        let Some(ident) = read_head(mem, key).and_then(|h| int_from(strs, &h)) else {
            continue;
        };
        let Some(name) = r.attr(mem, thread, b"_name").map(|f| f.value) else {
            continue;
        };
        if r.kind(mem, name) != Some(Kind::Str) {
            continue;
        }
        if let Some(text) = read_str(mem, strs, name) {
            out.insert(ident as u64, text);
        }
    }
    // An empty registry that still has a header is real (no thread started through
    // `threading`); a dict that does not read is not.
    read_bytes(mem, active, 24).and_then(|b| u64_at(&b, 8))?;
    Some(out)
}
