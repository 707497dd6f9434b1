//! The annotated flame graph. Ordinary stacks are drawn in blue; every blocking episode's stacks
//! sit under a synthetic root per culprit ("BLOCKED ..."), then one frame per episode, drawn in
//! orange, so what froze the loop stands out at a glance. Rendering is inferno's.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result};
use inferno::flamegraph::color::{MultiPalette, Palette};
use inferno::flamegraph::{self, Options};

use crate::episode::Episode;
use crate::output::escape::escape;
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

/// Distinct ordinary stacks kept before new ones are merged.
const MAX_NORMAL_STACKS: usize = 5_000;

/// Episodes of one culprit drawn one by one; later ones are merged into `rest`.
const DETAILED_PER_CULPRIT: usize = 100;

/// When an episode happened, for its frame's label.
#[derive(Debug, Clone)]
struct Timing {
    number: usize,
    duration_ms: f64,
    start: f64,
    complete: bool,
    /// `false`: the episode was already running when its thread was first sampled.
    start_seen: bool,
}

/// One culprit's episodes.
#[derive(Debug, Default)]
struct Group {
    count: usize,
    worst_ms: f64,
    /// (when, [(label above the episode frame, stack, weight)]).
    detailed: Vec<(Timing, Vec<(String, Vec<Frame>, u64)>)>,
    rest: BTreeMap<(String, Vec<Frame>), u64>,
}

/// Aggregates stacks as they come (memory grows with distinct stacks, not with time).
#[derive(Debug, Default)]
pub struct FlameGraph {
    include_idle: bool,
    /// (pid, folded stack) → weight.
    normal: BTreeMap<(u32, String), u64>,
    pids: std::collections::BTreeSet<u32>,
    /// Episodes grouped by (pid, culprit), and how many there were in all.
    groups: BTreeMap<(u32, String), Group>,
    count: usize,
}

fn frame_label(f: &Frame) -> String {
    let label = if f.file.is_empty() {
        // A marker of our own (`[N frames not shown]`), or a frame with no file.
        f.function.clone()
    } else if f.line > 0 {
        format!(
            "{} ({}:{})",
            f.function,
            crate::sample::short_path(&f.file),
            f.line
        )
    } else {
        format!("{} ({})", f.function, crate::sample::short_path(&f.file))
    };
    label
}

/// One frame of a folded line: `;` separates frames, and names from the target are escaped
/// (a control character is not valid XML, and a line break would split the folded line).
fn folded_part(label: &str, tag: &str) -> String {
    format!("{}{tag}", escape(label).replace(';', ":"))
}

fn folded(prefix: &[String], frames: &[Frame], tag: &str) -> String {
    let mut parts: Vec<String> = prefix.iter().map(|p| folded_part(p, tag)).collect();
    parts.extend(
        frames
            .iter()
            .rev()
            .map(|f| folded_part(&frame_label(f), tag)),
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

    /// An ordinary stack of `thread`, `count` ms of it; with `task`, drawn under a frame for
    /// that asyncio task (`task <name>`) above the thread's.
    pub fn add_stack(
        &mut self,
        pid: u32,
        thread: &str,
        task: Option<&str>,
        frames: &[Frame],
        idle: bool,
        count: u32,
    ) {
        self.pids.insert(pid);
        if idle && !self.include_idle {
            return;
        }
        let mut prefix = vec![thread.to_string()];
        prefix.extend(task.map(str::to_string));
        let mut key = (pid, folded(&prefix, frames, NORMAL));
        // Threads come and go on long recordings (each with its own name and tid): past a
        // bound, new distinct stacks are merged into one line, so memory stays bounded.
        if self.normal.len() >= MAX_NORMAL_STACKS && !self.normal.contains_key(&key) {
            key.1 = format!("more stacks (merged after {MAX_NORMAL_STACKS} distinct ones){NORMAL}");
        }
        *self.normal.entry(key).or_insert(0) += count as u64;
    }

    pub fn add_episode(&mut self, episode: &Episode, stacks: Vec<(Vec<Frame>, u32)>) {
        self.pids.insert(episode.pid);
        self.count += 1;
        let thread = crate::sample::thread_label(episode.thread.as_deref(), episode.tid);
        // What to draw above the episode: its thread's stacks, or for a starved loop (which
        // was waiting, not working) the stack of the thread that held the GIL.
        let drawn: Vec<(String, Vec<Frame>, u64)> = match &episode.gil_holder {
            Some(h) => vec![(
                format!(
                    "GIL held by {}",
                    crate::sample::thread_label(h.thread.as_deref(), h.tid)
                ),
                h.stack.iter().map(Frame::from).collect(),
                episode.duration_ms.round().max(1.0) as u64,
            )],
            None => stacks
                .into_iter()
                .map(|(f, n)| (thread.clone(), f, n as u64))
                .collect(),
        };
        let group = self
            .groups
            .entry((episode.pid, group_key(episode)))
            .or_default();
        group.count += 1;
        group.worst_ms = group.worst_ms.max(episode.duration_ms);
        if group.detailed.len() < DETAILED_PER_CULPRIT {
            let when = Timing {
                number: self.count,
                duration_ms: episode.duration_ms,
                start: episode.start,
                complete: episode.complete,
                start_seen: episode.start_seen,
            };
            group.detailed.push((when, drawn));
        } else {
            // Past the first episodes of a culprit, later ones are merged: memory stays
            // bounded on long recordings.
            for (label, frames, n) in drawn {
                *group.rest.entry((label, frames)).or_insert(0) += n;
            }
        }
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
        for ((pid, key), group) in &self.groups {
            let root = format!(
                "BLOCKED {key}: {} episode{}, worst {:.0} ms",
                group.count,
                plural(group.count),
                group.worst_ms
            );
            for (t, drawn) in &group.detailed {
                let when = format!(
                    "episode #{}: {}{:.0} ms at +{:.3} s{}",
                    t.number,
                    if t.start_seen { "" } else { "≥ " },
                    t.duration_ms,
                    t.start - start_wall,
                    if t.complete {
                        ""
                    } else {
                        " (still running at the end)"
                    }
                );
                for (label, frames, n) in drawn {
                    let line = folded(
                        &[root.clone(), when.clone(), label.clone()],
                        frames,
                        BLOCKED,
                    );
                    *lines.entry(process(*pid, line)).or_insert(0) += n;
                }
            }
            let later = group.count - group.detailed.len();
            for ((label, frames), n) in &group.rest {
                let when = format!("{later} later episodes, merged");
                let line = folded(&[root.clone(), when, label.clone()], frames, BLOCKED);
                *lines.entry(process(*pid, line)).or_insert(0) += n;
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
        opts.title = title(
            self.count,
            self.groups.values().map(|g| g.worst_ms).fold(0.0, f64::max),
        );
        opts.subtitle = Some(format!(
            "orange: stacks that blocked an event loop for {:.0} ms or more; blue: other work. pid {}, Python {}, {} samples at {:.0} Hz",
            ctx.threshold_ms, ctx.pid, escape(&ctx.python_version), ctx.samples, ctx.rate
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

/// The root's label: the culprit, the kind and source, and the route when the episode served
/// a request whose route is known (`in handler (app/main.py:42) [sleep, time.sleep]
/// [GET /orders/{order_id}]`).
fn group_key(ep: &Episode) -> String {
    let why = match &ep.source {
        Some(s) => format!("{}, {s}", ep.kind),
        None => ep.kind.clone(),
    };
    // Only a matched route: concrete paths would make a root per path.
    let route = ep
        .request
        .as_ref()
        .and_then(|r| Some(format!("{} {}", r.method, r.route.as_ref()?)));
    match route {
        Some(endpoint) => format!("in {} [{why}] [{endpoint}]", ep.culprit_label()),
        None => format!("in {} [{why}]", ep.culprit_label()),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn title(count: usize, worst: f64) -> String {
    if count == 0 {
        return "loopspy: no blocking episodes".to_string();
    }
    format!(
        "loopspy: {count} blocking episode{}, worst {worst:.0} ms",
        plural(count)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::Location;

    fn episode(i: usize) -> Episode {
        let loc = Location {
            function: "handler".into(),
            file: "/app/main.py".into(),
            line: 3,
        };
        Episode {
            pid: 1,
            tid: 1,
            thread: None,
            start: 1000.0 + i as f64,
            duration_ms: 60.0,
            duration_error_ms: Some(1.0),
            start_seen: true,
            samples: 6,
            kind: "sleep".into(),
            source: None,
            task: None,
            coroutine: None,
            culprit: loc.clone(),
            stack: vec![loc],
            gil_holder: None,
            advice: None,
            complete: true,
            ..Default::default()
        }
    }

    #[test]
    fn long_recordings_merge_later_episodes_of_a_culprit() {
        let mut fg = FlameGraph::new(false);
        let frames = vec![Frame {
            function: "handler".into(),
            file: "/app/main.py".into(),
            line: 3,
        }];
        for i in 0..(DETAILED_PER_CULPRIT + 50) {
            fg.add_episode(&episode(i), vec![(frames.clone(), 60)]);
        }
        let lines = fg.folded_lines(1000.0);
        assert_eq!(lines.len(), DETAILED_PER_CULPRIT + 1);
        assert!(lines
            .iter()
            .any(|l| l.contains("50 later episodes, merged") && l.ends_with(" 3000")));
        assert!(lines[0].contains("150 episodes"));
    }

    #[test]
    fn a_deep_stack_marker_is_drawn_as_its_text() {
        let marker = Frame {
            function: "[3000 frames not shown]".into(),
            file: String::new(),
            line: 0,
        };
        assert_eq!(frame_label(&marker), "[3000 frames not shown]");
        let frame = Frame {
            function: "handler".into(),
            file: "/app/main.py".into(),
            line: 3,
        };
        assert_eq!(frame_label(&frame), "handler (app/main.py:3)");
    }

    /// A control character is not allowed in XML, and a line break would split a folded
    /// line: names from the target are escaped before they are drawn.
    #[test]
    fn control_characters_in_names_are_escaped() {
        let mut fg = FlameGraph::new(false);
        let bad = Frame {
            function: "f\x1b]0;T\x07\r\nFAKE;g".into(),
            file: "/app/\x01.py".into(),
            line: 3,
        };
        fg.add_stack(
            1,
            "thread\x1b 1",
            None,
            std::slice::from_ref(&bad),
            false,
            5,
        );
        // A task's name is the target's too.
        fg.add_stack(1, "thread\x1b 1", Some("task a;\x1bb"), &[bad], false, 2);
        let lines = fg.folded_lines(0.0);
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            "thread\\x1b 1_[i];f\\x1b]0:T\\x07\\r\\nFAKE:g (app/\\x01.py:3)_[i] 5"
        );
        assert_eq!(
            lines[1],
            "thread\\x1b 1_[i];task a:\\x1bb_[i];f\\x1b]0:T\\x07\\r\\nFAKE:g (app/\\x01.py:3)_[i] 2"
        );
        let mut svg = Vec::new();
        let ctx = FlameContext {
            pid: 1,
            python_version: "3.11.7".into(),
            samples: 5,
            rate: 100.0,
            threshold_ms: 50.0,
            start_wall: 0.0,
        };
        fg.render(&ctx, &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(!svg.chars().any(|c| c.is_control() && !"\t\n\r".contains(c)));
    }
}
