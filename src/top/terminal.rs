//! The thin terminal layer of `loopspy top`: a sampling thread sends samples over a channel;
//! this thread feeds the detector and the model, reads keys and redraws a few times a second.
//! The terminal is restored on every exit path (a guard's Drop, and ratatui's panic hook).
//! When stdout is not a terminal, a plain-text snapshot is printed at each refresh instead.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::acquire::attach::{attach, launch};
use crate::acquire::sampler::{self, Limits, SamplerStats};
use crate::acquire::tree::WorkerFinder;
use crate::analysis::detector::{Detector, DetectorConfig};
use crate::cli::TopArgs;
use crate::os::source_files::SourceFiles;
use crate::sample::Sample;
use crate::top::model::TopModel;
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

    /// Handle whatever arrived, waiting at most `wait` for the first message.
    fn drain(&mut self, wait: Duration) {
        match self.rx.recv_timeout(wait) {
            Ok(msg) => self.handle(msg),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(msg) = self.rx.try_recv() {
            self.handle(msg);
        }
    }
}

/// Restores the terminal when dropped, whatever path leaves the view.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

pub fn run(args: &TopArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let _ = ctrlc::set_handler(move || s.store(true, Ordering::SeqCst));
    let interactive = std::io::stdout().is_terminal();
    // Refuse a clock that is not available before attaching (the sampler picks it again).
    args.sampling.resolve_clock()?;
    let mut target = match args.pid {
        Some(pid) => attach(pid)?,
        None => launch(&args.command, interactive)?,
    };
    let (tx, rx) = mpsc::channel();
    let spy = target
        .spy
        .take()
        .context("the target was already being sampled")?;
    let (rate, kernel_rate, clock, stack_rate, threshold) = (
        args.sampling.probe_rate(),
        args.sampling.kernel_rate(),
        args.sampling.clock,
        args.sampling.stack_rate,
        args.threshold / 1000.0,
    );
    let (root, subprocesses) = (target.pid, args.sampling.subprocesses);
    let stop_sampler = stop.clone();
    let sampler = std::thread::spawn(move || {
        let limits = Limits {
            rate,
            stack_rate,
            threshold,
            duration: None,
            stop: &stop_sampler,
            clock,
            kernel_rate,
        };
        let mut finder = WorkerFinder::new(root);
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
        interactive_loop(&mut feed, &stop)
    } else {
        plain_loop(&mut feed, &stop)
    };
    stop.store(true, Ordering::SeqCst);
    // The sampler may be blocked sending to a view that stopped reading: drop the receiver.
    drop(feed);
    let _ = sampler.join();
    target.stop_child();
    result
}

fn interactive_loop(feed: &mut Feed, stop: &AtomicBool) -> Result<()> {
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let _restore = Restore;
    let mut frozen: Option<TopModel> = None;
    let mut last_draw: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        feed.drain(Duration::from_millis(20));
        if event::poll(Duration::from_millis(20))? {
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if k.code == KeyCode::Char('q') || ctrl_c {
                    break;
                }
                for m in std::iter::once(&mut feed.model).chain(frozen.as_mut()) {
                    match k.code {
                        KeyCode::Char('s') => m.cycle_sort(),
                        KeyCode::Up => m.select(-1),
                        KeyCode::Down => m.select(1),
                        KeyCode::Char('?') => m.help = !m.help,
                        KeyCode::Esc => m.help = false,
                        _ => {}
                    }
                }
                if k.code == KeyCode::Char('p') {
                    frozen = match frozen {
                        Some(_) => None,
                        None => Some(feed.model.clone()),
                    };
                }
                last_draw = None;
            }
        }
        if last_draw.is_none_or(|t| t.elapsed() >= REFRESH) {
            let shown = frozen.as_ref().unwrap_or(&feed.model);
            terminal.draw(|f| draw(f, shown, frozen.is_some()))?;
            last_draw = Some(Instant::now());
        }
    }
    Ok(())
}

fn plain_loop(feed: &mut Feed, stop: &AtomicBool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut last = Instant::now();
    loop {
        feed.drain(Duration::from_millis(50));
        let ended = feed.model.ended.is_some();
        let stopping = stop.load(Ordering::Relaxed);
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
