//! System-call numbers of the syscalls that tell what a thread waits for, per architecture.
//! Recordings store names, never numbers, so they read the same on any machine.

#[cfg(target_arch = "x86_64")]
const TABLE: &[(i64, &str)] = &[
    (0, "read"),
    (1, "write"),
    (7, "poll"),
    (17, "pread64"),
    (18, "pwrite64"),
    (19, "readv"),
    (20, "writev"),
    (23, "select"),
    (35, "nanosleep"),
    (40, "sendfile"),
    (42, "connect"),
    (43, "accept"),
    (44, "sendto"),
    (45, "recvfrom"),
    (46, "sendmsg"),
    (47, "recvmsg"),
    (61, "wait4"),
    (73, "flock"),
    (74, "fsync"),
    (75, "fdatasync"),
    (77, "ftruncate"),
    (202, "futex"),
    (230, "clock_nanosleep"),
    (232, "epoll_wait"),
    (247, "waitid"),
    (257, "openat"),
    (270, "pselect6"),
    (271, "ppoll"),
    (277, "sync_file_range"),
    (281, "epoll_pwait"),
    (285, "fallocate"),
    (288, "accept4"),
    (299, "recvmmsg"),
    (307, "sendmmsg"),
    (441, "epoll_pwait2"),
];

#[cfg(target_arch = "aarch64")]
const TABLE: &[(i64, &str)] = &[
    (22, "epoll_pwait"),
    (32, "flock"),
    (46, "ftruncate"),
    (47, "fallocate"),
    (56, "openat"),
    (63, "read"),
    (64, "write"),
    (65, "readv"),
    (66, "writev"),
    (67, "pread64"),
    (68, "pwrite64"),
    (71, "sendfile"),
    (72, "pselect6"),
    (73, "ppoll"),
    (82, "fsync"),
    (83, "fdatasync"),
    (84, "sync_file_range"),
    (95, "waitid"),
    (98, "futex"),
    (101, "nanosleep"),
    (115, "clock_nanosleep"),
    (202, "accept"),
    (203, "connect"),
    (206, "sendto"),
    (207, "recvfrom"),
    (211, "sendmsg"),
    (212, "recvmsg"),
    (242, "accept4"),
    (243, "recvmmsg"),
    (260, "wait4"),
    (269, "sendmmsg"),
    (441, "epoll_pwait2"),
];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const TABLE: &[(i64, &str)] = &[];

/// The name of syscall `nr` on this architecture, or `syscall_<nr>` when it is not one we use.
pub fn name(nr: i64) -> String {
    match TABLE.iter().find(|(n, _)| *n == nr) {
        Some((_, name)) => (*name).to_string(),
        None => format!("syscall_{nr}"),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_64_names() {
        assert_eq!(super::name(232), "epoll_wait");
        assert_eq!(super::name(230), "clock_nanosleep");
        assert_eq!(super::name(9999), "syscall_9999");
    }
}
