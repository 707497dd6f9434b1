//! `loopspy report`: replay a raw recording through the same pipeline as a live run. Its
//! outputs are written whole at the end, never over the recording; Ctrl-C (SIGTERM, SIGHUP)
//! stops the replay and writes nothing.

use std::ffi::OsStr;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::Result;

use crate::acquire::sampler::SamplerStats;
use crate::cli::{AnalysisArgs, Format, ReportArgs};
use crate::error::UserError;
use crate::os::signals;
use crate::os::source_files::SourceFiles;
use crate::output::episodes::EpisodeLog;
use crate::output::perfetto::PerfettoFile;
use crate::output::pprof::PprofFile;
use crate::output::target::{open_all, Mode, OutputFile};
use crate::pipeline::{Observer, Pipeline, Sinks};
use crate::recording::RecordingReader;

/// Samples replayed between two looks at the stop flag.
const STOP_CHECK_EVERY: u64 = 256;

fn recording_error(path: &Path, reason: impl std::fmt::Display) -> anyhow::Error {
    UserError::Recording {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
    .into()
}

/// Replay `path` into the given sinks; returns the episodes found.
/// `sources`: read culprits' source files from this machine (None in tests, for output that
/// does not depend on which files exist). A stop signal (see `os::signals`) ends the replay
/// with [`UserError::Interrupted`], and the sinks are dropped unwritten.
pub fn replay(
    path: &Path,
    threshold_ms: f64,
    idle: bool,
    sinks: Sinks,
    sources: Option<SourceFiles>,
    summary: &mut dyn std::io::Write,
) -> Result<Vec<crate::episode::Episode>> {
    replay_with(
        path,
        threshold_ms,
        idle,
        sinks,
        Vec::new(),
        sources,
        summary,
    )
}

/// [`replay`], also feeding `observers`, each with the file it writes, if any (the pprof and
/// Perfetto files, `diff`'s collector).
pub fn replay_with(
    path: &Path,
    threshold_ms: f64,
    idle: bool,
    sinks: Sinks,
    observers: Vec<(Box<dyn Observer + Send>, Option<OutputFile>)>,
    sources: Option<SourceFiles>,
    summary: &mut dyn std::io::Write,
) -> Result<Vec<crate::episode::Episode>> {
    let file = File::open(path).map_err(|e| recording_error(path, e))?;
    let mut reader = RecordingReader::new(BufReader::new(file))
        .map_err(|e| recording_error(path, format!("{e:#}")))?;
    // Files edited since the recording may not hold the code that ran.
    let start = reader.header.start_wall;
    let sources = sources.map(|s| s.trusting_until(start));
    let mut pipeline = Pipeline::new(threshold_ms, idle, sinks, sources)
        .keeping_episodes()
        .cancellable();
    for (o, file) in observers {
        pipeline = pipeline.with_observer(o, file);
    }
    let mut count = 0u64;
    let mut last = 0.0f64;
    for sample in reader.by_ref() {
        let sample = sample.map_err(|e| recording_error(path, e))?;
        count += 1;
        if count.is_multiple_of(STOP_CHECK_EVERY) && signals::stop_requested() {
            return Err(UserError::Interrupted {
                during: format!("while replaying {}", path.display()),
            }
            .into());
        }
        last = sample.mono;
        pipeline.on_sample(&sample)?;
    }
    if count == 0 && reader.skipped > 0 {
        return Err(recording_error(
            path,
            format!(
                "none of its {} sample lines could be read (damaged, or not written by loopspy)",
                reader.skipped
            ),
        ));
    }
    if reader.skipped > 0 {
        pipeline.add_note(format!(
            "{} line{} of the recording could not be read and {} skipped: the episodes come from the {count} samples read",
            reader.skipped,
            if reader.skipped == 1 { "" } else { "s" },
            if reader.skipped == 1 { "was" } else { "were" },
        ));
    }
    let header = reader.header.clone();
    // A recording cut short has no stats line: rebuild what can be known.
    let stats = reader.stats.clone().unwrap_or(SamplerStats {
        rate: header.rate,
        samples: count,
        elapsed: last,
        end: "recording cut short".into(),
        ..Default::default()
    });
    pipeline.finish(&header, &stats, summary)
}

pub fn run(args: &ReportArgs) -> Result<()> {
    signals::stop_flag();
    // The input first: a file that is not a recording (an SVG given by mistake) is the error to
    // report, not that its default output name would be itself. A pipe is read only once, by
    // the replay.
    if std::fs::metadata(&args.recording).is_ok_and(|m| m.is_file()) {
        let file = File::open(&args.recording).map_err(|e| recording_error(&args.recording, e))?;
        RecordingReader::new(BufReader::new(file))
            .map_err(|e| recording_error(&args.recording, format!("{e:#}")))?;
    }
    if let Some(note) = args.format.by_task_note(args.analysis.by_task) {
        eprintln!("loopspy: note: {note}");
    }
    let main = args.output_path();
    let mut outputs = vec![(main.as_os_str(), Mode::Whole)];
    if let Some(p) = &args.analysis.episodes {
        outputs.push((OsStr::new(p), Mode::Whole));
    }
    let mut files = open_all(&outputs, &[(&args.recording, "the recording")])?.into_iter();
    let main = files.next();
    let (flamegraph, observers) = match timeline_observer(args.format, &args.analysis) {
        Some(o) => (None, vec![(o, main)]),
        None => (main, Vec::new()),
    };
    let sinks = Sinks {
        by_task: args.analysis.by_task,
        speedscope: args.format == Format::Speedscope,
        flamegraph,
        raw: None,
        episodes: files.next().map(EpisodeLog::new),
        live_hangs: false,
    };
    replay_with(
        &args.recording,
        args.analysis.threshold,
        args.analysis.idle,
        sinks,
        observers,
        Some(SourceFiles::local()),
        &mut std::io::stderr(),
    )?;
    Ok(())
}

/// The observer that writes the main output for a timeline format (pprof, Perfetto); `None`
/// for the formats the pipeline's flame-graph sink writes (SVG, speedscope) and for raw.
pub fn timeline_observer(
    format: Format,
    analysis: &AnalysisArgs,
) -> Option<Box<dyn Observer + Send>> {
    match format {
        Format::Pprof => Some(Box::new(PprofFile::new(analysis.idle))),
        Format::Perfetto => Some(Box::new(PerfettoFile::new(analysis.threshold))),
        _ => None,
    }
}
