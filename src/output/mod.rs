//! Outputs, one module per format: the flame graph, the episodes log, the human summary; and the
//! atomic file writer they share so a file is written whole or not at all.

pub mod atomic;
pub mod episodes;
pub mod flamegraph;
pub mod speedscope;
pub mod summary;
