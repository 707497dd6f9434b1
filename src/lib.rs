//! loopspy: find what blocks a live asyncio event loop.
//!
//! Pipeline: `acquire` (`attach` → `sampler`, a timed loop over `spy`, the boundary producing our
//! own `sample::Sample`s) → `analysis` (pure: loop state, episode detector, culprit, classification)
//! → `output` sinks, all joined by `pipeline`. A raw `recording` replays through the same path.

pub mod acquire;
pub mod analysis;
pub mod cli;
pub mod commands;
pub mod dump;
pub mod episode;
pub mod error;
pub mod os;
pub mod output;
pub mod pipeline;
pub mod recording;
pub mod remote;
pub mod sample;
pub mod serve;
pub mod top;
