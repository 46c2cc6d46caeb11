//! fidelity: terminal
//! The controlling terminal answers through /dev/tty: it opens, is a
//! terminal, and its foreground process group is the process's own.

fn main() {
    om_fidelity::case(
        || (),
        |_, seen| {
            // SAFETY: opening a path of our own choosing.
            let fd = unsafe { libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
            seen.expect("open /dev/tty", if fd < 0 { -om_fidelity::errno() } else { 0 }, 0);
            if fd >= 0 {
                // SAFETY: plain queries on our own fd.
                unsafe {
                    seen.expect("isatty", libc::isatty(fd), 1);
                    seen.expect("foreground group is ours", libc::tcgetpgrp(fd) == libc::getpgrp(), true);
                    seen.expect("session is ours", libc::tcgetsid(fd) == libc::getsid(0), true);
                    libc::close(fd);
                }
            }
            // SAFETY: a plain query on stdin.
            seen.expect("stdin is the terminal", unsafe { libc::isatty(0) }, 1);
        },
    );
}
