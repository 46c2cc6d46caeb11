//! Raw pieces of the deputy: frames and fds between omd and a deputy
//! process, the deputy's credentials, guarded buffers for forwarded calls,
//! and passing fds into the placeholder when the process comes home.

use om_runtime::link::{Cipher, Link};
use om_runtime::ptrace::{Result as TResult, TraceError, Tracee};
use om_runtime::sys;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// A link handle over a socket fd this process owns; release it with
/// `into_raw_fd` to keep the fd open.
pub fn stream_from(fd: RawFd, cipher: Arc<Cipher>) -> Link {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is a link socket the caller owns; the handle is released
    // with into_raw_fd before it could close it.
    Link::from_fd(unsafe { OwnedFd::from_raw_fd(fd) }, cipher)
}

/// Install `fds` in the stopped placeholder at their numbers: it connects to
/// an abstract socket of ours and receives them one by one (SCM_RIGHTS).
pub fn install_fds(t: &mut Tracee, scratch: u64, fds: &[(i32, bool, OwnedFd)]) -> TResult<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    if fds.is_empty() {
        return Ok(());
    }
    let pid = t.pid;
    let ioe = |e: std::io::Error| TraceError::Io { pid, what: "fd passing", source: e };
    let name = format!(
        "om-fds-{}-{}",
        pid,
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    let listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).map_err(ioe)?).map_err(ioe)?;
    let addr_at = scratch + 1024;
    let mut sa = Vec::new();
    sa.extend_from_slice(&(libc::AF_UNIX as u16).to_le_bytes());
    sa.push(0);
    sa.extend_from_slice(name.as_bytes());
    t.poke(addr_at, &sa)?;
    let k = t.syscall_ok(
        "socket",
        libc::SYS_socket,
        [libc::AF_UNIX as u64, (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u64, 0, 0, 0, 0],
    )?;
    t.syscall_ok("connect", libc::SYS_connect, [k, addr_at, sa.len() as u64, 0, 0, 0])?;
    let (conn, _) = listener.accept().map_err(ioe)?;
    let high = fds.iter().map(|f| f.0).max().unwrap_or(0) as u64 + 1;
    let k2 = t.syscall_ok(
        "fcntl(F_DUPFD_CLOEXEC)",
        libc::SYS_fcntl,
        [k, libc::F_DUPFD_CLOEXEC as u64, high.max(k + 1), 0, 0, 0],
    )?;
    t.syscall_ok("close", libc::SYS_close, [k, 0, 0, 0, 0, 0])?;

    // msghdr, iovec, one data byte and a control buffer in the scratch area.
    let msg_at = scratch + 2048;
    let iov_at = msg_at + 64;
    let byte_at = iov_at + 16;
    let ctl_at = byte_at + 16;
    let mut m = Vec::new();
    for v in [0u64, 0, iov_at, 1, ctl_at, 24, 0] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    let mut iov = Vec::new();
    iov.extend_from_slice(&byte_at.to_le_bytes());
    iov.extend_from_slice(&1u64.to_le_bytes());
    t.poke(iov_at, &iov)?;
    for (target, cloexec, fd) in fds {
        t.poke(msg_at, &m)?;
        send_fd(&conn, fd.as_raw_fd()).map_err(ioe)?;
        t.syscall_ok("recvmsg", libc::SYS_recvmsg, [k2, msg_at, 0, 0, 0, 0])?;
        let ctl = t.peek(ctl_at, 24)?;
        let g = i32::from_le_bytes([ctl[16], ctl[17], ctl[18], ctl[19]]) as u64;
        let flags = if *cloexec { libc::O_CLOEXEC as u64 } else { 0 };
        if g != *target as u64 {
            t.syscall_ok("dup3", libc::SYS_dup3, [g, *target as u64, flags, 0, 0, 0])?;
            t.syscall_ok("close", libc::SYS_close, [g, 0, 0, 0, 0, 0])?;
        } else if *cloexec {
            t.syscall_ok(
                "fcntl(F_SETFD)",
                libc::SYS_fcntl,
                [g, libc::F_SETFD as u64, libc::FD_CLOEXEC as u64, 0, 0, 0],
            )?;
        }
    }
    t.syscall_ok("close", libc::SYS_close, [k2, 0, 0, 0, 0, 0])?;
    Ok(())
}

fn send_fd(conn: &std::os::unix::net::UnixStream, fd: RawFd) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let data = [0u8; 1];
    let iov = [std::io::IoSlice::new(&data)];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map_err(std::io::Error::from)?;
    Ok(())
}

/// sendmsg (`send`) or recvmsg on `fd` with one data buffer and optional
/// name and control buffers, all owned by the caller. Returns the result and,
/// for recvmsg, the name length, control length and flags the kernel set.
#[allow(clippy::too_many_arguments)]
pub fn msg_call(
    send: bool,
    fd: i32,
    flags: u64,
    name: (u64, usize),
    control: (u64, usize),
    data: (u64, usize),
) -> (i64, u32, u64, i32) {
    let mut iov = libc::iovec { iov_base: data.0 as *mut libc::c_void, iov_len: data.1 };
    // SAFETY: msghdr is plain data; zero is a valid start (it has private padding fields).
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_name = if name.1 == 0 { std::ptr::null_mut() } else { name.0 as *mut libc::c_void };
    mh.msg_namelen = name.1 as u32;
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = if control.1 == 0 { std::ptr::null_mut() } else { control.0 as *mut libc::c_void };
    mh.msg_controllen = control.1;
    let ret = sys::raw_syscall(
        if send { libc::SYS_sendmsg } else { libc::SYS_recvmsg },
        [fd as u64, (&raw mut mh) as u64, flags, 0, 0, 0],
    );
    (ret, mh.msg_namelen, mh.msg_controllen as u64, mh.msg_flags)
}

/// A reusable buffer whose end touches a PROT_NONE page. A call's argument is
/// placed flush against that page, so a kernel that reads or writes past the
/// length om sized for it gets EFAULT instead of reaching the deputy's memory.
/// The mapping is `cap` writable bytes, a spare page (inaccessible, or
/// read-only for a buffer whose tail the guest may read but not write), and a
/// guard page.
pub struct Guarded {
    base: *mut u8,
    /// Writable bytes before the spare page.
    cap: usize,
    /// The spare page is read-only now (it holds a read-only tail).
    spare_ro: bool,
    /// The buffer placed last: offset from `base` and length.
    at: usize,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone; moving it to another
// thread moves that ownership.
unsafe impl Send for Guarded {}

const GUARD_PAGE: usize = 4096;

impl Default for Guarded {
    fn default() -> Self {
        Guarded { base: std::ptr::null_mut(), cap: 0, spare_ro: false, at: 0, len: 0 }
    }
}

impl Guarded {
    /// Have at least `len` writable bytes, the spare page inaccessible.
    fn ensure(&mut self, len: usize) -> std::io::Result<()> {
        if len > self.cap || self.base.is_null() {
            let cap = len.next_power_of_two().max(1 << 16);
            // SAFETY: a fresh private anonymous mapping, checked below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    cap + 2 * GUARD_PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: the last two pages of the mapping just made.
            if unsafe { libc::mprotect(p.cast::<u8>().add(cap).cast(), 2 * GUARD_PAGE, libc::PROT_NONE) } != 0 {
                let e = std::io::Error::last_os_error();
                // SAFETY: unmapping what was just mapped.
                unsafe { libc::munmap(p, cap + 2 * GUARD_PAGE) };
                return Err(e);
            }
            self.release();
            self.base = p.cast();
            self.cap = cap;
        } else if self.spare_ro {
            self.protect_spare(libc::PROT_NONE)?;
        }
        self.spare_ro = false;
        Ok(())
    }

    fn protect_spare(&mut self, prot: libc::c_int) -> std::io::Result<()> {
        // SAFETY: the spare page lies inside our mapping, right after `cap`.
        if unsafe { libc::mprotect(self.base.add(self.cap).cast(), GUARD_PAGE, prot) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The last `len` bytes before the spare page, growing the mapping if needed.
    pub fn tail(&mut self, len: usize) -> std::io::Result<&mut [u8]> {
        self.ensure(len)?;
        self.at = self.cap - len;
        self.len = len;
        // SAFETY: [cap - len, cap) lies inside the writable part of our mapping,
        // borrowed mutably through &mut self.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.base.add(self.at), len) })
    }

    /// `bytes` placed so that its first `writable` bytes are writable and the
    /// rest (at most a page) readable only, then a guard page: as the guest's
    /// buffer was. Returns where it starts.
    pub fn split(&mut self, bytes: &[u8], writable: usize) -> std::io::Result<*mut u8> {
        let ro = bytes.len().saturating_sub(writable);
        if ro == 0 {
            let b = self.tail(bytes.len())?;
            b.copy_from_slice(bytes);
            return Ok(b.as_mut_ptr());
        }
        if ro > GUARD_PAGE {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.ensure(writable)?;
        self.protect_spare(libc::PROT_READ | libc::PROT_WRITE)?;
        self.at = self.cap - writable;
        self.len = bytes.len();
        // SAFETY: [at, cap + ro) lies in the writable part and the spare page,
        // now writable; nothing else borrows the mapping.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(self.at), bytes.len()) };
        self.protect_spare(libc::PROT_READ)?;
        self.spare_ro = true;
        // SAFETY: `at` is inside the mapping.
        Ok(unsafe { self.base.add(self.at) })
    }

    /// The buffer placed last (readable whole, whatever part was read-only).
    pub fn placed(&self) -> &[u8] {
        if self.base.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: [at, at + len) was placed inside the mapping and is readable.
        unsafe { std::slice::from_raw_parts(self.base.add(self.at), self.len) }
    }

    fn release(&mut self) {
        if !self.base.is_null() {
            // SAFETY: the mapping this value made, no longer borrowed.
            unsafe { libc::munmap(self.base.cast(), self.cap + 2 * GUARD_PAGE) };
            self.base = std::ptr::null_mut();
            self.cap = 0;
            self.len = 0;
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.release();
    }
}

/// May a process with these credentials (effective uid, gid, groups)
/// execute the regular file at `path`, by its mode bits?
pub fn may_execute(path: &str, c: &(u32, u32, Vec<u32>)) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(path) else { return false };
    let (uid, gid, groups) = c;
    let mode = md.mode();
    md.is_file()
        && if *uid == 0 {
            mode & 0o111 != 0
        } else if md.uid() == *uid {
            mode & 0o100 != 0
        } else if md.gid() == *gid || groups.contains(&md.gid()) {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
}

/// Most fds one frame to or from a deputy process carries.
pub const FDS_PER_FRAME: usize = 200;

/// Send one frame (u32 length, then the bytes) on a unix stream socket, with
/// `fds` attached to its first byte.
pub fn send_frame(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let len = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("frame too long"))?;
    let mut all = Vec::with_capacity(4 + bytes.len());
    all.extend_from_slice(&len.to_le_bytes());
    all.extend_from_slice(bytes);
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cm: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let mut sent = loop {
        match sendmsg::<()>(sock, &[std::io::IoSlice::new(&all)], cm, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    while sent < all.len() {
        match nix::sys::socket::send(sock, &all[sent..], MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Receive one frame sent by [`send_frame`]: its bytes and the fds with it.
/// At most `max` bytes are accepted.
pub fn recv_frame(sock: RawFd, max: usize) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut len = [0u8; 4];
    let mut got = 0usize;
    let mut fds = Vec::new();
    while got < 4 {
        let mut space = nix::cmsg_space!([RawFd; FDS_PER_FRAME]);
        let mut iov = [std::io::IoSliceMut::new(&mut len[got..])];
        let m = match recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if m.bytes == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        for c in m.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: the kernel just installed these fds for us.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        got += m.bytes;
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > max {
        return Err(std::io::Error::other(format!("frame of {n} bytes is over the {max}-byte limit")));
    }
    let mut buf = vec![0u8; n];
    let mut off = 0;
    while off < n {
        match nix::sys::socket::recv(sock, &mut buf[off..], nix::sys::socket::MsgFlags::empty()) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => off += k,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((buf, fds))
}

/// Where the lane workers' slots (busy call, tid) start in the page.
pub const LANE_SLOTS: usize = 8;
/// The most lane workers a deputy has (threads of a process that moves).
pub const MAX_LANES: usize = (512 - LANE_SLOTS) / 2;

/// Counters in a page shared between omd and a deputy process.
pub struct Page {
    map: memmap2::MmapMut,
}

impl Page {
    /// Map the first page of `fd` (a memfd of at least 4096 bytes).
    pub fn map(fd: &OwnedFd) -> std::io::Result<Page> {
        // SAFETY: the memfd is ours and only ever used as this page of atomics.
        let map = unsafe { memmap2::MmapOptions::new().len(4096).map_mut(fd.as_raw_fd()) }?;
        Ok(Page { map })
    }

    /// Counter `i` (0..512) of the page: 0 to 2 are the busy call, calls and
    /// bytes; from [`LANE_SLOTS`] on, each lane worker's busy call and tid.
    pub fn counter(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(i < 512);
        // SAFETY: the mapping is 4096 bytes, page aligned, lives as long as
        // &self, and is only accessed through atomics (here and in the other
        // process).
        unsafe { &*(self.map.as_ptr().add(i * 8) as *const std::sync::atomic::AtomicU64) }
    }
}

/// Copies of a deputy process's fds (below `res`), with their close-on-exec flags.
pub fn take_process_fds(pid: i32, res: i32) -> std::io::Result<Vec<(i32, bool, OwnedFd)>> {
    let pidfd = sys::pidfd_open(pid, 0)?;
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(fd) = e?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if fd >= res {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let flags = om_runtime::procfs::status_field_in(&info, "flags")
            .and_then(|f| u64::from_str_radix(&f, 8).ok())
            .unwrap_or(0);
        out.push((fd, flags & libc::O_CLOEXEC as u64 != 0, sys::pidfd_getfd(pidfd.as_raw_fd(), fd)?));
    }
    out.sort_by_key(|x| x.0);
    Ok(out)
}

/// The credentials of one thread of the process, for the deputy's worker
/// that runs its calls.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct ThreadIdentity {
    pub tid: i32,
    pub uids: [u32; 3],
    pub gids: [u32; 3],
    pub groups: Vec<u32>,
    /// Effective, permitted and inheritable capabilities.
    pub caps: [u64; 3],
}

/// Give the calling thread alone (credentials are per thread) the ids and
/// capabilities of `t`. Only ever downwards: the deputy holds the leader's,
/// and om moves such a process only when the leader is root with
/// CAP_SETUID and CAP_SETGID and the thread has no capability it lacks.
pub fn become_thread(t: &ThreadIdentity) -> std::io::Result<()> {
    // Keep the permitted set across the change of uid, then set all three.
    // SAFETY: plain integer arguments; PR_SET_KEEPCAPS is per thread.
    if unsafe { libc::syscall(libc::SYS_prctl, libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    sys::thread_set_creds(t.uids, t.gids, &t.groups)?;
    capset_thread(t.caps)?;
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_prctl, libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    Ok(())
}

/// capset(2) of the calling thread: effective, permitted, inheritable.
fn capset_thread([eff, prm, inh]: [u64; 3]) -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = Header { version: 0x2008_0522, pid: 0 };
    let lo = |v: u64| v as u32;
    let hi = |v: u64| (v >> 32) as u32;
    let data = [
        Data { effective: lo(eff), permitted: lo(prm), inheritable: lo(inh) },
        Data { effective: hi(eff), permitted: hi(prm), inheritable: hi(inh) },
    ];
    // SAFETY: a v3 header and two data structs, as capset(2) expects.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Give the calling process exactly the given credentials: groups, gids,
/// uids, and for root the given capability sets (effective, permitted,
/// inheritable); then make it undumpable, so the user it runs as cannot trace
/// it (it holds its link's session keys).
pub fn become_process(uids: [u32; 3], gids: [u32; 3], groups: &[u32], caps: Option<[u64; 3]>) -> std::io::Result<()> {
    sys::thread_set_creds(uids, gids, groups)?;
    if let Some(caps) = caps {
        capset_thread(caps)?;
    }
    // SAFETY: plain integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    Ok(())
}

/// Name the calling thread (what ps shows), at most 15 bytes.
pub fn set_name(name: &str) {
    let mut b: Vec<u8> = name.bytes().take(15).collect();
    b.push(0);
    // SAFETY: b is NUL-terminated and outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, b.as_ptr(), 0, 0, 0) };
}

/// `fchdir(fd)`.
pub fn fchdir(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: plain integer argument.
    if unsafe { libc::fchdir(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, min)`.
pub fn dup_cloexec_above(fd: RawFd, min: RawFd) -> std::io::Result<RawFd> {
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// The command's child gets `fd` as its fd 3, open across the exec.
pub fn pass_as_fd3(cmd: &mut std::process::Command, fd: RawFd) {
    // SAFETY: the closure only calls dup2 and fcntl, which are async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || as_fd3_for_exec(fd));
    }
}

fn as_fd3_for_exec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: plain integer arguments; dup2 and fcntl are async-signal-safe.
    let r = unsafe {
        if fd == 3 {
            libc::fcntl(3, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, 3)
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The device of a character-device fd (its `st_rdev`, in the kernel's
/// encoding that /proc/PID/stat's tty_nr uses); None for anything else.
pub fn char_device(fd: RawFd) -> Option<u64> {
    // SAFETY: st is plain data filled by fstat on an fd number we pass as is.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a live out-param.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return None;
    }
    let (major, minor) = (libc::major(st.st_rdev) as u64, libc::minor(st.st_rdev) as u64);
    Some((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// Whether the terminal on `fd` has TOSTOP set (background writes stop);
/// None when `fd` is not a terminal.
pub fn tostop(fd: RawFd) -> Option<bool> {
    // SAFETY: t is plain data filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: t is a live out-param.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return None;
    }
    Some(t.c_lflag & libc::TOSTOP != 0)
}

/// The room a blocking stream socket or pipe has left for writes that
/// cannot block: for a unix socket its free send buffer (SIOCOUTQ counts
/// what the kernel charges, overhead included) less 4 KiB; for TCP and
/// pipes half the free space (their counts leave the kernel's per-buffer
/// overhead out). -1 for anything else, or a non-blocking fd.
pub fn write_room(fd: RawFd) -> i64 {
    // SAFETY: st is plain data filled by fstat; the fcntl, getsockopt and
    // ioctl calls read integers about an fd number into live locals.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return -1;
        }
        let kind = st.st_mode & libc::S_IFMT;
        if !matches!(kind, libc::S_IFIFO | libc::S_IFSOCK) || libc::fcntl(fd, libc::F_GETFL) & libc::O_NONBLOCK != 0 {
            return -1;
        }
        let mut queued: libc::c_int = 0;
        let mut exact = false;
        let cap = match kind {
            libc::S_IFIFO => {
                if libc::ioctl(fd, libc::FIONREAD, &mut queued) != 0 {
                    return -1;
                }
                libc::fcntl(fd, libc::F_GETPIPE_SZ)
            }
            libc::S_IFSOCK => {
                if sock_int(fd, libc::SO_TYPE) != Some(libc::SOCK_STREAM) {
                    return -1;
                }
                let Some(sndbuf) = sock_int(fd, libc::SO_SNDBUF) else { return -1 };
                if libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) != 0 {
                    return -1;
                }
                exact = sock_int(fd, libc::SO_DOMAIN) == Some(libc::AF_UNIX);
                sndbuf
            }
            _ => return -1,
        };
        if cap <= 0 {
            return -1;
        }
        let free = cap as i64 - queued as i64;
        if exact {
            (free - 4096).max(0)
        } else {
            (free / 2).max(0)
        }
    }
}

/// An int-valued SOL_SOCKET option of socket `fd`.
fn sock_int(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and l are live locals of the sizes getsockopt is told.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut v).cast(), &mut l) };
    (r == 0).then_some(v)
}

/// Up to `buf.len()` bytes that follow in stream socket or pipe `fd`, left
/// there: MSG_PEEK for a stream socket, tee(2) through the private pipe
/// `tee` (its read end, write end; empty, non-blocking) for a pipe. 0 for
/// anything else or when nothing is waiting.
pub fn peek(fd: RawFd, buf: &mut [u8], tee: Option<(RawFd, RawFd)>) -> usize {
    // SAFETY: st is plain data filled by fstat; recv, tee and read write at
    // most buf.len() bytes into buf, which we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return 0;
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFSOCK => {
                if sock_int(fd, libc::SO_TYPE) != Some(libc::SOCK_STREAM) {
                    return 0;
                }
                // A low-water mark above one byte makes a read wait for more
                // than what may be there: no reading ahead then.
                if sock_int(fd, libc::SO_RCVLOWAT).is_none_or(|l| l > 1) {
                    return 0;
                }
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT);
                n.max(0) as usize
            }
            libc::S_IFIFO => {
                let Some((r, w)) = tee else { return 0 };
                let n = libc::tee(fd, w, buf.len(), libc::SPLICE_F_NONBLOCK);
                if n <= 0 {
                    return 0;
                }
                let mut got = 0usize;
                while got < n as usize {
                    let k = libc::read(r, buf[got..].as_mut_ptr().cast(), n as usize - got);
                    if k <= 0 {
                        break;
                    }
                    got += k as usize;
                }
                got
            }
            _ => 0,
        }
    }
}

/// A private pipe for [`peek`]: (read end, write end), non-blocking and
/// close-on-exec, at numbers `min` and up, as large as allowed up to `size`.
pub fn tee_pipe(min: RawFd, size: usize) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut p = [0; 2];
    // SAFETY: p receives two fresh fds we then own.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just made by pipe2 and are ours alone.
    let (r0, w0) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let above = |f: &OwnedFd| -> std::io::Result<OwnedFd> {
        let fd = dup_cloexec_above(f.as_raw_fd(), min)?;
        // SAFETY: fd was just made by F_DUPFD_CLOEXEC and is ours alone.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let (r, w) = (above(&r0)?, above(&w0)?);
    // SAFETY: fcntl on our own pipe with integer arguments (failure leaves it as it was).
    unsafe {
        libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int);
    }
    Ok((r, w))
}

/// The shared memory object (tmpfs) with inode `ino` (and, for a memfd or
/// a deleted file, name `name`) that a deputy of this omd (a child of it)
/// holds an fd on, opened anew; None when no deputy holds one, or it is
/// sealed against writes (its bytes cannot have changed: a new object
/// with them does as well).
pub fn held_object(ino: u64, name: Option<&str>) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let me = sys::getpid().to_string();
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        if om_runtime::procfs::status_field_in(&status, "PPid").as_deref() != Some(me.as_str()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if !std::fs::metadata(fd.path()).is_ok_and(|md| md.ino() == ino && md.is_file()) {
                continue;
            }
            let link = std::fs::read_link(fd.path()).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
            let named = match name {
                Some(n) => link.ends_with(&format!("{n} (deleted)")),
                None => link.starts_with("/dev/zero"),
            };
            if !named {
                continue;
            }
            let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(fd.path()) else { continue };
            if sys::fs_magic(f.as_raw_fd()).ok() != Some(0x0102_1994) {
                continue;
            }
            let sealed = (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) as u32;
            if sys::seals(f.as_raw_fd()) & sealed != 0 {
                return None;
            }
            return Some(f);
        }
    }
    None
}
