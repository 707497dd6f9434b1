//! Samples in, outputs out: the one path shared by a live `record` and a replayed `report`.
//! It feeds the detector, routes its events to the sinks, and writes everything at the end.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;

use crate::acquire::sampler::SamplerStats;
use crate::analysis::detector::{Detector, DetectorConfig, Event};
use crate::episode::Episode;
use crate::os::source_files::SourceFiles;
use crate::output::atomic::AtomicFile;
use crate::output::episodes::EpisodeLog;
use crate::output::flamegraph::{FlameContext, FlameGraph};
use crate::output::speedscope;
use crate::output::summary::{self, EpisodeTally, Summary};
use crate::recording::{Header, RecordingWriter};
use crate::sample::Sample;

/// Where the outputs go. Files are opened by the caller (so bad paths fail before sampling).
pub struct Sinks {
    /// The SVG, written at the end.
    pub flamegraph: Option<AtomicFile>,
    /// Write the flame-graph sink as speedscope JSON instead of SVG.
    pub speedscope: bool,
    /// The raw recording, streamed.
    pub raw: Option<RecordingWriter<AtomicFile>>,
    /// The episodes log, streamed, and its name for the summary.
    pub episodes: Option<(EpisodeLog, String)>,
    /// Print a line on stderr while a long hang is going on.
    pub live_hangs: bool,
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
        }
    }

    /// Keep the episodes (up to `KEPT_EPISODES`) for the caller of `finish`.
    pub fn keeping_episodes(mut self) -> Pipeline {
        self.keep_episodes = true;
        self
    }

    /// The sampler's tick rate (Hz): bounds how far an episode's ends may reach past its
    /// samples.
    pub fn with_tick_rate(mut self, rate: f64) -> Pipeline {
        self.detector = self.detector.with_interval(1.0 / rate);
        self
    }

    pub fn on_sample(&mut self, sample: &Sample) -> Result<()> {
        if let Some(raw) = self.sinks.raw.as_mut() {
            raw.write(sample)?;
        }
        let events = self.detector.feed(sample);
        self.route(events)?;
        if self.sinks.live_hangs {
            self.report_hangs(sample.mono);
        }
        Ok(())
    }

    fn route(&mut self, events: Vec<Event>) -> Result<()> {
        for event in events {
            match event {
                Event::Stack {
                    pid,
                    thread,
                    frames,
                    idle,
                    count,
                } => {
                    // Only a flame graph needs the stacks.
                    if self.sinks.flamegraph.is_some() {
                        self.flame.add_stack(pid, &thread, &frames, idle, count)
                    }
                }
                Event::Episode { episode, stacks } => {
                    if let Some((log, _)) = self.sinks.episodes.as_mut() {
                        log.write(&episode)?;
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
        Ok(())
    }

    /// A line on stderr each time a hang in progress passes another whole second.
    fn report_hangs(&mut self, now: f64) {
        for (pid, tid, name, callback, secs) in self.detector.ongoing(now) {
            let whole = secs.floor() as u64;
            let shown = self.hangs.entry((pid, tid)).or_insert(0);
            if whole >= 1 && whole > *shown {
                *shown = whole;
                eprintln!(
                    "loopspy: event loop on {} blocked for {whole} s so far, in {callback}",
                    crate::sample::thread_label(name.as_deref(), tid)
                );
            }
        }
    }

    /// End of input: close open episodes, write the outputs, print the summary to `summary_out`.
    pub fn finish(
        mut self,
        header: &Header,
        stats: &SamplerStats,
        summary_out: &mut dyn Write,
    ) -> Result<Vec<Episode>> {
        let events = self.detector.finish();
        self.route(events)?;
        let mut written = Vec::new();
        if let Some(mut svg) = self.sinks.flamegraph.take() {
            let ctx = FlameContext {
                pid: header.pid,
                python_version: header.python_version.clone(),
                samples: stats.samples,
                rate: header.rate,
                threshold_ms: self.threshold_ms,
                start_wall: header.start_wall,
            };
            if self.sinks.speedscope {
                let title = format!(
                    "loopspy: pid {}, Python {}",
                    header.pid, header.python_version
                );
                speedscope::write(
                    &self.flame.folded_lines(header.start_wall),
                    &title,
                    &mut svg,
                )?;
            } else {
                self.flame.render(&ctx, &mut svg)?;
            }
            written.push(svg.path().display().to_string());
            svg.commit()?;
        }
        if let Some(raw) = self.sinks.raw.take() {
            let file = raw.finish(stats)?;
            written.push(file.path().display().to_string());
            file.commit()?;
        }
        if let Some((log, name)) = self.sinks.episodes.take() {
            log.finish()?;
            if name != "-" {
                written.push(name);
            }
        }
        summary::write(
            summary_out,
            &Summary {
                episodes: &self.tally,
                stats,
                loops: &self.detector.loops_seen(),
                threshold_ms: self.threshold_ms,
                outputs: &written,
            },
        )?;
        Ok(self.episodes)
    }
}
