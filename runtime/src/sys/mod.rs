//! Raw system calls: ptrace, cross-process memory, pidfds, seccomp
//! notification ioctls and per-thread credentials.
//!
//! Every `unsafe` block of the runtime lives here, each with a `// SAFETY:`
//! line. Callers get plain `io::Result` values.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

pub use libc::user_regs_struct as Regs;

/// `NT_X86_XSTATE`, the regset holding the FPU/SSE/AVX state.
const NT_X86_XSTATE: libc::c_int = 0x202;
const NT_PRSTATUS: libc::c_int = 1;

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn ptrace_raw(req: libc::c_uint, pid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: ptrace takes a request, a pid and two word-sized arguments; every
    // caller below passes either plain values or pointers to live, correctly
    // sized buffers for the request.
    cvt(unsafe { libc::ptrace(req, pid, addr as *mut libc::c_void, data as *mut libc::c_void) })
}

/// `PTRACE_SEIZE` with options.
pub fn ptrace_seize(pid: i32, options: u64) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_SEIZE, pid, 0, options as usize).map(drop)
}

pub fn ptrace_interrupt(pid: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_INTERRUPT, pid, 0, 0).map(drop)
}

pub fn ptrace_setoptions(pid: i32, options: u64) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_SETOPTIONS, pid, 0, options as usize).map(drop)
}

pub fn ptrace_syscall(pid: i32, sig: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_SYSCALL, pid, 0, sig as usize).map(drop)
}

pub fn ptrace_cont(pid: i32, sig: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_CONT, pid, 0, sig as usize).map(drop)
}

pub fn ptrace_listen(pid: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_LISTEN, pid, 0, 0).map(drop)
}

pub fn ptrace_detach(pid: i32, sig: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_DETACH, pid, 0, sig as usize).map(drop)
}

pub fn ptrace_getregs(pid: i32) -> io::Result<Regs> {
    // SAFETY: user_regs_struct is plain old data; all-zero is a valid value.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: (&raw mut regs).cast(), iov_len: std::mem::size_of::<Regs>() };
    ptrace_raw(libc::PTRACE_GETREGSET, pid, NT_PRSTATUS as usize, (&raw mut iov) as usize)?;
    Ok(regs)
}

pub fn ptrace_setregs(pid: i32, regs: &Regs) -> io::Result<()> {
    let mut copy = *regs;
    let mut iov = libc::iovec { iov_base: (&raw mut copy).cast(), iov_len: std::mem::size_of::<Regs>() };
    ptrace_raw(libc::PTRACE_SETREGSET, pid, NT_PRSTATUS as usize, (&raw mut iov) as usize).map(drop)
}

/// The extended FPU state (`NT_X86_XSTATE`), as many bytes as the kernel has.
pub fn ptrace_get_xstate(pid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 16384];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    ptrace_raw(libc::PTRACE_GETREGSET, pid, NT_X86_XSTATE as usize, (&raw mut iov) as usize)?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn ptrace_set_xstate(pid: i32, xstate: &[u8]) -> io::Result<()> {
    let mut copy = xstate.to_vec();
    let mut iov = libc::iovec { iov_base: copy.as_mut_ptr().cast(), iov_len: copy.len() };
    ptrace_raw(libc::PTRACE_SETREGSET, pid, NT_X86_XSTATE as usize, (&raw mut iov) as usize).map(drop)
}

pub fn ptrace_get_sigmask(pid: i32) -> io::Result<u64> {
    let mut mask: u64 = 0;
    ptrace_raw(libc::PTRACE_GETSIGMASK, pid, 8, (&raw mut mask) as usize)?;
    Ok(mask)
}

pub fn ptrace_set_sigmask(pid: i32, mask: u64) -> io::Result<()> {
    let mut m = mask;
    ptrace_raw(libc::PTRACE_SETSIGMASK, pid, 8, (&raw mut m) as usize).map(drop)
}

/// Whether a siginfo is that of tkill or tgkill (si_code SI_TKILL): sent to
/// one thread, not to its process.
pub fn siginfo_is_tkill(info: &[u8]) -> bool {
    info.get(8..12).is_some_and(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) == libc::SI_TKILL)
}

/// The siginfo of the signal a tracee is stopped for (`PTRACE_GETSIGINFO`).
pub fn ptrace_get_siginfo(pid: i32) -> io::Result<[u8; 128]> {
    let mut info = [0u8; 128];
    ptrace_raw(libc::PTRACE_GETSIGINFO, pid, 0, info.as_mut_ptr() as usize)?;
    Ok(info)
}

/// The signals queued for a stopped tracee, whole (`PTRACE_PEEKSIGINFO`):
/// its own queue, or the process's shared one. 128 bytes each.
pub fn ptrace_peek_siginfo(pid: i32, shared: bool) -> io::Result<Vec<[u8; 128]>> {
    #[repr(C)]
    struct Args {
        off: u64,
        flags: u32,
        nr: i32,
    }
    const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
    let mut out = Vec::new();
    let mut buf = vec![[0u8; 128]; 32];
    loop {
        let mut a = Args { off: out.len() as u64, flags: u32::from(shared), nr: buf.len() as i32 };
        let n = ptrace_raw(PTRACE_PEEKSIGINFO, pid, (&raw mut a) as usize, buf.as_mut_ptr() as usize)?;
        if n <= 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
        if out.len() > 1 << 16 {
            return Ok(out);
        }
    }
}

/// `PTRACE_GET_RSEQ_CONFIGURATION`: (abi pointer, abi size, signature).
pub fn ptrace_get_rseq(pid: i32) -> io::Result<(u64, u32, u32)> {
    #[repr(C)]
    #[derive(Default)]
    struct RseqConf {
        ptr: u64,
        size: u32,
        sig: u32,
        flags: u32,
        pad: u32,
    }
    let mut conf = RseqConf::default();
    ptrace_raw(libc::PTRACE_GET_RSEQ_CONFIGURATION, pid, std::mem::size_of::<RseqConf>(), (&raw mut conf) as usize)?;
    Ok((conf.ptr, conf.size, conf.sig))
}

/// One wait status from `waitpid`, raw.
pub fn waitpid(pid: i32, flags: i32) -> io::Result<(i32, i32)> {
    let mut status = 0;
    loop {
        // SAFETY: status points to a live int.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        return Ok((r, status));
    }
}

/// Read memory of another process; `local` is filled from `remote` (addr, len) pieces.
pub fn process_vm_readv(pid: i32, local: &mut [u8], remote: &[(u64, usize)]) -> io::Result<usize> {
    let liov = libc::iovec { iov_base: local.as_mut_ptr().cast(), iov_len: local.len() };
    let riov: Vec<libc::iovec> =
        remote.iter().map(|&(a, l)| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: l }).collect();
    // SAFETY: liov describes `local`, which we borrow mutably; riov describes
    // addresses in the other process, which the kernel checks.
    let n = unsafe { libc::process_vm_readv(pid, &liov, 1, riov.as_ptr(), riov.len() as libc::c_ulong, 0) };
    cvt(n as libc::c_long).map(|n| n as usize)
}

/// Write `local` into another process at the (addr, len) pieces of `remote`.
pub fn process_vm_writev(pid: i32, local: &[u8], remote: &[(u64, usize)]) -> io::Result<usize> {
    let liov = libc::iovec { iov_base: local.as_ptr() as *mut libc::c_void, iov_len: local.len() };
    let riov: Vec<libc::iovec> =
        remote.iter().map(|&(a, l)| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: l }).collect();
    // SAFETY: the kernel only reads from `local`; the remote side is checked by the kernel.
    let n = unsafe { libc::process_vm_writev(pid, &liov, 1, riov.as_ptr(), riov.len() as libc::c_ulong, 0) };
    cvt(n as libc::c_long).map(|n| n as usize)
}

pub fn pidfd_open(pid: i32, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) })?;
    // SAFETY: the fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A duplicate of `fd` of the process behind `pidfd` (same open file description).
pub fn pidfd_getfd(pidfd: RawFd, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes two fds and flags; returns a new fd or -1.
    let n = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) })?;
    // SAFETY: a fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(n as RawFd) })
}

/// `get_robust_list(pid)`: (head, len).
pub fn get_robust_list(pid: i32) -> io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: both out-pointers point to live locals of the right size.
    cvt(unsafe { libc::syscall(libc::SYS_get_robust_list, pid, &mut head, &mut len) })?;
    Ok((head, len as u64))
}

/// `prlimit64(pid, res, new, old)`.
pub fn prlimit(pid: i32, res: u32, new: Option<(u64, u64)>) -> io::Result<(u64, u64)> {
    let newl = new.map(|(c, m)| libc::rlimit64 { rlim_cur: c, rlim_max: m });
    let mut old = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
    let newp = newl.as_ref().map_or(std::ptr::null(), |r| r as *const libc::rlimit64);
    // SAFETY: newp is null or points to a live rlimit64; old is a live out-param.
    cvt(unsafe { libc::syscall(libc::SYS_prlimit64, pid, res, newp, &mut old) })?;
    Ok((old.rlim_cur, old.rlim_max))
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill has no memory arguments.
    cvt(unsafe { libc::kill(pid, sig) } as libc::c_long).map(drop)
}

pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: tgkill has no memory arguments.
    cvt(unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) }).map(drop)
}

/// `sched_getaffinity(tid)` into a buffer of `len` bytes: the mask the
/// kernel wrote (its length is what the call returns).
pub fn sched_getaffinity(tid: i32, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    // SAFETY: buf is a live buffer of `len` bytes.
    let n = cvt(unsafe { libc::syscall(libc::SYS_sched_getaffinity, tid, len, buf.as_mut_ptr()) })?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// `sched_setaffinity(tid, mask)`.
pub fn sched_setaffinity(tid: i32, mask: &[u8]) -> io::Result<()> {
    // SAFETY: mask is a live buffer of its length, which the kernel only reads.
    cvt(unsafe { libc::syscall(libc::SYS_sched_setaffinity, tid, mask.len(), mask.as_ptr()) }).map(drop)
}

pub fn gettid() -> i32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::gettid() }
}

pub fn getpid() -> i32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// A raw six-argument system call, returning the kernel's value (`-errno` on failure).
pub fn raw_syscall(nr: i64, a: [u64; 6]) -> i64 {
    // SAFETY: the caller (the deputy) only passes numbers from the forwarding
    // table, with every pointer argument rewritten to point into buffers it owns
    // and sized as the table says.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r == -1 {
        -(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO) as i64)
    } else {
        r
    }
}

/// Per-thread credentials: raw syscalls, which (unlike glibc's wrappers) change
/// only the calling thread.
pub fn thread_set_creds(uids: [u32; 3], gids: [u32; 3], groups: &[u32]) -> io::Result<()> {
    // SAFETY: groups points to `groups.len()` gid_t values.
    cvt(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_setresgid, gids[0], gids[1], gids[2]) })?;
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_setresuid, uids[0], uids[1], uids[2]) })?;
    Ok(())
}

/// `unshare(flags)` for the calling thread.
pub fn unshare(flags: i32) -> io::Result<()> {
    // SAFETY: plain integer argument.
    cvt(unsafe { libc::unshare(flags) } as libc::c_long).map(drop)
}

pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(drop)
}

/// `dup3(old, new, flags)`; `new` then belongs to the caller's fd table slot.
pub fn dup3(old: RawFd, new: RawFd, flags: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::dup3(old, new, flags) } as libc::c_long).map(drop)
}

pub fn close(fd: RawFd) {
    // SAFETY: closing a number never touches memory; callers own the fd.
    unsafe { libc::close(fd) };
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, min)`.
pub fn dup_above(fd: RawFd, min: RawFd) -> io::Result<RawFd> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) } as libc::c_long).map(|f| f as RawFd)
}

pub fn chdir(path: &str) -> io::Result<()> {
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a NUL-terminated string that outlives the call.
    cvt(unsafe { libc::chdir(c.as_ptr()) } as libc::c_long).map(drop)
}

pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) }
}

/// Install a no-op handler (without SA_RESTART) so that `tgkill` can wake a
/// thread blocked in a system call.
pub fn install_wakeup_handler(sig: i32) -> io::Result<()> {
    extern "C" fn noop(_: libc::c_int) {}
    // SAFETY: sigaction is plain data; zero is a valid start.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = noop as *const () as usize;
    sa.sa_flags = 0;
    // SAFETY: sa is initialised; old action is not wanted.
    cvt(unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } as libc::c_long).map(drop)
}

/// Size of the XSAVE area for the features the OS enabled (CPUID leaf 0xD).
pub fn xsave_size() -> u32 {
    let r = std::arch::x86_64::__cpuid_count(0xd, 0);
    r.ebx
}

/// A memfd with the given name.
pub fn memfd(name: &str) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated and outlives the call.
    let fd = cvt(unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) } as libc::c_long)?;
    // SAFETY: fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Shared anonymous memory of `size` bytes as an fd (what
/// mmap(MAP_SHARED | MAP_ANONYMOUS) makes, "/dev/zero (deleted)" in maps),
/// opened through /proc/self/map_files (CAP_CHECKPOINT_RESTORE or root).
pub fn shmem_anon(size: u64) -> io::Result<std::fs::File> {
    let len = size.max(4096) as usize;
    // SAFETY: a fresh shared mapping, unmapped below; nothing else sees it.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let at = p as usize;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(format!(
        "/proc/self/map_files/{:x}-{:x}",
        at,
        at + len
    ));
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, len) };
    f
}

/// The seals of a memfd (F_GET_SEALS), or 0 for a file that has none.
pub fn seals(fd: RawFd) -> u32 {
    // SAFETY: F_GET_SEALS takes no argument and returns an int.
    let r = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    r.max(0) as u32
}

/// The file system type (statfs f_type) of an open file.
pub fn fs_magic(fd: RawFd) -> io::Result<i64> {
    // SAFETY: statfs is plain data; zero is a valid start.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out pointer for the call.
    cvt(unsafe { libc::fstatfs(fd, &mut st) } as libc::c_long)?;
    Ok(st.f_type)
}

/// The ranges of `[from, to)` of an open file that hold data (SEEK_DATA
/// and SEEK_HOLE; a tmpfs page that is swapped out counts as data).
pub fn data_ranges(fd: RawFd, from: u64, to: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        // SAFETY: lseek on a valid fd has no memory effects.
        let d = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if d < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        let d = d as u64;
        if d >= to {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d as libc::off_t, libc::SEEK_HOLE) };
        if h < 0 {
            return Err(io::Error::last_os_error());
        }
        let h = (h as u64).min(to);
        if h <= d || d < at {
            // A file that cannot seek for data (noop_llseek): all of it.
            return Ok(vec![(from, to)]);
        }
        out.push((d, h));
        at = h;
    }
    Ok(out)
}

// ---- seccomp user notification -------------------------------------------------

pub use libc::{seccomp_notif as SeccompNotif, seccomp_notif_resp as SeccompResp};

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` on a listener (Linux 6.6+).
pub fn seccomp_set_sync_wakeup(fd: RawFd) -> io::Result<()> {
    // SAFETY: the ioctl takes a u64 flag word by value-pointer semantics of _IOW,
    // which the kernel reads as an integer argument.
    cvt(unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS, 1u64) } as libc::c_long).map(drop)
}

/// Receive one notification. `Ok(None)` on EINTR/ENOENT (not stream errors).
pub fn seccomp_recv(fd: RawFd) -> io::Result<Option<SeccompNotif>> {
    // SAFETY: seccomp_notif is plain data and must be zeroed before RECV.
    let mut n: SeccompNotif = unsafe { std::mem::zeroed() };
    // SAFETY: n is a live, zeroed seccomp_notif.
    let r = unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n))
}

/// Answer a notification with a value or `-errno`; `continue_` lets the kernel run it.
/// Returns false when the notification is no longer valid (ENOENT).
pub fn seccomp_send(fd: RawFd, id: u64, val: i64, continue_: bool) -> io::Result<bool> {
    let mut resp = SeccompResp {
        id,
        val: if val < 0 { 0 } else { val },
        error: if val < 0 { val as i32 } else { 0 },
        flags: if continue_ { libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32 } else { 0 },
    };
    // SAFETY: resp is a live seccomp_notif_resp.
    let r = unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(true)
}

/// Install `src` in the notifying process at fd number `newfd` (replacing
/// what is there), close-on-exec, while notification `id` is pending.
pub fn seccomp_addfd_at(fd: RawFd, id: u64, src: RawFd, newfd: i32) -> io::Result<i32> {
    let mut a = libc::seccomp_notif_addfd {
        id,
        flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
        srcfd: src as u32,
        newfd: newfd as u32,
        newfd_flags: libc::O_CLOEXEC as u32,
    };
    // SAFETY: a is a live seccomp_notif_addfd.
    cvt(unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut a) } as libc::c_long).map(|n| n as i32)
}

/// Is the notification still pending (the target has not been interrupted)?
pub fn seccomp_id_valid(fd: RawFd, id: u64) -> bool {
    let mut v = id;
    // SAFETY: v is a live u64.
    unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut v) == 0 }
}

/// poll(2) over a few fds; returns revents per fd.
pub fn poll(fds: &[(RawFd, i16)], timeout_ms: i32) -> io::Result<Vec<i16>> {
    let mut p: Vec<libc::pollfd> = fds.iter().map(|&(fd, ev)| libc::pollfd { fd, events: ev, revents: 0 }).collect();
    // SAFETY: p is a live array of pollfd of the given length.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(p.iter().map(|x| x.revents).collect())
}

/// `execvp` in place (used by om-exec after registration). Returns only on failure.
pub fn execvp(prog: &str, args: &[String]) -> io::Error {
    let cprog = match CString::new(prog) {
        Ok(c) => c,
        Err(_) => return io::Error::from_raw_os_error(libc::EINVAL),
    };
    let cargs: Vec<CString> = match args.iter().map(|a| CString::new(a.as_str())).collect() {
        Ok(v) => v,
        Err(_) => return io::Error::from_raw_os_error(libc::EINVAL),
    };
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: cprog and argv are NUL-terminated and live for the call.
    unsafe { libc::execvp(cprog.as_ptr(), argv.as_ptr()) };
    io::Error::last_os_error()
}

/// A job-control change of a child, without reaping it: `Some((true, sig))`
/// when it stopped with `sig`, `Some((false, 0))` when it continued.
pub fn waitid_job(pid: i32) -> io::Result<Option<(bool, i32)>> {
    // SAFETY: siginfo_t is plain data; zero is a valid start.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info is a live siginfo_t.
    let r = unsafe {
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WSTOPPED | libc::WCONTINUED | libc::WNOHANG)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled a SIGCHLD siginfo (or left it zeroed).
    let (spid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if spid == 0 {
        return Ok(None);
    }
    Ok(match info.si_code {
        libc::CLD_STOPPED | libc::CLD_TRAPPED => Some((true, status)),
        libc::CLD_CONTINUED => Some((false, 0)),
        _ => None,
    })
}

/// Is `sig` one of the job-control stop signals?
pub fn is_stop_signal(sig: i32) -> bool {
    matches!(sig, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)
}

/// All-zero registers.
pub fn zero_regs() -> Regs {
    // SAFETY: user_regs_struct is plain data; all zero is valid.
    unsafe { std::mem::zeroed() }
}

/// Registers as the 27 words the image stores.
pub fn regs_to_array(r: &Regs) -> [u64; 27] {
    // SAFETY: user_regs_struct on x86_64 is exactly 27 u64 fields, no padding.
    unsafe { std::mem::transmute::<Regs, [u64; 27]>(*r) }
}

pub fn regs_from_array(a: &[u64; 27]) -> Regs {
    // SAFETY: as above; every bit pattern is a valid user_regs_struct.
    unsafe { std::mem::transmute::<[u64; 27], Regs>(*a) }
}

/// The bytes of a mapping of this very process (used for our own vdso).
pub fn own_mapping(start: u64, len: usize) -> Vec<u8> {
    // SAFETY: the caller passes a mapping of this process read from
    // /proc/self/maps that stays mapped (the vdso), readable for `len` bytes.
    unsafe { std::slice::from_raw_parts(start as *const u8, len) }.to_vec()
}

/// Signal om uses to wake one of its threads out of a blocking call (its
/// handler, installed by omd, does nothing and does not restart calls).
pub fn wake_signal() -> i32 {
    libc::SIGRTMIN() + 4
}

/// Fill `buf` from the kernel's random source.
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        done += n as usize;
    }
    Ok(())
}

fn setsockopt_int(fd: RawFd, level: i32, opt: i32, v: i32) {
    // SAFETY: `v` is a live c_int and its size is passed; a bad fd only fails.
    unsafe {
        libc::setsockopt(fd, level, opt, (&v as *const i32).cast(), std::mem::size_of::<i32>() as libc::socklen_t)
    };
}

/// TCP keepalive (idle and interval in seconds, probe count) and a user
/// timeout in ms for unacknowledged data, so a dead peer is noticed.
pub fn keepalive(fd: RawFd, idle: i32, intvl: i32, cnt: i32, user_timeout_ms: i32) {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle);
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, intvl);
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, cnt);
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, user_timeout_ms);
}

/// Milliseconds since the TCP socket `fd` last received anything from its
/// peer (data or an ACK, keepalive ACKs included); None if not TCP.
pub fn tcp_last_heard_ms(fd: RawFd) -> Option<u32> {
    // SAFETY: tcp_info is plain integers; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are live and describe the buffer's size.
    let r = unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len)
    };
    (r == 0).then(|| info.tcpi_last_data_recv.min(info.tcpi_last_ack_recv))
}

/// kcmp(KIND) of two processes: Some(true) when they share that resource
/// (KCMP_VM 1, KCMP_FILES 2, KCMP_FS 3), None when the kernel cannot say.
pub fn kcmp_shared(a: i32, b: i32, kind: i32) -> Option<bool> {
    // SAFETY: kcmp takes no pointers for these kinds.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a, b, kind, 0, 0) };
    (r >= 0).then_some(r == 0)
}

/// Run `f` in `cmd`'s child after fork, before exec; an error fails the
/// spawn with it. `f` runs in a copy of a possibly multi-threaded process:
/// it may allocate (glibc's fork handlers leave malloc usable in the
/// child) but must take no lock another thread could have held.
pub fn before_exec(cmd: &mut std::process::Command, f: impl FnMut() -> io::Result<()> + Send + Sync + 'static) {
    use std::os::unix::process::CommandExt;
    // SAFETY: `f` is the caller's, documented above; nothing else runs here.
    unsafe { cmd.pre_exec(f) };
}

/// `struct pm_scan_arg` of PAGEMAP_SCAN (linux/fs.h).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = 0xC060_6610;
/// Page categories and scan flags (linux/fs.h).
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;

/// Page category: write-protect tracking (userfaultfd WP_ASYNC) is on.
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;

/// PAGEMAP_SCAN on an open /proc/PID/pagemap over [start, end): every
/// range walked with its categories (PAGE_IS_WPALLOWED, PAGE_IS_WRITTEN:
/// written since last write-protected), write-protecting the pages again
/// in the same walk. Appended to `out` as (address, bytes, categories);
/// what the walk skips is not listed.
pub fn pagemap_scan_rearm(pagemap: RawFd, start: u64, end: u64, out: &mut Vec<(u64, u64, u64)>) -> io::Result<()> {
    pagemap_scan(pagemap, (start, end), PM_SCAN_WP_MATCHING, 0, PAGE_IS_WRITTEN | PAGE_IS_WPALLOWED, out)
}

/// Page categories (linux/fs.h).
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_GUARD: u64 = 1 << 8;

/// PAGEMAP_SCAN over [start, end) of the pages in any of the categories
/// `anyof`, as (address, bytes, categories masked by `ret`), adjacent pages
/// of the same categories in one range; nothing is changed.
pub fn pagemap_ranges(
    pagemap: RawFd,
    start: u64,
    end: u64,
    anyof: u64,
    ret: u64,
    out: &mut Vec<(u64, u64, u64)>,
) -> io::Result<()> {
    pagemap_scan(pagemap, (start, end), 0, anyof, ret, out)
}

fn pagemap_scan(
    pagemap: RawFd,
    (start, end): (u64, u64),
    flags: u64,
    anyof: u64,
    ret: u64,
    out: &mut Vec<(u64, u64, u64)>,
) -> io::Result<()> {
    let mut vec = [[0u64; 3]; 512];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags,
            start: at,
            end,
            vec: vec.as_mut_ptr() as u64,
            vec_len: vec.len() as u64,
            category_anyof_mask: anyof,
            return_mask: ret,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points to
        // `vec.len()` page_region entries (3 u64 each) that live across
        // the call; the kernel writes only there and into `arg`.
        let n = cvt(unsafe { libc::ioctl(pagemap, PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) } as libc::c_long)?;
        for r in &vec[..(n as usize).min(vec.len())] {
            match out.last_mut() {
                Some((a, l, c)) if *a + *l == r[0] && *c == r[2] => *l += r[1] - r[0],
                _ => out.push((r[0], r[1] - r[0], r[2])),
            }
        }
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    Ok(())
}

/// userfaultfd ioctls (linux/userfaultfd.h).
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: u64 = 0xC018_AA3F;
const UFFDIO_REGISTER: u64 = 0xC020_AA00;
const UFFDIO_REGISTER_MODE_WP: u64 = 2;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// userfaultfd() flag: only faults in user mode (allowed unprivileged).
pub const UFFD_USER_MODE_ONLY: u64 = 1;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_UNREGISTER: u64 = 0x8010_AA01;
const UFFDIO_WAKE: u64 = 0x8010_AA02;
const UFFDIO_COPY: u64 = 0xC028_AA03;
const UFFDIO_ZEROPAGE: u64 = 0xC020_AA04;
/// uffd_msg.event of a page fault.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

/// Register [start, start + len) of the userfaultfd's process for missing
/// page faults (each one waits until answered with [`uffd_copy`] or
/// [`uffd_zeropage`]).
pub fn uffd_register_missing(uffd: RawFd, start: u64, len: u64) -> io::Result<()> {
    let mut reg = [start, len, UFFDIO_REGISTER_MODE_MISSING, 0];
    // SAFETY: `reg` is a struct uffdio_register (range, mode, ioctls) the
    // kernel reads and fills.
    cvt(unsafe { libc::ioctl(uffd, UFFDIO_REGISTER as _, reg.as_mut_ptr()) } as libc::c_long)?;
    Ok(())
}

/// Undo every registration of [start, start + len).
pub fn uffd_unregister(uffd: RawFd, start: u64, len: u64) -> io::Result<()> {
    let mut range = [start, len];
    // SAFETY: `range` is a struct uffdio_range the kernel reads.
    cvt(unsafe { libc::ioctl(uffd, UFFDIO_UNREGISTER as _, range.as_mut_ptr()) } as libc::c_long)?;
    Ok(())
}

/// Wake the threads waiting on faults in [start, start + len).
pub fn uffd_wake(uffd: RawFd, start: u64, len: u64) -> io::Result<()> {
    let mut range = [start, len];
    // SAFETY: `range` is a struct uffdio_range the kernel reads.
    cvt(unsafe { libc::ioctl(uffd, UFFDIO_WAKE as _, range.as_mut_ptr()) } as libc::c_long)?;
    Ok(())
}

/// Fill missing pages at `dst` with `src` (whole pages) and wake whoever
/// waits on them. Returns how many bytes went in before the first page
/// already there (Ok(src.len()) when all did).
pub fn uffd_copy(uffd: RawFd, dst: u64, src: &[u8]) -> io::Result<usize> {
    let mut c = [dst, src.as_ptr() as u64, src.len() as u64, 0, 0];
    // SAFETY: `c` is a struct uffdio_copy (dst, src, len, mode, copy); the
    // kernel reads `src.len()` bytes from `src` and writes `copy`.
    let r = unsafe { libc::ioctl(uffd, UFFDIO_COPY as _, c.as_mut_ptr()) };
    let copied = c[4] as i64;
    if r == 0 {
        return Ok(src.len());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Ok(copied.max(0) as usize),
        _ => Err(e),
    }
}

/// Map the zero page at the missing pages [start, start + len) and wake
/// whoever waits on them (a page already there is left alone).
pub fn uffd_zeropage(uffd: RawFd, start: u64, len: u64) -> io::Result<()> {
    let mut z = [start, len, 0, 0];
    // SAFETY: `z` is a struct uffdio_zeropage (range, mode, zeropage).
    let r = unsafe { libc::ioctl(uffd, UFFDIO_ZEROPAGE as _, z.as_mut_ptr()) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => uffd_wake(uffd, start, len),
        _ => Err(e),
    }
}

/// The next page fault waiting on the userfaultfd (its address, page
/// aligned), None when none is there now or another event came.
pub fn uffd_next_fault(uffd: RawFd) -> io::Result<Option<u64>> {
    let mut msg = [0u8; 32];
    // SAFETY: reads one struct uffd_msg (32 bytes) into `msg`.
    let n = unsafe { libc::read(uffd, msg.as_mut_ptr().cast(), msg.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(e),
        };
    }
    if n as usize != msg.len() || msg[0] != UFFD_EVENT_PAGEFAULT {
        return Ok(None);
    }
    // arg.pagefault: flags (u64) at 8, address (u64) at 16.
    let addr = u64::from_ne_bytes(msg[16..24].try_into().unwrap_or([0; 8]));
    Ok(Some(addr & !4095))
}

/// Enable write-protect tracking without notifications (WP_ASYNC: a write
/// to a protected page only clears its protection) on a fresh userfaultfd.
pub fn uffd_api_wp_async(uffd: RawFd) -> io::Result<()> {
    let mut api = [UFFD_API, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, 0];
    // SAFETY: `api` is a struct uffdio_api (three u64) the kernel reads and fills.
    cvt(unsafe { libc::ioctl(uffd, UFFDIO_API as _, api.as_mut_ptr()) } as libc::c_long)?;
    Ok(())
}

/// Register [start, start + len) of the userfaultfd's process for
/// write-protect tracking.
pub fn uffd_register_wp(uffd: RawFd, start: u64, len: u64) -> io::Result<()> {
    let mut reg = [start, len, UFFDIO_REGISTER_MODE_WP, 0];
    // SAFETY: `reg` is a struct uffdio_register (range, mode, ioctls) the
    // kernel reads and fills.
    cvt(unsafe { libc::ioctl(uffd, UFFDIO_REGISTER as _, reg.as_mut_ptr()) } as libc::c_long)?;
    Ok(())
}
