//! Reading Python stacks: every thread asked for, in a few batched reads.
//!
//! A read goes in rounds, each one `process_vm_readv` for all threads at once:
//! 1. the thread states, together with what the previous read of each thread found (its data
//!    stack chunks up to their top, its frames outside the chunks, such as coroutine frames, and
//!    the headers of the code objects it ran, or 3.14+'s code-object generation counter), read
//!    again on the guess that the stack has not moved much;
//! 2. whatever the guess missed (a moved chunk, a 3.11/3.12 `_PyCFrame`);
//! 3. frames are then parsed from those copies; a frame found nowhere is read on its own, and
//!    the chunk before the ones copied is fetched when a frame points into it.
//!
//! Code objects are cached by address ([`CodeCache`]). An address can be freed and reused by
//! another code object, so a cached entry is only used after its [`Fingerprint`] was read again
//! in this read and matched, or (3.14+) while `interp->_code_object_generation`, which CPython
//! bumps on every code-object deallocation, has not moved since the entry was checked.
//!
//! A torn read (the target runs while we read) yields no stack for that thread, never a wrong
//! frame: every frame must parse, point back along a chain without cycles, and name a code
//! object; anything else is a [`StackError`].

use std::collections::{HashMap, HashSet};

use super::async_offsets::AsyncLayout;
use super::code::{fingerprint, fingerprint_len, CodeCache, CodeInfo};
use super::frames::{
    chunk_of, innermost, parse_frame, Innermost, RawFrame, StackLayout, CHUNK_DATA, CHUNK_PREVIOUS,
    CHUNK_SIZE, CHUNK_TOP, MAX_CHUNK,
};
use super::kinds::{Kind, Kinds};
use super::mem::{plausible_obj, read_at_least, read_batch, read_bytes, u64_at, Memory};
use crate::sample::Frame;

/// Frames kept from the innermost end of a deep stack, and from the outermost end (where the
/// event loop's own frames are, which tell a callback from an idle loop).
pub const KEEP_INNER: usize = 448;
pub const KEEP_OUTER: usize = 64;
/// Frames walked at most; a deeper stack keeps only its innermost frames.
const MAX_WALK: usize = 100_000;
/// Frames outside the data stack remembered per thread for the next read.
const MAX_HEAP_MEMO: usize = 20_000;
/// Up to this many remembered heap frames are re-read one by one; more, by their pages.
const HEAP_BY_FRAME: usize = 64;
/// The page size of the target (x86-64 and aarch64 Linux with 4 KiB pages).
const PAGE: u64 = 4096;
/// Chunks remembered per thread.
const MAX_CHUNKS: usize = 4096;
/// Code objects whose fingerprint is re-read speculatively.
const MAX_CODE_MEMO: usize = 8192;
/// Bytes copied past a chunk's live top, so a slightly deeper stack next time is still covered.
const CHUNK_SLACK: u64 = 1024;

/// A hasher for addresses (`u64` keys, trusted input of our own): a multiply, not SipHash,
/// which would cost more than the rest of a cache lookup.
#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub type FastHash = std::hash::BuildHasherDefault<AddrHasher>;

/// What a read in a round is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Want {
    /// The i-th extra region asked for.
    Extra(usize),
    /// The thread state of the i-th thread asked for.
    Tstate(usize),
    Generation,
    CFrame(u64),
    Chunk(u64, usize),
    Heap(u64),
    /// A page holding remembered heap frames.
    Page(u64),
    /// A code object's fingerprint.
    Code(u64),
}

/// The reads of one round, done in one batch.
#[derive(Default)]
struct Fetch {
    wants: Vec<Want>,
    reqs: Vec<(u64, usize)>,
}

impl Fetch {
    fn want(&mut self, w: Want, addr: u64, len: usize) {
        self.wants.push(w);
        self.reqs.push((addr, len));
    }

    fn run<M: Memory + ?Sized>(self, mem: &M) -> HashMap<Want, Vec<u8>> {
        let got = read_batch(mem, &self.reqs);
        self.wants
            .into_iter()
            .zip(got)
            .filter_map(|(w, b)| Some((w, b?)))
            .collect()
    }
}

/// Why a thread's stack could not be read this time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackError {
    /// The thread state no longer belongs to that thread (it exited).
    Gone,
    /// Something read was inconsistent: the target changed it while we read.
    Torn(&'static str),
}

impl std::fmt::Display for StackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StackError::Gone => write!(f, "the thread exited"),
            StackError::Torn(what) => write!(f, "inconsistent read ({what})"),
        }
    }
}

/// A thread whose stack to read: its thread state and the pthread id it must still hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackOf {
    pub tstate: u64,
    pub pthread_id: u64,
}

/// What the previous read of one thread found.
#[derive(Debug, Default, Clone)]
struct Memo {
    /// 3.11/3.12: the `_PyCFrame.current_frame` field's address.
    cframe: Option<u64>,
    /// Data stack chunks copied, newest first: `(address, bytes copied)`.
    chunks: Vec<(u64, usize)>,
    /// Frames read outside the chunks, innermost first.
    heap: Vec<u64>,
}

/// One chunk copy of this read.
struct ChunkCopy {
    addr: u64,
    bytes: Vec<u8>,
    /// End of the live frames: `datastack_top` (current chunk) or `data + top` (older ones).
    live_end: u64,
}

/// Reads stacks; keeps the caches between reads.
pub struct StackReader {
    l: StackLayout,
    al: AsyncLayout,
    interp: u64,
    codes: CodeCache,
    kinds: Kinds,
    memo: HashMap<u64, Memo, FastHash>,
    /// Code objects run by the last read, to re-check speculatively.
    last_codes: Vec<u64>,
    /// 3.14+: the code-object generation when the cache was last known good.
    generation: Option<u64>,
    /// ≤3.10: the address of the `frame` type, once a frame was checked by name.
    frame_type: Option<u64>,
    /// The address of the `code` type, once a code object was checked by name.
    code_type: Option<u64>,
    lines: Lines,
}

impl StackReader {
    pub fn new(l: StackLayout, al: AsyncLayout, interp: u64) -> StackReader {
        StackReader {
            l,
            al,
            interp,
            codes: CodeCache::default(),
            kinds: Kinds::default(),
            memo: HashMap::default(),
            last_codes: Vec::new(),
            generation: None,
            frame_type: None,
            code_type: None,
            lines: Lines::default(),
        }
    }

    /// Forget what was remembered of threads not in `live` (thread states that are gone).
    pub fn retain(&mut self, live: &HashSet<u64>) {
        self.memo.retain(|t, _| live.contains(t));
    }

    /// The frames outside the data stack chunks that the last read of the thread at `tstate`
    /// walked through, innermost first (all frames on ≤3.10; coroutine and generator frames on
    /// 3.11+), at most `MAX_HEAP_MEMO`: empty when it was never read.
    pub fn walked_outside_chunks(&self, tstate: u64) -> &[u64] {
        self.memo.get(&tstate).map_or(&[], |m| m.heap.as_slice())
    }

    /// The stacks of `threads`, innermost frame first, in their order.
    pub fn read<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        threads: &[StackOf],
    ) -> Vec<Result<Vec<Frame>, StackError>> {
        self.read_with(mem, threads, &[]).0
    }

    /// [`StackReader::read`], also reading the `extra` regions in its first batched read (a
    /// sample's ready queues, GIL state, ...): each as read, or `None`.
    pub fn read_with<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        threads: &[StackOf],
        extra: &[(u64, usize)],
    ) -> (Vec<Result<Vec<Frame>, StackError>>, Vec<Option<Vec<u8>>>) {
        let l = self.l;
        // Round 1: the extra regions, thread states and the guesses.
        let mut round1 = Fetch::default();
        for (i, &(addr, len)) in extra.iter().enumerate() {
            round1.want(Want::Extra(i), addr, len);
        }
        for (i, t) in threads.iter().enumerate() {
            round1.want(Want::Tstate(i), t.tstate, l.tstate_len);
        }
        let gen_at = l
            .code_generation
            .and_then(|off| self.interp.checked_add(off));
        if let Some(at) = gen_at {
            round1.want(Want::Generation, at, 8);
        }
        for t in threads {
            let Some(m) = self.memo.get(&t.tstate) else {
                continue;
            };
            if let Some(a) = m.cframe {
                round1.want(Want::CFrame(a), a, 8);
            }
            for &(a, n) in &m.chunks {
                round1.want(Want::Chunk(a, n), a, n);
            }
            if m.heap.len() <= HEAP_BY_FRAME {
                for &f in &m.heap {
                    round1.want(Want::Heap(f), f, l.header);
                }
            } else {
                // Many frames outside the chunks (a deep stack on 3.8-3.10, whose frames are
                // heap objects): their pages, which hold several frames each.
                let mut pages: Vec<u64> = m.heap.iter().map(|f| f & !(PAGE - 1)).collect();
                pages.sort_unstable();
                pages.dedup();
                for p in pages {
                    round1.want(Want::Page(p), p, PAGE as usize);
                }
            }
        }
        let fp_len = fingerprint_len(&self.al.code);
        if gen_at.is_none() {
            for &c in &self.last_codes {
                round1.want(Want::Code(c), c, fp_len);
            }
        }
        let mut fetched = round1.run(mem);
        let extras: Vec<Option<Vec<u8>>> = (0..extra.len())
            .map(|i| fetched.remove(&Want::Extra(i)))
            .collect();
        let generation = fetched.get(&Want::Generation).and_then(|b| u64_at(b, 0));
        let codes_ok = generation.is_some() && generation == self.generation;

        // Each thread: its state, then what the guess missed (round 2).
        let mut round2 = Fetch::default();
        let states: Vec<Result<ThreadWalk, StackError>> = threads
            .iter()
            .enumerate()
            .map(|(i, t)| self.start(t, fetched.get(&Want::Tstate(i)), &fetched, &mut round2))
            .collect();
        fetched.extend(round2.run(mem));

        // Walk every thread.
        let mut walks: Vec<Result<(Vec<RawFrame>, bool), StackError>> = Vec::new();
        for (t, st) in threads.iter().zip(states) {
            let walk = st.and_then(|mut w| {
                w.finish_start(&fetched)?;
                let r = self.walk(mem, &mut w, &fetched);
                self.memo.insert(t.tstate, w.memo());
                r
            });
            walks.push(walk);
        }

        // Code objects: check the cached ones used, read the new ones.
        let used: Vec<u64> = {
            let mut seen: HashSet<u64, FastHash> = HashSet::default();
            walks
                .iter()
                .flatten()
                .flat_map(|(frames, _)| frames.iter().map(|f| f.code))
                .filter(|c| seen.insert(*c))
                .collect()
        };
        let mut valid = self.check_codes(mem, &used, &fetched, fp_len, codes_ok);
        self.generation = generation;
        self.last_codes = used.iter().copied().take(MAX_CODE_MEMO).collect();

        let stacks = walks
            .into_iter()
            .map(|w| {
                let (frames, truncated) = w?;
                self.frames(mem, &frames, truncated, &mut valid)
            })
            .collect();
        (stacks, extras)
    }

    /// Parses a thread state and works out the chunk copies it needs.
    fn start(
        &self,
        t: &StackOf,
        ts: Option<&Vec<u8>>,
        fetched: &HashMap<Want, Vec<u8>>,
        round2: &mut Fetch,
    ) -> Result<ThreadWalk, StackError> {
        let l = &self.l;
        let ts = ts.ok_or(StackError::Gone)?;
        if u64_at(ts, l.ts_interp) != Some(self.interp)
            || u64_at(ts, l.ts_thread_id) != Some(t.pthread_id)
        {
            return Err(StackError::Gone);
        }
        let memo = self.memo.get(&t.tstate);
        let first = innermost(l, ts).ok_or(StackError::Torn("thread state"))?;
        let cframe = match first {
            Innermost::Via(at) => {
                if !fetched.contains_key(&Want::CFrame(at)) {
                    round2.want(Want::CFrame(at), at, 8);
                }
                Some(at)
            }
            Innermost::Frame(_) => None,
        };
        let mut current = None;
        if let Some((chunk, top, limit)) = chunk_of(l, ts) {
            if chunk != 0 {
                // The live part of the current chunk: from its header to `datastack_top`.
                let live = top
                    .checked_sub(chunk)
                    .filter(|n| (CHUNK_DATA..MAX_CHUNK).contains(n))
                    .ok_or(StackError::Torn("data stack top"))?;
                let guess = memo
                    .and_then(|m| m.chunks.first())
                    .filter(|c| c.0 == chunk && c.1 as u64 >= live)
                    .filter(|c| fetched.contains_key(&Want::Chunk(c.0, c.1)))
                    .copied();
                let want = match guess {
                    Some(g) => g,
                    None => {
                        // A little more than the live part (not past the chunk's end), so the
                        // next read's guess still covers a stack a few frames deeper.
                        let end = limit
                            .checked_sub(chunk)
                            .filter(|&n| n >= live && n < MAX_CHUNK)
                            .unwrap_or(live);
                        let n = (live + CHUNK_SLACK).min(end) as usize;
                        round2.want(Want::Chunk(chunk, n), chunk, n);
                        (chunk, n)
                    }
                };
                current = Some((want, top));
            }
        }
        Ok(ThreadWalk {
            first,
            cframe,
            current,
            older: memo
                .map(|m| m.chunks.iter().skip(1).copied().collect())
                .unwrap_or_default(),
            chunks: Vec::new(),
            heap: Vec::new(),
            pages: HashMap::default(),
            frame0: 0,
        })
    }

    /// Walks one thread's frames from the innermost.
    fn walk<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        w: &mut ThreadWalk,
        fetched: &HashMap<Want, Vec<u8>>,
    ) -> Result<(Vec<RawFrame>, bool), StackError> {
        let l = self.l;
        let mut out = Vec::new();
        // No cycles: within a chunk a caller lies below its callee, so each chunk's frames must
        // come at falling addresses; frames outside the chunks must not repeat.
        let mut lowest: Vec<u64> = Vec::new();
        let mut heap_seen: HashSet<u64, FastHash> = HashSet::default();
        let mut frame = w.frame0;
        let mut walked = 0;
        while frame != 0 {
            if walked >= MAX_WALK {
                return Ok((out, true));
            }
            walked += 1;
            if !plausible_obj(frame) {
                return Err(StackError::Torn("frame chain"));
            }
            let in_chunk = match w.in_chunks(frame, l.header) {
                Some(found) => Some(found),
                None => self.older_chunk_for(mem, w, frame)?,
            };
            let f = match in_chunk {
                Some((i, bytes)) => {
                    lowest.resize(lowest.len().max(i + 1), u64::MAX);
                    if frame >= lowest[i] {
                        return Err(StackError::Torn("frame chain"));
                    }
                    lowest[i] = frame;
                    parse_frame(&l, bytes)
                }
                None => {
                    if !heap_seen.insert(frame) {
                        return Err(StackError::Torn("frame chain"));
                    }
                    let page = frame & !(PAGE - 1);
                    let off = (frame - page) as usize;
                    let in_page = off + l.header <= PAGE as usize;
                    // A page holds several frames of a deep heap-frame stack: read it whole, the
                    // next frames are often there too.
                    if in_page
                        && !fetched.contains_key(&Want::Page(page))
                        && !w.pages.contains_key(&page)
                    {
                        w.pages.insert(page, read_bytes(mem, page, PAGE as usize));
                    }
                    let owned;
                    let paged = fetched
                        .get(&Want::Page(page))
                        .or_else(|| w.pages.get(&page).and_then(Option::as_ref))
                        .filter(|_| in_page);
                    let bytes = match (fetched.get(&Want::Heap(frame)), paged) {
                        (Some(b), _) => b.as_slice(),
                        (None, Some(p)) => &p[off..off + l.header],
                        (None, None) => {
                            owned = read_bytes(mem, frame, l.header)
                                .ok_or(StackError::Torn("frame unreadable"))?;
                            owned.as_slice()
                        }
                    };
                    w.heap.push(frame);
                    if l.minor <= 10 {
                        self.check_frame_type(mem, bytes)?;
                    }
                    parse_frame(&l, bytes)
                }
            }
            .ok_or(StackError::Torn("frame"))?;
            if !f.shim {
                if !plausible_obj(f.code) {
                    return Err(StackError::Torn("frame code"));
                }
                out.push(f);
            }
            frame = f.previous;
        }
        Ok((out, false))
    }

    /// The bytes of `frame` from an older data stack chunk, fetching the chunk before the
    /// oldest one copied while the frame could lie in it. `None` when the frame is in no chunk
    /// (a generator's or coroutine's frame).
    fn older_chunk_for<'w, M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        w: &'w mut ThreadWalk,
        frame: u64,
    ) -> Result<Option<(usize, &'w [u8])>, StackError> {
        let header = self.l.header;
        while w.chunks.len() < MAX_CHUNKS {
            let Some(last) = w.chunks.last() else {
                return Ok(None);
            };
            let prev = u64_at(&last.bytes, CHUNK_PREVIOUS).unwrap_or(0);
            if prev == 0 {
                return Ok(None);
            }
            // Speculative 16 KiB first (the usual chunk size), the rest when it is bigger.
            let b = read_at_least(mem, prev, CHUNK_DATA as usize, 16 << 10)
                .ok_or(StackError::Torn("older chunk"))?;
            let top = u64_at(&b, CHUNK_TOP).ok_or(StackError::Torn("older chunk"))?;
            let size = u64_at(&b, CHUNK_SIZE).ok_or(StackError::Torn("older chunk"))?;
            let live = top
                .checked_mul(8)
                .and_then(|t| t.checked_add(CHUNK_DATA))
                .filter(|&n| n <= size && size < MAX_CHUNK)
                .ok_or(StackError::Torn("older chunk top"))?;
            let bytes = if (b.len() as u64) >= live {
                b
            } else {
                read_bytes(mem, prev, live as usize).ok_or(StackError::Torn("older chunk"))?
            };
            w.chunks.push(ChunkCopy {
                addr: prev,
                live_end: prev + live,
                bytes,
            });
            if w.in_chunks(frame, header).is_some() {
                return Ok(w.in_chunks(frame, header));
            }
        }
        Ok(None)
    }

    /// ≤3.10: the frame's type must be `frame` (checked by name once, then by address).
    fn check_frame_type<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        b: &[u8],
    ) -> Result<(), StackError> {
        let tp = u64_at(b, 8).ok_or(StackError::Torn("frame"))?;
        if self.frame_type == Some(tp) {
            return Ok(());
        }
        let name = self.kinds.type_name(mem, tp);
        if self.frame_type.is_none() && name.as_deref() == Some("frame") {
            self.frame_type = Some(tp);
            return Ok(());
        }
        Err(StackError::Torn("not a frame"))
    }

    /// Which of the code objects `used` may be taken from the cache: those whose fingerprint
    /// was read again and matched (reading those not read in round 1 now), or all cached ones
    /// when `all_valid`. Entries that no longer match are dropped.
    fn check_codes<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        used: &[u64],
        fetched: &HashMap<Want, Vec<u8>>,
        fp_len: usize,
        all_valid: bool,
    ) -> HashSet<u64, FastHash> {
        let mut valid: HashSet<u64, FastHash> = HashSet::default();
        let cached: Vec<u64> = used
            .iter()
            .copied()
            .filter(|c| self.codes.cached(*c).is_some())
            .collect();
        if all_valid {
            valid.extend(cached);
            return valid;
        }
        let mut round3 = Fetch::default();
        for &c in &cached {
            if !fetched.contains_key(&Want::Code(c)) {
                round3.want(Want::Code(c), c, fp_len);
            }
        }
        let mut heads = round3.run(mem);
        for c in cached {
            let head = heads
                .remove(&Want::Code(c))
                .or_else(|| fetched.get(&Want::Code(c)).cloned());
            let same = head.as_deref().and_then(|h| fingerprint(&self.al.code, h))
                == self.codes.cached(c).map(|i| i.fingerprint);
            if same && head.is_some() {
                valid.insert(c);
            } else {
                self.codes.remove(c);
                self.lines.forget(c);
            }
        }
        valid
    }

    /// Makes sure the code object at `addr` is in the cache and current: cached and checked
    /// in this read, or read now. False when it does not read as a code object.
    fn ensure_code<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        addr: u64,
        valid: &mut HashSet<u64, FastHash>,
    ) -> bool {
        if valid.contains(&addr) {
            return true;
        }
        if self.codes.cached(addr).is_some() {
            self.codes.remove(addr);
            self.lines.forget(addr);
        }
        let Some(tp) = read_bytes(mem, addr, 16).and_then(|b| u64_at(&b, 8)) else {
            return false;
        };
        if self.code_type != Some(tp) {
            if self.kinds.of_type(mem, tp, self.al.tuple_items) != Some(Kind::Code) {
                return false;
            }
            self.code_type = Some(tp);
        }
        if self
            .codes
            .load(mem, &self.al, &mut self.kinds, addr)
            .is_none()
        {
            return false;
        }
        // Read now, it is good for the rest of this read.
        valid.insert(addr);
        true
    }

    /// Our frames from the raw ones: names, files and lines, deep stacks cut in the middle.
    fn frames<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        raw: &[RawFrame],
        truncated: bool,
        valid: &mut HashSet<u64, FastHash>,
    ) -> Result<Vec<Frame>, StackError> {
        let n = raw.len();
        // Innermost frames kept, and where the outermost ones kept start.
        let (inner_end, outer_start) = if truncated {
            (KEEP_INNER.min(n), n)
        } else if n > KEEP_INNER + KEEP_OUTER {
            (KEEP_INNER, n - KEEP_OUTER)
        } else {
            (n, n)
        };
        let kept = || (0..inner_end).chain(outer_start..n);
        for i in kept() {
            if !self.ensure_code(mem, raw[i].code, valid) {
                return Err(StackError::Torn("code object"));
            }
        }
        let mut out = Vec::with_capacity(inner_end + (n - outer_start) + 2);
        for i in kept() {
            if i == outer_start && outer_start > inner_end {
                out.push(Frame {
                    function: format!("[{} frames not shown]", outer_start - inner_end),
                    file: String::new(),
                    line: 0,
                });
            }
            let f = &raw[i];
            let code = self
                .codes
                .cached(f.code)
                .ok_or(StackError::Torn("code object"))?;
            // CPython's `__init__` cleanup shim (3.12+: `_Py_InitCleanup`, a code object
            // named `__init__` in a file named `__init__`, with no lines), which 3.14 runs as
            // an ordinary thread-owned frame above a class's Python `__init__`: not user code.
            if code.name == "__init__" && code.file == "__init__" {
                continue;
            }
            let line = self.lines.line(code, f.code, f.instr, self.l.minor);
            out.push(Frame {
                function: code.name.clone(),
                file: code.file.clone(),
                line,
            });
        }
        if truncated {
            out.push(Frame {
                function: "[deeper frames not read]".into(),
                file: String::new(),
                line: 0,
            });
        }
        Ok(out)
    }
}

/// Lines by (code object, instruction): a frame stays on one line for many samples, and
/// decoding a line table walks it from the start.
#[derive(Default)]
struct Lines {
    map: HashMap<(u64, i64), u32, FastHash>,
}

impl Lines {
    const MAX: usize = 1 << 16;

    fn line(&mut self, code: &CodeInfo, addr: u64, instr: i64, minor: u64) -> u32 {
        if let Some(l) = self.map.get(&(addr, instr)) {
            return *l;
        }
        let offset = if minor <= 10 {
            u64::try_from(instr).ok()
        } else {
            (instr as u64).checked_sub(code.bytecode)
        };
        let line = match offset {
            Some(o) => code.line_at(minor, o).unwrap_or(0),
            // Not started yet (3.11/3.12 point before the first instruction).
            None => code.first_line(),
        };
        if self.map.len() >= Self::MAX {
            self.map.clear();
        }
        self.map.insert((addr, instr), line);
        line
    }

    /// Forget the lines of a code object that is no longer the one cached at its address.
    fn forget(&mut self, addr: u64) {
        self.map.retain(|k, _| k.0 != addr);
    }
}

/// One thread's walk in progress.
struct ThreadWalk {
    first: Innermost,
    cframe: Option<u64>,
    /// The current chunk's copy request and `datastack_top`.
    current: Option<((u64, usize), u64)>,
    /// Older chunks read speculatively.
    older: Vec<(u64, usize)>,
    chunks: Vec<ChunkCopy>,
    heap: Vec<u64>,
    /// Pages read in this walk (`None`: unreadable as a whole).
    pages: HashMap<u64, Option<Vec<u8>>, FastHash>,
    frame0: u64,
}

impl ThreadWalk {
    /// Resolves the innermost frame and takes the chunk copies out of the fetched reads.
    fn finish_start(&mut self, fetched: &HashMap<Want, Vec<u8>>) -> Result<(), StackError> {
        self.frame0 = match self.first {
            Innermost::Frame(f) => f,
            Innermost::Via(at) => fetched
                .get(&Want::CFrame(at))
                .and_then(|b| u64_at(b, 0))
                .ok_or(StackError::Torn("cframe"))?,
        };
        if let Some(((addr, n), top)) = self.current {
            let bytes = fetched
                .get(&Want::Chunk(addr, n))
                .cloned()
                .ok_or(StackError::Torn("data stack"))?;
            self.chunks.push(ChunkCopy {
                addr,
                bytes,
                live_end: top,
            });
            // Older chunks read speculatively, if they still chain from this one.
            for &(a, n) in &self.older {
                let last = self.chunks.last().expect("pushed above");
                if u64_at(&last.bytes, CHUNK_PREVIOUS) != Some(a) {
                    break;
                }
                let Some(b) = fetched.get(&Want::Chunk(a, n)) else {
                    break;
                };
                let (Some(top), Some(size)) = (u64_at(b, CHUNK_TOP), u64_at(b, CHUNK_SIZE)) else {
                    break;
                };
                let live = top.saturating_mul(8).saturating_add(CHUNK_DATA);
                if live > size || live > n as u64 {
                    break;
                }
                self.chunks.push(ChunkCopy {
                    addr: a,
                    bytes: b.clone(),
                    live_end: a + live,
                });
            }
        }
        Ok(())
    }

    /// The chunk (by index) and bytes of a frame that lies in the live part of a copied chunk.
    fn in_chunks(&self, frame: u64, header: usize) -> Option<(usize, &[u8])> {
        self.chunks.iter().enumerate().find_map(|(i, c)| {
            let start = c.addr.checked_add(CHUNK_DATA)?;
            let end = frame.checked_add(header as u64)?;
            if frame < start || frame >= c.live_end || end > c.addr + c.bytes.len() as u64 {
                return None;
            }
            let off = (frame - c.addr) as usize;
            Some((i, c.bytes.get(off..off + header)?))
        })
    }

    /// What to remember for the next read.
    fn memo(&self) -> Memo {
        Memo {
            cframe: self.cframe,
            chunks: self
                .chunks
                .iter()
                .map(|c| (c.addr, c.bytes.len()))
                .collect(),
            heap: self.heap.iter().copied().take(MAX_HEAP_MEMO).collect(),
        }
    }
}
