//! Samples in, outputs out: the one path shared by a live `record` and a replayed `report`.
//! It feeds the detector, routes its events to the sinks, and writes everything at the end.
//!
//! Each sink fails on its own: a write error ends that sink (one line on stderr says what is
//! lost, unless a reader merely closed its pipe) and the others go on; `finish` then returns
//! [`AlreadyReported`] so the run exits 1.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;

use crate::acquire::sampler::SamplerStats;
use crate::analysis::detector::{Detector, DetectorConfig, Event};
use crate::episode::Episode;
use crate::error::{AlreadyReported, UserError};
use crate::os::signals;
use crate::os::source_files::SourceFiles;
use crate::output::episodes::EpisodeLog;
use crate::output::escape::escape;
use crate::output::flamegraph::{FlameContext, FlameGraph};
use crate::output::speedscope;
use crate::output::summary::{self, EpisodeTally, Summary};
use crate::output::target::{self, OutputFile};
use crate::recording::{Header, RecordingWriter};
use crate::sample::Sample;

/// Where the outputs go. Files are opened by the caller (so bad paths fail before sampling).
pub struct Sinks {
    /// The SVG, written at the end.
    pub flamegraph: Option<OutputFile>,
    /// Write the flame-graph sink as speedscope JSON instead of SVG.
    pub speedscope: bool,
    /// The raw recording, streamed.
    pub raw: Option<RecordingWriter<OutputFile>>,
    /// The episodes log, streamed.
    pub episodes: Option<EpisodeLog>,
    /// Print a line on stderr while a long hang is going on.
    pub live_hangs: bool,
    /// Draw a loop thread's ordinary work under a `task <name>` frame per asyncio task.
    pub by_task: bool,
}

/// A sink that sees every sample (after the detector) and every episode, and may write one
/// file at the end: the pprof and Perfetto files, `monitor`'s metrics and live profile,
/// `diff`'s collector.
pub trait Observer {
    /// A sample, after the detector has seen it and its episodes went to `on_episode`.
    fn on_sample(&mut self, sample: &Sample, detector: &Detector);
    fn on_episode(&mut self, episode: &Episode);
    /// End of input: write the observer's output into `out`, when it has a file.
    fn finish(
        &mut self,
        header: &Header,
        stats: &SamplerStats,
        out: Option<&mut dyn Write>,
    ) -> Result<()>;
    /// What its file is, for failure messages (`pprof profile`).
    fn what(&self) -> &'static str;
}

/// The outputs, as failure messages name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    FlameGraph,
    Speedscope,
    Raw,
    Episodes,
    /// An observer's file, by what it is.
    Observed(&'static str),
}

impl Sink {
    /// What a failure loses, on top of the data not written: a streamed sink written in place
    /// keeps what it wrote ("ends here"); one rendered at the end is lost.
    fn loss(self, in_place: bool) -> String {
        let what = match self {
            Sink::FlameGraph => "flame graph",
            Sink::Speedscope => "speedscope profile",
            Sink::Raw => "raw recording",
            Sink::Episodes => "episodes log",
            Sink::Observed(what) => what,
        };
        let fate = match (in_place, self) {
            (false, _) => "was not written",
            (true, Sink::Raw | Sink::Episodes) => "ends here",
            (true, _) => "is lost",
        };
        format!("the {what} {fate} (the other outputs are not affected)")
    }
}

/// Episodes kept in memory for the caller of `finish`; all of them are in the episodes log.
const KEPT_EPISODES: usize = 10_000;

pub struct Pipeline {
    detector: Detector,
    flame: FlameGraph,
    sinks: Sinks,
    threshold_ms: f64,
    /// The episodes, up to `KEPT_EPISODES` (for `report`'s callers); the summary's tally
    /// keeps what it needs of all of them.
    episodes: Vec<Episode>,
    tally: EpisodeTally,
    /// Whether `finish` returns the episodes (replays); a live recording only streams them.
    keep_episodes: bool,
    /// Per loop thread: the start of the hang last reported and the whole seconds reported.
    hangs: HashMap<(u32, u32), u64>,
    /// Sinks whose writes failed (each said so on stderr).
    lost: usize,
    /// A stop signal abandons the outputs instead of writing them (`report`).
    cancellable: bool,
    observers: Vec<(Box<dyn Observer + Send>, Option<OutputFile>)>,
    /// Lines for the summary's notes, from the caller (`add_note`).
    notes: Vec<String>,
}

impl Pipeline {
    /// `sources`: where culprits' source lines can be read (to name calls made in C), if anywhere.
    pub fn new(
        threshold_ms: f64,
        include_idle: bool,
        sinks: Sinks,
        sources: Option<SourceFiles>,
    ) -> Pipeline {
        let detector = Detector::new(DetectorConfig {
            threshold: threshold_ms / 1000.0,
        });
        Pipeline {
            detector: match sources {
                Some(files) => detector.with_sources(files),
                None => detector,
            },
            flame: FlameGraph::new(include_idle),
            sinks,
            threshold_ms,
            episodes: Vec::new(),
            tally: EpisodeTally::default(),
            keep_episodes: false,
            hangs: HashMap::new(),
            lost: 0,
            cancellable: false,
            observers: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Also feed `observer` (see [`Observer`]), which writes `file` at the end, if given.
    pub fn with_observer(
        mut self,
        observer: Box<dyn Observer + Send>,
        file: Option<OutputFile>,
    ) -> Pipeline {
        self.observers.push((observer, file));
        self
    }

    /// A stop signal (Ctrl-C, SIGTERM, SIGHUP) while `finish` runs abandons every output: a
    /// replay stopped by the user writes nothing (a live recording instead writes on Ctrl-C).
    pub fn cancellable(mut self) -> Pipeline {
        self.cancellable = true;
        self
    }

    /// A line for the summary's notes (printed after the episodes).
    pub fn add_note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Keep the episodes (up to `KEPT_EPISODES`) for the caller of `finish`.
    pub fn keeping_episodes(mut self) -> Pipeline {
        self.keep_episodes = true;
        self
    }

    pub fn on_sample(&mut self, sample: &Sample) -> Result<()> {
        if let Some(raw) = self.sinks.raw.as_mut() {
            if let Err(e) = raw.write(sample) {
                if let Some(raw) = self.sinks.raw.take() {
                    self.lose(raw.into_inner(), Sink::Raw, e);
                }
            }
        }
        let events = self.detector.feed(sample);
        self.route(events);
        for (o, _) in &mut self.observers {
            o.on_sample(sample, &self.detector);
        }
        if self.sinks.live_hangs {
            self.report_hangs(sample.mono);
        }
        Ok(())
    }

    /// A sink's write failed: say what is lost (unless its reader closed a pipe), keep what
    /// can be kept, go on without it.
    fn lose(&mut self, mut file: OutputFile, sink: Sink, err: anyhow::Error) {
        // The OS's own error, which serde_json and inferno may have put in their words.
        let err = file.take_error().map(anyhow::Error::from).unwrap_or(err);
        self.count_loss(file.name(), &sink.loss(file.written_in_place()), &err);
        file.abandon();
    }

    fn count_loss(&mut self, name: &str, lost: &str, err: &anyhow::Error) {
        if target::lost(name, lost, err) {
            self.lost += 1;
        }
    }

    /// Commit `file`; on success it joins the list of files written.
    fn commit(&mut self, mut file: OutputFile, sink: Sink, written: &mut Vec<String>) {
        if let Err(e) = file.flush() {
            return self.lose(file, sink, e.into());
        }
        let (name, listed) = (file.name().to_string(), file.listed());
        let lost = sink.loss(file.written_in_place());
        match file.commit() {
            Ok(()) if listed => written.push(name),
            Ok(()) => {}
            Err(e) => self.count_loss(&name, &lost, &e.into()),
        }
    }

    fn check_cancel(&self) -> Result<()> {
        if self.cancellable && signals::stop_requested() {
            return Err(UserError::Interrupted {
                during: "while writing the outputs".into(),
            }
            .into());
        }
        Ok(())
    }

    fn route(&mut self, events: Vec<Event>) {
        for event in events {
            match event {
                Event::Stack {
                    pid,
                    thread,
                    task,
                    frames,
                    idle,
                    count,
                } => {
                    // Only a flame graph needs the stacks.
                    if self.sinks.flamegraph.is_some() {
                        let task = task.as_deref().filter(|_| self.sinks.by_task);
                        self.flame
                            .add_stack(pid, &thread, task, &frames, idle, count)
                    }
                }
                Event::Episode { episode, stacks } => {
                    for (o, _) in &mut self.observers {
                        o.on_episode(&episode);
                    }
                    if let Some(log) = self.sinks.episodes.as_mut() {
                        if let Err(e) = log.write(&episode) {
                            if let Some(log) = self.sinks.episodes.take() {
                                self.lose(log.into_file(), Sink::Episodes, e.into());
                            }
                        }
                    }
                    if self.sinks.flamegraph.is_some() {
                        self.flame.add_episode(&episode, stacks);
                    }
                    self.hangs.remove(&(episode.pid, episode.tid));
                    self.tally.add(&episode);
                    if self.keep_episodes && self.episodes.len() < KEPT_EPISODES {
                        self.episodes.push(episode);
                    }
                }
            }
        }
    }

    /// A line on stderr each time a hang in progress passes another whole second.
    fn report_hangs(&mut self, now: f64) {
        for (pid, tid, name, callback, secs) in self.detector.ongoing(now) {
            let whole = secs.floor() as u64;
            let shown = self.hangs.entry((pid, tid)).or_insert(0);
            if whole >= 1 && whole > *shown {
                *shown = whole;
                crate::output::escape::print_err(&format!(
                    "loopspy: event loop on {} blocked for {whole} s so far, in {}",
                    escape(&crate::sample::thread_label(name.as_deref(), tid)),
                    escape(&callback)
                ));
            }
        }
    }

    /// End of input: close open episodes, write the outputs, print the summary to `summary_out`.
    /// Each output is written even if another fails; then the error is [`AlreadyReported`]
    /// (each failure printed its line). With [`cancellable`](Pipeline::cancellable), a stop
    /// signal abandons every output not yet committed.
    pub fn finish(
        mut self,
        header: &Header,
        stats: &SamplerStats,
        summary_out: &mut dyn Write,
    ) -> Result<Vec<Episode>> {
        let events = self.detector.finish();
        self.route(events);
        self.check_cancel()?;
        let mut written = Vec::new();
        if let Some(mut out) = self.sinks.flamegraph.take() {
            let ctx = FlameContext {
                pid: header.pid,
                python_version: header.python_version.clone(),
                samples: stats.samples,
                rate: header.rate,
                threshold_ms: self.threshold_ms,
                start_wall: header.start_wall,
            };
            let (sink, rendered) = if self.sinks.speedscope {
                let title = format!(
                    "loopspy: pid {}, Python {}",
                    header.pid, header.python_version
                );
                let lines = self.flame.folded_lines(header.start_wall);
                (
                    Sink::Speedscope,
                    speedscope::write(&lines, &title, &mut out),
                )
            } else {
                (Sink::FlameGraph, self.flame.render(&ctx, &mut out))
            };
            match rendered {
                Err(e) => self.lose(out, sink, e),
                Ok(()) => {
                    self.check_cancel()?;
                    self.commit(out, sink, &mut written);
                }
            }
        }
        for (mut observer, file) in std::mem::take(&mut self.observers) {
            let sink = Sink::Observed(observer.what());
            match file {
                None => {
                    if let Err(e) = observer.finish(header, stats, None) {
                        let _ = writeln!(std::io::stderr(), "loopspy: {}: {e:#}", observer.what());
                        self.lost += 1;
                    }
                }
                Some(mut out) => match observer.finish(header, stats, Some(&mut out)) {
                    Err(e) => self.lose(out, sink, e),
                    Ok(()) => {
                        self.check_cancel()?;
                        self.commit(out, sink, &mut written);
                    }
                },
            }
        }
        if let Some(mut raw) = self.sinks.raw.take() {
            match raw.write_trailer(stats) {
                Err(e) => self.lose(raw.into_inner(), Sink::Raw, e),
                Ok(()) => {
                    self.check_cancel()?;
                    self.commit(raw.into_inner(), Sink::Raw, &mut written);
                }
            }
        }
        if let Some(log) = self.sinks.episodes.take() {
            self.check_cancel()?;
            self.commit(log.into_file(), Sink::Episodes, &mut written);
        }
        let mut notes = self.detector.source_notes();
        notes.append(&mut self.notes);
        let summarized = summary::write(
            summary_out,
            &Summary {
                episodes: &self.tally,
                stats,
                loops: &self.detector.loops_seen(),
                threshold_ms: self.threshold_ms,
                outputs: &written,
                notes: &notes,
            },
        )
        .and_then(|()| Ok(summary_out.flush()?));
        if let Err(e) = summarized {
            // Nowhere left to say it; a closed pipe is the reader's choice.
            let io = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>());
            if io.is_none_or(|e| e.kind() != std::io::ErrorKind::BrokenPipe) {
                self.lost += 1;
            }
        }
        if self.lost > 0 {
            return Err(AlreadyReported.into());
        }
        Ok(self.episodes)
    }
}
