//! `loopspy record`: open the outputs, attach or launch, sample until the duration, Ctrl-C or
//! the target's exit, and write everything through the shared pipeline. Where and how files
//! are written is `output::target`'s business.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::acquire::attach::{attach, launch_with, ChildOutput, Target};
use crate::acquire::sampler;
use crate::acquire::tree::WorkerFinder;
use crate::cli::{Format, RecordArgs};
use crate::commands::report::timeline_observer;
use crate::os::signals;
use crate::os::source_files::SourceFiles;
use crate::output::episodes::EpisodeLog;
use crate::output::escape::escape;
use crate::output::target::{check_distinct, Mode, OutputFile, OutputTarget};
use crate::pipeline::{Pipeline, Sinks};
use crate::recording::{Header, RecordingWriter, FORMAT_VERSION};

/// The main output (`-o`, or its default name for `pid`), resolved and checked against the
/// episodes log, opened whole: a file appears complete at the end.
fn open_main(
    args: &RecordArgs,
    pid: Option<u32>,
    log: Option<&OutputTarget>,
) -> Result<OutputFile> {
    let main = OutputTarget::resolve(args.output_path(pid))?;
    let all: Vec<&OutputTarget> = std::iter::once(&main).chain(log).collect();
    check_distinct(&all, &[])?;
    main.open(Mode::Whole)
}

pub fn run(args: &RecordArgs) -> Result<()> {
    let stop = signals::stop_flag();
    // Every output is opened before attaching, so a bad path costs no recording. The log is
    // written in place: it grows one line per episode.
    let log_target = match &args.analysis.episodes {
        Some(p) => Some(OutputTarget::resolve(p)?),
        None => None,
    };
    let out_file = open_main(args, args.pid, log_target.as_ref())?;
    let log = log_target
        .as_ref()
        .map(|t| t.open(Mode::Stream))
        .transpose()?;
    let stdout_busy = out_file.is_stdout() || log.as_ref().is_some_and(|l| l.is_stdout());
    let (kernel, rate) = args.sampling.resolve_clock()?;
    let mut target: Target = match args.pid {
        Some(pid) => attach(pid)?,
        None => {
            let output = match stdout_busy {
                true => ChildOutput::StdoutToStderr,
                false => ChildOutput::Inherit,
            };
            launch_with(&args.command, output)?
        }
    };
    // With a launched target the default file name can now carry its pid.
    let out_file = if args.output.is_none() && args.pid.is_none() {
        drop(out_file);
        match open_main(args, Some(target.pid), log_target.as_ref()) {
            Ok(file) => file,
            Err(e) => {
                target.stop_child();
                return Err(e);
            }
        }
    } else {
        out_file
    };
    if let Some(n) = &target.notice {
        crate::output::escape::print_err(&format!("loopspy: note: {}", escape(n)));
    }
    if let Some(note) = args.format.by_task_note(args.analysis.by_task) {
        eprintln!("loopspy: note: {note}");
    }
    if args.native {
        if let Some(spy) = target.spy.as_mut() {
            spy.enable_native()?;
        }
        eprintln!("loopspy: note: --native stops the target's threads for about a millisecond at each stack read");
    }
    let header = Header {
        loopspy_recording: FORMAT_VERSION,
        pid: target.pid,
        command: target.command.clone(),
        python_version: target.python_version.clone(),
        rate,
        start_wall: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        note: None,
    };
    let (flamegraph, raw, observer) = match args.format {
        Format::Raw => (None, Some(RecordingWriter::new(out_file, &header)?), None),
        format => match timeline_observer(format, &args.analysis) {
            Some(o) => (None, None, Some((o, out_file))),
            None => (Some(out_file), None, None),
        },
    };
    let episodes = log.map(EpisodeLog::new);
    let sinks = Sinks {
        by_task: args.analysis.by_task,
        speedscope: args.format == Format::Speedscope,
        flamegraph,
        raw,
        episodes,
        live_hangs: true,
    };
    let sources = SourceFiles::for_pid(target.pid);
    let mut pipeline = Pipeline::new(
        args.analysis.threshold,
        args.analysis.idle,
        sinks,
        Some(sources),
    );
    if let Some((o, file)) = observer {
        pipeline = pipeline.with_observer(o, Some(file));
    }
    let limits = super::limits(
        &args.sampling,
        args.analysis.threshold,
        args.duration.map(Duration::from_secs_f64),
        stop,
    );
    let announce = super::announce(&target, kernel, rate);
    let mut announced = false;
    let mut noted: Option<String> = None;
    let mut spy = target
        .spy
        .take()
        .context("the target was already being sampled")?;
    let requests = !args.sampling.no_request;
    spy.set_read_requests(requests);
    let mut finder = WorkerFinder::new(target.pid).reading_requests(requests);
    let mut discover = |known: &[u32]| finder.discover(known);
    let discover: Option<&mut sampler::Discover> = if args.sampling.subprocesses {
        Some(&mut discover)
    } else {
        None
    };
    let result = sampler::run_tree(vec![Box::new(spy)], discover, &limits, &mut |s, stats| {
        // A fallback to the probe, or what the kernel clock gave up on: one line, once each.
        if stats.clock_note.is_some() && stats.clock_note != noted {
            noted.clone_from(&stats.clock_note);
            eprintln!("loopspy: note: {}", noted.as_deref().unwrap_or_default());
        }
        // Said once the first sample is in and its loops are traced, so scripts (and our
        // tests) can wait for it.
        if !announced {
            announced = true;
            crate::output::escape::print_err(&announce);
        }
        pipeline.on_sample(&s)
    });
    target.stop_child();
    let stats = result?;
    pipeline.finish(&header, &stats, &mut std::io::stderr())?;
    Ok(())
}
