//! The supervisor of one guest: receives its trapped calls, answers the
//! emulated ones, forwards the rest to the deputy, relays signals from home,
//! and sends the process home when a call can only run there.

use om_runtime::image::{self, Creds, Image};
use om_runtime::marshal::{self, GO_HOME, MAX_IO, MAX_PATH};
use om_runtime::ptrace::Tracee;
use om_runtime::sys::{self, SeccompNotif};
use om_runtime::syscalls::{self, Arg, Class, Len};
use om_runtime::transfer;
use om_runtime::wire::{self, Frame, Msg, SysReq, SysRet};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};

/// (address, length) pieces of a readv/writev call.
type Iovecs = Vec<(u64, usize)>;

const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;

pub struct Supervisor {
    stream: TcpStream,
    gpid: i32,
    listener: OwnedFd,
    pidfd: Option<OwnedFd>,
    home_pid: i32,
    pgid: i32,
    sid: i32,
    creds: Creds,
    next_id: u64,
    come_home: bool,
    /// A signal from home arrived while the current call was at the deputy.
    signalled: bool,
}

enum Flow {
    Go,
    /// The guest is gone (exited, killed, or went home).
    Done,
}

impl Supervisor {
    pub fn new(stream: TcpStream, gpid: i32, listener: OwnedFd, img: &Image, _home: u32) -> Supervisor {
        Supervisor {
            stream,
            gpid,
            listener,
            pidfd: sys::pidfd_open(gpid, 0).ok(),
            home_pid: img.pid,
            pgid: img.pgid,
            sid: img.sid,
            creds: img.creds.clone(),
            next_id: 1,
            come_home: false,
            signalled: false,
        }
    }

    pub fn run(mut self) {
        let lfd = self.listener.as_raw_fd();
        let sfd = self.stream.as_raw_fd();
        let pfd = self.pidfd.as_ref().map_or(-1, |p| p.as_raw_fd());
        loop {
            let rev = match sys::poll(&[(lfd, libc::POLLIN), (sfd, libc::POLLIN), (pfd, libc::POLLIN)], -1) {
                Ok(r) => r,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!(%e, "poll failed");
                    return self.lost("poll failed");
                }
            };
            if rev[2] != 0 {
                return self.exited();
            }
            if rev[1] != 0 {
                match wire::recv(&mut self.stream) {
                    Ok(Frame::Msg(m)) => self.on_home_msg(m),
                    Ok(Frame::Data(_)) => tracing::warn!("stray data frame from home ignored"),
                    Err(e) => return self.lost(&e.to_string()),
                }
                if self.come_home {
                    if let Flow::Done = self.go_home("asked to come home", None) {
                        return;
                    }
                }
            }
            if rev[0] & libc::POLLIN != 0 {
                match sys::seccomp_recv(lfd) {
                    Ok(Some(n)) => {
                        if let Flow::Done = self.handle(&n) {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(%e, "notification receive failed"),
                }
            }
        }
    }

    fn on_home_msg(&mut self, m: Msg) {
        match m {
            Msg::Signal { sig } => {
                let _ = sys::kill(self.gpid, sig);
                self.signalled = true;
            }
            Msg::Kill => {
                let _ = sys::kill(self.gpid, libc::SIGKILL);
            }
            Msg::ComeHome => self.come_home = true,
            m => tracing::warn!(?m, "unexpected message from home ignored"),
        }
    }

    /// The guest exited: report its status home.
    fn exited(self) {
        let (code, signal) = match sys::waitpid(self.gpid, libc::__WALL) {
            Ok((_, st)) if libc::WIFEXITED(st) => (libc::WEXITSTATUS(st), 0),
            Ok((_, st)) if libc::WIFSIGNALED(st) => (0, libc::WTERMSIG(st)),
            _ => (0, libc::SIGKILL),
        };
        tracing::info!(guest = self.gpid, code, signal, "guest ended");
        let mut s = self.stream;
        let _ = wire::send(&mut s, &Msg::Exited { code, signal });
    }

    /// Home is unreachable: the guest cannot go on without its files.
    fn lost(self, why: &str) {
        tracing::warn!(guest = self.gpid, why, "link to home lost; killing the guest");
        let _ = sys::kill(self.gpid, libc::SIGKILL);
        let _ = sys::waitpid(self.gpid, libc::__WALL);
    }

    fn reply(&self, id: u64, val: i64) {
        let _ = sys::seccomp_send(self.listener.as_raw_fd(), id, val, false);
    }

    fn handle(&mut self, n: &SeccompNotif) -> Flow {
        let nr = n.data.nr as u32;
        match syscalls::class(nr) {
            Class::Emulated => match self.emulate(nr, n) {
                Some(v) => {
                    self.reply(n.id, v);
                    Flow::Go
                }
                None => self.forward(n),
            },
            Class::Forward => self.forward(n),
            Class::Local | Class::Home => self.go_home(&format!("{} runs at home", syscalls::name(nr)), Some(n.id)),
        }
    }

    /// Identity and self-signal calls. `None`: not answerable here, forward it.
    fn emulate(&mut self, nr: u32, n: &SeccompNotif) -> Option<i64> {
        let a = n.data.args;
        let home = self.home_pid as u64;
        let c = &self.creds;
        Some(match nr {
            39 | 186 => self.home_pid as i64,
            102 => c.uids[0] as i64,
            107 => c.uids[1] as i64,
            104 => c.gids[0] as i64,
            108 => c.gids[1] as i64,
            118 | 120 => {
                let v = if nr == 118 { c.uids } else { c.gids };
                for (i, x) in v.iter().enumerate() {
                    if a[i] != 0 && sys::process_vm_writev(self.gpid, &x.to_le_bytes(), &[(a[i], 4)]).is_err() {
                        return Some(-libc::EFAULT as i64);
                    }
                }
                0
            }
            115 => {
                let size = a[0] as usize;
                let g = &c.groups;
                if size == 0 {
                    g.len() as i64
                } else if size < g.len() {
                    -libc::EINVAL as i64
                } else {
                    let b: Vec<u8> = g.iter().flat_map(|x| x.to_le_bytes()).collect();
                    if !b.is_empty() && sys::process_vm_writev(self.gpid, &b, &[(a[1], b.len())]).is_err() {
                        return Some(-libc::EFAULT as i64);
                    }
                    g.len() as i64
                }
            }
            111 => self.pgid as i64,
            121 if a[0] == 0 || a[0] == home => self.pgid as i64,
            124 if a[0] == 0 || a[0] == home => self.sid as i64,
            62 if a[0] == home => self.self_signal(a[1] as i32),
            200 if a[0] == home => self.self_signal(a[1] as i32),
            234 if a[0] == home && a[1] == home => self.self_signal(a[2] as i32),
            _ => return None,
        })
    }

    fn self_signal(&self, sig: i32) -> i64 {
        if sig == 0 {
            return 0;
        }
        match sys::tgkill(self.gpid, self.gpid, sig) {
            Ok(()) => 0,
            Err(e) => -(e.raw_os_error().unwrap_or(libc::EINVAL) as i64),
        }
    }

    fn read_mem(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        if len == 0 {
            return Some(buf);
        }
        match sys::process_vm_readv(self.gpid, &mut buf, &[(addr, len)]) {
            Ok(n) if n == len => Some(buf),
            _ => None,
        }
    }

    /// A NUL-terminated string, read page by page so it may end before an unmapped page.
    fn read_cstr(&self, addr: u64) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut a = addr;
        while out.len() <= MAX_PATH {
            let room = (4096 - (a % 4096)) as usize;
            let chunk = self.read_mem(a, room)?;
            if let Some(z) = chunk.iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..z]);
                return Some(out);
            }
            out.extend_from_slice(&chunk);
            a += room as u64;
        }
        None
    }

    fn eval(&self, l: Len, args: &mut [u64; 6]) -> Option<usize> {
        Some(match l {
            Len::Const(n) => n,
            Len::Val(i) => {
                if args[i] as usize > MAX_IO {
                    args[i] = MAX_IO as u64;
                }
                args[i] as usize
            }
            Len::ArgMul(i, k) => (args[i] as usize).checked_mul(k)?.min(MAX_IO),
            Len::DerefU32(i) => {
                if args[i] == 0 {
                    0
                } else {
                    let b = self.read_mem(args[i], 4)?;
                    (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).min(MAX_IO)
                }
            }
            Len::FdSet(i) => (args[i] as usize).div_ceil(64) * 8,
        })
    }

    fn forward(&mut self, n: &SeccompNotif) -> Flow {
        let nr = n.data.nr as u32;
        let mut args = n.data.args;
        let id = n.id;
        // Calls with a shape of their own.
        let (fnr, spec, iov): (u32, Vec<Arg>, Option<Iovecs>) = match nr {
            19 | 20 | 295 | 296 => {
                let Some(raw) = self.read_mem(args[1], (args[2] as usize).min(1024) * 16) else {
                    self.reply(id, -libc::EFAULT as i64);
                    return Flow::Go;
                };
                let mut iov = Vec::new();
                let mut total = 0usize;
                for c in raw.chunks(16) {
                    let base = u64::from_le_bytes(c[0..8].try_into().unwrap_or([0; 8]));
                    let len = (u64::from_le_bytes(c[8..16].try_into().unwrap_or([0; 8])) as usize).min(MAX_IO - total);
                    iov.push((base, len));
                    total += len;
                }
                let write = nr == 20 || nr == 296;
                let fnr = match nr {
                    19 => 0,
                    20 => 1,
                    295 => 17,
                    _ => 18,
                };
                args = [args[0], 0, total as u64, args[3], 0, 0];
                let spec = if write {
                    vec![Arg::Fd, Arg::In(Len::Val(2)), Arg::V, Arg::V]
                } else {
                    vec![Arg::Fd, Arg::OutRet(Len::Val(2)), Arg::V, Arg::V]
                };
                (fnr, spec, Some(iov))
            }
            16 => match syscalls::ioctl_spec(args[1]) {
                None => return self.go_home(&format!("ioctl {:#x} runs at home", args[1]), Some(id)),
                Some((0, _)) => (nr, vec![Arg::Fd, Arg::V, Arg::V], None),
                Some((len, false)) => (nr, vec![Arg::Fd, Arg::V, Arg::In(Len::Const(len))], None),
                Some((len, true)) => (nr, vec![Arg::Fd, Arg::V, Arg::Out(Len::Const(len))], None),
            },
            72 => match args[1] {
                0..=4 | 8..=11 | 1024..=1026 | 1030..=1034 => (nr, vec![Arg::Fd, Arg::V, Arg::V], None),
                _ => return self.go_home("fcntl record locks run at home", Some(id)),
            },
            62 => (nr, vec![Arg::V, Arg::V], None),
            270 if args[5] != 0 => match self.read_mem(args[5], 8) {
                Some(b) if b == [0; 8] => (nr, syscalls::spec(nr).unwrap_or(&[]).to_vec(), None),
                _ => return self.go_home("pselect6 with a signal mask runs at home", Some(id)),
            },
            271 if args[3] != 0 => return self.go_home("ppoll with a signal mask runs at home", Some(id)),
            281 if args[4] != 0 => return self.go_home("epoll_pwait with a signal mask runs at home", Some(id)),
            _ => match syscalls::spec(nr) {
                Some(s) => (nr, s.to_vec(), None),
                None => return self.go_home(&format!("{} runs at home", syscalls::name(nr)), Some(id)),
            },
        };

        // Gather the input buffers.
        let mut lens = [0u32; 6];
        let mut data = Vec::new();
        for (i, a) in spec.iter().enumerate() {
            let ok = match *a {
                Arg::V | Arg::Fd => true,
                Arg::Path if args[i] == 0 => true,
                Arg::Path => match self.read_cstr(args[i]) {
                    Some(s) => {
                        if is_own_proc(&s, self.home_pid) {
                            return self.go_home("its own /proc files are read at home", Some(id));
                        }
                        lens[i] = (s.len() + 1) as u32;
                        data.extend_from_slice(&s);
                        data.push(0);
                        true
                    }
                    None => false,
                },
                Arg::In(l) | Arg::InOut(l) if args[i] != 0 || iov.is_some() => match self.eval(l, &mut args) {
                    Some(len) => {
                        let bytes = match (&iov, nr) {
                            (Some(v), 20 | 296) => gather(self.gpid, v),
                            _ => self.read_mem(args[i], len),
                        };
                        match bytes {
                            Some(b) => {
                                lens[i] = b.len() as u32;
                                data.extend_from_slice(&b);
                                true
                            }
                            None => false,
                        }
                    }
                    None => false,
                },
                Arg::Out(l) | Arg::OutRet(l) | Arg::OutRetN(l, _) if args[i] != 0 || iov.is_some() => {
                    match self.eval(l, &mut args) {
                        Some(len) => {
                            lens[i] = len as u32;
                            true
                        }
                        None => false,
                    }
                }
                _ => true,
            };
            if !ok {
                self.reply(id, -libc::EFAULT as i64);
                return Flow::Go;
            }
        }
        if !sys::seccomp_id_valid(self.listener.as_raw_fd(), id) {
            return Flow::Go;
        }
        let rid = self.next_id;
        self.next_id += 1;
        self.signalled = false;
        let req = SysReq { id: rid, nr: fnr, args, lens, data };
        if let Err(e) = wire::send(&mut self.stream, &Msg::Sys(req)) {
            tracing::warn!(%e, "cannot reach the deputy");
            let _ = sys::kill(self.gpid, libc::SIGKILL);
            return Flow::Go;
        }
        let ret = loop {
            match wire::recv(&mut self.stream) {
                Ok(Frame::Msg(Msg::SysRet(r))) if r.id == rid => break r,
                Ok(Frame::Msg(m)) => self.on_home_msg(m),
                Ok(Frame::Data(_)) => {}
                Err(e) => {
                    tracing::warn!(%e, "link to home lost during a forwarded call");
                    let _ = sys::kill(self.gpid, libc::SIGKILL);
                    return Flow::Go;
                }
            }
        };
        let SysRet { ret, data, .. } = ret;
        if ret == GO_HOME {
            return self.go_home(&format!("{} needs home", syscalls::name(nr)), Some(id));
        }
        if ret == -(libc::EINTR as i64) && self.come_home {
            return self.go_home("asked to come home", Some(id));
        }
        // Scatter the outputs.
        let mut off = 0usize;
        for (i, a) in spec.iter().enumerate() {
            if !marshal::is_out(*a) {
                continue;
            }
            let valid = marshal::out_valid(*a, lens[i] as usize, ret).min(data.len() - off);
            if valid > 0 {
                let piece = &data[off..off + valid];
                match (&iov, nr) {
                    (Some(v), 19 | 295) => scatter(self.gpid, v, piece),
                    _ => {
                        let _ = sys::process_vm_writev(self.gpid, piece, &[(args[i], valid)]);
                    }
                }
            }
            off += valid;
        }
        let val = if ret == -(libc::EINTR as i64) && self.signalled { ERESTARTSYS } else { ret };
        self.reply(id, val);
        if self.come_home {
            return self.go_home("asked to come home", None);
        }
        Flow::Go
    }

    /// Bring the process home. `pending` is the notification it waits in, if any:
    /// it is answered with a restart code once the stop is requested, so the
    /// call is issued again at home.
    fn go_home(&mut self, reason: &str, pending: Option<u64>) -> Flow {
        self.come_home = false;
        tracing::info!(guest = self.gpid, reason, "going home");
        let lfd = self.listener.as_raw_fd();
        let mut answer = || {
            if let Some(id) = pending {
                let _ = sys::seccomp_send(lfd, id, ERESTARTNOINTR, false);
            }
        };
        let mut t = match Tracee::seize_then(self.gpid, true, &mut answer) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%e, "cannot stop the guest to send it home");
                return Flow::Go;
            }
        };
        match self.send_home(&mut t, reason) {
            Ok(true) => {
                let _ = sys::kill(self.gpid, libc::SIGKILL);
                let _ = sys::waitpid(self.gpid, libc::__WALL);
                tracing::info!(guest = self.gpid, "process is home");
                Flow::Done
            }
            Ok(false) | Err(_) => {
                tracing::warn!("home could not take the process back; it keeps running here");
                let _ = t.detach();
                Flow::Go
            }
        }
    }

    fn send_home(&mut self, t: &mut Tracee, reason: &str) -> Result<bool, crate::GuestError> {
        wire::send(&mut self.stream, &Msg::GoingHome { reason: reason.to_string() })?;
        wire::send(&mut self.stream, &transfer::offer(self.gpid, 0))?;
        let reopen = loop {
            match wire::recv_msg(&mut self.stream)? {
                Msg::OfferOk { reopen } => break reopen,
                Msg::Refused { reason } => return Err(crate::GuestError::Refused(reason)),
                Msg::Signal { sig } => {
                    let _ = sys::kill(self.gpid, sig);
                }
                Msg::Kill => {
                    let _ = sys::kill(self.gpid, libc::SIGKILL);
                    return Ok(true);
                }
                _ => {}
            }
        };
        let files = image::mapped_files(self.gpid);
        let same = |p: &str| files.iter().zip(&reopen).any(|((q, _), ok)| *ok && q == p);
        let cap = image::capture(t, &same)?;
        transfer::send_image(&mut self.stream, self.gpid, &cap.image)?;
        loop {
            match wire::recv_msg(&mut self.stream)? {
                Msg::HomeOk => return Ok(true),
                Msg::RestoreFailed { reason } => {
                    tracing::warn!(reason, "home failed to rebuild the process");
                    image::rollback(t, cap.scratch)?;
                    return Ok(false);
                }
                _ => {}
            }
        }
    }
}

fn is_own_proc(path: &[u8], home: i32) -> bool {
    let p = String::from_utf8_lossy(path);
    p.starts_with("/proc/self")
        || p.starts_with("/proc/thread-self")
        || p.starts_with(&format!("/proc/{home}/"))
        || p == format!("/proc/{home}")
}

fn gather(pid: i32, iov: &[(u64, usize)]) -> Option<Vec<u8>> {
    let total: usize = iov.iter().map(|x| x.1).sum();
    let mut buf = vec![0u8; total];
    if total == 0 {
        return Some(buf);
    }
    let pieces: Vec<(u64, usize)> = iov.iter().copied().filter(|x| x.1 > 0).collect();
    match sys::process_vm_readv(pid, &mut buf, &pieces) {
        Ok(n) if n == total => Some(buf),
        _ => None,
    }
}

fn scatter(pid: i32, iov: &[(u64, usize)], data: &[u8]) {
    let mut off = 0;
    for &(base, len) in iov {
        if off >= data.len() {
            break;
        }
        let n = len.min(data.len() - off);
        let _ = sys::process_vm_writev(pid, &data[off..off + n], &[(base, n)]);
        off += n;
    }
}
