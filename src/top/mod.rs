//! `loopspy top`: a live view of event-loop health. `model` is the state, updated from samples
//! and episodes; `render` draws it (pure, golden-tested at fixed sizes); `terminal` is the thin
//! I/O layer (raw mode, keys, refresh, and a plain-text mode when stdout is not a terminal).

pub mod keys;
pub mod model;
pub mod render;
pub mod terminal;

use crate::acquire::sampler::SamplerStats;
use crate::analysis::detector::{Detector, Event};
use crate::sample::Sample;

/// Feed one sample to the detector and the model: the one path shared by the live view and
/// the replayed recordings of the golden tests.
pub fn feed_sample(
    detector: &mut Detector,
    model: &mut model::TopModel,
    s: &Sample,
    stats: &SamplerStats,
) {
    for ev in detector.feed(s) {
        if let Event::Episode { episode, .. } = ev {
            model.on_episode(&episode);
        }
    }
    model.on_sample(s.pid, s.mono, s.wall, detector.loops(s.mono), stats);
}

/// Sampling ended (`why`): close open episodes and say so.
pub fn feed_end(detector: &mut Detector, model: &mut model::TopModel, why: &str) {
    for ev in detector.finish() {
        if let Event::Episode { episode, .. } = ev {
            model.on_episode(&episode);
        }
    }
    model.on_end(why);
}
