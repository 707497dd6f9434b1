//! The hand-off from the tick loop to the outputs.
//!
//! The tick loop runs on a thread of its own and never waits on an output. Each sample, with the
//! stats as of its tick, and each line meant for stderr go into a bounded queue in tick order;
//! the caller's thread takes them out and feeds the sink (detector, files, terminal, metrics).
//!
//! Before, the sink ran on the tick thread, so anything that held up a write held up the ticks:
//! with `record --format raw -o /dev/stdout | (sleep 2; cat)` the sampler stalled 1.56 s, found
//! 5 of 10 blocks of 100 ms and merged several into one of 845 ms. A disk write that waits on
//! the journal, or a terminal that stops reading stderr, did the same on a smaller scale.

use std::sync::mpsc::{self, SyncSender};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::sampler::SamplerStats;
use crate::sample::Sample;

/// Samples and lines the queue holds before the tick loop waits for the outputs: about 4 s of
/// probe ticks at 1 kHz. A reader that falls further behind than this slows the ticks, which
/// then count as late (and widen the episodes' error bars) instead of growing memory for ever.
const QUEUE: usize = 4096;

/// After feeding the sink, the outputs' thread lets the next samples gather this long, so it
/// wakes about twice per `GATHER` instead of once per tick (at 1 kHz a wake-up per tick costs
/// about as much CPU as the ticks' own timer). Lines on stderr come at most this much later.
const GATHER: Duration = Duration::from_millis(50);

enum Msg {
    Sample(Sample, SamplerStats),
    Line(String),
}

/// The tick loop's end of the queue.
pub(super) struct Outbox(SyncSender<Msg>);

impl Outbox {
    /// Hand on `sample` with the stats as of its tick. Errors once the outputs have stopped (the
    /// sink failed), so the tick loop ends.
    pub(super) fn sample(&self, sample: Sample, stats: &SamplerStats) -> Result<()> {
        self.send(Msg::Sample(sample, stats.clone()))
    }

    /// Print `line` on stderr in its place among the samples (after the sink has seen every
    /// sample handed on before it). Errors as [`Outbox::sample`].
    pub(super) fn line(&self, line: String) -> Result<()> {
        self.send(Msg::Line(line))
    }

    fn send(&self, msg: Msg) -> Result<()> {
        self.0.send(msg).map_err(|_| anyhow!("the outputs stopped"))
    }
}

/// Run `ticks` on a thread named `loopspy-sampler` while this thread feeds what it hands on to
/// `sink`, in order, in batches (see `GATHER`). Returns what `ticks` returned, or the sink's first error: the queue then
/// closes, and the tick loop ends at its next hand-off. A panic in `ticks` resumes here.
pub(super) fn run_beside<'env>(
    ticks: impl FnOnce(&Outbox) -> Result<SamplerStats> + Send + 'env,
    sink: &mut dyn FnMut(Sample, &SamplerStats) -> Result<()>,
) -> Result<SamplerStats> {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    std::thread::scope(|scope| {
        let sampler = std::thread::Builder::new()
            .name("loopspy-sampler".into())
            .spawn_scoped(scope, move || ticks(&Outbox(tx)))
            .context("could not start the sampler thread")?;
        let mut failed = None;
        'feed: while let Ok(first) = rx.recv() {
            for msg in std::iter::once(first).chain(rx.try_iter()) {
                match msg {
                    Msg::Sample(sample, stats) => {
                        if let Err(e) = sink(sample, &stats) {
                            failed = Some(e);
                            break 'feed;
                        }
                    }
                    Msg::Line(line) => crate::output::escape::print_err(&line),
                }
            }
            std::thread::sleep(GATHER);
        }
        drop(rx);
        let result = sampler
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match failed {
            Some(e) => Err(e),
            None => result,
        }
    })
}
