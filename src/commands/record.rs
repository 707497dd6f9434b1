//! `loopspy record`: open the outputs, attach or launch, sample until the duration, Ctrl-C or
//! the target's exit, and write everything through the shared pipeline.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::acquire::attach::{attach, launch, Target};
use crate::acquire::sampler::{self, Limits};
use crate::acquire::tree::WorkerFinder;
use crate::cli::{Format, RecordArgs};
use crate::error::UserError;
use crate::os::source_files::SourceFiles;
use crate::output::atomic::AtomicFile;
use crate::output::episodes::{EpisodeLog, LogTarget};
use crate::pipeline::{Pipeline, Sinks};
use crate::recording::{Header, RecordingWriter, FORMAT_VERSION};

/// Set by Ctrl-C (SIGINT/SIGTERM); the sampler checks it every tick.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    // Installing twice (tests calling `run` repeatedly) is harmless: the first handler stays.
    let _ = ctrlc::set_handler(move || s.store(true, Ordering::SeqCst));
    Ok(stop)
}

/// Fail early, before attaching, when the episodes file cannot be created.
fn check_writable(path: &str) -> Result<()> {
    let p = Path::new(path);
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let probe = tempfile::Builder::new()
        .prefix(".loopspy-probe")
        .tempfile_in(dir);
    probe.map(drop).map_err(|e| {
        UserError::Output {
            path: path.into(),
            reason: e.to_string(),
        }
        .into()
    })
}

fn open_episodes(path: &str) -> Result<EpisodeLog> {
    if path == "-" {
        return Ok(EpisodeLog::new(LogTarget::Stdout));
    }
    let f = File::create(path).map_err(|e| UserError::Output {
        path: path.into(),
        reason: e.to_string(),
    })?;
    Ok(EpisodeLog::new(LogTarget::File(BufWriter::new(f))))
}

pub fn run(args: &RecordArgs) -> Result<()> {
    let stop = stop_flag()?;
    let out_path = args.output_path(args.pid);
    // The main output's temporary file exists from the start, so a bad path fails now.
    let out_file = AtomicFile::create(&out_path)?;
    if let Some(p) = &args.analysis.episodes {
        if p != "-" {
            check_writable(p)?;
        }
    }
    let mut target: Target = match args.pid {
        Some(pid) => attach(pid)?,
        None => launch(&args.command, false)?,
    };
    // With a launched target the default file name can now carry its pid.
    let out_file = if args.output.is_none() && args.pid.is_none() {
        drop(out_file);
        AtomicFile::create(&args.output_path(Some(target.pid)))?
    } else {
        out_file
    };
    if let Some(n) = &target.notice {
        eprintln!("loopspy: note: {n}");
    }
    let header = Header {
        loopspy_recording: FORMAT_VERSION,
        pid: target.pid,
        command: target.command.clone(),
        python_version: target.python_version.clone(),
        rate: args.sampling.rate,
        start_wall: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        note: None,
    };
    let (flamegraph, raw) = match args.format {
        Format::Flamegraph | Format::Speedscope => (Some(out_file), None),
        Format::Raw => (None, Some(RecordingWriter::new(out_file, &header)?)),
    };
    let episodes = match &args.analysis.episodes {
        Some(p) => Some((open_episodes(p)?, p.clone())),
        None => None,
    };
    let sinks = Sinks {
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
    )
    .with_tick_rate(args.sampling.rate);
    let limits = Limits {
        rate: args.sampling.rate,
        stack_rate: args.sampling.stack_rate,
        threshold: args.analysis.threshold / 1000.0,
        duration: args.duration.map(Duration::from_secs_f64),
        stop: &stop,
    };
    let announce = format!(
        "loopspy: sampling process {} (Python {}) at {} Hz; Ctrl-C to stop",
        target.pid, target.python_version, args.sampling.rate
    );
    let mut announced = false;
    let spy = target
        .spy
        .take()
        .context("the target was already being sampled")?;
    let mut finder = WorkerFinder::new(target.pid);
    let mut discover = |known: &[u32]| finder.discover(known);
    let discover: Option<&mut sampler::Discover> = if args.sampling.subprocesses {
        Some(&mut discover)
    } else {
        None
    };
    let result = sampler::run_tree(vec![Box::new(spy)], discover, &limits, &mut |s, _| {
        // Said once the first sample is in, so scripts (and our tests) can wait for it.
        if !announced {
            announced = true;
            eprintln!("{announce}");
        }
        pipeline.on_sample(&s)
    });
    target.stop_child();
    let stats = result?;
    let mut stderr = std::io::stderr();
    pipeline.finish(&header, &stats, &mut stderr)?;
    stderr.flush()?;
    Ok(())
}
