//! fidelity: hangup
//! When its controlling terminal hangs up (the terminal's master side
//! closes), the session leader gets SIGHUP from the kernel, and the
//! terminal then reads as hung up. The siginfo says the kernel sent it
//! (SI_KERNEL, pid 0).

fn main() {
    om_fidelity::case_after(
        libc::SIGHUP,
        || (),
        |_, info, seen| {
            seen.expect("SIGHUP", info.si_signo, libc::SIGHUP);
            seen.note("si_code", info.si_code);
            // SAFETY: a kernel-sent siginfo carries a pid field (0).
            seen.note("from pid", unsafe { info.si_pid() });
            let mut b = [0u8; 8];
            // SAFETY: a read of stdin (the hung-up terminal) into our buffer.
            let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), b.len()) };
            seen.note("read of the terminal", om_fidelity::ret(n as i64));
        },
    );
}
