//! Acquisition: finding or launching the target (`attach`), reading it into our own samples
//! (`spy`, the one boundary where raw reads become [`crate::sample::Sample`]s; `native` adds C
//! frames for `--native`), the timed sampling loop (`sampler`) and worker-process discovery
//! (`tree`).

pub mod attach;
pub mod kernel_clock;
#[cfg(feature = "native")]
pub mod native;
pub mod perf;
pub mod sampler;
pub mod spy;
pub mod tree;
