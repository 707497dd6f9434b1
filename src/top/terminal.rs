//! The thin terminal layer of `loopspy top`: a sampling thread sends samples over a channel;
//! this thread feeds the detector and the model, reads keys and redraws a few times a second.
//! The terminal is restored on every exit path (a guard's Drop, and ratatui's panic hook).
//! When stdout is not a terminal, a plain-text snapshot is printed at each refresh instead.
//!
//! Every way out is watched: `q`, Ctrl-C, SIGINT/SIGTERM/SIGHUP (the signal flag), and the
//! terminal going away (a hang-up, EOF or EIO on it, a write that fails; an ssh disconnect or
//! a killed tmux session): the view then restores what it can, stops the sampler, and stops
//! and reaps a target it launched. A closed pipe on stdout (`top | head`) ends it quietly.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::acquire::attach::{attach, launch};
use crate::acquire::sampler::{self, Limits, SamplerStats};
use crate::acquire::tree::WorkerFinder;
use crate::analysis::detector::{Detector, DetectorConfig};
use crate::cli::TopArgs;
use crate::os::source_files::SourceFiles;
use crate::sample::Sample;
use crate::top::keys::{Input, Key, Keys};
use crate::top::model::{TopModel, ViewKind};
use crate::top::render::{draw, to_text};
use crate::top::{feed_end, feed_sample};

/// How often the screen is redrawn.
const REFRESH: Duration = Duration::from_millis(250);
/// How often a plain-text snapshot is printed when stdout is not a terminal.
const PLAIN_REFRESH: Duration = Duration::from_secs(1);
const PLAIN_SIZE: (u16, u16) = (120, 30);

enum Msg {
    Sample(Sample, SamplerStats),
    End(std::result::Result<SamplerStats, String>),
}

/// The detector and the model, fed from the channel.
struct Feed {
    detector: Detector,
    model: TopModel,
    rx: Receiver<Msg>,
}

impl Feed {
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Sample(s, stats) => feed_sample(&mut self.detector, &mut self.model, &s, &stats),
            Msg::End(result) => {
                let why = match result {
                    Ok(stats) => stats.end,
                    Err(e) => format!("error: {e}"),
                };
                feed_end(&mut self.detector, &mut self.model, &why);
            }
        }
    }

    /// Handle whatever arrived, waiting at most `wait` for the first message. A sampler that
    /// went away without saying why (it panicked) ends sampling too, so no caller waits on a
    /// channel that can no longer deliver.
    fn drain(&mut self, wait: Duration) {
        match self.rx.recv_timeout(wait) {
            Ok(msg) => self.handle(msg),
            Err(RecvTimeoutError::Timeout) => return,
            Err(RecvTimeoutError::Disconnected) => {
                if self.model.ended.is_none() {
                    feed_end(&mut self.detector, &mut self.model, "the sampler stopped");
                }
                return;
            }
        }
        while let Ok(msg) = self.rx.try_recv() {
            self.handle(msg);
        }
    }
}

/// Restores the terminal when dropped, whatever path leaves the view. Errors are ignored: a
/// terminal that is gone cannot be restored, and saying so on it would fail too.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = ratatui::try_restore();
    }
}

pub fn run(args: &TopArgs) -> Result<()> {
    let stop = crate::os::signals::stop_flag();
    let interactive = std::io::stdout().is_terminal();
    // Refuse a clock that is not available before attaching (the sampler picks it again).
    args.sampling.resolve_clock()?;
    let mut target = match args.pid {
        Some(pid) => attach(pid)?,
        None => launch(&args.command, interactive)?,
    };
    let (tx, rx) = mpsc::channel();
    let mut spy = target
        .spy
        .take()
        .context("the target was already being sampled")?;
    let requests = !args.sampling.no_request;
    spy.set_read_requests(requests);
    let (rate, kernel_rate, clock, stack_rate, threshold) = (
        args.sampling.probe_rate(),
        args.sampling.kernel_rate(),
        args.sampling.clock,
        args.sampling.stack_rate,
        args.threshold / 1000.0,
    );
    let (root, subprocesses) = (target.pid, args.sampling.subprocesses);
    let sampler = std::thread::spawn(move || {
        let limits = Limits {
            rate,
            stack_rate,
            threshold,
            duration: None,
            stop,
            clock,
            kernel_rate,
        };
        let mut finder = WorkerFinder::new(root).reading_requests(requests);
        let mut discover = |known: &[u32]| finder.discover(known);
        let discover: Option<&mut sampler::Discover> = if subprocesses {
            Some(&mut discover)
        } else {
            None
        };
        let result = sampler::run_tree(vec![Box::new(spy)], discover, &limits, &mut |s, st| {
            tx.send(Msg::Sample(s, st.clone()))
                .map_err(|_| anyhow::anyhow!("view closed"))
        });
        let _ = tx.send(Msg::End(result.map_err(|e| format!("{e:#}"))));
    });
    let detector = Detector::new(DetectorConfig {
        threshold: args.threshold / 1000.0,
    })
    .with_sources(SourceFiles::for_pid(target.pid));
    let model = TopModel::new(
        target.pid,
        &target.command,
        &target.python_version,
        args.threshold,
    );
    let mut feed = Feed {
        detector,
        model,
        rx,
    };
    let result = if interactive {
        interactive_loop(&mut feed, stop)
    } else {
        plain_loop(&mut feed, stop)
    };
    crate::os::signals::request_stop();
    // The sampler ends within one nap of the stop; its sends to the dropped receiver fail.
    drop(feed);
    let _ = sampler.join();
    target.stop_child();
    result
}

/// What a key asks for.
enum Action {
    Quit,
    Redraw,
}

fn on_key(key: Key, feed: &mut Feed, frozen: &mut Option<TopModel>) -> Action {
    if matches!(key, Key::Char('q') | Key::CtrlC) {
        return Action::Quit;
    }
    for m in std::iter::once(&mut feed.model).chain(frozen.as_mut()) {
        match key {
            Key::Char('s') => m.cycle_sort(),
            Key::Up => m.select(-1),
            Key::Down => m.select(1),
            Key::Char('?') => m.help = !m.help,
            Key::Esc => m.help = false,
            _ => {}
        }
    }
    if key == Key::Char('p') {
        *frozen = match frozen {
            Some(_) => None,
            None => Some(feed.model.clone()),
        };
    }
    Action::Redraw
}

fn interactive_loop(feed: &mut Feed, stop: &AtomicBool) -> Result<()> {
    let mut keys = Keys::open();
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let _restore = Restore;
    let mut frozen: Option<TopModel> = None;
    let mut last_draw: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        feed.drain(Duration::from_millis(20));
        let input = match keys.as_mut() {
            Some(k) => k.wait(Duration::from_millis(20)),
            None => {
                std::thread::sleep(Duration::from_millis(20));
                Input::Idle
            }
        };
        match input {
            // The terminal is gone: nobody is watching, and nothing can be drawn. (ratatui's
            // Terminal would complain on stderr, itself that terminal, when dropped.)
            Input::Gone => {
                std::mem::forget(terminal);
                return Ok(());
            }
            Input::Idle => {}
            Input::Keys(pressed) => {
                for key in pressed {
                    if let Action::Quit = on_key(key, feed, &mut frozen) {
                        return Ok(());
                    }
                    last_draw = None;
                }
            }
        }
        if last_draw.is_none_or(|t| t.elapsed() >= REFRESH) {
            let shown = frozen.as_ref().unwrap_or(&feed.model);
            // A terminal that cannot be written to any more is gone too.
            if terminal.draw(|f| draw(f, shown, frozen.is_some())).is_err() {
                std::mem::forget(terminal);
                return Ok(());
            }
            last_draw = Some(Instant::now());
        }
    }
    Ok(())
}

fn plain_loop(feed: &mut Feed, stop: &AtomicBool) -> Result<()> {
    match write_snapshots(feed, stop) {
        // A closed pipe (`loopspy top | head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

fn write_snapshots(feed: &mut Feed, stop: &AtomicBool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    // `q` (then Enter) from a terminal on stdin; never from a pipe, which may be the target's.
    let mut keys = Keys::stdin();
    feed.model.view = ViewKind::Plain {
        reads_q: keys.is_some(),
    };
    let mut last = Instant::now();
    loop {
        feed.drain(Duration::from_millis(25));
        let mut quit = false;
        match keys.as_mut().map(|k| k.wait(Duration::from_millis(25))) {
            Some(Input::Keys(pressed)) => quit = pressed.contains(&Key::Char('q')),
            // Stdin closed (Ctrl-D): no more keys, but the snapshots go on.
            Some(Input::Gone) => keys = None,
            Some(Input::Idle) => {}
            None => std::thread::sleep(Duration::from_millis(25)),
        }
        let ended = feed.model.ended.is_some();
        let stopping = quit || stop.load(Ordering::Relaxed);
        if last.elapsed() >= PLAIN_REFRESH || ended || stopping {
            last = Instant::now();
            writeln!(
                out,
                "---- loopspy top: pid {} at +{:.1} s ----",
                feed.model.pid, feed.model.now
            )?;
            out.write_all(to_text(&feed.model, PLAIN_SIZE.0, PLAIN_SIZE.1, false).as_bytes())?;
            out.flush()?;
        }
        if ended || stopping {
            return Ok(());
        }
    }
}
