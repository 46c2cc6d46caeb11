//! fidelity: refused
//! POSIX record locks stay held by the process: a child's F_GETLK sees the
//! parent's write lock, with the parent's pid. om cannot keep them while
//! the process is away (its files are closed at home), so it refuses to
//! move a process that holds one.

fn lock(fd: i32, cmd: i32, kind: i32, start: i64, len: i64) -> (i64, libc::flock) {
    let mut fl: libc::flock = unsafe_zeroed();
    fl.l_type = kind as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fcntl reads and (F_GETLK) writes our flock.
    let r = unsafe { libc::fcntl(fd, cmd, &mut fl) };
    (om_fidelity::ret(r as i64), fl)
}

fn unsafe_zeroed() -> libc::flock {
    // SAFETY: flock is plain data.
    unsafe { std::mem::zeroed() }
}

fn main() {
    om_fidelity::case(
        || {
            let p = std::env::temp_dir().join(format!("om-fid-lock-{}", std::process::id()));
            let f =
                std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&p).expect("open");
            let _ = std::fs::remove_file(&p);
            use std::os::fd::IntoRawFd;
            let fd = f.into_raw_fd();
            let r = lock(fd, libc::F_SETLK, libc::F_WRLCK, 10, 20).0;
            (fd, r)
        },
        |(fd, r), seen| {
            seen.expect("setlk", r, 0);
            let me = std::process::id() as i32;
            // SAFETY: fork; the child only asks and exits.
            let child = unsafe { libc::fork() };
            if child == 0 {
                let (r, fl) = lock(fd, libc::F_GETLK, libc::F_RDLCK, 0, 0);
                let code = if r == 0 && fl.l_type == libc::F_WRLCK as i16 && fl.l_pid == me && fl.l_start == 10 {
                    0
                } else {
                    1
                };
                // SAFETY: leave the child at once.
                unsafe { libc::_exit(code) };
            }
            let mut st = 0;
            // SAFETY: wait for our child.
            unsafe { libc::waitpid(child, &mut st, 0) };
            seen.expect("child sees our lock", st, 0);
        },
    );
}
