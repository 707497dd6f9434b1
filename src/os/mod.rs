//! The operating system's view of the target's threads, from `/proc`, and loopspy's own
//! signals. Linux only; the architecture-specific syscall numbers are selected in one place,
//! `syscalls`.

pub mod signals;
pub mod source_files;
pub mod syscalls;
pub mod thread_state;
