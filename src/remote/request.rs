//! The HTTP request a loop's running task is serving: its method, path and route template,
//! read from the local variables of the loop thread's Python frames (the running task's
//! coroutine frames and what they called), innermost first.
//!
//! What is looked for, in each frame:
//! - a local `scope` holding an ASGI scope dict (uvicorn, Starlette, FastAPI, Django's ASGI
//!   handler, any ASGI middleware): `scope["type"]` must be `http` or `websocket`, and
//!   `scope["method"]` and `scope["path"]` strings; the route is `scope["route"].path` (Starlette
//!   ≥ 0.33 and FastAPI put the matched route object there), prefixed by the mount's part of
//!   `scope["root_path"]` beyond `scope["app_root_path"]`;
//! - a local `request` holding a framework request object: Django's `HttpRequest` (`method`,
//!   `path`, `resolver_match.route`: Django runs the view in a task of its own, which has no
//!   scope local), aiohttp's `BaseRequest` (`_method`, the yarl URL's `_path`, and
//!   `_match_info._route._resource` whose `_formatter` or `_path` is the canonical template),
//!   or Starlette's `Request` (its `scope`).
//!
//! Nothing else is read: no query string, header or body (the scope dict's keys are read to find
//! the three entries above, never the other values). Strings are capped at
//! `MAX_REQUEST_CHARS` characters and only that much is copied.
//!
//! Validation: every object is type-checked before its fields are read; the frame walk is
//! bounded; and after a request is assembled, the frame is read again and must still run the
//! same code with the same object in the same local, so a frame popped while we read yields
//! `None`, never a request of some other frame. Per thread, the last result is kept with the
//! task, the ready-queue counter and the local's address and value it came from: while the same
//! callback runs (the episode's burst of stack samples) a repeat costs one read, once the request
//! has its route (a router matches it after the middlewares ran; until then it is read again).
//!
//! Frame chains per version (cpython-notes §2.5): ≤3.10 `tstate->frame` (a heap
//! `PyFrameObject`, `f_back` @24, locals at `f_localsplus`, named by `co_varnames`, then
//! `co_cellvars`, `co_freevars`); 3.11/3.12 `tstate->cframe->current_frame`, 3.13+
//! `tstate->current_frame` (@72 in 3.13.0 and 3.14's debug offsets), `_PyInterpreterFrame`s
//! whose locals are named by `co_localsplusnames` (@96, 3.11–3.14).

use std::collections::HashMap;

use super::asyncio::AsyncioReader;
use super::attrs::instance_attr;
use super::collections::dict_items;
use super::dict::{find_str, KeyCache};
use super::kinds::Kind;
use super::mem::{i64_at, plausible_obj, read_bytes, read_u64, u32_at, u64_at, Memory};
use super::offsets::{OB_SIZE, OB_TYPE, TP_FLAGS};
use super::strings::{read_head, str_prefix};
use crate::sample::{Request, MAX_REQUEST_CHARS};

/// Frames walked from the innermost outwards before giving up: a handler's own call depth plus
/// a framework's dozen or two of middleware frames.
const MAX_FRAMES: usize = 256;
/// Local slots read with each frame's header: the arguments of the functions we look in.
const SLOTS_READ: u64 = 16;
/// Names of one code object we look at; more is garbage.
const MAX_NAMES: u64 = 4096;
/// Longest method accepted (`OPTIONS`, WebDAV's `PROPPATCH`, ...).
const MAX_METHOD: u64 = 16;
/// Entries cached per map before it is cleared: bounded memory under code churn.
const MAX_CACHED: usize = 16_384;
/// `PyCellObject.ob_ref`, `PyFloatObject.ob_fval` (all versions).
const CELL_REF: u64 = 16;
const FLOAT_VALUE: u64 = 16;
/// `Py_TPFLAGS_TUPLE_SUBCLASS` (`object.h`, all versions).
const TPFLAGS_TUPLE_SUBCLASS: u64 = 1 << 26;
/// `PyTypeObject.tp_dict` (cpython-notes §2.5, all versions).
const TP_DICT: u64 = 264;
/// `PyMemberDescrObject.d_member` (after `PyDescr_COMMON`: head, d_type, d_name, d_qualname) and
/// `PyMemberDef.offset` (after `name`, `type`), 3.8–3.14.
const MEMBER_DEF: u64 = 40;
const MEMBER_OFFSET: u64 = 16;

/// A local variable the reader looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Scope,
    Request,
    /// `BaseEventLoop._run_once`'s `end_time`: when the loop last came back from polling.
    EndTime,
}

fn wanted(name: &str) -> Option<Wanted> {
    match name {
        "scope" => Some(Wanted::Scope),
        "request" => Some(Wanted::Request),
        "end_time" => Some(Wanted::EndTime),
        _ => None,
    }
}

/// How a thread's frames are chained in one version.
#[derive(Debug, Clone, Copy)]
struct FrameChain {
    /// Thread state → innermost frame: a field, or (3.11/3.12) a pointer to a `_PyCFrame` and
    /// its `current_frame`.
    top: u64,
    top_indirect: Option<u64>,
    previous: u64,
    code: u64,
    localsplus: u64,
    /// Low bits to clear in 3.14's tagged `_PyStackRef`s (`f_executable`, locals).
    tag_mask: u64,
    names: Names,
    /// ≤3.10: frames are objects of type `frame`.
    heap_frames: bool,
}

/// Where a code object names its local slots.
#[derive(Debug, Clone, Copy)]
enum Names {
    /// ≤3.10: `co_nlocals` (int), `co_varnames`, `co_freevars`, `co_cellvars`; slots are the
    /// plain locals, then the cells, then the free variables.
    Split {
        nlocals: u64,
        varnames: u64,
        freevars: u64,
        cellvars: u64,
    },
    /// 3.11+: `co_localsplusnames`, one name per slot.
    Plus { at: u64 },
}

impl FrameChain {
    fn for_minor(minor: u64) -> FrameChain {
        let plus = Names::Plus { at: 96 };
        let split = Names::Split {
            nlocals: 28,
            varnames: 72,
            freevars: 80,
            cellvars: 88,
        };
        let (top, top_indirect, previous, code, localsplus, names) = match minor {
            ..=9 => (24, None, 24, 32, 360, split),
            10 => (24, None, 24, 32, 352, split),
            11 => (56, Some(8), 48, 32, 72, plus),
            12 => (56, Some(0), 8, 0, 72, plus),
            13 => (72, None, 8, 0, 72, plus),
            _ => (72, None, 8, 0, 80, plus),
        };
        FrameChain {
            top,
            top_indirect,
            previous,
            code,
            localsplus,
            tag_mask: if minor >= 14 { !3 } else { !0 },
            names,
            heap_frames: minor <= 10,
        }
    }

    /// The thread's innermost frame.
    fn innermost<M: Memory + ?Sized>(&self, mem: &M, tstate: u64) -> Option<u64> {
        let first = read_u64(mem, tstate.checked_add(self.top)?)?;
        match self.top_indirect {
            Some(at) if plausible_obj(first) => read_u64(mem, first.checked_add(at)?),
            Some(_) => None,
            None => Some(first),
        }
    }
}

/// The wanted locals of one code object: (what, slot index).
#[derive(Debug, Clone)]
struct CodeLocals {
    /// The names tuple(s) they were read from: a code object at a reused address has others.
    names: [u64; 3],
    slots: Vec<(Wanted, u64)>,
}

/// Which framework's request object a type is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestType {
    Django,
    Aiohttp,
    Starlette,
    None,
}

/// Where a request was found: re-read to validate a cached result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Witness {
    frame: u64,
    code: u64,
    slot: u64,
    value: u64,
}

/// The last read for one thread.
#[derive(Debug, Clone)]
struct Last {
    task: u64,
    ready: Option<u64>,
    witness: Option<Witness>,
    request: Option<Request>,
    /// Reads in a row, in this callback, that found no request.
    misses: u8,
}

impl Last {
    /// Whether this read stands for the callback now running (task `task`, ready-queue counter
    /// `ready`), its witness permitting: the same callback, and a settled result. A request
    /// without a route yet may get one later in the same callback (the router matches after
    /// the middlewares ran), and a read that found none may have raced the frames: both are
    /// read again, the second up to `MAX_MISSES` times.
    fn settled_for(&self, task: u64, ready: Option<u64>) -> bool {
        let settled = match &self.request {
            Some(r) => r.route.is_some(),
            None => self.misses >= MAX_MISSES,
        };
        settled && self.task == task && self.ready == ready
    }
}

/// A callback whose request could not be read is read again at its next samples, up to this
/// many times: one read that raced the frames (the witness check refuses it) must not leave a
/// long episode without its request, while a callback that serves none (a plain callback, a
/// background task) stops costing a frame walk per sample.
const MAX_MISSES: u8 = 4;

/// Caches of the request reader, kept in the `AsyncioReader`.
pub struct RequestState {
    chain: FrameChain,
    codes: HashMap<u64, CodeLocals>,
    /// Interned name objects → what they name (code objects intern their local names).
    names: HashMap<u64, Option<Wanted>>,
    /// Scope-dict key objects → their text when short ASCII (keys are interned constants).
    keys: HashMap<u64, Option<String>>,
    types: HashMap<u64, RequestType>,
    /// (type, attribute) → the member offset of a `__slots__` attribute.
    slots: HashMap<(u64, &'static str), Option<u64>>,
    attr_keys: HashMap<&'static str, KeyCache>,
    last: HashMap<u64, Last>,
}

impl RequestState {
    pub fn for_minor(minor: u64) -> RequestState {
        RequestState {
            chain: FrameChain::for_minor(minor),
            codes: HashMap::new(),
            names: HashMap::new(),
            keys: HashMap::new(),
            types: HashMap::new(),
            slots: HashMap::new(),
            attr_keys: HashMap::new(),
            last: HashMap::new(),
        }
    }

    /// Drop what may have gone stale: types can be freed and their addresses reused.
    pub fn refresh(&mut self) {
        self.types.clear();
        self.slots.clear();
        for map_len in [self.codes.len(), self.names.len(), self.keys.len()] {
            if map_len > MAX_CACHED {
                self.codes.clear();
                self.names.clear();
                self.keys.clear();
                break;
            }
        }
        if self.last.len() > 4096 {
            self.last.clear();
        }
    }
}

/// Caps a string from the target: at most `MAX_REQUEST_CHARS` characters, control characters
/// refused (a path or template has none).
fn clean((text, longer): (String, bool)) -> Option<String> {
    if text.chars().any(char::is_control) {
        return None;
    }
    Some(if longer { format!("{text}…") } else { text })
}

impl AsyncioReader {
    /// The request the running task `task` of the thread at `tstate` is serving, read from the
    /// thread's frames (see the module doc). `ready` is the loop's ready-queue counter: with the
    /// same task and counter as the last call for this thread (the same callback still running),
    /// the last result is reused after one read that checks it still stands.
    pub fn request<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        tstate: u64,
        task: u64,
        ready: Option<u64>,
    ) -> Option<Request> {
        let mut misses = 0;
        if let Some(last) = self.requests.last.get(&tstate) {
            let stands = last
                .witness
                .is_none_or(|w| read_u64(mem, w.slot) == Some(w.value));
            if last.settled_for(task, ready) && stands {
                return last.request.clone();
            }
            if last.task == task && last.ready == ready && last.request.is_none() {
                misses = last.misses;
            }
        }
        let found = self.read_request(mem, tstate);
        let (witness, request) = match found {
            Some((w, r)) => (Some(w), Some(r)),
            None => (None, None),
        };
        self.requests.last.insert(
            tstate,
            Last {
                task,
                ready,
                witness,
                request: request.clone(),
                misses: if request.is_none() { misses + 1 } else { 0 },
            },
        );
        request
    }

    /// Walks the thread's frames, innermost first, for a request.
    fn read_request<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        tstate: u64,
    ) -> Option<(Witness, Request)> {
        let chain = self.requests.chain;
        let mut frame = chain.innermost(mem, tstate)?;
        for _ in 0..MAX_FRAMES {
            let (fb, code) = self.frame_head(mem, frame)?;
            if let Some(locals) = self.code_locals(mem, code) {
                for (want, index) in locals.slots {
                    let read: fn(&mut Self, &M, u64) -> Option<Request> = match want {
                        Wanted::Scope => Self::from_scope,
                        Wanted::Request => Self::from_request_object,
                        Wanted::EndTime => continue,
                    };
                    let Some((slot, value, obj)) = self.local(mem, frame, &fb, index) else {
                        continue;
                    };
                    let Some(request) = read(self, mem, obj) else {
                        continue;
                    };
                    // The frame must still run that code with that object in that local.
                    let (_, again) = self.frame_head(mem, frame)?;
                    if again != code || read_u64(mem, slot) != Some(value) {
                        return None;
                    }
                    let witness = Witness {
                        frame,
                        code,
                        slot,
                        value,
                    };
                    return Some((witness, request));
                }
            }
            frame = u64_at(&fb, chain.previous)?;
            if frame == 0 {
                return None;
            }
        }
        None
    }

    /// The seconds value of `time.monotonic()` at which the loop run by the thread at `tstate`
    /// last came back from polling: the `end_time` local of its `BaseEventLoop._run_once`
    /// frame (set right after `select` returns, before the ready callbacks run). `None` for
    /// loops without that frame (uvloop) or when it does not read validly.
    pub fn last_poll<M: Memory + ?Sized>(&mut self, mem: &M, tstate: u64) -> Option<f64> {
        let chain = self.requests.chain;
        let mut frame = chain.innermost(mem, tstate)?;
        for _ in 0..MAX_FRAMES {
            let (fb, code) = self.frame_head(mem, frame)?;
            let slot = self
                .code_locals(mem, code)
                .and_then(|l| l.slots.iter().find(|s| s.0 == Wanted::EndTime).copied());
            if let Some((_, index)) = slot {
                let al = self.al;
                let info = self.codes.get(mem, &al, &mut self.kinds, code)?;
                if !(info.name.ends_with("_run_once") && info.file.ends_with("base_events.py")) {
                    return None;
                }
                let (_, _, obj) = self.local(mem, frame, &fb, index)?;
                let b = read_bytes(mem, obj, 24)?;
                let tp = u64_at(&b, OB_TYPE)?;
                if self.kinds.of_type(mem, tp, al.tuple_items)? != Kind::Other("float".into()) {
                    return None;
                }
                let t = f64::from_bits(u64_at(&b, FLOAT_VALUE)?);
                return t.is_finite().then_some(t);
            }
            frame = u64_at(&fb, chain.previous)?;
            if frame == 0 {
                return None;
            }
        }
        None
    }

    /// One read of a frame: its header and first local slots; and its code object's address.
    fn frame_head<M: Memory + ?Sized>(&mut self, mem: &M, frame: u64) -> Option<(Vec<u8>, u64)> {
        let chain = self.requests.chain;
        if !plausible_obj(frame) {
            return None;
        }
        let len = chain.localsplus + 8 * SLOTS_READ;
        let fb = super::mem::read_at_least(mem, frame, chain.localsplus as usize, len as usize)?;
        if chain.heap_frames {
            let tp = u64_at(&fb, OB_TYPE)?;
            let kind = self.kinds.of_type(mem, tp, self.al.tuple_items)?;
            if kind != Kind::Other("frame".into()) {
                return None;
            }
        }
        let code = u64_at(&fb, chain.code)? & chain.tag_mask;
        Some((fb, code))
    }

    /// Local slot `index` of `frame` (whose first bytes are `fb`): the slot's address, the raw
    /// value in it, and the object it holds (a cell's content for a cell variable).
    fn local<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        frame: u64,
        fb: &[u8],
        index: u64,
    ) -> Option<(u64, u64, u64)> {
        let chain = self.requests.chain;
        let off = chain.localsplus.checked_add(index.checked_mul(8)?)?;
        let slot = frame.checked_add(off)?;
        let raw = match u64_at(fb, off) {
            Some(v) => v,
            None => read_u64(mem, slot)?,
        };
        let value = raw & chain.tag_mask;
        if !plausible_obj(value) {
            return None;
        }
        let (_, kind) = self.kinds.of_object(mem, value, self.al.tuple_items)?;
        let obj = if kind == Kind::Other("cell".into()) {
            read_u64(mem, value.checked_add(CELL_REF)?).filter(|&p| plausible_obj(p))?
        } else {
            value
        };
        Some((slot, raw, obj))
    }

    /// The wanted locals of the code object at `code`, cached per code object.
    fn code_locals<M: Memory + ?Sized>(&mut self, mem: &M, code: u64) -> Option<CodeLocals> {
        if !plausible_obj(code) {
            return None;
        }
        let chain = self.requests.chain;
        let head_len = match chain.names {
            Names::Split { cellvars, .. } => cellvars + 8,
            Names::Plus { at } => at + 8,
        };
        let b = read_bytes(mem, code, head_len as usize)?;
        if self
            .kinds
            .of_type(mem, u64_at(&b, OB_TYPE)?, self.al.tuple_items)?
            != Kind::Code
        {
            return None;
        }
        // (names tuple, index of its first name's slot)
        let tuples: Vec<(u64, u64)> = match chain.names {
            Names::Split {
                nlocals,
                varnames,
                freevars,
                cellvars,
            } => {
                let n = u32_at(&b, nlocals)? as u64;
                let cells = u64_at(&b, cellvars)?;
                let ncells = self.tuple_len(mem, cells)?;
                vec![
                    (u64_at(&b, varnames)?, 0),
                    (cells, n),
                    (u64_at(&b, freevars)?, n.checked_add(ncells)?),
                ]
            }
            Names::Plus { at } => vec![(u64_at(&b, at)?, 0)],
        };
        let mut names = [0u64; 3];
        for (i, (t, _)) in tuples.iter().enumerate() {
            names[i] = *t;
        }
        if let Some(c) = self.requests.codes.get(&code) {
            if c.names == names {
                return Some(c.clone());
            }
        }
        let mut slots = Vec::new();
        for (tuple, first) in tuples {
            for (i, name) in self.tuple_items(mem, tuple)?.into_iter().enumerate() {
                if let Some(w) = self.name_of(mem, name) {
                    slots.push((w, first + i as u64));
                }
            }
        }
        let locals = CodeLocals { names, slots };
        if self.requests.codes.len() >= MAX_CACHED {
            self.requests.codes.clear();
        }
        self.requests.codes.insert(code, locals.clone());
        Some(locals)
    }

    /// The length of a `tuple`, or of an instance of a tuple subclass (a named tuple such as
    /// yarl's `SplitResult`: `Py_TPFLAGS_TUPLE_SUBCLASS`, 1 << 26, in its type's flags).
    fn tuple_len<M: Memory + ?Sized>(&mut self, mem: &M, tuple: u64) -> Option<u64> {
        let b = read_bytes(mem, tuple, 24)?;
        let tp = u64_at(&b, OB_TYPE)?;
        let kind = self.kinds.of_type(mem, tp, self.al.tuple_items)?;
        let is_tuple = kind == Kind::Other("tuple".into()) || {
            let flags = read_u64(mem, tp.checked_add(TP_FLAGS)?)?;
            flags & TPFLAGS_TUPLE_SUBCLASS != 0
        };
        let n = u64_at(&b, OB_SIZE)?;
        (is_tuple && n <= MAX_NAMES).then_some(n)
    }

    fn tuple_items<M: Memory + ?Sized>(&mut self, mem: &M, tuple: u64) -> Option<Vec<u64>> {
        let n = self.tuple_len(mem, tuple)?;
        if n == 0 {
            return Some(Vec::new());
        }
        let b = read_bytes(
            mem,
            tuple.checked_add(self.al.tuple_items)?,
            (n * 8) as usize,
        )?;
        (0..n).map(|i| u64_at(&b, i * 8)).collect()
    }

    /// What the (interned) local name at `name` asks for, cached by address.
    fn name_of<M: Memory + ?Sized>(&mut self, mem: &M, name: u64) -> Option<Wanted> {
        if let Some(w) = self.requests.names.get(&name) {
            return *w;
        }
        let w = self.short_str(mem, name, 16).and_then(|s| wanted(&s));
        if self.requests.names.len() >= MAX_CACHED {
            self.requests.names.clear();
        }
        self.requests.names.insert(name, w);
        w
    }

    /// The `str` at `addr` when it is at most `max` characters long.
    fn short_str<M: Memory + ?Sized>(&mut self, mem: &M, addr: u64, max: u64) -> Option<String> {
        let head = read_head(mem, addr)?;
        if self
            .kinds
            .of_type(mem, u64_at(&head, OB_TYPE)?, self.al.tuple_items)?
            != Kind::Str
        {
            return None;
        }
        match str_prefix(mem, self.al.strs, addr, &head, max)? {
            (s, false) => Some(s),
            (_, true) => None,
        }
    }

    /// A `str` for a request field, capped (see `clean`).
    fn request_str<M: Memory + ?Sized>(&mut self, mem: &M, addr: u64) -> Option<String> {
        let head = read_head(mem, addr)?;
        if self
            .kinds
            .of_type(mem, u64_at(&head, OB_TYPE)?, self.al.tuple_items)?
            != Kind::Str
        {
            return None;
        }
        clean(str_prefix(
            mem,
            self.al.strs,
            addr,
            &head,
            MAX_REQUEST_CHARS as u64,
        )?)
    }

    fn method<M: Memory + ?Sized>(&mut self, mem: &M, addr: u64) -> Option<String> {
        let m = self.short_str(mem, addr, MAX_METHOD)?;
        (!m.is_empty() && m.bytes().all(|c| c.is_ascii_alphabetic() || c == b'-'))
            .then(|| m.to_ascii_uppercase())
    }

    fn path<M: Memory + ?Sized>(&mut self, mem: &M, addr: u64) -> Option<String> {
        self.request_str(mem, addr).filter(|p| p.starts_with('/'))
    }

    /// An ASGI scope dict: (type, method, path, route object, root_path, app_root_path).
    fn from_scope<M: Memory + ?Sized>(&mut self, mem: &M, dict: u64) -> Option<Request> {
        self.is(mem, dict, Kind::Dict)?;
        let items = dict_items(mem, self.layout.dict, dict)?;
        let mut fields: HashMap<&'static str, u64> = HashMap::new();
        for (k, v) in items {
            let name = match self.requests.keys.get(&k) {
                Some(n) => n.clone(),
                None => {
                    let n = self.short_str(mem, k, 16);
                    if self.requests.keys.len() >= MAX_CACHED {
                        self.requests.keys.clear();
                    }
                    self.requests.keys.insert(k, n.clone());
                    n
                }
            };
            let known = [
                "type",
                "method",
                "path",
                "route",
                "root_path",
                "app_root_path",
            ];
            if let Some(field) = name.and_then(|n| known.into_iter().find(|f| *f == n)) {
                fields.insert(field, v);
            }
        }
        let kind = self.short_str(mem, *fields.get("type")?, 16)?;
        let method = match kind.as_str() {
            "http" => self.method(mem, *fields.get("method")?)?,
            "websocket" => "WEBSOCKET".to_string(),
            _ => return None,
        };
        let path = self.path(mem, *fields.get("path")?)?;
        let route = fields
            .get("route")
            .and_then(|&r| self.obj_attr(mem, r, "path"))
            .and_then(|p| self.path(mem, p))
            .map(|template| {
                let mut strs = ["root_path", "app_root_path"]
                    .map(|k| fields.get(k).and_then(|&a| self.request_str(mem, a)));
                let (root, app_root) = (strs[0].take(), strs[1].take());
                let prefix = match (root, app_root) {
                    (Some(r), Some(a)) => r.strip_prefix(a.as_str()).map(str::to_string),
                    _ => None,
                };
                match prefix {
                    Some(p) if p.starts_with('/') && !template.starts_with(&p) => {
                        format!("{}{template}", p.trim_end_matches('/'))
                    }
                    _ => template,
                }
            });
        Some(Request {
            method,
            path,
            route,
        })
    }

    /// A framework's request object (see the module doc).
    fn from_request_object<M: Memory + ?Sized>(&mut self, mem: &M, obj: u64) -> Option<Request> {
        let tp = read_u64(mem, obj.checked_add(OB_TYPE)?)?;
        let kind = match self.requests.types.get(&tp) {
            Some(k) => *k,
            None => {
                let mro = self.kinds.mro_names(mem, tp, self.al.tuple_items)?;
                let has = |n: &str| mro.iter().any(|m| m == n);
                let k = if has("HttpRequest") {
                    RequestType::Django
                } else if has("BaseRequest") {
                    RequestType::Aiohttp
                } else if has("HTTPConnection") {
                    RequestType::Starlette
                } else {
                    RequestType::None
                };
                self.requests.types.insert(tp, k);
                k
            }
        };
        match kind {
            RequestType::Django => {
                let method = self.obj_attr(mem, obj, "method")?;
                let method = self.method(mem, method)?;
                let path = self.obj_attr(mem, obj, "path")?;
                let path = self.path(mem, path)?;
                let route = self
                    .obj_attr(mem, obj, "resolver_match")
                    .and_then(|m| self.obj_attr(mem, m, "route"))
                    .and_then(|r| self.request_str(mem, r))
                    .map(|r| {
                        // Django's `path()` routes have no leading slash (`orders/<int:pk>/`);
                        // regular expressions (`re_path`) are kept as written.
                        if r.starts_with('/') || r.starts_with('^') {
                            r
                        } else {
                            format!("/{r}")
                        }
                    });
                Some(Request {
                    method,
                    path,
                    route,
                })
            }
            RequestType::Aiohttp => {
                let method = self.obj_attr(mem, obj, "_method")?;
                let method = self.method(mem, method)?;
                let url = self.obj_attr(mem, obj, "_rel_url")?;
                let path = match self.obj_attr(mem, url, "_path") {
                    Some(p) => self.path(mem, p)?,
                    // yarl before 1.13: `_val`, a SplitResult (scheme, netloc, path, ...).
                    None => {
                        let val = self.obj_attr(mem, url, "_val")?;
                        let items = self.tuple_items(mem, val)?;
                        self.path(mem, *items.get(2)?)?
                    }
                };
                let route = self
                    .obj_attr(mem, obj, "_match_info")
                    .and_then(|m| self.obj_attr(mem, m, "_route"))
                    .and_then(|r| self.obj_attr(mem, r, "_resource"))
                    .and_then(|res| {
                        self.obj_attr(mem, res, "_formatter")
                            .or_else(|| self.obj_attr(mem, res, "_path"))
                    })
                    .and_then(|t| self.path(mem, t));
                Some(Request {
                    method,
                    path,
                    route,
                })
            }
            RequestType::Starlette => {
                let scope = self.obj_attr(mem, obj, "scope")?;
                self.from_scope(mem, scope)
            }
            RequestType::None => None,
        }
    }

    /// Attribute `name` of `obj`: from its instance dict, else a `__slots__` member.
    fn obj_attr<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        obj: u64,
        name: &'static str,
    ) -> Option<u64> {
        let tp = read_u64(mem, obj.checked_add(OB_TYPE)?)?;
        let key = self
            .requests
            .attr_keys
            .entry(name)
            .or_insert_with(|| KeyCache::new(name.as_bytes()));
        if let Some(f) = instance_attr(mem, &self.layout, obj, tp, key) {
            return Some(f.value);
        }
        let off = self.slot_offset(mem, tp, name)?;
        read_u64(mem, obj.checked_add(off)?).filter(|&v| plausible_obj(v))
    }

    /// The offset of the `__slots__` member `name` of type `tp`: the `member_descriptor` in the
    /// `__dict__` of a class of its MRO (cpython-notes §2.2).
    fn slot_offset<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        tp: u64,
        name: &'static str,
    ) -> Option<u64> {
        if let Some(o) = self.requests.slots.get(&(tp, name)) {
            return *o;
        }
        let found = self.find_member(mem, tp, name);
        self.requests.slots.insert((tp, name), found);
        found
    }

    fn find_member<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        tp: u64,
        name: &'static str,
    ) -> Option<u64> {
        let descr = self.class_attr(mem, tp, name)?;
        let (_, kind) = self.kinds.of_object(mem, descr, self.al.tuple_items)?;
        if kind != Kind::Other("member_descriptor".into()) {
            return None;
        }
        let def = read_u64(mem, descr.checked_add(MEMBER_DEF)?)?;
        let b = read_bytes(mem, def, (MEMBER_OFFSET + 8) as usize)?;
        let off = i64_at(&b, MEMBER_OFFSET)?;
        (16..=4096)
            .contains(&off)
            .then_some(off as u64)
            .filter(|o| o % 8 == 0)
    }

    /// `name` looked up in the `__dict__` of each class of `tp`'s MRO, in order: a class
    /// attribute (or descriptor), as `type.__getattribute__` finds it.
    pub(super) fn class_attr<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        tp: u64,
        name: &'static str,
    ) -> Option<u64> {
        let mro = read_u64(mem, tp.checked_add(super::offsets::TP_MRO)?)?;
        for class in self.tuple_items(mem, mro)? {
            let dict = read_u64(mem, class.checked_add(TP_DICT)?)?;
            let mut key = KeyCache::new(name.as_bytes());
            let (dl, ascii) = (self.layout.dict, self.layout.str_ascii_size);
            if let Some(f) = find_str(mem, dl, ascii, dict, &mut key) {
                return Some(f.value);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_and_caps() {
        assert_eq!(
            clean(("/orders/7".into(), false)).as_deref(),
            Some("/orders/7")
        );
        assert_eq!(clean(("/a".into(), true)).as_deref(), Some("/a…"));
        assert_eq!(clean(("/a\r\nX".into(), false)), None);
    }

    #[test]
    fn every_minor_has_a_chain() {
        for minor in 8..=14 {
            let c = FrameChain::for_minor(minor);
            assert!(c.localsplus >= 72);
            assert_eq!(c.heap_frames, minor <= 10);
        }
    }
}

#[cfg(test)]
mod last_read_tests {
    use super::{Last, MAX_MISSES};
    use crate::sample::Request;

    fn last(request: Option<Request>, misses: u8) -> Last {
        Last {
            task: 7,
            ready: Some(3),
            witness: None,
            request,
            misses,
        }
    }

    fn routed(route: Option<&str>) -> Option<Request> {
        Some(Request {
            method: "GET".into(),
            path: "/orders/1".into(),
            route: route.map(String::from),
        })
    }

    /// A read that found no request is tried again in the same callback, a few times; a
    /// request with its route stands until the callback changes; one without a route yet is
    /// read again.
    #[test]
    fn a_missed_read_is_retried_a_few_times_in_one_callback() {
        assert!(!last(None, 1).settled_for(7, Some(3)));
        assert!(!last(None, MAX_MISSES - 1).settled_for(7, Some(3)));
        assert!(last(None, MAX_MISSES).settled_for(7, Some(3)));
        assert!(last(routed(Some("/orders/{id}")), 0).settled_for(7, Some(3)));
        assert!(!last(routed(None), 0).settled_for(7, Some(3)));
        // Another callback (the ready queue moved, or another task) reads again.
        assert!(!last(routed(Some("/orders/{id}")), 0).settled_for(7, Some(4)));
        assert!(!last(None, MAX_MISSES).settled_for(8, Some(3)));
    }
}
