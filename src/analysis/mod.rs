//! Pure analysis of samples: which threads run an event loop and what each is doing
//! (`loop_state`), blocking episodes (`detector`, its runs in `run`), whom to blame (`culprit`),
//! why (`classify`, `driver`, from the samples' `evidence`), what to do (`advice`), all put
//! together for one episode by `blame`; `weights` weighs an episode's stacks by its own time.

pub mod advice;
pub mod blame;
pub mod classify;
pub mod culprit;
pub mod detector;
pub mod driver;
pub mod evidence;
pub mod loop_state;
pub mod run;
pub mod weights;

#[cfg(test)]
mod classify_tests;
#[cfg(test)]
mod detector_kernel_tests;
#[cfg(test)]
mod detector_task_tests;
#[cfg(test)]
mod detector_tests;
#[cfg(test)]
mod detector_timing_tests;
#[cfg(test)]
mod fuzz_tests;
