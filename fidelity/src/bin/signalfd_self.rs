//! A signal the process sends itself while it blocks it is read through
//! its signalfd, with its own pid as the sender.

fn main() {
    om_fidelity::case(
        || {
            // SAFETY: a signal set of our own, blocked, and a signalfd on it.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR1);
                libc::sigaddset(&mut set, libc::SIGRTMIN());
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
            }
        },
        |fd, seen| {
            let me = std::process::id() as i32;
            // SAFETY: signals to ourselves (blocked, so they stay pending).
            unsafe {
                libc::kill(me, libc::SIGUSR1);
                let v = libc::sigval { sival_ptr: 77 as *mut libc::c_void };
                libc::sigqueue(me, libc::SIGRTMIN(), v);
            }
            for _ in 0..2 {
                // SAFETY: plain data.
                let mut si: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
                // SAFETY: the kernel fills one siginfo record.
                let n = unsafe {
                    libc::read(fd, (&mut si as *mut libc::signalfd_siginfo).cast(), std::mem::size_of_val(&si))
                };
                seen.expect("read", om_fidelity::ret(n as i64), std::mem::size_of_val(&si) as i64);
                let signo = si.ssi_signo as i32;
                let name = if signo == libc::SIGUSR1 { "SIGUSR1" } else { "SIGRTMIN" };
                seen.expect(&format!("{name} from ourselves"), si.ssi_pid as i32 == me, true);
                seen.note(&format!("{name} code"), si.ssi_code);
                if signo != libc::SIGUSR1 {
                    seen.expect("SIGRTMIN value", si.ssi_ptr, 77);
                }
            }
        },
    );
}
