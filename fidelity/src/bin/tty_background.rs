//! fidelity: terminal
//! A background process group (not orphaned: a member's parent is in
//! another group of the session) that uses its controlling terminal gets
//! job control as natively: a read gets SIGTTIN from the kernel (a handler
//! sees SI_KERNEL, the read fails with EINTR), an ignored or blocked SIGTTIN
//! makes it fail with EIO, a write with TOSTOP set gets SIGTTOU, an ignored
//! SIGTTOU lets it through, and with the default action the reader stops
//! until the foreground group hands it the terminal and continues it.

use std::sync::atomic::{AtomicI32, Ordering};

static SIG: AtomicI32 = AtomicI32::new(0);
static CODE: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: i32, si: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIG.store(sig, Ordering::SeqCst);
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    CODE.store(unsafe { (*si).si_code }, Ordering::SeqCst);
}

/// Set `sig`'s action: a handler without SA_RESTART, ignore, or default.
fn act(sig: i32, how: usize) {
    // SAFETY: installing an action of our own for one signal.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = how;
        if how != libc::SIG_IGN && how != libc::SIG_DFL {
            sa.sa_flags = libc::SA_SIGINFO;
        }
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

fn handler() -> usize {
    on_signal as *const () as usize
}

fn set_blocked(sig: i32, blocked: bool) {
    // SAFETY: a signal set of our own, passed to sigprocmask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        let how = if blocked { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

fn read_tty() -> i64 {
    let mut b = [0u8; 1];
    // SAFETY: a read of stdin (the terminal) into our buffer.
    om_fidelity::ret(unsafe { libc::read(0, b.as_mut_ptr().cast(), 1) } as i64)
}

fn write_tty() -> i64 {
    // SAFETY: a write of one byte of ours to stdin (the terminal).
    om_fidelity::ret(unsafe { libc::write(0, b".".as_ptr().cast(), 1) } as i64)
}

fn last_signal() -> (i32, i32) {
    (SIG.swap(0, Ordering::SeqCst), CODE.swap(0, Ordering::SeqCst))
}

/// The state of process `pid` (a letter of /proc/PID/stat).
fn state_of(pid: i32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()).unwrap_or('?')
}

struct Helpers {
    /// Its write end tells the foreground helper to watch for our stop.
    watch: i32,
    fg: i32,
    member: i32,
}

/// The foreground group's process: told to watch, it waits until `reader`
/// stops, gives it the terminal and continues it.
fn foreground(reader: i32, watch: i32) -> ! {
    let mut b = [0u8; 1];
    // SAFETY: a read of our pipe end; then terminal and signal calls with integer arguments.
    unsafe {
        libc::read(watch, b.as_mut_ptr().cast(), 1);
        for _ in 0..2000 {
            if matches!(state_of(reader), 'T' | 't') {
                libc::tcsetpgrp(0, reader);
                libc::kill(reader, libc::SIGCONT);
                break;
            }
            libc::usleep(5000);
        }
        libc::_exit(0)
    }
}

fn main() {
    om_fidelity::case(
        || {
            let me = std::process::id() as i32;
            let mut p = [0i32; 2];
            // SAFETY: a pipe and forks; each child makes only async-signal-safe
            // calls (setpgid, sigaction, prctl, pause, read, _exit) before it ends.
            unsafe {
                libc::pipe(p.as_mut_ptr());
                // TOSTOP, while we still hold the terminal.
                let mut t: libc::termios = std::mem::zeroed();
                libc::tcgetattr(0, &mut t);
                t.c_lflag |= libc::TOSTOP;
                libc::tcsetattr(0, libc::TCSANOW, &t);
                let fg = libc::fork();
                if fg == 0 {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    libc::setpgid(0, 0);
                    let member = libc::fork();
                    if member == 0 {
                        // In our group, with a parent in another group of the
                        // session: our group is not orphaned.
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        libc::signal(libc::SIGTTIN, libc::SIG_IGN);
                        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                        libc::setpgid(0, me);
                        loop {
                            libc::pause();
                        }
                    }
                    foreground(me, p[0]);
                }
                libc::setpgid(fg, fg);
                // Wait until the member has joined our group.
                let member = loop {
                    let members = std::fs::read_to_string(format!("/proc/{fg}/task/{fg}/children")).unwrap_or_default();
                    if let Some(m) = members.split_whitespace().next().and_then(|s| s.parse::<i32>().ok()) {
                        if libc::getpgid(m) == me {
                            break m;
                        }
                    }
                    libc::usleep(1000);
                };
                libc::tcsetpgrp(0, fg);
                Helpers { watch: p[1], fg, member }
            }
        },
        |h, seen| {
            // SAFETY: getpgrp and tcgetpgrp read our state.
            let fg = unsafe { libc::tcgetpgrp(0) };
            seen.expect("in the background", fg == h.fg, true);

            act(libc::SIGTTIN, handler());
            seen.expect("read with a SIGTTIN handler", read_tty(), -libc::EINTR as i64);
            seen.expect("its signal and si_code", last_signal(), (libc::SIGTTIN, libc::SI_KERNEL));
            act(libc::SIGTTIN, libc::SIG_IGN);
            seen.expect("read with SIGTTIN ignored", read_tty(), -libc::EIO as i64);
            act(libc::SIGTTIN, libc::SIG_DFL);
            set_blocked(libc::SIGTTIN, true);
            seen.expect("read with SIGTTIN blocked", read_tty(), -libc::EIO as i64);
            set_blocked(libc::SIGTTIN, false);

            act(libc::SIGTTOU, handler());
            seen.expect("write (TOSTOP) with a SIGTTOU handler", write_tty(), -libc::EINTR as i64);
            seen.expect("its signal and si_code", last_signal(), (libc::SIGTTOU, libc::SI_KERNEL));
            act(libc::SIGTTOU, libc::SIG_IGN);
            seen.expect("write (TOSTOP) with SIGTTOU ignored", write_tty(), 1);
            act(libc::SIGTTOU, libc::SIG_DFL);

            // The default action: we stop; the foreground helper gives us the
            // terminal and continues us; the read restarts in the foreground.
            // SAFETY: fcntl and a write on our own fds.
            unsafe {
                let fl = libc::fcntl(0, libc::F_GETFL);
                libc::fcntl(0, libc::F_SETFL, fl | libc::O_NONBLOCK);
                libc::write(h.watch, b"w".as_ptr().cast(), 1);
            }
            seen.expect("read after a stop, in the foreground", read_tty(), -libc::EAGAIN as i64);
            // SAFETY: as above.
            let (fg, me) = unsafe { (libc::tcgetpgrp(0), libc::getpgrp()) };
            seen.expect("holds the terminal", fg == me, true);
            // SAFETY: ending our helpers.
            unsafe {
                libc::kill(h.member, libc::SIGKILL);
                libc::kill(h.fg, libc::SIGKILL);
            }
        },
    );
}
