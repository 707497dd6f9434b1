//! Acquisition: finding or launching the target (`attach`), reading it into our own samples
//! (`spy`, the one boundary where raw reads become [`crate::sample::Sample`]s; `native` adds C
//! frames for `--native`), the timed sampling loop (`sampler`), which hands samples to the
//! outputs on another thread (`handoff`), and worker-process discovery (`tree`).

pub mod attach;
mod handoff;
pub mod kernel_clock;
#[cfg(feature = "native")]
pub mod native;
pub mod perf;
pub mod sampler;
pub mod spy;
pub mod tree;
