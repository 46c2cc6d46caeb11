//! A signal another process sends (here the harness, the case's parent,
//! with kill) arrives with that sender's pid and uid and SI_USER, away as at
//! home.

fn main() {
    om_fidelity::case_after(
        libc::SIGUSR2,
        || (),
        |_, info, seen| {
            // SAFETY: a kill() siginfo carries pid and uid; getppid and getuid read ours.
            let (pid, uid, parent) = unsafe { (info.si_pid(), info.si_uid(), libc::getppid()) };
            seen.expect("from our parent", pid == parent, true);
            seen.expect("sender's uid", uid, 0);
            seen.expect("si_code", info.si_code, libc::SI_USER);
        },
    );
}
