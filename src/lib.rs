//! loopspy: find what blocks a live asyncio event loop.
//!
//! Pipeline: `attach` → `sampler` (timed loop over `spy`, the py-spy boundary, producing our own
//! `sample::Sample`s) → `analysis` (pure: loop state, episode detector, culprit, classification)
//! → `output` sinks, all joined by `pipeline`. A raw `recording` replays through the same path.

pub mod analysis;
pub mod attach;
pub mod cli;
pub mod dump;
pub mod episode;
pub mod error;
pub mod os;
pub mod output;
pub mod pipeline;
pub mod record;
pub mod recording;
pub mod remote;
pub mod report;
pub mod sample;
pub mod sampler;
pub mod spy;
pub mod top;
pub mod tree;
