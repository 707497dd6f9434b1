//! The annotated flame graph. Ordinary stacks are drawn in blue; every blocking episode's stacks
//! sit under a synthetic root per culprit ("BLOCKED ..."), then one frame per episode, drawn in
//! orange, so what froze the loop stands out at a glance. Rendering is inferno's.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result};
use inferno::flamegraph::color::{MultiPalette, Palette};
use inferno::flamegraph::{self, Options};

use crate::episode::Episode;
use crate::sample::Frame;

/// inferno's Java palette colours by annotation: `_[i]` aqua for ordinary work, `_[k]` orange for
/// blocking. The annotations are not shown in the graph.
const NORMAL: &str = "_[i]";
const BLOCKED: &str = "_[k]";

/// What the title says about the recording.
#[derive(Debug, Clone)]
pub struct FlameContext {
    pub pid: u32,
    pub python_version: String,
    pub samples: u64,
    pub rate: f64,
    pub threshold_ms: f64,
    pub start_wall: f64,
}

/// Aggregates stacks as they come (memory grows with distinct stacks, not with time).
#[derive(Debug, Default)]
pub struct FlameGraph {
    include_idle: bool,
    /// (pid, folded stack) → weight.
    normal: BTreeMap<(u32, String), u64>,
    pids: std::collections::BTreeSet<u32>,
    episodes: Vec<(Episode, Vec<(Vec<Frame>, u32)>)>,
}

fn frame_label(f: &Frame) -> String {
    let label = if f.line > 0 {
        format!(
            "{} ({}:{})",
            f.function,
            crate::sample::short_path(&f.file),
            f.line
        )
    } else {
        format!("{} ({})", f.function, crate::sample::short_path(&f.file))
    };
    label.replace(';', ":")
}

fn folded(prefix: &[String], frames: &[Frame], tag: &str) -> String {
    let mut parts: Vec<String> = prefix
        .iter()
        .map(|p| format!("{}{tag}", p.replace(';', ":")))
        .collect();
    parts.extend(
        frames
            .iter()
            .rev()
            .map(|f| format!("{}{tag}", frame_label(f))),
    );
    parts.join(";")
}

impl FlameGraph {
    pub fn new(include_idle: bool) -> FlameGraph {
        FlameGraph {
            include_idle,
            ..Default::default()
        }
    }

    pub fn add_stack(&mut self, pid: u32, thread: &str, frames: &[Frame], idle: bool, count: u32) {
        self.pids.insert(pid);
        if idle && !self.include_idle {
            return;
        }
        *self
            .normal
            .entry((pid, folded(&[thread.to_string()], frames, NORMAL)))
            .or_insert(0) += count as u64;
    }

    pub fn add_episode(&mut self, episode: &Episode, stacks: Vec<(Vec<Frame>, u32)>) {
        self.pids.insert(episode.pid);
        self.episodes.push((episode.clone(), stacks));
    }

    /// The folded lines inferno draws: sorted, so output is deterministic. With several
    /// processes (worker processes), each gets its own root.
    pub fn folded_lines(&self, start_wall: f64) -> Vec<String> {
        let multi = self.pids.len() > 1;
        let process = |pid: u32, line: String| {
            if multi {
                format!("process {pid};{line}")
            } else {
                line
            }
        };
        let mut lines: BTreeMap<String, u64> = BTreeMap::new();
        for ((pid, line), n) in &self.normal {
            *lines.entry(process(*pid, line.clone())).or_insert(0) += n;
        }
        // Group episodes by process and what they blame.
        let mut groups: BTreeMap<(u32, String), Vec<usize>> = BTreeMap::new();
        for (i, (ep, _)) in self.episodes.iter().enumerate() {
            groups.entry((ep.pid, group_key(ep))).or_default().push(i);
        }
        for ((pid, key), members) in &groups {
            let pid = *pid;
            let worst = members
                .iter()
                .map(|&i| self.episodes[i].0.duration_ms)
                .fold(0.0, f64::max);
            let root = format!(
                "BLOCKED {key}: {} episode{}, worst {:.0} ms",
                members.len(),
                plural(members.len()),
                worst
            );
            for &i in members {
                let (ep, stacks) = &self.episodes[i];
                let when = format!(
                    "episode #{}: {:.0} ms at +{:.3} s{}",
                    i + 1,
                    ep.duration_ms,
                    ep.start - start_wall,
                    if ep.complete {
                        ""
                    } else {
                        " (still running at the end)"
                    }
                );
                let thread = crate::sample::thread_label(ep.thread.as_deref(), ep.tid);
                // A starved loop was waiting, not working: draw what the GIL holder ran.
                if let Some(holder) = &ep.gil_holder {
                    let held = format!(
                        "GIL held by {}",
                        crate::sample::thread_label(holder.thread.as_deref(), holder.tid)
                    );
                    let frames: Vec<Frame> = holder.stack.iter().map(Frame::from).collect();
                    let line = folded(&[root.clone(), when.clone(), held], &frames, BLOCKED);
                    *lines.entry(process(pid, line)).or_insert(0) +=
                        ep.duration_ms.round().max(1.0) as u64;
                    continue;
                }
                for (frames, count) in stacks {
                    let line = folded(
                        &[root.clone(), when.clone(), thread.clone()],
                        frames,
                        BLOCKED,
                    );
                    *lines.entry(process(pid, line)).or_insert(0) += *count as u64;
                }
            }
        }
        lines
            .into_iter()
            .map(|(stack, n)| format!("{stack} {n}"))
            .collect()
    }

    /// Draw the SVG.
    pub fn render(&self, ctx: &FlameContext, out: &mut dyn Write) -> Result<()> {
        let mut lines = self.folded_lines(ctx.start_wall);
        if lines.is_empty() {
            lines.push(format!(
                "no busy samples: the loop was idle (use --idle to draw idle stacks){NORMAL} 1"
            ));
        }
        let mut opts = Options::default();
        opts.title = title(&self.episodes);
        opts.subtitle = Some(format!(
            "orange: stacks that blocked an event loop for {:.0} ms or more; blue: other work. pid {}, Python {}, {} samples at {:.0} Hz",
            ctx.threshold_ms, ctx.pid, ctx.python_version, ctx.samples, ctx.rate
        ));
        opts.colors = Palette::Multi(MultiPalette::Java);
        opts.hash = true;
        opts.deterministic = true;
        opts.count_name = "ms".to_string();
        opts.min_width = 0.05;
        flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
            .context("rendering the flame graph")?;
        Ok(())
    }
}

fn group_key(ep: &Episode) -> String {
    let why = match &ep.source {
        Some(s) => format!("{}, {s}", ep.kind),
        None => ep.kind.clone(),
    };
    format!("in {} [{why}]", ep.culprit_label())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn title(episodes: &[(Episode, Vec<(Vec<Frame>, u32)>)]) -> String {
    if episodes.is_empty() {
        return "loopspy: no blocking episodes".to_string();
    }
    let worst = episodes
        .iter()
        .map(|(e, _)| e.duration_ms)
        .fold(0.0, f64::max);
    format!(
        "loopspy: {} blocking episode{}, worst {:.0} ms",
        episodes.len(),
        plural(episodes.len()),
        worst
    )
}
