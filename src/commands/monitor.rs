//! `loopspy monitor`: always on. It attaches (or launches), samples until stopped (Ctrl-C,
//! SIGTERM, SIGHUP) or until the target exits, and keeps memory flat however long it runs:
//! - `/metrics`: Prometheus metrics (src/serve/metrics.rs), updated as samples come;
//! - `/debug/pprof/profile?seconds=N`: a pprof profile of the last N seconds (src/serve/);
//! - `--episodes FILE`: each episode as a JSON line, written as it ends (`-` for stdout, for
//!   log shipping).
//!
//! The sampler runs on this thread and feeds the shared pipeline (no flame graph, no
//! recording: only what stays bounded); the HTTP server and a slow poller of asyncio's task
//! counts run on their own threads.

use crate::output::escape::escape;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::acquire::attach::{attach, launch_with, ChildOutput, Target};
use crate::acquire::sampler::{self, SamplerStats};
use crate::acquire::tree::WorkerFinder;
use crate::analysis::detector::{Detector, ViewState};
use crate::cli::MonitorArgs;
use crate::episode::Episode;
use crate::os::signals;
use crate::os::source_files::SourceFiles;
use crate::output::episodes::EpisodeLog;
use crate::output::labeled::{Interner, LabeledStack, Labeler};
use crate::output::target::{Mode, OutputTarget};
use crate::pipeline::{Observer, Pipeline, Sinks};
use crate::recording::{Header, FORMAT_VERSION};
use crate::sample::Sample;
use crate::serve::metrics::{thread_name, LoopNow, Metrics};
use crate::serve::profile::{task_label, ProfileWindow};
use crate::serve::{self, Shared};

/// How often the loop gauges are refreshed from the detector (seconds of samples).
const GAUGE_EVERY: f64 = 0.1;
/// How often asyncio's task sets are counted (a full read of every task).
const TASKS_EVERY: Duration = Duration::from_secs(10);
/// How often series of gone processes are looked for, and unused stacks forgotten.
const HOUSEKEEPING_EVERY: f64 = 10.0;

/// Feeds the metrics and the profile window from the pipeline.
struct MonitorObserver {
    labeler: Labeler,
    shared: Shared,
    /// pid → monotonic time the gauges were last set.
    gauges_at: HashMap<u32, f64>,
    /// (pid, tid) → the loop's timers at its last full sample.
    timers: HashMap<(u32, u32), u64>,
    /// Processes with event loops, for the task poller.
    loop_pids: Arc<Mutex<BTreeSet<u32>>>,
    pids_seen: BTreeSet<u32>,
    housekeeping_at: f64,
    /// Label forms of thread names, shared between samples.
    names: Interner,
}

impl MonitorObserver {
    fn gauges(&mut self, sample: &Sample, detector: &Detector) {
        if !sample.probe {
            for t in sample.threads.iter().filter(|t| t.event_loop.is_some()) {
                match t.timers {
                    Some(n) => self.timers.insert((sample.pid, t.tid), n),
                    None => self.timers.remove(&(sample.pid, t.tid)),
                };
            }
        }
        let due = self
            .gauges_at
            .get(&sample.pid)
            .is_none_or(|at| sample.mono - at >= GAUGE_EVERY || sample.mono < *at);
        if !due {
            return;
        }
        self.gauges_at.insert(sample.pid, sample.mono);
        let threshold = detector.threshold();
        let loops: Vec<(Option<String>, LoopNow)> = detector
            .loops(sample.mono)
            .into_iter()
            .filter(|v| v.pid == sample.pid)
            .map(|v| {
                let blocked_seconds = match v.state {
                    ViewState::Running { secs, .. } if secs >= threshold => secs,
                    _ => 0.0,
                };
                let now = LoopNow {
                    blocked_seconds,
                    ready_handles: v.ready_len.map(|n| n as f64),
                    scheduled_timers: self.timers.get(&(v.pid, v.tid)).map(|n| *n as f64),
                };
                (v.thread, now)
            })
            .collect();
        if !loops.is_empty() {
            self.loop_pids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(sample.pid);
        }
        self.shared.metrics.set_loops(sample.pid, &loops);
    }
}

impl Observer for MonitorObserver {
    fn on_sample(&mut self, sample: &Sample, detector: &Detector) {
        {
            let mut window = self.shared.window.lock().unwrap_or_else(|e| e.into_inner());
            let names = &mut self.names;
            self.labeler
                .on_sample(sample, detector, &mut |s| push(&mut window, names, s));
        }
        self.gauges(sample, detector);
        self.pids_seen.insert(sample.pid);
        if sample.mono - self.housekeeping_at >= HOUSEKEEPING_EVERY {
            self.housekeeping_at = sample.mono;
            let alive: Vec<u32> = std::mem::take(&mut self.pids_seen).into_iter().collect();
            self.shared.metrics.forget_gone(&alive);
            self.loop_pids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|p| alive.contains(p));
            self.gauges_at.retain(|p, _| alive.contains(p));
            self.timers.retain(|(p, _), _| alive.contains(p));
            self.labeler.interner.prune();
            self.names.prune();
        }
    }

    fn on_episode(&mut self, episode: &Episode) {
        self.shared.metrics.on_episode(episode);
        let mut window = self.shared.window.lock().unwrap_or_else(|e| e.into_inner());
        let names = &mut self.names;
        self.labeler
            .on_episode(episode, &mut |s| push(&mut window, names, s));
        window.on_episode(episode);
    }

    fn finish(
        &mut self,
        _header: &Header,
        _stats: &SamplerStats,
        _out: Option<&mut dyn Write>,
    ) -> Result<()> {
        let mut window = self.shared.window.lock().unwrap_or_else(|e| e.into_inner());
        let names = &mut self.names;
        self.labeler.finish(&mut |s| push(&mut window, names, s));
        Ok(())
    }

    fn what(&self) -> &'static str {
        "live profile"
    }
}

/// Into the profile window, with thread names as the metrics label them (`Thread-N`) and
/// default task names without their counter (`Task-N`), so the series Pyroscope makes of the
/// labels stay bounded too.
fn push(window: &mut ProfileWindow, names: &mut Interner, mut s: LabeledStack) {
    s.thread = Some(names.name(&thread_name(s.thread.as_deref())));
    s.task = s.task.map(|t| names.name(&task_label(&t)));
    window.push(s);
}

/// Count each loop's pending tasks every `TASKS_EVERY`, with a reader of its own per process.
fn poll_tasks(metrics: Arc<Metrics>, pids: Arc<Mutex<BTreeSet<u32>>>, stop: &AtomicBool) {
    let mut readers: HashMap<u32, Target> = HashMap::new();
    let mut next = Instant::now() + Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next = Instant::now() + TASKS_EVERY;
        let wanted: BTreeSet<u32> = pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        readers.retain(|pid, _| wanted.contains(pid));
        for pid in wanted {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let target = match readers.entry(pid) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => match attach(pid) {
                    Ok(t) => e.insert(t),
                    Err(_) => continue,
                },
            };
            // Only the task counts: no request is read.
            let opts = crate::dump::Options {
                all_tasks: false,
                requests: false,
            };
            match crate::dump::build(target, &opts) {
                Ok(dump) => {
                    let counts: Vec<(Option<String>, u64)> = dump
                        .loops
                        .iter()
                        .filter_map(|l| Some((l.thread.clone(), l.tasks?)))
                        .collect();
                    metrics.set_tasks(pid, &counts);
                }
                Err(_) => {
                    // Read again with a fresh reader next time (the process may be gone).
                    readers.remove(&pid);
                }
            }
        }
    }
}

pub fn run(args: &MonitorArgs) -> Result<()> {
    let stop = signals::stop_flag();
    let listener = serve::bind(args.listen)?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    // Opened before attaching, so a bad path costs nothing; written in place, a line per
    // episode as it ends (`-`: stdout, for log shipping).
    let log = match &args.episodes {
        Some(p) => Some(OutputTarget::resolve(p)?.open(Mode::Stream)?),
        None => None,
    };
    let log_on_stdout = log.as_ref().is_some_and(|l| l.is_stdout());
    let episodes = log.map(EpisodeLog::new);
    let (kernel, rate) = args.sampling.resolve_clock()?;
    let mut target: Target = match args.pid {
        Some(pid) => attach(pid)?,
        None => {
            let output = match log_on_stdout {
                true => ChildOutput::StdoutToStderr,
                false => ChildOutput::Inherit,
            };
            launch_with(&args.command, output)?
        }
    };
    if let Some(n) = &target.notice {
        let _ = writeln!(std::io::stderr(), "loopspy: note: {}", escape(n));
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
    let shared = Shared {
        metrics: Arc::new(Metrics::new()),
        window: Arc::new(Mutex::new(ProfileWindow::new())),
    };
    let loop_pids = Arc::new(Mutex::new(BTreeSet::new()));
    let server = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("loopspy-http".into())
            .spawn(move || {
                if let Err(e) = serve::run(listener, shared, stop) {
                    let _ = writeln!(std::io::stderr(), "loopspy: error: {e:#}");
                }
            })
            .context("cannot start the HTTP thread")?
    };
    let poller = {
        let (metrics, pids) = (shared.metrics.clone(), loop_pids.clone());
        std::thread::Builder::new()
            .name("loopspy-tasks".into())
            .spawn(move || poll_tasks(metrics, pids, stop))
            .context("cannot start the task poller")?
    };
    let _ = writeln!(
        std::io::stderr(),
        "loopspy: serving http://{addr}/metrics and http://{addr}/debug/pprof/profile?seconds=N"
    );
    let sinks = Sinks {
        flamegraph: None,
        speedscope: false,
        raw: None,
        episodes,
        live_hangs: true,
        by_task: false,
    };
    let observer = MonitorObserver {
        labeler: Labeler::new(false, false, true),
        shared: shared.clone(),
        gauges_at: HashMap::new(),
        timers: HashMap::new(),
        loop_pids,
        pids_seen: BTreeSet::new(),
        housekeeping_at: 0.0,
        names: Interner::default(),
    };
    let mut pipeline = Pipeline::new(
        args.threshold,
        false,
        sinks,
        Some(SourceFiles::for_pid(target.pid)),
    )
    .with_observer(Box::new(observer), None);
    let limits = super::limits(&args.sampling, args.threshold, None, stop);
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
    let metrics = shared.metrics.clone();
    let result = sampler::run_tree(vec![Box::new(spy)], discover, &limits, &mut |s, stats| {
        // A fallback to the probe, or what the kernel clock gave up on: one line, once each.
        if stats.clock_note.is_some() && stats.clock_note != noted {
            noted.clone_from(&stats.clock_note);
            let _ = writeln!(
                std::io::stderr(),
                "loopspy: note: {}",
                noted.as_deref().unwrap_or_default()
            );
        }
        if !announced {
            announced = true;
            let _ = writeln!(std::io::stderr(), "{announce}");
        }
        metrics.on_stats(stats);
        pipeline.on_sample(&s)
    });
    stop.store(true, Ordering::SeqCst);
    target.stop_child();
    let _ = server.join();
    let _ = poller.join();
    let stats = result?;
    pipeline.finish(&header, &stats, &mut std::io::stderr())?;
    Ok(())
}
