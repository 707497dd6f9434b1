//! loopspy's integration tests: one binary. `live` attaches to real Python processes it spawns;
//! `offline` replays recorded samples through the detector and renderers against golden files;
//! `cli` checks bad input and exit codes; `outputs` how and where output files are written.

mod causes;
mod causes_advice;
mod cli;
mod container;
mod diff;
mod dump;
mod dump_scale;
mod formats;
mod hostile;
mod kernel;
mod live;
mod monitor;
mod offline;
mod offline_timing;
mod outputs;
mod reader;
mod servers;
mod support;
mod timing;
mod top;
mod workers;
