//! Everything an episode says about its cause, from a finished run: whom to blame (the culprit,
//! or for a starved loop the GIL holder and its code), why (`kind`, `source`, the driver under
//! an ORM, the fd waited on, a call to the process's own server) and what to do, which follows
//! what the blocking code did with the GIL.

use crate::analysis::advice::{advise, Situation};
use crate::analysis::classify::{io_kind_of_source, library_vote, source_rule, verdict, Clues};
use crate::analysis::culprit::{culprit_index, dispatcher};
use crate::analysis::driver::{driver, is_orm};
use crate::analysis::run::Run;
use crate::episode::{GilHolder, Location};
use crate::os::fd::{FdTarget, FdType};
use crate::os::source_files::SourceFiles;
use crate::sample::{thread_label, Frame};

/// The cause of one episode.
#[derive(Debug, Clone, PartialEq)]
pub struct Blame {
    pub kind: String,
    pub source: Option<String>,
    pub driver: Option<String>,
    /// The frame to blame; `None` when the run had no stack.
    pub culprit: Option<Location>,
    pub holder: Option<GilHolder>,
    pub advice: Option<String>,
    /// Whether the blocking thread (the holder, for a starved loop) held the GIL throughout.
    pub holds_gil: Option<bool>,
    pub fd: Option<FdTarget>,
    pub self_call: bool,
}

/// Blame the run. `os_kind` is its dominant kind, `stacks` its stacks with their weight and
/// the depth of the callback's part, heaviest first; `sources` the target's files for culprit
/// lines.
pub fn blame(
    run: &Run,
    os_kind: Option<&str>,
    stacks: &[(Vec<Frame>, (u32, usize))],
    mut sources: Option<&mut SourceFiles>,
) -> Blame {
    let empty: Vec<Frame> = Vec::new();
    let (top, depth) = stacks.first().map_or((&empty, 0), |(f, (_, d))| (f, *d));
    // GIL starvation: blame the holder's code, not the loop's.
    let holder = (os_kind == Some("gil"))
        .then(|| {
            run.holders
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        })
        .flatten()
        .map(|(h, _)| h.clone());
    let (stack, callback): (&[Frame], &[Frame]) = match &holder {
        Some((_, _, frames)) => (frames, frames),
        None => (top, &top[..depth.min(top.len())]),
    };
    let first = culprit_index(callback, stack);
    let dispatched = first.and_then(|i| dispatcher(stack, i));
    let index = dispatched.map_or(first, |(_, i)| Some(i));
    let blamed = index.and_then(|i| stack.get(i));
    let line = match (blamed, sources.as_deref_mut()) {
        (Some(b), Some(files)) => files.file(&b.file).and_then(|lines| {
            let text = lines.get((b.line as usize).checked_sub(1)?)?.clone();
            Some((text, lines))
        }),
        _ => None,
    };
    let fd = os_kind.and_then(|k| run.evidence.fd(k)).cloned();
    // The library the loop's stacks show over the whole episode (a starved loop's stacks are
    // its own, in the selector: the holder's single stack speaks for it).
    let library = match holder {
        Some(_) => None,
        None => library_vote(stacks.iter().map(|(frames, (w, depth))| {
            let callback = &frames[..(*depth).min(frames.len())];
            let inner = culprit_index(callback, frames).map_or(&frames[..0], |i| &frames[..i]);
            (source_rule(inner), *w)
        })),
    };
    let v = verdict(&Clues {
        os_kind,
        library,
        inner: &stack[..index.unwrap_or(0).min(stack.len())],
        line: line.as_ref().map(|(t, l)| (t.as_str(), l.as_slice())),
        dispatcher: dispatched.map(|d| d.0),
        collector: match holder {
            Some(_) => run.evidence.holder_collector(),
            None => run.evidence.collector(),
        },
        fd: fd.as_ref(),
    });
    let mut kind = v.kind;
    // CPU spent mostly in the kernel on behalf of an I/O call (fsync, large writes) is that
    // I/O, not computation.
    if kind == "cpu" && kernel_bound(run.cpu) {
        if let Some(io) = v.source.as_deref().and_then(io_kind_of_source) {
            kind = io.to_string();
        }
    }
    let source = v.source;
    let networked = kind == "network" || fd.as_ref().is_some_and(|f| f.kind == FdType::Socket);
    let driver = source
        .as_deref()
        .filter(|s| is_orm(s))
        .and_then(|_| {
            driver(stack, fd.as_ref(), networked, &mut |path| {
                sources.as_deref_mut().and_then(|files| files.file(path))
            })
        })
        .map(String::from);
    let holds_gil = match holder {
        Some(_) => Some(true),
        None => run.evidence.holds_gil(),
    };
    let self_call = kind == "network" && fd.as_ref().is_some_and(|f| f.peer_is_self);
    let holder_label = holder
        .as_ref()
        .map(|(tid, name, _)| thread_label(name.as_deref(), *tid));
    let advice = advise(&Situation {
        kind: &kind,
        source: source.as_deref(),
        driver: driver.as_deref(),
        holds_gil,
        self_call,
        holder: holder_label.as_deref(),
    });
    let culprit = blamed.map(Location::from);
    Blame {
        holder: holder.map(|(tid, thread, frames)| GilHolder {
            tid,
            thread,
            stack: frames.iter().map(Location::from).collect(),
            culprit: culprit.clone(),
            source: source.clone(),
        }),
        kind,
        source,
        driver,
        culprit,
        advice,
        holds_gil,
        fd,
        self_call,
    }
}

/// Whether the thread's CPU time over a run went mostly to the kernel (at least two ticks).
fn kernel_bound(cpu: Option<((u64, u64), (u64, u64))>) -> bool {
    match cpu {
        Some(((u0, s0), (u1, s1))) => {
            let (user, sys) = (u1.saturating_sub(u0), s1.saturating_sub(s0));
            sys >= 2 && sys > user
        }
        None => false,
    }
}
