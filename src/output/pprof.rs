//! pprof profiles (the protobuf of github.com/google/pprof, gzipped): what `go tool pprof`,
//! Parca and Pyroscope (through Grafana Alloy) read. `--format pprof` writes one for a whole
//! recording; `loopspy monitor` serves one for the last N seconds at `/debug/pprof/profile`.
//!
//! The messages are the `pprof` crate's prost types for profile.proto; we only fill them.
//! Each sample is one thread's stack at one full sample, with two values: `samples/count` and
//! `wall/nanoseconds` (the time that sample stands for). Labels, all strings, with names that
//! Pyroscope accepts (`[a-zA-Z_][a-zA-Z0-9_]*`): `thread_name`, `pid`, `task_name` (when
//! known), `blocked` (`true` inside a blocking episode, else `false`) and `kind` (the episode's
//! kind when blocked, else the thread's OS state: `cpu`, `sleep`, `network`, ..., `idle`), and
//! `route` on a blocked sample whose episode served a request with a matched route template.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;
use pprof::protos::{self, Message};

/// The profile message (profile.proto), as the `pprof` crate defines it.
pub use pprof::protos::Profile;

use crate::acquire::sampler::SamplerStats;
use crate::analysis::detector::Detector;
use crate::episode::Episode;
use crate::output::labeled::{LabeledStack, Labeler};
use crate::pipeline::Observer;
use crate::recording::Header;
use crate::sample::{Frame, Sample};

/// The label names, shared with tests and docs.
pub const LABELS: [&str; 6] = [
    "thread_name",
    "pid",
    "task_name",
    "blocked",
    "kind",
    "route",
];

/// Distinct (stack, labels) kept before new ones are merged into one "more stacks" entry.
const MAX_KEYS: usize = 200_000;

/// What one aggregated pprof sample is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    frames: Arc<[Frame]>,
    thread: Option<Arc<str>>,
    pid: u32,
    task: Option<Arc<str>>,
    blocked: bool,
    kind: Option<Arc<str>>,
    route: Option<Arc<str>>,
}

/// Adds up labeled stacks into pprof samples (memory grows with distinct stacks and labels,
/// not with time), then encodes the profile.
#[derive(Debug, Default)]
pub struct PprofBuilder {
    /// Key → (samples, wall ns), and the order keys were first seen (deterministic output).
    totals: HashMap<Key, (i64, i64)>,
    order: Vec<Key>,
    first_wall: Option<f64>,
    last_wall: Option<f64>,
    merged: bool,
}

impl PprofBuilder {
    pub fn new() -> PprofBuilder {
        PprofBuilder::default()
    }

    pub fn add(&mut self, s: &LabeledStack) {
        self.first_wall = Some(self.first_wall.map_or(s.wall, |w| w.min(s.wall)));
        self.last_wall = Some(
            self.last_wall
                .map_or(s.wall, |w| w.max(s.wall + s.weight_ms as f64 / 1000.0)),
        );
        let mut key = Key {
            frames: s.frames.clone(),
            thread: s.thread.clone(),
            pid: s.pid,
            task: s.task.clone(),
            blocked: s.blocked,
            kind: s.kind.clone(),
            route: s.route.clone(),
        };
        if self.totals.len() >= MAX_KEYS && !self.totals.contains_key(&key) {
            self.merged = true;
            key.frames = Arc::from(vec![Frame {
                function: format!("(more stacks, merged after {MAX_KEYS} distinct ones)"),
                file: String::new(),
                line: 0,
            }]);
            key.task = None;
            key.route = None;
        }
        let entry = self.totals.entry(key.clone()).or_insert_with(|| {
            self.order.push(key);
            (0, 0)
        });
        entry.0 += 1;
        entry.1 += s.weight_ms as i64 * 1_000_000;
    }

    /// The profile message. `window`: (start, end) in wall-clock Unix seconds, when known
    /// better than from the samples (a live window).
    pub fn build(&self, window: Option<(f64, f64)>) -> protos::Profile {
        let mut t = Tables::default();
        let sample_type = vec![
            protos::ValueType {
                ty: t.string("samples"),
                unit: t.string("count"),
            },
            protos::ValueType {
                ty: t.string("wall"),
                unit: t.string("nanoseconds"),
            },
        ];
        let period_type = Some(protos::ValueType {
            ty: t.string("wall"),
            unit: t.string("nanoseconds"),
        });
        let mut samples = Vec::with_capacity(self.order.len());
        for key in &self.order {
            let (count, ns) = self.totals[key];
            let location_id = key.frames.iter().map(|f| t.location(f)).collect();
            let mut label = Vec::with_capacity(LABELS.len());
            let mut push = |t: &mut Tables, k: &str, v: &str| {
                label.push(protos::Label {
                    key: t.string(k),
                    str: t.string(v),
                    ..Default::default()
                })
            };
            push(
                &mut t,
                "thread_name",
                key.thread.as_deref().unwrap_or("unknown"),
            );
            push(&mut t, "pid", &key.pid.to_string());
            if let Some(task) = &key.task {
                push(&mut t, "task_name", task);
            }
            push(
                &mut t,
                "blocked",
                if key.blocked { "true" } else { "false" },
            );
            if let Some(kind) = &key.kind {
                push(&mut t, "kind", kind);
            }
            if let Some(route) = &key.route {
                push(&mut t, "route", route);
            }
            samples.push(protos::Sample {
                location_id,
                value: vec![count, ns],
                label,
            });
        }
        let (start, end) = window.unwrap_or((
            self.first_wall.unwrap_or(0.0),
            self.last_wall.unwrap_or(0.0),
        ));
        let comment = if self.merged {
            vec![t.string("loopspy: some stacks were merged to keep memory bounded")]
        } else {
            Vec::new()
        };
        protos::Profile {
            sample_type,
            sample: samples,
            location: t.locations,
            function: t.functions,
            string_table: t.strings,
            time_nanos: (start * 1e9) as i64,
            duration_nanos: ((end - start).max(0.0) * 1e9) as i64,
            period_type,
            period: 0,
            comment,
            ..Default::default()
        }
    }
}

/// The profile's string, function and location tables, each entry added once.
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<protos::Function>,
    function_ids: HashMap<(String, String), u64>,
    locations: Vec<protos::Location>,
    location_ids: HashMap<Frame, u64>,
}

impl Tables {
    fn string(&mut self, s: &str) -> i64 {
        if self.strings.is_empty() {
            // Index 0 is always the empty string.
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(id) = self.string_ids.get(s) {
            return *id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (name.to_string(), file.to_string());
        if let Some(id) = self.function_ids.get(&key) {
            return *id;
        }
        let id = self.functions.len() as u64 + 1;
        let f = protos::Function {
            id,
            name: self.string(name),
            system_name: self.string(name),
            filename: self.string(file),
            start_line: 0,
        };
        self.functions.push(f);
        self.function_ids.insert(key, id);
        id
    }

    fn location(&mut self, frame: &Frame) -> u64 {
        if let Some(id) = self.location_ids.get(frame) {
            return *id;
        }
        let id = self.locations.len() as u64 + 1;
        let function_id = self.function(&frame.function, &frame.file);
        self.locations.push(protos::Location {
            id,
            line: vec![protos::Line {
                function_id,
                line: frame.line as i64,
            }],
            ..Default::default()
        });
        self.location_ids.insert(frame.clone(), id);
        id
    }
}

/// `--format pprof`: the whole recording as one profile, written at the end.
pub struct PprofFile {
    labeler: Labeler,
    builder: PprofBuilder,
}

impl PprofFile {
    /// `include_idle`: also count idle threads (waiting, not working), as `--idle` does for
    /// the flame graph.
    pub fn new(include_idle: bool) -> PprofFile {
        PprofFile {
            labeler: Labeler::new(include_idle, false, false),
            builder: PprofBuilder::new(),
        }
    }
}

impl Observer for PprofFile {
    fn on_sample(&mut self, sample: &Sample, detector: &Detector) {
        let b = &mut self.builder;
        self.labeler.on_sample(sample, detector, &mut |s| b.add(&s));
    }

    fn on_episode(&mut self, episode: &Episode) {
        let b = &mut self.builder;
        self.labeler.on_episode(episode, &mut |s| b.add(&s));
    }

    fn finish(
        &mut self,
        _header: &Header,
        _stats: &SamplerStats,
        out: Option<&mut dyn Write>,
    ) -> Result<()> {
        let b = &mut self.builder;
        self.labeler.finish(&mut |s| b.add(&s));
        match out {
            Some(out) => write_gzipped(&self.builder.build(None), out),
            None => Ok(()),
        }
    }

    fn what(&self) -> &'static str {
        "pprof profile"
    }
}

/// Encode and gzip a profile (the form pprof files and `/debug/pprof/profile` use).
pub fn write_gzipped(profile: &protos::Profile, out: &mut dyn Write) -> Result<()> {
    let bytes = profile.encode_to_vec();
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&bytes).context("writing the pprof profile")?;
    gz.finish().context("writing the pprof profile")?;
    Ok(())
}

/// Decode a gzipped (or plain) pprof profile: for tests and the golden text form.
pub fn decode(bytes: &[u8]) -> Result<protos::Profile> {
    let plain = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)
            .context("not a gzip stream")?;
        out
    } else {
        bytes.to_vec()
    };
    protos::Profile::decode(plain.as_slice()).context("not a pprof profile")
}

/// A stable, readable text form of a profile: one line per sample with its values, labels and
/// stack (outermost first). Golden files use it.
pub fn to_text(p: &protos::Profile) -> String {
    let s = |i: i64| p.string_table.get(i as usize).map_or("?", String::as_str);
    let functions: HashMap<u64, &protos::Function> = p.function.iter().map(|f| (f.id, f)).collect();
    let locations: HashMap<u64, &protos::Location> = p.location.iter().map(|l| (l.id, l)).collect();
    let mut out = String::new();
    let types: Vec<String> = p
        .sample_type
        .iter()
        .map(|v| format!("{}/{}", s(v.ty), s(v.unit)))
        .collect();
    out.push_str(&format!(
        "sample types: {}; duration {:.3} s; {} samples, {} locations, {} functions\n",
        types.join(", "),
        p.duration_nanos as f64 / 1e9,
        p.sample.len(),
        p.location.len(),
        p.function.len()
    ));
    let mut lines: Vec<String> = p
        .sample
        .iter()
        .map(|smp| {
            let labels: Vec<String> = smp
                .label
                .iter()
                .map(|l| format!("{}={}", s(l.key), s(l.str)))
                .collect();
            let stack: Vec<String> = smp
                .location_id
                .iter()
                .rev()
                .map(|id| {
                    let Some(loc) = locations.get(id) else {
                        return "?".to_string();
                    };
                    loc.line
                        .iter()
                        .map(|l| match functions.get(&l.function_id) {
                            Some(f) => format!(
                                "{} ({}:{})",
                                s(f.name),
                                crate::sample::short_path(s(f.filename)),
                                l.line
                            ),
                            None => "?".into(),
                        })
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect();
            format!("{:?} [{}] {}", smp.value, labels.join(" "), stack.join(";"))
        })
        .collect();
    lines.sort();
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(blocked: bool, weight_ms: u32) -> LabeledStack {
        LabeledStack {
            wall: 1000.0,
            mono: 0.0,
            pid: 7,
            tid: 7,
            thread: Some(Arc::from("MainThread")),
            task: Some(Arc::from("Task-1")),
            frames: Arc::from(vec![
                Frame {
                    function: "handler".into(),
                    file: "/app/main.py".into(),
                    line: 9,
                },
                Frame {
                    function: "run".into(),
                    file: "/app/main.py".into(),
                    line: 3,
                },
            ]),
            weight_ms,
            loop_thread: true,
            blocked,
            kind: Some(Arc::from(if blocked { "sleep" } else { "cpu" })),
            route: blocked.then(|| Arc::from("/orders/{order_id}")),
        }
    }

    #[test]
    fn round_trips_with_labels_and_values() {
        let mut b = PprofBuilder::new();
        b.add(&stack(true, 10));
        b.add(&stack(true, 10));
        b.add(&stack(false, 100));
        let mut gz = Vec::new();
        write_gzipped(&b.build(None), &mut gz).unwrap();
        let p = decode(&gz).unwrap();
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.function.len(), 2);
        let text = to_text(&p);
        assert!(text.contains("[2, 20000000] [thread_name=MainThread pid=7 task_name=Task-1 blocked=true kind=sleep route=/orders/{order_id}] run (app/main.py:3);handler (app/main.py:9)"), "{text}");
        assert!(text.contains("[1, 100000000] [thread_name=MainThread pid=7 task_name=Task-1 blocked=false kind=cpu]"), "{text}");
        for l in &p.sample[0].label {
            let name = &p.string_table[l.key as usize];
            assert!(LABELS.contains(&name.as_str()));
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        }
    }
}
