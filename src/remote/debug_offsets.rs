//! `_Py_DebugOffsets` (3.13+): the offsets CPython publishes at the start of `_PyRuntime` for
//! out-of-process readers, parsed in the field order of each minor's header.
//!
//! Sources (x86-64 values checked against the `.PyRuntime` section of pyenv 3.13.0, Debian
//! 3.13.18, 3.14.10 and 3.15.2):
//! - 3.13: `struct _Py_DebugOffsets` in `Include/internal/pycore_runtime.h`;
//! - 3.14: `Include/internal/pycore_debug_offsets.h` (adds `threads_main`,
//!   `code_object_generation`, `tlbc_generation`, `stackpointer`, `tlbc_index`, `co_tlbc`,
//!   `set_object`, `gen_object`, `llist_node`, `debugger_support`);
//! - 3.15: the same header (adds `base_frame`, `last_profiled_frame(_seq)`, `holds_gil`,
//!   `gil_requested`, `current_exception`, `exc_state`, `err_stackitem`, `tp_basicsize`,
//!   `tp_dictoffset`, `heap_type_object`, `compactunicodeobject_size` and gc statistics).
//!
//! The struct is itself versioned: its field order is only known for the minors listed here.
//! The cookie, the version (which must be the minor we parse for) and `free_threaded` are
//! checked first; then every size and offset must be plausible.

use std::collections::HashMap;

use anyhow::{bail, Result};

use super::mem::u64_at;

/// `(sub-struct, fields)` in header order; every field is a `uint64_t`.
type Spec = &'static [(&'static str, &'static [&'static str])];

const SPEC_313: Spec = &[
    (
        "runtime_state",
        &["size", "finalizing", "interpreters_head"],
    ),
    (
        "interpreter_state",
        &[
            "size",
            "id",
            "next",
            "threads_head",
            "gc",
            "imports_modules",
            "sysdict",
            "builtins",
            "ceval_gil",
            "gil_runtime_state",
            "gil_runtime_state_enabled",
            "gil_runtime_state_locked",
            "gil_runtime_state_holder",
        ],
    ),
    (
        "thread_state",
        &[
            "size",
            "prev",
            "next",
            "interp",
            "current_frame",
            "thread_id",
            "native_thread_id",
            "datastack_chunk",
            "status",
        ],
    ),
    (
        "interpreter_frame",
        &[
            "size",
            "previous",
            "executable",
            "instr_ptr",
            "localsplus",
            "owner",
        ],
    ),
    (
        "code_object",
        &[
            "size",
            "filename",
            "name",
            "qualname",
            "linetable",
            "firstlineno",
            "argcount",
            "localsplusnames",
            "localspluskinds",
            "co_code_adaptive",
        ],
    ),
    ("pyobject", &["size", "ob_type"]),
    ("type_object", &["size", "tp_name", "tp_repr", "tp_flags"]),
    ("tuple_object", &["size", "ob_item", "ob_size"]),
    ("list_object", &["size", "ob_item", "ob_size"]),
    ("dict_object", &["size", "ma_keys", "ma_values"]),
    ("float_object", &["size", "ob_fval"]),
    ("long_object", &["size", "lv_tag", "ob_digit"]),
    ("bytes_object", &["size", "ob_size", "ob_sval"]),
    (
        "unicode_object",
        &["size", "state", "length", "asciiobject_size"],
    ),
    ("gc", &["size", "collecting"]),
];

const INTERP_314: &[&str] = &[
    "size",
    "id",
    "next",
    "threads_head",
    "threads_main",
    "gc",
    "imports_modules",
    "sysdict",
    "builtins",
    "ceval_gil",
    "gil_runtime_state",
    "gil_runtime_state_enabled",
    "gil_runtime_state_locked",
    "gil_runtime_state_holder",
    "code_object_generation",
    "tlbc_generation",
];
const FRAME_314: &[&str] = &[
    "size",
    "previous",
    "executable",
    "instr_ptr",
    "localsplus",
    "owner",
    "stackpointer",
    "tlbc_index",
];
const CODE_314: &[&str] = &[
    "size",
    "filename",
    "name",
    "qualname",
    "linetable",
    "firstlineno",
    "argcount",
    "localsplusnames",
    "localspluskinds",
    "co_code_adaptive",
    "co_tlbc",
];
const DEBUGGER: &[&str] = &[
    "eval_breaker",
    "remote_debugger_support",
    "remote_debugging_enabled",
    "debugger_pending_call",
    "debugger_script_path",
    "debugger_script_path_size",
];

const SPEC_314: Spec = &[
    (
        "runtime_state",
        &["size", "finalizing", "interpreters_head"],
    ),
    ("interpreter_state", INTERP_314),
    (
        "thread_state",
        &[
            "size",
            "prev",
            "next",
            "interp",
            "current_frame",
            "thread_id",
            "native_thread_id",
            "datastack_chunk",
            "status",
        ],
    ),
    ("interpreter_frame", FRAME_314),
    ("code_object", CODE_314),
    ("pyobject", &["size", "ob_type"]),
    ("type_object", &["size", "tp_name", "tp_repr", "tp_flags"]),
    ("tuple_object", &["size", "ob_item", "ob_size"]),
    ("list_object", &["size", "ob_item", "ob_size"]),
    ("set_object", &["size", "used", "table", "mask"]),
    ("dict_object", &["size", "ma_keys", "ma_values"]),
    ("float_object", &["size", "ob_fval"]),
    ("long_object", &["size", "lv_tag", "ob_digit"]),
    ("bytes_object", &["size", "ob_size", "ob_sval"]),
    (
        "unicode_object",
        &["size", "state", "length", "asciiobject_size"],
    ),
    ("gc", &["size", "collecting"]),
    (
        "gen_object",
        &["size", "gi_name", "gi_iframe", "gi_frame_state"],
    ),
    ("llist_node", &["next", "prev"]),
    ("debugger_support", DEBUGGER),
];

const SPEC_315: Spec = &[
    (
        "runtime_state",
        &["size", "finalizing", "interpreters_head"],
    ),
    ("interpreter_state", INTERP_314),
    (
        "thread_state",
        &[
            "size",
            "prev",
            "next",
            "interp",
            "current_frame",
            "base_frame",
            "last_profiled_frame",
            "last_profiled_frame_seq",
            "thread_id",
            "native_thread_id",
            "datastack_chunk",
            "status",
            "holds_gil",
            "gil_requested",
            "current_exception",
            "exc_state",
        ],
    ),
    ("err_stackitem", &["exc_value"]),
    ("interpreter_frame", FRAME_314),
    ("code_object", CODE_314),
    ("pyobject", &["size", "ob_type"]),
    (
        "type_object",
        &[
            "size",
            "tp_name",
            "tp_repr",
            "tp_flags",
            "tp_basicsize",
            "tp_dictoffset",
        ],
    ),
    ("heap_type_object", &["size", "ht_cached_keys"]),
    ("tuple_object", &["size", "ob_item", "ob_size"]),
    ("list_object", &["size", "ob_item", "ob_size"]),
    ("set_object", &["size", "used", "table", "mask"]),
    ("dict_object", &["size", "ma_keys", "ma_values"]),
    ("float_object", &["size", "ob_fval"]),
    ("long_object", &["size", "lv_tag", "ob_digit"]),
    ("bytes_object", &["size", "ob_size", "ob_sval"]),
    (
        "unicode_object",
        &[
            "size",
            "state",
            "length",
            "asciiobject_size",
            "compactunicodeobject_size",
        ],
    ),
    (
        "gc",
        &[
            "size",
            "collecting",
            "frame",
            "generation_stats_size",
            "generation_stats",
        ],
    ),
    (
        "gen_object",
        &["size", "gi_name", "gi_iframe", "gi_frame_state"],
    ),
    ("llist_node", &["next", "prev"]),
    ("debugger_support", DEBUGGER),
];

fn spec(minor: u64) -> Option<Spec> {
    match minor {
        13 => Some(SPEC_313),
        14 => Some(SPEC_314),
        15 => Some(SPEC_315),
        _ => None,
    }
}

/// Bytes of `_Py_DebugOffsets` to read so any supported minor's struct is covered (3.15: 110
/// words after the cookie).
pub const READ_LEN: usize = 8 * 128;

/// `PY_VERSION_HEX` of a debug-offsets block, after checking its cookie.
pub fn version_hex(buf: &[u8]) -> Result<u64> {
    if buf.get(..8) != Some(&b"xdebugpy"[..]) {
        bail!("_PyRuntime does not start with the \"xdebugpy\" debug-offsets cookie");
    }
    match u64_at(buf, 8) {
        Some(v) => Ok(v),
        None => bail!("_Py_DebugOffsets block is truncated"),
    }
}

/// The parsed offsets: `get("thread_state.current_frame")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugOffsets {
    /// `PY_VERSION_HEX`.
    pub version: u64,
    fields: HashMap<String, u64>,
}

impl DebugOffsets {
    /// The minor version it describes.
    pub fn minor(&self) -> u64 {
        (self.version >> 16) & 0xff
    }

    /// A field, as `"struct.field"`; 0 for a field this minor's struct does not have (CPython
    /// also writes 0 for fields a build does not use, e.g. `tlbc_index` without free
    /// threading).
    pub fn get(&self, field: &str) -> u64 {
        self.fields.get(field).copied().unwrap_or(0)
    }

    /// Whether this minor's struct has the field.
    pub fn has(&self, field: &str) -> bool {
        self.fields.contains_key(field)
    }
}

/// Parses the block read from the start of `_PyRuntime` for a target of minor `minor`.
pub fn parse(buf: &[u8], minor: u64) -> Result<DebugOffsets> {
    let version = version_hex(buf)?;
    let (vmaj, vmin) = ((version >> 24) & 0xff, (version >> 16) & 0xff);
    if (vmaj, vmin) != (3, minor) {
        bail!("_Py_DebugOffsets says {vmaj}.{vmin}, expected 3.{minor}");
    }
    let Some(spec) = spec(minor) else {
        bail!("the _Py_DebugOffsets layout of 3.{minor} is not known");
    };
    if u64_at(buf, 16) != Some(0) {
        bail!("free-threaded CPython 3.{minor} is not supported (its object layout differs)");
    }
    let mut fields = HashMap::new();
    let mut pos = 24u64;
    for (group, list) in spec {
        for field in *list {
            let Some(v) = u64_at(buf, pos) else {
                bail!("_Py_DebugOffsets block is truncated at {group}.{field}");
            };
            fields.insert(format!("{group}.{field}"), v);
            pos += 8;
        }
    }
    let d = DebugOffsets { version, fields };
    check(&d)?;
    Ok(d)
}

/// Sanity checks: struct sizes in range, and each offset we use inside its struct.
fn check(d: &DebugOffsets) -> Result<()> {
    let sizes = [
        ("interpreter_state.size", 1024, 1 << 22),
        ("thread_state.size", 128, 1 << 16),
        ("interpreter_frame.size", 48, 512),
        ("code_object.size", 128, 1024),
    ];
    for (f, lo, hi) in sizes {
        let v = d.get(f);
        if !(lo..hi).contains(&v) {
            bail!("implausible {f} = {v} in _Py_DebugOffsets");
        }
    }
    let inside = [
        (
            "interpreter_state",
            &["threads_head", "imports_modules", "ceval_gil", "next", "id"][..],
        ),
        (
            "thread_state",
            &[
                "next",
                "interp",
                "current_frame",
                "thread_id",
                "native_thread_id",
                "datastack_chunk",
            ][..],
        ),
        (
            "interpreter_frame",
            &["previous", "executable", "instr_ptr", "localsplus", "owner"][..],
        ),
        (
            "code_object",
            &[
                "filename",
                "name",
                "qualname",
                "linetable",
                "firstlineno",
                "co_code_adaptive",
            ][..],
        ),
    ];
    for (group, list) in inside {
        let size = d.get(&format!("{group}.size"));
        for f in list {
            let name = format!("{group}.{f}");
            let v = d.get(&name);
            if v.saturating_add(1) > size {
                bail!("implausible {name} = {v} (size {size}) in _Py_DebugOffsets");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The words after the cookie of a real build's block (3.13.0 pyenv, 3.14.10 and 3.15.2
    /// Debian), as dumped from their `.PyRuntime` sections.
    pub fn block(words: &[u64]) -> Vec<u8> {
        let mut b = b"xdebugpy".to_vec();
        for w in words {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.resize(READ_LEN, 0);
        b
    }

    pub const W_3130: &[u64] = &[
        0x030d00f0, 0, 283320, 608, 632, 194968, 7272, 7264, 7344, 7400, 7656, 7640, 7648, 16,
        7752, 0, 7768, 7760, 304, 0, 8, 16, 72, 152, 160, 232, 32, 80, 8, 0, 56, 72, 70, 208, 112,
        120, 128, 136, 68, 52, 96, 104, 200, 16, 8, 416, 24, 88, 168, 32, 24, 16, 40, 24, 16, 48,
        32, 40, 24, 16, 32, 16, 24, 40, 16, 32, 64, 32, 16, 40, 240, 200,
    ];
    pub const W_31410: &[u64] = &[
        0x030e0af0, 0, 316616, 784, 808, 225864, 7280, 7272, 7344, 7360, 7408, 7688, 7672, 7680,
        16, 7784, 0, 7800, 7792, 7992, 0, 832, 0, 8, 16, 72, 152, 160, 232, 32, 88, 8, 0, 56, 80,
        74, 64, 0, 216, 112, 120, 128, 136, 68, 52, 96, 104, 208, 0, 16, 8, 416, 24, 88, 168, 40,
        32, 16, 40, 24, 16, 200, 24, 40, 32, 48, 32, 40, 24, 16, 32, 16, 24, 40, 16, 32, 64, 32,
        16, 40, 264, 192, 160, 24, 72, 67, 0, 8, 24, 304, 8076, 0, 4, 512,
    ];
    pub const W_3152: &[u64] = &[
        0x030f02f0, 0, 346568, 912, 936, 226240, 7272, 7264, 7336, 7352, 7400, 7592, 7576, 7584,
        16, 7736, 0, 7752, 7744, 7944, 0, 888, 0, 8, 16, 72, 80, 88, 96, 176, 184, 256, 32, 36, 40,
        136, 288, 0, 88, 8, 0, 56, 80, 74, 64, 0, 216, 112, 120, 128, 136, 68, 52, 96, 104, 208, 0,
        16, 8, 424, 24, 88, 168, 32, 288, 944, 888, 40, 32, 16, 40, 24, 16, 200, 24, 40, 32, 48,
        32, 40, 24, 16, 32, 16, 24, 40, 16, 32, 64, 32, 16, 40, 56, 176, 112, 120, 1120, 104, 160,
        24, 72, 67, 0, 8, 24, 344, 8028, 0, 4, 512,
    ];

    #[test]
    fn parses_each_minor_in_header_order() {
        let d = parse(&block(W_3130), 13).unwrap();
        assert_eq!(d.get("interpreter_state.threads_head"), 7344);
        assert_eq!(d.get("thread_state.size"), 304);
        assert_eq!(d.get("thread_state.datastack_chunk"), 232);
        assert_eq!(d.get("interpreter_frame.owner"), 70);
        assert_eq!(d.get("code_object.co_code_adaptive"), 200);
        assert_eq!(d.get("tuple_object.ob_item"), 24);
        assert!(!d.has("gen_object.gi_iframe"));
        let d = parse(&block(W_31410), 14).unwrap();
        assert_eq!(d.get("interpreter_state.code_object_generation"), 7992);
        assert_eq!(d.get("thread_state.size"), 832);
        assert_eq!(d.get("interpreter_frame.localsplus"), 80);
        assert_eq!(d.get("tuple_object.ob_item"), 32);
        assert_eq!(d.get("gen_object.gi_iframe"), 72);
        assert_eq!(d.get("debugger_support.debugger_script_path_size"), 512);
        let d = parse(&block(W_3152), 15).unwrap();
        assert_eq!(d.get("thread_state.native_thread_id"), 184);
        assert_eq!(d.get("thread_state.datastack_chunk"), 256);
        assert_eq!(d.get("heap_type_object.ht_cached_keys"), 888);
        assert_eq!(d.get("unicode_object.compactunicodeobject_size"), 56);
        assert_eq!(d.get("gen_object.gi_frame_state"), 67);
        assert_eq!(d.get("debugger_support.debugger_script_path_size"), 512);
    }

    #[test]
    fn refuses_wrong_cookie_version_threading_and_garbage() {
        assert!(parse(&[0u8; READ_LEN], 13).is_err());
        // A 3.14 block is not a 3.13 one.
        assert!(parse(&block(W_31410), 13).is_err());
        let mut ft = W_31410.to_vec();
        ft[1] = 1;
        assert!(parse(&block(&ft), 14).is_err());
        let mut big = W_3130.to_vec();
        big[20] = 1 << 40; // thread_state.next far outside the struct
        assert!(parse(&block(&big), 13).is_err());
        let mut b = block(W_3130);
        b.truncate(100);
        assert!(parse(&b, 13).is_err());
        assert_eq!(version_hex(&block(W_3152)).unwrap() >> 16, 0x030f);
    }

    #[test]
    fn random_words_never_panic() {
        let mut s: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            for base in [W_3130, W_31410, W_3152] {
                let mut w = base.to_vec();
                for _ in 0..4 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    let i = 2 + (s % (w.len() as u64 - 2)) as usize;
                    w[i] = if s & 1 == 0 { s } else { s % 512 };
                }
                for minor in 13..=15 {
                    let _ = parse(&block(&w), minor);
                }
            }
        }
    }
}
