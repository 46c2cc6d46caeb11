//! Scheduling and execution attributes read back as set: nice value,
//! personality flags, I/O priority and the CPU affinity mask size.

fn main() {
    om_fidelity::case(
        || {
            // SAFETY: plain settings of our own process.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 7);
                libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
                // IOPRIO_CLASS_BE (2) << 13 | level 5, for ourselves (IOPRIO_WHO_PROCESS 1, pid 0).
                libc::syscall(libc::SYS_ioprio_set, 1, 0, (2 << 13) | 5);
            }
        },
        |_, seen| {
            // SAFETY: plain queries of our own process.
            unsafe {
                *libc::__errno_location() = 0;
                seen.expect("nice", libc::getpriority(libc::PRIO_PROCESS, 0), 7);
                seen.expect(
                    "personality has ADDR_NO_RANDOMIZE",
                    libc::personality(0xffff_ffff) & libc::ADDR_NO_RANDOMIZE,
                    libc::ADDR_NO_RANDOMIZE,
                );
                seen.expect("ioprio", libc::syscall(libc::SYS_ioprio_get, 1, 0), (2 << 13) | 5);
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                let r = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
                seen.expect("sched_getaffinity", r, 0);
                seen.note("sched policy", libc::sched_getscheduler(0));
            }
        },
    );
}
