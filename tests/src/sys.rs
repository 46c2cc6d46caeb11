//! Raw probes for the benchmark baselines: a minimal seccomp user-notification
//! round trip, measured the way KERNEL-NOTES.md did.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

fn cvt(r: libc::c_long) -> std::io::Result<libc::c_long> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A forked child traps getppid with SECCOMP_RET_USER_NOTIF; this process
/// answers with a supervisor loop (SYNC_WAKE_UP set). Returns us per call.
pub fn notify_roundtrip_us(n: u64, sync_wakeup: bool) -> std::io::Result<f64> {
    let mut to_parent = [0i32; 2];
    let mut to_child = [0i32; 2];
    // SAFETY: arrays of two ints for pipe2.
    cvt(unsafe { libc::pipe2(to_parent.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: as above.
    cvt(unsafe { libc::pipe2(to_child.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: the child only makes raw syscalls and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // Child: BPF: load nr; if getppid -> USER_NOTIF; else ALLOW.
        let filter = [
            libc::sock_filter { code: 0x20, jt: 0, jf: 0, k: 0 },
            libc::sock_filter { code: 0x15, jt: 0, jf: 1, k: libc::SYS_getppid as u32 },
            libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0x7fc0_0000 },
            libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0x7fff_0000 },
        ];
        let prog = libc::sock_fprog { len: 4, filter: filter.as_ptr() as *mut _ };
        // SAFETY: raw syscalls in the child with live arguments; errors end the child.
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let fd = libc::syscall(libc::SYS_seccomp, 1, 8, &prog as *const libc::sock_fprog);
            let b = (fd as i32).to_le_bytes();
            libc::write(to_parent[1], b.as_ptr().cast(), 4);
            let mut go = [0u8; 1];
            libc::read(to_child[0], go.as_mut_ptr().cast(), 1);
            let t = Instant::now();
            for _ in 0..n {
                libc::syscall(libc::SYS_getppid);
            }
            let ns = (t.elapsed().as_nanos() as u64).to_le_bytes();
            libc::write(to_parent[1], ns.as_ptr().cast(), 8);
            libc::_exit(0);
        }
    }
    let mut b = [0u8; 4];
    // SAFETY: reading 4 bytes into a live buffer.
    unsafe { libc::read(to_parent[0], b.as_mut_ptr().cast(), 4) };
    let child_fd = i32::from_le_bytes(b);
    // SAFETY: pidfd_open/pidfd_getfd with integer arguments; results are owned fds.
    let pidfd = unsafe { OwnedFd::from_raw_fd(cvt(libc::syscall(libc::SYS_pidfd_open, pid, 0))? as i32) };
    // SAFETY: as above.
    let lfd = unsafe {
        OwnedFd::from_raw_fd(cvt(libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), child_fd, 0))? as i32)
    };
    if sync_wakeup {
        // SAFETY: ioctl with an integer flag.
        unsafe { libc::ioctl(lfd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS, 1u64) };
    }
    // SAFETY: writing one byte from a live buffer.
    unsafe { libc::write(to_child[1], [1u8].as_ptr().cast(), 1) };
    for _ in 0..n {
        // SAFETY: a zeroed notification struct, then a response, both live.
        unsafe {
            let mut req: libc::seccomp_notif = std::mem::zeroed();
            if libc::ioctl(lfd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) < 0 {
                continue;
            }
            let mut resp = libc::seccomp_notif_resp { id: req.id, val: 1, error: 0, flags: 0 };
            libc::ioctl(lfd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp);
        }
    }
    let mut ns = [0u8; 8];
    // SAFETY: reading 8 bytes into a live buffer; then reaping the child.
    unsafe {
        libc::read(to_parent[0], ns.as_mut_ptr().cast(), 8);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        for fd in to_parent.iter().chain(to_child.iter()) {
            libc::close(*fd);
        }
    }
    Ok(u64::from_le_bytes(ns) as f64 / 1e3 / n as f64)
}

/// A pseudo-terminal: (master, slave) fds, the slave sized 80x24.
pub fn openpty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut m = 0;
    let mut s = 0;
    let ws = libc::winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: m and s are live out-params; ws is a live winsize; no name or termios wanted.
    cvt(unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) } as libc::c_long)?;
    // SAFETY: two fresh fds owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) })
}

/// For a child between fork and exec: a new session whose controlling
/// terminal is its stdin.
pub fn make_controlling_tty() -> std::io::Result<()> {
    // SAFETY: setsid and ioctl with integer arguments, in the child.
    unsafe {
        if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Make `cmd`'s child start a new session whose controlling terminal is its
/// stdin (a pseudo-terminal).
pub fn controlling_tty_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook makes only async-signal-safe calls (setsid, ioctl).
    unsafe { cmd.pre_exec(make_controlling_tty) };
}

/// Put an fd in non-blocking mode.
pub fn set_nonblocking(fd: std::os::fd::RawFd) {
    // SAFETY: fcntl on an fd the caller owns, with integer arguments.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// Wait for child `pid`: its wait status and the CPU seconds (user + system)
/// it used.
pub fn wait_rusage(pid: i32) -> std::io::Result<(i32, f64)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: status and ru are live out-params for this call.
    cvt(unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } as libc::c_long)?;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((status, secs(ru.ru_utime) + secs(ru.ru_stime)))
}
