//! The operating system's view of the target's threads, from `/proc`. Linux only; the
//! architecture-specific syscall numbers are selected in one place, `syscalls`.

pub mod source_files;
pub mod syscalls;
pub mod thread_state;
