//! Signals queued while blocked keep everything across a move: each queued
//! instance of a real-time signal with its own value, in order, and the
//! sender and code of a standard one.

fn main() {
    om_fidelity::case(
        || {
            let me = std::process::id() as i32;
            // SAFETY: blocking signals of our own and queueing them to ourselves.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGRTMIN() + 1);
                libc::sigaddset(&mut set, libc::SIGWINCH);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                for v in [11usize, 22, 33] {
                    libc::sigqueue(me, libc::SIGRTMIN() + 1, libc::sigval { sival_ptr: v as *mut libc::c_void });
                }
                libc::kill(me, libc::SIGWINCH);
                set
            }
        },
        |set, seen| {
            let me = std::process::id() as i32;
            // One more than was queued: each arrives once.
            for _ in 0..5 {
                // SAFETY: plain data, then sigtimedwait fills it.
                let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
                let ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: waits on our own set with a zero timeout.
                let sig = unsafe { libc::sigtimedwait(&set, &mut si, &ts) };
                if sig < 0 {
                    seen.note("next", "none");
                } else if sig == libc::SIGWINCH {
                    // SAFETY: a kill() siginfo carries pid and uid.
                    let from = unsafe { si.si_pid() };
                    seen.expect("SIGWINCH from ourselves", from == me, true);
                    seen.expect("SIGWINCH code", si.si_code, libc::SI_USER);
                } else {
                    // SAFETY: a sigqueue siginfo carries a value.
                    let v = unsafe { si.si_value().sival_ptr } as usize;
                    seen.note("next", format!("signal {} value {v} code {}", sig - libc::SIGRTMIN(), si.si_code));
                }
            }
        },
    );
}
