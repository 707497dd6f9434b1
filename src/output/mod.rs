//! Outputs, one module per format: the flame graph, the episodes log, the human summary; and
//! `target`, which decides where loopspy may write and how (whole files, devices, pipes,
//! stdout), shared by every command.

pub mod episodes;
pub mod flamegraph;
pub mod speedscope;
pub mod summary;
pub mod target;
