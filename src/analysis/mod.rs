//! Pure analysis of samples: which threads run an event loop and what each is doing
//! (`loop_state`), blocking episodes (`detector`), whom to blame (`culprit`) and why
//! (`classify`).

pub mod classify;
pub mod culprit;
pub mod detector;
pub mod loop_state;
pub mod run;

#[cfg(test)]
mod detector_kernel_tests;
#[cfg(test)]
mod detector_task_tests;
#[cfg(test)]
mod detector_tests;
#[cfg(test)]
mod fuzz_tests;
