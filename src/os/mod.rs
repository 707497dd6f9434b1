//! The operating system's view of the target's threads, from `/proc`, and loopspy's own
//! signals. Linux only; the architecture-specific syscall numbers are selected in one place,
//! `syscalls`; `fd` tells what a blocked syscall waits on.

pub mod fd;
pub mod net;
pub mod process;
pub mod safe_read;
pub mod signals;
pub mod source_files;
pub mod syscalls;
pub mod thread_state;
